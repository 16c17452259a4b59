//! The embedded backend: one redb file, one writer thread that group-commits (every write
//! waiting when a commit starts goes into the next transaction, fsynced once; each caller is
//! answered only after that commit). redb serialises writers, so a check and the insert it
//! guards run in one transaction that no other write interleaves with.

use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;

use redb::{
    Database, Key, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    TableDefinition, TableHandle, Value, WriteTransaction,
};

use crate::store::{StoreRead, StoreWrite};
use crate::{
    ActivationEntry, ActivationRecord, Approval, BulkFilter, CertRecord, ChainSummary, ChallengeRecord,
    PrincipalRecord, RegistryError, ReleasedCert, RequestResult, Result, RevokedCert, TerminalFilter, TerminalRecord,
    from_json, to_json,
};

const TERMINALS: TableDefinition<&str, &[u8]> = TableDefinition::new("terminals");
const CERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("certs");
const CERT_DER: TableDefinition<&str, &[u8]> = TableDefinition::new("cert_der");
const PUBKEYS: TableDefinition<&str, &str> = TableDefinition::new("pubkeys");
const REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("requests");
const PRINCIPALS: TableDefinition<&str, &[u8]> = TableDefinition::new("principals");
const ACTIVATIONS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("activations");
/// The activation log: log number (commit order) → JSON record, a copy of the `activations`
/// row, so a reader after a cursor walks one range.
const ACTIVATION_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("activation_log");
const NONCES: TableDefinition<&[u8], u64> = TableDefinition::new("nonces");
/// Activation challenges handed out and not yet used (challenge → JSON record).
const CHALLENGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("activation_challenges");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const AUDIT_CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("audit_checkpoints");
const REVOKED: TableDefinition<&str, &[u8]> = TableDefinition::new("revoked");
const RELEASED: TableDefinition<&str, &[u8]> = TableDefinition::new("released");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Keys whose certificate was revoked for key or CA compromise: never certified again.
const COMPROMISED_KEYS: TableDefinition<&str, &str> = TableDefinition::new("compromised_keys");
const APPROVALS: TableDefinition<&str, &[u8]> = TableDefinition::new("approvals");

const REVOKED_INDEXED: &str = "revoked_indexed";
/// Set once `activation_log` was built from `activations` (older registries lack it).
const ACTIVATIONS_LOGGED: &str = "activations_logged";

// Filter indexes: (value, terminal serial) → (), so a filtered page walks only matching serials,
// in serial order; several filters are intersected by leapfrogging (`list_filtered`).
const TERMINALS_BY_STATE: TableDefinition<(&str, &str), ()> = TableDefinition::new("terminals_by_state");
const TERMINALS_BY_CLASS: TableDefinition<(&str, &str), ()> = TableDefinition::new("terminals_by_class");
const TERMINALS_BY_MANUFACTURER: TableDefinition<(&str, &str), ()> = TableDefinition::new("terminals_by_manufacturer");
const TERMINALS_BY_LOT: TableDefinition<(&str, &str), ()> = TableDefinition::new("terminals_by_lot");
/// Running counts: (dimension, value) → terminals; a group that falls to 0 is removed.
const TERMINAL_COUNTS: TableDefinition<(&str, &str), u64> = TableDefinition::new("terminal_counts");
/// (hour since the epoch, station, kind) → how many (`StoreWrite::add_hourly_count`); an older
/// file starts with none.
const HOURLY_COUNTS: TableDefinition<(u64, &str, &str), u64> = TableDefinition::new("hourly_counts");
/// Set once the indexes and counts above were built from `terminals` (older registries lack them).
const TERMINALS_INDEXED: &str = "terminals_indexed";

// Audit indexes: (actor or target, seq) → (), written with each entry, so a principal's or a
// terminal's entries are found newest first however old they are.
const AUDIT_BY_ACTOR: TableDefinition<(&str, u64), ()> = TableDefinition::new("audit_by_actor");
const AUDIT_BY_TARGET: TableDefinition<(&str, u64), ()> = TableDefinition::new("audit_by_target");
/// Set once the audit indexes were built from `audit` (older registries lack them).
const AUDIT_INDEXED: &str = "audit_indexed";

