//! **The streaming platform's routing table: which data goes to which store.** This file
//! is the only place that decides it.
//!
//! | topic | event | store | where exactly | why |
//! |---|---|---|---|---|
//! | `user_events` | `criar_usuario` | relational | table `usuarios` | identity: unique e-mail and CPF, integrity |
//! | `user_events` | `atualizar_assinatura` | relational | table `assinaturas` (one per user, FK) | billing data, joins with users |
//! | `user_events` | `pagamento_realizado` | relational | table `pagamentos` (insert-only, NUMERIC) | money: exact decimals, transactions |
//! | `user_events` | `atualizar_config` | relational | table `preferencias` (one per user, FK) | small, fixed fields |
//! | — (loaded at start) | the catalog | document | collection `catalogo` | titles of different shapes (films, series) |
//! | `user_events` | `registrar_visualizacao` | document | collection `historico_visualizacao` (id: correlation id) | a growing log of semi-structured views |
//! | `user_events` | `registrar_visualizacao` | key-value | set `espectadores:<title>`; sorted sets `ranking:mais-assistidos[:<genre>]` | counts and leaderboards, updated per view |
//! | `user_events` | `avaliar_conteudo` | key-value | hash `avaliacoes:<title>` (user → 1–5), hash `avaliacao:<title>` (soma, total); sorted sets `ranking:mais-bem-avaliados[:<genre>]` | one rating per user, running averages |
//! | `user_events` | `gerar_recomendacoes` | document | collection `recomendacoes` (id: user id) | a computed list, replaced whole |
//! | `user_events` | `criar_sessao`, `atualizar_atividade_sessao`, `encerrar_sessao` | key-value | hash `sessao:<id>` (TTL, renewed by activity); sorted set `sessoes:usuario:<user>` (session → expiry) | volatile, expiring |
//! | `user_events` | `cache_conteudo`, `obter_cache_conteudo` | key-value | hash `conteudo:<title>`, 1 h; hash `cache:estatisticas` (acertos, falhas) | a read-through cache of the catalog |
//! | `user_events` | `obter_historico_visualizacao`, `obter_recomendacoes`, `listar_sessoes_usuario` | — | reads, answered on `response_events` | the seed's reads go through the bus |
//! | `user_events` | every event that writes | relational | table `respostas` (the reply, by correlation id) | the ledger that makes an event's effect and reply happen once |
//! | `response_events` | every reply | key-value | string `streaming:status:<correlation id>`, 1 h | read by `GET /status`, on any gateway replica |
//!
//! The processor answers every event on `response_events`; every topic has a dead-letter
//! topic, `<topic>.dlq`, for what is not an event (or not a reply) at all.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::activity::{Activity, Answer};
use super::entities::{self, Command, Event};
use super::users::{self, Users};
use crate::bus::{Record, Topics};
use crate::services::{Handler, Outcome, Rejection};
use crate::store::{KvWrite, StoreResult, Stores};
use crate::wire::{self, Invalid};

/// The topic the gateway publishes requests on.
pub const USER_EVENTS: &str = "user_events";
/// The topic the processor answers on.
pub const RESPONSE_EVENTS: &str = "response_events";
/// How long a request's status (pending, then its reply) is kept.
pub const STATUS_TTL: Duration = Duration::from_secs(3600);

/// The catalog's collection.
pub const CATALOGO: &str = "catalogo";
/// The views' collection.
pub const HISTORICO: &str = "historico_visualizacao";
/// The recommendations' collection.
pub const RECOMENDACOES: &str = "recomendacoes";
/// How long a title stays in the cache.
pub const CACHE_TTL: Duration = Duration::from_secs(3600);
/// How long a session lives without activity, unless configured.
pub const SESSION_TTL: Duration = Duration::from_secs(30 * 60);
/// The cache's hit and miss counters (a hash: `acertos`, `falhas`).
pub const CACHE_STATS: &str = "cache:estatisticas";

/// A session's hash.
pub fn sessao_key(session_id: &str) -> String {
    format!("sessao:{session_id}")
}

/// A user's sessions: a sorted set of session ids scored by when each expires.
pub fn sessoes_key(user_id: &str) -> String {
    format!("sessoes:usuario:{user_id}")
}

/// A title's cache entry.
pub fn conteudo_key(conteudo_id: &str) -> String {
    format!("conteudo:{conteudo_id}")
}

/// The users who watched a title.
pub fn espectadores_key(conteudo_id: &str) -> String {
    format!("espectadores:{conteudo_id}")
}

/// Each user's rating of a title.
pub fn avaliacoes_key(conteudo_id: &str) -> String {
    format!("avaliacoes:{conteudo_id}")
}

/// A title's running sum and count of ratings.
pub fn avaliacao_key(conteudo_id: &str) -> String {
    format!("avaliacao:{conteudo_id}")
}

/// The leaderboards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranking {
    /// By how many users watched a title.
    MaisAssistidos,
    /// By rating (a Bayesian average; see [`score`](super::activity::score)).
    MaisBemAvaliados,
}

