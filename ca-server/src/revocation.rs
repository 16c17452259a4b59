//! Revocation status for relying parties (DESIGN §7): full and delta CRLs, SM2-signed through the
//! HSM, numbered from the registry's durable sequence, regenerated on a schedule and right after
//! every revocation, and held ready for the HTTP side to serve with ETag/Last-Modified.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pki::crl::{CrlReason, CrlRequest, RevokedEntry, build_crl_tbs};
use pki::{CertSerial, IssuerInfo};
use registry::{Registry, RevocationReason};
use sm3::Digest;

/// Why a CRL could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The registry failed.
    #[error("registry: {0}")]
    Registry(#[from] registry::RegistryError),
    /// Building, linting or assembling failed.
    #[error("crl: {0}")]
    Crl(#[from] pki::CrlError),
    /// The HSM failed.
    #[error("hsm: {0}")]
    Hsm(#[from] hsm::HsmError),
    /// A stored serial is not hex.
    #[error("stored certificate serial {0:?} is not hex")]
    Serial(String),
    /// Encoding.
    #[error("encoding: {0}")]
    Encoding(String),
}

/// CRL timing, from `[crl]` in `ca-server.toml`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrlTiming {
    /// `nextUpdate` − `thisUpdate`.
    pub validity: Duration,
    /// How often a full CRL is made even without revocations.
    pub full_every: Duration,
}

/// One published CRL, ready to serve.
#[derive(Clone, Debug)]
pub struct Published {
    /// DER.
    pub der: Arc<Vec<u8>>,
    /// PEM (`X509 CRL`).
    pub pem: Arc<String>,
    /// Strong validator: quoted hex of SM3 over the DER.
    pub etag: String,
    /// `thisUpdate`.
    pub this_update: SystemTime,
    /// CRL number.
    pub number: u64,
    /// Entries.
    pub entries: usize,
}

#[derive(Default)]
struct Current {
    full: Option<Published>,
    delta: Option<Published>,
    /// The last scheduled full CRL: its number and the commit-order number of the last
    /// revocation it includes. Deltas build on it, so a relying party holding it needs only the
    /// (small) delta; fulls made after revocations don't move it.
    base: Option<(u64, u64)>,
    partitions: std::collections::BTreeMap<u32, Published>,
}

/// Where the CRLs live: the full CRL's URL (principal certificates name it) and, when
/// terminal certificates are partitioned, the template with `{partition}` they name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlUrls {
    /// The full CRL, e.g. `http://host/crl/issuing.crl`.
    pub full: String,
    /// e.g. `http://host/crl/issuing-{partition}.crl`.
    pub partition: Option<String>,
}

/// The issuing CA's published CRLs: full, delta, and one per partition.
pub struct Crls {
    current: RwLock<Current>,
    /// Wakes the publisher after a revocation.
    pub changed: tokio::sync::Notify,
    /// Partitions whose CRL must be remade (a revocation in them).
    dirty: std::sync::Mutex<std::collections::BTreeSet<u32>>,
    /// How many partitions the last publication covered.
    partitions: std::sync::atomic::AtomicU32,
    timing: CrlTiming,
    urls: CrlUrls,
    /// The highest CRL number stored or loaded (shared registry): a follower's poll reads only
    /// newer ones.
    stored_up_to: std::sync::atomic::AtomicU64,
    /// The revocation sequence the newest full CRL signed here covers.
    published_seq: std::sync::atomic::AtomicU64,
}

/// What an HTTP path under `/crl/` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrlFile {
    /// The full CRL.
    Full,
    /// The delta CRL.
    Delta,
    /// A partition's CRL.
    Partition(u32),
}

