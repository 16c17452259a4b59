//! The gRPC handlers. Each one decodes, authenticates through [`crate::auth`], calls the RA,
//! the issuer and the registry, audits, and encodes. No policy lives here.

use std::sync::Arc;
use std::time::SystemTime;

use pki::cert::IssuerInfo;
use pki::{Certificate, PolicySet, SubjectVars, TerminalClass};
use prost::Message;
use proto::signing::SignedHeaders;
use proto::status;
use proto::v1::{self, Reason};
use registry::{
    AuditEvent, CertRecord, CertStatus, CertSubject, IssueOutcome, Registry, RegistryError, TerminalRecord,
    TerminalState,
};
use sm3::Digest;
use tonic::{Code, Request, Response, Status};

use crate::auth::{Caller, FailureLimiter, Gate, NonceCache, Trust};
use crate::issuer::{Issuer, IssuerError};
use crate::ra::{self, TerminalRequest};
use crate::roles::Roles;

/// Everything the handlers share.
pub struct Ca {
    /// Certificate policy.
    pub policy: PolicySet,
    /// Roles policy.
    pub roles: Roles,
    /// Whether terminals must be registered before issuance.
    pub require_registration: bool,
    /// Durable state.
    pub registry: Registry,
    /// The issuing CA's key in the HSM.
    pub signer: Box<dyn hsm::Signer>,
    /// The issuing CA as an issuer.
    pub issuer_info: IssuerInfo,
    /// Trust anchors for callers.
    pub trust: Trust,
    /// DER of the issuing CA and root certificates, as every issuance answer carries them.
    pub chain_der: Vec<Vec<u8>>,
    /// The key that signs audit checkpoints, when configured.
    pub audit_signer: Option<crate::audit::AuditSigner>,
    /// Replay cache.
    pub nonces: NonceCache,
    /// Failure counts.
    pub limiter: FailureLimiter,
    /// Caller chains already validated.
    pub validated: crate::auth::ValidatedCerts,
    /// Counters for /metrics.
    pub metrics: crate::http::Metrics,
    /// Published CRLs.
    pub crls: crate::revocation::Crls,
    /// The OCSP responder.
    pub ocsp: crate::ocsp::Responder,
    /// Issuance ordinals reserved from the registry and not yet used: (next, end).
    pub ordinals: std::sync::Mutex<(u64, u64)>,
    /// Certificates per CRL partition (`[crl] partition_size`).
    pub partition_size: u64,
}

use crate::records::{new_cert_record, now_ms};

fn der_of(c: &Certificate) -> Result<Vec<u8>, Status> {
    der::Encode::to_der(c).map_err(|e| status(Code::Internal, Reason::Internal, e.to_string()))
}

fn record_of(cert: &Certificate, subject: CertSubject, profile: &str, request_id: &str) -> Result<CertRecord, Status> {
    new_cert_record(cert, subject, profile, request_id)
        .ok_or_else(|| status(Code::Internal, Reason::Internal, "certificate serial"))
}

/// The gRPC status for a registry refusal.
pub fn registry_status(e: &RegistryError) -> Status {
    use RegistryError as E;
    let (code, reason) = match e {
        E::Storage(_) | E::Corrupt(_) => (Code::Unavailable, Reason::StorageFailure),
        E::TerminalExists(_) => (Code::AlreadyExists, Reason::TerminalExists),
        E::TerminalNotFound(_) => (Code::FailedPrecondition, Reason::TerminalNotRegistered),
        E::AlreadyHasActiveCertificate { .. } => (Code::FailedPrecondition, Reason::AlreadyHasActiveCertificate),
        E::PublicKeyInUse { .. } => (Code::FailedPrecondition, Reason::PublicKeyInUse),
        E::CertSerialExists(_) => (Code::Internal, Reason::Internal),
        E::RequestIdReused(_) => (Code::AlreadyExists, Reason::RequestIdReused),
        E::CertNotFound(_) | E::PrincipalNotFound(_) => (Code::NotFound, Reason::NotFound),
        E::AlreadyRevoked(_) => (Code::FailedPrecondition, Reason::AlreadyRevoked),
        E::WrongState { .. } => (Code::FailedPrecondition, Reason::WrongState),
        E::PrincipalExists(_) => (Code::AlreadyExists, Reason::PrincipalExists),
        E::NotOnHold(_) => (Code::FailedPrecondition, Reason::NotOnHold),
        E::EmptyFilter => (Code::InvalidArgument, Reason::BadRequest),
        E::ApprovalNotFound(_) => (Code::NotFound, Reason::ApprovalNotFound),
        E::ApprovalExists(_) => (Code::AlreadyExists, Reason::RequestIdReused),
        E::ApprovalDecided(_) => (Code::FailedPrecondition, Reason::ApprovalDecided),
        E::SameApprover(_) => (Code::PermissionDenied, Reason::SameApprover),
        E::KeyCompromised(_) => (Code::FailedPrecondition, Reason::KeyCompromised),
        E::NonceReplayed => (Code::Unauthenticated, Reason::ReplayedNonce),
        E::Audit(_) | E::TargetExists(_) => (Code::Internal, Reason::Internal),
    };
    status(code, reason, e.to_string())
}

fn issuer_status(e: &IssuerError) -> Status {
    match e {
        IssuerError::Hsm(_) => status(Code::Unavailable, Reason::HsmUnavailable, e.to_string()),
        IssuerError::Build(pki::IssueError::Lint(_)) => status(Code::Internal, Reason::LintFailed, e.to_string()),
        _ => status(Code::Internal, Reason::Internal, e.to_string()),
    }
}

fn bad_request(msg: impl Into<String>) -> Status {
    status(Code::InvalidArgument, Reason::BadRequest, msg)
}

