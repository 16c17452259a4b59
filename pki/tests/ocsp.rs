//! OCSP: requests from stock `openssl ocsp` are read and matched to our issuing CA; the responses
//! we sign parse in OpenSSL with the right status, times and nonce; our relying-party check
//! accepts them and refuses tampering, unauthorized responders and stale or future answers.
//! (OpenSSL 3.0 cannot verify SM2 signatures made with the standard signer ID, so `-noverify`
//! is used there and signatures are checked by `verify_response`.)

mod support;

use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine;
use der::{Decode, Encode};
use hsm::Signer;
use hsm::backend::memory::SoftwareSm2Key;
use pki::ocsp::{
    CertId, CertIdHash, CertStatus, IssuerHashes, OcspError, OcspResponseStatus, Responder, ResponseRequest,
    SingleResponse, asn1, build_request, build_response_tbs, error_response, parse_get_path, parse_request,
    verify_response,
};
use pki::pem::certificate_to_pem;
use pki::{CertSerial, Certificate, CrlReason, PolicySet, SignerId};
use support::{Ca, issue, make_issuing, make_ocsp_signer, make_root, policy, sign_ocsp, terminal_vars};

struct World {
    policy: PolicySet,
    root: Ca,
    issuing: Ca,
    terminal: Certificate,
    now: SystemTime,
}

fn world() -> World {
    let policy = policy();
    let now = SystemTime::now();
    let root = make_root(&policy, now);
    let issuing = make_issuing(&policy, &root, now);
    let terminal = issue(
        &policy,
        "terminal",
        &terminal_vars("HSTM01261100000K", "III"),
        support::key().sm2_public_key(),
        &issuing,
        now,
    );
    World { policy, root, issuing, terminal, now }
}

fn serial(cert: &Certificate) -> CertSerial {
    CertSerial::of(cert).expect("positive serial")
}

fn hashes(cert: &Certificate) -> IssuerHashes {
    IssuerHashes::new(cert).expect("hashes")
}

fn single(cert_id: CertId, status: CertStatus, now: SystemTime) -> SingleResponse {
    SingleResponse { cert_id, status, this_update: now, next_update: Some(now + Duration::from_secs(3600)) }
}

fn revoked(now: SystemTime) -> CertStatus {
    CertStatus::Revoked { at: now - Duration::from_secs(600), reason: Some(CrlReason::KeyCompromise) }
}

/// A response signed by the issuing CA itself.
fn by_issuer(w: &World, responses: &[SingleResponse], nonce: Option<&[u8]>) -> Vec<u8> {
    let req = ResponseRequest { responder: &w.issuing.cert, produced_at: w.now, responses, nonce, certs: &[] };
    sign_ocsp(&w.issuing.key, &req)
}

fn verify(w: &World, der: &[u8]) -> Result<pki::VerifiedResponse, OcspError> {
    verify_response(der, &w.issuing.cert, &SignerId::default(), w.now)
}

/// Wraps signed `ResponseData` into an `OCSPResponse` without any check: a forger's tool.
fn forge(tbs: &[u8], key: &SoftwareSm2Key, certs: Vec<Certificate>) -> Vec<u8> {
    let sig = key.sign(tbs).expect("sign");
    let basic = asn1::BasicOcspResponse {
        tbs_response_data: asn1::ResponseData::from_der(tbs).expect("tbs"),
        signature_algorithm: pki::alg::sm2_with_sm3(),
        signature: der::asn1::BitString::from_bytes(sig.as_der()).expect("bits"),
        certs: (!certs.is_empty()).then_some(certs),
    };
    asn1::OcspResponse {
        response_status: OcspResponseStatus::Successful,
        response_bytes: Some(asn1::ResponseBytes {
            response_type: pki::ocsp::ID_PKIX_OCSP_BASIC,
            response: der::asn1::OctetString::new(basic.to_der().expect("der")).expect("octets"),
        }),
    }
    .to_der()
    .expect("der")
}

