//! `statectl`: get, put, del, list, watch, members, status and bench against statenode.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;
use statenode_client::{v1 as pb, Client, Options};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "statectl", version, about = "Command-line client for statenode")]
struct Cli {
    /// Comma-separated client gRPC addresses.
    #[arg(long, global = true, env = "STATENODE_ENDPOINTS", value_delimiter = ',', default_value = "127.0.0.1:50001")]
    endpoints: Vec<String>,
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// API token for servers started with --api-token.
    #[arg(long, global = true, env = "STATENODE_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Speak TLS, trusting the CA in this directory (`statenode certs create-ca`).
    #[arg(long, global = true, env = "STATENODE_CERTS_DIR")]
    certs_dir: Option<std::path::PathBuf>,
    /// Present the client certificate `client.NAME.crt` from --certs-dir.
    #[arg(long, global = true, env = "STATENODE_CERT_NAME")]
    cert_name: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Output {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Consistency {
    Linearizable,
    Stale,
}

impl From<Consistency> for pb::Consistency {
    fn from(c: Consistency) -> Self {
        match c {
            Consistency::Linearizable => pb::Consistency::Linearizable,
            Consistency::Stale => pb::Consistency::Stale,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    Get {
        key: String,
        #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
        consistency: Consistency,
    },
    Put {
        key: String,
        value: String,
        /// Time to live: 30s, 500ms, 2m, 1h, or plain seconds.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// Only if the key's revision is this (0: only if absent).
        #[arg(long)]
        if_revision: Option<u64>,
    },
    Del {
        key: String,
        #[arg(long)]
        if_revision: Option<u64>,
    },
    List {
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 0)]
        limit: u32,
        #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
        consistency: Consistency,
    },
    Watch {
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 0)]
        from_revision: u64,
    },
    Members,
    Status,
    /// Saves a consistent backup of the whole cluster to FILE (restore it with `statenode
    /// restore`): every write acknowledged before the call, with a SHA-256 checksum.
    Backup {
        file: std::path::PathBuf,
    },
    /// Load test: prints ops/s and latency percentiles.
    Bench {
        #[arg(long, value_enum, default_value_t = BenchOp::Write)]
        op: BenchOp,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, default_value_t = 256)]
        value_size: usize,
        #[arg(long, value_parser = parse_duration, default_value = "10s")]
        duration: Duration,
        #[arg(long, default_value_t = 1000)]
        keys: u64,
    },
}