fn class_name(c: i32) -> &'static str {
    match v1::TerminalClass::try_from(c) {
        Ok(v1::TerminalClass::ClassI) => "I",
        Ok(v1::TerminalClass::ClassIi) => "II",
        Ok(v1::TerminalClass::ClassIii) => "III",
        _ => "",
    }
}

fn class_code(c: &str) -> i32 {
    match c {
        "I" => v1::TerminalClass::ClassI as i32,
        "II" => v1::TerminalClass::ClassIi as i32,
        "III" => v1::TerminalClass::ClassIii as i32,
        _ => 0,
    }
}

fn state_code(s: TerminalState) -> i32 {
    (match s {
        TerminalState::Registered => v1::TerminalState::Registered,
        TerminalState::Issued => v1::TerminalState::Issued,
        TerminalState::Provisioned => v1::TerminalState::Provisioned,
        TerminalState::Active => v1::TerminalState::Active,
        TerminalState::Revoked => v1::TerminalState::Revoked,
    }) as i32
}

fn terminal_msg(t: &TerminalRecord) -> v1::Terminal {
    v1::Terminal {
        serial: t.serial.clone(),
        class: class_code(&t.class),
        manufacturer: t.manufacturer.clone(),
        model: t.model.clone(),
        lot: t.lot.clone().unwrap_or_default(),
        state: state_code(t.state),
        active_certificate_serial: t.active_cert.clone().unwrap_or_default(),
    }
}

fn reason_code(r: registry::RevocationReason) -> i32 {
    use registry::RevocationReason as R;
    (match r {
        R::Unspecified => v1::RevocationReason::Unspecified,
        R::KeyCompromise => v1::RevocationReason::KeyCompromise,
        R::CaCompromise => v1::RevocationReason::CaCompromise,
        R::AffiliationChanged => v1::RevocationReason::AffiliationChanged,
        R::Superseded => v1::RevocationReason::Superseded,
        R::CessationOfOperation => v1::RevocationReason::CessationOfOperation,
        R::CertificateHold => v1::RevocationReason::CertificateHold,
        R::PrivilegeWithdrawn => v1::RevocationReason::PrivilegeWithdrawn,
    }) as i32
}

/// A certificate serial as the registry keys it (upper-case hex of the positive integer), from
/// any spelling a caller may use: lower case, colons, a leading zero octet.
fn normal_serial(s: &str) -> Result<String, Status> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    pki::CertSerial::from_hex(&hex)
        .map(|c| c.to_hex())
        .ok_or_else(|| bad_request(format!("{s:?} is not a certificate serial (hex)")))
}

/// The invalidity date recorded with a revocation: keyCompromise only, default `now_ms`, never
/// after the revocation itself (RFC 5280 §5.3.2: when the key is known or suspected compromised).
fn invalidity_for(reason: registry::RevocationReason, given_ms: u64, now_ms: u64) -> Result<Option<u64>, Status> {
    match (reason, given_ms) {
        (registry::RevocationReason::KeyCompromise, 0) => Ok(Some(now_ms)),
        (registry::RevocationReason::KeyCompromise, t) if t <= now_ms => Ok(Some(t)),
        (registry::RevocationReason::KeyCompromise, _) => {
            Err(bad_request("the invalidity date is after the revocation (is it in milliseconds?)"))
        }
        (_, 0) => Ok(None),
        (_, _) => Err(bad_request("an invalidity date applies to keyCompromise only")),
    }
}

fn reason_from_code(c: i32) -> registry::RevocationReason {
    use registry::RevocationReason as R;
    match v1::RevocationReason::try_from(c) {
        Ok(v1::RevocationReason::KeyCompromise) => R::KeyCompromise,
        Ok(v1::RevocationReason::CaCompromise) => R::CaCompromise,
        Ok(v1::RevocationReason::AffiliationChanged) => R::AffiliationChanged,
        Ok(v1::RevocationReason::Superseded) => R::Superseded,
        Ok(v1::RevocationReason::CessationOfOperation) => R::CessationOfOperation,
        Ok(v1::RevocationReason::CertificateHold) => R::CertificateHold,
        Ok(v1::RevocationReason::PrivilegeWithdrawn) => R::PrivilegeWithdrawn,
        _ => R::Unspecified,
    }
}

fn approval_msg(a: &registry::Approval) -> v1::Approval {
    let (state, decided_by, decided_ms, revoked) = match &a.state {
        registry::ApprovalState::Pending => ("pending", String::new(), 0, Vec::new()),
        registry::ApprovalState::Approved { by, at_ms, revoked } => ("approved", by.clone(), *at_ms, revoked.clone()),
        registry::ApprovalState::Rejected { by, at_ms } => ("rejected", by.clone(), *at_ms, Vec::new()),
    };
    v1::Approval {
        id: a.id.clone(),
        requested_by: a.requested_by.clone(),
        created_ms: a.created_ms,
        manufacturer: a.filter.manufacturer.clone().unwrap_or_default(),
        model: a.filter.model.clone().unwrap_or_default(),
        lot: a.filter.lot.clone().unwrap_or_default(),
        reason: reason_code(a.reason),
        matched: a.matched,
        state: state.into(),
        decided_by,
        decided_ms,
        revoked,
    }
}

fn status_msg(s: &CertStatus) -> v1::CertificateStatus {
    match s {
        CertStatus::Good => {
            v1::CertificateStatus { state: v1::certificate_status::State::Good as i32, ..Default::default() }
        }
        CertStatus::Revoked { at_ms, reason, invalidity_ms } => v1::CertificateStatus {
            state: v1::certificate_status::State::Revoked as i32,
            revoked_at_ms: *at_ms,
            reason: reason_code(*reason),
            invalidity_ms: invalidity_ms.unwrap_or_default(),
        },
    }
}

/// A decoded request with what authentication needs.
pub struct Incoming<T> {
    headers: Result<SignedHeaders, proto::signing::HeaderError>,
    peer: String,
    msg: T,
}

