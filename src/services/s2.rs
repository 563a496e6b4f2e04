//! S2, the processor: runs every consumer the running systems declare. Each consumer
//! reads one topic in its own group and hands each batch to its system's [`Handler`].
//!
//! Per batch: the handler parses, validates and writes the valid messages (one round trip
//! per store), then the invalid ones are published to `<topic>.dlq` with the reason, and
//! only then are the offsets committed. A crash anywhere before the commit redelivers the
//! batch, and the idempotent writes make the second pass a no-op. Store outages (and
//! stores set up wrong) are retried with backoff, never skipped. Each consumer has its own
//! task, so one waiting (an order for its customer) never holds up another.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{
    Counters, Handler, Outcome, Rejection, ServiceError, bus_transient, panic_words, short,
};
use crate::bus::{Bus, Message, Record, StartFrom, next_offsets};
use crate::retry;
use crate::store::StoreError;

/// The consumer group of S2's consumer of `topic` (the system's name, unprefixed):
/// `<group>.<topic>`.
///
/// One group per topic, not one for all: a batch may wait (an order for its customer, up
/// to the reference grace), and a group member that is not polling holds up every
/// rebalance of its group. With a group per topic, no consumer is stuck behind another.
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
    /// How long an order may wait for its customer and book to be stored.
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
            store_batch(&*bus, &spec, &messages, &shutdown),
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
    messages: &[Message],
    shutdown: &CancellationToken,
) -> Result<Option<(Vec<Outcome>, usize)>, ServiceError> {
    let topic = &spec.topic;
    let payloads: Vec<&[u8]> = messages.iter().map(|m| m.payload.as_slice()).collect();
    let batch_started = std::time::SystemTime::now();
    let stored = retry::until_ok(
        &format!("storing a batch from `{topic}`"),
        shutdown,
        StoreError::is_retryable,
        || handle(&*spec.handler, topic, &payloads),
    )
    .await?;
    let Some(outcomes) = stored else {
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

    #[tokio::test]
    async fn a_message_that_makes_the_handler_panic_is_dead_lettered_and_the_rest_stored() {
        let dir = tempfile::tempdir().unwrap();
        let bus = Arc::new(EmbeddedBus::open(dir.path()).await.unwrap());
        bus.ensure_topics(&["t".into(), "t.dlq".into()], 1)
            .await
            .unwrap();
        let record = |payload: &str| Record {
            topic: "t".into(),
            key: None,
            headers: Vec::new(),
            payload: payload.as_bytes().to_vec(),
        };
        bus.publish(&[record("a"), record("boom"), record("b")])
            .await
            .unwrap();

        let handler = Arc::new(PanicsOnBoom::default());
        let spec = ConsumerSpec {
            topic: "t".into(),
            group: "g".into(),
            noun: "thing",
            place: "memory".into(),
            handler: handler.clone(),
            dead_letters: "t.dlq".into(),
        };
        let config = S2Config {
            print_events: false,
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
        let mut dlq = bus
            .subscribe("inspector", &["t.dlq".into()], StartFrom::Earliest)
            .await
            .unwrap();
        let letters = dlq.poll(10, Duration::from_secs(10)).await.unwrap();
        assert_eq!(letters.len(), 1, "one dead letter");
        assert_eq!(letters[0].payload, b"boom");
        let reason = letters[0].header("dlq.reason").unwrap_or_default();
        assert!(
            reason.contains("panicked: boom is not a record"),
            "{reason}"
        );

        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while Counters::get(&counters.stored) < 2 && !s2.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "a and b were not stored"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.cancel();
        s2.await.expect("S2 went on").unwrap();
        assert_eq!(*handler.0.lock().unwrap(), ["a", "b"]);
        assert_eq!(Counters::get(&counters.dead_lettered), 1);
    }
}
