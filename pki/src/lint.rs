//! The pre-sign linter: RFC 5280 and GM/T 0015 rules checked on every TBS before it is signed.
//!
//! It works on the lenient [`Raw`] profile of x509-cert so that it can itself report what the
//! strict decoder would only refuse (a negative serial, say). Each finding names its rule.

use std::collections::BTreeSet;
use std::fmt;

use const_oid::AssociatedOid;
use const_oid::db::rfc5280 as oids;
use der::{Decode, Encode};
use x509_cert::certificate::{Raw, TbsCertificateInner, Version};
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier,
};
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
const KNOWN_CRITICAL: [const_oid::ObjectIdentifier; 2] =
    [oids::ID_CE_BASIC_CONSTRAINTS, oids::ID_CE_KEY_USAGE];

/// Lints a TBS certificate; `issuer: None` means self-signed.
pub fn lint_tbs(
    tbs: &TbsCertificateInner<Raw>,
    issuer: Option<&IssuerInfo>,
) -> Result<(), LintError> {
    let mut out = Vec::new();
    let mut fail = |rule, detail: String| out.push(Finding { rule, detail });

    if tbs.version() != Version::V3 {
        fail(
            LintRule::VersionNotV3,
            format!("version is {:?}", tbs.version()),
        );
    }

    // Serial: look at the INTEGER's content octets as encoded.
    match tbs.serial_number().to_der() {
        Ok(der) => {
            let content = &der[2.min(der.len())..];
            if content.first().is_none_or(|b| b & 0x80 != 0) || content.iter().all(|b| *b == 0) {
                fail(
                    LintRule::SerialNotPositive,
                    format!("serial is {}", hex::encode_upper(content)),
                );
            }
            if content.len() > 20 {
                fail(
                    LintRule::SerialTooLong,
                    format!("serial has {} octets", content.len()),
                );
            }
        }
        Err(e) => fail(
            LintRule::SerialNotPositive,
            format!("serial does not encode: {e}"),
        ),
    }

    let validity = tbs.validity();
    for (which, t) in [
        ("notBefore", &validity.not_before),
        ("notAfter", &validity.not_after),
    ] {
        let year = t.to_date_time().year();
        let ok = matches!(
            (t, year < 2050),
            (Time::UtcTime(_), true) | (Time::GeneralTime(_), false)
        );
        if !ok {
            fail(
                LintRule::TimeEncoding,
                format!("{which} in {year} is encoded as {}", time_kind(t)),
            );
        }
    }
    let (nb, na) = (
        from_x509(&validity.not_before),
        from_x509(&validity.not_after),
    );
    if na <= nb {
        fail(
            LintRule::ValidityInverted,
            format!(
                "notAfter {} is not after notBefore {}",
                validity.not_after, validity.not_before
            ),
        );
    }
    if let Some(i) = issuer {
        if nb < crate::time::whole_seconds(i.not_before)
            || na > crate::time::whole_seconds(i.not_after)
        {
            fail(
                LintRule::ValidityOutsideIssuer,
                "validity is not inside the issuer's".into(),
            );
        }
        if tbs.issuer() != &i.name {
            fail(
                LintRule::IssuerNameMismatch,
                format!(
                    "issuer is {}, issuer certificate's subject is {}",
                    tbs.issuer(),
                    i.name
                ),
            );
        }
    } else if tbs.issuer() != tbs.subject() {
        fail(
            LintRule::IssuerNameMismatch,
            "self-signed certificate whose issuer is not its subject".into(),
        );
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
        fail(
            LintRule::UniqueIdentifiers,
            "unique identifiers present".into(),
        );
    }

    let exts = tbs.extensions().map(|e| e.as_slice()).unwrap_or_default();
    let mut seen = BTreeSet::new();
    for e in exts {
        if !seen.insert(e.extn_id) {
            fail(
                LintRule::DuplicateExtension,
                format!("extension {} appears more than once", e.extn_id),
            );
        }
        if e.critical && !KNOWN_CRITICAL.contains(&e.extn_id) {
            fail(
                LintRule::UnknownCriticalExtension,
                format!("extension {} is critical", e.extn_id),
            );
        }
    }
    let find = |oid| {
        exts.iter()
            .find(|e| e.extn_id == oid)
            .map(|e| (e.critical, e.extn_value.as_bytes()))
    };

    let self_key_id = key_identifier(tbs.subject_public_key_info());
    match find(SubjectKeyIdentifier::OID) {
        None => fail(LintRule::SkiMissing, "no subjectKeyIdentifier".into()),
        Some((_, v)) => match SubjectKeyIdentifier::from_der(v) {
            Ok(ski) if ski.0.as_bytes() == self_key_id => {}
            Ok(ski) => fail(
                LintRule::SkiMismatch,
                format!(
                    "SKI {} is not {}",
                    hex::encode(ski.0.as_bytes()),
                    hex::encode(self_key_id)
                ),
            ),
            Err(e) => fail(
                LintRule::ExtensionMalformed,
                format!("subjectKeyIdentifier: {e}"),
            ),
        },
    }
    let expected_aki = issuer.map_or(self_key_id.to_vec(), |i| i.key_id.clone());
    match find(AuthorityKeyIdentifier::OID) {
        None => fail(LintRule::AkiMissing, "no authorityKeyIdentifier".into()),
        Some((_, v)) => match AuthorityKeyIdentifier::from_der(v) {
            Ok(aki)
                if aki
                    .key_identifier
                    .as_ref()
                    .is_some_and(|k| k.as_bytes() == expected_aki) => {}
            Ok(_) => fail(
                LintRule::AkiMismatch,
                format!(
                    "AKI keyIdentifier is not the issuer's {}",
                    hex::encode(&expected_aki)
                ),
            ),
            Err(e) => fail(
                LintRule::ExtensionMalformed,
                format!("authorityKeyIdentifier: {e}"),
            ),
        },
    }
    let ku = match find(KeyUsage::OID) {
        None => {
            fail(LintRule::KeyUsageMissing, "no keyUsage".into());
            None
        }
        Some((critical, v)) => {
            if !critical {
                fail(
                    LintRule::KeyUsageNotCritical,
                    "keyUsage is not critical".into(),
                );
            }
            KeyUsage::from_der(v)
                .map_err(|e| fail(LintRule::ExtensionMalformed, format!("keyUsage: {e}")))
                .ok()
        }
    };
    let bc = match find(BasicConstraints::OID) {
        None => None,
        Some((critical, v)) => {
            let bc = BasicConstraints::from_der(v)
                .map_err(|e| {
                    fail(
                        LintRule::ExtensionMalformed,
                        format!("basicConstraints: {e}"),
                    )
                })
                .ok();
            if bc.as_ref().is_some_and(|b| b.ca) && !critical {
                fail(
                    LintRule::BasicConstraintsNotCritical,
                    "basicConstraints of a CA is not critical".into(),
                );
            }
            bc
        }
    };
    let is_ca = bc.as_ref().is_some_and(|b| b.ca);
    let cert_sign = ku
        .as_ref()
        .is_some_and(|k| k.0.contains(KeyUsages::KeyCertSign));
    if cert_sign && bc.is_none() {
        fail(
            LintRule::BasicConstraintsMissing,
            "keyCertSign without basicConstraints".into(),
        );
    } else if cert_sign != is_ca {
        fail(
            LintRule::KeyUsageInconsistentWithCa,
            format!("cA is {is_ca} but keyCertSign is {cert_sign}"),
        );
    }
    if !is_ca && bc.as_ref().is_some_and(|b| b.path_len_constraint.is_some()) {
        fail(
            LintRule::PathLenWithoutCa,
            "pathLenConstraint on a non-CA certificate".into(),
        );
    }
    if is_ca {
        if let Some(limit) = issuer.and_then(|i| i.path_len) {
            let own = bc.as_ref().and_then(|b| b.path_len_constraint);
            if limit == 0 || own.is_none_or(|own| own >= limit) {
                fail(
                    LintRule::PathLenExceeded,
                    format!("issuer allows {limit} more CA certificates below it"),
                );
            }
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
