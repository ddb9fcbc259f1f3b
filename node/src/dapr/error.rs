//! Dapr's errors: the error code, HTTP status, gRPC code and rich details of every failure,
//! decided once here for both front doors.

use crate::error::Error;
use tonic::Code;

/// One Dapr API failure, as both front doors report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaprError {
    /// HTTP status.
    pub http: u16,
    pub grpc: Code,
    /// The legacy `errorCode` (`ERR_…`).
    pub code: &'static str,
    pub message: String,
    /// The `google.rpc.ErrorInfo` reason, for errors Dapr reports with rich details.
    pub reason: Option<&'static str>,
    /// The store named in a `google.rpc.ResourceInfo`.
    pub resource: Option<String>,
    /// The field named in a `google.rpc.BadRequest`.
    pub field: Option<String>,
}

/// The state operation an error came from: it picks the error code and message prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateOp {
    Save,
    Get,
    BulkGet,
    Delete,
    BulkDelete,
    Transaction,
    Query,
}

impl DaprError {
    pub fn new(http: u16, grpc: Code, code: &'static str, message: impl Into<String>) -> Self {
        Self { http, grpc, code, message: message.into(), reason: None, resource: None, field: None }
    }

    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(400, Code::InvalidArgument, "ERR_MALFORMED_REQUEST", message)
    }

    pub fn store_not_found(store: &str) -> Self {
        let mut e = Self::new(400, Code::InvalidArgument, "ERR_STATE_STORE_NOT_FOUND", "");
        e.message = format!("state store {store} is not found");
        e.reason = Some("DAPR_STATE_NOT_FOUND");
        e.resource = Some(store.to_string());
        e
    }

    pub fn illegal_key(store: &str, key: &str) -> Self {
        let mut e = Self::malformed(format!("input key/keyPrefix '{key}' can't contain '||'"));
        e.reason = Some("DAPR_STATE_ILLEGAL_KEY");
        e.resource = Some(store.to_string());
        e.field = Some(key.to_string());
        e
    }

    pub fn too_many_ops(store: &str, n: usize, max: usize) -> Self {
        let mut e = Self::new(
            400,
            Code::InvalidArgument,
            "ERR_STATE_STORE_TOO_MANY_TRANSACTIONS",
            format!("the transaction contains {n} operations, which is more than what the state store supports: {max}"),
        );
        e.reason = Some("DAPR_STATE_TOO_MANY_TRANSACTIONS");
        e.resource = Some(store.to_string());
        e
    }

    pub fn unsupported_operation(op: &str) -> Self {
        let mut e = Self::new(
            400,
            Code::Unimplemented,
            "ERR_NOT_SUPPORTED_STATE_OPERATION",
            format!("operation type {op} not supported"),
        );
        e.reason = Some("ERR_NOT_SUPPORTED_STATE_OPERATION");
        e
    }

    pub fn query_failed(store: &str, detail: impl std::fmt::Display) -> Self {
        let mut e =
            Self::new(500, Code::Internal, "ERR_STATE_QUERY", format!("state store {store} query failed: {detail}"));
        e.reason = Some("DAPR_STATE_QUERY_FAILED");
        e.resource = Some(store.to_string());
        e
    }

    pub fn unauthorized(message: &str) -> Self {
        Self::new(401, Code::Unauthenticated, "ERR_API_TOKEN", message)
    }

    /// A save or delete error met while building a transaction: Dapr reports it as the
    /// transaction's failure (500 / INTERNAL).
    pub fn in_transaction(mut self) -> Self {
        if matches!(self.code, "ERR_STATE_SAVE" | "ERR_STATE_DELETE") {
            self.code = "ERR_STATE_TRANSACTION";
            self.http = 500;
            self.grpc = Code::Internal;
        }
        self
    }

    /// An etag that does not match (or names no existing version of the key).
    pub fn etag_mismatch(op: StateOp, store: &str, key: &str) -> Self {
        Self::store(op, store, key, &Error::ConditionFailed(format!("etag does not match key {key}")))
    }

    /// A store failure during `op`: status and code follow Dapr's runtime; failures that
    /// say "retry" (no leader, timed out) keep gRPC's retryable codes.
    pub fn store(op: StateOp, store: &str, key: &str, err: &Error) -> Self {
        let detail = match err {
            Error::ConditionFailed(d) | Error::FencingRejected(d) => {
                format!("possible etag mismatch. error from state store: {d}")
            }
            Error::Internal(d) => {
                tracing::error!(detail = %d, "internal error");
                "internal error".to_string()
            }
            other => other.to_string(),
        };
        let (code, message) = match op {
            StateOp::Save => ("ERR_STATE_SAVE", format!("failed saving state in state store {store}: {detail}")),
            StateOp::Get => ("ERR_STATE_GET", format!("fail to get {key} from state store {store}: {detail}")),
            StateOp::BulkGet => ("ERR_STATE_BULK_GET", detail),
            StateOp::Delete => ("ERR_STATE_DELETE", format!("failed deleting state with key {key}: {detail}")),
            StateOp::BulkDelete => {
                ("ERR_STATE_BULK_DELETE", format!("failed deleting state in state store {store}: {detail}"))
            }
            StateOp::Transaction => {
                ("ERR_STATE_TRANSACTION", format!("error while executing state transaction: {detail}"))
            }
            StateOp::Query => ("ERR_STATE_QUERY", format!("state store {store} query failed: {detail}")),
        };
        let conflict = matches!(err, Error::ConditionFailed(_) | Error::FencingRejected(_));
        let (http, grpc) = match err {
            Error::Unavailable { .. } => (503, Code::Unavailable),
            Error::Timeout(_) => (504, Code::DeadlineExceeded),
            // Dapr reports every transaction failure, etag conflicts too, as internal.
            _ if op == StateOp::Transaction => (500, Code::Internal),
            _ if conflict => (409, Code::Aborted),
            Error::InvalidArgument(_) | Error::NotFound(_) => (400, Code::InvalidArgument),
            Error::TooLarge(_) => (413, Code::ResourceExhausted),
            Error::Unauthorized => (401, Code::Unauthenticated),
            _ => (500, Code::Internal),
        };
        let mut e = Self::new(http, grpc, code, message);
        if op != StateOp::BulkGet {
            e.reason = Some(code);
        }
        e
    }

    /// The JSON error body: legacy `{errorCode, message}`, plus `details` for rich errors.
    pub fn body(&self) -> serde_json::Value {
        let mut body = serde_json::json!({ "errorCode": self.code, "message": self.message });
        if let Some(reason) = self.reason.filter(|_| self.resource.is_some() || self.field.is_some()) {
            let mut details = Vec::new();
            if let Some(field) = &self.field {
                details.push(serde_json::json!({
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "field_violations": [{ "field": field, "description": self.message }],
                }));
            }
            if let Some(store) = &self.resource {
                details.push(serde_json::json!({
                    "@type": "type.googleapis.com/google.rpc.ResourceInfo",
                    "description": "", "owner": "", "resource_name": store, "resource_type": "state",
                }));
            }
            details.push(serde_json::json!({
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "domain": "dapr.io", "metadata": null, "reason": reason,
            }));
            body["details"] = serde_json::Value::Array(details);
        }
        body
    }

    /// The gRPC status, with `google.rpc` details in `grpc-status-details-bin` when Dapr
    /// sends them (the Python SDK reads the ErrorInfo reason as the error code).
    pub fn status(&self) -> tonic::Status {
        use prost::Message;
        use statenode_proto::google::rpc;
        let Some(reason) = self.reason else {
            return tonic::Status::new(self.grpc, self.message.clone());
        };
        let any = |name: &str, value: Vec<u8>| rpc::Detail {
            type_url: format!("type.googleapis.com/google.rpc.{name}"),
            value: value.into(),
        };
        let mut details = Vec::new();
        if let Some(field) = &self.field {
            let v = rpc::bad_request::FieldViolation { field: field.clone(), description: self.message.clone() };
            details.push(any("BadRequest", rpc::BadRequest { field_violations: vec![v] }.encode_to_vec()));
        }
        if let Some(store) = &self.resource {
            let info =
                rpc::ResourceInfo { resource_type: "state".into(), resource_name: store.clone(), ..Default::default() };
            details.push(any("ResourceInfo", info.encode_to_vec()));
        }
        let info = rpc::ErrorInfo { reason: reason.into(), domain: "dapr.io".into(), metadata: Default::default() };
        details.push(any("ErrorInfo", info.encode_to_vec()));
        let status = rpc::Status { code: self.grpc as i32, message: self.message.clone(), details };
        tonic::Status::with_details(self.grpc, self.message.clone(), status.encode_to_vec().into())
    }
}
