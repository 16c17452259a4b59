//! Policy files: the CA hierarchy, certificate profiles and terminal serial-number rules.
//!
//! `pki` does no I/O: callers hand over each file's name and text ([`Source`]); every error
//! names the file, line and column it comes from. [`PolicySet::embedded_default`] is the
//! shipped `policies/` directory compiled in, for tests and examples.

use std::collections::BTreeMap;
use std::time::Duration;

use const_oid::ObjectIdentifier;
use serde::Deserialize;
use toml::Spanned;
use x509_cert::ext::pkix::KeyUsages;

use crate::alg::SignerId;
use crate::name::{SubjectAttr, SubjectTemplate};
use crate::serial::{CheckAlgorithm, FieldFormat, SerialField, SerialRule};

/// One policy file: its name (for error messages) and its text.
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    /// File name as the operator knows it, e.g. `policies/profiles.toml`.
    pub name: &'a str,
    /// The TOML text.
    pub text: &'a str,
}

/// A policy file that does not load, with the place of the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct PolicyError {
    /// File name.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl PolicyError {
    /// An error at byte `offset` of `src`.
    pub fn at(src: &Source<'_>, offset: usize, message: impl Into<String>) -> Self {
        let before = &src.text[..offset.min(src.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Self { file: src.name.to_owned(), line, column, message: message.into() }
    }

    /// An error at the place of a spanned value.
    pub fn spanned<T>(src: &Source<'_>, v: &Spanned<T>, message: impl Into<String>) -> Self {
        Self::at(src, v.span().start, message)
    }
}

/// Parses a policy file, with syntax errors placed on their line; other policy files (the CA
/// server's roles) use it too.
pub fn parse_toml<T: for<'de> Deserialize<'de>>(src: &Source<'_>) -> Result<T, PolicyError> {
    toml::from_str(src.text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        PolicyError::at(src, offset, e.message().trim_end().to_owned())
    })
}

/// The shipped policy files (file name, text): hierarchy, profiles, serial rules.
pub const EMBEDDED: [(&str, &str); 3] = [
    ("policies/hierarchy.toml", include_str!("../../policies/hierarchy.toml")),
    ("policies/profiles.toml", include_str!("../../policies/profiles.toml")),
    ("policies/serial-rules.toml", include_str!("../../policies/serial-rules.toml")),
];

/// The profile names every policy must define.
pub const REQUIRED_PROFILES: [&str; 7] =
    ["terminal", "station", "operator", "admin", "auditor", "issuing-ca", "root-ca"];

/// A certificate profile: everything about a certificate that is decided by policy, not by the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertProfile {
    /// Profile name, e.g. `terminal`.
    pub name: String,
    /// Subject name template.
    pub subject: SubjectTemplate,
    /// Lifetime from `notBefore` (before clipping to the issuer's validity).
    pub validity: Duration,
    /// How far `notBefore` is set before the issuing time, to tolerate relying parties' clock skew.
    pub backdate: Duration,
    /// Key usage bits (always written, critical).
    pub key_usage: x509_cert::ext::pkix::KeyUsage,
    /// Extended key usage OIDs (written when non-empty).
    pub extended_key_usage: Vec<ObjectIdentifier>,
    /// Certificate policy OIDs (written when non-empty).
    pub policies: Vec<ObjectIdentifier>,
    /// CRL distribution point URLs.
    pub crl_distribution_points: Vec<String>,
    /// OCSP responder URLs (AIA).
    pub ocsp_urls: Vec<String>,
    /// CA-issuers URLs (AIA).
    pub ca_issuers_urls: Vec<String>,
    /// `Some` for CA profiles: the path-length constraint, if any.
    pub ca: Option<Option<u8>>,
    /// Signer ID for SM2 signatures made with keys certified under this profile.
    pub signer_id: SignerId,
    /// Whether certificates carry id-pkix-ocsp-nocheck (RFC 6960 §4.2.2.2.1): for a delegated
    /// OCSP responder, whose own status relying parties need not check.
    pub ocsp_nocheck: bool,
    /// Which CRL a `{partition}` distribution point names.
    pub crl_scope: CrlScope,
}

