//! Group commit for the APIs' writes: concurrent POSTs of one kind share one store round
//! trip. Each kind has a writer task; a request queues its write (its body, or what the
//! handler made of it) and waits for its own result. The writer takes whatever is queued (at least one, at most [`MAX_BATCH`]) and
//! hands it to its [`Batch`] as one batch — for a system's [`Handler`], the same path,
//! per-record isolation included, as a batch S2 consumes from the bus. Under no load a
//! batch is one request and nothing waits; under load one fsync or one round trip serves
//! many requests. One batch of a kind is written at a time: the next one grows meanwhile,
//! which on two cores beat several smaller batches in flight (see ARCHITECTURE.md).

use axum::body::Bytes;
use futures::FutureExt as _;
use tokio::sync::{mpsc, oneshot};

use std::sync::Arc;

use crate::services::{Handler, Outcome};
use crate::store::{StoreError, StoreResult};

/// Most requests written in one batch.
const MAX_BATCH: usize = 256;

/// What a writer does with a batch of writes: one output per write, in order; `Err` when
/// the store failed for all of them.
#[async_trait::async_trait]
pub trait Batch: Send + Sync {
    /// One write (a request's body…).
    type Input: Send + Sync + 'static;
    /// What each write becomes.
    type Output: Send + 'static;
    /// Applies the writes as one batch.
    async fn apply(&self, inputs: &[Self::Input]) -> StoreResult<Vec<Self::Output>>;
}

/// A system's handler writes an API's batch of bodies as it writes one from the bus.
#[async_trait::async_trait]
impl<H: Handler + ?Sized> Batch for H {
    type Input = Bytes;
    type Output = Outcome;

    async fn apply(&self, bodies: &[Bytes]) -> StoreResult<Vec<Outcome>> {
        let payloads: Vec<&[u8]> = bodies.iter().map(|b| &b[..]).collect();
        self.handle(&payloads).await
    }
}

struct Job<I, O> {
    input: I,
    reply: oneshot::Sender<StoreResult<O>>,
}

/// The queue of one kind's writes.
pub struct Writer<O = Outcome, I = Bytes> {
    queue: mpsc::Sender<Job<I, O>>,
}

impl<O, I> Clone for Writer<O, I> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<O: Send + 'static, I: Send + Sync + 'static> Writer<O, I> {
    /// Starts a writer task over `batch`; it ends when every clone of the writer is gone.
    /// `name` labels its batches in the metrics (`livros_api_batch_size{writer=…}`).
    pub fn spawn<B: Batch<Input = I, Output = O> + ?Sized + 'static>(
        name: &'static str,
        batch: Arc<B>,
    ) -> Self {
        let (queue, mut jobs) = mpsc::channel::<Job<I, O>>(4 * MAX_BATCH);
        tokio::spawn(async move {
            let mut taken = Vec::with_capacity(MAX_BATCH);
            while jobs.recv_many(&mut taken, MAX_BATCH).await > 0 {
                let (inputs, replies): (Vec<I>, Vec<_>) =
                    taken.drain(..).map(|j| (j.input, j.reply)).unzip();
                let started = std::time::Instant::now();
                // A bug that panics in one batch must not stop the writer: every later
                // request of this kind would get "shutting down" until a restart.
                let applied = std::panic::AssertUnwindSafe(batch.apply(&inputs))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|panic| {
                        tracing::error!(
                            writer = name,
                            "a batch panicked ({}); its requests get a 500",
                            crate::services::panic_words(&*panic)
                        );
                        Err(StoreError::Fault {
                            store: "api",
                            reason: "a bug: writing the batch panicked (see the server's log)"
                                .into(),
                        })
                    });
                crate::metrics::api_batch(name, inputs.len(), started.elapsed());
                match applied {
                    Ok(outputs) => {
                        for (reply, output) in replies.into_iter().zip(outputs) {
                            let _ = reply.send(Ok(output));
                        }
                    }
                    Err(e) => {
                        for reply in replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            }
        });
        Self { queue }
    }

    /// Writes one input; resolves once its batch is durable (or refused).
    pub async fn write(&self, input: I) -> StoreResult<O> {
        let stopped = || StoreError::Unavailable {
            store: "api",
            reason: "the writer stopped; the server is shutting down".into(),
        };
        let (reply, output) = oneshot::channel();
        self.queue
            .send(Job { input, reply })
            .await
            .map_err(|_| stopped())?;
        output.await.map_err(|_| stopped())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Panics on an input of 0, doubles the others.
    struct Doubler;

    #[async_trait::async_trait]
    impl Batch for Doubler {
        type Input = u32;
        type Output = u32;

        async fn apply(&self, inputs: &[u32]) -> StoreResult<Vec<u32>> {
            assert!(!inputs.contains(&0), "zero");
            Ok(inputs.iter().map(|i| i * 2).collect())
        }
    }

    #[tokio::test]
    async fn a_batch_that_panics_fails_its_requests_and_the_writer_goes_on() {
        let writer = Writer::spawn("test", Arc::new(Doubler));
        let failed = writer.write(0).await.unwrap_err();
        assert!(matches!(failed, StoreError::Fault { .. }), "{failed:?}");
        assert_eq!(writer.write(21).await.unwrap(), 42);
    }
}
