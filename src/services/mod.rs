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
        /// Entity id: two messages stored with the same id wrote the same record (S2
        /// writes a later one again after an earlier one that waited for a reference).
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

/// When paced records are due: the `n`th (from 0) at `start + (n + 1) / rate`, so a set
/// rate holds whatever each send takes. (A pause before each send instead adds the send's
/// own time to every interval: `--rate 300` sent about 100 events/s a system, fewer the
/// busier the machine.)
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    start: tokio::time::Instant,
    rate: f64,
}

impl Schedule {
    /// A schedule of `rate` records a second from now; `None` for 0 (flat out).
    pub fn new(rate: f64) -> Option<Self> {
        (rate > 0.0).then(|| Self {
            start: tokio::time::Instant::now(),
            rate,
        })
    }

    /// When the `n`th record is due.
    pub fn at(&self, n: u64) -> tokio::time::Instant {
        self.start + std::time::Duration::from_secs_f64((n + 1) as f64 / self.rate)
    }

    /// How many records are due by now, counting from the first.
    pub fn due_by_now(&self) -> u64 {
        (self.start.elapsed().as_secs_f64() * self.rate) as u64
    }

    /// Waits until the `n`th record is due; false if `shutdown` came first.
    pub async fn wait_for(&self, n: u64, shutdown: &tokio_util::sync::CancellationToken) -> bool {
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep_until(self.at(n)) => true,
        }
    }
}

