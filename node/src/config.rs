//! One `Config`: defaults < TOML file < `STATENODE_*` environment < flags; `validate()`.

use crate::api::ListQuery;
use crate::auth::rules::Authorization;
use crate::error::{Error, Result};
use crate::kv::{Op, Put, SessionOp, TxnOp};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Raft node id (>= 1; 0 = automatic: the stored id, else 1 for serve and a fresh
    /// id for join). Disk mode stores it and refuses to start under another.
    pub id: u64,
    pub data_dir: PathBuf,
    /// Keep nothing on disk: data lives as long as a quorum stays up.
    pub memory: bool,
    pub peer_listen: String,
    /// The peer address other nodes dial; defaults to `peer_listen` with a routable host.
    pub peer_advertise: Option<String>,
    pub grpc: String,
    /// The client address handed out in leader hints; defaults like `peer_advertise`.
    pub grpc_advertise: Option<String>,
    /// HTTP front door: Dapr's state API and the native `/v1` API.
    pub http: String,
    /// MQTT v5 front door: a broker with the AIO state store (docs/mqtt.md).
    pub mqtt: String,
    /// Number of nodes that start together and form the first configuration.
    pub bootstrap_expect: usize,
    /// `id=host:port` peer addresses of the initial configuration.
    pub peers: Vec<String>,
    /// How long a node with no data waits for its peers (first bootstrap) or a seed (join)
    /// to answer before it gives up with an error. Nodes with data never wait.
    #[serde(with = "millis")]
    pub bootstrap_timeout: Duration,
    /// Disk mode: a node whose data is gone but which the cluster still lists joins under a
    /// new id and the old entry is removed once it caught up. Without it, such a node
    /// refuses to start (it must never come back as its old self).
    pub replace_lost_member: bool,
    pub log_format: LogFormat,
    /// When set, every client request (HTTP and gRPC, except health probes) must carry
    /// this value in the `dapr-api-token` header / metadata.
    pub api_token: Option<String>,
    /// Named tokens, one `NAME TOKEN` a line, each as good as `api_token`; read again when
    /// the file changes (token rotation without a restart).
    pub token_file: Option<PathBuf>,
    /// `/metrics` asks for a token like every other path (not only the probes are open).
    pub protect_metrics: bool,
    /// When set, every peer RPC (Raft messages, forwarded requests, joins) must carry it:
    /// without it a process that reaches the peer port cannot vote, join, or read and write
    /// through it. Every member shares the one secret. It travels in clear without TLS.
    pub cluster_secret: Option<String>,
    /// TLS on every listener with the certificates in this directory (`statenode certs`):
    /// `ca.crt`, `node.crt`, `node.key`. Peers must present a certificate of the same CA.
    pub certs_dir: Option<PathBuf>,
    /// The app id for stores with `key_prefix = "appid"` when a request carries no
    /// `dapr-app-id` header.
    pub app_id: Option<String>,
    /// The Dapr state stores served. The first one is the default store: it lives in the
    /// root key space, shared with the native API and MQTT; every other store is a
    /// namespace of its own.
    pub stores: Vec<StoreConfig>,
    pub raft: RaftTuning,
    pub limits: Limits,
    /// MQTT users and per-key, per-topic rules (`auth::rules`); none: everything allowed.
    pub authorization: Option<Authorization>,
}

/// One Dapr state store (a Dapr component, in daprd's terms).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub name: String,
    /// Dapr's `keyPrefix`: `none`, `name`, `appid`, `namespace`, or any other string.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
}

fn default_key_prefix() -> String {
    "none".into()
}

impl StoreConfig {
    /// Parses `name` or `name:keyPrefix` (the `--stores` flag).
    pub fn parse(s: &str) -> Result<Self> {
        let (name, key_prefix) = match s.split_once(':') {
            Some((n, p)) => (n, p.to_string()),
            None => (s, default_key_prefix()),
        };
        let store = StoreConfig { name: name.trim().to_string(), key_prefix: key_prefix.trim().to_string() };
        store.validate()?;
        Ok(store)
    }

