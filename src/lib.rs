//! Livros & Dados: polyglot persistence over a message bus.
//!
//! Services exchange events through a bus, and each kind of data lands in the store that
//! suits it. See `ARCHITECTURE.md` for the bird's-eye view.
//!
//! # Layout
//!
//! The systems, one folder each ([`systems`]), on one core that names no entity:
//!
//! - [`systems`]: the bookstore (seeds 1 and 2), the streaming platform (3 and 4) and the
//!   products pipeline (5), each with its entities, **routing table**,
//!   handlers, HTTP routes, generator and migrations; [`systems::System`] is what the core
//!   needs of one.
//! - [`bus`]: the `Bus` trait (Kafka's model), topic names, and its implementations.
//! - [`store`]: one trait per kind of store (relational SQL, documents, key-value) and one
//!   module per implementation (embedded SQLite files, PostgreSQL, MongoDB, Redis).
//! - [`services`]: the consumer runtime (S2: poll → handler → dead letters → commit), the
//!   audit log (S3) and the transactional outbox's relay.
//! - [`api`]: HTTP plumbing every system's API uses: errors, body extractor, bearer token,
//!   paging, health, docs, bind and serve.
//! - [`dashboard`]: the live page on :8089 (pipelines, rates, lag, records, dead letters,
//!   recent messages, search and trace), its assets compiled in.
//! - [`app`]: wiring — opens what the settings name and runs the systems.
//! - [`wire`]: reading records the way the seeds' programs write them (ids, texts, times).
//! - [`envelope`]: the CloudEvents-style envelope generators wrap events in.
//! - [`loadgen`]: requests from concurrent workers and their latencies, for the benchmarks.
//! - [`search`]: the audit log searchable — an embedded tantivy index S3 always keeps, and
//!   Elasticsearch / OpenSearch when configured; one query language for both.
//! - [`metrics`]: the Prometheus metrics every service records, served at `/metrics`.
//! - [`trace`]: W3C trace context (`traceparent`) across HTTP and message headers.
//! - [`retry`], [`sqlite`]: backoff, and SQLite plumbing shared by the embedded parts.
//! - [`heap`]: the global allocator counted, for the soak's memory readout.

pub mod api;
pub mod app;
pub mod bench;
pub mod bus;
pub mod dashboard;
pub mod envelope;
pub mod heap;
pub mod loadgen;
pub mod metrics;
pub mod retry;
pub mod search;
pub mod services;
pub mod sqlite;
pub mod store;
pub mod systems;
pub mod trace;
pub mod wire;
