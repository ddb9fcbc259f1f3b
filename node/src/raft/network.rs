//! The Raft network over tonic: one cached channel per peer, a deadline on every RPC,
//! payloads bincode-encoded inside `bytes` fields.

use super::identity::{ClusterIdent, CLUSTER_HEADER};
use super::synced::Synced;
use super::types::{NodeId, NodeInfo, TypeConfig};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use statenode_proto::v1::peer_client::PeerClient;
use statenode_proto::v1::Blob;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;

/// Metadata naming the node id a Raft RPC is meant for.
pub const TARGET_HEADER: &str = statenode_proto::headers::TARGET;

/// Raft messages (snapshot chunks) may be large; client and server agree on this bound.
pub const MAX_PEER_MESSAGE: usize = 256 * 1024 * 1024;

/// Makes lazily-connecting gRPC channels to `host:port` addresses: real TCP (`io`), or a
/// simulated network (the chaos suite).
pub trait Dialer: Send + Sync + 'static {
    fn channel(&self, addr: &str) -> Result<Channel, String>;
}

/// Metadata carrying the cluster secret on every peer RPC (`Config::cluster_secret`).
pub const SECRET_HEADER: &str = "x-statenode-cluster-secret";

/// Adds the cluster secret, when there is one, to every outgoing peer RPC.
#[derive(Clone)]
pub struct WithSecret(Option<MetadataValue<Ascii>>);

impl Interceptor for WithSecret {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert(SECRET_HEADER, v.clone());
        }
        Ok(req)
    }
}

/// A client for one peer, sending the cluster secret.
pub type PeerRpc = PeerClient<InterceptedService<Channel, WithSecret>>;

/// One lazily-connected channel per peer address, shared by Raft and forwarding.
/// openraft 0.9 asks for a new client on every read round, so reuse matters.
pub struct PeerChannels {
    cache: Mutex<HashMap<String, Channel>>,
    dialer: Arc<dyn Dialer>,
    secret: WithSecret,
}

impl PeerChannels {
    /// `secret` is a validated `Config::cluster_secret` (visible ASCII).
    pub fn new(dialer: Arc<dyn Dialer>, secret: Option<&str>) -> Self {
        let secret = WithSecret(secret.map(|s| s.parse().expect("the config checked the secret is visible ASCII")));
        Self { cache: Mutex::default(), dialer, secret }
    }

    pub fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut cache = self.cache.lock().expect("poisoned");
        if let Some(ch) = cache.get(addr) {
            return Ok(ch.clone());
        }
        let ch = self.dialer.channel(addr)?;
        cache.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    pub fn client(&self, addr: &str) -> Result<PeerRpc, String> {
        Ok(PeerClient::with_interceptor(self.channel(addr)?, self.secret.clone())
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE))
    }
}

pub fn encode<T: Serialize>(v: &T) -> Blob {
    Blob { data: bincode::serialize(v).expect("in-memory serialization cannot fail").into() }
}

pub fn decode<T: DeserializeOwned>(b: &Blob) -> Result<T, bincode::Error> {
    bincode::deserialize(&b.data)
}

#[derive(Clone)]
pub struct Network {
    pub channels: Arc<PeerChannels>,
    pub ident: Arc<ClusterIdent>,
    /// This node's log on disk: a commit index goes to followers only once it covers it.
    pub synced: Synced,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerConn {
        PeerConn {
            target,
            addr: node.peer_addr.clone(),
            channels: self.channels.clone(),
            ident: self.ident.clone(),
            synced: self.synced.clone(),
        }
    }
}

pub struct PeerConn {
    target: NodeId,
    addr: String,
    channels: Arc<PeerChannels>,
    ident: Arc<ClusterIdent>,
    synced: Synced,
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>;

impl PeerConn {
    async fn call<Req, Resp, E>(&self, rpc: Rpc, req: &Req, ttl: Duration) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut client = self
            .channels
            .client(&self.addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e))))?;
        let mut blob = tonic::Request::new(encode(req));
        // The receiver checks it is the node this message is for: a new process at a
        // reused address must not answer (or vote) for the member that lived there.
        blob.metadata_mut().insert(TARGET_HEADER, self.target.into());
        if let Some(cluster) = self.ident.get() {
            blob.metadata_mut().insert(CLUSTER_HEADER, cluster.into());
        }
        let fut = async {
            match rpc {
                Rpc::Append => client.append_entries(blob).await,
                Rpc::Vote => client.vote(blob).await,
                Rpc::Snapshot => client.install_snapshot(blob).await,
            }
        };
        let reply = match tokio::time::timeout(ttl, fut).await {
            Err(elapsed) => return Err(RPCError::Network(NetworkError::new(&elapsed))),
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                return Err(RPCError::Unreachable(Unreachable::new(&status)))
            }
            Ok(Err(status)) => return Err(RPCError::Network(NetworkError::new(&status))),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConn {
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        // The leader counts itself toward a commit before its own copy is on disk (ADR 0012):
        // a follower may apply what it is told is committed, so it is told once that copy is.
        if let Some(commit) = req.leader_commit {
            let synced = tokio::time::timeout(option.hard_ttl(), self.synced.wait(commit.index)).await;
            match synced {
                Err(elapsed) => return Err(RPCError::Network(NetworkError::new(&elapsed))),
                Ok(Err(e)) => return Err(RPCError::Unreachable(Unreachable::new(&e))),
                Ok(Ok(())) => {}
            }
        }
        self.call(Rpc::Append, &req, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(Rpc::Snapshot, &req, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        req: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call(Rpc::Vote, &req, option.hard_ttl()).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}
