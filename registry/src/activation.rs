//! Activation (HSTS 7.4.5/7.4.6, DESIGN §4 "activate"): single-use challenges, proof-of-presence
//! and manual activations, and the activation hold that `hold_until_activation` places at
//! issuance. Signatures are checked by the caller (the registry holds no keys); what must hold
//! at commit — the challenge unused and unexpired, the certificate still the terminal's active
//! one, only the activation hold lifted — is checked here, inside the transaction.

use crate::lifecycle::read_cert;
use crate::revocation::release_in;
use crate::store::StoreWrite;
use crate::{
    ActivationMethod, ActivationRecord, AuditEvent, CertStatus, ChallengeRecord, RegistryError, Result, TerminalRecord,
    TerminalState,
};

/// What recording an activation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Activated {
    /// The activation's number for this terminal (1, 2, …).
    pub number: u64,
    /// The certificate released from its activation hold, if it was on one.
    pub released: Option<String>,
}

fn activatable(s: &mut dyn StoreWrite, terminal: &str) -> Result<TerminalRecord> {
    let t = s.terminal(terminal)?.ok_or_else(|| RegistryError::TerminalNotFound(terminal.into()))?;
    if !matches!(t.state, TerminalState::Provisioned | TerminalState::Active) {
        return Err(RegistryError::WrongState {
            terminal: terminal.into(),
            state: t.state.as_str(),
            action: "activation",
            wanted: "provisioned or active",
        });
    }
    Ok(t)
}

/// Records `a` for a provisioned or active terminal and lifts the activation hold of its active
/// certificate — that hold only: any other hold (a monitor's, an administrator's) is refused.
fn activate_in(s: &mut dyn StoreWrite, a: &ActivationRecord) -> Result<Activated> {
    let mut t = activatable(s, &a.terminal)?;
    let mut released = None;
    if let Some(serial) = t.active_cert.clone() {
        let cert = read_cert(s, &serial)?;
        match &cert.status {
            CertStatus::Good => {}
            _ if cert.on_activation_hold() => {
                release_in(s, cert, a.at_ms)?;
                released = Some(serial);
            }
            _ if cert.on_hold() => return Err(RegistryError::OnHold(serial)),
            CertStatus::Revoked { .. } => return Err(RegistryError::AlreadyRevoked(serial)),
        }
    }
    let number = s.add_activation(a)?;
    t.state = TerminalState::Active;
    t.updated_ms = a.at_ms;
    s.update_terminal(&t)?;
    Ok(Activated { number, released })
}

impl crate::Registry {
    /// Records an activation without a terminal signature (an operator's record, or an
    /// administrator's manual override); the terminal must be provisioned (or already active).
    /// Lifts the activation hold, never another hold.
    pub fn activate(&self, a: &ActivationRecord, event: &AuditEvent) -> Result<Activated> {
        let a = a.clone();
        self.write(event, move |s| activate_in(s, &a))
    }

    /// Hands out `challenge` for the activation of `rec.terminal`, whose active certificate must
    /// be `rec.certificate` (good or on its activation hold).
    pub fn new_activation_challenge(&self, challenge: &[u8], rec: &ChallengeRecord, event: &AuditEvent) -> Result<()> {
        self.new_activation_challenge_within(challenge, rec, u64::MAX, event)
    }

    /// As [`Self::new_activation_challenge`], refused (`TooManyChallenges`) when `rec.operator`
    /// already holds `limit` unused, unexpired challenges: counted inside the write, so racing
    /// requests (on any instance sharing the registry) cannot pass it together. Each challenge is
    /// a stored write; this bounds an operator to `limit` per challenge lifetime.
    pub fn new_activation_challenge_within(
        &self,
        challenge: &[u8],
        rec: &ChallengeRecord,
        limit: u64,
        event: &AuditEvent,
    ) -> Result<()> {
        let (challenge, rec) = (challenge.to_vec(), rec.clone());
        self.write(event, move |s| {
            if s.challenges_outstanding(&rec.operator, rec.issued_ms)? >= limit {
                return Err(RegistryError::TooManyChallenges { operator: rec.operator.clone(), limit });
            }
            let t = activatable(s, &rec.terminal)?;
            if t.active_cert.as_deref() != Some(rec.certificate.as_str()) {
                return Err(RegistryError::WrongState {
                    terminal: rec.terminal.clone(),
                    state: t.state.as_str(),
                    action: "an activation challenge for a certificate that is not its active one",
                    wanted: "that certificate active",
                });
            }
            s.put_challenge(&challenge, &rec, rec.issued_ms)
        })
    }

    /// The challenge record, if it was handed out and not used yet (expired or not).
    pub fn activation_challenge(&self, challenge: &[u8]) -> Result<Option<ChallengeRecord>> {
        let challenge = challenge.to_vec();
        self.read(move |s| s.challenge(&challenge))
    }

    /// Records a proof-of-presence activation whose statement signature the caller verified
    /// under `a.certificate`: the challenge is used up in the same transaction (a replay finds
    /// none), must not be expired at `a.at_ms`, must be for this terminal and certificate, and
    /// the certificate must still be the terminal's active one.
    pub fn activate_with_presence(
        &self,
        challenge: &[u8],
        a: &ActivationRecord,
        event: &AuditEvent,
    ) -> Result<Activated> {
        let (challenge, a) = (challenge.to_vec(), a.clone());
        self.write(event, move |s| {
            let rec = s.challenge(&challenge)?.ok_or(RegistryError::ChallengeUnknown)?;
            if rec.terminal != a.terminal {
                return Err(RegistryError::ChallengeUnknown);
            }
            if a.at_ms > rec.expires_ms {
                return Err(RegistryError::ChallengeExpired);
            }
            let t = activatable(s, &a.terminal)?;
            let signed_under = a.certificate.as_deref();
            if a.method != ActivationMethod::Presence
                || signed_under != Some(rec.certificate.as_str())
                || t.active_cert.as_deref() != signed_under
            {
                return Err(RegistryError::WrongState {
                    terminal: a.terminal.clone(),
                    state: t.state.as_str(),
                    action: "a presence activation under a certificate that is not its active one",
                    wanted: "the challenge's certificate active",
                });
            }
            s.remove_challenge(&challenge)?;
            activate_in(s, &a)
        })
    }
}
