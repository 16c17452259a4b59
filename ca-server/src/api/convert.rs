//! Conversions between protocol messages, registry records and gRPC statuses.

use pki::Certificate;
use proto::status;
use proto::v1::{self, Reason};
use registry::{CertRecord, CertStatus, CertSubject, RegistryError, TerminalRecord, TerminalState};
use tonic::{Code, Status};

use crate::issuer::IssuerError;
use crate::records::new_cert_record;

pub(super) fn der_of(c: &Certificate) -> Result<Vec<u8>, Status> {
    der::Encode::to_der(c).map_err(|e| status(Code::Internal, Reason::Internal, e.to_string()))
}

pub(super) fn record_of(
    cert: &Certificate,
    subject: CertSubject,
    profile: &str,
    request_id: &str,
) -> Result<CertRecord, Status> {
    new_cert_record(cert, subject, profile, request_id)
        .ok_or_else(|| status(Code::Internal, Reason::Internal, "certificate serial"))
}

/// [`record_of`] from the TBS the issuer built.
pub(super) fn record_of_tbs(
    tbs: &pki::TbsCertificate,
    subject: CertSubject,
    profile: &str,
    request_id: &str,
) -> Result<CertRecord, Status> {
    crate::records::new_cert_record_of_tbs(tbs, subject, profile, request_id)
        .ok_or_else(|| status(Code::Internal, Reason::Internal, "certificate serial"))
}

/// The gRPC status for a registry refusal.
pub fn registry_status(e: &RegistryError) -> Status {
    use RegistryError as E;
    let (code, reason) = match e {
        E::Storage(_) | E::Corrupt(_) | E::SchemaMismatch { .. } => (Code::Unavailable, Reason::StorageFailure),
        E::TerminalExists(_) => (Code::AlreadyExists, Reason::TerminalExists),
        E::TerminalNotFound(_) => (Code::FailedPrecondition, Reason::TerminalNotRegistered),
        E::AlreadyHasActiveCertificate { .. } => (Code::FailedPrecondition, Reason::AlreadyHasActiveCertificate),
        E::PublicKeyInUse { .. } => (Code::FailedPrecondition, Reason::PublicKeyInUse),
        E::CertSerialExists(_) => (Code::Internal, Reason::Internal),
        E::RequestIdReused(_) => (Code::AlreadyExists, Reason::RequestIdReused),
        E::CertNotFound(_) | E::PrincipalNotFound(_) => (Code::NotFound, Reason::NotFound),
        E::AlreadyRevoked(_) => (Code::FailedPrecondition, Reason::AlreadyRevoked),
        E::WrongState { .. } => (Code::FailedPrecondition, Reason::WrongState),
        E::PrincipalExists(_) => (Code::AlreadyExists, Reason::PrincipalExists),
        E::NotOnHold(_) => (Code::FailedPrecondition, Reason::NotOnHold),
        E::EmptyFilter | E::FieldTooLong { .. } => (Code::InvalidArgument, Reason::BadRequest),
        E::ApprovalNotFound(_) => (Code::NotFound, Reason::ApprovalNotFound),
        E::ApprovalExists(_) => (Code::AlreadyExists, Reason::RequestIdReused),
        E::ApprovalDecided(_) => (Code::FailedPrecondition, Reason::ApprovalDecided),
        E::SameApprover(_) => (Code::PermissionDenied, Reason::SameApprover),
        E::KeyCompromised(_) => (Code::FailedPrecondition, Reason::KeyCompromised),
        E::ClassMismatch { .. } => (Code::FailedPrecondition, Reason::ClassMismatch),
        E::RekeyNeedsApproval { .. } => (Code::FailedPrecondition, Reason::RekeyNeedsApproval),
        E::OnHold(_) | E::ActivationHold(_) => (Code::FailedPrecondition, Reason::CertificateOnHold),
        E::ChallengeUnknown => (Code::FailedPrecondition, Reason::ChallengeUnknown),
        E::ChallengeExpired => (Code::FailedPrecondition, Reason::ChallengeExpired),
        E::TooManyChallenges { .. } => (Code::ResourceExhausted, Reason::ChallengeLimit),
        E::KeyReused { .. } => (Code::FailedPrecondition, Reason::KeyReused),
        E::IssuedByAnotherStation { .. } => (Code::PermissionDenied, Reason::IssuedByAnotherStation),
        E::ApproverNotEligible { .. } => (Code::PermissionDenied, Reason::ApproverNotEligible),
        E::ApproverNotIndependent { .. } => (Code::PermissionDenied, Reason::ApproverNotIndependent),
        E::NonceReplayed => (Code::Unauthenticated, Reason::ReplayedNonce),
        E::Audit(_) | E::TargetExists(_) => (Code::Internal, Reason::Internal),
    };
    status(code, reason, e.to_string())
}

