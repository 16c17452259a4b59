//! `ca-server.toml`: where everything is. Relative paths are relative to the file's directory.
//! A vendor HSM is a change of `[hsm]` (module, token, PIN source, profile, environment) only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listening addresses.
    pub server: ServerSection,
    /// The gRPC endpoint's TLS certificate (ECDSA P-256).
    pub tls: TlsSection,
    /// The HSM holding the CA keys.
    pub hsm: HsmSection,
    /// The registry database.
    pub registry: RegistrySection,
    /// Policy files.
    pub policy: PolicySection,
    /// The CA certificates.
    pub ca: CaSection,
    /// Signed audit checkpoints.
    #[serde(default)]
    pub audit: AuditSection,
    /// CRL timing.
    #[serde(default)]
    pub crl: CrlSection,
    /// The OCSP responder.
    #[serde(default)]
    pub ocsp: OcspSection,
}

/// `[ocsp]`: who signs OCSP responses and how long they are valid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OcspSection {
    /// Label of a delegated responder key in the HSM (profile `ocsp-signer`; its certificate is
    /// issued by the server at start and renewed before it expires). Without it the issuing CA
    /// signs responses itself.
    pub key_label: Option<String>,
    /// Where the responder certificate is kept (PEM).
    #[serde(default = "default_ocsp_certificate")]
    pub certificate: PathBuf,
    /// `nextUpdate` − `thisUpdate` of each response, minutes; cached answers are re-signed at half.
    #[serde(default = "default_ocsp_validity_minutes")]
    pub validity_minutes: u64,
    /// Fresh signatures per second for answers that cannot be pre-signed (a request with a
    /// nonce, a serial the CA never issued), 0..=1,000,000. Past it a nonce is ignored (the
    /// pre-signed answer, RFC 8954) and an unknown serial gets `tryLater`.
    #[serde(default = "default_fresh_signatures_per_second")]
    pub fresh_signatures_per_second: u32,
}

/// Above any HSM's signing rate: a larger value is a typo, not a budget.
pub const MAX_FRESH_SIGNATURES_PER_SECOND: u32 = 1_000_000;

fn default_fresh_signatures_per_second() -> u32 {
    crate::ocsp::UNCACHED_SIGNATURES_PER_SECOND
}

impl OcspSection {
    /// Refuses values no deployment means.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.fresh_signatures_per_second > MAX_FRESH_SIGNATURES_PER_SECOND {
            anyhow::bail!(
                "[ocsp] fresh_signatures_per_second must be 0..={MAX_FRESH_SIGNATURES_PER_SECOND}, not {}",
                self.fresh_signatures_per_second
            );
        }
        Ok(())
    }
}

fn default_ocsp_certificate() -> PathBuf {
    "certs/ocsp-signer.pem".into()
}

fn default_ocsp_validity_minutes() -> u64 {
    60
}

impl Default for OcspSection {
    fn default() -> Self {
        Self {
            key_label: None,
            certificate: default_ocsp_certificate(),
            validity_minutes: default_ocsp_validity_minutes(),
            fresh_signatures_per_second: default_fresh_signatures_per_second(),
        }
    }
}

/// `[crl]`: how long a CRL is valid and how often a full one is made without revocations (one is
/// also made within a second of every revocation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlSection {
    /// `nextUpdate` − `thisUpdate`, hours.
    #[serde(default = "default_crl_validity_hours")]
    pub validity_hours: u64,
    /// Seconds between scheduled full CRLs.
    #[serde(default = "default_full_every_seconds")]
    pub full_every_seconds: u64,
    /// Terminal certificates per CRL partition (consecutive issuance ordinals; the partition is
    /// written into each certificate's CRL distribution point through `{partition}`).
    #[serde(default = "default_partition_size")]
    pub partition_size: u64,
}

fn default_partition_size() -> u64 {
    100_000
}

fn default_crl_validity_hours() -> u64 {
    24
}

fn default_full_every_seconds() -> u64 {
    3600
}

impl Default for CrlSection {
    fn default() -> Self {
        Self {
            validity_hours: default_crl_validity_hours(),
            full_every_seconds: default_full_every_seconds(),
            partition_size: default_partition_size(),
        }
    }
}

/// `[audit]`: the HSM key that signs checkpoints of the audit chain, and how often.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// Label of the SM2 audit key in the HSM; without it no checkpoints are signed (and
    /// `audit verify` says so).
    pub key_label: Option<String>,
    /// Seconds between checkpoints (one is also made at shutdown), when the chain has grown.
    #[serde(default = "default_checkpoint_seconds")]
    pub checkpoint_seconds: u64,
    /// A checkpoint is also made once this many entries are not yet covered (checked every
    /// 200 ms, so under heavy load a checkpoint may cover a few more).
    #[serde(default = "default_checkpoint_entries")]
    pub checkpoint_entries: u64,
    /// Directory of the anchor log (`anchors.jsonl`): every checkpoint is also appended there,
    /// fsynced, outside the registry. Put it on other storage than the registry, or ship it off
    /// the machine; `cactl audit verify --anchors` checks a copy.
    #[serde(default = "default_anchor_dir")]
    pub anchor_dir: PathBuf,
}

