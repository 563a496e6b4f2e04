//! **The streaming platform's routing table: which data goes to which store.** This file
//! is the only place that decides it.
//!
//! | topic | event | store | where exactly | why |
//! |---|---|---|---|---|
//! | `user_events` | `criar_usuario` | relational | table `usuarios` | identity: unique e-mail and CPF, integrity |
//! | `user_events` | `atualizar_assinatura` | relational | table `assinaturas` (one per user, FK) | billing data, joins with users |
//! | `user_events` | `pagamento_realizado` | relational | table `pagamentos` (insert-only, NUMERIC) | money: exact decimals, transactions |
//! | `user_events` | `atualizar_config` | relational | table `preferencias` (one per user, FK) | small, fixed fields |
//! | `response_events` | every reply | key-value | string `streaming:status:<correlation id>`, 1 h | read by `GET /status`, on any gateway replica |
//!
//! The processor answers every event on `response_events`; every topic has a dead-letter
//! topic, `<topic>.dlq`, for what is not an event (or not a reply) at all.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

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
        for (event, command) in valid.iter().zip(&commands) {
            if replies.contains_key(&event.correlation_id) {
                continue;
            }
            let id = &event.correlation_id;
            let answer = match command {
                Err(invalid) => {
                    let answer = reply(event, Err((ErrorKind::Invalid, invalid.to_string())));
                    statements.push(users::refused(id, &answer));
                    answer
                }
                Ok(command) => match taken.refusal(command) {
                    Some(refusal) => {
                        let answer = reply(event, Err(refusal));
                        statements.push(users::refused(id, &answer));
                        answer
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
