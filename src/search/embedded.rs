//! The embedded search index: tantivy, in a directory beside the audit log
//! (`messages.log.index/`), for search with no server.
//!
//! One process writes it at a time (tantivy's lock file; S3's indexer, or `livros logs
//! search` catching up while no S3 runs); any number read it. Each batch is one commit
//! whose payload is the log position it reaches, so the documents and the position can
//! never disagree.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::Value;
use tantivy::collector::{Count, TopDocs};
use tantivy::directory::MmapDirectory;
use tantivy::query::{AllQuery, BooleanQuery, Occur, RangeQuery, TermQuery};
use tantivy::schema::{
    FAST, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions,
    Value as _,
};
use tantivy::tokenizer::{LowerCaser, SimpleTokenizer, TextAnalyzer};
use tantivy::{Index, IndexReader, IndexWriter, Order, ReloadPolicy, TantivyDocument, Term};

use super::{Document, Field, Found, Query, SearchEngine, SearchError, TEXT_FIELD};

/// Lines per commit: commits are the costly part, so batches are large.
const BATCH_LINES: usize = 20_000;
/// The writer's memory budget (tantivy wants at least 15 MB per indexing thread).
const WRITER_MEMORY: usize = 64 << 20;
/// The tokenizer of the full-text fields (matches [`super::words`]).
const WORDS: &str = "livros_words";
/// The stored copy of each document, returned by searches.
const SOURCE: &str = "_source";

fn schema() -> Schema {
    let mut builder = Schema::builder();
    let words = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(WORDS)
            .set_index_option(IndexRecordOption::Basic),
    );
    for field in Field::ALL {
        match field {
            Field::Keyword(name) => {
                builder.add_text_field(name, STRING);
            }
            Field::Integer(name) => {
                builder.add_i64_field(name, INDEXED);
            }
            Field::Text(name) => {
                builder.add_text_field(name, words.clone());
            }
        }
    }
    builder.add_text_field(TEXT_FIELD, words);
    builder.add_i64_field("timestamp_ms", INDEXED | FAST);
    builder.add_u64_field("log_position", INDEXED | FAST);
    builder.add_text_field(SOURCE, STORED);
    builder.build()
}

fn index_error(e: impl std::fmt::Display) -> SearchError {
    SearchError::Index(e.to_string())
}

struct Inner {
    dir: PathBuf,
    index: Index,
    /// The index's schema, kept to look fields up without cloning it each time.
    schema: Schema,
    reader: IndexReader,
    /// Taken on the first write; held (with tantivy's lock file) until dropped.
    writer: Mutex<Option<IndexWriter>>,
}

/// The embedded index of one audit log.
#[derive(Clone)]
pub struct Embedded {
    inner: Arc<Inner>,
}

impl Embedded {
    /// Opens the index in `dir`, creating it if needed.
    pub fn open(dir: &Path) -> Result<Self, SearchError> {
        std::fs::create_dir_all(dir)?;
        let directory = MmapDirectory::open(dir).map_err(index_error)?;
        let index = Index::open_or_create(directory, schema()).map_err(|e| {
            SearchError::Index(format!(
                "{e} (at {}; it is rebuilt from the audit log if you delete it)",
                dir.display()
            ))
        })?;
        index.tokenizers().register(
            WORDS,
            TextAnalyzer::builder(SimpleTokenizer::default())
                .filter(LowerCaser)
                .build(),
        );
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(index_error)?;
        Ok(Self {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                schema: index.schema(),
                index,
                reader,
                writer: Mutex::new(None),
            }),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, SearchError> + Send + 'static,
    ) -> Result<T, SearchError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .expect("the embedded index panicked")
    }
}

impl Inner {
    fn field(&self, name: &str) -> tantivy::schema::Field {
        self.schema
            .get_field(name)
            .expect("every field is in the schema")
    }

    fn to_tantivy(&self, doc: &Document) -> TantivyDocument {
        let mut out = TantivyDocument::new();
        let f = &doc.fields;
        for field in Field::ALL {
            let value = &f[field.name()];
            match field {
                Field::Keyword(name) | Field::Text(name) => {
                    if let Some(s) = value.as_str() {
                        out.add_text(self.field(name), s);
                    }
                }
                Field::Integer(name) => {
                    if let Some(n) = value.as_i64() {
                        out.add_i64(self.field(name), n);
                    }
                }
            }
        }
        if let Some(text) = f[TEXT_FIELD].as_str() {
            out.add_text(self.field(TEXT_FIELD), text);
        }
        if let Some(ms) = f["timestamp_ms"].as_i64() {
            out.add_i64(self.field("timestamp_ms"), ms);
        }
        out.add_u64(
            self.field("log_position"),
            f["log_position"].as_u64().unwrap_or(0),
        );
        let mut source = f.clone();
        if let Some(map) = source.as_object_mut() {
            map.remove(TEXT_FIELD);
        }
        out.add_text(self.field(SOURCE), source.to_string());
        out
    }

