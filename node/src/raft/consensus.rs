//! The narrow consensus API the node uses: start and stop Raft, write, read barrier,
//! join, leave, status, leader changes.

use super::barrier::ReadBarrier;
use super::network::{Network, MAX_PEER_MESSAGE};
use super::proposer::Proposer;
use super::types::{NodeId, NodeInfo, Raft, TypeConfig};
use super::Fail;
use crate::api::{ClusterStatus, Member};
use crate::config::Config;
use crate::error::Error;
use crate::kv::{Command, CommandResult};
use anyhow::Context;
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{ChangeMembers, ServerState};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub struct Consensus {
    pub(super) raft: Raft,
    pub id: NodeId,
    barrier: Arc<ReadBarrier>,
    /// Serializes membership changes on this node (a joint config refuses a second change).
    membership: tokio::sync::Mutex<()>,
    proposer: Proposer,
    write_timeout: Duration,
}

/// openraft 0.9 restarts a node whose vote on disk is its own, committed, as the leader of
/// that term without an election, and bases its read index on the commit index it finds on
/// disk. That index is written lazily (`store/log.rs`), so such a leader served linearizable
/// reads without writes it had acknowledged just before the restart. Its vote is marked
/// uncommitted instead: it starts as a follower, and the leader of the next election bounds
/// every read by its own first entry. (Same term, same candidate: it grants no vote it would
/// not have granted before.)
async fn no_leadership_across_restart<L: RaftLogStorage<TypeConfig>>(id: NodeId, log: &mut L) -> anyhow::Result<()> {
    let vote = log.read_vote().await.context("read vote")?;
    if let Some(v) = vote.filter(|v| v.is_committed() && v.leader_id().voted_for() == Some(id)) {
        log.save_vote(&openraft::Vote::new(v.leader_id().get_term(), id)).await.context("save vote")?;
    }
    Ok(())
}

impl Consensus {
    /// Starts Raft as node `id` over these stores.
    pub async fn start<L, S>(id: NodeId, config: &Config, network: Network, log: L, sm: S) -> anyhow::Result<Self>
    where
        L: RaftLogStorage<TypeConfig>,
        S: RaftStateMachine<TypeConfig>,
    {
        let mut log = log;
        no_leadership_across_restart(id, &mut log).await?;
        let raft = Raft::new(id, Arc::new(raft_config(config)?), network, log, sm).await.context("start raft")?;
        let timeout = config.limits.request_timeout;
        let barrier = ReadBarrier::new(raft.clone(), timeout);
        let proposer = Proposer::start(raft.clone(), timeout, config.limits.max_request_bytes);
        Ok(Self { raft, id, barrier, membership: Default::default(), proposer, write_timeout: timeout })
    }

    /// Stops Raft's core; its storage tasks end shortly after.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }

    pub fn is_leader(&self) -> bool {
        self.current_leader() == Some(self.id)
    }

    /// Calls `changed` each time this node learns of a new leader, until `stop`.
    pub async fn watch_leader(&self, changed: impl Fn(), mut stop: watch::Receiver<bool>) {
        let mut rx = self.raft.metrics();
        let mut last = rx.borrow().current_leader;
        loop {
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
            let now = rx.borrow().current_leader;
            if now.is_some() && now != last {
                changed();
            }
            last = now;
        }
    }

    /// Proposes `cmd`, grouped with the commands of other callers in flight at the same
    /// time (`proposer.rs`).
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, Fail> {
        self.proposer.write(cmd, self.write_timeout).await
    }

    pub async fn read_barrier(&self) -> Result<(), Fail> {
        self.barrier.wait().await
    }

