//! The MQTT v5 front door: a broker for the clients connected to this node, with the AIO
//! state store as a built-in service on its request topic (docs/mqtt.md, ADR 0006).
//!
//! `codec.rs` turns bytes into packets; `conn.rs` runs one connection on packets only;
//! `Broker` (here) keeps the sessions, subscriptions, retained messages and KEYNOTIFY
//! registrations of this node and routes messages between them; `statestore.rs` serves the
//! state store's commands through `NodeHandle`; `notify.rs` turns the applied log into key
//! notifications; `replica.rs` keeps each session's record in the replicated state, so a
//! client resumes its session on any node.

pub mod codec;
mod conn;
mod notify;
mod relay;
mod replica;
pub mod resp3;
pub mod statestore;
pub mod topic;

use crate::auth::rules::{Access, Policy, Principal};
use crate::config::Limits;
use crate::handle::NodeHandle;
use crate::io::Incoming;
use crate::kv::{ClientRef, Hlc, SessionRecord, SubRecord};
use bytes::Bytes;
use mqtt_proto::v5::PublishProperties;
use mqtt_proto::{QoS, TopicName};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

/// How the broker reaches the connection serving a session.
#[derive(Default)]
pub struct Signals {
    /// Messages are waiting in the session's queue.
    pub ready: Notify,
    /// Another connection took the session over.
    pub taken_over: std::sync::atomic::AtomicBool,
}

/// Most subscriptions, KEYNOTIFY registrations and cached replies one session may hold.
pub const MAX_SUBSCRIPTIONS: usize = 256;
pub const MAX_OBSERVED: usize = 4096;
const MAX_REPLIES: usize = 1024;
/// Most retained messages per node.
const MAX_RETAINED: usize = 10_000;
/// Longest Session Expiry Interval granted (a week), so sessions cannot pin the quota forever.
pub const MAX_SESSION_EXPIRY: u32 = 7 * 24 * 3600;

/// An application message as the broker routes it.
#[derive(Clone, Debug)]
pub struct Message {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: PublishProperties,
    /// When it arrived: its Message Expiry Interval counts from here.
    pub received: Instant,
}

/// A client's PUBLISH as the broker routes it, received now.
impl From<mqtt_proto::v5::Publish> for Message {
    fn from(p: mqtt_proto::v5::Publish) -> Self {
        Message {
            topic: p.topic_name,
            payload: p.payload,
            qos: p.qos_pid.qos(),
            retain: p.retain,
            properties: p.properties,
            received: Instant::now(),
        }
    }
}

impl Message {
    /// The expiry interval left, `None` when it has none; `Some(0)` when it ran out.
    fn expiry_left(&self) -> Option<u32> {
        let total = self.properties.message_expiry_interval?;
        Some(total.saturating_sub(self.received.elapsed().as_secs() as u32))
    }
}

/// One subscription of a session.
#[derive(Clone, Debug)]
struct Sub {
    filter: String,
    qos: QoS,
    /// Not sent messages this very client published.
    no_local: bool,
}

impl Sub {
    fn record(&self) -> SubRecord {
        SubRecord { filter: self.filter.clone(), qos: self.qos as u8, no_local: self.no_local }
    }

    fn from_record(r: &SubRecord) -> Self {
        let qos = if r.qos == 0 { QoS::Level0 } else { QoS::Level1 };
        Sub { filter: r.filter.clone(), qos, no_local: r.no_local }
    }
}

/// A client's session on this node.
struct Session {
    subs: Vec<Sub>,
    /// Session Expiry Interval, seconds: how long the session outlives its connection.
    expiry: u32,
    /// The connection serving it, when connected: its id and how to wake it.
    conn: Option<(u64, Arc<Signals>)>,
    /// Messages waiting for the connection to take them (it takes QoS 1 ones as the
    /// client's Receive Maximum allows), or for the client to come back (QoS 1 only).
    queue: VecDeque<Message>,
    offline_since: Option<Instant>,
    /// Keys this client observes (KEYNOTIFY).
    observed: BTreeSet<Bytes>,
    /// State store replies by correlation data, kept until the request expires: a
    /// repeated request is answered from here, not executed again.
    replies: HashMap<Bytes, (Instant, Message)>,
    /// The last change saved to the session's record (`replica.rs`).
    gen: u64,
    /// The record's dedup client id for state store writes.
    dedup_id: u64,
}

impl Session {
    fn new(expiry: u32) -> Self {
        Session {
            subs: Vec::new(),
            expiry,
            conn: None,
            queue: VecDeque::new(),
            offline_since: None,
            observed: BTreeSet::new(),
            replies: HashMap::new(),
            gen: 0,
            dedup_id: 0,
        }
    }

