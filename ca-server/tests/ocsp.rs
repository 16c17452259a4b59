//! The OCSP responder's cache rules, against a real registry: answers for issued certificates
//! are pre-signed and re-signed on revocation; answers for serials the CA never issued are
//! neither cached nor unlimited; nonce requests are rate-limited too.

#[path = "../../pki/tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use ca_server::ocsp::{Responder, ResponderKey};
use ca_server::records::new_cert_record;
use pki::ocsp::{
    CertIdHash, CertStatus, IssuerHashes, OcspResponseStatus, build_request, error_response, parse_request,
};
use pki::{CertSerial, CrlReason, SignerId};
use registry::{AuditEvent, CertSubject, Registry, RevocationReason, TerminalIssue, TerminalRecord, TerminalState};

fn ev() -> AuditEvent {
    AuditEvent {
        time_ms: 1,
        actor: "test".into(),
        action: "x".into(),
        target: "y".into(),
        outcome: "ok".into(),
        detail: String::new(),
    }
}

/// Small, so the test does not depend on how fast this machine signs.
const BUDGET: u32 = 5;

/// A registry holding one issued terminal certificate, and a responder with `budget`.
struct Fixture {
    _dir: tempfile::TempDir,
    reg: Registry,
    responder: Responder,
    issuing: support::Ca,
    cert: pki::Certificate,
    rec: registry::CertRecord,
    /// Signatures the responder key made.
    signatures: Arc<AtomicUsize>,
}

/// The responder's key, counting its signatures: what a flood costs the HSM.
struct Counting<S> {
    inner: S,
    signatures: Arc<AtomicUsize>,
}

impl<S: hsm::Signer> hsm::Signer for Counting<S> {
    fn algorithm(&self) -> spki::AlgorithmIdentifierOwned {
        self.inner.algorithm()
    }
    fn public_key(&self) -> spki::SubjectPublicKeyInfoOwned {
        self.inner.public_key()
    }
    fn signer_id(&self) -> &SignerId {
        self.inner.signer_id()
    }
    fn sign(&self, tbs: &[u8]) -> Result<hsm::Signature, hsm::HsmError> {
        self.signatures.fetch_add(1, Ordering::SeqCst);
        self.inner.sign(tbs)
    }
}

fn fixture(budget: u32) -> Fixture {
    fixture_valid_for(budget, Duration::from_secs(3600))
}

fn fixture_valid_for(budget: u32, validity: Duration) -> Fixture {
    let policy = support::policy();
    let now = SystemTime::now();
    let root = support::make_root(&policy, now);
    let issuing = support::make_issuing(&policy, &root, now);
    let (responder_cert, responder_key) = support::make_ocsp_signer(&policy, &issuing, now);
    let terminal_key = support::key();
    let serial = "HSTM01261100000K";
    let cert = support::issue(
        &policy,
        "terminal",
        &support::terminal_vars(serial, "II"),
        terminal_key.sm2_public_key(),
        &issuing,
        now,
    );
    let dir = tempfile::tempdir().expect("tmp");
    let reg = Registry::open(&dir.path().join("r.redb")).expect("registry");
    let rec = new_cert_record(&cert, CertSubject::Terminal { serial: serial.into() }, "terminal", "r1").expect("rec");
    let issue = TerminalIssue {
        request_id: "r1".into(),
        request_hash: "h".into(),
        terminal: TerminalRecord {
            serial: serial.into(),
            class: "II".into(),
            manufacturer: "HSTM".into(),
            model: "01".into(),
            lot: None,
            state: TerminalState::Registered,
            active_cert: None,
            updated_ms: 0,
        },
        register_if_missing: true,
        reissue: false,
        station: "station-1".into(),
        cert: rec.clone(),
        der: der::Encode::to_der(&cert).expect("der"),
    };
    reg.record_terminal_issue(&issue, &ev()).expect("record");
    let signatures = Arc::new(AtomicUsize::new(0));
    let signer = Counting { inner: responder_key, signatures: signatures.clone() };
    let responder = Responder::new(
        ResponderKey { signer: Arc::new(signer), certificate: responder_cert, delegated: true },
        &issuing.cert,
        validity,
    )
    .expect("responder")
    .with_uncached_budget(budget);
    Fixture { _dir: dir, reg, responder, issuing, cert, rec, signatures }
}

