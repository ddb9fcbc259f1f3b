//! The bounded table of recent results per client, for exactly-once writes.

use super::command::{ClientRef, CommandResult};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// What the table knows about a `(client_id, seq)`.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen<'a> {
    /// Never applied: apply it now.
    New,
    /// Already applied: answer with the stored result.
    Applied(&'a CommandResult),
    /// Older than the window: it may have applied; the table no longer knows.
    Forgotten,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientWindow {
    /// The most recent results, by sequence number.
    results: BTreeMap<u64, CommandResult>,
    /// Every seq below this one has been dropped from `results`.
    floor: u64,
    /// Log index of the client's last write, for least-recently-used eviction.
    last_revision: u64,
    /// State-machine clock of the client's last write: kept at least `RETAIN_MS` after it.
    last_ms: u64,
}

impl ClientWindow {
    /// For a window of a node's own references: when it is forgotten, `OWN_GRACE_MS` past
    /// the latest deadline among them (deadlines lead their `seq`s, so the last `seq` has it).
    fn forget_at(&self) -> Option<u64> {
        let (&seq, _) = self.results.last_key_value()?;
        let deadline = ClientRef { client_id: 0, seq }.own_deadline()?;
        Some(deadline.saturating_add(OWN_GRACE_MS))
    }
}

/// Per-client windows, bounded in results per client.
///
/// A caller's window: beyond `max_clients`, clients idle for `RETAIN_MS` are forgotten,
/// least recently active first. A client active more recently is never forgotten, however
/// many there are: its retry must find its results.
///
/// A node's own window (`ClientRef::own`): its node retries a write only until the deadline
/// the reference carries, so the window is forgotten `OWN_GRACE_MS` after its latest
/// deadline, and from then on any of its references is refused as `Forgotten`, never
/// applied again. That keeps a node's writes for seconds, not a minute, whatever its rate.
///
/// Eviction depends only on the log (indices and the leader clock it carries), so every
/// replica evicts the same entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupTable {
    clients: BTreeMap<u64, ClientWindow>,
    /// `last_revision → client_id` of callers' windows, oldest first.
    lru: BTreeMap<u64, u64>,
    max_clients: usize,
    window: usize,
    /// `(forget_at, client_id)` of nodes' own windows, soonest first: derived from
    /// `clients`, rebuilt at load (`index_own`).
    #[serde(skip)]
    own: BTreeSet<(u64, u64)>,
}

impl Default for DedupTable {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_CLIENTS, DEFAULT_WINDOW)
    }
}

/// Clients remembered at once; the least recently active is forgotten first.
pub const DEFAULT_MAX_CLIENTS: usize = 4096;
/// Results remembered per client: bounds the writes one client may have in flight.
pub const DEFAULT_WINDOW: usize = 256;
/// How long a client's results outlive its last write: longer than any retry may come
/// (clients and forwarding nodes give up on a write within their request deadline).
pub const RETAIN_MS: u64 = 60_000;
/// How long past its deadline a node's own write is remembered, and accepted: covers its
/// last attempt still in flight, and a node's clock behind the leader's by up to this much
/// (a node further behind has its writes refused, never applied twice).
pub const OWN_GRACE_MS: u64 = 10_000;

impl DedupTable {
    pub fn new(max_clients: usize, window: usize) -> Self {
        Self { clients: BTreeMap::new(), lru: BTreeMap::new(), max_clients, window, own: BTreeSet::new() }
    }

