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
    /// The admin identity file.
    pub admin_identity: PathBuf,
    /// Root and issuing certificates.
    pub root: PathBuf,
    /// Issuing CA certificate.
    pub issuing: PathBuf,
}

/// Options for `init`.
#[derive(Debug, Default)]
pub struct Options {
    /// A file with the HSM user PIN to use; generated when absent.
    pub pin_file: Option<PathBuf>,
    /// gRPC listen address.
    pub grpc: Option<String>,
    /// HTTP listen address.
    pub http: Option<String>,
    /// The admin key's passphrase, chosen by the admin (asked at a prompt); without it one is
    /// generated into the identity directory (0600).
    pub admin_passphrase: Option<AdminPassphrase>,
}

/// A passphrase that `Debug` does not print.
pub struct AdminPassphrase(pub Zeroizing<String>);

impl std::fmt::Debug for AdminPassphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminPassphrase(…)")
    }
}

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
    for sub in ["certs", "tls", "token", "policies", "identities/admin"] {
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
        actor: "ca-server init".into(),
        action: "ca_init".into(),
        target: serial_hex(&issuing)?,
        outcome: "ok".into(),
        detail: format!("root {} issuing {}", serial_hex(&root)?, serial_hex(&issuing)?),
    })?;
    let issuing_info = IssuerInfo::from_certificate(&issuing, issuing_profile.signer_id.clone())?;
    let admin_dir = dir.join("identities/admin");
    let admin_key = SoftwareSm2Key::generate(Default::default())?;
    let admin_vars = SubjectVars { name: Some("admin".into()), ..Default::default() };
    let admin_profile = policy.profile("admin").context("admin profile")?;
    let admin_cert = Issuer::new(&issuing_signer, &issuing_info).issue(
        admin_profile,
        &admin_vars,
        admin_key.sm2_public_key(),
        now,
    )?;
    let admin_serial = serial_hex(&admin_cert)?;
    let admin_der = der::Encode::to_der(&admin_cert)?;
    registry.add_principal(
        &PrincipalRecord {
            name: "admin".into(),
            role: "admin".into(),
            cert_serial: admin_serial.clone(),
            manufacturers: vec![],
            enabled: true,
        },
        &crate::records::new_cert_record(
            &admin_cert,
            CertSubject::Principal { name: "admin".into() },
            "admin",
            "ca-server-init",
        )
        .context("admin certificate record")?,
        &admin_der,
        &AuditEvent {
            time_ms: now_ms(),
            actor: "ca-server init".into(),
            action: "principal_add".into(),
            target: "admin".into(),
            outcome: "ok".into(),
            detail: format!("role admin, certificate {admin_serial}"),
        },
    )?;
    let (passphrase, passphrase_file) = match &opts.admin_passphrase {
        Some(p) => (p.0.clone(), None),
        None => {
            let p = random_secret()?;
            write_private(&admin_dir.join("passphrase"), p.as_bytes())?;
            (p, Some("passphrase".into()))
        }
    };
    let key_pem =
        hsm::backend::file::encrypt(&admin_key, passphrase.as_bytes(), hsm::backend::file::DEFAULT_ITERATIONS)?;
    write_private(&admin_dir.join("admin.key"), key_pem.as_bytes())?;
    write_pem(&admin_dir.join("admin.pem"), &admin_cert)?;
    std::fs::copy(dir.join("tls/ca.pem"), admin_dir.join("tls-ca.pem"))?;
    std::fs::copy(dir.join("certs/root.pem"), admin_dir.join("root.pem"))?;
    let grpc = opts.grpc.clone().unwrap_or_else(|| "127.0.0.1:7443".into());
    let identity = IdentityFile {
        name: "admin".into(),
        role: "admin".into(),
        server: format!("https://{grpc}"),
        tls_ca: "tls-ca.pem".into(),
        pki_root: "root.pem".into(),
        certificate: "admin.pem".into(),
        key: "admin.key".into(),
        passphrase_file,
    };
    let identity_path = admin_dir.join("identity.toml");
    std::fs::write(&identity_path, toml::to_string(&identity)?)?;
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
        registry: RegistrySection { path: "registry.redb".into() },
        policy: PolicySection { directory: "policies".into(), require_registration: false },
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
        root: dir.join("certs/root.pem"),
        issuing: dir.join("certs/issuing.pem"),
    })
}
