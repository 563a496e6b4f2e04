//! The document store suite: the embedded store (MongoDB joins with its own issue).

use livros::store::DocumentStore;
use livros::store::docs_sqlite::SqliteDocumentStore;
use serde_json::json;

async fn suite(store: &dyn DocumentStore) {
    assert_eq!(store.get("books", "none").await.unwrap(), None);
    assert_eq!(store.count("books").await.unwrap(), 0);

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
    let store = SqliteDocumentStore::open(&dir.path().join("documents.db"))
        .await
        .unwrap();
    suite(&store).await;
}
