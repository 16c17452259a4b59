//! An SM2 private key held in process memory.

use der::pem::LineEnding;
use pki::{SignerId, Sm2PublicKey};
use sm2::elliptic_curve::Generate;
use sm2::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use zeroize::Zeroizing;

use crate::{HsmError, Signature, Signer};

/// An SM2 key pair in memory. The private scalar is overwritten when the value is dropped
/// (`sm2_dsa::SigningKey` wipes itself).
pub struct SoftwareSm2Key {
    key: sm2_dsa::SigningKey,
    /// Z = SM3(ENTL ‖ ID ‖ curve ‖ key) for `signer_id`: fixed for the key's life.
    z: [u8; 32],
    public: Sm2PublicKey,
    signer_id: SignerId,
}

impl SoftwareSm2Key {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate(signer_id: SignerId) -> Result<Self, HsmError> {
        let secret = sm2::SecretKey::try_generate_from_rng(&mut getrandom::SysRng)
            .map_err(|e| HsmError::Random(e.to_string()))?;
        Self::from_secret(&secret, signer_id)
    }

    /// A key from its 32-byte big-endian private scalar (for deterministic tests).
    pub fn from_scalar_bytes(bytes: &[u8; 32], signer_id: SignerId) -> Result<Self, HsmError> {
        let secret =
            sm2::SecretKey::from_slice(bytes).map_err(|_| HsmError::BadKey("scalar is zero or not below n".into()))?;
        Self::from_secret(&secret, signer_id)
    }

    /// A key from an unencrypted PKCS#8 PEM document (`openssl genpkey -algorithm SM2` writes these).
    pub fn from_pkcs8_pem(pem: &str, signer_id: SignerId) -> Result<Self, HsmError> {
        let secret = sm2::SecretKey::from_pkcs8_pem(pem).map_err(|e| HsmError::BadKey(e.to_string()))?;
        Self::from_secret(&secret, signer_id)
    }

    /// A key from the `sm2` crate's secret key.
    pub fn from_secret_key(secret: &sm2::SecretKey, signer_id: SignerId) -> Result<Self, HsmError> {
        Self::from_secret(secret, signer_id)
    }

    /// The `sm2` crate's secret key (zeroized on drop).
    pub(crate) fn secret_key(&self) -> Result<sm2::SecretKey, HsmError> {
        let bytes = self.key.to_bytes();
        sm2::SecretKey::from_slice(&bytes[..]).map_err(|e| HsmError::BadKey(e.to_string()))
    }

    fn from_secret(secret: &sm2::SecretKey, signer_id: SignerId) -> Result<Self, HsmError> {
        let key = sm2_dsa::SigningKey::from_secret_key(secret).map_err(|e| HsmError::BadKey(e.to_string()))?;
        let public = Sm2PublicKey::from_sec1(&key.verifying_key().to_sec1_uncompressed())
            .map_err(|e| HsmError::BadKey(e.to_string()))?;
        let z = sm2_dsa::z(signer_id.as_str().as_bytes(), key.verifying_key())
            .map_err(|e| HsmError::BadKey(e.to_string()))?;
        Ok(Self { key, z, public, signer_id })
    }

    /// The private key as unencrypted PKCS#8 PEM, zeroized when dropped. Only for tests and
    /// examples: identities on disk are passphrase-protected.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, HsmError> {
        let secret = self.secret_key()?;
        let doc = secret.to_pkcs8_der().map_err(|e| HsmError::BadKey(e.to_string()))?;
        doc.to_pem("PRIVATE KEY", LineEnding::LF).map_err(|e| HsmError::BadKey(e.to_string()))
    }

    /// The checked public key.
    pub fn sm2_public_key(&self) -> &Sm2PublicKey {
        &self.public
    }
}

impl std::fmt::Debug for SoftwareSm2Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftwareSm2Key")
            .field("public", &self.public)
            .field("signer_id", &self.signer_id)
            .finish_non_exhaustive()
    }
}

impl Signer for SoftwareSm2Key {
    fn algorithm(&self) -> AlgorithmIdentifierOwned {
        pki::alg::sm2_with_sm3()
    }

    fn public_key(&self) -> SubjectPublicKeyInfoOwned {
        self.public.to_spki()
    }

    fn signer_id(&self) -> &SignerId {
        &self.signer_id
    }

    fn sign(&self, tbs: &[u8]) -> Result<Signature, HsmError> {
        // Nonce from the operating system (GB/T 32918.2 A3), constant-time [k]G: see sm2-dsa.
        let sig = self.key.sign_digest(&sm2_dsa::digest(&self.z, tbs)).map_err(|e| HsmError::Signing(e.to_string()))?;
        Ok(Signature::from_der(sig.to_der().to_vec()))
    }

    fn signs_without_waiting(&self) -> bool {
        true
    }
}
