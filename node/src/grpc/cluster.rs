//! The native `statenode.v1.Cluster` service.

use super::convert::member;
use super::status;
use crate::handle::NodeHandle;
use statenode_proto::v1 as pb;
use statenode_proto::v1::cluster_server::Cluster;
use tonic::{Request, Response, Status};

pub struct ClusterService {
    pub handle: NodeHandle,
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let s = self.handle.status().await;
        let leader_grpc_addr =
            s.members.iter().find(|m| Some(m.id) == s.leader_id).map(|m| m.grpc_addr.clone()).unwrap_or_default();
        Ok(Response::new(pb::StatusResponse {
            id: s.id,
            role: s.role,
            leader_id: s.leader_id.unwrap_or(0),
            term: s.term,
            last_log_index: s.last_log_index,
            applied_index: s.applied_index,
            members: s.members.into_iter().map(member).collect(),
            leader_grpc_addr,
        }))
    }

    async fn members(&self, _: Request<pb::MembersRequest>) -> Result<Response<pb::MembersResponse>, Status> {
        let s = self.handle.status().await;
        let members = s.members.into_iter().map(member).collect();
        Ok(Response::new(pb::MembersResponse { members, leader_id: s.leader_id.unwrap_or(0) }))
    }

    async fn join(&self, req: Request<pb::JoinRequest>) -> Result<Response<pb::JoinResponse>, Status> {
        let r = req.into_inner();
        let members = self.handle.join(r.id, r.peer_addr, r.grpc_addr).await.map_err(status)?;
        Ok(Response::new(pb::JoinResponse { members: members.into_iter().map(member).collect() }))
    }

    async fn leave(&self, req: Request<pb::LeaveRequest>) -> Result<Response<pb::LeaveResponse>, Status> {
        let members = self.handle.leave(req.into_inner().id).await.map_err(status)?;
        Ok(Response::new(pb::LeaveResponse { members: members.into_iter().map(member).collect() }))
    }
}
