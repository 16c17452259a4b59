//! `registry`: the CA's durable state, in an embedded redb database (the default) or a PostgreSQL
//! database that several CA instances share (`backend/`, one contract in `store.rs`).
//!
//! Every state change is one write transaction that writes the record, its indexes and an audit
//! entry together, and returns only after the commit is durable. The
//! invariants that must never break — one active certificate per terminal, unique certificate
//! serials, a public key never reused by another terminal, one result per request id — are
//! checked inside that transaction, so two racing requests cannot both pass. Policy (may this
//! caller issue for this serial?) is decided elsewhere; this crate only stores.

// Before the modules: backends convert their engines' errors with it.
/// `impl From<E> for RegistryError` as `Storage(e.to_string())`, for each `E`.
macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for RegistryError {
            fn from(e: $t) -> Self {
                Self::Storage(e.to_string())
            }
        }
    )*};
}

mod activation;
pub mod anchor;
mod approvals;
pub mod audit;
mod auth_failures;
mod backend;
mod lifecycle;
mod published_crls;
pub mod records;
mod revocation;
mod store;
#[cfg(feature = "test-hooks")]
pub mod testing;

use std::path::Path;

use backend::Backend;
use store::{StoreRead, StoreWrite};

pub use activation::Activated;
pub use approvals::Decision;
pub use audit::{AuditBy, AuditCheckpoint, AuditEntry, AuditEvent, ChainBreak, ChainSummary};
pub use auth_failures::{FAILURE_BLOCKED_MAX, FAILURE_BUCKET_MS, FAILURE_WINDOW_BUCKETS, FailureKind};
/// The PostgreSQL schema version this build serves.
pub use backend::postgres::SCHEMA_VERSION as POSTGRES_SCHEMA_VERSION;
pub use backend::{PendingWrite, WriterStats};
pub use lifecycle::{Precheck, StationIssue, check_station_issue};
pub use published_crls::StoredCrl;
pub use records::*;

