//! The pre-sign linter: RFC 5280 and GM/T 0015 rules checked on every TBS before it is signed.
//!
//! It works on any decoding profile of x509-cert: on the lenient
//! [`Raw`](x509_cert::certificate::Raw) one it can itself report what the strict decoder would
//! only refuse (a negative serial, say). Each finding names its rule.

use std::collections::BTreeSet;
use std::fmt;

use const_oid::AssociatedOid;
use const_oid::db::rfc5280 as oids;
use der::{Decode, Encode};
use x509_cert::certificate::{Profile, TbsCertificateInner, Version};
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier};
use x509_cert::time::Time;

use crate::alg::{Sm2PublicKey, check_sm2_with_sm3, key_identifier};
use crate::cert::IssuerInfo;
use crate::time::from_x509;

/// A rule of the linter. [`LintRule::id`] is stable: logs and tests match on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LintRule {
    /// The version is not v3 (we always write extensions).
    VersionNotV3,
    /// The serial is zero or negative.
    SerialNotPositive,
    /// The serial has more than 20 content octets.
    SerialTooLong,
    /// A time before 2050 is not UTCTime, or one from 2050 is not GeneralizedTime.
    TimeEncoding,
    /// `notAfter` is not after `notBefore`.
    ValidityInverted,
    /// The validity period is not inside the issuer's.
    ValidityOutsideIssuer,
    /// The subject is empty.
    SubjectEmpty,
    /// The issuer name is not the issuer certificate's subject.
    IssuerNameMismatch,
    /// The TBS signature algorithm is not SM2-with-SM3 without parameters.
    SignatureAlgorithm,
    /// The subject key is not a valid key on the SM2 curve.
    SubjectKey,
    /// Issuer or subject unique identifiers are present (RFC 5280 §4.1.2.8: CAs must not write them).
    UniqueIdentifiers,
    /// An extension appears twice.
    DuplicateExtension,
    /// An extension's value does not decode.
    ExtensionMalformed,
    /// A critical extension we do not process.
    UnknownCriticalExtension,
    /// No subject key identifier.
    SkiMissing,
    /// The subject key identifier is not the key identifier of the subject key.
    SkiMismatch,
    /// No authority key identifier.
    AkiMissing,
    /// The authority key identifier is not the issuer's key identifier.
    AkiMismatch,
    /// No key usage.
    KeyUsageMissing,
    /// Key usage not marked critical.
    KeyUsageNotCritical,
    /// No basic constraints.
    BasicConstraintsMissing,
    /// Basic constraints not marked critical.
    BasicConstraintsNotCritical,
    /// `keyCertSign` without `cA`, or `cA` without `keyCertSign`.
    KeyUsageInconsistentWithCa,
    /// A path-length constraint on a non-CA certificate.
    PathLenWithoutCa,
    /// The issuer's path-length constraint does not allow this CA certificate.
    PathLenExceeded,
}

impl LintRule {
    /// A stable kebab-case identifier.
    pub fn id(self) -> &'static str {
        match self {
            Self::VersionNotV3 => "version-not-v3",
            Self::SerialNotPositive => "serial-not-positive",
            Self::SerialTooLong => "serial-too-long",
            Self::TimeEncoding => "time-encoding",
            Self::ValidityInverted => "validity-inverted",
            Self::ValidityOutsideIssuer => "validity-outside-issuer",
            Self::SubjectEmpty => "subject-empty",
            Self::IssuerNameMismatch => "issuer-name-mismatch",
            Self::SignatureAlgorithm => "signature-algorithm-not-sm2-with-sm3",
            Self::SubjectKey => "subject-key-not-sm2",
            Self::UniqueIdentifiers => "unique-identifiers-present",
            Self::DuplicateExtension => "duplicate-extension",
            Self::ExtensionMalformed => "extension-malformed",
            Self::UnknownCriticalExtension => "unknown-critical-extension",
            Self::SkiMissing => "ski-missing",
            Self::SkiMismatch => "ski-mismatch",
            Self::AkiMissing => "aki-missing",
            Self::AkiMismatch => "aki-mismatch",
            Self::KeyUsageMissing => "key-usage-missing",
            Self::KeyUsageNotCritical => "key-usage-not-critical",
            Self::BasicConstraintsMissing => "basic-constraints-missing",
            Self::BasicConstraintsNotCritical => "basic-constraints-not-critical",
            Self::KeyUsageInconsistentWithCa => "key-usage-inconsistent-with-ca",
            Self::PathLenWithoutCa => "path-len-without-ca",
            Self::PathLenExceeded => "path-len-exceeded",
        }
    }
}

