//! Dapr's state API over the `NodeHandle`: stores, key prefixes, etags, TTL, bulk,
//! transactions and query. Protocol-neutral: `http::dapr` and `grpc::dapr` parse their
//! wire formats into these calls and render the answers.

pub mod error;
pub mod query;

pub use error::{DaprError, StateOp};

use crate::config::{Config, StoreConfig};
use crate::error::Error;
use crate::handle::{BatchDone, Consistency, ListQuery, NodeHandle};
use crate::kv::{Delete, DeleteCondition, DeleteOutcome, Entry, Put, PutCondition, TxnOp};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The metadata key carrying a TTL in seconds.
pub const TTL_KEY: &str = "ttlInSeconds";
/// The response metadata key carrying a key's expiry time.
pub const TTL_EXPIRE_KEY: &str = "ttlExpireTime";
/// Capabilities we advertise, exactly the features served.
pub const CAPABILITIES: [&str; 5] = ["ETAG", "TRANSACTIONAL", "QUERY_API", "TTL", "ACTOR"];
/// The runtime version reported by the metadata endpoints.
pub const RUNTIME_VERSION: &str = concat!("statenode-", env!("CARGO_PKG_VERSION"));
/// The store type reported by the metadata endpoints.
pub const STORE_TYPE: &str = "state.statenode";
/// An etag that can never match: what an unparseable etag becomes.
const NO_SUCH_REVISION: u64 = u64::MAX;

/// Dapr's concurrency option.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Concurrency {
    FirstWrite,
    #[default]
    LastWrite,
}

/// One item to save.
#[derive(Clone, Debug, Default)]
pub struct SaveItem {
    pub key: String,
    pub value: Bytes,
    /// `None` and `Some("")` both mean "no etag".
    pub etag: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub concurrency: Concurrency,
}

/// One key to delete.
#[derive(Clone, Debug, Default)]
pub struct DeleteItem {
    pub key: String,
    pub etag: Option<String>,
    pub concurrency: Concurrency,
}

#[derive(Clone, Debug)]
pub enum TxnItem {
    Upsert(SaveItem),
    Delete(DeleteItem),
}

/// A key as read: `value` is `None` when the key does not exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Got {
    pub key: String,
    pub value: Option<Bytes>,
    /// Empty when the key does not exist.
    pub etag: String,
    /// `ttlExpireTime` when the key has a TTL.
    pub metadata: BTreeMap<String, String>,
}

impl Got {
    fn new(key: String, entry: Option<Entry>) -> Self {
        let Some(e) = entry else {
            return Got { key, value: None, etag: String::new(), metadata: BTreeMap::new() };
        };
        let mut metadata = BTreeMap::new();
        if let Some(t) = e.expires_at_ms {
            metadata.insert(TTL_EXPIRE_KEY.to_string(), rfc3339_seconds(t));
        }
        Got { key, value: Some(e.value), etag: e.revision.to_string(), metadata }
    }
}

/// How a store turns a Dapr key into a stored key.
#[derive(Clone, Debug, PartialEq, Eq)]
enum KeyPrefix {
    None,
    Name,
    AppId,
    /// `<NAMESPACE>.<appId>`, NAMESPACE read at start.
    Namespace(Option<String>),
    Custom(String),
}

#[derive(Clone, Debug)]
struct Store {
    name: String,
    /// Where the store's keys live: empty for the default store, else `0xFF name 0xFF`
    /// (no Dapr key can start with 0xFF: keys are UTF-8), so stores never see each other.
    space: Bytes,
    prefix: KeyPrefix,
}

/// The Dapr state API of one node.
#[derive(Clone)]
pub struct Dapr {
    handle: NodeHandle,
    stores: Arc<[Store]>,
    app_id: Option<Arc<str>>,
    /// Set with `PUT /v1.0/metadata/{key}` or `SetMetadata`; reported in `extended`.
    extended: Arc<Mutex<BTreeMap<String, String>>>,
    /// Queries running now (each reads its whole store): at most `max_queries`.
    queries: Arc<tokio::sync::Semaphore>,
}