/// Why a registry operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The database failed (I/O, corruption, full disk).
    #[error("storage: {0}")]
    Storage(String),
    /// A stored record does not parse.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The terminal is already registered.
    #[error("terminal {0} is already registered")]
    TerminalExists(String),
    /// No such terminal.
    #[error("terminal {0} is not registered")]
    TerminalNotFound(String),
    /// The terminal has an active certificate and this is not an explicit re-issue.
    #[error("terminal {terminal} already has active certificate {cert}")]
    AlreadyHasActiveCertificate {
        /// Terminal serial.
        terminal: String,
        /// Its active certificate.
        cert: String,
    },
    /// The public key was already certified for another terminal (clone defence).
    #[error("public key is already in use by terminal {terminal}")]
    PublicKeyInUse {
        /// The terminal that has it.
        terminal: String,
    },
    /// A certificate with this serial exists.
    #[error("certificate serial {0} already exists")]
    CertSerialExists(String),
    /// The request id was used before for a different request.
    #[error("request id {0} was already used for a different request")]
    RequestIdReused(String),
    /// No such certificate.
    #[error("certificate {0} not found")]
    CertNotFound(String),
    /// Already revoked.
    #[error("certificate {0} is already revoked")]
    AlreadyRevoked(String),
    /// The terminal is not in a state that allows this.
    #[error("terminal {terminal} is {state}; {action} needs it {wanted}")]
    WrongState {
        /// Terminal serial.
        terminal: String,
        /// Its state.
        state: &'static str,
        /// What was attempted.
        action: &'static str,
        /// States that allow it.
        wanted: &'static str,
    },
    /// The principal exists.
    #[error("principal {0} already exists")]
    PrincipalExists(String),
    /// No such principal.
    #[error("principal {0} not found")]
    PrincipalNotFound(String),
    /// The key was certified before and that certificate was revoked for key (or CA) compromise.
    #[error("this public key was certified by {0}, revoked for key compromise; it is never certified again")]
    KeyCompromised(String),
    /// Lifting a hold on a certificate that is not on hold.
    #[error("certificate {0} is not on hold (only certificateHold can be lifted)")]
    NotOnHold(String),
    /// A bulk revocation must name a manufacturer, model or lot.
    #[error("a bulk revocation must name a manufacturer, model or lot")]
    EmptyFilter,
    /// A terminal's text field is longer than [`TERMINAL_FIELD_MAX_BYTES`].
    #[error("terminal {field} is {len} bytes; at most {max} are allowed")]
    FieldTooLong {
        /// Which field: serial, class, manufacturer, model or lot.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// No such approval.
    #[error("approval {0} not found")]
    ApprovalNotFound(String),
    /// The approval id is taken.
    #[error("approval {0} already exists")]
    ApprovalExists(String),
    /// Already approved or rejected.
    #[error("approval {0} was already decided")]
    ApprovalDecided(String),
    /// Dual control: the requester cannot approve.
    #[error("{0} asked for this; a second administrator must decide it")]
    SameApprover(String),
    /// The nonce was seen within its window.
    #[error("nonce replayed")]
    NonceReplayed,
    /// The request names another class than the terminal was registered with.
    #[error("terminal {terminal} is registered as class {registered}, not {requested}")]
    ClassMismatch {
        /// Terminal serial.
        terminal: String,
        /// Class in the registry.
        registered: String,
        /// Class asked for.
        requested: String,
    },
    /// A terminal in service (provisioned, active) or revoked gets a new key only through a
    /// re-key that a second administrator approves.
    #[error(
        "terminal {terminal} is {state}: a new key needs an administrator's re-key request and a second administrator's approval"
    )]
    RekeyNeedsApproval {
        /// Terminal serial.
        terminal: String,
        /// Its state.
        state: &'static str,
    },
    /// Only the station that asked for a certificate may replace or confirm it.
    #[error("certificate {cert} was issued for station {station}; only that station may replace or confirm it")]
    IssuedByAnotherStation {
        /// The certificate.
        cert: String,
        /// The station it was issued for (`unknown` for records older than this rule).
        station: String,
    },
    /// The certificate is on the activation hold, which only an activation lifts.
    #[error("certificate {0} is on the activation hold: only an activation of its terminal lifts it")]
    ActivationHold(String),
    /// No such activation challenge: never handed out, used already, or for another terminal.
    #[error("activation challenge unknown, already used, or for another terminal")]
    ChallengeUnknown,
    /// The activation challenge is past its expiry.
    #[error("activation challenge expired")]
    ChallengeExpired,
    /// The operator holds as many unused, unexpired activation challenges as policy allows.
    #[error("operator {operator} already holds {limit} unused activation challenges: use one or let it expire first")]
    TooManyChallenges {
        /// The operator.
        operator: String,
        /// The policy's limit.
        limit: u64,
    },
    /// The terminal's certificate is on hold: a hold stays a hold until it is lifted or made final.
    #[error("certificate {0} is on hold; lift the hold or revoke it for good first")]
    OnHold(String),
    /// A replacement key must be new: this one was certified before.
    #[error("this public key was certified before (terminal {terminal}); a replacement needs a key never certified")]
    KeyReused {
        /// The terminal it was certified for.
        terminal: String,
    },
    /// The approver may not decide this request.
    #[error("{approver} may not decide this request: {why}")]
    ApproverNotEligible {
        /// The would-be approver.
        approver: String,
        /// Why not.
        why: String,
    },
    /// Dual control: the approver was created at the requester's request.
    #[error("{approver} was added at {requester}'s request, so cannot approve {requester}'s requests")]
    ApproverNotIndependent {
        /// The would-be approver.
        approver: String,
        /// The requester.
        requester: String,
    },
    /// The audit chain is broken.
    #[error(transparent)]
    Audit(#[from] ChainBreak),
    /// The database's schema is not the one this build serves (`ca-server migrate` brings it up
    /// to date; a newer schema needs a newer build).
    #[error("registry schema version {found}, this build serves {expected}: run `ca-server migrate`")]
    SchemaMismatch {
        /// Version found (0: no schema).
        found: i32,
        /// Version this build serves.
        expected: i32,
    },
    /// A backup or restore target exists already.
    #[error("{0} exists; refusing to overwrite")]
    TargetExists(String),
}

storage_from!(std::io::Error);

type Result<T> = std::result::Result<T, RegistryError>;

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    // Room for a certificate record or an audit entry at once (serde_json starts at 128 bytes
    // and grows: reallocations were ~2 % of the registry writer's time).
    let mut out = Vec::with_capacity(1024);
    serde_json::to_writer(&mut out, v).map_err(|e| RegistryError::Corrupt(e.to_string()))?;
    Ok(out)
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| RegistryError::Corrupt(e.to_string()))
}