/// A good response's `ResponseData` re-named to `responder` (whose key the forger holds).
fn tbs_naming(w: &World, responder: &Certificate) -> Vec<u8> {
    let id = hashes(&w.issuing.cert).cert_id(CertIdHash::Sha1, &serial(&w.terminal));
    let responses = [single(id, CertStatus::Good, w.now)];
    let req = ResponseRequest {
        responder: &w.issuing.cert,
        produced_at: w.now,
        responses: &responses,
        nonce: None,
        certs: &[],
    };
    let mut data = asn1::ResponseData::from_der(build_response_tbs(&req).expect("tbs").to_be_signed()).expect("data");
    data.responder_id = asn1::ResponderId::ByName(responder.tbs_certificate().subject().clone());
    data.to_der().expect("der")
}

#[test]
fn good_revoked_and_unknown_round_trip() {
    let w = world();
    let id = hashes(&w.issuing.cert).cert_id(CertIdHash::Sha1, &serial(&w.terminal));
    for status in [CertStatus::Good, revoked(w.now), CertStatus::Unknown] {
        let der = by_issuer(&w, &[single(id.clone(), status, w.now)], Some(&[7u8; 16]));
        let v = verify(&w, &der).expect("verifies");
        assert_eq!(v.responder, Responder::Issuer);
        assert_eq!(v.responses.len(), 1);
        let got = v.status_of(&serial(&w.terminal)).expect("answer for the terminal");
        assert_eq!(got.cert_id, id);
        assert_eq!(got.this_update, pki::time::whole_seconds(w.now));
        assert_eq!(got.next_update, Some(pki::time::whole_seconds(w.now + Duration::from_secs(3600))));
        let want = match status {
            CertStatus::Revoked { at, reason } => CertStatus::Revoked { at: pki::time::whole_seconds(at), reason },
            s => s,
        };
        assert_eq!(got.status, want);
        v.check_nonce(&[7u8; 16]).expect("nonce echoed");
        assert_eq!(v.check_nonce(&[8u8; 16]), Err(OcspError::NonceMismatch));
    }
    // Several answers in one response, SM3 and SHA-256 CertIDs, no nonce.
    let h = hashes(&w.issuing.cert);
    let other = CertSerial::from_random([9; 16]);
    let responses = [
        single(h.cert_id(CertIdHash::Sm3, &serial(&w.terminal)), CertStatus::Good, w.now),
        single(h.cert_id(CertIdHash::Sha256, &other), revoked(w.now), w.now),
    ];
    let v = verify(&w, &by_issuer(&w, &responses, None)).expect("verifies");
    assert_eq!(v.nonce, None);
    assert!(v.check_nonce(&[7u8; 16]).is_err());
    assert_eq!(
        v.status_of(&other).map(|r| r.status),
        Some(revoked(w.now)).map(|s| match s {
            CertStatus::Revoked { at, reason } => CertStatus::Revoked { at: pki::time::whole_seconds(at), reason },
            s => s,
        })
    );
}

