//! Typed writes: each builds its `Command` (client ref, op), sends it through `route`, and
//! unpacks the one `Outcome` shape its op can have. Deterministic refusals from `apply`
//! (fencing, a retry older than the dedup window) become errors here, once for every door.

use super::NodeHandle;
use crate::api::{BatchDone, DeleteDone, PutDone, TxnDone};
use crate::auth::rules::Access;
use crate::error::{Error, Result};
use crate::kv::{
    ClientRef, Command, CommandResult, Delete, DeleteOutcome, Op, OpResult, Outcome, Put, Rejection, SessionOp,
    SessionResult, TxnOp,
};
use crate::raft::peer::{unexpected, PeerReply, PeerRequest};
use std::sync::atomic::{AtomicU64, Ordering};

/// This node's own client ids: a random base, a new id every `EPOCH` writes (so one id's
/// results never overflow the dedup window however many writes are in flight). Each
/// reference carries the time this node stops retrying its write, which is how long the
/// state machine keeps its result (`kv::dedup`).
pub(super) struct OwnRefs {
    base: u64,
    next: AtomicU64,
}

impl OwnRefs {
    const EPOCH: u64 = 16;

    pub(super) fn new() -> Self {
        Self { base: rand::Rng::gen(&mut crate::raft::rt::rng()), next: AtomicU64::new(0) }
    }

    fn next(&self, deadline_ms: u64) -> ClientRef {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        ClientRef::own(self.base.wrapping_add(n / Self::EPOCH), deadline_ms, n % Self::EPOCH)
    }
}

impl NodeHandle {
    /// Writes one key. `client` identifies the write across the caller's own retries.
    pub async fn put(&self, put: Put, client: Option<ClientRef>) -> Result<PutDone> {
        self.inner.limits.check_put(&put)?;
        let r = self.write(Op::Put(put), client).await?;
        match one(r.outcome)? {
            OpResult::Put { applied, meta } => Ok(PutDone { revision: r.revision, applied, meta }),
            other => Err(wrong(other)),
        }
    }

    pub async fn delete(&self, del: Delete, client: Option<ClientRef>) -> Result<DeleteDone> {
        self.inner.limits.check_key(&del.key)?;
        let r = self.write(Op::Delete(del), client).await?;
        match one(r.outcome)? {
            OpResult::Delete(outcome) => Ok(DeleteDone { revision: r.revision, outcome }),
            other => Err(wrong(other)),
        }
    }

    /// All-or-nothing: every condition holds and every op applies, or none does.
    pub async fn txn(&self, ops: Vec<TxnOp>, client: Option<ClientRef>) -> Result<TxnDone> {
        self.inner.limits.check_ops(&ops)?;
        let r = self.write(Op::Txn(ops), client).await?;
        let Outcome::Txn { succeeded, failed, results } = r.outcome else {
            return Err(Error::internal(format!("a transaction answered {:?}", r.outcome)));
        };
        results.iter().try_for_each(refused)?;
        Ok(TxnDone { revision: r.revision, succeeded, failed })
    }

    /// Each op applies on its own, all in one log entry (Dapr's bulk save and delete).
    pub async fn batch(&self, ops: Vec<TxnOp>, client: Option<ClientRef>) -> Result<BatchDone> {
        self.inner.limits.check_ops(&ops)?;
        let r = self.write(Op::Batch(ops), client).await?;
        let Outcome::Batch(results) = r.outcome else {
            return Err(Error::internal(format!("a batch answered {:?}", r.outcome)));
        };
        results.iter().try_for_each(refused)?;
        let failed = results.iter().enumerate().filter(|(_, r)| !applied(r)).map(|(i, _)| i).collect();
        Ok(BatchDone { revision: r.revision, failed })
    }

    /// An MQTT session change (`kv::session`): the session as it left it. Returns once this
    /// node applied it too.
    pub async fn session(&self, op: SessionOp) -> Result<SessionResult> {
        self.inner.limits.check_session(&op)?;
        let r = self.write(Op::Session(op), None).await?;
        // Callers read the session's record on this node next: it must hold this change.
        if !self.sm().wait_revision(r.revision, self.inner.limits.request_timeout).await {
            return Err(Error::Timeout("this node did not apply the session change in time".into()));
        }
        match r.outcome {
            Outcome::Session(r) => Ok(r),
            other => Err(Error::internal(format!("a session change answered {other:?}"))),
        }
    }

