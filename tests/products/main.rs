//! The products pipeline (seed 5) end to end: the seed's own registration (bare JSON, no
//! key) from `cadastro-produtos` through the scheduler and the API into the relational
//! store and out on `produtos-persistidos`, on the embedded parts, PostgreSQL, and Kafka;
//! invalid and malformed registrations in `erro-produtos` with their reasons; the API down
//! while registrations arrive; the API killed between its commit and the publish; the same
//! product posted many times at once; the OpenAPI document under schemathesis.

#[path = "../common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use livros::app::{Pipeline, Settings, Systems};
use livros::bus::{Bus, Message, Record, StartFrom};
use livros::store::{StoreConfig, Stores};
use livros::systems::products::catalog::Products as _;
use livros::systems::products::routing::{CADASTRO_PRODUTOS, ERRO_PRODUTOS, PRODUTOS_PERSISTIDOS};
use livros::systems::products::{self, Products};
use reqwest::StatusCode;
use serde_json::{Value, json};

use common::{Child, TestDb, eventually, free_port, metric, service_url};

/// What the seed's `produce_message.py` sends.
const SEED: &str = include_str!("../fixtures/seed/product.json");

/// A running pipeline: the bus, the stores, the scheduler (S2), the API and its relay.
struct Platform {
    base: String,
    bus: Arc<dyn Bus>,
    stores: Stores,
    settings: Settings,
    pipeline: Pipeline,
    _dir: tempfile::TempDir,
}

fn settings(dir: &std::path::Path, config: StoreConfig, kafka: Option<String>) -> Settings {
    let mut settings = Settings::embedded(dir);
    settings.stores = config;
    settings.systems = Systems(vec![Arc::new(Products)]);
    if let Some(brokers) = kafka {
        common::on_kafka(&mut settings, brokers);
    }
    settings
}

/// The whole pipeline, its API on `api_port` (0: any), or on none when `serve_api` is
/// false (the scheduler then posts to that port, where nothing answers yet).
async fn start(
    config: StoreConfig,
    kafka: Option<String>,
    api_port: u16,
    serve_api: bool,
) -> Platform {
    start_with(config, kafka, api_port, serve_api, |_| {}).await
}

/// [`start`] with the settings changed by `tweak` first.
async fn start_with(
    config: StoreConfig,
    kafka: Option<String>,
    api_port: u16,
    serve_api: bool,
    tweak: impl FnOnce(&mut Settings),
) -> Platform {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path(), config, kafka);
    tweak(&mut settings);
    let bus = livros::app::open_bus(&settings).await.unwrap();
    let stores = livros::app::open_stores(&settings).await.unwrap();
    let listener = if serve_api {
        Some(
            livros::api::bind(([127, 0, 0, 1], api_port).into())
                .await
                .unwrap(),
        )
    } else {
        None
    };
    let port = listener
        .as_ref()
        .map_or(api_port, |l| l.local_addr().unwrap().port());
    let base = format!("http://127.0.0.1:{port}");
    settings
        .options
        .insert(products::API_URL_OPTION.into(), format!("{base}/products/"));
    let mut pipeline = Pipeline::start(bus.clone(), Some(stores.clone()), false, &settings, false);
    pipeline.start_workers(&Products, bus.clone(), &settings);
    if let Some(listener) = listener {
        pipeline.serve_http(&Products, bus.clone(), listener, &settings);
    }
    Platform {
        base,
        bus,
        stores,
        settings,
        pipeline,
        _dir: dir,
    }
}

impl Platform {
    fn topic(&self, name: &str) -> String {
        self.settings.topics.name(name)
    }

    /// Publishes `payloads` on `cadastro-produtos` with no key, as the seed's producer does.
    async fn register(&self, payloads: &[Vec<u8>]) {
        self.register_keyed(None, payloads).await;
    }

    /// Publishes `payloads` on `cadastro-produtos` under `key`: one partition, in order.
    async fn register_keyed(&self, key: Option<&str>, payloads: &[Vec<u8>]) {
        let records: Vec<Record> = payloads
            .iter()
            .map(|p| Record {
                topic: self.topic(CADASTRO_PRODUTOS),
                key: key.map(str::to_string),
                headers: Vec::new(),
                payload: p.clone(),
            })
            .collect();
        self.bus.publish(&records).await.unwrap();
    }

