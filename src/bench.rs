//! `livros bench --http`: every system's HTTP API served in this process as `livros s2`
//! serves it (consumers, workers and all), loaded by `livros loadgen` in a separate
//! process. Each write endpoint's rate is set against the same server's `GET /health` rate
//! measured in the same run: the most that server answers at all on this machine, so the
//! ratio says how much of it the write path keeps, whatever else the machine is doing.
//! Under each write phase, the API writer's group commit in that phase (read from the
//! metrics it records, `livros_api_batch_*`): how many requests a batch served, how long
//! its durable write took, and how much of the phase the writer spent writing. A writer
//! busy nearly all the phase is what bounds it: the rate is then its batch size over its
//! batch time, whatever the HTTP plumbing could do.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::app::{self, AppError, Pipeline, Settings};
use crate::loadgen::{LoadReport, Plan, Request};
use crate::metrics::{ApiBatches, api_batches};
use crate::services::ServiceError;

/// A write endpoint meets its goal at this share of the `/health` rate or more…
pub const WRITE_SHARE_GOAL: f64 = 0.5;
/// …with its 99th-percentile latency under this.
pub const WRITE_P99_GOAL: Duration = Duration::from_millis(10);

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The pipeline or the stores failed.
    #[error(transparent)]
    App(#[from] AppError),
    /// The load generator could not be started or did not report.
    #[error("the load generator ({what}): {reason}")]
    Load {
        /// The phase it was running.
        what: String,
        /// What went wrong.
        reason: String,
    },
}

/// One system's API under load.
#[derive(Debug, Clone)]
pub struct SystemReport {
    /// The system.
    pub system: &'static str,
    /// Where its API listened.
    pub address: SocketAddr,
    /// `GET /health`: the ceiling.
    pub health: LoadReport,
    /// Each phase, in order.
    pub phases: Vec<Phase>,
}

/// One phase of load on an API.
#[derive(Debug, Clone)]
pub struct Phase {
    /// What the load generator measured.
    pub load: LoadReport,
    /// Whether it is a write, held to the goal.
    pub write: bool,
    /// The API writers' batches during the phase.
    pub batches: ApiBatches,
}

impl SystemReport {
    /// A phase's rate as a share of the `/health` rate.
    pub fn share(&self, phase: &LoadReport) -> f64 {
        phase.rate() / self.health.rate().max(1e-9)
    }

    /// Whether every write phase met the goal.
    pub fn writes_meet_goal(&self) -> bool {
        self.phases
            .iter()
            .filter(|p| p.write)
            .all(|p| meets_goal(self.share(&p.load), &p.load))
    }
}

fn meets_goal(share: f64, phase: &LoadReport) -> bool {
    share >= WRITE_SHARE_GOAL && phase.p99 < WRITE_P99_GOAL && phase.errors == 0
}

impl std::fmt::Display for SystemReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} API on {}", self.system, self.address)?;
        writeln!(f, "  {}   (the ceiling)", self.health)?;
        for phase in &self.phases {
            let load = &phase.load;
            write!(f, "  {load}")?;
            if phase.write {
                let share = self.share(load);
                write!(
                    f,
                    "   {:.0} % of /health: {}",
                    100.0 * share,
                    if meets_goal(share, load) {
                        "goal met"
                    } else {
                        "goal NOT met"
                    }
                )?;
            }
            writeln!(f)?;
            let b = &phase.batches;
            if phase.write && b.batches >= 1.0 {
                writeln!(
                    f,
                    "      group commit: {:.1} requests a batch, {:.2} ms each to be durable; \
                     the writer busy {:.0} % of the phase",
                    b.requests / b.batches,
                    1e3 * b.seconds / b.batches,
                    100.0 * b.seconds / load.elapsed.as_secs_f64().max(1e-9)
                )?;
            }
        }
        Ok(())
    }
}