impl<T: Message> Incoming<T> {
    fn from(req: Request<T>) -> Self {
        let headers = SignedHeaders::from_metadata(req.metadata());
        let peer = req.remote_addr().map_or_else(|| "unknown".into(), |a| a.ip().to_string());
        Self { headers, peer, msg: req.into_inner() }
    }
}

impl Ca {
    /// The CRL partition of the next terminal certificate: its issuance ordinal divided by the
    /// partition size. Ordinals are reserved from the registry in blocks.
    fn crl_partition(&self) -> Result<u32, Status> {
        // Reserved in blocks (one durable write per block), never beyond a partition's size, so
        // the partitions counted from the reservation high-water mark are the ones in use.
        let block = self.partition_size.clamp(1, 1000);
        let mut o = self.ordinals.lock().map_err(|_| status(Code::Internal, Reason::Internal, "ordinal lock"))?;
        if o.0 >= o.1 {
            let start = self.registry.reserve_ordinals(block).map_err(|e| registry_status(&e))?;
            *o = (start, start + block);
        }
        let ordinal = o.0;
        o.0 += 1;
        let size = self.partition_size.max(1);
        let partition = u32::try_from(ordinal / size)
            .map_err(|_| status(Code::Internal, Reason::Internal, "CRL partition number overflow"))?;
        if ordinal % size == 0 {
            // A new partition: its (empty) CRL must be there before anyone needs it.
            self.crls.changed_in(Some(partition));
        }
        Ok(partition)
    }

    /// A certificate's status changed (committed): relying parties must see it within a second.
    pub fn revocation_changed(&self, serial: &str) {
        self.ocsp.refresh(&self.registry, serial);
        let partition = self.registry.certificate(serial).ok().flatten().and_then(|(rec, _)| rec.crl_partition);
        self.crls.changed_in(partition);
    }

    /// How many CRL partitions exist: enough for every issuance ordinal reserved so far.
    pub fn crl_partitions(&self) -> u32 {
        let hw = self.registry.ordinal_high_water().unwrap_or(0);
        u32::try_from(hw.div_ceil(self.partition_size.max(1))).unwrap_or(u32::MAX).max(1)
    }

    fn audit(&self, actor: &str, action: &str, target: &str, outcome: &str, detail: String) {
        let ev = AuditEvent {
            time_ms: now_ms(),
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            outcome: outcome.into(),
            detail,
        };
        if let Err(e) = self.registry.audit(&ev) {
            tracing::error!(error = %e, "audit write failed");
        }
    }

    fn event(caller: &Caller, action: &str, target: &str, detail: String) -> AuditEvent {
        AuditEvent {
            time_ms: now_ms(),
            actor: caller.name.clone(),
            action: action.into(),
            target: target.into(),
            outcome: "ok".into(),
            detail,
        }
    }

    /// Authenticates; a refusal is audited and counted.
    fn authenticate<T: Message>(&self, req: &Incoming<T>, method: &str) -> Result<Caller, Status> {
        let gate = Gate {
            trust: &self.trust,
            directory: &self.registry,
            roles: &self.roles,
            nonces: &self.nonces,
            limiter: &self.limiter,
            validated: &self.validated,
        };
        let body = req.msg.encode_to_vec();
        gate.authenticate(req.headers.clone(), method, &body, &req.peer, SystemTime::now()).map_err(|f| {
            let (code, reason) = f.status();
            self.metrics.auth_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.audit(&req.peer, "auth_refused", method, reason.as_str_name(), f.to_string());
            status(code, reason, f.to_string())
        })
    }

    /// Audits a refusal after authentication and passes it on.
    fn refuse(&self, caller: &Caller, action: &str, target: &str, s: Status) -> Status {
        let reason = proto::reason(&s).map_or("INTERNAL", |r| r.as_str_name());
        self.audit(&caller.name, action, target, reason, s.message().to_owned());
        s
    }

    fn chain(&self) -> Vec<Vec<u8>> {
        self.chain_der.clone()
    }

    /// `IssueTerminalCertificate`.
    pub fn issue_terminal(
        &self,
        req: Incoming<v1::IssueTerminalCertificateRequest>,
    ) -> Result<v1::IssueTerminalCertificateResponse, Status> {
        let caller = self.authenticate(&req, "/hsca.v1.CertificateAuthority/IssueTerminalCertificate")?;
        let m = &req.msg;
        let target = m.terminal_serial.clone();
        let result = self.issue_terminal_for(&caller, m);
        result.map_err(|s| self.refuse(&caller, "issue", &target, s))
    }

