//! `livros bench`: the whole pipeline on N events as fast as it goes, measured.
//!
//! S1 publishes N events; then S2 consumes them as in production, timed, and S3 after it,
//! timed apart (they are separate services: run together here they would share these two
//! cores and each would measure the other's CPU as well as its own path). Then a
//! plain consumer in a fresh group reads the same entity topics without storing anything
//! (the bus's own consume ceiling), and the same kinds of rows are written straight to each
//! store (its own bulk rate): both measured in the same run, to tell how much of them S2
//! achieves.

use std::time::{Duration, Instant};

use super::generator::S1Config;
use super::routing::{BookstoreTopics, Router};
use crate::app::{self, AppError, Settings};
use crate::bus::{Bus, StartFrom};
use crate::loadgen::{Plan, Request, rate};
use crate::store::StoreKind;

/// What a benchmark run measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Where the events went.
    pub bus: String,
    /// Events published (customers + books + orders).
    pub events: u64,
    /// Time for S1 to publish them all (before S2 and S3 started).
    pub publish: Duration,
    /// Time from S2's start until it had stored (or dead-lettered) everything.
    pub stored: Duration,
    /// Time from S3's start, after S2's, until it had logged everything.
    pub logged: Duration,
    /// Time for a plain consumer to read the entity topics, storing nothing.
    pub ceiling: Duration,
    /// Per store: records written and time spent writing.
    pub stores: Vec<(StoreKind, String, u64, Duration)>,
    /// Per store: the same number of new records written straight to it afterwards, in
    /// batches of S2's size, one after the other, with no bus: records and time taken.
    pub store_ceilings: Vec<(StoreKind, u64, Duration)>,
    /// Per store: the time from S2's start until its entity's consumer had stored all.
    pub drained: Vec<(StoreKind, Duration)>,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.events;
        writeln!(f, "bus:         {}", self.bus)?;
        writeln!(f, "events:      {n}")?;
        writeln!(
            f,
            "S1 publish:  {:>10.0} events/s ({:.2?})",
            rate(n, self.publish),
            self.publish
        )?;
        writeln!(
            f,
            "S2 stored:   {:>10.0} events/s ({:.2?}, the events waiting on the bus)",
            rate(n, self.stored),
            self.stored
        )?;
        writeln!(
            f,
            "S3 logged:   {:>10.0} events/s ({:.2?}, the same events, after S2)",
            rate(n, self.logged),
            self.logged
        )?;
        writeln!(
            f,
            "bus ceiling: {:>10.0} events/s (a plain consumer, storing nothing); S2 reaches {:.0} % of it",
            rate(n, self.ceiling),
            100.0 * rate(n, self.stored) / rate(n, self.ceiling).max(1e-9)
        )?;
        for (kind, engine, records, spent) in &self.stores {
            writeln!(
                f,
                "{:<12} {:>10.0} records/s while writing ({records} records in {spent:.2?}; {engine})",
                format!("{}:", kind.name()),
                rate(*records, *spent)
            )?;
        }
        // Each store's own bulk rate for the same rows, next to what the pipeline got out of
        // it: a third of the events each, in the time its consumer took to store them.
        for (kind, records, spent) in &self.store_ceilings {
            let ceiling = rate(*records, *spent);
            let took = self
                .drained
                .iter()
                .find(|(k, _)| k == kind)
                .map_or(self.stored, |(_, d)| *d);
            let per_store = rate(n / 3, took);
            writeln!(
                f,
                "{:<12} {:>10.0} records/s written straight, in batches, no bus; the pipeline reaches {:.0} % of it ({per_store:.0}/s)",
                format!("{} ceiling:", kind.name()),
                ceiling,
                100.0 * per_store / ceiling.max(1e-9)
            )?;
        }
        if let Some((kind, bound, slowest)) = self.store_bound() {
            writeln!(
                f,
                "S2 bound:    {bound:>10.0} events/s at most: the slowest store written alone ({}, {slowest:.0} records/s) takes {:.2?} for its third of the events, before S2 reads, parses or commits anything; that is {:.0} % of the bus ceiling",
                kind.name(),
                Duration::from_secs_f64(self.events as f64 / bound),
                100.0 * bound / rate(self.events, self.ceiling).max(1e-9)
            )?;
        }
        Ok(())
    }
}

impl BenchReport {
    /// The most S2 could store, given the stores' own bulk rates: its consumers write
    /// their thirds side by side, so it takes at least as long as the slowest store needs
    /// for its third on its own. The store, the bound (events/s) and that store's rate.
    pub fn store_bound(&self) -> Option<(StoreKind, f64, f64)> {
        self.store_ceilings
            .iter()
            .map(|(kind, records, spent)| (*kind, rate(*records, *spent)))
            .filter(|(_, r)| *r > 0.0)
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(kind, slowest)| (kind, 3.0 * slowest, slowest))
    }
}

