//! The native HTTP API (kv, list, watch, cluster, health, metrics) and the same bytes
//! through every door: saved with Dapr gRPC, read with Dapr HTTP and native HTTP, watched
//! with Server-Sent Events. Always through a follower of a real three-node cluster.

use serde_json::Value;
use statenode_e2e::http::{get, post, request, SseStream};
use statenode_e2e::{serial, TestCluster};
use statenode_proto::dapr::proto::common::v1 as common;
use statenode_proto::dapr::proto::runtime::v1 as rt;
use statenode_proto::dapr::proto::runtime::v1::dapr_client::DaprClient;
use std::time::{Duration, Instant};

async fn cluster() -> (TestCluster, u64, usize) {
    let c = TestCluster::start(3, true).await;
    let leader = c.wait_leader(None, Duration::from_secs(20)).await;
    let f = c.nodes.iter().position(|n| n.id != leader).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&c.nodes[f].http, "/readyz").await.status != 200 {
        assert!(Instant::now() < deadline, "follower never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (c, leader, f)
}

fn native_error(r: &statenode_e2e::http::Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], code, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_kv_list_cluster_health_and_metrics() {
    let _g = serial().await;
    let (c, leader, f) = cluster().await;
    let a = c.nodes[f].http.clone();

    // put / get / delete with revisions and conditions.
    let r = request(&a, "PUT", "/v1/kv/cfg/db/url", &[], b"postgres://x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rev = r.json()["revision"].as_u64().unwrap();
    let r = get(&a, "/v1/kv/cfg/db/url").await;
    assert_eq!((r.status, r.text().as_str()), (200, "postgres://x"));
    assert_eq!(r.header("etag"), Some(rev.to_string().as_str()));
    assert!(r.header("x-statenode-version").unwrap().ends_with(":statenode"));
    assert_eq!(get(&a, "/v1/kv/cfg%2Fdb%2Furl?consistency=stale").await.text(), "postgres://x");
    native_error(&get(&a, "/v1/kv/absent").await, 404, "not_found");
    native_error(&request(&a, "PUT", "/v1/kv/cfg/db/url", &[("If-Match", "1")], b"v2").await, 412, "condition_failed");
    let r = request(&a, "PUT", "/v1/kv/cfg/db/url", &[("If-Match", &format!("\"{rev}\""))], b"v2").await;
    assert_eq!(r.status, 200);
    native_error(
        &request(&a, "PUT", "/v1/kv/cfg/db/url", &[("If-None-Match", "*")], b"v3").await,
        412,
        "condition_failed",
    );
    native_error(&request(&a, "PUT", "/v1/kv/k", &[("If-Match", "abc")], b"v").await, 400, "invalid_argument");
    native_error(&request(&a, "DELETE", "/v1/kv/cfg/db/url", &[("If-Match", "1")], b"").await, 412, "condition_failed");
    let r = request(&a, "DELETE", "/v1/kv/cfg/db/url", &[], b"").await;
    assert_eq!(r.json()["deleted"], true);
    assert_eq!(request(&a, "DELETE", "/v1/kv/cfg/db/url", &[], b"").await.json()["deleted"], false);
    // TTL.
    assert_eq!(request(&a, "PUT", "/v1/kv/short?ttl=1s", &[], b"x").await.status, 200);
    assert!(get(&a, "/v1/kv/short").await.header("x-statenode-expires-at-ms").is_some());
    native_error(&request(&a, "PUT", "/v1/kv/short?ttl=soon", &[], b"x").await, 400, "invalid_argument");
    let start = Instant::now();
    while get(&a, "/v1/kv/short").await.status == 200 {
        assert!(start.elapsed() < Duration::from_secs(4), "expired key still readable");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Hostile input: bad escapes, oversized keys and values, bad parameters, wrong methods.
    native_error(&get(&a, "/v1/kv/bad%zz").await, 400, "invalid_argument");
    native_error(&get(&a, &format!("/v1/kv/{}", "k".repeat(5000))).await, 413, "too_large");
    native_error(&request(&a, "PUT", "/v1/kv/big", &[], &vec![b'v'; 5 * 1024 * 1024]).await, 413, "too_large");
    native_error(&get(&a, "/v1/kv/x?consistency=sometimes").await, 400, "invalid_argument");
    native_error(&request(&a, "POST", "/v1/kv/x", &[], b"").await, 405, "method_not_allowed");
    native_error(&request(&a, "DELETE", "/v1/cluster", &[], b"").await, 405, "method_not_allowed");
    native_error(&get(&a, "/v2/anything").await, 404, "not_found");

    // Paged listing.
    for i in 0..25 {
        assert_eq!(
            request(&a, "PUT", &format!("/v1/kv/list/{i:02}"), &[], format!("v{i}").as_bytes()).await.status,
            200
        );
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let r = get(&a, &format!("/v1/kv?prefix=list/&limit=10&cursor={cursor}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.json();
        seen.extend(page["kvs"].as_array().unwrap().iter().map(|k| k["key"].as_str().unwrap().to_string()));
        match page.get("next_cursor").and_then(Value::as_str) {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, (0..25).map(|i| format!("list/{i:02}")).collect::<Vec<_>>());
    let r = get(&a, "/v1/kv?prefix=list/&keys_only=true&limit=1").await;
    assert!(r.json()["kvs"][0].get("value").is_none());
    native_error(&get(&a, "/v1/kv?limit=many").await, 400, "invalid_argument");

    // Cluster admin.
    let st = get(&a, "/v1/cluster").await.json();
    assert_eq!(st["leader_id"], leader);
    assert_eq!(st["members"].as_array().unwrap().len(), 3);
    assert_eq!(st["role"], "follower");
    assert_eq!(get(&a, "/v1/cluster/members").await.json()["members"].as_array().unwrap().len(), 3);
    native_error(&post(&a, "/v1/cluster/join", "{nope").await, 400, "invalid_argument");
    native_error(&post(&a, "/v1/cluster/join", r#"{"id":0}"#).await, 400, "invalid_argument");
    native_error(
        &post(&a, "/v1/cluster/join", r#"{"id":9,"peer_addr":"x","grpc_addr":"y"}"#).await,
        400,
        "invalid_argument",
    );
    native_error(&post(&a, "/v1/cluster/leave", r#"{"id":77}"#).await, 404, "not_found");

    // Health and metrics.
    assert_eq!(get(&a, "/livez").await.status, 200);
    assert_eq!(get(&a, "/readyz").await.status, 200);
    // One native gRPC call to this node, for the gRPC door's counters.
    statenode_e2e::single_client(&c.nodes[f].grpc).status().await.unwrap();
    let m = get(&a, "/metrics").await.text();
    for needle in [
        "statenode_requests_total{door=\"http\",route=\"kv.put\",status=\"200\"}",
        "statenode_requests_total{door=\"http\",route=\"kv.get\",status=\"404\"}",
        "statenode_request_duration_seconds_bucket{door=\"http\",route=\"kv.get\",status=\"200\",le=\"+Inf\"}",
        &format!("statenode_raft_leader_id {leader}"),
        "statenode_raft_term ",
        "statenode_raft_commit_index ",
        "statenode_raft_applied_index ",
        "statenode_raft_leader_changes_total ",
        "statenode_requests_total{door=\"grpc\",route=\"statenode.v1.Cluster/Status\",status=\"Ok\"}",
    ] {
        assert!(m.contains(needle), "metrics lack {needle}:\n{m}");
    }
    let leader_http = c.nodes.iter().find(|n| n.id == leader).unwrap().http.clone();
    let lm = get(&leader_http, "/metrics").await.text();
    let commit = lm.lines().find_map(|l| l.strip_prefix("statenode_raft_commit_index ")).unwrap();
    assert!(commit.parse::<u64>().unwrap() >= rev, "{lm}");
}

/// Reads events until `n` arrived (or a timeout), returning (kind, key, value, revision, id).
async fn take(s: &mut SseStream, n: usize) -> Vec<(String, String, String, u64, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        let e = s.next(Duration::from_secs(10)).await.unwrap_or_else(|| panic!("only {} of {n} events", out.len()));
        let d = &e.data;
        out.push((
            e.event.clone(),
            d["key"].as_str().unwrap_or_default().to_string(),
            d["value"].as_str().unwrap_or_default().to_string(),
            d["revision"].as_u64().unwrap_or_default(),
            e.id.clone(),
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_bytes_through_every_door_and_watch_resumes_exactly_once() {
    let _g = serial().await;
    let (c, _leader, f) = cluster().await;
    let a = c.nodes[f].http.clone();
    let mut watch = SseStream::open(&a, "/v1/watch?prefix=door/", &[]).await;

    // Saved through Dapr gRPC (raw bytes, as the Python SDK sends a str)...
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", c.nodes[f].grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut dapr = DaprClient::new(ch);
    let item = |key: &str, value: &[u8]| common::StateItem {
        key: key.into(),
        value: value.to_vec().into(),
        ..Default::default()
    };
    let states = vec![item("door/text", b"hello"), item("door/bin", &[0, 159, 146, 150, 255])];
    dapr.save_state(rt::SaveStateRequest { store_name: "statestore".into(), states }).await.unwrap();
    // ...read back identically through Dapr HTTP, native HTTP and Dapr gRPC.
    let r = get(&a, "/v1.0/state/statestore/door%2Ftext").await;
    assert_eq!((r.status, r.body.as_slice()), (200, b"hello".as_slice()));
    assert_eq!(get(&a, "/v1.0/state/statestore/door%2Fbin").await.body, [0, 159, 146, 150, 255]);
    assert_eq!(get(&a, "/v1/kv/door/bin").await.body, [0, 159, 146, 150, 255]);
    let g = dapr
        .get_state(rt::GetStateRequest {
            store_name: "statestore".into(),
            key: "door/bin".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(g.data.as_ref(), [0, 159, 146, 150, 255]);
    assert!(!g.etag.is_empty());
    // Bulk get never emits an invalid document: text as a string, binary as base64.
    let r = post(&a, "/v1.0/state/statestore/bulk", r#"{"keys":["door/text","door/bin"]}"#).await;
    assert_eq!(r.json()[0]["data"], "hello");
    assert_eq!(r.json()[1]["data"], "AJ+Slv8=");
    // And the reverse: saved through Dapr HTTP, read through gRPC.
    let r = post(&a, "/v1.0/state/statestore", r#"[{"key":"door/json","value":{"a":[1,2]}}]"#).await;
    assert_eq!(r.status, 204);
    let g = dapr
        .get_state(rt::GetStateRequest {
            store_name: "statestore".into(),
            key: "door/json".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(g.data.as_ref(), br#"{"a":[1,2]}"#);
    // gRPC errors use Dapr's codes.
    let bad = dapr
        .save_state(rt::SaveStateRequest {
            store_name: "statestore".into(),
            states: vec![common::StateItem {
                key: "door/text".into(),
                etag: Some(common::Etag { value: "12345678".into() }),
                ..Default::default()
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::Aborted, "{bad:?}");
    let bad = dapr.save_state(rt::SaveStateRequest { store_name: "nope".into(), states: vec![] }).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let bad = dapr
        .save_state(rt::SaveStateRequest { store_name: "statestore".into(), states: vec![item("", b"x")] })
        .await
        .unwrap_err();
    assert_eq!((bad.code(), bad.message()), (tonic::Code::InvalidArgument, "state key cannot be empty"));
    let tx = rt::ExecuteStateTransactionRequest {
        store_name: "statestore".into(),
        operations: vec![rt::TransactionalStateOperation {
            operation_type: "merge".into(),
            request: Some(item("door/x", b"1")),
        }],
        metadata: Default::default(),
    };
    assert_eq!(dapr.execute_state_transaction(tx).await.unwrap_err().code(), tonic::Code::Unimplemented);
    let md = dapr.get_metadata(rt::GetMetadataRequest {}).await.unwrap().into_inner();
    assert_eq!(md.registered_components[0].name, "statestore");
    // A method the service does not declare: UNIMPLEMENTED, counted under one label.
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", c.nodes[f].grpc)).unwrap();
    let mut raw = tonic::client::Grpc::new(ch.connect().await.unwrap());
    raw.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/dapr.proto.runtime.v1.Dapr/PublishEvent");
    let codec = tonic_prost::ProstCodec::<rt::GetMetadataRequest, rt::GetMetadataRequest>::default();
    let e = raw.unary(tonic::Request::new(rt::GetMetadataRequest {}), path, codec).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented);
    let m = get(&a, "/metrics").await.text();
    for line in [
        "{door=\"grpc\",route=\"dapr.proto.runtime.v1.Dapr/SaveState\",status=\"Ok\"} 1",
        "{door=\"grpc\",route=\"dapr.proto.runtime.v1.Dapr/SaveState\",status=\"Aborted\"} 1",
        "{door=\"grpc\",route=\"dapr.proto.runtime.v1.Dapr/ExecuteStateTransaction\",status=\"Unimplemented\"} 1",
        "{door=\"grpc\",route=\"unknown\",status=\"Unimplemented\"} 1",
    ] {
        assert!(m.contains(&format!("statenode_requests_total{line}")), "metrics lack {line}:\n{m}");
    }

    // The watcher saw all three writes, in order, with the same bytes.
    let evs = take(&mut watch, 3).await;
    assert_eq!(evs[0].1, "door/text");
    assert_eq!(evs[0].2, "hello");
    assert_eq!(evs[1].1, "door/bin");
    assert_eq!(evs[2].2, r#"{"a":[1,2]}"#);
    assert_eq!(evs[0].3, evs[1].3, "one bulk save, one revision");
    drop(watch);

    // Watch resumption: writes while disconnected are delivered exactly once, in order,
    // whether resuming by Last-Event-ID (mid-revision) or from_revision, on any node.
    let mut w = SseStream::open(&a, "/v1/watch?prefix=w/", &[]).await;
    for i in 0..3 {
        assert_eq!(request(&a, "PUT", &format!("/v1/kv/w/{i}"), &[], b"x").await.status, 200);
    }
    let first = take(&mut w, 2).await;
    drop(w);
    let r = post(&a, "/v1.0/state/statestore", r#"[{"key":"w/3","value":3},{"key":"w/4","value":4}]"#).await;
    assert_eq!(r.status, 204);
    let last_id = first[1].4.clone();
    let mut w = SseStream::open(&a, "/v1/watch?prefix=w/", &[("Last-Event-ID", &last_id)]).await;
    let rest = take(&mut w, 3).await;
    let keys: Vec<&str> = first.iter().chain(&rest).map(|e| e.1.as_str()).collect();
    assert_eq!(keys, ["w/0", "w/1", "w/2", "w/3", "w/4"]);
    assert!(w.next(Duration::from_millis(500)).await.is_none(), "an event was delivered twice");
    // Mid-revision: resume after the first item of the two-item save.
    let mut w = SseStream::open(&a, "/v1/watch?prefix=w/", &[("Last-Event-ID", &rest[1].4)]).await;
    assert_eq!(take(&mut w, 1).await[0].1, "w/4");
    assert!(w.next(Duration::from_millis(300)).await.is_none());
    // from_revision on another node.
    let other = c.nodes.iter().find(|n| n.http != a).unwrap().http.clone();
    let from = first[1].3 + 1;
    let mut w = SseStream::open(&other, &format!("/v1/watch?prefix=w/&from_revision={from}"), &[]).await;
    let again: Vec<String> = take(&mut w, 3).await.into_iter().map(|e| e.1).collect();
    assert_eq!(again, ["w/2", "w/3", "w/4"]);
    // Bad resume points are refused.
    let r = request(&a, "GET", "/v1/watch?from_revision=soon", &[], b"").await;
    native_error(&r, 400, "invalid_argument");
    let r = request(&a, "GET", "/v1/watch", &[("Last-Event-ID", "x.y")], b"").await;
    native_error(&r, 400, "invalid_argument");
}
