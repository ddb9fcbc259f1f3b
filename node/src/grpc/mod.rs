//! tonic services for clients: Dapr's state methods, native KV and Cluster. Native errors
//! become a Status in one place (`status`); Dapr's in `dapr::DaprError`.

pub mod cluster;
pub mod convert;
pub mod dapr;
pub mod kv;

use crate::error::Error;
use tonic::{Code, Status};

/// Metadata key carrying the leader's client address on UNAVAILABLE.
pub const LEADER_HEADER: &str = "x-statenode-leader";

/// Checks the `dapr-api-token` metadata when a token is configured (every client service).
pub fn token_check(token: Option<String>) -> impl Fn(tonic::Request<()>) -> Result<tonic::Request<()>, Status> + Clone {
    move |req| {
        let Some(want) = &token else {
            return Ok(req);
        };
        match req.metadata().get(crate::http::TOKEN_HEADER) {
            None => Err(Status::unauthenticated("missing api token in request metadata")),
            Some(v) if crate::http::constant_time_eq(v.as_bytes(), want.as_bytes()) => Ok(req),
            Some(_) => Err(Status::unauthenticated("authentication error: api token mismatch")),
        }
    }
}

/// The one Error → gRPC Status table.
pub fn status(e: Error) -> Status {
    let code = match &e {
        Error::Unavailable { .. } => Code::Unavailable,
        Error::ConditionFailed(_) | Error::FencingRejected(_) => Code::FailedPrecondition,
        Error::NotFound(_) => Code::NotFound,
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::TooLarge(_) => Code::ResourceExhausted,
        Error::Timeout(_) => Code::DeadlineExceeded,
        Error::Unauthorized => Code::Unauthenticated,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::LeaderHint;

    #[test]
    fn every_error_has_one_code() {
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
