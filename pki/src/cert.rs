//! Building certificates: TBS from a profile, the request's key and the issuer; lint; assemble.
//!
//! The only way to get bytes to sign is [`LintedTbs::to_be_signed`], and the only way to get a
//! [`LintedTbs`] is [`build_tbs`], which lints: a failing TBS is never signed.

use std::time::SystemTime;

use const_oid::AssociatedOid;
use const_oid::db::rfc5280::{ID_AD_CA_ISSUERS, ID_AD_OCSP};
use der::asn1::{AnyRef, BitString, Ia5String, OctetString};
use der::{Decode, Encode, Sequence};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::certificate::{Certificate, Raw, TbsCertificate, Version};
use x509_cert::ext::pkix::crl::dp::DistributionPoint;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::{
    AccessDescription, AuthorityInfoAccessSyntax, AuthorityKeyIdentifier, BasicConstraints, CertificatePolicies,
    CrlDistributionPoints, ExtendedKeyUsage, SubjectKeyIdentifier, certpolicy::PolicyInformation,
};
use x509_cert::ext::{Extension, Extensions};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Validity;

use crate::alg::{SignatureError, SignerId, Sm2PublicKey, key_identifier, sm2_with_sm3};
use crate::lint::{LintError, lint_tbs};
use crate::name::{NameError, SubjectVars};
use crate::policy::{CertProfile, CrlScope};
use crate::time::{TimeError, from_x509, to_x509, whole_seconds};

/// The low 6 octets of `unix_ms` (big-endian, so serials sort by time until the year 10889),
/// then `random`: `N` must be `6 + random.len()`.
fn ms_then<const N: usize>(unix_ms: u64, random: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
    out[6..].copy_from_slice(random);
    out
}

/// A certificate serial number: positive, at most 20 octets (RFC 5280 §4.1.2.2).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CertSerial(Vec<u8>);

impl CertSerial {
    /// A 16-octet serial from 16 random bytes: the top bit is cleared (positive) and the first
    /// octet made non-zero so the DER INTEGER is exactly 16 octets. 126 bits of entropy remain.
    pub fn from_random(mut bytes: [u8; 16]) -> Self {
        bytes[0] &= 0x7f;
        if bytes[0] == 0 {
            bytes[0] = 1;
        }
        Self(bytes.to_vec())
    }

    /// A 16-octet serial whose first octet is `instance` (1..=127; others are refused) and the
    /// other 15 random (120 bits): CA instances sharing one registry never collide.
    pub fn for_instance(instance: u8, random: [u8; 15]) -> Option<Self> {
        (1..=127).contains(&instance).then(|| {
            let mut bytes = vec![instance];
            bytes.extend_from_slice(&random);
            Self(bytes)
        })
    }

    /// A 16-octet serial that sorts in issue order: 6 octets of unix milliseconds, then 10
    /// random octets (80 bits; the CA/Browser Forum asks for at least 64). A registry keyed by
    /// serial then appends each certificate next to the last instead of rewriting a random page.
    /// Positive and 16 octets long for any clock (as [`CertSerial::from_random`]).
    pub fn time_ordered(unix_ms: u64, random: [u8; 10]) -> Self {
        Self::from_random(ms_then(unix_ms, &random))
    }

    /// [`CertSerial::time_ordered`] after the instance octet of [`CertSerial::for_instance`]:
    /// 6 octets of unix milliseconds, then 9 random octets (72 bits).
    pub fn time_ordered_for_instance(instance: u8, unix_ms: u64, random: [u8; 9]) -> Option<Self> {
        Self::for_instance(instance, ms_then(unix_ms, &random))
    }

    /// A fresh [`CertSerial::time_ordered`] serial (with `instance`'s prefix when given; `None`
    /// when the instance is out of range), its random octets from the operating system's CSPRNG.
    pub fn generate_time_ordered(instance: Option<u8>, unix_ms: u64) -> Result<Option<Self>, getrandom::Error> {
        let mut random = [0u8; 10];
        getrandom::fill(&mut random)?;
        Ok(match instance {
            None => Some(Self::from_random(ms_then(unix_ms, &random))),
            Some(i) => Self::for_instance(i, ms_then(unix_ms, &random[..9])),
        })
    }

