//! The stores, one trait per kind, one module per implementation:
//!
//! | kind | trait | embedded | real |
//! |---|---|---|---|
//! | relational | [`RelationalStore`] | [`sqlite`] | [`postgres`] |
//! | document | [`DocumentStore`] | [`docs_sqlite`] | [`mongodb`] |
//! | key-value | [`KeyValueStore`] | [`kv_sqlite`] | [`redis`] |
//!
//! The stores know no system and no entity: each system's routing table
//! (`crate::systems::<name>::routing`) decides what it keeps in which kind, and brings its
//! own SQL, collections and keys. Every write a system makes is idempotent.

pub mod docs_sqlite;
pub mod kv_sqlite;
pub mod mongodb;
pub mod postgres;
pub mod redis;
pub mod sqlite;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;

/// The kinds of store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    /// SQLite or PostgreSQL.
    Relational,
    /// Embedded documents, later MongoDB.
    Document,
    /// Embedded hashes and sets, or Redis.
    KeyValue,
}

impl StoreKind {
    /// Name for output lines.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Relational => "relational",
            StoreKind::Document => "document",
            StoreKind::KeyValue => "key-value",
        }
    }
}

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

/// A value bound to, or read from, a SQL statement. Typed even when absent: PostgreSQL
/// wants to know what a NULL parameter is.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// `BIGINT` / `INTEGER`.
    Int(Option<i64>),
    /// `DOUBLE PRECISION` / `REAL` (bind a `NUMERIC` column's value as text, `CAST($n AS NUMERIC)`).
    Real(Option<f64>),
    /// `TEXT`; also how times (RFC 3339) and decimals travel.
    Text(Option<String>),
    /// `BOOLEAN` (SQLite stores 0 or 1).
    Bool(Option<bool>),
}

impl From<&str> for SqlValue {
    fn from(s: &str) -> Self {
        SqlValue::Text(Some(s.to_string()))
    }
}

impl From<String> for SqlValue {
    fn from(s: String) -> Self {
        SqlValue::Text(Some(s))
    }
}

impl From<i64> for SqlValue {
    fn from(n: i64) -> Self {
        SqlValue::Int(Some(n))
    }
}

impl From<bool> for SqlValue {
    fn from(b: bool) -> Self {
        SqlValue::Bool(Some(b))
    }
}

/// One SQL statement and its arguments. The text is the same on every engine: parameters
/// are `$1`, `$2`… (PostgreSQL's form, which SQLite takes too), upserts are
/// `INSERT … ON CONFLICT (…) DO UPDATE`, rows come back with `RETURNING`. Times and
/// decimals are read as text (`CAST(x AS TEXT)`), so one statement reads alike everywhere.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    /// The SQL text.
    pub sql: String,
    /// The values of `$1`, `$2`…
    pub args: Vec<SqlValue>,
}

impl Statement {
    /// A statement with these arguments.
    pub fn new(sql: impl Into<String>, args: Vec<SqlValue>) -> Self {
        Self {
            sql: sql.into(),
            args,
        }
    }
}

/// A row read back: column names and values, in the order the query named them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SqlRow {
    /// `(column, value)` pairs.
    pub columns: Vec<(String, SqlValue)>,
}

impl SqlRow {
    /// The value of `column`, if the row has it.
    pub fn get(&self, column: &str) -> Option<&SqlValue> {
        self.columns
            .iter()
            .find(|(name, _)| name == column)
            .map(|(_, v)| v)
    }

    /// `column` as text (numbers are written out); `None` when NULL or absent.
    pub fn text(&self, column: &str) -> Option<String> {
        match self.get(column)? {
            SqlValue::Text(t) => t.clone(),
            SqlValue::Int(n) => n.map(|n| n.to_string()),
            SqlValue::Real(f) => f.map(|f| f.to_string()),
            SqlValue::Bool(b) => b.map(|b| b.to_string()),
        }
    }

    /// `column` as a whole number (SQLite's booleans are 0 and 1); `None` when NULL,
    /// absent or not a number.
    pub fn int(&self, column: &str) -> Option<i64> {
        match self.get(column)? {
            SqlValue::Int(n) => *n,
            SqlValue::Bool(b) => b.map(i64::from),
            SqlValue::Text(t) => t.as_deref()?.parse().ok(),
            SqlValue::Real(_) => None,
        }
    }
}

