//! S1's client mode (seed 2): the same generated data, posted to S2's REST API instead of
//! published on the bus, with every exchange appended to `s1_log.json`.
//!
//! Each line of the log is one JSON object:
//! `{"timestamp","request":{"method","url","payload"},"response":{"status_code","body"}}`,
//! or, when no answer came, `"error"` in place of `"response"`. A connection error or a
//! 5xx is retried with backoff (the seed's client crashed there); a 4xx is the server's
//! final word on that record, logged and counted as rejected.
//!
//! Within a round the customer and book are posted before the order for them; up to
//! `concurrency` rounds are in flight at once.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::entities::Book;
use super::generator::{Generator, S1Config, S1Report};
use super::routing::Entity;
use crate::services::{Counters, ServiceError, short};

/// Where and how S1 posts.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    /// The API's root, e.g. `http://127.0.0.1:5000`.
    pub base: url::Url,
    /// Bearer token for writes, when the server requires one.
    pub token: Option<String>,
    /// The exchange log (`s1_log.json`).
    pub log_path: PathBuf,
    /// Rounds in flight at once (only when running flat out; a set rate posts one by one).
    pub concurrency: usize,
    /// Longest wait for one answer before it counts as a connection error.
    pub timeout: Duration,
}

/// How one post ended.
enum Posted {
    Accepted,
    Refused,
    Stopped,
}

struct Client {
    http: reqwest::Client,
    target: HttpTarget,
    log: Mutex<std::fs::File>,
    print_events: bool,
}

impl Client {
    fn log_line(&self, line: &Value) -> Result<(), ServiceError> {
        let mut text = serde_json::to_vec(line).expect("JSON values serialize");
        text.push(b'\n');
        let mut file = self.log.lock().expect("log lock is never poisoned");
        // One write per line on an O_APPEND file: lines never interleave.
        file.write_all(&text)
            .map_err(|source| ServiceError::LogFile {
                path: self.target.log_path.display().to_string(),
                source,
            })
    }

    /// Posts `payload` to `/<path>` until the server answers with something other than
    /// 5xx or 429, or `shutdown` is cancelled. Every attempt is logged.
    async fn post(
        &self,
        entity: Entity,
        label: &str,
        payload: &Value,
        shutdown: &CancellationToken,
    ) -> Result<Posted, ServiceError> {
        let path = entity.plural();
        let url = self
            .target
            .base
            .join(path)
            .expect("a path joins onto a base URL");
        let retried = |f: &Failure| matches!(f, Failure::Retry(_));
        let answered = crate::retry::until_ok(&format!("POST {url}"), shutdown, retried, || {
            self.attempt(&url, payload)
        })
        .await;
        let status = match answered {
            Ok(Some(status)) => status,
            Ok(None) => return Ok(Posted::Stopped),
            Err(Failure::Log(e)) => return Err(e),
            Err(Failure::Retry(_)) => unreachable!("until_ok retries these"),
        };
        if self.print_events {
            println!(
                "[S1] POST /{path} {} ({label}) → {}",
                entity.name(),
                status.as_u16()
            );
        }
        Ok(if status.is_success() {
            Posted::Accepted
        } else {
            Posted::Refused
        })
    }

    /// One POST, logged. `Ok` is the server's final answer (2xx, or a 4xx other than 429);
    /// a connection error or an answer worth retrying is `Failure::Retry`.
    async fn attempt(
        &self,
        url: &url::Url,
        payload: &Value,
    ) -> Result<reqwest::StatusCode, Failure> {
        let mut request = self
            .http
            .post(url.clone())
            .json(payload)
            .timeout(self.target.timeout);
        if let Some(token) = &self.target.token {
            request = request.bearer_auth(token);
        }
        let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let request_log = json!({"method": "POST", "url": url.as_str(), "payload": payload});
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                let body = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
                self.log_line(&json!({
                    "timestamp": timestamp,
                    "request": request_log,
                    "response": {"status_code": status.as_u16(), "body": body},
                }))
                .map_err(Failure::Log)?;
                let final_answer = status.is_success()
                    || (status.is_client_error()
                        && status != reqwest::StatusCode::TOO_MANY_REQUESTS);
                if final_answer {
                    Ok(status)
                } else {
                    Err(Failure::Retry(format!("server answered {status}")))
                }
            }
            Err(e) => {
                // reqwest's own text is "error sending request"; the cause is below it.
                let mut error = format!("connection error: {e}");
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    error.push_str(&format!(": {cause}"));
                    source = cause.source();
                }
                self.log_line(&json!({
                    "timestamp": timestamp,
                    "request": request_log,
                    "error": error,
                }))
                .map_err(Failure::Log)?;
                Err(Failure::Retry(error))
            }
        }
    }
}

