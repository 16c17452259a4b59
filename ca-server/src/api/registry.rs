//! The `hsca.v1.Registry` service.

use pki::TerminalClass;
use proto::status;
use proto::v1::{self, Reason};
use registry::{TerminalRecord, TerminalState};
use tonic::{Code, Request, Response, Status};

use super::convert::{bad_request, class_name, ra_status, registry_status, terminal_msg};
use super::{Ca, Incoming, Services, blocking};
use crate::ra;
use crate::records::now_ms;

impl Ca {
    /// `RegisterTerminal`.
    pub fn register(&self, req: Incoming<v1::RegisterTerminalRequest>) -> Result<v1::Terminal, Status> {
        let caller = self.authenticate(&req, "/hsca.v1.Registry/RegisterTerminal")?;
        let m = &req.msg;
        let result = (|| {
            let serial = self.policy.serial_rule().parse(&m.serial).map_err(|e| ra_status(ra::Refusal::Serial(e)))?;
            let class: TerminalClass = class_name(m.class).parse().map_err(|e: pki::serial::UnknownClass| {
                status(Code::InvalidArgument, Reason::UnknownClass, e.to_string())
            })?;
            let t = TerminalRecord {
                serial: serial.as_str().into(),
                class: class.as_str().into(),
                manufacturer: serial.manufacturer().into(),
                model: if m.model.is_empty() {
                    serial.field("model").unwrap_or_default().into()
                } else {
                    m.model.clone()
                },
                lot: (!m.lot.is_empty()).then(|| m.lot.clone()),
                state: TerminalState::Registered,
                active_cert: None,
                updated_ms: now_ms(),
            };
            self.registry
                .register_terminal(&t, &Self::event(&caller, "register", &t.serial, format!("class {class}")))
                .map_err(|e| registry_status(&e))?;
            Ok(terminal_msg(&t))
        })();
        result.map_err(|s| self.refuse(&caller, "register", &m.serial, s))
    }

    /// `GetTerminal`.
    pub fn get_terminal(&self, req: Incoming<v1::GetTerminalRequest>) -> Result<v1::Terminal, Status> {
        let caller = self.authenticate(&req, "/hsca.v1.Registry/GetTerminal")?;
        let serial = &req.msg.serial;
        let result = (|| {
            // A station learns nothing about other manufacturers' terminals, not even whether
            // they exist: the check is on the serial asked for, before the lookup.
            if caller.role == "station" {
                let parsed = self.policy.serial_rule().parse(serial).map_err(|e| ra_status(ra::Refusal::Serial(e)))?;
                ra::may_see_terminal(&caller.role, &caller.name, &caller.manufacturers, parsed.manufacturer())
                    .map_err(ra_status)?;
            }
            let t = self.registry.terminal(serial).map_err(|e| registry_status(&e))?;
            t.map(|t| terminal_msg(&t))
                .ok_or_else(|| status(Code::NotFound, Reason::NotFound, format!("terminal {serial} not found")))
        })();
        result.map_err(|s| match proto::reason(&s) {
            Some(Reason::NotFound) => s,
            _ => self.refuse(&caller, "get_terminal", serial, s),
        })
    }

    /// `ListTerminals`.
    pub fn list_terminals(&self, req: Incoming<v1::ListTerminalsRequest>) -> Result<v1::ListTerminalsResponse, Status> {
        self.authenticate(&req, "/hsca.v1.Registry/ListTerminals")?;
        let m = &req.msg;
        let state = match v1::TerminalState::try_from(m.state) {
            Ok(v1::TerminalState::Registered) => Some(TerminalState::Registered),
            Ok(v1::TerminalState::Issued) => Some(TerminalState::Issued),
            Ok(v1::TerminalState::Provisioned) => Some(TerminalState::Provisioned),
            Ok(v1::TerminalState::Active) => Some(TerminalState::Active),
            Ok(v1::TerminalState::Revoked) => Some(TerminalState::Revoked),
            _ => None,
        };
        let nonempty = |s: &String| (!s.is_empty()).then(|| s.clone());
        let filter = registry::TerminalFilter {
            state,
            class: Some(class_name(m.class)).filter(|c| !c.is_empty()).map(str::to_owned),
            manufacturer: nonempty(&m.manufacturer),
            lot: nonempty(&m.lot),
        };
        let size = match m.page_size {
            0 => 100,
            n => n.min(1000),
        } as usize;
        let (page, next) = self
            .registry
            .list_terminals(&filter, Some(m.page_token.as_str()).filter(|t| !t.is_empty()), size)
            .map_err(|e| registry_status(&e))?;
        Ok(v1::ListTerminalsResponse {
            terminals: page.iter().map(terminal_msg).collect(),
            next_page_token: next.unwrap_or_default(),
        })
    }

