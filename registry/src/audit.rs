//! The audit log: every state change and every refusal, each entry chained to the one before by
//! SM3, so an edited, removed or reordered entry is detected (REQUIREMENTS M8, M9).

use serde::{Deserialize, Serialize};
use sm3::{Digest, Sm3};

/// What a caller asks to be logged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Unix milliseconds.
    pub time_ms: u64,
    /// Who (principal name, or `system`).
    pub actor: String,
    /// What (`issue`, `revoke`, `auth_refused`, …).
    pub action: String,
    /// On what (terminal serial, certificate serial, principal).
    pub target: String,
    /// `ok`, or the stable reason of a refusal.
    pub outcome: String,
    /// Free detail; never secrets.
    pub detail: String,
}

/// A stored entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// 1, 2, 3, … without gaps.
    pub seq: u64,
    /// The event.
    #[serde(flatten)]
    pub event: AuditEvent,
    /// Hex SM3 hash of the previous entry (64 zeros for the first).
    pub prev: String,
    /// Hex SM3 over `prev` and this entry's content.
    pub hash: String,
}

/// The hash that links entry `seq` with `event` after `prev`.
pub fn entry_hash(seq: u64, event: &AuditEvent, prev: &str) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        seq: u64,
        event: &'a AuditEvent,
    }
    let body = serde_json::to_vec(&Body { seq, event }).unwrap_or_default();
    let mut h = Sm3::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(&body);
    hex::encode(h.finalize())
}

/// The `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Where and how the chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    /// An entry does not parse.
    #[error("audit entry {seq} is not readable: {why}")]
    Unreadable {
        /// Its key.
        seq: u64,
        /// Parse error.
        why: String,
    },
    /// Keys are not 1, 2, 3, … (an entry was removed or inserted).
    #[error("audit entry at key {key} says seq {found}; expected {expected} (entry removed or inserted)")]
    Gap {
        /// The table key.
        key: u64,
        /// The seq expected there.
        expected: u64,
        /// The seq stored.
        found: u64,
    },
    /// `prev` does not match the previous entry's hash (reordered or replaced).
    #[error("audit entry {seq} does not follow entry {}: prev hash mismatch (reordered or replaced)", seq - 1)]
    BrokenLink {
        /// The entry.
        seq: u64,
    },
    /// The hash does not match the content (edited).
    #[error("audit entry {seq} was edited: its hash does not match its content")]
    Edited {
        /// The entry.
        seq: u64,
    },
    /// A signed checkpoint vouches for another hash at its entry (the chain was rewritten).
    #[error("audit entry {seq} is not the entry its signed checkpoint vouches for (the chain was rewritten)")]
    CheckpointMismatch {
        /// The entry.
        seq: u64,
    },
    /// A signed checkpoint names an entry the chain no longer has (entries were cut off the end).
    #[error("a signed checkpoint vouches for entry {seq} but the chain ends at {entries} (entries were removed)")]
    Truncated {
        /// The checkpoint's entry.
        seq: u64,
        /// Entries present.
        entries: u64,
    },
    /// A checkpoint does not parse.
    #[error("audit checkpoint at {seq} is not readable: {why}")]
    CheckpointUnreadable {
        /// Its key.
        seq: u64,
        /// Parse error.
        why: String,
    },
}

/// A signed statement that the chain's entry `seq` had hash `head`: once signed by the audit key
/// in the HSM, rewriting the chain up to `seq` (even consistently, every hash recomputed) is
/// detected, because the forger cannot sign a new checkpoint (DESIGN §5, REQUIREMENTS M8).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheckpoint {
    /// The entry vouched for.
    pub seq: u64,
    /// Its hash (hex SM3).
    pub head: String,
    /// When it was signed, unix milliseconds.
    pub time_ms: u64,
    /// Hex SM3 of the signing key's SubjectPublicKeyInfo.
    pub key_id: String,
    /// Hex DER SM2 signature over [`checkpoint_message`].
    pub signature: String,
}

impl AuditCheckpoint {
    /// The bytes the audit key signs.
    pub fn message(&self) -> Vec<u8> {
        checkpoint_message(self.seq, &self.head, self.time_ms)
    }
}

/// The bytes signed for a checkpoint of entry `seq` with hash `head` at `time_ms`.
pub fn checkpoint_message(seq: u64, head: &str, time_ms: u64) -> Vec<u8> {
    format!("HSCA-AUDIT-CHECKPOINT-1\n{seq}\n{head}\n{time_ms}\n").into_bytes()
}

/// A verified chain's summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainSummary {
    /// Number of entries.
    pub entries: u64,
    /// Hash of the last entry.
    pub head: String,
    /// Every checkpoint, oldest first, each matching the chain (their signatures are the
    /// caller's to check: the registry holds no keys).
    pub checkpoints: Vec<AuditCheckpoint>,
}

/// Which audit entries [`crate::Registry::audit_by`] fetches through the audit indexes (kept in
/// the transaction that appends each entry), so they are found however old they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditBy {
    /// Entries whose actor is this principal (or `system`).
    Actor(String),
    /// Entries about this target: a terminal serial, a certificate serial, a principal name.
    Target(String),
}

impl AuditBy {
    /// Whether `event` is one of the entries asked for.
    pub fn matches(&self, event: &AuditEvent) -> bool {
        match self {
            AuditBy::Actor(a) => event.actor == *a,
            AuditBy::Target(t) => event.target == *t,
        }
    }
}

/// The longest actor or target the audit indexes hold (bytes): longer ones (no valid serial or
/// principal name is) are not indexed, since a PostgreSQL B-tree entry holds at most ~2.7 KB and
/// a refusal audits whatever field a caller sent; the entry itself is still logged and chained.
pub const INDEXED_FIELD_MAX_BYTES: usize = 256;

/// The actor and target an entry's stored bytes are indexed under, each `None` when longer than
/// [`INDEXED_FIELD_MAX_BYTES`]; `None` when they do not parse (only a tampered entry, which chain
/// verification reports).
pub(crate) fn index_keys(bytes: &[u8]) -> Option<(Option<String>, Option<String>)> {
    #[derive(Deserialize)]
    struct Keys {
        actor: String,
        target: String,
    }
    let bounded = |k: String| (k.len() <= INDEXED_FIELD_MAX_BYTES).then_some(k);
    serde_json::from_slice::<Keys>(bytes).ok().map(|k| (bounded(k.actor), bounded(k.target)))
}