    /// On the leader: deletes every key whose TTL ran out (the reaper's proposal).
    pub(crate) async fn expire_due(&self) -> Result<()> {
        if self.due(self.now_ms()) && self.inner.consensus.is_leader() {
            self.write(Op::Expire, None).await?;
        }
        Ok(())
    }

    /// Every write gets a `(client_id, seq)` — the caller's or one of this node's — so a
    /// retry after an unknown outcome is answered from the dedup table, never applied twice.
    async fn write(&self, op: Op, client: Option<ClientRef>) -> Result<CommandResult> {
        self.check_caller(&op)?;
        if client.is_some_and(|c| c.own_deadline().is_some()) {
            return Err(Error::invalid("a client seq must be below 2^63 (the top bit marks a node's own writes)"));
        }
        let own = client.is_none() && !matches!(op, Op::Expire);
        let client = client.or_else(|| {
            own.then(|| {
                // `route` stops retrying after the same timeout.
                let timeout_ms = self.inner.limits.request_timeout.as_millis() as u64;
                self.inner.own_refs.next(self.now_ms().saturating_add(timeout_ms))
            })
        });
        // `now_ms` is stamped by the leader that proposes it (`route.rs`, `serve`).
        let cmd = Command { client, now_ms: 0, op };
        match self.route(PeerRequest::Write(cmd)).await? {
            // Our own reference reached the log past its deadline (or a retry of it found its
            // result forgotten): the caller gets what a timeout tells, an unknown outcome.
            PeerReply::Write(r) if own && r.outcome == Outcome::Op(OpResult::Rejected(Rejection::DuplicateUnknown)) => {
                self.inner.metrics.late_write();
                Err(Error::Timeout(
                    "the write reached the leader past its deadline and was refused, or an earlier attempt applied; \
                     if this persists, check that this node's clock agrees with the leader's"
                        .into(),
                ))
            }
            PeerReply::Write(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }
}

impl NodeHandle {
    /// Whether the caller may write every key `op` writes.
    fn check_caller(&self, op: &Op) -> Result<()> {
        let check = |k: &[u8]| self.caller.check(k, Access::Write);
        match op {
            Op::Put(p) => check(&p.key),
            Op::Delete(d) => check(&d.key),
            Op::Txn(ops) | Op::Batch(ops) => ops.iter().try_for_each(|o| match o {
                TxnOp::Put(p) => check(&p.key),
                TxnOp::Delete(d) => check(&d.key),
            }),
            // The node's own (the MQTT door's sessions, under its own rules; the reaper).
            _ => match self.caller {
                crate::auth::Caller::Root => Ok(()),
                _ => Err(Error::Forbidden("only the node itself proposes this".into())),
            },
        }
    }
}

/// The result of a single-op command.
fn one(outcome: Outcome) -> Result<OpResult> {
    let Outcome::Op(r) = outcome else {
        return Err(Error::internal(format!("a single write answered {outcome:?}")));
    };
    refused(&r)?;
    Ok(r)
}

/// Whether an op's condition held (a delete of an absent key counts: nothing to delete).
fn applied(r: &OpResult) -> bool {
    !matches!(r, OpResult::Put { applied: false, .. } | OpResult::Delete(DeleteOutcome::ConditionFailed))
}

/// Turns a deterministic refusal from `apply` into the error the caller sees.
fn refused(r: &OpResult) -> Result<()> {
    match r {
        OpResult::Rejected(Rejection::FencingRequired) => {
            Err(Error::FencingRejected("a fencing token is required for this request".into()))
        }
        OpResult::Rejected(Rejection::FencingStale) => Err(Error::FencingRejected(
            "the request fencing token is a lower version than the fencing token protecting the resource".into(),
        )),
        OpResult::Rejected(Rejection::DuplicateUnknown) => Err(Error::ConditionFailed(
            "retried request is older than the deduplication window; its outcome is unknown".into(),
        )),
        _ => Ok(()),
    }
}

fn wrong(r: OpResult) -> Error {
    Error::internal(format!("a write answered for another op: {r:?}"))
}