impl Crls {
    /// CRLs published at `urls`.
    pub fn new(urls: CrlUrls, timing: CrlTiming) -> Self {
        Self {
            current: RwLock::default(),
            changed: tokio::sync::Notify::new(),
            dirty: std::sync::Mutex::default(),
            partitions: std::sync::atomic::AtomicU32::new(0),
            timing,
            urls,
            stored_up_to: std::sync::atomic::AtomicU64::new(0),
            published_seq: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The URL of partition `p`'s CRL.
    pub fn partition_url(&self, p: u32) -> Option<String> {
        self.urls.partition.as_ref().map(|t| t.replace(pki::cert::PARTITION, &p.to_string()))
    }

    /// Which CRL the file name under `/crl/` is (`issuing.crl`, `issuing-delta.pem`, `issuing-3.crl`),
    /// and whether PEM is asked for.
    pub fn file(&self, name: &str) -> Option<(CrlFile, bool)> {
        let (stem, pem) = match (name.strip_suffix(".crl"), name.strip_suffix(".pem")) {
            (Some(s), _) => (s, false),
            (None, Some(s)) => (s, true),
            _ => return None,
        };
        let full = self.urls.full.rsplit('/').next()?.strip_suffix(".crl")?;
        if stem == full {
            return Some((CrlFile::Full, pem));
        }
        if stem.strip_prefix(full).is_some_and(|r| r == "-delta") {
            return Some((CrlFile::Delta, pem));
        }
        let template = self.urls.partition.as_ref()?.rsplit('/').next()?.strip_suffix(".crl")?;
        let (before, after) = template.split_once(pki::cert::PARTITION)?;
        let digits = stem.strip_prefix(before)?.strip_suffix(after)?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((CrlFile::Partition(digits.parse().ok()?), pem))
    }

    /// The current CRL named by `file`.
    pub fn get(&self, file: CrlFile) -> Option<Published> {
        let c = self.current.read().ok()?;
        match file {
            CrlFile::Full => c.full.clone(),
            CrlFile::Delta => c.delta.clone(),
            CrlFile::Partition(p) => c.partitions.get(&p).cloned(),
        }
    }

    /// How many partitions exist, as of the last publication (`0..n` are served).
    pub fn partitions(&self) -> u32 {
        self.partitions.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How often a full CRL is made without revocations.
    pub fn timing(&self) -> CrlTiming {
        self.timing
    }

    /// Marks `partition` for a new CRL (a revocation in it, or its first certificate) and wakes
    /// the publisher.
    pub fn changed_in(&self, partition: Option<u32>) {
        if let (Some(p), Ok(mut d)) = (partition, self.dirty.lock()) {
            d.insert(p);
        }
        self.changed.notify_one();
    }

    /// After revocations: the CRLs of the partitions they fell in and the delta first (small,
    /// fast — visible within a second), then the full CRL. On failure the partitions stay marked
    /// (the caller retries).
    pub fn publish_changes(
        &self,
        registry: &Registry,
        signer: &dyn hsm::Signer,
        issuer: &IssuerInfo,
        partitions: u32,
    ) -> Result<(), PublishError> {
        let dirty: Vec<u32> =
            self.dirty.lock().map(|mut d| std::mem::take(&mut *d).into_iter().collect()).unwrap_or_default();
        let result = (|| {
            let snapshot = registry.revocation_snapshot()?;
            // The snapshot may hold other instances' revocations too, and the full CRL below
            // moves `published_seq` past them: their partitions are remade now or never.
            let mut which: std::collections::BTreeSet<u32> = dirty.iter().copied().collect();
            let published = self.published_seq();
            which.extend(snapshot.revoked.iter().filter(|r| r.seq > published).filter_map(|r| r.partition));
            which.extend(snapshot.released.iter().filter(|r| r.seq > published).filter_map(|r| r.partition));
            let which: Vec<u32> = which.into_iter().collect();
            self.publish_partitions(registry, signer, issuer, &snapshot.revoked, &which, partitions)?;
            if let Some(base) = self.current.read().ok().and_then(|c| c.base) {
                self.publish_delta_on(registry, signer, issuer, &snapshot, base)?;
            }
            self.publish_full_of(registry, signer, issuer, &snapshot, false)
        })();
        if result.is_err()
            && let Ok(mut d) = self.dirty.lock()
        {
            d.extend(dirty);
        }
        result
    }

    /// The revocation sequence (commit order) the newest full CRL signed here covers: a
    /// revocation at or below it needs no new CRL.
    pub fn published_seq(&self) -> u64 {
        self.published_seq.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A full CRL, every partition `0..partitions`, and a delta; a `scheduled` full becomes the
    /// new delta base. `snapshot`: the caller's fresh read of the revocations, if it has one
    /// (else one is read here).
    pub fn publish_all(
        &self,
        registry: &Registry,
        signer: &dyn hsm::Signer,
        issuer: &IssuerInfo,
        partitions: u32,
        scheduled: bool,
        snapshot: Option<registry::RevocationSnapshot>,
    ) -> Result<(), PublishError> {
        let snapshot = match snapshot {
            Some(s) => s,
            None => registry.revocation_snapshot()?,
        };
        let all: Vec<u32> = (0..partitions).collect();
        self.publish_partitions(registry, signer, issuer, &snapshot.revoked, &all, partitions)?;
        self.publish_full_of(registry, signer, issuer, &snapshot, scheduled)
    }

    fn publish_full_of(
        &self,
        registry: &Registry,
        signer: &dyn hsm::Signer,
        issuer: &IssuerInfo,
        snapshot: &registry::RevocationSnapshot,
        scheduled: bool,
    ) -> Result<(), PublishError> {
        let entries = snapshot.revoked.iter().map(entry).collect::<Result<Vec<_>, _>>()?;
        // No issuingDistributionPoint: a full CRL covers everything this CA issued, and without
        // a critical extension GmSSL-based relying parties can read it (issue 13).
        let full = self.sign(registry, signer, issuer, &entries, None, None)?;
        let base = {
            let c = self.current.read().map_err(|_| PublishError::Encoding("lock poisoned".into()))?;
            if scheduled || c.base.is_none() { Some((full.number, snapshot.seq)) } else { c.base }
        };
        // Stored before it is served here: what this instance serves, every instance can.
        self.share(registry, "full".into(), &full, base)?;
        {
            let mut c = self.current.write().map_err(|_| PublishError::Encoding("lock poisoned".into()))?;
            c.base = base;
            c.full = Some(full);
        }
        self.published_seq.fetch_max(snapshot.seq, std::sync::atomic::Ordering::Relaxed);
        match base {
            Some(base) => self.publish_delta_on(registry, signer, issuer, snapshot, base),
            None => Ok(()),
        }
    }

    fn publish_partitions(
        &self,
        registry: &Registry,
        signer: &dyn hsm::Signer,
        issuer: &IssuerInfo,
        revoked: &[registry::RevokedCert],
        which: &[u32],
        partitions: u32,
    ) -> Result<(), PublishError> {
        self.partitions.fetch_max(partitions.max(1), std::sync::atomic::Ordering::Relaxed);
        let which: Vec<u32> = which.iter().copied().filter(|p| *p < partitions.max(1)).collect();
        if which.is_empty() || self.urls.partition.is_none() {
            return Ok(());
        }
        let mut by_partition: std::collections::BTreeMap<u32, Vec<RevokedEntry>> = std::collections::BTreeMap::new();
        for r in revoked {
            if let Some(p) = r.partition.filter(|p| which.binary_search(p).is_ok()) {
                by_partition.entry(p).or_default().push(entry(r)?);
            }
        }
        let first = registry.next_crl_numbers(which.len() as u64)?;
        for (i, &p) in which.iter().enumerate() {
            let Some(url) = self.partition_url(p) else { return Ok(()) };
            let entries = by_partition.remove(&p).unwrap_or_default();
            let published = self.sign_numbered(first + i as u64, signer, issuer, &entries, None, Some(&url))?;
            self.share(registry, format!("{PARTITION_PREFIX}{p}"), &published, None)?;
            if let Ok(mut c) = self.current.write() {
                c.partitions.insert(p, published);
            }
        }
        Ok(())
    }

    /// The delta over base `(number, seq)`: every revocation and release committed after the
    /// base's snapshot, by commit order (clock times can go backwards; commit order cannot).
    fn publish_delta_on(
        &self,
        registry: &Registry,
        signer: &dyn hsm::Signer,
        issuer: &IssuerInfo,
        snapshot: &registry::RevocationSnapshot,
        (base, since): (u64, u64),
    ) -> Result<(), PublishError> {
        let mut entries = Vec::new();
        for r in snapshot.revoked.iter().filter(|r| r.seq > since) {
            entries.push(entry(r)?);
        }
        for r in snapshot.released.iter().filter(|r| r.seq > since) {
            entries.push(RevokedEntry {
                serial: serial(&r.serial)?,
                revoked_at: at(r.at_ms),
                reason: Some(CrlReason::RemoveFromCRL),
                invalidity_date: None,
            });
        }
        // RFC 5280 §5.2.4: a delta has the scope of its base, so no IDP either (OpenSSL's
        // check_delta_base wants both IDPs equal or both absent); only where it is served differs.
        let delta = self.sign(registry, signer, issuer, &entries, Some(base), None)?;
        self.share(registry, "delta".into(), &delta, Some((base, since)))?;
        if let Ok(mut c) = self.current.write() {
            c.delta = Some(delta);
        }
        Ok(())
    }

    fn sign(
        &self,
        registry: &Registry,
        signer: &dyn hsm::Signer,
        issuer: &IssuerInfo,
        entries: &[RevokedEntry],
        delta_base: Option<u64>,
        url: Option<&str>,
    ) -> Result<Published, PublishError> {
        self.sign_numbered(registry.next_crl_number()?, signer, issuer, entries, delta_base, url)
    }

    fn sign_numbered(
        &self,
        number: u64,
        signer: &dyn hsm::Signer,
        issuer: &IssuerInfo,
        entries: &[RevokedEntry],
        delta_base: Option<u64>,
        url: Option<&str>,
    ) -> Result<Published, PublishError> {
        let this_update = SystemTime::now();
        let req = CrlRequest {
            number,
            this_update,
            next_update: this_update + self.timing.validity,
            entries,
            delta_base,
            distribution_point: url,
        };
        let tbs = build_crl_tbs(issuer, &req)?;
        let sig = signer.sign(tbs.to_be_signed())?;
        let crl = tbs.assemble(sig.as_der())?;
        let der = der::Encode::to_der(&crl).map_err(|e| PublishError::Encoding(e.to_string()))?;
        published(der, number, at(ms(this_update) / 1000 * 1000), entries.len())
    }

    /// On a shared registry, stores a CRL this instance (the leader) signed, for the others.
    fn share(
        &self,
        registry: &Registry,
        name: String,
        p: &Published,
        base: Option<(u64, u64)>,
    ) -> Result<(), PublishError> {
        if !registry.is_shared() {
            return Ok(());
        }
        let crl = registry::StoredCrl {
            name,
            number: p.number,
            der: p.der.to_vec(),
            entries: u32::try_from(p.entries).unwrap_or(u32::MAX),
            this_update_ms: ms(p.this_update),
            base,
        };
        // Refused: a newer leader stored a higher number under this name. The cursor stays, so
        // this instance still reads the rows that leader stored below its own number.
        if registry.store_crl(crl)? {
            self.stored_up_to.fetch_max(p.number, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// A follower's poll on a shared registry: serves the CRLs the leader stored since the last
    /// call (with the leader's delta base, for when this instance leads next). Each must verify
    /// under the issuing CA's key, or it is not served. Returns how many were taken.
    pub fn load_stored(&self, registry: &Registry, issuer: &IssuerInfo) -> Result<usize, PublishError> {
        use std::sync::atomic::Ordering::Relaxed;
        let stored = registry.stored_crls_after(self.stored_up_to.load(Relaxed))?;
        let mut taken = 0;
        for s in stored {
            // The cursor moves only past rows that are what their name says: a row that does not
            // verify is read again (and refused again) rather than hiding what follows it.
            let v = match pki::verify_crl(&s.der, issuer) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(name = %s.name, number = s.number, error = %e, "stored CRL does not verify; not served");
                    continue;
                }
            };
            let partition = s.name.strip_prefix(PARTITION_PREFIX).and_then(|n| n.parse::<u32>().ok());
            let kind_matches = match (s.name.as_str(), partition) {
                ("full", _) => v.delta_base.is_none() && v.distribution_point.is_none(),
                ("delta", _) => v.delta_base.is_some() && v.distribution_point.is_none(),
                // By file name: instances may publish under different hosts.
                (_, Some(n)) => {
                    v.delta_base.is_none()
                        && v.distribution_point
                            .as_deref()
                            .and_then(|url| url.rsplit('/').next())
                            .and_then(|file| self.file(file))
                            == Some((CrlFile::Partition(n), false))
                }
                _ => false,
            };
            if v.number != Some(s.number) || !kind_matches {
                tracing::error!(name = %s.name, number = s.number, "stored CRL is not the CRL its row names; not served");
                continue;
            }
            self.stored_up_to.fetch_max(s.number, Relaxed);
            let p = published(s.der, s.number, v.this_update, s.entries as usize)?;
            let mut c = self.current.write().map_err(|_| PublishError::Encoding("lock poisoned".into()))?;
            match s.name.as_str() {
                "full" => {
                    c.full = Some(p);
                    // A base names a full CRL at or before this one.
                    if let Some(base) = s.base.filter(|(n, _)| *n <= s.number) {
                        c.base = Some(base);
                    }
                }
                "delta" => c.delta = Some(p),
                _ => {
                    let Some(n) = partition else { continue };
                    c.partitions.insert(n, p);
                    self.partitions.fetch_max(n.saturating_add(1), Relaxed);
                }
            }
            taken += 1;
        }
        Ok(taken)
    }
}

/// Stored name of partition N's CRL: `partition-N`.
const PARTITION_PREFIX: &str = "partition-";

/// A signed CRL ready to serve: PEM and a strong ETag (hex of SM3 over the DER) beside the DER.
fn published(der: Vec<u8>, number: u64, this_update: SystemTime, entries: usize) -> Result<Published, PublishError> {
    let pem = pki::pem::der_to_pem("X509 CRL", &der).map_err(|e| PublishError::Encoding(e.to_string()))?;
    let etag = format!("\"{}\"", hex::encode(&sm3::Sm3::digest(&der)[..16]));
    Ok(Published { der: Arc::new(der), pem: Arc::new(pem), etag, this_update, number, entries })
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn serial(hex: &str) -> Result<CertSerial, PublishError> {
    CertSerial::from_hex(hex).ok_or_else(|| PublishError::Serial(hex.to_owned()))
}

fn entry(r: &registry::RevokedCert) -> Result<RevokedEntry, PublishError> {
    Ok(RevokedEntry {
        serial: serial(&r.serial)?,
        revoked_at: at(r.at_ms),
        reason: Some(crl_reason(r.reason)),
        // An invalidity date a CRL cannot carry (after 9999) is left out rather than stopping
        // every CRL; the handlers refuse such dates, this guards older records.
        invalidity_date: r.invalidity_ms.filter(|ms| *ms <= MAX_X509_MS).map(at),
    })
}

/// 9999-12-31T23:59:59Z, the last instant X.509 can encode.
const MAX_X509_MS: u64 = 253_402_300_799_000;

/// The RFC 5280 reason code of a registry reason.
pub fn crl_reason(r: RevocationReason) -> CrlReason {
    match r {
        RevocationReason::Unspecified => CrlReason::Unspecified,
        RevocationReason::KeyCompromise => CrlReason::KeyCompromise,
        RevocationReason::CaCompromise => CrlReason::CaCompromise,
        RevocationReason::AffiliationChanged => CrlReason::AffiliationChanged,
        RevocationReason::Superseded => CrlReason::Superseded,
        RevocationReason::CessationOfOperation => CrlReason::CessationOfOperation,
        RevocationReason::CertificateHold => CrlReason::CertificateHold,
        RevocationReason::PrivilegeWithdrawn => CrlReason::PrivilegeWithdrawn,
    }
}

/// `Last-Modified` form (RFC 9110 IMF-fixdate) of a time.
pub fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let Ok(dt) = der::DateTime::from_unix_duration(Duration::from_secs(secs)) else { return String::new() };
    // 1970-01-01 was a Thursday.
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(secs / 86_400 % 7) as usize];
    let mon = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        [usize::from(dt.month().clamp(1, 12) - 1)];
    format!(
        "{weekday}, {:02} {mon} {} {:02}:{:02}:{:02} GMT",
        dt.day(),
        dt.year(),
        dt.hour(),
        dt.minutes(),
        dt.seconds()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(UNIX_EPOCH + Duration::from_secs(784_111_777)), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(UNIX_EPOCH + Duration::from_secs(1_795_392_000)), "Mon, 23 Nov 2026 00:00:00 GMT");
        assert_eq!(http_date(UNIX_EPOCH + Duration::from_secs(951_782_400)), "Tue, 29 Feb 2000 00:00:00 GMT");
    }
}

#[cfg(test)]
mod file_names {
    use super::*;

    fn crls(partitioned: bool) -> Crls {
        let urls = CrlUrls {
            full: "http://h/crl/issuing.crl".into(),
            partition: partitioned.then(|| "http://h/crl/issuing-{partition}.crl".into()),
        };
        Crls::new(urls, CrlTiming { validity: Duration::from_secs(60), full_every: Duration::from_secs(60) })
    }

    #[test]
    fn names_map_to_crls_and_nothing_else() {
        let c = crls(true);
        assert_eq!(c.file("issuing.crl"), Some((CrlFile::Full, false)));
        assert_eq!(c.file("issuing.pem"), Some((CrlFile::Full, true)));
        assert_eq!(c.file("issuing-delta.crl"), Some((CrlFile::Delta, false)));
        assert_eq!(c.file("issuing-7.crl"), Some((CrlFile::Partition(7), false)));
        assert_eq!(c.file("issuing-12.pem"), Some((CrlFile::Partition(12), true)));
        assert_eq!(c.partition_url(3).as_deref(), Some("http://h/crl/issuing-3.crl"));
        for bad in [
            "issuing",
            "issuing.der",
            "root.crl",
            "issuing-.crl",
            "issuing--1.crl",
            "issuing-x.crl",
            "issuing-99999999999.crl",
            "../issuing.crl",
        ] {
            assert_eq!(c.file(bad), None, "{bad}");
        }
        let unpartitioned = crls(false);
        assert_eq!(unpartitioned.file("issuing-1.crl"), None);
        assert_eq!(unpartitioned.partition_url(1), None);
        assert!(c.get(CrlFile::Full).is_none(), "nothing published yet");
    }
}
