//! The bookstore (seeds 1 and 2): customers in the relational store, books in the document
//! store, orders in the key-value store; fed over the bus (`customers`, `books`, `orders`)
//! by its generator or the seed's producer, or over HTTP (S2's REST API, :5000) by the
//! seed's client.
//!
//! - [`entities`]: `Customer`, `Book`, `Order` and the only way to build them from wire bytes.
//! - [`routing`]: **the routing table** and the `Router` that applies it to a batch.
//! - [`customers`]: the customers' SQL, one text for both engines.
//! - [`http`]: the REST API. [`generator`]: S1. [`client`]: S1 posting over HTTP.
//! - [`catalog`]: S1's books: Google Books or the offline catalogue.
//! - [`bench`]: `livros bench` for this system.

pub mod bench;
pub mod catalog;
pub mod client;
pub mod customers;
pub mod entities;
pub mod generator;
pub mod http;
pub mod routing;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use self::customers::Customers;
use self::routing::{BookstoreTopics, Entity, ROUTES, Router};
use super::{GenConfig, GetError, Sent, System, Workers};
use crate::api::ApiConfig;
use crate::app::Settings;
use crate::bus::{Bus, Topics};
use crate::services::s2::{ConsumerSpec, Referenced, group_of};
use crate::services::{Counters, Handler, Outcome, ServiceError};
use crate::store::{Schema, StoreKind, StoreResult, Stores};

static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("migrations/bookstore/postgres")
};
static SQLITE: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("migrations/bookstore/sqlite")
};

/// The bookstore, as the core runs it.
pub struct Bookstore;

/// The consumer of one entity topic: the router, for that entity.
struct EntityHandler {
    router: Router,
    entity: Entity,
}

#[async_trait]
impl Handler for EntityHandler {
    async fn handle(&self, payloads: &[&[u8]]) -> StoreResult<Vec<Outcome>> {
        self.router.apply(self.entity, payloads).await
    }
}

/// The engine's short name (`sqlite`, `postgres`, `redis`…), for output lines.
fn engine(stores: &Stores, kind: StoreKind) -> String {
    let described = stores.describe(kind);
    described.split(' ').next().unwrap_or_default().to_string()
}

impl Bookstore {
    /// The consumers over `router` (the bench keeps the router, for its store timings).
    pub fn consumers_with(router: &Router, settings: &Settings) -> Vec<ConsumerSpec> {
        ROUTES
            .iter()
            .map(|route| ConsumerSpec {
                topic: settings.topics.entity(*route),
                dead_letters: crate::bus::dlq_topic(&settings.topics.entity(*route)),
                group: group_of(&settings.s2.group, route.topic),
                noun: route.entity.name(),
                place: format!(
                    "{} store ({})",
                    route.store.name(),
                    engine(router.stores(), route.store)
                ),
                handler: Arc::new(EntityHandler {
                    router: router.clone(),
                    entity: route.entity,
                }),
                refers_to: route
                    .refers_to
                    .iter()
                    .map(|entity| {
                        let referred = routing::route_of(*entity);
                        Referenced {
                            topic: settings.topics.entity(referred),
                            group: group_of(&settings.s2.group, referred.topic),
                        }
                    })
                    .collect(),
            })
            .collect()
    }
}

#[async_trait]
impl System for Bookstore {
    fn name(&self) -> &'static str {
        "bookstore"
    }

    fn schema(&self) -> Schema {
        Schema {
            postgres: &POSTGRES,
            sqlite: &SQLITE,
            // Books are looked up by author and ISBN (`GET /books`, `livros books`).
            collections: &[(routing::BOOKS_COLLECTION, &["isbn", "authors"])],
        }
    }

    fn topics(&self, topics: &Topics) -> Vec<String> {
        topics.all()
    }

    fn consumers(&self, stores: &Stores, settings: &Settings) -> Vec<ConsumerSpec> {
        Self::consumers_with(&Router::new(stores.clone()), settings)
    }

    fn describe(&self, stores: &Stores, topics: &Topics) -> Vec<String> {
        ROUTES
            .iter()
            .map(|route| {
                let store = stores.describe(route.store);
                format!(
                    "{:<9} → {} store: {store}",
                    topics.entity(*route),
                    route.store.name()
                )
            })
            .collect()
    }

    fn http_bench(&self, settings: &Settings, requests: usize) -> Vec<crate::loadgen::Plan> {
        bench::http_plans(settings, requests)
    }

    fn http(
        &self,
        stores: &Stores,
        _bus: Arc<dyn Bus>,
        _settings: &Settings,
        config: ApiConfig,
        _workers: &Workers,
    ) -> axum::Router {
        http::app(Router::new(stores.clone()), config)
    }

    fn default_http(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, 5000).into()
    }

    async fn records(&self, stores: &Stores) -> StoreResult<Vec<(StoreKind, &'static str, i64)>> {
        Ok(vec![
            (
                StoreKind::Relational,
                Entity::Customer.plural(),
                stores.relational.count_customers().await?,
            ),
            (
                StoreKind::Document,
                Entity::Book.plural(),
                stores.document.count(routing::BOOKS_COLLECTION).await?,
            ),
            (
                StoreKind::KeyValue,
                Entity::Order.plural(),
                stores.key_value.count_prefix("order:").await?,
            ),
        ])
    }

    async fn get(
        &self,
        stores: &Stores,
        kind: &str,
        id: &str,
    ) -> Result<serde_json::Value, GetError> {
        let entity = ROUTES
            .iter()
            .map(|r| r.entity)
            .find(|e| e.name() == kind)
            .ok_or_else(|| GetError::UnknownKind {
                system: self.name(),
                kind: kind.to_string(),
            })?;
        let found = match entity {
            Entity::Customer => stores
                .relational
                .customer(id)
                .await?
                .map(|c| serde_json::to_value(c).expect("customers serialize")),
            Entity::Book => stores.document.get(routing::BOOKS_COLLECTION, id).await?,
            Entity::Order => routing::order_from_hash(
                id,
                &stores.key_value.hgetall(&routing::order_key(id)).await?,
            )
            .map(|o| serde_json::to_value(o).expect("orders serialize")),
        };
        found.ok_or_else(|| {
            GetError::NotFound(format!(
                "no {kind} with id `{id}` in the {} store",
                routing::route_of(entity).store.name()
            ))
        })
    }

    fn events_per_round(&self) -> u64 {
        ROUTES.len() as u64
    }

    async fn generate(
        &self,
        bus: Arc<dyn Bus>,
        settings: &Settings,
        config: GenConfig,
        counters: Arc<Counters>,
        shutdown: CancellationToken,
    ) -> Result<Sent, ServiceError> {
        let (books, source) = catalog::load_for(settings).await;
        tracing::info!("{source}");
        let config = generator::S1Config {
            count: config.count,
            rate: config.rate,
            seed: config.seed,
            print_events: config.print_events,
            topics: settings.topics.clone(),
        };
        let report = generator::run(bus, books, config, counters, shutdown).await?;
        Ok(report.into())
    }
}

impl From<generator::S1Report> for Sent {
    fn from(r: generator::S1Report) -> Self {
        Sent {
            counts: vec![
                (Entity::Customer.plural(), r.customers),
                (Entity::Book.plural(), r.books),
                (Entity::Order.plural(), r.orders),
            ],
            rejected: r.rejected,
        }
    }
}
