//! Retrying transient failures with capped exponential backoff.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// First wait after a failure: short, since most blips (a busy lock, a dropped connection)
/// clear at once.
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// Longest wait between attempts: a store that is down for minutes is polled this often,
/// and recovery is noticed within this time.
const MAX_DELAY: Duration = Duration::from_secs(10);

/// The waits between attempts: doubling from [`FIRST_DELAY`] up to [`MAX_DELAY`].
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: FIRST_DELAY,
            attempt: 1,
        }
    }
}

impl Backoff {
    /// Logs the failure of attempt N and sleeps before attempt N+1. Returns false (without
    /// waiting out the delay) when `shutdown` is cancelled meanwhile.
    pub async fn wait(
        &mut self,
        what: &str,
        error: &(dyn Display + Sync),
        shutdown: &CancellationToken,
    ) -> bool {
        let delay = self.next;
        crate::metrics::retried(what);
        tracing::warn!(
            "{what} failed (attempt {}), retrying in {delay:?}: {error}",
            self.attempt
        );
        self.next = (self.next * 2).min(MAX_DELAY);
        self.attempt += 1;
        sleep(delay, shutdown).await
    }

    /// How many attempts have failed so far.
    pub fn failures(&self) -> u32 {
        self.attempt - 1
    }
}

/// Sleeps for `delay`; false (at once) when `shutdown` is cancelled meanwhile.
pub async fn sleep(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// Runs `op` until it succeeds, fails with an error `transient` says is permanent, or
/// `shutdown` is cancelled. Each transient failure is logged.
///
/// Returns `Ok(None)` when stopped by `shutdown` before succeeding.
pub async fn until_ok<T, E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    transient: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<Option<T>, E>
where
    E: Display + Sync,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::default();
    loop {
        match op().await {
            Ok(value) => {
                if backoff.failures() > 0 {
                    tracing::info!(
                        "{what}: succeeded after {} failed attempts",
                        backoff.failures()
                    );
                }
                return Ok(Some(value));
            }
            Err(e) if transient(&e) => {
                if !backoff.wait(what, &e, shutdown).await {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e),
        }
    }
}