#[test]
fn tampering_and_unauthorized_signers_are_refused() {
    let w = world();
    let id = hashes(&w.issuing.cert).cert_id(CertIdHash::Sha1, &serial(&w.terminal));
    let der = by_issuer(&w, &[single(id, CertStatus::Good, w.now)], None);
    verify(&w, &der).expect("the untampered response verifies");

    // One bit of the serial flipped.
    let s = serial(&w.terminal);
    let at = der.windows(s.as_bytes().len()).position(|x| x == s.as_bytes()).expect("serial in response");
    let mut bad = der.clone();
    bad[at + 5] ^= 0x01;
    assert!(matches!(verify(&w, &bad), Err(OcspError::BadSignature(_))), "{:?}", verify(&w, &bad));

    // A rogue key signs a response naming the issuing CA.
    let rogue = support::key();
    let forged = forge(&tbs_naming(&w, &w.issuing.cert), &rogue, vec![]);
    assert!(matches!(verify(&w, &forged), Err(OcspError::BadSignature(_))));
    // The issuing CA's own key through the same forging path verifies (the control).
    verify(&w, &forge(&tbs_naming(&w, &w.issuing.cert), &w.issuing.key, vec![])).expect("control");

    // A delegated signer issued by another CA (same CA name, other key).
    let other_root = make_root(&w.policy, w.now);
    let other_issuing = make_issuing(&w.policy, &other_root, w.now);
    let (foreign, foreign_key) = make_ocsp_signer(&w.policy, &other_issuing, w.now);
    let forged = forge(&tbs_naming(&w, &foreign), &foreign_key, vec![foreign.clone()]);
    assert!(matches!(verify(&w, &forged), Err(OcspError::ResponderNotIssuedByIssuer(_))), "{:?}", verify(&w, &forged));

    // Our delegated signer, but its certificate is not in the response.
    let (signer, signer_key) = make_ocsp_signer(&w.policy, &w.issuing, w.now);
    let forged = forge(&tbs_naming(&w, &signer), &signer_key, vec![]);
    assert_eq!(verify(&w, &forged), Err(OcspError::UnknownResponder));

    // A certificate issued by our CA but without EKU OCSPSigning (a terminal's).
    let term_key = support::key();
    let term = issue(
        &w.policy,
        "terminal",
        &terminal_vars("HSTM01261100001I", "I"),
        term_key.sm2_public_key(),
        &w.issuing,
        w.now,
    );
    let forged = forge(&tbs_naming(&w, &term), &term_key, vec![term.clone()]);
    assert!(matches!(verify(&w, &forged), Err(OcspError::ResponderNotAuthorized(_))), "{:?}", verify(&w, &forged));
    // ... and the builder refuses to make that response at all.
    let responses = [single(hashes(&w.issuing.cert).cert_id(CertIdHash::Sha1, &s), CertStatus::Good, w.now)];
    let req = ResponseRequest {
        responder: &term,
        produced_at: w.now,
        responses: &responses,
        nonce: None,
        certs: std::slice::from_ref(&term),
    };
    assert!(matches!(build_response_tbs(&req), Err(OcspError::ResponderNotAuthorized(_))));

    // Signed by the root, checked against the issuing CA: the root is no responder for it.
    let forged = forge(&tbs_naming(&w, &w.root.cert), &w.root.key, vec![w.root.cert.clone()]);
    assert!(matches!(verify(&w, &forged), Err(OcspError::ResponderNotIssuedByIssuer(_))));
}

#[test]
fn delegated_responder_is_accepted_while_valid() {
    let w = world();
    let (signer, signer_key) = make_ocsp_signer(&w.policy, &w.issuing, w.now);
    let nocheck: Vec<_> = signer
        .tbs_certificate()
        .extensions()
        .into_iter()
        .flatten()
        .filter(|e| e.extn_id == pki::ocsp::ID_PKIX_OCSP_NOCHECK)
        .collect();
    assert_eq!(nocheck.len(), 1, "the ocsp-signer profile writes id-pkix-ocsp-nocheck");
    assert_eq!((nocheck[0].critical, nocheck[0].extn_value.as_bytes()), (false, &[0x05, 0x00][..]), "NULL");
    let id = hashes(&w.issuing.cert).cert_id(CertIdHash::Sha1, &serial(&w.terminal));
    let responses = [single(id, revoked(w.now), w.now)];
    let certs = [signer.clone()];
    let req =
        ResponseRequest { responder: &signer, produced_at: w.now, responses: &responses, nonce: None, certs: &certs };
    let der = sign_ocsp(&signer_key, &req);
    let v = verify(&w, &der).expect("delegated response verifies");
    assert_eq!(v.responder, Responder::Delegated(Box::new(signer.clone())));
    assert!(matches!(v.responses[0].status, CertStatus::Revoked { reason: Some(CrlReason::KeyCompromise), .. }));

    // 40 days on, the 30-day responder certificate has expired (checked before the answer's own times).
    let later = w.now + Duration::from_secs(40 * 86_400);
    let err = verify_response(&der, &w.issuing.cert, &SignerId::default(), later);
    assert_eq!(err, Err(OcspError::ResponderCertNotValid));
    // Its certificate is required in `certs`, and the signing key must be its key.
    let no_certs = ResponseRequest { certs: &[], ..req.clone() };
    assert!(matches!(build_response_tbs(&no_certs), Err(OcspError::ResponderCertMissing)));
    let tbs = build_response_tbs(&req).expect("tbs");
    let sig = w.issuing.key.sign(tbs.to_be_signed()).expect("sign");
    assert_eq!(
        tbs.clone().assemble(sig.as_der(), w.issuing.key.sm2_public_key(), &SignerId::default()),
        Err(OcspError::ResponderKeyMismatch)
    );
    assert!(matches!(
        tbs.assemble(sig.as_der(), signer_key.sm2_public_key(), &SignerId::default()),
        Err(OcspError::BadSignature(_))
    ));
}

