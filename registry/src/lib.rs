//! `registry`: the CA's durable state in an embedded redb database.
//!
//! Every state change is one write transaction that writes the record, its indexes and an audit
//! entry together, and returns only after the commit is durable (redb fsyncs on commit). The
//! invariants that must never break — one active certificate per terminal, unique certificate
//! serials, a public key never reused by another terminal, one result per request id — are
//! checked inside that transaction, so two racing requests cannot both pass. Policy (may this
//! caller issue for this serial?) is decided elsewhere; this crate only stores.

pub mod anchor;
mod approvals;
pub mod audit;
mod lifecycle;
pub mod records;
mod revocation;

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

pub use approvals::Decision;
pub use audit::{AuditCheckpoint, AuditEntry, AuditEvent, ChainBreak, ChainSummary};
pub use lifecycle::{StationIssue, check_station_issue};
pub use records::*;

pub(crate) const TERMINALS: TableDefinition<&str, &[u8]> = TableDefinition::new("terminals");
pub(crate) const CERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("certs");
pub(crate) const CERT_DER: TableDefinition<&str, &[u8]> = TableDefinition::new("cert_der");
pub(crate) const PUBKEYS: TableDefinition<&str, &str> = TableDefinition::new("pubkeys");
pub(crate) const REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("requests");
pub(crate) const PRINCIPALS: TableDefinition<&str, &[u8]> = TableDefinition::new("principals");
const ACTIVATIONS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("activations");
const NONCES: TableDefinition<&[u8], u64> = TableDefinition::new("nonces");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const AUDIT_CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("audit_checkpoints");

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
    /// A backup or restore target exists already.
    #[error("{0} exists; refusing to overwrite")]
    TargetExists(String),
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for RegistryError {
            fn from(e: $t) -> Self {
                Self::Storage(e.to_string())
            }
        }
    )*};
}
storage_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    std::io::Error
);

type Result<T> = std::result::Result<T, RegistryError>;

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| RegistryError::Corrupt(e.to_string()))
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
    fn admits(&self, t: &TerminalRecord) -> bool {
        self.state.is_none_or(|s| s == t.state)
            && self.class.as_ref().is_none_or(|c| *c == t.class)
            && self.manufacturer.as_ref().is_none_or(|m| *m == t.manufacturer)
            && self.lot.as_ref().is_none_or(|l| t.lot.as_ref() == Some(l))
    }
}

/// The registry.
pub struct Registry {
    db: std::sync::Arc<Database>,
    writer: Option<std::sync::mpsc::Sender<Job>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Closing the channel ends the writer after its last batch; joining it releases the
        // database, so the file can be opened again at once.
        drop(self.writer.take());
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }
}

/// Delivers a job's result once the batch it ran in is committed (or not).
type Finish = Box<dyn FnOnce(Result<()>) + Send>;
/// A write, run by the writer thread inside a batch transaction: says whether it broke the
/// transaction (a storage error) and how to answer its caller after the commit.
type Job = Box<dyn FnOnce(&WriteTransaction) -> (bool, Finish) + Send>;

/// Most writes committed together.
const MAX_BATCH: usize = 256;

/// Group commit: every write waiting when a commit starts goes into the next transaction, which
/// is committed (fsynced) once; each caller is answered only after that commit. A write that is
/// refused wrote nothing (every write checks before it inserts), so it cannot spoil the batch; a
/// storage error aborts the whole batch and every caller in it gets the error.
fn writer_loop(db: std::sync::Arc<Database>, jobs: std::sync::mpsc::Receiver<Job>) {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        // If no transaction can be opened the jobs are dropped: their callers see an error.
        let Ok(txn) = db.begin_write() else { continue };
        let mut finishes = Vec::with_capacity(batch.len());
        let mut broken = false;
        for job in batch {
            match catch_unwind(AssertUnwindSafe(|| job(&txn))) {
                Ok((fatal, finish)) => {
                    broken |= fatal;
                    finishes.push(finish);
                }
                Err(_) => broken = true,
            }
        }
        let outcome = if broken {
            drop(txn);
            Err(RegistryError::Storage("write batch aborted after a storage error".into()))
        } else {
            txn.commit().map_err(RegistryError::from)
        };
        for finish in finishes {
            finish(outcome.clone());
        }
    }
}