/// Most `extended` metadata entries kept.
const MAX_EXTENDED: usize = 256;

/// A store resolved for one request: turns Dapr keys into stored keys and back.
pub struct Scope<'a> {
    /// Acting for the request's caller.
    handle: NodeHandle,
    store: &'a Store,
    /// `<prefix>||` for this request, or empty.
    key_prefix: String,
    queries: Arc<tokio::sync::Semaphore>,
}

impl Dapr {
    pub fn new(handle: NodeHandle, config: &Config) -> Self {
        let stores = config.stores.iter().enumerate().map(|(i, s)| store(i, s)).collect();
        let app_id = config.app_id.as_deref().map(Arc::from);
        let queries = Arc::new(tokio::sync::Semaphore::new(config.limits.max_queries));
        Self { handle, stores, app_id, extended: Arc::default(), queries }
    }

    /// This API, acting for `caller` (`NodeHandle::acting_for`).
    pub fn acting_for(&self, caller: crate::auth::Caller) -> Self {
        Self { handle: self.handle.acting_for(caller), ..self.clone() }
    }

    /// The `extended` metadata, with the runtime version.
    pub fn extended(&self) -> BTreeMap<String, String> {
        let mut ext = self.extended.lock().expect("poisoned").clone();
        ext.insert("daprRuntimeVersion".into(), RUNTIME_VERSION.into());
        ext
    }

    pub fn set_extended(&self, key: String, value: String) -> Result<(), DaprError> {
        if key.len() > 1024 || value.len() > 64 * 1024 {
            return Err(DaprError::malformed("metadata key or value too long"));
        }
        let mut ext = self.extended.lock().expect("poisoned");
        if ext.len() >= MAX_EXTENDED && !ext.contains_key(&key) {
            return Err(DaprError::malformed(format!("too many metadata entries ({MAX_EXTENDED})")));
        }
        ext.insert(key, value);
        Ok(())
    }

    pub fn handle(&self) -> &NodeHandle {
        &self.handle
    }

    /// The app id reported by the metadata endpoints.
    pub fn app_id(&self) -> &str {
        self.app_id.as_deref().unwrap_or("statenode")
    }

    pub fn store_names(&self) -> impl Iterator<Item = &str> {
        self.stores.iter().map(|s| s.name.as_str())
    }

    /// Resolves `name` for a request that named `app_id` (the `dapr-app-id` header).
    pub fn scope(&self, name: &str, app_id: Option<&str>) -> Result<Scope<'_>, DaprError> {
        let store = self.stores.iter().find(|s| s.name == name).ok_or_else(|| DaprError::store_not_found(name))?;
        let app = app_id.filter(|a| !a.is_empty()).or(self.app_id.as_deref()).unwrap_or("");
        let prefix = match &store.prefix {
            KeyPrefix::None => String::new(),
            KeyPrefix::Name => store.name.clone(),
            KeyPrefix::AppId => app.to_string(),
            KeyPrefix::Namespace(Some(ns)) if !app.is_empty() => format!("{ns}.{app}"),
            KeyPrefix::Namespace(_) => app.to_string(),
            KeyPrefix::Custom(p) => p.clone(),
        };
        if prefix.contains("||") {
            return Err(DaprError::illegal_key(name, &prefix));
        }
        let key_prefix = if prefix.is_empty() { prefix } else { format!("{prefix}||") };
        Ok(Scope { handle: self.handle.clone(), store, key_prefix, queries: self.queries.clone() })
    }
}