#[test]
fn times_other_issuers_and_statuses_are_checked() {
    let w = world();
    let id = hashes(&w.issuing.cert).cert_id(CertIdHash::Sha1, &serial(&w.terminal));
    let der = by_issuer(&w, &[single(id.clone(), CertStatus::Good, w.now)], None);
    let at = |t: SystemTime| verify_response(&der, &w.issuing.cert, &SignerId::default(), t);
    at(w.now - Duration::from_secs(4 * 60)).expect("4 minutes of clock skew are tolerated");
    assert_eq!(at(w.now - Duration::from_secs(6 * 60)), Err(OcspError::NotYetValid));
    at(w.now + Duration::from_secs(3599)).expect("valid until nextUpdate");
    assert_eq!(at(w.now + Duration::from_secs(3601)), Err(OcspError::Expired));

    // An answer about the root's certificates, signed by the issuing CA.
    let root_id = hashes(&w.root.cert).cert_id(CertIdHash::Sha1, &serial(&w.issuing.cert));
    let der = by_issuer(&w, &[single(root_id, CertStatus::Good, w.now)], None);
    assert_eq!(verify(&w, &der), Err(OcspError::CertIdForOtherIssuer));
    // The issuing CA's answer checked against the root.
    let der = by_issuer(&w, &[single(id.clone(), CertStatus::Good, w.now)], None);
    assert!(verify_response(&der, &w.root.cert, &SignerId::default(), w.now).is_err());

    for s in [OcspResponseStatus::MalformedRequest, OcspResponseStatus::TryLater, OcspResponseStatus::Unauthorized] {
        assert_eq!(verify(&w, &error_response(s)), Err(OcspError::NotSuccessful(s)));
    }
    // A successful response of another type.
    let other_type = asn1::OcspResponse {
        response_status: OcspResponseStatus::Successful,
        response_bytes: Some(asn1::ResponseBytes {
            response_type: pki::ocsp::ID_PKIX_OCSP_NONCE,
            response: der::asn1::OctetString::new(vec![5, 0]).expect("octets"),
        }),
    };
    assert_eq!(verify(&w, &other_type.to_der().expect("der")), Err(OcspError::NotBasic(pki::ocsp::ID_PKIX_OCSP_NONCE)));

    // The builder's checks.
    let empty =
        ResponseRequest { responder: &w.issuing.cert, produced_at: w.now, responses: &[], nonce: None, certs: &[] };
    assert!(matches!(build_response_tbs(&empty), Err(OcspError::NoResponses)));
    let backwards = [SingleResponse { next_update: Some(w.now), ..single(id.clone(), CertStatus::Good, w.now) }];
    let req = ResponseRequest { responses: &backwards, ..empty.clone() };
    assert!(matches!(build_response_tbs(&req), Err(OcspError::NextUpdateNotAfterThisUpdate)));
    let future = [single(id.clone(), CertStatus::Revoked { at: w.now + Duration::from_secs(60), reason: None }, w.now)];
    let req = ResponseRequest { responses: &future, ..empty.clone() };
    assert!(matches!(build_response_tbs(&req), Err(OcspError::RevokedAfterThisUpdate)));
    let ok = [single(id, CertStatus::Good, w.now)];
    let long_nonce = [1u8; 33];
    let req = ResponseRequest { responses: &ok, nonce: Some(&long_nonce), ..empty.clone() };
    assert!(matches!(build_response_tbs(&req), Err(OcspError::BadNonceLength(33))));
    let req = ResponseRequest { responses: &ok, ..empty };
    let tbs = build_response_tbs(&req).expect("tbs");
    let wrong = support::key().sign(tbs.to_be_signed()).expect("sign");
    assert!(matches!(
        tbs.assemble(wrong.as_der(), w.issuing.key.sm2_public_key(), &SignerId::default()),
        Err(OcspError::BadSignature(_))
    ));
}

