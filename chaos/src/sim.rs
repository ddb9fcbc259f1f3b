//! One seeded simulation run: a cluster of real nodes on turmoil, clients recording a
//! history, a fault schedule drawn from the seed, then the checkers.

use crate::checker;
use crate::history::{self, History, Kind, Outcome, Seen};
use crate::net::{self, SimDialer};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use statenode::config::Config;
use statenode::io::{Clock, Disk, Io};
use statenode::store::{MemLog, MemSlot, SnapSm};
use statenode::{Listeners, Node, Role};
use statenode_client::{v1 as pb, Client, Options};
use std::cell::RefCell;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: usize,
    pub memory: bool,
    pub clients: usize,
    pub keys: usize,
    /// How long clients run; faults stop 3 s before the end.
    pub duration: Duration,
    pub faults: bool,
}

/// A simulated node's listeners: peer and gRPC on turmoil's network (no HTTP, no MQTT).
async fn listeners() -> std::io::Result<Listeners> {
    let (peer, grpc) = (net::incoming(PEER_PORT).await?, net::incoming(GRPC_PORT).await?);
    Ok(Listeners { peer, grpc, http: None, mqtt: None })
}

impl SimConfig {
    /// The command that replays this very simulation.
    pub fn reproduce(&self) -> String {
        let mode = if self.memory { "memory" } else { "disk" };
        format!(
            "cargo run -p chaos --release -- --seeds {} --nodes {} --mode {mode} --duration {} --clients {} --keys {}{}",
            self.seed,
            self.nodes,
            self.duration.as_secs(),
            self.clients,
            self.keys,
            if self.faults { "" } else { " --no-faults" }
        )
    }
}

#[derive(Debug)]
pub struct Report {
    pub ops: usize,
    pub acked_writes: usize,
    pub unknown: usize,
    pub faults: Vec<String>,
    /// Hash of the whole history: the same seed must give the same digest.
    pub digest: u64,
}

#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub timeline: Vec<String>,
    pub faults: Vec<String>,
}

/// 2026-01-01T00:00:00Z: simulated wall clocks start here.
const EPOCH_MS: i64 = 1_767_225_600_000;
const PEER_PORT: u16 = 7000;
const GRPC_PORT: u16 = 50001;

fn now_us() -> u64 {
    turmoil::sim_elapsed().unwrap_or_default().as_micros() as u64
}

#[derive(Default)]
struct Shared {
    history: History,
    /// `(term, id)` of every node that reported itself leader.
    claims: Vec<(u64, u64)>,
    /// Host name of the node that last said it leads.
    leader: Option<String>,
    done: bool,
    spare: Spare,
    /// Everything the watcher received.
    watched: Vec<Seen>,
    /// `(host, id)` of every status a node answered, in time order, with the time.
    identities: Vec<(u64, String, u64)>,
    /// Nodes restarted without their disk: `(time, host, the id it had)`.
    lost_disks: Vec<(u64, String, u64)>,
    /// The member ids the last leader status listed.
    members: Vec<u64>,
}

/// The spare node that joins under load and later leaves (membership changes).
#[derive(Default, Clone, Copy, PartialEq, Debug)]
enum Spare {
    #[default]
    Idle,
    JoinRequested,
    /// Started with this id; the join may still be in progress.
    Started(u64),
    LeaveRequested(u64),
    Left,
}

const SPARE: &str = "spare";

type SharedRef = Rc<RefCell<Shared>>;

fn node_name(i: usize) -> String {
    format!("n{i}")
}