/// The relational store: SQL statements run on SQLite or PostgreSQL, the same text on
/// both. It knows no table: each system brings its migrations and its statements.
#[async_trait]
pub trait RelationalStore: Send + Sync {
    /// Runs `statements` in order in one transaction, returning the rows each produced
    /// (`SELECT`, or `RETURNING`); all of them or none take effect.
    async fn transaction(&self, statements: &[Statement]) -> StoreResult<Vec<Vec<SqlRow>>>;
    /// The rows of one statement (any statement; one statement is atomic on its own).
    async fn query(&self, statement: &Statement) -> StoreResult<Vec<SqlRow>> {
        let mut results = self.transaction(std::slice::from_ref(statement)).await?;
        Ok(results.pop().unwrap_or_default())
    }
    /// The rows of one statement that only reads: it runs beside writes, never waiting for
    /// a writer's lock, and sees what was committed before it started.
    async fn select(&self, statement: &Statement) -> StoreResult<Vec<SqlRow>> {
        self.query(statement).await
    }
    /// Answers when the store is reachable (for readiness checks).
    async fn ping(&self) -> StoreResult<()>;
    /// `sqlite (path)` or `postgres (redacted url)`.
    fn describe(&self) -> String;
}

/// A table for [`upsert`]: its name, the columns of its conflict key, and every column
/// written.
#[derive(Debug, Clone, Copy)]
pub struct Table {
    /// The table's name.
    pub name: &'static str,
    /// The columns of the unique key rows are upserted on.
    pub key: &'static [&'static str],
    /// Every column written, the key's included, in the order of each row's values.
    pub columns: &'static [&'static str],
    /// A column set to `CURRENT_TIMESTAMP` whenever a row really changes, if any.
    pub touched: Option<&'static str>,
}

/// Most bound values in one statement: under SQLite's limit (32,766) and PostgreSQL's (65,535).
const MAX_BOUND_VALUES: usize = 30_000;

/// Every row of reading `statements` (as [`select_in`] makes them), each run with
/// [`RelationalStore::select`].
pub async fn select_rows<S: RelationalStore + ?Sized>(
    store: &S,
    statements: &[Statement],
) -> StoreResult<Vec<SqlRow>> {
    let mut rows = Vec::new();
    for statement in statements {
        rows.append(&mut store.select(statement).await?);
    }
    Ok(rows)
}

/// The statements that upsert `rows` into `table`: multi-row `INSERT … ON CONFLICT DO
/// UPDATE`, updating only rows whose values changed (so a redelivery writes nothing), in
/// as few statements as the engines' parameter limits allow. When a batch holds a key
/// twice the last row wins (a statement may touch a row only once).
pub fn upsert(table: &Table, rows: &[Vec<SqlValue>]) -> Vec<Statement> {
    let rows = last_by(rows, |row| row_key(table, row));
    let width = table.columns.len().max(1);
    let per_statement = (MAX_BOUND_VALUES / width).max(1);
    let columns = table.columns.join(", ");
    let changing: Vec<&str> = table
        .columns
        .iter()
        .copied()
        .filter(|c| !table.key.contains(c))
        .collect();
    let conflict = if changing.is_empty() {
        " DO NOTHING".to_string()
    } else {
        let mut set: Vec<String> = changing
            .iter()
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        if let Some(touched) = table.touched {
            set.push(format!("{touched} = CURRENT_TIMESTAMP"));
        }
        let current: Vec<String> = changing
            .iter()
            .map(|c| format!("{}.{c}", table.name))
            .collect();
        let incoming: Vec<String> = changing.iter().map(|c| format!("excluded.{c}")).collect();
        format!(
            " DO UPDATE SET {} WHERE ({}) IS DISTINCT FROM ({})",
            set.join(", "),
            current.join(", "),
            incoming.join(", ")
        )
    };
    rows.chunks(per_statement)
        .map(|chunk| {
            let mut sql = format!("INSERT INTO {} ({columns}) VALUES ", table.name);
            let mut args = Vec::with_capacity(chunk.len() * width);
            for (i, row) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push('(');
                for (j, value) in row.iter().enumerate() {
                    if j > 0 {
                        sql.push_str(", ");
                    }
                    args.push(value.clone());
                    sql.push_str(&format!("${}", args.len()));
                }
                sql.push(')');
            }
            sql.push_str(&format!(" ON CONFLICT ({})", table.key.join(", ")));
            sql.push_str(&conflict);
            Statement { sql, args }
        })
        .collect()
}

