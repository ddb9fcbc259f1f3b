//! Sessions kept in the replicated state (`kv::session`), so they survive the node a client
//! was connected to. CONNECT records this connection as the session's owner (taking it
//! over from wherever it was) and resumes the subscriptions and KEYNOTIFY registrations
//! the record holds; each change to them is saved before it is acknowledged; the end of a
//! connection starts the session's expiry, which the leader's reaper ends cluster-wide.
//! Every node follows the records: a session taken over by another node is ended here.
//!
//! What stays on the node: messages queued for an absent client, unacknowledged deliveries
//! and the reply cache for repeated requests.

use super::{take_over, Attached, Broker, Refused};
use crate::auth::rules::Principal;
use crate::error::{Error, Result};
use crate::handle::SessionNews;
use crate::kv::{Owner, SessionOp, SessionResult};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};

impl Broker {
    fn owner(&self, conn: u64) -> Owner {
        Owner { node: self.handle().id(), boot: self.inner.boot, conn }
    }

    /// CONNECT: takes `client`'s session for a new connection, in the cluster and here.
    pub async fn connect(
        &self,
        client: &Arc<str>,
        principal: &Principal,
        clean: bool,
        expiry: u32,
    ) -> Result<Attached, Refused> {
        if !self.has_room(client) {
            return Err(Refused::Quota);
        }
        let conn = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let dedup_id = rand::Rng::gen(&mut rand::thread_rng());
        let op =
            SessionOp::Open { client: client.to_string(), owner: self.owner(conn), clean, expiry_s: expiry, dedup_id };
        match self.handle().session(op).await {
            Ok(SessionResult::Done { resumed, record: Some(record) }) => {
                self.attach(client, conn, expiry, resumed, &record, principal).ok_or(Refused::Superseded)
            }
            Ok(SessionResult::Quota) => Err(Refused::Quota),
            Ok(other) => {
                tracing::error!(?other, "a session open answered unexpectedly");
                Err(Refused::Unavailable)
            }
            Err(e) => {
                tracing::warn!(client = %client, error = %e, "session not recorded; connection refused");
                // The open may have applied all the same: hand the session back.
                self.close(client, conn, expiry);
                Err(Refused::Unavailable)
            }
        }
    }

    /// Saves `client`'s subscriptions and observations to its record: a session resumed
    /// on another node has them, and other nodes relay messages for them here. Fails when
    /// the session is no longer this connection's.
    pub async fn save(&self, client: &Arc<str>) -> Result<()> {
        let (op, owner, gen) = {
            let mut st = self.state();
            let Some(s) = st.sessions.get_mut(client) else { return Ok(()) };
            let Some((conn, _)) = s.conn else { return Ok(()) };
            s.gen += 1;
            let (owner, gen) = (self.owner(conn), s.gen);
            let subs = s.subs.iter().map(|sub| sub.record()).collect();
            let observed = s.observed.iter().cloned().collect();
            (SessionOp::Save { client: client.to_string(), owner, gen, subs, observed }, owner, gen)
        };
        match self.handle().session(op).await? {
            SessionResult::Done { record: Some(r), .. } if r.owner == Some(owner) && r.gen == gen => Ok(()),
            _ => Err(Error::ConditionFailed("the session was taken over".into())),
        }
    }

    /// Connection `conn` of `client` ended: its session waits `expiry` seconds for the
    /// client (0 ends it now). Sent in the background and tried for a minute (a close from a
    /// connection that no longer owns the session changes nothing); if it never lands, the
    /// node's next run orphans the session (`orphan`), or the client's next CONNECT takes it.
    pub(super) fn close(&self, client: &Arc<str>, conn: u64, expiry: u32) {
        let op = SessionOp::Close { client: client.to_string(), owner: self.owner(conn), expiry_s: expiry };
        let broker = self.clone();
        tokio::spawn(async move {
            for attempt in 1..=60 {
                match broker.handle().session(op.clone()).await {
                    Ok(_) => return,
                    Err(e) if attempt == 60 => tracing::warn!(error = %e, "session close not recorded"),
                    Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            }
        });
    }

    /// Ends `client`'s session here when its record says it is now served by another node,
    /// or that it ended while the client was away.
    fn reconcile(&self, client: &str) {
        let record = self.handle().session_record(client);
        self.track_remote(client, record.as_ref());
        let here = (self.handle().id(), self.inner.boot);
        let mut st = self.state();
        let Some(s) = st.sessions.get(client) else { return };
        let owner = record.as_ref().and_then(|r| r.owner);
        let elsewhere = owner.is_some_and(|o| (o.node, o.boot) != here);
        let ended = record.is_none() && s.conn.is_none();
        if elsewhere || ended {
            take_over(s);
            let client: Arc<str> = client.into();
            st.remove_session(&client);
        } else if let (Some(o), Some((conn, _))) = (owner, &s.conn) {
            // Another connection here owns it now: this one goes (that one attaches).
            if o.conn != *conn {
                take_over(s);
            }
        }
    }

    fn local_clients(&self) -> Vec<Arc<str>> {
        self.state().sessions.keys().cloned().collect()
    }
}

/// Follows the session records this node applies: ends sessions taken elsewhere, and keeps
/// the map of where other sessions live (`relay.rs`).
pub(super) async fn follow(broker: Broker, mut stop: watch::Receiver<bool>) {
    let mut news = broker.handle().session_news();
    broker.track_all_remote();
    loop {
        let n = tokio::select! {
            n = news.recv() => n,
            _ = stop.wait_for(|s| *s) => return,
        };
        match n {
            Ok(SessionNews::Changed(client)) => broker.reconcile(&client),
            Ok(SessionNews::All) | Err(broadcast::error::RecvError::Lagged(_)) => {
                broker.track_all_remote();
                for client in broker.local_clients() {
                    broker.reconcile(&client);
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Once per run: the sessions this node's earlier runs served lost their connections
/// (a crash, a stop) and start their expiry. Retried until it lands.
pub(super) async fn orphan(broker: Broker, mut stop: watch::Receiver<bool>) {
    let (me, boot) = (broker.handle().id(), broker.inner.boot);
    let op = SessionOp::Orphan { node: me, boot };
    // Only when there is something to orphan: a node that never served a session proposes
    // no session op (a rolling upgrade from a version without sessions stays possible).
    let earlier = |r: &crate::kv::SessionRecord| r.owner.is_some_and(|o| o.node == me && o.boot != boot);
    if !broker.handle().session_records().iter().any(|(_, r)| earlier(r)) {
        return;
    }
    loop {
        match broker.handle().session(op.clone()).await {
            Ok(SessionResult::Orphaned(n)) => {
                if n > 0 {
                    tracing::info!(sessions = n, "sessions of this node's previous run now wait for their clients");
                }
                return;
            }
            Ok(other) => {
                tracing::error!(?other, "orphaning sessions answered unexpectedly");
                return;
            }
            Err(e) => tracing::debug!(error = %e, "orphaning sessions: will try again"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
