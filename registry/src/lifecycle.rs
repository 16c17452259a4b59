//! The terminal life cycle (DESIGN §4) as far as stations move it: issuing, replacing before the
//! device is written, confirming. What a station may do is decided by one function,
//! [`check_station_issue`], which the CA calls before it signs (so a refusal signs nothing) and
//! the registry calls again inside the transaction that records (so two racing requests cannot
//! both pass). A terminal in service gets a new key only through an approved re-key
//! (`approvals.rs`).

use crate::revocation;
use crate::store::{StoreRead, StoreWrite};
use crate::{
    AuditEvent, CertRecord, CertStatus, HOUR_MS, HourlyKind, IssueOutcome, PendingWrite, Provisioning, RegistryError,
    RequestResult, Result, RevocationReason, TerminalIssue, TerminalRecord, TerminalState,
};

/// What a station asks for, as the life-cycle rules see it.
#[derive(Clone, Copy, Debug)]
pub struct StationIssue<'a> {
    /// Terminal serial.
    pub terminal: &'a str,
    /// Class asked for.
    pub class: &'a str,
    /// The station asking.
    pub station: &'a str,
    /// Whether it asks to replace the active certificate.
    pub reissue: bool,
}

/// Whether a station may issue for terminal `t` (registered) whose active certificate is
/// `active`: the class is the registered one; a revoked terminal, or a replacement once the
/// device is written, needs an approved re-key; a replacement is of the station's own
/// certificate and never over a hold.
pub fn check_station_issue(req: &StationIssue<'_>, t: &TerminalRecord, active: Option<&CertRecord>) -> Result<()> {
    if t.class != req.class {
        return Err(RegistryError::ClassMismatch {
            terminal: t.serial.clone(),
            registered: t.class.clone(),
            requested: req.class.to_owned(),
        });
    }
    let in_service = matches!(t.state, TerminalState::Provisioned | TerminalState::Active);
    if t.state == TerminalState::Revoked || (in_service && req.reissue) {
        return Err(RegistryError::RekeyNeedsApproval { terminal: t.serial.clone(), state: t.state.as_str() });
    }
    let Some(c) = active else { return Ok(()) };
    if !req.reissue {
        return Err(RegistryError::AlreadyHasActiveCertificate { terminal: t.serial.clone(), cert: c.serial.clone() });
    }
    // The activation hold is no bar: the device is not written yet, and the old certificate is
    // revoked for good as superseded.
    if c.on_hold() && !c.activation_hold {
        return Err(RegistryError::OnHold(c.serial.clone()));
    }
    if c.station.as_deref() != Some(req.station) {
        return Err(RegistryError::IssuedByAnotherStation {
            cert: c.serial.clone(),
            station: c.station.clone().unwrap_or_else(|| "unknown".into()),
        });
    }
    Ok(())
}

/// The write that records `issue`, enforcing the invariants inside its transaction.
fn issue_job(
    issue: TerminalIssue,
    hold_until_activation: bool,
) -> impl FnOnce(&mut dyn StoreWrite) -> Result<IssueOutcome> + Send + 'static {
    move |s| {
        let issue = &issue;
        if s.request(&issue.request_id)?.is_some() {
            // Answered before (a replay, or a call with the same id that committed first).
            return Err(RegistryError::RequestIdReused(issue.request_id.clone()));
        }
        let mut terminal = match s.terminal(&issue.terminal.serial)? {
            Some(t) => t,
            None if issue.register_if_missing => issue.terminal.clone(),
            None => return Err(RegistryError::TerminalNotFound(issue.terminal.serial.clone())),
        };
        let active = terminal.active_cert.as_deref().map(|c| read_cert(s, c)).transpose()?;
        let req = StationIssue {
            terminal: &terminal.serial,
            class: &issue.terminal.class,
            station: &issue.station,
            reissue: issue.reissue,
        };
        check_station_issue(&req, &terminal, active.as_ref())?;
        check_new_key(s, &issue.cert.key_fingerprint, &terminal.serial)?;
        let mut cert = issue.cert.clone();
        cert.station = Some(issue.station.clone());
        let superseded = install_certificate(s, &mut terminal, &cert, &issue.der, RevocationReason::Superseded)?;
        if hold_until_activation {
            let mut held =
                revocation::revoke_in(s, &cert.serial, RevocationReason::CertificateHold, cert.issued_ms, None)?;
            held.activation_hold = true;
            s.update_cert(&held)?;
        }
        let result = RequestResult {
            kind: "terminal_issue".into(),
            cert_serial: cert.serial.clone(),
            request_hash: issue.request_hash.clone(),
        };
        s.insert_request(&issue.request_id, &result)?;
        s.add_hourly_count(cert.issued_ms / HOUR_MS, &issue.station, HourlyKind::Issued, 1)?;
        Ok(IssueOutcome::Issued { superseded })
    }
}

