//! Authentication failures counted across the CA instances of a shared (PostgreSQL) registry,
//! so a failure limit holds for the fleet, not per process. Each instance counts in memory and
//! hands its new counts over on a poll; the registry keeps them in 10-second buckets and says
//! which sources reached the limit within the last minute. No read on the request path.

use crate::{Registry, Result};

/// Whom a failure counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// A source address (the failure came before any signature verified).
    Address,
    /// A principal (its key signed the failing request).
    Principal,
}

impl FailureKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Address => "address",
            Self::Principal => "principal",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "address" => Some(Self::Address),
            "principal" => Some(Self::Principal),
            _ => None,
        }
    }
}

/// Length of one bucket of shared failure counts (by the database's clock).
pub const FAILURE_BUCKET_MS: u64 = 10_000;
/// Buckets summed against the limit: the current one and the five before it (50–60 s).
pub const FAILURE_WINDOW_BUCKETS: u64 = 6;
/// Blocked sources returned at most by one [`Registry::share_auth_failures`] (the most failing
/// first): what an instance holds in memory for the shared limit stays bounded.
pub const FAILURE_BLOCKED_MAX: usize = 65_536;

impl Registry {
    /// Adds `new` (failures counted by this instance since its last call) to the shared counts
    /// and returns the sources whose failures over all instances within the last minute reached
    /// `limit` (at most [`FAILURE_BLOCKED_MAX`], the most failing first); drops older counts.
    /// Buckets follow the database's clock, not this host's. On redb (one instance) nothing is shared: always empty.
    pub fn share_auth_failures(
        &self,
        new: &[(FailureKind, String, u32)],
        limit: u32,
    ) -> Result<Vec<(FailureKind, String)>> {
        let new = new
            .iter()
            .map(|(k, s, n)| (k.as_str().to_owned(), s.clone(), i32::try_from(*n).unwrap_or(i32::MAX)))
            .collect();
        let blocked = self.backend.share_auth_failures(
            new,
            (FAILURE_BUCKET_MS as i64, FAILURE_WINDOW_BUCKETS as i64),
            i64::from(limit.max(1)),
            FAILURE_BLOCKED_MAX as i64,
        )?;
        Ok(blocked.into_iter().filter_map(|(k, s)| Some((FailureKind::parse(&k)?, s))).collect())
    }
}
