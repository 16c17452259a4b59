//! The CRLs the CRL leader signed, stored in a shared (PostgreSQL) registry so that every
//! instance serves the leader's bytes and none signs its own. On redb the one instance keeps
//! its CRLs in memory: nothing is stored.

use crate::{Registry, Result};

/// One published CRL as stored for the other instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCrl {
    /// Which file: `full`, `delta` or `partition-N`.
    pub name: String,
    /// CRL number (from the shared counter: unique and increasing across instances).
    pub number: u64,
    /// The signed CRL.
    pub der: Vec<u8>,
    /// Revoked entries it lists.
    pub entries: u32,
    /// `thisUpdate`, unix milliseconds.
    pub this_update_ms: u64,
    /// For the full CRL, the delta base (its CRL number, the revocation sequence it covers); for
    /// the delta, the base it is over.
    pub base: Option<(u64, u64)>,
}

impl Registry {
    /// Stores a CRL the leader just signed, unless one with a number at least as high is stored
    /// under its name already (a leader that lost its lock late): says whether it was stored.
    /// Always `false` on redb.
    pub fn store_crl(&self, crl: StoredCrl) -> Result<bool> {
        self.backend.store_crl(crl)
    }

    /// The stored CRLs numbered above `after`, lowest number first (a follower's poll: empty
    /// when nothing new was published). Always empty on redb.
    pub fn stored_crls_after(&self, after: u64) -> Result<Vec<StoredCrl>> {
        self.backend.stored_crls_after(after)
    }
}
