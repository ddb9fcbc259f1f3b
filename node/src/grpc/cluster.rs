//! The native `statenode.v1.Cluster` service.

use super::convert::members;
use crate::handle::NodeHandle;
use statenode_proto::v1 as pb;
use statenode_proto::v1::cluster_server::Cluster;
use tonic::{Request, Response, Status};

pub struct ClusterService {
    pub handle: NodeHandle,
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(&self, _: Request<pb::StatusRequest>) -> Reply<pb::StatusResponse> {
        let s = self.handle.status().await;
        let leader_grpc_addr = s.leader().map(|m| m.grpc_addr.clone()).unwrap_or_default();
        Ok(Response::new(pb::StatusResponse {
            id: s.id,
            role: s.role,
            leader_id: s.leader_id.unwrap_or(0),
            term: s.term,
            last_log_index: s.last_log_index,
            applied_index: s.applied_index,
            members: members(s.members),
            leader_grpc_addr,
        }))
    }

    async fn members(&self, _: Request<pb::MembersRequest>) -> Reply<pb::MembersResponse> {
        let s = self.handle.status().await;
        Ok(Response::new(pb::MembersResponse { members: members(s.members), leader_id: s.leader_id.unwrap_or(0) }))
    }

    async fn join(&self, req: Request<pb::JoinRequest>) -> Reply<pb::JoinResponse> {
        let handle = self.handle.acting_for(super::caller(&req));
        let r = req.into_inner();
        let joined = handle.join(r.id, r.peer_addr, r.grpc_addr).await?;
        Ok(Response::new(pb::JoinResponse { members: members(joined) }))
    }

    async fn leave(&self, req: Request<pb::LeaveRequest>) -> Reply<pb::LeaveResponse> {
        let handle = self.handle.acting_for(super::caller(&req));
        let left = handle.leave(req.into_inner().id).await?;
        Ok(Response::new(pb::LeaveResponse { members: members(left) }))
    }

    type BackupStream = futures::stream::Iter<std::vec::IntoIter<Result<pb::BackupChunk, Status>>>;

    /// The backup file in 1 MiB chunks, the first one saying how big it is.
    async fn backup(&self, req: Request<pb::BackupRequest>) -> Reply<Self::BackupStream> {
        let (revision, snapshot) = self.handle.acting_for(super::caller(&req)).backup().await?;
        let file = bytes::Bytes::from(statenode_proto::backup::encode(revision, &snapshot));
        drop(snapshot);
        let total_bytes = file.len() as u64;
        let chunks: Vec<_> = (0..file.len())
            .step_by(BACKUP_CHUNK)
            .map(|at| {
                let data = file.slice(at..(at + BACKUP_CHUNK).min(file.len()));
                let (total_bytes, revision) = if at == 0 { (total_bytes, revision) } else { (0, 0) };
                Ok(pb::BackupChunk { data, total_bytes, revision })
            })
            .collect();
        Ok(Response::new(futures::stream::iter(chunks)))
    }
}

/// Bytes per backup message: well below gRPC's default 4 MiB message limit.
const BACKUP_CHUNK: usize = 1 << 20;
