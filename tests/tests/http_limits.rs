//! Hostile HTTP clients: garbage, oversized heads, non-UTF-8 escapes, too many connections,
//! and a client that never finishes its request head. Each gets a clear answer (or is
//! disconnected) and the node keeps serving everyone else.

use statenode_e2e::http::{get, request};
use statenode_e2e::{serial, TestCluster};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Everything the server sends until it closes the connection (or `within` passes).
async fn read_all(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match tokio::time::timeout(within, s.read_to_end(&mut out)).await {
        Ok(_) => Some(out),
        Err(_) => None,
    }
}

async fn raw(addr: &str, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let out = read_all(&mut s, Duration::from_secs(5)).await.expect("server answered and closed");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_http_clients_get_clear_answers_and_limits_hold() {
    let _g = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("limits.toml");
    std::fs::write(&cfg, "[limits]\nmax_http_connections = 4\nhttp_header_timeout = 500\n").unwrap();
    let c = TestCluster::start_with_args(1, true, &["--config", cfg.to_str().unwrap()]).await;
    let a = c.nodes[0].http.clone();
    assert_eq!(get(&a, "/readyz").await.status, 200);

    // Garbage and oversized heads: HTTP errors from the parser, then the connection closes.
    assert!(raw(&a, b"\x00\x01\x02 garbage\r\n\r\n").await.starts_with("HTTP/1.1 400"));
    let huge_header = format!("GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(1024 * 1024));
    let r = raw(&a, huge_header.as_bytes()).await;
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 431") || r.starts_with("HTTP/1.1 400"), "{r}");
    // Escapes that decode to invalid UTF-8.
    let r = get(&a, "/v1.0/state/statestore/%FF%FE").await;
    assert_eq!(r.status, 400);
    assert!(r.text().starts_with("failed to unescape request parameter \"key\""), "{}", r.text());
    assert_eq!(get(&a, "/v1/kv?prefix=%FF").await.status, 400);
    assert_eq!(get(&a, "/v1/kv?prefix=%F").await.status, 400);
    // A body that claims more than it sends does not wedge the server for others.
    let mut short = TcpStream::connect(&a).await.unwrap();
    short.write_all(b"POST /v1.0/state/statestore HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[{").await.unwrap();
    assert_eq!(get(&a, "/livez").await.status, 200);
    drop(short);

    // A client that never finishes its head is disconnected after the header timeout.
    let mut slow = TcpStream::connect(&a).await.unwrap();
    slow.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let start = Instant::now();
    let got = read_all(&mut slow, Duration::from_secs(5)).await;
    assert!(got.is_some(), "a stalled request head was never timed out");
    assert!(start.elapsed() < Duration::from_secs(3), "took {:?}", start.elapsed());

    // The connection limit: with 4 idle connections open, a fifth is closed unanswered.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(&a).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fifth = TcpStream::connect(&a).await.unwrap();
    let _ = fifth.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    let got = read_all(&mut fifth, Duration::from_secs(2)).await.expect("closed at once");
    assert!(got.is_empty(), "answered beyond the limit: {}", String::from_utf8_lossy(&got));
    // Idle connections are cut by the header timeout too, so the node recovers by itself.
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = TcpStream::connect(&a).await.unwrap();
        let _ = s.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        let got = read_all(&mut s, Duration::from_secs(2)).await.unwrap_or_default();
        if got.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "the node never served again after the limit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(request(&a, "GET", "/readyz", &[], b"").await.status, 200);
}
