//! The MQTT door from outside: paho-mqtt (MQTT v5, `pip install paho-mqtt==2.1.*`) speaks the
//! AIO state store protocol and plain pub/sub to a follower of a real three-node cluster,
//! while the change it observes comes in over HTTP through another node; sessions and
//! messages move between nodes; a node with authorization rules enforces them.

use statenode_e2e::{Proc, TestCluster};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn py() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py")
}

/// Runs `tests/py/{script}` with `args`; it must succeed and print `passed`.
fn run_script(script: &str, args: &[&String], passed: &str, node: &Proc) {
    let out = Command::new("python3").arg(py().join(script)).args(args).output().expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}\nnode log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.log_tail()
    );
    assert!(stdout.contains(passed), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_speaks_the_state_store_protocol_through_a_follower() {
    let c = TestCluster::start(3, false).await;
    let leader = c.wait_leader(None, Duration::from_secs(20)).await;
    let follower = c.nodes.iter().find(|n| n.id != leader).expect("a follower");
    let other = c.nodes.iter().find(|n| n.id != follower.id).expect("another node");
    let args = [&follower.mqtt, &other.http, &other.mqtt];
    run_script("mqtt_statestore.py", &args, "all MQTT checks passed", follower);
}

/// A node with authorization rules (tests/py/authz.toml): connect, publish, subscribe and
/// key access allowed only as the rules say, with the AIO reason codes and `-ERR` text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_meets_the_authorization_rules() {
    let rules = py().join("authz.toml");
    let token = "operator-token-0123456789".to_string();
    let args = ["--config", rules.to_str().expect("utf-8 path"), "--api-token", &token];
    let c = TestCluster::start_with_args(1, true, &args).await;
    c.wait_leader(None, Duration::from_secs(20)).await;
    let node = &c.nodes[0];
    let script_args = [&node.mqtt, &node.http, &token];
    run_script("mqtt_authz.py", &script_args, "all MQTT authorization checks passed", node);
}
