//! Authentication and authorisation of signed requests (DESIGN §3; REQUIREMENTS M1, M3, M4, M5,
//! M7, M11). One function, [`Gate::authenticate`], decides for every method; the gRPC layer
//! only extracts the headers and maps the failure to a status.
//!
//! Everything an outsider can vary is bounded: failure counts (per address and per principal),
//! the validated-certificate cache (registered principals only) and the replay cache (correctly
//! signed requests only, expiring in O(1)). A failure counts against a principal only once a
//! signature verified with its key, so forged requests carrying a station's public certificate
//! cannot lock that station out.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use der::Decode;
use pki::{Certificate, SignerId, Sm2PublicKey, validate_chain};
use proto::signing::{HeaderError, SignedHeaders, canonical};
use proto::v1::Reason;
use registry::{CertStatus, FailureKind, PrincipalRecord, Registry};
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
    #[error("role {role} may not call {method}{}", missing_line.as_ref().map(|l| format!(
        " (policies/roles.toml does not list it, so no role may: add `{l}` under [methods] and restart)"
    )).unwrap_or_default())]
    Forbidden {
        /// Caller's role.
        role: String,
        /// Method.
        method: String,
        /// When roles.toml lacks the method altogether: the shipped line for it.
        missing_line: Option<String>,
    },
    /// Too many failures from this principal or address.
    #[error("too many failed requests from {0}; try again later")]
    RateLimited(String),
    /// Signed before this server started: a request captured earlier cannot be replayed
    /// after a restart (which empties the replay cache).
    #[error("request was signed before this server started; sign it again")]
    BeforeStart,
    /// The registry could not be read (PostgreSQL away): retry.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// An administrator waiting for a second administrator's approval.
    #[error("{name} is an administrator waiting for approval {approval} by a second administrator")]
    PendingApproval {
        /// The principal.
        name: String,
        /// The approval it waits for.
        approval: String,
    },
}

impl AuthFailure {
    /// The gRPC code and stable reason for this failure.
    pub fn status(&self) -> (tonic::Code, Reason) {
        use tonic::Code::{PermissionDenied, ResourceExhausted, Unauthenticated, Unavailable};
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
            Self::BeforeStart => (Unauthenticated, Reason::StaleTimestamp),
            Self::PendingApproval { .. } => (PermissionDenied, Reason::CallerPendingApproval),
            Self::Unavailable(_) => (Unavailable, Reason::StorageFailure),
        }
    }

    /// Whether this failure counts toward the caller's failure limit. Not: the registry being
    /// away (ours, not theirs: an outage must not lock every station out once it ends), a
    /// refusal for being over the limit (counted already: a client retrying at the limit would
    /// never recover), and a replayed nonce (the request is the principal's own, correctly
    /// signed; a proxy retrying it on another instance, or anyone who saw it, would otherwise
    /// lock the principal out).
    pub fn counts_against_caller(&self) -> bool {
        !matches!(self, Self::Unavailable(_) | Self::RateLimited(_) | Self::Replayed)
    }
}

/// A principal's identity certificate as the registry holds it.
#[derive(Clone, Debug)]
pub struct KnownCert {
    /// The principal holding it.
    pub principal: PrincipalRecord,
    /// Whether the certificate is revoked.
    pub revoked: bool,
    /// The certificate as issued: a presented certificate must be exactly this.
    pub der: Vec<u8>,
}

/// Who is who: principals and the status of their certificates.
pub trait Directory {
    /// The principal holding certificate `serial` (hex), if the certificate is ours and the
    /// principal exists and holds it.
    /// `Err` when the registry cannot be read (the caller is then neither known nor unknown).
    fn principal_for_cert(&self, serial: &str) -> Result<Option<KnownCert>, String>;

    /// Spends `nonce` in a store that several CA instances share, when there is one (so a nonce
    /// used on one instance is refused on the others): `Ok(false)` when it was spent already.
    /// Without a shared store the process's [`NonceCache`] is the whole check.
    fn spend_shared_nonce(&self, _nonce: &[u8], _now_ms: u64, _expires_ms: u64) -> Result<bool, String> {
        Ok(true)
    }
}

