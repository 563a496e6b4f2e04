//! The consumer runtime every system runs on, and the audit log. Each service runs as a
//! task until its shutdown token is cancelled; `livros up` runs them together, `livros
//! s1|s2|s3` one per process.
//!
//! - [`s2`]: the processor: for each consumer a system declares, poll a batch → its
//!   [`Handler`] → dead letters → commit, with the guarantees in `ARCHITECTURE.md`.
//! - [`s3`]: consumes every topic of every system and appends each message to the audit log.
//! - [`index`]: the audit log followed into Elasticsearch / OpenSearch, back-filled after
//!   an outage.
//! - [`outbox`]: records written in the same transaction as the data they announce, and
//!   the relay that publishes them.
//!
//! What a system's S1 (generator) does lives in the system's folder.

pub mod outbox;
pub mod s2;
pub mod s3;

/// Consumer group of S2, unless configured otherwise.
pub const S2_GROUP: &str = "livros-s2";
/// Consumer group of S3, unless configured otherwise.
pub const S3_GROUP: &str = "livros-s3";

use std::sync::atomic::{AtomicU64, Ordering};

use crate::bus::BusError;
use crate::store::{StoreError, StoreResult};
use crate::wire::Invalid;

/// Why a service stopped with an error (transient failures are retried, not returned).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The bus failed in a way retrying cannot fix.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A store failed in a way retrying cannot fix.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The HTTP API's listener failed.
    #[error("HTTP API: {0}")]
    Http(std::io::Error),
    /// A log file (S3's audit log, S1's `s1_log.json`) could not be read or written.
    #[error("log file {path}: {source}")]
    LogFile {
        /// The log's path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Indexing the audit log failed in a way retrying cannot fix.
    #[error(transparent)]
    Search(#[from] crate::search::SearchError),
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Stored (or already there): the entity's id and a label for output lines.
    Stored {
        /// Entity id.
        id: String,
        /// A human label (a name, a title).
        label: String,
        /// Records to publish because of it (a reply), before the offset is committed. A
        /// redelivered message may publish them again: consumers of replies must take a
        /// second copy in stride.
        out: Vec<crate::bus::Record>,
    },
    /// Cannot be stored: S2 dead-letters it, the HTTP API answers 4xx.
    Rejected(Rejection),
}

/// Why a message was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// It is not a valid record (see [`Invalid`]).
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The store refused it (a constraint, a value it cannot hold), or the service it
    /// was handed to did (the products scheduler's API); their words.
    #[error("{0}")]
    Store(String),
}

/// The first 8 characters of an id and an ellipsis, for output lines.
pub fn short(id: &str) -> String {
    match id.char_indices().nth(8) {
        Some((i, _)) => format!("{}…", &id[..i]),
        None => id.to_string(),
    }
}

