//! statenode-client: a light Rust client for statenode with leader tracking, retries with
//! backoff and jitter under one deadline, and `(client_id, seq)` on every write so a
//! retried write is applied once.

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use statenode_proto::v1 as pb;
use statenode_proto::v1::cluster_client::ClusterClient;
use statenode_proto::v1::kv_client::KvClient;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::{InterceptedService, Interceptor};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

pub use statenode_proto::{backup, v1};

pub mod reload;
pub mod tls;

use statenode_proto::headers::{API_TOKEN, LEADER as LEADER_HEADER};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid endpoint {0:?}")]
    Endpoint(String),
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] Status),
    #[error("deadline of {0:?} passed; last error: {1}")]
    Deadline(Duration, Status),
}

impl Error {
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Status(s) | Error::Deadline(_, s) => Some(s.code()),
            Error::Endpoint(_) => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One RPC through `Client::call`: `$service` (kv or cluster) `.$method(req)`, the request
/// cloned for each attempt.
macro_rules! rpc {
    ($self:ident, $service:ident, $method:ident, $req:expr) => {{
        $self
            .call(|ch| {
                let (mut c, r) = ($self.$service(ch), $req);
                async move { c.$method(r).await }
            })
            .await
    }};
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Overall deadline of one call, retries included.
    pub deadline: Duration,
    /// Bound on one attempt.
    pub attempt_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Seeds the client's id and backoff jitter (deterministic simulation); entropy if unset.
    pub rng_seed: Option<u64>,
    /// Sent as `dapr-api-token` on every call, for servers that require a token.
    pub api_token: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(15),
            attempt_timeout: Duration::from_secs(6),
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            rng_seed: None,
            api_token: None,
        }
    }
}

/// A client over a list of endpoints; cheap to share behind an `Arc`.
pub struct Client {
    endpoints: Mutex<Vec<(String, Channel)>>,
    /// Index of the endpoint that answered last (the leader, usually).
    preferred: AtomicUsize,
    client_id: u64,
    seq: AtomicU64,
    opts: Options,
    rng: Mutex<StdRng>,
    dialer: Dialer,
    token: Token,
}

/// Adds the API token to every request.
#[derive(Clone)]
struct Token(Option<MetadataValue<Ascii>>);

impl Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert(API_TOKEN, t.clone());
        }
        Ok(req)
    }
}

type Kv = KvClient<InterceptedService<Channel, Token>>;
type Cluster = ClusterClient<InterceptedService<Channel, Token>>;

/// Makes a lazily-connecting channel to `host:port` (real TCP by default; a simulated
/// network in the chaos suite).
pub type Dialer = Arc<dyn Fn(&str) -> Result<Channel> + Send + Sync>;