/// Serves every system of `settings` and loads each API in turn: `GET /health`, then the
/// system's own phases ([`crate::systems::System::http_bench`]), `requests` requests each
/// over `connections` connections, from `exe loadgen` (the `livros` binary).
pub async fn http(
    settings: &Settings,
    exe: &Path,
    requests: usize,
    connections: usize,
) -> Result<Vec<SystemReport>, BenchError> {
    let bus = app::open_bus(settings).await?;
    let stores = app::open_stores(settings).await?;
    let mut pipeline = Pipeline::start(bus.clone(), Some(stores), false, settings, false);
    for system in &settings.systems.0 {
        pipeline.start_workers(&**system, bus.clone(), settings);
    }
    let mut served = Vec::new();
    for system in &settings.systems.0 {
        let plans = system.http_bench(settings, requests);
        if plans.is_empty() {
            continue;
        }
        let listener = crate::api::bind("127.0.0.1:0".parse().expect("a valid address"))
            .await
            .map_err(|e| AppError::from(ServiceError::Http(e)))?;
        let address = listener
            .local_addr()
            .map_err(|e| AppError::from(ServiceError::Http(e)))?;
        pipeline.serve_http(&**system, bus.clone(), listener, settings);
        served.push((system.name(), address, plans));
    }
    let driver = Driver {
        exe,
        dir: settings.data_dir.clone(),
        connections,
        token: settings.api.token.clone(),
    };
    let mut reports = Vec::new();
    for (system, address, plans) in served {
        let health = Plan {
            what: "GET /health".into(),
            expect: 200,
            write: false,
            requests: vec![Request::get("/health"); requests],
        };
        settle(&mut pipeline, &*bus, settings, system, &health.what).await?;
        let health = driver.run(address, &health).await?;
        let mut phases = Vec::new();
        for plan in plans {
            settle(&mut pipeline, &*bus, settings, system, &plan.what).await?;
            let before = api_batches();
            let load = driver.run(address, &plan).await?;
            phases.push(Phase {
                load,
                write: plan.write,
                batches: api_batches().since(&before),
            });
        }
        reports.push(SystemReport {
            system,
            address,
            health,
            phases,
        });
    }
    pipeline.stop().await?;
    Ok(reports)
}

