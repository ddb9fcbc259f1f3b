//! Hybrid logical clock versions in the AIO `__ts` format.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The node id written into every version. One constant for the whole cluster, so a
/// leader change never changes it (AIO lease renewals compare it).
pub const HLC_NODE: &str = "statenode";

/// A version: wall-clock milliseconds plus a counter. Ordered by `(ms, counter)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hlc {
    pub ms: u64,
    pub counter: u32,
}

/// .NET parses the counter as Int32, so counters stay below this.
const MAX_COUNTER: u32 = i32::MAX as u32;

impl Hlc {
    pub const fn new(ms: u64, counter: u32) -> Self {
        Self { ms, counter }
    }

    /// The next version after `self` at wall time `now_ms`, merged with the request's
    /// clock when it has one (the AIO SDK's update rule).
    pub fn next(self, now_ms: u64, request: Option<Hlc>) -> Hlc {
        let r = request.unwrap_or_default();
        let candidate = if now_ms > self.ms && now_ms > r.ms {
            Hlc::new(now_ms, 0)
        } else if self.ms == r.ms {
            Hlc::new(self.ms, self.counter.max(r.counter).saturating_add(1))
        } else if self.ms > r.ms {
            Hlc::new(self.ms, self.counter.saturating_add(1))
        } else {
            Hlc::new(r.ms, r.counter.saturating_add(1))
        };
        if candidate.counter >= MAX_COUNTER {
            // Counter exhausted within one millisecond: move the clock on instead.
            Hlc::new(candidate.ms + 1, 0)
        } else {
            candidate
        }
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:015}:{:05}:{}", self.ms, self.counter, HLC_NODE)
    }
}

/// Why an HLC string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed timestamp")]
pub struct MalformedHlc;

impl FromStr for Hlc {
    type Err = MalformedHlc;

    /// Accepts `ms:counter:node` with or without padding; the node id is not kept.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(':');
        let (Some(ms), Some(counter), Some(node), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(MalformedHlc);
        };
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(counter) || node.is_empty() {
            return Err(MalformedHlc);
        }
        let ms = ms.parse().map_err(|_| MalformedHlc)?;
        let counter: u32 = counter.parse().map_err(|_| MalformedHlc)?;
        if counter >= MAX_COUNTER {
            return Err(MalformedHlc);
        }
        Ok(Hlc::new(ms, counter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_the_aio_sdk() {
        assert_eq!(Hlc::new(1_696_374_425_000, 1).to_string(), "001696374425000:00001:statenode");
    }

    #[test]
    fn parses_padded_and_unpadded() {
        assert_eq!("1696374425000:0:Client1".parse(), Ok(Hlc::new(1_696_374_425_000, 0)));
        assert_eq!("001:00002:x".parse(), Ok(Hlc::new(1, 2)));
    }

    #[test]
    fn rejects_malformed() {
        for bad in
            ["", "1:2", "1:2:3:4", "a:1:n", "1:b:n", "1:1:", "-1:0:n", "1:99999999999:n", "99999999999999999999999:0:n"]
        {
            assert_eq!(bad.parse::<Hlc>(), Err(MalformedHlc), "{bad}");
        }
    }

    #[test]
    fn update_rule_matches_the_reference() {
        let s = Hlc::new(100, 3);
        assert_eq!(s.next(200, None), Hlc::new(200, 0));
        assert_eq!(s.next(50, Some(Hlc::new(100, 7))), Hlc::new(100, 8));
        assert_eq!(s.next(50, Some(Hlc::new(90, 7))), Hlc::new(100, 4));
        assert_eq!(s.next(50, Some(Hlc::new(150, 7))), Hlc::new(150, 8));
        // Doc example: request 1696374425000:0 → response 1696374425000:1.
        let t = 1_696_374_425_000;
        assert_eq!(Hlc::default().next(t, Some(Hlc::new(t, 0))), Hlc::new(t, 1));
    }

    #[test]
    fn always_grows() {
        let mut s = Hlc::default();
        for (now, r) in [(5, None), (5, None), (3, Some(Hlc::new(9, 1))), (1, None), (10, None)] {
            let n = s.next(now, r);
            assert!(n > s);
            s = n;
        }
    }
}
