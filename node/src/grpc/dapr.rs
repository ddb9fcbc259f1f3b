//! Dapr's runtime gRPC state methods (`dapr.proto.runtime.v1.Dapr`). tonic answers
//! UNIMPLEMENTED for every method the service does not declare.

use crate::dapr::query::Query;
use crate::dapr::{
    Concurrency, Dapr, DaprError, DeleteItem, SaveItem, Scope, StateOp, TxnItem, CAPABILITIES, RUNTIME_VERSION,
    STORE_TYPE,
};
use crate::handle::Consistency;
use bytes::Bytes;
use statenode_proto::dapr::proto::common::v1 as common;
use statenode_proto::dapr::proto::runtime::v1 as rt;
use statenode_proto::dapr::proto::runtime::v1::dapr_server::Dapr as DaprApi;
use statenode_proto::headers::APP_ID;
use std::future::Future;
use tonic::{Request, Response, Status};

pub struct DaprService {
    pub dapr: Dapr,
}

type Reply<T> = Result<Response<T>, Status>;

fn consistency(c: i32) -> Consistency {
    match common::state_options::StateConsistency::try_from(c) {
        Ok(common::state_options::StateConsistency::ConsistencyEventual) => Consistency::Stale,
        _ => Consistency::Linearizable,
    }
}

fn concurrency(o: &Option<common::StateOptions>) -> Concurrency {
    match o.as_ref().map(|o| common::state_options::StateConcurrency::try_from(o.concurrency)) {
        Some(Ok(common::state_options::StateConcurrency::ConcurrencyFirstWrite)) => Concurrency::FirstWrite,
        _ => Concurrency::LastWrite,
    }
}

/// gRPC reports an empty key as Dapr's runtime does.
fn require_key(key: &str, op: StateOp) -> Result<(), DaprError> {
    if key.is_empty() {
        return Err(DaprError::empty_key(op));
    }
    Ok(())
}

/// A save item: values are raw bytes, except `contentType: application/json`, which Dapr
/// re-encodes as normalised JSON.
fn save_item(s: common::StateItem, normalise_json: bool) -> Result<SaveItem, DaprError> {
    require_key(&s.key, StateOp::Save)?;
    let mut value = s.value;
    if normalise_json && s.metadata.get("contentType").is_some_and(|c| c == "application/json") {
        let v: serde_json::Value = serde_json::from_slice(&value).map_err(DaprError::not_json)?;
        value = Bytes::from(serde_json::to_vec(&v).expect("json value"));
    }
    Ok(SaveItem {
        concurrency: concurrency(&s.options),
        key: s.key,
        value,
        etag: s.etag.map(|e| e.value),
        metadata: s.metadata.into_iter().collect(),
    })
}

fn delete_item(s: common::StateItem) -> Result<DeleteItem, DaprError> {
    require_key(&s.key, StateOp::Delete)?;
    Ok(DeleteItem { concurrency: concurrency(&s.options), key: s.key, etag: s.etag.map(|e| e.value) })
}

/// A request that names a state store.
trait StoreRequest: Send + 'static {
    fn store_name(&self) -> &str;
}

macro_rules! store_requests {
    ($($t:ty),*) => { $(impl StoreRequest for $t { fn store_name(&self) -> &str { &self.store_name } })* };
}

store_requests!(
    rt::GetStateRequest,
    rt::GetBulkStateRequest,
    rt::SaveStateRequest,
    rt::QueryStateRequest,
    rt::DeleteStateRequest,
    rt::DeleteBulkStateRequest,
    rt::ExecuteStateTransactionRequest
);

impl DaprService {
    /// Every state method: resolves the store the request names (for its `dapr-app-id`),
    /// then runs `f`; a `DaprError` becomes its status, with Dapr's details.
    async fn call<'s, R, T, Fut>(&'s self, req: Request<R>, f: impl FnOnce(Scope<'s>, R) -> Fut) -> Reply<T>
    where
        R: StoreRequest,
        Fut: Future<Output = Result<T, DaprError>> + Send + 's,
    {
        let app = req.metadata().get(APP_ID).and_then(|v| v.to_str().ok()).map(str::to_string);
        let caller = super::caller(&req);
        let r = req.into_inner();
        let scope = self.dapr.scope(r.store_name(), app.as_deref())?.acting_for(caller);
        Ok(Response::new(f(scope, r).await?))
    }
}

#[tonic::async_trait]
impl DaprApi for DaprService {
    async fn get_state(&self, req: Request<rt::GetStateRequest>) -> Reply<rt::GetStateResponse> {
        self.call(req, |scope, r| async move {
            if r.key.is_empty() {
                return Err(DaprError::malformed("state key cannot be empty"));
            }
            let got = scope.get(&r.key, consistency(r.consistency)).await?;
            Ok(rt::GetStateResponse {
                data: got.value.unwrap_or_default(),
                etag: got.etag,
                metadata: got.metadata.into_iter().collect(),
            })
        })
        .await
    }

