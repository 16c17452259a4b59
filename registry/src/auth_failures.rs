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

/// Length of one bucket of shared failure counts.
pub const FAILURE_BUCKET_MS: u64 = 10_000;
/// Buckets summed against the limit: the current one and the five before it (50–60 s).
pub const FAILURE_WINDOW_BUCKETS: u64 = 6;

impl Registry {
    /// Adds `new` (failures counted by this instance since its last call) to the shared counts
    /// and returns every source whose failures over all instances within the last minute reached
    /// `limit`; drops older counts. On redb (one instance) nothing is shared: always empty.
    pub fn share_auth_failures(
        &self,
        new: &[(FailureKind, String, u32)],
        now_ms: u64,
        limit: u32,
    ) -> Result<Vec<(FailureKind, String)>> {
        let bucket = now_ms / FAILURE_BUCKET_MS;
        let oldest = bucket.saturating_sub(FAILURE_WINDOW_BUCKETS - 1);
        let new = new
            .iter()
            .map(|(k, s, n)| (k.as_str().to_owned(), s.clone(), i32::try_from(*n).unwrap_or(i32::MAX)))
            .collect();
        let to_i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let blocked = self.backend.share_auth_failures(new, to_i(bucket), to_i(oldest), i64::from(limit.max(1)))?;
        Ok(blocked.into_iter().filter_map(|(k, s)| Some((FailureKind::parse(&k)?, s))).collect())
    }
}