    /// A fresh random serial from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)?;
        Ok(Self::from_random(bytes))
    }

    /// From the content octets of a DER INTEGER (as read from a certificate or typed by an operator).
    pub fn from_der_content(bytes: &[u8]) -> Option<Self> {
        let positive = bytes.first().is_some_and(|b| b & 0x80 == 0);
        let minimal = !(bytes.len() > 1 && bytes[0] == 0 && bytes[1] & 0x80 == 0);
        let nonzero = bytes.iter().any(|b| *b != 0);
        (positive && minimal && nonzero && bytes.len() <= 20).then(|| Self(bytes.to_vec()))
    }

    /// The serial as a certificate or CRL entry encodes it; `None` if it is not a positive
    /// INTEGER of at most 20 octets.
    pub fn from_x509<P: x509_cert::certificate::Profile>(serial: &SerialNumber<P>) -> Option<Self> {
        let der = serial.to_der().ok()?;
        // Tag, short-form length, content: a longer (long-form) encoding fails the 20-octet bound.
        Self::from_der_content(der.get(2..)?)
    }

    /// A certificate's serial.
    pub fn of(cert: &Certificate) -> Option<Self> {
        Self::from_x509(cert.tbs_certificate().serial_number())
    }

    /// From hex as operators type it (`0A1B…`, case-insensitive, optional colons).
    pub fn from_hex(s: &str) -> Option<Self> {
        let clean: String = s.chars().filter(|c| *c != ':').collect();
        let mut bytes = hex::decode(clean).ok()?;
        while bytes.len() > 1 && bytes[0] == 0 && bytes[1] & 0x80 == 0 {
            bytes.remove(0);
        }
        if bytes.first().is_some_and(|b| b & 0x80 != 0) {
            bytes.insert(0, 0);
        }
        Self::from_der_content(&bytes)
    }

    /// The content octets of the DER INTEGER.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Upper-case hex of the content octets.
    pub fn to_hex(&self) -> String {
        hex::encode_upper(&self.0)
    }

    /// As the x509-cert type.
    pub fn to_x509<P: x509_cert::certificate::Profile>(&self) -> der::Result<SerialNumber<P>> {
        // SerialNumber::new takes the unsigned magnitude.
        let magnitude = if self.0.len() > 1 && self.0[0] == 0 { &self.0[1..] } else { &self.0[..] };
        SerialNumber::<P>::new(magnitude)
    }
}

