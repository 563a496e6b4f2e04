//! The stores, one trait per kind, one module per implementation:
//!
//! | kind | trait | embedded | real |
//! |---|---|---|---|
//! | relational | [`RelationalStore`] | [`sqlite`] | [`postgres`] |
//! | document | [`DocumentStore`] | [`docs_sqlite`] | [`mongodb`] |
//! | key-value | [`KeyValueStore`] | [`kv_sqlite`] | [`redis`] |
//!
//! Which entity goes to which kind is decided in [`crate::routing`], nowhere else.
//! Every write is an idempotent upsert keyed by the entity's id.

pub mod docs_sqlite;
pub mod kv_sqlite;
pub mod mongodb;
pub mod postgres;
pub mod redis;
pub mod sqlite;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::domain::Customer;

/// Errors of a store, by whose fault they are: that decides what happens next.
///
/// | variant | whose fault | S2 | HTTP API |
/// |---|---|---|---|
/// | `Unavailable` | nobody's: the store is down or busy | retries with backoff | `503` + `Retry-After` |
/// | `Rejected` | the record's: it breaks a rule of the store | dead-letters that record | `422` |
/// | `Fault` | ours or the operator's: a schema that does not fit, no permission, a bug | retries with backoff, logging what to fix | `500` |
///
/// A record is only ever rejected for what is wrong with the record, so a store that is
/// set up wrong stops the pipeline (loudly) instead of dead-lettering good data.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached right now (refused, timeout, pool exhausted, I/O): retry.
    #[error("{store} unavailable: {reason}")]
    Unavailable {
        /// Which store, for the log line.
        store: &'static str,
        /// The driver's words.
        reason: String,
    },
    /// The store refused this data; retrying the same data will fail again.
    #[error("{store} rejected the write: {reason}")]
    Rejected {
        /// Which store.
        store: &'static str,
        /// The driver's words.
        reason: String,
    },
    /// The store failed for a reason that is not the data's: the schema does not match
    /// what we expect, a permission is missing, stored data is not in the layout we read.
    /// Someone has to fix the store; the same data then goes through.
    #[error(
        "{store} failed, and not because of the data (check the store's schema and permissions): {reason}"
    )]
    Fault {
        /// Which store.
        store: &'static str,
        /// The driver's words.
        reason: String,
    },
}

/// Whose fault a driver error is; see [`StoreError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blame {
    /// Nobody's: retry later.
    Transient,
    /// The record's.
    Data,
    /// The store's set-up, or ours.
    Store,
}

impl StoreError {
    /// True when retrying later may succeed by itself.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }

    /// True when the record itself is at fault; the only errors that turn a record away.
    pub fn is_rejection(&self) -> bool {
        matches!(self, StoreError::Rejected { .. })
    }

    /// True when the same write should be tried again later rather than given up on:
    /// an outage clears by itself, a fault once someone fixes the store.
    pub fn is_retryable(&self) -> bool {
        !self.is_rejection()
    }

    /// Classifies a sqlx error. Connection-level problems are transient; what the database
    /// says is the record's fault ([`postgres_blame`], [`sqlite_blame`]) is rejected;
    /// everything else (an unknown column, a value we cannot decode, a permission) is the
    /// store's.
    pub(crate) fn from_sqlx(store: &'static str, e: sqlx::Error) -> Self {
        let blame = match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => Blame::Transient,
            sqlx::Error::Encode(_) => Blame::Data,
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default();
                let code = code.as_ref();
                if code.len() == 5 {
                    postgres_blame(code)
                } else {
                    sqlite_blame(code)
                }
            }
            _ => Blame::Store,
        };
        Self::classified(store, blame, e)
    }

    /// The variant `blame` calls for, with the driver's words as reason.
    pub(crate) fn classified(store: &'static str, blame: Blame, e: impl std::fmt::Display) -> Self {
        let reason = e.to_string();
        match blame {
            Blame::Transient => StoreError::Unavailable { store, reason },
            Blame::Data => StoreError::Rejected { store, reason },
            Blame::Store => StoreError::Fault { store, reason },
        }
    }
}

