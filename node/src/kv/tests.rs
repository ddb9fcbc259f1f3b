use super::*;
use bytes::Bytes;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn put(key: &str, value: &str) -> Put {
    Put { key: b(key), value: b(value), ttl_ms: None, condition: PutCondition::Always, fencing: None, client_ts: None }
}

fn del(key: &str) -> Delete {
    Delete { key: b(key), condition: DeleteCondition::Always, fencing: None }
}

fn cmd(now_ms: u64, op: Op) -> Command {
    Command { client: None, now_ms, op }
}

fn op_result(r: &CommandResult) -> &OpResult {
    match &r.outcome {
        Outcome::Op(o) => o,
        other => panic!("not a single op: {other:?}"),
    }
}

#[test]
fn put_assigns_revision_and_growing_versions() {
    let mut sm = StateMachine::default();
    let (r1, ev1) = sm.apply(5, &cmd(1000, Op::Put(put("k", "a"))));
    let (_, _) = sm.apply(6, &cmd(1000, Op::Put(put("k", "b"))));
    let e = sm.get(b"k", 1000).unwrap();
    assert_eq!((e.revision, e.create_revision, &e.value[..]), (6, 5, &b"b"[..]));
    assert_eq!(r1.revision, 5);
    assert_eq!(ev1[0].kind, EventKind::Put);
    assert!(e.version > ev1[0].version);
}

#[test]
fn if_revision_compares_and_sets() {
    let mut sm = StateMachine::default();
    let mut p = put("k", "a");
    p.condition = PutCondition::IfRevision(0);
    assert!(matches!(op_result(&sm.apply(1, &cmd(0, Op::Put(p.clone()))).0), OpResult::Put { applied: true, .. }));
    assert!(matches!(op_result(&sm.apply(2, &cmd(0, Op::Put(p.clone()))).0), OpResult::Put { applied: false, .. }));
    p.condition = PutCondition::IfRevision(1);
    p.value = b("b");
    assert!(matches!(op_result(&sm.apply(3, &cmd(0, Op::Put(p))).0), OpResult::Put { applied: true, .. }));
    assert_eq!(sm.get(b"k", 0).unwrap().value, b("b"));
}

#[test]
fn nx_and_nex() {
    let mut sm = StateMachine::default();
    let mut p = put("lock", "A");
    p.condition = PutCondition::IfAbsentOrEqual;
    let applied = |sm: &mut StateMachine, rev, p: &Put| {
        matches!(op_result(&sm.apply(rev, &cmd(0, Op::Put(p.clone()))).0), OpResult::Put { applied: true, .. })
    };
    assert!(applied(&mut sm, 1, &p));
    assert!(applied(&mut sm, 2, &p), "NEX renews the holder's own value");
    p.value = b("B");
    assert!(!applied(&mut sm, 3, &p));
    p.condition = PutCondition::IfAbsent;
    assert!(!applied(&mut sm, 4, &p));
}

#[test]
fn vdel_checks_value() {
    let mut sm = StateMachine::default();
    sm.apply(1, &cmd(0, Op::Put(put("k", "v"))));
    let mut d = del("k");
    d.condition = DeleteCondition::IfValue(b("x"));
    assert_eq!(
        op_result(&sm.apply(2, &cmd(0, Op::Delete(d.clone()))).0),
        &OpResult::Delete(DeleteOutcome::ConditionFailed)
    );
    d.condition = DeleteCondition::IfValue(b("v"));
    assert_eq!(op_result(&sm.apply(3, &cmd(0, Op::Delete(d.clone()))).0), &OpResult::Delete(DeleteOutcome::Deleted));
    assert_eq!(op_result(&sm.apply(4, &cmd(0, Op::Delete(d))).0), &OpResult::Delete(DeleteOutcome::NotFound));
}

#[test]
fn ttl_hides_then_expire_deletes_with_event() {
    let mut sm = StateMachine::default();
    let mut p = put("k", "v");
    p.ttl_ms = Some(100);
    sm.apply(1, &cmd(1000, Op::Put(p)));
    assert!(sm.get(b"k", 1099).is_some());
    assert!(sm.get(b"k", 1100).is_none(), "expired keys are never returned");
    assert_eq!(sm.next_expiry(), Some(1100));
    let (r, ev) = sm.apply(2, &cmd(1100, Op::Expire));
    assert_eq!(r.outcome, Outcome::Expired { count: 1 });
    assert_eq!((ev[0].kind, ev[0].expired), (EventKind::Delete, true));
    assert!(sm.is_empty());
    assert_eq!(sm.next_expiry(), None);
}