impl std::fmt::Display for CertSerial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Why a certificate could not be built, or a signature could not be assembled into one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    /// The subject template could not be filled.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A time is outside what X.509 can encode.
    #[error(transparent)]
    Time(#[from] TimeError),
    /// The issuer is not valid at the issuing time, so no validity period remains after clipping.
    #[error(
        "issuer certificate is not valid at the issuing time; nothing remains of the validity period after clipping"
    )]
    IssuerNotValid,
    /// The issuer certificate is not usable as an issuer.
    #[error("issuer certificate: {0}")]
    BadIssuer(String),
    /// The subject or issuer key is not an SM2 key.
    #[error(transparent)]
    Key(#[from] SignatureError),
    /// The built TBS failed the pre-sign linter; nothing was signed.
    #[error(transparent)]
    Lint(#[from] LintError),
    /// The signature returned by the signer does not verify with the issuer's key.
    #[error("signature returned by the signer does not verify with the issuer key: {0}")]
    BadSignature(SignatureError),
    /// A DER encoding step failed.
    #[error("DER encoding: {0}")]
    Encoding(String),
}

pub(crate) fn enc(e: der::Error) -> IssueError {
    IssueError::Encoding(e.to_string())
}

/// What an issuing CA contributes to a certificate.
#[derive(Clone, Debug)]
pub struct IssuerInfo {
    /// The issuer's subject, which becomes the certificate's issuer.
    pub name: Name,
    /// The issuer's public key, which must verify the signature.
    pub key: Sm2PublicKey,
    /// The issuer's key identifier (its SKI), which becomes the AKI.
    pub key_id: Vec<u8>,
    /// Start of the issuer's validity.
    pub not_before: SystemTime,
    /// End of the issuer's validity.
    pub not_after: SystemTime,
    /// The issuer's path-length constraint.
    pub path_len: Option<u8>,
    /// The signer ID its signatures are made with.
    pub signer_id: SignerId,
}

impl IssuerInfo {
    /// Reads issuer data from a CA certificate.
    pub fn from_certificate(cert: &Certificate, signer_id: SignerId) -> Result<Self, IssueError> {
        let tbs = cert.tbs_certificate();
        let spki = tbs.subject_public_key_info().clone();
        let key = Sm2PublicKey::from_spki(&spki)?;
        let bc = tbs.get_extension::<BasicConstraints>().map_err(enc)?.map(|(_, bc)| bc);
        let Some(bc) = bc.filter(|bc| bc.ca) else {
            return Err(IssueError::BadIssuer("it is not a CA certificate (basicConstraints cA is not true)".into()));
        };
        let key_id = match tbs.get_extension::<SubjectKeyIdentifier>().map_err(enc)? {
            Some((_, ski)) => ski.0.as_bytes().to_vec(),
            None => key_identifier(&spki).to_vec(),
        };
        Ok(Self {
            name: tbs.subject().clone(),
            key,
            key_id,
            not_before: from_x509(&tbs.validity().not_before),
            not_after: from_x509(&tbs.validity().not_after),
            path_len: bc.path_len_constraint,
            signer_id,
        })
    }
}

/// The parts of a certificate that come from the request rather than from policy.
#[derive(Clone, Debug)]
pub struct TbsRequest<'a> {
    /// The profile to apply.
    pub profile: &'a CertProfile,
    /// Values for the subject template.
    pub vars: &'a SubjectVars,
    /// The subject's public key (from a verified CSR, or a CA key from the HSM).
    pub subject_key: &'a Sm2PublicKey,
    /// The certificate serial number.
    pub serial: CertSerial,
    /// The issuing time.
    pub now: SystemTime,
}

/// `TBSCertificate` as we write it: always v3, no unique identifiers. Fields use the lenient
/// [`Raw`] profile so that what is encoded is exactly what the linter sees (the strict profile
/// silently re-encodes times on output).
#[derive(Sequence)]
pub(crate) struct TbsWriter {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT")]
    pub(crate) version: Version,
    pub(crate) serial_number: SerialNumber<Raw>,
    pub(crate) signature: AlgorithmIdentifierOwned,
    pub(crate) issuer: Name,
    pub(crate) validity: Validity<Raw>,
    pub(crate) subject: Name,
    pub(crate) subject_public_key_info: SubjectPublicKeyInfoOwned,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT")]
    pub(crate) extensions: Extensions,
}

/// A TBS certificate that passed the pre-sign linter, with the key that must verify its signature.
#[derive(Clone, Debug)]
pub struct LintedTbs {
    tbs: TbsCertificate,
    der: Vec<u8>,
    issuer_key: Sm2PublicKey,
    signer_id: SignerId,
}

impl LintedTbs {
    /// The TBS as parsed.
    pub fn tbs(&self) -> &TbsCertificate {
        &self.tbs
    }

    /// The DER bytes to sign.
    pub fn to_be_signed(&self) -> &[u8] {
        &self.der
    }

    /// The signer ID the signature must be made with.
    pub fn signer_id(&self) -> &SignerId {
        &self.signer_id
    }

    /// Wraps a DER SM2 signature into the certificate, after checking it verifies with the issuer key
    /// (a faulty or wrongly-configured HSM must not produce a certificate).
    pub fn assemble(self, signature_der: &[u8]) -> Result<Certificate, IssueError> {
        self.assemble_with_der(signature_der).map(|(cert, _)| cert)
    }

    /// [`LintedTbs::assemble`], also returning the certificate's DER as assembled (a caller that
    /// stores or sends it need not encode the certificate again).
    pub fn assemble_with_der(self, signature_der: &[u8]) -> Result<(Certificate, Vec<u8>), IssueError> {
        let (_, der) = self.assemble_tbs_der(signature_der)?;
        Ok((Certificate::from_der(&der).map_err(enc)?, der))
    }

