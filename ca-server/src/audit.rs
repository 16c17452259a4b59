//! Signed audit checkpoints (DESIGN §5, REQUIREMENTS M8): the registry chains audit entries by
//! SM3; this module signs the chain's head with the audit key in the HSM, and checks those
//! signatures when the chain is verified. A forger who can write the database can recompute
//! every hash, but not sign a checkpoint.

use pki::{SignerId, Sm2PublicKey};
use registry::anchor::{Anchor, AnchorError, AnchorLog};
use registry::{AuditCheckpoint, AuditEvent, ChainSummary, Registry};

use crate::records::now_ms;

/// Why a checkpoint could not be made or does not verify.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The HSM refused or failed.
    #[error("signing the audit checkpoint: {0}")]
    Sign(#[from] hsm::HsmError),
    /// The registry refused or failed.
    #[error("storing the audit checkpoint: {0}")]
    Registry(#[from] registry::RegistryError),
    /// A stored checkpoint is signed by another key.
    #[error("audit checkpoint at entry {seq} was signed by key {found}, not by this CA's audit key {expected}")]
    ForeignKey {
        /// The checkpoint's entry.
        seq: u64,
        /// The key id it names.
        found: String,
        /// Ours.
        expected: String,
    },
    /// A stored checkpoint's signature does not verify.
    #[error("audit checkpoint at entry {seq} has an invalid signature (forged or altered)")]
    BadSignature {
        /// The checkpoint's entry.
        seq: u64,
    },
    /// The audit key's public key is not an SM2 key.
    #[error("the audit key is not a usable SM2 key: {0}")]
    Key(String),
    /// The anchor log could not be written or read, or the chain does not hold its newest head.
    #[error(transparent)]
    Anchor(#[from] AnchorError),
    /// The registry has signed checkpoints but the anchor log is missing or empty.
    #[error(
        "the registry has signed audit checkpoints (up to entry {seq}) but the anchor log {path} is missing or empty: \
         it was deleted, or [audit] anchor_dir points elsewhere"
    )]
    AnchorsMissing {
        /// The newest checkpoint's entry.
        seq: u64,
        /// The anchor file expected.
        path: String,
    },
}

/// The audit key in the HSM, and what it signs.
pub struct AuditSigner {
    key: Box<dyn hsm::Signer>,
    key_id: String,
    public: Sm2PublicKey,
    public_hex: String,
    anchors: Option<AnchorLog>,
    started: std::time::Instant,
    rollback_accepted: std::sync::OnceLock<String>,
}

/// What the start-up check of the anchor log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnchorCheck {
    /// No anchor log configured (no audit key): truncation and rollback cannot be ruled out.
    NoAnchorLog,
    /// Neither anchors nor checkpoints yet (a new CA).
    Empty,
    /// The chain holds the newest anchored head, entry `seq`.
    Holds {
        /// The newest anchored entry.
        seq: u64,
    },
    /// The chain does not hold it, and the operator accepted that (`--accept-audit-rollback`).
    RollbackAccepted(String),
}

impl AuditSigner {
    /// Wraps the HSM key that signs checkpoints.
    pub fn new(key: Box<dyn hsm::Signer>) -> Result<Self, CheckpointError> {
        let spki = key.public_key();
        let public = Sm2PublicKey::from_spki(&spki).map_err(|e| CheckpointError::Key(e.to_string()))?;
        let key_id = hex::encode(pki::alg::spki_fingerprint(&spki));
        let public_hex = hex::encode(der::Encode::to_der(&spki).map_err(|e| CheckpointError::Key(e.to_string()))?);
        Ok(Self {
            key,
            key_id,
            public,
            public_hex,
            anchors: None,
            started: std::time::Instant::now(),
            rollback_accepted: std::sync::OnceLock::new(),
        })
    }

    /// Also appends every checkpoint to `log` (before the registry stores it, so an anchor never
    /// names a head the registry did not have), and writes the audit public key beside it as
    /// `audit-key.pem` (once), for verifiers to pin.
    pub fn with_anchor_log(mut self, log: AnchorLog) -> Result<Self, CheckpointError> {
        let pem_path = log.path().with_file_name("audit-key.pem");
        if !pem_path.exists() {
            let der = hex::decode(&self.public_hex).map_err(|e| CheckpointError::Key(e.to_string()))?;
            let pem = pki::pem::der_to_pem("PUBLIC KEY", &der).map_err(|e| CheckpointError::Key(e.to_string()))?;
            std::fs::write(&pem_path, pem)
                .map_err(|source| CheckpointError::Anchor(AnchorError::Io { path: pem_path.clone(), source }))?;
        }
        self.anchors = Some(log);
        Ok(self)
    }

