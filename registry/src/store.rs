//! The storage contract: what a backend must offer so that every rule of the registry is written
//! once, above it. A backend stores and fetches records inside one transaction and turns its own
//! uniqueness constraints into the registry's refusals (`TerminalExists`, `CertSerialExists`,
//! `PublicKeyInUse`, `RequestIdReused`, …); it decides nothing else. The life cycle, dual control
//! and revocation logic (`lifecycle.rs`, `approvals.rs`, `revocation.rs`) run against these
//! traits, whichever database is underneath.
//!
//! Why traits for the transaction and an enum for the backend: the rules must see one interface
//! (a trait object keeps them free of generics and of any database type), while the set of
//! backends is closed and each has its own way of running a transaction (redb's group-commit
//! writer thread, PostgreSQL's connection threads), so `Registry` holds a `Backend` enum and
//! hands the rules a `&mut dyn StoreWrite` inside the backend's transaction.

use crate::{
    ActivationEntry, ActivationRecord, Approval, BulkFilter, CertRecord, ChallengeRecord, PrincipalRecord,
    ReleasedCert, RequestResult, Result, RevokedCert, TerminalFilter, TerminalRecord,
};

/// Names of the durable counters (`StoreWrite::advance`).
pub(crate) mod counter {
    /// Commit order of revocations and releases (delta CRLs).
    pub const REVOCATION_SEQ: &str = "revocation_seq";
    /// The last CRL number taken.
    pub const CRL_NUMBER: &str = "crl_number";
    /// The first issuance ordinal never reserved.
    pub const ORDINAL_HIGH_WATER: &str = "ordinal_high_water";
    /// The last activation-log number taken (`StoreWrite::add_activation`). Not exported: a
    /// copy re-adds the activations in log order, which numbers them the same.
    pub const ACTIVATION_SEQ: &str = "activation_seq";
}

/// The dimensions terminals are counted by (`TerminalCounts`) and indexed by for filtered lists.
pub(crate) mod dimension {
    /// `TerminalState::as_str`.
    pub const STATE: &str = "state";
    /// Class I, II or III.
    pub const CLASS: &str = "class";
    /// Manufacturer code.
    pub const MANUFACTURER: &str = "manufacturer";
}

