//! The native HTTP API: `/v1/kv` (get, put, delete, paged list), `/v1/watch` (Server-Sent
//! Events), `/v1/cluster` (status, members, join, leave), `/livez`, `/readyz`, `/metrics`.
//! Errors are `{"error":{"code","message"}}` with one status per `Error` kind.

use super::{json, query_pairs, read_body, text, unescape, HttpState};
use crate::error::Error;
use crate::handle::{Consistency, ListQuery, Member, PutDone, WatchItem};
use crate::kv::{Delete, DeleteCondition, DeleteOutcome, Entry, Event, EventKind, Put, PutCondition};
use axum::body::Body;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use hyper::http::request::Parts;
use hyper::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use serde_json::{json, Map, Value};
use std::time::Duration;

/// Header carrying the leader's client (gRPC) address on 503.
pub const LEADER_HEADER: &str = statenode_proto::headers::LEADER;
const KV_PREFIX: &str = "/v1/kv/";

type Reply = Result<Response, Error>;

/// Whether a raw (uncleaned) request path is routed to a key: keys may hold '/', "." and
/// ".." segments, so key paths are taken raw, not cleaned.
pub fn is_key_path(raw: &str) -> bool {
    raw.starts_with(KV_PREFIX)
}

pub async fn route(state: &HttpState, path: &str, req: Request<Body>) -> (&'static str, Response) {
    let m = req.method().clone();
    if let Some(raw_key) = req.uri().path().strip_prefix(KV_PREFIX).map(str::to_string) {
        let (parts, body) = req.into_parts();
        let (name, reply) = match m {
            Method::GET => ("kv.get", kv_get(state, &raw_key, &parts).await),
            Method::PUT => ("kv.put", kv_put(state, &raw_key, &parts, body).await),
            Method::DELETE => ("kv.delete", kv_delete(state, &raw_key, &parts).await),
            _ => ("kv.method", Ok(method_not_allowed())),
        };
        return (name, reply.unwrap_or_else(IntoResponse::into_response));
    }
    let (parts, body) = req.into_parts();
    let (name, reply): (&'static str, Reply) = match (path, &m) {
        ("/livez", &Method::GET) => ("livez", Ok(text(StatusCode::OK, "ok\n"))),
        ("/readyz", &Method::GET) => ("readyz", readyz(state).await),
        ("/metrics", &Method::GET) => ("metrics", Ok(metrics(state).await)),
        ("/v1/kv", &Method::GET) => ("kv.list", list(state, &parts).await),
        ("/v1/watch", &Method::GET) => ("watch", watch(state, &parts)),
        ("/v1/cluster", &Method::GET) => ("cluster.status", Ok(json(StatusCode::OK, &status_json(state).await))),
        ("/v1/cluster/members", &Method::GET) => ("cluster.members", Ok(members(state).await)),
        ("/v1/cluster/join", &Method::POST) => ("cluster.join", join(state, body).await),
        ("/v1/cluster/leave", &Method::POST) => ("cluster.leave", leave(state, body).await),
        ("/livez" | "/readyz" | "/metrics" | "/v1/kv" | "/v1/watch" | "/v1/cluster" | "/v1/cluster/members", _)
        | ("/v1/cluster/join" | "/v1/cluster/leave", _) => ("method", Ok(method_not_allowed())),
        _ => ("unmatched", Err(Error::NotFound(format!("no route for {path}")))),
    };
    (name, reply.unwrap_or_else(IntoResponse::into_response))
}

/// A known path asked with the wrong method.
fn method_not_allowed() -> Response {
    let body = json!({ "error": { "code": "method_not_allowed", "message": "method not allowed" } });
    json(StatusCode::METHOD_NOT_ALLOWED, &body)
}

/// The one `Error` → HTTP response table of the native API.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let e = self;
        let (status, code) = match &e {
            Error::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Error::ConditionFailed(_) => (StatusCode::PRECONDITION_FAILED, "condition_failed"),
            Error::FencingRejected(_) => (StatusCode::CONFLICT, "fencing_rejected"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "invalid_argument"),
            Error::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Error::Exhausted(_) => (StatusCode::TOO_MANY_REQUESTS, "exhausted"),
            Error::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, "permission_denied"),
            Error::Internal(d) => {
                tracing::error!(detail = %d, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        let message = if matches!(e, Error::Internal(_)) { "internal error".to_string() } else { e.to_string() };
        let mut r = json(status, &json!({ "error": { "code": code, "message": message } }));
        if let Error::Unavailable { leader_hint: Some(h), .. } = &e {
            if let Ok(v) = HeaderValue::from_str(&h.grpc_addr) {
                r.headers_mut().insert(LEADER_HEADER, v);
            }
        }
        r
    }
}

