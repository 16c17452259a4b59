//! The PostgreSQL backend, for several CA instances over one database. Connections live on
//! threads of their own (the registry's contract is synchronous and callers may sit inside a
//! tokio runtime, where the blocking driver must not run): one writer thread that group-commits
//! like the redb writer, and a few reader threads, each with one connection, reconnecting after
//! the server went away (the call in flight gets `Storage`, which the CA answers `UNAVAILABLE`).
//!
//! Every write transaction first takes the audit advisory lock (`pg_advisory_xact_lock`), so the
//! audit chain stays one chain across instances and a check and its write are not interleaved
//! with another instance's; the unique constraints and the partial unique index of the schema
//! hold the invariants even so (a violation is mapped to the registry's refusal). Each job of a
//! batch runs under a savepoint, so a refused job writes nothing and spoils nothing.

use std::str::FromStr;
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement, Transaction};

/// Statements prepared on one connection, by their SQL: prepared once, then one round trip each.
type Cache = std::collections::HashMap<&'static str, Statement>;

use crate::store::{StoreRead, StoreWrite};
use crate::{
    ActivationEntry, ActivationRecord, Approval, BulkFilter, CertRecord, CertStatus, CertSubject, ChallengeRecord,
    PrincipalRecord, RegistryError, ReleasedCert, RequestResult, Result, RevocationReason, RevokedCert, TerminalFilter,
    TerminalRecord, from_json, to_json,
};

/// The schema versions this build knows, in order: (version, SQL).
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_initial.sql")),
    (2, include_str!("../../migrations/postgres/0002_terminal_counts.sql")),
    (3, include_str!("../../migrations/postgres/0003_activation_challenges.sql")),
    (4, include_str!("../../migrations/postgres/0004_auth_failures.sql")),
    (5, include_str!("../../migrations/postgres/0005_published_crls.sql")),
    (6, include_str!("../../migrations/postgres/0006_terminals_lot_covering.sql")),
    (7, include_str!("../../migrations/postgres/0007_audit_indexes.sql")),
    (8, include_str!("../../migrations/postgres/0008_activation_log.sql")),
    (9, include_str!("../../migrations/postgres/0009_hourly_counts.sql")),
];

/// The schema version this build serves.
pub const SCHEMA_VERSION: i32 = 9;

/// The running terminal counts recomputed from `terminals` (as migration 2 first computed them),
/// and the count triggers back on: the end of a bulk copy that ran with them off.
const RECOUNT_TERMINALS: &str = "
    DELETE FROM terminal_counts;
    INSERT INTO terminal_counts (dimension, value, n)
        SELECT 'state', state, count(*) FROM terminals GROUP BY state
        UNION ALL SELECT 'class', class, count(*) FROM terminals GROUP BY class
        UNION ALL SELECT 'manufacturer', manufacturer, count(*) FROM terminals GROUP BY manufacturer;
    ALTER TABLE terminals ENABLE TRIGGER USER;";

/// Advisory lock keys (one namespace for this application).
const AUDIT_LOCK: i64 = 0x4853_4341_0001;
const MIGRATE_LOCK: i64 = 0x4853_4341_0002;
const CRL_LEADER_LOCK: i64 = 0x4853_4341_0003;

const MAX_BATCH: usize = 256;
const READERS: usize = 4;

fn storage(e: postgres::Error) -> RegistryError {
    RegistryError::Storage(e.to_string())
}

impl From<postgres::Error> for RegistryError {
    fn from(e: postgres::Error) -> Self {
        storage(e)
    }
}

/// The constraint a unique violation hit, if that is what `e` is.
fn unique_violation(e: &postgres::Error) -> Option<String> {
    let db = e.as_db_error()?;
    (*db.code() == SqlState::UNIQUE_VIOLATION).then(|| db.constraint().unwrap_or_default().to_owned())
}

fn u(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_i(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A row of `SELECT hour, station, kind, n FROM hourly_counts`.
fn hourly_count(r: &Row) -> Result<crate::HourlyCount> {
    Ok(crate::HourlyCount {
        hour: from_i(r.get(0)),
        station: r.get(1),
        kind: crate::HourlyKind::parse(r.get(2))?,
        n: from_i(r.get(3)),
    })
}

/// Parses the connection URL; the error never repeats it (it may hold a password).
/// A password comes from `PGPASSWORD` (libpq's variable) when the URL has none, so it need not
/// sit in a configuration file.
pub(crate) fn parse_url(url: &str) -> Result<postgres::Config> {
    let mut config =
        postgres::Config::from_str(url).map_err(|_| RegistryError::Storage("invalid PostgreSQL URL".into()))?;
    if config.get_password().is_none()
        && let Ok(password) = std::env::var("PGPASSWORD")
    {
        config.password(password);
    }
    Ok(config)
}

/// Runs `f` on a thread of its own: the blocking driver starts a runtime of its own, which
/// panics on a thread that is driving a tokio runtime (an async test, a server's worker).
fn off_runtime<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(f).join().unwrap_or_else(|_| Err(RegistryError::Storage("PostgreSQL setup thread panicked".into())))
    })
}

fn connect(config: &postgres::Config) -> Result<Client> {
    config.connect(NoTls).map_err(storage)
}

/// The schema version a database holds (0: none).
fn schema_version(client: &mut Client) -> Result<i32> {
    let exists: bool = client.query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])?.get(0);
    if !exists {
        return Ok(0);
    }
    Ok(client.query_one("SELECT coalesce(max(version), 0) FROM schema_migrations", &[])?.get(0))
}

/// Brings the schema at `url` up to [`SCHEMA_VERSION`]; returns the versions applied. Instances
/// migrating at once are serialised by an advisory lock; each version commits with its record.
pub(crate) fn migrate(url: &str) -> Result<Vec<i32>> {
    off_runtime(|| migrate_here(url))
}

fn migrate_here(url: &str) -> Result<Vec<i32>> {
    let mut client = connect(&parse_url(url)?)?;
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK])?;
    let result = (|| {
        client.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
        )?;
        let current = schema_version(&mut client)?;
        if current > SCHEMA_VERSION {
            return Err(RegistryError::SchemaMismatch { found: current, expected: SCHEMA_VERSION });
        }
        let mut applied = Vec::new();
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            let mut tx = client.transaction()?;
            tx.batch_execute(sql)?;
            tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[version])?;
            tx.commit()?;
            applied.push(*version);
        }
        Ok(applied)
    })();
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK]);
    result
}

