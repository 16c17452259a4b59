//! The RFC 6960 responder at the AIA URL (DESIGN §7). Answers are pre-signed and cached per
//! certificate and CertID shape, so a status query costs a hash lookup, not a signature; an
//! answer is re-signed when its certificate is revoked (before the revocation is acknowledged)
//! and before its `nextUpdate`. A request with a nonce gets a fresh signature echoing it within a
//! budget per second; past it, the pre-signed answer without the nonce (RFC 8954 §2.1).

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use pki::ocsp::{
    CertId, CertStatus, IssuerHashes, OcspRequest, OcspResponseStatus, PreparedResponder, SingleResponse,
    error_response, parse_request,
};
use pki::{Certificate, Sm2PublicKey};
use registry::Registry;

use crate::revocation::crl_reason;

/// The key and certificate that sign responses: the issuing CA itself, or a delegated
/// responder certificate (profile `ocsp-signer`).
pub struct ResponderKey {
    /// The HSM key.
    pub signer: Arc<dyn hsm::Signer>,
    /// Its certificate (the issuing CA's when the CA signs).
    pub certificate: Certificate,
    /// Whether it is a delegated responder (its certificate goes into each response).
    pub delegated: bool,
}

impl ResponderKey {
    /// When its certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.certificate.tbs_certificate().validity().not_after.to_system_time()
    }
}

/// Cache key: the certificate serial and the CertID exactly as the client shaped it.
/// Ordered serial first, so the answers about one certificate are one range of the cache.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    serial: Vec<u8>,
    hash: String,
    null_params: bool,
}

struct Cached {
    der: Bytes,
    refresh_at: SystemTime,
    cert_id: CertId,
    /// The status `der` states: as current as the registry's on a registry of this process only
    /// (every status change re-signs it before it is acknowledged, [`Responder::refresh`]).
    status: CertStatus,
    /// Asked for since it was signed: only such answers are re-signed when due.
    used: std::sync::atomic::AtomicBool,
}

/// Default of `[ocsp] fresh_signatures_per_second`: signatures per second the responder makes
/// for answers it cannot pre-sign (a nonce, a serial the CA never issued), so no client can make
/// it spend the HSM (or memory) at will. Beyond it a nonce is ignored (the pre-signed answer is
/// sent) and an unknown serial or a request about several certificates gets `tryLater`.
pub const UNCACHED_SIGNATURES_PER_SECOND: u32 = 500;

/// Default of [`Responder::with_refresh_scan_chunk`]: a few hundred µs of scanning per lock hold.
pub const REFRESH_SCAN_CHUNK: usize = 4096;

/// The responder.
pub struct Responder {
    /// The responder key with its public half (precomputed) and certificate checked and encoded
    /// once; swapped as one, so no answer mixes an old key with a new certificate.
    checked: RwLock<Arc<Checked>>,
    issuer: IssuerHashes,
    validity: Duration,
    cache: RwLock<BTreeMap<Key, Cached>>,
    /// Bumped by every refresh.
    epoch: AtomicU64,
    /// Serial → the epoch of its last refresh: an answer signed from a registry read that began
    /// before that refresh is served once but not cached (it may predate the revocation).
    marks: std::sync::Mutex<HashMap<Vec<u8>, u64>>,
    /// (window start, signatures in it), against `budget_per_second`.
    budget: std::sync::Mutex<(std::time::Instant, u32)>,
    budget_per_second: u32,
    nonces_ignored: AtomicU64,
    in_process: bool,
    /// [`Responder::with_refresh_scan_chunk`].
    scan_chunk: usize,
}

/// What answering a request needs ([`Responder::plan`]).
pub enum Plan {
    /// Answered from memory.
    Ready(Answer),
    /// A registry read and a signature: [`Responder::finish`].
    Sign(Work),
}

/// A request that needs a signature.
pub struct Work {
    ids: Vec<CertId>,
    /// `Some`: a fresh answer echoing this nonce (if any); `None`: the pre-signed answer.
    nonce: Option<Option<Vec<u8>>>,
    /// The status of `ids[0]` in the cache, if it has it.
    cached_status: Option<CertStatus>,
}

/// What every signature of a responder key reuses.
struct Checked {
    key: Arc<ResponderKey>,
    /// Every answer is checked against it before it leaves: precomputed, that costs a third.
    public: Sm2PublicKey,
    prepared: PreparedResponder,
}

