//! statenode: a Raft-replicated key/value state cluster.

pub mod kv;
pub mod raft;
pub mod store;
pub mod watch;
