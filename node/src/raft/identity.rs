//! Which cluster a node belongs to. The id is derived when the cluster is first formed,
//! stored next to the log, and carried on every Raft message; a node takes no Raft message
//! from another cluster. Without it, a member whose disk was wiped and which then formed a
//! cluster of its own (started without `--peers`) would be pulled back into its old cluster
//! by the old leader — as an amnesiac under its old id — or disrupt it.

use super::types::{NodeId, NodeInfo};
use crate::store::LogBackend;
use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Metadata carrying the sender's cluster id on Raft RPCs.
pub const CLUSTER_HEADER: &str = "x-statenode-cluster";
const KEY: &str = "cluster_id";

pub struct ClusterIdent {
    /// 0 while unknown: a node with no data, or one from before cluster ids.
    id: AtomicU64,
    log: Arc<dyn LogBackend>,
}

impl ClusterIdent {
    pub fn load(log: Arc<dyn LogBackend>) -> io::Result<Arc<Self>> {
        let stored = log.raw_meta(KEY)?.and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
        Ok(Arc::new(Self { id: AtomicU64::new(stored), log }))
    }

    pub fn get(&self) -> Option<u64> {
        Some(self.id.load(Ordering::SeqCst)).filter(|id| *id != 0)
    }

    /// The id of a cluster formed with these members: every node that initializes it
    /// computes the same one (the members' process incarnations make it unique).
    pub fn of_members(members: &BTreeMap<NodeId, NodeInfo>) -> u64 {
        // FNV-1a: stable across builds, unlike std's hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (id, n) in members {
            let parts = [&id.to_le_bytes()[..], n.peer_addr.as_bytes(), &n.incarnation.to_le_bytes()];
            for b in parts.into_iter().flatten() {
                h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h.max(1)
    }

    /// Records the id durably, then uses it.
    pub fn set(&self, id: u64) -> io::Result<()> {
        self.log.set_raw_meta(KEY, &id.to_le_bytes())?;
        self.id.store(id, Ordering::SeqCst);
        Ok(())
    }

    /// Whether a Raft message from cluster `theirs` may be taken; a node that has no id
    /// yet (no data, or joining) takes the first one it is sent.
    pub fn admit(&self, theirs: Option<u64>) -> Result<(), String> {
        match (self.get(), theirs) {
            (_, None) => Ok(()),
            (Some(ours), Some(t)) if ours == t => Ok(()),
            (Some(ours), Some(t)) => Err(format!("this node belongs to cluster {ours:016x}, not {t:016x}")),
            (None, Some(t)) => {
                tracing::info!(cluster = format!("{t:016x}"), "joining cluster");
                self.set(t).map_err(|e| format!("cannot record the cluster id: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemLog;

    fn members(incarnation: u64) -> BTreeMap<NodeId, NodeInfo> {
        let n = |a: &str| NodeInfo { peer_addr: a.into(), grpc_addr: String::new(), incarnation };
        [(1, n("a:1")), (2, n("b:1"))].into()
    }

    #[test]
    fn adopts_once_then_refuses_strangers() {
        let log: Arc<dyn LogBackend> = Arc::new(MemLog::default());
        let ident = ClusterIdent::load(log.clone()).unwrap();
        assert_eq!(ident.get(), None);
        ident.admit(None).unwrap();
        ident.admit(Some(7)).unwrap();
        ident.admit(Some(7)).unwrap();
        assert!(ident.admit(Some(8)).unwrap_err().contains("not 0000000000000008"));
        assert_eq!(ClusterIdent::load(log).unwrap().get(), Some(7), "kept across restarts");
    }

    #[test]
    fn the_same_members_give_the_same_id() {
        assert_eq!(ClusterIdent::of_members(&members(5)), ClusterIdent::of_members(&members(5)));
        assert_ne!(ClusterIdent::of_members(&members(5)), ClusterIdent::of_members(&members(6)));
    }
}
