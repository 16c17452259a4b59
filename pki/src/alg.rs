//! Algorithm identifiers and SM2 signature verification.
//!
//! Everything this CA signs or accepts is SM2-with-SM3 (REQUIREMENTS C5) over keys on the SM2
//! curve, with the signer ID of GM/T 0009 unless a profile names another one.

use const_oid::ObjectIdentifier;
use der::{Encode, asn1::ObjectIdentifier as Oid};
use sm2::dsa::Signature as Sm2Signature;
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

/// `SM2-with-SM3` signature algorithm, GM/T 0006: 1.2.156.10197.1.501.
pub const SM2_WITH_SM3: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.156.10197.1.501");
/// The SM2 elliptic curve, GM/T 0006: 1.2.156.10197.1.301.
pub const SM2_CURVE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.156.10197.1.301");
/// `id-ecPublicKey`, RFC 5480: 1.2.840.10045.2.1.
pub const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");

/// The signer ID (GM/T 0009 "distinguishing identifier") that goes into Z when none is configured.
pub const DEFAULT_SIGNER_ID: &str = "1234567812345678";

/// The `AlgorithmIdentifier` written in every certificate, CSR and CRL we sign: SM2-with-SM3 with
/// the parameters absent, as GM/T 0015 and OpenSSL both write it.
pub fn sm2_with_sm3() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned { oid: SM2_WITH_SM3, parameters: None }
}

/// The signer ID hashed into Z = SM3(ENTL ‖ ID ‖ a ‖ b ‖ G ‖ P) for SM2 signatures.
///
/// Non-empty and at most 8191 bytes (ENTL is the ID's length in bits, in 16 bits).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SignerId(String);

impl SignerId {
    /// Checks and wraps a signer ID.
    pub fn new(id: impl Into<String>) -> Result<Self, SignatureError> {
        let id = id.into();
        if id.is_empty() || id.len() > 8191 {
            return Err(SignatureError::BadSignerId { len: id.len() });
        }
        Ok(Self(id))
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for SignerId {
    fn default() -> Self {
        Self(DEFAULT_SIGNER_ID.to_owned())
    }
}

impl std::fmt::Display for SignerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a public key or a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The SubjectPublicKeyInfo is not `id-ecPublicKey`.
    #[error("public key algorithm {found} is not id-ecPublicKey")]
    NotEcKey {
        /// The algorithm OID that was found.
        found: ObjectIdentifier,
    },
    /// The key is an EC key on another curve (or has no named curve).
    #[error("public key is not on the SM2 curve (curve parameter {found})")]
    NotSm2Curve {
        /// The curve parameter as found, or "absent".
        found: String,
    },
    /// The encoded point is the point at infinity.
    #[error("public key is the point at infinity")]
    PointAtInfinity,
    /// The encoded point does not decode to a point on the SM2 curve.
    #[error("public key is not a point on the SM2 curve")]
    PointNotOnCurve,
    /// The signature algorithm is not SM2-with-SM3 (or carries parameters).
    #[error("signature algorithm {found} is not SM2-with-SM3 (1.2.156.10197.1.501, no parameters)")]
    NotSm2WithSm3 {
        /// The algorithm OID that was found.
        found: ObjectIdentifier,
    },
    /// The signature value is not a DER `SEQUENCE { r, s }` with r, s in [1, n-1].
    #[error("signature value is not a DER SEQUENCE {{ r, s }} of two scalars")]
    MalformedSignature,
    /// The signature does not verify with the expected signer ID, but does with OpenSSL's empty default.
    #[error(
        "signature was made with an empty SM2 signer ID, expected \"{expected}\" \
         (with OpenSSL 3, sign with -sigopt distid:{expected})"
    )]
    EmptySignerId {
        /// The signer ID we verify with.
        expected: String,
    },
    /// The signature does not verify.
    #[error("signature does not verify")]
    Invalid,
    /// The signer ID is empty or too long.
    #[error("signer ID must be 1 to 8191 bytes, got {len}")]
    BadSignerId {
        /// Its length.
        len: usize,
    },
}

