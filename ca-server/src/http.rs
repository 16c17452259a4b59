//! HTTP beside gRPC: `/healthz` (the process runs), `/readyz` (HSM self-test and registry read
//! succeed), `/metrics` (Prometheus text), and the CRLs at the distribution point certificates
//! carry (`/crl/issuing.crl`, `.pem`, `issuing-delta.crl`), with ETag and Last-Modified.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
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
        .route("/crl/{file}", get(crl))
        .with_state(ca)
}

async fn crl(State(ca): State<Arc<Ca>>, Path(file): Path<String>, headers: HeaderMap) -> Response {
    let full = ca.crls.file_name().to_owned();
    let stem = full.strip_suffix(".crl").unwrap_or(&full).to_owned();
    let (published, pem) = match file.as_str() {
        f if f == full => (ca.crls.full(), false),
        f if f == format!("{stem}.pem") => (ca.crls.full(), true),
        f if f == format!("{stem}-delta.crl") => (ca.crls.delta(), false),
        f if f == format!("{stem}-delta.pem") => (ca.crls.delta(), true),
        _ => return (StatusCode::NOT_FOUND, "no such CRL\n").into_response(),
    };
    let Some(p) = published else {
        return (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], "CRL not published yet\n")
            .into_response();
    };
    let last_modified = crate::revocation::http_date(p.this_update);
    let unchanged = match headers.get(header::IF_NONE_MATCH) {
        Some(tags) => tags.to_str().is_ok_and(|t| t.split(',').any(|t| t.trim() == p.etag || t.trim() == "*")),
        None => headers.get(header::IF_MODIFIED_SINCE).is_some_and(|v| v.as_bytes() == last_modified.as_bytes()),
    };
    let mut h = HeaderMap::new();
    for (k, v) in [(header::ETAG, p.etag.as_str()), (header::LAST_MODIFIED, last_modified.as_str())] {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=60, no-transform"));
    if unchanged {
        return (StatusCode::NOT_MODIFIED, h).into_response();
    }
    if pem {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-pem-file"));
        (h, p.pem.as_str().to_owned()).into_response()
    } else {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/pkix-crl"));
        (h, p.der.as_ref().clone()).into_response()
    }
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
