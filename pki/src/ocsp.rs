//! OCSP (RFC 6960): reading requests, building and assembling signed responses, and checking a
//! response as a relying party.
//!
//! Like certificates and CRLs, the bytes to sign come only from a checked [`LintedResponse`], and a
//! returned signature is verified before it is wrapped. Responses are signed with SM2-with-SM3,
//! either by the issuing CA itself or by a delegated responder certificate (EKU OCSPSigning) that
//! it issued. The responder is named `byName`: `byKey` would be a SHA-1 hash (RFC 6960 §4.2.2.3),
//! and nothing we produce depends on SHA-1 (REQUIREMENTS C5).
//!
//! Requests may name certificates with SHA-1, SHA-256 or SM3 CertID hashes: those hashes are a
//! lookup key chosen by the client (`openssl ocsp` sends SHA-1 by default), not a signature, and
//! [`IssuerHashes`] only compares them.
//!
//! OpenSSL 3.0 cannot verify an SM2 response signed with the standard signer ID (see
//! `shared/NOTES-crates.md`); [`verify_response`] does it here.

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use const_oid::ObjectIdentifier;
use const_oid::db::rfc5280::ID_KP_OCSP_SIGNING;
use der::asn1::{AnyRef, BitString, GeneralizedTime, Int, Null, OctetString};
use der::{Decode, Encode};
use spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages};

pub use x509_cert::ext::pkix::CrlReason;

use crate::alg::{SignatureError, SignerId, Sm2PublicKey, check_sm2_with_sm3};
use crate::cert::CertSerial;
use crate::time::{TimeError, from_x509, whole_seconds};

/// `id-pkix-ocsp-basic`, RFC 6960: 1.3.6.1.5.5.7.48.1.1.
pub const ID_PKIX_OCSP_BASIC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");
/// `id-pkix-ocsp-nonce`, RFC 6960 §4.4.1 / RFC 8954: 1.3.6.1.5.5.7.48.1.2.
pub const ID_PKIX_OCSP_NONCE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.2");
/// `id-pkix-ocsp-nocheck`, RFC 6960 §4.2.2.2.1: 1.3.6.1.5.5.7.48.1.5.
pub const ID_PKIX_OCSP_NOCHECK: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.5");
/// SHA-1, as a CertID hash algorithm: 1.3.14.3.2.26.
pub const ID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
/// SHA-256, as a CertID hash algorithm: 2.16.840.1.101.3.4.2.1.
pub const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
/// SM3, GM/T 0006, as a CertID hash algorithm: 1.2.156.10197.1.401.
pub const ID_SM3: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.156.10197.1.401");

/// How far in the future a `thisUpdate` may be before a response is refused, for clock skew.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Longest nonce accepted (RFC 8954 §2.1: `Nonce ::= OCTET STRING (SIZE(1..32))`).
pub const MAX_NONCE_LEN: usize = 32;

/// The ASN.1 structures of RFC 6960 §4, as `der` types.
///
/// The RustCrypto `x509-ocsp` crate has no release for `der` 0.8 / `x509-cert` 0.3, so they are
/// defined here. They are public for callers that need the raw structure (and for tests that
/// must build responses the checked builder refuses to make).
pub mod asn1 {
    use der::asn1::{Any, BitString, GeneralizedTime, Int, Null, ObjectIdentifier, OctetString};
    use der::{Choice, Enumerated, Sequence};
    use spki::AlgorithmIdentifierOwned;
    use x509_cert::Certificate;
    use x509_cert::ext::Extensions;
    use x509_cert::ext::pkix::CrlReason;
    use x509_cert::name::Name;

    /// `OCSPRequest`.
    #[derive(Clone, Debug, PartialEq, Eq, Sequence)]
    pub struct OcspRequest {
        /// `tbsRequest`.
        pub tbs_request: TbsRequest,
        /// `optionalSignature [0] EXPLICIT Signature OPTIONAL`, kept undecoded.
        #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
        pub optional_signature: Option<Any>,
    }

    /// `TBSRequest`.
    #[derive(Clone, Debug, PartialEq, Eq, Sequence)]
    pub struct TbsRequest {
        /// `version [0] EXPLICIT Version DEFAULT v1`; `None` is v1.
        #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
        pub version: Option<u8>,
        /// `requestorName [1] EXPLICIT GeneralName OPTIONAL`, kept undecoded.
        #[asn1(context_specific = "1", tag_mode = "EXPLICIT", optional = "true")]
        pub requestor_name: Option<Any>,
        /// `requestList`.
        pub request_list: Vec<Request>,
        /// `requestExtensions [2] EXPLICIT Extensions OPTIONAL`.
        #[asn1(context_specific = "2", tag_mode = "EXPLICIT", optional = "true")]
        pub request_extensions: Option<Extensions>,
    }

    /// `Request`.
    #[derive(Clone, Debug, PartialEq, Eq, Sequence)]
    pub struct Request {
        /// `reqCert`.
        pub req_cert: CertId,
        /// `singleRequestExtensions [0] EXPLICIT Extensions OPTIONAL`.
        #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
        pub single_request_extensions: Option<Extensions>,
    }

    /// `CertID`.
    #[derive(Clone, Debug, PartialEq, Eq, Sequence)]
    pub struct CertId {
        /// `hashAlgorithm`.
        pub hash_algorithm: AlgorithmIdentifierOwned,
        /// `issuerNameHash`: hash of the DER of the issuer's subject.
        pub issuer_name_hash: OctetString,
        /// `issuerKeyHash`: hash of the issuer's subjectPublicKey bits.
        pub issuer_key_hash: OctetString,
        /// `serialNumber`.
        pub serial_number: Int,
    }

    /// `OCSPResponseStatus`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Enumerated)]
    #[repr(u32)]
    pub enum OcspResponseStatus {
        /// `successful (0)`: the response has valid confirmations.
        Successful = 0,
        /// `malformedRequest (1)`: illegal confirmation request.
        MalformedRequest = 1,
        /// `internalError (2)`: internal error in issuer.
        InternalError = 2,
        /// `tryLater (3)`: try again later.
        TryLater = 3,
        /// `sigRequired (5)`: the client must sign the request.
        SigRequired = 5,
        /// `unauthorized (6)`: request unauthorized.
        Unauthorized = 6,
    }

    /// `OCSPResponse`.
    #[derive(Clone, Debug, PartialEq, Eq, Sequence)]
    pub struct OcspResponse {
        /// `responseStatus`.
        pub response_status: OcspResponseStatus,
        /// `responseBytes [0] EXPLICIT ResponseBytes OPTIONAL`.
        #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
        pub response_bytes: Option<ResponseBytes>,
    }

    /// `ResponseBytes`.
    #[derive(Clone, Debug, PartialEq, Eq, Sequence)]
    pub struct ResponseBytes {
        /// `responseType`, `id-pkix-ocsp-basic` for us.
        pub response_type: ObjectIdentifier,
        /// `response`: the DER of a `BasicOCSPResponse`.
        pub response: OctetString,
    }

    /// `BasicOCSPResponse`.
    #[derive(Clone, Debug, PartialEq, Eq, Sequence)]
    pub struct BasicOcspResponse {
        /// `tbsResponseData`: what is signed.
        pub tbs_response_data: ResponseData,
        /// `signatureAlgorithm`.
        pub signature_algorithm: AlgorithmIdentifierOwned,
        /// `signature`.
        pub signature: BitString,
        /// `certs [0] EXPLICIT SEQUENCE OF Certificate OPTIONAL`: helps the client verify.
        #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
        pub certs: Option<Vec<Certificate>>,
    }

