//! Writes a small SM2 PKI as PEM files: root CA, issuing CA, a terminal key + CSR, its
//! certificate, and a CRL revoking a second terminal.
//!
//! `cargo run -p pki --example issue-demo -- OUTDIR`
//!
//! The keys are in-memory software keys: this shows the `pki` crate, not the CA (whose keys
//! live in an HSM).

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use pki::crl::{CrlReason, CrlRequest, RevokedEntry, build_crl_tbs};
use pki::pem::{certificate_to_pem, crl_to_pem, der_to_pem};
use pki::{TerminalClass, validate_chain, verify_csr};

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        bail!("usage: issue-demo OUTDIR");
    };
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let write = |name: &str, text: &str| -> Result<()> {
        let path = out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
        Ok(())
    };

    let policy = pki::PolicySet::embedded_default()?;
    let now = SystemTime::now();
    let root = support::make_root(&policy, now);
    let issuing = support::make_issuing(&policy, &root, now);
    write("root.pem", &certificate_to_pem(&root.cert)?)?;
    write("issuing.pem", &certificate_to_pem(&issuing.cert)?)?;

    // The terminal: its key would live in its secure element; here it is in memory.
    let serial = policy.serial_rule().parse("HSTM01261100000K")?;
    let terminal_key = support::key();
    let csr = support::csr(&terminal_key, &format!("CN={serial},serialNumber={serial}"));
    write("terminal.key.pem", &terminal_key.to_pkcs8_pem()?)?;
    write("terminal.csr.pem", &der_to_pem("CERTIFICATE REQUEST", &csr)?)?;

    let verified = verify_csr(&csr, &pki::SignerId::default())?;
    verified.check_terminal_subject(&serial)?;
    let vars = support::terminal_vars(serial.as_str(), TerminalClass::II.as_str());
    let cert = support::issue(&policy, "terminal", &vars, verified.public_key(), &issuing, now);
    validate_chain(&cert, std::slice::from_ref(&issuing.cert), &root.cert, now, &pki::SignerId::default())?;
    write("terminal.pem", &certificate_to_pem(&cert)?)?;

    // A second terminal, revoked for key compromise.
    let other = support::issue(
        &policy,
        "terminal",
        &support::terminal_vars("HSTM01261100001I", "I"),
        support::key().sm2_public_key(),
        &issuing,
        now,
    );
    let entries = [RevokedEntry {
        serial: pki::CertSerial::of(&other).context("serial")?,
        revoked_at: now,
        reason: Some(CrlReason::KeyCompromise),
        invalidity_date: Some(now - Duration::from_secs(3600)),
    }];
    let req = CrlRequest {
        number: 1,
        this_update: now,
        next_update: now + Duration::from_secs(86_400),
        entries: &entries,
        delta_base: None,
        // A full CRL: no issuingDistributionPoint, so no critical extension GmSSL would refuse.
        distribution_point: None,
    };
    let tbs = build_crl_tbs(&issuing.info, &req)?;
    let sig = hsm::Signer::sign(&issuing.key, tbs.to_be_signed())?;
    write("crl.pem", &crl_to_pem(&tbs.assemble(sig.as_der())?)?)?;
    Ok(())
}