/// A public key on the SM2 curve, checked.
///
/// A key that verifies many signatures (the issuing CA's, a caller's) can carry its multiples
/// precomputed ([`Sm2PublicKey::precomputed`]); clones share them. Verification is `sm2-dsa`'s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sm2PublicKey {
    key: sm2_dsa::VerifyingKey,
}

impl Sm2PublicKey {
    /// Decodes and checks a SubjectPublicKeyInfo: `id-ecPublicKey`, named curve SM2, a finite point on it.
    pub fn from_spki(spki: &SubjectPublicKeyInfoOwned) -> Result<Self, SignatureError> {
        if spki.algorithm.oid != EC_PUBLIC_KEY {
            return Err(SignatureError::NotEcKey { found: spki.algorithm.oid });
        }
        let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.decode_as::<Oid>().ok());
        match curve {
            Some(oid) if oid == SM2_CURVE => {}
            Some(oid) => {
                return Err(SignatureError::NotSm2Curve { found: oid.to_string() });
            }
            None => {
                return Err(SignatureError::NotSm2Curve { found: "absent".into() });
            }
        }
        let point = spki.subject_public_key.as_bytes().ok_or(SignatureError::PointNotOnCurve)?;
        Self::from_sec1(point)
    }

    /// Decodes a SEC1 point (`04‖X‖Y` or compressed).
    pub fn from_sec1(point: &[u8]) -> Result<Self, SignatureError> {
        if point == [0u8] {
            return Err(SignatureError::PointAtInfinity);
        }
        sm2_dsa::VerifyingKey::from_sec1(point).map(|key| Self { key }).map_err(|_| SignatureError::PointNotOnCurve)
    }

    /// This key with its multiples precomputed (88 KB, ~2 ms, once): each verification with it
    /// then costs about a third. For keys that verify many signatures.
    pub fn precomputed(self) -> Self {
        Self { key: self.key.precomputed() }
    }

    /// Whether [`Sm2PublicKey::precomputed`] made this key's multiples.
    pub fn is_precomputed(&self) -> bool {
        self.key.is_precomputed()
    }

    /// The uncompressed SEC1 encoding `04‖X‖Y` (65 bytes).
    pub fn to_sec1_uncompressed(&self) -> Vec<u8> {
        self.key.to_sec1_uncompressed().to_vec()
    }

    /// The SubjectPublicKeyInfo for this key: `id-ecPublicKey`, named curve SM2, uncompressed point.
    pub fn to_spki(&self) -> SubjectPublicKeyInfoOwned {
        SubjectPublicKeyInfoOwned {
            algorithm: AlgorithmIdentifierOwned { oid: EC_PUBLIC_KEY, parameters: Some(der::Any::from(SM2_CURVE)) },
            subject_public_key: der::asn1::BitString::from_bytes(&self.to_sec1_uncompressed())
                .unwrap_or_else(|_| unreachable!("a 65-byte BIT STRING always encodes")),
        }
    }

    /// The inner `sm2` crate key.
    pub fn as_sm2(&self) -> &sm2::PublicKey {
        self.key.as_public_key()
    }

    /// The `sm2-dsa` verifying key (with its table when precomputed).
    pub fn as_verifying_key(&self) -> &sm2_dsa::VerifyingKey {
        &self.key
    }

    /// Verifies a DER `SEQUENCE{r,s}` SM2-with-SM3 signature over `msg` with `signer_id`.
    ///
    /// When it fails, it tries OpenSSL 3's empty default ID so that the error can say so: that is
    /// the most common interop mistake.
    pub fn verify(&self, signer_id: &SignerId, msg: &[u8], sig_der: &[u8]) -> Result<(), SignatureError> {
        let sig = Sm2Signature::from_der(sig_der).map_err(|_| SignatureError::MalformedSignature)?;
        // DER is canonical: a signature with extra bytes or a non-minimal encoding is not DER.
        if sig.to_der().as_bytes() != sig_der {
            return Err(SignatureError::MalformedSignature);
        }
        let verifies = |id: &str| self.key.verify(id.as_bytes(), msg, &sig).is_ok();
        if verifies(signer_id.as_str()) {
            return Ok(());
        }
        if verifies("") {
            return Err(SignatureError::EmptySignerId { expected: signer_id.to_string() });
        }
        Err(SignatureError::Invalid)
    }
}

