//! The products pipeline (seed 5): a scheduler consumes registrations from
//! `cadastro-produtos`, validates and transforms them and posts each to the products API;
//! the API stores the product in the relational store and announces each new version on
//! `produtos-persistidos` through a transactional outbox; what cannot be stored goes to
//! `erro-produtos` with the reason.
//!
//! - [`entities`]: the registration, the product, and their validation.
//! - [`routing`]: **the routing table**, and the API's write ([`routing::ProductWriter`]).
//! - [`catalog`]: its SQL, one text for both engines.
//! - [`scheduler`]: the scheduler, an S2 handler that posts to the API.
//! - [`http`]: the API, :8001 (the seed's :8000 is the streaming gateway's here).
//! - [`generator`]: registrations in the seed's shape. [`bench`]: `livros bench --system products`.

pub mod bench;
pub mod catalog;
pub mod entities;
pub mod generator;
pub mod http;
pub mod routing;
pub mod scheduler;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use self::catalog::Products as _;
use self::routing::{CADASTRO_PRODUTOS, ERRO_PRODUTOS, Fault, PRODUTOS_PERSISTIDOS, ProductWriter};
use self::scheduler::{Scheduler, SchedulerConfig};
use super::{GenConfig, GetError, Sent, System, Workers};
use crate::api::ApiConfig;
use crate::app::Settings;
use crate::bus::{Bus, Topics};
use crate::services::outbox::{self, Relay, RelayConfig};
use crate::services::s2::{ConsumerSpec, group_of};
use crate::services::{Counters, ServiceError};
use crate::store::{Schema, StoreKind, StoreResult, Stores};

static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("migrations/products/postgres")
};
static SQLITE: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("migrations/products/sqlite")
};

/// The API's port unless told otherwise: the seed's 8000 is the streaming gateway's.
pub const DEFAULT_PORT: u16 = 8001;

/// Option (in [`Settings::options`]): the URL the scheduler posts to.
pub const API_URL_OPTION: &str = "products.api_url";
/// Option: how many products the scheduler posts at once.
pub const CONCURRENCY_OPTION: &str = "products.post_concurrency";
/// Option: the share (0 to 1) of generated registrations broken on purpose.
pub const INVALID_RATIO_OPTION: &str = "products.invalid_ratio";
/// Option: a crash point to inject ([`Fault`]), for tests.
pub const FAULT_OPTION: &str = "products.fault";

/// Products posted at once by default.
pub const DEFAULT_CONCURRENCY: usize = 32;

/// The products pipeline, as the core runs it.
pub struct Products;

/// The URL the scheduler posts to: the option, or the local API on its default port.
pub fn api_url(settings: &Settings) -> String {
    settings
        .options
        .get(API_URL_OPTION)
        .cloned()
        .unwrap_or_else(|| format!("http://127.0.0.1:{DEFAULT_PORT}/products/"))
}

/// The scheduler as the settings configure it.
pub fn scheduler(settings: &Settings) -> Scheduler {
    Scheduler::new(SchedulerConfig {
        url: api_url(settings),
        token: settings.api.token.clone(),
        concurrency: settings
            .options
            .get(CONCURRENCY_OPTION)
            .and_then(|c| c.parse().ok())
            .unwrap_or(DEFAULT_CONCURRENCY),
        timeout: Duration::from_secs(30),
    })
}

/// The scheduler as S2 runs it: `cadastro-produtos` in, the API out, refusals to
/// `erro-produtos`. It needs no store.
pub fn scheduler_spec(settings: &Settings) -> ConsumerSpec {
    let scheduler = scheduler(settings);
    ConsumerSpec {
        topic: settings.topics.name(CADASTRO_PRODUTOS),
        group: group_of(&settings.s2.group, CADASTRO_PRODUTOS),
        noun: "product",
        place: format!("the products API ({})", scheduler.url()),
        handler: Arc::new(scheduler),
        dead_letters: settings.topics.name(ERRO_PRODUTOS),
        refers_to: Vec::new(),
    }
}