    /// Waits until the scheduler has committed every registration and the relay has
    /// published every announcement.
    async fn settled(&self) {
        let consumers = self.pipeline.consumers.clone();
        let (bus, stores) = (self.bus.clone(), self.stores.clone());
        eventually("the pipeline to settle", Duration::from_secs(60), || {
            let (bus, stores, consumers) = (bus.clone(), stores.clone(), consumers.clone());
            async move {
                livros::services::s2::lag(&*bus, &consumers).await.unwrap() == 0
                    && livros::services::outbox::pending(&*stores.relational)
                        .await
                        .unwrap()
                        == 0
            }
        })
        .await;
    }
}

/// Everything on `topic` so far, read by a fresh group.
async fn read_topic(bus: &dyn Bus, topic: &str) -> Vec<Message> {
    let group = format!("reader-{}", uuid::Uuid::new_v4().simple());
    let mut consumer = bus
        .subscribe(&group, &[topic.to_string()], StartFrom::Earliest)
        .await
        .unwrap();
    let mut all = Vec::new();
    let mut empty = 0;
    // Kafka may take a moment to assign partitions: a few empty polls before giving up.
    while empty < 4 {
        let got = consumer
            .poll(500, Duration::from_millis(500))
            .await
            .unwrap();
        if got.is_empty() {
            empty += 1;
        } else {
            empty = 0;
            all.extend(got);
        }
    }
    consumer.close().await.unwrap();
    all
}

async fn get(url: &str) -> (StatusCode, Value) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

async fn post(url: &str, body: &Value) -> (StatusCode, Option<String>, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let etag = response
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_string());
    (status, etag, response.json().await.unwrap())
}

fn seed(change: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v: Value = serde_json::from_str(SEED).unwrap();
    change(&mut v);
    v.to_string().into_bytes()
}