use super::Finish;
type WriteJob = Box<dyn for<'a> FnOnce(&mut Transaction<'a>, &mut Cache, &mut AuditTail) -> (bool, Finish) + Send>;

/// The newest audit entry (sequence number, bytes) as this transaction wrote it, when known: the
/// writer holds the audit lock for its whole batch, so the next job chains on it without reading
/// the table again (one round trip per audited job). Forgotten when a job rolls back, at each
/// batch, and on any audit write that is not the next entry.
type AuditTail = Option<(u64, Vec<u8>)>;
type ReadJob = Box<dyn FnOnce(&mut Option<Client>, &mut Cache) + Send>;

/// An open PostgreSQL registry.
pub(crate) struct PgStore {
    writer: Option<Sender<WriteJob>>,
    pub(crate) writer_counters: Arc<super::WriterCounters>,
    readers: Option<Sender<ReadJob>>,
    /// One connection of its own that holds the CRL leader lock while it lives.
    leader: Option<Sender<ReadJob>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        drop(self.writer.take());
        drop(self.readers.take());
        drop(self.leader.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn writer_loop(
    config: postgres::Config,
    first_client: Client,
    jobs: Receiver<WriteJob>,
    counters: &super::WriterCounters,
) {
    let mut client = Some(first_client);
    let mut cache = Cache::new();
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let (writes, started) = (batch.len(), std::time::Instant::now());
        let outcome = run_batch(&config, &mut client, &mut cache, batch);
        counters.batch(writes, outcome.is_ok(), started.elapsed());
        if outcome.is_err() && client.as_ref().is_some_and(Client::is_closed) {
            client = None;
        }
    }
}

/// Runs a batch in one transaction; answers every job after the commit.
fn run_batch(
    config: &postgres::Config,
    client: &mut Option<Client>,
    cache: &mut Cache,
    batch: Vec<WriteJob>,
) -> Result<()> {
    let fail_all = |batch: Vec<WriteJob>, e: RegistryError| {
        // The jobs never ran: they are dropped, and their callers see the writer's error.
        drop(batch);
        Err(e)
    };
    if client.as_ref().is_none_or(Client::is_closed) {
        cache.clear();
        match connect(config) {
            Ok(c) => *client = Some(c),
            Err(e) => {
                *client = None;
                return fail_all(batch, e);
            }
        }
    }
    let Some(c) = client.as_mut() else { return fail_all(batch, RegistryError::Storage("no connection".into())) };
    let mut tx = match c.transaction() {
        Ok(tx) => tx,
        Err(e) => return fail_all(batch, storage(e)),
    };
    // A simple query: one round trip (a parameterised one by text would be prepared first),
    // which also sets the first job's savepoint.
    if let Err(e) = tx.batch_execute(&format!("SELECT pg_advisory_xact_lock({AUDIT_LOCK}); SAVEPOINT job")) {
        return fail_all(batch, storage(e));
    }
    let mut tail: AuditTail = None;
    let (broken, finishes) = super::run_batch(batch, |job| job(&mut tx, cache, &mut tail));
    let outcome = if broken {
        drop(tx);
        Err(super::batch_aborted())
    } else {
        tx.commit().map_err(storage)
    };
    for finish in finishes {
        finish(outcome.clone());
    }
    outcome
}

fn reader_loop(config: postgres::Config, jobs: Arc<Mutex<Receiver<ReadJob>>>) {
    let mut client: Option<Client> = None;
    let mut cache = Cache::new();
    loop {
        let job = match jobs.lock() {
            Ok(rx) => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
            Err(_) => return,
        };
        if client.as_ref().is_none_or(Client::is_closed) {
            cache.clear();
            client = connect(&config).ok();
        }
        job(&mut client, &mut cache);
    }
}

impl PgStore {
    /// Connects to `url`; refuses a database whose schema is not [`SCHEMA_VERSION`] (run
    /// `migrate` first).
    pub(crate) fn open(url: &str) -> Result<Self> {
        let config = parse_url(url)?;
        let client = off_runtime(|| {
            let mut client = connect(&config)?;
            let found = schema_version(&mut client)?;
            if found != SCHEMA_VERSION {
                return Err(RegistryError::SchemaMismatch { found, expected: SCHEMA_VERSION });
            }
            Ok(client)
        })?;
        let (writer, write_jobs) = std::sync::mpsc::channel::<WriteJob>();
        let (readers, read_jobs) = std::sync::mpsc::channel::<ReadJob>();
        let read_jobs = Arc::new(Mutex::new(read_jobs));
        let mut threads = Vec::new();
        let (for_writer, writer_counters) = (config.clone(), Arc::new(super::WriterCounters::default()));
        let counters = writer_counters.clone();
        threads.push(
            std::thread::Builder::new()
                .name("registry-pg-writer".into())
                .spawn(move || writer_loop(for_writer, client, write_jobs, &counters))?,
        );
        for i in 0..READERS {
            let (config, jobs) = (config.clone(), read_jobs.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("registry-pg-reader-{i}"))
                    .spawn(move || reader_loop(config, jobs))?,
            );
        }
        let (leader, leader_jobs) = std::sync::mpsc::channel::<ReadJob>();
        let leader_jobs = Arc::new(Mutex::new(leader_jobs));
        threads.push(
            std::thread::Builder::new()
                .name("registry-pg-leader".into())
                .spawn(move || reader_loop(config, leader_jobs))?,
        );
        Ok(Self { writer: Some(writer), writer_counters, readers: Some(readers), leader: Some(leader), threads })
    }

