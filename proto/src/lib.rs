//! Generated gRPC code for statenode: the `statenode.v1` client services and the peer service.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("statenode.v1");
}