    /// Adds `id` as a learner, waits until it caught up, then promotes it to voter. The
    /// members it replaces — any other id at the same address (a memory-mode node that
    /// restarted), and `replaces` (a lost member, named by the replacement) — are removed
    /// afterwards, also when a retried join finds `id` a voter already.
    pub async fn join(&self, id: NodeId, node: NodeInfo, replaces: Option<NodeId>) -> Result<Vec<Member>, Fail> {
        let _serial = self.membership.lock().await;
        self.raft.ensure_linearizable().await.map_err(Fail::from_read)?;
        let status = self.status();
        let stale: BTreeSet<NodeId> = status
            .members
            .iter()
            .filter(|m| m.id != id && (m.peer_addr == node.peer_addr || Some(m.id) == replaces))
            .map(|m| m.id)
            .collect();
        let member = status.members.iter().find(|m| m.id == id);
        if let Some(m) = member.filter(|m| m.peer_addr != node.peer_addr) {
            let msg = format!("node {id} is already a member at {}; remove it first", m.peer_addr);
            return Err(Error::invalid(msg).into());
        }
        if !member.is_some_and(|m| m.voter) {
            self.still_a_member()?;
            let add = self.raft.add_learner(id, node, true);
            tokio::time::timeout(Duration::from_secs(120), add)
                .await
                .map_err(|_| Error::Timeout("learner did not catch up in time".into()))?
                .map_err(Fail::from_write)?;
            self.change(ChangeMembers::AddVoterIds([id].into())).await?;
        }
        if !stale.is_empty() {
            tracing::info!(?stale, new = id, "removing the members this node replaces");
            self.remove(stale).await?;
        }
        Ok(self.status().members)
    }

    pub async fn leave(&self, id: NodeId) -> Result<Vec<Member>, Fail> {
        let _serial = self.membership.lock().await;
        self.raft.ensure_linearizable().await.map_err(Fail::from_read)?;
        let status = self.status();
        let Some(member) = status.members.iter().find(|m| m.id == id) else {
            return Err(Error::NotFound(format!("node {id} is not a member")).into());
        };
        if member.voter && status.members.iter().filter(|m| m.voter).count() == 1 {
            return Err(Error::invalid("cannot remove the last voter").into());
        }
        self.remove([id].into()).await?;
        Ok(self.status().members)
    }

    async fn remove(&self, ids: BTreeSet<NodeId>) -> Result<(), Fail> {
        let voters: BTreeSet<NodeId> = self.status().members.iter().filter(|m| m.voter).map(|m| m.id).collect();
        let (v, l): (BTreeSet<NodeId>, BTreeSet<NodeId>) = ids.into_iter().partition(|i| voters.contains(i));
        if !v.is_empty() {
            self.change(ChangeMembers::RemoveVoters(v)).await?;
        }
        if !l.is_empty() {
            self.change(ChangeMembers::RemoveNodes(l)).await?;
        }
        Ok(())
    }

    async fn change(&self, changes: ChangeMembers<NodeId, NodeInfo>) -> Result<(), Fail> {
        self.still_a_member()?;
        self.raft.change_membership(changes, false).await.map_err(Fail::from_write)?;
        Ok(())
    }

    /// Refuses a membership change on a leader that a committed change has removed.
    /// openraft 0.9 answers that change when it is applied and steps the leader down only
    /// when its core next hears from the state machine, so a change sent in between (the
    /// next step of `remove`, or of a queued join) found it still leading a membership
    /// without itself: a debug build panics in openraft, a release build appends a
    /// membership from a leader outside it. The membership that removed it was appended,
    /// and reported in the metrics, long before, so checking them closes that window.
    fn still_a_member(&self) -> Result<(), Fail> {
        let m = self.raft.metrics().borrow().clone();
        if m.membership_config.membership().get_node(&self.id).is_some() {
            return Ok(());
        }
        tracing::warn!(id = self.id, "refusing a membership change: this node has been removed from the cluster");
        Err(Fail::unavailable("this node has been removed from the cluster; retry at the new leader"))
    }

