//! The CA server's decision core: request authentication (every refusal), the registration
//! authority (against pki's CSR corpus) and the issuer.

use std::time::{Duration, SystemTime};

use ca_server::auth::{AuthFailure, FailureLimiter, Gate, NonceCache, NonceUse, Trust, ValidatedCerts};
use ca_server::issuer::Issuer;
use ca_server::ra::{Refusal, TerminalRequest, decide_terminal};
use ca_server::roles::Roles;
use hsm::backend::memory::SoftwareSm2Key;
use pki::cert::{IssuerInfo, TbsRequest, build_tbs};
use pki::{CertSerial, Certificate, PolicySet, SignerId, SubjectVars};
use proto::signing::{HeaderError, sign};
use proto::v1::Reason;
use registry::{AuditEvent, CertRecord, CertStatus, CertSubject, PrincipalRecord, Registry, RevocationReason};

const ISSUE: &str = "/hsca.v1.CertificateAuthority/IssueTerminalCertificate";
const REVOKE: &str = "/hsca.v1.Admin/RevokeCertificate";

struct World {
    policy: PolicySet,
    root: Certificate,
    issuing_key: SoftwareSm2Key,
    issuing: Certificate,
    info: IssuerInfo,
    reg: Registry,
    roles: Roles,
    _dir: tempfile::TempDir,
}

fn ev(action: &str) -> AuditEvent {
    AuditEvent {
        time_ms: 0,
        actor: "test".into(),
        action: action.into(),
        target: String::new(),
        outcome: "ok".into(),
        detail: String::new(),
    }
}

fn self_signed(policy: &PolicySet, key: &SoftwareSm2Key) -> Certificate {
    let vars = SubjectVars { name: Some("Test Root".into()), ..Default::default() };
    let req = TbsRequest {
        profile: policy.profile("root-ca").expect("p"),
        vars: &vars,
        subject_key: key.sm2_public_key(),
        serial: CertSerial::generate().expect("rng"),
        now: SystemTime::now(),
    };
    let tbs = build_tbs(&req, None).expect("tbs");
    let sig = hsm::Signer::sign(key, tbs.to_be_signed()).expect("sign");
    tbs.assemble(sig.as_der()).expect("root")
}

fn world() -> World {
    let policy = PolicySet::embedded_default().expect("policy");
    let root_key = SoftwareSm2Key::generate(SignerId::default()).expect("key");
    let root = self_signed(&policy, &root_key);
    let root_info = IssuerInfo::from_certificate(&root, SignerId::default()).expect("info");
    let issuing_key = SoftwareSm2Key::generate(SignerId::default()).expect("key");
    let vars = SubjectVars { name: Some("Test Issuing".into()), ..Default::default() };
    let issuing = Issuer::new(&root_key, &root_info)
        .issue(policy.profile("issuing-ca").expect("p"), &vars, issuing_key.sm2_public_key(), SystemTime::now())
        .expect("issuing");
    let dir = tempfile::tempdir().expect("tmp");
    let reg = Registry::open(&dir.path().join("r.redb")).expect("registry");
    let info = IssuerInfo::from_certificate(&issuing, SignerId::default()).expect("info");
    World { policy, root, issuing_key, issuing, info, reg, roles: Roles::embedded_default().expect("roles"), _dir: dir }
}

