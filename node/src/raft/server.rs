//! The peer gRPC service: Raft RPCs into openraft, and forwarded requests served locally.
//!
//! It starts before the node has decided its id and started Raft, so peers deciding how to
//! form the cluster can already ask "are you part of a cluster?" (a starting node says no).

use super::identity::{ClusterIdent, CLUSTER_HEADER};
use super::network::{decode, encode, TARGET_HEADER};
use super::peer::{PeerReply, PeerRequest, ServeLocal};
use super::types::{NodeId, NodeInfo, Raft, TypeConfig};
use super::Fail;
use crate::api::ClusterStatus;
use crate::error::Error;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use statenode_proto::v1::peer_server::Peer;
use statenode_proto::v1::Blob;
use std::sync::{Arc, OnceLock};
use tonic::{Request, Response, Status};

/// The running node, once Raft has started.
pub type Started = Arc<OnceLock<Running>>;

/// What the peer service needs of a started node.
pub struct Running {
    pub(super) raft: Raft,
    /// The id Raft runs under (the one decided at start, not necessarily `--id`).
    pub(super) id: NodeId,
    /// Serves forwarded requests (the node's handle).
    pub(super) local: Arc<dyn ServeLocal>,
}

impl Running {
    pub(crate) fn new(consensus: &super::consensus::Consensus, local: Arc<dyn ServeLocal>) -> Self {
        Self { raft: consensus.raft.clone(), id: consensus.id, local }
    }
}

pub struct PeerService {
    pub started: Started,
    /// Raft messages from another cluster are refused.
    pub ident: Arc<ClusterIdent>,
    /// The configured id and addresses, answered while starting.
    pub id: NodeId,
    pub me: NodeInfo,
}

fn bad_payload(e: bincode::Error) -> Status {
    Status::invalid_argument(format!("undecodable peer payload: {e}"))
}

impl PeerService {
    /// The running node; refuses a Raft RPC while starting or when addressed to another
    /// node id (a new process at a replaced member's address must not answer for it).
    fn raft_for<T>(&self, req: &Request<T>) -> Result<&Raft, Status> {
        let Some(Running { raft, id: me, .. }) = self.started.get() else {
            return Err(Status::unavailable("node is starting"));
        };
        let me = *me;
        let target =
            req.metadata().get(TARGET_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if let Some(t) = target.filter(|t| *t != me) {
            return Err(Status::unavailable(format!("this is node {me}, not node {t}")));
        }
        let cluster = req.metadata().get(CLUSTER_HEADER).and_then(|v| v.to_str().ok()).map(|v| v.parse::<u64>());
        let cluster = cluster.transpose().map_err(|_| Status::invalid_argument("bad cluster id"))?;
        self.ident.admit(cluster).map_err(Status::failed_precondition)?;
        Ok(raft)
    }

    /// What a node that has not started Raft yet can say.
    fn starting(&self, request: PeerRequest) -> Result<PeerReply, Error> {
        match request {
            PeerRequest::Hello => Ok(PeerReply::Hello(self.id, self.me.clone())),
            PeerRequest::Status => Ok(PeerReply::Status(ClusterStatus::starting(self.id))),
            _ => Err(Error::unavailable("node is starting")),
        }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let raft = self.raft_for(&req)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref()).map_err(bad_payload)?;
        Ok(Response::new(encode(&raft.append_entries(rpc).await)))
    }

    async fn vote(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let raft = self.raft_for(&req)?;
        let rpc: VoteRequest<NodeId> = decode(req.get_ref()).map_err(bad_payload)?;
        Ok(Response::new(encode(&raft.vote(rpc).await)))
    }

    async fn install_snapshot(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let raft = self.raft_for(&req)?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(req.get_ref()).map_err(bad_payload)?;
        Ok(Response::new(encode(&raft.install_snapshot(rpc).await)))
    }

    /// Serves a request another node forwarded; never forwards it again.
    async fn forward(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let request: PeerRequest = decode(req.get_ref()).map_err(bad_payload)?;
        let Some(Running { local, .. }) = self.started.get() else {
            return Ok(Response::new(encode(&self.starting(request))));
        };
        let result: Result<PeerReply, Error> = match local.serve_local(request).await {
            Ok(reply) => Ok(reply),
            Err(Fail::Err(e)) => Err(e),
            Err(Fail::Forward(_)) => Err(Error::Unavailable {
                reason: "leadership moved while forwarding".into(),
                leader_hint: local.leader_hint(),
            }),
        };
        Ok(Response::new(encode(&result)))
    }
}
