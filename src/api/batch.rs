//! Group commit for the APIs' writes: concurrent POSTs of one kind share one store round
//! trip. Each kind has a writer task; a request queues its body and waits for its own
//! outcome. The writer takes whatever is queued (at least one, at most [`MAX_BATCH`]) and
//! hands it to the system's [`Handler`] as one batch — the same path, per-record isolation
//! included, as a batch S2 consumes from the bus. Under no load a batch is one request
//! and nothing waits; under load one fsync or one round trip serves many requests.

use axum::body::Bytes;
use tokio::sync::{mpsc, oneshot};

use std::sync::Arc;

use crate::services::{Handler, Outcome};
use crate::store::{StoreError, StoreResult};

/// Most requests written in one batch.
const MAX_BATCH: usize = 256;

struct Job {
    payload: Bytes,
    reply: oneshot::Sender<StoreResult<Outcome>>,
}

/// The queue of one entity's writes.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts a writer task over `handler`; it ends when every clone of the writer is gone.
    pub fn spawn(handler: Arc<dyn Handler>) -> Self {
        let (queue, mut jobs) = mpsc::channel::<Job>(4 * MAX_BATCH);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
                let payloads: Vec<&[u8]> = batch.iter().map(|j| &j.payload[..]).collect();
                let result = handler.handle(&payloads).await;
                match result {
                    Ok(outcomes) => {
                        for (job, outcome) in batch.drain(..).zip(outcomes) {
                            let _ = job.reply.send(Ok(outcome));
                        }
                    }
                    Err(e) => {
                        for job in batch.drain(..) {
                            let _ = job.reply.send(Err(e.clone()));
                        }
                    }
                }
            }
        });
        Self { queue }
    }

    /// Stores one body; resolves once its batch is durable (or refused).
    pub async fn write(&self, payload: Bytes) -> StoreResult<Outcome> {
        let stopped = || StoreError::Unavailable {
            store: "api",
            reason: "the writer stopped; the server is shutting down".into(),
        };
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send(Job { payload, reply })
            .await
            .map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}
