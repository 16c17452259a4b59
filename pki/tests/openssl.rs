//! Interop with stock OpenSSL 3 (the `openssl` binary): it must accept what we produce, link by
//! link, and we must accept what it produces. OpenSSL 3.0 applies `-vfyopt distid:` only to the
//! certificate being checked (openssl/openssl#23471), so each link is verified on its own.

mod support;

use std::path::Path;
use std::time::{Duration, SystemTime};

use pki::crl::{CrlReason, CrlRequest, RevokedEntry};
use pki::pem::{certificate_to_pem, crl_to_pem, der_to_pem};
use pki::{CertSerial, CsrError, SignerId, TerminalClass, csr_der, verify_csr};
use support::{issue, make_issuing, make_root, policy, terminal_vars};

const DISTID: &str = "distid:1234567812345678";

use support::openssl;

/// `openssl verify -partial_chain` of one link, with the standard SM2 signer ID.
fn verify_link(dir: &Path, ca: &str, cert: &str) -> (bool, String) {
    openssl(dir, &["verify", "-vfyopt", DISTID, "-partial_chain", "-CAfile", ca, cert])
}

fn serial_of(cert: &pki::Certificate) -> CertSerial {
    CertSerial::of(cert).expect("positive serial")
}

#[test]
fn openssl_verifies_each_link_and_parses_every_field() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let policy = policy();
    let now = SystemTime::now();
    let root = make_root(&policy, now);
    let issuing = make_issuing(&policy, &root, now);
    let term_key = support::key();
    let cert =
        issue(&policy, "terminal", &terminal_vars("HSTM01261100000K", "III"), term_key.sm2_public_key(), &issuing, now);
    for (name, c) in [("root.pem", &root.cert), ("issuing.pem", &issuing.cert), ("terminal.pem", &cert)] {
        std::fs::write(d.join(name), certificate_to_pem(c).expect("pem")).expect("write");
    }

    let (ok, out) = openssl(d, &["verify", "-vfyopt", DISTID, "-CAfile", "root.pem", "issuing.pem"]);
    assert!(ok && out.contains("issuing.pem: OK"), "{out}");
    let (ok, out) = verify_link(d, "issuing.pem", "terminal.pem");
    assert!(ok && out.contains("terminal.pem: OK"), "{out}");
    // (`-check_ss_sig` on the root fails in OpenSSL 3.0 even for its own chains: the root's
    // self-signature is checked by our validator, tests/chain.rs.)

    // Negative control: the link does not verify against a CA that did not sign it.
    let (ok, out) = verify_link(d, "root.pem", "terminal.pem");
    assert!(!ok, "terminal must not verify against the root directly: {out}");

    let (ok, text) = openssl(d, &["x509", "-in", "terminal.pem", "-noout", "-text"]);
    assert!(ok, "{text}");
    for want in [
        "Version: 3 (0x2)",
        "Signature Algorithm: SM2-with-SM3",
        "ASN1 OID: SM2",
        "CN = HSTM01261100000K, serialNumber = HSTM01261100000K",
        "OU = Terminal Class III",
        "O = HSTM",
        "X509v3 Key Usage: critical\n                Digital Signature",
        "TLS Web Client Authentication",
        "X509v3 Subject Key Identifier",
        "X509v3 Authority Key Identifier",
        "Policy: 1.3.6.1.5.5.7.13.2",
        "URI:http://127.0.0.1:7080/crl/issuing-0.crl",
        "OCSP - URI:http://127.0.0.1:7080/ocsp",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    // An end entity omits basicConstraints (RFC 5280 §4.2.1.9; GmSSL refuses an empty one).
    assert!(!text.contains("Basic Constraints"), "{text}");
    let (_, text) = openssl(d, &["x509", "-in", "issuing.pem", "-noout", "-text"]);
    assert!(text.contains("CA:TRUE, pathlen:0") && text.contains("Certificate Sign, CRL Sign"), "{text}");
    let (_, text) = openssl(d, &["x509", "-in", "root.pem", "-noout", "-text"]);
    assert!(text.contains("CA:TRUE, pathlen:1"), "{text}");

    // The serial is 16 octets and positive.
    let (_, text) = openssl(d, &["x509", "-in", "terminal.pem", "-noout", "-serial"]);
    let hex = text.trim().trim_start_matches("serial=");
    assert_eq!(hex.len(), 32, "{text}");
    assert_eq!(hex, serial_of(&cert).to_hex());
}