#[test]
fn nx_treats_expired_key_as_absent() {
    let mut sm = StateMachine::default();
    let mut p = put("lease", "A");
    p.ttl_ms = Some(10);
    p.condition = PutCondition::IfAbsent;
    sm.apply(1, &cmd(0, Op::Put(p.clone())));
    p.value = b("B");
    let (r, ev) = sm.apply(2, &cmd(10, Op::Put(p)));
    assert!(matches!(op_result(&r), OpResult::Put { applied: true, .. }));
    assert_eq!(ev.len(), 2, "expiry delete, then the put");
    assert!(ev[0].expired);
}

#[test]
fn fencing_tokens() {
    let mut sm = StateMachine::default();
    let mut p = put("k", "v");
    p.fencing = Some(Hlc::new(10, 0));
    assert!(matches!(op_result(&sm.apply(1, &cmd(0, Op::Put(p.clone()))).0), OpResult::Put { applied: true, .. }));
    p.fencing = None;
    assert_eq!(op_result(&sm.apply(2, &cmd(0, Op::Put(p.clone()))).0), &OpResult::Rejected(Rejection::FencingRequired));
    p.fencing = Some(Hlc::new(9, 9));
    assert_eq!(op_result(&sm.apply(3, &cmd(0, Op::Put(p.clone()))).0), &OpResult::Rejected(Rejection::FencingStale));
    let mut d = del("k");
    assert_eq!(
        op_result(&sm.apply(4, &cmd(0, Op::Delete(d.clone()))).0),
        &OpResult::Rejected(Rejection::FencingRequired)
    );
    d.fencing = Some(Hlc::new(10, 0));
    assert_eq!(op_result(&sm.apply(5, &cmd(0, Op::Delete(d))).0), &OpResult::Delete(DeleteOutcome::Deleted));
}

#[test]
fn txn_is_all_or_nothing() {
    let mut sm = StateMachine::default();
    sm.apply(1, &cmd(0, Op::Put(put("a", "1"))));
    let mut guarded = put("b", "2");
    guarded.condition = PutCondition::IfRevision(99);
    let (r, ev) = sm.apply(2, &cmd(0, Op::Txn(vec![TxnOp::Delete(del("a")), TxnOp::Put(guarded)])));
    assert!(matches!(r.outcome, Outcome::Txn { succeeded: false, failed: Some(1), .. }));
    assert!(ev.is_empty());
    assert!(sm.get(b"a", 0).is_some());
    let (r, ev) = sm.apply(3, &cmd(0, Op::Txn(vec![TxnOp::Delete(del("a")), TxnOp::Put(put("b", "2"))])));
    assert!(matches!(r.outcome, Outcome::Txn { succeeded: true, .. }));
    assert_eq!(ev.len(), 2);
    assert!(ev.iter().all(|e| e.revision == 3));
}

/// Two ops on one key: each condition sees the ops before it (item 4 of issue 8: the second
/// put-if-absent was checked against the state before the transaction and "succeeded"
/// without applying).
#[test]
fn txn_ops_on_one_key_see_each_other() {
    let mut sm = StateMachine::default();
    let nx = |v: &str| {
        let mut p = put("k", v);
        p.condition = PutCondition::IfAbsent;
        TxnOp::Put(p)
    };
    let (r, ev) = sm.apply(1, &cmd(0, Op::Txn(vec![nx("a"), nx("b")])));
    assert!(matches!(r.outcome, Outcome::Txn { succeeded: false, failed: Some(1), .. }), "{r:?}");
    assert!(ev.is_empty());
    assert!(sm.get(b"k", 0).is_none(), "nothing applied");
    // Put then put-if-revision of that put: the second sees the first's revision.
    let mut second = put("k", "2");
    second.condition = PutCondition::IfRevision(2);
    let (r, _) = sm.apply(2, &cmd(0, Op::Txn(vec![TxnOp::Put(put("k", "1")), TxnOp::Put(second)])));
    assert!(matches!(r.outcome, Outcome::Txn { succeeded: true, .. }), "{r:?}");
    assert_eq!(sm.get(b"k", 0).unwrap().value, b("2"));
    // Delete then put-if-absent succeeds; delete twice reports the second as not found.
    let (r, _) = sm.apply(3, &cmd(0, Op::Txn(vec![TxnOp::Delete(del("k")), nx("3")])));
    assert!(matches!(r.outcome, Outcome::Txn { succeeded: true, .. }), "{r:?}");
    let (r, _) = sm.apply(4, &cmd(0, Op::Txn(vec![TxnOp::Delete(del("k")), TxnOp::Delete(del("k"))])));
    let Outcome::Txn { succeeded: true, results, .. } = r.outcome else { panic!("{r:?}") };
    assert_eq!(results[1], OpResult::Delete(DeleteOutcome::NotFound));
}

