//! The systems: one folder each, of the same shape, on one core.
//!
//! | system | seeds | topics | HTTP |
//! |---|---|---|---|
//! | [`bookstore`] | 1 (pub/sub) and 2 (client-server) | `customers`, `books`, `orders` | S2's REST API, :5000 |
//! | [`streaming`] | 3 and 4 (streaming platform) | `user_events`, `response_events` | the gateway (S1), :8000 |
//! | [`products`] | 5 (scheduler → API → outbox) | `cadastro-produtos`, `produtos-persistidos`, `erro-produtos` | the products API, :8001 |
//!
//! A system folder holds its entities and their validation (`entities.rs`), its routing
//! table — which data goes to which store, which topics it reads and writes
//! (`routing.rs`) — its handlers, its HTTP routes (`http.rs`), its generator, the S1
//! (`generator.rs`), and its migrations (`migrations/<system>/`). `mod.rs` implements
//! [`System`], the little the core needs to run it; `ARCHITECTURE.md` says how to add one.
//! The core (bus, stores, consumer runtime, audit log, HTTP plumbing) names no entity.

pub mod bookstore;
pub mod products;
pub mod streaming;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::api::ApiConfig;
use crate::app::Settings;
use crate::bus::{Bus, Topics};
use crate::services::s2::ConsumerSpec;
use crate::services::{Counters, ServiceError};
use crate::store::{OpenError, Schema, StoreConfig, StoreError, StoreKind, StoreResult, Stores};

/// What one run of a system's generator (its S1) sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sent {
    /// Events sent, per kind (`customers`, …), in the order the system names them.
    pub counts: Vec<(&'static str, u64)>,
    /// Events the receiver refused (HTTP 4xx); 0 on the bus, where S2 dead-letters.
    pub rejected: u64,
}

impl Sent {
    /// Every event sent.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|(_, n)| n).sum()
    }
}

impl std::fmt::Display for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .counts
            .iter()
            .map(|(what, n)| format!("{n} {what}"))
            .collect();
        write!(f, "{}", parts.join(", "))
    }
}

/// How a generator runs.
#[derive(Debug, Clone)]
pub struct GenConfig {
    /// Rounds to produce (each: one of every event the system makes); `None` runs until
    /// stopped.
    pub count: Option<u64>,
    /// Events per second; 0 is as fast as possible.
    pub rate: f64,
    /// Seed for reproducible data.
    pub seed: Option<u64>,
    /// Print one line per event.
    pub print_events: bool,
}

impl GenConfig {
    /// How [`crate::services::send_rounds`] paces these rounds, `rounds_per_publish` at a
    /// time when flat out.
    pub fn pace(&self, rounds_per_publish: u64) -> crate::services::Pace {
        crate::services::Pace {
            count: self.count,
            rate: self.rate,
            rounds_per_publish,
            print: self.print_events,
        }
    }
}

