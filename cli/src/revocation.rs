//! Revocation commands beyond a single revoke: bulk revocation under dual control (decided with
//! `approvals`), lifting a hold, and `verify`, the relying-party check (chain + CRL or OCSP) for operators
//! debugging a terminal.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use der::Decode;
use pki::ocsp::{CertIdHash, CertStatus, IssuerHashes, Responder};
use pki::{CertSerial, Certificate, IssuerInfo, SignerId};
use proto::client::{Client, request_id};
use proto::v1;
use proto::v1::admin_client::AdminClient;
use serde_json::json;

use crate::{http, print};

/// The certificate was checked and is not valid: exit code 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotValid(pub String);

/// Parses `2026-11-20T10:00:00Z` (UTC) or unix milliseconds.
pub fn parse_time(s: &str) -> Result<u64> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let bad = || anyhow::anyhow!("{s:?}: expected YYYY-MM-DDTHH:MM:SSZ (UTC) or unix milliseconds");
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[19] != b'Z'
    {
        return Err(bad());
    }
    let n = |r: std::ops::Range<usize>| s[r].parse::<u8>().map_err(|_| bad());
    let year = s[0..4].parse::<u16>().map_err(|_| bad())?;
    let dt = der::DateTime::new(year, n(5..7)?, n(8..10)?, n(11..13)?, n(14..16)?, n(17..19)?).map_err(|_| bad())?;
    Ok(dt.unix_duration().as_millis() as u64)
}

/// `2026-11-23T00:00:00Z` for unix milliseconds.
pub fn time_text(ms: u64) -> String {
    match der::DateTime::from_unix_duration(Duration::from_secs(ms / 1000)) {
        Ok(dt) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            dt.year(),
            dt.month(),
            dt.day(),
            dt.hour(),
            dt.minutes(),
            dt.seconds()
        ),
        Err(_) => format!("{ms} ms"),
    }
}

/// `revoke --lot/--model/--manufacturer`: asks; a second admin decides.
pub async fn bulk_revoke(client: &Client, json: bool, msg: v1::RequestBulkRevocationRequest) -> Result<()> {
    let a = AdminClient::new(client.channel.clone())
        .request_bulk_revocation(client.signed("/hsca.v1.Admin/RequestBulkRevocation", msg)?)
        .await?
        .into_inner();
    print(json, &crate::approvals::approval_json(&a), || {
        format!(
            "bulk revocation {} is pending: {} active certificates match. Nothing is revoked until a second \
             administrator runs `cactl approvals approve {}` (or `reject`).",
            a.id, a.matched, a.id
        )
    })
}

/// `unrevoke --cert-serial HEX`.
pub async fn unrevoke(client: &Client, json: bool, serial: &str) -> Result<()> {
    let msg = v1::UnrevokeCertificateRequest { request_id: request_id(), certificate_serial: serial.to_owned() };
    AdminClient::new(client.channel.clone())
        .unrevoke_certificate(client.signed("/hsca.v1.Admin/UnrevokeCertificate", msg)?)
        .await?;
    print(json, &json!({"serial": serial, "state": "good"}), || format!("{serial}: hold lifted, good again"))
}

/// Which status source `verify` asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The OCSP responder in the certificate's AIA.
    Ocsp,
    /// The CRL (and its delta) at the certificate's distribution point.
    Crl,
}

/// `verify --cert F [--ocsp|--crl]`: chain to the root, then status, as a relying party must.
pub fn verify(cert_path: &Path, issuing: &Certificate, root: &Certificate, source: Source, json: bool) -> Result<()> {
    let pem = std::fs::read_to_string(cert_path).with_context(|| format!("reading {}", cert_path.display()))?;
    let cert = pki::pem::certificate_from_pem(&pem)?;
    let serial = CertSerial::of(&cert).context("the certificate serial is not a positive 1–20 octet integer")?;
    let now = SystemTime::now();
    if let Err(e) = pki::validate_chain(&cert, std::slice::from_ref(issuing), root, now, &SignerId::default()) {
        return Err(NotValid(format!("chain: {e}")).into());
    }
    let urls = pki::cert::status_urls(&cert);
    let (status, detail) = match source {
        Source::Ocsp => {
            let url = urls.ocsp.first().context("the certificate names no OCSP responder")?;
            ocsp(url, issuing, &serial, now)?
        }
        Source::Crl => {
            let url = urls.crl.first().context("the certificate names no CRL distribution point")?;
            crl(url, issuing, &serial, now)?
        }
    };
    print(json, &json!({"serial": serial.to_hex(), "chain": "ok", "status": status, "detail": detail}), || {
        format!("{}: chain OK to the pinned root; {status} ({detail})", cert_path.display())
    })?;
    if status != "good" {
        return Err(NotValid(format!("certificate {} is {status}", serial.to_hex())).into());
    }
    Ok(())
}

fn reason_name(r: Option<pki::crl::CrlReason>) -> String {
    use pki::crl::CrlReason as R;
    match r {
        None | Some(R::Unspecified) => "unspecified",
        Some(R::KeyCompromise) => "keyCompromise",
        Some(R::CaCompromise) => "cACompromise",
        Some(R::AffiliationChanged) => "affiliationChanged",
        Some(R::Superseded) => "superseded",
        Some(R::CessationOfOperation) => "cessationOfOperation",
        Some(R::CertificateHold) => "certificateHold",
        Some(R::RemoveFromCRL) => "removeFromCRL",
        Some(R::PrivilegeWithdrawn) => "privilegeWithdrawn",
        Some(R::AaCompromise) => "aACompromise",
    }
    .to_owned()
}

