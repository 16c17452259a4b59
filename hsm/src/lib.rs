//! `hsm`: the CA's key boundary.
//!
//! One trait, [`Signer`], and backends side by side under [`backend`]: everything above this
//! crate signs through `&dyn Signer` and never sees a private key. Backends:
//!
//! - [`backend::memory::SoftwareSm2Key`]: an SM2 key in process memory, zeroized on drop — for
//!   tests and, later, file-based station/admin identities.
//! - [`backend::pkcs11::Pkcs11Signer`]: a key inside a PKCS#11 HSM (the CA's keys), driven through
//!   `cryptoki` with vendor profiles, a session pool and bounded retries.

use pki::SignerId;
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

pub mod backend;

/// A signature as DER `SEQUENCE { r INTEGER, s INTEGER }`, the encoding X.509 carries in its BIT STRING.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature(Vec<u8>);

impl Signature {
    /// Wraps DER bytes (not checked here; `pki` verifies every signature it assembles).
    pub fn from_der(der: Vec<u8>) -> Self {
        Self(der)
    }

    /// The DER bytes.
    pub fn as_der(&self) -> &[u8] {
        &self.0
    }
}

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    /// The key material does not decode or is not an SM2 key.
    #[error("bad key: {0}")]
    BadKey(String),
    /// The signing operation failed.
    #[error("signing failed: {0}")]
    Signing(String),
    /// The operating system's random number generator failed.
    #[error("random number generator: {0}")]
    Random(String),
    /// The HSM cannot be reached or refuses service after retries.
    #[error("HSM unavailable: {0}")]
    Unavailable(String),
    /// The PIN was refused (wrong, locked or expired): retrying will not help.
    #[error("HSM login refused: {0}")]
    Login(String),
    /// No key matches the selector.
    #[error("key not found: {0}")]
    KeyNotFound(String),
    /// A key with this label already exists.
    #[error("a key labelled {0:?} already exists")]
    KeyExists(String),
    /// A configuration or vendor profile is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The module refused an operation for a reason retrying will not change.
    #[error("PKCS#11: {0}")]
    Pkcs11(String),
    /// The self-test signature did not verify.
    #[error("self-test failed: {0}")]
    SelfTest(String),
}

/// Something that signs with a private key it never reveals.
///
/// Synchronous on purpose: an HSM call is a blocking FFI call; async callers use
/// `spawn_blocking`. Implementations are `Send + Sync` so one signer serves many requests.
pub trait Signer: Send + Sync {
    /// The signature algorithm, as written in certificates (`SM2-with-SM3`, no parameters).
    fn algorithm(&self) -> AlgorithmIdentifierOwned;

    /// The public key that verifies this signer's signatures.
    fn public_key(&self) -> SubjectPublicKeyInfoOwned;

    /// The SM2 signer ID hashed into Z.
    fn signer_id(&self) -> &SignerId;

    /// Signs `tbs` (SM3 of Z‖tbs inside) and returns the DER signature.
    fn sign(&self, tbs: &[u8]) -> Result<Signature, HsmError>;

    /// Whether a signature now would return without waiting: no retry back-off, no new session
    /// or login (a software token's PIN check is a PBKDF2 of ≥100,000 iterations). An async
    /// caller signs in place only then. `false` unless the signer knows.
    fn signs_without_waiting(&self) -> bool {
        false
    }
}
