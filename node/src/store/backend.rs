//! The narrow storage ports behind the openraft traits, with an in-memory twin of each.

use crate::raft::identity::RawMeta;
use crate::raft::types::{Entry, LogId};
use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;

/// Small records kept next to the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogMeta {
    Vote,
    Committed,
    LastPurged,
}

impl LogMeta {
    pub fn name(self) -> &'static str {
        match self {
            LogMeta::Vote => "vote",
            LogMeta::Committed => "committed",
            LogMeta::LastPurged => "last_purged",
        }
    }
}

/// One change to the log; a batch of them is applied in order.
#[derive(Debug)]
pub enum LogOp {
    Append(Vec<Entry>),
    /// Deletes `[index, ∞)`.
    Truncate(u64),
    /// Deletes `[0, upto.index]` and records `upto` (encoded) as last purged.
    Purge(LogId, Vec<u8>),
    SetMeta(LogMeta, Vec<u8>),
}

/// A durable Raft log: every method returns only once its effect is on disk.
/// The supertrait `RawMeta` keeps records next to the log that are not openraft's (the node
/// id, the cluster id).
pub trait LogBackend: RawMeta {
    /// Entries with `start <= index < end`, in order.
    fn range(&self, start: u64, end: u64) -> io::Result<Vec<Entry>>;
    fn last(&self) -> io::Result<Option<LogId>>;
    fn append(&self, entries: Vec<Entry>) -> io::Result<()>;
    /// Deletes `[index, ∞)`.
    fn truncate_from(&self, index: u64) -> io::Result<()>;
    /// Deletes `[0, upto.index]` and records `upto` as last purged, atomically.
    fn purge(&self, upto: LogId, encoded: Vec<u8>) -> io::Result<()>;
    fn meta(&self, key: LogMeta) -> io::Result<Option<Vec<u8>>> {
        self.raw_meta(key.name())
    }
    fn set_meta(&self, key: LogMeta, value: Vec<u8>) -> io::Result<()> {
        self.set_raw_meta(key.name(), &value)
    }
    /// Applies `ops` in order, all or none, durable when it returns: one fsync for the
    /// batch. (The default applies them one by one, for logs without real I/O.)
    fn apply(&self, ops: Vec<LogOp>) -> io::Result<()> {
        for op in ops {
            match op {
                LogOp::Append(entries) => self.append(entries)?,
                LogOp::Truncate(index) => self.truncate_from(index)?,
                LogOp::Purge(upto, encoded) => self.purge(upto, encoded)?,
                LogOp::SetMeta(key, value) => self.set_meta(key, value)?,
            }
        }
        Ok(())
    }
    /// Whether calls block on real I/O (and so belong on a thread of their own).
    fn blocking(&self) -> bool {
        false
    }
    /// Some for a log without real I/O that should behave as a disk taking this long per
    /// batch (the simulation's twin): writes go through the writer, as on a disk.
    fn write_latency(&self) -> Option<std::time::Duration> {
        None
    }
    /// A crash: forget what a real log may not have written yet. Only the simulation's twin
    /// models it (a real disk loses it by itself).
    fn lose_unsynced(&self) {}
}

/// The in-memory log: same behaviour, nothing on disk.
#[derive(Default)]
pub struct MemLog {
    inner: Mutex<MemLogInner>,
    latency: Option<std::time::Duration>,
}

impl MemLog {
    /// A twin of a disk whose every batch takes `latency` to write (the simulation's).
    pub fn with_write_latency(latency: std::time::Duration) -> Self {
        Self { latency: Some(latency), ..Self::default() }
    }
}

#[derive(Default)]
struct MemLogInner {
    log: BTreeMap<u64, Entry>,
    meta: BTreeMap<String, Vec<u8>>,
}

impl LogBackend for MemLog {
    fn range(&self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        if start >= end {
            return Ok(Vec::new());
        }
        let g = self.inner.lock().expect("poisoned");
        Ok(g.log.range(start..end).map(|(_, e)| e.clone()).collect())
    }

    fn last(&self) -> io::Result<Option<LogId>> {
        let g = self.inner.lock().expect("poisoned");
        Ok(g.log.last_key_value().map(|(_, e)| e.log_id))
    }

    fn append(&self, entries: Vec<Entry>) -> io::Result<()> {
        let mut g = self.inner.lock().expect("poisoned");
        for e in entries {
            g.log.insert(e.log_id.index, e);
        }
        Ok(())
    }

    fn truncate_from(&self, index: u64) -> io::Result<()> {
        let mut g = self.inner.lock().expect("poisoned");
        g.log.split_off(&index);
        Ok(())
    }

    fn purge(&self, upto: LogId, encoded: Vec<u8>) -> io::Result<()> {
        let mut g = self.inner.lock().expect("poisoned");
        g.log = g.log.split_off(&(upto.index + 1));
        g.meta.insert(LogMeta::LastPurged.name().to_string(), encoded);
        Ok(())
    }

    fn write_latency(&self) -> Option<std::time::Duration> {
        self.latency
    }

    /// The commit index rides with the next batch of a real log (`LogStore::save_committed`),
    /// so a crash may leave any older one: the twin keeps none, the worst case.
    fn lose_unsynced(&self) {
        self.inner.lock().expect("poisoned").meta.remove(LogMeta::Committed.name());
    }
}

impl RawMeta for MemLog {
    fn raw_meta(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        Ok(self.inner.lock().expect("poisoned").meta.get(name).cloned())
    }

    fn set_raw_meta(&self, name: &str, value: &[u8]) -> io::Result<()> {
        self.inner.lock().expect("poisoned").meta.insert(name.to_string(), value.to_vec());
        Ok(())
    }
}
