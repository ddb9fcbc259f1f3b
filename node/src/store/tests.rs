use super::*;
use crate::raft::types::TypeConfig;
use crate::watch::EventHub;
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use std::sync::Arc;

struct MemBuilder;

impl StoreBuilder<TypeConfig, LogStore, SmStore, ()> for MemBuilder {
    async fn build(&self) -> Result<((), LogStore, SmStore), StorageError<u64>> {
        let hub = Arc::new(EventHub::new(64, 1));
        Ok((
            (),
            LogStore::new(Arc::new(MemLog::default())),
            SmStore::memory(hub),
        ))
    }
}

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, SmStore, tempfile::TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, SmStore), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = RedbLog::open(&dir.path().join("raft.redb")).expect("raft.redb");
        let sm = RedbSm::open(&dir.path().join("sm.redb")).expect("sm.redb");
        let hub = Arc::new(EventHub::new(64, 1));
        Ok((
            dir,
            LogStore::new(Arc::new(log)),
            SmStore::redb(sm, hub).expect("load"),
        ))
    }
}

#[test]
fn memory_store_passes_openraft_suite() {
    Suite::test_all(MemBuilder).unwrap();
}

#[test]
fn redb_store_passes_openraft_suite() {
    Suite::test_all(RedbBuilder).unwrap();
}
