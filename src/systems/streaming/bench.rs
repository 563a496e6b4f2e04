//! `livros bench --system streaming`: events per second through the processor (the
//! generator's mixed rounds, then views alone, into the document and key-value stores),
//! and what `livros bench --http` sends the gateway.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Streaming;
use super::entities::{EventType, cpf_with_check_digits};
use super::generator::{Fakes, ROUND, event_record};
use super::routing::{RESPONSE_EVENTS, USER_EVENTS};
use super::users::Users;
use crate::app::{self, AppError, Pipeline, Settings, Systems};
use crate::bus::Record;
use crate::loadgen::{Plan, Request, rate};
use crate::services::{Counters, ServiceError};
use crate::store::Page;
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
    /// The document and key-value stores.
    pub polyglot: String,
    /// Views processed alone afterwards.
    pub views: u64,
    /// Time for the processor to apply and answer them.
    pub views_processed: Duration,
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
        )?;
        writeln!(f, "views into: {}", self.polyglot)?;
        writeln!(
            f,
            "views:       {:>10.0} views/s ({} in {:.2?}: each a history document, its viewer counted, the leaderboards raised, its reply recorded and published)",
            rate(self.views, self.views_processed),
            self.views,
            self.views_processed
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

/// Publishes about `events` events in the generator's rounds and times the processor on
/// them; then publishes `events` views by the users it created and times those alone.
pub async fn run(settings: &Settings, events: u64) -> Result<ProcessorReport, AppError> {
    let settings = &alone(settings);
    let bus = app::open_bus(settings).await?;
    let stores = app::open_stores(settings).await?;
    let rounds = events.div_ceil(ROUND.len() as u64);
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
    let mut pipeline = Pipeline::start_with(
        bus.clone(),
        Some(stores.clone()),
        consumers,
        false,
        settings,
        false,
    );
    pipeline
        .drain(|| crate::services::s2::lag(&*bus, &processor))
        .await?;
    let processed = started.elapsed();
    pipeline
        .drain(|| crate::services::s2::lag(&*bus, &replies))
        .await?;
    let answered = started.elapsed();

    // Views alone, by the users the rounds created.
    let users: Vec<i64> = stores
        .relational
        .users(
            None,
            Page {
                skip: 0,
                limit: 10_000,
            },
        )
        .await
        .map_err(ServiceError::Store)?
        .iter()
        .map(|u| u.user_id)
        .collect();
    let mut fakes = Fakes::new(Some(2));
    let views: Vec<Record> = (0..events as usize)
        .map(|i| {
            let user = users.get(i % users.len().max(1)).copied();
            let fields = fakes.fields(EventType::RegistrarVisualizacao, user);
            event_record(
                &settings.topics,
                EventType::RegistrarVisualizacao.name(),
                &uuid::Uuid::new_v4().to_string(),
                &fields,
            )
        })
        .collect();
    for chunk in views.chunks(1_000) {
        bus.publish(chunk).await.map_err(ServiceError::Bus)?;
    }
    let started = Instant::now();
    pipeline
        .drain(|| crate::services::s2::lag(&*bus, &processor))
        .await?;
    let views_processed = started.elapsed();
    pipeline.stop().await?;
    Ok(ProcessorReport {
        setup,
        events: rounds * ROUND.len() as u64,
        publish,
        processed,
        answered,
        polyglot: format!(
            "{}, {}",
            stores.describe(crate::store::StoreKind::Document),
            stores.describe(crate::store::StoreKind::KeyValue)
        ),
        views: views.len() as u64,
        views_processed,
    })
}

/// What `livros bench --http` sends the gateway: `requests` user creations and as many
/// views, published without waiting (the gateway's write: the request's status kept, the
/// event on the bus), then round trips through the processor (`?wait=5`) and the
/// leaderboards those views fed.
pub fn http_plans(requests: usize) -> Vec<Plan> {
    // The gateway makes the rest of each event up; new users get an e-mail and a CPF of
    // their own, as made-up ones meet (nine random digits: among the 40,000 users of a
    // run, two CPFs alike are likely, and the round trip answered 409).
    let run = uuid::Uuid::new_v4().simple().to_string();
    let offset = uuid::Uuid::new_v4().as_u128() % 10_000_000;
    let publish = |what: &str, path: &str, expect: u16, write: bool, phase: u32| Plan {
        what: what.into(),
        expect,
        write,
        requests: (0..requests)
            .map(|i| Request {
                method: "POST".into(),
                path: path.into(),
                body: path.starts_with("/usuarios").then(|| {
                    serde_json::json!({
                        "email": format!("bench-{run}-{phase}-{i}@example.com"),
                        "cpf": bench_cpf(phase, (offset + i as u128) % 10_000_000),
                    })
                    .to_string()
                }),
            })
            .collect(),
    };
    let read = |path: &str| Plan {
        what: format!("GET {path}"),
        expect: 200,
        write: false,
        requests: vec![Request::get(path); requests],
    };
    vec![
        publish("POST /usuarios", "/usuarios", 200, true, 1),
        publish(
            "POST /historico-visualizacao",
            "/historico-visualizacao",
            200,
            true,
            2,
        ),
        publish(
            "POST /usuarios?wait=5 (round trip)",
            "/usuarios?wait=5",
            201,
            false,
            3,
        ),
        read("/rankings/mais-assistidos?limit=10"),
        read("/rankings/mais-bem-avaliados?genero=drama&limit=10"),
    ]
}

/// A valid CPF: the bench's `phase` (1–9), a 0 (so never one digit repeated), then the
/// seven digits of `n` (below 10⁷); distinct for every user of one run.
fn bench_cpf(phase: u32, n: u128) -> String {
    let mut nine = [phase % 10, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut rest = n;
    for digit in nine[2..].iter_mut().rev() {
        *digit = (rest % 10) as u32;
        rest /= 10;
    }
    cpf_with_check_digits(nine)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::systems::streaming::entities::cpf_is_valid;

    #[test]
    fn bench_cpfs_are_valid_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for phase in [1, 3] {
            for n in [0, 1, 1_111_111, 9_999_999] {
                let cpf = bench_cpf(phase, n);
                assert!(cpf_is_valid(&cpf), "{cpf} is not a valid CPF");
                assert!(seen.insert(cpf.clone()), "{cpf} made twice");
            }
        }
    }
}
