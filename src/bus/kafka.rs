//! The Kafka bus, through rdkafka (librdkafka).
//!
//! - Producer: idempotent (`enable.idempotence`), keyed records, headers; `publish` returns
//!   once the brokers acknowledged every record (`acks=all`).
//! - Consumers: one librdkafka consumer per `subscribe`, auto-commit and auto offset store
//!   off: offsets move only through [`Consumer::commit`], which commits only partitions
//!   this member still owns. A partition revoked mid-batch is redelivered to its new owner
//!   from the last commit: at-least-once, never a skip.
//! - Topics are created at start with `ensure_topics` (brokers may not auto-create).
//!
//! librdkafka's calls that block (commits, seeks, metadata) run on the blocking pool.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::{
    Bus, BusError, BusResult, Consumer, Message, Position, Record, StartFrom, TopicPartition,
    TopicStats,
};

/// How long metadata, watermark and commit calls may take before the broker counts as
/// unreachable for this attempt (the caller retries).
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long librdkafka keeps retrying one record before reporting it failed; our own
/// retry loop then publishes the batch again.
const DELIVERY_TIMEOUT_MS: &str = "30000";
/// After the first message of a poll, how long to wait for more before returning a batch.
const BATCH_LINGER: Duration = Duration::from_millis(5);

/// Kafka settings.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `host:port,…`
    pub brokers: String,
    /// Replication factor of topics created at start.
    pub replication: i32,
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

fn base_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        // Quiet librdkafka's own logging; our errors carry what matters.
        .set("log_level", "3");
    config
}

/// The Kafka bus.
#[derive(Clone)]
pub struct KafkaBus {
    config: KafkaConfig,
    producer: FutureProducer,
    admin: Arc<AdminClient<DefaultClientContext>>,
    metadata: Arc<BaseConsumer>,
    known_topics: Arc<Mutex<HashSet<String>>>,
    /// One client per group whose offsets are read (lag, stats): made once, reused.
    offset_readers: Arc<Mutex<BTreeMap<String, Arc<BaseConsumer>>>>,
}

impl KafkaBus {
    /// Connects to the brokers; fails if none answers within a few seconds.
    pub async fn connect(config: KafkaConfig) -> BusResult<Self> {
        let producer: FutureProducer = base_config(&config.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", DELIVERY_TIMEOUT_MS)
            .set("linger.ms", "5")
            .create()
            .map_err(unavailable)?;
        let admin: AdminClient<DefaultClientContext> =
            base_config(&config.brokers).create().map_err(unavailable)?;
        let metadata: BaseConsumer = base_config(&config.brokers).create().map_err(unavailable)?;
        let bus = Self {
            config,
            producer,
            admin: Arc::new(admin),
            metadata: Arc::new(metadata),
            known_topics: Arc::default(),
            offset_readers: Arc::default(),
        };
        bus.existing_topics().await?;
        Ok(bus)
    }

    /// Topic names and partition counts the cluster has.
    async fn existing_topics(&self) -> BusResult<BTreeMap<String, i32>> {
        let metadata = self.metadata.clone();
        let topics = tokio::task::spawn_blocking(move || {
            metadata.fetch_metadata(None, BROKER_TIMEOUT).map(|m| {
                m.topics()
                    .iter()
                    .filter(|t| t.error().is_none())
                    .map(|t| (t.name().to_string(), t.partitions().len() as i32))
                    .collect::<BTreeMap<_, _>>()
            })
        })
        .await
        .expect("metadata task")
        .map_err(|e| {
            BusError::Unavailable(format!(
                "cannot reach Kafka at {}: {e}",
                self.config.brokers
            ))
        })?;
        self.known_topics
            .lock()
            .expect("poisoned")
            .extend(topics.keys().cloned());
        Ok(topics)
    }

    /// The partition counts of those of `topics` that exist.
    async fn partition_counts(&self, topics: &[String]) -> BusResult<BTreeMap<String, i32>> {
        let existing = self.existing_topics().await?;
        Ok(topics
            .iter()
            .filter_map(|t| existing.get(t).map(|n| (t.clone(), *n)))
            .collect())
    }

    /// Where each of `partitions`' partitions stands for `group`.
    async fn positions_of(
        &self,
        group: &str,
        partitions: &BTreeMap<String, i32>,
    ) -> BusResult<BTreeMap<TopicPartition, Position>> {
        let high = self.watermarks(partitions).await?;
        let committed = self.group_committed(group, partitions).await?;
        Ok(high
            .into_iter()
            .map(|(tp, end)| {
                let committed = committed.get(&tp).copied().unwrap_or(0);
                (tp, Position { end, committed })
            })
            .collect())
    }

    async fn require_topics(&self, topics: &[String]) -> BusResult<BTreeMap<String, i32>> {
        let existing = self.existing_topics().await?;
        for t in topics {
            if !existing.contains_key(t) {
                return Err(BusError::UnknownTopic(t.clone()));
            }
        }
        Ok(existing)
    }

    /// Committed offsets of a group on every partition of `partitions`, read by `reader`.
    fn committed(
        reader: &BaseConsumer,
        partitions: &BTreeMap<String, i32>,
    ) -> Result<BTreeMap<TopicPartition, i64>, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for (topic, n) in partitions {
            for p in 0..*n {
                tpl.add_partition(topic, p);
            }
        }
        let committed = reader.committed_offsets(tpl, BROKER_TIMEOUT)?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
                _ => None,
            })
            .collect())
    }

    async fn watermarks(
        &self,
        partitions: &BTreeMap<String, i32>,
    ) -> BusResult<BTreeMap<TopicPartition, i64>> {
        let metadata = self.metadata.clone();
        let partitions = partitions.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = BTreeMap::new();
            for (topic, n) in &partitions {
                for p in 0..*n {
                    let (_, high) = metadata.fetch_watermarks(topic, p, BROKER_TIMEOUT)?;
                    out.insert((topic.clone(), p), high);
                }
            }
            Ok::<_, KafkaError>(out)
        })
        .await
        .expect("watermark task")
        .map_err(unavailable)
    }

    async fn group_committed(
        &self,
        group: &str,
        partitions: &BTreeMap<String, i32>,
    ) -> BusResult<BTreeMap<TopicPartition, i64>> {
        let reader = {
            let mut readers = self.offset_readers.lock().expect("poisoned");
            match readers.get(group) {
                Some(reader) => reader.clone(),
                None => {
                    // Never subscribes, so it never joins the group: it only reads offsets.
                    let reader: BaseConsumer = base_config(&self.config.brokers)
                        .set("group.id", group)
                        .create()
                        .map_err(unavailable)?;
                    let reader = Arc::new(reader);
                    readers.insert(group.to_string(), reader.clone());
                    reader
                }
            }
        };
        let partitions = partitions.clone();
        tokio::task::spawn_blocking(move || Self::committed(&reader, &partitions))
            .await
            .expect("offsets task")
            .map_err(unavailable)
    }
}

