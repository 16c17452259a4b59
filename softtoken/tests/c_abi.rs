//! The raw C ABI with bad arguments: null pointers, short buffers, invalid handles, calls out of
//! order. Every one must get the right `CKR_` code and none may crash the process.

mod common;

use std::ptr::null_mut;

use cryptoki_sys::*;

struct Raw {
    _lib: libloading::Library,
    f: &'static CK_FUNCTION_LIST,
}

fn load() -> Raw {
    // SAFETY: loading our own module; its initialisers have no side effects.
    let lib = unsafe { libloading::Library::new(common::lib_path()) }.expect("dlopen");
    let get: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
        unsafe { lib.get(b"C_GetFunctionList") }.expect("C_GetFunctionList exported");
    assert_eq!(unsafe { get(null_mut()) }, CKR_ARGUMENTS_BAD);
    let mut list: *mut CK_FUNCTION_LIST = null_mut();
    assert_eq!(unsafe { get(&mut list) }, CKR_OK);
    // SAFETY: the module's function list is a static that lives as long as the library.
    let f = unsafe { &*list };
    Raw { _lib: lib, f }
}

macro_rules! call {
    ($raw:expr, $name:ident($($arg:expr),*)) => {
        unsafe { ($raw.f.$name.expect(stringify!($name)))($($arg),*) }
    };
}

