//! X.509 v2 CRLs (RFC 5280 §5): full and delta, signed by the issuing CA.
//!
//! Signing only; serving and scheduling live in `ca-server`. Like certificates, the bytes to sign
//! come only from a checked [`LintedCrl`], and a returned signature is verified before use.

use std::collections::BTreeSet;
use std::time::SystemTime;

use const_oid::ObjectIdentifier;
use const_oid::db::rfc5280::{ID_CE_INVALIDITY_DATE, ID_CE_ISSUING_DISTRIBUTION_POINT};
use der::asn1::{GeneralizedTime, OctetString};
use der::{Decode, Encode};
use x509_cert::certificate::Version;
use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::crl::dp::IssuingDistributionPoint;
use x509_cert::ext::pkix::name::DistributionPointName;
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, BaseCrlNumber, CrlNumber};

pub use x509_cert::ext::pkix::CrlReason;

use crate::alg::{SignatureError, SignerId, Sm2PublicKey, check_sm2_with_sm3, sm2_with_sm3};
use crate::cert::{CertSerial, IssuerInfo, enc, ext, ext_with_oid, signed_der, uri};
use crate::time::{TimeError, to_x509, whole_seconds};

/// One revoked certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedEntry {
    /// Its serial number.
    pub serial: CertSerial,
    /// When it was revoked.
    pub revoked_at: SystemTime,
    /// Why (`None` or `Unspecified` writes no reasonCode, as RFC 5280 §5.3.1 advises).
    pub reason: Option<CrlReason>,
    /// When the key is known or suspected to have been compromised.
    pub invalidity_date: Option<SystemTime>,
}

/// What a CRL says, apart from the issuer.
#[derive(Clone, Debug)]
pub struct CrlRequest<'a> {
    /// The CRL number, strictly increasing per issuer (RFC 5280 §5.2.3).
    pub number: u64,
    /// `thisUpdate`.
    pub this_update: SystemTime,
    /// `nextUpdate`.
    pub next_update: SystemTime,
    /// Revoked certificates.
    pub entries: &'a [RevokedEntry],
    /// For a delta CRL: the number of the full CRL it updates (written as deltaCRLIndicator).
    pub delta_base: Option<u64>,
    /// URL of this CRL, written as the issuingDistributionPoint.
    pub distribution_point: Option<&'a str>,
}

/// Why a CRL could not be built or does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrlError {
    /// A time cannot be encoded.
    #[error(transparent)]
    Time(#[from] TimeError),
    /// `nextUpdate` is not after `thisUpdate`.
    #[error("nextUpdate must be after thisUpdate")]
    NextUpdateNotAfterThisUpdate,
    /// A serial appears twice.
    #[error("serial {0} is listed twice")]
    DuplicateSerial(String),
    /// A delta CRL's base number is not below its own number.
    #[error("delta CRL base {base} must be below the CRL number {number}")]
    DeltaBaseNotBelow {
        /// Base CRL number.
        base: u64,
        /// This CRL's number.
        number: u64,
    },
    /// The CRL does not decode or is not what we write.
    #[error("CRL is malformed: {0}")]
    Malformed(String),
    /// The CRL's issuer is not the expected CA.
    #[error("CRL issuer is {found}, expected {expected}")]
    WrongIssuer {
        /// CRL issuer.
        found: String,
        /// Expected CA subject.
        expected: String,
    },
    /// The signature does not verify with the issuer key.
    #[error("CRL signature: {0}")]
    BadSignature(SignatureError),
    /// An encoding step failed.
    #[error("DER encoding: {0}")]
    Encoding(String),
}

impl From<crate::cert::IssueError> for CrlError {
    fn from(e: crate::cert::IssueError) -> Self {
        Self::Encoding(e.to_string())
    }
}

/// A checked TBS CRL and the key that must verify its signature.
#[derive(Clone, Debug)]
pub struct LintedCrl {
    der: Vec<u8>,
    issuer_key: Sm2PublicKey,
    signer_id: SignerId,
}

impl LintedCrl {
    /// The DER bytes to sign.
    pub fn to_be_signed(&self) -> &[u8] {
        &self.der
    }

