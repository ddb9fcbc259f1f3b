//! The observability kit in deploy/ (the Grafana dashboard and the Prometheus alert rules)
//! names only metrics a running node exports.

use statenode_e2e::{http, TestCluster};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

fn deploy(path: &str) -> String {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("deploy").join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// Every `statenode_…` metric name in a query.
fn metric_names(query: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in query.match_indices("statenode_") {
        let name: String = query[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        out.insert(name);
    }
    out
}

/// Every `expr` in the dashboard's panels.
fn dashboard_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(serde_json::Value::String(e)) = m.get("expr") {
                out.push(e.clone());
            }
            m.values().for_each(|v| dashboard_queries(v, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_use_only_exported_metrics() {
    let dashboard: serde_json::Value = serde_json::from_str(&deploy("grafana/statenode.json")).expect("dashboard JSON");
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.iter().all(|p| p["targets"].as_array().is_some_and(|t| !t.is_empty())), "a panel without a query");
    let alerts = deploy("prometheus/alerts.yaml");
    queries.extend(alerts.lines().filter_map(|l| l.trim().strip_prefix("expr:")).map(str::to_string));
    assert!(alerts.matches("- alert:").count() >= 3, "the alert rules");
    let used: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    for wanted in [
        "statenode_raft_is_leader",
        "statenode_raft_applied_index",
        "statenode_request_duration_seconds_bucket",
        "statenode_disk_commit_seconds_bucket",
        "statenode_snapshot_bytes",
    ] {
        assert!(used.contains(wanted), "{wanted} is not used: {used:?}");
    }

    // Disk mode: the fsync latency series exist only where something is fsynced.
    let c = TestCluster::start(1, false).await;
    c.wait_leader(None, Duration::from_secs(20)).await;
    let node = &c.nodes[0];
    // A request or two, so the per-request series exist.
    assert_eq!(http::request(&node.http, "PUT", "/v1/kv/m", &[], b"v").await.status, 200);
    assert_eq!(http::get(&node.http, "/v1/kv/m").await.status, 200);
    let text = String::from_utf8(http::get(&node.http, "/metrics").await.body).expect("utf-8");
    let exported: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_string())
        .collect();
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(missing.is_empty(), "not exported by a node: {missing:?}\nexported: {exported:?}");
}
