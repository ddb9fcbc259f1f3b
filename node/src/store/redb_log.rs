//! The Raft log in `raft.redb`: one durable (fsynced) transaction per call or batch.

use super::backend::{LogBackend, LogMeta, LogOp};
use super::redb_db::{self, dec, enc};
use crate::raft::identity::RawMeta;
use crate::raft::types::{Entry, LogId};
use redb::{ReadableTable, TableDefinition};
use std::io;
use std::path::Path;

/// Index → bincode entry; big-endian u64 keys keep index order.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// vote, committed, last_purged, node_id.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

pub struct RedbLog {
    db: redb_db::Db,
}

impl RedbLog {
    pub fn open(path: &Path) -> io::Result<Self> {
        let db = redb_db::open(path, "raft.redb", &[&LOG, &META])?;
        Ok(Self { db })
    }
}

impl LogBackend for RedbLog {
    fn range(&self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        if start >= end {
            return Ok(Vec::new());
        }
        redb_db::read(&self.db, |txn| {
            let t = txn.open_table(LOG)?;
            t.range(start..end)?.map(|row| dec(row?.1.value())).collect()
        })
    }

    fn last(&self) -> io::Result<Option<LogId>> {
        redb_db::read(&self.db, |txn| {
            let t = txn.open_table(LOG)?;
            let last = t.last()?;
            last.map(|(_, v)| dec::<Entry>(v.value()).map(|e| e.log_id)).transpose()
        })
    }

    fn append(&self, entries: Vec<Entry>) -> io::Result<()> {
        redb_db::write(&self.db, |txn| {
            let mut t = txn.open_table(LOG)?;
            for e in &entries {
                t.insert(e.log_id.index, enc(e)?.as_slice())?;
            }
            Ok(())
        })
    }

    fn truncate_from(&self, index: u64) -> io::Result<()> {
        redb_db::write(&self.db, |txn| {
            txn.open_table(LOG)?.retain_in(index.., |_, _| false)?;
            Ok(())
        })
    }

    fn purge(&self, upto: LogId, encoded: Vec<u8>) -> io::Result<()> {
        redb_db::write(&self.db, |txn| {
            txn.open_table(LOG)?.retain_in(..=upto.index, |_, _| false)?;
            txn.open_table(META)?.insert(LogMeta::LastPurged.name(), encoded.as_slice())?;
            Ok(())
        })
    }

    fn apply(&self, ops: Vec<LogOp>) -> io::Result<()> {
        redb_db::write(&self.db, |txn| {
            let mut t = txn.open_table(LOG)?;
            let mut meta = txn.open_table(META)?;
            for op in &ops {
                match op {
                    LogOp::Append(entries) => {
                        for e in entries {
                            t.insert(e.log_id.index, enc(e)?.as_slice())?;
                        }
                    }
                    LogOp::Truncate(index) => t.retain_in(*index.., |_, _| false)?,
                    LogOp::Purge(upto, encoded) => {
                        t.retain_in(..=upto.index, |_, _| false)?;
                        meta.insert(LogMeta::LastPurged.name(), encoded.as_slice())?;
                    }
                    LogOp::SetMeta(key, value) => drop(meta.insert(key.name(), value.as_slice())?),
                }
            }
            Ok(())
        })
    }

    fn blocking(&self) -> bool {
        true
    }
}

impl RawMeta for RedbLog {
    fn raw_meta(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        redb_db::read(&self.db, |txn| Ok(txn.open_table(META)?.get(name)?.map(|v| v.value().to_vec())))
    }

    fn set_raw_meta(&self, name: &str, value: &[u8]) -> io::Result<()> {
        redb_db::write(&self.db, |txn| {
            txn.open_table(META)?.insert(name, value)?;
            Ok(())
        })
    }
}