impl World {
    fn issuer(&self) -> Issuer<'_> {
        Issuer::new(&self.issuing_key, &self.info)
    }

    /// A principal with its key and certificate, recorded in the registry.
    fn principal(&self, name: &str, role: &str) -> (SoftwareSm2Key, Vec<u8>, String) {
        let key = SoftwareSm2Key::generate(SignerId::default()).expect("key");
        let vars = SubjectVars { name: Some(name.into()), ..Default::default() };
        let cert = self
            .issuer()
            .issue(self.policy.profile(role).expect("profile"), &vars, key.sm2_public_key(), SystemTime::now())
            .expect("cert");
        let der = der::Encode::to_der(&cert).expect("der");
        let serial = CertSerial::of(&cert).expect("serial").to_hex();
        let p = PrincipalRecord {
            name: name.into(),
            role: role.into(),
            cert_serial: serial.clone(),
            manufacturers: vec!["HSTM".into()],
            enabled: true,
            created_by: "test".into(),
            pending_approval: None,
        };
        let rec = CertRecord {
            serial: serial.clone(),
            subject: CertSubject::Principal { name: name.into() },
            profile: role.into(),
            key_fingerprint: hex::encode(pki::alg::spki_fingerprint(&key.sm2_public_key().to_spki())),
            issued_ms: 0,
            not_after_ms: 0,
            request_id: format!("add-{name}"),
            status: CertStatus::Good,
            provisioning: None,
            crl_partition: None,
            station: None,
            activation_hold: false,
        };
        self.reg.add_principal(&p, &rec, &der, &ev("principal_add")).expect("add");
        (key, der, serial)
    }
}

struct Env {
    trust: Trust,
    nonces: NonceCache,
    limiter: FailureLimiter,
    validated: ValidatedCerts,
}

fn env(w: &World) -> Env {
    Env {
        trust: Trust { issuing: w.issuing.clone(), root: w.root.clone(), signer_id: SignerId::default() },
        nonces: NonceCache::default(),
        limiter: FailureLimiter::default(),
        validated: ValidatedCerts::default(),
    }
}

fn gate<'a>(w: &'a World, e: &'a Env) -> Gate<'a, Registry> {
    Gate {
        trust: &e.trust,
        directory: &w.reg,
        roles: &w.roles,
        nonces: &e.nonces,
        limiter: &e.limiter,
        validated: &e.validated,
    }
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).expect("after 1970").as_millis() as u64
}

fn reason(r: Result<ca_server::auth::Caller, AuthFailure>) -> Reason {
    r.expect_err("refused").status().1
}

#[test]
fn a_correctly_signed_request_passes_and_every_defect_is_refused() {
    let w = world();
    let e = env(&w);
    let g = gate(&w, &e);
    let (key, cert, serial) = w.principal("station-1", "station");
    let now = SystemTime::now();
    let body = b"request bytes";
    let h = sign(&key, &cert, ISSUE, body, ms(now)).expect("sign");
    let caller = g.authenticate(Ok(h.clone()), ISSUE, body, "10.0.0.1", now).expect("authenticated");
    assert_eq!(
        (caller.name.as_str(), caller.role.as_str(), caller.cert_serial.as_str()),
        ("station-1", "station", serial.as_str())
    );

    // Replay of the very same request.
    assert_eq!(reason(g.authenticate(Ok(h), ISSUE, body, "10.0.0.1", now)), Reason::ReplayedNonce);
    // Body changed after signing, or signed for another method.
    let h = sign(&key, &cert, ISSUE, body, ms(now)).expect("sign");
    assert_eq!(reason(g.authenticate(Ok(h), ISSUE, b"other bytes", "10.0.0.1", now)), Reason::BadSignature);
    let h = sign(&key, &cert, "/hsca.v1.Registry/GetTerminal", body, ms(now)).expect("sign");
    assert_eq!(reason(g.authenticate(Ok(h), ISSUE, body, "10.0.0.1", now)), Reason::BadSignature);
    // Stale and future times.
    for skew in [Duration::from_secs(301), Duration::from_secs(3600)] {
        let h = sign(&key, &cert, ISSUE, body, ms(now - skew)).expect("sign");
        assert_eq!(reason(g.authenticate(Ok(h), ISSUE, body, "10.0.0.2", now)), Reason::StaleTimestamp);
        let h = sign(&key, &cert, ISSUE, body, ms(now + skew)).expect("sign");
        assert_eq!(reason(g.authenticate(Ok(h), ISSUE, body, "10.0.0.2", now)), Reason::StaleTimestamp);
    }
    // Missing metadata.
    assert_eq!(
        reason(g.authenticate(Err(HeaderError::Missing("x-hsca-signature")), ISSUE, body, "10.0.0.3", now)),
        Reason::MissingSignature
    );
    // Wrong role: a station cannot revoke.
    let h = sign(&key, &cert, REVOKE, body, ms(now)).expect("sign");
    let err = g.authenticate(Ok(h), REVOKE, body, "10.0.0.3", now).expect_err("forbidden");
    assert_eq!(err.status(), (tonic::Code::PermissionDenied, Reason::RoleForbidden));
}

