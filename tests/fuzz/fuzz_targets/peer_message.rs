//! What a peer port decodes from the wire (bincode): forwarded requests and their replies,
//! Raft's AppendEntries, Vote and InstallSnapshot; a snapshot's contents; a backup file
//! (`statenode restore`). Decoding hostile bytes must fail cleanly, within memory.

#![no_main]

use libfuzzer_sys::fuzz_target;
use statenode::raft::network::decode;
use statenode::raft::peer::{PeerReply, PeerRequest};
use statenode::raft::types::{NodeId, TypeConfig};
use statenode_proto::v1::Blob;

fuzz_target!(|data: &[u8]| {
    let blob = Blob { data: data.to_vec().into() };
    let _ = decode::<PeerRequest>(&blob);
    let _ = decode::<PeerReply>(&blob);
    let _ = decode::<openraft::raft::AppendEntriesRequest<TypeConfig>>(&blob);
    let _ = decode::<openraft::raft::VoteRequest<NodeId>>(&blob);
    let _ = decode::<openraft::raft::InstallSnapshotRequest<TypeConfig>>(&blob);
    let _ = statenode::kv::snapshot::decode(data, 1);
    let _ = statenode_proto::backup::decode(data);
});
