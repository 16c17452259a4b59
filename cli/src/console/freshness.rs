//! How fresh the CA's revocation information is, as a relying party sees it from the CA's HTTP
//! side: the full CRL at the distribution point this identity's own certificate names (its
//! thisUpdate, nextUpdate and number, signature checked against the issuing CA), and an OCSP
//! probe about that certificate (the answer's producedAt and thisUpdate, signature and nonce
//! checked). Blocking: run it off the async runtime.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use pki::ocsp::{CertIdHash, CertStatus, IssuerHashes};
use pki::{CertSerial, Certificate, IssuerInfo, SignerId};

use crate::http;

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The current full CRL.
pub struct CrlFreshness {
    /// Where it was fetched.
    pub url: String,
    /// Its CRL number.
    pub number: Option<u64>,
    /// `thisUpdate`, Unix ms.
    pub this_update_ms: u64,
    /// `nextUpdate`, Unix ms.
    pub next_update_ms: Option<u64>,
}

/// One OCSP answer.
pub struct OcspFreshness {
    /// The responder asked.
    pub url: String,
    /// `producedAt`, Unix ms.
    pub produced_at_ms: u64,
    /// The single response's `thisUpdate`, Unix ms.
    pub this_update_ms: u64,
    /// Its `nextUpdate`, Unix ms.
    pub next_update_ms: Option<u64>,
    /// good, revoked or unknown (about this identity's own certificate).
    pub status: &'static str,
}

/// Fetches and checks both; each fails on its own (an unreachable responder does not hide the CRL).
pub fn probe(own: &Certificate, issuing: &Certificate) -> (Result<CrlFreshness>, Result<OcspFreshness>) {
    let urls = pki::cert::status_urls(own);
    let crl = urls.crl.first().context("this identity's certificate names no CRL distribution point").and_then(|u| {
        // A partitioned distribution point: the full CRL beside it.
        let url = if u.contains(pki::cert::PARTITION) { pki::cert::full_crl_url(u) } else { u.clone() };
        let info = IssuerInfo::from_certificate(issuing, SignerId::default())?;
        let v = pki::verify_crl(&http::get(&url)?, &info).with_context(|| format!("CRL {url}"))?;
        Ok(CrlFreshness {
            url,
            number: v.number,
            this_update_ms: ms(v.this_update),
            next_update_ms: v.next_update.map(ms),
        })
    });
    let ocsp = urls.ocsp.first().context("this identity's certificate names no OCSP responder").and_then(|url| {
        let serial = CertSerial::of(own).context("own certificate serial")?;
        let id = IssuerHashes::new(issuing)?.cert_id(CertIdHash::Sm3, &serial);
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("{e}"))?;
        let der = http::post(url, "application/ocsp-request", &pki::ocsp::build_request(&[id], Some(&nonce))?)?;
        let v = pki::ocsp::verify_response(&der, issuing, &SignerId::default(), SystemTime::now())
            .with_context(|| format!("OCSP {url}"))?;
        v.check_nonce(&nonce).with_context(|| format!("OCSP {url}"))?;
        let single = v.status_of(&serial).context("the OCSP answer does not cover the certificate asked about")?;
        Ok(OcspFreshness {
            url: url.clone(),
            produced_at_ms: ms(v.produced_at),
            this_update_ms: ms(single.this_update),
            next_update_ms: single.next_update.map(ms),
            status: match single.status {
                CertStatus::Good => "good",
                CertStatus::Revoked { .. } => "revoked",
                CertStatus::Unknown => "unknown",
            },
        })
    });
    (crl, ocsp)
}