    /// `ResponseData`.
    #[derive(Clone, Debug, PartialEq, Eq, Sequence)]
    pub struct ResponseData {
        /// `version [0] EXPLICIT Version DEFAULT v1`; `None` is v1.
        #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
        pub version: Option<u8>,
        /// `responderID`.
        pub responder_id: ResponderId,
        /// `producedAt`.
        pub produced_at: GeneralizedTime,
        /// `responses`.
        pub responses: Vec<SingleResponse>,
        /// `responseExtensions [1] EXPLICIT Extensions OPTIONAL`.
        #[asn1(context_specific = "1", tag_mode = "EXPLICIT", optional = "true")]
        pub response_extensions: Option<Extensions>,
    }

    /// `ResponderID`.
    #[derive(Clone, Debug, PartialEq, Eq, Choice)]
    pub enum ResponderId {
        /// `byName [1] Name`.
        #[asn1(context_specific = "1", tag_mode = "EXPLICIT", constructed = "true")]
        ByName(Name),
        /// `byKey [2] KeyHash`: SHA-1 of the responder's subjectPublicKey bits.
        #[asn1(context_specific = "2", tag_mode = "EXPLICIT", constructed = "true")]
        ByKey(OctetString),
    }

    /// `SingleResponse`.
    #[derive(Clone, Debug, PartialEq, Eq, Sequence)]
    pub struct SingleResponse {
        /// `certID`.
        pub cert_id: CertId,
        /// `certStatus`.
        pub cert_status: CertStatus,
        /// `thisUpdate`.
        pub this_update: GeneralizedTime,
        /// `nextUpdate [0] EXPLICIT GeneralizedTime OPTIONAL`.
        #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
        pub next_update: Option<GeneralizedTime>,
        /// `singleExtensions [1] EXPLICIT Extensions OPTIONAL`.
        #[asn1(context_specific = "1", tag_mode = "EXPLICIT", optional = "true")]
        pub single_extensions: Option<Extensions>,
    }

    /// `CertStatus`.
    #[derive(Clone, Debug, PartialEq, Eq, Choice)]
    pub enum CertStatus {
        /// `good [0] IMPLICIT NULL`.
        #[asn1(context_specific = "0", tag_mode = "IMPLICIT")]
        Good(Null),
        /// `revoked [1] IMPLICIT RevokedInfo`.
        #[asn1(context_specific = "1", tag_mode = "IMPLICIT", constructed = "true")]
        Revoked(RevokedInfo),
        /// `unknown [2] IMPLICIT UnknownInfo` (UnknownInfo ::= NULL).
        #[asn1(context_specific = "2", tag_mode = "IMPLICIT")]
        Unknown(Null),
    }

    /// `RevokedInfo`.
    #[derive(Clone, Debug, PartialEq, Eq, Sequence)]
    pub struct RevokedInfo {
        /// `revocationTime`.
        pub revocation_time: GeneralizedTime,
        /// `revocationReason [0] EXPLICIT CRLReason OPTIONAL`.
        #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
        pub revocation_reason: Option<CrlReason>,
    }
}

pub use asn1::OcspResponseStatus;

/// Why an OCSP request or response was refused, or a response could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OcspError {
    /// The bytes are not a well-formed OCSP structure (or not base64 / URL encoding, for GET).
    #[error("OCSP data is malformed: {0}")]
    Malformed(String),
    /// A critical extension we do not process.
    #[error("unsupported critical extension {0}")]
    UnsupportedCriticalExtension(ObjectIdentifier),
    /// A time cannot be encoded.
    #[error(transparent)]
    Time(#[from] TimeError),
    /// A response must answer at least one CertID.
    #[error("a response needs at least one single response")]
    NoResponses,
    /// `nextUpdate` is not after `thisUpdate`.
    #[error("nextUpdate must be after thisUpdate")]
    NextUpdateNotAfterThisUpdate,
    /// A revocation time is after the `thisUpdate` that reports it.
    #[error("revocation time is after thisUpdate")]
    RevokedAfterThisUpdate,
    /// A nonce to echo is empty or longer than [`MAX_NONCE_LEN`].
    #[error("nonce must be 1 to {MAX_NONCE_LEN} octets, got {0}")]
    BadNonceLength(usize),
    /// A delegated responder's certificate is not in the response's `certs`, so no client could verify it.
    #[error("the delegated responder's certificate must be included in certs")]
    ResponderCertMissing,
    /// The key that signed (or is to sign) is not the responder certificate's key.
    #[error("the signing key is not the responder certificate's key")]
    ResponderKeyMismatch,
    /// The response status is not `successful`.
    #[error("OCSP response status is {0:?}")]
    NotSuccessful(OcspResponseStatus),
    /// The response is not an `id-pkix-ocsp-basic` response.
    #[error("response type {0} is not id-pkix-ocsp-basic")]
    NotBasic(ObjectIdentifier),
    /// The issuer's key is not an SM2 key.
    #[error("issuer key: {0}")]
    IssuerKey(SignatureError),
    /// Neither the issuer nor any certificate in `certs` is the responder the response names.
    #[error("the responder named in the response is neither the issuer nor a certificate in the response")]
    UnknownResponder,
    /// The delegated responder certificate was not issued (signed) by the issuer.
    #[error("the delegated responder certificate is not issued by the issuer: {0}")]
    ResponderNotIssuedByIssuer(String),
    /// The responder is neither the issuer nor a certificate with EKU id-kp-OCSPSigning (and, if it
    /// has a keyUsage, digitalSignature).
    #[error("the responder is not authorized to sign OCSP responses: {0}")]
    ResponderNotAuthorized(String),
    /// The delegated responder certificate is not valid at the checked time.
    #[error("the delegated responder certificate is not valid at the checked time")]
    ResponderCertNotValid,
    /// The signature does not verify, or is not SM2-with-SM3.
    #[error("OCSP signature: {0}")]
    BadSignature(SignatureError),
    /// A single response is about a certificate of another issuer (its CertID does not match).
    #[error("a single response's CertID does not name the issuer")]
    CertIdForOtherIssuer,
    /// `thisUpdate` is more than [`MAX_CLOCK_SKEW`] in the future.
    #[error("response is not yet valid (thisUpdate is in the future)")]
    NotYetValid,
    /// `nextUpdate` has passed.
    #[error("response has expired (nextUpdate has passed)")]
    Expired,
    /// The response's nonce is not the one sent.
    #[error("the response's nonce is not the request's")]
    NonceMismatch,
    /// An encoding step failed.
    #[error("DER encoding: {0}")]
    Encoding(String),
}

fn malformed(e: impl std::fmt::Display) -> OcspError {
    OcspError::Malformed(e.to_string())
}

fn enc(e: der::Error) -> OcspError {
    OcspError::Encoding(e.to_string())
}

/// A hash algorithm a CertID may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CertIdHash {
    /// SHA-1, what `openssl ocsp` sends by default.
    Sha1,
    /// SHA-256.
    Sha256,
    /// SM3.
    Sm3,
}

impl CertIdHash {
    /// All supported algorithms.
    pub const ALL: [CertIdHash; 3] = [CertIdHash::Sha1, CertIdHash::Sha256, CertIdHash::Sm3];