/// Which CRL certificates name in their CRL distribution point (`crl_scope` in `profiles.toml`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CrlScope {
    /// `partition`: the certificate's partition CRL (small; it carries a critical
    /// issuingDistributionPoint, which GmSSL 3.3 cannot read).
    #[default]
    Partition,
    /// `full`: the full CRL, `{partition}` and a `-` before it taken out of the URL (readable
    /// by every relying-party stack, but it grows with every revocation of the CA).
    Full,
}

impl CertProfile {
    /// Whether certificates of this profile are CA certificates.
    pub fn is_ca(&self) -> bool {
        self.ca.is_some()
    }
}

/// One CA of the hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaSpec {
    /// The `{name}` placed in the profile's subject template.
    pub name: String,
    /// The profile its certificate is made with.
    pub profile: String,
    /// Label of its key in the HSM.
    pub key_label: String,
}

/// The CA hierarchy: a root and the issuing CA under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    /// The root CA.
    pub root: CaSpec,
    /// The online issuing CA.
    pub issuing: CaSpec,
}

/// All loaded, cross-checked policy.
#[derive(Clone, Debug)]
pub struct PolicySet {
    /// The CA hierarchy.
    pub hierarchy: Hierarchy,
    /// Profiles by name.
    pub profiles: BTreeMap<String, CertProfile>,
    /// Serial-number rules by name.
    pub serial_rules: BTreeMap<String, SerialRule>,
    /// The rule terminals are checked against (`default` in `serial-rules.toml`).
    pub terminal_serial_rule: SerialRule,
}

impl PolicySet {
    /// Loads and cross-checks the three policy files.
    pub fn load(hierarchy: Source<'_>, profiles: Source<'_>, serial_rules: Source<'_>) -> Result<Self, PolicyError> {
        let profile_map = load_profiles(&profiles)?;
        let hierarchy = load_hierarchy(&hierarchy, &profile_map)?;
        let (serial_rules, terminal_serial_rule) = load_serial_rules(&serial_rules)?;
        Ok(Self { hierarchy, profiles: profile_map, serial_rules, terminal_serial_rule })
    }

    /// The shipped `policies/` files, compiled in.
    pub fn embedded_default() -> Result<Self, PolicyError> {
        let [h, p, r] = EMBEDDED;
        Self::load(Source { name: h.0, text: h.1 }, Source { name: p.0, text: p.1 }, Source { name: r.0, text: r.1 })
    }

    /// Loads `hierarchy.toml`, `profiles.toml` and `serial-rules.toml` as read from a directory
    /// (the caller reads the files; `names` are for error messages).
    pub fn load_texts(names: [&str; 3], texts: [&str; 3]) -> Result<Self, PolicyError> {
        Self::load(
            Source { name: names[0], text: texts[0] },
            Source { name: names[1], text: texts[1] },
            Source { name: names[2], text: texts[2] },
        )
    }

    /// A profile by name.
    pub fn profile(&self, name: &str) -> Option<&CertProfile> {
        self.profiles.get(name)
    }

    /// The rule terminals are checked against.
    pub fn serial_rule(&self) -> &SerialRule {
        &self.terminal_serial_rule
    }
}

// ---- profiles -------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfilesFile {
    profile: BTreeMap<String, Spanned<RawProfile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    subject: Spanned<Vec<(Spanned<String>, Spanned<String>)>>,
    validity_days: Spanned<u32>,
    #[serde(default)]
    backdate_minutes: u32,
    key_usage: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    extended_key_usage: Vec<Spanned<String>>,
    #[serde(default)]
    policies: Vec<Spanned<String>>,
    #[serde(default)]
    crl_distribution_points: Vec<Spanned<String>>,
    #[serde(default)]
    ocsp: Vec<Spanned<String>>,
    #[serde(default)]
    ca_issuers: Vec<Spanned<String>>,
    #[serde(default)]
    ca: Option<Spanned<bool>>,
    #[serde(default)]
    path_len: Option<Spanned<u8>>,
    #[serde(default)]
    signer_id: Option<Spanned<String>>,
    #[serde(default)]
    ocsp_nocheck: bool,
    #[serde(default)]
    crl_scope: Option<Spanned<String>>,
}

