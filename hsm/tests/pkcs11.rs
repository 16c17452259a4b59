//! `Pkcs11Signer` against real modules: our `libsofttoken.so` (SM2, both vendor profiles) and
//! Debian's SoftHSM2 (ECDSA P-256), so the client is proven against a module we did not write.
//! Certificates signed through the token are checked by stock OpenSSL.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use cryptoki::context::Pkcs11;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use hsm::backend::pkcs11::{KeyAlgorithm, KeySelector, Pkcs11Config, Pkcs11Hsm, VendorProfile};
use hsm::{HsmError, Signer};
use pki::{SignerId, Sm2PublicKey};
use zeroize::Zeroizing;

const SO_PIN: &str = "so-pin-87654321";
const PIN: &str = "user-pin-1234";
static TURN: Mutex<()> = Mutex::new(());

fn softtoken_lib() -> PathBuf {
    softtoken::library_path().expect("libsofttoken.so is built with the workspace")
}

/// A fresh softtoken token in `dir`, initialised with SO and user PINs. Holds the module turn.
struct Token {
    p11: Pkcs11,
    _turn: MutexGuard<'static, ()>,
}

impl Drop for Token {
    fn drop(&mut self) {
        let _ = self.p11.clone().finalize();
    }
}

fn token(dir: &Path) -> Token {
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let conf = dir.join("softtoken.toml");
    std::fs::write(&conf, format!("directory = {:?}\nkdf_iterations = 100000\n", dir.join("token"))).expect("conf");
    // SAFETY: tests in this binary take turns (TURN).
    unsafe { std::env::set_var("SOFTTOKEN_CONF", &conf) };
    hsm::backend::pkcs11::init_token(&softtoken_lib(), "hsca-ca", SO_PIN, PIN).expect("init token");
    // A handle on the same (already initialised) module, to disturb it and finalise it.
    let p11 = Pkcs11::new(softtoken_lib()).expect("load");
    Token { p11, _turn: turn }
}

fn config(profile: VendorProfile) -> Pkcs11Config {
    Pkcs11Config {
        module: softtoken_lib(),
        token_label: Some("hsca-ca".into()),
        pin: Zeroizing::new(PIN.into()),
        profile,
    }
}

fn verify_sm2(signer: &dyn Signer, msg: &[u8], sig: &hsm::Signature) {
    let key = Sm2PublicKey::from_spki(&signer.public_key()).expect("SM2 key");
    key.verify(signer.signer_id(), msg, sig.as_der()).expect("signature verifies with the sm2 crate");
}

#[test]
fn sm2_keys_generated_listed_and_used_in_the_token() {
    let dir = tempfile::tempdir().expect("tmp");
    let _t = token(dir.path());
    let hsm = Pkcs11Hsm::open(config(VendorProfile::softtoken().expect("shipped profile"))).expect("open");
    let info = hsm.generate_sm2_key("issuing-ca").expect("keygen");
    assert_eq!(info.algorithm, KeyAlgorithm::Sm2);
    assert!(matches!(hsm.generate_sm2_key("issuing-ca"), Err(HsmError::KeyExists(_))));
    let keys = hsm.list_keys().expect("list");
    assert_eq!(keys.len(), 1);
    assert!(keys[0].sensitive && !keys[0].extractable && keys[0].label == "issuing-ca" && keys[0].id == info.id);

    let signer = hsm.signer(KeySelector::Label("issuing-ca".into()), SignerId::default()).expect("signer");
    signer.self_test().expect("self-test");
    let sig = signer.sign(b"tbs").expect("sign");
    verify_sm2(&signer, b"tbs", &sig);
    // Found by ID as well.
    let by_id = hsm.signer(KeySelector::Id(info.id.clone()), SignerId::default()).expect("by id");
    assert_eq!(by_id.public_key(), signer.public_key());
    // Another signer ID goes through the raw mechanism (the parameter is a fixed 16 bytes).
    let alice = hsm
        .signer(KeySelector::Label("issuing-ca".into()), SignerId::new("ALICE123@YAHOO.COM").expect("id"))
        .expect("s");
    let sig = alice.sign(b"tbs").expect("sign");
    verify_sm2(&alice, b"tbs", &sig);
    assert!(matches!(
        hsm.signer(KeySelector::Label("nope".into()), SignerId::default()),
        Err(HsmError::KeyNotFound(_))
    ));
}