/// Waits until the consumers have caught up with what the last phase published (the
/// gateway's events, the outbox's announcements), so that each phase starts from the same
/// quiet pipeline: a round trip timed behind the previous phase's backlog measures the
/// backlog, and waits of `?wait=5` ran out behind 60,000 queued events.
async fn settle(
    pipeline: &mut Pipeline,
    bus: &dyn crate::bus::Bus,
    settings: &Settings,
    system: &str,
    next: &str,
) -> Result<(), BenchError> {
    let started = std::time::Instant::now();
    pipeline.drain_work(bus, settings).await?;
    if started.elapsed() > std::time::Duration::from_secs(1) {
        println!(
            "  ({system}: the consumers took {:.1} s to catch up before `{next}`)",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Runs plans through `livros loadgen` in its own process.
struct Driver<'a> {
    exe: &'a Path,
    dir: PathBuf,
    connections: usize,
    token: Option<String>,
}

impl Driver<'_> {
    async fn run(&self, address: SocketAddr, plan: &Plan) -> Result<LoadReport, BenchError> {
        let failed = |reason: String| BenchError::Load {
            what: plan.what.clone(),
            reason,
        };
        let file = self
            .dir
            .join(format!("loadgen-{}.json", uuid::Uuid::new_v4().simple()));
        crate::loadgen::write_plan(plan, &file).map_err(|e| failed(e.to_string()))?;
        let mut command = tokio::process::Command::new(self.exe);
        command
            .arg("loadgen")
            .arg("--target")
            .arg(address.to_string())
            .arg("--plan")
            .arg(&file)
            .arg("--connections")
            .arg(self.connections.to_string())
            .env_remove("LIVROS_API_TOKEN")
            .kill_on_drop(true);
        if let Some(token) = &self.token {
            command.env("LIVROS_API_TOKEN", token);
        }
        let output = command
            .output()
            .await
            .map_err(|e| failed(format!("starting {}: {e}", self.exe.display())));
        let _ = std::fs::remove_file(&file);
        let output = output?;
        if !output.status.success() {
            return Err(failed(format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        serde_json::from_slice(&output.stdout)
            .map_err(|e| failed(format!("its report is not JSON ({e})")))
    }
}

/// This process's resident memory, in bytes, from `/proc/self/status` (Linux; `None`
/// elsewhere): all of it, and the anonymous part (heap and stacks: what a leak or an
/// unbounded queue grows). The rest is file pages mapped in (the search index's segments,
/// SQLite's files), which the kernel takes back under pressure. Of the anonymous part, what
/// SQLite uses ([`crate::sqlite::heap_in_use`]: page caches filling to their bounds,
/// statements), what Rust's heap hands out, and what the C library's allocator holds
/// ([`c_heap_held`]), so that a watch can tell caches filling from the rest growing.
pub fn rss() -> Option<Rss> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some(Rss {
        total: field("VmRSS:")?,
        anon: field("RssAnon:")?,
        c_heap: c_heap_held(),
        sqlite: crate::sqlite::heap_in_use(),
        rust: crate::heap::in_use().unwrap_or(0),
    })
}

/// Bytes glibc's `malloc` holds from the system, in use or kept free for reuse: the heap
/// of the C libraries linked in but SQLite (librdkafka's, with Kafka), since Rust's own
/// allocations go to mimalloc (set in `main.rs`) and SQLite's too
/// ([`crate::sqlite::heap::use_mimalloc`]). 0 where the C library is not glibc.
pub fn c_heap_held() -> u64 {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: takes no argument and returns a plain struct of counters; glibc (2.33
        // and later) walks its arenas under their locks, callable from any thread.
        let info = unsafe { libc::mallinfo2() };
        (info.arena + info.hblkhd) as u64
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        0
    }
}

/// A reading of [`rss`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rss {
    /// Every resident page.
    pub total: u64,
    /// Resident anonymous pages.
    pub anon: u64,
    /// What the C library's allocator holds ([`c_heap_held`]): part of `anon` once touched.
    pub c_heap: u64,
    /// What SQLite has allocated (from mimalloc, or from the C heap where
    /// [`crate::sqlite::heap::use_mimalloc`] could not be set).
    pub sqlite: u64,
    /// What Rust's heap has handed out and not had back ([`crate::heap::in_use`]; 0 in a
    /// program that does not count).
    pub rust: u64,
}

/// One part of an [`Rss`] reading.
type Part = fn(&Rss) -> u64;

/// The parts a watch follows, each with its own peak.
const PARTS: [(&str, Part); 6] = [
    ("RSS", |r| r.total),
    ("anonymous", |r| r.anon),
    // Bounded: each connection's page cache and statement cache.
    ("of which SQLite's heap in use", |r| r.sqlite),
    // What our code holds: a leak or an unbounded queue of ours grows this.
    ("Rust's heap in use", |r| r.rust),
    ("the C heap", |r| r.c_heap),
    // What the allocators keep free around those, and the stacks.
    ("the rest", |r| {
        r.anon
            .saturating_sub(r.c_heap)
            .saturating_sub(r.rust)
            .saturating_sub(r.sqlite)
    }),
];

/// Resident memory over a soak: where it started, where it stood once warmed up, its peak
/// and where it ended.
#[derive(Debug, Clone)]
pub struct RssWatch {
    /// When the watch started.
    started: std::time::Instant,
    /// How long the warm-up lasts.
    warm_up: Duration,
    /// When the pipeline had started.
    pub start: Rss,
    /// After the warm-up (the first minute, or a tenth of the run if shorter).
    pub warm: Option<Rss>,
    /// The most seen of each of [`PARTS`], on its own.
    peak: [u64; PARTS.len()],
    /// The last reading.
    pub end: Rss,
}

impl RssWatch {
    /// A watch starting now, whose warm-up lasts `warm_up`.
    pub fn new(warm_up: Duration) -> Self {
        let now = rss().unwrap_or_default();
        Self {
            started: std::time::Instant::now(),
            warm_up,
            start: now,
            warm: None,
            peak: PARTS.map(|(_, part)| part(&now)),
            end: now,
        }
    }

    /// Takes a reading (the first one after the warm-up is kept as such).
    pub fn sample(&mut self) {
        let now = rss().unwrap_or_default();
        for (peak, (_, part)) in self.peak.iter_mut().zip(PARTS) {
            *peak = (*peak).max(part(&now));
        }
        self.end = now;
        if self.started.elapsed() >= self.warm_up && self.warm.is_none() {
            self.warm = Some(now);
        }
    }
}

impl std::fmt::Display for RssWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
        for (i, ((name, part), peak)) in PARTS.into_iter().zip(self.peak).enumerate() {
            if i > 0 {
                write!(f, " | ")?;
            }
            write!(
                f,
                "{name} start {:.1} MB, peak {:.1} MB, end {:.1} MB",
                mb(part(&self.start)),
                mb(peak),
                mb(part(&self.end))
            )?;
            if let Some(warm) = &self.warm {
                let (warm, end) = (part(warm) as f64, part(&self.end) as f64);
                write!(
                    f,
                    " (after warm-up {:.1} MB, then {:+.1} MB, {:+.1} %)",
                    warm / (1024.0 * 1024.0),
                    (end - warm) / (1024.0 * 1024.0),
                    100.0 * (end - warm) / warm.max(1.0)
                )?;
            }
        }
        Ok(())
    }
}