impl Checked {
    fn of(key: ResponderKey) -> anyhow::Result<Self> {
        let public =
            Sm2PublicKey::from_spki(key.certificate.tbs_certificate().subject_public_key_info())?.precomputed();
        let certs = if key.delegated { std::slice::from_ref(&key.certificate) } else { &[] };
        let prepared = PreparedResponder::new(&key.certificate, certs)?.with_signer_id(key.signer.signer_id())?;
        Ok(Self { key: Arc::new(key), public, prepared })
    }
}

/// What a request came to.
pub struct Answer {
    /// The DER `OCSPResponse` (shared with the cache: no copy per answer).
    pub der: Bytes,
    /// Whether it came from the cache.
    pub cached: bool,
    /// For `Cache-Control` on GET: how long it stays fresh.
    pub max_age: Option<Duration>,
}

impl Responder {
    /// A responder for certificates of `issuing`, answers valid for `validity`.
    pub fn new(key: ResponderKey, issuing: &Certificate, validity: Duration) -> anyhow::Result<Self> {
        if key.signer.public_key() != *key.certificate.tbs_certificate().subject_public_key_info() {
            anyhow::bail!("the OCSP signing key in the HSM is not the key of its certificate");
        }
        let checked = Checked::of(key)?;
        Ok(Self {
            checked: RwLock::new(Arc::new(checked)),
            issuer: IssuerHashes::new(issuing)?,
            validity,
            cache: RwLock::default(),
            epoch: AtomicU64::new(0),
            marks: Default::default(),
            budget: std::sync::Mutex::new((std::time::Instant::now(), 0)),
            budget_per_second: UNCACHED_SIGNATURES_PER_SECOND,
            nonces_ignored: AtomicU64::new(0),
            in_process: false,
            scan_chunk: REFRESH_SCAN_CHUNK,
        })
    }

    /// Changes the budget of uncached signatures per second (default
    /// [`UNCACHED_SIGNATURES_PER_SECOND`]).
    pub fn with_uncached_budget(mut self, per_second: u32) -> Self {
        self.budget_per_second = per_second;
        self
    }

    /// Answers a DER request. Never fails: malformed requests get `malformedRequest`, requests
    /// about another CA's certificates `unauthorized`, internal failures `internalError`.
    pub fn respond(&self, registry: &Registry, request: &[u8]) -> Answer {
        match self.plan_der(request) {
            Plan::Ready(a) => a,
            Plan::Sign(work) => self.finish(registry, work),
        }
    }

    /// Answers a parsed request.
    pub fn answer(&self, registry: &Registry, req: &OcspRequest) -> Answer {
        match self.plan(req.clone()) {
            Plan::Ready(a) => a,
            Plan::Sign(work) => self.finish(registry, work),
        }
    }

    /// [`Responder::plan`] of a DER request.
    pub fn plan_der(&self, request: &[u8]) -> Plan {
        match parse_request(request) {
            Ok(r) => self.plan(r),
            Err(_) => Plan::Ready(unsigned(OcspResponseStatus::MalformedRequest)),
        }
    }

    /// What a request needs, deciding everything memory can: errors, pre-signed answers in the
    /// cache, a nonce ignored past the budget — none blocks, so an async caller answers these
    /// in place. The rest needs a registry read and a signature: [`Responder::finish`].
    pub fn plan(&self, req: OcspRequest) -> Plan {
        if req.cert_ids.is_empty() {
            return Plan::Ready(unsigned(OcspResponseStatus::MalformedRequest));
        }
        if !req.cert_ids.iter().all(|id| self.issuer.matches(id)) {
            return Plan::Ready(unsigned(OcspResponseStatus::Unauthorized));
        }
        if let [id] = req.cert_ids.as_slice() {
            // Past the budget a nonce is ignored (RFC 8954 §2.1 allows it): the client gets the
            // pre-signed answer, which stock clients accept with a warning, not `tryLater`.
            if req.nonce.is_none() || !self.spend() {
                if req.nonce.is_some() {
                    self.nonces_ignored.fetch_add(1, Ordering::Relaxed);
                }
                return match self.cached_answer(id) {
                    Some(a) => Plan::Ready(a),
                    None => Plan::Sign(Work { ids: req.cert_ids, nonce: None, cached_status: None }),
                };
            }
            let cached_status = self.cached_status(id);
            return Plan::Sign(Work { ids: req.cert_ids, nonce: Some(req.nonce), cached_status });
        } else if !self.spend() {
            return Plan::Ready(unsigned(OcspResponseStatus::TryLater));
        }
        Plan::Sign(Work { ids: req.cert_ids, nonce: Some(req.nonce), cached_status: None })
    }

