//! The `hsca.v1.Admin` service.

use std::time::SystemTime;

use pki::SubjectVars;
use proto::status;
use proto::v1::{self, Reason};
use registry::{AuditBy, CertSubject, RegistryError};
use sm3::Digest;
use tonic::{Code, Request, Response, Status};

use super::convert::{
    approval_msg, bad_request, der_of, invalidity_for, issuer_status, normal_serial, ra_status, reason_from_code,
    record_of, registry_status, status_msg,
};
use super::{Ca, Incoming, Services, blocking};
use crate::issuer::Issuer;
use crate::ra;
use crate::records::now_ms;

/// A new approval's identifier.
fn new_approval_id() -> String {
    proto::client::request_id()[..16].to_owned()
}

impl Ca {
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
            self.monitor_limits(&caller, &serial, Some(reason))?;
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

    /// The fleet service's principal (role `monitor`) may place and lift holds and revoke for key
    /// compromise, of terminal certificates only: the roles file lets it call the methods, this
    /// bounds what it may ask of them. `reason` is `None` for lifting a hold.
    fn monitor_limits(
        &self,
        caller: &crate::auth::Caller,
        serial: &str,
        reason: Option<registry::RevocationReason>,
    ) -> Result<(), Status> {
        use registry::RevocationReason as R;
        if caller.role != "monitor" {
            return Ok(());
        }
        let forbidden = |what: String| status(Code::PermissionDenied, Reason::RoleForbidden, what);
        if let Some(r) = reason
            && !matches!(r, R::KeyCompromise | R::CertificateHold)
        {
            return Err(forbidden(format!(
                "role monitor may revoke only for keyCompromise or certificateHold, not {r:?}"
            )));
        }
        match self.registry.certificate(serial).map_err(|e| registry_status(&e))? {
            Some((rec, _)) if matches!(rec.subject, CertSubject::Terminal { .. }) => Ok(()),
            Some(_) => Err(forbidden(format!("role monitor may act on terminal certificates only, not {serial}"))),
            None => Err(status(Code::NotFound, Reason::NotFound, format!("no certificate {serial}"))),
        }
    }

