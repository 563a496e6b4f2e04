//! Group commit for the APIs' writes: concurrent POSTs of one kind share one store round
//! trip. Each kind has a writer task; a request queues its body and waits for its own
//! result. The writer takes whatever is queued (at least one, at most [`MAX_BATCH`]) and
//! hands it to its [`Batch`] as one batch — for a system's [`Handler`], the same path,
//! per-record isolation included, as a batch S2 consumes from the bus. Under no load a
//! batch is one request and nothing waits; under load one fsync or one round trip serves
//! many requests.

use axum::body::Bytes;
use tokio::sync::{mpsc, oneshot};

use std::sync::Arc;

use crate::services::{Handler, Outcome};
use crate::store::{StoreError, StoreResult};

/// Most requests written in one batch.
const MAX_BATCH: usize = 256;

/// What a writer does with a batch of bodies: one output per body, in order; `Err` when
/// the store failed for all of them.
#[async_trait::async_trait]
pub trait Batch: Send + Sync {
    /// What each body becomes.
    type Output: Send + 'static;
    /// Applies the bodies as one batch.
    async fn apply(&self, payloads: &[&[u8]]) -> StoreResult<Vec<Self::Output>>;
}

/// A system's handler writes an API's batch as it writes one from the bus.
#[async_trait::async_trait]
impl<H: Handler + ?Sized> Batch for H {
    type Output = Outcome;

    async fn apply(&self, payloads: &[&[u8]]) -> StoreResult<Vec<Outcome>> {
        self.handle(payloads).await
    }
}

struct Job<O> {
    payload: Bytes,
    reply: oneshot::Sender<StoreResult<O>>,
}

/// The queue of one kind's writes.
pub struct Writer<O = Outcome> {
    queue: mpsc::Sender<Job<O>>,
}

impl<O> Clone for Writer<O> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<O: Send + 'static> Writer<O> {
    /// Starts a writer task over `batch`; it ends when every clone of the writer is gone.
    pub fn spawn<B: Batch<Output = O> + ?Sized + 'static>(batch: Arc<B>) -> Self {
        let (queue, mut jobs) = mpsc::channel::<Job<O>>(4 * MAX_BATCH);
        tokio::spawn(async move {
            let mut jobs_batch = Vec::with_capacity(MAX_BATCH);
            while jobs.recv_many(&mut jobs_batch, MAX_BATCH).await > 0 {
                let payloads: Vec<&[u8]> = jobs_batch.iter().map(|j| &j.payload[..]).collect();
                let result = batch.apply(&payloads).await;
                match result {
                    Ok(outputs) => {
                        for (job, output) in jobs_batch.drain(..).zip(outputs) {
                            let _ = job.reply.send(Ok(output));
                        }
                    }
                    Err(e) => {
                        for job in jobs_batch.drain(..) {
                            let _ = job.reply.send(Err(e.clone()));
                        }
                    }
                }
            }
        });
        Self { queue }
    }

    /// Writes one body; resolves once its batch is durable (or refused).
    pub async fn write(&self, payload: Bytes) -> StoreResult<O> {
        let stopped = || StoreError::Unavailable {
            store: "api",
            reason: "the writer stopped; the server is shutting down".into(),
        };
        let (reply, output) = oneshot::channel();
        self.queue
            .send(Job { payload, reply })
            .await
            .map_err(|_| stopped())?;
        output.await.map_err(|_| stopped())?
    }
}
