//! The audit log, searchable: every line S3 appends to `messages.log` becomes a search
//! document, in an embedded full-text index that S3 always keeps and, when configured, in
//! Elasticsearch or OpenSearch too. One query language and one result order for both, so a
//! search answers the same wherever it runs.
//!
//! - [`embedded`]: a tantivy index in a directory beside the log (`messages.log.index/`).
//! - [`elastic`]: Elasticsearch 8 / OpenSearch 2 through the REST API (bulk, `_search`).
//!
//! **The file is the record of truth, and each index follows it.** An [`Indexer`] reads
//! the log from where its engine says it stopped and indexes it in batches; S3 never
//! waits on it. The **position** is the byte offset in the log up to which every line is
//! indexed, and each engine keeps it where a crash cannot separate it from the documents:
//! the embedded index in the payload of the very commit that holds them, Elasticsearch in
//! `<log>.indexed`, replaced (write, fsync, rename) only after a bulk request succeeded.
//! A crash in between indexes some lines again, and since each document's id is
//! `topic/partition/offset`, that changes nothing: no gap, no duplicate.
//!
//! **Queries** ([`Query::parse`]): `field:value` terms (exact for ids and names, every
//! word for `reason`), free words (every one must occur in the message), and a time range
//! (`since:` / `until:`, an RFC 3339 time or a duration ago such as `15m`). All terms must
//! hold. Results come newest first in the log's order (the line's position), so both
//! engines agree on the order as well as on the set. Words are runs of letters and digits,
//! compared without case, in both engines (Elasticsearch gets the same tokenizer in the
//! index's settings).

pub mod bench;
pub mod elastic;
pub mod embedded;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::retry::Backoff;

/// The Elasticsearch index unless configured otherwise (seed 3's).
pub const DEFAULT_INDEX: &str = "system_logs";

/// How long the indexer waits, after a batch that did not fill, before it looks at the log
/// again: while the log grows slower than a batch a second, it is indexed once a second
/// (Elasticsearch's own refresh interval) rather than as fast as lines come. Each batch is
/// a commit, and on the embedded index a commit is a new segment that tantivy's merges
/// then rewrite: committing a few dozen lines at a time took a third of the process's CPU
/// in a soak at 300 events/s (ARCHITECTURE.md, "Measured").
const REFRESH: Duration = Duration::from_secs(1);

/// Why indexing or searching failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The engine did not answer, answered that it cannot take the request now, or (the
    /// embedded index) another process is writing it; retrying may help.
    #[error("search engine unavailable: {0}")]
    Unavailable(String),
    /// The audit log or a position file could not be read or written.
    #[error("{0}")]
    File(#[from] std::io::Error),
    /// The embedded index failed.
    #[error("embedded index: {0}")]
    Index(String),
    /// The query cannot be understood; the text says how to write it.
    #[error("{0}")]
    Query(String),
}

/// What a search engine does for the audit log.
#[async_trait]
pub trait SearchEngine: Send + Sync {
    /// How far the audit log is indexed: the byte offset up to which every line is in.
    async fn position(&self) -> Result<u64, SearchError>;

    /// Indexes `docs` and records that the log is indexed up to `position`; when it
    /// returns `Ok`, both are durable (or, for documents the engine refuses for what they
    /// hold, logged and counted: sending them again would fail again).
    async fn index(&self, docs: Vec<Document>, position: u64) -> Result<(), SearchError>;

    /// The documents matching `query`, newest first in the log's order, at most
    /// `query.limit`, and how many match in all.
    async fn search(&self, query: &Query) -> Result<Found, SearchError>;

    /// Makes everything indexed so far visible to searches (Elasticsearch shows new
    /// documents within a second by itself; the embedded index at once).
    async fn refresh(&self) -> Result<(), SearchError> {
        Ok(())
    }

    /// Most lines worth one indexing batch.
    fn batch_lines(&self) -> usize;

    /// Which engine it is, for metrics: `embedded` or `elasticsearch`.
    fn kind(&self) -> &'static str;

    /// A name for logs and output (`embedded (livros-data/messages.log.index)`).
    fn describe(&self) -> String;
}

