//! `ca-server serve --config FILE`: gRPC over TLS plus HTTP, until SIGTERM or Ctrl-C; in-flight
//! requests finish before the process exits.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use hsm::backend::pkcs11::{KeySelector, Pkcs11Config, Pkcs11Hsm, VendorProfile};
use pki::cert::IssuerInfo;
use pki::policy::Source;
use proto::v1;
use registry::Registry;
use zeroize::Zeroizing;

use crate::api::{Ca, Services};
use crate::auth::{FailureLimiter, NonceCache, Trust};
use crate::config::Loaded;
use crate::roles::Roles;

/// Environment variable that may hold the HSM PIN when no `pin_file` is configured.
pub const PIN_ENV: &str = "HSCA_HSM_PIN";

fn read_policy(cfg: &Loaded) -> Result<(pki::PolicySet, Roles)> {
    let dir = cfg.path(&cfg.config.policy.directory);
    let names = ["hierarchy.toml", "profiles.toml", "serial-rules.toml", "roles.toml"];
    let paths: Vec<_> = names.iter().map(|n| dir.join(n)).collect();
    let texts = paths
        .iter()
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let policy = pki::PolicySet::load_texts([&shown[0], &shown[1], &shown[2]], [&texts[0], &texts[1], &texts[2]])?;
    let roles = Roles::load(Source { name: &shown[3], text: &texts[3] })?;
    Ok((policy, roles))
}

fn certificate(path: &Path) -> Result<pki::Certificate> {
    let pem = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(pki::pem::certificate_from_pem(&pem)?)
}

/// What signing needs: policy, roles, the trust anchors and the issuing key in the HSM.
pub struct Signing {
    /// Certificate policy.
    pub policy: pki::PolicySet,
    /// Roles policy.
    pub roles: Roles,
    /// The issuing CA's key.
    pub signer: Box<dyn hsm::Signer>,
    /// The issuing CA as an issuer.
    pub issuer_info: IssuerInfo,
    /// Root and issuing certificates.
    pub trust: Trust,
    /// The key that signs audit checkpoints, when configured.
    pub audit: Option<crate::audit::AuditSigner>,
    /// The key that signs OCSP responses, and whether it is a delegated responder's.
    pub ocsp: (Arc<dyn hsm::Signer>, bool),
}