/// Adds (or, with `add` false, removes) the index entries of audit entry `seq` stored as `bytes`.
fn index_audit(w: &RedbWrite, seq: u64, bytes: &[u8], add: bool) -> Result<()> {
    let Some((actor, target)) = crate::audit::index_keys(bytes) else { return Ok(()) };
    for (table, key) in [(AUDIT_BY_ACTOR, actor), (AUDIT_BY_TARGET, target)] {
        let Some(key) = key.as_deref() else { continue };
        w.with(table, |index| {
            if add {
                index.insert((key, seq), ())?;
            } else {
                index.remove((key, seq))?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// Registries made before the audit indexes existed get them built from `audit`, once.
fn index_audit_once(txn: &WriteTransaction) -> Result<()> {
    if txn.open_table(META)?.get(AUDIT_INDEXED)?.is_some() {
        return Ok(());
    }
    let w = RedbWrite::new(txn);
    let audit = txn.open_table(AUDIT)?;
    for item in audit.iter()? {
        let (k, v) = item?;
        index_audit(&w, k.value(), v.value(), true)?;
    }
    drop(w);
    txn.open_table(META)?.insert(AUDIT_INDEXED, 1)?;
    Ok(())
}

type Index = TableDefinition<'static, (&'static str, &'static str), ()>;

/// A terminal's entries in each filter index, and the count dimension each feeds (lot: none).
fn index_entries(t: &TerminalRecord) -> [(Index, Option<&str>, Option<&'static str>); 4] {
    use crate::store::dimension;
    [
        (TERMINALS_BY_STATE, Some(t.state.as_str()), Some(dimension::STATE)),
        (TERMINALS_BY_CLASS, Some(t.class.as_str()), Some(dimension::CLASS)),
        (TERMINALS_BY_MANUFACTURER, Some(t.manufacturer.as_str()), Some(dimension::MANUFACTURER)),
        (TERMINALS_BY_LOT, t.lot.as_deref(), None),
    ]
}

/// Moves `serial`'s index entries and counts from `old` to `new` (either absent), inside the
/// transaction that stores the record.
fn reindex_terminal(w: &RedbWrite, old: Option<&TerminalRecord>, new: &TerminalRecord) -> Result<()> {
    let serial = new.serial.as_str();
    let before = old.map(index_entries);
    w.with(TERMINAL_COUNTS, |counts| {
        for (i, (table, value, counted)) in index_entries(new).into_iter().enumerate() {
            let was = before.as_ref().and_then(|b| b[i].1);
            if old.is_some() && was == value {
                continue;
            }
            w.with(table, |index| move_entry(index, counts, serial, was, value, counted))?;
        }
        Ok(())
    })
}

/// Moves `serial` in one filter index from `was` to `value` (either absent), counting the move in
/// `counted`'s dimension of `counts`.
fn move_entry(
    index: &mut Table<(&'static str, &'static str), ()>,
    counts: &mut Table<(&'static str, &'static str), u64>,
    serial: &str,
    was: Option<&str>,
    value: Option<&str>,
    counted: Option<&str>,
) -> Result<()> {
    if let Some(was) = was {
        index.remove((was, serial))?;
        if let Some(dim) = counted {
            let n = counts.get((dim, was))?.map_or(0, |v| v.value());
            if n <= 1 {
                counts.remove((dim, was))?;
            } else {
                counts.insert((dim, was), n - 1)?;
            }
        }
    }
    if let Some(value) = value {
        index.insert((value, serial), ())?;
        if let Some(dim) = counted {
            let n = counts.get((dim, value))?.map_or(0, |v| v.value());
            counts.insert((dim, value), n + 1)?;
        }
    }
    Ok(())
}

/// Set once the hourly counts were built from `certs` (older registries lack them).
const HOURLY_COUNTED: &str = "hourly_counted";

/// Registries made before the hourly counts existed get them from `certs`, once: each
/// certificate a station asked for (its `station` set) in its issue hour, and its first
/// provisioning confirmation in that one's hour.
fn count_hourly_once(txn: &WriteTransaction) -> Result<()> {
    if txn.open_table(META)?.get(HOURLY_COUNTED)?.is_some() {
        return Ok(());
    }
    let mut w = RedbWrite::new(txn);
    for item in txn.open_table(CERTS)?.iter()? {
        let rec: CertRecord = from_json(item?.1.value())?;
        if let Some(station) = &rec.station {
            w.add_hourly_count(rec.issued_ms / crate::HOUR_MS, station, crate::HourlyKind::Issued, 1)?;
        }
        if let Some(p) = &rec.provisioning {
            w.add_hourly_count(p.at_ms / crate::HOUR_MS, &p.station, crate::HourlyKind::Provisioned, 1)?;
        }
    }
    txn.open_table(META)?.insert(HOURLY_COUNTED, 1)?;
    Ok(())
}

/// Registries made before the filter indexes and running counts existed get them built from
/// `terminals`, once (a few seconds per million terminals).
fn index_terminals_once(txn: &WriteTransaction) -> Result<()> {
    if txn.open_table(META)?.get(TERMINALS_INDEXED)?.is_some() {
        return Ok(());
    }
    for table in [TERMINALS_BY_STATE, TERMINALS_BY_CLASS, TERMINALS_BY_MANUFACTURER, TERMINALS_BY_LOT] {
        txn.open_table(table)?.retain(|_, _| false)?;
    }
    txn.open_table(TERMINAL_COUNTS)?.retain(|_, _| false)?;
    let w = RedbWrite::new(txn);
    let terminals = txn.open_table(TERMINALS)?;
    for item in terminals.iter()? {
        let t: TerminalRecord = from_json(item?.1.value())?;
        reindex_terminal(&w, None, &t)?;
    }
    drop(w);
    txn.open_table(META)?.insert(TERMINALS_INDEXED, 1)?;
    Ok(())
}

/// The first serial at or after (`inclusive`) or after `from` in `value`'s part of an index.
fn seek(
    index: &impl ReadableTable<(&'static str, &'static str), ()>,
    value: &str,
    from: &str,
    inclusive: bool,
) -> Result<Option<String>> {
    use std::ops::Bound;
    let lower = if inclusive { Bound::Included((value, from)) } else { Bound::Excluded((value, from)) };
    let Some(item) = index.range::<(&str, &str)>((lower, Bound::Unbounded))?.next() else { return Ok(None) };
    let key = item?.0;
    let (v, serial) = key.value();
    Ok((v == value).then(|| serial.to_owned()))
}

/// The terminals in every one of `indexes` (table, value), in serial order after `after`, at most
/// `limit + 1`: leapfrogging — each index seeks to the largest serial another proposed, until
/// all agree — so a page costs seeks near its matches, not a scan of everything before them.
fn list_filtered<T, I>(
    terminals: &T,
    indexes: &[(I, &str)],
    filter: &TerminalFilter,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<TerminalRecord>>
where
    T: ReadableTable<&'static str, &'static [u8]>,
    I: ReadableTable<(&'static str, &'static str), ()>,
{
    let mut out = Vec::new();
    let n = indexes.len();
    let Some((first, first_value)) = indexes.first() else { return Ok(out) };
    let (mut from, mut inclusive) = (after.unwrap_or("").to_owned(), after.is_none());
    'page: while out.len() <= limit {
        let Some(mut candidate) = seek(first, first_value, &from, inclusive)? else { break };
        let (mut agreed, mut i) = (1, 1 % n);
        while agreed < n {
            let (index, value) = &indexes[i];
            match seek(index, value, &candidate, true)? {
                None => break 'page,
                Some(s) if s == candidate => agreed += 1,
                Some(s) => (candidate, agreed) = (s, 1),
            }
            i = (i + 1) % n;
        }
        let record = terminals
            .get(candidate.as_str())?
            .ok_or_else(|| RegistryError::Corrupt(format!("index names unknown terminal {candidate}")))?;
        let t: TerminalRecord = from_json(record.value())?;
        if filter.admits(&t) {
            out.push(t);
        }
        (from, inclusive) = (candidate, false);
    }
    Ok(out)
}

storage_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

use super::Finish;
/// A write, run by the writer thread inside a batch transaction: says whether it broke the
/// transaction (a storage error) and how to answer its caller after the commit.
type Job = Box<dyn FnOnce(&mut RedbWrite<'_>) -> (bool, Finish) + Send>;

/// Most writes committed together.
const MAX_BATCH: usize = 256;

/// An open redb registry.
pub(crate) struct RedbStore {
    db: Arc<Database>,
    pub(crate) writer_counters: Arc<super::WriterCounters>,
    writer: Option<std::sync::mpsc::Sender<Job>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // Closing the channel ends the writer after its last batch; joining it releases the
        // database, so the file can be opened again at once.
        drop(self.writer.take());
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }
}

/// Group commit: a write that is refused wrote nothing (every write checks before it inserts),
/// so it cannot spoil the batch; a storage error aborts the whole batch and every caller in it
/// gets the error.
fn writer_loop(db: Arc<Database>, jobs: std::sync::mpsc::Receiver<Job>, counters: &super::WriterCounters) {
    while let Ok(first) = jobs.recv() {
        let started = std::time::Instant::now();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        // If no transaction can be opened the jobs are dropped: their callers see an error.
        let Ok(txn) = db.begin_write() else { continue };
        let mut tables = RedbWrite::new(&txn);
        let (broken, finishes) = super::run_batch(batch, |job| job(&mut tables));
        // Its tables closed, so the transaction can commit.
        drop(tables);
        let outcome = if broken {
            drop(txn);
            Err(super::batch_aborted())
        } else {
            txn.commit().map_err(RegistryError::from)
        };
        counters.batch(finishes.len(), outcome.is_ok(), started.elapsed());
        for finish in finishes {
            finish(outcome.clone());
        }
    }
}

impl RedbStore {
    /// Opens (or creates) the database at `path`.
    pub(crate) fn open(path: &Path) -> Result<Self> {
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
            txn.open_table(ACTIVATION_LOG)?;
            txn.open_table(NONCES)?;
            txn.open_table(CHALLENGES)?;
            txn.open_table(AUDIT)?;
            txn.open_table(AUDIT_CHECKPOINTS)?;
            txn.open_table(REVOKED)?;
            txn.open_table(RELEASED)?;
            txn.open_table(META)?;
            txn.open_table(APPROVALS)?;
            txn.open_table(COMPROMISED_KEYS)?;
            txn.open_table(TERMINALS_BY_STATE)?;
            txn.open_table(TERMINALS_BY_CLASS)?;
            txn.open_table(TERMINALS_BY_MANUFACTURER)?;
            txn.open_table(TERMINALS_BY_LOT)?;
            txn.open_table(TERMINAL_COUNTS)?;
            txn.open_table(HOURLY_COUNTS)?;
            txn.open_table(AUDIT_BY_ACTOR)?;
            txn.open_table(AUDIT_BY_TARGET)?;
            index_revoked_once(&txn)?;
            log_activations_once(&txn)?;
            index_terminals_once(&txn)?;
            index_audit_once(&txn)?;
            count_hourly_once(&txn)?;
            tag_kinds(&txn)?;
        }
        txn.commit()?;
        let db = Arc::new(db);
        let (writer, jobs) = std::sync::mpsc::channel::<Job>();
        let (for_writer, writer_counters) = (db.clone(), Arc::new(super::WriterCounters::default()));
        let counters = writer_counters.clone();
        let thread = std::thread::Builder::new()
            .name("registry-writer".into())
            .spawn(move || writer_loop(for_writer, jobs, &counters))?;
        Ok(Self { db, writer_counters, writer: Some(writer), writer_thread: Some(thread) })
    }

    /// Runs `f` on a read snapshot.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&mut dyn StoreRead) -> Result<T>) -> Result<T> {
        let txn = self.db.begin_read()?;
        f(&mut RedbRead(&txn))
    }

    /// Queues `f` for the next batch transaction; `reply` gets its result after the commit.
    pub(crate) fn enqueue<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn StoreWrite) -> Result<T> + Send + 'static,
        reply: super::Reply<T>,
    ) -> Result<()> {
        let job: Job = Box::new(move |tables| {
            let result = f(tables);
            super::job_outcome(result, reply)
        });
        let writer = self.writer.as_ref().ok_or_else(|| RegistryError::Storage("registry writer stopped".into()))?;
        writer.send(job).map_err(|_| RegistryError::Storage("registry writer stopped".into()))
    }

    /// Writes a consistent copy (one read snapshot) of every table to a new database at `out`,
    /// while the registry keeps serving.
    pub(crate) fn backup(&self, out: &Path) -> Result<()> {
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
        copy_table(&snapshot, &txn, ACTIVATION_LOG)?;
        copy_table(&snapshot, &txn, NONCES)?;
        copy_table(&snapshot, &txn, AUDIT)?;
        copy_table(&snapshot, &txn, AUDIT_CHECKPOINTS)?;
        copy_table(&snapshot, &txn, REVOKED)?;
        copy_table(&snapshot, &txn, RELEASED)?;
        copy_table(&snapshot, &txn, META)?;
        copy_table(&snapshot, &txn, APPROVALS)?;
        copy_table(&snapshot, &txn, COMPROMISED_KEYS)?;
        copy_table(&snapshot, &txn, TERMINALS_BY_STATE)?;
        copy_table(&snapshot, &txn, TERMINALS_BY_CLASS)?;
        copy_table(&snapshot, &txn, TERMINALS_BY_MANUFACTURER)?;
        copy_table(&snapshot, &txn, TERMINALS_BY_LOT)?;
        copy_table(&snapshot, &txn, TERMINAL_COUNTS)?;
        copy_table(&snapshot, &txn, HOURLY_COUNTS)?;
        copy_table(&snapshot, &txn, AUDIT_BY_ACTOR)?;
        copy_table(&snapshot, &txn, AUDIT_BY_TARGET)?;
        txn.commit()?;
        Ok(())
    }

    /// Every durable record, from one read snapshot (for `migrate --from`).
    pub(crate) fn export(&self) -> Result<crate::store::Export> {
        use crate::store::{Export, counter};
        let txn = self.db.begin_read()?;
        let mut r = RedbRead(&txn);
        let pairs = |def: TableDefinition<&str, &str>| -> Result<Vec<(String, String)>> {
            txn.open_table(def)?
                .iter()?
                .map(|item| item.map(|(k, v)| (k.value().to_owned(), v.value().to_owned())).map_err(Into::into))
                .collect()
        };
        let mut certs = Vec::new();
        for rec in r.certificates()? {
            let der =
                r.cert_der(&rec.serial)?.ok_or_else(|| RegistryError::Corrupt(format!("no DER for {}", rec.serial)))?;
            certs.push((rec, der));
        }
        let requests = txn
            .open_table(REQUESTS)?
            .iter()?
            .map(|item| {
                let (k, v) = item?;
                Ok((k.value().to_owned(), from_json(v.value())?))
            })
            .collect::<Result<_>>()?;
        let activations =
            txn.open_table(ACTIVATION_LOG)?.iter()?.map(|item| from_json(item?.1.value())).collect::<Result<_>>()?;
        let mut audit = Vec::new();
        r.audit_scan(&mut |k, v| {
            audit.push((k, v.to_vec()));
            Ok(())
        })?;
        let counters = [counter::REVOCATION_SEQ, counter::CRL_NUMBER, counter::ORDINAL_HIGH_WATER]
            .into_iter()
            .map(|name| Ok((name.to_owned(), r.counter(name)?)))
            .collect::<Result<_>>()?;
        Ok(Export {
            terminals: txn
                .open_table(TERMINALS)?
                .iter()?
                .map(|item| from_json(item?.1.value()))
                .collect::<Result<_>>()?,
            certs,
            pubkeys: pairs(PUBKEYS)?,
            compromised: pairs(COMPROMISED_KEYS)?,
            requests,
            principals: r.principals()?,
            approvals: r.approvals()?,
            activations,
            counters,
            revoked: r.revoked()?,
            released: r.released()?,
            audit,
            checkpoints: r.checkpoints_raw()?,
            hourly: r.hourly_counts(0)?,
        })
    }

    /// Writes `data` (another backend's records, bytes unchanged) into a new redb registry at
    /// `out`, in one transaction: the backup of a PostgreSQL registry, which `restore`,
    /// `cactl audit verify --registry` and [`crate::Registry::open`] read like any other.
    pub(crate) fn create_from(out: &Path, data: crate::store::Export) -> Result<()> {
        if out.exists() {
            return Err(RegistryError::TargetExists(out.display().to_string()));
        }
        let store = super::Backend::Redb(Self::open(out)?);
        let written = store.write(move |s| {
            data.write_records(s)?;
            // A new file's counters are 0: advancing by the value sets it.
            for (name, value) in &data.counters {
                s.advance(name, *value)?;
            }
            Ok(())
        });
        drop(store);
        if written.is_err() {
            // A refusal commits what came before it here: leave no half a backup behind.
            let _ = std::fs::remove_file(out);
        }
        written
    }

    /// Restores a backup to `target` (which must not exist) after verifying its audit chain.
    pub(crate) fn restore(backup: &Path, target: &Path) -> Result<ChainSummary> {
        if target.exists() {
            return Err(RegistryError::TargetExists(target.display().to_string()));
        }
        let summary = crate::Registry::open(backup)?.verify_audit_chain()?;
        let tmp = target.with_extension("restoring");
        std::fs::copy(backup, &tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, target)?;
        Ok(summary)
    }
}

/// Registries made before the `revoked` index existed get it built from `certs`, once.
fn index_revoked_once(txn: &WriteTransaction) -> Result<()> {
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

/// Registries made before the activation log existed get it built from `activations`, once, in
/// the order the activations were made (time, then terminal and number).
fn log_activations_once(txn: &WriteTransaction) -> Result<()> {
    let mut meta = txn.open_table(META)?;
    if meta.get(ACTIVATIONS_LOGGED)?.is_some() {
        return Ok(());
    }
    let mut all = Vec::new();
    for item in txn.open_table(ACTIVATIONS)?.iter()? {
        let (key, value) = item?;
        let rec: ActivationRecord = from_json(value.value())?;
        let (terminal, n) = key.value();
        all.push((rec.at_ms, terminal.to_owned(), n, value.value().to_vec()));
    }
    all.sort();
    let mut log = txn.open_table(ACTIVATION_LOG)?;
    let mut seq = meta.get(crate::store::counter::ACTIVATION_SEQ)?.map_or(0, |v| v.value());
    for (_, _, _, bytes) in &all {
        seq += 1;
        log.insert(seq, bytes.as_slice())?;
    }
    meta.insert(crate::store::counter::ACTIVATION_SEQ, seq)?;
    meta.insert(ACTIVATIONS_LOGGED, 1)?;
    Ok(())
}

/// Approvals stored when every approval was a bulk revocation get their `kind` tag (at open;
/// approvals are few).
fn tag_kinds(txn: &WriteTransaction) -> Result<()> {
    let mut table = txn.open_table(APPROVALS)?;
    let mut retagged = Vec::new();
    for item in table.iter()? {
        let (k, v) = item?;
        let mut value: serde_json::Value = from_json(v.value())?;
        if let Some(obj) = value.as_object_mut().filter(|o| !o.contains_key("kind")) {
            obj.insert("kind".into(), "bulk_revocation".into());
            retagged.push((k.value().to_owned(), to_json(&value)?));
        }
    }
    for (k, v) in retagged {
        table.insert(k.as_str(), v.as_slice())?;
    }
    Ok(())
}

fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    from: &ReadTransaction,
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

struct RedbRead<'a>(&'a ReadTransaction);

impl RedbRead<'_> {
    fn with<K: Key + 'static, V: Value + 'static, R>(
        &self,
        def: TableDefinition<'static, K, V>,
        f: impl FnOnce(&mut ReadOnlyTable<K, V>) -> Result<R>,
    ) -> Result<R> {
        f(&mut self.0.open_table(def)?)
    }

    fn txn(&self) -> &ReadTransaction {
        self.0
    }
}

/// A write transaction whose tables stay open from one write of a batch to the next: opening a
/// table looks it up in redb's table tree and closing it writes its root back, and when each
/// write of a batch did both for each of its ten or so tables that was 4 % of issuance.
struct RedbWrite<'t> {
    txn: &'t WriteTransaction,
    open: RefCell<OpenTables<'t>>,
}

