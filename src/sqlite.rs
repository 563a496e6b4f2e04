//! SQLite plumbing shared by every embedded component (bus, relational, document and
//! key-value stores): one file each under the data dir, opened the same way.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions as _, Connection as _};
use tokio_util::sync::{CancellationToken, DropGuard};

/// The writer connection's page cache, in KiB.
pub const WRITER_CACHE_KIB: u32 = 8 * 1024;
/// Each reader connection's page cache, in KiB.
pub const READER_CACHE_KIB: u32 = 2 * 1024;

/// Prepared statements each connection keeps (sqlx's default is 100).
///
/// A batch's statement has one text per batch size (a row's placeholders each), so a
/// cache fills with statements of every size it has seen, each holding its compiled
/// program in SQLite's heap and its text in ours: about 0.4 KiB a row, 1–2 MiB for one
/// of S2's 1,000-row batches. With 100 kept on each of the 20 connections, a 4-minute
/// soak at 900 events/s took SQLite's heap to 434 MB and Rust's to 93 MB, still
/// climbing; with 16, to 81 MB and 66 MB. Preparing costs (a 1,000-row upsert 1.9 ms
/// cached, 2.5 ms not), so the sizes in use stay cached; the HTTP writes, whose batches
/// reuse a few sizes, were no slower with 16 kept, nor with 8 (ARCHITECTURE.md).
const STATEMENT_CACHE: usize = 16;

/// How often a file's WAL is copied back into it, off the write path.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// WAL pages after which the writer checkpoints by itself (SQLite's `wal_autocheckpoint`):
/// only reached when the background checkpoint falls behind; it bounds the WAL (64 MiB).
const WRITER_CHECKPOINT_PAGES: u32 = 16_384;

/// An embedded file's connections: one writer and a few readers.
///
/// SQLite lets one transaction write at a time, so more writer connections only queue on
/// its lock; one keeps its page cache warm (a connection that did not make the last write
/// must drop its cache and read the pages again). Readers never touch the write lock
/// (WAL: they read the last committed state while the writer goes on).
#[derive(Debug, Clone)]
pub struct Pools {
    /// The one connection every write transaction goes through.
    pub writer: Writer,
    /// Connections for reads outside a write transaction.
    pub reader: Readers,
    /// The file's background checkpoint: runs while a clone of this is kept.
    pub checkpoint: Checkpoint,
}

/// A file's one write connection, held for as long as the file is open and taken in turn
/// ([`Writer::lock`]) rather than pooled.
///
/// sqlx's pool pings a connection on its way back and, unless told not to, again on its
/// way out: two more trips to SQLite's thread around every write transaction, and with one
/// writer both lie on the path of the next transaction. A connection to a local file does
/// not go stale, so there is nothing for them to find.
#[derive(Debug, Clone)]
pub struct Writer {
    conn: Arc<tokio::sync::Mutex<SqliteConnection>>,
    /// Set while a [`Writer::script`] runs: a script dropped half-way (its task cancelled)
    /// may leave its transaction open, which sqlx does not know of, so the next
    /// [`Writer::lock`] rolls it back.
    script_unfinished: Arc<AtomicBool>,
}

impl Writer {
    fn new(conn: SqliteConnection) -> Self {
        Self {
            conn: Arc::new(tokio::sync::Mutex::new(conn)),
            script_unfinished: Arc::default(),
        }
    }

    /// The write connection, once every write before this one is done with it (in the
    /// order they asked). A transaction begun on it and dropped unfinished is rolled back
    /// before the next statement runs (sqlx queues the rollback on the connection; a
    /// script's, by this).
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, SqliteConnection> {
        let mut conn = self.conn.lock().await;
        if self.script_unfinished.load(Ordering::Acquire) {
            // "No transaction is active" when the script got to its end after all.
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            self.script_unfinished.store(false, Ordering::Release);
        }
        conn
    }

