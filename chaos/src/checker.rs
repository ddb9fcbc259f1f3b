//! Checkers over a recorded history.
//!
//! `linearizable` is a Wing–Gong–Lowe search (with Lowe's memoization of
//! `(linearized set, state)`), run per key — linearizability is compositional
//! (Herlihy & Wing §3.3), so per-key histories can be checked independently.
//! Every written value is unique, which keeps the search tractable.

use crate::history::{History, Kind, Op, Outcome, Seen};
use std::collections::{BTreeMap, HashSet};

/// The register state of one key: its value, if present, and whether that value has a TTL
/// (it may disappear at any moment — but once seen gone, it never comes back).
type State = Option<(String, bool)>;

/// Applies `op` to `state` if the observed outcome is possible there. An op that observes
/// a TTL value gone (a get of nothing, a delete of nothing) expires it at that point.
fn step(state: &State, op: &Op) -> Option<State> {
    let value = state.as_ref().map(|(v, _)| v);
    let may_be_gone = state.as_ref().is_none_or(|(_, ttl)| *ttl);
    match (&op.kind, &op.outcome) {
        (Kind::Put(v), Outcome::Put { applied: true, .. }) | (Kind::Put(v), Outcome::Unknown) => {
            Some(Some((v.clone(), false)))
        }
        (Kind::PutTtl(v, _), Outcome::Put { applied: true, .. }) | (Kind::PutTtl(v, _), Outcome::Unknown) => {
            Some(Some((v.clone(), true)))
        }
        (Kind::Put(_) | Kind::PutTtl(..), _) => None,
        (Kind::PutIfAbsent(v), Outcome::Put { applied: true, .. }) => may_be_gone.then(|| Some((v.clone(), false))),
        (Kind::PutIfAbsent(_), Outcome::Put { applied: false, .. }) => state.is_some().then(|| state.clone()),
        (Kind::PutIfAbsent(v), Outcome::Unknown) => {
            Some(if state.is_none() { Some((v.clone(), false)) } else { state.clone() })
        }
        (Kind::PutIfAbsentOrEqual(v), Outcome::Put { applied: true, .. }) => {
            (may_be_gone || value == Some(v)).then(|| Some((v.clone(), false)))
        }
        // Refused: the key holds another value (a TTL one that may still be there).
        (Kind::PutIfAbsentOrEqual(v), Outcome::Put { applied: false, .. }) => {
            (state.is_some() && value != Some(v)).then(|| state.clone())
        }
        (Kind::PutIfAbsentOrEqual(v), Outcome::Unknown) => {
            Some(if state.is_none() || value == Some(v) { Some((v.clone(), false)) } else { state.clone() })
        }
        (Kind::DeleteIfValue(v), Outcome::Delete { deleted: true }) => (value == Some(v)).then_some(None),
        // Not deleted: absent, another value, or this TTL value just expired.
        (Kind::DeleteIfValue(v), Outcome::Delete { deleted: false }) => match value == Some(v) {
            true => may_be_gone.then_some(None),
            false => Some(state.clone()),
        },
        (Kind::DeleteIfValue(v), Outcome::Unknown) => Some(if value == Some(v) { None } else { state.clone() }),
        (Kind::Delete, Outcome::Delete { deleted: true }) => state.is_some().then_some(None),
        (Kind::Delete, Outcome::Delete { deleted: false }) => may_be_gone.then_some(None),
        (Kind::Delete, Outcome::Unknown) => Some(None),
        (Kind::Get, Outcome::Get(None)) => may_be_gone.then_some(None),
        (Kind::Get, Outcome::Get(Some(r))) => (value == Some(&r.value)).then(|| state.clone()),
        _ => None,
    }
}

/// How late an expired value may still be read, past its TTL: clocks here are skewed by
/// up to ±5 s per node, and the state-machine clock can run up to that far ahead.
pub const EXPIRY_SLACK_US: u64 = 15_000_000;

/// A value put with a TTL is never read long after its TTL ran out (by any node's clock).
pub fn expired_never_returned(h: &History) -> Result<(), String> {
    let ttl_puts: BTreeMap<&str, (u64, u64)> = h
        .ops
        .iter()
        .filter_map(|o| match &o.kind {
            Kind::PutTtl(v, ttl) => Some((v.as_str(), (o.invoke, *ttl))),
            _ => None,
        })
        .collect();
    for o in &h.ops {
        let Outcome::Get(Some(r)) = &o.outcome else { continue };
        if let Some(&(put_at, ttl)) = ttl_puts.get(r.value.as_str()) {
            if o.invoke > put_at + ttl * 1000 + EXPIRY_SLACK_US {
                return Err(format!("{o} returned a value whose {ttl} ms TTL ran out long before"));
            }
        }
    }
    Ok(())
}