fn store(index: usize, s: &StoreConfig) -> Store {
    let space = if index == 0 {
        Bytes::new()
    } else {
        let mut b = vec![0xFF];
        b.extend_from_slice(s.name.as_bytes());
        b.push(0xFF);
        b.into()
    };
    let prefix = match s.key_prefix.to_ascii_lowercase().as_str() {
        "none" => KeyPrefix::None,
        "name" => KeyPrefix::Name,
        "appid" => KeyPrefix::AppId,
        "namespace" => KeyPrefix::Namespace(std::env::var("NAMESPACE").ok().filter(|n| !n.is_empty())),
        other => KeyPrefix::Custom(other.to_string()),
    };
    Store { name: s.name.clone(), space, prefix }
}

impl Scope<'_> {
    pub fn name(&self) -> &str {
        &self.store.name
    }

    fn handle(&self) -> &NodeHandle {
        &self.handle
    }

    /// This scope, acting for `caller` (`NodeHandle::acting_for`).
    pub fn acting_for(self, caller: crate::auth::Caller) -> Self {
        Self { handle: self.handle.acting_for(caller), ..self }
    }

    /// The stored key of a Dapr key; rejects empty keys and keys with `||`.
    fn key(&self, key: &str) -> Result<Bytes, DaprError> {
        if key.is_empty() {
            return Err(DaprError::malformed("\"key\" is a required field"));
        }
        if key.contains("||") {
            return Err(DaprError::illegal_key(&self.store.name, key));
        }
        let mut k = Vec::with_capacity(self.store.space.len() + self.key_prefix.len() + key.len());
        k.extend_from_slice(&self.store.space);
        k.extend_from_slice(self.key_prefix.as_bytes());
        k.extend_from_slice(key.as_bytes());
        Ok(k.into())
    }

    /// Where every key of this scope starts.
    fn space(&self) -> Bytes {
        let mut k = self.store.space.to_vec();
        k.extend_from_slice(self.key_prefix.as_bytes());
        k.into()
    }

    fn write_error(&self, op: StateOp, key: &str, e: Error) -> DaprError {
        DaprError::store(op, &self.store.name, key, &e)
    }

    fn put(&self, item: &SaveItem) -> Result<Put, DaprError> {
        let key = self.key(&item.key)?;
        let condition = match etag(&item.etag) {
            Some(rev) => PutCondition::IfRevision(rev),
            None if item.concurrency == Concurrency::FirstWrite => PutCondition::IfRevision(0),
            None => PutCondition::Always,
        };
        let ttl_ms = ttl(&item.metadata, self.handle().limits().max_ttl_ms)
            .map_err(|e| self.write_error(StateOp::Save, &item.key, e))?;
        Ok(Put { key, value: item.value.clone(), ttl_ms, condition, fencing: None, client_ts: None })
    }

    fn delete(&self, item: &DeleteItem) -> Result<Delete, DaprError> {
        let key = self.key(&item.key)?;
        let condition = match etag(&item.etag) {
            Some(rev) => DeleteCondition::IfRevision(rev),
            None => DeleteCondition::Always,
        };
        Ok(Delete { key, condition, fencing: None })
    }

    /// Saves `items`. One item is one write; several are one log entry applied item by
    /// item (Dapr's bulk save: items succeed or fail on their own).
    pub async fn save(&self, items: &[SaveItem]) -> Result<(), DaprError> {
        let op = StateOp::Save;
        match items {
            [] => Ok(()),
            [item] => {
                let put = self.put(item)?;
                let done = self.handle().put(put, None).await.map_err(|e| self.write_error(op, &item.key, e))?;
                if !done.applied {
                    return Err(DaprError::etag_mismatch(op, &self.store.name, &item.key));
                }
                Ok(())
            }
            items => {
                let puts = items.iter().map(|i| self.put(i).map(TxnOp::Put)).collect::<Result<Vec<_>, _>>()?;
                let done = self.handle().batch(puts, None).await.map_err(|e| self.write_error(op, "", e))?;
                self.batch_result(op, items.iter().map(|i| i.key.as_str()), done)
            }
        }
    }

    /// Deletes one key; a missing key without an etag is not an error.
    pub async fn delete_one(&self, item: &DeleteItem) -> Result<(), DaprError> {
        let op = StateOp::Delete;
        let del = self.delete(item)?;
        let done = self.handle().delete(del, None).await.map_err(|e| self.write_error(op, &item.key, e))?;
        if done.outcome == DeleteOutcome::ConditionFailed {
            return Err(DaprError::etag_mismatch(op, &self.store.name, &item.key));
        }
        Ok(())
    }

    /// Deletes several keys, each on its own, in one log entry (gRPC DeleteBulkState).
    pub async fn delete_bulk(&self, items: &[DeleteItem]) -> Result<(), DaprError> {
        if items.is_empty() {
            return Ok(());
        }
        let op = StateOp::BulkDelete;
        let dels = items.iter().map(|i| self.delete(i).map(TxnOp::Delete)).collect::<Result<Vec<_>, _>>()?;
        let done = self.handle().batch(dels, None).await.map_err(|e| self.write_error(op, "", e))?;
        self.batch_result(op, items.iter().map(|i| i.key.as_str()), done)
    }

    /// A bulk write's conflicts: none → ok; else 409 / ABORTED naming the keys.
    fn batch_result<'k>(
        &self,
        op: StateOp,
        keys: impl Iterator<Item = &'k str>,
        done: BatchDone,
    ) -> Result<(), DaprError> {
        let keys: Vec<&str> = keys.collect();
        let failed: Vec<&str> = done.failed.iter().filter_map(|i| keys.get(*i).copied()).collect();
        if failed.is_empty() {
            return Ok(());
        }
        let e = Error::ConditionFailed(format!("etag does not match for keys [{}]", failed.join(", ")));
        Err(self.write_error(op, failed[0], e))
    }

    /// Applies `ops` in order as one all-or-nothing log entry.
    pub async fn transact(&self, ops: &[TxnItem]) -> Result<(), DaprError> {
        let op = StateOp::Transaction;
        if ops.is_empty() {
            return Ok(());
        }
        let max = self.handle().limits().max_batch_ops;
        if ops.len() > max {
            return Err(DaprError::too_many_ops(&self.store.name, ops.len(), max));
        }
        let items = ops
            .iter()
            .map(|o| match o {
                TxnItem::Upsert(s) => self.put(s).map(TxnOp::Put),
                TxnItem::Delete(d) => self.delete(d).map(TxnOp::Delete),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(DaprError::in_transaction)?;
        let done = self.handle().txn(items, None).await.map_err(|e| self.write_error(op, "", e))?;
        if done.succeeded {
            return Ok(());
        }
        let key = done.failed.and_then(|i| ops.get(i as usize)).map_or("", |o| match o {
            TxnItem::Upsert(s) => s.key.as_str(),
            TxnItem::Delete(d) => d.key.as_str(),
        });
        Err(self.write_error(op, key, Error::ConditionFailed(format!("etag does not match key {key}"))))
    }

    pub async fn get(&self, key: &str, c: Consistency) -> Result<Got, DaprError> {
        let stored = self.key(key)?;
        let entry = self.handle().get(&stored, c).await.map_err(|e| self.write_error(StateOp::Get, key, e))?;
        Ok(Got::new(key.to_string(), entry))
    }

    /// Reads every key at one read index, answers in request order.
    pub async fn get_bulk(&self, keys: &[String], c: Consistency) -> Result<Vec<Got>, DaprError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let stored = keys.iter().map(|k| self.key(k)).collect::<Result<Vec<_>, _>>()?;
        let entries =
            self.handle().get_many(&stored, c).await.map_err(|e| self.write_error(StateOp::BulkGet, "", e))?;
        Ok(keys.iter().cloned().zip(entries).map(|(k, e)| Got::new(k, e)).collect())
    }

    /// Every live key of this scope, in key order (for query).
    /// Runs `q` over the store: at most `max_queries` at once on this node (each holds the
    /// store's values it reads), a page within `max_response_bytes`.
    pub async fn query(&self, q: &query::Query, c: Consistency) -> Result<query::Page, DaprError> {
        let name = &self.store.name;
        let limits = self.handle().limits();
        let Ok(_running) = self.queries.try_acquire() else {
            let busy = Error::Exhausted(format!("{} queries are running on this node", limits.max_queries));
            return Err(DaprError::store(StateOp::Query, name, "", &busy));
        };
        let items = self.all(c).await?;
        q.run(items, limits.max_response_bytes).map_err(|e| DaprError::store(StateOp::Query, name, "", &e))
    }

    async fn all(&self, c: Consistency) -> Result<Vec<Got>, DaprError> {
        let space = self.space();
        let mut out = Vec::new();
        let mut after = Bytes::new();
        loop {
            let q = ListQuery { prefix: space.clone(), after: after.clone(), limit: usize::MAX };
            let page = self.handle().list(q, c).await.map_err(|e| DaprError::query_failed(&self.store.name, e))?;
            for (k, e) in page.entries {
                // Keys are UTF-8 when written through Dapr; others (native API) are skipped.
                if let Ok(key) = std::str::from_utf8(&k[space.len()..]) {
                    out.push(Got::new(key.to_string(), Some(e)));
                }
            }
            match page.next_cursor {
                Some(c) => after = c,
                None => return Ok(out),
            }
        }
    }
}

