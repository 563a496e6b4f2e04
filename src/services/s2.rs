//! S2, the processor: runs every consumer the running systems declare. Each consumer
//! reads one topic in its own group and hands each batch to its system's [`Handler`].
//!
//! Per batch: the handler parses, validates and writes the valid messages (one round trip
//! per store), then the invalid ones are published to `<topic>.dlq` with the reason, and
//! only then are the offsets committed. A crash anywhere before the commit redelivers the
//! batch, and the idempotent writes make the second pass a no-op. Store outages (and
//! stores set up wrong) are retried with backoff, never skipped. Each consumer has its own
//! task, so one waiting (an order for its customer) never holds up another.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{
    Counters, Handler, Outcome, Rejection, ServiceError, bus_transient, panic_words, short,
};
use crate::bus::{
    Bus, BusError, Message, Position, Record, StartFrom, TopicPartition, next_offsets,
};
use crate::retry;
use crate::store::StoreError;
use crate::wire::Invalid;

/// The consumer group of S2's consumer of `topic` (the system's name, unprefixed):
/// `<group>.<topic>`.
///
/// One group per topic, not one for all: a batch may wait (an order for its customer: the
/// reference grace, then until the customers' group has caught up), and a group member
/// that is not polling holds up every rebalance of its group. With a group per topic, no
/// consumer is stuck behind another, and the one waited for is never held up by the
/// waiting one.
pub fn group_of(group: &str, topic: &str) -> String {
    format!("{group}.{topic}")
}

/// One consumer a system runs in S2.
#[derive(Clone)]
pub struct ConsumerSpec {
    /// The topic's name in this deployment (prefixed).
    pub topic: String,
    /// The consumer group.
    pub group: String,
    /// What one message is, for output lines (`customer`).
    pub noun: &'static str,
    /// Where it is stored, for output lines (`relational store (sqlite)`).
    pub place: String,
    /// What to do with each batch.
    pub handler: Arc<dyn Handler>,
    /// Where rejected messages go, with the reason in headers: `<topic>.dlq`
    /// ([`crate::bus::dlq_topic`]) unless the system's wire contract names another topic.
    pub dead_letters: String,
    /// The topics this consumer's messages refer to (an order to its customer), each with
    /// the group that stores it. A message the handler rejects as an
    /// [`Invalid::UnknownReference`] is handled again until the reference grace has
    /// passed *and* these groups have stored everything published on their topics by
    /// then: only a reference still unknown after that is dead-lettered.
    pub refers_to: Vec<Referenced>,
}

/// A topic that another consumer's messages refer to, and the group that stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referenced {
    /// The topic's name in this deployment (prefixed).
    pub topic: String,
    /// The consumer group that stores it.
    pub group: String,
}

/// Messages on the consumers' topics that their groups have not committed yet.
pub async fn lag(bus: &dyn Bus, consumers: &[ConsumerSpec]) -> Result<i64, crate::bus::BusError> {
    let mut total = 0;
    for c in consumers {
        total += bus.lag(&c.group, std::slice::from_ref(&c.topic)).await?;
    }
    Ok(total)
}

/// S2's settings.
#[derive(Debug, Clone)]
pub struct S2Config {
    /// Consumer group.
    pub group: String,
    /// Most messages per batch (and per store round trip).
    pub batch_size: usize,
    /// How long a message rejected for an unknown reference (an order for its customer
    /// and book) is handled again before the rejection can be final.
    pub reference_grace: Duration,
    /// Print one line per event.
    pub print_events: bool,
}

impl Default for S2Config {
    fn default() -> Self {
        Self {
            group: super::S2_GROUP.into(),
            batch_size: 1000,
            reference_grace: Duration::from_secs(10),
            print_events: true,
        }
    }
}