    fn issue_terminal_for(
        &self,
        caller: &Caller,
        m: &v1::IssueTerminalCertificateRequest,
    ) -> Result<v1::IssueTerminalCertificateResponse, Status> {
        if m.request_id.is_empty() || m.request_id.len() > 128 {
            return Err(bad_request("request_id must be 1 to 128 characters"));
        }
        // Same id, same content → same answer: the content hash leaves the id out.
        // The lot is left out too: it only labels a terminal when it is first registered, and a
        // station re-running with another --lot must still get its certificate back.
        let content =
            v1::IssueTerminalCertificateRequest { request_id: String::new(), lot: String::new(), ..m.clone() }
                .encode_to_vec();
        let request_hash = hex::encode(sm3::Sm3::digest(&content));
        if let Some(IssueOutcome::Replayed { cert, der }) =
            self.registry.replayed(&m.request_id, &request_hash).map_err(|e| registry_status(&e))?
        {
            self.metrics.replays.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(v1::IssueTerminalCertificateResponse {
                certificate_der: der,
                chain_der: self.chain(),
                certificate_serial: cert.serial,
                replayed: true,
                superseded_serial: String::new(),
            });
        }
        let class = class_name(m.class);
        let approved = ra::decide_terminal(
            &self.policy,
            &caller.name,
            &caller.manufacturers,
            &TerminalRequest { serial: &m.terminal_serial, class, csr: &m.csr_der },
        )
        .map_err(|r| {
            let (code, reason) = r.status();
            status(code, reason, r.to_string())
        })?;
        let profile = self
            .policy
            .profile("terminal")
            .ok_or_else(|| status(Code::Internal, Reason::Internal, "no terminal profile"))?;
        let serial = approved.serial.as_str().to_owned();
        let model = if m.model.is_empty() {
            approved.serial.field("model").unwrap_or_default().to_owned()
        } else {
            m.model.clone()
        };
        // Cheap checks first, so a refusal signs nothing; the registry checks again atomically.
        if let Some(t) = self.registry.terminal(&serial).map_err(|e| registry_status(&e))? {
            if let (Some(active), false) = (&t.active_cert, m.reissue) {
                return Err(registry_status(&RegistryError::AlreadyHasActiveCertificate {
                    terminal: serial,
                    cert: active.clone(),
                }));
            }
        } else if self.require_registration {
            return Err(registry_status(&RegistryError::TerminalNotFound(serial)));
        }
        let partition = self.crl_partition()?;
        let vars = SubjectVars {
            serial: Some(serial.clone()),
            class: Some(approved.class.as_str().into()),
            manufacturer: Some(approved.serial.manufacturer().into()),
            model: Some(model.clone()),
            name: None,
            crl_partition: Some(partition),
        };
        let issuer = Issuer::new(self.signer.as_ref(), &self.issuer_info);
        let cert = issuer
            .issue(profile, &vars, approved.csr.public_key(), SystemTime::now())
            .map_err(|e| issuer_status(&e))?;
        let der = der_of(&cert)?;
        let mut cert_record =
            record_of(&cert, CertSubject::Terminal { serial: serial.clone() }, "terminal", &m.request_id)?;
        cert_record.crl_partition = Some(partition);
        let cert_serial = cert_record.serial.clone();
        let issue = registry::TerminalIssue {
            request_id: m.request_id.clone(),
            request_hash,
            terminal: TerminalRecord {
                serial: serial.clone(),
                class: approved.class.as_str().into(),
                manufacturer: approved.serial.manufacturer().into(),
                model,
                lot: (!m.lot.is_empty()).then(|| m.lot.clone()),
                state: TerminalState::Registered,
                active_cert: None,
                updated_ms: now_ms(),
            },
            register_if_missing: !self.require_registration,
            reissue: m.reissue,
            cert: cert_record.clone(),
            der: der.clone(),
        };
        let action = if m.reissue { "reissue" } else { "issue" };
        let event = Self::event(caller, action, &serial, format!("certificate {cert_serial}"));
        match self.registry.record_terminal_issue(&issue, &event).map_err(|e| registry_status(&e))? {
            IssueOutcome::Issued { superseded } => {
                self.metrics.issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(old) = &superseded {
                    self.revocation_changed(old);
                }
                Ok(v1::IssueTerminalCertificateResponse {
                    certificate_der: der,
                    chain_der: self.chain(),
                    certificate_serial: cert_serial,
                    replayed: false,
                    superseded_serial: superseded.unwrap_or_default(),
                })
            }
            // A concurrent retry with the same id won the race: answer with its certificate.
            IssueOutcome::Replayed { cert, der } => Ok(v1::IssueTerminalCertificateResponse {
                certificate_der: der,
                chain_der: self.chain(),
                certificate_serial: cert.serial,
                replayed: true,
                superseded_serial: String::new(),
            }),
        }
    }

    /// `ConfirmProvisioning`.
    pub fn confirm(
        &self,
        req: Incoming<v1::ConfirmProvisioningRequest>,
    ) -> Result<v1::ConfirmProvisioningResponse, Status> {
        let caller = self.authenticate(&req, "/hsca.v1.CertificateAuthority/ConfirmProvisioning")?;
        let m = &req.msg;
        let prov = registry::Provisioning {
            station: caller.name.clone(),
            duration_ms: m.duration_ms,
            firmware: m.firmware_version.clone(),
            at_ms: now_ms(),
        };
        let event = Self::event(
            &caller,
            "confirm",
            &m.terminal_serial,
            format!("certificate {} in {} ms", m.certificate_serial, m.duration_ms),
        );
        self.registry
            .confirm_provisioning(&m.terminal_serial, &m.certificate_serial, &prov, &event)
            .map_err(|e| self.refuse(&caller, "confirm", &m.terminal_serial, registry_status(&e)))?;
        Ok(v1::ConfirmProvisioningResponse {})
    }

    fn cert_info(&self, serial: &str) -> Result<v1::CertificateInfo, Status> {
        let (rec, der) = self
            .registry
            .certificate(serial)
            .map_err(|e| registry_status(&e))?
            .ok_or_else(|| status(Code::NotFound, Reason::NotFound, format!("certificate {serial} not found")))?;
        let (terminal_serial, principal) = match &rec.subject {
            CertSubject::Terminal { serial } => (serial.clone(), String::new()),
            CertSubject::Principal { name } => (String::new(), name.clone()),
        };
        Ok(v1::CertificateInfo {
            certificate_der: der,
            certificate_serial: rec.serial,
            terminal_serial,
            principal,
            status: Some(status_msg(&rec.status)),
        })
    }

    /// `GetCertificate`.
    pub fn get_certificate(&self, req: Incoming<v1::GetCertificateRequest>) -> Result<v1::CertificateInfo, Status> {
        self.authenticate(&req, "/hsca.v1.CertificateAuthority/GetCertificate")?;
        self.cert_info(&normal_serial(&req.msg.certificate_serial)?)
    }

