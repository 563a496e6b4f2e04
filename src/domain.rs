//! The bookstore's entities, and the one place that decides whether a message is valid.
//!
//! "Parse, don't validate": [`parse_customer`], [`parse_book`] and [`parse_order`] are the only
//! way to build an entity from bytes off the wire, so an invalid record cannot reach a store.
//! They accept both our CloudEvents-style envelope and the seed's bare JSON payloads.
//!
//! What is invalid (and therefore dead-lettered) is listed in [`Invalid`].

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::envelope;

/// Longest id we accept, in bytes: enough for UUIDs, Google Books ids and ISBNs, small
/// enough to keep a hostile id out of Redis keys and index pages.
pub const MAX_ID_LEN: usize = 128;
/// Longest free-text field (name, title) in characters.
pub const MAX_TEXT_LEN: usize = 1_000;
/// Largest quantity in one order line; the generator uses 1–5, a real shop caps it too.
pub const MAX_QUANTITY: i64 = 1_000;

/// The OpenAPI schema of an id: a non-empty string, or an integer (the seeds send both;
/// it is stored as text).
fn id_schema() -> utoipa::openapi::schema::Schema {
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

/// A customer, stored in the relational store (table `customers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"id": "c-1", "name": "Maria Souza", "email": "maria.souza@example.com"}))]
pub struct Customer {
    /// Stable identity; writes are upserts on it.
    #[schema(schema_with = id_schema)]
    pub id: String,
    /// Full name.
    #[schema(min_length = 1, max_length = 1000)]
    pub name: String,
    /// E-mail address (not unique: two people may share one).
    #[schema(min_length = 1, max_length = 1000)]
    pub email: String,
}

/// A book in the Google Books shape, stored in the document store (collection `books`).
///
/// Only `id` and `title` are required; everything else is optional because catalogue
/// records vary, which is why books live in a document store. Unknown fields are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"id": "b-1", "isbn": "9788535902771", "title": "Dom Casmurro",
    "authors": ["Machado de Assis"], "publishedDate": "1899", "publisher": "Garnier"}))]
pub struct Book {
    /// Stable identity (a Google Books volume id, or our catalogue's id).
    #[schema(schema_with = id_schema)]
    pub id: String,
    /// ISBN-13 when known (ISBN-10 accepted from outside sources).
    #[schema(nullable)]
    pub isbn: Option<String>,
    /// Title.
    #[schema(min_length = 1, max_length = 1000)]
    pub title: String,
    /// Authors, possibly none.
    #[serde(default)]
    #[schema(nullable)]
    pub authors: Vec<String>,
    /// Publication date as the source gives it (`1899`, `1899-05`, `1899-05-01`).
    #[schema(nullable)]
    #[serde(
        rename = "publishedDate",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub published_date: Option<String>,
    /// Every other field of the source record (publisher, language, categories, pageCount…).
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: serde_json::Map<String, Value>,
}

/// An order line: a customer buying some copies of a book. Stored in the key-value store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"id": "o-1", "customer_id": "c-1", "book_id": "b-1", "quantity": 2,
    "timestamp": "2024-05-01T10:00:00Z"}))]
pub struct Order {
    /// Stable identity.
    #[schema(schema_with = id_schema)]
    pub id: String,
    /// The customer who ordered; must exist in the relational store.
    #[schema(schema_with = id_schema)]
    pub customer_id: String,
    /// The book ordered; must exist in the document store.
    #[schema(schema_with = id_schema)]
    pub book_id: String,
    /// Copies, 1 to [`MAX_QUANTITY`].
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: i64,
    /// When the order was placed (RFC 3339, or a naive ISO 8601 time read as UTC).
    #[schema(min_length = 1, max_length = 1000)]
    pub timestamp: String,
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
    /// An order references a customer or book that no store holds.
    #[error("unknown {kind} `{id}` referenced by order")]
    UnknownReference {
        /// `customer` or `book`.
        kind: &'static str,
        /// The id that was not found.
        id: String,
    },
}

