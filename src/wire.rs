//! Reading values the way the seeds' programs write them.
//!
//! The originals are Python: a timestamp is whatever `time.time()` or `isoformat()` gave,
//! a quantity may arrive as `2` or `"2"`, and what they left in Redis is all strings. The
//! rule is that what the originals send is accepted; these readers say exactly how, and
//! refuse the rest with a reason a person can act on. They name no entity: every system's
//! parser uses them.

use std::fmt;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde_json::Value;

use crate::envelope;

/// Earliest accepted time, in Unix seconds: 1970-01-01T00:00:00Z.
pub const MIN_UNIX_SECONDS: i64 = 0;
/// First refused time, in Unix seconds: 2200-01-01T00:00:00Z. Anything later is a unit
/// mistake or garbage, not an order placed in the future.
pub const MAX_UNIX_SECONDS: i64 = 7_258_118_400;
/// From here on, a number of "seconds" is almost surely milliseconds (1e11 ms is 1973).
const LOOKS_LIKE_MILLIS: f64 = 1e11;

/// Longest text accepted as a time: the longest RFC 3339 form with nanoseconds is 35.
pub const MAX_TIME_TEXT: usize = 64;

/// The accepted range, as the refusals state it.
pub const TIME_RANGE: &str =
    "1970-01-01T00:00:00Z to 2200-01-01T00:00:00Z (Unix seconds 0 to 7258118400)";

/// The JSON type of `v`, for error messages (`a number`, `a string`…).
pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads a point in time: an RFC 3339 / ISO 8601 string (a naive one, like Python's
/// `datetime.now().isoformat()`, is read as UTC; a space may stand for the `T`), or Unix
/// seconds as a JSON number (integer or fraction, like `time.time()`) or as the text of
/// one (what the originals left in Redis). Kept to the microsecond.
///
/// Refused, with the reason: other types, text that is neither, negative numbers, numbers
/// that look like milliseconds, and any time outside [`TIME_RANGE`].
pub fn timestamp(value: &Value) -> Result<DateTime<Utc>, String> {
    let t = match value {
        Value::Number(n) => unix_seconds(&n.to_string())?,
        Value::String(s) if s.len() > MAX_TIME_TEXT => {
            return Err(format!(
                "longer than {MAX_TIME_TEXT} characters: send RFC 3339 / ISO 8601 text (e.g. `2024-05-01T10:00:00Z`) or Unix seconds as a number"
            ));
        }
        Value::String(s) => {
            let s = s.trim();
            if is_decimal(s) {
                unix_seconds(s)?
            } else {
                iso(s).ok_or_else(|| {
                    format!(
                        "`{s}` is not a date-time: send RFC 3339 / ISO 8601 text (e.g. `2024-05-01T10:00:00Z`) or Unix seconds as a number"
                    )
                })?
            }
        }
        other => {
            return Err(format!(
                "expected an ISO 8601 date-time or Unix seconds, found {}",
                json_type(other)
            ));
        }
    };
    let seconds = t.timestamp();
    if (MIN_UNIX_SECONDS..MAX_UNIX_SECONDS).contains(&seconds) {
        Ok(t)
    } else {
        Err(format!(
            "{} is outside the accepted range, {TIME_RANGE}",
            format_timestamp(&t)
        ))
    }
}

/// The one form every time is stored and answered in: RFC 3339 in UTC with microseconds,
/// `2024-05-01T10:00:00.000000Z`. Every engine stores the same text for the same instant,
/// whatever form it came in.
pub fn format_timestamp(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Reads a whole number: a JSON integer, a number with no fraction (`2.0`), or the text
/// of one (`"2"`). Anything else is refused with the reason.
pub fn whole_number(value: &Value) -> Result<i64, String> {
    match value {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(i)
            } else {
                match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
                    _ => Err(format!("`{n}` is not a whole number")),
                }
            }
        }
        Value::String(s) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("`{s}` is not a whole number")),
        other => Err(format!("expected a number, found {}", json_type(other))),
    }
}

