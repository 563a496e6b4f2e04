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
    let (pieces, order) = split_at_placeholders(sql, args)?;
    Some((pieces.join("?"), order))
}

/// `sql` cut at its placeholders `$1 … $n` (the pieces between them, one more than the
/// placeholders), and for each placeholder in order the index of the argument it takes;
/// `None` when a placeholder is not `$1 … $args`. Inside quotes nothing is a placeholder.
fn split_at_placeholders(sql: &str, args: usize) -> Option<(Vec<&str>, Vec<usize>)> {
    let mut pieces = Vec::with_capacity(args + 1);
    let mut order = Vec::with_capacity(args);
    let mut quote: Option<char> = None;
    let mut start = 0;
    let mut chars = sql.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '$') => {
                let mut number = 0_usize;
                let mut end = i + 1;
                while let Some(&(j, d)) = chars.peek() {
                    let Some(d) = d.to_digit(10) else { break };
                    number = number.saturating_mul(10).saturating_add(d as usize);
                    end = j + 1;
                    chars.next();
                }
                if end == i + 1 || number == 0 || number > args {
                    return None;
                }
                pieces.push(&sql[start..i]);
                order.push(number - 1);
                start = end;
            }
            _ => {}
        }
    }
    pieces.push(&sql[start..]);
    Some((pieces, order))
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

/// Where one statement's rows end in a script's: a row with only this column.
const STATEMENT_END: &str = "livros_statement_end";

/// `statements` as one script for [`crate::sqlite::Writer::script`], each followed by a
/// row marking its end, so that each statement's rows can be told apart; `None` when a
/// statement's placeholders are not `$1 … $n` (sent one by one then).
fn script_of(statements: &[Statement]) -> Option<sqlx::QueryBuilder<Sqlite>> {
    let mut q = crate::sqlite::script();
    for statement in statements {
        let (pieces, order) = split_at_placeholders(&statement.sql, statement.args.len())?;
        let mut pieces = pieces.into_iter();
        q.push(pieces.next().unwrap_or_default());
        for (piece, &arg) in pieces.zip(&order) {
            match &statement.args[arg] {
                SqlValue::Int(v) => q.push_bind(*v),
                SqlValue::Real(v) => q.push_bind(*v),
                SqlValue::Text(v) => q.push_bind(v.clone()),
                SqlValue::Bool(v) => q.push_bind(*v),
            };
            q.push(piece);
        }
        q.push(format_args!(";\nSELECT 1 AS {STATEMENT_END};\n"));
    }
    Some(q)
}

/// Runs a transaction made one script ([`script_of`]): one trip to SQLite's thread
/// instead of one a statement and two more for `BEGIN` and `COMMIT`.
async fn by_script(
    writer: &crate::sqlite::Writer,
    mut script: sqlx::QueryBuilder<Sqlite>,
) -> StoreResult<Vec<Vec<SqlRow>>> {
    let mut results = vec![Vec::new()];
    for row in writer.script(&mut script).await.map_err(err)? {
        if row.columns().len() == 1 && row.columns()[0].name() == STATEMENT_END {
            results.push(Vec::new());
        } else {
            results.last_mut().expect("never empty").push(decode(&row)?);
        }
    }
    // The last marker opened a group no statement fills.
    results.pop();
    Ok(results)
}

#[async_trait]
impl RelationalStore for SqliteStore {
    async fn transaction(&self, statements: &[Statement]) -> StoreResult<Vec<Vec<SqlRow>>> {
        crate::metrics::timed_store("relational", "sqlite", async {
            if statements.len() > 1
                && let Some(script) = script_of(statements)
            {
                return by_script(&self.writer, script).await;
            }
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
