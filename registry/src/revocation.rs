//! Revocation state beyond single revokes: the `revoked` and `released` indexes that CRLs and
//! OCSP are built from, the durable CRL number, certificateHold release. Bulk revocation under
//! dual control is in `approvals.rs`.

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use crate::{
    AuditEvent, CERTS, CertRecord, CertStatus, RegistryError, ReleasedCert, Result, RevocationReason,
    RevocationSnapshot, RevokedCert, TERMINALS, TerminalRecord, from_json, to_json,
};

pub(crate) const REVOKED: TableDefinition<&str, &[u8]> = TableDefinition::new("revoked");
pub(crate) const RELEASED: TableDefinition<&str, &[u8]> = TableDefinition::new("released");
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Keys whose certificate was revoked for key or CA compromise: never certified again.
pub(crate) const COMPROMISED_KEYS: TableDefinition<&str, &str> = TableDefinition::new("compromised_keys");
const REVOCATION_SEQ: &str = "revocation_seq";

const CRL_NUMBER: &str = "crl_number";
const REVOKED_INDEXED: &str = "revoked_indexed";
const ORDINAL_HIGH_WATER: &str = "ordinal_high_water";

/// Registries made before the `revoked` index existed get it built from `certs`, once.
pub(crate) fn index_revoked_once(txn: &WriteTransaction) -> Result<()> {
    let mut meta = txn.open_table(META)?;
    if meta.get(REVOKED_INDEXED)?.is_some() {
        return Ok(());
    }
    let mut revoked = txn.open_table(REVOKED)?;
    for item in txn.open_table(CERTS)?.iter()? {
        let rec: CertRecord = from_json(item?.1.value())?;
        if let Some(entry) = RevokedCert::of(&rec, 0) {
            revoked.insert(rec.serial.as_str(), to_json(&entry)?.as_slice())?;
        }
    }
    meta.insert(REVOKED_INDEXED, 1)?;
    Ok(())
}

/// Advances the durable counter `key` by `n` inside `txn`; returns its value before.
pub(crate) fn advance(txn: &WriteTransaction, key: &str, n: u64) -> Result<u64> {
    let mut meta = txn.open_table(META)?;
    let before = meta.get(key)?.map_or(0, |v| v.value());
    meta.insert(key, before + n)?;
    Ok(before)
}

/// The next commit-order number for a revocation or release, inside `txn`.
fn next_seq(txn: &WriteTransaction) -> Result<u64> {
    Ok(advance(txn, REVOCATION_SEQ, 1)? + 1)
}

/// Records in the indexes that `rec` is now revoked as its status says: `revoked` (with a
/// commit-order number), not `released`, and its key as compromised when that is the reason.
pub(crate) fn index_revocation(txn: &WriteTransaction, rec: &CertRecord) -> Result<()> {
    let CertStatus::Revoked { reason, .. } = rec.status else { return Ok(()) };
    let Some(entry) = RevokedCert::of(rec, next_seq(txn)?) else { return Ok(()) };
    txn.open_table(REVOKED)?.insert(rec.serial.as_str(), to_json(&entry)?.as_slice())?;
    txn.open_table(RELEASED)?.remove(rec.serial.as_str())?;
    if matches!(reason, RevocationReason::KeyCompromise | RevocationReason::CaCompromise) {
        txn.open_table(COMPROMISED_KEYS)?.insert(rec.key_fingerprint.as_str(), rec.serial.as_str())?;
    }
    Ok(())
}