/// Runs the pipeline on `events` events (a third of each kind) with `settings`.
pub async fn run(settings: &Settings, events: u64) -> Result<BenchReport, AppError> {
    let bus = app::open_bus(settings).await?;
    let stores = app::open_stores(settings).await?;
    let engines = [
        (StoreKind::Relational, stores.relational.describe()),
        (StoreKind::Document, stores.document.describe()),
        (StoreKind::KeyValue, stores.key_value.describe()),
    ];
    let rounds = events.div_ceil(3);
    let router = Router::new(stores.clone());
    let consumers = super::Bookstore::consumers_with(&router, settings);
    // The bookstore's topics only: this bench measures one system.
    let settings = &Settings {
        systems: app::Systems(vec![std::sync::Arc::new(super::Bookstore)]),
        ..settings.clone()
    };
    let s1 = S1Config {
        count: Some(rounds),
        rate: 0.0,
        seed: Some(1),
        print_events: false,
        topics: settings.topics.clone(),
    };
    // Published first, so that S2 is timed on its own path from the bus to the stores,
    // not on how fast S1 feeds it.
    let started = Instant::now();
    super::generator::run(
        bus.clone(),
        super::catalog::offline(),
        s1,
        std::sync::Arc::new(crate::services::Counters::default()),
        tokio_util::sync::CancellationToken::new(),
    )
    .await?;
    let publish = started.elapsed();
    let started = Instant::now();
    let mut pipeline =
        app::Pipeline::start_with(bus.clone(), Some(stores), consumers, false, settings, false);
    let consumers = pipeline.consumers.clone();
    // When each entity's consumer had stored all of its own (they run side by side).
    let done = std::sync::Mutex::new(vec![None; consumers.len()]);
    pipeline
        .drain(|| async {
            let mut left = 0;
            for (i, consumer) in consumers.iter().enumerate() {
                let lag = crate::services::s2::lag(&*bus, std::slice::from_ref(consumer)).await?;
                if lag == 0 {
                    done.lock().expect("never poisoned")[i].get_or_insert(started.elapsed());
                }
                left += lag;
            }
            Ok(left)
        })
        .await?;
    let stored = started.elapsed();
    let drained = super::routing::ROUTES
        .iter()
        .zip(done.into_inner().expect("never poisoned"))
        .map(|(route, took)| (route.store, took.unwrap_or(stored)))
        .collect();
    let timings = router.timings();
    pipeline.stop().await?;
    let started = Instant::now();
    let mut s3 = app::Pipeline::start_with(bus.clone(), None, Vec::new(), true, settings, false);
    let all = settings.all_topics();
    s3.drain(|| bus.lag(&settings.s3_group, &all)).await?;
    let logged = started.elapsed();
    s3.stop().await?;
    let ceiling = consume_ceiling(&*bus, settings, rounds * 3).await?;
    let store_ceilings =
        store_ceilings(&app::open_stores(settings).await?, settings, rounds).await?;
    Ok(BenchReport {
        bus: bus.describe(),
        events: rounds * 3,
        publish,
        stored,
        logged,
        ceiling,
        stores: engines
            .into_iter()
            .map(|(kind, engine)| {
                let (n, spent) = timings.get(kind);
                (kind, engine, n, spent)
            })
            .collect(),
        store_ceilings,
        drained,
    })
}

/// Writes `rounds` new customers, books and orders straight to their stores, `batch` at a
/// time and one batch after the other, as S2 would with nothing else to do: each store's
/// own bulk rate (a multi-row upsert, a bulk upsert, pipelined writes) for the same rows.
async fn store_ceilings(
    stores: &crate::store::Stores,
    settings: &Settings,
    rounds: u64,
) -> Result<Vec<(StoreKind, u64, Duration)>, AppError> {
    use super::customers::Customers as _;
    let mut generator = super::generator::Generator::new(
        super::catalog::offline(),
        Some(2),
        settings.topics.clone(),
    );
    let rounds: Vec<_> = (0..rounds).map(|_| generator.entities()).collect();
    let batch = settings.s2.batch_size.max(1);
    let failed =
        |e: crate::store::StoreError| AppError::from(crate::services::ServiceError::from(e));

    let started = Instant::now();
    for chunk in rounds.chunks(batch) {
        let customers: Vec<_> = chunk.iter().map(|(c, _, _)| c.clone()).collect();
        stores
            .relational
            .upsert_customers(&customers)
            .await
            .map_err(failed)?;
    }
    let customers = started.elapsed();

    let started = Instant::now();
    for chunk in rounds.chunks(batch) {
        let docs: Vec<(String, serde_json::Value)> = chunk
            .iter()
            .map(|(_, b, _)| {
                (
                    b.id.clone(),
                    serde_json::to_value(b).expect("books serialize"),
                )
            })
            .collect();
        for result in stores
            .document
            .upsert(super::routing::BOOKS_COLLECTION, &docs)
            .await
            .map_err(failed)?
        {
            result.map_err(failed)?;
        }
    }
    let books = started.elapsed();

    let started = Instant::now();
    for chunk in rounds.chunks(batch) {
        let writes: Vec<_> = chunk
            .iter()
            .flat_map(|(_, _, o)| super::routing::order_writes(o))
            .collect();
        stores.key_value.write(&writes).await.map_err(failed)?;
    }
    let orders = started.elapsed();

    let n = rounds.len() as u64;
    Ok(vec![
        (StoreKind::Relational, n, customers),
        (StoreKind::Document, n, books),
        (StoreKind::KeyValue, n, orders),
    ])
}