    /// [`LintedTbs::assemble_with_der`] without parsing the certificate just encoded: the TBS as
    /// built and linted (what a record needs) and the certificate's DER. The signature is checked
    /// the same way.
    pub fn assemble_tbs_der(self, signature_der: &[u8]) -> Result<(TbsCertificate, Vec<u8>), IssueError> {
        self.issuer_key.verify(&self.signer_id, &self.der, signature_der).map_err(IssueError::BadSignature)?;
        let der = signed_der(&self.der, signature_der)?;
        Ok((self.tbs, der))
    }
}

/// `SEQUENCE { tbs, SM2-with-SM3, BIT STRING signature }`: the shape of certificates, CRLs and CSRs.
pub(crate) fn signed_der(tbs_der: &[u8], signature_der: &[u8]) -> Result<Vec<u8>, IssueError> {
    #[derive(Sequence)]
    struct Signed<'a> {
        tbs: AnyRef<'a>,
        algorithm: AlgorithmIdentifierOwned,
        signature: BitString,
    }
    let signed = Signed {
        tbs: AnyRef::from_der(tbs_der).map_err(enc)?,
        algorithm: sm2_with_sm3(),
        signature: BitString::from_bytes(signature_der).map_err(enc)?,
    };
    signed.to_der().map_err(enc)
}

/// Builds and lints a TBS certificate. `issuer: None` makes a self-signed certificate.
pub fn build_tbs(req: &TbsRequest<'_>, issuer: Option<&IssuerInfo>) -> Result<LintedTbs, IssueError> {
    let profile = req.profile;
    let subject = profile.subject.render(req.vars)?;
    let spki = req.subject_key.to_spki();
    let ski = key_identifier(&spki).to_vec();

    let now = whole_seconds(req.now);
    let mut not_before = now.checked_sub(profile.backdate).unwrap_or(now);
    let mut not_after = now.checked_add(profile.validity).ok_or(TimeError(now))?;
    if let Some(issuer) = issuer {
        not_before = not_before.max(whole_seconds(issuer.not_before));
        not_after = not_after.min(whole_seconds(issuer.not_after));
    }
    if not_after <= not_before || issuer.is_some_and(|i| now < i.not_before || now > i.not_after) {
        return Err(IssueError::IssuerNotValid);
    }

    let (issuer_name, aki, issuer_key, signer_id) = match issuer {
        Some(i) => (i.name.clone(), i.key_id.clone(), i.key.clone(), i.signer_id.clone()),
        None => (subject.clone(), ski.clone(), req.subject_key.clone(), profile.signer_id.clone()),
    };

    let writer = TbsWriter {
        version: Version::V3,
        serial_number: req.serial.to_x509().map_err(enc)?,
        signature: sm2_with_sm3(),
        issuer: issuer_name,
        validity: Validity::new(to_x509(not_before)?, to_x509(not_after)?),
        subject,
        subject_public_key_info: spki,
        extensions: profile_extensions(profile, req.vars, &ski, &aki)?,
    };
    let der = writer.to_der().map_err(enc)?;
    // Decoded once, strictly, and linted as decoded: what only the lenient profile could read
    // (a serial over 20 octets, a mis-encoded time) `to_x509` has already refused above.
    let tbs = TbsCertificate::from_der(&der).map_err(enc)?;
    lint_tbs(&tbs, issuer)?;
    Ok(LintedTbs { tbs, der, issuer_key, signer_id })
}

pub(crate) fn ext<T: Encode + AssociatedOid>(value: &T, critical: bool) -> Result<Extension, IssueError> {
    ext_with_oid(T::OID, value, critical)
}

/// For types whose `AssociatedOid` is wrong upstream (x509-cert 0.3.0 gives
/// IssuingDistributionPoint the OID of subjectInfoAccess).
pub(crate) fn ext_with_oid<T: Encode>(
    oid: const_oid::ObjectIdentifier,
    value: &T,
    critical: bool,
) -> Result<Extension, IssueError> {
    Ok(Extension { extn_id: oid, critical, extn_value: OctetString::new(value.to_der().map_err(enc)?).map_err(enc)? })
}

pub(crate) fn uri(url: &str) -> Result<GeneralName, IssueError> {
    Ok(GeneralName::UniformResourceIdentifier(Ia5String::new(url).map_err(enc)?))
}