/// Whether the key `fingerprint` may be certified for `terminal`: never a key revoked for
/// compromise, never another terminal's key (clone defence), and never a key this terminal had
/// before (a replacement is a new key).
pub(crate) fn check_new_key(s: &mut dyn StoreRead, fingerprint: &str, terminal: &str) -> Result<()> {
    if let Some(cert) = s.compromised_by(fingerprint)? {
        return Err(RegistryError::KeyCompromised(cert));
    }
    if let Some(owner) = s.key_owner(fingerprint)? {
        return Err(if owner == terminal {
            RegistryError::KeyReused { terminal: owner }
        } else {
            RegistryError::PublicKeyInUse { terminal: owner }
        });
    }
    Ok(())
}

/// Makes `cert` the terminal's active certificate: the one it replaces is revoked with
/// `replaced_reason`, the key is bound to the terminal, the terminal is `issued`. Returns the
/// replaced certificate's serial.
pub(crate) fn install_certificate(
    s: &mut dyn StoreWrite,
    terminal: &mut TerminalRecord,
    cert: &CertRecord,
    der: &[u8],
    replaced_reason: RevocationReason,
) -> Result<Option<String>> {
    // Refused before anything is written (a refused write writes nothing).
    if s.cert(&cert.serial)?.is_some() {
        return Err(RegistryError::CertSerialExists(cert.serial.clone()));
    }
    let mut superseded = None;
    if let Some(old) = terminal.active_cert.clone() {
        let invalidity = (replaced_reason == RevocationReason::KeyCompromise).then_some(cert.issued_ms);
        // Callers refuse a certificate on hold before this, so the old one is good.
        revocation::revoke_in(s, &old, replaced_reason, cert.issued_ms, invalidity)?;
        superseded = Some(old);
    }
    terminal.state = TerminalState::Issued;
    terminal.active_cert = Some(cert.serial.clone());
    terminal.updated_ms = cert.issued_ms;
    s.insert_cert(cert, der)?;
    s.bind_key(&cert.key_fingerprint, &terminal.serial)?;
    s.update_terminal(terminal)?;
    Ok(superseded)
}

/// What [`crate::Registry::issue_precheck`] found.
#[derive(Debug)]
pub enum Precheck {
    /// The request id was answered before for the same content: with this certificate.
    Replayed {
        /// The stored record.
        cert: Box<CertRecord>,
        /// Its DER.
        der: Vec<u8>,
    },
    /// Not answered before. `station_issue` is the life-cycle verdict, when it was asked for.
    New {
        /// [`check_station_issue`] against the stored terminal.
        station_issue: Option<Result<()>>,
    },
}

/// A [`StationIssue`] that owns its strings (to move into a read).
struct OwnedStationIssue {
    terminal: String,
    class: String,
    station: String,
    reissue: bool,
}

impl OwnedStationIssue {
    fn of(req: &StationIssue<'_>) -> Self {
        Self {
            terminal: req.terminal.to_owned(),
            class: req.class.to_owned(),
            station: req.station.to_owned(),
            reissue: req.reissue,
        }
    }
}