    /// The algorithm's OID.
    pub fn oid(self) -> ObjectIdentifier {
        match self {
            CertIdHash::Sha1 => ID_SHA1,
            CertIdHash::Sha256 => ID_SHA256,
            CertIdHash::Sm3 => ID_SM3,
        }
    }

    /// The algorithm for an OID, if supported.
    pub fn from_oid(oid: ObjectIdentifier) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.oid() == oid)
    }

    /// The digest of `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        match self {
            CertIdHash::Sha1 => sha1::Sha1::digest(data).to_vec(),
            CertIdHash::Sha256 => sha2::Sha256::digest(data).to_vec(),
            CertIdHash::Sm3 => sm3::Sm3::digest(data).to_vec(),
        }
    }
}

/// A CertID as a client sent it: which certificate of which issuer it asks about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CertId {
    /// `hashAlgorithm` OID (any: an unsupported one simply matches no issuer).
    pub hash_algorithm: ObjectIdentifier,
    /// Whether `hashAlgorithm` carried explicit NULL parameters (OpenSSL writes them). Kept so that
    /// a response echoes the CertID byte for byte, which is how clients find their answer.
    pub hash_parameters_null: bool,
    /// `issuerNameHash`.
    pub issuer_name_hash: Vec<u8>,
    /// `issuerKeyHash`.
    pub issuer_key_hash: Vec<u8>,
    /// Content octets of the `serialNumber` INTEGER, as sent (it may not be a valid [`CertSerial`]).
    pub serial: Vec<u8>,
}

impl CertId {
    /// The serial, if it is a positive INTEGER of at most 20 octets (the only kind we issue).
    pub fn cert_serial(&self) -> Option<CertSerial> {
        CertSerial::from_der_content(&self.serial)
    }

    /// Reads the ASN.1 form.
    pub fn from_asn1(id: &asn1::CertId) -> Result<Self, OcspError> {
        let hash_parameters_null = match &id.hash_algorithm.parameters {
            None => false,
            Some(p) if p.decode_as::<Null>().is_ok() => true,
            Some(_) => return Err(malformed("CertID hash algorithm has parameters other than NULL")),
        };
        Ok(Self {
            hash_algorithm: id.hash_algorithm.oid,
            hash_parameters_null,
            issuer_name_hash: id.issuer_name_hash.as_bytes().to_vec(),
            issuer_key_hash: id.issuer_key_hash.as_bytes().to_vec(),
            serial: id.serial_number.as_bytes().to_vec(),
        })
    }

    /// The ASN.1 form.
    pub fn to_asn1(&self) -> Result<asn1::CertId, OcspError> {
        let parameters = self.hash_parameters_null.then(|| der::Any::from(Null));
        let serial_number = Int::new(&self.serial).map_err(enc)?;
        if serial_number.as_bytes() != self.serial.as_slice() {
            // Int::new normalises; an echo must be exact, so a non-minimal serial cannot be echoed.
            return Err(OcspError::Encoding("CertID serial is not a minimal INTEGER".into()));
        }
        Ok(asn1::CertId {
            hash_algorithm: AlgorithmIdentifierOwned { oid: self.hash_algorithm, parameters },
            issuer_name_hash: OctetString::new(self.issuer_name_hash.clone()).map_err(enc)?,
            issuer_key_hash: OctetString::new(self.issuer_key_hash.clone()).map_err(enc)?,
            serial_number,
        })
    }
}

/// The CertID hashes of one issuing CA, in every algorithm we accept, to recognise its CertIDs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerHashes {
    // (algorithm, name hash, key hash)
    hashes: Vec<(CertIdHash, Vec<u8>, Vec<u8>)>,
}

impl IssuerHashes {
    /// Hashes of the issuer certificate's subject (DER of the Name) and of its subjectPublicKey
    /// bits (the BIT STRING value without tag, length and unused-bits octet), RFC 6960 §4.1.1.
    pub fn new(issuer: &Certificate) -> Result<Self, OcspError> {
        let tbs = issuer.tbs_certificate();
        let name = tbs.subject().to_der().map_err(enc)?;
        let key = tbs.subject_public_key_info().subject_public_key.raw_bytes();
        // SHA-1 here is only the client's lookup key, compared for equality: no security rests on it.
        let hashes = CertIdHash::ALL.into_iter().map(|h| (h, h.digest(&name), h.digest(key))).collect();
        Ok(Self { hashes })
    }

    /// Whether `id` names this issuer (any serial).
    pub fn matches(&self, id: &CertId) -> bool {
        self.hashes.iter().any(|(h, name, key)| {
            h.oid() == id.hash_algorithm && *name == id.issuer_name_hash && *key == id.issuer_key_hash
        })
    }

    /// A CertID for a certificate of this issuer, with NULL hash parameters as OpenSSL writes them.
    pub fn cert_id(&self, hash: CertIdHash, serial: &CertSerial) -> CertId {
        let (name, key) =
            self.hashes.iter().find(|(h, _, _)| *h == hash).map(|(_, n, k)| (n.clone(), k.clone())).unwrap_or_default();
        CertId {
            hash_algorithm: hash.oid(),
            hash_parameters_null: true,
            issuer_name_hash: name,
            issuer_key_hash: key,
            serial: serial.as_bytes().to_vec(),
        }
    }
}

/// A parsed OCSP request: the certificates asked about and the nonce.
///
/// A request's optional signature is not checked: status is public, so every client gets the
/// same answer (RFC 6960 §4.1.2 makes signing optional).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OcspRequest {
    /// The CertIDs, in request order.
    pub cert_ids: Vec<CertId>,
    /// The nonce value (content of the nonce's OCTET STRING, RFC 8954), if present.
    pub nonce: Option<Vec<u8>>,
    /// Whether the request carried a (not checked) signature.
    pub signed: bool,
}

/// Parses a DER `OCSPRequest` (the body of an RFC 6960 appendix A POST).
pub fn parse_request(der_bytes: &[u8]) -> Result<OcspRequest, OcspError> {
    let req = asn1::OcspRequest::from_der(der_bytes).map_err(malformed)?;
    let tbs = &req.tbs_request;
    if tbs.version.is_some_and(|v| v != 0) {
        return Err(malformed("unsupported OCSP request version"));
    }
    if tbs.request_list.is_empty() {
        return Err(malformed("the request list is empty"));
    }
    let mut cert_ids = Vec::with_capacity(tbs.request_list.len());
    for r in &tbs.request_list {
        if let Some(e) = r.single_request_extensions.iter().flatten().find(|e| e.critical) {
            return Err(OcspError::UnsupportedCriticalExtension(e.extn_id));
        }
        cert_ids.push(CertId::from_asn1(&r.req_cert)?);
    }
    let nonce = nonce_of(tbs.request_extensions.as_deref())?;
    Ok(OcspRequest { cert_ids, nonce, signed: req.optional_signature.is_some() })
}

/// Reads the nonce from extensions and refuses unknown critical ones.
fn nonce_of(exts: Option<&[Extension]>) -> Result<Option<Vec<u8>>, OcspError> {
    let mut nonce = None;
    for e in exts.unwrap_or_default() {
        if e.extn_id == ID_PKIX_OCSP_NONCE {
            if nonce.is_some() {
                return Err(malformed("two nonce extensions"));
            }
            let value = OctetString::from_der(e.extn_value.as_bytes())
                .map_err(|_| malformed("nonce is not an OCTET STRING (RFC 8954)"))?;
            let len = value.as_bytes().len();
            if len == 0 || len > MAX_NONCE_LEN {
                return Err(malformed(format!("nonce length {len} is outside 1..={MAX_NONCE_LEN}")));
            }
            nonce = Some(value.as_bytes().to_vec());
        } else if e.critical {
            return Err(OcspError::UnsupportedCriticalExtension(e.extn_id));
        }
    }
    Ok(nonce)
}

