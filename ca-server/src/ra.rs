//! The registration authority: every policy decision about a terminal certificate request
//! (DESIGN §4). It reads policy and the request and says yes (with what to issue) or why not;
//! the registry then enforces the storage invariants in its transaction.

use pki::csr::{CsrError, VerifiedCsr};
use pki::{PolicySet, SerialError, TerminalClass, TerminalSerial, csr_der, verify_csr};
use proto::v1::Reason;

/// A terminal certificate request as the station sent it.
#[derive(Clone, Debug)]
pub struct TerminalRequest<'a> {
    /// Terminal serial as sent.
    pub serial: &'a str,
    /// Class as sent (`I`, `II`, `III`).
    pub class: &'a str,
    /// CSR, DER or PEM.
    pub csr: &'a [u8],
}

/// What the RA allows to be issued.
#[derive(Clone, Debug)]
pub struct Approved {
    /// The checked serial.
    pub serial: TerminalSerial,
    /// The class.
    pub class: TerminalClass,
    /// The verified CSR (its key is what gets certified).
    pub csr: VerifiedCsr,
}

/// Why the RA refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The serial breaks the rule.
    #[error("terminal serial: {0}")]
    Serial(SerialError),
    /// Not I, II or III.
    #[error("{0}")]
    Class(pki::serial::UnknownClass),
    /// The CSR is refused.
    #[error("{0}")]
    Csr(CsrError),
    /// The station is not bound to the terminal's manufacturer.
    #[error("station {station} may not issue for manufacturer {manufacturer}")]
    Manufacturer {
        /// Station principal.
        station: String,
        /// The serial's manufacturer code.
        manufacturer: String,
    },
}

impl Refusal {
    /// The gRPC code and stable reason.
    pub fn status(&self) -> (tonic::Code, Reason) {
        use tonic::Code::{InvalidArgument, PermissionDenied};
        match self {
            Self::Serial(SerialError::CheckCharacterMismatch { .. }) => (InvalidArgument, Reason::BadCheckCharacter),
            Self::Serial(_) => (InvalidArgument, Reason::BadSerial),
            Self::Class(_) => (InvalidArgument, Reason::UnknownClass),
            Self::Csr(CsrError::WrongSignerId(_)) => (InvalidArgument, Reason::CsrWrongSignerId),
            Self::Csr(CsrError::SubjectMismatch { .. }) => (InvalidArgument, Reason::CsrSubjectMismatch),
            Self::Csr(_) => (InvalidArgument, Reason::BadCsr),
            Self::Manufacturer { .. } => (PermissionDenied, Reason::ManufacturerNotAllowed),
        }
    }
}

/// Decides a terminal certificate request from station `station` bound to `manufacturers`.
pub fn decide_terminal(
    policy: &PolicySet,
    station: &str,
    manufacturers: &[String],
    req: &TerminalRequest<'_>,
) -> Result<Approved, Refusal> {
    let serial = policy.serial_rule().parse(req.serial).map_err(Refusal::Serial)?;
    let class: TerminalClass = req.class.parse().map_err(Refusal::Class)?;
    if !manufacturers.iter().any(|m| m == serial.manufacturer()) {
        return Err(Refusal::Manufacturer {
            station: station.to_owned(),
            manufacturer: serial.manufacturer().to_owned(),
        });
    }
    let signer_id = policy.profile("terminal").map(|p| p.signer_id.clone()).unwrap_or_default();
    let der = csr_der(req.csr).map_err(Refusal::Csr)?;
    let csr = verify_csr(&der, &signer_id).map_err(Refusal::Csr)?;
    csr.check_terminal_subject(&serial).map_err(Refusal::Csr)?;
    Ok(Approved { serial, class, csr })
}