#[test]
fn a_prepared_responder_checks_every_signature_with_its_z() {
    let w = world();
    let id = hashes(&w.issuing.cert).cert_id(CertIdHash::Sha1, &serial(&w.terminal));
    let answers = [single(id, CertStatus::Good, w.now)];
    let prepared = pki::PreparedResponder::new(&w.issuing.cert, &[])
        .expect("prepared")
        .with_signer_id(&SignerId::default())
        .expect("Z");
    let key = w.issuing.key.sm2_public_key();
    let tbs = prepared.build(w.now, &answers, Some(b"nonce")).expect("tbs");
    let sig = w.issuing.key.sign(tbs.to_be_signed()).expect("sign");
    let der = tbs.clone().assemble(sig.as_der(), key, &SignerId::default()).expect("a good signature passes");
    verify(&w, &der).expect("and verifies as a relying party checks it");

    // Every bit of the signature matters: a corrupted one never leaves.
    let good = sig.as_der().to_vec();
    for i in 4..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        assert!(
            matches!(tbs.clone().assemble(&bad, key, &SignerId::default()), Err(OcspError::BadSignature(_))),
            "byte {i} flipped"
        );
    }
    // Non-canonical DER (a trailing byte) of a valid signature.
    let mut trailing = good.clone();
    trailing[1] += 1;
    trailing.push(0);
    assert!(matches!(tbs.clone().assemble(&trailing, key, &SignerId::default()), Err(OcspError::BadSignature(_))));
    // Another key's signature over the same bytes; the right key's over other bytes.
    let other = support::key().sign(tbs.to_be_signed()).expect("sign");
    assert!(matches!(tbs.clone().assemble(other.as_der(), key, &SignerId::default()), Err(OcspError::BadSignature(_))));
    let elsewhere = prepared.build(w.now, &answers, Some(b"other")).expect("tbs");
    let misplaced = w.issuing.key.sign(elsewhere.to_be_signed()).expect("sign");
    assert!(matches!(
        tbs.clone().assemble(misplaced.as_der(), key, &SignerId::default()),
        Err(OcspError::BadSignature(_))
    ));
    // A signer ID other than the prepared one is checked with its own Z (and this one fails).
    let other_id = SignerId::new("ALICE123@YAHOO.COM").expect("id");
    assert!(matches!(tbs.assemble(sig.as_der(), key, &other_id), Err(OcspError::BadSignature(_))));
}

#[test]
fn malformed_inputs_are_refused() {
    let w = world();
    let good =
        build_request(&[hashes(&w.issuing.cert).cert_id(CertIdHash::Sha1, &serial(&w.terminal))], Some(&[1; 16]))
            .expect("request");
    parse_request(&good).expect("the untruncated request parses");
    let resp =
        by_issuer(&w, &[single(parse_request(&good).expect("req").cert_ids[0].clone(), CertStatus::Good, w.now)], None);
    for bad in [&b""[..], &good[..good.len() - 1], &good[..3], b"garbage, not DER at all", &[0x30, 0x80, 0, 0], &resp] {
        assert!(matches!(parse_request(bad), Err(OcspError::Malformed(_))), "{:?}", parse_request(bad));
    }
    for bad in [&b""[..], &resp[..resp.len() - 1], &resp[..10], b"garbage", &good] {
        assert!(matches!(verify(&w, bad), Err(OcspError::Malformed(_))), "{:?}", verify(&w, bad));
    }
    // A nonce longer than RFC 8954 allows.
    assert!(build_request(&[], None).is_err());
    let id = hashes(&w.issuing.cert).cert_id(CertIdHash::Sha1, &serial(&w.terminal));
    assert_eq!(build_request(&[id], Some(&[0; 33])), Err(OcspError::BadNonceLength(33)));
}