#[test]
fn an_auditor_cannot_issue_and_an_admin_can_revoke() {
    let w = world();
    let e = env(&w);
    let g = gate(&w, &e);
    let now = SystemTime::now();
    let (akey, acert, _) = w.principal("auditor-1", "auditor");
    let h = sign(&akey, &acert, ISSUE, b"b", ms(now)).expect("sign");
    assert_eq!(reason(g.authenticate(Ok(h), ISSUE, b"b", "p", now)), Reason::RoleForbidden);
    let (dkey, dcert, _) = w.principal("admin-1", "admin");
    let h = sign(&dkey, &dcert, REVOKE, b"b", ms(now)).expect("sign");
    g.authenticate(Ok(h), REVOKE, b"b", "p", now).expect("admin may revoke");
}

#[test]
fn caller_certificates_must_be_ours_current_unrevoked_and_enabled() {
    let w = world();
    let e = env(&w);
    let g = gate(&w, &e);
    let now = SystemTime::now();
    let (key, cert, serial) = w.principal("station-1", "station");

    // Expired: the station profile lasts 365 days.
    let later = now + Duration::from_secs(400 * 86_400);
    let h = sign(&key, &cert, ISSUE, b"b", ms(later)).expect("sign");
    assert_eq!(reason(g.authenticate(Ok(h), ISSUE, b"b", "p1", later)), Reason::CallerCertInvalid);
    // From another CA with the same names.
    let other = world();
    let (okey, ocert, _) = other.principal("station-1", "station");
    let h = sign(&okey, &ocert, ISSUE, b"b", ms(now)).expect("sign");
    assert_eq!(reason(g.authenticate(Ok(h), ISSUE, b"b", "p1", now)), Reason::CallerCertInvalid);
    // Not a certificate at all.
    let h = sign(&key, b"garbage", ISSUE, b"b", ms(now)).expect("sign");
    assert_eq!(reason(g.authenticate(Ok(h), ISSUE, b"b", "p1", now)), Reason::CallerCertInvalid);
    // Disabled principal.
    w.reg.set_principal_enabled("station-1", false, &ev("disable")).expect("disable");
    let h = sign(&key, &cert, ISSUE, b"b", ms(now)).expect("sign");
    assert_eq!(reason(g.authenticate(Ok(h), ISSUE, b"b", "p2", now)), Reason::CallerDisabled);
    w.reg.set_principal_enabled("station-1", true, &ev("enable")).expect("enable");
    // Revoked certificate.
    w.reg.revoke(&serial, RevocationReason::KeyCompromise, 1, None, &ev("revoke")).expect("revoke");
    let h = sign(&key, &cert, ISSUE, b"b", ms(now)).expect("sign");
    assert_eq!(reason(g.authenticate(Ok(h), ISSUE, b"b", "p3", now)), Reason::CallerRevoked);
}

#[test]
fn a_principal_that_keeps_failing_after_signing_is_rate_limited_everywhere() {
    let w = world();
    let e = env(&w);
    let g = gate(&w, &e);
    let now = SystemTime::now();
    let (key, cert, _) = w.principal("station-1", "station");
    // Correctly signed, but forbidden: these count against the principal.
    for _ in 0..w.roles.failures_per_minute {
        let h = sign(&key, &cert, REVOKE, b"b", ms(now)).expect("sign");
        assert_eq!(reason(g.authenticate(Ok(h), REVOKE, b"b", "203.0.113.7", now)), Reason::RoleForbidden);
    }
    // Now even a good request of that principal is refused, from any address…
    let h = sign(&key, &cert, ISSUE, b"b", ms(now)).expect("sign");
    assert_eq!(reason(g.authenticate(Ok(h), ISSUE, b"b", "198.51.100.1", now)), Reason::RateLimited);
    // …until the minute has passed.
    let later = now + Duration::from_secs(61);
    let h = sign(&key, &cert, ISSUE, b"b", ms(later)).expect("sign");
    g.authenticate(Ok(h), ISSUE, b"b", "203.0.113.7", later).expect("allowed again");
}