const NIL: usize = usize::MAX;

/// A linearizability violation: the ops of the key, and where the search got stuck.
#[derive(Debug)]
pub struct Violation {
    pub key: String,
    pub message: String,
    pub timeline: Vec<String>,
}

struct Events {
    /// (op index, is_call) in time order, behind a sentinel at 0.
    ev: Vec<(usize, bool)>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Event index of each op's return.
    ret_of: Vec<usize>,
}

impl Events {
    fn new(ops: &[&Op]) -> Self {
        let mut ev: Vec<(u64, u8, usize)> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            ev.push((op.invoke, 0, i));
            ev.push((op.complete.unwrap_or(u64::MAX), 1, i));
        }
        // Calls before returns at the same instant: simultaneous ops count as concurrent.
        ev.sort();
        let mut out = vec![(NIL, false)];
        out.extend(ev.iter().map(|&(_, r, i)| (i, r == 0)));
        let n = out.len();
        let next = (0..n).map(|i| if i + 1 < n { i + 1 } else { NIL }).collect();
        let prev = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut ret_of = vec![0; ops.len()];
        for (idx, &(op, call)) in out.iter().enumerate().skip(1) {
            if !call {
                ret_of[op] = idx;
            }
        }
        Events { ev: out, next, prev, ret_of }
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != NIL {
            self.prev[n] = e;
        }
    }

    fn lift(&mut self, call: usize) {
        let ret = self.ret_of[self.ev[call].0];
        self.unlink(call);
        self.unlink(ret);
    }

    fn unlift(&mut self, call: usize) {
        let ret = self.ret_of[self.ev[call].0];
        self.relink(ret);
        self.relink(call);
    }
}

/// Checks one key's operations; failed reads are ignored (they had no effect).
pub fn linearizable_key(key: &str, ops: &[&Op]) -> Result<(), Violation> {
    let ops: Vec<&Op> = ops.iter().copied().filter(|o| o.outcome != Outcome::Failed).collect();
    let mut events = Events::new(&ops);
    let mut done = vec![0u64; ops.len().div_ceil(64)];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut entry = events.next[0];
    let mut deepest = 0;
    while events.next[0] != NIL {
        let (op, is_call) = events.ev[entry];
        if is_call {
            if let Some(new) = step(&state, ops[op]) {
                done[op / 64] |= 1 << (op % 64);
                if cache.insert((done.clone(), new.clone())) {
                    stack.push((entry, std::mem::replace(&mut state, new)));
                    deepest = deepest.max(stack.len());
                    events.lift(entry);
                    entry = events.next[0];
                    continue;
                }
                done[op / 64] &= !(1 << (op % 64));
            }
            entry = events.next[entry];
        } else {
            let Some((call, old)) = stack.pop() else {
                return Err(violation(key, &ops, op, deepest));
            };
            state = old;
            let cop = events.ev[call].0;
            done[cop / 64] &= !(1 << (cop % 64));
            events.unlift(call);
            entry = events.next[call];
        }
    }
    Ok(())
}

fn violation(key: &str, ops: &[&Op], stuck: usize, deepest: usize) -> Violation {
    let mut sorted: Vec<&Op> = ops.to_vec();
    sorted.sort_by_key(|o| o.invoke);
    let timeline = sorted.iter().map(|o| o.to_string()).collect();
    Violation {
        key: key.to_string(),
        message: format!(
            "key {key}: no linearization; {deepest} of {} ops linearized at best; cannot place: {}",
            ops.len(),
            ops[stuck]
        ),
        timeline,
    }
}

/// Every key's history is linearizable.
pub fn linearizable(h: &History) -> Result<(), Violation> {
    for key in h.keys() {
        let ops: Vec<&Op> = h.for_key(&key).collect();
        linearizable_key(&key, &ops)?;
    }
    Ok(())
}

