//! The key-value store on Redis: hashes, sets, sorted sets and strings, every batch of
//! writes in one `MULTI`/`EXEC` pipeline.
//!
//! Keys are exactly the seed's (`order:<id>`) unless a prefix is configured, which lets
//! several deployments or test runs share one Redis.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Blame, KeyValueStore, KvWrite, OpenError, StoreError, StoreResult, redact};

const STORE: &str = "redis";
/// Time allowed to connect at start before we report the server unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A reply slower than this counts as a lost connection; the batch is retried.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection trouble is transient; any other error (`WRONGTYPE`: a key holds something
/// else; `OOM`; `NOPERM`) is about the store's contents or set-up, never one record's.
fn err(e: redis::RedisError) -> StoreError {
    let transient =
        e.is_io_error() || e.is_connection_refusal() || e.is_timeout() || e.is_connection_dropped();
    let blame = if transient {
        Blame::Transient
    } else {
        Blame::Store
    };
    StoreError::classified(STORE, blame, e)
}

/// A time to live in Redis' whole milliseconds; never 0, which it refuses.
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Escapes Redis glob characters so a prefix matches only itself.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Hashes and sets in Redis.
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    url: String,
}

impl RedisStore {
    /// Connects to `url`; every key is stored under `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, OpenError> {
        let open_error = |reason: String| OpenError {
            kind: "key-value",
            location: redact(url),
            reason,
            hint:
                "Check that Redis is running and the URL (--redis-url / LIVROS_REDIS_URL) is right."
                    .into(),
        };
        let client = redis::Client::open(url).map_err(|e| open_error(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(3);
        let mut conn = tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| open_error("timed out".into()))?
        .map_err(|e| open_error(e.to_string()))?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(|e| open_error(e.to_string()))?;
        Ok(Self {
            conn,
            prefix: prefix.to_string(),
            url: redact(url),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

#[async_trait]
impl KeyValueStore for RedisStore {
    async fn write(&self, writes: &[KvWrite]) -> StoreResult<()> {
        crate::metrics::timed_store("key-value", "redis", async {
            if writes.is_empty() {
                return Ok(());
            }
            // MULTI/EXEC: all of the writes or none, as the embedded store's transaction.
            let mut pipe = redis::pipe();
            pipe.atomic();
            for write in writes {
                match write {
                    KvWrite::HSet { key, fields } if !fields.is_empty() => {
                        pipe.hset_multiple(self.key(key), fields).ignore();
                    }
                    KvWrite::HIncrBy { key, field, by } => {
                        pipe.hincr(self.key(key), field, *by).ignore();
                    }
                    KvWrite::SAdd { key, members } if !members.is_empty() => {
                        pipe.sadd(self.key(key), members).ignore();
                    }
                    KvWrite::Set { key, value, ttl } => match ttl {
                        Some(ttl) => {
                            pipe.pset_ex(self.key(key), value, millis(*ttl)).ignore();
                        }
                        None => {
                            pipe.set(self.key(key), value).ignore();
                        }
                    },
                    KvWrite::SetIfAbsent { key, value, ttl } => {
                        let set = pipe.cmd("SET").arg(self.key(key)).arg(value).arg("NX");
                        if let Some(ttl) = ttl {
                            set.arg("PX").arg(millis(*ttl));
                        }
                        set.ignore();
                    }
                    KvWrite::ZAdd { key, members } if !members.is_empty() => {
                        let pairs: Vec<(f64, &String)> =
                            members.iter().map(|(m, s)| (*s, m)).collect();
                        pipe.zadd_multiple(self.key(key), &pairs).ignore();
                    }
                    KvWrite::ZRaise { key, member, score } => {
                        pipe.cmd("ZADD")
                            .arg(self.key(key))
                            .arg("GT")
                            .arg(*score)
                            .arg(member)
                            .ignore();
                    }
                    KvWrite::ZRem { key, members } if !members.is_empty() => {
                        pipe.zrem(self.key(key), members).ignore();
                    }
                    KvWrite::ZRemUpTo { key, max } => {
                        pipe.zrembyscore(self.key(key), "-inf", *max).ignore();
                    }
                    KvWrite::Expire { key, ttl } => {
                        pipe.cmd("PEXPIRE")
                            .arg(self.key(key))
                            .arg(millis(*ttl))
                            .ignore();
                    }
                    KvWrite::Del { key } => {
                        pipe.del(self.key(key)).ignore();
                    }
                    _ => {}
                }
            }
            pipe.exec_async(&mut self.conn.clone()).await.map_err(err)
        })
        .await
    }

    async fn hget_many(&self, fields: &[(String, String)]) -> StoreResult<Vec<Option<String>>> {
        if fields.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (key, field) in fields {
            pipe.hget(self.key(key), field);
        }
        pipe.query_async(&mut self.conn.clone()).await.map_err(err)
    }

    async fn scard_many(&self, keys: &[String]) -> StoreResult<Vec<i64>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.scard(self.key(key));
        }
        pipe.query_async(&mut self.conn.clone()).await.map_err(err)
    }

    async fn ztop(&self, key: &str, limit: usize) -> StoreResult<Vec<(String, f64)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let stop = isize::try_from(limit).unwrap_or(isize::MAX) - 1;
        redis::cmd("ZREVRANGE")
            .arg(self.key(key))
            .arg(0)
            .arg(stop)
            .arg("WITHSCORES")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(err)
    }

    async fn hgetall(&self, key: &str) -> StoreResult<BTreeMap<String, String>> {
        let map: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.key(key))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(err)?;
        Ok(map.into_iter().collect())
    }

    async fn hgetall_many(&self, keys: &[String]) -> StoreResult<Vec<BTreeMap<String, String>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.hgetall(self.key(key));
        }
        let hashes: Vec<HashMap<String, String>> = pipe
            .query_async(&mut self.conn.clone())
            .await
            .map_err(err)?;
        Ok(hashes
            .into_iter()
            .map(|h| h.into_iter().collect())
            .collect())
    }

    async fn existing(&self, keys: &[String]) -> StoreResult<HashSet<String>> {
        if keys.is_empty() {
            return Ok(HashSet::new());
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.exists(self.key(key));
        }
        let found: Vec<bool> = pipe
            .query_async(&mut self.conn.clone())
            .await
            .map_err(err)?;
        Ok(keys
            .iter()
            .zip(found)
            .filter(|(_, exists)| *exists)
            .map(|(k, _)| k.clone())
            .collect())
    }

    async fn smembers(&self, key: &str) -> StoreResult<BTreeSet<String>> {
        let members: HashSet<String> = redis::cmd("SMEMBERS")
            .arg(self.key(key))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(err)?;
        Ok(members.into_iter().collect())
    }

    async fn count_prefix(&self, prefix: &str) -> StoreResult<i64> {
        let pattern = format!("{}*", glob_escape(&self.key(prefix)));
        let mut conn = self.conn.clone();
        let mut cursor = 0_u64;
        // SCAN may return a key twice while the keyspace changes: count distinct keys.
        let mut seen = HashSet::new();
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(err)?;
            seen.extend(keys);
            if next == 0 {
                return Ok(seen.len() as i64);
            }
            cursor = next;
        }
    }

    async fn get(&self, key: &str) -> StoreResult<Option<String>> {
        redis::cmd("GET")
            .arg(self.key(key))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(err)
    }

    async fn ping(&self) -> StoreResult<()> {
        redis::cmd("PING")
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(err)
    }

    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("redis ({})", self.url)
        } else {
            format!("redis ({}, keys prefixed `{}`)", self.url, self.prefix)
        }
    }
}
