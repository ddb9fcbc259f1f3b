//! Protobuf ↔ state-machine conversions for the native API.

use crate::error::{Error, Result};
use crate::handle::{Consistency, Member};
use crate::kv::{self, ClientRef, DeleteCondition, Entry, Hlc, PutCondition};
use bytes::Bytes;
use statenode_proto::v1 as pb;

pub fn key_value(key: Bytes, e: &Entry, with_value: bool) -> pb::KeyValue {
    pb::KeyValue {
        key,
        value: if with_value { e.value.clone() } else { Bytes::new() },
        revision: e.revision,
        create_revision: e.create_revision,
        version: e.version.to_string(),
        expires_at_ms: e.expires_at_ms.unwrap_or(0),
    }
}

/// A key as a write left it: its metadata, no value.
pub fn meta_kv(key: Bytes, m: &kv::Meta) -> pb::KeyValue {
    pb::KeyValue {
        key,
        value: Bytes::new(),
        revision: m.revision,
        create_revision: m.create_revision,
        version: m.version.to_string(),
        expires_at_ms: m.expires_at_ms.unwrap_or(0),
    }
}

pub fn members(ms: Vec<Member>) -> Vec<pb::Member> {
    ms.into_iter().map(member).collect()
}

pub fn client(c: Option<pb::ClientRef>) -> Option<ClientRef> {
    c.filter(|c| c.client_id != 0).map(|c| ClientRef { client_id: c.client_id, seq: c.seq })
}

fn fencing(token: &str) -> Result<Option<Hlc>> {
    if token.is_empty() {
        return Ok(None);
    }
    token.parse().map(Some).map_err(|_| Error::invalid("malformed timestamp"))
}

pub fn put(p: pb::PutRequest) -> Result<kv::Put> {
    let condition = match pb::PutCondition::try_from(p.condition) {
        Ok(pb::PutCondition::PutAlways) => PutCondition::Always,
        Ok(pb::PutCondition::PutIfRevision) => PutCondition::IfRevision(p.if_revision),
        Ok(pb::PutCondition::PutIfAbsent) => PutCondition::IfAbsent,
        Ok(pb::PutCondition::PutIfAbsentOrEqual) => PutCondition::IfAbsentOrEqual,
        Err(_) => return Err(Error::invalid(format!("unknown put condition {}", p.condition))),
    };
    Ok(kv::Put {
        key: p.key,
        value: p.value,
        ttl_ms: (p.ttl_ms > 0).then_some(p.ttl_ms),
        condition,
        fencing: fencing(&p.fencing_token)?,
        client_ts: None,
    })
}

pub fn delete(d: pb::DeleteRequest) -> Result<kv::Delete> {
    let condition = match pb::DeleteCondition::try_from(d.condition) {
        Ok(pb::DeleteCondition::DeleteAlways) => DeleteCondition::Always,
        Ok(pb::DeleteCondition::DeleteIfRevision) => DeleteCondition::IfRevision(d.if_revision),
        Ok(pb::DeleteCondition::DeleteIfValue) => DeleteCondition::IfValue(d.if_value),
        Err(_) => return Err(Error::invalid(format!("unknown delete condition {}", d.condition))),
    };
    Ok(kv::Delete { key: d.key, condition, fencing: fencing(&d.fencing_token)? })
}

pub fn txn_op(op: pb::TxnOp) -> Result<kv::TxnOp> {
    match op.op {
        Some(pb::txn_op::Op::Put(p)) => Ok(kv::TxnOp::Put(put(p)?)),
        Some(pb::txn_op::Op::Delete(d)) => Ok(kv::TxnOp::Delete(delete(d)?)),
        None => Err(Error::invalid("transaction operation without put or delete")),
    }
}

pub fn consistency(c: i32) -> Result<Consistency> {
    match pb::Consistency::try_from(c) {
        Ok(pb::Consistency::Linearizable) => Ok(Consistency::Linearizable),
        Ok(pb::Consistency::Stale) => Ok(Consistency::Stale),
        Err(_) => Err(Error::invalid(format!("unknown consistency {c}"))),
    }
}

fn member(m: Member) -> pb::Member {
    pb::Member { id: m.id, peer_addr: m.peer_addr, grpc_addr: m.grpc_addr, voter: m.voter, leader: m.leader }
}