/// A flood of requests about serials the CA never issued (no nonce, GET-cacheable by anyone):
/// each would be a fresh signature, so the budget is spent *before* signing — past it the
/// answer is `tryLater` and the HSM signs nothing more. (It used to sign first, then refuse.)
#[test]
fn a_flood_of_unknown_serials_costs_no_more_signatures_than_the_budget() {
    let Fixture { reg, responder, issuing, signatures, .. } = &fixture(BUDGET);
    let hashes = IssuerHashes::new(&issuing.cert).expect("hashes");
    std::thread::sleep(Duration::from_millis(1100)); // a fresh budget window
    let before = signatures.load(Ordering::SeqCst);
    let try_later = error_response(OcspResponseStatus::TryLater);
    let mut refused = 0;
    for _ in 0..BUDGET * 20 {
        let never = CertSerial::generate().expect("rng");
        let req = build_request(&[hashes.cert_id(CertIdHash::Sha1, &never)], None).expect("request");
        let a = responder.answer(reg, &parse_request(&req).expect("parse"));
        if a.der[..] == try_later[..] {
            refused += 1;
        } else {
            let v = pki::ocsp::verify_response(&a.der, &issuing.cert, &SignerId::default(), SystemTime::now())
                .expect("within the budget: a signed answer");
            assert_eq!(v.responses[0].status, CertStatus::Unknown);
        }
    }
    let signed = signatures.load(Ordering::SeqCst) - before;
    // At most two budget windows can fall inside the loop on a slow machine.
    assert!(signed <= BUDGET as usize * 2, "{signed} signatures for {} unknown serials", BUDGET * 20);
    assert_eq!(signed + refused, BUDGET as usize * 20, "each request either signed or refused");
}

#[test]
fn cache_rules_revocation_refresh_and_budget() {
    let Fixture { reg, responder, issuing, cert, rec, .. } = &fixture(BUDGET);
    let hashes = IssuerHashes::new(&issuing.cert).expect("hashes");
    let ask = |serial: &CertSerial, nonce: Option<&[u8]>| {
        let req = build_request(&[hashes.cert_id(CertIdHash::Sha1, serial)], nonce).expect("request");
        responder.answer(reg, &parse_request(&req).expect("parse"))
    };
    let status = |der: &[u8]| {
        let v =
            pki::ocsp::verify_response(der, &issuing.cert, &SignerId::default(), SystemTime::now()).expect("verify");
        v.responses[0].status
    };

    let known = CertSerial::of(cert).expect("serial");
    let first = ask(&known, None);
    assert!(!first.cached && status(&first.der) == CertStatus::Good);
    let second = ask(&known, None);
    assert!(second.cached && second.der == first.der, "the second query costs no signature");

    let never = CertSerial::generate().expect("rng");
    std::thread::sleep(Duration::from_millis(1100)); // a fresh budget window
    for _ in 0..2 {
        let a = ask(&never, None);
        assert!(!a.cached && status(&a.der) == CertStatus::Unknown, "unknown answers are never cached");
    }
    assert_eq!(responder.cached(), 1);

    reg.revoke(&rec.serial, RevocationReason::KeyCompromise, 5, Some(4), &ev()).expect("revoke");
    responder.refresh(reg, &rec.serial);
    let after = ask(&known, None);
    assert!(after.cached, "re-signed at the revocation, before anyone asked");
    assert!(matches!(status(&after.der), CertStatus::Revoked { .. }));

    // Fresh signatures (nonces, unknown serials) have a budget per second; past it a nonce is
    // ignored (RFC 8954): the pre-signed answer, still `successful`, not `tryLater`.
    std::thread::sleep(Duration::from_millis(1100));
    let presigned = ask(&known, None);
    assert!(presigned.cached);
    let burst: Vec<_> = (0..BUDGET * 3).map(|i| (i, ask(&known, Some(&i.to_be_bytes())))).collect();
    let mut echoed = 0;
    for (i, a) in &burst {
        let v = pki::ocsp::verify_response(&a.der, &issuing.cert, &SignerId::default(), SystemTime::now())
            .expect("every answer in the burst is a successful, verifying response");
        assert!(matches!(v.responses[0].status, CertStatus::Revoked { .. }));
        match &v.nonce {
            Some(n) => {
                assert_eq!(n.as_slice(), i.to_be_bytes(), "a fresh answer echoes its own nonce");
                assert!(!a.cached);
                echoed += 1;
            }
            None => assert!(a.cached && a.der == presigned.der, "past the budget: the pre-signed answer"),
        }
    }
    assert!(burst[0].1.der != presigned.der, "the first request of the window gets its nonce echoed");
    assert!((1..=BUDGET as usize * 2).contains(&echoed), "{echoed} fresh answers for a budget of {BUDGET}/s");
    assert_eq!(responder.nonces_ignored(), burst.len() as u64 - echoed as u64);
    // An unknown serial has no pre-signed answer: past the budget it still gets tryLater.
    let try_later = error_response(OcspResponseStatus::TryLater);
    let refused = (0..BUDGET + 5).filter(|_| &ask(&never, Some(b"n")).der[..] == try_later.as_slice()).count();
    assert!(refused >= 1, "unknown serials past the budget: tryLater");
    assert!(ask(&known, None).cached, "pre-signed answers are not limited");
}

