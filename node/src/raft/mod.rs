//! openraft glue: type config, network, peer protocol and server, read barrier,
//! `Consensus` (start, write, join, leave, status) and membership (how a node enters a
//! cluster).
//! Nothing outside `raft/` and `store/` names an openraft type.

pub mod barrier;
pub mod consensus;
pub mod identity;
pub mod membership;
pub mod network;
pub mod peer;
mod proposer;
pub mod rt;
pub mod server;
pub mod synced;
pub mod types;

use crate::error::Error;
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use serde::{Deserialize, Serialize};
use types::{NodeId, NodeInfo};

/// Why consensus could not serve a request locally.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Fail {
    /// This node is not the leader; the leader, when known.
    Forward(Option<(NodeId, NodeInfo)>),
    Err(Error),
}

impl Fail {
    pub fn unavailable(reason: &str) -> Self {
        Fail::Err(Error::unavailable(reason))
    }

    fn forward(f: ForwardToLeader<NodeId, NodeInfo>) -> Self {
        Fail::Forward(f.leader_id.zip(f.leader_node))
    }

    pub fn from_read(e: RaftError<NodeId, CheckIsLeaderError<NodeId, NodeInfo>>) -> Self {
        match e {
            RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => Fail::forward(f),
            RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)) => {
                Fail::Err(Error::unavailable(format!("leadership not confirmed: {q}")))
            }
            RaftError::Fatal(f) => Fail::Err(Error::unavailable(format!("raft stopped: {f}"))),
        }
    }

    pub fn from_write(e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>) -> Self {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Fail::forward(f),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
                Fail::Err(Error::ConditionFailed(format!("membership change refused: {c}")))
            }
            RaftError::Fatal(f) => Fail::Err(Error::unavailable(format!("raft stopped: {f}"))),
        }
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Err(e)
    }
}
