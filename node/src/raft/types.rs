//! The openraft type configuration.

use crate::kv::{Command, CommandResult};
use serde::{Deserialize, Serialize};
use std::io::Cursor;

/// A node as the membership records it: where peers and clients reach it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Peer (Raft) address, `host:port`.
    pub peer_addr: String,
    /// Client gRPC address, so followers can point clients at the leader.
    pub grpc_addr: String,
    /// Random per process start: tells a member that took part in this cluster's bootstrap
    /// apart from a memory-mode restart at the same address and id (which lost its data).
    #[serde(default)]
    pub incarnation: u64,
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "peer={} grpc={}", self.peer_addr, self.grpc_addr)
    }
}

pub use crate::api::NodeId;

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = super::rt::SeededRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
pub type StorageError = openraft::StorageError<NodeId>;

/// Where a node restored from a backup starts: its log purged up to the backup's revision
/// (term 0, so the first term it elects itself in is later), and the state machine at that
/// index with a one-voter membership of its own.
pub fn restored(id: NodeId, me: NodeInfo, revision: u64) -> (LogId, SnapshotMeta) {
    use std::collections::{BTreeMap, BTreeSet};
    let log_id = LogId::new(openraft::CommittedLeaderId::new(0, id), revision);
    let membership = openraft::Membership::new(vec![BTreeSet::from([id])], BTreeMap::from([(id, me)]));
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: StoredMembership::new(Some(log_id), membership),
        snapshot_id: format!("restore-{revision}"),
    };
    (log_id, meta)
}