/// Reads, inside a read snapshot or a write transaction.
pub(crate) trait StoreRead {
    fn terminal(&mut self, serial: &str) -> Result<Option<TerminalRecord>>;
    /// Terminals matching `filter` in serial order after `after`; at most `limit + 1` (so the
    /// caller knows whether a next page exists).
    fn list_terminals(
        &mut self,
        filter: &TerminalFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TerminalRecord>>;
    /// The running counts of terminals (kept by `insert_terminal`/`update_terminal`).
    fn terminal_counts(&mut self) -> Result<crate::TerminalCounts>;
    /// The hourly counts from hour `since_hour` on, in (hour, station, kind) order.
    fn hourly_counts(&mut self, since_hour: u64) -> Result<Vec<crate::HourlyCount>>;
    /// Terminals a bulk filter covers that have an active certificate.
    fn terminals_with_active_cert(&mut self, filter: &BulkFilter) -> Result<Vec<TerminalRecord>>;
    fn cert(&mut self, serial: &str) -> Result<Option<CertRecord>>;
    fn cert_der(&mut self, serial: &str) -> Result<Option<Vec<u8>>>;
    fn certificates(&mut self) -> Result<Vec<CertRecord>>;
    /// The terminal a key (SM3 of its SPKI) was certified for.
    fn key_owner(&mut self, fingerprint: &str) -> Result<Option<String>>;
    /// The certificate whose revocation for compromise bars this key.
    fn compromised_by(&mut self, fingerprint: &str) -> Result<Option<String>>;
    fn request(&mut self, id: &str) -> Result<Option<RequestResult>>;
    fn principal(&mut self, name: &str) -> Result<Option<PrincipalRecord>>;
    fn principals(&mut self) -> Result<Vec<PrincipalRecord>>;
    fn approval(&mut self, id: &str) -> Result<Option<Approval>>;
    fn approvals(&mut self) -> Result<Vec<Approval>>;
    fn activations(&mut self, terminal: &str) -> Result<Vec<ActivationRecord>>;
    /// Activations with a log number above `after`, in log order, at most `limit`.
    fn activations_after(&mut self, after: u64, limit: usize) -> Result<Vec<ActivationEntry>>;
    /// How many challenges handed to `operator` are unused and unexpired at `now_ms`.
    fn challenges_outstanding(&mut self, operator: &str, now_ms: u64) -> Result<u64>;
    /// An activation challenge not yet used (expired ones may still be stored).
    fn challenge(&mut self, challenge: &[u8]) -> Result<Option<ChallengeRecord>>;
    fn counter(&mut self, name: &str) -> Result<u64>;
    fn revoked(&mut self) -> Result<Vec<RevokedCert>>;
    fn released(&mut self) -> Result<Vec<ReleasedCert>>;
    /// The stored bytes of audit entry `seq`.
    fn audit_raw(&mut self, seq: u64) -> Result<Option<Vec<u8>>>;
    /// The last audit entry's key and bytes.
    fn audit_last_raw(&mut self) -> Result<Option<(u64, Vec<u8>)>>;
    /// The last `n` entries' bytes, newest first.
    fn audit_newest_raw(&mut self, n: usize) -> Result<Vec<Vec<u8>>>;
    fn audit_len(&mut self) -> Result<u64>;
    /// Up to `limit` entries (key and bytes) the audit index lists under `by`, with keys below
    /// `before`, newest first.
    fn audit_by_raw(&mut self, by: &crate::AuditBy, before: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>>;
    /// Every audit entry in key order, handed to `f` one at a time.
    fn audit_scan(&mut self, f: &mut dyn FnMut(u64, &[u8]) -> Result<()>) -> Result<()>;
    /// Every checkpoint's key and bytes, in key order.
    fn checkpoints_raw(&mut self) -> Result<Vec<(u64, Vec<u8>)>>;
    fn last_checkpoint_raw(&mut self) -> Result<Option<Vec<u8>>>;
}

/// Writes, inside one transaction that commits (durably) or writes nothing.
pub(crate) trait StoreWrite: StoreRead {
    /// `TerminalExists` when the serial is taken. This and `update_terminal` keep the running
    /// counts and the filter indexes in the same transaction.
    fn insert_terminal(&mut self, t: &TerminalRecord) -> Result<()>;
    /// Stores `t`, inserting it when new (a terminal registered by its first issue).
    fn update_terminal(&mut self, t: &TerminalRecord) -> Result<()>;
    /// `CertSerialExists` when the serial is taken; binds no key.
    fn insert_cert(&mut self, rec: &CertRecord, der: &[u8]) -> Result<()>;
    fn update_cert(&mut self, rec: &CertRecord) -> Result<()>;
    /// Binds a key to a terminal; `PublicKeyInUse` (or `KeyReused`) when it is bound already.
    fn bind_key(&mut self, fingerprint: &str, terminal: &str) -> Result<()>;
    fn mark_compromised(&mut self, fingerprint: &str, cert: &str) -> Result<()>;
    /// `RequestIdReused` when the id is taken.
    fn insert_request(&mut self, id: &str, result: &RequestResult) -> Result<()>;
    /// `PrincipalExists` when the name is taken.
    fn insert_principal(&mut self, p: &PrincipalRecord) -> Result<()>;
    fn update_principal(&mut self, p: &PrincipalRecord) -> Result<()>;
    /// `ApprovalExists` when the id is taken.
    fn insert_approval(&mut self, a: &Approval) -> Result<()>;
    fn update_approval(&mut self, a: &Approval) -> Result<()>;
    /// Appends an activation, numbered next in the activation log (`counter::ACTIVATION_SEQ`);
    /// returns its number for this terminal (1, 2, …).
    fn add_activation(&mut self, a: &ActivationRecord) -> Result<u64>;
    /// Stores a new activation challenge; prunes expired ones (at `now_ms`).
    fn put_challenge(&mut self, challenge: &[u8], rec: &ChallengeRecord, now_ms: u64) -> Result<()>;
    /// Removes an activation challenge (used, so never again).
    fn remove_challenge(&mut self, challenge: &[u8]) -> Result<()>;
    /// `NonceReplayed` when `nonce` is stored and not expired at `now_ms`; prunes expired ones.
    fn use_nonce(&mut self, nonce: &[u8], now_ms: u64, expires_ms: u64) -> Result<()>;
    /// Adds `n` to the count of `kind` at `station` in `hour`.
    fn add_hourly_count(&mut self, hour: u64, station: &str, kind: crate::HourlyKind, n: u64) -> Result<()>;
    /// Adds `n` to counter `name`; returns the value before.
    fn advance(&mut self, name: &str, n: u64) -> Result<u64>;
    fn put_revoked(&mut self, r: &RevokedCert) -> Result<()>;
    fn remove_revoked(&mut self, serial: &str) -> Result<()>;
    fn put_released(&mut self, r: &ReleasedCert) -> Result<()>;
    fn remove_released(&mut self, serial: &str) -> Result<()>;
    /// Stores audit entry `seq` (`None` deletes it: test hooks only).
    fn put_audit_raw(&mut self, seq: u64, bytes: Option<&[u8]>) -> Result<()>;
    fn put_checkpoint_raw(&mut self, seq: u64, bytes: &[u8]) -> Result<()>;
    /// Removes checkpoints after `seq` (test hooks only).
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    fn cut_checkpoints_after(&mut self, seq: u64) -> Result<()>;
    /// Stores approval bytes as given (test hooks only).
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    fn put_approval_raw(&mut self, id: &str, bytes: &[u8]) -> Result<()>;
}

/// Every durable record of a registry, for copying it into another backend (nonces, which
/// expire within minutes, are left behind).
#[derive(Default)]
pub(crate) struct Export {
    pub terminals: Vec<TerminalRecord>,
    pub certs: Vec<(CertRecord, Vec<u8>)>,
    pub pubkeys: Vec<(String, String)>,
    pub compromised: Vec<(String, String)>,
    pub requests: Vec<(String, RequestResult)>,
    pub principals: Vec<PrincipalRecord>,
    pub approvals: Vec<Approval>,
    /// In activation-log order (re-adding them numbers them the same).
    pub activations: Vec<ActivationRecord>,
    pub counters: Vec<(String, u64)>,
    pub revoked: Vec<RevokedCert>,
    pub released: Vec<ReleasedCert>,
    pub audit: Vec<(u64, Vec<u8>)>,
    pub checkpoints: Vec<(u64, Vec<u8>)>,
    pub hourly: Vec<crate::HourlyCount>,
}

impl Export {
    /// Writes every record but the counters (each backend sets those its own way) into `s`, in
    /// one transaction of the caller's.
    pub(crate) fn write_records(&self, s: &mut dyn StoreWrite) -> crate::Result<()> {
        // Certificates before terminals: a terminal names its active certificate.
        for (rec, der) in &self.certs {
            s.insert_cert(rec, der)?;
        }
        for t in &self.terminals {
            s.insert_terminal(t)?;
        }
        for (fingerprint, terminal) in &self.pubkeys {
            s.bind_key(fingerprint, terminal)?;
        }
        for (fingerprint, cert) in &self.compromised {
            s.mark_compromised(fingerprint, cert)?;
        }
        for (id, result) in &self.requests {
            s.insert_request(id, result)?;
        }
        for p in &self.principals {
            s.insert_principal(p)?;
        }
        for a in &self.approvals {
            s.insert_approval(a)?;
        }
        for a in &self.activations {
            s.add_activation(a)?;
        }
        for r in &self.revoked {
            s.put_revoked(r)?;
        }
        for r in &self.released {
            s.put_released(r)?;
        }
        for (seq, bytes) in &self.audit {
            s.put_audit_raw(*seq, Some(bytes))?;
        }
        for (seq, bytes) in &self.checkpoints {
            s.put_checkpoint_raw(*seq, bytes)?;
        }
        for c in &self.hourly {
            s.add_hourly_count(c.hour, &c.station, c.kind, c.n)?;
        }
        Ok(())
    }
}