/// A certificate issued to a terminal, to be recorded.
#[derive(Clone, Debug)]
pub struct TerminalIssue {
    /// Client-chosen id: a retry with the same id and content gets the same certificate.
    pub request_id: String,
    /// Hex SM3 of the request's content, to refuse a reused id with other content.
    pub request_hash: String,
    /// The terminal as the request describes it (registered on the fly if allowed).
    pub terminal: TerminalRecord,
    /// Whether an unregistered terminal may be registered by this issue (a policy switch).
    pub register_if_missing: bool,
    /// An explicit re-issue: the active certificate is revoked as `superseded`. Allowed only
    /// before the terminal is provisioned, by the station that asked for that certificate.
    pub reissue: bool,
    /// The station asking.
    pub station: String,
    /// The new certificate's record.
    pub cert: CertRecord,
    /// Its DER.
    pub der: Vec<u8>,
}

/// What recording an issue did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IssueOutcome {
    /// Recorded; `superseded` names the certificate it replaced.
    Issued {
        /// Replaced certificate, if a re-issue.
        superseded: Option<String>,
    },
    /// The request id was seen before with the same content: this is the certificate it got.
    Replayed {
        /// The stored record.
        cert: Box<CertRecord>,
        /// Its DER.
        der: Vec<u8>,
    },
}

/// A certificate that names a principal, read with that principal in one snapshot
/// ([`Registry::principal_certificate`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrincipalCertificate {
    /// The certificate's record.
    pub record: CertRecord,
    /// Its DER.
    pub der: Vec<u8>,
    /// The principal it names; `None` when no principal has that name.
    pub principal: Option<PrincipalRecord>,
}

/// Filters for [`Registry::list_terminals`].
#[derive(Clone, Debug, Default)]
pub struct TerminalFilter {
    /// Only this state.
    pub state: Option<TerminalState>,
    /// Only this class.
    pub class: Option<String>,
    /// Only this manufacturer.
    pub manufacturer: Option<String>,
    /// Only this lot.
    pub lot: Option<String>,
}

impl TerminalFilter {
    pub(crate) fn admits(&self, t: &TerminalRecord) -> bool {
        self.state.is_none_or(|s| s == t.state)
            && self.class.as_ref().is_none_or(|c| *c == t.class)
            && self.manufacturer.as_ref().is_none_or(|m| *m == t.manufacturer)
            && self.lot.as_ref().is_none_or(|l| t.lot.as_ref() == Some(l))
    }
}

/// What an hourly count counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HourlyKind {
    /// Terminal certificates recorded (`record_terminal_issue`; a replay is not counted again).
    Issued,
    /// First provisioning confirmations of a certificate (`confirm_provisioning`).
    Provisioned,
}

impl HourlyKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issued => "issued",
            Self::Provisioned => "provisioned",
        }
    }

    /// The kind a stored name names.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "issued" => Ok(Self::Issued),
            "provisioned" => Ok(Self::Provisioned),
            other => Err(RegistryError::Corrupt(format!("unknown hourly count kind {other}"))),
        }
    }
}

/// One hour's count of one kind at one station.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HourlyCount {
    /// Hours since the Unix epoch (`ms / HOUR_MS`).
    pub hour: u64,
    /// The station that issued or provisioned.
    pub station: String,
    /// What was counted.
    pub kind: HourlyKind,
    /// How many.
    pub n: u64,
}

/// Milliseconds in an hour of [`HourlyCount::hour`].
pub const HOUR_MS: u64 = 3_600_000;

/// How many terminals there are, by state, class and manufacturer: running counts kept by every
/// write transaction that stores a terminal, so reading them costs the number of groups, not the
/// number of terminals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TerminalCounts {
    /// Every terminal.
    pub total: u64,
    /// By life-cycle state (`TerminalState::as_str`); empty groups left out.
    pub by_state: std::collections::BTreeMap<String, u64>,
    /// By class; empty groups left out.
    pub by_class: std::collections::BTreeMap<String, u64>,
    /// By manufacturer code; empty groups left out.
    pub by_manufacturer: std::collections::BTreeMap<String, u64>,
}