/// The key columns of `row`, as one comparable value.
fn row_key(table: &Table, row: &[SqlValue]) -> String {
    table
        .key
        .iter()
        .filter_map(|k| table.columns.iter().position(|c| c == k))
        .map(|i| format!("{:?}", row.get(i)))
        .collect::<Vec<_>>()
        .join("\u{1f}")
}

/// `SELECT <columns> FROM <table> WHERE <key> IN ($1, …)` for each slice of `keys` that
/// fits one statement.
pub fn select_in(select: &str, column: &str, keys: &[String]) -> Vec<Statement> {
    keys.chunks(MAX_BOUND_VALUES)
        .map(|chunk| {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            Statement {
                sql: format!("{select} WHERE {column} IN ({})", placeholders.join(", ")),
                args: chunk.iter().map(|k| SqlValue::from(k.as_str())).collect(),
            }
        })
        .collect()
}

/// A condition on documents, for [`DocumentStore::find`].
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// The top-level `field` equals `value`, or, when it is an array, contains it.
    Eq {
        /// Field name.
        field: String,
        /// The value: a string, a number or a boolean, compared as JSON (`5` is not `"5"`).
        value: Value,
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

/// A filter on a field equal to `value` (text, a number, a boolean).
pub fn eq(field: &str, value: impl Into<Value>) -> Filter {
    Filter::Eq {
        field: field.to_string(),
        value: value.into(),
    }
}

/// The order of [`DocumentStore::find_sorted`]'s results: by a top-level field, then by
/// id (so pages are stable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sort {
    /// The field.
    pub field: String,
    /// Highest first.
    pub descending: bool,
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
    ) -> StoreResult<Vec<Value>> {
        self.find_sorted(collection, filters, None, page).await
    }
    /// Documents matching every filter, in `sort`'s order (by id when `None`), one page.
    async fn find_sorted(
        &self,
        collection: &str,
        filters: &[Filter],
        sort: Option<&Sort>,
        page: Page,
    ) -> StoreResult<Vec<Value>>;
    /// A name for logs.
    fn describe(&self) -> String;
}

/// One write to the key-value store, with Redis' semantics.
#[derive(Debug, Clone, PartialEq)]
pub enum KvWrite {
    /// `HSET key field value …`: set fields of a hash, leaving the others.
    HSet {
        /// The hash's key.
        key: String,
        /// Field/value pairs.
        fields: Vec<(String, String)>,
    },
    /// `HINCRBY key field by`: add `by` to a whole-number field (absent counts as 0).
    HIncrBy {
        /// The hash's key.
        key: String,
        /// The field.
        field: String,
        /// What to add (negative to subtract).
        by: i64,
    },
    /// `SADD key member …`: add members to a set.
    SAdd {
        /// The set's key.
        key: String,
        /// Members to add.
        members: Vec<String>,
    },
    /// `SET key value [PX ttl]`: a string, gone after `ttl` when one is given.
    Set {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// How long it lives; `None`: until overwritten.
        ttl: Option<std::time::Duration>,
    },
    /// `SET key value NX [PX ttl]`: a string, only if the key holds none (an expired one
    /// counts as none). For a placeholder that a later write may have replaced already.
    SetIfAbsent {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// How long it lives; `None`: until overwritten.
        ttl: Option<std::time::Duration>,
    },
    /// `ZADD key score member …`: set members' scores in a sorted set.
    ZAdd {
        /// The sorted set's key.
        key: String,
        /// Member/score pairs.
        members: Vec<(String, f64)>,
    },
    /// `ZADD key GT score member`: raise a member's score to `score` unless it is higher
    /// already (a member not there is added). For counts that only grow, written by
    /// several writers: a late writer with an older count cannot lower it.
    ZRaise {
        /// The sorted set's key.
        key: String,
        /// The member.
        member: String,
        /// Its score, if higher than the current one.
        score: f64,
    },
    /// `ZREM key member …`: remove members from a sorted set.
    ZRem {
        /// The sorted set's key.
        key: String,
        /// Members to remove.
        members: Vec<String>,
    },
    /// `ZREMRANGEBYSCORE key -inf max`: remove the members scored `max` or less.
    ZRemUpTo {
        /// The sorted set's key.
        key: String,
        /// Highest score removed.
        max: f64,
    },
    /// `PEXPIRE key ttl`: the key (of any type) is gone after `ttl`; no effect on a key
    /// that does not exist. Writing to a hash, set or sorted set keeps its expiry.
    Expire {
        /// The key.
        key: String,
        /// How long it has left.
        ttl: std::time::Duration,
    },
    /// `DEL key`: remove the key, whatever it holds.
    Del {
        /// The key.
        key: String,
    },
}

