//! The native `statenode.v1.KV` service.

use super::convert;
use crate::handle::{ListQuery, NodeHandle, WatchItem};
use crate::kv::{DeleteOutcome, EventKind};
use statenode_proto::v1 as pb;
use statenode_proto::v1::kv_server::Kv;
use std::pin::Pin;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

pub struct KvService {
    pub handle: NodeHandle,
}

type Reply<T> = Result<Response<T>, Status>;

impl KvService {
    /// The handle acting for the request's caller, and the request.
    fn acting<T>(&self, req: Request<T>) -> (NodeHandle, T) {
        (self.handle.acting_for(super::caller(&req)), req.into_inner())
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn get(&self, req: Request<pb::GetRequest>) -> Reply<pb::GetResponse> {
        let (handle, req) = self.acting(req);
        let entry = handle.get(&req.key, convert::consistency(req.consistency)?).await?;
        let kv = entry.map(|e| convert::key_value(req.key, &e, true));
        Ok(Response::new(pb::GetResponse { kv }))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Reply<pb::PutResponse> {
        let (handle, req) = self.acting(req);
        let (client, key) = (convert::client(req.client), req.key.clone());
        let done = handle.put(convert::put(req)?, client).await?;
        let kv = done.meta.map(|m| convert::meta_kv(key, &m));
        Ok(Response::new(pb::PutResponse { applied: done.applied, kv, revision: done.revision }))
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Reply<pb::DeleteResponse> {
        let (handle, req) = self.acting(req);
        let client = convert::client(req.client);
        let done = handle.delete(convert::delete(req)?, client).await?;
        let outcome = match done.outcome {
            DeleteOutcome::Deleted => pb::DeleteOutcome::Deleted,
            DeleteOutcome::NotFound => pb::DeleteOutcome::NotFound,
            DeleteOutcome::ConditionFailed => pb::DeleteOutcome::ConditionFailed,
        };
        Ok(Response::new(pb::DeleteResponse { outcome: outcome as i32, revision: done.revision }))
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Reply<pb::TxnResponse> {
        let (handle, req) = self.acting(req);
        let ops = req.ops.into_iter().map(convert::txn_op).collect::<Result<Vec<_>, _>>()?;
        let done = handle.txn(ops, convert::client(req.client)).await?;
        let failed_index = done.failed.unwrap_or(0);
        Ok(Response::new(pb::TxnResponse { succeeded: done.succeeded, failed_index, revision: done.revision }))
    }

    async fn list(&self, req: Request<pb::ListRequest>) -> Reply<pb::ListResponse> {
        let (handle, req) = self.acting(req);
        let c = convert::consistency(req.consistency)?;
        let q = ListQuery { prefix: req.prefix, after: req.cursor, limit: req.limit as usize };
        let page = handle.list(q, c).await?;
        let kvs = page.entries.into_iter().map(|(k, e)| convert::key_value(k, &e, !req.keys_only)).collect();
        let next_cursor = page.next_cursor.unwrap_or_default();
        Ok(Response::new(pb::ListResponse { kvs, next_cursor, revision: page.revision }))
    }

    type WatchStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Reply<Self::WatchStream> {
        let (handle, req) = self.acting(req);
        let from = (req.from_revision > 0).then_some(req.from_revision);
        let mut events = handle.watch(req.prefix, from)?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            while let Some(item) = events.next().await {
                if tx.send(Ok(watch_event(item))).await.is_err() {
                    return; // the client went away
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn watch_event(item: WatchItem) -> pb::WatchEvent {
    match item {
        WatchItem::Resync { next } => {
            pb::WatchEvent { r#type: pb::EventType::Resync as i32, revision: next, ..Default::default() }
        }
        WatchItem::Event(e) => pb::WatchEvent {
            r#type: match e.kind {
                EventKind::Put => pb::EventType::Put as i32,
                EventKind::Delete => pb::EventType::Delete as i32,
            },
            revision: e.revision,
            key: e.key.clone(),
            value: e.value.clone(),
            version: e.version.to_string(),
            expired: e.expired,
        },
    }
}