#[test]
fn openssl_accepts_our_csr_and_we_accept_openssls() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let key = support::key();
    let ours = support::csr(&key, "CN=HSTM01261100000K,serialNumber=HSTM01261100000K");
    std::fs::write(d.join("ours.csr"), der_to_pem("CERTIFICATE REQUEST", &ours).expect("pem")).expect("write");
    let (ok, out) = openssl(d, &["req", "-in", "ours.csr", "-verify", "-vfyopt", DISTID, "-noout"]);
    assert!(ok && out.contains("verify OK"), "{out}");

    let (ok, out) = openssl(d, &["genpkey", "-algorithm", "SM2", "-out", "k.pem"]);
    assert!(ok, "{out}");
    let subj = "/CN=HSTM01261100000K/serialNumber=HSTM01261100000K";
    let (ok, out) =
        openssl(d, &["req", "-new", "-key", "k.pem", "-sm3", "-sigopt", DISTID, "-subj", subj, "-out", "good.csr"]);
    assert!(ok, "{out}");
    let pem = std::fs::read(d.join("good.csr")).expect("read");
    let csr = verify_csr(&csr_der(&pem).expect("pem"), &SignerId::default())
        .expect("OpenSSL CSR with the standard ID is accepted");
    let serial = policy().serial_rule().parse("HSTM01261100000K").expect("serial");
    csr.check_terminal_subject(&serial).expect("subject names the serial");
    // The same OpenSSL signature through a key with precomputed multiples (what the server uses
    // for callers and for its own key).
    let info = der::Encode::to_der(&csr.request().info).expect("info");
    let sig = csr.request().signature.as_bytes().expect("octets");
    let fast = csr.public_key().clone().precomputed();
    assert_eq!(fast.verify(&SignerId::default(), &info, sig), Ok(()));
    assert!(fast.verify(&SignerId::default(), &info[1..], sig).is_err());
    // Our key reader gets the same key OpenSSL wrote.
    let k = hsm::backend::memory::SoftwareSm2Key::from_pkcs8_pem(
        &std::fs::read_to_string(d.join("k.pem")).expect("k"),
        SignerId::default(),
    )
    .expect("OpenSSL PKCS#8 key");
    assert_eq!(k.sm2_public_key(), csr.public_key());

    // Without -sigopt, OpenSSL 3 signs with an empty ID: refused, and the message says so.
    let (ok, out) = openssl(d, &["req", "-new", "-key", "k.pem", "-sm3", "-subj", subj, "-out", "empty-id.csr"]);
    assert!(ok, "{out}");
    let pem = std::fs::read(d.join("empty-id.csr")).expect("read");
    let err = verify_csr(&csr_der(&pem).expect("pem"), &SignerId::default()).expect_err("empty ID refused");
    assert!(matches!(err, CsrError::WrongSignerId(_)), "{err:?}");
    assert!(err.to_string().contains("empty SM2 signer ID"), "{err}");
}

#[test]
fn openssl_parses_full_and_delta_crls() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let policy = policy();
    let now = SystemTime::now();
    let root = make_root(&policy, now);
    let issuing = make_issuing(&policy, &root, now);
    let certs: Vec<_> = ["HSTM01261100000K", "HSTM01261100001I", "A1B2032512ZZ9Q0G"]
        .iter()
        .map(|s| {
            issue(
                &policy,
                "terminal",
                &terminal_vars(s, TerminalClass::I.as_str()),
                support::key().sm2_public_key(),
                &issuing,
                now,
            )
        })
        .collect();
    let entries = vec![
        RevokedEntry {
            serial: serial_of(&certs[0]),
            revoked_at: now,
            reason: Some(CrlReason::KeyCompromise),
            invalidity_date: Some(now - Duration::from_secs(7200)),
        },
        RevokedEntry {
            serial: serial_of(&certs[1]),
            revoked_at: now,
            reason: Some(CrlReason::Superseded),
            invalidity_date: None,
        },
    ];
    let full = CrlRequest {
        number: 41,
        this_update: now,
        next_update: now + Duration::from_secs(86_400),
        entries: &entries,
        delta_base: None,
        distribution_point: Some("http://127.0.0.1:7080/crl/issuing.crl"),
    };
    let sign = |req: &CrlRequest| support::sign_crl(&issuing, req);
    std::fs::write(d.join("full.crl"), crl_to_pem(&sign(&full)).expect("pem")).expect("write");
    let delta_entries = vec![RevokedEntry {
        serial: serial_of(&certs[2]),
        revoked_at: now,
        reason: Some(CrlReason::CessationOfOperation),
        invalidity_date: None,
    }];
    let delta = CrlRequest {
        number: 42,
        entries: &delta_entries,
        delta_base: Some(41),
        distribution_point: None,
        ..full.clone()
    };
    std::fs::write(d.join("delta.crl"), crl_to_pem(&sign(&delta)).expect("pem")).expect("write");

    let (ok, text) = openssl(d, &["crl", "-in", "full.crl", "-noout", "-text"]);
    assert!(ok, "{text}");
    for want in [
        "Version 2 (0x1)",
        "Signature Algorithm: SM2-with-SM3",
        "X509v3 CRL Number: \n                41",
        "X509v3 Authority Key Identifier",
        "X509v3 Issuing Distribution Point: critical",
        "URI:http://127.0.0.1:7080/crl/issuing.crl",
        &format!("Serial Number: {}", serial_of(&certs[0]).to_hex()),
        "Key Compromise",
        "Invalidity Date",
        &format!("Serial Number: {}", serial_of(&certs[1]).to_hex()),
        "Superseded",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(!text.contains(&serial_of(&certs[2]).to_hex()), "{text}");
    let (ok, text) = openssl(d, &["crl", "-in", "delta.crl", "-noout", "-text"]);
    assert!(ok, "{text}");
    assert!(text.contains("X509v3 Delta CRL Indicator: critical\n                41"), "{text}");
    assert!(text.contains("Cessation Of Operation") && text.contains(&serial_of(&certs[2]).to_hex()), "{text}");
}
