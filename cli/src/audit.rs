//! `cactl audit verify --anchors FILE`: the database's audit chain against the anchor log kept
//! outside it. The chain alone cannot show that its tail was cut off together with the
//! checkpoints covering it, or that an older copy of the registry was put in place; the anchor
//! log's newest line names a head the chain must still hold.

use std::path::Path;

use anyhow::{Context, Result};
use registry::anchor::{Anchor, check_contains, read_anchors};
use registry::{AuditCheckpoint, Registry};
use serde::Serialize;

/// The audit chain or its anchors did not verify (exit code 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotVerified(pub String);

/// What the database alone cannot tell.
pub const DATABASE_ALONE: &str = "truncation and rollback cannot be ruled out from the database alone: \
     pass --anchors FILE (a copy of the server's [audit] anchor_dir/anchors.jsonl)";

/// The outcome of a verification against an anchor log.
#[derive(Debug, Serialize)]
pub struct Verified {
    /// Entries in the chain.
    pub entries: u64,
    /// Signed checkpoints in the database, each signature checked.
    pub checkpoints: usize,
    /// Lines of the anchor log, each signature checked.
    pub anchors: usize,
    /// The newest anchored entry, which the chain holds.
    pub newest_anchor: u64,
    /// SM3 of the audit key's SubjectPublicKeyInfo.
    pub audit_key_id: String,
    /// Whether that key was pinned with `--audit-key` (else it is the one the anchors name).
    pub key_pinned: bool,
    /// Older anchors naming entries this chain does not hold: a chain given up by an accepted
    /// rollback (`audit_rollback_accepted` entries say when).
    pub abandoned_anchors: Vec<u64>,
}

fn not_verified(msg: impl Into<String>) -> anyhow::Error {
    NotVerified(msg.into()).into()
}

struct AuditKey {
    der: Vec<u8>,
    id: String,
    key: pki::Sm2PublicKey,
}

fn audit_key(der: Vec<u8>) -> Result<AuditKey> {
    let spki: spki::SubjectPublicKeyInfoOwned = der::Decode::from_der(&der).context("audit key: not a public key")?;
    let key = pki::Sm2PublicKey::from_spki(&spki).map_err(|e| anyhow::anyhow!("audit key: {e}"))?;
    let id = hex::encode(pki::alg::spki_fingerprint(&spki));
    Ok(AuditKey { der, id, key })
}

fn check_signature(cp: &AuditCheckpoint, key: &AuditKey, what: &str) -> Result<()> {
    if cp.key_id != key.id {
        return Err(not_verified(format!("{what} for entry {} names audit key {}, not {}", cp.seq, cp.key_id, key.id)));
    }
    let sig =
        hex::decode(&cp.signature).map_err(|_| not_verified(format!("{what} for entry {}: bad signature", cp.seq)))?;
    key.key
        .verify(&pki::SignerId::default(), &cp.message(), &sig)
        .map_err(|_| not_verified(format!("{what} for entry {}: invalid signature (forged or altered)", cp.seq)))
}

/// Verifies the registry file at `registry` (a stopped server's, or a snapshot) against the
/// anchor log `anchors`; `pinned` is the audit key's DER SubjectPublicKeyInfo, if the caller
/// pins one.
pub fn verify(registry: &Path, anchors: &Path, pinned: Option<Vec<u8>>) -> Result<Verified> {
    if !registry.exists() {
        anyhow::bail!("{}: no such registry file", registry.display());
    }
    let reg = Registry::open(registry).with_context(|| format!("opening {}", registry.display()))?;
    let summary = reg.verify_audit_chain().map_err(|e| not_verified(format!("audit chain broken: {e}")))?;
    let lines: Vec<Anchor> =
        read_anchors(anchors)?.ok_or_else(|| anyhow::anyhow!("{}: no such anchor log", anchors.display()))?;
    let Some(newest) = lines.last() else {
        return Err(not_verified(format!("{} holds no anchors", anchors.display())));
    };
    let key_pinned = pinned.is_some();
    let der = match pinned {
        Some(d) => d,
        None => {
            hex::decode(&newest.public_key).map_err(|_| not_verified("the newest anchor's public key is not hex"))?
        }
    };
    let key = audit_key(der)?;
    for a in &lines {
        if hex::decode(&a.public_key).ok().as_deref() != Some(key.der.as_slice()) {
            return Err(not_verified(format!(
                "the anchor for entry {} carries another public key than audit key {}",
                a.checkpoint.seq, key.id
            )));
        }
        check_signature(&a.checkpoint, &key, "anchor")?;
    }
    for cp in &summary.checkpoints {
        check_signature(cp, &key, "checkpoint")?;
    }
    let (entry, len) = reg.audit_entry_at(newest.checkpoint.seq)?;
    check_contains(&newest.checkpoint, entry.as_ref(), len).map_err(|e| not_verified(e.to_string()))?;
    let mut abandoned = Vec::new();
    for a in &lines[..lines.len() - 1] {
        let (entry, len) = reg.audit_entry_at(a.checkpoint.seq)?;
        if check_contains(&a.checkpoint, entry.as_ref(), len).is_err() {
            abandoned.push(a.checkpoint.seq);
        }
    }
    Ok(Verified {
        entries: summary.entries,
        checkpoints: summary.checkpoints.len(),
        anchors: lines.len(),
        newest_anchor: newest.checkpoint.seq,
        audit_key_id: key.id,
        key_pinned,
        abandoned_anchors: abandoned,
    })
}

