//! A tiny CA made of in-memory keys, shared by the integration tests, benches and the example.
#![allow(dead_code)]

use std::time::SystemTime;

use hsm::Signer;
use hsm::backend::memory::SoftwareSm2Key;
use pki::cert::{IssuerInfo, LintedTbs, TbsRequest, build_tbs};
use pki::csr::{assemble_csr, build_csr_info};
use pki::name::SubjectVars;
use pki::{CertSerial, Certificate, PolicySet, SignerId, Sm2PublicKey};

/// A CA: its certificate, its key and what it contributes as an issuer.
pub struct Ca {
    pub cert: Certificate,
    pub key: SoftwareSm2Key,
    pub info: IssuerInfo,
}

pub fn policy() -> PolicySet {
    PolicySet::embedded_default().expect("shipped policy loads")
}

pub fn key() -> SoftwareSm2Key {
    SoftwareSm2Key::generate(SignerId::default()).expect("keygen")
}

pub fn sign(tbs: LintedTbs, signer: &dyn Signer) -> Certificate {
    let sig = signer.sign(tbs.to_be_signed()).expect("sign");
    tbs.assemble(sig.as_der()).expect("assemble")
}

pub fn vars_name(name: &str) -> SubjectVars {
    SubjectVars { name: Some(name.into()), ..Default::default() }
}

pub fn terminal_vars(serial: &str, class: &str) -> SubjectVars {
    SubjectVars {
        serial: Some(serial.into()),
        class: Some(class.into()),
        manufacturer: Some(serial[..4].into()),
        model: Some(serial[4..6].into()),
        name: None,
        crl_partition: Some(0),
    }
}

pub fn make_root(policy: &PolicySet, now: SystemTime) -> Ca {
    let key = key();
    let profile = policy.profile("root-ca").expect("root-ca profile");
    let vars = vars_name(&policy.hierarchy.root.name);
    let req = TbsRequest {
        profile,
        vars: &vars,
        subject_key: key.sm2_public_key(),
        serial: CertSerial::generate().expect("rng"),
        now,
    };
    let cert = sign(build_tbs(&req, None).expect("root tbs"), &key);
    let info = IssuerInfo::from_certificate(&cert, profile.signer_id.clone()).expect("root as issuer");
    Ca { cert, key, info }
}

pub fn make_issuing(policy: &PolicySet, root: &Ca, now: SystemTime) -> Ca {
    let key = key();
    let profile = policy.profile("issuing-ca").expect("issuing-ca profile");
    let vars = vars_name(&policy.hierarchy.issuing.name);
    let req = TbsRequest {
        profile,
        vars: &vars,
        subject_key: key.sm2_public_key(),
        serial: CertSerial::generate().expect("rng"),
        now,
    };
    let cert = sign(build_tbs(&req, Some(&root.info)).expect("issuing tbs"), &root.key);
    let info = IssuerInfo::from_certificate(&cert, profile.signer_id.clone()).expect("issuing as issuer");
    Ca { cert, key, info }
}

pub fn issue(
    policy: &PolicySet,
    profile: &str,
    vars: &SubjectVars,
    subject_key: &Sm2PublicKey,
    issuer: &Ca,
    now: SystemTime,
) -> Certificate {
    let profile = policy.profile(profile).expect("profile");
    let req = TbsRequest { profile, vars, subject_key, serial: CertSerial::generate().expect("rng"), now };
    sign(build_tbs(&req, Some(&issuer.info)).expect("tbs"), &issuer.key)
}

/// Builds, signs and assembles a CRL from `ca`.
pub fn sign_crl(ca: &Ca, req: &pki::CrlRequest<'_>) -> pki::CertificateList {
    let tbs = pki::build_crl_tbs(&ca.info, req).expect("crl tbs");
    let sig = ca.key.sign(tbs.to_be_signed()).expect("sign crl");
    tbs.assemble(sig.as_der()).expect("crl")
}

/// A CSR signed by `key` for `subject` (e.g. "CN=…,serialNumber=…").
pub fn csr(key: &SoftwareSm2Key, subject: &str) -> Vec<u8> {
    use std::str::FromStr;
    let name = pki::Name::from_str(subject).expect("subject");
    let info = build_csr_info(&name, key.sm2_public_key()).expect("csr info");
    let sig = key.sign(&info).expect("sign csr");
    assemble_csr(&info, sig.as_der(), key.signer_id()).expect("csr")
}

/// Builds, signs and assembles an OCSP response signed by `signer` (the CA's or a delegated responder's key).
pub fn sign_ocsp(signer: &SoftwareSm2Key, req: &pki::ResponseRequest<'_>) -> Vec<u8> {
    let tbs = pki::build_response_tbs(req).expect("ocsp tbs");
    let sig = signer.sign(tbs.to_be_signed()).expect("sign ocsp");
    tbs.assemble(sig.as_der(), signer.sm2_public_key(), signer.signer_id()).expect("ocsp response")
}

/// A delegated OCSP responder certificate (profile `ocsp-signer`) issued by `issuer`, with its key.
pub fn make_ocsp_signer(policy: &PolicySet, issuer: &Ca, now: SystemTime) -> (Certificate, SoftwareSm2Key) {
    let key = key();
    let cert = issue(policy, "ocsp-signer", &vars_name("OCSP Responder 1"), key.sm2_public_key(), issuer, now);
    (cert, key)
}

/// Runs the `openssl` binary in `dir`: (success, stdout + stderr).
pub fn openssl(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl binary is needed (scripts/test.sh installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}