    /// Queues `m` for the client and wakes its connection. Offline, QoS 0 is dropped; a full
    /// queue drops its oldest message.
    fn deliver(&mut self, m: Message, max_queued: usize) {
        if m.qos == QoS::Level0 && self.conn.is_none() {
            return;
        }
        if self.queue.len() >= max_queued {
            self.queue.pop_front();
        }
        self.queue.push_back(m);
        if let Some((_, signals)) = &self.conn {
            signals.ready.notify_one();
        }
    }
}

/// Everything the broker of one node keeps.
#[derive(Default)]
struct State {
    sessions: HashMap<Arc<str>, Session>,
    retained: BTreeMap<String, Message>,
    /// key → clients observing it.
    observers: Links<Bytes>,
    /// Which clients subscribed to which filters, so a publish looks at its candidates only.
    index: Index,
    /// The sessions other nodes are home to (`relay.rs`).
    remote: relay::Remote,
}

/// Which clients are linked to each key (a filter, an observed key).
type Links<K> = BTreeMap<K, BTreeSet<Arc<str>>>;

/// Unlinks `client` from `key`, dropping the key with its last client.
fn unlink<K: Ord + std::borrow::Borrow<Q>, Q: Ord + ?Sized>(links: &mut Links<K>, key: &Q, client: &Arc<str>) {
    if let Some(clients) = links.get_mut(key) {
        clients.remove(client);
        if clients.is_empty() {
            links.remove(key);
        }
    }
}

/// Subscribers by filter: filters without wildcards by exact topic, the others by the
/// literal levels before their first wildcard, so a publish looks up one entry per level of
/// its topic instead of scanning every wildcard filter.
#[derive(Default)]
struct Index {
    exact: Links<String>,
    /// literal levels ("a/b/" for "a/b/+/c", "" for "#") → filter → clients.
    wild: BTreeMap<String, Links<String>>,
}

/// The levels of a wildcard filter before its first wildcard, each with its `/`.
fn literal_levels(filter: &str) -> &str {
    let mut end = 0;
    for level in filter.split('/') {
        if level == "+" || level == "#" {
            break;
        }
        end += level.len() + 1;
    }
    &filter[..end.min(filter.len())]
}

impl Index {
    fn add(&mut self, filter: &str, client: &Arc<str>) {
        let links = match filter.contains(['+', '#']) {
            true => self.wild.entry(literal_levels(filter).to_string()).or_default(),
            false => &mut self.exact,
        };
        links.entry(filter.to_string()).or_default().insert(client.clone());
    }

    fn remove(&mut self, filter: &str, client: &Arc<str>) {
        if !filter.contains(['+', '#']) {
            return unlink(&mut self.exact, filter, client);
        }
        let prefix = literal_levels(filter);
        if let Some(links) = self.wild.get_mut(prefix) {
            unlink(links, filter, client);
            if links.is_empty() {
                self.wild.remove(prefix);
            }
        }
    }

    /// Clients with a filter that matches `topic`.
    fn candidates(&self, topic: &str) -> BTreeSet<Arc<str>> {
        let mut out: BTreeSet<Arc<str>> = self.exact.get(topic).cloned().unwrap_or_default();
        // "" and every run of whole levels, with its `/`; the whole topic too, for `a/#`
        // matching `a`.
        let whole = format!("{topic}/");
        let levels = topic.match_indices('/').map(|(i, _)| &topic[..=i]);
        for prefix in std::iter::once("").chain(levels).chain(std::iter::once(whole.as_str())) {
            for (filter, clients) in self.wild.get(prefix).into_iter().flatten() {
                if topic::matches(filter, topic) {
                    out.extend(clients.iter().cloned());
                }
            }
        }
        out
    }
}

impl State {
    /// Ends `client`'s session: its subscriptions and observations go with it.
    fn remove_session(&mut self, client: &Arc<str>) -> Option<Session> {
        let old = self.sessions.remove(client)?;
        for sub in &old.subs {
            self.index.remove(&sub.filter, client);
        }
        forget_observations(self, client, &old.observed);
        Some(old)
    }

    /// Gives `client`'s session the subscriptions and observations of its record.
    fn restore(&mut self, client: &Arc<str>, record: &SessionRecord) {
        let Some(s) = self.sessions.get_mut(client) else { return };
        let old_subs = std::mem::replace(&mut s.subs, record.subs.iter().map(Sub::from_record).collect());
        let old_observed = std::mem::replace(&mut s.observed, record.observed.iter().cloned().collect());
        let (subs, observed) = (s.subs.clone(), s.observed.clone());
        for sub in &old_subs {
            self.index.remove(&sub.filter, client);
        }
        forget_observations(self, client, &old_observed);
        for sub in &subs {
            self.index.add(&sub.filter, client);
        }
        for k in observed {
            self.observers.entry(k).or_default().insert(client.clone());
        }
    }
}