impl Directory for Registry {
    fn principal_for_cert(&self, serial: &str) -> Result<Option<KnownCert>, String> {
        // One read snapshot for the certificate and its principal (every request asks this).
        let Some(registry::PrincipalCertificate { record: rec, der, principal: Some(p) }) =
            self.principal_certificate(serial).map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        Ok((p.cert_serial == serial).then_some(KnownCert {
            principal: p,
            revoked: rec.status != CertStatus::Good,
            der,
        }))
    }

    fn spend_shared_nonce(&self, nonce: &[u8], now_ms: u64, expires_ms: u64) -> Result<bool, String> {
        if !self.is_shared() {
            return Ok(true);
        }
        match self.use_nonce(nonce, now_ms, expires_ms) {
            Ok(()) => Ok(true),
            Err(registry::RegistryError::NonceReplayed) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Nonces of correctly signed requests, each remembered until its request's time is outside
/// the clock-skew window (after that the request is refused as stale anyway). Inserting is O(1)
/// amortised: entries expire from the front of a queue in insertion order, never by a scan.
/// Requests signed before the cache was made (before the server started) are refused by the
/// gate, so a restart, which empties the cache, does not reopen a window for replays.
pub struct NonceCache {
    started_ms: u64,
    inner: Mutex<Nonces>,
}

#[derive(Default)]
struct Nonces {
    seen: HashMap<u128, u64>,
    order: VecDeque<(u64, u128)>,
}

/// What [`NonceCache::insert`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceUse {
    /// Not seen within its window: now remembered.
    Fresh,
    /// Seen before and not yet expired.
    Replayed,
    /// The cache holds [`NonceCache::CAPACITY`] live nonces: refuse rather than forget one.
    Full,
}

impl Default for NonceCache {
    fn default() -> Self {
        Self::starting_at(unix_ms(SystemTime::now()))
    }
}

impl NonceCache {
    /// Live nonces kept at most (~70 bytes each): 10,000 signed requests a second for 400 s.
    pub const CAPACITY: usize = 4_000_000;

    /// A cache for a server that started at `started_ms` (unix milliseconds).
    pub fn starting_at(started_ms: u64) -> Self {
        Self { started_ms, inner: Mutex::default() }
    }

    /// When the server started: requests signed earlier are refused.
    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// Records `nonce_hex` (32 hex digits) until `expires_ms`.
    pub fn insert(&self, nonce_hex: &str, now_ms: u64, expires_ms: u64) -> NonceUse {
        let Ok(nonce) = u128::from_str_radix(nonce_hex, 16) else { return NonceUse::Replayed };
        let Ok(mut n) = self.inner.lock() else { return NonceUse::Full };
        while let Some(&(exp, old)) = n.order.front() {
            if exp > now_ms {
                break;
            }
            n.order.pop_front();
            if n.seen.get(&old).is_some_and(|e| *e <= now_ms) {
                n.seen.remove(&old);
            }
        }
        if n.seen.get(&nonce).is_some_and(|exp| *exp > now_ms) {
            return NonceUse::Replayed;
        }
        if n.seen.len() >= Self::CAPACITY {
            return NonceUse::Full;
        }
        n.seen.insert(nonce, expires_ms);
        n.order.push_back((expires_ms, nonce));
        NonceUse::Fresh
    }

    /// Nonces remembered now.
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |n| n.seen.len())
    }

    /// Whether no nonce is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Failures in the last minute per key, for at most `cap` keys; at most `limit` timestamps
/// are kept per key (enough to know it is over the limit).
struct Counts {
    map: HashMap<String, VecDeque<u64>>,
    cap: usize,
    last_sweep_ms: u64,
}

impl Counts {
    fn new(cap: usize) -> Self {
        Self { map: HashMap::new(), cap, last_sweep_ms: 0 }
    }

