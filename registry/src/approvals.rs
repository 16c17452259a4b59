//! Dual control (DESIGN §4, SECURITY.md): requests one administrator makes and a second,
//! independent administrator decides — bulk revocations, new administrators, re-keys of
//! terminals in service. Independent means: not the requester, and not an administrator who was
//! added at the requester's own request. The registry checks that inside the deciding
//! transaction, whoever calls it.

use crate::lifecycle::{check_new_key, install_certificate, read_cert};
use crate::revocation::revoke_in;
use crate::store::{StoreRead, StoreWrite};
use crate::{
    Approval, ApprovalRequest, ApprovalState, AuditEvent, BulkFilter, CertRecord, CertStatus, PrincipalRecord,
    RegistryError, RekeyRequest, Result, RevocationReason, TerminalRecord, TerminalState,
};

/// What the second administrator decides.
#[derive(Clone, Debug)]
pub enum Decision {
    /// Nothing happens (a pending administrator stays disabled and loses its certificate).
    Reject,
    /// Carry out a bulk revocation or let a new administrator act.
    Approve,
    /// Carry out a re-key with the certificate the CA signed for the request's key.
    ApproveRekey {
        /// The new certificate's record.
        cert: Box<CertRecord>,
        /// Its DER.
        der: Vec<u8>,
    },
}

/// Whether `by` may decide `a`: an active administrator, not the requester, and not added at
/// the requester's request.
fn check_approver(s: &mut dyn StoreRead, a: &Approval, by: &str) -> Result<()> {
    if a.requested_by == by {
        return Err(RegistryError::SameApprover(by.to_owned()));
    }
    let not = |why: &str| RegistryError::ApproverNotEligible { approver: by.to_owned(), why: why.to_owned() };
    let p = s.principal(by)?.ok_or_else(|| not("no such principal"))?;
    if !p.is_active_admin() {
        return Err(not("not an active administrator"));
    }
    if p.created_by == a.requested_by {
        return Err(RegistryError::ApproverNotIndependent {
            approver: by.to_owned(),
            requester: a.requested_by.clone(),
        });
    }
    Ok(())
}

/// A re-key's preconditions, at request and again at decision: the terminal is in service or
/// revoked, its certificate is what the request replaces and not on hold, the key is new.
fn check_rekey(s: &mut dyn StoreRead, r: &RekeyRequest) -> Result<TerminalRecord> {
    let t = s.terminal(&r.terminal)?.ok_or_else(|| RegistryError::TerminalNotFound(r.terminal.clone()))?;
    if t.state == TerminalState::Registered {
        return Err(RegistryError::WrongState {
            terminal: t.serial.clone(),
            state: t.state.as_str(),
            action: "re-key",
            wanted: "issued, provisioned, active or revoked (a station issues the first certificate)",
        });
    }
    if t.active_cert != r.replaces {
        return Err(RegistryError::WrongState {
            terminal: t.serial.clone(),
            state: t.state.as_str(),
            action: "re-key (its certificate changed since the request)",
            wanted: "the certificate the request replaces",
        });
    }
    if let Some(c) = &t.active_cert {
        let rec = read_cert(s, c)?;
        if matches!(rec.status, CertStatus::Revoked { reason: RevocationReason::CertificateHold, .. }) {
            return Err(RegistryError::OnHold(c.clone()));
        }
    }
    check_new_key(s, &r.key_fingerprint, &t.serial)?;
    Ok(t)
}

impl crate::Registry {
    /// Active, unrevoked certificates of the terminals `filter` covers: (terminal, certificate).
    pub fn bulk_matches(&self, filter: &BulkFilter) -> Result<Vec<(String, String)>> {
        let filter = filter.clone();
        let terminals = self.read(move |s| s.terminals_with_active_cert(&filter))?;
        Ok(terminals.into_iter().filter_map(|t| t.active_cert.map(|c| (t.serial, c))).collect())
    }

    /// Records a pending request; nothing happens until another administrator approves it. A
    /// re-key is checked now (and again when decided) and records the certificate it replaces.
    /// Returns the approval as stored.
    pub fn request_approval(&self, approval: &Approval, event: &AuditEvent) -> Result<Approval> {
        match &approval.request {
            ApprovalRequest::BulkRevocation { filter, .. } if filter.is_empty() => {
                return Err(RegistryError::EmptyFilter);
            }
            ApprovalRequest::AddAdmin { .. } => {
                return Err(RegistryError::Storage("a new administrator is requested with add_pending_admin".into()));
            }
            _ => {}
        }
        let mut approval = approval.clone();
        self.write(event, move |s| {
            if let ApprovalRequest::Rekey(r) = &mut approval.request {
                let t = s.terminal(&r.terminal)?.ok_or_else(|| RegistryError::TerminalNotFound(r.terminal.clone()))?;
                r.replaces = t.active_cert;
                check_rekey(s, r)?;
            }
            insert_new(s, &approval)?;
            Ok(approval)
        })
    }

    /// Adds administrator `p` (with its certificate) waiting for `approval`, which names it.
    pub fn add_pending_admin(
        &self,
        p: &PrincipalRecord,
        cert: &CertRecord,
        der: &[u8],
        approval: &Approval,
        event: &AuditEvent,
    ) -> Result<()> {
        let mut p = p.clone();
        p.pending_approval = Some(approval.id.clone());
        let (cert, der, approval) = (cert.clone(), der.to_vec(), approval.clone());
        self.write(event, move |s| {
            if !matches!(&approval.request, ApprovalRequest::AddAdmin { name } if *name == p.name) {
                return Err(RegistryError::Storage("the approval must name the new administrator".into()));
            }
            if s.approval(&approval.id)?.is_some() {
                return Err(RegistryError::ApprovalExists(approval.id.clone()));
            }
            crate::insert_principal(s, &p, &cert, &der)?;
            insert_new(s, &approval)
        })
    }