/// One audit line as a search document.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// `topic/partition/offset`.
    pub id: String,
    /// The fields (see [`document`]).
    pub fields: Value,
}

/// A search's answer.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Found {
    /// How many documents match in all.
    pub total: u64,
    /// The first `limit` of them, each a document's fields (without `payload_text`).
    pub hits: Vec<Value>,
}

/// The fields a query can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// Keyword fields, matched exactly.
    Keyword(&'static str),
    /// Whole-number fields.
    Integer(&'static str),
    /// Full-text fields: every word of the value must occur.
    Text(&'static str),
}

impl Field {
    /// Every field a query can name.
    pub const ALL: [Field; 10] = [
        Field::Keyword("topic"),
        Field::Keyword("key"),
        Field::Keyword("system"),
        Field::Keyword("event_type"),
        Field::Keyword("correlation_id"),
        Field::Keyword("source"),
        Field::Keyword("trace_id"),
        Field::Integer("partition"),
        Field::Integer("offset"),
        Field::Text("reason"),
    ];

    /// The field's name in documents and queries.
    pub fn name(self) -> &'static str {
        match self {
            Field::Keyword(n) | Field::Integer(n) | Field::Text(n) => n,
        }
    }

    fn named(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// The full-text field free words are matched against.
pub const TEXT_FIELD: &str = "payload_text";

/// A parsed search.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    /// `field:value` terms (text fields hold their value's words, space-separated).
    pub terms: Vec<(Field, String)>,
    /// Free words, each of which must occur in the message.
    pub words: Vec<String>,
    /// Messages at or after this time (milliseconds since the epoch).
    pub since_ms: Option<i64>,
    /// Messages before this time.
    pub until_ms: Option<i64>,
    /// Most hits returned.
    pub limit: usize,
}

/// The words of `text` as both engines index them: runs of letters and digits, lowercased.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Splits a query on spaces, keeping `"…"` together (the quotes removed); each token says
/// whether it began with a quote.
fn tokens(text: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut had_quote = false;
    for c in text.chars() {
        match c {
            '"' => {
                // `"a:b"` is words; `field:"a b"` is a field's value.
                had_quote |= current.is_empty();
                quoted = !quoted;
            }
            c if c.is_whitespace() && !quoted => {
                if !current.is_empty() {
                    out.push((std::mem::take(&mut current), had_quote));
                }
                had_quote = false;
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push((current, had_quote));
    }
    out
}

/// A time in a query: RFC 3339, or a duration before `now` (`15m`, `2h`, `1day`).
fn time(value: &str, now: DateTime<Utc>) -> Result<i64, SearchError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(d) = humantime::parse_duration(value) {
        let d = chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        return Ok((now - d).timestamp_millis());
    }
    Err(SearchError::Query(format!(
        "`{value}` is not a time: write an RFC 3339 time (2026-11-24T10:00:00Z) or a \
         duration ago (15m, 2h, 1day)"
    )))
}

impl Query {
    /// Parses a search: `field:value` terms, free words, `since:`/`until:`; see the
    /// module's documentation. A quoted token is free words even if it holds a colon.
    pub fn parse(text: &str, limit: usize) -> Result<Query, SearchError> {
        Self::parse_at(text, limit, Utc::now())
    }

    fn parse_at(text: &str, limit: usize, now: DateTime<Utc>) -> Result<Query, SearchError> {
        let mut query = Query {
            limit,
            ..Query::default()
        };
        for (token, quoted) in tokens(text) {
            let Some((name, value)) = token.split_once(':').filter(|_| !quoted) else {
                query.words.extend(words(&token));
                continue;
            };
            match name {
                "since" => query.since_ms = Some(time(value, now)?),
                "until" => query.until_ms = Some(time(value, now)?),
                _ => match Field::named(name) {
                    Some(Field::Integer(n)) => {
                        value.parse::<i64>().map_err(|_| {
                            SearchError::Query(format!("`{n}` takes a whole number, not `{value}`"))
                        })?;
                        query.terms.push((Field::Integer(n), value.to_string()));
                    }
                    Some(Field::Text(n)) => {
                        query.terms.push((Field::Text(n), words(value).join(" ")));
                    }
                    Some(field) => query.terms.push((field, value.to_string())),
                    None => {
                        let names: Vec<_> = Field::ALL.iter().map(|f| f.name()).collect();
                        return Err(SearchError::Query(format!(
                            "unknown field `{name}`: fields are {}, since and until; put \
                             words holding a colon in quotes (\"{token}\")",
                            names.join(", ")
                        )));
                    }
                },
            }
        }
        Ok(query)
    }

    /// Whether the query says nothing (it matches every document).
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
            && self.words.is_empty()
            && self.since_ms.is_none()
            && self.until_ms.is_none()
    }
}

/// The search document of one audit line (`position`: the line's byte offset in the
/// log), or `None` for a line that is not one.
///
/// Fields: `topic`, `partition`, `offset`, `key`, `system` (from `systems`, the
/// deployment's topic names), `event_type`, `correlation_id`, `source` (the envelope's or
/// the bare payload's fields, else the `ce_*` headers), `trace_id` (of a W3C
/// `traceparent` header), `reason` (a dead letter's `dlq.reason`), `timestamp` and
/// `timestamp_ms`, `log_position`, `payload` (the message, an object when it is JSON; kept,
/// not indexed, so one system's field types never clash with another's) and
/// `payload_text` (its text, full-text indexed).
pub fn document(
    line: &[u8],
    position: u64,
    systems: &HashMap<String, &'static str>,
) -> Option<Document> {
    let line: Value = serde_json::from_slice(line).ok()?;
    let topic = line.get("topic")?.as_str()?.to_string();
    let partition = line.get("partition")?.as_i64()?;
    let offset = line.get("offset")?.as_i64()?;
    let empty = Map::new();
    let headers = line
        .get("headers")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let header = |name: &str| headers.get(name).and_then(Value::as_str);
    let message = line.get("message").cloned().unwrap_or(Value::Null);
    let field = |names: &[&str]| {
        names.iter().find_map(|n| {
            message.get(n).and_then(|v| {
                v.as_str()
                    .map(str::to_string)
                    .or_else(|| (!v.is_null()).then(|| v.to_string()))
            })
        })
    };
    let base = topic.strip_suffix(".dlq").unwrap_or(&topic);
    let system = systems.get(&topic).or_else(|| systems.get(base)).copied();
    let timestamp = line.get("timestamp").and_then(Value::as_str);
    let timestamp_ms = timestamp
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis());
    let trace_id = header("traceparent")
        .and_then(crate::trace::TraceParent::parse)
        .map(|t| t.trace_id);
    let id = format!("{topic}/{partition}/{offset}");
    let fields = json!({
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": line.get("key"),
        "timestamp": timestamp,
        "timestamp_ms": timestamp_ms,
        "log_position": position,
        "system": system,
        "event_type": field(&["event_type", "type"]).or_else(|| header("ce_type").map(str::to_string)),
        "correlation_id": field(&["correlation_id", "correlationid"])
            .or_else(|| header("ce_correlationid").map(str::to_string)),
        "source": field(&["source"]).or_else(|| header("ce_source").map(str::to_string)),
        "trace_id": trace_id,
        "reason": header("dlq.reason"),
        "payload_text": match &message {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        },
        "payload": if message.is_object() { message.clone() } else { json!({"value": message}) },
    });
    Some(Document { id, fields })
}

/// Lines of the audit log, each with the byte offset where it starts.
pub type Lines = Vec<(u64, Vec<u8>)>;

/// Complete lines of the log from `position`, at most `max`, and the position after them.
pub fn read_lines(log: &Path, position: u64, max: usize) -> std::io::Result<(Lines, u64)> {
    let mut file = match std::fs::File::open(log) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), position)),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(position))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut lines = Vec::new();
    let mut end = position;
    while lines.len() < max {
        let mut line = Vec::new();
        let n = reader.read_until(b'\n', &mut line)?;
        // A line S3 is still writing is read next time.
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        lines.push((end, line));
        end += n as u64;
    }
    Ok((lines, end))
}