    /// The signer ID the signature must be made with.
    pub fn signer_id(&self) -> &SignerId {
        &self.signer_id
    }

    /// Wraps a DER SM2 signature into the CRL after checking it verifies.
    pub fn assemble(self, signature_der: &[u8]) -> Result<CertificateList, CrlError> {
        self.issuer_key.verify(&self.signer_id, &self.der, signature_der).map_err(CrlError::BadSignature)?;
        let der = signed_der(&self.der, signature_der)?;
        CertificateList::from_der(&der).map_err(|e| CrlError::Encoding(e.to_string()))
    }
}

struct InvalidityDate(GeneralizedTime);

impl const_oid::AssociatedOid for InvalidityDate {
    const OID: ObjectIdentifier = ID_CE_INVALIDITY_DATE;
}

impl Encode for InvalidityDate {
    fn encoded_len(&self) -> der::Result<der::Length> {
        self.0.encoded_len()
    }
    fn encode(&self, writer: &mut impl der::Writer) -> der::Result<()> {
        self.0.encode(writer)
    }
}

/// Builds and checks a TBS CRL for `issuer`.
pub fn build_crl_tbs(issuer: &IssuerInfo, req: &CrlRequest<'_>) -> Result<LintedCrl, CrlError> {
    let this_update = whole_seconds(req.this_update);
    let next_update = whole_seconds(req.next_update);
    if next_update <= this_update {
        return Err(CrlError::NextUpdateNotAfterThisUpdate);
    }
    if let Some(base) = req.delta_base.filter(|b| *b >= req.number) {
        return Err(CrlError::DeltaBaseNotBelow { base, number: req.number });
    }
    let mut seen = BTreeSet::new();
    let mut revoked: Vec<RevokedCert> = Vec::with_capacity(req.entries.len());
    for entry in req.entries {
        if !seen.insert(&entry.serial) {
            return Err(CrlError::DuplicateSerial(entry.serial.to_hex()));
        }
        let mut exts = Vec::new();
        if let Some(reason) = entry.reason.filter(|r| *r != CrlReason::Unspecified) {
            exts.push(ext(&reason, false)?);
        }
        if let Some(t) = entry.invalidity_date {
            let t = whole_seconds(t);
            let gt = GeneralizedTime::from_system_time(t).map_err(|_| TimeError(t))?;
            exts.push(ext(&InvalidityDate(gt), false)?);
        }
        revoked.push(RevokedCert {
            serial_number: entry.serial.to_x509().map_err(enc)?,
            revocation_date: to_x509(whole_seconds(entry.revoked_at))?,
            crl_entry_extensions: (!exts.is_empty()).then_some(exts),
        });
    }

    let mut crl_exts: Vec<Extension> = vec![
        ext(
            &AuthorityKeyIdentifier {
                key_identifier: Some(OctetString::new(issuer.key_id.clone()).map_err(enc)?),
                authority_cert_issuer: None,
                authority_cert_serial_number: None,
            },
            false,
        )?,
        ext(&CrlNumber(der::asn1::Uint::new(&req.number.to_be_bytes()).map_err(enc)?), false)?,
    ];
    if let Some(base) = req.delta_base {
        crl_exts.push(ext(&BaseCrlNumber(der::asn1::Uint::new(&base.to_be_bytes()).map_err(enc)?), true)?);
    }
    if let Some(url) = req.distribution_point {
        let idp = IssuingDistributionPoint {
            distribution_point: Some(DistributionPointName::FullName(vec![uri(url)?])),
            only_contains_user_certs: false,
            only_contains_ca_certs: false,
            only_some_reasons: None,
            indirect_crl: false,
            only_contains_attribute_certs: false,
        };
        crl_exts.push(ext_with_oid(ID_CE_ISSUING_DISTRIBUTION_POINT, &idp, true)?);
    }

    let tbs = TbsCertList {
        version: Version::V2,
        signature: sm2_with_sm3(),
        issuer: issuer.name.clone(),
        this_update: to_x509(this_update)?,
        next_update: Some(to_x509(next_update)?),
        revoked_certificates: (!revoked.is_empty()).then_some(revoked),
        crl_extensions: Some(crl_exts),
    };
    let der = tbs.to_der().map_err(enc)?;
    Ok(LintedCrl { der, issuer_key: issuer.key.clone(), signer_id: issuer.signer_id.clone() })
}

