//! The names a client certificate gives (`tls::cert_name`, `tls::common_name`: a DER walk of
//! the subject), as a certificate of any shape reaches them.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rustls::pki_types::CertificateDer;

fuzz_target!(|data: &[u8]| {
    if let Some(name) = statenode::tls::common_name(data) {
        assert!(!name.is_empty() && name.len() <= 256 && !name.chars().any(char::is_control));
    }
    let _ = statenode::tls::cert_name(&CertificateDer::from(data));
});
