//! Bad input to every CLI flag and RPC gets a clear error and changes nothing.

use statenode_client::v1::{self as pb, cluster_client::ClusterClient, kv_client::KvClient};
use statenode_e2e::{bin, serial, TestCluster};
use tonic::Code;

fn statenode(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(bin("statenode")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_cli_flags_fail_fast_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "no_such_key = 1\n").unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["serve", "--id", "abc"], "invalid value"),
        (&["serve", "--grpc", "nonsense"], "bad address"),
        (&["serve", "--peer-listen", "127.0.0.1:0"], "bad address"),
        (&["serve", "--id", "1", "--peers", "garbage"], "bad peer"),
        (&["serve", "--id", "1", "--bootstrap-expect", "3", "--peers", "1=127.0.0.1:1"], "bootstrap-expect 3"),
        (&["serve", "--id", "9", "--peers", "1=127.0.0.1:1"], "must include this node"),
        (&["serve", "--peers", "1=127.0.0.1:1"], "needs --id"),
        (&["serve", "--log-format", "xml"], "invalid value"),
        (&["serve", "--config", "/nonexistent/statenode.toml"], "read /nonexistent"),
        (&["serve", "--config", cfg.to_str().unwrap()], "unknown field"),
        (&["join", "--seed", "not-an-address"], "bad address"),
        (&["leave", "--id", "1", "--endpoints", "bad"], "bad address"),
        (&["dev", "--nodes", "0"], "between 1 and 9"),
    ];
    for (args, want) in cases {
        let (ok, stderr) = statenode(args);
        assert!(!ok, "{args:?} should fail");
        assert!(stderr.contains(want), "{args:?}: expected {want:?} in {stderr:?}");
    }
}

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    match r {
        Ok(_) => (Code::Ok, "unexpectedly accepted".into()),
        Err(s) => (s.code(), s.message().to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rpcs_get_clear_errors_and_change_nothing() {
    let _g = serial().await;
    let c = TestCluster::start(3, true).await;
    let client = c.client();
    client.put_simple("keep", "me").await.unwrap();
    // The leader's applied index, after a linearizable read: everything committed so far.
    let leader_applied = || async {
        let members = client.members().await.unwrap();
        let leader = members.members.iter().find(|m| m.id == members.leader_id).unwrap().grpc_addr.clone();
        let probe = statenode_e2e::single_client(&leader);
        probe.get("keep", pb::Consistency::Linearizable).await.unwrap();
        probe.status().await.unwrap().applied_index
    };
    let before = leader_applied().await;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", c.nodes[1].grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut kv = KvClient::new(ch.clone());
    let mut cluster = ClusterClient::new(ch);
    let put =
        |key: Vec<u8>, value: Vec<u8>| pb::PutRequest { key: key.into(), value: value.into(), ..Default::default() };

    let cases = vec![
        (code(kv.put(put(vec![], b"v".to_vec())).await), Code::InvalidArgument, "key must not be empty"),
        (code(kv.put(put(vec![b'k'; 4097], b"v".to_vec())).await), Code::ResourceExhausted, "key is 4097 bytes"),
        (
            code(kv.put(put(b"k".to_vec(), vec![0; 4 * 1024 * 1024 + 1])).await),
            Code::ResourceExhausted,
            "value is 4194305 bytes",
        ),
        (
            code(kv.put(pb::PutRequest { condition: 99, ..put(b"k".to_vec(), b"v".to_vec()) }).await),
            Code::InvalidArgument,
            "unknown put condition",
        ),
        (
            code(kv.put(pb::PutRequest { fencing_token: "garbage".into(), ..put(b"k".to_vec(), b"v".to_vec()) }).await),
            Code::InvalidArgument,
            "malformed timestamp",
        ),
        (
            code(kv.put(pb::PutRequest { ttl_ms: u64::MAX, ..put(b"k".to_vec(), b"v".to_vec()) }).await),
            Code::InvalidArgument,
            "ttl",
        ),
        (code(kv.delete(pb::DeleteRequest::default()).await), Code::InvalidArgument, "key must not be empty"),
        (
            code(kv.get(pb::GetRequest { key: "k".into(), consistency: 7 }).await),
            Code::InvalidArgument,
            "unknown consistency",
        ),
        (code(kv.txn(pb::TxnRequest::default()).await), Code::InvalidArgument, "at least one operation"),
        (
            code(kv.txn(pb::TxnRequest { ops: vec![pb::TxnOp { op: None }], client: None }).await),
            Code::InvalidArgument,
            "without put or delete",
        ),
        (
            code(
                kv.txn(pb::TxnRequest {
                    ops: vec![pb::TxnOp { op: Some(pb::txn_op::Op::Put(put(b"k".to_vec(), b"v".to_vec()))) }; 129],
                    client: None,
                })
                .await,
            ),
            Code::ResourceExhausted,
            "129 operations",
        ),
        (
            code(kv.list(pb::ListRequest { prefix: vec![b'p'; 5000].into(), ..Default::default() }).await),
            Code::ResourceExhausted,
            "prefix",
        ),
        (code(cluster.leave(pb::LeaveRequest { id: 999 }).await), Code::NotFound, "node 999 is not a member"),
        (
            code(
                cluster.join(pb::JoinRequest { id: 7, peer_addr: "bad".into(), grpc_addr: "127.0.0.1:1".into() }).await,
            ),
            Code::InvalidArgument,
            "bad address",
        ),
        (
            code(
                cluster
                    .join(pb::JoinRequest { id: 0, peer_addr: "127.0.0.1:1".into(), grpc_addr: "127.0.0.1:1".into() })
                    .await,
            ),
            Code::InvalidArgument,
            "at least 1",
        ),
        (
            code(
                cluster
                    .join(pb::JoinRequest { id: 1, peer_addr: "127.0.0.1:1".into(), grpc_addr: "127.0.0.1:1".into() })
                    .await,
            ),
            Code::InvalidArgument,
            "already a member",
        ),
    ];
    for ((got, msg), want, text) in cases {
        assert_eq!(got, want, "{msg}");
        assert!(msg.contains(text), "expected {text:?} in {msg:?}");
    }
    // A message over the gRPC size limit is refused by the transport.
    let huge = kv.put(put(b"k".to_vec(), vec![0; 7 * 1024 * 1024])).await.unwrap_err();
    assert!(matches!(huge.code(), Code::ResourceExhausted | Code::OutOfRange), "{huge:?}");

    let all = TestCluster::list_all(&client, "", pb::Consistency::Linearizable).await.unwrap();
    assert_eq!(all, vec![("keep".to_string(), "me".to_string())]);
    assert_eq!(client.members().await.unwrap().members.len(), 3);
    let after = leader_applied().await;
    assert_eq!(before, after, "a rejected request reached the log");
}