/// Time in the state machine never goes back: once the log carried a leader clock past a
/// key's expiry, no node serves the key, whatever its own clock says (item 7 of issue 8:
/// after a failover to a node whose clock was behind, an expired key came back).
#[test]
fn expiry_judged_by_the_highest_applied_clock() {
    let mut sm = StateMachine::default();
    let mut p = put("k", "v");
    p.ttl_ms = Some(100);
    sm.apply(1, &cmd(1_000, Op::Put(p)));
    sm.apply(2, &cmd(1_200, Op::Put(put("other", "x"))));
    assert!(sm.get(b"k", 500).is_none(), "a node whose clock reads 500 must not serve it");
    assert!(sm.list(b"", b"", 10, 500).iter().all(|(k, _)| k != "k"));
    // A later leader whose clock is behind applies at the log's time, not its own.
    let mut late = put("t", "v");
    late.ttl_ms = Some(100);
    sm.apply(3, &cmd(900, Op::Put(late)));
    assert_eq!(sm.get(b"t", 0).unwrap().expires_at_ms, Some(1_300));
    assert_eq!(sm.clock_ms(), 1_200);
}

#[test]
fn retried_write_is_answered_not_reapplied() {
    let mut sm = StateMachine::default();
    let client = Some(ClientRef { client_id: 7, seq: 1 });
    let c = Command { client, now_ms: 0, op: Op::Put(put("k", "v")) };
    let (first, ev) = sm.apply(1, &c);
    let (again, ev2) = sm.apply(2, &c);
    assert_eq!(first, again);
    assert_eq!((ev.len(), ev2.len()), (1, 0));
    assert_eq!(sm.get(b"k", 0).unwrap().revision, 1);
}

#[test]
fn list_pages_by_prefix() {
    let mut sm = StateMachine::default();
    for (i, k) in ["a/1", "a/2", "a/3", "b/1"].iter().enumerate() {
        sm.apply(i as u64 + 1, &cmd(0, Op::Put(put(k, "v"))));
    }
    let page = sm.list(b"a/", b"", 2, 0);
    assert_eq!(page.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(), vec![b("a/1"), b("a/2")]);
    let page = sm.list(b"a/", b"a/2", 2, 0);
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].0, b("a/3"));
}

#[test]
fn snapshot_round_trips_and_rejects_garbage() {
    let mut sm = StateMachine::default();
    let mut p = put("k", "v");
    p.ttl_ms = Some(5);
    sm.apply(1, &Command { client: Some(ClientRef { client_id: 1, seq: 1 }), now_ms: 3, op: Op::Put(p) });
    let bytes = snapshot::encode(&sm);
    let back = snapshot::decode(&bytes, 0).unwrap();
    assert_eq!(back.get(b"k", 0), sm.get(b"k", 0));
    assert_eq!(back.next_expiry(), Some(8));
    assert_eq!(back.last_version(), sm.last_version());
    assert_eq!(back.dedup(), sm.dedup());
    assert_eq!(back.revision(), sm.revision());
    assert!(matches!(snapshot::decode(b"nope", 0), Err(snapshot::SnapshotError::BadMagic)));
    assert!(matches!(snapshot::decode(b"SNKV\x09\x00", 0), Err(snapshot::SnapshotError::UnknownFormat(9))));
    assert!(matches!(snapshot::decode(&bytes[..bytes.len() - 3], 0), Err(snapshot::SnapshotError::Corrupt(_))));
}

/// The reference model: a plain map with revisions, no TTL.
#[derive(Default)]
struct Model {
    map: BTreeMap<u8, (u8, u64)>,
}