    /// Whether this instance leads CRL generation: it holds a session advisory lock on a
    /// connection of its own, released by PostgreSQL when that connection ends (the instance
    /// stopped or died), so another instance's next call takes over.
    pub(crate) fn crl_leader(&self) -> Result<bool> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<bool>>(1);
        let job: ReadJob = Box::new(move |client, _| {
            let result = match client.as_mut() {
                None => Err(RegistryError::Storage("PostgreSQL is not reachable".into())),
                // Re-entrant for the session that holds it: true again while the connection lives.
                Some(c) => c
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&CRL_LEADER_LOCK])
                    .map(|r| r.get::<_, bool>(0))
                    .map_err(storage),
            };
            let _ = tx.send(result);
        });
        let leader = self.leader.as_ref().ok_or_else(|| RegistryError::Storage("registry stopped".into()))?;
        leader.send(job).map_err(|_| RegistryError::Storage("registry stopped".into()))?;
        rx.recv().map_err(|_| RegistryError::Storage("leader check abandoned".into()))?
    }

    /// Runs `f` in a read-only, repeatable-read transaction (one snapshot).
    pub(crate) fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn StoreRead) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.in_snapshot("read abandoned by the registry reader", move |t, cache| f(&mut PgTx(t, cache, &mut None)))
    }

    /// Every durable record from one repeatable-read, read-only snapshot (for a backup).
    pub(crate) fn export(&self) -> Result<crate::store::Export> {
        self.in_snapshot("backup abandoned by the registry reader", |t, _| export_in(t))
    }

    /// Runs `f` on a reader connection in one read-only, repeatable-read transaction.
    fn in_snapshot<T: Send + 'static>(
        &self,
        abandoned: &'static str,
        f: impl FnOnce(&mut Transaction<'_>, &mut Cache) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx): (SyncSender<Result<T>>, _) = std::sync::mpsc::sync_channel(1);
        let job: ReadJob = Box::new(move |client, cache| {
            let result = match client.as_mut() {
                None => Err(RegistryError::Storage("PostgreSQL is not reachable".into())),
                Some(c) => (|| {
                    let mut t = c
                        .build_transaction()
                        .isolation_level(postgres::IsolationLevel::RepeatableRead)
                        .read_only(true)
                        .start()?;
                    let out = f(&mut t, cache)?;
                    t.commit()?;
                    Ok(out)
                })(),
            };
            let _ = tx.send(result);
        });
        let readers = self.readers.as_ref().ok_or_else(|| RegistryError::Storage("registry readers stopped".into()))?;
        readers.send(job).map_err(|_| RegistryError::Storage("registry readers stopped".into()))?;
        rx.recv().map_err(|_| RegistryError::Storage(abandoned.into()))?
    }

    /// Queues `f` for the next batch transaction, under a savepoint; `reply` gets its result
    /// after the commit.
    pub(crate) fn enqueue<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn StoreWrite) -> Result<T> + Send + 'static,
        reply: super::Reply<T>,
    ) -> Result<()> {
        let job: WriteJob = Box::new(move |txn: &mut Transaction<'_>, cache: &mut Cache, tail: &mut AuditTail| {
            // The savepoint `job` is already set (by the batch's first round trip, or by the job
            // before): releasing it and setting the next one is one round trip, not two.
            let result = match f(&mut PgTx(txn, cache, tail)) {
                Ok(v) => txn.batch_execute("RELEASE job; SAVEPOINT job").map(|()| v).map_err(storage),
                // Rolling back to a savepoint keeps it, ready for the next job.
                Err(e) => match txn.batch_execute("ROLLBACK TO SAVEPOINT job") {
                    Ok(()) => Err(e),
                    Err(r) => Err(storage(r)),
                },
            };
            if result.is_err() {
                // What the job wrote is rolled back, its audit entry with it.
                *tail = None;
            }
            super::job_outcome(result, reply)
        });
        let writer = self.writer.as_ref().ok_or_else(|| RegistryError::Storage("registry writer stopped".into()))?;
        writer.send(job).map_err(|_| RegistryError::Storage("registry writer stopped".into()))
    }
}

/// Every durable record, read in the one repeatable-read snapshot of `t` (the copy a backup
/// makes: what one instant of the database held, whatever commits meanwhile).
fn export_in(t: &mut Transaction<'_>) -> Result<crate::store::Export> {
    use crate::store::Export;
    fn records<T: serde::de::DeserializeOwned>(t: &mut Transaction<'_>, sql: &str) -> Result<Vec<T>> {
        t.query(sql, &[])?.iter().map(|r| from_json(r.get::<_, &[u8]>(0))).collect()
    }
    fn pairs(t: &mut Transaction<'_>, sql: &str) -> Result<Vec<(String, String)>> {
        Ok(t.query(sql, &[])?.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
    fn numbered(t: &mut Transaction<'_>, sql: &str) -> Result<Vec<(u64, Vec<u8>)>> {
        Ok(t.query(sql, &[])?.iter().map(|r| (from_i(r.get(0)), r.get(1))).collect())
    }
    let certs = t
        .query("SELECT record, der FROM certs ORDER BY serial", &[])?
        .iter()
        .map(|r| Ok((from_json(r.get::<_, &[u8]>(0))?, r.get(1))))
        .collect::<Result<_>>()?;
    let requests = t
        .query("SELECT id, record FROM requests ORDER BY id", &[])?
        .iter()
        .map(|r| Ok((r.get(0), from_json(r.get::<_, &[u8]>(1))?)))
        .collect::<Result<_>>()?;
    let counters = t
        .query("SELECT name, value FROM counters WHERE name <> 'activation_seq' ORDER BY name", &[])?
        .iter()
        .map(|r| (r.get(0), from_i(r.get(1))))
        .collect();
    Ok(Export {
        terminals: records(t, "SELECT record FROM terminals ORDER BY serial")?,
        certs,
        pubkeys: pairs(t, "SELECT fingerprint, terminal FROM pubkeys ORDER BY fingerprint")?,
        compromised: pairs(t, "SELECT fingerprint, cert FROM compromised_keys ORDER BY fingerprint")?,
        requests,
        principals: records(t, "SELECT record FROM principals ORDER BY name")?,
        approvals: records(t, "SELECT record FROM approvals ORDER BY id")?,
        activations: records(t, "SELECT record FROM activations ORDER BY seq")?,
        counters,
        revoked: records(t, "SELECT record FROM revoked ORDER BY serial")?,
        released: records(t, "SELECT record FROM released ORDER BY serial")?,
        audit: numbered(t, "SELECT seq, entry FROM audit ORDER BY seq")?,
        checkpoints: numbered(t, "SELECT seq, checkpoint FROM audit_checkpoints ORDER BY seq")?,
        hourly: t
            .query("SELECT hour, station, kind, n FROM hourly_counts ORDER BY hour, station, kind", &[])?
            .iter()
            .map(hourly_count)
            .collect::<Result<_>>()?,
    })
}

/// Copies `data` into the registry at `url`, which must be current and empty, in one
/// transaction (all or nothing). Records keep their bytes, so the audit chain is the same chain.
pub(crate) fn import(url: &str, data: &crate::store::Export) -> Result<()> {
    off_runtime(|| import_here(url, data))
}

fn import_here(url: &str, data: &crate::store::Export) -> Result<()> {
    let mut client = connect(&parse_url(url)?)?;
    let found = schema_version(&mut client)?;
    if found != SCHEMA_VERSION {
        return Err(RegistryError::SchemaMismatch { found, expected: SCHEMA_VERSION });
    }
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])?;
    let used: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM audit) OR EXISTS (SELECT 1 FROM certs) OR EXISTS (SELECT 1 FROM principals)",
            &[],
        )?
        .get(0);
    if used {
        return Err(RegistryError::TargetExists("the PostgreSQL registry (it is not empty)".into()));
    }
    // The count triggers would update the same counter rows once per terminal statement of this
    // one transaction, each update walking the versions the earlier ones left (quadratic): off
    // for the copy (transactional: an aborted copy leaves them on), counts computed once below.
    tx.batch_execute("ALTER TABLE terminals DISABLE TRIGGER USER")?;
    let mut cache = Cache::new();
    let mut s = PgTx(&mut tx, &mut cache, &mut None);
    data.write_records(&mut s)?;
    for (name, value) in &data.counters {
        s.0.execute(
            "INSERT INTO counters (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = $2",
            &[name, &u(*value)],
        )?;
    }
    tx.batch_execute(RECOUNT_TERMINALS)?;
    tx.commit()?;
    Ok(())
}

