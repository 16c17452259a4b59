//! `ca-server init --data-dir DIR`: everything a new CA needs, on the embedded default
//! (softtoken HSM + redb registry): token and PINs, root and issuing CA keys inside the token
//! and their certificates, the TLS certificate, the first admin identity, and the config files.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use hsm::Signer;
use hsm::backend::memory::SoftwareSm2Key;
use hsm::backend::pkcs11::{KeySelector, Pkcs11Config, Pkcs11Hsm, VendorProfile, init_token};
use pki::cert::{IssuerInfo, TbsRequest, build_tbs};
use pki::pem::certificate_to_pem;
use pki::{CertSerial, Certificate, PolicySet, SubjectVars};
use proto::identity::{IdentityFile, write_private};
use registry::{AuditEvent, CertSubject, PrincipalRecord, Registry};
use zeroize::Zeroizing;

use crate::config::{
    AuditSection, CaSection, Config, HsmSection, PolicySection, RegistrySection, ServerSection, TlsSection,
};
use crate::issuer::Issuer;
use crate::records::now_ms;

/// Token label of the embedded softtoken.
pub const TOKEN_LABEL: &str = "hsca";
/// Label of the delegated OCSP responder's key.
pub const OCSP_KEY_LABEL: &str = "hsca-ocsp-1";
/// Label of the key that signs audit checkpoints.
pub const AUDIT_KEY_LABEL: &str = "hsca-audit";

/// What `init` made.
#[derive(Debug)]
pub struct Report {
    /// `DIR/ca-server.toml`.
    pub config: PathBuf,
    /// `DIR/cactl.toml`.
    pub cactl: PathBuf,
    /// The first admin's identity file (the one `cactl.toml` names).
    pub admin_identity: PathBuf,
    /// Every admin identity file made (`--admins`), the first one first.
    pub admin_identities: Vec<PathBuf>,
    /// Root and issuing certificates.
    pub root: PathBuf,
    /// Issuing CA certificate.
    pub issuing: PathBuf,
}

/// Options for `init`.
#[derive(Debug)]
pub struct Options {
    /// A file with the HSM user PIN to use; generated when absent.
    pub pin_file: Option<PathBuf>,
    /// gRPC listen address.
    pub grpc: Option<String>,
    /// HTTP listen address.
    pub http: Option<String>,
    /// How many admin identities to make (at least 1; dual control needs 2).
    pub admins: u32,
    /// The admins' key passphrases, chosen by each admin (asked at a prompt), in the order of
    /// [`admin_name`]; when empty, each is generated into its identity directory (0600).
    pub admin_passphrases: Vec<AdminPassphrase>,
}

/// A passphrase that `Debug` does not print.
pub struct AdminPassphrase(pub Zeroizing<String>);

impl std::fmt::Debug for AdminPassphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminPassphrase(…)")
    }
}

impl Default for Options {
    fn default() -> Self {
        Self { pin_file: None, grpc: None, http: None, admins: 2, admin_passphrases: Vec::new() }
    }
}

/// Makes admin identities at `init`, before any server runs: key generated here, certificate
/// issued with the issuing key, principal recorded as active (the bootstrap admins are the ones
/// the auditor sees created by `ca-server init`), key encrypted under a random passphrase.
struct AdminMaker<'a> {
    dir: &'a Path,
    registry: &'a Registry,
    issuer: Issuer<'a>,
    profile: &'a pki::CertProfile,
    server: String,
    now: std::time::SystemTime,
}

