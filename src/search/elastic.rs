//! Elasticsearch 8 / OpenSearch 2 over the REST API: documents in through `_bulk`,
//! searches through `_search`, the index created with its mapping on first use.
//!
//! The position (how far the log is indexed) lives in `<audit log>.indexed`, replaced
//! (write, fsync, rename) only after a bulk request succeeded.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{Document, Field, Found, Query, SearchEngine, SearchError, TEXT_FIELD};

/// Most lines per bulk request.
const BULK_LINES: usize = 2000;

/// The file keeping how far the log is indexed into Elasticsearch.
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

/// The index's settings and mapping: ids and names as keywords, words tokenized as the
/// embedded index does (runs of letters and digits, lowercased), the payload kept but not
/// indexed.
fn mapping() -> Value {
    let keyword = json!({"type": "keyword"});
    let words = json!({"type": "text", "analyzer": "livros_words"});
    json!({
        "settings": {
            "analysis": {
                "tokenizer": {"livros_words": {"type": "pattern", "pattern": "[^\\p{L}\\p{N}]+"}},
                "analyzer": {"livros_words": {"type": "custom", "tokenizer": "livros_words",
                                              "filter": ["lowercase"]}},
            }
        },
        "mappings": {
            "properties": {
                "topic": keyword, "key": keyword, "system": keyword, "event_type": keyword,
                "correlation_id": keyword, "source": keyword, "trace_id": keyword,
                "partition": {"type": "integer"}, "offset": {"type": "long"},
                "timestamp": {"type": "date"}, "timestamp_ms": {"type": "long"},
                "log_position": {"type": "long"},
                "reason": words, TEXT_FIELD: words,
                "payload": {"type": "object", "enabled": false},
            }
        }
    })
}

/// The `_search` body of a query.
fn search_body(query: &Query) -> Value {
    let mut filter = Vec::new();
    let mut must = Vec::new();
    let all_words =
        |field: &str, text: &str| json!({"match": {field: {"query": text, "operator": "and"}}});
    for (field, value) in &query.terms {
        match field {
            Field::Keyword(name) => filter.push(json!({"term": {*name: value}})),
            Field::Integer(name) => {
                let n: i64 = value.parse().unwrap_or_default();
                filter.push(json!({"term": {*name: n}}));
            }
            Field::Text(name) => must.push(all_words(name, value)),
        }
    }
    if !query.words.is_empty() {
        must.push(all_words(TEXT_FIELD, &query.words.join(" ")));
    }
    if query.since_ms.is_some() || query.until_ms.is_some() {
        let mut range = serde_json::Map::new();
        if let Some(since) = query.since_ms {
            range.insert("gte".into(), since.into());
        }
        if let Some(until) = query.until_ms {
            range.insert("lt".into(), until.into());
        }
        filter.push(json!({"range": {"timestamp_ms": range}}));
    }
    json!({
        "size": query.limit,
        "track_total_hits": true,
        "sort": [{"log_position": "desc"}],
        "_source": {"excludes": [TEXT_FIELD]},
        "query": {"bool": {"filter": filter, "must": must}},
    })
}

/// An Elasticsearch or OpenSearch index of the audit log.
pub struct Elastic {
    url: String,
    index: String,
    client: reqwest::Client,
    position_path: PathBuf,
    index_ready: AtomicBool,
}

impl Elastic {
    /// The index `index` at `url`, following the log at `log_path`.
    pub fn new(url: &str, index: &str, log_path: &Path) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("a client with a timeout builds");
        Self {
            url: url.trim_end_matches('/').to_string(),
            index: index.to_string(),
            client,
            position_path: position_path(log_path),
            index_ready: AtomicBool::new(false),
        }
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> SearchError {
        SearchError::Unavailable(format!("{}: {e}", self.url))
    }

    /// Creates the index with its mapping, unless it exists.
    async fn ensure_index(&self) -> Result<(), SearchError> {
        if self.index_ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        let response = self
            .client
            .put(format!("{}/{}", self.url, self.index))
            .json(&mapping())
            .send()
            .await
            .map_err(|e| self.unavailable(e))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() || text.contains("resource_already_exists_exception") {
            self.index_ready.store(true, Ordering::Relaxed);
            Ok(())
        } else {
            Err(self.unavailable(format!(
                "creating index `{}` answered {status}: {text}",
                self.index
            )))
        }
    }