#[async_trait]
impl Bus for KafkaBus {
    async fn ensure_topics(&self, topics: &[String], partitions: i32) -> BusResult<()> {
        let existing = self.existing_topics().await?;
        let missing: Vec<NewTopic<'_>> = topics
            .iter()
            .filter(|t| !existing.contains_key(*t))
            .map(|t| {
                NewTopic::new(
                    t,
                    partitions.max(1),
                    TopicReplication::Fixed(self.config.replication),
                )
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let results = self
            .admin
            .create_topics(
                &missing,
                &AdminOptions::new().operation_timeout(Some(BROKER_TIMEOUT)),
            )
            .await
            .map_err(unavailable)?;
        for result in results {
            match result {
                Ok(name) => tracing::info!(topic = %name, partitions, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(BusError::Unavailable(format!(
                        "cannot create topic `{name}`: {code}"
                    )));
                }
            }
        }
        // New topics take a moment to show in every broker's metadata.
        let deadline = Instant::now() + BROKER_TIMEOUT;
        loop {
            let existing = self.existing_topics().await?;
            if topics.iter().all(|t| existing.contains_key(t)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BusError::Unavailable(
                    "created topics did not appear in the metadata".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn publish(&self, records: &[Record]) -> BusResult<Vec<(i32, i64)>> {
        let result: BusResult<Vec<(i32, i64)>> = async {
            let unknown: Vec<String> = {
                let known = self.known_topics.lock().expect("poisoned");
                records
                    .iter()
                    .filter(|r| !known.contains(&r.topic))
                    .map(|r| r.topic.clone())
                    .collect()
            };
            if !unknown.is_empty() {
                self.require_topics(&unknown).await?;
            }
            let sends = records.iter().map(|r| {
                let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
                for (k, v) in &r.headers {
                    headers = headers.insert(Header {
                        key: k,
                        value: Some(v),
                    });
                }
                let mut record = FutureRecord::to(&r.topic)
                    .payload(&r.payload)
                    .headers(headers);
                if let Some(key) = &r.key {
                    record = record.key(key);
                }
                self.producer
                    .send(record, rdkafka::util::Timeout::After(BROKER_TIMEOUT))
            });
            let results = futures::future::join_all(sends).await;
            results
                .into_iter()
                .map(|r| match r {
                    Ok(delivery) => Ok((delivery.partition, delivery.offset)),
                    Err((e, _)) => Err(unavailable(e)),
                })
                .collect()
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
        self.require_topics(topics).await?;
        let consumer: StreamConsumer = base_config(&self.config.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // A member that died hands its partitions over after this long; librdkafka's
            // default (45 s) is long for a pipeline meant to recover from kill -9.
            .set("session.timeout.ms", "10000")
            .set(
                "auto.offset.reset",
                match start {
                    StartFrom::Earliest => "earliest",
                    StartFrom::Latest => "latest",
                },
            )
            .create()
            .map_err(unavailable)?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(unavailable)?;
        Ok(Box::new(KafkaConsumer {
            consumer: Arc::new(consumer),
            group: group.to_string(),
        }))
    }

    async fn stats(
        &self,
        topics: &[String],
        groups: &[String],
    ) -> BusResult<BTreeMap<String, TopicStats>> {
        let partitions = self.partition_counts(topics).await?;
        let high = self.watermarks(&partitions).await?;
        let mut out: BTreeMap<String, TopicStats> = partitions
            .keys()
            .map(|t| (t.clone(), TopicStats::default()))
            .collect();
        for ((topic, _), h) in &high {
            out.get_mut(topic).expect("listed").published += h;
        }
        for group in groups {
            for t in out.values_mut() {
                t.consumed.insert(group.clone(), 0);
            }
            for ((topic, _), offset) in self.group_committed(group, &partitions).await? {
                *out.get_mut(&topic)
                    .expect("listed")
                    .consumed
                    .entry(group.clone())
                    .or_default() += offset;
            }
        }
        out.retain(|t, _| topics.contains(t));
        Ok(out)
    }

    async fn lag(&self, group: &str, topics: &[String]) -> BusResult<i64> {
        // Unlike `positions`, a topic that does not exist is an error here.
        let existing = self.require_topics(topics).await?;
        let partitions: BTreeMap<String, i32> =
            topics.iter().map(|t| (t.clone(), existing[t])).collect();
        let positions = self.positions_of(group, &partitions).await?;
        Ok(positions.values().map(Position::lag).sum())
    }

    async fn positions(
        &self,
        group: &str,
        topics: &[String],
    ) -> BusResult<BTreeMap<TopicPartition, Position>> {
        let partitions = self.partition_counts(topics).await?;
        self.positions_of(group, &partitions).await
    }

    fn describe(&self) -> String {
        format!("kafka ({})", self.config.brokers)
    }
}

/// A member of a Kafka consumer group.
struct KafkaConsumer {
    consumer: Arc<StreamConsumer>,
    group: String,
}

fn owned(m: &rdkafka::message::BorrowedMessage<'_>) -> Message {
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|header| {
                    let value = header
                        .value
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default();
                    (header.key.to_string(), value)
                })
                .collect()
        })
        .unwrap_or_default();
    Message {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        headers,
        payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        timestamp_ms: m
            .timestamp()
            .to_millis()
            .unwrap_or_else(|| chrono::Utc::now().timestamp_millis()),
    }
}

/// Errors that mean "this member no longer owns what it tried to commit".
fn is_fencing(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::UnknownMemberId
                | RDKafkaErrorCode::FencedInstanceId
                | RDKafkaErrorCode::StaleMemberEpoch
        )
    )
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn poll(&mut self, max: usize, timeout: Duration) -> BusResult<Vec<Message>> {
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout;
        while out.len() < max.max(1) {
            let wait = if out.is_empty() {
                deadline.saturating_duration_since(Instant::now())
            } else {
                BATCH_LINGER
            };
            if wait.is_zero() {
                break;
            }
            match tokio::time::timeout(wait, self.consumer.recv()).await {
                Ok(Ok(m)) => out.push(owned(&m)),
                Ok(Err(e)) if out.is_empty() => return Err(unavailable(e)),
                Ok(Err(_)) | Err(_) => break,
            }
        }
        Ok(out)
    }

    async fn commit(&mut self, offsets: &BTreeMap<TopicPartition, i64>) -> BusResult<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let consumer = self.consumer.clone();
        let offsets = offsets.clone();
        let group = self.group.clone();
        tokio::task::spawn_blocking(move || {
            // Only partitions still ours: a revoked one is redelivered to its new owner
            // from the last commit, and committing it here could move that owner's mark.
            let assigned: HashSet<(String, i32)> = consumer
                .assignment()
                .map_err(unavailable)?
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect();
            let mut tpl = TopicPartitionList::new();
            for ((topic, partition), next) in &offsets {
                if assigned.contains(&(topic.clone(), *partition)) {
                    tpl.add_partition_offset(topic, *partition, Offset::Offset(*next)).map_err(unavailable)?;
                }
            }
            if tpl.count() == 0 {
                return Err(BusError::Fenced(format!("group `{group}`: the batch's partitions were reassigned; they will be redelivered")));
            }
            consumer.commit(&tpl, CommitMode::Sync).map_err(|e| {
                if is_fencing(&e) {
                    BusError::Fenced(format!("group `{group}` rebalanced during the batch: {e}"))
                } else {
                    unavailable(e)
                }
            })
        })
        .await
        .expect("commit task")
    }

    async fn seek(&mut self, topic: &str, partition: i32, offset: i64) -> BusResult<()> {
        let consumer = self.consumer.clone();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            consumer.seek(&topic, partition, Offset::Offset(offset), BROKER_TIMEOUT)
        })
        .await
        .expect("seek task")
        .map_err(unavailable)
    }

    async fn close(&mut self) -> BusResult<()> {
        self.consumer.unsubscribe();
        Ok(())
    }
}