    fn validate(&self) -> Result<()> {
        let ok = |s: &str| !s.is_empty() && s.len() <= 256 && !s.contains("||") && !s.chars().any(char::is_control);
        if !ok(&self.name) || self.name.contains('/') {
            return Err(Error::invalid(format!("bad store name {:?}", self.name)));
        }
        if !ok(&self.key_prefix) {
            return Err(Error::invalid(format!("bad key prefix {:?} for store {:?}", self.key_prefix, self.name)));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RaftTuning {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Log entries since the last snapshot that trigger a new one.
    pub snapshot_threshold: u64,
    /// Entries kept behind a snapshot for followers that lag a little.
    pub keep_after_snapshot: u64,
    /// How often the leader looks for keys whose TTL ran out (and proposes their expiry).
    pub ttl_reap_ms: u64,
    /// Bytes per InstallSnapshot message.
    pub snapshot_chunk_bytes: u64,
}

/// Every size bound a request is checked against before it reaches the log.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Operations in one transaction or bulk write.
    pub max_batch_ops: usize,
    /// Keys plus values of one request.
    pub max_request_bytes: usize,
    pub list_default_limit: usize,
    pub list_max_limit: usize,
    /// Keys in one bulk read. Dapr sets no limit of its own and its users read thousands of
    /// keys at once, so this is not `max_batch_ops`; `max_response_bytes` bounds the reply.
    pub max_bulk_read_keys: usize,
    /// Keys plus values of one reply: a bulk read beyond it is refused, a list page ends
    /// before it (with at least one key). At least `max_key_bytes + max_value_bytes`.
    pub max_response_bytes: usize,
    /// Longest a TTL may be, in milliseconds.
    pub max_ttl_ms: u64,
    #[serde(with = "millis")]
    pub request_timeout: Duration,
    /// Open HTTP connections per node; more are closed at once.
    pub max_http_connections: usize,
    /// Open client gRPC connections per node; more are closed at once.
    pub max_grpc_connections: usize,
    /// Open connections to the peer port; more are closed at once (a member holds a few).
    pub max_peer_connections: usize,
    /// Longest a gRPC call (client or peer port) may take to answer; a stream's events are
    /// not bounded by it, only its start.
    #[serde(with = "millis")]
    pub grpc_call_timeout: Duration,
    /// Bytes of keys and values the watch history keeps for watchers that resume (besides
    /// its 16,384 events); older events go first, and a watcher resuming before them
    /// re-reads the state.
    pub watch_history_bytes: usize,
    /// TLS handshakes in progress per port (`--certs-dir`); a connection beyond is closed at
    /// once.
    pub tls_max_handshakes: usize,
    /// Dapr queries running at once per node (each reads its whole store); more are refused
    /// (429 / RESOURCE_EXHAUSTED).
    pub max_queries: usize,
    /// Open watches per node (HTTP, gRPC, MQTT key notifications); more are refused
    /// (429 / RESOURCE_EXHAUSTED) until one ends.
    pub max_watchers: usize,
    /// How long an HTTP client may take to send a request head.
    #[serde(with = "millis")]
    pub http_header_timeout: Duration,
    /// Open MQTT connections per node; more are refused with CONNACK 0x97 (quota exceeded).
    pub mqtt_max_connections: usize,
    /// Largest MQTT packet a client may send (advertised in CONNACK); larger ones end the
    /// connection with DISCONNECT 0x95.
    pub mqtt_max_packet_bytes: u32,
    /// QoS 1 publishes a client may have unacknowledged (advertised as Receive Maximum);
    /// more end the connection with DISCONNECT 0x93.
    pub mqtt_receive_max: u16,
    /// QoS 1 messages kept for a session while its client is offline or slow; older ones
    /// are dropped first.
    pub mqtt_max_queued: usize,
    /// MQTT sessions kept per node, connected or not.
    pub mqtt_max_sessions: usize,
}

mod millis {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            id: 1,
            data_dir: PathBuf::from("./statenode-data"),
            memory: false,
            peer_listen: "127.0.0.1:7000".into(),
            peer_advertise: None,
            grpc: "0.0.0.0:50001".into(),
            grpc_advertise: None,
            http: "0.0.0.0:3500".into(),
            mqtt: "0.0.0.0:1883".into(),
            bootstrap_expect: 1,
            peers: Vec::new(),
            bootstrap_timeout: Duration::from_secs(300),
            replace_lost_member: false,
            log_format: LogFormat::Text,
            api_token: None,
            token_file: None,
            protect_metrics: false,
            cluster_secret: None,
            certs_dir: None,
            app_id: None,
            stores: vec![StoreConfig { name: "statestore".into(), key_prefix: default_key_prefix() }],
            raft: RaftTuning::default(),
            limits: Limits::default(),
            authorization: None,
        }
    }
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_min_ms: 400,
            election_max_ms: 800,
            // A snapshot encodes and writes the whole state on every node at once (ADR
            // 0013): every 5,000 entries it put the p99 of puts at 64 clients at 90–100 ms
            // (12 MB here), every 20,000 at 10–17 ms. etcd 3.4 snapshots every 100,000.
            snapshot_threshold: 20_000,
            keep_after_snapshot: 1000,
            ttl_reap_ms: 250,
            snapshot_chunk_bytes: 1024 * 1024,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_key_bytes: 4096,
            max_value_bytes: 4 * 1024 * 1024,
            max_batch_ops: 128,
            max_response_bytes: 16 << 20,
            max_bulk_read_keys: 10_000,
            max_request_bytes: 6 * 1024 * 1024,
            list_default_limit: 100,
            list_max_limit: 1000,
            max_ttl_ms: 10 * 365 * 24 * 3600 * 1000,
            request_timeout: Duration::from_secs(5),
            max_http_connections: 4096,
            max_grpc_connections: 4096,
            max_peer_connections: 256,
            max_queries: 8,
            grpc_call_timeout: Duration::from_secs(60),
            watch_history_bytes: 64 << 20,
            max_watchers: 4096,
            tls_max_handshakes: 1024,
            http_header_timeout: Duration::from_secs(30),
            mqtt_max_connections: 4096,
            mqtt_max_packet_bytes: 6 * 1024 * 1024 + 64 * 1024,
            mqtt_receive_max: 128,
            mqtt_max_queued: 1000,
            mqtt_max_sessions: 16384,
        }
    }
}