    /// The anchor log, if any.
    pub fn anchor_log(&self) -> Option<&AnchorLog> {
        self.anchors.as_ref()
    }

    /// Set when the server was started over a chain that lost anchored entries.
    pub fn rollback_accepted(&self) -> Option<&str> {
        self.rollback_accepted.get().map(String::as_str)
    }

    /// Whether a checkpoint is due: at least `entries` entries since the last one, or `seconds`
    /// since it (or since start) with any new entry.
    pub fn due(&self, registry: &Registry, entries: u64, seconds: u64) -> Result<bool, CheckpointError> {
        let Some((seq, _)) = registry.audit_head()? else { return Ok(false) };
        let last = registry.last_audit_checkpoint()?;
        let covered = last.as_ref().map_or(0, |c| c.seq);
        if seq <= covered {
            return Ok(false);
        }
        let age_ms = match &last {
            Some(c) => now_ms().saturating_sub(c.time_ms),
            None => u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        Ok(seq - covered >= entries.max(1) || age_ms >= seconds.saturating_mul(1000))
    }

    /// Checks a line of the anchor log: signed by this audit key, signature valid.
    pub fn verify_anchor(&self, anchor: &Anchor) -> Result<(), CheckpointError> {
        if anchor.public_key != self.public_hex {
            return Err(CheckpointError::ForeignKey {
                seq: anchor.checkpoint.seq,
                found: anchor.checkpoint.key_id.clone(),
                expected: self.key_id.clone(),
            });
        }
        verify_one(&anchor.checkpoint, &self.public, self.key.signer_id(), &self.key_id)
    }

    /// At start: every anchor is signed by this key, and the chain holds the newest anchored
    /// head. When it does not, refuses, or — with `accept` — audits
    /// that the loss was accepted, signs and anchors the chain as it now is, and remembers it
    /// for `/readyz`.
    pub fn check_anchors(&self, registry: &Registry, accept: bool) -> Result<AnchorCheck, CheckpointError> {
        let Some(log) = &self.anchors else { return Ok(AnchorCheck::NoAnchorLog) };
        let result = self.anchors_hold(log, registry);
        match result {
            Ok(check) => Ok(check),
            Err(e) if accept => {
                let detail = e.to_string();
                registry.audit(&AuditEvent {
                    time_ms: now_ms(),
                    actor: "ca-server serve".into(),
                    action: "audit_rollback_accepted".into(),
                    target: log.path().display().to_string(),
                    outcome: "ok".into(),
                    detail: format!("--accept-audit-rollback: {detail}"),
                })?;
                self.checkpoint(registry)?;
                let _ = self.rollback_accepted.set(detail.clone());
                Ok(AnchorCheck::RollbackAccepted(detail))
            }
            Err(e) => Err(e),
        }
    }

    fn anchors_hold(&self, log: &AnchorLog, registry: &Registry) -> Result<AnchorCheck, CheckpointError> {
        let anchors = registry::anchor::read_anchors(log.path())?.unwrap_or_default();
        for a in &anchors {
            self.verify_anchor(a)?;
        }
        let Some(newest) = anchors.last() else {
            return match registry.last_audit_checkpoint()? {
                Some(cp) => {
                    Err(CheckpointError::AnchorsMissing { seq: cp.seq, path: log.path().display().to_string() })
                }
                None => Ok(AnchorCheck::Empty),
            };
        };
        // The newest is enough: entries are hash-linked, so holding it fixes every entry before
        // it (earlier anchors may name a chain given up by an accepted rollback).
        let (entry, len) = registry.audit_entry_at(newest.checkpoint.seq)?;
        registry::anchor::check_contains(&newest.checkpoint, entry.as_ref(), len)?;
        Ok(AnchorCheck::Holds { seq: newest.checkpoint.seq })
    }

    /// Signs and stores a checkpoint of the chain's head, unless the newest checkpoint already
    /// covers it. Returns the new checkpoint, if one was made.
    pub fn checkpoint(&self, registry: &Registry) -> Result<Option<AuditCheckpoint>, CheckpointError> {
        let Some((seq, head)) = registry.audit_head()? else { return Ok(None) };
        if registry.last_audit_checkpoint()?.is_some_and(|last| last.seq >= seq) {
            return Ok(None);
        }
        let time_ms = now_ms();
        let message = registry::audit::checkpoint_message(seq, &head, time_ms);
        let signature = self.key.sign(&message)?;
        let cp = AuditCheckpoint {
            seq,
            head,
            time_ms,
            key_id: self.key_id.clone(),
            signature: hex::encode(signature.as_der()),
        };
        if let Some(log) = &self.anchors {
            log.append(&Anchor { checkpoint: cp.clone(), public_key: self.public_hex.clone() })?;
        }
        registry.add_audit_checkpoint(&cp)?;
        Ok(Some(cp))
    }

    /// Checks the signature of every checkpoint of a verified chain; returns how many there are.
    pub fn verify(&self, summary: &ChainSummary) -> Result<usize, CheckpointError> {
        let id = self.key.signer_id();
        for cp in &summary.checkpoints {
            verify_one(cp, &self.public, id, &self.key_id)?;
        }
        Ok(summary.checkpoints.len())
    }
}

fn verify_one(cp: &AuditCheckpoint, key: &Sm2PublicKey, id: &SignerId, key_id: &str) -> Result<(), CheckpointError> {
    if cp.key_id != key_id {
        return Err(CheckpointError::ForeignKey { seq: cp.seq, found: cp.key_id.clone(), expected: key_id.to_owned() });
    }
    let sig = hex::decode(&cp.signature).map_err(|_| CheckpointError::BadSignature { seq: cp.seq })?;
    key.verify(id, &cp.message(), &sig).map_err(|_| CheckpointError::BadSignature { seq: cp.seq })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hsm::backend::memory::SoftwareSm2Key;
    use registry::AuditEvent;

    fn event(n: u32) -> AuditEvent {
        AuditEvent {
            time_ms: 1,
            actor: "admin".into(),
            action: "test".into(),
            target: format!("t{n}"),
            outcome: "ok".into(),
            detail: String::new(),
        }
    }

    #[test]
    fn checkpoints_are_signed_verified_and_forgeries_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = Registry::open(&dir.path().join("r.redb")).expect("open");
        let key = SoftwareSm2Key::generate(Default::default()).expect("key");
        let signer = AuditSigner::new(Box::new(key)).expect("signer");
        assert!(signer.checkpoint(&reg).expect("empty chain").is_none());
        reg.audit(&event(1)).expect("audit");
        reg.audit(&event(2)).expect("audit");
        let cp = signer.checkpoint(&reg).expect("checkpoint").expect("made");
        assert_eq!(cp.seq, 2);
        assert!(signer.checkpoint(&reg).expect("again").is_none(), "head unchanged: no new checkpoint");
        reg.audit(&event(3)).expect("audit");
        signer.checkpoint(&reg).expect("checkpoint").expect("made");
        assert_eq!(signer.verify(&reg.verify_audit_chain().expect("chain")).expect("signatures"), 2);

        // A checkpoint that matches the chain but is signed by another key, or carries a
        // signature over other bytes, is refused.
        let other =
            AuditSigner::new(Box::new(SoftwareSm2Key::generate(Default::default()).expect("key"))).expect("signer");
        let summary = reg.verify_audit_chain().expect("chain");
        assert!(matches!(other.verify(&summary), Err(CheckpointError::ForeignKey { seq: 2, .. })));
        let mut forged = summary.clone();
        forged.checkpoints[1].time_ms += 1;
        assert!(matches!(signer.verify(&forged), Err(CheckpointError::BadSignature { seq: 3 })));
        forged.checkpoints[1].signature = "zz".into();
        assert!(matches!(signer.verify(&forged), Err(CheckpointError::BadSignature { seq: 3 })));
    }