/// Parses the last path segment of an RFC 6960 appendix A GET: the URL-encoded base64 of the DER
/// request. Percent escapes (`%2B`, `%2F`, `%3D`, …) are decoded; the standard and the URL-safe
/// base64 alphabets are both accepted, with or without padding.
pub fn parse_get_path(path_segment: &str) -> Result<OcspRequest, OcspError> {
    let b64 = percent_decode(path_segment.trim_start_matches('/'))?;
    let url_safe = b64.iter().any(|c| *c == b'-' || *c == b'_');
    let config = GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let alphabet = if url_safe { &base64::alphabet::URL_SAFE } else { &base64::alphabet::STANDARD };
    let der_bytes =
        GeneralPurpose::new(alphabet, config).decode(&b64).map_err(|e| malformed(format!("base64: {e}")))?;
    parse_request(&der_bytes)
}

fn percent_decode(s: &str) -> Result<Vec<u8>, OcspError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(|| malformed("truncated percent escape"))?;
            let hex = std::str::from_utf8(hex).map_err(|_| malformed("bad percent escape"))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| malformed("bad percent escape"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Builds a DER `OCSPRequest` (unsigned) for `cert_ids`, with a nonce if given: what a relying
/// party such as `cactl verify --ocsp` sends.
pub fn build_request(cert_ids: &[CertId], nonce: Option<&[u8]>) -> Result<Vec<u8>, OcspError> {
    if cert_ids.is_empty() {
        return Err(malformed("the request list is empty"));
    }
    let request_list = cert_ids
        .iter()
        .map(|id| Ok(asn1::Request { req_cert: id.to_asn1()?, single_request_extensions: None }))
        .collect::<Result<Vec<_>, OcspError>>()?;
    let req = asn1::OcspRequest {
        tbs_request: asn1::TbsRequest {
            version: None,
            requestor_name: None,
            request_list,
            request_extensions: nonce.map(|n| nonce_ext(n).map(|e| vec![e])).transpose()?,
        },
        optional_signature: None,
    };
    req.to_der().map_err(enc)
}

fn nonce_ext(nonce: &[u8]) -> Result<Extension, OcspError> {
    if nonce.is_empty() || nonce.len() > MAX_NONCE_LEN {
        return Err(OcspError::BadNonceLength(nonce.len()));
    }
    let value = OctetString::new(nonce).map_err(enc)?.to_der().map_err(enc)?;
    Ok(Extension { extn_id: ID_PKIX_OCSP_NONCE, critical: false, extn_value: OctetString::new(value).map_err(enc)? })
}

/// What a certificate's status is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertStatus {
    /// Not revoked (RFC 6960 §2.2: at least, not known to be revoked).
    Good,
    /// Revoked.
    Revoked {
        /// When.
        at: SystemTime,
        /// Why (`None` or `Unspecified` writes no reason, as for CRL entries).
        reason: Option<CrlReason>,
    },
    /// The responder does not know the certificate.
    Unknown,
}

/// One answer: the status of one CertID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SingleResponse {
    /// The CertID, echoed exactly as the request sent it.
    pub cert_id: CertId,
    /// The status.
    pub status: CertStatus,
    /// When the status was known to be correct.
    pub this_update: SystemTime,
    /// When newer information will be available; `None` means always (RFC 6960 §4.2.2.1).
    pub next_update: Option<SystemTime>,
}

/// What a response says, apart from the signature.
#[derive(Clone, Debug)]
pub struct ResponseRequest<'a> {
    /// The certificate whose key signs: the issuing CA itself, or a delegated OCSP signer it
    /// issued (EKU id-kp-OCSPSigning). Named `byName` in `responderID`.
    pub responder: &'a Certificate,
    /// `producedAt`: when the response is signed.
    pub produced_at: SystemTime,
    /// The answers, at least one.
    pub responses: &'a [SingleResponse],
    /// The request's nonce to echo.
    pub nonce: Option<&'a [u8]>,
    /// Certificates to include for the client (a delegated responder's certificate must be here).
    pub certs: &'a [Certificate],
}

/// A checked `ResponseData`, ready to sign.
#[derive(Clone, Debug)]
pub struct LintedResponse {
    der: Vec<u8>,
    responder_key: Sm2PublicKey,
    /// DER of `certs [0] EXPLICIT SEQUENCE OF Certificate`, when any.
    certs_der: Option<std::sync::Arc<[u8]>>,
    /// [`PreparedResponder::with_signer_id`]'s Z, when set.
    z: Option<std::sync::Arc<(SignerId, [u8; 32])>>,
}

impl LintedResponse {
    /// The DER bytes of `ResponseData` to sign.
    pub fn to_be_signed(&self) -> &[u8] {
        &self.der
    }

    /// Wraps a DER SM2 signature into a full DER `OCSPResponse` (status successful, type
    /// id-pkix-ocsp-basic), after checking `responder_key` is the responder certificate's key and
    /// the signature verifies with it: a misconfigured HSM must not publish a bad response.
    pub fn assemble(
        self,
        signature_der: &[u8],
        responder_key: &Sm2PublicKey,
        signer_id: &SignerId,
    ) -> Result<Vec<u8>, OcspError> {
        if *responder_key != self.responder_key {
            return Err(OcspError::ResponderKeyMismatch);
        }
        let verified = match &self.z {
            Some(z) if z.0 == *signer_id => verifies_with_z(responder_key, &z.1, &self.der, signature_der),
            _ => false,
        };
        // A failure (or no Z prepared) takes the full path, whose error says why.
        if !verified {
            responder_key.verify(signer_id, &self.der, signature_der).map_err(OcspError::BadSignature)?;
        }
        wrap_basic(&self.der, signature_der, self.certs_der.as_deref())
    }
}

/// Whether `signature_der` (canonical DER) verifies over `msg` with `key`, whose Z is `z`: what
/// [`Sm2PublicKey::verify`] checks, without hashing Z again per response.
fn verifies_with_z(key: &Sm2PublicKey, z: &[u8; 32], msg: &[u8], signature_der: &[u8]) -> bool {
    let Ok(sig) = sm2_dsa::Signature::from_der(signature_der) else { return false };
    sig.to_der().as_bytes() == signature_der
        && key.as_verifying_key().verify_digest(&sm2_dsa::digest(z, msg), &sig).is_ok()
}

/// `OCSPResponse { successful, { id-pkix-ocsp-basic, BasicOCSPResponse } }` around signed
/// `ResponseData`, written directly ([`direct`]): every byte but the signature is ours.
fn wrap_basic(tbs_der: &[u8], signature_der: &[u8], certs_der: Option<&[u8]>) -> Result<Vec<u8>, OcspError> {
    use direct::{header, header_len};
    let certs = certs_der.unwrap_or_default();
    let bits = 1 + signature_der.len();
    let basic = tbs_der.len() + direct::SM2_WITH_SM3.len() + header_len(bits)? + bits + certs.len();
    let octets = header_len(basic)? + basic;
    let bytes = direct::OCSP_BASIC.len() + header_len(octets)? + octets;
    let explicit = header_len(bytes)? + bytes;
    let response = direct::SUCCESSFUL.len() + header_len(explicit)? + explicit;
    let mut out = Vec::with_capacity(header_len(response)? + response);
    header(&mut out, 0x30, response)?;
    out.extend_from_slice(&direct::SUCCESSFUL);
    header(&mut out, 0xa0, explicit)?;
    header(&mut out, 0x30, bytes)?;
    out.extend_from_slice(&direct::OCSP_BASIC);
    header(&mut out, 0x04, octets)?;
    header(&mut out, 0x30, basic)?;
    out.extend_from_slice(tbs_der);
    out.extend_from_slice(&direct::SM2_WITH_SM3);
    header(&mut out, 0x03, bits)?;
    out.push(0);
    out.extend_from_slice(signature_der);
    out.extend_from_slice(certs);
    Ok(out)
}

