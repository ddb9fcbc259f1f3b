//! Change events emitted by `apply`, in log order.

use super::hlc::Hlc;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One applied change to one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub revision: u64,
    pub key: Bytes,
    pub kind: EventKind,
    /// The new value for a put; empty for a delete.
    pub value: Bytes,
    pub version: Hlc,
    /// A delete caused by TTL expiry.
    pub expired: bool,
}