/// Runs S2 until `shutdown` is cancelled: one task per consumer.
pub async fn run(
    bus: Arc<dyn Bus>,
    consumers: Vec<ConsumerSpec>,
    config: S2Config,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let mut tasks = tokio::task::JoinSet::new();
    for spec in consumers {
        tasks.spawn(consume(
            bus.clone(),
            spec,
            config.clone(),
            counters.clone(),
            shutdown.clone(),
        ));
    }
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        let outcome = joined.unwrap_or_else(|e| panic!("S2 task panicked: {e}"));
        if let Err(e) = outcome {
            // One consumer failing for good stops the service: a partial processor would
            // silently let one kind of data pile up.
            shutdown.cancel();
            result = result.and(Err(e));
        }
    }
    result
}

async fn consume(
    bus: Arc<dyn Bus>,
    spec: ConsumerSpec,
    config: S2Config,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let topic = &spec.topic;
    let dlq = &spec.dead_letters;
    let mut consumer = bus
        .subscribe(
            &spec.group,
            std::slice::from_ref(topic),
            StartFrom::Earliest,
        )
        .await?;
    let mut lag = crate::metrics::LagGauge::new(&spec.group, std::slice::from_ref(topic), topic);
    // The next batch, when it was already waiting on the bus while this one was stored.
    let mut ready: Option<Vec<Message>> = None;
    loop {
        let messages = match ready.take() {
            Some(messages) => messages,
            None => match super::next_batch(&mut *consumer, config.batch_size, &shutdown).await? {
                Some(messages) => messages,
                None => break,
            },
        };
        // Reading the bus overlaps the store's write: only what is already there is taken,
        // so an idle topic never holds this batch's commit back. Nothing of it is committed
        // before it has been stored in turn.
        let (stored, prefetched) = tokio::join!(
            store_batch(&*bus, &spec, config.reference_grace, &messages, &shutdown),
            consumer.poll(config.batch_size, Duration::ZERO)
        );
        let Some((outcomes, rejected)) = stored? else {
            break;
        };
        ready = prefetched.ok().filter(|m| !m.is_empty());

        if !super::commit(&mut *consumer, &next_offsets(&messages), &shutdown).await?
            && shutdown.is_cancelled()
        {
            break;
        }

        Counters::add(&counters.stored, messages.len() - rejected);
        Counters::add(&counters.dead_lettered, rejected);
        crate::metrics::consumed("s2", topic, messages.len());
        crate::metrics::dead_lettered(topic, dlq, rejected);
        lag.update(&*bus).await;
        if config.print_events {
            for (m, o) in messages.iter().zip(&outcomes) {
                match o {
                    Outcome::Stored { id, label, .. } => println!(
                        "[S2] Stored {} {} ({label}) in {}",
                        spec.noun,
                        short(id),
                        spec.place
                    ),
                    Outcome::Rejected(reason) => println!(
                        "[S2] Dead-lettered {}[{}]@{} to {dlq}: {reason}",
                        m.topic, m.partition, m.offset
                    ),
                }
            }
        }
    }
    consumer.close().await?;
    Ok(())
}

