//! Identity key files: PBES2 (PBKDF2-HMAC-SHA256, SM4-CBC) PKCS#8, readable by stock OpenSSL
//! and reading what OpenSSL writes.

use std::process::Command;

use hsm::HsmError;
use hsm::Signer;
use hsm::backend::file::{decrypt, encrypt};
use hsm::backend::memory::SoftwareSm2Key;
use pki::SignerId;

fn openssl(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl binary (scripts/test.sh installs it)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn round_trip_and_wrong_passphrase() {
    let key = SoftwareSm2Key::generate(SignerId::default()).expect("key");
    let pem = encrypt(&key, b"correct horse", 1000).expect("encrypt");
    assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
    let back = decrypt(&pem, b"correct horse", SignerId::default()).expect("decrypt");
    assert_eq!(back.public_key(), key.public_key());
    assert!(matches!(decrypt(&pem, b"wrong horse", SignerId::default()), Err(HsmError::Login(_))));
    assert!(matches!(encrypt(&key, b"", 1000), Err(HsmError::BadKey(_))));
    let plain = key.to_pkcs8_pem().expect("plain");
    assert!(matches!(decrypt(&plain, b"x", SignerId::default()), Err(HsmError::BadKey(m)) if m.contains("PEM label")));
}

#[test]
fn openssl_reads_ours_and_we_read_openssls() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let key = SoftwareSm2Key::generate(SignerId::default()).expect("key");
    std::fs::write(d.join("ours.pem"), encrypt(&key, b"s3cret pass", 2048).expect("encrypt")).expect("write");
    let text = openssl(d, &["pkey", "-in", "ours.pem", "-passin", "pass:s3cret pass", "-noout", "-text"]);
    assert!(text.contains("ASN1 OID: SM2"), "{text}");
    let pub_ours = openssl(d, &["pkey", "-in", "ours.pem", "-passin", "pass:s3cret pass", "-pubout"]);
    std::fs::write(d.join("k.pem"), key.to_pkcs8_pem().expect("pem").as_bytes()).expect("write");
    assert_eq!(pub_ours, openssl(d, &["pkey", "-in", "k.pem", "-pubout"]));

    openssl(d, &["genpkey", "-algorithm", "SM2", "-out", "theirs-plain.pem"]);
    openssl(
        d,
        &[
            "pkcs8",
            "-topk8",
            "-in",
            "theirs-plain.pem",
            "-v2",
            "sm4-cbc",
            "-v2prf",
            "hmacWithSHA256",
            "-passout",
            "pass:abc12345",
            "-out",
            "theirs.pem",
        ],
    );
    let theirs =
        decrypt(&std::fs::read_to_string(d.join("theirs.pem")).expect("read"), b"abc12345", SignerId::default())
            .expect("decrypt OpenSSL's");
    let plain = SoftwareSm2Key::from_pkcs8_pem(
        &std::fs::read_to_string(d.join("theirs-plain.pem")).expect("read"),
        SignerId::default(),
    )
    .expect("plain");
    assert_eq!(theirs.public_key(), plain.public_key());
    // AES is not what we accept, and the message says what is.
    openssl(
        d,
        &[
            "pkcs8",
            "-topk8",
            "-in",
            "theirs-plain.pem",
            "-v2",
            "aes-256-cbc",
            "-passout",
            "pass:abc12345",
            "-out",
            "aes.pem",
        ],
    );
    match decrypt(&std::fs::read_to_string(d.join("aes.pem")).expect("read"), b"abc12345", SignerId::default()) {
        Err(HsmError::BadKey(m)) => assert!(m.contains("sm4-cbc"), "{m}"),
        Err(other) => panic!("unexpected {other:?}"),
        Ok(_) => panic!("AES key accepted"),
    }
}