/// The first field name, at any depth, that holds a NUL character: BSON (MongoDB) keeps
/// names as C strings and cannot store it, so such a record is refused up front on every
/// engine alike.
pub fn nul_field_name(map: &serde_json::Map<String, Value>) -> Option<String> {
    fn walk(value: &Value) -> Option<String> {
        match value {
            Value::Object(map) => nul_field_name(map),
            Value::Array(items) => items.iter().find_map(walk),
            _ => None,
        }
    }
    map.iter().find_map(|(name, value)| {
        if name.contains('\0') {
            Some(name.clone())
        } else {
            walk(value)
        }
    })
}

/// Longest id we accept, in bytes: enough for UUIDs, Google Books ids and ISBNs, small
/// enough to keep a hostile id out of Redis keys and index pages.
pub const MAX_ID_LEN: usize = 128;
/// Longest free-text field (name, title) in characters.
pub const MAX_TEXT_LEN: usize = 1_000;
/// The OpenAPI schema of an id: a non-empty string, or an integer (the seeds send both;
/// it is stored as text).
pub fn id_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(MAX_ID_LEN))
                .pattern(Some(r"\S")),
        )
        .item(ObjectBuilder::new().schema_type(Type::Integer))
        .description(Some("A non-empty string, or an integer (stored as text)"))
        .build()
        .into()
}

/// The OpenAPI schema of an optional text field that may also come as a number (stored
/// as its text).
pub fn text_or_number_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(ObjectBuilder::new().schema_type(Type::Number))
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some("Text, or a number (stored as its text), or null"))
        .build()
        .into()
}

/// The OpenAPI schema of a timestamp: ISO 8601 text or Unix seconds.
pub fn timestamp_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(MAX_TIME_TEXT))
                .examples(["2024-05-01T10:00:00.000000Z"]),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .minimum(Some(MIN_UNIX_SECONDS as f64))
                .exclusive_maximum(Some(MAX_UNIX_SECONDS as f64))
                .examples([1795449989.1135995]),
        )
        .description(Some(
            "When: RFC 3339 / ISO 8601 text (naive means UTC), or Unix seconds as a number \
             (integer or fraction, as Python's time.time() gives) or as its text. Accepted from \
             1970-01-01 to 2200-01-01; values that look like milliseconds are refused. Stored \
             and answered as RFC 3339 UTC with microseconds, e.g. 2024-05-01T10:00:00.000000Z.",
        ))
        .build()
        .into()
}

/// Why a message cannot become an entity. The text is what goes into the dead-letter record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// The bytes are not JSON, or not a JSON object.
    #[error("not a JSON object: {0}")]
    NotJson(String),
    /// A required field is absent or null.
    #[error("missing field `{0}`")]
    Missing(&'static str),
    /// A field has the wrong JSON type or an unacceptable value.
    #[error("field `{field}`: {problem}")]
    Field {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The record refers to another (an order to its customer) that no store holds.
    #[error("unknown {kind} `{id}`, referred to but not stored")]
    UnknownReference {
        /// What is referred to (`customer`, …).
        kind: &'static str,
        /// The id that was not found.
        id: String,
    },
}

impl Invalid {
    pub fn field(field: &'static str, problem: impl fmt::Display) -> Self {
        Invalid::Field {
            field,
            problem: problem.to_string(),
        }
    }
}

/// Reads the entity object out of a payload: the envelope's `data`, or the bare object.
pub fn object(payload: &[u8]) -> Result<serde_json::Map<String, Value>, Invalid> {
    // Most payloads are our envelopes: only `data` is built into a tree. Its other
    // attributes, when each became a `Value` in an ordered map with hashed keys (bson
    // turns on serde_json's `preserve_order`), were most of a message's parsing. Only an
    // object whose first key is `specversion`, as our envelopes write it, is probed, so a
    // bare entity (an HTTP body, a seed's message) is parsed once, as before; and anything
    // the probe does not take whole (a duplicate attribute, bad JSON) is parsed as before
    // too, so the outcome and its reason are the same either way.
    if starts_as_envelope(payload)
        && let Ok(EnvelopeProbe {
            specversion: Some(_),
            data: Some(data),
        }) = serde_json::from_slice(payload)
        && let Ok(Value::Object(map)) = serde_json::from_str(data.get())
    {
        return Ok(map);
    }
    object_from_tree(payload)
}

/// [`object`] the plain way: the whole payload parsed into a tree, then its `data` taken.
fn object_from_tree(payload: &[u8]) -> Result<serde_json::Map<String, Value>, Invalid> {
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| Invalid::NotJson(e.to_string()))?;
    match envelope::data_of(value) {
        Value::Object(map) => Ok(map),
        other => Err(Invalid::NotJson(format!(
            "expected an object, found {}",
            json_type(&other)
        ))),
    }
}