/// The placeholder for the certificate's CRL partition in distribution point URLs.
pub const PARTITION: &str = "{partition}";

/// The full CRL's URL from a partition template: `…/issuing-{partition}.crl` → `…/issuing.crl`.
pub fn full_crl_url(template: &str) -> String {
    template.replace(&format!("-{PARTITION}"), "").replace(PARTITION, "")
}

/// The extensions a profile calls for, in a fixed order (so the TBS is stable byte for byte).
fn profile_extensions(
    profile: &CertProfile,
    vars: &SubjectVars,
    ski: &[u8],
    aki: &[u8],
) -> Result<Extensions, IssueError> {
    let mut exts = Vec::with_capacity(8);
    // End entities carry no basicConstraints (RFC 5280 §4.2.1.9 allows it; GmSSL 3.3 refuses an
    // empty one, which is what cA = FALSE encodes to).
    if let Some(path_len) = profile.ca {
        exts.push(ext(&BasicConstraints { ca: true, path_len_constraint: path_len }, true)?);
    }
    exts.push(ext(&profile.key_usage, true)?);
    if !profile.extended_key_usage.is_empty() {
        exts.push(ext(&ExtendedKeyUsage(profile.extended_key_usage.clone()), false)?);
    }
    exts.push(ext(&SubjectKeyIdentifier(OctetString::new(ski).map_err(enc)?), false)?);
    let aki = AuthorityKeyIdentifier {
        key_identifier: Some(OctetString::new(aki).map_err(enc)?),
        authority_cert_issuer: None,
        authority_cert_serial_number: None,
    };
    exts.push(ext(&aki, false)?);
    if !profile.policies.is_empty() {
        let policies = profile
            .policies
            .iter()
            .map(|oid| PolicyInformation { policy_identifier: *oid, policy_qualifiers: None })
            .collect();
        exts.push(ext(&CertificatePolicies(policies), false)?);
    }
    if !profile.crl_distribution_points.is_empty() {
        let points = profile
            .crl_distribution_points
            .iter()
            .map(|u| {
                let u = match (u.contains(PARTITION), profile.crl_scope, vars.crl_partition) {
                    (false, _, _) => u.clone(),
                    (true, CrlScope::Full, _) => full_crl_url(u),
                    (true, CrlScope::Partition, Some(p)) => u.replace(PARTITION, &p.to_string()),
                    (true, CrlScope::Partition, None) => {
                        return Err(NameError::MissingVar("partition".into()).into());
                    }
                };
                Ok(DistributionPoint {
                    distribution_point: Some(DistributionPointName::FullName(vec![uri(&u)?])),
                    reasons: None,
                    crl_issuer: None,
                })
            })
            .collect::<Result<Vec<_>, IssueError>>()?;
        exts.push(ext(&CrlDistributionPoints(points), false)?);
    }
    if profile.ocsp_nocheck {
        exts.push(ext_with_oid(crate::ocsp::ID_PKIX_OCSP_NOCHECK, &der::asn1::Null, false)?);
    }
    let mut access = Vec::new();
    for u in &profile.ocsp_urls {
        access.push(AccessDescription { access_method: ID_AD_OCSP, access_location: uri(u)? });
    }
    for u in &profile.ca_issuers_urls {
        access.push(AccessDescription { access_method: ID_AD_CA_ISSUERS, access_location: uri(u)? });
    }
    if !access.is_empty() {
        exts.push(ext(&AuthorityInfoAccessSyntax(access), false)?);
    }
    Ok(exts)
}

/// Where a certificate says its status is published.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusUrls {
    /// CRL distribution points (URIs).
    pub crl: Vec<String>,
    /// OCSP responders (authorityInfoAccess id-ad-ocsp URIs).
    pub ocsp: Vec<String>,
}

