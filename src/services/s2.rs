//! S2, the polyglot router: consumes the entity topics and stores each entity in the store
//! the routing table names, in batches.
//!
//! Per batch: parse and validate every message, write the valid ones in one round trip per
//! store, publish the invalid ones to `<topic>.dlq` with the reason, and only then commit
//! the offsets. A crash anywhere before the commit redelivers the batch, and the idempotent
//! upserts make the second pass a no-op. Store outages are retried with backoff, never
//! skipped. Each entity topic has its own task, so an order waiting for its customer never
//! holds up the customers topic.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Counters, ServiceError, bus_transient};
use crate::bus::{Bus, Message, Record, StartFrom, next_offsets};
use crate::retry;
use crate::routing::{self, Outcome, ROUTES, Route, Router, StoreKind, Topics, short};
use crate::store::StoreError;

/// The consumer group of S2's consumer of `route`'s topic: `<group>.<topic>`.
///
/// One group per entity topic, not one for all: an orders batch may wait for its customers
/// (the reference grace), and a group member that is not polling holds up every rebalance
/// of its group. With a group per topic, the customers consumer is never stuck behind it.
pub fn group_of(group: &str, route: Route) -> String {
    format!("{group}.{}", route.topic)
}

/// Messages on the entity topics that S2 has not committed yet.
pub async fn lag(bus: &dyn Bus, group: &str, topics: &Topics) -> Result<i64, crate::bus::BusError> {
    let mut total = 0;
    for route in ROUTES {
        total += bus
            .lag(&group_of(group, route), &[topics.entity(route)])
            .await?;
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
    /// Topic names.
    pub topics: Topics,
}

impl Default for S2Config {
    fn default() -> Self {
        Self {
            group: super::S2_GROUP.into(),
            batch_size: 1000,
            reference_grace: Duration::from_secs(10),
            print_events: true,
            topics: Topics::default(),
        }
    }
}

/// Runs S2 until `shutdown` is cancelled: one task per route.
pub async fn run(
    bus: Arc<dyn Bus>,
    router: Router,
    config: S2Config,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let mut tasks = tokio::task::JoinSet::new();
    for route in ROUTES {
        tasks.spawn(consume(
            bus.clone(),
            router.clone(),
            route,
            config.clone(),
            counters.clone(),
            shutdown.clone(),
        ));
    }
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        let outcome = joined.unwrap_or_else(|e| panic!("S2 task panicked: {e}"));
        if let Err(e) = outcome {
            // One route failing for good stops the service: a partial router would
            // silently let one kind of data pile up.
            shutdown.cancel();
            result = result.and(Err(e));
        }
    }
    result
}

/// The store engine's short name for output lines (`sqlite`, `postgres`, `redis`…).
fn engine(router: &Router, kind: StoreKind) -> String {
    let stores = router.stores();
    let described = match kind {
        StoreKind::Relational => stores.relational.describe(),
        StoreKind::Document => stores.document.describe(),
        StoreKind::KeyValue => stores.key_value.describe(),
    };
    described.split(' ').next().unwrap_or_default().to_string()
}

async fn consume(
    bus: Arc<dyn Bus>,
    router: Router,
    route: Route,
    config: S2Config,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let topic = config.topics.entity(route);
    let dlq = routing::dlq_topic(&topic);
    let engine = engine(&router, route.store);
    let mut consumer = bus
        .subscribe(
            &group_of(&config.group, route),
            std::slice::from_ref(&topic),
            StartFrom::Earliest,
        )
        .await?;
    while let Some(messages) =
        super::next_batch(&mut *consumer, config.batch_size, &shutdown).await?
    {
        let payloads: Vec<&[u8]> = messages.iter().map(|m| m.payload.as_slice()).collect();
        let stored = retry::until_ok(
            &format!("storing a batch from `{topic}`"),
            &shutdown,
            StoreError::is_retryable,
            || router.apply(route.entity, &payloads, config.reference_grace),
        )
        .await?;
        let Some(outcomes) = stored else { break };

        let dead: Vec<Record> = messages
            .iter()
            .zip(&outcomes)
            .filter_map(|(m, o)| match o {
                Outcome::Rejected(reason) => Some(dead_letter(m, &reason.to_string(), &dlq)),
                Outcome::Stored { .. } => None,
            })
            .collect();
        if !dead.is_empty() {
            let published = retry::until_ok(
                &format!("publishing to `{dlq}`"),
                &shutdown,
                bus_transient,
                || bus.publish(&dead),
            )
            .await?;
            if published.is_none() {
                break;
            }
        }

        if !super::commit(&mut *consumer, &next_offsets(&messages), &shutdown).await?
            && shutdown.is_cancelled()
        {
            break;
        }

        let rejected = dead.len();
        Counters::add(&counters.stored, messages.len() - rejected);
        Counters::add(&counters.dead_lettered, rejected);
        if config.print_events {
            for (m, o) in messages.iter().zip(&outcomes) {
                match o {
                    Outcome::Stored { id, label } => println!(
                        "[S2] Stored {} {} ({label}) in {} store ({engine})",
                        route.entity.name(),
                        short(id),
                        route.store.name()
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
