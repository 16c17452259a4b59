//! `policies/roles.toml`: which role may call which method, and the authentication limits.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pki::policy::{PolicyError, Source, parse_toml};
use serde::Deserialize;
use toml::Spanned;

/// The shipped `policies/roles.toml`.
pub const SHIPPED: &str = include_str!("../../policies/roles.toml");

/// The roles a principal can have.
pub const ROLES: [&str; 5] = ["station", "operator", "admin", "auditor", "monitor"];

/// Loaded roles policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Roles {
    methods: BTreeMap<String, BTreeSet<String>>,
    /// Allowed difference between a request's time and ours.
    pub clock_skew: Duration,
    /// Authentication failures per principal or address per minute before refusing.
    pub failures_per_minute: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoles {
    methods: BTreeMap<String, Spanned<Vec<Spanned<String>>>>,
    limits: RawLimits,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    clock_skew_seconds: Spanned<u64>,
    failures_per_minute: Spanned<u32>,
}

impl Roles {
    /// Loads and checks the roles file.
    pub fn load(src: Source<'_>) -> Result<Self, PolicyError> {
        let raw: RawRoles = parse_toml(&src)?;
        let mut methods = BTreeMap::new();
        for (method, roles) in raw.methods {
            if !method.starts_with("/hsca.v1.") || method.matches('/').count() != 2 {
                return Err(PolicyError::spanned(
                    &src,
                    &roles,
                    format!("`{method}` is not a /hsca.v1.Service/Method path"),
                ));
            }
            let mut set = BTreeSet::new();
            for r in roles.get_ref() {
                if !ROLES.contains(&r.get_ref().as_str()) {
                    return Err(PolicyError::spanned(
                        &src,
                        r,
                        format!("unknown role `{}` (known: {})", r.get_ref(), ROLES.join(", ")),
                    ));
                }
                set.insert(r.get_ref().clone());
            }
            methods.insert(method, set);
        }
        let skew = *raw.limits.clock_skew_seconds.get_ref();
        if !(1..=3600).contains(&skew) {
            return Err(PolicyError::spanned(
                &src,
                &raw.limits.clock_skew_seconds,
                "clock_skew_seconds must be 1 to 3600",
            ));
        }
        if *raw.limits.failures_per_minute.get_ref() == 0 {
            return Err(PolicyError::spanned(
                &src,
                &raw.limits.failures_per_minute,
                "failures_per_minute must be at least 1",
            ));
        }
        Ok(Self {
            methods,
            clock_skew: Duration::from_secs(skew),
            failures_per_minute: *raw.limits.failures_per_minute.get_ref(),
        })
    }

    /// The shipped `policies/roles.toml`.
    pub fn embedded_default() -> Result<Self, PolicyError> {
        Self::load(Source { name: "policies/roles.toml", text: SHIPPED })
    }

    /// Whether `role` may call `method`.
    pub fn allows(&self, role: &str, method: &str) -> bool {
        self.methods.get(method).is_some_and(|r| r.contains(role))
    }

    /// When this file does not list `method` at all (a deployment's roles.toml from before the
    /// method existed: refused for everyone), the line the shipped file has for it.
    pub fn missing_line(&self, method: &str) -> Option<&'static str> {
        if self.methods.contains_key(method) {
            return None;
        }
        shipped_line(method)
    }

    /// The shipped file's lines for every method this file does not list, for a warning at start.
    pub fn missing_lines(&self) -> Vec<&'static str> {
        SHIPPED
            .lines()
            .filter_map(|l| l.strip_prefix('"').and_then(|r| r.split_once('"')).map(|(m, _)| m))
            .filter_map(|m| self.missing_line(m))
            .collect()
    }
}

