//! Certificate status in bulk: the CA's full CRL, fetched every `[ca] crl_refresh_seconds` and
//! used only once its signature verifies under our issuing CA, plus the holds and revocations
//! the fleet service itself made (known at once, before the next CRL lists them). A
//! certificate that chains to our issuing CA and names a terminal is one we issued, so no call
//! to the CA is needed per certificate; only without a fresh CRL does the service fall back to
//! asking the CA (`GetCertificate`) per certificate.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, SystemTime};

use pki::{CrlReason, IssuerInfo};

/// Why a CRL was not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CrlRefusal {
    /// Not signed by our issuing CA, or not a CRL.
    #[error("the CRL does not verify under our issuing CA: {0}")]
    NotOurs(String),
    /// Past its nextUpdate (or without one): old, possibly replayed.
    #[error("the CRL is stale: its nextUpdate has passed")]
    Stale,
    /// A partition or delta CRL, not the full one.
    #[error("not a full CRL (it is a delta or names a distribution point)")]
    NotFull,
    /// Older than the one in use (a rollback).
    #[error("CRL number {got} is older than the one in use ({have})")]
    Older {
        /// Its number.
        got: u64,
        /// The number in use.
        have: u64,
    },
    /// It could not be fetched.
    #[error("fetching the CRL: {0}")]
    Fetch(String),
}

/// What the fleet knows of a certificate's standing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Not revoked nor on hold, as of a fresh CRL.
    Good,
    /// Revoked or on hold, with the reason (`key_compromise`, `certificate_hold`, …).
    Revoked(String),
    /// No fresh CRL: ask the CA.
    NoFreshCrl,
}

struct Crl {
    number: u64,
    this_update_ms: u64,
    next_update: SystemTime,
    revoked: HashMap<String, String>,
}

/// The CRL in use and the fleet's own revocations.
pub struct Revocations {
    issuer: IssuerInfo,
    current: RwLock<Option<Crl>>,
    /// Certificate serial → (reason, unix ms): holds and revocations the service made itself.
    own: Mutex<HashMap<String, (String, u64)>>,
}

