//! Prometheus metrics: one recorder per process (the `metrics` facade, rendered by
//! `metrics-exporter-prometheus`), served at `/metrics` by every HTTP service
//! ([`crate::api::finish`]). The names, and where each is recorded:
//!
//! | metric | labels | recorded by |
//! |---|---|---|
//! | `livros_messages_published_total` | `topic` | every bus, per record acknowledged |
//! | `livros_messages_consumed_total` | `service` (`s2`, `s3`), `topic` | S2 and S3, per message committed |
//! | `livros_dead_letters_total` | `topic` (where it came from), `to` | S2, per message dead-lettered |
//! | `livros_batch_size` | `service`, `topic` | S2 and S3, per batch (histogram) |
//! | `livros_store_seconds` | `store` (`relational`, `document`, `key-value`), `engine` | every store, per relational transaction (reads included), document upsert and key-value write batch (histogram) |
//! | `livros_consumer_lag` | `group`, `topic` (S3: `*`, every topic) | S2 and S3, after a commit, at most every [`LAG_EVERY`] (gauge) |
//! | `livros_retries_total` | `what` | every retry with backoff |
//! | `livros_indexed_total`, `livros_index_refused_total` | — | the audit log's indexer |
//! | `livros_api_batch_size` | `writer` (`customers`, `gateway`, `products`…) | every API write batch: how many requests one durable write served (histogram) |
//! | `livros_api_batch_seconds` | `writer` | every API write batch: its durable write, from the store call to its answer (histogram) |
//! | `livros_http_requests_total` | `api` (the system), `method`, `route`, `status` | every HTTP service |
//! | `livros_http_request_seconds` | `api`, `method`, `route` | every HTTP service (histogram) |
//!
//! Routes are the matched path (`/customers/{id}`), never the raw one, so the label set
//! stays small. Counters count what this process did since it started.

use std::sync::OnceLock;
use std::time::Instant;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds: 0.1 ms to 10 s.
const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Batch-size buckets.
const SIZES: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often histograms fold their recent samples into their buckets (the exporter's
/// own default).
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The process's recorder, installed by the first call. Should another recorder already be
/// installed (an embedding program's), ours still renders, and stays empty.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = || {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZES))
                .expect("the buckets are not empty")
        };
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed: /metrics stays empty");
        }
        // A histogram keeps each sample until its buckets are brought up to date: by a
        // render, or by the upkeep. With nobody scraping `/metrics`, a busy server would
        // otherwise keep two samples per request, forever (the exporter's own `install`
        // runs this upkeep; `build_recorder` leaves it to us).
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(
                "cannot start the metrics upkeep ({e}): histograms grow until /metrics is read"
            );
        }
        handle
    })
}

/// Records `n` records published on `topic`.
pub fn published(topic: &str, n: usize) {
    metrics::counter!("livros_messages_published_total", "topic" => topic.to_string())
        .increment(n as u64);
}

/// Records a batch of `n` messages from `topic` that `service` processed and committed.
pub fn consumed(service: &'static str, topic: &str, n: usize) {
    metrics::counter!("livros_messages_consumed_total", "service" => service, "topic" => topic.to_string())
        .increment(n as u64);
    metrics::histogram!("livros_batch_size", "service" => service, "topic" => topic.to_string())
        .record(n as f64);
}

/// Records `n` messages from `topic` dead-lettered to `to`.
pub fn dead_lettered(topic: &str, to: &str, n: usize) {
    if n > 0 {
        metrics::counter!("livros_dead_letters_total", "topic" => topic.to_string(), "to" => to.to_string())
            .increment(n as u64);
    }
}

/// Runs a store call of `store` (`relational`…) on `engine`, recording how long it took.
pub async fn timed_store<T>(
    store: &'static str,
    engine: &'static str,
    call: impl std::future::Future<Output = T>,
) -> T {
    let started = Instant::now();
    let result = call.await;
    metrics::histogram!("livros_store_seconds", "store" => store, "engine" => engine)
        .record(started.elapsed().as_secs_f64());
    result
}

/// How often a consumer measures its lag: asking the bus costs a round trip.
pub const LAG_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Measures a consumer group's lag now and then, after its commits.
pub struct LagGauge {
    group: String,
    topics: Vec<String>,
    label: String,
    last: Option<Instant>,
}

