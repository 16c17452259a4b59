//! Authentication and authorisation of signed requests (DESIGN §3; REQUIREMENTS M1, M3, M4, M5,
//! M7, M11). One function, [`authenticate`], decides for every method; the gRPC layer only
//! extracts the headers and maps the failure to a status.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use der::Decode;
use pki::{Certificate, SignerId, Sm2PublicKey, validate_chain};
use proto::signing::{HeaderError, SignedHeaders, canonical};
use proto::v1::Reason;
use registry::{CertStatus, CertSubject, PrincipalRecord, Registry};
use sm3::Digest;

use crate::records::unix_ms;
use crate::roles::Roles;

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Principal name.
    pub name: String,
    /// Role from the registry.
    pub role: String,
    /// Manufacturer codes (stations).
    pub manufacturers: Vec<String>,
    /// Hex serial of the identity certificate used.
    pub cert_serial: String,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// Signed-request metadata missing or malformed.
    #[error("signed-request metadata: {0}")]
    Headers(#[from] HeaderError),
    /// The identity certificate does not parse or does not chain to our issuing CA now.
    #[error("caller certificate: {0}")]
    CertInvalid(String),
    /// The identity certificate is revoked.
    #[error("caller certificate {0} is revoked")]
    Revoked(String),
    /// No enabled principal holds this certificate.
    #[error("no enabled principal holds certificate {0}")]
    Disabled(String),
    /// The request time is outside the allowed window.
    #[error("request time is {skew_s}s away from ours (allowed ±{allowed_s}s)")]
    Stale {
        /// Seconds off.
        skew_s: i64,
        /// Seconds allowed.
        allowed_s: u64,
    },
    /// The signature does not verify.
    #[error("request signature: {0}")]
    BadSignature(String),
    /// The nonce was used before within its window.
    #[error("nonce was already used")]
    Replayed,
    /// The caller's role may not call the method.
    #[error("role {role} may not call {method}")]
    Forbidden {
        /// Caller's role.
        role: String,
        /// Method.
        method: String,
    },
    /// Too many failures from this principal or address.
    #[error("too many failed requests from {0}; try again later")]
    RateLimited(String),
}

impl AuthFailure {
    /// The gRPC code and stable reason for this failure.
    pub fn status(&self) -> (tonic::Code, Reason) {
        use tonic::Code::{PermissionDenied, ResourceExhausted, Unauthenticated};
        match self {
            Self::Headers(_) => (Unauthenticated, Reason::MissingSignature),
            Self::CertInvalid(_) => (Unauthenticated, Reason::CallerCertInvalid),
            Self::Revoked(_) => (Unauthenticated, Reason::CallerRevoked),
            Self::Disabled(_) => (PermissionDenied, Reason::CallerDisabled),
            Self::Stale { .. } => (Unauthenticated, Reason::StaleTimestamp),
            Self::BadSignature(_) => (Unauthenticated, Reason::BadSignature),
            Self::Replayed => (Unauthenticated, Reason::ReplayedNonce),
            Self::Forbidden { .. } => (PermissionDenied, Reason::RoleForbidden),
            Self::RateLimited(_) => (ResourceExhausted, Reason::RateLimited),
        }
    }
}

/// Who is who: principals and the status of their certificates.
pub trait Directory {
    /// The principal holding certificate `serial` (hex), if the certificate is ours and the
    /// principal exists, and whether that certificate is revoked.
    fn principal_for_cert(&self, serial: &str) -> Option<(PrincipalRecord, bool)>;
}

impl Directory for Registry {
    fn principal_for_cert(&self, serial: &str) -> Option<(PrincipalRecord, bool)> {
        let (rec, _) = self.certificate(serial).ok()??;
        let CertSubject::Principal { name } = rec.subject else { return None };
        let p = self.principal(&name).ok()??;
        (p.cert_serial == serial).then_some((p, rec.status != CertStatus::Good))
    }
}

/// Recently seen nonces, forgotten after the clock-skew window (a nonce older than that is
/// refused as stale anyway).
#[derive(Default)]
pub struct NonceCache {
    seen: Mutex<HashMap<String, u64>>,
}

