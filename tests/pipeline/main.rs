//! End-to-end tests of the `livros` binary: the whole pipeline, crashes, bad input,
//! shutdown, and start-up errors. Each test gets its own data dir (and its own PostgreSQL
//! database and Redis prefix when those are configured).

#[path = "../common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use std::sync::Arc;

use livros::app::Settings;
use livros::bus::kafka::KafkaConfig;
use livros::bus::{Bus, Record, StartFrom};
use livros::bus::{Topics, dlq_topic};
use livros::services::s2;
use livros::store::StoreConfig;
use livros::systems::bookstore::customers::Customers;
use livros::systems::bookstore::routing::{self, BOOKS_COLLECTION, BookstoreTopics, Entity};
use serde_json::Value;

use common::{RealStores, eventually, finished, free_port, service_url, spawn_redis};

/// Held by the Kafka test running now.
static KAFKA_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Real stores for one test, or embedded ones; Kafka or the embedded bus.
struct Backends {
    config: StoreConfig,
    real: Option<RealStores>,
    /// Kafka brokers, with topics and groups unique to this test (the cluster is shared).
    kafka: Option<String>,
    _kafka_turn: Option<tokio::sync::MutexGuard<'static, ()>>,
    topics: Topics,
    s2_group: String,
    s3_group: String,
}

impl Backends {
    fn embedded() -> Self {
        Self {
            config: StoreConfig::default(),
            real: None,
            kafka: None,
            _kafka_turn: None,
            topics: Topics::default(),
            s2_group: "livros-s2".into(),
            s3_group: "livros-s3".into(),
        }
    }

    /// PostgreSQL, MongoDB and Redis, or `None` (test skipped) when their URLs are unset.
    async fn real() -> Option<Self> {
        let real = RealStores::create().await?;
        Some(Self {
            config: real.config.clone(),
            real: Some(real),
            ..Self::embedded()
        })
    }

    /// Kafka, PostgreSQL, MongoDB and Redis, or `None` when their URLs are unset. Kafka
    /// tests run one at a time: each starts several group members, and a test broker on
    /// two cores answers group heartbeats late when many do at once.
    async fn kafka() -> Option<Self> {
        let brokers = service_url("LIVROS_TEST_KAFKA_BROKERS")?;
        let one_at_a_time = KAFKA_TESTS.lock().await;
        let run = uuid::Uuid::new_v4().simple().to_string();
        Some(Self {
            kafka: Some(brokers),
            _kafka_turn: Some(one_at_a_time),
            topics: Topics::new(format!("t{run}.")),
            s2_group: format!("s2-{run}"),
            s3_group: format!("s3-{run}"),
            ..Self::real().await?
        })
    }

    fn apply(&self, cmd: &mut Command) {
        if let Some(url) = &self.config.postgres_url {
            cmd.env("LIVROS_POSTGRES_URL", url);
        }
        if let Some(url) = &self.config.redis_url {
            cmd.env("LIVROS_REDIS_URL", url)
                .env("LIVROS_REDIS_PREFIX", &self.config.redis_prefix);
        }
        if let Some(url) = &self.config.mongodb_url {
            cmd.env("LIVROS_MONGODB_URL", url);
        }
        if let Some(database) = &self.config.mongodb_database {
            cmd.env("LIVROS_MONGODB_DATABASE", database);
        }
        if let Some(brokers) = &self.kafka {
            cmd.env("LIVROS_KAFKA_BROKERS", brokers)
                .env("LIVROS_TOPIC_PREFIX", self.topics.prefix())
                .env("LIVROS_S2_GROUP", &self.s2_group)
                .env("LIVROS_S3_GROUP", &self.s3_group);
        }
    }

    fn settings(&self, data_dir: &Path) -> Settings {
        let mut settings = Settings::embedded(data_dir);
        settings.stores = self.config.clone();
        settings.topics = self.topics.clone();
        settings.kafka = self.kafka.clone().map(|brokers| KafkaConfig {
            brokers,
            replication: 1,
        });
        settings
    }

    /// The bus these backends name, with every topic created.
    async fn bus(&self, data_dir: &Path) -> Arc<dyn Bus> {
        livros::app::open_bus(&self.settings(data_dir))
            .await
            .expect("bus opens")
    }

    async fn cleanup(self) {
        if let Some(real) = self.real {
            real.cleanup().await;
        }
    }
}

