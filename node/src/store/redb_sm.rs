//! The state machine in `sm.redb`: keys, dedup windows and metadata, written per apply batch.

use super::redb_log::io_err;
use super::sm_disk::{is_newer, Changes, Loaded, SmDisk};
use crate::kv::dedup::DedupTable;
use crate::kv::StateMachine;
use crate::raft::types::SnapshotMeta;
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::io;
use std::path::Path;

const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
const DEDUP: TableDefinition<u64, &[u8]> = TableDefinition::new("dedup");
/// last_applied, membership, last_version, snapshot_meta, snapshot_data.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");

pub struct RedbSm {
    db: Database,
}

fn enc<T: serde::Serialize>(v: &T) -> io::Result<Vec<u8>> {
    bincode::serialize(v).map_err(io_err)
}

fn dec<T: serde::de::DeserializeOwned>(b: &[u8]) -> io::Result<T> {
    bincode::deserialize(b).map_err(io_err)
}

impl RedbSm {
    pub fn open(path: &Path) -> io::Result<Self> {
        let db = Database::create(path).map_err(io_err)?;
        let txn = db.begin_write().map_err(io_err)?;
        txn.open_table(KV).map_err(io_err)?;
        txn.open_table(DEDUP).map_err(io_err)?;
        txn.open_table(META).map_err(io_err)?;
        txn.commit().map_err(io_err)?;
        Ok(Self { db })
    }
}

impl SmDisk for RedbSm {
    fn blocking(&self) -> bool {
        true
    }

    fn persist(&self, c: &Changes) -> io::Result<()> {
        let meta = [
            ("last_applied", enc(&c.last_applied)?),
            ("membership", enc(&c.membership)?),
            ("last_version", enc(&c.last_version)?),
            ("clock_ms", enc(&c.clock_ms)?),
        ];
        let keys =
            c.keys.iter().map(|(k, e)| Ok((k, e.as_ref().map(enc).transpose()?))).collect::<io::Result<Vec<_>>>()?;
        let clients = c
            .clients
            .iter()
            .map(|(id, w)| Ok((*id, w.as_ref().map(enc).transpose()?)))
            .collect::<io::Result<Vec<_>>>()?;
        let txn = self.db.begin_write().map_err(io_err)?;
        {
            let mut kv = txn.open_table(KV).map_err(io_err)?;
            for (k, v) in &keys {
                match v {
                    Some(v) => kv.insert(k.as_ref(), v.as_slice()).map(drop),
                    None => kv.remove(k.as_ref()).map(drop),
                }
                .map_err(io_err)?;
            }
            let mut dd = txn.open_table(DEDUP).map_err(io_err)?;
            for (id, w) in &clients {
                match w {
                    Some(w) => dd.insert(*id, w.as_slice()).map(drop),
                    None => dd.remove(*id).map(drop),
                }
                .map_err(io_err)?;
            }
            let mut m = txn.open_table(META).map_err(io_err)?;
            for (name, v) in &meta {
                m.insert(*name, v.as_slice()).map_err(io_err)?;
            }
        }
        txn.commit().map_err(io_err)
    }

    fn install(&self, sm: &StateMachine, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        let txn = self.db.begin_write().map_err(io_err)?;
        txn.delete_table(KV).map_err(io_err)?;
        txn.delete_table(DEDUP).map_err(io_err)?;
        {
            let mut kv = txn.open_table(KV).map_err(io_err)?;
            for (k, e) in sm.entries() {
                kv.insert(k.as_ref(), enc(e)?.as_slice()).map_err(io_err)?;
            }
            let mut dd = txn.open_table(DEDUP).map_err(io_err)?;
            for (id, w) in sm.dedup().windows() {
                dd.insert(*id, enc(w)?.as_slice()).map_err(io_err)?;
            }
            let mut m = txn.open_table(META).map_err(io_err)?;
            m.insert("last_applied", enc(&meta.last_log_id)?.as_slice()).map_err(io_err)?;
            m.insert("membership", enc(&meta.last_membership)?.as_slice()).map_err(io_err)?;
            m.insert("last_version", enc(&sm.last_version())?.as_slice()).map_err(io_err)?;
            m.insert("clock_ms", enc(&sm.clock_ms())?.as_slice()).map_err(io_err)?;
            m.insert("snapshot_meta", enc(meta)?.as_slice()).map_err(io_err)?;
            m.insert("snapshot_data", data).map_err(io_err)?;
        }
        txn.commit().map_err(io_err)
    }

    fn save_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        let txn = self.db.begin_write().map_err(io_err)?;
        {
            let mut m = txn.open_table(META).map_err(io_err)?;
            let kept: Option<SnapshotMeta> =
                m.get("snapshot_meta").map_err(io_err)?.map(|v| dec(v.value())).transpose()?;
            if !is_newer(meta, kept.as_ref()) {
                return Ok(());
            }
            m.insert("snapshot_meta", enc(meta)?.as_slice()).map_err(io_err)?;
            m.insert("snapshot_data", data).map_err(io_err)?;
        }
        txn.commit().map_err(io_err)
    }

    fn load(&self) -> io::Result<Loaded> {
        let txn = self.db.begin_read().map_err(io_err)?;
        let m = txn.open_table(META).map_err(io_err)?;
        let get = |name: &str| -> io::Result<Option<Vec<u8>>> {
            Ok(m.get(name).map_err(io_err)?.map(|v| v.value().to_vec()))
        };
        let last_applied = get("last_applied")?.map(|b| dec(&b)).transpose()?.flatten();
        let membership = get("membership")?.map(|b| dec(&b)).transpose()?.unwrap_or_default();
        let last_version = get("last_version")?.map(|b| dec(&b)).transpose()?.unwrap_or_default();
        let clock_ms = get("clock_ms")?.map(|b| dec(&b)).transpose()?.unwrap_or_default();
        let snapshot = match (get("snapshot_meta")?, get("snapshot_data")?) {
            (Some(meta), Some(data)) => Some((dec(&meta)?, data)),
            _ => None,
        };
        let mut keys = Vec::new();
        for row in txn.open_table(KV).map_err(io_err)?.iter().map_err(io_err)? {
            let (k, v) = row.map_err(io_err)?;
            keys.push((Bytes::copy_from_slice(k.value()), dec(v.value())?));
        }
        let mut dedup = DedupTable::default();
        for row in txn.open_table(DEDUP).map_err(io_err)?.iter().map_err(io_err)? {
            let (id, w) = row.map_err(io_err)?;
            dedup.insert_window(id.value(), dec(w.value())?);
        }
        let kv = StateMachine::from_parts(keys, last_version, clock_ms, dedup);
        Ok(Loaded { kv, last_applied, membership, snapshot })
    }
}