    /// `CountTerminals`: the registry's running counts (a few rows, whatever the fleet's size;
    /// read-only, not audited, like the other reads).
    pub fn count_terminals(&self, req: Incoming<v1::CountTerminalsRequest>) -> Result<v1::TerminalCounts, Status> {
        self.authenticate(&req, "/hsca.v1.Registry/CountTerminals")?;
        let c = self.registry.terminal_counts().map_err(|e| registry_status(&e))?;
        let hourly = match req.msg.hourly_since_hour {
            0 => Vec::new(),
            // A bounded answer whatever the caller asks: a few stations × 2 kinds per hour.
            since => {
                let now_hour = now_ms() / registry::HOUR_MS;
                let since = since.max(now_hour.saturating_sub(HOURLY_COUNTS_MAX_HOURS));
                self.registry.hourly_counts(since).map_err(|e| registry_status(&e))?
            }
        };
        Ok(v1::TerminalCounts {
            total: c.total,
            by_state: c.by_state.into_iter().collect(),
            by_class: c.by_class.into_iter().collect(),
            by_manufacturer: c.by_manufacturer.into_iter().collect(),
            hourly: hourly
                .into_iter()
                .map(|h| v1::HourlyCount { hour: h.hour, station: h.station, kind: h.kind.as_str().into(), n: h.n })
                .collect(),
        })
    }

    /// `NewActivationChallenge`: a fresh, single-use challenge for the terminal's active
    /// certificate, stored (shared by every instance) until used or expired.
    pub fn new_activation_challenge(
        &self,
        req: Incoming<v1::NewActivationChallengeRequest>,
    ) -> Result<v1::ActivationChallenge, Status> {
        let caller = self.authenticate(&req, "/hsca.v1.Registry/NewActivationChallenge")?;
        let serial = &req.msg.serial;
        let result = (|| {
            let t = self
                .registry
                .terminal(serial)
                .map_err(|e| registry_status(&e))?
                .ok_or_else(|| status(Code::NotFound, Reason::NotFound, format!("terminal {serial} not found")))?;
            let certificate = t.active_cert.ok_or_else(|| {
                status(Code::FailedPrecondition, Reason::WrongState, format!("terminal {serial} has no certificate"))
            })?;
            let mut challenge = [0u8; proto::activation::CHALLENGE_LEN];
            getrandom::fill(&mut challenge)
                .map_err(|e| status(Code::Internal, Reason::Internal, format!("random: {e}")))?;
            let issued_ms = now_ms();
            let rec = registry::ChallengeRecord {
                terminal: serial.clone(),
                certificate: certificate.clone(),
                operator: caller.name.clone(),
                issued_ms,
                expires_ms: issued_ms + self.activation_challenge_ms,
            };
            let detail = format!("for certificate {certificate}, expires at {}", rec.expires_ms);
            self.registry
                .new_activation_challenge_within(
                    &challenge,
                    &rec,
                    self.activation_challenges_per_operator,
                    &Self::event(&caller, "activation_challenge", serial, detail),
                )
                .map_err(|e| registry_status(&e))?;
            Ok(v1::ActivationChallenge {
                challenge: challenge.to_vec(),
                certificate_serial: certificate,
                expires_ms: rec.expires_ms,
            })
        })();
        result.map_err(|s| {
            if proto::reason(&s) == Some(Reason::ChallengeLimit) {
                // Audited in aggregate like refused authentications: past the limit, no write each.
                self.refusals.count(
                    &caller.name,
                    "/hsca.v1.Registry/NewActivationChallenge",
                    "CHALLENGE_LIMIT",
                    s.message(),
                );
                return s;
            }
            self.refuse(&caller, "activation_challenge", serial, s)
        })
    }

