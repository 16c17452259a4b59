//! The module through cryptoki: keys, signatures checked by the `sm2` crate, PINs, persistence,
//! SM3/SM4/SM2-encryption, and concurrency.

mod common;

use common::*;
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use sm2::dsa::signature::Verifier;
use softtoken::mechanism::*;

fn rv(e: Error) -> RvError {
    match e {
        Error::Pkcs11(rv, _) => rv,
        other => panic!("not a PKCS#11 error: {other:?}"),
    }
}

fn sm2_verify(point: &[u8], id: &str, msg: &[u8], rs: &[u8]) -> bool {
    let vk = sm2::dsa::VerifyingKey::from_sec1_bytes(id, point).expect("vk");
    let sig = sm2::dsa::Signature::from_slice(rs).expect("r||s");
    vk.verify(msg, &sig).is_ok()
}

#[test]
fn sm2_signatures_verify_with_the_sm2_crate() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = Module::open(&dir.path().join("t"), 5);
    m.init();
    let s = m.user();
    let (public, private) = sm2_pair(&s, "k", false);
    let p = point(&s, public);
    let msg = b"tbs certificate bytes";

    // SM2-with-SM3, no parameter: the default signer ID. Native and XiPKI codes.
    for code in [CKM_SM2_SM3, 0xFFFF_F003] {
        let sig = s.sign(&mech(code), private, msg).expect("sign");
        assert_eq!(sig.len(), 64);
        assert!(sm2_verify(&p, "1234567812345678", msg, &sig));
        assert!(!sm2_verify(&p, "ALICE123@YAHOO.COM", msg, &sig));
    }
    // With the signer ID as parameter.
    let id = *b"ALICE123@YAHOO.COM";
    let with_id = Mechanism::VendorDefined(VendorDefinedMechanism::new(vendor(CKM_SM2_SM3), Some(&id)));
    let sig = s.sign(&with_id, private, msg).expect("sign with id");
    assert!(sm2_verify(&p, "ALICE123@YAHOO.COM", msg, &sig));
    // Back to the default ID (the key keeps the last ID's Z: it must not be reused for another).
    let sig = s.sign(&mech(CKM_SM2_SM3), private, msg).expect("sign");
    assert!(sm2_verify(&p, "1234567812345678", msg, &sig));
    assert!(!sm2_verify(&p, "ALICE123@YAHOO.COM", msg, &sig));
    // Raw mode: we hash Z ‖ M, the token signs e.
    let z = softtoken::crypto::z_value(b"1234567812345678", &p).expect("z");
    let e = softtoken::crypto::sm3(&[&z[..], msg].concat());
    let sig = s.sign(&mech(CKM_SM2), private, &e).expect("raw sign");
    assert!(sm2_verify(&p, "1234567812345678", msg, &sig));
    assert_eq!(rv(s.sign(&mech(CKM_SM2), private, b"short").expect_err("not 32 bytes")), RvError::DataLenRange);

    // Verify through the token, and refuse a tampered signature.
    let sig = s.sign(&mech(CKM_SM2_SM3), private, msg).expect("sign");
    s.verify(&mech(CKM_SM2_SM3), public, msg, &sig).expect("verify");
    let mut bad = sig.clone();
    bad[10] ^= 1;
    assert_eq!(rv(s.verify(&mech(CKM_SM2_SM3), public, msg, &bad).expect_err("tampered")), RvError::SignatureInvalid);
    assert_eq!(
        rv(s.verify(&mech(CKM_SM2_SM3), public, msg, &sig[..63]).expect_err("short")),
        RvError::SignatureLenRange
    );
    // Keys are used only for what they are for.
    assert_eq!(rv(s.sign(&mech(CKM_SM2_SM3), public, msg).expect_err("public key")), RvError::KeyTypeInconsistent);
    assert_eq!(rv(s.sign(&mech(CKM_SM4_MAC), private, msg).expect_err("SM4 mech")), RvError::KeyTypeInconsistent);
    assert_eq!(rv(s.sign(&mech(0x8000_9999), private, msg).expect_err("unknown")), RvError::MechanismInvalid);
}

#[test]
fn ec_key_pair_gen_alias_needs_the_sm2_curve() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = Module::open(&dir.path().join("t"), 5);
    m.init();
    let s = m.user();
    let sm2 = Attribute::EcParams(SM2_EC_PARAMS.to_vec());
    let (public, private) = s
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[sm2.clone(), Attribute::Token(false)],
            &[Attribute::Token(false)],
        )
        .expect("EC keygen on SM2");
    let sig = s.sign(&mech(CKM_SM2_SM3), private, b"m").expect("sign");
    assert!(sm2_verify(&point(&s, public), "1234567812345678", b"m", &sig));
    let p256 = Attribute::EcParams(vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]);
    let err = s.generate_key_pair(&Mechanism::EccKeyPairGen, &[p256], &[]).expect_err("P-256");
    assert_eq!(rv(err), RvError::DomainParamsInvalid);
}

