//! `RaftLogStorage` over a `LogBackend` (segment files, redb or memory).
//!
//! With a disk (a blocking backend), one writer thread owns the log's writes and commits
//! whatever queued up while it was fsyncing as one transaction: appends return at once and
//! report "flushed" after that batch's fsync, so concurrent client writes share one fsync
//! (group commit). Appended entries not yet on disk are read from memory; truncate, purge
//! and vote wait for their batch.
//!
//! The leader's own entries are the exception (ADR 0012): openraft 0.9 sends nothing to
//! the followers until the leader's append reports flushed, so the leader's append reports
//! it at once and its fsync overlaps with replication, as etcd's does. The leader then counts
//! itself toward the quorum before its copy is on disk, which is safe only if nothing acts on
//! a commit before that copy is: [`Synced`] is what is on disk, and the state machine applies
//! (so answers clients) and the network tells followers a commit index only once it covers them.

use super::backend::{LogBackend, LogMeta, LogOp};
use super::worker::Worker;
use crate::raft::synced::{OnDisk, Synced};
use crate::raft::types::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, watch};

/// The log store handed to openraft; clones share the backend and the writer (log readers).
#[derive(Clone)]
pub struct LogStore {
    backend: Arc<dyn LogBackend>,
    /// This node: entries of its own leadership are the leader's (see the module doc).
    me: NodeId,
    /// `None` for a log without real I/O: every call applies at once, inline.
    writer: Option<Arc<Writer>>,
}

fn stopped() -> io::Error {
    io::Error::other("the log writer stopped")
}

/// Most jobs one batch takes: bounds a transaction's size and a caller's wait.
const MAX_BATCH: usize = 1024;

/// The writer thread, and the appended entries it has not flushed yet.
struct Writer {
    worker: Worker<Job>,
    pending: Arc<Mutex<Pending>>,
    /// The last committed log id not yet written (encoded): it rides with the next batch.
    committed: Arc<Mutex<Option<Vec<u8>>>>,
    /// The last vote this node saved: whether it leads, and in which term.
    vote: Mutex<Option<Vote>>,
    on_disk: watch::Sender<OnDisk>,
}

#[derive(Default)]
struct Pending {
    next_seq: u64,
    /// index → (the append's sequence number, entry).
    entries: BTreeMap<u64, (u64, Entry)>,
}

struct Job {
    op: LogOp,
    done: Done,
}

/// Whom to tell once a job's batch is on disk.
enum Done {
    /// openraft's flush callback (`None`: told already, the leader's own entries), and the
    /// pending entries (index, sequence) it wrote.
    Flushed(Option<LogFlushed<TypeConfig>>, Vec<(u64, u64)>),
    Reply(oneshot::Sender<io::Result<()>>),
}

/// An `io::Error` for every waiter of a failed batch (it is not `Clone`).
fn copy_err(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

/// The last index on disk once `ops` are written after a log that ended at `upto`.
fn last_after(mut upto: u64, ops: &[LogOp]) -> u64 {
    for op in ops {
        match op {
            LogOp::Append(entries) => upto = entries.last().map_or(upto, |e| e.log_id.index),
            LogOp::Truncate(index) => upto = upto.min(index.saturating_sub(1)),
            LogOp::Purge(..) | LogOp::SetMeta(..) => {}
        }
    }
    upto
}

/// Writes one batch of jobs as one transaction, then tells whom it concerns.
fn write_batch(
    backend: &dyn LogBackend,
    pending: &Mutex<Pending>,
    committed: &Mutex<Option<Vec<u8>>>,
    on_disk: &watch::Sender<OnDisk>,
    batch: Vec<Job>,
) {
    let (mut ops, dones): (Vec<LogOp>, Vec<Done>) = batch.into_iter().map(|j| (j.op, j.done)).unzip();
    if let Some(bytes) = committed.lock().expect("poisoned").take() {
        ops.push(LogOp::SetMeta(LogMeta::Committed, bytes));
    }
    let upto = last_after(on_disk.borrow().upto, &ops);
    let result = backend.apply(ops);
    on_disk.send_modify(|d| match result {
        Ok(()) => d.upto = upto,
        Err(_) => d.failed = true,
    });
    if result.is_ok() {
        let mut p = pending.lock().expect("poisoned");
        for done in &dones {
            if let Done::Flushed(_, written) = done {
                for (index, seq) in written {
                    if p.entries.get(index).is_some_and(|(s, _)| s == seq) {
                        p.entries.remove(index);
                    }
                }
            }
        }
    }
    for done in dones {
        let r = result.as_ref().map(|_| ()).map_err(copy_err);
        match done {
            Done::Flushed(Some(callback), _) => callback.log_io_completed(r),
            Done::Flushed(None, _) => {}
            Done::Reply(tx) => drop(tx.send(r)),
        }
    }
}

fn err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: io::Error) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

