//! The streaming platform's generator (seed S1's fake data): users with pt_BR names and
//! valid CPFs, their plans, payments and preferences, their sessions, what they watch
//! and how they rate it — as event fields, used by the gateway for the fields a request
//! leaves out and by `livros up`'s generator.
//!
//! Views and ratings follow the catalog unevenly, as real audiences do: a few titles draw
//! most views (the lower a title's place in a fixed shuffle, the likelier), and each
//! title has its own typical rating, so the leaderboards have something to show.

use std::sync::Arc;

use fake::Fake;
use fake::faker::name::raw::{FirstName, LastName};
use fake::locales::PT_BR;
use fake::rand::rngs::StdRng;
use fake::rand::seq::IndexedRandom;
use fake::rand::{RngExt, SeedableRng};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::catalog;
use super::entities::{EventType, FORMAS_PAGAMENTO, PLANOS, cpf_with_check_digits};
use super::routing::USER_EVENTS;
use crate::bus::{Bus, Record, Topics};
use crate::services::{Counters, ServiceError, send_rounds, short};
use crate::wire;

/// Rounds per publish when running flat out: enough to amortize a durable commit.
const ROUNDS_PER_PUBLISH: u64 = 100;

/// One round of the generator: a new user, what they pay and prefer, a session in which
/// they watch three titles and rate one, a heartbeat, and their recommendations.
pub const ROUND: [EventType; 12] = [
    EventType::CriarUsuario,
    EventType::AtualizarAssinatura,
    EventType::PagamentoRealizado,
    EventType::AtualizarConfig,
    EventType::CriarSessao,
    EventType::RegistrarVisualizacao,
    EventType::RegistrarVisualizacao,
    EventType::RegistrarVisualizacao,
    EventType::AvaliarConteudo,
    EventType::AtualizarAtividadeSessao,
    EventType::GerarRecomendacoes,
    EventType::ObterCacheConteudo,
];