#[derive(Clone, Debug)]
enum ModelOp {
    Put(u8, u8, Option<u64>),
    Nx(u8, u8),
    Nex(u8, u8),
    Del(u8, Option<u64>),
    Vdel(u8, u8),
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    let k = 0u8..6;
    let v = 0u8..4;
    let rev = proptest::option::of(0u64..12);
    prop_oneof![
        (k.clone(), v.clone(), rev.clone()).prop_map(|(k, v, r)| ModelOp::Put(k, v, r)),
        (k.clone(), v.clone()).prop_map(|(k, v)| ModelOp::Nx(k, v)),
        (k.clone(), v.clone()).prop_map(|(k, v)| ModelOp::Nex(k, v)),
        (k.clone(), rev).prop_map(|(k, r)| ModelOp::Del(k, r)),
        (k, v).prop_map(|(k, v)| ModelOp::Vdel(k, v)),
    ]
}

impl Model {
    fn apply(&mut self, rev: u64, op: &ModelOp) -> bool {
        let cur = |m: &Self, k: &u8| m.map.get(k).copied();
        let ok = match op {
            ModelOp::Put(k, _, None) => {
                let _ = k;
                true
            }
            ModelOp::Put(k, _, Some(0)) => cur(self, k).is_none(),
            ModelOp::Put(k, _, Some(r)) => cur(self, k).is_some_and(|(_, kr)| kr == *r),
            ModelOp::Nx(k, _) => cur(self, k).is_none(),
            ModelOp::Nex(k, v) => cur(self, k).is_none_or(|(cv, _)| cv == *v),
            ModelOp::Del(k, None) => cur(self, k).is_some(),
            ModelOp::Del(k, Some(r)) => cur(self, k).is_some_and(|(_, kr)| kr == *r),
            ModelOp::Vdel(k, v) => cur(self, k).is_some_and(|(cv, _)| cv == *v),
        };
        if ok {
            match op {
                ModelOp::Put(k, v, _) | ModelOp::Nx(k, v) | ModelOp::Nex(k, v) => {
                    self.map.insert(*k, (*v, rev));
                }
                ModelOp::Del(k, _) | ModelOp::Vdel(k, _) => {
                    self.map.remove(k);
                }
            }
        }
        ok
    }
}

fn to_command(op: &ModelOp) -> Op {
    let key = |k: &u8| Bytes::from(vec![b'k', *k]);
    let val = |v: &u8| Bytes::from(vec![*v]);
    let p = |k, v, condition| {
        Op::Put(Put { key: key(k), value: val(v), ttl_ms: None, condition, fencing: None, client_ts: None })
    };
    let d = |k, condition| Op::Delete(Delete { key: key(k), condition, fencing: None });
    match op {
        ModelOp::Put(k, v, None) => p(k, v, PutCondition::Always),
        ModelOp::Put(k, v, Some(r)) => p(k, v, PutCondition::IfRevision(*r)),
        ModelOp::Nx(k, v) => p(k, v, PutCondition::IfAbsent),
        ModelOp::Nex(k, v) => p(k, v, PutCondition::IfAbsentOrEqual),
        ModelOp::Del(k, None) => d(k, DeleteCondition::Always),
        ModelOp::Del(k, Some(r)) => d(k, DeleteCondition::IfRevision(*r)),
        ModelOp::Vdel(k, v) => d(k, DeleteCondition::IfValue(val(v))),
    }
}

fn applied(r: &CommandResult) -> bool {
    matches!(op_result(r), OpResult::Put { applied: true, .. } | OpResult::Delete(DeleteOutcome::Deleted))
}

proptest! {
    #[test]
    fn apply_matches_the_model(ops in proptest::collection::vec(model_op(), 1..60)) {
        let mut sm = StateMachine::default();
        let mut model = Model::default();
        let mut last_version = Hlc::default();
        for (i, op) in ops.iter().enumerate() {
            let rev = i as u64 + 1;
            let (r, events) = sm.apply(rev, &cmd(rev / 3, to_command(op)));
            prop_assert_eq!(applied(&r), model.apply(rev, op), "op {:?}", op);
            prop_assert_eq!(events.len(), usize::from(applied(&r)));
            for e in &events {
                prop_assert!(e.version > last_version, "versions only grow");
                last_version = e.version;
            }
        }
        for k in 0u8..6 {
            let got = sm.get(&[b'k', k], 0).map(|e| (e.value[0], e.revision));
            prop_assert_eq!(got, model.map.get(&k).copied());
        }
        let back = snapshot::decode(&snapshot::encode(&sm), 0).unwrap();
        prop_assert_eq!(back.list(b"", b"", 100, 0), sm.list(b"", b"", 100, 0));
    }
}

fn owner(node: u64, boot: u64, conn: u64) -> Owner {
    Owner { node, boot, conn }
}

