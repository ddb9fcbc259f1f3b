//! The real Dapr Python SDK (`pip install dapr==1.19.*`), unmodified, against real
//! statenode processes: every state feature through a follower, a leader killed under
//! load, and a program with no configuration at all against `statenode serve`.

use statenode_e2e::{bin, serial, signal, TestCluster};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py").join(name)
}

/// `python3 <script>` pointed at one node through the SDK's own environment variables.
fn python(name: &str, args: &[&str], node: Option<&statenode_e2e::Proc>) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(script(name)).args(args).env("DAPR_HEALTH_TIMEOUT", "30");
    for var in ["DAPR_HTTP_PORT", "DAPR_GRPC_PORT", "DAPR_RUNTIME_HOST", "DAPR_HTTP_ENDPOINT", "DAPR_GRPC_ENDPOINT"] {
        cmd.env_remove(var);
    }
    cmd.env_remove("DAPR_API_TOKEN");
    if let Some(n) = node {
        let port = |a: &str| a.rsplit_once(':').unwrap().1.to_string();
        cmd.env("DAPR_RUNTIME_HOST", "127.0.0.1")
            .env("DAPR_HTTP_PORT", port(&n.http))
            .env("DAPR_GRPC_PORT", port(&n.grpc));
    }
    cmd
}

/// Kills the child by PID when dropped (a failed assertion must not leak processes).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs to completion within `limit`; returns (success, stdout, stderr).
fn run(mut cmd: Command, limit: Duration) -> (bool, String, String) {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("python3 runs");
    let mut child = Reaped(child);
    let start = Instant::now();
    loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            let mut out = String::new();
            let mut err = String::new();
            use std::io::Read;
            let _ = child.0.stdout.take().unwrap().read_to_string(&mut out);
            let _ = child.0.stderr.take().unwrap().read_to_string(&mut err);
            return (status.success(), out, err);
        }
        assert!(start.elapsed() < limit, "python did not finish within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_state_features_through_a_follower() {
    let _g = serial().await;
    let c = TestCluster::start(3, false).await;
    let leader = c.wait_leader(None, Duration::from_secs(20)).await;
    let follower = c.follower(leader);
    let cmd = python("sdk_state.py", &[], Some(follower));
    let (ok, out, err) = tokio::task::spawn_blocking(move || run(cmd, Duration::from_secs(120))).await.unwrap();
    assert!(ok && out.contains("ok"), "sdk_state.py failed:\n{out}\n{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_keeps_working_while_the_leader_is_killed() {
    let _g = serial().await;
    let mut c = TestCluster::start(3, false).await;
    let leader = c.wait_leader(None, Duration::from_secs(20)).await;
    let cmd = python("sdk_failover.py", &["300"], Some(c.follower(leader)));
    let mut child = Reaped({
        let mut cmd = cmd;
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("python3 runs")
    });
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // Kill the leader once a third of the writes are acknowledged.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut lines = Vec::new();
    loop {
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("python stalled before the kill");
        let done = line == "progress 100";
        lines.push(line);
        if done {
            break;
        }
        assert!(Instant::now() < deadline);
    }
    let killed_at = Instant::now();
    c.node(leader).kill9();
    let new_leader = c.wait_leader(Some(leader), Duration::from_secs(20)).await;
    assert_ne!(new_leader, leader);
    // The same client finishes every write and reads them all back.
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
        lines.push(line);
    }
    let status = child.0.wait().expect("wait");
    let mut err = String::new();
    use std::io::Read;
    let _ = child.0.stderr.take().unwrap().read_to_string(&mut err);
    let last = lines.last().cloned().unwrap_or_default();
    assert!(status.success() && last.starts_with("ok 300 writes"), "{last}\n{err}");
    eprintln!("leader {leader} killed; new leader {new_leader} after {:?}; {last}", killed_at.elapsed());
    // Every acknowledged write is on the surviving nodes.
    let survivors = c.client();
    let kvs =
        TestCluster::list_all(&survivors, "failover-", statenode_client::v1::Consistency::Linearizable).await.unwrap();
    assert_eq!(kvs.len(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmodified_dapr_program_runs_against_statenode_serve_with_no_flags() {
    let _g = serial().await;
    for port in [3500, 50001, 7000, 1883] {
        assert!(
            std::net::TcpListener::bind(("0.0.0.0", port)).is_ok(),
            "port {port} is taken: this test runs `statenode serve` on its default ports"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let node = Command::new(bin("statenode"))
        .arg("serve")
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("statenode serve");
    let node = Reaped(node);
    let cmd = python("sdk_minimal.py", &[], None);
    let (ok, out, err) = tokio::task::spawn_blocking(move || run(cmd, Duration::from_secs(60))).await.unwrap();
    signal(node.0.id(), "TERM");
    assert!(ok && out.contains("ok"), "sdk_minimal.py failed:\n{out}\n{err}");
    assert!(dir.path().join("statenode-data").join("raft.wal").is_dir(), "data in ./statenode-data");
}
