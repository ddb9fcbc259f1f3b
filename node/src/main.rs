//! The `statenode` binary: serve, join, leave, members, dev.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use statenode::config::{Config, LogFormat, StoreConfig};
use statenode::{Listeners, Node, Role};
use statenode_client::{members_table, Client, Options};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// mimalloc, not glibc's malloc: under load a node allocates and frees a few small buffers per
/// request on several threads, and glibc's arenas spent 13 % of its CPU on it.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "statenode", version, about = "A Raft-replicated key/value state cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node. With no flags: a single-node cluster with data in ./statenode-data.
    Serve(NodeArgs),
    /// Run a node that joins an existing cluster through any member's peer address.
    Join {
        /// Peer address (host:port) of any member.
        #[arg(long, env = "STATENODE_SEED")]
        seed: String,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Remove a member from the cluster (then stop that node and wipe its data).
    Leave {
        #[arg(long)]
        id: u64,
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// List the cluster's members.
    Members {
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// Run a local cluster of child processes on loopback; Ctrl-C stops them all.
    Dev {
        #[arg(long, default_value_t = 3)]
        nodes: u16,
        #[arg(long)]
        memory: bool,
        /// First node's peer port; node i uses base + i - 1.
        #[arg(long, default_value_t = 7001)]
        peer_base: u16,
        /// First node's gRPC port; node i uses base + i - 1.
        #[arg(long, default_value_t = 50001)]
        grpc_base: u16,
        /// First node's HTTP port; node i uses base + i - 1.
        #[arg(long, default_value_t = 3500)]
        http_base: u16,
        /// First node's MQTT port; node i uses base + i - 1.
        #[arg(long, default_value_t = 1883)]
        mqtt_base: u16,
        #[arg(long, default_value = "./statenode-dev")]
        data_dir: PathBuf,
    },
    /// Seeds a new cluster's first node from a backup (`statectl backup FILE`): verifies the
    /// file and writes the (empty) data dir; then `statenode serve` with the same flags runs it
    /// as a one-node cluster holding the backup's keys and revisions. Add nodes with join.
    Restore {
        file: PathBuf,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Make the certificates for TLS (`serve --certs-dir DIR`).
    #[command(subcommand)]
    Certs(Certs),
    /// Exit 0 when this node's HTTP door answers `/readyz` (or `/livez`) with 200: the
    /// container image's HEALTHCHECK, which has no shell and no curl.
    Health {
        /// The node's HTTP address; an unspecified host (0.0.0.0) means this machine.
        #[arg(long, env = "STATENODE_HTTP", default_value = "127.0.0.1:3500")]
        http: String,
        /// Ask `/livez` (the process answers) instead of `/readyz` (it serves linearizably).
        #[arg(long)]
        live: bool,
        /// The node speaks TLS: trust the CA in this directory.
        #[arg(long, env = "STATENODE_CERTS_DIR")]
        certs_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
#[allow(clippy::enum_variant_names)] // the subcommands are create-ca, create-node, create-client
enum Certs {
    /// A new cluster CA: ca.crt (give it to every node and client) and ca.key (keep it off
    /// the nodes; it makes every other certificate).
    CreateCa {
        #[arg(long)]
        certs_dir: PathBuf,
        /// Replace files that exist.
        #[arg(long)]
        overwrite: bool,
    },
    /// node.crt and node.key for a node reached at these host names and IP addresses.
    CreateNode {
        #[arg(long)]
        certs_dir: PathBuf,
        #[arg(long)]
        overwrite: bool,
        #[arg(required = true)]
        hosts: Vec<String>,
    },
    /// client.NAME.crt and client.NAME.key: a client certificate for the principal NAME.
    CreateClient {
        #[arg(long)]
        certs_dir: PathBuf,
        #[arg(long)]
        overwrite: bool,
        name: String,
    },
}

#[derive(Args)]
struct Endpoints {
    /// Comma-separated client gRPC addresses (host:port).
    #[arg(long, env = "STATENODE_ENDPOINTS", value_delimiter = ',', default_value = "127.0.0.1:50001")]
    endpoints: Vec<String>,
    /// API token, for clusters started with --api-token.
    #[arg(long, env = "STATENODE_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// The cluster speaks TLS: trust the CA in this directory.
    #[arg(long, env = "STATENODE_CERTS_DIR")]
    certs_dir: Option<PathBuf>,
    /// Present the client certificate client.NAME.crt from --certs-dir.
    #[arg(long, env = "STATENODE_CERT_NAME")]
    cert_name: Option<String>,
}

impl Endpoints {
    /// A client over these endpoints: followers forward admin calls to the leader, and an
    /// unavailable node is passed over for the next.
    fn client(&self) -> anyhow::Result<Client> {
        for ep in &self.endpoints {
            statenode::config::check_addr(ep)?;
        }
        // One attempt may take as long as a membership change; a leave is not repeated
        // while the first may still be under way.
        let (deadline, attempt_timeout) = (Duration::from_secs(60), Duration::from_secs(30));
        let opts = Options { deadline, attempt_timeout, api_token: self.api_token.clone(), ..Options::default() };
        let dialer = statenode_client::dialer(self.certs_dir.as_deref(), self.cert_name.as_deref())?;
        Ok(Client::with_dialer(&self.endpoints, opts, dialer)?)
    }
}

/// Node flags; every one also reads `STATENODE_<NAME>` and overrides the config file.
#[derive(Args, Default)]
struct NodeArgs {
    /// TOML config file (keys as in Config; flags and env override it).
    #[arg(long, env = "STATENODE_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "STATENODE_ID", conflicts_with = "id_from_name")]
    id: Option<u64>,
    /// The id from a StatefulSet pod name: `statenode-N` is node N+1 (Kubernetes passes
    /// `$(POD_NAME)`).
    #[arg(long, env = "STATENODE_ID_FROM_NAME")]
    id_from_name: Option<String>,
    #[arg(long, env = "STATENODE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Keep nothing on disk.
    #[arg(long, env = "STATENODE_MEMORY", num_args = 0..=1, default_missing_value = "true")]
    memory: Option<bool>,
    #[arg(long, env = "STATENODE_PEER_LISTEN")]
    peer_listen: Option<String>,
    #[arg(long, env = "STATENODE_PEER_ADVERTISE")]
    peer_advertise: Option<String>,
    #[arg(long, env = "STATENODE_GRPC")]
    grpc: Option<String>,
    #[arg(long, env = "STATENODE_GRPC_ADVERTISE")]
    grpc_advertise: Option<String>,
    /// HTTP listen address (Dapr state API + native /v1 API).
    #[arg(long, env = "STATENODE_HTTP")]
    http: Option<String>,
    /// Reserved for the MQTT front door.
    #[arg(long, env = "STATENODE_MQTT")]
    mqtt: Option<String>,
    #[arg(long, env = "STATENODE_BOOTSTRAP_EXPECT")]
    bootstrap_expect: Option<usize>,
    /// id=host:port,... peer addresses of the initial configuration.
    #[arg(long, env = "STATENODE_PEERS", value_delimiter = ',')]
    peers: Option<Vec<String>>,
    #[arg(long, env = "STATENODE_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// Seconds a node with no data waits for its peers (or the seed) to answer.
    #[arg(long, env = "STATENODE_BOOTSTRAP_TIMEOUT")]
    bootstrap_timeout: Option<u64>,
    /// Disk mode: this node lost its data; join under a new id and remove the old entry
    /// once caught up (see docs/operations.md).
    #[arg(long, env = "STATENODE_REPLACE_LOST_MEMBER", num_args = 0..=1, default_missing_value = "true")]
    replace_lost_member: Option<bool>,
    /// Require this `dapr-api-token` on every client request (health probes exempt).
    #[arg(long, env = "STATENODE_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Also accept the named tokens of this file (`NAME TOKEN` a line), read again when it
    /// changes.
    #[arg(long, env = "STATENODE_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// `/metrics` asks for a token too (else only it and the health probes are open).
    #[arg(long, env = "STATENODE_PROTECT_METRICS", num_args = 0..=1, default_missing_value = "true")]
    protect_metrics: Option<bool>,
    /// Require this secret on every peer RPC; every member must be given the same one.
    #[arg(long, env = "STATENODE_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// TLS on every listener, mutual TLS between peers, with the certificates in this
    /// directory (`statenode certs`).
    #[arg(long, env = "STATENODE_CERTS_DIR")]
    certs_dir: Option<PathBuf>,
    /// App id for stores whose key prefix is `appid` (when no `dapr-app-id` header is sent).
    #[arg(long, env = "STATENODE_APP_ID")]
    app_id: Option<String>,
    /// Dapr state stores, `name[:keyPrefix]`, comma-separated; the first is the default
    /// store and shares its keys with the native API.
    #[arg(long, env = "STATENODE_STORES", value_delimiter = ',')]
    stores: Option<Vec<String>>,
}

impl NodeArgs {
    /// defaults < file < env < flags (clap already ranks flags over env).
    fn config(self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
                Config::from_toml(&text)?
            }
            None => Config { id: 0, ..Config::default() },
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = v; } )* };
        }
        set!(id, data_dir, peer_listen, grpc, http, mqtt, bootstrap_expect, peers, log_format);
        if let Some(name) = &self.id_from_name {
            c.id = statenode::config::id_from_name(name)?;
        }
        if let Some(m) = self.memory {
            c.memory = m;
        }
        if let Some(r) = self.replace_lost_member {
            c.replace_lost_member = r;
        }
        if let Some(p) = self.protect_metrics {
            c.protect_metrics = p;
        }
        if let Some(secs) = self.bootstrap_timeout {
            c.bootstrap_timeout = Duration::from_secs(secs);
        }
        if self.peer_advertise.is_some() {
            c.peer_advertise = self.peer_advertise;
        }
        if self.grpc_advertise.is_some() {
            c.grpc_advertise = self.grpc_advertise;
        }
        if self.api_token.is_some() {
            c.api_token = self.api_token;
        }
        if self.token_file.is_some() {
            c.token_file = self.token_file;
        }
        if self.cluster_secret.is_some() {
            c.cluster_secret = self.cluster_secret;
        }
        if self.certs_dir.is_some() {
            c.certs_dir = self.certs_dir;
        }
        if self.app_id.is_some() {
            c.app_id = self.app_id;
        }
        if let Some(stores) = self.stores {
            c.stores = stores.iter().map(|s| StoreConfig::parse(s)).collect::<Result<_, _>>()?;
        }
        if c.id == 0 && !c.peers.is_empty() {
            anyhow::bail!("--peers needs --id: which of the peers is this node?");
        }
        Ok(c)
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args.config()?, Role::Serve).await,
        Command::Join { seed, node } => serve(node.config()?, Role::Join { seed }).await,
        Command::Leave { id, endpoints } => {
            let r = endpoints.client()?.leave(id).await?;
            println!("node {id} removed; stop it now and wipe its data before reusing the directory");
            println!("{}", members_table(&r.members));
            Ok(())
        }
        Command::Members { endpoints } => {
            let r = endpoints.client()?.members().await?;
            println!("{}", members_table(&r.members));
            Ok(())
        }
        Command::Dev { nodes, memory, peer_base, grpc_base, http_base, mqtt_base, data_dir } => {
            let base =
                statenode::node::dev::Ports { peer: peer_base, grpc: grpc_base, http: http_base, mqtt: mqtt_base };
            statenode::node::dev::run(nodes, memory, base, data_dir).await
        }
        Command::Restore { file, node } => {
            let config = node.config()?;
            config.validate()?;
            let bytes = std::fs::read(&file).with_context(|| format!("read {}", file.display()))?;
            let r = statenode::node::restore(&config, &bytes).with_context(|| format!("restore {}", file.display()))?;
            println!(
                "restored {} keys at revision {} (sha256 {}) into {} as node {} of a new cluster; start it with `statenode serve` and the same flags",
                r.keys,
                r.revision,
                r.checksum,
                config.data_dir.display(),
                r.id
            );
            Ok(())
        }
        Command::Certs(c) => {
            let made = match c {
                Certs::CreateCa { certs_dir, overwrite } => statenode::tls::create_ca(&certs_dir, overwrite)?,
                Certs::CreateNode { certs_dir, overwrite, hosts } => {
                    statenode::tls::create_node(&certs_dir, &hosts, overwrite)?
                }
                Certs::CreateClient { certs_dir, overwrite, name } => {
                    statenode::tls::create_client(&certs_dir, &name, overwrite)?
                }
            };
            println!("wrote {} and its key", made.display());
            Ok(())
        }
        Command::Health { http, live, certs_dir } => {
            let path = if live { "/livez" } else { "/readyz" };
            let tls = certs_dir.map(|d| statenode_client::tls::client_config(&d, None)).transpose()?;
            let status = tokio::task::spawn_blocking(move || probe(&http, path, tls)).await??;
            anyhow::ensure!(status == 200, "{path} answered {status}");
            Ok(())
        }
    }
}

