//! The PKCS#11 backend: CA keys inside an HSM, driven through `cryptoki`.
//!
//! [`Pkcs11Hsm`] holds the loaded module, the slot, the PIN and a pool of logged-in sessions;
//! [`Pkcs11Signer`] signs with one key through that pool. A session that the module has closed
//! or logged out is replaced and the call retried a bounded number of times; when the module
//! cannot serve, the error is [`HsmError::Unavailable`].

mod profile;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use pki::{SignerId, Sm2PublicKey};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use zeroize::Zeroizing;

pub use profile::{PointEncoding, SignMode, SignatureEncoding, VendorProfile};

use crate::{HsmError, Signature, Signer};

/// How many times a call is retried after the module dropped its session or login.
pub const MAX_RETRIES: usize = 3;

/// The DER of the prime256v1 curve OID, as in `CKA_EC_PARAMS`.
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// The DER of the SM2 curve OID.
const SM2_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x82, 0x2d];
/// `ecdsa-with-SHA256`.
const ECDSA_WITH_SHA256: const_oid::ObjectIdentifier = const_oid::ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");

/// Where the module is and how to log in.
#[derive(Clone)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 shared library.
    pub module: PathBuf,
    /// Label of the token to use; `None` takes the first initialised token.
    pub token_label: Option<String>,
    /// The user PIN (from a file, the environment or a prompt — never argv).
    pub pin: Zeroizing<String>,
    /// The vendor's SM2 codes.
    pub profile: VendorProfile,
}

/// Which key a signer uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySelector {
    /// `CKA_LABEL`.
    Label(String),
    /// `CKA_ID`.
    Id(Vec<u8>),
}

impl KeySelector {
    fn attribute(&self) -> Attribute {
        match self {
            Self::Label(l) => Attribute::Label(l.clone().into_bytes()),
            Self::Id(id) => Attribute::Id(id.clone()),
        }
    }
}

/// The algorithm of a key found in the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// SM2 (vendor key type, or EC on the SM2 curve).
    Sm2,
    /// ECDSA on P-256.
    EcdsaP256,
    /// Something this crate does not sign with.
    Other,
}

/// A private key in the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// `CKA_LABEL`.
    pub label: String,
    /// `CKA_ID`.
    pub id: Vec<u8>,
    /// Its algorithm.
    pub algorithm: KeyAlgorithm,
    /// `CKA_SENSITIVE`.
    pub sensitive: bool,
    /// `CKA_EXTRACTABLE`.
    pub extractable: bool,
}

/// A loaded PKCS#11 module with a logged-in session pool.
pub struct Pkcs11Hsm {
    ctx: Pkcs11,
    slot: Slot,
    pin: AuthPin,
    profile: VendorProfile,
    pool: Mutex<Vec<Session>>,
    /// Set when a call lost its session or login, cleared by the next success: until then a
    /// call may back off and log in again.
    recovering: std::sync::atomic::AtomicBool,
}

fn ck(e: CkError) -> HsmError {
    match e {
        CkError::Pkcs11(rv, f) if retryable(rv) || unavailable(rv) => HsmError::Unavailable(format!("{f}: {rv}")),
        CkError::Pkcs11(rv, f) => HsmError::Pkcs11(format!("{f}: {rv}")),
        other => HsmError::Pkcs11(other.to_string()),
    }
}

/// The module lost our session or login: a fresh session may succeed.
fn retryable(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::UserNotLoggedIn
            | RvError::DeviceRemoved
            | RvError::TokenNotPresent
            | RvError::KeyHandleInvalid
            | RvError::ObjectHandleInvalid
    )
}

/// The module cannot serve at all.
fn unavailable(rv: RvError) -> bool {
    matches!(rv, RvError::CryptokiNotInitialized | RvError::DeviceError | RvError::DeviceMemory | RvError::GeneralError)
}

fn is_retryable(e: &CkError) -> bool {
    matches!(e, CkError::Pkcs11(rv, _) if retryable(*rv))
}

