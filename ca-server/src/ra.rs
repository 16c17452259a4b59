//! The registration authority: every policy decision about a terminal certificate request
//! (DESIGN §4). It reads policy and the request and says yes (with what to issue) or why not;
//! the registry then enforces the storage invariants in its transaction.

use pki::csr::{CsrError, VerifiedCsr};
use pki::{PolicySet, SerialError, TerminalClass, TerminalSerial, csr_der, verify_csr};
use proto::v1::Reason;
use registry::{PrincipalRecord, RevocationReason};

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
    /// A station asked about a terminal of a manufacturer it is not bound to.
    #[error("station {station} may not see terminals of manufacturer {manufacturer}")]
    NotItsManufacturer {
        /// Station principal.
        station: String,
        /// The terminal's manufacturer code.
        manufacturer: String,
    },
    /// A re-key names no station that could write the certificate.
    #[error("{0} is not an enabled station")]
    NotAStation(String),
    /// A re-key gives a reason other than superseded or keyCompromise.
    #[error("a re-key revokes the replaced certificate as superseded or keyCompromise, not {0}")]
    RekeyReason(String),
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
            Self::Manufacturer { .. } | Self::NotItsManufacturer { .. } => {
                (PermissionDenied, Reason::ManufacturerNotAllowed)
            }
            Self::NotAStation(_) | Self::RekeyReason(_) => (InvalidArgument, Reason::BadRequest),
        }
    }
}

fn terminal_csr(policy: &PolicySet, csr: &[u8], serial: &TerminalSerial) -> Result<VerifiedCsr, Refusal> {
    let signer_id = policy.profile("terminal").map(|p| p.signer_id.clone()).unwrap_or_default();
    let der = csr_der(csr).map_err(Refusal::Csr)?;
    let csr = verify_csr(&der, &signer_id).map_err(Refusal::Csr)?;
    csr.check_terminal_subject(serial).map_err(Refusal::Csr)?;
    Ok(csr)
}

/// The serial and class of a request, checked: cheap (no signature), so the handler can ask for
/// the registry's life-cycle verdict in the same read as the replay check, before the CSR is
/// verified, and give it after the RA's own refusals.
pub fn terminal_names(
    policy: &PolicySet,
    req: &TerminalRequest<'_>,
) -> Result<(TerminalSerial, TerminalClass), Refusal> {
    let serial = policy.serial_rule().parse(req.serial).map_err(Refusal::Serial)?;
    let class: TerminalClass = req.class.parse().map_err(Refusal::Class)?;
    Ok((serial, class))
}

/// Decides a terminal certificate request from station `station` bound to `manufacturers`.
pub fn decide_terminal(
    policy: &PolicySet,
    station: &str,
    manufacturers: &[String],
    req: &TerminalRequest<'_>,
) -> Result<Approved, Refusal> {
    let (serial, class) = terminal_names(policy, req)?;
    approve_named_terminal(policy, station, manufacturers, serial, class, req.csr)
}

/// The rest of [`decide_terminal`], for names [`terminal_names`] has checked.
pub fn approve_named_terminal(
    policy: &PolicySet,
    station: &str,
    manufacturers: &[String],
    serial: TerminalSerial,
    class: TerminalClass,
    csr: &[u8],
) -> Result<Approved, Refusal> {
    if !manufacturers.iter().any(|m| m == serial.manufacturer()) {
        return Err(Refusal::Manufacturer {
            station: station.to_owned(),
            manufacturer: serial.manufacturer().to_owned(),
        });
    }
    let csr = terminal_csr(policy, csr, &serial)?;
    Ok(Approved { serial, class, csr })
}

/// A re-key as an administrator asks for it (the terminal's class stays the registered one).
#[derive(Clone, Debug)]
pub struct RekeyAsked<'a> {
    /// Terminal serial.
    pub serial: &'a str,
    /// The new key's CSR, DER or PEM.
    pub csr: &'a [u8],
    /// The station named to write the certificate, as the registry knows it.
    pub station: Option<&'a PrincipalRecord>,
    /// Its name as asked.
    pub station_name: &'a str,
    /// Why the replaced certificate is revoked.
    pub reason: RevocationReason,
}

/// What the RA allows a re-key to certify.
#[derive(Clone, Debug)]
pub struct ApprovedRekey {
    /// The checked serial.
    pub serial: TerminalSerial,
    /// The verified CSR of the new key.
    pub csr: VerifiedCsr,
}

/// Decides whether a re-key may be asked for (and, with the same inputs, carried out when a
/// second administrator approves): a valid serial, a CSR proving possession of the new key and
/// naming the terminal, a station bound to its manufacturer, superseded or keyCompromise.
pub fn decide_rekey(policy: &PolicySet, req: &RekeyAsked<'_>) -> Result<ApprovedRekey, Refusal> {
    let serial = policy.serial_rule().parse(req.serial).map_err(Refusal::Serial)?;
    if !matches!(req.reason, RevocationReason::Superseded | RevocationReason::KeyCompromise) {
        return Err(Refusal::RekeyReason(format!("{:?}", req.reason)));
    }
    let station = req
        .station
        .filter(|p| p.role == "station" && p.is_active())
        .ok_or_else(|| Refusal::NotAStation(req.station_name.to_owned()))?;
    if !station.manufacturers.iter().any(|m| m == serial.manufacturer()) {
        return Err(Refusal::Manufacturer {
            station: station.name.clone(),
            manufacturer: serial.manufacturer().to_owned(),
        });
    }
    let csr = terminal_csr(policy, req.csr, &serial)?;
    Ok(ApprovedRekey { serial, csr })
}

/// Whether `caller` may see a terminal of `manufacturer`: a station only its manufacturers'.
pub fn may_see_terminal(
    caller_role: &str,
    caller: &str,
    manufacturers: &[String],
    manufacturer: &str,
) -> Result<(), Refusal> {
    if caller_role == "station" && !manufacturers.iter().any(|m| m == manufacturer) {
        return Err(Refusal::NotItsManufacturer { station: caller.to_owned(), manufacturer: manufacturer.to_owned() });
    }
    Ok(())
}
