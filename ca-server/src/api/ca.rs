//! The `hsca.v1.CertificateAuthority` service.

use std::time::SystemTime;

use pki::SubjectVars;
use prost::Message;
use proto::status;
use proto::v1::{self, Reason};
use registry::{CertRecord, CertSubject, IssueOutcome, Precheck, TerminalRecord, TerminalState};
use sm3::Digest;
use tonic::{Code, Request, Response, Status};

use super::convert::{
    bad_request, class_name, der_of, issuer_status, normal_serial, ra_status, record_of_tbs, registry_status,
    status_msg,
};
use super::{Ca, Incoming, Services, blocking, computing};
use crate::auth::Caller;
use crate::issuer::Issuer;
use crate::ra::{self, TerminalRequest};
use crate::records::now_ms;

impl Ca {
    /// `IssueTerminalCertificate`, up to its record queued for the next registry commit: the
    /// blocking thread that signs is not parked for the commit (the handler awaits it).
    fn issue_terminal_start(&self, req: Incoming<v1::IssueTerminalCertificateRequest>) -> Result<Issuing, Status> {
        let caller = self.authenticate(&req, "/hsca.v1.CertificateAuthority/IssueTerminalCertificate")?;
        let m = &req.msg;
        self.issue_terminal_for(&caller, m).map_err(|s| self.refuse(&caller, "issue", &m.terminal_serial, s))
    }

    /// The common outcome once committed — a new certificate, nothing superseded, no activation
    /// hold — needs no registry call, so it is answered where it was awaited; everything else
    /// goes through [`Self::issue_terminal_finish`] on a blocking thread.
    fn answers_at_once(&self, outcome: &Result<IssueOutcome, registry::RegistryError>) -> bool {
        !self.hold_until_activation && matches!(outcome, Ok(IssueOutcome::Issued { superseded: None }))
    }

    /// The answer for a certificate recorded as new.
    fn issued(&self, r: Recorded, superseded: Option<String>) -> v1::IssueTerminalCertificateResponse {
        self.metrics.issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        v1::IssueTerminalCertificateResponse {
            certificate_der: r.der,
            chain_der: self.chain(),
            certificate_serial: r.cert_serial,
            replayed: false,
            superseded_serial: superseded.unwrap_or_default(),
        }
    }

    /// The answer with the certificate an earlier call with the same request id got.
    fn replayed(&self, certificate_serial: String, der: Vec<u8>) -> v1::IssueTerminalCertificateResponse {
        v1::IssueTerminalCertificateResponse {
            certificate_der: der,
            chain_der: self.chain(),
            certificate_serial,
            replayed: true,
            superseded_serial: String::new(),
        }
    }

    /// What follows the commit of a recorded issuance: CRL and OCSP news of a hold or of a
    /// superseded certificate, the answer to a concurrent call with the same id that committed
    /// first, the audited refusal of what the registry refused.
    fn issue_terminal_finish(
        &self,
        r: Recorded,
        outcome: Result<IssueOutcome, registry::RegistryError>,
    ) -> Result<v1::IssueTerminalCertificateResponse, Status> {
        match self.registry.answer_reused(outcome, &r.request_id, &r.request_hash) {
            Ok(IssueOutcome::Issued { superseded }) => {
                if self.hold_until_activation {
                    self.revocation_changed(&r.cert_serial);
                }
                if let Some(old) = &superseded {
                    self.revocation_changed(old);
                }
                Ok(self.issued(r, superseded))
            }
            Ok(IssueOutcome::Replayed { cert, der }) => Ok(self.replayed(cert.serial, der)),
            Err(e) => Err(self.refuse(&r.caller, "issue", &r.target, registry_status(&e))),
        }
    }

