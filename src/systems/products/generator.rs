//! The products' generator (`livros produce-product`, and `livros up`): registrations in
//! the seed's shape on `cadastro-produtos` — what a Brazilian shop lists, priced in BRL —
//! keyed by product id so a product's versions keep their order. About one in five is a
//! new version of a recent product (a new price or stock). With an invalid ratio, that
//! share is broken on purpose, each in one of the ways the scheduler must refuse.

use std::sync::Arc;

use fake::rand::rngs::StdRng;
use fake::rand::seq::IndexedRandom;
use fake::rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::routing::CADASTRO_PRODUTOS;
use crate::bus::{Bus, Record, Topics};
use crate::services::{Counters, ServiceError, send_rounds};

/// Rounds (one registration each) per publish when running flat out.
const ROUNDS_PER_PUBLISH: u64 = 500;

/// An item a category sells: its name and price range in BRL.
type Item = (&'static str, (f64, f64));

/// Categories, and what each sells.
const CATALOG: &[(&str, &[Item])] = &[
    (
        "Eletrodomésticos",
        &[
            ("Cafeteira Elétrica", (89.9, 699.0)),
            ("Liquidificador", (119.0, 459.0)),
            ("Air Fryer", (299.0, 899.0)),
            ("Micro-ondas 30L", (549.0, 1299.0)),
            ("Aspirador de Pó Vertical", (199.0, 999.0)),
        ],
    ),
    (
        "Informática",
        &[
            ("Notebook 15,6\"", (2499.0, 7999.0)),
            ("Mouse sem Fio", (39.9, 349.0)),
            ("Teclado Mecânico", (189.0, 899.0)),
            ("Monitor 27\" IPS", (999.0, 2899.0)),
            ("SSD NVMe 1TB", (299.0, 899.0)),
        ],
    ),
    (
        "Livros",
        &[
            ("Dom Casmurro", (19.9, 59.9)),
            ("Grande Sertão: Veredas", (49.9, 129.0)),
            ("Vidas Secas", (24.9, 69.9)),
            ("A Hora da Estrela", (29.9, 64.9)),
            ("Capitães da Areia", (29.9, 74.9)),
        ],
    ),
    (
        "Moda",
        &[
            ("Camiseta de Algodão", (29.9, 129.0)),
            ("Calça Jeans", (99.0, 329.0)),
            ("Tênis de Corrida", (199.0, 899.0)),
            ("Jaqueta Corta-vento", (149.0, 499.0)),
        ],
    ),
    (
        "Casa e Cozinha",
        &[
            ("Jogo de Panelas Antiaderente", (199.0, 799.0)),
            ("Faqueiro Inox 24 Peças", (79.9, 299.0)),
            ("Jogo de Cama Queen", (129.0, 449.0)),
            ("Garrafa Térmica 1L", (49.9, 189.0)),
        ],
    ),
    (
        "Esporte e Lazer",
        &[
            ("Bicicleta Aro 29", (1299.0, 3999.0)),
            ("Bola de Futebol", (59.9, 299.0)),
            ("Halteres 10kg (par)", (149.0, 399.0)),
            ("Barraca 4 Pessoas", (299.0, 999.0)),
        ],
    ),
];

/// Words that make one listing different from the next.
const VARIANTS: &[&str] = &[
    "Preto", "Branco", "Inox", "Azul", "Vermelho", "Cinza", "Compacto", "Pro", "Plus", "Max",
];
/// Brands, made up.
const BRANDS: &[&str] = &[
    "Aurora",
    "Tupã",
    "Jacarandá",
    "Ipê",
    "Boto",
    "Sabiá",
    "Caju",
];

/// Registrations, some invalid on purpose.
pub struct Registrations {
    rng: StdRng,
    next_id: u64,
    recent: Vec<Value>,
    invalid_ratio: f64,
}

impl Registrations {
    /// A generator; `invalid_ratio` (0 to 1) of its registrations are broken.
    pub fn new(seed: Option<u64>, invalid_ratio: f64) -> Self {
        let rng = match seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => fake::rand::make_rng(),
        };
        let mut g = Self {
            rng,
            next_id: 0,
            recent: Vec::new(),
            invalid_ratio: invalid_ratio.clamp(0.0, 1.0),
        };
        // Ids unlikely to meet those of another run.
        g.next_id = g.rng.random_range(100_000..900_000) * 1000;
        g
    }

    /// The next registration, and whether it is valid.
    pub fn registration(&mut self) -> (Value, bool) {
        let product = if !self.recent.is_empty() && self.rng.random_bool(0.2) {
            self.new_version()
        } else {
            self.new_product()
        };
        if self.recent.len() >= 64 {
            self.recent.remove(0);
        }
        self.recent.push(product.clone());
        if self.rng.random_bool(self.invalid_ratio) {
            (self.broken(product), false)
        } else {
            (product, true)
        }
    }

    fn new_product(&mut self) -> Value {
        let (category, items) = CATALOG.choose(&mut self.rng).expect("a category");
        let (item, (low, high)) = items.choose(&mut self.rng).expect("an item");
        let brand = BRANDS.choose(&mut self.rng).expect("a brand");
        let variant = VARIANTS.choose(&mut self.rng).expect("a variant");
        self.next_id += 1;
        json!({
            "productId": format!("SKU-{}", self.next_id),
            "productName": format!("{item} {brand} {variant}"),
            "productDescription": format!("{item} {brand}, linha {variant}. Garantia de 12 meses."),
            "price": self.price(*low, *high),
            "currency": "BRL",
            "stockQuantity": self.rng.random_range(0..500),
            "category": category,
        })
    }

    /// A recent product with a new price or stock.
    fn new_version(&mut self) -> Value {
        let i = self.rng.random_range(0..self.recent.len());
        let mut product = self.recent[i].clone();
        if self.rng.random_bool(0.5) {
            let old = product["price"].as_f64().unwrap_or(100.0);
            product["price"] = self.price(old * 0.8, old * 1.1);
        } else {
            product["stockQuantity"] = json!(self.rng.random_range(0..500));
        }
        product
    }

    /// A price between `low` and `high`, ending in ,90 or ,99 as shops price.
    fn price(&mut self, low: f64, high: f64) -> Value {
        let reais =
            self.rng
                .random_range(low.floor()..high.ceil().max(low.floor() + 1.0)) as i64;
        let cents = *[90_i64, 99, 0].choose(&mut self.rng).expect("cents");
        let text = format!("{reais}.{cents:02}");
        serde_json::from_str(&text).expect("a decimal is a JSON number")
    }

    /// `product`, broken in one of the ways the scheduler refuses.
    fn broken(&mut self, mut product: Value) -> Value {
        match self.rng.random_range(0..6) {
            0 => product["price"] = json!(-9.9),
            1 => product["price"] = json!(10.999),
            2 => product["currency"] = json!("REAIS"),
            3 => product["stockQuantity"] = json!(-1),
            4 => product["productName"] = json!(""),
            _ => {
                product
                    .as_object_mut()
                    .expect("an object")
                    .remove("productId");
            }
        }
        product
    }
}