/// Checks a `host:port` address: non-empty host, numeric non-zero port.
pub fn check_addr(addr: &str) -> Result<()> {
    let bad = || Error::invalid(format!("bad address {addr:?}: expected host:port"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host_ok = !host.is_empty() && !host.contains(char::is_whitespace) && !host.contains('/');
    if port == 0 || !host_ok {
        return Err(bad());
    }
    Ok(())
}

/// A node id from a StatefulSet pod name: the ordinal after the last `-`, plus one
/// (`statenode-0` is node 1), so every pod derives the same initial membership.
pub fn id_from_name(name: &str) -> Result<u64> {
    let ordinal = name.rsplit_once('-').map(|(_, n)| n).unwrap_or_default();
    let n: u64 = ordinal.parse().map_err(|_| {
        Error::invalid(format!("cannot take a node id from {name:?}: expected a StatefulSet pod name like statenode-0"))
    })?;
    n.checked_add(1).ok_or_else(|| Error::invalid(format!("ordinal of {name:?} is too large")))
}

/// Parses one `id=host:port` peer.
pub fn parse_peer(s: &str) -> Result<(u64, String)> {
    let (id, addr) =
        s.split_once('=').ok_or_else(|| Error::invalid(format!("bad peer {s:?}: expected id=host:port")))?;
    let id: u64 = id.trim().parse().map_err(|_| Error::invalid(format!("bad peer id in {s:?}")))?;
    if id == 0 {
        return Err(Error::invalid(format!("bad peer {s:?}: ids start at 1")));
    }
    check_addr(addr)?;
    Ok((id, addr.to_string()))
}

/// Replaces an unspecified listen host (0.0.0.0, [::]) with loopback, for advertising.
pub fn routable(listen: &str) -> String {
    match listen.rsplit_once(':') {
        Some(("0.0.0.0" | "[::]" | "", port)) => format!("127.0.0.1:{port}"),
        _ => listen.to_string(),
    }
}

impl Config {
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::invalid(format!("config file: {e}")))
    }

    pub fn peer_advertise(&self) -> String {
        self.peer_advertise.clone().unwrap_or_else(|| {
            self.peers
                .iter()
                .filter_map(|p| parse_peer(p).ok())
                .find(|(id, _)| *id == self.id)
                .map(|(_, a)| a)
                .unwrap_or_else(|| routable(&self.peer_listen))
        })
    }

    pub fn grpc_advertise(&self) -> String {
        self.grpc_advertise.clone().unwrap_or_else(|| {
            let host = self.peer_advertise().rsplit_once(':').map(|(h, _)| h.to_string()).unwrap_or_default();
            let port = self.grpc.rsplit_once(':').map(|(_, p)| p.to_string()).unwrap_or_default();
            format!("{host}:{port}")
        })
    }

    pub fn parsed_peers(&self) -> Result<Vec<(u64, String)>> {
        self.peers.iter().map(|p| parse_peer(p)).collect()
    }

    pub fn validate(&self) -> Result<()> {
        for a in [&self.peer_listen, &self.grpc, &self.http, &self.mqtt] {
            check_addr(a)?;
        }
        for a in [&self.peer_advertise, &self.grpc_advertise].into_iter().flatten() {
            check_addr(a)?;
        }
        let peers = self.parsed_peers()?;
        if self.bootstrap_expect == 0 {
            return Err(Error::invalid("bootstrap-expect must be at least 1"));
        }
        if self.bootstrap_expect > 1 && peers.len() != self.bootstrap_expect {
            return Err(Error::invalid(format!(
                "bootstrap-expect {} needs exactly that many --peers (got {})",
                self.bootstrap_expect,
                peers.len()
            )));
        }
        if !peers.is_empty() && !peers.iter().any(|(id, _)| *id == self.id) {
            return Err(Error::invalid(format!("--peers must include this node's id {}", self.id)));
        }
        let mut ids: Vec<u64> = peers.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != peers.len() {
            return Err(Error::invalid("--peers lists an id twice"));
        }
        if self.stores.is_empty() {
            return Err(Error::invalid("at least one state store must be configured"));
        }
        if let Some(a) = &self.authorization {
            a.check()?;
        }
        for (i, st) in self.stores.iter().enumerate() {
            st.validate()?;
            if self.stores[..i].iter().any(|o| o.name == st.name) {
                return Err(Error::invalid(format!("store {:?} is configured twice", st.name)));
            }
        }
        if self.bootstrap_timeout.is_zero() {
            return Err(Error::invalid("bootstrap_timeout must be positive"));
        }
        if self.api_token.as_deref().is_some_and(|t| t.is_empty() || t.len() > 4096) {
            return Err(Error::invalid("api token must be 1..4096 bytes"));
        }
        // Sent as gRPC metadata: visible ASCII only.
        if self
            .cluster_secret
            .as_deref()
            .is_some_and(|s| !(16..=4096).contains(&s.len()) || !s.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(Error::invalid("cluster secret must be 16..4096 visible ASCII characters"));
        }
        self.raft.validate()?;
        self.limits.validate()
    }
}