#[test]
fn xipki_profile_drives_the_same_token() {
    let dir = tempfile::tempdir().expect("tmp");
    let _t = token(dir.path());
    let hsm = Pkcs11Hsm::open(config(VendorProfile::xipki().expect("shipped profile"))).expect("open");
    hsm.generate_sm2_key("k").expect("keygen with 0xFFFFF001");
    let signer = hsm.signer(KeySelector::Label("k".into()), SignerId::default()).expect("signer");
    let sig = signer.sign(b"message").expect("raw-mode sign with 0xFFFFF002");
    verify_sm2(&signer, b"message", &sig);
}

#[test]
fn lost_sessions_and_logins_are_recovered_and_a_dead_module_is_unavailable() {
    let dir = tempfile::tempdir().expect("tmp");
    let t = token(dir.path());
    let hsm = Pkcs11Hsm::open(config(VendorProfile::softtoken().expect("shipped profile"))).expect("open");
    hsm.generate_sm2_key("k").expect("keygen");
    let signer = hsm.signer(KeySelector::Label("k".into()), SignerId::default()).expect("signer");
    signer.sign(b"warm").expect("sign");
    assert!(signer.signs_without_waiting(), "a pooled, logged-in session");
    let slot = t.p11.get_all_slots().expect("slots")[0];
    // Someone closes every session (cryptoki has no C_CloseAllSessions: call the module's):
    // our pooled session handle is now invalid.
    // SAFETY: the same library cryptoki loaded; dlopen returns the same instance.
    unsafe {
        let lib = libloading::Library::new(softtoken_lib()).expect("dlopen");
        let close: libloading::Symbol<unsafe extern "C" fn(u64) -> u64> =
            lib.get(b"C_CloseAllSessions").expect("symbol");
        assert_eq!(close(0), 0);
    }
    verify_sm2(&signer, b"after close", &signer.sign(b"after close").expect("recovered from SESSION_HANDLE_INVALID"));
    // Someone logs out: every session is logged out.
    let other = t.p11.open_rw_session(slot).expect("s");
    other.logout().expect("logout");
    verify_sm2(&signer, b"after logout", &signer.sign(b"after logout").expect("recovered from USER_NOT_LOGGED_IN"));
    assert!(signer.signs_without_waiting(), "recovered: a pooled session again");
    // The security officer takes the token: our retries back off and cannot log in, so the next
    // call would wait again, which an async worker must not (it hands the call on).
    other.logout().expect("logout");
    other.login(UserType::So, Some(&AuthPin::new(SO_PIN.into()))).expect("SO login");
    assert!(signer.sign(b"while the SO holds the token").is_err());
    assert!(!signer.signs_without_waiting(), "recovering: no idle logged-in session");
    other.logout().expect("SO logout");
    verify_sm2(&signer, b"after SO", &signer.sign(b"after SO").expect("recovered once the SO left"));
    assert!(signer.signs_without_waiting(), "recovered: a pooled session again");
    drop(other);
    // The module is finalised under us: no retry helps.
    t.p11.clone().finalize().expect("finalize");
    match signer.sign(b"dead") {
        Err(HsmError::Unavailable(msg)) => assert!(!msg.is_empty()),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // Let the guard's finalize be a no-op error.
    drop(t);
}

#[test]
fn wrong_pin_is_a_login_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let _t = token(dir.path());
    let mut cfg = config(VendorProfile::softtoken().expect("shipped profile"));
    cfg.pin = Zeroizing::new("wrong-pin".into());
    assert!(matches!(Pkcs11Hsm::open(cfg), Err(HsmError::Login(_))));
    let mut cfg = config(VendorProfile::softtoken().expect("shipped profile"));
    cfg.token_label = Some("other".into());
    assert!(matches!(Pkcs11Hsm::open(cfg), Err(HsmError::Unavailable(_))));
}

