//! A load generator for the benchmarks: requests from concurrent workers, with their
//! latencies. `livros bench` uses it on every system's HTTP API.

use std::time::{Duration, Instant};

/// `n` per second over `d`.
pub fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// Latencies of one kind of request under concurrent load.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// `POST /customers`, `GET /customers/{id}`.
    pub what: String,
    /// Requests answered as expected.
    pub ok: u64,
    /// Requests that failed or got an unexpected status.
    pub errors: u64,
    /// Wall time of the whole phase.
    pub elapsed: Duration,
    /// Median latency.
    pub p50: Duration,
    /// 99th-percentile latency.
    pub p99: Duration,
    /// Slowest request.
    pub max: Duration,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<22} {:>8.0} req/s   p50 {:>8.2?}   p99 {:>8.2?}   max {:>8.2?}   ({} ok, {} errors)",
            self.what,
            rate(self.ok, self.elapsed),
            self.p50,
            self.p99,
            self.max,
            self.ok,
            self.errors
        )
    }
}

/// Sends `requests` requests from `concurrency` workers; `request(i)` sends the i-th and
/// says whether its answer was the expected one.
pub async fn load<F, Fut>(what: &str, requests: usize, concurrency: usize, request: F) -> LoadReport
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let request = std::sync::Arc::new(request);
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (next, request) = (next.clone(), request.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0_u64;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= requests {
                    return (latencies, errors);
                }
                let sent = Instant::now();
                if request(i).await {
                    latencies.push(sent.elapsed());
                } else {
                    errors += 1;
                }
            }
        });
    }
    let mut latencies = Vec::with_capacity(requests);
    let mut errors = 0;
    while let Some(done) = workers.join_next().await {
        let (l, e) = done.expect("a load worker panicked");
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    LoadReport {
        what: what.to_string(),
        ok: latencies.len() as u64,
        errors,
        elapsed,
        p50: at(0.50),
        p99: at(0.99),
        max: latencies.last().copied().unwrap_or_default(),
    }
}