impl NonceCache {
    /// Records `nonce` until `expires_ms`; false if it is already there and unexpired.
    pub fn insert(&self, nonce: &str, now_ms: u64, expires_ms: u64) -> bool {
        let Ok(mut seen) = self.seen.lock() else { return false };
        if seen.len() > 100_000 {
            seen.retain(|_, exp| *exp > now_ms);
        }
        match seen.get(nonce) {
            Some(exp) if *exp > now_ms => false,
            _ => {
                seen.insert(nonce.to_owned(), expires_ms);
                true
            }
        }
    }
}

/// Failed attempts per principal or address over the last minute (M4, M7).
#[derive(Default)]
pub struct FailureLimiter {
    failures: Mutex<HashMap<String, VecDeque<u64>>>,
}

impl FailureLimiter {
    fn recent(q: &mut VecDeque<u64>, now_ms: u64) -> usize {
        while q.front().is_some_and(|t| *t + 60_000 <= now_ms) {
            q.pop_front();
        }
        q.len()
    }

    /// Whether `key` has used up its failures.
    pub fn is_limited(&self, key: &str, now_ms: u64, per_minute: u32) -> bool {
        let Ok(mut map) = self.failures.lock() else { return true };
        map.get_mut(key).is_some_and(|q| Self::recent(q, now_ms) >= per_minute as usize)
    }

    /// Counts a failure for `key`.
    pub fn record(&self, key: &str, now_ms: u64) {
        if let Ok(mut map) = self.failures.lock() {
            map.entry(key.to_owned()).or_default().push_back(now_ms);
        }
    }
}

/// What is kept of a caller certificate once its chain was validated, by SM3 of its DER: the
/// chain's two SM2 verifications, the parsing and the key's multiples (for the request
/// signature) are not repeated. Revocation and principal state are still checked on every request.
#[derive(Clone)]
struct ValidatedCert {
    not_after: SystemTime,
    serial_hex: String,
    key: Sm2PublicKey,
}

/// Caller certificates already validated (see [`ValidatedCert`]), at most
/// [`ValidatedCerts::CAPACITY`]: each holds its key's multiples (~90 KB).
#[derive(Default)]
pub struct ValidatedCerts {
    seen: Mutex<HashMap<[u8; 32], ValidatedCert>>,
}

impl ValidatedCerts {
    /// More callers than this and the cache starts again (principals are stations and staff:
    /// hundreds, not thousands).
    pub const CAPACITY: usize = 1024;

    fn get(&self, key: &[u8; 32], now: SystemTime) -> Option<ValidatedCert> {
        self.seen.lock().ok()?.get(key).filter(|v| now <= v.not_after).cloned()
    }

    fn remember(&self, key: [u8; 32], cert: ValidatedCert) {
        if let Ok(mut m) = self.seen.lock() {
            if m.len() >= Self::CAPACITY {
                m.clear();
            }
            m.insert(key, cert);
        }
    }

    fn validate(&self, cert_der: &[u8], trust: &Trust, now: SystemTime) -> Result<ValidatedCert, AuthFailure> {
        let fingerprint: [u8; 32] = sm3::Sm3::digest(cert_der).into();
        if let Some(v) = self.get(&fingerprint, now) {
            return Ok(v);
        }
        let cert =
            Certificate::from_der(cert_der).map_err(|e| AuthFailure::CertInvalid(format!("not a certificate: {e}")))?;
        validate_chain(&cert, std::slice::from_ref(&trust.issuing), &trust.root, now, &trust.signer_id)
            .map_err(|e| AuthFailure::CertInvalid(e.to_string()))?;
        if cert.tbs_certificate().issuer() != trust.issuing.tbs_certificate().subject() {
            return Err(AuthFailure::CertInvalid("not issued by our issuing CA".into()));
        }
        let serial_hex = pki::CertSerial::of(&cert)
            .ok_or_else(|| AuthFailure::CertInvalid("serial is not a positive integer".into()))?
            .to_hex();
        let key = Sm2PublicKey::from_spki(cert.tbs_certificate().subject_public_key_info())
            .map_err(|e| AuthFailure::CertInvalid(e.to_string()))?
            .precomputed();
        let not_after = pki::time::from_x509(&cert.tbs_certificate().validity().not_after);
        let v = ValidatedCert { not_after, serial_hex, key };
        self.remember(fingerprint, v.clone());
        Ok(v)
    }
}

