//! The token: slot and token state, sessions, login, objects and cryptographic operations.
//!
//! One `Token` lives behind the module's global mutex. Each session's operation state sits
//! behind its own mutex, so `C_Sign` on different sessions runs in parallel: the global lock is
//! held only to find the session.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use cryptoki_sys::*;
use sm3::Digest;
use zeroize::Zeroizing;

use crate::config::Config;
use crate::crypto::{self, CryptoError, Sm2Secret, Sm3Hasher};
use crate::mechanism::{CKK_SM2, CKK_SM4, DEFAULT_SIGNER_ID, Mech, SM2_EC_PARAMS, is_sm2_key_type, is_sm4_key_type};
use crate::object::{Object, bbool, ulong};
use crate::store::{self, TokenFile};

/// A `CK_RV` error.
pub type Rv = CK_RV;
/// Result with a `CK_RV` error.
pub type R<T> = Result<T, Rv>;
/// An attribute template: (type, value).
pub type Template = Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)>;

/// The one slot.
pub const SLOT_ID: CK_SLOT_ID = 0;
const MIN_PIN: usize = 4;
const MAX_PIN: usize = 255;
const MAX_SESSIONS: usize = 1024;

fn crypto_rv(e: CryptoError) -> Rv {
    match e {
        CryptoError::BadKey => CKR_KEY_HANDLE_INVALID,
        CryptoError::BadLength => CKR_DATA_LEN_RANGE,
        CryptoError::Invalid => CKR_ENCRYPTED_DATA_INVALID,
        CryptoError::Random => CKR_DEVICE_ERROR,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Login {
    Public,
    User,
    So,
}

/// A key an operation holds on to for its whole life.
pub enum KeyRef {
    /// An SM2 private key.
    Private(Arc<Sm2Secret>),
    /// An SM2 public point `04 ‖ X ‖ Y`.
    Public(Vec<u8>),
    /// An SM4 key value.
    Secret(Zeroizing<Vec<u8>>),
}

/// A sign or verify in progress.
pub enum SignOp {
    /// SM2 over a caller-supplied digest.
    Sm2Raw { key: KeyRef, buf: Vec<u8> },
    /// SM2-with-SM3: the hasher already holds Z.
    Sm2Sm3 { key: KeyRef, hasher: Sm3Hasher },
    /// SM4 CBC-MAC.
    Sm4Mac { key: KeyRef, buf: Zeroizing<Vec<u8>> },
}

/// An encrypt or decrypt in progress (data is buffered and processed at the end).
pub struct CipherOp {
    mech: Mech,
    key: KeyRef,
    iv: Option<[u8; 16]>,
    buf: Zeroizing<Vec<u8>>,
}

/// The kinds of cryptographic operation a session runs, one of each at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// `C_SignInit` … `C_Sign` / `C_SignFinal`.
    Sign,
    /// `C_VerifyInit` … `C_Verify` / `C_VerifyFinal`.
    Verify,
    /// `C_DigestInit` … `C_Digest` / `C_DigestFinal`.
    Digest,
    /// `C_EncryptInit` … `C_Encrypt` / `C_EncryptFinal`.
    Encrypt,
    /// `C_DecryptInit` … `C_Decrypt` / `C_DecryptFinal`.
    Decrypt,
}

/// Per-session operation state.
#[derive(Default)]
pub struct Session {
    find: Option<Vec<CK_OBJECT_HANDLE>>,
    sign: Option<SignOp>,
    verify: Option<SignOp>,
    digest: Option<Sm3Hasher>,
    encrypt: Option<CipherOp>,
    decrypt: Option<CipherOp>,
    /// Which operations have seen an `…Update` call (indexed by `OpKind`).
    multi: [bool; 5],
}

struct SessionEntry {
    rw: bool,
    state: Arc<Mutex<Session>>,
}

struct Entry {
    obj: Object,
    /// The owning session, for session objects.
    session: Option<CK_SESSION_HANDLE>,
}

/// The module's in-memory state: sessions, login, the objects this process sees. Behind the
/// token's mutex, which is held only for in-memory work (never PIN hashing, key generation or
/// file I/O).
pub struct Inner {
    cfg: Config,
    /// The token file as last read or written (header, PIN records, generation).
    file: TokenFile,
    /// `token.json`'s identity when last read, to notice writes by other processes.
    seen: Option<store::Stamp>,
    master: Option<Zeroizing<Vec<u8>>>,
    login: Login,
    /// Bumped at every login and logout: a view computed under another login is not applied.
    epoch: u64,
    objects: BTreeMap<CK_OBJECT_HANDLE, Entry>,
    sessions: HashMap<CK_SESSION_HANDLE, SessionEntry>,
    next_session: CK_SESSION_HANDLE,
    next_session_object: CK_OBJECT_HANDLE,
    key_cache: HashMap<CK_OBJECT_HANDLE, Arc<Sm2Secret>>,
}

/// The token: its configuration and the in-memory state behind a short-held mutex.
pub struct Token {
    cfg: Config,
    inner: Mutex<Inner>,
}

/// Session objects get handles from here up; token objects from `token.json`'s counter (shared
/// by every process), so the two never collide.
const SESSION_OBJECTS: CK_OBJECT_HANDLE = 0x4000_0000;

/// What a write needs from the in-memory state, copied out so the write runs without the lock.
struct WriteCtx {
    rw: bool,
    login: Login,
    master: Option<Zeroizing<Vec<u8>>>,
    epoch: u64,
    serial: String,
}

/// Token objects as a write or read left them: public ones in the file, private ones opened
/// (when the reader had the master key) under login `epoch`.
type Private = Option<(Vec<(u64, Object)>, u64)>;

/// Blank-padded fixed-width text, as PKCS#11 info structures want it.
pub(crate) fn pad<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [b' '; N];
    for (o, b) in out.iter_mut().zip(s.bytes()) {
        *o = b;
    }
    out
}

fn check_pin(pin: &[u8]) -> R<()> {
    if (MIN_PIN..=MAX_PIN).contains(&pin.len()) { Ok(()) } else { Err(CKR_PIN_LEN_RANGE) }
}

/// `CKA_EC_POINT` as DER OCTET STRING.
fn ec_point_der(point: &[u8]) -> Vec<u8> {
    let mut v = vec![0x04, point.len() as u8];
    v.extend_from_slice(point);
    v
}

/// The raw point from `CKA_EC_POINT`, DER-wrapped or not.
fn ec_point_raw(v: &[u8]) -> Option<Vec<u8>> {
    match v {
        [0x04, 0x41, rest @ ..] if rest.len() == 65 => Some(rest.to_vec()),
        [0x04, ..] if v.len() == 65 => Some(v.to_vec()),
        _ => None,
    }
}

const ULONG_ATTRS: [CK_ATTRIBUTE_TYPE; 6] =
    [CKA_CLASS, CKA_KEY_TYPE, CKA_CERTIFICATE_TYPE, CKA_VALUE_LEN, CKA_MODULUS_BITS, CKA_KEY_GEN_MECHANISM];
const BOOL_ATTRS: [CK_ATTRIBUTE_TYPE; 18] = [
    CKA_ALWAYS_AUTHENTICATE,
    CKA_TOKEN,
    CKA_PRIVATE,
    CKA_MODIFIABLE,
    CKA_SENSITIVE,
    CKA_EXTRACTABLE,
    CKA_SIGN,
    CKA_VERIFY,
    CKA_ENCRYPT,
    CKA_DECRYPT,
    CKA_WRAP,
    CKA_UNWRAP,
    CKA_DERIVE,
    CKA_LOCAL,
    CKA_ALWAYS_SENSITIVE,
    CKA_NEVER_EXTRACTABLE,
    CKA_SIGN_RECOVER,
    CKA_VERIFY_RECOVER,
];
/// Set only by the token.
const TOKEN_SET: [CK_ATTRIBUTE_TYPE; 4] =
    [CKA_LOCAL, CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE, CKA_KEY_GEN_MECHANISM];

fn check_template(t: &Template) -> R<()> {
    for (ty, v) in t {
        if ULONG_ATTRS.contains(ty) && v.len() != std::mem::size_of::<CK_ULONG>() {
            return Err(CKR_ATTRIBUTE_VALUE_INVALID);
        }
        // CK_BBOOL is CK_FALSE or CK_TRUE: 0x02 is neither, and must not read as "true" to one
        // check and "not false" to another.
        if BOOL_ATTRS.contains(ty) && !matches!(v.as_slice(), [0] | [1]) {
            return Err(CKR_ATTRIBUTE_VALUE_INVALID);
        }
    }
    Ok(())
}