/// An execute's failure: preparing it, or the statement itself (mapped by its constraint).
enum ExecError {
    Registry(RegistryError),
    Db(postgres::Error),
}

impl From<ExecError> for RegistryError {
    fn from(e: ExecError) -> Self {
        match e {
            ExecError::Registry(r) => r,
            ExecError::Db(e) => storage(e),
        }
    }
}

struct PgTx<'a, 'b>(&'a mut Transaction<'b>, &'a mut Cache, &'a mut AuditTail);

fn status_of(rec: &CertRecord) -> &'static str {
    match rec.status {
        CertStatus::Good => "good",
        CertStatus::Revoked { reason: RevocationReason::CertificateHold, .. } => "hold",
        CertStatus::Revoked { .. } => "revoked",
    }
}

fn terminal_of(rec: &CertRecord) -> Option<&str> {
    match &rec.subject {
        CertSubject::Terminal { serial } => Some(serial),
        CertSubject::Principal { .. } => None,
    }
}

impl PgTx<'_, '_> {
    fn statement(&mut self, sql: &'static str) -> Result<Statement> {
        if let Some(st) = self.1.get(sql) {
            return Ok(st.clone());
        }
        let st = self.0.prepare(sql)?;
        self.1.insert(sql, st.clone());
        Ok(st)
    }

