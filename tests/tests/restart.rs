//! Real processes: the outages a quorum survives. A full stop where one node does not come
//! back, and a node whose disk was wiped (it must never rejoin as its old self).

use statenode_client::v1 as pb;
use statenode_client::{Client, Options};
use statenode_e2e::{serial, single_client, TestCluster};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Writes `n` keys under `prefix`; returns what was acknowledged.
async fn write_keys(client: &Client, prefix: &str, n: usize) -> BTreeMap<String, String> {
    let mut acked = BTreeMap::new();
    for i in 0..n {
        let (k, v) = (format!("{prefix}-{i:04}"), format!("v{i}"));
        client.put_simple(k.clone(), v.clone()).await.unwrap();
        acked.insert(k, v);
    }
    acked
}

/// Every acknowledged write, read linearizably through `client`.
async fn assert_all_readable(client: &Client, acked: &BTreeMap<String, String>, what: &str) {
    let got: BTreeMap<_, _> =
        TestCluster::list_all(client, "", pb::Consistency::Linearizable).await.unwrap().into_iter().collect();
    for (k, v) in acked {
        assert_eq!(got.get(k), Some(v), "{what}: acknowledged write {k} lost");
    }
}

/// Waits until the node at `grpc` serves every acknowledged write from its own state.
async fn wait_caught_up(grpc: &str, acked: &BTreeMap<String, String>, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(kvs) = TestCluster::list_all(&single_client(grpc), "", pb::Consistency::Stale).await {
            let got: BTreeMap<_, _> = kvs.into_iter().collect();
            if acked.iter().all(|(k, v)| got.get(k) == Some(v)) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "node at {grpc} never caught up\n{}", log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn client_of(endpoints: &[String]) -> Client {
    let opts = Options { deadline: Duration::from_secs(10), ..Options::default() };
    Client::new(endpoints, opts).expect("client")
}

/// Power loss where one machine does not come back: stop all three, start two. They elect a
/// leader from their disks at once and serve every acknowledged write; the third catches
/// up when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_stop_then_only_two_come_back() {
    let _g = serial().await;
    let mut c = TestCluster::start(3, false).await;
    let mut acked = write_keys(&c.client(), "before", 100).await;
    for n in &mut c.nodes {
        n.terminate();
    }
    c.node(1).start_with(&[]);
    c.node(2).start_with(&[]);
    let started = Instant::now();
    let leader = c.wait_leader(None, Duration::from_secs(20)).await;
    println!("two of three nodes elected node {leader} after {:?}", started.elapsed());
    let two = client_of(&[c.nodes[0].grpc.clone(), c.nodes[1].grpc.clone()]);
    assert_all_readable(&two, &acked, "after a full stop, two nodes back").await;
    acked.extend(write_keys(&two, "two", 50).await);
    // Both survivors stop again (SIGKILL this time) and come back: still no third node.
    c.node(1).kill9();
    c.node(2).kill9();
    c.node(1).start_with(&[]);
    c.node(2).start_with(&[]);
    c.wait_leader(None, Duration::from_secs(20)).await;
    assert_all_readable(&two, &acked, "after a second restart of the two").await;
    c.node(3).start_with(&[]);
    let log3 = c.nodes[2].log_tail();
    wait_caught_up(&c.nodes[2].grpc.clone(), &acked, || log3.clone()).await;
    assert_all_readable(&c.client(), &acked, "all three back").await;
}

/// The leader is killed (-9) right after acknowledging writes and restarted before anyone
/// else stands for election (long election timeouts): a linearizable read through it still
/// holds every acknowledged write. openraft 0.9 lets a leader whose vote is on disk resume
/// its term without an election, with the commit index it finds on disk as its read index;
/// that index is written lazily, so the read came back without the last writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_reads_its_last_acknowledged_writes() {
    let _g = serial().await;
    let conf = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(conf.path(), "[raft]\nelection_min_ms = 1500\nelection_max_ms = 3000\n").unwrap();
    let mut c = TestCluster::start_with_args(3, false, &["--config", conf.path().to_str().unwrap()]).await;
    let endpoints: Vec<String> = c.nodes.iter().map(|n| n.grpc.clone()).collect();
    for round in 0..3 {
        // A write through any node first: then there is a leader, and every node knows it.
        client_of(&endpoints).put_simple(format!("start{round}"), "v").await.unwrap();
        let leader = c.wait_leader(None, Duration::from_secs(30)).await;
        let grpc = c.node(leader).grpc.clone();
        let acked = write_keys(&single_client(&grpc), &format!("round{round}"), 30).await;
        c.node(leader).kill9();
        c.node(leader).start_with(&[]);
        assert_all_readable(&client_of(&[grpc]), &acked, &format!("round {round}, leader {leader} restarted")).await;
    }
}