/// Private and secret keys are stored sealed; `CKA_PRIVATE = false` would store them in clear.
fn check_private_key_template(class: Option<CK_OBJECT_CLASS>, t: &Template) -> R<()> {
    let key = matches!(class, Some(CKO_PRIVATE_KEY | CKO_SECRET_KEY));
    if key && t.iter().any(|(ty, v)| *ty == CKA_PRIVATE && v.as_slice() == [0]) {
        return Err(CKR_ATTRIBUTE_VALUE_INVALID);
    }
    Ok(())
}

/// Defaults first, then the caller's template over them.
fn build(defaults: Template, template: &Template) -> Object {
    let mut obj = Object::default();
    for (t, v) in defaults.into_iter().chain(template.iter().cloned()) {
        obj.attrs.insert(t, v);
    }
    obj
}

impl Inner {
    fn initialized(&self) -> bool {
        self.file.so.is_some()
    }

    /// Replaces this process's token objects with those of `file` (and of `private`, opened
    /// under login epoch `private.1`), unless a newer view is already in place.
    fn apply_view(&mut self, file: TokenFile, private: Private) {
        if file.generation < self.file.generation {
            return;
        }
        let private = private.filter(|(_, epoch)| self.login == Login::User && *epoch == self.epoch);
        let replace_private = private.is_some();
        // Private objects stay when this view could not open them (it was read without the key).
        self.objects.retain(|_, e| e.session.is_some() || (e.obj.is_private() && !replace_private));
        for (h, obj) in file.public_objects.iter().cloned() {
            self.objects.insert(h, Entry { obj, session: None });
        }
        for (h, obj) in private.into_iter().flat_map(|(p, _)| p) {
            self.objects.insert(h, Entry { obj, session: None });
        }
        let objects = &self.objects;
        self.key_cache.retain(|h, _| objects.contains_key(h));
        self.file = file;
    }

    fn ctx(&self, h: CK_SESSION_HANDLE) -> R<WriteCtx> {
        let rw = self.session_entry(h)?.rw;
        Ok(WriteCtx {
            rw,
            login: self.login,
            master: self.master.clone(),
            epoch: self.epoch,
            serial: self.file.serial.clone(),
        })
    }

    // ---- slot, token, mechanisms ------------------------------------------------------------

    /// `C_GetSlotInfo`.
    pub fn slot_info(&self) -> CK_SLOT_INFO {
        CK_SLOT_INFO {
            slotDescription: pad("softtoken SM2/SM3/SM4 slot"),
            manufacturerID: pad("HSCA"),
            flags: CKF_TOKEN_PRESENT,
            hardwareVersion: CK_VERSION { major: 0, minor: 1 },
            firmwareVersion: CK_VERSION { major: 0, minor: 1 },
        }
    }

    /// `C_GetTokenInfo`.
    pub fn token_info(&self) -> CK_TOKEN_INFO {
        let max = self.cfg.max_pin_attempts;
        let mut flags = CKF_RNG | CKF_LOGIN_REQUIRED;
        if let Some(so) = &self.file.so {
            flags |= CKF_TOKEN_INITIALIZED;
            flags |= pin_flags(so.failures, max, CKF_SO_PIN_COUNT_LOW, CKF_SO_PIN_FINAL_TRY, CKF_SO_PIN_LOCKED);
        }
        if let Some(user) = &self.file.user {
            flags |= CKF_USER_PIN_INITIALIZED;
            flags |= pin_flags(user.failures, max, CKF_USER_PIN_COUNT_LOW, CKF_USER_PIN_FINAL_TRY, CKF_USER_PIN_LOCKED);
        }
        let rw = self.sessions.values().filter(|s| s.rw).count() as CK_ULONG;
        CK_TOKEN_INFO {
            label: pad(&self.file.label),
            manufacturerID: pad("HSCA"),
            model: pad("softtoken"),
            serialNumber: pad(&self.file.serial),
            flags,
            ulMaxSessionCount: MAX_SESSIONS as CK_ULONG,
            ulSessionCount: self.sessions.len() as CK_ULONG,
            ulMaxRwSessionCount: MAX_SESSIONS as CK_ULONG,
            ulRwSessionCount: rw,
            ulMaxPinLen: MAX_PIN as CK_ULONG,
            ulMinPinLen: MIN_PIN as CK_ULONG,
            ulTotalPublicMemory: CK_UNAVAILABLE_INFORMATION,
            ulFreePublicMemory: CK_UNAVAILABLE_INFORMATION,
            ulTotalPrivateMemory: CK_UNAVAILABLE_INFORMATION,
            ulFreePrivateMemory: CK_UNAVAILABLE_INFORMATION,
            hardwareVersion: CK_VERSION { major: 0, minor: 1 },
            firmwareVersion: CK_VERSION { major: 0, minor: 1 },
            utcTime: [b' '; 16],
        }
    }

    // ---- sessions and login -----------------------------------------------------------------

    /// `C_OpenSession`.
    pub fn open_session(&mut self, flags: CK_FLAGS) -> R<CK_SESSION_HANDLE> {
        if flags & CKF_SERIAL_SESSION == 0 {
            return Err(CKR_SESSION_PARALLEL_NOT_SUPPORTED);
        }
        if !self.initialized() {
            return Err(CKR_TOKEN_NOT_RECOGNIZED);
        }
        let rw = flags & CKF_RW_SESSION != 0;
        if self.login == Login::So && !rw {
            return Err(CKR_SESSION_READ_WRITE_SO_EXISTS);
        }
        if self.sessions.len() >= MAX_SESSIONS {
            return Err(CKR_SESSION_COUNT);
        }
        let h = self.next_session;
        self.next_session += 1;
        self.sessions.insert(h, SessionEntry { rw, state: Arc::new(Mutex::new(Session::default())) });
        Ok(h)
    }

    /// `C_CloseSession`: its session objects go, and with the last session the login.
    pub fn close_session(&mut self, h: CK_SESSION_HANDLE) -> R<()> {
        self.sessions.remove(&h).ok_or(CKR_SESSION_HANDLE_INVALID)?;
        let owned: Vec<_> = self.objects.iter().filter(|(_, e)| e.session == Some(h)).map(|(k, _)| *k).collect();
        for k in owned {
            self.objects.remove(&k);
            self.key_cache.remove(&k);
        }
        if self.sessions.is_empty() {
            self.end_login();
        }
        Ok(())
    }

    /// `C_CloseAllSessions`.
    pub fn close_all(&mut self) {
        let all: Vec<_> = self.sessions.keys().copied().collect();
        for h in all {
            let _ = self.close_session(h);
        }
    }

    fn session_entry(&self, h: CK_SESSION_HANDLE) -> R<&SessionEntry> {
        self.sessions.get(&h).ok_or(CKR_SESSION_HANDLE_INVALID)
    }

    /// The operation state of session `h`, to use without holding the token lock.
    pub fn session(&self, h: CK_SESSION_HANDLE) -> R<Arc<Mutex<Session>>> {
        Ok(self.session_entry(h)?.state.clone())
    }

    /// `C_GetSessionInfo`.
    pub fn session_info(&self, h: CK_SESSION_HANDLE) -> R<CK_SESSION_INFO> {
        let rw = self.session_entry(h)?.rw;
        let state = match (self.login, rw) {
            (Login::Public, false) => CKS_RO_PUBLIC_SESSION,
            (Login::Public, true) => CKS_RW_PUBLIC_SESSION,
            (Login::User, false) => CKS_RO_USER_FUNCTIONS,
            (Login::User, true) => CKS_RW_USER_FUNCTIONS,
            (Login::So, _) => CKS_RW_SO_FUNCTIONS,
        };
        let flags = CKF_SERIAL_SESSION | if rw { CKF_RW_SESSION } else { 0 };
        Ok(CK_SESSION_INFO { slotID: SLOT_ID, state, flags, ulDeviceError: 0 })
    }