#[test]
fn forged_requests_with_a_stations_certificate_do_not_lock_the_station_out() {
    let w = world();
    let e = env(&w);
    let g = gate(&w, &e);
    let now = SystemTime::now();
    let (key, cert, _) = w.principal("station-1", "station");
    let attacker = SoftwareSm2Key::generate(SignerId::default()).expect("key");
    // The station's certificate is public; the attacker signs with its own key, from the
    // station's NAT address and from elsewhere, many times over the limit.
    for peer in ["203.0.113.7", "192.0.2.66"] {
        for _ in 0..3 * w.roles.failures_per_minute {
            let h = sign(&attacker, &cert, ISSUE, b"b", ms(now)).expect("sign");
            let r = reason(g.authenticate(Ok(h), ISSUE, b"b", peer, now));
            assert!(matches!(r, Reason::BadSignature), "{r:?}");
        }
    }
    // Anonymous garbage from the same address, over the limit too.
    for _ in 0..3 * w.roles.failures_per_minute {
        let r = reason(g.authenticate(Err(HeaderError::Missing("x-hsca-cert")), ISSUE, b"b", "203.0.113.7", now));
        assert!(matches!(r, Reason::MissingSignature | Reason::RateLimited), "{r:?}");
    }
    assert_eq!(
        reason(g.authenticate(Err(HeaderError::Missing("x-hsca-cert")), ISSUE, b"b", "203.0.113.7", now)),
        Reason::RateLimited,
        "the address is over its limit for anything but a principal's certificate"
    );
    // The station, from that very address, is judged on its own signature.
    let h = sign(&key, &cert, ISSUE, b"b", ms(now)).expect("sign");
    g.authenticate(Ok(h), ISSUE, b"b", "203.0.113.7", now).expect("the station still works behind its NAT");
    let h = sign(&key, &cert, ISSUE, b"b", ms(now)).expect("sign");
    g.authenticate(Ok(h), ISSUE, b"b", "198.51.100.1", now).expect("and elsewhere");
    assert_eq!(e.limiter.tracked().1, 0, "nothing was counted against the station");
}

#[test]
fn a_flood_of_distinct_forged_certificates_and_addresses_stays_bounded() {
    let w = world();
    let e = env(&w);
    let g = gate(&w, &e);
    let now = SystemTime::now();
    let (key, cert, _) = w.principal("station-1", "station");
    let h = sign(&key, &cert, ISSUE, b"b", ms(now)).expect("sign");
    g.authenticate(Ok(h.clone()), ISSUE, b"b", "10.0.0.1", now).expect("the station, cached");
    assert!(e.validated.contains(&cert));
    // 100,000 distinct certificates (the station's with one serial byte changed: they parse,
    // but no principal holds them) from 100,000 distinct addresses.
    let version_then_serial = [0xa0, 0x03, 0x02, 0x01, 0x02, 0x02];
    let at = cert.windows(6).position(|w| w == version_then_serial).expect("serial INTEGER") + 7 + 4;
    for i in 0..100_000u32 {
        let mut forged = cert.clone();
        forged[at..at + 4].copy_from_slice(&(i | 0x4000_0000).to_be_bytes());
        let mut fh = h.clone();
        fh.cert_der = forged;
        fh.nonce_hex = format!("{i:032x}");
        let peer = format!("2001:db8::{:x}:{:x}", i >> 16, i & 0xffff);
        assert_eq!(reason(g.authenticate(Ok(fh), ISSUE, b"b", &peer, now)), Reason::CallerCertInvalid);
    }
    let (addresses, principals) = e.limiter.tracked();
    assert!(addresses <= FailureLimiter::CAPACITY, "{addresses} addresses tracked");
    assert_eq!(principals, 0);
    assert_eq!(e.validated.len(), 1, "no forged certificate entered the cache");
    assert!(e.validated.contains(&cert), "the station's entry survived");
    assert_eq!(e.nonces.len(), 1, "only the correctly signed request spent a nonce");
    let h = sign(&key, &cert, ISSUE, b"b", ms(now)).expect("sign");
    g.authenticate(Ok(h), ISSUE, b"b", "10.0.0.1", now).expect("the station still works");
}