    /// Whether [`Responder::finish`] may run on an async worker: the HSM signs in this
    /// process (the embedded softtoken, ~20 µs), so a thread hop would cost more than it spares,
    /// and it can sign now without backing off or logging in again (a PBKDF2 in the softtoken).
    pub fn signs_in_process(&self) -> bool {
        self.in_process && self.checked.read().is_ok_and(|c| c.key.signer.signs_without_waiting())
    }

    /// Declares that the HSM signs in this process ([`Responder::signs_in_process`]).
    pub fn with_in_process_signing(mut self, in_process: bool) -> Self {
        self.in_process = in_process;
        self
    }

    /// Does what [`Responder::plan`] left: reads the registry and signs. Blocking (HSM, registry).
    pub fn finish(&self, registry: &Registry, work: Work) -> Answer {
        let Work { ids, nonce, cached_status } = work;
        let Some(nonce) = nonce else {
            // A pre-signed answer not in the cache (only single-certificate requests get here).
            return match ids.first() {
                Some(id) => self.presign(registry, id),
                None => unsigned(OcspResponseStatus::MalformedRequest),
            };
        };
        let signed = match (cached_status, ids.as_slice()) {
            // Only this process changes this registry, and it re-signs the cache before any change
            // is acknowledged: the cached status is the registry's, without a read transaction.
            // Other instances sharing a registry are heard of by polling: there, read it.
            (Some(status), [id]) if !registry.is_shared() => {
                self.sign_responses(&[self.single_response(id, status, SystemTime::now())], nonce.as_deref())
            }
            _ => self
                .statuses(registry, &ids)
                .and_then(|(responses, _)| self.sign_responses(&responses, nonce.as_deref())),
        };
        match signed {
            Ok(der) => Answer { der: der.into(), cached: false, max_age: None },
            Err(e) => {
                tracing::error!(error = %e, "signing an OCSP response failed");
                unsigned(OcspResponseStatus::InternalError)
            }
        }
    }

    /// The cached answer about `id`, if there is one still fresh.
    fn cached_answer(&self, id: &CertId) -> Option<Answer> {
        let key = key_of(id);
        let now = SystemTime::now();
        let (der, refresh_at) = self.cache.read().ok().and_then(|c| {
            c.get(&key).filter(|c| c.refresh_at > now).map(|c| {
                c.used.store(true, Ordering::Relaxed);
                (c.der.clone(), c.refresh_at)
            })
        })?;
        Some(Answer { der, cached: true, max_age: refresh_at.duration_since(now).ok() })
    }

    /// The status the cached answer about `id` states, if there is one still fresh.
    fn cached_status(&self, id: &CertId) -> Option<CertStatus> {
        let key = key_of(id);
        let now = SystemTime::now();
        self.cache.read().ok().and_then(|c| c.get(&key).filter(|c| c.refresh_at > now).map(|c| c.status))
    }