/// One broken rule and what was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The rule.
    pub rule: LintRule,
    /// What was found.
    pub detail: String,
}

/// A TBS that must not be signed, with every rule it breaks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct LintError {
    /// The broken rules, in rule order.
    pub findings: Vec<Finding>,
}

impl LintError {
    /// Whether `rule` is among the findings.
    pub fn has(&self, rule: LintRule) -> bool {
        self.findings.iter().any(|f| f.rule == rule)
    }
}

impl fmt::Display for LintError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("pre-sign lint failed:")?;
        for finding in &self.findings {
            write!(f, " [{}] {};", finding.rule.id(), finding.detail)?;
        }
        Ok(())
    }
}

/// Extensions whose critical flag we honour; any other critical extension is refused.
const KNOWN_CRITICAL: [const_oid::ObjectIdentifier; 2] = [oids::ID_CE_BASIC_CONSTRAINTS, oids::ID_CE_KEY_USAGE];

/// Lints a TBS certificate; `issuer: None` means self-signed. Any decoding profile: `Raw`
/// reads what a strict profile would refuse, so its findings can be named.
pub fn lint_tbs<P: Profile>(tbs: &TbsCertificateInner<P>, issuer: Option<&IssuerInfo>) -> Result<(), LintError> {
    let mut out = Vec::new();
    let mut fail = |rule, detail: String| out.push(Finding { rule, detail });

    if tbs.version() != Version::V3 {
        fail(LintRule::VersionNotV3, format!("version is {:?}", tbs.version()));
    }

    // Serial: look at the INTEGER's content octets as encoded.
    match tbs.serial_number().to_der() {
        Ok(der) => {
            let content = &der[2.min(der.len())..];
            if content.first().is_none_or(|b| b & 0x80 != 0) || content.iter().all(|b| *b == 0) {
                fail(LintRule::SerialNotPositive, format!("serial is {}", hex::encode_upper(content)));
            }
            if content.len() > 20 {
                fail(LintRule::SerialTooLong, format!("serial has {} octets", content.len()));
            }
        }
        Err(e) => fail(LintRule::SerialNotPositive, format!("serial does not encode: {e}")),
    }

    let validity = tbs.validity();
    for (which, t) in [("notBefore", &validity.not_before), ("notAfter", &validity.not_after)] {
        let year = t.to_date_time().year();
        let ok = matches!((t, year < 2050), (Time::UtcTime(_), true) | (Time::GeneralTime(_), false));
        if !ok {
            fail(LintRule::TimeEncoding, format!("{which} in {year} is encoded as {}", time_kind(t)));
        }
    }
    let (nb, na) = (from_x509(&validity.not_before), from_x509(&validity.not_after));
    if na <= nb {
        fail(
            LintRule::ValidityInverted,
            format!("notAfter {} is not after notBefore {}", validity.not_after, validity.not_before),
        );
    }
    if let Some(i) = issuer {
        if nb < crate::time::whole_seconds(i.not_before) || na > crate::time::whole_seconds(i.not_after) {
            fail(LintRule::ValidityOutsideIssuer, "validity is not inside the issuer's".into());
        }
        if tbs.issuer() != &i.name {
            fail(
                LintRule::IssuerNameMismatch,
                format!("issuer is {}, issuer certificate's subject is {}", tbs.issuer(), i.name),
            );
        }
    } else if tbs.issuer() != tbs.subject() {
        fail(LintRule::IssuerNameMismatch, "self-signed certificate whose issuer is not its subject".into());
    }
    if tbs.subject().is_empty() {
        fail(LintRule::SubjectEmpty, "subject is empty".into());
    }
    if let Err(e) = check_sm2_with_sm3(tbs.signature()) {
        fail(LintRule::SignatureAlgorithm, e.to_string());
    }
    let subject_key = Sm2PublicKey::from_spki(tbs.subject_public_key_info());
    if let Err(e) = &subject_key {
        fail(LintRule::SubjectKey, e.to_string());
    }
    if tbs.issuer_unique_id().is_some() || tbs.subject_unique_id().is_some() {
        fail(LintRule::UniqueIdentifiers, "unique identifiers present".into());
    }

    let exts = tbs.extensions().map(|e| e.as_slice()).unwrap_or_default();
    let mut seen = BTreeSet::new();
    for e in exts {
        if !seen.insert(e.extn_id) {
            fail(LintRule::DuplicateExtension, format!("extension {} appears more than once", e.extn_id));
        }
        if e.critical && !KNOWN_CRITICAL.contains(&e.extn_id) {
            fail(LintRule::UnknownCriticalExtension, format!("extension {} is critical", e.extn_id));
        }
    }
    let find = |oid| exts.iter().find(|e| e.extn_id == oid).map(|e| (e.critical, e.extn_value.as_bytes()));

    let self_key_id = key_identifier(tbs.subject_public_key_info());
    match find(SubjectKeyIdentifier::OID) {
        None => fail(LintRule::SkiMissing, "no subjectKeyIdentifier".into()),
        Some((_, v)) => match SubjectKeyIdentifier::from_der(v) {
            Ok(ski) if ski.0.as_bytes() == self_key_id => {}
            Ok(ski) => fail(
                LintRule::SkiMismatch,
                format!("SKI {} is not {}", hex::encode(ski.0.as_bytes()), hex::encode(self_key_id)),
            ),
            Err(e) => fail(LintRule::ExtensionMalformed, format!("subjectKeyIdentifier: {e}")),
        },
    }
    let expected_aki = issuer.map_or(self_key_id.to_vec(), |i| i.key_id.clone());
    match find(AuthorityKeyIdentifier::OID) {
        None => fail(LintRule::AkiMissing, "no authorityKeyIdentifier".into()),
        Some((_, v)) => match AuthorityKeyIdentifier::from_der(v) {
            Ok(aki) if aki.key_identifier.as_ref().is_some_and(|k| k.as_bytes() == expected_aki) => {}
            Ok(_) => fail(
                LintRule::AkiMismatch,
                format!("AKI keyIdentifier is not the issuer's {}", hex::encode(&expected_aki)),
            ),
            Err(e) => fail(LintRule::ExtensionMalformed, format!("authorityKeyIdentifier: {e}")),
        },
    }
    let ku = match find(KeyUsage::OID) {
        None => {
            fail(LintRule::KeyUsageMissing, "no keyUsage".into());
            None
        }
        Some((critical, v)) => {
            if !critical {
                fail(LintRule::KeyUsageNotCritical, "keyUsage is not critical".into());
            }
            KeyUsage::from_der(v).map_err(|e| fail(LintRule::ExtensionMalformed, format!("keyUsage: {e}"))).ok()
        }
    };
    let bc = match find(BasicConstraints::OID) {
        None => None,
        Some((critical, v)) => {
            let bc = BasicConstraints::from_der(v)
                .map_err(|e| fail(LintRule::ExtensionMalformed, format!("basicConstraints: {e}")))
                .ok();
            if bc.as_ref().is_some_and(|b| b.ca) && !critical {
                fail(LintRule::BasicConstraintsNotCritical, "basicConstraints of a CA is not critical".into());
            }
            bc
        }
    };
    let is_ca = bc.as_ref().is_some_and(|b| b.ca);
    let cert_sign = ku.as_ref().is_some_and(|k| k.0.contains(KeyUsages::KeyCertSign));
    if cert_sign && bc.is_none() {
        fail(LintRule::BasicConstraintsMissing, "keyCertSign without basicConstraints".into());
    } else if cert_sign != is_ca {
        fail(LintRule::KeyUsageInconsistentWithCa, format!("cA is {is_ca} but keyCertSign is {cert_sign}"));
    }
    if !is_ca && bc.as_ref().is_some_and(|b| b.path_len_constraint.is_some()) {
        fail(LintRule::PathLenWithoutCa, "pathLenConstraint on a non-CA certificate".into());
    }
    if is_ca && let Some(limit) = issuer.and_then(|i| i.path_len) {
        let own = bc.as_ref().and_then(|b| b.path_len_constraint);
        if limit == 0 || own.is_none_or(|own| own >= limit) {
            fail(LintRule::PathLenExceeded, format!("issuer allows {limit} more CA certificates below it"));
        }
    }

    if out.is_empty() {
        Ok(())
    } else {
        out.sort_by_key(|f| f.rule);
        Err(LintError { findings: out })
    }
}