    /// A statement built at run time from a few fixed shapes, cached like the `'static` ones: each
    /// shape's text is interned once per process (there are 32), so nothing grows.
    fn statement_owned(&mut self, sql: String) -> Result<Statement> {
        static SHAPES: std::sync::OnceLock<Mutex<std::collections::HashSet<&'static str>>> = std::sync::OnceLock::new();
        let mut shapes = SHAPES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
        let sql: &'static str = match shapes.get(sql.as_str()) {
            Some(s) => s,
            None => {
                let s: &'static str = Box::leak(sql.into_boxed_str());
                shapes.insert(s);
                s
            }
        };
        drop(shapes);
        self.statement(sql)
    }

    fn query_c(&mut self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        let st = self.statement(sql)?;
        Ok(self.0.query(&st, params)?)
    }

    fn query_opt_c(&mut self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>> {
        let st = self.statement(sql)?;
        Ok(self.0.query_opt(&st, params)?)
    }

    fn query_one_c(&mut self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Row> {
        let st = self.statement(sql)?;
        Ok(self.0.query_one(&st, params)?)
    }

    /// Executes; the driver's error is kept for the caller to map (constraint names).
    fn execute_c(&mut self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> std::result::Result<u64, ExecError> {
        let st = self.statement(sql).map_err(ExecError::Registry)?;
        self.0.execute(&st, params).map_err(ExecError::Db)
    }

    // Through the statement cache: a query by text would be prepared again, one more round trip.
    fn one<T: serde::de::DeserializeOwned>(&mut self, sql: &'static str, key: &str) -> Result<Option<T>> {
        let row = self.query_opt_c(sql, &[&key])?;
        row.map(|r| from_json(r.get::<_, &[u8]>(0))).transpose()
    }

    fn many<T: serde::de::DeserializeOwned>(&mut self, sql: &'static str) -> Result<Vec<T>> {
        self.query_c(sql, &[])?.iter().map(|r| from_json(r.get::<_, &[u8]>(0))).collect()
    }
}

impl StoreRead for PgTx<'_, '_> {
    fn terminal(&mut self, serial: &str) -> Result<Option<TerminalRecord>> {
        self.one("SELECT record FROM terminals WHERE serial = $1", serial)
    }

    fn list_terminals(
        &mut self,
        filter: &TerminalFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TerminalRecord>> {
        // Only the conditions that are set: `$n IS NULL OR …` would keep the planner off the
        // indexes in a generic plan. The statement is one of 32 shapes, each cached.
        let state = filter.state.map(|s| s.as_str());
        let limit = u(limit as u64 + 1);
        let conditions: Vec<(&str, &str)> = [
            ("serial >", after),
            ("state =", state),
            ("class =", filter.class.as_deref()),
            ("manufacturer =", filter.manufacturer.as_deref()),
            ("lot =", filter.lot.as_deref()),
        ]
        .into_iter()
        .filter_map(|(column, value)| value.map(|v| (column, v)))
        .collect();
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&limit];
        let mut sql = String::from("SELECT record FROM terminals WHERE true");
        for (column, value) in &conditions {
            params.push(value);
            sql.push_str(&format!(" AND {column} ${}", params.len()));
        }
        sql.push_str(" ORDER BY serial LIMIT $1");
        let st = self.statement_owned(sql)?;
        let rows = self.0.query(&st, &params)?;
        rows.iter().map(|r| from_json(r.get::<_, &[u8]>(0))).collect()
    }

    fn terminal_counts(&mut self) -> Result<crate::TerminalCounts> {
        let mut counts = crate::TerminalCounts::default();
        for r in self.query_c("SELECT dimension, value, n FROM terminal_counts WHERE n > 0", &[])? {
            counts.add(r.get(0), r.get(1), from_i(r.get(2)))?;
        }
        Ok(counts)
    }

    fn hourly_counts(&mut self, since_hour: u64) -> Result<Vec<crate::HourlyCount>> {
        self.query_c(
            "SELECT hour, station, kind, n FROM hourly_counts WHERE hour >= $1 ORDER BY hour, station, kind",
            &[&u(since_hour)],
        )?
        .iter()
        .map(hourly_count)
        .collect()
    }

    fn terminals_with_active_cert(&mut self, filter: &BulkFilter) -> Result<Vec<TerminalRecord>> {
        let rows = self.query_c(
            "SELECT record FROM terminals
             WHERE active_cert IS NOT NULL AND ($1::text IS NULL OR manufacturer = $1)
               AND ($2::text IS NULL OR model = $2) AND ($3::text IS NULL OR lot = $3)
             ORDER BY serial",
            &[&filter.manufacturer, &filter.model, &filter.lot],
        )?;
        rows.iter().map(|r| from_json(r.get::<_, &[u8]>(0))).collect()
    }

    fn cert(&mut self, serial: &str) -> Result<Option<CertRecord>> {
        self.one("SELECT record FROM certs WHERE serial = $1", serial)
    }

    fn cert_der(&mut self, serial: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.query_opt_c("SELECT der FROM certs WHERE serial = $1", &[&serial])?.map(|r| r.get(0)))
    }

    fn certificates(&mut self) -> Result<Vec<CertRecord>> {
        self.many("SELECT record FROM certs ORDER BY serial")
    }

    fn key_owner(&mut self, fingerprint: &str) -> Result<Option<String>> {
        Ok(self.query_opt_c("SELECT terminal FROM pubkeys WHERE fingerprint = $1", &[&fingerprint])?.map(|r| r.get(0)))
    }

    fn compromised_by(&mut self, fingerprint: &str) -> Result<Option<String>> {
        Ok(self
            .query_opt_c("SELECT cert FROM compromised_keys WHERE fingerprint = $1", &[&fingerprint])?
            .map(|r| r.get(0)))
    }

    fn request(&mut self, id: &str) -> Result<Option<RequestResult>> {
        self.one("SELECT record FROM requests WHERE id = $1", id)
    }

    fn principal(&mut self, name: &str) -> Result<Option<PrincipalRecord>> {
        self.one("SELECT record FROM principals WHERE name = $1", name)
    }

    fn principals(&mut self) -> Result<Vec<PrincipalRecord>> {
        self.many("SELECT record FROM principals ORDER BY name")
    }

    fn approval(&mut self, id: &str) -> Result<Option<Approval>> {
        self.one("SELECT record FROM approvals WHERE id = $1", id)
    }

    fn approvals(&mut self) -> Result<Vec<Approval>> {
        self.many("SELECT record FROM approvals ORDER BY id")
    }

    fn activations(&mut self, terminal: &str) -> Result<Vec<ActivationRecord>> {
        let rows = self.query_c("SELECT record FROM activations WHERE terminal = $1 ORDER BY n", &[&terminal])?;
        rows.iter().map(|r| from_json(r.get::<_, &[u8]>(0))).collect()
    }

    fn activations_after(&mut self, after: u64, limit: usize) -> Result<Vec<ActivationEntry>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.query_c(
            "SELECT seq, record FROM activations WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&u(after), &limit],
        )?;
        rows.iter()
            .map(|r| Ok(ActivationEntry { seq: from_i(r.get(0)), activation: from_json(r.get::<_, &[u8]>(1))? }))
            .collect()
    }

    fn challenges_outstanding(&mut self, operator: &str, now_ms: u64) -> Result<u64> {
        // Walks the unexpired challenges (index on expires_ms): one lifetime's worth.
        let row = self.query_one_c(
            "SELECT count(*) FROM activation_challenges
             WHERE expires_ms > $2 AND convert_from(record, 'UTF8')::jsonb ->> 'operator' = $1",
            &[&operator, &u(now_ms)],
        )?;
        Ok(from_i(row.get(0)))
    }

    fn challenge(&mut self, challenge: &[u8]) -> Result<Option<ChallengeRecord>> {
        let row = self.query_opt_c("SELECT record FROM activation_challenges WHERE challenge = $1", &[&challenge])?;
        row.map(|r| from_json(r.get::<_, &[u8]>(0))).transpose()
    }

    fn counter(&mut self, name: &str) -> Result<u64> {
        let row = self.query_opt_c("SELECT value FROM counters WHERE name = $1", &[&name])?;
        Ok(row.map_or(0, |r| from_i(r.get(0))))
    }

    fn revoked(&mut self) -> Result<Vec<RevokedCert>> {
        self.many("SELECT record FROM revoked ORDER BY serial")
    }

    fn released(&mut self) -> Result<Vec<ReleasedCert>> {
        self.many("SELECT record FROM released ORDER BY serial")
    }

    fn audit_raw(&mut self, seq: u64) -> Result<Option<Vec<u8>>> {
        Ok(self.query_opt_c("SELECT entry FROM audit WHERE seq = $1", &[&u(seq)])?.map(|r| r.get(0)))
    }

    fn audit_last_raw(&mut self) -> Result<Option<(u64, Vec<u8>)>> {
        if let Some(known) = self.2.as_ref() {
            return Ok(Some(known.clone()));
        }
        let row = self.query_opt_c("SELECT seq, entry FROM audit ORDER BY seq DESC LIMIT 1", &[])?;
        let last: Option<(u64, Vec<u8>)> = row.map(|r| (from_i(r.get(0)), r.get(1)));
        self.2.clone_from(&last);
        Ok(last)
    }

    fn audit_newest_raw(&mut self, n: usize) -> Result<Vec<Vec<u8>>> {
        let rows = self.query_c("SELECT entry FROM audit ORDER BY seq DESC LIMIT $1", &[&u(n as u64)])?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn audit_len(&mut self) -> Result<u64> {
        Ok(from_i(self.query_one_c("SELECT count(*) FROM audit", &[])?.get(0)))
    }

    fn audit_by_raw(&mut self, by: &crate::AuditBy, before: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let (sql, key) = match by {
            crate::AuditBy::Actor(a) => {
                ("SELECT seq, entry FROM audit WHERE actor = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3", a)
            }
            crate::AuditBy::Target(t) => {
                ("SELECT seq, entry FROM audit WHERE target = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3", t)
            }
        };
        let before = i64::try_from(before).unwrap_or(i64::MAX);
        let rows = self.query_c(sql, &[key, &before, &u(limit as u64)])?;
        Ok(rows.iter().map(|r| (from_i(r.get(0)), r.get(1))).collect())
    }

    fn audit_scan(&mut self, f: &mut dyn FnMut(u64, &[u8]) -> Result<()>) -> Result<()> {
        // Pages of entries, so a long chain is never held in memory at once.
        let mut after = 0i64;
        loop {
            let rows =
                self.query_c("SELECT seq, entry FROM audit WHERE seq > $1 ORDER BY seq LIMIT 4096", &[&after])?;
            let Some(last) = rows.last() else { return Ok(()) };
            after = last.get(0);
            for r in &rows {
                f(from_i(r.get(0)), r.get(1))?;
            }
        }
    }

    fn checkpoints_raw(&mut self) -> Result<Vec<(u64, Vec<u8>)>> {
        let rows = self.query_c("SELECT seq, checkpoint FROM audit_checkpoints ORDER BY seq", &[])?;
        Ok(rows.iter().map(|r| (from_i(r.get(0)), r.get(1))).collect())
    }

    fn last_checkpoint_raw(&mut self) -> Result<Option<Vec<u8>>> {
        let row = self.query_opt_c("SELECT checkpoint FROM audit_checkpoints ORDER BY seq DESC LIMIT 1", &[])?;
        Ok(row.map(|r| r.get(0)))
    }
}

impl StoreWrite for PgTx<'_, '_> {
    fn insert_terminal(&mut self, t: &TerminalRecord) -> Result<()> {
        let done = self.execute_c(
            "INSERT INTO terminals (serial, class, manufacturer, model, lot, state, active_cert, record)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (serial) DO NOTHING",
            &[&t.serial, &t.class, &t.manufacturer, &t.model, &t.lot, &t.state.as_str(), &t.active_cert, &to_json(t)?],
        )?;
        match done {
            0 => Err(RegistryError::TerminalExists(t.serial.clone())),
            _ => Ok(()),
        }
    }

    fn update_terminal(&mut self, t: &TerminalRecord) -> Result<()> {
        self.execute_c(
            "INSERT INTO terminals (serial, class, manufacturer, model, lot, state, active_cert, record)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (serial) DO UPDATE SET class = $2, manufacturer = $3, model = $4, lot = $5,
                   state = $6, active_cert = $7, record = $8",
            &[&t.serial, &t.class, &t.manufacturer, &t.model, &t.lot, &t.state.as_str(), &t.active_cert, &to_json(t)?],
        )
        .map_err(|e| match e {
            ExecError::Registry(r) => r,
            ExecError::Db(e) => match unique_violation(&e).as_deref() {
                Some("terminals_active_cert_key") => {
                    RegistryError::CertSerialExists(t.active_cert.clone().unwrap_or_default())
                }
                _ => storage(e),
            },
        })?;
        Ok(())
    }

    fn insert_cert(&mut self, rec: &CertRecord, der: &[u8]) -> Result<()> {
        let terminal = terminal_of(rec);
        self.execute_c(
                "INSERT INTO certs (serial, terminal, key_fingerprint, status, record, der) VALUES ($1, $2, $3, $4, $5, $6)",
                &[&rec.serial, &terminal, &rec.key_fingerprint, &status_of(rec), &to_json(rec)?, &der],
            )
            .map_err(|e| match e {
 ExecError::Registry(r) => r,
 ExecError::Db(e) => match unique_violation(&e).as_deref() {
                Some("certs_pkey") => RegistryError::CertSerialExists(rec.serial.clone()),
                Some("certs_one_active_per_terminal") => RegistryError::AlreadyHasActiveCertificate {
                    terminal: terminal.unwrap_or_default().to_owned(),
                    cert: "another instance's".into(),
                },
                _ => storage(e),
            },
            })?;
        Ok(())
    }

    fn update_cert(&mut self, rec: &CertRecord) -> Result<()> {
        self.execute_c(
            "UPDATE certs SET status = $2, record = $3 WHERE serial = $1",
            &[&rec.serial, &status_of(rec), &to_json(rec)?],
        )
        .map_err(|e| match e {
            ExecError::Registry(r) => r,
            ExecError::Db(e) => match unique_violation(&e).as_deref() {
                Some("certs_one_active_per_terminal") => RegistryError::AlreadyHasActiveCertificate {
                    terminal: terminal_of(rec).unwrap_or_default().to_owned(),
                    cert: rec.serial.clone(),
                },
                _ => storage(e),
            },
        })?;
        Ok(())
    }

    fn bind_key(&mut self, fingerprint: &str, terminal: &str) -> Result<()> {
        let done = self.execute_c(
            "INSERT INTO pubkeys (fingerprint, terminal) VALUES ($1, $2) ON CONFLICT (fingerprint) DO NOTHING",
            &[&fingerprint, &terminal],
        )?;
        if done == 1 {
            return Ok(());
        }
        let owner = self.key_owner(fingerprint)?.unwrap_or_default();
        Err(if owner == terminal {
            RegistryError::KeyReused { terminal: owner }
        } else {
            RegistryError::PublicKeyInUse { terminal: owner }
        })
    }

    fn mark_compromised(&mut self, fingerprint: &str, cert: &str) -> Result<()> {
        self.execute_c(
            "INSERT INTO compromised_keys (fingerprint, cert) VALUES ($1, $2)
             ON CONFLICT (fingerprint) DO UPDATE SET cert = $2",
            &[&fingerprint, &cert],
        )?;
        Ok(())
    }

    fn insert_request(&mut self, id: &str, result: &RequestResult) -> Result<()> {
        let done = self.execute_c(
            "INSERT INTO requests (id, record) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
            &[&id, &to_json(result)?],
        )?;
        match done {
            0 => Err(RegistryError::RequestIdReused(id.to_owned())),
            _ => Ok(()),
        }
    }

    fn insert_principal(&mut self, p: &PrincipalRecord) -> Result<()> {
        let done = self.execute_c(
            "INSERT INTO principals (name, record) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&p.name, &to_json(p)?],
        )?;
        match done {
            0 => Err(RegistryError::PrincipalExists(p.name.clone())),
            _ => Ok(()),
        }
    }

    fn update_principal(&mut self, p: &PrincipalRecord) -> Result<()> {
        self.execute_c("UPDATE principals SET record = $2 WHERE name = $1", &[&p.name, &to_json(p)?])?;
        Ok(())
    }

    fn insert_approval(&mut self, a: &Approval) -> Result<()> {
        let done = self.execute_c(
            "INSERT INTO approvals (id, created_ms, record) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
            &[&a.id, &u(a.created_ms), &to_json(a)?],
        )?;
        match done {
            0 => Err(RegistryError::ApprovalExists(a.id.clone())),
            _ => Ok(()),
        }
    }

    fn update_approval(&mut self, a: &Approval) -> Result<()> {
        self.execute_c("UPDATE approvals SET record = $2 WHERE id = $1", &[&a.id, &to_json(a)?])?;
        Ok(())
    }

    fn add_activation(&mut self, a: &ActivationRecord) -> Result<u64> {
        let seq = self.advance(crate::store::counter::ACTIVATION_SEQ, 1)? + 1;
        let row = self.query_one_c(
            "INSERT INTO activations (terminal, n, record, seq)
             SELECT $1, coalesce(max(n), 0) + 1, $2, $3 FROM activations WHERE terminal = $1 RETURNING n",
            &[&a.terminal, &to_json(a)?, &u(seq)],
        )?;
        Ok(from_i(row.get(0)))
    }

    fn put_challenge(&mut self, challenge: &[u8], rec: &ChallengeRecord, now_ms: u64) -> Result<()> {
        // A bounded prune per challenge keeps the table to the challenges of one window.
        self.execute_c(
            "DELETE FROM activation_challenges WHERE challenge IN
             (SELECT challenge FROM activation_challenges WHERE expires_ms <= $1 LIMIT 64)",
            &[&u(now_ms)],
        )?;
        self.execute_c(
            "INSERT INTO activation_challenges (challenge, expires_ms, record) VALUES ($1, $2, $3)",
            &[&challenge, &u(rec.expires_ms), &to_json(rec)?],
        )?;
        Ok(())
    }

    fn remove_challenge(&mut self, challenge: &[u8]) -> Result<()> {
        self.execute_c("DELETE FROM activation_challenges WHERE challenge = $1", &[&challenge])?;
        Ok(())
    }

    fn use_nonce(&mut self, nonce: &[u8], now_ms: u64, expires_ms: u64) -> Result<()> {
        let now = u(now_ms);
        // A bounded prune per use keeps the table to the nonces of one window; it rides in the
        // same statement (one round trip) and leaves this nonce's row to the upsert.
        let done = self.execute_c(
            "WITH pruned AS (
                 DELETE FROM nonces WHERE nonce IN
                     (SELECT nonce FROM nonces WHERE expires_ms <= $3 AND nonce <> $1 LIMIT 64)
             )
             INSERT INTO nonces (nonce, expires_ms) VALUES ($1, $2)
             ON CONFLICT (nonce) DO UPDATE SET expires_ms = $2 WHERE nonces.expires_ms <= $3",
            &[&nonce, &u(expires_ms), &now],
        )?;
        match done {
            0 => Err(RegistryError::NonceReplayed),
            _ => Ok(()),
        }
    }

    fn add_hourly_count(&mut self, hour: u64, station: &str, kind: crate::HourlyKind, n: u64) -> Result<()> {
        self.execute_c(
            "INSERT INTO hourly_counts (hour, station, kind, n) VALUES ($1, $2, $3, $4)
             ON CONFLICT (hour, station, kind) DO UPDATE SET n = hourly_counts.n + EXCLUDED.n",
            &[&u(hour), &station, &kind.as_str(), &u(n)],
        )?;
        Ok(())
    }

    fn advance(&mut self, name: &str, n: u64) -> Result<u64> {
        let row = self.query_one_c(
            "INSERT INTO counters (name, value) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET value = counters.value + $2 RETURNING value - $2",
            &[&name, &u(n)],
        )?;
        Ok(from_i(row.get(0)))
    }

    fn put_revoked(&mut self, r: &RevokedCert) -> Result<()> {
        self.execute_c(
            "INSERT INTO revoked (serial, record) VALUES ($1, $2) ON CONFLICT (serial) DO UPDATE SET record = $2",
            &[&r.serial, &to_json(r)?],
        )?;
        Ok(())
    }

    fn remove_revoked(&mut self, serial: &str) -> Result<()> {
        self.execute_c("DELETE FROM revoked WHERE serial = $1", &[&serial])?;
        Ok(())
    }

    fn put_released(&mut self, r: &ReleasedCert) -> Result<()> {
        self.execute_c(
            "INSERT INTO released (serial, record) VALUES ($1, $2) ON CONFLICT (serial) DO UPDATE SET record = $2",
            &[&r.serial, &to_json(r)?],
        )?;
        Ok(())
    }

    fn remove_released(&mut self, serial: &str) -> Result<()> {
        self.execute_c("DELETE FROM released WHERE serial = $1", &[&serial])?;
        Ok(())
    }

    fn put_audit_raw(&mut self, seq: u64, bytes: Option<&[u8]>) -> Result<()> {
        let next = self.2.as_ref().is_some_and(|(last, _)| seq == last.saturating_add(1));
        *self.2 = None;
        match bytes {
            Some(b) => {
                let (actor, target) = crate::audit::index_keys(b).unzip();
                let (actor, target) = (actor.flatten(), target.flatten());
                self.execute_c(
                    "INSERT INTO audit (seq, entry, actor, target) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (seq) DO UPDATE SET entry = $2, actor = $3, target = $4",
                    &[&u(seq), &b, &actor, &target],
                )?
            }
            None => self.execute_c("DELETE FROM audit WHERE seq = $1", &[&u(seq)])?,
        };
        // Known only when it is the entry right after the known newest one (a restore or a
        // rewrite of an old entry may write any number).
        if let (true, Some(b)) = (next, bytes) {
            *self.2 = Some((seq, b.to_vec()));
        }
        Ok(())
    }

    fn put_checkpoint_raw(&mut self, seq: u64, bytes: &[u8]) -> Result<()> {
        self.execute_c(
            "INSERT INTO audit_checkpoints (seq, checkpoint) VALUES ($1, $2)
             ON CONFLICT (seq) DO UPDATE SET checkpoint = $2",
            &[&u(seq), &bytes],
        )?;
        Ok(())
    }

    fn cut_checkpoints_after(&mut self, seq: u64) -> Result<()> {
        self.execute_c("DELETE FROM audit_checkpoints WHERE seq > $1", &[&u(seq)])?;
        Ok(())
    }

    fn put_approval_raw(&mut self, id: &str, bytes: &[u8]) -> Result<()> {
        self.execute_c(
            "INSERT INTO approvals (id, created_ms, record) VALUES ($1, 0, $2) ON CONFLICT (id) DO UPDATE SET record = $2",
            &[&id, &bytes],
        )?;
        Ok(())
    }
}

