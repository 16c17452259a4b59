//! The storage backends, side by side: each runs the registry's transactions on its database.

pub(crate) mod postgres;
pub(crate) mod redb;

use std::path::Path;

use crate::Result;
use crate::store::{StoreRead, StoreWrite};

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

    pub(crate) fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn StoreWrite) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        match self {
            Self::Redb(r) => r.write(f),
            Self::Postgres(p) => p.write(f),
        }
    }

    pub(crate) fn backup(&self, out: &Path) -> Result<()> {
        match self {
            Self::Redb(r) => r.backup(out),
            // A consistent copy of a PostgreSQL registry is the database's own business.
            Self::Postgres(_) => Err(crate::RegistryError::Storage(
                "a PostgreSQL registry is backed up with pg_dump or continuous archiving (PITR)".into(),
            )),
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
