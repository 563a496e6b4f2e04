//! The embedded relational store: SQLite in `<data dir>/relational.db`, migrated by sqlx.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use sqlx::sqlite::SqlitePool;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{OpenError, Page, RelationalStore, StoreError, StoreResult, last_by_id};
use crate::domain::Customer;

const STORE: &str = "sqlite";
/// Rows per statement: 3 bound values each keeps us far below SQLite's variable limit.
const CHUNK: usize = 500;

fn err(e: sqlx::Error) -> StoreError {
    StoreError::from_sqlx(STORE, e)
}

/// Customers in SQLite.
pub struct SqliteStore {
    pool: SqlitePool,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating and migrating) the database at `path`.
    pub async fn open(path: &Path) -> Result<Self, OpenError> {
        let migrator = sqlx::migrate!("migrations/sqlite");
        let pool = super::open_embedded("relational", path, &[], Some(&migrator)).await?;
        Ok(Self {
            pool,
            path: path.to_path_buf(),
        })
    }
}

#[async_trait]
impl RelationalStore for SqliteStore {
    async fn upsert_customers(&self, customers: &[Customer]) -> StoreResult<()> {
        let customers = last_by_id(customers, |c| &c.id);
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
        for chunk in customers.chunks(CHUNK) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO customers (id, name, email) ");
            q.push_values(chunk, |mut row, c| {
                row.push_bind(c.id.clone())
                    .push_bind(c.name.clone())
                    .push_bind(c.email.clone());
            });
            q.push(
                " ON CONFLICT (id) DO UPDATE SET name = excluded.name, email = excluded.email,
                  updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                  WHERE customers.name IS NOT excluded.name OR customers.email IS NOT excluded.email",
            );
            q.build().execute(&mut *tx).await.map_err(err)?;
        }
        tx.commit().await.map_err(err)
    }

    async fn customer(&self, id: &str) -> StoreResult<Option<Customer>> {
        let row = sqlx::query("SELECT id, name, email FROM customers WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        row.as_ref()
            .map(|r| super::customer_row(STORE, r))
            .transpose()
    }

    async fn existing_customers(&self, ids: &[String]) -> StoreResult<HashSet<String>> {
        let mut found = HashSet::new();
        for chunk in ids.chunks(CHUNK) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("SELECT id FROM customers WHERE id IN (");
            let mut list = q.separated(", ");
            for id in chunk {
                list.push_bind(id.clone());
            }
            q.push(")");
            let rows = q.build().fetch_all(&self.pool).await.map_err(err)?;
            found.extend(rows.iter().map(|r| r.get::<String, _>("id")));
        }
        Ok(found)
    }

    async fn customers(&self, email: Option<&str>, page: Page) -> StoreResult<Vec<Customer>> {
        let rows = sqlx::query(
            "SELECT id, name, email FROM customers WHERE (?1 IS NULL OR email = ?1)
             ORDER BY id LIMIT ?2 OFFSET ?3",
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
        format!("sqlite ({})", self.path.display())
    }
}
