//! The state machine in `sm.redb`: keys, dedup windows and metadata, written per apply batch.
//! Kept for a data dir made before ADR 0013; a new one keeps only snapshots (`snap_sm.rs`).

use super::redb_db::{self, dec, enc, DbResult};
use super::sm_disk::{is_newer, Changes, Loaded, SmDisk};
use crate::kv::dedup::DedupTable;
use crate::kv::StateMachine;
use crate::raft::types::{LogId, SnapshotMeta};
use bytes::Bytes;
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
const DEDUP: TableDefinition<u64, &[u8]> = TableDefinition::new("dedup");
/// MQTT sessions by client id.
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// last_applied, membership, last_version, clock_ms, revision, snapshot_meta, snapshot_data.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");

/// The longest an apply batch stays without a durable commit. Applies are made durable
/// lazily: the Raft log holds every applied entry (fsynced on a quorum), and a restart
/// applies again what the state machine lost. Snapshots (before the log is purged) and
/// installs are always durable.
const DURABLE_EVERY: Duration = Duration::from_secs(1);

pub struct RedbSm {
    db: redb_db::Db,
    /// When the last durable commit was.
    durable_at: Mutex<Instant>,
}

impl RedbSm {
    pub fn open(path: &Path) -> io::Result<Self> {
        let db = redb_db::open(path, "sm.redb", &[&KV, &DEDUP, &SESSIONS, &META])?;
        Ok(Self { db, durable_at: Mutex::new(Instant::now()) })
    }

    /// Whether this commit should be durable (and if so, from now on it counts as the last).
    fn durable_now(&self) -> bool {
        let mut at = self.durable_at.lock().expect("poisoned");
        let due = at.elapsed() >= DURABLE_EVERY;
        if due {
            *at = Instant::now();
        }
        due
    }
}

/// Writes the state machine's metadata records.
fn put_meta(txn: &WriteTransaction, records: &[(&str, &[u8])]) -> DbResult<()> {
    let mut m = txn.open_table(META)?;
    for (name, v) in records {
        m.insert(*name, *v)?;
    }
    Ok(())
}

impl SmDisk for RedbSm {
    fn blocking(&self) -> bool {
        true
    }

    fn persist(&self, batches: &[Changes]) -> io::Result<()> {
        let Some(last) = batches.last() else {
            return Ok(());
        };
        redb_db::write_with(&self.db, self.durable_now(), |txn| {
            // The last change of each key wins: one insert per key, in key order.
            let mut keys = BTreeMap::new();
            let mut clients = BTreeMap::new();
            let mut sessions = BTreeMap::new();
            for c in batches {
                keys.extend(c.keys.iter().map(|(k, e)| (k.as_ref(), e)));
                clients.extend(c.clients.iter().map(|(id, w)| (*id, w)));
                sessions.extend(c.sessions.iter().map(|(s, r)| (s.as_str(), r)));
            }
            let mut kv = txn.open_table(KV)?;
            for (k, e) in keys {
                match e {
                    Some(e) => drop(kv.insert(k, enc(e)?.as_slice())?),
                    None => drop(kv.remove(k)?),
                }
            }
            let mut dd = txn.open_table(DEDUP)?;
            for (id, w) in clients {
                match w {
                    Some(w) => drop(dd.insert(id, enc(w)?.as_slice())?),
                    None => drop(dd.remove(id)?),
                }
            }
            let mut ss = txn.open_table(SESSIONS)?;
            for (client, r) in sessions {
                match r {
                    Some(r) => drop(ss.insert(client, enc(r)?.as_slice())?),
                    None => drop(ss.remove(client)?),
                }
            }
            let (applied, membership) = (enc(&last.last_applied)?, enc(&last.membership)?);
            let (version, clock) = (enc(&last.last_version)?, enc(&last.clock_ms)?);
            put_meta(txn, &[("last_applied", &applied), ("membership", &membership)])?;
            put_meta(txn, &[("last_version", &version), ("clock_ms", &clock), ("revision", &enc(&last.revision)?)])
        })
    }