fn params(req: &Parts) -> Result<Vec<(String, String)>, Error> {
    query_pairs(&req.uri).map_err(Error::invalid)
}

fn param<'p>(ps: &'p [(String, String)], name: &str) -> Option<&'p str> {
    ps.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn key_of(raw: &str) -> Result<Bytes, Error> {
    let k = unescape(raw, false).map_err(Error::invalid)?;
    Ok(k.into())
}

fn consistency(ps: &[(String, String)]) -> Result<Consistency, Error> {
    match param(ps, "consistency") {
        None | Some("" | "linearizable") => Ok(Consistency::Linearizable),
        Some("stale") => Ok(Consistency::Stale),
        Some(other) => Err(Error::invalid(format!("consistency must be linearizable or stale, not {other:?}"))),
    }
}

/// `10s`, `500ms`, `5m`, `2h`, or plain seconds.
pub fn parse_ttl(s: &str) -> Result<u64, Error> {
    let bad = || Error::invalid(format!("bad ttl {s:?}: use e.g. 30, 30s, 500ms, 5m, 2h"));
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let mult = match unit {
        "" | "s" => 1000,
        "ms" => 1,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).filter(|t| *t > 0).ok_or_else(bad)
}

/// A revision from `If-Match` (quotes allowed, as in HTTP's entity-tags).
fn if_match(h: &HeaderMap) -> Result<Option<u64>, Error> {
    let Some(v) = h.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| Error::invalid("bad If-Match header"))?.trim().trim_matches('"');
    v.parse().map(Some).map_err(|_| Error::invalid(format!("If-Match must be a revision, not {v:?}")))
}

fn meta_headers(r: &mut Response, e: &Entry) {
    let h = r.headers_mut();
    let mut put = |name: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(name, v);
        }
    };
    put("etag", e.revision.to_string());
    put("x-statenode-revision", e.revision.to_string());
    put("x-statenode-create-revision", e.create_revision.to_string());
    put("x-statenode-version", e.version.to_string());
    if let Some(t) = e.expires_at_ms {
        put("x-statenode-expires-at-ms", t.to_string());
    }
}

async fn kv_get(state: &HttpState, raw: &str, req: &Parts) -> Reply {
    let key = key_of(raw)?;
    let ps = params(req)?;
    let entry = state.handle().get(&key, consistency(&ps)?).await?;
    let e = entry.ok_or_else(|| Error::NotFound(format!("key {:?}", String::from_utf8_lossy(&key))))?;
    let mut r = Response::new(Body::from(e.value.clone()));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    meta_headers(&mut r, &e);
    Ok(r)
}

async fn kv_put(state: &HttpState, raw: &str, req: &Parts, body: Body) -> Reply {
    let key = key_of(raw)?;
    let ps = params(req)?;
    let ttl_ms = param(&ps, "ttl").map(parse_ttl).transpose()?;
    let create_only = req.headers.get(header::IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == b"*");
    let condition = match (if_match(&req.headers)?, create_only) {
        (Some(_), true) => return Err(Error::invalid("If-Match and If-None-Match together")),
        (Some(rev), false) => PutCondition::IfRevision(rev),
        (None, true) => PutCondition::IfAbsent,
        (None, false) => PutCondition::Always,
    };
    let limits = state.handle().limits();
    let value = read_body(body, limits.max_value_bytes).await.map_err(Error::TooLarge)?;
    let put = Put { key, value, ttl_ms, condition, fencing: None, client_ts: None };
    match state.handle().put(put, None).await? {
        PutDone { applied: true, meta: Some(m), .. } => Ok(json(
            StatusCode::OK,
            &json!({ "revision": m.revision, "create_revision": m.create_revision,
                     "version": m.version.to_string(), "expires_at_ms": m.expires_at_ms }),
        )),
        PutDone { meta, .. } => Err(Error::ConditionFailed(match meta {
            Some(m) => format!("the key is at revision {}", m.revision),
            None => "the key does not exist".into(),
        })),
    }
}

