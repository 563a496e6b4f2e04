//! The bus suite. Written against the `Bus` trait with unique topic names, so the Kafka
//! implementation runs the same functions.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::common::service_url;

use livros::bus::embedded::EmbeddedBus;
use livros::bus::kafka::{KafkaBus, KafkaConfig};
use livros::bus::{Bus, BusError, Consumer, Message, Position, Record, StartFrom, next_offsets};

/// Generous: a Kafka group may take seconds to form. Only a failing test waits this long.
const WAIT: Duration = Duration::from_secs(30);

fn topic(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

/// A group name unique to this run: Kafka keeps groups between runs.
fn group(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

fn record(topic: &str, key: Option<&str>, payload: &[u8]) -> Record {
    Record {
        topic: topic.into(),
        key: key.map(str::to_string),
        headers: vec![("h".into(), "v".into())],
        payload: payload.to_vec(),
    }
}

/// Polls until `n` messages arrived (or fails after `WAIT`).
async fn take(consumer: &mut dyn Consumer, n: usize) -> Vec<Message> {
    let deadline = std::time::Instant::now() + WAIT;
    let mut got = Vec::new();
    while got.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "got {} of {n} messages",
            got.len()
        );
        got.extend(
            consumer
                .poll(n - got.len(), Duration::from_millis(200))
                .await
                .unwrap(),
        );
    }
    got
}

/// Polls for a while and returns whatever arrived.
async fn drain(consumer: &mut dyn Consumer) -> Vec<Message> {
    let mut got = Vec::new();
    for _ in 0..5 {
        got.extend(
            consumer
                .poll(1000, Duration::from_millis(100))
                .await
                .unwrap(),
        );
    }
    got
}

async fn publish_and_consume(bus: &dyn Bus) {
    let t = topic("orders");
    let g1 = group("g1");
    bus.ensure_topics(std::slice::from_ref(&t), 3)
        .await
        .unwrap();
    // Creating again is harmless.
    bus.ensure_topics(std::slice::from_ref(&t), 3)
        .await
        .unwrap();

    let records: Vec<Record> = (0..30)
        .map(|i| {
            record(
                &t,
                Some(&format!("key-{}", i % 5)),
                format!("m{i}").as_bytes(),
            )
        })
        .collect();
    let placed = bus.publish(&records).await.unwrap();
    assert_eq!(placed.len(), 30);

    // One key, one partition.
    let mut partition_of_key: HashMap<String, i32> = HashMap::new();
    for (i, (p, _)) in placed.iter().enumerate() {
        let key = format!("key-{}", i % 5);
        assert_eq!(*partition_of_key.entry(key).or_insert(*p), *p);
    }

    let mut consumer = bus
        .subscribe(&g1, std::slice::from_ref(&t), StartFrom::Earliest)
        .await
        .unwrap();
    let got = take(&mut *consumer, 30).await;
    // Each record is where its publish said it put it…
    let at: HashMap<&[u8], (i32, i64)> = got
        .iter()
        .map(|m| (m.payload.as_slice(), (m.partition, m.offset)))
        .collect();
    for (i, place) in placed.iter().enumerate() {
        assert_eq!(at.get(format!("m{i}").as_bytes()), Some(place), "m{i}");
    }
    // …everything arrives once, with key, headers and bytes intact…
    let mut payloads: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8(m.payload.clone()).unwrap())
        .collect();
    payloads.sort();
    let mut expected: Vec<String> = (0..30).map(|i| format!("m{i}")).collect();
    expected.sort();
    assert_eq!(payloads, expected);
    assert!(
        got.iter()
            .all(|m| m.header("h") == Some("v") && m.key.is_some() && m.topic == t)
    );
    // …and in publish order within each key.
    let mut last_index: HashMap<&str, i64> = HashMap::new();
    for m in &got {
        let i: i64 = std::str::from_utf8(&m.payload[1..])
            .unwrap()
            .parse()
            .unwrap();
        let key = m.key.as_deref().unwrap();
        assert!(
            last_index.get(key).is_none_or(|prev| *prev < i),
            "key {key} out of order"
        );
        last_index.insert(key, i);
    }
    consumer.commit(&next_offsets(&got)).await.unwrap();
    consumer.close().await.unwrap();

    let stats = bus
        .stats(std::slice::from_ref(&t), std::slice::from_ref(&g1))
        .await
        .unwrap();
    assert_eq!(stats[&t].published, 30);
    assert_eq!(stats[&t].consumed[&g1], 30);
    assert_eq!(bus.lag(&g1, std::slice::from_ref(&t)).await.unwrap(), 0);
    assert_eq!(
        bus.lag(&group("never-joined"), std::slice::from_ref(&t))
            .await
            .unwrap(),
        30
    );
}

