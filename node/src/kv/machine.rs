//! The deterministic key/value state machine: no I/O, no clock, no randomness.

use super::command::*;
use super::dedup::{ClientWindow, DedupTable, Seen};
use super::event::{Event, EventKind};
use super::hlc::Hlc;
use super::session::{SessionOp, SessionRecord, SessionResult, MAX_SESSIONS};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

/// One key's stored state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub value: Bytes,
    /// Revision of the last change (the Dapr ETag).
    pub revision: u64,
    pub create_revision: u64,
    pub version: Hlc,
    pub expires_at_ms: Option<u64>,
    /// AIO fencing token protecting the key, once a write set one.
    pub fencing: Option<Hlc>,
}

impl Entry {
    pub fn meta(&self) -> Meta {
        Meta {
            revision: self.revision,
            create_revision: self.create_revision,
            version: self.version,
            expires_at_ms: self.expires_at_ms,
        }
    }

    pub fn is_live(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_none_or(|t| t > now_ms)
    }
}

/// What changed since the store last persisted, so disk mode writes only that.
#[derive(Debug, Default)]
pub struct Dirty {
    pub keys: BTreeSet<Bytes>,
    pub clients: BTreeSet<u64>,
    pub sessions: BTreeSet<String>,
}

/// Keys, versions and the dedup table: everything the replicas agree on.
#[derive(Debug, Default)]
pub struct StateMachine {
    keys: BTreeMap<Bytes, Entry>,
    /// `(expires_at_ms, key)` for every key with a TTL, soonest first.
    expiry: BTreeSet<(u64, Bytes)>,
    /// The last version issued: new versions always exceed it.
    last_version: Hlc,
    /// The highest leader clock an applied command carried. Time in the state machine never
    /// goes back: commands apply at `max(their clock, this)`, and reads never judge TTLs
    /// below it, whatever the serving node's clock says (a failover to a node whose clock
    /// is behind must not bring back a key that already expired).
    clock_ms: u64,
    /// The last revision a command took. Each command takes the next one, and never one
    /// below its entry's log index (so a log without groups has revision = index).
    revision: u64,
    dedup: DedupTable,
    /// MQTT sessions by client id (`session.rs`).
    sessions: BTreeMap<String, SessionRecord>,
    /// `(ends_at_ms, client)` for every detached session, soonest first.
    session_ends: BTreeSet<(u64, String)>,
    dirty: Dirty,
}

