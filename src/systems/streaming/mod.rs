//! The streaming platform (seeds 3 and 4): a gateway publishes user events with a
//! correlation id on `user_events`; the processor applies each exactly once — users,
//! subscriptions, payments and preferences in the relational store; the catalog, viewing
//! history and recommendations in the document store; sessions, the cache, view counts
//! and leaderboards in the key-value store — and answers on `response_events`; the
//! gateway keeps each answer in the key-value store for `GET /status/{id}`.
//!
//! - [`entities`]: events, records, and their validation (CPF check digits included).
//! - [`routing`]: **the routing table**, the processor and the status writer.
//! - [`users`]: its SQL, one text for both engines.
//! - [`activity`]: views, ratings, leaderboards, recommendations, sessions, the cache.
//! - [`catalog`]: the films and series it ships, loaded into `catalogo` at start.
//! - [`http`]: the gateway, :8000. [`generator`]: the seed's fake data, and S1.
//! - [`bench`]: `livros bench --system streaming`.

pub mod activity;
pub mod bench;
pub mod catalog;
pub mod entities;
pub mod generator;
pub mod http;
pub mod routing;
pub mod users;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use self::activity::Activity;
use self::entities::EventType;
use self::routing::{
    CATALOGO, HISTORICO, Processor, RECOMENDACOES, RESPONSE_EVENTS, SESSION_TTL, StatusWriter,
    USER_EVENTS,
};
use self::users::Users;
use super::{GenConfig, GetError, Sent, System, Workers};
use crate::api::ApiConfig;
use crate::app::Settings;
use crate::bus::{Bus, Topics, dlq_topic};
use crate::services::s2::{ConsumerSpec, group_of};
use crate::services::{Counters, ServiceError};
use crate::store::{Schema, StoreKind, StoreResult, Stores};

static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("migrations/streaming/postgres")
};
static SQLITE: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("migrations/streaming/sqlite")
};

/// The streaming platform, as the core runs it.
pub struct Streaming;