/// Per key, revisions and HLC versions grow together: a higher revision never carries a
/// lower or equal version, and one revision always carries the same version and value.
pub fn versions_monotonic(h: &History) -> Result<(), String> {
    let mut seen: BTreeMap<(String, u64), (String, Option<String>)> = BTreeMap::new();
    for op in &h.ops {
        let (rev, version, value) = match (&op.kind, &op.outcome) {
            (
                Kind::Put(v) | Kind::PutIfAbsent(v) | Kind::PutIfAbsentOrEqual(v),
                Outcome::Put { applied: true, revision, version },
            ) => (*revision, version.clone(), Some(v.clone())),
            (_, Outcome::Get(Some(r))) => (r.revision, r.version.clone(), Some(r.value.clone())),
            _ => continue,
        };
        let prev = seen.insert((op.key.clone(), rev), (version.clone(), value.clone()));
        if let Some((pv, pval)) = prev {
            if pv != version || pval != value {
                return Err(format!("key {} revision {rev} seen as {pv}/{pval:?} and {version}/{value:?}", op.key));
            }
        }
    }
    let mut last: Option<(&String, u64, &String)> = None;
    for ((key, rev), (version, _)) in &seen {
        if let Some((lk, lr, lv)) = last {
            if lk == key && version <= lv {
                return Err(format!(
                    "key {key}: revision {rev} has version {version}, not above {lv} of revision {lr}"
                ));
            }
        }
        last = Some((key, *rev, version));
    }
    Ok(())
}

/// At most one leader per term, over every `(term, leader)` a node reported about itself.
pub fn one_leader_per_term(claims: &[(u64, u64)]) -> Result<(), String> {
    let mut by_term: BTreeMap<u64, u64> = BTreeMap::new();
    for &(term, leader) in claims {
        if let Some(&other) = by_term.get(&term) {
            if other != leader {
                return Err(format!("term {term} had two leaders: {other} and {leader}"));
            }
        }
        by_term.insert(term, leader);
    }
    Ok(())
}

/// A node that restarted without its data never answers again under the id it had: it
/// forgot its votes and the entries it acknowledged (Raft §5.2, §5.4 assume stable storage).
/// `lost` is `(time, host, old id)`; `identities` is every `(time, host, id)` a node reported.
pub fn no_amnesia(lost: &[(u64, String, u64)], identities: &[(u64, String, u64)]) -> Result<(), String> {
    for (t, host, old) in lost {
        if let Some((when, _, _)) = identities.iter().find(|(w, h, id)| w > t && h == host && id == old) {
            return Err(format!(
                "{host} lost its disk at {:.3}s and came back as its old self (node {old}) at {:.3}s",
                *t as f64 / 1e6,
                *when as f64 / 1e6
            ));
        }
    }
    Ok(())
}

