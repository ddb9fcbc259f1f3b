//! How far this node's log is on disk (ADR 0012): the store's log writer tells, the state
//! machine and the network wait. Here, not in `store`, so that `raft` never names `store`.

use std::io;
use tokio::sync::watch;

/// What of the log is on disk: the last index written by a finished batch, or a failed write
/// (after which nothing waiting on the log may go on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OnDisk {
    pub upto: u64,
    pub failed: bool,
}

/// Waits for the log to be on disk up to an index: what the state machine and the network
/// wait for before they act on a commit (see the module doc). Always there for a log
/// without real I/O.
#[derive(Clone, Default)]
pub struct Synced(Option<watch::Receiver<OnDisk>>);

impl Synced {
    /// Over what a log writer tells (`None`: a log without real I/O).
    pub fn new(rx: Option<watch::Receiver<OnDisk>>) -> Self {
        Self(rx)
    }

    /// Returns once the log is on disk up to `index`, or `Err` if a write failed.
    pub async fn wait(&self, index: u64) -> io::Result<()> {
        let Some(rx) = &self.0 else { return Ok(()) };
        let mut rx = rx.clone();
        let seen = rx
            .wait_for(|d| d.upto >= index || d.failed)
            .await
            .map_err(|_| io::Error::other("the log writer stopped"))?;
        if seen.failed {
            return Err(io::Error::other("the log could not be written: the node stops acting on commits"));
        }
        Ok(())
    }
}