/// Whether `payload` is an object whose first key is `specversion`. (An array is not: a
/// derived struct would read one by position.)
fn starts_as_envelope(payload: &[u8]) -> bool {
    payload
        .trim_ascii_start()
        .strip_prefix(b"{")
        .is_some_and(|rest| rest.trim_ascii_start().starts_with(br#""specversion""#))
}

/// An envelope's `data`, unparsed, and whether it names a `specversion`; every other
/// attribute is skipped.
#[derive(serde::Deserialize)]
struct EnvelopeProbe<'a> {
    specversion: Option<serde::de::IgnoredAny>,
    #[serde(borrow)]
    data: Option<&'a serde_json::value::RawValue>,
}

/// An id may be a non-empty string or an integer (the seeds use both); it is kept as text.
pub fn id(map: &serde_json::Map<String, Value>, field: &'static str) -> Result<String, Invalid> {
    let id = match map.get(field) {
        None | Some(Value::Null) => return Err(Invalid::Missing(field)),
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        Some(other) => {
            return Err(Invalid::field(
                field,
                format!("expected a string id, found {}", json_type(other)),
            ));
        }
    };
    match id_problem(&id) {
        Some(problem) => Err(Invalid::field(field, problem)),
        None => Ok(id),
    }
}

/// What makes `id` unacceptable as an entity id, if anything. The HTTP API uses it too: a
/// path id with a problem cannot name a stored record.
pub fn id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        Some("must not be empty".into())
    } else if id.len() > MAX_ID_LEN {
        Some(format!("longer than {MAX_ID_LEN} bytes"))
    } else if id.chars().any(char::is_control) {
        Some("contains control characters".into())
    } else {
        None
    }
}

pub fn text(map: &serde_json::Map<String, Value>, field: &'static str) -> Result<String, Invalid> {
    match map.get(field) {
        None | Some(Value::Null) => Err(Invalid::Missing(field)),
        Some(Value::String(s)) => {
            let s = s.trim();
            if s.is_empty() {
                Err(Invalid::field(field, "must not be empty"))
            } else if s.chars().count() > MAX_TEXT_LEN {
                Err(Invalid::field(
                    field,
                    format!("longer than {MAX_TEXT_LEN} characters"),
                ))
            } else if s.contains('\0') {
                Err(Invalid::field(field, "contains a NUL character"))
            } else {
                Ok(s.to_string())
            }
        }
        Some(other) => Err(Invalid::field(
            field,
            format!("expected a string, found {}", json_type(other)),
        )),
    }
}

/// An optional field that is text, where a number stands for its own text (an ISBN or a
/// year sent as a JSON number); absent or null is `None`.
pub fn optional_text(
    map: &serde_json::Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, Invalid> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(Invalid::field(
            field,
            format!("expected a string or null, found {}", json_type(other)),
        )),
    }
}