/// PostgreSQL's SQLSTATE classes: connection (08), resource (53), shutdown (57P) and
/// serialization (40) problems clear up on their own; a data exception (22) or an
/// integrity constraint violation (23) is the record's fault.
fn postgres_blame(sqlstate: &str) -> Blame {
    if ["08", "53", "57P", "40"]
        .iter()
        .any(|p| sqlstate.starts_with(p))
    {
        Blame::Transient
    } else if sqlstate.starts_with("22") || sqlstate.starts_with("23") {
        Blame::Data
    } else {
        Blame::Store
    }
}

/// SQLite's result codes (primary in the low byte): BUSY (5) and LOCKED (6) clear up on
/// their own; TOOBIG (18), CONSTRAINT (19) and MISMATCH (20) are the record's fault.
fn sqlite_blame(code: &str) -> Blame {
    match code.parse::<u32>().map(|n| n & 0xff) {
        Ok(5 | 6) => Blame::Transient,
        Ok(18..=20) => Blame::Data,
        _ => Blame::Store,
    }
}

/// Result of store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// The relational store: customers (and, in later systems, other structured records).
#[async_trait]
pub trait RelationalStore: Send + Sync {
    /// Inserts or updates customers by id, all in one round trip and one transaction.
    async fn upsert_customers(&self, customers: &[Customer]) -> StoreResult<()>;
    /// One customer by id.
    async fn customer(&self, id: &str) -> StoreResult<Option<Customer>>;
    /// Which of `ids` exist.
    async fn existing_customers(&self, ids: &[String]) -> StoreResult<HashSet<String>>;
    /// Customers ordered by id, one page of them; only those with this e-mail address
    /// when `email` is given (e-mail is not unique).
    async fn customers(&self, email: Option<&str>, page: Page) -> StoreResult<Vec<Customer>>;
    /// How many customers are stored.
    async fn count_customers(&self) -> StoreResult<i64>;
    /// Answers when the store is reachable (for readiness checks).
    async fn ping(&self) -> StoreResult<()>;
    /// `sqlite (path)` or `postgres (redacted url)`.
    fn describe(&self) -> String;
}

/// A condition on documents, for [`DocumentStore::find`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// The top-level `field` equals `value`, or, when it is an array, contains it.
    Eq {
        /// Field name.
        field: String,
        /// The value, compared as a string.
        value: String,
    },
    /// Every word occurs in the text of `field`, ignoring case (`Words{title, ["dom"]}`
    /// matches "Dom Casmurro").
    Words {
        /// Field name.
        field: String,
        /// The words.
        words: Vec<String>,
    },
}

/// The filters of a book search, as `livros books` and `GET /books` take them: an author
/// (exact, as stored), an ISBN (hyphens and spaces ignored), words of the title.
pub fn book_filters(author: Option<&str>, isbn: Option<&str>, title: Option<&str>) -> Vec<Filter> {
    let mut filters = Vec::new();
    if let Some(a) = author {
        filters.push(Filter::Eq {
            field: "authors".into(),
            value: a.trim().to_string(),
        });
    }
    if let Some(i) = isbn {
        filters.push(Filter::Eq {
            field: "isbn".into(),
            value: i.chars().filter(|c| c.is_ascii_alphanumeric()).collect(),
        });
    }
    if let Some(t) = title {
        filters.push(Filter::Words {
            field: "title".into(),
            words: t.split_whitespace().map(str::to_string).collect(),
        });
    }
    filters
}

/// Which slice of the results, ordered by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Results to skip.
    pub skip: u64,
    /// Most results to return.
    pub limit: u64,
}

/// The document store: JSON documents in named collections, keyed by id.
#[async_trait]
pub trait DocumentStore: Send + Sync {
    /// Inserts or replaces documents by id. One result per document, in order, so a
    /// document the store refuses fails alone; `Err` is for the store being unreachable.
    async fn upsert(
        &self,
        collection: &str,
        docs: &[(String, Value)],
    ) -> StoreResult<Vec<StoreResult<()>>>;
    /// One document by id.
    async fn get(&self, collection: &str, id: &str) -> StoreResult<Option<Value>>;
    /// Which of `ids` exist.
    async fn existing(&self, collection: &str, ids: &[String]) -> StoreResult<HashSet<String>>;
    /// How many documents the collection holds.
    async fn count(&self, collection: &str) -> StoreResult<i64>;
    /// Answers when the store is reachable (for readiness checks).
    async fn ping(&self) -> StoreResult<()>;
    /// Documents matching every filter, ordered by id, one page of them.
    async fn find(
        &self,
        collection: &str,
        filters: &[Filter],
        page: Page,
    ) -> StoreResult<Vec<Value>>;
    /// A name for logs.
    fn describe(&self) -> String;
}