/// A budget of 0: every nonce is ignored, every answer is the pre-signed one.
#[test]
fn a_zero_budget_ignores_every_nonce() {
    let Fixture { reg, responder, issuing, cert, .. } = &fixture(0);
    let hashes = IssuerHashes::new(&issuing.cert).expect("hashes");
    let ask = |serial: &CertSerial, nonce: &[u8]| {
        let req = build_request(&[hashes.cert_id(CertIdHash::Sha1, serial)], Some(nonce)).expect("request");
        responder.answer(reg, &parse_request(&req).expect("parse"))
    };
    let known = CertSerial::of(cert).expect("serial");
    let first = ask(&known, b"one");
    let v = pki::ocsp::verify_response(&first.der, &issuing.cert, &SignerId::default(), SystemTime::now())
        .expect("a successful answer");
    assert_eq!((v.responses[0].status, v.nonce), (CertStatus::Good, None));
    assert!(ask(&known, b"two").cached, "the pre-signed answer, whatever the nonce");
    let never = CertSerial::generate().expect("rng");
    let a = ask(&never, b"three");
    assert_eq!(&a.der[..], error_response(OcspResponseStatus::TryLater).as_slice(), "nothing to fall back to");
    assert_eq!(responder.nonces_ignored(), 3);
}

/// What the HTTP handler answers in place (no thread hop, no registry) and what it hands on:
/// a cached answer is `Ready`, a nonce needs a signature; both verify, the nonce is echoed, and a
/// nonce past the budget is `Ready` with the cached answer.
#[test]
fn cache_hits_are_ready_in_memory_and_nonces_are_signed_fresh() {
    use ca_server::ocsp::Plan;
    let Fixture { reg, responder, issuing, cert, .. } = &fixture(1);
    let hashes = IssuerHashes::new(&issuing.cert).expect("hashes");
    let known = CertSerial::of(cert).expect("serial");
    let request =
        |nonce: Option<&[u8]>| build_request(&[hashes.cert_id(CertIdHash::Sha1, &known)], nonce).expect("request");
    let verify = |der: &[u8]| {
        pki::ocsp::verify_response(der, &issuing.cert, &SignerId::default(), SystemTime::now()).expect("verifies")
    };
    // Nothing cached yet: the plain request needs a signature (and caches it).
    let Plan::Sign(work) = responder.plan_der(&request(None)) else { panic!("nothing is cached yet") };
    let signed = responder.finish(reg, work);
    assert!(!signed.cached);
    let Plan::Ready(hit) = responder.plan_der(&request(None)) else { panic!("the second plain request is a hit") };
    assert!(hit.cached && hit.der == signed.der);
    let v = verify(&hit.der);
    assert_eq!((v.responses[0].status, v.nonce), (CertStatus::Good, None));

    std::thread::sleep(Duration::from_millis(1100)); // a fresh budget window (1 per second)
    let Plan::Sign(work) = responder.plan_der(&request(Some(b"fresh nonce"))) else { panic!("a nonce is signed") };
    let fresh = responder.finish(reg, work);
    assert!(!fresh.cached);
    let v = verify(&fresh.der);
    assert_eq!((v.responses[0].status, v.nonce.as_deref()), (CertStatus::Good, Some(&b"fresh nonce"[..])));
    // The budget is spent: the next nonce is ignored, answered from memory.
    let Plan::Ready(ignored) = responder.plan_der(&request(Some(b"second"))) else { panic!("past the budget") };
    assert!(ignored.cached && ignored.der == hit.der);
    assert_eq!(responder.nonces_ignored(), 1);
    // Malformed and foreign requests are answered in place too.
    let Plan::Ready(bad) = responder.plan_der(b"not DER") else { panic!("malformed is ready") };
    assert_eq!(&bad.der[..], error_response(OcspResponseStatus::MalformedRequest).as_slice());
}