/// Stores one batch by `spec`'s handler, then publishes its replies and dead letters:
/// each message's outcome and how many were rejected, once all of it is durable; `None`
/// when it stopped for shutdown.
async fn store_batch(
    bus: &dyn Bus,
    spec: &ConsumerSpec,
    grace: Duration,
    messages: &[Message],
    shutdown: &CancellationToken,
) -> Result<Option<(Vec<Outcome>, usize)>, ServiceError> {
    let topic = &spec.topic;
    let payloads: Vec<&[u8]> = messages.iter().map(|m| m.payload.as_slice()).collect();
    let batch_started = std::time::SystemTime::now();
    let Some(outcomes) = handle_until_stored(spec, &payloads, shutdown).await? else {
        return Ok(None);
    };
    let Some(outcomes) = settle_references(bus, spec, grace, &payloads, outcomes, shutdown).await?
    else {
        return Ok(None);
    };

    let dead: Vec<Record> = messages
        .iter()
        .zip(&outcomes)
        .filter_map(|(m, o)| match o {
            Outcome::Rejected(reason) => {
                Some(dead_letter(m, &reason.to_string(), &spec.dead_letters))
            }
            Outcome::Stored { .. } => None,
        })
        .collect();
    // Replies and dead letters are durable on the bus before the offset moves on.
    let rejected = dead.len();
    let mut outgoing = dead;
    for (m, o) in messages.iter().zip(&outcomes) {
        let span = crate::trace::consumed(&m.topic, &m.headers, batch_started);
        if let Outcome::Stored { out, .. } = o {
            // A reply belongs to the trace of the message it answers.
            outgoing.extend(out.iter().cloned().map(|mut r| {
                if let Some(span) = &span {
                    crate::trace::propagate(span, &mut r);
                }
                r
            }));
        }
    }
    if !outgoing.is_empty() {
        let published = retry::until_ok(
            &format!("publishing replies and dead letters of `{topic}`"),
            shutdown,
            bus_transient,
            || bus.publish(&outgoing),
        )
        .await?;
        if published.is_none() {
            return Ok(None);
        }
    }
    Ok(Some((outcomes, rejected)))
}

/// How often a message waiting for what it refers to is handled again.
const REFERENCE_RECHECK: Duration = Duration::from_millis(50);
/// How often, after the grace, the referenced groups' progress is read.
const PROGRESS_RECHECK: Duration = Duration::from_millis(250);

fn unknown_reference(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Rejected(Rejection::Invalid(Invalid::UnknownReference { .. }))
    )
}

/// Gives the messages of a batch rejected for an unknown reference time for it to be
/// stored: they are handled again, alone, until `grace` has passed, and then until the
/// groups of `spec.refers_to` have stored everything published on their topics by then.
/// So a reference whose consumer was merely behind (starting, rebalancing, catching up
/// after an outage) is never dead-lettered for it, in one process or many; one still
/// unknown after both is. `None` when stopped for shutdown.
async fn settle_references(
    bus: &dyn Bus,
    spec: &ConsumerSpec,
    grace: Duration,
    payloads: &[&[u8]],
    mut outcomes: Vec<Outcome>,
    shutdown: &CancellationToken,
) -> Result<Option<Vec<Outcome>>, ServiceError> {
    let deadline = Instant::now() + grace;
    loop {
        let now = Instant::now();
        if !outcomes.iter().any(unknown_reference) || now >= deadline {
            break;
        }
        if !retry::sleep(REFERENCE_RECHECK.min(deadline - now), shutdown).await
            || !handle_again(spec, payloads, &mut outcomes, shutdown).await?
        {
            return Ok(None);
        }
    }
    if spec.refers_to.is_empty() || !outcomes.iter().any(unknown_reference) {
        return Ok(Some(outcomes));
    }

    let read = || positions(bus, &spec.refers_to);
    let what = format!("reading the progress of what `{}` refers to", spec.topic);
    let Some(ends) = retry::until_ok(&what, shutdown, bus_transient, read).await? else {
        return Ok(None);
    };
    // The first reading's commits count too: a group already there is not waited for.
    let mut now = ends.clone();
    let mut told = false;
    loop {
        let behind: Vec<String> = spec
            .refers_to
            .iter()
            .filter_map(|r| {
                let n: i64 = ends
                    .iter()
                    .filter(|((topic, _), _)| *topic == r.topic)
                    .map(|(tp, then)| {
                        let committed = now.get(tp).map_or(0, |p| p.committed);
                        // The lag behind the end as it was then, not as it is now.
                        Position {
                            end: then.end,
                            committed,
                        }
                        .lag()
                    })
                    .sum();
                (n > 0).then(|| format!("`{}` ({n} to go)", r.topic))
            })
            .collect();
        if behind.is_empty() {
            break;
        }
        if !told {
            told = true;
            tracing::info!(
                topic = %spec.topic,
                "messages refer to what is not stored yet; waiting for {} to be stored up to \
                 where it was when the grace ran out",
                behind.join(", ")
            );
        }
        if !retry::sleep(PROGRESS_RECHECK, shutdown).await
            || !handle_again(spec, payloads, &mut outcomes, shutdown).await?
        {
            return Ok(None);
        }
        if !outcomes.iter().any(unknown_reference) {
            return Ok(Some(outcomes));
        }
        let Some(read) = retry::until_ok(&what, shutdown, bus_transient, read).await? else {
            return Ok(None);
        };
        now = read;
    }
    // Everything that was published before it is stored now: one last look is final.
    if !handle_again(spec, payloads, &mut outcomes, shutdown).await? {
        return Ok(None);
    }
    Ok(Some(outcomes))
}

