//! One query language, two engines, the same answers: a real audit log (every system,
//! dead letters included) indexed into the embedded index and into Elasticsearch, then a
//! battery of queries asked of both — same totals, same messages, same order. And the
//! command line a user types: `livros logs search` / `logs trace` on the embedded index
//! S3 keeps.

use std::sync::Arc;
use std::time::Duration;

use livros::search::elastic::Elastic;
use livros::search::embedded::Embedded;
use livros::search::{Found, Indexer, Query, SearchEngine, TopicSystems};
use livros::store::StoreConfig;
use serde_json::Value;

use crate::common::{self, eventually, service_url};

fn systems() -> TopicSystems {
    let settings = livros::app::Settings::embedded("unused");
    settings.topic_systems()
}

/// Runs every system for `rounds` rounds into `dir` (a share of product registrations
/// broken on purpose, so there are dead letters), and returns the audit lines.
fn audit_log(dir: &std::path::Path, rounds: u32) -> Vec<Value> {
    let status = common::livros(dir, &StoreConfig::default(), "bookstore,streaming,products")
        .args([
            "up",
            "--count",
            &rounds.to_string(),
            "--rate",
            "0",
            "--quiet",
        ])
        .args([
            "--http",
            "127.0.0.1:0",
            "--invalid-ratio",
            "0.3",
            "--seed",
            "7",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read_to_string(dir.join("messages.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ids(found: &Found) -> Vec<String> {
    found
        .hits
        .iter()
        .map(|h| {
            format!(
                "{}/{}/{}",
                h["topic"].as_str().unwrap(),
                h["partition"],
                h["offset"]
            )
        })
        .collect()
}

/// Queries that exercise every kind of term, built from what the log holds.
fn battery(lines: &[Value]) -> Vec<String> {
    let find = |pred: &dyn Fn(&Value) -> bool| lines.iter().find(|l| pred(l)).cloned().unwrap();
    let view = find(&|l| l["message"]["event_type"] == "registrar_visualizacao");
    let correlation = view["message"]["correlation_id"].as_str().unwrap();
    let book = find(&|l| l["topic"] == "books");
    let title = book["message"]["data"]["title"].as_str().unwrap();
    let word = title
        .split(|c: char| !c.is_alphanumeric())
        .max_by_key(|w| w.chars().count())
        .unwrap();
    let dead = find(&|l| l["topic"] == "erro-produtos");
    let reason_word = dead["headers"]["dlq.reason"]
        .as_str()
        .map(|r| {
            livros::search::words(r)
                .into_iter()
                .max_by_key(|w| w.len())
                .unwrap()
        })
        .unwrap_or_else(|| "price".into());
    let keyed = find(&|l| l["key"].is_string());
    let product = find(&|l| l["topic"] == "produtos-persistidos");
    let product_word = livros::search::words(product["message"]["name"].as_str().unwrap())
        .into_iter()
        .max_by_key(|w| w.chars().count())
        .unwrap();
    let middle = &lines[lines.len() / 2]["timestamp"];
    // Just after a book was logged: S3 logs the systems' topics in no fixed order, so the
    // log's middle line may come before every bookstore line.
    let after_book = chrono::DateTime::parse_from_rfc3339(book["timestamp"].as_str().unwrap())
        .unwrap()
        + chrono::Duration::milliseconds(1);
    let after_book = after_book.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    vec![
        String::new(),
        "topic:books".into(),
        "topic:erro-produtos".into(),
        format!("reason:{reason_word}"),
        "event_type:criar_usuario".into(),
        format!("correlation_id:{correlation}"),
        "system:streaming partition:1".into(),
        "offset:3".into(),
        format!("key:{}", keyed["key"].as_str().unwrap()),
        word.to_string(),
        format!("topic:books {}", word.to_uppercase()),
        format!("since:{}", middle.as_str().unwrap()),
        format!("until:{after_book} system:bookstore"),
        "nothingmatchesthisword".into(),
        format!("system:products {product_word}"),
    ]
}

async fn refresh(base: &str, index: &str) {
    reqwest::Client::new()
        .post(format!("{base}/{index}/_refresh"))
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn embedded_and_elasticsearch_answer_alike() {
    let Some(base) = service_url("LIVROS_TEST_ELASTICSEARCH_URL") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let lines = audit_log(dir.path(), 25);
    let log = dir.path().join("messages.log");
    let index = format!("conformance_{}", uuid::Uuid::new_v4().simple());

    let server = Arc::new(Elastic::new(&base, &index, &log));
    let local = Arc::new(Embedded::open(&dir.path().join("fresh.index")).unwrap());
    for engine in [server.clone() as Arc<dyn SearchEngine>, local.clone()] {
        Indexer::new(engine, log.clone(), systems())
            .catch_up()
            .await
            .unwrap();
    }
    refresh(&base, &index).await;
    let all = Query::parse("", 5).unwrap();
    assert_eq!(local.search(&all).await.unwrap().total, lines.len() as u64);

    for text in battery(&lines) {
        let query = Query::parse(&text, 40).unwrap();
        let (a, b) = (
            local.search(&query).await.unwrap(),
            server.search(&query).await.unwrap(),
        );
        assert_eq!(a.total, b.total, "`{text}`: totals differ");
        assert_eq!(ids(&a), ids(&b), "`{text}`: hits differ");
        assert_eq!(a.hits, b.hits, "`{text}`: documents differ");
        let nothing = text.contains("nothingmatches");
        assert_eq!(a.total == 0, nothing, "`{text}` found {}", a.total);
    }
    let view = lines
        .iter()
        .find(|l| l["message"]["event_type"] == "registrar_visualizacao")
        .unwrap();
    let correlation = view["message"]["correlation_id"].as_str().unwrap();
    let (a, b) = (
        livros::search::trace(&*local, correlation).await.unwrap(),
        livros::search::trace(&*server, correlation).await.unwrap(),
    );
    assert_eq!(a, b);
    // The request and its answer on response_events, in publish-time order (the two may
    // share a millisecond).
    let mut topics: Vec<_> = a.iter().map(|h| h["topic"].as_str().unwrap()).collect();
    let times: Vec<_> = a
        .iter()
        .map(|h| h["timestamp_ms"].as_i64().unwrap())
        .collect();
    assert!(times.is_sorted(), "{a:?}");
    topics.sort();
    assert_eq!(topics, ["response_events", "user_events"], "{a:?}");
}

fn logs(dir: &std::path::Path, args: &[&str]) -> (String, String) {
    let out = common::livros(dir, &StoreConfig::default(), "bookstore,streaming,products")
        .arg("logs")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(out.status.success(), "{args:?}: {stderr}");
    (stdout, stderr)
}

#[tokio::test]
async fn s3_keeps_the_embedded_index_and_the_cli_searches_it() {
    let dir = tempfile::tempdir().unwrap();
    let lines = audit_log(dir.path(), 10);

    let (out, summary) = logs(dir.path(), &["search", "topic:books", "--limit", "3"]);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.lines().all(|l| l.contains("  books/")), "{out}");
    assert!(summary.starts_with("3 of 10 matching"), "{summary}");

    // Every dead letter is there with its reason, as JSON lines.
    let dead = lines
        .iter()
        .filter(|l| l["topic"] == "erro-produtos")
        .count();
    assert!(dead > 0);
    let (out, _) = logs(
        dir.path(),
        &["search", "topic:erro-produtos", "--json", "--limit", "100"],
    );
    let hits: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(hits.len(), dead);
    assert!(hits.iter().all(|h| h["reason"].is_string()), "{hits:?}");

    // A request's trace: the event and the answer (in publish-time order; they may share a
    // millisecond).
    let view = lines
        .iter()
        .find(|l| l["message"]["event_type"] == "criar_usuario")
        .unwrap();
    let correlation = view["message"]["correlation_id"].as_str().unwrap();
    let (out, _) = logs(dir.path(), &["trace", correlation]);
    let mut topics: Vec<_> = out
        .lines()
        .map(|l| {
            l.split_whitespace()
                .nth(1)
                .unwrap()
                .split('/')
                .next()
                .unwrap()
        })
        .collect();
    let times: Vec<_> = out
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert!(times.is_sorted(), "{out}");
    topics.sort();
    assert_eq!(topics, ["response_events", "user_events"], "{out}");

    // A query that cannot be understood says how to write it.
    let out = common::livros(dir.path(), &StoreConfig::default(), "bookstore")
        .args(["logs", "search", "colour:red"])
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("unknown field `colour`"), "{err}");

    // Lines S3 appends later are indexed by the running S3, without a catch-up.
    let _s3 = common::Child(
        common::livros(dir.path(), &StoreConfig::default(), "bookstore")
            .args(["s3", "--quiet"])
            .spawn()
            .unwrap(),
    );
    let produce = common::livros(dir.path(), &StoreConfig::default(), "bookstore")
        .args(["s1", "--count", "5", "--rate", "0", "--quiet"])
        .status()
        .unwrap();
    assert!(produce.success());
    let index = Embedded::open(&livros::search::embedded_dir(
        &dir.path().join("messages.log"),
    ))
    .unwrap();
    let query = Query::parse("topic:books", 1).unwrap();
    eventually(
        "S3 to index the new books",
        Duration::from_secs(60),
        || async { index.search(&query).await.is_ok_and(|f| f.total == 15) },
    )
    .await;
}

/// `livros up` of the streaming platform (a slow generator beside), with `env`, once its
/// gateway answers; and the gateway's port.
async fn streaming_up(dir: &std::path::Path, env: &[(&str, &str)]) -> (common::Child, u16) {
    let port = common::free_port();
    let up = common::Child(
        common::livros(dir, &StoreConfig::default(), "streaming")
            .envs(env.iter().copied())
            .args(["up", "--rate", "2", "--quiet", "--http"])
            .arg(format!("127.0.0.1:{port}"))
            .spawn()
            .unwrap(),
    );
    eventually("the gateway to answer", Duration::from_secs(60), || async {
        reqwest::get(format!("http://127.0.0.1:{port}/health"))
            .await
            .is_ok()
    })
    .await;
    (up, port)
}

/// W3C trace context end to end: a client's `traceparent` on `POST /usuarios` is
/// continued in the answer, carried on the event the gateway publishes and on the
/// processor's reply, and the trace id finds both in the audit log.
#[tokio::test]
async fn a_request_is_one_trace_from_gateway_to_reply() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, port) = streaming_up(dir.path(), &[]).await;
    let url = format!("http://127.0.0.1:{port}/usuarios?wait=10");
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = reqwest::Client::new()
        .post(&url)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let answered = response.headers()["traceparent"].to_str().unwrap();
    assert!(
        answered.starts_with(&format!("00-{trace_id}-")),
        "{answered}"
    );
    assert!(
        !answered.contains("00f067aa0ba902b7"),
        "a span of its own: {answered}"
    );

    let mut hits: Vec<Value> = Vec::new();
    eventually(
        "the request and its reply in the index",
        Duration::from_secs(30),
        || {
            let (out, _) = logs(dir.path(), &["trace", trace_id, "--json"]);
            hits = out
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            let found = hits.len() == 2;
            async move { found }
        },
    )
    .await;
    let mut topics: Vec<_> = hits.iter().map(|h| h["topic"].as_str().unwrap()).collect();
    topics.sort();
    assert_eq!(topics, ["response_events", "user_events"]);
    assert!(hits.iter().all(|h| h["trace_id"] == trace_id), "{hits:?}");
    assert_eq!(hits[0]["correlation_id"], hits[1]["correlation_id"]);
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, the hops of a request are spans sent over
/// OTLP/HTTP to that collector (here a local one that keeps what it receives): the
/// gateway's server span, the producer span of the event, the processor's consumer span,
/// all in the client's trace.
#[tokio::test]
async fn spans_are_exported_over_otlp_when_an_endpoint_is_set() {
    use std::sync::{Arc, Mutex};
    let received: Arc<Mutex<Vec<u8>>> = Arc::default();
    let collector = {
        let received = received.clone();
        axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let received = received.clone();
                async move {
                    received.lock().unwrap().extend_from_slice(&body);
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, collector).await });

    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ];
    let (_up, port) = streaming_up(dir.path(), &env).await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/usuarios?wait=10"))
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let id: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let has = |bytes: &[u8], what: &[u8]| bytes.windows(what.len()).any(|w| w == what);
    eventually(
        "the spans at the collector",
        Duration::from_secs(30),
        || {
            let got = received.lock().unwrap().clone();
            let all = [
                &id[..],
                b"POST /usuarios",
                b"send user_events",
                b"process user_events",
            ]
            .iter()
            .all(|what| has(&got, what));
            async move { all }
        },
    )
    .await;
}
