//! **The routing table: which data goes to which store.** This file is the only place that
//! decides it; S2 (and, later, the HTTP API) ask it.
//!
//! | topic | entity | store | where exactly | why (the seed's "Escolha dos Bancos") |
//! |---|---|---|---|---|
//! | `customers` | customer | relational | table `customers` | structured, fixed fields, integrity |
//! | `books` | book | document | collection `books` | semi-structured, fields vary by source |
//! | `orders` | order | key-value | hash `order:<id>`, set `customer:<id>:orders` | fast writes and reads of recent history |
//!
//! Every topic has a dead-letter topic, `<topic>.dlq`, for messages that cannot be stored.
//! An order refers to its customer and book, which must be stored for it to be; they come
//! on their own topics, so an order whose customer or book is unknown is dead-lettered
//! only after the reference grace, once the customers' and books' consumers have stored
//! everything published by then (S2 waits: [`crate::services::s2::Referenced`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use super::customers::Customers;
use super::entities::{self as domain, Book, Customer, Order};
use crate::bus::{Topics, dlq_topic};
use crate::services::{Outcome, Rejection, short};
use crate::store::{KvWrite, StoreKind, StoreResult, Stores};
use crate::wire::Invalid;

/// The kinds of data the bookstore handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Entity {
    /// A customer.
    Customer,
    /// A book.
    Book,
    /// An order.
    Order,
}

impl Entity {
    /// Singular name, as users type it (`livros get customer …`).
    pub fn name(self) -> &'static str {
        match self {
            Entity::Customer => "customer",
            Entity::Book => "book",
            Entity::Order => "order",
        }
    }

    /// Plural name: the HTTP API's collection (`/customers`), as in the seed.
    pub fn plural(self) -> &'static str {
        match self {
            Entity::Customer => "customers",
            Entity::Book => "books",
            Entity::Order => "orders",
        }
    }
}

/// One row of the routing table.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// The topic carrying this entity.
    pub topic: &'static str,
    /// The entity.
    pub entity: Entity,
    /// The store that keeps it.
    pub store: StoreKind,
    /// The entities it refers to by id, which must be stored for it to be (they travel
    /// on their own topics, so S2 waits for them: see [`crate::services::s2::Referenced`]).
    pub refers_to: &'static [Entity],
}

/// The routing table.
pub const ROUTES: [Route; 3] = [
    Route {
        topic: "customers",
        entity: Entity::Customer,
        store: StoreKind::Relational,
        refers_to: &[],
    },
    Route {
        topic: "books",
        entity: Entity::Book,
        store: StoreKind::Document,
        refers_to: &[],
    },
    Route {
        topic: "orders",
        entity: Entity::Order,
        store: StoreKind::KeyValue,
        refers_to: &[Entity::Customer, Entity::Book],
    },
];

/// The document collection holding books.
pub const BOOKS_COLLECTION: &str = "books";

/// The route of an entity.
pub fn route_of(entity: Entity) -> Route {
    *ROUTES
        .iter()
        .find(|r| r.entity == entity)
        .expect("every entity has a route")
}

/// The bookstore's topic names in a deployment (behind its [`Topics`] prefix).
pub trait BookstoreTopics {
    /// The topic carrying `route`'s entity.
    fn entity(&self, route: Route) -> String;
    /// The entity topics.
    fn entities(&self) -> Vec<String>;
    /// Every topic the bookstore uses: the entity topics and their dead-letter topics.
    fn all(&self) -> Vec<String>;
    /// The route whose entity topic is `topic` (not its dead-letter topic).
    fn route(&self, topic: &str) -> Option<Route>;
}

impl BookstoreTopics for Topics {
    fn entity(&self, route: Route) -> String {
        self.name(route.topic)
    }

    fn entities(&self) -> Vec<String> {
        ROUTES.iter().map(|r| self.entity(*r)).collect()
    }