impl RaftTuning {
    fn validate(&self) -> Result<()> {
        if self.heartbeat_ms == 0
            || self.election_min_ms < 2 * self.heartbeat_ms
            || self.election_max_ms <= self.election_min_ms
        {
            return Err(Error::invalid("raft timing: need 0 < 2*heartbeat <= election_min < election_max"));
        }
        if self.snapshot_threshold == 0 {
            return Err(Error::invalid("raft.snapshot_threshold must be at least 1"));
        }
        if self.ttl_reap_ms == 0 {
            return Err(Error::invalid("raft.ttl_reap_ms must be positive"));
        }
        if !(256..=64 * 1024 * 1024).contains(&self.snapshot_chunk_bytes) {
            return Err(Error::invalid("raft.snapshot_chunk_bytes must be between 256 B and 64 MiB"));
        }
        Ok(())
    }
}

impl Limits {
    fn validate(&self) -> Result<()> {
        let positive = [
            self.max_key_bytes,
            self.max_value_bytes,
            self.max_batch_ops,
            self.max_request_bytes,
            self.list_default_limit,
            self.list_max_limit,
            self.max_http_connections,
            self.max_grpc_connections,
            self.max_peer_connections,
            self.max_queries,
            self.watch_history_bytes,
            self.max_watchers,
            self.max_bulk_read_keys,
            self.tls_max_handshakes,
        ];
        let zero_time =
            self.request_timeout.is_zero() || self.http_header_timeout.is_zero() || self.grpc_call_timeout.is_zero();
        if positive.contains(&0) || self.list_default_limit > self.list_max_limit || zero_time {
            return Err(Error::invalid("limits must be positive and list_default_limit <= list_max_limit"));
        }
        if self.max_response_bytes < self.max_key_bytes.saturating_add(self.max_value_bytes) {
            return Err(Error::invalid("max_response_bytes must hold one key and value at their limits"));
        }
        Ok(())
    }

