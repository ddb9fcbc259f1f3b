//! `cargo run -p chaos --release -- --seeds 1..200`: seeded fault simulations of statenode.

use chaos::sim::{run, SimConfig};
use clap::{Parser, ValueEnum};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "chaos", about = "Deterministic fault simulation of statenode")]
struct Cli {
    /// Seed range: `1..200` (end excluded), `1..=200`, or one seed.
    #[arg(long, default_value = "1..20")]
    seeds: String,
    /// Cluster size; by default 5 nodes for every third seed, else 3.
    #[arg(long)]
    nodes: Option<usize>,
    /// Storage mode; by default odd seeds run in memory mode, even seeds in disk mode.
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Simulated seconds of client load.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    #[arg(long, default_value_t = 4)]
    clients: usize,
    #[arg(long, default_value_t = 4)]
    keys: usize,
    /// Run without faults (a baseline).
    #[arg(long)]
    no_faults: bool,
    /// Print node logs (RUST_LOG filters).
    #[arg(long)]
    verbose: bool,
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq)]
enum Mode {
    Memory,
    Disk,
}

fn parse_seeds(s: &str) -> Result<Vec<u64>, String> {
    let bad = || format!("bad --seeds {s:?}: use 1..200, 1..=200 or 7");
    if let Some((a, b)) = s.split_once("..=") {
        let (a, b): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        return Ok((a..=b).collect());
    }
    if let Some((a, b)) = s.split_once("..") {
        let (a, b): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        return Ok((a..b).collect());
    }
    Ok(vec![s.parse().map_err(|_| bad())?])
}

fn main() {
    let cli = Cli::parse();
    if cli.verbose {
        tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    }
    let seeds = match parse_seeds(&cli.seeds) {
        Ok(s) if !s.is_empty() => s,
        Ok(_) => return eprintln!("empty seed range"),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let mut failed = Vec::new();
    for &seed in &seeds {
        let cfg = SimConfig {
            seed,
            nodes: cli.nodes.unwrap_or(if seed % 3 == 0 { 5 } else { 3 }),
            memory: cli.mode.map_or(seed % 2 == 1, |m| m == Mode::Memory),
            clients: cli.clients,
            keys: cli.keys,
            duration: Duration::from_secs(cli.duration),
            faults: !cli.no_faults,
        };
        let t = Instant::now();
        let mode = if cfg.memory { "memory" } else { "disk" };
        let repro = cfg.reproduce();
        match run(&cfg) {
            Ok(r) => println!(
                "seed {seed:>5} nodes={} mode={mode:<6} ops={:>5} acked-writes={:>4} unknown={:>3} faults={:>3} digest={:016x} ok ({:.1}s)",
                cfg.nodes,
                r.ops,
                r.acked_writes,
                r.unknown,
                r.faults.len(),
                r.digest,
                t.elapsed().as_secs_f64()
            ),
            Err(f) => {
                println!("seed {seed:>5} nodes={} mode={mode} FAILED: {}", cfg.nodes, f.message);
                println!("  faults:");
                for l in &f.faults {
                    println!("    {l}");
                }
                if !f.timeline.is_empty() {
                    println!("  operations on the key:");
                    for l in f.timeline.iter().rev().take(60).rev() {
                        println!("    {l}");
                    }
                }
                println!("  reproduce: {repro}");
                failed.push(seed);
            }
        }
    }
    println!(
        "{} passed, {} failed ({} seeds in {:.1}s)",
        seeds.len() - failed.len(),
        failed.len(),
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        println!("failed seeds: {failed:?}");
        std::process::exit(1);
    }
}