    fn issue_terminal_for(&self, caller: &Caller, m: &v1::IssueTerminalCertificateRequest) -> Result<Issuing, Status> {
        if m.request_id.is_empty() || m.request_id.len() > 128 {
            return Err(bad_request("request_id must be 1 to 128 characters"));
        }
        // Same id, same content → same answer: the content hash leaves the id out.
        // The lot is left out too: it only labels a terminal when it is first registered, and a
        // station re-running with another --lot must still get its certificate back.
        let content =
            v1::IssueTerminalCertificateRequest { request_id: String::new(), lot: String::new(), ..m.clone() }
                .encode_to_vec();
        let request_hash = hex::encode(sm3::Sm3::digest(&content));
        let class = class_name(m.class);
        let request = TerminalRequest { serial: &m.terminal_serial, class, csr: &m.csr_der };
        // One read for the replay check and the life-cycle rules (so a refusal signs nothing;
        // the registry checks them again inside the transaction that records). The replay is
        // answered first; the life-cycle verdict waits until the RA's checks passed, so the
        // refusals come in the same order as when they were two reads.
        let names = ra::terminal_names(&self.policy, &request);
        let asked = names.as_ref().ok().map(|(serial, class)| registry::StationIssue {
            terminal: serial.as_str(),
            class: class.as_str(),
            station: &caller.name,
            reissue: m.reissue,
        });
        let precheck = self
            .registry
            .issue_precheck(&m.request_id, &request_hash, asked.as_ref(), self.require_registration)
            .map_err(|e| registry_status(&e))?;
        let station_issue = match precheck {
            Precheck::Replayed { cert, der } => {
                self.metrics.replays.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(Issuing::Answered(self.replayed(cert.serial, der)));
            }
            Precheck::New { station_issue } => station_issue,
        };
        let (serial, class) = names.map_err(ra_status)?;
        let approved =
            ra::approve_named_terminal(&self.policy, &caller.name, &caller.manufacturers, serial, class, &m.csr_der)
                .map_err(ra_status)?;
        let serial = approved.serial.as_str().to_owned();
        let model = if m.model.is_empty() {
            approved.serial.field("model").unwrap_or_default().to_owned()
        } else {
            m.model.clone()
        };
        // Asked for in the read above whenever the names parsed, and they did.
        if let Some(verdict) = station_issue {
            verdict.map_err(|e| registry_status(&e))?;
        }
        let terminal = TerminalRecord {
            serial: serial.clone(),
            class: approved.class.as_str().into(),
            manufacturer: approved.serial.manufacturer().into(),
            model,
            lot: (!m.lot.is_empty()).then(|| m.lot.clone()),
            state: TerminalState::Registered,
            active_cert: None,
            updated_ms: now_ms(),
        };
        terminal.check_field_lengths().map_err(|e| registry_status(&e))?;
        let (cert_record, der) = self.sign_terminal(&terminal, approved.csr.public_key(), &m.request_id)?;
        let cert_serial = cert_record.serial.clone();
        let issue = registry::TerminalIssue {
            request_id: m.request_id.clone(),
            request_hash,
            terminal,
            register_if_missing: !self.require_registration,
            reissue: m.reissue,
            station: caller.name.clone(),
            cert: cert_record,
            der: der.clone(),
        };
        let action = if m.reissue { "reissue" } else { "issue" };
        let event = Self::event(caller, action, &serial, format!("certificate {cert_serial}"));
        let pending = self
            .registry
            .queue_terminal_issue_held(&issue, self.hold_until_activation, &event)
            .map_err(|e| registry_status(&e))?;
        let recorded = Recorded {
            caller: caller.clone(),
            target: m.terminal_serial.clone(),
            cert_serial,
            der,
            request_id: issue.request_id,
            request_hash: issue.request_hash,
        };
        Ok(Issuing::Recording(pending, recorded))
    }

    /// Signs a certificate for terminal `t`'s new `key` (profile `terminal`, the next CRL
    /// partition) and makes its record; recording it is the caller's.
    pub(super) fn sign_terminal(
        &self,
        t: &TerminalRecord,
        key: &pki::Sm2PublicKey,
        request_id: &str,
    ) -> Result<(CertRecord, Vec<u8>), Status> {
        let profile = self
            .policy
            .profile("terminal")
            .ok_or_else(|| status(Code::Internal, Reason::Internal, "no terminal profile"))?;
        let partition = self.crl_partition()?;
        let vars = SubjectVars {
            serial: Some(t.serial.clone()),
            class: Some(t.class.clone()),
            manufacturer: Some(t.manufacturer.clone()),
            model: Some(t.model.clone()),
            name: None,
            crl_partition: Some(partition),
        };
        let (tbs, der) = Issuer::new(self.signer.as_ref(), &self.issuer_info)
            .issue_tbs_der(profile, &vars, key, SystemTime::now())
            .map_err(|e| issuer_status(&e))?;
        let mut rec = record_of_tbs(&tbs, CertSubject::Terminal { serial: t.serial.clone() }, "terminal", request_id)?;
        rec.crl_partition = Some(partition);
        Ok((rec, der))
    }

    /// `ConfirmProvisioning`.
    pub fn confirm(
        &self,
        req: Incoming<v1::ConfirmProvisioningRequest>,
    ) -> Result<v1::ConfirmProvisioningResponse, Status> {
        let caller = self.authenticate(&req, "/hsca.v1.CertificateAuthority/ConfirmProvisioning")?;
        let m = &req.msg;
        let prov = registry::Provisioning {
            station: caller.name.clone(),
            duration_ms: m.duration_ms,
            firmware: m.firmware_version.clone(),
            at_ms: now_ms(),
        };
        let event = Self::event(
            &caller,
            "confirm",
            &m.terminal_serial,
            format!("certificate {} in {} ms", m.certificate_serial, m.duration_ms),
        );
        self.registry
            .confirm_provisioning(&m.terminal_serial, &m.certificate_serial, &prov, &event)
            .map_err(|e| self.refuse(&caller, "confirm", &m.terminal_serial, registry_status(&e)))?;
        Ok(v1::ConfirmProvisioningResponse {})
    }