    /// Whether `user_type` may log in now on session `h`.
    fn login_allowed(&self, h: CK_SESSION_HANDLE, user_type: CK_USER_TYPE) -> R<Login> {
        self.session_entry(h)?;
        let who = match user_type {
            CKU_USER => Login::User,
            CKU_SO => Login::So,
            CKU_CONTEXT_SPECIFIC => return Err(CKR_OPERATION_NOT_INITIALIZED),
            _ => return Err(CKR_USER_TYPE_INVALID),
        };
        match (self.login, who) {
            (Login::Public, _) => {}
            (l, w) if l == w => return Err(CKR_USER_ALREADY_LOGGED_IN),
            _ => return Err(CKR_USER_ANOTHER_ALREADY_LOGGED_IN),
        }
        if who == Login::So && self.sessions.values().any(|s| !s.rw) {
            return Err(CKR_SESSION_READ_ONLY_EXISTS);
        }
        Ok(who)
    }

    /// `C_Logout`.
    pub fn logout(&mut self, h: CK_SESSION_HANDLE) -> R<()> {
        self.session_entry(h)?;
        if self.login == Login::Public {
            return Err(CKR_USER_NOT_LOGGED_IN);
        }
        self.end_login();
        Ok(())
    }

    fn end_login(&mut self) {
        let private: Vec<_> = self.objects.iter().filter(|(_, e)| e.obj.is_private()).map(|(k, _)| *k).collect();
        for k in private {
            self.objects.remove(&k);
            self.key_cache.remove(&k);
        }
        self.master = None;
        self.login = Login::Public;
        self.epoch += 1;
    }

    // ---- objects ----------------------------------------------------------------------------

    /// An object visible to session `h`.
    pub fn object(&self, h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE) -> R<&Object> {
        self.session_entry(h)?;
        self.objects.get(&o).map(|e| &e.obj).ok_or(CKR_OBJECT_HANDLE_INVALID)
    }

    /// `C_FindObjectsInit` (over this process's view; [`Token::refresh`] brings it up to date).
    pub fn find_init(&mut self, h: CK_SESSION_HANDLE, template: &Template) -> R<()> {
        let found: Vec<_> = self.objects.iter().filter(|(_, e)| e.obj.matches(template)).map(|(k, _)| *k).collect();
        let state = self.session(h)?;
        let mut s = state.lock().map_err(|_| CKR_GENERAL_ERROR)?;
        if s.find.is_some() {
            return Err(CKR_OPERATION_ACTIVE);
        }
        s.find = Some(found.into_iter().rev().collect());
        Ok(())
    }

    // ---- operations -------------------------------------------------------------------------

    fn sm2_secret(&mut self, o: CK_OBJECT_HANDLE) -> R<Arc<Sm2Secret>> {
        if let Some(k) = self.key_cache.get(&o) {
            return Ok(k.clone());
        }
        let value = self.objects.get(&o).and_then(|e| e.obj.attrs.get(&CKA_VALUE)).ok_or(CKR_KEY_HANDLE_INVALID)?;
        let secret = Arc::new(Sm2Secret::from_scalar(value).map_err(|_| CKR_KEY_HANDLE_INVALID)?);
        self.key_cache.insert(o, secret.clone());
        Ok(secret)
    }

    /// Resolves `key` for `mech` used for `usage` (`CKA_SIGN`, `CKA_VERIFY`, `CKA_ENCRYPT`, …).
    fn key_for(
        &mut self,
        h: CK_SESSION_HANDLE,
        mech: Mech,
        o: CK_OBJECT_HANDLE,
        usage: CK_ATTRIBUTE_TYPE,
    ) -> R<KeyRef> {
        self.session_entry(h)?;
        let obj = self.objects.get(&o).map(|e| &e.obj).ok_or(CKR_KEY_HANDLE_INVALID)?;
        let sm2 = matches!(mech, Mech::Sm2Raw | Mech::Sm2Sm3 | Mech::Sm2Encrypt);
        if (sm2 && !obj.is_sm2()) || (!sm2 && !obj.is_sm4()) {
            return Err(CKR_KEY_TYPE_INCONSISTENT);
        }
        // Private-key operations need the private key, public-key operations the public one.
        let wanted = match usage {
            CKA_SIGN | CKA_DECRYPT if sm2 => CKO_PRIVATE_KEY,
            CKA_VERIFY | CKA_ENCRYPT if sm2 => CKO_PUBLIC_KEY,
            _ => CKO_SECRET_KEY,
        };
        if obj.class() != Some(wanted) {
            return Err(CKR_KEY_TYPE_INCONSISTENT);
        }
        if !obj.get_bool(usage, false) {
            return Err(CKR_KEY_FUNCTION_NOT_PERMITTED);
        }
        match obj.class() {
            Some(CKO_SECRET_KEY) => {
                Ok(KeyRef::Secret(Zeroizing::new(obj.attrs.get(&CKA_VALUE).cloned().unwrap_or_default())))
            }
            Some(CKO_PUBLIC_KEY) => {
                let point = obj.attrs.get(&CKA_EC_POINT).and_then(|p| ec_point_raw(p)).ok_or(CKR_KEY_HANDLE_INVALID)?;
                Ok(KeyRef::Public(point))
            }
            Some(CKO_PRIVATE_KEY) => Ok(KeyRef::Private(self.sm2_secret(o)?)),
            _ => Err(CKR_KEY_TYPE_INCONSISTENT),
        }
    }

    /// `C_SignInit` / `C_VerifyInit`.
    pub fn sign_init(
        &mut self,
        h: CK_SESSION_HANDLE,
        code: CK_MECHANISM_TYPE,
        param: &[u8],
        o: CK_OBJECT_HANDLE,
        verify: bool,
    ) -> R<()> {
        let mech = Mech::from_code(code).ok_or(CKR_MECHANISM_INVALID)?;
        let usage = if verify { CKA_VERIFY } else { CKA_SIGN };
        let op = match mech {
            Mech::Sm2Raw | Mech::Sm2Sm3 | Mech::Sm4Mac => {
                let key = self.key_for(h, mech, o, usage)?;
                match mech {
                    Mech::Sm2Raw if param.is_empty() => SignOp::Sm2Raw { key, buf: Vec::new() },
                    Mech::Sm2Sm3 => {
                        let id = if param.is_empty() { DEFAULT_SIGNER_ID } else { param };
                        let z = match &key {
                            KeyRef::Private(s) => s.z(id),
                            KeyRef::Public(p) => crypto::z_value(id, p),
                            KeyRef::Secret(_) => return Err(CKR_KEY_TYPE_INCONSISTENT),
                        }
                        .map_err(|_| CKR_MECHANISM_PARAM_INVALID)?;
                        let mut hasher = Sm3Hasher::new();
                        hasher.update(z);
                        SignOp::Sm2Sm3 { key, hasher }
                    }
                    Mech::Sm4Mac if param.is_empty() => SignOp::Sm4Mac { key, buf: Zeroizing::new(Vec::new()) },
                    _ => return Err(CKR_MECHANISM_PARAM_INVALID),
                }
            }
            _ => return Err(CKR_MECHANISM_INVALID),
        };
        let state = self.session(h)?;
        let mut s = state.lock().map_err(|_| CKR_GENERAL_ERROR)?;
        let slot = if verify { &mut s.verify } else { &mut s.sign };
        if slot.is_some() {
            return Err(CKR_OPERATION_ACTIVE);
        }
        *slot = Some(op);
        s.multi[if verify { OpKind::Verify } else { OpKind::Sign } as usize] = false;
        Ok(())
    }

    /// `C_EncryptInit` / `C_DecryptInit`.
    pub fn cipher_init(
        &mut self,
        h: CK_SESSION_HANDLE,
        code: CK_MECHANISM_TYPE,
        param: &[u8],
        o: CK_OBJECT_HANDLE,
        encrypt: bool,
    ) -> R<()> {
        let mech = Mech::from_code(code).ok_or(CKR_MECHANISM_INVALID)?;
        let (usage, iv) = match mech {
            Mech::Sm2Encrypt | Mech::Sm4Ecb if param.is_empty() => {
                (if encrypt { CKA_ENCRYPT } else { CKA_DECRYPT }, None)
            }
            Mech::Sm4Cbc => {
                let iv: [u8; 16] = param.try_into().map_err(|_| CKR_MECHANISM_PARAM_INVALID)?;
                (if encrypt { CKA_ENCRYPT } else { CKA_DECRYPT }, Some(iv))
            }
            Mech::Sm2Encrypt | Mech::Sm4Ecb => return Err(CKR_MECHANISM_PARAM_INVALID),
            _ => return Err(CKR_MECHANISM_INVALID),
        };
        let key = self.key_for(h, mech, o, usage)?;
        let state = self.session(h)?;
        let mut s = state.lock().map_err(|_| CKR_GENERAL_ERROR)?;
        let slot = if encrypt { &mut s.encrypt } else { &mut s.decrypt };
        if slot.is_some() {
            return Err(CKR_OPERATION_ACTIVE);
        }
        *slot = Some(CipherOp { mech, key, iv, buf: Zeroizing::new(Vec::new()) });
        s.multi[if encrypt { OpKind::Encrypt } else { OpKind::Decrypt } as usize] = false;
        Ok(())
    }

