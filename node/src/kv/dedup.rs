//! The bounded table of recent results per client, for exactly-once writes.

use super::command::{ClientRef, CommandResult};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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

/// Per-client windows, bounded in results per client; beyond `max_clients`, clients idle
/// for `RETAIN_MS` are forgotten, least recently active first. A client active more
/// recently is never forgotten, however many there are: its retry must find its results.
/// Eviction depends only on the log (indices and the leader clock it carries), so every
/// replica evicts the same entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupTable {
    clients: BTreeMap<u64, ClientWindow>,
    /// `last_revision → client_id`, oldest first.
    lru: BTreeMap<u64, u64>,
    max_clients: usize,
    window: usize,
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

impl DedupTable {
    pub fn new(max_clients: usize, window: usize) -> Self {
        Self { clients: BTreeMap::new(), lru: BTreeMap::new(), max_clients, window }
    }

    pub fn check(&self, client: ClientRef) -> Seen<'_> {
        let Some(w) = self.clients.get(&client.client_id) else {
            return Seen::New;
        };
        match w.results.get(&client.seq) {
            Some(r) => Seen::Applied(r),
            None if client.seq < w.floor => Seen::Forgotten,
            None => Seen::New,
        }
    }

    /// Remembers a result at state-machine time `now_ms`; returns the clients forgotten.
    pub fn record(&mut self, client: ClientRef, result: CommandResult, now_ms: u64) -> Vec<u64> {
        let revision = result.revision;
        let w = self.clients.entry(client.client_id).or_default();
        if w.last_revision != 0 {
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
        self.lru.insert(revision, client.client_id);
        let mut evicted = Vec::new();
        while self.clients.len() > self.max_clients {
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

    pub fn window_of(&self, client_id: u64) -> Option<&ClientWindow> {
        self.clients.get(&client_id)
    }

    /// Restores one client's window (from disk).
    pub fn insert_window(&mut self, client_id: u64, w: ClientWindow) {
        self.lru.insert(w.last_revision, client_id);
        self.clients.insert(client_id, w);
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
        assert_eq!(t.check(c(1, 1)), Seen::New);
        t.record(c(1, 1), res(10), 0);
        assert_eq!(t.check(c(1, 1)), Seen::Applied(&res(10)));
    }

    #[test]
    fn window_forgets_old_seqs_explicitly() {
        let mut t = DedupTable::new(4, 2);
        for (seq, rev) in [(1, 10), (2, 11), (3, 12)] {
            t.record(c(1, seq), res(rev), 0);
        }
        assert_eq!(t.check(c(1, 1)), Seen::Forgotten);
        assert_eq!(t.check(c(1, 2)), Seen::Applied(&res(11)));
        assert_eq!(t.check(c(1, 4)), Seen::New);
    }

    #[test]
    fn evicts_least_recently_active_idle_client() {
        let mut t = DedupTable::new(2, 2);
        t.record(c(1, 1), res(1), 0);
        t.record(c(2, 1), res(2), 0);
        t.record(c(1, 2), res(3), RETAIN_MS);
        assert_eq!(t.record(c(3, 1), res(4), RETAIN_MS), vec![2]);
        assert_eq!(t.len(), 2);
        assert_eq!(t.check(c(2, 1)), Seen::New);
        assert!(matches!(t.check(c(1, 2)), Seen::Applied(_)));
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
        assert_eq!(t.check(c(1, 3)), Seen::Applied(&res(3)), "the retry is answered from memory");
        assert_eq!(t.check(c(1, 1)), Seen::Forgotten, "the floor is kept");
        // Once idle past the retention, clients go (least recently active first).
        let evicted = t.record(c(500, 1), res(500), 2_000 + RETAIN_MS);
        assert!(evicted.contains(&1) && t.len() <= 4, "{evicted:?} {}", t.len());
    }
}
