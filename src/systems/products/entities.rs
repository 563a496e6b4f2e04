//! What the products pipeline carries: the seed's registration message on
//! `cadastro-produtos` ([`parse_registration`]), and the product the scheduler makes of it,
//! posts to the API and the API stores and announces ([`Product`], [`parse_product`]).
//! No I/O here: the rules, in one place, for the scheduler and the API alike.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::wire::{self, Invalid, json_type};

/// Largest stock quantity: fifteen digits (what a double holds exactly, for every client).
pub const MAX_QUANTITY: i64 = 999_999_999_999_999;

/// Largest price: what `NUMERIC(14,2)` holds.
pub const MAX_PRICE: &str = "999999999999.99";

/// A product as the API stores it and `produtos-persistidos` announces it: the seed's
/// transformed shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"id": "p-1001", "name": "Cafeteira Elétrica Inox",
    "description": "Cafeteira para 30 xícaras", "pricing": {"amount": 249.9, "currency": "BRL"},
    "availability": {"quantity": 12, "timestamp": "2026-11-23T22:00:00.000000Z"},
    "category": "Eletrodomésticos"}))]
pub struct Product {
    /// The seller's id (`productId`): text, or an integer kept as text.
    #[schema(schema_with = wire::id_schema)]
    pub id: String,
    /// Its name (`productName`).
    #[schema(min_length = 1, max_length = 1000, pattern = r"\S")]
    pub name: String,
    /// Its description (`productDescription`); `null` when none was given.
    pub description: Option<String>,
    /// What it costs.
    pub pricing: Pricing,
    /// How many are in stock, as of when.
    pub availability: Availability,
    /// Its category; `null` when none was given.
    pub category: Option<String>,
}

/// A price: an amount with at most two decimals, and its currency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Pricing {
    /// Zero or more, at most two decimals (stored as `NUMERIC(14,2)`).
    #[schema(schema_with = amount_schema)]
    #[serde(with = "amount")]
    pub amount: Decimal,
    /// An ISO 4217 code (`BRL`), answered in upper case.
    #[schema(example = "BRL", pattern = r"^\s*[A-Za-z]{3}\s*$")]
    pub currency: String,
}

/// Stock: how many, as of when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Availability {
    /// Units in stock: a whole number, zero or more.
    #[schema(schema_with = quantity_schema)]
    pub quantity: i64,
    /// When the quantity was taken; when a request leaves it out, the time it arrived.
    #[schema(schema_with = wire::timestamp_schema)]
    #[serde(with = "timestamp", default = "Utc::now")]
    pub timestamp: DateTime<Utc>,
}

/// The OpenAPI schema of an amount: a number, or its decimal text.
fn amount_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .minimum(Some(0.0))
                .maximum(Some(999_999_999_999.99))
                .examples([249.9]),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^\s*\d{1,12}(\.\d{1,2})?\s*$")),
        )
        .description(Some(
            "Zero or more, at most two decimals: a number, or its text. Answered as a number.",
        ))
        .build()
        .into()
}

/// The OpenAPI schema of a quantity: a whole number ≥ 0, or its text.
fn quantity_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0.0))
                .maximum(Some(MAX_QUANTITY as f64)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^\s*\d{1,15}\s*$")),
        )
        .description(Some(
            "A whole number, zero or more, or its text. Answered as a number.",
        ))
        .build()
        .into()
}

/// Amounts travel as JSON numbers, as the seed's floats did.
mod amount {
    use super::*;

    pub fn serialize<S: serde::Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.to_f64().unwrap_or_default())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        let v = Value::deserialize(d)?;
        price(&v).map_err(serde::de::Error::custom)
    }
}

/// Times in the one stored form ([`wire::format_timestamp`]).
mod timestamp {
    use super::*;

    pub fn serialize<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&wire::format_timestamp(t))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let v = Value::deserialize(d)?;
        wire::timestamp(&v).map_err(serde::de::Error::custom)
    }
}

impl Product {
    /// The product as JSON text, the way the API answers and the relay publishes it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a product serializes")
    }
}

/// Reads a registration from `cadastro-produtos` — the seed's `{"productId",
/// "productName", "productDescription", "price", "currency", "stockQuantity",
/// "category"}`, bare or in an envelope — and transforms it into the product the API
/// takes, its stock taken `at`.
///
/// Refused, with the field and the reason: a missing or empty id or name; a price that is
/// negative, has more than two decimals or is not a number; a currency that is not an ISO
/// 4217 code; a stock that is not a whole number ≥ 0.
pub fn parse_registration(payload: &[u8], at: DateTime<Utc>) -> Result<Product, Invalid> {
    let map = wire::object(payload)?;
    Ok(Product {
        id: wire::id(&map, "productId")?,
        name: wire::text(&map, "productName")?,
        description: optional(&map, "productDescription")?,
        pricing: Pricing {
            amount: required(&map, "price", price)?,
            currency: required(&map, "currency", currency)?,
        },
        availability: Availability {
            quantity: required(&map, "stockQuantity", quantity)?,
            timestamp: at,
        },
        category: optional(&map, "category")?,
    })
}