/// Runs a generator the way every S1 does: `round()` makes one round's records and their
/// log lines. At a set rate each record goes out when its [`Schedule`] says, alone, or
/// with the others due by then if the bus fell behind (at most `rounds_per_publish`
/// rounds' worth a publish), so the rate holds; flat out, `rounds_per_publish` rounds a
/// publish (see [`send`]). `sent` is called with each record once the bus has it, and its
/// place among all the records sent (0, 1, …; round after round). Stops after
/// `pace.count` rounds or at `shutdown`.
pub async fn send_rounds(
    bus: &dyn crate::bus::Bus,
    pace: Pace,
    counters: &Counters,
    shutdown: &tokio_util::sync::CancellationToken,
    mut round: impl FnMut() -> Vec<(crate::bus::Record, String)>,
    mut sent: impl FnMut(usize, &crate::bus::Record),
) -> Result<(), ServiceError> {
    let schedule = Schedule::new(pace.rate);
    let per_publish = pace.rounds_per_publish.max(1);
    // Records made and not sent yet: a round's records may be due apart.
    let mut queue = std::collections::VecDeque::new();
    let mut made = 0_u64;
    let mut place = 0_usize;
    loop {
        // How many records to send now: at a set rate, the next one once it is due and
        // any others due by then; flat out, all that `per_publish` rounds make.
        let due = match &schedule {
            Some(schedule) => {
                if !schedule.wait_for(place as u64, shutdown).await {
                    break;
                }
                schedule.due_by_now().saturating_sub(place as u64).max(1) as usize
            }
            None => usize::MAX,
        };
        let mut new_rounds = 0;
        while queue.len() < due && new_rounds < per_publish && pace.count.is_none_or(|n| made < n) {
            queue.extend(round());
            made += 1;
            new_rounds += 1;
        }
        if queue.is_empty() {
            break;
        }
        let (records, lines): (Vec<crate::bus::Record>, Vec<String>) =
            queue.drain(..due.min(queue.len())).unzip();
        let n = send(bus, &records, &lines, pace.print, counters, shutdown).await?;
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

/// Publishes a generator's `records` (`lines[i]` saying what `records[i]` is) the way every
/// S1 does: in one publish (one durable commit for all); retrying while the bus is
/// unavailable; printing `[S1] Sent <line>` once each is durable, when `print`. Returns how
/// many were sent: none when `shutdown` stopped it, and nothing is reported sent that the
/// bus has not acknowledged.
async fn send(
    bus: &dyn crate::bus::Bus,
    records: &[crate::bus::Record],
    lines: &[String],
    print: bool,
    counters: &Counters,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<usize, ServiceError> {
    if records.is_empty() || shutdown.is_cancelled() {
        return Ok(0);
    }
    let published = crate::retry::until_ok("publishing", shutdown, bus_transient, || {
        bus.publish(records)
    })
    .await?;
    if published.is_none() {
        return Ok(0);
    }
    if print {
        for line in lines {
            println!("[S1] Sent {line}");
        }
    }
    Counters::add(&counters.sent, records.len());
    Ok(records.len())
}

/// Whether a bus error may clear up on its own.
pub fn bus_transient(e: &BusError) -> bool {
    matches!(e, BusError::Unavailable(_))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::time::Duration;

    use async_trait::async_trait;

    use super::*;
    use crate::bus::{
        Bus, BusResult, Consumer, Position, Record, StartFrom, TopicPartition, TopicStats,
    };

    /// A bus whose every publish takes `delay` (in tokio's clock: a busy machine's bus, in
    /// a test whose clock is paused) and keeps what it was given, publish by publish. Not
    /// a real bus: the real ones' own I/O and background timers would move a paused clock
    /// on by themselves, and what is tested here is the pacing in front of any bus.
    struct Slow {
        delay: Duration,
        publishes: Mutex<Vec<Vec<Vec<u8>>>>,
    }

    impl Slow {
        fn new(delay: Duration) -> Self {
            Self {
                delay,
                publishes: Mutex::default(),
            }
        }
    }

    /// A record of topic `t` and its (empty) log line.
    fn record(payload: Vec<u8>) -> (Record, String) {
        let record = Record {
            topic: "t".into(),
            key: None,
            headers: vec![],
            payload,
        };
        (record, String::new())
    }

    #[async_trait]
    impl Bus for Slow {
        async fn ensure_topics(&self, _: &[String], _: i32) -> BusResult<()> {
            Ok(())
        }
        async fn publish(&self, records: &[Record]) -> BusResult<Vec<(i32, i64)>> {
            tokio::time::sleep(self.delay).await;
            let mut publishes = self.publishes.lock().unwrap();
            publishes.push(records.iter().map(|r| r.payload.clone()).collect());
            Ok(records.iter().map(|_| (0, 0)).collect())
        }
        async fn subscribe(
            &self,
            _: &str,
            _: &[String],
            _: StartFrom,
        ) -> BusResult<Box<dyn Consumer>> {
            unreachable!("the pacing tests only publish")
        }
        async fn stats(
            &self,
            _: &[String],
            _: &[String],
        ) -> BusResult<BTreeMap<String, TopicStats>> {
            unreachable!("the pacing tests only publish")
        }
        async fn positions(
            &self,
            _: &str,
            _: &[String],
        ) -> BusResult<BTreeMap<TopicPartition, Position>> {
            unreachable!("the pacing tests only publish")
        }
        fn describe(&self) -> String {
            "slow".into()
        }
    }

    /// At a set rate the records go out on their schedule however long each publish
    /// takes: 300 records at 100/s, each publish 25 ms (two and a half intervals), take
    /// 3 s, not the 10.5 s of a pause before each; the ones that fell due during a publish
    /// go out together in the next, and every record is published once, in order.
    #[tokio::test(start_paused = true)]
    async fn a_set_rate_holds_when_publishing_is_slower_than_the_interval() {
        let bus = Slow::new(Duration::from_millis(25));
        let pace = Pace {
            count: Some(100),
            rate: 100.0,
            rounds_per_publish: 1000,
            print: false,
        };
        let mut made = 0;
        // A round of three records, like the bookstore's.
        let round = || {
            (0..3)
                .map(|_| {
                    made += 1;
                    record(made.to_string().into_bytes())
                })
                .collect()
        };
        let mut places = Vec::new();
        let started = tokio::time::Instant::now();
        send_rounds(
            &bus,
            pace,
            &Counters::default(),
            &tokio_util::sync::CancellationToken::new(),
            round,
            |place, _| places.push(place),
        )
        .await
        .unwrap();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(3) && took <= Duration::from_millis(3050),
            "300 records at 100/s took {took:?}"
        );
        assert_eq!(places, (0..300).collect::<Vec<_>>());
        let publishes = bus.publishes.into_inner().unwrap();
        assert!(
            (100..=130).contains(&publishes.len()),
            "{} publishes: each should take the ~3 records due since the last",
            publishes.len()
        );
        let expected: Vec<Vec<u8>> = (1..=300).map(|n: i32| n.to_string().into_bytes()).collect();
        assert_eq!(publishes.concat(), expected);
    }

    /// Flat out, rounds go `rounds_per_publish` at a time, the last publish taking what
    /// is left of the count.
    #[tokio::test(start_paused = true)]
    async fn flat_out_rounds_go_many_a_publish() {
        let bus = Slow::new(Duration::from_millis(25));
        let pace = Pace {
            count: Some(25),
            rate: 0.0,
            rounds_per_publish: 10,
            print: false,
        };
        let round = || vec![record(vec![]), record(vec![])];
        let token = tokio_util::sync::CancellationToken::new();
        send_rounds(&bus, pace, &Counters::default(), &token, round, |_, _| {})
            .await
            .unwrap();
        let sizes: Vec<usize> = bus
            .publishes
            .into_inner()
            .unwrap()
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, [20, 20, 10]);
    }

    /// A schedule's arithmetic: the `n`th record at `(n + 1) / rate`, and as many due as
    /// whole intervals have passed.
    #[tokio::test(start_paused = true)]
    async fn a_schedule_spaces_records_by_the_rate() {
        let schedule = Schedule::new(4.0).unwrap();
        assert!(Schedule::new(0.0).is_none());
        let start = tokio::time::Instant::now();
        assert_eq!(schedule.at(0) - start, Duration::from_millis(250));
        assert_eq!(schedule.at(7) - start, Duration::from_secs(2));
        assert_eq!(schedule.due_by_now(), 0);
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert_eq!(schedule.due_by_now(), 4);
    }
}