/// What a panic said, when it said it with a string (as `panic!` and `expect` do).
pub(crate) fn panic_words(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

/// What a system does with a batch of messages from one topic: the same code serves its
/// consumers and its HTTP writes.
#[async_trait::async_trait]
pub trait Handler: Send + Sync {
    /// Applies `payloads`, returning one outcome per payload, in order. A payload that is
    /// wrong is `Rejected` without affecting the others. `Err` means a store is unavailable
    /// or at fault: nothing was lost and the caller retries the batch, which must be safe
    /// (every write idempotent).
    async fn handle(&self, payloads: &[&[u8]]) -> StoreResult<Vec<Outcome>>;
}

/// Running totals the services keep, for progress bars and summaries.
#[derive(Debug, Default)]
pub struct Counters {
    /// Events S1 has published (and reported as sent).
    pub sent: AtomicU64,
    /// Messages S2 has stored.
    pub stored: AtomicU64,
    /// Messages S2 has dead-lettered.
    pub dead_lettered: AtomicU64,
    /// Messages S3 has appended to the audit log.
    pub logged: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// How long one poll waits for messages before checking for shutdown again.
const POLL_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// The next non-empty batch for a consumer loop, or `None` once `shutdown` is cancelled.
/// A bus that is unavailable is polled again after a pause, with a log line.
pub(crate) async fn next_batch(
    consumer: &mut dyn crate::bus::Consumer,
    max: usize,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<Option<Vec<crate::bus::Message>>, BusError> {
    loop {
        let polled = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            polled = consumer.poll(max, POLL_WAIT) => polled,
        };
        match polled {
            Ok(messages) if messages.is_empty() => {}
            Ok(messages) => return Ok(Some(messages)),
            Err(e) if bus_transient(&e) => {
                tracing::warn!("polling failed, retrying: {e}");
                tokio::time::sleep(POLL_WAIT).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Commits `offsets`, retrying while the bus is unavailable. `Ok(false)` means it stopped
/// for shutdown, or this member was fenced (another took over): either way the messages
/// will be redelivered, which the idempotent writes absorb.
pub(crate) async fn commit(
    consumer: &mut dyn crate::bus::Consumer,
    offsets: &std::collections::BTreeMap<crate::bus::TopicPartition, i64>,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<bool, BusError> {
    let mut backoff = crate::retry::Backoff::default();
    loop {
        match consumer.commit(offsets).await {
            Ok(()) => return Ok(true),
            Err(BusError::Fenced(why)) => {
                tracing::warn!("{why}");
                return Ok(false);
            }
            Err(e) if bus_transient(&e) => {
                if !backoff.wait("committing offsets", &e, shutdown).await {
                    return Ok(false);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// How a generator's rounds go out.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Rounds to send; `None` until stopped.
    pub count: Option<u64>,
    /// Events per second; 0 is flat out.
    pub rate: f64,
    /// Rounds per publish when flat out: enough to amortize a durable commit.
    pub rounds_per_publish: u64,
    /// Print one line per event.
    pub print: bool,
}

/// Runs a generator the way every S1 does: `round()` makes one round's records and their
/// log lines; at a set rate they go out one at a time, flat out many rounds per publish
/// (see [`send`]). `sent` is called with each record once the bus has it, and its place
/// among all the records sent (0, 1, …; round after round). Stops after
/// `pace.count` rounds or at `shutdown`.
pub async fn send_rounds(
    bus: &dyn crate::bus::Bus,
    pace: Pace,
    counters: &Counters,
    shutdown: &tokio_util::sync::CancellationToken,
    mut round: impl FnMut() -> Vec<(crate::bus::Record, String)>,
    mut sent: impl FnMut(usize, &crate::bus::Record),
) -> Result<(), ServiceError> {
    let interval = (pace.rate > 0.0).then(|| std::time::Duration::from_secs_f64(1.0 / pace.rate));
    let per_publish = if interval.is_some() {
        1
    } else {
        pace.rounds_per_publish.max(1)
    };
    let mut done = 0_u64;
    let mut place = 0_usize;
    while pace.count.is_none_or(|n| done < n) {
        let rounds = pace
            .count
            .map_or(per_publish, |n| (n - done).min(per_publish));
        done += rounds;
        let (records, lines): (Vec<crate::bus::Record>, Vec<String>) =
            (0..rounds).flat_map(|_| round()).unzip();
        let n = send(
            bus, &records, &lines, interval, pace.print, counters, shutdown,
        )
        .await?;
        for record in &records[..n] {
            sent(place, record);
            place += 1;
        }
        if n < records.len() {
            break;
        }
    }
    Ok(())
}

/// Publishes a generator's `records` (`lines[i]` saying what `records[i]` is) the way every S1 does:
/// one at a time every `interval` when paced, all in one publish otherwise (one durable
/// commit for many); retrying while the bus is unavailable; printing `[S1] Sent <line>`
/// once each is durable, when `print`. Returns how many were sent: fewer than all when
/// `shutdown` stopped it, and nothing is reported sent that the bus has not acknowledged.
async fn send(
    bus: &dyn crate::bus::Bus,
    records: &[crate::bus::Record],
    lines: &[String],
    interval: Option<std::time::Duration>,
    print: bool,
    counters: &Counters,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<usize, ServiceError> {
    let step = if interval.is_some() {
        1
    } else {
        records.len().max(1)
    };
    let mut sent = 0;
    for (group, group_lines) in records.chunks(step).zip(lines.chunks(step)) {
        if let Some(pause) = interval {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(sent),
                _ = tokio::time::sleep(pause) => {}
            }
        } else if shutdown.is_cancelled() {
            return Ok(sent);
        }
        let published =
            crate::retry::until_ok("publishing", shutdown, bus_transient, || bus.publish(group))
                .await?;
        if published.is_none() {
            return Ok(sent);
        }
        if print {
            for line in group_lines {
                println!("[S1] Sent {line}");
            }
        }
        Counters::add(&counters.sent, group.len());
        sent += group.len();
    }
    Ok(sent)
}

/// Whether a bus error may clear up on its own.
pub fn bus_transient(e: &BusError) -> bool {
    matches!(e, BusError::Unavailable(_))
}