impl TerminalCounts {
    /// Adds one group's count as stored (`dimension` is `state`, `class` or `manufacturer`).
    pub(crate) fn add(&mut self, dimension: &str, value: &str, n: u64) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let map = match dimension {
            store::dimension::STATE => {
                self.total += n;
                &mut self.by_state
            }
            store::dimension::CLASS => &mut self.by_class,
            store::dimension::MANUFACTURER => &mut self.by_manufacturer,
            other => return Err(RegistryError::Corrupt(format!("unknown terminal count dimension {other}"))),
        };
        *map.entry(value.to_owned()).or_default() += n;
        Ok(())
    }

    /// The counts of `terminals`, by going through every one (what the running counts must equal).
    pub fn of<'a>(terminals: impl IntoIterator<Item = &'a TerminalRecord>) -> Self {
        let mut c = Self::default();
        for t in terminals {
            c.total += 1;
            *c.by_state.entry(t.state.as_str().to_owned()).or_default() += 1;
            *c.by_class.entry(t.class.clone()).or_default() += 1;
            *c.by_manufacturer.entry(t.manufacturer.clone()).or_default() += 1;
        }
        c
    }
}

/// The registry: the rules of this crate over one storage backend (see `store.rs`).
pub struct Registry {
    backend: Backend,
}

