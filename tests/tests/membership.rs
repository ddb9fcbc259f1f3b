//! Real processes: a fourth node joins with `statenode join`, becomes a voter, then leaves.

use statenode_e2e::{bin, free_port, serial, Proc, TestCluster};
use std::time::{Duration, Instant};

async fn wait_members(
    c: &statenode_client::Client,
    pred: impl Fn(&[statenode_client::v1::Member]) -> bool,
) -> Vec<statenode_client::v1::Member> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = c.members().await {
            if pred(&r.members) {
                return r.members;
            }
        }
        assert!(Instant::now() < deadline, "membership never reached the expected state");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_fourth_node_then_leave() {
    let _g = serial().await;
    let c = TestCluster::start(3, false).await;
    let client = c.client();
    for i in 0..50 {
        client.put_simple(format!("pre-{i}"), "v").await.unwrap();
    }
    let (peer, grpc) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let mut args = vec!["join".to_string(), "--seed".into(), c.nodes[1].peer.clone()];
    args.extend(TestCluster::node_args(4, &peer, &grpc, &c.dir.path().join("n4"), false));
    let n4 = Proc::spawn(4, args, c.dir.path().join("n4.log"), peer, grpc.clone());
    let members = wait_members(&client, |m| m.len() == 4 && m.iter().all(|m| m.voter)).await;
    assert!(members.iter().any(|m| m.id == 4 && m.grpc_addr == grpc), "{members:?}\n{}", n4.log_tail());
    // The new voter serves the data written before it joined. A stale read is the node's own
    // applied state, which may trail its promotion by a heartbeat (it learns the commit index
    // from the leader): wait for it, boundedly.
    let mut got = None;
    for _ in 0..50 {
        got = n4.client().get("pre-49", statenode_client::v1::Consistency::Stale).await.unwrap();
        if got.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(got.map(|kv| kv.value.to_vec()), Some(b"v".to_vec()));

    let out = std::process::Command::new(bin("statenode"))
        .args(["leave", "--id", "4", "--endpoints", &c.endpoints().join(",")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("node 4 removed"));
    let members = wait_members(&client, |m| m.len() == 3).await;
    assert!(members.iter().all(|m| m.id != 4));
    drop(n4);
    client.put_simple("after-leave", "ok").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_has_three_voters_and_one_leader() {
    let _g = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let (pb, gb, hb, mb) = (free_port_block(), free_port_block(), free_port_block(), free_port_block());
    let mut dev = std::process::Command::new(bin("statenode"))
        .args(["dev", "--nodes", "3", "--memory", "--peer-base", &pb.to_string(), "--grpc-base", &gb.to_string()])
        .args(["--http-base", &hb.to_string(), "--mqtt-base", &mb.to_string()])
        .args(["--data-dir", &dir.path().to_string_lossy()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let endpoints = format!("127.0.0.1:{gb},127.0.0.1:{}", gb + 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let out =
            std::process::Command::new(bin("statectl")).args(["--endpoints", &endpoints, "members"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.matches("voter").count() == 3 && text.contains('*') {
            break text;
        }
        assert!(Instant::now() < deadline, "dev cluster never formed: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(text.lines().filter(|l| l.contains('*')).count(), 1, "{text}");
    // SIGTERM (what a service manager sends) stops dev and every node it started.
    statenode_e2e::signal(dev.id(), "TERM");
    let _ = dev.wait();
    let probe = statenode_e2e::single_client(&format!("127.0.0.1:{gb}"));
    assert!(probe.status().await.is_err(), "a dev node outlived `statenode dev`");
}

/// Three consecutive free ports (best effort: probe the block).
fn free_port_block() -> u16 {
    for _ in 0..50 {
        let p = free_port();
        if p < 65000 && (1..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            return p;
        }
    }
    panic!("no block of three free ports");
}
