//! PKCS#10 certificate requests: parse, check the key, verify proof of possession.

use const_oid::db::rfc4519;
use der::{Decode, Encode, Reader, SliceReader, asn1::AnyRef};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::request::CertReq;

use crate::alg::{SignatureError, SignerId, Sm2PublicKey, check_sm2_with_sm3};
use crate::name::attribute_values;
use crate::serial::TerminalSerial;

/// Largest CSR we read. A terminal CSR is about 300 bytes; anything near this is an attack.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// Why a CSR was refused. Each refusal has its own variant so callers can map it to a stable reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// Input larger than [`MAX_CSR_BYTES`].
    #[error("CSR is {len} bytes, more than the {MAX_CSR_BYTES}-byte limit")]
    TooLarge {
        /// Its size.
        len: usize,
    },
    /// Not DER, not a CertificationRequest, or PEM that does not decode.
    #[error("CSR is not a DER PKCS#10 CertificationRequest: {0}")]
    Malformed(String),
    /// Bytes follow the CertificationRequest.
    #[error("CSR has {0} trailing bytes after the request")]
    TrailingBytes(usize),
    /// The key is not an SM2 key, not on the curve, or the point at infinity.
    #[error("CSR public key: {0}")]
    BadKey(SignatureError),
    /// The request is signed with an algorithm other than SM2-with-SM3.
    #[error("CSR signature algorithm: {0}")]
    WrongAlgorithm(SignatureError),
    /// The self-signature was made with OpenSSL's empty signer ID.
    #[error("CSR {0}")]
    WrongSignerId(SignatureError),
    /// The self-signature does not verify (no proof of possession).
    #[error("CSR self-signature: {0}")]
    BadSignature(SignatureError),
    /// The subject does not carry the terminal serial the caller expects.
    #[error(
        "CSR subject does not name terminal {expected} in CN or serialNumber (found CN={cn:?}, serialNumber={serial_number:?})"
    )]
    SubjectMismatch {
        /// The serial the caller expects.
        expected: String,
        /// The CN values found.
        cn: Vec<String>,
        /// The serialNumber values found.
        serial_number: Vec<String>,
    },
}

/// A request whose structure, key and self-signature have been checked.
#[derive(Clone, Debug)]
pub struct VerifiedCsr {
    request: CertReq,
    key: Sm2PublicKey,
}

impl VerifiedCsr {
    /// The request as parsed.
    pub fn request(&self) -> &CertReq {
        &self.request
    }

    /// The requested subject (informational: the certificate's subject comes from its profile).
    pub fn subject(&self) -> &x509_cert::name::Name {
        &self.request.info.subject
    }

    /// The checked public key.
    pub fn public_key(&self) -> &Sm2PublicKey {
        &self.key
    }

    /// The public key as a SubjectPublicKeyInfo, re-encoded canonically (uncompressed point).
    pub fn spki(&self) -> SubjectPublicKeyInfoOwned {
        self.key.to_spki()
    }

    /// Checks that the subject names `serial`: every CN and serialNumber present equals it, and at
    /// least one is present.
    pub fn check_terminal_subject(&self, serial: &TerminalSerial) -> Result<(), CsrError> {
        let cn = attribute_values(self.subject(), rfc4519::CN);
        let serial_number = attribute_values(self.subject(), rfc4519::SERIAL_NUMBER);
        let all_match = cn.iter().chain(&serial_number).all(|v| v == serial.as_str());
        if all_match && !(cn.is_empty() && serial_number.is_empty()) {
            return Ok(());
        }
        Err(CsrError::SubjectMismatch { expected: serial.to_string(), cn, serial_number })
    }
}

/// Accepts PEM (`CERTIFICATE REQUEST` or `NEW CERTIFICATE REQUEST`) or DER, and returns DER.
pub fn csr_der(input: &[u8]) -> Result<Vec<u8>, CsrError> {
    if input.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge { len: input.len() });
    }
    if input.first() == Some(&0x30) {
        return Ok(input.to_vec());
    }
    let text = std::str::from_utf8(input).map_err(|_| CsrError::Malformed("neither DER nor PEM".into()))?;
    let (label, der) =
        der::pem::decode_vec(text.trim().as_bytes()).map_err(|e| CsrError::Malformed(format!("PEM: {e}")))?;
    if label != "CERTIFICATE REQUEST" && label != "NEW CERTIFICATE REQUEST" {
        return Err(CsrError::Malformed(format!("PEM label is {label:?}, expected \"CERTIFICATE REQUEST\"")));
    }
    Ok(der)
}

/// Parses a DER CSR and verifies its key and self-signature with `signer_id`.
pub fn verify_csr(der_bytes: &[u8], signer_id: &SignerId) -> Result<VerifiedCsr, CsrError> {
    if der_bytes.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge { len: der_bytes.len() });
    }
    let mut reader = SliceReader::new(der_bytes).map_err(|e| CsrError::Malformed(e.to_string()))?;
    let outer: AnyRef<'_> = reader.decode().map_err(|e: der::Error| CsrError::Malformed(e.to_string()))?;
    let trailing = reader.remaining_len().try_into().unwrap_or(usize::MAX);
    if trailing != 0 {
        return Err(CsrError::TrailingBytes(trailing));
    }
    let request =
        CertReq::from_der(&der_bytes[..der_bytes.len() - trailing]).map_err(|e| CsrError::Malformed(e.to_string()))?;
    // The signed bytes are the first element of the outer SEQUENCE exactly as received.
    let mut inner = SliceReader::new(outer.value()).map_err(|e| CsrError::Malformed(e.to_string()))?;
    let info: AnyRef<'_> = inner.decode().map_err(|e: der::Error| CsrError::Malformed(e.to_string()))?;
    let info_der = info.to_der().map_err(|e| CsrError::Malformed(e.to_string()))?;

    check_sm2_with_sm3(&request.algorithm).map_err(CsrError::WrongAlgorithm)?;
    let key = Sm2PublicKey::from_spki(&request.info.public_key).map_err(CsrError::BadKey)?;
    let sig = request.signature.as_bytes().ok_or(CsrError::BadSignature(SignatureError::MalformedSignature))?;
    match key.verify(signer_id, &info_der, sig) {
        Ok(()) => Ok(VerifiedCsr { request, key }),
        Err(e @ SignatureError::EmptySignerId { .. }) => Err(CsrError::WrongSignerId(e)),
        Err(e) => Err(CsrError::BadSignature(e)),
    }
}

/// The DER `CertificationRequestInfo` for `subject` and `key`, to be signed by the key's owner
/// (a terminal's secure element, or a principal's key on its own machine).
pub fn build_csr_info(subject: &x509_cert::name::Name, key: &Sm2PublicKey) -> Result<Vec<u8>, CsrError> {
    let info = x509_cert::request::CertReqInfo {
        version: x509_cert::request::Version::V1,
        subject: subject.clone(),
        public_key: key.to_spki(),
        attributes: Default::default(),
    };
    info.to_der().map_err(|e| CsrError::Malformed(e.to_string()))
}

/// Wraps a signature over `info_der` into a CSR and checks it verifies under `signer_id`.
pub fn assemble_csr(info_der: &[u8], signature_der: &[u8], signer_id: &SignerId) -> Result<Vec<u8>, CsrError> {
    let der = crate::cert::signed_der(info_der, signature_der).map_err(|e| CsrError::Malformed(e.to_string()))?;
    verify_csr(&der, signer_id)?;
    Ok(der)
}
