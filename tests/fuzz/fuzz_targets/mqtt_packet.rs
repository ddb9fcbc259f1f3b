//! MQTT v5 packets as the MQTT door reads them off a connection (`mqtt::codec::read`),
//! with a 64 KiB packet limit: any number of packets from one input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let rt = RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().unwrap());
    rt.block_on(async {
        let mut r = data;
        for _ in 0..64 {
            match statenode::mqtt::codec::read(&mut r, 64 * 1024).await {
                Ok(packet) => {
                    let _ = statenode::mqtt::codec::encode(&packet);
                }
                Err(_) => return,
            }
        }
    });
});
