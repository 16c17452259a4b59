//! Loads the real `libsofttoken.so` through cryptoki. The module keeps one global state per
//! process, so tests in one binary take turns (a mutex), each with its own token directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

pub const SO_PIN: &str = "so-pin-87654321";
pub const USER_PIN: &str = "user-pin-1234";

static TURN: Mutex<()> = Mutex::new(());

/// The `libsofttoken.so` cargo built with this test (in `target/<profile>/deps/`: the copy in
/// `target/<profile>/` is refreshed only by `cargo build`, so it can be stale during `cargo test`).
pub fn lib_path() -> PathBuf {
    softtoken::library_path().expect("libsofttoken.so next to the test binary")
}

/// An initialised module for one token directory; finalised on drop.
pub struct Module {
    pub p11: Pkcs11,
    pub slot: Slot,
    pub dir: PathBuf,
    attempts: u32,
    _turn: MutexGuard<'static, ()>,
}

impl Module {
    /// Loads the module for `dir` with `attempts` wrong PINs allowed and a fast KDF.
    pub fn open(dir: &Path, attempts: u32) -> Self {
        let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        Self::open_with(dir, attempts, turn)
    }

    fn open_with(dir: &Path, attempts: u32, turn: MutexGuard<'static, ()>) -> Self {
        let conf = dir.with_extension("toml");
        std::fs::write(
            &conf,
            format!("directory = {:?}\nmax_pin_attempts = {attempts}\nkdf_iterations = 100000\n", dir),
        )
        .expect("conf");
        // SAFETY: tests in this binary take turns (TURN), so no other thread reads the environment now.
        unsafe { std::env::set_var("SOFTTOKEN_CONF", &conf) };
        let p11 = Pkcs11::new(lib_path()).expect("load module");
        p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).expect("C_Initialize");
        let slot = p11.get_all_slots().expect("slots")[0];
        Self { p11, slot, dir: dir.to_owned(), attempts, _turn: turn }
    }

    /// Finalises and loads again from disk.
    pub fn reload(self) -> Self {
        let (dir, attempts) = (self.dir.clone(), self.attempts);
        let mut this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never used again after its fields are moved out.
        let (p11, turn) = unsafe { (std::ptr::read(&this.p11), std::ptr::read(&this._turn)) };
        unsafe { std::ptr::drop_in_place(&mut this.dir) };
        p11.finalize().expect("C_Finalize");
        Self::open_with(&dir, attempts, turn)
    }

    /// Initialises the token and the user PIN.
    pub fn init(&self) {
        self.p11.init_token(self.slot, &AuthPin::new(SO_PIN.into()), "hsca-test").expect("init token");
        let s = self.p11.open_rw_session(self.slot).expect("rw session");
        s.login(UserType::So, Some(&AuthPin::new(SO_PIN.into()))).expect("so login");
        s.init_pin(&AuthPin::new(USER_PIN.into())).expect("init pin");
    }

    /// A logged-in RW user session.
    pub fn user(&self) -> Session {
        let s = self.p11.open_rw_session(self.slot).expect("rw session");
        s.login(UserType::User, Some(&AuthPin::new(USER_PIN.into()))).expect("user login");
        s
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        let _ = self.p11.clone().finalize();
    }
}

pub fn vendor(code: u64) -> MechanismType {
    MechanismType::new_vendor_defined(code).expect("vendor code")
}

pub fn mech(code: u64) -> Mechanism<'static> {
    Mechanism::VendorDefined(VendorDefinedMechanism::new::<()>(vendor(code), None))
}

/// Generates an SM2 key pair with the native vendor mechanism.
pub fn sm2_pair(s: &Session, label: &str, token: bool) -> (ObjectHandle, ObjectHandle) {
    s.generate_key_pair(
        &mech(softtoken::mechanism::CKM_SM2_KEY_PAIR_GEN),
        &[Attribute::Token(token), Attribute::Label(label.into())],
        &[Attribute::Token(token), Attribute::Label(label.into())],
    )
    .expect("keygen")
}

/// The public point `04‖X‖Y` of a public key object.
pub fn point(s: &Session, public: ObjectHandle) -> Vec<u8> {
    let attrs = s.get_attributes(public, &[cryptoki::object::AttributeType::EcPoint]).expect("attrs");
    match &attrs[0] {
        Attribute::EcPoint(p) => p[2..].to_vec(),
        other => panic!("{other:?}"),
    }
}

pub fn class_key(class: ObjectClass, kt: KeyType) -> [Attribute; 2] {
    [Attribute::Class(class), Attribute::KeyType(kt)]
}