/// Where the partitions of `refers_to` stand, each for the group that stores it.
async fn positions(
    bus: &dyn Bus,
    refers_to: &[Referenced],
) -> Result<BTreeMap<TopicPartition, Position>, BusError> {
    let mut out = BTreeMap::new();
    for r in refers_to {
        out.extend(
            bus.positions(&r.group, std::slice::from_ref(&r.topic))
                .await?,
        );
    }
    Ok(out)
}

/// Handles the messages rejected for an unknown reference again, alone, and puts their
/// new outcomes in place; false when stopped for shutdown.
///
/// The rest of the batch was written while they waited. So when one of them is stored
/// now, a later message of its batch that stored the same record (a newer version of
/// the order) is handled again after it, and the newer version is the one that stays.
async fn handle_again(
    spec: &ConsumerSpec,
    payloads: &[&[u8]],
    outcomes: &mut [Outcome],
    shutdown: &CancellationToken,
) -> Result<bool, ServiceError> {
    let waiting: Vec<usize> = (0..outcomes.len())
        .filter(|i| unknown_reference(&outcomes[*i]))
        .collect();
    if !handle_these(spec, payloads, outcomes, &waiting, shutdown).await? {
        return Ok(false);
    }
    let overtaken = overtaken(outcomes, &waiting);
    if overtaken.is_empty() {
        return Ok(true);
    }
    handle_these(spec, payloads, outcomes, &overtaken, shutdown).await
}

/// Handles the messages at `indices` (in their order) and puts their outcomes in place;
/// false when stopped for shutdown.
async fn handle_these(
    spec: &ConsumerSpec,
    payloads: &[&[u8]],
    outcomes: &mut [Outcome],
    indices: &[usize],
    shutdown: &CancellationToken,
) -> Result<bool, ServiceError> {
    let again: Vec<&[u8]> = indices.iter().map(|i| payloads[*i]).collect();
    let Some(handled) = handle_until_stored(spec, &again, shutdown).await? else {
        return Ok(false);
    };
    for (i, outcome) in indices.iter().zip(handled) {
        outcomes[*i] = outcome;
    }
    Ok(true)
}

/// The messages stored as the same record as one of `rewritten` but later in the batch,
/// in order: a message's `Stored` id names the record it writes, so these were newer
/// versions that the rewrite overtook. Empty unless one batch holds two versions of a
/// record, which is rare; nothing is written twice on the common path.
fn overtaken(outcomes: &[Outcome], rewritten: &[usize]) -> Vec<usize> {
    let mut first: HashMap<&str, usize> = HashMap::new();
    for &i in rewritten {
        if let Outcome::Stored { id, .. } = &outcomes[i] {
            first.entry(id.as_str()).or_insert(i);
        }
    }
    if first.is_empty() {
        return Vec::new();
    }
    (0..outcomes.len())
        .filter(|j| match &outcomes[*j] {
            Outcome::Stored { id, .. } => first.get(id.as_str()).is_some_and(|i| j > i),
            Outcome::Rejected(_) => false,
        })
        .collect()
}

