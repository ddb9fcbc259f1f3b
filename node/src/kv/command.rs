//! What a log entry asks the state machine to do, and what it answers.

use super::hlc::Hlc;
use super::session::{SessionOp, SessionResult};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Identifies a write across retries: the state machine answers a repeated
/// `(client_id, seq)` from memory instead of applying it twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRef {
    pub client_id: u64,
    pub seq: u64,
}

impl ClientRef {
    /// The top bit of `seq` marks a node's own reference (a write whose caller gave none);
    /// callers' own references never set it (`NodeHandle::write` refuses them).
    pub const OWN: u64 = 1 << 63;

    /// A node's own reference: `nth` (below 16) of the writes it sends under `client_id`,
    /// which the node stops retrying at `deadline_ms` (its wall clock).
    pub fn own(client_id: u64, deadline_ms: u64, nth: u64) -> Self {
        debug_assert!(nth < 16 && deadline_ms < 1 << 59);
        Self { client_id, seq: Self::OWN | deadline_ms << 4 | nth }
    }

    /// The deadline of a node's own reference; `None` for a caller's.
    pub fn own_deadline(&self) -> Option<u64> {
        (self.seq & Self::OWN != 0).then_some((self.seq & !Self::OWN) >> 4)
    }
}

/// One log entry's worth of work. Everything `apply` needs is decided by the proposer,
/// so every replica computes the same result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Set when the caller wants exactly-once semantics across retries.
    pub client: Option<ClientRef>,
    /// The proposing leader's wall clock: the base for HLC versions and TTL arithmetic.
    pub now_ms: u64,
    pub op: Op,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put(Put),
    Delete(Delete),
    /// All-or-nothing: every condition holds and every op applies, or none does.
    Txn(Vec<TxnOp>),
    /// Each op applied on its own (Dapr bulk save: partial success, one log entry).
    Batch(Vec<TxnOp>),
    /// Delete every key, and end every detached MQTT session, whose expiry is at or before
    /// the command's `now_ms`.
    Expire,
    /// An MQTT session change (`session.rs`).
    Session(SessionOp),
    /// Commands of several callers in one log entry, each applied on its own with a
    /// revision of its own, in order (the leader's proposer packs them: one fsync serves
    /// them all). Built only by the leader, never taken from a request.
    Group(Vec<Command>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    Put(Put),
    Delete(Delete),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Put {
    pub key: Bytes,
    pub value: Bytes,
    pub ttl_ms: Option<u64>,
    pub condition: PutCondition,
    /// AIO `__ft`: required once the key carries a fencing token.
    pub fencing: Option<Hlc>,
    /// AIO `__ts`: the client's clock, merged into the new version.
    pub client_ts: Option<Hlc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PutCondition {
    Always,
    /// The key's revision equals this one; 0 means the key must not exist.
    IfRevision(u64),
    /// NX: the key does not exist.
    IfAbsent,
    /// NEX: the key does not exist or its value equals the new value.
    IfAbsentOrEqual,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delete {
    pub key: Bytes,
    pub condition: DeleteCondition,
    pub fencing: Option<Hlc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeleteCondition {
    Always,
    IfRevision(u64),
    /// VDEL: the current value equals this one.
    IfValue(Bytes),
}

/// A key's metadata as a write leaves it (values are not echoed back).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub revision: u64,
    pub create_revision: u64,
    pub version: Hlc,
    pub expires_at_ms: Option<u64>,
}

/// Why `apply` refused an op without changing anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    /// The key is fenced and the request carries no token.
    FencingRequired,
    /// The request's token is older than the key's.
    FencingStale,
    /// A retried `(client_id, seq)` older than the dedup window: it may or may not have
    /// applied, and the state machine no longer knows which.
    DuplicateUnknown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    Put { applied: bool, meta: Option<Meta> },
    Delete(DeleteOutcome),
    Rejected(Rejection),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeleteOutcome {
    Deleted,
    NotFound,
    ConditionFailed,
}

/// The answer to one command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    /// The revision the command got: a cluster-wide counter, one step per command (a
    /// group's commands each take one), never below the log index of its entry.
    pub revision: u64,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Op(OpResult),
    /// `failed` is the index of the first op that stopped the transaction.
    Txn {
        succeeded: bool,
        failed: Option<u32>,
        results: Vec<OpResult>,
    },
    Batch(Vec<OpResult>),
    Expired {
        count: u32,
    },
    Session(SessionResult),
    /// A membership or blank entry: nothing for the key space.
    None,
    /// A group's results, one per command, in order.
    Group(Vec<CommandResult>),
}

impl Op {
    /// The ops this command touches, for validation at the front door.
    pub fn items(&self) -> &[TxnOp] {
        match self {
            Op::Txn(ops) | Op::Batch(ops) => ops,
            Op::Put(_) | Op::Delete(_) | Op::Expire | Op::Session(_) | Op::Group(_) => &[],
        }
    }
}

impl Command {
    /// About how many bytes the command takes in a log entry, to bound a group's size.
    pub fn approx_bytes(&self) -> usize {
        const OVERHEAD: usize = 64;
        let put = |p: &Put| OVERHEAD + p.key.len() + p.value.len();
        let del = |d: &Delete| {
            OVERHEAD + d.key.len() + if let DeleteCondition::IfValue(v) = &d.condition { v.len() } else { 0 }
        };
        let item = |o: &TxnOp| match o {
            TxnOp::Put(p) => put(p),
            TxnOp::Delete(d) => del(d),
        };
        match &self.op {
            Op::Put(p) => put(p),
            Op::Delete(d) => del(d),
            Op::Txn(ops) | Op::Batch(ops) => OVERHEAD + ops.iter().map(item).sum::<usize>(),
            Op::Expire => OVERHEAD,
            Op::Session(s) => OVERHEAD + bincode::serialized_size(s).map_or(0, |n| n as usize),
            Op::Group(cmds) => OVERHEAD + cmds.iter().map(Command::approx_bytes).sum::<usize>(),
        }
    }
}

impl TxnOp {
    pub fn key(&self) -> &Bytes {
        match self {
            TxnOp::Put(p) => &p.key,
            TxnOp::Delete(d) => &d.key,
        }
    }
}
