//! `livros`: the command line. Parses flags (each with an environment variable), sets up
//! logging, and calls into the library. Errors print as one line that says what to check.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use livros::app::{self, Settings, Systems};
use livros::bus::Topics;
use livros::services::Counters;
use livros::store::{Page, StoreConfig};
use livros::systems::bookstore::catalog::{self, book_filters};
use livros::systems::bookstore::client::HttpTarget;
use livros::systems::bookstore::generator::S1Config;
use livros::systems::bookstore::routing::BOOKS_COLLECTION;
use livros::systems::{GenConfig, GetError, System};

// mimalloc: the pipeline allocates many small buffers across threads, where glibc's
// allocator showed up as a quarter of the CPU profile. Counted, for the soak's readout of
// what Rust's heap holds (`livros::heap`); SQLite allocates from it too
// (`livros::sqlite::heap`), and it gives freed memory back after 10 ms (`main`).
#[global_allocator]
static GLOBAL: livros::heap::Counting<mimalloc::MiMalloc> =
    livros::heap::Counting(mimalloc::MiMalloc);

/// Livros & Dados: polyglot persistence over a message bus.
///
/// Three systems on one core: the bookstore (seeds 1 and 2: customers in a relational
/// store, books in a document store, orders in a key-value store; REST API on :5000), the
/// streaming platform (seeds 3 and 4: a gateway on :8000 publishes user requests, the
/// processor applies each exactly once across the three stores and answers), and the
/// products pipeline (seed 5: a scheduler posts registrations from `cadastro-produtos` to
/// the products API on :8001, which stores them and announces each version on
/// `produtos-persistidos` through an outbox). Each system's S1 generates events; S2 stores
/// each kind of data where its routing table says; S3 appends every message to an audit
/// log. With no URLs given, everything runs embedded under --data-dir: no servers needed.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Global {
    /// Directory for the embedded bus, embedded stores and the audit log.
    #[arg(
        long,
        env = "LIVROS_DATA_DIR",
        default_value = "livros-data",
        global = true
    )]
    data_dir: PathBuf,

    /// PostgreSQL URL for the relational data (customers; users, subscriptions, payments…; products and the outbox) (e.g. postgres://user:pass@127.0.0.1:5432/livros).
    /// Unset: embedded SQLite in the data dir.
    #[arg(long, env = "LIVROS_POSTGRES_URL", global = true)]
    postgres_url: Option<String>,

    /// Redis URL for the key-value data (orders; request statuses) (e.g. redis://127.0.0.1:6379).
    /// Unset: embedded key-value store.
    #[arg(long, env = "LIVROS_REDIS_URL", global = true)]
    redis_url: Option<String>,

    /// MongoDB URL for the document store (books; the streaming catalog, views and
    /// recommendations), e.g. mongodb://127.0.0.1:27017. Unset: embedded document store.
    #[arg(long, env = "LIVROS_MONGODB_URL", global = true)]
    mongodb_url: Option<String>,

    /// MongoDB database holding the catalogue.
    #[arg(
        long,
        env = "LIVROS_MONGODB_DATABASE",
        default_value = "books_db",
        global = true
    )]
    mongodb_database: String,

    /// MongoDB collection holding books.
    #[arg(
        long,
        env = "LIVROS_MONGODB_BOOKS_COLLECTION",
        default_value = "books",
        global = true
    )]
    mongodb_books_collection: String,

    /// Prefix for every Redis key, to share one Redis between deployments.
    #[arg(long, env = "LIVROS_REDIS_PREFIX", default_value = "", global = true)]
    redis_prefix: String,

    /// Partitions of each topic created at start.
    #[arg(long, env = "LIVROS_PARTITIONS", default_value_t = 3, global = true)]
    partitions: i32,

    /// The audit log S3 appends to. Default: <data dir>/messages.log.
    #[arg(long, env = "LIVROS_AUDIT_LOG", global = true)]
    audit_log: Option<PathBuf>,

    /// Kafka brokers (host:port,…): use Kafka as the bus instead of the embedded one.
    #[arg(long, env = "LIVROS_KAFKA_BROKERS", global = true)]
    kafka_brokers: Option<String>,

    /// Prefix for every topic name (e.g. `staging.`), so deployments can share a Kafka
    /// cluster. Empty: the seeds' names (`customers`, `books`, `orders`).
    #[arg(long, env = "LIVROS_TOPIC_PREFIX", default_value = "", global = true)]
    topic_prefix: String,

    /// Replication factor of the topics created on Kafka at start.
    #[arg(
        long,
        env = "LIVROS_KAFKA_REPLICATION",
        default_value_t = 1,
        global = true
    )]
    kafka_replication: i32,

    /// Bearer token of S2's HTTP API: the server requires it for writes, S1 (`--via http`)
    /// sends it. Unset: writes are open.
    #[arg(long, env = "LIVROS_API_TOKEN", global = true, hide_env_values = true)]
    api_token: Option<String>,

    /// The systems to run, comma-separated: `bookstore`, `streaming`, `products`. Default:
    /// every system.
    #[arg(long, env = "LIVROS_SYSTEMS", global = true, value_parser = parse_systems)]
    systems: Option<SystemsArg>,

    /// Google Books API key; without it (or when the API is unreachable) S1 uses the
    /// offline catalogue.
    #[arg(
        long,
        env = "GOOGLE_BOOKS_API_KEY",
        global = true,
        hide_env_values = true
    )]
    google_books_api_key: Option<String>,

    /// How many seconds a streaming session lives after its last activity.
    #[arg(long, env = "LIVROS_SESSION_TTL", global = true, default_value_t = 1800.0,
        value_parser = parse_seconds)]
    session_ttl: f64,

    /// Where the products scheduler posts (the products API's `POST /products/`). Default:
    /// the API this process serves, or http://127.0.0.1:8001/products/.
    #[arg(long, env = "LIVROS_PRODUCTS_API_URL", global = true)]
    products_api_url: Option<url::Url>,

    /// Products the scheduler posts at once (each product's versions still go one after
    /// the other, in order).
    #[arg(long, env = "LIVROS_POST_CONCURRENCY", global = true,
        default_value_t = livros::systems::products::DEFAULT_CONCURRENCY)]
    post_concurrency: usize,

    /// Elasticsearch or OpenSearch (e.g. http://127.0.0.1:9200): S3 also indexes every
    /// audit line there, back-filling from the file after an outage. Unset: the file only.
    #[arg(long, env = "LIVROS_ELASTICSEARCH_URL", global = true)]
    elasticsearch_url: Option<url::Url>,

    /// The index S3 writes into.
    #[arg(long, env = "LIVROS_ELASTICSEARCH_INDEX", global = true,
        default_value = livros::search::DEFAULT_INDEX)]
    elasticsearch_index: String,

    /// Testing only: a crash to inject (`crash-after-commit`: the products API aborts right
    /// after committing a product, before its announcement is published).
    #[arg(long, env = "LIVROS_FAULT", global = true, hide = true, value_parser = parse_fault)]
    fault: Option<String>,
}