/// The key-value store: Redis' hashes, sets, sorted sets and strings with expiry, the
/// subset our data needs. An expired key reads as absent, whatever its type.
#[async_trait]
pub trait KeyValueStore: Send + Sync {
    /// Applies the writes in order, in one round trip, all of them or none (`MULTI`, a
    /// transaction).
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
    /// One field of each `(hash, field)`, in order (`HGET`, in one round trip).
    async fn hget_many(&self, fields: &[(String, String)]) -> StoreResult<Vec<Option<String>>>;
    /// Which of `keys` exist.
    async fn existing(&self, keys: &[String]) -> StoreResult<HashSet<String>>;
    /// Members of a set; empty when the key does not exist.
    async fn smembers(&self, key: &str) -> StoreResult<BTreeSet<String>>;
    /// How many members each set has, in the order of `keys` (`SCARD`; 0 when absent).
    async fn scard_many(&self, keys: &[String]) -> StoreResult<Vec<i64>>;
    /// The `limit` highest-scored members of a sorted set, highest first (ties: the
    /// greater member first), with their scores (`ZREVRANGE … WITHSCORES`).
    async fn ztop(&self, key: &str, limit: usize) -> StoreResult<Vec<(String, f64)>>;
    /// How many keys start with `prefix`.
    async fn count_prefix(&self, prefix: &str) -> StoreResult<i64>;
    /// A string's value; `None` when absent or expired.
    async fn get(&self, key: &str) -> StoreResult<Option<String>>;
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
    /// MongoDB database; [`DEFAULT_MONGODB_DATABASE`] when unset.
    pub mongodb_database: Option<String>,
    /// MongoDB collection names by the name a system uses, where they differ
    /// (`books` → `livros`); a collection not listed keeps its own name.
    pub mongodb_collections: HashMap<String, String>,
}

/// The MongoDB database used when none is configured: the first seed's name, which the
/// CLI's `--mongodb-database` defaults to as well, so a database the original filled is
/// found without configuration.
pub const DEFAULT_MONGODB_DATABASE: &str = "books_db";

/// One store of each kind, shared by every system; each system's routing table says
/// what it keeps in which.
#[derive(Clone)]
pub struct Stores {
    /// SQL: SQLite or PostgreSQL.
    pub relational: Arc<dyn RelationalStore>,
    /// JSON documents: embedded or MongoDB.
    pub document: Arc<dyn DocumentStore>,
    /// Hashes and sets: embedded or Redis.
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

/// What a system keeps in the stores, for them to prepare at start.
///
/// Relational: its migrations, one directory per engine (`sqlx::migrate!`). Every system's
/// versions share one `_sqlx_migrations` table, so they must be unique across systems (a
/// timestamp prefix makes them so); each migrator ignores the others' rows. Documents: its
/// collections and the fields it looks them up by (every collection is also indexed on
/// `id`, unique).
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    /// For PostgreSQL.
    pub postgres: &'static sqlx::migrate::Migrator,
    /// For the embedded SQLite.
    pub sqlite: &'static sqlx::migrate::Migrator,
    /// Its document collections: `(name, fields to index)`.
    pub collections: &'static [(&'static str, &'static [&'static str])],
}