/// The seed's registration through the whole pipeline; the same again (nothing new); a
/// new price (version 2); invalid and malformed ones in `erro-produtos`.
async fn seed_flow(p: Platform) {
    let seed_id = serde_json::from_str::<Value>(SEED).unwrap()["productId"]
        .as_str()
        .unwrap()
        .to_string();
    p.register(&[SEED.as_bytes().to_vec()]).await;
    p.settled().await;
    let out = read_topic(&*p.bus, &p.topic(PRODUTOS_PERSISTIDOS)).await;
    assert_eq!(out.len(), 1, "one announcement");
    assert_eq!(out[0].key.as_deref(), Some(seed_id.as_str()));
    assert_eq!(out[0].header("version"), Some("1"));
    let announced: Value = serde_json::from_slice(&out[0].payload).unwrap();
    let source: Value = serde_json::from_str(SEED).unwrap();
    assert_eq!(announced["id"], source["productId"]);
    assert_eq!(announced["name"], source["productName"]);
    assert_eq!(announced["description"], source["productDescription"]);
    assert_eq!(announced["pricing"]["amount"], source["price"]);
    assert_eq!(announced["pricing"]["currency"], source["currency"]);
    assert_eq!(
        announced["availability"]["quantity"],
        source["stockQuantity"]
    );
    assert_eq!(announced["category"], source["category"]);
    let (status, stored) = get(&format!("{}/products/{seed_id}", p.base)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stored, announced);

    // The same registration again (a redelivery, the producer run twice): no new version.
    p.register(&[SEED.as_bytes().to_vec(), SEED.as_bytes().to_vec()])
        .await;
    p.settled().await;
    assert_eq!(
        read_topic(&*p.bus, &p.topic(PRODUTOS_PERSISTIDOS))
            .await
            .len(),
        1
    );

    // A new price, then a new stock: two new versions, announced in order. (Keyed by the
    // product, as our generator does: without a key the bus promises no order between them.)
    p.register_keyed(
        Some(&seed_id),
        &[
            seed(|v| v["price"] = json!(89.9)),
            seed(|v| {
                v["price"] = json!(89.9);
                v["stockQuantity"] = json!(7);
            }),
        ],
    )
    .await;
    p.settled().await;
    let out = read_topic(&*p.bus, &p.topic(PRODUTOS_PERSISTIDOS)).await;
    let versions: Vec<&str> = out.iter().map(|m| m.header("version").unwrap()).collect();
    assert_eq!(versions, ["1", "2", "3"]);
    let last: Value = serde_json::from_slice(&out[2].payload).unwrap();
    assert_eq!(
        (
            last["pricing"]["amount"].clone(),
            last["availability"]["quantity"].clone()
        ),
        (json!(89.9), json!(7))
    );
    let stored = p
        .stores
        .relational
        .product(&seed_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.version, 3);

    // Invalid and malformed registrations: the original bytes, with the reason.
    let bad = [
        seed(|v| v["price"] = json!(-5)),
        seed(|v| v["price"] = json!(12.345)),
        seed(|v| v["currency"] = json!("REAL")),
        seed(|v| v["stockQuantity"] = json!(2.5)),
        seed(|v| v["productName"] = json!("")),
        b"{not json".to_vec(),
    ];
    p.register(&bad).await;
    p.settled().await;
    let errors = read_topic(&*p.bus, &p.topic(ERRO_PRODUTOS)).await;
    assert_eq!(errors.len(), bad.len());
    let mut reasons: Vec<(Vec<u8>, String)> = errors
        .iter()
        .map(|m| {
            (
                m.payload.clone(),
                m.header("dlq.reason").unwrap().to_string(),
            )
        })
        .collect();
    reasons.sort();
    let mut expected: Vec<(Vec<u8>, &str)> = bad
        .iter()
        .cloned()
        .zip([
            "negative",
            "two decimals",
            "ISO 4217",
            "whole number",
            "productName",
            "not a JSON object",
        ])
        .collect();
    expected.sort();
    for ((payload, reason), (sent, why)) in reasons.iter().zip(&expected) {
        assert_eq!(payload, sent);
        assert!(reason.contains(why), "{reason} should say {why}");
    }
    for m in &errors {
        assert_eq!(
            m.header("dlq.topic"),
            Some(p.topic(CADASTRO_PRODUTOS).as_str())
        );
    }
    // Nothing more was stored or announced.
    assert_eq!(p.stores.relational.count_products().await.unwrap(), 1);
    assert_eq!(
        read_topic(&*p.bus, &p.topic(PRODUTOS_PERSISTIDOS))
            .await
            .len(),
        3
    );

    // What the pipeline did is in the metrics the API serves (this process's).
    let response = reqwest::get(format!("{}/metrics", p.base)).await.unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    let at_least = |name: &str, labels: &[(&str, &str)], n: f64| {
        let got = metric(&text, name, labels);
        assert!(
            got.is_some_and(|v| v >= n),
            "{name} {labels:?}: {got:?}\n{text}"
        );
    };
    let (cadastro, erro, persistidos) = (
        p.topic(CADASTRO_PRODUTOS),
        p.topic(ERRO_PRODUTOS),
        p.topic(PRODUTOS_PERSISTIDOS),
    );
    at_least(
        "livros_messages_consumed_total",
        &[("service", "s2"), ("topic", &cadastro)],
        (5 + bad.len()) as f64,
    );
    at_least(
        "livros_dead_letters_total",
        &[("topic", &cadastro), ("to", &erro)],
        bad.len() as f64,
    );
    at_least(
        "livros_messages_published_total",
        &[("topic", &persistidos)],
        3.0,
    );
    at_least(
        "livros_store_seconds_count",
        &[("store", "relational")],
        1.0,
    );
    assert!(
        metric(&text, "livros_consumer_lag", &[("topic", &cadastro)]).is_some(),
        "{text}"
    );
    // The API's group commit: every accepted post went through one of its batches.
    at_least("livros_api_batch_size_sum", &[("writer", "products")], 3.0);
    at_least(
        "livros_api_batch_seconds_count",
        &[("writer", "products")],
        1.0,
    );
    at_least(
        "livros_http_requests_total",
        &[
            ("api", "products"),
            ("method", "POST"),
            ("route", "/products/"),
            ("status", "200"),
        ],
        3.0,
    );
    get(&format!("{}/products/nobody", p.base)).await;
    let text = reqwest::get(format!("{}/metrics", p.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metric(
            &text,
            "livros_http_requests_total",
            &[("route", "/products/{id}"), ("status", "404")]
        )
        .is_some(),
        "{text}"
    );
    p.pipeline.stop().await.unwrap();
}

/// A fresh PostgreSQL database and the store configuration using it; `None` (skip) when
/// `LIVROS_TEST_POSTGRES_URL` is unset outside CI.
async fn postgres() -> Option<(TestDb, StoreConfig)> {
    let db = TestDb::create(&service_url("LIVROS_TEST_POSTGRES_URL")?).await;
    let config = StoreConfig {
        postgres_url: Some(db.url.clone()),
        ..StoreConfig::default()
    };
    Some((db, config))
}

#[tokio::test]
async fn seed_registration_end_to_end_embedded() {
    seed_flow(start(StoreConfig::default(), None, 0, true).await).await;
}

#[tokio::test]
async fn seed_registration_end_to_end_postgres() {
    let Some((db, config)) = postgres().await else {
        return;
    };
    seed_flow(start(config, None, 0, true).await).await;
    db.drop_db().await;
}

#[tokio::test]
async fn seed_registration_end_to_end_kafka_postgres() {
    let Some(brokers) = service_url("LIVROS_TEST_KAFKA_BROKERS") else {
        return;
    };
    let Some((db, config)) = postgres().await else {
        return;
    };
    seed_flow(start(config, Some(brokers), 0, true).await).await;
    db.drop_db().await;
}

/// The API is down while registrations arrive: the scheduler waits (nothing committed,
/// nothing in `erro-produtos`), and once the API is up every product goes through.
#[tokio::test]
async fn scheduler_waits_for_the_api() {
    let port = free_port();
    let p = start(StoreConfig::default(), None, port, false).await;
    let payloads: Vec<Vec<u8>> = (0..10)
        .map(|i| seed(|v| v["productId"] = json!(format!("down-{i}"))))
        .collect();
    p.register(&payloads).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lag = livros::services::s2::lag(&*p.bus, &p.pipeline.consumers)
        .await
        .unwrap();
    assert_eq!(lag, 10, "nothing committed while the API is down");
    assert!(
        read_topic(&*p.bus, &p.topic(ERRO_PRODUTOS))
            .await
            .is_empty()
    );

    // The API comes up where the scheduler posts.
    let listener = livros::api::bind(([127, 0, 0, 1], port).into())
        .await
        .unwrap();
    let mut p = p;
    p.pipeline
        .serve_http(&Products, p.bus.clone(), listener, &p.settings);
    p.settled().await;
    assert_eq!(p.stores.relational.count_products().await.unwrap(), 10);
    assert_eq!(
        read_topic(&*p.bus, &p.topic(PRODUTOS_PERSISTIDOS))
            .await
            .len(),
        10
    );
    assert!(
        read_topic(&*p.bus, &p.topic(ERRO_PRODUTOS))
            .await
            .is_empty()
    );
    p.pipeline.stop().await.unwrap();
}

/// The same product posted many times at once, and changed versions of it: never a 5xx,
/// one row, one version per change, each version announced once.
#[tokio::test]
async fn duplicate_posts_are_stored_once() {
    let p = start(StoreConfig::default(), None, 0, true).await;
    let url = format!("{}/products/", p.base);
    let product = json!({"id": "dup-1", "name": "Garrafa Térmica", "description": null,
        "pricing": {"amount": 59.9, "currency": "BRL"},
        "availability": {"quantity": 10, "timestamp": "2026-11-23T10:00:00Z"},
        "category": "Casa"});
    let posts = (0..40).map(|i| {
        let mut body = product.clone();
        // Timestamps differ, as the scheduler's passes would: not a change.
        body["availability"]["timestamp"] = json!(format!("2026-11-23T10:00:{:02}Z", i % 60));
        let url = url.clone();
        async move { post(&url, &body).await }
    });
    for (status, etag, body) in futures::future::join_all(posts).await {
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(etag.as_deref(), Some("\"1\""));
        assert_eq!(body["pricing"]["amount"], json!(59.9));
    }
    let mut changed = product.clone();
    changed["availability"]["quantity"] = json!(9);
    let (status, etag, body) = post(&url, &changed).await;
    assert_eq!(
        (status, etag.as_deref()),
        (StatusCode::OK, Some("\"2\"")),
        "{body}"
    );
    // `/products` without the slash takes the same request.
    let (status, etag, _) = post(&format!("{}/products", p.base), &changed).await;
    assert_eq!((status, etag.as_deref()), (StatusCode::OK, Some("\"2\"")));
    p.settled().await;
    assert_eq!(p.stores.relational.count_products().await.unwrap(), 1);
    let out = read_topic(&*p.bus, &p.topic(PRODUTOS_PERSISTIDOS)).await;
    let versions: Vec<&str> = out.iter().map(|m| m.header("version").unwrap()).collect();
    assert_eq!(versions, ["1", "2"]);

    // Listings: by category, by name words in any case, paged.
    for (i, name) in [
        "Cafeteira Elétrica Inox",
        "Cafeteira Italiana",
        "Chaleira Inox",
    ]
    .iter()
    .enumerate()
    {
        let mut body = product.clone();
        body["id"] = json!(format!("list-{i}"));
        body["name"] = json!(name);
        body["category"] = json!("Cozinha");
        assert_eq!(post(&url, &body).await.0, StatusCode::OK);
    }
    let ids = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, page) = get(&format!("{url}?category=Cozinha&name=INOX")).await;
    assert_eq!(ids(&page), ["list-0", "list-2"]);
    let (_, page) = get(&format!("{url}?name=cafeteira%20el%C3%A9trica")).await;
    assert_eq!(ids(&page), ["list-0"]);
    let (_, page) = get(&format!("{url}?per_page=2&page=2")).await;
    assert_eq!(ids(&page), ["list-1", "list-2"]);
    assert_eq!(page["has_more"], json!(false));

    // What the seed's own scheduler posts: a naive isoformat timestamp, read as UTC.
    let seed_post: Value =
        serde_json::from_str(include_str!("../fixtures/seed/product_posted.json")).unwrap();
    let (status, etag, body) = post(&url, &seed_post).await;
    assert_eq!(
        (status, etag.as_deref()),
        (StatusCode::OK, Some("\"1\"")),
        "{body}"
    );
    assert_eq!(
        body["availability"]["timestamp"],
        "2026-11-23T10:15:30.123456Z"
    );
    assert_eq!(body["pricing"], seed_post["pricing"]);

    // Bad bodies are 4xx with a JSON reason.
    let mut bad = product.clone();
    bad["pricing"]["currency"] = json!("XXY");
    let (status, _, body) = post(&url, &bad).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("pricing.currency"),
        "{body}"
    );
    let response = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let (status, _) = get(&format!("{url}nobody")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    common::schemathesis(&p.base).await;
    p.pipeline.stop().await.unwrap();
}

