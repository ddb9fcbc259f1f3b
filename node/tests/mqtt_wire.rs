//! The MQTT door on raw sockets, in-process: hostile and malformed input gets the reaction
//! MQTT v5 specifies, and the node keeps serving every other client.

use mqtt_proto::v5::{
    Connect, ConnectProperties, ConnectReasonCode, DisconnectReasonCode, Packet, PubackReasonCode, Publish,
    PublishProperties,
};
use mqtt_proto::{Protocol, QosPid, TopicName};
use statenode::config::Config;
use statenode::io::Io;
use statenode::{Listeners, Node, Role};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const REQ: &str = "statestore/v1/FA9AE35F-2F64-47CD-9BFF-08E2B32A0FE8/command/invoke";

/// One in-memory node with an MQTT listener; its address.
async fn node(limits: impl FnOnce(&mut Config)) -> (Node, String) {
    let bind = || TcpListener::bind("127.0.0.1:0");
    let (peer, grpc, mqtt) = (bind().await.unwrap(), bind().await.unwrap(), bind().await.unwrap());
    let mut config = Config { id: 1, memory: true, ..Config::default() };
    config.peer_advertise = Some(peer.local_addr().unwrap().to_string());
    config.grpc_advertise = Some(grpc.local_addr().unwrap().to_string());
    limits(&mut config);
    let addr = mqtt.local_addr().unwrap().to_string();
    let listeners = Listeners::from_tcp(peer, grpc, None).with_mqtt(mqtt);
    let node = Node::start(config, listeners, Role::Serve, Io::real()).await.unwrap();
    for _ in 0..200 {
        if node.handle().status().await.leader_id.is_some() {
            return (node, addr);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no leader in 10 s");
}

async fn send(s: &mut TcpStream, p: Packet) {
    s.write_all(p.encode().unwrap().as_ref()).await.unwrap();
}

/// The next packet from the server, or `None` when it closed the connection (5 s bound).
async fn recv(s: &mut TcpStream) -> Option<Packet> {
    tokio::time::timeout(Duration::from_secs(5), Packet::decode_async(s)).await.expect("server answers").ok()
}

fn connect(id: &str, keep_alive: u16) -> Packet {
    let mut c = Connect::new(id.into(), keep_alive);
    c.protocol = Protocol::V500;
    c.properties = ConnectProperties { session_expiry_interval: Some(0), ..Default::default() };
    c.into()
}

async fn connected(addr: &str, id: &str, keep_alive: u16) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    send(&mut s, connect(id, keep_alive)).await;
    assert!(matches!(recv(&mut s).await, Some(Packet::Connack(_))));
    s
}

fn disconnect_reason(p: Option<Packet>) -> Option<DisconnectReasonCode> {
    match p {
        Some(Packet::Disconnect(d)) => Some(d.reason_code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_ends_only_the_offending_connection() {
    let (node, addr) = node(|c| {
        c.limits.mqtt_max_packet_bytes = 1024;
        c.limits.mqtt_receive_max = 2;
    })
    .await;
    let mut bystander = connected(&addr, "bystander", 0).await;

    // Not a CONNECT first: closed without a word (MQTT-3.1.0-1).
    let mut s = TcpStream::connect(&addr).await.unwrap();
    send(&mut s, Packet::Pingreq).await;
    assert_eq!(recv(&mut s).await, None);

    // MQTT 3.1.1: refused with "unsupported protocol version".
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(&[0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x00]).await.unwrap();
    match recv(&mut s).await {
        Some(Packet::Connack(c)) => assert_eq!(c.reason_code, ConnectReasonCode::UnsupportedProtocolVersion),
        other => panic!("expected CONNACK 0x84, got {other:?}"),
    }

    // Key notifications are the store's to publish.
    let mut s = connected(&addr, "forger", 0).await;
    let topic = "clients/statestore/v1/FA9AE35F-2F64-47CD-9BFF-08E2B32A0FE8/6331/command/notify/6B";
    let forged = Publish::new(QosPid::Level1(1.try_into().unwrap()), TopicName::try_from(topic).unwrap(), "x".into());
    send(&mut s, forged.into()).await;
    match recv(&mut s).await {
        Some(Packet::Puback(a)) => assert_eq!(a.reason_code, PubackReasonCode::NotAuthorized),
        other => panic!("expected PUBACK 0x87, got {other:?}"),
    }

    // Garbage instead of a packet.
    let mut s = connected(&addr, "garbage", 0).await;
    s.write_all(&[0x00, 0x00]).await.unwrap();
    assert_eq!(disconnect_reason(recv(&mut s).await), Some(DisconnectReasonCode::MalformedPacket));

    // A packet over the advertised Maximum Packet Size, announced by its length alone.
    let mut s = connected(&addr, "big", 0).await;
    s.write_all(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]).await.unwrap();
    assert_eq!(disconnect_reason(recv(&mut s).await), Some(DisconnectReasonCode::PacketTooLarge));

    // More unacknowledged QoS 1 requests than Receive Maximum (2): the third ends it.
    let mut s = connected(&addr, "flood", 0).await;
    let req = |pid: u16| {
        let mut p =
            Publish::new(QosPid::Level1(pid.try_into().unwrap()), TopicName::try_from(REQ).unwrap(), "x".into());
        p.properties =
            PublishProperties { response_topic: Some(TopicName::try_from("r").unwrap()), ..Default::default() };
        Packet::from(p)
    };
    let mut burst = Vec::new();
    for pid in 1..=50u16 {
        burst.extend_from_slice(req(pid).encode().unwrap().as_ref());
    }
    s.write_all(&burst).await.unwrap();
    let mut reason = None;
    while let Some(p) = recv(&mut s).await {
        if let Some(r) = disconnect_reason(Some(p)) {
            reason = Some(r);
            break;
        }
    }
    assert_eq!(reason, Some(DisconnectReasonCode::ReceiveMaximumExceeded));

    // A client silent for 1.5 × its keep alive is disconnected.
    let mut s = connected(&addr, "silent", 1).await;
    let started = std::time::Instant::now();
    assert_eq!(disconnect_reason(recv(&mut s).await), Some(DisconnectReasonCode::KeepAliveTimeout));
    assert!(started.elapsed() >= Duration::from_millis(1400), "{:?}", started.elapsed());

    // Through all of it, the first client is served.
    send(&mut bystander, Packet::Pingreq).await;
    assert_eq!(recv(&mut bystander).await, Some(Packet::Pingresp));
    drop((bystander, s));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_told_when_the_server_shuts_down() {
    let (node, addr) = node(|_| {}).await;
    let mut s = connected(&addr, "stays", 0).await;
    let stop = tokio::spawn(node.shutdown());
    assert_eq!(disconnect_reason(recv(&mut s).await), Some(DisconnectReasonCode::ServerShuttingDown));
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    stop.await.unwrap();
}
