//! `Node::start`: opens storage, starts Raft, the servers and the background tasks;
//! bootstraps or joins; shuts everything down gracefully.

use crate::auth::{Gate, Token};
use crate::config::Config;
use crate::dapr::Dapr;
use crate::handle::NodeHandle;
use crate::io::{tcp_incoming, Incoming, Io};
use crate::raft::consensus::{break_election_ties, Consensus};
use crate::raft::identity::ClusterIdent;
use crate::raft::membership::{self, Plan, Stored};
use crate::raft::network::{Network, PeerChannels, MAX_PEER_MESSAGE, SECRET_HEADER};
use crate::raft::server::{PeerService, Running, Started};
use crate::raft::types::{NodeId, NodeInfo};
use crate::store::{LogBackend, LogStore, SmDisk, SmStore};
use crate::watch::{EventHub, DEFAULT_HISTORY};
use anyhow::Context;
use records::{forget_join, open_disks, read_stored, record_plan};
use statenode_proto::v1::peer_server::PeerServer;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub mod dev;
mod records;
mod restore;

pub use restore::{restore, Restored};

pub use crate::raft::membership::Role;

/// The connections a node serves, accepted by the caller's network (port 0 in tests,
/// turmoil in simulation).
pub struct Listeners {
    pub peer: Incoming,
    pub grpc: Incoming,
    /// The HTTP front door; `None` serves no HTTP (the simulation).
    pub http: Option<Incoming>,
    /// The MQTT front door; `None` serves no MQTT.
    pub mqtt: Option<Incoming>,
}

impl Listeners {
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let peer = TcpListener::bind(&config.peer_listen)
            .await
            .with_context(|| format!("bind peer {}", config.peer_listen))?;
        let grpc = TcpListener::bind(&config.grpc).await.with_context(|| format!("bind grpc {}", config.grpc))?;
        let http = TcpListener::bind(&config.http).await.with_context(|| format!("bind http {}", config.http))?;
        let mqtt = TcpListener::bind(&config.mqtt).await.with_context(|| format!("bind mqtt {}", config.mqtt))?;
        Ok(Self::from_tcp(peer, grpc, Some(http)).with_mqtt(mqtt))
    }

    pub fn from_tcp(peer: TcpListener, grpc: TcpListener, http: Option<TcpListener>) -> Self {
        Self { peer: tcp_incoming(peer), grpc: tcp_incoming(grpc), http: http.map(tcp_incoming), mqtt: None }
    }

    /// Every connection after a TLS handshake: peers must present a certificate of the CA.
    fn with_tls(self, tls: &crate::tls::NodeTls, max_pending: usize) -> Self {
        let wrap =
            |i, acceptor: &tokio_rustls::TlsAcceptor, door| crate::tls::wrap(i, acceptor.clone(), door, max_pending);
        Self {
            peer: wrap(self.peer, &tls.peer, "peer"),
            grpc: wrap(self.grpc, &tls.grpc, "grpc"),
            http: self.http.map(|i| wrap(i, &tls.http, "http")),
            mqtt: self.mqtt.map(|i| wrap(i, &tls.mqtt, "mqtt")),
        }
    }

    /// Serves MQTT on `mqtt` too.
    pub fn with_mqtt(mut self, mqtt: TcpListener) -> Self {
        self.mqtt = Some(tcp_incoming(mqtt));
        self
    }
}