/// Which system each topic belongs to, for the `system` field.
pub type TopicSystems = HashMap<String, &'static str>;

/// Follows the audit log into one engine; see the module's documentation.
pub struct Indexer {
    engine: Arc<dyn SearchEngine>,
    log_path: PathBuf,
    systems: TopicSystems,
    /// How far the log is indexed: asked of the engine once, then kept.
    position: Option<u64>,
}

impl Indexer {
    /// An indexer of the log at `log_path` into `engine`.
    pub fn new(engine: Arc<dyn SearchEngine>, log_path: PathBuf, systems: TopicSystems) -> Self {
        Self {
            engine,
            log_path,
            systems,
            position: None,
        }
    }

    /// Indexes one batch of what the log holds beyond the position; returns how many
    /// lines it read (0: nothing new).
    pub async fn index_once(&mut self) -> Result<usize, SearchError> {
        let position = match self.position {
            Some(p) => p,
            None => self.engine.position().await?,
        };
        self.position = Some(position);
        let (log, max) = (self.log_path.clone(), self.engine.batch_lines());
        let (lines, end) = tokio::task::spawn_blocking(move || read_lines(&log, position, max))
            .await
            .expect("reading the audit log panicked")?;
        if lines.is_empty() {
            return Ok(0);
        }
        let docs: Vec<Document> = lines
            .iter()
            .filter_map(|(at, line)| document(line, *at, &self.systems))
            .collect();
        let n = docs.len();
        self.engine.index(docs, end).await?;
        self.position = Some(end);
        crate::metrics::indexed(self.engine.kind(), n);
        Ok(lines.len())
    }