/// `spec`'s handler's outcomes for `payloads`, retried with backoff while a store is
/// unavailable; `None` when stopped for shutdown.
async fn handle_until_stored(
    spec: &ConsumerSpec,
    payloads: &[&[u8]],
    shutdown: &CancellationToken,
) -> Result<Option<Vec<Outcome>>, StoreError> {
    let topic = &spec.topic;
    retry::until_ok(
        &format!("storing a batch from `{topic}`"),
        shutdown,
        StoreError::is_retryable,
        || handle(&*spec.handler, topic, payloads),
    )
    .await
}

/// `handler`'s outcomes for `payloads`. A batch that panics (a bug, on some message) is
/// handled again one message at a time, and a message that panics alone is rejected with
/// the panic's words, so that it is dead-lettered and the consumer goes on: a panic that
/// stopped S2 would stop it again on the same message after every restart.
async fn handle(
    handler: &dyn Handler,
    topic: &str,
    payloads: &[&[u8]],
) -> crate::store::StoreResult<Vec<Outcome>> {
    use futures::FutureExt;
    use std::panic::AssertUnwindSafe;
    let panic = match AssertUnwindSafe(handler.handle(payloads))
        .catch_unwind()
        .await
    {
        Ok(outcomes) => return outcomes,
        Err(panic) => panic,
    };
    tracing::error!(
        topic,
        "a batch of {} panicked ({}); handling it one message at a time",
        payloads.len(),
        panic_words(&*panic)
    );
    let mut outcomes = Vec::with_capacity(payloads.len());
    for payload in payloads {
        match AssertUnwindSafe(handler.handle(std::slice::from_ref(payload)))
            .catch_unwind()
            .await
        {
            Ok(outcome) => outcomes.extend(outcome?),
            Err(panic) => outcomes.push(Outcome::Rejected(Rejection::Store(format!(
                "a bug: handling this message panicked: {}",
                panic_words(&*panic)
            )))),
        }
    }
    Ok(outcomes)
}