    fn recent(q: &mut VecDeque<u64>, now_ms: u64) -> usize {
        while q.front().is_some_and(|t| *t + 60_000 <= now_ms) {
            q.pop_front();
        }
        q.len()
    }

    fn is_limited(&mut self, key: &str, now_ms: u64, limit: u32) -> bool {
        self.map.get_mut(key).is_some_and(|q| Self::recent(q, now_ms) >= limit as usize)
    }

    /// Counts a failure of `key`; false when `key` went uncounted (too many sources).
    fn record(&mut self, key: &str, now_ms: u64, limit: u32) -> bool {
        if !self.map.contains_key(key) && self.map.len() >= self.cap {
            // Full: sweep out quiet sources, but at most once a second, so a flood of new
            // sources costs one scan a second, not one per request.
            if now_ms >= self.last_sweep_ms + 1000 {
                self.last_sweep_ms = now_ms;
                self.map.retain(|_, q| Self::recent(q, now_ms) > 0);
            }
            if self.map.len() >= self.cap {
                // More sources failing within a minute than we track: this one goes uncounted
                // (its requests still fail on their own defects).
                return false;
            }
        }
        let q = self.map.entry(key.to_owned()).or_default();
        q.push_back(now_ms);
        while q.len() > (limit as usize).max(1) {
            q.pop_front();
        }
        true
    }
}

/// Failed attempts per source address and per principal over the last minute (M4, M7). A
/// failure counts against a principal only once a signature verified with that principal's key;
/// before that it counts against the address alone. An address over its limit is refused for
/// anything but a registered principal's certificate, which is judged on its signature: a
/// station behind the same NAT as an attacker keeps working.
///
/// On a registry several instances share ([`FailureLimiter::shared`]), failures are also
/// handed to the registry on a poll ([`FailureLimiter::share`]) and the sources that reached the
/// limit over all instances come back: refused here as if counted here. The request path never
/// reads the registry for this.
pub struct FailureLimiter {
    addresses: Mutex<Counts>,
    principals: Mutex<Counts>,
    /// `Some` on a shared registry.
    shared: Option<Mutex<SharedFailures>>,
}

/// Failures not yet handed to the shared registry, and the sources it last said are blocked.
#[derive(Default)]
struct SharedFailures {
    pending: HashMap<(FailureKind, String), u32>,
    blocked_addresses: HashSet<String>,
    blocked_principals: HashSet<String>,
}

impl Default for FailureLimiter {
    fn default() -> Self {
        Self {
            addresses: Mutex::new(Counts::new(Self::CAPACITY)),
            principals: Mutex::new(Counts::new(Self::CAPACITY)),
            shared: None,
        }
    }
}

impl FailureLimiter {
    /// Sources tracked at most, per kind.
    pub const CAPACITY: usize = 65_536;

    /// A limiter whose counts are shared through the registry (see [`FailureLimiter::share`]).
    pub fn shared() -> Self {
        Self { shared: Some(Mutex::default()), ..Self::default() }
    }

    fn shared_blocked(&self, kind: FailureKind, source: &str) -> bool {
        let Some(shared) = &self.shared else { return false };
        shared.lock().map_or(true, |s| match kind {
            FailureKind::Address => s.blocked_addresses.contains(source),
            FailureKind::Principal => s.blocked_principals.contains(source),
        })
    }

    fn address_limited(&self, peer: &str, now_ms: u64, limit: u32) -> bool {
        self.addresses.lock().map_or(true, |mut c| c.is_limited(peer, now_ms, limit))
            || self.shared_blocked(FailureKind::Address, peer)
    }

    fn principal_limited(&self, name: &str, now_ms: u64, limit: u32) -> bool {
        self.principals.lock().map_or(true, |mut c| c.is_limited(name, now_ms, limit))
            || self.shared_blocked(FailureKind::Principal, name)
    }