/// Loads the configuration, policy, certificates and HSM key (not the registry).
pub fn load_signing(config_path: &Path) -> Result<(Loaded, Signing)> {
    let cfg = Loaded::read(config_path)?;
    let c = &cfg.config;
    for (k, v) in &c.hsm.env {
        let value = if v.ends_with(".toml") || v.contains('/') {
            cfg.path(Path::new(v)).display().to_string()
        } else {
            v.clone()
        };
        // SAFETY: set before the runtime starts and before the module is loaded.
        unsafe { std::env::set_var(k, value) };
    }
    crate::secrets::check_private_file(&cfg.path(&c.tls.key), "the TLS key file")?;
    if let Some(f) = &c.hsm.pin_file {
        crate::secrets::check_private_file(&cfg.path(f), "the HSM PIN file")?;
    }
    let pin = match &c.hsm.pin_file {
        Some(f) => Zeroizing::new(
            std::fs::read_to_string(cfg.path(f))
                .with_context(|| format!("reading the HSM PIN file {}", cfg.path(f).display()))?
                .trim()
                .to_owned(),
        ),
        None => Zeroizing::new(std::env::var(PIN_ENV).with_context(|| format!("no [hsm] pin_file and no {PIN_ENV}"))?),
    };
    let profile = match c.hsm.profile.as_str() {
        "softtoken" => VendorProfile::softtoken()?,
        "xipki" => VendorProfile::xipki()?,
        path => VendorProfile::from_toml(
            &std::fs::read_to_string(cfg.path(Path::new(path)))
                .with_context(|| format!("reading vendor profile {path}"))?,
        )?,
    };
    let (policy, roles) = read_policy(&cfg)?;
    let root = certificate(&cfg.path(&c.ca.root))?;
    let issuing = certificate(&cfg.path(&c.ca.issuing))?;
    let issuing_profile = policy.profile(&policy.hierarchy.issuing.profile).context("issuing profile")?;
    let mut issuer_info = IssuerInfo::from_certificate(&issuing, issuing_profile.signer_id.clone())?;
    // Every certificate, CRL and OCSP answer is checked against this key before it leaves.
    issuer_info.key = issuer_info.key.precomputed();
    pki::validate_chain(&issuing, &[], &root, std::time::SystemTime::now(), &issuing_profile.signer_id)
        .context("issuing CA certificate does not validate to the root")?;

    let hsm = Pkcs11Hsm::open(Pkcs11Config {
        module: cfg.path(&c.hsm.module),
        token_label: Some(c.hsm.token_label.clone()),
        pin,
        profile,
    })?;
    // The HSM lives as long as the process; signers borrow it.
    let hsm: &'static Pkcs11Hsm = Box::leak(Box::new(hsm));
    let signer =
        hsm.signer(KeySelector::Label(policy.hierarchy.issuing.key_label.clone()), issuing_profile.signer_id.clone())?;
    signer.self_test()?;
    if hsm::Signer::public_key(&signer) != *issuing.tbs_certificate().subject_public_key_info() {
        bail!(
            "the HSM key {} is not the key of {}",
            policy.hierarchy.issuing.key_label,
            cfg.path(&c.ca.issuing).display()
        );
    }
    let audit = match &c.audit.key_label {
        Some(label) => {
            let key = hsm
                .signer(KeySelector::Label(label.clone()), pki::SignerId::default())
                .with_context(|| format!("the audit key {label:?} in the HSM"))?;
            key.self_test()?;
            let anchors = registry::anchor::AnchorLog::open(&cfg.path(&c.audit.anchor_dir))?;
            Some(crate::audit::AuditSigner::new(Box::new(key))?.with_anchor_log(anchors)?)
        }
        None => None,
    };
    let ocsp: (Arc<dyn hsm::Signer>, bool) = match &c.ocsp.key_label {
        Some(label) => {
            let key = hsm
                .signer(KeySelector::Label(label.clone()), pki::SignerId::default())
                .with_context(|| format!("the OCSP responder key {label:?} in the HSM"))?;
            key.self_test()?;
            (Arc::new(key), true)
        }
        None => (
            Arc::new(hsm.signer(
                KeySelector::Label(policy.hierarchy.issuing.key_label.clone()),
                issuing_profile.signer_id.clone(),
            )?),
            false,
        ),
    };
    let trust = Trust { issuing, root, signer_id: issuing_profile.signer_id.clone() };
    Ok((cfg, Signing { policy, roles, signer: Box::new(signer), issuer_info, trust, audit, ocsp }))
}

/// Loads everything the service needs; fails fast, before listening, on any problem.
pub fn load(config_path: &Path) -> Result<(Loaded, Arc<Ca>)> {
    load_with(config_path, &LoadOptions::default())
}

/// How `serve` starts.
#[derive(Debug, Default, Clone)]
pub struct LoadOptions {
    /// Start even though the registry's audit chain lacks the newest anchored head (audited,
    /// and shown by `/readyz`).
    pub accept_audit_rollback: bool,
}

