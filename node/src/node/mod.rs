//! `Node::start`: opens storage, starts Raft, the servers and the background tasks;
//! bootstraps or joins; shuts everything down gracefully.

use crate::config::Config;
use crate::dapr::Dapr;
use crate::grpc::{cluster::ClusterService, dapr::DaprService, kv::KvService};
use crate::handle::NodeHandle;
use crate::io::{tcp_incoming, Incoming, Io};
use crate::kv::{Command, Op};
use crate::raft::consensus::{break_election_ties, Consensus};
use crate::raft::identity::ClusterIdent;
use crate::raft::network::{Network, PeerChannels, MAX_PEER_MESSAGE};
use crate::raft::server::{PeerService, Started};
use crate::raft::types::{NodeId, NodeInfo, Raft};
use crate::store::backend::LogMeta;
use crate::store::{LogBackend, LogStore, MemLog, RedbLog, RedbSm, SmDisk, SmStore};
use crate::watch::{EventHub, DEFAULT_HISTORY};
use anyhow::Context;
use statenode_proto::dapr::proto::runtime::v1::dapr_server::DaprServer;
use statenode_proto::v1::cluster_server::ClusterServer;
use statenode_proto::v1::kv_server::KvServer;
use statenode_proto::v1::peer_server::PeerServer;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;

pub mod dev;
mod membership;

pub use membership::{find_cluster, join_cluster, Role, Stored};

/// The connections a node serves, accepted by the caller's network (port 0 in tests,
/// turmoil in simulation).
pub struct Listeners {
    pub peer: Incoming,
    pub grpc: Incoming,
    /// The HTTP front door; `None` serves no HTTP (the simulation).
    pub http: Option<Incoming>,
}

impl Listeners {
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let peer = TcpListener::bind(&config.peer_listen)
            .await
            .with_context(|| format!("bind peer {}", config.peer_listen))?;
        let grpc = TcpListener::bind(&config.grpc).await.with_context(|| format!("bind grpc {}", config.grpc))?;
        let http = TcpListener::bind(&config.http).await.with_context(|| format!("bind http {}", config.http))?;
        Ok(Self::from_tcp(peer, grpc, Some(http)))
    }

    pub fn from_tcp(peer: TcpListener, grpc: TcpListener, http: Option<TcpListener>) -> Self {
        Self { peer: tcp_incoming(peer), grpc: tcp_incoming(grpc), http: http.map(tcp_incoming) }
    }
}

/// A running node: its handle, and everything to stop.
pub struct Node {
    handle: NodeHandle,
    raft: Raft,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// The log backend, to wait until openraft's tasks let go of it (redb file locks).
    log: std::sync::Weak<dyn LogBackend>,
}

/// Stored next to the raft log so a data dir never runs under another id.
const NODE_ID_KEY: &str = "node_id";
/// The lost member's id this node replaced (`--replace-lost-member`): its `--id` still names
/// the old one (a StatefulSet ordinal), and that is not a mismatch.
const REPLACED_KEY: &str = "replaced_id";
/// The peer address a join goes through, kept until the join finished, so a node stopped
/// half-way (a learner) finishes it when it starts again.
const JOINING_KEY: &str = "joining_via";

