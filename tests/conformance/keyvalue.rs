//! The key-value store suite: the embedded store and Redis.

use std::collections::BTreeMap;

use livros::store::kv_sqlite::SqliteKvStore;
use livros::store::redis::RedisStore;
use livros::store::{KeyValueStore, KvWrite};

use crate::common::{redis_cleanup, redis_prefix, service_url};

fn hset(key: &str, fields: &[(&str, &str)]) -> KvWrite {
    KvWrite::HSet {
        key: key.into(),
        fields: fields
            .iter()
            .map(|(f, v)| (f.to_string(), v.to_string()))
            .collect(),
    }
}

fn sadd(key: &str, members: &[&str]) -> KvWrite {
    KvWrite::SAdd {
        key: key.into(),
        members: members.iter().map(|m| m.to_string()).collect(),
    }
}

fn set(key: &str, value: &str, ttl: Option<std::time::Duration>) -> KvWrite {
    KvWrite::Set {
        key: key.into(),
        value: value.into(),
        ttl,
    }
}

/// Strings, overwritten, and gone after their time to live.
async fn strings(store: &dyn KeyValueStore) {
    use std::time::Duration;
    assert_eq!(store.get("status:none").await.unwrap(), None);
    store
        .write(&[
            set("status:a", "pending", Some(Duration::from_secs(60))),
            set("status:forever", "kept", None),
            set(
                "status:short",
                "soon gone",
                // Long enough to outlive the checks below on a loaded CI machine.
                Some(Duration::from_millis(1500)),
            ),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.get("status:a").await.unwrap().as_deref(),
        Some("pending")
    );
    store
        .write(&[set(
            "status:a",
            "{\"status\":\"success\"}",
            Some(Duration::from_secs(60)),
        )])
        .await
        .unwrap();
    assert_eq!(
        store.get("status:a").await.unwrap().as_deref(),
        Some("{\"status\":\"success\"}")
    );
    assert_eq!(
        store.get("status:short").await.unwrap().as_deref(),
        Some("soon gone")
    );
    assert_eq!(store.count_prefix("status:").await.unwrap(), 3);
    tokio::time::sleep(Duration::from_millis(1900)).await;
    assert_eq!(store.get("status:short").await.unwrap(), None, "expired");
    assert_eq!(
        store.get("status:forever").await.unwrap().as_deref(),
        Some("kept")
    );
    assert_eq!(store.count_prefix("status:").await.unwrap(), 2);
    let keys = vec!["status:a".to_string(), "status:short".to_string()];
    assert_eq!(store.existing(&keys).await.unwrap().len(), 1);
}

/// `SET … NX`: written when the key holds nothing (or only something expired), never over
/// a value, nor over a key of another kind; in order with the writes around it.
async fn strings_if_absent(store: &dyn KeyValueStore) {
    use std::time::Duration;
    let if_absent = |key: &str, value: &str, ttl: Option<Duration>| KvWrite::SetIfAbsent {
        key: key.into(),
        value: value.into(),
        ttl,
    };
    store
        .write(&[
            set("nx:replied", "{\"status\":\"success\"}", None),
            set("nx:stale", "old", Some(Duration::from_millis(300))),
            hset("nx:hash", &[("f", "v")]),
        ])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    store
        .write(&[
            if_absent("nx:replied", "pending", Some(Duration::from_secs(60))),
            if_absent("nx:new", "pending", Some(Duration::from_secs(60))),
            if_absent("nx:stale", "fresh", None),
            if_absent("nx:hash", "string", None),
            // Later writes of the same batch see it.
            if_absent("nx:new", "second", None),
            set("nx:then", "after", None),
        ])
        .await
        .unwrap();
    let get = |key: &'static str| async move { store.get(key).await.unwrap() };
    assert_eq!(
        get("nx:replied").await.as_deref(),
        Some("{\"status\":\"success\"}"),
        "a value is never overwritten"
    );
    assert_eq!(get("nx:new").await.as_deref(), Some("pending"));
    assert_eq!(
        get("nx:stale").await.as_deref(),
        Some("fresh"),
        "expired is absent"
    );
    assert_eq!(get("nx:then").await.as_deref(), Some("after"));
    // Redis answers a GET of a hash's key with WRONGTYPE; either way no string was set.
    assert!(
        !matches!(store.get("nx:hash").await, Ok(Some(_))),
        "a hash's key is not absent"
    );
    assert_eq!(
        store
            .hgetall("nx:hash")
            .await
            .unwrap()
            .get("f")
            .map(String::as_str),
        Some("v")
    );
}

/// Counters, sorted sets (leaderboards), expiry of any key, deletion, and a batch
/// applied in order.
async fn counters_rankings_and_expiry(store: &dyn KeyValueStore) {
    use std::time::Duration;
    let k = |s: &str| s.to_string();
    // HINCRBY starts from 0, adds, subtracts, and leaves the other fields.
    store
        .write(&[
            hset("stats:1", &[("title", "Central do Brasil")]),
            KvWrite::HIncrBy {
                key: k("stats:1"),
                field: k("sum"),
                by: 5,
            },
            KvWrite::HIncrBy {
                key: k("stats:1"),
                field: k("sum"),
                by: -2,
            },
            KvWrite::HIncrBy {
                key: k("stats:1"),
                field: k("count"),
                by: 1,
            },
        ])
        .await
        .unwrap();
    let stats = store.hgetall("stats:1").await.unwrap();
    assert_eq!((stats["sum"].as_str(), stats["count"].as_str()), ("3", "1"));
    assert_eq!(stats["title"], "Central do Brasil");
    assert_eq!(
        store
            .hget_many(&[
                (k("stats:1"), k("sum")),
                (k("stats:1"), k("nope")),
                (k("none"), k("sum"))
            ])
            .await
            .unwrap(),
        [Some(k("3")), None, None]
    );

    // Sorted sets: highest first, ties by member, ZADD replaces, GT only raises.
    assert!(store.ztop("rank", 10).await.unwrap().is_empty());
    store
        .write(&[KvWrite::ZAdd {
            key: k("rank"),
            members: vec![(k("a"), 3.0), (k("b"), 5.5), (k("c"), 3.0), (k("d"), 1.0)],
        }])
        .await
        .unwrap();
    assert_eq!(
        store.ztop("rank", 3).await.unwrap(),
        [(k("b"), 5.5), (k("c"), 3.0), (k("a"), 3.0)]
    );
    store
        .write(&[
            KvWrite::ZRaise {
                key: k("rank"),
                member: k("b"),
                score: 2.0,
            },
            KvWrite::ZRaise {
                key: k("rank"),
                member: k("a"),
                score: 9.0,
            },
            KvWrite::ZRaise {
                key: k("rank"),
                member: k("e"),
                score: 0.5,
            },
            KvWrite::ZAdd {
                key: k("rank"),
                members: vec![(k("c"), 0.0)],
            },
            KvWrite::ZRem {
                key: k("rank"),
                members: vec![k("d"), k("absent")],
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        store.ztop("rank", 10).await.unwrap(),
        [(k("a"), 9.0), (k("b"), 5.5), (k("e"), 0.5), (k("c"), 0.0)]
    );
    store
        .write(&[KvWrite::ZRemUpTo {
            key: k("rank"),
            max: 0.5,
        }])
        .await
        .unwrap();
    assert_eq!(store.ztop("rank", 10).await.unwrap().len(), 2);

    // SCARD of several sets at once.
    store
        .write(&[sadd("viewers:1", &["u1", "u2", "u1"])])
        .await
        .unwrap();
    assert_eq!(
        store
            .scard_many(&[k("viewers:1"), k("viewers:none")])
            .await
            .unwrap(),
        [2, 0]
    );

    // Expiry of a hash, a set and a sorted set; writing keeps it; DEL removes at once;
    // a batch applies in order (DEL then HSET leaves the new hash).
    store
        .write(&[
            hset("session:1", &[("user", "7")]),
            KvWrite::Expire {
                key: k("session:1"),
                ttl: Duration::from_millis(1500),
            },
            KvWrite::Expire {
                key: k("viewers:1"),
                ttl: Duration::from_millis(1500),
            },
            KvWrite::Expire {
                key: k("rank"),
                ttl: Duration::from_millis(1500),
            },
            KvWrite::Expire {
                key: k("never:written"),
                ttl: Duration::from_millis(1500),
            },
            hset("session:1", &[("seen", "now")]),
            hset("session:2", &[("user", "8")]),
            KvWrite::Expire {
                key: k("session:2"),
                ttl: Duration::from_secs(60),
            },
            KvWrite::Del { key: k("stats:1") },
            hset("redo", &[("old", "1")]),
            KvWrite::Del { key: k("redo") },
            hset("redo", &[("new", "1")]),
        ])
        .await
        .unwrap();
    assert_eq!(store.hgetall("session:1").await.unwrap().len(), 2);
    assert!(store.hgetall("stats:1").await.unwrap().is_empty());
    assert_eq!(
        store
            .hgetall("redo")
            .await
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["new"]
    );
    // The checks above must come before the expiry, even on a loaded CI machine.
    tokio::time::sleep(Duration::from_millis(1900)).await;
    assert!(
        store.hgetall("session:1").await.unwrap().is_empty(),
        "expired"
    );
    assert_eq!(
        store
            .hget_many(&[(k("session:1"), k("user"))])
            .await
            .unwrap(),
        [None]
    );
    assert!(store.smembers("viewers:1").await.unwrap().is_empty());
    assert_eq!(store.scard_many(&[k("viewers:1")]).await.unwrap(), [0]);
    assert!(store.ztop("rank", 10).await.unwrap().is_empty());
    assert_eq!(
        store
            .existing(&[k("session:1"), k("session:2"), k("never:written")])
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.count_prefix("session:").await.unwrap(), 1);
    // An expired key written again starts afresh, with no expiry.
    store.write(&[sadd("viewers:1", &["u3"])]).await.unwrap();
    assert_eq!(store.scard_many(&[k("viewers:1")]).await.unwrap(), [1]);
    store
        .write(&[KvWrite::Del {
            key: k("never:written"),
        }])
        .await
        .unwrap();
}

async fn suite(store: &dyn KeyValueStore) {
    counters_rankings_and_expiry(store).await;
    strings(store).await;
    strings_if_absent(store).await;
    store.ping().await.unwrap();
    assert!(store.hgetall("order:none").await.unwrap().is_empty());
    assert!(
        store
            .smembers("customer:none:orders")
            .await
            .unwrap()
            .is_empty()
    );

    store
        .write(&[
            hset("order:1", &[("id", "1"), ("quantity", "2")]),
            sadd("customer:c:orders", &["1"]),
        ])
        .await
        .unwrap();
    let expected: BTreeMap<String, String> =
        [("id".into(), "1".into()), ("quantity".into(), "2".into())].into();
    assert_eq!(store.hgetall("order:1").await.unwrap(), expected);

    // HSET merges fields; SADD is idempotent.
    store
        .write(&[
            hset("order:1", &[("quantity", "3"), ("book_id", "b")]),
            sadd("customer:c:orders", &["1", "2"]),
            sadd("customer:c:orders", &["2"]),
        ])
        .await
        .unwrap();
    let order = store.hgetall("order:1").await.unwrap();
    assert_eq!(order.len(), 3);
    assert_eq!(order["quantity"], "3");
    let keys = ["order:none".to_string(), "order:1".to_string()];
    assert_eq!(
        store.hgetall_many(&keys).await.unwrap(),
        [BTreeMap::new(), order.clone()]
    );
    assert!(store.hgetall_many(&[]).await.unwrap().is_empty());
    let members: Vec<String> = store
        .smembers("customer:c:orders")
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(members, ["1", "2"]);

    let found = store
        .existing(&[
            "order:1".into(),
            "customer:c:orders".into(),
            "order:404".into(),
        ])
        .await
        .unwrap();
    assert_eq!(found.len(), 2);

    // Prefix counts see hashes and sets, and only keys under the prefix.
    let writes: Vec<KvWrite> = (0..3_000)
        .map(|i| hset(&format!("order:bulk{i}"), &[("id", "x")]))
        .collect();
    store.write(&writes).await.unwrap();
    assert_eq!(store.count_prefix("order:").await.unwrap(), 3_001);
    assert_eq!(store.count_prefix("customer:").await.unwrap(), 1);
    assert_eq!(store.count_prefix("order:bulk1").await.unwrap(), 1_111);
    // Glob characters in a prefix match only themselves.
    store.write(&[hset("we*rd", &[("a", "b")])]).await.unwrap();
    assert_eq!(store.count_prefix("we*").await.unwrap(), 1);
    assert_eq!(store.count_prefix("w").await.unwrap(), 1);
}

#[tokio::test]
async fn embedded() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteKvStore::open(&dir.path().join("keyvalue.db"))
        .await
        .unwrap();
    suite(&store).await;
}

#[tokio::test]
async fn redis() {
    let Some(url) = service_url("LIVROS_TEST_REDIS_URL") else {
        return;
    };
    let prefix = redis_prefix();
    let store = RedisStore::connect(&url, &prefix).await.unwrap();
    suite(&store).await;
    redis_cleanup(&url, &prefix).await;
}

#[tokio::test]
async fn redis_unreachable_is_a_clear_error() {
    let error = RedisStore::connect("redis://:secret@127.0.0.1:1", "")
        .await
        .err()
        .expect("nothing listens on port 1");
    let text = error.to_string();
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(!text.contains("secret"), "{text}");
    assert!(text.contains("--redis-url"), "{text}");
}