/// Messages on the bookstore's entity topics that S2's groups (`group`) have not committed.
async fn s2_lag(bus: &dyn Bus, group: &str, topics: &Topics) -> Result<i64, livros::bus::BusError> {
    let mut total = 0;
    for route in routing::ROUTES {
        total += bus
            .lag(&s2::group_of(group, route.topic), &[topics.entity(route)])
            .await?;
    }
    Ok(total)
}

/// `livros` with a data dir and backends, quiet unless a test asks for output.
fn livros(data_dir: &Path, backends: &Backends) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_livros"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        // These tests count the bookstore's messages; the streaming platform has its own.
        .env("LIVROS_SYSTEMS", "bookstore")
        .env("LIVROS_DATA_DIR", data_dir)
        // Tests run in parallel: each API on a free port, never the default 5000.
        .env("LIVROS_HTTP", "127.0.0.1:0")
        .env("LIVROS_DASHBOARD", "off")
        .stdin(Stdio::null());
    backends.apply(&mut cmd);
    cmd
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("livros runs");
    assert!(
        out.status.success(),
        "livros failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn read_log(data_dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(data_dir.join("messages.log")).expect("messages.log exists");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("every log line is JSON"))
        .collect()
}

/// The entity id inside a logged message (enveloped or bare).
fn entity_id(line: &Value) -> Option<String> {
    let message = line["message"].clone();
    let data = livros::envelope::data_of(message);
    match &data["id"] {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Checks the audit log holds `expected_lines` distinct messages and that every entity it
/// shows on an entity topic is in its store, exactly once.
async fn verify(
    data_dir: &Path,
    backends: &Backends,
    expected_lines: usize,
    expect_stored: Option<[usize; 3]>,
) {
    let log = read_log(data_dir);
    // The same payload at two positions: published twice (a producer's retry the broker
    // did not recognise), which S3's dedupe by position cannot see.
    let mut by_payload: HashMap<String, Vec<String>> = HashMap::new();
    for l in &log {
        by_payload
            .entry(l["message"].to_string())
            .or_default()
            .push(format!(
                "{}[{}]@{}",
                l["topic"], l["partition"], l["offset"]
            ));
    }
    let twice: Vec<&Vec<String>> = by_payload.values().filter(|p| p.len() > 1).collect();
    assert_eq!(
        log.len(),
        expected_lines,
        "messages.log line count; payloads logged at more than one position: {twice:?}"
    );
    let positions: HashSet<(String, i64, i64)> = log
        .iter()
        .map(|l| {
            (
                l["topic"].as_str().unwrap().to_string(),
                l["partition"].as_i64().unwrap(),
                l["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(positions.len(), log.len(), "no message is logged twice");

    let mut ids: BTreeMap<&str, HashSet<String>> = BTreeMap::new();
    for line in &log {
        let topic = line["topic"].as_str().unwrap();
        if let (Some(route), Some(id)) = (backends.topics.route(topic), entity_id(line)) {
            ids.entry(route.topic).or_default().insert(id);
        }
    }
    let stores = livros::systems::open_stores(data_dir, &backends.config)
        .await
        .expect("stores open");
    let customers: Vec<String> = ids
        .get("customers")
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let books: Vec<String> = ids
        .get("books")
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let orders: Vec<String> = ids
        .get("orders")
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .collect();

    let stored_customers = stores
        .relational
        .existing_customers(&customers)
        .await
        .unwrap();
    let stored_books = stores
        .document
        .existing(BOOKS_COLLECTION, &books)
        .await
        .unwrap();
    let order_keys: Vec<String> = orders.iter().map(|id| routing::order_key(id)).collect();
    let stored_orders = stores.key_value.existing(&order_keys).await.unwrap();
    let counts = [
        stores.relational.count_customers().await.unwrap() as usize,
        stores.document.count(BOOKS_COLLECTION).await.unwrap() as usize,
        stores.key_value.count_prefix("order:").await.unwrap() as usize,
    ];
    if let Some(expected) = expect_stored {
        assert_eq!(
            counts, expected,
            "records per store (customers, books, orders)"
        );
    } else {
        assert_eq!(
            stored_customers.len(),
            customers.len(),
            "every customer stored"
        );
        assert_eq!(stored_books.len(), books.len(), "every book stored");
        assert_eq!(stored_orders.len(), orders.len(), "every order stored");
        assert_eq!(
            counts,
            [customers.len(), books.len(), orders.len()],
            "exactly once in each store"
        );
    }
}

async fn up_count_200(backends: Backends) {
    let dir = tempfile::tempdir().unwrap();
    let out = run_ok(livros(dir.path(), &backends).args(["up", "--count", "200", "--rate", "0"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("[S1] Sent customer"), "{stdout}");
    assert!(stdout.contains("in relational store"), "{stdout}");
    let topic_of = |entity| backends.topics.entity(routing::route_of(entity));
    let orders = topic_of(Entity::Order);
    assert!(
        stdout.contains(&format!("[S3] Logged message from {orders}")),
        "{stdout}"
    );
    verify(dir.path(), &backends, 600, None).await;
    let log = read_log(dir.path());
    for entity in [Entity::Customer, Entity::Book, Entity::Order] {
        let topic = topic_of(entity);
        assert_eq!(
            log.iter().filter(|l| l["topic"] == topic.as_str()).count(),
            200,
            "{topic}"
        );
    }
    // Every stored customer reads back through `livros get`.
    let customers = topic_of(Entity::Customer);
    let customer = log
        .iter()
        .find(|l| l["topic"] == customers.as_str())
        .unwrap();
    let id = entity_id(customer).unwrap();
    let out = run_ok(livros(dir.path(), &backends).args(["get", "customer", &id]));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["id"], id.as_str());
    assert_eq!(
        got["name"],
        livros::envelope::data_of(customer["message"].clone())["name"]
    );
    backends.cleanup().await;
}

#[tokio::test]
async fn up_count_200_embedded() {
    up_count_200(Backends::embedded()).await;
}

#[tokio::test]
async fn up_count_200_postgres_mongodb_and_redis() {
    let Some(backends) = Backends::real().await else {
        return;
    };
    up_count_200(backends).await;
}

fn kill9(child: &mut Child) {
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
}

/// SIGTERM, then wait, whatever the exit status.
fn terminate_any(child: &mut Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
}

fn terminate(child: &mut Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "a service stopped by SIGTERM exits 0, got {status}"
    );
}

async fn crash_and_restart(backends: Backends) {
    let dir = tempfile::tempdir().unwrap();
    let rounds = 3_000;
    run_ok(livros(dir.path(), &backends).args([
        "s1",
        "--count",
        &rounds.to_string(),
        "--rate",
        "0",
        "--quiet",
    ]));
    let bus = backends.bus(dir.path()).await;
    let all_topics = backends.topics.all();
    let (g2, g3) = (backends.s2_group.as_str(), backends.s3_group.as_str());
    // Each run's lines go to a file: counting them is how the test sees progress
    // without asking the bus (slow on some brokers) while the clock runs.
    let spawn = |service: &str, out: &str| {
        livros(dir.path(), &backends)
            .args([service, "--batch-size", "20"])
            .stdout(std::fs::File::create(dir.path().join(out)).unwrap())
            .spawn()
            .unwrap()
    };
    let lines = |out: &str, what: &str| {
        std::fs::read_to_string(dir.path().join(out))
            .unwrap_or_default()
            .matches(what)
            .count()
    };
    let (mut s2, mut s3) = (spawn("s2", "s2.first"), spawn("s3", "s3.first"));
    eventually(
        "S2 and S3 to be mid-way",
        Duration::from_secs(60),
        || async {
            lines("s2.first", "[S2] Stored") >= 300 && lines("s3.first", "[S3] Logged") >= 300
        },
    )
    .await;
    kill9(&mut s2);
    kill9(&mut s3);
    let s2_left = s2_lag(&*bus, g2, &backends.topics).await.unwrap();
    let s3_left = bus.lag(g3, &all_topics).await.unwrap();
    assert!(
        s2_left > 0 && s3_left > 0,
        "the kill must land mid-run (lags {s2_left}, {s3_left})"
    );

    let (mut s2, mut s3) = (spawn("s2", "s2.second"), spawn("s3", "s3.second"));
    eventually(
        "S2 and S3 to finish after restart",
        Duration::from_secs(120),
        || async {
            s2_lag(&*bus, g2, &backends.topics).await.unwrap() == 0
                && bus.lag(g3, &all_topics).await.unwrap() == 0
        },
    )
    .await;
    terminate(&mut s2);
    terminate(&mut s3);
    verify(dir.path(), &backends, rounds * 3, None).await;
    backends.cleanup().await;
}

#[tokio::test]
async fn up_count_200_kafka_postgres_mongodb_and_redis() {
    let Some(backends) = Backends::kafka().await else {
        return;
    };
    up_count_200(backends).await;
}

/// The broker unreachable for a few seconds mid-run (every connection closed, new ones
/// refused), as clients see a broker restart or a network cut: `up` waits, reconnects and
/// finishes with every event stored and logged exactly once. The broker is a private one
/// behind a proxy the test cuts; it advertises the proxy's address, so every connection
/// goes through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_unreachable_mid_run_loses_and_duplicates_nothing() {
    let Some(mut backends) = Backends::kafka().await else {
        return;
    };
    let (inner, outer) = (free_port(), free_port());
    let broker_dir = tempfile::tempdir().unwrap();
    let mut broker = Command::new("tansu")
        .current_dir(broker_dir.path())
        .args([
            "broker",
            "--listener-url",
            &format!("tcp://127.0.0.1:{inner}"),
        ])
        .args([
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{outer}"),
        ])
        .args(["--storage-engine", "sqlite://tansu.db", "--silent"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(common::Child)
        .expect("tansu is installed where LIVROS_TEST_KAFKA_BROKERS is set (.ci/run installs it)");
    eventually(
        "the private broker to listen",
        Duration::from_secs(30),
        || async { std::net::TcpStream::connect(("127.0.0.1", inner)).is_ok() },
    )
    .await;
    let mut proxy = common::TcpProxy::start(outer, inner).await;
    backends.kafka = Some(format!("127.0.0.1:{outer}"));

    let dir = tempfile::tempdir().unwrap();
    let up = livros(dir.path(), &backends)
        .args(["up", "--count", "300", "--rate", "200", "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = dir.path().join("messages.log");
    eventually(
        "S3 to log some messages",
        Duration::from_secs(120),
        || async { std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() > 100) },
    )
    .await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.restore().await;
    let out = finished(up, "up finishes once the broker is reachable again").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bus unavailable"),
        "the outage happened mid-run and was waited out: {stderr}"
    );
    verify(dir.path(), &backends, 900, None).await;
    proxy.cut();
    kill9(&mut broker.0);
    backends.cleanup().await;
}

#[tokio::test]
#[ignore = "kill -9 of group members: tansu, the test broker here, stops answering group heartbeats under it; run with --ignored against Apache Kafka"]
async fn kill_9_mid_run_loses_and_duplicates_nothing_kafka() {
    let Some(backends) = Backends::kafka().await else {
        return;
    };
    crash_and_restart(backends).await;
}

/// Two S2 processes share the partitions; kill -9 one and the other takes over.
#[tokio::test]
#[ignore = "kill -9 of group members: tansu, the test broker here, stops answering group heartbeats under it; run with --ignored against Apache Kafka"]
async fn two_s2_processes_share_the_work_and_survive_losing_one() {
    let Some(backends) = Backends::kafka().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rounds = 2_000;
    run_ok(livros(dir.path(), &backends).args([
        "s1",
        "--count",
        &rounds.to_string(),
        "--rate",
        "0",
        "--quiet",
    ]));
    let bus = backends.bus(dir.path()).await;
    let spawn_s2 = |log: &Path| {
        livros(dir.path(), &backends)
            .args(["s2", "--batch-size", "20"])
            .stdout(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap()
    };
    let (a_log, b_log) = (dir.path().join("a.out"), dir.path().join("b.out"));
    let mut a = spawn_s2(&a_log);
    let mut b = spawn_s2(&b_log);
    let stored_by = |log: &Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("[S2] Stored")
            .count()
    };
    eventually(
        "both S2 processes to store events",
        Duration::from_secs(90),
        || async { stored_by(&a_log) > 0 && stored_by(&b_log) > 0 },
    )
    .await;
    kill9(&mut a);
    let lag = s2_lag(&*bus, &backends.s2_group, &backends.topics)
        .await
        .unwrap();
    assert!(lag > 0, "the kill must land mid-run");
    eventually(
        "the surviving S2 to finish",
        Duration::from_secs(120),
        || async {
            s2_lag(&*bus, &backends.s2_group, &backends.topics)
                .await
                .unwrap()
                == 0
        },
    )
    .await;
    terminate(&mut b);
    let stores = livros::systems::open_stores(dir.path(), &backends.config)
        .await
        .unwrap();
    assert_eq!(
        stores.relational.count_customers().await.unwrap(),
        rounds as i64
    );
    assert_eq!(
        stores.key_value.count_prefix("order:").await.unwrap(),
        rounds as i64
    );
    backends.cleanup().await;
}

#[tokio::test]
async fn kill_9_mid_run_loses_and_duplicates_nothing_embedded() {
    crash_and_restart(Backends::embedded()).await;
}

#[tokio::test]
async fn kill_9_mid_run_loses_and_duplicates_nothing_postgres_mongodb_and_redis() {
    let Some(backends) = Backends::real().await else {
        return;
    };
    crash_and_restart(backends).await;
}

#[tokio::test]
async fn bad_input_is_dead_lettered_and_the_pipeline_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Backends::embedded().bus(dir.path()).await;
    let raw = |topic: &str, payload: &[u8]| Record {
        topic: topic.into(),
        key: None,
        headers: vec![],
        payload: payload.to_vec(),
    };
    let bad = vec![
        raw("customers", b"not json at all"),
        raw("customers", br#"{"id":"c-bad","name":"No Email"}"#),
        raw("customers", &[0xff, 0xfe, 0x00]),
        raw("customers", b""),
        raw("books", br#"{"id":"b-bad","title":"X","authors":"Machado de Assis"}"#),
        raw("orders", br#"{"id":"o-ghost","customer_id":"ghost","book_id":"b-seed","quantity":1,"timestamp":"2024-01-01T00:00:00"}"#),
        raw("orders", br#"{"id":"o-zero","customer_id":"c-seed","book_id":"b-seed","quantity":0,"timestamp":"2024-01-01T00:00:00"}"#),
    ];
    // The seeds' own producers send bare JSON with no key: stored like ours.
    let seed_style = vec![
        raw("customers", br#"{"id":"c-seed","name":"Ana Seed","email":"ana@example.com"}"#),
        raw("books", br#"{"id":"b-seed","title":"Bare Book","authors":["A. Author"],"isbn":null}"#),
        raw("orders", br#"{"id":"o-seed","customer_id":"c-seed","book_id":"b-seed","quantity":2,"timestamp":"2024-01-01T10:00:00.123456"}"#),
    ];
    let mut records = bad.clone();
    records.extend(seed_style);
    bus.publish(&records).await.unwrap();

    run_ok(livros(dir.path(), &Backends::embedded()).args([
        "up",
        "--count",
        "20",
        "--rate",
        "0",
        "--quiet",
        "--reference-grace-ms",
        "300",
    ]));

    // Every bad message is in its dead-letter topic, bytes untouched, with a reason.
    let mut inspector = bus
        .subscribe(
            "inspector",
            &[
                "customers.dlq".into(),
                "books.dlq".into(),
                "orders.dlq".into(),
            ],
            StartFrom::Earliest,
        )
        .await
        .unwrap();
    let mut dead = Vec::new();
    for _ in 0..10 {
        dead.extend(
            inspector
                .poll(100, Duration::from_millis(100))
                .await
                .unwrap(),
        );
    }
    assert_eq!(dead.len(), bad.len(), "{dead:#?}");
    for record in &bad {
        let letter = dead
            .iter()
            .find(|m| {
                m.payload == record.payload && m.header("dlq.topic") == Some(record.topic.as_str())
            })
            .unwrap_or_else(|| {
                panic!(
                    "no dead letter for {:?}",
                    String::from_utf8_lossy(&record.payload)
                )
            });
        assert_eq!(letter.topic, dlq_topic(&record.topic));
        assert!(!letter.header("dlq.reason").unwrap_or_default().is_empty());
    }
    let reason_of = |payload: &[u8]| {
        dead.iter()
            .find(|m| m.payload == payload)
            .unwrap()
            .header("dlq.reason")
            .unwrap()
            .to_string()
    };
    assert!(reason_of(br#"{"id":"c-bad","name":"No Email"}"#).contains("email"));
    assert!(reason_of(bad[5].payload.as_slice()).contains("unknown customer `ghost`"));
    assert!(reason_of(bad[6].payload.as_slice()).contains("quantity"));

    // The valid messages, ours and the seed-style ones, are stored; nothing else is.
    let stores = livros::systems::open_stores(dir.path(), &StoreConfig::default())
        .await
        .unwrap();
    assert_eq!(
        stores
            .relational
            .customer("c-seed")
            .await
            .unwrap()
            .unwrap()
            .name,
        "Ana Seed"
    );
    assert!(
        stores
            .document
            .get(BOOKS_COLLECTION, "b-seed")
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        routing::order_from_hash(
            "o-seed",
            &stores.key_value.hgetall("order:o-seed").await.unwrap()
        )
        .unwrap()
        .quantity,
        2
    );
    assert_eq!(stores.relational.count_customers().await.unwrap(), 21);
    assert_eq!(stores.key_value.count_prefix("order:").await.unwrap(), 21);
    assert!(stores.relational.customer("c-bad").await.unwrap().is_none());

    // S3 logged everything: 60 generated, 10 injected, 7 dead letters.
    let log = read_log(dir.path());
    assert_eq!(log.len(), 60 + 10 + 7);
    assert_eq!(
        log.iter()
            .filter(|l| l["topic"].as_str().unwrap().ends_with(".dlq"))
            .count(),
        7
    );
    let stats = bus.stats(&Topics::default().all(), &[]).await.unwrap();
    assert_eq!(stats["customers.dlq"].published, 4);
    assert_eq!(stats["orders.dlq"].published, 2);
}

/// S2's customers consumer kept from its topic for ten reference graces (another member
/// of its group holds the topic, as a slow group join or a consumer behind after an
/// outage would): the orders naming those customers wait for it and are stored, not
/// dead-lettered.
#[tokio::test]
async fn orders_wait_for_a_customers_consumer_that_is_behind() {
    let dir = tempfile::tempdir().unwrap();
    let backends = Backends::embedded();
    let bus = backends.bus(dir.path()).await;
    bus.ensure_topics(&backends.topics.all(), 3).await.unwrap();
    let customers = backends.topics.entity(routing::route_of(Entity::Customer));
    let mut holder = bus
        .subscribe(
            &s2::group_of(&backends.s2_group, "customers"),
            std::slice::from_ref(&customers),
            StartFrom::Earliest,
        )
        .await
        .unwrap();
    holder.poll(1, Duration::ZERO).await.unwrap();

    let up = livros(dir.path(), &backends)
        .args(["up", "--count", "50", "--rate", "0", "--quiet"])
        .args(["--reference-grace-ms", "300"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    holder.close().await.unwrap();
    finished(up, "up finishes once the customers are stored").await;
    let dead = bus
        .stats(
            &[dlq_topic(
                &backends.topics.entity(routing::route_of(Entity::Order)),
            )],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        dead.values().map(|t| t.published).sum::<i64>(),
        0,
        "no order dead-lettered"
    );
    verify(dir.path(), &backends, 150, None).await;
}

/// A fixture of `tests/fixtures/seed`: what the original programs send.
fn seed_fixture(name: &str) -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/seed/{name}.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// What the original pub/sub producer publishes — bare JSON, no key, no headers, orders
/// timed by `time.time()` — is stored, and read back in the canonical time form by the
/// stores and `livros get`; times that cannot be right are dead-lettered with the reason.
async fn the_originals_messages_are_stored(backends: Backends) {
    let dir = tempfile::tempdir().unwrap();
    let bus = backends.bus(dir.path()).await;
    let topic = |entity| backends.topics.entity(routing::route_of(entity));
    let bare = |entity, payload: &Value| Record {
        topic: topic(entity),
        key: None,
        headers: vec![],
        payload: serde_json::to_vec(payload).unwrap(),
    };
    let (customer, book, order) = (
        seed_fixture("customer"),
        seed_fixture("book"),
        seed_fixture("order"),
    );
    let order_with = |id: &str, timestamp: Value| {
        let mut o = order.clone();
        o["id"] = id.into();
        o["timestamp"] = timestamp;
        o
    };
    let refused = [
        order_with("o-millis", serde_json::json!(1795449989113_i64)),
        order_with("o-negative", serde_json::json!(-1.5)),
    ];
    let mut records = vec![
        bare(Entity::Customer, &customer),
        bare(Entity::Book, &book),
        bare(Entity::Order, &order),
        bare(
            Entity::Order,
            &order_with("o-int", serde_json::json!(1795449989)),
        ),
        bare(
            Entity::Order,
            &order_with("o-iso", serde_json::json!("2026-11-23T16:06:29.1136")),
        ),
    ];
    records.extend(refused.iter().map(|o| bare(Entity::Order, o)));
    bus.publish(&records).await.unwrap();

    run_ok(livros(dir.path(), &backends).args([
        "up",
        "--count",
        "0",
        "--quiet",
        "--reference-grace-ms",
        "300",
    ]));

    let stores = livros::systems::open_stores(dir.path(), &backends.config)
        .await
        .unwrap();
    let read = |id: &str| {
        let stores = stores.clone();
        let id = id.to_string();
        async move {
            routing::order_from_hash(
                &id,
                &stores
                    .key_value
                    .hgetall(&routing::order_key(&id))
                    .await
                    .unwrap(),
            )
            .unwrap_or_else(|| panic!("order {id} stored"))
        }
    };
    let first = read(order["id"].as_str().unwrap()).await;
    assert_eq!(
        (first.quantity, first.timestamp.as_str()),
        (3, "2026-11-23T16:06:29.113600Z")
    );
    assert_eq!(read("o-int").await.timestamp, "2026-11-23T16:06:29.000000Z");
    assert_eq!(read("o-iso").await.timestamp, "2026-11-23T16:06:29.113600Z");
    let out =
        run_ok(livros(dir.path(), &backends).args(["get", "order", order["id"].as_str().unwrap()]));
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["timestamp"], "2026-11-23T16:06:29.113600Z");
    assert!(
        stores
            .document
            .get(BOOKS_COLLECTION, book["id"].as_str().unwrap())
            .await
            .unwrap()
            .is_some()
    );

    let dlq = dlq_topic(&topic(Entity::Order));
    let mut inspector = bus
        .subscribe("inspector", std::slice::from_ref(&dlq), StartFrom::Earliest)
        .await
        .unwrap();
    let mut dead = Vec::new();
    for _ in 0..50 {
        dead.extend(
            inspector
                .poll(100, Duration::from_millis(100))
                .await
                .unwrap(),
        );
        if dead.len() >= refused.len() {
            break;
        }
    }
    assert_eq!(dead.len(), refused.len(), "{dead:#?}");
    let reasons: Vec<&str> = dead
        .iter()
        .map(|m| m.header("dlq.reason").unwrap_or_default())
        .collect();
    for says in ["milliseconds", "negative"] {
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("timestamp") && r.contains(says)),
            "{reasons:?}"
        );
    }
    backends.cleanup().await;
}

#[tokio::test]
async fn the_originals_messages_are_stored_embedded() {
    the_originals_messages_are_stored(Backends::embedded()).await;
}

#[tokio::test]
async fn the_originals_messages_are_stored_postgres_mongodb_and_redis() {
    let Some(backends) = Backends::real().await else {
        return;
    };
    the_originals_messages_are_stored(backends).await;
}

#[tokio::test]
async fn ctrl_c_stops_cleanly_and_a_restart_finishes_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let backends = Backends::embedded();
    let up = livros(dir.path(), &backends)
        .args(["up", "--rate", "200"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let bus = Backends::embedded().bus(dir.path()).await;
    eventually("some events to flow", Duration::from_secs(30), || async {
        bus.stats(&["orders".to_string()], &["livros-s3".to_string()])
            .await
            .unwrap()["orders"]
            .consumed
            .get("livros-s3")
            .copied()
            .unwrap_or(0)
            > 20
    })
    .await;
    Command::new("kill")
        .args(["-INT", &up.id().to_string()])
        .status()
        .unwrap();
    let out = finished(up, "Ctrl-C exits 0").await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reported_sent = stdout
        .lines()
        .filter(|l| l.starts_with("[S1] Sent"))
        .count() as i64;

    // Every event S1 reported as sent is on the bus.
    let published: i64 = bus
        .stats(&Topics::default().entities(), &[])
        .await
        .unwrap()
        .values()
        .map(|t| t.published)
        .sum();
    assert_eq!(
        published, reported_sent,
        "S1 reports exactly what it made durable"
    );

    // A restart with nothing new to send processes whatever was still in flight.
    run_ok(livros(dir.path(), &backends).args(["up", "--count", "0", "--quiet"]));
    verify(dir.path(), &backends, published as usize, None).await;
}

#[test]
fn an_unreachable_store_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = livros(dir.path(), &Backends::embedded())
        .args([
            "up",
            "--count",
            "1",
            "--postgres-url",
            "postgres://shop:hunter2@127.0.0.1:1/livros",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, no backtrace: {stderr}");
    assert!(
        lines[0].starts_with(
            "error: cannot open the relational store at postgres://shop:***@127.0.0.1:1/livros"
        ),
        "{stderr}"
    );
    assert!(
        lines[0].contains("Check that PostgreSQL is running"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2") && !stderr.contains("panicked"));
}

#[test]
fn get_of_an_unknown_id_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = livros(dir.path(), &Backends::embedded())
        .args(["get", "order", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no order with id `nope` in the key-value store"),
        "{stderr}"
    );
    assert!(stderr.contains("livros stats"), "{stderr}");
}

/// Runs `up` on `backends` whose `topic` goes to a private server on `port`, started by
/// `start`; stops that server mid-run with `stop`, starts it again two seconds later, and
/// checks that `up` still finishes with everything stored exactly once.
async fn survives_a_store_outage(
    backends: Backends,
    topic: &str,
    port: u16,
    start: impl Fn() -> Child,
    stop: impl Fn(&mut Child),
) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start();
    eventually(
        "the private server to listen",
        Duration::from_secs(30),
        || async { std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() },
    )
    .await;
    let up = livros(dir.path(), &backends)
        .args(["up", "--count", "300", "--rate", "600", "--quiet"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let bus = Backends::embedded().bus(dir.path()).await;
    let group = format!("livros-s2.{topic}");
    eventually(
        "some records to be stored",
        Duration::from_secs(60),
        || async {
            let stats = bus
                .stats(&[topic.to_string()], std::slice::from_ref(&group))
                .await
                .unwrap();
            stats[topic].consumed[&group] > 20
        },
    )
    .await;
    stop(&mut server);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut server = start();
    finished(up, "up finishes once the store is back").await;
    verify(dir.path(), &backends, 900, None).await;
    kill9(&mut server);
}

#[tokio::test]
async fn redis_going_away_mid_run_is_waited_for_not_skipped() {
    // Runs where the Redis tests run: it needs the redis-server binary.
    if service_url("LIVROS_TEST_REDIS_URL").is_none() {
        return;
    }
    let redis_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let backends = Backends {
        config: StoreConfig {
            redis_url: Some(format!("redis://127.0.0.1:{port}")),
            ..StoreConfig::default()
        },
        ..Backends::embedded()
    };
    // Append-only with fsync always: a killed Redis keeps what it acknowledged.
    survives_a_store_outage(
        backends,
        "orders",
        port,
        || spawn_redis(port, redis_dir.path()),
        kill9,
    )
    .await;
}

#[tokio::test]
async fn mongodb_going_away_mid_run_is_waited_for_not_skipped() {
    // Runs where the MongoDB tests run: it needs the secantusd-py test server.
    if service_url("LIVROS_TEST_MONGODB_URL").is_none() {
        return;
    }
    let mongo_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let start = || {
        Command::new("secantusd-py")
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--storage-path",
            ])
            .arg(mongo_dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("secantusd-py is installed where LIVROS_TEST_MONGODB_URL is set")
    };
    let backends = Backends {
        config: StoreConfig {
            mongodb_url: Some(format!("mongodb://127.0.0.1:{port}")),
            ..StoreConfig::default()
        },
        ..Backends::embedded()
    };
    // Stopped, not killed: what is tested is our side losing its connection, not the test
    // server's durability.
    survives_a_store_outage(backends, "books", port, start, terminate_any).await;
}

/// `livros bench` times S2 on a backlog and S3 after it, and prints each store's own bulk
/// rate for the same rows beside what the pipeline got out of it.
#[test]
fn bench_times_s2_then_s3_and_prints_each_ceiling() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = common::output_of(
        common::livros(dir.path(), &StoreConfig::default(), "bookstore")
            .args(["bench", "--events", "300"]),
    );
    let line = |start: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no `{start}` line in:\n{stdout}"))
    };
    assert!(line("S2 stored:").contains("events/s"), "{stdout}");
    assert!(line("S3 logged:").contains("events/s"), "{stdout}");
    assert!(line("bus ceiling:").contains("S2 reaches"), "{stdout}");
    assert!(
        line("S2 bound:").contains("% of the bus ceiling"),
        "{stdout}"
    );
    for store in ["relational", "document", "key-value"] {
        // S2 really wrote its third of the events to each store.
        assert!(
            line(&format!("{store}: ")).contains("(100 records in"),
            "{stdout}"
        );
        assert!(
            line(&format!("{store} ceiling:")).contains("the pipeline reaches"),
            "{stdout}"
        );
    }
}
