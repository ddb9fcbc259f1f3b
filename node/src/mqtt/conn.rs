//! One MQTT connection: CONNECT, then packets in and messages out until either side
//! ends it. Works on `Packet`s only; `codec.rs` does the bytes.

use super::codec::{self, ReadError};
use super::{statestore, topic, Attached, Broker, Message, Refused, Signals, MAX_SESSION_EXPIRY};
use crate::auth::rules::{Principal, Refusal};
use crate::auth::CertName;
use crate::io::Conn;
use mqtt_proto::v5::{
    Connack, ConnackProperties, Connect, ConnectReasonCode, Disconnect, DisconnectReasonCode, LastWill, Packet, Puback,
    PubackReasonCode, Publish, Suback, SubscribeReasonCode, Unsuback, UnsubscribeReasonCode,
};
use mqtt_proto::{Pid, QoS, QosPid};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};

/// How long a new connection may take to send CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write may wait for a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Counts a connection while it lives.
struct Counted(Arc<super::Shared>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

pub async fn run(broker: Broker, conn: Conn, stop: watch::Receiver<bool>) {
    let count = broker.inner.connections.fetch_add(1, Ordering::Relaxed) + 1;
    let _counted = Counted(broker.inner.clone());
    let cert = conn.cert_name();
    let (rd, mut wr) = tokio::io::split(conn);
    let max = broker.limits().mqtt_max_packet_bytes;
    let (mut inbox, _reading) = reader(rd, max);
    let connect = match tokio::time::timeout(CONNECT_TIMEOUT, inbox.recv()).await {
        Ok(Some(Ok(Packet::Connect(c)))) => c,
        Ok(Some(Err(ReadError::TooLarge(_)))) => {
            return refuse(&mut wr, ConnectReasonCode::PacketTooLarge).await;
        }
        Ok(Some(Err(ReadError::UnsupportedProtocol))) => {
            return refuse(&mut wr, ConnectReasonCode::UnsupportedProtocolVersion).await;
        }
        Ok(Some(Err(ReadError::Malformed(e)))) => {
            tracing::debug!(error = %e, "malformed CONNECT");
            return refuse(&mut wr, ConnectReasonCode::MalformedPacket).await;
        }
        _ => return, // nothing, or not a CONNECT first: close (MQTT-3.1.0-1)
    };
    if count > broker.limits().mqtt_max_connections {
        return refuse(&mut wr, ConnectReasonCode::QuotaExceeded).await;
    }
    let mut c = match Connection::open(broker, connect, cert.as_deref(), &mut wr).await {
        Some(c) => c,
        None => return,
    };
    let end = c.serve(&mut inbox, &mut wr, stop).await;
    c.close(end, &mut wr).await;
}

/// Stops the reading task when the connection ends, which closes the socket.
struct Reading(tokio::task::AbortHandle);

impl Drop for Reading {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads packets on their own task (reading is not cancel-safe) into a channel.
fn reader(rd: ReadHalf<Conn>, max: u32) -> (mpsc::Receiver<Result<Packet, ReadError>>, Reading) {
    let (tx, rx) = mpsc::channel(8);
    // Buffered: the codec reads a header a byte at a time.
    let mut rd = tokio::io::BufReader::with_capacity(16 * 1024, rd);
    let task = tokio::spawn(async move {
        loop {
            let p = codec::read(&mut rd, max).await;
            let end = p.is_err();
            if tx.send(p).await.is_err() || end {
                return;
            }
        }
    });
    (rx, Reading(task.abort_handle()))
}

async fn refuse(wr: &mut WriteHalf<Conn>, code: ConnectReasonCode) {
    let _ = write(wr, &[Connack::new(false, code).into()]).await;
}

/// Writes `packets`, giving up on a client that does not read.
async fn write(wr: &mut WriteHalf<Conn>, packets: &[Packet]) -> std::io::Result<()> {
    match tokio::time::timeout(WRITE_TIMEOUT, codec::write(wr, packets)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// What woke the connection up (one at a time, on the stack: its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Event {
    In(Option<Result<Packet, ReadError>>),
    /// A state store request was served: acknowledge it.
    Served(Option<Pid>),
    /// Messages wait in the session's queue (or the session was taken over).
    Ready,
    /// Nothing heard within 1.5 × keep alive.
    Silent,
    Stop,
}

/// How a connection ended.
enum End {
    /// The client sent DISCONNECT; `will` when it asked for its will to be sent.
    Client { will: bool, expiry: Option<u32> },
    /// The server ends it with this reason (and sends the will).
    Server(DisconnectReasonCode),
    /// The network went away (the will is sent).
    Lost,
}

struct Connection {
    broker: Broker,
    client: Arc<str>,
    /// Who the client is, for the authorization rules.
    principal: Arc<Principal>,
    conn_id: u64,
    signals: Arc<Signals>,
    /// Request tasks report here when they are done (with the PUBACK's packet id).
    served_tx: mpsc::UnboundedSender<Option<Pid>>,
    served: mpsc::UnboundedReceiver<Option<Pid>>,
    keep_alive: Option<Duration>,
    expiry: u32,
    will: Option<LastWill>,
    /// What the client accepts: Receive Maximum and Maximum Packet Size.
    client_receive_max: usize,
    client_max_packet: u32,
    /// QoS 1 messages sent and not yet acknowledged, by packet id.
    inflight: BTreeMap<u16, Message>,
    next_pid: u16,
    /// State store requests being served (QoS 1 ones not yet acknowledged).
    requests: usize,
}

impl Connection {
    /// Attaches the session and answers CONNACK; `None` when refused. `cert`: what the
    /// client's verified certificate says it is.
    async fn open(broker: Broker, c: Connect, cert: Option<&CertName>, wr: &mut WriteHalf<Conn>) -> Option<Connection> {
        let assigned = c.client_id.is_empty().then(|| -> Arc<str> {
            format!("statenode-{:016x}", rand::Rng::gen::<u64>(&mut rand::thread_rng())).into()
        });
        let client = assigned.clone().unwrap_or_else(|| c.client_id.clone());
        let cert = match cert {
            Some(CertName::Client(name)) => Some(name.as_str()),
            _ => None,
        };
        let principal = match broker.policy().authenticate(&client, c.username.as_deref(), c.password.as_deref(), cert)
        {
            Ok(p) => Arc::new(p),
            Err(refusal) => {
                let code = match refusal {
                    Refusal::BadCredentials => ConnectReasonCode::BadUserNameOrPassword,
                    Refusal::NotAuthorized => ConnectReasonCode::NotAuthorized,
                };
                tracing::info!(client = %client, ?refusal, "MQTT connection refused");
                refuse(wr, code).await;
                return None;
            }
        };
        let asked = c.properties.session_expiry_interval.unwrap_or(0);
        let expiry = asked.min(MAX_SESSION_EXPIRY);
        let Attached { session_present, conn_id, signals } =
            match broker.connect(&client, &principal, c.clean_start, expiry).await {
                Ok(a) => a,
                Err(Refused::Quota) => {
                    refuse(wr, ConnectReasonCode::QuotaExceeded).await;
                    return None;
                }
                Err(Refused::Unavailable) => {
                    refuse(wr, ConnectReasonCode::ServerUnavailable).await;
                    return None;
                }
                Err(Refused::Superseded) => {
                    refuse(wr, ConnectReasonCode::ServerBusy).await;
                    return None;
                }
            };
        let limits = broker.limits();
        let mut ack = Connack::new(session_present, ConnectReasonCode::Success);
        ack.properties = ConnackProperties {
            receive_max: Some(limits.mqtt_receive_max),
            max_qos: Some(QoS::Level1),
            retain_available: Some(true),
            max_packet_size: Some(limits.mqtt_max_packet_bytes),
            assigned_client_id: assigned,
            topic_alias_max: Some(0),
            wildcard_subscription_available: Some(true),
            subscription_id_available: Some(false),
            shared_subscription_available: Some(false),
            session_expiry_interval: (expiry != asked).then_some(expiry),
            ..ConnackProperties::default()
        };
        if write(wr, &[ack.into()]).await.is_err() {
            broker.detach(&client, conn_id, expiry, Vec::new());
            broker.close(&client, conn_id, expiry);
            return None;
        }
        let (served_tx, served) = mpsc::unbounded_channel();
        Some(Connection {
            client,
            principal,
            conn_id,
            signals,
            served_tx,
            served,
            keep_alive: (c.keep_alive > 0).then(|| Duration::from_millis(u64::from(c.keep_alive) * 1500)),
            expiry,
            will: c.last_will,
            client_receive_max: c.properties.receive_max.unwrap_or(u16::MAX).max(1).into(),
            client_max_packet: c.properties.max_packet_size.unwrap_or(u32::MAX),
            inflight: BTreeMap::new(),
            next_pid: 1,
            requests: 0,
            broker,
        })
    }

    async fn serve(
        &mut self,
        inbox: &mut mpsc::Receiver<Result<Packet, ReadError>>,
        wr: &mut WriteHalf<Conn>,
        mut stop: watch::Receiver<bool>,
    ) -> End {
        let mut last_heard = Instant::now();
        loop {
            let deadline = self.keep_alive.map(|k| last_heard + k);
            let expire = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                // Packets first: a client's burst is read before its acknowledgements go out.
                biased;
                p = inbox.recv() => Event::In(p),
                s = self.served.recv() => Event::Served(s.flatten()),
                _ = self.signals.ready.notified() => Event::Ready,
                _ = expire => Event::Silent,
                _ = stop.wait_for(|s| *s) => Event::Stop,
            };
            let out = match event {
                Event::In(p) => {
                    last_heard = Instant::now();
                    match p {
                        Some(Ok(p)) => self.on_packet(p).await,
                        Some(Err(ReadError::TooLarge(_))) => Err(End::Server(DisconnectReasonCode::PacketTooLarge)),
                        Some(Err(ReadError::Malformed(e))) => {
                            tracing::debug!(client = %self.client, error = %e, "malformed packet");
                            Err(End::Server(DisconnectReasonCode::MalformedPacket))
                        }
                        Some(Err(ReadError::NotFromClient(_))) => Err(End::Server(DisconnectReasonCode::ProtocolError)),
                        Some(Err(_)) | None => Err(End::Lost),
                    }
                }
                Event::Served(pid) => {
                    self.requests -= 1;
                    Ok(pid.map(|pid| Puback::new_success(pid).into()).into_iter().collect())
                }
                Event::Ready if self.signals.taken_over.load(Ordering::SeqCst) => {
                    Err(End::Server(DisconnectReasonCode::SessionTakenOver))
                }
                Event::Ready => Ok(self.pull()),
                Event::Silent => Err(End::Server(DisconnectReasonCode::KeepAliveTimeout)),
                Event::Stop => Err(End::Server(DisconnectReasonCode::ServerShuttingDown)),
            };
            match out {
                Ok(packets) if packets.is_empty() => {}
                Ok(packets) => {
                    if write(wr, &packets).await.is_err() {
                        return End::Lost;
                    }
                }
                Err(end) => return end,
            }
        }
    }

    /// PUBLISHes for the messages waiting in the session, as many QoS 1 ones as the client's
    /// Receive Maximum leaves room for.
    fn pull(&mut self) -> Vec<Packet> {
        let room = self.client_receive_max.saturating_sub(self.inflight.len());
        let waiting = self.broker.take(&self.client, self.conn_id, room);
        waiting.into_iter().filter_map(|m| self.publish_packet(m)).collect()
    }

    /// What to send for a packet from the client, or how the connection ends.
    async fn on_packet(&mut self, p: Packet) -> Result<Vec<Packet>, End> {
        match p {
            Packet::Publish(p) => self.on_publish(p).await,
            Packet::Puback(ack) => {
                self.inflight.remove(&ack.pid.value());
                Ok(self.pull())
            }
            Packet::Subscribe(s) => Ok(self.on_subscribe(s).await),
            Packet::Unsubscribe(u) => {
                let mut codes: Vec<_> = u
                    .topics
                    .iter()
                    .map(|f| match self.broker.unsubscribe(&self.client, f) {
                        true => UnsubscribeReasonCode::Success,
                        false => UnsubscribeReasonCode::NoSubscriptionExisted,
                    })
                    .collect();
                if let Err(e) = self.broker.save(&self.client).await {
                    tracing::warn!(error = %e, "unsubscribe not saved to the session");
                    codes.fill(UnsubscribeReasonCode::UnspecifiedError);
                }
                Ok(vec![Unsuback::new(u.pid, codes).into()])
            }
            Packet::Pingreq => Ok(vec![Packet::Pingresp]),
            // A session that ends with its connection cannot be made to outlive it now (§3.14.2.2.2).
            Packet::Disconnect(d)
                if self.expiry == 0 && d.properties.session_expiry_interval.is_some_and(|e| e > 0) =>
            {
                Err(End::Server(DisconnectReasonCode::ProtocolError))
            }
            Packet::Disconnect(d) => Err(End::Client {
                will: d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage,
                expiry: d.properties.session_expiry_interval.map(|e| e.min(MAX_SESSION_EXPIRY)),
            }),
            // QoS 2 is refused at CONNACK (Maximum QoS 1); a client that uses it anyway ends.
            Packet::Pubrec(_) | Packet::Pubrel(_) | Packet::Pubcomp(_) => {
                Err(End::Server(DisconnectReasonCode::QoSNotSupported))
            }
            // A second CONNECT, or AUTH (no enhanced authentication here).
            _ => Err(End::Server(DisconnectReasonCode::ProtocolError)),
        }
    }

    async fn on_publish(&mut self, p: Publish) -> Result<Vec<Packet>, End> {
        let pid = match p.qos_pid {
            QosPid::Level0 => None,
            QosPid::Level1(pid) => Some(pid),
            QosPid::Level2(_) => return Err(End::Server(DisconnectReasonCode::QoSNotSupported)),
        };
        if p.properties.topic_alias.is_some() {
            return Err(End::Server(DisconnectReasonCode::TopicAliasInvalid));
        }
        if p.topic_name.is_empty() {
            return Err(End::Server(DisconnectReasonCode::ProtocolError));
        }
        let request = &*p.topic_name == statestore::REQUEST_TOPIC;
        let allowed = {
            let (policy, me) = (self.broker.policy(), &*self.principal);
            // A request's reply is published on the client's behalf: only where it may publish.
            let reply_to = p.properties.response_topic.as_deref().filter(|_| request);
            policy.can_publish(me, &p.topic_name)
                && reply_to.is_none_or(|t| policy.can_publish(me, t))
                // Only the store publishes key notifications.
                && !statestore::reserved(&p.topic_name)
        };
        if !allowed {
            let refused = pid.map(|pid| Puback::new(pid, PubackReasonCode::NotAuthorized).into());
            return Ok(refused.into_iter().collect());
        }
        if request {
            return self.on_request(p, pid);
        }
        self.broker.publish_everywhere(&self.client, Message::from(p));
        Ok(pid.map(|pid| Puback::new_success(pid).into()).into_iter().collect())
    }

    /// A state store request: served on its own task; the reply is routed to the response
    /// topic and the PUBACK sent only then.
    fn on_request(&mut self, p: Publish, pid: Option<Pid>) -> Result<Vec<Packet>, End> {
        if self.requests >= usize::from(self.broker.limits().mqtt_receive_max) {
            return match pid {
                Some(_) => Err(End::Server(DisconnectReasonCode::ReceiveMaximumExceeded)),
                None => Ok(Vec::new()), // QoS 0 over the limit: dropped, as QoS 0 may be
            };
        }
        self.requests += 1;
        let (broker, client, done) = (self.broker.clone(), self.client.clone(), self.served_tx.clone());
        let principal = self.principal.clone();
        tokio::spawn(async move {
            if let Some(reply) = statestore::serve(&broker, &client, &principal, p).await {
                broker.publish(None, reply);
            }
            let _ = done.send(pid);
        });
        Ok(Vec::new())
    }

    /// Subscribes, saves the session's subscriptions (before the SUBACK, so a session
    /// resumed on another node has them) and queues the retained messages that match.
    async fn on_subscribe(&mut self, s: mqtt_proto::v5::Subscribe) -> Vec<Packet> {
        let mut codes = Vec::with_capacity(s.topics.len());
        let mut retained_out = Vec::new();
        let mut added = Vec::new();
        for (filter, opts) in &s.topics {
            if filter.is_shared() {
                codes.push(SubscribeReasonCode::SharedSubscriptionNotSupported);
                continue;
            }
            if !topic::valid_filter(filter) {
                codes.push(SubscribeReasonCode::TopicFilterInvalid);
                continue;
            }
            if !self.broker.policy().can_subscribe(&self.principal, filter) {
                codes.push(SubscribeReasonCode::NotAuthorized);
                continue;
            }
            let qos = opts.max_qos.min(QoS::Level1);
            let Some((existed, retained)) = self.broker.subscribe(&self.client, filter, qos, opts.no_local) else {
                codes.push(SubscribeReasonCode::QuotaExceeded);
                continue;
            };
            if !existed {
                added.push(filter.clone());
            }
            codes.push(if qos == QoS::Level0 {
                SubscribeReasonCode::GrantedQoS0
            } else {
                SubscribeReasonCode::GrantedQoS1
            });
            use mqtt_proto::v5::RetainHandling::*;
            let send_retained = match opts.retain_handling {
                SendAtSubscribe => true,
                SendAtSubscribeIfNotExist => !existed,
                DoNotSend => false,
            };
            if send_retained {
                retained_out.extend(retained.into_iter().map(|mut m| {
                    m.qos = m.qos.min(qos);
                    m.retain = true;
                    m
                }));
            }
        }
        if let Err(e) = self.broker.save(&self.client).await {
            // Not in the session's record: the new filters are taken back (a replaced one
            // keeps its new options here; the record keeps the old).
            tracing::warn!(error = %e, "subscription not saved to the session");
            for filter in &added {
                self.broker.unsubscribe(&self.client, filter);
            }
            for code in codes.iter_mut() {
                if matches!(code, SubscribeReasonCode::GrantedQoS0 | SubscribeReasonCode::GrantedQoS1) {
                    *code = SubscribeReasonCode::UnspecifiedError;
                }
            }
            retained_out.clear();
        }
        self.broker.queue_for(&self.client, retained_out);
        let mut packets = vec![Suback::new(s.pid, codes).into()];
        packets.extend(self.pull());
        packets
    }

    fn publish_packet(&mut self, m: Message) -> Option<Packet> {
        let left = m.expiry_left();
        if left == Some(0) {
            return None; // expired while it waited
        }
        let qos_pid = match m.qos {
            QoS::Level0 => QosPid::Level0,
            _ => {
                let pid = self.next_pid();
                self.inflight.insert(pid.value(), m.clone());
                QosPid::Level1(pid)
            }
        };
        let mut p = Publish::new(qos_pid, m.topic.clone(), m.payload.clone());
        p.retain = m.retain;
        p.properties = m.properties.clone();
        p.properties.message_expiry_interval = left;
        let packet: Packet = p.into();
        if packet.encode_len().map_or(true, |n| n > self.client_max_packet as usize) {
            // Too large for this client (its Maximum Packet Size): dropped, as the spec says.
            if let QosPid::Level1(pid) = qos_pid {
                self.inflight.remove(&pid.value());
            }
            return None;
        }
        Some(packet)
    }

    fn next_pid(&mut self) -> Pid {
        loop {
            let id = self.next_pid;
            self.next_pid = self.next_pid.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&id) {
                return Pid::try_from(id).expect("never 0");
            }
        }
    }

    /// Says goodbye when the server ends it, sends the will when due, and detaches.
    async fn close(self, end: End, wr: &mut WriteHalf<Conn>) {
        let (send_will, expiry) = match &end {
            End::Client { will, expiry } => (*will, expiry.unwrap_or(self.expiry)),
            End::Server(code) => {
                // A reason string too: some clients (paho-mqtt) read the reason code only
                // when the packet has properties.
                let mut bye = Disconnect::new(*code);
                bye.properties.reason_string = Some(format!("{code:?}").into());
                let _ = write(wr, &[bye.into()]).await;
                (true, self.expiry)
            }
            End::Lost => (true, self.expiry),
        };
        let will = self.will.filter(|w| self.broker.policy().can_publish(&self.principal, &w.topic_name));
        if let (true, Some(w)) = (send_will, will) {
            let m = Message {
                topic: w.topic_name,
                payload: w.payload,
                qos: w.qos.min(QoS::Level1),
                retain: w.retain,
                properties: mqtt_proto::v5::PublishProperties {
                    payload_is_utf8: w.properties.payload_is_utf8,
                    message_expiry_interval: w.properties.message_expiry_interval,
                    response_topic: w.properties.response_topic,
                    correlation_data: w.properties.correlation_data,
                    user_properties: w.properties.user_properties,
                    content_type: w.properties.content_type,
                    ..Default::default()
                },
                received: Instant::now(),
            };
            self.broker.publish_everywhere(&self.client, m);
        }
        let unacked: Vec<Message> = self.inflight.into_values().collect();
        self.broker.detach(&self.client, self.conn_id, expiry, unacked);
        self.broker.close(&self.client, self.conn_id, expiry);
    }
}