/// A pragmatic e-mail check: one `@`, a non-empty local part, a dotted domain, no spaces.
/// Deliverability is not our business; obvious garbage is.
pub fn email(map: &serde_json::Map<String, Value>) -> Result<String, Invalid> {
    let email = text(map, "email")?;
    let ok = match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !email.chars().any(char::is_whitespace)
        }
        None => false,
    };
    if ok {
        Ok(email)
    } else {
        Err(Invalid::field(
            "email",
            format!("`{email}` is not an e-mail address"),
        ))
    }
}

/// Digits with at most one decimal point, optionally signed: the text of a JSON number
/// without an exponent.
fn is_decimal(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty()
        && digits.chars().filter(|c| *c == '.').count() <= 1
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.chars().any(|c| c.is_ascii_digit())
}

/// Unix seconds from the text of a number, to the microsecond (rounded half up). The
/// text is read as decimal digits, not through a float, so `1795449989.1135995` keeps
/// what its sender wrote.
fn unix_seconds(text: &str) -> Result<DateTime<Utc>, String> {
    let as_float: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if as_float < 0.0 {
        return Err(format!(
            "{text} is negative; send Unix seconds from {TIME_RANGE}"
        ));
    }
    if as_float >= LOOKS_LIKE_MILLIS {
        return Err(format!(
            "{text} looks like milliseconds since 1970; send Unix seconds (divide by 1000), from {TIME_RANGE}"
        ));
    }
    if as_float >= MAX_UNIX_SECONDS as f64 {
        return Err(format!(
            "{text} is outside the accepted range, {TIME_RANGE}"
        ));
    }
    let (seconds, micros) = if is_decimal(text) {
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let whole: i64 = if whole.is_empty() {
            0
        } else {
            whole
                .parse()
                .map_err(|_| format!("`{text}` is not a number of seconds"))?
        };
        let mut digits = fraction.bytes().map(|b| i64::from(b - b'0'));
        let mut micros = 0;
        for _ in 0..6 {
            micros = micros * 10 + digits.next().unwrap_or(0);
        }
        if digits.next().unwrap_or(0) >= 5 {
            micros += 1;
        }
        (whole, micros)
    } else {
        // An exponent (`1.7e9`): the float is as exact as the sender's text allows.
        let whole = as_float.floor();
        (whole as i64, ((as_float - whole) * 1e6).round() as i64)
    };
    let t = DateTime::from_timestamp(seconds, 0)
        .and_then(|t| t.checked_add_signed(chrono::TimeDelta::microseconds(micros)))
        .ok_or_else(|| format!("{text} is outside the accepted range, {TIME_RANGE}"))?;
    Ok(t)
}

