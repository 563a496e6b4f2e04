//! The embedded relational store: SQLite in `<data dir>/relational.db`, migrated by sqlx.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Column, Row, Sqlite, TypeInfo, ValueRef};

use super::{OpenError, RelationalStore, SqlRow, SqlValue, Statement, StoreError, StoreResult};

const STORE: &str = "sqlite";

fn err(e: sqlx::Error) -> StoreError {
    StoreError::from_sqlx(STORE, e)
}

/// SQL on SQLite.
pub struct SqliteStore {
    /// Reads outside a write transaction.
    pool: crate::sqlite::Readers,
    /// Every write transaction.
    writer: crate::sqlite::Writer,
    /// Keeps the file's background checkpoint running while this is open.
    _checkpoint: crate::sqlite::Checkpoint,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating) the database at `path` and runs every system's migrations.
    pub async fn open(
        path: &Path,
        migrations: &[&sqlx::migrate::Migrator],
    ) -> Result<Self, OpenError> {
        let pools = super::open_embedded("relational", path, &[], migrations).await?;
        Ok(Self {
            pool: pools.reader,
            writer: pools.writer,
            _checkpoint: pools.checkpoint,
            path: path.to_path_buf(),
        })
    }
}

fn bind<'q>(
    mut query: Query<'q, Sqlite, SqliteArguments>,
    args: impl IntoIterator<Item = &'q SqlValue>,
) -> Query<'q, Sqlite, SqliteArguments> {
    for arg in args {
        query = match arg {
            SqlValue::Int(v) => query.bind(*v),
            SqlValue::Real(v) => query.bind(*v),
            SqlValue::Text(v) => query.bind(v.as_deref()),
            SqlValue::Bool(v) => query.bind(*v),
        };
    }
    query
}

/// A row as [`SqlValue`]s, by each value's storage class (SQLite types values, not columns).
fn decode(row: &SqliteRow) -> StoreResult<SqlRow> {
    let mut columns = Vec::with_capacity(row.columns().len());
    for column in row.columns() {
        let i = column.ordinal();
        let raw = row.try_get_raw(i).map_err(err)?;
        let class = if raw.is_null() {
            "NULL".to_string()
        } else {
            raw.type_info().name().to_string()
        };
        let value = match class.as_str() {
            "NULL" => SqlValue::Text(None),
            "INTEGER" | "BOOLEAN" => SqlValue::Int(row.try_get::<Option<i64>, _>(i).map_err(err)?),
            "REAL" => SqlValue::Real(row.try_get::<Option<f64>, _>(i).map_err(err)?),
            _ => SqlValue::Text(row.try_get::<Option<String>, _>(i).map_err(err)?),
        };
        columns.push((column.name().to_string(), value));
    }
    Ok(SqlRow { columns })
}

/// `sql` with its placeholders `$1 … $n` made anonymous (`?`), and for each `?` in order
/// the index of the argument it takes (a placeholder used twice takes its argument twice);
/// `None`, to send `sql` as written, when a placeholder is not `$1 … $args`.
///
/// A numbered or named placeholder costs SQLite a walk of its list of parameter names each
/// time its name is asked, and sqlx asks it for every parameter of every execution: a
/// thousand-row upsert of three columns spent more time there than inserting, and a batch
/// of products (whose write id is one placeholder used on every row) still spent 3.5 % of
/// the SQLite thread there. Anonymous placeholders have no name to look up.
fn anonymous(sql: &str, args: usize) -> Option<(String, Vec<usize>)> {
    let mut out = String::with_capacity(sql.len());
    let mut order = Vec::with_capacity(args);
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '$') => {
                let mut number = 0_usize;
                let mut digits = 0;
                while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                    number = number.saturating_mul(10).saturating_add(d as usize);
                    digits += 1;
                    chars.next();
                }
                if digits == 0 || number == 0 || number > args {
                    return None;
                }
                order.push(number - 1);
                out.push('?');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    Some((out, order))
}

/// The rows `statement` gives on `executor` (the pool, or a transaction).
async fn rows<'e, E>(executor: E, statement: &Statement) -> StoreResult<Vec<SqlRow>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let (sql, args): (std::borrow::Cow<'_, str>, Vec<&SqlValue>) =
        match anonymous(&statement.sql, statement.args.len()) {
            Some((sql, order)) => (
                sql.into(),
                order.iter().map(|&i| &statement.args[i]).collect(),
            ),
            None => (
                statement.sql.as_str().into(),
                statement.args.iter().collect(),
            ),
        };
    let rows = bind(sqlx::query(sqlx::AssertSqlSafe(sql.as_ref())), args)
        .fetch_all(executor)
        .await
        .map_err(err)?;
    rows.iter().map(decode).collect()
}

#[async_trait]
impl RelationalStore for SqliteStore {
    async fn transaction(&self, statements: &[Statement]) -> StoreResult<Vec<Vec<SqlRow>>> {
        crate::metrics::timed_store("relational", "sqlite", async {
            let mut writer = self.writer.lock().await;
            let mut write = crate::sqlite::begin(&mut writer, statements.len())
                .await
                .map_err(err)?;
            let mut results = Vec::with_capacity(statements.len());
            for statement in statements {
                results.push(rows(write.conn(), statement).await?);
            }
            write.commit().await.map_err(err)?;
            Ok(results)
        })
        .await
    }

    async fn select(&self, statement: &Statement) -> StoreResult<Vec<SqlRow>> {
        crate::metrics::timed_store("relational", "sqlite", async {
            rows(&mut *self.pool.get().await.map_err(err)?, statement).await
        })
        .await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.pool.ping().await.map_err(err)
    }

    fn describe(&self) -> String {
        format!("sqlite ({})", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::anonymous;

    #[test]
    fn placeholders_in_order_become_anonymous() {
        assert_eq!(
            anonymous(
                "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4) ON CONFLICT (a) DO NOTHING",
                4
            ),
            Some((
                "INSERT INTO t (a, b) VALUES (?, ?), (?, ?) ON CONFLICT (a) DO NOTHING".into(),
                vec![0, 1, 2, 3]
            ))
        );
        // Inside quotes nothing is a placeholder.
        assert_eq!(
            anonymous("SELECT json_extract(f, '$1') FROM t WHERE \"$x\" = $1", 1),
            Some((
                "SELECT json_extract(f, '$1') FROM t WHERE \"$x\" = ?".into(),
                vec![0]
            ))
        );
        assert_eq!(anonymous("SELECT 1", 0), Some(("SELECT 1".into(), vec![])));
    }

    #[test]
    fn placeholders_reused_or_out_of_order_take_their_argument_each_time() {
        assert_eq!(
            anonymous(
                "SELECT * FROM t WHERE (CAST($1 AS TEXT) IS NULL OR email = $1) AND b = $2",
                2
            ),
            Some((
                "SELECT * FROM t WHERE (CAST(? AS TEXT) IS NULL OR email = ?) AND b = ?".into(),
                vec![0, 0, 1]
            ))
        );
        assert_eq!(
            anonymous("SELECT * FROM t WHERE a = $2 AND b = $1", 2),
            Some(("SELECT * FROM t WHERE a = ? AND b = ?".into(), vec![1, 0]))
        );
    }

    #[test]
    fn placeholders_without_an_argument_are_sent_as_written() {
        for (sql, args) in [
            ("SELECT * FROM t WHERE a = $1 AND b = $3", 2),
            ("SELECT * FROM t WHERE a = $0", 1),
            ("SELECT * FROM t WHERE a = $name", 1),
        ] {
            assert_eq!(anonymous(sql, args), None, "{sql}");
        }
    }
}
