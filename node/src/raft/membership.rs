//! Cluster formation: bootstrap with `--bootstrap-expect`, join through a seed, and the
//! memory-mode rule that a restarted node comes back under a new id.

use super::consensus::Consensus;
use super::network::PeerChannels;
use super::peer::{ask, PeerReply, PeerRequest};
use super::types::{NodeId, NodeInfo, Raft};
use crate::api::ClusterStatus;
use crate::config::Config;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How the node enters a cluster.
#[derive(Clone, Debug)]
pub enum Role {
    /// `statenode serve`: bootstrap (alone, or with `--bootstrap-expect`) or restart.
    Serve,
    /// `statenode join --seed ADDR`: ADDR is any member's peer address.
    Join { seed: String },
}

pub struct Plan {
    pub id: NodeId,
    action: Action,
    /// The lost member a join replaces, to be removed once this node is a voter.
    replaces: Option<NodeId>,
}

enum Action {
    /// Raft starts from the state on disk; nothing else to do.
    Resume,
    /// Wait until every listed peer answers, then initialize with all of them.
    Initialize(Vec<(NodeId, String)>),
    /// Ask the leader (found through this peer address) to add this node.
    Join(String),
    /// A member of the first configuration, made by a peer that got this very process's
    /// Hello: the leader will replicate to it.
    Wait,
}

/// What a node knows about itself before Raft starts.
pub struct Stored {
    /// The id its disk holds.
    pub id: Option<NodeId>,
    /// The id of the lost member this node replaced, if it was started as a replacement.
    pub replaced: Option<NodeId>,
    /// Whether it has Raft state (a vote, log entries, a snapshot): such a node is a
    /// member already and starts Raft at once, without asking anyone.
    pub has_state: bool,
    /// The peer address of a join that had not finished when the node stopped.
    pub joining: Option<String>,
}

/// A fresh id for a node that must not reuse an old one; below 2^53 so JSON keeps it exact.
fn fresh_id() -> NodeId {
    use rand::Rng;
    super::rt::rng().gen_range(1000..(1u64 << 53))
}

/// Decides this node's id and how it enters the cluster.
pub async fn plan(
    config: &Config,
    role: &Role,
    channels: &Arc<PeerChannels>,
    stored: &Stored,
    incarnation: u64,
) -> anyhow::Result<Plan> {
    let given = (config.id != 0).then_some(config.id);
    if let (Some(s), Some(g)) = (stored.id, given) {
        anyhow::ensure!(
            s == g || stored.replaced == Some(g),
            "data dir {} belongs to node {s}, not {g}",
            config.data_dir.display()
        );
    }
    if stored.has_state {
        let id = stored.id.or(given).unwrap_or(1);
        let action = match &stored.joining {
            Some(via) => Action::Join(via.clone()),
            None => Action::Resume,
        };
        return Ok(Plan { id, action, replaces: stored.replaced });
    }
    match role {
        Role::Join { seed } => plan_join(config, seed, channels, stored, incarnation).await,
        Role::Serve => plan_serve(config, channels, stored, incarnation).await,
    }
}

/// `statenode join --seed ADDR` with no data: the cluster at ADDR says under which id.
async fn plan_join(
    config: &Config,
    seed: &str,
    channels: &PeerChannels,
    stored: &Stored,
    incarnation: u64,
) -> anyhow::Result<Plan> {
    crate::config::check_addr(seed)?;
    let id = stored.id.or((config.id != 0).then_some(config.id)).unwrap_or_else(fresh_id);
    let deadline = tokio::time::Instant::now() + config.bootstrap_timeout;
    let Some(status) = cluster_at(channels, seed, deadline).await else {
        anyhow::bail!("no member answered at {seed} within {:?}", config.bootstrap_timeout);
    };
    let (id, replaces) = match enter_existing(config, id, incarnation, &status, stored)? {
        Enter::Wait => (id, None),
        Enter::Join { id, replaces } => (id, replaces),
    };
    Ok(Plan { id, action: Action::Join(seed.to_string()), replaces })
}

/// `statenode serve` with no data: alone, a first bootstrap with every peer, or a join of
/// the cluster the peers already run.
async fn plan_serve(
    config: &Config,
    channels: &PeerChannels,
    stored: &Stored,
    incarnation: u64,
) -> anyhow::Result<Plan> {
    let peers = config.parsed_peers()?;
    let id = if config.id != 0 { config.id } else { 1 };
    if peers.len() <= 1 {
        let me = config.peer_advertise();
        return Ok(Plan { id, action: Action::Initialize(vec![(id, me)]), replaces: None });
    }
    let others: Vec<String> = peers.iter().filter(|(p, _)| *p != id).map(|(_, a)| a.clone()).collect();
    let deadline = tokio::time::Instant::now() + config.bootstrap_timeout;
    match find_cluster(channels, &others, deadline).await? {
        Some((addr, status)) => match enter_existing(config, id, incarnation, &status, stored)? {
            Enter::Wait => Ok(Plan { id, action: Action::Wait, replaces: None }),
            Enter::Join { id, replaces } => Ok(Plan { id, action: Action::Join(addr), replaces }),
        },
        None => Ok(Plan { id, action: Action::Initialize(peers), replaces: None }),
    }
}

