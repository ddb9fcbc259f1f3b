//! The AIO state store's RESP3 requests (MQTT door): parsed into arguments.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(args) = statenode::mqtt::resp3::parse_request(data) {
        assert!(args.iter().map(|a| a.len()).sum::<usize>() <= data.len());
    }
});