/// The systems `--systems` names.
#[derive(Clone)]
struct SystemsArg(Vec<Arc<dyn System>>);

/// A positive number of seconds (fractions allowed).
fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok(n),
        _ => Err(format!("`{s}` is not a positive number of seconds")),
    }
}

fn parse_systems(s: &str) -> Result<SystemsArg, String> {
    let systems = livros::systems::named(s)?;
    if systems.is_empty() {
        return Err("name at least one system".into());
    }
    Ok(SystemsArg(systems))
}

#[derive(Args, Clone)]
struct ProduceArgs {
    /// Rounds to produce per system, then exit once all are processed (a bookstore round:
    /// a customer, a book, an order; a streaming round: a user, their plan, payment and
    /// preferences, a session with three views, a rating, a heartbeat, recommendations and
    /// a cache read; a products round: one registration). Unset: run until Ctrl-C.
    #[arg(long)]
    count: Option<u64>,

    /// Events per second; 0 means as fast as possible.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,

    /// Seed for reproducible data.
    #[arg(long)]
    seed: Option<u64>,

    /// Share of the products' registrations broken on purpose (0 to 1), to watch them go to
    /// `erro-produtos` with their reasons.
    #[arg(long, default_value_t = 0.0, value_parser = parse_ratio)]
    invalid_ratio: f64,
}

/// A crash point `--fault` knows.
fn parse_fault(s: &str) -> Result<String, String> {
    use livros::systems::products::routing::Fault;
    Fault::parse(s).map(|_| s.to_string()).ok_or_else(|| {
        format!(
            "unknown fault `{s}`: the one known is `{}`",
            Fault::CRASH_AFTER_COMMIT
        )
    })
}

/// A share, 0 to 1.
fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "`{s}` is not a share between 0 and 1 (such as 0.1)"
        )),
    }
}

#[derive(Args, Clone)]
struct ConsumeArgs {
    /// Most messages per batch (and per store round trip).
    #[arg(long, env = "LIVROS_BATCH_SIZE", default_value_t = 1000)]
    batch_size: usize,

    /// How long an order waits for its customer and book, in ms. After it, an order whose
    /// customer or book is still unknown is dead-lettered once S2's customers and books
    /// consumers have stored everything published by then (not while they are behind).
    #[arg(long, env = "LIVROS_REFERENCE_GRACE_MS", default_value_t = 10_000)]
    reference_grace_ms: u64,

    /// S2's consumer group.
    #[arg(long, env = "LIVROS_S2_GROUP", default_value = livros::services::S2_GROUP)]
    s2_group: String,

    /// S3's consumer group.
    #[arg(long, env = "LIVROS_S3_GROUP", default_value = livros::services::S3_GROUP)]
    s3_group: String,
}

/// Where the systems' HTTP APIs listen: `off`, one address (`127.0.0.1:5000`; port 0 gives
/// every system a free port of its own), or `system=address` pairs.
#[derive(Clone, Debug)]
enum Listen {
    Off,
    One(std::net::SocketAddr),
    Each(Vec<(String, Listen)>),
}

