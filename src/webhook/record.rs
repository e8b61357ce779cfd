//! The attempt log's writer. Every finished attempt goes through one task that writes what
//! has accumulated as one store batch (group commit, as the event log does for publishes):
//! one blocking-pool hand-off and one journal lock per batch instead of per attempt, which
//! was the largest cost per delivery after the HTTP exchange itself.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::model::Finished;
use super::queue::DeliveryQueue;
use crate::store::StoreError;

/// Most attempts written in one batch.
const BATCH: usize = 512;

type Reply = oneshot::Sender<Result<(), Arc<StoreError>>>;

/// The handle delivery workers send their attempts through.
pub(super) struct Recorder {
    tx: mpsc::Sender<(Finished, Reply)>,
}

impl Recorder {
    /// Starts the writer on the current runtime. It is not tracked: it must outlive the
    /// attempts that shutdown waits for, and it stops with the delivery runtime.
    pub(super) fn start(store: Arc<DeliveryQueue>, capacity: usize) -> Recorder {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        tokio::spawn(write(store, rx));
        Recorder { tx }
    }

    /// Returns once the attempt and its effect on the task are durable in the store.
    pub(super) async fn finish(&self, finished: Finished) -> Result<(), Arc<StoreError>> {
        let (reply, done) = oneshot::channel();
        if self.tx.send((finished, reply)).await.is_err() {
            return Err(Arc::new(StoreError::Closed));
        }
        done.await.unwrap_or(Err(Arc::new(StoreError::Closed)))
    }
}

async fn write(store: Arc<DeliveryQueue>, mut rx: mpsc::Receiver<(Finished, Reply)>) {
    let mut pending = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut pending, BATCH).await > 0 {
        let (finished, replies): (Vec<Finished>, Vec<Reply>) = pending.drain(..).unzip();
        let result = store.finish(finished).await.map_err(Arc::new);
        for reply in replies {
            let _ = reply.send(result.clone());
        }
    }
}
