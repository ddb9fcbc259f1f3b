//! The Raft log as segment files (`raft.wal/`), etcd's design: records appended in order,
//! one `fdatasync` per batch, each segment filled with zeros when made, so a sync writes
//! the records and no file metadata. A redb commit rewrites tree pages all over its file and
//! took 0.6–1 ms here; an append and `fdatasync` takes about 0.2 ms.
//!
//! A record is `[len u32][crc32 u32][kind u8][payload: len bytes]` (little-endian; the CRC
//! covers kind and payload). Kinds: an entry (bincode), a truncate (`[index, ∞)`), a purge
//! (`[0, index]`, and the encoded last-purged log id), a metadata record (name, value).
//! Replaying the segments in order rebuilds the index (entry → segment, offset) and the
//! metadata. A new segment starts with every metadata record, so a segment whose entries
//! are all purged can be deleted. At open, the last segment ends at its first record that
//! is zero, cut short or fails its CRC (a torn write: the batch was never acknowledged), and
//! what follows is zeroed; a bad record in an earlier segment is corruption, and the node
//! refuses to start.
//!
//! The next segment's zeros are written ahead, by a thread started once the current segment
//! is half full (`spare.wal.tmp`, etcd's file pipeline): a rotation then writes the opening
//! records into that file and renames it. Made on the write path, 32 MiB of zeros and their
//! sync stalled every write of the node for 40 ms or more.

use super::backend::{LogBackend, LogOp};
use crate::raft::identity::RawMeta;
use crate::raft::types::{Entry, LogId};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// A segment's size: a new one is started once the current one holds this much.
const SEGMENT_BYTES: u64 = 32 << 20;
const HEADER: usize = 9;
/// The largest record accepted when reading (a peer message is bounded well below).
const MAX_RECORD: usize = 1 << 30;

const ENTRY: u8 = 1;
const TRUNCATE: u8 = 2;
const PURGE: u8 = 3;
const META: u8 = 4;

/// Where an entry's bytes are.
#[derive(Clone, Copy)]
struct Loc {
    log_id: LogId,
    segment: u64,
    offset: u64,
    len: usize,
}

/// What replaying the records gives: read under a lock, changed only after a sync.
#[derive(Default)]
struct Index {
    entries: BTreeMap<u64, Loc>,
    meta: BTreeMap<String, Vec<u8>>,
    /// Every segment file by sequence number, with the highest entry index written to it.
    segments: BTreeMap<u64, (Arc<File>, u64)>,
}

/// The segment being written.
struct Tail {
    seq: u64,
    file: Arc<File>,
    end: u64,
}

/// The next segment's zero-filled file, while it is being made.
const SPARE: &str = "spare.wal.tmp";

pub struct WalLog {
    dir: PathBuf,
    segment_bytes: u64,
    /// The thread making the spare, if one was started for the current segment.
    spare: Mutex<Option<std::thread::JoinHandle<io::Result<File>>>>,
    /// One writer at a time (the log's writer thread; startup and restore records).
    tail: Mutex<Tail>,
    index: RwLock<Index>,
}

/// One change, as written.
enum Rec {
    Entry(Entry),
    Truncate(u64),
    Purge(LogId, Vec<u8>),
    Meta(String, Vec<u8>),
}

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.wal"))
}

pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Appends `rec`'s record to `buf`; for an entry, returns its payload's offset in `buf`.
fn encode(buf: &mut Vec<u8>, rec: &Rec) -> io::Result<Option<usize>> {
    let (kind, payload) = match rec {
        Rec::Entry(e) => (ENTRY, bincode::serialize(e).map_err(io::Error::other)?),
        Rec::Truncate(index) => (TRUNCATE, index.to_le_bytes().to_vec()),
        Rec::Purge(upto, encoded) => (PURGE, [&upto.index.to_le_bytes()[..], encoded].concat()),
        Rec::Meta(name, value) => {
            let len = u16::try_from(name.len()).map_err(|_| io::Error::other("metadata name too long"))?;
            (META, [&len.to_le_bytes()[..], name.as_bytes(), value].concat())
        }
    };
    let len = u32::try_from(payload.len()).map_err(|_| io::Error::other("log record too large"))?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(&payload);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.push(kind);
    let at = buf.len();
    buf.extend_from_slice(&payload);
    Ok((kind == ENTRY).then_some(at))
}

