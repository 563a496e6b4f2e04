//! The embedded document store: JSON documents in SQLite (`<data dir>/documents.db`),
//! one row per (collection, id), the body kept as JSON text.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde_json::Value;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{DocumentStore, Filter, OpenError, Page, Sort, StoreError, StoreResult};

const STORE: &str = "embedded document store";
/// Rows per statement (3 bound values each).
const CHUNK: usize = 500;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS documents (
    collection TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (collection, id)) WITHOUT ROWID",
    // Superseded by the schema's `documents_by_isbn`; an index nothing uses costs writes.
    "DROP INDEX IF EXISTS documents_isbn",
];

/// Escapes `%`, `_` and `\` for a LIKE pattern with `ESCAPE '\'`.
fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A JSON path for a top-level field, quoted so any field name is taken literally.
fn json_path(field: &str) -> String {
    format!("$.\"{}\"", field.replace('"', "\\\""))
}

/// `json_extract(body, '<path>')` with the path written into the SQL, not bound: only
/// then can SQLite use the expression index on that field.
fn field_value(field: &str) -> String {
    format!(
        "json_extract(body, '{}')",
        json_path(field).replace('\'', "''")
    )
}

/// `json_type(body, '<path>')`, written into the SQL like [`field_value`].
fn field_type(field: &str) -> String {
    format!(
        "json_type(body, '{}')",
        json_path(field).replace('\'', "''")
    )
}

/// The two indexes of an indexed field: of its value ([`field_value`]) and of its type
/// ([`field_type`]).
#[derive(Clone, Copy)]
enum Index {
    Value,
    Type,
}

impl Index {
    /// The index's name for a field whose name, made safe for SQL, is `name`.
    fn name(self, name: &str) -> String {
        match self {
            Index::Value => format!("documents_by_{name}"),
            Index::Type => format!("documents_type_{name}"),
        }
    }
}

