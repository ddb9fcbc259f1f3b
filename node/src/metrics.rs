//! Prometheus metrics: requests and latency per front door, route and status, plus the
//! node's Raft state. Rendered in the text exposition format by `/metrics`.

use crate::api::ClusterStatus;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Latency histogram bucket bounds, in seconds.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Default)]
struct Stat {
    count: u64,
    sum: f64,
    /// Observations at or below each bound (cumulative when rendered).
    buckets: [u64; BUCKETS.len()],
}

impl Stat {
    fn observe(&mut self, took: Duration) {
        let secs = took.as_secs_f64();
        self.count += 1;
        self.sum += secs;
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i] += 1;
        }
    }

    /// The `_bucket`, `_sum` and `_count` lines of histogram `name` for `labels`.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (b, n) in BUCKETS.iter().zip(self.buckets) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// Durable (fsynced) commits of the node's redb files, by file name. Process-wide: the
/// storage layer opens files before a node's `Metrics` exist (several nodes in one test
/// process share it).
static DISK_COMMITS: Mutex<BTreeMap<&'static str, Stat>> = Mutex::new(BTreeMap::new());

/// Records one durable commit of `file` (`raft.wal`, `sm.snap`; `raft.redb`, `sm.redb`).
pub fn disk_commit(file: &'static str, took: Duration) {
    DISK_COMMITS.lock().expect("poisoned").entry(file).or_default().observe(took);
}

/// Log entries the leader proposed for client commands, and the commands they carried
/// (several share an entry under load: `raft/proposer.rs`). Process-wide, like disk commits.
static PROPOSALS: AtomicU64 = AtomicU64::new(0);
static PROPOSED_COMMANDS: AtomicU64 = AtomicU64::new(0);

/// Records one proposed entry carrying `commands` client commands.
pub fn proposed(commands: usize) {
    PROPOSALS.fetch_add(1, Ordering::Relaxed);
    PROPOSED_COMMANDS.fetch_add(commands as u64, Ordering::Relaxed);
}

/// `(door, route, status)`: routes are fixed names or served gRPC methods, never arbitrary
/// user input, so the label set stays bounded.
type Labels = (&'static str, String, String);

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<Labels, Stat>>,
    leader_changes: AtomicU64,
    late_writes: AtomicU64,
    appends_sent: AtomicU64,
    commits_folded: AtomicU64,
}

impl Metrics {
    pub fn observe(&self, door: &'static str, route: &str, status: impl ToString, took: Duration) {
        let mut m = self.requests.lock().expect("poisoned");
        m.entry((door, route.to_string(), status.to_string())).or_default().observe(took);
    }

    pub fn leader_changed(&self) {
        self.leader_changes.fetch_add(1, Ordering::Relaxed);
    }

