//! `RaftStateMachine` over the kv state machine, kept in memory and optionally in `sm.redb`.

use super::sm_disk::{is_newer, Changes, Loaded, SmDisk};
use super::sm_writer::SmWriter;
use crate::kv::{snapshot, CommandResult, Event, Outcome, StateMachine};
use crate::raft::synced::Synced;
use crate::raft::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::watch::EventHub;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use std::io::{self, Cursor};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard};
use std::time::Duration;
use tokio::sync::watch;

/// The applied state every reader on this node sees.
pub struct SmState {
    pub kv: StateMachine,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    snapshot: Option<(SnapshotMeta, Vec<u8>)>,
    /// Makes snapshot ids unique when two snapshots share a last log id.
    snapshot_seq: u64,
}

struct Shared {
    state: RwLock<SmState>,
    disk: Option<SmWriter>,
    /// Whether each apply batch's changes go to the disk (`SmDisk::keeps_applies`).
    persist_applies: bool,
    hub: Arc<EventHub>,
    /// The revision applied so far, for callers that must read their own write here.
    revision: watch::Sender<u64>,
    /// The log an entry must be on disk in before it is applied (`raft::synced::Synced`).
    log: OnceLock<Synced>,
}

/// The state machine store handed to openraft; clones share the state.
#[derive(Clone)]
pub struct SmStore {
    shared: Arc<Shared>,
}

fn sm_err(verb: ErrorVerb) -> impl Fn(io::Error) -> StorageError {
    move |e| StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::new(&e)).into()
}

impl SmStore {
    /// A store that keeps nothing on disk.
    pub fn memory(hub: Arc<EventHub>) -> Self {
        let loaded = Loaded {
            kv: StateMachine::default(),
            last_applied: None,
            membership: StoredMembership::default(),
            snapshot: None,
        };
        Self::from_loaded(loaded, None, hub)
    }

    /// A store backed by a disk (`sm.redb`), loading what a previous run persisted.
    pub fn disk(disk: Arc<dyn SmDisk>, hub: Arc<EventHub>) -> io::Result<Self> {
        let mut loaded = disk.load()?;
        // Applies become durable lazily, snapshots at once: when a crash lost applies that
        // the kept snapshot holds (it was built while they were being written), start from
        // the snapshot. The log after it is still there; openraft applies it again.
        if let Some((meta, data)) = &loaded.snapshot {
            if meta.last_log_id > loaded.last_applied {
                let kv = snapshot::decode(data, meta.last_log_id.map_or(0, |l| l.index)).map_err(io::Error::other)?;
                // The tables must not keep what the snapshot dropped (a later lazy crash
                // would bring it back): rewrite them from the snapshot.
                disk.install(&kv, meta, data)?;
                loaded.kv = kv;
                loaded.last_applied = meta.last_log_id;
                loaded.membership = meta.last_membership.clone();
            }
        }
        Ok(Self::from_loaded(loaded, Some(disk), hub))
    }

    fn from_loaded(l: Loaded, disk: Option<Arc<dyn SmDisk>>, hub: Arc<EventHub>) -> Self {
        hub.reset(l.kv.revision() + 1);
        let state = SmState {
            kv: l.kv,
            last_applied: l.last_applied,
            membership: l.membership,
            snapshot: l.snapshot,
            snapshot_seq: 0,
        };
        let persist_applies = disk.as_ref().is_some_and(|d| d.keeps_applies());
        let disk = disk.map(SmWriter::new);
        let revision = watch::Sender::new(state.kv.revision());
        let log = OnceLock::new();
        let shared = Shared { state: RwLock::new(state), disk, persist_applies, hub, revision, log };
        Self { shared: Arc::new(shared) }
    }

    /// Applies an entry only once `log` has it on disk (the first call counts).
    pub fn apply_after(&self, log: Synced) {
        let _ = self.shared.log.set(log);
    }