#[test]
fn bad_arguments_get_the_right_codes() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = common::Module::open(&dir.path().join("t"), 5);
    m.init();
    let raw = load();

    // Already initialised by the cryptoki handle above; the module state is per process.
    assert_eq!(call!(raw, C_Initialize(null_mut())), CKR_CRYPTOKI_ALREADY_INITIALIZED);
    let mut reserved = 1u8;
    assert_eq!(call!(raw, C_Finalize(&mut reserved as *mut u8 as CK_VOID_PTR)), CKR_ARGUMENTS_BAD);
    assert_eq!(call!(raw, C_GetInfo(null_mut())), CKR_ARGUMENTS_BAD);

    // Slots: two-call convention.
    assert_eq!(call!(raw, C_GetSlotList(0, null_mut(), null_mut())), CKR_ARGUMENTS_BAD);
    let mut n: CK_ULONG = 0;
    assert_eq!(call!(raw, C_GetSlotList(0, null_mut(), &mut n)), CKR_OK);
    assert_eq!(n, 1);
    let mut slots = [99 as CK_SLOT_ID; 1];
    n = 0;
    assert_eq!(call!(raw, C_GetSlotList(0, slots.as_mut_ptr(), &mut n)), CKR_BUFFER_TOO_SMALL);
    assert_eq!(n, 1);
    assert_eq!(call!(raw, C_GetSlotList(0, slots.as_mut_ptr(), &mut n)), CKR_OK);
    assert_eq!(slots[0], 0);
    let mut info: CK_SLOT_INFO = unsafe { std::mem::zeroed() };
    assert_eq!(call!(raw, C_GetSlotInfo(7, &mut info)), CKR_SLOT_ID_INVALID);
    let mut mechs = [0 as CK_MECHANISM_TYPE; 2];
    n = 2;
    assert_eq!(call!(raw, C_GetMechanismList(0, mechs.as_mut_ptr(), &mut n)), CKR_BUFFER_TOO_SMALL);
    assert!(n > 2);
    let mut mi: CK_MECHANISM_INFO = unsafe { std::mem::zeroed() };
    assert_eq!(call!(raw, C_GetMechanismInfo(0, CKM_RSA_PKCS, &mut mi)), CKR_MECHANISM_INVALID);

    // Sessions.
    assert_eq!(call!(raw, C_OpenSession(0, CKF_SERIAL_SESSION, null_mut(), None, null_mut())), CKR_ARGUMENTS_BAD);
    let mut h: CK_SESSION_HANDLE = 0;
    assert_eq!(
        call!(raw, C_OpenSession(0, CKF_RW_SESSION, null_mut(), None, &mut h)),
        CKR_SESSION_PARALLEL_NOT_SUPPORTED
    );
    assert_eq!(call!(raw, C_OpenSession(0, CKF_SERIAL_SESSION | CKF_RW_SESSION, null_mut(), None, &mut h)), CKR_OK);
    assert_eq!(call!(raw, C_CloseSession(h + 1000)), CKR_SESSION_HANDLE_INVALID);
    assert_eq!(call!(raw, C_Login(h, CKU_USER, null_mut(), 8)), CKR_ARGUMENTS_BAD);
    assert_eq!(call!(raw, C_Login(h, 42, b"x".as_ptr() as *mut u8, 1)), CKR_USER_TYPE_INVALID);
    let pin = common::USER_PIN.as_bytes();
    assert_eq!(call!(raw, C_Login(h, CKU_USER, pin.as_ptr() as *mut u8, pin.len() as CK_ULONG)), CKR_OK);

    // Key generation with bad pointers, then a good key.
    let mut mech = CK_MECHANISM {
        mechanism: softtoken::mechanism::CKM_SM2_KEY_PAIR_GEN,
        pParameter: null_mut(),
        ulParameterLen: 0,
    };
    let (mut hpub, mut hpriv) = (0, 0);
    assert_eq!(
        call!(raw, C_GenerateKeyPair(h, &mut mech, null_mut(), 3, null_mut(), 0, &mut hpub, &mut hpriv)),
        CKR_ARGUMENTS_BAD
    );
    assert_eq!(
        call!(raw, C_GenerateKeyPair(h, &mut mech, null_mut(), 0, null_mut(), 0, null_mut(), &mut hpriv)),
        CKR_ARGUMENTS_BAD
    );
    let mut bad_bool = [CK_ATTRIBUTE { type_: CKA_TOKEN, pValue: [1u8, 1].as_ptr() as *mut _, ulValueLen: 2 }];
    assert_eq!(
        call!(raw, C_GenerateKeyPair(h, &mut mech, bad_bool.as_mut_ptr(), 1, null_mut(), 0, &mut hpub, &mut hpriv)),
        CKR_ATTRIBUTE_VALUE_INVALID
    );
    assert_eq!(
        call!(raw, C_GenerateKeyPair(h, &mut mech, null_mut(), 0, null_mut(), 0, &mut hpub, &mut hpriv)),
        CKR_OK
    );
    assert_eq!(call!(raw, C_SignInit(h, null_mut(), hpriv)), CKR_ARGUMENTS_BAD);
    let mut sign =
        CK_MECHANISM { mechanism: softtoken::mechanism::CKM_SM2_SM3, pParameter: null_mut(), ulParameterLen: 0 };
    assert_eq!(call!(raw, C_SignInit(h, &mut sign, 0xdead)), CKR_KEY_HANDLE_INVALID);
    let mut sig = [0u8; 64];
    let mut sig_len: CK_ULONG = 64;
    assert_eq!(
        call!(raw, C_Sign(h, b"m".as_ptr() as *mut u8, 1, sig.as_mut_ptr(), &mut sig_len)),
        CKR_OPERATION_NOT_INITIALIZED
    );
    assert_eq!(call!(raw, C_SignInit(h, &mut sign, hpriv)), CKR_OK);
    assert_eq!(call!(raw, C_SignInit(h, &mut sign, hpriv)), CKR_OPERATION_ACTIVE);
    // Length query, then a short buffer: both keep the operation alive.
    sig_len = 0;
    assert_eq!(call!(raw, C_Sign(h, b"m".as_ptr() as *mut u8, 1, null_mut(), &mut sig_len)), CKR_OK);
    assert_eq!(sig_len, 64);
    sig_len = 10;
    assert_eq!(
        call!(raw, C_Sign(h, b"m".as_ptr() as *mut u8, 1, sig.as_mut_ptr(), &mut sig_len)),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(sig_len, 64);
    // Any other failure ends the operation (PKCS#11 v2.40 §5.2).
    assert_eq!(call!(raw, C_Sign(h, b"m".as_ptr() as *mut u8, 1, sig.as_mut_ptr(), null_mut())), CKR_ARGUMENTS_BAD);
    assert_eq!(
        call!(raw, C_Sign(h, b"m".as_ptr() as *mut u8, 1, sig.as_mut_ptr(), &mut sig_len)),
        CKR_OPERATION_NOT_INITIALIZED
    );
    assert_eq!(call!(raw, C_SignInit(h, &mut sign, hpriv)), CKR_OK);
    assert_eq!(call!(raw, C_Sign(h, null_mut(), 5, sig.as_mut_ptr(), &mut sig_len)), CKR_ARGUMENTS_BAD);
    assert_eq!(call!(raw, C_SignInit(h, &mut sign, hpriv)), CKR_OK);
    sig_len = 64;
    assert_eq!(call!(raw, C_Sign(h, b"m".as_ptr() as *mut u8, 1, sig.as_mut_ptr(), &mut sig_len)), CKR_OK);
    assert_eq!(sig_len, 64);

    // Attributes: sensitive, unknown, short buffer, size query.
    let mut value = [0u8; 2];
    let mut label = [0u8; 1];
    let mut attrs = [
        CK_ATTRIBUTE { type_: CKA_VALUE, pValue: null_mut(), ulValueLen: 0 },
        CK_ATTRIBUTE { type_: CKA_EC_POINT, pValue: value.as_mut_ptr() as *mut _, ulValueLen: 2 },
        CK_ATTRIBUTE { type_: 0x7fff_0001, pValue: label.as_mut_ptr() as *mut _, ulValueLen: 1 },
        CK_ATTRIBUTE { type_: CKA_EC_PARAMS, pValue: null_mut(), ulValueLen: 0 },
    ];
    assert_eq!(call!(raw, C_GetAttributeValue(h, hpriv, attrs.as_mut_ptr(), 4)), CKR_ATTRIBUTE_SENSITIVE);
    assert_eq!(attrs[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    assert_eq!(attrs[1].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    assert_eq!(attrs[2].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    assert_eq!(attrs[3].ulValueLen, 10);
    let mut one = [CK_ATTRIBUTE { type_: CKA_EC_POINT, pValue: value.as_mut_ptr() as *mut _, ulValueLen: 2 }];
    assert_eq!(call!(raw, C_GetAttributeValue(h, hpub, one.as_mut_ptr(), 1)), CKR_BUFFER_TOO_SMALL);
    assert_eq!(call!(raw, C_GetAttributeValue(h, hpub, null_mut(), 1)), CKR_ARGUMENTS_BAD);
    assert_eq!(call!(raw, C_GetAttributeValue(h, 0xbeef, one.as_mut_ptr(), 1)), CKR_OBJECT_HANDLE_INVALID);
    assert_eq!(call!(raw, C_DestroyObject(h, 0xbeef)), CKR_OBJECT_HANDLE_INVALID);

    // Find, digest, random.
    let mut found = [0 as CK_OBJECT_HANDLE; 4];
    let mut count: CK_ULONG = 0;
    assert_eq!(call!(raw, C_FindObjects(h, found.as_mut_ptr(), 4, &mut count)), CKR_OPERATION_NOT_INITIALIZED);
    assert_eq!(call!(raw, C_FindObjectsInit(h, null_mut(), 0)), CKR_OK);
    assert_eq!(call!(raw, C_FindObjectsInit(h, null_mut(), 0)), CKR_OPERATION_ACTIVE);
    assert_eq!(call!(raw, C_FindObjects(h, null_mut(), 4, &mut count)), CKR_ARGUMENTS_BAD);
    assert_eq!(call!(raw, C_FindObjects(h, found.as_mut_ptr(), 4, &mut count)), CKR_OK);
    assert!(count >= 2);
    assert_eq!(call!(raw, C_FindObjectsFinal(h)), CKR_OK);
    assert_eq!(call!(raw, C_FindObjectsFinal(h)), CKR_OPERATION_NOT_INITIALIZED);
    let mut digest =
        CK_MECHANISM { mechanism: softtoken::mechanism::CKM_SM3, pParameter: null_mut(), ulParameterLen: 0 };
    assert_eq!(call!(raw, C_DigestInit(h, &mut digest)), CKR_OK);
    let mut out = [0u8; 31];
    let mut out_len: CK_ULONG = 31;
    assert_eq!(call!(raw, C_DigestFinal(h, out.as_mut_ptr(), &mut out_len)), CKR_BUFFER_TOO_SMALL);
    assert_eq!(out_len, 32);
    assert_eq!(call!(raw, C_GenerateRandom(h, null_mut(), 16)), CKR_ARGUMENTS_BAD);
    assert_eq!(call!(raw, C_SeedRandom(h, null_mut(), 0)), CKR_RANDOM_SEED_NOT_SUPPORTED);
    // Arguments are checked before what the token supports (as google/pkcs11test expects).
    assert_eq!(call!(raw, C_SeedRandom(h, null_mut(), 1)), CKR_ARGUMENTS_BAD);
    assert_eq!(call!(raw, C_GetMechanismInfo(0, CKM_RSA_PKCS, null_mut())), CKR_ARGUMENTS_BAD);

    // What the token does not do says so.
    assert_eq!(call!(raw, C_DigestKey(h, hpriv)), CKR_FUNCTION_NOT_SUPPORTED);
    assert_eq!(call!(raw, C_DeriveKey(h, &mut mech, hpriv, null_mut(), 0, null_mut())), CKR_FUNCTION_NOT_SUPPORTED);
    assert_eq!(call!(raw, C_CancelFunction(h)), CKR_FUNCTION_NOT_PARALLEL);

    assert_eq!(call!(raw, C_CloseSession(h)), CKR_OK);
    // Finalise but keep the module's turn: another test must not initialise it meanwhile.
    m.p11.clone().finalize().expect("C_Finalize");
    // After finalisation every call says so.
    assert_eq!(call!(raw, C_GetSlotList(0, null_mut(), &mut n)), CKR_CRYPTOKI_NOT_INITIALIZED);
    assert_eq!(
        call!(raw, C_OpenSession(0, CKF_SERIAL_SESSION, null_mut(), None, &mut h)),
        CKR_CRYPTOKI_NOT_INITIALIZED
    );
    assert_eq!(call!(raw, C_Finalize(null_mut())), CKR_CRYPTOKI_NOT_INITIALIZED);
    // … before any argument check.
    assert_eq!(call!(raw, C_EncryptInit(1, null_mut(), 1)), CKR_CRYPTOKI_NOT_INITIALIZED);
    assert_eq!(call!(raw, C_InitToken(88888, null_mut(), 0, null_mut())), CKR_CRYPTOKI_NOT_INITIALIZED);
    assert_eq!(call!(raw, C_SeedRandom(1, null_mut(), 1)), CKR_CRYPTOKI_NOT_INITIALIZED);
    drop(m);
}

fn attr(t: CK_ATTRIBUTE_TYPE, v: &[u8]) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE { type_: t, pValue: v.as_ptr() as *mut _, ulValueLen: v.len() as CK_ULONG }
}

fn ulong(v: CK_ULONG) -> [u8; 8] {
    v.to_ne_bytes()
}

/// The attack of issue 12 step by step, as any application loading the module could try it:
/// flip a CA key extractable with a non-0/1 CK_BBOOL, then wrap it out under an SM4 key it imported.
#[test]
fn a_ca_key_cannot_be_turned_extractable_and_wrapped_out() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = common::Module::open(&dir.path().join("t"), 5);
    m.init();
    let raw = load();
    let mut h: CK_SESSION_HANDLE = 0;
    assert_eq!(call!(raw, C_OpenSession(0, CKF_SERIAL_SESSION | CKF_RW_SESSION, null_mut(), None, &mut h)), CKR_OK);
    let pin = common::USER_PIN.as_bytes();
    assert_eq!(call!(raw, C_Login(h, CKU_USER, pin.as_ptr() as *mut u8, pin.len() as CK_ULONG)), CKR_OK);

    // A CA key as a careless caller makes it: token, default (sensitive, unextractable) private half.
    let mut gen_mech = CK_MECHANISM {
        mechanism: softtoken::mechanism::CKM_SM2_KEY_PAIR_GEN,
        pParameter: null_mut(),
        ulParameterLen: 0,
    };
    let mut tpl = [attr(CKA_TOKEN, &[1])];
    let mut priv_tpl = [attr(CKA_TOKEN, &[1])];
    let (mut hpub, mut ca) = (0, 0);
    assert_eq!(
        call!(
            raw,
            C_GenerateKeyPair(h, &mut gen_mech, tpl.as_mut_ptr(), 1, priv_tpl.as_mut_ptr(), 1, &mut hpub, &mut ca)
        ),
        CKR_OK
    );

    // 0x02 is not a CK_BBOOL: refused before any rule reads it.
    let mut flip = [attr(CKA_EXTRACTABLE, &[0x02])];
    assert_eq!(call!(raw, C_SetAttributeValue(h, ca, flip.as_mut_ptr(), 1)), CKR_ATTRIBUTE_VALUE_INVALID);
    let mut flip = [attr(CKA_SENSITIVE, &[0xff])];
    assert_eq!(call!(raw, C_SetAttributeValue(h, ca, flip.as_mut_ptr(), 1)), CKR_ATTRIBUTE_VALUE_INVALID);
    // Well-formed values meet the one-way rules.
    let mut flip = [attr(CKA_EXTRACTABLE, &[1])];
    assert_eq!(call!(raw, C_SetAttributeValue(h, ca, flip.as_mut_ptr(), 1)), CKR_ATTRIBUTE_READ_ONLY);
    let mut flip = [attr(CKA_SENSITIVE, &[0])];
    assert_eq!(call!(raw, C_SetAttributeValue(h, ca, flip.as_mut_ptr(), 1)), CKR_ATTRIBUTE_READ_ONLY);
    let mut flip = [attr(CKA_PRIVATE, &[0])];
    assert_eq!(call!(raw, C_SetAttributeValue(h, ca, flip.as_mut_ptr(), 1)), CKR_ATTRIBUTE_READ_ONLY);
    // Switching it further off is allowed, and it stays unextractable.
    let mut off = [attr(CKA_EXTRACTABLE, &[0])];
    assert_eq!(call!(raw, C_SetAttributeValue(h, ca, off.as_mut_ptr(), 1)), CKR_OK);
    let mut ext = [0xAAu8];
    let mut read = [attr(CKA_EXTRACTABLE, &ext)];
    read[0].pValue = ext.as_mut_ptr() as *mut _;
    assert_eq!(call!(raw, C_GetAttributeValue(h, ca, read.as_mut_ptr(), 1)), CKR_OK);
    assert_eq!(ext, [0]);

    // The caller imports an SM4 key it knows and tries to wrap the CA key out under it.
    let kek = [0x11u8; 16];
    let (class, kt) = (ulong(CKO_SECRET_KEY), ulong(softtoken::mechanism::CKK_SM4));
    let mut sm4 = [attr(CKA_CLASS, &class), attr(CKA_KEY_TYPE, &kt), attr(CKA_VALUE, &kek), attr(CKA_WRAP, &[1])];
    let mut hkek = 0;
    assert_eq!(call!(raw, C_CreateObject(h, sm4.as_mut_ptr(), 4, &mut hkek)), CKR_OK);
    let mut ecb =
        CK_MECHANISM { mechanism: softtoken::mechanism::CKM_SM4_ECB, pParameter: null_mut(), ulParameterLen: 0 };
    let mut out = [0u8; 64];
    let mut out_len: CK_ULONG = 64;
    assert_eq!(call!(raw, C_WrapKey(h, &mut ecb, hkek, ca, out.as_mut_ptr(), &mut out_len)), CKR_KEY_UNEXTRACTABLE);
    assert_eq!(out, [0u8; 64]);

    // Private and secret keys cannot be created in the clear (CKA_PRIVATE = false).
    let mut clear_priv = [attr(CKA_PRIVATE, &[0])];
    assert_eq!(
        call!(
            raw,
            C_GenerateKeyPair(h, &mut gen_mech, tpl.as_mut_ptr(), 1, clear_priv.as_mut_ptr(), 1, &mut hpub, &mut ca)
        ),
        CKR_ATTRIBUTE_VALUE_INVALID
    );
    let mut sm4_clear =
        [attr(CKA_CLASS, &class), attr(CKA_KEY_TYPE, &kt), attr(CKA_VALUE, &kek), attr(CKA_PRIVATE, &[0])];
    assert_eq!(call!(raw, C_CreateObject(h, sm4_clear.as_mut_ptr(), 4, &mut hkek)), CKR_ATTRIBUTE_VALUE_INVALID);
    let mut sm4_gen =
        CK_MECHANISM { mechanism: softtoken::mechanism::CKM_SM4_KEY_GEN, pParameter: null_mut(), ulParameterLen: 0 };
    let mut clear = [attr(CKA_PRIVATE, &[0])];
    assert_eq!(
        call!(raw, C_GenerateKey(h, &mut sm4_gen, clear.as_mut_ptr(), 1, &mut hkek)),
        CKR_ATTRIBUTE_VALUE_INVALID
    );

    // An unmodifiable key (as hsm makes CA keys) refuses every change, even a label.
    let mut fixed_tpl = [attr(CKA_TOKEN, &[1]), attr(CKA_MODIFIABLE, &[0])];
    let mut fixed_pub = [attr(CKA_TOKEN, &[1])];
    let (mut p2, mut k2) = (0, 0);
    assert_eq!(
        call!(
            raw,
            C_GenerateKeyPair(h, &mut gen_mech, fixed_pub.as_mut_ptr(), 1, fixed_tpl.as_mut_ptr(), 2, &mut p2, &mut k2)
        ),
        CKR_OK
    );
    let mut label = [attr(CKA_LABEL, b"renamed")];
    assert_eq!(call!(raw, C_SetAttributeValue(h, k2, label.as_mut_ptr(), 1)), CKR_ATTRIBUTE_READ_ONLY);
    let mut off = [attr(CKA_EXTRACTABLE, &[0])];
    assert_eq!(call!(raw, C_SetAttributeValue(h, k2, off.as_mut_ptr(), 1)), CKR_ATTRIBUTE_READ_ONLY);
    assert_eq!(call!(raw, C_CloseSession(h)), CKR_OK);
}

/// PKCS#11 v2.40 §5.2 and §5.11: a failed call ends the operation, and a single-part call cannot
/// finish an operation that `…Update` started.
#[test]
fn failed_calls_end_operations_and_single_part_calls_cannot_finish_multi_part_ones() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = common::Module::open(&dir.path().join("t"), 5);
    m.init();
    let raw = load();
    let mut h: CK_SESSION_HANDLE = 0;
    assert_eq!(call!(raw, C_OpenSession(0, CKF_SERIAL_SESSION | CKF_RW_SESSION, null_mut(), None, &mut h)), CKR_OK);
    let pin = common::USER_PIN.as_bytes();
    assert_eq!(call!(raw, C_Login(h, CKU_USER, pin.as_ptr() as *mut u8, pin.len() as CK_ULONG)), CKR_OK);
    let mut gen_mech = CK_MECHANISM {
        mechanism: softtoken::mechanism::CKM_SM2_KEY_PAIR_GEN,
        pParameter: null_mut(),
        ulParameterLen: 0,
    };
    let (mut hpub, mut hpriv) = (0, 0);
    assert_eq!(
        call!(raw, C_GenerateKeyPair(h, &mut gen_mech, null_mut(), 0, null_mut(), 0, &mut hpub, &mut hpriv)),
        CKR_OK
    );
    let mut raw_sign =
        CK_MECHANISM { mechanism: softtoken::mechanism::CKM_SM2, pParameter: null_mut(), ulParameterLen: 0 };
    let mut sig = [0u8; 64];
    let mut sig_len: CK_ULONG = 64;

    // Raw SM2 wants 32 bytes: the failed C_Sign ends the operation.
    assert_eq!(call!(raw, C_SignInit(h, &mut raw_sign, hpriv)), CKR_OK);
    assert_eq!(
        call!(raw, C_Sign(h, b"short".as_ptr() as *mut u8, 5, sig.as_mut_ptr(), &mut sig_len)),
        CKR_DATA_LEN_RANGE
    );
    let e = [7u8; 32];
    assert_eq!(
        call!(raw, C_Sign(h, e.as_ptr() as *mut u8, 32, sig.as_mut_ptr(), &mut sig_len)),
        CKR_OPERATION_NOT_INITIALIZED
    );

    // C_SignUpdate then C_Sign: refused, and that ends the operation too.
    let mut sm3 =
        CK_MECHANISM { mechanism: softtoken::mechanism::CKM_SM2_SM3, pParameter: null_mut(), ulParameterLen: 0 };
    assert_eq!(call!(raw, C_SignInit(h, &mut sm3, hpriv)), CKR_OK);
    assert_eq!(call!(raw, C_SignUpdate(h, b"part".as_ptr() as *mut u8, 4)), CKR_OK);
    assert_eq!(
        call!(raw, C_Sign(h, b"rest".as_ptr() as *mut u8, 4, sig.as_mut_ptr(), &mut sig_len)),
        CKR_OPERATION_ACTIVE
    );
    assert_eq!(call!(raw, C_SignFinal(h, sig.as_mut_ptr(), &mut sig_len)), CKR_OPERATION_NOT_INITIALIZED);
    // C_SignUpdate then C_SignFinal works, and a new single-part sign after it too.
    assert_eq!(call!(raw, C_SignInit(h, &mut sm3, hpriv)), CKR_OK);
    assert_eq!(call!(raw, C_SignUpdate(h, b"part".as_ptr() as *mut u8, 4)), CKR_OK);
    sig_len = 64;
    assert_eq!(call!(raw, C_SignFinal(h, sig.as_mut_ptr(), &mut sig_len)), CKR_OK);
    assert_eq!(call!(raw, C_SignInit(h, &mut sm3, hpriv)), CKR_OK);
    assert_eq!(call!(raw, C_Sign(h, b"part".as_ptr() as *mut u8, 4, sig.as_mut_ptr(), &mut sig_len)), CKR_OK);

    // The same rule for digests and verification.
    let mut digest =
        CK_MECHANISM { mechanism: softtoken::mechanism::CKM_SM3, pParameter: null_mut(), ulParameterLen: 0 };
    let mut out = [0u8; 32];
    let mut out_len: CK_ULONG = 32;
    assert_eq!(call!(raw, C_DigestInit(h, &mut digest)), CKR_OK);
    assert_eq!(call!(raw, C_DigestUpdate(h, b"a".as_ptr() as *mut u8, 1)), CKR_OK);
    assert_eq!(
        call!(raw, C_Digest(h, b"b".as_ptr() as *mut u8, 1, out.as_mut_ptr(), &mut out_len)),
        CKR_OPERATION_ACTIVE
    );
    assert_eq!(call!(raw, C_DigestFinal(h, out.as_mut_ptr(), &mut out_len)), CKR_OPERATION_NOT_INITIALIZED);
    assert_eq!(call!(raw, C_VerifyInit(h, &mut sm3, hpub)), CKR_OK);
    assert_eq!(call!(raw, C_VerifyUpdate(h, b"part".as_ptr() as *mut u8, 4)), CKR_OK);
    assert_eq!(call!(raw, C_Verify(h, b"x".as_ptr() as *mut u8, 1, sig.as_mut_ptr(), 64)), CKR_OPERATION_ACTIVE);
    assert_eq!(call!(raw, C_VerifyFinal(h, sig.as_mut_ptr(), 64)), CKR_OPERATION_NOT_INITIALIZED);
}

/// C_CreateObject stores only keys the token can use: SM2 points on the curve, no foreign key types.
#[test]
fn created_public_keys_must_be_sm2_points_and_foreign_key_types_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = common::Module::open(&dir.path().join("t"), 5);
    m.init();
    let raw = load();
    let mut h: CK_SESSION_HANDLE = 0;
    assert_eq!(call!(raw, C_OpenSession(0, CKF_SERIAL_SESSION | CKF_RW_SESSION, null_mut(), None, &mut h)), CKR_OK);
    let pin = common::USER_PIN.as_bytes();
    assert_eq!(call!(raw, C_Login(h, CKU_USER, pin.as_ptr() as *mut u8, pin.len() as CK_ULONG)), CKR_OK);

    let public = ulong(CKO_PUBLIC_KEY);
    let sm2 = ulong(softtoken::mechanism::CKK_SM2);
    let good = softtoken::crypto::Sm2Secret::generate().expect("key").0.public_point();
    let mut off_curve = good.clone();
    off_curve[64] ^= 1;
    let mut der = vec![0x04, 0x41];
    der.extend_from_slice(&good);
    let mut o = 0;
    for (point, want) in [
        (&good[..], CKR_OK),
        (&der[..], CKR_OK),
        (&off_curve[..], CKR_ATTRIBUTE_VALUE_INVALID),
        (&[0x04, 0x00][..], CKR_ATTRIBUTE_VALUE_INVALID),
        (&good[..33], CKR_ATTRIBUTE_VALUE_INVALID),
    ] {
        let mut tpl = [attr(CKA_CLASS, &public), attr(CKA_KEY_TYPE, &sm2), attr(CKA_EC_POINT, point)];
        assert_eq!(call!(raw, C_CreateObject(h, tpl.as_mut_ptr(), 3, &mut o)), want, "{point:02x?}");
    }
    // EC on another curve, RSA public and private keys, AES secret keys: not this token's.
    let p256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let ec = ulong(CKK_EC);
    let mut tpl =
        [attr(CKA_CLASS, &public), attr(CKA_KEY_TYPE, &ec), attr(CKA_EC_PARAMS, p256), attr(CKA_EC_POINT, &good)];
    assert_eq!(call!(raw, C_CreateObject(h, tpl.as_mut_ptr(), 4, &mut o)), CKR_ATTRIBUTE_VALUE_INVALID);
    let rsa = ulong(CKK_RSA);
    let mut tpl = [
        attr(CKA_CLASS, &public),
        attr(CKA_KEY_TYPE, &rsa),
        attr(CKA_MODULUS, &[0xc5; 128]),
        attr(CKA_PUBLIC_EXPONENT, &[1, 0, 1]),
    ];
    assert_eq!(call!(raw, C_CreateObject(h, tpl.as_mut_ptr(), 4, &mut o)), CKR_ATTRIBUTE_VALUE_INVALID);
    let private = ulong(CKO_PRIVATE_KEY);
    let mut tpl = [attr(CKA_CLASS, &private), attr(CKA_KEY_TYPE, &rsa), attr(CKA_VALUE, &[0xc5; 128])];
    assert_eq!(call!(raw, C_CreateObject(h, tpl.as_mut_ptr(), 3, &mut o)), CKR_ATTRIBUTE_VALUE_INVALID);
    let (secret, aes) = (ulong(CKO_SECRET_KEY), ulong(CKK_AES));
    let mut tpl = [attr(CKA_CLASS, &secret), attr(CKA_KEY_TYPE, &aes), attr(CKA_VALUE, &[1; 16])];
    assert_eq!(call!(raw, C_CreateObject(h, tpl.as_mut_ptr(), 3, &mut o)), CKR_ATTRIBUTE_VALUE_INVALID);
    // An SM2 private key whose stated point is not its own.
    let scalar = [0x42u8; 32];
    let mut tpl =
        [attr(CKA_CLASS, &private), attr(CKA_KEY_TYPE, &sm2), attr(CKA_VALUE, &scalar), attr(CKA_EC_POINT, &good)];
    assert_eq!(call!(raw, C_CreateObject(h, tpl.as_mut_ptr(), 4, &mut o)), CKR_ATTRIBUTE_VALUE_INVALID);
}