    /// Indexes until nothing is left; what a search run while S3 is stopped does first.
    pub async fn catch_up(&mut self) -> Result<(), SearchError> {
        while self.index_once().await? > 0 {}
        Ok(())
    }

    /// Indexes until `shutdown`: batch after batch while full ones are waiting, then a look
    /// every [`REFRESH`]. Any failure (an engine unavailable, another process writing the embedded
    /// index, an unreadable log) is logged and retried with backoff, for as long as it
    /// takes: indexing never stops S3.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        while !shutdown.is_cancelled() {
            match self.index_once().await {
                Ok(n) => {
                    backoff = Backoff::default();
                    if n >= self.engine.batch_lines() {
                        continue;
                    }
                }
                // Whatever goes wrong with an index, S3 and the file carry on: the
                // indexer says so and tries again, and catches up once it can.
                Err(e) => {
                    // Asked again once it answers: it may have lost what it had.
                    self.position = None;
                    let what = format!("indexing the audit log into {}", self.engine.describe());
                    if !backoff.wait(&what, &e.to_string(), &shutdown).await {
                        break;
                    }
                    continue;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(REFRESH) => {}
            }
        }
    }
}

/// Every message of one request, in the order they happened (time, then the log's order):
/// those whose `correlation_id` or `trace_id` is `id`.
pub async fn trace(engine: &dyn SearchEngine, id: &str) -> Result<Vec<Value>, SearchError> {
    const MOST: usize = 10_000;
    let mut hits: Vec<Value> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for field in ["correlation_id", "trace_id"] {
        let query = Query {
            terms: vec![(Field::Keyword(field), id.to_string())],
            limit: MOST,
            ..Query::default()
        };
        for hit in engine.search(&query).await?.hits {
            if seen.insert(hit["log_position"].as_u64()) {
                hits.push(hit);
            }
        }
    }
    hits.sort_by_key(|h| {
        (
            h["timestamp_ms"].as_i64().unwrap_or(i64::MIN),
            h["log_position"].as_u64().unwrap_or(0),
        )
    });
    Ok(hits)
}

