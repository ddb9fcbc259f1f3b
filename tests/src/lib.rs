//! Harness for end-to-end tests: real `statenode` processes on loopback, killed by PID.

pub mod http;
pub mod proxy;

use statenode_client::{v1 as pb, Client, Options};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Cluster tests share two cores: run them one at a time so timing checks stay meaningful.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Path of a workspace binary, built once (a no-op when cargo already built it).
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "statenode", "-p", "statenode-client", "--bins"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the binaries failed");
        // target/<profile>/deps/<test-binary> → target/<profile>
        let exe = std::env::current_exe().expect("current exe");
        exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
    });
    dir.join(name)
}

/// A port for a node to listen on, from below the kernel's ephemeral range: a port the OS
/// hands out (`bind :0`) can be taken by some outgoing connection before the node binds it
/// (CI saw "Address already in use"). Ports are handed out in steps of three from a
/// per-process random start and checked free (so `port + 1` and `port + 2` are never handed
/// out again by this process: callers may use them as a block).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse::<u32>().ok()))
        .unwrap_or(32768);
    let (lo, hi) = (10_000u32, ephemeral_low.clamp(12_000, 65_000));
    if NEXT.load(Ordering::Relaxed) == 0 {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(7, |d| d.subsec_nanos());
        let seed = std::process::id() ^ now;
        let _ = NEXT.compare_exchange(0, seed.max(1), Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..(hi - lo) / 3 {
        let port = (lo + NEXT.fetch_add(3, Ordering::Relaxed) % (hi - lo - 3)) as u16;
        let free = |host: &str| std::net::TcpListener::bind((host, port)).is_ok();
        if free("127.0.0.1") && free("0.0.0.0") {
            return port;
        }
    }
    panic!("no free port below {hi}");
}

/// Sends a signal to a process by PID.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").args([format!("-{sig}"), pid.to_string()]).status().map(|s| s.success());
    assert!(matches!(ok, Ok(true)), "kill -{sig} {pid} failed");
}

/// One `statenode` process; killed when dropped.
pub struct Proc {
    pub id: u64,
    pub peer: String,
    pub grpc: String,
    /// The HTTP front door (`--http` in the arguments).
    pub http: String,
    /// The MQTT listener (`--mqtt`), empty when not given.
    pub mqtt: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    pub fn spawn(id: u64, args: Vec<String>, log: PathBuf, peer: String, grpc: String) -> Proc {
        let flag = |name: &str| args.iter().position(|a| a == name).map(|i| args[i + 1].clone());
        let http = flag("--http").expect("--http in args");
        let mqtt = flag("--mqtt").unwrap_or_default();
        let mut p = Proc { id, peer, grpc, http, mqtt, args, log, child: None };
        p.start();
        p
    }

    /// Starts the process again (after `terminate` or `kill9`) with its arguments plus `extra`.
    pub fn start_with(&mut self, extra: &[&str]) {
        assert!(self.child.is_none(), "node {} is still running", self.id);
        self.args.extend(extra.iter().map(|a| a.to_string()));
        self.start();
    }