/// A table type that [`RedbWrite`] keeps open: where its open tables are, by name.
trait KeptOpen<'t>: Sized {
    fn kept<'o>(open: &'o mut OpenTables<'t>) -> &'o mut Vec<(String, Self)>;
}

macro_rules! open_tables {
    ($($field:ident: $k:ty => $v:ty,)*) => {
        /// The tables a batch has open, one list per key and value type.
        #[derive(Default)]
        struct OpenTables<'t> {
            $($field: Vec<(String, Table<'t, $k, $v>)>,)*
        }

        $(impl<'t> KeptOpen<'t> for Table<'t, $k, $v> {
            fn kept<'o>(open: &'o mut OpenTables<'t>) -> &'o mut Vec<(String, Self)> {
                &mut open.$field
            }
        })*
    };
}

open_tables! {
    str_bytes: &'static str => &'static [u8],
    str_str: &'static str => &'static str,
    str_u64: &'static str => u64,
    u64_bytes: u64 => &'static [u8],
    bytes_bytes: &'static [u8] => &'static [u8],
    bytes_u64: &'static [u8] => u64,
    str_seq_bytes: (&'static str, u64) => &'static [u8],
    str_seq_unit: (&'static str, u64) => (),
    str_str_unit: (&'static str, &'static str) => (),
    str_str_u64: (&'static str, &'static str) => u64,
    hour_str_str_u64: (u64, &'static str, &'static str) => u64,
}

impl<'t> RedbWrite<'t> {
    fn new(txn: &'t WriteTransaction) -> Self {
        Self { txn, open: RefCell::default() }
    }

    /// Runs `f` on `def`'s table, opening it only if this batch has not yet.
    fn with<K: Key + 'static, V: Value + 'static, R>(
        &self,
        def: TableDefinition<'static, K, V>,
        f: impl FnOnce(&mut Table<'t, K, V>) -> Result<R>,
    ) -> Result<R>
    where
        Table<'t, K, V>: KeptOpen<'t>,
    {
        let kept = {
            let mut open = self.open.borrow_mut();
            let list = Table::kept(&mut open);
            list.iter().position(|(n, _)| n == def.name()).map(|i| list.swap_remove(i))
        };
        let (name, mut table) = match kept {
            Some(kept) => kept,
            None => (def.name().to_owned(), self.txn.open_table(def)?),
        };
        let result = f(&mut table);
        Table::kept(&mut self.open.borrow_mut()).push((name, table));
        result
    }

    /// The transaction with every kept table closed, for code that opens tables itself.
    fn txn(&self) -> &'t WriteTransaction {
        *self.open.borrow_mut() = OpenTables::default();
        self.txn
    }
}

macro_rules! redb_reads {
    ($t:ident) => {
        impl StoreRead for $t<'_> {
            fn terminal(&mut self, serial: &str) -> Result<Option<TerminalRecord>> {
                self.with(TERMINALS, |t| t.get(serial)?.map(|v| from_json(v.value())).transpose())
            }

            fn list_terminals(
                &mut self,
                filter: &TerminalFilter,
                after: Option<&str>,
                limit: usize,
            ) -> Result<Vec<TerminalRecord>> {
                let table = self.txn().open_table(TERMINALS)?;
                let mut indexes = Vec::new();
                let state = filter.state.map(|s| s.as_str());
                for (index, value) in [
                    (TERMINALS_BY_STATE, state),
                    (TERMINALS_BY_CLASS, filter.class.as_deref()),
                    (TERMINALS_BY_MANUFACTURER, filter.manufacturer.as_deref()),
                    (TERMINALS_BY_LOT, filter.lot.as_deref()),
                ] {
                    if let Some(value) = value {
                        indexes.push((self.txn().open_table(index)?, value));
                    }
                }
                if !indexes.is_empty() {
                    return list_filtered(&table, &indexes, filter, after, limit);
                }
                let range = match after {
                    Some(a) => table.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))?,
                    None => table.range::<&str>(..)?,
                };
                let mut out = Vec::new();
                for item in range {
                    let t: TerminalRecord = from_json(item?.1.value())?;
                    if filter.admits(&t) {
                        out.push(t);
                        if out.len() > limit {
                            break;
                        }
                    }
                }
                Ok(out)
            }

            fn terminal_counts(&mut self) -> Result<crate::TerminalCounts> {
                let mut counts = crate::TerminalCounts::default();
                for item in self.txn().open_table(TERMINAL_COUNTS)?.iter()? {
                    let (k, v) = item?;
                    let (dimension, value) = k.value();
                    counts.add(dimension, value, v.value())?;
                }
                Ok(counts)
            }

            fn hourly_counts(&mut self, since_hour: u64) -> Result<Vec<crate::HourlyCount>> {
                let mut out = Vec::new();
                for item in self.txn().open_table(HOURLY_COUNTS)?.range((since_hour, "", "")..)? {
                    let (k, v) = item?;
                    let (hour, station, kind) = k.value();
                    out.push(crate::HourlyCount {
                        hour,
                        station: station.to_owned(),
                        kind: crate::HourlyKind::parse(kind)?,
                        n: v.value(),
                    });
                }
                Ok(out)
            }

            fn terminals_with_active_cert(&mut self, filter: &BulkFilter) -> Result<Vec<TerminalRecord>> {
                let mut out = Vec::new();
                for item in self.txn().open_table(TERMINALS)?.iter()? {
                    let t: TerminalRecord = from_json(item?.1.value())?;
                    if filter.admits(&t) && t.active_cert.is_some() {
                        out.push(t);
                    }
                }
                Ok(out)
            }

            fn cert(&mut self, serial: &str) -> Result<Option<CertRecord>> {
                self.with(CERTS, |t| t.get(serial)?.map(|v| from_json(v.value())).transpose())
            }

            fn cert_der(&mut self, serial: &str) -> Result<Option<Vec<u8>>> {
                self.with(CERT_DER, |t| Ok(t.get(serial)?.map(|v| v.value().to_vec())))
            }

            fn certificates(&mut self) -> Result<Vec<CertRecord>> {
                self.with(CERTS, |t| t.iter()?.map(|item| from_json(item?.1.value())).collect())
            }

            fn key_owner(&mut self, fingerprint: &str) -> Result<Option<String>> {
                self.with(PUBKEYS, |t| Ok(t.get(fingerprint)?.map(|v| v.value().to_owned())))
            }

            fn compromised_by(&mut self, fingerprint: &str) -> Result<Option<String>> {
                self.with(COMPROMISED_KEYS, |t| Ok(t.get(fingerprint)?.map(|v| v.value().to_owned())))
            }

            fn request(&mut self, id: &str) -> Result<Option<RequestResult>> {
                self.with(REQUESTS, |t| t.get(id)?.map(|v| from_json(v.value())).transpose())
            }

            fn principal(&mut self, name: &str) -> Result<Option<PrincipalRecord>> {
                self.with(PRINCIPALS, |t| t.get(name)?.map(|v| from_json(v.value())).transpose())
            }

            fn principals(&mut self) -> Result<Vec<PrincipalRecord>> {
                self.with(PRINCIPALS, |t| t.iter()?.map(|item| from_json(item?.1.value())).collect())
            }

            fn approval(&mut self, id: &str) -> Result<Option<Approval>> {
                self.with(APPROVALS, |t| t.get(id)?.map(|v| from_json(v.value())).transpose())
            }

            fn approvals(&mut self) -> Result<Vec<Approval>> {
                self.with(APPROVALS, |t| t.iter()?.map(|item| from_json(item?.1.value())).collect())
            }

            fn activations(&mut self, terminal: &str) -> Result<Vec<ActivationRecord>> {
                let table = self.txn().open_table(ACTIVATIONS)?;
                table.range((terminal, 0)..=(terminal, u64::MAX))?.map(|item| from_json(item?.1.value())).collect()
            }

            fn activations_after(&mut self, after: u64, limit: usize) -> Result<Vec<ActivationEntry>> {
                let table = self.txn().open_table(ACTIVATION_LOG)?;
                let Some(from) = after.checked_add(1) else { return Ok(Vec::new()) };
                table
                    .range(from..)?
                    .take(limit)
                    .map(|item| {
                        let (k, v) = item?;
                        Ok(ActivationEntry { seq: k.value(), activation: from_json(v.value())? })
                    })
                    .collect()
            }

            fn challenges_outstanding(&mut self, operator: &str, now_ms: u64) -> Result<u64> {
                // The table holds one lifetime's challenges (each new one prunes the expired).
                let mut n = 0;
                for item in self.txn().open_table(CHALLENGES)?.iter()? {
                    let c: ChallengeRecord = from_json(item?.1.value())?;
                    n += u64::from(c.operator == operator && c.expires_ms > now_ms);
                }
                Ok(n)
            }

            fn challenge(&mut self, challenge: &[u8]) -> Result<Option<ChallengeRecord>> {
                self.with(CHALLENGES, |t| t.get(challenge)?.map(|v| from_json(v.value())).transpose())
            }

            fn counter(&mut self, name: &str) -> Result<u64> {
                self.with(META, |t| Ok(t.get(name)?.map_or(0, |v| v.value())))
            }

            fn revoked(&mut self) -> Result<Vec<RevokedCert>> {
                self.with(REVOKED, |t| t.iter()?.map(|item| from_json(item?.1.value())).collect())
            }

            fn released(&mut self) -> Result<Vec<ReleasedCert>> {
                self.with(RELEASED, |t| t.iter()?.map(|item| from_json(item?.1.value())).collect())
            }

            fn audit_raw(&mut self, seq: u64) -> Result<Option<Vec<u8>>> {
                self.with(AUDIT, |t| Ok(t.get(seq)?.map(|v| v.value().to_vec())))
            }

            fn audit_last_raw(&mut self) -> Result<Option<(u64, Vec<u8>)>> {
                self.with(AUDIT, |t| Ok(t.last()?.map(|(k, v)| (k.value(), v.value().to_vec()))))
            }

            fn audit_newest_raw(&mut self, n: usize) -> Result<Vec<Vec<u8>>> {
                let table = self.txn().open_table(AUDIT)?;
                table.iter()?.rev().take(n).map(|item| Ok(item?.1.value().to_vec())).collect()
            }

            fn audit_len(&mut self) -> Result<u64> {
                self.with(AUDIT, |t| Ok(t.len()?))
            }

            fn audit_by_raw(&mut self, by: &crate::AuditBy, before: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
                let (table, key) = match by {
                    crate::AuditBy::Actor(a) => (AUDIT_BY_ACTOR, a.as_str()),
                    crate::AuditBy::Target(t) => (AUDIT_BY_TARGET, t.as_str()),
                };
                let index = self.txn().open_table(table)?;
                let audit = self.txn().open_table(AUDIT)?;
                let mut out = Vec::new();
                for item in index.range((key, 0)..(key, before))?.rev().take(limit) {
                    let seq = item?.0.value().1;
                    if let Some(v) = audit.get(seq)? {
                        out.push((seq, v.value().to_vec()));
                    }
                }
                Ok(out)
            }

            fn audit_scan(&mut self, f: &mut dyn FnMut(u64, &[u8]) -> Result<()>) -> Result<()> {
                for item in self.txn().open_table(AUDIT)?.iter()? {
                    let (k, v) = item?;
                    f(k.value(), v.value())?;
                }
                Ok(())
            }

            fn checkpoints_raw(&mut self) -> Result<Vec<(u64, Vec<u8>)>> {
                let table = self.txn().open_table(AUDIT_CHECKPOINTS)?;
                table
                    .iter()?
                    .map(|item| item.map(|(k, v)| (k.value(), v.value().to_vec())).map_err(Into::into))
                    .collect()
            }

            fn last_checkpoint_raw(&mut self) -> Result<Option<Vec<u8>>> {
                self.with(AUDIT_CHECKPOINTS, |t| Ok(t.last()?.map(|(_, v)| v.value().to_vec())))
            }
        }
    };
}
redb_reads!(RedbRead);
redb_reads!(RedbWrite);

