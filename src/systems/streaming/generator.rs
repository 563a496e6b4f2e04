//! The streaming platform's generator (seed S1's fake data): users with pt_BR names and
//! valid CPFs, their plans, payments and preferences — as event fields, used by the
//! gateway when a request has no body and by `livros up`'s generator.

use std::sync::Arc;
use std::time::Duration;

use fake::Fake;
use fake::faker::name::raw::{FirstName, LastName};
use fake::locales::PT_BR;
use fake::rand::rngs::StdRng;
use fake::rand::seq::IndexedRandom;
use fake::rand::{RngExt, SeedableRng};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::entities::{EventType, FORMAS_PAGAMENTO, PLANOS, cpf_with_check_digits};
use super::routing::USER_EVENTS;
use crate::bus::{Bus, Record, Topics};
use crate::services::{Counters, ServiceError, send, short};
use crate::wire;

/// Rounds per publish when running flat out: enough to amortize a durable commit.
const ROUNDS_PER_PUBLISH: u64 = 250;
/// Largest generated user id: within JavaScript's exact integers, so every client reads it.
const MAX_USER_ID: i64 = (1 << 53) - 1;

/// Fake data for events.
pub struct Fakes {
    rng: StdRng,
}

impl Fakes {
    /// Seeded for reproducibility when `seed` is given.
    pub fn new(seed: Option<u64>) -> Self {
        Self {
            rng: match seed {
                Some(s) => StdRng::seed_from_u64(s),
                None => fake::rand::make_rng(),
            },
        }
    }

    /// The payload fields of an event of `kind` for `user_id` (a new id for a new user).
    pub fn fields(&mut self, kind: EventType, user_id: Option<i64>) -> Map<String, Value> {
        let rng = &mut self.rng;
        let value = match kind {
            EventType::CriarUsuario => {
                let first: String = FirstName(PT_BR).fake_with_rng(rng);
                let last: String = LastName(PT_BR).fake_with_rng(rng);
                let nine: [u32; 9] = std::array::from_fn(|_| rng.random_range(0..10));
                let n: u32 = rng.random_range(1..100_000);
                let domain = ["example.com", "example.org", "example.net"]
                    .choose(rng)
                    .expect("non-empty");
                json!({
                    "user_id": user_id.unwrap_or_else(|| rng.random_range(1..=MAX_USER_ID)),
                    "nome": format!("{first} {last}"),
                    "email": format!("{}.{}{n}@{domain}", slug(&first), slug(&last)),
                    "cpf": cpf_with_check_digits(nine),
                })
            }
            EventType::AtualizarAssinatura => json!({
                "user_id": user_id,
                "plano": PLANOS.choose(rng).expect("non-empty"),
                "status": "ativa",
            }),
            EventType::PagamentoRealizado => {
                let cents: u32 = rng.random_range(1990..=4990);
                json!({
                    "user_id": user_id,
                    "valor": format!("{}.{:02}", cents / 100, cents % 100),
                    "forma_pagamento": FORMAS_PAGAMENTO.choose(rng).expect("non-empty"),
                    "status": "aprovado",
                })
            }
            EventType::AtualizarConfig => {
                let idioma = ["pt-BR", "en-US", "es-ES"].choose(rng).expect("non-empty");
                let tema = ["claro", "escuro"].choose(rng).expect("non-empty");
                json!({
                    "user_id": user_id,
                    "idioma": idioma,
                    "notificacoes": rng.random_bool(0.5),
                    "tema": tema,
                })
            }
        };
        match value {
            Value::Object(map) => map,
            _ => unreachable!("json! of an object"),
        }
    }
}

/// Lower-case ASCII for an e-mail local part.
fn slug(s: &str) -> String {
    s.chars()
        .filter_map(|c| {
            let c = c.to_lowercase().next().unwrap_or(c);
            Some(match c {
                'á' | 'à' | 'â' | 'ã' => 'a',
                'é' | 'ê' => 'e',
                'í' => 'i',
                'ó' | 'ô' | 'õ' => 'o',
                'ú' | 'ü' => 'u',
                'ç' => 'c',
                c if c.is_ascii_alphanumeric() => c,
                _ => return None,
            })
        })
        .collect()
}