    /// What the table knows about `client` at state-machine time `now_ms`.
    pub fn check(&self, client: ClientRef, now_ms: u64) -> Seen<'_> {
        let w = self.clients.get(&client.client_id);
        if let Some(r) = w.and_then(|w| w.results.get(&client.seq)) {
            return Seen::Applied(r);
        }
        let past_deadline = client.own_deadline().is_some_and(|d| d.saturating_add(OWN_GRACE_MS) <= now_ms);
        if past_deadline || w.is_some_and(|w| client.seq < w.floor) {
            Seen::Forgotten
        } else {
            Seen::New
        }
    }

    /// Remembers a result at state-machine time `now_ms`; returns the clients forgotten.
    pub fn record(&mut self, client: ClientRef, result: CommandResult, now_ms: u64) -> Vec<u64> {
        let mut evicted = self.forget_own(now_ms);
        let (id, revision, own) = (client.client_id, result.revision, client.own_deadline().is_some());
        let w = self.clients.entry(id).or_default();
        let was = w.forget_at();
        if !own && w.last_revision != 0 {
            self.lru.remove(&w.last_revision);
        }
        w.last_revision = revision;
        w.last_ms = now_ms;
        w.results.insert(client.seq, result);
        while w.results.len() > self.window {
            if let Some((seq, _)) = w.results.pop_first() {
                w.floor = w.floor.max(seq + 1);
            }
        }
        if own {
            if let Some(at) = was {
                self.own.remove(&(at, id));
            }
            self.own.extend(w.forget_at().map(|at| (at, id)));
            return evicted;
        }
        self.lru.insert(revision, id);
        while self.lru.len() > self.max_clients {
            let Some((_, &oldest)) = self.lru.first_key_value() else { break };
            // Least recently active first: if this one is still retained, all are.
            if self.clients[&oldest].last_ms.saturating_add(RETAIN_MS) > now_ms {
                break;
            }
            self.lru.pop_first();
            self.clients.remove(&oldest);
            evicted.push(oldest);
        }
        evicted
    }

    /// Forgets the nodes' own windows due by `now_ms`.
    fn forget_own(&mut self, now_ms: u64) -> Vec<u64> {
        let mut gone = Vec::new();
        while let Some(&(at, id)) = self.own.first() {
            if at > now_ms {
                break;
            }
            self.own.pop_first();
            self.clients.remove(&id);
            gone.push(id);
        }
        gone
    }

    pub fn window_of(&self, client_id: u64) -> Option<&ClientWindow> {
        self.clients.get(&client_id)
    }

    /// Restores one client's window (from disk).
    pub fn insert_window(&mut self, client_id: u64, w: ClientWindow) {
        if let Some(at) = w.forget_at() {
            self.own.insert((at, client_id));
        } else {
            self.lru.insert(w.last_revision, client_id);
        }
        self.clients.insert(client_id, w);
    }

    /// Rebuilds the order of the nodes' own windows (not serialized: it follows from them).
    pub fn index_own(&mut self) {
        self.own = self.clients.iter().filter_map(|(&id, w)| Some((w.forget_at()?, id))).collect();
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    pub fn windows(&self) -> impl Iterator<Item = (&u64, &ClientWindow)> {
        self.clients.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::command::Outcome;

    fn res(revision: u64) -> CommandResult {
        CommandResult { revision, outcome: Outcome::None }
    }

    fn c(client_id: u64, seq: u64) -> ClientRef {
        ClientRef { client_id, seq }
    }

    #[test]
    fn answers_a_retry_from_memory() {
        let mut t = DedupTable::new(4, 2);
        assert_eq!(t.check(c(1, 1), 0), Seen::New);
        t.record(c(1, 1), res(10), 0);
        assert_eq!(t.check(c(1, 1), 0), Seen::Applied(&res(10)));
    }

    #[test]
    fn window_forgets_old_seqs_explicitly() {
        let mut t = DedupTable::new(4, 2);
        for (seq, rev) in [(1, 10), (2, 11), (3, 12)] {
            t.record(c(1, seq), res(rev), 0);
        }
        assert_eq!(t.check(c(1, 1), 0), Seen::Forgotten);
        assert_eq!(t.check(c(1, 2), 0), Seen::Applied(&res(11)));
        assert_eq!(t.check(c(1, 4), 0), Seen::New);
    }

    #[test]
    fn evicts_least_recently_active_idle_client() {
        let mut t = DedupTable::new(2, 2);
        t.record(c(1, 1), res(1), 0);
        t.record(c(2, 1), res(2), 0);
        t.record(c(1, 2), res(3), RETAIN_MS);
        assert_eq!(t.record(c(3, 1), res(4), RETAIN_MS), vec![2]);
        assert_eq!(t.len(), 2);
        assert_eq!(t.check(c(2, 1), 0), Seen::New);
        assert!(matches!(t.check(c(1, 2), 0), Seen::Applied(_)));
    }

    /// A burst of new clients never pushes out a client whose retry may still come (item 6
    /// of issue 8: eviction forgot a client that had just written, floor and all, so its
    /// retry applied twice).
    #[test]
    fn a_recent_client_survives_a_burst_of_new_ones() {
        let mut t = DedupTable::new(4, 2);
        for seq in 1..=3 {
            t.record(c(1, seq), res(seq), 1_000);
        }
        for id in 2..100 {
            t.record(c(id, 1), res(id + 10), 2_000);
        }
        assert_eq!(t.check(c(1, 3), 0), Seen::Applied(&res(3)), "the retry is answered from memory");
        assert_eq!(t.check(c(1, 1), 0), Seen::Forgotten, "the floor is kept");
        // Once idle past the retention, clients go (least recently active first).
        let evicted = t.record(c(500, 1), res(500), 2_000 + RETAIN_MS);
        assert!(evicted.contains(&1) && t.len() <= 4, "{evicted:?} {}", t.len());
    }

    fn own(client_id: u64, deadline_ms: u64, nth: u64) -> ClientRef {
        ClientRef::own(client_id, deadline_ms, nth)
    }

    /// A node's own write is answered from memory while its node may retry it, and once its
    /// window is forgotten a retry is refused, never applied again.
    #[test]
    fn an_own_write_is_answered_until_its_deadline_then_refused() {
        let mut t = DedupTable::default();
        let first = own(9, 5_000, 0);
        assert_eq!(t.check(first, 1_000), Seen::New);
        t.record(first, res(1), 1_000);
        t.record(own(9, 6_000, 1), res(2), 2_000);
        let last_retry = 6_000 + OWN_GRACE_MS - 1;
        assert_eq!(t.check(first, last_retry), Seen::Applied(&res(1)));
        // A write of another node at a later time forgets window 9 (its latest deadline
        // plus the grace has passed)...
        assert_eq!(t.record(own(10, 20_000, 0), res(3), 6_000 + OWN_GRACE_MS), vec![9]);
        assert!(t.window_of(9).is_none());
        // ...and a retry of either of its writes is refused, not taken for a new write.
        assert_eq!(t.check(first, 6_000 + OWN_GRACE_MS), Seen::Forgotten);
        assert_eq!(t.check(own(9, 6_000, 1), 6_000 + OWN_GRACE_MS), Seen::Forgotten);
        // A first attempt that reaches the log after its deadline and the grace is refused too.
        assert_eq!(t.check(own(11, 1_000, 0), 1_000 + OWN_GRACE_MS), Seen::Forgotten);
        assert_eq!(t.check(own(11, 1_000, 0), 1_000 + OWN_GRACE_MS - 1), Seen::New);
    }

    /// At a steady rate a node's own windows stay bounded by its deadline, not the 60 s
    /// kept for callers: before, 60 s of a node's writes were kept however many there were.
    #[test]
    fn own_windows_stay_bounded_by_their_deadline() {
        let mut t = DedupTable::default();
        // 1,000 writes a second for 100 s, 16 per window, each with a 5 s deadline.
        for n in 0..100_000u64 {
            let now = n;
            t.record(own(n / 16, now + 5_000, n % 16), res(n + 1), now);
        }
        let results: usize = t.windows().map(|(_, w)| w.results.len()).sum();
        let kept_ms = 5_000 + OWN_GRACE_MS;
        assert!(results as u64 <= kept_ms + 16, "{results} results kept");
        assert!(t.len() as u64 <= kept_ms / 16 + 2, "{} windows", t.len());
        // Callers' windows are counted and evicted apart from them.
        assert!(t.lru.is_empty());
    }

    /// The order of own windows is not serialized: a table read back (snapshot or disk)
    /// forgets them at the same time as the one that was written.
    #[test]
    fn own_windows_are_forgotten_on_time_after_a_reload() {
        let mut t = DedupTable::default();
        t.record(own(9, 5_000, 0), res(1), 1_000);
        t.record(c(1, 1), res(2), 1_000);
        let mut back: DedupTable = bincode::deserialize(&bincode::serialize(&t).unwrap()).unwrap();
        back.index_own();
        assert_eq!(back, t);
        let mut disk = DedupTable::default();
        for (id, w) in t.windows() {
            disk.insert_window(*id, w.clone());
        }
        assert_eq!(disk, t);
        for table in [&mut back, &mut disk] {
            assert_eq!(table.record(c(2, 1), res(3), 5_000 + OWN_GRACE_MS), vec![9]);
            assert!(matches!(table.check(c(1, 1), 0), Seen::Applied(_)), "a caller's window stays");
        }
    }
}
