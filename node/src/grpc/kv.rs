//! The native `statenode.v1.KV` service.

use super::convert;
use super::status;
use crate::error::Error;
use crate::handle::{ListQuery, NodeHandle, WatchItem};
use crate::kv::{Command, DeleteOutcome, Op, OpResult, Outcome};
use statenode_proto::v1 as pb;
use statenode_proto::v1::kv_server::Kv;
use std::pin::Pin;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

pub struct KvService {
    pub handle: NodeHandle,
}

type Reply<T> = Result<Response<T>, Status>;

fn single(outcome: Outcome) -> Result<OpResult, Error> {
    match outcome {
        Outcome::Op(r) => {
            convert::rejection(&r)?;
            Ok(r)
        }
        other => Err(Error::internal(format!("unexpected outcome {other:?}"))),
    }
}

impl KvService {
    async fn put(&self, req: pb::PutRequest) -> Result<pb::PutResponse, Error> {
        let client = convert::client(req.client);
        let key = req.key.clone();
        let op = Op::Put(convert::put(req)?);
        let r = self.handle.write(Command { client, now_ms: 0, op }).await?;
        let OpResult::Put { applied, meta } = single(r.outcome)? else {
            return Err(Error::internal("put answered with another op"));
        };
        let kv = meta.map(|m| convert::meta_kv(key, &m));
        Ok(pb::PutResponse { applied, kv, revision: r.revision })
    }

    async fn delete(&self, req: pb::DeleteRequest) -> Result<pb::DeleteResponse, Error> {
        let client = convert::client(req.client);
        let op = Op::Delete(convert::delete(req)?);
        let r = self.handle.write(Command { client, now_ms: 0, op }).await?;
        let OpResult::Delete(outcome) = single(r.outcome)? else {
            return Err(Error::internal("delete answered with another op"));
        };
        let outcome = match outcome {
            DeleteOutcome::Deleted => pb::DeleteOutcome::Deleted,
            DeleteOutcome::NotFound => pb::DeleteOutcome::NotFound,
            DeleteOutcome::ConditionFailed => pb::DeleteOutcome::ConditionFailed,
        };
        Ok(pb::DeleteResponse { outcome: outcome as i32, revision: r.revision })
    }

    async fn txn(&self, req: pb::TxnRequest) -> Result<pb::TxnResponse, Error> {
        let client = convert::client(req.client);
        let ops = req.ops.into_iter().map(convert::txn_op).collect::<Result<Vec<_>, _>>()?;
        let r = self.handle.write(Command { client, now_ms: 0, op: Op::Txn(ops) }).await?;
        let Outcome::Txn { succeeded, failed, results } = r.outcome else {
            return Err(Error::internal("txn answered with another outcome"));
        };
        for res in &results {
            convert::rejection(res)?;
        }
        Ok(pb::TxnResponse { succeeded, failed_index: failed.unwrap_or(0), revision: r.revision })
    }

    async fn list(&self, req: pb::ListRequest) -> Result<pb::ListResponse, Error> {
        let c = convert::consistency(req.consistency)?;
        let q = ListQuery { prefix: req.prefix, after: req.cursor, limit: req.limit as usize };
        let page = self.handle.list(q, c).await?;
        let kvs = page.entries.into_iter().map(|(k, e)| convert::key_value(k, &e, !req.keys_only)).collect();
        Ok(pb::ListResponse { kvs, next_cursor: page.next_cursor.unwrap_or_default(), revision: page.revision })
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn get(&self, req: Request<pb::GetRequest>) -> Reply<pb::GetResponse> {
        let req = req.into_inner();
        let c = convert::consistency(req.consistency).map_err(status)?;
        let entry = self.handle.read(&req.key, c).await.map_err(status)?;
        let kv = entry.map(|e| convert::key_value(req.key, &e, true));
        Ok(Response::new(pb::GetResponse { kv }))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Reply<pb::PutResponse> {
        self.put(req.into_inner()).await.map(Response::new).map_err(status)
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Reply<pb::DeleteResponse> {
        self.delete(req.into_inner()).await.map(Response::new).map_err(status)
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Reply<pb::TxnResponse> {
        self.txn(req.into_inner()).await.map(Response::new).map_err(status)
    }

    async fn list(&self, req: Request<pb::ListRequest>) -> Reply<pb::ListResponse> {
        self.list(req.into_inner()).await.map(Response::new).map_err(status)
    }

    type WatchStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Reply<Self::WatchStream> {
        let req = req.into_inner();
        self.handle.limits().check_request(req.prefix.len()).map_err(status)?;
        let from = (req.from_revision > 0).then_some(req.from_revision);
        let mut events = self.handle.watch(req.prefix, from);
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
                crate::kv::EventKind::Put => pb::EventType::Put as i32,
                crate::kv::EventKind::Delete => pb::EventType::Delete as i32,
            },
            revision: e.revision,
            key: e.key.clone(),
            value: e.value.clone(),
            version: e.version.to_string(),
            expired: e.expired,
        },
    }
}