/// A nonce answer about a certificate with a pre-signed answer takes its status from the cache
/// (no registry read): a status change reaches it exactly as it reaches the pre-signed answers,
/// through `refresh`, which the server calls after the commit and before acknowledging it.
#[test]
fn nonce_answers_state_what_the_refreshed_cache_states() {
    let Fixture { reg, responder, issuing, cert, rec, signatures, .. } = &fixture(1_000);
    let hashes = IssuerHashes::new(&issuing.cert).expect("hashes");
    let known = CertSerial::of(cert).expect("serial");
    let ask = |nonce: Option<&[u8]>| {
        let req = build_request(&[hashes.cert_id(CertIdHash::Sha1, &known)], nonce).expect("request");
        let a = responder.answer(reg, &parse_request(&req).expect("parse"));
        let v = pki::ocsp::verify_response(&a.der, &issuing.cert, &SignerId::default(), SystemTime::now())
            .expect("verifies");
        assert_eq!(v.nonce.as_deref(), nonce, "a fresh answer echoes its nonce");
        v.responses[0].status
    };
    assert_eq!(ask(Some(b"before any plain query")), CertStatus::Good, "nothing cached: the registry's");
    assert_eq!(ask(None), CertStatus::Good);
    assert_eq!(responder.cached(), 1);
    assert_eq!(ask(Some(b"one")), CertStatus::Good);

    reg.revoke(&rec.serial, RevocationReason::KeyCompromise, 5, Some(4), &ev()).expect("revoke");
    // Committed, not yet refreshed (the revocation is not acknowledged yet): the cache's status.
    assert_eq!(ask(Some(b"two")), CertStatus::Good);
    responder.refresh(reg, &rec.serial);
    let revoked = ask(Some(b"three"));
    assert!(matches!(revoked, CertStatus::Revoked { reason: Some(CrlReason::KeyCompromise), .. }), "{revoked:?}");
    assert_eq!(ask(None), revoked, "the same status as the pre-signed answer");
    let before = signatures.load(Ordering::SeqCst);
    assert_eq!(ask(Some(b"four")), revoked);
    assert_eq!(signatures.load(Ordering::SeqCst) - before, 1, "one signature per nonce");
}

/// `refresh_due`, scanning the cache a chunk at a time (2 answers per lock hold, 3 answers):
/// past half their validity, the answers asked for since signed are re-signed, across chunk
/// boundaries, and the one nobody asked for is dropped.
#[test]
fn refresh_due_re_signs_what_was_asked_for_and_drops_the_rest_across_chunks() {
    let Fixture { reg, responder, issuing, cert, signatures, .. } = fixture_valid_for(BUDGET, Duration::from_secs(2));
    let responder = responder.with_refresh_scan_chunk(2);
    let hashes = IssuerHashes::new(&issuing.cert).expect("hashes");
    let known = CertSerial::of(&cert).expect("serial");
    let ask = |hash| {
        let req = build_request(&[hashes.cert_id(hash, &known)], None).expect("request");
        responder.answer(&reg, &parse_request(&req).expect("parse"))
    };
    let asked = [CertIdHash::Sha1, CertIdHash::Sm3];
    let mut before = Vec::new();
    for hash in asked {
        assert!(!ask(hash).cached);
        let hit = ask(hash);
        assert!(hit.cached, "a hit marks the answer as asked for");
        before.push(hit.der);
    }
    assert!(!ask(CertIdHash::Sha256).cached, "signed once, never asked for again");
    assert_eq!(responder.cached(), 3);
    assert_eq!(responder.refresh_due(&reg), 0, "nothing is due yet");
    assert_eq!(responder.cached(), 3);

    std::thread::sleep(Duration::from_millis(1100)); // past half of the 2 s validity
    let signed_before = signatures.load(Ordering::SeqCst);
    assert_eq!(responder.refresh_due(&reg), 2);
    assert_eq!(signatures.load(Ordering::SeqCst) - signed_before, 2, "one signature per answer due");
    assert_eq!(responder.cached(), 2, "the idle answer is dropped");
    for (hash, old) in asked.into_iter().zip(before) {
        let a = ask(hash);
        assert!(a.cached && a.der != old, "re-signed in the cache");
        pki::ocsp::verify_response(&a.der, &issuing.cert, &SignerId::default(), SystemTime::now()).expect("verifies");
    }
    assert!(!ask(CertIdHash::Sha256).cached, "the dropped answer is signed again on demand");
}
