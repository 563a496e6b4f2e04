//! The transactional outbox: a record to publish is written in the same relational
//! transaction as the data it announces, and a relay publishes it afterwards.
//!
//! Publishing after the commit (the products seed's background task) loses the event when
//! the process dies in between; publishing before it announces data that may never be
//! stored. With the outbox, the commit decides both at once, and the relay only has to
//! catch up: a crash anywhere leaves the row unpublished, and the next relay to run — the
//! same process restarted, or another replica — publishes it.
//!
//! **The table** (`outbox`, created by the core's migrations in `migrations/core/`):
//! `topic`, `msg_key`, `payload` (text), and `version`, the announced record's version,
//! published as the header [`VERSION_HEADER`]. A system adds rows with its own SQL inside
//! its own transaction (see [`COLUMNS`]).
//!
//! **The relay** ([`Relay`]) claims the oldest unpublished rows with a lease, publishes
//! them (keyed, in id order), then marks them published — a running relay in the same
//! transaction as its next claim, so a busy relay commits once per batch, and after a
//! short batch it lingers ([`RelayConfig::linger`]) so that writes arriving one by one
//! share a claim. Several relays (API replicas)
//! can share one table: a claim skips rows another relay holds a live lease on, so in the
//! normal case each row is published once. A relay that dies after publishing and before
//! marking leaves its rows to be published again when the lease runs out: delivery is
//! at-least-once, and consumers dedupe by key + version. Published rows are kept for
//! [`RelayConfig::retention`], then deleted.
//!
//! The claim is one SQL text on both engines. On PostgreSQL, two claims racing for the
//! same rows serialize on the row locks, and the loser re-checks the lease condition on
//! the committed row (READ COMMITTED's re-check) and skips it; SQLite has one writer.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{ServiceError, bus_transient};
use crate::bus::{Bus, Record};
use crate::retry::Backoff;
use crate::store::{RelationalStore, Schema, SqlValue, Statement, StoreResult};

/// The outbox table's columns a system writes: `INSERT INTO outbox (topic, msg_key,
/// version, payload) …`, in the transaction that changes the data.
pub const COLUMNS: &str = "outbox (topic, msg_key, version, payload)";

/// The header carrying a published row's `version`.
pub const VERSION_HEADER: &str = "version";

static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("migrations/core/postgres")
};
static SQLITE: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("migrations/core/sqlite")
};

/// The outbox table's migrations, opened with every system's.
pub fn schema() -> Schema {
    Schema {
        postgres: &POSTGRES,
        sqlite: &SQLITE,
        collections: &[],
    }
}

/// Rows not yet published (written, and not marked published by any relay).
pub async fn pending(store: &dyn RelationalStore) -> StoreResult<i64> {
    let rows = store
        .select(&Statement::new(
            "SELECT COUNT(*) AS n FROM outbox WHERE published_at IS NULL",
            vec![],
        ))
        .await?;
    Ok(rows.first().and_then(|r| r.int("n")).unwrap_or(0))
}

/// How a relay runs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Most rows claimed and published at once.
    pub batch: usize,
    /// How long a claim holds rows against other relays: longer than a publish can take.
    pub lease: Duration,
    /// How long an idle relay waits before looking again, when nothing wakes it.
    pub idle: Duration,
    /// How long published rows are kept before they are deleted.
    pub retention: Duration,
    /// How long a busy relay waits after a batch smaller than `batch` before its next
    /// claim: rows committed meanwhile go out in one claim rather than one claim (and one
    /// more commit in the store the writes share) per write.
    pub linger: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch: 500,
            lease: Duration::from_secs(30),
            idle: Duration::from_millis(250),
            retention: Duration::from_secs(3600),
            linger: Duration::from_millis(10),
        }
    }
}

/// Publishes the outbox's rows; see the module's documentation.
#[derive(Clone)]
pub struct Relay {
    store: Arc<dyn RelationalStore>,
    bus: Arc<dyn Bus>,
    config: RelayConfig,
    wake: Arc<Notify>,
}

/// Milliseconds since the Unix epoch, by this machine's clock.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Marks the rows of `claim` published. Only rows still under that claim: if its lease ran
/// out meanwhile, another relay has them and publishes them again (at-least-once).
fn mark(claim: &str) -> Statement {
    Statement::new(
        "UPDATE outbox SET published_at = $1 WHERE claimed_by = $2 AND published_at IS NULL",
        vec![now_ms().into(), claim.into()],
    )
}

impl Relay {
    /// A relay over `store`'s outbox, publishing on `bus`.
    pub fn new(store: Arc<dyn RelationalStore>, bus: Arc<dyn Bus>, config: RelayConfig) -> Self {
        Self {
            store,
            bus,
            config,
            wake: Arc::new(Notify::new()),
        }
    }

