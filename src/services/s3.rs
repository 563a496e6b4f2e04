//! S3, the audit log: consumes every topic (dead-letter topics included) in its own group
//! and appends one JSON line per message to `messages.log`.
//!
//! Exactly once in the file, even across crashes: each batch is written and fsynced before
//! its offsets are committed, and at start the log is read back to learn the last offset
//! written per partition (a torn last line is cut off), so a redelivered message is
//! recognised and skipped instead of written twice.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use super::{Counters, ServiceError};
use crate::bus::{Bus, Message, StartFrom, next_offsets};

/// S3's settings.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// Consumer group.
    pub group: String,
    /// The audit log file.
    pub log_path: PathBuf,
    /// The topics to follow.
    pub topics: Vec<String>,
    /// Most messages per batch (and per fsync).
    pub batch_size: usize,
    /// Print one line per message.
    pub print_events: bool,
}

/// The append-only audit log.
pub struct AuditLog {
    file: File,
    /// Highest offset already in the file, per partition.
    written: HashMap<(String, i32), i64>,
}

#[derive(Deserialize)]
struct LineKey {
    topic: String,
    partition: i32,
    offset: i64,
}

impl AuditLog {
    /// Opens (creating if needed) the log at `path`, cutting off a torn last line and
    /// learning what it already holds.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let mut written = HashMap::new();
        let mut complete = 0_u64;
        let mut reader = BufReader::new(&mut file);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            complete += n as u64;
            if let Ok(key) = serde_json::from_slice::<LineKey>(&line) {
                let max = written
                    .entry((key.topic, key.partition))
                    .or_insert(key.offset);
                *max = (*max).max(key.offset);
            }
        }
        drop(reader);
        if file.metadata()?.len() > complete {
            tracing::warn!(path = %path.display(), "cutting a torn last line left by a crash");
            file.set_len(complete)?;
            file.sync_data()?;
        }
        file.seek(SeekFrom::End(0))?;
        Ok(Self { file, written })
    }

    /// Appends the messages not yet in the log and fsyncs; returns how many were written.
    pub fn append(&mut self, messages: &[Message]) -> std::io::Result<usize> {
        let mut buffer = Vec::new();
        let mut count = 0;
        for m in messages {
            let seen = self.written.get(&(m.topic.clone(), m.partition));
            if seen.is_some_and(|last| m.offset <= *last) {
                continue;
            }
            serde_json::to_writer(&mut buffer, &line(m)).expect("audit lines serialize");
            buffer.push(b'\n');
            count += 1;
        }
        if count > 0 {
            self.file.write_all(&buffer)?;
            self.file.sync_data()?;
            for m in messages {
                let max = self
                    .written
                    .entry((m.topic.clone(), m.partition))
                    .or_insert(m.offset);
                *max = (*max).max(m.offset);
            }
        }
        Ok(count)
    }
}

/// One audit line. `message` is the payload itself when it is JSON, else the payload as
/// text (invalid UTF-8 replaced), so every line is valid JSON.
#[derive(Serialize)]
struct Line<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    key: Option<&'a str>,
    timestamp: Option<String>,
    message: Body<'a>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<&'a str, &'a str>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Body<'a> {
    /// Valid JSON on one line, embedded as is (no parse into a tree and back).
    Raw(&'a RawValue),
    /// Valid JSON spread over lines, re-serialized compactly.
    Parsed(Value),
    /// Not JSON.
    Text(std::borrow::Cow<'a, str>),
}

fn line(m: &Message) -> Line<'_> {
    let message = match serde_json::from_slice::<&RawValue>(&m.payload) {
        Ok(raw) if !m.payload.contains(&b'\n') && !m.payload.contains(&b'\r') => Body::Raw(raw),
        Ok(_) => Body::Parsed(serde_json::from_slice(&m.payload).expect("valid JSON just checked")),
        Err(_) => Body::Text(String::from_utf8_lossy(&m.payload)),
    };
    Line {
        topic: &m.topic,
        partition: m.partition,
        offset: m.offset,
        key: m.key.as_deref(),
        timestamp: chrono::DateTime::from_timestamp_millis(m.timestamp_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        message,
        headers: m
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
    }
}

/// Runs S3 until `shutdown` is cancelled.
pub async fn run(
    bus: Arc<dyn Bus>,
    config: S3Config,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let log_error = |source| ServiceError::LogFile {
        path: config.log_path.display().to_string(),
        source,
    };
    let mut log = Some(AuditLog::open(&config.log_path).map_err(log_error)?);
    let mut consumer = bus
        .subscribe(&config.group, &config.topics, StartFrom::Earliest)
        .await?;
    let mut lag = crate::metrics::LagGauge::new(&config.group, &config.topics, "*");
    while let Some(messages) =
        super::next_batch(&mut *consumer, config.batch_size, &shutdown).await?
    {
        // File writes and fsync block: keep them off the async workers.
        let mut owned = log.take().expect("log is put back after each batch");
        let batch = messages.clone();
        let (back, written) = tokio::task::spawn_blocking(move || {
            let written = owned.append(&batch);
            (owned, written)
        })
        .await
        .expect("audit log writer panicked");
        log = Some(back);
        let written = written.map_err(log_error)?;

        if !super::commit(&mut *consumer, &next_offsets(&messages), &shutdown).await?
            && shutdown.is_cancelled()
        {
            Counters::add(&counters.logged, written);
            break;
        }
        Counters::add(&counters.logged, written);
        let mut per_topic: std::collections::BTreeMap<&str, usize> = Default::default();
        for m in &messages {
            *per_topic.entry(m.topic.as_str()).or_default() += 1;
        }
        for (topic, n) in per_topic {
            crate::metrics::consumed("s3", topic, n);
        }
        lag.update(&*bus).await;
        if config.print_events {
            for m in &messages {
                println!("[S3] Logged message from {}", m.topic);
            }
        }
    }
    consumer.close().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(topic: &str, offset: i64, payload: &[u8]) -> Message {
        Message {
            topic: topic.into(),
            partition: 0,
            offset,
            key: Some("k".into()),
            headers: vec![],
            payload: payload.to_vec(),
            timestamp_ms: 0,
        }
    }

    #[test]
    fn reopened_log_skips_what_it_holds_and_cuts_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("messages.log");
        let mut log = AuditLog::open(&path).unwrap();
        assert_eq!(
            log.append(&[message("t", 0, b"{\"a\":1}"), message("t", 1, b"not json")])
                .unwrap(),
            2
        );
        drop(log);
        // A crash mid-write leaves half a line.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"topic\":\"t\",\"par")
            .unwrap();
        let mut log = AuditLog::open(&path).unwrap();
        assert_eq!(
            log.append(&[message("t", 1, b"{}"), message("t", 2, b"{}")])
                .unwrap(),
            1
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["message"], json!({"a": 1}));
        assert_eq!(lines[1]["message"], json!("not json"));
        assert_eq!(lines[2]["offset"], 2);
        // Pretty-printed JSON still makes one line.
        assert_eq!(
            log.append(&[message("t", 3, b"{\n  \"a\": [1,\n 2]\n}")])
                .unwrap(),
            1
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last["message"], json!({"a": [1, 2]}));
        assert_eq!(text.lines().count(), 4);
    }
}
