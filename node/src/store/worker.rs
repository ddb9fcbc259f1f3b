//! A thread that owns a disk's writes: jobs are queued in order (a bounded queue: senders
//! wait for room) and taken in batches — whatever queued up while the last batch was being
//! written — so one commit serves many callers. Dropping the worker lets the thread finish
//! its queue and waits for it, so the file is free to open again at once.

use std::sync::Mutex;
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
                    let mut batch = vec![first];
                    while batch.len() < capacity {
                        match rx.try_recv() {
                            Ok(j) => batch.push(j),
                            Err(_) => break,
                        }
                    }
                    run(batch);
                }
            })
            .unwrap_or_else(|e| panic!("spawn the {name} thread: {e}"));
        Self { jobs: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)) }
    }

    /// Queues `job`; `Err` once the thread is gone.
    pub(super) async fn send(&self, job: J) -> Result<(), ()> {
        let tx = self.jobs.lock().expect("poisoned").clone().ok_or(())?;
        tx.send(job).await.map_err(drop)
    }
}

impl<J> Drop for Worker<J> {
    fn drop(&mut self) {
        self.jobs.lock().expect("poisoned").take();
        if let Some(t) = self.thread.lock().expect("poisoned").take() {
            let _ = t.join();
        }
    }
}
