//! S1, the producer: generates customers (pt_BR names), books (from [`crate::systems::bookstore::catalog`]) and
//! orders referencing them, and publishes each to its topic, keyed by entity id, wrapped
//! in the CloudEvents envelope.
//!
//! A round is one customer, one book and one order, published in that order so an order's
//! references are always published before it. Nothing is reported as sent before the bus
//! has made it durable.

use std::sync::Arc;

use fake::Fake;
use fake::faker::name::raw::{FirstName, LastName};
use fake::locales::PT_BR;
use fake::rand::rngs::StdRng;
use fake::rand::seq::{IndexedRandom, SliceRandom};
use fake::rand::{RngExt, SeedableRng};
use tokio_util::sync::CancellationToken;

use super::entities::{Book, Customer, Order};
use super::routing::{BookstoreTopics, Entity, route_of};
use crate::bus::{Bus, Record, Topics};
use crate::envelope::Envelope;
use crate::services::{Counters, Pace, ServiceError, send_rounds, short};

/// Rounds per publish when running flat out: big enough to amortize a durable commit.
const ROUNDS_PER_BATCH: u64 = 500;
/// How many recent customers orders pick from; bounds memory on endless runs.
const RECENT_CUSTOMERS: usize = 10_000;

/// S1's settings.
#[derive(Debug, Clone)]
pub struct S1Config {
    /// Rounds to produce (each: a customer, a book, an order); `None` runs until stopped.
    pub count: Option<u64>,
    /// Events per second; 0 is as fast as possible.
    pub rate: f64,
    /// Seed for reproducible data.
    pub seed: Option<u64>,
    /// Print one line per event.
    pub print_events: bool,
    /// Topic names.
    pub topics: Topics,
}

/// What S1 did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S1Report {
    /// Customers published.
    pub customers: u64,
    /// Books published.
    pub books: u64,
    /// Orders published.
    pub orders: u64,
    /// Events the receiver refused (HTTP 4xx); always 0 on the bus, where S2 dead-letters.
    pub rejected: u64,
}

/// Generates the bookstore's data.
pub struct Generator {
    rng: StdRng,
    books: Vec<Book>,
    next_book: usize,
    customers: Vec<String>,
    sent_books: Vec<String>,
    topics: Topics,
}

/// Lower-case ASCII for an e-mail local part: accents dropped, other symbols removed.
fn ascii_slug(s: &str) -> String {
    s.chars()
        .filter_map(|c| {
            let c = c.to_lowercase().next().unwrap_or(c);
            Some(match c {
                'á' | 'à' | 'â' | 'ã' | 'ä' => 'a',
                'é' | 'è' | 'ê' | 'ë' => 'e',
                'í' | 'ì' | 'î' | 'ï' => 'i',
                'ó' | 'ò' | 'ô' | 'õ' | 'ö' => 'o',
                'ú' | 'ù' | 'û' | 'ü' => 'u',
                'ç' => 'c',
                'ñ' => 'n',
                c if c.is_ascii_alphanumeric() => c,
                _ => return None,
            })
        })
        .collect()
}

