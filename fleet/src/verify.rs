//! Checking one heartbeat before any rule sees it: it decodes, its certificate chains to our
//! issuing CA and names the terminal the body names, the SE signature verifies under the
//! certificate's key with the standard signer ID, and its time is current. Whether the CA
//! actually issued the certificate and has not revoked it is asked of the CA ([`crate::ca`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use der::Decode;
use pki::{Certificate, SignerId, Sm2PublicKey};
use prost::Message;
use proto::v1::{HeartbeatBody, HeartbeatRequest, PositionSource, Reason};
use sm3::Digest;
use tonic::Code;

/// Why a heartbeat was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The body, signature or certificate does not decode.
    #[error("malformed heartbeat: {0}")]
    Malformed(String),
    /// The certificate does not chain to our issuing CA.
    #[error("certificate not issued by our CA: {0}")]
    NotOurs(String),
    /// It chains, but the CA has no record of it (or it is not a terminal's).
    #[error("the CA has no terminal certificate {0}")]
    Unknown(String),
    /// Revoked or on hold.
    #[error("certificate {serial} is revoked ({reason})")]
    Revoked {
        /// Certificate serial.
        serial: String,
        /// Revocation reason.
        reason: String,
    },
    /// The signature does not verify under the certificate's key.
    #[error("signature does not verify under the certificate's key")]
    BadSignature,
    /// The certificate names another terminal than the body.
    #[error("the certificate is for {certificate}, the heartbeat says {body}")]
    WrongTerminal {
        /// What the certificate names.
        certificate: String,
        /// What the body says.
        body: String,
    },
    /// The heartbeat's time is too far from ours.
    #[error("heartbeat time is {skew_s}s from ours")]
    Stale {
        /// Seconds off.
        skew_s: i64,
    },
}

impl Refusal {
    /// The gRPC code and stable reason.
    pub fn status(&self) -> (Code, Reason) {
        match self {
            Self::Malformed(_) => (Code::InvalidArgument, Reason::HeartbeatMalformed),
            Self::NotOurs(_) => (Code::Unauthenticated, Reason::HeartbeatCertNotOurs),
            Self::Unknown(_) => (Code::Unauthenticated, Reason::HeartbeatCertUnknown),
            Self::Revoked { .. } => (Code::PermissionDenied, Reason::HeartbeatCertRevoked),
            Self::BadSignature => (Code::Unauthenticated, Reason::HeartbeatBadSignature),
            Self::WrongTerminal { .. } => (Code::Unauthenticated, Reason::HeartbeatWrongTerminal),
            Self::Stale { .. } => (Code::InvalidArgument, Reason::HeartbeatStale),
        }
    }

    /// Whether the counterfeit rule records it: everything but a stale time (old traffic played
    /// back is refused, and proves nothing about a device).
    pub fn is_counterfeit(&self) -> bool {
        !matches!(self, Self::Stale { .. })
    }

    /// The stable name used in metrics and evidence.
    pub fn name(&self) -> &'static str {
        self.status().1.as_str_name()
    }
}

/// Our issuing CA and root, and the SM2 signer ID terminals sign with.
pub struct Trust {
    /// The issuing CA certificate (validated to the root once, by [`Trust::new`]).
    pub issuing: Certificate,
    /// The pinned root.
    pub root: Certificate,
    /// Signer ID (GM/T 0009 default).
    pub signer_id: SignerId,
    /// The issuing CA's key with precomputed multiples: every terminal certificate is checked
    /// against it.
    issuing_key: Sm2PublicKey,
}

impl Trust {
    /// Validates `issuing` up to the pinned `root` now, once; terminal certificates are then
    /// checked against `issuing` alone.
    pub fn new(issuing: Certificate, root: Certificate, signer_id: SignerId) -> Result<Self, pki::ChainError> {
        pki::validate_chain(&issuing, &[], &root, SystemTime::now(), &signer_id)?;
        let issuing_key = Sm2PublicKey::from_spki(issuing.tbs_certificate().subject_public_key_info())
            .map_err(|e| pki::ChainError {
                depth: 0,
                subject: issuing.tbs_certificate().subject().to_string(),
                kind: pki::ChainErrorKind::IssuerKey(e),
            })?
            .precomputed();
        Ok(Self { issuing, root, signer_id, issuing_key })
    }
}

