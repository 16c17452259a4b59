//! Chain validation to a pinned root: the good path and every rejection.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use hsm::backend::memory::SoftwareSm2Key;
use pki::cert::{IssuerInfo, TbsRequest, build_tbs};
use pki::{CertSerial, ChainErrorKind as K, IssueError, SignerId, validate_chain};
use support::{Ca, issue, make_issuing, make_root, policy, sign, terminal_vars, vars_name};

struct World {
    policy: pki::PolicySet,
    root: Ca,
    issuing: Ca,
    leaf: pki::Certificate,
    now: SystemTime,
}

fn world() -> World {
    let policy = policy();
    let now = SystemTime::now();
    let root = make_root(&policy, now);
    let issuing = make_issuing(&policy, &root, now);
    let leaf = issue(
        &policy,
        "terminal",
        &terminal_vars("HSTM01261100000K", "II"),
        support::key().sm2_public_key(),
        &issuing,
        now,
    );
    World { policy, root, issuing, leaf, now }
}

fn kind(r: Result<Vec<&pki::Certificate>, pki::ChainError>) -> (usize, K) {
    let e = r.expect_err("must not validate");
    (e.depth, e.kind)
}

#[test]
fn good_chain_validates_in_any_order() {
    let w = world();
    let id = SignerId::default();
    let path = validate_chain(&w.leaf, std::slice::from_ref(&w.issuing.cert), &w.root.cert, w.now, &id).expect("valid");
    assert_eq!(path.len(), 3);
    let noise = [w.leaf.clone(), w.issuing.cert.clone()];
    validate_chain(&w.leaf, &noise, &w.root.cert, w.now, &id).expect("extra certificates are ignored");
    validate_chain(&w.root.cert, &[], &w.root.cert, w.now, &id).expect("the root itself");
}

#[test]
fn tampered_certificate_fails_its_signature() {
    let w = world();
    let mut der = der::Encode::to_der(&w.leaf).expect("der");
    let at = der.windows(16).position(|x| x == b"HSTM01261100000K").expect("serial in subject");
    der[at + 15] = b'J';
    let tampered: pki::Certificate = der::Decode::from_der(&der).expect("still parses");
    let (depth, k) = kind(validate_chain(
        &tampered,
        std::slice::from_ref(&w.issuing.cert),
        &w.root.cert,
        w.now,
        &SignerId::default(),
    ));
    assert_eq!(depth, 0);
    assert!(matches!(k, K::Signature(_)), "{k:?}");
}

#[test]
fn wrong_signer_id_fails() {
    let w = world();
    let other = SignerId::new("ALICE123@YAHOO.COM").expect("id");
    let (_, k) = kind(validate_chain(&w.leaf, std::slice::from_ref(&w.issuing.cert), &w.root.cert, w.now, &other));
    assert!(matches!(k, K::Signature(_)), "{k:?}");
}

#[test]
fn chain_to_another_root_is_refused() {
    let w = world();
    let other_root = make_root(&w.policy, w.now);
    let other_issuing = make_issuing(&w.policy, &other_root, w.now);
    let id = SignerId::default();
    // Same names, other keys: the names chain but the signatures do not.
    let (depth, k) =
        kind(validate_chain(&w.leaf, std::slice::from_ref(&other_issuing.cert), &other_root.cert, w.now, &id));
    assert_eq!(depth, 0);
    assert!(matches!(k, K::Signature(_)), "{k:?}");
    // Missing intermediate.
    let (depth, k) = kind(validate_chain(&w.leaf, &[], &w.root.cert, w.now, &id));
    assert_eq!(depth, 0);
    assert!(matches!(k, K::IssuerNotFound { .. }), "{k:?}");
}

