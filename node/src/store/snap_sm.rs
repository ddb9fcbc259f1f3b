//! The state machine on disk as its latest snapshot alone (ADR 0013): `sm.snap`.
//!
//! An apply changes memory only. The Raft log already holds every entry, fsynced on a
//! quorum, and openraft purges it only up to a snapshot that is durable first (`build_snapshot`
//! and `install_snapshot` return after `save_snapshot` / `install`). So a restart loads the
//! snapshot and openraft applies the log after it again (up to the committed index it kept,
//! the rest when the leader tells it). Writing each apply to a B-tree as well (`sm.redb`,
//! still opened for a data dir made before this) cost a copy-on-write commit per batch on
//! every node: 13 % of all CPU at 64 clients.
//!
//! The file: `SNSNAP01`, then `[meta len u32][crc32 u32]` (little-endian; the CRC covers what
//! follows), the bincode `SnapshotMeta`, and the snapshot's bytes. It is replaced whole: a
//! new one is written beside it, synced, renamed over it, and the directory synced.

use super::sm_disk::{is_newer, Changes, Loaded, SmDisk};
use super::wal::{sync_dir, write_synced};
use crate::kv::{snapshot, StateMachine};
use crate::raft::types::{SnapshotMeta, StoredMembership};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

const MAGIC: &[u8; 8] = b"SNSNAP01";
const HEADER: usize = MAGIC.len() + 8;

/// Where the one snapshot lives: a file, or memory that a simulation keeps outside the node
/// so it survives a crash like a disk would. `write` returns once the bytes are durable.
pub trait Slot: Send + Sync + 'static {
    fn read(&self) -> io::Result<Option<Vec<u8>>>;
    fn write(&self, bytes: &[u8]) -> io::Result<()>;
    fn blocking(&self) -> bool;
}

/// `sm.snap` in a data dir.
pub struct FileSlot {
    path: PathBuf,
}

impl FileSlot {
    /// The slot at `path`; a half-written replacement left by a crash is removed.
    pub fn open(path: &Path) -> io::Result<Self> {
        let slot = Self { path: path.to_path_buf() };
        match std::fs::remove_file(slot.tmp()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        Ok(slot)
    }

    fn tmp(&self) -> PathBuf {
        self.path.with_extension("snap.tmp")
    }
}

impl Slot for FileSlot {
    fn read(&self) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(&self.path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write(&self, bytes: &[u8]) -> io::Result<()> {
        let took = Instant::now();
        let tmp = self.tmp();
        let mut f = std::fs::File::create(&tmp)?;
        write_synced(&mut f, bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            sync_dir(dir)?;
        }
        crate::metrics::disk_commit("sm.snap", took.elapsed());
        Ok(())
    }

    fn blocking(&self) -> bool {
        true
    }
}

/// The simulation's slot: durable as soon as written (a crash loses nothing of it).
#[derive(Default)]
pub struct MemSlot(Mutex<Option<Vec<u8>>>);

impl Slot for MemSlot {
    fn read(&self) -> io::Result<Option<Vec<u8>>> {
        Ok(self.0.lock().expect("poisoned").clone())
    }

    fn write(&self, bytes: &[u8]) -> io::Result<()> {
        *self.0.lock().expect("poisoned") = Some(bytes.to_vec());
        Ok(())
    }