/// The shipped roles.toml's line for `method`.
fn shipped_line(method: &str) -> Option<&'static str> {
    SHIPPED
        .lines()
        .find(|l| l.strip_prefix('"').and_then(|r| r.strip_prefix(method)).is_some_and(|r| r.starts_with("\" =")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../policies/roles.toml");

    fn load(text: &str) -> Result<Roles, PolicyError> {
        Roles::load(Source { name: "roles.toml", text })
    }

    #[test]
    fn shipped_roles_separate_duties() {
        let r = Roles::embedded_default().expect("loads");
        assert!(r.allows("station", "/hsca.v1.CertificateAuthority/IssueTerminalCertificate"));
        assert!(!r.allows("station", "/hsca.v1.Admin/RevokeCertificate"), "a station cannot revoke");
        assert!(
            !r.allows("auditor", "/hsca.v1.CertificateAuthority/IssueTerminalCertificate"),
            "an auditor cannot issue"
        );
        assert!(r.allows("admin", "/hsca.v1.Admin/RevokeCertificate"));
        assert!(!r.allows("admin", "/hsca.v1.Admin/Unlisted"), "unlisted methods are refused");
        assert_eq!(r.clock_skew, Duration::from_secs(300));
    }

    #[test]
    fn shipped_monitor_reaches_holds_revocation_and_the_activation_log_only() {
        let r = Roles::embedded_default().expect("loads");
        let allowed: Vec<&str> =
            r.methods.iter().filter(|(_, roles)| roles.contains("monitor")).map(|(m, _)| m.as_str()).collect();
        assert_eq!(
            allowed,
            [
                "/hsca.v1.Admin/RevokeCertificate",
                "/hsca.v1.Admin/UnrevokeCertificate",
                "/hsca.v1.CertificateAuthority/GetCaChain",
                "/hsca.v1.CertificateAuthority/GetCertificate",
                "/hsca.v1.CertificateAuthority/GetCertificateStatus",
                // Read only: the reference locations of the relocation rule.
                "/hsca.v1.Registry/ListActivationsAfter",
            ]
        );
    }

    #[test]
    fn a_method_an_older_file_lacks_is_refused_and_named_with_its_shipped_line() {
        let line = "\"/hsca.v1.Admin/ListPrincipals\" = [\"admin\"]";
        assert!(SHIPPED.contains(line));
        let older = load(&SHIPPED.replacen(&format!("{line}\n"), "", 1)).expect("loads");
        assert!(!older.allows("admin", "/hsca.v1.Admin/ListPrincipals"), "fails closed");
        assert_eq!(older.missing_line("/hsca.v1.Admin/ListPrincipals"), Some(line));
        assert_eq!(older.missing_lines(), vec![line]);
        let shipped = Roles::embedded_default().expect("loads");
        assert_eq!(shipped.missing_line("/hsca.v1.Admin/ListPrincipals"), None, "listed");
        assert_eq!(shipped.missing_line("/hsca.v1.Admin/Unlisted"), None, "not shipped either");
        assert!(shipped.missing_lines().is_empty());
        let refused = crate::auth::AuthFailure::Forbidden {
            role: "admin".into(),
            method: "/hsca.v1.Admin/ListPrincipals".into(),
            missing_line: older.missing_line("/hsca.v1.Admin/ListPrincipals").map(str::to_owned),
        };
        assert!(refused.to_string().contains(&format!("add `{line}` under [methods]")), "{refused}");
    }

    #[test]
    fn bad_files_name_the_line() {
        let at = |from: &str, to: &str| {
            let line = SHIPPED[..SHIPPED.find(from).expect("present")].matches('\n').count() + 1;
            (load(&SHIPPED.replacen(from, to, 1)).expect_err("refused"), line)
        };
        let (e, line) = at(
            "[\"operator\"]\n\"/hsca.v1.Registry/ListActivations\"",
            "[\"operater\"]\n\"/hsca.v1.Registry/ListActivations\"",
        );
        assert!(e.message.contains("unknown role `operater`") && e.line == line, "{e}");
        let (e, line) = at("\"/hsca.v1.Admin/ListAudit\"", "\"ListAudit\"");
        assert!(e.message.contains("not a /hsca.v1.Service/Method path") && e.line == line, "{e}");
        let (e, line) = at("clock_skew_seconds = 300", "clock_skew_seconds = 0");
        assert!(e.message.contains("1 to 3600") && e.line == line, "{e}");
        let (e, _) = at("failures_per_minute = 10", "failures_per_minute = 10\nretries = 3");
        assert!(e.message.contains("unknown field"), "{e}");
    }
}