#[test]
fn validity_is_checked_at_the_given_time() {
    let w = world();
    let id = SignerId::default();
    let inter = std::slice::from_ref(&w.issuing.cert);
    let (depth, k) =
        kind(validate_chain(&w.leaf, inter, &w.root.cert, w.now + Duration::from_secs(6 * 365 * 86_400), &id));
    assert_eq!(depth, 0);
    assert!(matches!(k, K::Expired(_)), "{k:?}");
    let (depth, k) = kind(validate_chain(&w.leaf, inter, &w.root.cert, w.now - Duration::from_secs(86_400), &id));
    assert_eq!(depth, 0);
    assert!(matches!(k, K::NotYetValid(_)), "{k:?}");
    let (depth, k) =
        kind(validate_chain(&w.root.cert, &[], &w.root.cert, w.now + Duration::from_secs(21 * 365 * 86_400), &id));
    assert_eq!(depth, 0);
    assert!(matches!(k, K::Expired(_)), "{k:?}");
}

#[test]
fn end_entity_cannot_act_as_a_ca() {
    let w = world();
    let term_key = support::key();
    let terminal = issue(
        &w.policy,
        "terminal",
        &terminal_vars("HSTM01261100001I", "I"),
        term_key.sm2_public_key(),
        &w.issuing,
        w.now,
    );
    // Our own builder refuses to use it as an issuer…
    let refused = IssuerInfo::from_certificate(&terminal, SignerId::default());
    assert!(matches!(refused, Err(IssueError::BadIssuer(_))), "{refused:?}");
    // …so forge the issuer data by hand and check the validator catches it.
    let tbs = terminal.tbs_certificate();
    let forged = IssuerInfo {
        name: tbs.subject().clone(),
        key: term_key.sm2_public_key().clone(),
        key_id: pki::alg::key_identifier(tbs.subject_public_key_info()).to_vec(),
        not_before: w.now - Duration::from_secs(600),
        not_after: w.now + Duration::from_secs(86_400),
        path_len: None,
        signer_id: SignerId::default(),
    };
    let profile = w.policy.profile("terminal").expect("profile");
    let vars = terminal_vars("A1B2032512ZZ9Q0G", "I");
    let below_key = support::key();
    let req = TbsRequest {
        profile,
        vars: &vars,
        subject_key: below_key.sm2_public_key(),
        serial: CertSerial::from_random([3; 16]),
        now: w.now,
    };
    let below = sign(build_tbs(&req, Some(&forged)).expect("tbs"), &term_key);
    let inter = [terminal, w.issuing.cert.clone()];
    let (depth, k) = kind(validate_chain(&below, &inter, &w.root.cert, w.now, &SignerId::default()));
    assert_eq!((depth, k), (1, K::NotCa));
}

#[test]
fn path_length_is_enforced() {
    let w = world();
    // The issuing CA has pathLen 0. Forge a sub-CA under it by hiding that from our own linter.
    let mut lax = w.issuing.info.clone();
    lax.path_len = None;
    let sub_key = support::key();
    let profile = w.policy.profile("issuing-ca").expect("profile");
    let vars = vars_name("Rogue Sub CA");
    let req = TbsRequest {
        profile,
        vars: &vars,
        subject_key: sub_key.sm2_public_key(),
        serial: CertSerial::from_random([5; 16]),
        now: w.now,
    };
    // With the real issuer data, the linter refuses to make it at all.
    let linted = build_tbs(&req, Some(&w.issuing.info));
    assert!(matches!(&linted, Err(IssueError::Lint(e)) if e.has(pki::LintRule::PathLenExceeded)), "{linted:?}");
    let sub_cert = sign(build_tbs(&req, Some(&lax)).expect("tbs"), &w.issuing.key);
    let sub = Ca {
        info: IssuerInfo::from_certificate(&sub_cert, SignerId::default()).expect("sub"),
        cert: sub_cert,
        key: sub_key,
    };
    let leaf = issue(
        &w.policy,
        "terminal",
        &terminal_vars("HSTM01261100000K", "II"),
        support::key().sm2_public_key(),
        &sub,
        w.now,
    );
    let inter = [sub.cert.clone(), w.issuing.cert.clone()];
    let (depth, k) = kind(validate_chain(&leaf, &inter, &w.root.cert, w.now, &SignerId::default()));
    assert_eq!((depth, k), (2, K::PathLenExceeded { limit: 0 }));
}