    #[test]
    fn the_start_check_refuses_a_cut_or_rolled_back_chain_unless_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg_path = dir.path().join("r.redb");
        let reg = Registry::open(&reg_path).expect("open");
        let key = SoftwareSm2Key::generate(Default::default()).expect("key");
        let log = AnchorLog::open(&dir.path().join("anchors")).expect("log");
        let signer = AuditSigner::new(Box::new(key)).expect("signer").with_anchor_log(log).expect("anchors");
        assert!(dir.path().join("anchors/audit-key.pem").exists());
        assert_eq!(signer.check_anchors(&reg, false).expect("new CA"), AnchorCheck::Empty);
        for i in 0..3 {
            reg.audit(&event(i)).expect("audit");
        }
        assert!(signer.due(&reg, 3, 3600).expect("due"), "three uncovered entries reach checkpoint_entries = 3");
        assert!(!signer.due(&reg, 4, 3600).expect("due"));
        assert!(signer.due(&reg, 4, 0).expect("due"), "checkpoint_seconds elapsed with new entries");
        signer.checkpoint(&reg).expect("checkpoint").expect("made");
        assert!(!signer.due(&reg, 1, 0).expect("due"), "nothing new");
        let older = dir.path().join("older.redb");
        drop(reg);
        std::fs::copy(&reg_path, &older).expect("copy");
        let reg = Registry::open(&reg_path).expect("open");
        for i in 3..6 {
            reg.audit(&event(i)).expect("audit");
        }
        signer.checkpoint(&reg).expect("checkpoint").expect("made");
        assert_eq!(signer.check_anchors(&reg, false).expect("holds"), AnchorCheck::Holds { seq: 6 });

