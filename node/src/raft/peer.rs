//! The peer request protocol: what one node asks another over `Peer.Forward` — a client
//! request forwarded to the leader, or a question while the cluster forms.

use super::network::{decode, encode, PeerChannels};
use super::types::NodeInfo;
use super::Fail;
use crate::api::{ClusterStatus, ListPage, ListQuery, Member, NodeId};
use crate::error::Error;
use crate::kv::{Command, CommandResult, Entry};
use bytes::Bytes;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::time::Duration;

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
    /// The leader's applied index once a quorum confirmed its leadership: everything
    /// acknowledged before the call is at or below it (a read index for a whole-state read).
    ReadIndex,
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
    ReadIndex(u64),
}

/// What serves a forwarded request on this node, without forwarding it again: the node's
/// handle (`handle/route.rs`). Declared here so the peer server needs only this much.
pub trait ServeLocal: Send + Sync + 'static {
    fn serve_local(&self, req: PeerRequest) -> BoxFuture<'_, Result<PeerReply, Fail>>;
    /// Where the leader is, for the error a request gets when leadership moved.
    fn leader_hint(&self) -> Option<crate::error::LeaderHint>;
}

/// Sends `req` to the node at `addr` once and waits up to `timeout` for its answer.
pub(crate) async fn ask(
    channels: &PeerChannels,
    addr: &str,
    req: &PeerRequest,
    timeout: Duration,
) -> anyhow::Result<PeerReply> {
    let mut client = channels.client(addr).map_err(anyhow::Error::msg)?;
    let reply = tokio::time::timeout(timeout, client.forward(encode(req))).await??.into_inner();
    Ok(decode::<crate::error::Result<PeerReply>>(&reply)??)
}

/// A reply of the wrong kind for its request: a bug, never the caller's fault.
pub(crate) fn unexpected(reply: PeerReply) -> Error {
    Error::internal(format!("unexpected reply {reply:?}"))
}