impl Pkcs11Hsm {
    /// Loads the module, finds the token and logs in once.
    pub fn open(config: Pkcs11Config) -> Result<Self, HsmError> {
        let ctx = Pkcs11::new(&config.module)
            .map_err(|e| HsmError::Unavailable(format!("loading {}: {e}", config.module.display())))?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) => {}
            Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(HsmError::Unavailable(format!("C_Initialize: {e}"))),
        }
        let slot = Self::find_slot(&ctx, config.token_label.as_deref())?;
        let hsm = Self {
            ctx,
            slot,
            pin: AuthPin::new(config.pin.as_str().into()),
            profile: config.profile,
            pool: Mutex::new(Vec::new()),
            recovering: std::sync::atomic::AtomicBool::new(false),
        };
        let s = hsm.open_session()?;
        hsm.put_back(s);
        Ok(hsm)
    }

    fn find_slot(ctx: &Pkcs11, label: Option<&str>) -> Result<Slot, HsmError> {
        for slot in ctx.get_slots_with_token().map_err(ck)? {
            let info = ctx.get_token_info(slot).map_err(ck)?;
            if !info.token_initialized() {
                continue;
            }
            if label.is_none_or(|l| info.label().trim_end() == l) {
                return Ok(slot);
            }
        }
        Err(HsmError::Unavailable(format!(
            "no initialised token{}",
            label.map(|l| format!(" labelled {l:?}")).unwrap_or_default()
        )))
    }

    /// The vendor profile in use.
    pub fn profile(&self) -> &VendorProfile {
        &self.profile
    }

    fn open_session(&self) -> Result<Session, HsmError> {
        let s = self.ctx.open_rw_session(self.slot).map_err(ck)?;
        match s.login(UserType::User, Some(&self.pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(s),
            Err(CkError::Pkcs11(rv @ (RvError::PinIncorrect | RvError::PinLocked | RvError::PinExpired), _)) => {
                Err(HsmError::Login(rv.to_string()))
            }
            Err(e) => Err(ck(e)),
        }
    }

    fn take(&self) -> Result<Session, HsmError> {
        let pooled = self.pool.lock().map_err(|_| HsmError::Unavailable("session pool poisoned".into()))?.pop();
        match pooled {
            Some(s) => Ok(s),
            None => self.open_session(),
        }
    }

    /// Whether a call now would find a pooled session and no recovery under way.
    fn has_idle_session(&self) -> bool {
        !self.recovering.load(std::sync::atomic::Ordering::Relaxed)
            && self.pool.lock().is_ok_and(|pool| !pool.is_empty())
    }

    fn put_back(&self, s: Session) {
        if let Ok(mut pool) = self.pool.lock() {
            pool.push(s);
        }
    }

    /// Runs `f` on a pooled session, replacing the session and retrying when the module lost it.
    fn with_session<T>(&self, mut f: impl FnMut(&Session) -> Result<T, CkError>) -> Result<T, HsmError> {
        let mut last = String::new();
        for attempt in 0..=MAX_RETRIES {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(5 << attempt));
            }
            let s = match self.take() {
                Ok(s) => s,
                Err(e @ HsmError::Login(_)) => return Err(e),
                Err(e) => {
                    self.recovering.store(true, std::sync::atomic::Ordering::Relaxed);
                    last = e.to_string();
                    continue;
                }
            };
            match f(&s) {
                Ok(v) => {
                    self.put_back(s);
                    self.recovering.store(false, std::sync::atomic::Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) if is_retryable(&e) => {
                    self.recovering.store(true, std::sync::atomic::Ordering::Relaxed);
                    last = e.to_string();
                    // The session is dead or logged out; so, probably, are its pooled siblings.
                    drop(s);
                    if let Ok(mut pool) = self.pool.lock() {
                        pool.clear();
                    }
                }
                Err(e) => {
                    self.put_back(s);
                    return Err(ck(e));
                }
            }
        }
        Err(HsmError::Unavailable(format!("after {MAX_RETRIES} retries: {last}")))
    }

    fn find_one(s: &Session, class: ObjectClass, key: &KeySelector) -> Result<Option<ObjectHandle>, CkError> {
        Ok(s.find_objects(&[Attribute::Class(class), key.attribute()])?.first().copied())
    }

    /// Generates an SM2 key pair inside the token: token object, sensitive, never extractable.
    pub fn generate_sm2_key(&self, label: &str) -> Result<KeyInfo, HsmError> {
        let kt = KeyType::new_vendor_defined(self.profile.key_type_sm2).map_err(|e| HsmError::Config(e.to_string()))?;
        let mech = MechanismType::new_vendor_defined(self.profile.mechanism_keygen)
            .map_err(|e| HsmError::Config(e.to_string()))?;
        let mechanism = Mechanism::VendorDefined(VendorDefinedMechanism::new::<()>(mech, None));
        self.generate_pair(
            label,
            &mechanism,
            vec![Attribute::KeyType(kt)],
            vec![Attribute::KeyType(kt)],
            KeyAlgorithm::Sm2,
        )
    }

    /// Generates an ECDSA P-256 key pair with the standard `CKM_EC_KEY_PAIR_GEN` (any module).
    pub fn generate_p256_key(&self, label: &str) -> Result<KeyInfo, HsmError> {
        let params = vec![Attribute::EcParams(P256_PARAMS.to_vec())];
        self.generate_pair(label, &Mechanism::EccKeyPairGen, params, vec![], KeyAlgorithm::EcdsaP256)
    }

    /// A token key pair under a fresh random `CKA_ID`, both halves unmodifiable: the private half
    /// sensitive and never extractable.
    fn generate_pair(
        &self,
        label: &str,
        mechanism: &Mechanism<'_>,
        mut public: Vec<Attribute>,
        mut private: Vec<Attribute>,
        algorithm: KeyAlgorithm,
    ) -> Result<KeyInfo, HsmError> {
        let selector = KeySelector::Label(label.into());
        if self.with_session(|s| Self::find_one(s, ObjectClass::PRIVATE_KEY, &selector))?.is_some() {
            return Err(HsmError::KeyExists(label.into()));
        }
        let mut id = vec![0u8; 16];
        getrandom::fill(&mut id).map_err(|e| HsmError::Random(e.to_string()))?;
        // Unmodifiable: no application sharing the token can later flip CKA_EXTRACTABLE, CKA_SIGN
        // or the label of a CA, OCSP or audit key (C_SetAttributeValue answers READ_ONLY).
        let named = [
            Attribute::Token(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.clone()),
            Attribute::Modifiable(false),
        ];
        public.extend(named.iter().cloned().chain([Attribute::Private(false), Attribute::Verify(true)]));
        private.extend(named.into_iter().chain([
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
        ]));
        self.with_session(|s| s.generate_key_pair(mechanism, &public, &private))?;
        Ok(KeyInfo { label: label.into(), id, algorithm, sensitive: true, extractable: false })
    }

    fn algorithm_of(&self, kt: Option<KeyType>, params: Option<&[u8]>) -> KeyAlgorithm {
        match (kt, params) {
            (Some(kt), _) if u64::from(kt) == self.profile.key_type_sm2 => KeyAlgorithm::Sm2,
            (Some(KeyType::EC), Some(p)) if p == SM2_PARAMS => KeyAlgorithm::Sm2,
            (Some(KeyType::EC), Some(p)) if p == P256_PARAMS => KeyAlgorithm::EcdsaP256,
            _ => KeyAlgorithm::Other,
        }
    }

    /// Every private key in the token.
    pub fn list_keys(&self) -> Result<Vec<KeyInfo>, HsmError> {
        let rows = self.with_session(|s| {
            let mut rows = Vec::new();
            for h in s.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])? {
                rows.push(s.get_attributes(
                    h,
                    &[
                        AttributeType::Label,
                        AttributeType::Id,
                        AttributeType::KeyType,
                        AttributeType::EcParams,
                        AttributeType::Sensitive,
                        AttributeType::Extractable,
                    ],
                )?);
            }
            Ok(rows)
        })?;
        Ok(rows
            .into_iter()
            .map(|attrs| {
                let mut info = KeyInfo {
                    label: String::new(),
                    id: Vec::new(),
                    algorithm: KeyAlgorithm::Other,
                    sensitive: false,
                    extractable: false,
                };
                let (mut kt, mut params) = (None, None);
                for a in attrs {
                    match a {
                        Attribute::Label(l) => info.label = String::from_utf8_lossy(&l).into_owned(),
                        Attribute::Id(id) => info.id = id,
                        Attribute::KeyType(k) => kt = Some(k),
                        Attribute::EcParams(p) => params = Some(p),
                        Attribute::Sensitive(b) => info.sensitive = b,
                        Attribute::Extractable(b) => info.extractable = b,
                        _ => {}
                    }
                }
                info.algorithm = self.algorithm_of(kt, params.as_deref());
                info
            })
            .collect())
    }

    /// A signer over the private key `key`; `signer_id` goes into Z for SM2 keys.
    pub fn signer(&self, key: KeySelector, signer_id: SignerId) -> Result<Pkcs11Signer<'_>, HsmError> {
        let found = self.with_session(|s| {
            let Some(private) = Self::find_one(s, ObjectClass::PRIVATE_KEY, &key)? else { return Ok(None) };
            let attrs =
                s.get_attributes(private, &[AttributeType::KeyType, AttributeType::EcParams, AttributeType::Id])?;
            let (mut kt, mut params, mut id) = (None, None, None);
            for a in attrs {
                match a {
                    Attribute::KeyType(k) => kt = Some(k),
                    Attribute::EcParams(p) => params = Some(p),
                    Attribute::Id(i) => id = Some(i),
                    _ => {}
                }
            }
            // The public half: same ID if there is one, else same selector.
            let public_sel = id.map(KeySelector::Id).unwrap_or_else(|| key.clone());
            let point = match Self::find_one(s, ObjectClass::PUBLIC_KEY, &public_sel)? {
                Some(p) => s.get_attributes(p, &[AttributeType::EcPoint])?,
                None => s.get_attributes(private, &[AttributeType::EcPoint])?,
            };
            let point = point.into_iter().find_map(|a| if let Attribute::EcPoint(p) = a { Some(p) } else { None });
            Ok(Some((private, kt, params, point)))
        })?;
        let Some((handle, kt, params, point)) = found else {
            return Err(HsmError::KeyNotFound(format!("{key:?}")));
        };
        let algorithm = self.algorithm_of(kt, params.as_deref());
        let point = point.ok_or_else(|| HsmError::BadKey("no CKA_EC_POINT for the key".into()))?;
        let point = match self.profile.ec_point {
            PointEncoding::Der if point.len() == 67 && point[..2] == [0x04, 0x41] => point[2..].to_vec(),
            PointEncoding::Raw if point.len() == 65 => point,
            _ => {
                return Err(HsmError::BadKey(format!(
                    "CKA_EC_POINT of {} bytes does not match profile {:?}",
                    point.len(),
                    self.profile.ec_point
                )));
            }
        };
        let public = match algorithm {
            KeyAlgorithm::Sm2 => {
                Sm2PublicKey::from_sec1(&point).map_err(|e| HsmError::BadKey(e.to_string()))?.to_spki()
            }
            KeyAlgorithm::EcdsaP256 => p256_spki(&point)?,
            KeyAlgorithm::Other => return Err(HsmError::BadKey("key is neither SM2 nor ECDSA P-256".into())),
        };
        Ok(Pkcs11Signer { hsm: self, key, handle: Mutex::new(handle), algorithm, public, signer_id, point })
    }
}