    /// `GetCertificateStatus`: `UNKNOWN` for serials we never issued.
    pub fn get_status(&self, req: Incoming<v1::GetCertificateStatusRequest>) -> Result<v1::CertificateStatus, Status> {
        self.authenticate(&req, "/hsca.v1.CertificateAuthority/GetCertificateStatus")?;
        match self
            .registry
            .certificate(&normal_serial(&req.msg.certificate_serial)?)
            .map_err(|e| registry_status(&e))?
        {
            Some((rec, _)) => Ok(status_msg(&rec.status)),
            None => {
                Ok(v1::CertificateStatus { state: v1::certificate_status::State::Unknown as i32, ..Default::default() })
            }
        }
    }

    /// `GetCaChain`.
    pub fn get_chain(&self, req: Incoming<v1::GetCaChainRequest>) -> Result<v1::CaChain, Status> {
        self.authenticate(&req, "/hsca.v1.CertificateAuthority/GetCaChain")?;
        Ok(v1::CaChain { issuing_der: der_of(&self.trust.issuing)?, root_der: der_of(&self.trust.root)? })
    }

    /// `RegisterTerminal`.
    pub fn register(&self, req: Incoming<v1::RegisterTerminalRequest>) -> Result<v1::Terminal, Status> {
        let caller = self.authenticate(&req, "/hsca.v1.Registry/RegisterTerminal")?;
        let m = &req.msg;
        let result = (|| {
            let serial = self.policy.serial_rule().parse(&m.serial).map_err(|e| {
                let r = ra::Refusal::Serial(e);
                let (code, reason) = r.status();
                status(code, reason, r.to_string())
            })?;
            let class: TerminalClass = class_name(m.class).parse().map_err(|e: pki::serial::UnknownClass| {
                status(Code::InvalidArgument, Reason::UnknownClass, e.to_string())
            })?;
            let t = TerminalRecord {
                serial: serial.as_str().into(),
                class: class.as_str().into(),
                manufacturer: serial.manufacturer().into(),
                model: if m.model.is_empty() {
                    serial.field("model").unwrap_or_default().into()
                } else {
                    m.model.clone()
                },
                lot: (!m.lot.is_empty()).then(|| m.lot.clone()),
                state: TerminalState::Registered,
                active_cert: None,
                updated_ms: now_ms(),
            };
            self.registry
                .register_terminal(&t, &Self::event(&caller, "register", &t.serial, format!("class {class}")))
                .map_err(|e| registry_status(&e))?;
            Ok(terminal_msg(&t))
        })();
        result.map_err(|s| self.refuse(&caller, "register", &m.serial, s))
    }

    /// `GetTerminal`.
    pub fn get_terminal(&self, req: Incoming<v1::GetTerminalRequest>) -> Result<v1::Terminal, Status> {
        self.authenticate(&req, "/hsca.v1.Registry/GetTerminal")?;
        let t = self.registry.terminal(&req.msg.serial).map_err(|e| registry_status(&e))?;
        t.map(|t| terminal_msg(&t))
            .ok_or_else(|| status(Code::NotFound, Reason::NotFound, format!("terminal {} not found", req.msg.serial)))
    }

    /// `ListTerminals`.
    pub fn list_terminals(&self, req: Incoming<v1::ListTerminalsRequest>) -> Result<v1::ListTerminalsResponse, Status> {
        self.authenticate(&req, "/hsca.v1.Registry/ListTerminals")?;
        let m = &req.msg;
        let state = match v1::TerminalState::try_from(m.state) {
            Ok(v1::TerminalState::Registered) => Some(TerminalState::Registered),
            Ok(v1::TerminalState::Issued) => Some(TerminalState::Issued),
            Ok(v1::TerminalState::Provisioned) => Some(TerminalState::Provisioned),
            Ok(v1::TerminalState::Active) => Some(TerminalState::Active),
            Ok(v1::TerminalState::Revoked) => Some(TerminalState::Revoked),
            _ => None,
        };
        let nonempty = |s: &String| (!s.is_empty()).then(|| s.clone());
        let filter = registry::TerminalFilter {
            state,
            class: Some(class_name(m.class)).filter(|c| !c.is_empty()).map(str::to_owned),
            manufacturer: nonempty(&m.manufacturer),
            lot: nonempty(&m.lot),
        };
        let size = match m.page_size {
            0 => 100,
            n => n.min(1000),
        } as usize;
        let (page, next) = self
            .registry
            .list_terminals(&filter, Some(m.page_token.as_str()).filter(|t| !t.is_empty()), size)
            .map_err(|e| registry_status(&e))?;
        Ok(v1::ListTerminalsResponse {
            terminals: page.iter().map(terminal_msg).collect(),
            next_page_token: next.unwrap_or_default(),
        })
    }

    /// `ActivateTerminal`.
    pub fn activate(&self, req: Incoming<v1::ActivateTerminalRequest>) -> Result<v1::Activation, Status> {
        let caller = self.authenticate(&req, "/hsca.v1.Registry/ActivateTerminal")?;
        let m = &req.msg;
        let valid = (-90.0..=90.0).contains(&m.latitude)
            && (-180.0..=180.0).contains(&m.longitude)
            && !m.institution.trim().is_empty();
        if !valid {
            return Err(self.refuse(
                &caller,
                "activate",
                &m.serial,
                bad_request("institution is required and latitude/longitude must be valid degrees"),
            ));
        }
        let a = registry::ActivationRecord {
            terminal: m.serial.clone(),
            operator: caller.name.clone(),
            institution: m.institution.clone(),
            latitude: m.latitude,
            longitude: m.longitude,
            at_ms: now_ms(),
        };
        self.registry
            .activate(&a, &Self::event(&caller, "activate", &m.serial, format!("at {}", m.institution)))
            .map_err(|e| self.refuse(&caller, "activate", &m.serial, registry_status(&e)))?;
        Ok(v1::Activation {
            terminal_serial: a.terminal,
            operator: a.operator,
            institution: a.institution,
            latitude: a.latitude,
            longitude: a.longitude,
            at_ms: a.at_ms,
        })
    }

