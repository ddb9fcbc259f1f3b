//! The state machine's disk writes, behind the apply path.
//!
//! With a disk doing real I/O, one thread owns the writes in order: an apply batch's changes
//! are queued and the apply returns (the write is not durable anyway: the log is), and what
//! queued up while the thread was busy or waiting (at most one commit per `COMMIT_EVERY`)
//! goes into one commit; snapshots and installs wait for their turn, so a durable step
//! always comes after the changes applied before it.

use super::sm_disk::{Changes, SmDisk};
use super::worker::Worker;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Apply batches queued at most; an apply waits for room beyond that (back-pressure).
const QUEUE: usize = 256;
/// The shortest time between two commits of apply batches: what queues meanwhile shares the
/// next one. A redb commit copies and checksums every page it touches, so one commit per
/// apply batch cost more CPU than the rest of a write (and the log, not these commits,
/// makes a write durable).
const COMMIT_EVERY: Duration = Duration::from_millis(25);

type Task = Box<dyn FnOnce(&dyn SmDisk) + Send>;

enum Job {
    Persist(Changes),
    Run(Task),
}

pub struct SmWriter {
    disk: Arc<dyn SmDisk>,
    /// `None` for a disk without real I/O (the simulation's): every call runs inline.
    worker: Option<Worker<Job>>,
    /// Why queued changes could not be written: every later call fails with it (the tables
    /// would miss changes, so nothing durable may be built on them).
    failed: Arc<Mutex<Option<String>>>,
}

/// Writes one batch in order: consecutive changes as one commit, a task after the changes
/// queued before it.
fn write_batch(disk: &dyn SmDisk, failed: &Mutex<Option<String>>, batch: Vec<Job>) {
    let persist = |changes: &mut Vec<Changes>| {
        if !changes.is_empty() && failed.lock().expect("poisoned").is_none() {
            if let Err(e) = disk.persist(changes) {
                tracing::error!(error = %e, "state machine write failed; the node stops writing its state");
                *failed.lock().expect("poisoned") = Some(e.to_string());
            }
        }
        changes.clear();
    };
    let mut changes = Vec::new();
    for job in batch {
        match job {
            Job::Persist(c) => changes.push(c),
            Job::Run(task) => {
                persist(&mut changes);
                // Dropped unrun after a failure: its caller hears why.
                if failed.lock().expect("poisoned").is_none() {
                    task(disk);
                }
            }
        }
    }
    persist(&mut changes);
}

impl SmWriter {
    pub fn new(disk: Arc<dyn SmDisk>) -> Self {
        let failed = Arc::new(Mutex::new(None));
        let worker = disk.blocking().then(|| {
            let (d, f) = (disk.clone(), failed.clone());
            let mut last = Instant::now();
            Worker::spawn("statenode-sm", QUEUE, move |batch| {
                // Changes alone wait for their turn (more queue meanwhile); a snapshot or an
                // install is waited for, so it goes at once.
                if !batch.iter().any(|j| matches!(j, Job::Run(_))) {
                    std::thread::sleep(COMMIT_EVERY.saturating_sub(last.elapsed()));
                }
                last = Instant::now();
                write_batch(d.as_ref(), &f, batch)
            })
        });
        Self { disk, worker, failed }
    }

    fn stopped(&self) -> io::Error {
        let why = self.failed.lock().expect("poisoned").clone();
        io::Error::other(why.unwrap_or_else(|| "the state machine writer stopped".into()))
    }

    async fn send(&self, worker: &Worker<Job>, job: Job) -> io::Result<()> {
        if self.failed.lock().expect("poisoned").is_some() {
            return Err(self.stopped());
        }
        worker.send(job).await.map_err(|_| self.stopped())
    }

    /// Queues an apply batch's changes (written inline without a worker).
    pub async fn persist(&self, changes: Changes) -> io::Result<()> {
        let Some(w) = &self.worker else {
            return self.disk.persist(&[changes]);
        };
        self.send(w, Job::Persist(changes)).await
    }

    /// Runs `f` on the disk after every change queued before it.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn SmDisk) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let Some(w) = &self.worker else {
            return f(self.disk.as_ref());
        };
        let (tx, rx) = oneshot::channel();
        self.send(w, Job::Run(Box::new(move |disk| drop(tx.send(f(disk)))))).await?;
        rx.await.map_err(|_| self.stopped())?
    }
}
