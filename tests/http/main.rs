//! S2's HTTP API over a real socket (port 0), against the embedded and the real stores:
//! the seed's wire contract, reads and listings, every bad-input case, the bearer token,
//! a store going away (503), S1's client mode and its `s1_log.json`, and schemathesis
//! against `/openapi.json`.

#[path = "../common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use livros::api::{ApiConfig, RETRY_AFTER_SECS};
use livros::store::{StoreConfig, Stores};
use livros::systems::bookstore::customers::Customers;
use livros::systems::bookstore::routing::{BOOKS_COLLECTION, Router};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use common::{RealStores, eventually, finished, free_port, service_url, spawn_redis};

/// The `embedded` and `real_stores` tests of one scenario over [`Stores`]; the real one
/// is skipped when the services' URLs are unset outside CI.
macro_rules! on_every_engine {
    ($scenario:ident, $embedded:ident, $real:ident) => {
        #[tokio::test]
        async fn $embedded() {
            let dir = tempfile::tempdir().unwrap();
            $scenario(embedded_stores(dir.path()).await).await;
        }

        #[tokio::test]
        async fn $real() {
            let Some(real) = RealStores::create().await else {
                return;
            };
            let dir = tempfile::tempdir().unwrap();
            $scenario(
                livros::systems::open_stores(dir.path(), &real.config)
                    .await
                    .unwrap(),
            )
            .await;
            real.cleanup().await;
        }
    };
}

/// The API on a free port over `stores`; stops when the returned token is cancelled.
async fn serve(stores: Stores, config: ApiConfig) -> (String, CancellationToken) {
    let listener = livros::api::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let app = livros::systems::bookstore::http::app(Router::new(stores), config);
    tokio::spawn(livros::api::serve(listener, app, shutdown.clone()));
    (base, shutdown)
}

/// A POST of raw bytes with a content type; returns the status and the JSON body.
async fn post_raw(url: &str, content_type: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    answer(response).await
}

async fn post(url: &str, body: Value) -> (StatusCode, Value) {
    post_raw(url, "application/json", serde_json::to_vec(&body).unwrap()).await
}

async fn get(url: &str) -> (StatusCode, Value) {
    answer(reqwest::get(url).await.unwrap()).await
}

/// Every answer is JSON, errors included.
async fn answer(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(content_type, "application/json", "status {status}");
    (status, response.json().await.unwrap())
}

fn customer(id: &str, email: &str) -> Value {
    json!({"id": id, "name": format!("Cliente {id}"), "email": email})
}

fn book(id: &str, isbn: &str, author: &str) -> Value {
    json!({"id": id, "isbn": isbn, "title": format!("Livro {id}"), "authors": [author],
           "publishedDate": "1899", "publisher": "Garnier", "pageCount": 256})
}

fn order(id: &str, customer_id: &str, book_id: &str) -> Value {
    json!({"id": id, "customer_id": customer_id, "book_id": book_id, "quantity": 2,
           "timestamp": "2024-05-01T10:00:00"})
}

