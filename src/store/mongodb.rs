//! The document store on MongoDB, through the official driver.
//!
//! Each document is stored with `_id` = its id (so the id is unique by construction; a
//! unique index on `id` says so too), and the fields as given. Upserts go to the server as
//! one unordered `update` command per batch — supported by every MongoDB since 3.6, unlike
//! the client-level bulk write of 8.0 — whose per-statement errors say which documents
//! failed, so a bad document fails alone.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use ::mongodb::bson::{Bson, Document, doc};
use ::mongodb::error::{ErrorKind, RETRYABLE_WRITE_ERROR};
use ::mongodb::options::{ClientOptions, IndexOptions};
use ::mongodb::{Client, Collection, Database, IndexModel};
use async_trait::async_trait;
use futures::TryStreamExt;
use serde_json::Value;

use super::{DocumentStore, Filter, OpenError, Page, StoreError, StoreResult, redact};

const STORE: &str = "mongodb";
/// How long to look for a server before an operation counts as failed (and is retried).
const SELECTION_TIMEOUT: Duration = Duration::from_secs(5);

fn err(e: ::mongodb::error::Error) -> StoreError {
    let transient = matches!(
        *e.kind,
        ErrorKind::Io(_)
            | ErrorKind::ServerSelection { .. }
            | ErrorKind::ConnectionPoolCleared { .. }
    ) || e.contains_label(RETRYABLE_WRITE_ERROR);
    StoreError::classified(STORE, transient, e)
}

/// Settings of the MongoDB store.
#[derive(Debug, Clone)]
pub struct MongoConfig {
    /// `mongodb://…`
    pub url: String,
    /// Database name (`books_db` by default).
    pub database: String,
    /// Collection names by logical name (`books` → the configured books collection).
    pub collections: HashMap<String, String>,
}

/// Documents in MongoDB.
pub struct MongoStore {
    db: Database,
    config: MongoConfig,
}

/// Regex metacharacters escaped, so a title word matches literally.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn to_json(mut document: Document) -> Value {
    document.remove("_id");
    Bson::Document(document).into_relaxed_extjson()
}

impl MongoStore {
    /// Connects, checks the server answers, and creates the indexes (unique `id`, `isbn`,
    /// `authors`) on every configured collection.
    pub async fn connect(config: MongoConfig) -> Result<Self, OpenError> {
        let location = redact(&config.url);
        let open_error = |reason: String| {
            OpenError {
            kind: "document",
            location: location.clone(),
            reason,
            hint: "Check that MongoDB is running and the URL (--mongodb-url / LIVROS_MONGODB_URL) is right.".into(),
        }
        };
        let mut options = ClientOptions::parse(&config.url)
            .await
            .map_err(|e| open_error(e.to_string()))?;
        options
            .server_selection_timeout
            .get_or_insert(SELECTION_TIMEOUT);
        options.app_name = Some("livros".into());
        let client = Client::with_options(options).map_err(|e| open_error(e.to_string()))?;
        let db = client.database(&config.database);
        db.run_command(doc! {"ping": 1})
            .await
            .map_err(|e| open_error(e.to_string()))?;
        let store = Self { db, config };
        for name in store.config.collections.values() {
            let coll: Collection<Document> = store.db.collection(name);
            let indexes = [
                IndexModel::builder()
                    .keys(doc! {"id": 1})
                    .options(IndexOptions::builder().unique(true).build())
                    .build(),
                IndexModel::builder().keys(doc! {"isbn": 1}).build(),
                IndexModel::builder().keys(doc! {"authors": 1}).build(),
            ];
            coll.create_indexes(indexes)
                .await
                .map_err(|e| open_error(format!("creating indexes on `{name}`: {e}")))?;
        }
        Ok(store)
    }

    fn collection(&self, logical: &str) -> Collection<Document> {
        let name = self
            .config
            .collections
            .get(logical)
            .map_or(logical, String::as_str);
        self.db.collection(name)
    }
}

