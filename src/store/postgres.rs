//! The relational store on PostgreSQL, through sqlx, migrated at start.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::query::Query;
use sqlx::{Column, Connection as _, Postgres, Row, TypeInfo};

use super::{
    OpenError, RelationalStore, SqlRow, SqlValue, Statement, StoreError, StoreResult, redact,
};

const STORE: &str = "postgres";

/// A pooled connection idle this long is pinged before it is used again: long enough idle
/// for a server restart or an idle timeout to have closed it unseen.
pub const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// Prepared statements each connection keeps (sqlx's default is 100). A batch's statement
/// has one text per batch size, and each one kept holds its plan in the server's backend
/// and its text here: 100 sizes of 1,000-row upserts are hundreds of megabytes a
/// connection on the server. The embedded files keep the same number, measured there
/// (`crate::sqlite`); the HTTP writers' batches reuse a few sizes.
pub const STATEMENT_CACHE: usize = 16;

fn err(e: sqlx::Error) -> StoreError {
    StoreError::from_sqlx(STORE, e)
}

/// SQL on PostgreSQL.
pub struct PostgresStore {
    pool: PgPool,
    url: String,
}

impl PostgresStore {
    /// Connects to `url`, failing within seconds when the server is unreachable, and runs
    /// every system's migrations (sqlx takes an advisory lock, so concurrent starts are
    /// safe).
    pub async fn connect(
        url: &str,
        migrations: &[&sqlx::migrate::Migrator],
    ) -> Result<Self, OpenError> {
        let open_error = |reason: String| {
            OpenError {
            kind: "relational",
            location: redact(url),
            reason,
            hint: "Check that PostgreSQL is running and the URL (--postgres-url / LIVROS_POSTGRES_URL) is right.".into(),
        }
        };
        // Consumers write one batch at a time per topic and the APIs add a few readers: a
        // small pool is plenty and leaves the server's connection budget to others.
        //
        // sqlx pings every connection it hands out unless told not to: a round trip per
        // statement, doubling a one-statement write's. Only a connection that sat idle
        // can have been closed unseen; one in steady use that breaks fails its statement
        // either way (a store unavailable: retried, or 503), and sqlx drops it when its
        // release ping fails.
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IF_IDLE_FOR {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(
                url.parse::<PgConnectOptions>()
                    .map_err(|e| open_error(e.to_string()))?
                    .statement_cache_capacity(STATEMENT_CACHE),
            )
            .await
            .map_err(|e| open_error(e.to_string()))?;
        for migrator in migrations {
            migrator
                .run(&pool)
                .await
                .map_err(|e| open_error(format!("migration failed: {e}")))?;
        }
        Ok(Self {
            pool,
            url: redact(url),
        })
    }
}

fn bind<'q>(
    mut query: Query<'q, Postgres, PgArguments>,
    args: &'q [SqlValue],
) -> Query<'q, Postgres, PgArguments> {
    for arg in args {
        query = match arg {
            SqlValue::Int(v) => query.bind(*v),
            SqlValue::Real(v) => query.bind(*v),
            SqlValue::Text(v) => query.bind(v.as_deref()),
            SqlValue::Bool(v) => query.bind(*v),
        };
    }
    query
}

/// A row as [`SqlValue`]s, by each column's type; times come out as RFC 3339 text.
fn decode(row: &PgRow) -> StoreResult<SqlRow> {
    let mut columns = Vec::with_capacity(row.columns().len());
    for column in row.columns() {
        let i = column.ordinal();
        let value = match column.type_info().name() {
            "INT2" => SqlValue::Int(
                row.try_get::<Option<i16>, _>(i)
                    .map_err(err)?
                    .map(i64::from),
            ),
            "INT4" => SqlValue::Int(
                row.try_get::<Option<i32>, _>(i)
                    .map_err(err)?
                    .map(i64::from),
            ),
            "INT8" => SqlValue::Int(row.try_get::<Option<i64>, _>(i).map_err(err)?),
            "FLOAT4" => SqlValue::Real(
                row.try_get::<Option<f32>, _>(i)
                    .map_err(err)?
                    .map(f64::from),
            ),
            "FLOAT8" => SqlValue::Real(row.try_get::<Option<f64>, _>(i).map_err(err)?),
            "BOOL" => SqlValue::Bool(row.try_get::<Option<bool>, _>(i).map_err(err)?),
            "TIMESTAMPTZ" => SqlValue::Text(
                row.try_get::<Option<chrono::DateTime<chrono::Utc>>, _>(i)
                    .map_err(err)?
                    .map(|t| crate::wire::format_timestamp(&t)),
            ),
            "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" => {
                SqlValue::Text(row.try_get::<Option<String>, _>(i).map_err(err)?)
            }
            other => {
                return Err(StoreError::Fault {
                    store: STORE,
                    reason: format!(
                        "column `{}` is {other}, which statements read as text: CAST({} AS TEXT)",
                        column.name(),
                        column.name()
                    ),
                });
            }
        };
        columns.push((column.name().to_string(), value));
    }
    Ok(SqlRow { columns })
}

/// The rows `statement` gives on `executor` (the pool, or a transaction).
async fn rows<'e, E>(executor: E, statement: &Statement) -> StoreResult<Vec<SqlRow>>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let rows = bind(
        sqlx::query(sqlx::AssertSqlSafe(statement.sql.as_str())),
        &statement.args,
    )
    .fetch_all(executor)
    .await
    .map_err(err)?;
    rows.iter().map(decode).collect()
}

#[async_trait]
impl RelationalStore for PostgresStore {
    async fn transaction(&self, statements: &[Statement]) -> StoreResult<Vec<Vec<SqlRow>>> {
        if let [statement] = statements {
            // One statement is atomic on its own: no BEGIN and COMMIT round trips.
            return Ok(vec![self.query(statement).await?]);
        }
        crate::metrics::timed_store("relational", "postgres", async {
            let mut tx = self.pool.begin().await.map_err(err)?;
            let mut results = Vec::with_capacity(statements.len());
            for statement in statements {
                results.push(rows(&mut *tx, statement).await?);
            }
            tx.commit().await.map_err(err)?;
            Ok(results)
        })
        .await
    }

    async fn query(&self, statement: &Statement) -> StoreResult<Vec<SqlRow>> {
        crate::metrics::timed_store("relational", "postgres", async {
            rows(&self.pool, statement).await
        })
        .await
    }

    async fn ping(&self) -> StoreResult<()> {
        super::ping_pool(STORE, &self.pool).await
    }

    fn describe(&self) -> String {
        format!("postgres ({})", self.url)
    }
}