pub(super) fn issuer_status(e: &IssuerError) -> Status {
    match e {
        IssuerError::Hsm(_) => status(Code::Unavailable, Reason::HsmUnavailable, e.to_string()),
        IssuerError::Build(pki::IssueError::Lint(_)) => status(Code::Internal, Reason::LintFailed, e.to_string()),
        _ => status(Code::Internal, Reason::Internal, e.to_string()),
    }
}

/// The gRPC status for an RA refusal.
pub(super) fn ra_status(r: crate::ra::Refusal) -> Status {
    let (code, reason) = r.status();
    status(code, reason, r.to_string())
}

pub(super) fn bad_request(msg: impl Into<String>) -> Status {
    status(Code::InvalidArgument, Reason::BadRequest, msg)
}

pub(super) fn class_name(c: i32) -> &'static str {
    match v1::TerminalClass::try_from(c) {
        Ok(v1::TerminalClass::ClassI) => "I",
        Ok(v1::TerminalClass::ClassIi) => "II",
        Ok(v1::TerminalClass::ClassIii) => "III",
        _ => "",
    }
}

pub(super) fn class_code(c: &str) -> i32 {
    match c {
        "I" => v1::TerminalClass::ClassI as i32,
        "II" => v1::TerminalClass::ClassIi as i32,
        "III" => v1::TerminalClass::ClassIii as i32,
        _ => 0,
    }
}

pub(super) fn state_code(s: TerminalState) -> i32 {
    (match s {
        TerminalState::Registered => v1::TerminalState::Registered,
        TerminalState::Issued => v1::TerminalState::Issued,
        TerminalState::Provisioned => v1::TerminalState::Provisioned,
        TerminalState::Active => v1::TerminalState::Active,
        TerminalState::Revoked => v1::TerminalState::Revoked,
    }) as i32
}

pub(super) fn terminal_msg(t: &TerminalRecord) -> v1::Terminal {
    v1::Terminal {
        serial: t.serial.clone(),
        class: class_code(&t.class),
        manufacturer: t.manufacturer.clone(),
        model: t.model.clone(),
        lot: t.lot.clone().unwrap_or_default(),
        state: state_code(t.state),
        active_certificate_serial: t.active_cert.clone().unwrap_or_default(),
    }
}

pub(super) fn reason_code(r: registry::RevocationReason) -> i32 {
    use registry::RevocationReason as R;
    (match r {
        R::Unspecified => v1::RevocationReason::Unspecified,
        R::KeyCompromise => v1::RevocationReason::KeyCompromise,
        R::CaCompromise => v1::RevocationReason::CaCompromise,
        R::AffiliationChanged => v1::RevocationReason::AffiliationChanged,
        R::Superseded => v1::RevocationReason::Superseded,
        R::CessationOfOperation => v1::RevocationReason::CessationOfOperation,
        R::CertificateHold => v1::RevocationReason::CertificateHold,
        R::PrivilegeWithdrawn => v1::RevocationReason::PrivilegeWithdrawn,
    }) as i32
}

/// A certificate serial as the registry keys it (upper-case hex of the positive integer), from
/// any spelling a caller may use: lower case, colons, a leading zero octet.
pub(super) fn normal_serial(s: &str) -> Result<String, Status> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    pki::CertSerial::from_hex(&hex)
        .map(|c| c.to_hex())
        .ok_or_else(|| bad_request(format!("{s:?} is not a certificate serial (hex)")))
}

/// The invalidity date recorded with a revocation: keyCompromise only, default `now_ms`, never
/// after the revocation itself (RFC 5280 §5.3.2: when the key is known or suspected compromised).
pub(super) fn invalidity_for(
    reason: registry::RevocationReason,
    given_ms: u64,
    now_ms: u64,
) -> Result<Option<u64>, Status> {
    match (reason, given_ms) {
        (registry::RevocationReason::KeyCompromise, 0) => Ok(Some(now_ms)),
        (registry::RevocationReason::KeyCompromise, t) if t <= now_ms => Ok(Some(t)),
        (registry::RevocationReason::KeyCompromise, _) => {
            Err(bad_request("the invalidity date is after the revocation (is it in milliseconds?)"))
        }
        (_, 0) => Ok(None),
        (_, _) => Err(bad_request("an invalidity date applies to keyCompromise only")),
    }
}

