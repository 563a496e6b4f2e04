//! The document store on MongoDB, through the official driver.
//!
//! Each document is stored with `_id` = its id (so the id is unique by construction; a
//! unique index on `id` says so too), and the fields as given. A database the original
//! bookstore filled is read and written in place: its books carry MongoDB's own ObjectId
//! as `_id` and the book id in a field `id` (an integer there when the seed used one), so
//! every lookup matches either, and an upsert of such a book replaces it under its own
//! `_id` instead of inserting a second copy. Upserts go to the server as one unordered
//! `update` command per batch — supported by every MongoDB since 3.6, unlike the
//! client-level bulk write of 8.0 — whose per-statement errors say which documents failed,
//! so a bad document fails alone.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use ::mongodb::bson::{Bson, Document, doc};
use ::mongodb::error::{ErrorKind, RETRYABLE_WRITE_ERROR};
use ::mongodb::options::{ClientOptions, IndexOptions};
use ::mongodb::{Client, Collection, Database, IndexModel};
use async_trait::async_trait;
use futures::TryStreamExt;
use serde_json::Value;

use super::{Blame, DocumentStore, Filter, OpenError, Page, Sort, StoreError, StoreResult, redact};

const STORE: &str = "mongodb";
/// How long to look for a server before an operation counts as failed (and is retried).
const SELECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// A whole operation failing is never one record's fault (per-document write errors are
/// read from the reply, see [`per_document`]): it is transient or the store's.
fn err(e: ::mongodb::error::Error) -> StoreError {
    let transient = matches!(
        *e.kind,
        ErrorKind::Io(_)
            | ErrorKind::ServerSelection { .. }
            | ErrorKind::ConnectionPoolCleared { .. }
    ) || e.contains_label(RETRYABLE_WRITE_ERROR);
    let blame = if transient {
        Blame::Transient
    } else {
        Blame::Store
    };
    StoreError::classified(STORE, blame, e)
}

/// One document's write error: the document's fault (a duplicate key, a validator, too
/// large…), except where the server says we may not write at all (Unauthorized, 13).
fn per_document(code: i32, message: String) -> StoreError {
    let blame = if code == 13 {
        Blame::Store
    } else {
        Blame::Data
    };
    StoreError::classified(STORE, blame, message)
}

/// Settings of the MongoDB store.
#[derive(Debug, Clone)]
pub struct MongoConfig {
    /// `mongodb://…`
    pub url: String,
    /// Database name (`books_db` by default).
    pub database: String,
    /// The collections the systems use, by their name: the name in this database, and
    /// the fields to index besides the unique `id`.
    pub collections: HashMap<String, (String, Vec<String>)>,
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

/// The values a seed may have stored an id as in `id`: the text, and the integer when the
/// text is one (`"42"` and `42`).
fn id_values(ids: &[String]) -> Vec<Bson> {
    let mut values = Vec::with_capacity(ids.len());
    for id in ids {
        values.push(Bson::String(id.clone()));
        if let Ok(n) = id.parse::<i64>()
            && n.to_string() == *id
        {
            values.push(Bson::Int64(n));
        }
    }
    values
}

/// The condition that finds the documents with any of these ids: ours by `_id`, the
/// original servers' by `id`.
fn by_ids(ids: &[String]) -> Document {
    doc! {"$or": [{"_id": {"$in": ids}}, {"id": {"$in": id_values(ids)}}]}
}

/// A stored id as text, whether a string or a number.
fn id_text(value: &Bson) -> Option<String> {
    match value {
        Bson::String(s) => Some(s.clone()),
        Bson::Int32(n) => Some(n.to_string()),
        Bson::Int64(n) => Some(n.to_string()),
        _ => None,
    }
}

fn to_json(mut document: Document) -> Value {
    document.remove("_id");
    Bson::Document(document).into_relaxed_extjson()
}

/// MongoDB's codes for "duplicate key" and "an index with these keys exists with other
/// options" (IndexOptionsConflict, IndexKeySpecsConflict).
const DUPLICATE_KEY: i32 = 11000;
const INDEX_CONFLICT: [i32; 2] = [85, 86];

/// A unique index on `id`. A collection a seed's server filled may hold the same document
/// twice (it inserted on every message); then the unique index cannot be built, and a
/// plain one is used instead, with a warning saying how to fix it. Nothing is deleted.
async fn ensure_id_index(coll: &Collection<Document>) -> ::mongodb::error::Result<()> {
    let unique = IndexModel::builder()
        .keys(doc! {"id": 1})
        .options(IndexOptions::builder().unique(true).build())
        .build();
    let Err(e) = coll.create_index(unique).await else {
        return Ok(());
    };
    let code = match &*e.kind {
        ErrorKind::Command(c) => c.code,
        _ => return Err(e),
    };
    if code != DUPLICATE_KEY && !INDEX_CONFLICT.contains(&code) {
        return Err(e);
    }
    tracing::warn!(
        collection = coll.name(),
        "some documents share an `id` (a seed's server inserted a document every time it was sent), so `id` cannot be made unique; reads and updates touch one of them. Remove the duplicates and restart to get the unique index. ({e})"
    );
    coll.create_index(IndexModel::builder().keys(doc! {"id": 1}).build())
        .await
        .map(drop)
        .or_else(|e| match &*e.kind {
            // The plain index is already there from an earlier start.
            ErrorKind::Command(c) if INDEX_CONFLICT.contains(&c.code) => Ok(()),
            _ => Err(e),
        })
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
        for (name, indexed) in store.config.collections.values() {
            let coll: Collection<Document> = store.db.collection(name);
            let indexes: Vec<IndexModel> = indexed
                .iter()
                .map(|field| IndexModel::builder().keys(doc! {field.as_str(): 1}).build())
                .collect();
            if !indexes.is_empty() {
                coll.create_indexes(indexes)
                    .await
                    .map_err(|e| open_error(format!("creating indexes on `{name}`: {e}")))?;
            }
            ensure_id_index(&coll)
                .await
                .map_err(|e| open_error(format!("creating the `id` index on `{name}`: {e}")))?;
        }
        Ok(store)
    }