    /// Runs `script` ([`script`]: statements each ending in `;`, their arguments bound in
    /// order) as one write transaction in one trip to SQLite's thread, and returns the rows
    /// its statements returned (a `RETURNING`'s), in order.
    ///
    /// Each statement sent on its own is a trip there and back, and on two busy cores a
    /// trip waits for a core: an order's write (purge, hashes, sets) spent 0.4 ms of its
    /// 0.9 ms in trips. A script stops at its first failing statement, inside its
    /// transaction; it is rolled back here, so nothing of a failed script is kept.
    ///
    /// sqlx's SQLite driver runs every statement of a query string, binding its arguments
    /// across them; sqlx documents this as deprecated (sqlx issue #3108: `raw_sql` takes
    /// no arguments). So the script ends by selecting a marker after its `COMMIT`: a
    /// driver that ran less than all of it returns no marker, and the script fails (rolled
    /// back) instead of passing for written.
    pub async fn script(
        &self,
        script: &mut sqlx::QueryBuilder<sqlx::Sqlite>,
    ) -> sqlx::Result<Vec<sqlx::sqlite::SqliteRow>> {
        use sqlx::Row as _;
        script.push("COMMIT;\nSELECT 'the script ran to its end' AS script_end");
        let mut conn = self.lock().await;
        self.script_unfinished.store(true, Ordering::Release);
        let result = match script.build().fetch_all(&mut *conn).await {
            Ok(mut rows)
                if rows
                    .last()
                    .is_some_and(|row| row.try_get::<&str, _>("script_end").is_ok()) =>
            {
                rows.pop();
                Ok(rows)
            }
            Ok(_) => Err(sqlx::Error::Protocol(
                "sqlx ran part of a multi-statement script only; this build of sqlx cannot \
                 run the embedded stores' scripts (see sqlite::Writer::script)"
                    .into(),
            )),
            Err(e) => Err(e),
        };
        if result.is_err() {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        }
        self.script_unfinished.store(false, Ordering::Release);
        result
    }
}

/// A new script for [`Writer::script`]: `BEGIN IMMEDIATE;`, to which the write's
/// statements are pushed, each ending in `;` (the write lock up front, as every write
/// transaction here takes it).
pub fn script() -> sqlx::QueryBuilder<sqlx::Sqlite> {
    sqlx::QueryBuilder::new("BEGIN IMMEDIATE;\n")
}

/// A write of a known number of statements on the write connection ([`begin`]).
pub enum Write<'c> {
    /// At most one statement: sent alone, it is its own transaction.
    Alone(&'c mut SqliteConnection),
    /// Several, inside `BEGIN IMMEDIATE` … `COMMIT`; rolled back if dropped unfinished.
    Transaction(sqlx::Transaction<'c, sqlx::Sqlite>),
}

/// Starts a write of `statements` statements on `conn` (the file's [`Writer`]).
///
/// One statement is a transaction by itself in SQLite (it takes the write lock as it
/// starts and commits as it ends, all or nothing), so it is sent alone: `BEGIN` and
/// `COMMIT` would only add two trips to the connection's thread, which on two busy cores
/// cost a customers batch a quarter of its time. Several begin with `BEGIN IMMEDIATE`:
/// the write lock up front, so a read-then-write transaction never fails half-way on a
/// lock another writer took meanwhile.
pub async fn begin(conn: &mut SqliteConnection, statements: usize) -> sqlx::Result<Write<'_>> {
    Ok(if statements <= 1 {
        Write::Alone(conn)
    } else {
        Write::Transaction(conn.begin_with("BEGIN IMMEDIATE").await?)
    })
}

impl Write<'_> {
    /// The connection to run the write's statements on.
    pub fn conn(&mut self) -> &mut SqliteConnection {
        match self {
            Write::Alone(conn) => conn,
            Write::Transaction(tx) => tx,
        }
    }

    /// Commits the write (a statement sent alone already is).
    pub async fn commit(self) -> sqlx::Result<()> {
        match self {
            Write::Alone(_) => Ok(()),
            Write::Transaction(tx) => tx.commit().await,
        }
    }
}

/// A file's reader connections, pooled by deadpool rather than by sqlx.
///
/// sqlx's pool pings every connection that comes back to it, and cannot be told not to: a
/// trip to SQLite's thread after every read, which on two shared cores cost the reads a
/// quarter of their rate (`GET /customers/{id}` 29,800–39,500 → 46,600–51,300 req/s). A
/// connection to a local file does not go stale, so one that comes back here is checked
/// for nothing. A read cancelled half-way leaves nothing behind: the connection's next
/// statement waits for the one before it.
#[derive(Debug, Clone)]
pub struct Readers(deadpool::managed::Pool<ReaderManager>);

