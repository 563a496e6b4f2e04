//! Helpers shared by the integration test binaries.
#![allow(dead_code)]

use std::time::Duration;

use sqlx::Connection;

/// The URL of a real service for tests, from `var`. Unset: the test is skipped with a
/// line saying so — except in CI (`CI=true`), where a missing service is a failure.
pub fn service_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "{var} is not set but CI=true: real-service tests must run in CI (.ci/run sets it)"
            );
            eprintln!("skipped: set {var} to run this test against the real service");
            None
        }
    }
}

/// A PostgreSQL database made for one test (zero2prod-style), dropped by [`TestDb::drop_db`].
pub struct TestDb {
    pub url: String,
    admin_url: String,
    name: String,
}

impl TestDb {
    /// Creates a fresh database on the server `admin_url` points at.
    pub async fn create(admin_url: &str) -> Self {
        let name = format!("livros_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {admin_url}: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let mut url = url::Url::parse(admin_url).expect("valid URL");
        url.set_path(&name);
        Self {
            url: url.to_string(),
            admin_url: admin_url.to_string(),
            name,
        }
    }

    /// Drops the database (connections still open are terminated).
    pub async fn drop_db(self) {
        if let Ok(mut conn) = sqlx::PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&mut conn)
            .await;
        }
    }
}

/// A Redis key prefix unique to one test.
pub fn redis_prefix() -> String {
    format!("livros-test-{}:", uuid::Uuid::new_v4().simple())
}

/// Deletes every Redis key under `prefix`.
pub async fn redis_cleanup(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
}

/// Polls `check` until it returns true or `timeout` passes; panics with `what` on timeout.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
