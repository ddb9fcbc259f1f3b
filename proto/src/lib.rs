//! Generated gRPC code for statenode: the `statenode.v1` client services and the peer service,
//! the state subset of Dapr's runtime API, and `google.rpc.Status` for rich errors.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("statenode.v1");
}

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod dapr {
    pub mod proto {
        pub mod common {
            pub mod v1 {
                tonic::include_proto!("dapr.proto.common.v1");
            }
        }
        pub mod runtime {
            pub mod v1 {
                tonic::include_proto!("dapr.proto.runtime.v1");
            }
        }
    }
}

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// Header and metadata names that node and clients share, spelled once.
pub mod headers {
    /// The API token, on every client request when the server requires one (Dapr's name).
    pub const API_TOKEN: &str = "dapr-api-token";
    /// The Dapr app id a request speaks for (key prefixes by app id).
    pub const APP_ID: &str = "dapr-app-id";
    /// On an unavailable reply: the client (gRPC) address of the leader, when known.
    pub const LEADER: &str = "x-statenode-leader";
    /// On a Raft RPC: the node id it is meant for.
    pub const TARGET: &str = "x-statenode-target";
    /// On a Raft RPC: the sender's cluster id.
    pub const CLUSTER: &str = "x-statenode-cluster";
}
