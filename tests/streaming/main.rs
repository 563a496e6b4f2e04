//! The streaming platform (seeds 3 and 4) end to end in one process: the gateway over a
//! real socket, the processor and the reply reader consuming the bus, on the embedded
//! stores and on PostgreSQL + MongoDB + Redis; the correlation round trip, exactly one
//! effect per event, the seed's own events, bad input, and two gateways answering each
//! other's ids. Seed 4's half (catalog, views, leaderboards, sessions, cache) is in
//! [`polyglot`].

#[path = "../common/mod.rs"]
mod common;
mod polyglot;

use std::sync::Arc;
use std::time::Duration;

use livros::app::{Pipeline, Settings, Systems};
use livros::bus::{Bus, Record, StartFrom};
use livros::store::{StoreConfig, Stores};
use livros::systems::System;
use livros::systems::streaming::Streaming;
use livros::systems::streaming::entities::EventType;
use livros::systems::streaming::generator::ROUND;
use livros::systems::streaming::users::Users;
use reqwest::StatusCode;
use serde_json::{Value, json};

use common::{Child, RealStores, eventually};

/// A running platform: the bus, the stores, S2 (processor + reply reader) and a gateway.
struct Platform {
    base: String,
    bus: Arc<dyn Bus>,
    stores: Stores,
    settings: Settings,
    pipeline: Pipeline,
    _dir: tempfile::TempDir,
}

async fn start(config: StoreConfig, kafka: Option<String>) -> Platform {
    start_with(config, |settings| {
        if let Some(brokers) = kafka {
            common::on_kafka(settings, brokers);
        }
    })
    .await
}

/// [`start`] with the settings changed by `tweak` first.
async fn start_with(config: StoreConfig, tweak: impl FnOnce(&mut Settings)) -> Platform {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::embedded(dir.path());
    settings.stores = config;
    tweak(&mut settings);
    settings.systems = Systems(vec![Arc::new(Streaming)]);
    let bus = livros::app::open_bus(&settings).await.unwrap();
    let stores = livros::app::open_stores(&settings).await.unwrap();
    let mut pipeline = Pipeline::start(bus.clone(), Some(stores.clone()), false, &settings, false);
    let listener = livros::api::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    pipeline.serve_http(&Streaming, bus.clone(), listener, &settings);
    Platform {
        base,
        bus,
        stores,
        settings,
        pipeline,
        _dir: dir,
    }
}

/// A second gateway over the same stores and bus (another replica).
async fn second_gateway(p: &Platform) -> String {
    let listener = livros::api::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = Streaming.http(
        &p.stores,
        p.bus.clone(),
        &p.settings,
        Default::default(),
        &Default::default(),
    );
    tokio::spawn(livros::api::serve(
        listener,
        app,
        tokio_util::sync::CancellationToken::new(),
    ));
    base
}

