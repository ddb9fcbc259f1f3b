//! The one error type every front door maps, in exactly one place each.

use serde::{Deserialize, Serialize};

/// Where the caller should retry: the current leader, when known.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderHint {
    pub id: u64,
    pub grpc_addr: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Error {
    /// No leader reachable right now (election, partition, shutdown): retryable.
    #[error("unavailable: {reason}")]
    Unavailable { reason: String, leader_hint: Option<LeaderHint> },
    #[error("condition failed: {0}")]
    ConditionFailed(String),
    #[error("{0}")]
    FencingRejected(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("too large: {0}")]
    TooLarge(String),
    /// A per-node resource is used up (open watches, connections): try again later.
    #[error("resource exhausted: {0}")]
    Exhausted(String),
    /// The outcome is unknown: the request may or may not have been applied.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The caller's rules do not allow this (`auth::Caller`).
    #[error("permission denied: {0}")]
    Forbidden(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Error::Unavailable { reason: reason.into(), leader_hint: None }
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        Error::Internal(e.to_string())
    }
}
