//! Chain validation up to a pinned root (REQUIREMENTS C3, C4): signatures link by link, validity
//! at a given time, name chaining, basic constraints, path length and key usage.
//!
//! The station and the simulated terminal use this before they accept a certificate.

use std::time::SystemTime;

use const_oid::AssociatedOid;
use const_oid::db::rfc5280 as oids;
use der::Encode;
use x509_cert::Certificate;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};

use crate::alg::{SignatureError, SignerId, Sm2PublicKey, check_sm2_with_sm3};
use crate::time::from_x509;

/// Longest chain we follow, root included.
pub const MAX_CHAIN_LEN: usize = 8;

/// What is wrong with one certificate of a chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainErrorKind {
    /// No certificate among the intermediates or the root has this certificate's issuer as subject.
    #[error("no issuer found for it (issuer name {issuer})")]
    IssuerNotFound {
        /// The issuer name looked for.
        issuer: String,
    },
    /// Longer than [`MAX_CHAIN_LEN`].
    #[error("chain is longer than {MAX_CHAIN_LEN}")]
    TooLong,
    /// The signature algorithm is not SM2-with-SM3 or the outer and inner ones differ.
    #[error("signature algorithm: {0}")]
    Algorithm(String),
    /// The issuer's key is not an SM2 key.
    #[error("issuer key: {0}")]
    IssuerKey(SignatureError),
    /// The signature does not verify with the issuer's key: tampered, or signed by another CA.
    #[error("signature: {0}")]
    Signature(SignatureError),
    /// Not valid yet at the checked time.
    #[error("not valid before {0}")]
    NotYetValid(String),
    /// Expired at the checked time.
    #[error("expired at {0}")]
    Expired(String),
    /// A certificate above the leaf is not a CA certificate.
    #[error("issuer is not a CA (basicConstraints cA is not true)")]
    NotCa,
    /// A CA certificate lacks keyCertSign.
    #[error("issuer key usage lacks keyCertSign")]
    NoKeyCertSign,
    /// A CA's path-length constraint is exceeded.
    #[error("path length constraint {limit} exceeded")]
    PathLenExceeded {
        /// The constraint.
        limit: u8,
    },
    /// A critical extension we do not process.
    #[error("unknown critical extension {0}")]
    UnknownCriticalExtension(String),
    /// An extension does not decode or the certificate does not re-encode.
    #[error("malformed: {0}")]
    Malformed(String),
    /// The root is not self-signed (its issuer is not its subject, or it does not verify itself).
    #[error("pinned root is not self-signed")]
    RootNotSelfSigned,
}

/// A chain that does not validate: which certificate (0 = leaf) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("certificate at depth {depth} ({subject}): {kind}")]
pub struct ChainError {
    /// 0 for the leaf, counting up towards the root.
    pub depth: usize,
    /// That certificate's subject.
    pub subject: String,
    /// What is wrong.
    pub kind: ChainErrorKind,
}

/// Validates `leaf` up to the pinned `root` through `intermediates` (any order) at time `at`.
/// Returns the path from the leaf to the root.
pub fn validate_chain<'a>(
    leaf: &'a Certificate,
    intermediates: &'a [Certificate],
    root: &'a Certificate,
    at: SystemTime,
    signer_id: &SignerId,
) -> Result<Vec<&'a Certificate>, ChainError> {
    let mut path = vec![leaf];
    // Build the path by name chaining; the root ends it.
    loop {
        let current = path[path.len() - 1];
        let depth = path.len() - 1;
        if current == root {
            break;
        }
        if path.len() >= MAX_CHAIN_LEN {
            return Err(err(depth, current, ChainErrorKind::TooLong));
        }
        let issuer_name = current.tbs_certificate().issuer();
        let next = if root.tbs_certificate().subject() == issuer_name {
            root
        } else {
            intermediates
                .iter()
                .find(|c| c.tbs_certificate().subject() == issuer_name && !path.contains(c))
                .ok_or_else(|| {
                    err(depth, current, ChainErrorKind::IssuerNotFound { issuer: issuer_name.to_string() })
                })?
        };
        path.push(next);
    }

    let root_depth = path.len() - 1;
    if root.tbs_certificate().issuer() != root.tbs_certificate().subject() {
        return Err(err(root_depth, root, ChainErrorKind::RootNotSelfSigned));
    }
    for (depth, cert) in path.iter().enumerate() {
        let issuer = path.get(depth + 1).copied().unwrap_or(root);
        check_one(cert, issuer, depth, at, signer_id).map_err(|kind| {
            let kind = match kind {
                ChainErrorKind::Signature(_) if depth == root_depth => ChainErrorKind::RootNotSelfSigned,
                other => other,
            };
            err(depth, cert, kind)
        })?;
        if depth > 0 {
            // This certificate issued the one below it: it must be a CA allowed to.
            let below_cas = path[1..depth].len();
            check_ca(cert, below_cas).map_err(|kind| err(depth, cert, kind))?;
        }
    }
    Ok(path)
}

