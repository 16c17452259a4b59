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
    /// before that refresh is served once but not cached (it may predate the revocation), nor is
    /// an earlier refresh's. Checked under the cache write lock (order: cache, then marks).
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
                    None => Plan::Sign(Work { ids: req.cert_ids, nonce: None }),
                };
            }
        } else if !self.spend() {
            return Plan::Ready(unsigned(OcspResponseStatus::TryLater));
        }
        Plan::Sign(Work { ids: req.cert_ids, nonce: Some(req.nonce) })
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
        let Work { ids, nonce } = work;
        let Some(nonce) = nonce else {
            // A pre-signed answer not in the cache (only single-certificate requests get here).
            return match ids.first() {
                Some(id) => self.presign(registry, id),
                None => unsigned(OcspResponseStatus::MalformedRequest),
            };
        };
        // Only this process changes this registry, and it re-signs the cache before any change is
        // acknowledged: the cached status is the registry's, without a read transaction. Looked
        // up after `now`, so it holds every change acknowledged before the thisUpdate it gets.
        // Other instances sharing a registry are heard of by polling: there, read it.
        let now = SystemTime::now();
        let cached_status = match ids.as_slice() {
            [id] if !registry.is_shared() => self.cached_status(id),
            _ => None,
        };
        let signed = match (cached_status, ids.as_slice()) {
            (Some(status), [id]) => self.sign_responses(&[self.single_response(id, status, now)], nonce.as_deref()),
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

    /// Caches an answer signed from a registry read that began at `epoch`, unless a refresh of
    /// its serial began since. The marks are checked under the cache write lock: a refresh that
    /// marks the serial after the check scans the cache after the insert, so it re-signs it.
    fn insert_unless_refreshed(&self, id: &CertId, der: Bytes, status: CertStatus, epoch: u64) {
        let Ok(mut c) = self.cache.write() else { return };
        let refreshed_since = self.marks.lock().map_or(true, |m| m.get(&id.serial).is_some_and(|m| *m > epoch));
        #[cfg(test)]
        tests::hook(tests::Point::PresignInsert);
        if refreshed_since {
            return;
        }
        let refresh_at = SystemTime::now() + self.validity / 2;
        let used = std::sync::atomic::AtomicBool::new(false);
        c.insert(key_of(id), Cached { der, refresh_at, cert_id: id.clone(), status, used });
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
                    #[cfg(test)]
                    tests::hook(tests::Point::RefreshInsert);
                    // Lock order cache, then marks (as the insert above): a later refresh of this
                    // serial read the registry later, its answer stays.
                    if let Ok(mut c) = self.cache.write()
                        && self.marks.lock().is_ok_and(|m| m.get(serial.as_bytes()) == Some(&epoch))
                    {
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

#[cfg(test)]
#[path = "../../pki/tests/support/mod.rs"]
mod support;

#[cfg(test)]
mod tests {
    //! Races between a cache insert and a refresh, made deterministic by a hook that runs the
    //! competing refresh at the worst moment.

    use std::cell::RefCell;
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::time::{Duration, SystemTime};

    use pki::CertSerial;
    use pki::ocsp::{CertIdHash, CertStatus, IssuerHashes, build_request, parse_request};
    use registry::{AuditEvent, CertSubject, Registry, RevocationReason, TerminalIssue, TerminalRecord, TerminalState};

    use super::support;
    use super::{Responder, ResponderKey};
    use crate::records::new_cert_record;

    /// Where in the responder a hook runs.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub(super) enum Point {
        /// A cache miss's answer is signed; its "refreshed since?" check is done, its insert not.
        PresignInsert,
        /// A refresh's answer is signed, not yet inserted.
        RefreshInsert,
    }

    type Hook = (Point, Box<dyn FnOnce()>);

    thread_local! {
        // Per thread: only the test's own thread runs it, never the refresh it starts.
        static HOOK: RefCell<Option<Hook>> = const { RefCell::new(None) };
    }

    /// Runs (once) the hook set for `point` on this thread.
    pub(super) fn hook(point: Point) {
        let f = HOOK.with(|h| {
            let mut h = h.borrow_mut();
            if h.as_ref().is_some_and(|(p, _)| *p == point) { h.take().map(|(_, f)| f) } else { None }
        });
        if let Some(f) = f {
            f();
        }
    }

    fn set_hook(point: Point, f: impl FnOnce() + 'static) {
        HOOK.with(|h| *h.borrow_mut() = Some((point, Box::new(f))));
    }

    fn ev() -> AuditEvent {
        AuditEvent {
            time_ms: 1,
            actor: "test".into(),
            action: "x".into(),
            target: "y".into(),
            outcome: "ok".into(),
            detail: String::new(),
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        reg: Arc<Registry>,
        responder: Arc<Responder>,
        issuing: support::Ca,
        cert: pki::Certificate,
        serial_hex: String,
    }

    /// A redb registry holding one good terminal certificate, and its responder.
    fn fixture() -> Fixture {
        let policy = support::policy();
        let now = SystemTime::now();
        let root = support::make_root(&policy, now);
        let issuing = support::make_issuing(&policy, &root, now);
        let (responder_cert, responder_key) = support::make_ocsp_signer(&policy, &issuing, now);
        let serial = "HSTM01261100000K";
        let terminal_key = support::key();
        let vars = support::terminal_vars(serial, "II");
        let cert = support::issue(&policy, "terminal", &vars, terminal_key.sm2_public_key(), &issuing, now);
        let dir = tempfile::tempdir().expect("tmp");
        let reg = Registry::open(&dir.path().join("r.redb")).expect("registry");
        let rec =
            new_cert_record(&cert, CertSubject::Terminal { serial: serial.into() }, "terminal", "r1").expect("rec");
        let issue = TerminalIssue {
            request_id: "r1".into(),
            request_hash: "h".into(),
            terminal: TerminalRecord {
                serial: serial.into(),
                class: "II".into(),
                manufacturer: "HSTM".into(),
                model: "01".into(),
                lot: None,
                state: TerminalState::Registered,
                active_cert: None,
                updated_ms: 0,
            },
            register_if_missing: true,
            reissue: false,
            station: "station-1".into(),
            cert: rec.clone(),
            der: der::Encode::to_der(&cert).expect("der"),
        };
        reg.record_terminal_issue(&issue, &ev()).expect("record");
        let key = ResponderKey { signer: Arc::new(responder_key), certificate: responder_cert, delegated: true };
        let responder = Responder::new(key, &issuing.cert, Duration::from_secs(3600)).expect("responder");
        Fixture { _dir: dir, reg: Arc::new(reg), responder: Arc::new(responder), issuing, cert, serial_hex: rec.serial }
    }

    impl Fixture {
        /// A request about the certificate, without a nonce.
        fn request(&self) -> Vec<u8> {
            let hashes = IssuerHashes::new(&self.issuing.cert).expect("hashes");
            let serial = CertSerial::of(&self.cert).expect("serial");
            build_request(&[hashes.cert_id(CertIdHash::Sha1, &serial)], None).expect("request")
        }

        /// A request about the certificate with `nonce`.
        fn request_with_nonce(&self, nonce: &[u8]) -> Vec<u8> {
            let hashes = IssuerHashes::new(&self.issuing.cert).expect("hashes");
            let serial = CertSerial::of(&self.cert).expect("serial");
            build_request(&[hashes.cert_id(CertIdHash::Sha1, &serial)], Some(nonce)).expect("request")
        }

        /// What the cache now answers about the certificate (`None`: nothing cached).
        fn cached_status(&self) -> Option<CertStatus> {
            let req = parse_request(&self.request()).expect("parse");
            let answer = self.responder.cached_answer(&req.cert_ids[0])?;
            let v = pki::ocsp::verify_response(
                &answer.der,
                &self.issuing.cert,
                &pki::SignerId::default(),
                SystemTime::now(),
            )
            .expect("verify");
            Some(v.responses[0].status)
        }

        /// Revokes the certificate, says so on `committed`, and refreshes the responder, as the
        /// revocation RPC does before it answers.
        fn revoke_and_refresh(&self, committed: Option<mpsc::Sender<()>>) -> impl FnOnce() + Send + 'static {
            let (reg, responder, serial) = (self.reg.clone(), self.responder.clone(), self.serial_hex.clone());
            move || {
                reg.revoke(&serial, RevocationReason::KeyCompromise, 5, Some(4), &ev()).expect("revoke");
                if let Some(tx) = committed {
                    tx.send(()).expect("the test waits");
                }
                responder.refresh(&reg, &serial);
            }
        }
    }

    /// F1 (a): a cache miss read "good" and signed it; the revocation commits and its refresh runs
    /// after the miss checked the refresh marks but before it inserted. Once the refresh is done
    /// (the RPC may answer), the cache must not hold "good". (It used to: the refresh found
    /// nothing to re-sign, then the stale answer was inserted and served for half its validity.)
    #[test]
    fn a_revocation_refreshed_during_a_miss_insert_leaves_no_good_answer_cached() {
        let f = fixture();
        let (committed_tx, committed_rx) = mpsc::channel();
        let revoke_and_refresh = f.revoke_and_refresh(Some(committed_tx));
        let refresh_thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>> = Default::default();
        let slot = refresh_thread.clone();
        set_hook(Point::PresignInsert, move || {
            let handle = std::thread::spawn(revoke_and_refresh);
            *slot.lock().expect("slot") = Some(handle);
            committed_rx.recv().expect("the revocation commits");
            // Lets the refresh get as far as it can: to its end where the insert takes no lock
            // before checking the marks; to the cache lock where the insert holds it.
            std::thread::sleep(Duration::from_millis(100));
        });
        let answer = f.responder.respond(&f.reg, &f.request());
        assert!(!answer.cached, "a miss, signed now");
        let handle = refresh_thread.lock().expect("slot").take().expect("the hook ran");
        handle.join().expect("refresh");
        assert!(
            matches!(f.cached_status(), Some(CertStatus::Revoked { .. }) | None),
            "after the acknowledged revocation the cache says {:?}",
            f.cached_status()
        );
    }

    /// F1 (b): two refreshes of one serial (an activation release, then a revocation), the
    /// earlier one's answer signed before the revocation but inserted after the later one's.
    /// The later (revoked) answer must stay. (It used to be overwritten with "good".)
    #[test]
    fn an_earlier_refresh_does_not_overwrite_a_later_one() {
        let f = fixture();
        let first = f.responder.respond(&f.reg, &f.request());
        assert!(!first.cached);
        assert_eq!(f.cached_status(), Some(CertStatus::Good));
        let revoke_and_refresh = f.revoke_and_refresh(None);
        set_hook(Point::RefreshInsert, move || {
            std::thread::spawn(revoke_and_refresh).join().expect("the later refresh");
        });
        // The earlier refresh: reads "good", then the later one runs to its end, then it inserts.
        f.responder.refresh(&f.reg, &f.serial_hex);
        assert!(
            matches!(f.cached_status(), Some(CertStatus::Revoked { .. }) | None),
            "after both refreshes the cache says {:?}",
            f.cached_status()
        );
    }

    /// F2: a nonce request planned before a revocation and signed after it was acknowledged
    /// states "revoked": its status is looked up when it is signed, not when it was planned.
    /// (It used to carry the status from the plan: "good", with a thisUpdate after the revocation.)
    #[test]
    fn a_nonce_answer_signed_after_an_acknowledged_revocation_says_revoked() {
        let f = fixture();
        f.responder.respond(&f.reg, &f.request());
        assert_eq!(f.cached_status(), Some(CertStatus::Good));
        let super::Plan::Sign(work) = f.responder.plan_der(&f.request_with_nonce(b"n1")) else {
            panic!("a nonce within the budget needs a signature");
        };
        f.revoke_and_refresh(None)();
        let acknowledged = SystemTime::now();
        let answer = f.responder.finish(&f.reg, work);
        let v = pki::ocsp::verify_response(&answer.der, &f.issuing.cert, &pki::SignerId::default(), SystemTime::now())
            .expect("verify");
        assert_eq!(v.nonce.as_deref(), Some(&b"n1"[..]));
        assert!(
            matches!(v.responses[0].status, CertStatus::Revoked { .. }),
            "signed after the revocation was acknowledged, it says {:?}",
            v.responses[0].status
        );
        assert!(v.responses[0].this_update + Duration::from_secs(1) >= acknowledged);
    }
}
