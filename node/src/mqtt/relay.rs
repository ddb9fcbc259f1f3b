//! Client-to-client messages across nodes. Every node applies every session's record
//! (`replica.rs`): its home node and its subscriptions. So a message a client publishes here
//! goes to the subscribers here and, over the peer channel, to each other node that is home
//! to a session with a matching subscription; a retained message goes to every node, so a
//! later subscriber anywhere gets it. Between nodes a message is sent at most once (a node
//! that is down or unreachable misses it); from there on, each subscription's QoS holds.
//!
//! On the wire: the publisher's client id (a `u16` length, big-endian, then its bytes) and
//! the message as an MQTT PUBLISH packet, decoded with the same limits as a client's.

use super::{codec, Broker, Index, Message};
use crate::kv::SessionRecord;
use bytes::{BufMut, Bytes, BytesMut};
use mqtt_proto::v5::{Packet, Publish};
use mqtt_proto::{Pid, QoS, QosPid};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// Messages waiting to be published here, from other nodes.
const MAILBOX: usize = 4096;
/// Messages waiting to be sent to one other node.
const OUTBOX: usize = 4096;

/// The queue to each other node (`Broker::send`).
pub(super) type Outboxes = std::sync::Mutex<HashMap<u64, mpsc::Sender<Bytes>>>;

/// The sessions other nodes are home to: which node, and their filters.
#[derive(Default)]
pub(super) struct Remote {
    homes: HashMap<Arc<str>, (u64, Vec<String>)>,
    index: Index,
}

impl Remote {
    fn set(&mut self, client: &Arc<str>, entry: Option<(u64, Vec<String>)>) {
        if let Some((_, old)) = self.homes.remove(client) {
            for f in &old {
                self.index.remove(f, client);
            }
        }
        if let Some((node, filters)) = entry {
            for f in &filters {
                self.index.add(f, client);
            }
            self.homes.insert(client.clone(), (node, filters));
        }
    }

    fn nodes_for(&self, topic: &str) -> BTreeSet<u64> {
        self.index.candidates(topic).iter().filter_map(|c| self.homes.get(c).map(|(node, _)| *node)).collect()
    }
}

impl Broker {
    /// What this node knows of `client`'s session on other nodes, from its record.
    pub(super) fn track_remote(&self, client: &str, record: Option<&SessionRecord>) {
        let me = self.handle().id();
        let entry = record
            .filter(|r| r.home != me && r.home != 0)
            .map(|r| (r.home, r.subs.iter().map(|s| s.filter.clone()).collect()));
        self.state().remote.set(&client.into(), entry);
    }

    /// Rebuilds it from every record (at start, and after a snapshot replaced the state).
    pub(super) fn track_all_remote(&self) {
        let records = self.handle().session_records();
        self.state().remote = Remote::default();
        for (client, record) in &records {
            self.track_remote(client, Some(record));
        }
    }

    /// A message a client here published: to the subscribers here and on other nodes.
    pub fn publish_everywhere(&self, from: &str, m: Message) {
        let nodes = self.state().remote.nodes_for(&m.topic);
        if !nodes.is_empty() || m.retain {
            match encode(from, &m) {
                Ok(bytes) => self.send(nodes, m.retain, bytes),
                Err(e) => tracing::warn!(error = %e, "message not relayed to other nodes"),
            }
        }
        self.publish(Some(from), m);
    }

    /// Queues `bytes` for `nodes` (for every other member when `all`). Each node has one
    /// queue and one sender, so messages arrive in the order they were published; a full
    /// queue (the node is down or slow) drops the message.
    fn send(&self, nodes: BTreeSet<u64>, all: bool, bytes: Bytes) {
        let me = self.handle().id();
        let nodes: BTreeSet<u64> = match all {
            true => self.handle().members().into_iter().collect(),
            false => nodes,
        };
        let mut outboxes = self.inner.outboxes.lock().expect("poisoned");
        for node in nodes.into_iter().filter(|n| *n != me) {
            let tx = outboxes.entry(node).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(OUTBOX);
                tokio::spawn(sender(self.handle().clone(), node, rx));
                tx
            });
            if tx.try_send(bytes.clone()).is_err() {
                tracing::debug!(node, "relay queue full: message dropped");
            }
        }
    }
}

