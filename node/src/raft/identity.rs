//! Which cluster a node belongs to. The id is derived from the first configuration,
//! stored next to the log, and carried on every Raft message; a node takes no Raft message
//! from another cluster. Without it, a member whose disk was wiped and which then formed a
//! cluster of its own (started without `--peers`) would be pulled back into its old cluster
//! by the old leader — as an amnesiac under its old id — or disrupt it.

use super::types::NodeId;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Metadata carrying the sender's cluster id on Raft RPCs.
pub const CLUSTER_HEADER: &str = statenode_proto::headers::CLUSTER;
const KEY: &str = "cluster_id";

/// Where the id is kept: named records next to the Raft log (the log backend).
pub trait RawMeta: Send + Sync + 'static {
    fn raw_meta(&self, name: &str) -> io::Result<Option<Vec<u8>>>;
    fn set_raw_meta(&self, name: &str, value: &[u8]) -> io::Result<()>;
}

pub struct ClusterIdent {
    /// 0 while unknown: a node with no data, or one from before cluster ids.
    id: AtomicU64,
    log: Arc<dyn RawMeta>,
}

impl ClusterIdent {
    pub fn load(log: Arc<dyn RawMeta>) -> io::Result<Arc<Self>> {
        let stored = log.raw_meta(KEY)?.and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
        Ok(Arc::new(Self { id: AtomicU64::new(stored), log }))
    }

    pub fn get(&self) -> Option<u64> {
        Some(self.id.load(Ordering::SeqCst)).filter(|id| *id != 0)
    }

    /// The id of a cluster whose first configuration is `peers` (ids and peer addresses):
    /// every node that forms it computes the same one from its own flags, before it takes
    /// any message, and again after a restart. (A cluster formed anew with the very same ids
    /// and addresses gets the same id — it replaces one whose members all lost their data.)
    pub fn of_peers(peers: &[(NodeId, String)]) -> u64 {
        let mut sorted: Vec<&(NodeId, String)> = peers.iter().collect();
        sorted.sort();
        // FNV-1a: stable across builds, unlike std's hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (id, addr) in sorted {
            for b in id.to_le_bytes().iter().chain(addr.as_bytes()).chain(b"\n") {
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
    use std::collections::HashMap;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Records(Mutex<HashMap<String, Vec<u8>>>);

    impl RawMeta for Records {
        fn raw_meta(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
            Ok(self.0.lock().unwrap().get(name).cloned())
        }
        fn set_raw_meta(&self, name: &str, value: &[u8]) -> io::Result<()> {
            self.0.lock().unwrap().insert(name.into(), value.to_vec());
            Ok(())
        }
    }

    #[test]
    fn adopts_once_then_refuses_strangers() {
        let log: Arc<dyn RawMeta> = Arc::new(Records::default());
        let ident = ClusterIdent::load(log.clone()).unwrap();
        assert_eq!(ident.get(), None);
        ident.admit(None).unwrap();
        ident.admit(Some(7)).unwrap();
        ident.admit(Some(7)).unwrap();
        assert!(ident.admit(Some(8)).unwrap_err().contains("not 0000000000000008"));
        assert_eq!(ClusterIdent::load(log).unwrap().get(), Some(7), "kept across restarts");
    }

    #[test]
    fn the_same_first_configuration_gives_the_same_id() {
        let peers = |v: &[(u64, &str)]| v.iter().map(|(i, a)| (*i, a.to_string())).collect::<Vec<_>>();
        let abc = ClusterIdent::of_peers(&peers(&[(1, "a:1"), (2, "b:1"), (3, "c:1")]));
        assert_eq!(abc, ClusterIdent::of_peers(&peers(&[(3, "c:1"), (1, "a:1"), (2, "b:1")])));
        assert_ne!(abc, ClusterIdent::of_peers(&peers(&[(3, "c:1")])), "a member alone is another cluster");
        assert_ne!(abc, ClusterIdent::of_peers(&peers(&[(1, "a:1"), (2, "b:1"), (3, "d:1")])));
    }
}