        // Cut the tail with its checkpoints: refused, naming the anchored entry.
        reg.truncate_audit(4).expect("truncate");
        reg.verify_audit_chain().expect("the registry alone cannot tell");
        let err = signer.check_anchors(&reg, false).expect_err("refused");
        assert!(matches!(err, CheckpointError::Anchor(AnchorError::Truncated { seq: 6, entries: 4, .. })), "{err}");
        drop(reg);

        // An older copy of the file: refused too.
        let reg = Registry::open(&older).expect("older");
        let err = signer.check_anchors(&reg, false).expect_err("rolled back");
        assert!(err.to_string().contains("truncated or the registry rolled back"), "{err}");

        // Accepted: audited, anchored anew, and remembered; the next start passes.
        let accepted = signer.check_anchors(&reg, true).expect("accepted");
        assert!(matches!(accepted, AnchorCheck::RollbackAccepted(_)));
        assert!(signer.rollback_accepted().is_some_and(|w| w.contains("vouches for entry 6")));
        let tail = reg.audit_tail(1).expect("tail");
        assert_eq!(tail[0].event.action, "audit_rollback_accepted");
        assert_eq!(signer.check_anchors(&reg, false).expect("holds"), AnchorCheck::Holds { seq: 4 });
    }

    #[test]
    fn forged_or_missing_anchors_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = Registry::open(&dir.path().join("r.redb")).expect("open");
        let anchors = dir.path().join("anchors");
        let signer = AuditSigner::new(Box::new(SoftwareSm2Key::generate(Default::default()).expect("key")))
            .expect("signer")
            .with_anchor_log(AnchorLog::open(&anchors).expect("log"))
            .expect("anchors");
        reg.audit(&event(1)).expect("audit");
        signer.checkpoint(&reg).expect("checkpoint").expect("made");

        // An insider appends an anchor signed by a key of their own, for a chain of their own.
        let other = AuditSigner::new(Box::new(SoftwareSm2Key::generate(Default::default()).expect("key")))
            .expect("signer")
            .with_anchor_log(AnchorLog::open(&dir.path().join("other")).expect("log"))
            .expect("anchors");
        let reg2 = Registry::open(&dir.path().join("r2.redb")).expect("open");
        reg2.audit(&event(9)).expect("audit");
        other.checkpoint(&reg2).expect("checkpoint").expect("made");
        let forged = std::fs::read_to_string(dir.path().join("other/anchors.jsonl")).expect("read");
        let path = anchors.join("anchors.jsonl");
        let genuine = std::fs::read_to_string(&path).expect("read");
        std::fs::write(&path, format!("{genuine}{forged}")).expect("append");
        let err = signer.check_anchors(&reg, false).expect_err("foreign");
        assert!(matches!(err, CheckpointError::ForeignKey { .. }), "{err}");
        // The right key, the signature over other bytes.
        let altered = genuine.replace("\"time_ms\":", "\"time_ms\":1");
        std::fs::write(&path, altered).expect("write");
        let err = signer.check_anchors(&reg, false).expect_err("altered");
        assert!(matches!(err, CheckpointError::BadSignature { seq: 1 }), "{err}");

        // Anchors deleted while the registry has checkpoints: refused.
        std::fs::write(&path, "").expect("empty");
        let err = signer.check_anchors(&reg, false).expect_err("missing");
        assert!(matches!(err, CheckpointError::AnchorsMissing { seq: 1, .. }), "{err}");
    }
}
