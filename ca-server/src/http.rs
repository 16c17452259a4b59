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

use crate::api::Ca;
use crate::ocsp::Plan;

/// Counters exported at `/metrics`.
#[derive(Default)]
pub struct Metrics {
    /// Certificates issued.
    pub issued: AtomicU64,
    /// Issue requests answered from a previous identical request.
    pub replays: AtomicU64,
    /// Refused authentications.
    pub auth_failures: AtomicU64,
    /// OCSP requests answered.
    pub ocsp_requests: AtomicU64,
    /// Of those, answered from pre-signed responses.
    pub ocsp_cached: AtomicU64,
    /// 1 while this instance holds the CRL leader lock of a shared registry (always 1 on redb).
    pub crl_leader: AtomicU64,
}

/// The HTTP routes.
pub fn router(ca: Arc<Ca>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/crl/{file}", get(crl))
        .route("/ocsp", axum::routing::post(ocsp_post))
        .route("/ocsp/{*request}", get(ocsp_get))
        .with_state(ca)
}

async fn ocsp_post(State(ca): State<Arc<Ca>>, body: axum::body::Bytes) -> Response {
    ocsp_answer(ca, OcspInput::Der(body), false).await
}

async fn ocsp_get(State(ca): State<Arc<Ca>>, Path(request): Path<String>) -> Response {
    ocsp_answer(ca, OcspInput::Path(request), true).await
}

enum OcspInput {
    Der(axum::body::Bytes),
    Path(String),
}

/// RFC 6960 over HTTP (appendix A): answers are `application/ocsp-response`, HTTP 200 even for
/// OCSP-level errors; GET answers may be cached until half their validity.
async fn ocsp_answer(ca: Arc<Ca>, input: OcspInput, get: bool) -> Response {
    // Parsing and the cache are memory only: answered here, without a hop to a blocking thread.
    let plan = match input {
        OcspInput::Der(b) => ca.ocsp.plan_der(&b),
        OcspInput::Path(p) => match pki::ocsp::parse_get_path(&p) {
            Ok(req) => ca.ocsp.plan(req),
            Err(_) => ca.ocsp.plan_der(&[]),
        },
    };
    let answer = match plan {
        Plan::Ready(a) => a,
        // An in-process HSM signs in ~20 µs of CPU, less than a hop to another thread costs;
        // a device's round trip must not hold an async worker.
        Plan::Sign(work) if ca.ocsp.signs_in_process() => ca.ocsp.finish(&ca.registry, work),
        Plan::Sign(work) => {
            let ca = ca.clone();
            match tokio::task::spawn_blocking(move || ca.ocsp.finish(&ca.registry, work)).await {
                Ok(a) => a,
                Err(_) => return (StatusCode::INTERNAL_SERVER_ERROR, "responder failed\n").into_response(),
            }
        }
    };
    ca.metrics.ocsp_requests.fetch_add(1, Ordering::Relaxed);
    if answer.cached {
        ca.metrics.ocsp_cached.fetch_add(1, Ordering::Relaxed);
    }
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/ocsp-response"));
    match (get, answer.max_age) {
        (true, Some(age)) => {
            if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={}, no-transform", age.as_secs())) {
                h.insert(header::CACHE_CONTROL, v);
            }
        }
        _ => {
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
    }
    (h, answer.der).into_response()
}

async fn crl(State(ca): State<Arc<Ca>>, Path(file): Path<String>, headers: HeaderMap) -> Response {
    let Some((file, pem)) = ca.crls.file(&file) else {
        return (StatusCode::NOT_FOUND, "no such CRL\n").into_response();
    };
    // Partitions the publisher knows of are answered from memory: no registry read per fetch.
    if let crate::revocation::CrlFile::Partition(p) = file
        && ca.crls.get(crate::revocation::CrlFile::Full).is_some()
        && p >= ca.crls.partitions()
    {
        return (StatusCode::NOT_FOUND, "no such CRL partition\n").into_response();
    }
    let published = ca.crls.get(file);
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
    let rollback = ca.audit_signer.as_ref().and_then(|a| a.rollback_accepted()).map(str::to_owned);
    let result = tokio::task::spawn_blocking(move || -> Result<String, String> {
        ca.ready()?;
        let admins = ca.registry.active_admins().map_err(|e| format!("registry: {e}"))?;
        // Not a readiness failure (issuance and revocation work), but never silently skipped.
        Ok(if admins.len() < 2 {
            format!("dual control: unavailable ({} active admin; approvals need a second)\n", admins.len())
        } else {
            format!("dual control: available ({} active admins)\n", admins.len())
        })
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    match result {
        Ok(detail) => match rollback {
            None => (StatusCode::OK, format!("ready\n{detail}")),
            Some(why) => (
                StatusCode::OK,
                format!("ready\n{detail}audit: rollback accepted at start (--accept-audit-rollback): {why}\n"),
            ),
        },
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
    }
}

async fn metrics(State(ca): State<Arc<Ca>>) -> String {
    let m = &ca.metrics;
    let writer = ca.registry.writer_stats();
    format!(
        "# HELP hsca_certificates_issued_total Terminal certificates issued.\n# TYPE hsca_certificates_issued_total counter\nhsca_certificates_issued_total {}\n\
         # HELP hsca_issue_replays_total Issue requests answered from an earlier identical request.\n# TYPE hsca_issue_replays_total counter\nhsca_issue_replays_total {}\n\
         # HELP hsca_auth_failures_total Refused request authentications.\n# TYPE hsca_auth_failures_total counter\nhsca_auth_failures_total {}\n\
         # HELP hsca_ocsp_requests_total OCSP requests answered.\n# TYPE hsca_ocsp_requests_total counter\nhsca_ocsp_requests_total {}\n\
         # HELP hsca_ocsp_presigned_total OCSP requests answered from a pre-signed response.\n# TYPE hsca_ocsp_presigned_total counter\nhsca_ocsp_presigned_total {}\n\
         # HELP hsca_ocsp_nonces_ignored_total OCSP nonces ignored because the fresh-signature budget was spent.\n# TYPE hsca_ocsp_nonces_ignored_total counter\nhsca_ocsp_nonces_ignored_total {}\n\
         # HELP hsca_crl_leader 1 while this instance is the CRL leader of its registry.\n# TYPE hsca_crl_leader gauge\nhsca_crl_leader {}\n\
         # HELP hsca_registry_commits_total Registry batch transactions committed by this instance.\n# TYPE hsca_registry_commits_total counter\nhsca_registry_commits_total {}\n\
         # HELP hsca_registry_writes_total Registry writes in those transactions.\n# TYPE hsca_registry_writes_total counter\nhsca_registry_writes_total {}\n\
         # HELP hsca_registry_writer_busy_seconds_total Time the registry writer spent on batches (writes, commit, fsync); its rate is the writer's busy share, issuance's one serial stage.\n# TYPE hsca_registry_writer_busy_seconds_total counter\nhsca_registry_writer_busy_seconds_total {:.6}\n",
        m.issued.load(Ordering::Relaxed),
        m.replays.load(Ordering::Relaxed),
        m.auth_failures.load(Ordering::Relaxed),
        m.ocsp_requests.load(Ordering::Relaxed),
        m.ocsp_cached.load(Ordering::Relaxed),
        ca.ocsp.nonces_ignored(),
        m.crl_leader.load(Ordering::Relaxed),
        writer.commits,
        writer.writes,
        writer.busy_us as f64 / 1e6
    )
}