    fn record_shared(&self, kind: FailureKind, source: &str) {
        let Some(shared) = &self.shared else { return };
        if let Ok(mut s) = shared.lock() {
            let key = (kind, source.to_owned());
            // Bounded like the local counts: beyond that many sources a poll, one goes unshared.
            if s.pending.len() < Self::CAPACITY || s.pending.contains_key(&key) {
                *s.pending.entry(key).or_default() += 1;
            }
        }
    }

    /// Counts one failure from `peer` before any signature verified.
    pub fn record_address(&self, peer: &str, now_ms: u64, limit: u32) {
        // Only sources counted here are shared: the shared table then grows no faster than
        // the local counts (at most CAPACITY new sources a minute per instance).
        if self.addresses.lock().is_ok_and(|mut c| c.record(peer, now_ms, limit)) {
            self.record_shared(FailureKind::Address, peer);
        }
    }

    fn record_principal(&self, name: &str, now_ms: u64, limit: u32) {
        if self.principals.lock().is_ok_and(|mut c| c.record(name, now_ms, limit)) {
            self.record_shared(FailureKind::Principal, name);
        }
    }

    /// Hands the failures counted since the last call to the shared registry and takes the
    /// sources blocked over all instances (run on a poll, blocking). When the registry cannot
    /// be reached the counts are kept for the next poll and the last blocked set stays.
    /// Returns how many sources are blocked; a limiter that is not shared does nothing.
    pub fn share(&self, registry: &Registry, limit: u32) -> Result<usize, registry::RegistryError> {
        let Some(shared) = &self.shared else { return Ok(0) };
        let pending: Vec<(FailureKind, String, u32)> = match shared.lock() {
            Ok(mut s) => s.pending.drain().map(|((k, src), n)| (k, src, n)).collect(),
            Err(_) => return Ok(0),
        };
        match registry.share_auth_failures(&pending, limit) {
            Ok(blocked) => {
                let n = blocked.len();
                if let Ok(mut s) = shared.lock() {
                    s.blocked_addresses.clear();
                    s.blocked_principals.clear();
                    for (kind, source) in blocked.into_iter().take(registry::FAILURE_BLOCKED_MAX) {
                        match kind {
                            FailureKind::Address => s.blocked_addresses.insert(source),
                            FailureKind::Principal => s.blocked_principals.insert(source),
                        };
                    }
                }
                Ok(n)
            }
            Err(e) => {
                if let Ok(mut s) = shared.lock() {
                    for (k, src, n) in pending {
                        if s.pending.len() < Self::CAPACITY || s.pending.contains_key(&(k, src.clone())) {
                            *s.pending.entry((k, src)).or_default() += n;
                        }
                    }
                }
                Err(e)
            }
        }
    }

    /// Sources whose failures wait for the next [`FailureLimiter::share`] (0 when not shared).
    pub fn unshared(&self) -> usize {
        self.shared.as_ref().and_then(|s| s.lock().ok()).map_or(0, |s| s.pending.len())
    }

    /// Sources tracked now: (addresses, principals).
    pub fn tracked(&self) -> (usize, usize) {
        let n = |m: &Mutex<Counts>| m.lock().map_or(0, |c| c.map.len());
        (n(&self.addresses), n(&self.principals))
    }
}

/// What is kept of a principal's certificate once its chain was validated, by SM3 of its DER:
/// the chain's two SM2 verifications, the parsing and the key's multiples (for the request
/// signature) are not repeated. Revocation and principal state are still checked on every request.
#[derive(Clone)]
struct ValidatedCert {
    not_after: SystemTime,
    serial_hex: String,
    key: Sm2PublicKey,
}

/// Registered principals' certificates already validated (see [`ValidatedCert`]), at most
/// [`ValidatedCerts::CAPACITY`]: each holds its key's multiples (~90 KB). A certificate enters
/// only when it is byte for byte one the registry holds for a principal, so forged or foreign
/// certificates never displace principals.
#[derive(Default)]
pub struct ValidatedCerts {
    seen: Mutex<HashMap<[u8; 32], ValidatedCert>>,
}

impl ValidatedCerts {
    /// More principals than this and the cache starts again (principals are stations and staff:
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

