//! Where a request is served: on this node when it leads, else forwarded once to the
//! leader over the peer channel. While there is no leader, or the leader cannot be
//! reached, a request waits for the next one and tries again — only when trying again is
//! safe (a read, or a write the state machine deduplicates), so a write never applies twice.

use super::NodeHandle;
use crate::api::NodeId;
use crate::error::{Error, LeaderHint, Result};
use crate::kv::{Command, Op};
use crate::raft::network::{decode, encode};
use crate::raft::peer::{PeerReply, PeerRequest, ServeLocal};
use crate::raft::types::NodeInfo;
use crate::raft::Fail;
use futures::future::BoxFuture;
use std::time::Duration;

/// A failed attempt, and whether trying again is safe.
enum Retry {
    /// The request surely changed nothing.
    Safe(Error),
    No(Error),
}

impl NodeHandle {
    /// Serves locally, or forwards once to the leader, retrying (up to the request timeout)
    /// while that is safe. Clients without retries (curl, Dapr SDKs) ride out an election.
    pub(super) async fn route(&self, req: PeerRequest) -> Result<PeerReply> {
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
        match self.serve(req).await {
            Ok(reply) => Ok(reply),
            Err(Fail::Forward(Some((id, node)))) if id != self.id() => self.forward(id, &node, forward_copy).await,
            Err(Fail::Forward(_)) => Err(Retry::Safe(Error::unavailable("no leader elected"))),
            Err(Fail::Err(e @ Error::Unavailable { .. })) if dedup_safe(&forward_copy) => Err(Retry::Safe(e)),
            Err(Fail::Err(e)) => Err(Retry::No(e)),
        }
    }

    /// Serves a request on this node without forwarding: what the peer server runs for a
    /// forwarded request, so a request is forwarded at most once.
    async fn serve(&self, req: PeerRequest) -> std::result::Result<PeerReply, Fail> {
        let c = &self.inner.consensus;
        match req {
            PeerRequest::Write(mut cmd) => {
                self.inner.limits.check_op(&cmd.op)?;
                // The leader stamps its clock: apply derives versions and TTLs from it.
                cmd.now_ms = self.now_ms();
                Ok(PeerReply::Write(c.write(cmd).await?))
            }
            PeerRequest::Read(keys) => {
                let limits = &self.inner.limits;
                limits.check_bulk_read(keys.len())?;
                keys.iter().try_for_each(|k| limits.check_key(k))?;
                c.read_barrier().await?;
                let now = self.expire_due_first().await?;
                Ok(PeerReply::Read(self.local_read(&keys, now)))
            }
            PeerRequest::List(mut q) => {
                self.inner.limits.check_list(&mut q)?;
                c.read_barrier().await?;
                let now = self.expire_due_first().await?;
                Ok(PeerReply::List(self.local_list(&q, now)))
            }
            PeerRequest::ReadIndex => {
                c.read_barrier().await?;
                Ok(PeerReply::ReadIndex(self.sm().read().last_applied.map_or(0, |l| l.index)))
            }
            PeerRequest::Join { id, node, replaces } => Ok(PeerReply::Members(c.join(id, node, replaces).await?)),
            PeerRequest::Leave { id } => Ok(PeerReply::Members(c.leave(id).await?)),
            PeerRequest::Status => Ok(PeerReply::Status(c.status())),
            PeerRequest::Hello => Ok(PeerReply::Hello(self.id(), self.inner.me.clone())),
            PeerRequest::Deliver(message) => {
                self.take_delivery(message);
                Ok(PeerReply::Delivered)
            }
        }
    }

    /// Sends `req` to the leader once. Reads change nothing, and a write carrying
    /// `(client_id, seq)` is deduplicated by the state machine: trying either again is safe
    /// even when the outcome is unknown.
    async fn forward(
        &self,
        leader_id: NodeId,
        leader: &NodeInfo,
        req: PeerRequest,
    ) -> std::result::Result<PeerReply, Retry> {
        let (is_write, safe) = (matches!(req, PeerRequest::Write(_)), dedup_safe(&req));
        let mut client = self.inner.peers.client(&leader.peer_addr).map_err(|e| Retry::Safe(self.unavailable(e)))?;
        let deadline = self.inner.limits.request_timeout + Duration::from_millis(500);
        let call = tokio::time::timeout(deadline, client.forward(encode(&req)));
        // A leader that stops answering (paused, partitioned) is replaced by an election;
        // stop waiting for it then, and let the caller retry against the new one.
        let reply = tokio::select! {
            r = call => r,
            _ = self.inner.consensus.leader_moved_from(leader_id) => {
                let reason = "leader changed while the request was forwarded; outcome unknown";
                return Err(match is_write {
                    true => unknown(safe, Error::Timeout(reason.into())),
                    false => Retry::Safe(self.unavailable(reason)),
                });
            }
        };
        let reply = match reply {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => return Err(self.transport_failed(&status, is_write, safe)),
            Err(_) if is_write => return Err(unknown(safe, Error::Timeout("forwarded write timed out".into()))),
            Err(_) => return Err(Retry::Safe(self.unavailable("forwarded request timed out"))),
        };
        match decode::<Result<PeerReply>>(&reply) {
            Ok(Ok(r)) => Ok(r),
            // The leader refused (not the leader any more: the entry was never proposed, or
            // was truncated uncommitted) or stopped with the write in flight (then only a
            // deduplicated write may go again).
            Ok(Err(e @ Error::Unavailable { .. })) => Err(unknown(safe, e)),
            Ok(Err(e)) => Err(Retry::No(e)),
            Err(e) => Err(Retry::No(Error::internal(e))),
        }
    }

    /// A forward that failed in transport. Only a connection never made, or a read, surely
    /// changed nothing; a write that may have reached the leader has an unknown outcome.
    fn transport_failed(&self, status: &tonic::Status, is_write: bool, safe: bool) -> Retry {
        let unreachable = status.code() == tonic::Code::Unavailable && (never_sent(status) || !is_write);
        match (unreachable, is_write) {
            (true, _) => Retry::Safe(self.unavailable(format!("leader unreachable: {}", status.message()))),
            (false, true) => unknown(safe, Error::Timeout(status.message().to_string())),
            (false, false) => Retry::Safe(self.unavailable(status.message())),
        }
    }

    fn unavailable(&self, reason: impl ToString) -> Error {
        Error::Unavailable { reason: reason.to_string(), leader_hint: self.leader_hint() }
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
}

impl ServeLocal for NodeHandle {
    fn serve_local(&self, req: PeerRequest) -> BoxFuture<'_, std::result::Result<PeerReply, Fail>> {
        Box::pin(self.serve(req))
    }

    fn leader_hint(&self) -> Option<LeaderHint> {
        NodeHandle::leader_hint(self)
    }
}

/// An attempt of unknown outcome: retried only when `safe` (see `dedup_safe`).
fn unknown(safe: bool, e: Error) -> Retry {
    if safe {
        Retry::Safe(e)
    } else {
        Retry::No(e)
    }
}

/// Whether a request may be served again after an attempt of unknown outcome: reads, and
/// writes the state machine deduplicates by `(client_id, seq)` (every write `write` sends).
fn dedup_safe(req: &PeerRequest) -> bool {
    !matches!(req, PeerRequest::Write(c) if c.client.is_none())
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