/// An etag as a revision; `None` when absent or empty. Every unparseable etag is a
/// revision no key has, so it fails as a mismatch (Dapr's in-memory store does the same).
fn etag(e: &Option<String>) -> Option<u64> {
    let e = e.as_deref().filter(|e| !e.is_empty())?;
    Some(e.parse::<u64>().ok().filter(|r| *r > 0).unwrap_or(NO_SUCH_REVISION))
}

/// `ttlInSeconds`: -1 (or 0, or absent) = no TTL; otherwise whole seconds.
pub fn ttl(metadata: &BTreeMap<String, String>, max_ms: u64) -> Result<Option<u64>, Error> {
    let Some(v) = metadata.get(TTL_KEY) else {
        return Ok(None);
    };
    let secs: i64 = v.trim().parse().map_err(|_| Error::invalid(format!("invalid value for ttlInSeconds: {v:?}")))?;
    match secs {
        -1 | 0 => Ok(None),
        s if s < -1 || s > i64::from(i32::MAX) => Err(Error::invalid(format!("ttlInSeconds {s} is out of range"))),
        s if (s as u64).saturating_mul(1000) > max_ms => {
            Err(Error::invalid(format!("ttlInSeconds {s} is longer than the limit of {} s", max_ms / 1000)))
        }
        s => Ok(Some(s as u64 * 1000)),
    }
}

/// Unix milliseconds as RFC 3339 UTC with second precision: `2026-11-21T04:30:00Z`.
pub fn rfc3339_seconds(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339_seconds(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_seconds(951_782_400_999), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_seconds(1_795_235_400_000), "2026-11-21T04:30:00Z");
    }

    #[test]
    fn etags_and_ttls() {
        assert_eq!(etag(&None), None);
        assert_eq!(etag(&Some(String::new())), None);
        assert_eq!(etag(&Some("17".into())), Some(17));
        for bad in ["bad-etag", "0", "-1", "1.5", " 3"] {
            assert_eq!(etag(&Some(bad.into())), Some(NO_SUCH_REVISION), "{bad}");
        }
        let md = |v: &str| BTreeMap::from([(TTL_KEY.to_string(), v.to_string())]);
        let max = 10 * 365 * 86_400_000;
        assert_eq!(ttl(&BTreeMap::new(), max), Ok(None));
        assert_eq!(ttl(&md("-1"), max), Ok(None));
        assert_eq!(ttl(&md("2"), max), Ok(Some(2000)));
        for bad in ["foo", "-2", "", "1e3", "99999999999", "2147483647"] {
            assert!(ttl(&md(bad), max).is_err(), "{bad}");
        }
    }
}