/// `livros` on `dir`, products only, quiet.
fn livros(dir: &std::path::Path, config: &StoreConfig) -> std::process::Command {
    common::livros(dir, config, "products")
}

/// The API dies right after committing a product, before its announcement is published
/// (the fault flag aborts the process there, as a kill -9 would). After a restart the
/// relay publishes it, once; the client's retry of the same product adds nothing.
async fn crash_between_commit_and_publish(config: StoreConfig) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let http = format!("127.0.0.1:{port}");
    let url = format!("http://{http}/products/");
    let product = json!({"id": "crash-1", "name": "Air Fryer Aurora Preto",
        "description": "4 litros", "pricing": {"amount": 499.9, "currency": "BRL"},
        "availability": {"quantity": 3}, "category": "Eletrodomésticos"});

    let mut api = Child(
        livros(dir.path(), &config)
            .args(["products-api", "--quiet", "--http", &http])
            .args(["--fault", "crash-after-commit"])
            .spawn()
            .unwrap(),
    );
    eventually("the API to listen", Duration::from_secs(30), || async {
        reqwest::get(format!("http://{http}/health")).await.is_ok()
    })
    .await;
    let answer = reqwest::Client::new()
        .post(&url)
        .json(&product)
        .send()
        .await;
    assert!(
        answer.is_err(),
        "the process died before answering: {answer:?}"
    );
    let exit = api.0.wait().unwrap();
    assert!(!exit.success(), "aborted, not exited: {exit}");

    // Committed, and not published.
    let mut settings = Settings::embedded(dir.path());
    settings.stores = config.clone();
    settings.systems = Systems(vec![Arc::new(Products)]);
    let stores = livros::app::open_stores(&settings).await.unwrap();
    let stored = stores.relational.product("crash-1").await.unwrap().unwrap();
    assert_eq!(stored.version, 1);
    assert_eq!(
        livros::services::outbox::pending(&*stores.relational)
            .await
            .unwrap(),
        1
    );
    let bus = livros::app::open_bus(&settings).await.unwrap();
    assert!(read_topic(&*bus, PRODUTOS_PERSISTIDOS).await.is_empty());

    // Restarted without the fault: the relay publishes it; the client's retry is a no-op.
    let _api = Child(
        livros(dir.path(), &config)
            .args(["products-api", "--quiet", "--http", &http])
            .spawn()
            .unwrap(),
    );
    eventually(
        "the API to listen again",
        Duration::from_secs(30),
        || async { reqwest::get(format!("http://{http}/health")).await.is_ok() },
    )
    .await;
    let (status, etag, _) = post(&url, &product).await;
    assert_eq!((status, etag.as_deref()), (StatusCode::OK, Some("\"1\"")));
    eventually("the outbox to drain", Duration::from_secs(30), || async {
        livros::services::outbox::pending(&*stores.relational)
            .await
            .unwrap()
            == 0
    })
    .await;
    let out = read_topic(&*bus, PRODUTOS_PERSISTIDOS).await;
    assert_eq!(out.len(), 1, "announced once");
    assert_eq!(out[0].key.as_deref(), Some("crash-1"));
    assert_eq!(out[0].header("version"), Some("1"));
}

