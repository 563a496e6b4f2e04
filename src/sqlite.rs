//! SQLite plumbing shared by every embedded component (bus, relational, document and
//! key-value stores): one file each under the data dir, opened the same way.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// The writer connection's page cache, in KiB.
pub const WRITER_CACHE_KIB: u32 = 8 * 1024;
/// Each reader connection's page cache, in KiB.
pub const READER_CACHE_KIB: u32 = 2 * 1024;

/// An embedded file's connections: one writer and a few readers.
///
/// SQLite lets one transaction write at a time, so more writer connections only queue on
/// its lock; one keeps its page cache warm (a connection that did not make the last write
/// must drop its cache and read the pages again). Readers never touch the write lock
/// (WAL: they read the last committed state while the writer goes on).
#[derive(Debug, Clone)]
pub struct Pools {
    /// The one connection every write transaction goes through.
    pub writer: SqlitePool,
    /// Connections for reads outside a write transaction.
    pub reader: SqlitePool,
}

/// Opens a file's [`Pools`] (`readers` reading connections) with the settings every
/// embedded file uses: WAL (readers never block the writer), `synchronous=FULL` (a
/// committed transaction survives power loss, not only kill -9), and a generous busy
/// timeout because another process may hold the write lock for a whole batch.
pub async fn open(path: &Path, readers: u32) -> Result<Pools, sqlx::Error> {
    let options = SqliteConnectOptions::from_str("sqlite://")?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(30))
        .pragma("temp_store", "memory");
    // Page caches are per connection and grow with the file up to their size: the
    // writer's, which random inserts walk, is larger; a file's memory is bounded by
    // WRITER_CACHE_KIB + readers × READER_CACHE_KIB.
    let pool = |n: u32, cache_kib: u32| {
        SqlitePoolOptions::new()
            .max_connections(n)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(
                options
                    .clone()
                    .pragma("cache_size", format!("-{cache_kib}")),
            )
    };
    // The writer first: it creates the file and switches it to WAL.
    let writer = pool(1, WRITER_CACHE_KIB).await?;
    let reader = pool(readers.max(1), READER_CACHE_KIB).await?;
    Ok(Pools { writer, reader })
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
