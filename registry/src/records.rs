//! What the registry stores. Serial numbers are text as callers validated them (`pki` checks
//! terminal serials against the policy rule; certificate serials are upper-case hex).

use serde::{Deserialize, Serialize};

/// Where a terminal is in its life cycle (DESIGN §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TerminalState {
    /// Known to the lab, no certificate yet.
    Registered,
    /// A certificate was issued; the device has not confirmed the write.
    Issued,
    /// The station confirmed the certificate is in the secure element.
    Provisioned,
    /// An operator activated it in the field.
    Active,
    /// Its certificate was revoked and no new one issued.
    Revoked,
}

impl TerminalState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registered => "registered",
            Self::Issued => "issued",
            Self::Provisioned => "provisioned",
            Self::Active => "active",
            Self::Revoked => "revoked",
        }
    }
}

/// A terminal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalRecord {
    /// Healthcare-security serial number.
    pub serial: String,
    /// Class I, II or III.
    pub class: String,
    /// Manufacturer code.
    pub manufacturer: String,
    /// Model.
    pub model: String,
    /// Production lot, if registered.
    pub lot: Option<String>,
    /// Life-cycle state.
    pub state: TerminalState,
    /// Hex serial of the active certificate.
    pub active_cert: Option<String>,
    /// Unix milliseconds of the last change.
    pub updated_ms: u64,
}

/// The longest serial, class, manufacturer, model or lot a terminal may have, in bytes. PostgreSQL
/// cannot index a lot or record past ~2.7 KB, so both backends refuse long fields alike; real
/// codes are a few characters.
pub const TERMINAL_FIELD_MAX_BYTES: usize = 64;

impl TerminalRecord {
    /// Refuses a field longer than [`TERMINAL_FIELD_MAX_BYTES`].
    pub fn check_field_lengths(&self) -> crate::Result<()> {
        let fields = [
            ("serial", self.serial.as_str()),
            ("class", self.class.as_str()),
            ("manufacturer", self.manufacturer.as_str()),
            ("model", self.model.as_str()),
            ("lot", self.lot.as_deref().unwrap_or_default()),
        ];
        match fields.into_iter().find(|(_, v)| v.len() > TERMINAL_FIELD_MAX_BYTES) {
            Some((field, v)) => {
                Err(crate::RegistryError::FieldTooLong { field, len: v.len(), max: TERMINAL_FIELD_MAX_BYTES })
            }
            None => Ok(()),
        }
    }
}

/// Why a certificate was revoked (RFC 5280 reason codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RevocationReason {
    /// unspecified (0)
    Unspecified,
    /// keyCompromise (1)
    KeyCompromise,
    /// cACompromise (2)
    CaCompromise,
    /// affiliationChanged (3)
    AffiliationChanged,
    /// superseded (4)
    Superseded,
    /// cessationOfOperation (5)
    CessationOfOperation,
    /// certificateHold (6)
    CertificateHold,
    /// privilegeWithdrawn (9)
    PrivilegeWithdrawn,
}

/// A certificate's revocation status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CertStatus {
    /// Not revoked.
    Good,
    /// Revoked.
    Revoked {
        /// Unix milliseconds.
        at_ms: u64,
        /// Reason.
        reason: RevocationReason,
        /// Unix milliseconds of suspected compromise.
        invalidity_ms: Option<u64>,
    },
}

/// Whose certificate it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CertSubject {
    /// A terminal, by serial.
    Terminal {
        /// Terminal serial.
        serial: String,
    },
    /// A principal (station, operator, admin, auditor), by name.
    Principal {
        /// Principal name.
        name: String,
    },
}

/// A certificate and what we know about it. The DER is stored beside the record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// Upper-case hex serial.
    pub serial: String,
    /// Whose it is.
    pub subject: CertSubject,
    /// Profile it was issued under.
    pub profile: String,
    /// Hex SM3 of the SubjectPublicKeyInfo.
    pub key_fingerprint: String,
    /// Unix milliseconds.
    pub issued_ms: u64,
    /// Unix milliseconds of notAfter.
    pub not_after_ms: u64,
    /// The request that made it.
    pub request_id: String,
    /// Revocation status.
    pub status: CertStatus,
    /// Station, duration and firmware recorded when the device confirmed the write.
    pub provisioning: Option<Provisioning>,
    /// The CRL partition its distribution point names (terminal certificates).
    #[serde(default)]
    pub crl_partition: Option<u32>,
    /// Terminal certificates: the station that asked for it (or, for an approved re-key, the
    /// station named to write it). Only that station may confirm or replace it.
    #[serde(default)]
    pub station: Option<String>,
    /// The certificateHold it is under (if any) is the activation hold placed at issuance by
    /// `hold_until_activation`: only an activation lifts it, and only this hold.
    #[serde(default)]
    pub activation_hold: bool,
}

