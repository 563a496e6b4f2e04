//! `livros bench --system search`: how fast the audit log is indexed and searched. Writes
//! an audit log of N lines shaped like the systems' (books, customers, streaming events
//! with correlation ids and their replies, product registrations, dead letters with
//! reasons), indexes it into the embedded index — and into Elasticsearch when one is
//! configured, in an index of its own that is deleted after — then times a set of queries.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Indexer, Query, SearchEngine, SearchError, TopicSystems};
use crate::app::Settings;

/// Times each query is asked.
const ROUNDS: usize = 30;

const WORDS: [&str; 24] = [
    "memórias",
    "póstumas",
    "brás",
    "cubas",
    "dom",
    "casmurro",
    "quincas",
    "borba",
    "iracema",
    "vidas",
    "secas",
    "grande",
    "sertão",
    "veredas",
    "capitães",
    "areia",
    "macunaíma",
    "ensaio",
    "cegueira",
    "hora",
    "estrela",
    "triste",
    "fim",
    "policarpo",
];

/// What the benchmark measured.
#[derive(Debug)]
pub struct Report {
    /// Lines in the audit log.
    pub lines: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// Per engine: its name, time to index everything, and per query its text and
    /// latencies (p50, p99) and hits.
    pub engines: Vec<EngineReport>,
}

/// One engine's numbers.
#[derive(Debug)]
pub struct EngineReport {
    /// The engine.
    pub engine: String,
    /// Time to index the whole log.
    pub indexing: Duration,
    /// Per query: text, total matches, p50, p99.
    pub queries: Vec<(String, u64, Duration, Duration)>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "audit log: {} lines, {:.0} MB",
            self.lines,
            self.bytes as f64 / 1e6
        )?;
        for e in &self.engines {
            writeln!(f, "{}", e.engine)?;
            writeln!(
                f,
                "  indexing: {:>10.0} lines/s ({:.1?})",
                self.lines as f64 / e.indexing.as_secs_f64(),
                e.indexing
            )?;
            for (text, total, p50, p99) in &e.queries {
                writeln!(
                    f,
                    "  {text:<44} {total:>9} hits  p50 {p50:>9.2?}  p99 {p99:>9.2?}"
                )?;
            }
        }
        Ok(())
    }
}

/// Writes `lines` audit lines to `path`; returns the bytes written and a correlation id
/// that occurs in it (for the trace query).
fn write_log(path: &std::path::Path, lines: u64) -> std::io::Result<(u64, String)> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let start_ms = chrono::Utc::now().timestamp_millis() - lines as i64;
    let mut offsets = std::collections::HashMap::new();
    let mut known = String::new();
    for i in 0..lines {
        let word = |k: u64| WORDS[((i / 7 + k) % WORDS.len() as u64) as usize];
        let correlation =
            uuid::Uuid::from_u128(0x5eed_0000_0000_0000_0000_0000_0000_0000 + u128::from(i / 2));
        let (topic, key, message, headers) = match i % 10 {
            0 | 1 => (
                "books",
                format!("ld-{i:012x}"),
                json!({"type": "livros.book", "id": correlation, "source": "livros/s1",
                       "data": {"id": format!("ld-{i:012x}"), "title": format!("{} {} {}", word(0), word(1), word(2)),
                                "authors": [format!("{} {}", word(3), word(4))], "isbn": format!("978{:010}", i)}}),
                json!({}),
            ),
            2 | 3 => (
                "customers",
                format!("cu-{i}"),
                json!({"type": "livros.customer", "id": correlation, "source": "livros/s1",
                       "data": {"id": i, "name": format!("{} {}", word(5), word(6)),
                                "email": format!("c{i}@example.com")}}),
                json!({}),
            ),
            4 | 6 => (
                "user_events",
                correlation.to_string(),
                json!({"event_type": "registrar_visualizacao", "correlation_id": correlation,
                       "source": "s1", "user_id": i % 5000, "conteudo_id": i % 300,
                       "tempo_assistido": 42}),
                json!({}),
            ),
            5 | 7 => (
                "response_events",
                correlation.to_string(),
                json!({"event_type": "response", "correlation_id": correlation, "source": "s2",
                       "status": "success"}),
                json!({}),
            ),
            8 => (
                "cadastro-produtos",
                format!("SKU-{i}"),
                json!({"productId": format!("SKU-{i}"), "productName": format!("{} {}", word(7), word(8)),
                       "price": 19.9, "currency": "BRL", "stockQuantity": i % 100}),
                json!({}),
            ),
            _ => (
                "erro-produtos",
                format!("SKU-{i}"),
                json!({"productId": format!("SKU-{i}"), "price": -1}),
                json!({"dlq.reason": format!("field `price`: `-1` is negative ({})", word(9))}),
            ),
        };
        if known.is_empty() && i >= lines / 2 && topic == "user_events" {
            known = correlation.to_string();
        }
        let partition = (i % 3) as i32;
        let offset = offsets.entry((topic, partition)).or_insert(0_i64);
        let line = json!({
            "topic": topic, "partition": partition, "offset": *offset, "key": key,
            "timestamp": chrono::DateTime::from_timestamp_millis(start_ms + i as i64)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            "message": message, "headers": headers,
        });
        *offset += 1;
        serde_json::to_writer(&mut out, &line).map_err(std::io::Error::other)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok((std::fs::metadata(path)?.len(), known))
}

