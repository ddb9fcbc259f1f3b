//! The HTTP front door: Dapr's state API (`/v1.0/…`), the native API (`/v1/…`), health and
//! metrics. One hand-written router, so Dapr's path quirks (cleaning, unescaping, the
//! fall-through to service invocation) and every error body are ours to decide.

pub mod dapr;
pub mod native;

use crate::auth::{CertName, Gate, TOKEN_HEADER};
use crate::dapr::Dapr;
use crate::io::Incoming;
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use hyper::http::{header, HeaderValue, Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What every HTTP request handler shares: the API (acting for the request's caller once
/// routed) and what turns credentials into callers.
pub struct HttpState {
    pub dapr: Dapr,
    pub gate: Arc<Gate>,
    /// `/metrics` asks for a token too.
    pub protect_metrics: bool,
}

impl HttpState {
    fn handle(&self) -> &crate::NodeHandle {
        self.dapr.handle()
    }
}

/// Serves HTTP/1.1 on `incoming` until `stop`; then drops every open connection (watch
/// streams never end on their own).
pub async fn serve(mut incoming: Incoming, state: Arc<HttpState>, mut stop: watch::Receiver<bool>) {
    let (max_conns, header_timeout) = {
        let l = state.handle().limits();
        (l.max_http_connections, l.http_header_timeout)
    };
    let mut conns = JoinSet::new();
    while let Some(conn) = crate::io::accept(&mut incoming, &mut conns, &mut stop, "http").await {
        while conns.try_join_next().is_some() {}
        if conns.len() >= max_conns {
            tracing::warn!(limit = max_conns, "http connection limit reached; closing a new connection");
            drop(conn);
            continue;
        }
        let state = state.clone();
        let cert = conn.cert_name();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                let state = state.clone();
                if let Some(cert) = &cert {
                    req.extensions_mut().insert(cert.clone());
                }
                async move { Ok::<_, std::convert::Infallible>(respond(&state, req.map(Body::new)).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .max_buf_size(64 * 1024)
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(conn), svc)
                .await;
        });
    }
    conns.abort_all();
}

/// Answers one request, as the server does for each one it reads: routing, the token
/// check, metrics. Tests call it directly, without a socket.
pub async fn respond(state: &HttpState, req: Request<Body>) -> Response {
    let start = Instant::now();
    let (route, resp) = route(state, req).await;
    state.handle().metrics().observe("http", route, resp.status().as_u16(), start.elapsed());
    resp
}

async fn route(state: &HttpState, req: Request<Body>) -> (&'static str, Response) {
    let path = clean(req.uri().path());
    // Decided on the path as it is routed: a key path (routed raw) that cleans to a probe's
    // path is still a key.
    let exempt = req.method() == Method::GET
        && !native::is_key_path(req.uri().path())
        && match path.as_str() {
            "/v1.0/healthz" | "/v1.0/healthz/outbound" | "/livez" | "/readyz" => true,
            "/metrics" => !state.protect_metrics,
            _ => false,
        };
    let caller = if exempt {
        // A probe reads no key: it acts for nobody in particular.
        crate::auth::Caller::Nobody
    } else {
        let given = req.headers().get(TOKEN_HEADER).map(HeaderValue::as_bytes);
        match state.gate.caller(given, req.extensions().get::<Arc<CertName>>().map(|c| &**c)) {
            Ok(caller) => caller,
            Err(_) => return ("unauthorized", text(StatusCode::UNAUTHORIZED, "invalid api token")),
        }
    };
    let (gate, protect_metrics) = (state.gate.clone(), state.protect_metrics);
    let state = &HttpState { dapr: state.dapr.acting_for(caller), gate, protect_metrics };
    if path.starts_with("/v1.0/") || path.starts_with("/v1.0-alpha1/") {
        dapr::route(state, &path, req).await
    } else {
        native::route(state, &path, req).await
    }
}

/// Go's `path.Clean` on the escaped path: `//a/./b/../c/` → `/a/c`.
pub fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Decodes `%XX` escapes (and `+` as a space when `plus_is_space`, as Go's
/// `QueryUnescape`); a malformed escape is an error.
pub fn unescape(s: &str, plus_is_space: bool) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                let v = hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or_else(|| {
                    let bad: String = s[i..].chars().take(3).collect();
                    format!("invalid URL escape {bad:?}")
                })?;
                out.push(v);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// The query string as `(name, value)` pairs, in order; undecodable pairs are an error.
pub fn query_pairs(uri: &hyper::http::Uri) -> Result<Vec<(String, String)>, String> {
    let Some(q) = uri.query() else {
        return Ok(Vec::new());
    };
    let decode = |s: &str| {
        let bytes = unescape(s, true)?;
        String::from_utf8(bytes).map_err(|_| format!("query parameter {s:?} is not UTF-8"))
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// Reads a whole body of at most `limit` bytes.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, String> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| format!("request body is larger than the limit of {limit} bytes"))
}

pub fn text(status: StatusCode, body: &str) -> Response {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

pub fn json(status: StatusCode, body: &serde_json::Value) -> Response {
    bytes_json(status, serde_json::to_vec(body).expect("json value").into())
}

pub fn bytes_json(status: StatusCode, body: Bytes) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub fn empty(status: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_paths_like_go() {
        assert_eq!(clean("//v1.0//state/s/"), "/v1.0/state/s");
        assert_eq!(clean("/v1.0/state/./s/../t/k"), "/v1.0/state/t/k");
        assert_eq!(clean("/../.."), "/");
        assert_eq!(clean(""), "/");
    }

    #[test]
    fn unescapes_strictly() {
        assert_eq!(unescape("a%2Fb+c", true).unwrap(), b"a/b c");
        assert_eq!(unescape("a%2fb+c", false).unwrap(), b"a/b+c");
        assert_eq!(unescape("%E2%82%AC", false).unwrap(), "€".as_bytes());
        for bad in ["%", "%2", "%zz", "a%g1", "%%"] {
            assert!(unescape(bad, true).is_err(), "{bad}");
        }
    }
}