async fn uncommitted_messages_are_redelivered(bus: &dyn Bus) {
    let t = topic("customers");
    let g = group("g");
    bus.ensure_topics(std::slice::from_ref(&t), 2)
        .await
        .unwrap();
    bus.publish(
        &(0..10)
            .map(|i| record(&t, Some(&format!("k{i}")), b"x"))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();

    let mut first = bus
        .subscribe(&g, std::slice::from_ref(&t), StartFrom::Earliest)
        .await
        .unwrap();
    let got = take(&mut *first, 10).await;
    // Commit only the first message of each partition, then "crash".
    let mut partial = BTreeMap::new();
    for m in &got {
        partial
            .entry((m.topic.clone(), m.partition))
            .or_insert(m.offset + 1);
    }
    let committed: i64 = partial.values().sum();
    first.commit(&partial).await.unwrap();
    first.close().await.unwrap();

    let mut second = bus
        .subscribe(&g, std::slice::from_ref(&t), StartFrom::Earliest)
        .await
        .unwrap();
    let again = take(&mut *second, 10 - committed as usize).await;
    assert_eq!(
        again.len() as i64,
        10 - committed,
        "exactly the uncommitted messages come back"
    );
    for m in &again {
        assert!(m.offset >= partial[&(m.topic.clone(), m.partition)]);
    }
    assert!(drain(&mut *second).await.is_empty());
    second.close().await.unwrap();
}

async fn groups_are_independent_and_start_where_asked(bus: &dyn Bus) {
    let t = topic("books");
    bus.ensure_topics(std::slice::from_ref(&t), 1)
        .await
        .unwrap();
    bus.publish(&[record(&t, None, b"old")]).await.unwrap();

    let mut a = bus
        .subscribe(&group("a"), std::slice::from_ref(&t), StartFrom::Earliest)
        .await
        .unwrap();
    let mut b = bus
        .subscribe(&group("b"), std::slice::from_ref(&t), StartFrom::Earliest)
        .await
        .unwrap();
    let mut latest = bus
        .subscribe(
            &group("latest"),
            std::slice::from_ref(&t),
            StartFrom::Latest,
        )
        .await
        .unwrap();
    assert_eq!(take(&mut *a, 1).await[0].payload, b"old");
    assert_eq!(take(&mut *b, 1).await[0].payload, b"old");
    // Binary, non-UTF-8 payloads and keyless records pass untouched. A Latest member
    // starts from the end as of joining its group, which on Kafka takes a moment: keep
    // publishing until it sees one. It must never see what came before.
    let binary = vec![0xff, 0x00, 0xfe];
    let mut seen = Vec::new();
    for _ in 0..30 {
        bus.publish(&[record(&t, None, &binary)]).await.unwrap();
        seen.extend(latest.poll(10, Duration::from_secs(1)).await.unwrap());
        if !seen.is_empty() {
            break;
        }
    }
    assert!(
        !seen.is_empty(),
        "the Latest member never received anything"
    );
    assert!(
        seen.iter().all(|m| m.payload == binary),
        "Latest skips what was there before"
    );
    let m = take(&mut *a, 1).await.remove(0);
    assert_eq!(m.payload, binary);
    assert_eq!(m.key, None);

    // Seeking rewinds one consumer's position.
    a.seek(&t, 0, 0).await.unwrap();
    let replay = take(&mut *a, 2).await;
    assert_eq!(replay[0].payload, b"old");
    for c in [&mut a, &mut b, &mut latest] {
        c.close().await.unwrap();
    }
}

async fn unknown_topics_are_errors(bus: &dyn Bus) {
    let t = topic("missing");
    let published = bus.publish(&[record(&t, None, b"x")]).await;
    assert!(
        matches!(published, Err(BusError::UnknownTopic(_))),
        "{published:?}"
    );
    let subscribed = bus
        .subscribe(&group("g"), std::slice::from_ref(&t), StartFrom::Earliest)
        .await;
    assert!(matches!(subscribed, Err(BusError::UnknownTopic(_))));
}

/// Each partition's end and a group's commit on it, as S2 reads them to learn whether a
/// group has stored everything published until some moment.
async fn positions_are_per_partition(bus: &dyn Bus) {
    let t = topic("positions");
    let g = group("g");
    bus.ensure_topics(std::slice::from_ref(&t), 2)
        .await
        .unwrap();
    let empty = bus.positions(&g, std::slice::from_ref(&t)).await.unwrap();
    assert_eq!(
        empty,
        (0..2)
            .map(|p| ((t.clone(), p), Position::default()))
            .collect(),
        "both partitions, empty and never committed"
    );

    let placed = bus
        .publish(&[
            record(&t, Some("a"), b"1"),
            record(&t, Some("a"), b"2"),
            record(&t, Some("a"), b"3"),
        ])
        .await
        .unwrap();
    let used = placed[0].0;
    let mut consumer = bus
        .subscribe(&g, std::slice::from_ref(&t), StartFrom::Earliest)
        .await
        .unwrap();
    let got = take(&mut *consumer, 3).await;
    // Two of the three stored.
    consumer.commit(&next_offsets(&got[..2])).await.unwrap();
    consumer.close().await.unwrap();
    let now = bus.positions(&g, std::slice::from_ref(&t)).await.unwrap();
    assert_eq!(
        now[&(t.clone(), used)],
        Position {
            end: 3,
            committed: 2
        }
    );
    assert_eq!(now[&(t.clone(), 1 - used)], Position::default());
    // Another group has committed nothing; an unknown topic has no partitions.
    let other = bus
        .positions(&group("never-joined"), &[t.clone(), topic("no-such-topic")])
        .await
        .unwrap();
    assert_eq!(other.len(), 2);
    assert_eq!(
        other[&(t.clone(), used)],
        Position {
            end: 3,
            committed: 0
        }
    );
}

async fn suite(bus: &dyn Bus) {
    publish_and_consume(bus).await;
    positions_are_per_partition(bus).await;
    uncommitted_messages_are_redelivered(bus).await;
    groups_are_independent_and_start_where_asked(bus).await;
    unknown_topics_are_errors(bus).await;
}

#[tokio::test]
async fn embedded() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path()).await.unwrap();
    suite(&bus).await;
}

