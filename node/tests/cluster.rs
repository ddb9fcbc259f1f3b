//! In-process clusters on port 0: forwarding, read barrier, snapshots, membership.

use statenode::config::Config;
use statenode::handle::Consistency;
use statenode::io::Io;
use statenode::kv::{Put, PutCondition};
use statenode::{Listeners, Node, NodeHandle, Role};
use std::time::Duration;
use tokio::net::TcpListener;

struct Cluster {
    nodes: Vec<Node>,
    /// Each node's peer address.
    peers: Vec<String>,
    _dirs: Vec<tempfile::TempDir>,
}

async fn bind() -> (Listeners, String, String) {
    let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (p, g) = (peer.local_addr().unwrap().to_string(), grpc.local_addr().unwrap().to_string());
    (Listeners::from_tcp(peer, grpc, None), p, g)
}

fn config(id: u64, dir: &tempfile::TempDir, peer: &str, grpc: &str, snapshot_threshold: u64) -> Config {
    let mut c = Config { id, memory: false, data_dir: dir.path().to_path_buf(), ..Config::default() };
    c.peer_advertise = Some(peer.into());
    c.grpc_advertise = Some(grpc.into());
    c.raft.snapshot_threshold = snapshot_threshold;
    c.raft.keep_after_snapshot = 5;
    c
}

impl Cluster {
    async fn start(n: u64, snapshot_threshold: u64) -> Cluster {
        Self::start_with(n, snapshot_threshold, |_| {}).await
    }

    /// `start`, with `edit` applied to every node's config.
    async fn start_with(n: u64, snapshot_threshold: u64, edit: impl Fn(&mut Config)) -> Cluster {
        Self::start_io(n, snapshot_threshold, edit, |_| Io::real()).await
    }

