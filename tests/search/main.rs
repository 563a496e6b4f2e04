//! The audit log in Elasticsearch: S3 indexes every line it appends, goes on while the
//! search engine is down (kill -9), and back-fills from the file when it is back — no gap,
//! no duplicate. Runs against a private Elasticsearch-API server (`noida-db`, what
//! `.ci/run` installs) where `LIVROS_TEST_ELASTICSEARCH_URL` is set.

#[path = "../common/mod.rs"]
pub mod common;

use std::time::Duration;

use livros::store::StoreConfig;
use serde_json::{Value, json};

use common::{Child, eventually, free_port, service_url};

/// A private search server on `port`, keeping its data in `dir`.
fn spawn_search(port: u16, dir: &std::path::Path) -> Child {
    Child(
        std::process::Command::new("noida-db")
            .args(["start", "--only", "elasticsearch", "--elasticsearch-port"])
            .arg(port.to_string())
            .arg("--data-dir")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("noida-db is installed where LIVROS_TEST_ELASTICSEARCH_URL is set (pip install noida-db)"),
    )
}

/// Documents in `index`, after a refresh; `None` while the server does not answer.
async fn count(base: &str, index: &str, query: Option<Value>) -> Option<u64> {
    let client = reqwest::Client::new();
    client
        .post(format!("{base}/{index}/_refresh"))
        .send()
        .await
        .ok()?;
    let body = json!({"query": query.unwrap_or(json!({"match_all": {}}))});
    let answer: Value = client
        .post(format!("{base}/{index}/_count"))
        .json(&body)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    answer["count"].as_u64()
}

fn log_lines(dir: &std::path::Path) -> u64 {
    std::fs::read_to_string(dir.join("messages.log"))
        .map(|t| t.lines().count() as u64)
        .unwrap_or(0)
}

#[tokio::test]
async fn audit_log_is_indexed_and_back_filled_after_an_outage() {
    if service_url("LIVROS_TEST_ELASTICSEARCH_URL").is_none() {
        return;
    }
    let search_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut search = spawn_search(port, search_dir.path());
    eventually(
        "the search server to start",
        Duration::from_secs(60),
        || async { reqwest::get(&base).await.is_ok() },
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig::default();
    let livros = || {
        let mut cmd = common::livros(dir.path(), &config, "bookstore");
        cmd.env("LIVROS_ELASTICSEARCH_URL", &base)
            .env("LIVROS_ELASTICSEARCH_INDEX", "audit_test");
        cmd
    };
    let produce = |n: u32| {
        let status = livros()
            .args(["s1", "--count", &n.to_string(), "--rate", "0", "--quiet"])
            .status()
            .unwrap();
        assert!(status.success());
    };
    produce(20);
    let _s3 = Child(livros().args(["s3", "--quiet"]).spawn().unwrap());
    eventually("every line indexed", Duration::from_secs(60), || async {
        log_lines(dir.path()) == 60 && count(&base, "audit_test", None).await == Some(60)
    })
    .await;

    // The search engine dies; S3 goes on writing the file.
    search.0.kill().unwrap();
    search.0.wait().unwrap();
    produce(20);
    eventually(
        "S3 to log while the index is down",
        Duration::from_secs(60),
        || async { log_lines(dir.path()) == 120 },
    )
    .await;

    // Back: the indexer back-fills from where the index stopped, no duplicate.
    let _search = spawn_search(port, search_dir.path());
    eventually("the back-fill", Duration::from_secs(120), || async {
        count(&base, "audit_test", None).await == Some(120)
    })
    .await;
    let customers = count(
        &base,
        "audit_test",
        Some(json!({"term": {"topic": "customers"}})),
    )
    .await;
    assert_eq!(customers, Some(40));
    let systems = count(
        &base,
        "audit_test",
        Some(json!({"term": {"system": "bookstore"}})),
    )
    .await;
    assert_eq!(systems, Some(120));
    // A message is found by its id, topic/partition/offset, and by the words it holds.
    let line: Value = serde_json::from_str(
        std::fs::read_to_string(dir.path().join("messages.log"))
            .unwrap()
            .lines()
            .find(|l| l.contains("\"topic\":\"books\""))
            .unwrap(),
    )
    .unwrap();
    let id = format!("books/{}/{}", line["partition"], line["offset"]);
    let doc: Value = reqwest::get(format!("{base}/audit_test/_doc/{}", id.replace('/', "%2F")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["_source"]["topic"], "books", "{doc}");
    let title = line["message"]["data"]["title"].as_str().unwrap();
    let word = title
        .split_whitespace()
        .max_by_key(|w| w.len())
        .unwrap()
        .to_lowercase();
    let found = count(
        &base,
        "audit_test",
        Some(json!({"match": {"payload_text": word}})),
    )
    .await;
    assert!(
        found.is_some_and(|n| n >= 1),
        "`{word}` from `{title}`: {found:?}"
    );
}
mod engines;
