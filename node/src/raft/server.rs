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
use openraft::error::{InstallSnapshotError, RaftError, SnapshotMismatch};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest};
use openraft::SnapshotSegmentId;
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
    /// The snapshot being received: its id and how many bytes arrived (`admit_chunk`).
    pub snapshot: std::sync::Mutex<Option<(String, u64)>>,
}

/// The most bytes one snapshot may bring (the whole state is held in memory).
const MAX_SNAPSHOT_BYTES: u64 = 8 << 30;

/// Checks a snapshot chunk before openraft writes it at its offset into a growing buffer:
/// a chunk may start a snapshot (offset 0), continue it, or repeat bytes already received (a
/// retry), but never leave a hole — one chunk at a huge offset would make the node allocate
/// that much — and a snapshot stays under `MAX_SNAPSHOT_BYTES`. `Err` is the offset the
/// sender should have used (it starts over from 0 on being told).
fn admit_chunk(stream: &mut Option<(String, u64)>, id: &str, offset: u64, len: usize, done: bool) -> Result<(), u64> {
    let received = match stream {
        _ if offset == 0 => 0,
        Some((current, received)) if current == id => *received,
        _ => return Err(0),
    };
    if offset > received {
        return Err(received);
    }
    let Some(end) = offset.checked_add(len as u64).filter(|e| *e <= MAX_SNAPSHOT_BYTES) else {
        *stream = None;
        return Err(0);
    };
    *stream = (!done).then(|| (id.to_string(), received.max(end)));
    Ok(())
}

/// The answer to a refused chunk: openraft's "snapshot mismatch", on which the sender starts
/// the snapshot over from offset 0.
fn mismatch(
    id: &str,
    expect: u64,
    got: u64,
) -> Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
    let segment = |offset| SnapshotSegmentId { id: id.to_string(), offset };
    let m = SnapshotMismatch { expect: segment(expect), got: segment(got) };
    Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m)))
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
        let Some(t) = target else {
            return Err(Status::invalid_argument("a Raft message must name the node it is for"));
        };
        if t != me {
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
        let admitted = {
            let mut stream = self.snapshot.lock().expect("poisoned");
            admit_chunk(&mut stream, &rpc.meta.snapshot_id, rpc.offset, rpc.data.len(), rpc.done)
        };
        if let Err(expect) = admitted {
            tracing::warn!(snapshot = %rpc.meta.snapshot_id, offset = rpc.offset, expect, "refused a snapshot chunk");
            return Ok(Response::new(encode(&mismatch(&rpc.meta.snapshot_id, expect, rpc.offset))));
        }
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

#[cfg(test)]
mod tests {
    use super::admit_chunk;

    #[test]
    fn snapshot_chunks_may_not_leave_holes_or_grow_without_bound() {
        let mut s = None;
        // One chunk far past the start: refused before anything is allocated.
        assert_eq!(admit_chunk(&mut s, "a", 1 << 40, 10, false), Err(0));
        admit_chunk(&mut s, "a", 0, 100, false).unwrap();
        admit_chunk(&mut s, "a", 100, 100, false).unwrap();
        admit_chunk(&mut s, "a", 100, 100, false).expect("a retried chunk");
        assert_eq!(admit_chunk(&mut s, "a", 201, 1, false), Err(200), "a hole");
        assert_eq!(admit_chunk(&mut s, "b", 200, 1, false), Err(0), "another snapshot's middle");
        admit_chunk(&mut s, "a", 200, 5, true).unwrap();
        assert_eq!(s, None, "done ends the stream");
        assert_eq!(admit_chunk(&mut s, "a", 205, 1, false), Err(0));
        // A new snapshot (or a sender starting over) begins at 0 whatever came before.
        admit_chunk(&mut s, "c", 0, 1, false).unwrap();
        assert_eq!(s, Some(("c".to_string(), 1)));
        assert_eq!(admit_chunk(&mut s, "c", 1, usize::MAX, false), Err(0), "past the bound");
        assert_eq!(s, None);
    }
}