    fn install(&self, sm: &StateMachine, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        redb_db::write(&self.db, |txn| {
            txn.delete_table(KV)?;
            txn.delete_table(DEDUP)?;
            txn.delete_table(SESSIONS)?;
            let mut kv = txn.open_table(KV)?;
            for (k, e) in sm.entries() {
                kv.insert(k.as_ref(), enc(e)?.as_slice())?;
            }
            let mut dd = txn.open_table(DEDUP)?;
            for (id, w) in sm.dedup().windows() {
                dd.insert(*id, enc(w)?.as_slice())?;
            }
            let mut ss = txn.open_table(SESSIONS)?;
            for (client, r) in sm.sessions() {
                ss.insert(client.as_str(), enc(r)?.as_slice())?;
            }
            let (applied, membership) = (enc(&meta.last_log_id)?, enc(&meta.last_membership)?);
            let (version, clock) = (enc(&sm.last_version())?, enc(&sm.clock_ms())?);
            put_meta(txn, &[("last_applied", &applied), ("membership", &membership)])?;
            put_meta(txn, &[("last_version", &version), ("clock_ms", &clock), ("revision", &enc(&sm.revision())?)])?;
            put_meta(txn, &[("snapshot_meta", &enc(meta)?), ("snapshot_data", data)])
        })
    }

    fn save_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        // openraft saves snapshots one at a time: nothing changes between this read and the write.
        let kept = redb_db::read(&self.db, |txn| {
            txn.open_table(META)?.get("snapshot_meta")?.map(|v| dec::<SnapshotMeta>(v.value())).transpose()
        })?;
        if !is_newer(meta, kept.as_ref()) {
            return Ok(());
        }
        redb_db::write(&self.db, |txn| put_meta(txn, &[("snapshot_meta", &enc(meta)?), ("snapshot_data", data)]))
    }

    fn load(&self) -> io::Result<Loaded> {
        redb_db::read(&self.db, |txn| {
            let m = txn.open_table(META)?;
            let get = |name: &str| -> DbResult<Option<Vec<u8>>> { Ok(m.get(name)?.map(|v| v.value().to_vec())) };
            let last_applied = get("last_applied")?.map(|b| dec(&b)).transpose()?.flatten();
            let membership = get("membership")?.map(|b| dec(&b)).transpose()?.unwrap_or_default();
            let last_version = get("last_version")?.map(|b| dec(&b)).transpose()?.unwrap_or_default();
            let clock_ms = get("clock_ms")?.map(|b| dec(&b)).transpose()?.unwrap_or_default();
            // Written since revisions became a counter; before, the revision was the index.
            let revision: u64 = get("revision")?.map(|b| dec(&b)).transpose()?.unwrap_or_default();
            let revision = revision.max(last_applied.map_or(0, |l: LogId| l.index));
            let snapshot = match (get("snapshot_meta")?, get("snapshot_data")?) {
                (Some(meta), Some(data)) => Some((dec(&meta)?, data)),
                _ => None,
            };
            let mut keys = Vec::new();
            for row in txn.open_table(KV)?.iter()? {
                let (k, v) = row?;
                keys.push((Bytes::copy_from_slice(k.value()), dec(v.value())?));
            }
            let mut dedup = DedupTable::default();
            for row in txn.open_table(DEDUP)?.iter()? {
                let (id, w) = row?;
                dedup.insert_window(id.value(), dec(w.value())?);
            }
            let mut sessions = Vec::new();
            for row in txn.open_table(SESSIONS)?.iter()? {
                let (client, r) = row?;
                sessions.push((client.value().to_string(), dec(r.value())?));
            }
            let kv = StateMachine::from_parts(keys, last_version, clock_ms, revision, dedup, sessions);
            Ok(Loaded { kv, last_applied, membership, snapshot })
        })
    }
}
