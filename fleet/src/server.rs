//! `fleet-server serve`: the `hsca.v1.Fleet` gRPC service over TLS, `/healthz /readyz /metrics`
//! over HTTP, the silence sweep, and the rules' actions at the CA; graceful on SIGTERM.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use der::Decode;
use prost::Message;
use proto::signing::{SignedHeaders, canonical};
use proto::status;
use proto::v1::{self, Reason, RevocationReason};
use tonic::{Code, Request, Response, Status};

use crate::ca::{Ca, CertAnswer};
use crate::config::Loaded;
use crate::engine::{Engine, Raised, now_ms};
use crate::metrics::Metrics;
use crate::policy::{Action, FleetPolicy, Rule};
use crate::revocation::{CrlRefusal, Fetched, Revocations, Standing};
use crate::rules::{Finding, Verdict, Verified};
use crate::store::{AlertRecord, CertInfo, Store};
use crate::verify::{KeyCache, Refusal, Trust, certificate_names, check, source_name};

/// Everything the handlers share.
pub struct Fleet {
    /// The CA's chain.
    pub trust: Trust,
    /// Validated terminal certificates.
    pub keys: KeyCache,
    /// The rules engine and store.
    pub engine: Engine,
    /// The CA, as the monitor principal.
    pub ca: Ca,
    /// The rules.
    pub policy: FleetPolicy,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Revocation status of all certificates: the CA's CRL and our own holds and revocations.
    pub revocations: Revocations,
    crl_url: Option<String>,
    crl_refresh: Duration,
    activation_refresh: Duration,
    /// What the CA said of terminal certificates when asked one by one (no fresh CRL).
    certs: Mutex<HashMap<String, CertInfo>>,
    status_ttl_ms: u64,
    /// Callers of the alerts API: certificate serial → (name, role, until ms).
    callers: Mutex<HashMap<String, (String, String, u64)>>,
    /// Nonces of signed requests seen, with their expiry.
    nonces: Mutex<HashMap<String, u64>>,
    started_ms: u64,
    webhook: Option<crate::config::WebhookSection>,
}

fn refusal_status(r: &Refusal) -> Status {
    let (code, reason) = r.status();
    status(code, reason, r.to_string())
}

impl Fleet {
    /// Loads everything `serve` needs: configuration, rules, store, and the CA connection.
    pub async fn load(cfg: &Loaded) -> Result<Arc<Self>> {
        let c = &cfg.config;
        let policy_path = cfg.path(&c.policy.file);
        let text =
            std::fs::read_to_string(&policy_path).with_context(|| format!("reading {}", policy_path.display()))?;
        let policy = FleetPolicy::parse(&policy_path.display().to_string(), &text)?;
        let store = Store::open(&cfg.path(&c.store.path))?;
        let metrics = Arc::new(Metrics::default());
        let started_ms = now_ms();
        let engine = Engine::start(store, policy.clone(), metrics.clone(), started_ms)?;
        let (ca, trust) = Ca::connect(&cfg.path(&c.ca.identity)).await.context("connecting to the CA")?;
        let issuer = pki::IssuerInfo::from_certificate(&trust.issuing, trust.signer_id.clone())
            .context("reading the issuing CA certificate")?;
        let crl_url = c.ca.crl_url.clone().or_else(|| ca.crl_url.clone());
        if crl_url.is_none() {
            tracing::warn!("no CRL URL: every certificate's status is asked of the CA");
        }
        Ok(Arc::new(Self {
            revocations: Revocations::new(issuer),
            crl_url,
            crl_refresh: Duration::from_secs(c.ca.crl_refresh_seconds.max(1)),
            activation_refresh: Duration::from_secs(c.ca.activation_refresh_seconds.max(1)),
            trust,
            keys: KeyCache::with_precomputed(c.server.precomputed_keys),
            engine,
            ca,
            policy,
            metrics,
            certs: Mutex::default(),
            status_ttl_ms: c.ca.status_ttl_seconds.saturating_mul(1000),
            callers: Mutex::default(),
            nonces: Mutex::default(),
            started_ms,
            webhook: c.webhook.clone(),
        }))
    }

