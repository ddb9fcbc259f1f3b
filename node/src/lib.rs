//! statenode: a Raft-replicated key/value state cluster.

pub mod kv;