    /// Requests under dual control, oldest first; only pending ones when `pending_only`.
    pub fn approvals(&self, pending_only: bool) -> Result<Vec<Approval>> {
        let mut out = self.read(|s| s.approvals())?;
        out.retain(|a| !pending_only || a.state == ApprovalState::Pending);
        out.sort_by_key(|a| a.created_ms);
        Ok(out)
    }

    /// One approval, if `by` may decide it now (the CA asks before it signs a re-key's
    /// certificate, so a refused approver signs nothing).
    pub fn approval_for(&self, id: &str, by: &str) -> Result<Approval> {
        let id = id.to_owned();
        let by = by.to_owned();
        // A write transaction that writes nothing: the checks share their code with the decision.
        self.read(move |s| {
            let a = pending(s, &id)?;
            check_approver(s, &a, &by)?;
            if let ApprovalRequest::Rekey(r) = &a.request {
                check_rekey(s, r)?;
            }
            Ok(a)
        })
    }

    /// Active administrators' names: dual control needs two.
    pub fn active_admins(&self) -> Result<Vec<String>> {
        let principals = self.read(|s| s.principals())?;
        Ok(principals.into_iter().filter(|p| p.is_active_admin()).map(|p| p.name).collect())
    }

    /// The second administrator's decision, carried out in the same transaction: a bulk
    /// revocation revokes every active certificate its filter covers now; a new administrator
    /// may act (or, rejected, is disabled and its certificate revoked); a re-key installs the
    /// new certificate and revokes the one it replaces.
    pub fn decide_approval(
        &self,
        id: &str,
        by: &str,
        decision: Decision,
        at_ms: u64,
        event: &AuditEvent,
    ) -> Result<Approval> {
        let (id, by) = (id.to_owned(), by.to_owned());
        self.write(event, move |s| {
            let mut a = pending(s, &id)?;
            check_approver(s, &a, &by)?;
            a.state = match (&a.request, decision) {
                (ApprovalRequest::AddAdmin { name }, Decision::Reject) => {
                    let mut p = s.principal(name)?.ok_or_else(|| RegistryError::PrincipalNotFound(name.clone()))?;
                    p.enabled = false;
                    p.pending_approval = None;
                    s.update_principal(&p)?;
                    revoke_in(s, &p.cert_serial, RevocationReason::PrivilegeWithdrawn, at_ms, None)?;
                    ApprovalState::Rejected { by: by.clone(), at_ms }
                }
                (_, Decision::Reject) => ApprovalState::Rejected { by: by.clone(), at_ms },
                (ApprovalRequest::BulkRevocation { filter, reason, invalidity_ms, .. }, Decision::Approve) => {
                    let mut revoked = Vec::new();
                    let lot = s.terminals_with_active_cert(filter)?;
                    for c in lot.into_iter().filter_map(|t| t.active_cert) {
                        match revoke_in(s, &c, *reason, at_ms, *invalidity_ms) {
                            Ok(_) => revoked.push(c),
                            // On hold already: it stays listed, with its original reason.
                            Err(RegistryError::AlreadyRevoked(_)) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    ApprovalState::Approved { by: by.clone(), at_ms, revoked, issued: None }
                }
                (ApprovalRequest::AddAdmin { name }, Decision::Approve) => {
                    let mut p = s.principal(name)?.ok_or_else(|| RegistryError::PrincipalNotFound(name.clone()))?;
                    p.pending_approval = None;
                    s.update_principal(&p)?;
                    ApprovalState::Approved { by: by.clone(), at_ms, revoked: Vec::new(), issued: None }
                }
                (ApprovalRequest::Rekey(r), Decision::ApproveRekey { mut cert, der }) => {
                    let mut t = check_rekey(s, r)?;
                    if cert.key_fingerprint != r.key_fingerprint {
                        return Err(RegistryError::Storage(
                            "the re-key certificate is not for the approved key".into(),
                        ));
                    }
                    cert.station = Some(r.station.clone());
                    let revoked = install_certificate(s, &mut t, &cert, &der, r.reason)?;
                    s.add_hourly_count(cert.issued_ms / crate::HOUR_MS, &r.station, crate::HourlyKind::Issued, 1)?;
                    ApprovalState::Approved {
                        by: by.clone(),
                        at_ms,
                        revoked: revoked.into_iter().collect(),
                        issued: Some(cert.serial.clone()),
                    }
                }
                (ApprovalRequest::Rekey(_), Decision::Approve) => {
                    return Err(RegistryError::Storage("a re-key is approved with its certificate".into()));
                }
                (_, Decision::ApproveRekey { .. }) => {
                    return Err(RegistryError::Storage("only a re-key is approved with a certificate".into()));
                }
            };
            s.update_approval(&a)?;
            Ok(a)
        })
    }
}

fn pending(s: &mut dyn StoreRead, id: &str) -> Result<Approval> {
    let a = s.approval(id)?.ok_or_else(|| RegistryError::ApprovalNotFound(id.to_owned()))?;
    if a.state != ApprovalState::Pending {
        return Err(RegistryError::ApprovalDecided(id.to_owned()));
    }
    Ok(a)
}

fn insert_new(s: &mut dyn StoreWrite, approval: &Approval) -> Result<()> {
    s.insert_approval(approval)
}