/// An RFC 3339 time, or a naive ISO 8601 one read as UTC (`T` or a space between date
/// and time, as Python's `isoformat()` and `str(datetime)` write them).
fn iso(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
    .map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `object` probes envelopes without building their attributes; whatever the payload,
    /// it must answer as parsing the whole tree does.
    #[test]
    fn an_envelope_s_data_is_read_as_the_whole_tree_would_give_it() {
        let whole_tree = object_from_tree;
        let data = json!({"id": "c1", "name": "Ana", "email": "ana@example.com"});
        let ours = envelope::Envelope::new("livros.customer", "c1", None, &data).to_vec();
        let payloads: Vec<Vec<u8>> = vec![
            ours.clone(),
            data.to_string().into_bytes(),
            br#"  { "specversion": "1.0", "extra": [1, {"a": null}], "data": {"id": 1}}"#.to_vec(),
            br#"{"data": {"id": 1}, "specversion": "1.0"}"#.to_vec(),
            br#"{"specversion": null, "data": {"id": "x"}}"#.to_vec(),
            br#"{"specversion": "1.0", "data": null}"#.to_vec(),
            br#"{"specversion": "1.0", "data": [1, 2]}"#.to_vec(),
            br#"{"specversion": "1.0", "data": "text"}"#.to_vec(),
            br#"{"specversion": "1.0", "data": {"id": "a"}, "data": {"id": "b"}}"#.to_vec(),
            br#"{"specversion": "1.0", "specversion": "1.0", "data": {"id": "a"}}"#.to_vec(),
            br#"{"specversion": "1.0", "data": {"id": "a"}} trailing"#.to_vec(),
            br#"["1.0", {"id": "a"}]"#.to_vec(),
            br#"{"specversion": "1.0"}"#.to_vec(),
            b"not json".to_vec(),
            b"".to_vec(),
        ];
        for payload in &payloads {
            assert_eq!(
                object(payload),
                whole_tree(payload),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
        assert_eq!(object(&ours).unwrap(), *data.as_object().unwrap());
        assert!(
            starts_as_envelope(&ours),
            "our envelopes are the ones probed"
        );
        assert!(!starts_as_envelope(data.to_string().as_bytes()));
        assert!(object(br#"["1.0", {"id": "a"}]"#).is_err());
    }

    fn canonical(v: Value) -> Result<String, String> {
        timestamp(&v).map(|t| format_timestamp(&t))
    }

    #[test]
    fn every_form_the_originals_send_is_one_instant() {
        // `time.time()` of the original S1s, as JSON and as the text they left in Redis.
        assert_eq!(
            canonical(json!(1795449989.1135995)).unwrap(),
            "2026-11-23T16:06:29.113600Z"
        );
        assert_eq!(
            canonical(json!("1795449989.1135995")).unwrap(),
            "2026-11-23T16:06:29.113600Z"
        );
        assert_eq!(
            canonical(json!(1795449989)).unwrap(),
            "2026-11-23T16:06:29.000000Z"
        );
        // ISO text: with an offset, naive (UTC), with a space, with microseconds.
        for text in [
            "2026-11-23T16:06:29.1136Z",
            "2026-11-23T13:06:29.1136-03:00",
            "2026-11-23T16:06:29.113600",
            "2026-11-23 16:06:29.1136",
        ] {
            assert_eq!(
                canonical(json!(text)).unwrap(),
                "2026-11-23T16:06:29.113600Z",
                "{text}"
            );
        }
        assert_eq!(
            canonical(json!(1.7954499891135995e9)).unwrap(),
            "2026-11-23T16:06:29.113600Z"
        );
        assert_eq!(canonical(json!(0)).unwrap(), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn refusals_say_why_and_give_the_range() {
        let millis = canonical(json!(1795449989113_i64)).unwrap_err();
        assert!(millis.contains("milliseconds"), "{millis}");
        let negative = canonical(json!(-1)).unwrap_err();
        assert!(
            negative.contains("negative") && negative.contains("1970"),
            "{negative}"
        );
        let far = canonical(json!(8e9)).unwrap_err();
        assert!(far.contains(TIME_RANGE), "{far}");
        let text_far = canonical(json!("2300-01-01T00:00:00Z")).unwrap_err();
        assert!(text_far.contains(TIME_RANGE), "{text_far}");
        let old = canonical(json!("1969-12-31T23:59:59Z")).unwrap_err();
        assert!(old.contains(TIME_RANGE), "{old}");
        assert!(
            canonical(json!("yesterday"))
                .unwrap_err()
                .contains("not a date-time")
        );
        assert!(canonical(json!(true)).unwrap_err().contains("a boolean"));
        assert!(canonical(json!("1.2.3")).is_err());
        assert!(
            canonical(json!("0".repeat(65)))
                .unwrap_err()
                .contains("longer than 64")
        );
    }

    #[test]
    fn whole_numbers_from_numbers_and_text() {
        assert_eq!(whole_number(&json!(2)), Ok(2));
        assert_eq!(whole_number(&json!(2.0)), Ok(2));
        assert_eq!(whole_number(&json!(" 2 ")), Ok(2));
        assert!(whole_number(&json!(2.5)).unwrap_err().contains("whole"));
        assert!(whole_number(&json!("two")).unwrap_err().contains("whole"));
        assert!(whole_number(&json!([2])).unwrap_err().contains("an array"));
    }
}