/// What the server trusts: its issuing CA and root, and the SM2 signer ID of its principals.
pub struct Trust {
    /// The issuing CA certificate.
    pub issuing: Certificate,
    /// The root certificate.
    pub root: Certificate,
    /// Signer ID for principals' signatures.
    pub signer_id: SignerId,
}

/// Everything [`authenticate`] needs besides the request.
pub struct Gate<'a, D: Directory> {
    /// Trust anchors.
    pub trust: &'a Trust,
    /// Principals.
    pub directory: &'a D,
    /// Roles policy.
    pub roles: &'a Roles,
    /// Replay cache.
    pub nonces: &'a NonceCache,
    /// Failure counts.
    pub limiter: &'a FailureLimiter,
    /// Chains already validated.
    pub validated: &'a ValidatedCerts,
}

impl<D: Directory> Gate<'_, D> {
    /// Authenticates and authorises one request. `peer` is the caller's address, for rate
    /// limiting before the principal is known; failures count against it and the principal.
    pub fn authenticate(
        &self,
        headers: Result<SignedHeaders, HeaderError>,
        method: &str,
        body: &[u8],
        peer: &str,
        now: SystemTime,
    ) -> Result<Caller, AuthFailure> {
        let now_ms = unix_ms(now);
        let limit = self.roles.failures_per_minute;
        if self.limiter.is_limited(peer, now_ms, limit) {
            return Err(AuthFailure::RateLimited(peer.to_owned()));
        }
        let mut principal_key = None;
        let result = self.check(headers, method, body, now, now_ms, &mut principal_key);
        if result.is_err() {
            self.limiter.record(peer, now_ms);
            if let Some(name) = &principal_key {
                self.limiter.record(name, now_ms);
            }
        }
        result
    }

    fn check(
        &self,
        headers: Result<SignedHeaders, HeaderError>,
        method: &str,
        body: &[u8],
        now: SystemTime,
        now_ms: u64,
        principal_key: &mut Option<String>,
    ) -> Result<Caller, AuthFailure> {
        let h = headers?;
        let ValidatedCert { serial_hex: serial, key, .. } = self.validated.validate(&h.cert_der, self.trust, now)?;
        let (principal, revoked) =
            self.directory.principal_for_cert(&serial).ok_or_else(|| AuthFailure::Disabled(serial.clone()))?;
        *principal_key = Some(principal.name.clone());
        if self.limiter.is_limited(&principal.name, now_ms, self.roles.failures_per_minute) {
            return Err(AuthFailure::RateLimited(principal.name));
        }
        if revoked {
            return Err(AuthFailure::Revoked(serial));
        }
        if !principal.enabled {
            return Err(AuthFailure::Disabled(serial));
        }
        let skew_ms = h.time_ms as i64 - now_ms as i64;
        let allowed = self.roles.clock_skew;
        if skew_ms.unsigned_abs() > allowed.as_millis() as u64 {
            return Err(AuthFailure::Stale { skew_s: skew_ms / 1000, allowed_s: allowed.as_secs() });
        }
        key.verify(&self.trust.signer_id, &canonical(method, h.time_ms, &h.nonce_hex, body), &h.signature_der)
            .map_err(|e| AuthFailure::BadSignature(e.to_string()))?;
        // Only a correctly signed request may spend a nonce.
        let window = 2 * allowed.as_millis() as u64;
        if !self.nonces.insert(&h.nonce_hex, now_ms, now_ms + window) {
            return Err(AuthFailure::Replayed);
        }
        if !self.roles.allows(&principal.role, method) {
            return Err(AuthFailure::Forbidden { role: principal.role, method: method.to_owned() });
        }
        Ok(Caller {
            name: principal.name,
            role: principal.role,
            manufacturers: principal.manufacturers,
            cert_serial: serial,
        })
    }
}