impl AdminMaker<'_> {
    /// Makes admin `name` in `identities/NAME/`, its key under `passphrase` (else a generated
    /// one written beside it); returns its identity file.
    fn make(&self, name: &str, passphrase: Option<&AdminPassphrase>) -> Result<PathBuf> {
        let admin_dir = self.dir.join("identities").join(name);
        mkdir_private(&admin_dir)?;
        let key = SoftwareSm2Key::generate(Default::default())?;
        let vars = SubjectVars { name: Some(name.into()), ..Default::default() };
        let cert = self.issuer.issue(self.profile, &vars, key.sm2_public_key(), self.now)?;
        let serial = serial_hex(&cert)?;
        let der = der::Encode::to_der(&cert)?;
        let record = crate::records::new_cert_record(
            &cert,
            CertSubject::Principal { name: name.into() },
            "admin",
            &format!("ca-server-init-{name}"),
        )
        .context("admin certificate record")?;
        self.registry.add_principal(
            &PrincipalRecord {
                name: name.into(),
                role: "admin".into(),
                cert_serial: serial.clone(),
                manufacturers: vec![],
                enabled: true,
                created_by: INIT_ACTOR.into(),
                pending_approval: None,
            },
            &record,
            &der,
            &AuditEvent {
                time_ms: now_ms(),
                actor: INIT_ACTOR.into(),
                action: "principal_add".into(),
                target: name.into(),
                outcome: "ok".into(),
                detail: format!("role admin, certificate {serial}"),
            },
        )?;
        let (passphrase, passphrase_file) = match passphrase {
            Some(p) => (p.0.clone(), None),
            None => {
                let p = random_secret()?;
                write_private(&admin_dir.join("passphrase"), p.as_bytes())?;
                (p, Some("passphrase".into()))
            }
        };
        let key_pem = hsm::backend::file::encrypt(&key, passphrase.as_bytes(), hsm::backend::file::DEFAULT_ITERATIONS)?;
        let (key_file, cert_file) = (format!("{name}.key"), format!("{name}.pem"));
        write_private(&admin_dir.join(&key_file), key_pem.as_bytes())?;
        write_pem(&admin_dir.join(&cert_file), &cert)?;
        std::fs::copy(self.dir.join("tls/ca.pem"), admin_dir.join("tls-ca.pem"))?;
        std::fs::copy(self.dir.join("certs/root.pem"), admin_dir.join("root.pem"))?;
        let identity = IdentityFile {
            name: name.into(),
            role: "admin".into(),
            server: self.server.clone(),
            tls_ca: "tls-ca.pem".into(),
            pki_root: "root.pem".into(),
            certificate: cert_file.into(),
            key: key_file.into(),
            passphrase_file,
        };
        let identity_path = admin_dir.join("identity.toml");
        std::fs::write(&identity_path, toml::to_string(&identity)?)?;
        Ok(identity_path)
    }
}

/// The name of the `n`th admin `init` makes (from 1): `admin`, `admin-2`, …
pub fn admin_name(n: u32) -> String {
    if n == 1 { "admin".to_owned() } else { format!("admin-{n}") }
}

/// The audit actor of what `init` does.
const INIT_ACTOR: &str = "ca-server init";

fn random_secret() -> Result<Zeroizing<String>> {
    let mut b = [0u8; 18];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("random: {e}"))?;
    Ok(Zeroizing::new(proto::signing::base64_encode(&b).replace(['+', '/'], "x")))
}

fn serial_hex(cert: &Certificate) -> Result<String> {
    crate::records::serial_hex(cert).context("certificate serial")
}

fn write_pem(path: &Path, cert: &Certificate) -> Result<()> {
    std::fs::write(path, certificate_to_pem(cert)?).with_context(|| format!("writing {}", path.display()))
}

