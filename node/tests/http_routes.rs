//! In-process route tests for the HTTP front door: every request goes straight to
//! `http::respond`, as the server does for each request it reads, so there are no processes
//! and no sockets for HTTP (the node binds only its peer and gRPC listeners, on 127.0.0.1:0).
//! Each test runs one single-node cluster in memory and asserts what a client sees: status
//! codes, headers and bodies, error bodies included (Dapr's `{"errorCode","message"}` with
//! rich `details`, and the native `{"error":{"code","message"}}`). `tests/tests/` checks the
//! same routes end to end through real processes; these pin the exact answers.

use axum::body::Body;
use base64::Engine;
use hyper::http::{HeaderMap, Request};
use serde_json::{json, Value};
use statenode::auth::rules::Policy;
use statenode::auth::{Gate, Token};
use statenode::config::{Config, StoreConfig};
use statenode::dapr::Dapr;
use statenode::http::{respond, HttpState};
use statenode::io::Io;
use statenode::{Listeners, Node, Role};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// The default store's save route.
const S: &str = "/v1.0/state/statestore";
const BULK: &str = "/v1.0/state/statestore/bulk";
const TX: &str = "/v1.0/state/statestore/transaction";
const QUERY: &str = "/v1.0-alpha1/state/statestore/query";

/// One single-node cluster in memory, and the state its HTTP server would share.
struct Fixture {
    node: Node,
    state: HttpState,
    /// The addresses the node advertises: what `/v1/cluster` must report.
    peer: String,
    grpc: String,
}

/// What a client sees of one answer.
struct Resp {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// A single-node in-memory config; tests adjust stores, token and limits.
fn config() -> Config {
    Config { id: 1, memory: true, ..Config::default() }
}

impl Fixture {
    async fn start(mut config: Config) -> Fixture {
        let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (p, g) = (peer.local_addr().unwrap().to_string(), grpc.local_addr().unwrap().to_string());
        config.peer_advertise = Some(p.clone());
        config.grpc_advertise = Some(g.clone());
        // No HTTP listener: the tests hand requests to `respond` themselves.
        let listeners = Listeners::from_tcp(peer, grpc, None);
        let node = Node::start(config.clone(), listeners, Role::Serve, Io::real()).await.expect("node starts");
        wait_for_leader(&node).await;
        let token = Token::with_file(config.api_token.clone(), config.token_file.as_deref()).expect("token file");
        let gate = Arc::new(Gate::new(token, Arc::new(Policy::new(config.authorization.clone()))));
        let dapr = Dapr::new(node.handle(), &config);
        let state = HttpState { dapr, gate, protect_metrics: config.protect_metrics };
        Fixture { node, state, peer: p, grpc: g }
    }

    /// Drops the test's handle first: shutdown waits until nothing else holds the stores.
    async fn stop(self) {
        let Fixture { node, state, .. } = self;
        drop(state);
        node.shutdown().await;
    }

    /// Sends one request through the router and collects the whole answer. Bounded, so a
    /// route that never answers (a watch stream) fails the test instead of hanging it.
    async fn call(&self, method: &str, uri: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let mut req = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Body::from(body.to_vec())).expect("a valid request");
        let resp = tokio::time::timeout(Duration::from_secs(30), respond(&self.state, req))
            .await
            .unwrap_or_else(|_| panic!("{method} {uri}: no answer within 30 s"));
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.expect("a whole body");
        Resp { status, headers, body: body.to_vec() }
    }

    async fn get(&self, uri: &str) -> Resp {
        self.call("GET", uri, &[], b"").await
    }

    async fn post(&self, uri: &str, body: &str) -> Resp {
        self.call("POST", uri, &[], body.as_bytes()).await
    }

    async fn put(&self, uri: &str, body: &[u8]) -> Resp {
        self.call("PUT", uri, &[], body).await
    }

    /// Dapr's save of `items` (a JSON array) to the default store.
    async fn save(&self, items: Value) -> Resp {
        self.post(S, &items.to_string()).await
    }