/// The record at `data[at..]`: `(kind, payload)`, or `None` at the end of the records (zeros,
/// a record cut short, a CRC that does not match).
fn decode(data: &[u8], at: usize) -> Option<(u8, &[u8])> {
    let head = data.get(at..at + HEADER)?;
    let len = u32::from_le_bytes(head[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(head[4..8].try_into().ok()?);
    let kind = head[8];
    if kind == 0 || len > MAX_RECORD {
        return None;
    }
    let payload = data.get(at + HEADER..at + HEADER + len)?;
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    h.update(payload);
    (h.finalize() == crc).then_some((kind, payload))
}

/// The first `N` bytes of a payload.
fn head<const N: usize>(p: &[u8]) -> io::Result<[u8; N]> {
    p.get(..N).and_then(|b| b.try_into().ok()).ok_or_else(|| corrupt("short record".into()))
}

impl Index {
    /// Applies one record (replayed or just written) at `segment`/`offset` (its payload).
    fn apply(&mut self, rec: Rec, segment: u64, offset: u64, len: usize) {
        match rec {
            Rec::Entry(e) => {
                let index = e.log_id.index;
                self.entries.insert(index, Loc { log_id: e.log_id, segment, offset, len });
                if let Some((_, top)) = self.segments.get_mut(&segment) {
                    *top = (*top).max(index);
                }
            }
            Rec::Truncate(index) => drop(self.entries.split_off(&index)),
            Rec::Purge(upto, encoded) => {
                self.entries = self.entries.split_off(&(upto.index + 1));
                self.meta.insert(super::backend::LogMeta::LastPurged.name().into(), encoded);
            }
            Rec::Meta(name, value) => drop(self.meta.insert(name, value)),
        }
    }

    /// The purged index, from the last-purged record.
    fn purged(&self) -> Option<u64> {
        let encoded = self.meta.get(super::backend::LogMeta::LastPurged.name())?;
        bincode::deserialize::<LogId>(encoded).ok().map(|l| l.index)
    }
}

/// Parses one record's payload; entries are decoded only for their log id.
fn parse(kind: u8, payload: &[u8]) -> io::Result<Rec> {
    Ok(match kind {
        ENTRY => Rec::Entry(bincode::deserialize(payload).map_err(|e| corrupt(format!("log entry: {e}")))?),
        TRUNCATE => Rec::Truncate(u64::from_le_bytes(head(payload)?)),
        PURGE => {
            let index = u64::from_le_bytes(head(payload)?);
            let encoded = payload[8..].to_vec();
            let upto: LogId = bincode::deserialize(&encoded).map_err(|e| corrupt(format!("purge record: {e}")))?;
            if upto.index != index {
                return Err(corrupt("purge record disagrees with itself".into()));
            }
            Rec::Purge(upto, encoded)
        }
        META => {
            let len = u16::from_le_bytes(head(payload)?) as usize;
            let name = payload.get(2..2 + len).ok_or_else(|| corrupt("short record".into()))?;
            let name = String::from_utf8(name.to_vec()).map_err(|_| corrupt("metadata name is not UTF-8".into()))?;
            Rec::Meta(name, payload[2 + len..].to_vec())
        }
        other => return Err(corrupt(format!("unknown log record kind {other}"))),
    })
}

/// Makes a file of `size` zero bytes at `path` (`create_new`: never over another), synced.
fn zero_file(path: &Path, size: u64) -> io::Result<File> {
    let mut file = OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        write_synced(&mut file, &zeros[..n])?;
        left -= n as u64;
    }
    file.sync_all()?;
    Ok(file)
}

/// Writes `bytes` a MiB at a time, each on disk before the next. One large write synced at
/// the end put all of it ahead of the log's own small syncs in the disk's queue: a 32 MiB
/// segment made ahead, or a 12 MB snapshot, held the log's fsyncs for 100–400 ms (the p99
/// of puts at 64 clients). A MiB holds them a few ms at most.
pub(super) fn write_synced(file: &mut File, bytes: &[u8]) -> io::Result<()> {
    for chunk in bytes.chunks(1 << 20) {
        file.write_all(chunk)?;
        file.sync_data()?;
    }
    Ok(())
}

/// Makes segment `seq`, zero-filled, holding `head` at its start; durable when it returns.
fn create_segment(dir: &Path, seq: u64, size: u64, head: &[u8]) -> io::Result<File> {
    let file = zero_file(&segment_path(dir, seq), size.max(head.len() as u64))?;
    file.write_all_at(head, 0)?;
    file.sync_data()?;
    sync_dir(dir)?;
    Ok(file)
}

/// Makes segment `seq` out of the spare file: `head` written at its start, then renamed;
/// durable when it returns.
fn segment_from_spare(dir: &Path, seq: u64, spare: File, head: &[u8]) -> io::Result<File> {
    spare.write_all_at(head, 0)?;
    spare.sync_data()?;
    std::fs::rename(dir.join(SPARE), segment_path(dir, seq))?;
    sync_dir(dir)?;
    Ok(spare)
}

impl WalLog {
    /// Opens (or makes) the log in directory `dir`.
    pub fn open(dir: &Path) -> io::Result<Self> {
        Self::open_with(dir, SEGMENT_BYTES)
    }

    /// `open`, with segments of `segment_bytes`.
    pub fn open_with(dir: &Path, segment_bytes: u64) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        // A spare left by a crash or a stop may be half made: make it again when needed.
        match std::fs::remove_file(dir.join(SPARE)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut seqs = Vec::new();
        for item in std::fs::read_dir(dir)? {
            let name = item?.file_name();
            let name = name.to_string_lossy();
            if let Some(hex) = name.strip_suffix(".wal") {
                seqs.push(u64::from_str_radix(hex, 16).map_err(|_| corrupt(format!("stray file {name} in the log")))?);
            }
        }
        seqs.sort_unstable();
        // A crash while a new segment was being made leaves it without its opening records:
        // drop it (the one before still holds them); the next write makes it again.
        if let [.., _, last] = seqs[..] {
            let data = std::fs::read(segment_path(dir, last))?;
            if decode(&data, 0).is_none() {
                tracing::warn!(seq = last, "dropping a log segment left unfinished by a crash");
                std::fs::remove_file(segment_path(dir, last))?;
                sync_dir(dir)?;
                seqs.pop();
            }
        }
        let mut index = Index::default();
        let mut tail = None;
        for (i, &seq) in seqs.iter().enumerate() {
            let path = segment_path(dir, seq);
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let data = std::fs::read(&path)?;
            index.segments.insert(seq, (Arc::new(file), 0));
            let mut at = 0;
            while let Some((kind, payload)) = decode(&data, at) {
                let rec = parse(kind, payload).map_err(|e| corrupt(format!("{}: {e}", path.display())))?;
                index.apply(rec, seq, (at + HEADER) as u64, payload.len());
                at += HEADER + payload.len();
            }
            let last = i + 1 == seqs.len();
            if !last && data[at..].iter().any(|b| *b != 0) {
                return Err(corrupt(format!("{}: a bad record at offset {at} in a finished segment", path.display())));
            }
            if last {
                let file = index.segments[&seq].0.clone();
                // A torn batch: zero what follows the last good record, so no stale record
                // can ever follow the next one written there.
                if data[at..].iter().any(|b| *b != 0) {
                    tracing::warn!(segment = %path.display(), offset = at, "the log ends in a torn write; cutting it there");
                    file.write_all_at(&vec![0u8; data.len() - at], at as u64)?;
                    file.sync_data()?;
                }
                tail = Some(Tail { seq, file, end: at as u64 });
            }
        }
        let tail = match tail {
            Some(t) => t,
            None => {
                let file = Arc::new(create_segment(dir, 1, segment_bytes, &[])?);
                index.segments.insert(1, (file.clone(), 0));
                Tail { seq: 1, file, end: 0 }
            }
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            segment_bytes,
            spare: Mutex::new(None),
            tail: Mutex::new(tail),
            index: RwLock::new(index),
        })
    }

    /// Writes `recs` in order, one sync for all; returns once they are durable and readable.
    fn write(&self, recs: Vec<Rec>) -> io::Result<()> {
        if recs.is_empty() {
            return Ok(());
        }
        let mut tail = self.tail.lock().expect("poisoned");
        if tail.end >= self.segment_bytes {
            self.rotate(&mut tail)?;
        }
        let mut buf = Vec::new();
        let mut at = Vec::with_capacity(recs.len());
        for rec in &recs {
            let start = buf.len();
            let payload = encode(&mut buf, rec)?;
            at.push((tail.end + (start + HEADER) as u64, buf.len() - start - HEADER, payload.is_some()));
        }
        let took = Instant::now();
        tail.file.write_all_at(&buf, tail.end)?;
        tail.file.sync_data()?;
        crate::metrics::disk_commit("raft.wal", took.elapsed());
        tail.end += buf.len() as u64;
        if tail.end >= self.segment_bytes / 2 {
            self.prepare_spare();
        }
        let mut index = self.index.write().expect("poisoned");
        let mut purged = false;
        for (rec, (offset, len, _)) in recs.into_iter().zip(at) {
            purged |= matches!(rec, Rec::Purge(..));
            index.apply(rec, tail.seq, offset, len);
        }
        if purged {
            self.drop_purged(&mut index, tail.seq);
        }
        Ok(())
    }

    /// Starts the next segment, opening with every metadata record.
    fn rotate(&self, tail: &mut Tail) -> io::Result<()> {
        let mut head = Vec::new();
        let meta: Vec<(String, Vec<u8>)> =
            self.index.read().expect("poisoned").meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (name, value) in meta {
            encode(&mut head, &Rec::Meta(name, value))?;
        }
        let seq = tail.seq + 1;
        let spare = match self.spare.lock().expect("poisoned").take().map(|t| t.join()) {
            Some(Ok(Ok(file))) => Some(file),
            Some(Ok(Err(e))) => {
                tracing::warn!(error = %e, "could not make the next log segment ahead; making it now");
                None
            }
            _ => None,
        };
        let file = match spare {
            Some(f) if head.len() as u64 <= self.segment_bytes => segment_from_spare(&self.dir, seq, f, &head)?,
            _ => {
                let _ = std::fs::remove_file(self.dir.join(SPARE));
                create_segment(&self.dir, seq, self.segment_bytes, &head)?
            }
        };
        let file = Arc::new(file);
        self.index.write().expect("poisoned").segments.insert(seq, (file.clone(), 0));
        *tail = Tail { seq, file, end: head.len() as u64 };
        Ok(())
    }

    /// Starts making the spare, unless it is being made already.
    fn prepare_spare(&self) {
        let mut spare = self.spare.lock().expect("poisoned");
        if spare.is_some() {
            return;
        }
        let (path, size) = (self.dir.join(SPARE), self.segment_bytes);
        match std::thread::Builder::new().name("statenode-wal-spare".into()).spawn(move || zero_file(&path, size)) {
            Ok(t) => *spare = Some(t),
            Err(e) => tracing::warn!(error = %e, "could not start making the next log segment ahead"),
        }
    }

    /// Deletes the finished segments whose every entry is purged.
    fn drop_purged(&self, index: &mut Index, current: u64) {
        let Some(purged) = index.purged() else { return };
        let gone: Vec<u64> = index
            .segments
            .iter()
            .filter(|(seq, (_, top))| **seq < current && *top <= purged)
            .map(|(s, _)| *s)
            .collect();
        for seq in gone {
            index.segments.remove(&seq);
            if let Err(e) = std::fs::remove_file(segment_path(&self.dir, seq)) {
                tracing::warn!(error = %e, seq, "could not delete a purged log segment");
            }
        }
    }
}

