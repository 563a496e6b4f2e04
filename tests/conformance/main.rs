//! The conformance suites: one per trait, each run against every implementation —
//! embedded always, the real service when its `LIVROS_TEST_*_URL` is set (always in CI).
//! One binary, so one link.

#[path = "../common/mod.rs"]
mod common;

mod bus;
mod document;
mod keyvalue;
mod outbox;
mod relational;