fn default_checkpoint_seconds() -> u64 {
    60
}

fn default_checkpoint_entries() -> u64 {
    1000
}

fn default_anchor_dir() -> PathBuf {
    "audit-anchors".into()
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            key_label: None,
            checkpoint_seconds: default_checkpoint_seconds(),
            checkpoint_entries: default_checkpoint_entries(),
            anchor_dir: default_anchor_dir(),
        }
    }
}

/// `[server]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// gRPC over TLS, default 127.0.0.1:7443.
    pub grpc: String,
    /// HTTP for health, readiness and metrics (later CRL/OCSP), default 127.0.0.1:7080.
    pub http: String,
}

/// `[tls]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Server certificate chain (PEM).
    pub certificate: PathBuf,
    /// Server private key (PEM, mode 0600).
    pub key: PathBuf,
    /// The CA of the server certificate, for clients (PEM).
    pub ca: PathBuf,
}

/// `[hsm]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmSection {
    /// The PKCS#11 module.
    pub module: PathBuf,
    /// Token label.
    pub token_label: String,
    /// A 0600 file holding the user PIN (else `HSCA_HSM_PIN`).
    pub pin_file: Option<PathBuf>,
    /// `softtoken`, `xipki`, or the path of a vendor profile TOML.
    pub profile: String,
    /// Environment the module reads (e.g. `SOFTTOKEN_CONF`), set before it is loaded; values
    /// that look like relative paths are resolved against the config directory.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// `[registry]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySection {
    /// The redb file (the embedded default). Set this or `url`.
    #[serde(default, skip_serializing_if = "crate::config::path_is_empty")]
    pub path: PathBuf,
    /// A PostgreSQL registry shared by several instances (`postgres://user@host/db`). No
    /// password in the file: use certificate/peer authentication or `PGPASSWORD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// This instance's number (1..=127) among those sharing the registry: the first octet of
    /// every certificate serial it issues, so instances never collide (Boulder, XiPKI do alike).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<u8>,
}

pub(crate) fn path_is_empty(p: &Path) -> bool {
    p.as_os_str().is_empty()
}

/// Which registry a configuration names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryLocation {
    /// A redb file (resolved against the configuration's directory).
    Redb(PathBuf),
    /// A PostgreSQL URL.
    Postgres(String),
}

impl Loaded {
    /// The configured registry: exactly one of `path` and `url`; a URL with a password is
    /// refused (a secret in a plain file).
    pub fn registry_location(&self) -> anyhow::Result<RegistryLocation> {
        let r = &self.config.registry;
        match (&r.url, path_is_empty(&r.path)) {
            (Some(_), false) => anyhow::bail!("[registry] sets both path and url: choose one"),
            (None, true) => anyhow::bail!("[registry] needs path (redb) or url (postgres://…)"),
            (None, false) => Ok(RegistryLocation::Redb(self.path(&r.path))),
            (Some(url), true) => {
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    anyhow::bail!("[registry] url must start with postgres://");
                }
                // userinfo with a colon carries a password
                let authority = url.split_once("://").map_or("", |(_, rest)| rest.split('/').next().unwrap_or(""));
                if authority.split_once('@').is_some_and(|(user, _)| user.contains(':')) {
                    anyhow::bail!("[registry] url holds a password: use PGPASSWORD or certificate authentication");
                }
                Ok(RegistryLocation::Postgres(url.clone()))
            }
        }
    }

    /// Opens the configured registry (PostgreSQL: refused unless its schema is current), and
    /// sets this process's serial prefix from `instance`.
    pub fn open_registry(&self) -> anyhow::Result<registry::Registry> {
        if let Some(i) = self.config.registry.instance
            && !crate::issuer::set_serial_instance(i)
        {
            anyhow::bail!("[registry] instance must be 1..=127 (and one per process), not {i}");
        }
        Ok(match self.registry_location()? {
            RegistryLocation::Redb(path) => registry::Registry::open(&path)?,
            RegistryLocation::Postgres(url) => registry::Registry::open_postgres(&url)?,
        })
    }
}