/// [`wrap_basic`] with the `der` crate: what the direct writing must equal.
#[cfg(test)]
fn wrap_basic_reference(tbs_der: &[u8], signature_der: &[u8], certs_der: Option<&[u8]>) -> Result<Vec<u8>, OcspError> {
    #[derive(der::Sequence)]
    struct Basic<'a> {
        tbs: AnyRef<'a>,
        algorithm: AlgorithmIdentifierOwned,
        signature: BitString,
        /// Already `[0] EXPLICIT SEQUENCE OF Certificate`, tag included.
        certs: Option<AnyRef<'a>>,
    }
    let basic = Basic {
        tbs: AnyRef::from_der(tbs_der).map_err(enc)?,
        algorithm: crate::alg::sm2_with_sm3(),
        signature: BitString::from_bytes(signature_der).map_err(enc)?,
        certs: certs_der.map(AnyRef::from_der).transpose().map_err(enc)?,
    };
    let resp = asn1::OcspResponse {
        response_status: OcspResponseStatus::Successful,
        response_bytes: Some(asn1::ResponseBytes {
            response_type: ID_PKIX_OCSP_BASIC,
            response: OctetString::new(basic.to_der().map_err(enc)?).map_err(enc)?,
        }),
    };
    resp.to_der().map_err(enc)
}

fn gtime(t: SystemTime) -> Result<GeneralizedTime, OcspError> {
    let t = whole_seconds(t);
    GeneralizedTime::from_system_time(t).map_err(|_| OcspError::Time(TimeError(t)))
}

fn is_ca(cert: &Certificate) -> bool {
    matches!(cert.tbs_certificate().get_extension::<BasicConstraints>(), Ok(Some((_, bc))) if bc.ca)
}

/// Whether a delegated responder certificate may sign OCSP responses: EKU id-kp-OCSPSigning and,
/// if it has a keyUsage, digitalSignature.
fn check_ocsp_signing(cert: &Certificate) -> Result<(), OcspError> {
    let tbs = cert.tbs_certificate();
    let eku = tbs.get_extension::<ExtendedKeyUsage>().map_err(malformed)?;
    if !eku.is_some_and(|(_, eku)| eku.0.contains(&ID_KP_OCSP_SIGNING)) {
        return Err(OcspError::ResponderNotAuthorized("no extended key usage id-kp-OCSPSigning".into()));
    }
    if let Some((_, ku)) = tbs.get_extension::<KeyUsage>().map_err(malformed)?
        && !ku.0.contains(KeyUsages::DigitalSignature)
    {
        return Err(OcspError::ResponderNotAuthorized("key usage lacks digitalSignature".into()));
    }
    Ok(())
}

/// Builds and checks the `ResponseData` of a response.
pub fn build_response_tbs(req: &ResponseRequest<'_>) -> Result<LintedResponse, OcspError> {
    PreparedResponder::new(req.responder, req.certs)?.build(req.produced_at, req.responses, req.nonce)
}

/// A responder certificate and the certificates its responses carry, checked and encoded once:
/// a responder that signs many responses ([`PreparedResponder::build`]) neither re-checks nor
/// re-encodes them per response.
#[derive(Clone, Debug)]
pub struct PreparedResponder {
    responder_key: Sm2PublicKey,
    /// DER of `responderID` (`byName [1]`).
    responder_id: Vec<u8>,
    certs_der: Option<std::sync::Arc<[u8]>>,
    z: Option<std::sync::Arc<(SignerId, [u8; 32])>>,
}

impl PreparedResponder {
    /// Checks `responder` (the issuing CA, or a delegated responder with EKU OCSPSigning, which
    /// must then be among `certs`) and encodes what every response repeats.
    pub fn new(responder: &Certificate, certs: &[Certificate]) -> Result<Self, OcspError> {
        let responder_key = Sm2PublicKey::from_spki(responder.tbs_certificate().subject_public_key_info())
            .map_err(OcspError::IssuerKey)?;
        if !is_ca(responder) {
            check_ocsp_signing(responder)?;
            if !certs.contains(responder) {
                return Err(OcspError::ResponderCertMissing);
            }
        }
        let responder_id =
            asn1::ResponderId::ByName(responder.tbs_certificate().subject().clone()).to_der().map_err(enc)?;
        let certs_der = match certs {
            [] => None,
            _ => {
                let list = certs.to_vec();
                let field = der::asn1::ContextSpecificRef {
                    tag_number: der::TagNumber(0),
                    tag_mode: der::TagMode::Explicit,
                    value: &list,
                };
                Some(std::sync::Arc::from(field.to_der().map_err(enc)?))
            }
        };
        Ok(Self { responder_key, responder_id, certs_der, z: None })
    }

    /// Also computes, once, the Z of the responder key for `signer_id`, so that checking each
    /// response's signature ([`LintedResponse::assemble`] with that ID) does not hash it again.
    pub fn with_signer_id(self, signer_id: &SignerId) -> Result<Self, OcspError> {
        let z = sm2_dsa::z(signer_id.as_str().as_bytes(), self.responder_key.as_verifying_key())
            .map_err(|_| OcspError::BadSignature(SignatureError::BadSignerId { len: signer_id.as_str().len() }))?;
        Ok(Self { z: Some(std::sync::Arc::new((signer_id.clone(), z))), ..self })
    }