impl StateMachine {
    /// Applies the command of the entry at log index `index`: a group's commands one by
    /// one, each with a revision of its own.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> (CommandResult, Vec<Event>) {
        let Op::Group(cmds) = &cmd.op else {
            return self.apply_one(index, cmd);
        };
        let mut events = Vec::new();
        let results = cmds
            .iter()
            .map(|c| {
                let (r, ev) = self.apply_one(index, c);
                events.extend(ev);
                r
            })
            .collect();
        self.revision = self.revision.max(index);
        (CommandResult { revision: self.revision, outcome: Outcome::Group(results) }, events)
    }

    /// An entry with nothing for the key space (blank, membership) takes a revision too.
    pub fn skip(&mut self, index: u64) -> u64 {
        self.next_revision(index)
    }

    fn next_revision(&mut self, index: u64) -> u64 {
        self.revision = (self.revision + 1).max(index);
        self.revision
    }

    /// The last revision taken: every change so far has one at or below it.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    fn apply_one(&mut self, index: u64, cmd: &Command) -> (CommandResult, Vec<Event>) {
        let revision = self.next_revision(index);
        let mut events = Vec::new();
        self.clock_ms = self.clock_ms.max(cmd.now_ms);
        let now_ms = self.clock_ms;
        if let Some(client) = cmd.client {
            match self.dedup.check(client, now_ms) {
                Seen::Applied(r) => return (r.clone(), events),
                Seen::Forgotten => {
                    let outcome = Outcome::Op(OpResult::Rejected(Rejection::DuplicateUnknown));
                    return (CommandResult { revision, outcome }, events);
                }
                Seen::New => {}
            }
        }
        let mut cx = Apply { sm: self, revision, now_ms, events: &mut events };
        let outcome = cx.op(&cmd.op);
        let result = CommandResult { revision, outcome };
        if let Some(client) = cmd.client {
            let evicted = self.dedup.record(client, result.clone(), now_ms);
            self.dirty.clients.extend(evicted);
            self.dirty.clients.insert(client.client_id);
        }
        (result, events)
    }

    /// The live entry for `key` at `now_ms`.
    pub fn get(&self, key: &[u8], now_ms: u64) -> Option<&Entry> {
        let now_ms = now_ms.max(self.clock_ms);
        self.keys.get(key).filter(|e| e.is_live(now_ms))
    }

    /// Up to `limit` live entries under `prefix`, strictly after `after`.
    pub fn list(&self, prefix: &[u8], after: &[u8], limit: usize, now_ms: u64) -> Vec<(Bytes, Entry)> {
        let now_ms = now_ms.max(self.clock_ms);
        let start = if after.is_empty() || after < prefix {
            Bound::Included(Bytes::copy_from_slice(prefix))
        } else {
            Bound::Excluded(Bytes::copy_from_slice(after))
        };
        self.keys
            .range((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, e)| e.is_live(now_ms))
            .take(limit)
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    /// The soonest expiry time of any key or session, for the leader's reaper.
    pub fn next_expiry(&self) -> Option<u64> {
        let key = self.expiry.first().map(|(t, _)| *t);
        let session = self.session_ends.first().map(|(t, _)| *t);
        key.into_iter().chain(session).min()
    }

    pub fn session(&self, client: &str) -> Option<&SessionRecord> {
        self.sessions.get(client)
    }

    pub fn sessions(&self) -> impl Iterator<Item = (&String, &SessionRecord)> {
        self.sessions.iter()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn last_version(&self) -> Hlc {
        self.last_version
    }

    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    pub fn dedup(&self) -> &DedupTable {
        &self.dedup
    }

    /// Takes the set of keys and clients changed since the last call.
    pub fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.dirty)
    }

    pub fn raw_entry(&self, key: &[u8]) -> Option<&Entry> {
        self.keys.get(key)
    }

    pub fn client_window(&self, client_id: u64) -> Option<&ClientWindow> {
        self.dedup.window_of(client_id)
    }

    /// Rebuilds a state machine from stored parts (disk or snapshot).
    pub fn from_parts(
        keys: impl IntoIterator<Item = (Bytes, Entry)>,
        last_version: Hlc,
        clock_ms: u64,
        revision: u64,
        mut dedup: DedupTable,
        sessions: impl IntoIterator<Item = (String, SessionRecord)>,
    ) -> Self {
        dedup.index_own();
        let keys: BTreeMap<Bytes, Entry> = keys.into_iter().collect();
        let expiry = keys.iter().filter_map(|(k, e)| e.expires_at_ms.map(|t| (t, k.clone()))).collect();
        let sessions: BTreeMap<String, SessionRecord> = sessions.into_iter().collect();
        let session_ends = sessions.iter().filter_map(|(c, r)| r.ends_at().map(|t| (t, c.clone()))).collect();
        Self { keys, expiry, last_version, clock_ms, revision, dedup, sessions, session_ends, dirty: Dirty::default() }
    }

    pub fn entries(&self) -> impl Iterator<Item = (&Bytes, &Entry)> {
        self.keys.iter()
    }

    fn insert(&mut self, key: Bytes, entry: Entry) {
        if let Some(old) = self.keys.get(&key) {
            if let Some(t) = old.expires_at_ms {
                self.expiry.remove(&(t, key.clone()));
            }
        }
        if let Some(t) = entry.expires_at_ms {
            self.expiry.insert((t, key.clone()));
        }
        self.dirty.keys.insert(key.clone());
        self.keys.insert(key, entry);
    }

    /// Replaces (or with `None` removes) `client`'s session record.
    fn set_session(&mut self, client: &str, record: Option<SessionRecord>) {
        if let Some(t) = self.sessions.get(client).and_then(SessionRecord::ends_at) {
            self.session_ends.remove(&(t, client.to_string()));
        }
        if let Some(t) = record.as_ref().and_then(SessionRecord::ends_at) {
            self.session_ends.insert((t, client.to_string()));
        }
        self.dirty.sessions.insert(client.to_string());
        match record {
            Some(r) => self.sessions.insert(client.to_string(), r),
            None => self.sessions.remove(client),
        };
    }

    fn remove(&mut self, key: &Bytes) -> Option<Entry> {
        let old = self.keys.remove(key)?;
        if let Some(t) = old.expires_at_ms {
            self.expiry.remove(&(t, key.clone()));
        }
        self.dirty.keys.insert(key.clone());
        Some(old)
    }
}

