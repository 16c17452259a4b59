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
        Ok(v1::TerminalCounts {
            total: c.total,
            by_state: c.by_state.into_iter().collect(),
            by_class: c.by_class.into_iter().collect(),
            by_manufacturer: c.by_manufacturer.into_iter().collect(),
        })
    }

    /// `ActivateTerminal`.
    pub fn activate(&self, req: Incoming<v1::ActivateTerminalRequest>) -> Result<v1::Activation, Status> {
        let caller = self.authenticate(&req, "/hsca.v1.Registry/ActivateTerminal")?;
        let m = &req.msg;
        let valid = (-90.0..=90.0).contains(&m.latitude)
            && (-180.0..=180.0).contains(&m.longitude)
            && !m.institution.trim().is_empty();
        if !valid {
            return Err(self.refuse(
                &caller,
                "activate",
                &m.serial,
                bad_request("institution is required and latitude/longitude must be valid degrees"),
            ));
        }
        let a = registry::ActivationRecord {
            terminal: m.serial.clone(),
            operator: caller.name.clone(),
            institution: m.institution.clone(),
            latitude: m.latitude,
            longitude: m.longitude,
            at_ms: now_ms(),
        };
        self.registry
            .activate(&a, &Self::event(&caller, "activate", &m.serial, format!("at {}", m.institution)))
            .map_err(|e| self.refuse(&caller, "activate", &m.serial, registry_status(&e)))?;
        Ok(v1::Activation {
            terminal_serial: a.terminal,
            operator: a.operator,
            institution: a.institution,
            latitude: a.latitude,
            longitude: a.longitude,
            at_ms: a.at_ms,
        })
    }

    /// `ListActivations`.
    pub fn list_activations(
        &self,
        req: Incoming<v1::ListActivationsRequest>,
    ) -> Result<v1::ListActivationsResponse, Status> {
        self.authenticate(&req, "/hsca.v1.Registry/ListActivations")?;
        let list = self.registry.activations(&req.msg.serial).map_err(|e| registry_status(&e))?;
        Ok(v1::ListActivationsResponse {
            activations: list
                .into_iter()
                .map(|a| v1::Activation {
                    terminal_serial: a.terminal,
                    operator: a.operator,
                    institution: a.institution,
                    latitude: a.latitude,
                    longitude: a.longitude,
                    at_ms: a.at_ms,
                })
                .collect(),
        })
    }
}

handlers!(v1::registry_server::Registry;
    register_terminal(v1::RegisterTerminalRequest) -> v1::Terminal => register;
    get_terminal(v1::GetTerminalRequest) -> v1::Terminal => get_terminal;
    list_terminals(v1::ListTerminalsRequest) -> v1::ListTerminalsResponse => list_terminals;
    activate_terminal(v1::ActivateTerminalRequest) -> v1::Activation => activate;
    list_activations(v1::ListActivationsRequest) -> v1::ListActivationsResponse => list_activations;
    count_terminals(v1::CountTerminalsRequest) -> v1::TerminalCounts => count_terminals;
);