impl Stores {
    /// The store of `kind`, described for logs (`sqlite (…)`, `redis (…)`).
    pub fn describe(&self, kind: StoreKind) -> String {
        match kind {
            StoreKind::Relational => self.relational.describe(),
            StoreKind::Document => self.document.describe(),
            StoreKind::KeyValue => self.key_value.describe(),
        }
    }

    /// Opens every store: embedded files under `data_dir`, or the servers `config` names,
    /// and prepares them for `schemas` (migrations, indexes). Fails fast, naming the store,
    /// when one cannot be opened.
    pub async fn open(
        data_dir: &Path,
        config: &StoreConfig,
        schemas: &[Schema],
    ) -> Result<Self, OpenError> {
        std::fs::create_dir_all(data_dir).map_err(|e| OpenError {
            kind: "embedded",
            location: data_dir.display().to_string(),
            reason: e.to_string(),
            hint: "Check that the data directory (--data-dir) is writable.".into(),
        })?;
        let relational: Arc<dyn RelationalStore> = match &config.postgres_url {
            Some(url) => {
                let migrators: Vec<_> = schemas.iter().map(|m| m.postgres).collect();
                Arc::new(postgres::PostgresStore::connect(url, &migrators).await?)
            }
            None => {
                let migrators: Vec<_> = schemas.iter().map(|m| m.sqlite).collect();
                Arc::new(
                    sqlite::SqliteStore::open(&data_dir.join("relational.db"), &migrators).await?,
                )
            }
        };
        let document: Arc<dyn DocumentStore> = match &config.mongodb_url {
            Some(url) => Arc::new(
                self::mongodb::MongoStore::connect(self::mongodb::MongoConfig {
                    url: url.clone(),
                    database: config
                        .mongodb_database
                        .clone()
                        .unwrap_or_else(|| DEFAULT_MONGODB_DATABASE.into()),
                    collections: schemas
                        .iter()
                        .flat_map(|s| s.collections.iter())
                        .map(|(name, indexed)| {
                            let physical = config
                                .mongodb_collections
                                .get(*name)
                                .cloned()
                                .unwrap_or_else(|| name.to_string());
                            (
                                name.to_string(),
                                (physical, indexed.iter().map(|f| f.to_string()).collect()),
                            )
                        })
                        .collect(),
                })
                .await?,
            ),
            None => Arc::new(
                docs_sqlite::SqliteDocumentStore::open(
                    &data_dir.join("documents.db"),
                    &schemas
                        .iter()
                        .flat_map(|s| s.collections.iter())
                        .flat_map(|(_, fields)| fields.iter().copied())
                        .collect::<Vec<_>>(),
                )
                .await?,
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
    schema: &[&str],
    migrations: &[&sqlx::migrate::Migrator],
) -> Result<crate::sqlite::Pools, OpenError> {
    let open_error = |reason: String| OpenError {
        kind,
        location: path.display().to_string(),
        reason,
        hint: "Check that the data directory (--data-dir) is writable.".into(),
    };
    let pools = crate::sqlite::open(path, 4)
        .await
        .map_err(|e| open_error(e.to_string()))?;
    crate::sqlite::apply_schema(&pools.writer, schema)
        .await
        .map_err(|e| open_error(e.to_string()))?;
    if !migrations.is_empty() {
        // Processes sharing the data dir may start together; sqlx's SQLite migrator does
        // not lock, so a file lock serializes them.
        let _guard = migration_lock(path).map_err(|e| open_error(e.to_string()))?;
        for migrator in migrations {
            migrator
                .run(&mut *pools.writer.lock().await)
                .await
                .map_err(|e| open_error(format!("migration failed: {e}")))?;
        }
    }
    Ok(pools)
}

/// Keeps one item per key, the last one, in the order items came: a batch may carry a
/// record twice, and a single upsert statement may touch a row only once.
pub(crate) fn last_by<T, K: std::hash::Hash + Eq>(items: &[T], key: impl Fn(&T) -> K) -> Vec<&T> {
    let mut last: HashMap<K, usize> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        last.insert(key(item), i);
    }
    items
        .iter()
        .enumerate()
        .filter(|(i, item)| last[&key(item)] == *i)
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