/// The MQTT broker of this node; cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Shared>,
}

struct Shared {
    handle: NodeHandle,
    limits: Limits,
    policy: Policy,
    state: Mutex<State>,
    connections: AtomicUsize,
    next_conn: AtomicU64,
    /// Random per run: tells this run's connections from an earlier run's in session records.
    boot: u64,
    outboxes: relay::Outboxes,
}

/// What CONNECT found: the session to resume (or a new one) and where its messages go.
pub struct Attached {
    pub session_present: bool,
    pub conn_id: u64,
    pub signals: Arc<Signals>,
}

/// Why a CONNECT was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Too many sessions on this node, or in the cluster.
    Quota,
    /// The session could not be recorded (no leader in time).
    Unavailable,
    /// A newer connection with the same client id took the session first.
    Superseded,
}

impl Broker {
    pub fn new(handle: NodeHandle, limits: Limits, policy: Policy) -> Self {
        let inner = Shared {
            handle,
            limits,
            policy,
            state: Mutex::default(),
            connections: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
            boot: rand::Rng::gen(&mut rand::thread_rng()),
            outboxes: Default::default(),
        };
        Self { inner: Arc::new(inner) }
    }

    pub fn handle(&self) -> &NodeHandle {
        &self.inner.handle
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().expect("poisoned")
    }

    /// Whether a session for `client` fits in this node's quota.
    fn has_room(&self, client: &str) -> bool {
        let st = self.state();
        st.sessions.contains_key(client) || st.sessions.len() < self.inner.limits.mqtt_max_sessions
    }

    /// Attaches connection `conn_id` to `client`'s session as the cluster's `record` of it
    /// says: resumed (queued messages first, subscriptions and observations from the record,
    /// as far as `principal` may still have them) or new. A connection already serving the
    /// session here is told to go. `None` when a newer connection took the session already.
    fn attach(
        &self,
        client: &Arc<str>,
        conn_id: u64,
        expiry: u32,
        resumed: bool,
        record: &SessionRecord,
        principal: &Principal,
    ) -> Option<Attached> {
        let signals = Arc::new(Signals::default());
        let mut st = self.state();
        // Under the lock, so of two connections racing for one client id, the one the log
        // ordered last is the one attached.
        let owner = self.handle().session_record(client).and_then(|r| r.owner);
        if owner.is_none_or(|o| o.node != self.handle().id() || o.boot != self.inner.boot || o.conn != conn_id) {
            return None;
        }
        if !resumed {
            if let Some(old) = st.remove_session(client) {
                take_over(&old);
            }
        }
        let s = st.sessions.entry(client.clone()).or_insert_with(|| Session::new(expiry));
        take_over(s);
        s.expiry = expiry;
        s.offline_since = None;
        s.conn = Some((conn_id, signals.clone()));
        s.gen = record.gen;
        s.dedup_id = record.dedup_id;
        if resumed {
            // Another principal may have taken the client id: keep only what it may have.
            let policy = &self.inner.policy;
            let mut allowed = record.clone();
            allowed.subs.retain(|sub| policy.can_subscribe(principal, &sub.filter));
            allowed.observed.retain(|k| policy.can_key(principal, k, Access::Read));
            st.restore(client, &allowed);
        }
        signals.ready.notify_one(); // a resumed session may have messages waiting
        Some(Attached { session_present: resumed, conn_id, signals })
    }

    /// The connection `conn_id` of `client` ended: its session ends too (expiry 0) or
    /// waits for the client, keeping `unacked` messages to send again.
    pub fn detach(&self, client: &Arc<str>, conn_id: u64, expiry: u32, unacked: Vec<Message>) {
        let mut st = self.state();
        let Some(s) = st.sessions.get_mut(client) else { return };
        if let Some((_, signals)) = s.conn.as_ref().filter(|(id, _)| *id != conn_id) {
            // Taken over: the new connection sends what this one could not.
            for m in unacked.into_iter().rev() {
                s.queue.push_front(m);
            }
            signals.ready.notify_one();
            return;
        }
        s.conn = None;
        if expiry == 0 {
            st.remove_session(client);
            return;
        }
        s.expiry = expiry;
        s.offline_since = Some(Instant::now());
        for m in unacked.into_iter().rev() {
            s.queue.push_front(m);
        }
    }

