//! The relational store on PostgreSQL, through sqlx, migrated at start.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::{OpenError, Page, RelationalStore, StoreError, StoreResult, last_by_id, redact};
use crate::domain::Customer;

const STORE: &str = "postgres";

fn err(e: sqlx::Error) -> StoreError {
    StoreError::from_sqlx(STORE, e)
}

/// Customers in PostgreSQL.
pub struct PostgresStore {
    pool: PgPool,
    url: String,
}

impl PostgresStore {
    /// Connects to `url`, failing within seconds when the server is unreachable, and runs
    /// the migrations (sqlx takes an advisory lock, so concurrent starts are safe).
    pub async fn connect(url: &str) -> Result<Self, OpenError> {
        let open_error = |reason: String| {
            OpenError {
            kind: "relational",
            location: redact(url),
            reason,
            hint: "Check that PostgreSQL is running and the URL (--postgres-url / LIVROS_POSTGRES_URL) is right.".into(),
        }
        };
        // S2 writes one batch at a time per topic and the API adds a few readers: a small
        // pool is plenty and leaves the server's connection budget to others.
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| open_error(e.to_string()))?;
        sqlx::migrate!("migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| open_error(format!("migration failed: {e}")))?;
        Ok(Self {
            pool,
            url: redact(url),
        })
    }
}

#[async_trait]
impl RelationalStore for PostgresStore {
    async fn upsert_customers(&self, customers: &[Customer]) -> StoreResult<()> {
        // One statement for the whole batch: three arrays unnested into rows. PostgreSQL
        // refuses to update one row twice in a statement, hence `last_by_id`.
        let customers = last_by_id(customers, |c| &c.id);
        let ids: Vec<&str> = customers.iter().map(|c| c.id.as_str()).collect();
        let names: Vec<&str> = customers.iter().map(|c| c.name.as_str()).collect();
        let emails: Vec<&str> = customers.iter().map(|c| c.email.as_str()).collect();
        sqlx::query(
            "INSERT INTO customers (id, name, email)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[])
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, email = excluded.email, updated_at = now()
             WHERE (customers.name, customers.email) IS DISTINCT FROM (excluded.name, excluded.email)",
        )
        .bind(&ids)
        .bind(&names)
        .bind(&emails)
        .execute(&self.pool)
        .await
        .map_err(err)?;
        Ok(())
    }

    async fn customer(&self, id: &str) -> StoreResult<Option<Customer>> {
        let row = sqlx::query("SELECT id, name, email FROM customers WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        row.as_ref()
            .map(|r| super::customer_row(STORE, r))
            .transpose()
    }

    async fn existing_customers(&self, ids: &[String]) -> StoreResult<HashSet<String>> {
        let rows: Vec<String> = sqlx::query_scalar("SELECT id FROM customers WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        Ok(rows.into_iter().collect())
    }

    async fn customers(&self, email: Option<&str>, page: Page) -> StoreResult<Vec<Customer>> {
        let rows = sqlx::query(
            "SELECT id, name, email FROM customers WHERE ($1::text IS NULL OR email = $1)
             ORDER BY id LIMIT $2 OFFSET $3",
        )
        .bind(email)
        .bind(i64::try_from(page.limit).unwrap_or(i64::MAX))
        .bind(i64::try_from(page.skip).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        rows.iter().map(|r| super::customer_row(STORE, r)).collect()
    }

    async fn count_customers(&self) -> StoreResult<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM customers")
            .fetch_one(&self.pool)
            .await
            .map_err(err)
    }

    async fn ping(&self) -> StoreResult<()> {
        super::ping_pool(STORE, &self.pool).await
    }

    fn describe(&self) -> String {
        format!("postgres ({})", self.url)
    }
}
