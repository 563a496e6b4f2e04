//! The outbox and its relay, on SQLite (embedded) and PostgreSQL: rows written in a
//! transaction are published once, in order, with their key and version; a rolled-back
//! transaction publishes nothing; a live lease is respected and an expired one is taken
//! over; two relays sharing the table publish every row exactly once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use livros::bus::embedded::EmbeddedBus;
use livros::bus::{Bus, Consumer, StartFrom};
use livros::services::outbox::{self, COLUMNS, Relay, RelayConfig, VERSION_HEADER};
use livros::store::postgres::PostgresStore;
use livros::store::sqlite::SqliteStore;
use livros::store::{RelationalStore, SqlValue, Statement};

use crate::common::{TestDb, service_url};

const TOPIC: &str = "announcements";

fn row(key: &str, version: Option<i64>, payload: &str) -> Statement {
    Statement::new(
        format!("INSERT INTO {COLUMNS} VALUES ($1, $2, $3, $4)"),
        vec![
            TOPIC.into(),
            key.into(),
            SqlValue::Int(version),
            payload.into(),
        ],
    )
}

/// Everything on the topic, read by a fresh group.
async fn published(bus: &dyn Bus) -> Vec<livros::bus::Message> {
    let group = format!("reader-{}", uuid::Uuid::new_v4().simple());
    let mut consumer: Box<dyn Consumer> = bus
        .subscribe(&group, &[TOPIC.to_string()], StartFrom::Earliest)
        .await
        .unwrap();
    let mut all = Vec::new();
    loop {
        let got = consumer
            .poll(1000, Duration::from_millis(300))
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        all.extend(got);
    }
    consumer.close().await.unwrap();
    all
}

fn relay(store: &Arc<dyn RelationalStore>, bus: &Arc<dyn Bus>) -> Relay {
    Relay::new(
        store.clone(),
        bus.clone(),
        RelayConfig {
            batch: 50,
            ..RelayConfig::default()
        },
    )
}

async fn suite(store: Arc<dyn RelationalStore>) {
    let dir = tempfile::tempdir().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(EmbeddedBus::open(dir.path()).await.unwrap());
    bus.ensure_topics(&[TOPIC.to_string()], 3).await.unwrap();
    let one = relay(&store, &bus);

    // Written in one transaction, published once, in order, keyed, with the version.
    store
        .transaction(&[
            row("p1", Some(1), "first"),
            row("p1", Some(2), "second"),
            row("p2", None, "third"),
        ])
        .await
        .unwrap();
    assert_eq!(outbox::pending(&*store).await.unwrap(), 3);
    assert_eq!(one.relay_once().await.unwrap(), 3);
    assert_eq!(one.relay_once().await.unwrap(), 0);
    assert_eq!(outbox::pending(&*store).await.unwrap(), 0);
    let got = published(&*bus).await;
    let p1: Vec<(&[u8], Option<&str>)> = got
        .iter()
        .filter(|m| m.key.as_deref() == Some("p1"))
        .map(|m| (m.payload.as_slice(), m.header(VERSION_HEADER)))
        .collect();
    assert_eq!(
        p1,
        [(&b"first"[..], Some("1")), (&b"second"[..], Some("2"))]
    );
    let p2 = got.iter().find(|m| m.key.as_deref() == Some("p2")).unwrap();
    assert_eq!(p2.header(VERSION_HEADER), None);

    // A transaction that fails leaves no row behind.
    let failed = store
        .transaction(&[
            row("p3", Some(1), "never"),
            Statement::new("INSERT INTO no_such_table VALUES (1)", vec![]),
        ])
        .await;
    assert!(failed.is_err());
    assert_eq!(outbox::pending(&*store).await.unwrap(), 0);

    // A row another relay holds a live lease on is left alone; once the lease has run out
    // (that relay died between publishing and marking), it is published again.
    store
        .transaction(&[row("p4", Some(1), "leased")])
        .await
        .unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let lease = |until: i64| {
        Statement::new(
            "UPDATE outbox SET claimed_by = 'another', claimed_until = $1 WHERE published_at IS NULL",
            vec![until.into()],
        )
    };
    store.query(&lease(now + 60_000)).await.unwrap();
    assert_eq!(one.relay_once().await.unwrap(), 0);
    store.query(&lease(now - 1)).await.unwrap();
    assert_eq!(one.relay_once().await.unwrap(), 1);

    // Two relays over one table, at once: every row published exactly once.
    const ROWS: usize = 400;
    let rows: Vec<Statement> = (0..ROWS)
        .map(|i| row(&format!("k{}", i % 37), Some(i as i64), &format!("row-{i}")))
        .collect();
    store.transaction(&rows).await.unwrap();
    let two = relay(&store, &bus);
    let drain = |r: Relay| async move {
        let mut n = 0;
        loop {
            match r.relay_once().await.unwrap() {
                0 => return n,
                k => n += k,
            }
        }
    };
    let (a, b) = tokio::join!(drain(one.clone()), drain(two));
    assert_eq!(a + b, ROWS);
    let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
    for m in published(&*bus).await {
        *seen.entry(m.payload).or_default() += 1;
    }
    for i in 0..ROWS {
        assert_eq!(seen.get(format!("row-{i}").as_bytes()), Some(&1), "row-{i}");
    }
    assert_eq!(outbox::pending(&*store).await.unwrap(), 0);

    // `run` publishes what arrives while it runs, until stopped.
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(one.clone().run(shutdown.clone()));
    store
        .transaction(&[row("p5", Some(1), "late")])
        .await
        .unwrap();
    one.waker().notify_one();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while outbox::pending(&*store).await.unwrap() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the relay did not publish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

fn migrations(pg: bool) -> Vec<&'static sqlx::migrate::Migrator> {
    livros::systems::schemas()
        .iter()
        .map(|m| if pg { m.postgres } else { m.sqlite })
        .collect()
}

#[tokio::test]
async fn sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("relational.db"), &migrations(false))
        .await
        .unwrap();
    suite(Arc::new(store)).await;
}

#[tokio::test]
async fn postgres() {
    let Some(url) = service_url("LIVROS_TEST_POSTGRES_URL") else {
        return;
    };
    let db = TestDb::create(&url).await;
    let store = PostgresStore::connect(&db.url, &migrations(true))
        .await
        .unwrap();
    suite(Arc::new(store)).await;
    db.drop_db().await;
}
