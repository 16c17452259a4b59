//! The cryptography behind the mechanisms, and the sealing of the token store.

use cbc::cipher::block_padding::{NoPadding, Pkcs7};
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use ecb::cipher::KeyInit;
use hmac::{Hmac, Mac};
use sm3::{Digest, Sm3};
use sm4::Sm4;
use zeroize::Zeroizing;

/// A crypto failure, mapped to a `CKR_` code by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CryptoError {
    /// Key bytes are not a valid key.
    BadKey,
    /// Input length not allowed by the mechanism.
    BadLength,
    /// Signature or MAC does not verify, or ciphertext does not decrypt.
    Invalid,
    /// The random number generator failed.
    Random,
}

/// Fills `buf` from the operating system's CSPRNG.
pub fn random(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::fill(buf).map_err(|_| CryptoError::Random)
}

/// An SM2 private key in memory, prepared for signing (`sm2_dsa::SigningKey`, which wipes its
/// scalars when dropped).
pub struct Sm2Secret {
    key: sm2_dsa::SigningKey,
    /// The last signer ID's Z: a key signs with one ID in practice, and Z is an SM3 of ~200
    /// bytes per signature otherwise (public data).
    last_z: std::sync::Mutex<Option<(Vec<u8>, [u8; 32])>>,
}

impl Sm2Secret {
    /// From a 32-byte big-endian scalar.
    pub fn from_scalar(bytes: &[u8]) -> Result<Self, CryptoError> {
        let bytes: &[u8; 32] = bytes.try_into().map_err(|_| CryptoError::BadKey)?;
        let key = sm2_dsa::SigningKey::from_bytes(bytes).map_err(|_| CryptoError::BadKey)?;
        Ok(Self { key, last_z: std::sync::Mutex::new(None) })
    }

    /// A fresh key; returns it with its scalar (for storage) and uncompressed public point.
    pub fn generate() -> Result<(Self, Zeroizing<Vec<u8>>), CryptoError> {
        loop {
            let mut scalar = Zeroizing::new(vec![0u8; 32]);
            random(&mut scalar)?;
            if let Ok(secret) = Self::from_scalar(&scalar) {
                return Ok((secret, scalar));
            }
        }
    }

    /// The uncompressed public point `04 ‖ X ‖ Y`.
    pub fn public_point(&self) -> Vec<u8> {
        self.key.verifying_key().to_sec1_uncompressed().to_vec()
    }

    /// Z = SM3(ENTL ‖ ID ‖ a ‖ b ‖ xG ‖ yG ‖ xA ‖ yA) for this key (the last ID's kept).
    pub fn z(&self, id: &[u8]) -> Result<[u8; 32], CryptoError> {
        if let Ok(last) = self.last_z.lock()
            && let Some((last_id, z)) = last.as_ref()
            && last_id.as_slice() == id
        {
            return Ok(*z);
        }
        let z = z_value(id, &self.public_point())?;
        if let Ok(mut last) = self.last_z.lock() {
            *last = Some((id.to_vec(), z));
        }
        Ok(z)
    }

    /// Signs a 32-byte e = SM3(Z ‖ M); returns r ‖ s.
    pub fn sign_digest(&self, e: &[u8]) -> Result<[u8; 64], CryptoError> {
        let e: &[u8; 32] = e.try_into().map_err(|_| CryptoError::BadLength)?;
        let sig = self.key.sign_digest(e).map_err(|_| CryptoError::Random)?;
        Ok(sig.to_bytes().into())
    }

    /// Decrypts C1 ‖ C3 ‖ C2.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let scalar = self.key.to_bytes();
        let dk = sm2::pke::DecryptingKey::from_slice(&scalar[..]).map_err(|_| CryptoError::BadKey)?;
        dk.decrypt(ciphertext).map_err(|_| CryptoError::Invalid)
    }
}

/// `04 ‖ X ‖ Y`.
pub fn public_point(pk: &sm2::PublicKey) -> Vec<u8> {
    use sm2::elliptic_curve::sec1::ToSec1Point;
    pk.to_sec1_point(false).as_bytes().to_vec()
}

/// Z for signer `id` and public point `04 ‖ X ‖ Y` (see `pki::alg::sm2_z`).
pub fn z_value(id: &[u8], point: &[u8]) -> Result<[u8; 32], CryptoError> {
    pki::alg::sm2_z(id, point).map_err(|_| CryptoError::BadLength)
}

/// Verifies r ‖ s over a 32-byte digest with an uncompressed public point.
pub fn sm2_verify_digest(point: &[u8], e: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
    if sig.len() != 64 {
        return Err(CryptoError::BadLength);
    }
    let e: &[u8; 32] = e.try_into().map_err(|_| CryptoError::BadLength)?;
    let vk = sm2_dsa::VerifyingKey::from_sec1(point).map_err(|_| CryptoError::BadKey)?;
    let sig = sm2_dsa::Signature::from_slice(sig).map_err(|_| CryptoError::Invalid)?;
    vk.verify_digest(e, &sig).map_err(|_| CryptoError::Invalid)
}

/// Whether `point` is an uncompressed `04 ‖ X ‖ Y` on the SM2 curve (and not the identity).
pub fn is_sm2_point(point: &[u8]) -> bool {
    point.len() == 65 && point[0] == 0x04 && sm2::PublicKey::from_sec1_bytes(point).is_ok()
}