    /// Routes `m` to every session with a matching subscription, and keeps it if retained.
    pub fn publish(&self, from: Option<&str>, mut m: Message) {
        let max_queued = self.inner.limits.mqtt_max_queued;
        let mut st = self.state();
        if m.retain {
            if m.payload.is_empty() {
                st.retained.remove(&*m.topic);
            } else if st.retained.len() < MAX_RETAINED || st.retained.contains_key(&*m.topic) {
                st.retained.insert(m.topic.to_string(), m.clone());
            }
        }
        m.retain = false;
        for client in st.index.candidates(&m.topic) {
            let Some(s) = st.sessions.get_mut(&client) else { continue };
            let local = from == Some(&*client);
            let granted = s.subs.iter().filter(|sub| topic::matches(&sub.filter, &m.topic) && !(local && sub.no_local));
            let Some(qos) = granted.map(|sub| sub.qos).max() else { continue };
            let mut copy = m.clone();
            copy.qos = copy.qos.min(qos);
            s.deliver(copy, max_queued);
        }
    }

    /// Adds (or replaces) a subscription: whether it existed, and the retained messages it
    /// matches; `None` when the session has too many.
    fn subscribe(&self, client: &Arc<str>, filter: &str, qos: QoS, no_local: bool) -> Option<(bool, Vec<Message>)> {
        let mut st = self.state();
        let retained: Vec<Message> =
            st.retained.values().filter(|m| topic::matches(filter, &m.topic)).cloned().collect();
        let s = st.sessions.get_mut(client)?;
        let existed = s.subs.iter().any(|sub| sub.filter == filter);
        if !existed && s.subs.len() >= MAX_SUBSCRIPTIONS {
            return None;
        }
        s.subs.retain(|sub| sub.filter != filter);
        s.subs.push(Sub { filter: filter.to_string(), qos, no_local });
        st.index.add(filter, client);
        Some((existed, retained))
    }

    /// Queues `msgs` for `client` (retained messages for a new subscription).
    fn queue_for(&self, client: &str, msgs: Vec<Message>) {
        let max_queued = self.inner.limits.mqtt_max_queued;
        if let Some(s) = self.state().sessions.get_mut(client) {
            for m in msgs {
                s.deliver(m, max_queued);
            }
        }
    }

    fn unsubscribe(&self, client: &Arc<str>, filter: &str) -> bool {
        let mut st = self.state();
        let Some(s) = st.sessions.get_mut(client) else { return false };
        let before = s.subs.len();
        s.subs.retain(|sub| sub.filter != filter);
        let removed = s.subs.len() != before;
        st.index.remove(filter, client);
        removed
    }

    /// KEYNOTIFY: `client` observes `key`; false when it observes too many keys already.
    fn observe(&self, client: &Arc<str>, key: Bytes) -> bool {
        let mut st = self.state();
        let Some(s) = st.sessions.get_mut(client) else { return true };
        if s.observed.len() >= MAX_OBSERVED && !s.observed.contains(&key) {
            return false;
        }
        s.observed.insert(key.clone());
        st.observers.entry(key).or_default().insert(client.clone());
        true
    }

    /// Up to `room` QoS 1 messages (and the QoS 0 ones between them) waiting for `client`,
    /// in order, when connection `conn_id` still serves it.
    fn take(&self, client: &str, conn_id: u64, mut room: usize) -> Vec<Message> {
        let mut st = self.state();
        let Some(s) = st.sessions.get_mut(client).filter(|s| s.conn.as_ref().is_some_and(|(id, _)| *id == conn_id))
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while let Some(m) = s.queue.front() {
            if m.qos != QoS::Level0 {
                if room == 0 {
                    break;
                }
                room -= 1;
            }
            out.push(s.queue.pop_front().expect("front"));
        }
        out
    }

    /// KEYNOTIFY … STOP: whether `client` was observing `key`.
    fn unobserve(&self, client: &Arc<str>, key: &Bytes) -> bool {
        let mut st = self.state();
        let was = st.sessions.get_mut(client).is_some_and(|s| s.observed.remove(key));
        forget_observations(&mut st, client, &BTreeSet::from([key.clone()]));
        was
    }

    fn observers(&self, key: &[u8]) -> Vec<Arc<str>> {
        self.state().observers.get(key).map(|c| c.iter().cloned().collect()).unwrap_or_default()
    }

