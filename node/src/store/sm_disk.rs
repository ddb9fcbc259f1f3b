//! Where the state machine persists in disk mode: `sm.redb`, or an in-memory twin that a
//! simulation keeps outside the node so it survives a crash like a disk would.

use crate::kv::dedup::{ClientWindow, DedupTable};
use crate::kv::{Entry, Hlc, SessionRecord, StateMachine};
use crate::raft::types::{LogId, SnapshotMeta, StoredMembership};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;

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
    /// Whether calls block on real I/O (and so belong on a thread of their own).
    fn blocking(&self) -> bool {
        false
    }
    /// A crash: of the `persist` calls not followed by a durable step, keep the first
    /// `keep` (a fraction) and forget the rest. Only the simulation's twin models it (a real
    /// disk loses them by itself: all of them in a power loss, the ones its writer had not
    /// written yet in a process crash).
    fn lose_unsynced(&self, _keep: f64) {}
}

/// Whether `meta` may replace the `kept` snapshot: it covers at least as much of the log.
pub fn is_newer(meta: &SnapshotMeta, kept: Option<&SnapshotMeta>) -> bool {
    kept.is_none_or(|k| meta.last_log_id >= k.last_log_id)
}

/// The in-memory twin of `sm.redb`. Like redb with `Durability::None` applies, `persist`
/// may be lost in a crash (`lose_unsynced`) until a durable step — `install` or
/// `save_snapshot`, which make everything before them durable.
#[derive(Default)]
pub struct MemSmDisk {
    inner: Mutex<MemSm>,
    /// The state at the last durable step, and every persist since, in order: a crash
    /// keeps the first few.
    durable: Mutex<(MemSm, Vec<Changes>)>,
}

#[derive(Clone, Default)]
struct MemSm {
    keys: BTreeMap<Bytes, Entry>,
    clients: BTreeMap<u64, ClientWindow>,
    sessions: BTreeMap<String, SessionRecord>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    last_version: Hlc,
    clock_ms: u64,
    revision: u64,
    snapshot: Option<(SnapshotMeta, Vec<u8>)>,
}

impl MemSm {
    fn apply(&mut self, c: &Changes) {
        let g = self;

        for (k, e) in &c.keys {
            match e {
                Some(e) => g.keys.insert(k.clone(), e.clone()),
                None => g.keys.remove(k),
            };
        }
        for (id, w) in &c.clients {
            match w {
                Some(w) => g.clients.insert(*id, w.clone()),
                None => g.clients.remove(id),
            };
        }
        for (client, r) in &c.sessions {
            match r {
                Some(r) => g.sessions.insert(client.clone(), r.clone()),
                None => g.sessions.remove(client),
            };
        }
        g.last_applied = c.last_applied;
        g.membership = c.membership.clone();
        g.last_version = c.last_version;
        g.clock_ms = c.clock_ms;
        g.revision = c.revision;
    }
}

impl MemSmDisk {
    /// Everything in `g` is now durable.
    fn durable_step(&self, g: &MemSm) {
        *self.durable.lock().expect("poisoned") = (g.clone(), Vec::new());
    }
}

impl SmDisk for MemSmDisk {
    fn persist(&self, batches: &[Changes]) -> io::Result<()> {
        let mut g = self.inner.lock().expect("poisoned");
        let mut since = self.durable.lock().expect("poisoned");
        for c in batches {
            g.apply(c);
            since.1.push(c.clone());
        }
        Ok(())
    }

    fn install(&self, sm: &StateMachine, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        let mut g = self.inner.lock().expect("poisoned");
        g.keys = sm.entries().map(|(k, e)| (k.clone(), e.clone())).collect();
        g.clients = sm.dedup().windows().map(|(id, w)| (*id, w.clone())).collect();
        g.sessions = sm.sessions().map(|(c, r)| (c.clone(), r.clone())).collect();
        g.last_applied = meta.last_log_id;
        g.membership = meta.last_membership.clone();
        g.last_version = sm.last_version();
        g.clock_ms = sm.clock_ms();
        g.revision = sm.revision();
        g.snapshot = Some((meta.clone(), data.to_vec()));
        self.durable_step(&g);
        Ok(())
    }

    fn save_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        let mut g = self.inner.lock().expect("poisoned");
        if is_newer(meta, g.snapshot.as_ref().map(|(m, _)| m)) {
            g.snapshot = Some((meta.clone(), data.to_vec()));
        }
        self.durable_step(&g);
        Ok(())
    }

    fn lose_unsynced(&self, keep: f64) {
        let mut g = self.inner.lock().expect("poisoned");
        let (durable, since) = &*self.durable.lock().expect("poisoned");
        *g = durable.clone();
        let kept = (since.len() as f64 * keep.clamp(0.0, 1.0)) as usize;
        since[..kept].iter().for_each(|c| g.apply(c));
    }

    fn load(&self) -> io::Result<Loaded> {
        let g = self.inner.lock().expect("poisoned");
        let mut dedup = DedupTable::default();
        for (id, w) in &g.clients {
            dedup.insert_window(*id, w.clone());
        }
        let revision = g.revision.max(g.last_applied.map_or(0, |l| l.index));
        let kv =
            StateMachine::from_parts(g.keys.clone(), g.last_version, g.clock_ms, revision, dedup, g.sessions.clone());
        Ok(Loaded { kv, last_applied: g.last_applied, membership: g.membership.clone(), snapshot: g.snapshot.clone() })
    }
}