/// Sends one node's queue, in order, until the broker goes.
async fn sender(handle: crate::handle::NodeHandle, node: u64, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(bytes) = rx.recv().await {
        if let Err(e) = handle.deliver(node, bytes).await {
            tracing::debug!(node, error = %e, "message not relayed");
        }
    }
}

/// Publishes here what other nodes relay.
pub(super) async fn receive(broker: Broker, mut stop: watch::Receiver<bool>) {
    let mut mailbox = broker.handle().mailbox(MAILBOX);
    loop {
        let bytes = tokio::select! {
            b = mailbox.recv() => b,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Some(bytes) = bytes else { return };
        match decode(&bytes, broker.limits().mqtt_max_packet_bytes).await {
            Ok((from, m)) => broker.publish(from.as_deref(), m),
            Err(e) => tracing::warn!(error = %e, "a relayed message did not decode"),
        }
    }
}

fn encode(from: &str, m: &Message) -> std::io::Result<Bytes> {
    let from = from.as_bytes();
    let len = u16::try_from(from.len()).map_err(|_| std::io::Error::other("client id too long"))?;
    let qos_pid = match m.qos {
        QoS::Level0 => QosPid::Level0,
        _ => QosPid::Level1(Pid::default()),
    };
    let mut p = Publish::new(qos_pid, m.topic.clone(), m.payload.clone());
    p.retain = m.retain;
    p.properties = m.properties.clone();
    p.properties.message_expiry_interval = m.expiry_left();
    let packet = codec::encode(&Packet::Publish(p))?;
    let mut out = BytesMut::with_capacity(2 + from.len() + packet.len());
    out.put_u16(len);
    out.put_slice(from);
    out.put_slice(&packet);
    Ok(out.freeze())
}

async fn decode(bytes: &[u8], max: u32) -> Result<(Option<String>, Message), String> {
    let (len, rest) = bytes.split_first_chunk::<2>().ok_or("too short")?;
    let len = usize::from(u16::from_be_bytes(*len));
    if rest.len() < len {
        return Err("too short".into());
    }
    let from = std::str::from_utf8(&rest[..len]).map_err(|e| e.to_string())?;
    let from = (!from.is_empty()).then(|| from.to_string());
    let Packet::Publish(p) = codec::read(&mut &rest[len..], max).await.map_err(|e| e.to_string())? else {
        return Err("not a PUBLISH".into());
    };
    Ok((from, Message::from(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_round_trip_and_garbage_is_refused() {
        let properties = mqtt_proto::v5::PublishProperties {
            correlation_data: Some(Bytes::from_static(b"c")),
            message_expiry_interval: Some(30),
            ..Default::default()
        };
        let m = Message {
            topic: mqtt_proto::TopicName::try_from("a/b").unwrap(),
            payload: Bytes::from_static(b"hello"),
            qos: QoS::Level1,
            retain: true,
            properties,
            received: std::time::Instant::now(),
        };
        let bytes = encode("pub-1", &m).unwrap();
        let (from, back) = decode(&bytes, 1024).await.unwrap();
        assert_eq!(from.as_deref(), Some("pub-1"));
        assert_eq!((&*back.topic, &back.payload[..], back.qos, back.retain), ("a/b", &b"hello"[..], QoS::Level1, true));
        assert_eq!(back.properties.correlation_data, m.properties.correlation_data);
        assert!(back.properties.message_expiry_interval.is_some_and(|e| e <= 30));
        assert!(decode(&[], 1024).await.is_err());
        assert!(decode(&[0, 9, b'x'], 1024).await.is_err());
        assert!(decode(&[0, 0, 0xC0, 0x00], 1024).await.is_err(), "a PINGREQ is not a message");
        assert!(decode(&bytes, 8).await.is_err(), "over the packet limit");
    }
}