/// [`load`], with options.
pub fn load_with(config_path: &Path, opts: &LoadOptions) -> Result<(Loaded, Arc<Ca>)> {
    let (cfg, s) = load_signing(config_path)?;
    let registry = cfg.open_registry()?;
    check_anchors(s.audit.as_ref(), &registry, opts.accept_audit_rollback)?;
    let terminal_dp = s
        .policy
        .profile("terminal")
        .and_then(|p| p.crl_distribution_points.first().cloned())
        .context("the terminal profile names no CRL distribution point")?;
    let crl_urls = if terminal_dp.contains(pki::cert::PARTITION) {
        let full = pki::cert::full_crl_url(&terminal_dp);
        crate::revocation::CrlUrls { full, partition: Some(terminal_dp) }
    } else {
        crate::revocation::CrlUrls { full: terminal_dp, partition: None }
    };
    let timing = crate::revocation::CrlTiming {
        validity: std::time::Duration::from_secs(cfg.config.crl.validity_hours.max(1) * 3600),
        full_every: std::time::Duration::from_secs(cfg.config.crl.full_every_seconds.max(1)),
    };
    let (ocsp_signer, delegated) = s.ocsp;
    let certificate = if delegated {
        responder_certificate(&cfg, &s.policy, s.signer.as_ref(), &s.issuer_info, ocsp_signer.as_ref(), &registry)?
    } else {
        s.trust.issuing.clone()
    };
    // The embedded softtoken computes in this process and redb reads locally: no round trip.
    let in_process =
        cfg.path(&cfg.config.hsm.module).file_name().is_some_and(|n| n == "libsofttoken.so") && !registry.is_shared();
    let responder = crate::ocsp::Responder::new(
        crate::ocsp::ResponderKey { signer: ocsp_signer, certificate, delegated },
        &s.trust.issuing,
        std::time::Duration::from_secs(cfg.config.ocsp.validity_minutes.max(2) * 60),
    )?
    .with_uncached_budget(cfg.config.ocsp.fresh_signatures_per_second)
    .with_in_process_signing(in_process);
    let chain_der = [&s.trust.issuing, &s.trust.root]
        .iter()
        .map(|c| der::Encode::to_der(*c))
        .collect::<Result<Vec<_>, _>>()
        .context("encoding the CA chain")?;
    // Instances on one registry share failure counts: the limit holds for all of them together.
    let limiter = if registry.is_shared() { FailureLimiter::shared() } else { FailureLimiter::default() };
    for line in s.roles.missing_lines() {
        // Fail closed (nobody may call it), but say what to add.
        tracing::warn!("roles.toml does not list a method this build serves; add under [methods]: {line}");
    }
    let ca = Ca {
        chain_der,
        require_registration: cfg.config.policy.require_registration,
        hold_until_activation: cfg.config.policy.hold_until_activation,
        activation_challenge_ms: cfg.config.policy.activation_challenge_seconds.clamp(1, 3600) * 1000,
        activation_challenges_per_operator: cfg.config.policy.activation_challenges_per_operator.max(1),
        policy: s.policy,
        roles: s.roles,
        registry,
        signer: s.signer,
        issuer_info: s.issuer_info,
        trust: s.trust,
        audit_signer: s.audit,
        // Requests signed before this start are refused: nonces do not survive a restart.
        nonces: NonceCache::starting_at(crate::records::now_ms()),
        refusals: Default::default(),
        limiter,
        validated: Default::default(),
        metrics: Default::default(),
        crls: crate::revocation::Crls::new(crl_urls, timing),
        ocsp: responder,
        ordinals: std::sync::Mutex::new((0, 0)),
        partition_size: cfg.config.crl.partition_size.max(1),
        cpu_pool: if in_process { Some(crate::cpu_pool::CpuPool::for_this_machine()?) } else { None },
    };
    Ok((cfg, Arc::new(ca)))
}

fn check_anchors(audit: Option<&crate::audit::AuditSigner>, registry: &Registry, accept: bool) -> Result<()> {
    use crate::audit::AnchorCheck;
    let Some(audit) = audit else {
        tracing::warn!("no [audit] key_label: no checkpoints, no anchor log; truncation and rollback go unnoticed");
        return Ok(());
    };
    match audit.check_anchors(registry, accept).map_err(|e| {
        anyhow::anyhow!("{e}\nrefusing to start; if this loss is known and accepted, start once with --accept-audit-rollback (audited)")
    })? {
        AnchorCheck::RollbackAccepted(why) => tracing::error!(%why, "audit rollback accepted at start"),
        AnchorCheck::Holds { seq } => tracing::info!(seq, "audit chain holds the newest anchored head"),
        AnchorCheck::Empty | AnchorCheck::NoAnchorLog => {}
    }
    Ok(())
}

fn issued_by(cert: &pki::Certificate, issuer: &IssuerInfo) -> bool {
    let Ok(tbs) = der::Encode::to_der(cert.tbs_certificate()) else { return false };
    let Some(sig) = cert.signature().as_bytes() else { return false };
    *cert.tbs_certificate().issuer() == issuer.name && issuer.key.verify(&issuer.signer_id, &tbs, sig).is_ok()
}

/// Renew a responder certificate when less than a third of its life is left.
fn renewal_due(cert: &pki::Certificate, now: std::time::SystemTime) -> bool {
    let v = cert.tbs_certificate().validity();
    let (from, to) = (v.not_before.to_system_time(), v.not_after.to_system_time());
    let third = to.duration_since(from).unwrap_or_default() / 3;
    to.duration_since(now).is_ok_and(|left| left < third) || now >= to
}

