//! SQLite plumbing shared by every embedded component (bus, relational, document and
//! key-value stores): one file each under the data dir, opened the same way.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// Opens a pool with the settings every embedded file uses: WAL (readers never block the
/// writer), `synchronous=FULL` (a committed transaction survives power loss, not only
/// kill -9), and a generous busy timeout because another process may hold the write lock
/// for a whole batch.
pub async fn open(path: &Path, max_connections: u32) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::from_str("sqlite://")?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(30))
        .pragma("cache_size", "-65536")
        .pragma("temp_store", "memory");
    SqlitePoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(options)
        .await
}

/// Runs `CREATE … IF NOT EXISTS` statements in one write transaction, so processes starting
/// together cannot race.
pub async fn apply_schema(pool: &SqlitePool, statements: &[&str]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    for statement in statements {
        // The project's own DDL, with field names it wrote itself.
        sqlx::query(sqlx::AssertSqlSafe(statement.to_string()))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}
