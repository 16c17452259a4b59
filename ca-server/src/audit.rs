//! Signed audit checkpoints (DESIGN §5, REQUIREMENTS M8): the registry chains audit entries by
//! SM3; this module signs the chain's head with the audit key in the HSM, and checks those
//! signatures when the chain is verified. A forger who can write the database can recompute
//! every hash, but not sign a checkpoint.

use pki::{SignerId, Sm2PublicKey};
use registry::{AuditCheckpoint, ChainSummary, Registry};

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
}

/// The audit key in the HSM, and what it signs.
pub struct AuditSigner {
    key: Box<dyn hsm::Signer>,
    key_id: String,
    public: Sm2PublicKey,
}

impl AuditSigner {
    /// Wraps the HSM key that signs checkpoints.
    pub fn new(key: Box<dyn hsm::Signer>) -> Result<Self, CheckpointError> {
        let spki = key.public_key();
        let public = Sm2PublicKey::from_spki(&spki).map_err(|e| CheckpointError::Key(e.to_string()))?;
        let key_id = hex::encode(pki::alg::spki_fingerprint(&spki));
        Ok(Self { key, key_id, public })
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
}