/// The delegated responder's certificate: the one on disk while it is for this key and not due
/// for renewal, else a new one issued now by the issuing CA (profile `ocsp-signer`), written
/// to disk and audited.
pub fn responder_certificate(
    cfg: &Loaded,
    policy: &pki::PolicySet,
    issuing_signer: &dyn hsm::Signer,
    issuer_info: &IssuerInfo,
    responder_key: &dyn hsm::Signer,
    registry: &Registry,
) -> Result<pki::Certificate> {
    let path = cfg.path(&cfg.config.ocsp.certificate);
    let now = std::time::SystemTime::now();
    // Kept only while it is for this key, issued by the current issuing CA (it changes when the
    // CA is re-keyed) and not due for renewal; unreadable or damaged, it is simply made again.
    if let Some(cert) = std::fs::read_to_string(&path).ok().and_then(|pem| pki::pem::certificate_from_pem(&pem).ok())
        && *cert.tbs_certificate().subject_public_key_info() == responder_key.public_key()
        && issued_by(&cert, issuer_info)
        && !renewal_due(&cert, now)
    {
        return Ok(cert);
    }
    let profile = policy.profile("ocsp-signer").context("the policy has no ocsp-signer profile")?;
    let key = pki::Sm2PublicKey::from_spki(&responder_key.public_key())?;
    let vars = pki::SubjectVars { name: Some("HSCA OCSP Responder 1".into()), ..Default::default() };
    let cert = crate::issuer::Issuer::new(issuing_signer, issuer_info).issue(profile, &vars, &key, now)?;
    let tmp = path.with_extension("pem.tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(pki::pem::certificate_to_pem(&cert)?.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    let serial = pki::CertSerial::of(&cert).map(|s| s.to_hex()).unwrap_or_default();
    registry.audit(&registry::AuditEvent {
        time_ms: crate::records::now_ms(),
        actor: "system".into(),
        action: "issue_ocsp_responder".into(),
        target: serial,
        outcome: "ok".into(),
        detail: format!("profile ocsp-signer, written to {}", path.display()),
    })?;
    tracing::info!(path = %path.display(), "issued the OCSP responder certificate");
    Ok(cert)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
    tracing::info!("shutting down: finishing in-flight requests");
}

async fn checkpoint_now(ca: Arc<Ca>) {
    let made = tokio::task::spawn_blocking(move || ca.audit_signer.as_ref().map(|a| a.checkpoint(&ca.registry))).await;
    match made {
        Ok(Some(Ok(Some(cp)))) => tracing::info!(seq = cp.seq, "audit checkpoint signed"),
        Ok(Some(Err(e))) => tracing::error!(error = %e, "audit checkpoint failed"),
        Err(e) => tracing::error!(error = %e, "audit checkpoint task failed"),
        Ok(None | Some(Ok(None))) => {}
    }
}

/// Writes the refusals counted since the last call to the audit log, one entry per source.
async fn flush_refusals(ca: Arc<Ca>) {
    let done = tokio::task::spawn_blocking(move || {
        let events = ca.refusals.drain(crate::records::now_ms());
        ca.registry.audit_all(&events).map_err(anyhow::Error::from)
    })
    .await;
    if let Ok(Err(e)) | Err(e) = done.map_err(anyhow::Error::from) {
        tracing::error!(error = %e, "auditing refusals failed");
    }
}

/// Refused authentications reach the audit log in aggregate every [`REFUSAL_INTERVAL`].
async fn refusal_loop(ca: Arc<Ca>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(REFUSAL_INTERVAL);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => flush_refusals(ca.clone()).await,
            _ = stop.changed() => return,
        }
    }
}

/// On a shared registry, every [`SHARED_REGISTRY_POLL`]: this instance's new authentication
/// failures go to the registry and the sources blocked over all instances come back (so a source
/// over the limit is refused by every instance within two polls). Nothing to do on redb.
async fn shared_failure_loop(ca: Arc<Ca>, mut stop: tokio::sync::watch::Receiver<bool>) {
    if !ca.registry.is_shared() {
        return;
    }
    let mut poll = tokio::time::interval(SHARED_REGISTRY_POLL);
    let mut blocked = 0;
    loop {
        tokio::select! {
            _ = poll.tick() => {}
            _ = stop.changed() => return,
        }
        let asking = ca.clone();
        let shared = tokio::task::spawn_blocking(move || {
            asking.limiter.share(&asking.registry, asking.roles.failures_per_minute)
        })
        .await;
        match shared {
            Ok(Ok(n)) if n != blocked => {
                tracing::info!(sources = n, "sources over the failure limit across instances");
                blocked = n;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "sharing authentication failures failed; kept for the next poll"),
            Err(e) => tracing::error!(error = %e, "failure-sharing task failed"),
        }
    }
}

