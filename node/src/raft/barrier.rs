//! The read barrier: linearizable reads share ReadIndex rounds.
//!
//! A read that arrives while a round is in flight waits for the next round (the one in
//! flight may have confirmed leadership before the read's preceding write was
//! acknowledged); one round serves every read queued before it started.

use super::types::Raft;
use super::Fail;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

type RoundResult = Result<(), Fail>;

pub struct ReadBarrier {
    raft: Raft,
    timeout: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// A task is running rounds.
    running: bool,
    /// The round that will start next; every read that arrives joins it.
    next: Option<watch::Sender<Option<RoundResult>>>,
}

impl ReadBarrier {
    pub fn new(raft: Raft, timeout: Duration) -> Arc<Self> {
        Arc::new(Self { raft, timeout, state: Mutex::default() })
    }

    /// Returns once this node has applied everything committed before the call began,
    /// and leadership was confirmed by a quorum after it began.
    pub async fn wait(self: &Arc<Self>) -> RoundResult {
        let mut rx = {
            let mut s = self.state.lock().expect("poisoned");
            let rx = match &s.next {
                Some(tx) => tx.subscribe(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    s.next = Some(tx);
                    rx
                }
            };
            if !s.running {
                s.running = true;
                tokio::spawn(self.clone().run_rounds());
            }
            rx
        };
        loop {
            if let Some(r) = rx.borrow_and_update().clone() {
                return r;
            }
            if rx.changed().await.is_err() {
                return Err(Fail::unavailable("read barrier stopped"));
            }
        }
    }

    async fn run_rounds(self: Arc<Self>) {
        loop {
            let tx = {
                let mut s = self.state.lock().expect("poisoned");
                match s.next.take() {
                    Some(tx) => tx,
                    None => {
                        s.running = false;
                        return;
                    }
                }
            };
            let result = match tokio::time::timeout(self.timeout, self.raft.ensure_linearizable()).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(Fail::from_read(e)),
                Err(_) => Err(Fail::unavailable("read barrier timed out waiting for a quorum")),
            };
            tx.send_replace(Some(result));
        }
    }
}
