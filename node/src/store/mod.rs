//! Log and state-machine storage: segment files for the log and the state machine's latest
//! snapshot on disk (redb for either in a data dir made before them), with an in-memory twin
//! of each.
//! Both pass openraft's storage suite (see `tests.rs`).

pub mod backend;
pub mod log;
mod redb_db;
pub mod redb_log;
pub mod redb_sm;
pub mod sm;
pub mod sm_disk;
mod sm_writer;
pub mod snap_sm;
pub mod wal;
mod worker;

#[cfg(test)]
mod tests;

pub use crate::raft::identity::RawMeta;
pub use backend::{LogBackend, MemLog};
pub use log::LogStore;
pub use redb_log::RedbLog;
pub use redb_sm::RedbSm;
pub use sm::SmStore;
pub use sm_disk::SmDisk;
pub use snap_sm::{FileSlot, MemSlot, SnapSm};
pub use wal::WalLog;