/// A system, as the core runs it.
#[async_trait]
pub trait System: Send + Sync {
    /// Its name, as `--systems` takes it (`bookstore`).
    fn name(&self) -> &'static str;
    /// What it keeps in the stores: migrations, document collections and their indexes.
    fn schema(&self) -> Schema;
    /// Puts the data it ships in the stores (a catalog…), once they are open; every
    /// start does it again, so it must be idempotent.
    async fn prepare(&self, _stores: &Stores) -> StoreResult<()> {
        Ok(())
    }
    /// Every topic it uses in this deployment, dead-letter topics included.
    fn topics(&self, topics: &Topics) -> Vec<String>;
    /// The consumers S2 runs for it.
    fn consumers(&self, stores: &Stores, settings: &Settings) -> Vec<ConsumerSpec>;
    /// Background work it runs beside its consumers and HTTP API (an outbox relay), each
    /// until the pipeline stops. The same [`Workers`] value is given to [`System::http`],
    /// whose write path may wake them.
    fn workers(&self, _stores: &Stores, _bus: Arc<dyn Bus>, _settings: &Settings) -> Workers {
        Workers::default()
    }
    /// Work it has accepted but not finished that no consumer lag shows (outbox rows not
    /// yet published); `livros up --count` waits for it to reach 0.
    async fn pending(&self, _stores: &Stores) -> StoreResult<i64> {
        Ok(0)
    }
    /// Lines saying where each kind of its data goes.
    fn describe(&self, stores: &Stores, topics: &Topics) -> Vec<String>;
    /// Its HTTP API over `stores` and `bus`, beside `workers` (see [`System::workers`]).
    fn http(
        &self,
        stores: &Stores,
        bus: Arc<dyn Bus>,
        settings: &Settings,
        config: ApiConfig,
        workers: &Workers,
    ) -> axum::Router;
    /// Where its HTTP API listens unless told otherwise (its seed's port).
    fn default_http(&self) -> SocketAddr;
    /// What `livros bench --http` sends its HTTP API, `requests` requests per phase: writes
    /// of new records first (held to the write goal), then reads of what they wrote.
    fn http_bench(&self, _settings: &Settings, _requests: usize) -> Vec<crate::loadgen::Plan> {
        Vec::new()
    }
    /// How many records it keeps, per store: `(kind, what, count)`, for `livros stats`.
    async fn records(&self, stores: &Stores) -> StoreResult<Vec<(StoreKind, &'static str, i64)>>;
    /// One stored record as JSON, by kind (`customer`) and id, for `livros get`.
    async fn get(
        &self,
        stores: &Stores,
        kind: &str,
        id: &str,
    ) -> Result<serde_json::Value, GetError>;
    /// Events one round of its generator sends (one of each kind).
    fn events_per_round(&self) -> u64;
    /// Runs its generator: `config.count` rounds, or until `shutdown`.
    async fn generate(
        &self,
        bus: Arc<dyn Bus>,
        settings: &Settings,
        config: GenConfig,
        counters: Arc<Counters>,
        shutdown: CancellationToken,
    ) -> Result<Sent, ServiceError>;
}

/// A system's background work: a relay, say, and the handle its HTTP API's write path
/// uses to wake it. Empty for systems that have none.
#[derive(Clone, Default)]
pub struct Workers {
    /// Each runs until the token is cancelled.
    pub relays: Vec<crate::services::outbox::Relay>,
}

impl Workers {
    /// Runs every worker until `shutdown`, in `tasks`.
    pub fn spawn(
        &self,
        tasks: &mut tokio::task::JoinSet<Result<(), ServiceError>>,
        shutdown: &CancellationToken,
    ) {
        for relay in &self.relays {
            tasks.spawn(relay.clone().run(shutdown.clone()));
        }
    }

    /// Wakes every worker: new work was just committed.
    pub fn wake(&self) {
        for relay in &self.relays {
            relay.waker().notify_one();
        }
    }
}

/// Why `livros get` found nothing to answer with.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// The system keeps no record of that kind.
    #[error("{system} keeps no `{kind}`")]
    UnknownKind {
        /// The system asked.
        system: &'static str,
        /// The kind asked for.
        kind: String,
    },
    /// No record of that kind has that id; the message says where it looked.
    #[error("{0}")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Every system this binary runs, in `livros up`'s order.
pub fn all() -> Vec<Arc<dyn System>> {
    vec![
        Arc::new(bookstore::Bookstore),
        Arc::new(streaming::Streaming),
        Arc::new(products::Products),
    ]
}

/// The systems named in `names` (comma-separated, as `--systems` takes them), in the
/// order given; an unknown name is an error that lists the known ones.
pub fn named(names: &str) -> Result<Vec<Arc<dyn System>>, String> {
    let known = all();
    names
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|name| {
            known
                .iter()
                .find(|s| s.name() == name)
                .cloned()
                .ok_or_else(|| {
                    let names: Vec<&str> = known.iter().map(|s| s.name()).collect();
                    format!("no system `{name}`: the systems are {}", names.join(", "))
                })
        })
        .collect()
}

/// Every system's schema, and the core's (the outbox).
pub fn schemas() -> Vec<Schema> {
    let mut schemas = vec![crate::services::outbox::schema()];
    schemas.extend(all().iter().map(|s| s.schema()));
    schemas
}

/// Opens the stores `config` names under `data_dir`, with every system's tables and the
/// data the systems ship.
pub async fn open_stores(data_dir: &Path, config: &StoreConfig) -> Result<Stores, OpenError> {
    let stores = Stores::open(data_dir, config, &schemas()).await?;
    for system in all() {
        system.prepare(&stores).await.map_err(|e| OpenError {
            kind: "document",
            location: stores.describe(StoreKind::Document),
            reason: format!("loading the {} system's data: {e}", system.name()),
            hint: "Check that the store is up and writable.".into(),
        })?;
    }
    Ok(stores)
}