#[test]
fn pinned_root_must_be_self_signed() {
    let w = world();
    let (depth, k) = kind(validate_chain(&w.leaf, &[], &w.issuing.cert, w.now, &SignerId::default()));
    assert_eq!((depth, k), (1, K::RootNotSelfSigned));
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl binary (scripts/test.sh installs it)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A root made by OpenSSL with extra extensions, and a leaf we issue under it.
fn openssl_root(extra: &[&str]) -> (pki::Certificate, pki::Certificate, SystemTime) {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    openssl(d, &["genpkey", "-algorithm", "SM2", "-out", "k.pem"]);
    let mut args = vec![
        "req",
        "-x509",
        "-new",
        "-key",
        "k.pem",
        "-sm3",
        "-sigopt",
        "distid:1234567812345678",
        "-subj",
        "/CN=OpenSSL Root",
        "-days",
        "30",
    ];
    args.extend(extra.iter().flat_map(|e| ["-addext", e]));
    args.extend(["-out", "root.pem"]);
    openssl(d, &args);
    let root =
        pki::pem::certificate_from_pem(&std::fs::read_to_string(d.join("root.pem")).expect("root")).expect("parse");
    let key =
        SoftwareSm2Key::from_pkcs8_pem(&std::fs::read_to_string(d.join("k.pem")).expect("key"), SignerId::default())
            .expect("key");
    let info = IssuerInfo::from_certificate(&root, SignerId::default()).expect("issuer");
    let now = SystemTime::now();
    let ca = Ca { cert: root.clone(), key, info };
    let leaf = issue(
        &policy(),
        "terminal",
        &terminal_vars("HSTM01261100000K", "II"),
        support::key().sm2_public_key(),
        &ca,
        now,
    );
    (root, leaf, now)
}

#[test]
fn chain_made_by_openssl_validates() {
    let (root, leaf, now) =
        openssl_root(&["basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign"]);
    validate_chain(&leaf, &[], &root, now, &SignerId::default()).expect("OpenSSL root + our leaf");
}

#[test]
fn ca_without_key_cert_sign_is_refused() {
    let (root, leaf, now) = openssl_root(&["basicConstraints=critical,CA:TRUE", "keyUsage=critical,digitalSignature"]);
    let (depth, k) = kind(validate_chain(&leaf, &[], &root, now, &SignerId::default()));
    assert_eq!((depth, k), (1, K::NoKeyCertSign));
}

#[test]
fn unknown_critical_extension_is_refused() {
    let (root, leaf, now) = openssl_root(&[
        "basicConstraints=critical,CA:TRUE",
        "keyUsage=critical,keyCertSign",
        "1.3.6.1.4.1.99999.1=critical,ASN1:NULL",
    ]);
    let (depth, k) = kind(validate_chain(&leaf, &[], &root, now, &SignerId::default()));
    assert_eq!((depth, k), (1, K::UnknownCriticalExtension("1.3.6.1.4.1.99999.1".into())));
}

#[test]
fn issuing_requires_a_valid_issuer() {
    let w = world();
    let profile = w.policy.profile("terminal").expect("p");
    let vars = terminal_vars("HSTM01261100000K", "II");
    let key = support::key();
    let late = w.now + Duration::from_secs(11 * 365 * 86_400);
    let req = TbsRequest {
        profile,
        vars: &vars,
        subject_key: key.sm2_public_key(),
        serial: CertSerial::from_random([9; 16]),
        now: late,
    };
    assert!(matches!(build_tbs(&req, Some(&w.issuing.info)), Err(IssueError::IssuerNotValid)));
    // Validity is clipped to the issuer's: a leaf never outlives its CA.
    let near_end = w.now + Duration::from_secs(3649 * 86_400);
    let req = TbsRequest { now: near_end, ..req };
    let tbs = build_tbs(&req, Some(&w.issuing.info)).expect("tbs");
    assert_eq!(tbs.tbs().validity().not_after, w.issuing.cert.tbs_certificate().validity().not_after);
    // A signature by the wrong key is not assembled into a certificate.
    let wrong = hsm::Signer::sign(&key, tbs.to_be_signed()).expect("sign");
    assert!(matches!(tbs.assemble(wrong.as_der()), Err(IssueError::BadSignature(_))));
}

/// Replaces every occurrence of `from` by `to` (same length) in a certificate's DER.
fn patch(cert: &pki::Certificate, from: &[u8], to: &[u8]) -> pki::Certificate {
    let mut der = der::Encode::to_der(cert).expect("der");
    let mut hits = 0;
    for i in 0..=der.len() - from.len() {
        if der[i..i + from.len()] == *from {
            der[i..i + from.len()].copy_from_slice(to);
            hits += 1;
        }
    }
    assert!(hits > 0, "pattern not found");
    der::Decode::from_der(&der).expect("still parses")
}

const SM2_WITH_SM3_OID: [u8; 10] = [0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x83, 0x75];
const ECDSA_SHA256_OID: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const SM2_CURVE_OID: [u8; 10] = [0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x82, 0x2d];
const P256_CURVE_OID: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

#[test]
fn non_sm2_signature_algorithm_is_refused() {
    let w = world();
    let ecdsa = patch(&w.leaf, &SM2_WITH_SM3_OID, &ECDSA_SHA256_OID);
    let (depth, k) =
        kind(validate_chain(&ecdsa, std::slice::from_ref(&w.issuing.cert), &w.root.cert, w.now, &SignerId::default()));
    assert_eq!(depth, 0);
    assert!(matches!(k, K::Algorithm(_)), "{k:?}");
}

#[test]
fn non_sm2_issuer_key_is_refused() {
    let w = world();
    let p256_issuing = patch(&w.issuing.cert, &SM2_CURVE_OID, &P256_CURVE_OID);
    let (depth, k) = kind(validate_chain(&w.leaf, &[p256_issuing], &w.root.cert, w.now, &SignerId::default()));
    assert_eq!(depth, 0);
    assert!(matches!(k, K::IssuerKey(_)), "{k:?}");
}

#[test]
fn overlong_chain_is_refused() {
    let w = world();
    let mut cas = vec![];
    let mut parent_info = w.issuing.info.clone();
    let mut parent_key = w.issuing.key;
    let profile = w.policy.profile("issuing-ca").expect("profile");
    for i in 0..pki::chain::MAX_CHAIN_LEN {
        parent_info.path_len = None; // hide the constraint from our own linter
        let key = support::key();
        let vars = vars_name(&format!("Sub CA {i}"));
        let req = TbsRequest {
            profile,
            vars: &vars,
            subject_key: key.sm2_public_key(),
            serial: CertSerial::from_random([i as u8 + 1; 16]),
            now: w.now,
        };
        let cert = sign(build_tbs(&req, Some(&parent_info)).expect("tbs"), &parent_key);
        parent_info = IssuerInfo::from_certificate(&cert, SignerId::default()).expect("info");
        parent_key = key;
        cas.push(cert);
    }
    let leaf = cas.pop().expect("last");
    cas.push(w.issuing.cert.clone());
    let (_, k) = kind(validate_chain(&leaf, &cas, &w.root.cert, w.now, &SignerId::default()));
    assert_eq!(k, K::TooLong);
}

#[test]
fn malformed_ca_extension_is_refused() {
    // An OpenSSL root whose keyUsage is not a BIT STRING, and a leaf signed by it.
    let (root, leaf, now) = openssl_root(&["basicConstraints=critical,CA:TRUE", "2.5.29.15=critical,DER:0500"]);
    let (depth, k) = kind(validate_chain(&leaf, &[], &root, now, &SignerId::default()));
    assert_eq!(depth, 1);
    assert!(matches!(k, K::Malformed(_)), "{k:?}");
}

#[test]
fn terminal_binding_serial_key_and_chain_bytes() {
    use der::Encode;
    use pki::terminal::{BindingError, check_binding, split_chain};
    let w = world();
    let key = w.leaf.tbs_certificate().subject_public_key_info().clone();
    check_binding(&w.leaf, "HSTM01261100000K", &key).expect("bound");
    assert!(matches!(
        check_binding(&w.leaf, "HSTM01261100001V", &key),
        Err(BindingError::OtherTerminal { found, .. }) if found.contains(&"HSTM01261100000K".to_owned())
    ));
    let other = SoftwareSm2Key::generate(SignerId::default()).expect("key");
    assert_eq!(
        check_binding(&w.leaf, "HSTM01261100000K", &other.sm2_public_key().to_spki()),
        Err(BindingError::OtherKey)
    );
    // The issuing CA's certificate names no terminal at all.
    assert!(matches!(
        check_binding(&w.issuing.cert, "HSTM01261100000K", &key),
        Err(BindingError::OtherTerminal { .. })
    ));

    let mut bytes = w.leaf.to_der().expect("der");
    bytes.extend(w.issuing.cert.to_der().expect("der"));
    let certs = split_chain(&bytes).expect("split");
    assert_eq!(certs, vec![w.leaf.clone(), w.issuing.cert.clone()]);
    assert_eq!(split_chain(&[]), Err(BindingError::Empty));
    assert!(matches!(split_chain(&bytes[..bytes.len() - 1]), Err(BindingError::Malformed(_))));
    bytes.push(0);
    assert!(matches!(split_chain(&bytes), Err(BindingError::Malformed(_))));
}

#[test]
fn status_urls_are_read_from_the_certificate() {
    let w = world();
    let urls = pki::cert::status_urls(&w.leaf);
    assert_eq!(urls.crl, vec!["http://127.0.0.1:7080/crl/issuing-0.crl".to_owned()], "partition 0");
    assert_eq!(urls.ocsp, vec!["http://127.0.0.1:7080/ocsp".to_owned()]);
    assert_eq!(pki::cert::status_urls(&w.root.cert).ocsp, Vec::<String>::new());
}

#[test]
fn a_partitioned_distribution_point_needs_the_partition() {
    let policy = policy();
    let now = SystemTime::now();
    let root = make_root(&policy, now);
    let issuing = make_issuing(&policy, &root, now);
    let key = SoftwareSm2Key::generate(SignerId::default()).expect("key");
    let mut vars = terminal_vars("HSTM01261100000K", "II");
    vars.crl_partition = None;
    let req = TbsRequest {
        profile: policy.profile("terminal").expect("p"),
        vars: &vars,
        subject_key: key.sm2_public_key(),
        serial: CertSerial::generate().expect("rng"),
        now,
    };
    assert_eq!(
        build_tbs(&req, Some(&issuing.info)).map(|_| ()),
        Err(IssueError::Name(pki::name::NameError::MissingVar("partition".into())))
    );
    let vars = pki::SubjectVars { crl_partition: Some(42), ..vars.clone() };
    let req = TbsRequest { vars: &vars, ..req };
    let cert = sign(build_tbs(&req, Some(&issuing.info)).expect("tbs"), &issuing.key);
    assert_eq!(pki::cert::status_urls(&cert).crl, vec!["http://127.0.0.1:7080/crl/issuing-42.crl".to_owned()]);
}

#[test]
fn crl_scope_full_names_the_full_crl_instead_of_the_partition() {
    let policy = policy();
    let now = SystemTime::now();
    let root = make_root(&policy, now);
    let issuing = make_issuing(&policy, &root, now);
    let key = SoftwareSm2Key::generate(SignerId::default()).expect("key");
    let mut profile = policy.profile("terminal").expect("p").clone();
    assert_eq!(profile.crl_scope, pki::CrlScope::Partition, "the shipped policy partitions");
    profile.crl_scope = pki::CrlScope::Full;
    // The partition is not needed, and not written when known.
    for partition in [None, Some(42)] {
        let vars = pki::SubjectVars { crl_partition: partition, ..terminal_vars("HSTM01261100000K", "II") };
        let req = TbsRequest {
            profile: &profile,
            vars: &vars,
            subject_key: key.sm2_public_key(),
            serial: CertSerial::generate().expect("rng"),
            now,
        };
        let cert = sign(build_tbs(&req, Some(&issuing.info)).expect("tbs"), &issuing.key);
        assert_eq!(pki::cert::status_urls(&cert).crl, vec!["http://127.0.0.1:7080/crl/issuing.crl".to_owned()]);
    }
    assert_eq!(pki::cert::full_crl_url("http://h/crl/{partition}.crl"), "http://h/crl/.crl");
    assert_eq!(pki::cert::full_crl_url("http://h/crl/issuing.crl"), "http://h/crl/issuing.crl");
}

#[test]
fn crl_scope_is_read_from_the_profile() {
    let [h, p, r] = pki::policy::EMBEDDED;
    let with = |scope: &str| {
        let profiles = p.1.replace("crl_scope = \"partition\"", &format!("crl_scope = \"{scope}\""));
        pki::PolicySet::load_texts([h.0, p.0, r.0], [h.1, profiles.as_str(), r.1])
    };
    assert_eq!(with("full").expect("full").profile("terminal").expect("t").crl_scope, pki::CrlScope::Full);
    assert_eq!(with("partition").expect("p").profile("terminal").expect("t").crl_scope, pki::CrlScope::Partition);
    let without = p.1.replace("crl_scope = \"partition\"\n", "");
    let default = pki::PolicySet::load_texts([h.0, p.0, r.0], [h.1, without.as_str(), r.1]).expect("no crl_scope");
    assert_eq!(default.profile("terminal").expect("t").crl_scope, pki::CrlScope::Partition, "the default");
    let err = with("all").expect_err("bogus scope");
    assert!(err.message.contains("unknown crl_scope `all`") && err.message.contains("\"full\""), "{err}");
}

#[test]
fn a_leaf_checked_against_an_already_validated_issuer() {
    let w = world();
    let id = SignerId::default();
    let key = pki::Sm2PublicKey::from_spki(w.issuing.cert.tbs_certificate().subject_public_key_info())
        .expect("key")
        .precomputed();
    pki::validate_issued_by(&w.leaf, &w.issuing.cert, &key, w.now, &id).expect("valid");
    let e = |r: Result<(), pki::ChainError>| {
        let e = r.expect_err("must not validate");
        (e.depth, e.kind)
    };
    // Another issuing CA of the same name (its own key): the signature does not verify.
    let other_root = make_root(&w.policy, w.now);
    let other = make_issuing(&w.policy, &other_root, w.now);
    let other_key = pki::Sm2PublicKey::from_spki(other.cert.tbs_certificate().subject_public_key_info()).expect("key");
    let (depth, k) = e(pki::validate_issued_by(&w.leaf, &other.cert, &other_key, w.now, &id));
    assert!(depth == 0 && matches!(k, K::Signature(_)), "{k:?}");
    // A key that is not the issuer certificate's is refused before anything is verified.
    let (depth, k) = e(pki::validate_issued_by(&w.leaf, &w.issuing.cert, &other_key, w.now, &id));
    assert!(depth == 1 && matches!(k, K::IssuerKey(_)), "{k:?}");
    // Not the leaf's issuer by name.
    let (depth, k) = e(pki::validate_issued_by(&w.leaf, &w.root.cert, &key, w.now, &id));
    assert!(depth == 0 && matches!(k, K::IssuerNotFound { .. }), "{k:?}");
    // The leaf's and the issuer's validity.
    let later = w.now + Duration::from_secs(6 * 365 * 86_400);
    let (depth, k) = e(pki::validate_issued_by(&w.leaf, &w.issuing.cert, &key, later, &id));
    assert!(depth == 0 && matches!(k, K::Expired(_)), "{k:?}");
    let (depth, k) =
        e(pki::validate_issued_by(&w.leaf, &w.issuing.cert, &key, w.now - Duration::from_secs(86_400), &id));
    assert!(depth == 0 && matches!(k, K::NotYetValid(_)), "{k:?}");
    // A tampered leaf.
    let mut der = der::Encode::to_der(&w.leaf).expect("der");
    let at = der.windows(16).position(|x| x == b"HSTM01261100000K").expect("serial in subject");
    der[at + 15] = b'J';
    let tampered: pki::Certificate = der::Decode::from_der(&der).expect("still parses");
    let (depth, k) = e(pki::validate_issued_by(&tampered, &w.issuing.cert, &key, w.now, &id));
    assert!(depth == 0 && matches!(k, K::Signature(_)), "{k:?}");
}
