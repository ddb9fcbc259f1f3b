//! Applied-change fan-out for watchers on this node, with a bounded history for resuming.

use crate::kv::Event;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Events kept for watchers that resume from a past revision.
pub const DEFAULT_HISTORY: usize = 16_384;

/// What live watchers receive.
#[derive(Clone, Debug)]
pub enum HubMsg {
    Event(Arc<Event>),
    /// The state was replaced (snapshot install): events before `next` may be missing.
    Reset {
        next: u64,
    },
}

/// Which MQTT sessions an apply changed, for the broker on this node.
#[derive(Clone, Debug)]
pub enum SessionNews {
    Changed(Arc<str>),
    /// Any may have (a snapshot replaced the state).
    All,
}

pub struct EventHub {
    inner: Mutex<History>,
    tx: broadcast::Sender<HubMsg>,
    sessions: broadcast::Sender<SessionNews>,
    capacity: usize,
    /// Bytes of keys and values `History` keeps at most (always the newest event).
    max_bytes: usize,
    /// Open `EventStream`s (watches, MQTT key notifications).
    watchers: std::sync::atomic::AtomicUsize,
}

struct History {
    events: VecDeque<Arc<Event>>,
    /// Bytes of keys and values in `events`.
    bytes: usize,
    /// Every event with revision >= this one is in `events` (or not yet applied).
    complete_from: u64,
}

