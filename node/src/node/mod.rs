//! `Node::start`: opens storage, starts Raft, the servers and the background tasks;
//! bootstraps or joins; shuts everything down gracefully.

use crate::config::Config;
use crate::grpc::{cluster::ClusterService, kv::KvService};
use crate::handle::{now_ms, NodeHandle};
use crate::kv::{Command, Op};
use crate::raft::consensus::Consensus;
use crate::raft::network::{Network, PeerChannels, MAX_PEER_MESSAGE};
use crate::raft::server::PeerService;
use crate::raft::types::{NodeId, NodeInfo, Raft};
use crate::store::{LogBackend, LogStore, MemLog, RedbLog, RedbSm, SmStore};
use crate::watch::{EventHub, DEFAULT_HISTORY};
use anyhow::{bail, Context};
use statenode_proto::v1::cluster_server::ClusterServer;
use statenode_proto::v1::kv_server::KvServer;
use statenode_proto::v1::peer_server::PeerServer;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

pub mod dev;
mod membership;

pub use membership::{find_cluster, join_cluster, Role};

/// The sockets a node serves on, bound by the caller (port 0 in tests).
pub struct Listeners {
    pub peer: TcpListener,
    pub grpc: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let peer = TcpListener::bind(&config.peer_listen)
            .await
            .with_context(|| format!("bind peer {}", config.peer_listen))?;
        let grpc = TcpListener::bind(&config.grpc)
            .await
            .with_context(|| format!("bind grpc {}", config.grpc))?;
        Ok(Self { peer, grpc })
    }
}

/// A running node: its handle, and everything to stop.
pub struct Node {
    handle: NodeHandle,
    raft: Raft,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Stored next to the raft log so a data dir never runs under another id.
const NODE_ID_KEY: &str = "node_id";

impl Node {
    /// Starts a node. `role` says whether it bootstraps (serve) or joins (join).
    pub async fn start(config: Config, listeners: Listeners, role: Role) -> anyhow::Result<Node> {
        config.validate()?;
        let hub = Arc::new(EventHub::new(DEFAULT_HISTORY, 1));
        let channels = Arc::new(PeerChannels::default());
        let plan = membership::plan(&config, &role, &channels).await?;
        let (log, sm, pristine) = open_storage(&config, plan.id, hub)?;
        let id = plan.id;
        let raft = Raft::new(
            id,
            Arc::new(raft_config(&config)?),
            Network {
                channels: channels.clone(),
            },
            log,
            sm.clone(),
        )
        .await
        .context("start raft")?;
        let consensus = Consensus::new(raft.clone(), id, config.limits.request_timeout);
        let me = NodeInfo {
            peer_addr: config.peer_advertise(),
            grpc_addr: config.grpc_advertise(),
        };
        let handle = NodeHandle::new(
            consensus,
            sm,
            channels.clone(),
            config.limits.clone(),
            me.clone(),
        );
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = vec![
            tokio::spawn(serve_peer(
                listeners.peer,
                raft.clone(),
                handle.clone(),
                stop_rx.clone(),
            )),
            tokio::spawn(serve_grpc(listeners.grpc, handle.clone(), stop_rx.clone())),
            tokio::spawn(reap_expired(handle.clone(), stop_rx.clone())),
        ];
        tracing::info!(id, %me, memory = config.memory, "node started");
        if pristine {
            tasks.push(tokio::spawn(membership::form(
                plan,
                raft.clone(),
                channels,
                me,
                stop_rx,
            )));
        }
        Ok(Node {
            handle,
            raft,
            stop,
            tasks,
        })
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
    }
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
        snapshot_max_chunk_size: 1024 * 1024,
        ..Default::default()
    };
    Ok(cfg.validate()?)
}

/// Opens (or creates) storage; returns whether it is pristine (never part of a cluster).
fn open_storage(
    config: &Config,
    id: NodeId,
    hub: Arc<EventHub>,
) -> anyhow::Result<(LogStore, SmStore, bool)> {
    if config.memory {
        let log: Arc<dyn LogBackend> = Arc::new(MemLog::default());
        return Ok((LogStore::new(log), SmStore::memory(hub), true));
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("create {}", config.data_dir.display()))?;
    let log = RedbLog::open(&config.data_dir.join("raft.redb")).context("open raft.redb")?;
    let pristine = match log.raw_meta(NODE_ID_KEY)? {
        Some(stored) => {
            let stored =
                u64::from_le_bytes(stored.as_slice().try_into().context("corrupt node id")?);
            if stored != id {
                bail!(
                    "data dir {} belongs to node {stored}, not {id}",
                    config.data_dir.display()
                );
            }
            log.meta(crate::store::backend::LogMeta::Vote)?.is_none() && log.last()?.is_none()
        }
        None => {
            log.set_raw_meta(NODE_ID_KEY, &id.to_le_bytes())?;
            true
        }
    };
    let sm = SmStore::redb(
        RedbSm::open(&config.data_dir.join("sm.redb")).context("open sm.redb")?,
        hub,
    )?;
    Ok((LogStore::new(Arc::new(log)), sm, pristine))
}

/// Reads the id a data dir was created with, if any.
pub fn stored_id(config: &Config) -> anyhow::Result<Option<NodeId>> {
    let path = config.data_dir.join("raft.redb");
    if config.memory || !path.exists() {
        return Ok(None);
    }
    let log = RedbLog::open(&path).context("open raft.redb")?;
    Ok(log
        .raw_meta(NODE_ID_KEY)?
        .and_then(|b| b.as_slice().try_into().ok())
        .map(u64::from_le_bytes))
}

/// Accepted connections with Nagle off: Raft and client RPCs are small and latency-bound.
fn incoming(
    l: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(l).map(|s| {
        let s = s?;
        s.set_nodelay(true)?;
        Ok(s)
    })
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn serve_peer(l: TcpListener, raft: Raft, handle: NodeHandle, stop: watch::Receiver<bool>) {
    let svc = PeerServer::new(PeerService { raft, handle })
        .max_decoding_message_size(MAX_PEER_MESSAGE)
        .max_encoding_message_size(MAX_PEER_MESSAGE);
    let r = tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming(l), stopped(stop))
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "peer server failed");
    }
}

async fn serve_grpc(l: TcpListener, handle: NodeHandle, stop: watch::Receiver<bool>) {
    let max = handle.limits().max_request_bytes + 64 * 1024;
    let kv = KvServer::new(KvService {
        handle: handle.clone(),
    })
    .max_decoding_message_size(max);
    let cluster = ClusterServer::new(ClusterService { handle });
    let r = tonic::transport::Server::builder()
        .add_service(kv)
        .add_service(cluster)
        .serve_with_incoming_shutdown(incoming(l), stopped(stop))
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "grpc server failed");
    }
}

/// On the leader, proposes `Expire` whenever a key is due, checking every 250 ms.
async fn reap_expired(handle: NodeHandle, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let due = handle
            .sm()
            .read()
            .kv
            .next_expiry()
            .is_some_and(|t| t <= now_ms());
        if due && handle.consensus().raft.current_leader().await == Some(handle.id()) {
            if let Err(e) = handle
                .write(Command {
                    client: None,
                    now_ms: 0,
                    op: Op::Expire,
                })
                .await
            {
                tracing::debug!(error = %e, "expire proposal failed");
            }
        }
    }
}