/// Why a post did not get a final answer: retried, or the exchange log cannot be written.
#[derive(Debug)]
enum Failure {
    Retry(String),
    Log(ServiceError),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Retry(why) => f.write_str(why),
            Failure::Log(e) => e.fmt(f),
        }
    }
}

/// Runs S1 against the HTTP API until `config.count` rounds are posted or `shutdown` is
/// cancelled. Counts what the server accepted per entity, and what it refused.
pub async fn run(
    target: HttpTarget,
    books: Vec<Book>,
    config: S1Config,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) -> Result<S1Report, ServiceError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&target.log_path)
        .map_err(|source| ServiceError::LogFile {
            path: target.log_path.display().to_string(),
            source,
        })?;
    let concurrency = if config.rate > 0.0 {
        1
    } else {
        target.concurrency.max(1)
    };
    let schedule = crate::services::Schedule::new(config.rate);
    let client = Arc::new(Client {
        http: reqwest::Client::new(),
        target,
        log: Mutex::new(log),
        print_events: config.print_events,
    });
    let report = Arc::new(Mutex::new(S1Report::default()));
    let mut generator = Generator::new(books, config.seed, config.topics.clone());
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut rounds = tokio::task::JoinSet::new();
    let mut round = 0_u64;
    while config.count.is_none_or(|n| round < n) && !shutdown.is_cancelled() {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        // Surface a failed round (the log cannot be written) before starting another.
        while let Some(done) = rounds.try_join_next() {
            done.expect("an S1 round panicked")?;
        }
        // The order is for this round's customer and book: rounds in flight together must
        // not reference each other's records, which may not be posted yet.
        let (customer, book, mut order) = generator.entities();
        order.customer_id.clone_from(&customer.id);
        order.book_id.clone_from(&book.id);
        // At a set rate rounds go one at a time (one slot), three posts each.
        let first_post = 3 * round;
        round += 1;
        let (client, report, counters, shutdown) = (
            client.clone(),
            report.clone(),
            counters.clone(),
            shutdown.clone(),
        );
        rounds.spawn(async move {
            let _slot = slot;
            let posts = [
                (Entity::Customer, customer.name.clone(), json!(customer)),
                (Entity::Book, book.title.clone(), json!(book)),
                (Entity::Order, short(&order.id), json!(order)),
            ];
            for (n, (entity, label, payload)) in (first_post..).zip(posts) {
                if let Some(schedule) = &schedule
                    && !schedule.wait_for(n, &shutdown).await
                {
                    return Ok(());
                }
                let posted = client.post(entity, &label, &payload, &shutdown).await?;
                let mut report = report.lock().expect("report lock is never poisoned");
                match posted {
                    Posted::Accepted => {
                        match entity {
                            Entity::Customer => report.customers += 1,
                            Entity::Book => report.books += 1,
                            Entity::Order => report.orders += 1,
                        }
                        Counters::add(&counters.sent, 1);
                    }
                    Posted::Refused => report.rejected += 1,
                    Posted::Stopped => return Ok(()),
                }
            }
            Ok::<_, ServiceError>(())
        });
    }
    while let Some(done) = rounds.join_next().await {
        done.expect("an S1 round panicked")?;
    }
    let report = report
        .lock()
        .expect("report lock is never poisoned")
        .clone();
    Ok(report)
}
