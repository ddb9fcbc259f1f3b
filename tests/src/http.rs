//! A deliberately small HTTP/1.1 client over a raw TCP socket: it sends exactly the bytes a
//! test asks for (odd paths, broken escapes, wrong methods, huge bodies) and reads Server-
//! Sent Events.

use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The Dapr `errorCode` of an error body.
    pub fn error_code(&self) -> String {
        self.json()["errorCode"].as_str().unwrap_or_default().to_string()
    }
}

/// One request with `Connection: close`; `headers` are `name: value` lines.
pub async fn request(addr: &str, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    tokio::time::timeout(Duration::from_secs(30), request_inner(addr, method, target, headers, body))
        .await
        .unwrap_or_else(|_| panic!("{method} {target}: no answer within 30 s"))
}

async fn request_inner(addr: &str, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes()).await.expect("write head");
    // A server may answer (413) before reading a huge body: ignore a reset while sending.
    let _ = s.write_all(body).await;
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r).await;
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut line = String::new();
            r.read_line(&mut line).await.expect("chunk size");
            let n = usize::from_str_radix(line.trim(), 16).expect("chunk size hex");
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).await.expect("chunk");
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        let _ = r.read_to_end(&mut body).await;
    }
    Resp { status, headers, body }
}

async fn read_head<R: AsyncBufReadExt + Unpin>(r: &mut R) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).await.expect("status line");
    let status =
        line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad status {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).await.expect("header");
        let h = h.trim_end();
        if h.is_empty() {
            return (status, headers);
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
}

pub async fn get(addr: &str, target: &str) -> Resp {
    request(addr, "GET", target, &[], b"").await
}

pub async fn post(addr: &str, target: &str, body: &str) -> Resp {
    request(addr, "POST", target, &[("Content-Type", "application/json")], body.as_bytes()).await
}

/// One Server-Sent Event.
#[derive(Clone, Debug, PartialEq)]
pub struct Sse {
    pub event: String,
    pub id: String,
    pub data: serde_json::Value,
}

/// An open `text/event-stream` response.
pub struct SseStream {
    r: BufReader<TcpStream>,
}

impl SseStream {
    pub async fn open(addr: &str, target: &str, headers: &[(&str, &str)]) -> SseStream {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut head = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).await.expect("write");
        let mut r = BufReader::new(s);
        let (status, _) = read_head(&mut r).await;
        assert_eq!(status, 200, "watch {target}");
        SseStream { r }
    }

    /// The next event (comments and keep-alives skipped), or `None` after `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Sse> {
        tokio::time::timeout(within, self.next_inner()).await.ok()
    }

    async fn next_inner(&mut self) -> Sse {
        let (mut event, mut id, mut data) = (String::new(), String::new(), String::new());
        loop {
            // Chunked framing: a size line, then the chunk; SSE lines inside.
            let mut line = String::new();
            let n = self.r.read_line(&mut line).await.expect("read sse");
            assert!(n > 0, "event stream closed");
            let line = line.trim_end_matches(['\r', '\n']);
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim());
            } else if line.is_empty() && !data.is_empty() {
                let data = serde_json::from_str(&data).expect("event data is JSON");
                return Sse { event, id, data };
            }
        }
    }
}