/// What a verified CRL says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedCrl {
    /// CRL number.
    pub number: Option<u64>,
    /// Base CRL number, for a delta CRL.
    pub delta_base: Option<u64>,
    /// Revoked serials with their reasons.
    pub revoked: Vec<(CertSerial, Option<CrlReason>)>,
    /// `thisUpdate`.
    pub this_update: SystemTime,
    /// `nextUpdate`: after it, a relying party must fetch a newer CRL.
    pub next_update: Option<SystemTime>,
    /// The URI in its issuingDistributionPoint, if any: a relying party checks it is the one it
    /// fetched (RFC 5280 §6.3.3 b), so another partition's CRL cannot stand in.
    pub distribution_point: Option<String>,
}

fn idp_uri(crl: &CertificateList) -> Option<String> {
    let e =
        crl.tbs_cert_list.crl_extensions.as_ref()?.iter().find(|e| e.extn_id == ID_CE_ISSUING_DISTRIBUTION_POINT)?;
    let idp = IssuingDistributionPoint::from_der(e.extn_value.as_bytes()).ok()?;
    match idp.distribution_point? {
        DistributionPointName::FullName(names) => names.iter().find_map(|n| match n {
            x509_cert::ext::pkix::name::GeneralName::UniformResourceIdentifier(u) => Some(u.to_string()),
            _ => None,
        }),
        _ => None,
    }
}

/// Parses a DER CRL and verifies it was signed by `issuer`.
pub fn verify_crl(der_bytes: &[u8], issuer: &IssuerInfo) -> Result<VerifiedCrl, CrlError> {
    let crl = CertificateList::from_der(der_bytes).map_err(|e| CrlError::Malformed(e.to_string()))?;
    check_sm2_with_sm3(&crl.signature_algorithm).map_err(CrlError::BadSignature)?;
    if crl.signature_algorithm != crl.tbs_cert_list.signature {
        return Err(CrlError::Malformed("outer and inner signature algorithms differ".into()));
    }
    if crl.tbs_cert_list.issuer != issuer.name {
        return Err(CrlError::WrongIssuer {
            found: crl.tbs_cert_list.issuer.to_string(),
            expected: issuer.name.to_string(),
        });
    }
    let tbs = crl.tbs_cert_list.to_der().map_err(|e| CrlError::Malformed(e.to_string()))?;
    let sig = crl.signature.as_bytes().ok_or(CrlError::BadSignature(SignatureError::MalformedSignature))?;
    issuer.key.verify(&issuer.signer_id, &tbs, sig).map_err(CrlError::BadSignature)?;

    let ext_u64 = |oid: ObjectIdentifier| -> Option<u64> {
        let e = crl.tbs_cert_list.crl_extensions.as_ref()?.iter().find(|e| e.extn_id == oid)?;
        let n = der::asn1::Uint::from_der(e.extn_value.as_bytes()).ok()?;
        let bytes = n.as_bytes();
        (bytes.len() <= 8).then(|| bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    };
    let reason_of = |rc: &RevokedCert| -> Option<CrlReason> {
        let e = rc
            .crl_entry_extensions
            .as_ref()?
            .iter()
            .find(|e| e.extn_id == <CrlReason as const_oid::AssociatedOid>::OID)?;
        CrlReason::from_der(e.extn_value.as_bytes()).ok()
    };
    let revoked = crl
        .tbs_cert_list
        .revoked_certificates
        .iter()
        .flatten()
        .filter_map(|rc| Some((CertSerial::from_x509(&rc.serial_number)?, reason_of(rc))))
        .collect();
    Ok(VerifiedCrl {
        number: ext_u64(<CrlNumber as const_oid::AssociatedOid>::OID),
        delta_base: ext_u64(<BaseCrlNumber as const_oid::AssociatedOid>::OID),
        revoked,
        this_update: crl.tbs_cert_list.this_update.to_system_time(),
        next_update: crl.tbs_cert_list.next_update.map(|t| t.to_system_time()),
        distribution_point: idp_uri(&crl),
    })
}
