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