/// The dead-letter record for `m`: the original bytes, key and headers untouched, plus
/// headers saying why and where it came from (Kafka Connect's convention).
pub fn dead_letter(m: &Message, reason: &str, dlq: &str) -> Record {
    let mut headers = m.headers.clone();
    headers.extend([
        ("dlq.reason".to_string(), reason.to_string()),
        ("dlq.topic".to_string(), m.topic.clone()),
        ("dlq.partition".to_string(), m.partition.to_string()),
        ("dlq.offset".to_string(), m.offset.to_string()),
        ("dlq.service".to_string(), "livros-s2".to_string()),
    ]);
    Record {
        topic: dlq.to_string(),
        key: m.key.clone(),
        headers,
        payload: m.payload.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::embedded::EmbeddedBus;
    use std::collections::HashSet;
    use std::sync::Mutex;

    /// Stores every payload it is handed, and panics on `boom`.
    #[derive(Default)]
    struct PanicsOnBoom(Mutex<Vec<String>>);

    #[async_trait::async_trait]
    impl Handler for PanicsOnBoom {
        async fn handle(&self, payloads: &[&[u8]]) -> crate::store::StoreResult<Vec<Outcome>> {
            let texts: Vec<String> = payloads
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            assert!(!texts.iter().any(|t| t == "boom"), "boom is not a record");
            self.0.lock().unwrap().extend(texts.iter().cloned());
            Ok(texts
                .into_iter()
                .map(|id| Outcome::Stored {
                    label: id.clone(),
                    id,
                    out: Vec::new(),
                })
                .collect())
        }
    }

    /// S2 running one consumer on an embedded bus, and a reader of its dead letters.
    struct Running {
        bus: Arc<EmbeddedBus>,
        s2: tokio::task::JoinHandle<Result<(), ServiceError>>,
        counters: Arc<Counters>,
        shutdown: CancellationToken,
        dlq: Box<dyn crate::bus::Consumer>,
        _dir: tempfile::TempDir,
    }

    /// Publishes `records` (topic, payload) on a new embedded bus, then runs S2 with the
    /// consumer `spec` of topic `t` (dead letters to `t.dlq`) and a reference grace of
    /// `grace`.
    async fn start(records: &[(&str, &str)], spec: ConsumerSpec, grace: Duration) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let bus = Arc::new(EmbeddedBus::open(dir.path()).await.unwrap());
        let mut topics = vec!["t".to_string(), "t.dlq".to_string()];
        topics.extend(records.iter().map(|(topic, _)| topic.to_string()));
        topics.sort();
        topics.dedup();
        bus.ensure_topics(&topics, 1).await.unwrap();
        let records: Vec<Record> = records
            .iter()
            .map(|(topic, payload)| Record {
                topic: topic.to_string(),
                key: None,
                headers: Vec::new(),
                payload: payload.as_bytes().to_vec(),
            })
            .collect();
        bus.publish(&records).await.unwrap();
        let config = S2Config {
            print_events: false,
            reference_grace: grace,
            ..S2Config::default()
        };
        let counters = Arc::new(Counters::default());
        let shutdown = CancellationToken::new();
        let s2 = tokio::spawn(run(
            bus.clone(),
            vec![spec],
            config,
            counters.clone(),
            shutdown.clone(),
        ));
        let dlq = bus
            .subscribe("inspector", &["t.dlq".into()], StartFrom::Earliest)
            .await
            .unwrap();
        Running {
            bus,
            s2,
            counters,
            shutdown,
            dlq,
            _dir: dir,
        }
    }

    /// Polls `done` until it holds, for ten seconds at most; panics with `what` then.
    async fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for: {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The consumer of `t` in group `g.t`, by `handler`.
    fn spec(handler: Arc<dyn Handler>, refers_to: Vec<Referenced>) -> ConsumerSpec {
        ConsumerSpec {
            topic: "t".into(),
            group: "g.t".into(),
            noun: "thing",
            place: "memory".into(),
            handler,
            dead_letters: "t.dlq".into(),
            refers_to,
        }
    }

    #[tokio::test]
    async fn a_message_that_makes_the_handler_panic_is_dead_lettered_and_the_rest_stored() {
        let handler = Arc::new(PanicsOnBoom::default());
        let mut s2 = start(
            &[("t", "a"), ("t", "boom"), ("t", "b")],
            spec(handler.clone(), Vec::new()),
            Duration::from_secs(10),
        )
        .await;
        let letters = s2.dlq.poll(10, Duration::from_secs(10)).await.unwrap();
        assert_eq!(letters.len(), 1, "one dead letter");
        assert_eq!(letters[0].payload, b"boom");
        let reason = letters[0].header("dlq.reason").unwrap_or_default();
        assert!(
            reason.contains("panicked: boom is not a record"),
            "{reason}"
        );

        eventually("a and b stored", || {
            Counters::get(&s2.counters.stored) >= 2 || s2.s2.is_finished()
        })
        .await;
        s2.shutdown.cancel();
        s2.s2.await.expect("S2 went on").unwrap();
        assert_eq!(*handler.0.lock().unwrap(), ["a", "b"]);
        assert_eq!(Counters::get(&s2.counters.dead_lettered), 1);
    }

    /// Stores `<child> of <parent>` (as record `<child>`) once `<parent>` is among its
    /// parents, and rejects it as an unknown reference until then.
    #[derive(Default)]
    struct Children {
        parents: Mutex<HashSet<String>>,
        /// Every write, in order.
        stored: Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl Handler for Children {
        async fn handle(&self, payloads: &[&[u8]]) -> crate::store::StoreResult<Vec<Outcome>> {
            let parents = self.parents.lock().unwrap();
            Ok(payloads
                .iter()
                .map(|p| {
                    let text = String::from_utf8_lossy(p).into_owned();
                    let (child, parent) = text.split_once(" of ").expect("<child> of <parent>");
                    if !parents.contains(parent) {
                        return Outcome::Rejected(Rejection::Invalid(Invalid::UnknownReference {
                            kind: "parent",
                            id: parent.to_string(),
                        }));
                    }
                    self.stored.lock().unwrap().push(text.clone());
                    Outcome::Stored {
                        id: child.to_string(),
                        label: text.clone(),
                        out: Vec::new(),
                    }
                })
                .collect())
        }
    }

    /// A reference whose own consumer is behind (here: has not stored its topic at all) is
    /// waited for past the grace, however long that takes; once that consumer has stored
    /// everything published, a reference still unknown is dead-lettered.
    #[tokio::test]
    async fn an_unknown_reference_waits_for_its_topic_s_consumer_then_is_dead_lettered() {
        let handler = Arc::new(Children::default());
        let parents = Referenced {
            topic: "parents".into(),
            group: "g.parents".into(),
        };
        let mut s2 = start(
            &[("parents", "p1"), ("t", "c1 of p1"), ("t", "c2 of ghost")],
            spec(handler.clone(), vec![parents]),
            Duration::from_millis(100),
        )
        .await;
        // Ten graces on, the parents' consumer has stored nothing: nothing is final.
        let early = s2.dlq.poll(10, Duration::from_secs(1)).await.unwrap();
        assert!(early.is_empty(), "dead-lettered while `parents` was behind");
        assert_eq!(Counters::get(&s2.counters.stored), 0);

        // The parents' consumer stores p1 and commits.
        handler.parents.lock().unwrap().insert("p1".into());
        let mut parents = s2
            .bus
            .subscribe("g.parents", &["parents".into()], StartFrom::Earliest)
            .await
            .unwrap();
        let p = parents.poll(10, Duration::from_secs(10)).await.unwrap();
        parents.commit(&next_offsets(&p)).await.unwrap();

        let letters = s2.dlq.poll(10, Duration::from_secs(10)).await.unwrap();
        assert_eq!(letters.len(), 1, "one dead letter");
        assert_eq!(letters[0].payload, b"c2 of ghost");
        let reason = letters[0].header("dlq.reason").unwrap_or_default();
        assert_eq!(reason, "unknown parent `ghost`, referred to but not stored");
        s2.shutdown.cancel();
        s2.s2.await.expect("S2 went on").unwrap();
        assert_eq!(*handler.stored.lock().unwrap(), ["c1 of p1"]);
        assert_eq!(Counters::get(&s2.counters.stored), 1);
        assert_eq!(Counters::get(&s2.counters.dead_lettered), 1);
    }

    /// One batch holds two versions of record `c`: the first waits for its parent, the
    /// second is stored at once. When the first is stored at last, the second is written
    /// again after it, so the newer version is the one that stays.
    #[tokio::test]
    async fn a_newer_version_stored_while_an_older_one_waited_is_written_again_after_it() {
        let handler = Arc::new(Children::default());
        handler.parents.lock().unwrap().insert("p2".into());
        let mut s2 = start(
            &[("t", "c of p1"), ("t", "c of p2"), ("t", "d of p2")],
            spec(handler.clone(), Vec::new()),
            Duration::from_secs(30),
        )
        .await;
        eventually("the batch's first writes", || {
            handler.stored.lock().unwrap().len() >= 2
        })
        .await;
        handler.parents.lock().unwrap().insert("p1".into());
        eventually("the whole batch stored", || {
            Counters::get(&s2.counters.stored) >= 3
        })
        .await;
        s2.shutdown.cancel();
        s2.s2.await.expect("S2 went on").unwrap();
        assert_eq!(
            *handler.stored.lock().unwrap(),
            ["c of p2", "d of p2", "c of p1", "c of p2"],
            "the newer version of `c` is written last, and `d` once"
        );
        assert!(s2.dlq.poll(10, Duration::ZERO).await.unwrap().is_empty());
    }
}