/// Publishes registrations on `cadastro-produtos` until `config.count` or `shutdown`;
/// returns how many valid and invalid ones were sent.
pub async fn run(
    bus: Arc<dyn Bus>,
    topics: Topics,
    config: crate::systems::GenConfig,
    invalid_ratio: f64,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) -> Result<(u64, u64), ServiceError> {
    let mut registrations = Registrations::new(config.seed, invalid_ratio);
    let topic = topics.name(CADASTRO_PRODUTOS);
    // Whether each record in flight is valid, in the order they go out.
    let valid_flags = std::sync::Mutex::new(std::collections::VecDeque::new());
    let (mut valid, mut invalid) = (0_u64, 0_u64);
    let pace = config.pace(ROUNDS_PER_PUBLISH);
    send_rounds(
        &*bus,
        pace,
        &counters,
        &shutdown,
        || {
            let (product, ok) = registrations.registration();
            valid_flags.lock().expect("not poisoned").push_back(ok);
            let key = product["productId"].as_str().map(str::to_string);
            let line = format!(
                "product {} ({}){}",
                key.as_deref().unwrap_or("without an id"),
                product["productName"].as_str().unwrap_or(""),
                if ok { "" } else { ", invalid on purpose" }
            );
            let record = Record {
                topic: topic.clone(),
                key,
                headers: Vec::new(),
                payload: product.to_string().into_bytes(),
            };
            vec![(record, line)]
        },
        |_, _| match valid_flags.lock().expect("not poisoned").pop_front() {
            Some(true) => valid += 1,
            _ => invalid += 1,
        },
    )
    .await?;
    Ok((valid, invalid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::systems::products::entities::parse_registration;

    #[test]
    fn generated_registrations_are_valid_unless_broken_on_purpose() {
        let mut g = Registrations::new(Some(7), 0.3);
        let (mut valid, mut invalid) = (0, 0);
        for _ in 0..500 {
            let (product, ok) = g.registration();
            let parsed = parse_registration(product.to_string().as_bytes(), chrono::Utc::now());
            assert_eq!(parsed.is_ok(), ok, "{product}: {parsed:?}");
            if ok {
                valid += 1;
                assert_eq!(parsed.unwrap().pricing.currency, "BRL");
            } else {
                invalid += 1;
            }
        }
        assert!((100..200).contains(&invalid), "{invalid} of 500 invalid");
        assert!(valid > 300);
    }
}