#[async_trait]
impl DocumentStore for MongoStore {
    async fn upsert(
        &self,
        collection: &str,
        docs: &[(String, Value)],
    ) -> StoreResult<Vec<StoreResult<()>>> {
        if docs.is_empty() {
            return Ok(Vec::new());
        }
        let mut results: Vec<StoreResult<()>> = docs.iter().map(|_| Ok(())).collect();
        let mut updates = Vec::with_capacity(docs.len());
        let mut sent = Vec::with_capacity(docs.len());
        for (i, (id, body)) in docs.iter().enumerate() {
            match ::mongodb::bson::to_document(body) {
                Ok(mut document) => {
                    document.insert("_id", id.as_str());
                    updates.push(doc! {"q": {"_id": id.as_str()}, "u": document, "upsert": true});
                    sent.push(i);
                }
                Err(e) => {
                    results[i] = Err(StoreError::Rejected {
                        store: STORE,
                        reason: format!("not storable as BSON: {e}"),
                    })
                }
            }
        }
        if updates.is_empty() {
            return Ok(results);
        }
        let name = self.collection(collection).name().to_string();
        let reply = self
            .db
            // Acknowledged only once journaled on a majority: S2 commits its offset after
            // this returns, so "written" must mean "durable".
            .run_command(doc! {
                "update": name,
                "updates": updates,
                "ordered": false,
                "writeConcern": {"w": "majority", "j": true},
            })
            .await
            .map_err(err)?;
        if let Ok(errors) = reply.get_array("writeErrors") {
            for e in errors.iter().filter_map(Bson::as_document) {
                let index = e.get_i32("index").unwrap_or(-1);
                let message = e.get_str("errmsg").unwrap_or("write error").to_string();
                if let Some(i) = usize::try_from(index).ok().and_then(|k| sent.get(k)) {
                    results[*i] = Err(StoreError::Rejected {
                        store: STORE,
                        reason: message,
                    });
                }
            }
        }
        if let Ok(concern) = reply.get_document("writeConcernError") {
            return Err(StoreError::Unavailable {
                store: STORE,
                reason: format!("write concern not met: {concern}"),
            });
        }
        Ok(results)
    }

    async fn get(&self, collection: &str, id: &str) -> StoreResult<Option<Value>> {
        let found = self
            .collection(collection)
            .find_one(doc! {"_id": id})
            .await
            .map_err(err)?;
        Ok(found.map(to_json))
    }

    async fn existing(&self, collection: &str, ids: &[String]) -> StoreResult<HashSet<String>> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let cursor = self
            .collection(collection)
            .find(doc! {"_id": {"$in": ids}})
            .projection(doc! {"_id": 1})
            .await
            .map_err(err)?;
        let found: Vec<Document> = cursor.try_collect().await.map_err(err)?;
        Ok(found
            .iter()
            .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
            .collect())
    }

    async fn count(&self, collection: &str) -> StoreResult<i64> {
        let n = self
            .collection(collection)
            .count_documents(doc! {})
            .await
            .map_err(err)?;
        Ok(n as i64)
    }

    async fn find(
        &self,
        collection: &str,
        filters: &[Filter],
        page: Page,
    ) -> StoreResult<Vec<Value>> {
        let mut conditions = Vec::new();
        for filter in filters {
            match filter {
                // Matches a scalar field, or an array field containing the value.
                Filter::Eq { field, value } => {
                    conditions.push(doc! {field.as_str(): value.as_str()})
                }
                Filter::Words { field, words } => {
                    for word in words {
                        conditions.push(
                            doc! {field.as_str(): {"$regex": regex_escape(word), "$options": "i"}},
                        );
                    }
                }
            }
        }
        let filter = if conditions.is_empty() {
            doc! {}
        } else {
            doc! {"$and": conditions}
        };
        let cursor = self
            .collection(collection)
            .find(filter)
            .sort(doc! {"_id": 1})
            .skip(page.skip)
            .limit(page.limit.min(i64::MAX as u64) as i64)
            .await
            .map_err(err)?;
        let found: Vec<Document> = cursor.try_collect().await.map_err(err)?;
        Ok(found.into_iter().map(to_json).collect())
    }

    async fn ping(&self) -> StoreResult<()> {
        self.db
            .run_command(doc! {"ping": 1})
            .await
            .map(drop)
            .map_err(err)
    }

    fn describe(&self) -> String {
        format!(
            "mongodb ({}, database {})",
            redact(&self.config.url),
            self.config.database
        )
    }
}