#[test]
fn sensitive_keys_are_unreadable() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = Module::open(&dir.path().join("t"), 5);
    m.init();
    let s = m.user();
    let (_, private) = sm2_pair(&s, "k", true);
    let info = s.get_attribute_info(private, &[AttributeType::Value, AttributeType::Label]).expect("info");
    assert!(matches!(info[0], AttributeInfo::Sensitive), "{:?}", info[0]);
    assert!(matches!(info[1], AttributeInfo::Available(1)));
    let attrs = s
        .get_attributes(
            private,
            &[AttributeType::Sensitive, AttributeType::Extractable, AttributeType::NeverExtractable],
        )
        .expect("a");
    assert_eq!(
        attrs,
        vec![Attribute::Sensitive(true), Attribute::Extractable(false), Attribute::NeverExtractable(true)]
    );
    // Sensitive cannot be switched off, extractable cannot be switched on.
    assert_eq!(
        rv(s.update_attributes(private, &[Attribute::Sensitive(false)]).expect_err("s")),
        RvError::AttributeReadOnly
    );
    assert_eq!(
        rv(s.update_attributes(private, &[Attribute::Extractable(true)]).expect_err("e")),
        RvError::AttributeReadOnly
    );
    // An imported, non-sensitive, extractable key's value can be read back.
    let scalar = [0x42u8; 32];
    let imported = s
        .create_object(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::new_vendor_defined(CKK_SM2).expect("kt")),
            Attribute::Value(scalar.to_vec()),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
            Attribute::Sign(true),
        ])
        .expect("import");
    let got = s.get_attributes(imported, &[AttributeType::Value, AttributeType::AlwaysSensitive]).expect("value");
    assert_eq!(got, vec![Attribute::Value(scalar.to_vec()), Attribute::AlwaysSensitive(false)]);
}

#[test]
fn wrong_pins_lock_the_user_until_the_so_unlocks() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = Module::open(&dir.path().join("t"), 3);
    m.init();
    let s = m.p11.open_rw_session(m.slot).expect("session");
    let wrong = AuthPin::new("not-the-pin".into());
    for _ in 0..2 {
        assert_eq!(rv(s.login(UserType::User, Some(&wrong)).expect_err("wrong")), RvError::PinIncorrect);
    }
    let info = m.p11.get_token_info(m.slot).expect("info");
    assert!(info.user_pin_final_try() && info.user_pin_count_low() && !info.user_pin_locked());
    drop(s);
    // The count survives a reload.
    let m = m.reload();
    let s = m.p11.open_rw_session(m.slot).expect("session");
    assert_eq!(rv(s.login(UserType::User, Some(&wrong)).expect_err("third")), RvError::PinIncorrect);
    let right = AuthPin::new(USER_PIN.into());
    assert_eq!(rv(s.login(UserType::User, Some(&right)).expect_err("locked")), RvError::PinLocked);
    assert!(m.p11.get_token_info(m.slot).expect("info").user_pin_locked());
    // Only the SO unlocks, by setting a new user PIN.
    s.login(UserType::So, Some(&AuthPin::new(SO_PIN.into()))).expect("so");
    s.init_pin(&AuthPin::new("new-user-pin".into())).expect("init pin");
    s.logout().expect("logout");
    s.login(UserType::User, Some(&AuthPin::new("new-user-pin".into()))).expect("unlocked");
    // C_SetPIN changes it again; the old one stops working.
    s.set_pin(&AuthPin::new("new-user-pin".into()), &AuthPin::new("third-pin".into())).expect("set pin");
    s.logout().expect("logout");
    assert_eq!(
        rv(s.login(UserType::User, Some(&AuthPin::new("new-user-pin".into()))).expect_err("old")),
        RvError::PinIncorrect
    );
    s.login(UserType::User, Some(&AuthPin::new("third-pin".into()))).expect("new pin");
    assert_eq!(
        rv(s.login(UserType::User, Some(&AuthPin::new("third-pin".into()))).expect_err("twice")),
        RvError::UserAlreadyLoggedIn
    );
    assert_eq!(rv(s.init_pin(&AuthPin::new("abc".into())).expect_err("user cannot")), RvError::UserNotLoggedIn);
}

