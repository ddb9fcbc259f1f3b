//! Dapr's HTTP state API: `/v1.0/state/…`, `/v1.0-alpha1/state/{store}/query`, health
//! and metadata, with daprd's routes, status codes and error bodies.

use super::{bytes_json, empty, json, query_pairs, read_body, text, unescape, HttpState};
use crate::dapr::query::{json_of, Query};
use crate::dapr::{
    Concurrency, DaprError, DeleteItem, Got, SaveItem, Scope, StateOp, TxnItem, CAPABILITIES, RUNTIME_VERSION,
    STORE_TYPE,
};
use crate::handle::Consistency;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use hyper::http::{header, HeaderName, HeaderValue, Method, Request, StatusCode};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use statenode_proto::headers::APP_ID;
use std::collections::BTreeMap;

type Reply = Result<Response, DaprError>;

pub async fn route(state: &HttpState, path: &str, req: Request<Body>) -> (&'static str, Response) {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let m = req.method().clone();
    let is_write = m == Method::POST || m == Method::PUT;
    let (name, reply): (&'static str, Reply) = match (segs.as_slice(), &m) {
        (["v1.0", "healthz"], &Method::GET) => ("dapr.healthz", healthz(state, &req)),
        (["v1.0", "healthz", "outbound"], &Method::GET) => ("dapr.healthz_outbound", outbound(state).await),
        (["v1.0", "metadata"], &Method::GET) => ("dapr.metadata", Ok(metadata(state))),
        (["v1.0", "metadata", key], &Method::PUT) => ("dapr.metadata_put", put_metadata(state, key, req).await),
        (["v1.0", "state", store], _) if is_write => ("dapr.save", with_store(state, store, req, save).await),
        (["v1.0", "state", store, "bulk"], _) if is_write => {
            ("dapr.bulk_get", with_store(state, store, req, bulk_get).await)
        }
        (["v1.0", "state", store, "transaction"], _) if is_write => {
            ("dapr.transaction", with_store(state, store, req, transaction).await)
        }
        (["v1.0-alpha1", "state", store, "query"], _) if is_write => {
            ("dapr.query", with_store(state, store, req, query).await)
        }
        (["v1.0", "state", store, key], &Method::GET) => {
            let key = key.to_string();
            ("dapr.get", with_store(state, store, req, move |call| get(call, key)).await)
        }
        (["v1.0", "state", store, key], &Method::DELETE) => {
            let key = key.to_string();
            ("dapr.delete", with_store(state, store, req, move |call| delete(call, key)).await)
        }
        _ => ("dapr.unmatched", Err(DaprError::no_route())),
    };
    (name, reply.unwrap_or_else(IntoResponse::into_response))
}

/// A Dapr error as daprd answers it over HTTP.
impl IntoResponse for DaprError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.http).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json(status, &self.body())
    }
}

/// A path parameter, unescaped like daprd (`url.QueryUnescape`); a bad escape is a
/// plain-text 400.
fn param(name: &str, raw: &str) -> Result<String, Response> {
    let bytes = unescape(raw, true).map_err(|e| {
        text(StatusCode::BAD_REQUEST, &format!("failed to unescape request parameter \"{name}\". Error: {e}"))
    })?;
    String::from_utf8(bytes).map_err(|_| {
        text(StatusCode::BAD_REQUEST, &format!("failed to unescape request parameter \"{name}\". Error: not UTF-8"))
    })
}

/// Everything a state handler needs about its request.
struct Call<'a> {
    scope: Scope<'a>,
    req: Request<Body>,
    /// Query parameters other than `metadata.*`.
    params: Vec<(String, String)>,
    /// `metadata.<k>` query parameters, prefix stripped, first value wins.
    metadata: BTreeMap<String, String>,
    max_body: usize,
}

impl Call<'_> {
    fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    async fn body(&mut self) -> Result<Bytes, DaprError> {
        let body = std::mem::replace(self.req.body_mut(), Body::empty());
        read_body(body, self.max_body).await.map_err(DaprError::body_too_large)
    }
}

