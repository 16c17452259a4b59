//! `pki`: the SM2 public-key infrastructure core of the healthcare-security terminal CA.
//!
//! Pure functions over bytes — no I/O, no async, no HSM. Signing happens outside: this crate
//! hands out the exact bytes to sign only after a TBS has passed the pre-sign linter
//! ([`cert::LintedTbs`], [`crl::LintedCrl`], [`ocsp::LintedResponse`]), and checks every signature it is
//! given back.
//!
//! | module | what |
//! |---|---|
//! | [`alg`] | SM2-with-SM3 identifiers, signer IDs, SM2 public keys and signature verification |
//! | [`policy`] | loading `policies/*.toml`: hierarchy, certificate profiles, serial-number rules |
//! | [`serial`] | terminal serial numbers and their check character |
//! | [`name`] | subject templates and reading names |
//! | [`csr`] | PKCS#10 parsing and proof-of-possession |
//! | [`cert`] | building TBS certificates from a profile; assembling signed certificates |
//! | [`lint`] | the pre-sign linter |
//! | [`crl`] | X.509 v2 CRLs, full and delta |
//! | [`ocsp`] | RFC 6960 OCSP: requests, signed responses, relying-party checks |
//! | [`chain`] | validating a chain to a pinned root |
//! | [`pem`] | PEM in and out |

pub mod alg;
pub mod cert;
pub mod chain;
pub mod crl;
pub mod csr;
pub mod lint;
pub mod name;
pub mod ocsp;
pub mod pem;
pub mod policy;
pub mod serial;
pub mod terminal;
pub mod time;

pub use alg::{DEFAULT_SIGNER_ID, SignatureError, SignerId, Sm2PublicKey};
pub use cert::{CertSerial, IssueError, IssuerInfo, LintedTbs, TbsRequest, build_tbs};
pub use chain::{ChainError, ChainErrorKind, validate_chain, validate_issued_by};
pub use crl::{CrlError, CrlReason, CrlRequest, LintedCrl, RevokedEntry, build_crl_tbs, verify_crl};
pub use csr::{CsrError, VerifiedCsr, csr_der, verify_csr};
pub use lint::{LintError, LintRule};
pub use name::SubjectVars;
pub use ocsp::{
    CertId, CertIdHash, CertStatus, IssuerHashes, LintedResponse, OcspError, OcspRequest, OcspResponseStatus,
    PreparedResponder, ResponseRequest, SingleResponse, VerifiedResponse, build_response_tbs, error_response,
    parse_get_path, parse_request, verify_response,
};
pub use policy::{CertProfile, CrlScope, PolicyError, PolicySet, Source};
pub use serial::{SerialError, SerialRule, TerminalClass, TerminalSerial};

/// Re-exported so callers need not depend on `x509-cert` for the types we return.
pub use x509_cert::{Certificate, certificate::TbsCertificate, crl::CertificateList, name::Name};
