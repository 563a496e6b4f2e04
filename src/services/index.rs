//! The audit log, searchable: every line S3 appends to `messages.log` is indexed into
//! Elasticsearch (or OpenSearch) through the bulk API, index `system_logs` by default.
//!
//! **The file is the record of truth, and the index follows it.** The indexer reads the
//! log from where it stopped and indexes it in bulk; S3 never waits on it. When the
//! search engine is down or refusing, S3 goes on writing and committing, and the indexer
//! retries with backoff; when it comes back, the indexer back-fills from where the index
//! stopped. **The position** is the byte offset in the log up to which every line is
//! indexed, kept in `<audit log>.indexed` and replaced (write, fsync, rename) only after a
//! bulk request succeeded; a crash in between indexes some lines again, and since each
//! document's id is `topic/partition/offset`, that changes nothing: no gap, no duplicate.
//!
//! A document: `topic`, `partition`, `offset`, `key`, `system`, `event_type`,
//! `correlation_id`, `source`, `timestamp`, `reason` (a dead letter's `dlq.reason`),
//! `payload` (the message, an object when it is JSON; kept, not indexed, so one system's
//! field types never clash with another's) and `payload_text` (its text, full-text
//! indexed).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::ServiceError;
use crate::retry::Backoff;

/// The index unless configured otherwise (seed 3's).
pub const DEFAULT_INDEX: &str = "system_logs";

/// Most lines per bulk request.
const BULK_LINES: usize = 2000;
/// How long an idle indexer waits before looking at the log again.
const IDLE: Duration = Duration::from_millis(250);

/// Where and what to index.
#[derive(Debug, Clone)]
pub struct IndexConfig {
    /// The search engine's base URL (`http://127.0.0.1:9200`).
    pub url: String,
    /// The index.
    pub index: String,
    /// The audit log to follow.
    pub log_path: PathBuf,
    /// Which system each topic belongs to (the deployment's names).
    pub systems: HashMap<String, &'static str>,
}

/// Why indexing failed.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The search engine did not answer, or answered that it cannot take the request now.
    #[error("search engine unavailable: {0}")]
    Unavailable(String),
    /// The audit log or the position file could not be read or written.
    #[error("{0}")]
    File(#[from] std::io::Error),
}

/// The file keeping how far the log is indexed.
pub fn position_path(log_path: &Path) -> PathBuf {
    let mut name = log_path.as_os_str().to_owned();
    name.push(".indexed");
    PathBuf::from(name)
}

fn read_position(path: &Path) -> std::io::Result<u64> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.trim().parse().unwrap_or(0)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

fn write_position(path: &Path, position: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("indexed.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(position.to_string().as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Complete lines of the log from `position`, at most [`BULK_LINES`], and the position
/// after them.
fn read_lines(log: &Path, position: u64) -> std::io::Result<(Vec<Vec<u8>>, u64)> {
    let mut file = match std::fs::File::open(log) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), position)),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(position))?;
    let mut reader = BufReader::new(file);
    let mut lines = Vec::new();
    let mut end = position;
    while lines.len() < BULK_LINES {
        let mut line = Vec::new();
        let n = reader.read_until(b'\n', &mut line)?;
        // A line S3 is still writing is read next time.
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        end += n as u64;
        lines.push(line);
    }
    Ok((lines, end))
}

/// The search document of one audit line, and its id; `None` for a line that is not one.
pub fn document(line: &[u8], systems: &HashMap<String, &'static str>) -> Option<(String, Value)> {
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
    // The envelope's fields, or the bare payload's.
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
    let id = format!("{topic}/{partition}/{offset}");
    let doc = json!({
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": line.get("key"),
        "timestamp": line.get("timestamp"),
        "system": system,
        "event_type": field(&["event_type", "type"]).or_else(|| header("ce_type").map(str::to_string)),
        "correlation_id": field(&["correlation_id", "correlationid"])
            .or_else(|| header("ce_correlationid").map(str::to_string)),
        "source": field(&["source"]).or_else(|| header("ce_source").map(str::to_string)),
        "reason": header("dlq.reason"),
        "payload_text": match &message {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        },
        "payload": if message.is_object() { message.clone() } else { json!({"value": message}) },
    });
    Some((id, doc))
}

/// The index's mapping: ids and names as keywords, the payload kept but not indexed.
fn mapping() -> Value {
    let keyword = json!({"type": "keyword"});
    json!({
        "mappings": {
            "properties": {
                "topic": keyword, "key": keyword, "system": keyword, "event_type": keyword,
                "correlation_id": keyword, "source": keyword,
                "partition": {"type": "integer"}, "offset": {"type": "long"},
                "timestamp": {"type": "date"},
                "reason": {"type": "text"}, "payload_text": {"type": "text"},
                "payload": {"type": "object", "enabled": false},
            }
        }
    })
}

/// Follows the audit log into the search engine; see the module's documentation.
pub struct Indexer {
    config: IndexConfig,
    client: reqwest::Client,
    position_path: PathBuf,
    /// How far the log is indexed: read from the position file once, then kept.
    position: Option<u64>,
    index_ready: bool,
}

impl Indexer {
    /// An indexer as `config` says.
    pub fn new(config: IndexConfig) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("a client with a timeout builds");
        let position_path = position_path(&config.log_path);
        Self {
            config,
            client,
            position_path,
            position: None,
            index_ready: false,
        }
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> IndexError {
        IndexError::Unavailable(format!("{}: {e}", self.config.url))
    }