#[test]
fn a_request_signed_before_the_server_started_is_refused() {
    let w = world();
    let mut e = env(&w);
    let (key, cert, _) = w.principal("station-1", "station");
    let before = SystemTime::now();
    let captured = sign(&key, &cert, ISSUE, b"b", ms(before)).expect("sign");
    // The server restarts a second later: its replay cache is new and empty.
    let restart = before + Duration::from_secs(1);
    e.nonces = NonceCache::starting_at(ms(restart));
    let g = gate(&w, &e);
    assert_eq!(reason(g.authenticate(Ok(captured), ISSUE, b"b", "p", restart)), Reason::StaleTimestamp);
    let fresh = sign(&key, &cert, ISSUE, b"b", ms(restart)).expect("sign");
    g.authenticate(Ok(fresh), ISSUE, b"b", "p", restart).expect("signed after the restart");
}

#[test]
fn a_pending_administrator_can_do_nothing() {
    let w = world();
    let e = env(&w);
    let g = gate(&w, &e);
    let now = SystemTime::now();
    let (key, cert, _) = w.principal("admin-x", "admin");
    let mut p = w.reg.principal("admin-x").expect("p").expect("p");
    p.pending_approval = Some("a1".into());
    // Stand-in for add_pending_admin: the same record, marked pending.
    let (rec, der) = w.reg.certificate(&p.cert_serial).expect("c").expect("c");
    let dir = tempfile::tempdir().expect("tmp");
    let reg = Registry::open(&dir.path().join("r.redb")).expect("registry");
    reg.add_principal(&p, &rec, &der, &ev("principal_add")).expect("add");
    let g2 = Gate { directory: &reg, ..g };
    let h = sign(&key, &cert, REVOKE, b"b", ms(now)).expect("sign");
    let err = g2.authenticate(Ok(h), REVOKE, b"b", "p", now).expect_err("pending");
    assert_eq!(err.status(), (tonic::Code::PermissionDenied, Reason::CallerPendingApproval));
}

#[test]
fn nonces_expire_in_insertion_order_without_scans() {
    let cache = NonceCache::starting_at(0);
    for i in 0..300_000u64 {
        let now = i / 100; // 100 per millisecond
        assert_eq!(cache.insert(&format!("{i:032x}"), now, now + 1000), NonceUse::Fresh);
    }
    assert_eq!(cache.insert(&format!("{:032x}", 299_999), 2999, 3999), NonceUse::Replayed);
    // At 3,500 ms everything inserted before 2,500 ms has expired.
    assert_eq!(cache.insert(&format!("{:032x}", 1), 3500, 4500), NonceUse::Fresh, "expired: usable again");
    assert_eq!(cache.len(), 49_901, "inserted after 2,500 ms, and the re-used one");
}

fn req<'a>(serial: &'a str, class: &'a str, csr: &'a [u8]) -> TerminalRequest<'a> {
    TerminalRequest { serial, class, csr }
}

fn corpus(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/../pki/testdata/csr/{name}", env!("CARGO_MANIFEST_DIR"))).expect("pki CSR corpus")
}