/// Checks that an AlgorithmIdentifier is SM2-with-SM3 with absent parameters.
pub fn check_sm2_with_sm3(alg: &AlgorithmIdentifierOwned) -> Result<(), SignatureError> {
    if alg.oid != SM2_WITH_SM3 || alg.parameters.is_some() {
        return Err(SignatureError::NotSm2WithSm3 { found: alg.oid });
    }
    Ok(())
}

/// SM3 of the DER SubjectPublicKeyInfo: the registry's key for "has this key been seen before".
pub fn spki_fingerprint(spki: &SubjectPublicKeyInfoOwned) -> [u8; 32] {
    use sm3::Digest;
    let der = spki.to_der().unwrap_or_default();
    sm3::Sm3::digest(der).into()
}

/// The key identifier we write in SKI/AKI: the leftmost 160 bits of SM3 over the
/// subjectPublicKey bits (RFC 7093 §2 method with SM3 in place of SHA-256, so that only
/// national algorithms appear anywhere, REQUIREMENTS C5).
pub fn key_identifier(spki: &SubjectPublicKeyInfoOwned) -> [u8; 20] {
    use sm3::Digest;
    let bits = spki.subject_public_key.raw_bytes();
    let digest = sm3::Sm3::digest(bits);
    let mut id = [0u8; 20];
    id.copy_from_slice(&digest[..20]);
    id
}

/// The SM2 curve parameters a, b, xG, yG (GM/T 0003.5), as they enter Z.
const CURVE_FOR_Z: [[u8; 32]; 4] = [
    hex32("FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC"),
    hex32("28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93"),
    hex32("32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7"),
    hex32("BC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0"),
];

const fn hex32(s: &str) -> [u8; 32] {
    let b = s.as_bytes();
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = (nibble(b[2 * i]) << 4) | nibble(b[2 * i + 1]);
        i += 1;
    }
    out
}

const fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