impl Ranking {
    /// Its name in paths and keys.
    pub fn name(self) -> &'static str {
        match self {
            Ranking::MaisAssistidos => "mais-assistidos",
            Ranking::MaisBemAvaliados => "mais-bem-avaliados",
        }
    }

    /// The ranking named `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        [Ranking::MaisAssistidos, Ranking::MaisBemAvaliados]
            .into_iter()
            .find(|r| r.name() == name)
    }
}

/// A leaderboard's sorted set: overall, or of one genre.
pub fn ranking_key(ranking: Ranking, genre: Option<&str>) -> String {
    match genre {
        None => format!("ranking:{}", ranking.name()),
        Some(g) => format!("ranking:{}:{g}", ranking.name()),
    }
}

/// The key of a request's status in the key-value store.
pub fn status_key(correlation_id: &str) -> String {
    format!("streaming:status:{correlation_id}")
}

/// What `GET /status/{id}` answers while the reply has not come (the seed's words).
pub fn pending() -> Value {
    json!({"status": "pendente", "message": "Processamento em andamento"})
}

/// How an error reply is classified, so the gateway can answer the right status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The user does not exist (404).
    NotFound,
    /// The e-mail, CPF or user id is taken (409).
    Conflict,
    /// The event's fields are wrong (422).
    Invalid,
}

impl ErrorKind {
    /// The `erro` field of a reply.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "nao_encontrado",
            ErrorKind::Conflict => "conflito",
            ErrorKind::Invalid => "invalido",
        }
    }
}

/// A reply to `event`, as the seed shapes it.
pub fn reply(event: &Event, result: Result<(String, Value), (ErrorKind, String)>) -> Value {
    let mut reply = json!({
        "correlation_id": event.correlation_id,
        "event_type": "response",
        "original_event_type": event.event_type,
        "timestamp": wire::format_timestamp(&chrono::Utc::now()),
        "source": "s2",
        "target": "s1",
    });
    let map = reply.as_object_mut().expect("an object");
    match result {
        Ok((message, data)) => {
            map.insert("status".into(), "success".into());
            map.insert("message".into(), message.into());
            map.insert("data".into(), data);
        }
        Err((kind, message)) => {
            map.insert("status".into(), "error".into());
            map.insert("message".into(), message.into());
            map.insert("erro".into(), kind.name().into());
        }
    }
    reply
}

/// The processor (seed S2): applies a batch of events in one transaction, each event's
/// reply recorded in `respostas` in that same transaction, and answers on
/// `response_events`.
pub struct Processor {
    /// The stores.
    pub stores: Stores,
    /// Topic names.
    pub topics: Topics,
    /// Views, ratings, sessions, the cache: the document and key-value stores' part.
    pub activity: Activity,
}

impl Processor {
    /// The reply record for `reply`, keyed by correlation id.
    fn record(&self, correlation_id: &str, reply: &Value) -> Record {
        Record {
            topic: self.topics.name(RESPONSE_EVENTS),
            key: Some(correlation_id.to_string()),
            headers: vec![],
            payload: serde_json::to_vec(reply).expect("replies serialize"),
        }
    }

    /// Applies a batch of events, each exactly once, in one transaction, and returns each
    /// event's reply (`None` for what is not an event). Already processed events (a
    /// redelivery, or a copy earlier in the batch) get their recorded reply again and no
    /// second effect. The checks (is the user there, is the e-mail free) are read once for
    /// the batch and kept up to date in memory as the batch goes, so an event sees the user
    /// an earlier event of the same batch creates. `Err` with a rejection means a
    /// constraint caught a race with another processor: nothing was written.
    async fn apply(&self, events: &[Result<Event, Invalid>]) -> StoreResult<Vec<Option<Value>>> {
        let db = &*self.stores.relational;
        let valid: Vec<&Event> = events.iter().filter_map(|e| e.as_ref().ok()).collect();
        let ids: Vec<String> = valid.iter().map(|e| e.correlation_id.clone()).collect();
        let mut replies = db.replies_for(&ids).await?;
        let commands: Vec<_> = valid.iter().map(|e| entities::command(e)).collect();
        let named: Vec<&Command> = commands.iter().filter_map(|c| c.as_ref().ok()).collect();
        let mut taken = db.taken(&named).await?;
        let mut statements = Vec::new();
        let mut elsewhere: Vec<(&Event, &Command)> = Vec::new();
        for (event, command) in valid.iter().zip(&commands) {
            if replies.contains_key(&event.correlation_id) {
                continue;
            }
            let id = &event.correlation_id;
            let answer = match command {
                Err(invalid) => {
                    let answer = reply(event, Err((ErrorKind::Invalid, invalid.to_string())));
                    statements.push(users::recorded(id, &answer));
                    answer
                }
                Ok(command) => match taken.refusal(command) {
                    Some(refusal) => {
                        let answer = reply(event, Err(refusal));
                        if !command.is_read() {
                            statements.push(users::recorded(id, &answer));
                        }
                        answer
                    }
                    None if !command.is_relational() => {
                        elsewhere.push((event, command));
                        continue;
                    }
                    None => {
                        let answer = reply(event, Ok(users::success(command)));
                        statements.extend(users::applied(id, command, &answer));
                        taken.add(command);
                        answer
                    }
                },
            };
            replies.insert(id.clone(), answer);
        }
        // The document and key-value stores' part first: its writes are idempotent, so
        // if the ledger's transaction below fails they are simply applied again.
        let commands: Vec<&Command> = elsewhere.iter().map(|(_, c)| *c).collect();
        let answers: Vec<Answer> = self.activity.apply(&commands).await?;
        for ((event, command), answer) in elsewhere.into_iter().zip(answers) {
            let answer = reply(event, answer);
            if !command.is_read() {
                statements.push(users::recorded(&event.correlation_id, &answer));
            }
            replies.insert(event.correlation_id.clone(), answer);
        }
        if !statements.is_empty() {
            db.transaction(&statements).await?;
        }
        Ok(events
            .iter()
            .map(|e| {
                e.as_ref()
                    .ok()
                    .and_then(|e| replies.get(&e.correlation_id).cloned())
            })
            .collect())
    }

