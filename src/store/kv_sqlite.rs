//! The embedded key-value store: Redis' hashes, sets, sorted sets and strings kept in
//! SQLite (`<data dir>/keyvalue.db`), so it is durable and readable by other processes.
//!
//! A hash is one row holding its fields as a JSON object, merged on write with SQLite's
//! `json_patch` (HSET semantics: given fields replaced, others kept). One row per hash
//! rather than per field makes an order one row instead of five, which is what matters for
//! write throughput. A set is one row per member, a sorted set one row per member and
//! score. A string is one row with the time it expires (Unix milliseconds), if any; the
//! expiry of a hash, set or sorted set (`EXPIRE`) is a row of `kv_expiry`. An expired key
//! reads as absent, and every write first deletes the keys that have expired, so they do
//! not pile up and a write never lands on an expired key's leftovers.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
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
    "CREATE TABLE IF NOT EXISTS kv_zset (key TEXT NOT NULL, member TEXT NOT NULL,
        score REAL NOT NULL, PRIMARY KEY (key, member)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS kv_zset_score ON kv_zset (key, score)",
    "CREATE TABLE IF NOT EXISTS kv_expiry (key TEXT PRIMARY KEY, expires_at INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS kv_expiry_at ON kv_expiry (expires_at)",
];

/// True (in SQL) when the key `alias.key` has not expired; binds now (`?`) once.
fn live(alias: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM kv_expiry e WHERE e.key = {alias}.key AND e.expires_at <= ?)"
    )
}

/// Now, in the Unix milliseconds `expires_at` holds.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// When a write with time to live `ttl` expires, in the Unix milliseconds `expires_at` holds.
fn expires_at(ttl: std::time::Duration) -> i64 {
    now_ms().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}

/// A JSON path for a hash field, quoted so any field name is taken literally.
fn field_path(field: &str) -> String {
    format!("$.\"{}\"", field.replace('\\', "\\\\").replace('"', "\\\""))
}

fn err(e: sqlx::Error) -> StoreError {
    StoreError::from_sqlx(STORE, e)
}

/// Hashes, sets, sorted sets and strings in SQLite.
pub struct SqliteKvStore {
    /// Reads outside a write transaction.
    pool: crate::sqlite::Readers,
    /// Every write transaction.
    writer: crate::sqlite::Writer,
    /// Keeps the file's background checkpoint running while this is open.
    _checkpoint: crate::sqlite::Checkpoint,
    path: PathBuf,
}

impl SqliteKvStore {
    /// Opens (creating if needed) the store at `path`.
    pub async fn open(path: &Path) -> Result<Self, OpenError> {
        let pools = super::open_embedded("key-value", path, SCHEMA, &[]).await?;
        Ok(Self {
            pool: pools.reader,
            writer: pools.writer,
            _checkpoint: pools.checkpoint,
            path: path.to_path_buf(),
        })
    }
}

/// Writes of one kind that commute, batched into multi-row statements; flushed before
/// any write that must see the ones before it.
#[derive(Default)]
struct Pending<'a> {
    hashes: Vec<(&'a String, String)>,
    members: Vec<(&'a String, &'a String)>,
    strings: Vec<(&'a String, &'a String, Option<i64>)>,
    /// `SET … NX`: kept apart from the rest, since they do not commute with `strings`.
    absent: Vec<(&'a String, &'a String, Option<i64>)>,
}

