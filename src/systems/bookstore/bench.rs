//! `livros bench`: the whole pipeline on N events as fast as it goes, measured.
//!
//! S1 publishes N events; S2 and S3 consume them as in production. Then a plain consumer
//! in a fresh group reads the same entity topics without storing anything: the bus's own
//! consume ceiling, measured in the same run, to tell how much of it S2 achieves.

use std::time::{Duration, Instant};

use super::generator::S1Config;
use super::routing::{BookstoreTopics, Router};
use crate::app::{self, AppError, Settings};
use crate::bus::{Bus, StartFrom};
use crate::loadgen::{LoadReport, load, rate};
use crate::store::StoreKind;

/// What a benchmark run measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Where the events went.
    pub bus: String,
    /// Events published (customers + books + orders).
    pub events: u64,
    /// Time for S1 to publish them all.
    pub publish: Duration,
    /// Time from the first publish until S2 had stored (or dead-lettered) everything.
    pub stored: Duration,
    /// Time from the first publish until S2 stored and S3 logged everything.
    pub end_to_end: Duration,
    /// Time for a plain consumer to read the entity topics, storing nothing.
    pub ceiling: Duration,
    /// Per store: records written and time spent writing.
    pub stores: Vec<(StoreKind, String, u64, Duration)>,
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
            "S2 stored:   {:>10.0} events/s ({:.2?} from the first publish)",
            rate(n, self.stored),
            self.stored
        )?;
        writeln!(
            f,
            "end to end:  {:>10.0} events/s ({:.2?}, stored by S2 and logged by S3)",
            rate(n, self.end_to_end),
            self.end_to_end
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
        Ok(())
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
    let mut pipeline =
        app::Pipeline::start_with(bus.clone(), Some(stores), consumers, true, settings, false);
    let s1 = S1Config {
        count: Some(rounds),
        rate: 0.0,
        seed: Some(1),
        print_events: false,
        topics: settings.topics.clone(),
    };
    let started = Instant::now();
    super::generator::run(
        bus.clone(),
        super::catalog::offline(),
        s1,
        pipeline.counters.clone(),
        pipeline.shutdown.clone(),
    )
    .await?;
    let publish = started.elapsed();
    let consumers = pipeline.consumers.clone();
    pipeline
        .drain(|| crate::services::s2::lag(&*bus, &consumers))
        .await?;
    let stored = started.elapsed();
    let all = settings.all_topics();
    pipeline.drain(|| bus.lag(&settings.s3_group, &all)).await?;
    let end_to_end = started.elapsed();
    let timings = router.timings();
    pipeline.stop().await?;
    let ceiling = consume_ceiling(&*bus, settings, rounds * 3).await?;
    Ok(BenchReport {
        bus: bus.describe(),
        events: rounds * 3,
        publish,
        stored,
        end_to_end,
        ceiling,
        stores: engines
            .into_iter()
            .map(|(kind, engine)| {
                let (n, spent) = timings.get(kind);
                (kind, engine, n, spent)
            })
            .collect(),
    })
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

/// Loads S2's HTTP API, served in this process over the stores `settings` name: first
/// `requests` × `POST /customers` (new customers), then as many `GET /customers/{id}` of
/// them, each from `concurrency` concurrent clients over keep-alive connections.
pub async fn http(
    settings: &Settings,
    requests: usize,
    concurrency: usize,
) -> Result<(String, Vec<LoadReport>), AppError> {
    let stores = app::open_stores(settings).await?;
    let engine = stores.relational.describe();
    let listener = crate::api::bind("127.0.0.1:0".parse().expect("a valid address"))
        .await
        .map_err(crate::services::ServiceError::Http)?;
    let base = format!(
        "http://{}",
        listener
            .local_addr()
            .map_err(crate::services::ServiceError::Http)?
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let api = super::http::app(
        Router::new(stores),
        crate::api::ApiConfig {
            token: settings.api.token.clone(),
            ..crate::api::ApiConfig::default()
        },
    );
    let server = tokio::spawn(crate::api::serve(listener, api, shutdown.clone()));

    let mut generator = super::generator::Generator::new(
        super::catalog::offline(),
        Some(1),
        settings.topics.clone(),
    );
    let customers: Vec<super::entities::Customer> =
        (0..requests).map(|_| generator.customer()).collect();
    let ids: std::sync::Arc<Vec<String>> =
        std::sync::Arc::new(customers.iter().map(|c| c.id.clone()).collect());
    let customers: std::sync::Arc<Vec<Vec<u8>>> = std::sync::Arc::new(
        customers
            .iter()
            .map(|c| serde_json::to_vec(c).expect("customers serialize"))
            .collect(),
    );
    let client = reqwest::Client::new();
    let token = settings.api.token.clone();

    let post = {
        let (client, base, customers) = (client.clone(), base.clone(), customers.clone());
        load("POST /customers", requests, concurrency, move |i| {
            let mut request = client
                .post(format!("{base}/customers"))
                .header("content-type", "application/json")
                .body(customers[i].clone());
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            async move {
                matches!(request.send().await, Ok(r) if r.status() == reqwest::StatusCode::CREATED)
            }
        })
        .await
    };
    let get = {
        let (client, base, ids) = (client.clone(), base.clone(), ids.clone());
        load("GET /customers/{id}", requests, concurrency, move |i| {
            // A spread of ids, not the order they were written in.
            let id = &ids[(i * 7919) % ids.len()];
            let request = client.get(format!("{base}/customers/{id}"));
            async move {
                match request.send().await {
                    Ok(r) if r.status() == reqwest::StatusCode::OK => r.bytes().await.is_ok(),
                    _ => false,
                }
            }
        })
        .await
    };
    shutdown.cancel();
    let _ = server.await;
    Ok((engine, vec![post, get]))
}
