//! Applied-change fan-out for watchers on this node, with a bounded history for resuming.

use crate::kv::Event;
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

pub struct EventHub {
    inner: Mutex<History>,
    tx: broadcast::Sender<HubMsg>,
    capacity: usize,
}

struct History {
    events: VecDeque<Arc<Event>>,
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

impl EventHub {
    pub fn new(capacity: usize, next_revision: u64) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(16));
        let inner = Mutex::new(History { events: VecDeque::new(), complete_from: next_revision });
        Self { inner, tx, capacity }
    }

    pub fn publish(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let mut h = self.inner.lock().expect("poisoned");
        for e in events {
            let e = Arc::new(e);
            h.events.push_back(e.clone());
            if h.events.len() > self.capacity {
                if let Some(old) = h.events.pop_front() {
                    h.complete_from = h.complete_from.max(old.revision + 1);
                }
            }
            // No receivers is fine: nobody is watching.
            let _ = self.tx.send(HubMsg::Event(e));
        }
    }

    /// Forgets all history (a snapshot replaced the state): resuming before `next` needs a resync.
    pub fn reset(&self, next_revision: u64) {
        let mut h = self.inner.lock().expect("poisoned");
        h.events.clear();
        h.complete_from = next_revision;
        // Live watchers must hear about the jump too: never a silent gap.
        let _ = self.tx.send(HubMsg::Reset { next: next_revision });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{EventKind, Hlc};

    fn ev(revision: u64) -> Event {
        let key = bytes::Bytes::from(format!("k{revision}"));
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
}