    /// `C_WrapKey`: SM4-ECB/CBC over the value of an extractable SM4 or SM2 private key.
    pub fn wrap_key(
        &mut self,
        h: CK_SESSION_HANDLE,
        code: CK_MECHANISM_TYPE,
        param: &[u8],
        wrapping: CK_OBJECT_HANDLE,
        o: CK_OBJECT_HANDLE,
    ) -> R<Vec<u8>> {
        let mech = Mech::from_code(code).ok_or(CKR_MECHANISM_INVALID)?;
        if !matches!(mech, Mech::Sm4Ecb | Mech::Sm4Cbc) {
            return Err(CKR_MECHANISM_INVALID);
        }
        let iv = self.iv_for(mech, param)?;
        let KeyRef::Secret(kek) = self
            .key_for(h, mech, wrapping, CKA_WRAP)
            .map_err(|e| wrapping_rv(e, CKR_WRAPPING_KEY_HANDLE_INVALID, CKR_WRAPPING_KEY_TYPE_INCONSISTENT))?
        else {
            return Err(CKR_WRAPPING_KEY_TYPE_INCONSISTENT);
        };
        let obj = self.object(h, o).map_err(|_| CKR_KEY_HANDLE_INVALID)?;
        if !matches!(obj.class(), Some(CKO_SECRET_KEY | CKO_PRIVATE_KEY)) {
            return Err(CKR_KEY_NOT_WRAPPABLE);
        }
        if !obj.get_bool(CKA_EXTRACTABLE, false) {
            return Err(CKR_KEY_UNEXTRACTABLE);
        }
        let value = Zeroizing::new(obj.attrs.get(&CKA_VALUE).cloned().ok_or(CKR_KEY_NOT_WRAPPABLE)?);
        crypto::sm4(&kek, iv.as_ref().map(|v| &v[..]), &value, true).map_err(|_| CKR_KEY_SIZE_RANGE)
    }

    /// `C_UnwrapKey` up to the new object: the reverse of [`Inner::wrap_key`]; the template
    /// names class and key type.
    fn unwrap_object(
        &mut self,
        h: CK_SESSION_HANDLE,
        code: CK_MECHANISM_TYPE,
        param: &[u8],
        unwrapping: CK_OBJECT_HANDLE,
        wrapped: &[u8],
        template: &Template,
    ) -> R<Object> {
        let mech = Mech::from_code(code).ok_or(CKR_MECHANISM_INVALID)?;
        if !matches!(mech, Mech::Sm4Ecb | Mech::Sm4Cbc) {
            return Err(CKR_MECHANISM_INVALID);
        }
        let iv = self.iv_for(mech, param)?;
        let KeyRef::Secret(kek) = self
            .key_for(h, mech, unwrapping, CKA_UNWRAP)
            .map_err(|e| wrapping_rv(e, CKR_UNWRAPPING_KEY_HANDLE_INVALID, CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT))?
        else {
            return Err(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT);
        };
        check_template(template)?;
        if template.iter().any(|(t, _)| TOKEN_SET.contains(t) || *t == CKA_VALUE) {
            return Err(CKR_TEMPLATE_INCONSISTENT);
        }
        let value = Zeroizing::new(
            crypto::sm4(&kek, iv.as_ref().map(|v| &v[..]), wrapped, false).map_err(|_| CKR_WRAPPED_KEY_LEN_RANGE)?,
        );
        let probe = build(vec![], template);
        let class = probe.class().ok_or(CKR_TEMPLATE_INCOMPLETE)?;
        probe.key_type().ok_or(CKR_TEMPLATE_INCOMPLETE)?;
        check_private_key_template(Some(class), template)?;
        let mut defaults = vec![
            (CKA_TOKEN, bbool(false)),
            (CKA_PRIVATE, bbool(true)),
            (CKA_SENSITIVE, bbool(true)),
            (CKA_EXTRACTABLE, bbool(false)),
            (CKA_LOCAL, bbool(false)),
            (CKA_ALWAYS_SENSITIVE, bbool(false)),
            (CKA_NEVER_EXTRACTABLE, bbool(false)),
        ];
        match class {
            CKO_SECRET_KEY if probe.is_sm4() && value.len() == 16 => {
                defaults.extend([(CKA_ENCRYPT, bbool(true)), (CKA_DECRYPT, bbool(true)), (CKA_VALUE_LEN, ulong(16))])
            }
            CKO_PRIVATE_KEY if build(vec![(CKA_EC_PARAMS, SM2_EC_PARAMS.to_vec())], template).is_sm2() => {
                let secret = Sm2Secret::from_scalar(&value).map_err(|_| CKR_WRAPPED_KEY_INVALID)?;
                defaults.extend([
                    (CKA_EC_PARAMS, SM2_EC_PARAMS.to_vec()),
                    (CKA_EC_POINT, ec_point_der(&secret.public_point())),
                    (CKA_SIGN, bbool(true)),
                    (CKA_DECRYPT, bbool(true)),
                    (CKA_ALWAYS_AUTHENTICATE, bbool(false)),
                ]);
            }
            _ => return Err(CKR_TEMPLATE_INCONSISTENT),
        }
        let mut obj = build(defaults, template);
        obj.attrs.insert(CKA_VALUE, value.to_vec());
        Ok(obj)
    }

    fn iv_for(&self, mech: Mech, param: &[u8]) -> R<Option<[u8; 16]>> {
        match mech {
            Mech::Sm4Cbc => Ok(Some(param.try_into().map_err(|_| CKR_MECHANISM_PARAM_INVALID)?)),
            _ if param.is_empty() => Ok(None),
            _ => Err(CKR_MECHANISM_PARAM_INVALID),
        }
    }
}

// ---- the token: what may block runs here, outside the in-memory lock --------------------------

impl Token {
    /// Loads the token from its directory.
    pub fn open(cfg: Config) -> Result<Self, String> {
        let file = store::load(&cfg.directory).map_err(|e| format!("softtoken: {}: {e:?}", cfg.directory.display()))?;
        let mut inner = Inner {
            cfg: cfg.clone(),
            file: TokenFile { generation: 0, ..Default::default() },
            seen: store::stamp(&cfg.directory),
            master: None,
            login: Login::Public,
            epoch: 0,
            objects: BTreeMap::new(),
            sessions: HashMap::new(),
            next_session: 1,
            next_session_object: SESSION_OBJECTS,
            key_cache: HashMap::new(),
        };
        inner.apply_view(file, None);
        Ok(Self { cfg, inner: Mutex::new(inner) })
    }