    /// One heartbeat, from `address`.
    pub async fn heartbeat(
        self: &Arc<Self>,
        req: v1::HeartbeatRequest,
        address: String,
    ) -> Result<v1::HeartbeatResponse, Status> {
        let me = self.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let r = check(&me.trust, &me.keys, &req, SystemTime::now(), me.policy.clock_skew);
            (r, req)
        })
        .await
        .map_err(|e| status(Code::Internal, Reason::Internal, e.to_string()))?;
        let (checked, req) = match checked {
            (Ok(c), req) => (c, req),
            (Err(r), req) => return Err(self.refused(r, &req, &address, "").await),
        };
        let terminal = checked.body.terminal_serial.clone();
        if let Err(r) = self.certificate_standing(&checked.certificate_serial, &terminal).await? {
            return Err(self.refused(r, &req, &address, &terminal).await);
        }
        let b = &checked.body;
        let hb = Verified {
            terminal_serial: terminal,
            certificate_serial: checked.certificate_serial.clone(),
            counter: b.counter,
            time_ms: b.time_ms,
            position: b.position.as_ref().map(|p| (p.lat, p.lon, source_name(p.source))),
            class: checked.class.clone(),
            firmware_sm3: hex::encode(&b.firmware_sm3),
            tamper: b.tamper,
            uptime_s: b.uptime_s,
            body_sm3: checked.body_sm3.clone(),
            address,
            received_ms: now_ms(),
        };
        let outcome = self
            .engine
            .heartbeat(hb)
            .await
            .map_err(|e| status(Code::Unavailable, Reason::StorageFailure, e.to_string()))?;
        self.act(&outcome.raised);
        let interval_s = self.policy.interval.as_secs();
        match outcome.verdict {
            Verdict::Accepted => {
                self.metrics.accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(v1::HeartbeatResponse { interval_s, duplicate: false })
            }
            Verdict::Duplicate => {
                self.metrics.duplicates.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(v1::HeartbeatResponse { interval_s, duplicate: true })
            }
            Verdict::Late => {
                self.metrics.refused("HEARTBEAT_LATE");
                Err(status(
                    Code::InvalidArgument,
                    Reason::HeartbeatStale,
                    "a later heartbeat of this terminal arrived first; this one is out of date",
                ))
            }
            Verdict::CounterReused => {
                self.metrics.refused(Reason::HeartbeatCounterReused.as_str_name());
                Err(status(
                    Code::PermissionDenied,
                    Reason::HeartbeatCounterReused,
                    "the SE counter did not increase: another device signs with this key",
                ))
            }
        }
    }

    /// Records a refused heartbeat (a counterfeit finding, with the source address) and builds
    /// the answer.
    async fn refused(
        self: &Arc<Self>,
        r: Refusal,
        req: &v1::HeartbeatRequest,
        address: &str,
        terminal: &str,
    ) -> Status {
        self.metrics.refused(r.name());
        if r.is_counterfeit() {
            let (cert_sm3, cert_serial) = certificate_names(&req.certificate_der);
            let claimed = if terminal.is_empty() {
                v1::HeartbeatBody::decode(req.body.as_slice()).map(|b| b.terminal_serial).unwrap_or_default()
            } else {
                terminal.to_owned()
            };
            let who = if cert_sm3.is_empty() { "no-certificate".to_owned() } else { cert_sm3[..32].to_owned() };
            let f = Finding {
                rule: Rule::Counterfeit,
                key: format!("counterfeit:{who}:{address}"),
                terminal_serial: claimed,
                certificate_serial: cert_serial,
                address: address.to_owned(),
                evidence: serde_json::json!({
                    "refusal": r.name(),
                    "detail": r.to_string(),
                    "certificate_sm3": cert_sm3,
                    "address": address,
                }),
            };
            match self.engine.findings(vec![f]).await {
                Ok(raised) => self.act(&raised),
                Err(e) => tracing::error!(error = %e, "recording a counterfeit failed"),
            }
        }
        refusal_status(&r)
    }

    /// Whether this terminal certificate (already checked to chain to our issuing CA and name
    /// the terminal: one we issued) is revoked or on hold: from the CRL and our own actions;
    /// without a fresh CRL, asked of the CA ([`Self::ask_ca`]).
    async fn certificate_standing(&self, serial: &str, terminal: &str) -> Result<Result<(), Refusal>, Status> {
        match self.revocations.standing(serial, SystemTime::now()) {
            Standing::Good => Ok(Ok(())),
            Standing::Revoked(reason) => Ok(Err(Refusal::Revoked { serial: serial.to_owned(), reason })),
            Standing::NoFreshCrl => self.ask_ca(serial, terminal).await,
        }
    }

    /// What the CA says of a certificate, remembered for the status TTL; when the CA cannot be
    /// reached, the last answer stands.
    async fn ask_ca(&self, serial: &str, terminal: &str) -> Result<Result<(), Refusal>, Status> {
        let now = now_ms();
        let mut known = self.certs.lock().ok().and_then(|m| m.get(serial).cloned());
        if known.is_none() {
            known = self.engine.store.cert(serial).ok().flatten();
        }
        let fresh = known.as_ref().filter(|k| {
            now.saturating_sub(k.checked_ms) < self.status_ttl_ms
                || k.status == "revoked" && k.reason == "key_compromise"
        });
        let info = match fresh {
            Some(k) => k.clone(),
            None => match self.ca.certificate(serial).await {
                Ok(answer) => {
                    let info = match answer {
                        CertAnswer::Terminal { terminal_serial, revoked } => CertInfo {
                            terminal_serial,
                            status: if revoked.is_some() { "revoked".into() } else { "good".into() },
                            reason: revoked.unwrap_or_default(),
                            checked_ms: now,
                        },
                        CertAnswer::NotTerminal | CertAnswer::Unknown => CertInfo {
                            terminal_serial: String::new(),
                            status: "unknown".into(),
                            reason: String::new(),
                            checked_ms: now,
                        },
                    };
                    self.remember(serial, info.clone()).await;
                    info
                }
                Err(e) => {
                    self.metrics.ca_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    match known {
                        Some(k) => {
                            tracing::warn!(error = %e, serial, "the CA did not answer; using its last answer");
                            k
                        }
                        None => {
                            return Err(status(
                                Code::Unavailable,
                                Reason::Internal,
                                format!("cannot reach the CA to check certificate {serial}: {e}"),
                            ));
                        }
                    }
                }
            },
        };
        Ok(match info.status.as_str() {
            "good" if info.terminal_serial == terminal => Ok(()),
            "revoked" => Err(Refusal::Revoked { serial: serial.to_owned(), reason: info.reason }),
            _ => Err(Refusal::Unknown(serial.to_owned())),
        })
    }

    async fn remember(&self, serial: &str, info: CertInfo) {
        if let Ok(mut m) = self.certs.lock() {
            m.insert(serial.to_owned(), info.clone());
        }
        if let Err(e) = self.engine.put_cert(serial.to_owned(), info).await {
            tracing::error!(error = %e, "remembering a certificate status failed");
        }
    }

    /// Carries out the hold or revoke of new alerts, at the CA, in the background; the outcome
    /// is written to the alert. New alerts also go to the webhook, if one is configured.
    fn act(self: &Arc<Self>, raised: &[Raised]) {
        if let Some(hook) = &self.webhook {
            for r in raised.iter().filter(|r| r.new) {
                let (url, attempts) = (hook.url.clone(), hook.attempts);
                let body = alert_json(&r.alert).to_string().into_bytes();
                let metrics = self.metrics.clone();
                tokio::spawn(async move {
                    if let Err(e) = crate::webhook::deliver(&url, &body, attempts, Duration::from_secs(1)).await {
                        metrics.webhook_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::error!(error = %e, "webhook gave up");
                    }
                });
            }
        }
        for r in raised.iter().filter(|r| r.new && r.action != Action::Alert) {
            let me = self.clone();
            let (id, serial, action) = (r.alert.id, r.alert.certificate_serial.clone(), r.action);
            tokio::spawn(async move {
                let reason = match action {
                    Action::Revoke => RevocationReason::KeyCompromise,
                    _ => RevocationReason::CertificateHold,
                };
                let done = me.ca.revoke(&serial, reason).await;
                let label = match &done {
                    Ok(()) => format!("{}: done", action.name()),
                    Err(e) => {
                        me.metrics.ca_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        format!("{}: failed: {e}", action.name())
                    }
                };
                tracing::info!(alert = id, certificate = %serial, outcome = %label, "rule action");
                if done.is_ok() {
                    let reason = if action == Action::Revoke { "key_compromise" } else { "certificate_hold" };
                    me.revocations.ours(&serial, reason, now_ms());
                    let info = CertInfo {
                        terminal_serial: String::new(),
                        status: "revoked".into(),
                        reason: reason.into(),
                        checked_ms: now_ms(),
                    };
                    me.remember(&serial, info).await;
                }
                let retire = done.is_ok().then(|| serial.clone());
                if let Err(e) = me.engine.action_done(id, label, retire).await {
                    tracing::error!(error = %e, "recording an action failed");
                }
            });
        }
    }

    /// Authenticates a signed request to the alerts API and checks the caller's role.
    async fn caller<T: Message>(&self, req: &Request<T>, method: &str, roles: &[&str]) -> Result<String, Status> {
        let r = self.authenticate(req, method, roles).await;
        if r.is_err() {
            self.metrics.auth_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    async fn authenticate<T: Message>(&self, req: &Request<T>, method: &str, roles: &[&str]) -> Result<String, Status> {
        let deny = |code: Code, reason: Reason, m: String| status(code, reason, m);
        let h = SignedHeaders::from_metadata(req.metadata())
            .map_err(|e| deny(Code::Unauthenticated, Reason::MissingSignature, e.to_string()))?;
        let now = now_ms();
        let skew = self.policy.clock_skew.as_millis() as u64;
        if h.time_ms.abs_diff(now) > skew {
            return Err(deny(
                Code::Unauthenticated,
                Reason::StaleTimestamp,
                "request time is outside the allowed skew".into(),
            ));
        }
        let cert = pki::Certificate::from_der(&h.cert_der)
            .map_err(|e| deny(Code::Unauthenticated, Reason::CallerCertInvalid, e.to_string()))?;
        pki::validate_chain(
            &cert,
            std::slice::from_ref(&self.trust.issuing),
            &self.trust.root,
            SystemTime::now(),
            &self.trust.signer_id,
        )
        .map_err(|e| deny(Code::Unauthenticated, Reason::CallerCertInvalid, e.to_string()))?;
        let key = pki::Sm2PublicKey::from_spki(cert.tbs_certificate().subject_public_key_info())
            .map_err(|e| deny(Code::Unauthenticated, Reason::CallerCertInvalid, e.to_string()))?;
        // Verified over prost's encoding of the decoded message: cactl's own encoding.
        key.verify(
            &self.trust.signer_id,
            &canonical(method, h.time_ms, &h.nonce_hex, &req.get_ref().encode_to_vec()),
            &h.signature_der,
        )
        .map_err(|e| deny(Code::Unauthenticated, Reason::BadSignature, e.to_string()))?;
        let serial = pki::CertSerial::of(&cert).map(|s| s.to_hex()).unwrap_or_default();
        let cached = self.callers.lock().ok().and_then(|m| m.get(&serial).cloned()).filter(|c| c.2 > now);
        let (name, role) = match cached {
            Some((n, r, _)) => (n, r),
            None => {
                let p = self
                    .ca
                    .principal(&serial)
                    .await
                    .map_err(|e| deny(Code::Unavailable, Reason::Internal, e.to_string()))?;
                let (n, r) = p.ok_or_else(|| {
                    deny(
                        Code::PermissionDenied,
                        Reason::CallerDisabled,
                        format!("certificate {serial} is not a good principal certificate at the CA"),
                    )
                })?;
                if let Ok(mut m) = self.callers.lock() {
                    m.insert(serial.clone(), (n.clone(), r.clone(), now + 60_000));
                }
                (n, r)
            }
        };
        if !roles.contains(&role.as_str()) {
            return Err(deny(
                Code::PermissionDenied,
                Reason::RoleForbidden,
                format!("role {role} may not call {method}"),
            ));
        }
        if let Ok(mut m) = self.nonces.lock() {
            m.retain(|_, exp| *exp > now);
            if m.insert(h.nonce_hex.clone(), h.time_ms + skew).is_some() {
                return Err(deny(Code::Unauthenticated, Reason::ReplayedNonce, "nonce was already used".into()));
            }
        }
        Ok(name)
    }
}

/// Marks the service as having failed a terminal if a heartbeat is dropped before its answer
/// (the caller's deadline passed or its connection went: the service was too slow).
struct Answering<'a> {
    fleet: &'a Fleet,
    answered: bool,
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.fleet.service_failed();
        }
    }
}

