//! Passphrase-protected key files for principals' identities (stations, operators, admins).
//!
//! The format is PKCS#8 `EncryptedPrivateKeyInfo` with PBES2: PBKDF2-HMAC-SHA256 and **SM4-CBC**.
//! It is the one PBES2 combination with a national cipher that stock OpenSSL 3.0 reads and
//! writes (`openssl pkcs8 -topk8 -v2 sm4-cbc -v2prf hmacWithSHA256`; OpenSSL 3.0 has no
//! HMAC-SM3 PRF), so an operator can inspect or convert a key with standard tools.

use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit, block_padding::Pkcs7};
use const_oid::ObjectIdentifier;
use der::asn1::OctetString;
use der::{Decode, Encode, Sequence};
use pki::SignerId;
use sm2::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use spki::AlgorithmIdentifierOwned;
use zeroize::Zeroizing;

use super::memory::SoftwareSm2Key;
use crate::HsmError;

const PBES2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.5.13");
const PBKDF2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.5.12");
const HMAC_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.2.9");
const SM4_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.156.10197.1.104.2");

/// PBKDF2 iterations for new files.
pub const DEFAULT_ITERATIONS: u32 = 200_000;
/// The PEM label.
pub const PEM_LABEL: &str = "ENCRYPTED PRIVATE KEY";

#[derive(Sequence)]
struct EncryptedPrivateKeyInfo {
    algorithm: AlgorithmIdentifierOwned,
    data: OctetString,
}

#[derive(Sequence)]
struct Pbes2Params {
    kdf: AlgorithmIdentifierOwned,
    cipher: AlgorithmIdentifierOwned,
}

#[derive(Sequence)]
struct Pbkdf2Params {
    salt: OctetString,
    iterations: u32,
    #[asn1(optional = "true")]
    key_length: Option<u32>,
    #[asn1(optional = "true")]
    prf: Option<AlgorithmIdentifierOwned>,
}

fn bad(msg: impl Into<String>) -> HsmError {
    HsmError::BadKey(msg.into())
}

fn any<T: der::EncodeValue + der::Tagged>(v: &T) -> Result<der::Any, HsmError> {
    der::Any::encode_from(v).map_err(|e| bad(e.to_string()))
}

fn derive(passphrase: &[u8], salt: &[u8], iterations: u32) -> Zeroizing<[u8; 16]> {
    let mut key = Zeroizing::new([0u8; 16]);
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(passphrase, salt, iterations, &mut key[..]);
    key
}

/// Encrypts `key` under `passphrase` as PEM `ENCRYPTED PRIVATE KEY`.
pub fn encrypt(key: &SoftwareSm2Key, passphrase: &[u8], iterations: u32) -> Result<String, HsmError> {
    if passphrase.is_empty() {
        return Err(bad("empty passphrase"));
    }
    let plain = key.to_pkcs8_der()?;
    let (mut salt, mut iv) = ([0u8; 16], [0u8; 16]);
    getrandom::fill(&mut salt).map_err(|e| HsmError::Random(e.to_string()))?;
    getrandom::fill(&mut iv).map_err(|e| HsmError::Random(e.to_string()))?;
    let k = derive(passphrase, &salt, iterations);
    let ct = cbc::Encryptor::<sm4::Sm4>::new_from_slices(&k[..], &iv)
        .map_err(|e| bad(e.to_string()))?
        .encrypt_padded_vec::<Pkcs7>(&plain);
    let kdf = Pbkdf2Params {
        salt: OctetString::new(salt).map_err(|e| bad(e.to_string()))?,
        iterations,
        key_length: None,
        prf: Some(AlgorithmIdentifierOwned { oid: HMAC_WITH_SHA256, parameters: Some(der::Any::null()) }),
    };
    let params = Pbes2Params {
        kdf: AlgorithmIdentifierOwned { oid: PBKDF2, parameters: Some(any(&kdf)?) },
        cipher: AlgorithmIdentifierOwned {
            oid: SM4_CBC,
            parameters: Some(any(&OctetString::new(iv).map_err(|e| bad(e.to_string()))?)?),
        },
    };
    let info = EncryptedPrivateKeyInfo {
        algorithm: AlgorithmIdentifierOwned { oid: PBES2, parameters: Some(any(&params)?) },
        data: OctetString::new(ct).map_err(|e| bad(e.to_string()))?,
    };
    let der = info.to_der().map_err(|e| bad(e.to_string()))?;
    der::pem::encode_string(PEM_LABEL, der::pem::LineEnding::LF, &der).map_err(|e| bad(e.to_string()))
}

/// Decrypts a PEM `ENCRYPTED PRIVATE KEY` (PBES2, PBKDF2-HMAC-SHA256, SM4-CBC) holding an SM2 key.
pub fn decrypt(pem: &str, passphrase: &[u8], signer_id: SignerId) -> Result<SoftwareSm2Key, HsmError> {
    let (label, der) = der::pem::decode_vec(pem.trim().as_bytes()).map_err(|e| bad(format!("PEM: {e}")))?;
    if label != PEM_LABEL {
        return Err(bad(format!("PEM label is {label:?}, expected {PEM_LABEL:?}")));
    }
    let info = EncryptedPrivateKeyInfo::from_der(&der).map_err(|e| bad(format!("EncryptedPrivateKeyInfo: {e}")))?;
    let unsupported = || {
        bad(
            "unsupported key encryption: use PBES2 with PBKDF2-HMAC-SHA256 and SM4-CBC (openssl pkcs8 -topk8 -v2 sm4-cbc -v2prf hmacWithSHA256)",
        )
    };
    if info.algorithm.oid != PBES2 {
        return Err(unsupported());
    }
    let params: Pbes2Params =
        info.algorithm.parameters.as_ref().ok_or_else(unsupported)?.decode_as().map_err(|_| unsupported())?;
    if params.kdf.oid != PBKDF2 || params.cipher.oid != SM4_CBC {
        return Err(unsupported());
    }
    let kdf: Pbkdf2Params =
        params.kdf.parameters.as_ref().ok_or_else(unsupported)?.decode_as().map_err(|_| unsupported())?;
    if kdf.prf.as_ref().is_none_or(|p| p.oid != HMAC_WITH_SHA256) || kdf.key_length.is_some_and(|l| l != 16) {
        return Err(unsupported());
    }
    let iv: OctetString =
        params.cipher.parameters.as_ref().ok_or_else(unsupported)?.decode_as().map_err(|_| unsupported())?;
    let k = derive(passphrase, kdf.salt.as_bytes(), kdf.iterations);
    let plain = cbc::Decryptor::<sm4::Sm4>::new_from_slices(&k[..], iv.as_bytes())
        .map_err(|_| unsupported())?
        .decrypt_padded_vec::<Pkcs7>(info.data.as_bytes())
        .map_err(|_| HsmError::Login("wrong passphrase".into()))?;
    let plain = Zeroizing::new(plain);
    let secret = sm2::SecretKey::from_pkcs8_der(&plain).map_err(|_| HsmError::Login("wrong passphrase".into()))?;
    SoftwareSm2Key::from_secret_key(&secret, signer_id)
}

impl SoftwareSm2Key {
    /// The private key as unencrypted PKCS#8 DER, zeroized when dropped.
    pub(crate) fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let secret = self.secret_key()?;
        let doc = secret.to_pkcs8_der().map_err(|e| bad(e.to_string()))?;
        Ok(Zeroizing::new(doc.as_bytes().to_vec()))
    }
}