/// Where a new watcher starts.
pub enum Start {
    /// Past events to deliver first, then the live stream.
    From(Vec<Arc<Event>>),
    /// The asked-for history is gone; `next` is where a re-read state is complete from.
    /// `events` are the ones kept from `next` on, delivered after the resync.
    Resync { next: u64, events: Vec<Arc<Event>> },
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.hub.watchers.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl EventHub {
    /// Event streams open on this node.
    pub fn watchers(&self) -> usize {
        self.watchers.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn new(capacity: usize, next_revision: u64) -> Self {
        Self::with_live_capacity(capacity, capacity, next_revision)
    }

    /// A hub whose live channel holds `live` events before a slow watcher falls behind
    /// (and resumes from the `capacity` events of history).
    pub fn with_live_capacity(capacity: usize, live: usize, next_revision: u64) -> Self {
        let (tx, _) = broadcast::channel(live.max(1));
        let inner = Mutex::new(History { events: VecDeque::new(), bytes: 0, complete_from: next_revision });
        let (sessions, _) = broadcast::channel(1024);
        Self { inner, tx, sessions, capacity, max_bytes: usize::MAX, watchers: Default::default() }
    }

    /// This hub, its history also bounded by `max_bytes` of keys and values.
    pub fn with_max_bytes(self, max_bytes: usize) -> Self {
        Self { max_bytes, ..self }
    }

    /// Tells the broker which sessions changed (nobody listening is fine).
    pub fn publish_sessions(&self, clients: impl IntoIterator<Item = String>) {
        for c in clients {
            let _ = self.sessions.send(SessionNews::Changed(c.into()));
        }
    }

    /// Session changes from now on; a receiver that lags must treat it as `All`.
    pub fn subscribe_sessions(&self) -> broadcast::Receiver<SessionNews> {
        self.sessions.subscribe()
    }

    pub fn publish(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let mut h = self.inner.lock().expect("poisoned");
        for e in events {
            let e = Arc::new(e);
            h.bytes += size(&e);
            h.events.push_back(e.clone());
            while h.events.len() > self.capacity || (h.bytes > self.max_bytes && h.events.len() > 1) {
                let Some(old) = h.events.pop_front() else { break };
                h.bytes -= size(&old);
                h.complete_from = h.complete_from.max(old.revision + 1);
            }
            // No receivers is fine: nobody is watching.
            let _ = self.tx.send(HubMsg::Event(e));
        }
    }

    /// Forgets all history (a snapshot replaced the state): resuming before `next` needs a resync.
    pub fn reset(&self, next_revision: u64) {
        let mut h = self.inner.lock().expect("poisoned");
        h.events.clear();
        h.bytes = 0;
        h.complete_from = next_revision;
        // Live watchers must hear about the jump too: never a silent gap.
        let _ = self.tx.send(HubMsg::Reset { next: next_revision });
        let _ = self.sessions.send(SessionNews::All);
    }

    /// Subscribes to live events and, atomically with it, collects the backlog from `from`.
    pub fn subscribe(&self, from: Option<u64>) -> (Start, broadcast::Receiver<HubMsg>) {
        let h = self.inner.lock().expect("poisoned");
        let rx = self.tx.subscribe();
        let start = match from {
            None => Start::From(Vec::new()),
            // The events from `complete_from` on already happened: they follow the resync
            // (the chaos sweep found them missing, seed 447).
            Some(r) if r < h.complete_from => {
                Start::Resync { next: h.complete_from, events: h.events.iter().cloned().collect() }
            }
            Some(r) => Start::From(h.events.iter().filter(|e| e.revision >= r).cloned().collect()),
        };
        (start, rx)
    }
}

/// What an event holds on to, as the history counts it.
fn size(e: &Event) -> usize {
    e.key.len() + e.value.len()
}

/// One item of a watch stream.
#[derive(Clone, Debug)]
pub enum WatchItem {
    Event(Arc<Event>),
    /// History is gone: re-read the state, then events continue from `next`.
    Resync {
        next: u64,
    },
}

/// Which keys a stream delivers.
type KeyFilter = Box<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// A watch: the backlog first, then live events; filtered by prefix.
pub struct EventStream {
    prefix: Bytes,
    backlog: VecDeque<WatchItem>,
    rx: broadcast::Receiver<HubMsg>,
    hub: Arc<EventHub>,
    /// The node serving the watch, for logs.
    node: u64,
    /// Where the stream stands in the hub's sequence: the revision of the last event taken
    /// (delivered or filtered out) and how many events of that revision were taken. One
    /// revision can carry several events (a transaction, a bulk write, an expiry sweep), so
    /// a watcher that falls behind resumes inside it, not after it.
    last: u64,
    taken_at_last: usize,
    /// Nothing older is delivered: a watcher resuming at a node that is still catching up
    /// must not see, again, events it already had from another node.
    min_revision: u64,
    /// Only events of keys this keeps are delivered (the caller's read rules).
    keep: Option<KeyFilter>,
}

impl EventStream {
    pub fn new(hub: Arc<EventHub>, prefix: Bytes, from_revision: Option<u64>, node: u64) -> Self {
        hub.watchers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (start, rx) = hub.subscribe(from_revision);
        let min_revision = from_revision.unwrap_or(0);
        let backlog = backlog(start, node, from_revision);
        Self { prefix, backlog, rx, hub, node, last: 0, taken_at_last: 0, min_revision, keep: None }
    }

    /// From now on, delivers only events of keys `keep` keeps.
    pub fn keep_only(&mut self, keep: impl Fn(&[u8]) -> bool + Send + Sync + 'static) {
        self.keep = Some(Box::new(keep));
    }

    pub async fn next(&mut self) -> Option<WatchItem> {
        loop {
            let item = match self.backlog.pop_front() {
                Some(item) => item,
                None => match self.rx.recv().await {
                    Ok(HubMsg::Event(e)) => WatchItem::Event(e),
                    Ok(HubMsg::Reset { next }) => {
                        tracing::debug!(node = self.node, next, "watch: state replaced, resync");
                        WatchItem::Resync { next }
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.resume();
                        continue;
                    }
                },
            };
            match &item {
                WatchItem::Event(e) => {
                    if e.revision == self.last {
                        self.taken_at_last += 1;
                    } else {
                        (self.last, self.taken_at_last) = (e.revision, 1);
                    }
                    let kept = self.keep.as_ref().is_none_or(|keep| keep(&e.key));
                    if !e.key.starts_with(&self.prefix) || e.revision < self.min_revision || !kept {
                        continue;
                    }
                }
                // The state was replaced at a point this stream has already passed (a node
                // still catching up, watched from a later revision): nothing is missing, and a
                // resync to an older revision would send the watcher back.
                WatchItem::Resync { next } if *next <= self.min_revision.max(self.last) => continue,
                WatchItem::Resync { next } => {
                    (self.last, self.taken_at_last) = (next.saturating_sub(1), 0);
                    self.min_revision = self.min_revision.max(*next);
                }
            }
            return Some(item);
        }
    }

    /// Fell behind the live channel: resume from history at the exact event after the last
    /// one taken, or resync when that history is gone.
    fn resume(&mut self) {
        tracing::debug!(node = self.node, last = self.last, taken = self.taken_at_last, "watch lagged");
        let from = self.last.max(1);
        let (start, rx) = self.hub.subscribe(Some(from));
        let mut backlog = backlog(start, self.node, Some(from));
        if matches!(backlog.front(), Some(WatchItem::Event(_))) {
            let mut skip = self.taken_at_last;
            backlog.retain(|item| match item {
                WatchItem::Event(e) if e.revision == self.last && skip > 0 => {
                    skip -= 1;
                    false
                }
                _ => true,
            });
        }
        self.backlog = backlog;
        self.rx = rx;
    }
}

fn backlog(start: Start, node: u64, from: Option<u64>) -> VecDeque<WatchItem> {
    match start {
        Start::From(events) => {
            let first = events.first().map(|e| e.revision);
            tracing::debug!(node, ?from, backlog = events.len(), ?first, "watch starts");
            events.into_iter().map(WatchItem::Event).collect()
        }
        Start::Resync { next, events } => {
            tracing::debug!(node, ?from, next, backlog = events.len(), "watch resyncs");
            std::iter::once(WatchItem::Resync { next }).chain(events.into_iter().map(WatchItem::Event)).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{EventKind, Hlc};

    fn ev(revision: u64) -> Event {
        ev_key(revision, &format!("k{revision}"))
    }

    fn ev_key(revision: u64, key: &str) -> Event {
        let key = bytes::Bytes::from(key.to_string());
        Event {
            revision,
            key,
            kind: EventKind::Put,
            value: Default::default(),
            version: Hlc::default(),
            expired: false,
        }
    }

    fn revisions(events: &[Arc<Event>]) -> Vec<u64> {
        events.iter().map(|e| e.revision).collect()
    }

    #[test]
    fn resuming_inside_history_replays_it() {
        let hub = EventHub::new(16, 1);
        hub.publish((1..=5).map(ev).collect());
        let (Start::From(events), _) = hub.subscribe(Some(3)) else { panic!("expected a replay") };
        assert_eq!(revisions(&events), [3, 4, 5]);
    }

    #[test]
    fn resuming_before_history_resyncs_then_replays_what_is_kept() {
        let hub = EventHub::new(16, 1);
        hub.reset(10); // a snapshot at 9 replaced the state
        hub.publish((10..=12).map(ev).collect());
        let (Start::Resync { next, events }, _) = hub.subscribe(Some(4)) else { panic!("expected a resync") };
        assert_eq!(next, 10);
        assert_eq!(revisions(&events), [10, 11, 12], "events after the resync point must not be lost");
        // History trimmed by capacity: the resync point moves with it.
        let hub = EventHub::new(16, 1);
        hub.publish((1..=20).map(ev).collect());
        let (Start::Resync { next, events }, _) = hub.subscribe(Some(2)) else { panic!("expected a resync") };
        assert_eq!(next, 5);
        assert_eq!(revisions(&events), (5..=20).collect::<Vec<_>>());
    }

    #[test]
    fn history_is_bounded_by_bytes_too() {
        // Ten events of 1 KiB values under a 3.5 KiB bound: the newest three stay.
        let hub = EventHub::new(1000, 1).with_max_bytes(3584);
        let big = |r: u64| Event { value: vec![b'v'; 1024].into(), ..ev(r) };
        hub.publish((1..=10).map(big).collect());
        let (Start::Resync { next, events }, _) = hub.subscribe(Some(1)) else { panic!("expected a resync") };
        assert_eq!((next, revisions(&events)), (8, vec![8, 9, 10]));
        // One event larger than the bound is still kept: a watcher can always resume at it.
        hub.publish(vec![Event { value: vec![b'v'; 8192].into(), ..ev(11) }]);
        let (Start::Resync { next, events }, _) = hub.subscribe(Some(10)) else { panic!("expected a resync") };
        assert_eq!((next, revisions(&events)), (11, vec![11]));
        assert_eq!(hub.inner.lock().unwrap().bytes, 8192 + 3);
    }

    /// A watcher that falls behind in the middle of a multi-key revision gets the rest of
    /// that revision, then everything after it (item 5 of issue 8: it resumed from the next
    /// revision and silently lost the tail).
    #[tokio::test]
    async fn a_lagging_watcher_resumes_inside_a_multi_key_revision() {
        let hub = Arc::new(EventHub::with_live_capacity(1024, 4, 1));
        let mut w = EventStream::new(hub.clone(), Bytes::new(), None, 1);
        hub.publish(vec![ev_key(10, "a"), ev_key(10, "b"), ev_key(10, "c")]);
        let Some(WatchItem::Event(first)) = w.next().await else { panic!("an event") };
        assert_eq!((first.revision, &first.key[..]), (10, &b"a"[..]));
        hub.publish((11..=30).map(ev).collect()); // overflows the live channel
        let mut got = Vec::new();
        while got.len() < 22 {
            match w.next().await {
                Some(WatchItem::Event(e)) => got.push((e.revision, String::from_utf8_lossy(&e.key).into_owned())),
                other => panic!("unexpected {other:?}"),
            }
        }
        let mut want = vec![(10, "b".to_string()), (10, "c".to_string())];
        want.extend((11..=30).map(|r| (r, format!("k{r}"))));
        assert_eq!(got, want);
    }

    /// A watch from a revision the node has not reached yet, on a node that then installs a
    /// snapshot older than that revision: no resync (it would send the watcher back), just
    /// the events from the asked revision on (chaos seed 854: "watch went back").
    #[tokio::test]
    async fn a_snapshot_behind_the_watch_start_is_no_resync() {
        let hub = Arc::new(EventHub::new(1024, 1));
        let mut w = EventStream::new(hub.clone(), Bytes::new(), Some(391), 1);
        hub.reset(361); // a snapshot at 360 installed on the catching-up node
        hub.publish((361..=395).map(ev).collect());
        let mut got = Vec::new();
        while got.len() < 5 {
            match w.next().await {
                Some(WatchItem::Event(e)) => got.push(e.revision),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, [391, 392, 393, 394, 395]);
    }
}