    async fn get_bulk_state(&self, req: Request<rt::GetBulkStateRequest>) -> Reply<rt::GetBulkStateResponse> {
        self.call(req, |scope, r| async move {
            let got = scope.get_bulk(&r.keys, Consistency::Linearizable).await?;
            let items = got
                .into_iter()
                .map(|g| rt::BulkStateItem {
                    key: g.key,
                    data: g.value.unwrap_or_default(),
                    etag: g.etag,
                    error: String::new(),
                    metadata: g.metadata.into_iter().collect(),
                })
                .collect();
            Ok(rt::GetBulkStateResponse { items })
        })
        .await
    }

    async fn save_state(&self, req: Request<rt::SaveStateRequest>) -> Reply<()> {
        self.call(req, |scope, r| async move {
            let items = r.states.into_iter().map(|s| save_item(s, true)).collect::<Result<Vec<_>, _>>()?;
            scope.save(&items).await
        })
        .await
    }

    async fn query_state_alpha1(&self, req: Request<rt::QueryStateRequest>) -> Reply<rt::QueryStateResponse> {
        self.call(req, |scope, r| async move {
            let q = Query::parse(r.query.as_bytes()).map_err(|e| DaprError::query_failed(scope.name(), e))?;
            let page = scope.query(&q, Consistency::Linearizable).await?;
            let results = page
                .results
                .into_iter()
                .map(|g| rt::QueryStateItem {
                    key: g.key,
                    data: g.value.unwrap_or_default(),
                    etag: g.etag,
                    error: String::new(),
                })
                .collect();
            Ok(rt::QueryStateResponse { results, token: page.token.unwrap_or_default(), metadata: Default::default() })
        })
        .await
    }

    async fn delete_state(&self, req: Request<rt::DeleteStateRequest>) -> Reply<()> {
        self.call(req, |scope, r| async move {
            require_key(&r.key, StateOp::Delete)?;
            let item = DeleteItem { concurrency: concurrency(&r.options), key: r.key, etag: r.etag.map(|e| e.value) };
            scope.delete_one(&item).await
        })
        .await
    }

    async fn delete_bulk_state(&self, req: Request<rt::DeleteBulkStateRequest>) -> Reply<()> {
        self.call(req, |scope, r| async move {
            let items = r.states.into_iter().map(delete_item).collect::<Result<Vec<_>, _>>()?;
            scope.delete_bulk(&items).await
        })
        .await
    }

    async fn execute_state_transaction(&self, req: Request<rt::ExecuteStateTransactionRequest>) -> Reply<()> {
        self.call(req, |scope, r| async move {
            let mut ops = Vec::with_capacity(r.operations.len());
            for op in r.operations {
                let item = op.request.unwrap_or_default();
                ops.push(match op.operation_type.as_str() {
                    // Transaction upserts pass raw bytes, as in Dapr.
                    "upsert" => TxnItem::Upsert(save_item(item, false).map_err(DaprError::in_transaction)?),
                    "delete" => TxnItem::Delete(delete_item(item).map_err(DaprError::in_transaction)?),
                    other => return Err(DaprError::unsupported_operation(other)),
                });
            }
            scope.transact(&ops).await
        })
        .await
    }

    async fn get_metadata(&self, _: Request<rt::GetMetadataRequest>) -> Reply<rt::GetMetadataResponse> {
        let registered_components = self
            .dapr
            .store_names()
            .map(|n| rt::RegisteredComponents {
                name: n.to_string(),
                r#type: STORE_TYPE.into(),
                version: "v1".into(),
                capabilities: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            })
            .collect();
        Ok(Response::new(rt::GetMetadataResponse {
            id: self.dapr.app_id().to_string(),
            registered_components,
            extended_metadata: self.dapr.extended().into_iter().collect(),
            runtime_version: RUNTIME_VERSION.into(),
            enabled_features: Vec::new(),
        }))
    }

    async fn set_metadata(&self, req: Request<rt::SetMetadataRequest>) -> Reply<()> {
        let r = req.into_inner();
        self.dapr.set_extended(r.key, r.value)?;
        Ok(Response::new(()))
    }
}