impl CertRecord {
    /// Whether it is on hold (certificateHold), whoever placed the hold.
    pub fn on_hold(&self) -> bool {
        matches!(self.status, CertStatus::Revoked { reason: RevocationReason::CertificateHold, .. })
    }

    /// Whether it is on the activation hold (and on no other).
    pub fn on_activation_hold(&self) -> bool {
        self.activation_hold && self.on_hold()
    }
}

/// The station's confirmation that a certificate is in the device (DESIGN §4 "confirm").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provisioning {
    /// Station principal.
    pub station: String,
    /// Milliseconds the write took.
    pub duration_ms: u64,
    /// Device firmware version.
    pub firmware: String,
    /// Unix milliseconds.
    pub at_ms: u64,
}

/// A principal: a person or station that calls the CA.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipalRecord {
    /// Unique name.
    pub name: String,
    /// Role (station, operator, admin, auditor).
    pub role: String,
    /// Hex serial of its identity certificate.
    pub cert_serial: String,
    /// Manufacturer codes a station may issue for.
    pub manufacturers: Vec<String>,
    /// Disabled principals are refused.
    pub enabled: bool,
    /// Who asked for this principal (an admin's name, or `ca-server init`). An administrator
    /// never approves a request of the admin who asked for their own creation.
    #[serde(default)]
    pub created_by: String,
    /// An administrator waiting for a second administrator's approval (the approval's id): its
    /// certificate is refused until then.
    #[serde(default)]
    pub pending_approval: Option<String>,
}

impl PrincipalRecord {
    /// Whether this principal may act now: enabled and not waiting for an approval.
    pub fn is_active(&self) -> bool {
        self.enabled && self.pending_approval.is_none()
    }

    /// Whether this is an administrator who may act now.
    pub fn is_active_admin(&self) -> bool {
        self.role == "admin" && self.is_active()
    }
}

/// How an activation was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationMethod {
    /// An operator's record, made before proof of presence existed (no terminal signature).
    #[default]
    Operator,
    /// Proof of presence: the terminal's SE signed a fresh challenge, institution and position,
    /// and the operator countersigned the request.
    Presence,
    /// An administrator's audited manual override (no terminal signature).
    Manual,
}

impl ActivationMethod {
    /// Lower-case name: `operator`, `presence`, `manual`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::Presence => "presence",
            Self::Manual => "manual",
        }
    }
}

/// A single-use activation challenge handed out for one terminal's certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeRecord {
    /// Terminal serial.
    pub terminal: String,
    /// The certificate whose key must sign (the terminal's active one when handed out).
    pub certificate: String,
    /// The operator it was handed to.
    pub operator: String,
    /// Unix milliseconds.
    pub issued_ms: u64,
    /// Unix milliseconds after which it is refused.
    pub expires_ms: u64,
}

/// An activation (HSTS 7.4.5/7.4.6): who, where, when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivationRecord {
    /// Terminal serial.
    pub terminal: String,
    /// Operator principal.
    pub operator: String,
    /// Institution where it was installed.
    pub institution: String,
    /// Latitude, degrees.
    pub latitude: f64,
    /// Longitude, degrees.
    pub longitude: f64,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// How it was made.
    #[serde(default)]
    pub method: ActivationMethod,
    /// Proof of presence: the certificate whose key signed the statement.
    #[serde(default)]
    pub certificate: Option<String>,
}

/// An activation with its place in the registry-wide activation log (commit order, 1, 2, …):
/// a reader that remembers the last `seq` it saw asks for those after it
/// ([`crate::Registry::activations_after`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ActivationEntry {
    /// Commit-order number across all terminals (no gaps: a write that fails takes none).
    pub seq: u64,
    /// The activation.
    pub activation: ActivationRecord,
}

/// The stored result of a request, so a retry gets the same answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestResult {
    /// What kind of request.
    pub kind: String,
    /// Hex serial of the certificate it produced.
    pub cert_serial: String,
    /// SM3 of the request's canonical content: a reused id with other content is refused.
    pub request_hash: String,
}

/// A revoked certificate, as CRLs and OCSP need it (the `revoked` index).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedCert {
    /// Upper-case hex serial.
    pub serial: String,
    /// Unix milliseconds of the revocation.
    pub at_ms: u64,
    /// Reason.
    pub reason: RevocationReason,
    /// Unix milliseconds of suspected compromise.
    pub invalidity_ms: Option<u64>,
    /// Its CRL partition, if it has one.
    #[serde(default)]
    pub partition: Option<u32>,
    /// Commit order among revocations and releases (see `Registry::revocation_snapshot`).
    #[serde(default)]
    pub seq: u64,
}

