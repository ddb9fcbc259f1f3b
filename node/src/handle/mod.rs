//! `NodeHandle`: the one narrow API every front door uses. Typed operations in, typed
//! results out (`api`); whether this node serves a request or forwards it to the leader is
//! `route.rs`'s business, how write results are unpacked is `write.rs`'s.

mod route;
mod write;

pub use crate::api::*;
pub use crate::watch::{EventStream, SessionNews, WatchItem};

use crate::auth::rules::Access;
use crate::auth::Caller;
use crate::config::Limits;
use crate::error::{Error, LeaderHint, Result};
use crate::io::Clock;
use crate::kv::Entry;
use crate::metrics::Metrics;
use crate::raft::consensus::Consensus;
use crate::raft::network::PeerChannels;
use crate::raft::peer::{ask, unexpected, PeerReply, PeerRequest};
use crate::raft::types::NodeInfo;
use crate::store::SmStore;
use bytes::Bytes;
use std::sync::Arc;
use write::OwnRefs;

/// A handle acts for one caller (`acting_for`): every key it reads or writes, every cluster
/// operation, is checked against that caller's rules here, once for every door. A new handle
/// acts for the node itself (`Caller::Root`).
#[derive(Clone)]
pub struct NodeHandle {
    inner: Arc<Inner>,
    caller: Caller,
}

struct Inner {
    consensus: Arc<Consensus>,
    sm: SmStore,
    peers: Arc<PeerChannels>,
    limits: Limits,
    /// This node's own addresses, as it advertises them.
    me: NodeInfo,
    clock: Clock,
    metrics: Arc<Metrics>,
    /// `(client_id, seq)` for writes that arrive without one (Dapr, native HTTP): a write
    /// this node retries after a leader failed mid-way is then answered from the state
    /// machine's dedup table instead of applied twice.
    own_refs: OwnRefs,
    /// One expiry proposal at a time for linearizable reads that find a key due.
    expiring: tokio::sync::Mutex<()>,
    /// Where messages other nodes deliver to this node's MQTT clients go (`mailbox`).
    mailbox: std::sync::Mutex<Option<tokio::sync::mpsc::Sender<Bytes>>>,
}

impl NodeHandle {
    /// A handle over this node's consensus and state machine; `me` and `peers` answer and
    /// reach other nodes.
    pub fn new(
        consensus: Arc<Consensus>,
        sm: SmStore,
        peers: Arc<PeerChannels>,
        limits: Limits,
        me: NodeInfo,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (own_refs, expiring, mailbox) = (OwnRefs::new(), Default::default(), Default::default());
        let inner = Inner { consensus, sm, peers, limits, me, clock, metrics, own_refs, expiring, mailbox };
        Self { inner: Arc::new(inner), caller: Caller::Root }
    }