    /// Sends one bulk request; documents the engine refuses for what they hold are logged
    /// and left out, anything else is an error to retry.
    async fn bulk(&self, body: Vec<u8>) -> Result<(), SearchError> {
        let response = self
            .client
            .post(format!("{}/_bulk", self.url))
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(body)
            .send()
            .await
            .map_err(|e| self.unavailable(e))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            if status == reqwest::StatusCode::NOT_FOUND {
                // The index was deleted under us: create it again next time.
                self.index_ready.store(false, Ordering::Relaxed);
            }
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
}

#[async_trait]
impl SearchEngine for Elastic {
    async fn position(&self) -> Result<u64, SearchError> {
        Ok(read_position(&self.position_path)?)
    }

    async fn index(&self, docs: Vec<Document>, position: u64) -> Result<(), SearchError> {
        self.ensure_index().await?;
        if !docs.is_empty() {
            let mut body = Vec::new();
            for doc in &docs {
                let action = json!({"index": {"_index": self.index, "_id": doc.id}});
                serde_json::to_writer(&mut body, &action).expect("JSON serializes");
                body.push(b'\n');
                serde_json::to_writer(&mut body, &doc.fields).expect("JSON serializes");
                body.push(b'\n');
            }
            self.bulk(body).await?;
        }
        write_position(&self.position_path, position)?;
        Ok(())
    }

    async fn search(&self, query: &Query) -> Result<Found, SearchError> {
        let response = self
            .client
            .post(format!("{}/{}/_search", self.url, self.index))
            .json(&search_body(query))
            .send()
            .await
            .map_err(|e| self.unavailable(e))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            // Nothing indexed yet.
            return Ok(Found::default());
        }
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(self.unavailable(format!("search answered {status}: {text}")));
        }
        let answer: Value = response.json().await.map_err(|e| self.unavailable(e))?;
        let hits = answer["hits"]["hits"]
            .as_array()
            .map(|hits| hits.iter().map(|h| h["_source"].clone()).collect())
            .unwrap_or_default();
        Ok(Found {
            total: answer["hits"]["total"]["value"].as_u64().unwrap_or(0),
            hits,
        })
    }

    async fn refresh(&self) -> Result<(), SearchError> {
        let response = self
            .client
            .post(format!("{}/{}/_refresh", self.url, self.index))
            .send()
            .await
            .map_err(|e| self.unavailable(e))?;
        match response.status() {
            s if s.is_success() || s == reqwest::StatusCode::NOT_FOUND => Ok(()),
            s => Err(self.unavailable(format!("refresh answered {s}"))),
        }
    }

    fn batch_lines(&self) -> usize {
        BULK_LINES
    }

    fn kind(&self) -> &'static str {
        "elasticsearch"
    }

    fn describe(&self) -> String {
        format!("elasticsearch ({}/{})", self.url, self.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_position_survives() {
        let dir = tempfile::tempdir().unwrap();
        let position = position_path(&dir.path().join("messages.log"));
        assert!(position.ends_with("messages.log.indexed"));
        assert_eq!(read_position(&position).unwrap(), 0);
        write_position(&position, 16).unwrap();
        assert_eq!(read_position(&position).unwrap(), 16);
    }

    #[test]
    fn queries_become_bool_queries() {
        let q = Query::parse(
            "topic:books partition:1 dom casmurro since:2026-11-24T00:00:00Z",
            5,
        )
        .unwrap();
        let body = search_body(&q);
        assert_eq!(body["size"], 5);
        let filter = &body["query"]["bool"]["filter"];
        assert_eq!(filter[0], json!({"term": {"topic": "books"}}));
        assert_eq!(filter[1], json!({"term": {"partition": 1}}));
        let since = chrono::DateTime::parse_from_rfc3339("2026-11-24T00:00:00Z").unwrap();
        assert_eq!(
            filter[2]["range"]["timestamp_ms"]["gte"],
            since.timestamp_millis()
        );
        assert_eq!(
            body["query"]["bool"]["must"][0]["match"][TEXT_FIELD]["query"],
            "dom casmurro"
        );
    }
}