/// Node 3's disk is wiped. Started again with the same flags it refuses to run (it would
/// come back with no memory of its votes or of the writes it acknowledged), naming the fix.
/// With `--replace-lost-member` it joins under a new id, catches up, becomes a voter, and
/// the old member 3 is removed; the cluster then survives losing node 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_disk_never_rejoins_as_its_old_self() {
    let _g = serial().await;
    let mut c = TestCluster::start(3, false).await;
    let client = c.client();
    let mut acked = write_keys(&client, "before", 100).await;
    c.node(3).kill9();
    std::fs::remove_dir_all(c.dir.path().join("n3")).unwrap();
    c.node(3).start_with(&[]);
    let status = c.node(3).wait_exit(Duration::from_secs(30));
    assert!(status.is_some_and(|s| !s.success()), "a wiped node must refuse to start\n{}", c.node(3).log_tail());
    let log = c.node(3).log_tail();
    assert!(log.contains("--replace-lost-member") && log.contains("member 3"), "{log}");
    let members = client.members().await.unwrap().members;
    assert!(members.iter().any(|m| m.id == 3), "the refused node changed nothing: {members:?}");
    acked.extend(write_keys(&client, "down", 20).await);

    c.node(3).start_with(&["--replace-lost-member"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let new_id = loop {
        if let Ok(r) = client.members().await {
            let voters: Vec<u64> = r.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
            let replaced = r.members.len() == 3 && voters.len() == 3 && !voters.contains(&3);
            if let (true, Some(m)) = (replaced, r.members.iter().find(|m| m.id != 1 && m.id != 2)) {
                break m.id;
            }
        }
        assert!(Instant::now() < deadline, "node 3 was never replaced\n{}", c.node(3).log_tail());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let grpc3 = c.nodes[2].grpc.clone();
    let status = single_client(&grpc3).status().await.unwrap();
    assert_eq!(status.id, new_id, "the replacement runs under its new id");
    let log3 = c.nodes[2].log_tail();
    wait_caught_up(&grpc3, &acked, || log3.clone()).await;
    // The replacement is a full voter: the cluster keeps a quorum without node 1.
    c.node(1).kill9();
    let rest = client_of(&[c.nodes[1].grpc.clone(), grpc3.clone()]);
    acked.extend(write_keys(&rest, "after", 20).await);
    assert_all_readable(&rest, &acked, "node 2 and the replacement").await;
    // Restarted with the same flags (its --id still says 3), it keeps its new id.
    c.node(3).kill9();
    c.node(1).start_with(&[]);
    c.node(3).start_with(&[]);
    c.wait_leader(None, Duration::from_secs(20)).await;
    assert_eq!(single_client(&grpc3).status().await.unwrap().id, new_id);
}

/// Node 3's disk is wiped and it is started as a lone node (no `--peers`): it forms a
/// cluster of its own. Its old cluster's leader keeps sending it Raft messages; they must be
/// refused (another cluster), or the lone node would be pulled back in as an amnesiac node 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_that_bootstraps_alone_is_never_pulled_back() {
    let _g = serial().await;
    let mut c = TestCluster::start(3, false).await;
    let client = c.client();
    let acked = write_keys(&client, "before", 20).await;
    c.node(3).kill9();
    let data = c.dir.path().join("n3");
    std::fs::remove_dir_all(&data).unwrap();
    let (peer, grpc) = (c.nodes[2].peer.clone(), c.nodes[2].grpc.clone());
    let mut args = vec!["serve".to_string()];
    args.extend(TestCluster::node_args(3, &peer, &grpc, &data, false));
    let lone = statenode_e2e::Proc::spawn(3, args, c.dir.path().join("n3-lone.log"), peer, grpc.clone());
    let probe = single_client(&grpc);
    let deadline = Instant::now() + Duration::from_secs(10);
    while probe.status().await.map_or(true, |s| s.leader_id != 3) {
        assert!(Instant::now() < deadline, "the lone node never led itself\n{}", lone.log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The old leader retries every 200 ms or so: give it time to try many times.
    for _ in 0..30 {
        let s = probe.status().await.unwrap();
        let ids: Vec<u64> = s.members.iter().map(|m| m.id).collect();
        assert_eq!(ids, [3], "the lone node was pulled into its old cluster\n{}", lone.log_tail());
        let got = probe.get("before-0000", pb::Consistency::Stale).await.unwrap();
        assert!(got.is_none(), "the old cluster replicated into the lone node");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The old cluster carries on without it.
    let two = client_of(&[c.nodes[0].grpc.clone(), c.nodes[1].grpc.clone()]);
    assert_all_readable(&two, &acked, "the old cluster").await;
}
