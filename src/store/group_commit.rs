//! Group commit: writes that arrive while a commit is under way share the next one.
//!
//! A commit costs a WAL flush, so one commit per request caps throughput at the disk's flush
//! rate. Here callers queue their item and wait; a few writer tasks each take everything queued
//! (up to a batch) and write it with one statement. When no other write is under way, a writer
//! takes a lone item at once, so a quiet gateway adds no latency. While another write is under
//! way, the next writer keeps gathering until that write ends (or a short linger passes): its
//! commit would have waited on the same WAL flush anyway, and one statement for many items costs
//! Postgres less than several (Postgres' own `commit_delay` with `commit_siblings`, one level
//! up). Each caller is answered only after the commit that holds its item: nothing is
//! acknowledged early.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio::time::Instant;

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
    /// `max_batch` items per statement, gathering for at most `linger` while another write is
    /// under way (zero: never). Must be called within a Tokio runtime.
    pub fn start(pool: PgPool, write: W, writers: usize, max_batch: usize, linger: Duration) -> Self {
        let (queue, jobs) = mpsc::channel(writers * max_batch);
        let shared = Arc::new(Writers {
            pool,
            write,
            jobs: Mutex::new(jobs),
            writing: watch::Sender::new(0),
            max_batch,
            linger,
        });
        for _ in 0..writers {
            tokio::spawn(writer(shared.clone()));
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

/// What the writer tasks share.
struct Writers<W: BatchWrite> {
    pool: PgPool,
    write: W,
    jobs: Mutex<mpsc::Receiver<Job<W>>>,
    /// Writes under way.
    writing: watch::Sender<usize>,
    max_batch: usize,
    linger: Duration,
}

impl<W: BatchWrite> Writers<W> {
    /// The next batch, counted as under way from before the next writer may gather; none once
    /// every sender is gone. One writer gathers at a time; the others are writing meanwhile.
    async fn gather(&self, batch: &mut Vec<Job<W>>) -> Option<Writing<'_>> {
        let mut jobs = self.jobs.lock().await;
        if jobs.recv_many(batch, self.max_batch).await == 0 {
            return None;
        }
        let deadline = Instant::now() + self.linger;
        let mut writing = self.writing.subscribe();
        while batch.len() < self.max_batch && *writing.borrow_and_update() > 0 {
            let room = self.max_batch - batch.len();
            tokio::select! {
                received = jobs.recv_many(batch, room) => if received == 0 { break },
                _ = writing.changed() => {}
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        Some(Writing::start(&self.writing))
    }
}

/// Counts a write as under way while it lives.
struct Writing<'a>(&'a watch::Sender<usize>);

impl<'a> Writing<'a> {
    fn start(writing: &'a watch::Sender<usize>) -> Self {
        writing.send_modify(|n| *n += 1);
        Self(writing)
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

async fn writer<W: BatchWrite>(shared: Arc<Writers<W>>) {
    let Writers { pool, write, .. } = &*shared;
    let mut batch = Vec::with_capacity(shared.max_batch);
    while let Some(_writing) = shared.gather(&mut batch).await {
        let (items, replies): (Vec<W::Item>, Vec<_>) = batch.drain(..).map(|j| (j.item, j.reply)).unzip();
        match write.write(pool, &items).await {
            Ok(outputs) => {
                for (reply, output) in replies.into_iter().zip(outputs) {
                    let _ = reply.send(Ok(output));
                }
            }
            // The database refused the statement (a constraint, a value it cannot store, a
            // deadlock): one bad item must not fail its neighbours, so each is written alone.
            Err(sqlx::Error::Database(_)) if items.len() > 1 => {
                for (item, reply) in items.into_iter().zip(replies) {
                    let alone = write.write(pool, std::slice::from_ref(&item)).await;
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex as SyncMutex;

    use tokio::sync::Notify;

    use super::*;

    /// Records each batch; the batch holding item 0 is held until `release` is notified.
    struct Recording {
        batches: Arc<SyncMutex<Vec<Vec<u32>>>>,
        started: mpsc::UnboundedSender<()>,
        release: Arc<Notify>,
    }

    impl BatchWrite for Recording {
        type Item = u32;
        type Output = u32;

        async fn write(&self, _: &PgPool, items: &[u32]) -> sqlx::Result<Vec<u32>> {
            self.batches.lock().unwrap().push(items.to_vec());
            if items.contains(&0) {
                let _ = self.started.send(());
                self.release.notified().await;
            }
            Ok(items.to_vec())
        }
    }

    struct Rig {
        commits: Arc<GroupCommit<Recording>>,
        batches: Arc<SyncMutex<Vec<Vec<u32>>>>,
        started: mpsc::UnboundedReceiver<()>,
        release: Arc<Notify>,
    }

    fn rig(linger: Duration) -> Rig {
        let (started_tx, started) = mpsc::unbounded_channel();
        let batches = Arc::new(SyncMutex::new(Vec::new()));
        let release = Arc::new(Notify::new());
        let write = Recording {
            batches: batches.clone(),
            started: started_tx,
            release: release.clone(),
        };
        // Never connected: the recording write does not use it.
        let pool = PgPool::connect_lazy("postgres://localhost/unused").expect("a lazy pool");
        Rig {
            commits: Arc::new(GroupCommit::start(pool, write, 2, 256, linger)),
            batches,
            started,
            release,
        }
    }

    impl Rig {
        /// Item 0, whose write holds until released, once it is being written.
        async fn hold_a_write(&mut self) -> tokio::task::JoinHandle<()> {
            let commits = self.commits.clone();
            let held = tokio::spawn(async move {
                assert_eq!(commits.submit(0).await.expect("written"), 0);
            });
            self.started.recv().await.expect("the held write started");
            held
        }

        fn submit_many(&self, items: std::ops::RangeInclusive<u32>) -> Vec<tokio::task::JoinHandle<()>> {
            items
                .map(|item| {
                    let commits = self.commits.clone();
                    tokio::spawn(async move {
                        assert_eq!(commits.submit(item).await.expect("written"), item);
                    })
                })
                .collect()
        }
    }

    // The clock is paused: it moves only when every task waits for it, so a writer that
    // lingers shows as time passing, and the order of events is the same on every run.
    #[tokio::test(start_paused = true)]
    async fn a_lone_item_is_written_at_once() {
        let rig = rig(Duration::from_secs(3600));
        let started = Instant::now();
        assert_eq!(rig.commits.submit(7).await.expect("written"), 7);
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "no write was under way: no linger"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn items_arriving_during_a_write_share_the_next_one() {
        let mut rig = rig(Duration::from_secs(3600));
        let held = rig.hold_a_write().await;
        let waiting = rig.submit_many(1..=4);
        // Long enough for every task to run until it waits (the clock only moves then).
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            rig.batches.lock().unwrap().len(),
            1,
            "the others gather while 0 is written"
        );
        rig.release.notify_one();
        held.await.expect("item 0");
        for item in waiting {
            item.await.expect("items 1 to 4");
        }
        assert_eq!(*rig.batches.lock().unwrap(), vec![vec![0], vec![1, 2, 3, 4]]);
    }

    #[tokio::test(start_paused = true)]
    async fn gathering_lasts_no_longer_than_the_linger() {
        let linger = Duration::from_millis(5);
        let mut rig = rig(linger);
        let held = rig.hold_a_write().await;
        let started = Instant::now();
        for item in rig.submit_many(1..=4) {
            item.await.expect("written while 0 is still held");
        }
        assert_eq!(started.elapsed(), linger);
        assert_eq!(*rig.batches.lock().unwrap(), vec![vec![0], vec![1, 2, 3, 4]]);
        rig.release.notify_one();
        held.await.expect("item 0");
    }
}