fn time_kind(t: &Time) -> &'static str {
    match t {
        Time::UtcTime(_) => "UTCTime",
        Time::GeneralTime(_) => "GeneralizedTime",
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use der::asn1::{BitString, OctetString};
    use x509_cert::certificate::Raw;
    use x509_cert::ext::Extension;
    use x509_cert::ext::pkix::KeyUsage;
    use x509_cert::name::Name;
    use x509_cert::serial_number::SerialNumber;
    use x509_cert::time::Validity;

    use super::*;
    use crate::alg::Sm2PublicKey;
    use crate::cert::{CertSerial, IssuerInfo, TbsRequest, TbsWriter, build_tbs};
    use crate::name::SubjectVars;
    use crate::policy::PolicySet;

    const NOW: u64 = 1_795_000_000; // 2026-11-18

    fn key(seed: u8) -> Sm2PublicKey {
        let sk = sm2::SecretKey::from_slice(&[seed; 32]).expect("scalar");
        Sm2PublicKey::from_sec1(
            &sm2::elliptic_curve::sec1::ToSec1Point::to_sec1_point(&sk.public_key(), false).to_bytes(),
        )
        .expect("point")
    }

    fn issuer() -> IssuerInfo {
        let policy = PolicySet::embedded_default().expect("policy");
        IssuerInfo {
            name: policy
                .profile("issuing-ca")
                .expect("p")
                .subject
                .render(&SubjectVars { name: Some("CA".into()), ..Default::default() })
                .expect("name"),
            key: key(2),
            key_id: crate::alg::key_identifier(&key(2).to_spki()).to_vec(),
            not_before: UNIX_EPOCH + Duration::from_secs(NOW - 86_400),
            not_after: UNIX_EPOCH + Duration::from_secs(NOW + 10 * 365 * 86_400),
            path_len: Some(0),
            signer_id: Default::default(),
        }
    }

    /// A good terminal TBS, decoded into the writer so a test can break one thing.
    fn good(profile: &str) -> TbsWriter {
        let policy = PolicySet::embedded_default().expect("policy");
        let vars = SubjectVars {
            serial: Some("HSTM01261100000K".into()),
            class: Some("II".into()),
            manufacturer: Some("HSTM".into()),
            model: Some("01".into()),
            name: Some("x".into()),
            crl_partition: Some(0),
        };
        let req = TbsRequest {
            profile: policy.profile(profile).expect("profile"),
            vars: &vars,
            subject_key: &key(1),
            serial: CertSerial::from_random([7; 16]),
            now: UNIX_EPOCH + Duration::from_secs(NOW),
        };
        let linted = build_tbs(&req, Some(&issuer())).expect("good TBS lints clean");
        TbsWriter::from_der(linted.to_be_signed()).expect("decodes")
    }

    fn lint(w: &TbsWriter) -> Result<(), LintError> {
        let der = w.to_der().expect("encode");
        let raw = TbsCertificateInner::<Raw>::from_der(&der).expect("raw decode");
        lint_tbs(&raw, Some(&issuer()))
    }

    fn assert_rule(w: &TbsWriter, rule: LintRule) {
        match lint(w) {
            Ok(()) => panic!("{} not detected", rule.id()),
            Err(e) => assert!(e.has(rule), "{} not among {e}", rule.id()),
        }
    }

    fn set_ext(w: &mut TbsWriter, oid: const_oid::ObjectIdentifier, f: impl FnOnce(&mut Extension)) {
        f(w.extensions.iter_mut().find(|e| e.extn_id == oid).expect("extension present"));
    }

    fn remove_ext(w: &mut TbsWriter, oid: const_oid::ObjectIdentifier) {
        w.extensions.retain(|e| e.extn_id != oid);
    }

    fn der_of<T: der::Encode>(v: &T) -> OctetString {
        OctetString::new(v.to_der().expect("der")).expect("os")
    }

    fn time(secs: u64) -> Time {
        crate::time::to_x509(UNIX_EPOCH + Duration::from_secs(secs)).expect("time")
    }

    #[test]
    fn good_tbs_is_clean() {
        lint(&good("terminal")).expect("clean");
    }

    #[test]
    fn end_entities_omit_basic_constraints() {
        use const_oid::db::rfc5280::ID_CE_BASIC_CONSTRAINTS;
        for profile in ["terminal", "station", "operator", "admin", "auditor", "ocsp-signer"] {
            let w = good(profile);
            assert!(
                !w.extensions.iter().any(|e| e.extn_id == ID_CE_BASIC_CONSTRAINTS),
                "{profile} carries basicConstraints"
            );
            lint(&w).expect("clean");
        }
    }

    #[test]
    fn serial_rules() {
        let mut w = good("terminal");
        w.serial_number = SerialNumber::from_der(&[0x02, 0x01, 0x00]).expect("zero");
        assert_rule(&w, LintRule::SerialNotPositive);
        w.serial_number = SerialNumber::from_der(&[0x02, 0x01, 0x80]).expect("negative");
        assert_rule(&w, LintRule::SerialNotPositive);
        let mut long = vec![0x02, 21, 0x01];
        long.extend([0x55; 20]);
        w.serial_number = SerialNumber::from_der(&long).expect("21 octets");
        assert_rule(&w, LintRule::SerialTooLong);
    }

    #[test]
    fn time_rules() {
        let mut w = good("terminal");
        let dt = w.validity.not_before.to_date_time();
        w.validity.not_before = Time::GeneralTime(der::asn1::GeneralizedTime::from_date_time(dt));
        assert_rule(&w, LintRule::TimeEncoding);

        let mut w = good("terminal");
        w.validity = Validity::new(w.validity.not_after, w.validity.not_before);
        assert_rule(&w, LintRule::ValidityInverted);

        let mut w = good("terminal");
        w.validity.not_after = time(NOW + 11 * 365 * 86_400);
        assert_rule(&w, LintRule::ValidityOutsideIssuer);

        // 2050 and later must be GeneralizedTime.
        let mut w = good("terminal");
        let t2051 = UNIX_EPOCH + Duration::from_secs(2_556_144_000);
        let dt = der::DateTime::from_system_time(t2051).expect("dt");
        w.validity.not_after =
            Time::UtcTime(der::asn1::UtcTime::from_unix_duration(Duration::from_secs(1_900_000_000)).expect("utc"));
        if let Err(e) = lint(&w) {
            assert!(!e.has(LintRule::TimeEncoding), "{e}");
        }
        w.validity.not_after = Time::GeneralTime(der::asn1::GeneralizedTime::from_date_time(dt));
        let e = lint(&w).expect_err("outside issuer anyway");
        assert!(!e.has(LintRule::TimeEncoding), "{e}");
    }

    #[test]
    fn name_and_algorithm_rules() {
        let mut w = good("terminal");
        w.subject = Name::default();
        assert_rule(&w, LintRule::SubjectEmpty);

        let mut w = good("terminal");
        w.issuer = w.subject.clone();
        assert_rule(&w, LintRule::IssuerNameMismatch);

        let mut w = good("terminal");
        w.signature.oid = const_oid::db::rfc5912::ECDSA_WITH_SHA_256;
        assert_rule(&w, LintRule::SignatureAlgorithm);

        let mut w = good("terminal");
        w.signature.parameters = Some(der::Any::null());
        assert_rule(&w, LintRule::SignatureAlgorithm);

        let mut w = good("terminal");
        w.subject_public_key_info.algorithm.parameters = Some(der::Any::from(const_oid::db::rfc5912::SECP_256_R_1));
        assert_rule(&w, LintRule::SubjectKey);

        let mut w = good("terminal");
        let mut point = w.subject_public_key_info.subject_public_key.raw_bytes().to_vec();
        point[64] ^= 1;
        w.subject_public_key_info.subject_public_key = BitString::from_bytes(&point).expect("bits");
        assert_rule(&w, LintRule::SubjectKey);

        let mut w = good("terminal");
        w.version = x509_cert::certificate::Version::V2;
        assert_rule(&w, LintRule::VersionNotV3);
    }

    #[test]
    fn extension_rules() {
        use const_oid::db::rfc5280::*;
        let mut w = good("terminal");
        let dup = w.extensions[0].clone();
        w.extensions.push(dup);
        assert_rule(&w, LintRule::DuplicateExtension);

        let mut w = good("terminal");
        set_ext(&mut w, ID_CE_CERTIFICATE_POLICIES, |e| e.critical = true);
        assert_rule(&w, LintRule::UnknownCriticalExtension);

        let mut w = good("terminal");
        remove_ext(&mut w, ID_CE_SUBJECT_KEY_IDENTIFIER);
        assert_rule(&w, LintRule::SkiMissing);

        let mut w = good("terminal");
        set_ext(&mut w, ID_CE_SUBJECT_KEY_IDENTIFIER, |e| {
            e.extn_value = OctetString::new(vec![4, 2, 1, 2]).expect("os")
        });
        assert_rule(&w, LintRule::SkiMismatch);

        let mut w = good("terminal");
        set_ext(&mut w, ID_CE_SUBJECT_KEY_IDENTIFIER, |e| e.extn_value = OctetString::new(vec![0xff]).expect("os"));
        assert_rule(&w, LintRule::ExtensionMalformed);

        let mut w = good("terminal");
        remove_ext(&mut w, ID_CE_AUTHORITY_KEY_IDENTIFIER);
        assert_rule(&w, LintRule::AkiMissing);

        let mut w = good("terminal");
        set_ext(&mut w, ID_CE_AUTHORITY_KEY_IDENTIFIER, |e| {
            e.extn_value = OctetString::new(vec![0x30, 3, 0x80, 1, 9]).expect("os")
        });
        assert_rule(&w, LintRule::AkiMismatch);

        let mut w = good("terminal");
        remove_ext(&mut w, ID_CE_KEY_USAGE);
        assert_rule(&w, LintRule::KeyUsageMissing);

        let mut w = good("terminal");
        set_ext(&mut w, ID_CE_KEY_USAGE, |e| e.critical = false);
        assert_rule(&w, LintRule::KeyUsageNotCritical);
    }

    #[test]
    fn ca_consistency_rules() {
        use const_oid::db::rfc5280::*;

        let bc_ext = |bc: &BasicConstraints, critical: bool| Extension {
            extn_id: ID_CE_BASIC_CONSTRAINTS,
            critical,
            extn_value: der_of(bc),
        };
        let not_ca = BasicConstraints { ca: false, path_len_constraint: None };

        // keyCertSign on a non-CA.
        let mut w = good("terminal");
        w.extensions.insert(0, bc_ext(&not_ca, true));
        let ku = KeyUsage(KeyUsages::DigitalSignature | KeyUsages::KeyCertSign);
        set_ext(&mut w, ID_CE_KEY_USAGE, |e| e.extn_value = der_of(&ku));
        assert_rule(&w, LintRule::KeyUsageInconsistentWithCa);

        // keyCertSign with no basicConstraints at all.
        remove_ext(&mut w, ID_CE_BASIC_CONSTRAINTS);
        assert_rule(&w, LintRule::BasicConstraintsMissing);

        // An end entity that claims cA = TRUE (without keyCertSign) is refused.
        let mut w = good("terminal");
        w.extensions.insert(0, bc_ext(&BasicConstraints { ca: true, path_len_constraint: None }, true));
        assert_rule(&w, LintRule::KeyUsageInconsistentWithCa);

        // An end entity may carry cA = FALSE explicitly (RFC 5280 allows both).
        let mut w = good("terminal");
        w.extensions.insert(0, bc_ext(&not_ca, true));
        lint(&w).expect("explicit cA = FALSE is clean");

        // pathLen on an end entity.
        let mut w = good("terminal");
        w.extensions.insert(0, bc_ext(&BasicConstraints { ca: false, path_len_constraint: Some(0) }, true));
        assert_rule(&w, LintRule::PathLenWithoutCa);

        // A CA whose basicConstraints is not critical, under an issuer with pathLen 0.
        let mut w = good("terminal");
        let bc = BasicConstraints { ca: true, path_len_constraint: None };
        let ku = KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign);
        w.extensions.insert(0, bc_ext(&bc, false));
        set_ext(&mut w, ID_CE_KEY_USAGE, |e| e.extn_value = der_of(&ku));
        let err = lint(&w).expect_err("bad CA");
        assert!(err.has(LintRule::BasicConstraintsNotCritical), "{err}");
        assert!(err.has(LintRule::PathLenExceeded), "{err}");
        // Every finding is reported, with its stable id in the message.
        assert!(err.to_string().contains("[path-len-exceeded]"), "{err}");
    }

    #[test]
    fn unique_identifiers_are_refused() {
        // Append subjectUniqueID [2] before extensions by hand-editing the DER.
        let w = good("terminal");
        let der = w.to_der().expect("der");
        let raw = TbsCertificateInner::<Raw>::from_der(&der).expect("raw");
        fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
            let n = content.len();
            let mut v = vec![tag];
            match n {
                0..=127 => v.push(n as u8),
                128..=255 => v.extend([0x81, n as u8]),
                _ => v.extend([0x82, (n >> 8) as u8, n as u8]),
            }
            v.extend(content);
            v
        }
        let mut body = tlv(0xa0, &raw.version().to_der().expect("version"));
        for part in [
            raw.serial_number().to_der(),
            raw.signature().to_der(),
            raw.issuer().to_der(),
            raw.validity().to_der(),
            raw.subject().to_der(),
            raw.subject_public_key_info().to_der(),
        ] {
            body.extend(part.expect("part"));
        }
        body.extend(tlv(0x82, &[0x00, 0xaa]));
        body.extend(tlv(0xa3, &w.extensions.to_der().expect("exts")));
        let tbs = tlv(0x30, &body);
        let raw = TbsCertificateInner::<Raw>::from_der(&tbs).expect("with unique id");
        let err = lint_tbs(&raw, Some(&issuer())).expect_err("unique id");
        assert!(err.has(LintRule::UniqueIdentifiers), "{err}");
    }
}