impl Registry {
    /// Opens (or creates) the embedded redb database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Self { backend: Backend::Redb(backend::redb::RedbStore::open(path)?) })
    }

    /// Connects to the PostgreSQL registry at `url` (`postgres://…`); refuses a database whose
    /// schema is not the one this build serves ([`SchemaMismatch`](RegistryError::SchemaMismatch)).
    pub fn open_postgres(url: &str) -> Result<Self> {
        Ok(Self { backend: Backend::Postgres(backend::postgres::PgStore::open(url)?) })
    }

    /// Brings the PostgreSQL schema at `url` up to date; returns the versions applied (none when
    /// it was current). Safe to run from several instances at once.
    pub fn migrate_postgres(url: &str) -> Result<Vec<i32>> {
        backend::postgres::migrate(url)
    }

    /// Copies the redb registry at `from` (its audit chain verified first) into the empty
    /// PostgreSQL registry at `url`, in one transaction, and verifies the copy's chain ends at
    /// the same head. Returns the chain summary.
    pub fn copy_redb_to_postgres(from: &Path, url: &str) -> Result<ChainSummary> {
        let source = Registry::open(from)?;
        let before = source.verify_audit_chain()?;
        let Backend::Redb(store) = &source.backend else {
            return Err(RegistryError::Storage("the source is not a redb registry".into()));
        };
        backend::postgres::import(url, &store.export()?)?;
        let after = Registry::open_postgres(url)?.verify_audit_chain()?;
        if after != before {
            return Err(RegistryError::Storage("the copied audit chain differs from the source".into()));
        }
        Ok(after)
    }

    /// Whether this instance should generate CRLs now: always on redb (one process per file);
    /// on PostgreSQL, the one instance holding the leader lock, until its connection ends.
    /// Call it before each run: leadership moves when the leader dies.
    pub fn crl_leader(&self) -> Result<bool> {
        self.backend.crl_leader()
    }

    /// What this registry's writer thread has done since it was opened (for `/metrics`).
    pub fn writer_stats(&self) -> WriterStats {
        self.backend.writer_stats()
    }

    /// Whether other instances may write to this registry (PostgreSQL): then changes made
    /// elsewhere are seen only by reading, e.g. [`Registry::revocation_seq`].
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// The commit-order number of the newest revocation or release (cheap: one counter).
    pub fn revocation_seq(&self) -> Result<u64> {
        self.read(|s| s.counter(store::counter::REVOCATION_SEQ))
    }

    /// Runs `f` on a consistent read snapshot.
    fn read<T: Send + 'static>(&self, f: impl FnOnce(&mut dyn StoreRead) -> Result<T> + Send + 'static) -> Result<T> {
        self.backend.read(f)
    }

    /// Runs `f` in one write transaction and returns its result once that is committed.
    fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn StoreWrite) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.backend.write(f)
    }

    /// Runs `f` and appends `event` to the audit log in the same transaction, durably.
    fn write<T: Send + 'static>(
        &self,
        event: &AuditEvent,
        f: impl FnOnce(&mut dyn StoreWrite) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.submit(audited(event, f))
    }

    /// [`Self::write`] without waiting: the write is queued for the next batch transaction and
    /// the returned [`PendingWrite`] resolves once that is committed, so the calling thread is
    /// not parked for the commit.
    fn queue<T: Send + 'static>(
        &self,
        event: &AuditEvent,
        f: impl FnOnce(&mut dyn StoreWrite) -> Result<T> + Send + 'static,
    ) -> Result<PendingWrite<T>> {
        self.backend.queue(audited(event, f))
    }

    /// Records an event alone (a refusal, a read that must be logged).
    pub fn audit(&self, event: &AuditEvent) -> Result<u64> {
        let event = event.clone();
        self.submit(move |s| append_audit(s, &event))
    }

    /// Records several events in one transaction; returns the last sequence number written.
    pub fn audit_all(&self, events: &[AuditEvent]) -> Result<Option<u64>> {
        if events.is_empty() {
            return Ok(None);
        }
        let events = events.to_vec();
        self.submit(move |s| events.iter().try_fold(None, |_, e| append_audit(s, e).map(Some)))
    }

    // ---- terminals --------------------------------------------------------------------------

    /// Registers a terminal.
    pub fn register_terminal(&self, t: &TerminalRecord, event: &AuditEvent) -> Result<()> {
        t.check_field_lengths()?;
        let t = t.clone();
        self.write(event, move |s| s.insert_terminal(&t))
    }

    /// A terminal by serial.
    pub fn terminal(&self, serial: &str) -> Result<Option<TerminalRecord>> {
        let serial = serial.to_owned();
        self.read(move |s| s.terminal(&serial))
    }

    /// Terminals matching `filter`, in serial order, after `after`, at most `limit`; with the
    /// token for the next page.
    pub fn list_terminals(
        &self,
        filter: &TerminalFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<TerminalRecord>, Option<String>)> {
        let (filter, after) = (filter.clone(), after.map(str::to_owned));
        let mut out = self.read(move |s| s.list_terminals(&filter, after.as_deref(), limit))?;
        if out.len() > limit {
            out.truncate(limit);
            let next = out.last().map(|l| l.serial.clone());
            return Ok((out, next));
        }
        Ok((out, None))
    }

    /// Terminals by state, class and manufacturer, from the running counts (one read of a few
    /// rows, whatever the fleet's size).
    pub fn terminal_counts(&self) -> Result<TerminalCounts> {
        self.read(|s| s.terminal_counts())
    }

    /// Certificates issued and terminals provisioned per hour and station, from hour
    /// `since_hour` (hours since the Unix epoch) on, in (hour, station, kind) order. Kept by the
    /// transactions that record them, so a registry from before these counts has none for the
    /// hours before it was upgraded.
    pub fn hourly_counts(&self, since_hour: u64) -> Result<Vec<HourlyCount>> {
        self.read(move |s| s.hourly_counts(since_hour))
    }

    // ---- certificates -----------------------------------------------------------------------

    /// A certificate record and its DER.
    pub fn certificate(&self, serial: &str) -> Result<Option<(CertRecord, Vec<u8>)>> {
        let serial = serial.to_owned();
        self.read(move |s| certificate_in(s, &serial))
    }

    /// Certificate `serial` with its DER and the principal it names, in one read snapshot (the
    /// authentication of every request asks this): `None` when the certificate is unknown or
    /// names a terminal; the principal `None` when no principal has that name.
    pub fn principal_certificate(&self, serial: &str) -> Result<Option<PrincipalCertificate>> {
        let serial = serial.to_owned();
        self.read(move |s| {
            let Some((rec, der)) = certificate_in(s, &serial)? else { return Ok(None) };
            let CertSubject::Principal { name } = &rec.subject else { return Ok(None) };
            let principal = s.principal(name)?;
            Ok(Some(PrincipalCertificate { record: rec, der, principal }))
        })
    }

    /// Every certificate record (for CRLs and status), in serial order.
    pub fn certificates(&self) -> Result<Vec<CertRecord>> {
        self.read(|s| s.certificates())
    }

    /// A terminal's activations, oldest first.
    pub fn activations(&self, serial: &str) -> Result<Vec<ActivationRecord>> {
        let serial = serial.to_owned();
        self.read(move |s| s.activations(&serial))
    }

    /// Activations of every terminal after log number `after` (0: from the first), in commit
    /// order, at most `limit`: an index walk, whatever the registry's size. A reader keeps the
    /// last `seq` it got as its cursor.
    pub fn activations_after(&self, after: u64, limit: usize) -> Result<Vec<ActivationEntry>> {
        self.read(move |s| s.activations_after(after, limit))
    }

    /// The last activation-log number taken (0: none yet).
    pub fn activation_log_head(&self) -> Result<u64> {
        self.read(|s| s.counter(store::counter::ACTIVATION_SEQ))
    }

    /// Revokes a certificate; a terminal whose active certificate it was becomes `revoked`.
    pub fn revoke(
        &self,
        serial: &str,
        reason: RevocationReason,
        at_ms: u64,
        invalidity_ms: Option<u64>,
        event: &AuditEvent,
    ) -> Result<CertRecord> {
        let serial = serial.to_owned();
        self.write(event, move |s| revocation::revoke_in(s, &serial, reason, at_ms, invalidity_ms))
    }

    // ---- principals -------------------------------------------------------------------------

    /// Adds a principal with its identity certificate (an administrator, through
    /// [`Registry::add_pending_admin`], waits for a second administrator).
    pub fn add_principal(&self, p: &PrincipalRecord, cert: &CertRecord, der: &[u8], event: &AuditEvent) -> Result<()> {
        let (p, cert, der) = (p.clone(), cert.clone(), der.to_vec());
        self.write(event, move |s| insert_principal(s, &p, &cert, &der))
    }

    /// Every principal, by name.
    pub fn principals(&self) -> Result<Vec<PrincipalRecord>> {
        self.read(|s| s.principals())
    }

    /// A principal by name.
    pub fn principal(&self, name: &str) -> Result<Option<PrincipalRecord>> {
        let name = name.to_owned();
        self.read(move |s| s.principal(&name))
    }

    /// Enables or disables a principal.
    pub fn set_principal_enabled(&self, name: &str, enabled: bool, event: &AuditEvent) -> Result<()> {
        let name = name.to_owned();
        self.write(event, move |s| {
            let mut p = s.principal(&name)?.ok_or_else(|| RegistryError::PrincipalNotFound(name.clone()))?;
            p.enabled = enabled;
            s.update_principal(&p)
        })
    }

    // ---- nonces -----------------------------------------------------------------------------

    /// Remembers `nonce` until `expires_ms`; refuses one seen and not yet expired. Expired
    /// nonces are pruned in the same transaction.
    pub fn use_nonce(&self, nonce: &[u8], now_ms: u64, expires_ms: u64) -> Result<()> {
        let nonce = nonce.to_vec();
        self.submit(move |s| s.use_nonce(&nonce, now_ms, expires_ms))
    }

    // ---- audit ------------------------------------------------------------------------------

    /// The last `n` audit entries, oldest first.
    pub fn audit_tail(&self, n: usize) -> Result<Vec<AuditEntry>> {
        let mut out: Vec<AuditEntry> =
            self.read(move |s| s.audit_newest_raw(n))?.iter().map(|b| from_json(b)).collect::<Result<_>>()?;
        out.reverse();
        Ok(out)
    }

    /// Up to `limit` entries of an actor or about a target (`by`) with sequence numbers below
    /// `before` (`None`: from the newest), newest first, found through the audit indexes, so
    /// however far back they are. Page on with `before` = the last entry's `seq`.
    pub fn audit_by(&self, by: &AuditBy, before: Option<u64>, limit: usize) -> Result<Vec<AuditEntry>> {
        let key = by.clone();
        let raw = self.read(move |s| s.audit_by_raw(&key, before.unwrap_or(u64::MAX), limit))?;
        let mut out = Vec::with_capacity(raw.len());
        for (seq, bytes) in raw {
            let entry: AuditEntry =
                serde_json::from_slice(&bytes).map_err(|e| ChainBreak::Unreadable { seq, why: e.to_string() })?;
            // The index follows every write of this build; a hand-edited row may not.
            if by.matches(&entry.event) {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// The last entry's sequence number and hash, if any.
    pub fn audit_head(&self) -> Result<Option<(u64, String)>> {
        match self.read(|s| s.audit_last_raw())? {
            Some((k, v)) => Ok(Some((k, from_json::<AuditEntry>(&v)?.hash))),
            None => Ok(None),
        }
    }

    /// Audit entry `seq` (None when the chain ends before it) and the chain's length, read
    /// together; with [`anchor::check_contains`] this tells whether an anchored head is still there.
    pub fn audit_entry_at(&self, seq: u64) -> Result<(Option<AuditEntry>, u64)> {
        let (raw, len) = self.read(move |s| Ok((s.audit_raw(seq)?, s.audit_len()?)))?;
        Ok((raw.map(|b| from_json::<AuditEntry>(&b)).transpose()?, len))
    }

    /// The newest signed checkpoint, if any.
    pub fn last_audit_checkpoint(&self) -> Result<Option<AuditCheckpoint>> {
        self.read(|s| s.last_checkpoint_raw())?.map(|b| from_json(&b)).transpose()
    }

    /// Stores a signed checkpoint, durably, after checking that it vouches for the entry the
    /// chain holds at its `seq`. The signature is the caller's (the registry holds no keys).
    pub fn add_audit_checkpoint(&self, cp: &AuditCheckpoint) -> Result<()> {
        let cp = cp.clone();
        self.submit(move |s| {
            let entry: AuditEntry = match s.audit_raw(cp.seq)? {
                Some(v) => from_json(&v)?,
                None => return Err(ChainBreak::Truncated { seq: cp.seq, entries: s.audit_len()? }.into()),
            };
            if entry.hash != cp.head {
                return Err(ChainBreak::CheckpointMismatch { seq: cp.seq }.into());
            }
            s.put_checkpoint_raw(cp.seq, &to_json(&cp)?)
        })
    }

    /// Walks the whole audit chain: keys without gaps, each `prev` equal to the previous hash,
    /// each hash equal to its content's, each signed checkpoint equal to the entry it names.
    pub fn verify_audit_chain(&self) -> Result<ChainSummary> {
        self.read(|s| {
            let mut checkpoints = Vec::new();
            for (k, v) in s.checkpoints_raw()? {
                let cp: AuditCheckpoint = serde_json::from_slice(&v)
                    .map_err(|e| ChainBreak::CheckpointUnreadable { seq: k, why: e.to_string() })?;
                checkpoints.push(cp);
            }
            let mut pending = checkpoints.iter().peekable();
            let mut prev = audit::GENESIS.to_owned();
            let mut expected = 1u64;
            s.audit_scan(&mut |key, bytes| {
                let entry: AuditEntry = serde_json::from_slice(bytes)
                    .map_err(|e| ChainBreak::Unreadable { seq: key, why: e.to_string() })?;
                if key != expected || entry.seq != expected {
                    return Err(ChainBreak::Gap { key, expected, found: entry.seq }.into());
                }
                if entry.prev != prev {
                    return Err(ChainBreak::BrokenLink { seq: entry.seq }.into());
                }
                if audit::entry_hash(entry.seq, &entry.event, &entry.prev) != entry.hash {
                    return Err(ChainBreak::Edited { seq: entry.seq }.into());
                }
                while let Some(cp) = pending.next_if(|cp| cp.seq <= entry.seq) {
                    if cp.seq != entry.seq || cp.head != entry.hash {
                        return Err(ChainBreak::CheckpointMismatch { seq: cp.seq }.into());
                    }
                }
                prev = entry.hash;
                expected += 1;
                Ok(())
            })?;
            if let Some(cp) = pending.next() {
                return Err(ChainBreak::Truncated { seq: cp.seq, entries: expected - 1 }.into());
            }
            Ok(ChainSummary { entries: expected - 1, head: prev, checkpoints })
        })
    }

    // ---- backup -----------------------------------------------------------------------------

    /// Writes a consistent copy (one read snapshot) of every table to a new database at `out`,
    /// while the registry keeps serving.
    pub fn backup(&self, out: &Path) -> Result<()> {
        self.backend.backup(out)
    }

    /// Restores a redb backup to `target` (which must not exist) after verifying its audit chain.
    pub fn restore(backup: &Path, target: &Path) -> Result<ChainSummary> {
        backend::redb::RedbStore::restore(backup, target)
    }

    /// Number of audit entries.
    pub fn audit_len(&self) -> Result<u64> {
        self.read(|s| s.audit_len())
    }

    /// Test hook: overwrite the stored bytes of audit entry `seq` (or delete it with `None`), to
    /// prove [`Registry::verify_audit_chain`] notices.
    #[cfg(feature = "test-hooks")]
    pub fn tamper_audit(&self, seq: u64, bytes: Option<Vec<u8>>) -> Result<()> {
        self.submit(move |s| s.put_audit_raw(seq, bytes.as_deref()))
    }

    /// Test hook: a forger with write access to the file: replaces entry `seq`'s event and
    /// recomputes every hash from there on, so the chain alone still verifies.
    #[cfg(feature = "test-hooks")]
    pub fn rewrite_audit(&self, seq: u64, event: &AuditEvent) -> Result<()> {
        let event = event.clone();
        self.submit(move |s| {
            let mut entries: Vec<AuditEntry> = Vec::new();
            s.audit_scan(&mut |k, b| {
                if k >= seq {
                    entries.push(from_json(b)?);
                }
                Ok(())
            })?;
            let mut prev = match seq {
                1 => audit::GENESIS.to_owned(),
                _ => s
                    .audit_raw(seq - 1)?
                    .map(|b| from_json::<AuditEntry>(&b))
                    .transpose()?
                    .map(|e| e.hash)
                    .unwrap_or_default(),
            };
            if let Some(first) = entries.first_mut() {
                first.event = event.clone();
            }
            for e in &mut entries {
                e.prev = prev.clone();
                e.hash = audit::entry_hash(e.seq, &e.event, &e.prev);
                prev = e.hash.clone();
                s.put_audit_raw(e.seq, Some(&to_json(e)?))?;
            }
            Ok(())
        })
    }

    /// Test hook (benchmarks): stores `terminals` in one transaction, unaudited, to fill a registry
    /// with a fleet far faster than one audited registration each.
    #[cfg(feature = "test-hooks")]
    pub fn put_terminals_unaudited(&self, terminals: &[TerminalRecord]) -> Result<()> {
        let terminals = terminals.to_vec();
        self.submit(move |s| {
            for t in &terminals {
                s.update_terminal(t)?;
            }
            Ok(())
        })
    }

    /// Test hook: stores `bytes` as approval `id` as they are (records written by older versions).
    #[cfg(feature = "test-hooks")]
    pub fn put_raw_approval(&self, id: &str, bytes: &[u8]) -> Result<()> {
        let (id, bytes) = (id.to_owned(), bytes.to_vec());
        self.submit(move |s| s.put_approval_raw(&id, &bytes))
    }

    /// Test hook: an insider with write access to the file cuts the chain after entry `keep`,
    /// together with every checkpoint covering the removed entries, so the registry alone still
    /// verifies (only the anchor log tells).
    #[cfg(feature = "test-hooks")]
    pub fn truncate_audit(&self, keep: u64) -> Result<u64> {
        self.submit(move |s| {
            let mut cut = Vec::new();
            s.audit_scan(&mut |k, _| {
                if k > keep {
                    cut.push(k);
                }
                Ok(())
            })?;
            for k in &cut {
                s.put_audit_raw(*k, None)?;
            }
            s.cut_checkpoints_after(keep)?;
            Ok(cut.len() as u64)
        })
    }

    /// Test hook: the stored bytes of audit entry `seq`.
    #[cfg(feature = "test-hooks")]
    pub fn raw_audit(&self, seq: u64) -> Result<Option<Vec<u8>>> {
        self.read(move |s| s.audit_raw(seq))
    }
}

pub(crate) fn certificate_in(s: &mut dyn StoreRead, serial: &str) -> Result<Option<(CertRecord, Vec<u8>)>> {
    let Some(rec) = s.cert(serial)? else { return Ok(None) };
    let der = s.cert_der(serial)?.ok_or_else(|| RegistryError::Corrupt(format!("no DER for {serial}")))?;
    Ok(Some((rec, der)))
}

pub(crate) fn insert_principal(
    s: &mut dyn StoreWrite,
    p: &PrincipalRecord,
    cert: &CertRecord,
    der: &[u8],
) -> Result<()> {
    // Every refusal before the first write: a refused write must write nothing (redb batches).
    if s.principal(&p.name)?.is_some() {
        return Err(RegistryError::PrincipalExists(p.name.clone()));
    }
    if s.cert(&cert.serial)?.is_some() {
        return Err(RegistryError::CertSerialExists(cert.serial.clone()));
    }
    s.insert_principal(p)?;
    s.insert_cert(cert, der)
}

/// `f`, then `event` appended to the audit log, in one transaction.
fn audited<T>(
    event: &AuditEvent,
    f: impl FnOnce(&mut dyn StoreWrite) -> Result<T> + Send + 'static,
) -> impl FnOnce(&mut dyn StoreWrite) -> Result<T> + Send + 'static {
    let event = event.clone();
    move |s| {
        let out = f(s)?;
        append_audit(s, &event)?;
        Ok(out)
    }
}

/// Appends `event` after the chain's last entry. Writers are serialised by the backend (redb's
/// single writer; PostgreSQL's audit lock), and the key is unique, so the chain never forks.
fn append_audit(s: &mut dyn StoreWrite, event: &AuditEvent) -> Result<u64> {
    let (seq, prev) = match s.audit_last_raw()? {
        Some((k, v)) => (k + 1, from_json::<AuditEntry>(&v)?.hash),
        None => (1, audit::GENESIS.to_owned()),
    };
    let hash = audit::entry_hash(seq, event, &prev);
    let entry = AuditEntry { seq, event: event.clone(), prev, hash };
    s.put_audit_raw(seq, Some(&to_json(&entry)?))?;
    Ok(seq)
}
