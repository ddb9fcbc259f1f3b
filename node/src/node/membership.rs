//! Cluster formation: bootstrap with `--bootstrap-expect`, join through a seed, and the
//! memory-mode rule that a restarted node comes back under a new id.

use crate::config::Config;
use crate::handle::{ClusterStatus, PeerReply, PeerRequest};
use crate::raft::network::{decode, encode, PeerChannels};
use crate::raft::types::{NodeId, NodeInfo, Raft};
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
}

enum Action {
    /// Wait until every listed peer answers, then initialize with all of them.
    Initialize(Vec<(NodeId, String)>),
    /// Ask the leader (found through this peer address) to add this node.
    Join(String),
    /// A member of an existing cluster with empty storage: the leader will replicate to it.
    Wait,
}

/// A fresh id for a node that must not reuse an old one; below 2^53 so JSON keeps it exact.
fn fresh_id() -> NodeId {
    use rand::Rng;
    crate::raft::rt::rng().gen_range(1000..(1u64 << 53))
}

/// Decides this node's id and how it enters the cluster; `stored` is the id its disk holds.
pub async fn plan(
    config: &Config,
    role: &Role,
    channels: &Arc<PeerChannels>,
    stored: Option<NodeId>,
    incarnation: u64,
) -> anyhow::Result<Plan> {
    let given = (config.id != 0).then_some(config.id);
    if let (Some(s), Some(g)) = (stored, given) {
        anyhow::ensure!(s == g, "data dir {} belongs to node {s}, not {g}", config.data_dir.display());
    }
    let me = config.peer_advertise();
    match role {
        Role::Join { seed } => {
            crate::config::check_addr(seed)?;
            let id = stored.or(given).unwrap_or_else(fresh_id);
            Ok(Plan { id, action: Action::Join(seed.clone()) })
        }
        Role::Serve => {
            let peers = config.parsed_peers()?;
            let id = stored.or(given).unwrap_or(1);
            if peers.len() <= 1 {
                return Ok(Plan { id, action: Action::Initialize(vec![(id, me)]) });
            }
            let others: Vec<String> = peers.iter().filter(|(p, _)| *p != id).map(|(_, a)| a.clone()).collect();
            match find_cluster(channels, &others).await {
                // A peer bootstrapped with this very process in its first configuration (it
                // got our Hello): we are a pristine member; the leader will replicate to us.
                Some((_, s)) if s.members.iter().any(|m| m.id == id && m.incarnation == incarnation) => {
                    Ok(Plan { id, action: Action::Wait })
                }
                Some((addr, _)) if config.memory => {
                    let id = fresh_id();
                    tracing::info!(id, "memory mode: a cluster already runs; joining it as a new member");
                    Ok(Plan { id, action: Action::Join(addr) })
                }
                Some(_) => Ok(Plan { id, action: Action::Wait }),
                None => Ok(Plan { id, action: Action::Initialize(peers) }),
            }
        }
    }
}

async fn ask(channels: &PeerChannels, addr: &str, req: &PeerRequest, timeout: Duration) -> anyhow::Result<PeerReply> {
    let mut client = channels.client(addr).map_err(anyhow::Error::msg)?;
    let reply = tokio::time::timeout(timeout, client.forward(encode(req))).await??.into_inner();
    Ok(decode::<crate::error::Result<PeerReply>>(&reply)??)
}

/// Whether the listed peers already form a cluster: waits until either some peer reports
/// a membership (the cluster exists: returns it) or every peer answered as pristine (a
/// first bootstrap: returns `None`). Unreachable peers are asked again, so a node cut off
/// from its peers never mistakes a running cluster for a new one.
pub async fn find_cluster(channels: &PeerChannels, addrs: &[String]) -> Option<(String, ClusterStatus)> {
    loop {
        let mut answered = 0;
        for addr in addrs {
            match ask(channels, addr, &PeerRequest::Status, Duration::from_secs(1)).await {
                Ok(PeerReply::Status(s)) if !s.members.is_empty() => return Some((addr.clone(), s)),
                Ok(_) => answered += 1,
                Err(e) => tracing::debug!(addr, error = %e, "peer did not answer"),
            }
        }
        if answered == addrs.len() {
            return None;
        }
        tracing::info!(answered, expected = addrs.len(), "waiting for the other peers to answer");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Runs the plan's action in the background of a pristine node.
pub async fn form(plan: Plan, raft: Raft, channels: Arc<PeerChannels>, me: NodeInfo, stop: watch::Receiver<bool>) {
    let result = match plan.action {
        Action::Initialize(peers) => initialize(&raft, &channels, plan.id, &me, peers, stop).await,
        Action::Join(via) => join_cluster(&channels, &raft, &via, plan.id, &me, stop).await,
        Action::Wait => {
            tracing::info!("empty storage in an existing cluster: waiting for the leader to replicate");
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
pub async fn join_cluster(
    channels: &PeerChannels,
    raft: &Raft,
    via: &str,
    id: NodeId,
    me: &NodeInfo,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let deadline = Duration::from_secs(180);
    let mut attempt = 0u32;
    while !*stop.borrow() {
        attempt += 1;
        let leader = match ask(channels, via, &PeerRequest::Status, Duration::from_secs(2)).await {
            Ok(PeerReply::Status(s)) => {
                s.members.iter().find(|m| Some(m.id) == s.leader_id).map(|m| m.peer_addr.clone())
            }
            _ => None,
        };
        let Some(leader) = leader else {
            tracing::info!(via, attempt, "no leader known yet; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        tracing::info!(id, leader, "asking the leader to add this node (learner, then voter once caught up)");
        let req = PeerRequest::Join { id, node: me.clone() };
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
    Ok(())
}
