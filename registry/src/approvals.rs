//! Dual control (DESIGN §4, SECURITY.md): requests one administrator makes and a second,
//! independent administrator decides — bulk revocations, new administrators, re-keys of
//! terminals in service. Independent means: not the requester, and not an administrator who was
//! added at the requester's own request. The registry checks that inside the deciding
//! transaction, whoever calls it.

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use crate::lifecycle::{check_new_key, install_certificate, read_cert, read_terminal};
use crate::revocation::revoke_in;
use crate::{
    Approval, ApprovalRequest, ApprovalState, AuditEvent, BulkFilter, CertRecord, CertStatus, PRINCIPALS,
    PrincipalRecord, RegistryError, RekeyRequest, Result, RevocationReason, TERMINALS, TerminalRecord, TerminalState,
    from_json, to_json,
};

pub(crate) const APPROVALS: TableDefinition<&str, &[u8]> = TableDefinition::new("approvals");

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

/// Approvals stored when every approval was a bulk revocation get their `kind` tag (at open;
/// approvals are few).
pub(crate) fn tag_kinds(txn: &WriteTransaction) -> Result<()> {
    let mut table = txn.open_table(APPROVALS)?;
    let mut retagged = Vec::new();
    for item in table.iter()? {
        let (k, v) = item?;
        let mut value: serde_json::Value = from_json(v.value())?;
        if let Some(obj) = value.as_object_mut().filter(|o| !o.contains_key("kind")) {
            obj.insert("kind".into(), "bulk_revocation".into());
            retagged.push((k.value().to_owned(), to_json(&value)?));
        }
    }
    for (k, v) in retagged {
        table.insert(k.as_str(), v.as_slice())?;
    }
    Ok(())
}

fn principal(txn: &WriteTransaction, name: &str) -> Result<Option<PrincipalRecord>> {
    txn.open_table(PRINCIPALS)?.get(name)?.map(|v| from_json(v.value())).transpose()
}

/// Whether `by` may decide `a`: an active administrator, not the requester, and not added at
/// the requester's request.
fn check_approver(txn: &WriteTransaction, a: &Approval, by: &str) -> Result<()> {
    if a.requested_by == by {
        return Err(RegistryError::SameApprover(by.to_owned()));
    }
    let not = |why: &str| RegistryError::ApproverNotEligible { approver: by.to_owned(), why: why.to_owned() };
    let p = principal(txn, by)?.ok_or_else(|| not("no such principal"))?;
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
fn check_rekey(txn: &WriteTransaction, r: &RekeyRequest) -> Result<TerminalRecord> {
    let t = read_terminal(txn, &r.terminal)?.ok_or_else(|| RegistryError::TerminalNotFound(r.terminal.clone()))?;
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
        let rec = read_cert(txn, c)?;
        if matches!(rec.status, CertStatus::Revoked { reason: RevocationReason::CertificateHold, .. }) {
            return Err(RegistryError::OnHold(c.clone()));
        }
    }
    check_new_key(txn, &r.key_fingerprint, &t.serial)?;
    Ok(t)
}

fn active_matches(txn: &WriteTransaction, filter: &BulkFilter) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for item in txn.open_table(TERMINALS)?.iter()? {
        let t: TerminalRecord = from_json(item?.1.value())?;
        if let (true, Some(c)) = (filter.admits(&t), t.active_cert) {
            out.push(c);
        }
    }
    Ok(out)
}