/// One command being applied.
struct Apply<'a> {
    sm: &'a mut StateMachine,
    revision: u64,
    now_ms: u64,
    events: &'a mut Vec<Event>,
}

impl Apply<'_> {
    fn op(&mut self, op: &Op) -> Outcome {
        match op {
            Op::Put(p) => Outcome::Op(self.put(p)),
            Op::Delete(d) => Outcome::Op(self.delete(d)),
            Op::Batch(ops) => Outcome::Batch(ops.iter().map(|o| self.item(o)).collect()),
            Op::Txn(ops) => self.txn(ops),
            Op::Expire => Outcome::Expired { count: self.expire_due() + self.expire_sessions() },
            Op::Session(s) => Outcome::Session(self.session(s)),
            // Groups do not nest (the proposer never builds one): it changes nothing.
            Op::Group(_) => Outcome::None,
        }
    }

    fn session(&mut self, op: &SessionOp) -> SessionResult {
        let now = self.now_ms;
        let sm = &mut *self.sm;
        let current = |sm: &StateMachine, client: &str| sm.sessions.get(client).cloned();
        let owned = |sm: &StateMachine, client: &str, owner| current(sm, client).filter(|r| r.owner == Some(owner));
        match op {
            SessionOp::Open { client, owner, clean, expiry_s, dedup_id } => {
                let previous = current(sm, client);
                if previous.is_none() && sm.sessions.len() >= MAX_SESSIONS {
                    return SessionResult::Quota;
                }
                let gen = previous.as_ref().map_or(0, |r| r.gen);
                let live = previous.filter(|r| r.ends_at().is_none_or(|t| t > now));
                let resumed = live.is_some() && !clean;
                let mut record = live
                    .filter(|_| resumed)
                    .unwrap_or_else(|| SessionRecord { dedup_id: *dedup_id, ..Default::default() });
                // Saves count on from the previous owner's: a late one of its is stale.
                record.gen = gen;
                record.owner = Some(*owner);
                record.home = owner.node;
                record.expiry_s = *expiry_s;
                record.detached_ms = 0;
                sm.set_session(client, Some(record.clone()));
                SessionResult::Done { resumed, record: Some(record) }
            }
            SessionOp::Save { client, owner, gen, subs, observed } => {
                let Some(mut record) = owned(sm, client, *owner).filter(|r| *gen > r.gen) else {
                    return SessionResult::Done { resumed: false, record: current(sm, client) };
                };
                record.gen = *gen;
                record.subs = subs.clone();
                record.observed = observed.clone();
                sm.set_session(client, Some(record.clone()));
                SessionResult::Done { resumed: false, record: Some(record) }
            }
            SessionOp::Close { client, owner, expiry_s } => {
                let Some(mut record) = owned(sm, client, *owner) else {
                    return SessionResult::Done { resumed: false, record: current(sm, client) };
                };
                record.owner = None;
                record.expiry_s = *expiry_s;
                record.detached_ms = now;
                let record = (*expiry_s > 0).then_some(record);
                sm.set_session(client, record.clone());
                SessionResult::Done { resumed: false, record }
            }
            SessionOp::Orphan { node, boot } => {
                let stale: Vec<(String, SessionRecord)> = sm
                    .sessions
                    .iter()
                    .filter(|(_, r)| r.owner.is_some_and(|o| o.node == *node && o.boot != *boot))
                    .map(|(c, r)| (c.clone(), r.clone()))
                    .collect();
                let count = stale.len() as u32;
                for (client, mut record) in stale {
                    record.owner = None;
                    record.detached_ms = now;
                    let keep = record.expiry_s > 0;
                    sm.set_session(&client, keep.then_some(record));
                }
                SessionResult::Orphaned(count)
            }
        }
    }

    /// Ends every detached session whose expiry ran out by this command's time.
    fn expire_sessions(&mut self) -> u32 {
        let due: Vec<String> =
            self.sm.session_ends.iter().take_while(|(t, _)| *t <= self.now_ms).map(|(_, c)| c.clone()).collect();
        for client in &due {
            self.sm.set_session(client, None);
        }
        due.len() as u32
    }

    fn item(&mut self, op: &TxnOp) -> OpResult {
        match op {
            TxnOp::Put(p) => self.put(p),
            TxnOp::Delete(d) => self.delete(d),
        }
    }

    /// Checks every condition in order, each against the state the ops before it leave
    /// (two ops on one key see each other), then applies all — or nothing.
    fn txn(&mut self, ops: &[TxnOp]) -> Outcome {
        for op in ops {
            self.expire_key(op.key());
        }
        let mut after: BTreeMap<&Bytes, Option<Entry>> = BTreeMap::new();
        let mut checks = Vec::with_capacity(ops.len());
        for op in ops {
            let current = after.get(op.key()).cloned().unwrap_or_else(|| self.sm.keys.get(op.key()).cloned());
            let (result, next) = self.precheck(op, current);
            checks.push(result);
            after.insert(op.key(), next);
        }
        if let Some(failed) = checks.iter().position(|r| {
            !matches!(
                r,
                OpResult::Put { applied: true, .. }
                    | OpResult::Delete(DeleteOutcome::Deleted | DeleteOutcome::NotFound)
            )
        }) {
            return Outcome::Txn { succeeded: false, failed: Some(failed as u32), results: checks };
        }
        let results = ops.iter().map(|o| self.item(o)).collect();
        Outcome::Txn { succeeded: true, failed: None, results }
    }

    /// What `item` would answer against `current`, and the key's state after it, without
    /// changing anything.
    fn precheck(&self, op: &TxnOp, current: Option<Entry>) -> (OpResult, Option<Entry>) {
        let (key_fencing, token) = (current.as_ref().and_then(|e| e.fencing), op_fencing(op));
        let fencing = match check_fencing(current.as_ref(), token) {
            Ok(f) => f,
            Err(r) => return (OpResult::Rejected(r), current),
        };
        match op {
            TxnOp::Put(p) if put_allowed(current.as_ref(), p) => {
                let create_revision = current.as_ref().map_or(self.revision, |e| e.create_revision);
                let entry = Entry {
                    value: p.value.clone(),
                    revision: self.revision,
                    create_revision,
                    version: self.sm.last_version,
                    expires_at_ms: None,
                    fencing: fencing.or(key_fencing),
                };
                (OpResult::Put { applied: true, meta: None }, Some(entry))
            }
            TxnOp::Put(_) => (OpResult::Put { applied: false, meta: None }, current),
            TxnOp::Delete(d) => match delete_outcome(current.as_ref(), &d.condition) {
                DeleteOutcome::Deleted => (OpResult::Delete(DeleteOutcome::Deleted), None),
                other => (OpResult::Delete(other), current),
            },
        }
    }

    fn put(&mut self, p: &Put) -> OpResult {
        self.expire_key(&p.key);
        let current = self.sm.keys.get(&p.key);
        let fencing = match check_fencing(current, p.fencing) {
            Ok(f) => f,
            Err(r) => return OpResult::Rejected(r),
        };
        if !put_allowed(current, p) {
            return OpResult::Put { applied: false, meta: current.map(Entry::meta) };
        }
        let create_revision = current.map_or(self.revision, |e| e.create_revision);
        let version = self.next_version(p.client_ts);
        let entry = Entry {
            value: p.value.clone(),
            revision: self.revision,
            create_revision,
            version,
            expires_at_ms: p.ttl_ms.map(|t| self.now_ms.saturating_add(t)),
            fencing,
        };
        let meta = entry.meta();
        self.event(&p.key, EventKind::Put, p.value.clone(), version, false);
        self.sm.insert(p.key.clone(), entry);
        OpResult::Put { applied: true, meta: Some(meta) }
    }

    fn delete(&mut self, d: &Delete) -> OpResult {
        self.expire_key(&d.key);
        let current = self.sm.keys.get(&d.key);
        if let Err(r) = check_fencing(current, d.fencing) {
            return OpResult::Rejected(r);
        }
        let outcome = delete_outcome(current, &d.condition);
        if outcome == DeleteOutcome::Deleted {
            self.sm.remove(&d.key);
            let version = self.next_version(None);
            self.event(&d.key, EventKind::Delete, Bytes::new(), version, false);
        }
        OpResult::Delete(outcome)
    }

    /// Removes `key` first if it expired by this command's time, with its DELETE event.
    fn expire_key(&mut self, key: &Bytes) {
        if self.sm.keys.get(key).is_some_and(|e| !e.is_live(self.now_ms)) {
            self.sm.remove(key);
            let version = self.next_version(None);
            self.event(key, EventKind::Delete, Bytes::new(), version, true);
        }
    }

    fn expire_due(&mut self) -> u32 {
        let due: Vec<Bytes> =
            self.sm.expiry.iter().take_while(|(t, _)| *t <= self.now_ms).map(|(_, k)| k.clone()).collect();
        for key in &due {
            self.expire_key(key);
        }
        due.len() as u32
    }

    fn next_version(&mut self, client_ts: Option<Hlc>) -> Hlc {
        let v = self.sm.last_version.next(self.now_ms, client_ts);
        self.sm.last_version = v;
        v
    }

    fn event(&mut self, key: &Bytes, kind: EventKind, value: Bytes, version: Hlc, expired: bool) {
        let revision = self.revision;
        self.events.push(Event { revision, key: key.clone(), kind, value, version, expired });
    }
}