impl Registry {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        {
            txn.open_table(TERMINALS)?;
            txn.open_table(CERTS)?;
            txn.open_table(CERT_DER)?;
            txn.open_table(PUBKEYS)?;
            txn.open_table(REQUESTS)?;
            txn.open_table(PRINCIPALS)?;
            txn.open_table(ACTIVATIONS)?;
            txn.open_table(NONCES)?;
            txn.open_table(AUDIT)?;
            txn.open_table(AUDIT_CHECKPOINTS)?;
            txn.open_table(revocation::REVOKED)?;
            txn.open_table(revocation::RELEASED)?;
            txn.open_table(revocation::META)?;
            txn.open_table(approvals::APPROVALS)?;
            txn.open_table(revocation::COMPROMISED_KEYS)?;
            revocation::index_revoked_once(&txn)?;
            approvals::tag_kinds(&txn)?;
        }
        txn.commit()?;
        let db = std::sync::Arc::new(db);
        let (writer, jobs) = std::sync::mpsc::channel::<Job>();
        let for_writer = db.clone();
        let thread =
            std::thread::Builder::new().name("registry-writer".into()).spawn(move || writer_loop(for_writer, jobs))?;
        Ok(Self { db, writer: Some(writer), writer_thread: Some(thread) })
    }

    /// Runs `f` in the next batch transaction and returns its result once that is committed.
    fn submit<T: Send + 'static>(&self, f: impl FnOnce(&WriteTransaction) -> Result<T> + Send + 'static) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<T>>(1);
        let job: Job = Box::new(move |txn| {
            let result = f(txn);
            let fatal = matches!(result, Err(RegistryError::Storage(_) | RegistryError::Corrupt(_)));
            let finish: Finish = Box::new(move |commit| {
                let _ = tx.send(match (result, commit) {
                    (Ok(v), Ok(())) => Ok(v),
                    (Ok(_), Err(e)) | (Err(e), _) => Err(e),
                });
            });
            (fatal, finish)
        });
        let writer = self.writer.as_ref().ok_or_else(|| RegistryError::Storage("registry writer stopped".into()))?;
        writer.send(job).map_err(|_| RegistryError::Storage("registry writer stopped".into()))?;
        rx.recv().map_err(|_| RegistryError::Storage("write abandoned by the registry writer".into()))?
    }

    /// Runs `f` and appends `event` to the audit log in the same transaction, durably.
    fn write<T: Send + 'static>(
        &self,
        event: &AuditEvent,
        f: impl FnOnce(&WriteTransaction) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let event = event.clone();
        self.submit(move |txn| {
            let out = f(txn)?;
            append_audit(txn, &event)?;
            Ok(out)
        })
    }

    /// Records an event alone (a refusal, a read that must be logged).
    pub fn audit(&self, event: &AuditEvent) -> Result<u64> {
        let event = event.clone();
        self.submit(move |txn| append_audit(txn, &event))
    }

    /// Records several events in one transaction; returns the last sequence number written.
    pub fn audit_all(&self, events: &[AuditEvent]) -> Result<Option<u64>> {
        if events.is_empty() {
            return Ok(None);
        }
        let events = events.to_vec();
        self.submit(move |txn| events.iter().try_fold(None, |_, e| append_audit(txn, e).map(Some)))
    }

    // ---- terminals --------------------------------------------------------------------------

    /// Registers a terminal.
    pub fn register_terminal(&self, t: &TerminalRecord, event: &AuditEvent) -> Result<()> {
        let t = t.clone();
        self.write(event, move |txn| {
            let t = &t;
            let mut terminals = txn.open_table(TERMINALS)?;
            if terminals.get(t.serial.as_str())?.is_some() {
                return Err(RegistryError::TerminalExists(t.serial.clone()));
            }
            terminals.insert(t.serial.as_str(), to_json(t)?.as_slice())?;
            Ok(())
        })
    }

    /// A terminal by serial.
    pub fn terminal(&self, serial: &str) -> Result<Option<TerminalRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TERMINALS)?;
        table.get(serial)?.map(|v| from_json(v.value())).transpose()
    }

    /// Terminals matching `filter`, in serial order, after `after`, at most `limit`; with the
    /// token for the next page.
    pub fn list_terminals(
        &self,
        filter: &TerminalFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<TerminalRecord>, Option<String>)> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TERMINALS)?;
        let mut out = Vec::new();
        let range = match after {
            Some(a) => table.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))?,
            None => table.range::<&str>(..)?,
        };
        for item in range {
            let (_, v) = item?;
            let t: TerminalRecord = from_json(v.value())?;
            if filter.admits(&t) {
                if out.len() == limit {
                    let next = out.last().map(|l: &TerminalRecord| l.serial.clone());
                    return Ok((out, next));
                }
                out.push(t);
            }
        }
        Ok((out, None))
    }

    // ---- certificates -----------------------------------------------------------------------

    /// A certificate record and its DER.
    pub fn certificate(&self, serial: &str) -> Result<Option<(CertRecord, Vec<u8>)>> {
        let txn = self.db.begin_read()?;
        let certs = txn.open_table(CERTS)?;
        let ders = txn.open_table(CERT_DER)?;
        let Some(rec) = certs.get(serial)? else { return Ok(None) };
        let der = ders
            .get(serial)?
            .map(|v| v.value().to_vec())
            .ok_or_else(|| RegistryError::Corrupt(format!("no DER for {serial}")))?;
        Ok(Some((from_json(rec.value())?, der)))
    }

    /// Every certificate record (for CRLs and status), in serial order.
    pub fn certificates(&self) -> Result<Vec<CertRecord>> {
        let txn = self.db.begin_read()?;
        let certs = txn.open_table(CERTS)?;
        certs.iter()?.map(|item| from_json(item?.1.value())).collect()
    }

    /// Records an activation; the terminal must be provisioned (or already active).
    pub fn activate(&self, a: &ActivationRecord, event: &AuditEvent) -> Result<u64> {
        let a = a.clone();
        self.write(event, move |txn| {
            let a = &a;
            let mut terminals = txn.open_table(TERMINALS)?;
            let mut activations = txn.open_table(ACTIVATIONS)?;
            let mut t: TerminalRecord = terminals
                .get(a.terminal.as_str())?
                .map(|v| from_json(v.value()))
                .transpose()?
                .ok_or_else(|| RegistryError::TerminalNotFound(a.terminal.clone()))?;
            if !matches!(t.state, TerminalState::Provisioned | TerminalState::Active) {
                return Err(RegistryError::WrongState {
                    terminal: a.terminal.clone(),
                    state: t.state.as_str(),
                    action: "activation",
                    wanted: "provisioned or active",
                });
            }
            let n = activations.range((a.terminal.as_str(), 0)..=(a.terminal.as_str(), u64::MAX))?.count() as u64 + 1;
            activations.insert((a.terminal.as_str(), n), to_json(a)?.as_slice())?;
            t.state = TerminalState::Active;
            t.updated_ms = a.at_ms;
            terminals.insert(a.terminal.as_str(), to_json(&t)?.as_slice())?;
            Ok(n)
        })
    }

    /// A terminal's activations, oldest first.
    pub fn activations(&self, serial: &str) -> Result<Vec<ActivationRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ACTIVATIONS)?;
        table.range((serial, 0)..=(serial, u64::MAX))?.map(|item| from_json(item?.1.value())).collect()
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
        self.write(event, move |txn| revocation::revoke_in(txn, &serial, reason, at_ms, invalidity_ms))
    }

    // ---- principals -------------------------------------------------------------------------

    /// Adds a principal with its identity certificate (an administrator, through
    /// [`Registry::add_pending_admin`], waits for a second administrator).
    pub fn add_principal(&self, p: &PrincipalRecord, cert: &CertRecord, der: &[u8], event: &AuditEvent) -> Result<()> {
        let (p, cert, der) = (p.clone(), cert.clone(), der.to_vec());
        self.write(event, move |txn| insert_principal(txn, &p, &cert, &der))
    }

    /// A principal by name.
    pub fn principal(&self, name: &str) -> Result<Option<PrincipalRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PRINCIPALS)?;
        table.get(name)?.map(|v| from_json(v.value())).transpose()
    }

    /// Enables or disables a principal.
    pub fn set_principal_enabled(&self, name: &str, enabled: bool, event: &AuditEvent) -> Result<()> {
        let name = name.to_owned();
        self.write(event, move |txn| {
            let name = name.as_str();
            let mut principals = txn.open_table(PRINCIPALS)?;
            let mut p: PrincipalRecord = principals
                .get(name)?
                .map(|v| from_json(v.value()))
                .transpose()?
                .ok_or_else(|| RegistryError::PrincipalNotFound(name.into()))?;
            p.enabled = enabled;
            principals.insert(name, to_json(&p)?.as_slice())?;
            Ok(())
        })
    }

    // ---- nonces -----------------------------------------------------------------------------

    /// Remembers `nonce` until `expires_ms`; refuses one seen and not yet expired. Expired
    /// nonces are pruned in the same transaction.
    pub fn use_nonce(&self, nonce: &[u8], now_ms: u64, expires_ms: u64) -> Result<()> {
        let nonce = nonce.to_vec();
        self.submit(move |txn| {
            let mut nonces = txn.open_table(NONCES)?;
            if nonces.get(nonce.as_slice())?.is_some_and(|v| v.value() > now_ms) {
                return Err(RegistryError::NonceReplayed);
            }
            nonces.retain(|_, exp| exp > now_ms)?;
            nonces.insert(nonce.as_slice(), expires_ms)?;
            Ok(())
        })
    }

    // ---- audit ------------------------------------------------------------------------------

    /// The last `n` audit entries, oldest first.
    pub fn audit_tail(&self, n: usize) -> Result<Vec<AuditEntry>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(AUDIT)?;
        let mut out: Vec<AuditEntry> =
            table.iter()?.rev().take(n).map(|item| from_json(item?.1.value())).collect::<Result<_>>()?;
        out.reverse();
        Ok(out)
    }

    /// The last entry's sequence number and hash, if any.
    pub fn audit_head(&self) -> Result<Option<(u64, String)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(AUDIT)?;
        match table.last()? {
            Some((k, v)) => Ok(Some((k.value(), from_json::<AuditEntry>(v.value())?.hash))),
            None => Ok(None),
        }
    }

    /// Audit entry `seq` (None when the chain ends before it) and the chain's length, read
    /// together; with [`anchor::check_contains`] this tells whether an anchored head is still there.
    pub fn audit_entry_at(&self, seq: u64) -> Result<(Option<AuditEntry>, u64)> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(AUDIT)?;
        let entry = table.get(seq)?.map(|v| from_json::<AuditEntry>(v.value())).transpose()?;
        Ok((entry, table.len()?))
    }

    /// The newest signed checkpoint, if any.
    pub fn last_audit_checkpoint(&self) -> Result<Option<AuditCheckpoint>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(AUDIT_CHECKPOINTS)?;
        table.last()?.map(|(_, v)| from_json(v.value())).transpose()
    }

    /// Stores a signed checkpoint, durably, after checking that it vouches for the entry the
    /// chain holds at its `seq`. The signature is the caller's (the registry holds no keys).
    pub fn add_audit_checkpoint(&self, cp: &AuditCheckpoint) -> Result<()> {
        let cp = cp.clone();
        self.submit(move |txn| {
            let audit = txn.open_table(AUDIT)?;
            let entry: AuditEntry = match audit.get(cp.seq)? {
                Some(v) => from_json(v.value())?,
                None => return Err(ChainBreak::Truncated { seq: cp.seq, entries: audit.len()? }.into()),
            };
            if entry.hash != cp.head {
                return Err(ChainBreak::CheckpointMismatch { seq: cp.seq }.into());
            }
            txn.open_table(AUDIT_CHECKPOINTS)?.insert(cp.seq, to_json(&cp)?.as_slice())?;
            Ok(())
        })
    }

    /// Walks the whole audit chain: keys without gaps, each `prev` equal to the previous hash,
    /// each hash equal to its content's, each signed checkpoint equal to the entry it names.
    pub fn verify_audit_chain(&self) -> Result<ChainSummary> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(AUDIT)?;
        let mut checkpoints = Vec::new();
        for item in txn.open_table(AUDIT_CHECKPOINTS)?.iter()? {
            let (k, v) = item?;
            let cp: AuditCheckpoint = serde_json::from_slice(v.value())
                .map_err(|e| ChainBreak::CheckpointUnreadable { seq: k.value(), why: e.to_string() })?;
            checkpoints.push(cp);
        }
        let mut pending = checkpoints.iter().peekable();
        let mut prev = audit::GENESIS.to_owned();
        let mut expected = 1u64;
        for item in table.iter()? {
            let (k, v) = item?;
            let key = k.value();
            let entry: AuditEntry = serde_json::from_slice(v.value())
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
        }
        if let Some(cp) = pending.next() {
            return Err(ChainBreak::Truncated { seq: cp.seq, entries: expected - 1 }.into());
        }
        Ok(ChainSummary { entries: expected - 1, head: prev, checkpoints })
    }

    // ---- backup -----------------------------------------------------------------------------

    /// Writes a consistent copy (one read snapshot) of every table to a new database at `out`,
    /// while the registry keeps serving.
    pub fn backup(&self, out: &Path) -> Result<()> {
        if out.exists() {
            return Err(RegistryError::TargetExists(out.display().to_string()));
        }
        let snapshot = self.db.begin_read()?;
        let copy = Database::create(out)?;
        let txn = copy.begin_write()?;
        copy_table(&snapshot, &txn, TERMINALS)?;
        copy_table(&snapshot, &txn, CERTS)?;
        copy_table(&snapshot, &txn, CERT_DER)?;
        copy_table(&snapshot, &txn, PUBKEYS)?;
        copy_table(&snapshot, &txn, REQUESTS)?;
        copy_table(&snapshot, &txn, PRINCIPALS)?;
        copy_table(&snapshot, &txn, ACTIVATIONS)?;
        copy_table(&snapshot, &txn, NONCES)?;
        copy_table(&snapshot, &txn, AUDIT)?;
        copy_table(&snapshot, &txn, AUDIT_CHECKPOINTS)?;
        copy_table(&snapshot, &txn, revocation::REVOKED)?;
        copy_table(&snapshot, &txn, revocation::RELEASED)?;
        copy_table(&snapshot, &txn, revocation::META)?;
        copy_table(&snapshot, &txn, approvals::APPROVALS)?;
        copy_table(&snapshot, &txn, revocation::COMPROMISED_KEYS)?;
        txn.commit()?;
        Ok(())
    }

    /// Restores a backup to `target` (which must not exist) after verifying its audit chain.
    pub fn restore(backup: &Path, target: &Path) -> Result<ChainSummary> {
        if target.exists() {
            return Err(RegistryError::TargetExists(target.display().to_string()));
        }
        let summary = Registry::open(backup)?.verify_audit_chain()?;
        let tmp = target.with_extension("restoring");
        std::fs::copy(backup, &tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, target)?;
        Ok(summary)
    }

    /// Number of audit entries.
    pub fn audit_len(&self) -> Result<u64> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(AUDIT)?.len()?)
    }

    /// Test hook: overwrite the stored bytes of audit entry `seq` (or delete it with `None`), to
    /// prove [`Registry::verify_audit_chain`] notices.
    #[cfg(feature = "test-hooks")]
    pub fn tamper_audit(&self, seq: u64, bytes: Option<Vec<u8>>) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(AUDIT)?;
            match bytes {
                Some(b) => {
                    table.insert(seq, b.as_slice())?;
                }
                None => {
                    table.remove(seq)?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Test hook: a forger with write access to the file: replaces entry `seq`'s event and
    /// recomputes every hash from there on, so the chain alone still verifies.
    #[cfg(feature = "test-hooks")]
    pub fn rewrite_audit(&self, seq: u64, event: &AuditEvent) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(AUDIT)?;
            let mut entries: Vec<AuditEntry> =
                table.range(seq..)?.map(|item| from_json(item?.1.value())).collect::<Result<_>>()?;
            let mut prev = match seq {
                1 => audit::GENESIS.to_owned(),
                _ => table
                    .get(seq - 1)?
                    .map(|v| from_json::<AuditEntry>(v.value()))
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
                table.insert(e.seq, to_json(e)?.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Test hook (benchmarks): stores `terminals` in one transaction, unaudited, to fill a registry
    /// with a fleet far faster than one audited registration each.
    #[cfg(feature = "test-hooks")]
    pub fn put_terminals_unaudited(&self, terminals: &[TerminalRecord]) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(TERMINALS)?;
            for t in terminals {
                table.insert(t.serial.as_str(), to_json(t)?.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Test hook: stores `bytes` as approval `id` as they are (records written by older versions).
    #[cfg(feature = "test-hooks")]
    pub fn put_raw_approval(&self, id: &str, bytes: &[u8]) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(approvals::APPROVALS)?.insert(id, bytes)?;
        txn.commit()?;
        Ok(())
    }

    /// Test hook: an insider with write access to the file cuts the chain after entry `keep`,
    /// together with every checkpoint covering the removed entries, so the registry alone still
    /// verifies (only the anchor log tells).
    #[cfg(feature = "test-hooks")]
    pub fn truncate_audit(&self, keep: u64) -> Result<u64> {
        let txn = self.db.begin_write()?;
        let removed;
        {
            let mut table = txn.open_table(AUDIT)?;
            let cut: Vec<u64> = table.range(keep + 1..)?.map(|item| Ok(item?.0.value())).collect::<Result<_>>()?;
            for k in &cut {
                table.remove(k)?;
            }
            removed = cut.len() as u64;
            let mut cps = txn.open_table(AUDIT_CHECKPOINTS)?;
            let cut: Vec<u64> = cps.range(keep + 1..)?.map(|item| Ok(item?.0.value())).collect::<Result<_>>()?;
            for k in &cut {
                cps.remove(k)?;
            }
        }
        txn.commit()?;
        Ok(removed)
    }

    /// Test hook: the stored bytes of audit entry `seq`.
    #[cfg(feature = "test-hooks")]
    pub fn raw_audit(&self, seq: u64) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(AUDIT)?.get(seq)?.map(|v| v.value().to_vec()))
    }
}

pub(crate) fn insert_principal(
    txn: &WriteTransaction,
    p: &PrincipalRecord,
    cert: &CertRecord,
    der: &[u8],
) -> Result<()> {
    let mut principals = txn.open_table(PRINCIPALS)?;
    let mut certs = txn.open_table(CERTS)?;
    if principals.get(p.name.as_str())?.is_some() {
        return Err(RegistryError::PrincipalExists(p.name.clone()));
    }
    if certs.get(cert.serial.as_str())?.is_some() {
        return Err(RegistryError::CertSerialExists(cert.serial.clone()));
    }
    principals.insert(p.name.as_str(), to_json(p)?.as_slice())?;
    certs.insert(cert.serial.as_str(), to_json(cert)?.as_slice())?;
    txn.open_table(CERT_DER)?.insert(cert.serial.as_str(), der)?;
    Ok(())
}

fn append_audit(txn: &WriteTransaction, event: &AuditEvent) -> Result<u64> {
    let mut table = txn.open_table(AUDIT)?;
    let (seq, prev) = match table.last()? {
        Some((k, v)) => {
            let last: AuditEntry = from_json(v.value())?;
            (k.value() + 1, last.hash)
        }
        None => (1, audit::GENESIS.to_owned()),
    };
    let hash = audit::entry_hash(seq, event, &prev);
    let entry = AuditEntry { seq, event: event.clone(), prev, hash };
    table.insert(seq, to_json(&entry)?.as_slice())?;
    Ok(seq)
}

fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    from: &redb::ReadTransaction,
    to: &WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<()> {
    let src = from.open_table(def)?;
    let mut dst = to.open_table(def)?;
    for item in src.iter()? {
        let (k, v) = item?;
        dst.insert(k.value(), v.value())?;
    }
    Ok(())
}
