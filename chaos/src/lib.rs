//! Deterministic fault simulation of statenode: the real node, storage, network and client
//! code running on turmoil, every client history checked for linearizability.

pub mod checker;
pub mod history;
pub mod net;
pub mod sim;
