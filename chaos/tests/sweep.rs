//! The bounded sweep CI runs, and the seeds that found bugs (kept as regressions).
//! Long sweeps: `cargo run -p chaos --release -- --seeds 1..=2000` (see chaos/README.md).

use chaos::sim::{run, SimConfig};
use std::time::Duration;

fn cfg(seed: u64, nodes: usize, memory: bool) -> SimConfig {
    SimConfig { seed, nodes, memory, clients: 4, keys: 4, duration: Duration::from_secs(20), faults: true }
}

fn check(c: SimConfig) {
    let repro = c.reproduce();
    match run(&c) {
        Ok(r) => println!("seed {} ok: {} ops, {} faults", c.seed, r.ops, r.faults.len()),
        Err(f) => panic!(
            "seed {} failed: {}\nfaults:\n  {}\nops:\n  {}\nreproduce: {repro}",
            c.seed,
            f.message,
            f.faults.join("\n  "),
            f.timeline.iter().rev().take(40).rev().cloned().collect::<Vec<_>>().join("\n  ")
        ),
    }
}

/// Seeds that exposed bugs: a replaced member's address answering Raft RPCs for the old id
/// (7), a restarted memory node re-initializing under its old id (29), two leaders in one
/// term under openraft's default leader ids (17, 61), a split-vote livelock (43), a watch gap
/// after a snapshot install (2), a watch repeating events when resumed on a lagging node
/// (36, 42), a watch resuming before a node's history dropping the events it still kept (447),
/// a quorum restarted with the rest down waiting for them forever (28, 30), a node with a
/// wiped disk rejoining as its old self (8) and losing acknowledged writes that way (38), a
/// watch sent back by a resync to a snapshot older than where it already was (854).
#[test]
fn regression_seeds() {
    let seeds = [
        (7, 3, true),
        (29, 3, true),
        (17, 3, true),
        (61, 3, true),
        (43, 3, true),
        (2, 3, false),
        (36, 5, false),
        (42, 5, false),
        (447, 5, true),
        (28, 3, false),
        (30, 5, false),
        (8, 3, false),
        (38, 3, false),
        (854, 3, false),
    ];
    for (seed, nodes, memory) in seeds {
        check(cfg(seed, nodes, memory));
    }
}

/// The fixed CI range: 3- and 5-node clusters, memory and disk mode, every fault kind.
#[test]
fn ci_sweep() {
    for seed in 100..112 {
        check(cfg(seed, if seed % 3 == 0 { 5 } else { 3 }, seed % 2 == 1));
    }
}
