//! The event envelope: CloudEvents 1.0 attributes in structured JSON mode.
//!
//! Our S1 publishes `{"specversion":"1.0","id":…,"type":…,"source":…,"time":…,
//! "subject":…,"correlationid":…,"datacontenttype":"application/json","data":{…}}`, and the
//! same attributes as `ce_*` headers (CloudEvents' Kafka binding names), so any Kafka client
//! can read it as plain JSON. Consumers also accept a bare entity object (the seeds' own
//! producers send those), which [`data_of`] returns unchanged.

use serde_json::{Value, json};

/// The `source` attribute of everything S1 publishes.
pub const SOURCE: &str = "livros/s1";

/// Wraps `data` in an envelope. `kind` is the event type, `subject` the entity id.
pub fn wrap(kind: &str, subject: &str, correlation_id: Option<&str>, data: Value) -> Value {
    let id = uuid::Uuid::new_v4().to_string();
    json!({
        "specversion": "1.0",
        "id": id,
        "type": kind,
        "source": SOURCE,
        "subject": subject,
        "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "correlationid": correlation_id.unwrap_or(&id),
        "datacontenttype": "application/json",
        "data": data,
    })
}

/// The headers that repeat an envelope's attributes (CloudEvents Kafka binding, `ce_` prefix).
pub fn headers(envelope: &Value) -> Vec<(String, String)> {
    ["id", "type", "source", "time", "subject", "correlationid"]
        .iter()
        .filter_map(|attr| {
            envelope
                .get(attr)
                .and_then(Value::as_str)
                .map(|v| (format!("ce_{attr}"), v.to_string()))
        })
        .collect()
}

/// The entity inside a message: the envelope's `data`, or the value itself when it is bare.
pub fn data_of(value: Value) -> Value {
    match value {
        Value::Object(mut map) if map.contains_key("specversion") && map.contains_key("data") => {
            map.remove("data").unwrap_or(Value::Null)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trip_and_headers() {
        let e = wrap("livros.book", "b1", Some("corr"), json!({"id": "b1"}));
        let h = headers(&e);
        assert!(h.contains(&("ce_subject".into(), "b1".into())));
        assert!(h.contains(&("ce_correlationid".into(), "corr".into())));
        assert_eq!(data_of(e), json!({"id": "b1"}));
        assert_eq!(data_of(json!({"id": "x"})), json!({"id": "x"}));
    }
}
