//! The embedded bus: a durable, multi-process log in one SQLite file (`<data dir>/bus.db`).
//!
//! Layout: `topics` (name, partition count), `partitions` (next offset of each),
//! `messages` (one row per message, keyed by topic, partition, offset), `group_offsets`
//! (each group's committed next offset per partition) and `leases` (which group member reads
//! a topic).
//!
//! Fsync policy: WAL journal with `synchronous=FULL`, so a publish or a commit that has
//! returned survives kill -9 *and* power loss; batching is what keeps that affordable.
//! Writers take the lock up front (`BEGIN IMMEDIATE`), so processes sharing the file queue on
//! SQLite's busy timeout instead of failing.
//!
//! Group membership is a lease per (group, topic): one member reads a topic at a time; the
//! others wait and take over when the holder closes, its lease expires, or its process is
//! found dead. Commits are fenced by the lease. Scaling one group across machines is Kafka's
//! job, not this module's. Messages are kept forever (it is also the audit trail).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::{Connection as _, QueryBuilder, Row, Sqlite};
use tokio::sync::Notify;

use super::{
    Bus, BusError, BusResult, Consumer, Message, Position, Record, StartFrom, TopicPartition,
    TopicStats,
};

/// How long a member's claim on a topic lasts without renewal. A crashed member on another
/// host blocks its topic this long; one on this host is detected at once by its pid.
const LEASE_TTL: Duration = Duration::from_secs(10);
/// Renew well before expiry so a busy member never loses its lease by accident.
const LEASE_RENEW: Duration = Duration::from_secs(3);
/// Idle poll interval: wake-ups within one process are immediate (a `Notify` a topic); this
/// bounds how long a consumer in another process waits to see a new message.
const IDLE_POLL: Duration = Duration::from_millis(20);
/// Rows per INSERT statement: 7 bound values each stays far below SQLite's variable limit.
const INSERT_CHUNK: usize = 500;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS topics (name TEXT PRIMARY KEY, partitions INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS partitions (topic TEXT NOT NULL, partition INTEGER NOT NULL,
        next_offset INTEGER NOT NULL, PRIMARY KEY (topic, partition)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS messages (topic TEXT NOT NULL, partition INTEGER NOT NULL,
        offset INTEGER NOT NULL, key TEXT, headers TEXT, payload BLOB NOT NULL,
        timestamp_ms INTEGER NOT NULL, PRIMARY KEY (topic, partition, offset)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS group_offsets (grp TEXT NOT NULL, topic TEXT NOT NULL,
        partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
        PRIMARY KEY (grp, topic, partition)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS leases (grp TEXT NOT NULL, topic TEXT NOT NULL, owner TEXT NOT NULL,
        host TEXT NOT NULL, pid INTEGER NOT NULL, expires_ms INTEGER NOT NULL,
        PRIMARY KEY (grp, topic)) WITHOUT ROWID",
];

fn unavailable(e: sqlx::Error) -> BusError {
    BusError::Unavailable(e.to_string())
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// This machine's name, to tell whether a lease holder's pid can be checked here.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn pid_alive(pid: i64) -> bool {
    // Without /proc we cannot tell; assume alive and let the lease expire.
    !Path::new("/proc/self").exists() || Path::new(&format!("/proc/{pid}")).exists()
}

/// A wake-up signal a topic, for this process's consumers of it: a publish wakes the members
/// of the topics it added to, not every consumer in the process (S3 alone reads every topic,
/// and a member woken for nothing still reads the bus's file to find that out).
#[derive(Clone, Default)]
struct Wakes(Arc<Mutex<HashMap<String, Arc<Notify>>>>);

impl Wakes {
    fn of(&self, topic: &str) -> Arc<Notify> {
        let mut wakes = self.0.lock().expect("poisoned");
        // Looked up before inserting: every publish asks, and the topic is nearly always known.
        if let Some(wake) = wakes.get(topic) {
            return wake.clone();
        }
        wakes.entry(topic.to_string()).or_default().clone()
    }
}

/// The embedded bus. Cheap to clone; clones share the pool and the wake-up signals.
#[derive(Clone)]
pub struct EmbeddedBus {
    /// Reads outside a write transaction.
    pool: crate::sqlite::Readers,
    /// Every write transaction (publish, commit, leases, topics).
    writer: crate::sqlite::Writer,
    /// Keeps the file's background checkpoint running while this is open.
    _checkpoint: crate::sqlite::Checkpoint,
    path: PathBuf,
    wakes: Wakes,
    partitions: Arc<Mutex<HashMap<String, i32>>>,
    round_robin: Arc<AtomicU64>,
}

impl EmbeddedBus {
    /// Opens (creating if needed) the bus stored in `dir/bus.db`.
    pub async fn open(dir: &Path) -> BusResult<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| BusError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("bus.db");
        let pools = crate::sqlite::open(&path, 4).await.map_err(unavailable)?;
        crate::sqlite::apply_schema(&pools.writer, SCHEMA)
            .await
            .map_err(unavailable)?;
        Ok(Self {
            pool: pools.reader,
            writer: pools.writer,
            _checkpoint: pools.checkpoint,
            path,
            wakes: Wakes::default(),
            partitions: Arc::default(),
            round_robin: Arc::default(),
        })
    }

    async fn partition_count(&self, topic: &str) -> BusResult<i32> {
        if let Some(n) = self.partitions.lock().expect("poisoned").get(topic) {
            return Ok(*n);
        }
        let n: Option<i64> = sqlx::query_scalar("SELECT partitions FROM topics WHERE name = ?")
            .bind(topic)
            .fetch_optional(&mut *self.pool.get().await.map_err(unavailable)?)
            .await
            .map_err(unavailable)?;
        let n = n.ok_or_else(|| BusError::UnknownTopic(topic.to_string()))? as i32;
        self.partitions
            .lock()
            .expect("poisoned")
            .insert(topic.to_string(), n);
        Ok(n)
    }
}

#[async_trait]
impl Bus for EmbeddedBus {
    async fn ensure_topics(&self, topics: &[String], partitions: i32) -> BusResult<()> {
        let mut writer = self.writer.lock().await;
        let mut tx = writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(unavailable)?;
        for topic in topics {
            let created = sqlx::query(
                "INSERT INTO topics (name, partitions) VALUES (?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(topic)
            .bind(i64::from(partitions.max(1)))
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?
            .rows_affected();
            if created == 1 {
                for p in 0..partitions.max(1) {
                    sqlx::query(
                        "INSERT INTO partitions (topic, partition, next_offset) VALUES (?, ?, 0)",
                    )
                    .bind(topic)
                    .bind(p)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                }
            }
        }
        tx.commit().await.map_err(unavailable)
    }

    async fn publish(&self, records: &[Record]) -> BusResult<Vec<(i32, i64)>> {
        let result = async {
            if records.is_empty() {
                return Ok(Vec::new());
            }
            let mut placed = Vec::with_capacity(records.len());
            for r in records {
                let n = self.partition_count(&r.topic).await?;
                let fallback = self.round_robin.fetch_add(1, Ordering::Relaxed);
                placed.push(super::partition_for(r.key.as_deref(), n, fallback));
            }
            let timestamp = now_ms();
            // Each record's place among this batch's records in its partition, and how
            // many go to each partition.
            let mut counts: HashMap<(&str, i32), i64> = HashMap::new();
            let places: Vec<i64> = records
                .iter()
                .zip(&placed)
                .map(|(r, p)| {
                    let n = counts.entry((r.topic.as_str(), *p)).or_default();
                    *n += 1;
                    *n - 1
                })
                .collect();
            // One script, one trip to SQLite's thread: the messages are inserted at their
            // partitions' ends as they were (a partition missing from the file makes an
            // offset NULL, which the table refuses, and nothing is kept), then every
            // partition's end moves past them in one statement that returns the new ends.
            let mut q = crate::sqlite::script();
            for chunk in records
                .iter()
                .zip(placed.iter().zip(&places))
                .collect::<Vec<_>>()
                .chunks(INSERT_CHUNK)
            {
                q.push(
                    "INSERT INTO messages (topic, partition, offset, key, headers, payload, timestamp_ms) \
                     SELECT v.column1, v.column2, (SELECT p.next_offset FROM partitions p \
                       WHERE p.topic = v.column1 AND p.partition = v.column2) + v.column3, \
                     v.column4, v.column5, v.column6, v.column7 FROM (",
                );
                q.push_values(chunk, |mut row, (r, (p, place))| {
                    let headers = (!r.headers.is_empty())
                        .then(|| serde_json::to_string(&r.headers).expect("strings serialize"));
                    row.push_bind(r.topic.clone())
                        .push_bind(*p)
                        .push_bind(**place)
                        .push_bind(r.key.clone())
                        .push_bind(headers)
                        .push_bind(r.payload.clone())
                        .push_bind(timestamp);
                });
                q.push(") AS v;\n");
            }
            q.push("UPDATE partitions SET next_offset = partitions.next_offset + v.column3 FROM (");
            q.push_values(&counts, |mut row, ((topic, p), n)| {
                row.push_bind(topic.to_string()).push_bind(*p).push_bind(*n);
            });
            q.push(
                ") AS v WHERE partitions.topic = v.column1 AND partitions.partition = v.column2 \
                 RETURNING topic, partition, next_offset;\n",
            );
            let ends: Vec<(String, i32, i64)> = self
                .writer
                .script(&mut q)
                .await
                .map_err(unavailable)?
                .iter()
                .map(|row| (row.get(0), row.get(1), row.get(2)))
                .collect();
            if ends.len() != counts.len() {
                return Err(BusError::Unavailable(
                    "a partition is missing from the bus's file".into(),
                ));
            }
            // Where the batch started in each partition (its new end less what it added):
            // counts become the starts.
            for (topic, p, end) in &ends {
                if let Some(n) = counts.get_mut(&(topic.as_str(), *p)) {
                    *n = end - *n;
                }
            }
            let result: Vec<(i32, i64)> = records
                .iter()
                .zip(placed.iter().zip(&places))
                .map(|(r, (p, place))| (*p, counts[&(r.topic.as_str(), *p)] + place))
                .collect();
            let mut topics: Vec<&str> = records.iter().map(|r| r.topic.as_str()).collect();
            topics.sort_unstable();
            topics.dedup();
            for topic in topics {
                self.wakes.of(topic).notify_waiters();
            }
            Ok(result)

        }
        .await;
        if result.is_ok() {
            super::count_published(records);
        }
        result
    }

    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
        start: StartFrom,
    ) -> BusResult<Box<dyn Consumer>> {
        let mut partitions = BTreeMap::new();
        for t in topics {
            partitions.insert(t.clone(), self.partition_count(t).await?);
        }
        Ok(Box::new(EmbeddedConsumer {
            bus: self.clone(),
            group: group.to_string(),
            owner: uuid::Uuid::new_v4().to_string(),
            host: hostname(),
            start,
            partitions,
            held: HashMap::new(),
            positions: BTreeMap::new(),
            last_claim_attempt: None,
            cursor: 0,
            wakes: topics.iter().map(|t| self.wakes.of(t)).collect(),
        }))
    }

    async fn stats(
        &self,
        topics: &[String],
        groups: &[String],
    ) -> BusResult<BTreeMap<String, TopicStats>> {
        let mut out = BTreeMap::new();
        for topic in topics {
            let published: Option<i64> =
                sqlx::query_scalar("SELECT SUM(next_offset) FROM partitions WHERE topic = ?")
                    .bind(topic)
                    .fetch_one(&mut *self.pool.get().await.map_err(unavailable)?)
                    .await
                    .map_err(unavailable)?;
            let mut consumed = BTreeMap::new();
            for group in groups {
                let n: Option<i64> = sqlx::query_scalar(
                    "SELECT SUM(next_offset) FROM group_offsets WHERE grp = ? AND topic = ?",
                )
                .bind(group)
                .bind(topic)
                .fetch_one(&mut *self.pool.get().await.map_err(unavailable)?)
                .await
                .map_err(unavailable)?;
                consumed.insert(group.clone(), n.unwrap_or(0));
            }
            out.insert(
                topic.clone(),
                TopicStats {
                    published: published.unwrap_or(0),
                    consumed,
                },
            );
        }
        Ok(out)
    }

    async fn positions(
        &self,
        group: &str,
        topics: &[String],
    ) -> BusResult<BTreeMap<TopicPartition, Position>> {
        let mut conn = self.pool.get().await.map_err(unavailable)?;
        let mut out = BTreeMap::new();
        for topic in topics {
            let rows: Vec<(i32, i64, Option<i64>)> = sqlx::query_as(
                "SELECT p.partition, p.next_offset, g.next_offset FROM partitions p
                 LEFT JOIN group_offsets g
                   ON g.grp = ? AND g.topic = p.topic AND g.partition = p.partition
                 WHERE p.topic = ?",
            )
            .bind(group)
            .bind(topic)
            .fetch_all(&mut *conn)
            .await
            .map_err(unavailable)?;
            for (partition, end, committed) in rows {
                let committed = committed.unwrap_or(0);
                out.insert((topic.clone(), partition), Position { end, committed });
            }
        }
        Ok(out)
    }

    fn describe(&self) -> String {
        format!("embedded ({})", self.path.display())
    }
}

/// A group member on the embedded bus.
struct EmbeddedConsumer {
    bus: EmbeddedBus,
    group: String,
    owner: String,
    host: String,
    start: StartFrom,
    /// Subscribed topics and their partition counts.
    partitions: BTreeMap<String, i32>,
    /// Topics whose lease this member holds, with when it was last renewed.
    held: HashMap<String, Instant>,
    /// Next offset to read, per held partition.
    positions: BTreeMap<TopicPartition, i64>,
    last_claim_attempt: Option<Instant>,
    /// Rotates the partition read first, so one busy partition cannot starve the others.
    cursor: usize,
    /// The wake-up signals of the subscribed topics.
    wakes: Vec<Arc<Notify>>,
}

impl EmbeddedConsumer {
    /// Claims or renews the lease on `topic`; true when this member holds it afterwards.
    async fn claim(&self, topic: &str) -> BusResult<bool> {
        let mut writer = self.bus.writer.lock().await;
        let mut tx = writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(unavailable)?;
        let current = sqlx::query(
            "SELECT owner, host, pid, expires_ms FROM leases WHERE grp = ? AND topic = ?",
        )
        .bind(&self.group)
        .bind(topic)
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?;
        let free = match &current {
            None => true,
            Some(row) => {
                let owner: String = row.get("owner");
                let host: String = row.get("host");
                let pid: i64 = row.get("pid");
                let expires: i64 = row.get("expires_ms");
                owner == self.owner
                    || expires < now_ms()
                    || (host == self.host
                        && pid != i64::from(std::process::id())
                        && !pid_alive(pid))
            }
        };
        if free {
            sqlx::query(
                "INSERT INTO leases (grp, topic, owner, host, pid, expires_ms) VALUES (?, ?, ?, ?, ?, ?)
                 ON CONFLICT (grp, topic) DO UPDATE SET owner = excluded.owner, host = excluded.host,
                 pid = excluded.pid, expires_ms = excluded.expires_ms",
            )
            .bind(&self.group)
            .bind(topic)
            .bind(&self.owner)
            .bind(&self.host)
            .bind(i64::from(std::process::id()))
            .bind(now_ms() + LEASE_TTL.as_millis() as i64)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(free)
    }

    /// Loads where to start reading `topic`: the group's commits, else the start policy.
    async fn load_positions(&mut self, topic: &str) -> BusResult<()> {
        let n = self.partitions[topic];
        for p in 0..n {
            let committed: Option<i64> = sqlx::query_scalar(
                "SELECT next_offset FROM group_offsets WHERE grp = ? AND topic = ? AND partition = ?",
            )
            .bind(&self.group)
            .bind(topic)
            .bind(p)
            .fetch_optional(&mut *self.bus.pool.get().await.map_err(unavailable)?)
            .await
            .map_err(unavailable)?;
            let position = match (committed, self.start) {
                (Some(o), _) => o,
                (None, StartFrom::Earliest) => 0,
                (None, StartFrom::Latest) => sqlx::query_scalar(
                    "SELECT next_offset FROM partitions WHERE topic = ? AND partition = ?",
                )
                .bind(topic)
                .bind(p)
                .fetch_one(&mut *self.bus.pool.get().await.map_err(unavailable)?)
                .await
                .map_err(unavailable)?,
            };
            self.positions.insert((topic.to_string(), p), position);
        }
        Ok(())
    }

    /// Claims topics not yet held (at most once a second) and renews held ones when due.
    async fn maintain_leases(&mut self) -> BusResult<()> {
        let now = Instant::now();
        let due: Vec<String> = self
            .held
            .iter()
            .filter(|(_, renewed)| now.duration_since(**renewed) >= LEASE_RENEW)
            .map(|(t, _)| t.clone())
            .collect();
        for topic in due {
            if self.claim(&topic).await? {
                self.held.insert(topic, now);
            } else {
                tracing::warn!(group = %self.group, %topic, "lost the lease on a topic; another member took over");
                self.held.remove(&topic);
                self.positions.retain(|(t, _), _| *t != topic);
            }
        }
        let missing: Vec<String> = self
            .partitions
            .keys()
            .filter(|t| !self.held.contains_key(*t))
            .cloned()
            .collect();
        if missing.is_empty()
            || self
                .last_claim_attempt
                .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return Ok(());
        }
        self.last_claim_attempt = Some(now);
        for topic in missing {
            if self.claim(&topic).await? {
                self.load_positions(&topic).await?;
                self.held.insert(topic, now);
            } else {
                tracing::info!(group = %self.group, %topic, "topic is read by another member of the group; waiting to take over");
            }
        }
        Ok(())
    }

    async fn fetch(&mut self, max: usize) -> BusResult<Vec<Message>> {
        let mut out = Vec::new();
        if self.positions.is_empty() {
            return Ok(out);
        }
        // Only the partitions with messages past this member's position are read: every
        // partition's end in one read first (the table has a row a partition), not a read
        // of each. A member of many topics (S3 reads all of them) is woken by every
        // publish, and most wake-ups find one partition with something new, or none.
        let ends: HashMap<TopicPartition, i64> = sqlx::query_as::<_, (String, i32, i64)>(
            "SELECT topic, partition, next_offset FROM partitions",
        )
        .fetch_all(&mut *self.bus.pool.get().await.map_err(unavailable)?)
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|(topic, partition, end)| ((topic, partition), end))
        .collect();
        let parts: Vec<(TopicPartition, i64)> = self
            .positions
            .iter()
            .filter(|(k, v)| ends.get(*k).is_some_and(|end| end > *v))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        if parts.is_empty() {
            return Ok(out);
        }
        // Positions move only once every read succeeded: a read failing half-way must not
        // leave this member past messages it never handed out (a later commit would skip
        // them).
        let mut moved = Vec::new();
        self.cursor = (self.cursor + 1) % parts.len();
        for i in 0..parts.len() {
            if out.len() >= max {
                break;
            }
            let ((topic, partition), from) = &parts[(self.cursor + i) % parts.len()];
            let rows = sqlx::query(
                "SELECT offset, key, headers, payload, timestamp_ms FROM messages
                 WHERE topic = ? AND partition = ? AND offset >= ? ORDER BY offset LIMIT ?",
            )
            .bind(topic)
            .bind(partition)
            .bind(from)
            .bind((max - out.len()) as i64)
            .fetch_all(&mut *self.bus.pool.get().await.map_err(unavailable)?)
            .await
            .map_err(unavailable)?;
            for row in rows {
                let headers: Option<String> = row.get("headers");
                let message = Message {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: row.get("offset"),
                    key: row.get("key"),
                    headers: headers
                        .and_then(|h| serde_json::from_str(&h).ok())
                        .unwrap_or_default(),
                    payload: row.get("payload"),
                    timestamp_ms: row.get("timestamp_ms"),
                };
                moved.push(((topic.clone(), *partition), message.offset + 1));
                out.push(message);
            }
        }
        self.positions.extend(moved);
        Ok(out)
    }
}

#[async_trait]
impl Consumer for EmbeddedConsumer {
    async fn poll(&mut self, max: usize, timeout: Duration) -> BusResult<Vec<Message>> {
        let deadline = Instant::now() + timeout;
        loop {
            let wakes = self.wakes.clone();
            let mut woken: Vec<_> = wakes.iter().map(|w| Box::pin(w.notified())).collect();
            for w in &mut woken {
                w.as_mut().enable();
            }
            self.maintain_leases().await?;
            let messages = self.fetch(max.max(1)).await?;
            let now = Instant::now();
            if !messages.is_empty() || now >= deadline {
                return Ok(messages);
            }
            let wait = IDLE_POLL.min(deadline - now);
            // `select_all` wants at least one future; a member of no topic waits on the clock.
            let any_woken = async {
                if woken.is_empty() {
                    std::future::pending::<()>().await;
                } else {
                    futures::future::select_all(woken).await;
                }
            };
            tokio::select! {
                _ = any_woken => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn commit(&mut self, offsets: &BTreeMap<TopicPartition, i64>) -> BusResult<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut writer = self.bus.writer.lock().await;
        let mut tx = writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(unavailable)?;
        // Every offset in one statement, each only where this member holds its topic's
        // lease: fewer rows written than offsets given means a topic was taken over, and
        // the transaction is dropped (rolled back) with nothing committed.
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO group_offsets (grp, topic, partition, next_offset) SELECT ",
        );
        q.push_bind(&self.group)
            .push(", v.column1, v.column2, v.column3 FROM (");
        q.push_values(offsets, |mut row, ((topic, partition), next)| {
            row.push_bind(topic).push_bind(partition).push_bind(next);
        });
        q.push(") AS v WHERE EXISTS (SELECT 1 FROM leases l WHERE l.grp = ")
            .push_bind(&self.group)
            .push(" AND l.topic = v.column1 AND l.owner = ")
            .push_bind(&self.owner)
            .push(
                ") ON CONFLICT (grp, topic, partition) \
                 DO UPDATE SET next_offset = excluded.next_offset",
            );
        let written = q
            .build()
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?
            .rows_affected();
        if written < offsets.len() as u64 {
            let topics: Vec<&str> = offsets.keys().map(|(t, _)| t.as_str()).collect();
            return Err(BusError::Fenced(format!(
                "group `{}` no longer owns all of {topics:?} here; their messages will be redelivered",
                self.group
            )));
        }
        tx.commit().await.map_err(unavailable)
    }

    async fn seek(&mut self, topic: &str, partition: i32, offset: i64) -> BusResult<()> {
        let n = *self
            .partitions
            .get(topic)
            .ok_or_else(|| BusError::UnknownTopic(topic.to_string()))?;
        if partition < 0 || partition >= n {
            return Err(BusError::UnknownTopic(format!("{topic}[{partition}]")));
        }
        self.maintain_leases().await?;
        if self.held.contains_key(topic) {
            self.positions
                .insert((topic.to_string(), partition), offset.max(0));
        }
        Ok(())
    }

    async fn close(&mut self) -> BusResult<()> {
        sqlx::query("DELETE FROM leases WHERE grp = ? AND owner = ?")
            .bind(&self.group)
            .bind(&self.owner)
            .execute(&mut *self.bus.writer.lock().await)
            .await
            .map_err(unavailable)?;
        self.held.clear();
        self.positions.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A commit is all or nothing: offsets of a topic another member holds fail it, and
    /// the offsets of the topic this member does hold are not written either.
    #[tokio::test]
    async fn a_commit_partly_fenced_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(dir.path()).await.unwrap();
        let topics = ["mine".to_string(), "theirs".to_string()];
        bus.ensure_topics(&topics, 1).await.unwrap();
        let record = |topic: &str| Record {
            topic: topic.into(),
            key: None,
            headers: Vec::new(),
            payload: b"x".to_vec(),
        };
        bus.publish(&[record("mine"), record("theirs")])
            .await
            .unwrap();
        let wait = Duration::from_secs(5);
        let mut them = bus
            .subscribe("g", &topics[1..], StartFrom::Earliest)
            .await
            .unwrap();
        let theirs = them.poll(10, wait).await.unwrap();
        let mut me = bus
            .subscribe("g", &topics, StartFrom::Earliest)
            .await
            .unwrap();
        let mine = me.poll(10, wait).await.unwrap();
        assert!(mine.iter().all(|m| m.topic == "mine") && !mine.is_empty());
        let both = crate::bus::next_offsets(&[mine, theirs].concat());
        let fenced = me.commit(&both).await;
        assert!(matches!(fenced, Err(BusError::Fenced(_))), "{fenced:?}");
        assert_eq!(bus.lag("g", &topics).await.unwrap(), 2, "nothing committed");
    }

    /// A publish is all or nothing even when the file lacks one of its partitions: the
    /// records bound for the others are not kept either.
    #[tokio::test]
    async fn a_publish_to_a_missing_partition_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(dir.path()).await.unwrap();
        bus.ensure_topics(&["t".into()], 2).await.unwrap();
        sqlx::query("DELETE FROM partitions WHERE topic = 't' AND partition = 1")
            .execute(&mut *bus.writer.lock().await)
            .await
            .unwrap();
        let record = |key: &str| Record {
            topic: "t".into(),
            key: Some(key.into()),
            headers: Vec::new(),
            payload: b"x".to_vec(),
        };
        // Keys enough to land in both partitions.
        let records: Vec<Record> = (0..8).map(|i| record(&format!("k{i}"))).collect();
        assert!(bus.publish(&records).await.is_err());
        let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
            .fetch_one(&mut *bus.pool.get().await.unwrap())
            .await
            .unwrap();
        assert_eq!(kept, 0);
    }
}