/// [`check_station_issue`] against the terminal as stored in `s`.
fn station_issue_in(s: &mut dyn StoreRead, asked: &OwnedStationIssue, require_registration: bool) -> Result<()> {
    let Some(t) = s.terminal(&asked.terminal)? else {
        return match require_registration {
            true => Err(RegistryError::TerminalNotFound(asked.terminal.clone())),
            false => Ok(()),
        };
    };
    let active = match &t.active_cert {
        Some(c) => s.cert(c)?,
        None => None,
    };
    let req = StationIssue {
        terminal: &asked.terminal,
        class: &asked.class,
        station: &asked.station,
        reissue: asked.reissue,
    };
    check_station_issue(&req, &t, active.as_ref())
}

/// The stored answer to `request_id` if it was answered before for the same content.
fn replayed_in(
    s: &mut dyn StoreRead,
    request_id: &str,
    request_hash: &str,
) -> Result<Option<(Box<CertRecord>, Vec<u8>)>> {
    let Some(result) = s.request(request_id)? else { return Ok(None) };
    if result.request_hash != request_hash {
        return Err(RegistryError::RequestIdReused(request_id.to_owned()));
    }
    let (cert, der) = crate::certificate_in(s, &result.cert_serial)?
        .ok_or_else(|| RegistryError::CertNotFound(result.cert_serial.clone()))?;
    // A station retrying must not be handed a certificate revoked meanwhile (and write it).
    if cert.status != CertStatus::Good && !cert.on_activation_hold() {
        return Err(RegistryError::AlreadyRevoked(cert.serial));
    }
    Ok(Some((Box::new(cert), der)))
}

pub(crate) fn read_cert(s: &mut dyn StoreRead, serial: &str) -> Result<CertRecord> {
    s.cert(serial)?.ok_or_else(|| RegistryError::CertNotFound(serial.into()))
}

impl crate::Registry {
    /// The life-cycle check of [`check_station_issue`] against the stored terminal, for the CA
    /// to refuse before it signs anything. `TerminalNotFound` when the terminal is unknown and
    /// `require_registration` holds.
    pub fn check_station_issue(&self, req: &StationIssue<'_>, require_registration: bool) -> Result<()> {
        let asked = OwnedStationIssue::of(req);
        self.read(move |s| station_issue_in(s, &asked, require_registration))
    }

    /// [`Self::replayed`] and, for a request not answered before, [`Self::check_station_issue`]
    /// (when `asked` is given), in ONE read snapshot: the CA's checks before it signs cost one
    /// read transaction instead of two. A replay's refusals come back as `Err` at once; the
    /// life-cycle verdict is handed back, not returned, so the caller can give its own
    /// refusals (the RA's) first, in the documented order.
    pub fn issue_precheck(
        &self,
        request_id: &str,
        request_hash: &str,
        asked: Option<&StationIssue<'_>>,
        require_registration: bool,
    ) -> Result<Precheck> {
        let (request_id, request_hash) = (request_id.to_owned(), request_hash.to_owned());
        let asked = asked.map(OwnedStationIssue::of);
        self.read(move |s| {
            if let Some((cert, der)) = replayed_in(s, &request_id, &request_hash)? {
                return Ok(Precheck::Replayed { cert, der });
            }
            Ok(Precheck::New { station_issue: asked.map(|a| station_issue_in(s, &a, require_registration)) })
        })
    }

    /// Records a terminal certificate a station asked for, enforcing the invariants inside the
    /// transaction.
    pub fn record_terminal_issue(&self, issue: &TerminalIssue, event: &AuditEvent) -> Result<IssueOutcome> {
        self.record_terminal_issue_held(issue, false, event)
    }

    /// [`Self::record_terminal_issue`], with `hold_until_activation`: the certificate is put on
    /// its activation hold (certificateHold, marked as that hold) in the same transaction that
    /// records it, so no answer ever carries a certificate that relying parties see as good
    /// before activation, and a replay answers with the held certificate.
    pub fn record_terminal_issue_held(
        &self,
        issue: &TerminalIssue,
        hold_until_activation: bool,
        event: &AuditEvent,
    ) -> Result<IssueOutcome> {
        // A replay is answered without writing anything (not even an audit entry of its own:
        // the caller logs the replay): the write's own request check refuses it before anything
        // is written, and the answer comes from `replayed` below. No read before the write: the
        // CA already made that check before signing, and on PostgreSQL a read is three round trips.
        issue.terminal.check_field_lengths()?;
        let recorded = self.write(event, issue_job(issue.clone(), hold_until_activation));
        self.answer_reused(recorded, &issue.request_id, &issue.request_hash)
    }