    pub fn check_key(&self, key: &[u8]) -> Result<()> {
        if key.is_empty() {
            return Err(Error::invalid("key must not be empty"));
        }
        if key.len() > self.max_key_bytes {
            return Err(Error::TooLarge(format!("key is {} bytes; the limit is {}", key.len(), self.max_key_bytes)));
        }
        Ok(())
    }

    pub fn check_put(&self, p: &Put) -> Result<()> {
        self.check_key(&p.key)?;
        if p.value.len() > self.max_value_bytes {
            return Err(Error::TooLarge(format!(
                "value is {} bytes; the limit is {}",
                p.value.len(),
                self.max_value_bytes
            )));
        }
        if p.ttl_ms.is_some_and(|t| t == 0 || t > self.max_ttl_ms) {
            return Err(Error::invalid(format!("ttl must be between 1 ms and {} ms", self.max_ttl_ms)));
        }
        Ok(())
    }

    pub fn check_batch(&self, n: usize) -> Result<()> {
        if n == 0 {
            return Err(Error::invalid("a transaction needs at least one operation"));
        }
        if n > self.max_batch_ops {
            return Err(Error::TooLarge(format!("{n} operations; the limit is {}", self.max_batch_ops)));
        }
        Ok(())
    }

    /// The operations of a transaction or bulk write: their number, each key and value, and
    /// all of them together.
    pub fn check_ops(&self, ops: &[TxnOp]) -> Result<()> {
        self.check_batch(ops.len())?;
        let mut total = 0usize;
        for op in ops {
            match op {
                TxnOp::Put(p) => self.check_put(p)?,
                TxnOp::Delete(d) => self.check_key(&d.key)?,
            }
            total += op.key().len() + if let TxnOp::Put(p) = op { p.value.len() } else { 0 };
        }
        self.check_request(total)
    }

    /// A session change's subscriptions and observed keys, within `max_request_bytes`.
    pub fn check_session(&self, op: &SessionOp) -> Result<()> {
        if let SessionOp::Save { subs, observed, .. } = op {
            let size = subs.iter().map(|s| s.filter.len() + 2).sum::<usize>()
                + observed.iter().map(|k| k.len()).sum::<usize>();
            self.check_request(size)?;
        }
        Ok(())
    }

    /// A command as a request carries it: what the doors check, checked again where it is
    /// served, so a request forwarded by a member gets no less.
    pub fn check_op(&self, op: &Op) -> Result<()> {
        match op {
            Op::Put(p) => self.check_put(p),
            Op::Delete(d) => self.check_key(&d.key),
            Op::Txn(ops) | Op::Batch(ops) => self.check_ops(ops),
            Op::Session(s) => self.check_session(s),
            Op::Expire => Ok(()),
            Op::Group(_) => Err(Error::invalid("a group of commands is built by the leader, never sent to it")),
        }
    }

    /// A read of `n` keys at once (bulk get): at most `max_bulk_read_keys`.
    pub fn check_bulk_read(&self, n: usize) -> Result<()> {
        if n > self.max_bulk_read_keys {
            return Err(Error::TooLarge(format!("{n} keys in one read; the limit is {}", self.max_bulk_read_keys)));
        }
        Ok(())
    }

    /// The keys and values a bulk read found: at most `max_response_bytes`.
    pub fn check_reply(&self, bytes: usize) -> Result<()> {
        if bytes > self.max_response_bytes {
            return Err(Error::TooLarge(format!(
                "the keys and values read come to {bytes} bytes; the limit is {}: read fewer keys at once",
                self.max_response_bytes
            )));
        }
        Ok(())
    }

    pub fn check_request(&self, bytes: usize) -> Result<()> {
        if bytes > self.max_request_bytes {
            return Err(Error::TooLarge(format!("request is {bytes} bytes; the limit is {}", self.max_request_bytes)));
        }
        Ok(())
    }