#[tokio::test]
async fn api_killed_between_commit_and_publish_embedded() {
    crash_between_commit_and_publish(StoreConfig::default()).await;
}

#[tokio::test]
async fn api_killed_between_commit_and_publish_postgres() {
    let Some((db, config)) = postgres().await else {
        return;
    };
    crash_between_commit_and_publish(config).await;
    db.drop_db().await;
}

/// `livros up` with the products system alone, some registrations invalid on purpose:
/// every valid one stored and announced, every invalid one in `erro-produtos`, all logged.
#[tokio::test]
async fn up_runs_the_whole_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let out = livros(dir.path(), &StoreConfig::default())
        .args(["up", "--count", "200", "--rate", "0", "--quiet"])
        .args([
            "--invalid-ratio",
            "0.1",
            "--seed",
            "4",
            "--http",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().find(|l| l.starts_with("Done")).unwrap();
    let sent = |what: &str| -> u64 {
        let at = line
            .find(&format!(" {what}"))
            .unwrap_or_else(|| panic!("{line}"));
        line[..at].rsplit(' ').next().unwrap().parse().unwrap()
    };
    let (valid, invalid) = (sent("products"), sent("invalid products"));
    assert_eq!(valid + invalid, 200);
    assert!(invalid > 0, "{line}");
    assert!(line.contains(&format!("dead-lettered {invalid}")), "{line}");

    let mut settings = Settings::embedded(dir.path());
    settings.systems = Systems(vec![Arc::new(Products)]);
    let bus = livros::app::open_bus(&settings).await.unwrap();
    let stores = livros::app::open_stores(&settings).await.unwrap();
    let announced = read_topic(&*bus, PRODUTOS_PERSISTIDOS).await;
    let stored = stores.relational.count_products().await.unwrap();
    // New versions of earlier products are announced too: at least one per product.
    assert!(
        announced.len() as i64 >= stored && stored > 0,
        "{} {stored}",
        announced.len()
    );
    assert_eq!(read_topic(&*bus, ERRO_PRODUTOS).await.len() as u64, invalid);
    let log = std::fs::read_to_string(dir.path().join("messages.log")).unwrap();
    let logged = |topic: &str| {
        log.lines()
            .filter(|l| l.contains(&format!("\"topic\":\"{topic}\"")))
            .count()
    };
    assert_eq!(logged(CADASTRO_PRODUTOS), 200);
    assert_eq!(logged(PRODUTOS_PERSISTIDOS), announced.len());
    assert_eq!(logged(ERRO_PRODUTOS) as u64, invalid);
}

/// `livros produce-product`: seed-shaped registrations keyed by product id, the share
/// asked for broken on purpose.
#[tokio::test]
async fn produce_product_publishes_seed_shaped_registrations() {
    let dir = tempfile::tempdir().unwrap();
    let out = livros(dir.path(), &StoreConfig::default())
        .args(["produce-product", "--count", "40", "--rate", "0", "--quiet"])
        .args(["--invalid-ratio", "0.5", "--seed", "9"])
        .stdout(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let mut settings = Settings::embedded(dir.path());
    settings.systems = Systems(vec![Arc::new(Products)]);
    let bus = livros::app::open_bus(&settings).await.unwrap();
    let sent = read_topic(&*bus, CADASTRO_PRODUTOS).await;
    assert_eq!(sent.len(), 40);
    let now = chrono::Utc::now();
    let invalid = sent
        .iter()
        .filter(|m| {
            let v: Value = serde_json::from_slice(&m.payload).unwrap();
            for field in [
                "productName",
                "price",
                "currency",
                "stockQuantity",
                "category",
            ] {
                assert!(v.get(field).is_some(), "{v}");
            }
            if let Some(id) = v["productId"].as_str() {
                assert_eq!(m.key.as_deref(), Some(id));
            }
            products::entities::parse_registration(&m.payload, now).is_err()
        })
        .count();
    assert!((8..=32).contains(&invalid), "{invalid} of 40 invalid");
    assert!(
        stdout.contains(&format!("{invalid} invalid products")),
        "{stdout}"
    );
}

/// With a token, the API refuses writes without it, and the scheduler sends it.
#[tokio::test]
async fn writes_need_the_token_when_one_is_set() {
    let p = start_with(StoreConfig::default(), None, 0, true, |settings| {
        settings.api.token = Some("s3cret".into());
    })
    .await;
    let (base, bus, stores) = (&p.base, &p.bus, &p.stores);
    let product = json!({"id": "t-1", "name": "Mouse sem Fio",
        "pricing": {"amount": 39.9, "currency": "BRL"}, "availability": {"quantity": 1}});
    let (status, _, _) = post(&format!("{base}/products/"), &product).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(get(&format!("{base}/products/")).await.0, StatusCode::OK);
    bus.publish(&[Record {
        topic: CADASTRO_PRODUTOS.into(),
        key: None,
        headers: Vec::new(),
        payload: SEED.as_bytes().to_vec(),
    }])
    .await
    .unwrap();
    eventually(
        "the scheduler's post, with the token",
        Duration::from_secs(30),
        || async { stores.relational.count_products().await.unwrap() == 1 },
    )
    .await;
    p.pipeline.stop().await.unwrap();
}

/// One batch of the API's writer holding several versions of a product: each stored in
/// turn, each answered with its own version, each announced once.
async fn versions_in_one_batch(config: StoreConfig) {
    use livros::api::batch::Batch;
    use livros::systems::products::routing::ProductWriter;
    let p = start(config, None, 0, true).await;
    let writer = ProductWriter {
        store: p.stores.relational.clone(),
        topic: p.topic(PRODUTOS_PERSISTIDOS),
        workers: Default::default(),
        fault: None,
    };
    let version = |quantity: i64, id: &str| {
        json!({"id": id, "name": "Halteres 10kg", "pricing": {"amount": "149.90", "currency": "brl"},
            "availability": {"quantity": quantity}})
        .to_string()
        .into_bytes()
    };
    let bodies = [
        version(1, "v-1"),
        version(2, "v-1"),
        version(2, "v-1"),
        version(5, "v-2"),
        b"{}".to_vec(),
        version(1, "v-1"),
    ];
    let payloads: Vec<axum::body::Bytes> = bodies.into_iter().map(Into::into).collect();
    let out = writer.apply(&payloads).await.unwrap();
    let versions: Vec<Option<i64>> = out
        .iter()
        .map(|r| r.as_ref().ok().map(|s| s.version))
        .collect();
    assert_eq!(
        versions,
        [Some(1), Some(2), Some(2), Some(1), None, Some(3)]
    );
    let last = out[5].as_ref().unwrap();
    assert_eq!(last.product.pricing.currency, "BRL");
    assert_eq!(last.product.pricing.amount.to_string(), "149.9");
    assert_eq!(last.product.availability.quantity, 1);
    // Four versions written (v-1: 1, 2, 3; v-2: 1); the relay publishes them in order.
    p.settled().await;
    let out = read_topic(&*p.bus, &p.topic(PRODUTOS_PERSISTIDOS)).await;
    let mut seen: Vec<(String, String)> = out
        .iter()
        .map(|m| {
            (
                m.key.clone().unwrap(),
                m.header("version").unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen.iter()
            .filter(|(k, _)| k == "v-1")
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>(),
        ["1", "2", "3"]
    );
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 4);
    p.pipeline.stop().await.unwrap();
}

#[tokio::test]
async fn versions_in_one_batch_embedded() {
    versions_in_one_batch(StoreConfig::default()).await;
}

#[tokio::test]
async fn versions_in_one_batch_postgres() {
    let Some((db, config)) = postgres().await else {
        return;
    };
    versions_in_one_batch(config).await;
    db.drop_db().await;
}