    /// The in-memory state, for work that does not block.
    pub fn lock(&self) -> R<MutexGuard<'_, Inner>> {
        self.inner.lock().map_err(|_| CKR_GENERAL_ERROR)
    }

    /// Read-modify-write of `token.json` under its file lock (see [`store::update`]).
    fn update<T>(&self, f: impl FnOnce(&mut TokenFile) -> R<(T, bool)>) -> R<(T, TokenFile)> {
        store::update(&self.cfg.directory, f).map_err(|_| CKR_DEVICE_ERROR)?
    }

    /// Changes token objects as they are on disk now (another process may have added or removed
    /// some since this one last looked), then shows this process the result. `f` gets the next
    /// free handle, the public objects and, when `ctx` holds the master key, the private ones.
    fn write_objects<T>(
        &self,
        ctx: &WriteCtx,
        f: impl FnOnce(&mut u64, &mut Vec<(u64, Object)>, &mut Option<Vec<(u64, Object)>>) -> R<T>,
    ) -> R<T> {
        let master = ctx.master.as_deref();
        let ((value, private), file) = self.update(|file| {
            if file.serial != ctx.serial {
                // Re-initialised by another process: our master key and handles mean nothing there.
                return Err(CKR_DEVICE_REMOVED);
            }
            let mut private = match (master, &file.private_objects) {
                (Some(m), Some(sealed)) => Some(store::open_objects(m, sealed).map_err(|_| CKR_DEVICE_ERROR)?),
                (Some(_), None) => Some(Vec::new()),
                (None, _) => None,
            };
            let mut public = std::mem::take(&mut file.public_objects);
            let value = f(&mut file.next_handle, &mut public, &mut private);
            file.public_objects = public;
            let value = value?;
            if let (Some(m), Some(p)) = (master, &private) {
                let refs: Vec<(u64, &Object)> = p.iter().map(|(h, o)| (*h, o)).collect();
                file.private_objects = Some(store::seal_objects(m, &refs).map_err(crypto_rv)?);
            }
            Ok(((value, private), true))
        })?;
        self.lock()?.apply_view(file, private.map(|p| (p, ctx.epoch)));
        Ok(value)
    }

    /// Brings this process's view up to date when another process has written `token.json`.
    pub fn refresh(&self) -> R<()> {
        let stamp = store::stamp(&self.cfg.directory);
        let (master, epoch) = {
            let g = self.lock()?;
            if g.seen == stamp {
                return Ok(());
            }
            (if g.login == Login::User { g.master.clone() } else { None }, g.epoch)
        };
        let file = store::load(&self.cfg.directory).map_err(|_| CKR_DEVICE_ERROR)?;
        let private = match (&master, &file.private_objects) {
            (Some(m), Some(sealed)) => Some(store::open_objects(m, sealed).map_err(|_| CKR_DEVICE_ERROR)?),
            (Some(_), None) => Some(Vec::new()),
            (None, _) => None,
        };
        let mut g = self.lock()?;
        g.seen = stamp;
        g.apply_view(file, private.map(|p| (p, epoch)));
        Ok(())
    }

    // ---- token and PIN management -----------------------------------------------------------

    /// Checks a PIN of `who` by unsealing the master key. The failure counter is read, checked,
    /// incremented and written under the token's file lock, so every process together gets
    /// `max_pin_attempts` guesses, not each.
    fn check_pin_of(&self, who: Login, pin: &[u8]) -> R<(Zeroizing<Vec<u8>>, TokenFile)> {
        let max = self.cfg.max_pin_attempts;
        let (outcome, file) = self.update(|file| {
            let record = match who {
                Login::So => file.so.as_mut().ok_or(CKR_TOKEN_NOT_RECOGNIZED)?,
                _ => file.user.as_mut().ok_or(CKR_USER_PIN_NOT_INITIALIZED)?,
            };
            if record.failures >= max {
                return Err(CKR_PIN_LOCKED);
            }
            Ok(match store::unseal_master(record, pin) {
                Ok(master) => {
                    let changed = record.failures != 0;
                    record.failures = 0;
                    (Ok(master), changed)
                }
                Err(_) => {
                    record.failures += 1;
                    (Err(CKR_PIN_INCORRECT), true)
                }
            })
        })?;
        self.lock()?.apply_view(file.clone(), None);
        Ok((outcome?, file))
    }

    /// `C_InitToken`: (re)initialises the token, destroying every object.
    pub fn init_token(&self, so_pin: &[u8], label: &str) -> R<()> {
        check_pin(so_pin)?;
        let reinit = {
            let g = self.lock()?;
            if !g.sessions.is_empty() {
                return Err(CKR_SESSION_EXISTS);
            }
            g.initialized()
        };
        if reinit {
            self.check_pin_of(Login::So, so_pin)?;
        }
        let mut master = Zeroizing::new(vec![0u8; 32]);
        crypto::random(&mut master).map_err(crypto_rv)?;
        let mut serial = [0u8; 8];
        crypto::random(&mut serial).map_err(crypto_rv)?;
        let so = store::pin_record(so_pin, &master, self.cfg.kdf_iterations).map_err(crypto_rv)?;
        let ((), file) = self.update(|file| {
            if file.so.is_some() && !reinit {
                // Initialised by another process meanwhile, under an SO PIN we did not check.
                return Err(CKR_PIN_INCORRECT);
            }
            *file = TokenFile {
                version: 1,
                label: label.trim_end().to_owned(),
                serial: hex::encode_upper(serial),
                so: Some(so),
                user: None,
                public_objects: Vec::new(),
                private_objects: None,
                next_handle: file.next_handle.max(1),
                generation: file.generation,
            };
            Ok(((), true))
        })?;
        let mut g = self.lock()?;
        g.objects.retain(|_, e| e.session.is_some());
        g.key_cache.clear();
        g.apply_view(file, None);
        Ok(())
    }

    /// `C_InitPIN`: the SO sets the user PIN (and unlocks it).
    pub fn init_pin(&self, h: CK_SESSION_HANDLE, pin: &[u8]) -> R<()> {
        let master = {
            let g = self.lock()?;
            let rw = g.session_entry(h)?.rw;
            if g.login != Login::So {
                return Err(CKR_USER_NOT_LOGGED_IN);
            }
            if !rw {
                return Err(CKR_SESSION_READ_ONLY);
            }
            g.master.clone().ok_or(CKR_USER_NOT_LOGGED_IN)?
        };
        check_pin(pin)?;
        let record = store::pin_record(pin, &master, self.cfg.kdf_iterations).map_err(crypto_rv)?;
        let ((), file) = self.update(|file| {
            file.user = Some(record);
            Ok(((), true))
        })?;
        self.lock()?.apply_view(file, None);
        Ok(())
    }

    /// `C_SetPIN`: changes the PIN of whoever is logged in (the user's when nobody is).
    pub fn set_pin(&self, h: CK_SESSION_HANDLE, old: &[u8], new: &[u8]) -> R<()> {
        let who = {
            let g = self.lock()?;
            if !g.session_entry(h)?.rw {
                return Err(CKR_SESSION_READ_ONLY);
            }
            if g.login == Login::So { Login::So } else { Login::User }
        };
        check_pin(new)?;
        let (master, _) = self.check_pin_of(who, old)?;
        let record = store::pin_record(new, &master, self.cfg.kdf_iterations).map_err(crypto_rv)?;
        let ((), file) = self.update(|file| {
            match who {
                Login::So => file.so = Some(record),
                _ => file.user = Some(record),
            }
            Ok(((), true))
        })?;
        self.lock()?.apply_view(file, None);
        Ok(())
    }

    /// `C_Login`: the PIN is checked (and the private objects opened) without the module lock.
    pub fn login(&self, h: CK_SESSION_HANDLE, user_type: CK_USER_TYPE, pin: &[u8]) -> R<()> {
        let who = self.lock()?.login_allowed(h, user_type)?;
        let (master, file) = self.check_pin_of(who, pin)?;
        let private = match (who, &file.private_objects) {
            (Login::User, Some(sealed)) => Some(store::open_objects(&master, sealed).map_err(|_| CKR_DEVICE_ERROR)?),
            (Login::User, None) => Some(Vec::new()),
            _ => None,
        };
        let mut g = self.lock()?;
        // Another session may have logged in while the PIN was checked.
        g.login_allowed(h, user_type)?;
        g.master = Some(master);
        g.login = who;
        g.epoch += 1;
        let epoch = g.epoch;
        g.apply_view(file, private.map(|p| (p, epoch)));
        Ok(())
    }

    // ---- objects ----------------------------------------------------------------------------

    /// Adds objects for session `h`: token objects in one write to `token.json`, session objects
    /// in memory. Handles come back in the order of `objs`.
    fn add_objects(&self, h: CK_SESSION_HANDLE, objs: Vec<Object>) -> R<Vec<CK_OBJECT_HANDLE>> {
        let ctx = self.lock()?.ctx(h)?;
        for obj in &objs {
            if obj.is_token() && !ctx.rw {
                return Err(CKR_SESSION_READ_ONLY);
            }
            if obj.is_private() && ctx.login != Login::User {
                return Err(CKR_USER_NOT_LOGGED_IN);
            }
        }
        let mut handles = vec![0; objs.len()];
        let (token, session): (Vec<_>, Vec<_>) = objs.into_iter().enumerate().partition(|(_, o)| o.is_token());
        if !token.is_empty() {
            let placed = self.write_objects(&ctx, |next, public, private| {
                let mut placed = Vec::new();
                for (i, obj) in token {
                    let handle = (*next).max(1);
                    *next = handle + 1;
                    if obj.is_private() {
                        private.as_mut().ok_or(CKR_USER_NOT_LOGGED_IN)?.push((handle, obj));
                    } else {
                        public.push((handle, obj));
                    }
                    placed.push((i, handle));
                }
                Ok(placed)
            })?;
            for (i, handle) in placed {
                handles[i] = handle;
            }
        }
        if !session.is_empty() {
            let mut g = self.lock()?;
            g.session_entry(h)?;
            for (i, obj) in session {
                let handle = g.next_session_object;
                g.next_session_object += 1;
                g.objects.insert(handle, Entry { obj, session: Some(h) });
                handles[i] = handle;
            }
        }
        Ok(handles)
    }

    /// `C_CreateObject`.
    pub fn create_object(&self, h: CK_SESSION_HANDLE, template: &Template) -> R<CK_OBJECT_HANDLE> {
        self.lock()?.session_entry(h)?;
        let obj = new_object(template)?;
        Ok(self.add_objects(h, vec![obj])?[0])
    }

    /// `C_DestroyObject`.
    pub fn destroy_object(&self, h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE) -> R<()> {
        let ctx = {
            let mut g = self.lock()?;
            let rw = g.session_entry(h)?.rw;
            let e = g.objects.get(&o).ok_or(CKR_OBJECT_HANDLE_INVALID)?;
            if e.session.is_some() {
                g.objects.remove(&o);
                g.key_cache.remove(&o);
                return Ok(());
            }
            if !rw {
                return Err(CKR_SESSION_READ_ONLY);
            }
            g.ctx(h)?
        };
        self.write_objects(&ctx, |_, public, private| {
            let count =
                |p: &Vec<(u64, Object)>, q: &Option<Vec<(u64, Object)>>| p.len() + q.as_ref().map_or(0, Vec::len);
            let before = count(public, private);
            public.retain(|(x, _)| *x != o);
            if let Some(p) = private.as_mut() {
                p.retain(|(x, _)| *x != o);
            }
            // Gone already: another process destroyed it.
            if count(public, private) == before { Err(CKR_OBJECT_HANDLE_INVALID) } else { Ok(()) }
        })
    }

    /// `C_SetAttributeValue`. The rules are checked again on the object as it is on disk, so a
    /// change made meanwhile (say, extractable switched off) cannot be undone by this one.
    pub fn set_attributes(&self, h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE, template: &Template) -> R<()> {
        check_template(template)?;
        let ctx = {
            let mut g = self.lock()?;
            let rw = g.session_entry(h)?.rw;
            let e = g.objects.get_mut(&o).ok_or(CKR_OBJECT_HANDLE_INVALID)?;
            if e.obj.is_token() && !rw {
                return Err(CKR_SESSION_READ_ONLY);
            }
            let updated = apply_attributes(&e.obj, template)?;
            if e.session.is_some() {
                e.obj = updated;
                return Ok(());
            }
            g.ctx(h)?
        };
        self.write_objects(&ctx, |_, public, private| {
            let (_, obj) = public
                .iter_mut()
                .chain(private.iter_mut().flatten())
                .find(|(x, _)| *x == o)
                .ok_or(CKR_OBJECT_HANDLE_INVALID)?;
            *obj = apply_attributes(obj, template)?;
            Ok(())
        })
    }

    // ---- key generation ---------------------------------------------------------------------

    /// `C_GenerateKeyPair` for SM2.
    pub fn generate_key_pair(
        &self,
        h: CK_SESSION_HANDLE,
        mech: CK_MECHANISM_TYPE,
        public: &Template,
        private: &Template,
    ) -> R<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
        self.lock()?.session_entry(h)?;
        let (pub_obj, priv_obj, secret) = new_key_pair(mech, public, private)?;
        let handles = self.add_objects(h, vec![pub_obj, priv_obj])?;
        let mut g = self.lock()?;
        if g.objects.contains_key(&handles[1]) {
            g.key_cache.insert(handles[1], Arc::new(secret));
        }
        Ok((handles[0], handles[1]))
    }

    /// `C_GenerateKey` for SM4.
    pub fn generate_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: CK_MECHANISM_TYPE,
        template: &Template,
    ) -> R<CK_OBJECT_HANDLE> {
        self.lock()?.session_entry(h)?;
        let obj = new_secret_key(mech, template)?;
        Ok(self.add_objects(h, vec![obj])?[0])
    }

    /// `C_UnwrapKey`.
    pub fn unwrap_key(
        &self,
        h: CK_SESSION_HANDLE,
        code: CK_MECHANISM_TYPE,
        param: &[u8],
        unwrapping: CK_OBJECT_HANDLE,
        wrapped: &[u8],
        template: &Template,
    ) -> R<CK_OBJECT_HANDLE> {
        let obj = self.lock()?.unwrap_object(h, code, param, unwrapping, wrapped, template)?;
        Ok(self.add_objects(h, vec![obj])?[0])
    }
}