impl Fleet {
    /// The service failed to answer a heartbeat itself: not the terminal's silence.
    fn service_failed(&self) {
        self.metrics.service_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.engine.service_failed(now_ms());
    }

    /// Fetches the CRL and uses it if it verifies; its ETag for the next fetch.
    async fn refresh_crl(&self, etag: Option<String>) -> Option<String> {
        let url = self.crl_url.clone()?;
        let sent = etag.clone();
        let fetched = tokio::task::spawn_blocking(move || crate::revocation::fetch(&url, sent.as_deref()))
            .await
            .unwrap_or_else(|e| Err(CrlRefusal::Fetch(e.to_string())));
        let installed = match fetched {
            Ok(Fetched::NotModified) => return etag,
            Ok(Fetched::Crl { der, etag: new }) => self.revocations.install(&der, SystemTime::now()).map(|n| (n, new)),
            Err(e) => Err(e),
        };
        match installed {
            Ok((number, new)) => {
                self.metrics.crl_number.store(number, std::sync::atomic::Ordering::Relaxed);
                new
            }
            Err(e) => {
                self.metrics.crl_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(error = %e, "CRL not taken; the one in use stays");
                etag
            }
        }
    }
}

/// Activations asked for per page of the CA's activation log.
const ACTIVATION_PAGE: u32 = 1000;

