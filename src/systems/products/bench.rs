//! `livros bench --system products`: products per second from `cadastro-produtos` to
//! `produtos-persistidos`. The registrations are published first (all valid, new products
//! and new versions of them, as the generator makes them); then the scheduler, the API
//! (on a local port, over real HTTP) and its relay start, and the clock runs until every
//! registration is committed and every announcement is published.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::catalog::Products as _;
use super::routing::PRODUTOS_PERSISTIDOS;
use super::{API_URL_OPTION, Products};
use crate::app::{self, AppError, Pipeline, Settings, Systems};
use crate::loadgen::{Plan, Request, rate};
use crate::services::{Counters, s2};
use crate::systems::{GenConfig, System};

/// What the benchmark measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// The bus and the relational store.
    pub setup: String,
    /// Registrations published.
    pub registrations: u64,
    /// Time to publish them (before the pipeline started).
    pub publish: Duration,
    /// Time until the scheduler had every one accepted by the API.
    pub accepted: Duration,
    /// Time until every announcement was on `produtos-persistidos`.
    pub announced: Duration,
    /// Products stored.
    pub products: i64,
    /// Announcements published (one per stored version).
    pub announcements: i64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.registrations;
        writeln!(f, "setup:         {}", self.setup)?;
        writeln!(
            f,
            "registrations: {n} ({} products, {} versions announced)",
            self.products, self.announcements
        )?;
        writeln!(
            f,
            "publish:       {:>8.0} registrations/s ({:.2?})",
            rate(n, self.publish),
            self.publish
        )?;
        writeln!(
            f,
            "accepted:      {:>8.0} products/s ({:.2?}: validated, transformed, POSTed, stored with their outbox rows)",
            rate(n, self.accepted),
            self.accepted
        )?;
        writeln!(
            f,
            "end to end:    {:>8.0} products/s ({:.2?}: cadastro-produtos → produtos-persistidos)",
            rate(n, self.announced),
            self.announced
        )
    }
}

/// Publishes `registrations` and times the pipeline on them.
pub async fn run(settings: &Settings, registrations: u64) -> Result<Report, AppError> {
    let mut settings = Settings {
        systems: Systems(vec![Arc::new(Products)]),
        ..settings.clone()
    };
    settings.api.print_requests = false;
    let bus = app::open_bus(&settings).await?;
    let stores = app::open_stores(&settings).await?;
    let started = Instant::now();
    Products
        .generate(
            bus.clone(),
            &settings,
            GenConfig {
                count: Some(registrations),
                rate: 0.0,
                seed: Some(1),
                print_events: false,
            },
            Arc::new(Counters::default()),
            CancellationToken::new(),
        )
        .await?;
    let publish = started.elapsed();

    let listener = crate::api::bind(([127, 0, 0, 1], 0).into())
        .await
        .map_err(|e| AppError::Service(crate::services::ServiceError::Http(e)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| AppError::Service(crate::services::ServiceError::Http(e)))?;
    settings
        .options
        .insert(API_URL_OPTION.into(), format!("http://{addr}/products/"));
    let setup = format!(
        "bus {}, products in {}, scheduler → http://{addr}/products/",
        bus.describe(),
        stores.relational.describe()
    );
    let started = Instant::now();
    let mut pipeline = Pipeline::start(bus.clone(), Some(stores.clone()), false, &settings, false);
    pipeline.start_workers(&Products, bus.clone(), &settings);
    pipeline.serve_http(&Products, bus.clone(), listener, &settings);
    let consumers = pipeline.consumers.clone();
    pipeline.drain(|| s2::lag(&*bus, &consumers)).await?;
    let accepted = started.elapsed();
    pipeline.drain_work(&*bus, &settings).await?;
    let announced = started.elapsed();
    pipeline.stop().await?;
    let topic = settings.topics.name(PRODUTOS_PERSISTIDOS);
    let stats = bus.stats(std::slice::from_ref(&topic), &[]).await?;
    Ok(Report {
        setup,
        registrations,
        publish,
        accepted,
        announced,
        products: stores
            .relational
            .count_products()
            .await
            .map_err(|e| AppError::Service(e.into()))?,
        announcements: stats.get(&topic).map_or(0, |t| t.published),
    })
}

/// What `livros bench --http` sends the products API: `requests` products as the
/// scheduler posts them (new products and new versions of recent ones), then reads of them.
pub fn http_plans(requests: usize) -> Vec<Plan> {
    let mut generator = super::generator::Registrations::new(None, 0.0);
    let now = chrono::Utc::now();
    let products: Vec<_> = (0..requests)
        .map(|_| {
            let (registration, _) = generator.registration();
            super::entities::parse_registration(registration.to_string().as_bytes(), now)
                .expect("the generator's valid registrations parse")
        })
        .collect();
    let reads = (0..requests)
        .map(|i| Request::get(format!("/products/{}", products[(i * 7919) % requests].id)))
        .collect();
    vec![
        Plan {
            what: "POST /products/".into(),
            expect: 200,
            write: true,
            requests: products
                .iter()
                .map(|p| Request::post("/products/", p.to_json()))
                .collect(),
        },
        Plan {
            what: "GET /products/{id}".into(),
            expect: 200,
            write: false,
            requests: reads,
        },
    ]
}