fn load_profiles(src: &Source<'_>) -> Result<BTreeMap<String, CertProfile>, PolicyError> {
    let file: ProfilesFile = parse_toml(src)?;
    for required in REQUIRED_PROFILES {
        if !file.profile.contains_key(required) {
            return Err(PolicyError::at(src, 0, format!("profile `{required}` is missing")));
        }
    }
    let mut out = BTreeMap::new();
    for (name, raw) in file.profile {
        let profile = load_profile(src, &name, &raw)?;
        out.insert(name, profile);
    }
    Ok(out)
}

fn load_profile(src: &Source<'_>, name: &str, spanned: &Spanned<RawProfile>) -> Result<CertProfile, PolicyError> {
    let raw = spanned.get_ref();
    let is_ca = raw.ca.as_ref().is_some_and(|c| *c.get_ref());
    if let (false, Some(pl)) = (is_ca, &raw.path_len) {
        return Err(PolicyError::spanned(src, pl, "path_len is only allowed with ca = true"));
    }

    let mut attrs = Vec::new();
    for (attr, value) in raw.subject.get_ref() {
        let kind = SubjectAttr::from_name(attr.get_ref()).ok_or_else(|| {
            PolicyError::spanned(src, attr, format!("unknown subject attribute `{}`", attr.get_ref()))
        })?;
        SubjectTemplate::check_value(kind, value.get_ref()).map_err(|m| PolicyError::spanned(src, value, m))?;
        attrs.push((kind, value.get_ref().clone()));
    }
    if attrs.is_empty() {
        return Err(PolicyError::spanned(src, &raw.subject, "subject must not be empty"));
    }

    if *raw.validity_days.get_ref() == 0 {
        return Err(PolicyError::spanned(src, &raw.validity_days, "validity_days must be at least 1"));
    }

    let mut bits = flagset::FlagSet::<KeyUsages>::default();
    for ku in raw.key_usage.get_ref() {
        let bit = key_usage_bit(ku.get_ref())
            .ok_or_else(|| PolicyError::spanned(src, ku, format!("unknown key usage `{}`", ku.get_ref())))?;
        bits |= bit;
    }
    if bits.is_empty() {
        return Err(PolicyError::spanned(src, &raw.key_usage, "key_usage must not be empty"));
    }
    let signs_certs = bits.contains(KeyUsages::KeyCertSign);
    if is_ca != signs_certs {
        let msg = if is_ca { "a CA profile needs keyCertSign" } else { "keyCertSign needs ca = true" };
        return Err(PolicyError::spanned(src, &raw.key_usage, msg));
    }
    if !is_ca && bits.contains(KeyUsages::CRLSign) {
        return Err(PolicyError::spanned(src, &raw.key_usage, "cRLSign needs ca = true"));
    }

    let extended_key_usage = raw
        .extended_key_usage
        .iter()
        .map(|e| {
            eku_oid(e.get_ref())
                .ok_or_else(|| PolicyError::spanned(src, e, format!("unknown extended key usage `{}`", e.get_ref())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let policies = raw
        .policies
        .iter()
        .map(|p| {
            ObjectIdentifier::new(p.get_ref())
                .map_err(|_| PolicyError::spanned(src, p, format!("`{}` is not a dotted OID", p.get_ref())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let urls = |list: &[Spanned<String>]| {
        list.iter()
            .map(|u| {
                let s = u.get_ref();
                let ok = (s.starts_with("http://") || s.starts_with("https://"))
                    && s.is_ascii()
                    && !s.contains(char::is_whitespace);
                if ok {
                    Ok(s.clone())
                } else {
                    Err(PolicyError::spanned(src, u, format!("`{s}` is not an http(s) URL")))
                }
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let signer_id = match &raw.signer_id {
        None => SignerId::default(),
        Some(id) => SignerId::new(id.get_ref().clone()).map_err(|e| PolicyError::spanned(src, id, e.to_string()))?,
    };
    if name.is_empty() {
        return Err(PolicyError::spanned(src, spanned, "profile name must not be empty"));
    }
    let crl_scope = match raw.crl_scope.as_ref().map(|s| (s, s.get_ref().as_str())) {
        None | Some((_, "partition")) => CrlScope::Partition,
        Some((_, "full")) => CrlScope::Full,
        Some((s, other)) => {
            let msg = format!("unknown crl_scope `{other}` (accepted: \"partition\", \"full\")");
            return Err(PolicyError::spanned(src, s, msg));
        }
    };
    Ok(CertProfile {
        name: name.to_owned(),
        subject: SubjectTemplate::new(attrs),
        validity: Duration::from_secs(u64::from(*raw.validity_days.get_ref()) * 86_400),
        backdate: Duration::from_secs(u64::from(raw.backdate_minutes) * 60),
        key_usage: x509_cert::ext::pkix::KeyUsage(bits),
        extended_key_usage,
        policies,
        crl_distribution_points: urls(&raw.crl_distribution_points)?,
        ocsp_urls: urls(&raw.ocsp)?,
        ca_issuers_urls: urls(&raw.ca_issuers)?,
        ca: is_ca.then(|| raw.path_len.as_ref().map(|p| *p.get_ref())),
        signer_id,
        ocsp_nocheck: raw.ocsp_nocheck,
        crl_scope,
    })
}

fn key_usage_bit(name: &str) -> Option<KeyUsages> {
    Some(match name {
        "digitalSignature" => KeyUsages::DigitalSignature,
        "nonRepudiation" | "contentCommitment" => KeyUsages::NonRepudiation,
        "keyEncipherment" => KeyUsages::KeyEncipherment,
        "dataEncipherment" => KeyUsages::DataEncipherment,
        "keyAgreement" => KeyUsages::KeyAgreement,
        "keyCertSign" => KeyUsages::KeyCertSign,
        "cRLSign" => KeyUsages::CRLSign,
        _ => return None,
    })
}

fn eku_oid(name: &str) -> Option<ObjectIdentifier> {
    use const_oid::db::rfc5280 as r;
    Some(match name {
        "serverAuth" => r::ID_KP_SERVER_AUTH,
        "clientAuth" => r::ID_KP_CLIENT_AUTH,
        "codeSigning" => r::ID_KP_CODE_SIGNING,
        "emailProtection" => r::ID_KP_EMAIL_PROTECTION,
        "timeStamping" => r::ID_KP_TIME_STAMPING,
        "OCSPSigning" => r::ID_KP_OCSP_SIGNING,
        dotted if dotted.starts_with(|c: char| c.is_ascii_digit()) => ObjectIdentifier::new(dotted).ok()?,
        _ => return None,
    })
}

// ---- hierarchy ------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HierarchyFile {
    root: RawCa,
    issuing: RawCa,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCa {
    name: Spanned<String>,
    profile: Spanned<String>,
    key_label: Spanned<String>,
}

fn load_hierarchy(src: &Source<'_>, profiles: &BTreeMap<String, CertProfile>) -> Result<Hierarchy, PolicyError> {
    let file: HierarchyFile = parse_toml(src)?;
    let ca = |raw: &RawCa| -> Result<(CaSpec, &CertProfile), PolicyError> {
        let profile = profiles.get(raw.profile.get_ref()).ok_or_else(|| {
            PolicyError::spanned(src, &raw.profile, format!("no profile named `{}`", raw.profile.get_ref()))
        })?;
        if !profile.is_ca() {
            return Err(PolicyError::spanned(
                src,
                &raw.profile,
                format!("profile `{}` is not a CA profile", profile.name),
            ));
        }
        for (field, value) in [(&raw.name, "name"), (&raw.key_label, "key_label")] {
            if field.get_ref().trim().is_empty() {
                return Err(PolicyError::spanned(src, field, format!("{value} must not be empty")));
            }
        }
        let spec = CaSpec {
            name: raw.name.get_ref().clone(),
            profile: raw.profile.get_ref().clone(),
            key_label: raw.key_label.get_ref().clone(),
        };
        Ok((spec, profile))
    };
    let (root, root_profile) = ca(&file.root)?;
    let (issuing, issuing_profile) = ca(&file.issuing)?;
    if root.key_label == issuing.key_label {
        return Err(PolicyError::spanned(src, &file.issuing.key_label, "the issuing CA needs its own key_label"));
    }
    if let (Some(Some(root_len)), Some(issuing_len)) = (root_profile.ca, issuing_profile.ca)
        && issuing_len.is_none_or(|l| l >= root_len)
    {
        return Err(PolicyError::spanned(
            src,
            &file.issuing.profile,
            format!("issuing CA path_len must be below the root's ({root_len})"),
        ));
    }
    Ok(Hierarchy { root, issuing })
}

// ---- serial-number rules --------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SerialRulesFile {
    default: Spanned<String>,
    rule: BTreeMap<String, RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    check: Spanned<String>,
    manufacturer_field: Spanned<String>,
    fields: Spanned<Vec<Spanned<RawField>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    name: String,
    len: Spanned<usize>,
    #[serde(default)]
    charset: Option<Spanned<String>>,
    #[serde(default)]
    format: Option<Spanned<String>>,
}

fn load_serial_rules(src: &Source<'_>) -> Result<(BTreeMap<String, SerialRule>, SerialRule), PolicyError> {
    let file: SerialRulesFile = parse_toml(src)?;
    let mut rules = BTreeMap::new();
    for (name, raw) in &file.rule {
        let check = match raw.check.get_ref().as_str() {
            "iso7064-mod37-36" => CheckAlgorithm::Iso7064Mod37_36,
            "iso7064-mod11-10" => CheckAlgorithm::Iso7064Mod11_10,
            other => {
                return Err(PolicyError::spanned(
                    src,
                    &raw.check,
                    format!("unknown check algorithm `{other}` (iso7064-mod37-36 or iso7064-mod11-10)"),
                ));
            }
        };
        let alphabet = check.alphabet();
        let mut fields = Vec::new();
        for (i, f) in raw.fields.get_ref().iter().enumerate() {
            let rf = f.get_ref();
            if *rf.len.get_ref() == 0 {
                return Err(PolicyError::spanned(src, &rf.len, "field length must be at least 1"));
            }
            let format = match (&rf.charset, &rf.format) {
                (Some(cs), None) => {
                    let set = parse_charset(cs.get_ref()).map_err(|m| PolicyError::spanned(src, cs, m))?;
                    if let Some(c) = set.iter().find(|c| !alphabet.contains(c)) {
                        return Err(PolicyError::spanned(
                            src,
                            cs,
                            format!("{c:?} is outside the check algorithm's alphabet"),
                        ));
                    }
                    FieldFormat::Charset(set)
                }
                (None, Some(fmt)) => match fmt.get_ref().as_str() {
                    "YYMM" if *rf.len.get_ref() == 4 => FieldFormat::YearMonth,
                    "YYMM" => {
                        return Err(PolicyError::spanned(src, &rf.len, "a YYMM field has 4 characters"));
                    }
                    "check" if *rf.len.get_ref() == 1 && i + 1 == raw.fields.get_ref().len() => FieldFormat::Check,
                    "check" => {
                        return Err(PolicyError::spanned(
                            src,
                            fmt,
                            "the check field must be last and 1 character long",
                        ));
                    }
                    other => {
                        return Err(PolicyError::spanned(
                            src,
                            fmt,
                            format!("unknown field format `{other}` (YYMM or check)"),
                        ));
                    }
                },
                _ => {
                    return Err(PolicyError::spanned(src, f, "a field needs exactly one of `charset` or `format`"));
                }
            };
            fields.push(SerialField { name: rf.name.clone(), len: *rf.len.get_ref(), format });
        }
        if !fields.iter().any(|f| f.format == FieldFormat::Check) {
            return Err(PolicyError::spanned(src, &raw.fields, "the rule needs a last field with format = \"check\""));
        }
        if !fields.iter().any(|f| &f.name == raw.manufacturer_field.get_ref()) {
            return Err(PolicyError::spanned(
                src,
                &raw.manufacturer_field,
                format!("no field named `{}`", raw.manufacturer_field.get_ref()),
            ));
        }
        rules.insert(
            name.clone(),
            SerialRule {
                name: name.clone(),
                fields,
                check,
                manufacturer_field: raw.manufacturer_field.get_ref().clone(),
            },
        );
    }
    let default = rules.get(file.default.get_ref()).cloned().ok_or_else(|| {
        PolicyError::spanned(src, &file.default, format!("no rule named `{}`", file.default.get_ref()))
    })?;
    Ok((rules, default))
}

/// Parses `0-9A-Z`-style character sets: single characters and inclusive ranges.
fn parse_charset(spec: &str) -> Result<Vec<char>, String> {
    let chars: Vec<char> = spec.chars().collect();
    let mut set = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if i + 2 < chars.len() && chars[i + 1] == '-' {
            let (lo, hi) = (chars[i], chars[i + 2]);
            if lo > hi {
                return Err(format!("range {lo}-{hi} is empty"));
            }
            set.extend(lo..=hi);
            i += 3;
        } else {
            set.push(chars[i]);
            i += 1;
        }
    }
    if set.is_empty() {
        return Err("charset must not be empty".into());
    }
    set.sort_unstable();
    set.dedup();
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HIERARCHY: &str = include_str!("../../policies/hierarchy.toml");
    const PROFILES: &str = include_str!("../../policies/profiles.toml");
    const RULES: &str = include_str!("../../policies/serial-rules.toml");

    fn load(h: &str, p: &str, r: &str) -> Result<PolicySet, PolicyError> {
        PolicySet::load(
            Source { name: "hierarchy.toml", text: h },
            Source { name: "profiles.toml", text: p },
            Source { name: "serial-rules.toml", text: r },
        )
    }

    /// Replaces `from` (which must occur) and returns the 1-based line it was on.
    fn edit(text: &str, from: &str, to: &str) -> (String, usize) {
        let at = text.find(from).unwrap_or_else(|| panic!("{from:?} not in policy"));
        (text.replacen(from, to, 1), text[..at].matches('\n').count() + 1)
    }

    fn profile_err(from: &str, to: &str) -> (PolicyError, usize) {
        let (p, line) = edit(PROFILES, from, to);
        (load(HIERARCHY, &p, RULES).expect_err("must fail"), line)
    }

    #[test]
    fn shipped_policy_loads() {
        let set = load(HIERARCHY, PROFILES, RULES).expect("loads");
        for name in REQUIRED_PROFILES {
            assert!(set.profile(name).is_some(), "{name}");
        }
        let terminal = set.profile("terminal").expect("terminal");
        assert!(!terminal.is_ca());
        assert_eq!(terminal.signer_id.as_str(), crate::DEFAULT_SIGNER_ID);
        assert_eq!(set.profile("root-ca").and_then(|p| p.ca), Some(Some(1)));
        assert_eq!(set.serial_rule().len(), 16);
    }

    #[test]
    fn errors_point_at_the_line() {
        let cases = [
            (
                "key_usage = [\"digitalSignature\"]\nextended_key_usage = [\"clientAuth\"]",
                "key_usage = [\"digitalSignatur\"]\nextended_key_usage = [\"clientAuth\"]",
                "unknown key usage",
            ),
            (
                "extended_key_usage = [\"clientAuth\"]",
                "extended_key_usage = [\"clientAuthh\"]",
                "unknown extended key usage",
            ),
            ("policies = [\"1.3.6.1.5.5.7.13.2\"]", "policies = [\"1.3.x\"]", "not a dotted OID"),
            ("ocsp = [\"http://127.0.0.1:7080/ocsp\"]", "ocsp = [\"ftp://x\"]", "not an http(s) URL"),
            ("validity_days = 1825", "validity_days = 0", "validity_days must be at least 1"),
            (
                "[\"OU\", \"Terminal Class {class}\"]",
                "[\"XX\", \"Terminal Class {class}\"]",
                "unknown subject attribute",
            ),
            ("Terminal Class {class}", "Terminal Class {klass}", "unknown placeholder"),
            (
                "[[\"C\", \"CN\"], [\"O\", \"{manufacturer}\"]",
                "[[\"C\", \"China\"], [\"O\", \"{manufacturer}\"]",
                "two-letter country",
            ),
            (
                "key_usage = [\"keyCertSign\", \"cRLSign\"]",
                "key_usage = [\"cRLSign\"]",
                "a CA profile needs keyCertSign",
            ),
            ("validity_days = 1825", "validity_days = 1825\npath_len = 2", "path_len is only allowed"),
            ("validity_days = 1825", "validity_days = 1825\nsignre_id = \"x\"", "unknown field"),
            ("validity_days = 1825", "validity_days = \"long\"", "invalid type"),
            ("crl_scope = \"partition\"", "crl_scope = \"Full\"", "unknown crl_scope `Full`"),
        ];
        for (from, to, want) in cases {
            let (err, line) = profile_err(from, to);
            assert!(err.message.contains(want), "{to:?}: got {err}");
            assert_eq!(err.file, "profiles.toml");
            // The error is on the edited line or, for a multi-line edit, the one after.
            assert!(
                err.line == line || err.line == line + 1,
                "{to:?}: error at line {}, edit at line {line}: {err}",
                err.line
            );
            assert!(err.column > 1 || err.message.contains("unknown field"), "{err}");
        }
    }

    #[test]
    fn shipped_profiles_stay_within_gmssl_validity_limit() {
        // GmSSL 3.3 (X509_VALIDITY_MAX_DAYS) refuses a certificate valid for longer, root included.
        let set = load(HIERARCHY, PROFILES, RULES).expect("shipped policy");
        for (name, p) in &set.profiles {
            assert!(p.validity + p.backdate <= Duration::from_secs(3653 * 86_400), "{name}: {:?}", p.validity);
        }
    }

    #[test]
    fn toml_syntax_error_has_line() {
        let (p, line) = edit(PROFILES, "validity_days = 1825", "validity_days = = 1825");
        let err = load(HIERARCHY, &p, RULES).expect_err("syntax");
        assert_eq!(err.line, line, "{err}");
    }

    #[test]
    fn missing_profile_is_refused() {
        let p = PROFILES.replace("[profile.auditor]", "[profile.auditors]");
        let err = load(HIERARCHY, &p, RULES).expect_err("missing");
        assert!(err.message.contains("profile `auditor` is missing"), "{err}");
    }

    #[test]
    fn hierarchy_is_cross_checked() {
        let cases = [
            ("profile = \"issuing-ca\"", "profile = \"issuing\"", "no profile named"),
            ("profile = \"issuing-ca\"", "profile = \"terminal\"", "not a CA profile"),
            ("key_label = \"hsca-issuing-ca-1\"", "key_label = \"hsca-root-ca\"", "own key_label"),
            ("name = \"HSCA SM2 Root CA\"", "name = \" \"", "name must not be empty"),
        ];
        for (from, to, want) in cases {
            let (h, line) = edit(HIERARCHY, from, to);
            let err = load(&h, PROFILES, RULES).expect_err("must fail");
            assert!(err.message.contains(want) && err.line == line, "{to:?}: {err} (want line {line})");
        }
        let (p, _) = edit(PROFILES, "path_len = 0", "path_len = 1");
        let err = load(HIERARCHY, &p, RULES).expect_err("path_len");
        assert!(err.message.contains("below the root"), "{err}");
    }

    #[test]
    fn serial_rules_are_checked() {
        let cases = [
            ("check = \"iso7064-mod37-36\"", "check = \"luhn\"", "unknown check algorithm"),
            ("manufacturer_field = \"manufacturer\"", "manufacturer_field = \"maker\"", "no field named"),
            (
                "charset = \"0-9A-Z\" },\n    { name = \"model\"",
                "charset = \"0-9a-z\" },\n    { name = \"model\"",
                "outside the check algorithm's alphabet",
            ),
            ("charset = \"0-9\" }", "charset = \"9-0\" }", "range 9-0 is empty"),
            ("format = \"YYMM\"", "format = \"YYYYMM\"", "unknown field format"),
            ("len = 4, format = \"YYMM\"", "len = 6, format = \"YYMM\"", "4 characters"),
            ("len = 5, charset", "len = 0, charset", "at least 1"),
            ("default = \"hsts-example\"", "default = \"nope\"", "no rule named"),
        ];
        for (from, to, want) in cases {
            let (r, line) = edit(RULES, from, to);
            let err = load(HIERARCHY, PROFILES, &r).expect_err("must fail");
            assert!(err.message.contains(want), "{to:?}: {err}");
            assert_eq!(err.line, line, "{to:?}: {err}");
        }
        let r = RULES.replace("    { name = \"check\", len = 1, format = \"check\" },\n", "");
        assert!(load(HIERARCHY, PROFILES, &r).expect_err("no check").message.contains("needs a last field"));
        let r = RULES.replace(
            "{ name = \"model\", len = 2, charset = \"0-9\" },",
            "{ name = \"model\", len = 2, charset = \"0-9\", format = \"YYMM\" },",
        );
        assert!(load(HIERARCHY, PROFILES, &r).expect_err("both").message.contains("exactly one of"));
    }
}