/// The CRL and OCSP URLs `cert` carries (unparseable extensions contribute nothing).
pub fn status_urls(cert: &Certificate) -> StatusUrls {
    let mut out = StatusUrls::default();
    let uri_of = |n: &GeneralName| match n {
        GeneralName::UniformResourceIdentifier(u) => Some(u.to_string()),
        _ => None,
    };
    for e in cert.tbs_certificate().extensions().into_iter().flatten() {
        let bytes = e.extn_value.as_bytes();
        if e.extn_id == <CrlDistributionPoints as const_oid::AssociatedOid>::OID
            && let Ok(points) = CrlDistributionPoints::from_der(bytes)
        {
            for p in points.0 {
                if let Some(DistributionPointName::FullName(names)) = p.distribution_point {
                    out.crl.extend(names.iter().filter_map(uri_of));
                }
            }
        } else if e.extn_id == <AuthorityInfoAccessSyntax as const_oid::AssociatedOid>::OID
            && let Ok(aia) = AuthorityInfoAccessSyntax::from_der(bytes)
        {
            let ocsp = aia.0.iter().filter(|a| a.access_method == ID_AD_OCSP);
            out.ocsp.extend(ocsp.filter_map(|a| uri_of(&a.access_location)));
        }
    }
    out
}

#[cfg(test)]
mod serial_tests {
    use super::CertSerial;

    #[test]
    fn an_instance_prefix_is_the_first_octet_and_only_1_to_127_are_taken() {
        let s = CertSerial::for_instance(7, [0xff; 15]).expect("in range");
        assert_eq!(s.as_bytes().len(), 16);
        assert!(s.to_hex().starts_with("07FF"));
        assert_eq!(CertSerial::from_der_content(s.as_bytes()), Some(s), "a valid DER INTEGER");
        assert_eq!(CertSerial::for_instance(0, [0; 15]), None, "0 would shorten the INTEGER");
        assert_eq!(CertSerial::for_instance(128, [0; 15]), None, "would be negative");
    }

    // 2026-12-04 in unix milliseconds.
    const NOW_MS: u64 = 1_796_400_000_000;

    #[test]
    fn time_ordered_serials_sort_in_issue_order_whatever_their_random_octets() {
        let earlier = CertSerial::time_ordered(NOW_MS, [0xff; 10]);
        let later = CertSerial::time_ordered(NOW_MS + 1, [0; 10]);
        assert!(earlier < later);
        assert!(earlier.to_hex() < later.to_hex(), "the registry's hex keys sort the same way");
        let a = CertSerial::time_ordered_for_instance(9, NOW_MS, [0xff; 9]).expect("in range");
        let b = CertSerial::time_ordered_for_instance(9, NOW_MS + 1, [0; 9]).expect("in range");
        assert!(a < b && a.to_hex() < b.to_hex());
        assert!(a.to_hex().starts_with("09"), "the instance octet stays first: {}", a.to_hex());
    }

    #[test]
    fn time_ordered_serials_are_16_octet_positive_integers_for_any_clock() {
        for ms in [0, 1, NOW_MS, (1 << 47) - 1, 1 << 47, u64::MAX] {
            for random in [[0u8; 10], [0xff; 10]] {
                let s = CertSerial::time_ordered(ms, random);
                assert_eq!(s.as_bytes().len(), 16, "{ms}");
                assert_eq!(CertSerial::from_der_content(s.as_bytes()), Some(s.clone()), "{ms}: a valid DER INTEGER");
            }
        }
        let s = CertSerial::time_ordered(NOW_MS, [0xab; 10]);
        assert_eq!(&s.as_bytes()[6..], &[0xab; 10], "80 random bits after the time");
    }

    #[test]
    fn a_time_ordered_instance_out_of_range_is_refused() {
        assert_eq!(CertSerial::time_ordered_for_instance(0, NOW_MS, [0; 9]), None);
        assert_eq!(CertSerial::time_ordered_for_instance(128, NOW_MS, [0; 9]), None);
        assert_eq!(CertSerial::generate_time_ordered(Some(200), NOW_MS).expect("rng"), None);
    }

    #[test]
    fn fresh_time_ordered_serials_differ_within_one_millisecond() {
        let a = CertSerial::generate_time_ordered(None, NOW_MS).expect("rng").expect("serial");
        let b = CertSerial::generate_time_ordered(None, NOW_MS).expect("rng").expect("serial");
        assert_ne!(a, b);
        assert_eq!(a.as_bytes()[..6], b.as_bytes()[..6]);
    }
}