    /// Certificates held now.
    pub fn len(&self) -> usize {
        self.seen.lock().map_or(0, |m| m.len())
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `cert_der` is held.
    pub fn contains(&self, cert_der: &[u8]) -> bool {
        let fingerprint: [u8; 32] = sm3::Sm3::digest(cert_der).into();
        self.seen.lock().is_ok_and(|m| m.contains_key(&fingerprint))
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

/// Everything [`Gate::authenticate`] needs besides the request.
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

/// A refused request: why, and the principal whose key signed it (none when the refusal came
/// before a signature verified, so it counts against the address alone).
#[derive(Debug)]
pub struct Refused {
    /// Why.
    pub failure: AuthFailure,
    /// The principal it counted against.
    pub principal: Option<String>,
}

/// A request whose signature verified with a principal's key.
struct Signed {
    known: KnownCert,
    serial: String,
    nonce_hex: String,
    time_ms: u64,
}

impl<D: Directory> Gate<'_, D> {
    /// Authenticates and authorises one request. `peer` is the caller's address. A failure
    /// before the signature verified counts against `peer`; after, against the principal.
    pub fn authenticate(
        &self,
        headers: Result<SignedHeaders, HeaderError>,
        method: &str,
        body: &[u8],
        peer: &str,
        now: SystemTime,
    ) -> Result<Caller, AuthFailure> {
        self.authenticate_from(headers, method, body, peer, now).map_err(|r| r.failure)
    }

    /// [`Gate::authenticate`], saying on refusal whom it counted against.
    pub fn authenticate_from(
        &self,
        headers: Result<SignedHeaders, HeaderError>,
        method: &str,
        body: &[u8],
        peer: &str,
        now: SystemTime,
    ) -> Result<Caller, Refused> {
        let now_ms = unix_ms(now);
        let limit = self.roles.failures_per_minute;
        let signed = self.verify_signature(headers, method, body, peer, now, now_ms).map_err(|failure| {
            if failure.counts_against_caller() {
                self.limiter.record_address(peer, now_ms, limit);
            }
            Refused { failure, principal: None }
        })?;
        let name = signed.known.principal.name.clone();
        self.admit(signed, method, now_ms).map_err(|failure| {
            if failure.counts_against_caller() {
                self.limiter.record_principal(&name, now_ms, limit);
            }
            Refused { failure, principal: Some(name) }
        })
    }

    /// The principal's certificate exactly as issued (validated once, then cached), the time
    /// window, and the signature.
    fn verify_signature(
        &self,
        headers: Result<SignedHeaders, HeaderError>,
        method: &str,
        body: &[u8],
        peer: &str,
        now: SystemTime,
        now_ms: u64,
    ) -> Result<Signed, AuthFailure> {
        let limited = self.limiter.address_limited(peer, now_ms, self.roles.failures_per_minute);
        let refuse = |f: AuthFailure| if limited { AuthFailure::RateLimited(peer.to_owned()) } else { f };
        let h = headers.map_err(|e| refuse(e.into()))?;
        let (v, known) = self.principal_cert(&h.cert_der, now).map_err(refuse)?;
        let skew_ms = h.time_ms as i64 - now_ms as i64;
        let allowed = self.roles.clock_skew;
        if skew_ms.unsigned_abs() > allowed.as_millis() as u64 {
            return Err(AuthFailure::Stale { skew_s: skew_ms / 1000, allowed_s: allowed.as_secs() });
        }
        if h.time_ms < self.nonces.started_ms() {
            return Err(AuthFailure::BeforeStart);
        }
        v.key
            .verify(&self.trust.signer_id, &canonical(method, h.time_ms, &h.nonce_hex, body), &h.signature_der)
            .map_err(|e| AuthFailure::BadSignature(e.to_string()))?;
        Ok(Signed { known, serial: v.serial_hex, nonce_hex: h.nonce_hex, time_ms: h.time_ms })
    }

    /// A principal's certificate: byte for byte one the registry holds for a principal, and
    /// (once) chained to our issuing CA and current.
    fn principal_cert(&self, cert_der: &[u8], now: SystemTime) -> Result<(ValidatedCert, KnownCert), AuthFailure> {
        let fingerprint: [u8; 32] = sm3::Sm3::digest(cert_der).into();
        if let Some(v) = self.validated.get(&fingerprint, now) {
            let known = self
                .directory
                .principal_for_cert(&v.serial_hex)
                .map_err(AuthFailure::Unavailable)?
                .ok_or_else(|| AuthFailure::CertInvalid("not the certificate of a principal of this CA".into()))?;
            return Ok((v, known));
        }
        let cert =
            Certificate::from_der(cert_der).map_err(|e| AuthFailure::CertInvalid(format!("not a certificate: {e}")))?;
        let serial_hex = pki::CertSerial::of(&cert)
            .ok_or_else(|| AuthFailure::CertInvalid("serial is not a positive integer".into()))?
            .to_hex();
        let known = self
            .directory
            .principal_for_cert(&serial_hex)
            .map_err(AuthFailure::Unavailable)?
            .filter(|k| k.der == cert_der)
            .ok_or_else(|| AuthFailure::CertInvalid("not the certificate of a principal of this CA".into()))?;
        validate_chain(&cert, std::slice::from_ref(&self.trust.issuing), &self.trust.root, now, &self.trust.signer_id)
            .map_err(|e| AuthFailure::CertInvalid(e.to_string()))?;
        if cert.tbs_certificate().issuer() != self.trust.issuing.tbs_certificate().subject() {
            return Err(AuthFailure::CertInvalid("not issued by our issuing CA".into()));
        }
        let key = Sm2PublicKey::from_spki(cert.tbs_certificate().subject_public_key_info())
            .map_err(|e| AuthFailure::CertInvalid(e.to_string()))?
            .precomputed();
        let not_after = pki::time::from_x509(&cert.tbs_certificate().validity().not_after);
        let v = ValidatedCert { not_after, serial_hex, key };
        self.validated.remember(fingerprint, v.clone());
        Ok((v, known))
    }

    /// What a principal whose signature verified may do now.
    fn admit(&self, s: Signed, method: &str, now_ms: u64) -> Result<Caller, AuthFailure> {
        let p = s.known.principal;
        if self.limiter.principal_limited(&p.name, now_ms, self.roles.failures_per_minute) {
            return Err(AuthFailure::RateLimited(p.name));
        }
        if s.known.revoked {
            return Err(AuthFailure::Revoked(s.serial));
        }
        if !p.enabled {
            return Err(AuthFailure::Disabled(s.serial));
        }
        if let Some(approval) = p.pending_approval {
            return Err(AuthFailure::PendingApproval { name: p.name, approval });
        }
        // Remembered while the request's time is within the window; only a correctly signed
        // request spends a nonce.
        let expires = s.time_ms + self.roles.clock_skew.as_millis() as u64;
        match self.nonces.insert(&s.nonce_hex, now_ms, expires.max(now_ms + 1)) {
            NonceUse::Fresh => {}
            NonceUse::Replayed => return Err(AuthFailure::Replayed),
            NonceUse::Full => return Err(AuthFailure::RateLimited("the replay cache (full)".into())),
        }
        if !self
            .directory
            .spend_shared_nonce(s.nonce_hex.as_bytes(), now_ms, expires.max(now_ms + 1))
            .map_err(AuthFailure::Unavailable)?
        {
            return Err(AuthFailure::Replayed);
        }
        if !self.roles.allows(&p.role, method) {
            let missing_line = self.roles.missing_line(method).map(str::to_owned);
            return Err(AuthFailure::Forbidden { role: p.role, method: method.to_owned(), missing_line });
        }
        Ok(Caller { name: p.name, role: p.role, manufacturers: p.manufacturers, cert_serial: s.serial })
    }
}