    /// Builds and checks the `ResponseData` of a response by this responder.
    ///
    /// Written directly ([`direct`]): a responder builds one per fresh answer, and the `der`
    /// crate's owned types cost several times the bytes (unit tests check both give the same).
    pub fn build(
        &self,
        produced_at: SystemTime,
        answers: &[SingleResponse],
        nonce: Option<&[u8]>,
    ) -> Result<LintedResponse, OcspError> {
        use direct::tlv;
        if answers.is_empty() {
            return Err(OcspError::NoResponses);
        }
        let mut responses = Vec::with_capacity(answers.len() * 128);
        for r in answers {
            let this_update = checked_this_update(r)?;
            let mut single = Vec::with_capacity(128);
            direct::cert_id(&mut single, &r.cert_id)?;
            match r.status {
                CertStatus::Good => single.extend_from_slice(&[0x80, 0x00]),
                CertStatus::Unknown => single.extend_from_slice(&[0x82, 0x00]),
                CertStatus::Revoked { at, reason } => {
                    let mut info = Vec::with_capacity(24);
                    direct::time(&mut info, at)?;
                    if let Some(reason) = reason.filter(|r| *r != CrlReason::Unspecified) {
                        tlv(&mut info, 0xa0, &reason.to_der().map_err(enc)?)?;
                    }
                    tlv(&mut single, 0xa1, &info)?;
                }
            }
            direct::time(&mut single, this_update)?;
            if let Some(next) = r.next_update {
                let mut t = Vec::with_capacity(17);
                direct::time(&mut t, next)?;
                tlv(&mut single, 0xa0, &t)?;
            }
            tlv(&mut responses, 0x30, &single)?;
        }
        // `ResponseData` (version v1, absent) with the responder ID encoded once.
        let mut data = Vec::with_capacity(self.responder_id.len() + responses.len() + 64);
        data.extend_from_slice(&self.responder_id);
        direct::time(&mut data, produced_at)?;
        tlv(&mut data, 0x30, &responses)?;
        if let Some(n) = nonce {
            if n.is_empty() || n.len() > MAX_NONCE_LEN {
                return Err(OcspError::BadNonceLength(n.len()));
            }
            // [1] EXPLICIT Extensions { Extension { id-pkix-ocsp-nonce, OCTET STRING { OCTET STRING n } } }
            let mut value = Vec::with_capacity(n.len() + 2);
            tlv(&mut value, 0x04, n)?;
            let mut ext = Vec::with_capacity(n.len() + 16);
            tlv(&mut ext, 0x06, ID_PKIX_OCSP_NONCE.as_bytes())?;
            tlv(&mut ext, 0x04, &value)?;
            let mut exts = Vec::with_capacity(n.len() + 18);
            tlv(&mut exts, 0x30, &ext)?;
            let mut list = Vec::with_capacity(n.len() + 20);
            tlv(&mut list, 0x30, &exts)?;
            tlv(&mut data, 0xa1, &list)?;
        }
        let mut der = Vec::with_capacity(data.len() + 4);
        tlv(&mut der, 0x30, &data)?;
        Ok(LintedResponse {
            der,
            responder_key: self.responder_key.clone(),
            certs_der: self.certs_der.clone(),
            z: self.z.clone(),
        })
    }

    /// [`PreparedResponder::build`] with the `der` crate: what the direct writing must equal.
    #[cfg(test)]
    fn build_reference(
        &self,
        produced_at: SystemTime,
        answers: &[SingleResponse],
        nonce: Option<&[u8]>,
    ) -> Result<LintedResponse, OcspError> {
        if answers.is_empty() {
            return Err(OcspError::NoResponses);
        }
        let mut responses = Vec::with_capacity(answers.len());
        for r in answers {
            let this_update = checked_this_update(r)?;
            let cert_status = match r.status {
                CertStatus::Good => asn1::CertStatus::Good(Null),
                CertStatus::Unknown => asn1::CertStatus::Unknown(Null),
                CertStatus::Revoked { at, reason } => asn1::CertStatus::Revoked(asn1::RevokedInfo {
                    revocation_time: gtime(at)?,
                    revocation_reason: reason.filter(|r| *r != CrlReason::Unspecified),
                }),
            };
            responses.push(asn1::SingleResponse {
                cert_id: r.cert_id.to_asn1()?,
                cert_status,
                this_update: gtime(this_update)?,
                next_update: r.next_update.map(gtime).transpose()?,
                single_extensions: None,
            });
        }
        // `ResponseData` (version v1, absent) with the responder ID encoded once.
        #[derive(der::Sequence)]
        struct Data<'a> {
            responder_id: AnyRef<'a>,
            produced_at: GeneralizedTime,
            responses: Vec<asn1::SingleResponse>,
            #[asn1(context_specific = "1", tag_mode = "EXPLICIT", optional = "true")]
            response_extensions: Option<Vec<Extension>>,
        }
        let data = Data {
            responder_id: AnyRef::from_der(&self.responder_id).map_err(enc)?,
            produced_at: gtime(produced_at)?,
            responses,
            response_extensions: nonce.map(|n| nonce_ext(n).map(|e| vec![e])).transpose()?,
        };
        let der = data.to_der().map_err(enc)?;
        Ok(LintedResponse {
            der,
            responder_key: self.responder_key.clone(),
            certs_der: self.certs_der.clone(),
            z: self.z.clone(),
        })
    }
}

/// The answer's thisUpdate in whole seconds, once it is known to come before its nextUpdate
/// and not before its revocation: what both encoders of [`PreparedResponder`] check first.
fn checked_this_update(r: &SingleResponse) -> Result<SystemTime, OcspError> {
    let this_update = whole_seconds(r.this_update);
    if r.next_update.is_some_and(|next| whole_seconds(next) <= this_update) {
        return Err(OcspError::NextUpdateNotAfterThisUpdate);
    }
    if let CertStatus::Revoked { at, .. } = r.status
        && whole_seconds(at) > this_update
    {
        return Err(OcspError::RevokedAfterThisUpdate);
    }
    Ok(this_update)
}

/// An unsigned error response (`responseBytes` absent) with `status`: malformedRequest,
/// internalError, tryLater, sigRequired or unauthorized.
///
/// `Successful` is written as `internalError`: a successful response must carry a signed body,
/// so asking for one here is a caller bug, and claiming success without a body would mislead clients.
pub fn error_response(status: OcspResponseStatus) -> Vec<u8> {
    let status = match status {
        OcspResponseStatus::Successful => OcspResponseStatus::InternalError,
        s => s,
    };
    // SEQUENCE { ENUMERATED status }: fixed bytes, nothing that can fail to encode.
    vec![0x30, 0x03, 0x0a, 0x01, status as u8]
}

/// Who signed a verified response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Responder {
    /// The issuing CA itself.
    Issuer,
    /// A delegated responder certificate issued by the CA.
    Delegated(Box<Certificate>),
}

/// What a verified response says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedResponse {
    /// `producedAt`.
    pub produced_at: SystemTime,
    /// Who signed it.
    pub responder: Responder,
    /// The answers.
    pub responses: Vec<SingleResponse>,
    /// The nonce value, if the response has one.
    pub nonce: Option<Vec<u8>>,
}

impl VerifiedResponse {
    /// The answer about the certificate with `serial`, if any.
    pub fn status_of(&self, serial: &CertSerial) -> Option<&SingleResponse> {
        self.responses.iter().find(|r| r.cert_id.serial == serial.as_bytes())
    }

    /// Checks the response echoes the nonce that was sent (replay protection, RFC 8954).
    pub fn check_nonce(&self, sent: &[u8]) -> Result<(), OcspError> {
        if self.nonce.as_deref() == Some(sent) { Ok(()) } else { Err(OcspError::NonceMismatch) }
    }
}

/// `BasicOCSPResponse` with the signed bytes kept as received.
#[derive(der::Sequence)]
struct RawBasic<'a> {
    tbs: AnyRef<'a>,
    signature_algorithm: AlgorithmIdentifierOwned,
    signature: BitString,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    certs: Option<Vec<Certificate>>,
}

