//! Counters exported at `/metrics` (Prometheus text).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The service's counters.
#[derive(Default)]
pub struct Metrics {
    /// Heartbeats accepted.
    pub accepted: AtomicU64,
    /// Heartbeats that repeated the last accepted one.
    pub duplicates: AtomicU64,
    refused: Mutex<BTreeMap<&'static str, u64>>,
    alerts: Mutex<BTreeMap<String, u64>>,
    /// Calls to the CA that failed.
    pub ca_failures: AtomicU64,
    /// Refused signed requests (alerts API).
    pub auth_failures: AtomicU64,
    /// Alerts the webhook gave up on.
    pub webhook_failures: AtomicU64,
    /// Heartbeats the service itself failed to answer (overload, CA or store away, deadline).
    pub service_failures: AtomicU64,
    /// Number of the CRL in use (0: none).
    pub crl_number: AtomicU64,
    /// CRLs fetched but not taken (or not fetched).
    pub crl_refused: AtomicU64,
    /// The last activation-log number read from the CA (0: none).
    pub activation_seq: AtomicU64,
    /// Reads of the activation log that failed.
    pub activation_failures: AtomicU64,
}

impl Metrics {
    /// Counts a refused heartbeat by its reason.
    pub fn refused(&self, reason: &'static str) {
        if let Ok(mut m) = self.refused.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    /// Counts a new alert of `rule`.
    pub fn alert_raised(&self, rule: &str) {
        if let Ok(mut m) = self.alerts.lock() {
            *m.entry(rule.to_owned()).or_default() += 1;
        }
    }

    /// The Prometheus text; `open_alerts` comes from the store.
    pub fn render(&self, open_alerts: u64) -> String {
        let mut s = String::new();
        s.push_str("# HELP fleet_heartbeats_total Heartbeats by outcome.\n# TYPE fleet_heartbeats_total counter\n");
        s.push_str(&format!(
            "fleet_heartbeats_total{{outcome=\"accepted\"}} {}\n",
            self.accepted.load(Ordering::Relaxed)
        ));
        s.push_str(&format!(
            "fleet_heartbeats_total{{outcome=\"duplicate\"}} {}\n",
            self.duplicates.load(Ordering::Relaxed)
        ));
        if let Ok(m) = self.refused.lock() {
            for (reason, n) in m.iter() {
                s.push_str(&format!("fleet_heartbeats_total{{outcome=\"refused\",reason=\"{reason}\"}} {n}\n"));
            }
        }
        s.push_str("# HELP fleet_alerts_total Alerts raised by rule.\n# TYPE fleet_alerts_total counter\n");
        if let Ok(m) = self.alerts.lock() {
            for rule in crate::policy::Rule::ALL {
                let n = m.get(rule.name()).copied().unwrap_or(0);
                s.push_str(&format!("fleet_alerts_total{{rule=\"{}\"}} {n}\n", rule.name()));
            }
        }
        s.push_str("# HELP fleet_alerts_open Alerts not yet acknowledged.\n# TYPE fleet_alerts_open gauge\n");
        s.push_str(&format!("fleet_alerts_open {open_alerts}\n"));
        s.push_str("# TYPE fleet_ca_failures_total counter\n");
        s.push_str(&format!("fleet_ca_failures_total {}\n", self.ca_failures.load(Ordering::Relaxed)));
        s.push_str("# TYPE fleet_auth_failures_total counter\n");
        s.push_str(&format!("fleet_auth_failures_total {}\n", self.auth_failures.load(Ordering::Relaxed)));
        s.push_str("# TYPE fleet_webhook_failures_total counter\n");
        s.push_str(&format!("fleet_webhook_failures_total {}\n", self.webhook_failures.load(Ordering::Relaxed)));
        s.push_str("# HELP fleet_service_failures_total Heartbeats the service failed to answer itself.\n");
        s.push_str("# TYPE fleet_service_failures_total counter\n");
        s.push_str(&format!("fleet_service_failures_total {}\n", self.service_failures.load(Ordering::Relaxed)));
        s.push_str("# HELP fleet_activation_seq The last number of the CA's activation log read.\n");
        s.push_str("# TYPE fleet_activation_seq gauge\n");
        s.push_str(&format!("fleet_activation_seq {}\n", self.activation_seq.load(Ordering::Relaxed)));
        s.push_str("# TYPE fleet_activation_failures_total counter\n");
        s.push_str(&format!("fleet_activation_failures_total {}\n", self.activation_failures.load(Ordering::Relaxed)));
        s.push_str("# TYPE fleet_crl_number gauge\n");
        s.push_str(&format!("fleet_crl_number {}\n", self.crl_number.load(Ordering::Relaxed)));
        s.push_str("# TYPE fleet_crl_refused_total counter\n");
        s.push_str(&format!("fleet_crl_refused_total {}\n", self.crl_refused.load(Ordering::Relaxed)));
        s
    }
}