/// An event on `user_events` in the seed's flat shape, keyed by user id.
pub fn event_record(
    topics: &Topics,
    kind: &str,
    correlation_id: &str,
    fields: &Map<String, Value>,
) -> Record {
    let mut event = fields.clone();
    event.insert("event_type".into(), kind.into());
    event.insert("correlation_id".into(), correlation_id.into());
    event.insert(
        "timestamp".into(),
        wire::format_timestamp(&chrono::Utc::now()).into(),
    );
    event.insert("source".into(), "s1".into());
    event.insert("target".into(), "s2".into());
    let key = fields.get("user_id").map(|v| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    Record {
        topic: topics.name(USER_EVENTS),
        key,
        headers: vec![],
        payload: serde_json::to_vec(&Value::Object(event)).expect("events serialize"),
    }
}

/// Runs the generator: `count` rounds (a new user, then its plan, a payment and its
/// preferences: one event of each type), at `rate` events per second (0: flat out).
pub async fn run(
    bus: Arc<dyn Bus>,
    topics: Topics,
    config: crate::systems::GenConfig,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) -> Result<[u64; 4], ServiceError> {
    let mut fakes = Fakes::new(config.seed);
    let mut sent = [0_u64; 4];
    let interval = (config.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / config.rate));
    let mut round = 0_u64;
    while config.count.is_none_or(|n| round < n) {
        // At a set rate, a round at a time; flat out, many rounds per (durable) publish.
        let rounds = match (interval, config.count) {
            (Some(_), _) => 1,
            (None, Some(n)) => (n - round).min(ROUNDS_PER_PUBLISH),
            (None, None) => ROUNDS_PER_PUBLISH,
        };
        round += rounds;
        let mut records: Vec<Record> = Vec::with_capacity(rounds as usize * 4);
        let mut lines: Vec<String> = Vec::with_capacity(rounds as usize * 4);
        for _ in 0..rounds {
            let user = fakes.fields(EventType::CriarUsuario, None);
            let user_id = user["user_id"].as_i64();
            for kind in EventType::ALL {
                let fields = match kind {
                    EventType::CriarUsuario => user.clone(),
                    other => fakes.fields(other, user_id),
                };
                let correlation_id = uuid::Uuid::new_v4().to_string();
                let line = format!(
                    "{} {} (user {})",
                    kind.name(),
                    short(&correlation_id),
                    user_id.unwrap_or_default()
                );
                records.push(event_record(&topics, kind.name(), &correlation_id, &fields));
                lines.push(line);
            }
        }
        let done = send(
            &*bus,
            &records,
            &lines,
            interval,
            config.print_events,
            &counters,
            &shutdown,
        )
        .await?;
        for record in &records[..done] {
            let kind = serde_json::from_slice::<Value>(&record.payload)
                .ok()
                .and_then(|e| e["event_type"].as_str().and_then(EventType::from_name));
            if let Some(i) = kind.and_then(|k| EventType::ALL.iter().position(|t| *t == k)) {
                sent[i] += 1;
            }
        }
        if done < records.len() {
            break;
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::systems::streaming::entities::{command, parse_event};

    #[test]
    fn generated_events_are_valid() {
        let mut fakes = Fakes::new(Some(3));
        let topics = Topics::default();
        for _ in 0..50 {
            let user = fakes.fields(EventType::CriarUsuario, None);
            let id = user["user_id"].as_i64();
            for kind in EventType::ALL {
                let fields = if kind == EventType::CriarUsuario {
                    user.clone()
                } else {
                    fakes.fields(kind, id)
                };
                let record = event_record(&topics, kind.name(), "c", &fields);
                let event = parse_event(&record.payload).unwrap();
                command(&event).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            }
        }
    }
}
