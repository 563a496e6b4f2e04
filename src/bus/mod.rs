//! The message bus: Kafka's model (topics, partitions, keys, headers, consumer groups with
//! per-partition committed offsets), behind one trait with one module per implementation.
//!
//! - [`embedded`]: a durable log in a SQLite file under the data dir, shared by processes.
//! - [`kafka`]: Apache Kafka (or any broker speaking its protocol), through rdkafka.
//!
//! Delivery is at-least-once: a consumer sees every message after its group's committed
//! offset, and commits only what its caller says is durable.

pub mod embedded;
pub mod kafka;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Destination topic.
    pub topic: String,
    /// Partitioning key: messages with one key land in one partition, in order.
    pub key: Option<String>,
    /// Header name/value pairs.
    pub headers: Vec<(String, String)>,
    /// The bytes, unchanged.
    pub payload: Vec<u8>,
}

/// A message read from the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic it was read from.
    pub topic: String,
    /// Partition within the topic.
    pub partition: i32,
    /// Offset within the partition (0-based, dense in the embedded bus).
    pub offset: i64,
    /// Key, if the producer set one.
    pub key: Option<String>,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// The bytes as published.
    pub payload: Vec<u8>,
    /// Publish time, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

impl Message {
    /// The value of header `name`, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Where a group with no committed offset starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The oldest message (Kafka's `auto.offset.reset=earliest`).
    #[default]
    Earliest,
    /// Only messages published after subscribing.
    Latest,
}

/// A topic and partition.
pub type TopicPartition = (String, i32);

/// Per-topic counts for `livros stats`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TopicStats {
    /// Messages published (sum over partitions of the end offset).
    pub published: i64,
    /// Per consumer group: messages consumed and committed.
    pub consumed: BTreeMap<String, i64>,
}

/// Where one partition stands for one consumer group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    /// The offset the next published message will get.
    pub end: i64,
    /// The group's committed offset (the next it will read); 0 where it has committed none.
    pub committed: i64,
}

impl Position {
    /// Messages published and not yet committed by the group.
    pub fn lag(&self) -> i64 {
        (self.end - self.committed).max(0)
    }
}

/// Errors of a bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The bus cannot be reached or its storage failed; retrying may help.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// A topic that does not exist was named.
    #[error("unknown topic `{0}`: it is created at start by `livros up`, `s1`, `s2` or `s3`")]
    UnknownTopic(String),
    /// This consumer no longer owns what it tried to commit (another member took over).
    #[error("consumer fenced: {0}")]
    Fenced(String),
}

/// Result of bus operations.
pub type BusResult<T> = Result<T, BusError>;

/// A message bus shaped like Kafka.
#[async_trait]
pub trait Bus: Send + Sync {
    /// Creates each topic that does not exist yet, with `partitions` partitions.
    async fn ensure_topics(&self, topics: &[String], partitions: i32) -> BusResult<()>;

    /// Publishes records; when it returns `Ok`, every record is durable. Returns each
    /// record's (partition, offset), in order.
    async fn publish(&self, records: &[Record]) -> BusResult<Vec<(i32, i64)>>;

    /// Joins consumer group `group` on `topics`.
    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
        start: StartFrom,
    ) -> BusResult<Box<dyn Consumer>>;

    /// Published counts for `topics`, and what each of `groups` has committed on them.
    async fn stats(
        &self,
        topics: &[String],
        groups: &[String],
    ) -> BusResult<BTreeMap<String, TopicStats>>;

    /// Messages on `topics` that `group` has not committed yet.
    async fn lag(&self, group: &str, topics: &[String]) -> BusResult<i64> {
        let positions = self.positions(group, topics).await?;
        Ok(positions.values().map(Position::lag).sum())
    }

    /// Per partition of `topics` (those that exist), its end and what `group` has
    /// committed: by comparing the ends read now with the commits read later, a caller
    /// learns whether the group has since stored everything published until now.
    async fn positions(
        &self,
        group: &str,
        topics: &[String],
    ) -> BusResult<BTreeMap<TopicPartition, Position>>;

    /// A name for logs (`embedded (livros-data/bus.db)`, `kafka (host:9092)`).
    fn describe(&self) -> String;
}

/// A member of a consumer group.
#[async_trait]
pub trait Consumer: Send {
    /// Returns up to `max` messages, waiting up to `timeout` for the first one.
    /// Within a partition, messages come in offset order.
    async fn poll(&mut self, max: usize, timeout: Duration) -> BusResult<Vec<Message>>;

    /// Commits, per partition, the offset of the next message to read.
    /// Call it only once everything before that offset is durable downstream.
    async fn commit(&mut self, offsets: &BTreeMap<TopicPartition, i64>) -> BusResult<()>;

    /// Moves this consumer's read position in one partition (its committed offset is unchanged).
    async fn seek(&mut self, topic: &str, partition: i32, offset: i64) -> BusResult<()>;

    /// Leaves the group, releasing its partitions at once.
    async fn close(&mut self) -> BusResult<()>;
}

/// The topic names of one deployment: each system's names behind an optional prefix, so
/// several deployments (or test runs) can share one Kafka cluster. The default, no
/// prefix, is the seeds' wire contract.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// Names with `prefix` in front (`staging.` gives `staging.customers`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix in front of every name.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The deployment's name for `topic`.
    pub fn name(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    /// The system's name for the deployment's `name`, if it carries the prefix.
    pub fn strip<'a>(&self, name: &'a str) -> Option<&'a str> {
        name.strip_prefix(&self.prefix)
    }
}

/// Counts `records`, acknowledged by a bus, in the metrics, per topic.
fn count_published(records: &[Record]) {
    let mut per_topic: BTreeMap<&str, usize> = BTreeMap::new();
    for r in records {
        *per_topic.entry(r.topic.as_str()).or_default() += 1;
    }
    for (topic, n) in per_topic {
        crate::metrics::published(topic, n);
    }
}

/// The dead-letter topic of `topic`.
pub fn dlq_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// The offsets to commit after processing `messages`: per partition, one past the last offset.
pub fn next_offsets(messages: &[Message]) -> BTreeMap<TopicPartition, i64> {
    let mut out = BTreeMap::new();
    for m in messages {
        let next = out.entry((m.topic.clone(), m.partition)).or_insert(0);
        *next = (*next).max(m.offset + 1);
    }
    out
}

/// Which partition a key goes to: FNV-1a, stable across processes and releases.
pub fn partition_for(key: Option<&str>, partitions: i32, fallback: u64) -> i32 {
    let hash = match key {
        Some(k) => k.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        }),
        None => fallback,
    };
    (hash % partitions.max(1) as u64) as i32
}