    pub fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, n)| Member {
                id: *id,
                incarnation: n.incarnation,
                peer_addr: n.peer_addr.clone(),
                grpc_addr: n.grpc_addr.clone(),
                voter: voters.contains(id),
                leader: m.current_leader == Some(*id),
            })
            .collect();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower if !voters.contains(&self.id) => "learner",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        ClusterStatus {
            id: self.id,
            role: role.to_string(),
            leader_id: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
            members,
        }
    }

    /// Resolves once this node sees a leader other than `leader` (or none).
    pub async fn leader_moved_from(&self, leader: NodeId) {
        let mut rx = self.raft.metrics();
        let _ = rx.wait_for(|m| m.current_leader != Some(leader)).await;
    }

    /// Resolves once this node has applied the log up to `index` (or at `within`: false).
    pub async fn wait_applied(&self, index: u64, within: Duration) -> bool {
        let mut rx = self.raft.metrics();
        let applied = rx.wait_for(|m| m.last_applied.is_some_and(|l| l.index >= index));
        tokio::time::timeout(within, applied).await.is_ok_and(|r| r.is_ok())
    }

    /// The leader this node knows, if any.
    pub fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Resolves once this node sees a leader other than `seen` (a new one, or one at all).
    pub async fn leader_changed_from(&self, seen: Option<NodeId>) {
        let mut rx = self.raft.metrics();
        let _ = rx.wait_for(|m| m.current_leader.is_some() && m.current_leader != seen).await;
    }

    /// On the leader: the highest index a quorum of voters holds. Elsewhere: the applied
    /// index, a lower bound of the commit index.
    pub fn commit_index(&self) -> u64 {
        let m = self.raft.metrics().borrow().clone();
        let applied = m.last_applied.map_or(0, |l| l.index);
        let Some(replication) = m.replication.as_ref().filter(|_| m.state == ServerState::Leader) else {
            return applied;
        };
        let membership = m.membership_config.membership();
        let mut matched: Vec<u64> = membership
            .voter_ids()
            .map(|id| {
                if id == self.id {
                    m.last_log_index.unwrap_or(0)
                } else {
                    replication.get(&id).and_then(|l| l.map(|l| l.index)).unwrap_or(0)
                }
            })
            .collect();
        if matched.is_empty() {
            return applied;
        }
        matched.sort_unstable_by(|a, b| b.cmp(a));
        matched[matched.len() / 2].max(applied)
    }

    /// The leader's client address, for hints.
    pub fn leader(&self) -> Option<(NodeId, NodeInfo)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }
}

/// Breaks election livelocks. openraft 0.9 draws each node's election timeout once at start
/// and checks it on timer ticks; with one leader per term (`single-term-leader`) two
/// candidates whose timeouts land on the same tick split every vote forever (the chaos sweep
/// found this with one voter down, seed 43). When this node has been a candidate without a
/// leader for a while, it stops campaigning for a random time — it still grants votes — so
/// one candidate goes first.
pub async fn break_election_ties(consensus: Arc<Consensus>, max_election: Duration, mut stop: watch::Receiver<bool>) {
    let raft = &consensus.raft;
    use rand::Rng;
    let mut leaderless_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(max_election) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let m = raft.metrics().borrow().clone();
        if m.current_leader.is_some() || m.state != ServerState::Candidate {
            leaderless_since = None;
            continue;
        }
        let since = *leaderless_since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() < 2 * max_election {
            continue;
        }
        let pause = super::rt::rng().gen_range(0..2 * max_election.as_millis() as u64);
        tracing::info!(pause_ms = pause, term = m.current_term, "split votes: pausing this node's campaign");
        raft.runtime_config().elect(false);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        raft.runtime_config().elect(true);
        leaderless_since = None;
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
        snapshot_max_chunk_size: c.raft.snapshot_chunk_bytes,
        // Entries per AppendEntries: as many as fit one peer message at the largest request.
        max_payload_entries: (MAX_PEER_MESSAGE / (c.limits.max_request_bytes + 64 * 1024)).clamp(1, 300) as u64,
        ..Default::default()
    };
    Ok(cfg.validate()?)
}
