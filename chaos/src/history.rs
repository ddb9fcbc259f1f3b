//! What clients saw: every operation's invocation, completion and outcome.

use statenode_client::{v1 as pb, Client};
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Put(String),
    /// A put whose value expires after this many milliseconds.
    PutTtl(String, u64),
    /// NX: put only if absent.
    PutIfAbsent(String),
    /// NEX (the MQTT door's SET NEX): put only if absent or already holding this value.
    PutIfAbsentOrEqual(String),
    Delete,
    /// VDEL (the MQTT door's): delete only if the key holds this value.
    DeleteIfValue(String),
    Get,
}

/// What the client observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Put {
        applied: bool,
        revision: u64,
        version: String,
    },
    Delete {
        deleted: bool,
    },
    Get(Option<Read>),
    /// The request certainly had no effect (a failed read).
    Failed,
    /// The request may or may not have taken effect (a timed-out write).
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    pub value: String,
    pub revision: u64,
    pub version: String,
}

#[derive(Clone, Debug)]
pub struct Op {
    pub client: usize,
    pub key: String,
    pub kind: Kind,
    /// Simulated time of invocation and completion, in microseconds.
    pub invoke: u64,
    pub complete: Option<u64>,
    pub outcome: Outcome,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = self.complete.map_or("∞".to_string(), |c| format!("{:.3}", c as f64 / 1e6));
        write!(
            f,
            "[{:>8.3}s .. {:>8}s] client {} {} {:?} -> {:?}",
            self.invoke as f64 / 1e6,
            end,
            self.client,
            self.key,
            self.kind,
            self.outcome
        )
    }
}

#[derive(Default, Debug, Clone)]
pub struct History {
    pub ops: Vec<Op>,
}

impl History {
    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.ops.iter().map(|o| o.key.clone()).collect();
        keys.sort();
        keys.dedup();
        keys
    }

    pub fn for_key<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Op> + 'a {
        self.ops.iter().filter(move |o| o.key == key)
    }
}

/// What a watcher received, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    Put {
        revision: u64,
        key: String,
        value: String,
    },
    Delete {
        revision: u64,
        key: String,
    },
    /// History was gone: everything before `next` may be missing, explicitly.
    Resync {
        next: u64,
    },
}

/// Runs one operation through the real client and records what it saw; `now` gives the
/// timestamps (simulated or wall-clock microseconds). Failed writes are unknown (they may
/// still apply); failed reads had no effect.
pub async fn perform(c: &Client, client_no: usize, key: String, kind: Kind, now: impl Fn() -> u64) -> Op {
    let invoke = now();
    let outcome = match &kind {
        Kind::Put(v) | Kind::PutIfAbsent(v) | Kind::PutIfAbsentOrEqual(v) | Kind::PutTtl(v, _) => {
            let ttl_ms = if let Kind::PutTtl(_, t) = kind { t } else { 0 };
            let condition = match kind {
                Kind::PutIfAbsent(_) => pb::PutCondition::PutIfAbsent,
                Kind::PutIfAbsentOrEqual(_) => pb::PutCondition::PutIfAbsentOrEqual,
                _ => pb::PutCondition::PutAlways,
            };
            let req = pb::PutRequest {
                key: key.clone().into(),
                value: v.clone().into(),
                condition: condition as i32,
                ttl_ms,
                ..Default::default()
            };
            match c.put(req).await {
                Ok(r) => Outcome::Put {
                    applied: r.applied,
                    revision: if r.applied { r.revision } else { 0 },
                    version: r.kv.filter(|_| r.applied).map(|kv| kv.version).unwrap_or_default(),
                },
                Err(_) => Outcome::Unknown,
            }
        }
        Kind::Delete | Kind::DeleteIfValue(_) => {
            let mut req = pb::DeleteRequest { key: key.clone().into(), ..Default::default() };
            if let Kind::DeleteIfValue(v) = &kind {
                req.condition = pb::DeleteCondition::DeleteIfValue as i32;
                req.if_value = v.clone().into();
            }
            match c.delete(req).await {
                Ok(r) => Outcome::Delete { deleted: r.outcome == pb::DeleteOutcome::Deleted as i32 },
                Err(_) => Outcome::Unknown,
            }
        }
        Kind::Get => match c.get(key.clone(), pb::Consistency::Linearizable).await {
            Ok(kv) => Outcome::Get(kv.map(|kv| Read {
                value: String::from_utf8_lossy(&kv.value).into_owned(),
                revision: kv.revision,
                version: kv.version,
            })),
            Err(_) => Outcome::Failed,
        },
    };
    let complete = (outcome != Outcome::Unknown).then(&now);
    Op { client: client_no, key, kind, invoke, complete, outcome }
}