    /// This handle, acting for `caller`.
    pub fn acting_for(&self, caller: Caller) -> Self {
        Self { inner: self.inner.clone(), caller }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The committed index as this node knows it: exact on the leader (the index a quorum
    /// of voters holds), the applied index (a lower bound) elsewhere.
    pub fn commit_index(&self) -> u64 {
        self.inner.consensus.commit_index()
    }

    /// This node's wall clock, in Unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        (self.inner.clock)()
    }

    pub fn id(&self) -> NodeId {
        self.inner.consensus.id
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    pub(crate) fn sm(&self) -> &SmStore {
        &self.inner.sm
    }

    pub async fn get(&self, key: &[u8], c: Consistency) -> Result<Option<Entry>> {
        let keys = [Bytes::copy_from_slice(key)];
        Ok(self.get_many(&keys, c).await?.pop().flatten())
    }

    /// Reads every key at one read index; answers in request order.
    pub async fn get_many(&self, keys: &[Bytes], c: Consistency) -> Result<Vec<Option<Entry>>> {
        let limits = &self.inner.limits;
        limits.check_bulk_read(keys.len())?;
        for k in keys {
            limits.check_key(k)?;
            self.caller.check(k, Access::Read)?;
        }
        let got = if c == Consistency::Stale {
            self.local_read(keys, self.now_ms())
        } else {
            match self.route(PeerRequest::Read(keys.to_vec())).await? {
                PeerReply::Read(r) => r,
                other => return Err(unexpected(other)),
            }
        };
        let bytes = keys.iter().zip(&got).map(|(k, e)| e.as_ref().map_or(0, |e| k.len() + e.value.len())).sum();
        limits.check_reply(bytes)?;
        Ok(got)
    }

    /// Whether this node can serve a linearizable read right now (readiness).
    pub async fn ready(&self) -> Result<()> {
        self.get_many(&[], Consistency::Linearizable).await.map(drop)
    }

    /// One page of keys under a prefix: only those the caller may read (the cursor still
    /// moves on past the others).
    pub async fn list(&self, mut q: ListQuery, c: Consistency) -> Result<ListPage> {
        self.inner.limits.check_list(&mut q)?;
        self.caller.check_some_keys()?;
        let mut page = if c == Consistency::Stale {
            self.local_list(&q, self.now_ms())
        } else {
            match self.route(PeerRequest::List(q)).await? {
                PeerReply::List(p) => p,
                other => return Err(unexpected(other)),
            }
        };
        page.entries.retain(|(k, _)| self.caller.may(k, Access::Read));
        Ok(page)
    }

    /// Every applied change under `prefix` on this node, from `from_revision` if given, to
    /// the keys the caller may read. At most `max_watchers` at once on this node.
    pub fn watch(&self, prefix: Bytes, from_revision: Option<u64>) -> Result<EventStream> {
        let limits = &self.inner.limits;
        limits.check_request(prefix.len())?;
        self.caller.check_some_keys()?;
        let mut stream = EventStream::new(self.inner.sm.hub().clone(), prefix, from_revision, self.id());
        if !matches!(self.caller, Caller::Root) {
            let caller = self.caller.clone();
            stream.keep_only(move |key| caller.may(key, Access::Read));
        }
        if self.inner.sm.hub().watchers() > limits.max_watchers {
            return Err(Error::Exhausted(format!("{} watches are open on this node", limits.max_watchers)));
        }
        Ok(stream)
    }

    /// `client`'s MQTT session record as this node applied it.
    pub fn session_record(&self, client: &str) -> Option<crate::kv::SessionRecord> {
        self.inner.sm.read().kv.session(client).cloned()
    }

    /// Which MQTT session records this node applies from now on.
    pub fn session_news(&self) -> tokio::sync::broadcast::Receiver<SessionNews> {
        self.inner.sm.hub().subscribe_sessions()
    }

    /// Every MQTT session record this node applied.
    pub fn session_records(&self) -> Vec<(String, crate::kv::SessionRecord)> {
        self.inner.sm.read().kv.sessions().map(|(c, r)| (c.clone(), r.clone())).collect()
    }

    /// From now on, messages other nodes deliver here (`deliver`) arrive on the returned
    /// channel (one taker: a later call replaces it). A full channel drops them.
    pub fn mailbox(&self, capacity: usize) -> tokio::sync::mpsc::Receiver<Bytes> {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        *self.inner.mailbox.lock().expect("poisoned") = Some(tx);
        rx
    }

    /// The ids of the cluster's members.
    pub fn members(&self) -> Vec<NodeId> {
        self.inner.consensus.status().members.iter().map(|m| m.id).collect()
    }

    /// Hands `message` to node `to`'s mailbox, at most once (not retried).
    pub async fn deliver(&self, to: NodeId, message: Bytes) -> Result<()> {
        let members = self.inner.consensus.status().members;
        let member = members.iter().find(|m| m.id == to).ok_or_else(|| Error::NotFound(format!("node {to}")))?;
        let req = PeerRequest::Deliver(message);
        ask(&self.inner.peers, &member.peer_addr, &req, self.inner.limits.request_timeout)
            .await
            .map(drop)
            .map_err(|e| Error::unavailable(format!("delivery to node {to}: {e}")))
    }

    /// A message another node delivered (`PeerRequest::Deliver`).
    pub(crate) fn take_delivery(&self, message: Bytes) {
        if let Some(tx) = &*self.inner.mailbox.lock().expect("poisoned") {
            let _ = tx.try_send(message);
        }
    }

    /// A consistent copy of the whole state, holding every write acknowledged before the
    /// call: the revision it is at, and the state machine's snapshot.
    /// Served from this node's own state once it applied the leader's read index.
    pub async fn backup(&self) -> Result<(u64, Vec<u8>)> {
        self.caller.check_admin()?;
        let index = match self.route(PeerRequest::ReadIndex).await? {
            PeerReply::ReadIndex(i) => i,
            other => return Err(unexpected(other)),
        };
        if !self.inner.consensus.wait_applied(index, self.inner.limits.request_timeout).await {
            return Err(Error::unavailable(format!("this node has not applied index {index} yet")));
        }
        let st = self.inner.sm.read();
        Ok((st.kv.revision(), crate::kv::snapshot::encode(&st.kv)))
    }

    pub async fn status(&self) -> ClusterStatus {
        self.inner.consensus.status()
    }

    /// Adds node `id`, reachable at these peer and client addresses (admin join).
    pub async fn join(&self, id: NodeId, peer_addr: String, grpc_addr: String) -> Result<Vec<Member>> {
        self.caller.check_admin()?;
        if id == 0 {
            return Err(Error::invalid("node id must be at least 1"));
        }
        crate::config::check_addr(&peer_addr)?;
        crate::config::check_addr(&grpc_addr)?;
        let node = NodeInfo { peer_addr, grpc_addr, incarnation: 0 };
        match self.route(PeerRequest::Join { id, node, replaces: None }).await? {
            PeerReply::Members(m) => Ok(m),
            other => Err(unexpected(other)),
        }
    }

    pub async fn leave(&self, id: NodeId) -> Result<Vec<Member>> {
        self.caller.check_admin()?;
        match self.route(PeerRequest::Leave { id }).await? {
            PeerReply::Members(m) => Ok(m),
            other => Err(unexpected(other)),
        }
    }

    /// A hint to the current leader's client address, for `Unavailable` errors.
    pub fn leader_hint(&self) -> Option<LeaderHint> {
        self.inner.consensus.leader().map(|(id, n)| LeaderHint { id, grpc_addr: n.grpc_addr })
    }

    /// Whether some key's TTL ran out by `now` (or by the state machine's own clock).
    fn due(&self, now: u64) -> bool {
        let st = self.inner.sm.read();
        st.kv.next_expiry().is_some_and(|t| t <= now.max(st.kv.clock_ms()))
    }

    fn local_read(&self, keys: &[Bytes], now: u64) -> Vec<Option<Entry>> {
        let st = self.inner.sm.read();
        keys.iter().map(|k| st.kv.get(k, now).cloned()).collect()
    }

    /// One page: at most `q.limit` keys, and keys plus values within `max_response_bytes`
    /// (at least one key, so paging always moves on).
    fn local_list(&self, q: &ListQuery, now: u64) -> ListPage {
        let st = self.inner.sm.read();
        let mut entries = st.kv.list(&q.prefix, &q.after, q.limit, now);
        let mut full = entries.len() == q.limit;
        let mut bytes = 0usize;
        if let Some(cut) = entries.iter().position(|(k, e)| {
            bytes += k.len() + e.value.len();
            bytes > self.inner.limits.max_response_bytes
        }) {
            entries.truncate(cut.max(1));
            full = true;
        }
        let next_cursor = full.then(|| entries.last().map(|(k, _)| k.clone())).flatten();
        ListPage { entries, next_cursor, revision: st.kv.revision() }
    }
}
