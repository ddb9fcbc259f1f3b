//! Backup and restore with the real binaries: `statectl backup` from a running three-node
//! cluster, `statenode restore` into a fresh data dir, a new cluster served from it with
//! every key's bytes and revisions as they were; damaged backup files refused.

use statenode_client::v1 as pb;
use statenode_e2e::{bin, free_port, serial, single_client, Proc, TestCluster};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Every key as `(key, value, revision, create_revision, version, expires_at_ms)`.
type Row = (Vec<u8>, Vec<u8>, u64, u64, String, u64);

async fn everything(grpc: &str, consistency: pb::Consistency) -> statenode_client::Result<Vec<Row>> {
    let kvs = TestCluster::list_kvs(&single_client(grpc), "", consistency).await?;
    Ok(kvs
        .into_iter()
        .map(|kv| (kv.key.to_vec(), kv.value.to_vec(), kv.revision, kv.create_revision, kv.version, kv.expires_at_ms))
        .collect())
}

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(bin(args[0])).args(&args[1..]).output().expect("run");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn restore(file: &Path, data: &Path, peer: &str, grpc: &str) -> (bool, String) {
    let (file, data) = (file.to_str().unwrap(), data.to_str().unwrap());
    run(&["statenode", "restore", file, "--data-dir", data, "--id", "1", "--peer-listen", peer, "--grpc", grpc])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_from_a_cluster_restores_into_a_new_one() {
    let _g = serial().await;
    let c = TestCluster::start(3, false).await;
    let client = c.client();
    // Values of every byte, overwrites (versions), deletes, a TTL, through the native API.
    for i in 0..300u32 {
        let value: Vec<u8> = (0..(i % 50) + 1).map(|j| (i * 7 + j) as u8).collect();
        let req = pb::PutRequest { key: format!("k/{i:04}").into(), value: value.into(), ..Default::default() };
        client.put(req).await.unwrap();
    }
    for i in (0..300u32).step_by(3) {
        client.put_simple(format!("k/{i:04}"), format!("second {i}")).await.unwrap();
    }
    for i in (0..300u32).step_by(10) {
        client.delete(pb::DeleteRequest { key: format!("k/{i:04}").into(), ..Default::default() }).await.unwrap();
    }
    let ttl = pb::PutRequest { key: "lease".into(), value: "held".into(), ttl_ms: 3_600_000, ..Default::default() };
    client.put(ttl).await.unwrap();
    client.put_simple("last-before-backup", "yes").await.unwrap();
    let expected = everything(&c.nodes[0].grpc, pb::Consistency::Linearizable).await.unwrap();
    assert_eq!(expected.len(), 272);

    // Through a follower: it serves the backup from its own state once it applied the
    // leader's read index, so the last acknowledged write is in it.
    let leader = c.wait_leader(None, Duration::from_secs(10)).await;
    let file = c.dir.path().join("cluster.backup");
    let (ok, out) = run(&["statectl", "--endpoints", &c.follower(leader).grpc, "backup", file.to_str().unwrap()]);
    assert!(ok, "statectl backup failed: {out}");
    assert!(out.contains("sha256") && out.contains("revision"), "{out}");
    assert!(!Path::new(&format!("{}.part", file.display())).exists(), "the partial file is renamed");
    client.put_simple("after-backup", "no").await.unwrap();

    // Damaged files are refused, and write nothing.
    let bytes = std::fs::read(&file).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("restored");
    let (peer, grpc) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    for (name, damaged, says) in [
        ("truncated", bytes[..bytes.len() / 2].to_vec(), "truncated"),
        (
            "flipped",
            {
                let mut b = bytes.clone();
                b[bytes.len() / 2] ^= 1;
                b
            },
            "corrupt",
        ),
        ("empty", vec![], "not a statenode backup"),
        ("json", b"{\"kvs\": []}".to_vec(), "not a statenode backup"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, damaged).unwrap();
        let (ok, out) = restore(&path, &data, &peer, &grpc);
        assert!(!ok && out.contains(says), "{name}: {out}");
    }
    assert!(!data.join("raft.wal").exists() && !data.join("sm.redb").exists(), "a refused restore writes nothing");

    // Restore, then serve: a one-node cluster with every key as it was.
    let (ok, out) = restore(&file, &data, &peer, &grpc);
    assert!(ok, "restore failed: {out}");
    assert!(out.contains(&format!("restored {} keys", expected.len())), "{out}");
    let (ok, out) = restore(&file, &data, &peer, &grpc);
    assert!(!ok && out.contains("already holds"), "a second restore into the same dir: {out}");
    drop(c);
    let mut args = vec!["serve".to_string()];
    args.extend(TestCluster::node_args(1, &peer, &grpc, &data, false));
    let restored = Proc::spawn(1, args, dir.path().join("r1.log"), peer.clone(), grpc.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    let got = loop {
        if let Ok(s) = single_client(&grpc).status().await {
            if s.leader_id == 1 {
                break everything(&grpc, pb::Consistency::Linearizable).await.unwrap();
            }
        }
        assert!(Instant::now() < deadline, "restored node never led\n{}", restored.log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(got, expected, "keys, values, revisions, versions and TTLs as backed up");
    let max_revision = expected.iter().map(|e| e.2).max().unwrap();
    let next = single_client(&grpc).put_simple("new", "write").await.unwrap();
    assert!(next.revision > max_revision, "new writes come after the restored revisions");

    // A second node joins the restored cluster and catches up.
    let (peer2, grpc2) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let mut args = vec!["join".to_string(), "--seed".to_string(), peer.clone()];
    args.extend(TestCluster::node_args(2, &peer2, &grpc2, &dir.path().join("n2"), false));
    let joined = Proc::spawn(2, args, dir.path().join("r2.log"), peer2, grpc2.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stale = tokio::time::timeout(Duration::from_secs(5), everything(&grpc2, pb::Consistency::Stale)).await;
        if stale.is_ok_and(|s| s.is_ok_and(|s| s.len() == expected.len() + 1)) {
            break;
        }
        assert!(Instant::now() < deadline, "joined node never caught up\n{}", joined.log_tail());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