/// The seed's contract, reads, listings and idempotency, on `stores`.
async fn round_trip(stores: Stores) {
    let (base, shutdown) = serve(stores.clone(), ApiConfig::default()).await;

    // The seed's bodies and answers.
    let (status, body) = post(
        &format!("{base}/customers"),
        customer("c1", "ana@example.com"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["status"], "success");
    assert_eq!(body["id"], "c1");
    assert!(body["message"].as_str().unwrap().contains("stored"));
    for (id, email) in [("c2", "bia@example.com"), ("c3", "ana@example.com")] {
        let (status, _) = post(&format!("{base}/customers"), customer(id, email)).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    // A numeric id, as some seeds send, is kept as text.
    let (status, body) = post(
        &format!("{base}/customers"),
        json!({"id": 42, "name": "Num", "email": "num@example.com"}),
    )
    .await;
    assert_eq!(
        (status, body["id"].clone()),
        (StatusCode::CREATED, json!("42"))
    );
    for (id, isbn, author) in [
        ("b1", "9788535902771", "Machado de Assis"),
        ("b2", "978-85-7232-144-9", "Clarice Lispector"),
        ("b3", "9780306406157", "Machado de Assis"),
    ] {
        let (status, body) = post(&format!("{base}/books"), book(id, isbn, author)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    for (id, c, b) in [("o1", "c1", "b1"), ("o2", "c1", "b2"), ("o3", "c2", "b1")] {
        let (status, body) = post(&format!("{base}/orders"), order(id, c, b)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    // Posting the same id twice stores it once; the second write updates it.
    let (status, _) = post(
        &format!("{base}/customers"),
        customer("c1", "ana.maria@example.com"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = post(&format!("{base}/orders"), order("o1", "c1", "b1")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(stores.relational.count_customers().await.unwrap(), 4);
    assert_eq!(stores.document.count(BOOKS_COLLECTION).await.unwrap(), 3);
    assert_eq!(stores.key_value.count_prefix("order:").await.unwrap(), 3);

    // Reads by id, from the store the routing table names.
    let (status, c1) = get(&format!("{base}/customers/c1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        c1,
        json!({"id": "c1", "name": "Cliente c1", "email": "ana.maria@example.com"})
    );
    let (_, b2) = get(&format!("{base}/books/b2")).await;
    assert_eq!(b2["isbn"], "9788572321449");
    assert_eq!(b2["pageCount"], 256, "unknown fields are kept: {b2}");
    let (_, o3) = get(&format!("{base}/orders/o3")).await;
    assert_eq!(o3["customer_id"], "c2");
    assert_eq!(o3["quantity"], 2);
    for path in ["customers/nobody", "books/nobody", "orders/nobody"] {
        let (status, body) = get(&format!("{base}/{path}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["status"], "error");
        assert!(body["message"].as_str().unwrap().contains("nobody"));
    }

    // Listings: filters and paging, ordered by id.
    let ids = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, by_email) = get(&format!("{base}/customers?email=ana@example.com")).await;
    assert_eq!(ids(&by_email), ["c3"]);
    let (_, first) = get(&format!("{base}/customers?per_page=2")).await;
    assert_eq!(
        (ids(&first), first["has_more"].clone()),
        (vec!["42".to_string(), "c1".into()], json!(true))
    );
    let (_, last) = get(&format!("{base}/customers?per_page=2&page=2")).await;
    assert_eq!(
        (ids(&last), last["has_more"].clone()),
        (vec!["c2".to_string(), "c3".into()], json!(false))
    );
    let (_, machado) = get(&format!("{base}/books?author=Machado%20de%20Assis")).await;
    assert_eq!(ids(&machado), ["b1", "b3"]);
    let (_, by_isbn) = get(&format!("{base}/books?isbn=978-0-306-40615-7")).await;
    assert_eq!(ids(&by_isbn), ["b3"]);
    let (_, both) = get(&format!(
        "{base}/books?author=Machado%20de%20Assis&isbn=9788535902771"
    ))
    .await;
    assert_eq!(ids(&both), ["b1"]);
    let (_, by_title) = get(&format!("{base}/books?title=livro%20B2")).await;
    assert_eq!(ids(&by_title), ["b2"]);
    let (_, orders) = get(&format!("{base}/customers/c1/orders")).await;
    assert_eq!(ids(&orders), ["o1", "o2"]);
    let (_, page2) = get(&format!("{base}/customers/c1/orders?per_page=1&page=2")).await;
    assert_eq!(ids(&page2), ["o2"]);
    let (status, _) = get(&format!("{base}/customers/nobody/orders")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The OpenAPI document and the docs UI, its assets served by the binary.
    let (status, doc) = get(&format!("{base}/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with('3'));
    assert!(doc["paths"]["/customers/{id}/orders"]["get"].is_object());
    for asset in [
        "/docs/",
        "/docs/swagger-ui-bundle.js",
        "/docs/swagger-initializer.js",
    ] {
        let response = reqwest::get(format!("{base}{asset}")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        let text = response.text().await.unwrap();
        assert!(!text.contains("://cdn"), "{asset} loads nothing from a CDN");
        if asset.ends_with("initializer.js") {
            assert!(
                text.contains("/openapi.json"),
                "the UI shows our document: {text}"
            );
        }
    }

    // Operations.
    let (status, health) = get(&format!("{base}/health")).await;
    assert_eq!(
        (status, health["status"].clone()),
        (StatusCode::OK, json!("ok"))
    );
    let (status, ready) = get(&format!("{base}/ready")).await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["stores"]["key-value"], "ok");
    shutdown.cancel();
}

/// Every client mistake gets a 4xx with a JSON reason, and nothing is stored.
async fn bad_input(stores: Stores) {
    let config = ApiConfig {
        body_limit: 16 * 1024,
        ..ApiConfig::default()
    };
    let (base, shutdown) = serve(stores.clone(), config).await;
    let (status, _) = post(
        &format!("{base}/customers"),
        customer("c1", "c1@example.com"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = post(&format!("{base}/books"), book("b1", "9788535902771", "A")).await;
    assert_eq!(status, StatusCode::CREATED);

    let json_ct = "application/json";
    // (endpoint, content type, body, expected status, the field the error names)
    type Case = (
        &'static str,
        &'static str,
        Vec<u8>,
        StatusCode,
        Option<&'static str>,
    );
    let cases: Vec<Case> = vec![
        ("customers", json_ct, b"{\"id\": ".to_vec(), StatusCode::BAD_REQUEST, None),
        ("customers", json_ct, b"".to_vec(), StatusCode::BAD_REQUEST, None),
        ("books", json_ct, b"[1, 2]".to_vec(), StatusCode::BAD_REQUEST, None),
        ("customers", json_ct, br#"{"id":"c9","email":"x@example.com"}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY, Some("name")),
        ("customers", json_ct, br#"{"id":"c9","name":"X","email":"nope"}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY, Some("email")),
        ("customers", json_ct, br#"{"id":true,"name":"X","email":"x@example.com"}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY, Some("id")),
        ("books", json_ct, br#"{"id":"b9","title":"T","isbn":"12"}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY, Some("isbn")),
        ("books", json_ct, br#"{"id":"b9","title":"T","authors":"Machado"}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY, Some("authors")),
        ("orders", json_ct, serde_json::to_vec(&json!({"id":"o9","customer_id":"c1","book_id":"b1","quantity":"two","timestamp":"2024-05-01T10:00:00Z"})).unwrap(), StatusCode::UNPROCESSABLE_ENTITY, Some("quantity")),
        ("orders", json_ct, serde_json::to_vec(&json!({"id":"o9","customer_id":"c1","book_id":"b1","quantity":0,"timestamp":"2024-05-01T10:00:00Z"})).unwrap(), StatusCode::UNPROCESSABLE_ENTITY, Some("quantity")),
        ("orders", json_ct, serde_json::to_vec(&order("o9", "ghost", "b1")).unwrap(), StatusCode::UNPROCESSABLE_ENTITY, Some("customer_id")),
        ("orders", json_ct, serde_json::to_vec(&order("o9", "c1", "ghost")).unwrap(), StatusCode::UNPROCESSABLE_ENTITY, Some("book_id")),
        ("customers", "text/plain", serde_json::to_vec(&customer("c9", "x@example.com")).unwrap(), StatusCode::UNSUPPORTED_MEDIA_TYPE, None),
        ("customers", "application/x-www-form-urlencoded", b"id=c9".to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE, None),
        ("customers", json_ct, serde_json::to_vec(&json!({"id":"c9","name":"x".repeat(20_000),"email":"x@example.com"})).unwrap(), StatusCode::PAYLOAD_TOO_LARGE, None),
    ];
    for (path, content_type, body, expected, field) in cases {
        let shown = String::from_utf8_lossy(&body)
            .chars()
            .take(80)
            .collect::<String>();
        let (status, answer) = post_raw(&format!("{base}/{path}"), content_type, body).await;
        assert_eq!(status, expected, "POST /{path} {shown}: {answer}");
        assert_eq!(answer["status"], "error", "{answer}");
        assert!(!answer["message"].as_str().unwrap().is_empty());
        if let Some(field) = field {
            assert_eq!(answer["errors"][0]["field"], field, "{answer}");
            assert!(!answer["errors"][0]["problem"].as_str().unwrap().is_empty());
        }
    }
    // A body with no content type at all.
    let response = reqwest::Client::new()
        .post(format!("{base}/customers"))
        .body(serde_json::to_vec(&customer("c9", "x@example.com")).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Bad paging, unknown endpoints and methods: JSON errors too.
    for (url, expected) in [
        (format!("{base}/customers?page=0"), StatusCode::BAD_REQUEST),
        (
            format!("{base}/customers?per_page=1000"),
            StatusCode::BAD_REQUEST,
        ),
        (format!("{base}/books?page=abc"), StatusCode::BAD_REQUEST),
        (
            format!("{base}/customers?email=a%00b"),
            StatusCode::BAD_REQUEST,
        ),
        (format!("{base}/books?title=a%01b"), StatusCode::BAD_REQUEST),
        (format!("{base}/nowhere"), StatusCode::NOT_FOUND),
    ] {
        let (status, body) = get(&url).await;
        assert_eq!(status, expected, "{url}: {body}");
    }
    let response = reqwest::Client::new()
        .delete(format!("{base}/customers/c1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);

    // Nothing of the above was stored.
    assert_eq!(stores.relational.count_customers().await.unwrap(), 1);
    assert_eq!(stores.document.count(BOOKS_COLLECTION).await.unwrap(), 1);
    assert_eq!(stores.key_value.count_prefix("order:").await.unwrap(), 0);
    shutdown.cancel();
}

/// A fixture of `tests/fixtures/seed`: what the original programs send.
fn seed_fixture(name: &str) -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/seed/{name}.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// The original client's own bodies, unchanged, and every form of timestamp it or a
/// person might send: all stored, all read back in the one canonical form.
async fn the_originals_bodies_are_accepted(stores: Stores) {
    let (base, shutdown) = serve(stores, ApiConfig::default()).await;
    let (status, home) = get(&format!("{base}/")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(home["message"], "Serviço S2 está no ar!");

    let (customer, book, order) = (
        seed_fixture("customer"),
        seed_fixture("book"),
        seed_fixture("order"),
    );
    for (path, body) in [
        ("customers", &customer),
        ("books", &book),
        ("orders", &order),
    ] {
        let (status, answer) = post(&format!("{base}/{path}"), body.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "{path}: {answer}");
    }
    let (status, stored) = get(&format!("{base}/orders/{}", order["id"].as_str().unwrap())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        stored["timestamp"], "2026-11-23T16:06:29.113600Z",
        "{stored}"
    );
    assert_eq!(stored["quantity"], 3);

    // One instant, sent five ways (and a quantity as text): the same stored text.
    let forms = [
        ("o-float", json!(1795449989.1135995)),
        ("o-float-text", json!("1795449989.1135995")),
        ("o-rfc3339", json!("2026-11-23T16:06:29.1136Z")),
        ("o-offset", json!("2026-11-23T13:06:29.113600-03:00")),
        ("o-naive", json!("2026-11-23 16:06:29.113600")),
    ];
    for (id, timestamp) in &forms {
        let body = json!({"id": id, "customer_id": customer["id"], "book_id": book["id"],
                          "quantity": "2", "timestamp": timestamp});
        let (status, answer) = post(&format!("{base}/orders"), body).await;
        assert_eq!(status, StatusCode::CREATED, "{timestamp}: {answer}");
        let (_, stored) = get(&format!("{base}/orders/{id}")).await;
        assert_eq!(
            (stored["timestamp"].clone(), stored["quantity"].clone()),
            (json!("2026-11-23T16:06:29.113600Z"), json!(2)),
            "{timestamp}"
        );
    }
    let body = json!({"id": "o-int", "customer_id": customer["id"], "book_id": book["id"],
                      "quantity": 1, "timestamp": 1795449989});
    assert_eq!(
        post(&format!("{base}/orders"), body).await.0,
        StatusCode::CREATED
    );
    let (_, stored) = get(&format!("{base}/orders/o-int")).await;
    assert_eq!(stored["timestamp"], "2026-11-23T16:06:29.000000Z");

    // Refused with the reason and the range: milliseconds, negative, absurd.
    for (timestamp, says) in [
        (json!(1795449989113_i64), "milliseconds"),
        (json!(-5), "negative"),
        (json!(9.9e9), "2200-01-01"),
        (json!("2301-01-01T00:00:00Z"), "2200-01-01"),
    ] {
        let body = json!({"id": "o-refused", "customer_id": customer["id"], "book_id": book["id"],
                          "quantity": 1, "timestamp": timestamp});
        let (status, answer) = post(&format!("{base}/orders"), body).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{timestamp}: {answer}"
        );
        assert_eq!(answer["errors"][0]["field"], "timestamp");
        let problem = answer["errors"][0]["problem"].as_str().unwrap();
        assert!(problem.contains(says), "{timestamp}: {problem}");
    }
    let (status, _) = get(&format!("{base}/orders/o-refused")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The OpenAPI document says both forms are accepted.
    let (_, doc) = get(&format!("{base}/openapi.json")).await;
    let forms: Vec<&str> =
        doc["components"]["schemas"]["Order"]["properties"]["timestamp"]["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["type"].as_str().unwrap())
            .collect();
    assert_eq!(forms, ["string", "number"]);
    shutdown.cancel();
}

on_every_engine!(
    the_originals_bodies_are_accepted,
    the_originals_bodies_are_accepted_embedded,
    the_originals_bodies_are_accepted_real_stores
);

/// Stores as the original bookstore servers left them, built with their own DDL and
/// documents: PostgreSQL's `customers (id TEXT PRIMARY KEY, name TEXT, email TEXT)`,
/// MongoDB books with ObjectId `_id` and the id in `id` (one of them inserted twice, as
/// the original did on a re-sent message), Redis hashes `order:<id>` of strings with no
/// `id`. Ours, started over them, reads and writes them in place.
#[tokio::test]
async fn an_originals_databases_are_read_and_written_in_place() {
    let Some(real) = RealStores::create().await else {
        return;
    };
    let config = &real.config;
    let pg = sqlx::PgPool::connect(config.postgres_url.as_deref().unwrap())
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE customers (id TEXT PRIMARY KEY, name TEXT, email TEXT);
         INSERT INTO customers (id, name, email) VALUES
           ('c-old', 'Old Customer', 'old@example.com'), ('c-null', NULL, NULL);",
    )
    .execute(&pg)
    .await
    .unwrap();
    pg.close().await;
    let mongo = mongodb::Client::with_uri_str(config.mongodb_url.as_deref().unwrap())
        .await
        .unwrap();
    let books = mongo
        .database(config.mongodb_database.as_deref().unwrap())
        .collection::<mongodb::bson::Document>("books");
    for book in [
        mongodb::bson::doc! {"id": "b-old", "title": "Dom Casmurro", "authors": ["Machado de Assis"], "publishedDate": "1899"},
        mongodb::bson::doc! {"id": "b-twice", "title": "Iracema", "authors": ["José de Alencar"]},
        mongodb::bson::doc! {"id": "b-twice", "title": "Iracema", "authors": ["José de Alencar"]},
    ] {
        books.insert_one(book).await.unwrap();
    }
    let redis = redis::Client::open(service_url("LIVROS_TEST_REDIS_URL").unwrap()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("{}order:o-old", config.redis_prefix))
        .arg(&["customer_id", "c-old", "book_id", "b-old", "quantity", "2"])
        .arg(&["timestamp", "1795449989.1135995"])
        .query_async(&mut conn)
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let stores = livros::systems::open_stores(dir.path(), config)
        .await
        .unwrap();
    let (base, shutdown) = serve(stores, ApiConfig::default()).await;
    // `b-twice` is there twice, so `id` could not be made unique: a plain index instead.
    let indexes: Vec<mongodb::IndexModel> =
        futures::TryStreamExt::try_collect(books.list_indexes().await.unwrap())
            .await
            .unwrap();
    let id_index = indexes
        .iter()
        .find(|i| i.keys.contains_key("id"))
        .expect("an index on `id`");
    assert_ne!(
        id_index.options.as_ref().and_then(|o| o.unique),
        Some(true),
        "{id_index:?}"
    );

    // Reads of what they left.
    let (status, c) = get(&format!("{base}/customers/c-old")).await;
    assert_eq!(
        (status, c["name"].clone()),
        (StatusCode::OK, json!("Old Customer"))
    );
    let (status, c) = get(&format!("{base}/customers/c-null")).await;
    assert_eq!((status, c["name"].clone()), (StatusCode::OK, json!("")));
    let (status, b) = get(&format!("{base}/books/b-old")).await;
    assert_eq!(
        (status, b["title"].clone()),
        (StatusCode::OK, json!("Dom Casmurro")),
        "{b}"
    );
    assert!(
        b.get("_id").is_none(),
        "MongoDB's own _id is not part of the book: {b}"
    );
    let (status, o) = get(&format!("{base}/orders/o-old")).await;
    assert_eq!(status, StatusCode::OK, "{o}");
    assert_eq!(
        o,
        json!({"id": "o-old", "customer_id": "c-old", "book_id": "b-old", "quantity": 2,
               "timestamp": "2026-11-23T16:06:29.113600Z"})
    );

    // Writes over it: a new customer, an update of an old one, a re-post of an old book,
    // and orders for old customers and books.
    let (status, body) = post(
        &format!("{base}/customers"),
        customer("c-new", "new@example.com"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = post(
        &format!("{base}/customers"),
        customer("c-old", "renamed@example.com"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, c) = get(&format!("{base}/customers/c-old")).await;
    assert_eq!(c["email"], "renamed@example.com");
    let (status, body) = post(
        &format!("{base}/books"),
        book("b-old", "9788535902771", "Machado de Assis"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, b) = get(&format!("{base}/books/b-old")).await;
    assert_eq!(b["isbn"], "9788535902771");
    let copies = books
        .find(mongodb::bson::doc! {"id": "b-old"})
        .await
        .unwrap();
    let copies: Vec<mongodb::bson::Document> =
        futures::TryStreamExt::try_collect(copies).await.unwrap();
    assert_eq!(
        copies.len(),
        1,
        "the old book is updated in place, not copied"
    );
    assert!(
        copies[0].get_object_id("_id").is_ok(),
        "its ObjectId is kept"
    );
    for (id, book_id) in [("o-new", "b-old"), ("o-twice", "b-twice")] {
        let body = json!({"id": id, "customer_id": "c-old", "book_id": book_id, "quantity": 1,
                          "timestamp": 1795449989.5});
        let (status, answer) = post(&format!("{base}/orders"), body).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }
    let (status, b) = get(&format!("{base}/books?author=Jos%C3%A9%20de%20Alencar")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!b["items"].as_array().unwrap().is_empty());
    shutdown.cancel();
    drop(mongo);
    real.cleanup().await;
}

/// A store set up wrong (here a column renamed under us) is the server's problem, never
/// the client's: `500` with what failed, not `422`; once fixed, the same body is stored.
#[tokio::test]
async fn a_store_set_up_wrong_is_a_server_error_not_a_client_error() {
    let Some(real) = RealStores::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let stores = livros::systems::open_stores(dir.path(), &real.config)
        .await
        .unwrap();
    let (base, shutdown) = serve(stores, ApiConfig::default()).await;
    let pg = sqlx::PgPool::connect(real.config.postgres_url.as_deref().unwrap())
        .await
        .unwrap();
    sqlx::raw_sql("ALTER TABLE customers RENAME COLUMN email TO mail")
        .execute(&pg)
        .await
        .unwrap();
    let (status, body) = post(
        &format!("{base}/customers"),
        customer("c1", "ana@example.com"),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("not because of the data"),
        "{body}"
    );
    sqlx::raw_sql("ALTER TABLE customers RENAME COLUMN mail TO email")
        .execute(&pg)
        .await
        .unwrap();
    let (status, body) = post(
        &format!("{base}/customers"),
        customer("c1", "ana@example.com"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    shutdown.cancel();
    pg.close().await;
    real.cleanup().await;
}

async fn embedded_stores(dir: &Path) -> Stores {
    livros::systems::open_stores(dir, &StoreConfig::default())
        .await
        .unwrap()
}

on_every_engine!(round_trip, round_trip_embedded, round_trip_real_stores);

/// An order's customer and book stored by another server (whose ids this one has never
/// seen) are found in the stores; a customer nobody stored is refused, however many orders
/// of known customers came before.
async fn references_stored_elsewhere(stores: Stores) {
    let (first, stop_first) = serve(stores.clone(), ApiConfig::default()).await;
    let (second, stop_second) = serve(stores, ApiConfig::default()).await;
    assert_eq!(
        post(
            &format!("{first}/customers"),
            customer("c1", "c1@example.com")
        )
        .await
        .0,
        StatusCode::CREATED
    );
    assert_eq!(
        post(
            &format!("{first}/books"),
            book("b1", "9788535910663", "Machado de Assis")
        )
        .await
        .0,
        StatusCode::CREATED
    );
    for id in ["o1", "o2"] {
        let (status, body) = post(&format!("{second}/orders"), order(id, "c1", "b1")).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, body) = post(&format!("{second}/orders"), order("o3", "ghost", "b1")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("ghost"), "{body}");
    stop_first.cancel();
    stop_second.cancel();
}

on_every_engine!(
    references_stored_elsewhere,
    references_stored_elsewhere_embedded,
    references_stored_elsewhere_real_stores
);

on_every_engine!(bad_input, bad_input_embedded, bad_input_real_stores);

#[tokio::test]
async fn writes_need_the_token_when_one_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let config = ApiConfig {
        token: Some("s3cret".into()),
        ..ApiConfig::default()
    };
    let (base, shutdown) = serve(embedded_stores(dir.path()).await, config).await;
    let client = reqwest::Client::new();
    let send = |token: Option<&str>| {
        let mut request = client
            .post(format!("{base}/customers"))
            .json(&customer("c1", "c1@example.com"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    for token in [None, Some("wrong"), Some("s3cret-and-more")] {
        let response = send(token).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body: Value = response.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().contains("Bearer"));
    }
    let (status, _) = get(&format!("{base}/customers/c1")).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "nothing was stored without the token"
    );
    assert_eq!(
        send(Some("s3cret")).await.unwrap().status(),
        StatusCode::CREATED
    );
    // Reads stay open.
    let (status, _) = get(&format!("{base}/customers/c1")).await;
    assert_eq!(status, StatusCode::OK);
    shutdown.cancel();
}

#[tokio::test]
async fn a_store_that_goes_away_gives_503_with_retry_after_then_recovers() {
    // Needs redis-server, which is there where the Redis tests run.
    if service_url("LIVROS_TEST_REDIS_URL").is_none() {
        return;
    }
    let redis_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut redis = spawn_redis(port, redis_dir.path());
    eventually(
        "the private Redis to listen",
        Duration::from_secs(30),
        || async { std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let stores = livros::systems::open_stores(
        dir.path(),
        &StoreConfig {
            redis_url: Some(format!("redis://127.0.0.1:{port}")),
            ..StoreConfig::default()
        },
    )
    .await
    .unwrap();
    let config = ApiConfig {
        store_timeout: Duration::from_secs(2),
        ..ApiConfig::default()
    };
    let (base, shutdown) = serve(stores, config).await;
    post(
        &format!("{base}/customers"),
        customer("c1", "c1@example.com"),
    )
    .await;
    post(&format!("{base}/books"), book("b1", "9788535902771", "A")).await;
    let (status, _) = post(&format!("{base}/orders"), order("o1", "c1", "b1")).await;
    assert_eq!(status, StatusCode::CREATED);

    redis.kill().unwrap();
    redis.wait().unwrap();
    let started = std::time::Instant::now();
    let response = reqwest::Client::new()
        .post(format!("{base}/orders"))
        .json(&order("o2", "c1", "b1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response.headers()["retry-after"],
        RETRY_AFTER_SECS.to_string().as_str()
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "error");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered, not hung"
    );
    let (status, _) = get(&format!("{base}/orders/o1")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, ready) = get(&format!("{base}/ready")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready["stores"]["relational"], "ok");
    assert_ne!(ready["stores"]["key-value"], "ok", "{ready}");
    // The other stores still answer.
    let (status, _) = get(&format!("{base}/customers/c1")).await;
    assert_eq!(status, StatusCode::OK);

    let mut redis = spawn_redis(port, redis_dir.path());
    let mut stored = false;
    for _ in 0..100 {
        let (status, _) = post(&format!("{base}/orders"), order("o2", "c1", "b1")).await;
        if status == StatusCode::CREATED {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(stored, "the order is stored once Redis is back");
    let (status, o1) = get(&format!("{base}/orders/o1")).await;
    assert_eq!(
        (status, o1["id"].clone()),
        (StatusCode::OK, json!("o1")),
        "kept across the restart"
    );
    shutdown.cancel();
    let _ = redis.kill();
    let _ = redis.wait();
}

/// `livros s2 --http 127.0.0.1:<port>` on `data_dir`, and the address it reports.
fn spawn_s2(data_dir: &Path, port: u16) -> (Child, String) {
    spawn_serving(
        data_dir,
        &["s2", "--quiet", "--http", &format!("127.0.0.1:{port}")],
    )
}

/// `livros <args>` on `data_dir`, and the address of the HTTP API it reports.
fn spawn_serving(data_dir: &Path, args: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_livros"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        // These tests are about the bookstore's API.
        .env("LIVROS_SYSTEMS", "bookstore")
        .env("LIVROS_DATA_DIR", data_dir)
        .env("LIVROS_DASHBOARD", "off")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("livros prints where its API listens")
            .unwrap();
        if let Some((_, rest)) = line.split_once("HTTP API: ") {
            let url = rest.split_whitespace().next().unwrap();
            break url.strip_prefix("http://").unwrap().to_string();
        }
    };
    // Keep reading so livros never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

fn stop(child: &mut Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "livros stops cleanly on SIGTERM: {status}"
    );
}

#[tokio::test]
async fn up_serves_the_api_over_what_the_pipeline_stores() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, addr) = spawn_serving(
        dir.path(),
        &["up", "--quiet", "--rate", "100", "--http", "127.0.0.1:0"],
    );
    let base = format!("http://{addr}");
    // What S1 publishes and S2 stores from the bus is readable over HTTP…
    eventually(
        "customers from the bus to be listed",
        Duration::from_secs(30),
        || async {
            let (status, page) = get(&format!("{base}/customers")).await;
            status == StatusCode::OK && !page["items"].as_array().unwrap().is_empty()
        },
    )
    .await;
    // …and what is posted lands in the same stores.
    let (status, _) = post(
        &format!("{base}/customers"),
        customer("via-http", "h@example.com"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = get(&format!("{base}/customers/via-http")).await;
    assert_eq!(status, StatusCode::OK);
    stop(&mut up);
    let stores = embedded_stores(dir.path()).await;
    assert!(
        stores
            .relational
            .customer("via-http")
            .await
            .unwrap()
            .is_some()
    );
}

fn s1_http(dir: &Path, target: &str, count: u64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_livros"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .env("LIVROS_SYSTEMS", "bookstore")
        .env("LIVROS_DATA_DIR", dir.join("s1-data"))
        .current_dir(dir)
        .args([
            "s1", "--via", "http", "--target", target, "--rate", "0", "--quiet",
        ])
        .args(["--count", &count.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn read_s1_log(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("s1_log.json"))
        .expect("s1_log.json is written in the working directory")
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect()
}

#[tokio::test]
async fn s1_via_http_logs_every_exchange_and_everything_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("s2-data");
    let (mut s2, addr) = spawn_s2(&data, 0);
    let out = finished(
        s1_http(dir.path(), &format!("http://{addr}"), 20),
        "S1 over HTTP finishes",
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("sent 20 customers, 20 books, 20 orders"),
        "{stdout}"
    );

    let log = read_s1_log(dir.path());
    assert_eq!(log.len(), 60, "one line per exchange");
    for line in &log {
        assert!(line["timestamp"].is_string());
        assert_eq!(line["request"]["method"], "POST");
        assert!(
            line["request"]["url"]
                .as_str()
                .unwrap()
                .starts_with(&format!("http://{addr}/"))
        );
        assert!(line["request"]["payload"]["id"].is_string());
        assert_eq!(line["response"]["status_code"], 201, "{line}");
        assert_eq!(line["response"]["body"]["status"], "success");
    }
    // Every record S1 logged as accepted can be read back over the API.
    for line in &log {
        let url = line["request"]["url"].as_str().unwrap();
        let id = line["request"]["payload"]["id"].as_str().unwrap();
        let (status, body) = get(&format!("{url}/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{url}/{id}");
        assert_eq!(body["id"], id);
    }
    stop(&mut s2);
    let stores = embedded_stores(&data).await;
    assert_eq!(stores.relational.count_customers().await.unwrap(), 20);
    assert_eq!(stores.key_value.count_prefix("order:").await.unwrap(), 20);
}

#[tokio::test]
async fn s1_via_http_retries_until_the_server_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let s1 = s1_http(dir.path(), &format!("http://127.0.0.1:{port}"), 5);
    // Let S1 fail to connect a few times before the server starts.
    eventually(
        "S1 to log a connection error",
        Duration::from_secs(30),
        || async { dir.path().join("s1_log.json").exists() },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut s2, _) = spawn_s2(&dir.path().join("s2-data"), port);
    let out = finished(s1, "S1 finishes once S2 is up").await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("connection error"));
    let log = read_s1_log(dir.path());
    let errors = log.iter().filter(|l| l.get("error").is_some()).count();
    let created = log
        .iter()
        .filter(|l| l["response"]["status_code"] == 201)
        .count();
    assert!(errors >= 1, "connection errors are logged as such");
    assert!(
        log.iter()
            .filter(|l| l.get("error").is_some())
            .all(|l| l["error"].as_str().unwrap().contains("connection error"))
    );
    assert_eq!(created, 15, "then every record was posted once it could be");
    stop(&mut s2);
}

/// schemathesis (PyPI) against `/openapi.json`: no 5xx, and every answer as documented.
async fn schemathesis(stores: Stores) {
    let (base, shutdown) = serve(stores, ApiConfig::default()).await;
    common::schemathesis(&base).await;
    shutdown.cancel();
}

on_every_engine!(
    schemathesis,
    schemathesis_finds_nothing_embedded,
    schemathesis_finds_nothing_real_stores
);

#[tokio::test]
async fn concurrent_posts_each_get_their_own_answer() {
    // Concurrent writes share store round trips (group commit); each request must still
    // get the outcome of its own record.
    let dir = tempfile::tempdir().unwrap();
    let stores = embedded_stores(dir.path()).await;
    let (base, shutdown) = serve(stores.clone(), ApiConfig::default()).await;
    let client = reqwest::Client::new();
    let requests = (0..200).map(|i| {
        let valid = i % 3 != 0;
        let email = if valid {
            format!("c{i}@example.com")
        } else {
            "not-an-address".to_string()
        };
        let request = client
            .post(format!("{base}/customers"))
            .json(&customer(&format!("c{}", i % 150), &email))
            .send();
        async move { (valid, request.await.unwrap()) }
    });
    let answers = futures::future::join_all(requests).await;
    for (valid, response) in answers {
        let expected = if valid {
            StatusCode::CREATED
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        assert_eq!(response.status(), expected);
        let body: Value = response.json().await.unwrap();
        if !valid {
            assert_eq!(body["errors"][0]["field"], "email");
        }
    }
    // Ids c0..c149, of which those only ever posted invalid are absent.
    let stored = (0..150)
        .filter(|id| (0..200).any(|i| i % 150 == *id && i % 3 != 0))
        .count() as i64;
    assert_eq!(stores.relational.count_customers().await.unwrap(), stored);
    shutdown.cancel();
}

/// The load generator counts what was answered as planned and says what was not: new
/// customers are created (201, and really stored), a plan expecting another status counts
/// every answer as an error and quotes the first.
#[tokio::test]
async fn the_load_generator_counts_answers_and_reports_the_first_unexpected_one() {
    let dir = tempfile::tempdir().unwrap();
    let stores = embedded_stores(dir.path()).await;
    let (base, shutdown) = serve(stores.clone(), ApiConfig::default()).await;
    let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let ids: Vec<String> = (0..50).map(|i| format!("load-{i}")).collect();
    let plan = livros::loadgen::Plan {
        what: "POST /customers".into(),
        expect: 201,
        write: true,
        requests: ids
            .iter()
            .map(|id| {
                livros::loadgen::Request::post(
                    "/customers",
                    customer(id, &format!("{id}@example.com")).to_string(),
                )
            })
            .collect(),
    };
    let report = livros::loadgen::run(addr, &plan, 4, None).await.unwrap();
    assert_eq!((report.ok, report.errors), (50, 0), "{report}");
    assert!(report.p50 <= report.p99 && report.p99 <= report.max);
    for id in &ids {
        let (status, body) = get(&format!("{base}/customers/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{id}: {body}");
    }

    let wrong = livros::loadgen::Plan {
        what: "GET /customers/{id}".into(),
        expect: 201,
        write: false,
        requests: vec![livros::loadgen::Request::get("/customers/no-such-id"); 10],
    };
    let report = livros::loadgen::run(addr, &wrong, 2, None).await.unwrap();
    assert_eq!((report.ok, report.errors), (0, 10));
    let first = report.first_error.unwrap();
    assert!(first.contains("404"), "{first}");
    shutdown.cancel();
}

/// `livros bench --http` serves the APIs, loads them from its own `livros loadgen`
/// process and prints each write as a share of the same server's `/health` rate, with
/// its group commit's batches under it (read from the metrics the writers record); every
/// round trip through the streaming processor gets its reply within its `?wait=5`.
#[test]
fn bench_http_prints_every_write_against_the_health_ceiling() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = common::output_of(
        common::livros(
            dir.path(),
            &StoreConfig::default(),
            "bookstore,products,streaming",
        )
        .args(["bench", "--http", "--requests", "300", "--concurrency", "4"]),
    );
    for phase in [
        "GET /health",
        "POST /customers",
        "POST /books",
        "POST /orders",
        "GET /customers/{id}",
        "POST /products/",
        "GET /products/{id}",
        "POST /usuarios",
        "POST /historico-visualizacao",
        "POST /usuarios?wait=5 (round trip)",
        "GET /rankings/mais-assistidos",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(phase))
            .unwrap_or_else(|| panic!("no `{phase}` line in:\n{stdout}"));
        assert!(line.contains("req/s") && line.contains("p99"), "{line}");
        assert!(!line.contains("errors"), "{line}");
        if phase.starts_with("POST") && !phase.ends_with("(round trip)") {
            assert!(line.contains("% of /health: goal"), "{line}");
            // Under it, what the API's group commit did in that phase.
            let next = stdout
                .lines()
                .skip_while(|l| *l != line)
                .nth(1)
                .unwrap_or_default();
            assert!(
                next.contains("group commit:")
                    && next.contains("requests a batch")
                    && next.contains("the writer busy"),
                "no group commit line under `{phase}`:\n{stdout}"
            );
        }
    }
    assert!(stdout.contains("goal for writes: ≥ 50 %"), "{stdout}");
}

/// `livros bench --soak` runs every system at a fixed rate and prints resident memory.
#[test]
fn bench_soak_runs_at_a_fixed_rate_and_prints_resident_memory() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = common::output_of(
        common::livros(dir.path(), &StoreConfig::default(), "bookstore")
            .args(["bench", "--soak", "3s", "--rate", "50"]),
    );
    let done = stdout
        .lines()
        .find(|l| l.starts_with("soak done"))
        .unwrap_or_else(|| panic!("no summary in:\n{stdout}"));
    let stored: u64 = done
        .split_whitespace()
        .nth(4)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{done}"));
    assert!(stored > 0, "{done}");
    let memory = stdout.lines().last().unwrap();
    assert!(
        memory.starts_with("RSS start") && memory.contains("anonymous start"),
        "{memory}"
    );
    // The binary's allocator counts what Rust's heap holds: a peak of 0.0 MB would mean
    // it does not (the readout falls back to 0).
    let rust_peak: f64 = memory
        .split("Rust's heap in use start ")
        .nth(1)
        .and_then(|rest| rest.split("peak ").nth(1))
        .and_then(|peak| peak.split(" MB").next())
        .and_then(|mb| mb.parse().ok())
        .unwrap_or_else(|| panic!("no reading of Rust's heap in: {memory}"));
    assert!(rust_peak > 0.0, "{memory}");
}