fn node_config(i: usize, n: usize, memory: bool) -> Config {
    let mut c = Config { id: i as u64, memory, ..Config::default() };
    c.peer_listen = format!("0.0.0.0:{PEER_PORT}");
    c.grpc = format!("0.0.0.0:{GRPC_PORT}");
    c.peer_advertise = Some(format!("{}:{PEER_PORT}", node_name(i)));
    c.grpc_advertise = Some(format!("{}:{GRPC_PORT}", node_name(i)));
    c.bootstrap_expect = n;
    c.peers = (1..=n).map(|j| format!("{j}={}:{PEER_PORT}", node_name(j))).collect();
    // Low thresholds so snapshots, purges and snapshot installs happen in every run.
    c.raft.snapshot_threshold = 40;
    c.raft.keep_after_snapshot = 10;
    // Small chunks: an install takes many round trips, so leaders change in the middle of one.
    c.raft.snapshot_chunk_bytes = 512;
    // A slow reaper: expired keys stay in the state machine for a while, so a read that
    // judged TTLs by its own node's clock would be caught by the checker.
    c.raft.ttl_reap_ms = 3000;
    c.limits.request_timeout = Duration::from_secs(2);
    // A node restarted with an empty disk follows the documented lost-disk procedure.
    c.replace_lost_member = true;
    c
}

/// A node's disk, outside its host so it survives crashes; the driver may swap in an empty
/// one (a lost disk). `None` in memory mode.
type DiskSlot = Arc<Mutex<Option<Disk>>>;

fn fresh_disk() -> Disk {
    // Each log batch takes 1 ms of simulated time, so a crash can land between an append and
    // its write — after the leader reported its own entries flushed (ADR 0012).
    Disk {
        log: Arc::new(MemLog::with_write_latency(Duration::from_millis(1))),
        sm: Arc::new(SnapSm::new(MemSlot::default())),
    }
}

fn add_node(sim: &mut turmoil::Sim<'_>, cfg: &SimConfig, i: usize, skew: Arc<AtomicI64>, disk: DiskSlot) {
    let (n, memory) = (cfg.nodes, cfg.memory);
    sim.host(node_name(i).as_str(), move || {
        let (skew, disk) = (skew.clone(), disk.lock().expect("disk slot").clone());
        async move {
            let listeners = listeners().await?;
            let clock: Clock =
                Arc::new(move || (EPOCH_MS + (now_us() / 1000) as i64 + skew.load(Ordering::Relaxed)) as u64);
            let io = Io { dialer: Arc::new(SimDialer), clock, disk };
            let node = Node::start(node_config(i, n, memory), listeners, Role::Serve, io)
                .await
                .map_err(|e| -> Box<dyn std::error::Error> { e.to_string().into() })?;
            std::future::pending::<()>().await;
            drop(node);
            Ok(())
        }
    });
}