impl Generator {
    /// A generator over `books`, seeded for reproducibility when `seed` is given.
    pub fn new(mut books: Vec<Book>, seed: Option<u64>, topics: Topics) -> Self {
        let mut rng = match seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => fake::rand::make_rng(),
        };
        books.shuffle(&mut rng);
        Self {
            rng,
            books,
            next_book: 0,
            customers: Vec::new(),
            sent_books: Vec::new(),
            topics,
        }
    }

    /// A new customer with a pt_BR name and an e-mail on a reserved example domain.
    pub fn customer(&mut self) -> Customer {
        let first: String = FirstName(PT_BR).fake_with_rng(&mut self.rng);
        let last: String = LastName(PT_BR).fake_with_rng(&mut self.rng);
        let domain = ["example.com", "example.org", "example.net"]
            .choose(&mut self.rng)
            .expect("non-empty");
        let n: u16 = self.rng.random_range(1..1000);
        let customer = Customer {
            id: uuid::Uuid::new_v4().to_string(),
            email: format!("{}.{}{n}@{domain}", ascii_slug(&first), ascii_slug(&last)),
            name: format!("{first} {last}"),
        };
        if self.customers.len() >= RECENT_CUSTOMERS {
            self.customers.swap_remove(0);
        }
        self.customers.push(customer.id.clone());
        customer
    }

    /// The next book of the catalogue, cycling through it.
    pub fn book(&mut self) -> Book {
        let book = self.books[self.next_book % self.books.len()].clone();
        self.next_book += 1;
        if self.sent_books.len() < self.books.len() {
            self.sent_books.push(book.id.clone());
        }
        book
    }

    /// An order by a customer already generated, for a book already generated.
    pub fn order(&mut self) -> Order {
        Order {
            id: uuid::Uuid::new_v4().to_string(),
            customer_id: self
                .customers
                .choose(&mut self.rng)
                .cloned()
                .expect("a customer was generated first"),
            book_id: self
                .sent_books
                .choose(&mut self.rng)
                .cloned()
                .expect("a book was generated first"),
            quantity: self.rng.random_range(1..=5),
            timestamp: crate::wire::format_timestamp(&chrono::Utc::now()),
        }
    }

    /// One round: a customer, a book and an order referencing customers and books
    /// generated so far (this round's included).
    pub fn entities(&mut self) -> (Customer, Book, Order) {
        let customer = self.customer();
        let book = self.book();
        let order = self.order();
        (customer, book, order)
    }

    /// One round as bus records, with output lines.
    pub fn round(&mut self) -> Vec<(Record, String)> {
        let (customer, book, order) = self.entities();
        let customer_line = format!("customer {} ({})", short(&customer.id), customer.name);
        let book_line = format!("book {} ({})", short(&book.id), book.title);
        let order_line = format!(
            "order {} ({} × book {})",
            short(&order.id),
            order.quantity,
            short(&order.book_id)
        );
        vec![
            (
                record(&self.topics, Entity::Customer, &customer.id, &customer),
                customer_line,
            ),
            (
                record(&self.topics, Entity::Book, &book.id, &book),
                book_line,
            ),
            (
                record(&self.topics, Entity::Order, &order.id, &order),
                order_line,
            ),
        ]
    }
}

fn record<T: serde::Serialize>(topics: &Topics, entity: Entity, id: &str, data: &T) -> Record {
    let kind = format!("livros.{}", entity.name());
    let event = Envelope::new(&kind, id, None, data);
    Record {
        topic: topics.entity(route_of(entity)),
        key: Some(id.to_string()),
        headers: event.headers(),
        payload: event.to_vec(),
    }
}

/// Runs S1 until it has produced `config.count` rounds or `shutdown` is cancelled.
pub async fn run(
    bus: Arc<dyn Bus>,
    books: Vec<Book>,
    config: S1Config,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) -> Result<S1Report, ServiceError> {
    let mut generator = Generator::new(books, config.seed, config.topics.clone());
    let mut report = S1Report::default();
    let pace = Pace {
        count: config.count,
        rate: config.rate,
        rounds_per_publish: ROUNDS_PER_BATCH,
        print: config.print_events,
    };
    send_rounds(
        &*bus,
        pace,
        &counters,
        &shutdown,
        || generator.round(),
        |_, record| match config.topics.route(&record.topic).map(|r| r.entity) {
            Some(Entity::Customer) => report.customers += 1,
            Some(Entity::Book) => report.books += 1,
            _ => report.orders += 1,
        },
    )
    .await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_data_is_valid_and_consistent() {
        let mut g = Generator::new(
            crate::systems::bookstore::catalog::offline(),
            Some(7),
            Topics::default(),
        );
        for _ in 0..50 {
            let records = g.round();
            let c =
                crate::systems::bookstore::entities::parse_customer(&records[0].0.payload).unwrap();
            assert!(c.email.is_ascii(), "{}", c.email);
            let domain = c.email.split('@').nth(1).unwrap();
            assert!(["example.com", "example.org", "example.net"].contains(&domain));
            crate::systems::bookstore::entities::parse_book(&records[1].0.payload).unwrap();
            let o =
                crate::systems::bookstore::entities::parse_order(&records[2].0.payload).unwrap();
            assert!((1..=5).contains(&o.quantity));
            assert_eq!(records[0].0.key.as_deref(), Some(c.id.as_str()));
        }
    }

    #[test]
    fn slugs_drop_accents() {
        assert_eq!(ascii_slug("Olívia"), "olivia");
        assert_eq!(ascii_slug("Conceição"), "conceicao");
        assert_eq!(ascii_slug("D'Ávila"), "davila");
    }
}