/// SM2 encryption to an uncompressed public point; C1 ‖ C3 ‖ C2.
pub fn sm2_encrypt(point: &[u8], msg: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let ek = sm2::pke::EncryptingKey::from_sec1_bytes(point).map_err(|_| CryptoError::BadKey)?;
    ek.encrypt(&mut getrandom::SysRng, msg).map_err(|_| CryptoError::Invalid)
}

/// SM4-ECB or -CBC without padding.
pub fn sm4(key: &[u8], iv: Option<&[u8]>, data: &[u8], encrypt: bool) -> Result<Vec<u8>, CryptoError> {
    if !data.len().is_multiple_of(16) {
        return Err(CryptoError::BadLength);
    }
    let mut buf = data.to_vec();
    match iv {
        None => {
            let c = ecb::Decryptor::<Sm4>::new_from_slice(key).map_err(|_| CryptoError::BadKey)?;
            if encrypt {
                let e = ecb::Encryptor::<Sm4>::new_from_slice(key).map_err(|_| CryptoError::BadKey)?;
                e.encrypt_padded::<NoPadding>(&mut buf, data.len()).map_err(|_| CryptoError::BadLength)?;
            } else {
                c.decrypt_padded::<NoPadding>(&mut buf).map_err(|_| CryptoError::BadLength)?;
            }
        }
        Some(iv) => {
            if encrypt {
                let e = cbc::Encryptor::<Sm4>::new_from_slices(key, iv).map_err(|_| CryptoError::BadKey)?;
                e.encrypt_padded::<NoPadding>(&mut buf, data.len()).map_err(|_| CryptoError::BadLength)?;
            } else {
                let d = cbc::Decryptor::<Sm4>::new_from_slices(key, iv).map_err(|_| CryptoError::BadKey)?;
                d.decrypt_padded::<NoPadding>(&mut buf).map_err(|_| CryptoError::BadLength)?;
            }
        }
    }
    Ok(buf)
}

/// SM4 CBC-MAC (zero IV, data zero-padded to whole blocks), first 8 bytes.
pub fn sm4_mac(key: &[u8], data: &[u8]) -> Result<[u8; 8], CryptoError> {
    let mut padded = data.to_vec();
    padded.resize(data.len().div_ceil(16).max(1) * 16, 0);
    let out = sm4(key, Some(&[0u8; 16]), &padded, true)?;
    let mut mac = [0u8; 8];
    mac.copy_from_slice(&out[out.len() - 16..out.len() - 8]);
    Ok(mac)
}

type HmacSm3 = Hmac<Sm3>;

/// PBKDF2-HMAC-SM3: the key that unwraps the token's master key, from a PIN.
pub fn pin_key(pin: &[u8], salt: &[u8], iterations: u32) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let mut out = Zeroizing::new([0u8; 32]);
    pbkdf2::pbkdf2::<HmacSm3>(pin, salt, iterations, &mut out[..]).map_err(|_| CryptoError::BadLength)?;
    Ok(out)
}

fn mac_with(key: &[u8]) -> Result<HmacSm3, CryptoError> {
    <HmacSm3 as hmac::KeyInit>::new_from_slice(key).map_err(|_| CryptoError::BadKey)
}

fn subkey(key: &[u8], label: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let mut mac = mac_with(key)?;
    mac.update(label);
    Ok(Zeroizing::new(mac.finalize().into_bytes().to_vec()))
}

/// Encrypt-then-MAC with national algorithms only: SM4-CBC (PKCS#7) + HMAC-SM3 over IV ‖ C.
/// Output: IV (16) ‖ C ‖ tag (32).
pub fn seal(key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let enc = subkey(key, b"softtoken seal enc")?;
    let mac_key = subkey(key, b"softtoken seal mac")?;
    let mut iv = [0u8; 16];
    random(&mut iv)?;
    let ct = cbc::Encryptor::<Sm4>::new_from_slices(&enc[..16], &iv)
        .map_err(|_| CryptoError::BadKey)?
        .encrypt_padded_vec::<Pkcs7>(plaintext);
    let mut out = iv.to_vec();
    out.extend_from_slice(&ct);
    let mut mac = mac_with(&mac_key)?;
    mac.update(&out);
    out.extend_from_slice(&mac.finalize().into_bytes());
    Ok(out)
}

/// Checks the tag (in constant time) and decrypts what [`seal`] made.
pub fn open(key: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.len() < 16 + 16 + 32 {
        return Err(CryptoError::Invalid);
    }
    let enc = subkey(key, b"softtoken seal enc")?;
    let mac_key = subkey(key, b"softtoken seal mac")?;
    let (body, tag) = sealed.split_at(sealed.len() - 32);
    let mut mac = mac_with(&mac_key)?;
    mac.update(body);
    mac.verify_slice(tag).map_err(|_| CryptoError::Invalid)?;
    let (iv, ct) = body.split_at(16);
    let pt = cbc::Decryptor::<Sm4>::new_from_slices(&enc[..16], iv)
        .map_err(|_| CryptoError::BadKey)?
        .decrypt_padded_vec::<Pkcs7>(ct)
        .map_err(|_| CryptoError::Invalid)?;
    Ok(Zeroizing::new(pt))
}

/// SM3 of `data`.
pub fn sm3(data: &[u8]) -> [u8; 32] {
    Sm3::digest(data).into()
}

/// A streaming SM3.
pub type Sm3Hasher = Sm3;