/// One write to the key-value store, with Redis' semantics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvWrite {
    /// `HSET key field value …`: set fields of a hash, leaving the others.
    HSet {
        /// The hash's key.
        key: String,
        /// Field/value pairs.
        fields: Vec<(String, String)>,
    },
    /// `SADD key member …`: add members to a set.
    SAdd {
        /// The set's key.
        key: String,
        /// Members to add.
        members: Vec<String>,
    },
}

/// The key-value store: Redis' hashes and sets, the subset our data needs.
#[async_trait]
pub trait KeyValueStore: Send + Sync {
    /// Applies the writes in one round trip (a pipeline, a transaction).
    async fn write(&self, writes: &[KvWrite]) -> StoreResult<()>;
    /// Every field of a hash; empty when the key does not exist.
    async fn hgetall(&self, key: &str) -> StoreResult<BTreeMap<String, String>>;
    /// Every field of each hash, in the order of `keys` (a network store does it in one
    /// round trip; the default asks one key at a time).
    async fn hgetall_many(&self, keys: &[String]) -> StoreResult<Vec<BTreeMap<String, String>>> {
        let mut hashes = Vec::with_capacity(keys.len());
        for key in keys {
            hashes.push(self.hgetall(key).await?);
        }
        Ok(hashes)
    }
    /// Which of `keys` exist.
    async fn existing(&self, keys: &[String]) -> StoreResult<HashSet<String>>;
    /// Members of a set; empty when the key does not exist.
    async fn smembers(&self, key: &str) -> StoreResult<BTreeSet<String>>;
    /// How many keys start with `prefix`.
    async fn count_prefix(&self, prefix: &str) -> StoreResult<i64>;
    /// Answers when the store is reachable (for readiness checks).
    async fn ping(&self) -> StoreResult<()>;
    /// A name for logs.
    fn describe(&self) -> String;
}

/// Where each store lives: embedded under the data dir unless a URL is given.
#[derive(Debug, Clone, Default)]
pub struct StoreConfig {
    /// PostgreSQL URL for the relational store.
    pub postgres_url: Option<String>,
    /// Redis URL for the key-value store.
    pub redis_url: Option<String>,
    /// Prefix for every Redis key (to share one Redis between deployments or tests).
    pub redis_prefix: String,
    /// MongoDB URL for the document store.
    pub mongodb_url: Option<String>,
    /// MongoDB database; `books_db` when unset.
    pub mongodb_database: Option<String>,
    /// MongoDB collection holding books; `books` when unset.
    pub mongodb_books_collection: Option<String>,
}

/// The stores S2 writes to, one of each kind.
#[derive(Clone)]
pub struct Stores {
    /// Customers.
    pub relational: Arc<dyn RelationalStore>,
    /// Books.
    pub document: Arc<dyn DocumentStore>,
    /// Orders.
    pub key_value: Arc<dyn KeyValueStore>,
}

/// A store that could not be opened at start: says which one, where, and what to check.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the {kind} store at {location}: {reason}. {hint}")]
pub struct OpenError {
    /// `relational`, `document`, `key-value`.
    pub kind: &'static str,
    /// A path or a redacted URL.
    pub location: String,
    /// The driver's words.
    pub reason: String,
    /// What the user should check.
    pub hint: String,
}

