//! CSR parsing and verification must never panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let id = pki::SignerId::default();
    if let Ok(der) = pki::csr_der(data) {
        if let Ok(csr) = pki::verify_csr(&der, &id) {
            let _ = csr.spki();
        }
    }
    let _ = pki::verify_csr(data, &id);
});