/// Parses a DER `OCSPResponse` and checks it as a relying party would for certificates of
/// `issuer`: status successful, a basic response, SM2-with-SM3 signed (with `trusted_signer_id`)
/// by the issuer or by a delegated responder in `certs` that the issuer signed and that carries
/// EKU id-kp-OCSPSigning; every CertID names `issuer`; `thisUpdate` not more than
/// [`MAX_CLOCK_SKEW`] after `now`, `nextUpdate` (if any) not before it.
///
/// The caller compares the nonce ([`VerifiedResponse::check_nonce`]) and picks its certificate's
/// answer ([`VerifiedResponse::status_of`]).
pub fn verify_response(
    der_bytes: &[u8],
    issuer: &Certificate,
    trusted_signer_id: &SignerId,
    now: SystemTime,
) -> Result<VerifiedResponse, OcspError> {
    let resp = asn1::OcspResponse::from_der(der_bytes).map_err(malformed)?;
    if resp.response_status != OcspResponseStatus::Successful {
        return Err(OcspError::NotSuccessful(resp.response_status));
    }
    let bytes = resp.response_bytes.ok_or_else(|| malformed("successful response without responseBytes"))?;
    if bytes.response_type != ID_PKIX_OCSP_BASIC {
        return Err(OcspError::NotBasic(bytes.response_type));
    }
    let basic = RawBasic::from_der(bytes.response.as_bytes()).map_err(malformed)?;
    let tbs_der = basic.tbs.to_der().map_err(malformed)?;
    let data = asn1::ResponseData::from_der(&tbs_der).map_err(malformed)?;
    if data.version.is_some_and(|v| v != 0) {
        return Err(malformed("unsupported response version"));
    }
    check_sm2_with_sm3(&basic.signature_algorithm).map_err(OcspError::BadSignature)?;

    let issuer_tbs = issuer.tbs_certificate();
    let issuer_key = Sm2PublicKey::from_spki(issuer_tbs.subject_public_key_info()).map_err(OcspError::IssuerKey)?;
    let certs = basic.certs.unwrap_or_default();
    let names = |c: &Certificate| match &data.responder_id {
        asn1::ResponderId::ByName(name) => c.tbs_certificate().subject() == name,
        // byKey is SHA-1 of the key bits (RFC 6960 §4.2.2.3): only used to pick a candidate; the
        // signature check below is what is relied on.
        asn1::ResponderId::ByKey(hash) => {
            CertIdHash::Sha1.digest(c.tbs_certificate().subject_public_key_info().subject_public_key.raw_bytes())
                == hash.as_bytes()
        }
    };
    let (responder, key) = if names(issuer) {
        (Responder::Issuer, issuer_key)
    } else {
        let cert = certs.iter().find(|c| names(c)).ok_or(OcspError::UnknownResponder)?;
        let key = check_delegated(cert, issuer, &issuer_key, trusted_signer_id, now)?;
        (Responder::Delegated(Box::new(cert.clone())), key)
    };
    let sig = basic.signature.as_bytes().ok_or(OcspError::BadSignature(SignatureError::MalformedSignature))?;
    key.verify(trusted_signer_id, &tbs_der, sig).map_err(OcspError::BadSignature)?;

    let hashes = IssuerHashes::new(issuer)?;
    let mut responses = Vec::with_capacity(data.responses.len());
    for r in &data.responses {
        if let Some(e) = r.single_extensions.iter().flatten().find(|e| e.critical) {
            return Err(OcspError::UnsupportedCriticalExtension(e.extn_id));
        }
        let cert_id = CertId::from_asn1(&r.cert_id)?;
        if !hashes.matches(&cert_id) {
            return Err(OcspError::CertIdForOtherIssuer);
        }
        let this_update = r.this_update.to_system_time();
        let next_update = r.next_update.map(|t| t.to_system_time());
        if this_update > now.checked_add(MAX_CLOCK_SKEW).unwrap_or(now) {
            return Err(OcspError::NotYetValid);
        }
        if next_update.is_some_and(|n| n < now) {
            return Err(OcspError::Expired);
        }
        let status = match &r.cert_status {
            asn1::CertStatus::Good(_) => CertStatus::Good,
            asn1::CertStatus::Unknown(_) => CertStatus::Unknown,
            asn1::CertStatus::Revoked(info) => {
                CertStatus::Revoked { at: info.revocation_time.to_system_time(), reason: info.revocation_reason }
            }
        };
        responses.push(SingleResponse { cert_id, status, this_update, next_update });
    }
    Ok(VerifiedResponse {
        produced_at: data.produced_at.to_system_time(),
        responder,
        responses,
        nonce: nonce_of(data.response_extensions.as_deref())?,
    })
}

/// Checks a delegated responder certificate against its issuer and returns its key.
fn check_delegated(
    cert: &Certificate,
    issuer: &Certificate,
    issuer_key: &Sm2PublicKey,
    signer_id: &SignerId,
    now: SystemTime,
) -> Result<Sm2PublicKey, OcspError> {
    let tbs = cert.tbs_certificate();
    if tbs.issuer() != issuer.tbs_certificate().subject() {
        return Err(OcspError::ResponderNotIssuedByIssuer(format!("its issuer is {}", tbs.issuer())));
    }
    check_sm2_with_sm3(cert.signature_algorithm()).map_err(|e| OcspError::ResponderNotIssuedByIssuer(e.to_string()))?;
    let tbs_der = tbs.to_der().map_err(malformed)?;
    let sig =
        cert.signature().as_bytes().ok_or_else(|| OcspError::ResponderNotIssuedByIssuer("no signature".into()))?;
    issuer_key
        .verify(signer_id, &tbs_der, sig)
        .map_err(|e| OcspError::ResponderNotIssuedByIssuer(format!("signature: {e}")))?;
    check_ocsp_signing(cert)?;
    let validity = tbs.validity();
    if now < from_x509(&validity.not_before) || now > from_x509(&validity.not_after) {
        return Err(OcspError::ResponderCertNotValid);
    }
    Sm2PublicKey::from_spki(tbs.subject_public_key_info())
        .map_err(|e| OcspError::ResponderNotAuthorized(format!("key: {e}")))
}

/// DER written byte by byte for the structures a responder makes per answer (definite lengths,
/// minimal length octets, as DER requires).
mod direct {
    use super::{CertId, OcspError, gtime};
    use der::Encode;

    /// `responseStatus successful`.
    pub(super) const SUCCESSFUL: [u8; 3] = [0x0a, 0x01, 0x00];
    /// `responseType id-pkix-ocsp-basic` (1.3.6.1.5.5.7.48.1.1).
    pub(super) const OCSP_BASIC: [u8; 11] = [0x06, 0x09, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];
    /// `AlgorithmIdentifier { SM2-with-SM3 (1.2.156.10197.1.501) }`, parameters absent.
    pub(super) const SM2_WITH_SM3: [u8; 12] = [0x30, 0x0a, 0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x83, 0x75];

    /// The length octets of `len` (up to 2^24 - 1: far beyond any OCSP structure).
    fn length(len: usize) -> Result<([u8; 4], usize), OcspError> {
        // Truncations are intended: each byte takes its own part of `len`.
        #[allow(clippy::cast_possible_truncation)]
        let (b2, b1, b0) = ((len >> 16) as u8, (len >> 8) as u8, len as u8);
        match len {
            0..=0x7f => Ok(([b0, 0, 0, 0], 1)),
            0x80..=0xff => Ok(([0x81, b0, 0, 0], 2)),
            0x100..=0xffff => Ok(([0x82, b1, b0, 0], 3)),
            0x1_0000..=0xff_ffff => Ok(([0x83, b2, b1, b0], 4)),
            _ => Err(OcspError::Encoding(format!("{len} octets is too long"))),
        }
    }

    /// Octets of a tag and the length octets of `len`.
    pub(super) fn header_len(len: usize) -> Result<usize, OcspError> {
        Ok(1 + length(len)?.1)
    }

    /// Writes a tag and the length octets of `len`.
    pub(super) fn header(out: &mut Vec<u8>, tag: u8, len: usize) -> Result<(), OcspError> {
        let (octets, n) = length(len)?;
        out.push(tag);
        out.extend_from_slice(&octets[..n]);
        Ok(())
    }