/// Resolves the store (before the body is read, as daprd does), then runs `f`.
async fn with_store<'s, F, Fut>(state: &'s HttpState, store: &str, req: Request<Body>, f: F) -> Reply
where
    F: FnOnce(Call<'s>) -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let store = match param("storeName", store) {
        Ok(s) => s,
        Err(resp) => return Ok(resp),
    };
    let app_id = req.headers().get(APP_ID).and_then(|v| v.to_str().ok());
    let scope = state.dapr.scope(&store, app_id)?;
    let pairs = query_pairs(req.uri()).map_err(DaprError::malformed)?;
    let mut metadata = BTreeMap::new();
    let mut params = Vec::new();
    for (k, v) in pairs {
        match k.strip_prefix("metadata.") {
            Some(m) => {
                metadata.entry(m.to_string()).or_insert(v);
            }
            None => params.push((k, v)),
        }
    }
    let max_body = state.handle().limits().max_request_bytes + 64 * 1024;
    f(Call { scope, req, params, metadata, max_body }).await
}

fn consistency(c: Option<&str>, op: StateOp, store: &str) -> Result<Consistency, DaprError> {
    match c {
        None | Some("" | "strong") => Ok(Consistency::Linearizable),
        Some("eventual") => Ok(Consistency::Stale),
        Some(other) => Err(DaprError::store(
            op,
            store,
            "",
            &crate::Error::invalid(format!("unrecognized consistency model '{other}'")),
        )),
    }
}

fn concurrency(c: Option<&str>, op: StateOp, store: &str) -> Result<Concurrency, DaprError> {
    match c {
        None | Some("" | "last-write") => Ok(Concurrency::LastWrite),
        Some("first-write") => Ok(Concurrency::FirstWrite),
        Some(other) => Err(DaprError::bad_concurrency(op, store, other)),
    }
}

/// A JSON object's fields by lower-cased name (Go's decoder matches names that way; the
/// last duplicate wins, as in Go).
fn fields(v: &RawValue, what: &str) -> Result<BTreeMap<String, Box<RawValue>>, String> {
    let map: BTreeMap<String, Box<RawValue>> =
        serde_json::from_str(v.get()).map_err(|_| format!("json: cannot unmarshal {} into {what}", kind(v)))?;
    Ok(map.into_iter().map(|(k, v)| (k.to_lowercase(), v)).collect())
}

fn kind(v: &RawValue) -> &'static str {
    match v.get().trim_start().as_bytes().first() {
        Some(b'{') => "object",
        Some(b'[') => "array",
        Some(b'"') => "string",
        Some(b't' | b'f') => "bool",
        Some(b'n') => "null",
        _ => "number",
    }
}

fn is_null(v: Option<&RawValue>) -> bool {
    v.is_none_or(|v| v.get() == "null")
}

fn string_field(f: &BTreeMap<String, Box<RawValue>>, name: &str, owner: &str) -> Result<Option<String>, String> {
    let v = f.get(name).map(|v| &**v);
    if is_null(v) {
        return Ok(None);
    }
    let v = v.expect("not null");
    serde_json::from_str(v.get())
        .map(Some)
        .map_err(|_| format!("json: cannot unmarshal {} into Go struct field {owner}.{name} of type string", kind(v)))
}

fn string_map(f: &BTreeMap<String, Box<RawValue>>, name: &str) -> Result<BTreeMap<String, String>, String> {
    let v = f.get(name).map(|v| &**v);
    if is_null(v) {
        return Ok(BTreeMap::new());
    }
    serde_json::from_str(v.expect("not null").get())
        .map_err(|_| format!("json: cannot unmarshal {name} into Go value of type map[string]string"))
}