/// Reads a product in the transformed shape (what the scheduler posts to the API), with
/// the same rules as [`parse_registration`]; a missing `availability.timestamp` is now.
pub fn parse_product(payload: &[u8]) -> Result<Product, Invalid> {
    let map = wire::object(payload)?;
    let pricing = nested(&map, "pricing")?;
    let availability = nested(&map, "availability")?;
    let timestamp = match availability.get("timestamp") {
        None => Utc::now(),
        Some(v) => wire::timestamp(v).map_err(|e| Invalid::field("availability.timestamp", e))?,
    };
    Ok(Product {
        id: wire::id(&map, "id")?,
        name: wire::text(&map, "name")?,
        description: optional(&map, "description")?,
        pricing: Pricing {
            amount: required(&pricing, "amount", price)
                .map_err(|e| renamed(e, "pricing.amount"))?,
            currency: required(&pricing, "currency", currency)
                .map_err(|e| renamed(e, "pricing.currency"))?,
        },
        availability: Availability {
            quantity: required(&availability, "quantity", quantity)
                .map_err(|e| renamed(e, "availability.quantity"))?,
            timestamp,
        },
        category: optional(&map, "category")?,
    })
}

/// The object under `field`.
fn nested(map: &Map<String, Value>, field: &'static str) -> Result<Map<String, Value>, Invalid> {
    match map.get(field) {
        None | Some(Value::Null) => Err(Invalid::Missing(field)),
        Some(Value::Object(inner)) => Ok(inner.clone()),
        Some(other) => Err(Invalid::field(
            field,
            format!("expected an object, found {}", json_type(other)),
        )),
    }
}

/// The same refusal, naming the field by its full path.
fn renamed(e: Invalid, path: &'static str) -> Invalid {
    match e {
        Invalid::Missing(_) => Invalid::Missing(path),
        Invalid::Field { problem, .. } => Invalid::Field {
            field: path,
            problem,
        },
        other => other,
    }
}

/// `field`, read by `read`; absent or null is refused.
fn required<T>(
    map: &Map<String, Value>,
    field: &'static str,
    read: impl Fn(&Value) -> Result<T, String>,
) -> Result<T, Invalid> {
    match map.get(field) {
        None | Some(Value::Null) => Err(Invalid::Missing(field)),
        Some(v) => read(v).map_err(|e| Invalid::field(field, e)),
    }
}

/// Optional text: absent, null or blank is `None`; otherwise it follows [`wire::text`]'s
/// rules.
fn optional(map: &Map<String, Value>, field: &'static str) -> Result<Option<String>, Invalid> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(_) => wire::text(map, field).map(Some),
    }
}

/// A price: a JSON number or its text, zero or more, at most two decimals (`19.990` is
/// `19.99`), at most [`MAX_PRICE`].
pub fn price(value: &Value) -> Result<Decimal, String> {
    let text = match value {
        Value::Number(n) => n.to_string(),
        // Text is plain digits: no sign, no exponent, as a person writes a price.
        Value::String(s) if is_plain_decimal(s.trim()) => s.trim().to_string(),
        Value::String(s) => return Err(format!("`{s}` is not a number")),
        other => return Err(format!("expected a number, found {}", json_type(other))),
    };
    let amount = Decimal::from_str(&text)
        .or_else(|_| Decimal::from_scientific(&text))
        .map_err(|_| format!("`{text}` is not a number"))?
        .normalize();
    if amount.is_sign_negative() && !amount.is_zero() {
        return Err(format!("`{text}` is negative"));
    }
    if amount.scale() > 2 {
        return Err(format!("`{text}` has more than two decimals"));
    }
    if amount > Decimal::from_str(MAX_PRICE).expect("a decimal") {
        return Err(format!("`{text}` is more than {MAX_PRICE}"));
    }
    Ok(amount.abs())
}

/// An ISO 4217 currency code; `brl` is read as `BRL`.
pub fn currency(value: &Value) -> Result<String, String> {
    let Value::String(s) = value else {
        return Err(format!(
            "expected an ISO 4217 code such as `BRL`, found {}",
            json_type(value)
        ));
    };
    let code = s.trim().to_ascii_uppercase();
    match iso_currency::Currency::from_code(&code) {
        Some(_) => Ok(code),
        None => Err(format!(
            "`{s}` is not an ISO 4217 currency code (such as `BRL`, `USD`, `EUR`)"
        )),
    }
}

