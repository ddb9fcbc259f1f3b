//! Group commit before the log: client commands that arrive while earlier proposals are in
//! flight are proposed together, as one log entry (`Op::Group`), and each caller gets its
//! own command's result.
//!
//! openraft 0.9's core appends a client write and waits for that append's fsync before it
//! takes the next one, so a leader proposing one entry per write makes one fsync per write,
//! in series. A group costs one entry, one fsync on each node and one replication round,
//! whatever its size. A command that finds a free slot goes alone at once, proposed from its
//! caller's task (no added latency or hand-off at low load); the state machine gives each
//! command of a group its own revision.

use super::types::Raft;
use super::Fail;
use crate::error::Error;
use crate::kv::{Command, CommandResult, Op, Outcome};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Proposals in flight at once. Three overlapped one group's append (which openraft 0.9
/// awaited until its fsync) with the next group's replication; since the leader's append
/// returns at once (ADR 0012), openraft pipelines the entries itself, and one proposal at a
/// time makes the next group as large as what arrived during a whole commit round. Measured
/// on the three-node disk cluster of `tests/bench/vs_etcd.py` (2-core VM, 6 s runs): c=64
/// 10,300 puts/s, p99 11–12 ms with one; 9,700, p99 11–14 ms with two; 8,800, p99 46–65 ms
/// with three; c=16 4,400 against 3,500–3,800. At c=1 it changes nothing.
const IN_FLIGHT: usize = 1;
/// Most commands in one group.
const MAX_GROUP: usize = 512;
/// Commands waiting for a slot; senders wait for room beyond it.
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<CommandResult, Fail>>;

pub(super) struct Proposer {
    tx: mpsc::Sender<(Command, Reply)>,
    raft: Raft,
    slots: Arc<Semaphore>,
}

impl Proposer {
    /// Starts the proposing task; a group holds at most `max_bytes` of commands (one entry
    /// must fit the peer message bound as a single largest request does).
    pub(super) fn start(raft: Raft, timeout: Duration, max_bytes: usize) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        tokio::spawn(run(raft.clone(), rx, slots.clone(), timeout, max_bytes));
        Self { tx, raft, slots }
    }

    pub(super) async fn write(&self, cmd: Command, timeout: Duration) -> Result<CommandResult, Fail> {
        // A free slot means no proposal is in flight and none waits (the semaphore is fair):
        // the command goes alone at once, from the caller's task, without two hand-offs.
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            let r = propose_alone(&self.raft, cmd, timeout).await;
            drop(slot);
            return r;
        }
        let (reply, rx) = oneshot::channel();
        self.tx.send((cmd, reply)).await.map_err(|_| Fail::unavailable("raft stopped"))?;
        // The proposal has its own timeout; this one only bounds a wait for a slot.
        match tokio::time::timeout(timeout * 2, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Fail::unavailable("raft stopped")),
            Err(_) => Err(Error::Timeout("write not committed in time; it may still apply".into()).into()),
        }
    }
}

async fn run(
    raft: Raft,
    mut rx: mpsc::Receiver<(Command, Reply)>,
    slots: Arc<Semaphore>,
    timeout: Duration,
    max_bytes: usize,
) {
    // A command that did not fit the last group starts the next.
    let mut carry = None;
    loop {
        let first = match carry.take() {
            Some(c) => c,
            None => match rx.recv().await {
                Some(c) => c,
                None => return,
            },
        };
        // Whatever queues while this waits for the slot joins the group.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut bytes = first.0.approx_bytes();
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            let Ok(next) = rx.try_recv() else { break };
            let size = next.0.approx_bytes();
            if bytes + size > max_bytes {
                carry = Some(next);
                break;
            }
            bytes += size;
            group.push(next);
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            propose(&raft, group, timeout).await;
            drop(slot);
        });
    }
}

/// Proposes one command as an entry of its own.
async fn propose_alone(raft: &Raft, cmd: Command, timeout: Duration) -> Result<CommandResult, Fail> {
    crate::metrics::proposed(1);
    write(raft, cmd, timeout).await
}

async fn propose(raft: &Raft, mut group: Vec<(Command, Reply)>, timeout: Duration) {
    if group.len() == 1 {
        let (cmd, reply) = group.pop().expect("one");
        let _ = reply.send(propose_alone(raft, cmd, timeout).await);
        return;
    }
    crate::metrics::proposed(group.len());
    let (cmds, replies): (Vec<Command>, Vec<Reply>) = group.into_iter().unzip();
    let now_ms = cmds.iter().map(|c| c.now_ms).max().unwrap_or(0);
    let n = cmds.len();
    match write(raft, Command { client: None, now_ms, op: Op::Group(cmds) }, timeout).await {
        Ok(CommandResult { outcome: Outcome::Group(results), .. }) if results.len() == n => {
            for (reply, r) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(r));
            }
        }
        Ok(other) => {
            let e = Fail::Err(Error::internal(format!("a group of {n} commands answered {other:?}")));
            replies.into_iter().for_each(|r| drop(r.send(Err(e.clone()))));
        }
        Err(e) => replies.into_iter().for_each(|r| drop(r.send(Err(e.clone())))),
    }
}

async fn write(raft: &Raft, cmd: Command, timeout: Duration) -> Result<CommandResult, Fail> {
    match tokio::time::timeout(timeout, raft.client_write(cmd)).await {
        Ok(Ok(resp)) => Ok(resp.data),
        Ok(Err(e)) => Err(Fail::from_write(e)),
        Err(_) => Err(Error::Timeout("write not committed in time; it may still apply".into()).into()),
    }
}