    /// An issuance's recorded outcome, with a refusal for a reused request id answered: a
    /// replay, or a race with a call of the same id that committed first (a station retrying
    /// while its first call still ran), gets that call's certificate for the same content.
    pub fn answer_reused(
        &self,
        recorded: Result<IssueOutcome>,
        request_id: &str,
        request_hash: &str,
    ) -> Result<IssueOutcome> {
        match recorded {
            Err(RegistryError::RequestIdReused(id)) => {
                self.replayed(request_id, request_hash)?.ok_or(RegistryError::RequestIdReused(id))
            }
            other => other,
        }
    }

    /// [`Self::record_terminal_issue_held`] without waiting for the commit: the returned write
    /// resolves to the outcome once committed. `RequestIdReused` comes back as it is: the caller
    /// answers it with [`Self::answer_reused`].
    pub fn queue_terminal_issue_held(
        &self,
        issue: &TerminalIssue,
        hold_until_activation: bool,
        event: &AuditEvent,
    ) -> Result<PendingWrite<IssueOutcome>> {
        issue.terminal.check_field_lengths()?;
        self.queue(event, issue_job(issue.clone(), hold_until_activation))
    }

    /// The stored outcome of `request_id`, if it was answered before (`RequestIdReused` if
    /// it was answered for different content).
    pub fn replayed(&self, request_id: &str, request_hash: &str) -> Result<Option<IssueOutcome>> {
        let (request_id, request_hash) = (request_id.to_owned(), request_hash.to_owned());
        let replayed = self.read(move |s| replayed_in(s, &request_id, &request_hash))?;
        Ok(replayed.map(|(cert, der)| IssueOutcome::Replayed { cert, der }))
    }

    /// Records the station's confirmation that `cert` is in terminal `serial`. Only the station
    /// the certificate was issued for may confirm it.
    pub fn confirm_provisioning(
        &self,
        serial: &str,
        cert: &str,
        provisioning: &Provisioning,
        event: &AuditEvent,
    ) -> Result<()> {
        let (serial, cert, provisioning) = (serial.to_owned(), cert.to_owned(), provisioning.clone());
        self.write(event, move |s| {
            let (serial, cert, provisioning) = (serial.as_str(), cert.as_str(), &provisioning);
            let mut t = s.terminal(serial)?.ok_or_else(|| RegistryError::TerminalNotFound(serial.into()))?;
            if t.active_cert.as_deref() != Some(cert) {
                return Err(RegistryError::WrongState {
                    terminal: serial.into(),
                    state: t.state.as_str(),
                    action: "confirming a certificate that is not its active one",
                    wanted: "issued with that certificate",
                });
            }
            let mut rec = read_cert(s, cert)?;
            if rec.station.as_deref() != Some(provisioning.station.as_str()) {
                return Err(RegistryError::IssuedByAnotherStation {
                    cert: cert.into(),
                    station: rec.station.clone().unwrap_or_else(|| "unknown".into()),
                });
            }
            // A station re-confirming (a retry, or a re-run that found the device locked) keeps
            // the first record: when the certificate was really written.
            if rec.provisioning.is_some() {
                return Ok(());
            }
            rec.provisioning = Some(provisioning.clone());
            if t.state == TerminalState::Issued {
                t.state = TerminalState::Provisioned;
            }
            t.updated_ms = provisioning.at_ms;
            s.update_cert(&rec)?;
            s.update_terminal(&t)?;
            s.add_hourly_count(provisioning.at_ms / HOUR_MS, &provisioning.station, HourlyKind::Provisioned, 1)
        })
    }
}
