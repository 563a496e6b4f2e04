//! Wiring: opens the bus and stores a configuration names and runs the systems' services
//! together (`livros up`) or alone (`livros s1|s2|s3`). The binary parses flags into
//! [`Settings`]; tests and the benchmarks call these functions directly. Nothing here
//! names a system's entities: each [`System`] says what it runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::api::ApiConfig;
use crate::bus::embedded::EmbeddedBus;
use crate::bus::kafka::{KafkaBus, KafkaConfig};
use crate::bus::{Bus, BusError, Topics};
use crate::search::SearchEngine;
use crate::services::s2::{ConsumerSpec, S2Config};
use crate::services::s3::S3Config;
use crate::services::{Counters, ServiceError, s2, s3};
use crate::store::{OpenError, StoreConfig, Stores};
use crate::systems::{GenConfig, Sent, System, Workers};

/// The systems a process runs (all of them by default; `--systems` picks).
#[derive(Clone)]
pub struct Systems(pub Vec<Arc<dyn System>>);

impl Default for Systems {
    fn default() -> Self {
        Self(crate::systems::all())
    }
}

impl std::fmt::Debug for Systems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|s| s.name()))
            .finish()
    }
}

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
    /// What a system needs beyond the shared settings, by name (the bookstore's
    /// `google_books_api_key`, `google_books_url`); each system documents its own.
    pub options: std::collections::BTreeMap<String, String>,
    /// Kafka instead of the embedded bus, when set.
    pub kafka: Option<KafkaConfig>,
    /// Topic names (a prefix lets deployments share a Kafka cluster).
    pub topics: Topics,
    /// The HTTP APIs' settings (where each listens is decided by the caller, who binds).
    pub api: ApiConfig,
    /// The systems to run.
    pub systems: Systems,
    /// Elasticsearch / OpenSearch to index the audit log into, beside the file: its URL
    /// and index.
    pub search: Option<(String, String)>,
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
            options: Default::default(),
            kafka: None,
            topics: Topics::default(),
            api: ApiConfig::default(),
            systems: Systems::default(),
            search: None,
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

impl Settings {
    /// Every topic of every system run, dead-letter topics included.
    pub fn all_topics(&self) -> Vec<String> {
        self.systems
            .0
            .iter()
            .flat_map(|s| s.topics(&self.topics))
            .collect()
    }

    /// Which system each topic (dead-letter topics included) belongs to.
    pub fn topic_systems(&self) -> crate::search::TopicSystems {
        self.systems
            .0
            .iter()
            .flat_map(|s| s.topics(&self.topics).into_iter().map(|t| (t, s.name())))
            .collect()
    }

    /// The consumers S2 runs for every system, over `stores`.
    pub fn consumers(&self, stores: &Stores) -> Vec<ConsumerSpec> {
        self.systems
            .0
            .iter()
            .flat_map(|s| s.consumers(stores, self))
            .collect()
    }
}

/// Elasticsearch, when the settings name one.
pub fn search_server(settings: &Settings) -> Option<Arc<dyn SearchEngine>> {
    settings.search.as_ref().map(|(url, index)| {
        Arc::new(crate::search::elastic::Elastic::new(
            url,
            index,
            &settings.audit_log,
        )) as Arc<dyn SearchEngine>
    })
}

/// Which index a search reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SearchChoice {
    /// Elasticsearch when configured, the embedded index otherwise.
    #[default]
    Auto,
    /// The embedded index.
    Embedded,
    /// Elasticsearch (an error when none is configured).
    Server,
}