impl Fleet {
    /// Reads the CA's activation log after `cursor` up to its end, page by page, each page's
    /// activations becoming their terminals' references and the cursor stored in one commit;
    /// returns the new cursor. A failure leaves the cursor at the last page taken (retried at
    /// the next refresh).
    async fn refresh_activations(&self, mut cursor: u64) -> u64 {
        loop {
            let page = match self.ca.activations_after(cursor, ACTIVATION_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    self.metrics.activation_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // A cursor past the CA's head: this store was fed by another (or a restored)
                    // CA; an operator must decide, the references kept meanwhile.
                    tracing::warn!(error = %e, cursor, "activation log not read; references unchanged");
                    return cursor;
                }
            };
            let (anchors, last) = page;
            if last <= cursor {
                return cursor;
            }
            // A full page: more may follow at once (numbers have no gaps).
            let full = last - cursor >= u64::from(ACTIVATION_PAGE);
            if let Err(e) = self.engine.anchors(anchors, last).await {
                self.metrics.activation_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(error = %e, "activations not stored; read again at the next refresh");
                return cursor;
            }
            cursor = last;
            self.metrics.activation_seq.store(cursor, std::sync::atomic::Ordering::Relaxed);
            if !full {
                return cursor;
            }
        }
    }
}

async fn activation_loop(fleet: Arc<Fleet>, mut stop: tokio::sync::watch::Receiver<bool>, mut cursor: u64) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(fleet.activation_refresh) => {}
            _ = stop.changed() => return,
        }
        cursor = fleet.refresh_activations(cursor).await;
    }
}