    pub fn check_list(&self, q: &mut ListQuery) -> Result<()> {
        if q.prefix.len() > self.max_key_bytes || q.after.len() > self.max_key_bytes {
            return Err(Error::TooLarge("prefix or cursor longer than the key limit".into()));
        }
        if q.limit == 0 {
            q.limit = self.list_default_limit;
        }
        q.limit = q.limit.min(self.list_max_limit);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn ids_come_from_statefulset_pod_names() {
        assert_eq!(id_from_name("statenode-0").unwrap(), 1);
        assert_eq!(id_from_name("my-db-statenode-12").unwrap(), 13);
        for bad in ["statenode", "statenode-", "statenode-x", "", "s-18446744073709551615"] {
            assert!(id_from_name(bad).is_err(), "{bad}");
        }
    }

    /// The config file the Kubernetes manifests ship is one this build reads.
    #[test]
    fn the_kubernetes_config_file_parses() {
        let c = Config::from_toml(include_str!("../../deploy/k8s/base/statenode.toml")).unwrap();
        assert_eq!(c.raft.heartbeat_ms, 100);
    }

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_keys() {
        let c = Config::from_toml("id = 3\nmemory = true\n[limits]\nmax_value_bytes = 10\n").unwrap();
        assert_eq!((c.id, c.memory, c.limits.max_value_bytes), (3, true, 10));
        assert_eq!(c.limits.max_key_bytes, 4096);
        assert!(Config::from_toml("idd = 3").is_err());
        assert!(Config::from_toml("id = \"x\"").is_err());
        assert!(Config::from_toml("[[[").is_err());
    }

    #[test]
    fn addresses_and_peers() {
        for good in ["127.0.0.1:7000", "node-1.statenode:7000", "[::1]:7000"] {
            check_addr(good).unwrap();
        }
        for bad in ["", "7000", "host:", "host:0", "host:70000", ":7000", "a b:1", "http://x:1"] {
            assert!(check_addr(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_peer("2=h:7000").unwrap(), (2, "h:7000".into()));
        for bad in ["h:7000", "0=h:1", "x=h:1", "1=h"] {
            assert!(parse_peer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bootstrap_needs_matching_peers() {
        let mut c = Config { bootstrap_expect: 3, peers: vec!["1=a:1".into(), "2=b:1".into()], ..Config::default() };
        assert!(c.validate().is_err());
        c.peers.push("3=c:1".into());
        c.validate().unwrap();
        assert_eq!(c.peer_advertise(), "a:1");
        assert_eq!(c.grpc_advertise(), "a:50001");
        c.id = 9;
        assert!(c.validate().is_err());
        c.id = 1;
        c.peers[2] = "2=c:1".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn stores_are_checked() {
        assert_eq!(StoreConfig::parse("orders:Name").unwrap().key_prefix, "Name");
        assert_eq!(StoreConfig::parse("orders").unwrap().key_prefix, "none");
        for bad in ["", ":none", "a||b", "a/b", "s:", "s:x||y", "s\u{0}"] {
            assert!(StoreConfig::parse(bad).is_err(), "{bad}");
        }
        let mut c = Config::default();
        c.stores.push(StoreConfig::parse("statestore:name").unwrap());
        assert!(c.validate().is_err(), "duplicate store names");
        c.stores.clear();
        assert!(c.validate().is_err(), "no store");
        let c = Config::from_toml("api_token = \"\"").unwrap();
        assert!(c.validate().is_err(), "empty token");
        for bad in ["short", "has a space in it here", "non-ascii-é-secret-here", "new\\nline-in-the-secret"] {
            let c = Config::from_toml(&format!("cluster_secret = \"{bad}\"")).unwrap();
            assert!(c.validate().is_err(), "cluster secret {bad:?}");
        }
        Config::from_toml("cluster_secret = \"0123456789abcdef\"").unwrap().validate().unwrap();
        let c =
            Config::from_toml("[[stores]]\nname = \"a\"\n[[stores]]\nname = \"b\"\nkey_prefix = \"appid\"").unwrap();
        c.validate().unwrap();
        assert_eq!(c.stores[1].key_prefix, "appid");
    }

    #[test]
    fn limits_reject_bad_input() {
        let l = Limits::default();
        assert!(matches!(l.check_key(b""), Err(Error::InvalidArgument(_))));
        assert!(matches!(l.check_key(&[b'k'; 4097]), Err(Error::TooLarge(_))));
        assert!(matches!(l.check_batch(0), Err(Error::InvalidArgument(_))));
        assert!(matches!(l.check_batch(129), Err(Error::TooLarge(_))));
        assert!(matches!(l.check_bulk_read(10_001), Err(Error::TooLarge(_))));
        assert!(l.check_bulk_read(10_000).is_ok() && l.check_reply(16 << 20).is_ok());
        assert!(matches!(l.check_reply((16 << 20) + 1), Err(Error::TooLarge(_))));
        // A reply must hold one key and value at their limits.
        let small = Limits { max_response_bytes: 1 << 20, ..Limits::default() };
        assert!(small.validate().is_err());
    }
}