pub(super) fn reason_from_code(c: i32) -> registry::RevocationReason {
    use registry::RevocationReason as R;
    match v1::RevocationReason::try_from(c) {
        Ok(v1::RevocationReason::KeyCompromise) => R::KeyCompromise,
        Ok(v1::RevocationReason::CaCompromise) => R::CaCompromise,
        Ok(v1::RevocationReason::AffiliationChanged) => R::AffiliationChanged,
        Ok(v1::RevocationReason::Superseded) => R::Superseded,
        Ok(v1::RevocationReason::CessationOfOperation) => R::CessationOfOperation,
        Ok(v1::RevocationReason::CertificateHold) => R::CertificateHold,
        Ok(v1::RevocationReason::PrivilegeWithdrawn) => R::PrivilegeWithdrawn,
        _ => R::Unspecified,
    }
}

pub(super) fn approval_msg(a: &registry::Approval) -> v1::Approval {
    use registry::ApprovalRequest as R;
    let (state, decided_by, decided_ms, revoked, issued) = match &a.state {
        registry::ApprovalState::Pending => ("pending", String::new(), 0, Vec::new(), None),
        registry::ApprovalState::Approved { by, at_ms, revoked, issued } => {
            ("approved", by.clone(), *at_ms, revoked.clone(), issued.clone())
        }
        registry::ApprovalState::Rejected { by, at_ms } => ("rejected", by.clone(), *at_ms, Vec::new(), None),
    };
    let mut msg = v1::Approval {
        id: a.id.clone(),
        requested_by: a.requested_by.clone(),
        created_ms: a.created_ms,
        kind: a.request.kind().into(),
        state: state.into(),
        decided_by,
        decided_ms,
        revoked,
        issued_certificate_serial: issued.unwrap_or_default(),
        ..Default::default()
    };
    match &a.request {
        R::BulkRevocation { filter, reason, matched, .. } => {
            msg.manufacturer = filter.manufacturer.clone().unwrap_or_default();
            msg.model = filter.model.clone().unwrap_or_default();
            msg.lot = filter.lot.clone().unwrap_or_default();
            msg.reason = reason_code(*reason);
            msg.matched = *matched;
        }
        R::AddAdmin { name } => msg.principal = name.clone(),
        R::Rekey(r) => {
            msg.terminal_serial = r.terminal.clone();
            msg.station = r.station.clone();
            msg.replaces = r.replaces.clone().unwrap_or_default();
            msg.reason = reason_code(r.reason);
        }
    }
    msg
}

pub(super) fn status_msg(s: &CertStatus) -> v1::CertificateStatus {
    match s {
        CertStatus::Good => {
            v1::CertificateStatus { state: v1::certificate_status::State::Good as i32, ..Default::default() }
        }
        CertStatus::Revoked { at_ms, reason, invalidity_ms } => v1::CertificateStatus {
            state: v1::certificate_status::State::Revoked as i32,
            revoked_at_ms: *at_ms,
            reason: reason_code(*reason),
            invalidity_ms: invalidity_ms.unwrap_or_default(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::{invalidity_for, normal_serial};
    use registry::RevocationReason as R;

    #[test]
    fn serials_are_normalised_and_nonsense_refused() {
        assert_eq!(normal_serial("0a:1b").expect("colons"), "0A1B");
        assert_eq!(normal_serial("000a1b").expect("leading zero"), "0A1B");
        for bad in ["", "xyz", "00"] {
            assert!(normal_serial(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn invalidity_dates_are_checked() {
        assert_eq!(invalidity_for(R::KeyCompromise, 0, 100).expect("default"), Some(100));
        assert_eq!(invalidity_for(R::KeyCompromise, 40, 100).expect("earlier"), Some(40));
        assert!(invalidity_for(R::KeyCompromise, 101, 100).is_err(), "after the revocation");
        assert!(invalidity_for(R::KeyCompromise, 1_795_392_000_000_000, 1_795_392_000_000).is_err(), "microseconds");
        assert_eq!(invalidity_for(R::Superseded, 0, 100).expect("none"), None);
        assert!(invalidity_for(R::Superseded, 40, 100).is_err(), "only for keyCompromise");
    }
}
