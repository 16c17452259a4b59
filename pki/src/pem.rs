//! PEM encoding and decoding of the objects we produce and accept.

use der::{DecodePem, EncodePem, pem::LineEnding};
use x509_cert::Certificate;
use x509_cert::crl::CertificateList;

/// A PEM block that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("PEM: {0}")]
pub struct PemError(pub String);

/// A certificate as PEM.
pub fn certificate_to_pem(cert: &Certificate) -> Result<String, PemError> {
    cert.to_pem(LineEnding::LF).map_err(|e| PemError(e.to_string()))
}

/// A certificate from PEM.
pub fn certificate_from_pem(pem: &str) -> Result<Certificate, PemError> {
    Certificate::from_pem(pem).map_err(|e| PemError(e.to_string()))
}

/// Every certificate in a PEM bundle, in order.
pub fn certificates_from_pem(pem: &str) -> Result<Vec<Certificate>, PemError> {
    Certificate::load_pem_chain(pem.as_bytes()).map_err(|e| PemError(e.to_string()))
}

/// A CRL as PEM (`X509 CRL`).
pub fn crl_to_pem(crl: &CertificateList) -> Result<String, PemError> {
    crl.to_pem(LineEnding::LF).map_err(|e| PemError(e.to_string()))
}

/// DER bytes as a PEM block with `label`.
pub fn der_to_pem(label: &str, der: &[u8]) -> Result<String, PemError> {
    der::pem::encode_string(label, LineEnding::LF, der).map_err(|e| PemError(e.to_string()))
}