/// The default dialer: real TCP.
pub fn tcp_channel(addr: &str) -> Result<Channel> {
    let uri = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    Ok(Endpoint::from_shared(uri)
        .map_err(|_| Error::Endpoint(addr.to_string()))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// The dialer for a certs directory: TLS trusting its `ca.crt`, presenting
/// `client.NAME.crt` when `cert_name` is given; plain TCP without a directory.
pub fn dialer(certs_dir: Option<&std::path::Path>, cert_name: Option<&str>) -> std::io::Result<Dialer> {
    let Some(dir) = certs_dir else {
        if cert_name.is_some() {
            return Err(std::io::Error::other("a client certificate needs --certs-dir"));
        }
        return Ok(Arc::new(tcp_channel));
    };
    let config = tls::client_config(dir, cert_name.map(|n| tls::client_files(dir, n)))?;
    Ok(Arc::new(move |addr: &str| tls::channel(&config, addr).map_err(Error::Endpoint)))
}

/// Whether a failed attempt may be retried: the cluster was unavailable, or the outcome
/// is unknown but the write is deduplicated by `(client_id, seq)`.
fn retryable(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled)
}

impl Client {
    pub fn new<S: AsRef<str>>(endpoints: &[S], opts: Options) -> Result<Self> {
        Self::with_dialer(endpoints, opts, Arc::new(tcp_channel))
    }

    pub fn with_dialer<S: AsRef<str>>(endpoints: &[S], opts: Options, dialer: Dialer) -> Result<Self> {
        if endpoints.is_empty() {
            return Err(Error::Endpoint(String::new()));
        }
        let eps = endpoints.iter().map(|e| Ok((e.as_ref().to_string(), dialer(e.as_ref())?))).collect::<Result<_>>()?;
        let mut rng = opts.rng_seed.map_or_else(StdRng::from_entropy, StdRng::seed_from_u64);
        let client_id = rng.gen_range(1..u64::MAX);
        let token = match &opts.api_token {
            Some(t) => Some(t.parse().map_err(|_| Error::Endpoint("api token is not printable ASCII".into()))?),
            None => None,
        };
        Ok(Self {
            endpoints: Mutex::new(eps),
            preferred: AtomicUsize::new(0),
            client_id,
            seq: AtomicU64::new(0),
            opts,
            rng: Mutex::new(rng),
            dialer,
            token: Token(token),
        })
    }

    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    fn kv(&self, ch: Channel) -> Kv {
        KvClient::with_interceptor(ch, self.token.clone())
    }

    fn cluster(&self, ch: Channel) -> Cluster {
        ClusterClient::with_interceptor(ch, self.token.clone())
    }

    fn next_ref(&self) -> pb::ClientRef {
        pb::ClientRef { client_id: self.client_id, seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1 }
    }

    fn pick(&self, attempt: u32) -> (usize, Channel) {
        let eps = self.endpoints.lock().expect("poisoned");
        let i = (self.preferred.load(Ordering::Relaxed) + attempt as usize) % eps.len();
        (i, eps[i].1.clone())
    }

    /// Points the next attempt at the leader the server named, adding it if unknown.
    fn follow_hint(&self, s: &Status) -> bool {
        let Some(addr) = s.metadata().get(LEADER_HEADER).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let mut eps = self.endpoints.lock().expect("poisoned");
        let i = match eps.iter().position(|(a, _)| a == addr) {
            Some(i) => i,
            None => match (self.dialer)(addr) {
                Ok(ch) => {
                    eps.push((addr.to_string(), ch));
                    eps.len() - 1
                }
                Err(_) => return false,
            },
        };
        self.preferred.store(i, Ordering::Relaxed);
        true
    }

    /// Runs `f` against endpoints until it succeeds, fails for good, or the deadline passes.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.opts.deadline;
        let mut attempt = 0u32;
        let mut rotate = 0u32;
        loop {
            let (i, ch) = self.pick(rotate);
            let left = deadline.saturating_duration_since(Instant::now());
            let status = match tokio::time::timeout(self.opts.attempt_timeout.min(left), f(ch)).await {
                Ok(Ok(r)) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(r.into_inner());
                }
                Ok(Err(s)) if !retryable(&s) => return Err(Error::Status(s)),
                Ok(Err(s)) => s,
                Err(_) => Status::deadline_exceeded("attempt timed out"),
            };
            if Instant::now() >= deadline {
                return Err(Error::Deadline(self.opts.deadline, status));
            }
            rotate = if self.follow_hint(&status) { 0 } else { rotate + 1 };
            attempt += 1;
            let cap = self.opts.backoff_base.saturating_mul(1 << attempt.min(10)).min(self.opts.backoff_max);
            let sleep = self.rng.lock().expect("poisoned").gen_range(Duration::ZERO..=cap);
            tokio::time::sleep(sleep.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    pub async fn get(&self, key: impl Into<Bytes>, consistency: pb::Consistency) -> Result<Option<pb::KeyValue>> {
        let req = pb::GetRequest { key: key.into(), consistency: consistency as i32 };
        let r = rpc!(self, kv, get, req.clone())?;
        Ok(r.kv)
    }

    /// A put; `client` is filled in so retries are deduplicated.
    pub async fn put(&self, mut req: pb::PutRequest) -> Result<pb::PutResponse> {
        req.client = Some(self.next_ref());
        rpc!(self, kv, put, req.clone())
    }

    pub async fn put_simple(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<pb::PutResponse> {
        self.put(pb::PutRequest { key: key.into(), value: value.into(), ..Default::default() }).await
    }

    pub async fn delete(&self, mut req: pb::DeleteRequest) -> Result<pb::DeleteResponse> {
        req.client = Some(self.next_ref());
        rpc!(self, kv, delete, req.clone())
    }

    pub async fn txn(&self, ops: Vec<pb::TxnOp>) -> Result<pb::TxnResponse> {
        let req = pb::TxnRequest { ops, client: Some(self.next_ref()) };
        rpc!(self, kv, txn, req.clone())
    }

    pub async fn list(&self, req: pb::ListRequest) -> Result<pb::ListResponse> {
        rpc!(self, kv, list, req.clone())
    }

    /// Opens a watch stream on one node (events are per node, in revision order).
    pub async fn watch(
        &self,
        prefix: impl Into<Bytes>,
        from_revision: u64,
    ) -> Result<tonic::Streaming<pb::WatchEvent>> {
        let req = pb::WatchRequest { prefix: prefix.into(), from_revision };
        rpc!(self, kv, watch, req.clone())
    }

    pub async fn status(&self) -> Result<pb::StatusResponse> {
        rpc!(self, cluster, status, pb::StatusRequest {})
    }

    pub async fn members(&self) -> Result<pb::MembersResponse> {
        rpc!(self, cluster, members, pb::MembersRequest {})
    }

    /// A consistent backup of the cluster's whole state, as a stream of the backup file's
    /// bytes (`statenode_proto::backup` is its format).
    pub async fn backup(&self) -> Result<tonic::Streaming<pb::BackupChunk>> {
        rpc!(self, cluster, backup, pb::BackupRequest {})
    }

    pub async fn leave(&self, id: u64) -> Result<pb::LeaveResponse> {
        rpc!(self, cluster, leave, pb::LeaveRequest { id })
    }
}

/// The member table `statenode members` and `statectl members` print.
pub fn members_table(members: &[pb::Member]) -> String {
    let mut text = format!("{:<20} {:<8} {:<7} {:<22} {:<22}", "ID", "ROLE", "LEADER", "PEER", "GRPC");
    for m in members {
        let role = if m.voter { "voter" } else { "learner" };
        let leader = if m.leader { "*" } else { "" };
        text += &format!("\n{:<20} {:<8} {:<7} {:<22} {:<22}", m.id, role, leader, m.peer_addr, m.grpc_addr);
    }
    text
}
