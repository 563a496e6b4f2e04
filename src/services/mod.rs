//! The three services of the bookstore pipeline. Each runs as a task until its shutdown
//! token is cancelled; `livros up` runs them together, `livros s1|s2|s3` one per process.
//!
//! - [`s1`]: generates customers, books and orders and publishes them;
//!   [`s1_http`] posts them to S2's HTTP API instead (seed 2).
//! - [`s2`]: consumes the entity topics and stores each entity where [`crate::routing`] says.
//! - [`s3`]: consumes every topic and appends each message to the audit log.

pub mod s1;
pub mod s1_http;
pub mod s2;
pub mod s3;

/// Consumer group of S2, unless configured otherwise.
pub const S2_GROUP: &str = "livros-s2";
/// Consumer group of S3, unless configured otherwise.
pub const S3_GROUP: &str = "livros-s3";

use std::sync::atomic::{AtomicU64, Ordering};

use crate::bus::BusError;
use crate::store::StoreError;

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

/// Whether a bus error may clear up on its own.
pub fn bus_transient(e: &BusError) -> bool {
    matches!(e, BusError::Unavailable(_))
}