impl crate::Registry {
    /// Active, unrevoked certificates of the terminals `filter` covers: (terminal, certificate).
    pub fn bulk_matches(&self, filter: &BulkFilter) -> Result<Vec<(String, String)>> {
        let txn = self.db.begin_read()?;
        let mut out = Vec::new();
        for item in txn.open_table(TERMINALS)?.iter()? {
            let t: TerminalRecord = from_json(item?.1.value())?;
            if let (true, Some(c)) = (filter.admits(&t), &t.active_cert) {
                out.push((t.serial.clone(), c.clone()));
            }
        }
        Ok(out)
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
        self.write(event, move |txn| {
            if let ApprovalRequest::Rekey(r) = &mut approval.request {
                let t = read_terminal(txn, &r.terminal)?
                    .ok_or_else(|| RegistryError::TerminalNotFound(r.terminal.clone()))?;
                r.replaces = t.active_cert;
                check_rekey(txn, r)?;
            }
            insert_new(txn, &approval)?;
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
        self.write(event, move |txn| {
            if !matches!(&approval.request, ApprovalRequest::AddAdmin { name } if *name == p.name) {
                return Err(RegistryError::Storage("the approval must name the new administrator".into()));
            }
            crate::insert_principal(txn, &p, &cert, &der)?;
            insert_new(txn, &approval)
        })
    }

    /// Requests under dual control, oldest first; only pending ones when `pending_only`.
    pub fn approvals(&self, pending_only: bool) -> Result<Vec<Approval>> {
        let txn = self.db.begin_read()?;
        let mut out: Vec<Approval> =
            txn.open_table(APPROVALS)?.iter()?.map(|item| from_json(item?.1.value())).collect::<Result<_>>()?;
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
        self.submit(move |txn| {
            let a = pending(txn, &id)?;
            check_approver(txn, &a, &by)?;
            if let ApprovalRequest::Rekey(r) = &a.request {
                check_rekey(txn, r)?;
            }
            Ok(a)
        })
    }

    /// Active administrators' names: dual control needs two.
    pub fn active_admins(&self) -> Result<Vec<String>> {
        let txn = self.db.begin_read()?;
        let mut out = Vec::new();
        for item in txn.open_table(PRINCIPALS)?.iter()? {
            let p: PrincipalRecord = from_json(item?.1.value())?;
            if p.is_active_admin() {
                out.push(p.name);
            }
        }
        Ok(out)
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
        self.write(event, move |txn| {
            let mut a = pending(txn, &id)?;
            check_approver(txn, &a, &by)?;
            a.state = match (&a.request, decision) {
                (ApprovalRequest::AddAdmin { name }, Decision::Reject) => {
                    let mut p = principal(txn, name)?.ok_or_else(|| RegistryError::PrincipalNotFound(name.clone()))?;
                    p.enabled = false;
                    p.pending_approval = None;
                    txn.open_table(PRINCIPALS)?.insert(name.as_str(), to_json(&p)?.as_slice())?;
                    revoke_in(txn, &p.cert_serial, RevocationReason::PrivilegeWithdrawn, at_ms, None)?;
                    ApprovalState::Rejected { by: by.clone(), at_ms }
                }
                (_, Decision::Reject) => ApprovalState::Rejected { by: by.clone(), at_ms },
                (ApprovalRequest::BulkRevocation { filter, reason, invalidity_ms, .. }, Decision::Approve) => {
                    let mut revoked = Vec::new();
                    for c in active_matches(txn, filter)? {
                        match revoke_in(txn, &c, *reason, at_ms, *invalidity_ms) {
                            Ok(_) => revoked.push(c),
                            // On hold already: it stays listed, with its original reason.
                            Err(RegistryError::AlreadyRevoked(_)) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    ApprovalState::Approved { by: by.clone(), at_ms, revoked, issued: None }
                }
                (ApprovalRequest::AddAdmin { name }, Decision::Approve) => {
                    let mut p = principal(txn, name)?.ok_or_else(|| RegistryError::PrincipalNotFound(name.clone()))?;
                    p.pending_approval = None;
                    txn.open_table(PRINCIPALS)?.insert(name.as_str(), to_json(&p)?.as_slice())?;
                    ApprovalState::Approved { by: by.clone(), at_ms, revoked: Vec::new(), issued: None }
                }
                (ApprovalRequest::Rekey(r), Decision::ApproveRekey { mut cert, der }) => {
                    let mut t = check_rekey(txn, r)?;
                    if cert.key_fingerprint != r.key_fingerprint {
                        return Err(RegistryError::Storage(
                            "the re-key certificate is not for the approved key".into(),
                        ));
                    }
                    cert.station = Some(r.station.clone());
                    let revoked = install_certificate(txn, &mut t, &cert, &der, r.reason)?;
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
            txn.open_table(APPROVALS)?.insert(id.as_str(), to_json(&a)?.as_slice())?;
            Ok(a)
        })
    }
}

fn pending(txn: &WriteTransaction, id: &str) -> Result<Approval> {
    let a: Approval = txn
        .open_table(APPROVALS)?
        .get(id)?
        .map(|v| from_json(v.value()))
        .transpose()?
        .ok_or_else(|| RegistryError::ApprovalNotFound(id.to_owned()))?;
    if a.state != ApprovalState::Pending {
        return Err(RegistryError::ApprovalDecided(id.to_owned()));
    }
    Ok(a)
}

fn insert_new(txn: &WriteTransaction, approval: &Approval) -> Result<()> {
    let mut table = txn.open_table(APPROVALS)?;
    if table.get(approval.id.as_str())?.is_some() {
        return Err(RegistryError::ApprovalExists(approval.id.clone()));
    }
    table.insert(approval.id.as_str(), to_json(approval)?.as_slice())?;
    Ok(())
}
