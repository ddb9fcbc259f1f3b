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
        Ok(((), LogStore::new(Arc::new(MemLog::default()), 1).expect("open"), SmStore::memory(hub)))
    }
}

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, SmStore, tempfile::TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, SmStore), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = RedbLog::open(&dir.path().join("raft.redb")).expect("raft.redb");
        let sm = RedbSm::open(&dir.path().join("sm.redb")).expect("sm.redb");
        let hub = Arc::new(EventHub::new(64, 1));
        Ok((dir, LogStore::new(Arc::new(log), 1).expect("open"), SmStore::disk(Arc::new(sm), hub).expect("load")))
    }
}

/// Segments of 2 KiB: the suite's logs span many, so rotation and purging are exercised.
struct WalBuilder;

impl StoreBuilder<TypeConfig, LogStore, SmStore, tempfile::TempDir> for WalBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, SmStore), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = WalLog::open_with(&dir.path().join("raft.wal"), 2048).expect("raft.wal");
        let sm = RedbSm::open(&dir.path().join("sm.redb")).expect("sm.redb");
        let hub = Arc::new(EventHub::new(64, 1));
        Ok((dir, LogStore::new(Arc::new(log), 1).expect("open"), SmStore::disk(Arc::new(sm), hub).expect("load")))
    }
}

/// What a data dir made now holds: segment files and the state machine's snapshot file.
struct SnapBuilder;

impl StoreBuilder<TypeConfig, LogStore, SmStore, tempfile::TempDir> for SnapBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, SmStore), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = WalLog::open_with(&dir.path().join("raft.wal"), 2048).expect("raft.wal");
        let sm = SnapSm::new(FileSlot::open(&dir.path().join("sm.snap")).expect("sm.snap"));
        let hub = Arc::new(EventHub::new(64, 1));
        Ok((dir, LogStore::new(Arc::new(log), 1).expect("open"), SmStore::disk(Arc::new(sm), hub).expect("load")))
    }
}

#[test]
fn wal_store_passes_openraft_suite() {
    Suite::test_all(WalBuilder).unwrap();
}

#[test]
fn snapshot_file_store_passes_openraft_suite() {
    Suite::test_all(SnapBuilder).unwrap();
}

#[test]
fn memory_store_passes_openraft_suite() {
    Suite::test_all(MemBuilder).unwrap();
}

#[test]
fn redb_store_passes_openraft_suite() {
    Suite::test_all(RedbBuilder).unwrap();
}