#[test]
fn token_objects_persist_and_are_sealed_at_rest() {
    let dir = tempfile::tempdir().expect("tmp");
    let tdir = dir.path().join("t");
    let m = Module::open(&tdir, 5);
    m.init();
    let s = m.user();
    let (public, _) = sm2_pair(&s, "ca-key", true);
    let p = point(&s, public);
    let scalar = [0x24u8; 32];
    s.create_object(&[
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(KeyType::new_vendor_defined(CKK_SM2).expect("kt")),
        Attribute::Value(scalar.to_vec()),
        Attribute::Token(true),
        Attribute::Label("imported".into()),
    ])
    .expect("import");
    drop(s);
    let on_disk = std::fs::read_to_string(tdir.join("token.json")).expect("token.json");
    assert!(!on_disk.contains(&hex::encode(scalar)), "private key in clear on disk");
    assert!(on_disk.contains(&hex::encode(&p)), "public key is public");

    let m = m.reload();
    let public_session = m.p11.open_ro_session(m.slot).expect("ro");
    let privs = public_session.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)]).expect("find");
    assert!(privs.is_empty(), "private objects visible before login");
    let pubs = public_session
        .find_objects(&[Attribute::Label("ca-key".into()), Attribute::Class(ObjectClass::PUBLIC_KEY)])
        .expect("find");
    assert_eq!(pubs.len(), 1);
    drop(public_session);
    let s = m.user();
    let private =
        s.find_objects(&[Attribute::Label("ca-key".into()), Attribute::Class(ObjectClass::PRIVATE_KEY)]).expect("find");
    assert_eq!(private.len(), 1);
    let sig = s.sign(&mech(CKM_SM2_SM3), private[0], b"after reload").expect("sign");
    assert!(sm2_verify(&p, "1234567812345678", b"after reload", &sig));
    // Destroy persists too.
    s.destroy_object(private[0]).expect("destroy");
    drop(s);
    let m = m.reload();
    let s = m.user();
    assert!(
        s.find_objects(&[Attribute::Label("ca-key".into()), Attribute::Class(ObjectClass::PRIVATE_KEY)])
            .expect("f")
            .is_empty()
    );
    assert_eq!(s.find_objects(&[Attribute::Label("imported".into())]).expect("f").len(), 1);
    // Re-initialising the token destroys everything.
    drop(s);
    m.p11.init_token(m.slot, &AuthPin::new(SO_PIN.into()), "fresh").expect("reinit");
    let s = m.p11.open_ro_session(m.slot).expect("ro");
    assert!(s.find_objects(&[]).expect("f").is_empty());
    drop(s);
    assert_eq!(
        rv(m.p11.init_token(m.slot, &AuthPin::new("wrong-so-pin".into()), "x").expect_err("wrong so")),
        RvError::PinIncorrect
    );
}

#[test]
fn session_rules() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = Module::open(&dir.path().join("t"), 5);
    m.init();
    let ro = m.p11.open_ro_session(m.slot).expect("ro");
    let data = [Attribute::Class(ObjectClass::DATA), Attribute::Token(true), Attribute::Private(false)];
    assert_eq!(rv(ro.create_object(&data).expect_err("ro")), RvError::SessionReadOnly);
    let rw = m.p11.open_rw_session(m.slot).expect("rw");
    let private_data = [Attribute::Class(ObjectClass::DATA), Attribute::Private(true)];
    assert_eq!(rv(rw.create_object(&private_data).expect_err("not logged in")), RvError::UserNotLoggedIn);
    assert_eq!(rv(rw.create_object(&[Attribute::Token(true)]).expect_err("no class")), RvError::TemplateIncomplete);
    assert_eq!(
        rv(rw.login(UserType::So, Some(&AuthPin::new(SO_PIN.into()))).expect_err("ro exists")),
        RvError::SessionReadOnlyExists
    );
    let h = rw.create_object(&data).expect("public data object");
    drop(ro);
    // Session objects vanish with their session; token objects do not.
    let s2 = m.user();
    let temp = s2
        .create_object(&[Attribute::Class(ObjectClass::DATA), Attribute::Token(false), Attribute::Label("tmp".into())])
        .expect("session obj");
    drop(s2);
    // The RW session keeps the login; a new session sees the same objects but not s2's.
    let s3 = m.p11.open_rw_session(m.slot).expect("s3");
    assert_eq!(rv(s3.get_attributes(temp, &[AttributeType::Label]).expect_err("gone")), RvError::ObjectHandleInvalid);
    s3.get_attributes(h, &[AttributeType::Class]).expect("token object stays");
}