async fn crl_loop(fleet: Arc<Fleet>, mut stop: tokio::sync::watch::Receiver<bool>, mut etag: Option<String>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(fleet.crl_refresh) => {}
            _ = stop.changed() => return,
        }
        etag = fleet.refresh_crl(etag).await;
    }
}

/// An alert as the API shows it.
pub fn alert_msg(a: &AlertRecord) -> v1::Alert {
    let evidence = match &a.latest_evidence {
        Some(latest) => serde_json::json!({"first": a.evidence, "latest": latest}),
        None => a.evidence.clone(),
    };
    v1::Alert {
        id: a.id,
        rule: a.rule.clone(),
        terminal_serial: a.terminal_serial.clone(),
        certificate_serial: a.certificate_serial.clone(),
        first_ms: a.first_ms,
        last_ms: a.last_ms,
        occurrences: a.occurrences,
        source_address: a.source_address.clone(),
        evidence_json: evidence.to_string(),
        action: a.action.clone(),
        acknowledged: a.acknowledged,
        acknowledged_by: a.acknowledged_by.clone(),
        acknowledged_ms: a.acknowledged_ms,
        note: a.note.clone(),
    }
}

/// An alert as JSON (the webhook's body).
pub fn alert_json(a: &AlertRecord) -> serde_json::Value {
    serde_json::json!({"id": a.id, "rule": a.rule, "terminal": a.terminal_serial, "certificate": a.certificate_serial,
        "first_ms": a.first_ms, "address": a.source_address, "action": a.action, "evidence": a.evidence})
}