impl Stores {
    /// Opens every store: embedded files under `data_dir`, or the servers `config` names.
    /// Migrations run here. Fails fast, naming the store, when one cannot be opened.
    pub async fn open(data_dir: &Path, config: &StoreConfig) -> Result<Self, OpenError> {
        std::fs::create_dir_all(data_dir).map_err(|e| OpenError {
            kind: "embedded",
            location: data_dir.display().to_string(),
            reason: e.to_string(),
            hint: "Check that the data directory (--data-dir) is writable.".into(),
        })?;
        let relational: Arc<dyn RelationalStore> = match &config.postgres_url {
            Some(url) => Arc::new(postgres::PostgresStore::connect(url).await?),
            None => Arc::new(sqlite::SqliteStore::open(&data_dir.join("relational.db")).await?),
        };
        let document: Arc<dyn DocumentStore> = match &config.mongodb_url {
            Some(url) => Arc::new(
                self::mongodb::MongoStore::connect(self::mongodb::MongoConfig {
                    url: url.clone(),
                    database: config
                        .mongodb_database
                        .clone()
                        .unwrap_or_else(|| "books_db".into()),
                    collections: [(
                        crate::routing::BOOKS_COLLECTION.to_string(),
                        config
                            .mongodb_books_collection
                            .clone()
                            .unwrap_or_else(|| crate::routing::BOOKS_COLLECTION.into()),
                    )]
                    .into(),
                })
                .await?,
            ),
            None => Arc::new(
                docs_sqlite::SqliteDocumentStore::open(&data_dir.join("documents.db")).await?,
            ),
        };
        let key_value: Arc<dyn KeyValueStore> = match &config.redis_url {
            Some(url) => Arc::new(redis::RedisStore::connect(url, &config.redis_prefix).await?),
            None => Arc::new(kv_sqlite::SqliteKvStore::open(&data_dir.join("keyvalue.db")).await?),
        };
        Ok(Self {
            relational,
            document,
            key_value,
        })
    }
}

/// A customer row of either SQL store. The original bookstore's table allows NULL names
/// and e-mails; they are read as empty text, not as an error.
pub(crate) fn customer_row<R>(store: &'static str, row: &R) -> StoreResult<Customer>
where
    R: sqlx::Row,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
{
    let text = |column: &str| -> StoreResult<String> {
        row.try_get::<Option<String>, _>(column)
            .map(Option::unwrap_or_default)
            .map_err(|e| StoreError::from_sqlx(store, e))
    };
    Ok(Customer {
        id: text("id")?,
        name: text("name")?,
        email: text("email")?,
    })
}

/// Checks that a sqlx pool's database answers (`ping` of the SQL stores).
pub(crate) async fn ping_pool<DB: sqlx::Database>(
    store: &'static str,
    pool: &sqlx::Pool<DB>,
) -> StoreResult<()> {
    use sqlx::Connection;
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| StoreError::from_sqlx(store, e))?;
    conn.ping()
        .await
        .map_err(|e| StoreError::from_sqlx(store, e))
}

/// Opens the SQLite file of an embedded store of `kind`, applies its schema and runs its
/// migrations, with the error a user sees when that fails.
pub(crate) async fn open_embedded(
    kind: &'static str,
    path: &Path,
    schema: &[&'static str],
    migrator: Option<&sqlx::migrate::Migrator>,
) -> Result<sqlx::SqlitePool, OpenError> {
    let open_error = |reason: String| OpenError {
        kind,
        location: path.display().to_string(),
        reason,
        hint: "Check that the data directory (--data-dir) is writable.".into(),
    };
    let pool = crate::sqlite::open(path, 4)
        .await
        .map_err(|e| open_error(e.to_string()))?;
    crate::sqlite::apply_schema(&pool, schema)
        .await
        .map_err(|e| open_error(e.to_string()))?;
    if let Some(migrator) = migrator {
        // Processes sharing the data dir may start together; sqlx's SQLite migrator does
        // not lock, so a file lock serializes them.
        let _guard = migration_lock(path).map_err(|e| open_error(e.to_string()))?;
        migrator
            .run(&pool)
            .await
            .map_err(|e| open_error(format!("migration failed: {e}")))?;
    }
    Ok(pool)
}

/// Keeps one item per id, the last one: a batch may carry an entity twice, and a single
/// upsert statement may touch a row only once.
pub(crate) fn last_by_id<T>(items: &[T], id: impl Fn(&T) -> &String) -> Vec<&T> {
    let mut last: std::collections::HashMap<&String, usize> = std::collections::HashMap::new();
    for (i, item) in items.iter().enumerate() {
        last.insert(id(item), i);
    }
    items
        .iter()
        .enumerate()
        .filter(|(i, item)| last[id(item)] == *i)
        .map(|(_, item)| item)
        .collect()
}

/// An exclusive lock on `<db>.migrate.lock`, held while the returned file is open.
pub(crate) fn migration_lock(db: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(db.with_extension("migrate.lock"))?;
    file.lock()?;
    Ok(file)
}

/// Hides the password of a URL, for messages and logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparsable URL>".into(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(
            super::redact("postgres://u:secret@db:5432/x"),
            "postgres://u:***@db:5432/x"
        );
        assert_eq!(
            super::redact("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