fn op_fencing(op: &TxnOp) -> Option<Hlc> {
    match op {
        TxnOp::Put(p) => p.fencing,
        TxnOp::Delete(d) => d.fencing,
    }
}

/// The AIO fencing rule: once a key has a token, writes need one at least as new.
/// Returns the token to store with the key.
fn check_fencing(current: Option<&Entry>, token: Option<Hlc>) -> Result<Option<Hlc>, Rejection> {
    match (current.and_then(|e| e.fencing), token) {
        (None, t) => Ok(t),
        (Some(_), None) => Err(Rejection::FencingRequired),
        (Some(stored), Some(t)) if t < stored => Err(Rejection::FencingStale),
        (Some(_), Some(t)) => Ok(Some(t)),
    }
}

fn put_allowed(current: Option<&Entry>, p: &Put) -> bool {
    match p.condition {
        PutCondition::Always => true,
        PutCondition::IfRevision(0) => current.is_none(),
        PutCondition::IfRevision(r) => current.is_some_and(|e| e.revision == r),
        PutCondition::IfAbsent => current.is_none(),
        PutCondition::IfAbsentOrEqual => current.is_none_or(|e| e.value == p.value),
    }
}

fn delete_outcome(current: Option<&Entry>, condition: &DeleteCondition) -> DeleteOutcome {
    let Some(e) = current else {
        // A revision names a version of the key: it cannot match a key that is gone.
        return match condition {
            DeleteCondition::IfRevision(r) if *r > 0 => DeleteOutcome::ConditionFailed,
            _ => DeleteOutcome::NotFound,
        };
    };
    let holds = match condition {
        DeleteCondition::Always => true,
        DeleteCondition::IfRevision(r) => e.revision == *r,
        DeleteCondition::IfValue(v) => e.value == *v,
    };
    if holds {
        DeleteOutcome::Deleted
    } else {
        DeleteOutcome::ConditionFailed
    }
}