/// The engine a search reads, as `choice` says. The embedded index is first brought up to
/// date with the audit log — unless an S3 is writing it, which keeps it current itself.
pub async fn search_engine(
    settings: &Settings,
    choice: SearchChoice,
) -> Result<Arc<dyn SearchEngine>, crate::search::SearchError> {
    use crate::search::{Indexer, SearchError, embedded::Embedded};
    if choice == SearchChoice::Server && settings.search.is_none() {
        return Err(SearchError::Query(
            "no Elasticsearch is configured: pass --elasticsearch-url (or set \
             LIVROS_ELASTICSEARCH_URL)"
                .into(),
        ));
    }
    if choice != SearchChoice::Embedded && settings.search.is_some() {
        return search_reader(settings, choice);
    }
    if !settings.audit_log.exists() {
        return Err(SearchError::Query(format!(
            "no audit log at {}: `livros up` or `livros s3` writes it (or pass --audit-log)",
            settings.audit_log.display()
        )));
    }
    let dir = crate::search::embedded_dir(&settings.audit_log);
    // A writer of its own, dropped (with its lock) once caught up.
    let writer = Arc::new(Embedded::open(&dir)?);
    let mut indexer = Indexer::new(writer, settings.audit_log.clone(), settings.topic_systems());
    match indexer.catch_up().await {
        Ok(()) | Err(SearchError::Unavailable(_)) => {}
        Err(e) => return Err(e),
    }
    drop(indexer);
    search_reader(settings, SearchChoice::Embedded)
}

/// The engine searches read, as [`search_engine`] without the catch-up: for a process
/// whose own S3 keeps the index current (the dashboard in `livros up`).
pub fn search_reader(
    settings: &Settings,
    choice: SearchChoice,
) -> Result<Arc<dyn SearchEngine>, crate::search::SearchError> {
    if choice != SearchChoice::Embedded
        && let Some(engine) = search_server(settings)
    {
        return Ok(engine);
    }
    let dir = crate::search::embedded_dir(&settings.audit_log);
    Ok(Arc::new(crate::search::embedded::Embedded::open(&dir)?))
}