#[derive(Clone, Copy, ValueEnum, Debug)]
enum BenchOp {
    Write,
    Read,
    Stale,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("bad duration {s:?}: use e.g. 30s, 500ms, 2m, 1h");
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(bad)?),
        _ => return Err(bad()),
    };
    if d.is_zero() {
        return Err(bad());
    }
    Ok(d)
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn kv_json(kv: &pb::KeyValue) -> serde_json::Value {
    json!({
        "key": String::from_utf8_lossy(&kv.key),
        "value": String::from_utf8_lossy(&kv.value),
        "revision": kv.revision,
        "create_revision": kv.create_revision,
        "version": kv.version,
        "expires_at_ms": kv.expires_at_ms,
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let opts = Options { api_token: cli.api_token.clone(), ..Options::default() };
    let dialer = statenode_client::dialer(cli.certs_dir.as_deref(), cli.cert_name.as_deref())?;
    let client = Arc::new(Client::with_dialer(&cli.endpoints, opts, dialer)?);
    let out = cli.output;
    let print = |v: serde_json::Value, text: String| {
        if out == Output::Json {
            println!("{v}");
        } else {
            println!("{text}");
        }
    };
    match cli.command {
        Cmd::Get { key, consistency } => match client.get(key.clone(), consistency.into()).await? {
            Some(kv) => print(kv_json(&kv), String::from_utf8_lossy(&kv.value).into_owned()),
            None => {
                print(json!(null), format!("{key}: not found"));
                std::process::exit(2);
            }
        },
        Cmd::Put { key, value, ttl, if_revision } => {
            let req = pb::PutRequest {
                key: key.into(),
                value: value.into(),
                ttl_ms: ttl.map_or(0, |d| d.as_millis() as u64),
                condition: if if_revision.is_some() { pb::PutCondition::PutIfRevision as i32 } else { 0 },
                if_revision: if_revision.unwrap_or(0),
                ..Default::default()
            };
            let r = client.put(req).await?;
            print(
                json!({"applied": r.applied, "revision": r.revision}),
                if r.applied { format!("OK revision {}", r.revision) } else { "condition failed".into() },
            );
            if !r.applied {
                std::process::exit(3);
            }
        }
        Cmd::Del { key, if_revision } => {
            let req = pb::DeleteRequest {
                key: key.into(),
                condition: if if_revision.is_some() { pb::DeleteCondition::DeleteIfRevision as i32 } else { 0 },
                if_revision: if_revision.unwrap_or(0),
                ..Default::default()
            };
            let r = client.delete(req).await?;
            let outcome = pb::DeleteOutcome::try_from(r.outcome).map(|o| o.as_str_name()).unwrap_or("UNKNOWN");
            print(json!({"outcome": outcome, "revision": r.revision}), outcome.to_string());
        }
        Cmd::List { prefix, limit, consistency } => {
            let mut cursor = bytes::Bytes::new();
            let mut all = Vec::new();
            loop {
                let req = pb::ListRequest {
                    prefix: prefix.clone().into(),
                    cursor,
                    limit,
                    consistency: pb::Consistency::from(consistency) as i32,
                    keys_only: false,
                };
                let page = client.list(req).await?;
                all.extend(page.kvs);
                if page.next_cursor.is_empty() || limit > 0 {
                    break;
                }
                cursor = page.next_cursor;
            }
            let text = all
                .iter()
                .map(|kv| format!("{} = {}", String::from_utf8_lossy(&kv.key), String::from_utf8_lossy(&kv.value)))
                .collect::<Vec<_>>()
                .join("\n");
            print(json!(all.iter().map(kv_json).collect::<Vec<_>>()), text);
        }
        Cmd::Watch { prefix, from_revision } => {
            let mut stream = client.watch(prefix, from_revision).await?;
            while let Some(ev) = stream.message().await? {
                let kind = pb::EventType::try_from(ev.r#type).map(|t| t.as_str_name()).unwrap_or("?");
                print(
                    json!({"type": kind, "revision": ev.revision, "key": String::from_utf8_lossy(&ev.key), "value": String::from_utf8_lossy(&ev.value), "version": ev.version, "expired": ev.expired}),
                    format!(
                        "{} {} {} {}",
                        ev.revision,
                        kind,
                        String::from_utf8_lossy(&ev.key),
                        String::from_utf8_lossy(&ev.value)
                    ),
                );
            }
        }
        Cmd::Backup { file } => {
            let (size, revision, checksum) = backup(&client, &file).await?;
            print(
                json!({"file": file, "bytes": size, "revision": revision, "sha256": checksum}),
                format!("backup {}: {} bytes, revision {revision}, sha256 {checksum}", file.display(), size),
            );
        }
        Cmd::Members => {
            let r = client.members().await?;
            let rows: Vec<_> = r.members.iter().map(|m| json!({"id": m.id, "voter": m.voter, "leader": m.leader, "peer_addr": m.peer_addr, "grpc_addr": m.grpc_addr})).collect();
            let text = statenode_client::members_table(&r.members);
            print(json!(rows), text);
        }
        Cmd::Status => {
            let s = client.status().await?;
            print(
                json!({"id": s.id, "role": s.role, "leader_id": s.leader_id, "term": s.term, "last_log_index": s.last_log_index, "applied_index": s.applied_index, "members": s.members.len()}),
                format!(
                    "node {} {} term {} leader {} last_log {} applied {} members {}",
                    s.id,
                    s.role,
                    s.term,
                    s.leader_id,
                    s.last_log_index,
                    s.applied_index,
                    s.members.len()
                ),
            );
        }
        Cmd::Bench { op, concurrency, value_size, duration, keys } => {
            anyhow::ensure!(concurrency > 0 && keys > 0, "--concurrency and --keys must be positive");
            let r = bench::run(client, op, concurrency, value_size, duration, keys).await.context("bench")?;
            print(r.json(), r.text());
        }
    }
    Ok(())
}

mod bench {
    use super::*;

    pub struct Report {
        op: BenchOp,
        concurrency: usize,
        ops: usize,
        errors: usize,
        elapsed: Duration,
        lat_us: Vec<u64>,
    }

    impl Report {
        fn pct(&self, p: f64) -> f64 {
            if self.lat_us.is_empty() {
                return 0.0;
            }
            let i = ((self.lat_us.len() as f64 - 1.0) * p).round() as usize;
            self.lat_us[i] as f64 / 1000.0
        }

        fn ops_per_sec(&self) -> f64 {
            self.ops as f64 / self.elapsed.as_secs_f64()
        }

        pub fn json(&self) -> serde_json::Value {
            json!({"op": format!("{:?}", self.op).to_lowercase(), "concurrency": self.concurrency, "ops": self.ops, "errors": self.errors,
                "ops_per_sec": self.ops_per_sec(), "p50_ms": self.pct(0.5), "p90_ms": self.pct(0.9), "p99_ms": self.pct(0.99), "max_ms": self.pct(1.0)})
        }

        pub fn text(&self) -> String {
            format!(
                "op={:?} concurrency={} ops={} errors={} ops/s={:.0} p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms",
                self.op,
                self.concurrency,
                self.ops,
                self.errors,
                self.ops_per_sec(),
                self.pct(0.5),
                self.pct(0.9),
                self.pct(0.99),
                self.pct(1.0)
            )
        }
    }

    pub async fn run(
        client: Arc<Client>,
        op: BenchOp,
        concurrency: usize,
        value_size: usize,
        duration: Duration,
        keys: u64,
    ) -> anyhow::Result<Report> {
        let value = bytes::Bytes::from(vec![b'x'; value_size]);
        if !matches!(op, BenchOp::Write) {
            for k in 0..keys {
                client.put_simple(format!("bench/{k}"), value.clone()).await?;
            }
        }
        let start = Instant::now();
        let end = start + duration;
        let workers = (0..concurrency).map(|w| {
            let (client, value) = (client.clone(), value.clone());
            tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0usize);
                let mut k = w as u64;
                while Instant::now() < end {
                    k = (k.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407)) % keys;
                    let key = format!("bench/{k}");
                    let t = Instant::now();
                    let ok = match op {
                        BenchOp::Write => client.put_simple(key, value.clone()).await.is_ok(),
                        BenchOp::Read => client.get(key, pb::Consistency::Linearizable).await.is_ok(),
                        BenchOp::Stale => client.get(key, pb::Consistency::Stale).await.is_ok(),
                    };
                    if ok {
                        lat.push(t.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                }
                (lat, errors)
            })
        });
        let mut lat_us = Vec::new();
        let mut errors = 0;
        for w in workers.collect::<Vec<_>>() {
            let (l, e) = w.await?;
            lat_us.extend(l);
            errors += e;
        }
        let elapsed = start.elapsed();
        lat_us.sort_unstable();
        Ok(Report { op, concurrency, ops: lat_us.len(), errors, elapsed, lat_us })
    }
}

/// Streams a backup into `path` through `path.part`, which is renamed only once complete
/// and verified (length and checksum, read back from the disk). Shows progress on a
/// terminal. Returns the size, the revision and the checksum.
async fn backup(client: &Client, path: &std::path::Path) -> anyhow::Result<(u64, u64, String)> {
    use std::io::{IsTerminal, Write};
    use tokio::io::AsyncWriteExt;
    let mut stream = client.backup().await?;
    let part = std::path::PathBuf::from(format!("{}.part", path.display()));
    let mut f = tokio::fs::File::create(&part).await.with_context(|| format!("create {}", part.display()))?;
    let tty = std::io::stderr().is_terminal();
    let (mut total, mut got) = (0u64, 0u64);
    while let Some(chunk) = stream.message().await.context("backup stream")? {
        if got == 0 {
            total = chunk.total_bytes;
        }
        f.write_all(&chunk.data).await.with_context(|| format!("write {}", part.display()))?;
        got += chunk.data.len() as u64;
        if tty && total > 0 {
            let done = (got.min(total) * 40 / total) as usize;
            let mib = |n: u64| n as f64 / (1024.0 * 1024.0);
            eprint!("\r[{}{}] {:5.1} / {:.1} MiB", "#".repeat(done), " ".repeat(40 - done), mib(got), mib(total));
            let _ = std::io::stderr().flush();
        }
    }
    if tty {
        eprintln!();
    }
    f.sync_all().await?;
    drop(f);
    let bytes = tokio::fs::read(&part).await?;
    let verified = statenode_client::backup::decode(&bytes).map_err(|e| {
        let _ = std::fs::remove_file(&part);
        anyhow::anyhow!("the backup stream ended badly ({got} of {total} bytes): {e}")
    })?;
    let (revision, checksum) = (verified.revision, verified.checksum);
    tokio::fs::rename(&part, path).await.with_context(|| format!("rename to {}", path.display()))?;
    Ok((bytes.len() as u64, revision, checksum))
}