    /// Read access to the applied state.
    pub fn read(&self) -> RwLockReadGuard<'_, SmState> {
        self.shared.state.read().expect("poisoned")
    }

    /// Resolves once this node has applied `revision` (or at `within`: false).
    pub async fn wait_revision(&self, revision: u64, within: Duration) -> bool {
        let mut rx = self.shared.revision.subscribe();
        tokio::time::timeout(within, rx.wait_for(|r| *r >= revision)).await.is_ok_and(|r| r.is_ok())
    }

    /// Size of the snapshot this node holds (built or installed; 0: none yet).
    pub fn snapshot_bytes(&self) -> u64 {
        self.read().snapshot.as_ref().map_or(0, |(_, d)| d.len() as u64)
    }

    /// True when no other clone (openraft's worker, a snapshot builder) is alive.
    pub fn only_owner(&self) -> bool {
        Arc::strong_count(&self.shared) == 1
    }

    pub fn hub(&self) -> &Arc<EventHub> {
        &self.shared.hub
    }

    /// Applies a batch in memory; returns results, events and what disk mode must write.
    fn apply_batch(&self, entries: Vec<Entry>) -> (Vec<CommandResult>, Applied, Option<Changes>) {
        let mut st = self.shared.state.write().expect("poisoned");
        let mut results = Vec::with_capacity(entries.len());
        let mut events = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            st.last_applied = Some(entry.log_id);
            let result = match entry.payload {
                EntryPayload::Normal(cmd) => {
                    let (r, ev) = st.kv.apply(index, &cmd);
                    events.extend(ev);
                    r
                }
                EntryPayload::Membership(m) => {
                    st.membership = StoredMembership::new(Some(entry.log_id), m);
                    CommandResult { revision: st.kv.skip(index), outcome: Outcome::None }
                }
                EntryPayload::Blank => CommandResult { revision: st.kv.skip(index), outcome: Outcome::None },
            };
            results.push(result);
        }
        self.shared.revision.send_replace(st.kv.revision());
        let dirty = st.kv.take_dirty();
        let sessions: Vec<String> = dirty.sessions.iter().cloned().collect();
        let changes = self.shared.persist_applies.then(|| Changes {
            keys: dirty
                .keys
                .into_iter()
                .map(|k| {
                    let e = st.kv.raw_entry(&k).cloned();
                    (k, e)
                })
                .collect(),
            clients: dirty.clients.into_iter().map(|id| (id, st.kv.client_window(id).cloned())).collect(),
            sessions: sessions.iter().map(|c| (c.clone(), st.kv.session(c).cloned())).collect(),
            last_applied: st.last_applied,
            membership: st.membership.clone(),
            last_version: st.kv.last_version(),
            clock_ms: st.kv.clock_ms(),
            revision: st.kv.revision(),
        });
        (results, Applied { events, sessions }, changes)
    }
}

/// What an apply batch tells the watchers and the broker on this node.
struct Applied {
    events: Vec<Event>,
    /// Client ids whose MQTT session changed.
    sessions: Vec<String>,
}

impl RaftSnapshotBuilder<TypeConfig> for SmStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        // Under the lock only what is cheap: a copy of the state sharing its values. Encoding
        // it there held every apply and read for 70–145 ms at 10,000 keys (a p99 tail).
        let (state, meta) = {
            let mut st = self.shared.state.write().expect("poisoned");
            st.snapshot_seq += 1;
            let snapshot_id = match st.last_applied {
                Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, st.snapshot_seq),
                None => format!("0-0-{}", st.snapshot_seq),
            };
            let meta =
                SnapshotMeta { last_log_id: st.last_applied, last_membership: st.membership.clone(), snapshot_id };
            (snapshot::Capture::of(&st.kv), meta)
        };
        let data = match &self.shared.disk {
            // Encoded on the disk's thread: 12 MB took 100 ms here, too long to hold a
            // runtime worker.
            Some(disk) => {
                let m = meta.clone();
                let keep = move |disk: &dyn SmDisk| {
                    let data = state.encode();
                    disk.save_snapshot(&m, &data).map(|()| data)
                };
                disk.run(keep).await.map_err(sm_err(ErrorVerb::Write))?
            }
            None => state.encode(),
        };
        let mut st = self.shared.state.write().expect("poisoned");
        if is_newer(&meta, st.snapshot.as_ref().map(|(m, _)| m)) {
            st.snapshot = Some((meta.clone(), data.clone()));
        }
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for SmStore {
    type SnapshotBuilder = SmStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let st = self.read();
        Ok((st.last_applied, st.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        // The leader may know an entry committed before its own copy is on disk (ADR 0012):
        // applying it answers its client, so that waits for the copy.
        if let (Some(last), Some(log)) = (entries.last(), self.shared.log.get()) {
            log.wait(last.log_id.index).await.map_err(sm_err(ErrorVerb::Write))?;
        }
        let (results, applied, changes) = self.apply_batch(entries);
        if let (Some(changes), Some(disk)) = (changes, &self.shared.disk) {
            disk.persist(changes).await.map_err(sm_err(ErrorVerb::Write))?;
        }
        self.shared.hub.publish(applied.events);
        self.shared.hub.publish_sessions(applied.sessions);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, data: Box<Cursor<Vec<u8>>>) -> Result<(), StorageError> {
        let data = data.into_inner();
        let kv = snapshot::decode(&data, meta.last_log_id.map_or(0, |l| l.index))
            .map_err(|e| sm_err(ErrorVerb::Read)(io::Error::other(e)))?;
        if let Some(disk) = &self.shared.disk {
            let (m, d) = (meta.clone(), data.clone());
            disk.run(move |disk| {
                disk.install(&kv, &m, &d)?;
                Ok(kv)
            })
            .await
            .map_err(sm_err(ErrorVerb::Write))
            .map(|kv| self.install_in_memory(meta, kv, data))?;
        } else {
            self.install_in_memory(meta, kv, data);
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let st = self.read();
        Ok(st
            .snapshot
            .as_ref()
            .map(|(meta, data)| Snapshot { meta: meta.clone(), snapshot: Box::new(Cursor::new(data.clone())) }))
    }
}

impl SmStore {
    fn install_in_memory(&self, meta: &SnapshotMeta, kv: StateMachine, data: Vec<u8>) {
        let mut st = self.shared.state.write().expect("poisoned");
        st.kv = kv;
        st.last_applied = meta.last_log_id;
        st.membership = meta.last_membership.clone();
        st.snapshot = Some((meta.clone(), data));
        self.shared.hub.reset(st.kv.revision() + 1);
        self.shared.revision.send_replace(st.kv.revision());
    }
}