/// A JSON scalar as SQLite's `json_extract` returns it (booleans are 1 and 0).
fn bind_scalar(q: &mut QueryBuilder<Sqlite>, value: &Value) {
    match value {
        Value::Bool(b) => q.push_bind(i64::from(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => q.push_bind(i),
            None => q.push_bind(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => q.push_bind(s.clone()),
        other => q.push_bind(other.to_string()),
    };
}

fn err(e: sqlx::Error) -> StoreError {
    StoreError::from_sqlx(STORE, e)
}

/// Documents in SQLite.
pub struct SqliteDocumentStore {
    /// The fields with an index of their value and of their type (see [`Self::open`]), and
    /// the name those indexes were given.
    indexed: HashMap<String, String>,
    /// Reads outside a write transaction.
    pool: crate::sqlite::Readers,
    /// Every write transaction.
    writer: crate::sqlite::Writer,
    /// Keeps the file's background checkpoint running while this is open.
    _checkpoint: crate::sqlite::Checkpoint,
    path: PathBuf,
}

impl SqliteDocumentStore {
    /// Opens (creating if needed) the store at `path`, with an index on each of
    /// `indexed` (top-level field names; see [`Schema`](super::Schema)).
    pub async fn open(path: &Path, indexed: &[&str]) -> Result<Self, OpenError> {
        let mut schema: Vec<String> = SCHEMA.iter().map(|s| s.to_string()).collect();
        let mut names = HashMap::new();
        for field in indexed {
            let name: String = field
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            // Two fields whose names differ only in symbols share one index name; only
            // the first field's index has it.
            if names.values().any(|n| *n == name) {
                continue;
            }
            names.insert(field.to_string(), name.clone());
            schema.push(format!(
                "CREATE INDEX IF NOT EXISTS {} ON documents (collection, {})",
                Index::Value.name(&name),
                field_value(field)
            ));
            schema.push(format!(
                "CREATE INDEX IF NOT EXISTS {} ON documents (collection, {})",
                Index::Type.name(&name),
                field_type(field)
            ));
        }
        let schema: Vec<&str> = schema.iter().map(String::as_str).collect();
        let pools = super::open_embedded("document", path, &schema, &[]).await?;
        Ok(Self {
            indexed: names,
            pool: pools.reader,
            writer: pools.writer,
            _checkpoint: pools.checkpoint,
            path: path.to_path_buf(),
        })
    }

    /// The ids in `collection` whose `field` equals `value` or, where it is an array,
    /// contains it: two lookups, each on its own index where `field` has them. Named, since
    /// SQLite's planner, with no statistics, prefers the primary key's `collection` prefix
    /// to either, which reads (and parses) every document of the collection.
    fn push_matching(
        &self,
        q: &mut QueryBuilder<Sqlite>,
        collection: &str,
        field: &str,
        value: &Value,
    ) {
        // `SELECT id … WHERE collection = ? AND <expr>`, on `expr`'s own index if it has one.
        let lookup = |q: &mut QueryBuilder<Sqlite>, index: Index, expr: String| {
            q.push("SELECT id FROM documents");
            if let Some(name) = self.indexed.get(field) {
                q.push(format_args!(" INDEXED BY {}", index.name(name)));
            }
            q.push(" WHERE collection = ")
                .push_bind(collection.to_string())
                .push(" AND ")
                .push(expr);
        };
        lookup(q, Index::Value, field_value(field));
        q.push(" = ");
        bind_scalar(q, value);
        q.push(" UNION ");
        lookup(q, Index::Type, field_type(field));
        q.push(" = 'array' AND EXISTS (SELECT 1 FROM json_each(body, ")
            .push_bind(json_path(field))
            .push(") WHERE value = ");
        bind_scalar(q, value);
        q.push(")");
    }

    /// The query of [`DocumentStore::find_sorted`]. With an equality filter, the documents
    /// are read by id from what its lookups found (`CROSS JOIN` keeps that order: asked
    /// to sort by an indexed field, the planner would rather walk that field's index over
    /// the whole collection, testing each id); without one, the collection is read.
    fn push_find(
        &self,
        q: &mut QueryBuilder<Sqlite>,
        collection: &str,
        filters: &[Filter],
        sort: Option<&Sort>,
        page: Page,
    ) {
        let mut eqs = filters.iter().filter_map(|f| match f {
            Filter::Eq { field, value } => Some((field, value)),
            Filter::Words { .. } => None,
        });
        q.push("SELECT d.body FROM ");
        if let Some((field, value)) = eqs.next() {
            q.push("(");
            self.push_matching(q, collection, field, value);
            q.push(") AS m CROSS JOIN documents AS d WHERE d.id = m.id AND ");
        } else {
            q.push("documents AS d WHERE ");
        }
        q.push("d.collection = ").push_bind(collection.to_string());
        for (field, value) in eqs {
            q.push(" AND d.id IN (");
            self.push_matching(q, collection, field, value);
            q.push(")");
        }
        for filter in filters {
            if let Filter::Words { field, words } = filter {
                for word in words {
                    q.push(" AND lower(json_extract(d.body, ")
                        .push_bind(json_path(field))
                        .push(")) LIKE ")
                        .push_bind(format!("%{}%", like_escape(&word.to_lowercase())))
                        .push(" ESCAPE '\\'");
                }
            }
        }
        q.push(" ORDER BY ");
        if let Some(sort) = sort {
            q.push(field_value(&sort.field)).push(if sort.descending {
                " DESC, "
            } else {
                " ASC, "
            });
        }
        q.push("d.id LIMIT ")
            .push_bind(page.limit.min(i64::MAX as u64) as i64)
            .push(" OFFSET ")
            .push_bind(page.skip.min(i64::MAX as u64) as i64);
    }

    async fn upsert_rows(&self, collection: &str, docs: &[&(String, Value)]) -> StoreResult<()> {
        let upsert = |chunk: &[&(String, Value)]| {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO documents (collection, id, body) ");
            q.push_values(chunk, |mut row, (id, body)| {
                row.push_bind(collection.to_string())
                    .push_bind(id.clone())
                    .push_bind(body.to_string());
            });
            q.push(" ON CONFLICT (collection, id) DO UPDATE SET body = excluded.body WHERE body IS NOT excluded.body");
            q
        };
        let mut writer = self.writer.lock().await;
        let mut write = crate::sqlite::begin(&mut writer, docs.len().div_ceil(CHUNK))
            .await
            .map_err(err)?;
        for chunk in docs.chunks(CHUNK) {
            upsert(chunk)
                .build()
                .execute(write.conn())
                .await
                .map_err(err)?;
        }
        write.commit().await.map_err(err)
    }
}

#[async_trait]
impl DocumentStore for SqliteDocumentStore {
    async fn upsert(
        &self,
        collection: &str,
        docs: &[(String, Value)],
    ) -> StoreResult<Vec<StoreResult<()>>> {
        crate::metrics::timed_store("document", "embedded", async {
            let unique = super::last_by(docs, |(id, _)| id.clone());
            match self.upsert_rows(collection, &unique).await {
                Ok(()) => Ok(docs.iter().map(|_| Ok(())).collect()),
                Err(e) if !e.is_rejection() => Err(e),
                // The batch was refused: write one by one so only the bad documents fail.
                Err(_) => {
                    let mut results = Vec::with_capacity(docs.len());
                    for doc in docs {
                        match self.upsert_rows(collection, &[doc]).await {
                            Err(e) if !e.is_rejection() => return Err(e),
                            other => results.push(other),
                        }
                    }
                    Ok(results)
                }
            }
        })
        .await
    }

    async fn get(&self, collection: &str, id: &str) -> StoreResult<Option<Value>> {
        let body: Option<String> =
            sqlx::query_scalar("SELECT body FROM documents WHERE collection = ? AND id = ?")
                .bind(collection)
                .bind(id)
                .fetch_optional(&mut *self.pool.get().await.map_err(err)?)
                .await
                .map_err(err)?;
        body.map(|b| {
            serde_json::from_str(&b).map_err(|e| StoreError::Fault {
                store: STORE,
                reason: format!("stored document {collection}/{id} is not JSON: {e}"),
            })
        })
        .transpose()
    }

    async fn existing(&self, collection: &str, ids: &[String]) -> StoreResult<HashSet<String>> {
        let mut found = HashSet::new();
        for chunk in ids.chunks(CHUNK) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("SELECT id FROM documents WHERE collection = ");
            q.push_bind(collection.to_string()).push(" AND id IN (");
            let mut list = q.separated(", ");
            for id in chunk {
                list.push_bind(id.clone());
            }
            q.push(")");
            let rows = q
                .build()
                .fetch_all(&mut *self.pool.get().await.map_err(err)?)
                .await
                .map_err(err)?;
            found.extend(rows.iter().map(|r| r.get::<String, _>("id")));
        }
        Ok(found)
    }

    async fn count(&self, collection: &str) -> StoreResult<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM documents WHERE collection = ?")
            .bind(collection)
            .fetch_one(&mut *self.pool.get().await.map_err(err)?)
            .await
            .map_err(err)
    }

    async fn find_sorted(
        &self,
        collection: &str,
        filters: &[Filter],
        sort: Option<&Sort>,
        page: Page,
    ) -> StoreResult<Vec<Value>> {
        let mut q = QueryBuilder::new("");
        self.push_find(&mut q, collection, filters, sort, page);
        let bodies: Vec<String> = q
            .build_query_scalar()
            .fetch_all(&mut *self.pool.get().await.map_err(err)?)
            .await
            .map_err(err)?;
        bodies
            .iter()
            .map(|b| {
                serde_json::from_str(b).map_err(|e| StoreError::Fault {
                    store: STORE,
                    reason: format!("stored document is not JSON: {e}"),
                })
            })
            .collect()
    }

    async fn ping(&self) -> StoreResult<()> {
        self.pool.ping().await.map_err(err)
    }

    fn describe(&self) -> String {
        format!("embedded documents ({})", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An equality filter on an indexed field is answered from that field's two indexes,
    /// and the documents found are read by id: the collection is never read whole, which
    /// grows with it (a user's views, sorted by date, read 20,000 views each time).
    #[tokio::test]
    async fn an_equality_filter_reads_its_indexes_not_the_collection() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteDocumentStore::open(&dir.path().join("d.db"), &["user_id", "data"])
            .await
            .unwrap();
        let mut q = QueryBuilder::new("EXPLAIN QUERY PLAN ");
        let filters = [
            crate::store::eq("user_id", 5),
            Filter::Words {
                field: "titulo".into(),
                words: vec!["matrix".into()],
            },
        ];
        let newest = Sort {
            field: "data".into(),
            descending: true,
        };
        let page = Page { skip: 0, limit: 10 };
        store.push_find(&mut q, "views", &filters, Some(&newest), page);
        let plan: Vec<String> = q
            .build()
            .fetch_all(&mut *store.pool.get().await.unwrap())
            .await
            .unwrap()
            .iter()
            .map(|row| row.get("detail"))
            .collect();
        let plan = plan.join("\n");
        for step in [
            "documents_by_user_id (collection=? AND <expr>=?)",
            "documents_type_user_id (collection=? AND <expr>=?)",
            "SEARCH d USING PRIMARY KEY (collection=? AND id=?)",
        ] {
            assert!(plan.contains(step), "{step} not in the plan:\n{plan}");
        }
        assert!(!plan.contains("documents_by_data"), "{plan}");
    }
}