/// `C_CreateObject` up to the new object: only what the token can use.
fn new_object(template: &Template) -> R<Object> {
    check_template(template)?;
    if template.iter().any(|(t, _)| TOKEN_SET.contains(t)) {
        return Err(CKR_ATTRIBUTE_READ_ONLY);
    }
    let probe = build(vec![], template);
    let class = probe.class().ok_or(CKR_TEMPLATE_INCOMPLETE)?;
    check_private_key_template(Some(class), template)?;
    let defaults = match class {
        CKO_DATA | CKO_CERTIFICATE => vec![],
        CKO_PUBLIC_KEY => {
            // Only SM2 keys, with a point on the curve: operations trust what is stored.
            probe.key_type().ok_or(CKR_TEMPLATE_INCOMPLETE)?;
            if !probe.is_sm2() {
                return Err(CKR_ATTRIBUTE_VALUE_INVALID);
            }
            let point = probe.attrs.get(&CKA_EC_POINT).ok_or(CKR_TEMPLATE_INCOMPLETE)?;
            let raw = ec_point_raw(point).ok_or(CKR_ATTRIBUTE_VALUE_INVALID)?;
            if !crypto::is_sm2_point(&raw) {
                return Err(CKR_ATTRIBUTE_VALUE_INVALID);
            }
            vec![(CKA_EC_PARAMS, SM2_EC_PARAMS.to_vec()), (CKA_LOCAL, bbool(false))]
        }
        CKO_PRIVATE_KEY | CKO_SECRET_KEY => {
            let value = probe.attrs.get(&CKA_VALUE).ok_or(CKR_TEMPLATE_INCOMPLETE)?;
            let kt = probe.key_type().ok_or(CKR_TEMPLATE_INCOMPLETE)?;
            let mut derived = vec![];
            match class {
                CKO_SECRET_KEY if is_sm4_key_type(kt) && value.len() == 16 => {
                    derived.push((CKA_VALUE_LEN, ulong(16)));
                }
                CKO_PRIVATE_KEY if probe.is_sm2() => {
                    let secret = Sm2Secret::from_scalar(value).map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID)?;
                    let point = ec_point_der(&secret.public_point());
                    if probe.attrs.get(&CKA_EC_POINT).is_some_and(|p| ec_point_raw(p) != ec_point_raw(&point)) {
                        return Err(CKR_ATTRIBUTE_VALUE_INVALID);
                    }
                    derived.extend([(CKA_EC_PARAMS, SM2_EC_PARAMS.to_vec()), (CKA_EC_POINT, point)]);
                }
                _ => return Err(CKR_ATTRIBUTE_VALUE_INVALID),
            }
            derived.extend([
                (CKA_SENSITIVE, bbool(true)),
                (CKA_EXTRACTABLE, bbool(false)),
                (CKA_ALWAYS_AUTHENTICATE, bbool(false)),
                (CKA_LOCAL, bbool(false)),
                (CKA_ALWAYS_SENSITIVE, bbool(false)),
                (CKA_NEVER_EXTRACTABLE, bbool(false)),
            ]);
            derived
        }
        _ => return Err(CKR_ATTRIBUTE_VALUE_INVALID),
    };
    Ok(build(defaults, template))
}

