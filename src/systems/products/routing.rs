//! **The products' routing table** (seed 5): which data goes where, and the API's write.
//!
//! | data | arrives on | goes to | kept in |
//! |---|---|---|---|
//! | a registration (`productId`, `productName`, …) | topic `cadastro-produtos` | the scheduler, which posts it transformed to `POST /products/` | — |
//! | a product | `POST /products/` | table `products` and, when it changed, a row of `outbox`, in one transaction | relational store (PostgreSQL, or SQLite) |
//! | its announcement (the product as JSON; key = product id, header `version`) | the outbox relay | topic `produtos-persistidos` | the bus |
//! | a registration refused (invalid, a 4xx, or a 5xx after retries) | the scheduler | topic `erro-produtos`: the original bytes, key and headers, plus `dlq.reason` and where it came from | the bus |
//!
//! Nothing else decides where the products' data goes: the scheduler ([`super::scheduler`])
//! only calls the API, and the API writes only through [`ProductWriter`].

use std::sync::Arc;

use async_trait::async_trait;

use super::catalog;
use super::entities::parse_product;
use crate::services::{Handler, Outcome, Rejection};
use crate::store::{RelationalStore, StoreResult};
use crate::systems::Workers;

/// The seed's input topic: registrations.
pub const CADASTRO_PRODUTOS: &str = "cadastro-produtos";
/// The seed's output topic: each stored version of a product.
pub const PRODUTOS_PERSISTIDOS: &str = "produtos-persistidos";
/// Where the scheduler puts registrations it cannot get stored, with the reason.
pub const ERRO_PRODUTOS: &str = "erro-produtos";

/// A test-only crash point, set by `--fault` (`LIVROS_FAULT`): what a kill -9 at the worst
/// moment would do, on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Abort the process right after the transaction commits, before the relay can
    /// publish and before the client gets its answer.
    CrashAfterCommit,
}

impl Fault {
    /// The name `--fault` takes.
    pub const CRASH_AFTER_COMMIT: &'static str = "crash-after-commit";

    /// Reads `--fault`'s value.
    pub fn parse(s: &str) -> Option<Self> {
        (s == Self::CRASH_AFTER_COMMIT).then_some(Fault::CrashAfterCommit)
    }
}

/// The API's write: validates each posted product and stores the valid ones, with their
/// announcements, in one transaction; then wakes the relay.
pub struct ProductWriter {
    /// The relational store.
    pub store: Arc<dyn RelationalStore>,
    /// The deployment's name of `produtos-persistidos`.
    pub topic: String,
    /// The relay to wake after a commit.
    pub workers: Workers,
    /// A crash to inject, in tests.
    pub fault: Option<Fault>,
}

#[async_trait]
impl Handler for ProductWriter {
    async fn handle(&self, payloads: &[&[u8]]) -> StoreResult<Vec<Outcome>> {
        let parsed: Vec<_> = payloads.iter().map(|p| parse_product(p)).collect();
        let valid: Vec<_> = parsed.iter().filter_map(|p| p.as_ref().ok()).collect();
        let statements: Vec<_> = valid
            .iter()
            .flat_map(|p| {
                let write_id = uuid::Uuid::new_v4().to_string();
                catalog::store_statements(p, &self.topic, &write_id)
            })
            .collect();
        let mut refused = vec![None; parsed.len()];
        match self.store.transaction(&statements).await {
            Ok(_) => {}
            Err(e) if e.is_rejection() && valid.len() > 1 => {
                // One product broke a rule of the store: store them one by one, so only
                // that one is refused.
                let mut each = parsed.iter().enumerate().filter(|(_, p)| p.is_ok());
                for (i, p) in each.by_ref() {
                    let p = p.as_ref().expect("filtered");
                    let write_id = uuid::Uuid::new_v4().to_string();
                    match self
                        .store
                        .transaction(&catalog::store_statements(p, &self.topic, &write_id))
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if e.is_rejection() => refused[i] = Some(e.to_string()),
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(e) if e.is_rejection() => {
                if let Some(i) = parsed.iter().position(|p| p.is_ok()) {
                    refused[i] = Some(e.to_string());
                }
            }
            Err(e) => return Err(e),
        }
        if !statements.is_empty() {
            if self.fault == Some(Fault::CrashAfterCommit) {
                eprintln!("fault injected: aborting after the commit, before the publish");
                std::process::abort();
            }
            self.workers.wake();
        }
        Ok(parsed
            .into_iter()
            .zip(refused)
            .map(|(p, refused)| match (p, refused) {
                (Err(invalid), _) => Outcome::Rejected(invalid.into()),
                (Ok(_), Some(reason)) => Outcome::Rejected(Rejection::Store(reason)),
                (Ok(p), None) => Outcome::Stored {
                    id: p.id,
                    label: p.name,
                    out: Vec::new(),
                },
            })
            .collect())
    }
}
