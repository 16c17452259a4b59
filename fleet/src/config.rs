//! `fleet-server.toml`, and `fleet-server init`, which writes it. Relative paths are relative to
//! the file's directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listening addresses.
    pub server: Server,
    /// The gRPC endpoint's TLS certificate (ECDSA P-256: rustls has no SM2).
    pub tls: Tls,
    /// The service's own store.
    pub store: StoreSection,
    /// The rules.
    pub policy: PolicySection,
    /// How the service reaches the CA.
    pub ca: CaSection,
    /// Where new alerts are POSTed, if anywhere.
    #[serde(default)]
    pub webhook: Option<WebhookSection>,
}

/// `[webhook]`: each new alert is POSTed as JSON (the `cactl alerts show --json` shape).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSection {
    /// `http://host:port/path` (plain HTTP: put a TLS-terminating relay in front for anything else).
    pub url: String,
    /// Attempts per alert, with doubling pauses from one second.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
}

fn default_attempts() -> u32 {
    5
}

/// `[server]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// gRPC over TLS (heartbeats, alerts).
    pub grpc: String,
    /// HTTP: /healthz, /readyz, /metrics.
    pub http: String,
    /// Terminal keys to keep with precomputed multiples (88 KB each; their heartbeats verify in
    /// about a third of the CPU time): the first this many certificates seen. 0: none.
    #[serde(default)]
    pub precomputed_keys: usize,
}

/// `[tls]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Server certificate (PEM).
    pub certificate: PathBuf,
    /// Server key (PEM, mode 0600).
    pub key: PathBuf,
    /// The CA of the server certificate, for terminals and cactl (PEM).
    pub ca: PathBuf,
}

/// `[store]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// The redb file.
    pub path: PathBuf,
}

/// `[policy]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// The rules file (`policies/fleet.toml`).
    pub file: PathBuf,
}

/// `[ca]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaSection {
    /// The identity file of the service's `monitor` principal (made by `cactl principal add
    /// --role monitor`): CA URL, TLS CA, pinned root, certificate, encrypted key, passphrase file.
    pub identity: PathBuf,
    /// How long what the CA said of a terminal certificate (good, revoked) is trusted before it
    /// is asked again, seconds (only without a fresh CRL: see `crl_url`).
    #[serde(default = "default_status_ttl")]
    pub status_ttl_seconds: u64,
    /// The CA's full CRL (`http://…/crl/issuing.crl`), the source of revocation status for all
    /// terminals at once; default: the CRL distribution point of the monitor's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_url: Option<String>,
    /// How often the CRL is fetched again, seconds: a revocation made by someone else than this
    /// service is seen within this long (its own holds and revocations count at once).
    #[serde(default = "default_crl_refresh")]
    pub crl_refresh_seconds: u64,
    /// How often the CA's activation log is read after the last activation seen, seconds: an
    /// activation becomes its terminal's reference location within this long.
    #[serde(default = "default_crl_refresh")]
    pub activation_refresh_seconds: u64,
}

fn default_status_ttl() -> u64 {
    300
}

fn default_crl_refresh() -> u64 {
    30
}

/// A configuration and the directory its paths start from.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// Content.
    pub config: Config,
    /// Base directory.
    pub base: PathBuf,
}

impl Loaded {
    /// Reads `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: Config = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Ok(Self { config, base: path.parent().map(Path::to_owned).unwrap_or_default() })
    }

    /// A path from the file, resolved.
    pub fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() { p.to_owned() } else { self.base.join(p) }
    }
}

/// What `init` made.
pub struct Made {
    /// The configuration file.
    pub config: PathBuf,
    /// The TLS CA terminals and cactl must trust.
    pub tls_ca: PathBuf,
}

/// Creates a new service directory: TLS certificate and key, the shipped rules, the
/// configuration naming the monitor identity. Refuses a directory that already has one.
pub fn init(dir: &Path, identity: &Path, grpc: &str, http: &str) -> Result<Made> {
    let config = dir.join("fleet-server.toml");
    anyhow::ensure!(!config.exists(), "{} exists: this directory already holds a fleet service", config.display());
    let identity =
        std::fs::canonicalize(identity).with_context(|| format!("monitor identity {}", identity.display()))?;
    proto::identity::Identity::load(&identity).context("monitor identity")?;
    for sub in ["tls", "policies", "secrets"] {
        std::fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {}", dir.join(sub).display()))?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("secrets"), std::fs::Permissions::from_mode(0o700))?;
    }
    // Its own TLS CA: terminals trust the fleet endpoint, not the CA's gRPC endpoint.
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca.distinguished_name.push(rcgen::DnType::CommonName, "HSCA fleet TLS CA");
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    leaf.distinguished_name.push(rcgen::DnType::CommonName, "fleet-server");
    std::fs::write(dir.join("tls/ca.pem"), ca_pem)?;
    std::fs::write(dir.join("tls/server.pem"), leaf.signed_by(&key, &issuer)?.pem())?;
    proto::identity::write_private(&dir.join("secrets/tls-server.key"), key.serialize_pem().as_bytes())?;
    std::fs::write(dir.join("policies/fleet.toml"), crate::policy::SHIPPED)?;
    let c = Config {
        server: Server { grpc: grpc.into(), http: http.into(), precomputed_keys: 0 },
        tls: Tls {
            certificate: "tls/server.pem".into(),
            key: "secrets/tls-server.key".into(),
            ca: "tls/ca.pem".into(),
        },
        store: StoreSection { path: "fleet.redb".into() },
        policy: PolicySection { file: "policies/fleet.toml".into() },
        ca: CaSection {
            identity,
            status_ttl_seconds: default_status_ttl(),
            crl_url: None,
            crl_refresh_seconds: default_crl_refresh(),
            activation_refresh_seconds: default_crl_refresh(),
        },
        webhook: None,
    };
    std::fs::write(&config, toml::to_string_pretty(&c)?)?;
    Ok(Made { config, tls_ca: dir.join("tls/ca.pem") })
}
