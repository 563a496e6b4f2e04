//! The products in the relational store: table `products` (see the migrations in
//! `migrations/products/`), and the outbox row each new version adds — one SQL text for
//! SQLite and PostgreSQL.
//!
//! A write is a change only if something a buyer sees changed (name, description, price,
//! currency, quantity, category). Then the row takes the new values and the next
//! `version`, and the same transaction adds an outbox row announcing that version. The
//! same product posted again — a redelivery, a scheduler restarted mid-batch, a client's
//! retry — changes nothing and announces nothing; its `availability.timestamp` alone (the
//! scheduler stamps each pass) is not a change.

use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::entities::{Availability, Pricing, Product};
use crate::services::outbox;
use crate::store::{self, Page, RelationalStore, SqlRow, SqlValue, Statement, StoreResult};

/// The columns a product is read from, and its version.
const SELECT: &str = "SELECT id, name, description, CAST(price AS TEXT) AS price, currency, \
                      quantity, available_at, category, version FROM products";

/// A stored product and its version.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The product.
    pub product: Product,
    /// 1 when first stored, one more at each change.
    pub version: i64,
}

fn stored(row: &SqlRow) -> Stored {
    let amount = row
        .text("price")
        .and_then(|p| Decimal::from_str(&p).ok())
        .unwrap_or_default()
        .round_dp(2)
        .normalize();
    let timestamp = row
        .text("available_at")
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map_or_else(Utc::now, |t| t.with_timezone(&Utc));
    Stored {
        product: Product {
            id: row.text("id").unwrap_or_default(),
            name: row.text("name").unwrap_or_default(),
            description: row.text("description"),
            pricing: Pricing {
                amount,
                currency: row.text("currency").unwrap_or_default(),
            },
            availability: Availability {
                quantity: row.int("quantity").unwrap_or_default(),
                timestamp,
            },
            category: row.text("category"),
        },
        version: row.int("version").unwrap_or(1),
    }
}

/// How many values [`store_statements`] binds per product (`version` and `write_id` are
/// written without one each).
const BOUND: usize = 9;

/// The statements that store `products` — no id twice — and announce each product that
/// changed, as its new version, on `topic` through the outbox; the last statement reads
/// them back as stored (see [`stored_rows`]). `write_id` must be new for every call: the
/// rows this write changed are those that carry it.
pub fn store_statements(products: &[&Product], topic: &str, write_id: &str) -> Vec<Statement> {
    let mut rows = Vec::with_capacity(products.len());
    let mut args = Vec::with_capacity(products.len() * BOUND + 1);
    args.push(SqlValue::from(write_id));
    for p in products {
        let first = args.len() + 1;
        let placeholders: Vec<String> = (first..first + BOUND)
            .map(|i| {
                if i == first + 3 {
                    format!("CAST(${i} AS NUMERIC)")
                } else {
                    format!("${i}")
                }
            })
            .collect();
        rows.push(format!("({}, 1, $1)", placeholders.join(", ")));
        args.extend([
            p.id.as_str().into(),
            p.name.as_str().into(),
            SqlValue::Text(p.description.clone()),
            p.pricing.amount.to_string().into(),
            p.pricing.currency.as_str().into(),
            p.availability.quantity.into(),
            crate::wire::format_timestamp(&p.availability.timestamp).into(),
            SqlValue::Text(p.category.clone()),
            p.name.to_lowercase().into(),
        ]);
    }
    let upsert = Statement::new(
        format!(
            "INSERT INTO products (id, name, description, price, currency, quantity,                  available_at, category, search, version, write_id) VALUES {}              ON CONFLICT (id) DO UPDATE SET name = excluded.name,                  description = excluded.description, price = excluded.price,                  currency = excluded.currency, quantity = excluded.quantity,                  available_at = excluded.available_at, category = excluded.category,                  search = excluded.search, version = products.version + 1,                  write_id = excluded.write_id, updated_at = CURRENT_TIMESTAMP              WHERE (products.name, products.description, products.price, products.currency,                     products.quantity, products.category)                  IS DISTINCT FROM (excluded.name, excluded.description, excluded.price,                     excluded.currency, excluded.quantity, excluded.category)",
            rows.join(", ")
        ),
        args,
    );
    // Only the rows this write changed carry its `write_id`: one announcement per new
    // version, none for a product sent again unchanged. Each product is looked up by its
    // key in a subquery of its own rather than joined: PostgreSQL planned the join as a
    // hash join over a sequential scan of `products` while the table was small, kept that
    // plan as it grew, and the statement took 3–5 ms a batch.
    let mut args = vec![SqlValue::from(topic), SqlValue::from(write_id)];
    let mut payloads = Vec::with_capacity(products.len());
    for p in products {
        payloads.push(format!("(${}, ${})", args.len() + 1, args.len() + 2));
        args.extend([p.id.as_str().into(), p.to_json().into()]);
    }
    let announce = Statement::new(
        format!(
            "INSERT INTO {} SELECT $1, v.column1, \
                 (SELECT p.version FROM products p WHERE p.id = v.column1), v.column2 \
             FROM (VALUES {}) AS v \
             WHERE (SELECT p.write_id FROM products p WHERE p.id = v.column1) = $2",
            outbox::COLUMNS,
            payloads.join(", ")
        ),
        args,
    );
    let ids: Vec<String> = products.iter().map(|p| p.id.clone()).collect();
    let mut read = store::select_in(SELECT, "id", &ids);
    debug_assert_eq!(read.len(), 1, "a batch of products fits one statement");
    let mut statements = vec![upsert, announce];
    statements.append(&mut read);
    statements
}