#[test]
fn requests_round_trip_and_get_paths_decode() {
    let w = world();
    let h = hashes(&w.issuing.cert);
    let ids: Vec<_> = CertIdHash::ALL.iter().map(|a| h.cert_id(*a, &serial(&w.terminal))).collect();
    let der = build_request(&ids, Some(b"0123456789abcdef")).expect("request");
    let req = parse_request(&der).expect("parses");
    assert_eq!(req.cert_ids, ids);
    assert_eq!(req.nonce.as_deref(), Some(&b"0123456789abcdef"[..]));
    assert!(!req.signed);
    assert!(req.cert_ids.iter().all(|id| h.matches(id)));
    assert!(req.cert_ids.iter().all(|id| id.cert_serial() == Some(serial(&w.terminal))));
    assert!(!hashes(&w.root.cert).matches(&req.cert_ids[0]));
    let mut wrong_alg = ids[0].clone();
    wrong_alg.hash_algorithm = pki::ocsp::ID_SM3; // SHA-1 hashes labelled SM3
    assert!(!h.matches(&wrong_alg));

    // Find a request whose base64 has '+', '/' and padding, so every escape is exercised.
    let mut found = None;
    for n in 0u8..=255 {
        let der = build_request(&ids[..1], Some(&[n; 17])).expect("request");
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        if b64.contains('+') && b64.contains('/') && b64.ends_with('=') {
            found = Some((der, b64));
            break;
        }
    }
    let (der, b64) = found.expect("some nonce gives + / and =");
    let want = parse_request(&der).expect("parses");
    let escaped = b64.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D");
    let lower = b64.replace('+', "%2b").replace('/', "%2f").replace('=', "%3d");
    let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&der);
    let url_safe_padded = base64::engine::general_purpose::URL_SAFE.encode(&der);
    for path in [
        b64.clone(),
        escaped.clone(),
        lower,
        url_safe,
        url_safe_padded,
        format!("/{escaped}"),
        b64.trim_end_matches('=').to_owned(),
    ] {
        assert_eq!(parse_get_path(&path), Ok(want.clone()), "{path}");
    }
    for bad in ["", "%", "%2", "%zz", "!!!!", "QUJD", &escaped[..escaped.len() / 2]] {
        assert!(matches!(parse_get_path(bad), Err(OcspError::Malformed(_))), "{bad}: {:?}", parse_get_path(bad));
    }
}

// ---- OpenSSL interop ---------------------------------------------------------------------------

use support::openssl;

fn write_pems(w: &World, d: &Path) {
    std::fs::write(d.join("issuing.pem"), certificate_to_pem(&w.issuing.cert).expect("pem")).expect("write");
    std::fs::write(d.join("terminal.pem"), certificate_to_pem(&w.terminal).expect("pem")).expect("write");
}