    /// `ListActivations`.
    pub fn list_activations(
        &self,
        req: Incoming<v1::ListActivationsRequest>,
    ) -> Result<v1::ListActivationsResponse, Status> {
        self.authenticate(&req, "/hsca.v1.Registry/ListActivations")?;
        let list = self.registry.activations(&req.msg.serial).map_err(|e| registry_status(&e))?;
        Ok(v1::ListActivationsResponse {
            activations: list
                .into_iter()
                .map(|a| v1::Activation {
                    terminal_serial: a.terminal,
                    operator: a.operator,
                    institution: a.institution,
                    latitude: a.latitude,
                    longitude: a.longitude,
                    at_ms: a.at_ms,
                })
                .collect(),
        })
    }

    /// `RevokeCertificate`, by certificate serial or the terminal's active certificate.
    pub fn revoke(&self, req: Incoming<v1::RevokeCertificateRequest>) -> Result<v1::CertificateStatus, Status> {
        let caller = self.authenticate(&req, "/hsca.v1.Admin/RevokeCertificate")?;
        let m = &req.msg;
        let result = (|| {
            let serial = match (m.certificate_serial.is_empty(), m.terminal_serial.is_empty()) {
                (false, true) => normal_serial(&m.certificate_serial)?,
                (true, false) => self
                    .registry
                    .terminal(&m.terminal_serial)
                    .map_err(|e| registry_status(&e))?
                    .and_then(|t| t.active_cert)
                    .ok_or_else(|| {
                        status(
                            Code::NotFound,
                            Reason::NotFound,
                            format!("terminal {} has no active certificate", m.terminal_serial),
                        )
                    })?,
                _ => return Err(bad_request("give exactly one of certificate_serial and terminal_serial")),
            };
            let reason = reason_from_code(m.reason);
            let at = now_ms();
            let invalidity = invalidity_for(reason, m.invalidity_ms, at)?;
            let rec = self
                .registry
                .revoke(
                    &serial,
                    reason,
                    at,
                    invalidity,
                    &Self::event(&caller, "revoke", &serial, format!("{reason:?}")),
                )
                .map_err(|e| registry_status(&e))?;
            self.revocation_changed(&rec.serial);
            Ok(status_msg(&rec.status))
        })();
        result.map_err(|s| self.refuse(&caller, "revoke", &m.certificate_serial, s))
    }

    /// `UnrevokeCertificate`: lifts a certificateHold.
    pub fn unrevoke(&self, req: Incoming<v1::UnrevokeCertificateRequest>) -> Result<v1::CertificateStatus, Status> {
        let caller = self.authenticate(&req, "/hsca.v1.Admin/UnrevokeCertificate")?;
        let serial = normal_serial(&req.msg.certificate_serial)?;
        let event = Self::event(&caller, "unrevoke", &serial, String::new());
        let rec = self
            .registry
            .unrevoke(&serial, now_ms(), &event)
            .map_err(|e| self.refuse(&caller, "unrevoke", &serial, registry_status(&e)))?;
        self.revocation_changed(&serial);
        Ok(status_msg(&rec.status))
    }

    /// `RequestBulkRevocation`: records a pending request; revokes nothing.
    pub fn request_bulk_revocation(
        &self,
        req: Incoming<v1::RequestBulkRevocationRequest>,
    ) -> Result<v1::Approval, Status> {
        let caller = self.authenticate(&req, "/hsca.v1.Admin/RequestBulkRevocation")?;
        let m = &req.msg;
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let filter =
            registry::BulkFilter { manufacturer: opt(&m.manufacturer), model: opt(&m.model), lot: opt(&m.lot) };
        let target = format!("{filter:?}");
        let result = (|| {
            let matched = self.registry.bulk_matches(&filter).map_err(|e| registry_status(&e))?.len() as u64;
            let reason = reason_from_code(m.reason);
            let created_ms = now_ms();
            let invalidity_ms = invalidity_for(reason, m.invalidity_ms, created_ms)?;
            let approval = registry::Approval {
                id: proto::client::request_id()[..16].to_owned(),
                requested_by: caller.name.clone(),
                created_ms,
                filter: filter.clone(),
                reason,
                invalidity_ms,
                matched,
                state: registry::ApprovalState::Pending,
            };
            let event =
                Self::event(&caller, "bulk_revoke_request", &approval.id, format!("{filter:?}, {matched} match"));
            self.registry.request_bulk_revocation(&approval, &event).map_err(|e| registry_status(&e))?;
            Ok(approval_msg(&approval))
        })();
        result.map_err(|s| self.refuse(&caller, "bulk_revoke_request", &target, s))
    }

    /// `ListApprovals`.
    pub fn list_approvals(&self, req: Incoming<v1::ListApprovalsRequest>) -> Result<v1::ListApprovalsResponse, Status> {
        self.authenticate(&req, "/hsca.v1.Admin/ListApprovals")?;
        let list = self.registry.approvals(req.msg.pending_only).map_err(|e| registry_status(&e))?;
        Ok(v1::ListApprovalsResponse { approvals: list.iter().map(approval_msg).collect() })
    }

    /// `DecideApproval`: the second administrator approves (revoking the lot at once) or rejects.
    pub fn decide_approval(&self, req: Incoming<v1::DecideApprovalRequest>) -> Result<v1::Approval, Status> {
        let caller = self.authenticate(&req, "/hsca.v1.Admin/DecideApproval")?;
        let m = &req.msg;
        let action = if m.approve { "bulk_revoke_approve" } else { "bulk_revoke_reject" };
        let event = Self::event(&caller, action, &m.id, String::new());
        let a = self
            .registry
            .decide_approval(&m.id, &caller.name, m.approve, now_ms(), &event)
            .map_err(|e| self.refuse(&caller, action, &m.id, registry_status(&e)))?;
        if let registry::ApprovalState::Approved { revoked, .. } = &a.state {
            for serial in revoked {
                self.revocation_changed(serial);
            }
        }
        Ok(approval_msg(&a))
    }

