//! CRL generation time and size at scale (issue #6 benchmark): builds, lints, signs (software SM2
//! key: one signature, the same cost as through the HSM) and verifies full CRLs of N revoked
//! entries, and prints a table.
//!
//! `cargo run --release -p pki --example crl-scale [-- N ...]` (default: 1000 100000 1000000)

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use pki::crl::{CrlReason, CrlRequest, RevokedEntry, build_crl_tbs};
use pki::{CertSerial, verify_crl};

fn main() -> Result<()> {
    let sizes: Vec<usize> = match std::env::args().skip(1).map(|a| a.parse()).collect::<Result<Vec<_>, _>>()? {
        v if v.is_empty() => vec![1_000, 100_000, 1_000_000],
        v => v,
    };
    let policy = pki::PolicySet::embedded_default()?;
    let now = SystemTime::now();
    let root = support::make_root(&policy, now);
    let issuing = support::make_issuing(&policy, &root, now);
    println!("| revoked entries | build + lint | sign | assemble (verifies) | DER size | verify (relying party) |");
    println!("|---|---|---|---|---|---|");
    for n in sizes {
        let entries: Vec<RevokedEntry> = (0..n)
            .map(|i| {
                Ok(RevokedEntry {
                    serial: CertSerial::generate()?,
                    revoked_at: now - Duration::from_secs(i as u64 % 86_400),
                    reason: Some(if i % 3 == 0 { CrlReason::KeyCompromise } else { CrlReason::CessationOfOperation }),
                    invalidity_date: None,
                })
            })
            .collect::<Result<_, getrandom::Error>>()?;
        let req = CrlRequest {
            number: 7,
            this_update: now,
            next_update: now + Duration::from_secs(86_400),
            entries: &entries,
            delta_base: None,
            distribution_point: Some("http://127.0.0.1:7080/crl/issuing.crl"),
        };
        let t = Instant::now();
        let tbs = build_crl_tbs(&issuing.info, &req)?;
        let build = t.elapsed();
        let t = Instant::now();
        let sig = hsm::Signer::sign(&issuing.key, tbs.to_be_signed())?;
        let sign = t.elapsed();
        let t = Instant::now();
        let crl = tbs.assemble(sig.as_der())?;
        let assemble = t.elapsed();
        let der = der::Encode::to_der(&crl)?;
        let t = Instant::now();
        let v = verify_crl(&der, &issuing.info)?;
        let verify = t.elapsed();
        assert_eq!(v.revoked.len(), n);
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        println!(
            "| {n} | {} | {} | {} | {:.1} MB ({} bytes/entry) | {} |",
            ms(build),
            ms(sign),
            ms(assemble),
            der.len() as f64 / 1e6,
            der.len() / n.max(1),
            ms(verify)
        );
    }
    Ok(())
}