mod restart {
    use super::*;
    use crate::kv::{Command, Op, Put, PutCondition};
    use crate::raft::types::{Entry, LogId, Vote};
    use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
    use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader, RaftSnapshotBuilder};

    fn entry(index: u64, key: &str) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command { client: None, now_ms: 1, op: entry_op(key) }),
        }
    }

    fn open(dir: &std::path::Path) -> (LogStore, SmStore) {
        let log = RedbLog::open(&dir.join("raft.redb")).unwrap();
        let sm = RedbSm::open(&dir.join("sm.redb")).unwrap();
        let hub = Arc::new(EventHub::new(64, 1));
        (LogStore::new(Arc::new(log), 1).expect("open"), SmStore::disk(Arc::new(sm), hub).unwrap())
    }

    /// Everything acknowledged as durable is there after the process goes away.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redb_state_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, mut sm) = open(dir.path());
            log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
            log.blocking_append((1..=10).map(|i| entry(i, &format!("k{i}")))).await.unwrap();
            log.purge(LogId::new(CommittedLeaderId::new(1, 1), 3)).await.unwrap();
            log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 9)).await.unwrap();
            sm.apply((1..=8).map(|i| entry(i, &format!("k{i}")))).await.unwrap();
            sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
            let owner = crate::kv::Owner { node: 1, boot: 7, conn: 1 };
            let open =
                crate::kv::SessionOp::Open { client: "mqtt-c".into(), owner, clean: true, expiry_s: 60, dedup_id: 3 };
            let open = Command { client: None, now_ms: 1, op: Op::Session(open) };
            let log_id = LogId::new(CommittedLeaderId::new(1, 1), 9);
            sm.apply([Entry { log_id, payload: EntryPayload::Normal(open) }]).await.unwrap();
        }
        let (mut log, mut sm) = open(dir.path());
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new_committed(1, 1)));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(3));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(8));
        let entries = log.try_get_log_entries(4..9).await.unwrap();
        assert_eq!(entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![4, 5, 6, 7, 8]);
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(9));
        assert!(sm.read().kv.get(b"k8", 0).is_some());
        let session = sm.read().kv.session("mqtt-c").cloned().expect("the MQTT session survives");
        assert_eq!((session.owner.map(|o| o.boot), session.expiry_s), (Some(7), 60));
        let snap = sm.get_current_snapshot().await.unwrap().expect("snapshot kept");
        assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(8));
    }

    /// A data dir made now keeps the state machine as its last snapshot alone (ADR 0013):
    /// after a restart the state is the snapshot's, and the log after it (still there: the
    /// log is purged only behind a durable snapshot) brings back the rest when applied again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshot_file_state_comes_back_from_the_snapshot_and_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let log = WalLog::open_with(&dir.path().join("raft.wal"), 2048).unwrap();
            let sm = SnapSm::new(FileSlot::open(&dir.path().join("sm.snap")).unwrap());
            let hub = Arc::new(EventHub::new(64, 1));
            (LogStore::new(Arc::new(log), 1).unwrap(), SmStore::disk(Arc::new(sm), hub).unwrap())
        };
        {
            let (mut log, mut sm) = open();
            log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
            log.blocking_append((1..=10).map(|i| entry(i, &format!("k{i}")))).await.unwrap();
            sm.apply((1..=6).map(|i| entry(i, &format!("k{i}")))).await.unwrap();
            sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
            log.purge(LogId::new(CommittedLeaderId::new(1, 1), 4)).await.unwrap();
            sm.apply((7..=10).map(|i| entry(i, &format!("k{i}")))).await.unwrap();
            assert!(sm.read().kv.get(b"k10", 0).is_some());
        }
        let (mut log, mut sm) = open();
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(6), "the snapshot's point");
        assert!(sm.read().kv.get(b"k6", 0).is_some() && sm.read().kv.get(b"k7", 0).is_none());
        let snap = sm.get_current_snapshot().await.unwrap().expect("snapshot kept");
        assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(6));
        // What openraft does next: apply the log after the snapshot again.
        let rest = log.try_get_log_entries(7..=10).await.unwrap();
        assert_eq!(rest.len(), 4, "the log behind the snapshot's point is still there");
        sm.apply(rest).await.unwrap();
        assert!(sm.read().kv.get(b"k10", 0).is_some());
        assert_eq!(sm.read().kv.revision(), 10);
        assert!(!dir.path().join("sm.redb").exists());
    }

    /// Batches persisted together keep only each key's last change (one insert per key):
    /// a key put then deleted is gone, deleted then put is there with its last value.
    #[test]
    fn batches_persisted_together_keep_each_keys_last_change() {
        use crate::kv::{Entry as KvEntry, Hlc};
        use crate::store::sm_disk::Changes;
        let dir = tempfile::tempdir().unwrap();
        let disk = RedbSm::open(&dir.path().join("sm.redb")).unwrap();
        let value = |v: &'static str, revision| KvEntry {
            value: v.into(),
            revision,
            create_revision: revision,
            version: Hlc::default(),
            expires_at_ms: None,
            fencing: None,
        };
        let batch = |index, keys: Vec<(&'static str, Option<KvEntry>)>| Changes {
            keys: keys.into_iter().map(|(k, e)| (k.into(), e)).collect(),
            clients: Vec::new(),
            sessions: Vec::new(),
            last_applied: Some(LogId::new(CommittedLeaderId::new(1, 1), index)),
            membership: Default::default(),
            last_version: Hlc::default(),
            clock_ms: 1,
            revision: index,
        };
        let batches = [
            batch(1, vec![("a", Some(value("a1", 1))), ("b", None), ("c", Some(value("c1", 1)))]),
            batch(2, vec![("a", None), ("b", Some(value("b2", 2))), ("c", Some(value("c2", 2)))]),
            batch(3, vec![("c", Some(value("c3", 3)))]),
        ];
        disk.persist(&batches).unwrap();
        let loaded = disk.load().unwrap();
        let kv: Vec<(String, String)> = loaded
            .kv
            .entries()
            .map(|(k, e)| (String::from_utf8_lossy(k).into(), String::from_utf8_lossy(&e.value).into()))
            .collect();
        assert_eq!(kv, vec![("b".into(), "b2".into()), ("c".into(), "c3".into())]);
        assert_eq!(loaded.last_applied.map(|l| l.index), Some(3));
    }

    /// A snapshot that does not decode is refused and leaves the state as it was.
    #[test]
    fn corrupt_snapshot_is_rejected_not_installed() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let hub = Arc::new(EventHub::new(64, 1));
            let mut sm = SmStore::memory(hub);
            sm.apply([entry(1, "keep")]).await.unwrap();
            let meta = crate::raft::types::SnapshotMeta {
                last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 5)),
                last_membership: Default::default(),
                snapshot_id: "bad".into(),
            };
            let garbage = Box::new(std::io::Cursor::new(b"not a snapshot".to_vec()));
            assert!(sm.install_snapshot(&meta, garbage).await.is_err());
            assert!(sm.read().kv.get(b"keep", 0).is_some(), "state untouched by a bad snapshot");
        });
    }

    fn snap_meta(index: u64) -> crate::raft::types::SnapshotMeta {
        crate::raft::types::SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), index)),
            last_membership: Default::default(),
            snapshot_id: format!("1-{index}-1"),
        }
    }

    /// A disk that refuses every write after the first `ok` ones (a crash mid-way).
    struct CrashAfter {
        inner: RedbSm,
        ok: std::sync::atomic::AtomicUsize,
    }

    impl CrashAfter {
        fn write(&self) -> std::io::Result<()> {
            let left = self.ok.load(std::sync::atomic::Ordering::SeqCst);
            if left == 0 {
                return Err(std::io::Error::other("crashed"));
            }
            self.ok.store(left - 1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    impl SmDisk for CrashAfter {
        fn persist(&self, c: &[crate::store::sm_disk::Changes]) -> std::io::Result<()> {
            self.write()?;
            self.inner.persist(c)
        }
        fn install(
            &self,
            sm: &crate::kv::StateMachine,
            meta: &crate::raft::types::SnapshotMeta,
            data: &[u8],
        ) -> std::io::Result<()> {
            self.write()?;
            self.inner.install(sm, meta, data)
        }
        fn save_snapshot(&self, meta: &crate::raft::types::SnapshotMeta, data: &[u8]) -> std::io::Result<()> {
            self.write()?;
            self.inner.save_snapshot(meta, data)
        }
        fn load(&self) -> std::io::Result<crate::store::sm_disk::Loaded> {
            self.inner.load()
        }
    }

    /// Applies reach the disk lazily and snapshots at once: a restart whose tables are older
    /// than the kept snapshot (a crash lost applies the snapshot holds) starts from the
    /// snapshot, and rewrites the tables from it so that what it dropped stays gone.
    #[tokio::test]
    async fn a_snapshot_newer_than_the_tables_wins_at_restart() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(RedbSm::open(&dir.path().join("sm.redb")).unwrap());
        let mut sm = SmStore::disk(disk.clone(), Arc::new(EventHub::new(64, 1))).unwrap();
        sm.apply([entry(1, "stale")]).await.unwrap();
        drop(sm);
        let mut source = crate::kv::StateMachine::default();
        source.apply(5, &Command { client: None, now_ms: 1, op: entry_op("fresh") });
        disk.save_snapshot(&snap_meta(5), &crate::kv::snapshot::encode(&source)).unwrap();
        for round in 0..2 {
            let sm = SmStore::disk(disk.clone(), Arc::new(EventHub::new(64, 1))).unwrap();
            assert_eq!(sm.read().last_applied.map(|l| l.index), Some(5), "round {round}");
            assert!(sm.read().kv.get(b"fresh", 0).is_some(), "round {round}");
            assert!(sm.read().kv.get(b"stale", 0).is_none(), "round {round}: the snapshot dropped it");
        }
        assert_eq!(disk.load().unwrap().last_applied.map(|l| l.index), Some(5), "tables rewritten");
    }

    /// A snapshot install is one durable step: the disk never holds the state of one point
    /// with the snapshot of another (item 8 of issue 8: state and snapshot were two
    /// transactions, and a crash between them kept a snapshot older than the purge point).
    #[tokio::test]
    async fn snapshot_install_is_one_durable_step() {
        let dir = tempfile::tempdir().unwrap();
        let inner = RedbSm::open(&dir.path().join("sm.redb")).unwrap();
        let disk = Arc::new(CrashAfter { inner, ok: 1.into() });
        let mut sm = SmStore::disk(disk.clone(), Arc::new(EventHub::new(64, 1))).unwrap();
        let mut source = crate::kv::StateMachine::default();
        source.apply(7, &Command { client: None, now_ms: 1, op: entry_op("installed") });
        let data = crate::kv::snapshot::encode(&source);
        sm.install_snapshot(&snap_meta(7), Box::new(std::io::Cursor::new(data))).await.unwrap();
        let loaded = disk.load().unwrap();
        let kept = loaded.snapshot.as_ref().map(|(m, _)| m.last_log_id);
        assert_eq!(kept, Some(loaded.last_applied), "state and snapshot from the same point");
        assert!(loaded.kv.get(b"installed", 0).is_some());
    }

    fn entry_op(key: &str) -> Op {
        Op::Put(Put {
            key: key.as_bytes().to_vec().into(),
            value: b"v".to_vec().into(),
            ttl_ms: None,
            condition: PutCondition::Always,
            fencing: None,
            client_ts: None,
        })
    }

    /// A build that finishes writing after a newer install never replaces the newer snapshot
    /// (item 8 of issue 8), on every disk.
    #[test]
    fn an_older_snapshot_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let disks: Vec<Arc<dyn SmDisk>> = vec![
            Arc::new(SnapSm::new(MemSlot::default())),
            Arc::new(SnapSm::new(FileSlot::open(&dir.path().join("sm.snap")).unwrap())),
            Arc::new(RedbSm::open(&dir.path().join("sm.redb")).unwrap()),
        ];
        let state = |index, key| {
            let mut sm = crate::kv::StateMachine::default();
            sm.apply(index, &Command { client: None, now_ms: 1, op: entry_op(key) });
            let data = crate::kv::snapshot::encode(&sm);
            (sm, data)
        };
        let ((ten, ten_data), (_, five), (_, twelve)) = (state(10, "ten"), state(5, "five"), state(12, "twelve"));
        for disk in disks {
            disk.install(&ten, &snap_meta(10), &ten_data).unwrap();
            disk.save_snapshot(&snap_meta(5), &five).unwrap();
            let (meta, data) = disk.load().unwrap().snapshot.expect("a snapshot");
            assert_eq!((meta.last_log_id.map(|l| l.index), &data), (Some(10), &ten_data));
            disk.save_snapshot(&snap_meta(12), &twelve).unwrap();
            assert_eq!(disk.load().unwrap().snapshot.unwrap().1, twelve);
        }
    }
}