/// Initialises the first slot's token of `module` with `label`, an SO PIN and a user PIN
/// (`ca-server init` on the embedded softtoken; a vendor HSM is initialised with its own tools).
pub fn init_token(module: &std::path::Path, label: &str, so_pin: &str, user_pin: &str) -> Result<(), HsmError> {
    let ctx = Pkcs11::new(module).map_err(|e| HsmError::Unavailable(format!("loading {}: {e}", module.display())))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(HsmError::Unavailable(format!("C_Initialize: {e}"))),
    }
    let slot = *ctx.get_all_slots().map_err(ck)?.first().ok_or_else(|| HsmError::Unavailable("no slot".into()))?;
    ctx.init_token(slot, &AuthPin::new(so_pin.into()), label).map_err(ck)?;
    let s = ctx.open_rw_session(slot).map_err(ck)?;
    s.login(UserType::So, Some(&AuthPin::new(so_pin.into()))).map_err(ck)?;
    s.init_pin(&AuthPin::new(user_pin.into())).map_err(ck)?;
    s.logout().map_err(ck)?;
    Ok(())
}

fn p256_spki(point: &[u8]) -> Result<SubjectPublicKeyInfoOwned, HsmError> {
    use p256::pkcs8::EncodePublicKey;
    let pk = p256::PublicKey::from_sec1_bytes(point).map_err(|e| HsmError::BadKey(e.to_string()))?;
    let der = pk.to_public_key_der().map_err(|e| HsmError::BadKey(e.to_string()))?;
    der::Decode::from_der(der.as_bytes()).map_err(|e: der::Error| HsmError::BadKey(e.to_string()))
}