impl Invalid {
    fn field(field: &'static str, problem: impl fmt::Display) -> Self {
        Invalid::Field {
            field,
            problem: problem.to_string(),
        }
    }
}

/// Reads the entity object out of a payload: the envelope's `data`, or the bare object.
fn object(payload: &[u8]) -> Result<serde_json::Map<String, Value>, Invalid> {
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

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An id may be a non-empty string or an integer (the seeds use both); it is kept as text.
fn id(map: &serde_json::Map<String, Value>, field: &'static str) -> Result<String, Invalid> {
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

fn text(map: &serde_json::Map<String, Value>, field: &'static str) -> Result<String, Invalid> {
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

/// A pragmatic e-mail check: one `@`, a non-empty local part, a dotted domain, no spaces.
/// Deliverability is not our business; obvious garbage is.
fn email(map: &serde_json::Map<String, Value>) -> Result<String, Invalid> {
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

/// Parses a customer from a message payload.
pub fn parse_customer(payload: &[u8]) -> Result<Customer, Invalid> {
    let map = object(payload)?;
    Ok(Customer {
        id: id(&map, "id")?,
        name: text(&map, "name")?,
        email: email(&map)?,
    })
}

/// Parses a book from a message payload.
pub fn parse_book(payload: &[u8]) -> Result<Book, Invalid> {
    let mut map = object(payload)?;
    let book_id = id(&map, "id")?;
    let title = text(&map, "title")?;
    let isbn = match map.get("isbn") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let digits: String = s.chars().filter(|c| *c != '-' && *c != ' ').collect();
            let well_formed = matches!(digits.len(), 10 | 13)
                && digits
                    .char_indices()
                    .all(|(i, c)| c.is_ascii_digit() || (c == 'X' && i == 9 && digits.len() == 10));
            if !well_formed {
                return Err(Invalid::field(
                    "isbn",
                    format!("`{s}` is not an ISBN-10 or ISBN-13"),
                ));
            }
            Some(digits)
        }
        Some(other) => {
            return Err(Invalid::field(
                "isbn",
                format!("expected a string or null, found {}", json_type(other)),
            ));
        }
    };
    let authors = match map.get("authors") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|a| match a {
                Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
                _ => Err(Invalid::field(
                    "authors",
                    "every author must be a non-empty string",
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(Invalid::field(
                "authors",
                format!("expected an array of strings, found {}", json_type(other)),
            ));
        }
    };
    let published_date = match map.get("publishedDate") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(Invalid::field(
                "publishedDate",
                format!("expected a string, found {}", json_type(other)),
            ));
        }
    };
    for known in ["id", "isbn", "title", "authors", "publishedDate"] {
        map.remove(known);
    }
    Ok(Book {
        id: book_id,
        isbn,
        title,
        authors,
        published_date,
        extra: map,
    })
}

/// Parses an order from a message payload. Whether its customer and book exist is checked
/// later, against the stores, by the router.
pub fn parse_order(payload: &[u8]) -> Result<Order, Invalid> {
    let map = object(payload)?;
    let quantity = match map.get("quantity") {
        None | Some(Value::Null) => return Err(Invalid::Missing("quantity")),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| Invalid::field("quantity", format!("`{n}` is not a whole number")))?,
        Some(other) => {
            return Err(Invalid::field(
                "quantity",
                format!("expected a number, found {}", json_type(other)),
            ));
        }
    };
    if !(1..=MAX_QUANTITY).contains(&quantity) {
        return Err(Invalid::field(
            "quantity",
            format!("{quantity} is outside 1..={MAX_QUANTITY}"),
        ));
    }
    let timestamp = text(&map, "timestamp")?;
    if parse_time(&timestamp).is_none() {
        return Err(Invalid::field(
            "timestamp",
            format!("`{timestamp}` is not an ISO 8601 date-time"),
        ));
    }
    Ok(Order {
        id: id(&map, "id")?,
        customer_id: id(&map, "customer_id")?,
        book_id: id(&map, "book_id")?,
        quantity,
        timestamp,
    })
}