fn store_status(e: impl std::fmt::Display) -> Status {
    status(Code::Unavailable, Reason::StorageFailure, e.to_string())
}

/// The tonic service.
#[derive(Clone)]
pub struct FleetService(pub Arc<Fleet>);

const READERS: [&str; 3] = ["operator", "admin", "auditor"];
const ACKERS: [&str; 2] = ["operator", "admin"];

#[tonic::async_trait]
impl v1::fleet_server::Fleet for FleetService {
    async fn heartbeat(&self, req: Request<v1::HeartbeatRequest>) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let address = req.remote_addr().map_or_else(|| "unknown".into(), |a| a.ip().to_string());
        let mut answering = Answering { fleet: &self.0, answered: false };
        let answer = self.0.heartbeat(req.into_inner(), address).await;
        answering.answered = true;
        if let Err(s) = &answer
            && matches!(s.code(), Code::Unavailable | Code::Internal | Code::ResourceExhausted)
        {
            self.0.service_failed();
        }
        answer.map(Response::new)
    }

    async fn list_alerts(
        &self,
        req: Request<v1::ListAlertsRequest>,
    ) -> Result<Response<v1::ListAlertsResponse>, Status> {
        self.0.caller(&req, "/hsca.v1.Fleet/ListAlerts", &READERS).await?;
        let m = req.into_inner();
        let limit = if m.limit == 0 { 100 } else { m.limit as usize };
        let rule = (!m.rule.is_empty()).then_some(m.rule.as_str());
        let store = &self.0.engine.store;
        let list = match m.terminal_serial.as_str() {
            "" => store.alerts(m.open_only, rule, limit),
            serial => store.alerts_of_terminal(serial, m.open_only, rule, limit),
        }
        .map_err(store_status)?;
        Ok(Response::new(v1::ListAlertsResponse { alerts: list.iter().map(alert_msg).collect() }))
    }

    async fn get_alert(&self, req: Request<v1::GetAlertRequest>) -> Result<Response<v1::Alert>, Status> {
        self.0.caller(&req, "/hsca.v1.Fleet/GetAlert", &READERS).await?;
        let id = req.get_ref().id;
        match self.0.engine.store.alert(id) {
            Ok(a) => Ok(Response::new(alert_msg(&a))),
            Err(crate::store::StoreError::NoAlert(_)) => {
                Err(status(Code::NotFound, Reason::NotFound, format!("no alert {id}")))
            }
            Err(e) => Err(store_status(e)),
        }
    }

    async fn ack_alert(&self, req: Request<v1::AckAlertRequest>) -> Result<Response<v1::Alert>, Status> {
        let by = self.0.caller(&req, "/hsca.v1.Fleet/AckAlert", &ACKERS).await?;
        let m = req.into_inner();
        if self.0.engine.store.alert(m.id).is_err() {
            return Err(status(Code::NotFound, Reason::NotFound, format!("no alert {}", m.id)));
        }
        let a = self.0.engine.ack(m.id, by, m.note, now_ms()).await.map_err(store_status)?;
        Ok(Response::new(alert_msg(&a)))
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { () = ctrl_c => {}, () = term => {} }
    tracing::info!("shutting down: finishing in-flight heartbeats");
}

