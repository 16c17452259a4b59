//! The RFC 6960 responder at the AIA URL (DESIGN §7). Answers are pre-signed and cached per
//! certificate and CertID shape, so a status query costs a hash lookup, not a signature; an
//! answer is re-signed when its certificate is revoked (before the revocation is acknowledged)
//! and before its `nextUpdate`. A request with a nonce gets a fresh signature (the nonce must be
//! echoed, RFC 8954).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use pki::ocsp::{
    CertId, CertStatus, IssuerHashes, OcspResponseStatus, ResponseRequest, SingleResponse, build_response_tbs,
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
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    serial: Vec<u8>,
    hash: String,
    null_params: bool,
}

struct Cached {
    der: Arc<Vec<u8>>,
    refresh_at: SystemTime,
    cert_id: CertId,
}

/// The responder.
pub struct Responder {
    key: RwLock<Arc<ResponderKey>>,
    public: RwLock<Sm2PublicKey>,
    issuer: IssuerHashes,
    validity: Duration,
    cache: RwLock<HashMap<Key, Cached>>,
    /// Bumped by every refresh: an answer signed from a registry read older than the last
    /// refresh is served once but not cached (it may predate a revocation).
    epoch: AtomicU64,
}

/// What a request came to.
pub struct Answer {
    /// The DER `OCSPResponse`.
    pub der: Arc<Vec<u8>>,
    /// Whether it came from the cache.
    pub cached: bool,
    /// For `Cache-Control` on GET: how long it stays fresh.
    pub max_age: Option<Duration>,
}

impl Responder {
    /// A responder for certificates of `issuing`, answers valid for `validity`.
    pub fn new(key: ResponderKey, issuing: &Certificate, validity: Duration) -> anyhow::Result<Self> {
        let public = Sm2PublicKey::from_spki(key.certificate.tbs_certificate().subject_public_key_info())?;
        if key.signer.public_key() != *key.certificate.tbs_certificate().subject_public_key_info() {
            anyhow::bail!("the OCSP signing key in the HSM is not the key of its certificate");
        }
        Ok(Self {
            key: RwLock::new(Arc::new(key)),
            public: RwLock::new(public),
            issuer: IssuerHashes::new(issuing)?,
            validity,
            cache: RwLock::default(),
            epoch: AtomicU64::new(0),
        })
    }

    /// Answers a DER request. Never fails: malformed requests get `malformedRequest`, requests
    /// about another CA's certificates `unauthorized`, internal failures `internalError`.
    pub fn respond(&self, registry: &Registry, request: &[u8]) -> Answer {
        let req = match parse_request(request) {
            Ok(r) => r,
            Err(_) => return unsigned(OcspResponseStatus::MalformedRequest),
        };
        self.answer(registry, &req)
    }

    /// Answers a parsed request.
    pub fn answer(&self, registry: &Registry, req: &pki::ocsp::OcspRequest) -> Answer {
        if req.cert_ids.is_empty() {
            return unsigned(OcspResponseStatus::MalformedRequest);
        }
        if !req.cert_ids.iter().all(|id| self.issuer.matches(id)) {
            return unsigned(OcspResponseStatus::Unauthorized);
        }
        if let ([id], None) = (req.cert_ids.as_slice(), &req.nonce) {
            let key = key_of(id);
            let now = SystemTime::now();
            let hit = self.cache.read().ok().and_then(|c| c.get(&key).map(|c| (c.der.clone(), c.refresh_at)));
            if let Some((der, refresh_at)) = hit.filter(|(_, r)| *r > now) {
                return Answer { der, cached: true, max_age: refresh_at.duration_since(now).ok() };
            }
            let epoch = self.epoch.load(Ordering::SeqCst);
            return match self.sign(registry, std::slice::from_ref(id), None) {
                Ok(der) => {
                    let der = Arc::new(der);
                    let refresh_at = now + self.validity / 2;
                    if let (Ok(mut c), true) = (self.cache.write(), self.epoch.load(Ordering::SeqCst) == epoch) {
                        c.insert(key, Cached { der: der.clone(), refresh_at, cert_id: id.clone() });
                    }
                    Answer { der, cached: false, max_age: Some(self.validity / 2) }
                }
                Err(e) => {
                    tracing::error!(error = %e, "signing an OCSP response failed");
                    unsigned(OcspResponseStatus::InternalError)
                }
            };
        }
        match self.sign(registry, &req.cert_ids, req.nonce.as_deref()) {
            Ok(der) => Answer { der: Arc::new(der), cached: false, max_age: None },
            Err(e) => {
                tracing::error!(error = %e, "signing an OCSP response failed");
                unsigned(OcspResponseStatus::InternalError)
            }
        }
    }