    /// SIGTERM (graceful shutdown), then waits for the process to exit.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "TERM");
            let _ = c.wait();
        }
    }

    /// Waits up to `within` for the process to exit on its own; its exit status, if it did.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut()?.try_wait().expect("try_wait") {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = Command::new(bin("statenode"))
            .args(&self.args)
            .env("RUST_LOG", "warn,statenode=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn statenode");
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "KILL");
            let _ = c.wait();
        }
    }

    /// Restarts with the same arguments (same data dir in disk mode).
    pub fn restart(&mut self) {
        self.kill9();
        self.start();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn client(&self) -> Client {
        single_client(&self.grpc)
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A client bound to one node only, with a short deadline (for probing that node).
pub fn single_client(addr: &str) -> Client {
    let opts =
        Options { deadline: Duration::from_secs(2), attempt_timeout: Duration::from_secs(1), ..Options::default() };
    Client::new(&[addr], opts).expect("client")
}

pub struct TestCluster {
    /// Sent by `client()` and the leader probes (clusters started with `--api-token`).
    pub token: Option<String>,
    /// The certs directory of a TLS cluster (`--certs-dir`): clients trust its CA.
    pub certs: Option<PathBuf>,
    pub nodes: Vec<Proc>,
    pub dir: tempfile::TempDir,
    pub memory: bool,
}

impl TestCluster {
    pub fn node_args(id: u64, peer: &str, grpc: &str, data: &Path, memory: bool) -> Vec<String> {
        let mut a = vec![
            "--id".into(),
            id.to_string(),
            "--peer-listen".into(),
            peer.into(),
            "--grpc".into(),
            grpc.into(),
            "--http".into(),
            format!("127.0.0.1:{}", free_port()),
            "--mqtt".into(),
            format!("127.0.0.1:{}", free_port()),
            "--data-dir".into(),
            data.to_string_lossy().into_owned(),
        ];
        if memory {
            a.push("--memory".into());
        }
        a
    }

    pub async fn start(n: u64, memory: bool) -> TestCluster {
        Self::start_with(n, memory, false, &[]).await.0
    }

    /// A cluster whose nodes all get `extra` flags.
    pub async fn start_with_args(n: u64, memory: bool, extra: &[&str]) -> TestCluster {
        Self::start_with(n, memory, false, extra).await.0
    }

    /// A cluster whose peer links all pass through loopback proxies (one in front of each
    /// node's peer port), so tests can cut, slow or drop them.
    pub async fn start_proxied(n: u64, memory: bool) -> (TestCluster, Vec<proxy::Proxy>) {
        Self::start_with(n, memory, true, &[]).await
    }

    async fn start_with(n: u64, memory: bool, proxied: bool, extra: &[&str]) -> (TestCluster, Vec<proxy::Proxy>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let addrs: Vec<(String, String)> =
            (0..n).map(|_| (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()))).collect();
        let mut proxies = Vec::new();
        if proxied {
            for (p, _) in &addrs {
                proxies.push(proxy::Proxy::start(p.clone()).await);
            }
        }
        let advertised: Vec<String> =
            addrs.iter().enumerate().map(|(i, (p, _))| proxies.get(i).map_or(p.clone(), |x| x.addr.clone())).collect();
        let peers: Vec<String> = advertised.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect();
        let nodes = addrs
            .iter()
            .enumerate()
            .map(|(i, (p, g))| {
                let id = i as u64 + 1;
                let mut args = vec!["serve".to_string()];
                args.extend(Self::node_args(id, p, g, &dir.path().join(format!("n{id}")), memory));
                args.extend(["--bootstrap-expect".into(), n.to_string(), "--peers".into(), peers.join(",")]);
                args.extend(["--peer-advertise".into(), advertised[i].clone()]);
                args.extend(extra.iter().map(|a| a.to_string()));
                Proc::spawn(id, args, dir.path().join(format!("n{id}.log")), p.clone(), g.clone())
            })
            .collect();
        let token = extra.iter().position(|a| *a == "--api-token").map(|i| extra[i + 1].to_string());
        let certs = extra.iter().position(|a| *a == "--certs-dir").map(|i| PathBuf::from(extra[i + 1]));
        let c = TestCluster { token, certs, nodes, dir, memory };
        c.wait_leader(None, Duration::from_secs(20)).await;
        (c, proxies)
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.grpc.clone()).collect()
    }

    pub fn client(&self) -> Client {
        self.client_of(&self.endpoints(), Options::default())
    }

    /// A client of these nodes, with the cluster's token and CA.
    pub fn client_of<S: AsRef<str>>(&self, endpoints: &[S], opts: Options) -> Client {
        let dialer = statenode_client::dialer(self.certs.as_deref(), None).expect("certs");
        Client::with_dialer(endpoints, Options { api_token: self.token.clone(), ..opts }, dialer).expect("client")
    }

    /// Waits until a running node reports a leader other than `not`; returns its id.
    pub async fn wait_leader(&self, not: Option<u64>, within: Duration) -> u64 {
        let start = Instant::now();
        while start.elapsed() < within {
            for n in self.nodes.iter().filter(|n| n.is_running()) {
                let opts = Options {
                    deadline: Duration::from_secs(2),
                    attempt_timeout: Duration::from_secs(1),
                    ..Options::default()
                };
                let probe = self.client_of(&[&n.grpc], opts);
                if let Ok(s) = probe.status().await {
                    let ok = s.leader_id != 0 && Some(s.leader_id) != not;
                    if ok && s.members.iter().any(|m| m.id == s.leader_id) {
                        return s.leader_id;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let logs: Vec<String> = self.nodes.iter().map(|n| format!("--- node {}\n{}", n.id, n.log_tail())).collect();
        panic!("no leader within {within:?}\n{}", logs.join("\n"));
    }

    /// A running node other than `leader`.
    pub fn follower(&self, leader: u64) -> &Proc {
        self.nodes.iter().find(|n| n.id != leader && n.is_running()).expect("a follower")
    }

    pub fn node(&mut self, id: u64) -> &mut Proc {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node")
    }

    /// Every key/value under `prefix` as one node serves it.
    pub async fn list_all(
        client: &Client,
        prefix: &str,
        consistency: pb::Consistency,
    ) -> statenode_client::Result<Vec<(String, String)>> {
        let kvs = Self::list_kvs(client, prefix, consistency).await?;
        Ok(kvs
            .iter()
            .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), String::from_utf8_lossy(&kv.value).into_owned()))
            .collect())
    }

    /// Every key under `prefix`, with its revisions, version and TTL, page by page.
    pub async fn list_kvs(
        client: &Client,
        prefix: &str,
        consistency: pb::Consistency,
    ) -> statenode_client::Result<Vec<pb::KeyValue>> {
        let mut out = Vec::new();
        let mut cursor = Default::default();
        loop {
            let req = pb::ListRequest {
                prefix: prefix.to_string().into(),
                cursor,
                limit: 1000,
                consistency: consistency as i32,
                keys_only: false,
            };
            let page = client.list(req).await?;
            out.extend(page.kvs);
            if page.next_cursor.is_empty() {
                return Ok(out);
            }
            cursor = page.next_cursor;
        }
    }
}
