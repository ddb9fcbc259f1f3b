//! `statenode restore`: seeds a new cluster's first node from a backup file.

use super::records::{open_disks, read_stored, record_id, record_restoring};
use crate::config::Config;
use crate::io::Io;
use crate::kv::snapshot;
use crate::raft::identity::ClusterIdent;
use crate::raft::types::{restored, NodeId, NodeInfo};
use anyhow::Context;

/// What a restore wrote.
#[derive(Debug)]
pub struct Restored {
    pub id: NodeId,
    pub revision: u64,
    pub keys: usize,
    pub checksum: String,
}

/// Verifies `file` (a `statectl backup`) and writes `config.data_dir` so that `statenode
/// serve` with the same id and addresses starts a one-node cluster holding the backup's
/// keys, values and revisions; later writes get higher revisions. The cluster is a new one
/// (its own cluster id): the nodes of the cluster the backup came from never talk to it.
/// Other nodes join it with `statenode join`.
pub fn restore(config: &Config, file: &[u8]) -> anyhow::Result<Restored> {
    anyhow::ensure!(!config.memory, "restore writes a data dir; a memory-mode node keeps none");
    let backup = statenode_proto::backup::decode(file)?;
    let kv = snapshot::decode(backup.snapshot, backup.revision).context("the backup's snapshot")?;
    let dir = &config.data_dir;
    let (log, sm) = open_disks(config, &Io::real())?;
    let sm = sm.expect("disk mode has a state machine disk");
    let stored = read_stored(log.as_ref())?;
    let holds = stored.has_state || stored.id.is_some() || sm.load()?.last_applied.is_some();
    anyhow::ensure!(!holds, "{} already holds a node's data: restore into an empty data dir", dir.display());
    let id = if config.id != 0 { config.id } else { 1 };
    let me = NodeInfo { peer_addr: config.peer_advertise(), grpc_addr: config.grpc_advertise(), incarnation: 0 };
    let (log_id, meta) = restored(id, me, backup.revision);
    // Marked until complete: a restore cut short leaves a data dir that refuses to run.
    record_restoring(log.as_ref(), true)?;
    sm.install(&kv, &meta, backup.snapshot).context("write the state machine")?;
    let encoded = bincode::serialize(&log_id).context("encode the log position")?;
    log.purge(log_id, encoded).context("write the log position")?;
    record_id(log.as_ref(), id)?;
    let cluster: u64 = rand::Rng::gen_range(&mut crate::raft::rt::rng(), 1..u64::MAX);
    ClusterIdent::load(log.clone())?.set(cluster)?;
    record_restoring(log.as_ref(), false)?;
    Ok(Restored { id, revision: backup.revision, keys: kv.len(), checksum: backup.checksum })
}