async fn post(url: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new().post(url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

async fn get(url: &str) -> (StatusCode, Value) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

const CPF: &str = "529.982.247-25";

async fn round_trip(p: Platform) {
    let base = &p.base;
    let (status, home) = get(&format!("{base}/")).await;
    assert_eq!(
        (status, home["status"].clone()),
        (StatusCode::OK, json!("success"))
    );

    // The seed's call: no body, made-up data, answered at once; the reply comes later.
    let (status, seed) = post(&format!("{base}/usuarios"), None).await;
    assert_eq!(status, StatusCode::OK, "{seed}");
    assert!(seed["mensagem"].as_str().unwrap().contains("usuário"));
    assert!(seed["usuario"]["user_id"].as_i64().unwrap() >= 1);
    let status_url = format!("{base}{}", seed["status_url"].as_str().unwrap());
    assert_eq!(
        seed["status_url"],
        format!("/status/{}", seed["correlation_id"].as_str().unwrap())
    );
    eventually(
        "the reply to the seed-style request",
        Duration::from_secs(20),
        || {
            let url = status_url.clone();
            async move {
                let (status, body) = get(&url).await;
                assert_eq!(status, StatusCode::OK, "{body}");
                body["status"] != "pendente"
            }
        },
    )
    .await;
    let (_, reply) = get(&status_url).await;
    assert_eq!(reply["status"], "success", "{reply}");
    assert_eq!(reply["event_type"], "response");
    assert_eq!(reply["original_event_type"], "criar_usuario");
    assert_eq!(reply["correlation_id"], seed["correlation_id"]);

    // With a body and ?wait: the reply itself.
    let ana = json!({"user_id": 7, "nome": "Ana Souza", "email": "ana@example.com", "cpf": CPF});
    let (status, created) = post(&format!("{base}/usuarios?wait=10"), Some(ana.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["data"]["cpf"], "52998224725");
    let (status, taken) = post(&format!("{base}/usuarios?wait=10"), Some(ana)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{taken}");
    assert_eq!(taken["status"], "error");
    for (path, body) in [
        ("assinatura", json!({"plano": "Premium"})),
        (
            "pagamento",
            json!({"valor": 29.9, "forma_pagamento": "Pix"}),
        ),
        (
            "config",
            json!({"idioma": "pt-BR", "notificacoes": false, "tema": "claro"}),
        ),
    ] {
        let (status, reply) = post(&format!("{base}/usuarios/7/{path}?wait=10"), Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{path}: {reply}");
    }
    let (status, nobody) = post(&format!("{base}/usuarios/424242/pagamento?wait=10"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{nobody}");
    assert!(nobody["message"].as_str().unwrap().contains("424242"));

    // Reads the seed lacked.
    let (status, user) = get(&format!("{base}/usuarios/7")).await;
    assert_eq!(status, StatusCode::OK, "{user}");
    assert_eq!(user["assinatura"]["plano"], "Premium");
    assert_eq!(user["preferencias"]["notificacoes"], false);
    assert_eq!(user["pagamentos"][0]["valor"], "29.90");
    let (_, by_email) = get(&format!("{base}/usuarios?email=ana@example.com")).await;
    assert_eq!(by_email["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        get(&format!("{base}/usuarios/999")).await.0,
        StatusCode::NOT_FOUND
    );

    // Bad input: a 4xx with a reason, nothing published.
    for (body, expected, says) in [
        (
            json!({"valor": "abc"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "valor",
        ),
        (
            json!({"valor": 10.001, "forma_pagamento": "Pix"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "decimals",
        ),
        (
            json!({"forma_pagamento": "Ouro"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "Boleto",
        ),
    ] {
        let (status, error) = post(&format!("{base}/usuarios/7/pagamento"), Some(body)).await;
        assert_eq!(status, expected, "{error}");
        assert!(error["message"].as_str().unwrap().contains(says), "{error}");
    }
    let (status, error) = post(
        &format!("{base}/usuarios"),
        Some(json!({"cpf": "12345678900"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    let response = reqwest::Client::new()
        .post(format!("{base}/usuarios"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let (status, _) = get(&format!("{base}/status/never-issued")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        get(&format!("{base}/usuarios/abc")).await.0,
        StatusCode::NOT_FOUND
    );

    // Exactly one effect per event: the seed's own producer (bare JSON, no key, no
    // headers) sends a payment, and it is delivered three times.
    let payment = json!({"event_type": "pagamento_realizado", "correlation_id": "seed-pay-1",
        "timestamp": 1795449989.5, "source": "s1", "target": "s2",
        "user_id": 7, "valor": 49.9, "forma_pagamento": "Boleto"});
    let record = Record {
        topic: p.settings.topics.name("user_events"),
        key: None,
        headers: vec![],
        payload: serde_json::to_vec(&payment).unwrap(),
    };
    let not_an_event = Record {
        payload: b"{\"hello\": 1}".to_vec(),
        ..record.clone()
    };
    p.bus
        .publish(&[record.clone(), record.clone(), not_an_event, record])
        .await
        .unwrap();
    eventually(
        "the seed's payment to be answered",
        Duration::from_secs(20),
        || async { get(&format!("{base}/status/seed-pay-1")).await.1["status"] == "success" },
    )
    .await;
    let (_, user) = get(&format!("{base}/usuarios/7")).await;
    assert_eq!(user["pagamentos"].as_array().unwrap().len(), 2, "{user}");
    let mut dlq = p
        .bus
        .subscribe(
            "inspector",
            &[p.settings.topics.name("user_events.dlq")],
            StartFrom::Earliest,
        )
        .await
        .unwrap();
    let mut dead = Vec::new();
    for _ in 0..50 {
        dead.extend(dlq.poll(10, Duration::from_millis(100)).await.unwrap());
        if !dead.is_empty() {
            break;
        }
    }
    assert_eq!(dead.len(), 1);
    assert!(dead[0].header("dlq.reason").unwrap().contains("event_type"));

    // Another gateway replica answers this one's ids (the status is in the shared store).
    let other = second_gateway(&p).await;
    let (status, reply) = get(&format!("{other}/status/seed-pay-1")).await;
    assert_eq!(
        (status, reply["status"].clone()),
        (StatusCode::OK, json!("success"))
    );
    let (status, reply) = post(&format!("{other}/usuarios/7/config?wait=10"), None).await;
    assert_eq!(status, StatusCode::CREATED, "{reply}");
    let (users, payments, _) = p.stores.relational.counts().await.unwrap();
    assert_eq!((users, payments), (2, 2));

    // OpenAPI and the docs UI, offline.
    let (status, doc) = get(&format!("{base}/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/usuarios",
        "/usuarios/{user_id}/pagamento",
        "/status/{correlation_id}",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path}");
    }
    p.pipeline.stop().await.unwrap();
}

#[tokio::test]
async fn round_trip_embedded() {
    round_trip(start(StoreConfig::default(), None).await).await;
}

#[tokio::test]
async fn round_trip_postgres_and_redis() {
    let Some(real) = RealStores::create().await else {
        return;
    };
    round_trip(start(real.config.clone(), None).await).await;
    real.cleanup().await;
}

#[tokio::test]
async fn round_trip_kafka_postgres_and_redis() {
    let Some(brokers) = common::service_url("LIVROS_TEST_KAFKA_BROKERS") else {
        return;
    };
    let Some(real) = RealStores::create().await else {
        return;
    };
    round_trip(start(real.config.clone(), Some(brokers)).await).await;
    real.cleanup().await;
}

/// `livros` on `dir` for the streaming platform only, quiet, with no HTTP API.
fn livros(dir: &std::path::Path, config: &StoreConfig) -> std::process::Command {
    let mut cmd = common::livros(dir, config, "streaming");
    cmd.env("LIVROS_HTTP", "off");
    cmd
}

/// The processor killed (-9) mid-run and restarted: every event has exactly one effect,
/// and every correlation id ends with a reply. Small batches, so the kill lands between
/// many transactions rather than after the only one.
async fn processor_killed_mid_run(config: StoreConfig) {
    let dir = tempfile::tempdir().unwrap();
    const USERS: i64 = 150;
    let events = USERS * ROUND.len() as i64;
    let recorded = USERS * ROUND.iter().filter(|k| !k.is_read()).count() as i64;
    let sent = livros(dir.path(), &config)
        .args([
            "s1",
            "--count",
            &USERS.to_string(),
            "--rate",
            "0",
            "--quiet",
        ])
        .status()
        .unwrap();
    assert!(sent.success());
    let mut settings = Settings::embedded(dir.path());
    settings.stores = config.clone();
    let stores = livros::app::open_stores(&settings).await.unwrap();
    let answered = || async { stores.relational.counts().await.unwrap().2 };

    let mut s2 = Child(
        livros(dir.path(), &config)
            .args(["s2", "--quiet", "--batch-size", "20"])
            .spawn()
            .unwrap(),
    );
    eventually(
        "the processor to be under way",
        Duration::from_secs(60),
        || async { answered().await >= 100 },
    )
    .await;
    s2.0.kill().unwrap(); // SIGKILL
    s2.0.wait().unwrap();
    let before = answered().await;
    assert!(
        before < recorded,
        "the kill must land mid-run ({before} of {recorded})"
    );

    let mut s2 = Child(
        livros(dir.path(), &config)
            .args(["s2", "--quiet", "--batch-size", "20"])
            .spawn()
            .unwrap(),
    );
    let statuses = || async {
        stores
            .key_value
            .count_prefix("streaming:status:")
            .await
            .unwrap()
    };
    eventually(
        "every event answered, every reply kept",
        Duration::from_secs(120),
        || async { answered().await == recorded && statuses().await == events },
    )
    .await;
    let (users, payments, replies) = stores.relational.counts().await.unwrap();
    assert_eq!((users, payments, replies), (USERS, USERS, recorded));
    exactly_once_in_the_other_stores(&stores, USERS).await;
    std::process::Command::new("kill")
        .args(["-TERM", &s2.0.id().to_string()])
        .status()
        .unwrap();
    assert!(s2.0.wait().unwrap().success());
}

/// After redeliveries, every view is one document, every viewer counted once on the
/// leaderboard, every rating once in its title's count.
async fn exactly_once_in_the_other_stores(stores: &Stores, users: i64) {
    use livros::store::Page;
    use livros::systems::streaming::routing::{HISTORICO, Ranking, avaliacao_key, ranking_key};
    let views = ROUND
        .iter()
        .filter(|k| **k == EventType::RegistrarVisualizacao)
        .count() as i64;
    assert_eq!(
        stores.document.count(HISTORICO).await.unwrap(),
        users * views
    );
    let all = Page {
        skip: 0,
        limit: 1_000_000,
    };
    let history = stores.document.find(HISTORICO, &[], all).await.unwrap();
    let pairs: std::collections::HashSet<(String, String)> = history
        .iter()
        .map(|v| (v["user_id"].to_string(), v["conteudo_id"].to_string()))
        .collect();
    let board = stores
        .key_value
        .ztop(&ranking_key(Ranking::MaisAssistidos, None), 100_000)
        .await
        .unwrap();
    let counted: f64 = board.iter().map(|(_, viewers)| viewers).sum();
    assert_eq!(counted as usize, pairs.len(), "viewers counted once each");
    let rated = stores
        .key_value
        .ztop(&ranking_key(Ranking::MaisBemAvaliados, None), 100_000)
        .await
        .unwrap();
    let fields: Vec<(String, String)> = rated
        .iter()
        .map(|(id, _)| (avaliacao_key(id), "total".to_string()))
        .collect();
    let ratings: i64 = stores
        .key_value
        .hget_many(&fields)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(ratings, users, "one rating per user, counted once");
}

#[tokio::test]
async fn processor_killed_mid_run_embedded() {
    processor_killed_mid_run(StoreConfig::default()).await;
}

#[tokio::test]
async fn processor_killed_mid_run_real_stores() {
    let Some(real) = RealStores::create().await else {
        return;
    };
    processor_killed_mid_run(real.config.clone()).await;
    real.cleanup().await;
}

async fn schemathesis(p: Platform) {
    common::schemathesis(&p.base).await;
    p.pipeline.stop().await.unwrap();
}

#[tokio::test]
async fn schemathesis_finds_nothing_embedded() {
    schemathesis(start(StoreConfig::default(), None).await).await;
}

#[tokio::test]
async fn schemathesis_finds_nothing_real_stores() {
    let Some(real) = RealStores::create().await else {
        return;
    };
    schemathesis(start(real.config.clone(), None).await).await;
    real.cleanup().await;
}

/// `livros up` runs every system by default, and `--count N` waits for all of them.
#[tokio::test]
async fn up_runs_every_system_and_count_waits_for_all() {
    let dir = tempfile::tempdir().unwrap();
    let out = livros(dir.path(), &StoreConfig::default())
        .env_remove("LIVROS_SYSTEMS")
        .env("LIVROS_HTTP", "127.0.0.1:0")
        .args(["up", "--count", "5", "--rate", "0", "--quiet"])
        .stdout(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("(bookstore;")
            && stdout.contains("(streaming;")
            && stdout.contains("(products;"),
        "{stdout}"
    );
    assert!(
        stdout.contains("sent 5 customers, 5 books, 5 orders; 5 criar_usuario"),
        "{stdout}"
    );
    assert!(stdout.contains("; 5 products;"), "{stdout}");
    // S3 logged every system: 15 bookstore events, the streaming requests and their
    // replies (every request but the reads is recorded), 5 product registrations and an
    // announcement per stored product version.
    let requests = 5 * ROUND.len();
    let log = std::fs::read_to_string(dir.path().join("messages.log")).unwrap();
    let on = |topic: &str| {
        log.lines()
            .filter(|l| l.contains(&format!("\"topic\":\"{topic}\"")))
            .count()
    };
    let announced = on("produtos-persistidos");
    assert!((1..=5).contains(&announced), "{announced} announcements");
    assert_eq!(on("cadastro-produtos"), 5);
    assert_eq!(log.lines().count(), 15 + 2 * requests + 5 + announced);
    let mut settings = Settings::embedded(dir.path());
    settings.stores = StoreConfig::default();
    let stores = livros::app::open_stores(&settings).await.unwrap();
    let recorded = 5 * ROUND.iter().filter(|k| !k.is_read()).count() as i64;
    assert_eq!(stores.relational.counts().await.unwrap(), (5, 5, recorded));
}

/// Writes need the bearer token when one is set; reads do not.
#[tokio::test]
async fn gateway_writes_need_the_token_when_one_is_set() {
    let p = start(StoreConfig::default(), None).await;
    let config = livros::api::ApiConfig {
        token: Some("s3cret".into()),
        ..Default::default()
    };
    let listener = livros::api::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = Streaming.http(
        &p.stores,
        p.bus.clone(),
        &p.settings,
        config,
        &Default::default(),
    );
    tokio::spawn(livros::api::serve(
        listener,
        app,
        tokio_util::sync::CancellationToken::new(),
    ));
    let (status, body) = post(&format!("{base}/usuarios"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let response = reqwest::Client::new()
        .post(format!("{base}/usuarios?wait=10"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(get(&format!("{base}/usuarios")).await.0, StatusCode::OK);
    p.pipeline.stop().await.unwrap();
}
