//! Wiring: opens the bus and stores a configuration names and runs the services together
//! (`livros up`) or alone (`livros s1|s2|s3`). The binary parses flags into [`Settings`];
//! tests and the benchmark call these functions directly.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::api::ApiConfig;
use crate::bus::embedded::EmbeddedBus;
use crate::bus::kafka::{KafkaBus, KafkaConfig};
use crate::bus::{Bus, BusError};
use crate::routing::{self, Router, Topics};
use crate::services::s1::{S1Config, S1Report};
use crate::services::s2::S2Config;
use crate::services::s3::S3Config;
use crate::services::{Counters, ServiceError, s1, s2, s3};
use crate::store::{OpenError, StoreConfig, Stores};

/// Where everything lives and how the services behave.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Directory of the embedded bus, stores and audit log.
    pub data_dir: PathBuf,
    /// Real stores, by URL.
    pub stores: StoreConfig,
    /// Partitions of topics created at start.
    pub partitions: i32,
    /// The audit log S3 writes.
    pub audit_log: PathBuf,
    /// S2's settings.
    pub s2: S2Config,
    /// S3's consumer group.
    pub s3_group: String,
    /// Google Books API key, if any.
    pub google_books_key: Option<String>,
    /// Google Books API root.
    pub google_books_url: String,
    /// Kafka instead of the embedded bus, when set.
    pub kafka: Option<KafkaConfig>,
    /// Topic names (a prefix lets deployments share a Kafka cluster).
    pub topics: Topics,
    /// The HTTP API's settings (where it listens is decided by the caller, who binds).
    pub api: ApiConfig,
}

impl Settings {
    /// Embedded defaults under `data_dir`.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        Self {
            audit_log: data_dir.join("messages.log"),
            data_dir,
            stores: StoreConfig::default(),
            partitions: 3,
            s2: S2Config::default(),
            s3_group: crate::services::S3_GROUP.into(),
            google_books_key: None,
            google_books_url: crate::catalog::GOOGLE_BOOKS_URL.into(),
            kafka: None,
            topics: Topics::default(),
            api: ApiConfig::default(),
        }
    }
}

/// Errors of the wiring.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The bus could not be opened or failed.
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    /// A store could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// A service stopped with an error.
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// Opens the bus the settings name, creating every topic the system uses.
///
/// Kafka brokers that do not answer are waited for, with backoff and a log line per
/// attempt (a cluster often starts after its clients); the embedded bus fails at once.
pub async fn open_bus(settings: &Settings) -> Result<Arc<dyn Bus>, AppError> {
    let topics = settings.topics.all();
    let Some(kafka) = &settings.kafka else {
        let bus = EmbeddedBus::open(&settings.data_dir).await?;
        bus.ensure_topics(&topics, settings.partitions).await?;
        return Ok(Arc::new(bus));
    };
    let never = tokio_util::sync::CancellationToken::new();
    let what = format!(
        "connecting to Kafka at {} (check --kafka-brokers / LIVROS_KAFKA_BROKERS)",
        kafka.brokers
    );
    let bus = crate::retry::until_ok(&what, &never, crate::services::bus_transient, || async {
        let bus = KafkaBus::connect(kafka.clone()).await?;
        bus.ensure_topics(&topics, settings.partitions).await?;
        Ok::<_, BusError>(bus)
    })
    .await?
    .expect("never cancelled");
    Ok(Arc::new(bus))
}

/// Opens the stores the settings name.
pub async fn open_stores(settings: &Settings) -> Result<Stores, AppError> {
    Ok(Stores::open(&settings.data_dir, &settings.stores).await?)
}

/// Lines saying where each kind of data goes, for the start of `up` and `s2`.
pub fn describe(bus: &dyn Bus, stores: Option<&Stores>, settings: &Settings) -> Vec<String> {
    let mut lines = vec![format!("bus: {}", bus.describe())];
    if let Some(stores) = stores {
        for route in routing::ROUTES {
            let store = match route.store {
                routing::StoreKind::Relational => stores.relational.describe(),
                routing::StoreKind::Document => stores.document.describe(),
                routing::StoreKind::KeyValue => stores.key_value.describe(),
            };
            lines.push(format!(
                "{:<9} → {} store: {store}",
                settings.topics.entity(route),
                route.store.name()
            ));
        }
    }
    lines.push(format!("audit log: {}", settings.audit_log.display()));
    lines
}

/// What a run of the whole pipeline did.
#[derive(Debug, Clone, Default)]
pub struct UpReport {
    /// What S1 sent.
    pub sent: S1Report,
    /// Messages S2 stored.
    pub stored: u64,
    /// Messages S2 dead-lettered.
    pub dead_lettered: u64,
    /// Messages S3 logged.
    pub logged: u64,
    /// From start to every message logged.
    pub elapsed: Duration,
}

/// The services of one process, running until cancelled.
pub struct Pipeline {
    /// Cancel to stop every service.
    pub shutdown: CancellationToken,
    /// Running totals.
    pub counters: Arc<Counters>,
    /// The router S2 uses (for its store timings).
    pub router: Option<Router>,
    tasks: tokio::task::JoinSet<Result<(), ServiceError>>,
}