    fn cert_info(&self, serial: &str) -> Result<v1::CertificateInfo, Status> {
        let (rec, der) = self
            .registry
            .certificate(serial)
            .map_err(|e| registry_status(&e))?
            .ok_or_else(|| status(Code::NotFound, Reason::NotFound, format!("certificate {serial} not found")))?;
        let (terminal_serial, principal) = match &rec.subject {
            CertSubject::Terminal { serial } => (serial.clone(), String::new()),
            CertSubject::Principal { name } => (String::new(), name.clone()),
        };
        Ok(v1::CertificateInfo {
            certificate_der: der,
            certificate_serial: rec.serial,
            terminal_serial,
            principal,
            status: Some(status_msg(&rec.status)),
            profile: rec.profile,
        })
    }

    /// `GetCertificate`.
    pub fn get_certificate(&self, req: Incoming<v1::GetCertificateRequest>) -> Result<v1::CertificateInfo, Status> {
        self.authenticate(&req, "/hsca.v1.CertificateAuthority/GetCertificate")?;
        self.cert_info(&normal_serial(&req.msg.certificate_serial)?)
    }

    /// `GetCertificateStatus`: `UNKNOWN` for serials we never issued.
    pub fn get_status(&self, req: Incoming<v1::GetCertificateStatusRequest>) -> Result<v1::CertificateStatus, Status> {
        self.authenticate(&req, "/hsca.v1.CertificateAuthority/GetCertificateStatus")?;
        match self
            .registry
            .certificate(&normal_serial(&req.msg.certificate_serial)?)
            .map_err(|e| registry_status(&e))?
        {
            Some((rec, _)) => Ok(status_msg(&rec.status)),
            None => {
                Ok(v1::CertificateStatus { state: v1::certificate_status::State::Unknown as i32, ..Default::default() })
            }
        }
    }

    /// `GetCaChain`.
    pub fn get_chain(&self, req: Incoming<v1::GetCaChainRequest>) -> Result<v1::CaChain, Status> {
        self.authenticate(&req, "/hsca.v1.CertificateAuthority/GetCaChain")?;
        Ok(v1::CaChain { issuing_der: der_of(&self.trust.issuing)?, root_der: der_of(&self.trust.root)? })
    }
}

/// An issuance signed and checked, up to its registry record.
enum Issuing {
    /// Answered without writing (a replay).
    Answered(v1::IssueTerminalCertificateResponse),
    /// Its record queued: the answer waits for the commit.
    Recording(registry::PendingWrite<IssueOutcome>, Recorded),
}

/// What the answer to a queued issuance needs once its record is committed.
struct Recorded {
    caller: Caller,
    target: String,
    cert_serial: String,
    der: Vec<u8>,
    request_id: String,
    request_hash: String,
}

handlers!(v1::certificate_authority_server::CertificateAuthority;
    confirm_provisioning(v1::ConfirmProvisioningRequest) -> v1::ConfirmProvisioningResponse => confirm;
    get_certificate(v1::GetCertificateRequest) -> v1::CertificateInfo => get_certificate;
    get_certificate_status(v1::GetCertificateStatusRequest) -> v1::CertificateStatus => get_status;
    get_ca_chain(v1::GetCaChainRequest) -> v1::CaChain => get_chain;
    ;
    // Signing runs on a thread of the CPU pool (or a blocking one); the commit is awaited here,
    // not by that thread. The call is a task of its own, so what follows the commit (CRL and
    // OCSP news of a hold or of a superseded certificate) runs even if the caller hangs up.
    async fn issue_terminal_certificate(
        &self,
        req: Request<v1::IssueTerminalCertificateRequest>,
    ) -> Result<Response<v1::IssueTerminalCertificateResponse>, Status> {
        let ca = self.0.clone();
        let incoming = Incoming::from(req);
        let answered = tokio::spawn(async move {
            let starting = ca.clone();
            let (pending, recorded) = match computing(&ca, move || starting.issue_terminal_start(incoming)).await?.into_inner() {
                Issuing::Answered(answer) => return Ok(Response::new(answer)),
                Issuing::Recording(pending, recorded) => (pending, recorded),
            };
            let outcome = pending.await;
            if ca.answers_at_once(&outcome) {
                return Ok(Response::new(ca.issued(recorded, None)));
            }
            blocking(move || ca.issue_terminal_finish(recorded, outcome)).await
        });
        answered.await.map_err(|e| status(Code::Internal, Reason::Internal, e.to_string()))?
    }
);
