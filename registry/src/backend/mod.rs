//! The storage backends, side by side: each runs the registry's transactions on its database.

pub(crate) mod redb;

use std::path::Path;

use crate::Result;
use crate::store::{StoreRead, StoreWrite};

/// The backend a registry was opened on.
pub(crate) enum Backend {
    /// The embedded default: one redb file.
    Redb(redb::RedbStore),
}

impl Backend {
    pub(crate) fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn StoreRead) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        match self {
            Self::Redb(r) => r.read(f),
        }
    }

    pub(crate) fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn StoreWrite) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        match self {
            Self::Redb(r) => r.write(f),
        }
    }

    pub(crate) fn backup(&self, out: &Path) -> Result<()> {
        match self {
            Self::Redb(r) => r.backup(out),
        }
    }
}