#[test]
fn sm3_sm4_and_sm2_encryption() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = Module::open(&dir.path().join("t"), 5);
    m.init();
    let s = m.user();
    // SM3, GB/T 32905 example 1.
    let d = s.digest(&mech(CKM_SM3), b"abc").expect("digest");
    assert_eq!(hex::encode(d), "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0");
    // SM4, GB/T 32907 example: key = plaintext = 0123456789abcdeffedcba9876543210.
    let kat = hex::decode("0123456789abcdeffedcba9876543210").expect("hex");
    let sm4_kt = KeyType::new_vendor_defined(CKK_SM4).expect("kt");
    let key = s
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(sm4_kt),
            Attribute::Value(kat.clone()),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Sign(true),
            Attribute::Verify(true),
        ])
        .expect("sm4 key");
    let ct = s.encrypt(&mech(CKM_SM4_ECB), key, &kat).expect("ecb");
    assert_eq!(hex::encode(&ct), "681edf34d206965e86b3e94f536e4246");
    assert_eq!(s.decrypt(&mech(CKM_SM4_ECB), key, &ct).expect("dec"), kat);
    let iv = [7u8; 16];
    let cbc = Mechanism::VendorDefined(VendorDefinedMechanism::new(vendor(CKM_SM4_CBC), Some(&iv)));
    let msg = [0x5au8; 48];
    let ct = s.encrypt(&cbc, key, &msg).expect("cbc");
    assert_eq!(s.decrypt(&cbc, key, &ct).expect("cbc dec"), msg);
    assert_eq!(rv(s.encrypt(&mech(CKM_SM4_ECB), key, &[1, 2, 3]).expect_err("len")), RvError::DataLenRange);
    assert_eq!(rv(s.encrypt(&mech(CKM_SM4_CBC), key, &msg).expect_err("no iv")), RvError::MechanismParamInvalid);
    let mac = s.sign(&mech(CKM_SM4_MAC), key, b"message").expect("mac");
    assert_eq!(mac.len(), 8);
    s.verify(&mech(CKM_SM4_MAC), key, b"message", &mac).expect("mac ok");
    assert_eq!(
        rv(s.verify(&mech(CKM_SM4_MAC), key, b"messagf", &mac).expect_err("mac bad")),
        RvError::SignatureInvalid
    );

    // Generated SM4 keys wrap and unwrap; an unextractable key refuses to be wrapped.
    let kek = s.generate_key(&mech(CKM_SM4_KEY_GEN), &[Attribute::Token(false)]).expect("kek");
    let loose = s.generate_key(&mech(CKM_SM4_KEY_GEN), &[Attribute::Extractable(true)]).expect("extractable");
    let wrapped = s.wrap_key(&mech(CKM_SM4_ECB), kek, loose).expect("wrap");
    assert_eq!(wrapped.len(), 16);
    let back = s
        .unwrap_key(
            &mech(CKM_SM4_ECB),
            kek,
            &wrapped,
            &[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::KeyType(sm4_kt)],
        )
        .expect("unwrap");
    let block = [9u8; 16];
    assert_eq!(
        s.encrypt(&mech(CKM_SM4_ECB), back, &block).expect("e1"),
        s.encrypt(&mech(CKM_SM4_ECB), loose, &block).expect("e2")
    );
    assert_eq!(rv(s.wrap_key(&mech(CKM_SM4_ECB), kek, kek).expect_err("unextractable")), RvError::KeyUnextractable);

    // SM2 encryption round trip (C1 ‖ C3 ‖ C2).
    let (public, private) = sm2_pair(&s, "enc", false);
    let ct = s.encrypt(&mech(CKM_SM2_ENCRYPT), public, b"envelope key 16B").expect("sm2 enc");
    assert_eq!(ct.len(), 97 + 16);
    assert_eq!(s.decrypt(&mech(CKM_SM2_ENCRYPT), private, &ct).expect("sm2 dec"), b"envelope key 16B");
    let mut bad = ct.clone();
    bad[100] ^= 1;
    assert_eq!(
        rv(s.decrypt(&mech(CKM_SM2_ENCRYPT), private, &bad).expect_err("tampered")),
        RvError::EncryptedDataInvalid
    );
    assert_eq!(s.generate_random_vec(32).expect("rng").len(), 32);
}

#[test]
fn sixteen_threads_sign_concurrently() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = Module::open(&dir.path().join("t"), 5);
    m.init();
    let s = m.user();
    let (public, private) = sm2_pair(&s, "shared", true);
    let p = point(&s, public);
    std::thread::scope(|scope| {
        for t in 0..16u8 {
            let (p11, slot, p) = (&m.p11, m.slot, &p);
            scope.spawn(move || {
                let s = p11.open_rw_session(slot).expect("session");
                for i in 0..25u8 {
                    let msg = [t, i];
                    let sig = s.sign(&mech(CKM_SM2_SM3), private, &msg).expect("sign");
                    assert!(sm2_verify(p, "1234567812345678", &msg, &sig), "thread {t} sig {i}");
                }
            });
        }
    });
}