/// One save item (Dapr's `SetRequest`), from an object with case-insensitive names.
fn save_item(raw: &RawValue, query_md: &BTreeMap<String, String>, store: &str) -> Result<SaveItem, DaprError> {
    let f = fields(raw, "Go value of type state.SetRequest").map_err(DaprError::malformed)?;
    let key = string_field(&f, "key", "SetRequest").map_err(DaprError::malformed)?.unwrap_or_default();
    if key.is_empty() {
        return Err(DaprError::malformed("\"key\" is a required field"));
    }
    let value: Bytes = match f.get("value") {
        Some(v) => Bytes::copy_from_slice(v.get().as_bytes()),
        None => Bytes::from_static(b"null"),
    };
    let etag = string_field(&f, "etag", "SetRequest").map_err(DaprError::malformed)?;
    let mut metadata = string_map(&f, "metadata").map_err(DaprError::malformed)?;
    metadata.extend(query_md.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut c = Concurrency::LastWrite;
    if let Some(opts) = f.get("options").filter(|o| o.get() != "null") {
        let o = fields(opts, "Go struct field SetRequest.options").map_err(DaprError::malformed)?;
        let conc = string_field(&o, "concurrency", "SetStateOption").map_err(DaprError::malformed)?;
        let cons = string_field(&o, "consistency", "SetStateOption").map_err(DaprError::malformed)?;
        c = concurrency(conc.as_deref(), StateOp::Save, store)?;
        consistency(cons.as_deref(), StateOp::Save, store)?;
    }
    Ok(SaveItem { key, value, etag, metadata, concurrency: c })
}

async fn save(mut call: Call<'_>) -> Reply {
    let body = call.body().await?;
    let items: Vec<Box<RawValue>> =
        serde_json::from_slice(&body).map_err(|e| DaprError::malformed(json_error(&body, &e)))?;
    let store = call.scope.name().to_string();
    let items = items.iter().map(|i| save_item(i, &call.metadata, &store)).collect::<Result<Vec<_>, _>>()?;
    call.scope.save(&items).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// Go's decoder messages, close enough for a human: EOF for an empty body.
fn json_error(body: &[u8], e: &serde_json::Error) -> String {
    if body.iter().all(u8::is_ascii_whitespace) {
        return "EOF".into();
    }
    if e.is_data() {
        return "json: cannot unmarshal into Go value of type []state.SetRequest".into();
    }
    format!("invalid character in JSON body: {e}")
}

async fn get(call: Call<'_>, key: String) -> Reply {
    let key = match param("key", &key) {
        Ok(k) => k,
        Err(resp) => return Ok(resp),
    };
    let c = consistency(call.param("consistency"), StateOp::Get, call.scope.name())?;
    let got = call.scope.get(&key, c).await?;
    let Some(value) = got.value else {
        return Ok(empty(StatusCode::NO_CONTENT));
    };
    let mut r = bytes_json(StatusCode::OK, value);
    if let Ok(v) = HeaderValue::from_str(&got.etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    for (k, v) in &got.metadata {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(format!("metadata.{k}")), HeaderValue::from_str(v)) {
            r.headers_mut().insert(n, v);
        }
    }
    Ok(r)
}

async fn delete(call: Call<'_>, key: String) -> Reply {
    let key = match param("key", &key) {
        Ok(k) => k,
        Err(resp) => return Ok(resp),
    };
    let store = call.scope.name();
    let etag = call.req.headers().get(header::IF_MATCH).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let concurrency = concurrency(call.param("concurrency"), StateOp::Delete, store)?;
    consistency(call.param("consistency"), StateOp::Delete, store)?;
    call.scope.delete_one(&DeleteItem { key, etag, concurrency }).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// The `data` of a bulk get or query item: the stored bytes when they are JSON, else a JSON
/// string (UTF-8) or a base64 string (binary) — never an invalid document.
fn data(value: &[u8]) -> Value {
    if serde_json::from_slice::<serde::de::IgnoredAny>(value).is_ok() {
        return json_of(value);
    }
    match std::str::from_utf8(value) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => Value::String(base64::engine::general_purpose::STANDARD.encode(value)),
    }
}

fn item_json(g: Got) -> Value {
    let mut o = Map::new();
    o.insert("key".into(), Value::String(g.key));
    if let Some(v) = g.value {
        o.insert("data".into(), data(&v));
        o.insert("etag".into(), Value::String(g.etag));
        if !g.metadata.is_empty() {
            o.insert("metadata".into(), json!(g.metadata));
        }
    }
    Value::Object(o)
}

fn body_error(e: impl std::fmt::Display) -> DaprError {
    DaprError::malformed(format!("failed deserializing HTTP body: {e}"))
}

fn parse_object(body: &[u8]) -> Result<BTreeMap<String, Box<RawValue>>, DaprError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(body_error("EOF"));
    }
    let raw: Box<RawValue> = serde_json::from_slice(body).map_err(body_error)?;
    fields(&raw, "request").map_err(body_error)
}

async fn bulk_get(mut call: Call<'_>) -> Reply {
    let body = call.body().await?;
    let f = parse_object(&body)?;
    let keys: Vec<String> = match f.get("keys").filter(|k| k.get() != "null") {
        Some(k) => serde_json::from_str(k.get()).map_err(body_error)?,
        None => Vec::new(),
    };
    let c = consistency(call.param("consistency"), StateOp::BulkGet, call.scope.name())?;
    let got = call.scope.get_bulk(&keys, c).await?;
    Ok(json(StatusCode::OK, &Value::Array(got.into_iter().map(item_json).collect())))
}