impl PgStore {
    /// Adds `new` (kind, source, failures) to the current failure bucket (`bucket_ms` long, by
    /// the database's clock), deletes buckets older than `window_buckets`, and returns the
    /// (kind, source) pairs whose buckets in the window sum to at least `limit`, at most
    /// `max_blocked` of them. Autocommitted statements on a reader connection: no audit lock,
    /// nothing here belongs to the audit chain.
    pub(crate) fn share_auth_failures(
        &self,
        new: Vec<(String, String, i32)>,
        (bucket_ms, window_buckets): (i64, i64),
        limit: i64,
        max_blocked: i64,
    ) -> Result<Vec<(String, String)>> {
        self.on_reader(move |c| {
            // One clock for every instance: a host whose clock is off neither deletes the others'
            // live buckets nor writes into ones they already dropped.
            let bucket: i64 = c
                .query_one("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint / $1", &[&bucket_ms])?
                .get(0);
            let oldest = bucket - (window_buckets - 1);
            if !new.is_empty() {
                let (kinds, rest): (Vec<String>, Vec<(String, i32)>) =
                    new.into_iter().map(|(k, s, n)| (k, (s, n))).unzip();
                let (sources, counts): (Vec<String>, Vec<i32>) = rest.into_iter().unzip();
                // Grouped and ordered: one row per key (an upsert may touch a row once per
                // statement), and every instance locks rows in the same order (no deadlock).
                c.execute(
                    "INSERT INTO auth_failures (kind, source, bucket, failures)
                     SELECT k, s, $4, sum(n)::integer FROM unnest($1::text[], $2::text[], $3::integer[]) AS t(k, s, n)
                     GROUP BY k, s ORDER BY k, s
                     ON CONFLICT (kind, source, bucket)
                     DO UPDATE SET failures = auth_failures.failures + excluded.failures",
                    &[&kinds, &sources, &counts, &bucket],
                )?;
            }
            c.execute("DELETE FROM auth_failures WHERE bucket < $1", &[&oldest])?;
            let rows = c.query(
                "SELECT kind, source FROM auth_failures WHERE bucket >= $1
                 GROUP BY kind, source HAVING sum(failures) >= $2
                 ORDER BY sum(failures) DESC LIMIT $3",
                &[&oldest, &limit, &max_blocked],
            )?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }
}

impl PgStore {
    /// Runs `f` on a reader connection outside any explicit transaction (each statement commits
    /// on its own): for shared state that is not part of the audit chain.
    fn on_reader<T: Send + 'static>(&self, f: impl FnOnce(&mut Client) -> Result<T> + Send + 'static) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<T>>(1);
        let job: ReadJob = Box::new(move |client, _| {
            let result = match client.as_mut() {
                None => Err(RegistryError::Storage("PostgreSQL is not reachable".into())),
                Some(c) => f(c),
            };
            let _ = tx.send(result);
        });
        let readers = self.readers.as_ref().ok_or_else(|| RegistryError::Storage("registry readers stopped".into()))?;
        readers.send(job).map_err(|_| RegistryError::Storage("registry readers stopped".into()))?;
        rx.recv().map_err(|_| RegistryError::Storage("call abandoned by the registry reader".into()))?
    }

