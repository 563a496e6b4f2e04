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

use super::entities::{self, Event};
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

/// The processor (seed S2): applies each event in its own transaction, with its reply
/// recorded in `respostas` in that same transaction, and answers on `response_events`.
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

    /// Applies one event, exactly once, and returns its reply.
    async fn process(&self, event: &Event) -> StoreResult<Value> {
        let db = &*self.stores.relational;
        // Already processed (a redelivery): the same reply again, no second effect.
        if let Some(stored) = db.reply_for(&event.correlation_id).await? {
            return Ok(stored);
        }
        let command = match entities::command(event) {
            Ok(command) => command,
            Err(invalid) => {
                let reply = reply(event, Err((ErrorKind::Invalid, invalid.to_string())));
                return self.settle(event, reply).await;
            }
        };
        if let Some(refusal) = db.refusal(&command).await? {
            return self.settle(event, reply(event, Err(refusal))).await;
        }
        let success = reply(event, Ok(users::success(&command)));
        match db.apply(&event.correlation_id, &command, &success).await {
            Ok(()) => Ok(success),
            // A constraint: another processor got there first (the ledger has it), or a
            // race on an e-mail or CPF since the check above.
            Err(e) if e.is_rejection() => match db.reply_for(&event.correlation_id).await? {
                Some(stored) => Ok(stored),
                None => {
                    let refusal = (
                        ErrorKind::Conflict,
                        format!("não foi possível aplicar: {e}"),
                    );
                    self.settle(event, reply(event, Err(refusal))).await
                }
            },
            Err(e) => Err(e),
        }
    }

    /// Records an error reply as the event's one outcome (or the one recorded first).
    async fn settle(&self, event: &Event, reply: Value) -> StoreResult<Value> {
        let db = &*self.stores.relational;
        db.record_reply(&event.correlation_id, &reply).await?;
        Ok(db.reply_for(&event.correlation_id).await?.unwrap_or(reply))
    }
}

#[async_trait]
impl Handler for Processor {
    async fn handle(&self, payloads: &[&[u8]]) -> StoreResult<Vec<Outcome>> {
        let mut outcomes = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let event = match entities::parse_event(payload) {
                Ok(event) => event,
                Err(invalid) => {
                    outcomes.push(Outcome::Rejected(Rejection::Invalid(invalid)));
                    continue;
                }
            };
            let reply = self.process(&event).await?;
            let label = format!(
                "{} → {}",
                event.event_type,
                reply["status"].as_str().unwrap_or("?")
            );
            outcomes.push(Outcome::Stored {
                out: vec![self.record(&event.correlation_id, &reply)],
                id: event.correlation_id,
                label,
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