/// A host that waits until the driver asks it to join, then joins through n1 with a fresh
/// disk (so a new id, like a replaced machine).
fn add_spare(sim: &mut turmoil::Sim<'_>, cfg: &SimConfig, shared: SharedRef) {
    let memory = cfg.memory;
    sim.host(SPARE, move || {
        let shared = shared.clone();
        async move {
            while shared.borrow().spare != Spare::JoinRequested {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let listeners = listeners().await?;
            let clock: Clock = Arc::new(|| (EPOCH_MS + (now_us() / 1000) as i64) as u64);
            let disk = (!memory).then(fresh_disk);
            let io = Io { dialer: Arc::new(SimDialer), clock, disk };
            let mut config = Config { id: 0, memory, ..Config::default() };
            config.peer_listen = format!("0.0.0.0:{PEER_PORT}");
            config.grpc = format!("0.0.0.0:{GRPC_PORT}");
            config.peer_advertise = Some(format!("{SPARE}:{PEER_PORT}"));
            config.grpc_advertise = Some(format!("{SPARE}:{GRPC_PORT}"));
            config.raft = node_config(1, 3, memory).raft;
            let role = Role::Join { seed: format!("{}:{PEER_PORT}", node_name(1)) };
            let node = Node::start(config, listeners, role, io)
                .await
                .map_err(|e| -> Box<dyn std::error::Error> { e.to_string().into() })?;
            shared.borrow_mut().spare = Spare::Started(node.handle().id());
            std::future::pending::<()>().await;
            drop(node);
            Ok(())
        }
    });
}

fn client(endpoints: &[String], seed: u64, deadline: Duration) -> Client {
    let opts =
        Options { deadline, attempt_timeout: Duration::from_millis(800), rng_seed: Some(seed), ..Options::default() };
    let dialer: statenode_client::Dialer =
        Arc::new(|addr| net::sim_channel(addr).map_err(|_| statenode_client::Error::Endpoint(addr.to_string())));
    Client::with_dialer(endpoints, opts, dialer).expect("client")
}

fn endpoints(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{}:{GRPC_PORT}", node_name(i))).collect()
}

/// Runs one operation and records it.
async fn perform(c: &Client, shared: &SharedRef, client_no: usize, key: String, kind: Kind) {
    let op = history::perform(c, client_no, key, kind, now_us).await;
    shared.borrow_mut().history.push(op);
}

async fn workload(cfg: SimConfig, no: usize, shared: SharedRef) -> turmoil::Result {
    let c = client(&endpoints(cfg.nodes), cfg.seed ^ (no as u64 + 1) << 32, Duration::from_secs(3));
    let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_mul(31).wrapping_add(no as u64));
    let mut n = 0u64;
    let end = cfg.duration.as_micros() as u64;
    // The value this client last wrote to each key: what its NEX and VDEL (the MQTT door's
    // conditional ops) name.
    let mut mine: std::collections::HashMap<String, String> = Default::default();
    while now_us() < end {
        n += 1;
        let value = format!("c{no}-{n}");
        // One op in six goes to the TTL keys: puts that expire within 0.1–1.5 s.
        let (key, kind) = if rng.gen_range(0..6) == 0 {
            let kind = match rng.gen_range(0..100) {
                0..40 => Kind::PutTtl(value, rng.gen_range(100..1500)),
                40..50 => Kind::Delete,
                _ => Kind::Get,
            };
            (format!("t{}", rng.gen_range(0..2)), kind)
        } else {
            let (draw, key) = (rng.gen_range(0..100), format!("k{}", rng.gen_range(0..cfg.keys)));
            let kind = match (draw, mine.get(&key)) {
                (0..45, _) => Kind::Put(value),
                (45..55, _) => Kind::PutIfAbsent(value),
                (55..65, _) => Kind::Delete,
                (65..72, Some(v)) => Kind::PutIfAbsentOrEqual(v.clone()),
                (72..79, Some(v)) => Kind::DeleteIfValue(v.clone()),
                _ => Kind::Get,
            };
            (key, kind)
        };
        if let Kind::Put(v) | Kind::PutIfAbsent(v) = &kind {
            mine.insert(key.clone(), v.clone());
        }
        perform(&c, &shared, no, key, kind).await;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..20))).await;
    }
    Ok(())
}

/// After the faults are healed: every key read linearizably, so lost writes show up.
async fn verifier(cfg: SimConfig, shared: SharedRef) -> turmoil::Result {
    tokio::time::sleep(cfg.duration + Duration::from_secs(2)).await;
    let c = client(&endpoints(cfg.nodes), cfg.seed ^ 0xfeed, Duration::from_secs(30));
    let keys = (0..cfg.keys).map(|k| format!("k{k}")).chain((0..2).map(|k| format!("t{k}")));
    for key in keys {
        perform(&c, &shared, usize::MAX, key, Kind::Get).await;
    }
    shared.borrow_mut().done = true;
    Ok(())
}

/// Watches every key, reconnecting after faults from the revision after the last one seen.
async fn watcher(cfg: SimConfig, shared: SharedRef) -> turmoil::Result {
    let c = client(&endpoints(cfg.nodes), cfg.seed ^ 0x3a7c, Duration::from_secs(2));
    let mut next = 0u64;
    while !shared.borrow().done {
        let Ok(mut stream) = c.watch("k", next).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if shared.borrow().done { return Ok(()) }
                    continue;
                }
            };
            let Ok(Some(ev)) = msg else { break };
            let key = String::from_utf8_lossy(&ev.key).into_owned();
            let seen = match pb::EventType::try_from(ev.r#type) {
                Ok(pb::EventType::Put) => {
                    Seen::Put { revision: ev.revision, key, value: String::from_utf8_lossy(&ev.value).into_owned() }
                }
                Ok(pb::EventType::Delete) => Seen::Delete { revision: ev.revision, key },
                _ => Seen::Resync { next: ev.revision },
            };
            next = match &seen {
                Seen::Resync { next } => *next,
                Seen::Put { revision, .. } | Seen::Delete { revision, .. } => revision + 1,
            };
            shared.borrow_mut().watched.push(seen);
        }
    }
    Ok(())
}

