//! The issuer: builds a TBS from a profile, lints it, signs it through the HSM, nothing else.

use std::time::SystemTime;

use pki::cert::{IssuerInfo, TbsRequest, build_tbs};
use pki::{CertProfile, CertSerial, Certificate, IssueError, Sm2PublicKey, SubjectVars, TbsCertificate};

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    /// Building or linting failed, or the signature did not verify: nothing was issued.
    #[error(transparent)]
    Build(#[from] IssueError),
    /// The HSM failed.
    #[error(transparent)]
    Hsm(#[from] hsm::HsmError),
    /// No randomness for the serial.
    #[error("random serial: {0}")]
    Random(String),
}

/// This process's instance number on a shared registry (`[registry] instance`), set once at
/// load: the first octet of every serial it issues.
static SERIAL_INSTANCE: std::sync::OnceLock<u8> = std::sync::OnceLock::new();

/// Sets the instance prefix of serials (1..=127); false when out of range or already set to
/// another value.
pub fn set_serial_instance(instance: u8) -> bool {
    (1..=127).contains(&instance) && *SERIAL_INSTANCE.get_or_init(|| instance) == instance
}

/// Time-ordered, so the registry's tables keyed by serial grow at their end: 31 % fewer bytes
/// written per certificate than with fully random serials (issue 17).
fn new_serial() -> Result<CertSerial, IssuerError> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    CertSerial::generate_time_ordered(SERIAL_INSTANCE.get().copied(), now_ms)
        .map_err(|e| IssuerError::Random(e.to_string()))?
        .ok_or_else(|| IssuerError::Random("instance prefix out of range".into()))
}

/// Signs certificates with the issuing CA's key.
pub struct Issuer<'a> {
    signer: &'a dyn hsm::Signer,
    info: &'a IssuerInfo,
}

impl<'a> Issuer<'a> {
    /// An issuer for the CA described by `info`, whose key `signer` holds.
    pub fn new(signer: &'a dyn hsm::Signer, info: &'a IssuerInfo) -> Self {
        Self { signer, info }
    }

    /// What this CA contributes to certificates.
    pub fn info(&self) -> &IssuerInfo {
        self.info
    }

    /// Issues a certificate for `key` under `profile`.
    pub fn issue(
        &self,
        profile: &CertProfile,
        vars: &SubjectVars,
        key: &Sm2PublicKey,
        now: SystemTime,
    ) -> Result<Certificate, IssuerError> {
        self.issue_with_der(profile, vars, key, now).map(|(cert, _)| cert)
    }

    /// [`Issuer::issue`], also returning the certificate's DER as signed (no second encoding).
    pub fn issue_with_der(
        &self,
        profile: &CertProfile,
        vars: &SubjectVars,
        key: &Sm2PublicKey,
        now: SystemTime,
    ) -> Result<(Certificate, Vec<u8>), IssuerError> {
        let tbs = self.linted(profile, vars, key, now)?;
        let signature = self.signer.sign(tbs.to_be_signed())?;
        Ok(tbs.assemble_with_der(signature.as_der())?)
    }

    /// [`Issuer::issue_with_der`] for a caller that needs the TBS, not a parsed certificate
    /// (terminal issuance: the record is made from the TBS): the DER is not parsed again.
    pub fn issue_tbs_der(
        &self,
        profile: &CertProfile,
        vars: &SubjectVars,
        key: &Sm2PublicKey,
        now: SystemTime,
    ) -> Result<(TbsCertificate, Vec<u8>), IssuerError> {
        let tbs = self.linted(profile, vars, key, now)?;
        let signature = self.signer.sign(tbs.to_be_signed())?;
        Ok(tbs.assemble_tbs_der(signature.as_der())?)
    }

    fn linted(
        &self,
        profile: &CertProfile,
        vars: &SubjectVars,
        key: &Sm2PublicKey,
        now: SystemTime,
    ) -> Result<pki::LintedTbs, IssuerError> {
        let serial = new_serial()?;
        Ok(build_tbs(&TbsRequest { profile, vars, subject_key: key, serial, now }, Some(self.info))?)
    }
}
