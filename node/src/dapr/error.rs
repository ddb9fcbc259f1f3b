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
    /// The state operation that failed, when one did (a transaction reports its items'
    /// save and delete errors as its own).
    pub op: Option<StateOp>,
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

impl StateOp {
    /// The legacy error code of a failure during this operation.
    fn code(self) -> &'static str {
        match self {
            StateOp::Save => "ERR_STATE_SAVE",
            StateOp::Get => "ERR_STATE_GET",
            StateOp::BulkGet => "ERR_STATE_BULK_GET",
            StateOp::Delete => "ERR_STATE_DELETE",
            StateOp::BulkDelete => "ERR_STATE_BULK_DELETE",
            StateOp::Transaction => "ERR_STATE_TRANSACTION",
            StateOp::Query => "ERR_STATE_QUERY",
        }
    }
}

impl DaprError {
    fn new(http: u16, grpc: Code, code: &'static str, message: impl Into<String>) -> Self {
        Self { http, grpc, code, message: message.into(), reason: None, resource: None, field: None, op: None }
    }

    /// A failure of `op` detected before the store was asked.
    fn of(op: StateOp, http: u16, grpc: Code, message: impl Into<String>) -> Self {
        Self { op: Some(op), ..Self::new(http, grpc, op.code(), message) }
    }

    /// A save or delete without a key (gRPC; the HTTP door words it as a malformed body).
    pub fn empty_key(op: StateOp) -> Self {
        let e = Self::of(op, 400, Code::InvalidArgument, "state key cannot be empty");
        Self { reason: Some(e.code), ..e }
    }

    /// A gRPC save with `contentType: application/json` whose value is not JSON.
    pub fn not_json(detail: impl std::fmt::Display) -> Self {
        Self::of(StateOp::Save, 400, Code::InvalidArgument, format!("value is not JSON: {detail}"))
    }

    /// A concurrency option daprd does not know.
    pub fn bad_concurrency(op: StateOp, store: &str, given: &str) -> Self {
        let message = format!("failed saving state in state store {store}: unrecognized concurrency model '{given}'");
        Self::of(op, 500, Code::Internal, message)
    }

    /// A request body over the size limit.
    pub fn body_too_large(detail: impl Into<String>) -> Self {
        Self::new(413, Code::ResourceExhausted, "ERR_MALFORMED_REQUEST", detail)
    }

    /// Any other path: daprd hands it to service invocation, which needs an app id.
    pub fn no_route() -> Self {
        let message = "failed getting app id either from the URL path or the header dapr-app-id";
        Self::new(404, Code::NotFound, "ERR_DIRECT_INVOKE", message)
    }

    /// `healthz?appid=` naming another app.
    pub fn app_id_mismatch() -> Self {
        Self::new(500, Code::FailedPrecondition, "ERR_HEALTH_APPID_NOT_MATCH", "dapr app-id does not match")
    }

    /// `healthz/outbound` while this node knows no leader.
    pub fn outbound_not_ready() -> Self {
        Self::new(500, Code::Unavailable, "ERR_OUTBOUND_HEALTH_NOT_READY", "dapr outbound is not ready")
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

    /// A save or delete error met while building a transaction: Dapr reports it as the
    /// transaction's failure (500 / INTERNAL).
    pub fn in_transaction(mut self) -> Self {
        if matches!(self.op, Some(StateOp::Save | StateOp::Delete)) {
            self.op = Some(StateOp::Transaction);
            self.code = StateOp::Transaction.code();
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
        let message = match op {
            StateOp::Save => format!("failed saving state in state store {store}: {detail}"),
            StateOp::Get => format!("fail to get {key} from state store {store}: {detail}"),
            StateOp::BulkGet => detail,
            StateOp::Delete => format!("failed deleting state with key {key}: {detail}"),
            StateOp::BulkDelete => format!("failed deleting state in state store {store}: {detail}"),
            StateOp::Transaction => format!("error while executing state transaction: {detail}"),
            StateOp::Query => format!("state store {store} query failed: {detail}"),
        };
        let conflict = matches!(err, Error::ConditionFailed(_) | Error::FencingRejected(_));
        let (http, grpc) = match err {
            Error::Unavailable { .. } => (503, Code::Unavailable),
            Error::Timeout(_) => (504, Code::DeadlineExceeded),
            Error::Forbidden(_) => (403, Code::PermissionDenied),
            // Dapr reports every transaction failure, etag conflicts too, as internal.
            _ if op == StateOp::Transaction => (500, Code::Internal),
            _ if conflict => (409, Code::Aborted),
            Error::InvalidArgument(_) | Error::NotFound(_) => (400, Code::InvalidArgument),
            Error::TooLarge(_) => (413, Code::ResourceExhausted),
            Error::Exhausted(_) => (429, Code::ResourceExhausted),
            _ => (500, Code::Internal),
        };
        let mut e = Self::of(op, http, grpc, message);
        if op != StateOp::BulkGet {
            e.reason = Some(e.code);
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
    fn status(&self) -> tonic::Status {
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

impl From<DaprError> for tonic::Status {
    fn from(e: DaprError) -> tonic::Status {
        e.status()
    }
}
