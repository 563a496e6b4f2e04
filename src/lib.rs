//! Livros & Dados: polyglot persistence over a message bus.
//!
//! Services exchange events through a bus, and each kind of data lands in the store that
//! suits it. See `ARCHITECTURE.md` for the bird's-eye view.
//!
//! # Layout
//!
//! - [`routing`]: **the routing table** — which entity goes to which store — and the
//!   [`routing::Router`] that applies it to batches of messages.
//! - [`domain`]: the entities and the one place that decides whether a message is valid.
//! - [`envelope`]: the CloudEvents-style envelope S1 wraps events in.
//! - [`bus`]: the `Bus` trait (Kafka's model) and its implementations.
//! - [`store`]: one trait per kind of store (relational, document, key-value) and one module
//!   per implementation (embedded SQLite files, PostgreSQL, Redis).
//! - [`services`]: S1 (producer), S2 (router into the stores), S3 (audit log).
//! - [`catalog`]: S1's books: the Google Books API, or the offline catalogue.
//! - [`api`]: S2's REST API (seed 2): the routing table over HTTP, OpenAPI, docs UI.
//! - [`app`]: wiring — opens what the settings name and runs the services.
//! - [`bench`]: `livros bench`.
//! - [`wire`]: reading values the way the seeds' programs write them (times, numbers).
//! - [`retry`], [`sqlite`]: backoff, and SQLite plumbing shared by the embedded parts.

pub mod api;
pub mod app;
pub mod bench;
pub mod bus;
pub mod catalog;
pub mod domain;
pub mod envelope;
pub mod retry;
pub mod routing;
pub mod services;
pub mod sqlite;
pub mod store;
pub mod wire;
