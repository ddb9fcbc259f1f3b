//! tonic services for clients: Dapr's state methods, native KV and Cluster. Native errors
//! become a Status in one place (`From<Error> for Status`); Dapr's in `dapr::DaprError`.

pub mod cluster;
pub mod convert;
pub mod dapr;
pub mod kv;

use crate::auth::{Caller, CertName, Denied, Gate, TOKEN_HEADER};
use crate::dapr::Dapr;
use crate::error::Error;
use crate::io::Incoming;
use cluster::ClusterService;
use dapr::DaprService;
use kv::KvService;
use statenode_proto::dapr::proto::runtime::v1::dapr_server::DaprServer;
use statenode_proto::v1::cluster_server::ClusterServer;
use statenode_proto::v1::kv_server::KvServer;
use std::sync::Arc;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::{Code, Status};

/// Metadata key carrying the leader's client address on UNAVAILABLE.
pub const LEADER_HEADER: &str = statenode_proto::headers::LEADER;

/// Serves the client gRPC services on `incoming` until `stop`.
pub async fn serve(incoming: Incoming, dapr: Dapr, gate: Arc<Gate>, stop: watch::Receiver<bool>) {
    let handle = dapr.handle().clone();
    let max = handle.limits().max_request_bytes + 64 * 1024;
    let call_timeout = handle.limits().grpc_call_timeout;
    let auth = authenticate(gate);
    let kv = KvServer::new(KvService { handle: handle.clone() }).max_decoding_message_size(max);
    let metrics = crate::metrics::GrpcLayer(handle.metrics().clone());
    let cluster = ClusterServer::new(ClusterService { handle });
    let dapr = DaprServer::new(DaprService { dapr }).max_decoding_message_size(max).max_encoding_message_size(max);
    let r = crate::io::grpc_server(call_timeout)
        .layer(metrics)
        .add_service(InterceptedService::new(kv, auth.clone()))
        .add_service(InterceptedService::new(cluster, auth.clone()))
        .add_service(InterceptedService::new(dapr, auth))
        .serve_with_incoming_shutdown(incoming, crate::io::stopped(stop))
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "grpc server failed");
    }
}

/// Every client service: checks the `dapr-api-token` metadata and the connection's client
/// certificate, and leaves the request's `Caller` in its extensions (`caller`).
fn authenticate(gate: Arc<Gate>) -> impl Fn(tonic::Request<()>) -> Result<tonic::Request<()>, Status> + Clone {
    move |mut req| {
        let token = req.metadata().get(TOKEN_HEADER).map(|v| v.as_bytes());
        let cert = req.extensions().get::<Option<Arc<CertName>>>().and_then(|c| c.as_deref());
        match gate.caller(token, cert) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                Ok(req)
            }
            Err(Denied::Missing) => Err(Status::unauthenticated("missing api token in request metadata")),
            Err(Denied::Mismatch) => Err(Status::unauthenticated("authentication error: api token mismatch")),
        }
    }
}

/// Who a request acts for, as `authenticate` found (nobody, had it not run).
fn caller<T>(req: &tonic::Request<T>) -> Caller {
    req.extensions().get::<Caller>().cloned().unwrap_or(Caller::Nobody)
}

/// The one Error → gRPC Status table.
impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = match &e {
            Error::Unavailable { .. } => Code::Unavailable,
            Error::ConditionFailed(_) | Error::FencingRejected(_) => Code::FailedPrecondition,
            Error::NotFound(_) => Code::NotFound,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::TooLarge(_) | Error::Exhausted(_) => Code::ResourceExhausted,
            Error::Timeout(_) => Code::DeadlineExceeded,
            Error::Forbidden(_) => Code::PermissionDenied,
            Error::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                return Status::internal("internal error");
            }
        };
        let mut s = Status::new(code, e.to_string());
        if let Error::Unavailable { leader_hint: Some(h), .. } = &e {
            if let Ok(v) = h.grpc_addr.parse() {
                s.metadata_mut().insert(LEADER_HEADER, v);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::LeaderHint;

    #[test]
    fn every_error_has_one_code() {
        let status = Status::from;
        let hint = Some(LeaderHint { id: 2, grpc_addr: "10.0.0.2:50001".into() });
        let s = status(Error::Unavailable { reason: "x".into(), leader_hint: hint });
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.metadata().get(LEADER_HEADER).unwrap(), "10.0.0.2:50001");
        assert_eq!(status(Error::TooLarge("k".into())).code(), Code::ResourceExhausted);
        assert_eq!(status(Error::invalid("k")).code(), Code::InvalidArgument);
        let internal = status(Error::Internal("secret detail".into()));
        assert_eq!(internal.message(), "internal error");
    }
}