impl Pipeline {
    /// Starts S2 (when `stores` is given) and S3 (when `with_s3`) in the background.
    pub fn start(
        bus: Arc<dyn Bus>,
        stores: Option<Stores>,
        with_s3: bool,
        settings: &Settings,
        print_events: bool,
    ) -> Self {
        let shutdown = CancellationToken::new();
        let counters = Arc::new(Counters::default());
        let mut tasks = tokio::task::JoinSet::new();
        let router = stores.map(Router::new);
        if let Some(router) = &router {
            let config = S2Config {
                print_events,
                topics: settings.topics.clone(),
                ..settings.s2.clone()
            };
            tasks.spawn(s2::run(
                bus.clone(),
                router.clone(),
                config,
                counters.clone(),
                shutdown.clone(),
            ));
        }
        if with_s3 {
            let config = S3Config {
                group: settings.s3_group.clone(),
                log_path: settings.audit_log.clone(),
                topics: settings.topics.all(),
                batch_size: settings.s2.batch_size,
                print_events,
            };
            tasks.spawn(s3::run(
                bus.clone(),
                config,
                counters.clone(),
                shutdown.clone(),
            ));
        }
        Self {
            shutdown,
            counters,
            router,
            tasks,
        }
    }

    /// Serves the HTTP API on `listener` over S2's stores, until the pipeline stops.
    /// Without stores (an S3-only pipeline) there is nothing to serve and this does nothing.
    pub fn serve_http(&mut self, listener: tokio::net::TcpListener, config: ApiConfig) {
        let Some(router) = &self.router else { return };
        let app = crate::api::app(router.clone(), config);
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            crate::api::serve(listener, app, shutdown)
                .await
                .map_err(ServiceError::Http)
        });
    }

    /// Waits until `lag` (messages not yet committed) reaches zero, or a service fails.
    pub async fn drain<F, Fut>(&mut self, lag: F) -> Result<(), AppError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<i64, BusError>>,
    {
        loop {
            match lag().await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                // Only a measurement failed; the services carry on and so does the wait.
                Err(e) if crate::services::bus_transient(&e) => {
                    tracing::warn!("measuring lag: {e}")
                }
                Err(e) => return Err(e.into()),
            }
            tokio::select! {
                Some(done) = self.tasks.join_next() => {
                    done.expect("service task panicked")?;
                }
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    /// Waits until S2 and then S3 have committed everything published so far.
    pub async fn drain_all(&mut self, bus: &dyn Bus, settings: &Settings) -> Result<(), AppError> {
        self.drain(|| s2::lag(bus, &settings.s2.group, &settings.topics))
            .await?;
        let all = settings.topics.all();
        self.drain(|| bus.lag(&settings.s3_group, &all)).await
    }

    /// Stops every service (each finishes the batch it is on) and waits for them.
    pub async fn stop(mut self) -> Result<(), AppError> {
        self.shutdown.cancel();
        let mut result = Ok(());
        while let Some(done) = self.tasks.join_next().await {
            if let Err(e) = done.expect("service task panicked") {
                result = result.and(Err(e.into()));
            }
        }
        result
    }

    /// Waits until a service fails or `stop_signal` fires, then stops them all.
    pub async fn run_until(
        mut self,
        stop_signal: impl std::future::Future<Output = ()>,
    ) -> Result<(), AppError> {
        tokio::pin!(stop_signal);
        loop {
            tokio::select! {
                _ = &mut stop_signal => return self.stop().await,
                done = self.tasks.join_next() => match done {
                    None => return Ok(()),
                    Some(done) => {
                        if let Err(e) = done.expect("service task panicked") {
                            self.shutdown.cancel();
                            let _ = self.stop().await;
                            return Err(e.into());
                        }
                    }
                }
            }
        }
    }
}

/// Runs S1, S2 and S3 in this process, and S2's HTTP API when given a listener. With
/// `s1.count`, returns once every message S1 sent has been stored (or dead-lettered) and
/// logged; otherwise runs until `stop_signal`. On `stop_signal`, S1 stops between events,
/// S2 and S3 finish the batch they are on, and the API the requests in flight.
pub async fn up(
    bus: Arc<dyn Bus>,
    stores: Stores,
    settings: &Settings,
    s1_config: S1Config,
    http: Option<tokio::net::TcpListener>,
    stop_signal: impl std::future::Future<Output = ()> + Send + 'static,
    on_start: impl FnOnce(&Arc<Counters>),
) -> Result<UpReport, AppError> {
    let started = Instant::now();
    let print_events = s1_config.print_events;
    let mut pipeline = Pipeline::start(bus.clone(), Some(stores), true, settings, print_events);
    if let Some(listener) = http {
        pipeline.serve_http(listener, settings.api.clone());
    }
    on_start(&pipeline.counters);
    let shutdown = pipeline.shutdown.clone();
    let stopper = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            stop_signal.await;
            shutdown.cancel();
        })
    };
    let (books, source) = crate::catalog::load(
        settings.google_books_key.as_deref(),
        &settings.google_books_url,
    )
    .await;
    tracing::info!("{source}");
    let sent = s1::run(
        bus.clone(),
        books,
        s1_config,
        pipeline.counters.clone(),
        shutdown.clone(),
    )
    .await;
    let drained = match sent {
        Ok(_) if !shutdown.is_cancelled() => {
            let drained = pipeline.drain_all(&*bus, settings);
            tokio::select! {
                drained = drained => drained,
                _ = shutdown.cancelled() => Ok(()),
            }
        }
        _ => Ok(()),
    };
    stopper.abort();
    let counters = pipeline.counters.clone();
    let stopped = pipeline.stop().await;
    let sent = sent?;
    drained?;
    stopped?;
    Ok(UpReport {
        sent,
        stored: Counters::get(&counters.stored),
        dead_lettered: Counters::get(&counters.dead_lettered),
        logged: Counters::get(&counters.logged),
        elapsed: started.elapsed(),
    })
}