fn router(fleet: Arc<Fleet>) -> axum::Router {
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::get;
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(f): State<Arc<Fleet>>| async move {
                match f.engine.store.open_alerts() {
                    Ok(_) => (StatusCode::OK, "ready\n".to_owned()),
                    Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}\n")),
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(f): State<Arc<Fleet>>| async move {
                let open = f.engine.store.open_alerts().unwrap_or(0);
                let mut text = f.metrics.render(open);
                // 1 while no CRL is fresh: status is then asked of the CA per certificate.
                let fresh = f.revocations.current().is_some_and(|(_, _, next)| SystemTime::now() <= next);
                text.push_str(&format!("# TYPE fleet_crl_stale gauge\nfleet_crl_stale {}\n", u8::from(!fresh)));
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
            }),
        )
        .with_state(fleet)
}

async fn sweep_loop(fleet: Arc<Fleet>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let every = (fleet.policy.interval / 2).max(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        match fleet.engine.sweep(now_ms()).await {
            Ok(raised) => fleet.act(&raised),
            Err(e) => tracing::error!(error = %e, "silence sweep failed"),
        }
    }
}

/// Serves until SIGTERM or Ctrl-C.
pub async fn serve(cfg: Loaded) -> Result<()> {
    let c = &cfg.config;
    let cert = std::fs::read(cfg.path(&c.tls.certificate)).context("reading the TLS certificate")?;
    let key = zeroize::Zeroizing::new(std::fs::read(cfg.path(&c.tls.key)).context("reading the TLS key")?);
    let tls =
        tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(cert, key.as_slice()));
    let grpc_addr: std::net::SocketAddr =
        c.server.grpc.parse().with_context(|| format!("server.grpc {:?}", c.server.grpc))?;
    let http_addr: std::net::SocketAddr =
        c.server.http.parse().with_context(|| format!("server.http {:?}", c.server.http))?;
    let fleet = Fleet::load(&cfg).await?;
    // The stored cursor is in the gauge before /metrics answers, so a restart never reports 0.
    let stored = fleet.engine.store.activation_cursor()?;
    fleet.metrics.activation_seq.store(stored, std::sync::atomic::Ordering::Relaxed);
    let http = tokio::net::TcpListener::bind(http_addr).await.with_context(|| format!("binding {http_addr}"))?;
    // Both ports are bound before the slow first fetches below: a client that connects early
    // waits in the backlog instead of being refused.
    let grpc = tonic::transport::server::TcpIncoming::bind(grpc_addr)
        .with_context(|| format!("binding {grpc_addr}"))?
        .with_nodelay(Some(true));
    tracing::info!(grpc = %grpc_addr, http = %http_addr, started_ms = fleet.started_ms, "fleet-server serving");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let http_task = tokio::spawn({
        let mut rx = stop_rx.clone();
        let app = router(fleet.clone());
        async move {
            axum::serve(http, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.changed().await;
                })
                .await
        }
    });
    // The first CRL before the first heartbeat, so no burst of per-certificate CA calls.
    let etag = fleet.refresh_crl(None).await;
    if fleet.revocations.current().is_none() {
        tracing::warn!("no CRL yet: asking the CA per certificate until one verifies");
    }
    let crls = tokio::spawn(crl_loop(fleet.clone(), stop_rx.clone(), etag));
    // The activations made since the last run before the first heartbeat, so a terminal moved
    // before its first heartbeat is measured against where it was activated.
    let cursor = fleet.refresh_activations(stored).await;
    let activations = tokio::spawn(activation_loop(fleet.clone(), stop_rx.clone(), cursor));
    let sweeper = tokio::spawn(sweep_loop(fleet.clone(), stop_rx));
    let result = tonic::transport::Server::builder()
        .tls_config(tls)?
        .add_service(v1::fleet_server::FleetServer::new(FleetService(fleet)))
        .serve_with_incoming_shutdown(grpc, shutdown_signal())
        .await;
    let _ = stop_tx.send(true);
    http_task.await??;
    let _ = sweeper.await;
    let _ = crls.await;
    let _ = activations.await;
    result?;
    Ok(())
}
