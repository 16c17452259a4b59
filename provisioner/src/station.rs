//! One terminal, provisioned end to end under one deadline (DESIGN §6, HSTS 7.4.4 c):
//! HELLO → GEN_KEY → GET_CSR → Issue → verify chain → PUT_ROOT → PUT_CHAIN → COMMIT → read back
//! → CHALLENGE → LOCK → Confirm. Every step is safe to repeat: a retry after a crash or an unplug
//! resumes from what the device reports, sends the CA the identical request (same request id,
//! same CSR — the device keeps it), gets the same certificate, and finishes the write.

use std::time::{Duration, Instant, SystemTime};

use der::{Decode, Encode};
use device_protocol::{ErrorCode, HostLink, LinkError, Request, Response, SeState, Transport, challenge_message};
use pki::{Certificate, SignerId};
use proto::v1;
use sm3::Digest;

use crate::ca::{CaApi, CaError};

/// The steps, in order, as named in errors, progress and reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Step {
    /// Device identity and state.
    Hello,
    /// The SE makes its key pair.
    GenKey,
    /// The SE signs a PKCS#10 request.
    GetCsr,
    /// `IssueTerminalCertificate` on the CA.
    Issue,
    /// The station checks the returned chain against its pinned root.
    VerifyChain,
    /// The root certificate is written (once).
    PutRoot,
    /// Certificate and issuing CA written in chunks.
    PutChain,
    /// The device verifies the chain and switches to it atomically.
    Commit,
    /// The station reads the certificate back and compares.
    ReadBack,
    /// The new key signs a fresh nonce.
    Challenge,
    /// The SE is made read-only.
    Lock,
    /// `ConfirmProvisioning` on the CA.
    Confirm,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 12] = [
        Step::Hello,
        Step::GenKey,
        Step::GetCsr,
        Step::Issue,
        Step::VerifyChain,
        Step::PutRoot,
        Step::PutChain,
        Step::Commit,
        Step::ReadBack,
        Step::Challenge,
        Step::Lock,
        Step::Confirm,
    ];

    /// `GEN_KEY`, `ISSUE`, …
    pub fn name(self) -> &'static str {
        match self {
            Step::Hello => "HELLO",
            Step::GenKey => "GEN_KEY",
            Step::GetCsr => "GET_CSR",
            Step::Issue => "ISSUE",
            Step::VerifyChain => "VERIFY_CHAIN",
            Step::PutRoot => "PUT_ROOT",
            Step::PutChain => "PUT_CHAIN",
            Step::Commit => "COMMIT",
            Step::ReadBack => "READ_BACK",
            Step::Challenge => "CHALLENGE",
            Step::Lock => "LOCK",
            Step::Confirm => "CONFIRM",
        }
    }

    /// Position in [`Step::ALL`].
    pub fn index(self) -> usize {
        Step::ALL.iter().position(|s| *s == self).unwrap_or(0)
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a terminal was not provisioned; always names the step.
#[derive(Debug, thiserror::Error)]
pub enum StationError {
    /// The per-terminal deadline passed.
    #[error("{step}: deadline of {deadline:?} exceeded (HSTS 7.4.4 c); the terminal was abandoned")]
    Deadline {
        /// Where it was.
        step: Step,
        /// The deadline.
        deadline: Duration,
    },
    /// The link failed, or the device refused.
    #[error("{step}: {source}")]
    Link {
        /// Where.
        step: Step,
        /// What.
        source: LinkError,
    },
    /// The device answered something it should not have.
    #[error("{step}: unexpected answer {got} from the device")]
    Unexpected {
        /// Where.
        step: Step,
        /// What came.
        got: &'static str,
    },
    /// The device reports tampering: its keys are gone.
    #[error("HELLO: the terminal reports TAMPERED (keys wiped); it cannot be provisioned")]
    Tampered,
    /// The CA refused or failed.
    #[error("{step}: the CA answered {source}")]
    Ca {
        /// Where.
        step: Step,
        /// What.
        source: CaError,
    },
    /// What the device or the CA sent does not check out.
    #[error("{step}: {why}")]
    Rejected {
        /// Where.
        step: Step,
        /// Why.
        why: String,
    },
}

impl StationError {
    /// The step that failed.
    pub fn step(&self) -> Step {
        match self {
            StationError::Deadline { step, .. }
            | StationError::Link { step, .. }
            | StationError::Unexpected { step, .. }
            | StationError::Ca { step, .. }
            | StationError::Rejected { step, .. } => *step,
            StationError::Tampered => Step::Hello,
        }
    }

    /// A short stable code for reports: the device's or the CA's reason when there is one.
    pub fn code(&self) -> String {
        match self {
            StationError::Deadline { .. } => "DEADLINE_EXCEEDED".into(),
            StationError::Link { source: LinkError::Device { code, .. }, .. } => code.name().into(),
            StationError::Link { source: LinkError::Timeout { .. }, .. } => "DEVICE_TIMEOUT".into(),
            StationError::Link { .. } => "LINK_FAILED".into(),
            StationError::Unexpected { .. } => "PROTOCOL_VIOLATION".into(),
            StationError::Tampered => "TAMPERED".into(),
            StationError::Ca { source, .. } => source.reason.clone(),
            StationError::Rejected { .. } => "REJECTED".into(),
        }
    }
}

/// What the station knows and trusts.
pub struct StationConfig {
    /// The pinned PKI root (from the station identity).
    pub root: Certificate,
    /// Per-terminal deadline (default 60 s).
    pub deadline: Duration,
    /// Production lot recorded with the terminal, if any.
    pub lot: Option<String>,
}

/// A terminal that ended well.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provisioned {
    /// Terminal serial.
    pub serial: String,
    /// Its certificate's serial (upper-case hex).
    pub certificate_serial: String,
    /// `false` when the device was already locked with its certificate: reported, not redone.
    pub newly: bool,
}

