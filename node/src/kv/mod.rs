//! The state machine: commands, apply, versions (HLC), TTL, conditions, fencing, dedup
//! and events. Pure and deterministic.

pub mod command;
pub mod dedup;
pub mod event;
pub mod hlc;
pub mod machine;
pub mod session;
pub mod snapshot;

#[cfg(test)]
mod tests;

pub use command::*;
pub use event::{Event, EventKind};
pub use hlc::Hlc;
pub use machine::{Entry, StateMachine};
pub use session::{Owner, SessionOp, SessionRecord, SessionResult, SubRecord};
