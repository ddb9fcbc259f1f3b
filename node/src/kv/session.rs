//! MQTT sessions as replicated state: which connection owns a client id, how long the
//! session outlives it, and what it subscribed to and observes. Every node applies the
//! same records, so a client that reconnects to any node resumes its session, a client id
//! connected to two nodes ends with one owner, and expiry is decided once, by the log.

use serde::{Deserialize, Serialize};

/// Most sessions the cluster keeps; an `Open` for a new client id beyond it is refused.
pub const MAX_SESSIONS: usize = 100_000;

/// The connection serving a session: a node, that node's run, and a connection of that run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub node: u64,
    /// Random per run of the node: a restarted node's old connections are told apart.
    pub boot: u64,
    pub conn: u64,
}

/// One subscription as the session keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubRecord {
    pub filter: String,
    /// 0 or 1.
    pub qos: u8,
    pub no_local: bool,
}

/// What the cluster keeps of one client id's session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The connection serving it; `None` while the client is away.
    pub owner: Option<Owner>,
    /// The node of the last owner: where messages for the session go (while the client is
    /// away, that node queues them).
    pub home: u64,
    /// Session Expiry Interval, seconds.
    pub expiry_s: u32,
    /// When the owner went away (state-machine clock, ms): the session ends `expiry_s` later.
    pub detached_ms: u64,
    /// The owner's last saved change: a save older than this one is stale.
    pub gen: u64,
    pub subs: Vec<SubRecord>,
    /// Keys observed with KEYNOTIFY.
    pub observed: Vec<bytes::Bytes>,
    /// The dedup client id of the session's state store writes (`ClientRef::client_id`):
    /// a request retried after a failover is answered from the dedup table, not applied again.
    /// Chosen at random by the node that opened the session; kept when it resumes.
    pub dedup_id: u64,
}

impl SessionRecord {
    /// When a detached session ends; `None` while owned.
    pub fn ends_at(&self) -> Option<u64> {
        self.owner.is_none().then(|| self.detached_ms.saturating_add(u64::from(self.expiry_s) * 1000))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionOp {
    /// A connection opened for `client`: it owns the session from now on (whoever owned it
    /// before is taken over). `clean` starts from nothing; otherwise a live session resumes.
    Open { client: String, owner: Owner, clean: bool, expiry_s: u32, dedup_id: u64 },
    /// The owner's subscriptions and observations as of its change `gen`; ignored unless
    /// `owner` still owns the session and `gen` is newer than the saved one.
    Save { client: String, owner: Owner, gen: u64, subs: Vec<SubRecord>, observed: Vec<bytes::Bytes> },
    /// The owner's connection ended: the session waits `expiry_s` for the client (0 ends it).
    /// Ignored unless `owner` still owns it.
    Close { client: String, owner: Owner, expiry_s: u32 },
    /// Node `node` started a new run `boot`: the sessions its earlier runs served have no
    /// connection any more and start their expiry.
    Orphan { node: u64, boot: u64 },
}

/// What a session op answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionResult {
    /// The session as the op left it, and for `Open` whether an earlier one was resumed.
    Done { resumed: bool, record: Option<SessionRecord> },
    /// `Open` of a new client id while `MAX_SESSIONS` are kept.
    Quota,
    /// `Orphan`: how many sessions were detached.
    Orphaned(u32),
}
