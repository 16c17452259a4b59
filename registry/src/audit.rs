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
}

/// A verified chain's summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainSummary {
    /// Number of entries.
    pub entries: u64,
    /// Hash of the last entry.
    pub head: String,
}
