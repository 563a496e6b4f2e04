//! `livros bench`: the whole pipeline on N events as fast as it goes, measured.

use std::time::{Duration, Instant};

use crate::app::{self, AppError, Settings};
use crate::routing::StoreKind;
use crate::services::s1::S1Config;

/// What a benchmark run measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Events published (customers + books + orders).
    pub events: u64,
    /// Time for S1 to publish them all.
    pub publish: Duration,
    /// Time from the first publish until S2 stored and S3 logged everything.
    pub end_to_end: Duration,
    /// Per store: records written and time spent writing.
    pub stores: Vec<(StoreKind, String, u64, Duration)>,
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "events:      {}", self.events)?;
        writeln!(
            f,
            "S1 publish:  {:>10.0} events/s ({:.2?})",
            rate(self.events, self.publish),
            self.publish
        )?;
        writeln!(
            f,
            "end to end:  {:>10.0} events/s ({:.2?}, stored by S2 and logged by S3)",
            rate(self.events, self.end_to_end),
            self.end_to_end
        )?;
        for (kind, engine, n, spent) in &self.stores {
            writeln!(
                f,
                "{:<12} {:>10.0} records/s while writing ({n} records in {spent:.2?}; {engine})",
                format!("{}:", kind.name()),
                rate(*n, *spent)
            )?;
        }
        Ok(())
    }
}

/// Runs the pipeline on `events` events (a third of each kind) with `settings`.
pub async fn run(settings: &Settings, events: u64) -> Result<BenchReport, AppError> {
    let bus = app::open_bus(settings).await?;
    let stores = app::open_stores(settings).await?;
    let engines = [
        (StoreKind::Relational, stores.relational.describe()),
        (StoreKind::Document, stores.document.describe()),
        (StoreKind::KeyValue, stores.key_value.describe()),
    ];
    let rounds = events.div_ceil(3);
    let mut pipeline = app::Pipeline::start(bus.clone(), Some(stores), true, settings, false);
    let s1 = S1Config {
        count: Some(rounds),
        rate: 0.0,
        seed: Some(1),
        print_events: false,
        topics: settings.topics.clone(),
    };
    let started = Instant::now();
    crate::services::s1::run(
        bus.clone(),
        crate::catalog::offline(),
        s1,
        pipeline.counters.clone(),
        pipeline.shutdown.clone(),
    )
    .await?;
    let publish = started.elapsed();
    pipeline
        .drain(&*bus, &settings.s2.group, &settings.topics.entities())
        .await?;
    pipeline
        .drain(&*bus, &settings.s3_group, &settings.topics.all())
        .await?;
    let end_to_end = started.elapsed();
    let timings = pipeline
        .router
        .as_ref()
        .expect("S2 runs in the bench")
        .timings();
    pipeline.stop().await?;
    Ok(BenchReport {
        events: rounds * 3,
        publish,
        end_to_end,
        stores: engines
            .into_iter()
            .map(|(kind, engine)| {
                let (n, spent) = timings.get(kind);
                (kind, engine, n, spent)
            })
            .collect(),
    })
}
