//! This crate against GmSSL's command line: GmSSL verifies what we sign and we verify what GmSSL
//! signs, and both refuse a changed message.
//!
//! GmSSL comes from `HSCA_GMSSL` (the `gmssl` binary), else from running
//! `../shared/interop/build-gmssl.sh` beside the repository; without either the test is skipped
//! with a note, except under `CI`. `SM2_DSA_GMSSL_CASES` sets the count (default 10).

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use sm2_dsa::{Signature, SigningKey, VerifyingKey};

const ID: &str = "1234567812345678";
/// `SubjectPublicKeyInfo` up to the point: id-ecPublicKey, curve SM2, BIT STRING of 66 bytes.
const SPKI_PREFIX: [u8; 27] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf,
    0x55, 0x01, 0x82, 0x2d, 0x03, 0x42, 0x00, 0x04,
];

fn gmssl() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HSCA_GMSSL").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/interop/build-gmssl.sh");
    if script.exists() {
        let out = Command::new("bash").arg(&script).output().expect("run build-gmssl.sh");
        assert!(out.status.success(), "build-gmssl.sh: {}", String::from_utf8_lossy(&out.stderr));
        return Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    assert!(std::env::var_os("CI").is_none(), "CI must run the GmSSL checks: set HSCA_GMSSL");
    eprintln!("GmSSL checks skipped: no HSCA_GMSSL and no {}", script.display());
    None
}

fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("ascii")).collect();
    format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", lines.join("\n"))
}

fn point_from_pem(text: &str) -> Vec<u8> {
    let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
    assert_eq!(&der[..SPKI_PREFIX.len() - 1], &SPKI_PREFIX[..SPKI_PREFIX.len() - 1], "an SM2 SPKI");
    der[der.len() - 65..].to_vec()
}

fn gmssl_verifies(gmssl: &Path, dir: &Path, msg: &str, sig: &str) -> bool {
    let out = Command::new(gmssl)
        .args(["sm2verify", "-pubkey", "ours.pem", "-id", ID, "-in", msg, "-sig", sig])
        .current_dir(dir)
        .output()
        .expect("run gmssl");
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains("success")
}

#[test]
fn gmssl_and_this_crate_accept_each_others_signatures() {
    let Some(gmssl) = gmssl() else { return };
    let cases: usize = std::env::var("SM2_DSA_GMSSL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let dir = tempfile::tempdir().expect("tmp");
    let dir = dir.path();
    let ok = Command::new(&gmssl)
        .args(["sm2keygen", "-pass", "test", "-out", "theirs.key", "-pubout", "theirs.pem"])
        .current_dir(dir)
        .status()
        .expect("keygen");
    assert!(ok.success());
    let theirs =
        VerifyingKey::from_sec1(&point_from_pem(&std::fs::read_to_string(dir.join("theirs.pem")).expect("pem")))
            .expect("GmSSL's key");
    let ours = SigningKey::generate().expect("key");
    let mut spki = SPKI_PREFIX[..SPKI_PREFIX.len() - 1].to_vec();
    spki.extend_from_slice(&ours.verifying_key().to_sec1_uncompressed());
    std::fs::write(dir.join("ours.pem"), pem(&spki)).expect("write");

    for i in 0..cases {
        let mut msg = vec![0u8; 1 + i * 37 % 500];
        getrandom::fill(&mut msg).expect("random");
        std::fs::write(dir.join("msg"), &msg).expect("write");
        let mut changed = msg.clone();
        changed[0] ^= 1;
        std::fs::write(dir.join("changed"), &changed).expect("write");

        let sig = ours.sign(ID.as_bytes(), &msg).expect("sign");
        std::fs::write(dir.join("ours.sig"), sig.to_der().as_bytes()).expect("write");
        assert!(gmssl_verifies(&gmssl, dir, "msg", "ours.sig"), "GmSSL refused our signature");
        assert!(!gmssl_verifies(&gmssl, dir, "changed", "ours.sig"), "GmSSL accepted a changed message");

        let out = Command::new(&gmssl)
            .args(["sm2sign", "-key", "theirs.key", "-pass", "test", "-id", ID, "-in", "msg"])
            .current_dir(dir)
            .output()
            .expect("sign");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let sig = Signature::from_der(&out.stdout).expect("DER signature");
        for key in [theirs.clone(), theirs.clone().precomputed()] {
            assert_eq!(key.verify(ID.as_bytes(), &msg, &sig), Ok(()));
            assert_eq!(key.verify(ID.as_bytes(), &changed, &sig), Err(sm2_dsa::Error::Invalid));
        }
    }
}
