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
use crate::error::Result;
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
    pub async fn connect(&self, client: &Arc<str>, clean: bool, expiry: u32) -> Result<Attached, Refused> {
        if !self.has_room(client) {
            return Err(Refused::Quota);
        }
        let conn = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let dedup_id = rand::Rng::gen(&mut rand::thread_rng());
        let op =
            SessionOp::Open { client: client.to_string(), owner: self.owner(conn), clean, expiry_s: expiry, dedup_id };
        match self.handle().session(op).await {
            Ok(SessionResult::Done { resumed, record: Some(record) }) => {
                Ok(self.attach(client, conn, expiry, resumed, &record))
            }
            Ok(SessionResult::Quota) => Err(Refused::Quota),
            Ok(other) => {
                tracing::error!(?other, "a session open answered unexpectedly");
                Err(Refused::Unavailable)
            }
            Err(e) => {
                tracing::warn!(client = %client, error = %e, "session not recorded; connection refused");
                Err(Refused::Unavailable)
            }
        }
    }

    /// Saves `client`'s subscriptions and observations to its record: a session resumed
    /// on another node has them, and other nodes relay messages for them here.
    pub async fn save(&self, client: &Arc<str>) -> Result<()> {
        let op = {
            let mut st = self.state();
            let Some(s) = st.sessions.get_mut(client) else { return Ok(()) };
            let Some((conn, _)) = s.conn else { return Ok(()) };
            s.gen += 1;
            SessionOp::Save {
                client: client.to_string(),
                owner: self.owner(conn),
                gen: s.gen,
                subs: s.subs.iter().map(|sub| sub.record()).collect(),
                observed: s.observed.iter().cloned().collect(),
            }
        };
        self.handle().session(op).await.map(drop)
    }

    /// Connection `conn` of `client` ended: its session waits `expiry` seconds for the
    /// client (0 ends it now). Sent in the background; if it never lands, the node's next
    /// run orphans the session (`orphan`), or the client's next CONNECT takes it over.
    pub(super) fn close(&self, client: &Arc<str>, conn: u64, expiry: u32) {
        let op = SessionOp::Close { client: client.to_string(), owner: self.owner(conn), expiry_s: expiry };
        let broker = self.clone();
        tokio::spawn(async move {
            if let Err(e) = broker.handle().session(op).await {
                tracing::warn!(error = %e, "session close not recorded");
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
        let elsewhere = record.as_ref().and_then(|r| r.owner).is_some_and(|o| (o.node, o.boot) != here);
        let ended = record.is_none() && s.conn.is_none();
        if elsewhere || ended {
            take_over(s);
            let client: Arc<str> = client.into();
            st.remove_session(&client);
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
    let op = SessionOp::Orphan { node: broker.handle().id(), boot: broker.inner.boot };
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