    /// Stores `crl` unless a CRL with a number at least as high is stored under its name: says
    /// whether it was stored.
    pub(crate) fn store_crl(&self, crl: crate::StoredCrl) -> Result<bool> {
        self.on_reader(move |c| {
            let (base_number, base_seq) = crl.base.map_or((None, None), |(n, s)| (Some(u(n)), Some(u(s))));
            let entries = i32::try_from(crl.entries).unwrap_or(i32::MAX);
            let n = c.execute(
                "INSERT INTO published_crls (name, number, der, entries, this_update_ms, base_number, base_seq)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (name) DO UPDATE SET number = excluded.number, der = excluded.der,
                     entries = excluded.entries, this_update_ms = excluded.this_update_ms,
                     base_number = excluded.base_number, base_seq = excluded.base_seq
                 WHERE published_crls.number < excluded.number",
                &[&crl.name, &u(crl.number), &crl.der, &entries, &u(crl.this_update_ms), &base_number, &base_seq],
            )?;
            Ok(n == 1)
        })
    }

    /// The stored CRLs numbered above `after`, lowest number first.
    pub(crate) fn stored_crls_after(&self, after: u64) -> Result<Vec<crate::StoredCrl>> {
        self.on_reader(move |c| {
            let rows = c.query(
                "SELECT name, number, der, entries, this_update_ms, base_number, base_seq
                 FROM published_crls WHERE number > $1 ORDER BY number",
                &[&u(after)],
            )?;
            Ok(rows
                .iter()
                .map(|r| crate::StoredCrl {
                    name: r.get(0),
                    number: from_i(r.get(1)),
                    der: r.get(2),
                    entries: u32::try_from(r.get::<_, i32>(3)).unwrap_or(0),
                    this_update_ms: from_i(r.get(4)),
                    base: match (r.get::<_, Option<i64>>(5), r.get::<_, Option<i64>>(6)) {
                        (Some(n), Some(s)) => Some((from_i(n), from_i(s))),
                        _ => None,
                    },
                })
                .collect())
        })
    }
}
