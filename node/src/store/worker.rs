//! A thread that owns a disk's writes: jobs are queued in order (a bounded queue: senders
//! wait for room) and taken in batches — whatever queued up while the last batch was being
//! written — so one commit serves many callers. Dropping the worker lets the thread finish
//! its queue and waits for it, so the file is free to open again at once.

use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;

pub(super) struct Worker<J> {
    /// `None` once dropped: the thread drains its queue and ends.
    jobs: Mutex<Option<mpsc::Sender<J>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl<J: Send + 'static> Worker<J> {
    /// Starts thread `name`, which hands `run` batches of at most `capacity` jobs.
    pub(super) fn spawn(name: &str, capacity: usize, mut run: impl FnMut(Vec<J>) + Send + 'static) -> Self {
        let (tx, mut rx) = mpsc::channel(capacity);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    run(batch_from(first, &mut rx, capacity));
                }
            })
            .unwrap_or_else(|e| panic!("spawn the {name} thread: {e}"));
        Self { jobs: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)) }
    }

    /// The same on a task of the current runtime, each batch taking `latency` before it is
    /// written: a disk with write latency in the simulation, whose crash (the runtime gone)
    /// loses what was not written.
    pub(super) fn spawn_task(capacity: usize, latency: Duration, mut run: impl FnMut(Vec<J>) + Send + 'static) -> Self {
        let (tx, mut rx) = mpsc::channel(capacity);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let batch = batch_from(first, &mut rx, capacity);
                tokio::time::sleep(latency).await;
                run(batch);
            }
        });
        Self { jobs: Mutex::new(Some(tx)), thread: Mutex::new(None) }
    }

    /// Queues `job`; `Err` once the thread is gone.
    pub(super) async fn send(&self, job: J) -> Result<(), ()> {
        let tx = self.jobs.lock().expect("poisoned").clone().ok_or(())?;
        tx.send(job).await.map_err(drop)
    }
}

/// `first` and whatever else is queued, up to `capacity` jobs.
fn batch_from<J>(first: J, rx: &mut mpsc::Receiver<J>, capacity: usize) -> Vec<J> {
    let mut batch = vec![first];
    while batch.len() < capacity {
        match rx.try_recv() {
            Ok(j) => batch.push(j),
            Err(_) => break,
        }
    }
    batch
}

impl<J> Drop for Worker<J> {
    fn drop(&mut self) {
        self.jobs.lock().expect("poisoned").take();
        if let Some(t) = self.thread.lock().expect("poisoned").take() {
            let _ = t.join();
        }
    }
}