/// `[policy]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// Directory with `hierarchy.toml`, `profiles.toml`, `serial-rules.toml`, `roles.toml`.
    pub directory: PathBuf,
    /// Whether a terminal must be registered before a station may issue for it.
    pub require_registration: bool,
    /// Whether terminal certificates are issued on the activation hold (certificateHold until a
    /// proof-of-presence activation, or an administrator's manual one, lifts it: REQUIREMENTS T4).
    #[serde(default)]
    pub hold_until_activation: bool,
    /// How long an activation challenge may be used, in seconds (1 to 3600).
    #[serde(default = "default_challenge_seconds")]
    pub activation_challenge_seconds: u64,
    /// Unused, unexpired activation challenges one operator may hold at once (each is a stored
    /// write): past it, `RESOURCE_EXHAUSTED`/`CHALLENGE_LIMIT` until one is used or expires.
    #[serde(default = "default_challenges_per_operator")]
    pub activation_challenges_per_operator: u64,
}

fn default_challenges_per_operator() -> u64 {
    20
}

fn default_challenge_seconds() -> u64 {
    300
}

/// `[ca]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaSection {
    /// Root certificate (PEM).
    pub root: PathBuf,
    /// Issuing CA certificate (PEM).
    pub issuing: PathBuf,
}

/// A loaded configuration and the directory its paths start from.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// Content.
    pub config: Config,
    /// Base directory.
    pub base: PathBuf,
}

impl Loaded {
    /// Reads `path`.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: Config = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        config.ocsp.validate().with_context(|| format!("checking {}", path.display()))?;
        let base = path.parent().map(Path::to_owned).unwrap_or_default();
        Ok(Self { config, base })
    }

    /// A path from the file, resolved.
    pub fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() { p.to_owned() } else { self.base.join(p) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_example_parses_and_requires_registration() {
        let c: Config = toml::from_str(include_str!("../ca-server.production.example.toml")).expect("parses");
        assert!(c.policy.require_registration);
        assert!(c.policy.hold_until_activation, "production holds certificates until activation");
        assert_eq!(c.hsm.pin_file, None);
        assert_eq!(c.hsm.profile, "xipki");
    }

    #[test]
    fn registry_is_a_path_or_a_password_free_url() {
        let with = |registry: &str| {
            let text = include_str!("../ca-server.production.example.toml");
            let start = text.find("[registry]").expect("section");
            let end = text[start + 1..].find("\n[").map_or(text.len(), |e| start + 1 + e);
            let text = format!("{}{registry}\n{}", &text[..start], &text[end..]);
            let config: Config = toml::from_str(&text).expect("parses");
            Loaded { config, base: "/etc/hsca".into() }.registry_location().map_err(|e| e.to_string())
        };
        assert_eq!(with("[registry]\npath = \"r.redb\""), Ok(RegistryLocation::Redb("/etc/hsca/r.redb".into())));
        assert_eq!(
            with("[registry]\nurl = \"postgres://ca@db.lab/registry\""),
            Ok(RegistryLocation::Postgres("postgres://ca@db.lab/registry".into()))
        );
        assert!(with("[registry]\nurl = \"postgres://ca:pw@db.lab/registry\"").is_err_and(|e| e.contains("password")));
        assert!(with("[registry]\npath = \"r.redb\"\nurl = \"postgres://ca@db/r\"").is_err_and(|e| e.contains("both")));
        assert!(with("[registry]").is_err_and(|e| e.contains("needs")));
        assert!(with("[registry]\nurl = \"mysql://x\"").is_err_and(|e| e.contains("postgres://")));
    }

    #[test]
    fn the_ocsp_fresh_signature_budget_is_a_checked_setting() {
        let dir = tempfile::tempdir().expect("tmp");
        let read = |ocsp: &str| {
            let text = format!("{}\n[ocsp]\n{ocsp}\n", include_str!("../ca-server.production.example.toml"));
            let path = dir.path().join("ca-server.toml");
            std::fs::write(&path, text).expect("write");
            Loaded::read(&path).map(|l| l.config.ocsp.fresh_signatures_per_second).map_err(|e| format!("{e:#}"))
        };
        assert_eq!(read(""), Ok(crate::ocsp::UNCACHED_SIGNATURES_PER_SECOND));
        assert_eq!(read("fresh_signatures_per_second = 5"), Ok(5));
        assert_eq!(read("fresh_signatures_per_second = 0"), Ok(0), "0: every nonce is ignored");
        assert_eq!(read("fresh_signatures_per_second = 1000000"), Ok(1_000_000));
        assert!(read("fresh_signatures_per_second = -5").is_err_and(|e| e.contains("fresh_signatures_per_second")));
        assert!(read("fresh_signatures_per_second = 2.5").is_err_and(|e| e.contains("fresh_signatures_per_second")));
        assert!(read("fresh_signatures_per_second = \"many\"").is_err());
        assert!(read("fresh_signatures_per_second = 1000001").is_err_and(|e| e.contains("0..=1000000")));
        assert!(read("fresh_signature_per_second = 5").is_err(), "a misspelt key is refused, not ignored");
    }
}