impl Pending<'_> {
    /// Adds the pending writes' statements to `q`, and forgets them.
    fn flush(&mut self, q: &mut QueryBuilder<Sqlite>) {
        for chunk in self.hashes.chunks(CHUNK) {
            q.push("INSERT INTO kv_hash (key, fields) ");
            q.push_values(chunk, |mut row, (key, fields)| {
                row.push_bind((*key).clone()).push_bind(fields.clone());
            });
            q.push(" ON CONFLICT (key) DO UPDATE SET fields = json_patch(kv_hash.fields, excluded.fields);\n");
        }
        for chunk in self.members.chunks(CHUNK) {
            q.push("INSERT INTO kv_set (key, member) ");
            q.push_values(chunk, |mut row, (key, member)| {
                row.push_bind((*key).clone()).push_bind((*member).clone());
            });
            q.push(" ON CONFLICT DO NOTHING;\n");
        }
        for chunk in self.strings.chunks(CHUNK) {
            q.push("INSERT INTO kv_string (key, value, expires_at) ");
            q.push_values(chunk, |mut row, (key, value, expires)| {
                row.push_bind((*key).clone())
                    .push_bind((*value).clone())
                    .push_bind(*expires);
            });
            q.push(
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at;\n",
            );
        }
        for chunk in self.absent.chunks(CHUNK) {
            // The transaction purged expired keys first, so a key still here is live; as in
            // Redis, a key holding a hash, set or sorted set is not absent either. Of two
            // rows for one key the first is inserted, the second conflicts: as two NX in turn.
            q.push(
                "INSERT INTO kv_string (key, value, expires_at) SELECT column1, column2, column3 FROM (",
            );
            q.push_values(chunk, |mut row, (key, value, expires)| {
                row.push_bind((*key).clone())
                    .push_bind((*value).clone())
                    .push_bind(*expires);
            });
            q.push(
                ") AS v WHERE NOT EXISTS (SELECT 1 FROM kv_hash h WHERE h.key = v.column1)
                   AND NOT EXISTS (SELECT 1 FROM kv_set s WHERE s.key = v.column1)
                   AND NOT EXISTS (SELECT 1 FROM kv_zset z WHERE z.key = v.column1)
                 ON CONFLICT (key) DO NOTHING;\n",
            );
        }
        self.hashes.clear();
        self.members.clear();
        self.strings.clear();
        self.absent.clear();
    }
}

/// Adds to `q` the statements that delete every key expired by `now`.
fn purge_expired(q: &mut QueryBuilder<Sqlite>, now: i64) {
    q.push("DELETE FROM kv_string WHERE expires_at IS NOT NULL AND expires_at <= ")
        .push_bind(now)
        .push(";\n");
    for table in ["kv_hash", "kv_set", "kv_zset", "kv_string"] {
        q.push(format_args!(
            "DELETE FROM {table} WHERE key IN (SELECT key FROM kv_expiry WHERE expires_at <= "
        ))
        .push_bind(now)
        .push(");\n");
    }
    q.push("DELETE FROM kv_expiry WHERE expires_at <= ")
        .push_bind(now)
        .push(";\n");
}

/// Adds to `q` the statements of `DEL key`: whatever it holds, and its expiry.
fn delete_key(q: &mut QueryBuilder<Sqlite>, key: &str) {
    for table in ["kv_hash", "kv_set", "kv_zset", "kv_string", "kv_expiry"] {
        q.push(format_args!("DELETE FROM {table} WHERE key = "))
            .push_bind(key.to_string())
            .push(";\n");
    }
}

/// Adds to `q` one write that must see the writes before it.
fn apply_one(q: &mut QueryBuilder<Sqlite>, write: &KvWrite) {
    match write {
        KvWrite::HIncrBy { key, field, by } => {
            let path = field_path(field);
            q.push("INSERT INTO kv_hash (key, fields) VALUES (")
                .push_bind(key.clone())
                .push(", json_object(")
                .push_bind(field.clone())
                .push(", CAST(")
                .push_bind(*by)
                .push(" AS TEXT))) ON CONFLICT (key) DO UPDATE SET fields = json_set(kv_hash.fields, ")
                .push_bind(path.clone())
                .push(", CAST(CAST(COALESCE(json_extract(kv_hash.fields, ")
                .push_bind(path)
                .push("), '0') AS INTEGER) + ")
                .push_bind(*by)
                .push(" AS TEXT));\n");
        }
        KvWrite::ZAdd { key, members } => {
            for chunk in members.chunks(CHUNK) {
                q.push("INSERT INTO kv_zset (key, member, score) ");
                q.push_values(chunk, |mut row, (member, score)| {
                    row.push_bind(key.clone())
                        .push_bind(member.clone())
                        .push_bind(*score);
                });
                q.push(" ON CONFLICT (key, member) DO UPDATE SET score = excluded.score;\n");
            }
        }
        KvWrite::ZRaise { key, member, score } => {
            q.push("INSERT INTO kv_zset (key, member, score) VALUES (")
                .push_bind(key.clone())
                .push(", ")
                .push_bind(member.clone())
                .push(", ")
                .push_bind(*score)
                .push(
                    ") ON CONFLICT (key, member) DO UPDATE SET score = excluded.score
                     WHERE excluded.score > kv_zset.score;\n",
                );
        }
        KvWrite::ZRem { key, members } => {
            for member in members {
                q.push("DELETE FROM kv_zset WHERE key = ")
                    .push_bind(key.clone())
                    .push(" AND member = ")
                    .push_bind(member.clone())
                    .push(";\n");
            }
        }
        KvWrite::ZRemUpTo { key, max } => {
            q.push("DELETE FROM kv_zset WHERE key = ")
                .push_bind(key.clone())
                .push(" AND score <= ")
                .push_bind(*max)
                .push(";\n");
        }
        KvWrite::Expire { key, ttl } => {
            let at = expires_at(*ttl);
            q.push("UPDATE kv_string SET expires_at = ")
                .push_bind(at)
                .push(" WHERE key = ")
                .push_bind(key.clone())
                .push(";\n");
            q.push("INSERT INTO kv_expiry (key, expires_at) SELECT ")
                .push_bind(key.clone())
                .push(", ")
                .push_bind(at);
            q.push(" WHERE EXISTS (SELECT 1 FROM kv_hash WHERE key = ")
                .push_bind(key.clone())
                .push(") OR EXISTS (SELECT 1 FROM kv_set WHERE key = ")
                .push_bind(key.clone())
                .push(") OR EXISTS (SELECT 1 FROM kv_zset WHERE key = ")
                .push_bind(key.clone())
                .push(") ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at;\n");
        }
        KvWrite::Del { key } => delete_key(q, key),
        KvWrite::HSet { .. }
        | KvWrite::SAdd { .. }
        | KvWrite::Set { .. }
        | KvWrite::SetIfAbsent { .. } => {
            unreachable!("batched by Pending")
        }
    }
}