    fn all(&self) -> Vec<String> {
        ROUTES
            .iter()
            .flat_map(|r| [self.entity(*r), dlq_topic(&self.entity(*r))])
            .collect()
    }

    fn route(&self, topic: &str) -> Option<Route> {
        let name = self.strip(topic)?;
        ROUTES.iter().find(|r| r.topic == name).copied()
    }
}

/// Redis key of an order's hash.
pub fn order_key(id: &str) -> String {
    format!("order:{id}")
}

/// Redis key of the set of a customer's order ids.
pub fn customer_orders_key(customer_id: &str) -> String {
    format!("customer:{customer_id}:orders")
}

/// The key-value writes that store an order.
pub fn order_writes(order: &Order) -> [KvWrite; 2] {
    [
        KvWrite::HSet {
            key: order_key(&order.id),
            fields: vec![
                ("id".into(), order.id.clone()),
                ("customer_id".into(), order.customer_id.clone()),
                ("book_id".into(), order.book_id.clone()),
                ("quantity".into(), order.quantity.to_string()),
                ("timestamp".into(), order.timestamp.clone()),
            ],
        },
        KvWrite::SAdd {
            key: customer_orders_key(&order.customer_id),
            members: vec![order.id.clone()],
        },
    ]
}

/// Reads back the order stored in hash `order:<id>`; `None` when absent or not an order.
///
/// The id comes from the key, not from a field: the original servers wrote no `id` field.
/// Their values are all text (`"2"`, `"1795449989.1135995"`), so the quantity is read as a
/// whole number and the time brought to the canonical form; a time that cannot be read is
/// answered as stored rather than hiding the order.
pub fn order_from_hash(
    id: &str,
    fields: &std::collections::BTreeMap<String, String>,
) -> Option<Order> {
    let quantity =
        crate::wire::whole_number(&Value::String(fields.get("quantity")?.clone())).ok()?;
    let stored_time = fields.get("timestamp")?;
    let timestamp = crate::wire::timestamp(&Value::String(stored_time.clone()))
        .map(|t| crate::wire::format_timestamp(&t))
        .unwrap_or_else(|_| stored_time.clone());
    Some(Order {
        id: id.to_string(),
        customer_id: fields.get("customer_id")?.clone(),
        book_id: fields.get("book_id")?.clone(),
        quantity,
        timestamp,
    })
}

/// Time and volume spent in each store, for `livros bench`.
#[derive(Debug, Default)]
pub struct StoreTimings {
    counters: [(AtomicU64, AtomicU64); 3],
}

impl StoreTimings {
    fn index(kind: StoreKind) -> usize {
        match kind {
            StoreKind::Relational => 0,
            StoreKind::Document => 1,
            StoreKind::KeyValue => 2,
        }
    }

    fn record(&self, kind: StoreKind, records: usize, elapsed: Duration) {
        let (n, nanos) = &self.counters[Self::index(kind)];
        n.fetch_add(records as u64, Ordering::Relaxed);
        nanos.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Records written to `kind` and the time its writes took.
    pub fn get(&self, kind: StoreKind) -> (u64, Duration) {
        let (n, nanos) = &self.counters[Self::index(kind)];
        (
            n.load(Ordering::Relaxed),
            Duration::from_nanos(nanos.load(Ordering::Relaxed)),
        )
    }
}

/// Stores batches of messages where the routing table says, one outcome per message.
#[derive(Clone)]
pub struct Router {
    stores: Stores,
    timings: Arc<StoreTimings>,
    known: Arc<Known>,
}

/// Customer and book ids known to be stored, so that an order's references need no read.
///
/// Nothing in the bookstore deletes a customer or a book, so an id seen stored stays
/// stored: a hit is always right, and a miss only costs the read it saves. Bounded, so a
/// long run keeps its memory flat (a forgotten id is read again once).
struct Known {
    customers: moka::sync::Cache<String, ()>,
    books: moka::sync::Cache<String, ()>,
}

/// How many ids of each kind [`Known`] keeps (a few hundred bytes each, with the cache's own).
const KNOWN_IDS: u64 = 50_000;

impl Default for Known {
    fn default() -> Self {
        Self {
            customers: moka::sync::Cache::new(KNOWN_IDS),
            books: moka::sync::Cache::new(KNOWN_IDS),
        }
    }
}

impl Known {
    fn remember<'a>(cache: &moka::sync::Cache<String, ()>, ids: impl Iterator<Item = &'a String>) {
        for id in ids {
            cache.insert(id.clone(), ());
        }
    }