/// `openssl ocsp -issuer issuing.pem -cert terminal.pem <extra> -reqout <name>`, parsed.
fn openssl_request(d: &Path, name: &str, extra: &[&str]) -> (Vec<u8>, pki::OcspRequest) {
    // The digest option must come before -cert.
    let mut args = vec!["ocsp", "-issuer", "issuing.pem"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-cert", "terminal.pem", "-reqout", name]);
    let (ok, out) = openssl(d, &args);
    assert!(ok, "{out}");
    let der = std::fs::read(d.join(name)).expect("request written");
    let req = parse_request(&der).unwrap_or_else(|e| panic!("OpenSSL request {name}: {e}"));
    (der, req)
}

#[test]
fn openssl_requests_are_read_and_matched() {
    let w = world();
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    write_pems(&w, d);
    let h = hashes(&w.issuing.cert);
    for (extra, hash) in [
        (&["-no_nonce"][..], pki::ocsp::ID_SHA1),
        (&["-sha256", "-no_nonce"][..], pki::ocsp::ID_SHA256),
        (&["-sm3", "-no_nonce"][..], pki::ocsp::ID_SM3),
    ] {
        let (_, req) = openssl_request(d, "req.der", extra);
        assert_eq!(req.cert_ids.len(), 1, "{extra:?}");
        let id = &req.cert_ids[0];
        assert_eq!(id.hash_algorithm, hash);
        assert!(h.matches(id), "{extra:?}: CertID does not match the issuing CA");
        assert!(!hashes(&w.root.cert).matches(id));
        assert_eq!(id.cert_serial(), Some(serial(&w.terminal)));
        assert_eq!(req.nonce, None);
    }
    let (_, req) = openssl_request(d, "req-nonce.der", &["-nonce"]);
    let nonce = req.nonce.expect("nonce found");
    assert_eq!(nonce.len(), 16, "OpenSSL sends 16 random octets");
    // And the GET form of the same request.
    let der = std::fs::read(d.join("req-nonce.der")).expect("read");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    let path = b64.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D");
    assert_eq!(parse_get_path(&path).expect("GET").nonce.as_deref(), Some(&nonce[..]));

    // OpenSSL reads what `build_request` writes.
    let ours = build_request(&[h.cert_id(CertIdHash::Sm3, &serial(&w.terminal))], Some(&[0xAB; 16])).expect("req");
    std::fs::write(d.join("ours.der"), &ours).expect("write");
    let (ok, text) = openssl(d, &["ocsp", "-reqin", "ours.der", "-req_text"]);
    assert!(ok, "{text}");
    for want in [
        "Hash Algorithm: sm3",
        &format!("Serial Number: {}", serial(&w.terminal).to_hex()),
        "OCSP Nonce",
        "ABABABABABABABABABABABABABABABAB",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

/// The response we make for an OpenSSL request, written to `name`.
fn respond(w: &World, d: &Path, req: &pki::OcspRequest, status: CertStatus, name: &str, nonce: Option<&[u8]>) {
    let responses: Vec<_> = req.cert_ids.iter().map(|id| single(id.clone(), status, w.now)).collect();
    std::fs::write(d.join(name), by_issuer(w, &responses, nonce)).expect("write");
}

#[test]
fn openssl_reads_our_responses() {
    let w = world();
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    write_pems(&w, d);
    let (req_der, req) = openssl_request(d, "req.der", &["-no_nonce"]);
    let hex = serial(&w.terminal).to_hex();

    respond(&w, d, &req, CertStatus::Good, "good.der", None);
    // OpenSSL's lookup compares only the hash OID, not its NULL parameters; the echo is checked
    // byte for byte here.
    let asked = asn1::OcspRequest::from_der(&req_der).expect("request").tbs_request.request_list[0].req_cert.to_der();
    let answered = std::fs::read(d.join("good.der")).expect("read");
    let asked = asked.expect("der");
    assert!(answered.windows(asked.len()).any(|x| x == asked), "CertID not echoed verbatim");
    let (ok, text) = openssl(d, &["ocsp", "-respin", "good.der", "-resp_text", "-noverify"]);
    assert!(ok, "{text}");
    for want in [
        "OCSP Response Status: successful (0x0)",
        "Response Type: Basic OCSP Response",
        "Responder Id: C = CN, O = National Healthcare Security Administration, OU = National Smart Healthcare Lab",
        "Hash Algorithm: sha1",
        &format!("Serial Number: {hex}"),
        "Cert Status: good",
        "This Update:",
        "Next Update:",
        "Signature Algorithm: SM2-with-SM3",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    // With -issuer/-cert OpenSSL looks its CertID up in our response: the echo is exact.
    let (ok, text) = openssl(
        d,
        &["ocsp", "-issuer", "issuing.pem", "-cert", "terminal.pem", "-respin", "good.der", "-noverify", "-no_nonce"],
    );
    assert!(ok && text.contains("terminal.pem: good"), "{text}");
    assert!(text.contains("This Update:") && text.contains("Next Update:"), "{text}");

    respond(&w, d, &req, revoked(w.now), "revoked.der", None);
    let (ok, text) = openssl(d, &["ocsp", "-respin", "revoked.der", "-resp_text", "-noverify"]);
    assert!(ok, "{text}");
    for want in [
        "Response Status: successful",
        "Cert Status: revoked",
        "Revocation Time:",
        "Revocation Reason: keyCompromise (0x1)",
        "This Update:",
        "Next Update:",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let (ok, text) = openssl(
        d,
        &[
            "ocsp",
            "-issuer",
            "issuing.pem",
            "-cert",
            "terminal.pem",
            "-respin",
            "revoked.der",
            "-noverify",
            "-no_nonce",
        ],
    );
    assert!(ok && text.contains("terminal.pem: revoked") && text.contains("keyCompromise"), "{text}");

    respond(&w, d, &req, CertStatus::Unknown, "unknown.der", None);
    let (ok, text) = openssl(d, &["ocsp", "-respin", "unknown.der", "-resp_text", "-noverify"]);
    assert!(ok && text.contains("Cert Status: unknown"), "{text}");

    // A delegated responder's response carries its certificate, which OpenSSL reads.
    let (signer, signer_key) = make_ocsp_signer(&w.policy, &w.issuing, w.now);
    let responses: Vec<_> = req.cert_ids.iter().map(|id| single(id.clone(), CertStatus::Good, w.now)).collect();
    let certs = [signer.clone()];
    let delegated =
        ResponseRequest { responder: &signer, produced_at: w.now, responses: &responses, nonce: None, certs: &certs };
    std::fs::write(d.join("delegated.der"), sign_ocsp(&signer_key, &delegated)).expect("write");
    let (ok, text) = openssl(d, &["ocsp", "-respin", "delegated.der", "-resp_text", "-noverify"]);
    assert!(ok, "{text}");
    for want in [
        "Responder Id: C = CN, O = National Healthcare Security Administration, OU = OCSP Responder, CN = OCSP Responder 1",
        "Cert Status: good",
        "X509v3 Key Usage: critical\n                Digital Signature",
        "X509v3 Extended Key Usage: \n                OCSP Signing",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }

    // Negative control: an answer about another serial is not found by OpenSSL's lookup.
    let other = [single(
        hashes(&w.issuing.cert).cert_id(CertIdHash::Sha1, &CertSerial::from_random([3; 16])),
        CertStatus::Good,
        w.now,
    )];
    std::fs::write(d.join("other.der"), by_issuer(&w, &other, None)).expect("write");
    let (_, text) = openssl(
        d,
        &["ocsp", "-issuer", "issuing.pem", "-cert", "terminal.pem", "-respin", "other.der", "-noverify", "-no_nonce"],
    );
    assert!(!text.contains("terminal.pem: good"), "{text}");
}

#[test]
fn openssl_matches_our_nonce() {
    let w = world();
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    write_pems(&w, d);
    let (_, req) = openssl_request(d, "req.der", &["-nonce"]);
    let nonce = req.nonce.clone().expect("nonce");
    respond(&w, d, &req, CertStatus::Good, "echo.der", Some(&nonce));
    respond(&w, d, &req, CertStatus::Good, "none.der", None);
    respond(&w, d, &req, CertStatus::Good, "wrong.der", Some(&[0x5A; 16]));
    // OpenSSL compares nonces only on its verifying path (not with -noverify), before the
    // signature, which it then fails to verify: OpenSSL 3.0 uses an empty SM2 ID (NOTES-crates.md).
    // `-no_nonce` keeps it from adding a nonce of its own to the request read from the file.
    let check = |resp: &str| {
        openssl(d, &["ocsp", "-reqin", "req.der", "-respin", resp, "-no_nonce", "-VAfile", "issuing.pem", "-resp_text"])
    };
    let (_, text) = check("echo.der");
    let hex_nonce = format!("0410{}", hex::encode_upper(&nonce));
    assert!(text.contains("Response Status: successful") && text.contains("OCSP Nonce"), "{text}");
    assert!(text.contains(&hex_nonce), "nonce {hex_nonce} not echoed:\n{text}");
    assert!(!text.contains("WARNING: no nonce in response"), "{text}");
    assert!(!text.contains("Nonce Verify error"), "{text}");
    // The controls: OpenSSL does notice a missing or a different nonce.
    let (_, text) = check("none.der");
    assert!(text.contains("WARNING: no nonce in response"), "{text}");
    let (ok, text) = check("wrong.der");
    assert!(!ok && text.contains("Nonce Verify error"), "{text}");

    // Our own check agrees.
    let v = verify_response(
        &std::fs::read(d.join("echo.der")).expect("read"),
        &w.issuing.cert,
        &SignerId::default(),
        w.now,
    )
    .expect("verifies");
    v.check_nonce(&nonce).expect("nonce");
}

#[test]
fn openssl_reads_error_responses() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    for (status, name) in [
        (OcspResponseStatus::MalformedRequest, "malformedrequest (1)"),
        (OcspResponseStatus::InternalError, "internalerror (2)"),
        (OcspResponseStatus::TryLater, "trylater (3)"),
        (OcspResponseStatus::SigRequired, "sigrequired (5)"),
        (OcspResponseStatus::Unauthorized, "unauthorized (6)"),
    ] {
        std::fs::write(d.join("err.der"), error_response(status)).expect("write");
        let (_, text) = openssl(d, &["ocsp", "-respin", "err.der", "-resp_text"]);
        assert!(text.contains(&format!("Responder Error: {name}")), "{status:?}:\n{text}");
    }
}
