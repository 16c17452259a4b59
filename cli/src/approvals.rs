//! Requests under dual control — bulk revocations, new administrators, re-keys — and the
//! second administrator's decision. The CA refuses a decision by the requester or by an
//! administrator the requester had added; `list` says when fewer than two administrators can act.

use std::path::Path;

use anyhow::{Context, Result};
use proto::client::{Client, request_id};
use proto::v1;
use proto::v1::admin_client::AdminClient;
use serde_json::json;

use crate::print;
use crate::revocation::time_text;

fn reason_name(code: i32) -> String {
    v1::RevocationReason::try_from(code).map_or("?".into(), |r| r.as_str_name().to_lowercase())
}

/// An approval as `--json` prints it.
pub fn approval_json(a: &v1::Approval) -> serde_json::Value {
    json!({"id": a.id, "kind": a.kind, "state": a.state, "requested_by": a.requested_by,
        "created": time_text(a.created_ms), "manufacturer": a.manufacturer, "model": a.model, "lot": a.lot,
        "reason": reason_name(a.reason), "matched": a.matched, "principal": a.principal,
        "terminal": a.terminal_serial, "station": a.station, "replaces": a.replaces,
        "decided_by": a.decided_by, "revoked": a.revoked, "issued": a.issued_certificate_serial})
}

/// What the request would do, in a few words.
pub(crate) fn what(a: &v1::Approval) -> String {
    match a.kind.as_str() {
        "add_admin" => format!("new administrator {}", a.principal),
        "rekey" => {
            let replaces = if a.replaces.is_empty() { "revoked".into() } else { format!("replaces {}", a.replaces) };
            format!("re-key {} ({replaces}, {}, by station {})", a.terminal_serial, reason_name(a.reason), a.station)
        }
        _ => {
            let filter: Vec<String> = [("manufacturer", &a.manufacturer), ("model", &a.model), ("lot", &a.lot)]
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!("revoke {} ({}, {} match)", filter.join(","), reason_name(a.reason), a.matched)
        }
    }
}

fn line(a: &v1::Approval) -> String {
    let decided = match a.state.as_str() {
        "pending" => String::new(),
        "approved" if !a.issued_certificate_serial.is_empty() => {
            format!("; approved by {}, issued {}", a.decided_by, a.issued_certificate_serial)
        }
        "approved" => format!("; approved by {}, {} revoked", a.decided_by, a.revoked.len()),
        _ => format!("; rejected by {}", a.decided_by),
    };
    format!("{:<18} {:<9} {:<15} {} — asked by {}{}", a.id, a.state, a.kind, what(a), a.requested_by, decided)
}

/// `approvals list`.
pub async fn list(client: &Client, json: bool, all: bool) -> Result<()> {
    let msg = v1::ListApprovalsRequest { request_id: request_id(), pending_only: !all };
    let r = AdminClient::new(client.channel.clone())
        .list_approvals(client.signed("/hsca.v1.Admin/ListApprovals", msg)?)
        .await?
        .into_inner();
    let rows: Vec<_> = r.approvals.iter().map(approval_json).collect();
    let value = json!({"approvals": rows, "dual_control_available": r.dual_control_available,
        "active_admins": r.active_admins});
    print(json, &value, || {
        let mut out = format!("{:<18} {:<9} {:<15} WHAT", "ID", "STATE", "KIND");
        for a in &r.approvals {
            out.push('\n');
            out.push_str(&line(a));
        }
        if r.approvals.is_empty() {
            out.push_str("\n(none)");
        }
        if !r.dual_control_available {
            out.push_str(&format!(
                "\ndual control UNAVAILABLE: {} active administrator(s) ({}); requests cannot be decided until a \
                 second, independent administrator exists",
                r.active_admins.len(),
                r.active_admins.join(", ")
            ));
        }
        out
    })
}

/// `approvals approve|reject ID [--out FILE]`: `--out` writes a re-key's new certificate (PEM).
pub async fn decide(client: &Client, json: bool, id: &str, approve: bool, out: Option<&Path>) -> Result<()> {
    let msg = v1::DecideApprovalRequest { request_id: request_id(), id: id.to_owned(), approve };
    let a = AdminClient::new(client.channel.clone())
        .decide_approval(client.signed("/hsca.v1.Admin/DecideApproval", msg)?)
        .await?
        .into_inner();
    if let (Some(out), false) = (out, a.issued_certificate_serial.is_empty()) {
        let msg = v1::GetCertificateRequest {
            request_id: request_id(),
            certificate_serial: a.issued_certificate_serial.clone(),
        };
        let info = v1::certificate_authority_client::CertificateAuthorityClient::new(client.channel.clone())
            .get_certificate(client.signed("/hsca.v1.CertificateAuthority/GetCertificate", msg)?)
            .await?
            .into_inner();
        std::fs::write(out, crate::pem("CERTIFICATE", &info.certificate_der)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    print(json, &approval_json(&a), || match (a.state.as_str(), a.kind.as_str()) {
        ("approved", "add_admin") => format!("approved {}: administrator {} may act now", a.id, a.principal),
        ("approved", "rekey") => format!(
            "approved {}: issued {} for {}{}",
            a.id,
            a.issued_certificate_serial,
            a.terminal_serial,
            out.map(|o| format!(" → {}", o.display())).unwrap_or_default()
        ),
        ("approved", _) => format!("approved {}: {} certificates revoked", a.id, a.revoked.len()),
        (_, "add_admin") => format!("rejected {}: {} stays disabled, its certificate revoked", a.id, a.principal),
        _ => format!("rejected {}: nothing done", a.id),
    })
}

/// `rekey --terminal S --csr F --station NAME`: asks; a second admin decides.
pub async fn request_rekey(client: &Client, json: bool, msg: v1::RequestRekeyRequest) -> Result<()> {
    let a = AdminClient::new(client.channel.clone())
        .request_rekey(client.signed("/hsca.v1.Admin/RequestRekey", msg)?)
        .await?
        .into_inner();
    print(json, &approval_json(&a), || {
        format!(
            "re-key {} of {} is pending. Nothing is issued until a second administrator runs `cactl approvals \
             approve {} --out NEW.pem` (or `reject`).",
            a.id, a.terminal_serial, a.id
        )
    })
}
