//! The storage backends, side by side: each runs the registry's transactions on its database.

pub(crate) mod postgres;
pub(crate) mod redb;

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use crate::store::{StoreRead, StoreWrite};
use crate::{RegistryError, Result};

/// Delivers a job's result once the batch it ran in is committed (or not).
pub(crate) type Finish = Box<dyn FnOnce(Result<()>) + Send>;

/// Runs a group-commit batch's jobs inside one open transaction (`run` hands a job the
/// transaction): says whether one broke it — a storage error or a panic, after which the batch
/// must not commit — and collects the jobs' finishers.
pub(crate) fn run_batch<J>(batch: Vec<J>, mut run: impl FnMut(J) -> (bool, Finish)) -> (bool, Vec<Finish>) {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    let mut finishes = Vec::with_capacity(batch.len());
    let mut broken = false;
    for job in batch {
        match catch_unwind(AssertUnwindSafe(|| run(job))) {
            Ok((fatal, finish)) => {
                broken |= fatal;
                finishes.push(finish);
            }
            Err(_) => broken = true,
        }
    }
    (broken, finishes)
}

/// A job's outcome in a batch: whether its error breaks the batch (storage or corruption: the
/// batch must not commit), and the finisher that answers `reply` once the commit is known — a
/// job's success stands only if its batch committed.
pub(crate) fn job_outcome<T: Send + 'static>(result: Result<T>, reply: Reply<T>) -> (bool, Finish) {
    let fatal = matches!(result, Err(RegistryError::Storage(_) | RegistryError::Corrupt(_)));
    let finish: Finish = Box::new(move |commit| {
        reply(match (result, commit) {
            (Ok(v), Ok(())) => Ok(v),
            (Ok(_), Err(e)) | (Err(e), _) => Err(e),
        });
    });
    (fatal, finish)
}

/// Where a write's result goes once its batch's commit is known.
pub(crate) type Reply<T> = Box<dyn FnOnce(Result<T>) + Send>;

/// A write queued for the next batch transaction: awaiting it gives the write's result once
/// that transaction is committed (or not). The thread that queued it is free meanwhile.
pub struct PendingWrite<T> {
    result: tokio::sync::oneshot::Receiver<Result<T>>,
    abandoned: &'static str,
}

impl<T> std::future::Future for PendingWrite<T> {
    type Output = Result<T>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<T>> {
        let abandoned = self.abandoned;
        std::pin::Pin::new(&mut self.result)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(RegistryError::Storage(abandoned.into()))))
    }
}

/// What a registry's writer thread has done since the registry was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Batch transactions committed.
    pub commits: u64,
    /// Writes in those batches.
    pub writes: u64,
    /// Time the writer spent on batches, committed or not (their writes, the commit and its
    /// fsync), in microseconds. Its rate over wall time is how busy the writer is: issuance's one
    /// serial stage.
    pub busy_us: u64,
}

/// The counters behind [`WriterStats`], kept by the writer thread.
#[derive(Default)]
pub(crate) struct WriterCounters {
    commits: AtomicU64,
    writes: AtomicU64,
    busy_us: AtomicU64,
}