/// Reads an RFC 3339 time, or a naive ISO 8601 one (Python's `datetime.now().isoformat()`) as UTC.
pub fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&chrono::Utc));
    }
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc())
}

/// Checks the ISBN-13 check digit (used by the catalogue's own tests and by S1).
pub fn isbn13_is_valid(isbn: &str) -> bool {
    let digits: Vec<u32> = isbn.chars().filter_map(|c| c.to_digit(10)).collect();
    if digits.len() != 13 || isbn.chars().filter(|c| c.is_ascii_digit()).count() != 13 {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .enumerate()
        .map(|(i, d)| if i % 2 == 0 { *d } else { d * 3 })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_and_enveloped_customers_parse_alike() {
        let bare = br#"{"id":"c1","name":"Maria Souza","email":"maria.souza@example.com"}"#;
        let data: Value = serde_json::from_slice(bare).unwrap();
        let wrapped = envelope::Envelope::new("livros.customer", "c1", None, &data).to_vec();
        let a = parse_customer(bare).unwrap();
        let b = parse_customer(&wrapped).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.name, "Maria Souza");
    }

    #[test]
    fn numeric_ids_are_accepted_as_text() {
        let c = parse_customer(br#"{"id":42,"name":"A","email":"a@example.org"}"#).unwrap();
        assert_eq!(c.id, "42");
    }

    #[test]
    fn invalid_customers_say_why() {
        assert!(matches!(
            parse_customer(b"not json"),
            Err(Invalid::NotJson(_))
        ));
        assert!(matches!(parse_customer(b"[1,2]"), Err(Invalid::NotJson(_))));
        assert_eq!(
            parse_customer(br#"{"id":"c","email":"a@example.org"}"#),
            Err(Invalid::Missing("name"))
        );
        let err = parse_customer(br#"{"id":"c","name":"A","email":"nope"}"#).unwrap_err();
        assert!(err.to_string().contains("not an e-mail"), "{err}");
        let err = parse_customer(br#"{"id":"","name":"A","email":"a@b.co"}"#).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn books_keep_unknown_fields_and_check_isbn() {
        let b = parse_book(
            br#"{"id":"b1","isbn":"978-85-359-0277-1","title":"Dom Casmurro","authors":["Machado de Assis"],"publisher":"X","pageCount":256}"#,
        )
        .unwrap();
        assert_eq!(b.isbn.as_deref(), Some("9788535902771"));
        assert_eq!(b.extra["pageCount"], 256);
        assert!(
            parse_book(br#"{"id":"b1","isbn":null,"title":"T"}"#)
                .unwrap()
                .isbn
                .is_none()
        );
        assert!(parse_book(br#"{"id":"b1","isbn":"12","title":"T"}"#).is_err());
        assert!(parse_book(br#"{"id":"b1","title":"T","authors":"Machado"}"#).is_err());
    }

    #[test]
    fn orders_check_quantity_and_time() {
        let ok = br#"{"id":"o","customer_id":"c","book_id":"b","quantity":2,"timestamp":"2024-05-01T10:00:00.123456"}"#;
        assert_eq!(parse_order(ok).unwrap().quantity, 2);
        let zero = br#"{"id":"o","customer_id":"c","book_id":"b","quantity":0,"timestamp":"2024-05-01T10:00:00Z"}"#;
        assert!(parse_order(zero).is_err());
        let text_qty = br#"{"id":"o","customer_id":"c","book_id":"b","quantity":"2","timestamp":"2024-05-01T10:00:00Z"}"#;
        assert!(parse_order(text_qty).is_err());
        let bad_time =
            br#"{"id":"o","customer_id":"c","book_id":"b","quantity":1,"timestamp":"yesterday"}"#;
        assert!(parse_order(bad_time).is_err());
    }

    #[test]
    fn isbn13_check_digit() {
        assert!(isbn13_is_valid("9780306406157"));
        assert!(!isbn13_is_valid("9780306406158"));
        assert!(!isbn13_is_valid("978030640615"));
    }
}
