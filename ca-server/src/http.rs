//! HTTP beside gRPC: `/healthz` (the process runs), `/readyz` (HSM self-test and registry read
//! succeed), `/metrics` (Prometheus text). CRL and OCSP arrive here with the revocation issue.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::service::Ca;

/// Counters exported at `/metrics`.
#[derive(Default)]
pub struct Metrics {
    /// Certificates issued.
    pub issued: AtomicU64,
    /// Issue requests answered from a previous identical request.
    pub replays: AtomicU64,
    /// Refused authentications.
    pub auth_failures: AtomicU64,
}

/// The HTTP routes.
pub fn router(ca: Arc<Ca>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ca)
}

async fn readyz(State(ca): State<Arc<Ca>>) -> (StatusCode, String) {
    let result = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let sig = ca.signer.sign(b"readiness probe").map_err(|e| format!("hsm: {e}"))?;
        ca.issuer_info
            .key
            .verify(&ca.issuer_info.signer_id, b"readiness probe", sig.as_der())
            .map_err(|e| format!("hsm self-test: {e}"))?;
        ca.registry.audit_len().map_err(|e| format!("registry: {e}"))?;
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    match result {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
    }
}

async fn metrics(State(ca): State<Arc<Ca>>) -> String {
    let m = &ca.metrics;
    format!(
        "# HELP hsca_certificates_issued_total Terminal certificates issued.\n# TYPE hsca_certificates_issued_total counter\nhsca_certificates_issued_total {}\n\
         # HELP hsca_issue_replays_total Issue requests answered from an earlier identical request.\n# TYPE hsca_issue_replays_total counter\nhsca_issue_replays_total {}\n\
         # HELP hsca_auth_failures_total Refused request authentications.\n# TYPE hsca_auth_failures_total counter\nhsca_auth_failures_total {}\n",
        m.issued.load(Ordering::Relaxed),
        m.replays.load(Ordering::Relaxed),
        m.auth_failures.load(Ordering::Relaxed)
    )
}