mod wal {
    use super::backend::LogMeta;
    use super::*;
    use crate::kv::{Command, Op, Put, PutCondition};
    use crate::raft::types::{Entry, LogId};
    use openraft::{CommittedLeaderId, EntryPayload};
    use std::path::Path;

    fn entry(term: u64, index: u64, value: &str) -> Entry {
        let put = Put {
            key: "k".into(),
            value: bytes::Bytes::copy_from_slice(value.as_bytes()),
            ttl_ms: None,
            condition: PutCondition::Always,
            fencing: None,
            client_ts: None,
        };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(Command { client: None, now_ms: 1, op: Op::Put(put) }),
        }
    }

    /// A log directory in a temporary directory (kept while the guard lives).
    fn wal_dir() -> (tempfile::TempDir, std::path::PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("raft.wal");
        (tmp, dir)
    }

    /// Appends the entries at `indexes`, of term 1, each its own batch, with values of `len` bytes.
    fn append_n(log: &WalLog, indexes: std::ops::RangeInclusive<u64>, len: usize) {
        for i in indexes {
            log.append(vec![entry(1, i, &"v".repeat(len))]).unwrap();
        }
    }

    fn indexes(log: &WalLog) -> Vec<(u64, u64)> {
        log.range(0, u64::MAX).unwrap().iter().map(|e| (e.log_id.leader_id.term, e.log_id.index)).collect()
    }

    fn segments(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".wal"))
            .collect();
        names.sort();
        names
    }

    /// The byte offset just past the last record of segment `seq` (the first zero header).
    fn records_end(path: &Path) -> usize {
        let data = std::fs::read(path).unwrap();
        let mut at = 0;
        while u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) != 0 || data[at + 8] != 0 {
            at += 9 + u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        }
        at
    }

    #[test]
    fn records_survive_reopen_across_segments_and_purge_deletes_old_ones() {
        let (_tmp, dir) = wal_dir();
        {
            let log = WalLog::open_with(&dir, 1024).unwrap();
            log.set_raw_meta("node_id", b"7").unwrap();
            append_n(&log, 1..=40, 100);
            log.truncate_from(35).unwrap();
            log.append(vec![entry(2, 35, "new")]).unwrap();
            assert!(segments(&dir).len() > 4, "{:?}", segments(&dir));
        }
        let log = WalLog::open_with(&dir, 1024).unwrap();
        let expect: Vec<(u64, u64)> = (1..=34).map(|i| (1, i)).chain([(2, 35)]).collect();
        assert_eq!(indexes(&log), expect);
        assert_eq!(log.last().unwrap().map(|l| l.index), Some(35));
        let before = segments(&dir).len();
        let upto = LogId::new(CommittedLeaderId::new(1, 1), 30);
        log.purge(upto, bincode::serialize(&upto).unwrap()).unwrap();
        assert!(segments(&dir).len() < before, "purged segments are deleted");
        drop(log);
        let log = WalLog::open_with(&dir, 1024).unwrap();
        assert_eq!(indexes(&log), expect[30..].to_vec());
        assert_eq!(log.raw_meta("node_id").unwrap().as_deref(), Some(&b"7"[..]), "metadata outlives its segment");
        let purged: LogId = bincode::deserialize(&log.meta(LogMeta::LastPurged).unwrap().unwrap()).unwrap();
        assert_eq!(purged, upto);
    }

    /// The next segment is made ahead once the current one is half full, and a rotation
    /// takes it; a spare left half made by a crash is made again, never read as a segment.
    #[test]
    fn the_next_segment_is_made_ahead_and_a_stale_spare_is_never_a_segment() {
        let (_tmp, dir) = wal_dir();
        let spare = dir.join("spare.wal.tmp");
        {
            let log = WalLog::open_with(&dir, 4096).unwrap();
            append_n(&log, 1..=8, 300);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::fs::metadata(&spare).map(|m| m.len()).unwrap_or(0) < 4096 {
                assert!(std::time::Instant::now() < deadline, "no spare made past half a segment");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let before = segments(&dir).len();
            append_n(&log, 9..=16, 300);
            assert!(segments(&dir).len() > before, "rotated: {:?}", segments(&dir));
        }
        std::fs::write(&spare, vec![0xa5u8; 100]).unwrap();
        {
            let log = WalLog::open_with(&dir, 4096).unwrap();
            assert!(!spare.exists(), "a stale spare is removed at open");
            append_n(&log, 17..=40, 300);
        }
        let log = WalLog::open_with(&dir, 4096).unwrap();
        assert_eq!(indexes(&log), (1..=40).map(|i| (1, i)).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_last_batch_is_cut_and_never_comes_back() {
        let (_tmp, dir) = wal_dir();
        let seg = dir.join(format!("{:016x}.wal", 1));
        {
            let log = WalLog::open(&dir).unwrap();
            log.append(vec![entry(1, 1, "a")]).unwrap();
            log.append(vec![entry(1, 2, "bbbbbbbb"), entry(1, 3, "c")]).unwrap();
        }
        // Entry 2's payload torn (its CRC fails); entry 3 after it reached the disk whole.
        let mut data = std::fs::read(&seg).unwrap();
        let first = 9 + u32::from_le_bytes(data[0..4].try_into().unwrap()) as usize;
        data[first + 12] ^= 0xff;
        std::fs::write(&seg, &data).unwrap();
        {
            let log = WalLog::open(&dir).unwrap();
            assert_eq!(indexes(&log), vec![(1, 1)]);
            assert_eq!(records_end(&seg), first, "what followed the torn record is zeroed");
            // A shorter record where entry 2 was: entry 3's old bytes must not line up again.
            log.append(vec![entry(2, 2, "x")]).unwrap();
        }
        let log = WalLog::open(&dir).unwrap();
        assert_eq!(indexes(&log), vec![(1, 1), (2, 2)]);
    }

    #[test]
    fn a_bad_record_in_a_finished_segment_refuses_to_open() {
        let (_tmp, dir) = wal_dir();
        {
            append_n(&WalLog::open_with(&dir, 512).unwrap(), 1..=10, 200);
        }
        let first = dir.join(format!("{:016x}.wal", 1));
        let mut data = std::fs::read(&first).unwrap();
        data[20] ^= 0xff;
        std::fs::write(&first, &data).unwrap();
        let err = WalLog::open_with(&dir, 512).err().expect("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("finished segment"), "{err}");
    }

    #[test]
    fn a_segment_cut_short_while_being_made_is_dropped() {
        let (_tmp, dir) = wal_dir();
        {
            let log = WalLog::open_with(&dir, 512).unwrap();
            log.set_raw_meta("vote", b"v1").unwrap();
            append_n(&log, 1..=6, 200);
        }
        let mut names = segments(&dir);
        let next = u64::from_str_radix(names.pop().unwrap().trim_end_matches(".wal"), 16).unwrap() + 1;
        std::fs::write(dir.join(format!("{next:016x}.wal")), vec![0u8; 100]).unwrap();
        let log = WalLog::open_with(&dir, 512).unwrap();
        assert_eq!(indexes(&log).len(), 6);
        log.append(vec![entry(1, 7, "after")]).unwrap();
        drop(log);
        let log = WalLog::open_with(&dir, 512).unwrap();
        assert_eq!(indexes(&log).len(), 7);
        assert_eq!(log.raw_meta("vote").unwrap().as_deref(), Some(&b"v1"[..]));
    }
}

/// The leader's own appends report flushed at once; followers' only once on disk; nothing
/// is applied before it is on disk; a failed write stops everything that waits (ADR 0012).
mod leader_append {
    use super::*;
    use crate::kv::{Command, Op, Put, PutCondition};
    use crate::raft::types::{Entry, LogId, Vote};
    use crate::store::backend::LogOp;
    use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
    use openraft::{CommittedLeaderId, EntryPayload};
    use std::io;
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;

    /// A disk whose writes wait while `held`, and fail once `broken`.
    #[derive(Default)]
    struct Gated {
        log: MemLog,
        state: Mutex<(bool, bool)>,
        changed: Condvar,
    }

    impl Gated {
        fn set(&self, held: bool, broken: bool) {
            *self.state.lock().unwrap() = (held, broken);
            self.changed.notify_all();
        }
    }

    impl RawMeta for Gated {
        fn raw_meta(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
            self.log.raw_meta(name)
        }
        fn set_raw_meta(&self, name: &str, value: &[u8]) -> io::Result<()> {
            self.log.set_raw_meta(name, value)
        }
    }

    impl LogBackend for Gated {
        fn range(&self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
            self.log.range(start, end)
        }
        fn last(&self) -> io::Result<Option<LogId>> {
            self.log.last()
        }
        fn append(&self, entries: Vec<Entry>) -> io::Result<()> {
            self.log.append(entries)
        }
        fn truncate_from(&self, index: u64) -> io::Result<()> {
            self.log.truncate_from(index)
        }
        fn purge(&self, upto: LogId, encoded: Vec<u8>) -> io::Result<()> {
            self.log.purge(upto, encoded)
        }
        fn apply(&self, ops: Vec<LogOp>) -> io::Result<()> {
            let mut state = self.state.lock().unwrap();
            while state.0 {
                state = self.changed.wait(state).unwrap();
            }
            if state.1 {
                return Err(io::Error::other("the disk broke"));
            }
            drop(state);
            ops.into_iter().try_for_each(|op| match op {
                LogOp::Append(entries) => self.log.append(entries),
                LogOp::Truncate(index) => self.log.truncate_from(index),
                LogOp::Purge(upto, encoded) => self.log.purge(upto, encoded),
                LogOp::SetMeta(key, value) => self.log.set_meta(key, value),
            })
        }
        fn blocking(&self) -> bool {
            true
        }
    }

    fn entry(term: u64, leader: u64, index: u64) -> Entry {
        let key = format!("k{index}").into_bytes().into();
        let (ttl_ms, condition, fencing, client_ts) = (None, PutCondition::Always, None, None);
        let op = Op::Put(Put { key, value: b"v".to_vec().into(), ttl_ms, condition, fencing, client_ts });
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, leader), index),
            payload: EntryPayload::Normal(Command { client: None, now_ms: 1, op }),
        }
    }

    const SOON: Duration = Duration::from_millis(300);

    /// `entry`'s append does not report flushed while the disk holds its write, and does after.
    async fn append_waits_for_the_disk(disk: &Gated, log: &LogStore, entry: Entry, why: &str) {
        disk.set(true, false);
        let mut log = log.clone();
        let append = tokio::spawn(async move { log.blocking_append([entry]).await });
        tokio::time::sleep(SOON).await;
        assert!(!append.is_finished(), "{why}");
        disk.set(false, false);
        append.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_leader_goes_on_before_its_fsync_and_applies_after_it() {
        let disk = Arc::new(Gated::default());
        let mut log = LogStore::new(disk.clone(), 1).unwrap();
        let sm = SmStore::memory(Arc::new(EventHub::new(64, 1)));
        sm.apply_after(log.synced());
        let synced = log.synced();

        // Node 1 leads term 2: its own entry is reported flushed while the disk holds it.
        log.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        disk.set(true, false);
        tokio::time::timeout(SOON, log.blocking_append([entry(2, 1, 1)])).await.expect("reported at once").unwrap();
        assert!(tokio::time::timeout(SOON, synced.wait(1)).await.is_err(), "not on disk yet");
        let mut applying = sm.clone();
        let apply = tokio::spawn(async move { applying.apply([entry(2, 1, 1)]).await });
        tokio::time::sleep(SOON).await;
        assert!(!apply.is_finished(), "an entry is not applied before it is on disk");
        assert!(sm.read().kv.get(b"k1", 0).is_none());
        disk.set(false, false);
        apply.await.unwrap().unwrap();
        synced.wait(1).await.unwrap();
        assert!(sm.read().kv.get(b"k1", 0).is_some());

        // Node 2 leads term 3: node 1 is a follower, its append waits for the disk.
        log.save_vote(&Vote::new_committed(3, 2)).await.unwrap();
        append_waits_for_the_disk(&disk, &log, entry(3, 2, 2), "a follower reports flushed only once on disk").await;
        synced.wait(2).await.unwrap();

        // An entry of node 1's own old term, sent back by another leader, is a follower's too.
        log.save_vote(&Vote::new_committed(4, 1)).await.unwrap();
        append_waits_for_the_disk(&disk, &log, entry(2, 1, 3), "only the current term's entries are the leader's")
            .await;

        // A truncate takes back what is on disk.
        log.truncate(LogId::new(CommittedLeaderId::new(3, 2), 2)).await.unwrap();
        assert!(tokio::time::timeout(SOON, synced.wait(2)).await.is_err());
        synced.wait(1).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_write_stops_whatever_waits_for_it() {
        let disk = Arc::new(Gated::default());
        let mut log = LogStore::new(disk.clone(), 1).unwrap();
        let mut sm = SmStore::memory(Arc::new(EventHub::new(64, 1)));
        sm.apply_after(log.synced());
        log.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        disk.set(true, false);
        log.blocking_append([entry(2, 1, 1)]).await.unwrap();
        disk.set(false, true);
        assert!(log.synced().wait(1).await.is_err());
        assert!(sm.apply([entry(2, 1, 1)]).await.is_err(), "never applied");
        assert!(sm.read().kv.get(b"k1", 0).is_none());
    }
}