fn ocsp(url: &str, issuing: &Certificate, serial: &CertSerial, now: SystemTime) -> Result<(String, String)> {
    let id = IssuerHashes::new(issuing)?.cert_id(CertIdHash::Sm3, serial);
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("{e}"))?;
    let req = pki::ocsp::build_request(&[id], Some(&nonce))?;
    let der = http::post(url, "application/ocsp-request", &req)?;
    let v = pki::ocsp::verify_response(&der, issuing, &SignerId::default(), now)
        .map_err(|e| NotValid(format!("OCSP response from {url}: {e}")))?;
    v.check_nonce(&nonce).map_err(|e| NotValid(format!("OCSP response from {url}: {e}")))?;
    let single = v.status_of(serial).context("the OCSP response does not answer for this certificate")?;
    let by = match &v.responder {
        Responder::Issuer => "signed by the issuing CA".to_owned(),
        Responder::Delegated(c) => format!("signed by delegated responder {}", c.tbs_certificate().subject()),
    };
    Ok(match &single.status {
        CertStatus::Good => ("good".into(), format!("OCSP {url}, {by}")),
        CertStatus::Revoked { at, reason } => (
            "revoked".into(),
            format!(
                "OCSP {url}, {by}; revoked {}, {}",
                time_text(at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)),
                reason_name(*reason)
            ),
        ),
        CertStatus::Unknown => ("unknown".into(), format!("OCSP {url}, {by}: the CA does not know it")),
    })
}

fn crl(url: &str, issuing: &Certificate, serial: &CertSerial, now: SystemTime) -> Result<(String, String)> {
    let info = IssuerInfo::from_certificate(issuing, SignerId::default())?;
    let check = |u: &str, scope: &str| -> Result<pki::crl::VerifiedCrl> {
        let der = http::get(u)?;
        let v = pki::verify_crl(&der, &info).map_err(|e| NotValid(format!("CRL {u}: {e}")))?;
        if v.next_update.is_some_and(|n| n < now) {
            return Err(NotValid(format!("CRL {u} is stale (past its nextUpdate)")).into());
        }
        // RFC 5280 §6.3.3 b: the CRL's scope must be the distribution point asked for.
        if v.distribution_point.as_deref().is_some_and(|dp| dp != scope) {
            return Err(NotValid(format!("CRL {u} is for {:?}, not {scope}", v.distribution_point)).into());
        }
        Ok(v)
    };
    let full = check(url, url)?;
    if full.delta_base.is_some() {
        return Err(NotValid(format!("{url} serves a delta CRL where a complete one belongs")).into());
    }
    let delta_url = match url.strip_suffix(".crl") {
        Some(stem) => format!("{stem}-delta.crl"),
        None => format!("{url}-delta"),
    };
    // The delta is optional to a relying party; when present it must build on this base.
    // A delta has its base's scope.
    let delta = check(&delta_url, full.distribution_point.as_deref().unwrap_or(url))
        .ok()
        .filter(|d| d.delta_base.is_some_and(|b| full.number.is_some_and(|n| b <= n)) && d.number > full.number);
    let find = |c: &pki::crl::VerifiedCrl| c.revoked.iter().find(|(s, _)| s == serial).map(|(_, r)| *r);
    let number = full.number.unwrap_or(0);
    if let Some(reason) = delta.as_ref().and_then(find) {
        return Ok(match reason {
            Some(pki::crl::CrlReason::RemoveFromCRL) => {
                ("good".into(), format!("hold lifted (delta CRL over {number})"))
            }
            r => ("revoked".into(), format!("delta CRL {delta_url} over CRL {number}, {}", reason_name(r))),
        });
    }
    Ok(match find(&full) {
        Some(r) => ("revoked".into(), format!("CRL {url} number {number}, {}", reason_name(r))),
        None => (
            "good".into(),
            format!("not on CRL {url} number {number}{}", if delta.is_some() { " nor its delta" } else { "" }),
        ),
    })
}

/// The issuing and root certificates: from files, or from the CA (`GetCaChain`) with the root
/// checked against the identity's pinned root.
pub fn chain_from_der(issuing: &[u8], root: &[u8]) -> Result<(Certificate, Certificate)> {
    Ok((Certificate::from_der(issuing)?, Certificate::from_der(root)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_and_print() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z").expect("epoch"), 0);
        assert_eq!(parse_time("2026-11-23T00:00:00Z").expect("t"), 1_795_392_000_000);
        assert_eq!(parse_time("2000-02-29T12:30:15Z").expect("leap"), 951_827_415_000);
        assert_eq!(parse_time("12345").expect("ms"), 12345);
        for bad in ["2026-13-01T00:00:00Z", "2026-11-23 00:00:00", "yesterday", "2026-11-23T00:00:00+08:00"] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
        assert_eq!(time_text(1_795_392_000_000), "2026-11-23T00:00:00Z");
        assert_eq!(time_text(951_827_415_000), "2000-02-29T12:30:15Z");
    }
}
