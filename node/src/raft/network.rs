//! The Raft network over tonic: one cached channel per peer, a deadline on every RPC,
//! payloads bincode-encoded inside `bytes` fields.

use super::identity::{ClusterIdent, CLUSTER_HEADER};
use super::synced::Synced;
use super::types::{NodeId, NodeInfo, TypeConfig};
use crate::metrics::Metrics;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::LogId;
use serde::de::DeserializeOwned;
use serde::Serialize;
use statenode_proto::v1::peer_client::PeerClient;
use statenode_proto::v1::Blob;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
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
    /// Counts the AppendEntries this node sends and the commit-only ones it folds.
    pub metrics: Arc<Metrics>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerConn {
        PeerConn(Arc::new(Link {
            target,
            addr: node.peer_addr.clone(),
            channels: self.channels.clone(),
            ident: self.ident.clone(),
            synced: self.synced.clone(),
            metrics: self.metrics.clone(),
            stream: Mutex::default(),
        }))
    }
}

/// How long a commit-only AppendEntries waits for a message to ride on before it goes on
/// its own (ADR 0015).
const COMMIT_DELAY: Duration = Duration::from_millis(5);
/// A client whose entries a follower took this recently may fold a commit-only message.
const FRESH: Duration = Duration::from_millis(50);

/// openraft's client for one peer: one per replication stream, and a new one for every
/// election and every read round.
pub struct PeerConn(Arc<Link>);

struct Link {
    target: NodeId,
    addr: String,
    channels: Arc<PeerChannels>,
    ident: Arc<ClusterIdent>,
    synced: Synced,
    metrics: Arc<Metrics>,
    stream: Mutex<Stream>,
}

/// What a client knows of the AppendEntries it sent.
#[derive(Default)]
struct Stream {
    /// When the follower last took entries from this client (only a replication stream
    /// sends entries).
    took_entries: Option<Instant>,
    /// The highest commit index this client has delivered.
    told: Option<LogId<NodeId>>,
    /// AppendEntries sent: a folded commit goes out only if none went after it.
    sent: u64,
    /// The latest folded message, when it was folded, and `sent` then.
    folded: Option<(AppendEntriesRequest<TypeConfig>, Instant, u64)>,
    /// A task is waiting to send `folded` (one per client, however many commits fold).
    courier: bool,
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>;

impl Link {
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

    /// Sends one AppendEntries and notes what the follower took.
    async fn append(
        &self,
        req: AppendEntriesRequest<TypeConfig>,
        ttl: Duration,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        // The leader counts itself toward a commit before its own copy is on disk (ADR 0012):
        // a follower may apply what it is told is committed, so it is told once that copy is.
        if let Some(commit) = req.leader_commit {
            match tokio::time::timeout(ttl, self.synced.wait(commit.index)).await {
                Err(elapsed) => return Err(RPCError::Network(NetworkError::new(&elapsed))),
                Ok(Err(e)) => return Err(RPCError::Unreachable(Unreachable::new(&e))),
                Ok(Ok(())) => {}
            }
        }
        self.stream.lock().expect("poisoned").sent += 1;
        self.metrics.append_sent();
        let sent_at = Instant::now();
        let reply = self.call(Rpc::Append, &req, ttl).await;
        if let Ok(AppendEntriesResponse::Success) = reply {
            let mut s = self.stream.lock().expect("poisoned");
            s.told = s.told.max(req.leader_commit);
            if !req.entries.is_empty() {
                s.took_entries = Some(sent_at);
            }
        }
        reply
    }

    /// Folds a message that only brings a follower a new commit index into the next one
    /// to it (ADR 0015): openraft 0.9 sends one such message per commit and waits for its
    /// answer before it sends the next entries, so at one write in flight it doubled the
    /// round trips per write. Folded only on a replication stream whose entries the
    /// follower took within `FRESH` (so never a read round's or an election's message),
    /// answered as a heartbeat is, and sent after `COMMIT_DELAY` unless another message
    /// to the follower went first: an idle follower still learns every commit at once.
    fn fold_commit(self: &Arc<Self>, req: &AppendEntriesRequest<TypeConfig>, ttl: Duration) -> bool {
        let mut s = self.stream.lock().expect("poisoned");
        let fresh = s.took_entries.is_some_and(|t| t.elapsed() < FRESH);
        if !req.entries.is_empty() || req.leader_commit <= s.told || !fresh {
            return false;
        }
        s.folded = Some((req.clone(), Instant::now(), s.sent));
        if !std::mem::replace(&mut s.courier, true) {
            tokio::spawn(self.clone().courier(ttl));
        }
        self.metrics.commit_folded();
        true
    }

    /// Sends the latest folded commit once it has waited `COMMIT_DELAY` with no message
    /// to the follower after it. Its answer is the next message's to give: a conflict or a
    /// newer term reaches openraft through that one.
    async fn courier(self: Arc<Self>, ttl: Duration) {
        loop {
            let (due, req) = {
                let mut s = self.stream.lock().expect("poisoned");
                let due = match &s.folded {
                    Some((_, at, sent)) if *sent == s.sent => *at + COMMIT_DELAY,
                    _ => {
                        (s.folded, s.courier) = (None, false);
                        return;
                    }
                };
                let req = if due <= Instant::now() { s.folded.take().map(|(req, ..)| req) } else { None };
                (due, req)
            };
            match req {
                Some(req) => drop(self.append(req, ttl).await),
                None => tokio::time::sleep_until(due).await,
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerConn {
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        if self.0.fold_commit(&req, option.hard_ttl()) {
            return Ok(AppendEntriesResponse::Success);
        }
        self.0.append(req, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.0.call(Rpc::Snapshot, &req, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        req: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.0.call(Rpc::Vote, &req, option.hard_ttl()).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}
