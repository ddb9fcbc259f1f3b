//! The versioned binary snapshot format of the whole key space.
//!
//! Layout: `b"SNKV"`, a little-endian `u16` format version, then the bincode body.

use super::dedup::DedupTable;
use super::hlc::Hlc;
use super::machine::{Entry, StateMachine};
use super::session::SessionRecord;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 4] = b"SNKV";
/// 2: the state-machine clock, and each dedup client's last write time.
/// 3: MQTT sessions.
/// 4: the revision counter (revisions stopped being log indexes when entries became
/// groups). Formats 2 and 3 are still read: their revision is the snapshot's log index,
/// which the loader supplies as the floor.
const FORMAT: u16 = 4;

#[derive(Serialize, Deserialize)]
struct Body {
    keys: Vec<(Bytes, Entry)>,
    last_version: Hlc,
    clock_ms: u64,
    dedup: DedupTable,
    sessions: Vec<(String, SessionRecord)>,
    revision: u64,
}

/// Format 2: the body without sessions.
#[derive(Deserialize)]
struct BodyV2 {
    keys: Vec<(Bytes, Entry)>,
    last_version: Hlc,
    clock_ms: u64,
    dedup: DedupTable,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a statenode snapshot")]
    BadMagic,
    #[error("snapshot format {0} is not the one this build understands ({FORMAT})")]
    UnknownFormat(u16),
    #[error("corrupt snapshot: {0}")]
    Corrupt(#[from] bincode::Error),
}

pub fn encode(sm: &StateMachine) -> Vec<u8> {
    Capture::of(sm).encode()
}

/// The state to encode, copied cheaply (keys and values are shared, not copied): what a
/// snapshot build takes under the state's lock, to encode after it lets go.
pub struct Capture(Body);

impl Capture {
    pub fn of(sm: &StateMachine) -> Self {
        Self(Body {
            keys: sm.entries().map(|(k, e)| (k.clone(), e.clone())).collect(),
            last_version: sm.last_version(),
            clock_ms: sm.clock_ms(),
            dedup: sm.dedup().clone(),
            sessions: sm.sessions().map(|(c, r)| (c.clone(), r.clone())).collect(),
            revision: sm.revision(),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT.to_le_bytes());
        bincode::serialize_into(&mut out, &self.0).expect("in-memory serialization cannot fail");
        out
    }
}

/// Decodes a snapshot of the state after log index `index` (its revision is at least that).
pub fn decode(data: &[u8], index: u64) -> Result<StateMachine, SnapshotError> {
    if data.len() < 6 || &data[..4] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let format = u16::from_le_bytes([data[4], data[5]]);
    let body: Body = match format {
        FORMAT => bincode::deserialize(&data[6..])?,
        // Format 3 is format 4 without the trailing counter: read it as 0 (the caller's
        // index is the floor).
        3 => bincode::deserialize(&[&data[6..], &0u64.to_le_bytes()[..]].concat())?,
        2 => {
            let b: BodyV2 = bincode::deserialize(&data[6..])?;
            let (keys, last_version, clock_ms, dedup) = (b.keys, b.last_version, b.clock_ms, b.dedup);
            Body { keys, last_version, clock_ms, dedup, sessions: vec![], revision: 0 }
        }
        other => return Err(SnapshotError::UnknownFormat(other)),
    };
    let revision = body.revision.max(index);
    Ok(StateMachine::from_parts(body.keys, body.last_version, body.clock_ms, revision, body.dedup, body.sessions))
}