    /// [`Processor::apply`] one event at a time, for a batch a race refused: an event that
    /// still collides has either been processed by the other processor (its reply is
    /// recorded) or lost the race for an e-mail or CPF (an error reply).
    async fn apply_one_by_one(
        &self,
        events: Vec<Result<Event, Invalid>>,
    ) -> StoreResult<Vec<Option<Value>>> {
        let db = &*self.stores.relational;
        let mut answers = Vec::with_capacity(events.len());
        for event in events {
            let one = std::slice::from_ref(&event);
            match self.apply(one).await {
                Ok(mut answer) => answers.push(answer.pop().flatten()),
                // Only an event's writes can collide, and they are refused whole.
                Err(e) if e.is_rejection() && event.is_ok() => {
                    let event = event.as_ref().expect("checked above");
                    let refusal = (
                        ErrorKind::Conflict,
                        format!("não foi possível aplicar: {e}"),
                    );
                    db.record_reply(&event.correlation_id, &reply(event, Err(refusal)))
                        .await?;
                    answers.push(self.apply(one).await?.pop().flatten());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(answers)
    }
}

#[async_trait]
impl Handler for Processor {
    async fn handle(&self, payloads: &[&[u8]]) -> StoreResult<Vec<Outcome>> {
        let events: Vec<Result<Event, Invalid>> =
            payloads.iter().map(|p| entities::parse_event(p)).collect();
        let answers = match self.apply(&events).await {
            Ok(answers) => answers,
            Err(e) if e.is_rejection() => self.apply_one_by_one(events.clone()).await?,
            Err(e) => return Err(e),
        };
        let mut outcomes = Vec::with_capacity(events.len());
        for (event, answer) in events.into_iter().zip(answers) {
            outcomes.push(match (event, answer) {
                (Ok(event), Some(answer)) => Outcome::Stored {
                    label: format!(
                        "{} → {}",
                        event.event_type,
                        answer["status"].as_str().unwrap_or("?")
                    ),
                    out: vec![self.record(&event.correlation_id, &answer)],
                    id: event.correlation_id,
                },
                (Err(invalid), _) => Outcome::Rejected(Rejection::Invalid(invalid)),
                (Ok(event), None) => {
                    return Err(crate::store::StoreError::Fault {
                        store: "streaming processor",
                        reason: format!("no reply recorded for {}", event.correlation_id),
                    });
                }
            });
        }
        Ok(outcomes)
    }
}

/// The gateway's reply reader: keeps each reply as its request's status, for every
/// gateway replica to answer `GET /status/{id}`.
pub struct StatusWriter {
    /// The stores.
    pub stores: Stores,
}

#[async_trait]
impl Handler for StatusWriter {
    async fn handle(&self, payloads: &[&[u8]]) -> StoreResult<Vec<Outcome>> {
        let mut writes = Vec::with_capacity(payloads.len());
        let mut outcomes = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let reply = wire::object(payload).and_then(|map| {
                let id = wire::id(&map, "correlation_id")?;
                Ok((id, map))
            });
            match reply {
                Ok((id, map)) => {
                    writes.push(KvWrite::Set {
                        key: status_key(&id),
                        value: Value::Object(map).to_string(),
                        ttl: Some(STATUS_TTL),
                    });
                    outcomes.push(Outcome::Stored {
                        label: "reply".into(),
                        id,
                        out: vec![],
                    });
                }
                Err(invalid) => outcomes.push(Outcome::Rejected(Rejection::Invalid(invalid))),
            }
        }
        self.stores.key_value.write(&writes).await?;
        Ok(outcomes)
    }
}

/// Why a request body cannot become an event (the gateway's 4xx).
pub type BodyError = Invalid;