#[async_trait]
impl System for Products {
    fn name(&self) -> &'static str {
        "products"
    }

    fn schema(&self) -> Schema {
        Schema {
            postgres: &POSTGRES,
            sqlite: &SQLITE,
            collections: &[],
        }
    }

    fn topics(&self, topics: &Topics) -> Vec<String> {
        [CADASTRO_PRODUTOS, PRODUTOS_PERSISTIDOS, ERRO_PRODUTOS]
            .iter()
            .map(|t| topics.name(t))
            .collect()
    }

    fn consumers(&self, _stores: &Stores, settings: &Settings) -> Vec<ConsumerSpec> {
        vec![scheduler_spec(settings)]
    }

    fn workers(&self, stores: &Stores, bus: Arc<dyn Bus>, _settings: &Settings) -> Workers {
        Workers {
            relays: vec![Relay::new(
                stores.relational.clone(),
                bus,
                RelayConfig::default(),
            )],
        }
    }

    async fn pending(&self, stores: &Stores) -> StoreResult<i64> {
        outbox::pending(&*stores.relational).await
    }

    fn describe(&self, stores: &Stores, topics: &Topics) -> Vec<String> {
        vec![
            format!(
                "{} → the scheduler → POST /products/ (the products API)",
                topics.name(CADASTRO_PRODUTOS)
            ),
            format!(
                "products → relational store: {}; each version → outbox → {}",
                stores.describe(StoreKind::Relational),
                topics.name(PRODUTOS_PERSISTIDOS)
            ),
            format!(
                "registrations that cannot be stored → {}",
                topics.name(ERRO_PRODUTOS)
            ),
        ]
    }

    fn http_bench(&self, _settings: &Settings, requests: usize) -> Vec<crate::loadgen::Plan> {
        bench::http_plans(requests)
    }

    fn http(
        &self,
        stores: &Stores,
        _bus: Arc<dyn Bus>,
        settings: &Settings,
        config: ApiConfig,
        workers: &Workers,
    ) -> axum::Router {
        let writer = ProductWriter {
            store: stores.relational.clone(),
            topic: settings.topics.name(PRODUTOS_PERSISTIDOS),
            workers: workers.clone(),
            fault: settings
                .options
                .get(FAULT_OPTION)
                .and_then(|f| Fault::parse(f)),
        };
        http::app(stores.clone(), writer, config)
    }

    fn default_http(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, DEFAULT_PORT).into()
    }

    async fn records(&self, stores: &Stores) -> StoreResult<Vec<(StoreKind, &'static str, i64)>> {
        Ok(vec![
            (
                StoreKind::Relational,
                "products",
                stores.relational.count_products().await?,
            ),
            (
                StoreKind::Relational,
                "outbox (unpublished)",
                outbox::pending(&*stores.relational).await?,
            ),
        ])
    }

    async fn get(
        &self,
        stores: &Stores,
        kind: &str,
        id: &str,
    ) -> Result<serde_json::Value, GetError> {
        if kind != "product" && kind != "produto" {
            return Err(GetError::UnknownKind {
                system: self.name(),
                kind: kind.to_string(),
            });
        }
        let stored = stores.relational.product(id).await?.ok_or_else(|| {
            GetError::NotFound(format!("no product with id `{id}` in the relational store"))
        })?;
        let mut value = serde_json::to_value(&stored.product).expect("a product serializes");
        value["version"] = stored.version.into();
        Ok(value)
    }

    fn events_per_round(&self) -> u64 {
        1
    }

    async fn generate(
        &self,
        bus: Arc<dyn Bus>,
        settings: &Settings,
        config: GenConfig,
        counters: Arc<Counters>,
        shutdown: CancellationToken,
    ) -> Result<Sent, ServiceError> {
        let invalid_ratio = settings
            .options
            .get(INVALID_RATIO_OPTION)
            .and_then(|r| r.parse().ok())
            .unwrap_or(0.0);
        let (valid, invalid) = generator::run(
            bus,
            settings.topics.clone(),
            config,
            invalid_ratio,
            counters,
            shutdown,
        )
        .await?;
        let mut counts = vec![("products", valid)];
        if invalid > 0 {
            counts.push(("invalid products", invalid));
        }
        Ok(Sent {
            counts,
            rejected: 0,
        })
    }
}
