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

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::catalog::{self, Stored};
use super::entities::{Product, parse_product};
use crate::api::batch::Batch;
use crate::services::Rejection;
use crate::store::{RelationalStore, StoreError, StoreResult};
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
/// announcements, in one transaction; then wakes the relay. Each body gets the product as
/// stored, or why it was refused.
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

impl ProductWriter {
    /// Stores `products` in one transaction: in rounds where no id comes twice (a second
    /// version of a product in the same batch goes in the next round, so it follows the
    /// first). Returns each one as stored, in order.
    async fn store(&self, products: &[&Product]) -> StoreResult<Vec<Stored>> {
        let mut rounds: Vec<Vec<&Product>> = Vec::new();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut placed = Vec::with_capacity(products.len());
        for p in products {
            let round = seen.entry(p.id.as_str()).or_insert(0);
            if rounds.len() <= *round {
                rounds.push(Vec::new());
            }
            placed.push(*round);
            rounds[*round].push(p);
            *round += 1;
        }
        let statements: Vec<_> = rounds
            .iter()
            .flat_map(|round| {
                let write_id = uuid::Uuid::new_v4().to_string();
                catalog::store_statements(round, &self.topic, &write_id)
            })
            .collect();
        let results = self.store.transaction(&statements).await?;
        // Each round's last statement read its products back.
        let per_round = statements.len() / rounds.len().max(1);
        let stored: Vec<HashMap<String, Stored>> = results
            .chunks(per_round)
            .map(|round| {
                catalog::stored_rows(round.last().map_or(&[][..], Vec::as_slice))
                    .into_iter()
                    .map(|s| (s.product.id.clone(), s))
                    .collect()
            })
            .collect();
        placed
            .iter()
            .zip(products)
            .map(|(&round, p)| {
                stored[round]
                    .get(&p.id)
                    .cloned()
                    .ok_or_else(|| StoreError::Fault {
                        store: "relational",
                        reason: format!("product `{}` was not there after writing it", p.id),
                    })
            })
            .collect()
    }
}

#[async_trait]
impl Batch for ProductWriter {
    type Input = axum::body::Bytes;
    type Output = Result<Stored, Rejection>;

    async fn apply(&self, payloads: &[axum::body::Bytes]) -> StoreResult<Vec<Self::Output>> {
        let parsed: Vec<_> = payloads.iter().map(|p| parse_product(p)).collect();
        let valid: Vec<(usize, &Product)> = parsed
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().ok().map(|p| (i, p)))
            .collect();
        if valid.is_empty() {
            return Ok(parsed
                .into_iter()
                .map(|p| Err(p.expect_err("none is valid").into()))
                .collect());
        }
        let products: Vec<&Product> = valid.iter().map(|(_, p)| *p).collect();
        // Per valid product, in order: stored, or refused by the store.
        let outcomes: Vec<Result<Stored, Rejection>> = match self.store(&products).await {
            Ok(stored) => stored.into_iter().map(Ok).collect(),
            Err(e) if e.is_rejection() && products.len() > 1 => {
                // One product broke a rule of the store: store them one by one, so only
                // that one is refused.
                let mut each = Vec::with_capacity(products.len());
                for p in &products {
                    each.push(match self.store(&[p]).await {
                        Ok(mut stored) => Ok(stored.remove(0)),
                        Err(e) if e.is_rejection() => Err(Rejection::Store(e.to_string())),
                        Err(e) => return Err(e),
                    });
                }
                each
            }
            Err(e) if e.is_rejection() => vec![Err(Rejection::Store(e.to_string()))],
            Err(e) => return Err(e),
        };
        let mut outcomes = outcomes.into_iter();
        let out = parsed
            .into_iter()
            .map(|p| match p {
                Ok(_) => outcomes.next().expect("one outcome per valid product"),
                Err(invalid) => Err(invalid.into()),
            })
            .collect();
        if self.fault == Some(Fault::CrashAfterCommit) {
            eprintln!("fault injected: aborting after the commit, before the publish");
            std::process::abort();
        }
        self.workers.wake();
        Ok(out)
    }
}
