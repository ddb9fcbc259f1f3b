//! The state machine's disk writes, behind the apply path.
//!
//! With a disk doing real I/O, one thread owns the writes in order: an apply batch's changes
//! are queued and the apply returns (the write is not durable anyway: the log is), and what
//! queued up while the thread was busy goes into one commit; snapshots and installs wait for
//! their turn, so a durable step always comes after the changes applied before it.

use super::sm_disk::{Changes, SmDisk};
use std::io;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Apply batches queued at most; an apply waits for room beyond that (back-pressure).
const QUEUE: usize = 64;

type Task = Box<dyn FnOnce(&dyn SmDisk) + Send>;

enum Job {
    Persist(Changes),
    Run(Task),
}

pub struct SmWriter {
    disk: Arc<dyn SmDisk>,
    /// `None` for a disk without real I/O (the simulation's): every call runs inline.
    worker: Option<Worker>,
}

struct Worker {
    /// `None` once dropped: the thread drains its queue and ends.
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Why queued changes could not be written: every later call fails with it (the tables
    /// would miss changes, so nothing durable may be built on them).
    failed: Arc<Mutex<Option<String>>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.jobs.lock().expect("poisoned").take();
        if let Some(t) = self.thread.lock().expect("poisoned").take() {
            let _ = t.join();
        }
    }
}

fn run_worker(disk: Arc<dyn SmDisk>, mut jobs: mpsc::Receiver<Job>, failed: Arc<Mutex<Option<String>>>) {
    let persist = |batches: &mut Vec<Changes>| {
        if batches.is_empty() || failed.lock().expect("poisoned").is_some() {
            return batches.clear();
        }
        if let Err(e) = disk.persist(batches) {
            tracing::error!(error = %e, "state machine write failed; the node stops writing its state");
            *failed.lock().expect("poisoned") = Some(e.to_string());
        }
        batches.clear();
    };
    let mut batches = Vec::new();
    while let Some(first) = jobs.blocking_recv() {
        let mut next = Some(first);
        while let Some(job) = next.take().or_else(|| jobs.try_recv().ok()) {
            match job {
                Job::Persist(c) => batches.push(c),
                Job::Run(task) => {
                    persist(&mut batches);
                    // Dropped unrun after a failure: its caller hears why.
                    if failed.lock().expect("poisoned").is_none() {
                        task(disk.as_ref());
                    }
                }
            }
            if batches.len() >= QUEUE {
                persist(&mut batches);
            }
        }
        persist(&mut batches);
    }
}

impl SmWriter {
    pub fn new(disk: Arc<dyn SmDisk>) -> Self {
        let worker = disk.blocking().then(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let failed = Arc::new(Mutex::new(None));
            let (d, f) = (disk.clone(), failed.clone());
            let thread = std::thread::Builder::new()
                .name("statenode-sm".into())
                .spawn(move || run_worker(d, rx, f))
                .expect("spawn the state machine writer thread");
            Worker { jobs: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)), failed }
        });
        Self { disk, worker }
    }

    fn stopped(w: &Worker) -> io::Error {
        let why = w.failed.lock().expect("poisoned").clone();
        io::Error::other(why.unwrap_or_else(|| "the state machine writer stopped".into()))
    }

    fn sender(w: &Worker) -> io::Result<mpsc::Sender<Job>> {
        if w.failed.lock().expect("poisoned").is_some() {
            return Err(Self::stopped(w));
        }
        w.jobs.lock().expect("poisoned").clone().ok_or_else(|| Self::stopped(w))
    }

    /// Queues an apply batch's changes (written inline without a worker).
    pub async fn persist(&self, changes: Changes) -> io::Result<()> {
        let Some(w) = &self.worker else {
            return self.disk.persist(&[changes]);
        };
        Self::sender(w)?.send(Job::Persist(changes)).await.map_err(|_| Self::stopped(w))
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
        let task: Task = Box::new(move |disk| drop(tx.send(f(disk))));
        Self::sender(w)?.send(Job::Run(task)).await.map_err(|_| Self::stopped(w))?;
        rx.await.map_err(|_| Self::stopped(w))?
    }
}
