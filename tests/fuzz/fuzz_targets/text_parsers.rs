//! The small text parsers a client or operator reaches: TTLs (native `ttl`, Dapr
//! `ttlInSeconds`), fencing tokens (`__ft` HLCs), the token file, a node's config file with
//! its authorization rules, glob patterns and MQTT topic filters.

#![no_main]

use libfuzzer_sys::fuzz_target;
use statenode::kv::Hlc;
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        let _ = statenode::pattern::glob(data, data);
        return;
    };
    if let Ok(ms) = statenode::http::native::parse_ttl(text) {
        assert!(ms > 0);
    }
    let md = BTreeMap::from([("ttlInSeconds".to_string(), text.to_string())]);
    let _ = statenode::dapr::ttl(&md, u64::MAX);
    if let Ok(h) = text.parse::<Hlc>() {
        assert_eq!(h.to_string().parse::<Hlc>().ok(), Some(h), "an HLC round-trips");
    }
    let _ = statenode::auth::token_file::parse(text);
    if let Ok(c) = statenode::config::Config::from_toml(text) {
        let _ = c.validate();
    }
    let mid = (0..=text.len() / 2).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    let (a, b) = text.split_at(mid);
    let _ = statenode::pattern::glob(a.as_bytes(), b.as_bytes());
    let _ = statenode::pattern::topic_matches(a, b);
    let _ = statenode::pattern::filter_covers(a, b);
});