#[tokio::test]
async fn kafka() {
    let Some(brokers) = service_url("LIVROS_TEST_KAFKA_BROKERS") else {
        return;
    };
    let bus = KafkaBus::connect(KafkaConfig {
        brokers,
        replication: 1,
    })
    .await
    .unwrap();
    suite(&bus).await;
}

#[tokio::test]
async fn embedded_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let t = topic("durable");
    {
        let bus = EmbeddedBus::open(dir.path()).await.unwrap();
        bus.ensure_topics(std::slice::from_ref(&t), 3)
            .await
            .unwrap();
        bus.publish(
            &(0..5)
                .map(|i| record(&t, Some(&i.to_string()), b"x"))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
        let mut c = bus
            .subscribe("g", std::slice::from_ref(&t), StartFrom::Earliest)
            .await
            .unwrap();
        let got = take(&mut *c, 2).await;
        c.commit(&next_offsets(&got)).await.unwrap();
        // No close: like a process that died. Its lease is this process's, though, so a
        // member in another process waits for it; here the same bus reopens below.
        c.close().await.unwrap();
    }
    let bus = EmbeddedBus::open(dir.path()).await.unwrap();
    let stats = bus
        .stats(std::slice::from_ref(&t), &["g".to_string()])
        .await
        .unwrap();
    assert_eq!(stats[&t].published, 5);
    assert!(stats[&t].consumed["g"] >= 2);
    // Offsets continue after the old ones.
    let placed = bus.publish(&[record(&t, Some("0"), b"y")]).await.unwrap();
    assert!(placed[0].1 >= 1);
}

/// Embedded groups have one active member per topic: a second member waits, then takes
/// over when the first leaves, starting from the committed offsets.
#[tokio::test]
async fn embedded_second_member_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path()).await.unwrap();
    let t = topic("lease");
    bus.ensure_topics(std::slice::from_ref(&t), 2)
        .await
        .unwrap();
    bus.publish(
        &(0..6)
            .map(|i| record(&t, Some(&i.to_string()), b"x"))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();

    let mut first = bus
        .subscribe("g", std::slice::from_ref(&t), StartFrom::Earliest)
        .await
        .unwrap();
    let got = take(&mut *first, 6).await;
    let mut second = bus
        .subscribe("g", std::slice::from_ref(&t), StartFrom::Earliest)
        .await
        .unwrap();
    assert!(
        drain(&mut *second).await.is_empty(),
        "the topic is the first member's"
    );
    // The second member cannot commit what it does not own.
    let stolen = second.commit(&next_offsets(&got)).await;
    assert!(matches!(stolen, Err(BusError::Fenced(_))), "{stolen:?}");

    let committed = next_offsets(&got[..3]);
    first.commit(&committed).await.unwrap();
    first.close().await.unwrap();
    let remaining = 6 - committed.values().sum::<i64>() as usize;
    let rest = take(&mut *second, remaining).await;
    assert!(
        drain(&mut *second).await.is_empty(),
        "only the uncommitted messages come back"
    );
    assert!(rest.iter().all(|m| {
        m.offset
            >= committed
                .get(&(m.topic.clone(), m.partition))
                .copied()
                .unwrap_or(0)
    }));
    second.close().await.unwrap();
}