impl WriterCounters {
    /// Counts a batch of `writes` that took `busy`.
    pub(crate) fn batch(&self, writes: usize, committed: bool, busy: std::time::Duration) {
        if committed {
            self.commits.fetch_add(1, Relaxed);
            self.writes.fetch_add(writes as u64, Relaxed);
        }
        self.busy_us.fetch_add(u64::try_from(busy.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    pub(crate) fn stats(&self) -> WriterStats {
        WriterStats {
            commits: self.commits.load(Relaxed),
            writes: self.writes.load(Relaxed),
            busy_us: self.busy_us.load(Relaxed),
        }
    }
}

/// What every job of a batch that one of them broke is told.
pub(crate) fn batch_aborted() -> RegistryError {
    RegistryError::Storage("write batch aborted after a storage error".into())
}

/// The backend a registry was opened on.
pub(crate) enum Backend {
    /// The embedded default: one redb file.
    Redb(redb::RedbStore),
    /// A PostgreSQL database, shared by several CA instances.
    Postgres(postgres::PgStore),
}

impl Backend {
    pub(crate) fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn StoreRead) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        match self {
            Self::Redb(r) => r.read(f),
            Self::Postgres(p) => p.read(f),
        }
    }

    /// Runs `f` in the next batch transaction and returns its result once that is committed.
    pub(crate) fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn StoreWrite) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<T>>(1);
        self.enqueue(f, Box::new(move |r| drop(tx.send(r))))?;
        rx.recv().map_err(|_| RegistryError::Storage(self.abandoned().into()))?
    }

    /// See [`WriterStats`].
    pub(crate) fn writer_stats(&self) -> WriterStats {
        match self {
            Self::Redb(r) => r.writer_counters.stats(),
            Self::Postgres(p) => p.writer_counters.stats(),
        }
    }

    fn abandoned(&self) -> &'static str {
        match self {
            Self::Redb(_) => "write abandoned by the registry writer",
            Self::Postgres(_) => "write abandoned by the registry writer (PostgreSQL unreachable?)",
        }
    }

    /// Queues `f` for the next batch transaction without waiting for it.
    pub(crate) fn queue<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn StoreWrite) -> Result<T> + Send + 'static,
    ) -> Result<PendingWrite<T>> {
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<T>>();
        self.enqueue(f, Box::new(move |r| drop(tx.send(r))))?;
        Ok(PendingWrite { result: rx, abandoned: self.abandoned() })
    }

    fn enqueue<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn StoreWrite) -> Result<T> + Send + 'static,
        reply: Reply<T>,
    ) -> Result<()> {
        match self {
            Self::Redb(r) => r.enqueue(f, reply),
            Self::Postgres(p) => p.enqueue(f, reply),
        }
    }

    pub(crate) fn backup(&self, out: &Path) -> Result<()> {
        match self {
            Self::Redb(r) => r.backup(out),
            // One repeatable-read snapshot copied into a redb file (held in memory on the way:
            // for large registries pg_dump or continuous archiving is the production way).
            Self::Postgres(p) => {
                if out.exists() {
                    return Err(RegistryError::TargetExists(out.display().to_string()));
                }
                redb::RedbStore::create_from(out, p.export()?)
            }
        }
    }
}

impl Backend {
    pub(crate) fn crl_leader(&self) -> Result<bool> {
        match self {
            // One process owns a redb file.
            Self::Redb(_) => Ok(true),
            Self::Postgres(p) => p.crl_leader(),
        }
    }
}

impl Backend {
    /// See [`postgres::PgStore::share_auth_failures`]; redb has one instance, nothing to share.
    pub(crate) fn share_auth_failures(
        &self,
        new: Vec<(String, String, i32)>,
        (bucket_ms, window_buckets): (i64, i64),
        limit: i64,
        max_blocked: i64,
    ) -> Result<Vec<(String, String)>> {
        match self {
            Self::Redb(_) => Ok(Vec::new()),
            Self::Postgres(p) => p.share_auth_failures(new, (bucket_ms, window_buckets), limit, max_blocked),
        }
    }
}

impl Backend {
    /// See [`postgres::PgStore::store_crl`]; on redb the one instance serves its CRLs from memory.
    pub(crate) fn store_crl(&self, crl: crate::StoredCrl) -> Result<bool> {
        match self {
            Self::Redb(_) => Ok(false),
            Self::Postgres(p) => p.store_crl(crl),
        }
    }

    /// See [`postgres::PgStore::stored_crls_after`]; nothing on redb.
    pub(crate) fn stored_crls_after(&self, after: u64) -> Result<Vec<crate::StoredCrl>> {
        match self {
            Self::Redb(_) => Ok(Vec::new()),
            Self::Postgres(p) => p.stored_crls_after(after),
        }
    }
}
