//! `statenode dev`: a local cluster of child processes on loopback.

use std::path::PathBuf;
use std::process::Stdio;
use tokio::process::{Child, Command};

/// Base ports of the nodes' listeners: node i uses base + i - 1.
pub struct Ports {
    pub peer: u16,
    pub grpc: u16,
    pub http: u16,
    pub mqtt: u16,
}

pub async fn run(nodes: u16, memory: bool, base: Ports, data_dir: PathBuf) -> anyhow::Result<()> {
    let Ports { peer: peer_base, grpc: grpc_base, http: http_base, mqtt: mqtt_base } = base;
    anyhow::ensure!((1..=9).contains(&nodes), "--nodes must be between 1 and 9");
    let exe = std::env::current_exe()?;
    let peers: Vec<String> = (1..=nodes).map(|i| format!("{i}=127.0.0.1:{}", peer_base + i - 1)).collect();
    let mut children: Vec<Child> = Vec::new();
    for i in 1..=nodes {
        let (peer, grpc, http, mqtt) = (peer_base + i - 1, grpc_base + i - 1, http_base + i - 1, mqtt_base + i - 1);
        let mut cmd = Command::new(&exe);
        cmd.arg("serve")
            .args(["--id", &i.to_string()])
            .args(["--peer-listen", &format!("127.0.0.1:{peer}")])
            .args(["--grpc", &format!("127.0.0.1:{grpc}")])
            .args(["--http", &format!("127.0.0.1:{http}")])
            .args(["--mqtt", &format!("127.0.0.1:{mqtt}")])
            .args(["--bootstrap-expect", &nodes.to_string()])
            .args(["--peers", &peers.join(",")])
            .args(["--data-dir", &data_dir.join(format!("node-{i}")).to_string_lossy()])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if memory {
            cmd.arg("--memory");
        }
        children.push(cmd.spawn()?);
        println!(
            "node {i}: peer 127.0.0.1:{peer}  grpc 127.0.0.1:{grpc}  http 127.0.0.1:{http}  mqtt 127.0.0.1:{mqtt}"
        );
    }
    let endpoints: Vec<String> = (0..nodes).map(|i| format!("127.0.0.1:{}", grpc_base + i)).collect();
    println!("try: statectl --endpoints {} members", endpoints.join(","));
    println!("Ctrl-C stops all nodes");
    // SIGTERM too: dying on it would orphan the children.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = wait_any(&mut children) => println!("a node exited; stopping the others"),
    }
    for c in &mut children {
        if let Some(pid) = c.id() {
            // SIGTERM first, for a graceful shutdown.
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
    }
    for mut c in children {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), c.wait()).await;
        let _ = c.kill().await;
    }
    Ok(())
}

async fn wait_any(children: &mut [Child]) {
    let waits = children.iter_mut().map(|c| Box::pin(c.wait()));
    let _ = futures::future::select_all(waits).await;
}