/// Validates `leaf` as issued by `issuer` at `at`, verifying with `issuer_key` (the issuer's key,
/// typically precomputed): for a relying party that validated `issuer` up to its pinned root once
/// and then checks many leaves. Makes the checks [`validate_chain`] makes of the leaf (signature,
/// algorithm, validity, critical extensions) and of the issuer as its CA (validity, basic
/// constraints, keyCertSign), but not of the issuer's own chain.
pub fn validate_issued_by(
    leaf: &Certificate,
    issuer: &Certificate,
    issuer_key: &Sm2PublicKey,
    at: SystemTime,
    signer_id: &SignerId,
) -> Result<(), ChainError> {
    let issuer_name = leaf.tbs_certificate().issuer();
    if issuer.tbs_certificate().subject() != issuer_name {
        return Err(err(0, leaf, ChainErrorKind::IssuerNotFound { issuer: issuer_name.to_string() }));
    }
    let certified = Sm2PublicKey::from_spki(issuer.tbs_certificate().subject_public_key_info());
    if certified.map(|k| k.to_sec1_uncompressed()).ok() != Some(issuer_key.to_sec1_uncompressed()) {
        return Err(err(1, issuer, ChainErrorKind::IssuerKey(SignatureError::Invalid)));
    }
    check_signed(leaf, issuer_key, at, signer_id).map_err(|kind| err(0, leaf, kind))?;
    check_validity(issuer, at).map_err(|kind| err(1, issuer, kind))?;
    check_ca(issuer, 0).map_err(|kind| err(1, issuer, kind))
}

fn err(depth: usize, cert: &Certificate, kind: ChainErrorKind) -> ChainError {
    ChainError { depth, subject: cert.tbs_certificate().subject().to_string(), kind }
}

fn check_one(
    cert: &Certificate,
    issuer: &Certificate,
    _depth: usize,
    at: SystemTime,
    signer_id: &SignerId,
) -> Result<(), ChainErrorKind> {
    // The algorithm is checked before the issuer's key is read, as before.
    check_sm2_with_sm3(cert.signature_algorithm()).map_err(|e| ChainErrorKind::Algorithm(e.to_string()))?;
    let key = Sm2PublicKey::from_spki(issuer.tbs_certificate().subject_public_key_info())
        .map_err(ChainErrorKind::IssuerKey)?;
    check_signed(cert, &key, at, signer_id)
}

/// Everything [`check_one`] checks, with the issuer's key given.
fn check_signed(
    cert: &Certificate,
    key: &Sm2PublicKey,
    at: SystemTime,
    signer_id: &SignerId,
) -> Result<(), ChainErrorKind> {
    let tbs = cert.tbs_certificate();
    check_sm2_with_sm3(cert.signature_algorithm()).map_err(|e| ChainErrorKind::Algorithm(e.to_string()))?;
    if cert.signature_algorithm() != tbs.signature() {
        return Err(ChainErrorKind::Algorithm("outer signatureAlgorithm differs from the TBS signature field".into()));
    }
    let tbs_der = tbs.to_der().map_err(|e| ChainErrorKind::Malformed(e.to_string()))?;
    let sig = cert.signature().as_bytes().ok_or(ChainErrorKind::Signature(SignatureError::MalformedSignature))?;
    key.verify(signer_id, &tbs_der, sig).map_err(ChainErrorKind::Signature)?;
    check_validity(cert, at)?;
    const UNDERSTOOD: [const_oid::ObjectIdentifier; 3] =
        [oids::ID_CE_BASIC_CONSTRAINTS, oids::ID_CE_KEY_USAGE, oids::ID_CE_EXT_KEY_USAGE];
    for e in tbs.extensions().into_iter().flatten() {
        if e.critical && !UNDERSTOOD.contains(&e.extn_id) {
            return Err(ChainErrorKind::UnknownCriticalExtension(e.extn_id.to_string()));
        }
    }
    Ok(())
}

fn check_validity(cert: &Certificate, at: SystemTime) -> Result<(), ChainErrorKind> {
    let validity = cert.tbs_certificate().validity();
    if at < from_x509(&validity.not_before) {
        return Err(ChainErrorKind::NotYetValid(validity.not_before.to_string()));
    }
    if at > from_x509(&validity.not_after) {
        return Err(ChainErrorKind::Expired(validity.not_after.to_string()));
    }
    Ok(())
}

/// `cas_below`: how many CA certificates stand between this one and the leaf.
fn check_ca(cert: &Certificate, cas_below: usize) -> Result<(), ChainErrorKind> {
    let tbs = cert.tbs_certificate();
    let bc = tbs
        .get_extension::<BasicConstraints>()
        .map_err(|e| ChainErrorKind::Malformed(format!("{}: {e}", BasicConstraints::OID)))?
        .map(|(_, bc)| bc);
    let Some(bc) = bc.filter(|bc| bc.ca) else {
        return Err(ChainErrorKind::NotCa);
    };
    if let Some(limit) = bc.path_len_constraint
        && cas_below > usize::from(limit)
    {
        return Err(ChainErrorKind::PathLenExceeded { limit });
    }
    let ku = tbs.get_extension::<KeyUsage>().map_err(|e| ChainErrorKind::Malformed(format!("keyUsage: {e}")))?;
    if let Some((_, ku)) = ku
        && !ku.0.contains(KeyUsages::KeyCertSign)
    {
        return Err(ChainErrorKind::NoKeyCertSign);
    }
    Ok(())
}