    /// Signs and caches the answer about `id` (a cache miss).
    fn presign(&self, registry: &Registry, id: &CertId) -> Answer {
        // Another request may have signed it meanwhile.
        if let Some(a) = self.cached_answer(id) {
            return a;
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        let signed = self.statuses(registry, std::slice::from_ref(id)).and_then(|(responses, known)| {
            // A serial the CA never issued is answered but never cached, so each such answer
            // is a fresh signature: the budget is checked before signing, not after.
            if !known && !self.spend() {
                return Ok(None);
            }
            let status = responses.first().map(|r| r.status);
            self.sign_responses(&responses, None).map(|der| Some((der, status.filter(|_| known))))
        });
        match signed {
            Ok(Some((der, Some(status)))) => {
                let der = Bytes::from(der);
                self.insert_unless_refreshed(id, der.clone(), status, epoch);
                Answer { der, cached: false, max_age: Some(self.validity / 2) }
            }
            Ok(Some((der, None))) => Answer { der: der.into(), cached: false, max_age: None },
            Ok(None) => unsigned(OcspResponseStatus::TryLater),
            Err(e) => {
                tracing::error!(error = %e, "signing an OCSP response failed");
                unsigned(OcspResponseStatus::InternalError)
            }
        }
    }

    /// Nonces ignored because the budget was spent, since start.
    pub fn nonces_ignored(&self) -> u64 {
        self.nonces_ignored.load(Ordering::Relaxed)
    }

    /// Takes one uncached signature from this second's budget.
    fn spend(&self) -> bool {
        let Ok(mut b) = self.budget.lock() else { return false };
        if b.0.elapsed() >= Duration::from_secs(1) {
            *b = (std::time::Instant::now(), 0);
        }
        b.1 += 1;
        b.1 <= self.budget_per_second
    }

    fn insert_unless_refreshed(&self, id: &CertId, der: Bytes, status: CertStatus, epoch: u64) {
        let refreshed_since = self.marks.lock().map_or(true, |m| m.get(&id.serial).is_some_and(|m| *m > epoch));
        if refreshed_since {
            return;
        }
        if let Ok(mut c) = self.cache.write() {
            let refresh_at = SystemTime::now() + self.validity / 2;
            let used = std::sync::atomic::AtomicBool::new(false);
            c.insert(key_of(id), Cached { der, refresh_at, cert_id: id.clone(), status, used });
        }
    }

    /// Re-signs the cached answers about `serial` (hex), now: called after its status changed
    /// (committed) and before the change is acknowledged, so the next query already sees it.
    pub fn refresh(&self, registry: &Registry, serial_hex: &str) {
        let Some(serial) = pki::CertSerial::from_hex(serial_hex) else { return };
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        if let Ok(mut m) = self.marks.lock() {
            m.insert(serial.as_bytes().to_vec(), epoch);
        }
        // A range, not a scan: a bulk revocation refreshes many serials against a large cache.
        let from = Key { serial: serial.as_bytes().to_vec(), hash: String::new(), null_params: false };
        let ids: Vec<CertId> = self
            .cache
            .read()
            .map(|c| {
                c.range(from..)
                    .take_while(|(k, _)| k.serial == serial.as_bytes())
                    .map(|(_, v)| v.cert_id.clone())
                    .collect()
            })
            .unwrap_or_default();
        for id in ids {
            // This read follows the commit: its answer may replace anything cached.
            match self.sign(registry, std::array::from_ref(&id), None) {
                Ok((der, [status])) => {
                    if let Ok(mut c) = self.cache.write() {
                        let refresh_at = SystemTime::now() + self.validity / 2;
                        let used = std::sync::atomic::AtomicBool::new(true);
                        let cert_id = id.clone();
                        c.insert(key_of(&id), Cached { der: der.into(), refresh_at, cert_id, status, used });
                    }
                }
                Err(e) => {
                    // A stale answer must not outlive a revocation: drop it, the next query signs.
                    tracing::error!(error = %e, "re-signing an OCSP response failed");
                    if let Ok(mut c) = self.cache.write() {
                        c.remove(&key_of(&id));
                    }
                }
            }
        }
    }

    /// Past half their validity: re-signs the answers asked for since they were signed, drops
    /// the others (a certificate nobody asks about costs nothing). Returns how many were re-signed.
    pub fn refresh_due(&self, registry: &Registry) -> usize {
        let now = SystemTime::now();
        let mut due = Vec::new();
        let mut after: Option<Key> = None;
        // A chunk per lock hold: a writer queued behind the scan (which, on Linux, blocks every
        // new reader, cache hits on the async workers included) waits for one chunk, not the
        // whole cache.
        loop {
            let mut idle = Vec::new();
            let mut last = None;
            if let Ok(c) = self.cache.read() {
                let from = match &after {
                    Some(k) => Bound::Excluded(k),
                    None => Bound::Unbounded,
                };
                for (k, v) in c.range((from, Bound::Unbounded)).take(self.scan_chunk) {
                    last = Some(k.clone());
                    if v.refresh_at <= now {
                        let list = if v.used.load(Ordering::Relaxed) { &mut due } else { &mut idle };
                        list.push(v.cert_id.clone());
                    }
                }
            }
            if !idle.is_empty()
                && let Ok(mut c) = self.cache.write()
            {
                for id in &idle {
                    // Re-checked: a refresh or a hit since the read keeps it.
                    let key = key_of(id);
                    if c.get(&key).is_some_and(|v| v.refresh_at <= now && !v.used.load(Ordering::Relaxed)) {
                        c.remove(&key);
                    }
                }
            }
            match last {
                Some(k) => after = Some(k),
                None => break,
            }
        }
        for id in &due {
            let epoch = self.epoch.load(Ordering::SeqCst);
            match self.sign(registry, std::array::from_ref(id), None) {
                Ok((der, [status])) => self.insert_unless_refreshed(id, der.into(), status, epoch),
                Err(e) => tracing::error!(error = %e, "re-signing an OCSP response failed"),
            }
        }
        due.len()
    }

    /// How many cached answers [`Responder::refresh_due`] looks at per hold of the cache lock
    /// (default [`REFRESH_SCAN_CHUNK`]; at least 1).
    pub fn with_refresh_scan_chunk(mut self, entries: usize) -> Self {
        self.scan_chunk = entries.max(1);
        self
    }

    /// The current responder key and certificate.
    pub fn key(&self) -> Option<Arc<ResponderKey>> {
        self.checked.read().ok().map(|c| c.key.clone())
    }

    /// Switches to a renewed responder certificate (same or new key); cached answers are dropped
    /// so that none names the old certificate.
    pub fn replace_key(&self, key: ResponderKey) -> anyhow::Result<()> {
        let checked = Arc::new(Checked::of(key)?);
        if let (Ok(mut p), Ok(mut c)) = (self.checked.write(), self.cache.write()) {
            *p = checked;
            c.clear();
        }
        self.epoch.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Cached answers.
    pub fn cached(&self) -> usize {
        self.cache.read().map_or(0, |c| c.len())
    }

    /// Signs an answer for one certificate, `ids` (the cache's callers), and says its status.
    fn sign(
        &self,
        registry: &Registry,
        ids: &[CertId; 1],
        nonce: Option<&[u8]>,
    ) -> anyhow::Result<(Vec<u8>, [CertStatus; 1])> {
        let (responses, _) = self.statuses(registry, ids)?;
        let status = responses.first().map_or(CertStatus::Unknown, |r| r.status);
        Ok((self.sign_responses(&responses, nonce)?, [status]))
    }

    /// What the registry says of each of `ids`, and whether every one is a certificate the CA issued.
    fn statuses(&self, registry: &Registry, ids: &[CertId]) -> anyhow::Result<(Vec<SingleResponse>, bool)> {
        let now = SystemTime::now();
        let mut responses = Vec::with_capacity(ids.len());
        let mut known = true;
        for id in ids {
            let status = match id.cert_serial() {
                Some(serial) => match registry.certificate(&serial.to_hex())? {
                    Some((rec, _)) => match rec.status {
                        registry::CertStatus::Good => CertStatus::Good,
                        registry::CertStatus::Revoked { at_ms, reason, .. } => CertStatus::Revoked {
                            at: SystemTime::UNIX_EPOCH + Duration::from_millis(at_ms),
                            reason: Some(crl_reason(reason)),
                        },
                    },
                    None => CertStatus::Unknown,
                },
                None => CertStatus::Unknown,
            };
            known &= status != CertStatus::Unknown;
            responses.push(self.single_response(id, status, now));
        }
        Ok((responses, known))
    }

    fn single_response(&self, id: &CertId, status: CertStatus, now: SystemTime) -> SingleResponse {
        SingleResponse { cert_id: id.clone(), status, this_update: now, next_update: Some(now + self.validity) }
    }

    /// Signs the response holding `responses` (and `nonce`).
    fn sign_responses(&self, responses: &[SingleResponse], nonce: Option<&[u8]>) -> anyhow::Result<Vec<u8>> {
        let checked = self.checked.read().map_err(|_| anyhow::anyhow!("responder key lock poisoned"))?.clone();
        let now = responses.first().map_or_else(SystemTime::now, |r| r.this_update);
        let tbs = checked.prepared.build(now, responses, nonce)?;
        let sig = checked.key.signer.sign(tbs.to_be_signed())?;
        Ok(tbs.assemble(sig.as_der(), &checked.public, checked.key.signer.signer_id())?)
    }
}

fn key_of(id: &CertId) -> Key {
    Key { serial: id.serial.clone(), hash: id.hash_algorithm.to_string(), null_params: id.hash_parameters_null }
}

fn unsigned(status: OcspResponseStatus) -> Answer {
    Answer { der: error_response(status).into(), cached: false, max_age: None }
}