/// `C_GenerateKeyPair` for SM2 up to the two objects (and the key, for the signing cache).
fn new_key_pair(mech: CK_MECHANISM_TYPE, public: &Template, private: &Template) -> R<(Object, Object, Sm2Secret)> {
    if Mech::from_code(mech) != Some(Mech::Sm2KeyGen) {
        return Err(CKR_MECHANISM_INVALID);
    }
    check_template(public)?;
    check_template(private)?;
    check_private_key_template(Some(CKO_PRIVATE_KEY), private)?;
    for (t, _) in public.iter().chain(private) {
        if TOKEN_SET.contains(t) || *t == CKA_VALUE || *t == CKA_EC_POINT {
            return Err(CKR_TEMPLATE_INCONSISTENT);
        }
    }
    let ec_mech = mech == CKM_EC_KEY_PAIR_GEN;
    let requested = build(vec![], public);
    if ec_mech && requested.attrs.get(&CKA_EC_PARAMS).map(Vec::as_slice) != Some(&SM2_EC_PARAMS[..]) {
        return Err(CKR_DOMAIN_PARAMS_INVALID);
    }
    let default_kt = if ec_mech { CKK_EC } else { CKK_SM2 };
    for t in [public, private] {
        let o = build(vec![(CKA_EC_PARAMS, SM2_EC_PARAMS.to_vec())], t);
        match o.key_type() {
            None => {}
            Some(kt) if is_sm2_key_type(kt) || kt == CKK_EC => {}
            Some(_) => return Err(CKR_TEMPLATE_INCONSISTENT),
        }
        if o.class().is_some_and(|c| c != CKO_PUBLIC_KEY && c != CKO_PRIVATE_KEY) {
            return Err(CKR_TEMPLATE_INCONSISTENT);
        }
    }
    let (secret, scalar) = Sm2Secret::generate().map_err(crypto_rv)?;
    let point = secret.public_point();
    let id = crypto::sm3(&point)[..20].to_vec();
    let common = |class| {
        vec![
            (CKA_CLASS, ulong(class)),
            (CKA_KEY_TYPE, ulong(default_kt)),
            (CKA_TOKEN, bbool(false)),
            (CKA_ID, id.clone()),
            (CKA_EC_PARAMS, SM2_EC_PARAMS.to_vec()),
            (CKA_LOCAL, bbool(true)),
            (CKA_KEY_GEN_MECHANISM, ulong(mech)),
            (CKA_MODIFIABLE, bbool(true)),
            (CKA_WRAP, bbool(false)),
            (CKA_UNWRAP, bbool(false)),
            (CKA_DERIVE, bbool(false)),
        ]
    };
    let mut pub_defaults = common(CKO_PUBLIC_KEY);
    pub_defaults.extend([(CKA_PRIVATE, bbool(false)), (CKA_VERIFY, bbool(true)), (CKA_ENCRYPT, bbool(true))]);
    let mut pub_obj = build(pub_defaults, public);
    pub_obj.attrs.insert(CKA_CLASS, ulong(CKO_PUBLIC_KEY));
    // The vendor mechanism decides the curve: pkcs11-tool reaches it only with
    // `--key-type EC:<some curve>` and then sends that curve's parameters.
    pub_obj.attrs.insert(CKA_EC_PARAMS, SM2_EC_PARAMS.to_vec());
    pub_obj.attrs.insert(CKA_EC_POINT, ec_point_der(&point));

    let mut priv_defaults = common(CKO_PRIVATE_KEY);
    priv_defaults.extend([
        (CKA_PRIVATE, bbool(true)),
        (CKA_SENSITIVE, bbool(true)),
        (CKA_EXTRACTABLE, bbool(false)),
        (CKA_SIGN, bbool(true)),
        (CKA_DECRYPT, bbool(true)),
        (CKA_ALWAYS_AUTHENTICATE, bbool(false)),
    ]);
    let mut priv_obj = build(priv_defaults, private);
    priv_obj.attrs.insert(CKA_CLASS, ulong(CKO_PRIVATE_KEY));
    priv_obj.attrs.insert(CKA_VALUE, scalar.to_vec());
    priv_obj.attrs.insert(CKA_EC_PARAMS, SM2_EC_PARAMS.to_vec());
    priv_obj.attrs.insert(CKA_EC_POINT, ec_point_der(&point));
    let sensitive = priv_obj.get_bool(CKA_SENSITIVE, true);
    let extractable = priv_obj.get_bool(CKA_EXTRACTABLE, false);
    priv_obj.attrs.insert(CKA_ALWAYS_SENSITIVE, bbool(sensitive));
    priv_obj.attrs.insert(CKA_NEVER_EXTRACTABLE, bbool(!extractable));

    Ok((pub_obj, priv_obj, secret))
}

/// `C_GenerateKey` for SM4 up to the new object.
fn new_secret_key(mech: CK_MECHANISM_TYPE, template: &Template) -> R<Object> {
    if Mech::from_code(mech) != Some(Mech::Sm4KeyGen) {
        return Err(CKR_MECHANISM_INVALID);
    }
    check_template(template)?;
    if template.iter().any(|(t, _)| TOKEN_SET.contains(t) || *t == CKA_VALUE) {
        return Err(CKR_TEMPLATE_INCONSISTENT);
    }
    let probe = build(vec![], template);
    if probe.key_type().is_some_and(|kt| !is_sm4_key_type(kt)) || probe.class().is_some_and(|c| c != CKO_SECRET_KEY) {
        return Err(CKR_TEMPLATE_INCONSISTENT);
    }
    check_private_key_template(Some(CKO_SECRET_KEY), template)?;
    if probe.get_ulong(CKA_VALUE_LEN).is_some_and(|l| l != 16) {
        return Err(CKR_ATTRIBUTE_VALUE_INVALID);
    }
    let mut value = Zeroizing::new(vec![0u8; 16]);
    crypto::random(&mut value).map_err(crypto_rv)?;
    let defaults = vec![
        (CKA_CLASS, ulong(CKO_SECRET_KEY)),
        (CKA_KEY_TYPE, ulong(CKK_SM4)),
        (CKA_TOKEN, bbool(false)),
        (CKA_PRIVATE, bbool(true)),
        (CKA_SENSITIVE, bbool(true)),
        (CKA_EXTRACTABLE, bbool(false)),
        (CKA_ENCRYPT, bbool(true)),
        (CKA_DECRYPT, bbool(true)),
        (CKA_SIGN, bbool(true)),
        (CKA_VERIFY, bbool(true)),
        (CKA_WRAP, bbool(true)),
        (CKA_UNWRAP, bbool(true)),
        (CKA_VALUE_LEN, ulong(16)),
        (CKA_LOCAL, bbool(true)),
        (CKA_KEY_GEN_MECHANISM, ulong(mech)),
    ];
    let mut obj = build(defaults, template);
    obj.attrs.insert(CKA_VALUE, value.to_vec());
    let sensitive = obj.get_bool(CKA_SENSITIVE, true);
    let extractable = obj.get_bool(CKA_EXTRACTABLE, false);
    obj.attrs.insert(CKA_ALWAYS_SENSITIVE, bbool(sensitive));
    obj.attrs.insert(CKA_NEVER_EXTRACTABLE, bbool(!extractable));
    Ok(obj)
}

/// `obj` with `template` applied, if PKCS#11's rules allow: the object is modifiable, fixed
/// attributes keep their value, sensitive only switches on and extractable only off.
fn apply_attributes(obj: &Object, template: &Template) -> R<Object> {
    if !obj.get_bool(CKA_MODIFIABLE, true) {
        return Err(CKR_ATTRIBUTE_READ_ONLY);
    }
    for (t, v) in template {
        let now = obj.attrs.get(t);
        let fixed =
            matches!(*t, CKA_CLASS | CKA_KEY_TYPE | CKA_VALUE | CKA_EC_POINT | CKA_EC_PARAMS | CKA_TOKEN | CKA_PRIVATE)
                || TOKEN_SET.contains(t);
        // Sensitive may only be switched on, extractable only off (PKCS#11 §4.9); `v` is
        // 0 or 1 here (check_template), so the rule sees what later checks will see.
        let on = v.as_slice() == [1];
        let one_way = (*t == CKA_SENSITIVE && obj.get_bool(CKA_SENSITIVE, false) && !on)
            || (*t == CKA_EXTRACTABLE && !obj.get_bool(CKA_EXTRACTABLE, true) && on);
        if (fixed && now != Some(v)) || one_way {
            return Err(CKR_ATTRIBUTE_READ_ONLY);
        }
    }
    let mut updated = obj.clone();
    for (t, v) in template {
        updated.attrs.insert(*t, v.clone());
    }
    Ok(updated)
}

fn wrapping_rv(e: Rv, handle: Rv, kind: Rv) -> Rv {
    match e {
        CKR_KEY_HANDLE_INVALID => handle,
        CKR_KEY_TYPE_INCONSISTENT => kind,
        other => other,
    }
}