    /// Re-signs the cached answers about `serial` (hex), now: called after its status changed
    /// and before the change is acknowledged, so the next query already sees it.
    pub fn refresh(&self, registry: &Registry, serial_hex: &str) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let Some(serial) = pki::CertSerial::from_hex(serial_hex) else { return };
        let ids: Vec<CertId> = self
            .cache
            .read()
            .map(|c| c.values().filter(|v| v.cert_id.serial == serial.as_bytes()).map(|v| v.cert_id.clone()).collect())
            .unwrap_or_default();
        for id in ids {
            self.resign(registry, &id);
        }
    }

    /// Re-signs every cached answer that is due (half its validity gone).
    pub fn refresh_due(&self, registry: &Registry) -> usize {
        let now = SystemTime::now();
        let due: Vec<CertId> = self
            .cache
            .read()
            .map(|c| c.values().filter(|v| v.refresh_at <= now).map(|v| v.cert_id.clone()).collect())
            .unwrap_or_default();
        for id in &due {
            self.resign(registry, id);
        }
        due.len()
    }

    /// The current responder key and certificate.
    pub fn key(&self) -> Option<Arc<ResponderKey>> {
        self.key.read().ok().map(|k| k.clone())
    }

    /// Switches to a renewed responder certificate (same or new key); cached answers are dropped
    /// so that none names the old certificate.
    pub fn replace_key(&self, key: ResponderKey) -> anyhow::Result<()> {
        let public = Sm2PublicKey::from_spki(key.certificate.tbs_certificate().subject_public_key_info())?;
        if let (Ok(mut k), Ok(mut p), Ok(mut c)) = (self.key.write(), self.public.write(), self.cache.write()) {
            *k = Arc::new(key);
            *p = public;
            c.clear();
        }
        self.epoch.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Cached answers.
    pub fn cached(&self) -> usize {
        self.cache.read().map_or(0, |c| c.len())
    }

    fn resign(&self, registry: &Registry, id: &CertId) {
        match self.sign(registry, std::slice::from_ref(id), None) {
            Ok(der) => {
                if let Ok(mut c) = self.cache.write() {
                    let refresh_at = SystemTime::now() + self.validity / 2;
                    c.insert(key_of(id), Cached { der: Arc::new(der), refresh_at, cert_id: id.clone() });
                }
            }
            Err(e) => {
                // A stale answer must not outlive a revocation: drop it, the next query signs.
                tracing::error!(error = %e, "re-signing an OCSP response failed");
                if let Ok(mut c) = self.cache.write() {
                    c.remove(&key_of(id));
                }
            }
        }
    }

    fn sign(&self, registry: &Registry, ids: &[CertId], nonce: Option<&[u8]>) -> anyhow::Result<Vec<u8>> {
        let now = SystemTime::now();
        let mut responses = Vec::with_capacity(ids.len());
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
            responses.push(SingleResponse {
                cert_id: id.clone(),
                status,
                this_update: now,
                next_update: Some(now + self.validity),
            });
        }
        let key = self.key().ok_or_else(|| anyhow::anyhow!("responder key lock poisoned"))?;
        let public = self.public.read().map_err(|_| anyhow::anyhow!("lock poisoned"))?.clone();
        let certs = if key.delegated { vec![key.certificate.clone()] } else { Vec::new() };
        let req = ResponseRequest {
            responder: &key.certificate,
            produced_at: now,
            responses: &responses,
            nonce,
            certs: &certs,
        };
        let tbs = build_response_tbs(&req)?;
        let sig = key.signer.sign(tbs.to_be_signed())?;
        Ok(tbs.assemble(sig.as_der(), &public, key.signer.signer_id())?)
    }
}

fn key_of(id: &CertId) -> Key {
    Key { serial: id.serial.clone(), hash: id.hash_algorithm.to_string(), null_params: id.hash_parameters_null }
}

fn unsigned(status: OcspResponseStatus) -> Answer {
    Answer { der: Arc::new(error_response(status)), cached: false, max_age: None }
}