fn parse_listen(s: &str) -> Result<Listen, String> {
    let one = |s: &str| -> Result<Listen, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Listen::Off);
        }
        s.parse().map(Listen::One).map_err(|_| {
            format!("`{s}` is not an address like 127.0.0.1:5000 (or `off` to serve no HTTP API)")
        })
    };
    if !s.contains('=') {
        return one(s.trim());
    }
    s.split(',')
        .map(|pair| {
            let (system, addr) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}` is not `system=address`"))?;
            Ok((system.trim().to_string(), one(addr.trim())?))
        })
        .collect::<Result<_, _>>()
        .map(Listen::Each)
}

#[derive(Args, Clone)]
struct DashboardArgs {
    /// Where the dashboard listens (the pipelines live, dead letters, recent messages,
    /// search and trace), or `off`.
    #[arg(long, env = "LIVROS_DASHBOARD", default_value = livros::dashboard::DEFAULT_ADDR,
          value_parser = parse_dashboard)]
    dashboard: DashboardAddr,
}

/// Where the dashboard listens; `None`: `off`.
#[derive(Clone, Copy, Debug)]
struct DashboardAddr(Option<std::net::SocketAddr>);

fn parse_dashboard(s: &str) -> Result<DashboardAddr, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(DashboardAddr(None));
    }
    s.parse()
        .map(|a| DashboardAddr(Some(a)))
        .map_err(|_| format!("`{s}` is not an address like 127.0.0.1:8089 (or `off`)"))
}

async fn bind_dashboard(args: &DashboardArgs) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    match args.dashboard.0 {
        None => Ok(None),
        Some(addr) => Ok(Some(livros::api::bind(addr).await.with_context(|| {
            format!(
                "the dashboard cannot listen on {addr}: pass --dashboard ADDR or --dashboard off"
            )
        })?)),
    }
}

#[derive(Args, Clone)]
struct HttpArgs {
    /// Where the HTTP APIs listen (OpenAPI at /openapi.json, docs at /docs): `off`; one
    /// address for a single system, or port 0 for a free port each; or pairs
    /// `bookstore=127.0.0.1:5000,…`. Default: each system's port (bookstore :5000,
    /// streaming :8000, products :8001).
    #[arg(long, env = "LIVROS_HTTP", value_parser = parse_listen)]
    http: Option<Listen>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Via {
    /// Publish on the bus (Kafka or embedded), for S2 to consume (seed 1).
    Bus,
    /// POST to S2's HTTP API and log each exchange (seed 2).
    Http,
}

#[derive(Args, Clone)]
struct ViaArgs {
    /// How S1 sends its data.
    #[arg(long, value_enum, default_value_t = Via::Bus)]
    via: Via,

    /// The HTTP API to post to, with `--via http`.
    #[arg(long, env = "LIVROS_TARGET", default_value = "http://127.0.0.1:5000")]
    target: url::Url,

    /// Where `--via http` appends one JSON line per request and response.
    #[arg(long, env = "LIVROS_HTTP_LOG", default_value = "s1_log.json")]
    http_log: PathBuf,

    /// Rounds (customer, book, order) in flight at once with `--via http --rate 0`.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
}

#[derive(Args, Clone)]
struct OutputArgs {
    /// Print no line per event (a progress bar shows on a terminal instead).
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run every system's S1, S2 (with its HTTP API) and S3 in this process.
    Up {
        #[command(flatten)]
        produce: ProduceArgs,
        #[command(flatten)]
        consume: ConsumeArgs,
        #[command(flatten)]
        http: HttpArgs,
        #[command(flatten)]
        dashboard: DashboardArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Serve the dashboard alone, beside services run apart (`s1`, `s2`, `s3`, …): it reads
    /// the same bus, stores and audit log they do.
    Dashboard {
        #[command(flatten)]
        dashboard: DashboardArgs,
    },
    /// Run S1 alone: every system's generator publishing on the bus, or (`--via http`) the
    /// bookstore's client posting to its HTTP API.
    S1 {
        #[command(flatten)]
        produce: ProduceArgs,
        #[command(flatten)]
        via: ViaArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Run S2 alone: store what arrives on the bus or over HTTP, by each system's routing
    /// table (with the HTTP APIs).
    S2 {
        #[command(flatten)]
        consume: ConsumeArgs,
        #[command(flatten)]
        http: HttpArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Run S3 alone: append every message to the audit log.
    S3 {
        #[command(flatten)]
        consume: ConsumeArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Run the products scheduler alone (seed 5): consume `cadastro-produtos`, validate and
    /// transform each registration and post it to the products API (--products-api-url);
    /// what the API refuses, or what is invalid, goes to `erro-produtos` with the reason.
    /// While the API is down it waits, and nothing is lost.
    Scheduler {
        #[command(flatten)]
        consume: ConsumeArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Run the products API alone (seed 5), with its outbox relay: `POST /products/` stores
    /// a product in the relational store, and each new version is published on
    /// `produtos-persistidos` (keyed by product id, header `version`). Replicas may share a
    /// store: each announcement is published once in the normal case.
    ProductsApi {
        /// Where the API listens (OpenAPI at /openapi.json, docs at /docs). The seed used
        /// :8000, which the streaming gateway has here.
        #[arg(long, env = "LIVROS_PRODUCTS_HTTP", default_value = "127.0.0.1:8001")]
        http: std::net::SocketAddr,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Publish product registrations in the seed's shape on `cadastro-produtos`: products a
    /// Brazilian shop lists, priced in BRL, some new versions of earlier ones, and (with
    /// --invalid-ratio) some broken on purpose.
    ProduceProduct {
        #[command(flatten)]
        produce: ProduceArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Print a stored record as JSON, read from its store.
    Get {
        /// What to read: `customer`, `book` or `order` (bookstore); `usuario`, `conteudo`
        /// (a title of the catalog), `visualizacao` (a view, by its correlation id) or
        /// `sessao` (streaming); `product` (products, with its version).
        kind: String,
        /// Its id.
        id: String,
    },
    /// Search the book catalogue (any store): by author, ISBN or words of the title.
    Books {
        /// An author, exactly as stored (e.g. "Machado de Assis").
        #[arg(long)]
        author: Option<String>,
        /// An ISBN (ISBN-13, or ISBN-10 from outside sources).
        #[arg(long)]
        isbn: Option<String>,
        /// Words that must all occur in the title, in any case.
        #[arg(long)]
        title: Option<String>,
        /// Page number, from 1.
        #[arg(long, default_value_t = 1)]
        page: u64,
        /// Books per page.
        #[arg(long, default_value_t = 20)]
        per_page: u64,
    },
    /// Search the audit log (every message of every topic, dead letters included):
    /// Elasticsearch when --elasticsearch-url is set, the embedded index otherwise.
    Logs {
        #[command(subcommand)]
        command: LogsCommand,
    },
    /// Messages published and consumed per topic and group, and records per store.
    Stats {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        consume: ConsumeArgs,
    },
    /// Run a system's pipeline on N events as fast as possible and print the throughput;
    /// with --http, load the HTTP APIs instead and print requests/s and latencies.
    ///
    /// Each runs in a temporary data dir (printed) unless --in-data-dir. The bookstore's
    /// events are published first, then S2 is timed on them, then S3; then the bus's
    /// consume ceiling and each store's own bulk rate for the same rows, with the share of
    /// each the pipeline reached.
    ///
    /// With --http every system's API is served here as `livros s2` serves it and loaded
    /// from a separate process (`livros loadgen`): first `GET /health`, the most that
    /// server answers on this machine, then each write endpoint, printed as a share of it
    /// (the goal: 50 % or more, p99 under 10 ms), then reads.
    Bench {
        /// Which system: `bookstore` (pipeline), `streaming` (processor on mixed rounds,
        /// then views alone), `products` (registrations from `cadastro-produtos` through
        /// the scheduler and the API to `produtos-persistidos`), or `search` (the audit log
        /// indexed and searched: embedded, and Elasticsearch when --elasticsearch-url is
        /// set). Default: `bookstore`; with --http, every system of --systems.
        #[arg(long)]
        system: Option<String>,
        /// Events: bookstore, split evenly between customers, books and orders; streaming,
        /// in the generator's rounds, then as many views; products, registrations.
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        /// Benchmark the HTTP API instead of the pipeline.
        #[arg(long)]
        http: bool,
        /// Requests per phase, with --http.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Concurrent connections, with --http.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Keep the data dir instead of using a fresh temporary one.
        #[arg(long)]
        in_data_dir: bool,
        /// A soak instead: every system's S1 at --rate events per second, S2 (with the
        /// HTTP APIs) and S3 for this long (`10m`), printing the process's resident memory
        /// (start, after warm-up, peak, end) and progress every 30 s.
        #[arg(long, value_parser = humantime::parse_duration)]
        soak: Option<Duration>,
        /// Events per second per system's S1, with --soak. A soak wants a load the
        /// consumers keep up with: past it the backlog grows on the bus and S2's batches
        /// grow with it, which is another run than a steady one (100 a system is 300 in
        /// all, which a 2-core machine keeps up with).
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
    },
    /// The load generator `livros bench --http` runs in its own process: sends a plan's
    /// requests to an API and prints what it measured as JSON.
    #[command(hide = true)]
    Loadgen {
        /// The server's address (host:port).
        #[arg(long)]
        target: SocketAddr,
        /// The plan: JSON written by `livros bench --http`.
        #[arg(long)]
        plan: PathBuf,
        /// Keep-alive connections, each sending one request at a time.
        #[arg(long, default_value_t = 32)]
        connections: usize,
    },
}

#[derive(Subcommand)]
enum LogsCommand {
    /// Messages matching a query, newest first. Terms: `field:value` (topic, key, system,
    /// event_type, correlation_id, source, trace_id, partition, offset: exact; reason: its
    /// words), free words (each must occur in the message, any case), `since:` and
    /// `until:` (an RFC 3339 time, or a duration ago: 15m, 2h, 1day); every term must hold.
    /// Put words holding a colon in quotes.
    ///
    /// Examples: `livros logs search topic:books machado`;
    /// `livros logs search topic:user_events.dlq since:1h`.
    Search {
        /// The query (no query: the newest messages).
        query: Vec<String>,
        /// Most messages printed.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        read: LogsRead,
    },
    /// Every message of one request, in the order they happened: the request, its
    /// response, dead letters — those whose correlation_id, or W3C trace id, is ID.
    Trace {
        /// A correlation id (streaming's `correlation_id`) or a trace id (of a
        /// `traceparent`).
        id: String,
        #[command(flatten)]
        read: LogsRead,
    },
}

#[derive(clap::Args)]
struct LogsRead {
    /// Which index to read: `auto` (Elasticsearch when configured, else embedded),
    /// `embedded` or `elasticsearch`.
    #[arg(long, value_enum, default_value = "auto")]
    index: IndexChoice,
    /// Print each message as a JSON line (all its fields) instead of a summary line.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum IndexChoice {
    Auto,
    Embedded,
    Elasticsearch,
}

impl From<IndexChoice> for app::SearchChoice {
    fn from(c: IndexChoice) -> Self {
        match c {
            IndexChoice::Auto => app::SearchChoice::Auto,
            IndexChoice::Embedded => app::SearchChoice::Embedded,
            IndexChoice::Elasticsearch => app::SearchChoice::Server,
        }
    }
}

fn print_hits(hits: &[serde_json::Value], json: bool) -> anyhow::Result<()> {
    for hit in hits {
        if json {
            println!("{}", serde_json::to_string(hit)?);
        } else {
            println!("{}", livros::search::summary(hit));
        }
    }
    Ok(())
}

impl Global {
    fn settings(&self, consume: Option<&ConsumeArgs>) -> Settings {
        let mut s = Settings::embedded(&self.data_dir);
        s.stores = StoreConfig {
            postgres_url: self.postgres_url.clone(),
            redis_url: self.redis_url.clone(),
            redis_prefix: self.redis_prefix.clone(),
            mongodb_url: self.mongodb_url.clone(),
            mongodb_database: Some(self.mongodb_database.clone()),
            mongodb_collections: [(
                BOOKS_COLLECTION.to_string(),
                self.mongodb_books_collection.clone(),
            )]
            .into(),
        };
        if let Some(systems) = &self.systems {
            s.systems = Systems(systems.0.clone());
        }
        s.partitions = self.partitions;
        if let Some(log) = &self.audit_log {
            s.audit_log = log.clone();
        }
        if let Some(key) = &self.google_books_api_key {
            s.options.insert(catalog::KEY_OPTION.into(), key.clone());
        }
        s.options.insert(
            livros::systems::streaming::SESSION_TTL_OPTION.into(),
            self.session_ttl.to_string(),
        );
        s.api.token = self.api_token.clone().filter(|t| !t.is_empty());
        s.topics = Topics::new(self.topic_prefix.clone());
        s.kafka = self
            .kafka_brokers
            .clone()
            .map(|brokers| livros::bus::kafka::KafkaConfig {
                brokers,
                replication: self.kafka_replication,
            });
        if let Ok(url) = std::env::var("GOOGLE_BOOKS_API_URL") {
            s.options.insert(catalog::URL_OPTION.into(), url);
        }
        use livros::systems::products;
        if let Some(url) = &self.products_api_url {
            s.options
                .insert(products::API_URL_OPTION.into(), url.to_string());
        }
        s.options.insert(
            products::CONCURRENCY_OPTION.into(),
            self.post_concurrency.max(1).to_string(),
        );
        s.search = self
            .elasticsearch_url
            .as_ref()
            .map(|url| (url.to_string(), self.elasticsearch_index.clone()));
        if let Some(fault) = &self.fault {
            s.options
                .insert(products::FAULT_OPTION.into(), fault.clone());
        }
        if let Some(c) = consume {
            s.s2.batch_size = c.batch_size.max(1);
            s.s2.reference_grace = Duration::from_millis(c.reference_grace_ms);
            s.s2.group = c.s2_group.clone();
            s.s3_group = c.s3_group.clone();
        }
        s
    }
}

/// The settings with what `produce` asks of the generators.
fn produce_settings(mut settings: Settings, produce: &ProduceArgs) -> Settings {
    settings.options.insert(
        livros::systems::products::INVALID_RATIO_OPTION.into(),
        produce.invalid_ratio.to_string(),
    );
    settings
}

/// The settings running the products system alone.
fn products_only(mut settings: Settings) -> Settings {
    settings.systems = Systems(vec![Arc::new(livros::systems::products::Products)]);
    settings
}

/// Points the products scheduler at the products API this process serves, unless
/// --products-api-url said where.
fn scheduler_to_local_api(
    settings: &mut Settings,
    listeners: &[(Arc<dyn System>, tokio::net::TcpListener)],
) {
    use livros::systems::products;
    if settings.options.contains_key(products::API_URL_OPTION) {
        return;
    }
    let local = listeners
        .iter()
        .find(|(s, _)| s.name() == products::Products.name())
        .and_then(|(_, l)| l.local_addr().ok());
    if let Some(addr) = local {
        settings.options.insert(
            products::API_URL_OPTION.into(),
            format!("http://{addr}/products/"),
        );
    }
}

/// `livros bench --soak`: every system at a fixed rate for `duration`, resident memory
/// watched.
async fn soak_run(mut settings: Settings, duration: Duration, rate: f64) -> anyhow::Result<()> {
    anyhow::ensure!(rate > 0.0, "--soak needs a fixed --rate above 0");
    let bus = app::open_bus(&settings).await?;
    let stores = app::open_stores(&settings).await?;
    let mut http = Vec::new();
    for system in &settings.systems.0 {
        http.push((
            system.clone(),
            livros::api::bind("127.0.0.1:0".parse().expect("a valid address")).await?,
        ));
    }
    scheduler_to_local_api(&mut settings, &http);
    println!(
        "soak: every system's S1 at {rate} events/s for {}, with S2, the HTTP APIs and S3; data in {}",
        humantime::format_duration(duration),
        settings.data_dir.display()
    );
    let generate = GenConfig {
        count: None,
        rate,
        seed: None,
        print_events: false,
    };
    let warm_up = (duration / 10).min(Duration::from_secs(60));
    let watch = Arc::new(std::sync::Mutex::new(livros::bench::RssWatch::new(warm_up)));
    let started = std::time::Instant::now();
    let sampler = {
        let watch = watch.clone();
        move |counters: &Arc<livros::services::Counters>| {
            let counters = counters.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                let mut reported = 0;
                loop {
                    tick.tick().await;
                    let elapsed = started.elapsed();
                    let mut w = watch.lock().expect("never poisoned");
                    w.sample();
                    if elapsed.as_secs() / 30 > reported {
                        reported = elapsed.as_secs() / 30;
                        println!(
                            "soak: {} of {}: {} sent, {} stored, {} logged; {}",
                            humantime::format_duration(Duration::from_secs(elapsed.as_secs())),
                            humantime::format_duration(duration),
                            livros::services::Counters::get(&counters.sent),
                            livros::services::Counters::get(&counters.stored),
                            livros::services::Counters::get(&counters.logged),
                            *w
                        );
                    }
                }
            });
        }
    };
    let report = app::up(
        bus,
        stores,
        &settings,
        generate,
        app::Listeners {
            http,
            dashboard: None,
        },
        async move {
            tokio::select! {
                _ = tokio::time::sleep(duration) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        },
        sampler,
    )
    .await?;
    let mut w = watch.lock().expect("never poisoned").clone();
    w.sample();
    println!(
        "soak done after {}: {} stored, {} dead-lettered, {} logged",
        humantime::format_duration(Duration::from_secs(started.elapsed().as_secs())),
        report.stored,
        report.dead_lettered,
        report.logged
    );
    println!("{w}");
    Ok(())
}

fn gen_config(p: &ProduceArgs, o: &OutputArgs) -> anyhow::Result<GenConfig> {
    anyhow::ensure!(
        p.rate >= 0.0 && p.rate.is_finite(),
        "--rate must be 0 (as fast as possible) or a positive number of events per second"
    );
    Ok(GenConfig {
        count: p.count,
        rate: p.rate,
        seed: p.seed,
        print_events: !o.quiet,
    })
}

/// What the systems sent, as one phrase (`5 customers, 5 books, 5 orders`).
fn sent_line(sent: &[(&'static str, livros::systems::Sent)]) -> String {
    let parts: Vec<String> = sent.iter().map(|(_, s)| s.to_string()).collect();
    parts.join("; ")
}

/// Binds each system's HTTP API where `args` says (its seed's port by default).
async fn bind_http(
    args: &HttpArgs,
    settings: &Settings,
) -> anyhow::Result<Vec<(Arc<dyn System>, tokio::net::TcpListener)>> {
    let systems = &settings.systems.0;
    let mut bound = Vec::new();
    for system in systems {
        let addr = match &args.http {
            None => Some(system.default_http()),
            Some(Listen::Off) => None,
            Some(Listen::One(addr)) if addr.port() == 0 || systems.len() == 1 => Some(*addr),
            Some(Listen::One(addr)) => anyhow::bail!(
                "--http {addr}: several systems cannot share one port; name each (`--http {}=ADDR,…`) or use port 0",
                system.name()
            ),
            Some(Listen::Each(pairs)) => match pairs.iter().find(|(n, _)| n == system.name()) {
                Some((_, Listen::One(addr))) => Some(*addr),
                Some(_) => None,
                None => Some(system.default_http()),
            },
        };
        if let Some(addr) = addr {
            bound.push((system.clone(), livros::api::bind(addr).await?));
        }
    }
    Ok(bound)
}

/// The lines saying where each API listens (the real port, when 0 was asked for).
fn print_http(
    listeners: &[(Arc<dyn System>, tokio::net::TcpListener)],
    settings: &Settings,
    indent: &str,
) {
    if listeners.is_empty() {
        println!("{indent}HTTP API: off");
    }
    for (system, listener) in listeners {
        let Ok(addr) = listener.local_addr() else {
            continue;
        };
        println!(
            "{indent}HTTP API: http://{addr} ({}; docs: http://{addr}/docs){}",
            system.name(),
            if settings.api.token.is_some() {
                ", writes need the bearer token"
            } else {
                ""
            }
        );
    }
}

fn print_dashboard(listener: Option<&tokio::net::TcpListener>) {
    if let Some(addr) = listener.and_then(|l| l.local_addr().ok()) {
        println!("  Dashboard: http://{addr}");
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    eprintln!("stopping: finishing in-flight batches…");
}

/// A token cancelled on Ctrl-C or SIGTERM, and the task waiting for them (abort it when
/// done).
fn cancel_on_stop_signal() -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stopper = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            stop_signal().await;
            shutdown.cancel();
        })
    };
    (shutdown, stopper)
}

/// A progress bar over the counters, drawn only on a terminal.
fn progress(counters: &Arc<Counters>, total: Option<u64>) -> tokio::task::JoinHandle<()> {
    let counters = counters.clone();
    tokio::spawn(async move {
        let bar = match total {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::no_length(),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} logged  {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        loop {
            bar.set_position(Counters::get(&counters.logged));
            bar.set_message(format!(
                "sent {} · stored {} · dead-lettered {}",
                Counters::get(&counters.sent),
                Counters::get(&counters.stored),
                Counters::get(&counters.dead_lettered)
            ));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = &cli.global;
    match &cli.command {
        Command::Up {
            produce,
            consume,
            http,
            dashboard,
            output,
        } => {
            let mut settings = produce_settings(g.settings(Some(consume)), produce);
            settings.api.print_requests = !output.quiet;
            let generate = gen_config(produce, output)?;
            let bus = app::open_bus(&settings).await?;
            let stores = app::open_stores(&settings).await?;
            let listeners = bind_http(http, &settings).await?;
            let dashboard = bind_dashboard(dashboard).await?;
            scheduler_to_local_api(&mut settings, &listeners);
            println!("Livros & Dados — data in {}", settings.data_dir.display());
            for line in app::describe(&*bus, Some(&stores), &settings) {
                println!("  {line}");
            }
            print_http(&listeners, &settings, "  ");
            print_dashboard(dashboard.as_ref());
            let quiet = output.quiet;
            let per_round: u64 = settings
                .systems
                .0
                .iter()
                .map(|s| s.events_per_round())
                .sum();
            let total = produce.count.map(|n| n * per_round);
            let mut bar = None;
            let report = app::up(
                bus,
                stores,
                &settings,
                generate,
                app::Listeners {
                    http: listeners,
                    dashboard,
                },
                stop_signal(),
                |counters| {
                    if quiet {
                        bar = Some(progress(counters, total));
                    }
                },
            )
            .await?;
            if let Some(bar) = bar {
                bar.abort();
            }
            println!(
                "Done in {:.1?}: sent {}; S2 stored {} and dead-lettered {}; S3 logged {} to {}",
                report.elapsed,
                sent_line(&report.sent),
                report.stored,
                report.dead_lettered,
                report.logged,
                settings.audit_log.display()
            );
        }
        Command::S1 {
            produce,
            via,
            output,
        } => {
            let settings = produce_settings(g.settings(None), produce);
            let generate = gen_config(produce, output)?;
            let s1 = S1Config {
                count: generate.count,
                rate: generate.rate,
                seed: generate.seed,
                print_events: generate.print_events,
                topics: settings.topics.clone(),
            };
            let counters = Arc::new(Counters::default());
            let (shutdown, stopper) = cancel_on_stop_signal();
            match via.via {
                Via::Bus => {
                    // Every system's generator, on the bus.
                    let bus = app::open_bus(&settings).await?;
                    println!("[S1] publishing to {}", bus.describe());
                    let runs = settings.systems.0.iter().map(|system| {
                        system.generate(
                            bus.clone(),
                            &settings,
                            generate.clone(),
                            counters.clone(),
                            shutdown.clone(),
                        )
                    });
                    let mut sent = Vec::new();
                    for (system, result) in settings
                        .systems
                        .0
                        .iter()
                        .zip(futures::future::join_all(runs).await)
                    {
                        sent.push((system.name(), result?));
                    }
                    stopper.abort();
                    println!("[S1] sent {}", sent_line(&sent));
                }
                Via::Http => {
                    // The client-server seed is the bookstore's.
                    println!(
                        "[S1] posting to {}, logging each exchange to {}",
                        via.target,
                        via.http_log.display()
                    );
                    let (books, source) = catalog::load_for(&settings).await;
                    println!("[S1] {source}");
                    let target = HttpTarget {
                        base: via.target.clone(),
                        token: settings.api.token.clone(),
                        log_path: via.http_log.clone(),
                        concurrency: via.concurrency,
                        timeout: Duration::from_secs(30),
                    };
                    let report = livros::systems::bookstore::client::run(
                        target, books, s1, counters, shutdown,
                    )
                    .await?;
                    stopper.abort();
                    println!(
                        "[S1] sent {} customers, {} books, {} orders{}",
                        report.customers,
                        report.books,
                        report.orders,
                        if report.rejected > 0 {
                            format!(
                                "; {} refused by the server (see {})",
                                report.rejected,
                                via.http_log.display()
                            )
                        } else {
                            String::new()
                        }
                    );
                }
            }
        }
        Command::S2 {
            consume,
            http,
            output,
        } => {
            let mut settings = g.settings(Some(consume));
            settings.api.print_requests = !output.quiet;
            let bus = app::open_bus(&settings).await?;
            let stores = app::open_stores(&settings).await?;
            let listeners = bind_http(http, &settings).await?;
            scheduler_to_local_api(&mut settings, &listeners);
            for line in app::describe(&*bus, Some(&stores), &settings)
                .iter()
                .filter(|l| !l.starts_with("audit"))
            {
                println!("[S2] {line}");
            }
            print_http(&listeners, &settings, "[S2] ");
            let mut pipeline =
                app::Pipeline::start(bus.clone(), Some(stores), false, &settings, !output.quiet);
            for system in &settings.systems.0 {
                pipeline.start_workers(&**system, bus.clone(), &settings);
            }
            for (system, listener) in listeners {
                pipeline.serve_http(&*system, bus.clone(), listener, &settings);
            }
            pipeline.run_until(stop_signal()).await?;
        }
        Command::Scheduler { consume, output } => {
            let settings = products_only(g.settings(Some(consume)));
            let bus = app::open_bus(&settings).await?;
            let spec = livros::systems::products::scheduler_spec(&settings);
            println!(
                "[scheduler] {} → POST {} (refused → {}), on {}",
                spec.topic,
                livros::systems::products::api_url(&settings),
                spec.dead_letters,
                bus.describe()
            );
            // The scheduler stores nothing itself: no store is opened.
            let pipeline =
                app::Pipeline::start_with(bus, None, vec![spec], false, &settings, !output.quiet);
            pipeline.run_until(stop_signal()).await?;
        }
        Command::ProductsApi { http, output } => {
            let mut settings = products_only(g.settings(None));
            settings.api.print_requests = !output.quiet;
            let bus = app::open_bus(&settings).await?;
            let stores = app::open_stores(&settings).await?;
            let listener = livros::api::bind(*http).await?;
            let system = livros::systems::products::Products;
            for line in app::describe(&*bus, Some(&stores), &settings)
                .iter()
                .filter(|l| !l.starts_with("audit"))
            {
                println!("[API] {line}");
            }
            let listeners = vec![(Arc::new(system) as Arc<dyn System>, listener)];
            print_http(&listeners, &settings, "[API] ");
            let mut pipeline = app::Pipeline::start_with(
                bus.clone(),
                Some(stores),
                vec![],
                false,
                &settings,
                false,
            );
            for (system, listener) in listeners {
                pipeline.start_workers(&*system, bus.clone(), &settings);
                pipeline.serve_http(&*system, bus.clone(), listener, &settings);
            }
            pipeline.run_until(stop_signal()).await?;
        }
        Command::ProduceProduct { produce, output } => {
            let settings = products_only(produce_settings(g.settings(None), produce));
            let generate = gen_config(produce, output)?;
            let bus = app::open_bus(&settings).await?;
            println!("[producer] publishing registrations on {}", bus.describe());
            let counters = Arc::new(Counters::default());
            let (shutdown, stopper) = cancel_on_stop_signal();
            let sent = livros::systems::products::Products
                .generate(bus, &settings, generate, counters, shutdown)
                .await?;
            stopper.abort();
            println!("[producer] sent {sent}");
        }
        Command::S3 { consume, output } => {
            let settings = g.settings(Some(consume));
            let bus = app::open_bus(&settings).await?;
            println!(
                "[S3] following every topic on {}, logging to {}",
                bus.describe(),
                settings.audit_log.display()
            );
            let pipeline = app::Pipeline::start(bus, None, true, &settings, !output.quiet);
            pipeline.run_until(stop_signal()).await?;
        }
        Command::Get { kind, id } => {
            let settings = g.settings(None);
            let stores = app::open_stores(&settings).await?;
            for system in &settings.systems.0 {
                match system.get(&stores, kind, id).await {
                    Ok(v) => {
                        println!("{}", serde_json::to_string_pretty(&v)?);
                        return Ok(());
                    }
                    Err(GetError::UnknownKind { .. }) => {}
                    Err(GetError::NotFound(why)) => anyhow::bail!(
                        "{why} (data dir {}); `livros stats` shows what is stored",
                        settings.data_dir.display()
                    ),
                    Err(GetError::Store(e)) => return Err(e.into()),
                }
            }
            anyhow::bail!(
                "no system here keeps a `{kind}` (systems: {:?}); the bookstore keeps `customer`, `book` and `order`",
                settings.systems
            );
        }
        Command::Books {
            author,
            isbn,
            title,
            page,
            per_page,
        } => {
            let settings = g.settings(None);
            let stores = app::open_stores(&settings).await?;
            let filters = book_filters(author.as_deref(), isbn.as_deref(), title.as_deref());
            anyhow::ensure!(
                *page >= 1 && *per_page >= 1,
                "--page and --per-page start at 1"
            );
            let found = stores
                .document
                .find(
                    BOOKS_COLLECTION,
                    &filters,
                    Page {
                        skip: (page - 1) * per_page,
                        limit: *per_page,
                    },
                )
                .await?;
            for book in &found {
                println!("{}", serde_json::to_string(book)?);
            }
            if found.is_empty() {
                eprintln!(
                    "no books match (page {page}); `livros stats` shows how many books are stored"
                );
            }
        }
        Command::Dashboard { dashboard } => {
            let settings = g.settings(None);
            let bus = app::open_bus(&settings).await?;
            let stores = app::open_stores(&settings).await?;
            let Some(listener) = bind_dashboard(dashboard).await? else {
                anyhow::bail!("--dashboard off: nothing to serve");
            };
            print_dashboard(Some(&listener));
            let apis = settings
                .systems
                .0
                .iter()
                .map(|s| (s.name(), format!("http://{}", s.default_http())))
                .collect();
            let search = app::search_reader(&settings, app::SearchChoice::Auto)?;
            let dashboard = livros::dashboard::router(bus, stores, &settings, search, apis);
            let (shutdown, stopper) = cancel_on_stop_signal();
            livros::api::serve(listener, dashboard, shutdown).await?;
            stopper.abort();
        }
        Command::Loadgen {
            target,
            plan,
            connections,
        } => {
            let plan = livros::loadgen::read_plan(plan)?;
            let report =
                livros::loadgen::run(*target, &plan, *connections, g.api_token.as_deref()).await?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::Logs { command } => {
            let settings = g.settings(None);
            match command {
                LogsCommand::Search { query, limit, read } => {
                    let query = livros::search::Query::parse(&query.join(" "), *limit)?;
                    let engine = app::search_engine(&settings, read.index.into()).await?;
                    let found = engine.search(&query).await?;
                    print_hits(&found.hits, read.json)?;
                    eprintln!(
                        "{} of {} matching messages, newest first ({})",
                        found.hits.len(),
                        found.total,
                        engine.describe()
                    );
                }
                LogsCommand::Trace { id, read } => {
                    let engine = app::search_engine(&settings, read.index.into()).await?;
                    let hits = livros::search::trace(&*engine, id).await?;
                    print_hits(&hits, read.json)?;
                    if hits.is_empty() {
                        eprintln!(
                            "no message carries `{id}` as its correlation_id or trace id ({})",
                            engine.describe()
                        );
                    }
                }
            }
        }
        Command::Stats { json, consume } => {
            let settings = g.settings(Some(consume));
            let bus = app::open_bus(&settings).await?;
            let stores = app::open_stores(&settings).await?;
            let consumers = settings.consumers(&stores);
            let mut groups: Vec<String> = consumers.iter().map(|c| c.group.clone()).collect();
            groups.push(settings.s3_group.clone());
            let topics = bus.stats(&settings.all_topics(), &groups).await?;
            let mut records = Vec::new();
            for system in &settings.systems.0 {
                for (kind, what, n) in system.records(&stores).await? {
                    let engine = stores.describe(kind);
                    records.push((system.name(), kind.name(), what, engine, n));
                }
            }
            if *json {
                let stores: Vec<serde_json::Value> = records
                    .iter()
                    .map(|(system, kind, what, engine, n)| {
                        serde_json::json!({"system": system, "store": kind, "engine": engine,
                                           "records": what, "count": n})
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"topics": topics, "stores": stores})
                    )?
                );
            } else {
                // S2 reads each topic in its own group; S3 reads every topic.
                let width = topics.keys().map(String::len).max().unwrap_or(5).max(5) + 2;
                println!(
                    "{:<width$}{:>12}{:>12}{:>12}",
                    "topic", "published", "S2 done", "S3 done"
                );
                for (topic, t) in &topics {
                    let s2 = consumers
                        .iter()
                        .find(|c| &c.topic == topic)
                        .map(|c| t.consumed.get(&c.group).copied().unwrap_or(0).to_string())
                        .unwrap_or_else(|| "-".into());
                    let s3 = t.consumed.get(&settings.s3_group).copied().unwrap_or(0);
                    println!("{topic:<width$}{:>12}{s2:>12}{s3:>12}", t.published);
                }
                println!();
                println!("(done: consumed and committed by the service's consumer group)");
                println!();
                for (system, kind, what, engine, n) in &records {
                    println!("{system:<10} {kind:<11} {n:>10} {what:<10} {engine}");
                }
            }
        }
        Command::Bench {
            system,
            events,
            http,
            requests,
            concurrency,
            in_data_dir,
            soak,
            rate,
        } => {
            let temp = tempfile::tempdir().context("creating a temporary data dir")?;
            let mut global = g.clone();
            if !in_data_dir {
                global.data_dir = temp.path().to_path_buf();
                global.audit_log = None;
            }
            if global.kafka_brokers.is_some() && global.topic_prefix.is_empty() {
                // Benchmark events stay off the production topics of a shared cluster.
                global.topic_prefix = format!("livros-bench-{}.", uuid::Uuid::new_v4().simple());
            }
            if global.redis_url.is_some() && global.redis_prefix.is_empty() {
                // Keep benchmark orders apart from real ones in a shared Redis.
                global.redis_prefix = format!("livros-bench-{}:", uuid::Uuid::new_v4().simple());
            }
            let settings = global.settings(None);
            if !*http && soak.is_none() {
                println!(
                    "benchmark: {events} events, data in {}",
                    settings.data_dir.display()
                );
            }
            if global.postgres_url.is_some()
                || global.redis_url.is_some()
                || global.kafka_brokers.is_some()
            {
                println!(
                    "note: records go to the real stores given (Redis keys prefixed `{}`, topics `{}`): use scratch ones",
                    global.redis_prefix, global.topic_prefix
                );
            }
            if let Some(duration) = soak {
                return soak_run(settings, *duration, *rate).await;
            }
            if *http {
                let mut settings = settings;
                if let Some(name) = system {
                    settings.systems.0.retain(|s| s.name() == name);
                    anyhow::ensure!(
                        !settings.systems.0.is_empty(),
                        "no HTTP benchmark for `{name}`: use --system bookstore, streaming or products (or none, for all)"
                    );
                }
                println!(
                    "HTTP APIs served here, loaded from a separate process: {requests} requests per phase over {concurrency} connections"
                );
                let exe = std::env::current_exe()
                    .context("finding this program to run its load generator")?;
                let reports =
                    livros::bench::http(&settings, &exe, *requests, (*concurrency).max(1)).await?;
                for report in &reports {
                    print!("{report}");
                }
                println!(
                    "goal for writes: ≥ {:.0} % of the same server's /health rate, p99 < {:?}, no errors",
                    100.0 * livros::bench::WRITE_SHARE_GOAL,
                    livros::bench::WRITE_P99_GOAL
                );
                return Ok(());
            }
            match system.as_deref().unwrap_or("bookstore") {
                "bookstore" => {
                    let report = livros::systems::bookstore::bench::run(&settings, *events).await?;
                    print!("{report}");
                }
                "streaming" => {
                    let report = livros::systems::streaming::bench::run(&settings, *events).await?;
                    print!("{report}");
                }
                "products" => {
                    let report = livros::systems::products::bench::run(&settings, *events).await?;
                    print!("{report}");
                }
                "search" => {
                    let report = livros::search::bench::run(&settings, *events).await?;
                    print!("{report}");
                }
                other => anyhow::bail!(
                    "no benchmark for `{other}`: use --system bookstore, streaming, products or search"
                ),
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    // First, while this is the only thread: mimalloc's options are not thread-safe.
    livros::heap::purge_freed_memory_soon();
    let cli = Cli::parse();
    // Before anything records: what is recorded without a recorder is lost.
    livros::metrics::handle();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("livros=info,warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match livros::trace::init_export() {
        Ok(true) => tracing::info!("exporting traces over OTLP (OTEL_EXPORTER_OTLP_ENDPOINT)"),
        Ok(false) => {}
        Err(e) => {
            eprintln!("error: {e}; check OTEL_EXPORTER_OTLP_ENDPOINT, or unset it");
            return ExitCode::FAILURE;
        }
    }
    let result = runtime.block_on(run(cli));
    livros::trace::shutdown_export();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