fn log_err(verb: ErrorVerb) -> impl Fn(io::Error) -> StorageError {
    move |e| err(ErrorSubject::Logs, verb, e)
}

fn decode_meta<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
    bincode::deserialize(bytes).map_err(|e| log_err(ErrorVerb::Read)(io::Error::other(e)))
}

impl LogStore {
    /// The log of node `me` over `backend`.
    pub fn new(backend: Arc<dyn LogBackend>, me: NodeId) -> io::Result<Self> {
        let latency = backend.write_latency();
        let writer = if backend.blocking() || latency.is_some() {
            let pending = Arc::new(Mutex::new(Pending::default()));
            let committed = Arc::new(Mutex::new(None));
            let upto = backend.last()?.map_or(0, |l| l.index);
            let on_disk = watch::Sender::new(OnDisk { upto, failed: false });
            let (b, p, c, d) = (backend.clone(), pending.clone(), committed.clone(), on_disk.clone());
            let run = move |batch| write_batch(b.as_ref(), &p, &c, &d, batch);
            let worker = match latency {
                Some(latency) => Worker::spawn_task(MAX_BATCH, latency, run),
                None => Worker::spawn("statenode-log", MAX_BATCH, run),
            };
            Some(Arc::new(Writer { worker, pending, committed, vote: Mutex::new(None), on_disk }))
        } else {
            None
        };
        Ok(Self { backend, me, writer })
    }

    /// What waits for this log to be on disk.
    pub fn synced(&self) -> Synced {
        Synced::new(self.writer.as_ref().map(|w| w.on_disk.subscribe()))
    }

    /// Whether `entries` are this node's own as the leader of its current term: its last
    /// vote is its own, committed (it won the election), and they are of that term. Only one
    /// leader has a term; a follower's vote is for another node; entries of an earlier
    /// leadership of this node coming back from a new leader carry an older term.
    fn leads(&self, writer: &Writer, entries: &[Entry]) -> bool {
        let vote = writer.vote.lock().expect("poisoned");
        vote.is_some_and(|v| {
            let ours = v.is_committed() && v.leader_id().voted_for() == Some(self.me);
            ours && entries.iter().all(|e| e.log_id.leader_id.term == v.leader_id().get_term())
        })
    }

    async fn send(&self, writer: &Writer, op: LogOp, done: Done) -> io::Result<()> {
        writer.worker.send(Job { op, done }).await.map_err(|_| stopped())
    }

    /// Applies `op` and returns once it is on disk (after everything queued before it).
    async fn write(&self, op: LogOp) -> io::Result<()> {
        let Some(writer) = &self.writer else {
            return self.backend.apply(vec![op]);
        };
        let (tx, rx) = oneshot::channel();
        self.send(writer, op, Done::Reply(tx)).await?;
        rx.await.map_err(|_| stopped())?
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: LogMeta) -> Result<Option<T>, StorageError> {
        let bytes = self.backend.meta(key).map_err(log_err(ErrorVerb::Read))?;
        bytes.map(|b| decode_meta(&b)).transpose()
    }

    async fn write_meta<T: serde::Serialize>(&self, key: LogMeta, value: &T) -> io::Result<()> {
        let bytes = bincode::serialize(value).map_err(io::Error::other)?;
        self.write(LogOp::SetMeta(key, bytes)).await
    }
}