#[test]
fn the_ra_decides_with_stable_reasons() {
    let w = world();
    let hstm = vec!["HSTM".to_string()];
    let ok = corpus("ok_terminal.der.csr");
    let approved =
        decide_terminal(&w.policy, "station-1", &hstm, &req("HSTM01261100000K", "II", &ok)).expect("approved");
    assert_eq!((approved.serial.as_str(), approved.class), ("HSTM01261100000K", pki::TerminalClass::II));

    let refused = |r: Result<_, Refusal>| r.expect_err("refused").status().1;
    assert_eq!(refused(decide_terminal(&w.policy, "s", &hstm, &req("HSTM0126110000K", "II", &ok))), Reason::BadSerial);
    assert_eq!(
        refused(decide_terminal(&w.policy, "s", &hstm, &req("HSTM01261100000J", "II", &ok))),
        Reason::BadCheckCharacter
    );
    assert_eq!(
        refused(decide_terminal(&w.policy, "s", &hstm, &req("HSTM01261100000K", "IV", &ok))),
        Reason::UnknownClass
    );
    let other_maker = vec!["A1B2".to_string()];
    assert_eq!(
        refused(decide_terminal(&w.policy, "s", &other_maker, &req("HSTM01261100000K", "II", &ok))),
        Reason::ManufacturerNotAllowed
    );
    for (file, want) in [
        ("empty_signer_id.der.csr", Reason::CsrWrongSignerId),
        ("other_terminal_serial.der.csr", Reason::CsrSubjectMismatch),
        ("tampered_signature.der.csr", Reason::BadCsr),
        ("off_curve_key.der.csr", Reason::BadCsr),
        ("trailing_bytes.der.csr", Reason::BadCsr),
        ("too_large.der.csr", Reason::BadCsr),
    ] {
        let csr = corpus(file);
        assert_eq!(
            refused(decide_terminal(&w.policy, "s", &hstm, &req("HSTM01261100000K", "II", &csr))),
            want,
            "{file}"
        );
    }
}

#[test]
fn the_issuer_signs_only_linted_certificates_that_chain() {
    let w = world();
    let key = SoftwareSm2Key::generate(SignerId::default()).expect("key");
    let vars = SubjectVars {
        serial: Some("HSTM01261100000K".into()),
        class: Some("II".into()),
        manufacturer: Some("HSTM".into()),
        model: Some("01".into()),
        name: None,
        crl_partition: Some(0),
    };
    let now = SystemTime::now();
    let cert =
        w.issuer().issue(w.policy.profile("terminal").expect("p"), &vars, key.sm2_public_key(), now).expect("issued");
    pki::validate_chain(&cert, std::slice::from_ref(&w.issuing), &w.root, now, &SignerId::default()).expect("chains");
    // A signer holding the wrong key produces nothing.
    let wrong = SoftwareSm2Key::generate(SignerId::default()).expect("key");
    // (Also with the issuing key's multiples precomputed, as the server holds it.)
    let precomputed = IssuerInfo { key: w.info.key.clone().precomputed(), ..w.info.clone() };
    for info in [&w.info, &precomputed] {
        let bad = Issuer::new(&wrong, info);
        assert!(matches!(
            bad.issue(w.policy.profile("terminal").expect("p"), &vars, key.sm2_public_key(), now),
            Err(ca_server::issuer::IssuerError::Build(pki::IssueError::BadSignature(_)))
        ));
        let good = Issuer::new(&w.issuing_key, info);
        good.issue(w.policy.profile("terminal").expect("p"), &vars, key.sm2_public_key(), now).expect("right key");
    }
}

/// A registry that can be taken away: reads and nonce spends fail while `down`, as PostgreSQL's
/// would during an outage.
struct Flaky<'a> {
    reg: &'a Registry,
    principals_down: std::sync::atomic::AtomicBool,
    nonces_down: std::sync::atomic::AtomicBool,
}

impl ca_server::auth::Directory for Flaky<'_> {
    fn principal_for_cert(&self, serial: &str) -> Result<Option<ca_server::auth::KnownCert>, String> {
        if self.principals_down.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("connection refused".into());
        }
        ca_server::auth::Directory::principal_for_cert(self.reg, serial)
    }

    fn spend_shared_nonce(&self, _nonce: &[u8], _now_ms: u64, _expires_ms: u64) -> Result<bool, String> {
        if self.nonces_down.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("connection refused".into());
        }
        Ok(true)
    }
}