    fn query(&self, query: &Query) -> Box<dyn tantivy::query::Query> {
        if query.is_empty() {
            return Box::new(AllQuery);
        }
        let mut clauses: Vec<(Occur, Box<dyn tantivy::query::Query>)> = Vec::new();
        let term = |t: Term| -> Box<dyn tantivy::query::Query> {
            Box::new(TermQuery::new(t, IndexRecordOption::Basic))
        };
        for (field, value) in &query.terms {
            let f = self.field(field.name());
            match field {
                Field::Keyword(_) => {
                    clauses.push((Occur::Must, term(Term::from_field_text(f, value))))
                }
                Field::Integer(_) => {
                    let n: i64 = value.parse().unwrap_or_default();
                    clauses.push((Occur::Must, term(Term::from_field_i64(f, n))));
                }
                Field::Text(_) => {
                    let words: Vec<&str> = value.split(' ').filter(|w| !w.is_empty()).collect();
                    // No word at all matches nothing, as in Elasticsearch.
                    if words.is_empty() {
                        clauses.push((Occur::Must, Box::new(tantivy::query::EmptyQuery)));
                    }
                    for word in words {
                        clauses.push((Occur::Must, term(Term::from_field_text(f, word))));
                    }
                }
            }
        }
        let text = self.field(TEXT_FIELD);
        for word in &query.words {
            clauses.push((Occur::Must, term(Term::from_field_text(text, word))));
        }
        if query.since_ms.is_some() || query.until_ms.is_some() {
            use std::ops::Bound;
            let f = self.field("timestamp_ms");
            let lower = query.since_ms.map_or(Bound::Unbounded, |ms| {
                Bound::Included(Term::from_field_i64(f, ms))
            });
            let upper = query.until_ms.map_or(Bound::Unbounded, |ms| {
                Bound::Excluded(Term::from_field_i64(f, ms))
            });
            clauses.push((Occur::Must, Box::new(RangeQuery::new(lower, upper))));
        }
        Box::new(BooleanQuery::new(clauses))
    }
}

#[async_trait]
impl SearchEngine for Embedded {
    async fn position(&self) -> Result<u64, SearchError> {
        self.blocking(|inner| {
            let metas = inner.index.load_metas().map_err(index_error)?;
            Ok(metas.payload.and_then(|p| p.parse().ok()).unwrap_or(0))
        })
        .await
    }

    async fn index(&self, docs: Vec<Document>, position: u64) -> Result<(), SearchError> {
        self.blocking(move |inner| {
            let mut writer = inner
                .writer
                .lock()
                .expect("the writer lock is never poisoned");
            if writer.is_none() {
                let opened = inner
                    .index
                    .writer_with_num_threads(1, WRITER_MEMORY)
                    .map_err(|e| match e {
                        tantivy::TantivyError::LockFailure(..) => {
                            SearchError::Unavailable(format!(
                                "{} is being written by another process (an S3 of this data dir)",
                                inner.dir.display()
                            ))
                        }
                        e => index_error(e),
                    })?;
                *writer = Some(opened);
            }
            let w = writer.as_mut().expect("just opened");
            for doc in &docs {
                w.add_document(inner.to_tantivy(doc)).map_err(index_error)?;
            }
            let mut commit = w.prepare_commit().map_err(index_error)?;
            commit.set_payload(&position.to_string());
            commit.commit().map_err(index_error)?;
            Ok(())
        })
        .await
    }

    async fn search(&self, query: &Query) -> Result<Found, SearchError> {
        let query = query.clone();
        self.blocking(move |inner| {
            inner.reader.reload().map_err(index_error)?;
            let searcher = inner.reader.searcher();
            let q = inner.query(&query);
            let top = TopDocs::with_limit(query.limit.max(1))
                .order_by_fast_field::<u64>("log_position", Order::Desc);
            let (top, total) = searcher.search(&*q, &(top, Count)).map_err(index_error)?;
            let source = inner.field(SOURCE);
            let mut hits = Vec::with_capacity(top.len());
            for (_, address) in top.into_iter().take(query.limit) {
                let doc: TantivyDocument = searcher.doc(address).map_err(index_error)?;
                let text = doc
                    .get_first(source)
                    .and_then(|v| v.as_str())
                    .unwrap_or("null");
                hits.push(serde_json::from_str::<Value>(text).map_err(index_error)?);
            }
            Ok(Found {
                total: total as u64,
                hits,
            })
        })
        .await
    }

    fn batch_lines(&self) -> usize {
        BATCH_LINES
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn describe(&self) -> String {
        format!("embedded ({})", self.inner.dir.display())
    }
}
