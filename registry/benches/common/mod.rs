//! The record both registry benches write: one issued terminal certificate.

use registry::*;

/// Terminal `i`'s issue as the CA records it: registration if missing and the certificate record.
pub fn issue(i: usize) -> TerminalIssue {
    let serial = format!("T{i:015}");
    TerminalIssue {
        request_id: format!("req-{i}"),
        request_hash: format!("hash-{i}"),
        terminal: TerminalRecord {
            serial: serial.clone(),
            class: "II".into(),
            manufacturer: "HSTM".into(),
            model: "01".into(),
            lot: Some("L1".into()),
            state: TerminalState::Registered,
            active_cert: None,
            updated_ms: 0,
        },
        register_if_missing: true,
        reissue: false,
        station: "station-1".into(),
        cert: CertRecord {
            serial: format!("{i:032X}"),
            subject: CertSubject::Terminal { serial },
            profile: "terminal".into(),
            key_fingerprint: format!("key-{i}"),
            issued_ms: 1,
            not_after_ms: 2,
            request_id: format!("req-{i}"),
            status: CertStatus::Good,
            provisioning: None,
            crl_partition: None,
            station: None,
            activation_hold: false,
        },
        der: vec![0x30; 600],
    }
}

/// The audit entry of a bench issue.
pub fn event() -> AuditEvent {
    AuditEvent {
        time_ms: 1,
        actor: "station-1".into(),
        action: "issue".into(),
        target: "t".into(),
        outcome: "ok".into(),
        detail: String::new(),
    }
}