    /// The `_id`s of documents that hold one of `ids` in their `id` field under another
    /// `_id` — books the original servers stored — by id. Where it stored a book twice,
    /// the first copy found is the one updated.
    async fn foreign_ids(
        &self,
        collection: &str,
        ids: &[String],
    ) -> StoreResult<HashMap<String, Bson>> {
        let cursor = self
            .collection(collection)
            .find(doc! {"id": {"$in": id_values(ids)}, "_id": {"$nin": ids}})
            .projection(doc! {"_id": 1, "id": 1})
            .await
            .map_err(err)?;
        let found: Vec<Document> = cursor.try_collect().await.map_err(err)?;
        let mut foreign = HashMap::new();
        for d in found {
            if let (Some(id), Some(oid)) = (d.get("id").and_then(id_text), d.get("_id")) {
                foreign.entry(id).or_insert_with(|| oid.clone());
            }
        }
        Ok(foreign)
    }

    fn collection(&self, logical: &str) -> Collection<Document> {
        let name = self
            .config
            .collections
            .get(logical)
            .map_or(logical, |(name, _)| name.as_str());
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
        crate::metrics::timed_store("document", "mongodb", async {
            if docs.is_empty() {
                return Ok(Vec::new());
            }
            let ids: Vec<String> = docs.iter().map(|(id, _)| id.clone()).collect();
            let foreign = self.foreign_ids(collection, &ids).await?;
            let mut results: Vec<StoreResult<()>> = docs.iter().map(|_| Ok(())).collect();
            let mut updates = Vec::with_capacity(docs.len());
            let mut sent = Vec::with_capacity(docs.len());
            for (i, (id, body)) in docs.iter().enumerate() {
                // The driver would fail the whole command on it, not this document alone.
                if let Some(name) = body.as_object().and_then(crate::wire::nul_field_name) {
                    results[i] = Err(StoreError::Rejected {
                        store: STORE,
                        reason: format!("field name {name:?} contains a NUL character"),
                    });
                    continue;
                }
                match ::mongodb::bson::to_document(body) {
                    Ok(mut document) => {
                        let target = foreign
                            .get(id)
                            .cloned()
                            .unwrap_or_else(|| Bson::String(id.clone()));
                        document.insert("_id", target.clone());
                        updates.push(doc! {"q": {"_id": target}, "u": document, "upsert": true});
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
                    let code = e.get_i32("code").unwrap_or(0);
                    let message = e.get_str("errmsg").unwrap_or("write error").to_string();
                    if let Some(i) = usize::try_from(index).ok().and_then(|k| sent.get(k)) {
                        results[*i] = Err(per_document(code, message));
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
        })
        .await
    }

    async fn get(&self, collection: &str, id: &str) -> StoreResult<Option<Value>> {
        let found = self
            .collection(collection)
            .find_one(by_ids(std::slice::from_ref(&id.to_string())))
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
            .find(by_ids(ids))
            .projection(doc! {"_id": 1, "id": 1})
            .await
            .map_err(err)?;
        let found: Vec<Document> = cursor.try_collect().await.map_err(err)?;
        let wanted: HashSet<&String> = ids.iter().collect();
        Ok(found
            .iter()
            .flat_map(|d| [d.get("_id"), d.get("id")])
            .filter_map(|v| v.and_then(id_text))
            .filter(|id| wanted.contains(id))
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

    async fn find_sorted(
        &self,
        collection: &str,
        filters: &[Filter],
        sort: Option<&Sort>,
        page: Page,
    ) -> StoreResult<Vec<Value>> {
        let mut conditions = Vec::new();
        for filter in filters {
            match filter {
                // Matches a scalar field, or an array field containing the value.
                Filter::Eq { field, value } => {
                    let value =
                        Bson::try_from(value.clone()).map_err(|e| StoreError::Rejected {
                            store: STORE,
                            reason: format!("`{value}` cannot be a MongoDB value: {e}"),
                        })?;
                    conditions.push(doc! {field.as_str(): value})
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
            .sort(match sort {
                Some(sort) => {
                    let direction = if sort.descending { -1 } else { 1 };
                    doc! {sort.field.as_str(): direction, "id": 1, "_id": 1}
                }
                None => doc! {"id": 1, "_id": 1},
            })
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