    /// `ids` split into those known to be stored and those to look up, each once.
    fn split<'a>(
        cache: &moka::sync::Cache<String, ()>,
        ids: impl Iterator<Item = &'a String>,
    ) -> (HashSet<String>, Vec<String>) {
        let (known, unknown): (HashSet<&String>, HashSet<&String>) =
            ids.partition(|id| cache.contains_key(*id));
        (
            known.into_iter().cloned().collect(),
            unknown.into_iter().cloned().collect(),
        )
    }
}

impl Router {
    /// A router over `stores`.
    pub fn new(stores: Stores) -> Self {
        Self {
            stores,
            timings: Arc::default(),
            known: Arc::default(),
        }
    }

    /// The stores behind this router.
    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    /// Time spent per store so far.
    pub fn timings(&self) -> Arc<StoreTimings> {
        self.timings.clone()
    }

    /// Parses, validates and stores `payloads` as `entity`, returning one outcome per
    /// payload in order. Invalid payloads are `Rejected` and do not affect the others.
    /// An order whose customer or book is not stored is rejected as
    /// [`Invalid::UnknownReference`] at once: S2 hands it back later (its grace), the
    /// HTTP API answers 422.
    ///
    /// `Err` means a store is unavailable or at fault (see [`crate::store::StoreError`]):
    /// nothing is lost, the caller retries the batch (writes are idempotent). Only what is
    /// wrong with a record itself makes it `Rejected`.
    pub async fn apply(&self, entity: Entity, payloads: &[&[u8]]) -> StoreResult<Vec<Outcome>> {
        match entity {
            Entity::Customer => {
                let parsed: Vec<_> = payloads.iter().map(|p| domain::parse_customer(p)).collect();
                self.store_customers(parsed).await
            }
            Entity::Book => {
                let parsed: Vec<_> = payloads.iter().map(|p| domain::parse_book(p)).collect();
                self.store_books(parsed).await
            }
            Entity::Order => {
                let parsed: Vec<_> = payloads.iter().map(|p| domain::parse_order(p)).collect();
                let checked = self.check_references(parsed).await?;
                self.store_orders(checked).await
            }
        }
    }