/// How long a consumer in a fresh group takes to read `events` messages of the entity
/// topics, doing nothing with them.
async fn consume_ceiling(
    bus: &dyn Bus,
    settings: &Settings,
    events: u64,
) -> Result<Duration, AppError> {
    let group = format!("livros-bench-ceiling-{}", uuid::Uuid::new_v4().simple());
    let mut consumer = bus
        .subscribe(&group, &settings.topics.entities(), StartFrom::Earliest)
        .await?;
    let mut read = 0_u64;
    let mut started = None;
    while read < events {
        let batch = consumer
            .poll(settings.s2.batch_size, Duration::from_secs(10))
            .await?;
        if batch.is_empty() {
            break;
        }
        // Timed from the first message, so joining the group does not count.
        started.get_or_insert_with(Instant::now);
        read += batch.len() as u64;
    }
    consumer.close().await?;
    Ok(started.map(|s| s.elapsed()).unwrap_or_default())
}

/// What `livros bench --http` sends the bookstore's API: `requests` new customers, as many
/// books (the catalogue, again and again: upserts) and orders of them, then reads of the
/// customers in a spread order.
pub fn http_plans(settings: &Settings, requests: usize) -> Vec<Plan> {
    let mut generator = super::generator::Generator::new(
        super::catalog::offline(),
        Some(1),
        settings.topics.clone(),
    );
    let rounds: Vec<_> = (0..requests).map(|_| generator.entities()).collect();
    let post = |what: &str, bodies: Vec<String>| Plan {
        what: format!("POST {what}"),
        expect: 201,
        write: true,
        requests: bodies.into_iter().map(|b| Request::post(what, b)).collect(),
    };
    let customers = rounds.iter().map(|(c, _, _)| json(c)).collect();
    let books = rounds.iter().map(|(_, b, _)| json(b)).collect();
    let orders = rounds.iter().map(|(_, _, o)| json(o)).collect();
    let reads = (0..requests)
        .map(|i| Request::get(format!("/customers/{}", rounds[(i * 7919) % requests].0.id)))
        .collect();
    vec![
        post("/customers", customers),
        post("/books", books),
        post("/orders", orders),
        Plan {
            what: "GET /customers/{id}".into(),
            expect: 200,
            write: false,
            requests: reads,
        },
    ]
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("entities serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// S2's consumers write their thirds side by side: the slowest store alone bounds it,
    /// and the readout says which store that is and what share of the bus's ceiling is left.
    #[test]
    fn the_slowest_store_bounds_s2() {
        let secs = Duration::from_secs;
        let report = BenchReport {
            bus: "embedded".into(),
            events: 30_000,
            publish: secs(1),
            stored: secs(1),
            logged: secs(1),
            // 100,000 events/s.
            ceiling: Duration::from_millis(300),
            stores: Vec::new(),
            store_ceilings: vec![
                (StoreKind::Relational, 10_000, Duration::from_millis(200)),
                (StoreKind::Document, 10_000, Duration::from_millis(50)),
                (StoreKind::KeyValue, 10_000, Duration::from_millis(250)),
            ],
            drained: Vec::new(),
        };
        let (kind, bound, slowest) = report.store_bound().expect("a bound");
        assert_eq!(kind, StoreKind::KeyValue);
        assert!((slowest - 40_000.0).abs() < 1e-6, "{slowest}");
        assert!((bound - 120_000.0).abs() < 1e-6, "{bound}");
        let text = report.to_string();
        let line = text
            .lines()
            .find(|l| l.starts_with("S2 bound:"))
            .unwrap_or_else(|| panic!("no bound line in:\n{text}"));
        assert!(line.contains("(key-value, 40000 records/s)"), "{line}");
        assert!(line.contains("takes 250.00ms"), "{line}");
        assert!(line.contains("that is 120 % of the bus ceiling"), "{line}");
    }
}