async fn measure(
    engine: Arc<dyn SearchEngine>,
    settings: &Settings,
    systems: &TopicSystems,
    lines: u64,
    known: &str,
) -> Result<EngineReport, SearchError> {
    let started = Instant::now();
    let mut indexer = Indexer::new(engine.clone(), settings.audit_log.clone(), systems.clone());
    let mut done = 0_u64;
    let mut shown = Instant::now();
    loop {
        let n = indexer.index_once().await?;
        if n == 0 {
            break;
        }
        done += n as u64;
        if shown.elapsed() > Duration::from_secs(5) {
            eprintln!("  {}: {done} of {lines} lines indexed", engine.describe());
            shown = Instant::now();
        }
    }
    engine.refresh().await?;
    let indexing = started.elapsed();
    let queries = [
        "topic:books".to_string(),
        "casmurro".to_string(),
        "topic:books dom casmurro".to_string(),
        "event_type:registrar_visualizacao".to_string(),
        format!("correlation_id:{known}"),
        "topic:erro-produtos reason:negative".to_string(),
        "since:10m topic:customers".to_string(),
        "nothingmatchesthisword".to_string(),
    ];
    let mut out = Vec::new();
    for text in queries {
        let query = Query::parse(&text, 20)?;
        let mut times = Vec::with_capacity(ROUNDS);
        let mut total = 0;
        for _ in 0..ROUNDS {
            let t = Instant::now();
            total = engine.search(&query).await?.total;
            times.push(t.elapsed());
        }
        times.sort();
        let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
        out.push((text, total, times[times.len() / 2], p99));
    }
    Ok(EngineReport {
        engine: engine.describe(),
        indexing,
        queries: out,
    })
}

/// Runs the benchmark on `lines` audit lines in the settings' data dir.
pub async fn run(settings: &Settings, lines: u64) -> Result<Report, SearchError> {
    std::fs::create_dir_all(&settings.data_dir)?;
    let path = settings.audit_log.clone();
    let (bytes, known) = tokio::task::spawn_blocking(move || write_log(&path, lines))
        .await
        .expect("writing the log panicked")?;
    let systems = settings.topic_systems();
    let mut engines = Vec::new();
    let embedded = Arc::new(super::embedded::Embedded::open(&super::embedded_dir(
        &settings.audit_log,
    ))?);
    engines.push(measure(embedded, settings, &systems, lines, &known).await?);
    if let Some((url, _)) = &settings.search {
        let index = format!("livros-bench-{}", uuid::Uuid::new_v4().simple());
        let server = Arc::new(super::elastic::Elastic::new(
            url,
            &index,
            &settings.audit_log,
        ));
        let measured = measure(server, settings, &systems, lines, &known).await;
        // The benchmark's index is not the user's: removed either way.
        let _ = reqwest::Client::new()
            .delete(format!("{}/{index}", url.trim_end_matches('/')))
            .send()
            .await;
        engines.push(measured?);
    }
    Ok(Report {
        lines,
        bytes,
        engines,
    })
}
