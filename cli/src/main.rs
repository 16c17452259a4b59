//! `cactl`: the CA's admin CLI. Every call is a signed gRPC request made with the identity named
//! by `--identity FILE`, or by `--config FILE` (`identity = "…"`), or by `CACTL_CONFIG`.
//!
//! Exit codes: 0 success; 1 the CA refused (the stable reason is printed), or `verify` found the
//! certificate not valid; 2 usage or local input error; 3 the CA could not be reached.

mod activation;
mod alerts;
mod approvals;
mod audit;
mod console;
mod http;
mod revocation;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use proto::client::{Client, request_id};
use proto::identity::{Identity, IdentityFile, write_private};
use proto::v1;
use serde::Serialize;

#[derive(Parser)]
#[command(name = "cactl", version, about = "Administer the healthcare-security terminal CA")]
struct Cli {
    /// cactl configuration (`identity = "path"`); default from CACTL_CONFIG.
    #[arg(long, global = true, env = "CACTL_CONFIG")]
    config: Option<PathBuf>,
    /// Identity file to call the CA with (overrides --config).
    #[arg(long, global = true)]
    identity: Option<PathBuf>,
    /// Server URL, overriding the identity's.
    #[arg(long, global = true)]
    server: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Principals: stations, operators, admins, auditors.
    #[command(subcommand)]
    Principal(PrincipalCmd),
    /// The terminal registry.
    #[command(subcommand)]
    Terminal(TerminalCmd),
    /// Issue a terminal certificate from a CSR by hand (for the lab).
    Issue {
        /// The terminal's CSR (PEM or DER), signed with SM2 ID 1234567812345678.
        #[arg(long)]
        csr: PathBuf,
        /// Terminal serial.
        #[arg(long)]
        serial: String,
        /// Terminal class: I, II or III.
        #[arg(long)]
        class: String,
        /// Where to write the certificate (PEM).
        #[arg(long)]
        out: PathBuf,
        /// Explicitly replace the terminal's active certificate (audited; the old one is revoked as superseded).
        #[arg(long)]
        reissue: bool,
        /// Request id, to retry safely (default: fresh).
        #[arg(long)]
        request_id: Option<String>,
        /// Production lot, recorded when the terminal is registered by this issue.
        #[arg(long)]
        lot: Option<String>,
    },
    /// Revoke one certificate (--terminal or --cert-serial), or — under dual control — every
    /// active certificate of a manufacturer, model or production lot (--manufacturer, --model,
    /// --lot): that only asks; a second administrator approves with `cactl approvals approve`.
    Revoke {
        /// Terminal serial (its active certificate).
        #[arg(long)]
        terminal: Option<String>,
        /// Certificate serial (hex).
        #[arg(long)]
        cert_serial: Option<String>,
        /// Bulk: terminals of this manufacturer code.
        #[arg(long)]
        manufacturer: Option<String>,
        /// Bulk: terminals of this model.
        #[arg(long)]
        model: Option<String>,
        /// Bulk: terminals of this production lot.
        #[arg(long)]
        lot: Option<String>,
        /// RFC 5280 reason, as RFC 5280 spells it or in kebab-case: unspecified, keyCompromise
        /// (key-compromise), cACompromise (ca-compromise), affiliationChanged
        /// (affiliation-changed), superseded, cessationOfOperation (cessation-of-operation),
        /// certificateHold (certificate-hold), privilegeWithdrawn (privilege-withdrawn).
        #[arg(long, value_parser = parse_reason)]
        reason: Reason,
        /// keyCompromise: when the key was (suspected) compromised, YYYY-MM-DDTHH:MM:SSZ or unix ms;
        /// default now.
        #[arg(long)]
        invalidity_date: Option<String>,
    },
    /// Ask to re-key a terminal in service (provisioned, active) or re-enrol a revoked one with a
    /// new key from its CSR. Nothing is issued until a second administrator approves
    /// (`cactl approvals approve ID --out NEW.pem`); the old certificate is then revoked.
    Rekey {
        /// Terminal serial.
        #[arg(long)]
        terminal: String,
        /// CSR of the new key (PEM or DER), made in the terminal's secure element; the key must
        /// never have been certified.
        #[arg(long)]
        csr: PathBuf,
        /// The station that will write the new certificate (only it may confirm it).
        #[arg(long)]
        station: String,
        /// Why the replaced certificate is revoked.
        #[arg(long, value_enum, default_value = "superseded")]
        reason: RekeyReason,
    },
    /// Lift a certificateHold (other revocations are final).
    Unrevoke {
        /// Certificate serial (hex).
        #[arg(long)]
        cert_serial: String,
    },
    /// Requests under dual control (bulk revocations, new admins, re-keys) waiting for, or decided
    /// by, a second independent administrator.
    #[command(subcommand)]
    Approvals(ApprovalsCmd),
    /// Check a certificate as a relying party: chain to the pinned root, then its status from
    /// the OCSP responder (default) or the CRL it names. Exit 0 good, 1 not valid.
    Verify {
        /// The certificate (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// Ask the OCSP responder in the certificate (the default).
        #[arg(long, conflicts_with = "crl")]
        ocsp: bool,
        /// Read the CRL (and delta CRL) at the certificate's distribution point.
        #[arg(long)]
        crl: bool,
        /// Issuing CA certificate (PEM); with --root, no call to the CA is made.
        #[arg(long, requires = "root")]
        issuer: Option<PathBuf>,
        /// Root certificate (PEM) to validate to; default the identity's pinned root.
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// A certificate's status.
    Status {
        /// The certificate (PEM).
        #[arg(long)]
        cert: PathBuf,
    },
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Copy the registry while the CA runs (one consistent snapshot), verify the copy's audit chain.
    Backup {
        /// Where to write the copy (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// The fleet service's alerts (clone, relocation, counterfeit, tamper, silent): list, show
    /// with evidence, acknowledge. Operators and admins acknowledge; auditors may read.
    Alerts {
        #[command(flatten)]
        at: alerts::FleetEndpoint,
        #[command(subcommand)]
        cmd: AlertsCmd,
    },
    /// Serve the operator console (a web UI) on loopback; every call it makes is signed with this
    /// identity, as the other commands' are. Prints a URL with a one-time token: open it in a
    /// browser on this machine.
    Console {
        /// Where to listen; loopback only unless --allow-non-loopback.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: std::net::SocketAddr,
        /// Listen on a non-loopback address anyway (anyone who can reach it and steals the URL
        /// acts with this identity).
        #[arg(long)]
        allow_non_loopback: bool,
        /// The operator's time zone as an offset from UTC, e.g. +08:00 (China Standard Time).
        #[arg(long, default_value = "+08:00", allow_hyphen_values = true)]
        utc_offset: String,
        /// The alerts page reads the fleet service (fleet-server) named here, signed with the same
        /// identity; without --fleet-tls-ca (or HSCA_FLEET_TLS_CA) alerts are not configured.
        #[command(flatten)]
        fleet: alerts::FleetEndpoint,
    },
    /// Print shell completions.
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum PrincipalCmd {
    /// Make a key here, send only a CSR, and write a new identity directory.
    Add {
        /// Role.
        #[arg(long, value_parser = ["station", "operator", "admin", "auditor", "monitor"])]
        role: String,
        /// Unique name.
        #[arg(long)]
        name: String,
        /// Directory for the new identity (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Stations: manufacturer codes it may issue for.
        #[arg(long, value_delimiter = ',')]
        manufacturers: Vec<String>,
        /// `prompt`: ask for the new key's passphrase twice at the terminal (not echoed) and write
        /// no passphrase file (default: HSCA_KEY_PASSPHRASE, else a generated one in a 0600 file).
        #[arg(long, value_parser = ["prompt"])]
        passphrase: Option<String>,
    },
    /// Disable a principal at once.
    Disable {
        /// Name.
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum TerminalCmd {
    /// Register a terminal.
    Register {
        /// Serial.
        #[arg(long)]
        serial: String,
        /// Class: I, II or III.
        #[arg(long)]
        class: String,
        /// Model (default: from the serial).
        #[arg(long, default_value = "")]
        model: String,
        /// Production lot.
        #[arg(long, default_value = "")]
        lot: String,
    },
    /// Show one terminal: `cactl terminal show SERIAL` (or `--serial SERIAL`).
    Show {
        /// Serial.
        #[arg(value_name = "SERIAL", required_unless_present = "serial_flag", conflicts_with = "serial_flag")]
        serial: Option<String>,
        /// Serial, as a flag (the older spelling).
        #[arg(long = "serial", id = "serial_flag", value_name = "SERIAL")]
        serial_flag: Option<String>,
    },
    /// List terminals.
    List {
        /// Only this state.
        #[arg(long, value_enum)]
        state: Option<State>,
        /// Only this manufacturer.
        #[arg(long)]
        manufacturer: Option<String>,
        /// Only this lot.
        #[arg(long)]
        lot: Option<String>,
        /// Page size.
        #[arg(long, default_value_t = 100)]
        page_size: u32,
    },
    /// Activate a terminal in the field (HSTS 7.4.5/7.4.6): proof of presence through the
    /// terminal at --device (its SE signs the CA's fresh challenge, institution and position; you,
    /// an operator, countersign), or an administrator's audited --manual override.
    #[command(group = clap::ArgGroup::new("how").required(true).args(["device", "manual"]))]
    Activate {
        /// The terminal's serial port (USB CDC-ACM, e.g. /dev/ttyACM0), as the station reaches it.
        #[arg(long)]
        device: Option<PathBuf>,
        /// Administrators only: record the activation without the terminal's signature (audited
        /// as activate_manual; lifts only the activation hold).
        #[arg(long, requires = "serial")]
        manual: bool,
        /// Serial (with --device: checked against the terminal's own).
        #[arg(long)]
        serial: Option<String>,
        /// Institution where it is installed.
        #[arg(long)]
        institution: String,
        /// LAT,LON in degrees: the terminal's reference location from now on.
        #[arg(long, alias = "location", allow_hyphen_values = true)]
        position: String,
    },
    /// A terminal's activation log.
    Activations {
        /// Serial.
        #[arg(long)]
        serial: String,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Verify the whole audit chain; with --anchors, also that it holds the newest head of the
    /// anchor log (not truncated, not rolled back).
    Verify {
        /// A copy of the server's anchor log (`[audit] anchor_dir`/anchors.jsonl).
        #[arg(long)]
        anchors: Option<PathBuf>,
        /// Verify this registry file (a stopped server's, or a backup) without calling the CA.
        #[arg(long)]
        registry: Option<PathBuf>,
        /// The audit key (PUBLIC KEY PEM, `audit-key.pem` of the anchor directory, kept apart):
        /// anchors and checkpoints must be signed by it.
        #[arg(long)]
        audit_key: Option<PathBuf>,
    },
    /// The last entries (oldest first); with --actor or --target, that actor's entries or those
    /// about that target (terminal serial, certificate serial, principal), newest first, from the
    /// CA's audit index however old they are.
    Tail {
        /// How many.
        #[arg(long, default_value_t = 20)]
        last: u32,
        /// Only this principal's entries.
        #[arg(long, conflicts_with = "target")]
        actor: Option<String>,
        /// Only entries about this terminal serial, certificate serial or principal.
        #[arg(long)]
        target: Option<String>,
        /// With --actor or --target: only entries before this sequence number (the next page).
        #[arg(long)]
        before: Option<u64>,
    },
}

#[derive(Subcommand)]
enum AlertsCmd {
    /// Open alerts, newest first (--all: acknowledged ones too).
    List {
        /// Include acknowledged alerts.
        #[arg(long)]
        all: bool,
        /// Only this rule: clone, relocation, counterfeit, tamper, silent.
        #[arg(long)]
        rule: Option<String>,
        /// Only this terminal's alerts (its serial).
        #[arg(long)]
        terminal: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One alert with its evidence.
    Show {
        /// Alert id.
        id: u64,
    },
    /// Acknowledge an alert; the next occurrence opens a new one.
    Ack {
        /// Alert id.
        id: u64,
        /// What was found or done.
        #[arg(long, default_value = "")]
        note: String,
    },
}

#[derive(Subcommand)]
enum ApprovalsCmd {
    /// Pending bulk revocations (--all: also decided ones).
    List {
        /// Include approved and rejected ones.
        #[arg(long)]
        all: bool,
    },
    /// Approve as the second administrator: a bulk revocation revokes now, a new administrator
    /// may act, a re-key issues the new certificate.
    Approve {
        /// The approval id.
        id: String,
        /// A re-key: write the new certificate here (PEM).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Reject: nothing is revoked.
    Reject {
        /// The approval id.
        id: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    CertificateHold,
    PrivilegeWithdrawn,
}

/// Every reason `--reason` takes: RFC 5280 §5.3.1's name, then the kebab-case one.
const REASONS: [(&str, &str, Reason); 8] = [
    ("unspecified", "unspecified", Reason::Unspecified),
    ("keyCompromise", "key-compromise", Reason::KeyCompromise),
    ("cACompromise", "ca-compromise", Reason::CaCompromise),
    ("affiliationChanged", "affiliation-changed", Reason::AffiliationChanged),
    ("superseded", "superseded", Reason::Superseded),
    ("cessationOfOperation", "cessation-of-operation", Reason::CessationOfOperation),
    ("certificateHold", "certificate-hold", Reason::CertificateHold),
    ("privilegeWithdrawn", "privilege-withdrawn", Reason::PrivilegeWithdrawn),
];

/// `--reason`: case-sensitive, as RFC 5280 writes the names. The two RFC reasons a revocation
/// cannot have get a pointer to what the user likely wants instead.
fn parse_reason(s: &str) -> Result<Reason, String> {
    if let Some((_, _, r)) = REASONS.iter().find(|(rfc, kebab, _)| s == *rfc || s == *kebab) {
        return Ok(*r);
    }
    match s {
        "removeFromCRL" | "remove-from-crl" => {
            Err("removeFromCRL is not a revocation: lift a certificateHold with `cactl unrevoke --cert-serial HEX`"
                .into())
        }
        "aACompromise" | "aa-compromise" => {
            Err("aACompromise is for attribute certificates, which this CA does not issue".into())
        }
        _ => {
            let accepted: Vec<String> = REASONS
                .iter()
                .map(|(rfc, kebab, _)| if rfc == kebab { (*rfc).to_owned() } else { format!("{rfc} ({kebab})") })
                .collect();
            Err(format!("unknown reason `{s}`; accepted: {}", accepted.join(", ")))
        }
    }
}

/// The wire code of a revocation reason.
fn reason_code(reason: Reason) -> i32 {
    (match reason {
        Reason::Unspecified => v1::RevocationReason::Unspecified,
        Reason::KeyCompromise => v1::RevocationReason::KeyCompromise,
        Reason::CaCompromise => v1::RevocationReason::CaCompromise,
        Reason::AffiliationChanged => v1::RevocationReason::AffiliationChanged,
        Reason::Superseded => v1::RevocationReason::Superseded,
        Reason::CessationOfOperation => v1::RevocationReason::CessationOfOperation,
        Reason::CertificateHold => v1::RevocationReason::CertificateHold,
        Reason::PrivilegeWithdrawn => v1::RevocationReason::PrivilegeWithdrawn,
    }) as i32
}

#[derive(Clone, Copy, ValueEnum)]
enum RekeyReason {
    Superseded,
    KeyCompromise,
}

#[derive(Clone, Copy, ValueEnum)]
enum State {
    Registered,
    Issued,
    Provisioned,
    Active,
    Revoked,
}

#[derive(serde::Deserialize)]
struct CactlConfig {
    identity: PathBuf,
}

fn identity_path(cli: &Cli) -> Result<PathBuf> {
    if let Some(i) = &cli.identity {
        return Ok(i.clone());
    }
    let Some(cfg) = &cli.config else { bail!("name an identity: --identity FILE, --config FILE or CACTL_CONFIG") };
    let text = std::fs::read_to_string(cfg).with_context(|| format!("reading {}", cfg.display()))?;
    let c: CactlConfig = toml::from_str(&text).with_context(|| format!("parsing {}", cfg.display()))?;
    Ok(if c.identity.is_absolute() { c.identity } else { cfg.parent().unwrap_or(Path::new(".")).join(c.identity) })
}

async fn connect(cli: &Cli) -> Result<(Identity, Client)> {
    let identity = Identity::load(&identity_path(cli)?)?;
    let pass = identity.passphrase(proto::identity::prompt_passphrase)?;
    let signer = identity.signer(&pass)?;
    let client = Client::connect(&identity, cli.server.as_deref(), Box::new(signer)).await?;
    Ok((identity, client))
}

fn class_code(c: &str) -> Result<i32> {
    Ok(match c {
        "I" | "1" => v1::TerminalClass::ClassI as i32,
        "II" | "2" => v1::TerminalClass::ClassIi as i32,
        "III" | "3" => v1::TerminalClass::ClassIii as i32,
        _ => bail!("class must be I, II or III"),
    })
}

fn print<T: Serialize>(json: bool, value: &T, human: impl FnOnce() -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(value)?);
    } else {
        println!("{}", human());
    }
    Ok(())
}

#[derive(Serialize)]
struct TerminalRow {
    serial: String,
    class: String,
    manufacturer: String,
    model: String,
    lot: String,
    state: String,
    active_certificate: String,
}

fn row(t: &v1::Terminal) -> TerminalRow {
    TerminalRow {
        serial: t.serial.clone(),
        class: match v1::TerminalClass::try_from(t.class) {
            Ok(v1::TerminalClass::ClassI) => "I",
            Ok(v1::TerminalClass::ClassIi) => "II",
            Ok(v1::TerminalClass::ClassIii) => "III",
            _ => "?",
        }
        .into(),
        manufacturer: t.manufacturer.clone(),
        model: t.model.clone(),
        lot: t.lot.clone(),
        state: v1::TerminalState::try_from(t.state).map_or("?".into(), |s| s.as_str_name().to_lowercase()),
        active_certificate: t.active_certificate_serial.clone(),
    }
}

fn table(rows: &[TerminalRow]) -> String {
    let mut out = format!(
        "{:<18} {:<5} {:<6} {:<6} {:<10} {:<12} {}",
        "SERIAL", "CLASS", "MAKER", "MODEL", "LOT", "STATE", "CERTIFICATE"
    );
    for r in rows {
        out.push_str(&format!(
            "\n{:<18} {:<5} {:<6} {:<6} {:<10} {:<12} {}",
            r.serial, r.class, r.manufacturer, r.model, r.lot, r.state, r.active_certificate
        ));
    }
    out
}

fn pem(label: &str, der: &[u8]) -> Result<String> {
    Ok(pki::pem::der_to_pem(label, der)?)
}

async fn run(cli: Cli) -> Result<()> {
    use v1::admin_client::AdminClient;
    use v1::certificate_authority_client::CertificateAuthorityClient;
    use v1::registry_client::RegistryClient;
    match &cli.command {
        Cmd::Backup { out } => {
            use sm3::Digest;
            use tokio_stream_next::next;
            if out.exists() {
                bail!("{} exists; refusing to overwrite", out.display());
            }
            let (_, client) = connect(&cli).await?;
            let msg = v1::BackupRequest { request_id: request_id() };
            let mut stream = AdminClient::new(client.channel.clone())
                .backup(client.signed("/hsca.v1.Admin/Backup", msg)?)
                .await?
                .into_inner();
            let partial = out.with_extension("partial");
            let mut bytes = Vec::new();
            let mut expected = None;
            while let Some(chunk) = next(&mut stream).await? {
                bytes.extend_from_slice(&chunk.data);
                if chunk.last {
                    expected = Some(chunk.sm3);
                }
            }
            let got = hex::encode(sm3::Sm3::digest(&bytes));
            if expected.as_deref() != Some(got.as_str()) {
                bail!("backup stream incomplete or corrupted (SM3 {got}, server said {expected:?})");
            }
            std::fs::write(&partial, &bytes)?;
            let summary = registry::Registry::open(&partial)?.verify_audit_chain()?;
            std::fs::rename(&partial, out)?;
            print(
                cli.json,
                &serde_json::json!({"out": out, "bytes": bytes.len(), "sm3": got, "audit_entries": summary.entries}),
                || {
                    format!(
                        "backup written to {} ({} bytes, SM3 {got}); audit chain verified: {} entries",
                        out.display(),
                        bytes.len(),
                        summary.entries
                    )
                },
            )
        }
        Cmd::Console { listen, allow_non_loopback, utc_offset, fleet } => {
            let offset = console::parse_utc_offset(utc_offset)?;
            console::check_listen(*listen, *allow_non_loopback)?;
            let (identity, client) = connect(&cli).await?;
            let fleet = match fleet.fleet_tls_ca {
                Some(_) => Some(alerts::connect(&identity, fleet).await?),
                None => None,
            };
            console::serve(client, fleet, &identity, *listen, offset).await
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "cactl", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Principal(PrincipalCmd::Add { role, name, out, manufacturers, passphrase }) => {
            if out.exists() {
                bail!("{} exists; choose a new directory", out.display());
            }
            // Asked before anything is issued, so a typo leaves no principal without a key.
            let prompted = match passphrase {
                Some(_) => Some(proto::identity::prompt_new_passphrase(&format!("{name}'s key"))?),
                None => None,
            };
            let (identity, client) = connect(&cli).await?;
            // The key is made here and never leaves this machine: only a CSR is sent.
            let key = hsm::backend::memory::SoftwareSm2Key::generate(Default::default())?;
            let subject: pki::Name = format!("CN={name}").parse().map_err(|e| anyhow::anyhow!("name: {e}"))?;
            let info = pki::csr::build_csr_info(&subject, key.sm2_public_key())?;
            let sig = hsm::Signer::sign(&key, &info)?;
            let csr = pki::csr::assemble_csr(&info, sig.as_der(), &Default::default())?;
            let msg = v1::IssuePrincipalRequest {
                request_id: request_id(),
                name: name.clone(),
                role: role.clone(),
                csr_der: csr,
                manufacturers: manufacturers.clone(),
            };
            let resp = AdminClient::new(client.channel.clone())
                .issue_principal(client.signed("/hsca.v1.Admin/IssuePrincipal", msg)?)
                .await?
                .into_inner();
            std::fs::create_dir_all(out)?;
            let prompt_used = prompted.is_some();
            let passphrase = match (prompted, std::env::var(proto::identity::PASSPHRASE_ENV)) {
                (Some(p), _) => p,
                (None, Ok(p)) => zeroize::Zeroizing::new(p),
                (None, Err(_)) => {
                    let mut b = [0u8; 18];
                    getrandom_fill(&mut b)?;
                    zeroize::Zeroizing::new(hex::encode(b))
                }
            };
            // A prompted passphrase stays in the admin's head: it is asked again at each use.
            let passphrase_file = if prompt_used {
                None
            } else {
                write_private(&out.join("passphrase"), passphrase.as_bytes())?;
                Some("passphrase".into())
            };
            let key_pem =
                hsm::backend::file::encrypt(&key, passphrase.as_bytes(), hsm::backend::file::DEFAULT_ITERATIONS)?;
            write_private(&out.join(format!("{name}.key")), key_pem.as_bytes())?;
            std::fs::write(out.join(format!("{name}.pem")), pem("CERTIFICATE", &resp.certificate_der)?)?;
            std::fs::write(out.join("tls-ca.pem"), identity.read_named(&identity.file.tls_ca)?)?;
            std::fs::write(out.join("root.pem"), identity.read_named(&identity.file.pki_root)?)?;
            let file = IdentityFile {
                name: name.clone(),
                role: role.clone(),
                server: cli.server.clone().unwrap_or_else(|| identity.file.server.clone()),
                tls_ca: "tls-ca.pem".into(),
                pki_root: "root.pem".into(),
                certificate: format!("{name}.pem").into(),
                key: format!("{name}.key").into(),
                passphrase_file,
            };
            std::fs::write(out.join("identity.toml"), toml::to_string(&file)?)?;
            #[derive(Serialize)]
            struct Added<'a> {
                name: &'a str,
                role: &'a str,
                certificate_serial: &'a str,
                identity: String,
                pending_approval: &'a str,
            }
            let added = Added {
                name,
                role,
                certificate_serial: &resp.certificate_serial,
                identity: out.join("identity.toml").display().to_string(),
                pending_approval: &resp.pending_approval,
            };
            print(cli.json, &added, || {
                let mut text = format!(
                    "added {role} {name}: certificate {}\nidentity: {}",
                    resp.certificate_serial, added.identity
                );
                if !resp.pending_approval.is_empty() {
                    text.push_str(&format!(
                        "\n{name} can do nothing until a second administrator runs `cactl approvals approve {}`",
                        resp.pending_approval
                    ));
                }
                text
            })
        }
        Cmd::Principal(PrincipalCmd::Disable { name }) => {
            let (_, client) = connect(&cli).await?;
            let msg = v1::DisablePrincipalRequest { request_id: request_id(), name: name.clone() };
            AdminClient::new(client.channel.clone())
                .disable_principal(client.signed("/hsca.v1.Admin/DisablePrincipal", msg)?)
                .await?;
            print(cli.json, &serde_json::json!({ "disabled": name }), || format!("disabled {name}"))
        }
        Cmd::Terminal(t) => {
            let (_, client) = connect(&cli).await?;
            let mut reg = RegistryClient::new(client.channel.clone());
            match t {
                TerminalCmd::Register { serial, class, model, lot } => {
                    let msg = v1::RegisterTerminalRequest {
                        request_id: request_id(),
                        serial: serial.clone(),
                        class: class_code(class)?,
                        model: model.clone(),
                        lot: lot.clone(),
                    };
                    let t = reg
                        .register_terminal(client.signed("/hsca.v1.Registry/RegisterTerminal", msg)?)
                        .await?
                        .into_inner();
                    let r = row(&t);
                    print(cli.json, &r, || table(std::slice::from_ref(&r)))
                }
                TerminalCmd::Show { serial, serial_flag } => {
                    let serial = serial.as_ref().or(serial_flag.as_ref()).context("name the terminal's serial")?;
                    let msg = v1::GetTerminalRequest { request_id: request_id(), serial: serial.clone() };
                    let t = reg.get_terminal(client.signed("/hsca.v1.Registry/GetTerminal", msg)?).await?.into_inner();
                    let r = row(&t);
                    print(cli.json, &r, || table(std::slice::from_ref(&r)))
                }
                TerminalCmd::List { state, manufacturer, lot, page_size } => {
                    let state = state.map_or(0, |s| {
                        (match s {
                            State::Registered => v1::TerminalState::Registered,
                            State::Issued => v1::TerminalState::Issued,
                            State::Provisioned => v1::TerminalState::Provisioned,
                            State::Active => v1::TerminalState::Active,
                            State::Revoked => v1::TerminalState::Revoked,
                        }) as i32
                    });
                    let mut rows = Vec::new();
                    let mut token = String::new();
                    loop {
                        let msg = v1::ListTerminalsRequest {
                            request_id: request_id(),
                            page_size: *page_size,
                            page_token: token.clone(),
                            state,
                            class: 0,
                            manufacturer: manufacturer.clone().unwrap_or_default(),
                            lot: lot.clone().unwrap_or_default(),
                        };
                        let page = reg
                            .list_terminals(client.signed("/hsca.v1.Registry/ListTerminals", msg)?)
                            .await?
                            .into_inner();
                        rows.extend(page.terminals.iter().map(row));
                        if page.next_page_token.is_empty() {
                            break;
                        }
                        token = page.next_page_token;
                    }
                    print(cli.json, &rows, || table(&rows))
                }
                TerminalCmd::Activate { device, manual, serial, institution, position } => {
                    let (latitude, longitude) = activation::parse_position(position)?;
                    let place = activation::Place { institution, latitude, longitude };
                    let a = match (device, serial) {
                        (Some(d), s) if !*manual => activation::with_device(&client, d, s.as_deref(), &place).await?,
                        (_, Some(s)) => activation::manual(&client, s, &place).await?,
                        _ => bail!("give --device PATH, or --manual --serial SERIAL"),
                    };
                    print(
                        cli.json,
                        &serde_json::json!({"terminal": a.terminal_serial, "operator": a.operator, "institution": a.institution, "latitude": a.latitude, "longitude": a.longitude, "method": a.method, "certificate": a.certificate_serial, "at_ms": a.at_ms}),
                        || {
                            format!(
                                "activated {} at {} ({}, {}) by {} [{}]",
                                a.terminal_serial, a.institution, a.latitude, a.longitude, a.operator, a.method
                            )
                        },
                    )
                }
                TerminalCmd::Activations { serial } => {
                    let msg = v1::ListActivationsRequest { request_id: request_id(), serial: serial.clone() };
                    let list = reg
                        .list_activations(client.signed("/hsca.v1.Registry/ListActivations", msg)?)
                        .await?
                        .into_inner()
                        .activations;
                    let rows: Vec<_> = list
                        .iter()
                        .map(|a| serde_json::json!({"operator": a.operator, "institution": a.institution, "latitude": a.latitude, "longitude": a.longitude, "at_ms": a.at_ms, "method": a.method, "certificate": a.certificate_serial}))
                        .collect();
                    print(cli.json, &rows, || {
                        list.iter()
                            .map(|a| {
                                format!(
                                    "{}  {}  {} ({}, {})  {}",
                                    a.at_ms, a.operator, a.institution, a.latitude, a.longitude, a.method
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                }
            }
        }
        Cmd::Issue { csr, serial, class, out, reissue, request_id: rid, lot } => {
            let csr_bytes = std::fs::read(csr).with_context(|| format!("reading {}", csr.display()))?;
            let (_, client) = connect(&cli).await?;
            let msg = v1::IssueTerminalCertificateRequest {
                request_id: rid.clone().unwrap_or_else(request_id),
                terminal_serial: serial.clone(),
                class: class_code(class)?,
                model: String::new(),
                csr_der: csr_bytes,
                reissue: *reissue,
                lot: lot.clone().unwrap_or_default(),
            };
            let resp = CertificateAuthorityClient::new(client.channel.clone())
                .issue_terminal_certificate(
                    client.signed("/hsca.v1.CertificateAuthority/IssueTerminalCertificate", msg)?,
                )
                .await?
                .into_inner();
            std::fs::write(out, pem("CERTIFICATE", &resp.certificate_der)?)?;
            print(
                cli.json,
                &serde_json::json!({"certificate_serial": resp.certificate_serial, "replayed": resp.replayed, "superseded": resp.superseded_serial, "out": out}),
                || {
                    format!(
                        "issued {} for {serial} → {}{}",
                        resp.certificate_serial,
                        out.display(),
                        if resp.replayed { " (same request answered before)" } else { "" }
                    )
                },
            )
        }
        Cmd::Revoke { terminal, cert_serial, manufacturer, model, lot, reason, invalidity_date } => {
            let code = reason_code(*reason);
            let invalidity_ms = match invalidity_date {
                Some(d) if matches!(reason, Reason::KeyCompromise) => revocation::parse_time(d)?,
                Some(_) => bail!("--invalidity-date applies to key-compromise only"),
                None => 0,
            };
            let bulk = manufacturer.is_some() || model.is_some() || lot.is_some();
            let single = usize::from(terminal.is_some()) + usize::from(cert_serial.is_some());
            if (bulk && single > 0) || (!bulk && single != 1) {
                bail!(
                    "name one target: --terminal S, --cert-serial HEX, or a bulk filter (--manufacturer, --model, --lot)"
                );
            }
            let (_, client) = connect(&cli).await?;
            if bulk {
                let msg = v1::RequestBulkRevocationRequest {
                    request_id: request_id(),
                    manufacturer: manufacturer.clone().unwrap_or_default(),
                    model: model.clone().unwrap_or_default(),
                    lot: lot.clone().unwrap_or_default(),
                    reason: code,
                    invalidity_ms,
                };
                return revocation::bulk_revoke(&client, cli.json, msg).await;
            }
            let msg = v1::RevokeCertificateRequest {
                request_id: request_id(),
                certificate_serial: cert_serial.clone().unwrap_or_default(),
                terminal_serial: terminal.clone().unwrap_or_default(),
                reason: code,
                invalidity_ms,
            };
            let s = AdminClient::new(client.channel.clone())
                .revoke_certificate(client.signed("/hsca.v1.Admin/RevokeCertificate", msg)?)
                .await?
                .into_inner();
            print(cli.json, &serde_json::json!({"revoked_at_ms": s.revoked_at_ms}), || {
                format!("revoked at {}", revocation::time_text(s.revoked_at_ms))
            })
        }
        Cmd::Unrevoke { cert_serial } => {
            let (_, client) = connect(&cli).await?;
            revocation::unrevoke(&client, cli.json, &cert_serial.to_uppercase()).await
        }
        Cmd::Alerts { at, cmd } => {
            let identity = Identity::load(&identity_path(&cli)?)?;
            let client = alerts::connect(&identity, at).await?;
            match cmd {
                AlertsCmd::List { all, rule, terminal, limit } => {
                    alerts::list(&client, cli.json, *all, rule.as_deref(), terminal.as_deref(), *limit).await
                }
                AlertsCmd::Show { id } => alerts::show(&client, cli.json, *id).await,
                AlertsCmd::Ack { id, note } => alerts::ack(&client, cli.json, *id, note).await,
            }
        }
        Cmd::Approvals(a) => {
            let (_, client) = connect(&cli).await?;
            match a {
                ApprovalsCmd::List { all } => approvals::list(&client, cli.json, *all).await,
                ApprovalsCmd::Approve { id, out } => {
                    approvals::decide(&client, cli.json, id, true, out.as_deref()).await
                }
                ApprovalsCmd::Reject { id } => approvals::decide(&client, cli.json, id, false, None).await,
            }
        }
        Cmd::Rekey { terminal, csr, station, reason } => {
            let csr_der = std::fs::read(csr).with_context(|| format!("reading {}", csr.display()))?;
            let (_, client) = connect(&cli).await?;
            let reason = match reason {
                RekeyReason::Superseded => v1::RevocationReason::Superseded,
                RekeyReason::KeyCompromise => v1::RevocationReason::KeyCompromise,
            } as i32;
            let msg = v1::RequestRekeyRequest {
                request_id: request_id(),
                terminal_serial: terminal.clone(),
                csr_der,
                station: station.clone(),
                reason,
            };
            approvals::request_rekey(&client, cli.json, msg).await
        }
        Cmd::Verify { cert, ocsp: _, crl, issuer, root } => {
            let read = |p: &Path| -> Result<pki::Certificate> {
                let pem = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
                Ok(pki::pem::certificate_from_pem(&pem)?)
            };
            let (issuing, root) = match (issuer, root) {
                (Some(i), Some(r)) => (read(i)?, read(r)?),
                _ => {
                    let (identity, client) = connect(&cli).await?;
                    let msg = v1::GetCaChainRequest { request_id: request_id() };
                    let chain = CertificateAuthorityClient::new(client.channel.clone())
                        .get_ca_chain(client.signed("/hsca.v1.CertificateAuthority/GetCaChain", msg)?)
                        .await?
                        .into_inner();
                    let (issuing, served_root) = revocation::chain_from_der(&chain.issuing_der, &chain.root_der)?;
                    let pinned = match root {
                        Some(r) => read(r)?,
                        None => read(&identity.path(&identity.file.pki_root))?,
                    };
                    if served_root != pinned {
                        return Err(
                            revocation::NotValid("the CA serves a root other than the pinned one".into()).into()
                        );
                    }
                    (issuing, pinned)
                }
            };
            let source = if *crl { revocation::Source::Crl } else { revocation::Source::Ocsp };
            let (cert, json) = (cert.clone(), cli.json);
            tokio::task::spawn_blocking(move || revocation::verify(&cert, &issuing, &root, source, json)).await?
        }
        Cmd::Status { cert } => {
            let text = std::fs::read_to_string(cert).with_context(|| format!("reading {}", cert.display()))?;
            let c = pki::pem::certificate_from_pem(&text)?;
            let serial = pki::CertSerial::of(&c).context("certificate serial is not a positive integer")?.to_hex();
            let (_, client) = connect(&cli).await?;
            let msg = v1::GetCertificateStatusRequest { request_id: request_id(), certificate_serial: serial.clone() };
            let s = CertificateAuthorityClient::new(client.channel.clone())
                .get_certificate_status(client.signed("/hsca.v1.CertificateAuthority/GetCertificateStatus", msg)?)
                .await?
                .into_inner();
            let state =
                v1::certificate_status::State::try_from(s.state).map_or("?".into(), |s| s.as_str_name().to_lowercase());
            print(
                cli.json,
                &serde_json::json!({"serial": serial, "state": state, "revoked_at_ms": s.revoked_at_ms}),
                || format!("{serial}: {state}"),
            )
        }
        Cmd::Audit(AuditCmd::Verify { anchors, registry, audit_key }) if anchors.is_some() || registry.is_some() => {
            verify_audit(&cli, anchors.as_deref(), registry.as_deref(), audit_key.as_deref()).await
        }
        Cmd::Audit(a) => {
            let (_, client) = connect(&cli).await?;
            let mut msg =
                v1::ListAuditRequest { request_id: request_id(), last: 1, verify: true, ..Default::default() };
            if let AuditCmd::Tail { last, actor, target, before } = a {
                msg.last = *last;
                msg.verify = false;
                msg.actor = actor.clone().unwrap_or_default();
                msg.target = target.clone().unwrap_or_default();
                msg.before_seq = before.unwrap_or_default();
            }
            let verify = msg.verify;
            let resp = AdminClient::new(client.channel.clone())
                .list_audit(client.signed("/hsca.v1.Admin/ListAudit", msg)?)
                .await?
                .into_inner();
            if verify {
                print(
                    cli.json,
                    &serde_json::json!({"verified": resp.chain_verified, "entries": resp.chain_length, "error": resp.chain_error,
                        "checkpoints_verified": resp.checkpoints_verified, "last_checkpoint_seq": resp.last_checkpoint_seq,
                        "checkpoint_key_configured": resp.checkpoint_key_configured}),
                    || {
                        if resp.chain_verified && !resp.checkpoint_key_configured {
                            format!(
                                "audit chain verified: {} entries (hash chain only: the server has no [audit] key_label, so nothing is signed)\n{}",
                                resp.chain_length,
                                audit::DATABASE_ALONE
                            )
                        } else if resp.chain_verified && resp.checkpoints_verified == 0 {
                            format!(
                                "audit chain verified: {} entries; no signed checkpoint yet (the server signs one every [audit] checkpoint_seconds and at shutdown)\n{}",
                                resp.chain_length,
                                audit::DATABASE_ALONE
                            )
                        } else if resp.chain_verified {
                            format!(
                                "audit chain verified: {} entries; {} signed checkpoints verified, entries 1..{} vouched for by the audit key\n{}",
                                resp.chain_length,
                                resp.checkpoints_verified,
                                resp.last_checkpoint_seq,
                                audit::DATABASE_ALONE
                            )
                        } else {
                            format!("AUDIT CHAIN BROKEN: {}", resp.chain_error)
                        }
                    },
                )?;
                if !resp.chain_verified {
                    bail!("audit chain broken: {}", resp.chain_error);
                }
                Ok(())
            } else {
                let rows: Vec<_> = resp
                    .entries
                    .iter()
                    .map(|e| serde_json::json!({"seq": e.seq, "time_ms": e.time_ms, "actor": e.actor, "action": e.action, "target": e.target, "outcome": e.outcome, "detail": e.detail}))
                    .collect();
                print(cli.json, &rows, || {
                    resp.entries
                        .iter()
                        .map(|e| {
                            format!(
                                "{:>6} {} {:<14} {:<18} {:<20} {} {}",
                                e.seq, e.time_ms, e.actor, e.action, e.target, e.outcome, e.detail
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                })
            }
        }
    }
}

/// `audit verify` with `--anchors` or `--registry`: checked here, on a registry file (named, or
/// a snapshot of the running CA's).
async fn verify_audit(cli: &Cli, anchors: Option<&Path>, registry: Option<&Path>, key: Option<&Path>) -> Result<()> {
    let pinned = key.map(audit::read_public_key).transpose()?;
    let tmp;
    let registry = match registry {
        Some(r) => r.to_owned(),
        None => {
            let (_, client) = connect(cli).await?;
            tmp = tempfile::tempdir()?;
            let path = tmp.path().join("snapshot.redb");
            audit::snapshot(&client, &path).await?;
            path
        }
    };
    let Some(anchors) = anchors else {
        let (entries, checkpoints) = audit::verify_alone(&registry, pinned)?;
        return print(
            cli.json,
            &serde_json::json!({"verified": true, "entries": entries, "checkpoints": checkpoints, "anchors_checked": false}),
            || format!("audit chain verified: {entries} entries, {checkpoints} checkpoints\n{}", audit::DATABASE_ALONE),
        );
    };
    let v = audit::verify(&registry, anchors, pinned)?;
    print(cli.json, &v, || audit::describe(&v))
}

fn getrandom_fill(b: &mut [u8]) -> Result<()> {
    getrandom::fill(b).map_err(|e| anyhow::anyhow!("random: {e}"))
}

/// `Streaming::message` without another dependency.
mod tokio_stream_next {
    pub async fn next<T>(s: &mut tonic::Streaming<T>) -> Result<Option<T>, tonic::Status> {
        s.message().await
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cactl: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(n) = e.downcast_ref::<audit::NotVerified>() {
                eprintln!("cactl: AUDIT NOT VERIFIED: {n}");
                return ExitCode::from(1);
            }
            if let Some(n) = e.downcast_ref::<revocation::NotValid>() {
                eprintln!("cactl: NOT VALID: {n}");
                return ExitCode::from(1);
            }
            if let Some(s) = e.downcast_ref::<tonic::Status>() {
                let reason = proto::reason(s).map_or("UNSPECIFIED", |r| r.as_str_name());
                eprintln!("cactl: refused: {reason}: {}", s.message());
                return ExitCode::from(1);
            }
            if e.downcast_ref::<proto::client::ClientError>()
                .is_some_and(|c| matches!(c, proto::client::ClientError::Connect { .. }))
            {
                eprintln!("cactl: {e:#}");
                return ExitCode::from(3);
            }
            eprintln!("cactl: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_take_rfc_5280_and_kebab_spellings() {
        for (rfc, kebab, reason) in REASONS {
            assert_eq!(parse_reason(rfc), Ok(reason), "{rfc}");
            assert_eq!(parse_reason(kebab), Ok(reason), "{kebab}");
        }
        assert_eq!(parse_reason("cACompromise"), Ok(Reason::CaCompromise));
        // Case-sensitive, as RFC 5280 writes them.
        for bad in ["KeyCompromise", "keycompromise", "Key-Compromise", "compromised", ""] {
            let err = parse_reason(bad).expect_err(bad);
            assert!(err.contains(&format!("unknown reason `{bad}`")), "{err}");
            assert!(err.contains("keyCompromise (key-compromise)") && err.contains("privilegeWithdrawn"), "{err}");
        }
        assert!(parse_reason("removeFromCRL").expect_err("not a revocation").contains("cactl unrevoke"));
        assert!(parse_reason("aACompromise").expect_err("no attribute certificates").contains("attribute"));
    }
}
