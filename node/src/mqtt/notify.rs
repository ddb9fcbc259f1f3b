//! Key notifications from the applied log: every change this node applies (through any
//! node and any door, and TTL expiry) is sent to the sessions here that observe its key.

use super::statestore::notification;
use super::Broker;
use crate::handle::WatchItem;
use crate::kv::EventKind;
use bytes::Bytes;
use tokio::sync::watch;

pub async fn run(broker: Broker, mut stop: watch::Receiver<bool>) {
    let mut events = match broker.handle().watch(Bytes::new(), None) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "key notifications cannot start");
            return;
        }
    };
    loop {
        let item = tokio::select! {
            i = events.next() => i,
            _ = stop.wait_for(|s| *s) => return,
        };
        let e = match item {
            Some(WatchItem::Event(e)) => e,
            // This node caught up from a snapshot: the changes in between are not known one
            // by one. Observers re-read (the SDKs do after reconnecting).
            Some(WatchItem::Resync { .. }) => continue,
            None => return,
        };
        let value = (e.kind == EventKind::Put).then_some(&e.value[..]);
        for client in broker.observers(&e.key) {
            if let Some(m) = notification(&client, &e.key, value, e.version) {
                broker.publish(None, m);
            }
        }
    }
}