/// How one SM2 signature is made: the mechanism, its signer-ID parameter, and what is signed.
struct SignPlan {
    mechanism: MechanismType,
    id_param: Option<[u8; 16]>,
    data: Vec<u8>,
}

/// Signs with a private key that stays in the HSM.
pub struct Pkcs11Signer<'a> {
    hsm: &'a Pkcs11Hsm,
    key: KeySelector,
    handle: Mutex<ObjectHandle>,
    algorithm: KeyAlgorithm,
    public: SubjectPublicKeyInfoOwned,
    signer_id: SignerId,
    point: Vec<u8>,
}

impl Pkcs11Signer<'_> {
    /// The key's algorithm.
    pub fn key_algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// Signs a probe and verifies it: the readiness check of a CA.
    pub fn self_test(&self) -> Result<(), HsmError> {
        let probe = b"HSCA HSM self-test probe";
        let sig = self.sign(probe)?;
        let ok = match self.algorithm {
            KeyAlgorithm::Sm2 => Sm2PublicKey::from_sec1(&self.point)
                .and_then(|k| k.verify(&self.signer_id, probe, sig.as_der()))
                .map_err(|e| e.to_string()),
            _ => {
                use p256::ecdsa::signature::Verifier;
                p256::ecdsa::VerifyingKey::from_sec1_bytes(&self.point)
                    .and_then(|vk| vk.verify(probe, &p256::ecdsa::DerSignature::from_bytes(sig.as_der())?))
                    .map_err(|e| e.to_string())
            }
        };
        ok.map_err(HsmError::SelfTest)
    }

    /// Which mechanism, parameter and input sign `tbs` under the profile.
    fn plan(&self, tbs: &[u8]) -> Result<SignPlan, HsmError> {
        let p = &self.hsm.profile;
        let vendor =
            |code| MechanismType::new_vendor_defined(code).map_err(|e: CkError| HsmError::Config(e.to_string()));
        let id = self.signer_id.as_str().as_bytes();
        let with_sm3_param = match (p.sign_mode, p.id_parameter, <[u8; 16]>::try_from(id)) {
            (SignMode::WithSm3, true, Ok(arr)) => Some(Some(arr)),
            (SignMode::WithSm3, false, _) if id == pki::DEFAULT_SIGNER_ID.as_bytes() => Some(None),
            _ => None,
        };
        match with_sm3_param {
            Some(param) => {
                Ok(SignPlan { mechanism: vendor(p.mechanism_sign_sm3)?, id_param: param, data: tbs.to_vec() })
            }
            None => {
                use sm3::Digest;
                let z = pki::alg::sm2_z(id, &self.point).map_err(|e| HsmError::BadKey(e.to_string()))?;
                let e = sm3::Sm3::new().chain_update(z).chain_update(tbs).finalize();
                Ok(SignPlan { mechanism: vendor(p.mechanism_sign_raw)?, id_param: None, data: e.to_vec() })
            }
        }
    }

    fn refind(&self) -> Result<(), HsmError> {
        let h = self.hsm.with_session(|s| Pkcs11Hsm::find_one(s, ObjectClass::PRIVATE_KEY, &self.key))?;
        let h = h.ok_or_else(|| HsmError::KeyNotFound(format!("{:?}", self.key)))?;
        *self.handle.lock().map_err(|_| HsmError::Unavailable("key handle lock poisoned".into()))? = h;
        Ok(())
    }
}