#[async_trait]
impl KeyValueStore for SqliteKvStore {
    async fn write(&self, writes: &[KvWrite]) -> StoreResult<()> {
        crate::metrics::timed_store("key-value", "embedded", async {
            // The whole transaction is one script: one trip to SQLite's thread.
            let mut q = crate::sqlite::script();
            purge_expired(&mut q, now_ms());
            let mut pending = Pending::default();
            for write in writes {
                // `SET … NX` rows and the others are batched apart, each group in turn.
                let absent = matches!(write, KvWrite::SetIfAbsent { .. });
                let others = !pending.hashes.is_empty()
                    || !pending.members.is_empty()
                    || !pending.strings.is_empty();
                if (absent && others) || (!absent && !pending.absent.is_empty()) {
                    pending.flush(&mut q);
                }
                match write {
                    KvWrite::Set { key, value, ttl } => {
                        let expires = ttl.map(expires_at);
                        pending.strings.push((key, value, expires));
                    }
                    KvWrite::HSet { key, fields } => {
                        let object: serde_json::Map<String, serde_json::Value> = fields
                            .iter()
                            .map(|(f, v)| (f.clone(), v.clone().into()))
                            .collect();
                        pending
                            .hashes
                            .push((key, serde_json::Value::Object(object).to_string()));
                    }
                    KvWrite::SAdd { key, members } => {
                        pending.members.extend(members.iter().map(|m| (key, m)));
                    }
                    KvWrite::SetIfAbsent { key, value, ttl } => {
                        let expires = ttl.map(expires_at);
                        pending.absent.push((key, value, expires));
                    }
                    other => {
                        pending.flush(&mut q);
                        apply_one(&mut q, other);
                    }
                }
            }
            pending.flush(&mut q);
            self.writer.script(&mut q).await.map(drop).map_err(err)
        })
        .await
    }