    /// `IssuePrincipal`: certifies a principal's key from its CSR.
    pub fn issue_principal(
        &self,
        req: Incoming<v1::IssuePrincipalRequest>,
    ) -> Result<v1::IssuePrincipalResponse, Status> {
        let caller = self.authenticate(&req, "/hsca.v1.Admin/IssuePrincipal")?;
        let m = &req.msg;
        let result = (|| {
            if !crate::roles::ROLES.contains(&m.role.as_str()) {
                return Err(bad_request(format!("role must be one of {}", crate::roles::ROLES.join(", "))));
            }
            let name_ok = !m.name.is_empty()
                && m.name.len() <= 64
                && m.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !name_ok {
                return Err(bad_request("name must be 1 to 64 of A-Z a-z 0-9 - _ ."));
            }
            if m.role == "station" && m.manufacturers.is_empty() {
                return Err(bad_request("a station needs the manufacturer codes it may issue for"));
            }
            let profile = self
                .policy
                .profile(&m.role)
                .ok_or_else(|| status(Code::Internal, Reason::Internal, "no profile for role"))?;
            let der =
                pki::csr_der(&m.csr_der).map_err(|e| status(Code::InvalidArgument, Reason::BadCsr, e.to_string()))?;
            let csr = pki::verify_csr(&der, &profile.signer_id).map_err(|e| {
                let reason = if matches!(e, pki::CsrError::WrongSignerId(_)) {
                    Reason::CsrWrongSignerId
                } else {
                    Reason::BadCsr
                };
                status(Code::InvalidArgument, reason, e.to_string())
            })?;
            if self.registry.principal(&m.name).map_err(|e| registry_status(&e))?.is_some() {
                return Err(registry_status(&RegistryError::PrincipalExists(m.name.clone())));
            }
            let vars = SubjectVars { name: Some(m.name.clone()), ..Default::default() };
            let cert = Issuer::new(self.signer.as_ref(), &self.issuer_info)
                .issue(profile, &vars, csr.public_key(), SystemTime::now())
                .map_err(|e| issuer_status(&e))?;
            let der = der_of(&cert)?;
            let rec = record_of(&cert, CertSubject::Principal { name: m.name.clone() }, &m.role, &m.request_id)?;
            let serial = rec.serial.clone();
            let p = registry::PrincipalRecord {
                name: m.name.clone(),
                role: m.role.clone(),
                cert_serial: serial.clone(),
                manufacturers: m.manufacturers.clone(),
                enabled: true,
            };
            let event = Self::event(
                &caller,
                "principal_add",
                &m.name,
                format!("role {}, certificate {serial}, manufacturers {:?}", m.role, m.manufacturers),
            );
            self.registry.add_principal(&p, &rec, &der, &event).map_err(|e| registry_status(&e))?;
            Ok(v1::IssuePrincipalResponse { certificate_der: der, chain_der: self.chain(), certificate_serial: serial })
        })();
        result.map_err(|s| self.refuse(&caller, "principal_add", &m.name, s))
    }

    /// `DisablePrincipal`.
    pub fn disable_principal(
        &self,
        req: Incoming<v1::DisablePrincipalRequest>,
    ) -> Result<v1::DisablePrincipalResponse, Status> {
        let caller = self.authenticate(&req, "/hsca.v1.Admin/DisablePrincipal")?;
        let name = &req.msg.name;
        self.registry
            .set_principal_enabled(name, false, &Self::event(&caller, "principal_disable", name, String::new()))
            .map_err(|e| self.refuse(&caller, "principal_disable", name, registry_status(&e)))?;
        Ok(v1::DisablePrincipalResponse {})
    }

    /// `ListAudit`.
    pub fn list_audit(&self, req: Incoming<v1::ListAuditRequest>) -> Result<v1::ListAuditResponse, Status> {
        self.authenticate(&req, "/hsca.v1.Admin/ListAudit")?;
        let n = match req.msg.last {
            0 => 50,
            n => n.min(10_000),
        } as usize;
        let entries = self.registry.audit_tail(n).map_err(|e| registry_status(&e))?;
        let mut out = v1::ListAuditResponse {
            entries: entries
                .into_iter()
                .map(|e| v1::AuditEntry {
                    seq: e.seq,
                    time_ms: e.event.time_ms,
                    actor: e.event.actor,
                    action: e.event.action,
                    target: e.event.target,
                    outcome: e.event.outcome,
                    detail: e.event.detail,
                    hash: e.hash,
                })
                .collect(),
            ..Default::default()
        };
        if req.msg.verify {
            let verified = self.registry.verify_audit_chain().map_err(|e| e.to_string()).and_then(|summary| {
                let signed = match &self.audit_signer {
                    Some(a) => a.verify(&summary).map_err(|e| e.to_string())?,
                    None => 0,
                };
                Ok((summary, signed))
            });
            match verified {
                Ok((summary, signed)) => {
                    out.chain_verified = true;
                    out.chain_length = summary.entries;
                    out.checkpoints_verified = signed as u64;
                    out.last_checkpoint_seq = summary.checkpoints.last().map_or(0, |c| c.seq);
                    out.checkpoint_key_configured = self.audit_signer.is_some();
                }
                Err(e) => out.chain_error = e,
            }
        }
        Ok(out)
    }
}

/// The tonic services over one shared [`Ca`].
#[derive(Clone)]
pub struct Services(pub Arc<Ca>);

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<Response<T>, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| status(Code::Internal, Reason::Internal, e.to_string()))?
        .map(Response::new)
}