    /// One of this node's own writes was refused as past its deadline (ADR 0014).
    pub fn late_write(&self) {
        self.late_writes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn late_writes(&self) -> u64 {
        self.late_writes.load(Ordering::Relaxed)
    }

    /// This node sent one AppendEntries (as leader: entries, heartbeats, read rounds).
    pub fn append_sent(&self) {
        self.appends_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// A commit-only AppendEntries was folded into the next message (ADR 0015).
    pub fn commit_folded(&self) {
        self.commits_folded.fetch_add(1, Ordering::Relaxed);
    }

    /// `(sent, folded)` AppendEntries so far.
    pub fn appends(&self) -> (u64, u64) {
        (self.appends_sent.load(Ordering::Relaxed), self.commits_folded.load(Ordering::Relaxed))
    }

    /// The text exposition format; `snapshot_bytes` is the size of the snapshot this node
    /// holds (built or installed; 0: none yet).
    pub fn render(&self, st: &ClusterStatus, commit_index: u64, snapshot_bytes: u64) -> String {
        let mut out = String::new();
        let _ =
            writeln!(out, "# HELP statenode_requests_total Client requests served, by front door, route and status.");
        let _ = writeln!(out, "# TYPE statenode_requests_total counter");
        let m = self.requests.lock().expect("poisoned");
        for ((door, route, status), s) in m.iter() {
            let _ = writeln!(
                out,
                "statenode_requests_total{{door=\"{door}\",route=\"{route}\",status=\"{status}\"}} {}",
                s.count
            );
        }
        let _ = writeln!(out, "# HELP statenode_request_duration_seconds Client request latency.");
        let _ = writeln!(out, "# TYPE statenode_request_duration_seconds histogram");
        for ((door, route, status), s) in m.iter() {
            let labels = format!("door=\"{door}\",route=\"{route}\",status=\"{status}\"");
            s.render(&mut out, "statenode_request_duration_seconds", &labels);
        }
        drop(m);
        let _ = writeln!(out, "# HELP statenode_disk_commit_seconds Durable (fsynced) commit latency, by file.");
        let _ = writeln!(out, "# TYPE statenode_disk_commit_seconds histogram");
        for (file, s) in DISK_COMMITS.lock().expect("poisoned").iter() {
            s.render(&mut out, "statenode_disk_commit_seconds", &format!("file=\"{file}\""));
        }
        let is_leader = st.leader_id == Some(st.id);
        let gauges: [(&str, &str, u64); 9] = [
            ("raft_term", "The current Raft term.", st.term),
            ("raft_leader_id", "The leader this node knows (0: none).", st.leader_id.unwrap_or(0)),
            ("raft_is_leader", "1 when this node is the leader.", u64::from(is_leader)),
            ("raft_last_log_index", "The last index in this node's log.", st.last_log_index),
            ("raft_commit_index", "Committed index (on followers: the applied index, a lower bound).", commit_index),
            ("raft_applied_index", "The last index this node applied.", st.applied_index),
            ("raft_members", "Members in the configuration.", st.members.len() as u64),
            ("node_id", "This node's id.", st.id),
            ("snapshot_bytes", "Size of the snapshot this node holds (0: none yet).", snapshot_bytes),
        ];
        for (name, help, v) in gauges {
            let _ =
                writeln!(out, "# HELP statenode_{name} {help}\n# TYPE statenode_{name} gauge\nstatenode_{name} {v}");
        }
        let counters = [
            ("raft_leader_changes_total", "Leader changes this node saw.", &self.leader_changes),
            (
                "late_writes_total",
                "Writes this node sent that the leader refused as past their deadline (is this node's clock behind?).",
                &self.late_writes,
            ),
            ("raft_appends_sent_total", "AppendEntries messages this node sent.", &self.appends_sent),
            (
                "raft_commits_folded_total",
                "Commit-only AppendEntries this node folded into the next message to a follower.",
                &self.commits_folded,
            ),
            ("proposals_total", "Log entries proposed for client commands.", &PROPOSALS),
            ("proposed_commands_total", "Client commands those entries carried.", &PROPOSED_COMMANDS),
        ];
        for (name, help, v) in counters {
            let v = v.load(Ordering::Relaxed);
            let _ =
                writeln!(out, "# HELP statenode_{name} {help}\n# TYPE statenode_{name} counter\nstatenode_{name} {v}");
        }
        out
    }
}

/// A tower layer for the client gRPC server: counts every call by method and status (the
/// `grpc-status` of a trailers-only answer, else OK) and its time to the response head.
#[derive(Clone)]
pub struct GrpcLayer(pub std::sync::Arc<Metrics>);

impl<S> tower::Layer<S> for GrpcLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner, metrics: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    metrics: std::sync::Arc<Metrics>,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, RB> tower::Service<hyper::http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<hyper::http::Request<B>, Response = hyper::http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    RB: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: hyper::http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        let start = std::time::Instant::now();
        let metrics = self.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            if let Ok(resp) = &r {
                let code = resp.headers().get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok());
                let code = tonic::Code::from_i32(code.unwrap_or(0));
                // Unknown paths (tonic answers UNIMPLEMENTED with no message): one label for
                // all of them, so callers cannot grow the label set.
                let unknown = code == tonic::Code::Unimplemented
                    && resp.headers().get("grpc-message").is_none_or(|m| m.is_empty());
                let route = if unknown { "unknown" } else { path.trim_start_matches('/') };
                metrics.observe("grpc", route, format!("{code:?}"), start.elapsed());
            }
            r
        })
    }
}