/// One `GET path` over HTTP/1.0 to `addr` (over TLS with `tls`), within 3 s; returns the
/// status code.
fn probe(addr: &str, path: &str, tls: Option<Arc<rustls::ClientConfig>>) -> anyhow::Result<u16> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let addr = statenode::config::routable(addr);
    let sock = addr.to_socket_addrs()?.next().with_context(|| format!("{addr} resolves to nothing"))?;
    let timeout = Duration::from_secs(3);
    let conn = std::net::TcpStream::connect_timeout(&sock, timeout).with_context(|| format!("connect {addr}"))?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    let mut conn: Box<dyn ReadWrite> = match tls {
        Some(config) => {
            let mut config = Arc::unwrap_or_clone(config);
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h).trim_matches(['[', ']']);
            let name = rustls::pki_types::ServerName::try_from(host.to_string())?;
            let tls = rustls::ClientConnection::new(Arc::new(config), name)?;
            Box::new(rustls::StreamOwned::new(tls, conn))
        }
        None => Box::new(conn),
    };
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    // HTTP/1.0: the server closes the connection after its answer. (A TLS peer that closes
    // without close_notify errs at the end: what came before still counts.)
    let mut head = Vec::new();
    if let Err(e) = conn.take(256).read_to_end(&mut head) {
        anyhow::ensure!(!head.is_empty(), e);
    }
    let line = String::from_utf8_lossy(&head);
    // "HTTP/1.x 200 OK"
    let code = line.split_whitespace().nth(1).and_then(|c| c.parse().ok());
    code.with_context(|| format!("{addr} answered no HTTP status"))
}

trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

async fn serve(config: Config, role: Role) -> anyhow::Result<()> {
    config.validate()?;
    init_logging(config.log_format);
    let listeners = Listeners::bind(&config).await?;
    let node = Node::start(config, listeners, role, statenode::io::Io::real()).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
