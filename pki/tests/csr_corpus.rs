//! Every file in `testdata/csr/` is a CSR with a known fate: `ok_*` are accepted for terminal
//! HSTM01261100000K, every other one is refused with the error named here. A file without an
//! entry fails the test, so the corpus and its expectations cannot drift apart.

use std::path::Path;

use pki::alg::SignatureError as S;
use pki::{CsrError as E, PolicySet, SignerId, csr_der, verify_csr};

fn check(bytes: &[u8]) -> Result<(), E> {
    let policy = PolicySet::embedded_default().expect("policy");
    let serial = policy.serial_rule().parse("HSTM01261100000K").expect("serial");
    let der = csr_der(bytes)?;
    verify_csr(&der, &SignerId::default())?.check_terminal_subject(&serial)
}

type Expectation = fn(&Result<(), E>) -> bool;

fn expected(name: &str) -> Option<Expectation> {
    Some(match name {
        "ok_terminal.der.csr" | "ok_cn_only.der.csr" => |r| r.is_ok(),
        "truncated.der.csr" | "not_der.der.csr" => |r| matches!(r, Err(E::Malformed(_))),
        "trailing_bytes.der.csr" => |r| matches!(r, Err(E::TrailingBytes(2))),
        "too_large.der.csr" => |r| matches!(r, Err(E::TooLarge { len: 16385 })),
        "p256_curve_key.der.csr" => |r| matches!(r, Err(E::BadKey(S::NotSm2Curve { .. }))),
        "rsa_key_type.der.csr" => |r| matches!(r, Err(E::BadKey(S::NotEcKey { .. }))),
        "off_curve_key.der.csr" => |r| matches!(r, Err(E::BadKey(S::PointNotOnCurve))),
        "infinity_key.der.csr" => |r| matches!(r, Err(E::BadKey(S::PointAtInfinity))),
        "ecdsa_sha256_algorithm.der.csr" | "sm2_algorithm_with_null_params.der.csr" => {
            |r| matches!(r, Err(E::WrongAlgorithm(S::NotSm2WithSm3 { .. })))
        }
        "empty_signer_id.der.csr" => |r| matches!(r, Err(E::WrongSignerId(S::EmptySignerId { .. }))),
        "other_signer_id.der.csr" | "tampered_signature.der.csr" | "tampered_subject.der.csr" => {
            |r| matches!(r, Err(E::BadSignature(S::Invalid)))
        }
        "raw_rs_signature.der.csr" => |r| matches!(r, Err(E::BadSignature(S::MalformedSignature))),
        "other_terminal_serial.der.csr" | "mixed_serials.der.csr" | "no_serial_in_subject.der.csr" => {
            |r| matches!(r, Err(E::SubjectMismatch { .. }))
        }
        _ => return None,
    })
}

#[test]
fn every_corpus_file_meets_its_expectation() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/csr");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("testdata/csr") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).expect("name").to_owned();
        let want = expected(&name).unwrap_or_else(|| panic!("{name} has no expectation in this test"));
        let got = check(&std::fs::read(&path).expect("read"));
        assert!(want(&got), "{name}: got {got:?}");
        seen += 1;
    }
    assert_eq!(seen, 20, "corpus size changed: update this test");
}

#[test]
fn empty_signer_id_error_tells_the_operator_what_to_do() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/csr");
    let err = check(&std::fs::read(dir.join("empty_signer_id.der.csr")).expect("read")).expect_err("refused");
    let msg = err.to_string();
    assert!(msg.contains("empty SM2 signer ID") && msg.contains("-sigopt distid:1234567812345678"), "{msg}");
}

#[test]
fn pem_input_is_accepted_and_wrong_pem_label_refused() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/csr");
    let der = std::fs::read(dir.join("ok_terminal.der.csr")).expect("read");
    let pem = pki::pem::der_to_pem("CERTIFICATE REQUEST", &der).expect("pem");
    check(pem.as_bytes()).expect("PEM accepted");
    let wrong = pki::pem::der_to_pem("CERTIFICATE", &der).expect("pem");
    assert!(matches!(check(wrong.as_bytes()), Err(E::Malformed(m)) if m.contains("PEM label")));
}
