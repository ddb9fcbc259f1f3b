//! `RaftLogStorage` over a `LogBackend` (redb or memory).

use super::backend::{LogBackend, LogMeta};
use crate::raft::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

/// The log store handed to openraft; clones share the backend (log readers).
#[derive(Clone)]
pub struct LogStore {
    backend: Arc<dyn LogBackend>,
}

fn err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: io::Error) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

fn log_err(verb: ErrorVerb) -> impl Fn(io::Error) -> StorageError {
    move |e| err(ErrorSubject::Logs, verb, e)
}

impl LogStore {
    pub fn new(backend: Arc<dyn LogBackend>) -> Self {
        Self { backend }
    }

    /// Runs a write on the blocking pool so an fsync never stalls the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn LogBackend) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let backend = self.backend.clone();
        if !backend.blocking() {
            return f(backend.as_ref());
        }
        tokio::task::spawn_blocking(move || f(backend.as_ref())).await.map_err(io::Error::other)?
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: LogMeta) -> Result<Option<T>, StorageError> {
        let Some(bytes) = self.backend.meta(key).map_err(log_err(ErrorVerb::Read))? else {
            return Ok(None);
        };
        let v =
            bincode::deserialize(&bytes).map_err(|e| err(ErrorSubject::Logs, ErrorVerb::Read, io::Error::other(e)))?;
        Ok(Some(v))
    }

    async fn write_meta<T: serde::Serialize>(&self, key: LogMeta, value: &T) -> io::Result<()> {
        let bytes = bincode::serialize(value).map_err(io::Error::other)?;
        self.blocking(move |b| b.set_meta(key, bytes)).await
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
        self.backend.range(start, end).map_err(log_err(ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_meta(LogMeta::LastPurged)?;
        let last = self.backend.last().map_err(log_err(ErrorVerb::Read))?;
        Ok(LogState { last_purged_log_id, last_log_id: last.or(last_purged_log_id) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_meta(LogMeta::Vote, vote).await.map_err(|e| err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(LogMeta::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.write_meta(LogMeta::Committed, &committed).await.map_err(log_err(ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.read_meta::<Option<LogId>>(LogMeta::Committed)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let result = self.blocking(move |b| b.append(entries)).await;
        // Durable (committed) before openraft hears about it.
        let report = result.as_ref().map(|_| ()).map_err(|e| io::Error::new(e.kind(), e.to_string()));
        callback.log_io_completed(report);
        result.map_err(log_err(ErrorVerb::Write))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.blocking(move |b| b.truncate_from(log_id.index)).await.map_err(log_err(ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let encoded = bincode::serialize(&log_id).map_err(|e| log_err(ErrorVerb::Delete)(io::Error::other(e)))?;
        self.blocking(move |b| b.purge(log_id, encoded)).await.map_err(log_err(ErrorVerb::Delete))
    }
}
