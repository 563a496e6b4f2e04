//! The document store suite: the embedded store (MongoDB joins with its own issue).

use livros::store::docs_sqlite::SqliteDocumentStore;
use livros::store::mongodb::{MongoConfig, MongoStore};
use livros::store::{DocumentStore, Filter, Page};
use serde_json::json;

use crate::common::service_url;

fn eq(field: &str, value: &str) -> Filter {
    livros::store::eq(field, value)
}

/// Equality on numbers and booleans as JSON values, and sorting by a field.
async fn typed_and_sorted(store: &dyn DocumentStore) {
    use livros::store::Sort;
    let views: Vec<(String, serde_json::Value)> = [
        ("v1", 7, false, "2026-11-23T10:00:00Z"),
        ("v2", 7, true, "2026-11-23T12:00:00Z"),
        ("v3", 8, false, "2026-11-23T11:00:00Z"),
        ("v4", 7, false, "2026-11-23T11:30:00Z"),
    ]
    .iter()
    .map(|(id, user, done, at)| {
        (
            id.to_string(),
            json!({"id": id, "user_id": user, "concluido": done, "data": at}),
        )
    })
    .collect();
    store.upsert("views", &views).await.unwrap();
    let ids = |found: Vec<serde_json::Value>| {
        found
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let user7 = livros::store::eq("user_id", 7);
    assert_eq!(
        ids(store
            .find("views", std::slice::from_ref(&user7), ALL)
            .await
            .unwrap()),
        ["v1", "v2", "v4"]
    );
    // `7` the number is not `"7"` the text.
    assert!(
        store
            .find("views", &[eq("user_id", "7")], ALL)
            .await
            .unwrap()
            .is_empty()
    );
    let newest = Sort {
        field: "data".into(),
        descending: true,
    };
    assert_eq!(
        ids(store
            .find_sorted("views", std::slice::from_ref(&user7), Some(&newest), ALL)
            .await
            .unwrap()),
        ["v2", "v4", "v1"]
    );
    let open = livros::store::eq("concluido", false);
    assert_eq!(
        ids(store
            .find_sorted(
                "views",
                &[user7, open],
                Some(&newest),
                Page { skip: 0, limit: 1 }
            )
            .await
            .unwrap()),
        ["v4"]
    );
    let oldest = Sort {
        field: "data".into(),
        descending: false,
    };
    assert_eq!(
        ids(store
            .find_sorted("views", &[], Some(&oldest), Page { skip: 1, limit: 2 })
            .await
            .unwrap()),
        ["v3", "v4"]
    );
}

fn words(field: &str, words: &[&str]) -> Filter {
    Filter::Words {
        field: field.into(),
        words: words.iter().map(|w| w.to_string()).collect(),
    }
}

const ALL: Page = Page {
    skip: 0,
    limit: 100,
};

async fn find_suite(store: &dyn DocumentStore) {
    let books = [
        (
            "b1",
            json!({"id": "b1", "title": "Dom Casmurro", "authors": ["Machado de Assis"], "isbn": "9788535902771"}),
        ),
        (
            "b2",
            json!({"id": "b2", "title": "Memórias Póstumas de Brás Cubas", "authors": ["Machado de Assis"], "isbn": null}),
        ),
        (
            "b3",
            json!({"id": "b3", "title": "Iracema", "authors": ["José de Alencar"]}),
        ),
        (
            "b4",
            json!({"id": "b4", "title": "Good Omens", "authors": ["Terry Pratchett", "Neil Gaiman"]}),
        ),
    ];
    let docs: Vec<(String, serde_json::Value)> = books
        .iter()
        .map(|(id, b)| (id.to_string(), b.clone()))
        .collect();
    store.upsert("catalogue", &docs).await.unwrap();
    let ids = |found: Vec<serde_json::Value>| {
        found
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };

    // By author: arrays match when they contain the value; results come ordered by id.
    assert_eq!(
        ids(store
            .find("catalogue", &[eq("authors", "Machado de Assis")], ALL)
            .await
            .unwrap()),
        ["b1", "b2"]
    );
    assert_eq!(
        ids(store
            .find("catalogue", &[eq("authors", "Neil Gaiman")], ALL)
            .await
            .unwrap()),
        ["b4"]
    );
    // By ISBN.
    assert_eq!(
        ids(store
            .find("catalogue", &[eq("isbn", "9788535902771")], ALL)
            .await
            .unwrap()),
        ["b1"]
    );
    // By words of the title, in any case and order; every word must occur.
    assert_eq!(
        ids(store
            .find("catalogue", &[words("title", &["CUBAS", "memórias"])], ALL)
            .await
            .unwrap()),
        ["b2"]
    );
    assert!(
        store
            .find("catalogue", &[words("title", &["cubas", "iracema"])], ALL)
            .await
            .unwrap()
            .is_empty()
    );
    // Pattern characters are literal.
    assert!(
        store
            .find("catalogue", &[words("title", &["%"])], ALL)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .find("catalogue", &[words("title", &[".*"])], ALL)
            .await
            .unwrap()
            .is_empty()
    );
    // Filters combine; no filter lists everything; pages slice the ordered list.
    assert_eq!(
        ids(store
            .find(
                "catalogue",
                &[eq("authors", "Machado de Assis"), words("title", &["dom"])],
                ALL
            )
            .await
            .unwrap()),
        ["b1"]
    );
    assert_eq!(
        ids(store
            .find("catalogue", &[], Page { skip: 0, limit: 3 })
            .await
            .unwrap()),
        ["b1", "b2", "b3"]
    );
    assert_eq!(
        ids(store
            .find("catalogue", &[], Page { skip: 3, limit: 3 })
            .await
            .unwrap()),
        ["b4"]
    );
    // Documents come back whole.
    assert_eq!(
        store
            .find("catalogue", &[eq("isbn", "9788535902771")], ALL)
            .await
            .unwrap()[0],
        books[0].1
    );
}

async fn suite(store: &dyn DocumentStore) {
    assert_eq!(store.get("books", "none").await.unwrap(), None);
    assert_eq!(store.count("books").await.unwrap(), 0);
    store.ping().await.unwrap();
    // An empty batch (every record of it invalid, say) writes nothing and is no error.
    assert!(store.upsert("books", &[]).await.unwrap().is_empty());

    // Documents keep their shape: nested arrays, nulls, numbers, unicode.
    let dom = json!({"id": "b1", "title": "Dom Casmurro", "authors": ["Machado de Assis"], "isbn": null,
                     "pageCount": 256, "ratings": {"avg": 4.5, "n": [1, 2]}});
    let results = store
        .upsert(
            "books",
            &[
                ("b1".into(), dom.clone()),
                ("b2".into(), json!({"id": "b2", "title": "Iracema"})),
            ],
        )
        .await
        .unwrap();
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(store.get("books", "b1").await.unwrap(), Some(dom));

    // Upserting again replaces the document; the count is unchanged.
    let newer = json!({"id": "b1", "title": "Dom Casmurro", "authors": ["Machado de Assis"], "publisher": "Garnier"});
    store
        .upsert("books", &[("b1".into(), newer.clone())])
        .await
        .unwrap();
    assert_eq!(store.get("books", "b1").await.unwrap(), Some(newer));
    assert_eq!(store.count("books").await.unwrap(), 2);

    // A batch naming one id twice: the last one wins, and each input gets a result.
    let results = store
        .upsert(
            "books",
            &[
                ("b3".into(), json!({"v": 1})),
                ("b3".into(), json!({"v": 2})),
            ],
        )
        .await
        .unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(
        store.get("books", "b3").await.unwrap(),
        Some(json!({"v": 2}))
    );

    // Collections are separate namespaces.
    store
        .upsert(
            "movies",
            &[("b1".into(), json!({"title": "Central do Brasil"}))],
        )
        .await
        .unwrap();
    assert_eq!(store.count("movies").await.unwrap(), 1);
    assert_eq!(store.count("books").await.unwrap(), 3);

    let found = store
        .existing("books", &["b1".into(), "b2".into(), "nope".into()])
        .await
        .unwrap();
    assert_eq!(found.len(), 2);

    let many: Vec<(String, serde_json::Value)> = (0..1_200)
        .map(|i| (format!("m{i}"), json!({"i": i})))
        .collect();
    store.upsert("bulk", &many).await.unwrap();
    assert_eq!(store.count("bulk").await.unwrap(), 1_200);
}

#[tokio::test]
async fn embedded() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteDocumentStore::open(&dir.path().join("documents.db"), &["isbn", "user_id"])
        .await
        .unwrap();
    suite(&store).await;
    find_suite(&store).await;
    typed_and_sorted(&store).await;
}

