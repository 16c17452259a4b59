//! The in-memory SM2 signer: signatures are DER, verify with the `sm2` crate under the signer
//! ID, and keys round-trip through PKCS#8.

use hsm::Signer;
use hsm::backend::memory::SoftwareSm2Key;
use pki::{SignerId, Sm2PublicKey};
use sm2::dsa::signature::Verifier;

#[test]
fn signature_is_der_and_verifies_with_the_sm2_crate() {
    let key = SoftwareSm2Key::generate(SignerId::default()).expect("keygen");
    let msg = b"to be signed";
    let sig = key.sign(msg).expect("sign");
    assert_eq!(sig.as_der()[0], 0x30, "DER SEQUENCE");
    let point = Sm2PublicKey::from_spki(&key.public_key()).expect("spki");
    let vk = sm2::dsa::VerifyingKey::new(pki::DEFAULT_SIGNER_ID, *point.as_sm2()).expect("vk");
    let parsed = sm2::dsa::Signature::from_der(sig.as_der()).expect("der");
    vk.verify(msg, &parsed).expect("verifies");
    // Under another signer ID it does not.
    let other = sm2::dsa::VerifyingKey::new("ALICE123@YAHOO.COM", *point.as_sm2()).expect("vk");
    assert!(other.verify(msg, &parsed).is_err());
    assert!(vk.verify(b"other message", &parsed).is_err());
    assert_eq!(key.algorithm(), pki::alg::sm2_with_sm3());
}

#[test]
fn signatures_are_randomised() {
    let key = SoftwareSm2Key::from_scalar_bytes(&[7; 32], SignerId::default()).expect("key");
    assert_ne!(key.sign(b"m").expect("sign"), key.sign(b"m").expect("sign"));
}

#[test]
fn pkcs8_round_trip_and_bad_keys() {
    let key = SoftwareSm2Key::generate(SignerId::default()).expect("keygen");
    let pem = key.to_pkcs8_pem().expect("pem");
    let back = SoftwareSm2Key::from_pkcs8_pem(&pem, SignerId::default()).expect("parse");
    assert_eq!(back.public_key(), key.public_key());
    assert!(SoftwareSm2Key::from_scalar_bytes(&[0; 32], SignerId::default()).is_err(), "zero scalar");
    assert!(SoftwareSm2Key::from_scalar_bytes(&[0xff; 32], SignerId::default()).is_err(), "scalar ≥ n");
    assert!(
        SoftwareSm2Key::from_pkcs8_pem(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            SignerId::default()
        )
        .is_err()
    );
    // Debug never shows the private key.
    let shown = format!("{key:?}");
    assert!(!shown.contains(pem.lines().nth(1).unwrap_or("x")), "{shown}");
}
