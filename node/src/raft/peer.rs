//! The peer request protocol: what one node asks another over `Peer.Forward` — a client
//! request forwarded to the leader, or a question while the cluster forms.

use super::types::NodeInfo;
use super::Fail;
use crate::api::{ClusterStatus, ListPage, ListQuery, Member, NodeId};
use crate::error::Error;
use crate::kv::{Command, CommandResult, Entry};
use bytes::Bytes;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    Write(Command),
    Read(Vec<Bytes>),
    List(ListQuery),
    Join {
        id: NodeId,
        node: NodeInfo,
        /// A lost member this node replaces: removed once the new one is a voter.
        replaces: Option<NodeId>,
    },
    Leave {
        id: NodeId,
    },
    /// Served by the node asked, never forwarded.
    Status,
    /// Who are you? Answered even before the cluster forms (bootstrap).
    Hello,
    /// An MQTT message for the clients of the node asked (opaque here; `mqtt/relay.rs`).
    /// Served by the node asked, never forwarded.
    Deliver(Bytes),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerReply {
    Write(CommandResult),
    Read(Vec<Option<Entry>>),
    List(ListPage),
    Members(Vec<Member>),
    Status(ClusterStatus),
    Hello(NodeId, NodeInfo),
    Delivered,
}

/// What serves a forwarded request on this node, without forwarding it again: the node's
/// handle (`handle/route.rs`). Declared here so the peer server needs only this much.
pub trait ServeLocal: Send + Sync + 'static {
    fn serve_local(&self, req: PeerRequest) -> BoxFuture<'_, Result<PeerReply, Fail>>;
    /// Where the leader is, for the error a request gets when leadership moved.
    fn leader_hint(&self) -> Option<crate::error::LeaderHint>;
}

/// A reply of the wrong kind for its request: a bug, never the caller's fault.
pub(crate) fn unexpected(reply: PeerReply) -> Error {
    Error::internal(format!("unexpected reply {reply:?}"))
}