#[async_trait]
impl System for Streaming {
    fn name(&self) -> &'static str {
        "streaming"
    }

    fn schema(&self) -> Schema {
        Schema {
            postgres: &POSTGRES,
            sqlite: &SQLITE,
            collections: &[
                (CATALOGO, &["generos", "tipo"]),
                (HISTORICO, &["user_id", "data"]),
                (RECOMENDACOES, &[]),
            ],
        }
    }

    async fn prepare(&self, stores: &Stores) -> StoreResult<()> {
        let n = catalog::load(&*stores.document).await?;
        tracing::debug!(titles = n, "catalog titles written into `{CATALOGO}`");
        Ok(())
    }

    fn topics(&self, topics: &Topics) -> Vec<String> {
        [USER_EVENTS, RESPONSE_EVENTS]
            .iter()
            .flat_map(|t| [topics.name(t), dlq_topic(&topics.name(t))])
            .collect()
    }

    fn consumers(&self, stores: &Stores, settings: &Settings) -> Vec<ConsumerSpec> {
        vec![
            ConsumerSpec {
                topic: settings.topics.name(USER_EVENTS),
                dead_letters: dlq_topic(&settings.topics.name(USER_EVENTS)),
                refers_to: Vec::new(),
                group: group_of(&settings.s2.group, USER_EVENTS),
                noun: "event",
                place: format!(
                    "relational ({}), document ({}) and key-value ({}) stores",
                    engine(stores, StoreKind::Relational),
                    engine(stores, StoreKind::Document),
                    engine(stores, StoreKind::KeyValue)
                ),
                handler: Arc::new(Processor {
                    stores: stores.clone(),
                    topics: settings.topics.clone(),
                    activity: activity(stores, settings),
                }),
            },
            ConsumerSpec {
                topic: settings.topics.name(RESPONSE_EVENTS),
                dead_letters: dlq_topic(&settings.topics.name(RESPONSE_EVENTS)),
                refers_to: Vec::new(),
                group: group_of(&settings.s2.group, RESPONSE_EVENTS),
                noun: "reply",
                place: format!("key-value store ({})", engine(stores, StoreKind::KeyValue)),
                handler: Arc::new(StatusWriter {
                    stores: stores.clone(),
                }),
            },
        ]
    }

    fn describe(&self, stores: &Stores, topics: &Topics) -> Vec<String> {
        vec![
            format!(
                "{:<9} → relational store: {}",
                topics.name(USER_EVENTS),
                stores.describe(StoreKind::Relational)
            ),
            format!(
                "{:<9} → document store (catalog, views, recommendations): {}",
                topics.name(USER_EVENTS),
                stores.describe(StoreKind::Document)
            ),
            format!(
                "{:<9} → key-value store (sessions, cache, leaderboards): {}",
                topics.name(USER_EVENTS),
                stores.describe(StoreKind::KeyValue)
            ),
            format!(
                "{:<9} → key-value store: {}",
                topics.name(RESPONSE_EVENTS),
                stores.describe(StoreKind::KeyValue)
            ),
        ]
    }

    fn http_bench(&self, _settings: &Settings, requests: usize) -> Vec<crate::loadgen::Plan> {
        bench::http_plans(requests)
    }

    fn http(
        &self,
        stores: &Stores,
        bus: Arc<dyn Bus>,
        settings: &Settings,
        config: ApiConfig,
        _workers: &Workers,
    ) -> axum::Router {
        http::app(
            stores.clone(),
            bus,
            settings.topics.clone(),
            activity(stores, settings),
            config,
        )
    }

    fn default_http(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, 8000).into()
    }

    async fn records(&self, stores: &Stores) -> StoreResult<Vec<(StoreKind, &'static str, i64)>> {
        let (users, payments, events) = stores.relational.counts().await?;
        Ok(vec![
            (StoreKind::Relational, "usuarios", users),
            (StoreKind::Relational, "pagamentos", payments),
            (StoreKind::Relational, "respostas", events),
            (
                StoreKind::Document,
                CATALOGO,
                stores.document.count(CATALOGO).await?,
            ),
            (
                StoreKind::Document,
                HISTORICO,
                stores.document.count(HISTORICO).await?,
            ),
            (
                StoreKind::KeyValue,
                "sessao:*",
                stores.key_value.count_prefix("sessao:").await?,
            ),
        ])
    }

    async fn get(
        &self,
        stores: &Stores,
        kind: &str,
        id: &str,
    ) -> Result<serde_json::Value, GetError> {
        let not_found =
            |what: &str| GetError::NotFound(format!("no {kind} with id `{id}` in {what}"));
        match kind {
            "usuario" => {
                let user_id: i64 = id
                    .parse()
                    .map_err(|_| GetError::NotFound(format!("`{id}` is not a user id")))?;
                stores
                    .relational
                    .user_view(user_id)
                    .await?
                    .ok_or_else(|| not_found("the relational store"))
            }
            "conteudo" => stores
                .document
                .get(CATALOGO, id)
                .await?
                .ok_or_else(|| not_found("the catalog")),
            "visualizacao" => stores
                .document
                .get(HISTORICO, id)
                .await?
                .ok_or_else(|| not_found("the viewing history")),
            "sessao" => {
                let fields = stores.key_value.hgetall(&routing::sessao_key(id)).await?;
                if fields.is_empty() {
                    return Err(not_found("the key-value store (or it expired)"));
                }
                Ok(serde_json::to_value(fields).expect("strings serialize"))
            }
            _ => Err(GetError::UnknownKind {
                system: self.name(),
                kind: kind.to_string(),
            }),
        }
    }

    fn events_per_round(&self) -> u64 {
        generator::ROUND.len() as u64
    }

    async fn generate(
        &self,
        bus: Arc<dyn Bus>,
        settings: &Settings,
        config: GenConfig,
        counters: Arc<Counters>,
        shutdown: CancellationToken,
    ) -> Result<Sent, ServiceError> {
        let sent = generator::run(bus, settings.topics.clone(), config, counters, shutdown).await?;
        Ok(Sent {
            counts: sent
                .into_iter()
                .map(|(kind, n): (EventType, u64)| (kind.name(), n))
                .collect(),
            rejected: 0,
        })
    }
}

/// The option (in [`Settings::options`]) holding how many seconds a session lives
/// without activity.
pub const SESSION_TTL_OPTION: &str = "streaming.session_ttl_seconds";

/// The activity half of the platform, with the settings' session lifetime.
pub fn activity(stores: &Stores, settings: &Settings) -> Activity {
    let session_ttl = settings
        .options
        .get(SESSION_TTL_OPTION)
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(SESSION_TTL, std::time::Duration::from_secs_f64);
    Activity {
        stores: stores.clone(),
        titles: catalog::Titles::default(),
        session_ttl,
    }
}

/// The engine's short name, for output lines.
fn engine(stores: &Stores, kind: StoreKind) -> String {
    stores
        .describe(kind)
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_string()
}