/// A watch stream delivers every change once and in order, or says it resynced:
/// revisions never go back, no `(revision, key)` twice, every event matches the write that
/// made it, and every acknowledged put inside the watched span (outside resync gaps) was seen.
pub fn watch_complete(h: &History, seen: &[Seen]) -> Result<(), String> {
    let mut last = 0u64;
    let mut delivered: HashSet<(u64, String)> = HashSet::new();
    let mut puts: BTreeMap<(u64, String), String> = BTreeMap::new();
    // Revisions covered by the stream: from its first event to its last, minus resync gaps.
    let mut gaps: Vec<(u64, u64)> = Vec::new();
    let mut first: Option<u64> = None;
    for s in seen {
        let (rev, key) = match s {
            Seen::Resync { next } => {
                gaps.push((last, *next));
                last = last.max(next.saturating_sub(1));
                continue;
            }
            Seen::Put { revision, key, .. } | Seen::Delete { revision, key } => (*revision, key.clone()),
        };
        if rev < last {
            return Err(format!("watch went back: revision {rev} after {last}"));
        }
        if !delivered.insert((rev, key.clone())) {
            return Err(format!("watch delivered revision {rev} of {key} twice"));
        }
        if let Seen::Put { value, .. } = s {
            puts.insert((rev, key), value.clone());
        }
        first.get_or_insert(rev);
        last = rev;
    }
    let Some(first) = first else { return Ok(()) };
    let in_gap = |r: u64| gaps.iter().any(|&(a, b)| r > a && r < b);
    for op in &h.ops {
        let (
            Kind::Put(v) | Kind::PutIfAbsent(v) | Kind::PutIfAbsentOrEqual(v),
            Outcome::Put { applied: true, revision, .. },
        ) = (&op.kind, &op.outcome)
        else {
            continue;
        };
        match puts.get(&(*revision, op.key.clone())) {
            Some(got) if got != v => {
                return Err(format!("watch says revision {revision} of {} is {got:?}, the write was {v:?}", op.key))
            }
            None if *revision >= first && *revision <= last && !in_gap(*revision) => {
                return Err(format!(
                    "watch missed the put of {v:?} to {} at revision {revision}; the stream around it: {}",
                    op.key,
                    around(seen, *revision)
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// What a watch delivered near `rev`, in stream order, for failure messages.
fn around(seen: &[Seen], rev: u64) -> String {
    let at = seen
        .iter()
        .position(|s| match s {
            Seen::Put { revision, .. } | Seen::Delete { revision, .. } => *revision >= rev,
            Seen::Resync { next } => *next > rev,
        })
        .unwrap_or(seen.len());
    let lo = at.saturating_sub(4);
    let hi = (at + 4).min(seen.len());
    let item = |s: &Seen| match s {
        Seen::Put { revision, key, .. } => format!("put {key}@{revision}"),
        Seen::Delete { revision, key } => format!("del {key}@{revision}"),
        Seen::Resync { next } => format!("RESYNC next={next}"),
    };
    seen[lo..hi].iter().map(item).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Read;

    fn op(client: usize, kind: Kind, invoke: u64, complete: Option<u64>, outcome: Outcome) -> Op {
        Op { client, key: "k".into(), kind, invoke, complete, outcome }
    }

    fn put(v: &str, t0: u64, t1: u64) -> Op {
        op(
            0,
            Kind::Put(v.into()),
            t0,
            Some(t1),
            Outcome::Put { applied: true, revision: t1, version: format!("{t1:05}") },
        )
    }

    fn get(v: Option<&str>, t0: u64, t1: u64) -> Op {
        let r = v.map(|v| Read { value: v.into(), revision: 0, version: String::new() });
        op(1, Kind::Get, t0, Some(t1), Outcome::Get(r))
    }

    fn check(ops: &[Op]) -> Result<(), Violation> {
        linearizable_key("k", &ops.iter().collect::<Vec<_>>())
    }

    #[test]
    fn accepts_sequential_and_concurrent_histories() {
        check(&[put("a", 0, 10), get(Some("a"), 11, 20), put("b", 21, 30), get(Some("b"), 31, 40)]).unwrap();
        // A read concurrent with a write may see either value.
        check(&[put("a", 0, 10), put("b", 11, 30), get(Some("a"), 12, 20)]).unwrap();
        check(&[put("a", 0, 10), put("b", 11, 30), get(Some("b"), 12, 20)]).unwrap();
    }

    #[test]
    fn rejects_a_stale_read() {
        let err = check(&[put("a", 0, 10), put("b", 11, 20), get(Some("a"), 21, 30)]).unwrap_err();
        assert!(err.message.contains("no linearization"), "{}", err.message);
    }

    #[test]
    fn rejects_a_lost_write() {
        check(&[put("a", 0, 10), get(None, 11, 20)]).unwrap_err();
    }

    #[test]
    fn rejects_a_write_that_appears_twice() {
        // a, then b, then a again: `a` was applied twice.
        check(&[put("a", 0, 10), put("b", 11, 20), get(Some("b"), 21, 25), get(Some("a"), 26, 30)]).unwrap_err();
    }

    #[test]
    fn unknown_writes_may_or_may_not_happen() {
        let unknown = op(0, Kind::Put("x".into()), 0, None, Outcome::Unknown);
        check(&[unknown.clone(), get(None, 5, 6), get(Some("x"), 7, 8)]).unwrap();
        check(&[unknown.clone(), get(None, 5, 6)]).unwrap();
        // ...but once seen, it cannot be unseen without another write.
        check(&[unknown, get(Some("x"), 5, 6), get(None, 7, 8)]).unwrap_err();
    }

    #[test]
    fn conditional_ops_follow_the_model() {
        let nx = |v: &str, applied, t0, t1| {
            op(
                2,
                Kind::PutIfAbsent(v.into()),
                t0,
                Some(t1),
                Outcome::Put { applied, revision: 0, version: String::new() },
            )
        };
        let del = |deleted, t0, t1| op(3, Kind::Delete, t0, Some(t1), Outcome::Delete { deleted });
        check(&[nx("a", true, 0, 1), nx("b", false, 2, 3), del(true, 4, 5), del(false, 6, 7), nx("c", true, 8, 9)])
            .unwrap();
        check(&[nx("a", true, 0, 1), nx("b", true, 2, 3)]).unwrap_err();
        check(&[del(true, 0, 1)]).unwrap_err();
    }

    #[test]
    fn nex_and_vdel_follow_the_model() {
        let nex = |v: &str, applied, t0, t1| {
            op(
                2,
                Kind::PutIfAbsentOrEqual(v.into()),
                t0,
                Some(t1),
                Outcome::Put { applied, revision: 0, version: String::new() },
            )
        };
        let vdel =
            |v: &str, deleted, t0, t1| op(3, Kind::DeleteIfValue(v.into()), t0, Some(t1), Outcome::Delete { deleted });
        check(&[
            nex("a", true, 0, 1),
            nex("a", true, 2, 3),
            nex("b", false, 4, 5),
            vdel("b", false, 6, 7),
            vdel("a", true, 8, 9),
        ])
        .unwrap();
        check(&[nex("a", true, 0, 1), nex("b", true, 2, 3)]).unwrap_err();
        check(&[nex("a", true, 0, 1), vdel("b", true, 2, 3)]).unwrap_err();
        check(&[nex("a", true, 0, 1), vdel("a", false, 2, 3)]).unwrap_err();
        check(&[vdel("a", false, 0, 1), nex("a", false, 2, 3)]).unwrap_err();
    }

    #[test]
    fn failed_reads_are_ignored() {
        check(&[put("a", 0, 10), op(1, Kind::Get, 11, Some(12), Outcome::Failed)]).unwrap();
    }

    #[test]
    fn watch_checker_rejects_gaps_duplicates_and_reordering() {
        let mut h = History::default();
        for (v, t) in [("a", 10), ("b", 20), ("c", 30)] {
            h.push(put(v, t - 5, t));
        }
        let ev = |r: u64, v: &str| Seen::Put { revision: r, key: "k".into(), value: v.into() };
        watch_complete(&h, &[ev(10, "a"), ev(20, "b"), ev(30, "c")]).unwrap();
        assert!(watch_complete(&h, &[ev(10, "a"), ev(30, "c")]).unwrap_err().contains("missed"));
        assert!(watch_complete(&h, &[ev(10, "a"), ev(10, "a")]).unwrap_err().contains("twice"));
        assert!(watch_complete(&h, &[ev(20, "b"), ev(10, "a")]).unwrap_err().contains("back"));
        assert!(watch_complete(&h, &[ev(10, "x")]).is_err());
        // An explicit resync excuses the gap.
        watch_complete(&h, &[ev(10, "a"), Seen::Resync { next: 25 }, ev(30, "c")]).unwrap();
    }

    /// A TTL value may vanish at any point, but once seen gone it never comes back.
    #[test]
    fn ttl_values_may_vanish_but_never_return() {
        let put_ok = || Outcome::Put { applied: true, revision: 1, version: String::new() };
        let ttl = |v: &str, t0, t1| op(0, Kind::PutTtl(v.into(), 100), t0, Some(t1), put_ok());
        let ok = [ttl("a", 0, 1), get(Some("a"), 2, 3), get(None, 4, 5), get(None, 6, 7)];
        check(&ok).unwrap();
        let back = [ttl("a", 0, 1), get(None, 2, 3), get(Some("a"), 4, 5)];
        assert!(check(&back).is_err(), "an expired value came back");
        let plain = [put("a", 0, 1), get(None, 2, 3)];
        assert!(check(&plain).is_err(), "a value without TTL does not vanish");
        let mut h = History::default();
        h.push(ttl("a", 0, 1));
        h.push(get(Some("a"), 100_000, 100_001));
        expired_never_returned(&h).unwrap();
        h.push(get(Some("a"), 20_000_000, 20_000_001));
        assert!(expired_never_returned(&h).is_err());
    }

    #[test]
    fn amnesia_check_flags_an_old_id_after_a_lost_disk() {
        let lost = vec![(10, "n2".to_string(), 2)];
        let ok = vec![(5, "n2".to_string(), 2), (12, "n2".to_string(), 7001)];
        assert!(no_amnesia(&lost, &ok).is_ok());
        let bad = vec![(5, "n2".to_string(), 2), (12, "n2".to_string(), 2)];
        assert!(no_amnesia(&lost, &bad).unwrap_err().contains("old self"));
    }

    #[test]
    fn version_and_leader_checks() {
        let mut h = History::default();
        h.push(put("a", 0, 10));
        h.push(put("b", 11, 20));
        versions_monotonic(&h).unwrap();
        h.push(op(
            0,
            Kind::Put("c".into()),
            21,
            Some(30),
            Outcome::Put { applied: true, revision: 30, version: "00001".into() },
        ));
        assert!(versions_monotonic(&h).is_err());
        one_leader_per_term(&[(1, 1), (1, 1), (2, 3)]).unwrap();
        assert!(one_leader_per_term(&[(1, 1), (1, 2)]).is_err());
    }
}