#[test]
fn eight_threads_share_one_signer() {
    let dir = tempfile::tempdir().expect("tmp");
    let _t = token(dir.path());
    let hsm = Pkcs11Hsm::open(config(VendorProfile::softtoken().expect("shipped profile"))).expect("open");
    hsm.generate_sm2_key("k").expect("keygen");
    let signer = hsm.signer(KeySelector::Label("k".into()), SignerId::default()).expect("signer");
    std::thread::scope(|scope| {
        for t in 0..8u8 {
            let signer = &signer;
            scope.spawn(move || {
                for i in 0..20u8 {
                    let msg = [t, i];
                    verify_sm2(signer, &msg, &signer.sign(&msg).expect("sign"));
                }
            });
        }
    });
}

#[test]
fn certificate_signed_in_the_token_passes_openssl() {
    let dir = tempfile::tempdir().expect("tmp");
    let _t = token(dir.path());
    let hsm = Pkcs11Hsm::open(config(VendorProfile::softtoken().expect("shipped profile"))).expect("open");
    hsm.generate_sm2_key("root").expect("keygen");
    let signer = hsm.signer(KeySelector::Label("root".into()), SignerId::default()).expect("signer");
    let policy = pki::PolicySet::embedded_default().expect("policy");
    let now = SystemTime::now();
    let root_key = Sm2PublicKey::from_spki(&signer.public_key()).expect("key");
    let vars = pki::SubjectVars { name: Some("Token Root".into()), ..Default::default() };
    let req = pki::TbsRequest {
        profile: policy.profile("root-ca").expect("p"),
        vars: &vars,
        subject_key: &root_key,
        serial: pki::CertSerial::generate().expect("rng"),
        now,
    };
    let tbs = pki::build_tbs(&req, None).expect("tbs");
    let root = tbs.clone().assemble(signer.sign(tbs.to_be_signed()).expect("sign").as_der()).expect("root");
    let issuer = pki::IssuerInfo::from_certificate(&root, SignerId::default()).expect("issuer");
    let leaf_key = hsm::backend::memory::SoftwareSm2Key::generate(SignerId::default()).expect("leaf key");
    let leaf_vars = pki::SubjectVars { name: Some("HSCA SM2 Issuing CA 1".into()), ..Default::default() };
    let req = pki::TbsRequest {
        profile: policy.profile("issuing-ca").expect("p"),
        vars: &leaf_vars,
        subject_key: leaf_key.sm2_public_key(),
        serial: pki::CertSerial::generate().expect("rng"),
        now,
    };
    let tbs = pki::build_tbs(&req, Some(&issuer)).expect("tbs");
    let cert = tbs.clone().assemble(signer.sign(tbs.to_be_signed()).expect("sign").as_der()).expect("cert");
    std::fs::write(dir.path().join("root.pem"), pki::pem::certificate_to_pem(&root).expect("pem")).expect("w");
    std::fs::write(dir.path().join("cert.pem"), pki::pem::certificate_to_pem(&cert).expect("pem")).expect("w");
    let out = Command::new("openssl")
        .args(["verify", "-vfyopt", "distid:1234567812345678", "-partial_chain", "-CAfile", "root.pem", "cert.pem"])
        .current_dir(dir.path())
        .output()
        .expect("openssl binary (scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("cert.pem: OK"), "{text}{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn ecdsa_p256_against_softhsm2() {
    let module = PathBuf::from("/usr/lib/softhsm/libsofthsm2.so");
    assert!(module.exists(), "SoftHSM2 is needed (scripts/test.sh installs softhsm2)");
    let dir = tempfile::tempdir().expect("tmp");
    let tokens = dir.path().join("tokens");
    std::fs::create_dir_all(&tokens).expect("mkdir");
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n", tokens.display()),
    )
    .expect("conf");
    let out = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", "p256", "--so-pin", SO_PIN, "--pin", PIN])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("softhsm2-util");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // SoftHSM reads SOFTHSM2_CONF at C_Initialize; only this test loads it in this process.
    // SAFETY: SoftHSM's variable is read by no other test.
    unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
    let cfg = Pkcs11Config {
        module,
        token_label: Some("p256".into()),
        pin: Zeroizing::new(PIN.into()),
        profile: VendorProfile::softtoken().expect("shipped profile"),
    };
    let hsm = Pkcs11Hsm::open(cfg).expect("open SoftHSM2");
    hsm.generate_p256_key("tls").expect("EC keygen");
    let signer = hsm.signer(KeySelector::Label("tls".into()), SignerId::default()).expect("signer");
    assert_eq!(signer.key_algorithm(), KeyAlgorithm::EcdsaP256);
    signer.self_test().expect("self-test");
    let sig = signer.sign(b"tls tbs").expect("sign");
    use p256::ecdsa::signature::Verifier;
    let spki = der::Encode::to_der(&signer.public_key()).expect("spki");
    let vk = <p256::ecdsa::VerifyingKey as p256::pkcs8::DecodePublicKey>::from_public_key_der(&spki).expect("vk");
    vk.verify(b"tls tbs", &p256::ecdsa::DerSignature::from_bytes(sig.as_der()).expect("der")).expect("verifies");
    assert_eq!(signer.algorithm().oid.to_string(), "1.2.840.10045.4.3.2");
    let keys = hsm.list_keys().expect("list");
    assert!(keys.iter().any(|k| k.label == "tls" && k.algorithm == KeyAlgorithm::EcdsaP256 && !k.extractable));
}

#[test]
fn vendor_profiles_parse_and_bad_ones_are_refused() {
    assert_eq!(VendorProfile::softtoken().expect("shipped").mechanism_sign_sm3, 0x8000_5303);
    assert_eq!(VendorProfile::xipki().expect("shipped").key_type_sm2, 0xFFFF_F001);
    let base = include_str!("../profiles/softtoken.toml");
    assert!(
        matches!(VendorProfile::from_toml(&base.replace("0x80005303", "0x1041")), Err(HsmError::Config(m)) if m.contains("not a vendor-defined code"))
    );
    assert!(matches!(
        VendorProfile::from_toml(&base.replace("\"with-sm3\"", "\"hashless\"")),
        Err(HsmError::Config(_))
    ));
    assert!(matches!(VendorProfile::from_toml(&format!("{base}\nextra = 1\n")), Err(HsmError::Config(_))));
}

#[test]
fn ca_keys_are_unmodifiable_and_cannot_be_wrapped_out() {
    use cryptoki::error::{Error, RvError};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;
    use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};

    let dir = tempfile::tempdir().expect("tmp");
    let t = token(dir.path());
    let hsm = Pkcs11Hsm::open(config(VendorProfile::softtoken().expect("shipped profile"))).expect("open");
    let info = hsm.generate_sm2_key("issuing-ca").expect("keygen");
    // Another application on the same module (the login is module-wide, so this session is the user's).
    let slot = t.p11.get_all_slots().expect("slots")[0];
    let s = t.p11.open_rw_session(slot).expect("session");
    let rv = |e: Error| match e {
        Error::Pkcs11(rv, _) => rv,
        other => panic!("not a PKCS#11 error: {other:?}"),
    };
    for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
        let found = s.find_objects(&[Attribute::Class(class), Attribute::Id(info.id.clone())]).expect("find");
        assert_eq!(found.len(), 1);
        let attrs = s.get_attributes(found[0], &[AttributeType::Modifiable]).expect("attrs");
        assert_eq!(attrs, vec![Attribute::Modifiable(false)], "{class:?}");
        for change in [Attribute::Extractable(true), Attribute::Label(b"x".to_vec()), Attribute::Sign(false)] {
            let err = s.update_attributes(found[0], std::slice::from_ref(&change)).expect_err("read-only");
            assert_eq!(rv(err), RvError::AttributeReadOnly, "{change:?}");
        }
    }
    let ca = s.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Id(info.id)]).expect("find")[0];
    let sm4 = KeyType::new_vendor_defined(softtoken::mechanism::CKK_SM4).expect("kt");
    let kek = s
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(sm4),
            Attribute::Value(vec![7u8; 16]),
            Attribute::Wrap(true),
        ])
        .expect("import an SM4 key");
    let ecb = cryptoki::mechanism::MechanismType::new_vendor_defined(softtoken::mechanism::CKM_SM4_ECB).expect("m");
    let err =
        s.wrap_key(&Mechanism::VendorDefined(VendorDefinedMechanism::new::<()>(ecb, None)), kek, ca).expect_err("wrap");
    assert_eq!(rv(err), RvError::KeyUnextractable);
    // The key still signs.
    let signer = hsm.signer(KeySelector::Label("issuing-ca".into()), SignerId::default()).expect("signer");
    verify_sm2(&signer, b"tbs", &signer.sign(b"tbs").expect("sign"));
}