/// Progress callbacks: a step starts, a step ends.
pub trait Progress {
    /// `step` begins (on terminal `serial`, once known).
    fn started(&mut self, step: Step, serial: Option<&str>);
    /// `step` finished after `took`.
    fn finished(&mut self, step: Step, took: Duration);
}

/// Runs the whole workflow for the terminal on `link`.
pub fn provision<T: Transport>(
    link: &mut HostLink<T>,
    ca: &dyn CaApi,
    cfg: &StationConfig,
    progress: &mut dyn Progress,
) -> Result<Provisioned, StationError> {
    let start = Instant::now();
    let deadline = start + cfg.deadline;
    link.set_deadline(Some(deadline));
    let result = Run { link, ca, cfg, progress, deadline, serial: None }.run(start);
    link.set_deadline(None);
    result
}

struct Run<'a, T: Transport> {
    link: &'a mut HostLink<T>,
    ca: &'a dyn CaApi,
    cfg: &'a StationConfig,
    progress: &'a mut dyn Progress,
    deadline: Instant,
    serial: Option<String>,
}

impl<T: Transport> Run<'_, T> {
    fn step<R>(&mut self, step: Step, f: impl FnOnce(&mut Self) -> Result<R, StationError>) -> Result<R, StationError> {
        if Instant::now() >= self.deadline {
            return Err(StationError::Deadline { step, deadline: self.cfg.deadline });
        }
        self.progress.started(step, self.serial.as_deref());
        let t = Instant::now();
        let r = f(self).map_err(|e| match e {
            StationError::Link { source: LinkError::Deadline { .. }, .. } => {
                StationError::Deadline { step, deadline: self.cfg.deadline }
            }
            e => e,
        })?;
        if Instant::now() > self.deadline {
            return Err(StationError::Deadline { step, deadline: self.cfg.deadline });
        }
        self.progress.finished(step, t.elapsed());
        Ok(r)
    }

    /// What is left of the deadline (a CA call must not outlive it).
    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    fn call(&mut self, step: Step, req: &Request) -> Result<Response, StationError> {
        match self.link.call(req) {
            Ok(Response::Error { code, detail }) => {
                Err(StationError::Link { step, source: LinkError::Device { command: req.name(), code, detail } })
            }
            Ok(r) => Ok(r),
            Err(source) => Err(StationError::Link { step, source }),
        }
    }

    fn run(mut self, start: Instant) -> Result<Provisioned, StationError> {
        let info = self.step(Step::Hello, |r| {
            match r.call(Step::Hello, &Request::Hello { max_version: device_protocol::PROTOCOL_VERSION })? {
                Response::Hello(info) => Ok(info),
                other => Err(StationError::Unexpected { step: Step::Hello, got: other.name() }),
            }
        })?;
        self.serial = Some(info.serial.clone());
        match info.state {
            SeState::Tampered => return Err(StationError::Tampered),
            SeState::Locked => return self.already_locked(&info),
            SeState::Provisioned => {
                // Committed before a crash: finish from the read-back on.
                let chain = self.step(Step::ReadBack, |r| r.read_back())?;
                let leaf = self.leaf_of(&chain, Step::ReadBack)?;
                let cert_serial = cert_serial(&leaf);
                return self.finish(&info, &leaf, &cert_serial, start, true);
            }
            SeState::Blank => {
                self.step(Step::GenKey, |r| match r.call(Step::GenKey, &Request::GenKey)? {
                    Response::Key { .. } => Ok(()),
                    other => Err(StationError::Unexpected { step: Step::GenKey, got: other.name() }),
                })?;
            }
            SeState::KeyGenerated | SeState::ChainPending => {}
        }
        let serial = info.serial.clone();
        let csr = self.step(Step::GetCsr, |r| {
            let req = Request::GetCsr { common_name: serial.clone(), serial_number: serial.clone() };
            let der = match r.call(Step::GetCsr, &req)? {
                Response::Csr { der } => der,
                other => return Err(StationError::Unexpected { step: Step::GetCsr, got: other.name() }),
            };
            let verified = pki::verify_csr(&der, &SignerId::default())
                .map_err(|e| StationError::Rejected { step: Step::GetCsr, why: format!("the device's CSR: {e}") })?;
            Ok((der, verified.spki()))
        })?;
        let (csr_der, spki) = csr;
        let issued = self.step(Step::Issue, |r| {
            let req = v1::IssueTerminalCertificateRequest {
                request_id: request_id_for(&serial, &spki),
                terminal_serial: serial.clone(),
                class: i32::from(info.class),
                model: info.model.clone(),
                csr_der: csr_der.clone(),
                reissue: false,
                lot: r.cfg.lot.clone().unwrap_or_default(),
            };
            r.ca.issue(req, r.left()).map_err(|source| StationError::Ca { step: Step::Issue, source })
        })?;
        let (leaf, issuing) = self.step(Step::VerifyChain, |r| r.verify_issued(&issued, &serial, &spki))?;
        self.step(Step::PutRoot, |r| {
            let der = r.cfg.root.to_der().map_err(|e| rejected(Step::PutRoot, e))?;
            match r.call(Step::PutRoot, &Request::PutRoot { der })? {
                Response::Ok => Ok(()),
                other => Err(StationError::Unexpected { step: Step::PutRoot, got: other.name() }),
            }
        })?;
        let mut chain = issued.certificate_der.clone();
        chain.extend(issuing.to_der().map_err(|e| rejected(Step::PutChain, e))?);
        self.step(Step::PutChain, |r| r.put_chain(&chain))?;
        self.step(Step::Commit, |r| match r.call(Step::Commit, &Request::Commit)? {
            Response::Committed => Ok(()),
            other => Err(StationError::Unexpected { step: Step::Commit, got: other.name() }),
        })?;
        let back = self.step(Step::ReadBack, |r| r.read_back())?;
        if back != chain {
            return Err(StationError::Rejected {
                step: Step::ReadBack,
                why: format!("read back {} bytes that differ from the {} written", back.len(), chain.len()),
            });
        }
        self.finish(&info, &leaf, &issued.certificate_serial, start, true)
    }

    /// CHALLENGE, LOCK, Confirm.
    fn finish(
        &mut self,
        info: &device_protocol::DeviceInfo,
        leaf: &Certificate,
        cert_serial: &str,
        start: Instant,
        newly: bool,
    ) -> Result<Provisioned, StationError> {
        self.step(Step::Challenge, |r| r.challenge(leaf))?;
        self.step(Step::Lock, |r| match r.call(Step::Lock, &Request::Lock)? {
            Response::Ok => Ok(()),
            other => Err(StationError::Unexpected { step: Step::Lock, got: other.name() }),
        })?;
        self.confirm(info, cert_serial, start)?;
        Ok(Provisioned { serial: info.serial.clone(), certificate_serial: cert_serial.to_owned(), newly })
    }

    fn confirm(
        &mut self,
        info: &device_protocol::DeviceInfo,
        cert_serial: &str,
        start: Instant,
    ) -> Result<(), StationError> {
        self.step(Step::Confirm, |r| {
            let req = v1::ConfirmProvisioningRequest {
                request_id: proto::client::request_id(),
                terminal_serial: info.serial.clone(),
                certificate_serial: cert_serial.to_owned(),
                duration_ms: start.elapsed().as_millis() as u64,
                firmware_version: info.firmware.clone(),
            };
            r.ca.confirm(req, r.left()).map_err(|source| StationError::Ca { step: Step::Confirm, source })
        })
    }

    /// A locked device: check what it holds, make sure the CA knows, report — write nothing.
    fn already_locked(&mut self, info: &device_protocol::DeviceInfo) -> Result<Provisioned, StationError> {
        let chain = self.step(Step::ReadBack, |r| r.read_back())?;
        let leaf = self.leaf_of(&chain, Step::ReadBack)?;
        self.step(Step::Challenge, |r| r.challenge(&leaf))?;
        let cert_serial = cert_serial(&leaf);
        self.confirm(info, &cert_serial, Instant::now())?;
        Ok(Provisioned { serial: info.serial.clone(), certificate_serial: cert_serial, newly: false })
    }

    /// The certificate the device holds, checked against the pinned root and its serial.
    fn leaf_of(&self, chain: &[u8], step: Step) -> Result<Certificate, StationError> {
        let certs = pki::terminal::split_chain(chain).map_err(|e| rejected(step, e))?;
        let (leaf, rest) = certs.split_first().ok_or_else(|| rejected(step, "empty chain"))?;
        pki::validate_chain(leaf, rest, &self.cfg.root, SystemTime::now(), &SignerId::default())
            .map_err(|e| rejected(step, format!("the device's chain: {e}")))?;
        let serial = self.serial.clone().unwrap_or_default();
        let key = leaf.tbs_certificate().subject_public_key_info().clone();
        pki::terminal::check_binding(leaf, &serial, &key).map_err(|e| rejected(step, e))?;
        Ok(leaf.clone())
    }

    fn verify_issued(
        &self,
        issued: &v1::IssueTerminalCertificateResponse,
        serial: &str,
        spki: &spki::SubjectPublicKeyInfoOwned,
    ) -> Result<(Certificate, Certificate), StationError> {
        let s = Step::VerifyChain;
        let leaf = Certificate::from_der(&issued.certificate_der).map_err(|e| rejected(s, e))?;
        let intermediates = issued
            .chain_der
            .iter()
            .map(|d| Certificate::from_der(d).map_err(|e| rejected(s, e)))
            .collect::<Result<Vec<_>, _>>()?;
        let path = pki::validate_chain(&leaf, &intermediates, &self.cfg.root, SystemTime::now(), &SignerId::default())
            .map_err(|e| rejected(s, format!("the CA's chain does not lead to the pinned root: {e}")))?;
        pki::terminal::check_binding(&leaf, serial, spki).map_err(|e| rejected(s, e))?;
        let issuing = path.get(1).map(|c| (*c).clone()).ok_or_else(|| rejected(s, "no issuing CA in the chain"))?;
        Ok((leaf, issuing))
    }

    fn put_chain(&mut self, chain: &[u8]) -> Result<(), StationError> {
        let total_len = chain.len() as u32;
        let mut offset = 0usize;
        for chunk in chain.chunks(device_protocol::MAX_CHAIN_CHUNK) {
            let req = Request::PutChain { total_len, offset: offset as u32, chunk: chunk.to_vec() };
            offset += chunk.len();
            match self.call(Step::PutChain, &req)? {
                Response::ChainProgress { received } if received as usize == offset => {}
                Response::ChainProgress { received } => {
                    return Err(rejected(Step::PutChain, format!("device has {received} bytes, sent {offset}")));
                }
                other => return Err(StationError::Unexpected { step: Step::PutChain, got: other.name() }),
            }
        }
        Ok(())
    }

    fn read_back(&mut self) -> Result<Vec<u8>, StationError> {
        let mut out = Vec::new();
        loop {
            match self.call(Step::ReadBack, &Request::ReadCert { offset: out.len() as u32 })? {
                Response::CertChunk { total_len, offset, chunk } => {
                    if offset as usize != out.len() || total_len > device_protocol::MAX_CHAIN_LEN {
                        return Err(rejected(Step::ReadBack, "the device's read-back is out of order"));
                    }
                    let done = chunk.is_empty() || out.len() + chunk.len() >= total_len as usize;
                    out.extend(chunk);
                    if done {
                        return Ok(out);
                    }
                }
                other => return Err(StationError::Unexpected { step: Step::ReadBack, got: other.name() }),
            }
        }
    }

    fn challenge(&mut self, leaf: &Certificate) -> Result<(), StationError> {
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).map_err(|e| rejected(Step::Challenge, e))?;
        let sig = match self.call(Step::Challenge, &Request::Challenge { nonce })? {
            Response::Signature { der } => der,
            other => return Err(StationError::Unexpected { step: Step::Challenge, got: other.name() }),
        };
        let key = pki::Sm2PublicKey::from_spki(leaf.tbs_certificate().subject_public_key_info())
            .map_err(|e| rejected(Step::Challenge, e))?;
        key.verify(&SignerId::default(), &challenge_message(&nonce), &sig)
            .map_err(|_| rejected(Step::Challenge, "the device's signature does not verify with its certificate's key"))
    }
}

fn rejected(step: Step, why: impl std::fmt::Display) -> StationError {
    StationError::Rejected { step, why: why.to_string() }
}

fn cert_serial(leaf: &Certificate) -> String {
    pki::CertSerial::of(leaf).map(|s| s.to_hex()).unwrap_or_default()
}

/// The request id a station uses for a terminal and key: the same on every retry from any station,
/// so the CA answers a retry with the certificate it already issued.
pub fn request_id_for(serial: &str, spki: &spki::SubjectPublicKeyInfoOwned) -> String {
    let mut h = sm3::Sm3::new();
    h.update(serial.as_bytes());
    h.update([0]);
    h.update(spki.to_der().unwrap_or_default());
    format!("prov-{}", &hex::encode(h.finalize())[..40])
}

/// Whether `e` says the device refused with `code`.
pub fn device_refused(e: &StationError, code: ErrorCode) -> bool {
    matches!(e, StationError::Link { source: LinkError::Device { code: c, .. }, .. } if *c == code)
}