/// The human line for a verification that passed.
pub fn describe(v: &Verified) -> String {
    let mut s = format!(
        "audit chain verified: {} entries, {} signed checkpoints; the chain holds the newest of {} signed anchors (entry {}), \
         so it was neither truncated nor rolled back before that entry",
        v.entries, v.checkpoints, v.anchors, v.newest_anchor
    );
    if v.entries > v.newest_anchor {
        s.push_str(&format!(
            "; entries {}..{} are newer than the newest anchor and only hash-chained",
            v.newest_anchor + 1,
            v.entries
        ));
    }
    if v.key_pinned {
        s.push_str(&format!("\naudit key {} (pinned)", v.audit_key_id));
    } else {
        s.push_str(&format!(
            "\naudit key {} as named by the anchors (not pinned: pass --audit-key FILE, the anchor directory's audit-key.pem kept apart)",
            v.audit_key_id
        ));
    }
    if !v.abandoned_anchors.is_empty() {
        s.push_str(&format!(
            "\nWARNING: {} older anchors name entries this chain does not hold (entries {:?}): a rollback was accepted \
             (see audit_rollback_accepted in the log)",
            v.abandoned_anchors.len(),
            v.abandoned_anchors
        ));
    }
    s
}

/// Reads a public key PEM (`PUBLIC KEY`) into DER.
pub fn read_public_key(path: &Path) -> Result<Vec<u8>> {
    let pem = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (label, der) =
        der::pem::decode_vec(pem.trim().as_bytes()).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    anyhow::ensure!(label == "PUBLIC KEY", "{}: expected a PUBLIC KEY PEM, found {label}", path.display());
    Ok(der)
}

/// Verifies the chain of `registry` alone (no anchor log): hash links, checkpoints matching it,
/// and their signatures when the key is pinned.
pub fn verify_alone(registry: &Path, pinned: Option<Vec<u8>>) -> Result<(u64, usize)> {
    if !registry.exists() {
        anyhow::bail!("{}: no such registry file", registry.display());
    }
    let reg = Registry::open(registry).with_context(|| format!("opening {}", registry.display()))?;
    let summary = reg.verify_audit_chain().map_err(|e| not_verified(format!("audit chain broken: {e}")))?;
    if let Some(der) = pinned {
        let key = audit_key(der)?;
        for cp in &summary.checkpoints {
            check_signature(cp, &key, "checkpoint")?;
        }
    }
    Ok((summary.entries, summary.checkpoints.len()))
}

/// A consistent copy of the running CA's registry (the Backup call), written to `out`.
pub async fn snapshot(client: &proto::client::Client, out: &Path) -> Result<()> {
    use sm3::Digest;
    let msg = proto::v1::BackupRequest { request_id: proto::client::request_id() };
    let mut stream = proto::v1::admin_client::AdminClient::new(client.channel.clone())
        .backup(client.signed("/hsca.v1.Admin/Backup", msg)?)
        .await?
        .into_inner();
    let mut bytes = Vec::new();
    let mut expected = None;
    while let Some(chunk) = stream.message().await? {
        bytes.extend_from_slice(&chunk.data);
        if chunk.last {
            expected = Some(chunk.sm3);
        }
    }
    let got = hex::encode(sm3::Sm3::digest(&bytes));
    anyhow::ensure!(expected.as_deref() == Some(got.as_str()), "registry snapshot incomplete or corrupted");
    std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))
}
