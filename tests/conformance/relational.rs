//! The relational store suite: SQLite (embedded) and PostgreSQL.

use std::time::Duration;

use livros::store::postgres::PostgresStore;
use livros::store::sqlite::SqliteStore;
use livros::store::{Page, RelationalStore, SqlValue, Statement, StoreError};
use livros::systems::bookstore::customers::Customers;
use livros::systems::bookstore::entities::Customer;

use crate::common::{TestDb, service_url};

fn sqlite_migrations() -> Vec<&'static sqlx::migrate::Migrator> {
    livros::systems::schemas()
        .iter()
        .map(|m| m.sqlite)
        .collect()
}

fn postgres_migrations() -> Vec<&'static sqlx::migrate::Migrator> {
    livros::systems::schemas()
        .iter()
        .map(|m| m.postgres)
        .collect()
}

fn customer(id: &str, name: &str, email: &str) -> Customer {
    Customer {
        id: id.into(),
        name: name.into(),
        email: email.into(),
    }
}

async fn suite(store: &dyn RelationalStore) {
    // Missing rows read as None, not errors.
    assert_eq!(store.customer("nobody").await.unwrap(), None);
    assert_eq!(store.count_customers().await.unwrap(), 0);

    // Upsert, read back, including text that needs escaping.
    let a = customer("a", "Maria José D'Ávila \"Zé\"", "maria@example.com");
    let b = customer("b", "João Souza", "joao@example.org");
    store
        .upsert_customers(&[a.clone(), b.clone()])
        .await
        .unwrap();
    assert_eq!(store.customer("a").await.unwrap(), Some(a.clone()));
    assert_eq!(store.count_customers().await.unwrap(), 2);

    // Idempotent: the same batch again changes nothing.
    store
        .upsert_customers(&[a.clone(), b.clone()])
        .await
        .unwrap();
    assert_eq!(store.count_customers().await.unwrap(), 2);

    // An update by id replaces the fields; within one batch, the last write wins.
    let a2 = customer("a", "Maria Souza", "maria.souza@example.com");
    let a3 = customer("a", "Maria S.", "ms@example.com");
    store.upsert_customers(&[a2, a3.clone()]).await.unwrap();
    assert_eq!(store.customer("a").await.unwrap(), Some(a3));
    assert_eq!(store.count_customers().await.unwrap(), 2);

    // Existence in bulk, and e-mail lookups (not unique).
    let ids = vec!["a".to_string(), "b".to_string(), "zzz".to_string()];
    let found = store.existing_customers(&ids).await.unwrap();
    assert_eq!(found.len(), 2);
    assert!(found.contains("a") && found.contains("b") && !found.contains("zzz"));
    store
        .upsert_customers(&[customer("c", "Outro João", "joao@example.org")])
        .await
        .unwrap();
    let all = Page {
        skip: 0,
        limit: 100,
    };
    let by_email = store
        .customers(Some("joao@example.org"), all)
        .await
        .unwrap();
    assert_eq!(
        by_email.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["b", "c"]
    );
    assert!(
        store
            .customers(Some("nobody@example.org"), all)
            .await
            .unwrap()
            .is_empty()
    );
    // Paging, ordered by id, with and without a filter.
    let ids = |cs: Vec<Customer>| cs.into_iter().map(|c| c.id).collect::<Vec<_>>();
    let second = Page { skip: 1, limit: 1 };
    assert_eq!(ids(store.customers(None, second).await.unwrap()), ["b"]);
    assert_eq!(
        ids(store
            .customers(Some("joao@example.org"), second)
            .await
            .unwrap()),
        ["c"]
    );
    assert_eq!(
        ids(store.customers(None, all).await.unwrap()),
        ["a", "b", "c"]
    );
    store.ping().await.unwrap();

    // A transaction is all or nothing, of one statement (SQLite runs it without `BEGIN`)
    // or of several: a row refused leaves none of the transaction's rows behind.
    let insert = |sql: &str, args: Vec<SqlValue>| Statement::new(sql.to_string(), args);
    let one = insert(
        "INSERT INTO customers (id, name, email) VALUES ($1, $2, $3), ($4, $5, $6)",
        vec![
            "atomic-1".into(),
            "Ana".into(),
            "ana@example.com".into(),
            "atomic-2".into(),
            SqlValue::Text(None),
            "bia@example.com".into(),
        ],
    );
    let refused = store.transaction(&[one]).await.unwrap_err();
    assert!(
        matches!(refused, StoreError::Rejected { .. }),
        "{refused:?}"
    );
    let first = insert(
        "INSERT INTO customers (id, name, email) VALUES ($1, $2, $3)",
        vec!["atomic-1".into(), "Ana".into(), "ana@example.com".into()],
    );
    let second = insert(
        "INSERT INTO customers (id, name, email) VALUES ($1, $2, $3)",
        vec![
            "atomic-2".into(),
            SqlValue::Text(None),
            "bia@example.com".into(),
        ],
    );
    let refused = store.transaction(&[first, second]).await.unwrap_err();
    assert!(
        matches!(refused, StoreError::Rejected { .. }),
        "{refused:?}"
    );
    let atomic = ["atomic-1".to_string(), "atomic-2".to_string()];
    assert!(store.existing_customers(&atomic).await.unwrap().is_empty());
    assert_eq!(store.count_customers().await.unwrap(), 3);

    // Each statement of a transaction gets its own rows (SQLite sends them as one script):
    // rows returned, none, one; a placeholder used twice; quoted text that looks like one.
    let results = store
        .transaction(&[
            insert(
                "INSERT INTO customers (id, name, email) VALUES ($1, $2, $3), ($4, $2, $3) \
                 RETURNING id",
                vec![
                    "rows-1".into(),
                    "Rui".into(),
                    "rui@example.com".into(),
                    "rows-2".into(),
                ],
            ),
            insert(
                "UPDATE customers SET name = $1 WHERE id = $2",
                vec!["Rui ?".into(), "rows-2".into()],
            ),
            insert(
                "SELECT name, '$1 ?' AS quoted FROM customers WHERE id = $1",
                vec!["rows-2".into()],
            ),
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 3);
    let mut returned: Vec<String> = results[0].iter().filter_map(|r| r.text("id")).collect();
    returned.sort();
    assert_eq!(returned, ["rows-1", "rows-2"]);
    assert!(results[1].is_empty());
    assert_eq!(results[2].len(), 1);
    assert_eq!(results[2][0].text("name").as_deref(), Some("Rui ?"));
    assert_eq!(results[2][0].text("quoted").as_deref(), Some("$1 ?"));
    store
        .transaction(&[insert(
            "DELETE FROM customers WHERE id IN ($1, $2)",
            vec!["rows-1".into(), "rows-2".into()],
        )])
        .await
        .unwrap();
    assert_eq!(store.count_customers().await.unwrap(), 3);

    // Batches larger than one statement's worth of parameters.
    let many: Vec<Customer> = (0..2_500)
        .map(|i| {
            customer(
                &format!("bulk-{i}"),
                &format!("Cliente {i}"),
                &format!("c{i}@example.net"),
            )
        })
        .collect();
    store.upsert_customers(&many).await.unwrap();
    assert_eq!(store.count_customers().await.unwrap(), 3 + 2_500);
    let ids: Vec<String> = many.iter().map(|c| c.id.clone()).collect();
    assert_eq!(store.existing_customers(&ids).await.unwrap().len(), 2_500);
    assert!(store.existing_customers(&[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("relational.db"), &sqlite_migrations())
        .await
        .unwrap();
    suite(&store).await;
    // Reopening runs the migrations again harmlessly and keeps the data.
    drop(store);
    let store = SqliteStore::open(&dir.path().join("relational.db"), &sqlite_migrations())
        .await
        .unwrap();
    assert_eq!(store.count_customers().await.unwrap(), 2_503);
}

/// A store on a fresh database of the test server; `None` (skipped) when its URL is unset
/// outside CI.
async fn postgres_store() -> Option<(TestDb, PostgresStore)> {
    let url = service_url("LIVROS_TEST_POSTGRES_URL")?;
    let db = TestDb::create(&url).await;
    let store = PostgresStore::connect(&db.url, &postgres_migrations())
        .await
        .unwrap();
    Some((db, store))
}

#[tokio::test]
async fn postgres() {
    let Some((db, store)) = postgres_store().await else {
        return;
    };
    suite(&store).await;
    drop(store);
    db.drop_db().await;
}

/// Connections the server closed while they sat in the pool (a restart, an idle timeout)
/// are found out before use and replaced: the next write goes through, not a 503.
#[tokio::test]
async fn postgres_connections_closed_while_idle_are_replaced() {
    let Some((db, store)) = postgres_store().await else {
        return;
    };
    store
        .upsert_customers(&[customer("a", "Ana", "ana@example.net")])
        .await
        .unwrap();
    db.close_connections().await;
    tokio::time::sleep(livros::store::postgres::PING_IF_IDLE_FOR + Duration::from_millis(200))
        .await;
    store
        .upsert_customers(&[customer("b", "Bia", "bia@example.net")])
        .await
        .expect("a write after the server closed the idle connections");
    assert_eq!(store.count_customers().await.unwrap(), 2);
    drop(store);
    db.drop_db().await;
}

/// Batches of every size leave a bounded number of statements prepared on the server: one
/// kept per size would hold a plan each in the connection's backend.
#[tokio::test]
async fn postgres_keeps_a_bounded_number_of_statements_prepared() {
    let Some((db, store)) = postgres_store().await else {
        return;
    };
    let cap = livros::store::postgres::STATEMENT_CACHE;
    // A statement of each size from 1 to 3 × the cap, then the count of what is prepared,
    // in one transaction: all on one connection.
    let mut statements: Vec<Statement> = (1..=3 * cap)
        .map(|n| {
            let values: Vec<String> = (1..=n).map(|i| format!("(${i}::bigint)")).collect();
            Statement::new(
                format!(
                    "SELECT count(*) AS n FROM (VALUES {}) AS v(x)",
                    values.join(", ")
                ),
                (0..n as i64).map(SqlValue::from).collect(),
            )
        })
        .collect();
    statements.push(Statement::new(
        "SELECT count(*) AS n FROM pg_prepared_statements",
        vec![],
    ));
    let results = store.transaction(&statements).await.unwrap();
    let prepared = match results.last().and_then(|rows| rows[0].get("n")) {
        Some(SqlValue::Int(Some(n))) => *n as usize,
        other => panic!("count(*) read as {other:?}"),
    };
    // The cap, and the count's own statement.
    assert!(
        prepared <= cap + 1,
        "{prepared} statements prepared on one connection"
    );
    drop(store);
    db.drop_db().await;
}

#[tokio::test]
async fn postgres_unreachable_is_a_clear_error() {
    let error = PostgresStore::connect("postgres://livros:secret@127.0.0.1:1/livros", &[])
        .await
        .err()
        .expect("nothing listens on port 1");
    let text = error.to_string();
    assert!(
        text.contains("postgres://livros:***@127.0.0.1:1/livros"),
        "{text}"
    );
    assert!(!text.contains("secret"), "{text}");
    assert!(text.contains("--postgres-url"), "{text}");
}