fn mkdir_private(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Creates a new CA in `dir`, which must not hold one yet.
pub fn init(dir: &Path, opts: &Options) -> Result<Report> {
    let config_path = dir.join("ca-server.toml");
    if config_path.exists() {
        bail!("{} exists: {} already holds a CA", config_path.display(), dir.display());
    }
    // Only the CA's owner may enter the data directory and the token directory.
    mkdir_private(dir)?;
    mkdir_private(&dir.join("token"))?;
    for sub in ["certs", "tls", "token", "policies", "identities"] {
        std::fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {}", dir.join(sub).display()))?;
    }
    mkdir_private(&dir.join("secrets"))?;
    let dir = dir.canonicalize()?;

    // Policy files, for operators to read and edit; the CRL and OCSP URLs certificates carry
    // point at this server's HTTP address.
    let base_url = format!("http://{}", opts.http.as_deref().unwrap_or("127.0.0.1:7080"));
    let texts = pki::policy::EMBEDDED.map(|(name, text)| (name, text.replace("http://127.0.0.1:7080", &base_url)));
    for (name, text) in
        texts.iter().map(|(n, t)| (*n, t.as_str())).chain([("policies/roles.toml", crate::roles::SHIPPED)])
    {
        std::fs::write(dir.join(name), text)?;
    }
    let policy = PolicySet::load_texts(texts.each_ref().map(|t| t.0), texts.each_ref().map(|t| t.1.as_str()))?;

    // PINs: never on the command line; generated into secrets/ (0600) unless given in a file.
    let pin = match &opts.pin_file {
        Some(f) => Zeroizing::new(
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?.trim().to_owned(),
        ),
        None => random_secret()?,
    };
    if pin.len() < 4 {
        bail!("the HSM PIN must have at least 4 characters");
    }
    write_private(&dir.join("secrets/hsm-pin"), pin.as_bytes())?;
    let so_pin = random_secret()?;
    write_private(&dir.join("secrets/hsm-so-pin"), so_pin.as_bytes())?;

    // The embedded HSM: softtoken, its token directory under DIR/token.
    let module = softtoken::library_path()
        .context("libsofttoken.so not found (build it: cargo build -p softtoken, or set SOFTTOKEN_LIB)")?;
    let softtoken_conf = dir.join("softtoken.toml");
    std::fs::write(&softtoken_conf, format!("directory = {:?}\n", dir.join("token")))?;
    // SAFETY: init runs single-threaded, before anything else reads the environment.
    unsafe { std::env::set_var("SOFTTOKEN_CONF", &softtoken_conf) };
    init_token(&module, TOKEN_LABEL, &so_pin, &pin)?;
    let hsm = Pkcs11Hsm::open(Pkcs11Config {
        module: module.clone(),
        token_label: Some(TOKEN_LABEL.into()),
        pin: pin.clone(),
        profile: VendorProfile::softtoken()?,
    })?;

    // CA keys inside the token, and their certificates.
    let now = SystemTime::now();
    let h = &policy.hierarchy;
    for label in [&h.root.key_label, &h.issuing.key_label, &AUDIT_KEY_LABEL.to_owned(), &OCSP_KEY_LABEL.to_owned()] {
        hsm.generate_sm2_key(label)?;
    }
    let root_profile = policy.profile(&h.root.profile).context("root profile")?;
    let issuing_profile = policy.profile(&h.issuing.profile).context("issuing profile")?;
    let root_signer = hsm.signer(KeySelector::Label(h.root.key_label.clone()), root_profile.signer_id.clone())?;
    let issuing_signer =
        hsm.signer(KeySelector::Label(h.issuing.key_label.clone()), issuing_profile.signer_id.clone())?;
    root_signer.self_test()?;
    issuing_signer.self_test()?;
    let root_key = pki::Sm2PublicKey::from_spki(&root_signer.public_key())?;
    let vars = SubjectVars { name: Some(h.root.name.clone()), ..Default::default() };
    let tbs = build_tbs(
        &TbsRequest {
            profile: root_profile,
            vars: &vars,
            subject_key: &root_key,
            serial: CertSerial::generate()?,
            now,
        },
        None,
    )?;
    let root = tbs.clone().assemble(root_signer.sign(tbs.to_be_signed())?.as_der())?;
    let root_info = IssuerInfo::from_certificate(&root, root_profile.signer_id.clone())?;
    let issuing_key = pki::Sm2PublicKey::from_spki(&issuing_signer.public_key())?;
    let vars = SubjectVars { name: Some(h.issuing.name.clone()), ..Default::default() };
    let issuing = Issuer::new(&root_signer, &root_info).issue(issuing_profile, &vars, &issuing_key, now)?;
    write_pem(&dir.join("certs/root.pem"), &root)?;
    write_pem(&dir.join("certs/issuing.pem"), &issuing)?;

    // TLS for the gRPC endpoint: ECDSA P-256 (rustls has no SM2).
    let tls_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "HSCA gRPC TLS CA");
    let tls_ca_key = rcgen::KeyPair::generate()?;
    let tls_ca_cert = ca_params.self_signed(&tls_ca_key)?;
    let tls_issuer = rcgen::Issuer::new(ca_params, tls_ca_key);
    let mut server_params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    server_params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
    let server_cert = server_params.signed_by(&tls_key, &tls_issuer)?;
    std::fs::write(dir.join("tls/ca.pem"), tls_ca_cert.pem())?;
    std::fs::write(dir.join("tls/server.pem"), server_cert.pem())?;
    write_private(&dir.join("secrets/tls-server.key"), tls_key.serialize_pem().as_bytes())?;

    // The registry, and the first admin: its key made here (no server runs yet), encrypted.
    let registry = Registry::open(&dir.join("registry.redb"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("registry.redb"), std::fs::Permissions::from_mode(0o600))?;
    }
    registry.audit(&AuditEvent {
        time_ms: now_ms(),
        actor: INIT_ACTOR.into(),
        action: "ca_init".into(),
        target: serial_hex(&issuing)?,
        outcome: "ok".into(),
        detail: format!("root {} issuing {}", serial_hex(&root)?, serial_hex(&issuing)?),
    })?;
    let issuing_info = IssuerInfo::from_certificate(&issuing, issuing_profile.signer_id.clone())?;
    let grpc = opts.grpc.clone().unwrap_or_else(|| "127.0.0.1:7443".into());
    let admin = AdminMaker {
        dir: &dir,
        registry: &registry,
        issuer: Issuer::new(&issuing_signer, &issuing_info),
        profile: policy.profile("admin").context("admin profile")?,
        server: format!("https://{grpc}"),
        now,
    };
    if opts.admins == 0 {
        bail!("--admins must be at least 1");
    }
    if !opts.admin_passphrases.is_empty() && opts.admin_passphrases.len() != opts.admins as usize {
        bail!("{} admin passphrases for {} admins", opts.admin_passphrases.len(), opts.admins);
    }
    let mut admin_identities = Vec::new();
    for n in 1..=opts.admins {
        admin_identities.push(admin.make(&admin_name(n), opts.admin_passphrases.get(n as usize - 1))?);
    }
    let identity_path = admin_identities[0].clone();
    let cactl_path = dir.join("cactl.toml");
    std::fs::write(&cactl_path, "# cactl --config this-file …\nidentity = \"identities/admin/identity.toml\"\n")?;

    let config = Config {
        server: ServerSection { grpc, http: opts.http.clone().unwrap_or_else(|| "127.0.0.1:7080".into()) },
        tls: TlsSection {
            certificate: "tls/server.pem".into(),
            key: "secrets/tls-server.key".into(),
            ca: "tls/ca.pem".into(),
        },
        hsm: HsmSection {
            module,
            token_label: TOKEN_LABEL.into(),
            pin_file: Some("secrets/hsm-pin".into()),
            profile: "softtoken".into(),
            env: [("SOFTTOKEN_CONF".to_string(), "softtoken.toml".to_string())].into_iter().collect(),
        },
        registry: RegistrySection { path: "registry.redb".into(), url: None, instance: None },
        policy: PolicySection {
            directory: "policies".into(),
            require_registration: false,
            hold_until_activation: false,
            activation_challenge_seconds: 300,
            activation_challenges_per_operator: 20,
        },
        ca: CaSection { root: "certs/root.pem".into(), issuing: "certs/issuing.pem".into() },
        audit: AuditSection { key_label: Some(AUDIT_KEY_LABEL.into()), ..Default::default() },
        crl: Default::default(),
        ocsp: crate::config::OcspSection { key_label: Some(OCSP_KEY_LABEL.into()), ..Default::default() },
    };
    std::fs::write(&config_path, toml::to_string(&config)?)?;
    Ok(Report {
        config: config_path,
        cactl: cactl_path,
        admin_identity: identity_path,
        admin_identities,
        root: dir.join("certs/root.pem"),
        issuing: dir.join("certs/issuing.pem"),
    })
}