/// Polls every node's status: who claims leadership in which term.
async fn monitor(cfg: SimConfig, shared: SharedRef) -> turmoil::Result {
    let probes: Vec<Client> = endpoints(cfg.nodes)
        .iter()
        .map(|e| client(std::slice::from_ref(e), cfg.seed ^ 0xabc, Duration::from_millis(200)))
        .collect();
    let admin = client(&endpoints(cfg.nodes), cfg.seed ^ 0xadd, Duration::from_secs(2));
    while !shared.borrow().done {
        let spare = shared.borrow().spare;
        if let Spare::LeaveRequested(id) = spare {
            // Done once the node is gone from the membership (or never made it in).
            match admin.leave(id).await {
                Ok(_) => shared.borrow_mut().spare = Spare::Left,
                Err(e) if e.code() == Some(tonic::Code::NotFound) => shared.borrow_mut().spare = Spare::Left,
                Err(_) => {}
            }
        }
        for (i, p) in probes.iter().enumerate() {
            if let Ok(s) = p.status().await {
                shared.borrow_mut().identities.push((now_us(), node_name(i + 1), s.id));
                if s.role == "leader" {
                    let mut sh = shared.borrow_mut();
                    sh.members = s.members.iter().map(|m| m.id).collect();
                    sh.claims.push((s.term, s.id));
                    sh.leader = Some(node_name(i + 1));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Undoes a fault at a given time.
enum Heal {
    Repair(Vec<String>, Vec<String>),
    Bounce(String),
    /// Restart these nodes at once.
    BounceMany(Vec<String>),
    /// Not a heal: cut the leader off (while a restarted node installs a snapshot).
    IsolateLeader,
    Release(String, Vec<String>),
    Latency,
}

struct Driver {
    cfg: SimConfig,
    rng: StdRng,
    names: Vec<String>,
    skews: Vec<Arc<AtomicI64>>,
    disks: Vec<DiskSlot>,
    crashed: Vec<String>,
    /// Crashed for good: never restarted in this run (a machine that does not come back).
    dead: Vec<String>,
    /// `(host, old id)` of nodes that lost their disk, until the old id left the membership:
    /// until then the old member counts as down (losing a quorum's disks loses data).
    replacing: Vec<(String, u64)>,
    /// Crashed nodes whose disk was replaced by an empty one.
    wiped: Vec<String>,
    /// Every fault is healed: no new ones.
    healed: bool,
    pending: Vec<(Duration, Heal)>,
    log: Vec<String>,
    /// Memory mode: when the last crashed node came back (its replacement must join first).
    last_bounce: Duration,
    /// When the spare is asked to join, and to leave.
    spare_join: Duration,
    spare_leave: Duration,
    shared: SharedRef,
}

impl Driver {
    fn note(&mut self, t: Duration, what: String) {
        self.log.push(format!("[{:>8.3}s] {what}", t.as_secs_f64()));
    }

    fn others(&self, of: &[String]) -> Vec<String> {
        self.names.iter().filter(|n| !of.contains(n)).cloned().collect()
    }

    fn partition(&mut self, sim: &mut turmoil::Sim<'_>, t: Duration, a: Vec<String>, b: Vec<String>, what: &str) {
        for x in &a {
            for y in &b {
                sim.partition(x.as_str(), y.as_str());
            }
        }
        self.note(t, format!("{what}: partition {a:?} | {b:?}"));
        let heal_at = t + Duration::from_millis(self.rng.gen_range(800..4000));
        self.pending.push((heal_at, Heal::Repair(a, b)));
    }

    fn inject(&mut self, sim: &mut turmoil::Sim<'_>, t: Duration) {
        let n = self.names.len();
        match self.rng.gen_range(0..9) {
            0 => {
                let mut names = self.names.clone();
                names.shuffle(&mut self.rng);
                let cut = self.rng.gen_range(1..n);
                let (a, b) = names.split_at(cut);
                self.partition(sim, t, a.to_vec(), b.to_vec(), "halves");
            }
            1 => {
                let leader = self.shared.borrow().leader.clone();
                let leader = leader.unwrap_or_else(|| self.names[self.rng.gen_range(0..n)].clone());
                let rest = self.others(std::slice::from_ref(&leader));
                self.partition(sim, t, vec![leader], rest, "isolate leader");
            }
            2 => {
                let mut names = self.names.clone();
                names.shuffle(&mut self.rng);
                let bridge = names.pop().expect("nodes");
                let cut = self.rng.gen_range(1..names.len().max(2));
                let (a, b) = names.split_at(cut.min(names.len()));
                if !a.is_empty() && !b.is_empty() {
                    self.partition(sim, t, a.to_vec(), b.to_vec(), &format!("bridge via {bridge}"));
                }
            }
            3 => self.crash(sim, t),
            7 => self.crash_many(sim, t),
            8 => self.lose_disk(sim, t),
            4 => {
                let victim = self.names[self.rng.gen_range(0..n)].clone();
                let rest = self.others(std::slice::from_ref(&victim));
                for o in &rest {
                    sim.hold(victim.as_str(), o.as_str());
                }
                self.note(t, format!("pause {victim} (hold all its links)"));
                let heal_at = t + Duration::from_millis(self.rng.gen_range(900..2500));
                self.pending.push((heal_at, Heal::Release(victim, rest)));
            }
            5 => {
                let i = self.rng.gen_range(0..n);
                let skew = self.rng.gen_range(-5000..5000);
                self.skews[i].store(skew, Ordering::Relaxed);
                let who = self.names[i].clone();
                self.note(t, format!("clock of {who} jumps to skew {skew} ms"));
            }
            _ => {
                let max = self.rng.gen_range(5..60);
                sim.set_max_message_latency(Duration::from_millis(max));
                self.note(t, format!("message latency up to {max} ms"));
                let heal_at = t + Duration::from_millis(self.rng.gen_range(1000..3000));
                self.pending.push((heal_at, Heal::Latency));
            }
        }
    }

    /// Nodes down, or whose old member still waits to be replaced.
    fn down(&mut self) -> Vec<String> {
        let members = self.shared.borrow().members.clone();
        self.replacing.retain(|(_, old)| members.contains(old));
        let mut down = self.crashed.clone();
        down.extend(self.replacing.iter().map(|(h, _)| h.clone()).filter(|h| !self.crashed.contains(h)));
        down
    }

    fn crash(&mut self, sim: &mut turmoil::Sim<'_>, t: Duration) {
        self.crash_one(sim, t, false);
    }

    /// Disk mode: a node crashes and comes back with an empty disk (memory mode: a crash).
    fn lose_disk(&mut self, sim: &mut turmoil::Sim<'_>, t: Duration) {
        self.crash_one(sim, t, !self.cfg.memory);
    }

    /// Crashes one node that is up, if a quorum stays up; `wipe` replaces its disk too.
    fn crash_one(&mut self, sim: &mut turmoil::Sim<'_>, t: Duration, wipe: bool) {
        let max_down = (self.names.len() - 1) / 2;
        // Memory mode keeps data only while a quorum stays up: one node at a time, and
        // only once the last one's replacement had time to join.
        let memory_wait = self.cfg.memory && t < self.last_bounce + Duration::from_secs(8);
        let down = self.down();
        if down.len() >= max_down || memory_wait || (self.cfg.memory && !self.crashed.is_empty()) {
            return;
        }
        let up: Vec<String> = self.others(&down);
        // Disk mode, half the time: the leader, back before anyone stands for election
        // (openraft lets it resume its term from its disk).
        let quick = !self.cfg.memory && !wipe && self.rng.gen_bool(0.5);
        let leader = self.shared.borrow().leader.clone().filter(|l| quick && up.contains(l));
        let victim = leader.unwrap_or_else(|| up[self.rng.gen_range(0..up.len())].clone());
        sim.crash(victim.as_str());
        self.lose_unsynced(&victim);
        self.crashed.push(victim.clone());
        if wipe {
            let i = self.names.iter().position(|n| n == &victim).expect("node");
            *self.disks[i].lock().expect("disk slot") = Some(fresh_disk());
            self.wiped.push(victim.clone());
            self.note(t, format!("crash {victim} and lose its disk"));
        } else {
            self.note(t, format!("crash {victim}"));
        }
        let back_in = if quick { 20..300 } else { 500..3000 };
        let heal_at = t + Duration::from_millis(self.rng.gen_range(back_in));
        self.pending.push((heal_at, Heal::Bounce(victim)));
    }

    /// Disk mode: several nodes crash at once — all of them, or a majority — and come back
    /// together; or all crash and only a quorum comes back while the rest stay down for good
    /// (power loss where one machine does not return). Memory mode keeps data only while a
    /// quorum stays up: a plain crash there.
    fn crash_many(&mut self, sim: &mut turmoil::Sim<'_>, t: Duration) {
        if self.cfg.memory || !self.down().is_empty() {
            return self.crash(sim, t);
        }
        let mut names = self.names.clone();
        names.shuffle(&mut self.rng);
        let quorum = names.len() / 2 + 1;
        let (victims, back, what) = match self.rng.gen_range(0..3) {
            0 => (names.clone(), names.clone(), "crash every node"),
            1 if self.dead.is_empty() => {
                let back = names[..quorum].to_vec();
                self.dead = names[quorum..].to_vec();
                (names.clone(), back, "crash every node; only a quorum comes back")
            }
            _ => (names[..quorum].to_vec(), names[..quorum].to_vec(), "crash a majority at once"),
        };
        for v in &victims {
            sim.crash(v.as_str());
            self.lose_unsynced(v);
        }
        self.crashed.extend(victims.iter().cloned());
        self.note(t, format!("{what}: {victims:?}"));
        let heal_at = t + Duration::from_millis(self.rng.gen_range(500..3000));
        self.pending.push((heal_at, Heal::BounceMany(back)));
    }

    /// What a crashed node's disk keeps: the log loses the batches it had not written yet,
    /// and its commit index may be older than the one last saved (it rides with the next
    /// batch). The state machine keeps only snapshots, each durable before the log behind it
    /// is purged (ADR 0013): a restart applies the log after the snapshot again.
    fn lose_unsynced(&mut self, name: &str) {
        // Drawn as when the state machine lost a part of its applies, so that each seed's
        // faults stay where they were.
        if !self.rng.gen_bool(0.5) {
            self.rng.gen_range(0.0..=1.0f64);
        }
        let i = self.names.iter().position(|n| n == name).expect("node");
        if let Some(d) = &*self.disks[i].lock().expect("disk slot") {
            d.log.lose_unsynced();
        }
    }

    /// Records that `name` restarts without its data, under whatever id it last reported.
    fn note_lost_disk(&mut self, t: Duration, name: &str) {
        let mut sh = self.shared.borrow_mut();
        let last = sh.identities.iter().rev().find(|(_, n, _)| n == name).map(|(_, _, id)| *id);
        let i = self.names.iter().position(|n| n == name).expect("node") as u64 + 1;
        let old = last.unwrap_or(i);
        sh.lost_disks.push((t.as_micros() as u64, name.to_string(), old));
        if !self.cfg.memory {
            self.replacing.push((name.to_string(), old));
        }
    }

    fn heal(&mut self, sim: &mut turmoil::Sim<'_>, t: Duration, h: Heal) {
        match h {
            Heal::Repair(a, b) => {
                for x in &a {
                    for y in &b {
                        sim.repair(x.as_str(), y.as_str());
                    }
                }
                self.note(t, format!("repair {a:?} | {b:?}"));
            }
            Heal::Bounce(name) => self.restart(sim, t, &[name]),
            Heal::BounceMany(names) => self.restart(sim, t, &names),
            Heal::IsolateLeader => {
                let leader = self.shared.borrow().leader.clone().filter(|_| !self.healed);
                if let Some(leader) = leader {
                    let rest = self.others(std::slice::from_ref(&leader));
                    self.partition(sim, t, vec![leader], rest, "isolate leader after a restart");
                }
            }
            Heal::Release(v, rest) => {
                for o in &rest {
                    sim.release(v.as_str(), o.as_str());
                }
                self.note(t, format!("resume {v}"));
            }
            Heal::Latency => {
                sim.set_max_message_latency(Duration::from_millis(3));
                self.note(t, "latency back to normal".into());
            }
        }
    }

    fn restart(&mut self, sim: &mut turmoil::Sim<'_>, t: Duration, names: &[String]) {
        for name in names {
            if self.cfg.memory || self.wiped.contains(name) {
                self.note_lost_disk(t, name);
            }
            self.wiped.retain(|w| w != name);
            sim.bounce(name.as_str());
        }
        self.crashed.retain(|c| !names.contains(c) || self.dead.contains(c));
        self.last_bounce = t;
        self.note(t, format!("restart {names:?}"));
        // A restarted node that lags past the purge point gets a snapshot: half the time,
        // the leader is cut off while it streams (not once everything is healed).
        if self.rng.gen_bool(0.5) && !self.healed {
            let at = t + Duration::from_millis(self.rng.gen_range(20..400));
            self.pending.push((at, Heal::IsolateLeader));
        }
    }

    /// Membership changes under load: the spare joins, later leaves, then is stopped.
    fn membership(&mut self, sim: &mut turmoil::Sim<'_>, t: Duration) {
        let spare = self.shared.borrow().spare;
        match spare {
            Spare::Idle if t >= self.spare_join => {
                self.shared.borrow_mut().spare = Spare::JoinRequested;
                self.note(t, "spare joins (learner, then voter)".into());
            }
            Spare::Started(id) if t >= self.spare_leave => {
                self.shared.borrow_mut().spare = Spare::LeaveRequested(id);
                self.note(t, format!("spare (node {id}) asked to leave"));
            }
            Spare::Left if sim.is_host_running(SPARE) => {
                sim.crash(SPARE);
                self.note(t, "spare left the cluster and stopped".into());
            }
            _ => {}
        }
    }

    fn heal_due(&mut self, sim: &mut turmoil::Sim<'_>, t: Duration, all: bool) {
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            if all || self.pending[i].0 <= t {
                due.push(self.pending.remove(i).1);
            } else {
                i += 1;
            }
        }
        for h in due {
            self.heal(sim, t, h);
        }
        if all {
            for s in &self.skews {
                s.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// Runs the simulation for `cfg` and checks the history.
pub fn run(cfg: &SimConfig) -> Result<Report, Failure> {
    statenode::raft::rt::seed_thread(cfg.seed);
    let mut sim = turmoil::Builder::new()
        .simulation_duration(cfg.duration + Duration::from_secs(90))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_micros(100))
        .max_message_latency(Duration::from_millis(3))
        .tcp_capacity(65536)
        .rng_seed(cfg.seed)
        .build();
    let skews: Vec<Arc<AtomicI64>> = (0..cfg.nodes).map(|_| Arc::new(AtomicI64::new(0))).collect();
    let disks: Vec<DiskSlot> = (0..cfg.nodes).map(|_| Arc::new(Mutex::new((!cfg.memory).then(fresh_disk)))).collect();
    for i in 1..=cfg.nodes {
        add_node(&mut sim, cfg, i, skews[i - 1].clone(), disks[i - 1].clone());
    }
    let shared: SharedRef = Rc::default();
    for no in 0..cfg.clients {
        sim.client(format!("c{no}").as_str(), workload(cfg.clone(), no, shared.clone()));
    }
    if cfg.faults {
        add_spare(&mut sim, cfg, shared.clone());
    }
    sim.client("monitor", monitor(cfg.clone(), shared.clone()));
    sim.client("watcher", watcher(cfg.clone(), shared.clone()));
    sim.client("verifier", verifier(cfg.clone(), shared.clone()));
    let mut d = Driver {
        cfg: cfg.clone(),
        rng: StdRng::seed_from_u64(cfg.seed ^ 0x5eed),
        names: (1..=cfg.nodes).map(node_name).collect(),
        skews,
        disks,
        crashed: Vec::new(),
        dead: Vec::new(),
        replacing: Vec::new(),
        wiped: Vec::new(),
        healed: false,
        pending: Vec::new(),
        log: Vec::new(),
        last_bounce: Duration::ZERO,
        spare_join: Duration::ZERO,
        spare_leave: Duration::ZERO,
        shared: shared.clone(),
    };
    let fault_end = cfg.duration.saturating_sub(Duration::from_secs(3));
    d.spare_join = Duration::from_millis(d.rng.gen_range(3000..7000));
    d.spare_leave = d.spare_join + Duration::from_millis(d.rng.gen_range(4000..8000));
    let mut next_fault = Duration::from_secs(2);
    let mut healed = false;
    loop {
        let finished = sim.step().map_err(|e| Failure {
            message: format!("simulation error: {e}"),
            timeline: Vec::new(),
            faults: d.log.clone(),
        })?;
        if finished {
            break;
        }
        let t = sim.elapsed();
        d.heal_due(&mut sim, t, false);
        if cfg.faults {
            d.membership(&mut sim, t);
        }
        if cfg.faults && t >= next_fault && t < fault_end {
            d.inject(&mut sim, t);
            next_fault = t + Duration::from_millis(d.rng.gen_range(300..2000));
        }
        if t >= fault_end && !healed {
            d.healed = true;
            d.heal_due(&mut sim, t, true);
            d.note(t, "all faults healed".into());
            healed = true;
        }
    }
    let faults = d.log.clone();
    let shared = shared.borrow();
    check(&shared, faults)
}

fn check(shared: &Shared, faults: Vec<String>) -> Result<Report, Failure> {
    let h = &shared.history;
    let fail = |message: String, timeline: Vec<String>| Failure { message, timeline, faults: faults.clone() };
    checker::linearizable(h).map_err(|v| fail(v.message, v.timeline))?;
    checker::versions_monotonic(h).map_err(|m| fail(m, Vec::new()))?;
    checker::expired_never_returned(h).map_err(|m| fail(m, Vec::new()))?;
    checker::one_leader_per_term(&shared.claims).map_err(|m| fail(m, Vec::new()))?;
    checker::watch_complete(h, &shared.watched).map_err(|m| fail(m, Vec::new()))?;
    checker::no_amnesia(&shared.lost_disks, &shared.identities).map_err(|m| fail(m, Vec::new()))?;
    let finals = h.ops.iter().filter(|o| o.client == usize::MAX);
    if finals.clone().any(|o| o.outcome == Outcome::Failed) {
        return Err(fail(
            "the cluster did not recover: a final read failed after all faults healed".into(),
            Vec::new(),
        ));
    }
    let mut hasher = DefaultHasher::new();
    for op in &h.ops {
        op.to_string().hash(&mut hasher);
    }
    let acked_writes = h.ops.iter().filter(|o| matches!(o.outcome, Outcome::Put { applied: true, .. })).count();
    let unknown = h.ops.iter().filter(|o| o.outcome == Outcome::Unknown).count();
    Ok(Report { ops: h.ops.len(), acked_writes, unknown, faults, digest: hasher.finish() })
}
