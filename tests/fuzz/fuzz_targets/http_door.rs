//! The whole HTTP door of a running single-node cluster (in memory): path cleaning and
//! unescaping, query parameters, headers, Dapr and native bodies, TTLs, the query API. An
//! input is a request as text: `METHOD URI`, header lines `Name: value`, an empty line,
//! the body. A panic, a hang or an internal error is a finding.

#![no_main]

use axum::body::Body;
use libfuzzer_sys::fuzz_target;
use statenode::auth::rules::Policy;
use statenode::auth::{Gate, Token};
use statenode::config::{Config, StoreConfig};
use statenode::dapr::Dapr;
use statenode::http::{respond, HttpState};
use statenode::io::Io;
use statenode::{Listeners, Node, Role};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

struct Door {
    rt: tokio::runtime::Runtime,
    state: HttpState,
    _node: Node,
}

static DOOR: OnceLock<Door> = OnceLock::new();

/// One node for the whole run, started on first use (loopback listeners only).
fn door() -> &'static Door {
    DOOR.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (node, state) = rt.block_on(async {
            let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut config = Config { id: 1, memory: true, ..Config::default() };
            config.peer_advertise = Some(peer.local_addr().unwrap().to_string());
            config.grpc_advertise = Some(grpc.local_addr().unwrap().to_string());
            config.stores.push(StoreConfig { name: "other".into(), key_prefix: "appid".into() });
            let node = Node::start(config.clone(), Listeners::from_tcp(peer, grpc, None), Role::Serve, Io::real())
                .await
                .expect("node starts");
            while node.handle().status().await.leader_id.is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let gate = Arc::new(Gate::new(Token::new(None), Arc::new(Policy::default())));
            let state = HttpState { dapr: Dapr::new(node.handle(), &config), gate, protect_metrics: false };
            (node, state)
        });
        Door { rt, state, _node: node }
    })
}

/// The request an input spells, if it is one hyper could have parsed.
fn request(data: &[u8]) -> Option<axum::http::Request<Body>> {
    let split = data.windows(2).position(|w| w == b"\n\n");
    let (head, body) = match split {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.lines();
    let (method, uri) = lines.next()?.split_once(' ')?;
    let mut req = axum::http::Request::builder().method(method).uri(uri);
    for line in lines {
        let (name, value) = line.split_once(':')?;
        req = req.header(name.trim(), value.trim());
    }
    req.body(Body::from(body.to_vec())).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some(req) = request(data) else { return };
    // Membership changes would leave this one-node cluster waiting for nodes that do not
    // exist; they have tests of their own.
    let path = statenode::http::clean(req.uri().path());
    if path.starts_with("/v1/cluster/") {
        return;
    }
    let d = door();
    d.rt.block_on(async {
        let resp = tokio::time::timeout(Duration::from_secs(20), respond(&d.state, req)).await.expect("an answer");
        let status = resp.status().as_u16();
        let streaming = resp.headers().get("content-type").is_some_and(|v| v.as_bytes() == b"text/event-stream");
        if streaming {
            return; // a watch: its stream never ends
        }
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.expect("a whole body");
        let internal = String::from_utf8_lossy(&body).contains("internal error");
        assert!(!(status == 500 && internal), "an internal error: {}", String::from_utf8_lossy(&body));
    });
});