/// Opens the reader connections of [`Readers`], with the file's settings.
#[derive(Debug)]
pub struct ReaderManager(SqliteConnectOptions);

impl deadpool::managed::Manager for ReaderManager {
    type Type = SqliteConnection;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<SqliteConnection, sqlx::Error> {
        self.0.connect().await
    }

    async fn recycle(
        &self,
        _: &mut SqliteConnection,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<sqlx::Error> {
        Ok(())
    }
}

/// A reader connection, back to [`Readers`] when dropped.
pub type Reader = deadpool::managed::Object<ReaderManager>;

impl Readers {
    /// A reader connection, waiting up to a minute for one to be free.
    pub async fn get(&self) -> Result<Reader, sqlx::Error> {
        use deadpool::managed::PoolError;
        self.0.get().await.map_err(|e| match e {
            PoolError::Backend(e) => e,
            PoolError::Timeout(_) => sqlx::Error::PoolTimedOut,
            PoolError::Closed => sqlx::Error::PoolClosed,
            other => sqlx::Error::Protocol(format!("reader pool: {other}")),
        })
    }

    /// Checks that a reader connection answers.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        self.get().await?.ping().await
    }
}

/// Keeps a file's background checkpoint running; it stops once every clone is dropped.
#[derive(Debug, Clone)]
pub struct Checkpoint(#[allow(dead_code)] Arc<DropGuard>);

/// Bytes SQLite has allocated in this process, every file and connection together: page
/// caches (bounded per connection, [`WRITER_CACHE_KIB`], [`READER_CACHE_KIB`]), schemas and
/// prepared statements (up to [`STATEMENT_CACHE`] a connection).
pub fn heap_in_use() -> u64 {
    // SAFETY: takes no argument and only reads SQLite's allocation counter (kept unless
    // the library is built with SQLITE_DEFAULT_MEMSTATUS=0, when it reads 0); callable
    // from any thread at any time, before or after any connection is opened.
    let used = unsafe { libsqlite3_sys::sqlite3_memory_used() };
    u64::try_from(used).unwrap_or(0)
}

/// Where SQLite's allocations go.
pub mod heap {
    use std::ffi::{c_int, c_void};

    use libmimalloc_sys as mi;
    use libsqlite3_sys as ffi;

    /// Sends SQLite's allocations to mimalloc instead of the C library's `malloc`; done
    /// once, before SQLite starts in this process ([`super::open`] calls it first, and every
    /// SQLite file here is opened there).
    ///
    /// glibc gives each thread that allocates under contention an arena of its own, and
    /// sqlx runs a thread a connection (about twenty in a process running every system):
    /// an arena keeps what is freed in it for its own thread, so the C heap held 100 MB
    /// after a 25-minute soak while SQLite used 57 MB of it, and glibc's `malloc`, `free`
    /// and their locks took ~18 % of SQLite's threads in S2's profile. mimalloc is already
    /// Rust's allocator in the `livros` binary; it frees across threads without a lock and
    /// gives empty pages back to the system.
    ///
    /// SQLite only takes an allocator before it is initialised; if something in the
    /// process started it first, this says so and SQLite keeps `malloc` (nothing else
    /// changes).
    pub fn use_mimalloc() {
        static INSTALLED: std::sync::Once = std::sync::Once::new();
        INSTALLED.call_once(|| {
            let methods = ffi::sqlite3_mem_methods {
                xMalloc: Some(malloc),
                xFree: Some(free),
                xRealloc: Some(realloc),
                xSize: Some(size),
                xRoundup: Some(roundup),
                xInit: Some(init),
                xShutdown: Some(shutdown),
                pAppData: std::ptr::null_mut(),
            };
            // SAFETY: SQLITE_CONFIG_MALLOC takes a pointer to a `sqlite3_mem_methods`,
            // which SQLite copies before returning. `Once` keeps this to one thread, and
            // it runs before any connection is opened (SQLite refuses the call, and
            // changes nothing, once it is initialised).
            let rc = unsafe {
                ffi::sqlite3_config(
                    ffi::SQLITE_CONFIG_MALLOC,
                    &methods as *const ffi::sqlite3_mem_methods,
                )
            };
            if rc != ffi::SQLITE_OK {
                tracing::warn!(
                    code = rc,
                    "SQLite was started before its allocator could be set; it keeps the C \
                     library's malloc"
                );
            }
        });
    }

    /// A size SQLite asks for, as mimalloc takes it (SQLite never asks for less than 0).
    fn bytes(n: c_int) -> usize {
        usize::try_from(n).unwrap_or(0)
    }

    // SAFETY (the functions below): SQLite calls them as its `sqlite3_mem_methods`
    // promise: `free`, `realloc` and `size` only with what `malloc` or `realloc`
    // returned (or null, which mimalloc takes as nothing).
    unsafe extern "C" fn malloc(n: c_int) -> *mut c_void {
        unsafe { mi::mi_malloc(bytes(n)) }
    }

    unsafe extern "C" fn free(p: *mut c_void) {
        unsafe { mi::mi_free(p) }
    }

    unsafe extern "C" fn realloc(p: *mut c_void, n: c_int) -> *mut c_void {
        unsafe { mi::mi_realloc(p, bytes(n)) }
    }

    unsafe extern "C" fn size(p: *mut c_void) -> c_int {
        c_int::try_from(unsafe { mi::mi_usable_size(p) }).unwrap_or(c_int::MAX)
    }

    unsafe extern "C" fn roundup(n: c_int) -> c_int {
        c_int::try_from(unsafe { mi::mi_good_size(bytes(n)) }).unwrap_or(n)
    }

    unsafe extern "C" fn init(_: *mut c_void) -> c_int {
        ffi::SQLITE_OK
    }

    unsafe extern "C" fn shutdown(_: *mut c_void) {}

    /// Whether `p`, from `sqlite3_malloc`, came from mimalloc.
    #[cfg(test)]
    pub(crate) fn from_mimalloc(p: *const c_void) -> bool {
        // SAFETY: only compares the address with mimalloc's regions.
        unsafe { mi::mi_is_in_heap_region(p) }
    }
}

/// Opens a file's [`Pools`] (`readers` reading connections) with the settings every
/// embedded file uses: WAL (readers never block the writer), `synchronous=FULL` (a
/// committed transaction survives power loss, not only kill -9), and a generous busy
/// timeout because another process may hold the write lock for a whole batch.
///
/// The WAL is checkpointed in the background ([`CHECKPOINT_EVERY`], a passive checkpoint
/// on a reader connection) rather than by whichever commit crosses SQLite's threshold: a
/// checkpoint writes the pages again and syncs the file, and done on the write path it
/// stalls every writer queued behind that commit. Durability is the WAL's fsync at commit
/// either way. The task ends when the last clone of [`Pools::checkpoint`] is dropped.
pub async fn open(path: &Path, readers: u32) -> Result<Pools, sqlx::Error> {
    heap::use_mimalloc();
    let options = SqliteConnectOptions::from_str("sqlite://")?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(30))
        .pragma("temp_store", "memory")
        .statement_cache_capacity(STATEMENT_CACHE)
        .pragma("wal_autocheckpoint", WRITER_CHECKPOINT_PAGES.to_string());
    // Page caches are per connection and grow with the file up to their size: the
    // writer's, which random inserts walk, is larger; a file's memory is bounded by
    // WRITER_CACHE_KIB + readers × READER_CACHE_KIB.
    let cache = |kib: u32| options.clone().pragma("cache_size", format!("-{kib}"));
    // The writer first: it creates the file and switches it to WAL.
    let writer = Writer::new(cache(WRITER_CACHE_KIB).connect().await?);
    let reader = Readers(
        deadpool::managed::Pool::builder(ReaderManager(cache(READER_CACHE_KIB)))
            .max_size(readers.max(1) as usize)
            .wait_timeout(Some(Duration::from_secs(60)))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| sqlx::Error::Configuration(e.to_string().into()))?,
    );
    // Opened now, so that a file that cannot be read fails here rather than at first use.
    reader.ping().await?;
    let stop = CancellationToken::new();
    tokio::spawn(checkpoint(reader.clone(), stop.clone()));
    Ok(Pools {
        writer,
        reader,
        checkpoint: Checkpoint(Arc::new(stop.drop_guard())),
    })
}

