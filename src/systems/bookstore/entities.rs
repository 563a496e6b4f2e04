//! The bookstore's entities, and the one place that decides whether a message is valid.
//!
//! "Parse, don't validate": [`parse_customer`], [`parse_book`] and [`parse_order`] are the only
//! way to build an entity from bytes off the wire, so an invalid record cannot reach a store.
//! They accept both our CloudEvents-style envelope and the seed's bare JSON payloads.
//!
//! What is invalid (and therefore dead-lettered) is listed in [`Invalid`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::wire::{
    self, Invalid, email, id, id_schema, json_type, object, optional_text, text,
    text_or_number_schema, timestamp_schema,
};

/// Largest quantity in one order line; the generator uses 1–5, a real shop caps it too.
pub const MAX_QUANTITY: i64 = 1_000;

/// The OpenAPI schema of a quantity: a whole number, or the text of one.
fn quantity_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(MAX_QUANTITY)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^\s*[0-9]+\s*$")),
        )
        .description(Some(
            "Copies, 1 to 1000: a whole number, or its text (answered as a number)",
        ))
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
    #[schema(schema_with = text_or_number_schema)]
    pub isbn: Option<String>,
    /// Title.
    #[schema(min_length = 1, max_length = 1000)]
    pub title: String,
    /// Authors, possibly none.
    #[serde(default)]
    #[schema(nullable)]
    pub authors: Vec<String>,
    /// Publication date as the source gives it (`1899`, `1899-05`, `1899-05-01`).
    #[schema(schema_with = text_or_number_schema)]
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
    #[schema(schema_with = quantity_schema)]
    pub quantity: i64,
    /// When the order was placed, in the canonical form of [`wire::format_timestamp`]
    /// (RFC 3339, UTC, microseconds), whatever form it was sent in.
    #[schema(schema_with = timestamp_schema)]
    pub timestamp: String,
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
    let isbn = match optional_text(&map, "isbn")? {
        None => None,
        Some(s) => {
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
    let published_date = optional_text(&map, "publishedDate")?;
    for known in ["id", "isbn", "title", "authors", "publishedDate"] {
        map.remove(known);
    }
    if let Some(name) = wire::nul_field_name(&map) {
        return Err(Invalid::field(
            "field names",
            format!("{name:?} contains a NUL character, which no document store can keep"),
        ));
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
        Some(v) => wire::whole_number(v).map_err(|problem| Invalid::field("quantity", problem))?,
    };
    if !(1..=MAX_QUANTITY).contains(&quantity) {
        return Err(Invalid::field(
            "quantity",
            format!("{quantity} is outside 1..={MAX_QUANTITY}"),
        ));
    }
    let timestamp = match map.get("timestamp") {
        None | Some(Value::Null) => return Err(Invalid::Missing("timestamp")),
        Some(v) => wire::timestamp(v)
            .map(|t| wire::format_timestamp(&t))
            .map_err(|problem| Invalid::field("timestamp", problem))?,
    };
    Ok(Order {
        id: id(&map, "id")?,
        customer_id: id(&map, "customer_id")?,
        book_id: id(&map, "book_id")?,
        quantity,
        timestamp,
    })
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
    use crate::envelope;

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
        let nul_key = br#"{"id":"b1","title":"T","info":{"a\u0000b":1}}"#;
        assert!(parse_book(nul_key).unwrap_err().to_string().contains("NUL"));
    }

    #[test]
    fn orders_check_quantity_and_time() {
        let ok = br#"{"id":"o","customer_id":"c","book_id":"b","quantity":2,"timestamp":"2024-05-01T10:00:00.123456"}"#;
        assert_eq!(parse_order(ok).unwrap().quantity, 2);
        let zero = br#"{"id":"o","customer_id":"c","book_id":"b","quantity":0,"timestamp":"2024-05-01T10:00:00Z"}"#;
        assert!(parse_order(zero).is_err());
        // The originals' loose shapes: a quantity as text, a time as `time.time()`.
        let loose = br#"{"id":"o","customer_id":"c","book_id":"b","quantity":"2","timestamp":1795449989.1135995}"#;
        let order = parse_order(loose).unwrap();
        assert_eq!(
            (order.quantity, order.timestamp.as_str()),
            (2, "2026-11-23T16:06:29.113600Z")
        );
        assert_eq!(
            parse_order(ok).unwrap().timestamp,
            "2024-05-01T10:00:00.123456Z"
        );
        let text_qty = br#"{"id":"o","customer_id":"c","book_id":"b","quantity":"two","timestamp":"2024-05-01T10:00:00Z"}"#;
        assert!(parse_order(text_qty).is_err());
        let millis =
            br#"{"id":"o","customer_id":"c","book_id":"b","quantity":1,"timestamp":1795449989113}"#;
        let err = parse_order(millis).unwrap_err().to_string();
        assert!(
            err.contains("timestamp") && err.contains("milliseconds"),
            "{err}"
        );
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
