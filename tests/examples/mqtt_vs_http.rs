//! SET and GET over the MQTT door (the AIO state store protocol) against the same operations
//! over the native HTTP door, in one run, printed side by side.
//!
//! ```sh
//! cargo build --release
//! ./target/release/statenode dev --nodes 3 [--memory] --data-dir /tmp/bench &
//! cargo run --release -p statenode-e2e --example mqtt_vs_http -- 127.0.0.1:1883 127.0.0.1:3500
//! ```
//! Point both at the leader (`statectl members` shows it) so neither door pays a forward.
//! Each client is one connection doing one request at a time: 256-byte values over 1000
//! keys, 5 s per run (`BENCH_SECS` to change).

use mqtt_proto::v5::{
    Connect, ConnectProperties, Packet, Publish, PublishProperties, Subscribe, SubscriptionOptions, UserProperty,
};
use mqtt_proto::{Pid, Protocol, QoS, QosPid, TopicFilter, TopicName};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const REQ: &str = "statestore/v1/FA9AE35F-2F64-47CD-9BFF-08E2B32A0FE8/command/invoke";
const KEYS: usize = 1000;

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Set,
    Get,
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mqtt, http) = (args.get(1).expect("MQTT host:port").clone(), args.get(2).expect("HTTP host:port").clone());
    let secs = std::env::var("BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let run = Duration::from_secs(secs);
    println!("| op | clients | MQTT ops/s | p50 | p99 | HTTP ops/s | p50 | p99 | MQTT/HTTP |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for op in [Op::Set, Op::Get] {
        for clients in [1usize, 16, 64] {
            let m = measure(clients, run, |i| mqtt_client(mqtt.clone(), i, op)).await;
            let h = measure(clients, run, |i| http_client(http.clone(), i, op)).await;
            let name = if op == Op::Set { "SET" } else { "GET" };
            println!(
                "| {name} | {clients} | {:.0} | {:.2} ms | {:.2} ms | {:.0} | {:.2} ms | {:.2} ms | {:.2}× |",
                m.rate,
                m.p50,
                m.p99,
                h.rate,
                h.p50,
                h.p99,
                m.rate / h.rate
            );
        }
    }
}

struct Figures {
    rate: f64,
    p50: f64,
    p99: f64,
}

/// Runs `clients` clients for `run`; each returns its request latencies.
async fn measure<F, Fut>(clients: usize, run: Duration, client: F) -> Figures
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Box<dyn FnMut() -> Pending + Send>> + Send + 'static,
{
    let mut tasks = Vec::new();
    for i in 0..clients {
        let make = client(i);
        tasks.push(tokio::spawn(async move {
            let mut next = make.await;
            let (end, mut lat) = (Instant::now() + run, Vec::new());
            while Instant::now() < end {
                let t = Instant::now();
                next().await;
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all: Vec<Duration> = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client"));
    }
    all.sort();
    let at = |q: f64| all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1))).copied();
    let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    Figures { rate: all.len() as f64 / run.as_secs_f64(), p50: ms(at(0.5)), p99: ms(at(0.99)) }
}

type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

fn key(n: usize) -> String {
    format!("bench-{:04}", n % KEYS)
}

fn resp(items: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", items.len()).into_bytes();
    for i in items {
        out.extend_from_slice(format!("${}\r\n", i.len()).as_bytes());
        out.extend_from_slice(i);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One MQTT client: connects, subscribes to its response topic, then makes one request per call.
async fn mqtt_client(addr: String, id: usize, op: Op) -> Box<dyn FnMut() -> Pending + Send> {
    let mut s = TcpStream::connect(&addr).await.expect("mqtt connect");
    s.set_nodelay(true).unwrap();
    let mut c = Connect::new(format!("bench-{id}").into(), 60);
    c.protocol = Protocol::V500;
    c.properties = ConnectProperties::default();
    write(&mut s, c.into()).await;
    assert!(matches!(Packet::decode_async(&mut s).await, Ok(Packet::Connack(_))));
    let topic = format!("bench/{id}/response");
    let sub = Subscribe::new(
        Pid::default(),
        vec![(TopicFilter::try_from(topic.as_str()).unwrap(), SubscriptionOptions::new(QoS::Level1))],
    );
    write(&mut s, sub.into()).await;
    assert!(matches!(Packet::decode_async(&mut s).await, Ok(Packet::Suback(_))));
    // Buffered reads: the codec reads a header a byte at a time.
    let s = std::sync::Arc::new(tokio::sync::Mutex::new(BufReader::new(s)));
    let mut n = id * 7919;
    Box::new(move || {
        n += 1;
        let (s, topic, k) = (s.clone(), topic.clone(), key(n));
        Box::pin(async move {
            let mut s = s.lock().await;
            let value = vec![b'v'; 256];
            let payload =
                if op == Op::Set { resp(&[b"SET", k.as_bytes(), &value]) } else { resp(&[b"GET", k.as_bytes()]) };
            let pid = Pid::try_from((n % 60000 + 1) as u16).unwrap();
            let mut p = Publish::new(QosPid::Level1(pid), TopicName::try_from(REQ).unwrap(), payload.into());
            let ts = format!("{:015}:00000:bench", std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap().as_millis());
            p.properties = PublishProperties {
                response_topic: Some(TopicName::try_from(topic.as_str()).unwrap()),
                correlation_data: Some(n.to_be_bytes().to_vec().into()),
                user_properties: vec![UserProperty { name: "__ts".into(), value: ts.into() }],
                ..Default::default()
            };
            write(s.get_mut(), p.into()).await;
            // The reply, then our PUBACK (in either order), acknowledging the reply.
            let (mut replied, mut acked) = (false, false);
            while !(replied && acked) {
                match Packet::decode_async(&mut *s).await.expect("mqtt packet") {
                    Packet::Publish(r) => {
                        replied = true;
                        if let QosPid::Level1(pid) = r.qos_pid {
                            write(s.get_mut(), mqtt_proto::v5::Puback::new_success(pid).into()).await;
                        }
                    }
                    Packet::Puback(_) => acked = true,
                    _ => {}
                }
            }
        })
    })
}

async fn write(s: &mut TcpStream, p: Packet) {
    s.write_all(p.encode().unwrap().as_ref()).await.expect("mqtt write");
}

/// One keep-alive HTTP/1.1 client on the native API: `PUT /v1/kv/k` or `GET /v1/kv/k`.
async fn http_client(addr: String, id: usize, op: Op) -> Box<dyn FnMut() -> Pending + Send> {
    let s = TcpStream::connect(&addr).await.expect("http connect");
    s.set_nodelay(true).unwrap();
    let s = std::sync::Arc::new(tokio::sync::Mutex::new(BufReader::new(s)));
    let mut n = id * 7919;
    Box::new(move || {
        n += 1;
        let (s, k) = (s.clone(), key(n));
        Box::pin(async move {
            let mut s = s.lock().await;
            let req = match op {
                Op::Set => {
                    format!("PUT /v1/kv/{k} HTTP/1.1\r\nHost: b\r\nContent-Length: 256\r\n\r\n{}", "v".repeat(256))
                }
                Op::Get => format!("GET /v1/kv/{k} HTTP/1.1\r\nHost: b\r\n\r\n"),
            };
            s.get_mut().write_all(req.as_bytes()).await.expect("http write");
            let mut len = 0usize;
            let mut line = String::new();
            loop {
                line.clear();
                s.read_line(&mut line).await.expect("http read");
                if line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            s.read_exact(&mut body).await.expect("http body");
        })
    })
}
