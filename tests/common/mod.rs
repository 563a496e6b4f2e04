//! Helpers shared by the integration test binaries.
#![allow(dead_code)]

use std::time::Duration;

use livros::store::StoreConfig;
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

    /// Closes every connection to the database from the server's side, as a restart does.
    pub async fn close_connections(&self) {
        let mut conn = sqlx::PgConnection::connect(&self.admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.admin_url));
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
            .bind(&self.name)
            .execute(&mut conn)
            .await
            .expect("terminate the test database's connections");
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

/// Waits for `child` (without blocking the test's runtime) and checks it exited 0;
/// panics with `what` and its stderr otherwise.
pub async fn finished(child: std::process::Child, what: &str) -> std::process::Output {
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{what} ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
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

/// PostgreSQL, MongoDB and Redis for one test: a fresh database, a fresh MongoDB database
/// and a fresh Redis key prefix, removed by [`RealStores::cleanup`]. `None` (the test is
/// skipped) when their URLs are unset outside CI.
pub struct RealStores {
    pub config: StoreConfig,
    db: TestDb,
    redis_url: String,
}

impl RealStores {
    pub async fn create() -> Option<Self> {
        let pg = service_url("LIVROS_TEST_POSTGRES_URL")?;
        let redis = service_url("LIVROS_TEST_REDIS_URL")?;
        let mongodb = service_url("LIVROS_TEST_MONGODB_URL")?;
        let db = TestDb::create(&pg).await;
        Some(Self {
            config: StoreConfig {
                postgres_url: Some(db.url.clone()),
                redis_url: Some(redis.clone()),
                redis_prefix: redis_prefix(),
                mongodb_url: Some(mongodb),
                mongodb_database: Some(format!("livros_test_{}", uuid::Uuid::new_v4().simple())),
                mongodb_collections: Default::default(),
            },
            db,
            redis_url: redis,
        })
    }

    pub async fn cleanup(self) {
        self.db.drop_db().await;
        redis_cleanup(&self.redis_url, &self.config.redis_prefix).await;
        if let (Some(url), Some(database)) =
            (&self.config.mongodb_url, &self.config.mongodb_database)
            && let Ok(client) = mongodb::Client::with_uri_str(url).await
        {
            let _ = client.database(database).drop().await;
        }
    }
}

/// A free TCP port on localhost.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private Redis on `port`, persisting every write to `dir` so a restart keeps its data.
pub fn spawn_redis(port: u16, dir: &std::path::Path) -> std::process::Child {
    std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
        ])
        .args(["--appendfsync", "always", "--dir"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server is installed where LIVROS_TEST_REDIS_URL is set")
}

/// A TCP proxy on localhost that a test can cut and restore, to make a server unreachable
/// from the code under test without touching the server: cutting closes every proxied
/// connection and the listening port (new connections are refused); restoring listens again.
pub struct TcpProxy {
    port: u16,
    upstream: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TcpProxy {
    /// Forwards `127.0.0.1:port` to `127.0.0.1:upstream`.
    pub async fn start(port: u16, upstream: u16) -> Self {
        let mut proxy = Self {
            port,
            upstream,
            task: None,
        };
        proxy.restore().await;
        proxy
    }

    /// Listens and forwards again.
    pub async fn restore(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("the proxy's port is free");
        let upstream = self.upstream;
        self.task = Some(tokio::spawn(async move {
            // Dropped with the task on `cut`, which aborts every connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    /// Closes every connection and the listening port.
    pub fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Runs schemathesis (`LIVROS_TEST_SCHEMATHESIS`) against the API at `base`: no 5xx, every
/// answer as its `/openapi.json` documents, bad data refused. Skipped when unset outside CI.
pub async fn schemathesis(base: &str) {
    let Some(st) = service_url("LIVROS_TEST_SCHEMATHESIS") else {
        return;
    };
    let report = tempfile::tempdir().unwrap();
    // schemathesis keeps a cache in its working directory: keep it out of the checkout.
    let out = tokio::process::Command::new(&st)
        .current_dir(report.path())
        .args(["run", &format!("{base}/openapi.json")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance,negative_data_rejection,\
             missing_required_header,unsupported_method",
            "--max-examples",
            "60",
            "--seed",
            "1",
            "--report-dir",
        ])
        .arg(report.path())
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run `{st}` (pip install schemathesis): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `livros` on `dir` for `systems` only, quiet, on the stores `config` names.
pub fn livros(dir: &std::path::Path, config: &StoreConfig, systems: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_livros"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .env("LIVROS_SYSTEMS", systems)
        .env("LIVROS_DATA_DIR", dir)
        // Tests run side by side; the one that looks at the dashboard asks for it.
        .env("LIVROS_DASHBOARD", "off")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    if let Some(url) = &config.postgres_url {
        cmd.env("LIVROS_POSTGRES_URL", url);
    }
    if let Some(url) = &config.redis_url {
        cmd.env("LIVROS_REDIS_URL", url)
            .env("LIVROS_REDIS_PREFIX", &config.redis_prefix);
    }
    if let Some(url) = &config.mongodb_url {
        cmd.env("LIVROS_MONGODB_URL", url);
    }
    if let Some(database) = &config.mongodb_database {
        cmd.env("LIVROS_MONGODB_DATABASE", database);
    }
    cmd
}

/// Runs `cmd` to the end and returns its standard output; fails the test, with both
/// outputs, unless it succeeded.
pub fn output_of(cmd: &mut std::process::Command) -> String {
    let out = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("livros runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A child process killed when dropped, so a failing test leaves no `livros` running.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Points `settings` at the Kafka `brokers`, with topics and groups of this run only (the
/// cluster is shared between tests).
pub fn on_kafka(settings: &mut livros::app::Settings, brokers: String) {
    let run = uuid::Uuid::new_v4().simple().to_string();
    settings.kafka = Some(livros::bus::kafka::KafkaConfig {
        brokers,
        replication: 1,
    });
    settings.topics = livros::bus::Topics::new(format!("t{run}."));
    settings.s2.group = format!("s2-{run}");
}

/// The sum of the samples of `name` in a Prometheus text exposition whose labels include
/// every one of `labels`; `None` when no sample matches.
pub fn metric(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (set, value) = match rest.strip_prefix('{') {
            Some(rest) => match rest.split_once("} ") {
                Some((set, value)) => (set, value),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(value) => ("", value),
                None => continue,
            },
        };
        let has = |(k, v): &(&str, &str)| set.split(',').any(|pair| pair == format!("{k}=\"{v}\""));
        if labels.iter().all(has) {
            let value: f64 = value.trim().parse().unwrap_or(0.0);
            found = Some(found.unwrap_or(0.0) + value);
        }
    }
    found
}