/// Z = SM3(ENTL ‖ ID ‖ a ‖ b ‖ xG ‖ yG ‖ xA ‖ yA) for `signer_id` and an uncompressed point
/// `04 ‖ X ‖ Y`: what an HSM's "raw" SM2 mechanism needs hashed in front of the message.
pub fn sm2_z(signer_id: &[u8], point: &[u8]) -> Result<[u8; 32], SignatureError> {
    use sm3::Digest;
    let entl = u16::try_from(signer_id.len() * 8).map_err(|_| SignatureError::BadSignerId { len: signer_id.len() })?;
    if point.len() != 65 || point[0] != 4 {
        return Err(SignatureError::PointNotOnCurve);
    }
    let mut h = sm3::Sm3::new();
    h.update(entl.to_be_bytes());
    h.update(signer_id);
    for c in &CURVE_FOR_Z {
        h.update(c);
    }
    h.update(&point[1..]);
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn z_matches_the_sm2_crate() {
        use sm2::dsa::signature::Verifier;
        use sm2::dsa::signature::hazmat::PrehashSigner;
        use sm3::Digest;
        let sk = sm2::dsa::SigningKey::from_slice("ALICE123@YAHOO.COM", &[9u8; 32]).expect("key");
        let point = Sm2PublicKey::from_sec1(&sk.verifying_key().to_sec1_bytes()).expect("point").to_sec1_uncompressed();
        let z = sm2_z(b"ALICE123@YAHOO.COM", &point).expect("z");
        let e = sm3::Sm3::digest([&z[..], b"message"].concat());
        let sig: sm2::dsa::Signature = sk.sign_prehash(&e).expect("sign");
        sk.verifying_key().verify(b"message", &sig).expect("a signature over SM3(Z||M) verifies as SM2-with-SM3");
        assert!(sm2_z(&[0u8; 8192], &point).is_err());
        assert!(sm2_z(b"id", &point[1..]).is_err());
    }

    /// A key made by the `sm2` crate, the signature it makes over `msg`, and our view of the key.
    fn signed(id: &str, msg: &[u8]) -> (Sm2PublicKey, Vec<u8>) {
        use sm2::dsa::signature::Signer;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("random");
        seed[0] &= 0x7f; // below n
        seed[31] |= 1; // not zero
        let sk = sm2::dsa::SigningKey::from_slice(id, &seed).expect("key");
        let sig: sm2::dsa::Signature = sk.sign(msg);
        let key = Sm2PublicKey::from_sec1(&sk.verifying_key().to_sec1_bytes()).expect("point");
        (key, sig.to_der().as_bytes().to_vec())
    }

    /// `SEQUENCE { r, s }` with r and s replaced.
    fn with_scalars(sig: &[u8], edit: impl Fn(sm2::Scalar, sm2::Scalar) -> (sm2::Scalar, sm2::Scalar)) -> Vec<u8> {
        let sig = Sm2Signature::from_der(sig).expect("der");
        let (r, s) = edit(*sig.r(), *sig.s());
        Sm2Signature::from_scalars(r, s).expect("nonzero").to_der().as_bytes().to_vec()
    }

    #[test]
    fn both_key_forms_accept_what_the_sm2_crate_signs() {
        let id = SignerId::default();
        for i in 0..40u32 {
            let msg = format!("message {i}").repeat(i as usize + 1);
            let (key, sig) = signed(id.as_str(), msg.as_bytes());
            let fast = key.clone().precomputed();
            assert!(fast.is_precomputed() && !key.is_precomputed());
            assert_eq!(key.verify(&id, msg.as_bytes(), &sig), Ok(()));
            assert_eq!(fast.verify(&id, msg.as_bytes(), &sig), Ok(()));
        }
    }

    #[test]
    fn both_key_forms_refuse_every_tampering() {
        let id = SignerId::default();
        let (key, sig) = signed(id.as_str(), b"to be signed");
        let (other, _) = signed(id.as_str(), b"to be signed");
        let one = sm2::Scalar::ONE;
        let tampered = [
            with_scalars(&sig, |r, s| (r + one, s)),
            with_scalars(&sig, |r, s| (r, s + one)),
            with_scalars(&sig, |r, s| (s, r)),
            with_scalars(&sig, |r, _| (r, -r)), // t = r + s = 0 (step B5)
        ];
        for k in [key.clone(), key.clone().precomputed()] {
            assert_eq!(k.verify(&id, b"to be signed!", &sig), Err(SignatureError::Invalid));
            for bad in &tampered {
                assert_eq!(k.verify(&id, b"to be signed", bad), Err(SignatureError::Invalid));
            }
            let other_id = SignerId::new("another signer").expect("id");
            assert_eq!(k.verify(&other_id, b"to be signed", &sig), Err(SignatureError::Invalid));
            let mut long = sig.clone();
            long.push(0);
            assert_eq!(k.verify(&id, b"to be signed", &long), Err(SignatureError::MalformedSignature));
        }
        for k in [other.clone(), other.precomputed()] {
            assert_eq!(k.verify(&id, b"to be signed", &sig), Err(SignatureError::Invalid));
        }
    }

    #[test]
    fn an_empty_signer_id_is_named_by_both_key_forms() {
        let (key, sig) = signed("", b"m");
        for k in [key.clone(), key.precomputed()] {
            let err = k.verify(&SignerId::default(), b"m", &sig).expect_err("empty ID");
            assert!(matches!(err, SignatureError::EmptySignerId { .. }), "{err:?}");
        }
    }
}