    async fn hgetall(&self, key: &str) -> StoreResult<BTreeMap<String, String>> {
        let fields: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT fields FROM kv_hash h WHERE key = ? AND {}",
            live("h")
        )))
        .bind(key)
        .bind(now_ms())
        .fetch_optional(&mut *self.pool.get().await.map_err(err)?)
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

    async fn hget_many(&self, fields: &[(String, String)]) -> StoreResult<Vec<Option<String>>> {
        // Each hash read once, however many of its fields are asked for.
        let mut keys: Vec<String> = fields.iter().map(|(k, _)| k.clone()).collect();
        keys.sort();
        keys.dedup();
        let mut hashes: HashMap<String, serde_json::Map<String, serde_json::Value>> =
            HashMap::new();
        let now = now_ms();
        for chunk in keys.chunks(CHUNK) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("SELECT key, fields FROM kv_hash h WHERE key IN (");
            let mut list = q.separated(", ");
            for key in chunk {
                list.push_bind(key.clone());
            }
            q.push(") AND NOT EXISTS (SELECT 1 FROM kv_expiry e WHERE e.key = h.key AND e.expires_at <= ")
                .push_bind(now)
                .push(")");
            for row in q
                .build()
                .fetch_all(&mut *self.pool.get().await.map_err(err)?)
                .await
                .map_err(err)?
            {
                let key: String = row.get("key");
                let text: String = row.get("fields");
                let object = serde_json::from_str(&text).map_err(|e| StoreError::Fault {
                    store: STORE,
                    reason: format!("hash `{key}` holds {text:?}, not an object: {e}"),
                })?;
                hashes.insert(key, object);
            }
        }
        Ok(fields
            .iter()
            .map(|(key, field)| {
                hashes
                    .get(key)
                    .and_then(|h| h.get(field))
                    .and_then(|v| v.as_str().map(str::to_string))
            })
            .collect())
    }

    async fn existing(&self, keys: &[String]) -> StoreResult<HashSet<String>> {
        let mut found = HashSet::new();
        let now = now_ms();
        for chunk in keys.chunks(CHUNK) {
            for table in ["kv_hash", "kv_set", "kv_zset", "kv_string"] {
                let mut q: QueryBuilder<Sqlite> =
                    QueryBuilder::new(format!("SELECT DISTINCT key FROM {table} t WHERE key IN ("));
                let mut list = q.separated(", ");
                for key in chunk {
                    list.push_bind(key.clone());
                }
                q.push(")");
                if table == "kv_string" {
                    q.push(" AND (expires_at IS NULL OR expires_at > ")
                        .push_bind(now)
                        .push(")");
                } else {
                    q.push(" AND NOT EXISTS (SELECT 1 FROM kv_expiry e WHERE e.key = t.key AND e.expires_at <= ")
                        .push_bind(now)
                        .push(")");
                }
                let rows = q
                    .build()
                    .fetch_all(&mut *self.pool.get().await.map_err(err)?)
                    .await
                    .map_err(err)?;
                found.extend(rows.iter().map(|r| r.get::<String, _>("key")));
            }
        }
        Ok(found)
    }

    async fn smembers(&self, key: &str) -> StoreResult<BTreeSet<String>> {
        let members: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT member FROM kv_set s WHERE key = ? AND {}",
            live("s")
        )))
        .bind(key)
        .bind(now_ms())
        .fetch_all(&mut *self.pool.get().await.map_err(err)?)
        .await
        .map_err(err)?;
        Ok(members.into_iter().collect())
    }

    async fn scard_many(&self, keys: &[String]) -> StoreResult<Vec<i64>> {
        let mut counts = Vec::with_capacity(keys.len());
        let mut conn = self.pool.get().await.map_err(err)?;
        let sql = format!(
            "SELECT COUNT(*) FROM kv_set s WHERE key = ? AND {}",
            live("s")
        );
        let now = now_ms();
        for key in keys {
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
                .bind(key)
                .bind(now)
                .fetch_one(&mut *conn)
                .await
                .map_err(err)?;
            counts.push(n);
        }
        Ok(counts)
    }

    async fn ztop(&self, key: &str, limit: usize) -> StoreResult<Vec<(String, f64)>> {
        let rows: Vec<(String, f64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT member, score FROM kv_zset z WHERE key = ? AND {}
             ORDER BY score DESC, member DESC LIMIT ?",
            live("z")
        )))
        .bind(key)
        .bind(now_ms())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *self.pool.get().await.map_err(err)?)
        .await
        .map_err(err)?;
        Ok(rows)
    }

    async fn count_prefix(&self, prefix: &str) -> StoreResult<i64> {
        // A range on the primary key instead of LIKE, which would scan every row.
        let upper = format!("{prefix}\u{10FFFF}");
        let typed = |table: &str| {
            format!(
                "SELECT key FROM {table} t WHERE key >= ?1 AND key < ?2 AND NOT EXISTS
                 (SELECT 1 FROM kv_expiry e WHERE e.key = t.key AND e.expires_at <= ?3)"
            )
        };
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM ({} UNION {} UNION {}
             UNION SELECT key FROM kv_string WHERE key >= ?1 AND key < ?2
               AND (expires_at IS NULL OR expires_at > ?3))",
            typed("kv_hash"),
            typed("kv_set"),
            typed("kv_zset")
        )))
        .bind(prefix)
        .bind(upper)
        .bind(now_ms())
        .fetch_one(&mut *self.pool.get().await.map_err(err)?)
        .await
        .map_err(err)
    }

    async fn get(&self, key: &str) -> StoreResult<Option<String>> {
        sqlx::query_scalar(
            "SELECT value FROM kv_string WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)",
        )
        .bind(key)
        .bind(now_ms())
        .fetch_optional(&mut *self.pool.get().await.map_err(err)?)
        .await
        .map_err(err)
    }

    async fn ping(&self) -> StoreResult<()> {
        self.pool.ping().await.map_err(err)
    }

    fn describe(&self) -> String {
        format!("embedded key-value ({})", self.path.display())
    }
}