    /// Creates the index with its mapping, unless it exists.
    async fn ensure_index(&mut self) -> Result<(), IndexError> {
        if self.index_ready {
            return Ok(());
        }
        let url = format!(
            "{}/{}",
            self.config.url.trim_end_matches('/'),
            self.config.index
        );
        let response = self
            .client
            .put(&url)
            .json(&mapping())
            .send()
            .await
            .map_err(|e| self.unavailable(e))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() || text.contains("resource_already_exists_exception") {
            self.index_ready = true;
            Ok(())
        } else {
            Err(self.unavailable(format!(
                "creating index `{}` answered {status}: {text}",
                self.config.index
            )))
        }
    }

    /// Indexes what the log holds beyond the position; returns how many lines it read (0:
    /// nothing new).
    pub async fn index_once(&mut self) -> Result<usize, IndexError> {
        self.ensure_index().await?;
        let position = match self.position {
            Some(p) => p,
            None => read_position(&self.position_path)?,
        };
        self.position = Some(position);
        let (log, start) = (self.config.log_path.clone(), position);
        let (lines, end) = tokio::task::spawn_blocking(move || read_lines(&log, start))
            .await
            .expect("reading the audit log panicked")?;
        if lines.is_empty() {
            return Ok(0);
        }
        let mut body = Vec::new();
        let mut ids = Vec::new();
        for line in &lines {
            if let Some((id, doc)) = document(line, &self.config.systems) {
                serde_json::to_writer(
                    &mut body,
                    &json!({"index": {"_index": self.config.index, "_id": id}}),
                )
                .expect("JSON serializes");
                body.push(b'\n');
                serde_json::to_writer(&mut body, &doc).expect("JSON serializes");
                body.push(b'\n');
                ids.push(id);
            }
        }
        if !ids.is_empty() {
            self.bulk(body).await?;
        }
        write_position(&self.position_path, end)?;
        self.position = Some(end);
        crate::metrics::indexed(ids.len());
        Ok(lines.len())
    }

    /// Sends one bulk request; documents the engine refuses for what they hold are logged
    /// and left out (sending them again would fail again), anything else is retried.
    async fn bulk(&self, body: Vec<u8>) -> Result<(), IndexError> {
        let url = format!("{}/_bulk", self.config.url.trim_end_matches('/'));
        let response = self
            .client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(body)
            .send()
            .await
            .map_err(|e| self.unavailable(e))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(self.unavailable(format!("bulk answered {status}: {text}")));
        }
        let answer: Value = response.json().await.map_err(|e| self.unavailable(e))?;
        if answer["errors"].as_bool() != Some(true) {
            return Ok(());
        }
        let items = answer["items"].as_array().cloned().unwrap_or_default();
        let mut refused = 0;
        for item in &items {
            let result = item.get("index").unwrap_or(item);
            let code = result["status"].as_u64().unwrap_or(0);
            if code == 429 || code >= 500 {
                return Err(
                    self.unavailable(format!("bulk item answered {code}: {}", result["error"]))
                );
            }
            if code >= 400 {
                refused += 1;
                tracing::warn!(id = %result["_id"], "the search engine refused a document: {}", result["error"]);
            }
        }
        if refused > 0 {
            crate::metrics::index_refused(refused);
        }
        Ok(())
    }

    /// Indexes until `shutdown`: batch after batch while the log grows, then a look every
    /// [`IDLE`]. An unavailable engine is retried with backoff, for as long as it takes.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), ServiceError> {
        let mut backoff = Backoff::default();
        while !shutdown.is_cancelled() {
            match self.index_once().await {
                Ok(n) => {
                    backoff = Backoff::default();
                    if n > 0 {
                        continue;
                    }
                }
                Err(IndexError::Unavailable(e)) => {
                    self.index_ready = false;
                    if !backoff.wait("indexing the audit log", &e, &shutdown).await {
                        break;
                    }
                    continue;
                }
                Err(IndexError::File(e)) => {
                    return Err(ServiceError::LogFile {
                        path: self.config.log_path.display().to_string(),
                        source: e,
                    });
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(IDLE) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_carry_what_search_needs() {
        let systems: HashMap<String, &'static str> =
            [("user_events".to_string(), "streaming")].into();
        let line = br#"{"topic":"user_events.dlq","partition":1,"offset":7,"key":null,"timestamp":"2026-11-23T10:00:00.000Z","message":{"event_type":"criar_usuario","correlation_id":"c-1","data":{"x":1}},"headers":{"dlq.reason":"missing field `nome`"}}"#;
        let (id, doc) = document(line, &systems).unwrap();
        assert_eq!(id, "user_events.dlq/1/7");
        assert_eq!(doc["system"], "streaming");
        assert_eq!(doc["event_type"], "criar_usuario");
        assert_eq!(doc["correlation_id"], "c-1");
        assert_eq!(doc["reason"], "missing field `nome`");
        assert_eq!(doc["payload"]["data"]["x"], 1);
        assert!(
            doc["payload_text"]
                .as_str()
                .unwrap()
                .contains("criar_usuario")
        );
        let text = br#"{"topic":"t","partition":0,"offset":0,"key":"k","timestamp":null,"message":"not json"}"#;
        let (_, doc) = document(text, &systems).unwrap();
        assert_eq!(doc["payload"], json!({"value": "not json"}));
        assert_eq!(doc["payload_text"], "not json");
        assert!(document(b"garbage", &systems).is_none());
    }

    #[test]
    fn the_position_survives_and_lines_are_whole() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("messages.log");
        std::fs::write(&log, b"{\"a\":1}\n{\"b\":2}\n{\"torn\"").unwrap();
        let (lines, end) = read_lines(&log, 0).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(end, 16);
        let position = position_path(&log);
        assert_eq!(read_position(&position).unwrap(), 0);
        write_position(&position, end).unwrap();
        assert_eq!(read_position(&position).unwrap(), 16);
        let (lines, _) = read_lines(&log, 16).unwrap();
        assert!(lines.is_empty(), "the torn line waits until it is whole");
    }
}
