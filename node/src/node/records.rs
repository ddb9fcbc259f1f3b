//! What a node's data dir holds besides Raft's own state: the node's id, the lost member it
//! replaced, an unfinished join; and opening the disks.

use crate::config::Config;
use crate::io::Io;
use crate::raft::membership::{Plan, Stored};
use crate::raft::types::NodeId;
use crate::store::backend::LogMeta;
use crate::store::{FileSlot, LogBackend, MemLog, RedbLog, RedbSm, SmDisk, SnapSm, WalLog};
use anyhow::Context;
use std::sync::Arc;

/// Stored next to the raft log so a data dir never runs under another id.
const NODE_ID_KEY: &str = "node_id";
/// The lost member's id this node replaced (`--replace-lost-member`): its `--id` still names
/// the old one (a StatefulSet ordinal), and that is not a mismatch.
const REPLACED_KEY: &str = "replaced_id";
/// The peer address a join goes through, kept until the join finished, so a node stopped
/// half-way (a learner) finishes it when it starts again.
const JOINING_KEY: &str = "joining_via";

/// Set while `statenode restore` writes the data dir, cleared once it is complete: a data dir
/// with it is half-written and never runs.
const RESTORING_KEY: &str = "restoring";

/// The log backend and, unless in memory mode, the state machine's disk.
pub(super) type Disks = (Arc<dyn LogBackend>, Option<Arc<dyn SmDisk>>);

pub(super) fn open_disks(config: &Config, io: &Io) -> anyhow::Result<Disks> {
    if let Some(disk) = &io.disk {
        return Ok((disk.log.clone(), Some(disk.sm.clone())));
    }
    if config.memory {
        return Ok((Arc::new(MemLog::default()), None));
    }
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    // A data dir made before the segment log keeps its redb log.
    let log: Arc<dyn LogBackend> = match dir.join("raft.redb") {
        old if old.exists() => Arc::new(RedbLog::open(&old).context("open raft.redb")?),
        _ => Arc::new(WalLog::open(&dir.join("raft.wal")).context("open the log in raft.wal")?),
    };
    // Likewise its state machine tables (ADR 0013: a new one keeps only snapshots).
    let sm: Arc<dyn SmDisk> = match dir.join("sm.redb") {
        old if old.exists() => Arc::new(RedbSm::open(&old).context("open sm.redb")?),
        _ => Arc::new(SnapSm::new(FileSlot::open(&dir.join("sm.snap")).context("open sm.snap")?)),
    };
    Ok((log, Some(sm)))
}

fn decode_id(b: &[u8]) -> anyhow::Result<NodeId> {
    Ok(u64::from_le_bytes(b.try_into().context("corrupt node id record")?))
}

/// What the disk says about this node before Raft starts.
pub(super) fn read_stored(log: &dyn LogBackend) -> anyhow::Result<Stored> {
    if log.raw_meta(RESTORING_KEY)?.is_some_and(|v| !v.is_empty()) {
        anyhow::bail!("this data dir holds an unfinished restore: empty it and run statenode restore again");
    }
    let id = log.raw_meta(NODE_ID_KEY)?.map(|b| decode_id(&b)).transpose()?;
    let replaced = log.raw_meta(REPLACED_KEY)?.map(|b| decode_id(&b)).transpose()?;
    let joining = log.raw_meta(JOINING_KEY)?.filter(|v| !v.is_empty());
    let joining = joining.map(|v| String::from_utf8(v).context("corrupt join record")).transpose()?;
    let has_state =
        log.meta(LogMeta::Vote)?.is_some() || log.last()?.is_some() || log.meta(LogMeta::LastPurged)?.is_some();
    Ok(Stored { id, replaced, has_state, joining })
}

/// Disk mode: remembers the id (and the lost member it replaces, and a join in progress)
/// before Raft writes anything under it.
pub(super) fn record_plan(log: &dyn LogBackend, stored: &Stored, plan: &Plan, given: NodeId) -> anyhow::Result<()> {
    if let Some(s) = stored.id.filter(|s| *s != plan.id) {
        anyhow::bail!("data dir belongs to node {s}, but the plan runs it as node {}", plan.id);
    }
    if stored.id.is_none() {
        if given != 0 && given != plan.id {
            log.set_raw_meta(REPLACED_KEY, &given.to_le_bytes())?;
        }
        record_id(log, plan.id)?;
    }
    if let (Some(via), None) = (plan.joins_via(), &stored.joining) {
        log.set_raw_meta(JOINING_KEY, via.as_bytes())?;
    }
    Ok(())
}

/// Marks the data dir as being restored (`true`), or the restore as complete.
pub(super) fn record_restoring(log: &dyn LogBackend, restoring: bool) -> anyhow::Result<()> {
    Ok(log.set_raw_meta(RESTORING_KEY, if restoring { b"1" } else { b"" })?)
}

/// Records the id this data dir runs under.
pub(super) fn record_id(log: &dyn LogBackend, id: NodeId) -> anyhow::Result<()> {
    Ok(log.set_raw_meta(NODE_ID_KEY, &id.to_le_bytes())?)
}

/// Once a join has finished, forgets the peer address it went through.
pub(super) fn forget_join(log: std::sync::Weak<dyn LogBackend>) -> impl FnOnce() {
    move || {
        if let Some(log) = log.upgrade() {
            if let Err(e) = log.set_raw_meta(JOINING_KEY, b"") {
                tracing::warn!(error = %e, "could not record the finished join");
            }
        }
    }
}