    /// `ActivateTerminal`: proof of presence (an operator's request carrying the statement the
    /// terminal's SE signed over a fresh challenge), or an administrator's manual override.
    pub fn activate(&self, req: Incoming<v1::ActivateTerminalRequest>) -> Result<v1::Activation, Status> {
        let caller = self.authenticate(&req, "/hsca.v1.Registry/ActivateTerminal")?;
        let m = &req.msg;
        let action = if m.manual { "activate_manual" } else { "activate" };
        let result = (|| {
            let valid = (-90.0..=90.0).contains(&m.latitude)
                && (-180.0..=180.0).contains(&m.longitude)
                && !m.institution.trim().is_empty();
            if !valid {
                return Err(bad_request("institution is required and latitude/longitude must be valid degrees"));
            }
            let mut a = registry::ActivationRecord {
                terminal: m.serial.clone(),
                operator: caller.name.clone(),
                institution: m.institution.clone(),
                latitude: m.latitude,
                longitude: m.longitude,
                at_ms: now_ms(),
                method: registry::ActivationMethod::Manual,
                certificate: None,
            };
            let done = if m.manual {
                if caller.role != "admin" {
                    return Err(status(
                        Code::PermissionDenied,
                        Reason::RoleForbidden,
                        "the manual activation override is an administrator's",
                    ));
                }
                if !m.statement.is_empty() || !m.terminal_signature.is_empty() {
                    return Err(bad_request("a manual activation carries no terminal statement"));
                }
                let detail = format!("manual override at {} ({}, {})", a.institution, a.latitude, a.longitude);
                self.registry.activate(&a, &Self::event(&caller, action, &m.serial, detail))
            } else {
                if caller.role != "operator" {
                    return Err(status(
                        Code::PermissionDenied,
                        Reason::RoleForbidden,
                        "a proof-of-presence activation is an operator's; administrators use the manual override",
                    ));
                }
                let (challenge, certificate) = self.check_presence(m)?;
                a.method = registry::ActivationMethod::Presence;
                a.certificate = Some(certificate.clone());
                let detail = format!(
                    "proof of presence at {} ({}, {}) under certificate {certificate}",
                    a.institution, a.latitude, a.longitude
                );
                self.registry.activate_with_presence(&challenge, &a, &Self::event(&caller, action, &m.serial, detail))
            };
            let done = done.map_err(|e| registry_status(&e))?;
            if let Some(released) = &done.released {
                self.revocation_changed(released);
            }
            Ok(activation_msg(a))
        })();
        result.map_err(|s| self.refuse(&caller, action, &m.serial, s))
    }

    /// Checks a proof-of-presence request before anything is written: the statement parses and
    /// binds this request (terminal, institution, position) to a challenge handed out for this
    /// terminal, unexpired, and to the terminal's active certificate, whose key signed it.
    /// Returns the challenge and the certificate serial. The registry checks the challenge again
    /// (and uses it up) in the transaction that records the activation.
    fn check_presence(&self, m: &v1::ActivateTerminalRequest) -> Result<(Vec<u8>, String), Status> {
        if m.statement.is_empty() || m.terminal_signature.is_empty() {
            return Err(bad_request(
                "statement and terminal_signature are required (the manual override is `manual`, administrators only)",
            ));
        }
        let st = proto::activation::decode(&m.statement)
            .filter(|s| s.challenge.len() == proto::activation::CHALLENGE_LEN)
            .ok_or_else(|| bad_request("statement is not an activation statement with a 32-byte challenge"))?;
        let mismatch = |what: &str| {
            status(Code::PermissionDenied, Reason::StatementMismatch, format!("the signed statement names {what}"))
        };
        let ch = self
            .registry
            .activation_challenge(&st.challenge)
            .map_err(|e| registry_status(&e))?
            .filter(|c| c.terminal == m.serial)
            .ok_or_else(|| registry_status(&registry::RegistryError::ChallengeUnknown))?;
        if now_ms() > ch.expires_ms {
            return Err(registry_status(&registry::RegistryError::ChallengeExpired));
        }
        if st.terminal_serial != m.serial {
            return Err(mismatch("another terminal"));
        }
        if st.certificate_serial != ch.certificate {
            return Err(mismatch("another certificate than the challenge's"));
        }
        // Bit-for-bit: the SE signed exactly these values.
        if st.institution != m.institution
            || st.latitude.to_bits() != m.latitude.to_bits()
            || st.longitude.to_bits() != m.longitude.to_bits()
        {
            return Err(mismatch("another institution or position than the request"));
        }
        let active = self.registry.terminal(&m.serial).map_err(|e| registry_status(&e))?.and_then(|t| t.active_cert);
        match active {
            None => {
                return Err(status(
                    Code::FailedPrecondition,
                    Reason::WrongState,
                    format!("terminal {} has no certificate in service (revoked)", m.serial),
                ));
            }
            Some(c) if c != ch.certificate => {
                return Err(mismatch("a certificate that is no longer the terminal's active one"));
            }
            Some(_) => {}
        }
        let (_, der) = self
            .registry
            .certificate(&ch.certificate)
            .map_err(|e| registry_status(&e))?
            .ok_or_else(|| registry_status(&registry::RegistryError::CertNotFound(ch.certificate.clone())))?;
        let cert = <pki::Certificate as der::Decode>::from_der(&der)
            .map_err(|e| status(Code::Internal, Reason::Internal, format!("stored certificate: {e}")))?;
        let key = pki::Sm2PublicKey::from_spki(cert.tbs_certificate().subject_public_key_info())
            .map_err(|e| status(Code::Internal, Reason::Internal, format!("stored certificate key: {e}")))?;
        key.verify(&pki::SignerId::default(), &proto::activation::signed_bytes(&m.statement), &m.terminal_signature)
            .map_err(|e| {
                status(
                    Code::PermissionDenied,
                    Reason::TerminalSignatureInvalid,
                    format!("the statement's signature does not verify under certificate {}: {e}", ch.certificate),
                )
            })?;
        Ok((st.challenge, ch.certificate))
    }