fn session(sm: &mut StateMachine, index: u64, now_ms: u64, op: SessionOp) -> SessionResult {
    match sm.apply(index, &cmd(now_ms, Op::Session(op))).0.outcome {
        Outcome::Session(r) => r,
        other => panic!("not a session result: {other:?}"),
    }
}

fn open(client: &str, owner: Owner, clean: bool, expiry_s: u32) -> SessionOp {
    SessionOp::Open { client: client.into(), owner, clean, expiry_s, dedup_id: owner.boot * 100 + owner.conn }
}

fn save(client: &str, owner: Owner, gen: u64, filter: &str) -> SessionOp {
    let subs = vec![SubRecord { filter: filter.into(), qos: 1, no_local: false }];
    SessionOp::Save { client: client.into(), owner, gen, subs, observed: vec![b("k")] }
}

#[test]
fn sessions_resume_move_between_owners_and_expire() {
    let mut sm = StateMachine::default();
    let (o1, o2) = (owner(1, 10, 1), owner(2, 20, 1));
    let r = session(&mut sm, 1, 1000, open("c", o1, false, 60));
    assert!(matches!(r, SessionResult::Done { resumed: false, record: Some(ref rec) } if rec.owner == Some(o1)));
    session(&mut sm, 2, 1000, save("c", o1, 1, "a/#"));
    // A save that is not newer than the saved one changes nothing.
    session(&mut sm, 3, 1000, save("c", o1, 1, "stale/#"));
    assert_eq!(sm.session("c").unwrap().subs[0].filter, "a/#");
    // Another node takes it over and resumes what was saved.
    let SessionResult::Done { resumed, record } = session(&mut sm, 4, 1100, open("c", o2, false, 60)) else {
        panic!("open refused")
    };
    let record = record.unwrap();
    assert!(resumed);
    assert_eq!((record.owner, record.gen, record.subs[0].filter.as_str()), (Some(o2), 1, "a/#"));
    assert_eq!(record.observed, vec![b("k")]);
    assert_eq!(record.dedup_id, 1001, "a resumed session keeps its dedup id");
    // The old owner can no longer save or close it.
    session(&mut sm, 5, 1100, save("c", o1, 9, "old/#"));
    session(&mut sm, 6, 1100, SessionOp::Close { client: "c".into(), owner: o1, expiry_s: 60 });
    assert_eq!(sm.session("c").unwrap().owner, Some(o2));
    assert_eq!(sm.session("c").unwrap().subs[0].filter, "a/#");
    assert_eq!(sm.next_expiry(), None, "an owned session does not expire");
    // Closed: it waits 60 s for the client, then the reaper's Expire ends it.
    session(&mut sm, 7, 2000, SessionOp::Close { client: "c".into(), owner: o2, expiry_s: 60 });
    assert_eq!(sm.next_expiry(), Some(62_000));
    sm.apply(8, &cmd(61_999, Op::Expire));
    assert!(sm.session("c").is_some());
    let (r, _) = sm.apply(9, &cmd(62_000, Op::Expire));
    assert_eq!(r.outcome, Outcome::Expired { count: 1 });
    assert!(sm.session("c").is_none());
    assert_eq!(sm.next_expiry(), None);
}

#[test]
fn clean_start_and_an_expired_session_do_not_resume() {
    let mut sm = StateMachine::default();
    let o = owner(1, 1, 1);
    session(&mut sm, 1, 1000, open("c", o, false, 1));
    session(&mut sm, 2, 1000, save("c", o, 1, "a"));
    let r = session(&mut sm, 3, 1000, open("c", owner(1, 1, 2), true, 1));
    assert!(matches!(r, SessionResult::Done { resumed: false, record: Some(ref rec) } if rec.subs.is_empty()));
    session(&mut sm, 4, 1000, SessionOp::Close { client: "c".into(), owner: owner(1, 1, 2), expiry_s: 1 });
    // Ran out at 2000 but not reaped yet: not resumed all the same.
    let r = session(&mut sm, 5, 2500, open("c", o, false, 1));
    assert!(matches!(r, SessionResult::Done { resumed: false, .. }));
    // Expiry 0: closing ends it.
    session(&mut sm, 6, 2500, SessionOp::Close { client: "c".into(), owner: o, expiry_s: 0 });
    assert!(sm.session("c").is_none());
}