/// The products as stored, from the rows [`store_statements`]'s last statement read.
pub fn stored_rows(rows: &[SqlRow]) -> Vec<Stored> {
    rows.iter().map(stored).collect()
}

/// Products, read through any [`RelationalStore`].
#[async_trait]
pub trait Products {
    /// One product by id.
    async fn product(&self, id: &str) -> StoreResult<Option<Stored>>;
    /// Products ordered by id, one page; only those in `category` and whose name holds
    /// every one of `words` (any case), when given.
    async fn products(
        &self,
        category: Option<&str>,
        words: &[String],
        page: Page,
    ) -> StoreResult<Vec<Stored>>;
    /// How many products are stored.
    async fn count_products(&self) -> StoreResult<i64>;
}

#[async_trait]
impl<S: RelationalStore + ?Sized> Products for S {
    async fn product(&self, id: &str) -> StoreResult<Option<Stored>> {
        let rows = self
            .select(&Statement::new(
                format!("{SELECT} WHERE id = $1"),
                vec![id.into()],
            ))
            .await?;
        Ok(rows.first().map(stored))
    }

    async fn products(
        &self,
        category: Option<&str>,
        words: &[String],
        page: Page,
    ) -> StoreResult<Vec<Stored>> {
        let mut sql = format!("{SELECT} WHERE (CAST($1 AS TEXT) IS NULL OR category = $1)");
        let mut args = vec![
            SqlValue::Text(category.map(str::to_string)),
            SqlValue::Int(Some(i64::try_from(page.limit).unwrap_or(i64::MAX))),
            SqlValue::Int(Some(i64::try_from(page.skip).unwrap_or(i64::MAX))),
        ];
        for word in words {
            args.push(SqlValue::from(format!(
                "%{}%",
                like_escape(&word.to_lowercase())
            )));
            sql.push_str(&format!(" AND search LIKE ${} ESCAPE '\\'", args.len()));
        }
        sql.push_str(" ORDER BY id LIMIT $2 OFFSET $3");
        let rows = self.select(&Statement::new(sql, args)).await?;
        Ok(rows.iter().map(stored).collect())
    }

    async fn count_products(&self) -> StoreResult<i64> {
        let rows = self
            .select(&Statement::new(
                "SELECT COUNT(*) AS n FROM products",
                vec![],
            ))
            .await?;
        Ok(rows.first().and_then(|r| r.int("n")).unwrap_or(0))
    }
}

/// `text` with LIKE's wildcards taken literally.
fn like_escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}