/// How a node with no Raft state enters a running cluster.
enum Enter {
    /// A peer bootstrapped with this very process: the leader will replicate to it.
    Wait,
    /// Join under `id`; the leader removes the lost member it `replaces` once it is a voter.
    Join { id: NodeId, replaces: Option<NodeId> },
}

/// A cluster that still lists this node (its id, or its address) had it as a member
/// before its data was lost: it must not come back as its old self, having forgotten its
/// votes and the writes it acknowledged (Raft §5.2, §5.4). It joins under a new id, and the
/// leader removes the old entry once the new one caught up — in memory mode always, in disk
/// mode only when the operator says so with `--replace-lost-member`.
fn enter_existing(
    config: &Config,
    id: NodeId,
    incarnation: u64,
    status: &ClusterStatus,
    stored: &Stored,
) -> anyhow::Result<Enter> {
    if status.members.iter().any(|m| m.id == id && m.incarnation == incarnation) {
        return Ok(Enter::Wait);
    }
    let me = config.peer_advertise();
    let old = status.members.iter().find(|m| m.id == id || m.peer_addr == me);
    if config.memory {
        let id = fresh_id();
        tracing::info!(id, "memory mode: a cluster already runs; joining it as a new member");
        return Ok(Enter::Join { id, replaces: old.map(|o| o.id) });
    }
    let Some(old) = old else {
        // Under the id the data dir already recorded, if an earlier attempt got that far.
        let id = stored.id.unwrap_or(id);
        tracing::info!(id, "a cluster already runs and does not list this node: joining it");
        return Ok(Enter::Join { id, replaces: None });
    };
    // The data dir recorded this very member's id and holds no Raft state: it never voted
    // nor acknowledged an entry (both are durable first). It is that member, still blank
    // (it stopped before its first vote or append); the join finishes what was begun.
    if stored.id == Some(old.id) {
        return Ok(Enter::Join { id: old.id, replaces: None });
    }
    if config.replace_lost_member {
        // A replacement stopped before it got any state keeps the id it already recorded.
        let new = stored.id.unwrap_or_else(fresh_id);
        tracing::warn!(
            old = old.id,
            new,
            "replacing lost member: joining under a new id; the old entry goes once caught up"
        );
        return Ok(Enter::Join { id: new, replaces: Some(old.id) });
    }
    Err(lost_disk(config, old))
}

/// Why a node with a lost disk may not start as the member its cluster still lists.
fn lost_disk(config: &Config, old: &crate::api::Member) -> anyhow::Error {
    anyhow::anyhow!(
        "this node's data is gone ({} holds no Raft state), but the cluster still lists it as member {} at {}: \
         it must not rejoin as its old self (it forgot its votes and the writes it acknowledged). \
         Start it with --replace-lost-member to join under a new id (the old entry is removed once the new \
         one has caught up), or remove the old member first (statenode leave --id {}) — see docs/operations.md",
        config.data_dir.display(),
        old.id,
        old.peer_addr,
        old.id
    )
}

/// Whether the listed peers already form a cluster: waits until either some peer reports
/// a membership (the cluster exists: returns it) or every peer answered as pristine (a
/// first bootstrap: returns `None`). Unreachable peers are asked again until `deadline`, so
/// a node cut off from its peers never mistakes a running cluster for a new one.
async fn find_cluster(
    channels: &PeerChannels,
    addrs: &[String],
    deadline: tokio::time::Instant,
) -> anyhow::Result<Option<(String, ClusterStatus)>> {
    loop {
        let mut silent = Vec::new();
        for addr in addrs {
            match ask(channels, addr, &PeerRequest::Status, Duration::from_secs(1)).await {
                Ok(PeerReply::Status(s)) if !s.members.is_empty() => return Ok(Some((addr.clone(), s))),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(addr, error = %e, "peer did not answer");
                    silent.push(addr.as_str());
                }
            }
        }
        if silent.is_empty() {
            return Ok(None);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "this node has no data and peers {silent:?} did not answer in time: a first bootstrap needs \
                 every --peers member up, and a node joining a running cluster needs one member to answer"
            );
        }
        tracing::info!(waiting_for = ?silent, "no data yet: waiting for the other peers to answer");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The cluster status a member at `addr` reports, asked until `deadline`.