    /// `ListActivations`.
    pub fn list_activations(
        &self,
        req: Incoming<v1::ListActivationsRequest>,
    ) -> Result<v1::ListActivationsResponse, Status> {
        self.authenticate(&req, "/hsca.v1.Registry/ListActivations")?;
        let list = self.registry.activations(&req.msg.serial).map_err(|e| registry_status(&e))?;
        Ok(v1::ListActivationsResponse { activations: list.into_iter().map(activation_msg).collect() })
    }
}

/// Most entries one `ListActivationsAfter` answers (a page stays well under gRPC's 4 MB).
pub const ACTIVATION_PAGE_MAX: u32 = 1000;

/// The most hours of hourly counts `CountTerminals` answers (31 days).
pub const HOURLY_COUNTS_MAX_HOURS: u64 = 31 * 24;

impl Ca {
    /// `ListActivationsAfter`: the activation log after a cursor. A cursor beyond the log's head
    /// is refused rather than answered empty: the caller is reading another (or a restored) CA
    /// and would otherwise wait forever for numbers it already passed.
    pub fn list_activations_after(
        &self,
        req: Incoming<v1::ListActivationsAfterRequest>,
    ) -> Result<v1::ListActivationsAfterResponse, Status> {
        self.authenticate(&req, "/hsca.v1.Registry/ListActivationsAfter")?;
        let m = &req.msg;
        if !(1..=ACTIVATION_PAGE_MAX).contains(&m.limit) {
            return Err(bad_request(format!("limit must be 1..={ACTIVATION_PAGE_MAX}, got {}", m.limit)));
        }
        let head = self.registry.activation_log_head().map_err(|e| registry_status(&e))?;
        if m.after_seq > head {
            return Err(bad_request(format!(
                "after_seq {} is beyond the activation log's head {head} (another or a restored registry?)",
                m.after_seq
            )));
        }
        let entries = self
            .registry
            .activations_after(m.after_seq, m.limit as usize)
            .map_err(|e| registry_status(&e))?
            .into_iter()
            .map(|e| v1::ActivationLogEntry { seq: e.seq, activation: Some(activation_msg(e.activation)) })
            .collect::<Vec<_>>();
        let head = entries.last().map_or(head, |e| e.seq.max(head));
        Ok(v1::ListActivationsAfterResponse { entries, head })
    }
}

fn activation_msg(a: registry::ActivationRecord) -> v1::Activation {
    v1::Activation {
        terminal_serial: a.terminal,
        operator: a.operator,
        institution: a.institution,
        latitude: a.latitude,
        longitude: a.longitude,
        at_ms: a.at_ms,
        method: a.method.as_str().into(),
        certificate_serial: a.certificate.unwrap_or_default(),
    }
}

handlers!(v1::registry_server::Registry;
    register_terminal(v1::RegisterTerminalRequest) -> v1::Terminal => register;
    get_terminal(v1::GetTerminalRequest) -> v1::Terminal => get_terminal;
    list_terminals(v1::ListTerminalsRequest) -> v1::ListTerminalsResponse => list_terminals;
    activate_terminal(v1::ActivateTerminalRequest) -> v1::Activation => activate;
    list_activations(v1::ListActivationsRequest) -> v1::ListActivationsResponse => list_activations;
    list_activations_after(v1::ListActivationsAfterRequest) -> v1::ListActivationsAfterResponse => list_activations_after;
    count_terminals(v1::CountTerminalsRequest) -> v1::TerminalCounts => count_terminals;
    new_activation_challenge(v1::NewActivationChallengeRequest) -> v1::ActivationChallenge => new_activation_challenge;
);