    /// `start_with`, node `i` running on `io(i)`.
    async fn start_io(
        n: u64,
        snapshot_threshold: u64,
        edit: impl Fn(&mut Config),
        io: impl Fn(usize) -> Io,
    ) -> Cluster {
        let mut bound = Vec::new();
        for _ in 0..n {
            bound.push(bind().await);
        }
        let addrs: Vec<String> = bound.iter().map(|(_, p, _)| p.clone()).collect();
        let peers: Vec<String> = addrs.iter().enumerate().map(|(i, p)| format!("{}={p}", i + 1)).collect();
        let (mut starts, mut dirs) = (Vec::new(), Vec::new());
        for (i, (l, p, g)) in bound.into_iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let mut c = config(i as u64 + 1, &dir, &p, &g, snapshot_threshold);
            c.bootstrap_expect = n as usize;
            c.peers = peers.clone();
            edit(&mut c);
            // Together: each waits for the others to answer before bootstrapping.
            starts.push(Node::start(c, l, Role::Serve, io(i)));
            dirs.push(dir);
        }
        let nodes = futures::future::join_all(starts).await.into_iter().map(|n| n.unwrap()).collect();
        let cluster = Cluster { nodes, peers: addrs, _dirs: dirs };
        cluster.wait_leader().await;
        cluster
    }

    fn handle(&self, i: usize) -> NodeHandle {
        self.nodes[i].handle()
    }

    async fn wait_leader(&self) -> u64 {
        for _ in 0..200 {
            if let Some(l) = self.handle(0).status().await.leader_id {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no leader elected in 10 s");
    }

    /// A follower that already knows the leader (so it can forward).
    async fn follower(&self) -> usize {
        let leader = self.wait_leader().await;
        let f = (0..self.nodes.len()).find(|i| self.handle(*i).id() != leader).unwrap();
        for _ in 0..200 {
            if self.handle(f).status().await.leader_id.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        f
    }

    async fn stop(self) {
        for n in self.nodes {
            n.shutdown().await;
        }
    }
}

fn put(key: &str, value: &str) -> Put {
    Put {
        key: key.as_bytes().to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        ttl_ms: None,
        condition: PutCondition::Always,
        fencing: None,
        client_ts: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_forwards_writes_and_reads_once() {
    let c = Cluster::start(3, 5000).await;
    let f = c.handle(c.follower().await);
    let r = f.put(put("k", "v"), None).await.unwrap();
    assert!(r.revision > 0);
    let e = f.get(b"k", Consistency::Linearizable).await.unwrap().unwrap();
    assert_eq!(&e.value[..], b"v");
    assert_eq!(e.revision, r.revision);
    c.stop().await;
}

/// A linearizable read through any node sees every write acknowledged before it began
/// (Raft paper §8, ReadIndex), also when many reads share one barrier round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_never_miss_an_acknowledged_write() {
    let c = Cluster::start(3, 5000).await;
    let handles: Vec<NodeHandle> = (0..3).map(|i| c.handle(i)).collect();
    let writer = handles[0].clone();
    let (tx, rx) = tokio::sync::watch::channel(0u64);
    let w = tokio::spawn(async move {
        for i in 1..=150u64 {
            writer.put(put("reg", &i.to_string()), None).await.unwrap();
            tx.send_replace(i);
        }
    });
    let mut readers = Vec::new();
    for r in 0..12 {
        let h = handles[r % 3].clone();
        let rx = rx.clone();
        readers.push(tokio::spawn(async move {
            let mut reads = 0;
            loop {
                let acked = *rx.borrow();
                let got = h.get(b"reg", Consistency::Linearizable).await.unwrap();
                let got: u64 = got.map_or(0, |e| std::str::from_utf8(&e.value).unwrap().parse().unwrap());
                assert!(got >= acked, "read returned {got} after {acked} was acknowledged");
                reads += 1;
                if acked == 150 {
                    return reads;
                }
            }
        }));
    }
    w.await.unwrap();
    let total: u64 = futures_join(readers).await;
    assert!(total > 150);
    c.stop().await;
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<u64>>) -> u64 {
    let mut sum = 0;
    for t in tasks {
        sum += t.await.unwrap();
    }
    sum
}

/// A node added after the leader snapshotted and purged its log catches up by snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_catches_up_through_snapshot() {
    let c = Cluster::start(3, 20).await;
    let h = c.handle(0);
    let mut last = 0;
    for i in 0..120 {
        last = h.put(put(&format!("k{i}"), &i.to_string()), None).await.unwrap().revision;
    }
    assert!(h.status().await.purged_index > 0, "the leader's log should be purged after snapshots");
    let (l, p, g) = bind().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(4, &dir, &p, &g, 20);
    let seed = c.handle(1).status().await.members[0].peer_addr.clone();
    let n4 = Node::start(cfg, l, Role::Join { seed }, Io::real()).await.unwrap();
    let h4 = n4.handle();
    let mut voter = false;
    for _ in 0..300 {
        let s = h.status().await;
        voter = s.members.iter().any(|m| m.id == 4 && m.voter);
        if voter {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(voter, "node 4 never became a voter");
    // A voter may still be applying the last entries: wait for them, then read locally.
    for _ in 0..200 {
        if h4.status().await.applied_index >= last {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in [0, 57, 119] {
        let e = h4.get(format!("k{i}").as_bytes(), Consistency::Stale).await.unwrap();
        assert_eq!(e.map(|e| e.value), Some(i.to_string().into()), "k{i} on the late joiner");
    }
    let members = h.leave(4).await.unwrap();
    assert!(members.iter().all(|m| m.id != 4));
    n4.shutdown().await;
    c.stop().await;
}

/// A data dir created by one node id is never served under another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_refuses_another_node_id() {
    let dir = tempfile::tempdir().unwrap();
    let (l, p, g) = bind().await;
    let n = Node::start(config(1, &dir, &p, &g, 100), l, Role::Serve, Io::real()).await.unwrap();
    n.shutdown().await;
    let (l, p, g) = bind().await;
    let err = Node::start(config(2, &dir, &p, &g, 100), l, Role::Serve, Io::real()).await.err().expect("must refuse");
    assert!(err.to_string().contains("belongs to node 1"), "{err:#}");
}

/// Writes that carry no `(client_id, seq)` (Dapr, native HTTP) are in flight through a
/// follower when the leader shuts down gracefully: openraft fails its pending writes after
/// they were replicated, the follower retries them at the new leader, and the old entries
/// commit too. Each write must still apply once (item 3 of issue 8: a create-only write
/// applied, then its retry found the key taken and reported a conflict — a false failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_retried_after_the_leader_stopped_applies_once() {
    let mut c = Cluster::start(3, 5000).await;
    let f = c.follower().await;
    let leader = c.wait_leader().await;
    let handle = c.handle(f);
    let create = |i: usize| {
        let mut p = put(&format!("once-{i}"), &format!("w{i}"));
        p.condition = PutCondition::IfAbsent;
        p
    };
    let writers: Vec<_> = (0..200)
        .map(|i| {
            let (h, cmd) = (handle.clone(), create(i));
            tokio::spawn(async move { (i, h.put(cmd, None).await) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let li = (0..c.nodes.len()).find(|i| c.handle(*i).id() == leader).unwrap();
    c.nodes.remove(li).shutdown().await;
    let mut false_conflicts = Vec::new();
    for w in writers {
        let (i, r) = w.await.unwrap();
        let Ok(r) = r else { continue };
        if !r.applied {
            let now = handle.get(format!("once-{i}").as_bytes(), Consistency::Linearizable).await.unwrap();
            if now.is_some_and(|e| e.value == format!("w{i}").as_bytes()) {
                false_conflicts.push(i);
            }
        }
    }
    assert!(false_conflicts.is_empty(), "writes that applied but reported a conflict: {false_conflicts:?}");
    c.stop().await;
}

/// A write that carries no reference gets one of its node's own, with the time that node
/// stops retrying it; the state machine keeps its result only that long (plus a grace) and
/// refuses it after. A node whose clock is a minute behind the leader's thus has such writes
/// refused with a timeout, and none applies; callers' own references are not bound to a
/// deadline, and a caller may not pass off a reference as a node's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_past_its_nodes_deadline_is_refused_not_applied() {
    use statenode::kv::ClientRef;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    let lag: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let clocks = lag.clone();
    let c = Cluster::start_io(
        3,
        5000,
        |_| {},
        |i| {
            let (lag, real) = (clocks[i].clone(), statenode::io::system_clock());
            Io { clock: Arc::new(move || real() - lag.load(Ordering::Relaxed)), ..Io::real() }
        },
    )
    .await;
    let f = c.follower().await;
    let handle = c.handle(f);
    handle.put(put("before", "v"), None).await.expect("clocks agree: it applies");

    lag[f].store(60_000, Ordering::Relaxed);
    let err = handle.put(put("late", "v"), None).await.expect_err("refused");
    assert!(matches!(err, statenode::Error::Timeout(_)) && err.to_string().contains("past its deadline"), "{err}");
    assert!(handle.get(b"late", Consistency::Linearizable).await.unwrap().is_none(), "nothing applied");
    assert_eq!(handle.metrics().late_writes(), 1, "counted in statenode_late_writes_total");
    let caller = ClientRef { client_id: 77, seq: 1 };
    handle.put(put("caller", "v"), Some(caller)).await.expect("a caller's reference has no deadline");
    let forged = ClientRef { client_id: 77, seq: ClientRef::OWN | 2 };
    let err = handle.put(put("forged", "v"), Some(forged)).await.expect_err("refused");
    assert!(matches!(err, statenode::Error::InvalidArgument(_)), "{err}");

    lag[f].store(0, Ordering::Relaxed);
    handle.put(put("after", "v"), None).await.expect("clocks agree again");
    c.stop().await;
}

/// A commit index rides the leader's next AppendEntries to a follower instead of a message
/// of its own (ADR 0015), and an idle follower still learns it at once, not at the next
/// heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_rides_the_next_append_and_an_idle_follower_learns_it_at_once() {
    let c = Cluster::start_with(3, 5000, |c| {
        c.raft.heartbeat_ms = 1000;
        c.raft.election_min_ms = 2000;
        c.raft.election_max_ms = 2500;
    })
    .await;
    let leader = c.wait_leader().await;
    let l = (0..3).find(|i| c.handle(*i).id() == leader).unwrap();
    let h = c.handle(l);
    h.put(put("warm", "v"), None).await.unwrap();

    let (sent0, folded0) = h.metrics().appends();
    let n = 200;
    for i in 0..n {
        h.put(put(&format!("k{i}"), "v"), None).await.unwrap();
    }
    let (sent, folded) = h.metrics().appends();
    let (sent, folded) = ((sent - sent0) as f64 / n as f64, (folded - folded0) as f64 / n as f64);
    // Two followers: one message each per write; four when each commit went on its own.
    assert!(sent < 3.0, "{sent:.2} AppendEntries per write ({folded:.2} folded)");
    assert!(folded > 1.0, "{folded:.2} commits folded per write");

    for i in 0..5 {
        let key = format!("idle{i}");
        h.put(put(&key, "v"), None).await.unwrap();
        let at = tokio::time::Instant::now();
        for f in (0..3).filter(|f| *f != l) {
            while c.handle(f).get(key.as_bytes(), Consistency::Stale).await.unwrap().is_none() {
                assert!(at.elapsed() < Duration::from_millis(300), "follower {f} waited for a heartbeat");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        // Idle: no write follows for longer than the folded commit's wait.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.stop().await;
}

/// With a cluster secret, members work as before and an outsider that reaches the peer port
/// can neither write through `Forward` nor ask anything; the right secret is let in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_port_refuses_rpcs_without_the_cluster_secret() {
    use statenode::kv::{Command, Op};
    use statenode::raft::network::{encode, SECRET_HEADER};
    use statenode::raft::peer::PeerRequest;
    use statenode_proto::v1::peer_client::PeerClient;

    const SECRET: &str = "the-members-know-this-one";
    let c = Cluster::start_with(3, 5000, |cfg| cfg.cluster_secret = Some(SECRET.into())).await;
    let f = c.handle(c.follower().await);
    f.put(put("k", "v"), None).await.expect("members forward with the secret");

    let forged = PeerRequest::Write(Command { client: None, now_ms: 0, op: Op::Put(put("forged", "x")) });
    for (i, addr) in c.peers.iter().enumerate() {
        for secret in [None, Some("wrong-secret-of-some-length"), Some("the-members-know-this-on")] {
            let mut peer = PeerClient::connect(format!("http://{addr}")).await.unwrap();
            let mut req = tonic::Request::new(encode(&forged));
            if let Some(s) = secret {
                req.metadata_mut().insert(SECRET_HEADER, s.parse().unwrap());
            }
            let err = peer.forward(req).await.expect_err("refused");
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "node {i}, secret {secret:?}: {err}");
        }
        let mut peer = PeerClient::connect(format!("http://{addr}")).await.unwrap();
        let mut req = tonic::Request::new(encode(&PeerRequest::Status));
        req.metadata_mut().insert(SECRET_HEADER, SECRET.parse().unwrap());
        peer.forward(req).await.expect("the right secret is let in");
    }
    assert!(f.get(b"forged", Consistency::Linearizable).await.unwrap().is_none(), "nothing was written");
    c.stop().await;
}

/// A member's forwarded requests meet the limits the doors apply: an oversized value, too
/// many keys in one read, an unbounded list page. (Before, a member's `Forward` went straight
/// to Raft and to the state machine.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_requests_meet_the_front_door_limits() {
    use statenode::api::ListQuery;
    use statenode::kv::{Command, Op};
    use statenode::raft::network::{decode, encode, SECRET_HEADER};
    use statenode::raft::peer::{PeerReply, PeerRequest};
    use statenode_proto::v1::peer_client::PeerClient;

    const SECRET: &str = "the-members-know-this-one";
    let c = Cluster::start_with(3, 5000, |cfg| {
        cfg.cluster_secret = Some(SECRET.into());
        cfg.limits.max_value_bytes = 1024;
        cfg.limits.max_bulk_read_keys = 8;
        cfg.limits.list_max_limit = 10;
        cfg.limits.list_default_limit = 10;
        cfg.limits.max_response_bytes = 1 << 20;
    })
    .await;
    let leader = c.wait_leader().await as usize - 1;
    for i in 0..20 {
        c.handle(leader).put(put(&format!("l{i:02}"), "v"), None).await.unwrap();
    }
    let ask = |req: PeerRequest| {
        let addr = c.peers[leader].clone();
        async move {
            let mut peer = PeerClient::connect(format!("http://{addr}")).await.unwrap();
            let mut r = tonic::Request::new(encode(&req));
            r.metadata_mut().insert(SECRET_HEADER, SECRET.parse().unwrap());
            let reply = peer.forward(r).await.expect("the RPC itself is let in").into_inner();
            decode::<Result<PeerReply, statenode::error::Error>>(&reply).unwrap()
        }
    };
    let big = Put { value: vec![b'x'; 2048].into(), ..put("big", "") };
    let r = ask(PeerRequest::Write(Command { client: None, now_ms: 0, op: Op::Put(big) })).await;
    assert!(matches!(r, Err(statenode::error::Error::TooLarge(_))), "{r:?}");
    let keys = (0..9).map(|i| bytes::Bytes::from(format!("l{i:02}"))).collect();
    let r = ask(PeerRequest::Read(keys)).await;
    assert!(matches!(r, Err(statenode::error::Error::TooLarge(_))), "{r:?}");
    let q = ListQuery { prefix: "l".into(), after: bytes::Bytes::new(), limit: 1_000_000 };
    match ask(PeerRequest::List(q)).await {
        Ok(PeerReply::List(page)) => assert_eq!(page.entries.len(), 10, "the page is capped at list_max_limit"),
        other => panic!("{other:?}"),
    }
    let got = c.handle(leader).get(b"big", Consistency::Linearizable).await.unwrap();
    assert!(got.is_none(), "nothing was written");
    c.stop().await;
}