impl Node {
    /// Starts a node. `role` says whether it bootstraps (serve) or joins (join).
    pub async fn start(config: Config, listeners: Listeners, role: Role, io: Io) -> anyhow::Result<Node> {
        config.validate()?;
        let hub = Arc::new(EventHub::new(DEFAULT_HISTORY, 1));
        let channels = Arc::new(PeerChannels::new(io.dialer.clone()));
        let (log, sm_disk) = open_disks(&config, &io)?;
        let stored = read_stored(log.as_ref())?;
        let ident = ClusterIdent::load(log.clone())?;
        let incarnation = rand::Rng::gen(&mut crate::raft::rt::rng());
        let me = NodeInfo { peer_addr: config.peer_advertise(), grpc_addr: config.grpc_advertise(), incarnation };
        let (stop, stop_rx) = watch::channel(false);
        // Peers may ask this node about the cluster while it decides how to enter it.
        let started: Started = Arc::default();
        let id = stored.id.unwrap_or(config.id);
        let peer = PeerService { started: started.clone(), ident: ident.clone(), id, me: me.clone() };
        let mut tasks = vec![tokio::spawn(serve_peer(listeners.peer, peer, stop_rx.clone()))];
        let plan = match membership::plan(&config, &role, &channels, &stored, incarnation).await {
            Ok(plan) => plan,
            Err(e) => {
                let _ = stop.send(true);
                return Err(e);
            }
        };
        let id = plan.id;
        if sm_disk.is_some() {
            record_plan(log.as_ref(), &stored, &plan, config.id)?;
        }
        // A node that forms a cluster knows its id before it takes any Raft message, so it
        // never adopts another cluster's (a wiped member forming a cluster of its own).
        if let Some(peers) = plan.initial_peers() {
            ident.set(ClusterIdent::of_peers(peers))?;
        }
        let sm = match sm_disk {
            Some(d) => SmStore::disk(d, hub)?,
            None => SmStore::memory(hub),
        };
        let weak_log = Arc::downgrade(&log);
        let network = Network { channels: channels.clone(), ident: ident.clone() };
        let raft = Raft::new(id, Arc::new(raft_config(&config)?), network, LogStore::new(log), sm.clone())
            .await
            .context("start raft")?;
        let consensus = Consensus::new(raft.clone(), id, config.limits.request_timeout);
        let handle =
            NodeHandle::new(consensus, sm, channels.clone(), config.limits.clone(), me.clone(), io.clock.clone());
        let _ = started.set((raft.clone(), handle.clone()));
        let dapr = crate::dapr::Dapr::new(handle.clone(), &config);
        tasks.push(tokio::spawn(serve_grpc(listeners.grpc, dapr.clone(), config.api_token.clone(), stop_rx.clone())));
        if let Some(http) = listeners.http {
            let state = Arc::new(crate::http::HttpState { dapr, token: config.api_token.clone() });
            tasks.push(tokio::spawn(crate::http::serve(http, state, stop_rx.clone())));
        }
        tasks.push(tokio::spawn(count_leader_changes(handle.clone(), stop_rx.clone())));
        let reap_every = Duration::from_millis(config.raft.ttl_reap_ms);
        tasks.push(tokio::spawn(reap_expired(handle.clone(), reap_every, stop_rx.clone())));
        let max_election = Duration::from_millis(config.raft.election_max_ms);
        tasks.push(tokio::spawn(break_election_ties(raft.clone(), max_election, stop_rx.clone())));
        tracing::info!(id, %me, memory = config.memory, "node started");
        let joined = {
            let log = weak_log.clone();
            move || {
                if let Some(log) = log.upgrade() {
                    if let Err(e) = log.set_raw_meta(JOINING_KEY, b"") {
                        tracing::warn!(error = %e, "could not record the finished join");
                    }
                }
            }
        };
        let form = membership::form(plan, raft.clone(), channels, me, stop_rx, joined);
        tasks.push(tokio::spawn(form));
        Ok(Node { handle, raft, stop, tasks, log: weak_log })
    }

    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Stops serving, stops Raft, waits for every task.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        for t in self.tasks {
            let _ = t.await;
        }
        // openraft's state-machine and replication tasks end shortly after its core: wait
        // until they released the stores, so the same data dir can be opened again at once.
        for _ in 0..100 {
            if self.log.strong_count() == 0 && self.handle.sm().only_owner() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!("storage still referenced after shutdown");
    }
}

fn decode_id(b: &[u8]) -> anyhow::Result<NodeId> {
    Ok(u64::from_le_bytes(b.try_into().context("corrupt node id record")?))
}

/// What the disk says about this node before Raft starts.
fn read_stored(log: &dyn LogBackend) -> anyhow::Result<Stored> {
    let id = log.raw_meta(NODE_ID_KEY)?.map(|b| decode_id(&b)).transpose()?;
    let replaced = log.raw_meta(REPLACED_KEY)?.map(|b| decode_id(&b)).transpose()?;
    let joining = log.raw_meta(JOINING_KEY)?.filter(|v| !v.is_empty());
    let joining = joining.map(|v| String::from_utf8(v).context("corrupt join record")).transpose()?;
    let has_state =
        log.meta(LogMeta::Vote)?.is_some() || log.last()?.is_some() || log.meta(LogMeta::LastPurged)?.is_some();
    Ok(Stored { id, replaced, has_state, joining })
}

