//! Topic filters: `+` matches one level, `#` the rest (MQTT v5 §4.7). Pure.

pub use crate::pattern::topic_matches as matches;

/// Whether a filter is well formed: `#` only as the last level, wildcards only as whole
/// levels, not empty.
pub fn valid_filter(filter: &str) -> bool {
    let levels: Vec<&str> = filter.split('/').collect();
    !filter.is_empty()
        && levels.iter().enumerate().all(|(i, l)| match *l {
            "#" => i == levels.len() - 1,
            "+" => true,
            l => !l.contains('+') && !l.contains('#'),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_filters_match_their_topics() {
        let notify = "clients/statestore/v1/FA9AE35F-2F64-47CD-9BFF-08E2B32A0FE8/6331/command/notify/+";
        assert!(matches(notify, "clients/statestore/v1/FA9AE35F-2F64-47CD-9BFF-08E2B32A0FE8/6331/command/notify/6B31"));
    }

    #[test]
    fn malformed_filters_are_refused() {
        for bad in ["", "a/#/b", "a#", "a/b+", "#/"] {
            assert!(!valid_filter(bad), "{bad}");
        }
        for ok in ["#", "+", "a/+/b/#", "/", "a//b"] {
            assert!(valid_filter(ok), "{ok}");
        }
    }
}