/// The lower-case name of a CRL reason, as the CA's API names it.
pub fn reason_name(r: Option<CrlReason>) -> &'static str {
    match r {
        Some(CrlReason::KeyCompromise) => "key_compromise",
        Some(CrlReason::CaCompromise) => "ca_compromise",
        Some(CrlReason::AffiliationChanged) => "affiliation_changed",
        Some(CrlReason::Superseded) => "superseded",
        Some(CrlReason::CessationOfOperation) => "cessation_of_operation",
        Some(CrlReason::CertificateHold) => "certificate_hold",
        Some(CrlReason::PrivilegeWithdrawn) => "privilege_withdrawn",
        Some(CrlReason::AaCompromise) => "aa_compromise",
        Some(CrlReason::RemoveFromCRL) => "remove_from_crl",
        Some(CrlReason::Unspecified) | None => "unspecified",
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Revocations {
    /// Status from CRLs of `issuer` (our issuing CA).
    pub fn new(issuer: IssuerInfo) -> Self {
        Self { issuer, current: RwLock::default(), own: Mutex::default() }
    }

    /// Verifies a full CRL (DER) and uses it from now on; its number. A CRL that does not
    /// verify, is stale at `now`, is a delta or partition, or is older than the one in use is
    /// refused and the one in use stays.
    pub fn install(&self, der: &[u8], now: SystemTime) -> Result<u64, CrlRefusal> {
        let v = pki::verify_crl(der, &self.issuer).map_err(|e| CrlRefusal::NotOurs(e.to_string()))?;
        if v.delta_base.is_some() || v.distribution_point.is_some() {
            return Err(CrlRefusal::NotFull);
        }
        let next_update = v.next_update.filter(|n| now <= *n).ok_or(CrlRefusal::Stale)?;
        let number = v.number.unwrap_or(0);
        let mut current = self.current.write().map_err(|_| CrlRefusal::Fetch("lock poisoned".into()))?;
        if let Some(have) = current.as_ref().map(|c| c.number).filter(|have| number < *have) {
            return Err(CrlRefusal::Older { got: number, have });
        }
        let revoked = v
            .revoked
            .iter()
            .filter(|(_, r)| *r != Some(CrlReason::RemoveFromCRL))
            .map(|(s, r)| (s.to_hex(), reason_name(*r).to_owned()))
            .collect();
        *current = Some(Crl { number, this_update_ms: unix_ms(v.this_update), next_update, revoked });
        Ok(number)
    }

    /// Records a hold or revocation the service itself made at the CA (`at_ms`): it counts at
    /// once, until a CRL made after it says otherwise (a hold lifted by an administrator).
    pub fn ours(&self, serial: &str, reason: &str, at_ms: u64) {
        if let Ok(mut m) = self.own.lock() {
            m.insert(serial.to_owned(), (reason.to_owned(), at_ms));
        }
    }

    /// The standing of certificate `serial` at `now`.
    pub fn standing(&self, serial: &str, now: SystemTime) -> Standing {
        let current = self.current.read().ok();
        let crl = current.as_ref().and_then(|c| c.as_ref()).filter(|c| now <= c.next_update);
        let own = self.own.lock().ok().and_then(|m| m.get(serial).cloned());
        if let Some((reason, at_ms)) = own
            && crl.is_none_or(|c| c.this_update_ms < at_ms)
        {
            return Standing::Revoked(reason);
        }
        match crl {
            None => Standing::NoFreshCrl,
            Some(c) => c.revoked.get(serial).map_or(Standing::Good, |r| Standing::Revoked(r.clone())),
        }
    }

    /// The CRL in use: (number, entries, nextUpdate), if any.
    pub fn current(&self) -> Option<(u64, usize, SystemTime)> {
        let c = self.current.read().ok()?;
        c.as_ref().map(|c| (c.number, c.revoked.len(), c.next_update))
    }
}

/// The answer to a CRL fetch.
#[derive(Debug)]
pub enum Fetched {
    /// `304 Not Modified` for the ETag sent.
    NotModified,
    /// A CRL (unverified DER) and its ETag.
    Crl {
        /// DER.
        der: Vec<u8>,
        /// The ETag header, if any.
        etag: Option<String>,
    },
}

/// CRLs larger than this are refused (64 MiB: ~1.5 million entries).
const MAX_CRL: u64 = 64 << 20;

/// GETs the CRL at `url` (`http://host[:port]/path`, as CRL distribution points are), with
/// `If-None-Match: etag` when given. Blocking, 10 s per step.
pub fn fetch(url: &str, etag: Option<&str>) -> Result<Fetched, CrlRefusal> {
    use std::net::ToSocketAddrs;
    let err = |e: &dyn std::fmt::Display| CrlRefusal::Fetch(format!("{url}: {e}"));
    let (authority, path) = crate::webhook::parse(url).map_err(|e| err(&e))?;
    let addr = authority.to_socket_addrs().map_err(|e| err(&e))?.next().ok_or_else(|| err(&"no address"))?;
    let step = Duration::from_secs(10);
    let mut s = std::net::TcpStream::connect_timeout(&addr, step).map_err(|e| err(&e))?;
    s.set_read_timeout(Some(step)).map_err(|e| err(&e))?;
    s.set_write_timeout(Some(step)).map_err(|e| err(&e))?;
    let if_none = etag.map(|e| format!("If-None-Match: {e}\r\n")).unwrap_or_default();
    let head = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n{if_none}Connection: close\r\n\r\n");
    s.write_all(head.as_bytes()).map_err(|e| err(&e))?;
    let mut answer = Vec::new();
    s.take(MAX_CRL + 64 * 1024).read_to_end(&mut answer).map_err(|e| err(&e))?;
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| err(&"no end of headers"))?;
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let body = &answer[split + 4..];
    let mut lines = head.lines();
    let code = lines.next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or_default().to_owned();
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    match code.as_str() {
        "304" => Ok(Fetched::NotModified),
        "200" => {
            if header("transfer-encoding").is_some() {
                return Err(err(&"chunked answers are not supported"));
            }
            let len = header("content-length").and_then(|l| l.parse::<usize>().ok()).unwrap_or(body.len());
            if len as u64 > MAX_CRL || body.len() < len {
                return Err(err(&format!("body of {} bytes, announced {len}", body.len())));
            }
            Ok(Fetched::Crl { der: body[..len].to_vec(), etag: header("etag") })
        }
        other => Err(err(&format!("answered {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use pki::{CertSerial, SignerId};
    use terminal_sim::forge::Authority;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn issuer(ca: &Authority) -> IssuerInfo {
        IssuerInfo::from_certificate(&ca.issuing, SignerId::default()).expect("issuer")
    }

    #[test]
    fn a_certificate_is_revoked_once_the_crl_says_so_and_holds_lift() {
        let ca = Authority::new().expect("ca");
        let r = Revocations::new(issuer(&ca));
        let now = SystemTime::now();
        let serial = CertSerial::generate().expect("serial");
        let hex = serial.to_hex();
        // No CRL yet: the CA must be asked.
        assert_eq!(r.standing(&hex, now), Standing::NoFreshCrl);
        let empty = ca.crl(1, now, now + HOUR, &[]).expect("crl");
        assert_eq!(r.install(&empty, now), Ok(1));
        assert_eq!(r.standing(&hex, now), Standing::Good);
        let listed = ca.crl(2, now, now + HOUR, &[(serial.clone(), CrlReason::CessationOfOperation)]).expect("crl");
        assert_eq!(r.install(&listed, now), Ok(2));
        assert_eq!(r.standing(&hex, now), Standing::Revoked("cessation_of_operation".into()));
        assert_eq!(r.current().map(|c| (c.0, c.1)), Some((2, 1)));
        // A rollback to the older CRL (which did not list it) is refused; the revocation stands.
        assert_eq!(r.install(&empty, now), Err(CrlRefusal::Older { got: 1, have: 2 }));
        assert_eq!(r.standing(&hex, now), Standing::Revoked("cessation_of_operation".into()));

        // Our own hold counts at once, before any CRL lists it ...
        let held = CertSerial::generate().expect("serial").to_hex();
        let at = unix_ms(now) + 5_000;
        r.ours(&held, "certificate_hold", at);
        assert_eq!(r.standing(&held, now), Standing::Revoked("certificate_hold".into()));
        // ... a CRL made before it does not undo it, one made after it (the hold was lifted) does.
        let before = ca.crl(3, now, now + HOUR, &[]).expect("crl");
        r.install(&before, now).expect("install");
        assert_eq!(r.standing(&held, now), Standing::Revoked("certificate_hold".into()));
        let after = ca.crl(4, now + Duration::from_secs(10), now + HOUR, &[]).expect("crl");
        r.install(&after, now).expect("install");
        assert_eq!(r.standing(&held, now), Standing::Good);
    }

    #[test]
    fn a_crl_not_signed_by_our_ca_is_refused_and_not_used() {
        let ca = Authority::new().expect("ca");
        let forger = Authority::new().expect("forger");
        let r = Revocations::new(issuer(&ca));
        let now = SystemTime::now();
        let good = ca.crl(5, now, now + HOUR, &[]).expect("crl");
        r.install(&good, now).expect("install");
        let victim = CertSerial::generate().expect("serial");
        // Same issuer name, another key: a forged CRL could revoke or un-revoke anyone.
        let forged = forger.crl(6, now, now + HOUR, &[(victim.clone(), CrlReason::KeyCompromise)]).expect("crl");
        assert!(matches!(r.install(&forged, now), Err(CrlRefusal::NotOurs(_))));
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(r.install(&flipped, now), Err(CrlRefusal::NotOurs(_))));
        assert!(matches!(r.install(b"not a crl", now), Err(CrlRefusal::NotOurs(_))));
        assert_eq!(r.standing(&victim.to_hex(), now), Standing::Good);
        assert_eq!(r.current().map(|c| c.0), Some(5));
    }

    #[test]
    fn a_stale_crl_is_refused_and_a_crl_that_goes_stale_sends_the_service_to_the_ca() {
        let ca = Authority::new().expect("ca");
        let r = Revocations::new(issuer(&ca));
        let now = SystemTime::now();
        let serial = CertSerial::generate().expect("serial");
        // Past its nextUpdate when it arrives (an old CRL played back): refused.
        let old = ca.crl(7, now - 2 * HOUR, now - HOUR, &[]).expect("crl");
        assert_eq!(r.install(&old, now), Err(CrlRefusal::Stale));
        assert_eq!(r.current(), None);
        // Fresh when installed; once its nextUpdate passes without a newer one, it no longer
        // answers for good certificates: the service asks the CA per certificate instead.
        let crl = ca.crl(8, now, now + HOUR, &[(serial.clone(), CrlReason::KeyCompromise)]).expect("crl");
        r.install(&crl, now).expect("install");
        let later = now + 2 * HOUR;
        assert_eq!(r.standing(&CertSerial::generate().expect("serial").to_hex(), later), Standing::NoFreshCrl);
        assert_eq!(r.standing(&serial.to_hex(), later), Standing::NoFreshCrl);
    }

    #[test]
    fn fetch_reads_a_crl_and_honours_not_modified() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/crl/issuing.crl", listener.local_addr().expect("addr"));
        let server = std::thread::spawn(move || {
            let mut heads = Vec::new();
            for answer in [
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nETag: \"e1\"\r\n\r\nabc".to_vec(),
                b"HTTP/1.1 304 Not Modified\r\n\r\n".to_vec(),
                b"HTTP/1.1 404 Not Found\r\n\r\n".to_vec(),
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec(),
            ] {
                let (mut s, _) = listener.accept().expect("accept");
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).expect("read");
                heads.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                s.write_all(&answer).expect("write");
            }
            heads
        });
        match fetch(&url, None).expect("200") {
            Fetched::Crl { der, etag } => assert_eq!((der.as_slice(), etag.as_deref()), (&b"abc"[..], Some("\"e1\""))),
            other => panic!("{other:?}"),
        }
        assert!(matches!(fetch(&url, Some("\"e1\"")).expect("304"), Fetched::NotModified));
        assert!(matches!(fetch(&url, None), Err(CrlRefusal::Fetch(m)) if m.contains("404")));
        assert!(matches!(fetch(&url, None), Err(CrlRefusal::Fetch(m)) if m.contains("announced 10")));
        let heads = server.join().expect("server");
        assert!(heads[0].starts_with("GET /crl/issuing.crl HTTP/1.1") && !heads[0].contains("If-None-Match"));
        assert!(heads[1].contains("If-None-Match: \"e1\""));
    }
}
