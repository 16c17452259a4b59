//! Revocation state beyond single revokes: the `revoked` and `released` indexes that CRLs and
//! OCSP are built from, the durable CRL number, certificateHold release. Bulk revocation under
//! dual control is in `approvals.rs`.

use crate::store::{StoreWrite, counter};
use crate::{
    AuditEvent, CertRecord, CertStatus, RegistryError, ReleasedCert, Result, RevocationReason, RevocationSnapshot,
    RevokedCert,
};

/// The next commit-order number for a revocation or release.
fn next_seq(s: &mut dyn StoreWrite) -> Result<u64> {
    Ok(s.advance(counter::REVOCATION_SEQ, 1)? + 1)
}

/// Records in the indexes that `rec` is now revoked as its status says: `revoked` (with a
/// commit-order number), not `released`, and its key as compromised when that is the reason.
fn index_revocation(s: &mut dyn StoreWrite, rec: &CertRecord) -> Result<()> {
    let CertStatus::Revoked { reason, .. } = rec.status else { return Ok(()) };
    let seq = next_seq(s)?;
    let Some(entry) = RevokedCert::of(rec, seq) else { return Ok(()) };
    s.put_revoked(&entry)?;
    s.remove_released(&rec.serial)?;
    if matches!(reason, RevocationReason::KeyCompromise | RevocationReason::CaCompromise) {
        s.mark_compromised(&rec.key_fingerprint, &rec.serial)?;
    }
    Ok(())
}

/// Marks `serial` revoked: certificate record, indexes, and — except for a hold, which is
/// temporary — the terminal loses it as its active certificate. A certificate on hold may be
/// revoked for good (RFC 5280 §5.3.1); any other revoked one is refused.
pub(crate) fn revoke_in(
    s: &mut dyn StoreWrite,
    serial: &str,
    reason: RevocationReason,
    at_ms: u64,
    invalidity_ms: Option<u64>,
) -> Result<CertRecord> {
    let mut rec = s.cert(serial)?.ok_or_else(|| RegistryError::CertNotFound(serial.into()))?;
    let on_hold = rec.on_hold();
    // A hold over the activation hold takes it over: the hold is then the placer's, and an
    // activation no longer lifts it.
    let takes_over = rec.on_activation_hold() && reason == RevocationReason::CertificateHold;
    if rec.status != CertStatus::Good && !(on_hold && reason != RevocationReason::CertificateHold) && !takes_over {
        return Err(RegistryError::AlreadyRevoked(serial.into()));
    }
    rec.activation_hold = false;
    rec.status = CertStatus::Revoked { at_ms, reason, invalidity_ms };
    s.update_cert(&rec)?;
    index_revocation(s, &rec)?;
    if let (crate::CertSubject::Terminal { serial: ts }, false) =
        (&rec.subject, reason == RevocationReason::CertificateHold)
        && let Some(mut t) = s.terminal(ts)?.filter(|t| t.active_cert.as_deref() == Some(serial))
    {
        t.active_cert = None;
        t.state = crate::TerminalState::Revoked;
        t.updated_ms = at_ms;
        s.update_terminal(&t)?;
    }
    Ok(rec)
}

/// Releases `rec` (on hold) from its hold: good again, out of `revoked`, into `released` (delta
/// CRLs say removeFromCRL).
pub(crate) fn release_in(s: &mut dyn StoreWrite, mut rec: CertRecord, at_ms: u64) -> Result<CertRecord> {
    rec.status = CertStatus::Good;
    rec.activation_hold = false;
    s.update_cert(&rec)?;
    s.remove_revoked(&rec.serial)?;
    let released = ReleasedCert { serial: rec.serial.clone(), at_ms, partition: rec.crl_partition, seq: next_seq(s)? };
    s.put_released(&released)?;
    Ok(rec)
}

impl crate::Registry {
    /// Every revoked certificate (the `revoked` index), in serial order.
    pub fn revoked_certificates(&self) -> Result<Vec<RevokedCert>> {
        self.read(|s| s.revoked())
    }

    /// Every revocation and release, and the highest commit-order number among them, from one
    /// consistent read.
    pub fn revocation_snapshot(&self) -> Result<RevocationSnapshot> {
        self.read(|s| {
            Ok(RevocationSnapshot {
                revoked: s.revoked()?,
                released: s.released()?,
                seq: s.counter(counter::REVOCATION_SEQ)?,
            })
        })
    }

    /// Certificates released from hold at or after `since_ms`.
    pub fn released_since(&self, since_ms: u64) -> Result<Vec<ReleasedCert>> {
        let mut out = self.read(|s| s.released())?;
        out.retain(|r| r.at_ms >= since_ms);
        Ok(out)
    }

    /// Takes the next CRL number, durably: strictly increasing across restarts, never reused
    /// (RFC 5280 §5.2.3). Full, delta and partition CRLs share the sequence.
    pub fn next_crl_number(&self) -> Result<u64> {
        self.next_crl_numbers(1)
    }

    /// Takes `n` consecutive CRL numbers in one durable write; returns the first.
    pub fn next_crl_numbers(&self, n: u64) -> Result<u64> {
        // The counter holds the last number taken.
        self.submit(move |s| Ok(s.advance(counter::CRL_NUMBER, n.max(1))? + 1))
    }

    /// Reserves `n` issuance ordinals, durably: returns the first; the next call starts after
    /// the last. Unused ordinals (a refusal, a restart) are skipped, never handed out twice — so
    /// a CRL partition of `size` consecutive ordinals never covers more than `size` certificates.
    pub fn reserve_ordinals(&self, n: u64) -> Result<u64> {
        // The counter holds the first ordinal never reserved.
        self.submit(move |s| s.advance(counter::ORDINAL_HIGH_WATER, n))
    }

    /// The first ordinal never reserved (every ordinal handed out is below it).
    pub fn ordinal_high_water(&self) -> Result<u64> {
        self.read(|s| s.counter(counter::ORDINAL_HIGH_WATER))
    }

    /// Releases a certificate from hold (`certificateHold` only; any other reason is final).
    /// The activation hold is refused: only an activation lifts it.
    pub fn unrevoke(&self, serial: &str, at_ms: u64, event: &AuditEvent) -> Result<CertRecord> {
        let serial = serial.to_owned();
        self.write(event, move |s| {
            let rec = s.cert(&serial)?.ok_or_else(|| RegistryError::CertNotFound(serial.clone()))?;
            if !rec.on_hold() {
                return Err(RegistryError::NotOnHold(serial.clone()));
            }
            if rec.on_activation_hold() {
                return Err(RegistryError::ActivationHold(serial.clone()));
            }
            release_in(s, rec, at_ms)
        })
    }
}
