//! The embedded key-value store: Redis' hashes and sets kept in SQLite
//! (`<data dir>/keyvalue.db`), so it is durable and readable by other processes.
//!
//! A hash is one row holding its fields as a JSON object, merged on write with SQLite's
//! `json_patch` (HSET semantics: given fields replaced, others kept). One row per hash
//! rather than per field makes an order one row instead of five, which is what matters for
//! write throughput. A set is one row per member. A string is one row with the time it
//! expires (Unix milliseconds), if any; an expired row reads as absent and is deleted by
//! the next write of any string, so expired keys do not pile up.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use sqlx::sqlite::SqlitePool;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{KeyValueStore, KvWrite, OpenError, StoreError, StoreResult};

const STORE: &str = "embedded key-value store";
/// Keys per lookup statement.
const CHUNK: usize = 500;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS kv_hash (key TEXT PRIMARY KEY, fields TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS kv_set (key TEXT NOT NULL, member TEXT NOT NULL,
        PRIMARY KEY (key, member)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS kv_string (key TEXT PRIMARY KEY, value TEXT NOT NULL,
        expires_at INTEGER)",
    "CREATE INDEX IF NOT EXISTS kv_string_expiry ON kv_string (expires_at)
        WHERE expires_at IS NOT NULL",
];

/// Now, in the Unix milliseconds `expires_at` holds.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn err(e: sqlx::Error) -> StoreError {
    StoreError::from_sqlx(STORE, e)
}

/// Hashes and sets in SQLite.
pub struct SqliteKvStore {
    pool: SqlitePool,
    path: PathBuf,
}

impl SqliteKvStore {
    /// Opens (creating if needed) the store at `path`.
    pub async fn open(path: &Path) -> Result<Self, OpenError> {
        let pool = super::open_embedded("key-value", path, SCHEMA, &[]).await?;
        Ok(Self {
            pool,
            path: path.to_path_buf(),
        })
    }
}

#[async_trait]
impl KeyValueStore for SqliteKvStore {
    async fn write(&self, writes: &[KvWrite]) -> StoreResult<()> {
        let mut hashes = Vec::new();
        let mut members = Vec::new();
        let mut strings = Vec::new();
        for write in writes {
            match write {
                KvWrite::Set { key, value, ttl } => {
                    let expires = ttl.map(|t| now_ms() + t.as_millis() as i64);
                    strings.push((key, value, expires));
                }
                KvWrite::HSet { key, fields } => {
                    let object: serde_json::Map<String, serde_json::Value> = fields
                        .iter()
                        .map(|(f, v)| (f.clone(), v.clone().into()))
                        .collect();
                    hashes.push((key, serde_json::Value::Object(object).to_string()));
                }
                KvWrite::SAdd { key, members: m } => members.extend(m.iter().map(|m| (key, m))),
            }
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
        for chunk in hashes.chunks(CHUNK) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO kv_hash (key, fields) ");
            q.push_values(chunk, |mut row, (key, fields)| {
                row.push_bind((*key).clone()).push_bind(fields.clone());
            });
            q.push(" ON CONFLICT (key) DO UPDATE SET fields = json_patch(kv_hash.fields, excluded.fields)");
            q.build().execute(&mut *tx).await.map_err(err)?;
        }
        for chunk in members.chunks(CHUNK) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO kv_set (key, member) ");
            q.push_values(chunk, |mut row, (key, member)| {
                row.push_bind((*key).clone()).push_bind((*member).clone());
            });
            q.push(" ON CONFLICT DO NOTHING");
            q.build().execute(&mut *tx).await.map_err(err)?;
        }
        if !strings.is_empty() {
            sqlx::query("DELETE FROM kv_string WHERE expires_at IS NOT NULL AND expires_at <= ?")
                .bind(now_ms())
                .execute(&mut *tx)
                .await
                .map_err(err)?;
        }
        for chunk in strings.chunks(CHUNK) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO kv_string (key, value, expires_at) ");
            q.push_values(chunk, |mut row, (key, value, expires)| {
                row.push_bind((*key).clone())
                    .push_bind((*value).clone())
                    .push_bind(*expires);
            });
            q.push(
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
            );
            q.build().execute(&mut *tx).await.map_err(err)?;
        }
        tx.commit().await.map_err(err)
    }

    async fn hgetall(&self, key: &str) -> StoreResult<BTreeMap<String, String>> {
        let fields: Option<String> = sqlx::query_scalar("SELECT fields FROM kv_hash WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        let Some(fields) = fields else {
            return Ok(BTreeMap::new());
        };
        serde_json::from_str(&fields).map_err(|e| StoreError::Fault {
            store: STORE,
            reason: format!("hash `{key}` holds {fields:?}, not an object of strings: {e}"),
        })
    }

    async fn existing(&self, keys: &[String]) -> StoreResult<HashSet<String>> {
        let mut found = HashSet::new();
        for chunk in keys.chunks(CHUNK) {
            for table in ["kv_hash", "kv_set", "kv_string"] {
                let mut q: QueryBuilder<Sqlite> =
                    QueryBuilder::new(format!("SELECT DISTINCT key FROM {table} WHERE key IN ("));
                let mut list = q.separated(", ");
                for key in chunk {
                    list.push_bind(key.clone());
                }
                q.push(")");
                if table == "kv_string" {
                    q.push(" AND (expires_at IS NULL OR expires_at > ")
                        .push_bind(now_ms())
                        .push(")");
                }
                let rows = q.build().fetch_all(&self.pool).await.map_err(err)?;
                found.extend(rows.iter().map(|r| r.get::<String, _>("key")));
            }
        }
        Ok(found)
    }

    async fn smembers(&self, key: &str) -> StoreResult<BTreeSet<String>> {
        let members: Vec<String> = sqlx::query_scalar("SELECT member FROM kv_set WHERE key = ?")
            .bind(key)
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        Ok(members.into_iter().collect())
    }

    async fn count_prefix(&self, prefix: &str) -> StoreResult<i64> {
        // A range on the primary key instead of LIKE, which would scan every row.
        let upper = format!("{prefix}\u{10FFFF}");
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT key FROM kv_hash WHERE key >= ?1 AND key < ?2
             UNION SELECT key FROM kv_set WHERE key >= ?1 AND key < ?2
             UNION SELECT key FROM kv_string WHERE key >= ?1 AND key < ?2
               AND (expires_at IS NULL OR expires_at > ?3))",
        )
        .bind(prefix)
        .bind(upper)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await
        .map_err(err)
    }

    async fn get(&self, key: &str) -> StoreResult<Option<String>> {
        sqlx::query_scalar(
            "SELECT value FROM kv_string WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)",
        )
        .bind(key)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await
        .map_err(err)
    }

    async fn ping(&self) -> StoreResult<()> {
        super::ping_pool(STORE, &self.pool).await
    }

    fn describe(&self) -> String {
        format!("embedded key-value ({})", self.path.display())
    }
}