async fn transaction(mut call: Call<'_>) -> Reply {
    let body = call.body().await?;
    let f = parse_object(&body)?;
    // Transaction-level metadata is the store's business (partitionKey): accepted, unused.
    string_map(&f, "metadata").map_err(body_error)?;
    let ops: Vec<Box<RawValue>> = match f.get("operations").filter(|o| o.get() != "null") {
        Some(o) => serde_json::from_str(o.get()).map_err(body_error)?,
        None => Vec::new(),
    };
    let store = call.scope.name().to_string();
    let mut items = Vec::with_capacity(ops.len());
    for op in &ops {
        let o = fields(op, "TransactionalStateOperation").map_err(body_error)?;
        let kind =
            string_field(&o, "operation", "TransactionalStateOperation").map_err(body_error)?.unwrap_or_default();
        let request = o.get("request").map(|r| &**r);
        let request = match request.filter(|r| r.get() != "null") {
            Some(r) => r,
            None => return Err(body_error("operation without a request")),
        };
        let mut item = save_item(request, &call.metadata, &store).map_err(|e| {
            if e.reason.is_some() {
                e
            } else {
                body_error(e.message)
            }
        })?;
        match kind.as_str() {
            "upsert" => items.push(TxnItem::Upsert(item)),
            "delete" => {
                item.metadata.clear();
                items.push(TxnItem::Delete(DeleteItem {
                    key: item.key,
                    etag: item.etag,
                    concurrency: item.concurrency,
                }))
            }
            other => return Err(DaprError::unsupported_operation(other)),
        }
    }
    call.scope.transact(&items).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

async fn query(mut call: Call<'_>) -> Reply {
    let body = call.body().await?;
    let store = call.scope.name().to_string();
    let q = Query::parse(&body).map_err(|e| DaprError::query_failed(&store, e))?;
    let c = consistency(call.param("consistency"), StateOp::Query, &store)?;
    let page = call.scope.query(&q, c).await?;
    if page.results.is_empty() {
        return Ok(empty(StatusCode::NO_CONTENT));
    }
    let mut out = Map::new();
    out.insert("results".into(), Value::Array(page.results.into_iter().map(item_json).collect()));
    if let Some(t) = page.token {
        out.insert("token".into(), Value::String(t));
    }
    Ok(json(StatusCode::OK, &Value::Object(out)))
}

/// Ready once serving; `?appid=` must name this node's app id when given.
fn healthz(state: &HttpState, req: &Request<Body>) -> Reply {
    let pairs = query_pairs(req.uri()).map_err(DaprError::malformed)?;
    match pairs.iter().find(|(k, _)| k == "appid") {
        Some((_, id)) if id != state.dapr.app_id() => Err(DaprError::app_id_mismatch()),
        _ => Ok(empty(StatusCode::NO_CONTENT)),
    }
}

/// "Outbound ready": this node can serve state requests (it knows a leader).
async fn outbound(state: &HttpState) -> Reply {
    if state.handle().status().await.leader_id.is_some() {
        Ok(empty(StatusCode::NO_CONTENT))
    } else {
        Err(DaprError::outbound_not_ready())
    }
}

fn metadata(state: &HttpState) -> Response {
    let components: Vec<Value> = state
        .dapr
        .store_names()
        .map(|n| json!({ "name": n, "type": STORE_TYPE, "version": "v1", "capabilities": CAPABILITIES }))
        .collect();
    let body = json!({
        "id": state.dapr.app_id(),
        "runtimeVersion": RUNTIME_VERSION,
        "enabledFeatures": [],
        "components": components,
        "extended": state.dapr.extended(),
    });
    json(StatusCode::OK, &body)
}

async fn put_metadata(state: &HttpState, key: &str, req: Request<Body>) -> Reply {
    let key = match param("key", key) {
        Ok(k) => k,
        Err(resp) => return Ok(resp),
    };
    let body = read_body(req.into_body(), 64 * 1024).await.map_err(DaprError::malformed)?;
    let value = String::from_utf8(body.to_vec()).map_err(|_| DaprError::malformed("metadata value is not UTF-8"))?;
    state.dapr.set_extended(key, value)?;
    Ok(empty(StatusCode::NO_CONTENT))
}
