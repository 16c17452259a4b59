//! CRLs: our validator verifies what we sign, and refuses tampering, the wrong issuer and bad requests.

mod support;

use std::time::{Duration, SystemTime};

use pki::CertSerial;
use pki::crl::{CrlError, CrlReason, CrlRequest, RevokedEntry, build_crl_tbs, verify_crl};
use support::{make_issuing, make_root, policy};

fn entry(n: u8, reason: Option<CrlReason>) -> RevokedEntry {
    RevokedEntry {
        serial: CertSerial::from_random([n; 16]),
        revoked_at: SystemTime::now(),
        reason,
        invalidity_date: None,
    }
}

fn request(entries: &[RevokedEntry]) -> CrlRequest<'_> {
    let now = SystemTime::now();
    CrlRequest {
        number: 7,
        this_update: now,
        next_update: now + Duration::from_secs(3600),
        entries,
        delta_base: None,
        distribution_point: None,
    }
}

fn signed(ca: &support::Ca, req: &CrlRequest) -> Vec<u8> {
    der::Encode::to_der(&support::sign_crl(ca, req)).expect("der")
}

#[test]
fn signed_crl_verifies_and_reads_back() {
    let p = policy();
    let root = make_root(&p, SystemTime::now());
    let issuing = make_issuing(&p, &root, SystemTime::now());
    let entries =
        [entry(1, Some(CrlReason::KeyCompromise)), entry(2, None), entry(3, Some(CrlReason::CertificateHold))];
    let der = signed(&issuing, &request(&entries));
    let crl = verify_crl(&der, &issuing.info).expect("verifies");
    assert_eq!(crl.number, Some(7));
    assert_eq!(crl.delta_base, None);
    let got: Vec<_> = crl.revoked.iter().map(|(s, r)| (s.clone(), *r)).collect();
    assert_eq!(
        got,
        vec![
            (entries[0].serial.clone(), Some(CrlReason::KeyCompromise)),
            (entries[1].serial.clone(), None),
            (entries[2].serial.clone(), Some(CrlReason::CertificateHold)),
        ]
    );

    let delta_entries = [entry(4, Some(CrlReason::Superseded))];
    let delta = CrlRequest { number: 8, delta_base: Some(7), ..request(&delta_entries) };
    let crl = verify_crl(&signed(&issuing, &delta), &issuing.info).expect("delta verifies");
    assert_eq!((crl.number, crl.delta_base), (Some(8), Some(7)));

    let empty = verify_crl(&signed(&issuing, &request(&[])), &issuing.info).expect("empty CRL");
    assert!(empty.revoked.is_empty());
}

#[test]
fn tampered_crl_fails() {
    let p = policy();
    let root = make_root(&p, SystemTime::now());
    let issuing = make_issuing(&p, &root, SystemTime::now());
    let entries = [entry(1, Some(CrlReason::KeyCompromise))];
    let der = signed(&issuing, &request(&entries));
    // Flip one bit of the revoked serial.
    let mut bad = der.clone();
    let at = bad.windows(16).position(|w| w == entries[0].serial.as_bytes()).expect("serial in CRL");
    bad[at + 3] ^= 0x01;
    assert!(matches!(verify_crl(&bad, &issuing.info), Err(CrlError::BadSignature(_))));
    // Signed by the issuing CA, checked against the root.
    assert!(matches!(verify_crl(&der, &root.info), Err(CrlError::WrongIssuer { .. })));
    // Same name, other key.
    let other = make_issuing(&p, &root, SystemTime::now());
    assert!(matches!(verify_crl(&der, &other.info), Err(CrlError::BadSignature(_))));
    assert!(matches!(verify_crl(&der[..der.len() - 1], &issuing.info), Err(CrlError::Malformed(_))));
}

#[test]
fn bad_requests_are_refused_before_signing() {
    let p = policy();
    let root = make_root(&p, SystemTime::now());
    let dup = [entry(1, None), entry(1, Some(CrlReason::Superseded))];
    assert!(matches!(build_crl_tbs(&root.info, &request(&dup)), Err(CrlError::DuplicateSerial(_))));
    let now = SystemTime::now();
    let backwards = CrlRequest { this_update: now, next_update: now, ..request(&[]) };
    assert!(matches!(build_crl_tbs(&root.info, &backwards), Err(CrlError::NextUpdateNotAfterThisUpdate)));
    let delta = CrlRequest { number: 7, delta_base: Some(7), ..request(&[]) };
    assert!(matches!(build_crl_tbs(&root.info, &delta), Err(CrlError::DeltaBaseNotBelow { base: 7, number: 7 })));
    // A signature from the wrong key is not assembled.
    let tbs = build_crl_tbs(&root.info, &request(&[])).expect("tbs");
    let wrong = hsm::Signer::sign(&support::key(), tbs.to_be_signed()).expect("sign");
    assert!(matches!(tbs.assemble(wrong.as_der()), Err(CrlError::BadSignature(_))));
}
