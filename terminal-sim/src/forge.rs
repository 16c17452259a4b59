//! A self-made certificate authority with the shipped profiles: what a counterfeiter builds to
//! give a fake terminal a certificate that looks right but chains to no root we trust. Also a
//! stand-in CA for tests of the heartbeat verifier.

use std::time::SystemTime;

use hsm::Signer;
use hsm::backend::memory::SoftwareSm2Key;
use pki::cert::{IssuerInfo, TbsRequest, build_tbs};
use pki::{CertSerial, Certificate, PolicySet, SignerId, Sm2PublicKey, SubjectVars};

/// Why the forge failed.
#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    /// Key generation or signing.
    #[error(transparent)]
    Key(#[from] hsm::HsmError),
    /// Building a certificate.
    #[error("{0}")]
    Build(String),
}

fn build(e: impl std::fmt::Display) -> ForgeError {
    ForgeError::Build(e.to_string())
}

/// A root and an issuing CA, keys in memory.
pub struct Authority {
    policy: PolicySet,
    /// The root certificate.
    pub root: Certificate,
    /// The issuing CA certificate.
    pub issuing: Certificate,
    issuing_key: SoftwareSm2Key,
    issuing_info: IssuerInfo,
}

impl Authority {
    /// A new root and issuing CA named as the shipped hierarchy names ours.
    pub fn new() -> Result<Self, ForgeError> {
        let policy = PolicySet::embedded_default().map_err(build)?;
        let now = SystemTime::now();
        let root_key = SoftwareSm2Key::generate(SignerId::default())?;
        let root = certify(
            &policy,
            "root-ca",
            &named(&policy.hierarchy.root.name),
            root_key.sm2_public_key(),
            None,
            &root_key,
            now,
        )?;
        let root_info = IssuerInfo::from_certificate(&root, SignerId::default()).map_err(build)?;
        let issuing_key = SoftwareSm2Key::generate(SignerId::default())?;
        let vars = named(&policy.hierarchy.issuing.name);
        let issuing =
            certify(&policy, "issuing-ca", &vars, issuing_key.sm2_public_key(), Some(&root_info), &root_key, now)?;
        let issuing_info = IssuerInfo::from_certificate(&issuing, SignerId::default()).map_err(build)?;
        Ok(Self { policy, root, issuing, issuing_key, issuing_info })
    }

    /// A terminal certificate for `serial` (class II) certifying `key`.
    pub fn terminal(&self, serial: &str, key: &Sm2PublicKey) -> Result<Certificate, ForgeError> {
        let vars = SubjectVars {
            serial: Some(serial.into()),
            class: Some("II".into()),
            manufacturer: serial.get(..4).map(str::to_owned),
            model: serial.get(4..6).map(str::to_owned),
            name: None,
            crl_partition: Some(0),
        };
        certify(&self.policy, "terminal", &vars, key, Some(&self.issuing_info), &self.issuing_key, SystemTime::now())
    }
}

impl Authority {
    /// A full CRL (DER) of this issuing CA: number `number`, valid from `this_update` to
    /// `next_update`, listing `revoked` (certificate serial, reason).
    pub fn crl(
        &self,
        number: u64,
        this_update: SystemTime,
        next_update: SystemTime,
        revoked: &[(CertSerial, pki::CrlReason)],
    ) -> Result<Vec<u8>, ForgeError> {
        let entries: Vec<pki::RevokedEntry> = revoked
            .iter()
            .map(|(serial, reason)| pki::RevokedEntry {
                serial: serial.clone(),
                revoked_at: this_update,
                reason: Some(*reason),
                invalidity_date: None,
            })
            .collect();
        let req = pki::CrlRequest {
            number,
            this_update,
            next_update,
            entries: &entries,
            delta_base: None,
            distribution_point: None,
        };
        let tbs = pki::build_crl_tbs(&self.issuing_info, &req).map_err(build)?;
        let sig = self.issuing_key.sign(tbs.to_be_signed())?;
        der::Encode::to_der(&tbs.assemble(sig.as_der()).map_err(build)?).map_err(build)
    }
}

fn named(name: &str) -> SubjectVars {
    SubjectVars { name: Some(name.into()), ..Default::default() }
}

fn certify(
    policy: &PolicySet,
    profile: &str,
    vars: &SubjectVars,
    subject_key: &Sm2PublicKey,
    issuer: Option<&IssuerInfo>,
    signer: &SoftwareSm2Key,
    now: SystemTime,
) -> Result<Certificate, ForgeError> {
    let profile = policy.profile(profile).ok_or_else(|| ForgeError::Build(format!("no profile {profile}")))?;
    let serial = CertSerial::generate().map_err(build)?;
    let tbs = build_tbs(&TbsRequest { profile, vars, subject_key, serial, now }, issuer).map_err(build)?;
    let sig = signer.sign(tbs.to_be_signed())?;
    tbs.assemble(sig.as_der()).map_err(build)
}
