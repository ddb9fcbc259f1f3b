//! Where the state machine persists in disk mode: its latest snapshot (`snap_sm.rs`: `sm.snap`,
//! or memory a simulation keeps outside the node), or `sm.redb` in a data dir made before it.

use crate::kv::dedup::ClientWindow;
use crate::kv::{Entry, Hlc, SessionRecord, StateMachine};
use crate::raft::types::{LogId, SnapshotMeta, StoredMembership};
use bytes::Bytes;
use std::io;

/// Everything one apply batch changed.
#[derive(Clone)]
pub struct Changes {
    pub keys: Vec<(Bytes, Option<Entry>)>,
    pub clients: Vec<(u64, Option<ClientWindow>)>,
    pub sessions: Vec<(String, Option<SessionRecord>)>,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub last_version: Hlc,
    pub clock_ms: u64,
    pub revision: u64,
}

/// What a restart reads back.
pub struct Loaded {
    pub kv: StateMachine,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub snapshot: Option<(SnapshotMeta, Vec<u8>)>,
}

/// State-machine storage: every method returns once its effect is durable, except `persist`.
pub trait SmDisk: Send + Sync + 'static {
    /// The changes of consecutive apply batches, in order, as one atomic commit that may be
    /// lost in a crash until a later durable commit (the log still holds the entries, and a
    /// restart applies them again).
    fn persist(&self, batches: &[Changes]) -> io::Result<()>;
    /// Replaces the whole state with an installed snapshot and keeps the snapshot, in one
    /// durable step: a crash never leaves the state of one point with the snapshot of
    /// another (older than the log's purge point).
    fn install(&self, sm: &StateMachine, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()>;
    /// Keeps a snapshot this node built, unless a newer one is already kept (an install
    /// may finish while a build of an older state is still writing).
    fn save_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()>;
    fn load(&self) -> io::Result<Loaded>;
    /// Whether `persist` keeps anything: `false` for a disk that keeps only snapshots (the
    /// log after the snapshot is applied again at a restart), so no apply computes changes.
    fn keeps_applies(&self) -> bool {
        true
    }
    /// Whether calls block on real I/O (and so belong on a thread of their own).
    fn blocking(&self) -> bool {
        false
    }
}

/// Whether `meta` may replace the `kept` snapshot: it covers at least as much of the log.
pub fn is_newer(meta: &SnapshotMeta, kept: Option<&SnapshotMeta>) -> bool {
    kept.is_none_or(|k| meta.last_log_id >= k.last_log_id)
}
