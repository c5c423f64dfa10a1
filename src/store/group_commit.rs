//! Group commit: writes that arrive while a commit is under way share the next one.
//!
//! A commit costs a WAL flush, so one commit per request caps throughput at the disk's flush
//! rate. Here callers queue their item and wait; a few writer tasks each take everything queued
//! (up to a batch) and write it with one statement. An idle writer takes a lone item at once, so
//! a quiet gateway adds no latency; a busy one gets bigger batches. Each caller is answered only
//! after the commit that holds its item: nothing is acknowledged early.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};

/// A database error, shared by every caller whose item was in the failed batch.
pub type SharedError = Arc<sqlx::Error>;

/// Writes a batch in one statement, answering each item in order.
pub trait BatchWrite: Send + Sync + 'static {
    type Item: Send + 'static;
    type Output: Send + 'static;

    fn write(
        &self,
        pool: &PgPool,
        items: &[Self::Item],
    ) -> impl Future<Output = sqlx::Result<Vec<Self::Output>>> + Send;
}

struct Job<W: BatchWrite> {
    item: W::Item,
    reply: oneshot::Sender<Result<W::Output, SharedError>>,
}

/// The queue in front of the writers. Dropping it stops them once the queue is empty.
pub struct GroupCommit<W: BatchWrite> {
    queue: mpsc::Sender<Job<W>>,
}

impl<W: BatchWrite> GroupCommit<W> {
    /// Starts `writers` writer tasks (each holds one connection while it writes) taking up to
    /// `max_batch` items per statement. Must be called within a Tokio runtime.
    pub fn start(pool: PgPool, write: W, writers: usize, max_batch: usize) -> Self {
        let (queue, jobs) = mpsc::channel(writers * max_batch);
        let jobs = Arc::new(Mutex::new(jobs));
        let write = Arc::new(write);
        for _ in 0..writers {
            tokio::spawn(writer(pool.clone(), write.clone(), jobs.clone(), max_batch));
        }
        Self { queue }
    }

    /// Queues the item and waits for the commit that holds it.
    pub async fn submit(&self, item: W::Item) -> Result<W::Output, SharedError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || Arc::new(sqlx::Error::PoolClosed);
        self.queue
            .send(Job { item, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn writer<W: BatchWrite>(
    pool: PgPool,
    write: Arc<W>,
    jobs: Arc<Mutex<mpsc::Receiver<Job<W>>>>,
    max_batch: usize,
) {
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        // One writer gathers at a time; the others are writing meanwhile.
        if jobs.lock().await.recv_many(&mut batch, max_batch).await == 0 {
            return; // every sender is gone
        }
        let (items, replies): (Vec<W::Item>, Vec<_>) = batch.drain(..).map(|j| (j.item, j.reply)).unzip();
        match write.write(&pool, &items).await {
            Ok(outputs) => {
                for (reply, output) in replies.into_iter().zip(outputs) {
                    let _ = reply.send(Ok(output));
                }
            }
            // The database refused the statement (a constraint, a value it cannot store, a
            // deadlock): one bad item must not fail its neighbours, so each is written alone.
            Err(sqlx::Error::Database(_)) if items.len() > 1 => {
                for (item, reply) in items.into_iter().zip(replies) {
                    let alone = write.write(&pool, std::slice::from_ref(&item)).await;
                    let answer = alone.map_err(Arc::new).and_then(|mut outputs| {
                        outputs.pop().ok_or_else(|| Arc::new(sqlx::Error::RowNotFound))
                    });
                    let _ = reply.send(answer);
                }
            }
            Err(err) => {
                let err = Arc::new(err);
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }
}