async fn cluster_at(channels: &PeerChannels, addr: &str, deadline: tokio::time::Instant) -> Option<ClusterStatus> {
    while tokio::time::Instant::now() < deadline {
        match ask(channels, addr, &PeerRequest::Status, Duration::from_secs(2)).await {
            Ok(PeerReply::Status(s)) if !s.members.is_empty() => return Some(s),
            _ => {
                tracing::info!(addr, "waiting for a member to answer");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    None
}

impl Plan {
    /// The peer address of the join this plan makes, to record until it finished.
    pub fn joins_via(&self) -> Option<&str> {
        match &self.action {
            Action::Join(via) => Some(via),
            _ => None,
        }
    }

    /// The first configuration this plan forms, if it forms one.
    pub fn initial_peers(&self) -> Option<&[(NodeId, String)]> {
        match &self.action {
            Action::Initialize(peers) => Some(peers),
            _ => None,
        }
    }
}

/// Runs the plan's action in the background; `joined` runs once a join has finished.
pub async fn form(
    plan: Plan,
    consensus: Arc<Consensus>,
    channels: Arc<PeerChannels>,
    me: NodeInfo,
    stop: watch::Receiver<bool>,
    joined: impl FnOnce(),
) {
    let raft = &consensus.raft;
    let result = match plan.action {
        Action::Resume => {
            tracing::info!(id = plan.id, "starting from the state on disk");
            Ok(())
        }
        Action::Initialize(peers) => initialize(raft, &channels, plan.id, &me, peers, stop).await,
        Action::Join(via) => {
            let (id, replaces) = (plan.id, plan.replaces);
            join_cluster(&channels, raft, &via, (id, replaces), &me, stop).await.map(|()| joined())
        }
        Action::Wait => {
            tracing::info!("a member of the first configuration: waiting for the leader to replicate");
            Ok(())
        }
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "could not form or join the cluster");
    }
}

async fn initialize(
    raft: &Raft,
    channels: &PeerChannels,
    id: NodeId,
    me: &NodeInfo,
    peers: Vec<(NodeId, String)>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut members = BTreeMap::new();
    for (pid, addr) in peers {
        if pid == id {
            members.insert(id, me.clone());
            continue;
        }
        // Every expected peer must be up: its client address comes from its own answer.
        loop {
            if *stop.borrow() || raft.is_initialized().await? {
                return Ok(());
            }
            match ask(channels, &addr, &PeerRequest::Hello, Duration::from_secs(1)).await {
                Ok(PeerReply::Hello(hid, info)) if hid == pid => {
                    members.insert(pid, info);
                    break;
                }
                Ok(PeerReply::Hello(hid, _)) => {
                    anyhow::bail!("peer {addr} says it is node {hid}, expected {pid}")
                }
                _ => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
    }
    tracing::info!(?members, "all expected peers answered; initializing");
    match raft.initialize(members).await {
        Ok(()) => Ok(()),
        Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Awaits `fut`, printing how far this node has caught up every two seconds.
async fn with_progress<T>(raft: &Raft, fut: impl std::future::Future<Output = T>) -> T {
    tokio::pin!(fut);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.tick().await;
    loop {
        tokio::select! {
            out = &mut fut => return out,
            _ = tick.tick() => {
                let m = raft.metrics().borrow().clone();
                let applied = m.last_applied.map_or(0, |l| l.index);
                let snapshot = m.snapshot.map_or(0, |l| l.index);
                tracing::info!(applied, snapshot, "catching up as a learner");
            }
        }
    }
}

/// Asks the leader, found through `via`, to add this node; retries until it is a voter.
/// `who` is this node's id and the lost member it replaces, if any.
async fn join_cluster(
    channels: &PeerChannels,
    raft: &Raft,
    via: &str,
    who: (NodeId, Option<NodeId>),
    me: &NodeInfo,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (id, replaces) = who;
    let deadline = Duration::from_secs(180);
    let mut attempt = 0u32;
    while !*stop.borrow() {
        attempt += 1;
        let leader = match ask(channels, via, &PeerRequest::Status, Duration::from_secs(2)).await {
            Ok(PeerReply::Status(s)) => s.leader().map(|m| m.peer_addr.clone()),
            _ => None,
        };
        let Some(leader) = leader else {
            tracing::info!(via, attempt, "no leader known yet; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        tracing::info!(id, leader, "asking the leader to add this node (learner, then voter once caught up)");
        let req = PeerRequest::Join { id, node: me.clone(), replaces };
        let reply = with_progress(raft, ask(channels, &leader, &req, deadline)).await;
        match reply {
            Ok(PeerReply::Members(m)) => {
                tracing::info!(id, members = m.len(), "joined: this node is now a voter");
                return Ok(());
            }
            Ok(other) => anyhow::bail!("unexpected join reply {other:?}"),
            Err(e) if attempt >= 30 => return Err(e.context("join failed")),
            Err(e) => {
                tracing::warn!(error = %e, attempt, "join attempt failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    anyhow::bail!("stopped before the join finished")
}
