//! The Raft log in `raft.redb`: one durable (fsynced) transaction per call.

use super::backend::{LogBackend, LogMeta};
use crate::raft::types::{Entry, LogId};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::io;
use std::path::Path;

/// Index → bincode entry; big-endian u64 keys keep index order.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// vote, committed, last_purged, node_id.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

pub struct RedbLog {
    db: Database,
}

pub(crate) fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl RedbLog {
    pub fn open(path: &Path) -> io::Result<Self> {
        let db = Database::create(path).map_err(io_err)?;
        let txn = db.begin_write().map_err(io_err)?;
        txn.open_table(LOG).map_err(io_err)?;
        txn.open_table(META).map_err(io_err)?;
        txn.commit().map_err(io_err)?;
        Ok(Self { db })
    }

    /// Runs `f` in one write transaction and commits it durably.
    fn write(&self, f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>) -> io::Result<()> {
        let txn = self.db.begin_write().map_err(io_err)?;
        f(&txn).map_err(io_err)?;
        txn.commit().map_err(io_err)
    }
}

fn decode(bytes: &[u8]) -> io::Result<Entry> {
    bincode::deserialize(bytes).map_err(io_err)
}

impl LogBackend for RedbLog {
    fn range(&self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        if start >= end {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read().map_err(io_err)?;
        let t = txn.open_table(LOG).map_err(io_err)?;
        let mut out = Vec::new();
        for row in t.range(start..end).map_err(io_err)? {
            let (_, v) = row.map_err(io_err)?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    fn last(&self) -> io::Result<Option<LogId>> {
        let txn = self.db.begin_read().map_err(io_err)?;
        let t = txn.open_table(LOG).map_err(io_err)?;
        let last = t.last().map_err(io_err)?;
        match last {
            Some((_, v)) => Ok(Some(decode(v.value())?.log_id)),
            None => Ok(None),
        }
    }

    fn append(&self, entries: Vec<Entry>) -> io::Result<()> {
        let encoded = entries
            .iter()
            .map(|e| Ok((e.log_id.index, bincode::serialize(e).map_err(io_err)?)))
            .collect::<io::Result<Vec<_>>>()?;
        self.write(|txn| {
            let mut t = txn.open_table(LOG)?;
            for (index, bytes) in &encoded {
                t.insert(*index, bytes.as_slice())?;
            }
            Ok(())
        })
    }

    fn truncate_from(&self, index: u64) -> io::Result<()> {
        self.write(|txn| {
            txn.open_table(LOG)?.retain_in(index.., |_, _| false)?;
            Ok(())
        })
    }

    fn purge(&self, upto: LogId, encoded: Vec<u8>) -> io::Result<()> {
        self.write(|txn| {
            txn.open_table(LOG)?.retain_in(..=upto.index, |_, _| false)?;
            txn.open_table(META)?.insert(LogMeta::LastPurged.name(), encoded.as_slice())?;
            Ok(())
        })
    }

    fn raw_meta(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read().map_err(io_err)?;
        let t = txn.open_table(META).map_err(io_err)?;
        Ok(t.get(name).map_err(io_err)?.map(|v| v.value().to_vec()))
    }

    fn set_raw_meta(&self, name: &str, value: &[u8]) -> io::Result<()> {
        self.write(|txn| {
            txn.open_table(META)?.insert(name, value)?;
            Ok(())
        })
    }

    fn blocking(&self) -> bool {
        true
    }
}