/// One line for a hit: time, `topic/partition/offset`, event type, correlation id, the
/// message (shortened) and, for a dead letter, the reason.
pub fn summary(hit: &Value) -> String {
    let text = |name: &str| hit[name].as_str().unwrap_or("-").to_string();
    let payload = &hit["payload"];
    let message = match payload.get("value") {
        Some(Value::String(s)) if payload.as_object().is_some_and(|m| m.len() == 1) => s.clone(),
        _ => payload.to_string(),
    };
    let mut short: String = message.chars().take(120).collect();
    if short.len() < message.len() {
        short.push('…');
    }
    let mut line = format!(
        "{}  {}/{}/{}  {}  {}  {}",
        text("timestamp"),
        text("topic"),
        hit["partition"],
        hit["offset"],
        text("event_type"),
        text("correlation_id"),
        short
    );
    if let Some(reason) = hit["reason"].as_str() {
        line.push_str(&format!("  [dead letter: {reason}]"));
    }
    line
}

/// The embedded index of the audit log at `log_path`: `<log>.index/`.
pub fn embedded_dir(log_path: &Path) -> PathBuf {
    let mut name = log_path.as_os_str().to_owned();
    name.push(".index");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_carry_what_search_needs() {
        let systems: TopicSystems = [("user_events".to_string(), "streaming")].into();
        let line = br#"{"topic":"user_events.dlq","partition":1,"offset":7,"key":null,"timestamp":"2026-11-23T10:00:00.000Z","message":{"event_type":"criar_usuario","correlation_id":"c-1","data":{"x":1}},"headers":{"dlq.reason":"missing field `nome`","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}"#;
        let doc = document(line, 42, &systems).unwrap();
        assert_eq!(doc.id, "user_events.dlq/1/7");
        let f = &doc.fields;
        assert_eq!(f["system"], "streaming");
        assert_eq!(f["event_type"], "criar_usuario");
        assert_eq!(f["correlation_id"], "c-1");
        assert_eq!(f["reason"], "missing field `nome`");
        assert_eq!(f["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(f["log_position"], 42);
        assert_eq!(f["timestamp_ms"], 1_795_428_000_000_i64);
        assert_eq!(f["payload"]["data"]["x"], 1);
        assert!(
            f["payload_text"]
                .as_str()
                .unwrap()
                .contains("criar_usuario")
        );
        let text = br#"{"topic":"t","partition":0,"offset":0,"key":"k","timestamp":null,"message":"not json"}"#;
        let doc = document(text, 0, &systems).unwrap();
        assert_eq!(doc.fields["payload"], json!({"value": "not json"}));
        assert_eq!(doc.fields["payload_text"], "not json");
        assert_eq!(doc.fields["timestamp_ms"], Value::Null);
        assert!(document(b"garbage", 0, &systems).is_none());
    }

    #[test]
    fn lines_are_whole_and_know_where_they_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("messages.log");
        std::fs::write(&log, b"{\"a\":1}\n{\"b\":2}\n{\"torn\"").unwrap();
        let (lines, end) = read_lines(&log, 0, 100).unwrap();
        assert_eq!(lines.iter().map(|(at, _)| *at).collect::<Vec<_>>(), [0, 8]);
        assert_eq!(end, 16);
        let (lines, end) = read_lines(&log, 0, 1).unwrap();
        assert_eq!((lines.len(), end), (1, 8));
        let (lines, _) = read_lines(&log, 16, 100).unwrap();
        assert!(lines.is_empty(), "the torn line waits until it is whole");
    }

    /// The embedded index with batches of `batch` lines, noting when each commit is made.
    struct Commits {
        index: embedded::Embedded,
        batch: usize,
        at: std::sync::Mutex<Vec<std::time::Instant>>,
    }

    impl Commits {
        fn open(dir: &Path, batch: usize) -> Arc<Self> {
            Arc::new(Self {
                index: embedded::Embedded::open(dir).unwrap(),
                batch,
                at: Default::default(),
            })
        }

        fn at(&self) -> Vec<std::time::Instant> {
            self.at.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl SearchEngine for Commits {
        async fn position(&self) -> Result<u64, SearchError> {
            self.index.position().await
        }
        async fn index(&self, docs: Vec<Document>, position: u64) -> Result<(), SearchError> {
            self.index.index(docs, position).await?;
            self.at.lock().unwrap().push(std::time::Instant::now());
            Ok(())
        }
        async fn search(&self, query: &Query) -> Result<Found, SearchError> {
            self.index.search(query).await
        }
        fn batch_lines(&self) -> usize {
            self.batch
        }
        fn kind(&self) -> &'static str {
            "embedded"
        }
        fn describe(&self) -> String {
            "embedded, its commits noted".into()
        }
    }

    fn append(log: &Path, from: usize, n: usize) -> u64 {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        for offset in from..from + n {
            writeln!(
                f,
                r#"{{"topic":"t","partition":0,"offset":{offset},"key":null,"timestamp":null,"message":"m {offset}"}}"#
            )
            .unwrap();
        }
        f.metadata().unwrap().len()
    }

    /// Runs an indexer over `log` into `engine` until the engine's position is `end`.
    async fn index_until(engine: Arc<Commits>, log: &Path, end: impl Fn() -> u64) {
        let stop = CancellationToken::new();
        let indexer = Indexer::new(engine.clone(), log.to_path_buf(), TopicSystems::new());
        let task = tokio::spawn(indexer.run(stop.clone()));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while engine.position().await.unwrap() != end() {
            assert!(
                std::time::Instant::now() < deadline,
                "the log never indexed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_log_growing_slower_than_a_batch_is_committed_once_a_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("messages.log");
        let engine = Commits::open(&dir.path().join("index"), 1_000);
        let end = Arc::new(std::sync::atomic::AtomicU64::new(append(&log, 0, 1)));
        let writer = {
            let (log, end) = (log.clone(), end.clone());
            tokio::spawn(async move {
                // 150 lines over 3 s, one every 20 ms.
                for n in 1..150 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    end.store(append(&log, n, 1), std::sync::atomic::Ordering::SeqCst);
                }
            })
        };
        let started = std::time::Instant::now();
        let last = || end.load(std::sync::atomic::Ordering::SeqCst);
        index_until(engine.clone(), &log, || {
            if writer.is_finished() {
                last()
            } else {
                u64::MAX
            }
        })
        .await;
        let seconds = started.elapsed().as_secs_f64() / REFRESH.as_secs_f64();
        let commits = engine.at().len();
        // One at the start, then at most one a refresh.
        assert!(
            (commits as f64) <= seconds.ceil() + 1.0,
            "{commits} commits in {seconds:.1} refresh intervals"
        );
    }

    #[tokio::test]
    async fn full_batches_are_committed_one_after_another() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("messages.log");
        let engine = Commits::open(&dir.path().join("index"), 10);
        let end = append(&log, 0, 35);
        index_until(engine.clone(), &log, || end).await;
        let at = engine.at();
        assert_eq!(at.len(), 4, "10, 10, 10 and 5 lines");
        // Waiting a refresh after each would take three.
        assert!(
            at[3] - at[0] < 2 * REFRESH,
            "the batches took {:?}",
            at[3] - at[0]
        );
    }

    #[test]
    fn queries_parse_terms_words_and_times() {
        let now = DateTime::parse_from_rfc3339("2026-11-24T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let q = Query::parse_at(
            r#"topic:books correlation_id:c-1 partition:2 reason:"Missing field" Dom Casmurro since:15m until:2026-11-24T12:00:00Z "http://x.y""#,
            20,
            now,
        )
        .unwrap();
        assert_eq!(
            q.terms,
            vec![
                (Field::Keyword("topic"), "books".into()),
                (Field::Keyword("correlation_id"), "c-1".into()),
                (Field::Integer("partition"), "2".into()),
                (Field::Text("reason"), "missing field".into()),
            ]
        );
        assert_eq!(q.words, ["dom", "casmurro", "http", "x", "y"]);
        assert_eq!(q.since_ms, Some(now.timestamp_millis() - 15 * 60 * 1000));
        assert_eq!(q.until_ms, Some(now.timestamp_millis()));
        for bad in ["colour:red", "partition:x", "since:yesterdayish"] {
            let e = Query::parse_at(bad, 20, now).unwrap_err();
            assert!(matches!(e, SearchError::Query(_)), "{bad}: {e}");
        }
        assert!(Query::parse_at("  ", 5, now).unwrap().is_empty());
        assert_eq!(
            words("João-da Silva_x ÉÇ"),
            ["joão", "da", "silva", "x", "éç"]
        );
    }
}
