//! Dapr's HTTP state API against a real three-node cluster, always through a follower:
//! every route, status code and error body of the reference, and hostile input.

use serde_json::{json, Value};
use statenode_e2e::http::{get, post, request, Resp};
use statenode_e2e::{serial, TestCluster};
use std::time::{Duration, Instant};

const S: &str = "/v1.0/state/statestore";

async fn cluster(extra: &[&str]) -> (TestCluster, String) {
    let c = TestCluster::start_with_args(3, true, extra).await;
    let leader = c.wait_leader(None, Duration::from_secs(20)).await;
    let addr = c.follower(leader).http.clone();
    // The follower must know the leader before it answers state calls.
    wait_status(&addr, "/v1.0/healthz/outbound", 204).await;
    (c, addr)
}

async fn wait_status(addr: &str, target: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = get(addr, target).await;
        if r.status == want {
            return;
        }
        assert!(Instant::now() < deadline, "{target}: {} {}", r.status, r.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.error_code(), code, "{}", r.text());
}

async fn save(addr: &str, body: Value) -> Resp {
    post(addr, S, &body.to_string()).await
}

async fn etag_of(addr: &str, key: &str) -> String {
    let r = get(addr, &format!("{S}/{key}")).await;
    assert_eq!(r.status, 200, "{key}: {}", r.text());
    r.header("etag").expect("etag").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_get_delete_and_their_errors() {
    let _g = serial().await;
    let (_c, a) = cluster(&[]).await;

    // Health and metadata.
    assert_eq!(get(&a, "/v1.0/healthz").await.status, 204);
    assert_eq!(get(&a, "/v1.0/healthz?appid=statenode").await.status, 204);
    assert_error(&get(&a, "/v1.0/healthz?appid=other").await, 500, "ERR_HEALTH_APPID_NOT_MATCH");
    let md = get(&a, "/v1.0/metadata").await;
    assert_eq!(md.status, 200);
    assert_eq!(md.json()["components"][0]["name"], "statestore");
    let caps = md.json()["components"][0]["capabilities"].clone();
    for cap in ["ETAG", "TRANSACTIONAL", "TTL", "QUERY_API", "ACTOR"] {
        assert!(caps.as_array().unwrap().contains(&json!(cap)), "{cap}");
    }
    assert_eq!(request(&a, "PUT", "/v1.0/metadata/team", &[], b"blue").await.status, 204);
    assert_eq!(get(&a, "/v1.0/metadata").await.json()["extended"]["team"], "blue");

    // Save and get: the raw JSON text of `value` is stored and returned verbatim.
    assert_eq!(save(&a, json!([])).await.status, 204);
    assert_eq!(save(&a, json!([{"key": "sampleData", "value": "1"}])).await.status, 204);
    let r = get(&a, &format!("{S}/sampleData")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "\"1\""));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("etag").unwrap().parse::<u64>().unwrap() > 0);
    let r = save(&a, json!([{"key": "planet", "value": {"name": "Tatooine", "moons": [1, 2]}}])).await;
    assert_eq!(r.status, 204);
    assert_eq!(get(&a, &format!("{S}/planet")).await.json(), json!({"name": "Tatooine", "moons": [1, 2]}));
    // No value → JSON null stored; missing key → 204 with no body.
    assert_eq!(post(&a, S, r#"[{"key":"key1","vae":"value1"}]"#).await.status, 204);
    assert_eq!(get(&a, &format!("{S}/key1")).await.text(), "null");
    let r = get(&a, &format!("{S}/never-written")).await;
    assert_eq!((r.status, r.body.len()), (204, 0));
    // Field names match case-insensitively (Go's decoder); PUT works like POST.
    let r = request(&a, "PUT", S, &[], br#"[{"KEY":"cased","Value":7,"Options":{"Concurrency":"last-write"}}]"#).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(get(&a, &format!("{S}/cased")).await.text(), "7");

    // Malformed save bodies: 400 ERR_MALFORMED_REQUEST, nothing written.
    for bad in [
        "",
        "{}",
        "foobar",
        "[{}]",
        r#"[{"ey":"key0","value":"value1"}]"#,
        r#"[{"key":"key1","value":"value1"},]"#,
        r#"[{"key":"key1","value":"value1","etag":123}]"#,
        r#"[{"key":"key1","value":"value1","metadata":{"ttlInSeconds":5}}]"#,
        r#"[{"key":42,"value":"v"}]"#,
        "[",
        "\u{0}\u{1}",
    ] {
        assert_error(&post(&a, S, bad).await, 400, "ERR_MALFORMED_REQUEST");
    }
    assert_eq!(get(&a, &format!("{S}/key0")).await.status, 204);
    let r = post(&a, S, r#"[{"key":"","value":1}]"#).await;
    assert_eq!(r.json()["message"], "\"key\" is a required field");
    // A key with "||": rich error body.
    let r = save(&a, json!([{"key": "ke||y1", "value": "value1"}])).await;
    assert_error(&r, 400, "ERR_MALFORMED_REQUEST");
    assert_eq!(r.json()["message"], "input key/keyPrefix 'ke||y1' can't contain '||'");
    let details = r.json()["details"].clone();
    assert_eq!(details[2]["reason"], "DAPR_STATE_ILLEGAL_KEY");
    assert_eq!(details[1]["resource_name"], "statestore");
    // Unknown store, checked before the body is read.
    let r = post(&a, "/v1.0/state/nostore", "not even json").await;
    assert_error(&r, 400, "ERR_STATE_STORE_NOT_FOUND");
    assert_eq!(r.json()["message"], "state store nostore is not found");
    assert_error(&get(&a, "/v1.0/state/nostore/k").await, 400, "ERR_STATE_STORE_NOT_FOUND");
    // Bad option values.
    let r = save(&a, json!([{"key": "k", "value": 1, "options": {"concurrency": "sometimes"}}])).await;
    assert_error(&r, 500, "ERR_STATE_SAVE");
    let r = save(&a, json!([{"key": "k", "value": 1, "metadata": {"ttlInSeconds": "foo"}}])).await;
    assert_error(&r, 400, "ERR_STATE_SAVE");

    // Etags: a wrong one is a 409 conflict; the right one succeeds and changes the etag.
    let e1 = etag_of(&a, "planet").await;
    let r = save(&a, json!([{"key": "planet", "value": "x", "etag": "bad-etag"}])).await;
    assert_error(&r, 409, "ERR_STATE_SAVE");
    assert!(r.json()["message"].as_str().unwrap().contains("possible etag mismatch"), "{}", r.text());
    let r = save(&a, json!([{"key": "planet", "value": "y", "etag": e1}])).await;
    assert_eq!(r.status, 204);
    let e2 = etag_of(&a, "planet").await;
    assert_ne!(e1, e2);
    assert_error(&save(&a, json!([{"key": "planet", "value": "z", "etag": e1}])).await, 409, "ERR_STATE_SAVE");
    assert_error(&save(&a, json!([{"key": "nokey", "value": "z", "etag": "1"}])).await, 409, "ERR_STATE_SAVE");
    // An empty etag means "no etag".
    assert_eq!(save(&a, json!([{"key": "planet", "value": "w", "etag": ""}])).await.status, 204);

    // First-write without an etag: create only.
    let fw = json!([{"key": "fw", "value": 1, "options": {"concurrency": "first-write", "consistency": "strong"}}]);
    assert_eq!(save(&a, fw.clone()).await.status, 204);
    assert_error(&save(&a, fw).await, 409, "ERR_STATE_SAVE");

    // Bulk save is item by item: one bad etag fails alone, the rest applies.
    assert_eq!(save(&a, json!([{"key": "b1", "value": 1}, {"key": "b2", "value": 2}])).await.status, 204);
    let (b1, b2) = (etag_of(&a, "b1").await, etag_of(&a, "b2").await);
    let r =
        save(&a, json!([{"key": "b1", "value": 10, "etag": "bad-etag"}, {"key": "b2", "value": 20, "etag": b2}])).await;
    assert_error(&r, 409, "ERR_STATE_SAVE");
    assert_eq!(get(&a, &format!("{S}/b1")).await.text(), "1");
    assert_eq!(get(&a, &format!("{S}/b2")).await.text(), "20");
    assert_eq!(etag_of(&a, "b1").await, b1);
    // Duplicate keys in one save: the last one wins.
    assert_eq!(save(&a, json!([{"key": "dup", "value": 1}, {"key": "dup", "value": 2}])).await.status, 204);
    assert_eq!(get(&a, &format!("{S}/dup")).await.text(), "2");

    // Delete: If-Match checked, missing keys fine without an etag.
    let r = request(&a, "DELETE", &format!("{S}/b1"), &[("If-Match", "BAD ETAG")], b"").await;
    assert_error(&r, 409, "ERR_STATE_DELETE");
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .starts_with("failed deleting state with key b1: possible etag mismatch"));
    let r = request(&a, "DELETE", &format!("{S}/ghost"), &[("If-Match", "5")], b"").await;
    assert_error(&r, 409, "ERR_STATE_DELETE");
    assert_eq!(request(&a, "DELETE", &format!("{S}/ghost"), &[], b"").await.status, 204);
    assert_eq!(request(&a, "DELETE", &format!("{S}/b1"), &[("If-Match", "")], b"").await.status, 204);
    let e = etag_of(&a, "b2").await;
    assert_eq!(
        request(&a, "DELETE", &format!("{S}/b2?concurrency=first-write"), &[("If-Match", &e)], b"").await.status,
        204
    );
    assert_eq!(get(&a, &format!("{S}/b2")).await.status, 204);

    // Reads: eventual is served locally, strong by the read index; both see an acked write.
    assert_eq!(save(&a, json!([{"key": "c", "value": "v"}])).await.status, 204);
    assert_eq!(get(&a, &format!("{S}/c?consistency=strong")).await.text(), "\"v\"");
    assert_eq!(get(&a, &format!("{S}/c?consistency=bogus")).await.status, 400);

    // Routing: cleaned paths, escapes, wrong methods and routes fall to service invocation.
    assert_eq!(get(&a, "//v1.0//state/statestore/c/").await.text(), "\"v\"");
    assert_eq!(save(&a, json!([{"key": "a/b c+d", "value": 1}])).await.status, 204);
    assert_eq!(get(&a, &format!("{S}/a%2Fb+c%2Bd")).await.text(), "1");
    assert_error(&get(&a, &format!("{S}/a/b")).await, 404, "ERR_DIRECT_INVOKE");
    let r = get(&a, &format!("{S}/bad%zzescape")).await;
    assert_eq!(r.status, 400);
    assert!(r.text().starts_with("failed to unescape request parameter \"key\""), "{}", r.text());
    assert_error(&get(&a, &format!("{S}/x%7C%7Cy")).await, 400, "ERR_MALFORMED_REQUEST");
    assert_error(&request(&a, "PATCH", S, &[], b"[]").await, 404, "ERR_DIRECT_INVOKE");
    assert_error(&get(&a, S).await, 404, "ERR_DIRECT_INVOKE");
    assert_error(&request(&a, "DELETE", S, &[], b"").await, 404, "ERR_DIRECT_INVOKE");
    assert_error(&get(&a, "/v1.0/nothing").await, 404, "ERR_DIRECT_INVOKE");
    // GET /bulk addresses a key named "bulk".
    assert_eq!(get(&a, &format!("{S}/bulk")).await.status, 204);

    // Sizes: a 3 MiB value round-trips; a value over the limit and a body over the limit
    // are refused, and nothing is written.
    let big = "x".repeat(3 * 1024 * 1024);
    assert_eq!(save(&a, json!([{"key": "big", "value": big}])).await.status, 204);
    assert_eq!(get(&a, &format!("{S}/big")).await.body.len(), big.len() + 2);
    let huge = "y".repeat(5 * 1024 * 1024);
    let r = save(&a, json!([{"key": "huge", "value": huge}])).await;
    assert_error(&r, 413, "ERR_STATE_SAVE");
    let r = post(&a, S, &format!("[{{\"key\":\"huge\",\"value\":\"{}\"}}]", "z".repeat(7 * 1024 * 1024))).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(get(&a, &format!("{S}/huge")).await.status, 204);
    let long_key = "k".repeat(5000);
    assert_error(&save(&a, json!([{"key": long_key, "value": 1}])).await, 413, "ERR_STATE_SAVE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_get_transactions_ttl_and_query() {
    let _g = serial().await;
    let (_c, a) = cluster(&[]).await;
    let bulk = format!("{S}/bulk");

    // Bulk get: request order, `data` raw JSON, missing keys bare, non-JSON as a string.
    assert_eq!(save(&a, json!([{"key": "k1", "value": "value1"}, {"key": "k2", "value": {"a": 1}}])).await.status, 204);
    assert_eq!(request(&a, "PUT", "/v1/kv/plain", &[], b"not json").await.status, 200);
    let r = post(&a, &bulk, r#"{"keys":["k2","missing","k1","plain"],"parallelism":10}"#).await;
    assert_eq!(r.status, 200);
    let items = r.json();
    assert_eq!(items[0]["key"], "k2");
    assert_eq!(items[0]["data"], json!({"a": 1}));
    assert_eq!(items[1], json!({"key": "missing"}));
    assert_eq!(items[2]["data"], "value1");
    assert!(!items[2]["etag"].as_str().unwrap().is_empty());
    assert_eq!(items[3]["data"], "not json");
    assert_eq!(post(&a, &bulk, r#"{"keys":[]}"#).await.json(), json!([]));
    // 10 000 keys in one bulk get, answered in order at one read index.
    let keys: Vec<String> = (0..10_000).map(|i| format!("many-{i}")).collect();
    let r = post(&a, &bulk, &json!({ "keys": keys }).to_string()).await;
    assert_eq!(r.status, 200);
    let items = r.json();
    assert_eq!(items.as_array().unwrap().len(), 10_000);
    assert_eq!(items[9_999], json!({"key": "many-9999"}));
    assert_eq!(post(&a, &bulk, r#"{}"#).await.json(), json!([]));
    let r = post(&a, &bulk, "").await;
    assert_error(&r, 400, "ERR_MALFORMED_REQUEST");
    assert_eq!(r.json()["message"], "failed deserializing HTTP body: EOF");
    assert_error(&post(&a, &bulk, r#"{"keys":"k1"}"#).await, 400, "ERR_MALFORMED_REQUEST");
    assert_error(&post(&a, &bulk, r#"{"keys":["a||b"]}"#).await, 400, "ERR_MALFORMED_REQUEST");

    // Transactions: in order, all or nothing.
    let tx = format!("{S}/transaction");
    assert_eq!(save(&a, json!([{"key": "t1", "value": 1}])).await.status, 204);
    let ops = json!({"operations": [
        {"operation": "delete", "request": {"key": "t1"}},
        {"operation": "upsert", "request": {"key": "t2", "value": "x"}},
        {"operation": "delete", "request": {"key": "t2"}},
        {"operation": "upsert", "request": {"key": "t3", "value": "value3"}}]});
    assert_eq!(post(&a, &tx, &ops.to_string()).await.status, 204);
    assert_eq!(get(&a, &format!("{S}/t1")).await.status, 204);
    assert_eq!(get(&a, &format!("{S}/t2")).await.status, 204);
    assert_eq!(get(&a, &format!("{S}/t3")).await.text(), "\"value3\"");
    // A stale etag anywhere: 500 ERR_STATE_TRANSACTION and nothing applied.
    let e3 = etag_of(&a, "t3").await;
    let ops = json!({"operations": [
        {"operation": "upsert", "request": {"key": "t4", "value": 4}},
        {"operation": "upsert", "request": {"key": "t3", "value": "new", "etag": "999999"}}]});
    let r = post(&a, &tx, &ops.to_string()).await;
    assert_error(&r, 500, "ERR_STATE_TRANSACTION");
    assert!(r.json()["message"].as_str().unwrap().starts_with("error while executing state transaction: "));
    assert_eq!(get(&a, &format!("{S}/t4")).await.status, 204);
    let ops = json!({"operations": [{"operation": "upsert", "request": {"key": "t3", "value": "new", "etag": e3}}]});
    assert_eq!(post(&a, &tx, &ops.to_string()).await.status, 204);
    assert_eq!(post(&a, &tx, r#"{"operations":[]}"#).await.status, 204);
    let r = post(&a, &tx, r#"{"operations":[{"operation":"merge","request":{"key":"t3"}}]}"#).await;
    assert_error(&r, 400, "ERR_NOT_SUPPORTED_STATE_OPERATION");
    assert_eq!(r.json()["message"], "operation type merge not supported");
    let r = post(&a, &tx, r#"{"operations":[{"operation":"upsert","request":{"key":"t3","etag":7}}]}"#).await;
    assert_error(&r, 400, "ERR_MALFORMED_REQUEST");
    assert_error(&post(&a, &tx, "[").await, 400, "ERR_MALFORMED_REQUEST");
    let many: Vec<Value> =
        (0..129).map(|i| json!({"operation": "upsert", "request": {"key": format!("m{i}"), "value": i}})).collect();
    let r = post(&a, &tx, &json!({ "operations": many }).to_string()).await;
    assert_error(&r, 400, "ERR_STATE_STORE_TOO_MANY_TRANSACTIONS");
    assert_eq!(
        r.json()["message"],
        "the transaction contains 129 operations, which is more than what the state store supports: 128"
    );

    // TTL: readable at once with ttlExpireTime ≈ now + ttl, gone soon after.
    let r = save(&a, json!([{"key": "ttl1", "value": "value1", "metadata": {"ttlInSeconds": "2"}}])).await;
    assert_eq!(r.status, 204);
    let r = get(&a, &format!("{S}/ttl1")).await;
    assert_eq!(r.status, 200);
    let expire = r.header("metadata.ttlexpiretime").expect("ttlExpireTime header").to_string();
    assert!(expire.ends_with('Z') && expire.len() == 20, "{expire}");
    let start = Instant::now();
    while get(&a, &format!("{S}/ttl1")).await.status == 200 {
        assert!(start.elapsed() < Duration::from_secs(5), "TTL'd key still readable");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Query-string metadata applies to every item; re-saving without a TTL removes it.
    assert_eq!(post(&a, &format!("{S}?metadata.ttlInSeconds=3600"), r#"[{"key":"ttl2","value":1}]"#).await.status, 204);
    assert!(get(&a, &format!("{S}/ttl2")).await.header("metadata.ttlexpiretime").is_some());
    let r = post(&a, &bulk, r#"{"keys":["ttl2"]}"#).await;
    assert!(r.json()[0]["metadata"]["ttlExpireTime"].is_string());
    assert_eq!(save(&a, json!([{"key": "ttl2", "value": 2}])).await.status, 204);
    assert!(get(&a, &format!("{S}/ttl2")).await.header("metadata.ttlexpiretime").is_none());
    assert_eq!(save(&a, json!([{"key": "ttl2", "value": 3, "metadata": {"ttlInSeconds": "-1"}}])).await.status, 204);
    assert!(get(&a, &format!("{S}/ttl2")).await.header("metadata.ttlexpiretime").is_none());

    // Query over JSON values.
    let people = json!([
        {"key": "p1", "value": {"person": {"org": "Dev Ops", "id": 1036}, "state": "WA"}},
        {"key": "p2", "value": {"person": {"org": "Hardware", "id": 1028}, "state": "OR"}},
        {"key": "p3", "value": {"person": {"org": "Finance", "id": 1071}, "state": "CA"}},
        {"key": "p4", "value": {"person": {"org": "Dev Ops", "id": 1042}, "state": "WA"}}]);
    assert_eq!(save(&a, people).await.status, 204);
    let qpath = "/v1.0-alpha1/state/statestore/query";
    let q = json!({"filter": {"AND": [{"IN": {"state": ["WA", "CA"]}}, {"GT": {"person.id": 1030}}]},
                   "sort": [{"key": "person.id", "order": "DESC"}], "page": {"limit": 2}});
    let r = post(&a, qpath, &q.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["results"].as_array().unwrap().len(), 2);
    assert_eq!(body["results"][0]["key"], "p3");
    assert_eq!(body["results"][1]["key"], "p4");
    assert_eq!(body["results"][0]["data"]["person"]["id"], 1071);
    let token = body["token"].as_str().expect("a next-page token").to_string();
    let mut q2 = q.clone();
    q2["page"]["token"] = json!(token);
    let r = post(&a, qpath, &q2.to_string()).await;
    assert_eq!(r.json()["results"][0]["key"], "p1");
    assert!(r.json().get("token").is_none());
    let r = post(&a, qpath, r#"{"filter":{"EQ":{"state":"NOWHERE"}}}"#).await;
    assert_eq!((r.status, r.body.len()), (204, 0));
    let r = post(&a, qpath, r#"{"filter":{"LIKE":{"state":"W%"}}}"#).await;
    assert_error(&r, 500, "ERR_STATE_QUERY");
    assert_error(&post(&a, qpath, "nope").await, 500, "ERR_STATE_QUERY");
    assert_error(&post(&a, "/v1.0-alpha1/state/nostore/query", "{}").await, 400, "ERR_STATE_STORE_NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_are_namespaces_and_tokens_are_checked() {
    let _g = serial().await;
    let extra = ["--stores", "statestore,orders:name,apps:appid", "--api-token", "s3cret"];
    let (c, a) = cluster(&extra).await;
    let tok = [("dapr-api-token", "s3cret"), ("Content-Type", "application/json")];

    // Without the token: 401, plain text; health probes are exempt.
    let r = post(&a, S, r#"[{"key":"k","value":1}]"#).await;
    assert_eq!((r.status, r.text().as_str()), (401, "invalid api token"));
    assert_eq!(request(&a, "GET", &format!("{S}/k"), &[("dapr-api-token", "wrong")], b"").await.status, 401);
    assert_eq!(get(&a, "/v1.0/healthz").await.status, 204);
    assert_eq!(get(&a, "/livez").await.status, 200);
    assert_eq!(get(&a, "/v1/kv/k").await.status, 401);
    // gRPC: every client service checks the token; the admin CLI sends it.
    let grpc = c.nodes.iter().find(|n| n.http == a).unwrap().grpc.clone();
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    let mut dapr = statenode_proto::dapr::proto::runtime::v1::dapr_client::DaprClient::new(ch);
    let get_req = || statenode_proto::dapr::proto::runtime::v1::GetStateRequest {
        store_name: "statestore".into(),
        key: "k".into(),
        ..Default::default()
    };
    let e = dapr.get_state(get_req()).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (tonic::Code::Unauthenticated, "missing api token in request metadata"));
    let mut wrong = tonic::Request::new(get_req());
    wrong.metadata_mut().insert("dapr-api-token", "nope".parse().unwrap());
    let e = dapr.get_state(wrong).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (tonic::Code::Unauthenticated, "authentication error: api token mismatch"));
    let mut right = tonic::Request::new(get_req());
    right.metadata_mut().insert("dapr-api-token", "s3cret".parse().unwrap());
    assert!(dapr.get_state(right).await.is_ok());
    let members = |token: Option<&str>| {
        let mut cmd = std::process::Command::new(statenode_e2e::bin("statenode"));
        cmd.args(["members", "--endpoints", &grpc]).env_remove("STATENODE_API_TOKEN");
        if let Some(t) = token {
            cmd.args(["--api-token", t]);
        }
        cmd.output().unwrap()
    };
    assert!(!members(None).status.success());
    let out = members(Some("s3cret"));
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).matches("voter").count() == 3);

    // The same key in three stores: three values.
    for (store, v) in [("statestore", 1), ("orders", 2), ("apps", 3)] {
        let body = json!([{"key": "k", "value": v}]).to_string();
        let r = request(&a, "POST", &format!("/v1.0/state/{store}"), &tok, body.as_bytes()).await;
        assert_eq!(r.status, 204, "{store}: {}", r.text());
    }
    for (store, v) in [("statestore", "1"), ("orders", "2"), ("apps", "3")] {
        let r = request(&a, "GET", &format!("/v1.0/state/{store}/k"), &tok, b"").await;
        assert_eq!(r.text(), v, "{store}");
    }
    // appid prefixes: each app id sees its own key.
    let app1 = [("dapr-api-token", "s3cret"), ("dapr-app-id", "app1")];
    let r = request(&a, "POST", "/v1.0/state/apps", &app1, br#"[{"key":"k","value":"one"}]"#).await;
    assert_eq!(r.status, 204);
    assert_eq!(request(&a, "GET", "/v1.0/state/apps/k", &app1, b"").await.text(), "\"one\"");
    assert_eq!(request(&a, "GET", "/v1.0/state/apps/k", &tok, b"").await.text(), "3");
    // The default store shares the root key space with the native API; the others live
    // under 0xFF-framed names no Dapr key can spell (the native API sees the raw bytes).
    let r = request(&a, "GET", "/v1/kv?prefix=", &tok, b"").await;
    let kvs = r.json()["kvs"].as_array().unwrap().clone();
    let text_keys: Vec<&Value> = kvs.iter().filter_map(|k| k.get("key")).collect();
    assert_eq!(text_keys, [&json!("k")], "{}", r.text());
    assert_eq!(kvs.len(), 4);
    let r = request(&a, "GET", "/v1/kv/k", &tok, b"").await;
    assert_eq!(r.text(), "1");
    // Query is scoped to its store and prefix.
    let r = request(&a, "POST", "/v1.0-alpha1/state/apps/query", &app1, b"{}").await;
    assert_eq!(r.json()["results"].as_array().unwrap().len(), 1, "{}", r.text());
    assert_eq!(r.json()["results"][0]["key"], "k");
    assert_eq!(r.json()["results"][0]["data"], "one");
}

/// Named tokens from `--token-file`, next to `--api-token`: a new token is added while the
/// old one still works, the old one is removed, all without a restart, on HTTP and gRPC; a
/// broken file keeps the tokens before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_tokens_rotate_without_a_restart() {
    let _g = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let (old, new) = ("alice-token-0123456789-old", "alice-token-0123456789-new");
    std::fs::write(&file, format!("# NAME TOKEN\nalice {old}\n")).unwrap();
    let extra = ["--token-file", file.to_str().unwrap(), "--api-token", "the-harness-token-0123"];
    let c = TestCluster::start_with_args(1, true, &extra).await;
    let a = c.nodes[0].http.clone();
    let status = |t: &'static str| {
        let a = a.clone();
        async move { request(&a, "PUT", "/v1/kv/rotated", &[("dapr-api-token", t)], b"v").await.status }
    };
    let wait_for = |t: &'static str, want: u16| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        while status(t).await != want {
            assert!(Instant::now() < deadline, "token {t} never answered {want}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert_eq!(status(old).await, 200);
    assert_eq!(status(new).await, 401);
    std::fs::write(&file, format!("alice {old}\nalice-next {new}\n")).unwrap();
    wait_for(new, 200).await;
    assert_eq!(status(old).await, 200, "both are valid while clients move");
    std::fs::write(&file, format!("alice-next {new}\n")).unwrap();
    wait_for(old, 401).await;
    // gRPC checks the same tokens.
    let grpc = |token: &str| {
        let opts = statenode_client::Options {
            deadline: Duration::from_secs(2),
            api_token: Some(token.into()),
            ..statenode_client::Options::default()
        };
        statenode_client::Client::new(&[&c.nodes[0].grpc], opts).unwrap()
    };
    grpc(new).put_simple("over-grpc", "v").await.expect("the new token over gRPC");
    assert!(grpc(old).put_simple("over-grpc", "v").await.is_err(), "the removed token over gRPC");
    // A file that no longer parses keeps the tokens before it.
    std::fs::write(&file, "this is not a token file\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(status(new).await, 200);
    assert_eq!(status(old).await, 401);
}