macro_rules! handlers {
    ($trait:path; $($method:ident($req:ty) -> $resp:ty => $call:ident;)* $(; $($extra:tt)*)?) => {
        #[tonic::async_trait]
        impl $trait for Services {
            $(
                async fn $method(&self, req: Request<$req>) -> Result<Response<$resp>, Status> {
                    let ca = self.0.clone();
                    let incoming = Incoming::from(req);
                    blocking(move || ca.$call(incoming)).await
                }
            )*
            $($($extra)*)?
        }
    };
}

handlers!(v1::certificate_authority_server::CertificateAuthority;
    issue_terminal_certificate(v1::IssueTerminalCertificateRequest) -> v1::IssueTerminalCertificateResponse => issue_terminal;
    confirm_provisioning(v1::ConfirmProvisioningRequest) -> v1::ConfirmProvisioningResponse => confirm;
    get_certificate(v1::GetCertificateRequest) -> v1::CertificateInfo => get_certificate;
    get_certificate_status(v1::GetCertificateStatusRequest) -> v1::CertificateStatus => get_status;
    get_ca_chain(v1::GetCaChainRequest) -> v1::CaChain => get_chain;
);

handlers!(v1::registry_server::Registry;
    register_terminal(v1::RegisterTerminalRequest) -> v1::Terminal => register;
    get_terminal(v1::GetTerminalRequest) -> v1::Terminal => get_terminal;
    list_terminals(v1::ListTerminalsRequest) -> v1::ListTerminalsResponse => list_terminals;
    activate_terminal(v1::ActivateTerminalRequest) -> v1::Activation => activate;
    list_activations(v1::ListActivationsRequest) -> v1::ListActivationsResponse => list_activations;
);

impl Ca {
    /// `Backup`: a consistent snapshot of the registry, written to a temporary file and streamed.
    pub fn backup(&self, req: Incoming<v1::BackupRequest>) -> Result<(Vec<u8>, String), Status> {
        let caller = self.authenticate(&req, "/hsca.v1.Admin/Backup")?;
        let tmp = tempfile::tempdir().map_err(|e| status(Code::Internal, Reason::Internal, e.to_string()))?;
        let path = tmp.path().join("backup.redb");
        self.registry.backup(&path).map_err(|e| self.refuse(&caller, "backup", "registry", registry_status(&e)))?;
        let bytes = std::fs::read(&path).map_err(|e| status(Code::Internal, Reason::StorageFailure, e.to_string()))?;
        let digest = hex::encode(sm3::Sm3::digest(&bytes));
        self.audit(&caller.name, "backup", "registry", "ok", format!("{} bytes, sm3 {digest}", bytes.len()));
        Ok((bytes, digest))
    }
}

/// Chunk size of a streamed backup.
const BACKUP_CHUNK: usize = 1 << 20;

handlers!(v1::admin_server::Admin;
    revoke_certificate(v1::RevokeCertificateRequest) -> v1::CertificateStatus => revoke;
    issue_principal(v1::IssuePrincipalRequest) -> v1::IssuePrincipalResponse => issue_principal;
    disable_principal(v1::DisablePrincipalRequest) -> v1::DisablePrincipalResponse => disable_principal;
    list_audit(v1::ListAuditRequest) -> v1::ListAuditResponse => list_audit;
    unrevoke_certificate(v1::UnrevokeCertificateRequest) -> v1::CertificateStatus => unrevoke;
    request_bulk_revocation(v1::RequestBulkRevocationRequest) -> v1::Approval => request_bulk_revocation;
    list_approvals(v1::ListApprovalsRequest) -> v1::ListApprovalsResponse => list_approvals;
    decide_approval(v1::DecideApprovalRequest) -> v1::Approval => decide_approval;
    ;
    type BackupStream = tokio_stream::wrappers::ReceiverStream<Result<v1::BackupChunk, Status>>;
    async fn backup(&self, req: Request<v1::BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        let ca = self.0.clone();
        let incoming = Incoming::from(req);
        let (bytes, digest) = tokio::task::spawn_blocking(move || ca.backup(incoming)).await.map_err(|e| status(Code::Internal, Reason::Internal, e.to_string()))??;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let chunks: Vec<&[u8]> = if bytes.is_empty() { vec![&[][..]] } else { bytes.chunks(BACKUP_CHUNK).collect() };
            let n = chunks.len();
            for (i, c) in chunks.into_iter().enumerate() {
                let last = i + 1 == n;
                let chunk = v1::BackupChunk { data: c.to_vec(), last, sm3: if last { digest.clone() } else { String::new() } };
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
);

#[cfg(test)]
mod tests {
    use super::{invalidity_for, normal_serial};
    use registry::RevocationReason as R;

    #[test]
    fn serials_are_normalised_and_nonsense_refused() {
        assert_eq!(normal_serial("0a:1b").expect("colons"), "0A1B");
        assert_eq!(normal_serial("000a1b").expect("leading zero"), "0A1B");
        for bad in ["", "xyz", "00"] {
            assert!(normal_serial(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn invalidity_dates_are_checked() {
        assert_eq!(invalidity_for(R::KeyCompromise, 0, 100).expect("default"), Some(100));
        assert_eq!(invalidity_for(R::KeyCompromise, 40, 100).expect("earlier"), Some(40));
        assert!(invalidity_for(R::KeyCompromise, 101, 100).is_err(), "after the revocation");
        assert!(invalidity_for(R::KeyCompromise, 1_795_392_000_000_000, 1_795_392_000_000).is_err(), "microseconds");
        assert_eq!(invalidity_for(R::Superseded, 0, 100).expect("none"), None);
        assert!(invalidity_for(R::Superseded, 40, 100).is_err(), "only for keyCompromise");
    }
}