async fn kv_delete(state: &HttpState, raw: &str, req: &Parts) -> Reply {
    let key = key_of(raw)?;
    let condition = match if_match(&req.headers)? {
        Some(rev) => DeleteCondition::IfRevision(rev),
        None => DeleteCondition::Always,
    };
    let done = state.handle().delete(Delete { key, condition, fencing: None }, None).await?;
    match done.outcome {
        DeleteOutcome::ConditionFailed => {
            Err(Error::ConditionFailed(format!("revision does not match (at log index {})", done.revision)))
        }
        o => Ok(json(StatusCode::OK, &json!({ "deleted": o == DeleteOutcome::Deleted, "revision": done.revision }))),
    }
}

/// `key`/`value` as strings when UTF-8, else `key_base64`/`value_base64`.
fn put_bytes(o: &mut Map<String, Value>, name: &str, b: &[u8]) {
    match std::str::from_utf8(b) {
        Ok(s) => o.insert(name.into(), Value::String(s.into())),
        Err(_) => o.insert(format!("{name}_base64"), base64::engine::general_purpose::STANDARD.encode(b).into()),
    };
}

async fn list(state: &HttpState, req: &Parts) -> Reply {
    let ps = params(req)?;
    let limit = match param(&ps, "limit") {
        None | Some("") => 0,
        Some(l) => l.parse().map_err(|_| Error::invalid(format!("bad limit {l:?}")))?,
    };
    let prefix = Bytes::from(param(&ps, "prefix").unwrap_or("").to_string());
    let after = Bytes::from(param(&ps, "cursor").unwrap_or("").to_string());
    let keys_only = matches!(param(&ps, "keys_only"), Some("true" | "1"));
    let page = state.handle().list(ListQuery { prefix, after, limit }, consistency(&ps)?).await?;
    let kvs: Vec<Value> = page
        .entries
        .iter()
        .map(|(k, e)| {
            let mut o = Map::new();
            put_bytes(&mut o, "key", k);
            if !keys_only {
                put_bytes(&mut o, "value", &e.value);
            }
            o.insert("revision".into(), e.revision.into());
            o.insert("create_revision".into(), e.create_revision.into());
            o.insert("version".into(), e.version.to_string().into());
            if let Some(t) = e.expires_at_ms {
                o.insert("expires_at_ms".into(), t.into());
            }
            Value::Object(o)
        })
        .collect();
    let mut out = Map::new();
    out.insert("kvs".into(), Value::Array(kvs));
    if let Some(c) = &page.next_cursor {
        put_bytes(&mut out, "next_cursor", c);
    }
    out.insert("revision".into(), page.revision.into());
    Ok(json(StatusCode::OK, &Value::Object(out)))
}

/// Where a watch resumes: `Last-Event-ID` (`<revision>.<n>`: the n-th event of that
/// revision was the last one seen) wins over `from_revision`.
fn resume_point(req: &Parts, ps: &[(String, String)]) -> Result<(Option<u64>, usize), Error> {
    if let Some(id) = req.headers.get("last-event-id") {
        let id = id.to_str().map_err(|_| Error::invalid("bad Last-Event-ID"))?;
        let bad = || Error::invalid(format!("bad Last-Event-ID {id:?}"));
        return match id.split_once('.') {
            Some((rev, n)) => {
                let n: usize = n.parse().map_err(|_| bad())?;
                Ok((Some(rev.parse().map_err(|_| bad())?), n.checked_add(1).ok_or_else(bad)?))
            }
            None => Ok((Some(id.parse::<u64>().map_err(|_| bad())?.saturating_add(1)), 0)),
        };
    }
    match param(ps, "from_revision") {
        None | Some("") => Ok((None, 0)),
        Some(r) => Ok((Some(r.parse().map_err(|_| Error::invalid(format!("bad from_revision {r:?}")))?), 0)),
    }
}

/// One change as an SSE event `id`: its kind, and the change as JSON.
fn sse_event(e: &Event, id: String) -> SseEvent {
    let mut o = Map::new();
    o.insert("revision".into(), e.revision.into());
    put_bytes(&mut o, "key", &e.key);
    let kind = match e.kind {
        EventKind::Put => {
            put_bytes(&mut o, "value", &e.value);
            "put"
        }
        EventKind::Delete => "delete",
    };
    o.insert("version".into(), e.version.to_string().into());
    if e.expired {
        o.insert("expired".into(), true.into());
    }
    SseEvent::default().event(kind).id(id).data(Value::Object(o).to_string())
}