impl LagGauge {
    /// A gauge of `group`'s lag on `topics`, labelled `label` (a topic, or `*`).
    pub fn new(group: &str, topics: &[String], label: &str) -> Self {
        Self {
            group: group.to_string(),
            topics: topics.to_vec(),
            label: label.to_string(),
            last: None,
        }
    }

    /// Asks `bus` for the lag, unless it did less than [`LAG_EVERY`] ago. A bus that does
    /// not answer leaves the last value.
    pub async fn update(&mut self, bus: &dyn crate::bus::Bus) {
        if self.last.is_some_and(|t| t.elapsed() < LAG_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        if let Ok(lag) = bus.lag(&self.group, &self.topics).await {
            metrics::gauge!("livros_consumer_lag", "group" => self.group.clone(), "topic" => self.label.clone())
                .set(lag as f64);
        }
    }
}

/// Records `n` audit lines indexed into a search engine (`embedded`, `elasticsearch`).
pub fn indexed(engine: &'static str, n: usize) {
    metrics::counter!("livros_indexed_total", "engine" => engine).increment(n as u64);
}

/// Records `n` documents the search engine refused.
pub fn index_refused(n: usize) {
    metrics::counter!("livros_index_refused_total").increment(n as u64);
}

/// Records one retry of `what`.
pub fn retried(what: &str) {
    metrics::counter!("livros_retries_total", "what" => what.to_string()).increment(1);
}

/// Records one HTTP request answered by `api`.
pub fn http_request(api: &'static str, method: &str, route: &str, status: u16, started: Instant) {
    let (method, route) = (method.to_string(), route.to_string());
    metrics::counter!("livros_http_requests_total", "api" => api, "method" => method.clone(),
        "route" => route.clone(), "status" => status.to_string())
    .increment(1);
    metrics::histogram!("livros_http_request_seconds", "api" => api, "method" => method,
        "route" => route)
    .record(started.elapsed().as_secs_f64());
}

/// Records one API write batch of `writer`: how many requests it served and how long its
/// durable write took.
pub fn api_batch(writer: &'static str, requests: usize, took: std::time::Duration) {
    metrics::histogram!("livros_api_batch_size", "writer" => writer).record(requests as f64);
    metrics::histogram!("livros_api_batch_seconds", "writer" => writer).record(took.as_secs_f64());
}

/// Every API writer's batches so far, summed over the writers (what
/// [`api_batch`] recorded, read back from the exposition).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ApiBatches {
    /// Batches written.
    pub batches: f64,
    /// Requests those batches served.
    pub requests: f64,
    /// Time spent in their durable writes, in seconds.
    pub seconds: f64,
}

impl ApiBatches {
    /// What was recorded between `earlier` and this.
    pub fn since(&self, earlier: &ApiBatches) -> ApiBatches {
        ApiBatches {
            batches: self.batches - earlier.batches,
            requests: self.requests - earlier.requests,
            seconds: self.seconds - earlier.seconds,
        }
    }
}

/// The API writers' totals now; see [`ApiBatches`].
pub fn api_batches() -> ApiBatches {
    let mut totals = ApiBatches::default();
    for line in render().lines() {
        let field = if line.starts_with("livros_api_batch_size_sum") {
            &mut totals.requests
        } else if line.starts_with("livros_api_batch_size_count") {
            &mut totals.batches
        } else if line.starts_with("livros_api_batch_seconds_sum") {
            &mut totals.seconds
        } else {
            continue;
        };
        if let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *field += value;
        }
    }
    totals
}

/// The Prometheus text exposition of everything recorded so far.
pub fn render() -> String {
    handle().render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_batches_are_read_back_from_the_exposition() {
        let before = api_batches();
        api_batch("test-writer", 5, std::time::Duration::from_millis(2));
        api_batch("test-writer", 3, std::time::Duration::from_millis(4));
        let delta = api_batches().since(&before);
        // Other tests may record batches meanwhile: at least ours are counted.
        assert!(delta.batches >= 2.0, "{delta:?}");
        assert!(delta.requests >= 8.0, "{delta:?}");
        assert!(delta.seconds >= 0.006, "{delta:?}");
        let text = render();
        assert!(
            text.contains("livros_api_batch_size_sum{writer=\"test-writer\"} 8"),
            "{text}"
        );
    }
}
