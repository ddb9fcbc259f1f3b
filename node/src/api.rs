//! The vocabulary of `NodeHandle`: what front doors ask and what they get back. It sits
//! below the handle so that the consensus layer and the metrics can speak it too without
//! depending on the handle; `handle` re-exports all of it.

use crate::kv::{DeleteOutcome, Entry, Meta};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub type NodeId = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    Linearizable,
    /// The local state machine of the node asked.
    Stale,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListQuery {
    pub prefix: Bytes,
    /// Start strictly after this key.
    pub after: Bytes,
    pub limit: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListPage {
    pub entries: Vec<(Bytes, Entry)>,
    /// The last key of a full page; absent on the last page.
    pub next_cursor: Option<Bytes>,
    /// The applied index the page was read at.
    pub revision: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    /// The process incarnation the membership recorded for this member.
    pub incarnation: u64,
    pub peer_addr: String,
    pub grpc_addr: String,
    pub voter: bool,
    pub leader: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub id: NodeId,
    pub role: String,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    /// Log entries up to here were purged after a snapshot: a new node needs the snapshot.
    pub purged_index: u64,
    pub members: Vec<Member>,
}

impl ClusterStatus {
    /// What a node that has not started Raft yet reports: no members.
    pub fn starting(id: NodeId) -> Self {
        let role = "starting".into();
        Self {
            id,
            role,
            leader_id: None,
            term: 0,
            last_log_index: 0,
            applied_index: 0,
            purged_index: 0,
            members: vec![],
        }
    }

    /// The leader's entry, when this node knows it.
    pub fn leader(&self) -> Option<&Member> {
        self.members.iter().find(|m| Some(m.id) == self.leader_id)
    }
}

/// What a put did. Every write result carries `revision`: the log index it applied at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutDone {
    pub revision: u64,
    /// False when the put's condition did not hold.
    pub applied: bool,
    /// The key as the put left it (applied), or as it is (not applied; `None`: absent).
    pub meta: Option<Meta>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeleteDone {
    pub revision: u64,
    pub outcome: DeleteOutcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnDone {
    pub revision: u64,
    pub succeeded: bool,
    /// The index of the first op whose condition stopped the transaction.
    pub failed: Option<u32>,
}

/// A batch's items apply on their own: which ones did not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchDone {
    pub revision: u64,
    /// Indexes of the items whose condition did not hold (a delete of an absent key without
    /// a condition is not a failure).
    pub failed: Vec<usize>,
}
