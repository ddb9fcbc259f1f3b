//! The versioned binary snapshot format of the whole key space.
//!
//! Layout: `b"SNKV"`, a little-endian `u16` format version, then the bincode body.

use super::dedup::DedupTable;
use super::hlc::Hlc;
use super::machine::{Entry, StateMachine};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 4] = b"SNKV";
/// 2: the state-machine clock, and each dedup client's last write time.
const FORMAT: u16 = 2;

#[derive(Serialize, Deserialize)]
struct Body {
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
    let body = Body {
        keys: sm.entries().map(|(k, e)| (k.clone(), e.clone())).collect(),
        last_version: sm.last_version(),
        clock_ms: sm.clock_ms(),
        dedup: sm.dedup().clone(),
    };
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    bincode::serialize_into(&mut out, &body).expect("in-memory serialization cannot fail");
    out
}

pub fn decode(data: &[u8]) -> Result<StateMachine, SnapshotError> {
    if data.len() < 6 || &data[..4] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let format = u16::from_le_bytes([data[4], data[5]]);
    if format != FORMAT {
        return Err(SnapshotError::UnknownFormat(format));
    }
    let body: Body = bincode::deserialize(&data[6..])?;
    Ok(StateMachine::from_parts(body.keys, body.last_version, body.clock_ms, body.dedup))
}
