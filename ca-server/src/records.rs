//! Small conversions shared by `init` and the handlers: times, serials, certificate records.

use std::time::SystemTime;

use pki::{Certificate, TbsCertificate};
use registry::{CertRecord, CertStatus, CertSubject};

/// Unix milliseconds of `t`.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// Upper-case hex of a certificate's serial.
pub fn serial_hex(cert: &Certificate) -> Option<String> {
    pki::CertSerial::of(cert).map(|s| s.to_hex())
}

/// The registry record of a certificate just issued to `subject` under `profile`.
pub fn new_cert_record(
    cert: &Certificate,
    subject: CertSubject,
    profile: &str,
    request_id: &str,
) -> Option<CertRecord> {
    new_cert_record_of_tbs(cert.tbs_certificate(), subject, profile, request_id)
}

/// [`new_cert_record`] from the certificate's TBS (as the issuer built it).
pub fn new_cert_record_of_tbs(
    tbs: &TbsCertificate,
    subject: CertSubject,
    profile: &str,
    request_id: &str,
) -> Option<CertRecord> {
    Some(CertRecord {
        serial: pki::CertSerial::from_x509(tbs.serial_number())?.to_hex(),
        subject,
        profile: profile.into(),
        key_fingerprint: hex::encode(pki::alg::spki_fingerprint(tbs.subject_public_key_info())),
        issued_ms: now_ms(),
        not_after_ms: unix_ms(pki::time::from_x509(&tbs.validity().not_after)),
        request_id: request_id.into(),
        status: CertStatus::Good,
        provisioning: None,
        crl_partition: None,
        station: None,
        activation_hold: false,
    })
}