/// A certificate whose chain was validated, by SM3 of its DER: later heartbeats skip the two chain
/// verifications.
#[derive(Clone)]
struct KnownKey {
    key: Sm2PublicKey,
    serial: String,
    terminal_serial: String,
    class: String,
    not_after: SystemTime,
}

/// Validated terminal certificates (a key without precomputed tables is ~100 bytes, so a million
/// terminals fit). The first `precomputed` keys get their multiples precomputed (88 KB and ~2 ms
/// each, once): each of their heartbeats then verifies in about a third of the time.
#[derive(Default)]
pub struct KeyCache {
    keys: Mutex<HashMap<[u8; 32], KnownKey>>,
    precomputed: usize,
    tables: std::sync::atomic::AtomicUsize,
}

impl KeyCache {
    /// Entries at most; beyond, the cache starts again.
    pub const CAPACITY: usize = 2_000_000;

    /// A cache that precomputes the keys of the first `precomputed` certificates it validates.
    pub fn with_precomputed(precomputed: usize) -> Self {
        Self { precomputed, ..Self::default() }
    }

    /// How many keys carry precomputed multiples.
    pub fn precomputed_keys(&self) -> usize {
        self.tables.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A heartbeat that passed [`check`].
#[derive(Clone, Debug)]
pub struct Checked {
    /// The body.
    pub body: HeartbeatBody,
    /// Certificate serial (upper-case hex).
    pub certificate_serial: String,
    /// SM3 of the certificate DER (hex): names a counterfeit's certificate.
    pub certificate_sm3: String,
    /// SM3 of the signed body (hex).
    pub body_sm3: String,
    /// Terminal class from the certificate's OU (`Terminal Class II` → `II`), or empty.
    pub class: String,
}

/// SM3 of `bytes`, hex.
pub fn sm3_hex(bytes: &[u8]) -> String {
    hex::encode(sm3::Sm3::digest(bytes))
}

/// The certificate's SM3 and serial as far as they can be read, for a refusal's evidence.
pub fn certificate_names(der: &[u8]) -> (String, String) {
    let serial = Certificate::from_der(der).ok().and_then(|c| pki::CertSerial::of(&c)).map(|s| s.to_hex());
    (if der.is_empty() { String::new() } else { sm3_hex(der) }, serial.unwrap_or_default())
}

/// Position source as a lower-case name.
pub fn source_name(code: i32) -> String {
    match PositionSource::try_from(code) {
        Ok(PositionSource::Gnss) => "gnss",
        Ok(PositionSource::BaseStation) => "base_station",
        Ok(PositionSource::OperatorEntered) => "operator_entered",
        _ => "unspecified",
    }
    .into()
}

/// Decodes and checks one heartbeat at `now`.
pub fn check(
    trust: &Trust,
    cache: &KeyCache,
    req: &HeartbeatRequest,
    now: SystemTime,
    clock_skew: std::time::Duration,
) -> Result<Checked, Refusal> {
    let body = HeartbeatBody::decode(req.body.as_slice()).map_err(|e| Refusal::Malformed(format!("body: {e}")))?;
    let fingerprint: [u8; 32] = sm3::Sm3::digest(&req.certificate_der).into();
    let cached = cache.keys.lock().ok().and_then(|m| m.get(&fingerprint).cloned()).filter(|k| now <= k.not_after);
    let known = match cached {
        Some(k) => k,
        None => {
            let mut k = validate(trust, &req.certificate_der, now)?;
            let tables = &cache.tables;
            let ordering = std::sync::atomic::Ordering::Relaxed;
            if tables.fetch_update(ordering, ordering, |n| (n < cache.precomputed).then_some(n + 1)).is_ok() {
                k.key = k.key.precomputed();
            }
            if let Ok(mut m) = cache.keys.lock() {
                if m.len() >= KeyCache::CAPACITY {
                    m.clear();
                }
                m.insert(fingerprint, k.clone());
            }
            k
        }
    };
    if known.terminal_serial != body.terminal_serial {
        return Err(Refusal::WrongTerminal {
            certificate: known.terminal_serial.clone(),
            body: body.terminal_serial.clone(),
        });
    }
    known
        .key
        .verify(&trust.signer_id, &proto::heartbeat::signed_bytes(&req.body), &req.signature_der)
        .map_err(|_| Refusal::BadSignature)?;
    let now_ms = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let skew_ms = body.time_ms as i64 - now_ms as i64;
    if skew_ms.unsigned_abs() > clock_skew.as_millis() as u64 {
        return Err(Refusal::Stale { skew_s: skew_ms / 1000 });
    }
    Ok(Checked {
        body,
        certificate_serial: known.serial,
        certificate_sm3: hex::encode(fingerprint),
        body_sm3: sm3_hex(&req.body),
        class: known.class,
    })
}

fn validate(trust: &Trust, der: &[u8], now: SystemTime) -> Result<KnownKey, Refusal> {
    let cert = Certificate::from_der(der).map_err(|e| Refusal::Malformed(format!("certificate: {e}")))?;
    // The issuing CA was validated to the root once (Trust::new); its key has its tables.
    pki::validate_issued_by(&cert, &trust.issuing, &trust.issuing_key, now, &trust.signer_id)
        .map_err(|e| Refusal::NotOurs(e.to_string()))?;
    let serial = pki::CertSerial::of(&cert)
        .ok_or_else(|| Refusal::Malformed("serial is not a positive integer".into()))?
        .to_hex();
    let subject = cert.tbs_certificate().subject();
    let cns = pki::name::attribute_values(subject, const_oid_cn());
    let terminal_serial = cns.first().cloned().ok_or_else(|| Refusal::Unknown(serial.clone()))?;
    let spki = cert.tbs_certificate().subject_public_key_info().clone();
    // The certificate names one terminal in CN and serialNumber alike (as the CA issues them).
    pki::terminal::check_binding(&cert, &terminal_serial, &spki).map_err(|_| Refusal::Unknown(serial.clone()))?;
    let key = Sm2PublicKey::from_spki(&spki).map_err(|e| Refusal::Malformed(format!("certificate key: {e}")))?;
    let not_after = pki::time::from_x509(&cert.tbs_certificate().validity().not_after);
    let ou = der::asn1::ObjectIdentifier::new_unwrap("2.5.4.11");
    let class = pki::name::attribute_values(subject, ou)
        .iter()
        .find_map(|v| v.strip_prefix("Terminal Class ").map(str::to_owned))
        .unwrap_or_default();
    Ok(KnownKey { key, serial, terminal_serial, class, not_after })
}

fn const_oid_cn() -> der::asn1::ObjectIdentifier {
    // id-at-commonName (2.5.4.3)
    der::asn1::ObjectIdentifier::new_unwrap("2.5.4.3")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hsm::backend::memory::SoftwareSm2Key;
    use terminal_sim::forge::Authority;

    use super::*;

    const SERIAL: &str = "HSTM01261100000K";
    const SKEW: Duration = Duration::from_secs(300);

    struct Setup {
        trust: Trust,
        key: SoftwareSm2Key,
        cert_der: Vec<u8>,
    }

    fn setup() -> Setup {
        let ca = Authority::new().expect("ca");
        let key = SoftwareSm2Key::generate(SignerId::default()).expect("key");
        let cert = ca.terminal(SERIAL, key.sm2_public_key()).expect("cert");
        let cert_der = der::Encode::to_der(&cert).expect("der");
        Setup { trust: Trust::new(ca.issuing, ca.root, SignerId::default()).expect("trust"), key, cert_der }
    }

    fn body(serial: &str, counter: u64) -> HeartbeatBody {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("time").as_millis() as u64;
        HeartbeatBody { terminal_serial: serial.into(), counter, time_ms: now, ..Default::default() }
    }

    fn signed(s: &Setup, b: &HeartbeatBody) -> HeartbeatRequest {
        proto::heartbeat::request(b, &s.key, &s.cert_der).expect("sign")
    }

    fn refusal(s: &Setup, req: &HeartbeatRequest) -> Refusal {
        check(&s.trust, &KeyCache::default(), req, SystemTime::now(), SKEW).expect_err("refused")
    }

    #[test]
    fn a_good_heartbeat_passes_and_its_certificate_is_remembered() {
        let s = setup();
        let cache = KeyCache::default();
        let req = signed(&s, &body(SERIAL, 7));
        let c = check(&s.trust, &cache, &req, SystemTime::now(), SKEW).expect("passes");
        assert_eq!((c.body.counter, c.body_sm3.len(), c.class.as_str()), (7, 64, "II"));
        assert_eq!((cache.keys.lock().expect("lock").len(), cache.precomputed_keys()), (1, 0));
        // From the cache: the signature is still checked.
        let mut forged = signed(&s, &body(SERIAL, 8));
        forged.body = body(SERIAL, 9).encode_to_vec();
        assert_eq!(
            check(&s.trust, &cache, &forged, SystemTime::now(), SKEW).expect_err("refused"),
            Refusal::BadSignature
        );
    }

    #[test]
    fn precomputed_keys_stop_at_their_budget_and_verify_alike() {
        let s = setup();
        let cache = KeyCache::with_precomputed(1);
        let req = signed(&s, &body(SERIAL, 1));
        check(&s.trust, &cache, &req, SystemTime::now(), SKEW).expect("passes");
        assert_eq!(cache.precomputed_keys(), 1);
        let mut forged = signed(&s, &body(SERIAL, 2));
        forged.body = body(SERIAL, 3).encode_to_vec();
        assert_eq!(
            check(&s.trust, &cache, &forged, SystemTime::now(), SKEW).expect_err("refused"),
            Refusal::BadSignature
        );
        // A second certificate is over the budget: verified without tables.
        let other = setup();
        check(&other.trust, &cache, &signed(&other, &body(SERIAL, 1)), SystemTime::now(), SKEW).expect("passes");
        assert_eq!(cache.precomputed_keys(), 1);
    }

    #[test]
    fn every_rejection_has_its_reason() {
        let s = setup();
        let good = signed(&s, &body(SERIAL, 1));
        let mut r = good.clone();
        r.body = vec![0xff, 0xff, 0xff];
        assert!(matches!(refusal(&s, &r), Refusal::Malformed(m) if m.starts_with("body")));
        let mut r = good.clone();
        r.certificate_der = b"not a certificate".to_vec();
        assert!(matches!(refusal(&s, &r), Refusal::Malformed(m) if m.starts_with("certificate")));
        // A self-made CA's certificate, named exactly like ours.
        let forger = Authority::new().expect("forger");
        let fake = forger.terminal(SERIAL, s.key.sm2_public_key()).expect("fake");
        let mut r = good.clone();
        r.certificate_der = der::Encode::to_der(&fake).expect("der");
        assert!(matches!(refusal(&s, &r), Refusal::NotOurs(_)));
        // Signed by another key than the certified one.
        let other = SoftwareSm2Key::generate(SignerId::default()).expect("key");
        let r = proto::heartbeat::request(&body(SERIAL, 1), &other, &s.cert_der).expect("sign");
        assert_eq!(refusal(&s, &r), Refusal::BadSignature);
        // Signed without the tag (a signature made for something else).
        let mut r = good.clone();
        r.signature_der = hsm::Signer::sign(&s.key, &r.body).expect("sign").as_der().to_vec();
        assert_eq!(refusal(&s, &r), Refusal::BadSignature);
        // The body names another terminal than the certificate.
        let r = signed(&s, &body("HSTM01261100001I", 1));
        assert!(matches!(refusal(&s, &r), Refusal::WrongTerminal { .. }));
        // Too old or too new: stale, and not counted as a counterfeit.
        let mut old = body(SERIAL, 1);
        old.time_ms -= 301_000;
        let e = refusal(&s, &signed(&s, &old));
        assert!(matches!(e, Refusal::Stale { skew_s } if skew_s <= -300), "{e:?}");
        assert!(!e.is_counterfeit());
        let mut new = body(SERIAL, 1);
        new.time_ms += 301_000;
        assert!(matches!(refusal(&s, &signed(&s, &new)), Refusal::Stale { .. }));
        // An expired certificate does not chain.
        let later = SystemTime::now() + Duration::from_secs(20 * 365 * 86_400);
        let e = check(&s.trust, &KeyCache::default(), &good, later, SKEW).expect_err("expired");
        assert!(matches!(e, Refusal::NotOurs(_)), "{e:?}");
    }

    #[test]
    fn refusals_map_to_stable_reasons() {
        assert_eq!(Refusal::BadSignature.status(), (Code::Unauthenticated, Reason::HeartbeatBadSignature));
        assert_eq!(
            Refusal::Revoked { serial: "0A".into(), reason: "key_compromise".into() }.status(),
            (Code::PermissionDenied, Reason::HeartbeatCertRevoked)
        );
        assert_eq!(Refusal::Unknown("0A".into()).name(), "HEARTBEAT_CERT_UNKNOWN");
        assert!(Refusal::NotOurs(String::new()).is_counterfeit());
    }
}