/// Digits, with at most one decimal point between digits.
fn is_plain_decimal(s: &str) -> bool {
    let (whole, fraction) = s.split_once('.').unwrap_or((s, "0"));
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    digits(whole) && digits(fraction)
}

/// A stock quantity: a whole number, zero or more.
pub fn quantity(value: &Value) -> Result<i64, String> {
    if let Value::String(s) = value
        && !s.trim().bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!("`{s}` is not a whole number"));
    }
    let n = wire::whole_number(value)?;
    if n < 0 {
        return Err(format!("`{n}` is negative"));
    }
    if n > MAX_QUANTITY {
        return Err(format!("`{n}` is more than {MAX_QUANTITY}"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at() -> DateTime<Utc> {
        "2026-11-23T10:00:00Z".parse().unwrap()
    }

    fn registration(change: impl FnOnce(&mut Value)) -> Result<Product, Invalid> {
        let mut v = json!({"productId": "p1", "productName": "Cafeteira",
            "productDescription": "Inox", "price": 249.9, "currency": "BRL",
            "stockQuantity": 12, "category": "Casa"});
        change(&mut v);
        parse_registration(v.to_string().as_bytes(), at())
    }

    #[test]
    fn the_seed_message_transforms_into_the_seed_product() {
        let p = registration(|_| {}).unwrap();
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({"id": "p1", "name": "Cafeteira", "description": "Inox",
                "pricing": {"amount": 249.9, "currency": "BRL"},
                "availability": {"quantity": 12, "timestamp": "2026-11-23T10:00:00.000000Z"},
                "category": "Casa"})
        );
        // What the API reads back is what was sent.
        assert_eq!(parse_product(p.to_json().as_bytes()).unwrap(), p);
    }

    #[test]
    fn what_clients_send_is_read() {
        let p = registration(|v| {
            v["productId"] = json!(1001);
            v["price"] = json!("19.990");
            v["currency"] = json!(" usd ");
            v["stockQuantity"] = json!("3");
            v["productDescription"] = json!(null);
        })
        .unwrap();
        assert_eq!(p.id, "1001");
        assert_eq!(p.pricing.amount.to_string(), "19.99");
        assert_eq!(p.pricing.currency, "USD");
        assert_eq!(p.availability.quantity, 3);
        assert_eq!(p.description, None);
        assert_eq!(
            registration(|v| v["price"] = json!(0))
                .unwrap()
                .pricing
                .amount,
            Decimal::ZERO
        );
    }

    #[test]
    fn invalid_registrations_say_which_field_and_why() {
        let problem = |change: fn(&mut Value)| registration(change).unwrap_err().to_string();
        assert!(problem(|v| v["price"] = json!(-1)).contains("negative"));
        assert!(problem(|v| v["price"] = json!(10.999)).contains("two decimals"));
        assert!(problem(|v| v["price"] = json!("dez")).contains("not a number"));
        assert!(problem(|v| v["price"] = json!("+5")).contains("not a number"));
        assert!(problem(|v| v["stockQuantity"] = json!("+5")).contains("whole"));
        assert!(problem(|v| v["price"] = json!(1e15)).contains("more than"));
        assert!(problem(|v| v["currency"] = json!("XYZ")).contains("ISO 4217"));
        assert!(problem(|v| v["currency"] = json!(986)).contains("ISO 4217"));
        assert!(problem(|v| v["stockQuantity"] = json!(-2)).contains("negative"));
        assert!(problem(|v| v["stockQuantity"] = json!(1.5)).contains("whole"));
        assert!(problem(|v| v["productId"] = json!("")).contains("productId"));
        assert!(problem(|v| v["productName"] = json!("  ")).contains("productName"));
        assert!(
            problem(|v| {
                v.as_object_mut().unwrap().remove("price");
            })
            .contains("missing field `price`")
        );
        assert!(
            parse_registration(b"not json", at())
                .unwrap_err()
                .to_string()
                .contains("not a JSON object")
        );
    }

    #[test]
    fn product_fields_are_named_by_their_path() {
        let e = parse_product(
            br#"{"id":"p","name":"n","pricing":{"amount":1,"currency":"BRL"},"availability":{"quantity":-1}}"#,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "field `availability.quantity`: `-1` is negative"
        );
        let e =
            parse_product(br#"{"id":"p","name":"n","availability":{"quantity":1}}"#).unwrap_err();
        assert_eq!(e, Invalid::Missing("pricing"));
    }
}