impl RevokedCert {
    /// The index entry for `rec`, numbered `seq` in commit order; `None` unless it is revoked.
    pub fn of(rec: &CertRecord, seq: u64) -> Option<Self> {
        let CertStatus::Revoked { at_ms, reason, invalidity_ms } = rec.status else { return None };
        Some(RevokedCert {
            serial: rec.serial.clone(),
            at_ms,
            reason,
            invalidity_ms,
            partition: rec.crl_partition,
            seq,
        })
    }
}

/// A certificate released from hold (`unrevoke`): delta CRLs list it as removeFromCRL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasedCert {
    /// Upper-case hex serial.
    pub serial: String,
    /// Unix milliseconds of the release.
    pub at_ms: u64,
    /// Its CRL partition, if it has one.
    #[serde(default)]
    pub partition: Option<u32>,
    /// Commit order among revocations and releases.
    #[serde(default)]
    pub seq: u64,
}

/// Every revocation and release as of one read: what CRLs are built from. `seq` is the highest
/// commit-order number included, so a delta over a base built from this snapshot takes exactly
/// the entries with a higher number, whatever their clock times.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevocationSnapshot {
    /// Revoked certificates.
    pub revoked: Vec<RevokedCert>,
    /// Certificates released from hold (and not revoked again since).
    pub released: Vec<ReleasedCert>,
    /// The highest commit-order number in this snapshot.
    pub seq: u64,
}

/// Which terminals a bulk revocation covers (every given field must match).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkFilter {
    /// Manufacturer code.
    pub manufacturer: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// Production lot.
    pub lot: Option<String>,
}

impl BulkFilter {
    /// Whether no field is set (which would mean every terminal: refused).
    pub fn is_empty(&self) -> bool {
        self.manufacturer.is_none() && self.model.is_none() && self.lot.is_none()
    }

    /// Whether terminal `t` is covered.
    pub fn admits(&self, t: &TerminalRecord) -> bool {
        self.manufacturer.as_ref().is_none_or(|m| *m == t.manufacturer)
            && self.model.as_ref().is_none_or(|m| *m == t.model)
            && self.lot.as_ref().is_none_or(|l| t.lot.as_ref() == Some(l))
    }
}

/// Where an approval stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ApprovalState {
    /// Waiting for a second administrator.
    Pending,
    /// Approved and carried out.
    Approved {
        /// The second administrator.
        by: String,
        /// Unix milliseconds.
        at_ms: u64,
        /// Bulk revocation: the certificates it revoked.
        revoked: Vec<String>,
        /// Re-key: the certificate it issued.
        #[serde(default)]
        issued: Option<String>,
    },
    /// Rejected: nothing was revoked, issued or enabled.
    Rejected {
        /// The second administrator.
        by: String,
        /// Unix milliseconds.
        at_ms: u64,
    },
}

/// A re-key (or, for a revoked terminal, a re-enrolment) of a terminal already in service: a new
/// key, certified only when a second administrator approves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RekeyRequest {
    /// Terminal serial.
    pub terminal: String,
    /// Hex DER of the CSR of the new key (verified when asked, and again when approved).
    pub csr_hex: String,
    /// Hex SM3 of the new key's SubjectPublicKeyInfo.
    pub key_fingerprint: String,
    /// The station that will write the new certificate (and alone may confirm it).
    pub station: String,
    /// The terminal's active certificate when asked (none for a revoked terminal); the approval
    /// is refused if that changed meanwhile.
    pub replaces: Option<String>,
    /// Why the replaced certificate is revoked: superseded, or keyCompromise.
    pub reason: RevocationReason,
}

/// What an approval decides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ApprovalRequest {
    /// Revoke every active certificate of the terminals a filter covers.
    BulkRevocation {
        /// The terminals covered.
        filter: BulkFilter,
        /// RFC 5280 reason for every revocation.
        reason: RevocationReason,
        /// Suspected compromise time, for keyCompromise.
        invalidity_ms: Option<u64>,
        /// Active certificates the filter matched when asked.
        matched: u64,
    },
    /// Let a new administrator act.
    AddAdmin {
        /// The pending administrator.
        name: String,
    },
    /// Certify a new key for a terminal in service (or revoked).
    Rekey(RekeyRequest),
}

impl ApprovalRequest {
    /// Short name: `bulk_revocation`, `add_admin`, `rekey`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BulkRevocation { .. } => "bulk_revocation",
            Self::AddAdmin { .. } => "add_admin",
            Self::Rekey(_) => "rekey",
        }
    }
}

/// A request under dual control (DESIGN §4): one administrator asks, another — independent of
/// the first — decides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Identifier (hex).
    pub id: String,
    /// The administrator who asked.
    pub requested_by: String,
    /// Unix milliseconds.
    pub created_ms: u64,
    /// What it decides.
    #[serde(flatten)]
    pub request: ApprovalRequest,
    /// Pending, approved or rejected.
    pub state: ApprovalState,
}
