//! A load generator for the benchmarks: a fixed list of HTTP requests sent over
//! `connections` keep-alive HTTP/1.1 connections, each answered before the next goes on
//! the same connection, with every latency kept.
//!
//! `livros bench --http` runs it in a separate process (`livros loadgen`, given a
//! [`Plan`] file) so that the client's work is not counted inside the server's process; the
//! client is hyper's bare connection, no pool or redirects, so it takes as little of the
//! machine's CPU from the server as a client can.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};

/// `n` per second over `d`.
pub fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// One request of a [`Plan`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// Path and query (`/customers?x=1`).
    pub path: String,
    /// A JSON body, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

impl Request {
    /// A `GET` of `path`.
    pub fn get(path: impl Into<String>) -> Self {
        Self {
            method: "GET".into(),
            path: path.into(),
            body: None,
        }
    }

    /// A `POST` of the JSON `body` to `path`.
    pub fn post(path: impl Into<String>, body: impl Into<String>) -> Self {
        Self {
            method: "POST".into(),
            path: path.into(),
            body: Some(body.into()),
        }
    }
}

/// A phase of load: requests sent once each, in order, by whichever connection is free.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// What the phase is called in the report (`POST /customers`).
    pub what: String,
    /// The status every answer must have to count as answered.
    pub expect: u16,
    /// Whether it is a write, held to the write goal.
    pub write: bool,
    /// The requests.
    pub requests: Vec<Request>,
}

/// Latencies of one phase under concurrent load.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadReport {
    /// `POST /customers`, `GET /customers/{id}`.
    pub what: String,
    /// Requests answered with the expected status.
    pub ok: u64,
    /// Requests that failed or got another status.
    pub errors: u64,
    /// The first unexpected answer or failure, to say what went wrong.
    pub first_error: Option<String>,
    /// Wall time of the whole phase.
    pub elapsed: Duration,
    /// Median latency.
    pub p50: Duration,
    /// 99th-percentile latency.
    pub p99: Duration,
    /// Slowest request.
    pub max: Duration,
}

impl LoadReport {
    /// Answered requests per second.
    pub fn rate(&self) -> f64 {
        rate(self.ok, self.elapsed)
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<34} {:>8.0} req/s   p50 {:>8.2?}   p99 {:>8.2?}   max {:>8.2?}",
            self.what,
            self.rate(),
            self.p50,
            self.p99,
            self.max,
        )?;
        if self.errors > 0 {
            write!(
                f,
                "   {} errors (first: {})",
                self.errors,
                self.first_error.as_deref().unwrap_or("?")
            )?;
        }
        Ok(())
    }
}

/// Why a plan could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The plan file could not be read or parsed.
    #[error("reading the plan {path}: {reason}")]
    Plan {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A request of the plan is not a valid HTTP request.
    #[error("request {path:?} of the plan is not valid: {reason}")]
    Request {
        /// Its path.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A request made ready to send many times (its body shared, not copied).
struct Prepared {
    method: hyper::Method,
    uri: hyper::Uri,
    body: Option<Bytes>,
}

/// Reads a plan written by [`write_plan`].
pub fn read_plan(path: &Path) -> Result<Plan, LoadError> {
    let failed = |reason: String| LoadError::Plan {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read(path).map_err(|e| failed(e.to_string()))?;
    serde_json::from_slice(&text).map_err(|e| failed(e.to_string()))
}

/// Writes `plan` where [`read_plan`] reads it.
pub fn write_plan(plan: &Plan, path: &Path) -> std::io::Result<()> {
    std::fs::write(
        path,
        serde_json::to_vec(plan).map_err(std::io::Error::other)?,
    )
}

/// Sends every request of `plan` to `addr` over `connections` connections, with `token` as a
/// bearer token when given.
pub async fn run(
    addr: SocketAddr,
    plan: &Plan,
    connections: usize,
    token: Option<&str>,
) -> Result<LoadReport, LoadError> {
    let prepared = plan
        .requests
        .iter()
        .map(|r| {
            let invalid = |reason: String| LoadError::Request {
                path: r.path.clone(),
                reason,
            };
            Ok(Prepared {
                method: r
                    .method
                    .parse()
                    .map_err(|e: hyper::http::method::InvalidMethod| invalid(e.to_string()))?,
                uri: r
                    .path
                    .parse()
                    .map_err(|e: hyper::http::uri::InvalidUri| invalid(e.to_string()))?,
                body: r.body.clone().map(Bytes::from),
            })
        })
        .collect::<Result<Vec<_>, LoadError>>()?;
    let shared = Arc::new(Shared {
        requests: prepared,
        next: AtomicUsize::new(0),
        expect: plan.expect,
        host: addr.to_string(),
        authorization: token.map(|t| format!("Bearer {t}")),
    });
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..connections.max(1) {
        workers.spawn(connection(addr, shared.clone()));
    }
    let mut latencies = Vec::with_capacity(plan.requests.len());
    let (mut errors, mut first_error) = (0, None);
    while let Some(done) = workers.join_next().await {
        let done = done.expect("a load connection panicked");
        latencies.extend(done.latencies);
        errors += done.errors;
        first_error = first_error.or(done.first_error);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(LoadReport {
        what: plan.what.clone(),
        ok: latencies.len() as u64,
        errors,
        first_error,
        elapsed,
        p50: at(0.50),
        p99: at(0.99),
        max: latencies.last().copied().unwrap_or_default(),
    })
}

struct Shared {
    requests: Vec<Prepared>,
    next: AtomicUsize,
    expect: u16,
    host: String,
    authorization: Option<String>,
}

#[derive(Default)]
struct Done {
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

impl Done {
    fn failed(&mut self, why: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(why());
        }
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake with {addr}: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One connection taking requests until none are left; a broken connection is replaced.
async fn connection(addr: SocketAddr, shared: Arc<Shared>) -> Done {
    let mut done = Done::default();
    let mut sender: Option<Sender> = None;
    loop {
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        let Some(r) = shared.requests.get(i) else {
            return done;
        };
        let sent = Instant::now();
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            match connect(addr).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    done.failed(|| e);
                    continue;
                }
            }
        }
        let s = sender.as_mut().expect("connected above");
        let mut request = hyper::Request::builder()
            .method(r.method.clone())
            .uri(r.uri.clone())
            .header(hyper::header::HOST, &shared.host);
        if r.body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        if let Some(auth) = &shared.authorization {
            request = request.header(hyper::header::AUTHORIZATION, auth);
        }
        let request = request
            .body(Full::new(r.body.clone().unwrap_or_default()))
            .expect("parts checked when the plan was read");
        let answered = async {
            s.ready().await?;
            let response = s.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        }
        .await;
        match answered {
            Ok((status, _)) if status.as_u16() == shared.expect => {
                done.latencies.push(sent.elapsed())
            }
            Ok((status, body)) => done.failed(|| {
                format!(
                    "{} {} answered {status}: {}",
                    r.method,
                    r.uri,
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                )
            }),
            Err(e) => {
                sender = None;
                done.failed(|| format!("{} {}: {e}", r.method, r.uri));
            }
        }
    }
}