    /// `UnrevokeCertificate`: lifts a certificateHold.
    pub fn unrevoke(&self, req: Incoming<v1::UnrevokeCertificateRequest>) -> Result<v1::CertificateStatus, Status> {
        let caller = self.authenticate(&req, "/hsca.v1.Admin/UnrevokeCertificate")?;
        let serial = normal_serial(&req.msg.certificate_serial)?;
        self.monitor_limits(&caller, &serial, None).map_err(|s| self.refuse(&caller, "unrevoke", &serial, s))?;
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
                id: new_approval_id(),
                requested_by: caller.name.clone(),
                created_ms,
                request: registry::ApprovalRequest::BulkRevocation {
                    filter: filter.clone(),
                    reason,
                    invalidity_ms,
                    matched,
                },
                state: registry::ApprovalState::Pending,
            };
            let event =
                Self::event(&caller, "bulk_revoke_request", &approval.id, format!("{filter:?}, {matched} match"));
            let stored = self.registry.request_approval(&approval, &event).map_err(|e| registry_status(&e))?;
            Ok(approval_msg(&stored))
        })();
        result.map_err(|s| self.refuse(&caller, "bulk_revoke_request", &target, s))
    }

    /// `ListApprovals`.
    pub fn list_approvals(&self, req: Incoming<v1::ListApprovalsRequest>) -> Result<v1::ListApprovalsResponse, Status> {
        self.authenticate(&req, "/hsca.v1.Admin/ListApprovals")?;
        let list = self.registry.approvals(req.msg.pending_only).map_err(|e| registry_status(&e))?;
        let active_admins = self.registry.active_admins().map_err(|e| registry_status(&e))?;
        Ok(v1::ListApprovalsResponse {
            approvals: list.iter().map(approval_msg).collect(),
            dual_control_available: active_admins.len() >= 2,
            active_admins,
        })
    }

    /// `DecideApproval`: a second, independent administrator approves (carried out at once: the
    /// lot revoked, the new administrator able to act, the re-key's certificate signed and
    /// installed) or rejects.
    pub fn decide_approval(&self, req: Incoming<v1::DecideApprovalRequest>) -> Result<v1::Approval, Status> {
        let caller = self.authenticate(&req, "/hsca.v1.Admin/DecideApproval")?;
        let m = &req.msg;
        let result = (|| {
            // Checked before anything is signed; the registry checks again when it records.
            let asked = self.registry.approval_for(&m.id, &caller.name).map_err(|e| registry_status(&e))?;
            let kind = asked.request.kind();
            let action = format!("{kind}_{}", if m.approve { "approve" } else { "reject" });
            let decision = match (&asked.request, m.approve) {
                (_, false) => registry::Decision::Reject,
                (registry::ApprovalRequest::Rekey(r), true) => {
                    let (cert, der) = self.sign_rekey(r, &asked.id)?;
                    registry::Decision::ApproveRekey { cert: Box::new(cert), der }
                }
                (_, true) => registry::Decision::Approve,
            };
            let event = Self::event(&caller, &action, &m.id, format!("{kind} asked by {}", asked.requested_by));
            let a = self
                .registry
                .decide_approval(&m.id, &caller.name, decision, now_ms(), &event)
                .map_err(|e| registry_status(&e))?;
            let rejected_admin = match (&a.request, &a.state) {
                (registry::ApprovalRequest::AddAdmin { name }, registry::ApprovalState::Rejected { .. }) => {
                    self.registry.principal(name).ok().flatten().map(|p| p.cert_serial)
                }
                _ => None,
            };
            if let registry::ApprovalState::Approved { revoked, .. } = &a.state {
                for serial in revoked {
                    self.revocation_changed(serial);
                }
            }
            if let Some(serial) = rejected_admin {
                self.revocation_changed(&serial);
            }
            Ok(approval_msg(&a))
        })();
        result.map_err(|s| self.refuse(&caller, "approval_decide", &m.id, s))
    }

    /// The certificate an approved re-key installs: the RA decides again on the stored request
    /// (the station may have been disabled since), then the CA signs for the terminal as
    /// registered.
    fn sign_rekey(
        &self,
        r: &registry::RekeyRequest,
        approval_id: &str,
    ) -> Result<(registry::CertRecord, Vec<u8>), Status> {
        let csr = hex::decode(&r.csr_hex).map_err(|e| status(Code::Internal, Reason::Internal, e.to_string()))?;
        let station = self.registry.principal(&r.station).map_err(|e| registry_status(&e))?;
        let asked = ra::RekeyAsked {
            serial: &r.terminal,
            csr: &csr,
            station: station.as_ref(),
            station_name: &r.station,
            reason: r.reason,
        };
        let approved = ra::decide_rekey(&self.policy, &asked).map_err(ra_status)?;
        let terminal = self
            .registry
            .terminal(approved.serial.as_str())
            .map_err(|e| registry_status(&e))?
            .ok_or_else(|| registry_status(&RegistryError::TerminalNotFound(r.terminal.clone())))?;
        self.sign_terminal(&terminal, approved.csr.public_key(), &format!("rekey-{approval_id}"))
    }

    /// `RequestRekey`: one administrator asks for a terminal in service (or revoked) to get a new
    /// key, named by its CSR; nothing is signed until a second administrator approves.
    pub fn request_rekey(&self, req: Incoming<v1::RequestRekeyRequest>) -> Result<v1::Approval, Status> {
        let caller = self.authenticate(&req, "/hsca.v1.Admin/RequestRekey")?;
        let m = &req.msg;
        let result = (|| {
            let reason = match reason_from_code(m.reason) {
                registry::RevocationReason::Unspecified => registry::RevocationReason::Superseded,
                r => r,
            };
            let station = self.registry.principal(&m.station).map_err(|e| registry_status(&e))?;
            let asked = ra::RekeyAsked {
                serial: &m.terminal_serial,
                csr: &m.csr_der,
                station: station.as_ref(),
                station_name: &m.station,
                reason,
            };
            let approved = ra::decide_rekey(&self.policy, &asked).map_err(ra_status)?;
            let csr_der =
                pki::csr_der(&m.csr_der).map_err(|e| status(Code::InvalidArgument, Reason::BadCsr, e.to_string()))?;
            let fingerprint = hex::encode(pki::alg::spki_fingerprint(&approved.csr.spki()));
            let approval = registry::Approval {
                id: new_approval_id(),
                requested_by: caller.name.clone(),
                created_ms: now_ms(),
                request: registry::ApprovalRequest::Rekey(registry::RekeyRequest {
                    terminal: approved.serial.as_str().into(),
                    csr_hex: hex::encode(csr_der),
                    key_fingerprint: fingerprint.clone(),
                    station: m.station.clone(),
                    replaces: None,
                    reason,
                }),
                state: registry::ApprovalState::Pending,
            };
            let event = Self::event(
                &caller,
                "rekey_request",
                &approval.id,
                format!("terminal {}, key {fingerprint}, station {}", m.terminal_serial, m.station),
            );
            let stored = self.registry.request_approval(&approval, &event).map_err(|e| registry_status(&e))?;
            Ok(approval_msg(&stored))
        })();
        result.map_err(|s| self.refuse(&caller, "rekey_request", &m.terminal_serial, s))
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
                created_by: caller.name.clone(),
                pending_approval: None,
            };
            let event = Self::event(
                &caller,
                "principal_add",
                &m.name,
                format!("role {}, certificate {serial}, manufacturers {:?}", m.role, m.manufacturers),
            );
            // A new administrator acts only once a second administrator approves.
            let pending_approval = if m.role == "admin" {
                let approval = registry::Approval {
                    id: new_approval_id(),
                    requested_by: caller.name.clone(),
                    created_ms: now_ms(),
                    request: registry::ApprovalRequest::AddAdmin { name: m.name.clone() },
                    state: registry::ApprovalState::Pending,
                };
                self.registry.add_pending_admin(&p, &rec, &der, &approval, &event).map_err(|e| registry_status(&e))?;
                approval.id
            } else {
                self.registry.add_principal(&p, &rec, &der, &event).map_err(|e| registry_status(&e))?;
                String::new()
            };
            Ok(v1::IssuePrincipalResponse {
                certificate_der: der,
                chain_der: self.chain(),
                certificate_serial: serial,
                pending_approval,
            })
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

    /// `ListPrincipals`: the registry's principals, each with its newest audit entry as actor,
    /// found through the audit index however old (read-only, not audited, like the other reads).
    pub fn list_principals(
        &self,
        req: Incoming<v1::ListPrincipalsRequest>,
    ) -> Result<v1::ListPrincipalsResponse, Status> {
        self.authenticate(&req, "/hsca.v1.Admin/ListPrincipals")?;
        let principals = self.registry.principals().map_err(|e| registry_status(&e))?;
        let mut last = std::collections::HashMap::new();
        for p in &principals {
            let newest =
                self.registry.audit_by(&AuditBy::Actor(p.name.clone()), None, 1).map_err(|e| registry_status(&e))?;
            if let Some(e) = newest.into_iter().next() {
                last.insert(p.name.clone(), (e.event.time_ms, e.event.action));
            }
        }
        Ok(v1::ListPrincipalsResponse {
            principals: principals
                .into_iter()
                .map(|p| {
                    let (last_activity_ms, last_action) = last.remove(&p.name).unwrap_or_default();
                    v1::Principal {
                        pending_approval: p.pending_approval.is_some(),
                        name: p.name,
                        role: p.role,
                        manufacturers: p.manufacturers,
                        enabled: p.enabled,
                        created_by: p.created_by,
                        cert_serial: p.cert_serial,
                        last_activity_ms,
                        last_action,
                    }
                })
                .collect(),
            activity_window: 0,
        })
    }

    /// `ListAudit`.
    pub fn list_audit(&self, req: Incoming<v1::ListAuditRequest>) -> Result<v1::ListAuditResponse, Status> {
        self.authenticate(&req, "/hsca.v1.Admin/ListAudit")?;
        let m = &req.msg;
        let n = match m.last {
            0 => 50,
            n => n.min(10_000),
        } as usize;
        let by = match (m.actor.is_empty(), m.target.is_empty()) {
            (true, true) if m.before_seq != 0 => return Err(bad_request("before_seq pages by actor or target only")),
            (true, true) => None,
            (false, true) => Some(AuditBy::Actor(m.actor.clone())),
            (true, false) => Some(AuditBy::Target(m.target.clone())),
            (false, false) => return Err(bad_request("give at most one of actor and target")),
        };
        let before = (m.before_seq != 0).then_some(m.before_seq);
        let entries = match &by {
            Some(by) => self.registry.audit_by(by, before, n),
            None => self.registry.audit_tail(n),
        }
        .map_err(|e| registry_status(&e))?;
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
    list_principals(v1::ListPrincipalsRequest) -> v1::ListPrincipalsResponse => list_principals;
    list_audit(v1::ListAuditRequest) -> v1::ListAuditResponse => list_audit;
    unrevoke_certificate(v1::UnrevokeCertificateRequest) -> v1::CertificateStatus => unrevoke;
    request_bulk_revocation(v1::RequestBulkRevocationRequest) -> v1::Approval => request_bulk_revocation;
    list_approvals(v1::ListApprovalsRequest) -> v1::ListApprovalsResponse => list_approvals;
    decide_approval(v1::DecideApprovalRequest) -> v1::Approval => decide_approval;
    request_rekey(v1::RequestRekeyRequest) -> v1::Approval => request_rekey;
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