    async fn store_customers(
        &self,
        parsed: Vec<Result<Customer, Invalid>>,
    ) -> StoreResult<Vec<Outcome>> {
        let valid: Vec<Customer> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok().cloned())
            .collect();
        let store = &self.stores.relational;
        let failures = self
            .write_isolating(StoreKind::Relational, &valid, |batch| {
                let batch = batch.to_vec();
                async move { store.upsert_customers(&batch).await }
            })
            .await?;
        Known::remember(
            &self.known.customers,
            valid
                .iter()
                .map(|c| &c.id)
                .filter(|id| !failures.contains_key(*id)),
        );
        Ok(outcomes(
            parsed,
            &failures,
            |c| (c.id.clone(), c.name.clone()),
            |c| c.id.clone(),
        ))
    }

    async fn store_books(&self, parsed: Vec<Result<Book, Invalid>>) -> StoreResult<Vec<Outcome>> {
        let docs: Vec<(String, Value)> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .map(|b| {
                (
                    b.id.clone(),
                    serde_json::to_value(b).expect("books serialize"),
                )
            })
            .collect();
        let started = Instant::now();
        let results = self.stores.document.upsert(BOOKS_COLLECTION, &docs).await?;
        // Only the record's own fault turns it away; anything else fails the batch.
        if let Some(e) = results
            .iter()
            .find_map(|r| r.as_ref().err().filter(|e| !e.is_rejection()))
        {
            return Err(e.clone());
        }
        self.timings
            .record(StoreKind::Document, docs.len(), started.elapsed());
        let failures: HashMap<String, String> = docs
            .iter()
            .zip(results)
            .filter_map(|((id, _), r)| r.err().map(|e| (id.clone(), e.to_string())))
            .collect();
        Known::remember(
            &self.known.books,
            docs.iter()
                .map(|(id, _)| id)
                .filter(|id| !failures.contains_key(*id)),
        );
        Ok(outcomes(
            parsed,
            &failures,
            |b| (b.id.clone(), b.title.clone()),
            |b| b.id.clone(),
        ))
    }

    async fn store_orders(&self, parsed: Vec<Result<Order, Invalid>>) -> StoreResult<Vec<Outcome>> {
        let valid: Vec<Order> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok().cloned())
            .collect();
        let store = &self.stores.key_value;
        let failures = self
            .write_isolating(StoreKind::KeyValue, &valid, |batch| {
                let writes: Vec<KvWrite> = batch.iter().flat_map(order_writes).collect();
                async move { store.write(&writes).await }
            })
            .await?;
        Ok(outcomes(
            parsed,
            &failures,
            |o| {
                (
                    o.id.clone(),
                    format!("{} × book {}", o.quantity, short(&o.book_id)),
                )
            },
            |o| o.id.clone(),
        ))
    }

    /// Writes `items` in one batch; if the store rejects the batch, writes them one by one
    /// so that only the bad ones fail. Returns the rejected items' ids with reasons.
    async fn write_isolating<T, F, Fut>(
        &self,
        kind: StoreKind,
        items: &[T],
        write: F,
    ) -> StoreResult<HashMap<String, String>>
    where
        T: HasId,
        F: Fn(&[T]) -> Fut,
        Fut: std::future::Future<Output = StoreResult<()>>,
    {
        let mut failures = HashMap::new();
        if items.is_empty() {
            return Ok(failures);
        }
        let started = Instant::now();
        let result = write(items).await;
        self.timings.record(kind, items.len(), started.elapsed());
        match result {
            Ok(()) => {}
            Err(e) if !e.is_rejection() => return Err(e),
            Err(batch_error) => {
                tracing::warn!(store = kind.name(), error = %batch_error, "batch rejected; writing its records one by one");
                for item in items {
                    match write(std::slice::from_ref(item)).await {
                        Ok(()) => {}
                        Err(e) if !e.is_rejection() => return Err(e),
                        Err(e) => {
                            failures.insert(item.id().to_string(), e.to_string());
                        }
                    }
                }
            }
        }
        Ok(failures)
    }

    /// Turns orders whose customer or book is not stored into `UnknownReference`.
    async fn check_references(
        &self,
        mut parsed: Vec<Result<Order, Invalid>>,
    ) -> StoreResult<Vec<Result<Order, Invalid>>> {
        let known = &self.known;
        let orders: Vec<&Order> = parsed.iter().filter_map(|p| p.as_ref().ok()).collect();
        let (mut customers, customer_ids) =
            Known::split(&known.customers, orders.iter().map(|o| &o.customer_id));
        let (mut books, book_ids) = Known::split(&known.books, orders.iter().map(|o| &o.book_id));
        // Both reads at once: they go to different stores.
        let (customers_read, books_read) = futures::try_join!(
            async {
                match customer_ids.is_empty() {
                    true => Ok(HashSet::new()),
                    false => {
                        self.stores
                            .relational
                            .existing_customers(&customer_ids)
                            .await
                    }
                }
            },
            async {
                match book_ids.is_empty() {
                    true => Ok(HashSet::new()),
                    false => {
                        self.stores
                            .document
                            .existing(BOOKS_COLLECTION, &book_ids)
                            .await
                    }
                }
            },
        )?;
        Known::remember(&known.customers, customers_read.iter());
        Known::remember(&known.books, books_read.iter());
        customers.extend(customers_read);
        books.extend(books_read);
        for p in parsed.iter_mut() {
            if let Ok(order) = p {
                if !customers.contains(&order.customer_id) {
                    *p = Err(Invalid::UnknownReference {
                        kind: "customer",
                        id: order.customer_id.clone(),
                    });
                } else if !books.contains(&order.book_id) {
                    *p = Err(Invalid::UnknownReference {
                        kind: "book",
                        id: order.book_id.clone(),
                    });
                }
            }
        }
        Ok(parsed)
    }
}