impl Drop for WalLog {
    /// Waits for the spare being made, so the directory is free to open again at once.
    fn drop(&mut self) {
        if let Some(t) = self.spare.lock().expect("poisoned").take() {
            let _ = t.join();
        }
    }
}

impl LogBackend for WalLog {
    fn range(&self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        if start >= end {
            return Ok(Vec::new());
        }
        let index = self.index.read().expect("poisoned");
        let mut out = Vec::new();
        for loc in index.entries.range(start..end).map(|(_, l)| *l) {
            let (file, _) =
                index.segments.get(&loc.segment).ok_or_else(|| corrupt("entry in a deleted segment".into()))?;
            let mut buf = vec![0u8; loc.len];
            file.read_exact_at(&mut buf, loc.offset)?;
            out.push(bincode::deserialize(&buf).map_err(|e| corrupt(format!("log entry {}: {e}", loc.log_id.index)))?);
        }
        Ok(out)
    }

    fn last(&self) -> io::Result<Option<LogId>> {
        Ok(self.index.read().expect("poisoned").entries.last_key_value().map(|(_, l)| l.log_id))
    }

    fn append(&self, entries: Vec<Entry>) -> io::Result<()> {
        self.write(entries.into_iter().map(Rec::Entry).collect())
    }

    fn truncate_from(&self, index: u64) -> io::Result<()> {
        self.write(vec![Rec::Truncate(index)])
    }

    fn purge(&self, upto: LogId, encoded: Vec<u8>) -> io::Result<()> {
        self.write(vec![Rec::Purge(upto, encoded)])
    }

    fn apply(&self, ops: Vec<LogOp>) -> io::Result<()> {
        let mut recs = Vec::new();
        for op in ops {
            match op {
                LogOp::Append(entries) => recs.extend(entries.into_iter().map(Rec::Entry)),
                LogOp::Truncate(index) => recs.push(Rec::Truncate(index)),
                LogOp::Purge(upto, encoded) => recs.push(Rec::Purge(upto, encoded)),
                LogOp::SetMeta(key, value) => recs.push(Rec::Meta(key.name().into(), value)),
            }
        }
        self.write(recs)
    }

    fn blocking(&self) -> bool {
        true
    }
}

impl RawMeta for WalLog {
    fn raw_meta(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        Ok(self.index.read().expect("poisoned").meta.get(name).cloned())
    }

    fn set_raw_meta(&self, name: &str, value: &[u8]) -> io::Result<()> {
        self.write(vec![Rec::Meta(name.into(), value.to_vec())])
    }
}