/// Disk mode: remembers the id (and the lost member it replaces, and a join in progress)
/// before Raft writes anything under it.
fn record_plan(log: &dyn LogBackend, stored: &Stored, plan: &membership::Plan, given: NodeId) -> anyhow::Result<()> {
    if let Some(s) = stored.id.filter(|s| *s != plan.id) {
        anyhow::bail!("data dir belongs to node {s}, but the plan runs it as node {}", plan.id);
    }
    if stored.id.is_none() {
        if given != 0 && given != plan.id {
            log.set_raw_meta(REPLACED_KEY, &given.to_le_bytes())?;
        }
        log.set_raw_meta(NODE_ID_KEY, &plan.id.to_le_bytes())?;
    }
    if let (Some(via), None) = (plan.joins_via(), &stored.joining) {
        log.set_raw_meta(JOINING_KEY, via.as_bytes())?;
    }
    Ok(())
}

fn raft_config(c: &Config) -> anyhow::Result<openraft::Config> {
    let cfg = openraft::Config {
        cluster_name: "statenode".into(),
        heartbeat_interval: c.raft.heartbeat_ms,
        election_timeout_min: c.raft.election_min_ms,
        election_timeout_max: c.raft.election_max_ms,
        install_snapshot_timeout: 2_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(c.raft.snapshot_threshold),
        max_in_snapshot_log_to_keep: c.raft.keep_after_snapshot,
        snapshot_max_chunk_size: c.raft.snapshot_chunk_bytes,
        // Entries per AppendEntries: as many as fit one peer message at the largest request.
        max_payload_entries: (MAX_PEER_MESSAGE / (c.limits.max_request_bytes + 64 * 1024)).clamp(1, 300) as u64,
        ..Default::default()
    };
    Ok(cfg.validate()?)
}

/// The log backend and, unless in memory mode, the state machine's disk.
type Disks = (Arc<dyn LogBackend>, Option<Arc<dyn SmDisk>>);

fn open_disks(config: &Config, io: &Io) -> anyhow::Result<Disks> {
    if let Some(disk) = &io.disk {
        return Ok((disk.log.clone(), Some(disk.sm.clone())));
    }
    if config.memory {
        return Ok((Arc::new(MemLog::default()), None));
    }
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let log = RedbLog::open(&dir.join("raft.redb")).context("open raft.redb")?;
    let sm = RedbSm::open(&dir.join("sm.redb")).context("open sm.redb")?;
    Ok((Arc::new(log), Some(Arc::new(sm))))
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn serve_peer(incoming: Incoming, svc: PeerService, stop: watch::Receiver<bool>) {
    let svc =
        PeerServer::new(svc).max_decoding_message_size(MAX_PEER_MESSAGE).max_encoding_message_size(MAX_PEER_MESSAGE);
    let r = tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, stopped(stop))
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "peer server failed");
    }
}

async fn serve_grpc(incoming: Incoming, dapr: Dapr, token: Option<String>, stop: watch::Receiver<bool>) {
    let handle = dapr.handle().clone();
    let max = handle.limits().max_request_bytes + 64 * 1024;
    let auth = crate::grpc::token_check(token);
    let kv = KvServer::new(KvService { handle: handle.clone() }).max_decoding_message_size(max);
    let dapr_handle = handle.clone();
    let cluster = ClusterServer::new(ClusterService { handle });
    let dapr = DaprServer::new(DaprService { dapr }).max_decoding_message_size(max).max_encoding_message_size(max);
    let r = tonic::transport::Server::builder()
        .layer(crate::metrics::GrpcLayer(dapr_handle))
        .add_service(InterceptedService::new(kv, auth.clone()))
        .add_service(InterceptedService::new(cluster, auth.clone()))
        .add_service(InterceptedService::new(dapr, auth))
        .serve_with_incoming_shutdown(incoming, stopped(stop))
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "grpc server failed");
    }
}

/// Counts the leader changes this node sees, for `/metrics`.
async fn count_leader_changes(handle: NodeHandle, mut stop: watch::Receiver<bool>) {
    let mut rx = handle.consensus().raft.metrics();
    let mut last = rx.borrow().current_leader;
    loop {
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = rx.borrow().current_leader;
        if now.is_some() && now != last {
            handle.metrics().leader_changed();
        }
        last = now;
    }
}

/// On the leader, proposes `Expire` whenever a key is due, checking every `every`.
async fn reap_expired(handle: NodeHandle, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if handle.due(handle.now_ms()) && handle.consensus().raft.current_leader().await == Some(handle.id()) {
            if let Err(e) = handle.write(Command { client: None, now_ms: 0, op: Op::Expire }).await {
                tracing::debug!(error = %e, "expire proposal failed");
            }
        }
    }
}