/// A database made for one test, dropped at the end.
async fn mongo_store(url: &str) -> (MongoStore, String) {
    let database = format!("livros_test_{}", uuid::Uuid::new_v4().simple());
    let config = MongoConfig {
        url: url.to_string(),
        database: database.clone(),
        collections: [(
            "books".to_string(),
            (
                "books".to_string(),
                vec!["isbn".to_string(), "authors".to_string()],
            ),
        )]
        .into(),
    };
    (MongoStore::connect(config).await.unwrap(), database)
}

async fn drop_database(url: &str, database: &str) {
    let client = mongodb::Client::with_uri_str(url).await.unwrap();
    client.database(database).drop().await.unwrap();
}

#[tokio::test]
async fn mongodb() {
    let Some(url) = service_url("LIVROS_TEST_MONGODB_URL") else {
        return;
    };
    let (store, database) = mongo_store(&url).await;
    suite(&store).await;
    find_suite(&store).await;
    typed_and_sorted(&store).await;
    drop_database(&url, &database).await;
}

/// A document MongoDB refuses (here: a second document claiming an `id` another holds,
/// against the unique index) fails alone; the rest of its batch is stored.
#[tokio::test]
async fn mongodb_bad_document_fails_alone() {
    let Some(url) = service_url("LIVROS_TEST_MONGODB_URL") else {
        return;
    };
    let (store, database) = mongo_store(&url).await;
    let results = store
        .upsert(
            "books",
            &[
                ("x1".into(), json!({"id": "same", "title": "first"})),
                ("x2".into(), json!({"id": "same", "title": "second"})),
                ("x3".into(), json!({"id": "x3", "title": "third"})),
            ],
        )
        .await
        .unwrap();
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(results[1].is_err(), "{results:?}");
    assert_eq!(store.count("books").await.unwrap(), 2);
    drop_database(&url, &database).await;
}

#[tokio::test]
async fn mongodb_unreachable_is_a_clear_error() {
    let config = MongoConfig {
        url: "mongodb://shop:hunter2@127.0.0.1:1/?serverSelectionTimeoutMS=500".into(),
        database: "books_db".into(),
        collections: Default::default(),
    };
    let text = MongoStore::connect(config)
        .await
        .err()
        .expect("nothing listens on port 1")
        .to_string();
    assert!(
        text.contains("127.0.0.1:1") && !text.contains("hunter2"),
        "{text}"
    );
    assert!(text.contains("--mongodb-url"), "{text}");
}