/// Entities with an id, for isolating failures.
trait HasId {
    fn id(&self) -> &str;
}

impl HasId for Customer {
    fn id(&self) -> &str {
        &self.id
    }
}

impl HasId for Order {
    fn id(&self) -> &str {
        &self.id
    }
}

fn outcomes<T>(
    parsed: Vec<Result<T, Invalid>>,
    failures: &HashMap<String, String>,
    label: impl Fn(&T) -> (String, String),
    id: impl Fn(&T) -> String,
) -> Vec<Outcome> {
    parsed
        .into_iter()
        .map(|p| match p {
            Err(invalid) => Outcome::Rejected(invalid.into()),
            Ok(item) => match failures.get(&id(&item)) {
                Some(reason) => Outcome::Rejected(Rejection::Store(reason.clone())),
                None => {
                    let (id, label) = label(&item);
                    Outcome::Stored {
                        id,
                        label,
                        out: Vec::new(),
                    }
                }
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_has_one_route_and_a_dead_letter_topic() {
        let topics = Topics::default();
        assert_eq!(
            topics.route("customers").unwrap().store,
            StoreKind::Relational
        );
        assert_eq!(topics.route("books").unwrap().store, StoreKind::Document);
        assert_eq!(topics.route("orders").unwrap().store, StoreKind::KeyValue);
        assert!(topics.route("customers.dlq").is_none());
        assert_eq!(topics.all().len(), 6);
        assert!(topics.all().contains(&"orders.dlq".to_string()));
        let staging = Topics::new("staging.");
        assert_eq!(staging.entity(route_of(Entity::Order)), "staging.orders");
        assert_eq!(staging.route("staging.books").unwrap().entity, Entity::Book);
        assert!(staging.route("books").is_none());
        assert!(staging.all().contains(&"staging.customers.dlq".to_string()));
    }

    #[test]
    fn order_hash_round_trips() {
        let order = Order {
            id: "o1".into(),
            customer_id: "c1".into(),
            book_id: "b1".into(),
            quantity: 3,
            timestamp: "2024-01-01T00:00:00.000000Z".into(),
        };
        let [
            KvWrite::HSet { key, fields },
            KvWrite::SAdd { key: set, .. },
        ] = order_writes(&order)
        else {
            panic!("an order is a hash and a set entry");
        };
        assert_eq!(key, "order:o1");
        assert_eq!(set, "customer:c1:orders");
        assert_eq!(
            order_from_hash("o1", &fields.into_iter().collect()),
            Some(order)
        );
    }

    #[test]
    fn orders_the_original_servers_wrote_are_read() {
        // `order:<id>` as the seed's S2 wrote it: no `id`, every value a string.
        let fields = [
            ("customer_id", "c1"),
            ("book_id", "b1"),
            ("quantity", "3"),
            ("timestamp", "1795449989.1135995"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let order = order_from_hash("o9", &fields).unwrap();
        assert_eq!(order.id, "o9");
        assert_eq!(order.quantity, 3);
        assert_eq!(order.timestamp, "2026-11-23T16:06:29.113600Z");
    }

    #[test]
    fn short_ids_keep_eight_characters() {
        assert_eq!(short("3f2a9c1e-aaaa"), "3f2a9c1e…");
        assert_eq!(short("abc"), "abc");
    }
}