    /// The dedup reference of a state store write from `client` stamped `ts`, from the
    /// session's dedup id and the request's HLC (strictly increasing per client, as the SDKs
    /// stamp it): the same request retried through any node finds its result. One dedup
    /// client per 256 ms of requests keeps each window (rewritten with every write) small.
    /// Only for a `__ts` within a minute of this node's clock (the SDKs' is), so a client
    /// cannot spread its writes over many dedup windows.
    fn client_ref(&self, client: &str, ts: Hlc) -> Option<ClientRef> {
        if ts.ms.abs_diff(self.handle().now_ms()) > 60_000 {
            return None;
        }
        let id = self.state().sessions.get(client)?.dedup_id;
        let client_id = id.wrapping_add(ts.ms >> 8);
        Some(ClientRef { client_id, seq: ((ts.ms & 0xFF) << 32) | u64::from(ts.counter) })
    }

    /// A reply this session already sent for `correlation`, if still fresh.
    fn cached_reply(&self, client: &str, correlation: &Bytes) -> Option<Message> {
        let st = self.state();
        let (until, m) = st.sessions.get(client)?.replies.get(correlation)?;
        (*until > Instant::now()).then(|| m.clone())
    }

    fn cache_reply(&self, client: &str, correlation: Bytes, until: Instant, reply: Message) {
        if let Some(s) = self.state().sessions.get_mut(client) {
            if s.replies.len() >= MAX_REPLIES {
                let now = Instant::now();
                s.replies.retain(|_, (until, _)| *until > now);
            }
            if s.replies.len() < MAX_REPLIES {
                s.replies.insert(correlation, (until, reply));
            }
        }
    }

    /// Ends sessions whose client stayed away longer than their expiry, and forgets
    /// replies past their request's expiry.
    fn sweep(&self) {
        let now = Instant::now();
        let mut st = self.state();
        let expired: Vec<Arc<str>> = st
            .sessions
            .iter()
            .filter(|(_, s)| {
                let end = s.offline_since.and_then(|t| t.checked_add(Duration::from_secs(s.expiry.into())));
                end.is_some_and(|end| now >= end)
            })
            .map(|(c, _)| c.clone())
            .collect();
        for c in expired {
            st.remove_session(&c);
        }
        for s in st.sessions.values_mut() {
            s.replies.retain(|_, (until, _)| *until > now);
        }
    }
}

/// Tells a connection still serving this session that another took it over.
fn take_over(s: &Session) {
    if let Some((_, signals)) = &s.conn {
        signals.taken_over.store(true, Ordering::SeqCst);
        signals.ready.notify_one();
    }
}

fn forget_observations(st: &mut State, client: &Arc<str>, keys: &BTreeSet<Bytes>) {
    for k in keys {
        unlink(&mut st.observers, k, client);
    }
}

/// Serves MQTT on `incoming` until `stop`; then tells every client the server is going
/// (DISCONNECT 0x8B) and closes.
pub async fn serve(mut incoming: Incoming, broker: Broker, stop: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    let mut background = JoinSet::new();
    background.spawn(notify::run(broker.clone(), stop.clone()));
    background.spawn(sweep(broker.clone(), stop.clone()));
    background.spawn(replica::follow(broker.clone(), stop.clone()));
    background.spawn(replica::orphan(broker.clone(), stop.clone()));
    background.spawn(relay::receive(broker.clone(), stop.clone()));
    let mut stopping = stop.clone();
    while let Some(conn) = crate::io::accept(&mut incoming, &mut conns, &mut stopping, "mqtt").await {
        conns.spawn(conn::run(broker.clone(), conn, stop.clone()));
    }
    // Each connection sees `stop` too and says goodbye; give them a moment to.
    let _ = tokio::time::timeout(Duration::from_secs(2), async { while conns.join_next().await.is_some() {} }).await;
    conns.abort_all();
    background.abort_all();
}

async fn sweep(broker: Broker, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => broker.sweep(),
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_finds_every_matching_filter_and_only_those() {
        let filters = ["a/b/c", "a/+/c", "a/#", "#", "+/+", "a/b/+", "+", "a/b/c/#", "x/#", "$SYS/#", "/#"];
        let mut index = Index::default();
        for f in filters {
            index.add(f, &Arc::from(f));
        }
        for topic in ["a/b/c", "a", "a/b", "x", "/x", "$SYS/y", "a/b/c/d", "q", ""] {
            let want: BTreeSet<Arc<str>> =
                filters.iter().filter(|f| topic::matches(f, topic)).map(|f| Arc::from(*f)).collect();
            assert_eq!(index.candidates(topic), want, "{topic}");
        }
        for f in filters {
            index.remove(f, &Arc::from(f));
        }
        assert!(index.exact.is_empty() && index.wild.is_empty());
    }
}
