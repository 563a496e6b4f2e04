//! The scheduler (seed 5's first service): consumes `cadastro-produtos`, validates and
//! transforms each registration ([`parse_registration`]) and posts it to the API's
//! `POST /products/`. It is an S2 handler like any other, so the batch, dead-letter and
//! commit rules are S2's: the offset moves only once every message of the batch was
//! accepted by the API or published to `erro-produtos` with its reason.
//!
//! **Concurrency.** A batch's registrations are grouped by product id; up to
//! [`SchedulerConfig::concurrency`] groups post at once, and within a group the posts go
//! one after the other, in the order consumed: two versions of a product never race.
//!
//! **What the API's answer means** (the reason goes into `erro-produtos`' `dlq.reason`):
//!
//! | answer | what the scheduler does |
//! |---|---|
//! | 2xx | accepted |
//! | no answer (refused, reset, timeout), 429, 502, 503, 504 | the API is down or busy: the batch waits and is posted again with backoff, for as long as it takes (already accepted products are no-ops the second time); nothing goes to `erro-produtos` |
//! | 401, 403, 404, 405 | the scheduler is set up wrong (token, URL): waits the same way, logging what to fix, instead of sending every product to `erro-produtos` |
//! | any other 4xx | the product is refused: `erro-produtos` with the API's message |
//! | 500 and other 5xx | retried [`ATTEMPTS`] times with backoff, then `erro-produtos` |

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use reqwest::StatusCode;

use super::entities::{Product, parse_registration};
use crate::services::{Handler, Outcome, Rejection};
use crate::store::{StoreError, StoreResult};

/// Attempts at a product the API answers with a 500 (or another 5xx that is not an
/// outage) before it goes to `erro-produtos`.
pub const ATTEMPTS: u32 = 5;

/// How the scheduler reaches the API.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// `POST` URL of the API (`http://127.0.0.1:8001/products/`).
    pub url: String,
    /// Bearer token, when the API requires one.
    pub token: Option<String>,
    /// Products posted at once.
    pub concurrency: usize,
    /// Longest wait for one answer.
    pub timeout: Duration,
}

/// The scheduler's handler.
pub struct Scheduler {
    config: SchedulerConfig,
    client: reqwest::Client,
}

/// What became of one post.
enum Posted {
    Accepted,
    Refused(String),
    /// Not the product's fault: the whole batch waits and tries again.
    Wait(StoreError),
}

impl Scheduler {
    /// A scheduler posting where `config` says.
    pub fn new(config: SchedulerConfig) -> Self {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .pool_max_idle_per_host(config.concurrency.max(1))
            .build()
            .expect("a client with a timeout builds");
        Self { config, client }
    }

    /// Where it posts, for output lines.
    pub fn url(&self) -> &str {
        &self.config.url
    }

    async fn post(&self, product: &Product) -> Posted {
        let body = product.to_json();
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let mut request = self
                .client
                .post(&self.config.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
            if let Some(token) = &self.config.token {
                request = request.bearer_auth(token);
            }
            let (status, text) = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    (status, response.text().await.unwrap_or_default())
                }
                Err(e) => {
                    return Posted::Wait(StoreError::Unavailable {
                        store: "products API",
                        reason: format!("{}: {e}", self.config.url),
                    });
                }
            };
            let said = message_of(&text);
            match status {
                s if s.is_success() => return Posted::Accepted,
                StatusCode::TOO_MANY_REQUESTS
                | StatusCode::BAD_GATEWAY
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::GATEWAY_TIMEOUT => {
                    return Posted::Wait(StoreError::Unavailable {
                        store: "products API",
                        reason: format!("{} answered {status}: {said}", self.config.url),
                    });
                }
                StatusCode::UNAUTHORIZED
                | StatusCode::FORBIDDEN
                | StatusCode::NOT_FOUND
                | StatusCode::METHOD_NOT_ALLOWED => {
                    return Posted::Wait(StoreError::Fault {
                        store: "products API",
                        reason: format!(
                            "{} answered {status} ({said}): check the scheduler's --products-api-url and --api-token",
                            self.config.url
                        ),
                    });
                }
                s if s.is_client_error() => {
                    return Posted::Refused(format!(
                        "the products API refused it ({status}): {said}"
                    ));
                }
                s if attempt < ATTEMPTS => {
                    tracing::warn!(
                        "the products API answered {s} for product `{}` (attempt {attempt} of {ATTEMPTS}), retrying in {delay:?}: {said}",
                        product.id
                    );
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                s => {
                    return Posted::Refused(format!(
                        "the products API answered {s} {ATTEMPTS} times: {said}"
                    ));
                }
            }
        }
    }
}

/// The `message` of an error answer, or its text.
fn message_of(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| text.chars().take(300).collect())
}

#[async_trait]
impl Handler for Scheduler {
    async fn handle(&self, payloads: &[&[u8]]) -> StoreResult<Vec<Outcome>> {
        let now = chrono::Utc::now();
        let parsed: Vec<_> = payloads
            .iter()
            .map(|p| parse_registration(p, now))
            .collect();
        // Per product, the positions of its registrations, in the order consumed.
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut group_of: HashMap<&str, usize> = HashMap::new();
        for (i, p) in parsed.iter().enumerate() {
            if let Ok(p) = p {
                let g = *group_of.entry(p.id.as_str()).or_insert_with(|| {
                    groups.push(Vec::new());
                    groups.len() - 1
                });
                groups[g].push(i);
            }
        }
        let parsed = &parsed;
        let results: Vec<Vec<(usize, Posted)>> = futures::stream::iter(groups)
            .map(|group| async move {
                let mut out = Vec::with_capacity(group.len());
                for i in group {
                    let product = parsed[i].as_ref().expect("grouped products are valid");
                    let posted = self.post(product).await;
                    let wait = matches!(posted, Posted::Wait(_));
                    out.push((i, posted));
                    if wait {
                        // A later version must not overtake this one.
                        break;
                    }
                }
                out
            })
            .buffer_unordered(self.config.concurrency.max(1))
            .collect()
            .await;
        let mut posted: Vec<Option<Posted>> = (0..parsed.len()).map(|_| None).collect();
        for (i, p) in results.into_iter().flatten() {
            if let Posted::Wait(e) = p {
                return Err(e);
            }
            posted[i] = Some(p);
        }
        Ok(parsed
            .iter()
            .zip(posted)
            .map(|(p, posted)| match (p, posted) {
                (Err(invalid), _) => Outcome::Rejected(invalid.clone().into()),
                (Ok(_), Some(Posted::Refused(reason))) => {
                    Outcome::Rejected(Rejection::Store(reason))
                }
                (Ok(p), _) => Outcome::Stored {
                    id: p.id.clone(),
                    label: p.name.clone(),
                    out: Vec::new(),
                },
            })
            .collect())
    }
}
