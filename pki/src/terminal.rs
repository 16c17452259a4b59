//! What a terminal checks of the certificate chain written into it — the same checks on both
//! sides of the USB cable (the station before writing, the secure element before committing):
//! the chain's bytes split into certificates, and the leaf bound to this terminal's serial and key.

use const_oid::db::rfc4519;
use der::{Decode, Reader, SliceReader};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::Certificate;

use crate::name::attribute_values;

/// Why a certificate is not this terminal's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// The chain bytes are not a sequence of DER certificates.
    #[error("the chain is not a sequence of DER certificates: {0}")]
    Malformed(String),
    /// The chain holds no certificate.
    #[error("the chain is empty")]
    Empty,
    /// The subject names another terminal (or none).
    #[error("the certificate is for {found:?}, not for terminal {expected}")]
    OtherTerminal {
        /// This terminal's serial.
        expected: String,
        /// The CN and serialNumber values the certificate carries.
        found: Vec<String>,
    },
    /// The certified key is not this terminal's key.
    #[error("the certificate certifies another public key, not this terminal's key")]
    OtherKey,
}

/// Splits concatenated DER certificates (leaf first) into certificates.
pub fn split_chain(bytes: &[u8]) -> Result<Vec<Certificate>, BindingError> {
    let mut reader = SliceReader::new(bytes).map_err(|e| BindingError::Malformed(e.to_string()))?;
    let mut out = Vec::new();
    while !reader.is_finished() {
        out.push(Certificate::decode(&mut reader).map_err(|e| BindingError::Malformed(e.to_string()))?);
    }
    if out.is_empty() {
        return Err(BindingError::Empty);
    }
    Ok(out)
}

/// Checks that `cert` names terminal `serial` (every CN and serialNumber equal to it, at least one
/// present) and certifies `key`.
pub fn check_binding(cert: &Certificate, serial: &str, key: &SubjectPublicKeyInfoOwned) -> Result<(), BindingError> {
    let subject = &cert.tbs_certificate().subject();
    let found: Vec<String> = attribute_values(subject, rfc4519::CN)
        .into_iter()
        .chain(attribute_values(subject, rfc4519::SERIAL_NUMBER))
        .collect();
    if found.is_empty() || found.iter().any(|v| v != serial) {
        return Err(BindingError::OtherTerminal { expected: serial.to_owned(), found });
    }
    if cert.tbs_certificate().subject_public_key_info() != key {
        return Err(BindingError::OtherKey);
    }
    Ok(())
}