impl Signer for Pkcs11Signer<'_> {
    fn algorithm(&self) -> AlgorithmIdentifierOwned {
        match self.algorithm {
            KeyAlgorithm::EcdsaP256 => AlgorithmIdentifierOwned { oid: ECDSA_WITH_SHA256, parameters: None },
            _ => pki::alg::sm2_with_sm3(),
        }
    }

    fn public_key(&self) -> SubjectPublicKeyInfoOwned {
        self.public.clone()
    }

    fn signer_id(&self) -> &SignerId {
        &self.signer_id
    }

    fn signs_without_waiting(&self) -> bool {
        self.hsm.has_idle_session()
    }

    fn sign(&self, tbs: &[u8]) -> Result<Signature, HsmError> {
        let raw = match self.algorithm {
            KeyAlgorithm::Sm2 => {
                let SignPlan { mechanism: mech, id_param: param, data } = self.plan(tbs)?;
                self.sign_with(
                    || match &param {
                        Some(id) => Mechanism::VendorDefined(VendorDefinedMechanism::new(mech, Some(id))),
                        None => Mechanism::VendorDefined(VendorDefinedMechanism::new::<()>(mech, None)),
                    },
                    &data,
                )?
            }
            KeyAlgorithm::EcdsaP256 => {
                use sha2::Digest;
                let digest = sha2::Sha256::digest(tbs);
                self.sign_with(|| Mechanism::Ecdsa, &digest)?
            }
            KeyAlgorithm::Other => return Err(HsmError::BadKey("unsupported key algorithm".into())),
        };
        let der = match (self.algorithm, self.hsm.profile.signature) {
            (KeyAlgorithm::Sm2, SignatureEncoding::Raw) => {
                sm2::dsa::Signature::from_slice(&raw).map(|s| s.to_der().to_vec())
            }
            (KeyAlgorithm::Sm2, SignatureEncoding::Der) => {
                sm2::dsa::Signature::from_der(&raw).map(|s| s.to_der().to_vec())
            }
            _ => p256::ecdsa::Signature::from_slice(&raw).map(|s| s.to_der().as_bytes().to_vec()),
        }
        .map_err(|_| HsmError::Signing(format!("token returned a malformed {}-byte signature", raw.len())))?;
        Ok(Signature::from_der(der))
    }
}

impl Pkcs11Signer<'_> {
    fn sign_with<'m>(&self, mech: impl Fn() -> Mechanism<'m>, data: &[u8]) -> Result<Vec<u8>, HsmError> {
        let mut refound = false;
        loop {
            let handle = *self.handle.lock().map_err(|_| HsmError::Unavailable("key handle lock poisoned".into()))?;
            match self.hsm.with_session(|s| s.sign(&mech(), handle, data)) {
                // A handle can change when the module is reloaded: look the key up again, once.
                Err(HsmError::Unavailable(msg))
                    if !refound && (msg.contains("KeyHandleInvalid") || msg.contains("ObjectHandleInvalid")) =>
                {
                    refound = true;
                    self.refind()?;
                }
                other => return other,
            }
        }
    }
}
