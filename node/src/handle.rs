//! `NodeHandle`: the one narrow API every front door uses.

use crate::config::Limits;
use crate::error::{Error, LeaderHint, Result};
use crate::io::Clock;
use crate::kv::{ClientRef, Command, CommandResult, Entry, Op, TxnOp};
use crate::metrics::Metrics;
use crate::raft::consensus::Consensus;
use crate::raft::network::{decode, encode, PeerChannels};
use crate::raft::types::{NodeId, NodeInfo};
use crate::raft::Fail;
use crate::store::SmStore;
pub use crate::watch::{EventStream, WatchItem};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    Linearizable,
    /// The local state machine of the node asked.
    Stale,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListQuery {
    pub prefix: Bytes,
    /// Start strictly after this key.
    pub after: Bytes,
    pub limit: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListPage {
    pub entries: Vec<(Bytes, Entry)>,
    /// The last key of a full page; absent on the last page.
    pub next_cursor: Option<Bytes>,
    /// The applied index the page was read at.
    pub revision: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    /// The process incarnation the membership recorded for this member.
    pub incarnation: u64,
    pub peer_addr: String,
    pub grpc_addr: String,
    pub voter: bool,
    pub leader: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub id: NodeId,
    pub role: String,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    /// Log entries up to here were purged after a snapshot: a new node needs the snapshot.
    pub purged_index: u64,
    pub members: Vec<Member>,
}

/// A request one node sends another over the peer channel.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    Write(Command),
    Read(Vec<Bytes>),
    List(ListQuery),
    Join {
        id: NodeId,
        node: NodeInfo,
        /// A lost member this node replaces: removed once the new one is a voter.
        replaces: Option<NodeId>,
    },
    Leave {
        id: NodeId,
    },
    /// Served by the node asked, never forwarded.
    Status,
    /// Who are you? Answered even before the cluster forms (bootstrap).
    Hello,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerReply {
    Write(CommandResult),
    Read(Vec<Option<Entry>>),
    List(ListPage),
    Members(Vec<Member>),
    Status(ClusterStatus),
    Hello(NodeId, NodeInfo),
}

#[derive(Clone)]
pub struct NodeHandle {
    inner: Arc<Inner>,
}

struct Inner {
    consensus: Consensus,
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
}

/// This node's own client ids: a random base, a new id every `EPOCH` writes (so one id's
/// results never overflow the dedup window however many writes are in flight).
struct OwnRefs {
    base: u64,
    next: std::sync::atomic::AtomicU64,
}

impl OwnRefs {
    const EPOCH: u64 = 16;

    fn next(&self) -> ClientRef {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ClientRef { client_id: self.base.wrapping_add(n / Self::EPOCH), seq: n % Self::EPOCH + 1 }
    }
}

impl NodeHandle {
    pub fn new(
        consensus: Consensus,
        sm: SmStore,
        peers: Arc<PeerChannels>,
        limits: Limits,
        me: NodeInfo,
        clock: Clock,
    ) -> Self {
        let metrics = Arc::default();
        let base = rand::Rng::gen(&mut crate::raft::rt::rng());
        let own_refs = OwnRefs { base, next: Default::default() };
        let expiring = Default::default();
        Self { inner: Arc::new(Inner { consensus, sm, peers, limits, me, clock, metrics, own_refs, expiring }) }
    }

    pub fn metrics(&self) -> &Metrics {
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

    pub(crate) fn consensus(&self) -> &Consensus {
        &self.inner.consensus
    }

    pub(crate) fn sm(&self) -> &SmStore {
        &self.inner.sm
    }

    pub async fn write(&self, mut cmd: Command) -> Result<CommandResult> {
        self.validate(&cmd)?;
        if cmd.client.is_none() && !matches!(cmd.op, Op::Expire) {
            cmd.client = Some(self.inner.own_refs.next());
        }
        match self.route(PeerRequest::Write(cmd)).await? {
            PeerReply::Write(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    pub async fn read(&self, key: &[u8], c: Consistency) -> Result<Option<Entry>> {
        let keys = [Bytes::copy_from_slice(key)];
        Ok(self.read_many(&keys, c).await?.pop().flatten())
    }

    pub async fn read_many(&self, keys: &[Bytes], c: Consistency) -> Result<Vec<Option<Entry>>> {
        for k in keys {
            self.inner.limits.check_key(k)?;
        }
        if c == Consistency::Stale {
            return Ok(self.local_read(keys, self.now_ms()));
        }
        match self.route(PeerRequest::Read(keys.to_vec())).await? {
            PeerReply::Read(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    pub async fn list(&self, mut q: ListQuery, c: Consistency) -> Result<ListPage> {
        self.inner.limits.check_list(&mut q)?;
        if c == Consistency::Stale {
            return Ok(self.local_list(&q, self.now_ms()));
        }
        match self.route(PeerRequest::List(q)).await? {
            PeerReply::List(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    /// Every applied change under `prefix` on this node, from `from_revision` if given.
    pub fn watch(&self, prefix: Bytes, from_revision: Option<u64>) -> EventStream {
        EventStream::new(self.inner.sm.hub().clone(), prefix, from_revision, self.id())
    }

    pub async fn status(&self) -> ClusterStatus {
        self.inner.consensus.status()
    }

    /// Adds node `id`, reachable at these peer and client addresses (admin join).
    pub async fn join(&self, id: NodeId, peer_addr: String, grpc_addr: String) -> Result<Vec<Member>> {
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
        match self.route(PeerRequest::Leave { id }).await? {
            PeerReply::Members(m) => Ok(m),
            other => Err(unexpected(other)),
        }
    }

    /// A hint to the current leader's client address, for `Unavailable` errors.
    pub fn leader_hint(&self) -> Option<LeaderHint> {
        self.inner.consensus.leader().map(|(id, n)| LeaderHint { id, grpc_addr: n.grpc_addr })
    }

    /// Serves locally, or forwards once to the leader. While there is no leader, or the
    /// leader cannot be reached, it waits for the next one (up to the request timeout)
    /// and tries again — only where the request surely did not reach a leader, so a
    /// write never applies twice. Clients without retries (curl, Dapr SDKs) ride out an
    /// election this way.
    async fn route(&self, req: PeerRequest) -> Result<PeerReply> {
        let deadline = tokio::time::Instant::now() + self.inner.limits.request_timeout;
        loop {
            let seen = self.inner.consensus.current_leader();
            let err = match self.route_once(req.clone()).await {
                Err(Retry::Safe(e)) => e,
                Err(Retry::No(e)) => return Err(e),
                Ok(reply) => return Ok(reply),
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(err);
            }
            // Wait for a leader change (or a little while), then try again; never spin.
            let wait = (deadline - now).min(Duration::from_millis(250));
            let settle = async {
                self.inner.consensus.leader_changed_from(seen).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let _ = tokio::time::timeout(wait, settle).await;
        }
    }

    async fn route_once(&self, req: PeerRequest) -> std::result::Result<PeerReply, Retry> {
        let forward_copy = req.clone();
        match self.serve_local(req).await {
            Ok(reply) => Ok(reply),
            Err(Fail::Forward(Some((id, node)))) if id != self.id() => self.forward(id, &node, forward_copy).await,
            Err(Fail::Forward(_)) => Err(Retry::Safe(Error::unavailable("no leader elected"))),
            Err(Fail::Err(e @ Error::Unavailable { .. })) if dedup_safe(&forward_copy) => Err(Retry::Safe(e)),
            Err(Fail::Err(e)) => Err(Retry::No(e)),
        }
    }

    /// Serves a request on this node without forwarding: what the peer server runs for a
    /// forwarded request, so a request is forwarded at most once.
    pub async fn serve_local(&self, req: PeerRequest) -> std::result::Result<PeerReply, Fail> {
        let c = &self.inner.consensus;
        match req {
            PeerRequest::Write(mut cmd) => {
                // The leader stamps its clock: apply derives versions and TTLs from it.
                cmd.now_ms = self.now_ms();
                Ok(PeerReply::Write(c.write(cmd).await?))
            }
            PeerRequest::Read(keys) => {
                c.read_barrier().await?;
                let now = self.expire_due_first().await?;
                Ok(PeerReply::Read(self.local_read(&keys, now)))
            }
            PeerRequest::List(q) => {
                c.read_barrier().await?;
                let now = self.expire_due_first().await?;
                Ok(PeerReply::List(self.local_list(&q, now)))
            }
            PeerRequest::Join { id, node, replaces } => Ok(PeerReply::Members(c.join(id, node, replaces).await?)),
            PeerRequest::Leave { id } => Ok(PeerReply::Members(c.leave(id).await?)),
            PeerRequest::Status => Ok(PeerReply::Status(c.status())),
            PeerRequest::Hello => Ok(PeerReply::Hello(self.id(), self.inner.me.clone())),
        }
    }

    async fn forward(
        &self,
        leader_id: NodeId,
        leader: &NodeInfo,
        req: PeerRequest,
    ) -> std::result::Result<PeerReply, Retry> {
        let unavailable = |reason: String| Error::Unavailable { reason, leader_hint: self.leader_hint() };
        // Reads change nothing, and a write carrying `(client_id, seq)` is deduplicated by
        // the state machine: trying either again is safe even when the outcome is unknown.
        let is_write = matches!(req, PeerRequest::Write(_));
        let safe = dedup_safe(&req);
        let unknown = |e: Error| if safe { Retry::Safe(e) } else { Retry::No(e) };
        let mut client =
            self.inner.peers.client(&leader.peer_addr).map_err(|e| Retry::Safe(unavailable(e.to_string())))?;
        let deadline = self.inner.limits.request_timeout + Duration::from_millis(500);
        let call = tokio::time::timeout(deadline, client.forward(encode(&req)));
        // A leader that stops answering (paused, partitioned) is replaced by an election;
        // stop waiting for it then, and let the caller retry against the new one.
        let reply = tokio::select! {
            r = call => r,
            _ = self.inner.consensus.leader_moved_from(leader_id) => {
                let reason = "leader changed while the request was forwarded; outcome unknown";
                return Err(if is_write {
                    unknown(Error::Timeout(reason.into()))
                } else {
                    Retry::Safe(unavailable(reason.into()))
                });
            }
        };
        let reply = match reply {
            Ok(Ok(r)) => r.into_inner(),
            // A connection that was never made carried nothing.
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable && never_sent(&status) => {
                return Err(Retry::Safe(unavailable(format!("leader unreachable: {}", status.message()))))
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable && !is_write => {
                return Err(Retry::Safe(unavailable(format!("leader unreachable: {}", status.message()))))
            }
            // The write may have reached the leader: its outcome is unknown.
            Ok(Err(status)) if is_write => return Err(unknown(Error::Timeout(status.message().to_string()))),
            Ok(Err(status)) => return Err(Retry::Safe(unavailable(status.message().to_string()))),
            Err(_) if is_write => return Err(unknown(Error::Timeout("forwarded write timed out".into()))),
            Err(_) => return Err(Retry::Safe(unavailable("forwarded request timed out".into()))),
        };
        match decode::<Result<PeerReply>>(&reply) {
            Ok(Ok(r)) => Ok(r),
            // The leader refused (not the leader any more: the entry was never proposed, or
            // was truncated uncommitted) or stopped with the write in flight (then only a
            // deduplicated write may go again).
            Ok(Err(e @ Error::Unavailable { .. })) if safe => Err(Retry::Safe(e)),
            Ok(Err(e @ Error::Unavailable { .. })) => Err(Retry::No(e)),
            Ok(Err(e)) => Err(Retry::No(e)),
            Err(e) => Err(Retry::No(Error::internal(e))),
        }
    }

    /// On the leader, before a linearizable read: a key whose TTL ran out by this node's
    /// clock is expired through the log first, so no later leader (whose clock may be
    /// behind) can serve it again once a read has reported it gone. Returns the time the
    /// read is to judge TTLs at: nothing due by then is left unexpired in the log.
    async fn expire_due_first(&self) -> std::result::Result<u64, Fail> {
        let now = self.now_ms();
        if !self.due(now) {
            return Ok(now);
        }
        let _one = self.inner.expiring.lock().await;
        if self.due(now) {
            self.inner.consensus.write(Command { client: None, now_ms: now, op: Op::Expire }).await?;
        }
        Ok(now)
    }

    /// Whether some key's TTL ran out by `now` (or by the state machine's own clock).
    pub(crate) fn due(&self, now: u64) -> bool {
        let st = self.inner.sm.read();
        st.kv.next_expiry().is_some_and(|t| t <= now.max(st.kv.clock_ms()))
    }

    fn local_read(&self, keys: &[Bytes], now: u64) -> Vec<Option<Entry>> {
        let st = self.inner.sm.read();
        keys.iter().map(|k| st.kv.get(k, now).cloned()).collect()
    }

    fn local_list(&self, q: &ListQuery, now: u64) -> ListPage {
        let st = self.inner.sm.read();
        let entries = st.kv.list(&q.prefix, &q.after, q.limit, now);
        let next_cursor = (entries.len() == q.limit).then(|| entries.last().map(|(k, _)| k.clone())).flatten();
        ListPage { entries, next_cursor, revision: st.last_applied.map_or(0, |l| l.index) }
    }

    fn validate(&self, cmd: &Command) -> Result<()> {
        let limits = &self.inner.limits;
        match &cmd.op {
            Op::Put(p) => limits.check_put(p),
            Op::Delete(d) => limits.check_key(&d.key),
            Op::Txn(ops) | Op::Batch(ops) => {
                limits.check_batch(ops.len())?;
                let mut total = 0usize;
                for op in ops {
                    match op {
                        TxnOp::Put(p) => limits.check_put(p)?,
                        TxnOp::Delete(d) => limits.check_key(&d.key)?,
                    }
                    total += op.key().len() + if let TxnOp::Put(p) = op { p.value.len() } else { 0 };
                }
                limits.check_request(total)
            }
            Op::Expire => Ok(()),
        }
    }
}

/// Whether a request may be served again after an attempt of unknown outcome: reads, and
/// writes the state machine deduplicates by `(client_id, seq)` (every write `write` sends).
fn dedup_safe(req: &PeerRequest) -> bool {
    !matches!(req, PeerRequest::Write(c) if c.client.is_none())
}

/// A failed attempt, and whether trying again is safe.
enum Retry {
    /// The request surely changed nothing.
    Safe(Error),
    No(Error),
}

/// Whether a transport failure happened before the request was sent (connect refused, no
/// route): the only transport failures after which a write may be retried.
fn never_sent(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    let mut source = status.source();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
            );
        }
        source = e.source();
    }
    false
}

/// A reply of the wrong kind for its request: a bug, never the caller's fault.
fn unexpected(reply: PeerReply) -> Error {
    Error::internal(format!("unexpected reply {reply:?}"))
}