/// Review finding 4: failures that are not the caller's — the registry away, refusals for being
/// over the limit, replays of its own request — count neither here nor toward the shared limit.
#[test]
fn an_outage_replays_and_refusals_at_the_limit_do_not_count_against_the_caller() {
    use std::sync::atomic::Ordering::Relaxed;
    let w = world();
    let e = Env { limiter: FailureLimiter::shared(), ..env(&w) };
    let flaky = Flaky { reg: &w.reg, principals_down: false.into(), nonces_down: false.into() };
    let g = Gate {
        trust: &e.trust,
        directory: &flaky,
        roles: &w.roles,
        nonces: &e.nonces,
        limiter: &e.limiter,
        validated: &e.validated,
    };
    let now = SystemTime::now();
    let (key, cert, _) = w.principal("station-1", "station");
    let n = 3 * w.roles.failures_per_minute;
    // Down after the signature verified (the shared nonce store) and before (the principal read).
    flaky.nonces_down.store(true, Relaxed);
    for _ in 0..n {
        let h = sign(&key, &cert, ISSUE, b"b", ms(now)).expect("sign");
        assert_eq!(reason(g.authenticate(Ok(h), ISSUE, b"b", "203.0.113.7", now)), Reason::StorageFailure);
    }
    flaky.nonces_down.store(false, Relaxed);
    flaky.principals_down.store(true, Relaxed);
    for _ in 0..n {
        let h = sign(&key, &cert, ISSUE, b"b", ms(now)).expect("sign");
        assert_eq!(reason(g.authenticate(Ok(h), ISSUE, b"b", "203.0.113.7", now)), Reason::StorageFailure);
    }
    flaky.principals_down.store(false, Relaxed);
    // One request, replayed many times (a proxy retrying it).
    let h = sign(&key, &cert, ISSUE, b"b", ms(now)).expect("sign");
    g.authenticate(Ok(h.clone()), ISSUE, b"b", "203.0.113.7", now).expect("the first one passes");
    for _ in 0..n {
        assert_eq!(reason(g.authenticate(Ok(h.clone()), ISSUE, b"b", "203.0.113.7", now)), Reason::ReplayedNonce);
    }
    assert_eq!(e.limiter.tracked(), (0, 0), "nothing counted here");
    assert_eq!(e.limiter.unshared(), 0, "nothing queued for the other instances");
    let h = sign(&key, &cert, ISSUE, b"b", ms(now)).expect("sign");
    g.authenticate(Ok(h), ISSUE, b"b", "203.0.113.7", now).expect("the station is not blocked");

    // Over the limit by its own failures, then retrying while refused: the minute still ends.
    for _ in 0..w.roles.failures_per_minute {
        let h = sign(&key, &cert, REVOKE, b"b", ms(now)).expect("sign");
        assert_eq!(reason(g.authenticate(Ok(h), REVOKE, b"b", "203.0.113.7", now)), Reason::RoleForbidden);
    }
    let retrying = now + Duration::from_secs(30);
    for _ in 0..n {
        let h = sign(&key, &cert, ISSUE, b"b", ms(retrying)).expect("sign");
        assert_eq!(reason(g.authenticate(Ok(h), ISSUE, b"b", "203.0.113.7", retrying)), Reason::RateLimited);
    }
    let later = now + Duration::from_secs(61);
    let h = sign(&key, &cert, ISSUE, b"b", ms(later)).expect("sign");
    g.authenticate(Ok(h), ISSUE, b"b", "203.0.113.7", later).expect("allowed a minute after its own failures");
}