    /// Writes `tag`, the length and `content`.
    pub(super) fn tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) -> Result<(), OcspError> {
        header(out, tag, content.len())?;
        out.extend_from_slice(content);
        Ok(())
    }

    /// A GeneralizedTime of `t` in whole seconds.
    pub(super) fn time(out: &mut Vec<u8>, t: std::time::SystemTime) -> Result<(), OcspError> {
        let mut buf = [0u8; 17];
        out.extend_from_slice(gtime(t)?.encode_to_slice(&mut buf).map_err(super::enc)?);
        Ok(())
    }

    /// A `CertID`, echoed as the client sent it.
    pub(super) fn cert_id(out: &mut Vec<u8>, id: &CertId) -> Result<(), OcspError> {
        // As `der::asn1::Int::new` reads it: a leading 0xFF before a byte with its top bit set is
        // redundant, so the echo would not be the client's bytes.
        if let [0xff, next, ..] = id.serial.as_slice()
            && next & 0x80 != 0
        {
            return Err(OcspError::Encoding("CertID serial is not a minimal INTEGER".into()));
        }
        let mut algorithm = Vec::with_capacity(16);
        tlv(&mut algorithm, 0x06, id.hash_algorithm.as_bytes())?;
        if id.hash_parameters_null {
            algorithm.extend_from_slice(&[0x05, 0x00]);
        }
        let mut content = Vec::with_capacity(
            algorithm.len() + id.issuer_name_hash.len() + id.issuer_key_hash.len() + id.serial.len() + 12,
        );
        tlv(&mut content, 0x30, &algorithm)?;
        tlv(&mut content, 0x04, &id.issuer_name_hash)?;
        tlv(&mut content, 0x04, &id.issuer_key_hash)?;
        tlv(&mut content, 0x02, &id.serial)?;
        tlv(out, 0x30, &content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_and_base64_variants_decode_alike() {
        assert_eq!(percent_decode("a%2Bb%2fc%3D").expect("ok"), b"a+b/c=");
        assert!(percent_decode("%2").is_err());
        assert!(percent_decode("%zz").is_err());
    }

    /// The direct writing gives the `der` crate's bytes: every status and reason, nonces of every
    /// length, CertIDs of each hash with and without NULL parameters, serials of every shape
    /// (empty, leading 0x00 and 0xFF, long), several answers, and certificates or none.
    #[test]
    fn direct_der_equals_the_der_crate() {
        use std::time::UNIX_EPOCH;
        let key = sm2_dsa::SigningKey::generate().expect("key");
        let responder_key = Sm2PublicKey::from_sec1(&key.verifying_key().to_sec1_uncompressed()).expect("point");
        // byName of an empty Name; certs: [0] { SEQUENCE OF (empty) } — any TLVs do here.
        let without =
            PreparedResponder { responder_key, responder_id: vec![0xa1, 0x02, 0x30, 0x00], certs_der: None, z: None };
        let with = PreparedResponder {
            certs_der: Some(std::sync::Arc::from(&[0xa0, 0x02, 0x30, 0x00][..])),
            ..without.clone()
        };
        let prepared = [without, with];
        let now = UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let reasons = [
            None,
            Some(CrlReason::Unspecified),
            Some(CrlReason::KeyCompromise),
            Some(CrlReason::Superseded),
            Some(CrlReason::AaCompromise),
        ];
        let mut statuses = vec![CertStatus::Good, CertStatus::Unknown];
        statuses
            .extend(reasons.iter().map(|&reason| CertStatus::Revoked { at: now - Duration::from_secs(99), reason }));
        let serials: [&[u8]; 7] = [&[], &[0], &[1], &[0x00, 0x80], &[0xff, 0x7f], &[0x7f; 20], &[0x42; 130]];
        let mut cases = 0;
        for (i, &serial) in serials.iter().enumerate() {
            for (j, hash) in [ID_SHA1, ID_SHA256, ID_SM3].into_iter().enumerate() {
                let id = CertId {
                    hash_algorithm: hash,
                    hash_parameters_null: (i + j) % 2 == 0,
                    issuer_name_hash: vec![0x11; 20 + 6 * j],
                    issuer_key_hash: vec![0x22; 20 + 6 * j],
                    serial: serial.to_vec(),
                };
                for (k, &status) in statuses.iter().enumerate() {
                    let next = (k % 3 != 0).then(|| now + Duration::from_secs(3600));
                    let one = SingleResponse { cert_id: id.clone(), status, this_update: now, next_update: next };
                    let two = [one.clone(), SingleResponse { status: CertStatus::Good, ..one.clone() }];
                    for answers in [std::slice::from_ref(&one), &two[..]] {
                        for nonce_len in [None, Some(1), Some(16), Some(32)] {
                            let nonce = nonce_len.map(|n| vec![0xa5; n]);
                            let p = &prepared[cases % 2];
                            let direct = p.build(now, answers, nonce.as_deref()).expect("direct");
                            let reference = p.build_reference(now, answers, nonce.as_deref()).expect("reference");
                            assert_eq!(
                                direct.der, reference.der,
                                "serial {serial:02x?}, {status:?}, nonce {nonce_len:?}"
                            );
                            let sig = [0x30, 0x03, 0x02, 0x01, 0x01];
                            assert_eq!(
                                wrap_basic(&direct.der, &sig, direct.certs_der.as_deref()),
                                wrap_basic_reference(&direct.der, &sig, direct.certs_der.as_deref()),
                            );
                            cases += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 7 * 3 * 7 * 2 * 4);
        // A long signature (length octets 0x81) and the refusals, as the reference refuses.
        let id = CertId {
            hash_algorithm: ID_SHA1,
            hash_parameters_null: true,
            issuer_name_hash: vec![1; 20],
            issuer_key_hash: vec![2; 20],
            serial: vec![0xff, 0x80],
        };
        let one = [SingleResponse { cert_id: id, status: CertStatus::Good, this_update: now, next_update: None }];
        assert!(matches!(prepared[0].build(now, &one, None), Err(OcspError::Encoding(_))));
        assert!(prepared[0].build_reference(now, &one, None).is_err());
        for bad in [&[][..], &[7; 33][..]] {
            let one =
                [SingleResponse { cert_id: CertId { serial: vec![1], ..one[0].cert_id.clone() }, ..one[0].clone() }];
            assert_eq!(prepared[0].build(now, &one, Some(bad)).err(), Some(OcspError::BadNonceLength(bad.len())));
        }
        let long_sig = [0x5a; 200];
        assert_eq!(wrap_basic(&[0x30, 0x00], &long_sig, None), wrap_basic_reference(&[0x30, 0x00], &long_sig, None));
        assert_eq!(direct::SM2_WITH_SM3.as_slice(), crate::alg::sm2_with_sm3().to_der().expect("der").as_slice());
    }

    #[test]
    fn error_responses_are_fixed_bytes() {
        for s in [
            OcspResponseStatus::MalformedRequest,
            OcspResponseStatus::InternalError,
            OcspResponseStatus::TryLater,
            OcspResponseStatus::SigRequired,
            OcspResponseStatus::Unauthorized,
        ] {
            let der = error_response(s);
            let parsed = asn1::OcspResponse::from_der(&der).expect("decodes");
            assert_eq!(parsed, asn1::OcspResponse { response_status: s, response_bytes: None });
        }
        assert_eq!(error_response(OcspResponseStatus::Successful), error_response(OcspResponseStatus::InternalError));
    }
}