    /// The etag a Dapr get reports for `key`, which must exist.
    async fn etag(&self, key: &str) -> String {
        let r = self.get(&at(key)).await;
        assert_eq!(r.status, 200, "{key}: {}", r.text());
        r.header("etag").expect("an etag").to_string()
    }
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Waits (bounded) until the node elected itself: state routes need a leader.
async fn wait_for_leader(node: &Node) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.handle().status().await.leader_id.is_none() {
        assert!(Instant::now() < deadline, "no leader elected within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `uri` until it answers `status` (a TTL running out), failing after `within`.
async fn wait_for_status(f: &Fixture, uri: &str, status: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let r = f.get(uri).await;
        if r.status == status {
            return;
        }
        assert!(Instant::now() < deadline, "{uri} still answers {} {}", r.status, r.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Dapr route of `key` in the default store.
fn at(key: &str) -> String {
    format!("{S}/{key}")
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as u64
}

/// Whether an RFC 3339 `ttlExpireTime` (second precision) lies within 5 s of now + `ttl_s`.
fn expires_in(expire: &str, ttl_s: u64) -> bool {
    let want = now_ms() + ttl_s * 1000;
    (0..=10u64).any(|d| statenode::dapr::rfc3339_seconds(want - 5000 + d * 1000) == expire)
}

/// A Dapr error: its status, a JSON body, and its `errorCode`.
#[track_caller]
fn assert_dapr_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"), "{}", r.text());
    assert_eq!(r.json()["errorCode"], code, "{}", r.text());
}

/// A native error: its status, a JSON body, and its `error.code`.
#[track_caller]
fn assert_native_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"), "{}", r.text());
    assert_eq!(r.json()["error"]["code"], code, "{}", r.text());
}

/// The `google.rpc.ResourceInfo` detail Dapr attaches for a store.
fn resource_info(store: &str) -> Value {
    json!({"@type": "type.googleapis.com/google.rpc.ResourceInfo",
           "description": "", "owner": "", "resource_name": store, "resource_type": "state"})
}

/// The `google.rpc.ErrorInfo` detail carrying a rich error's reason.
fn error_info(reason: &str) -> Value {
    json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo",
           "domain": "dapr.io", "metadata": null, "reason": reason})
}

// ---------------------------------------------------------------------------------------
// Dapr state API
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dapr_save_get_delete_honour_etags() {
    let f = Fixture::start(config()).await;
    save_and_get(&f).await;
    etags_on_save(&f).await;
    etags_on_delete(&f).await;
    cleaned_and_escaped_paths(&f).await;
    f.stop().await;
}

/// The raw JSON text of `value` is stored and returned verbatim, with an etag.
async fn save_and_get(f: &Fixture) {
    assert_eq!(f.save(json!([])).await.status, 204);
    let r = f.post(S, r#"[{"key":"planet","value":{"name": "Tatooine", "moons": [1, 2]}}]"#).await;
    assert_eq!((r.status, r.body.len()), (204, 0), "{}", r.text());
    let r = f.get(&at("planet")).await;
    assert_eq!((r.status, r.text().as_str()), (200, r#"{"name": "Tatooine", "moons": [1, 2]}"#));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("etag").expect("an etag").parse::<u64>().unwrap() > 0);
    // A missing key: 204 and no body. An item without a value stores JSON null.
    let r = f.get(&at("never-written")).await;
    assert_eq!((r.status, r.body.len()), (204, 0));
    assert_eq!(f.post(S, r#"[{"key":"key1","vae":"value1"}]"#).await.status, 204);
    assert_eq!(f.get(&at("key1")).await.text(), "null");
    // Field names match case-insensitively, as Go's decoder does; PUT saves like POST.
    let r = f.put(S, br#"[{"KEY":"cased","Value":7,"Options":{"Concurrency":"last-write"}}]"#).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(f.get(&at("cased")).await.text(), "7");
    // Duplicate keys in one save: the last one wins.
    assert_eq!(f.save(json!([{"key": "dup", "value": 1}, {"key": "dup", "value": 2}])).await.status, 204);
    assert_eq!(f.get(&at("dup")).await.text(), "2");
}

/// A wrong etag is a 409 conflict; bulk saves succeed or fail item by item.
async fn etags_on_save(f: &Fixture) {
    let e1 = f.etag("planet").await;
    let r = f.save(json!([{"key": "planet", "value": "x", "etag": "bad-etag"}])).await;
    assert_dapr_error(&r, 409, "ERR_STATE_SAVE");
    let msg = "failed saving state in state store statestore: possible etag mismatch. \
               error from state store: etag does not match key planet";
    assert_eq!(r.json(), json!({"errorCode": "ERR_STATE_SAVE", "message": msg}));
    assert_eq!(f.save(json!([{"key": "planet", "value": "y", "etag": e1}])).await.status, 204);
    let e2 = f.etag("planet").await;
    assert_ne!(e1, e2);
    assert_eq!(f.get(&at("planet")).await.text(), "\"y\"");
    assert_dapr_error(&f.save(json!([{"key": "planet", "value": "z", "etag": e1}])).await, 409, "ERR_STATE_SAVE");
    // An etag never matches a key that does not exist; an empty etag means "no etag".
    assert_dapr_error(&f.save(json!([{"key": "nokey", "value": "z", "etag": "1"}])).await, 409, "ERR_STATE_SAVE");
    assert_eq!(f.save(json!([{"key": "planet", "value": "w", "etag": ""}])).await.status, 204);
    // First-write without an etag: create only.
    let fw = json!([{"key": "fw", "value": 1, "options": {"concurrency": "first-write", "consistency": "strong"}}]);
    assert_eq!(f.save(fw.clone()).await.status, 204);
    assert_dapr_error(&f.save(fw).await, 409, "ERR_STATE_SAVE");
    // One bad etag in a bulk save fails that item alone.
    assert_eq!(f.save(json!([{"key": "b1", "value": 1}, {"key": "b2", "value": 2}])).await.status, 204);
    let (b1, b2) = (f.etag("b1").await, f.etag("b2").await);
    let r =
        f.save(json!([{"key": "b1", "value": 10, "etag": "bad-etag"}, {"key": "b2", "value": 20, "etag": b2}])).await;
    assert_dapr_error(&r, 409, "ERR_STATE_SAVE");
    assert!(r.json()["message"].as_str().unwrap().ends_with("etag does not match for keys [b1]"), "{}", r.text());
    assert_eq!(f.get(&at("b1")).await.text(), "1");
    assert_eq!(f.etag("b1").await, b1);
    assert_eq!(f.get(&at("b2")).await.text(), "20");
}

/// Delete checks If-Match; a missing key without one is not an error.
async fn etags_on_delete(f: &Fixture) {
    let r = f.call("DELETE", &at("b1"), &[("if-match", "BAD ETAG")], b"").await;
    assert_dapr_error(&r, 409, "ERR_STATE_DELETE");
    let msg = "failed deleting state with key b1: possible etag mismatch. \
               error from state store: etag does not match key b1";
    assert_eq!(r.json()["message"], msg);
    let r = f.call("DELETE", &at("ghost"), &[("if-match", "5")], b"").await;
    assert_dapr_error(&r, 409, "ERR_STATE_DELETE");
    let r = f.call("DELETE", &at("ghost"), &[], b"").await;
    assert_eq!((r.status, r.body.len()), (204, 0));
    let b1 = f.etag("b1").await;
    assert_eq!(f.call("DELETE", &at("b1"), &[("if-match", b1.as_str())], b"").await.status, 204);
    assert_eq!(f.get(&at("b1")).await.status, 204);
    // An empty If-Match means "no etag".
    assert_eq!(f.call("DELETE", &at("b2"), &[("if-match", "")], b"").await.status, 204);
    assert_eq!(f.get(&at("b2")).await.status, 204);
}

/// Paths are cleaned like Go's `path.Clean`; keys are unescaped (`+` is a space).
async fn cleaned_and_escaped_paths(f: &Fixture) {
    assert_eq!(f.get("//v1.0//state/statestore/cased/").await.text(), "7");
    assert_eq!(f.get("/v1.0/state/./statestore/../statestore/cased").await.text(), "7");
    assert_eq!(f.save(json!([{"key": "a/b c+d", "value": 1}])).await.status, 204);
    assert_eq!(f.get(&at("a%2Fb+c%2Bd")).await.text(), "1");
    // GET …/bulk reads a key named "bulk"; eventual reads are served locally.
    assert_eq!(f.get(&at("bulk")).await.status, 204);
    assert_eq!(f.get(&format!("{}?consistency=eventual", at("cased"))).await.text(), "7");
    assert_eq!(f.get(&format!("{}?consistency=strong", at("cased"))).await.text(), "7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dapr_bulk_get_transactions_ttl_query_and_stores() {
    let mut c = config();
    c.stores.push(StoreConfig { name: "orders".into(), key_prefix: "name".into() });
    let f = Fixture::start(c).await;
    bulk_get(&f).await;
    transactions(&f).await;
    ttls(&f).await;
    query(&f).await;
    stores(&f).await;
    f.stop().await;
}

/// Bulk get answers in request order: `data` is the stored JSON, else a string (UTF-8) or
/// base64 (binary); a missing key carries its key alone.
async fn bulk_get(f: &Fixture) {
    assert_eq!(f.save(json!([{"key": "k1", "value": "value1"}, {"key": "k2", "value": {"a": 1}}])).await.status, 204);
    assert_eq!(f.put("/v1/kv/plain", b"not json").await.status, 200);
    assert_eq!(f.put("/v1/kv/bin", &[0, 159, 146, 150, 255]).await.status, 200);
    let r = f.post(BULK, r#"{"keys":["k2","missing","k1","plain","bin"],"parallelism":10}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let items = r.json();
    let k2 = f.etag("k2").await;
    assert_eq!(items[0], json!({"key": "k2", "data": {"a": 1}, "etag": k2}));
    assert_eq!(items[1], json!({"key": "missing"}));
    assert_eq!(items[2]["data"], "value1");
    assert_eq!(items[3]["data"], "not json");
    assert_eq!(items[4]["data"], "AJ+Slv8=");
    assert_eq!(items.as_array().unwrap().len(), 5);
    assert_eq!(f.post(BULK, r#"{"keys":[]}"#).await.json(), json!([]));
    assert_eq!(f.post(BULK, "{}").await.json(), json!([]));
}

/// Transactions apply in order, all or nothing.
async fn transactions(f: &Fixture) {
    assert_eq!(f.save(json!([{"key": "t1", "value": 1}])).await.status, 204);
    let ops = json!({"operations": [
        {"operation": "delete", "request": {"key": "t1"}},
        {"operation": "upsert", "request": {"key": "t2", "value": "x"}},
        {"operation": "delete", "request": {"key": "t2"}},
        {"operation": "upsert", "request": {"key": "t3", "value": "value3"}}]});
    let r = f.post(TX, &ops.to_string()).await;
    assert_eq!((r.status, r.body.len()), (204, 0), "{}", r.text());
    assert_eq!(f.get(&at("t1")).await.status, 204);
    assert_eq!(f.get(&at("t2")).await.status, 204);
    assert_eq!(f.get(&at("t3")).await.text(), "\"value3\"");
    // A stale etag anywhere: nothing applies, and Dapr reports it as a 500.
    let e3 = f.etag("t3").await;
    let ops = json!({"operations": [
        {"operation": "upsert", "request": {"key": "t4", "value": 4}},
        {"operation": "upsert", "request": {"key": "t3", "value": "new", "etag": "999999"}}]});
    let r = f.post(TX, &ops.to_string()).await;
    assert_dapr_error(&r, 500, "ERR_STATE_TRANSACTION");
    assert!(r.json()["message"].as_str().unwrap().starts_with("error while executing state transaction: "));
    assert_eq!(f.get(&at("t4")).await.status, 204);
    assert_eq!(f.get(&at("t3")).await.text(), "\"value3\"");
    let ops = json!({"operations": [{"operation": "upsert", "request": {"key": "t3", "value": "new", "etag": e3}}]});
    assert_eq!(f.post(TX, &ops.to_string()).await.status, 204);
    assert_eq!(f.get(&at("t3")).await.text(), "\"new\"");
    assert_eq!(f.post(TX, r#"{"operations":[]}"#).await.status, 204);
}

/// `ttlInSeconds`, in an item or the query string, sets an expiry reported as
/// `metadata.ttlExpireTime`; saving again without one clears it; a short one runs out.
async fn ttls(f: &Fixture) {
    let r = f.save(json!([{"key": "ttl1", "value": "v", "metadata": {"ttlInSeconds": "3600"}}])).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = f.get(&at("ttl1")).await;
    let expire = r.header("metadata.ttlexpiretime").expect("a ttlExpireTime header").to_string();
    assert!(expires_in(&expire, 3600), "{expire}");
    let r = f.post(BULK, r#"{"keys":["ttl1"]}"#).await;
    assert_eq!(r.json()[0]["metadata"], json!({"ttlExpireTime": expire}));
    let r = f.post(&format!("{S}?metadata.ttlInSeconds=3600"), r#"[{"key":"ttl2","value":1}]"#).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(f.get(&at("ttl2")).await.header("metadata.ttlexpiretime").is_some());
    assert_eq!(f.save(json!([{"key": "ttl2", "value": 2}])).await.status, 204);
    assert!(f.get(&at("ttl2")).await.header("metadata.ttlexpiretime").is_none());
    assert_eq!(f.save(json!([{"key": "ttl2", "value": 3, "metadata": {"ttlInSeconds": "-1"}}])).await.status, 204);
    assert!(f.get(&at("ttl2")).await.header("metadata.ttlexpiretime").is_none());
    assert_eq!(f.save(json!([{"key": "ttl3", "value": 1, "metadata": {"ttlInSeconds": "1"}}])).await.status, 204);
    wait_for_status(f, &at("ttl3"), 204, Duration::from_secs(5)).await;
}

/// The alpha query API: filter, sort and page with a token; nothing found is a bare 204.
async fn query(f: &Fixture) {
    let people = json!([
        {"key": "p1", "value": {"person": {"org": "Dev Ops", "id": 1036}, "state": "WA"}},
        {"key": "p2", "value": {"person": {"org": "Hardware", "id": 1028}, "state": "OR"}},
        {"key": "p3", "value": {"person": {"org": "Finance", "id": 1071}, "state": "CA"}},
        {"key": "p4", "value": {"person": {"org": "Dev Ops", "id": 1042}, "state": "WA"}}]);
    assert_eq!(f.save(people).await.status, 204);
    let q = json!({"filter": {"AND": [{"IN": {"state": ["WA", "CA"]}}, {"GT": {"person.id": 1030}}]},
                   "sort": [{"key": "person.id", "order": "DESC"}], "page": {"limit": 2}});
    let r = f.post(QUERY, &q.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.json();
    assert_eq!(page["results"].as_array().unwrap().len(), 2);
    assert_eq!(page["results"][0]["key"], "p3");
    assert_eq!(page["results"][1]["key"], "p4");
    assert_eq!(page["results"][0]["data"]["person"]["id"], 1071);
    assert_eq!(page["results"][0]["etag"], f.etag("p3").await);
    assert!(page["token"].is_string(), "{page}");
    let mut next = q.clone();
    next["page"]["token"] = page["token"].clone();
    let page = f.post(QUERY, &next.to_string()).await.json();
    assert_eq!(page["results"].as_array().unwrap().len(), 1);
    assert_eq!(page["results"][0]["key"], "p1");
    assert!(page.get("token").is_none(), "{page}");
    let r = f.post(QUERY, r#"{"filter":{"EQ":{"state":"NOWHERE"}}}"#).await;
    assert_eq!((r.status, r.body.len()), (204, 0));
}

/// Every store but the default one is a namespace of its own; the default store shares its
/// keys with the native API, which sees the others' keys only as raw (base64) bytes.
async fn stores(f: &Fixture) {
    assert_eq!(f.save(json!([{"key": "shared", "value": 1}])).await.status, 204);
    assert_eq!(f.post("/v1.0/state/orders", r#"[{"key":"shared","value":2}]"#).await.status, 204);
    assert_eq!(f.get(&at("shared")).await.text(), "1");
    assert_eq!(f.get("/v1.0/state/orders/shared").await.text(), "2");
    assert_eq!(f.get("/v1/kv/shared").await.text(), "1");
    let r = f.post("/v1.0-alpha1/state/orders/query", "{}").await;
    let results = r.json()["results"].clone();
    assert_eq!(results.as_array().map(Vec::len), Some(1), "{}", r.text());
    assert_eq!((&results[0]["key"], &results[0]["data"]), (&json!("shared"), &json!(2)));
    let page = f.get("/v1/kv?prefix=").await.json();
    let raw: Vec<&Value> = page["kvs"].as_array().unwrap().iter().filter_map(|kv| kv.get("key_base64")).collect();
    let orders_key = base64::engine::general_purpose::STANDARD.encode(b"\xFForders\xFForders||shared");
    assert_eq!(raw, [&json!(orders_key)], "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dapr_bad_saves_and_reads_get_daprs_error_bodies() {
    let mut c = config();
    c.limits.max_value_bytes = 1024;
    c.limits.max_request_bytes = 4096;
    let f = Fixture::start(c).await;
    malformed_saves(&f).await;
    illegal_keys_and_unknown_stores(&f).await;
    bad_options_and_sizes(&f).await;
    unmatched_and_badly_escaped_paths(&f).await;
    f.stop().await;
}

/// Malformed save bodies: 400 ERR_MALFORMED_REQUEST with Go's decoder messages, and
/// nothing written.
async fn malformed_saves(f: &Fixture) {
    let exact = [
        ("", "EOF"),
        ("{}", "json: cannot unmarshal into Go value of type []state.SetRequest"),
        ("[1]", "json: cannot unmarshal number into Go value of type state.SetRequest"),
        ("[{}]", "\"key\" is a required field"),
        (r#"[{"key":"","value":1}]"#, "\"key\" is a required field"),
        (
            r#"[{"key":42,"value":"v"}]"#,
            "json: cannot unmarshal number into Go struct field SetRequest.key of type string",
        ),
        (
            r#"[{"key":"k","value":1,"etag":123}]"#,
            "json: cannot unmarshal number into Go struct field SetRequest.etag of type string",
        ),
        (
            r#"[{"key":"k","value":1,"metadata":{"ttlInSeconds":5}}]"#,
            "json: cannot unmarshal metadata into Go value of type map[string]string",
        ),
    ];
    for (body, message) in exact {
        let r = f.post(S, body).await;
        assert_dapr_error(&r, 400, "ERR_MALFORMED_REQUEST");
        assert_eq!(r.json(), json!({"errorCode": "ERR_MALFORMED_REQUEST", "message": message}), "{body:?}");
    }
    let syntax = ["foobar", "[", "\u{0}\u{1}", r#"[{"ey":"k","value":"v"}]"#, r#"[{"key":"k","value":"v"},]"#];
    for body in syntax {
        assert_dapr_error(&f.post(S, body).await, 400, "ERR_MALFORMED_REQUEST");
    }
    assert_eq!(f.get(&at("k")).await.status, 204);
}

/// Keys with `||` and unknown stores are rich errors: `details` name the key and store.
async fn illegal_keys_and_unknown_stores(f: &Fixture) {
    let r = f.save(json!([{"key": "ke||y1", "value": "value1"}])).await;
    assert_dapr_error(&r, 400, "ERR_MALFORMED_REQUEST");
    let msg = "input key/keyPrefix 'ke||y1' can't contain '||'";
    let bad_request = json!({"@type": "type.googleapis.com/google.rpc.BadRequest",
                             "field_violations": [{"field": "ke||y1", "description": msg}]});
    let details = json!([bad_request, resource_info("statestore"), error_info("DAPR_STATE_ILLEGAL_KEY")]);
    assert_eq!(r.json(), json!({"errorCode": "ERR_MALFORMED_REQUEST", "message": msg, "details": details}));
    let r = f.get(&at("x%7C%7Cy")).await;
    assert_dapr_error(&r, 400, "ERR_MALFORMED_REQUEST");
    assert_eq!(r.json()["details"][0]["field_violations"][0]["field"], "x||y");
    // The store is resolved before the body is read.
    let r = f.post("/v1.0/state/nostore", "not even json").await;
    assert_dapr_error(&r, 400, "ERR_STATE_STORE_NOT_FOUND");
    let details = json!([resource_info("nostore"), error_info("DAPR_STATE_NOT_FOUND")]);
    let want = json!({"errorCode": "ERR_STATE_STORE_NOT_FOUND", "message": "state store nostore is not found",
                      "details": details});
    assert_eq!(r.json(), want);
    for (method, uri) in [
        ("GET", "/v1.0/state/nostore/k"),
        ("DELETE", "/v1.0/state/nostore/k"),
        ("POST", "/v1.0/state/nostore/bulk"),
        ("POST", "/v1.0/state/nostore/transaction"),
        ("POST", "/v1.0-alpha1/state/nostore/query"),
    ] {
        assert_dapr_error(&f.call(method, uri, &[], b"{}").await, 400, "ERR_STATE_STORE_NOT_FOUND");
    }
}

/// Bad options and limits: the status follows the cause, the code the operation.
async fn bad_options_and_sizes(f: &Fixture) {
    let save_failed = |detail: &str| format!("failed saving state in state store statestore: {detail}");
    let r = f.save(json!([{"key": "k", "value": 1, "options": {"concurrency": "sometimes"}}])).await;
    assert_dapr_error(&r, 500, "ERR_STATE_SAVE");
    assert_eq!(r.json()["message"], save_failed("unrecognized concurrency model 'sometimes'"));
    let r = f.save(json!([{"key": "k", "value": 1, "options": {"consistency": "sometimes"}}])).await;
    assert_dapr_error(&r, 400, "ERR_STATE_SAVE");
    assert_eq!(r.json()["message"], save_failed("invalid argument: unrecognized consistency model 'sometimes'"));
    let r = f.save(json!([{"key": "k", "value": 1, "metadata": {"ttlInSeconds": "foo"}}])).await;
    assert_dapr_error(&r, 400, "ERR_STATE_SAVE");
    assert_eq!(r.json()["message"], save_failed("invalid argument: invalid value for ttlInSeconds: \"foo\""));
    let r = f.get(&format!("{}?consistency=bogus", at("k"))).await;
    assert_dapr_error(&r, 400, "ERR_STATE_GET");
    // Over the limits: a value (its raw JSON text counts), a key, a whole body.
    let r = f.save(json!([{"key": "big", "value": "x".repeat(2000)}])).await;
    assert_dapr_error(&r, 413, "ERR_STATE_SAVE");
    assert_eq!(r.json()["message"], save_failed("too large: value is 2002 bytes; the limit is 1024"));
    let r = f.save(json!([{"key": "k".repeat(5000), "value": 1}])).await;
    assert_dapr_error(&r, 413, "ERR_STATE_SAVE");
    assert_eq!(r.json()["message"], save_failed("too large: key is 5000 bytes; the limit is 4096"));
    // The body may exceed max_request_bytes by 64 KiB of framing.
    let r = f.post(S, &format!(r#"[{{"key":"huge","value":"{}"}}]"#, "z".repeat(70_000))).await;
    assert_dapr_error(&r, 413, "ERR_MALFORMED_REQUEST");
    assert_eq!(r.json()["message"], "request body is larger than the limit of 69632 bytes");
    for key in ["k", "big", "huge"] {
        assert_eq!(f.get(&at(key)).await.status, 204, "{key} was written");
    }
}

/// Paths daprd does not serve fall through to service invocation, which needs an app id:
/// 404 ERR_DIRECT_INVOKE. A parameter that does not unescape is a plain-text 400.
async fn unmatched_and_badly_escaped_paths(f: &Fixture) {
    let r = f.get(&at("a/b")).await;
    assert_eq!(r.status, 404);
    let msg = "failed getting app id either from the URL path or the header dapr-app-id";
    assert_eq!(r.json(), json!({"errorCode": "ERR_DIRECT_INVOKE", "message": msg}));
    for (method, uri) in [
        ("PATCH", S),
        ("GET", S),
        ("DELETE", S),
        ("GET", QUERY),
        ("GET", "/v1.0/nothing"),
        ("PUT", "/v1.0/metadata"),
        ("POST", "/v1.0-alpha1/state/statestore/nothing"),
    ] {
        assert_dapr_error(&f.call(method, uri, &[], b"[]").await, 404, "ERR_DIRECT_INVOKE");
    }
    let cases = [
        (at("bad%zzescape"), "failed to unescape request parameter \"key\". Error: invalid URL escape \"%zz\""),
        (at("%FF%FE"), "failed to unescape request parameter \"key\". Error: not UTF-8"),
    ];
    for (uri, message) in cases {
        let r = f.get(&uri).await;
        assert_eq!((r.status, r.text().as_str()), (400, message), "{uri}");
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    }
    let r = f.post("/v1.0/state/bad%zz", "[]").await;
    assert_eq!(r.status, 400);
    assert!(r.text().starts_with("failed to unescape request parameter \"storeName\""), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dapr_bad_bulk_gets_transactions_and_queries() {
    let mut c = config();
    c.limits.max_batch_ops = 4;
    c.limits.max_bulk_read_keys = 4;
    let f = Fixture::start(c).await;
    bad_bulk_gets(&f).await;
    too_many_keys_in_a_bulk_read(&f).await;
    bad_transactions(&f).await;
    bad_queries(&f).await;
    f.stop().await;
}

async fn bad_bulk_gets(f: &Fixture) {
    let r = f.post(BULK, "").await;
    assert_dapr_error(&r, 400, "ERR_MALFORMED_REQUEST");
    let want = json!({"errorCode": "ERR_MALFORMED_REQUEST", "message": "failed deserializing HTTP body: EOF"});
    assert_eq!(r.json(), want);
    for body in ["[", r#"{"keys":"k1"}"#, r#"{"keys":[1]}"#] {
        assert_dapr_error(&f.post(BULK, body).await, 400, "ERR_MALFORMED_REQUEST");
    }
    let r = f.post(BULK, r#"{"keys":["ok","a||b"]}"#).await;
    assert_dapr_error(&r, 400, "ERR_MALFORMED_REQUEST");
    assert_eq!(r.json()["details"][2], error_info("DAPR_STATE_ILLEGAL_KEY"));
    let r = f.post(&format!("{BULK}?consistency=bogus"), r#"{"keys":["k"]}"#).await;
    assert_dapr_error(&r, 400, "ERR_STATE_BULK_GET");
}

/// More keys than `max_bulk_read_keys` in one bulk read (4 here): refused whole.
async fn too_many_keys_in_a_bulk_read(f: &Fixture) {
    let keys: Vec<String> = (0..5).map(|i| format!("b{i}")).collect();
    let r = f.post(BULK, &json!({ "keys": keys }).to_string()).await;
    assert_dapr_error(&r, 413, "ERR_STATE_BULK_GET");
    assert!(r.text().contains("5 keys in one read; the limit is 4"), "{}", r.text());
    let r = f.post(BULK, &json!({ "keys": &keys[..4] }).to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

async fn bad_transactions(f: &Fixture) {
    let r = f.post(TX, r#"{"operations":[{"operation":"merge","request":{"key":"t"}}]}"#).await;
    assert_dapr_error(&r, 400, "ERR_NOT_SUPPORTED_STATE_OPERATION");
    let want =
        json!({"errorCode": "ERR_NOT_SUPPORTED_STATE_OPERATION", "message": "operation type merge not supported"});
    assert_eq!(r.json(), want);
    // One more operation than the configured limit: refused whole.
    let ops: Vec<Value> =
        (0..5).map(|i| json!({"operation": "upsert", "request": {"key": format!("m{i}"), "value": i}})).collect();
    let r = f.post(TX, &json!({ "operations": ops }).to_string()).await;
    assert_dapr_error(&r, 400, "ERR_STATE_STORE_TOO_MANY_TRANSACTIONS");
    let msg = "the transaction contains 5 operations, which is more than what the state store supports: 4";
    let details = json!([resource_info("statestore"), error_info("DAPR_STATE_TOO_MANY_TRANSACTIONS")]);
    assert_eq!(
        r.json(),
        json!({"errorCode": "ERR_STATE_STORE_TOO_MANY_TRANSACTIONS", "message": msg, "details": details})
    );
    assert_eq!(f.get(&at("m0")).await.status, 204);
    let r = f.post(TX, r#"{"operations":[{"operation":"upsert"}]}"#).await;
    assert_eq!(r.json()["message"], "failed deserializing HTTP body: operation without a request");
    for body in [
        "",
        "[",
        r#"{"operations":"x"}"#,
        r#"{"metadata":5,"operations":[]}"#,
        r#"{"operations":[{"operation":"upsert","request":{"key":"t","etag":7}}]}"#,
        r#"{"operations":[{"operation":"upsert","request":{"value":1}}]}"#,
        r#"{"operations":[{"operation":"upsert","request":{"key":"a||b","value":1}}]}"#,
    ] {
        assert_dapr_error(&f.post(TX, body).await, 400, "ERR_MALFORMED_REQUEST");
    }
    // A bad TTL inside a transaction fails the transaction, as Dapr reports it.
    let bad_ttl = r#"{"operations":[{"operation":"upsert","request":{"key":"t","value":1,
                     "metadata":{"ttlInSeconds":"soon"}}}]}"#;
    assert_dapr_error(&f.post(TX, bad_ttl).await, 500, "ERR_STATE_TRANSACTION");
    assert_eq!(f.get(&at("t")).await.status, 204);
}

async fn bad_queries(f: &Fixture) {
    let r = f.post(QUERY, r#"{"filter":{"LIKE":{"state":"W%"}}}"#).await;
    assert_dapr_error(&r, 500, "ERR_STATE_QUERY");
    let msg = "state store statestore query failed: unsupported filter operation \"LIKE\"";
    let details = json!([resource_info("statestore"), error_info("DAPR_STATE_QUERY_FAILED")]);
    assert_eq!(r.json(), json!({"errorCode": "ERR_STATE_QUERY", "message": msg, "details": details}));
    for body in ["nope", "[]", r#"{"page":{"token":"x"}}"#, r#"{"select":1}"#] {
        assert_dapr_error(&f.post(QUERY, body).await, 500, "ERR_STATE_QUERY");
    }
    assert_dapr_error(&f.post(&format!("{QUERY}?consistency=bogus"), "{}").await, 400, "ERR_STATE_QUERY");
}

// ---------------------------------------------------------------------------------------
// Native API
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_kv_put_get_delete_list_and_ttl() {
    let f = Fixture::start(config()).await;
    native_put_get_delete(&f).await;
    native_conditions(&f).await;
    native_ttl(&f).await;
    native_list(&f).await;
    f.stop().await;
}

/// Put answers the new revision; get returns the raw bytes with revision headers.
async fn native_put_get_delete(f: &Fixture) {
    let r = f.put("/v1/kv/cfg/db/url", b"postgres://x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let put = r.json();
    let rev = put["revision"].as_u64().expect("a revision");
    assert_eq!(put["create_revision"], rev);
    assert_eq!(put["expires_at_ms"], Value::Null);
    let r = f.get("/v1/kv/cfg/db/url").await;
    assert_eq!((r.status, r.text().as_str()), (200, "postgres://x"));
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    let rev_s = rev.to_string();
    for name in ["etag", "x-statenode-revision", "x-statenode-create-revision"] {
        assert_eq!(r.header(name), Some(rev_s.as_str()), "{name}");
    }
    assert_eq!(r.header("x-statenode-version"), put["version"].as_str());
    assert!(r.header("x-statenode-expires-at-ms").is_none());
    // Escaped slashes name the same key; stale reads are served locally.
    assert_eq!(f.get("/v1/kv/cfg%2Fdb%2Furl?consistency=stale").await.text(), "postgres://x");
    // An update keeps the create revision.
    let r = f.put("/v1/kv/cfg/db/url", b"postgres://y").await;
    assert_eq!(r.json()["create_revision"], rev);
    assert!(r.json()["revision"].as_u64().unwrap() > rev);
    // Keys come from the raw path: "." and ".." segments are part of the key.
    assert_eq!(f.put("/v1/kv/dots/../x", b"dotted").await.status, 200);
    assert_eq!(f.get("/v1/kv/dots%2F..%2Fx").await.text(), "dotted");
    assert_eq!(f.get("/v1/kv/x").await.status, 404);
    // Binary values round-trip.
    assert_eq!(f.put("/v1/kv/bin", &[0, 159, 146, 150, 255]).await.status, 200);
    assert_eq!(f.get("/v1/kv/bin").await.body, [0, 159, 146, 150, 255]);
    // Delete says whether the key existed.
    let r = f.call("DELETE", "/v1/kv/cfg/db/url", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["deleted"], true);
    assert!(r.json()["revision"].as_u64().unwrap() > rev);
    assert_eq!(f.call("DELETE", "/v1/kv/cfg/db/url", &[], b"").await.json()["deleted"], false);
    let r = f.get("/v1/kv/cfg/db/url").await;
    assert_native_error(&r, 404, "not_found");
    assert_eq!(r.json(), json!({"error": {"code": "not_found", "message": "not found: key \"cfg/db/url\""}}));
}

/// If-Match names the revision a write expects (quotes allowed); If-None-Match: * creates.
async fn native_conditions(f: &Fixture) {
    let rev = f.put("/v1/kv/cond", b"v1").await.json()["revision"].as_u64().unwrap();
    let r = f.call("PUT", "/v1/kv/cond", &[("if-match", "999999")], b"v2").await;
    assert_native_error(&r, 412, "condition_failed");
    assert_eq!(r.json()["error"]["message"], format!("condition failed: the key is at revision {rev}"));
    let quoted = format!("\"{rev}\"");
    let r = f.call("PUT", "/v1/kv/cond", &[("if-match", quoted.as_str())], b"v2").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rev2 = r.json()["revision"].as_u64().unwrap().to_string();
    assert_native_error(&f.call("PUT", "/v1/kv/cond", &[("if-none-match", "*")], b"v3").await, 412, "condition_failed");
    assert_eq!(f.get("/v1/kv/cond").await.text(), "v2");
    let r = f.call("PUT", "/v1/kv/nothing-here", &[("if-match", "5")], b"v").await;
    assert_native_error(&r, 412, "condition_failed");
    assert_eq!(r.json()["error"]["message"], "condition failed: the key does not exist");
    assert_eq!(f.call("PUT", "/v1/kv/fresh", &[("if-none-match", "*")], b"v").await.status, 200);
    let r = f.call("DELETE", "/v1/kv/cond", &[("if-match", "999999")], b"").await;
    assert_native_error(&r, 412, "condition_failed");
    let r = f.call("DELETE", "/v1/kv/cond", &[("if-match", rev2.as_str())], b"").await;
    assert_eq!(r.json()["deleted"], true, "{}", r.text());
}

/// `?ttl=` sets an expiry, reported in the answer and a header; a short one runs out.
async fn native_ttl(f: &Fixture) {
    let r = f.put("/v1/kv/session?ttl=1h", b"x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let expires = r.json()["expires_at_ms"].as_u64().expect("an expiry");
    assert!(expires.abs_diff(now_ms() + 3_600_000) < 5_000, "{expires}");
    let r = f.get("/v1/kv/session").await;
    assert_eq!(r.header("x-statenode-expires-at-ms"), Some(expires.to_string().as_str()));
    assert_eq!(f.put("/v1/kv/short?ttl=500ms", b"x").await.status, 200);
    wait_for_status(f, "/v1/kv/short", 404, Duration::from_secs(5)).await;
}

/// Listing pages through a prefix in key order with a cursor.
async fn native_list(f: &Fixture) {
    for i in 0..25 {
        assert_eq!(f.put(&format!("/v1/kv/list/{i:02}"), format!("v{i}").as_bytes()).await.status, 200);
    }
    let (mut seen, mut cursor) = (Vec::new(), String::new());
    loop {
        let r = f.get(&format!("/v1/kv?prefix=list/&limit=10&cursor={cursor}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.json();
        assert!(page["revision"].as_u64().unwrap() > 0);
        seen.extend(page["kvs"].as_array().unwrap().iter().map(|kv| kv["key"].as_str().unwrap().to_string()));
        assert!(seen.len() <= 25, "the cursor went back: {seen:?}");
        match page.get("next_cursor").and_then(Value::as_str) {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, (0..25).map(|i| format!("list/{i:02}")).collect::<Vec<_>>());
    let page = f.get("/v1/kv?prefix=list/&keys_only=true&limit=1").await.json();
    let kv = &page["kvs"][0];
    assert_eq!((&kv["key"], kv.get("value")), (&json!("list/00"), None));
    assert!(kv["version"].is_string() && kv["revision"].is_u64() && kv["create_revision"].is_u64());
    assert_eq!(page["next_cursor"], "list/00");
    // Non-UTF-8 values are listed as base64.
    let page = f.get("/v1/kv?prefix=bin").await.json();
    assert_eq!(page["kvs"][0]["value_base64"], "AJ+Slv8=");
}

/// At most `max_watchers` watches at once: one more is refused (429 over HTTP) until one ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_and_grpc_connections_are_bounded() {
    let mut c = config();
    c.limits.max_watchers = 2;
    c.limits.max_grpc_connections = 2;
    c.limits.max_peer_connections = 2;
    let f = Fixture::start(c).await;

    // Peer-port connections: two silent ones held open, a third closed at once.
    let held = [
        tokio::net::TcpStream::connect(&f.peer).await.unwrap(),
        tokio::net::TcpStream::connect(&f.peer).await.unwrap(),
    ];
    let mut third = tokio::net::TcpStream::connect(&f.peer).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut third, &mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "a third peer connection was kept: {read:?}");
    drop(held);

    let h = f.node.handle();
    let first = h.watch("a".into(), None).expect("first watch");
    let _second = h.watch("b".into(), None).expect("second watch");
    let e = h.watch("c".into(), None).err().expect("a third watch is refused");
    assert!(matches!(e, statenode::error::Error::Exhausted(_)), "{e:?}");
    let r = f.get("/v1/watch?prefix=x").await;
    assert_eq!((r.status, r.json()["error"]["code"].clone()), (429, json!("exhausted")), "{}", r.text());
    drop(first);
    drop(h.watch("d".into(), None).expect("room again once a watch ended"));

    // Client gRPC connections: two open, a third closed at once, room again after one ends.
    let client = |deadline| {
        let opts = statenode_client::Options {
            deadline,
            attempt_timeout: Duration::from_secs(1),
            ..statenode_client::Options::default()
        };
        statenode_client::Client::new(&[&f.grpc], opts).unwrap()
    };
    let (a, b) = (client(Duration::from_secs(5)), client(Duration::from_secs(5)));
    a.status().await.expect("first connection");
    b.status().await.expect("second connection");
    assert!(client(Duration::from_secs(2)).status().await.is_err(), "a third connection was served");
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(10);
    while client(Duration::from_secs(2)).status().await.is_err() {
        assert!(Instant::now() < deadline, "no room after a connection closed");
    }
    drop(b);
    f.stop().await;
}

/// With TLS, at most `tls_max_handshakes` handshakes at once per port: silent connections
/// hold their places, one more is closed at once, and a place frees when one goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshakes_in_progress_are_bounded() {
    use statenode_client::tls as ctls;
    use tokio::io::AsyncReadExt;
    let certs = tempfile::tempdir().unwrap();
    statenode::tls::create_ca(certs.path(), false).unwrap();
    statenode::tls::create_node(certs.path(), &["127.0.0.1".into()], false).unwrap();
    let mut c = config();
    c.certs_dir = Some(certs.path().to_path_buf());
    c.limits.tls_max_handshakes = 2;
    let f = Fixture::start(c).await;
    // Closed at once: the read ends (EOF or reset) within a second; held: it waits.
    async fn closed_at_once(s: &mut tokio::net::TcpStream) -> bool {
        let mut b = [0u8; 16];
        tokio::time::timeout(Duration::from_secs(1), s.read(&mut b)).await.is_ok_and(|r| r.map_or(true, |n| n == 0))
    }
    let mut silent1 = tokio::net::TcpStream::connect(&f.grpc).await.unwrap();
    let mut silent2 = tokio::net::TcpStream::connect(&f.grpc).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = tokio::net::TcpStream::connect(&f.grpc).await.unwrap();
    assert!(closed_at_once(&mut third).await, "a third handshake at once was let wait");
    assert!(!closed_at_once(&mut silent1).await && !closed_at_once(&mut silent2).await, "a held place was closed");
    drop(silent1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let config = ctls::client_config(certs.path(), None).unwrap();
    let tcp = tokio::net::TcpStream::connect(&f.grpc).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.expect("a handshake once a place is free");
    drop(silent2);
    f.stop().await;
}

/// Replies within `max_response_bytes`: a list page ends early (at least one key, and a
/// cursor that goes on), and a bulk read whose values exceed it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_stay_within_the_response_byte_limit() {
    let mut c = config();
    c.limits.max_key_bytes = 64;
    c.limits.max_value_bytes = 1000;
    c.limits.max_response_bytes = 2500;
    let f = Fixture::start(c).await;
    let value = vec![b'x'; 1000];
    for i in 0..5 {
        assert_eq!(f.put(&format!("/v1/kv/big/{i}"), &value).await.status, 200);
    }
    let (mut pages, mut seen, mut cursor) = (0, 0, String::new());
    loop {
        let r = f.get(&format!("/v1/kv?prefix=big/&limit=100&cursor={cursor}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.json();
        let n = page["kvs"].as_array().unwrap().len();
        assert!((1..=2).contains(&n), "a page of {n} values of 1000 bytes within 2500 bytes");
        (pages, seen) = (pages + 1, seen + n);
        match page.get("next_cursor").and_then(Value::as_str) {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(seen, 5);
    let keys: Vec<String> = (0..3).map(|i| format!("big/{i}")).collect();
    let r = f.post(BULK, &json!({ "keys": keys }).to_string()).await;
    assert_dapr_error(&r, 413, "ERR_STATE_BULK_GET");
    let r = f.post(BULK, &json!({ "keys": &keys[..2] }).to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A query: without a page limit, results over the limit are refused (to be paged); with
    // one, each page stays within it and the token goes on.
    assert_dapr_error(&f.post(QUERY, r#"{"filter":{}}"#).await, 413, "ERR_STATE_QUERY");
    let (mut token, mut seen) = (String::new(), 0);
    for _ in 0..10 {
        let r = f.post(QUERY, &json!({"page": {"limit": 10, "token": token}}).to_string()).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.json();
        let n = page["results"].as_array().unwrap().len();
        assert!((1..=2).contains(&n), "a query page of {n} values of 1000 bytes within 2500 bytes");
        seen += n;
        match page.get("token").and_then(Value::as_str) {
            Some(t) => token = t.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, 5);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_bad_requests_get_json_errors() {
    let mut c = config();
    c.limits.max_value_bytes = 1024;
    let f = Fixture::start(c).await;
    native_invalid_arguments(&f).await;
    native_limits(&f).await;
    native_methods_and_unmatched_paths(&f).await;
    f.stop().await;
}

/// Bad parameters and headers: 400 invalid_argument, with a message that names the input.
async fn native_invalid_arguments(f: &Fixture) {
    let bad_ttl = |t: &str| format!("invalid argument: bad ttl \"{t}\": use e.g. 30, 30s, 500ms, 5m, 2h");
    let cases = [
        ("GET", "/v1/kv/bad%zz", None, "invalid argument: invalid URL escape \"%zz\"".to_string()),
        ("GET", "/v1/kv/", None, "invalid argument: key must not be empty".into()),
        (
            "GET",
            "/v1/kv/x?consistency=sometimes",
            None,
            "invalid argument: consistency must be linearizable or stale, not \"sometimes\"".into(),
        ),
        ("PUT", "/v1/kv/x?ttl=soon", None, bad_ttl("soon")),
        ("PUT", "/v1/kv/x?ttl=0", None, bad_ttl("0")),
        ("PUT", "/v1/kv/x?ttl=10d", None, bad_ttl("10d")),
        (
            "PUT",
            "/v1/kv/x",
            Some(("if-match", "abc")),
            "invalid argument: If-Match must be a revision, not \"abc\"".into(),
        ),
        (
            "DELETE",
            "/v1/kv/x",
            Some(("if-match", "W/1")),
            "invalid argument: If-Match must be a revision, not \"W/1\"".into(),
        ),
        ("GET", "/v1/kv?limit=many", None, "invalid argument: bad limit \"many\"".into()),
        ("GET", "/v1/kv?prefix=%FF", None, "invalid argument: query parameter \"%FF\" is not UTF-8".into()),
        ("GET", "/v1/kv?prefix=%F", None, "invalid argument: invalid URL escape \"%F\"".into()),
        ("GET", "/v1/watch?from_revision=soon", None, "invalid argument: bad from_revision \"soon\"".into()),
        ("GET", "/v1/watch", Some(("last-event-id", "x.y")), "invalid argument: bad Last-Event-ID \"x.y\"".into()),
    ];
    for (method, uri, header, message) in cases {
        let headers: Vec<(&str, &str)> = header.into_iter().collect();
        let r = f.call(method, uri, &headers, b"v").await;
        assert_native_error(&r, 400, "invalid_argument");
        assert_eq!(r.json()["error"]["message"], message, "{method} {uri}");
    }
    let both = [("if-match", "1"), ("if-none-match", "*")];
    let r = f.call("PUT", "/v1/kv/x", &both, b"v").await;
    assert_native_error(&r, 400, "invalid_argument");
    assert_eq!(r.json()["error"]["message"], "invalid argument: If-Match and If-None-Match together");
    assert_eq!(f.get("/v1/kv/x").await.status, 404, "a refused put was written");
}

/// Keys, values and prefixes over the limits: 413 too_large; a value at the limit is fine.
async fn native_limits(f: &Fixture) {
    let r = f.get(&format!("/v1/kv/{}", "k".repeat(5000))).await;
    assert_native_error(&r, 413, "too_large");
    assert_eq!(r.json()["error"]["message"], "too large: key is 5000 bytes; the limit is 4096");
    let r = f.put("/v1/kv/big", &[b'v'; 1025]).await;
    assert_native_error(&r, 413, "too_large");
    assert_eq!(r.json()["error"]["message"], "too large: request body is larger than the limit of 1024 bytes");
    assert_eq!(f.get("/v1/kv/big").await.status, 404);
    assert_eq!(f.put("/v1/kv/big", &[b'v'; 1024]).await.status, 200);
    assert_native_error(&f.get(&format!("/v1/kv?prefix={}", "p".repeat(5000))).await, 413, "too_large");
}

/// A known path with the wrong method is 405; an unknown path is 404, both as JSON.
async fn native_methods_and_unmatched_paths(f: &Fixture) {
    for (method, uri) in [
        ("POST", "/v1/kv/x"),
        ("PATCH", "/v1/kv/x"),
        ("PUT", "/v1/kv"),
        ("POST", "/v1/watch"),
        ("DELETE", "/v1/cluster"),
        ("POST", "/v1/cluster/members"),
        ("GET", "/v1/cluster/join"),
        ("GET", "/v1/cluster/leave"),
        ("PUT", "/livez"),
        ("POST", "/readyz"),
        ("DELETE", "/metrics"),
    ] {
        let r = f.call(method, uri, &[], b"").await;
        assert_eq!(r.status, 405, "{method} {uri}");
        let want = json!({"error": {"code": "method_not_allowed", "message": "method not allowed"}});
        assert_eq!(r.json(), want, "{method} {uri}");
    }
    for uri in ["/v2/anything", "/v1", "/v1/kvx", "/v1/cluster/nothing", "/"] {
        let r = f.get(uri).await;
        assert_native_error(&r, 404, "not_found");
        assert_eq!(r.json()["error"]["message"], format!("not found: no route for {uri}"));
    }
}

// ---------------------------------------------------------------------------------------
// Cluster, health, metadata, metrics, token
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_health_metadata_and_metrics_routes() {
    let f = Fixture::start(config()).await;
    health(&f).await;
    dapr_metadata(&f).await;
    cluster_status(&f).await;
    cluster_join_and_leave(&f).await;
    metrics(&f).await;
    f.stop().await;
}

async fn health(f: &Fixture) {
    let r = f.get("/livez").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    let r = f.get("/readyz").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ready\n"));
    assert_eq!(f.get("/v1.0/healthz").await.status, 204);
    assert_eq!(f.get("/v1.0/healthz?appid=statenode").await.status, 204);
    let r = f.get("/v1.0/healthz?appid=other").await;
    assert_dapr_error(&r, 500, "ERR_HEALTH_APPID_NOT_MATCH");
    assert_eq!(r.json(), json!({"errorCode": "ERR_HEALTH_APPID_NOT_MATCH", "message": "dapr app-id does not match"}));
    // Outbound: this node knows a leader, so it can serve state calls.
    assert_eq!(f.get("/v1.0/healthz/outbound").await.status, 204);
}

async fn dapr_metadata(f: &Fixture) {
    let md = f.get("/v1.0/metadata").await;
    assert_eq!(md.status, 200);
    let md = md.json();
    assert_eq!(md["id"], "statenode");
    assert_eq!(md["runtimeVersion"], statenode::dapr::RUNTIME_VERSION);
    let store = json!({"name": "statestore", "type": "state.statenode", "version": "v1",
                       "capabilities": ["ETAG", "TRANSACTIONAL", "QUERY_API", "TTL", "ACTOR"]});
    assert_eq!(md["components"], json!([store]));
    assert_eq!(md["extended"]["daprRuntimeVersion"], statenode::dapr::RUNTIME_VERSION);
    assert_eq!(f.put("/v1.0/metadata/team", b"blue").await.status, 204);
    assert_eq!(f.get("/v1.0/metadata").await.json()["extended"]["team"], "blue");
    let r = f.put("/v1.0/metadata/bin", &[0xFF]).await;
    assert_dapr_error(&r, 400, "ERR_MALFORMED_REQUEST");
    assert_eq!(r.json()["message"], "metadata value is not UTF-8");
}

async fn cluster_status(f: &Fixture) {
    let me = json!({"id": 1, "peer_addr": f.peer, "grpc_addr": f.grpc, "voter": true, "leader": true});
    let st = f.get("/v1/cluster").await.json();
    assert_eq!((&st["id"], &st["role"], &st["leader_id"]), (&json!(1), &json!("leader"), &json!(1)), "{st}");
    assert_eq!(st["members"], json!([me]));
    assert!(st["term"].as_u64().unwrap() >= 1, "{st}");
    for field in ["last_log_index", "commit_index", "applied_index", "purged_index"] {
        assert!(st[field].is_u64(), "{field}: {st}");
    }
    assert_eq!(f.get("/v1/cluster/members").await.json(), json!({"leader_id": 1, "members": [me]}));
}

/// Join and leave refuse bad input with a reason; a join of a member already in place
/// (a retried join) is a no-op.
async fn cluster_join_and_leave(f: &Fixture) {
    let cases = [
        ("/v1/cluster/join", "{nope".to_string(), 400, "invalid_argument", "bad JSON body"),
        ("/v1/cluster/join", r#"{"id":0}"#.into(), 400, "invalid_argument", "\"id\" must be a node id >= 1"),
        ("/v1/cluster/join", r#"{"id":9}"#.into(), 400, "invalid_argument", "\"peer_addr\" is required"),
        (
            "/v1/cluster/join",
            r#"{"id":9,"peer_addr":"x","grpc_addr":"y"}"#.into(),
            400,
            "invalid_argument",
            "bad address",
        ),
        (
            "/v1/cluster/join",
            r#"{"id":1,"peer_addr":"127.0.0.1:1","grpc_addr":"127.0.0.1:2"}"#.into(),
            400,
            "invalid_argument",
            "already a member",
        ),
        ("/v1/cluster/leave", r#"{"id":77}"#.into(), 404, "not_found", "node 77 is not a member"),
        ("/v1/cluster/leave", r#"{"id":1}"#.into(), 400, "invalid_argument", "cannot remove the last voter"),
        ("/v1/cluster/leave", String::new(), 400, "invalid_argument", "bad JSON body"),
    ];
    for (uri, body, status, code, text) in cases {
        let r = f.post(uri, &body).await;
        assert_native_error(&r, status, code);
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains(text), "{uri} {body}: {message}");
    }
    let again = json!({"id": 1, "peer_addr": f.peer, "grpc_addr": f.grpc}).to_string();
    let r = f.post("/v1/cluster/join", &again).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["members"].as_array().map(Vec::len), Some(1));
}

/// `/metrics` counts every request `respond` answered, by route and status.
async fn metrics(f: &Fixture) {
    let r = f.get("/metrics").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4"));
    let m = r.text();
    for line in [
        r#"statenode_requests_total{door="http",route="livez",status="200"} 1"#,
        r#"statenode_requests_total{door="http",route="dapr.healthz",status="500"} 1"#,
        r#"statenode_requests_total{door="http",route="cluster.leave",status="404"} 1"#,
        r#"statenode_request_duration_seconds_count{door="http",route="livez",status="200"} 1"#,
        r#"statenode_request_duration_seconds_bucket{door="http",route="livez",status="200",le="+Inf"} 1"#,
        "statenode_raft_leader_id 1",
        "statenode_raft_is_leader 1",
        "statenode_raft_members 1",
        "statenode_node_id 1",
    ] {
        assert!(m.lines().any(|l| l == line), "metrics lack {line:?}:\n{m}");
    }
    assert!(m.lines().any(|l| l.starts_with("statenode_raft_leader_changes_total ")), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_token_guards_every_route_but_health_probes() {
    let mut c = config();
    c.api_token = Some("s3cret".into());
    let f = Fixture::start(c).await;

    // Missing or wrong: 401 in plain text, before routing (unknown paths and methods too).
    let missing = [
        ("POST", S),
        ("GET", "/v1.0/state/statestore/k"),
        ("GET", "/v1.0/metadata"),
        ("GET", "/v1.0/nothing"),
        ("GET", "/v1/kv/k"),
        ("PUT", "/v1/kv/k"),
        ("GET", "/v1/watch"),
        ("GET", "/v1/cluster"),
        ("GET", "/v2/anything"),
        ("POST", "/livez"),
        // Paths that clean to an exempt probe but route to a key: the key route decides.
        ("GET", "/v1/kv/x/../../../metrics"),
        ("GET", "/v1/kv/../../livez"),
        ("PUT", "/v1/kv/a/../../../readyz"),
        ("GET", "/v1/kv/%2e%2e/%2e%2e/livez"),
    ];
    for (method, uri) in missing {
        let r = f.call(method, uri, &[], b"[]").await;
        assert_eq!((r.status, r.text().as_str()), (401, "invalid api token"), "{method} {uri}");
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    }
    let wrong = ["", "wrong", "s3cre", "s3cret2", "S3CRET"];
    for token in wrong {
        let r = f.call("GET", "/v1/kv/k", &[("dapr-api-token", token)], b"").await;
        assert_eq!(r.status, 401, "{token:?}");
    }
    // Health probes need no token: orchestrators cannot send one.
    for (uri, status) in [
        ("/v1.0/healthz", 204),
        ("/v1.0/healthz/outbound", 204),
        ("/livez", 200),
        ("//livez/", 200),
        ("/readyz", 200),
        ("/metrics", 200),
    ] {
        assert_eq!(f.get(uri).await.status, status, "{uri}");
    }
    // With it, every door works; header names are case-insensitive.
    let tok = [("dapr-api-token", "s3cret")];
    let r = f.call("POST", S, &tok, br#"[{"key":"k","value":1}]"#).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(f.call("GET", "/v1/kv/k", &tok, b"").await.text(), "1");
    let r = f.call("GET", "/v1.0/state/statestore/k", &[("Dapr-Api-Token", "s3cret")], b"").await;
    assert_eq!((r.status, r.text().as_str()), (200, "1"));
    assert_eq!(f.call("GET", "/v1/cluster", &tok, b"").await.json()["leader_id"], 1);
    // Refusals are counted under their own route.
    let m = f.get("/metrics").await.text();
    let refused = format!(
        r#"statenode_requests_total{{door="http",route="unauthorized",status="401"}} {}"#,
        missing.len() + wrong.len()
    );
    assert!(m.lines().any(|l| l == refused), "metrics lack {refused:?}:\n{m}");
    f.stop().await;
}

// ---------------------------------------------------------------------------------------
// Principals and per-key rules
// ---------------------------------------------------------------------------------------

/// `app1` reads and writes its own keys and reads `shared/*`; `ops` reads everything and
/// administers the cluster; the unnamed `--api-token` is the operator's.
const RULES: &str = r#"
[[rules]]
principals = { usernames = ["app1"] }
stateStoreResources = [
  { method = "ReadWrite", keys = ["{principal.username}/*"] },
  { method = "Read", keys = ["shared/*"] },
]

[[rules]]
principals = { usernames = ["ops"] }
admin = true
stateStoreResources = [{ method = "Read", keys = ["*"] }]
"#;

const ROOT: [(&str, &str); 1] = [("dapr-api-token", "root-token-0123456789")];
const APP1: [(&str, &str); 1] = [("dapr-api-token", "app1-token-0123456789")];
const OPS: [(&str, &str); 1] = [("dapr-api-token", "ops-token-0123456789")];

async fn rules_fixture(dir: &std::path::Path) -> Fixture {
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, "app1 app1-token-0123456789\nops ops-token-0123456789\n").unwrap();
    let mut c = config();
    c.api_token = Some("root-token-0123456789".into());
    c.token_file = Some(tokens);
    c.authorization = Some(toml::from_str(RULES).unwrap());
    let f = Fixture::start(c).await;
    for k in ["app1/a", "app2/a", "shared/x"] {
        assert_eq!(f.call("PUT", &format!("/v1/kv/{k}"), &ROOT, b"v").await.status, 200, "{k}");
    }
    f
}

/// The keys of a native list or a Dapr query answer.
fn keys_of(v: &Value, list: &str) -> Vec<String> {
    v[list].as_array().unwrap().iter().map(|kv| kv["key"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_bound_what_each_named_token_may_do() {
    let dir = tempfile::tempdir().unwrap();
    let f = rules_fixture(dir.path()).await;

    // Native API: app1 writes its own keys and reads shared ones, nothing else.
    assert_eq!(f.call("PUT", "/v1/kv/app1/b", &APP1, b"1").await.status, 200);
    for (method, uri) in
        [("PUT", "/v1/kv/app2/b"), ("PUT", "/v1/kv/shared/x"), ("DELETE", "/v1/kv/app2/a"), ("GET", "/v1/kv/app2/a")]
    {
        let r = f.call(method, uri, &APP1, b"1").await;
        assert_native_error(&r, 403, "permission_denied");
        assert!(r.text().contains("principal \\\"app1\\\" may not"), "{}", r.text());
    }
    assert_eq!(f.call("GET", "/v1/kv/shared/x", &APP1, b"").await.text(), "v");
    // A list shows only what the caller may read.
    let r = f.call("GET", "/v1/kv", &APP1, b"").await;
    assert_eq!(keys_of(&r.json(), "kvs"), ["app1/a", "app1/b", "shared/x"], "{}", r.text());
    let r = f.call("GET", "/v1/kv?prefix=app2/", &APP1, b"").await;
    assert_eq!((r.status, keys_of(&r.json(), "kvs").len()), (200, 0));
    // ops reads everything and writes nothing.
    assert_eq!(keys_of(&f.call("GET", "/v1/kv", &OPS, b"").await.json(), "kvs").len(), 4);
    assert_native_error(&f.call("PUT", "/v1/kv/ops/x", &OPS, b"1").await, 403, "permission_denied");

    // Dapr API: the same rules on the stored keys; a bulk save with one key denied saves none.
    let both = json!([{"key": "app1/d", "value": 1}, {"key": "app2/d", "value": 1}]).to_string();
    let r = f.call("POST", S, &APP1, both.as_bytes()).await;
    assert_dapr_error(&r, 403, "ERR_STATE_SAVE");
    let r = f.call("POST", S, &APP1, br#"[{"key":"app1/d","value":2}]"#).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_dapr_error(&f.call("GET", &at("app2%2Fa"), &APP1, b"").await, 403, "ERR_STATE_GET");
    assert_eq!(f.call("GET", &at("app1%2Fd"), &APP1, b"").await.text(), "2");
    let tx = json!({"operations": [{"operation": "delete", "request": {"key": "app2/a"}}]}).to_string();
    assert_eq!(f.call("POST", TX, &APP1, tx.as_bytes()).await.status, 403);
    let bulk = json!({"keys": ["app1/a", "app2/a"]}).to_string();
    assert_eq!(f.call("POST", BULK, &APP1, bulk.as_bytes()).await.status, 403);
    let r = f.call("POST", QUERY, &APP1, br#"{"filter":{}}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(keys_of(&r.json(), "results"), ["app1/a", "app1/b", "app1/d", "shared/x"]);

    // Nothing a refusal touched changed.
    for (k, want) in [("app2/a", "v"), ("shared/x", "v")] {
        assert_eq!(f.call("GET", &format!("/v1/kv/{k}"), &ROOT, b"").await.text(), want, "{k}");
    }
    for k in ["app2/b", "app2/d", "ops/x"] {
        assert_eq!(f.call("GET", &format!("/v1/kv/{k}"), &ROOT, b"").await.status, 404, "{k}");
    }

    // Cluster operations need the admin permission.
    let again = json!({"id": 1, "peer_addr": f.peer, "grpc_addr": f.grpc}).to_string();
    assert_native_error(&f.call("POST", "/v1/cluster/join", &APP1, again.as_bytes()).await, 403, "permission_denied");
    assert_eq!(f.call("POST", "/v1/cluster/join", &OPS, again.as_bytes()).await.status, 200);
    let leave = br#"{"id":77}"#;
    assert_native_error(&f.call("POST", "/v1/cluster/leave", &APP1, leave).await, 403, "permission_denied");
    assert_native_error(&f.call("POST", "/v1/cluster/leave", &OPS, leave).await, 404, "not_found");
    assert_eq!(f.call("GET", "/v1/cluster", &APP1, b"").await.status, 200, "status is anyone's");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_delivers_only_the_keys_its_caller_may_read() {
    use statenode::auth::rules::Principal;
    use statenode::auth::Caller;
    use statenode::handle::WatchItem;
    let dir = tempfile::tempdir().unwrap();
    let f = rules_fixture(dir.path()).await;
    let a: statenode::auth::rules::Authorization = toml::from_str(RULES).unwrap();
    let app1 = Principal { client_id: "app1".into(), username: Some("app1".into()) };
    let caller = Caller::Named { principal: Arc::new(app1), policy: Arc::new(Policy::new(Some(a))) };
    let mut events = f.node.handle().acting_for(caller).watch(bytes::Bytes::new(), None).unwrap();
    for k in ["app2/w", "shared/w", "app1/w"] {
        assert_eq!(f.call("PUT", &format!("/v1/kv/{k}"), &ROOT, b"w").await.status, 200, "{k}");
    }
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let item = tokio::time::timeout(Duration::from_secs(10), events.next()).await.expect("an event in time");
        if let Some(WatchItem::Event(e)) = item {
            seen.push(String::from_utf8_lossy(&e.key).into_owned());
        }
    }
    assert_eq!(seen, ["shared/w", "app1/w"]);
    drop(events);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_rules_and_no_token_a_request_names_nobody() {
    let mut c = config();
    c.authorization = Some(toml::from_str(RULES).unwrap());
    c.protect_metrics = true;
    let f = Fixture::start(c).await;
    assert_native_error(&f.put("/v1/kv/app1/a", b"1").await, 403, "permission_denied");
    assert_native_error(&f.get("/v1/kv/app1/a").await, 403, "permission_denied");
    assert_native_error(&f.get("/v1/kv").await, 403, "permission_denied");
    assert_native_error(&f.get("/v1/watch").await, 403, "permission_denied");
    assert_dapr_error(&f.save(json!([{"key": "k", "value": 1}])).await, 403, "ERR_STATE_SAVE");
    // Probes stay open; /metrics too, as no token is asked for at all.
    for (uri, status) in [("/livez", 200), ("/readyz", 200), ("/v1.0/healthz", 204), ("/metrics", 200)] {
        assert_eq!(f.get(uri).await.status, status, "{uri}");
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_ask_for_the_token() {
    let mut c = config();
    c.api_token = Some("s3cret".into());
    c.protect_metrics = true;
    let f = Fixture::start(c).await;
    assert_eq!(f.get("/metrics").await.status, 401);
    assert_eq!(f.call("GET", "/metrics", &[("dapr-api-token", "s3cret")], b"").await.status, 200);
    assert_eq!(f.get("/livez").await.status, 200);
    assert_eq!(f.get("/readyz").await.status, 200);
    f.stop().await;
}