/// Whether `addr` (host:port) binds this machine's loopback only.
fn is_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The client gRPC connection limit, TLS on every port with `--certs-dir` (and peers dialed
/// with it), and the start-up warnings about what is left open.
fn guard(config: &Config, mut listeners: Listeners, io: Io) -> anyhow::Result<(Listeners, Io)> {
    listeners.grpc = crate::io::limit(listeners.grpc, config.limits.max_grpc_connections, "grpc");
    listeners.peer = crate::io::limit(listeners.peer, config.limits.max_peer_connections, "peer");
    let Some(dir) = &config.certs_dir else {
        tracing::warn!("no --certs-dir: every port speaks plaintext (see docs/security.md)");
        if config.cluster_secret.is_none() && !is_loopback(&config.peer_listen) {
            tracing::warn!(
                peer_listen = %config.peer_listen,
                "the peer port is open beyond this machine with neither --certs-dir nor --cluster-secret: whoever \
                 reaches it can join, vote, and read or write every key (see docs/security.md)"
            );
        }
        return Ok((listeners, io));
    };
    let tls = crate::tls::NodeTls::load(dir).with_context(|| format!("certificates in {}", dir.display()))?;
    let dialer = Arc::new(crate::io::TlsDialer(tls.dial.clone()));
    Ok((listeners.with_tls(&tls, config.limits.tls_max_handshakes), Io { dialer, ..io }))
}

/// How long a stopping node lets its servers finish open requests.
const DRAIN: Duration = Duration::from_secs(5);

/// A running node: its handle, and everything to stop.
pub struct Node {
    handle: NodeHandle,
    consensus: Arc<Consensus>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// The log backend, to wait until openraft's tasks let go of it (redb file locks).
    log: std::sync::Weak<dyn LogBackend>,
}

/// What a node holds before it decides how to enter the cluster.
struct Boot {
    config: Config,
    io: Io,
    log: Arc<dyn LogBackend>,
    /// `None` in memory mode.
    sm_disk: Option<Arc<dyn SmDisk>>,
    stored: Stored,
    ident: Arc<ClusterIdent>,
    me: NodeInfo,
    channels: Arc<PeerChannels>,
    /// Filled in once Raft runs; the peer service answers "starting" until then.
    started: Started,
}

/// A node's running parts, before the stop signal is attached.
struct Up {
    handle: NodeHandle,
    consensus: Arc<Consensus>,
    tasks: Vec<JoinHandle<()>>,
    log: std::sync::Weak<dyn LogBackend>,
}

impl Node {
    /// Starts a node. `role` says whether it bootstraps (serve) or joins (join).
    pub async fn start(config: Config, listeners: Listeners, role: Role, io: Io) -> anyhow::Result<Node> {
        config.validate()?;
        let (listeners, io) = guard(&config, listeners, io)?;
        let token =
            Token::with_file(config.api_token.clone(), config.token_file.as_deref()).context("the token file")?;
        let boot = Boot::open(config, io)?;
        let (stop, stop_rx) = watch::channel(false);
        // Peers may ask this node about the cluster while it decides how to enter it.
        let secret = Token::new(boot.config.cluster_secret.clone());
        let call_timeout = boot.config.limits.grpc_call_timeout;
        let peer = tokio::spawn(serve_peer(listeners.peer, boot.peer_service(), secret, call_timeout, stop_rx.clone()));
        let doors = Doors { grpc: listeners.grpc, http: listeners.http, mqtt: listeners.mqtt, token };
        match boot.run(role, doors, stop_rx).await {
            Ok(Up { handle, consensus, mut tasks, log }) => {
                tasks.push(peer);
                Ok(Node { handle, consensus, stop, tasks, log })
            }
            Err(e) => {
                // Stop the peer server; do not wait on connections someone else keeps open
                // (a peer of a former node at this address keeps retrying).
                let _ = stop.send(true);
                let mut peer = peer;
                if tokio::time::timeout(Duration::from_secs(1), &mut peer).await.is_err() {
                    peer.abort();
                }
                Err(e)
            }
        }
    }

    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Stops serving, stops Raft, waits for every task — at most `DRAIN` for the servers
    /// to finish their open requests; then their connections are closed.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.consensus.shutdown().await;
        // A graceful server waits for every open connection to end, and a connection whose
        // peer vanished (a cut network, a killed client) ends only when keepalive notices.
        let deadline = tokio::time::Instant::now() + DRAIN;
        let mut cut = 0;
        for mut t in self.tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                t.abort();
                cut += 1;
            }
        }
        if cut > 0 {
            tracing::warn!(servers = cut, "connections still open {DRAIN:?} after the stop signal: closed");
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

impl Boot {
    /// Opens the disks and reads what they say about this node.
    fn open(config: Config, io: Io) -> anyhow::Result<Self> {
        let (log, sm_disk) = open_disks(&config, &io)?;
        let stored = read_stored(log.as_ref())?;
        let ident = ClusterIdent::load(log.clone())?;
        let incarnation = rand::Rng::gen(&mut crate::raft::rt::rng());
        let me = NodeInfo { peer_addr: config.peer_advertise(), grpc_addr: config.grpc_advertise(), incarnation };
        let channels = Arc::new(PeerChannels::new(io.dialer.clone(), config.cluster_secret.as_deref()));
        Ok(Self { config, io, log, sm_disk, stored, ident, me, channels, started: Started::default() })
    }

    fn peer_service(&self) -> PeerService {
        let id = self.stored.id.unwrap_or(self.config.id);
        let (started, ident, me) = (self.started.clone(), self.ident.clone(), self.me.clone());
        PeerService { started, ident, id, me, snapshot: Default::default() }
    }

    /// Decides how to enter the cluster, starts Raft, the handle, the client doors and the
    /// background tasks, then enters the cluster in the background.
    async fn run(self, role: Role, clients: Doors, stop: watch::Receiver<bool>) -> anyhow::Result<Up> {
        let plan = self.plan(&role).await?;
        let (handle, consensus) = self.start_raft(plan.id).await?;
        let config = &self.config;
        let mut tasks = serve_clients(clients, &handle, config, &stop);
        tasks.extend(background(&handle, &consensus, config, &stop));
        tracing::info!(id = plan.id, me = %self.me, memory = config.memory, "node started");
        let log = Arc::downgrade(&self.log);
        let joined = forget_join(log.clone());
        let form = membership::form(plan, consensus.clone(), self.channels, self.me, stop, joined);
        tasks.push(tokio::spawn(form));
        Ok(Up { handle, consensus, tasks, log })
    }

    /// How this node enters the cluster, recorded before Raft writes anything.
    async fn plan(&self, role: &Role) -> anyhow::Result<Plan> {
        let (config, stored) = (&self.config, &self.stored);
        let plan = membership::plan(config, role, &self.channels, stored, self.me.incarnation).await?;
        if self.sm_disk.is_some() {
            record_plan(self.log.as_ref(), stored, &plan, config.id)?;
        }
        // A node that forms a cluster knows its id before it takes any Raft message, so it
        // never adopts another cluster's (a wiped member forming a cluster of its own).
        if let Some(peers) = plan.initial_peers() {
            self.ident.set(ClusterIdent::of_peers(peers))?;
        }
        Ok(plan)
    }

    /// Starts Raft as node `id` over this node's stores, and the handle over it; the peer
    /// service serves Raft from then on.
    async fn start_raft(&self, id: NodeId) -> anyhow::Result<(NodeHandle, Arc<Consensus>)> {
        let hub = Arc::new(EventHub::new(DEFAULT_HISTORY, 1).with_max_bytes(self.config.limits.watch_history_bytes));
        let sm = match &self.sm_disk {
            Some(d) => SmStore::disk(d.clone(), hub)?,
            None => SmStore::memory(hub),
        };
        let log = LogStore::new(self.log.clone(), id)?;
        sm.apply_after(log.synced());
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let (channels, ident, synced) = (self.channels.clone(), self.ident.clone(), log.synced());
        let network = Network { channels, ident, synced, metrics: metrics.clone() };
        let consensus = Arc::new(Consensus::start(id, &self.config, network, log, sm.clone()).await?);
        let (peers, limits, clock) = (self.channels.clone(), self.config.limits.clone(), self.io.clock.clone());
        let handle = NodeHandle::new(consensus.clone(), sm, peers, limits, self.me.clone(), clock, metrics);
        let _ = self.started.set(Running::new(&consensus, Arc::new(handle.clone())));
        Ok((handle, consensus))
    }
}

/// The client listeners: everything but the peer port.
struct Doors {
    grpc: Incoming,
    http: Option<Incoming>,
    mqtt: Option<Incoming>,
    /// What the HTTP and gRPC doors require of their clients.
    token: Token,
}

/// The client front doors: gRPC always, HTTP and MQTT when given a listener.
fn serve_clients(
    Doors { grpc, http, mqtt, token }: Doors,
    handle: &NodeHandle,
    config: &Config,
    stop: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let dapr = Dapr::new(handle.clone(), config);
    let policy = Arc::new(crate::auth::rules::Policy::new(config.authorization.clone()));
    let gate = Arc::new(Gate::new(token, policy.clone()));
    let mut tasks = vec![tokio::spawn(crate::grpc::serve(grpc, dapr.clone(), gate.clone(), stop.clone()))];
    if let Some(http) = http {
        let state = Arc::new(crate::http::HttpState { dapr, gate, protect_metrics: config.protect_metrics });
        tasks.push(tokio::spawn(crate::http::serve(http, state, stop.clone())));
    }
    if let Some(mqtt) = mqtt {
        let broker = crate::mqtt::Broker::new(handle.clone(), config.limits.clone(), (*policy).clone());
        tasks.push(tokio::spawn(crate::mqtt::serve(mqtt, broker, stop.clone())));
    }
    tasks
}

/// Leader-change counting, the TTL reaper and the election tie-breaker.
fn background(
    handle: &NodeHandle,
    consensus: &Arc<Consensus>,
    config: &Config,
    stop: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let metrics = handle.metrics().clone();
    let c = consensus.clone();
    let leaders = {
        let stop = stop.clone();
        async move { c.watch_leader(|| metrics.leader_changed(), stop).await }
    };
    let reap_every = Duration::from_millis(config.raft.ttl_reap_ms);
    let max_election = Duration::from_millis(config.raft.election_max_ms);
    vec![
        tokio::spawn(leaders),
        tokio::spawn(reap_expired(handle.clone(), reap_every, stop.clone())),
        tokio::spawn(break_election_ties(consensus.clone(), max_election, stop.clone())),
    ]
}

/// Serves the peer port; with a cluster secret, an RPC without it is refused before it is
/// read (compared in constant time).
async fn serve_peer(
    incoming: Incoming,
    svc: PeerService,
    secret: Token,
    call_timeout: Duration,
    stop: watch::Receiver<bool>,
) {
    let svc =
        PeerServer::new(svc).max_decoding_message_size(MAX_PEER_MESSAGE).max_encoding_message_size(MAX_PEER_MESSAGE);
    let check =
        move |req: tonic::Request<()>| match secret.check(req.metadata().get(SECRET_HEADER).map(|v| v.as_bytes())) {
            Ok(_) => Ok(req),
            Err(_) => Err(tonic::Status::unauthenticated("wrong or missing cluster secret")),
        };
    let svc = tonic::service::interceptor::InterceptedService::new(svc, check);
    let r = crate::io::grpc_server(call_timeout)
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, crate::io::stopped(stop))
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "peer server failed");
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
        if let Err(e) = handle.expire_due().await {
            tracing::debug!(error = %e, "expire proposal failed");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tells_loopback_binds() {
        for a in ["127.0.0.1:7000", "127.0.0.2:1", "localhost:7000", "[::1]:7000"] {
            assert!(super::is_loopback(a), "{a}");
        }
        for a in ["0.0.0.0:7000", "[::]:7000", "10.0.0.1:7000", "n1:7000", "7000"] {
            assert!(!super::is_loopback(a), "{a}");
        }
    }
}