/// Review finding 6: a source the local counts could not track (they are full) is not queued for
/// the shared table either, so that table grows no faster than the local counts.
#[test]
fn only_sources_counted_here_are_shared() {
    let limiter = FailureLimiter::shared();
    let now = ms(SystemTime::now());
    let cap = FailureLimiter::CAPACITY;
    for i in 0..cap {
        limiter.record_address(&format!("a{i}"), now, 10);
    }
    assert_eq!(limiter.unshared(), cap);
    let dir = tempfile::tempdir().expect("tmp");
    // redb shares nothing, but the queue is handed over (emptied) all the same.
    let one_instance = Registry::open(&dir.path().join("r.redb")).expect("registry");
    limiter.share(&one_instance, 10).expect("share");
    assert_eq!(limiter.unshared(), 0);
    for i in cap..2 * cap {
        limiter.record_address(&format!("a{i}"), now + 1, 10);
    }
    assert_eq!(limiter.tracked().0, cap, "the local counts are full");
    assert_eq!(limiter.unshared(), 0, "sources not counted here are not shared");
}

/// Review findings 10 and 9: a leader that lost the lock late (its stores refused, a newer
/// leader stored higher numbers) still reads the rows stored below its own numbers; a follower
/// serves a stored row only when it is the CRL its name says, and a row that does not verify
/// does not move its cursor past rows stored later.
#[test]
fn a_stale_leader_reads_rows_below_its_refused_numbers_and_rows_must_be_what_they_name() {
    use ca_server::revocation::{CrlFile, CrlTiming, CrlUrls, Crls};
    let pg = registry::testing::PgServer::start().expect("PostgreSQL test server");
    Registry::migrate_postgres(&pg.url()).expect("migrate");
    let w = world();
    let urls = CrlUrls {
        full: "http://h/crl/issuing.crl".into(),
        partition: Some("http://h/crl/issuing-{partition}.crl".into()),
    };
    let timing = CrlTiming { validity: Duration::from_secs(3600), full_every: Duration::from_secs(3600) };
    let fresh_reg = Registry::open_postgres(&pg.url()).expect("open");
    let stale_reg = Registry::open_postgres(&pg.url()).expect("open");
    let (fresh, stale) = (Crls::new(urls.clone(), timing), Crls::new(urls, timing));
    fresh.publish_all(&fresh_reg, &w.issuing_key, &w.info, 2, true, None).expect("the new leader publishes");
    let p1 = fresh.get(CrlFile::Partition(1)).expect("partition 1").number;
    // Rows above anything the stale leader signs, under its names; they do not verify.
    let row = |name: &str, number: u64, der: Vec<u8>| registry::StoredCrl {
        name: name.into(),
        number,
        der,
        entries: 0,
        this_update_ms: 0,
        base: None,
    };
    for name in ["partition-0", "full", "delta"] {
        assert!(fresh_reg.store_crl(row(name, 1_000_000, b"not a CRL".to_vec())).expect("store"));
    }
    // A genuine CRL stored under another CRL's name.
    let full = fresh.get(CrlFile::Full).expect("full");
    assert!(fresh_reg.store_crl(row("partition-3", full.number, full.der.to_vec())).expect("store"));

    stale.publish_all(&stale_reg, &w.issuing_key, &w.info, 1, true, None).expect("refused stores are quiet");
    assert!(stale.get(CrlFile::Partition(1)).is_none());
    stale.load_stored(&stale_reg, &w.info).expect("load");
    assert_eq!(
        stale.get(CrlFile::Partition(1)).map(|p| p.number),
        Some(p1),
        "the row stored below the stale leader's refused numbers is read"
    );
    assert!(stale.get(CrlFile::Partition(3)).is_none(), "a full CRL is not served as partition 3's");

    // The new leader publishes again (numbers below the rows that do not verify).
    fresh.publish_all(&fresh_reg, &w.issuing_key, &w.info, 2, true, None).expect("again");
    let newer = fresh.get(CrlFile::Partition(1)).expect("partition 1").number;
    assert!(newer > p1);
    stale.load_stored(&stale_reg, &w.info).expect("load");
    assert_eq!(
        stale.get(CrlFile::Partition(1)).map(|p| p.number),
        Some(newer),
        "rows that fail do not move the cursor"
    );
}
