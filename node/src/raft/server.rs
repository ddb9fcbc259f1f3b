//! The peer gRPC service: Raft RPCs into openraft, and forwarded requests served locally.

use super::network::{decode, encode, TARGET_HEADER};
use super::types::{NodeId, Raft, TypeConfig};
use super::Fail;
use crate::error::Error;
use crate::handle::{NodeHandle, PeerReply, PeerRequest};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use statenode_proto::v1::peer_server::Peer;
use statenode_proto::v1::Blob;
use tonic::{Request, Response, Status};

pub struct PeerService {
    pub raft: Raft,
    pub handle: NodeHandle,
}

impl PeerService {
    /// Refuses a Raft RPC addressed to another node id (a replaced member's old address).
    fn check_target<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let me = self.handle.id();
        match req.metadata().get(TARGET_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()) {
            Some(target) if target != me => Err(Status::unavailable(format!("this is node {me}, not node {target}"))),
            _ => Ok(()),
        }
    }
}

fn bad_payload(e: bincode::Error) -> Status {
    Status::invalid_argument(format!("undecodable peer payload: {e}"))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        self.check_target(&req)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref()).map_err(bad_payload)?;
        Ok(Response::new(encode(&self.raft.append_entries(rpc).await)))
    }

    async fn vote(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        self.check_target(&req)?;
        let rpc: VoteRequest<NodeId> = decode(req.get_ref()).map_err(bad_payload)?;
        Ok(Response::new(encode(&self.raft.vote(rpc).await)))
    }

    async fn install_snapshot(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        self.check_target(&req)?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(req.get_ref()).map_err(bad_payload)?;
        Ok(Response::new(encode(&self.raft.install_snapshot(rpc).await)))
    }

    /// Serves a request another node forwarded; never forwards it again.
    async fn forward(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let request: PeerRequest = decode(req.get_ref()).map_err(bad_payload)?;
        let result: Result<PeerReply, Error> = match self.handle.serve_local(request).await {
            Ok(reply) => Ok(reply),
            Err(Fail::Err(e)) => Err(e),
            Err(Fail::Forward(_)) => Err(Error::Unavailable {
                reason: "leadership moved while forwarding".into(),
                leader_hint: self.handle.leader_hint(),
            }),
        };
        Ok(Response::new(encode(&result)))
    }
}