fn watch(state: &HttpState, req: &Parts) -> Reply {
    let ps = params(req)?;
    let prefix = Bytes::from(param(&ps, "prefix").unwrap_or("").to_string());
    let (from, mut skip) = resume_point(req, &ps)?;
    let events = state.handle().watch(prefix, from.filter(|r| *r > 0))?;
    // (stream, the revision of the last event sent, how many events of it were sent)
    let init = (events, 0u64, 0usize);
    let stream = futures::stream::unfold(init, move |(mut events, mut rev, mut n)| {
        let skip_first = std::mem::take(&mut skip);
        async move {
            let mut to_skip = skip_first;
            loop {
                let item = events.next().await?;
                let ev = match item {
                    WatchItem::Resync { next } => {
                        let data = json!({ "next_revision": next }).to_string();
                        (rev, n) = (next.saturating_sub(1), 0);
                        // A bare revision: a reconnect resumes after it.
                        SseEvent::default().event("resync").id(rev.to_string()).data(data)
                    }
                    WatchItem::Event(e) => {
                        if e.revision == rev {
                            n += 1;
                        } else {
                            (rev, n) = (e.revision, 0);
                        }
                        if to_skip > 0 && from == Some(e.revision) {
                            to_skip -= 1;
                            continue;
                        }
                        sse_event(&e, format!("{rev}.{n}"))
                    }
                };
                return Some((Ok::<_, std::convert::Infallible>(ev), (events, rev, n)));
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

async fn status_json(state: &HttpState) -> Value {
    let s = state.handle().status().await;
    json!({
        "id": s.id, "role": s.role, "leader_id": s.leader_id, "term": s.term,
        "last_log_index": s.last_log_index, "commit_index": state.handle().commit_index(),
        "applied_index": s.applied_index, "purged_index": s.purged_index,
        "members": s.members.iter().map(member_json).collect::<Vec<_>>(),
    })
}

fn member_json(m: &Member) -> Value {
    json!({ "id": m.id, "peer_addr": m.peer_addr, "grpc_addr": m.grpc_addr, "voter": m.voter, "leader": m.leader })
}

async fn members(state: &HttpState) -> Response {
    let s = state.handle().status().await;
    json(
        StatusCode::OK,
        &json!({ "leader_id": s.leader_id, "members": s.members.iter().map(member_json).collect::<Vec<_>>() }),
    )
}

async fn body_json(body: Body) -> Result<Value, Error> {
    let body = read_body(body, 64 * 1024).await.map_err(Error::TooLarge)?;
    serde_json::from_slice(&body).map_err(|e| Error::invalid(format!("bad JSON body: {e}")))
}

fn member_id(v: &Value) -> Result<u64, Error> {
    v.get("id")
        .and_then(Value::as_u64)
        .filter(|id| *id > 0)
        .ok_or_else(|| Error::invalid("\"id\" must be a node id >= 1"))
}

async fn join(state: &HttpState, body: Body) -> Reply {
    let v = body_json(body).await?;
    let id = member_id(&v)?;
    let addr = |name: &str| {
        v.get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| Error::invalid(format!("\"{name}\" is required")))
    };
    let members = state.handle().join(id, addr("peer_addr")?, addr("grpc_addr")?).await?;
    Ok(json(StatusCode::OK, &json!({ "members": members.iter().map(member_json).collect::<Vec<_>>() })))
}

async fn leave(state: &HttpState, body: Body) -> Reply {
    let id = member_id(&body_json(body).await?)?;
    let members = state.handle().leave(id).await?;
    Ok(json(StatusCode::OK, &json!({ "members": members.iter().map(member_json).collect::<Vec<_>>() })))
}

/// Ready = this node can serve a linearizable read right now.
async fn readyz(state: &HttpState) -> Reply {
    match tokio::time::timeout(Duration::from_secs(2), state.handle().ready()).await {
        Ok(Ok(_)) => Ok(text(StatusCode::OK, "ready\n")),
        Ok(Err(e)) => Err(Error::unavailable(format!("not ready: {e}"))),
        Err(_) => Err(Error::unavailable("not ready: no linearizable read within 2 s")),
    }
}

async fn metrics(state: &HttpState) -> Response {
    let st = state.handle().status().await;
    let h = state.handle();
    let body = h.metrics().render(&st, h.commit_index(), h.sm().snapshot_bytes());
    let mut r = text(StatusCode::OK, &body);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("30").unwrap(), 30_000);
        assert_eq!(parse_ttl("30s").unwrap(), 30_000);
        assert_eq!(parse_ttl("500ms").unwrap(), 500);
        assert_eq!(parse_ttl("2h").unwrap(), 7_200_000);
        for bad in ["", "0", "-1", "1.5s", "10d", "s", "99999999999999999999", "18446744073709551615h"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