/// The kinds of event a round sends, each once, in the order of [`ROUND`].
pub fn round_kinds() -> Vec<EventType> {
    let mut kinds = Vec::new();
    for kind in ROUND {
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    kinds
}

/// Devices sessions are opened on.
const DISPOSITIVOS: [&str; 5] = ["web", "android", "ios", "smart-tv", "chromecast"];
/// Where users watch from.
const CIDADES: [&str; 8] = [
    "São Paulo",
    "Rio de Janeiro",
    "Belo Horizonte",
    "Salvador",
    "Recife",
    "Porto Alegre",
    "Curitiba",
    "Manaus",
];
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

    /// A title id, the popular ones likelier: the square of a uniform draw favours the
    /// first places of a fixed shuffle of the catalog.
    fn title(&mut self) -> (usize, String) {
        let n = catalog::shipped().len();
        let draw: f64 = self.rng.random();
        let place = ((draw * draw) * n as f64) as usize % n;
        // A fixed shuffle, so the favourites are not simply the first lines of the file.
        let index = (place * 7919 + 13) % n;
        (index, (index + 1).to_string())
    }

    /// The payload fields of an event of `kind` for `user_id` (a new id for a new user;
    /// a new session id for a session event).
    pub fn fields(&mut self, kind: EventType, user_id: Option<i64>) -> Map<String, Value> {
        // Seed 4's gateway made up whatever its caller left out, the user included.
        let user_id = match kind {
            EventType::CriarUsuario
            | EventType::AtualizarAssinatura
            | EventType::PagamentoRealizado
            | EventType::AtualizarConfig => user_id,
            _ => Some(user_id.unwrap_or_else(|| self.rng.random_range(1..=MAX_USER_ID))),
        };
        let value = match kind {
            EventType::RegistrarVisualizacao => {
                let (_, conteudo_id) = self.title();
                let rng = &mut self.rng;
                let posicao: f64 = if rng.random_bool(0.35) {
                    rng.random_range(90.0..=100.0)
                } else {
                    rng.random_range(1.0..90.0)
                };
                json!({
                    "user_id": user_id,
                    "conteudo_id": conteudo_id,
                    "tempo_assistido": rng.random_range(1..=180),
                    "posicao": (posicao * 10.0).round() / 10.0,
                })
            }
            EventType::AvaliarConteudo => {
                let (index, conteudo_id) = self.title();
                // Each title has its own typical rating, from 2 to 5.
                let typical = 2 + (index * 31 % 4) as i64;
                let nota = (typical + self.rng.random_range(-1..=1)).clamp(1, 5);
                json!({"user_id": user_id, "conteudo_id": conteudo_id, "nota": nota})
            }
            EventType::CriarSessao => json!({
                "user_id": user_id,
                "session_id": uuid::Uuid::new_v4().to_string(),
                "dispositivo": DISPOSITIVOS.choose(&mut self.rng).expect("non-empty"),
                "localizacao": CIDADES.choose(&mut self.rng).expect("non-empty"),
            }),
            EventType::AtualizarAtividadeSessao | EventType::EncerrarSessao => {
                json!({"session_id": uuid::Uuid::new_v4().to_string()})
            }
            EventType::ObterHistoricoVisualizacao => json!({"user_id": user_id, "limit": 20}),
            EventType::GerarRecomendacoes
            | EventType::ObterRecomendacoes
            | EventType::ListarSessoesUsuario => json!({"user_id": user_id}),
            EventType::CacheConteudo | EventType::ObterCacheConteudo => {
                json!({"conteudo_id": self.title().1})
            }
            other => self.account_fields(other, user_id),
        };
        match value {
            Value::Object(map) => map,
            _ => unreachable!("json! of an object"),
        }
    }

    /// The fields of the account events (seed 3's).
    fn account_fields(&mut self, kind: EventType, user_id: Option<i64>) -> Value {
        let rng = &mut self.rng;
        match kind {
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
            other => unreachable!("{other:?} is not an account event"),
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

/// The events of one round for a new user, with their log lines.
fn round(fakes: &mut Fakes, topics: &Topics) -> Vec<(Record, String)> {
    let user = fakes.fields(EventType::CriarUsuario, None);
    let user_id = user["user_id"].as_i64();
    let mut session = None;
    ROUND
        .iter()
        .map(|kind| {
            let mut fields = match kind {
                EventType::CriarUsuario => user.clone(),
                other => fakes.fields(*other, user_id),
            };
            match kind {
                EventType::CriarSessao => session = fields.get("session_id").cloned(),
                EventType::AtualizarAtividadeSessao | EventType::EncerrarSessao => {
                    if let Some(id) = &session {
                        fields.insert("session_id".into(), id.clone());
                    }
                    // Keyed by user, so it follows the session's creation in order.
                    fields.insert("user_id".into(), user_id.into());
                }
                _ => {}
            }
            let correlation_id = uuid::Uuid::new_v4().to_string();
            let line = format!(
                "{} {} (user {})",
                kind.name(),
                short(&correlation_id),
                user_id.unwrap_or_default()
            );
            (
                event_record(topics, kind.name(), &correlation_id, &fields),
                line,
            )
        })
        .collect()
}

/// Runs the generator: `count` rounds (see [`ROUND`]), at `rate` events per second (0:
/// flat out). Answers how many events of each kind of [`round_kinds`] it sent.
pub async fn run(
    bus: Arc<dyn Bus>,
    topics: Topics,
    config: crate::systems::GenConfig,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) -> Result<Vec<(EventType, u64)>, ServiceError> {
    let mut fakes = Fakes::new(config.seed);
    let kinds = round_kinds();
    let mut sent = vec![0_u64; kinds.len()];
    let pace = config.pace(ROUNDS_PER_PUBLISH);
    send_rounds(
        &*bus,
        pace,
        &counters,
        &shutdown,
        || round(&mut fakes, &topics),
        // Every round is ROUND, in order: the place says the kind.
        |place, _| {
            let kind = ROUND[place % ROUND.len()];
            if let Some(i) = kinds.iter().position(|t| *t == kind) {
                sent[i] += 1;
            }
        },
    )
    .await?;
    Ok(kinds.into_iter().zip(sent).collect())
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
            for (record, _) in round(&mut fakes, &topics) {
                let event = parse_event(&record.payload).unwrap();
                command(&event).unwrap_or_else(|e| panic!("{}: {e}", event.event_type));
            }
            for kind in EventType::ALL {
                let fields = fakes.fields(kind, Some(7));
                let record = event_record(&topics, kind.name(), "c", &fields);
                let event = parse_event(&record.payload).unwrap();
                command(&event).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            }
        }
    }

    #[test]
    fn views_favour_some_titles() {
        let mut fakes = Fakes::new(Some(5));
        let mut counts = std::collections::HashMap::<String, u32>::new();
        for _ in 0..5_000 {
            *counts.entry(fakes.title().1).or_default() += 1;
        }
        let mut by_count: Vec<u32> = counts.values().copied().collect();
        by_count.sort_unstable_by(|a, b| b.cmp(a));
        let top_tenth: u32 = by_count.iter().take(by_count.len() / 10).sum();
        assert!(
            top_tenth > 5_000 / 5,
            "the top tenth drew {top_tenth} of 5,000"
        );
    }
}
