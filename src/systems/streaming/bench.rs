//! `livros bench --system streaming`: events per second through the processor, and the
//! latency of the correlation round trip (`POST /usuarios?wait=5`) under concurrent load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Streaming;
use super::routing::{RESPONSE_EVENTS, USER_EVENTS};
use crate::app::{self, AppError, Pipeline, Settings, Systems};
use crate::loadgen::{LoadReport, load, rate};
use crate::services::{Counters, ServiceError};
use crate::systems::{GenConfig, System};

/// What the processor benchmark measured.
#[derive(Debug, Clone)]
pub struct ProcessorReport {
    /// The bus and the relational store.
    pub setup: String,
    /// Events processed.
    pub events: u64,
    /// Time to publish them (before the processor started).
    pub publish: Duration,
    /// Time for the processor to apply and answer them all.
    pub processed: Duration,
    /// Time until every reply was also kept for `GET /status`.
    pub answered: Duration,
}

impl std::fmt::Display for ProcessorReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.events;
        writeln!(f, "setup:       {}", self.setup)?;
        writeln!(f, "events:      {n}")?;
        writeln!(
            f,
            "publish:     {:>10.0} events/s ({:.2?})",
            rate(n, self.publish),
            self.publish
        )?;
        writeln!(
            f,
            "processor:   {:>10.0} events/s ({:.2?}: each event stored once, its reply recorded and published)",
            rate(n, self.processed),
            self.processed
        )?;
        writeln!(
            f,
            "status kept: {:>10.0} events/s ({:.2?} until every reply was readable at /status)",
            rate(n, self.answered),
            self.answered
        )
    }
}

/// The settings with the streaming platform alone.
fn alone(settings: &Settings) -> Settings {
    Settings {
        systems: Systems(vec![Arc::new(Streaming)]),
        ..settings.clone()
    }
}

/// Publishes `events` events (a quarter of each type), then times the processor on them.
pub async fn run(settings: &Settings, events: u64) -> Result<ProcessorReport, AppError> {
    let settings = &alone(settings);
    let bus = app::open_bus(settings).await?;
    let stores = app::open_stores(settings).await?;
    let rounds = events.div_ceil(4);
    let started = Instant::now();
    let config = GenConfig {
        count: Some(rounds),
        rate: 0.0,
        seed: Some(1),
        print_events: false,
    };
    Streaming
        .generate(
            bus.clone(),
            settings,
            config,
            Arc::new(Counters::default()),
            CancellationToken::new(),
        )
        .await?;
    let publish = started.elapsed();
    let consumers = Streaming.consumers(&stores, settings);
    let (processor, replies): (Vec<_>, Vec<_>) = consumers
        .iter()
        .cloned()
        .partition(|c| c.topic == settings.topics.name(USER_EVENTS));
    debug_assert!(
        replies
            .iter()
            .all(|c| c.topic == settings.topics.name(RESPONSE_EVENTS))
    );
    let setup = format!(
        "{}, {}",
        bus.describe(),
        stores.describe(crate::store::StoreKind::Relational)
    );
    let started = Instant::now();
    let mut pipeline =
        Pipeline::start_with(bus.clone(), Some(stores), consumers, false, settings, false);
    pipeline
        .drain(|| crate::services::s2::lag(&*bus, &processor))
        .await?;
    let processed = started.elapsed();
    pipeline
        .drain(|| crate::services::s2::lag(&*bus, &replies))
        .await?;
    let answered = started.elapsed();
    pipeline.stop().await?;
    Ok(ProcessorReport {
        setup,
        events: rounds * 4,
        publish,
        processed,
        answered,
    })
}

/// Loads the gateway, served in this process with the processor running: `requests` ×
/// `POST /usuarios?wait=5` (a new user each, the reply awaited), from `concurrency`
/// concurrent clients.
pub async fn http(
    settings: &Settings,
    requests: usize,
    concurrency: usize,
) -> Result<(String, Vec<LoadReport>), AppError> {
    let settings = &alone(settings);
    let bus = app::open_bus(settings).await?;
    let stores = app::open_stores(settings).await?;
    let setup = format!(
        "{}, {}, {}",
        bus.describe(),
        stores.describe(crate::store::StoreKind::Relational),
        stores.describe(crate::store::StoreKind::KeyValue)
    );
    let mut pipeline = Pipeline::start(bus.clone(), Some(stores), false, settings, false);
    let listener = crate::api::bind("127.0.0.1:0".parse().expect("a valid address"))
        .await
        .map_err(ServiceError::Http)?;
    let base = format!(
        "http://{}",
        listener.local_addr().map_err(ServiceError::Http)?
    );
    pipeline.serve_http(&Streaming, bus.clone(), listener, settings);
    let client = reqwest::Client::new();
    let token = settings.api.token.clone();
    let round_trip = load("POST /usuarios?wait=5", requests, concurrency, move |_| {
        let mut request = client.post(format!("{base}/usuarios?wait=5"));
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        async move {
            matches!(request.send().await, Ok(r) if r.status() == reqwest::StatusCode::CREATED)
        }
    })
    .await;
    pipeline.stop().await?;
    Ok((setup, vec![round_trip]))
}