/// Marks `serial` revoked inside `txn`: certificate record, indexes, and — except for a hold,
/// which is temporary — the terminal loses it as its active certificate. A certificate on hold
/// may be revoked for good (RFC 5280 §5.3.1); any other revoked one is refused.
pub(crate) fn revoke_in(
    txn: &WriteTransaction,
    serial: &str,
    reason: RevocationReason,
    at_ms: u64,
    invalidity_ms: Option<u64>,
) -> Result<CertRecord> {
    let mut certs = txn.open_table(CERTS)?;
    let mut rec: CertRecord = certs
        .get(serial)?
        .map(|v| from_json(v.value()))
        .transpose()?
        .ok_or_else(|| RegistryError::CertNotFound(serial.into()))?;
    let on_hold = matches!(rec.status, CertStatus::Revoked { reason: RevocationReason::CertificateHold, .. });
    if rec.status != CertStatus::Good && !(on_hold && reason != RevocationReason::CertificateHold) {
        return Err(RegistryError::AlreadyRevoked(serial.into()));
    }
    rec.status = CertStatus::Revoked { at_ms, reason, invalidity_ms };
    certs.insert(serial, to_json(&rec)?.as_slice())?;
    drop(certs);
    index_revocation(txn, &rec)?;
    if let (crate::CertSubject::Terminal { serial: ts }, false) =
        (&rec.subject, reason == RevocationReason::CertificateHold)
    {
        let mut terminals = txn.open_table(TERMINALS)?;
        let t: Option<TerminalRecord> = terminals.get(ts.as_str())?.map(|v| from_json(v.value())).transpose()?;
        if let Some(mut t) = t.filter(|t| t.active_cert.as_deref() == Some(serial)) {
            t.active_cert = None;
            t.state = crate::TerminalState::Revoked;
            t.updated_ms = at_ms;
            terminals.insert(ts.as_str(), to_json(&t)?.as_slice())?;
        }
    }
    Ok(rec)
}

impl crate::Registry {
    /// Every revoked certificate (the `revoked` index), in serial order.
    pub fn revoked_certificates(&self) -> Result<Vec<RevokedCert>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REVOKED)?;
        table.iter()?.map(|item| from_json(item?.1.value())).collect()
    }

    /// Every revocation and release, and the highest commit-order number among them, from one
    /// consistent read.
    pub fn revocation_snapshot(&self) -> Result<RevocationSnapshot> {
        let txn = self.db.begin_read()?;
        let revoked = txn.open_table(REVOKED)?.iter()?.map(|item| from_json(item?.1.value())).collect::<Result<_>>()?;
        let released =
            txn.open_table(RELEASED)?.iter()?.map(|item| from_json(item?.1.value())).collect::<Result<_>>()?;
        let seq = txn.open_table(META)?.get(REVOCATION_SEQ)?.map_or(0, |v| v.value());
        Ok(RevocationSnapshot { revoked, released, seq })
    }

    /// Certificates released from hold at or after `since_ms`.
    pub fn released_since(&self, since_ms: u64) -> Result<Vec<ReleasedCert>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RELEASED)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let r: ReleasedCert = from_json(item?.1.value())?;
            if r.at_ms >= since_ms {
                out.push(r);
            }
        }
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
        self.submit(move |txn| Ok(advance(txn, CRL_NUMBER, n.max(1))? + 1))
    }

    /// Reserves `n` issuance ordinals, durably: returns the first; the next call starts after
    /// the last. Unused ordinals (a refusal, a restart) are skipped, never handed out twice — so
    /// a CRL partition of `size` consecutive ordinals never covers more than `size` certificates.
    pub fn reserve_ordinals(&self, n: u64) -> Result<u64> {
        // The counter holds the first ordinal never reserved.
        self.submit(move |txn| advance(txn, ORDINAL_HIGH_WATER, n))
    }

    /// The first ordinal never reserved (every ordinal handed out is below it).
    pub fn ordinal_high_water(&self) -> Result<u64> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(META)?.get(ORDINAL_HIGH_WATER)?.map_or(0, |v| v.value()))
    }

    /// Releases a certificate from hold (`certificateHold` only; any other reason is final).
    pub fn unrevoke(&self, serial: &str, at_ms: u64, event: &AuditEvent) -> Result<CertRecord> {
        let serial = serial.to_owned();
        self.write(event, move |txn| {
            let mut certs = txn.open_table(CERTS)?;
            let mut rec: CertRecord = certs
                .get(serial.as_str())?
                .map(|v| from_json(v.value()))
                .transpose()?
                .ok_or_else(|| RegistryError::CertNotFound(serial.clone()))?;
            if !matches!(rec.status, CertStatus::Revoked { reason: RevocationReason::CertificateHold, .. }) {
                return Err(RegistryError::NotOnHold(serial.clone()));
            }
            rec.status = CertStatus::Good;
            certs.insert(serial.as_str(), to_json(&rec)?.as_slice())?;
            txn.open_table(REVOKED)?.remove(serial.as_str())?;
            let released =
                ReleasedCert { serial: serial.clone(), at_ms, partition: rec.crl_partition, seq: next_seq(txn)? };
            txn.open_table(RELEASED)?.insert(serial.as_str(), to_json(&released)?.as_slice())?;
            Ok(rec)
        })
    }
}