fn pin_flags(failures: u32, max: u32, low: CK_FLAGS, last: CK_FLAGS, locked: CK_FLAGS) -> CK_FLAGS {
    match failures {
        0 => 0,
        f if f >= max => locked,
        f if f + 1 == max => low | last,
        _ => low,
    }
}

// ---- per-session operations, run without the token lock ------------------------------------

impl Session {
    /// Ends operation `kind` (PKCS#11 v2.40 §5.2: any error but `CKR_BUFFER_TOO_SMALL` does).
    pub fn end(&mut self, kind: OpKind) {
        match kind {
            OpKind::Sign => self.sign = None,
            OpKind::Verify => self.verify = None,
            OpKind::Digest => self.digest = None,
            OpKind::Encrypt => self.encrypt = None,
            OpKind::Decrypt => self.decrypt = None,
        }
        self.multi[kind as usize] = false;
    }

    /// Records an `…Update` call: from now on only the `…Final` call finishes `kind`.
    pub fn mark_multi(&mut self, kind: OpKind) {
        self.multi[kind as usize] = true;
    }

    /// A single-part call (`C_Sign`, `C_Digest`, …) cannot finish a multi-part operation.
    pub fn check_single(&self, kind: OpKind) -> R<()> {
        if self.multi[kind as usize] { Err(CKR_OPERATION_ACTIVE) } else { Ok(()) }
    }

    /// `C_FindObjects`: up to `max` more handles.
    pub fn find_next(&mut self, max: usize) -> R<Vec<CK_OBJECT_HANDLE>> {
        let pending = self.find.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        let mut out = Vec::with_capacity(max.min(pending.len()));
        while out.len() < max {
            match pending.pop() {
                Some(h) => out.push(h),
                None => break,
            }
        }
        Ok(out)
    }

    /// `C_FindObjectsFinal`.
    pub fn find_final(&mut self) -> R<()> {
        self.find.take().map(|_| ()).ok_or(CKR_OPERATION_NOT_INITIALIZED)
    }

    /// The signature (or MAC) length of the active sign.
    pub fn sign_len(&self) -> R<usize> {
        match self.sign.as_ref().ok_or(CKR_OPERATION_NOT_INITIALIZED)? {
            SignOp::Sm4Mac { .. } => Ok(8),
            _ => Ok(64),
        }
    }

    /// `C_SignUpdate` / `C_VerifyUpdate`.
    pub fn sign_update(&mut self, data: &[u8], verify: bool) -> R<()> {
        let slot = if verify { &mut self.verify } else { &mut self.sign };
        match slot.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)? {
            SignOp::Sm2Raw { buf, .. } => buf.extend_from_slice(data),
            SignOp::Sm2Sm3 { hasher, .. } => hasher.update(data),
            SignOp::Sm4Mac { buf, .. } => buf.extend_from_slice(data),
        }
        Ok(())
    }

    /// Ends the active sign and returns the signature (r ‖ s, or the MAC).
    pub fn sign_finish(&mut self) -> R<Vec<u8>> {
        match self.sign.take().ok_or(CKR_OPERATION_NOT_INITIALIZED)? {
            SignOp::Sm2Raw { key: KeyRef::Private(k), buf } => k
                .sign_digest(&buf)
                .map(|s| s.to_vec())
                .map_err(|e| if e == CryptoError::BadLength { CKR_DATA_LEN_RANGE } else { crypto_rv(e) }),
            SignOp::Sm2Sm3 { key: KeyRef::Private(k), hasher } => {
                k.sign_digest(&hasher.finalize()).map(|s| s.to_vec()).map_err(crypto_rv)
            }
            SignOp::Sm4Mac { key: KeyRef::Secret(k), buf } => {
                crypto::sm4_mac(&k, &buf).map(|m| m.to_vec()).map_err(crypto_rv)
            }
            _ => Err(CKR_KEY_TYPE_INCONSISTENT),
        }
    }

    /// Ends the active verify.
    pub fn verify_finish(&mut self, sig: &[u8]) -> R<()> {
        let op = self.verify.take().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        let sig_rv = |e| match e {
            CryptoError::BadLength if sig.len() != 64 => CKR_SIGNATURE_LEN_RANGE,
            CryptoError::BadLength => CKR_DATA_LEN_RANGE,
            CryptoError::Invalid => CKR_SIGNATURE_INVALID,
            other => crypto_rv(other),
        };
        match op {
            SignOp::Sm2Raw { key: KeyRef::Public(p), buf } => crypto::sm2_verify_digest(&p, &buf, sig).map_err(sig_rv),
            SignOp::Sm2Sm3 { key: KeyRef::Public(p), hasher } => {
                crypto::sm2_verify_digest(&p, &hasher.finalize(), sig).map_err(sig_rv)
            }
            SignOp::Sm4Mac { key: KeyRef::Secret(k), buf } => {
                if sig.len() != 8 {
                    return Err(CKR_SIGNATURE_LEN_RANGE);
                }
                let mac = crypto::sm4_mac(&k, &buf).map_err(crypto_rv)?;
                if subtle::ConstantTimeEq::ct_eq(&mac[..], sig).into() { Ok(()) } else { Err(CKR_SIGNATURE_INVALID) }
            }
            _ => Err(CKR_KEY_TYPE_INCONSISTENT),
        }
    }

    /// `C_DigestInit` (SM3 only).
    pub fn digest_init(&mut self, code: CK_MECHANISM_TYPE, param: &[u8]) -> R<()> {
        if Mech::from_code(code) != Some(Mech::Sm3) {
            return Err(CKR_MECHANISM_INVALID);
        }
        if !param.is_empty() {
            return Err(CKR_MECHANISM_PARAM_INVALID);
        }
        if self.digest.is_some() {
            return Err(CKR_OPERATION_ACTIVE);
        }
        self.digest = Some(Sm3Hasher::new());
        self.multi[OpKind::Digest as usize] = false;
        Ok(())
    }

    /// `C_DigestUpdate`.
    pub fn digest_update(&mut self, data: &[u8]) -> R<()> {
        self.digest.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?.update(data);
        Ok(())
    }

    /// Whether a digest is active.
    pub fn digest_active(&self) -> bool {
        self.digest.is_some()
    }

    /// Ends the digest.
    pub fn digest_finish(&mut self) -> R<[u8; 32]> {
        Ok(self.digest.take().ok_or(CKR_OPERATION_NOT_INITIALIZED)?.finalize().into())
    }

    /// `C_EncryptUpdate` / `C_DecryptUpdate`: buffered.
    pub fn cipher_update(&mut self, data: &[u8], encrypt: bool) -> R<()> {
        let slot = if encrypt { &mut self.encrypt } else { &mut self.decrypt };
        slot.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?.buf.extend_from_slice(data);
        Ok(())
    }

    /// The output length the active encrypt/decrypt will produce for `extra` more input bytes.
    pub fn cipher_len(&self, extra: usize, encrypt: bool) -> R<usize> {
        let op = if encrypt { &self.encrypt } else { &self.decrypt }.as_ref().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        let n = op.buf.len() + extra;
        Ok(match (op.mech, encrypt) {
            (Mech::Sm2Encrypt, true) => n + 97,
            (Mech::Sm2Encrypt, false) => n.saturating_sub(97),
            _ => n,
        })
    }

    /// Ends the active encrypt/decrypt.
    pub fn cipher_finish(&mut self, encrypt: bool) -> R<Zeroizing<Vec<u8>>> {
        let slot = if encrypt { &mut self.encrypt } else { &mut self.decrypt };
        let op = slot.take().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        let len_rv = if encrypt { CKR_DATA_LEN_RANGE } else { CKR_ENCRYPTED_DATA_LEN_RANGE };
        let out = match (&op.key, op.mech) {
            (KeyRef::Public(p), Mech::Sm2Encrypt) => crypto::sm2_encrypt(p, &op.buf).map_err(crypto_rv)?,
            (KeyRef::Private(k), Mech::Sm2Encrypt) => k.decrypt(&op.buf).map_err(|_| CKR_ENCRYPTED_DATA_INVALID)?,
            (KeyRef::Secret(k), Mech::Sm4Ecb | Mech::Sm4Cbc) => {
                crypto::sm4(k, op.iv.as_ref().map(|v| &v[..]), &op.buf, encrypt).map_err(|_| len_rv)?
            }
            _ => return Err(CKR_KEY_TYPE_INCONSISTENT),
        };
        Ok(Zeroizing::new(out))
    }
}