/// How often aggregated refusals are written to the audit log.
pub const REFUSAL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

async fn checkpoint_loop(
    ca: Arc<Ca>,
    audit: crate::config::AuditSection,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if ca.audit_signer.is_none() {
        return;
    }
    // Polled: a read of the chain's head is cheap, and the count must be met between ticks.
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let due = ca.audit_signer.as_ref().map(|a| a.due(&ca.registry, audit.checkpoint_entries, audit.checkpoint_seconds));
                match due {
                    Some(Ok(true)) => checkpoint_now(ca.clone()).await,
                    Some(Err(e)) => tracing::error!(error = %e, "audit checkpoint check failed"),
                    _ => {}
                }
            }
            _ = stop.changed() => return,
        }
    }
}

/// `Some(scheduled)`: everything (a scheduled run moves the delta base); `None`: what recent
/// revocations changed.
/// `snapshot`: a read of the revocations the caller just made (not read twice).
async fn publish_crls(ca: Arc<Ca>, all: Option<bool>, snapshot: Option<registry::RevocationSnapshot>) {
    let ca_for_retry = ca.clone();
    let result = tokio::task::spawn_blocking(move || {
        let partitions = ca.crl_partitions();
        match all {
            Some(scheduled) => {
                ca.crls.publish_all(&ca.registry, ca.signer.as_ref(), &ca.issuer_info, partitions, scheduled, snapshot)
            }
            None => ca.crls.publish_changes(&ca.registry, ca.signer.as_ref(), &ca.issuer_info, partitions),
        }
    })
    .await;
    let failed = match result {
        Ok(Ok(())) => false,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "publishing CRLs failed; retrying in 1 s");
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "CRL task failed; retrying in 1 s");
            true
        }
    };
    if failed {
        // The marked partitions were kept: wake the loop again shortly.
        let ca = ca_for_retry;
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            ca.crls.changed.notify_one();
        });
    }
}

/// A scheduled full CRL (the new delta base) at start and every `full_every`; after each
/// revocation a new full CRL and a delta over the base (a burst of revocations, as a bulk one, is
/// coalesced over 100 ms). On a shared registry only the CRL leader signs: it stores each CRL in
/// the registry and the other instances serve those bytes.
async fn crl_loop(ca: Arc<Ca>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let shared = ca.registry.is_shared();
    // On a shared registry: revocations other instances made (their OCSP answers re-signed here
    // within a poll: DESIGN §9's "within a second"), the CRL leader lock (asked every 2 s, shown at
    // /metrics, moving when the leader dies), and on a follower the CRLs the leader stored.
    let mut leader = !shared || ask_crl_leader(&ca).await;
    ca.metrics.crl_leader.store(u64::from(leader), std::sync::atomic::Ordering::Relaxed);
    if shared {
        // A leader continues the stored delta base; a follower serves what is stored.
        load_stored_crls(&ca).await;
    }
    if leader {
        publish_crls(ca.clone(), Some(true), None).await;
    }
    let mut tick = tokio::time::interval(ca.crls.timing().full_every);
    // Not polled while following: on taking over, one scheduled CRL, not a burst of missed ones.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut poll = tokio::time::interval(SHARED_REGISTRY_POLL);
    let mut seen_seq: Option<u64> = None;
    let mut polls: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick(), if leader => publish_crls(ca.clone(), Some(true), None).await,
            _ = poll.tick(), if shared => {
                if polls.is_multiple_of(8) {
                    let was = leader;
                    leader = ask_crl_leader(&ca).await;
                    ca.metrics.crl_leader.store(u64::from(leader), std::sync::atomic::Ordering::Relaxed);
                    if leader && !was {
                        // Taking over: the stored base first, then CRLs numbered after the old leader's.
                        tracing::info!("this instance is now the CRL leader");
                        load_stored_crls(&ca).await;
                        publish_crls(ca.clone(), Some(false), None).await;
                    }
                }
                polls += 1;
                let asking = ca.clone();
                let (seq, grown) = tokio::task::spawn_blocking(move || {
                    let grown = leader && asking.crl_partitions() > asking.crls.partitions();
                    (asking.registry.revocation_seq().ok(), grown)
                })
                .await
                .unwrap_or((None, false));
                let mut publish = grown;
                let mut snapshot = None;
                if seq.is_some() && seq != seen_seq {
                    if let Some(since) = seen_seq {
                        let asking = ca.clone();
                        snapshot = tokio::task::spawn_blocking(move || refresh_changed_since(&asking, since))
                            .await
                            .ok()
                            .flatten();
                        // This leader's own revocations were published already (publish_changes).
                        publish |= seq.is_some_and(|s| s > ca.crls.published_seq());
                    }
                    seen_seq = seq;
                }
                if leader && publish {
                    publish_crls(ca.clone(), Some(false), snapshot).await;
                } else if !leader {
                    load_stored_crls(&ca).await;
                }
            }
            // A follower's revocations reach the leader through the revocation sequence.
            () = ca.crls.changed.notified(), if leader => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                publish_crls(ca.clone(), None, None).await;
            }
            _ = stop.changed() => return,
        }
    }
}