/// Opens the bus the settings name, creating every topic the systems use.
///
/// Kafka brokers that do not answer are waited for, with backoff and a log line per
/// attempt (a cluster often starts after its clients); the embedded bus fails at once.
pub async fn open_bus(settings: &Settings) -> Result<Arc<dyn Bus>, AppError> {
    let topics = settings.all_topics();
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

/// Opens the stores the settings name, with every system's tables (a store is shared, and
/// its schema should not depend on which systems one process happens to run).
pub async fn open_stores(settings: &Settings) -> Result<Stores, AppError> {
    Ok(crate::systems::open_stores(&settings.data_dir, &settings.stores).await?)
}

/// Lines saying where each kind of data goes, for the start of `up` and `s2`.
pub fn describe(bus: &dyn Bus, stores: Option<&Stores>, settings: &Settings) -> Vec<String> {
    let mut lines = vec![format!("bus: {}", bus.describe())];
    if let Some(stores) = stores {
        for system in &settings.systems.0 {
            lines.extend(system.describe(stores, &settings.topics));
        }
    }
    lines.push(format!("audit log: {}", settings.audit_log.display()));
    if let Some((url, index)) = &settings.search {
        lines.push(format!(
            "audit log indexed into {} (index `{index}`)",
            crate::store::redact(url)
        ));
    }
    lines
}

/// What a run of the whole pipeline did.
#[derive(Debug, Clone, Default)]
pub struct UpReport {
    /// What each system's S1 sent, by system name.
    pub sent: Vec<(&'static str, Sent)>,
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
    /// The consumers S2 runs (empty when it does not run).
    pub consumers: Vec<ConsumerSpec>,
    stores: Option<Stores>,
    workers: Vec<(&'static str, Workers)>,
    tasks: tokio::task::JoinSet<Result<(), ServiceError>>,
}

impl Pipeline {
    /// Starts S2 (when `stores` is given and the systems have consumers) and S3 (when
    /// `with_s3`) in the background, for the settings' systems.
    pub fn start(
        bus: Arc<dyn Bus>,
        stores: Option<Stores>,
        with_s3: bool,
        settings: &Settings,
        print_events: bool,
    ) -> Self {
        let consumers = stores
            .as_ref()
            .map(|stores| settings.consumers(stores))
            .unwrap_or_default();
        Self::start_with(bus, stores, consumers, with_s3, settings, print_events)
    }

    /// [`Pipeline::start`] with these consumers (a benchmark keeps hold of its handlers; the
    /// products scheduler needs no store), S2 running when there are any.
    pub fn start_with(
        bus: Arc<dyn Bus>,
        stores: Option<Stores>,
        consumers: Vec<ConsumerSpec>,
        with_s3: bool,
        settings: &Settings,
        print_events: bool,
    ) -> Self {
        crate::metrics::handle();
        let shutdown = CancellationToken::new();
        let counters = Arc::new(Counters::default());
        let mut tasks = tokio::task::JoinSet::new();
        if !consumers.is_empty() {
            let config = S2Config {
                print_events,
                ..settings.s2.clone()
            };
            tasks.spawn(s2::run(
                bus.clone(),
                consumers.clone(),
                config,
                counters.clone(),
                shutdown.clone(),
            ));
        }
        if with_s3 {
            let config = S3Config {
                group: settings.s3_group.clone(),
                log_path: settings.audit_log.clone(),
                topics: settings.all_topics(),
                batch_size: settings.s2.batch_size,
                print_events,
            };
            tasks.spawn(s3::run(
                bus.clone(),
                config,
                counters.clone(),
                shutdown.clone(),
            ));
            // The indexes S3 keeps: the embedded one always, Elasticsearch when configured.
            // An index that cannot be opened is said, and S3 goes on without it.
            let mut engines: Vec<Arc<dyn SearchEngine>> =
                search_server(settings).into_iter().collect();
            let dir = crate::search::embedded_dir(&settings.audit_log);
            match crate::search::embedded::Embedded::open(&dir) {
                Ok(embedded) => engines.push(Arc::new(embedded)),
                Err(e) => tracing::error!("the audit log is not searchable here: {e}"),
            }
            for engine in engines {
                let indexer = crate::search::Indexer::new(
                    engine,
                    settings.audit_log.clone(),
                    settings.topic_systems(),
                );
                let shutdown = shutdown.clone();
                tasks.spawn(async move {
                    indexer.run(shutdown).await;
                    Ok(())
                });
            }
        }
        Self {
            shutdown,
            counters,
            consumers,
            stores,
            workers: Vec::new(),
            tasks,
        }
    }

    /// Runs `system`'s background workers (its outbox relay) over S2's stores until the
    /// pipeline stops; its HTTP API, served after, wakes them. Without stores (an
    /// S3-only pipeline) there is nothing to run.
    pub fn start_workers(&mut self, system: &dyn System, bus: Arc<dyn Bus>, settings: &Settings) {
        let Some(stores) = &self.stores else { return };
        let workers = system.workers(stores, bus, settings);
        workers.spawn(&mut self.tasks, &self.shutdown);
        self.workers.push((system.name(), workers));
    }

    /// Serves `system`'s HTTP API on `listener` over S2's stores, until the pipeline
    /// stops. Without stores (an S3-only pipeline) there is nothing to serve.
    pub fn serve_http(
        &mut self,
        system: &dyn System,
        bus: Arc<dyn Bus>,
        listener: tokio::net::TcpListener,
        settings: &Settings,
    ) {
        let Some(stores) = &self.stores else { return };
        let workers = self
            .workers
            .iter()
            .find(|(name, _)| *name == system.name())
            .map(|(_, w)| w.clone())
            .unwrap_or_default();
        let app = system.http(stores, bus, settings, settings.api.clone(), &workers);
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            crate::api::serve(listener, app, shutdown)
                .await
                .map_err(ServiceError::Http)
        });
    }

    /// Serves the dashboard on `listener` over S2's stores until the pipeline stops;
    /// `apis` are the systems' API base URLs, for its links.
    pub fn serve_dashboard(
        &mut self,
        listener: tokio::net::TcpListener,
        bus: Arc<dyn Bus>,
        settings: &Settings,
        apis: Vec<(&'static str, String)>,
    ) -> Result<(), AppError> {
        let Some(stores) = &self.stores else {
            return Ok(());
        };
        let search = search_reader(settings, SearchChoice::Auto).map_err(ServiceError::from)?;
        let app = crate::dashboard::router(bus, stores.clone(), settings, search, apis);
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            crate::api::serve(listener, app, shutdown)
                .await
                .map_err(ServiceError::Http)
        });
        Ok(())
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

    /// Waits until S2 has committed everything published so far and the systems have
    /// finished what they accepted (published their outbox).
    pub async fn drain_work(&mut self, bus: &dyn Bus, settings: &Settings) -> Result<(), AppError> {
        let consumers = self.consumers.clone();
        let stores = self.stores.clone();
        self.drain(|| async {
            let mut left = s2::lag(bus, &consumers).await?;
            if let Some(stores) = &stores {
                for system in &settings.systems.0 {
                    // A store that cannot answer only delays the measurement.
                    left += system
                        .pending(stores)
                        .await
                        .map_err(|e| BusError::Unavailable(e.to_string()))?;
                }
            }
            Ok(left)
        })
        .await
    }

    /// [`Pipeline::drain_work`], then waits until S3 has logged everything too.
    pub async fn drain_all(&mut self, bus: &dyn Bus, settings: &Settings) -> Result<(), AppError> {
        self.drain_work(bus, settings).await?;
        let all = settings.all_topics();
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

/// Where `livros up` serves: each system's HTTP API (those given) and the dashboard.
#[derive(Default)]
pub struct Listeners {
    /// A listener per system that serves its API.
    pub http: Vec<(Arc<dyn System>, tokio::net::TcpListener)>,
    /// The dashboard's, when it is served.
    pub dashboard: Option<tokio::net::TcpListener>,
}

/// Runs every system's S1, S2 and S3 in this process, each system's HTTP API on the
/// listener given for it, and the dashboard on its own. With `generate.count`, returns
/// once every message each S1 sent has been stored (or dead-lettered) and logged;
/// otherwise runs until `stop_signal`. On
/// `stop_signal`, the S1s stop between events, S2 and S3 finish the batch they are on,
/// and the APIs the requests in flight.
pub async fn up(
    bus: Arc<dyn Bus>,
    stores: Stores,
    settings: &Settings,
    generate: GenConfig,
    listeners: Listeners,
    stop_signal: impl std::future::Future<Output = ()> + Send + 'static,
    on_start: impl FnOnce(&Arc<Counters>),
) -> Result<UpReport, AppError> {
    let started = Instant::now();
    let print_events = generate.print_events;
    let mut pipeline = Pipeline::start(bus.clone(), Some(stores), true, settings, print_events);
    for system in &settings.systems.0 {
        pipeline.start_workers(&**system, bus.clone(), settings);
    }
    let Listeners { http, dashboard } = listeners;
    let apis = http
        .iter()
        .filter_map(|(system, l)| Some((system.name(), format!("http://{}", l.local_addr().ok()?))))
        .collect();
    for (system, listener) in http {
        pipeline.serve_http(&*system, bus.clone(), listener, settings);
    }
    if let Some(listener) = dashboard {
        pipeline.serve_dashboard(listener, bus.clone(), settings, apis)?;
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
    let generators = settings.systems.0.iter().map(|system| {
        let (bus, counters, shutdown, config) = (
            bus.clone(),
            pipeline.counters.clone(),
            shutdown.clone(),
            generate.clone(),
        );
        async move {
            let sent = system
                .generate(bus, settings, config, counters, shutdown)
                .await?;
            Ok::<_, ServiceError>((system.name(), sent))
        }
    });
    let sent: Result<Vec<_>, ServiceError> = futures::future::join_all(generators)
        .await
        .into_iter()
        .collect();
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
