//! The bookstore's customers in the relational store: table `customers (id, name, email,
//! updated_at)`, by the statements below — one SQL text for SQLite and PostgreSQL.

use std::collections::HashSet;

use async_trait::async_trait;

use super::entities::Customer;
use crate::store::{self, Page, RelationalStore, SqlRow, SqlValue, Statement, StoreResult, Table};

/// The table, for [`store::upsert`].
const CUSTOMERS: Table = Table {
    name: "customers",
    key: &["id"],
    columns: &["id", "name", "email"],
    touched: Some("updated_at"),
};

/// The columns a customer is read from. A NULL name or e-mail (the original bookstore's
/// table allowed them) reads as empty text.
const SELECT: &str = "SELECT id, name, email FROM customers";

fn customer(row: &SqlRow) -> Customer {
    Customer {
        id: row.text("id").unwrap_or_default(),
        name: row.text("name").unwrap_or_default(),
        email: row.text("email").unwrap_or_default(),
    }
}

/// Customers, read and written through any [`RelationalStore`].
#[async_trait]
pub trait Customers {
    /// Inserts or updates customers by id, in one transaction (the last of an id wins).
    async fn upsert_customers(&self, customers: &[Customer]) -> StoreResult<()>;
    /// One customer by id.
    async fn customer(&self, id: &str) -> StoreResult<Option<Customer>>;
    /// Which of `ids` exist.
    async fn existing_customers(&self, ids: &[String]) -> StoreResult<HashSet<String>>;
    /// Customers ordered by id, one page of them; only those with this e-mail address
    /// when `email` is given (e-mail is not unique).
    async fn customers(&self, email: Option<&str>, page: Page) -> StoreResult<Vec<Customer>>;
    /// How many customers are stored.
    async fn count_customers(&self) -> StoreResult<i64>;
}

#[async_trait]
impl<S: RelationalStore + ?Sized> Customers for S {
    async fn upsert_customers(&self, customers: &[Customer]) -> StoreResult<()> {
        let rows: Vec<Vec<SqlValue>> = customers
            .iter()
            .map(|c| {
                vec![
                    c.id.as_str().into(),
                    c.name.as_str().into(),
                    c.email.as_str().into(),
                ]
            })
            .collect();
        self.transaction(&store::upsert(&CUSTOMERS, &rows))
            .await
            .map(drop)
    }

    async fn customer(&self, id: &str) -> StoreResult<Option<Customer>> {
        let rows = self
            .select(&Statement::new(
                format!("{SELECT} WHERE id = $1"),
                vec![id.into()],
            ))
            .await?;
        Ok(rows.first().map(customer))
    }

    async fn existing_customers(&self, ids: &[String]) -> StoreResult<HashSet<String>> {
        let statements = store::select_in("SELECT id FROM customers", "id", ids);
        Ok(store::select_rows(self, &statements)
            .await?
            .iter()
            .filter_map(|row| row.text("id"))
            .collect())
    }

    async fn customers(&self, email: Option<&str>, page: Page) -> StoreResult<Vec<Customer>> {
        let rows = self
            .select(&Statement::new(
                format!(
                    "{SELECT} WHERE (CAST($1 AS TEXT) IS NULL OR email = $1) ORDER BY id LIMIT $2 OFFSET $3"
                ),
                vec![
                    SqlValue::Text(email.map(str::to_string)),
                    SqlValue::Int(Some(i64::try_from(page.limit).unwrap_or(i64::MAX))),
                    SqlValue::Int(Some(i64::try_from(page.skip).unwrap_or(i64::MAX))),
                ],
            ))
            .await?;
        Ok(rows.iter().map(customer).collect())
    }

    async fn count_customers(&self) -> StoreResult<i64> {
        let rows = self
            .select(&Statement::new(
                "SELECT COUNT(*) AS n FROM customers",
                vec![],
            ))
            .await?;
        Ok(rows.first().and_then(|r| r.int("n")).unwrap_or(0))
    }
}