/// Whether this instance holds the CRL leader lock (false when the registry cannot say).
async fn ask_crl_leader(ca: &Arc<Ca>) -> bool {
    let asking = ca.clone();
    tokio::task::spawn_blocking(move || asking.registry.crl_leader().unwrap_or(false)).await.unwrap_or(false)
}

/// Takes the CRLs the leader stored since the last call.
async fn load_stored_crls(ca: &Arc<Ca>) {
    let asking = ca.clone();
    let loaded =
        tokio::task::spawn_blocking(move || asking.crls.load_stored(&asking.registry, &asking.issuer_info)).await;
    if let Ok(Err(e)) = loaded {
        tracing::warn!(error = %e, "reading the CRLs the leader stored failed; next poll");
    }
}

/// How often an instance on a shared registry looks for revocations made by the others (one
/// counter read).
const SHARED_REGISTRY_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Re-signs the cached OCSP answers about certificates revoked or released after `since` (the
/// revocation sequence), by whichever instance: until then this one would answer from its cache.
/// Returns the revocations it read, for the CRLs.
fn refresh_changed_since(ca: &Ca, since: u64) -> Option<registry::RevocationSnapshot> {
    let snapshot = match ca.registry.revocation_snapshot() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "reading revocations made by other instances failed");
            return None;
        }
    };
    let revoked = snapshot.revoked.iter().filter(|r| r.seq > since).map(|r| &r.serial);
    let released = snapshot.released.iter().filter(|r| r.seq > since).map(|r| &r.serial);
    for serial in revoked.chain(released) {
        ca.ocsp.refresh(&ca.registry, serial);
    }
    Some(snapshot)
}

/// Every 30 s: re-sign cached OCSP answers past half their validity, and renew the delegated
/// responder's certificate when a third of its life is left.
async fn ocsp_loop(ca: Arc<Ca>, cfg: Loaded, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let (ca, cfg) = (ca.clone(), cfg.clone());
        let done = tokio::task::spawn_blocking(move || -> Result<()> {
            ca.ocsp.refresh_due(&ca.registry);
            let Some(key) = ca.ocsp.key() else { return Ok(()) };
            if key.delegated && renewal_due(&key.certificate, std::time::SystemTime::now()) {
                let cert = responder_certificate(
                    &cfg,
                    &ca.policy,
                    ca.signer.as_ref(),
                    &ca.issuer_info,
                    key.signer.as_ref(),
                    &ca.registry,
                )?;
                ca.ocsp.replace_key(crate::ocsp::ResponderKey {
                    signer: key.signer.clone(),
                    certificate: cert,
                    delegated: true,
                })?;
            }
            Ok(())
        })
        .await;
        if let Ok(Err(e)) | Err(e) = done.map_err(anyhow::Error::from) {
            tracing::error!(error = %e, "OCSP maintenance failed");
        }
    }
}