/// Copies the WAL back into the file every [`CHECKPOINT_EVERY`] until `stop`.
async fn checkpoint(readers: Readers, stop: CancellationToken) {
    let mut every = tokio::time::interval(CHECKPOINT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        // PASSIVE: copies what no reader still needs, never waits on a lock. A failure
        // (busy, closed during the call) leaves the WAL to the next round or the writer.
        let checkpointed = match readers.get().await {
            Ok(mut reader) => sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&mut *reader)
                .await
                .map(drop),
            Err(e) => Err(e),
        };
        if let Err(e) = checkpointed {
            tracing::debug!(error = %e, "background checkpoint failed; the next one retries");
        }
    }
}

/// Runs `CREATE … IF NOT EXISTS` statements in one write transaction, so processes starting
/// together cannot race.
pub async fn apply_schema(writer: &Writer, statements: &[&str]) -> Result<(), sqlx::Error> {
    let mut writer = writer.lock().await;
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
    for statement in statements {
        // The project's own DDL, with field names it wrote itself.
        sqlx::query(sqlx::AssertSqlSafe(statement.to_string()))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new file with a table `t (v TEXT NOT NULL)`, and the directory that holds it.
    async fn table_t() -> (tempfile::TempDir, Pools) {
        let dir = tempfile::tempdir().unwrap();
        let pools = open(&dir.path().join("t.db"), 1).await.unwrap();
        apply_schema(&pools.writer, &["CREATE TABLE t (v TEXT NOT NULL)"])
            .await
            .unwrap();
        (dir, pools)
    }

    /// A write transaction dropped unfinished (a task cancelled mid-batch) leaves the held
    /// connection ready for the next: nothing of it committed, no transaction left open.
    #[tokio::test]
    async fn a_transaction_dropped_unfinished_is_rolled_back_before_the_next() {
        let (_dir, pools) = table_t().await;
        // The first transaction is dropped at the end of its turn, the second committed.
        for (value, commit) in [("dropped", false), ("kept", true)] {
            let mut writer = pools.writer.lock().await;
            let mut tx = writer.begin_with("BEGIN IMMEDIATE").await.unwrap();
            sqlx::query("INSERT INTO t (v) VALUES (?)")
                .bind(value)
                .execute(&mut *tx)
                .await
                .unwrap();
            if commit {
                tx.commit().await.unwrap();
            }
        }
        let rows: Vec<String> = sqlx::query_scalar("SELECT v FROM t")
            .fetch_all(&mut *pools.reader.get().await.unwrap())
            .await
            .unwrap();
        assert_eq!(rows, ["kept"]);
    }

    /// The rows of `t`, read as a reader sees them: what is committed.
    async fn committed(pools: &Pools) -> Vec<String> {
        sqlx::query_scalar("SELECT v FROM t ORDER BY rowid")
            .fetch_all(&mut *pools.reader.get().await.unwrap())
            .await
            .unwrap()
    }

    /// Inserts `values` into `t` by one script, in one transaction.
    async fn insert_by_script(pools: &Pools, values: &[Option<&str>]) -> sqlx::Result<()> {
        let mut q = script();
        for value in values {
            q.push("INSERT INTO t (v) VALUES (")
                .push_bind(value.map(str::to_string))
                .push(");\n");
        }
        pools.writer.script(&mut q).await.map(drop)
    }

    /// Batches of every size leave at most [`STATEMENT_CACHE`] statements prepared on a
    /// connection, writer and reader alike: one per size would keep them all.
    #[tokio::test]
    async fn a_connection_keeps_a_bounded_number_of_statements_prepared() {
        let (_dir, pools) = table_t().await;
        let sizes = 1..=3 * STATEMENT_CACHE;
        for n in sizes.clone() {
            let values = vec![Some("v"); n];
            insert_by_script(&pools, &values).await.unwrap();
        }
        assert_eq!(
            pools.writer.lock().await.cached_statements_size(),
            STATEMENT_CACHE
        );
        let mut reader = pools.reader.get().await.unwrap();
        for n in sizes {
            let placeholders = vec!["?"; n].join(", ");
            let sql = format!("SELECT count(*) FROM t WHERE v IN ({placeholders})");
            let mut query = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql));
            for _ in 0..n {
                query = query.bind("v");
            }
            query.fetch_one(&mut *reader).await.unwrap();
        }
        assert_eq!(reader.cached_statements_size(), STATEMENT_CACHE);
    }

    /// SQLite's allocation counter is kept, and SQLite allocates from mimalloc, not from
    /// the C library's `malloc` (the soak's memory readout rests on both; see
    /// [`heap::use_mimalloc`]): pages a connection wrote stay in its cache and are counted.
    #[tokio::test]
    async fn the_heap_in_use_counts_a_connection_s_page_cache() {
        let (_dir, pools) = table_t().await;
        // 4,096 rows of 1 KiB: 4 MiB of pages, all in the writer's 8 MiB cache.
        let mut q = script();
        q.push(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 4096) \
             INSERT INTO t (v) SELECT hex(zeroblob(512)) FROM n;\n",
        );
        pools.writer.script(&mut q).await.unwrap();
        // Other tests' connections count too, so only a floor is known: our 4 MiB of rows.
        let used = heap_in_use();
        assert!(used > 2 << 20, "SQLite's heap reads {used} bytes");
        // SAFETY: a plain allocation, freed below and used for nothing but its address.
        let p = unsafe { libsqlite3_sys::sqlite3_malloc(100) };
        assert!(!p.is_null());
        let from_mimalloc = heap::from_mimalloc(p);
        // SAFETY: `p` came from `sqlite3_malloc` and is freed once.
        unsafe { libsqlite3_sys::sqlite3_free(p) };
        assert!(
            from_mimalloc,
            "SQLite allocated from the C library's malloc"
        );
    }

    /// A script stops at its first failing statement, inside its transaction: nothing of
    /// it is kept, and the writer takes the next one.
    #[tokio::test]
    async fn a_script_that_fails_half_way_keeps_nothing() {
        let (_dir, pools) = table_t().await;
        let failed = insert_by_script(&pools, &[Some("first"), None]).await;
        assert!(failed.is_err(), "a NULL in a NOT NULL column: {failed:?}");
        insert_by_script(&pools, &[Some("kept")]).await.unwrap();
        assert_eq!(committed(&pools).await, ["kept"]);
    }

    /// A script whose task was cancelled half-way may leave its transaction open on the
    /// connection, unknown to sqlx: the next lock rolls it back.
    #[tokio::test]
    async fn a_script_left_unfinished_is_rolled_back_before_the_next_write() {
        let (_dir, pools) = table_t().await;
        // What a script cancelled after its first statements leaves behind.
        {
            let mut conn = pools.writer.conn.lock().await;
            sqlx::query("BEGIN IMMEDIATE; INSERT INTO t (v) VALUES ('cancelled')")
                .execute(&mut *conn)
                .await
                .unwrap();
            pools
                .writer
                .script_unfinished
                .store(true, Ordering::Release);
        }
        insert_by_script(&pools, &[Some("kept")]).await.unwrap();
        let mut writer = pools.writer.lock().await;
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await.unwrap();
        sqlx::query("INSERT INTO t (v) VALUES ('after')")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        drop(writer);
        assert_eq!(committed(&pools).await, ["kept", "after"]);
    }

    /// Committed pages reach the database file without any commit checkpointing: the
    /// writer's own threshold (64 MiB of WAL) is far above what this writes.
    #[tokio::test]
    async fn the_wal_is_checkpointed_in_the_background() {
        let (dir, pools) = table_t().await;
        let path = dir.path().join("t.db");
        let mut writer = pools.writer.lock().await;
        let mut tx = writer.begin().await.unwrap();
        for _ in 0..1000 {
            sqlx::query("INSERT INTO t (v) VALUES (?)")
                .bind("x".repeat(1000))
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        let size = || std::fs::metadata(&path).unwrap().len();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while size() < 1_000_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "the database file is still {} bytes: nothing checkpointed its WAL",
                size()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
