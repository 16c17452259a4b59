//! `cactl alerts`: the fleet service's alerts (fleet-server), listed, shown with their evidence,
//! and acknowledged — signed with the same identity as every CA call.

use std::path::PathBuf;

use anyhow::{Context, Result};
use proto::client::{Client, request_id};
use proto::identity::Identity;
use proto::v1;
use proto::v1::fleet_client::FleetClient;
use serde_json::json;

use crate::print;
use crate::revocation::time_text;

/// Where the fleet service is.
#[derive(clap::Args)]
pub struct FleetEndpoint {
    /// The fleet service's gRPC URL.
    #[arg(long, global = true, env = "HSCA_FLEET_URL", default_value = "https://127.0.0.1:7543")]
    pub fleet: String,
    /// Its TLS CA (`fleet-server init` writes DIR/tls/ca.pem).
    #[arg(long, global = true, env = "HSCA_FLEET_TLS_CA")]
    pub fleet_tls_ca: Option<PathBuf>,
}

/// Connects to the fleet service as `identity`.
pub async fn connect(identity: &Identity, at: &FleetEndpoint) -> Result<Client> {
    let pass = identity.passphrase(proto::identity::prompt_passphrase)?;
    let signer = identity.signer(&pass)?;
    let path = at
        .fleet_tls_ca
        .as_ref()
        .context("name the fleet service's TLS CA: --fleet-tls-ca FILE or HSCA_FLEET_TLS_CA")?;
    let ca = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Client::connect_trusting(identity, &at.fleet, ca, Box::new(signer)).await?)
}

/// An alert as `--json` prints it (the evidence as JSON, not a string).
pub fn alert_json(a: &v1::Alert) -> serde_json::Value {
    let evidence: serde_json::Value = serde_json::from_str(&a.evidence_json).unwrap_or(json!(a.evidence_json));
    json!({"id": a.id, "rule": a.rule, "terminal": a.terminal_serial, "certificate": a.certificate_serial,
        "first": time_text(a.first_ms), "first_ms": a.first_ms, "last": time_text(a.last_ms), "occurrences": a.occurrences,
        "address": a.source_address, "action": a.action, "acknowledged": a.acknowledged,
        "acknowledged_by": a.acknowledged_by, "note": a.note, "evidence": evidence})
}

/// `cactl alerts list`.
pub async fn list(
    c: &Client,
    json_out: bool,
    all: bool,
    rule: Option<&str>,
    terminal: Option<&str>,
    limit: u32,
) -> Result<()> {
    let m = v1::ListAlertsRequest {
        request_id: request_id(),
        open_only: !all,
        rule: rule.unwrap_or_default().into(),
        limit,
        terminal_serial: terminal.unwrap_or_default().into(),
    };
    let list =
        FleetClient::new(c.channel.clone()).list_alerts(c.signed("/hsca.v1.Fleet/ListAlerts", m)?).await?.into_inner();
    let rows: Vec<_> = list.alerts.iter().map(alert_json).collect();
    print(json_out, &rows, || {
        let mut out = format!(
            "{:<6} {:<12} {:<18} {:<16} {:>5} {:<20} {}",
            "ID", "RULE", "TERMINAL", "ADDRESS", "SEEN", "ACTION", "STATE"
        );
        for a in &list.alerts {
            let state = if a.acknowledged { format!("acked by {}", a.acknowledged_by) } else { "open".into() };
            out.push_str(&format!(
                "\n{:<6} {:<12} {:<18} {:<16} {:>5} {:<20} {state}",
                a.id, a.rule, a.terminal_serial, a.source_address, a.occurrences, a.action
            ));
        }
        if list.alerts.is_empty() {
            out.push_str(if all { "\n(no alerts)" } else { "\n(no open alerts)" });
        }
        out
    })
}

/// `cactl alerts show ID`.
pub async fn show(c: &Client, json_out: bool, id: u64) -> Result<()> {
    let m = v1::GetAlertRequest { request_id: request_id(), id };
    let a = FleetClient::new(c.channel.clone()).get_alert(c.signed("/hsca.v1.Fleet/GetAlert", m)?).await?.into_inner();
    let j = alert_json(&a);
    print(json_out, &j, || serde_json::to_string_pretty(&j).unwrap_or_default())
}

/// `cactl alerts ack ID`.
pub async fn ack(c: &Client, json_out: bool, id: u64, note: &str) -> Result<()> {
    let m = v1::AckAlertRequest { request_id: request_id(), id, note: note.into() };
    let a = FleetClient::new(c.channel.clone()).ack_alert(c.signed("/hsca.v1.Fleet/AckAlert", m)?).await?.into_inner();
    print(json_out, &alert_json(&a), || {
        format!("alert {} ({}, {}) acknowledged by {}", a.id, a.rule, a.terminal_serial, a.acknowledged_by)
    })
}