/// Serves until a shutdown signal.
pub async fn serve(cfg: Loaded, ca: Arc<Ca>) -> Result<()> {
    let c = &cfg.config;
    let cert = std::fs::read(cfg.path(&c.tls.certificate)).context("reading TLS certificate")?;
    let key = Zeroizing::new(std::fs::read(cfg.path(&c.tls.key)).context("reading TLS key")?);
    let tls =
        tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(cert, key.as_slice()));
    let grpc_addr: std::net::SocketAddr =
        c.server.grpc.parse().with_context(|| format!("server.grpc {:?}", c.server.grpc))?;
    let http_addr: std::net::SocketAddr =
        c.server.http.parse().with_context(|| format!("server.http {:?}", c.server.http))?;
    let services = Services(ca.clone());
    // gRPC is bound before /readyz can answer, so a client that saw ready is never refused.
    let grpc_listener = tonic::transport::server::TcpIncoming::bind(grpc_addr)
        .with_context(|| format!("binding {grpc_addr}"))?
        .with_nodelay(Some(true));
    let http = tokio::net::TcpListener::bind(http_addr).await.with_context(|| format!("binding {http_addr}"))?;
    tracing::info!(grpc = %grpc_addr, http = %http_addr, "serving");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let http_task = tokio::spawn({
        let mut rx = stop_rx.clone();
        let ca = ca.clone();
        async move {
            axum::serve(http, crate::http::router(ca))
                .with_graceful_shutdown(async move {
                    let _ = rx.changed().await;
                })
                .await
        }
    });
    // Health and reflection answer without a signature; every hsca.v1 method authenticates.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let grpc = tonic::transport::Server::builder()
        .tls_config(tls)?
        .layer(crate::api::raw::KeepRawLayer)
        .add_service(tonic_health::pb::health_server::HealthServer::new(crate::api::HealthService(ca.clone())))
        .add_service(reflection().build_v1().context("reflection")?)
        .add_service(reflection().build_v1alpha().context("reflection")?)
        .add_service(v1::certificate_authority_server::CertificateAuthorityServer::new(services.clone()))
        .add_service(v1::registry_server::RegistryServer::new(services.clone()))
        .add_service(v1::admin_server::AdminServer::new(services))
        .serve_with_incoming_shutdown(grpc_listener, shutdown_signal());
    let checkpoints = tokio::spawn(checkpoint_loop(ca.clone(), c.audit.clone(), stop_rx.clone()));
    let crls = tokio::spawn(crl_loop(ca.clone(), stop_rx.clone()));
    let ocsp = tokio::spawn(ocsp_loop(ca.clone(), cfg.clone(), stop_rx.clone()));
    let refusals = tokio::spawn(refusal_loop(ca.clone(), stop_rx.clone()));
    let shared_failures = tokio::spawn(shared_failure_loop(ca.clone(), stop_rx.clone()));
    let result = grpc.await;
    let _ = stop_tx.send(true);
    http_task.await??;
    let _ = checkpoints.await;
    let _ = crls.await;
    let _ = ocsp.await;
    let _ = refusals.await;
    let _ = shared_failures.await;
    flush_refusals(ca.clone()).await;
    // The last words of the chain get signed too.
    checkpoint_now(ca).await;
    result?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::renewal_due;
    use std::time::{Duration, SystemTime};

    fn cert(days: u64) -> pki::Certificate {
        let policy = pki::PolicySet::embedded_default().expect("policy");
        let key = hsm::backend::memory::SoftwareSm2Key::generate(pki::SignerId::default()).expect("key");
        let profile = policy.profile("ocsp-signer").expect("profile");
        let profile = pki::CertProfile { validity: Duration::from_secs(days * 86_400), ..profile.clone() };
        let vars = pki::SubjectVars { name: Some("r".into()), ..Default::default() };
        let req = pki::TbsRequest {
            profile: &profile,
            vars: &vars,
            subject_key: key.sm2_public_key(),
            serial: pki::CertSerial::generate().expect("rng"),
            now: SystemTime::now(),
        };
        let tbs = pki::build_tbs(&req, None).expect("tbs");
        let sig = hsm::Signer::sign(&key, tbs.to_be_signed()).expect("sign");
        tbs.assemble(sig.as_der()).expect("cert")
    }

    #[test]
    fn responder_certificates_are_renewed_in_their_last_third() {
        let c = cert(30);
        let now = SystemTime::now();
        assert!(!renewal_due(&c, now));
        assert!(!renewal_due(&c, now + Duration::from_secs(19 * 86_400)));
        assert!(renewal_due(&c, now + Duration::from_secs(21 * 86_400)));
        assert!(renewal_due(&c, now + Duration::from_secs(40 * 86_400)), "expired");
    }
}