    fn blocking(&self) -> bool {
        false
    }
}

/// The state machine's disk as one snapshot in a [`Slot`].
pub struct SnapSm<S> {
    slot: S,
    /// The kept snapshot's meta: an older one never replaces it.
    kept: Mutex<Option<SnapshotMeta>>,
}

fn corrupt(why: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("the state machine snapshot (sm.snap) is corrupt: {why}"))
}

fn frame(meta: &SnapshotMeta, data: &[u8]) -> io::Result<Vec<u8>> {
    let meta = bincode::serialize(meta).map_err(io::Error::other)?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&meta);
    crc.update(data);
    let mut out = Vec::with_capacity(HEADER + meta.len() + data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(data);
    Ok(out)
}

/// The meta and the snapshot's bytes of a framed file, checked whole.
fn unframe(mut bytes: Vec<u8>) -> io::Result<(SnapshotMeta, Vec<u8>)> {
    if bytes.len() < HEADER || &bytes[..MAGIC.len()] != MAGIC {
        return Err(corrupt("not a statenode snapshot file"));
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let (meta_len, crc) = (word(MAGIC.len()) as usize, word(MAGIC.len() + 4));
    if meta_len > bytes.len() - HEADER {
        return Err(corrupt("truncated"));
    }
    if crc32fast::hash(&bytes[HEADER..]) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    let meta = bincode::deserialize(&bytes[HEADER..HEADER + meta_len]).map_err(corrupt)?;
    let data = bytes.split_off(HEADER + meta_len);
    Ok((meta, data))
}

impl<S: Slot> SnapSm<S> {
    pub fn new(slot: S) -> Self {
        Self { slot, kept: Mutex::new(None) }
    }

    fn keep(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        self.slot.write(&frame(meta, data)?)?;
        *self.kept.lock().expect("poisoned") = Some(meta.clone());
        Ok(())
    }
}

impl<S: Slot> SmDisk for SnapSm<S> {
    fn keeps_applies(&self) -> bool {
        false
    }

    fn persist(&self, _batches: &[Changes]) -> io::Result<()> {
        Ok(())
    }

    fn install(&self, _sm: &StateMachine, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        self.keep(meta, data)
    }

    fn save_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        if !is_newer(meta, self.kept.lock().expect("poisoned").as_ref()) {
            return Ok(());
        }
        self.keep(meta, data)
    }

    fn load(&self) -> io::Result<Loaded> {
        let Some(bytes) = self.slot.read()? else {
            *self.kept.lock().expect("poisoned") = None;
            let membership = StoredMembership::default();
            return Ok(Loaded { kv: StateMachine::default(), last_applied: None, membership, snapshot: None });
        };
        let (meta, data) = unframe(bytes)?;
        let kv = snapshot::decode(&data, meta.last_log_id.map_or(0, |l| l.index)).map_err(corrupt)?;
        *self.kept.lock().expect("poisoned") = Some(meta.clone());
        let (last_applied, membership) = (meta.last_log_id, meta.last_membership.clone());
        Ok(Loaded { kv, last_applied, membership, snapshot: Some((meta, data)) })
    }

    fn blocking(&self) -> bool {
        self.slot.blocking()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::LogId;
    use openraft::CommittedLeaderId;

    fn meta(index: u64) -> SnapshotMeta {
        let last_log_id = Some(LogId::new(CommittedLeaderId::new(1, 1), index));
        SnapshotMeta { last_log_id, last_membership: StoredMembership::default(), snapshot_id: format!("s{index}") }
    }

    fn state(keys: &[&str]) -> Vec<u8> {
        let entries = keys.iter().map(|k| {
            let e = crate::kv::Entry {
                value: bytes::Bytes::copy_from_slice(k.as_bytes()),
                revision: 1,
                create_revision: 1,
                version: Default::default(),
                expires_at_ms: None,
                fencing: None,
            };
            (bytes::Bytes::copy_from_slice(k.as_bytes()), e)
        });
        let sm = StateMachine::from_parts(entries, Default::default(), 1, 1, Default::default(), Vec::new());
        snapshot::encode(&sm)
    }

    fn keys(l: &Loaded) -> Vec<String> {
        l.kv.entries().map(|(k, _)| String::from_utf8_lossy(k).into()).collect()
    }

    #[test]
    fn the_newest_snapshot_is_what_a_restart_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sm.snap");
        let disk = SnapSm::new(FileSlot::open(&path).unwrap());
        assert!(disk.load().unwrap().last_applied.is_none(), "nothing kept yet");
        disk.save_snapshot(&meta(10), &state(&["a", "b"])).unwrap();
        disk.save_snapshot(&meta(7), &state(&["old"])).unwrap();
        let again = SnapSm::new(FileSlot::open(&path).unwrap());
        let loaded = again.load().unwrap();
        assert_eq!(loaded.last_applied.map(|l| l.index), Some(10), "an older snapshot never replaces a newer");
        assert_eq!(keys(&loaded), ["a", "b"]);
        assert_eq!(loaded.snapshot.map(|(m, _)| m.snapshot_id), Some("s10".into()));
        // An install replaces whatever was kept (the leader's state wins).
        again.install(&StateMachine::default(), &meta(4), &state(&["c"])).unwrap();
        let loaded = SnapSm::new(FileSlot::open(&path).unwrap()).load().unwrap();
        assert_eq!((loaded.last_applied.map(|l| l.index), keys(&loaded)), (Some(4), vec!["c".to_string()]));
    }

    #[test]
    fn a_damaged_file_is_refused_with_a_clear_error_and_a_half_written_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sm.snap");
        SnapSm::new(FileSlot::open(&path).unwrap()).save_snapshot(&meta(3), &state(&["a"])).unwrap();
        let good = std::fs::read(&path).unwrap();
        // A crash during a replacement leaves the new file beside the old: never read.
        std::fs::write(dir.path().join("sm.snap.tmp"), b"half").unwrap();
        let loaded = SnapSm::new(FileSlot::open(&path).unwrap()).load().unwrap();
        assert_eq!(keys(&loaded), ["a"]);
        assert!(!dir.path().join("sm.snap.tmp").exists());
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let mut huge_meta = good.clone();
        huge_meta[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        for (bad, why) in [
            (flipped, "checksum mismatch"),
            (good[..good.len() - 1].to_vec(), "checksum mismatch"),
            (good[..10].to_vec(), "not a statenode snapshot file"),
            (huge_meta, "truncated"),
            (b"XXSNAP01 and more bytes".to_vec(), "not a statenode snapshot file"),
        ] {
            std::fs::write(&path, &bad).unwrap();
            let e = SnapSm::new(FileSlot::open(&path).unwrap()).load().err().expect("refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            assert!(e.to_string().contains(why), "{e}");
        }
    }
}