    /// What the write path calls after committing outbox rows, so the relay publishes them
    /// now rather than at its next idle look.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Claims, publishes and marks one batch; returns how many rows it published (0: the
    /// outbox had nothing this relay may take).
    pub async fn relay_once(&self) -> Result<usize, ServiceError> {
        let (claim, n) = self.claim_and_publish(None).await?;
        if n > 0 {
            self.store.query(&mark(&claim)).await?;
        }
        Ok(n)
    }

    /// In one transaction, marks the rows of `published` (an earlier claim of this relay,
    /// whose rows the bus has taken) and claims the next batch; then publishes that batch.
    /// Returns the new claim and how many rows it published. Marking with the next claim
    /// makes a busy relay's cycle one commit instead of two; on SQLite every commit takes
    /// the one writer the API's writes wait for.
    async fn claim_and_publish(
        &self,
        published: Option<&str>,
    ) -> Result<(String, usize), ServiceError> {
        let claim = uuid::Uuid::new_v4().to_string();
        let now = now_ms();
        let until = now + self.config.lease.as_millis() as i64;
        let mut statements: Vec<Statement> = published.map(mark).into_iter().collect();
        statements.push(Statement::new(
            "UPDATE outbox SET claimed_by = $1, claimed_until = $2 \
             WHERE id IN (SELECT id FROM outbox WHERE published_at IS NULL \
                 AND (claimed_until IS NULL OR claimed_until < $3) ORDER BY id LIMIT $4) \
               AND published_at IS NULL AND (claimed_until IS NULL OR claimed_until < $3) \
             RETURNING id, topic, msg_key, version, payload",
            vec![
                claim.as_str().into(),
                until.into(),
                now.into(),
                (self.config.batch.max(1) as i64).into(),
            ],
        ));
        let rows = self
            .store
            .transaction(&statements)
            .await?
            .pop()
            .unwrap_or_default();
        if rows.is_empty() {
            return Ok((claim, 0));
        }
        let mut rows: Vec<_> = rows
            .iter()
            .map(|r| {
                let headers = r
                    .int("version")
                    .map(|v| vec![(VERSION_HEADER.to_string(), v.to_string())])
                    .unwrap_or_default();
                let record = Record {
                    topic: r.text("topic").unwrap_or_default(),
                    key: r.text("msg_key"),
                    headers,
                    payload: r.text("payload").unwrap_or_default().into_bytes(),
                };
                (r.int("id").unwrap_or_default(), record)
            })
            .collect();
        // RETURNING gives no order; the bus keeps the order written, per key.
        rows.sort_by_key(|(id, _)| *id);
        let records: Vec<Record> = rows.into_iter().map(|(_, r)| r).collect();
        self.bus.publish(&records).await?;
        Ok((claim, records.len()))
    }

    /// Deletes rows published longer ago than the retention.
    async fn prune(&self) -> StoreResult<()> {
        let cutoff = now_ms() - self.config.retention.as_millis() as i64;
        self.store
            .query(&Statement::new(
                "DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < $1",
                vec![SqlValue::from(cutoff)],
            ))
            .await?;
        Ok(())
    }

    /// Relays until `shutdown`: batch after batch while there are rows, then waits to be
    /// woken or for the idle interval. An unavailable bus or store is retried with
    /// backoff; nothing is marked published that the bus has not acknowledged.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ServiceError> {
        let mut backoff = Backoff::default();
        let mut last_prune = std::time::Instant::now();
        // Published and not yet marked: marked with the next claim.
        let mut unmarked: Option<String> = None;
        while !shutdown.is_cancelled() {
            // On an error `unmarked` stays: marking a claim twice changes nothing.
            match self.claim_and_publish(unmarked.as_deref()).await {
                Ok((claim, n)) => {
                    backoff = Backoff::default();
                    unmarked = (n > 0).then_some(claim);
                    if n > 0 {
                        tracing::debug!(rows = n, "outbox rows published");
                        if n < self.config.batch {
                            tokio::select! {
                                _ = shutdown.cancelled() => break,
                                _ = tokio::time::sleep(self.config.linger) => {}
                            }
                        }
                        continue;
                    }
                }
                Err(e) if retryable(&e) => {
                    if !backoff.wait("publishing the outbox", &e, &shutdown).await {
                        break;
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
            if last_prune.elapsed() > self.config.idle * 40 {
                last_prune = std::time::Instant::now();
                if let Err(e) = self.prune().await {
                    tracing::warn!("pruning published outbox rows: {e}");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.config.idle) => {}
            }
        }
        if let Some(claim) = unmarked
            && let Err(e) = self.store.query(&mark(&claim)).await
        {
            // Left to the lease: the next relay publishes those rows again.
            tracing::warn!("marking published outbox rows on the way out: {e}");
        }
        Ok(())
    }
}

/// Whether the relay should try again: an outage clears up, and a store fault once
/// someone fixes the store (the log says what to fix); rows are never dropped.
fn retryable(e: &ServiceError) -> bool {
    match e {
        ServiceError::Bus(e) => bus_transient(e),
        ServiceError::Store(e) => e.is_retryable(),
        _ => false,
    }
}