#[test]
fn a_restarted_node_orphans_its_earlier_runs_sessions() {
    let mut sm = StateMachine::default();
    session(&mut sm, 1, 1000, open("old", owner(1, 1, 1), false, 30));
    session(&mut sm, 2, 1000, open("new", owner(1, 2, 1), false, 30));
    session(&mut sm, 3, 1000, open("gone", owner(1, 1, 2), false, 0));
    session(&mut sm, 4, 1000, open("other", owner(2, 1, 1), false, 30));
    let r = session(&mut sm, 5, 5000, SessionOp::Orphan { node: 1, boot: 2 });
    assert_eq!(r, SessionResult::Orphaned(2));
    assert_eq!(sm.session("old").unwrap().ends_at(), Some(35_000));
    assert!(sm.session("gone").is_none(), "expiry 0 ends with its connection");
    assert!(sm.session("new").unwrap().owner.is_some());
    assert!(sm.session("other").unwrap().owner.is_some());
}

#[test]
fn sessions_survive_a_snapshot() {
    let mut sm = StateMachine::default();
    session(&mut sm, 1, 1000, open("c", owner(1, 1, 1), false, 30));
    session(&mut sm, 2, 1000, save("c", owner(1, 1, 1), 1, "x/+"));
    session(&mut sm, 3, 2000, SessionOp::Close { client: "c".into(), owner: owner(1, 1, 1), expiry_s: 30 });
    let back = snapshot::decode(&snapshot::encode(&sm), 0).unwrap();
    assert_eq!(back.session("c"), sm.session("c"));
    assert_eq!(back.next_expiry(), Some(32_000));
}

#[test]
fn a_group_gives_each_command_its_own_revision() {
    let mut sm = StateMachine::default();
    sm.apply(3, &cmd(0, Op::Put(put("a", "0"))));
    let own = |seq| Some(ClientRef { client_id: 7, seq });
    let group = vec![
        Command { client: own(1), now_ms: 0, op: Op::Put(put("a", "1")) },
        cmd(0, Op::Txn(vec![TxnOp::Put(put("b", "1")), TxnOp::Delete(del("a"))])),
        // A retry of the first command inside the same group: answered, not applied again.
        Command { client: own(1), now_ms: 0, op: Op::Put(put("a", "again")) },
        cmd(0, Op::Group(vec![cmd(0, Op::Put(put("nested", "x")))])),
    ];
    let (r, ev) = sm.apply(4, &cmd(0, Op::Group(group)));
    let Outcome::Group(results) = &r.outcome else { panic!("{r:?}") };
    let revisions: Vec<u64> = results.iter().map(|r| r.revision).collect();
    // The retry answers with the first command's result (revision 4); the group's own
    // revision is the last it took.
    assert_eq!(revisions, vec![4, 5, 4, 7]);
    assert_eq!((r.revision, sm.revision()), (7, 7));
    assert_eq!(results[3].outcome, Outcome::None, "groups do not nest");
    assert!(sm.get(b"nested", 0).is_none());
    assert!(sm.get(b"a", 0).is_none());
    assert_eq!(sm.get(b"b", 0).map(|e| (e.revision, e.create_revision)), Some((5, 5)));
    let seen: Vec<(u64, &[u8])> = ev.iter().map(|e| (e.revision, &e.key[..])).collect();
    assert_eq!(seen, vec![(4, &b"a"[..]), (5, &b"b"[..]), (5, &b"a"[..])]);
    // The next entry goes on from the counter, which never falls below the log index.
    assert_eq!(sm.apply(5, &cmd(0, Op::Put(put("c", "1")))).0.revision, 8);
    assert_eq!(sm.skip(6), 9);
    assert_eq!(sm.apply(20, &cmd(0, Op::Put(put("c", "2")))).0.revision, 20);
}

#[test]
fn a_snapshot_without_a_revision_counter_starts_at_its_index() {
    // Format 3 (before the counter): its body is format 4's without the trailing revision.
    let mut sm = StateMachine::default();
    sm.apply(9, &cmd(0, Op::Put(put("k", "v"))));
    let mut bytes = snapshot::encode(&sm);
    bytes.truncate(bytes.len() - 8);
    bytes[4..6].copy_from_slice(&3u16.to_le_bytes());
    let back = snapshot::decode(&bytes, 12).unwrap();
    assert_eq!((back.revision(), back.get(b"k", 0).map(|e| e.revision)), (12, Some(9)));
    assert_eq!(snapshot::decode(&snapshot::encode(&sm), 0).unwrap().revision(), 9);
}