fn bounds(range: impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = bounds(range);
        // Pending entries first: one flushed meanwhile is on disk by the time it is read.
        let pending: Vec<Entry> = match &self.writer {
            Some(w) if start < end => {
                let p = w.pending.lock().expect("poisoned");
                p.entries.range(start..end).map(|(_, (_, e))| e.clone()).collect()
            }
            _ => Vec::new(),
        };
        let disk = self.backend.range(start, end).map_err(log_err(ErrorVerb::Read))?;
        if pending.is_empty() {
            return Ok(disk);
        }
        // A pending entry replaces the one on disk at its index (an append after a truncate).
        let mut all: BTreeMap<u64, Entry> = disk.into_iter().map(|e| (e.log_id.index, e)).collect();
        all.extend(pending.into_iter().map(|e| (e.log_id.index, e)));
        Ok(all.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_meta(LogMeta::LastPurged)?;
        let pending_last = self.writer.as_ref().and_then(|w| {
            let p = w.pending.lock().expect("poisoned");
            p.entries.last_key_value().map(|(_, (_, e))| e.log_id)
        });
        let last = match pending_last {
            Some(l) => Some(l),
            None => self.backend.last().map_err(log_err(ErrorVerb::Read))?,
        };
        Ok(LogState { last_purged_log_id, last_log_id: last.or(last_purged_log_id) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        if let Some(w) = &self.writer {
            *w.vote.lock().expect("poisoned") = Some(*vote);
        }
        self.write_meta(LogMeta::Vote, vote).await.map_err(|e| err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(LogMeta::Vote)
    }

    /// Not written by itself: it rides with the next batch that other writes make (a sync
    /// of its own for every commit index would double the fsyncs, one in the way of the next
    /// append). Losing it is safe (the committed index is learned again from the leader); it
    /// only lets a restarted node apply what it already knew was committed without waiting.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let bytes = bincode::serialize(&committed).map_err(|e| log_err(ErrorVerb::Write)(io::Error::other(e)))?;
        match &self.writer {
            Some(w) => *w.committed.lock().expect("poisoned") = Some(bytes),
            None => self
                .backend
                .apply(vec![LogOp::SetMeta(LogMeta::Committed, bytes)])
                .map_err(log_err(ErrorVerb::Write))?,
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let waiting = self.writer.as_ref().and_then(|w| w.committed.lock().expect("poisoned").clone());
        let committed: Option<Option<LogId>> = match waiting {
            Some(bytes) => Some(decode_meta(&bytes)?),
            None => self.read_meta(LogMeta::Committed)?,
        };
        Ok(committed.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(writer) = &self.writer else {
            let result = self.backend.apply(vec![LogOp::Append(entries)]);
            callback.log_io_completed(result.as_ref().map(|_| ()).map_err(copy_err));
            return result.map_err(log_err(ErrorVerb::Write));
        };
        // Readable from memory at once; openraft hears "flushed" after the batch's fsync, or
        // at once for the leader's own entries (see the module doc).
        let leads = self.leads(writer, &entries);
        let written = {
            let mut p = writer.pending.lock().expect("poisoned");
            p.next_seq += 1;
            let seq = p.next_seq;
            for e in &entries {
                p.entries.insert(e.log_id.index, (seq, e.clone()));
            }
            entries.iter().map(|e| (e.log_id.index, seq)).collect()
        };
        let (told, callback) = if leads { (Some(callback), None) } else { (None, Some(callback)) };
        let done = Done::Flushed(callback, written);
        self.send(writer, LogOp::Append(entries), done).await.map_err(log_err(ErrorVerb::Write))?;
        if let Some(callback) = told {
            callback.log_io_completed(Ok(()));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        if let Some(w) = &self.writer {
            w.pending.lock().expect("poisoned").entries.split_off(&log_id.index);
        }
        self.write(LogOp::Truncate(log_id.index)).await.map_err(log_err(ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let encoded = bincode::serialize(&log_id).map_err(|e| log_err(ErrorVerb::Delete)(io::Error::other(e)))?;
        self.write(LogOp::Purge(log_id, encoded)).await.map_err(log_err(ErrorVerb::Delete))
    }
}