/// Inserts `value` under `key` unless the key is taken: then `taken` is the refusal.
fn insert_new(
    table: &mut Table<&'static str, &'static [u8]>,
    key: &str,
    value: &[u8],
    taken: impl FnOnce() -> RegistryError,
) -> Result<()> {
    if table.get(key)?.is_some() {
        return Err(taken());
    }
    table.insert(key, value)?;
    Ok(())
}

impl StoreWrite for RedbWrite<'_> {
    fn insert_terminal(&mut self, t: &TerminalRecord) -> Result<()> {
        self.with(TERMINALS, |table| {
            insert_new(table, t.serial.as_str(), to_json(t)?.as_slice(), || {
                RegistryError::TerminalExists(t.serial.clone())
            })
        })?;
        reindex_terminal(self, None, t)
    }

    fn update_terminal(&mut self, t: &TerminalRecord) -> Result<()> {
        let old = self.with(TERMINALS, |table| {
            let old = table.insert(t.serial.as_str(), to_json(t)?.as_slice())?;
            old.map(|v| from_json::<TerminalRecord>(v.value())).transpose()
        })?;
        reindex_terminal(self, old.as_ref(), t)
    }

    fn insert_cert(&mut self, rec: &CertRecord, der: &[u8]) -> Result<()> {
        self.with(CERTS, |t| {
            insert_new(t, rec.serial.as_str(), to_json(rec)?.as_slice(), || {
                RegistryError::CertSerialExists(rec.serial.clone())
            })
        })?;
        self.with(CERT_DER, |t| Ok(t.insert(rec.serial.as_str(), der).map(drop)?))
    }

    fn update_cert(&mut self, rec: &CertRecord) -> Result<()> {
        self.with(CERTS, |t| Ok(t.insert(rec.serial.as_str(), to_json(rec)?.as_slice()).map(drop)?))
    }

    fn bind_key(&mut self, fingerprint: &str, terminal: &str) -> Result<()> {
        self.with(PUBKEYS, |keys| {
            if let Some(owner) = keys.get(fingerprint)? {
                let owner = owner.value().to_owned();
                return Err(if owner == terminal {
                    RegistryError::KeyReused { terminal: owner }
                } else {
                    RegistryError::PublicKeyInUse { terminal: owner }
                });
            }
            keys.insert(fingerprint, terminal)?;
            Ok(())
        })
    }

    fn mark_compromised(&mut self, fingerprint: &str, cert: &str) -> Result<()> {
        self.with(COMPROMISED_KEYS, |t| Ok(t.insert(fingerprint, cert).map(drop)?))
    }

    fn insert_request(&mut self, id: &str, result: &RequestResult) -> Result<()> {
        self.with(REQUESTS, |t| {
            insert_new(t, id, to_json(result)?.as_slice(), || RegistryError::RequestIdReused(id.to_owned()))
        })
    }

    fn insert_principal(&mut self, p: &PrincipalRecord) -> Result<()> {
        self.with(PRINCIPALS, |t| {
            insert_new(t, p.name.as_str(), to_json(p)?.as_slice(), || RegistryError::PrincipalExists(p.name.clone()))
        })
    }

    fn update_principal(&mut self, p: &PrincipalRecord) -> Result<()> {
        self.with(PRINCIPALS, |t| Ok(t.insert(p.name.as_str(), to_json(p)?.as_slice()).map(drop)?))
    }

    fn insert_approval(&mut self, a: &Approval) -> Result<()> {
        self.with(APPROVALS, |t| {
            insert_new(t, a.id.as_str(), to_json(a)?.as_slice(), || RegistryError::ApprovalExists(a.id.clone()))
        })
    }

    fn update_approval(&mut self, a: &Approval) -> Result<()> {
        self.with(APPROVALS, |t| Ok(t.insert(a.id.as_str(), to_json(a)?.as_slice()).map(drop)?))
    }

    fn add_activation(&mut self, a: &ActivationRecord) -> Result<u64> {
        let t = a.terminal.as_str();
        let bytes = to_json(a)?;
        let n = self.with(ACTIVATIONS, |table| {
            let n = table.range((t, 0)..=(t, u64::MAX))?.count() as u64 + 1;
            table.insert((t, n), bytes.as_slice())?;
            Ok(n)
        })?;
        let seq = self.advance(crate::store::counter::ACTIVATION_SEQ, 1)? + 1;
        self.with(ACTIVATION_LOG, |log| Ok(log.insert(seq, bytes.as_slice()).map(drop)?))?;
        Ok(n)
    }

    fn put_challenge(&mut self, challenge: &[u8], rec: &ChallengeRecord, now_ms: u64) -> Result<()> {
        self.with(CHALLENGES, |table| {
            table.retain(|_, v| from_json::<ChallengeRecord>(v).map_or(true, |c| c.expires_ms > now_ms))?;
            table.insert(challenge, to_json(rec)?.as_slice())?;
            Ok(())
        })
    }

    fn remove_challenge(&mut self, challenge: &[u8]) -> Result<()> {
        self.with(CHALLENGES, |t| Ok(t.remove(challenge).map(drop)?))
    }

    fn use_nonce(&mut self, nonce: &[u8], now_ms: u64, expires_ms: u64) -> Result<()> {
        self.with(NONCES, |nonces| {
            if nonces.get(nonce)?.is_some_and(|v| v.value() > now_ms) {
                return Err(RegistryError::NonceReplayed);
            }
            nonces.retain(|_, exp| exp > now_ms)?;
            nonces.insert(nonce, expires_ms)?;
            Ok(())
        })
    }

    fn add_hourly_count(&mut self, hour: u64, station: &str, kind: crate::HourlyKind, n: u64) -> Result<()> {
        self.with(HOURLY_COUNTS, |table| {
            let key = (hour, station, kind.as_str());
            let before = table.get(key)?.map_or(0, |v| v.value());
            table.insert(key, before + n)?;
            Ok(())
        })
    }

    fn advance(&mut self, name: &str, n: u64) -> Result<u64> {
        self.with(META, |meta| {
            let before = meta.get(name)?.map_or(0, |v| v.value());
            meta.insert(name, before + n)?;
            Ok(before)
        })
    }

    fn put_revoked(&mut self, r: &RevokedCert) -> Result<()> {
        self.with(REVOKED, |t| Ok(t.insert(r.serial.as_str(), to_json(r)?.as_slice()).map(drop)?))
    }

    fn remove_revoked(&mut self, serial: &str) -> Result<()> {
        self.with(REVOKED, |t| Ok(t.remove(serial).map(drop)?))
    }

    fn put_released(&mut self, r: &ReleasedCert) -> Result<()> {
        self.with(RELEASED, |t| Ok(t.insert(r.serial.as_str(), to_json(r)?.as_slice()).map(drop)?))
    }

    fn remove_released(&mut self, serial: &str) -> Result<()> {
        self.with(RELEASED, |t| Ok(t.remove(serial).map(drop)?))
    }

    fn put_audit_raw(&mut self, seq: u64, bytes: Option<&[u8]>) -> Result<()> {
        let old = self.with(AUDIT, |table| {
            Ok(match bytes {
                Some(b) => table.insert(seq, b)?.map(|v| v.value().to_vec()),
                None => table.remove(seq)?.map(|v| v.value().to_vec()),
            })
        })?;
        if let Some(old) = old {
            index_audit(self, seq, &old, false)?;
        }
        if let Some(b) = bytes {
            index_audit(self, seq, b, true)?;
        }
        Ok(())
    }

    fn put_checkpoint_raw(&mut self, seq: u64, bytes: &[u8]) -> Result<()> {
        self.with(AUDIT_CHECKPOINTS, |t| Ok(t.insert(seq, bytes).map(drop)?))
    }

    fn cut_checkpoints_after(&mut self, seq: u64) -> Result<()> {
        self.with(AUDIT_CHECKPOINTS, |cps| {
            let cut: Vec<u64> = cps.range(seq + 1..)?.map(|item| Ok(item?.0.value())).collect::<Result<_>>()?;
            for k in cut {
                cps.remove(k)?;
            }
            Ok(())
        })
    }

    fn put_approval_raw(&mut self, id: &str, bytes: &[u8]) -> Result<()> {
        self.with(APPROVALS, |t| Ok(t.insert(id, bytes).map(drop)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terminal(serial: &str, state: crate::TerminalState) -> TerminalRecord {
        TerminalRecord {
            serial: serial.into(),
            class: "II".into(),
            manufacturer: "HSTM".into(),
            model: "M1".into(),
            lot: Some("L1".into()),
            state,
            active_cert: None,
            updated_ms: 0,
        }
    }

    #[test]
    fn a_batch_keeps_its_tables_open_and_sees_its_own_writes() {
        let dir = tempfile::tempdir().expect("dir");
        let db = Database::create(dir.path().join("r.redb")).expect("db");
        let txn = db.begin_write().expect("txn");
        let mut w = RedbWrite::new(&txn);
        w.insert_terminal(&terminal("T1", crate::TerminalState::Issued)).expect("insert");
        // Kept open: a second handle of the same table is refused by redb.
        assert!(txn.open_table(TERMINALS).is_err(), "the terminals table stays open between writes");
        assert!(matches!(
            w.insert_terminal(&terminal("T1", crate::TerminalState::Issued)),
            Err(RegistryError::TerminalExists(_))
        ));
        w.update_terminal(&terminal("T1", crate::TerminalState::Active)).expect("update");
        // A read that opens tables itself closes the kept ones first, then sees every write.
        let listed = w.list_terminals(&TerminalFilter::default(), None, 10).expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, crate::TerminalState::Active);
        assert_eq!(w.terminal_counts().expect("counts").by_state.get("active"), Some(&1));
        // And the kept tables reopen afterwards.
        w.insert_terminal(&terminal("T2", crate::TerminalState::Issued)).expect("second");
        drop(w);
        txn.commit().expect("commit");
        let read = db.begin_read().expect("read");
        let mut r = RedbRead(&read);
        assert_eq!(r.list_terminals(&TerminalFilter::default(), None, 10).expect("list").len(), 2);
        assert_eq!(r.terminal_counts().expect("counts").by_state.get("issued"), Some(&1));
    }
}
