//! The anchor log: every signed audit checkpoint is also appended, as one JSON line, to a file
//! outside the registry (`[audit] anchor_dir`/`anchors.jsonl`). The registry alone cannot show
//! that its tail was cut off together with the checkpoints covering it, or that the whole file
//! was rolled back to an older copy; the anchor log can, because its newest line names a head the
//! chain must still contain (issue 11 §4). The file is opened append-only and each line is
//! fsynced before the checkpoint is stored in the registry.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::audit::{AuditCheckpoint, AuditEntry};

/// The file name inside the anchor directory.
pub const ANCHOR_FILE: &str = "anchors.jsonl";

/// One line of the anchor log: a signed checkpoint and the public key that signed it (so the
/// file can be checked on its own; a verifier pins that key, see `cactl audit verify`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// The checkpoint (sequence, head hash, time, key id, signature).
    #[serde(flatten)]
    pub checkpoint: AuditCheckpoint,
    /// Hex DER SubjectPublicKeyInfo of the audit key; its SM3 is `key_id`.
    pub public_key: String,
}

/// Why the anchor log could not be used, or does not match the chain.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    /// The file or its directory could not be read or written.
    #[error("anchor log {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line does not parse.
    #[error("anchor log {path} line {line} is not readable: {why}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Parse error.
        why: String,
    },
    /// The chain ends before the anchored entry: its tail was cut off, or an older copy of the
    /// registry was put in place.
    #[error(
        "the audit chain ends at entry {entries} but the anchor log vouches for entry {seq} (head {head}): \
         the chain was truncated or the registry rolled back to an older copy"
    )]
    Truncated {
        /// The anchored entry.
        seq: u64,
        /// Its anchored hash.
        head: String,
        /// Entries in the chain.
        entries: u64,
    },
    /// The chain holds another entry where the anchor names one: the chain was rewritten or
    /// rolled back and grown again.
    #[error(
        "audit entry {seq} is not the entry the anchor log vouches for (anchored head {anchored}, chain has {found}): \
         the chain was rewritten or rolled back"
    )]
    Diverged {
        /// The anchored entry.
        seq: u64,
        /// The anchored hash.
        anchored: String,
        /// The hash the chain has there.
        found: String,
    },
}

/// The append-only anchor file, open for writing.
#[derive(Debug)]
pub struct AnchorLog {
    path: PathBuf,
    file: std::sync::Mutex<std::fs::File>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AnchorError + '_ {
    move |source| AnchorError::Io { path: path.to_owned(), source }
}

impl AnchorLog {
    /// Opens (creating, 0700 / 0600) `dir/anchors.jsonl` for appending.
    pub fn open(dir: &Path) -> Result<Self, AnchorError> {
        let mut d = std::fs::DirBuilder::new();
        d.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut d, 0o700);
        d.create(dir).map_err(io(dir))?;
        let path = dir.join(ANCHOR_FILE);
        let existed = path.exists();
        let mut opts = std::fs::OpenOptions::new();
        opts.append(true).create(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let file = opts.open(&path).map_err(io(&path))?;
        if !existed {
            // The new name must survive a crash too, not only the lines written into it.
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
        }
        Ok(Self { path, file: std::sync::Mutex::new(file) })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line and fsyncs it before returning.
    pub fn append(&self, anchor: &Anchor) -> Result<(), AnchorError> {
        let mut line = serde_json::to_vec(anchor)
            .map_err(|e| AnchorError::Io { path: self.path.clone(), source: std::io::Error::other(e) })?;
        line.push(b'\n');
        // A poisoned lock only means another append panicked; the file itself is still usable.
        let mut f = self.file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f.write_all(&line).and_then(|()| f.sync_data()).map_err(io(&self.path))
    }
}

/// Reads every anchor of `path`, oldest first; `Ok(None)` when the file does not exist.
pub fn read_anchors(path: &Path) -> Result<Option<Vec<Anchor>>, AnchorError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AnchorError::Io { path: path.to_owned(), source: e }),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| AnchorError::Unreadable {
                path: path.to_owned(),
                line: i + 1,
                why: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Checks that the chain holds the anchored entry: `entry` is what the chain has at
/// `anchor.seq` (None when it ends before), `entries` its length. The entry's own hash is
/// recomputed, so an entry edited in place to carry the anchored hash is not accepted either.
pub fn check_contains(anchor: &AuditCheckpoint, entry: Option<&AuditEntry>, entries: u64) -> Result<(), AnchorError> {
    let Some(entry) = entry else {
        return Err(AnchorError::Truncated { seq: anchor.seq, head: anchor.head.clone(), entries });
    };
    let recomputed = crate::audit::entry_hash(entry.seq, &entry.event, &entry.prev);
    if entry.hash != anchor.head || recomputed != anchor.head {
        return Err(AnchorError::Diverged { seq: anchor.seq, anchored: anchor.head.clone(), found: recomputed });
    }
    Ok(())
}
