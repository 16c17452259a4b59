//! Records and a fresh registry for the registry's tests.
#![allow(dead_code)]

use registry::*;

pub fn ev(action: &str, target: &str) -> AuditEvent {
    AuditEvent {
        time_ms: 1,
        actor: "station-1".into(),
        action: action.into(),
        target: target.into(),
        outcome: "ok".into(),
        detail: String::new(),
    }
}

pub fn terminal(serial: &str) -> TerminalRecord {
    TerminalRecord {
        serial: serial.into(),
        class: "II".into(),
        manufacturer: serial[..4].into(),
        model: "01".into(),
        lot: Some("L1".into()),
        state: TerminalState::Registered,
        active_cert: None,
        updated_ms: 0,
    }
}

pub fn issue(req: &str, serial: &str, cert: &str, key: &str) -> TerminalIssue {
    TerminalIssue {
        request_id: req.into(),
        request_hash: format!("hash-of-{req}-{serial}-{key}"),
        terminal: terminal(serial),
        register_if_missing: true,
        reissue: false,
        station: "station-1".into(),
        cert: CertRecord {
            serial: cert.into(),
            subject: CertSubject::Terminal { serial: serial.into() },
            profile: "terminal".into(),
            key_fingerprint: key.into(),
            issued_ms: 1000,
            not_after_ms: 2000,
            request_id: req.into(),
            status: CertStatus::Good,
            provisioning: None,
            crl_partition: None,
            station: None,
            activation_hold: false,
        },
        der: format!("DER of {cert}").into_bytes(),
    }
}

/// An active administrator `name`, added at `created_by`'s request.
pub fn add_admin(reg: &Registry, name: &str, created_by: &str) {
    let p = PrincipalRecord {
        name: name.into(),
        role: "admin".into(),
        cert_serial: format!("CERT-{name}"),
        manufacturers: vec![],
        enabled: true,
        created_by: created_by.into(),
        pending_approval: None,
    };
    let mut c = issue(&format!("r-{name}"), "HSTM00000000000X", &p.cert_serial, &format!("k-{name}")).cert;
    c.subject = CertSubject::Principal { name: name.into() };
    reg.add_principal(&p, &c, b"der", &ev("principal_add", name)).expect("admin");
}

/// Which backend a test runs on.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// A redb file in a temp dir.
    Redb,
    /// A fresh PostgreSQL server of its own (`registry::testing::PgServer`).
    Postgres,
}

/// Keeps a test's storage alive; dropped after the registry (declared first).
pub enum Guard {
    Dir(tempfile::TempDir),
    Pg(registry::testing::PgServer),
}

/// A fresh registry on `kind`.
pub fn open(kind: Kind) -> (Guard, Registry) {
    match kind {
        Kind::Redb => {
            let dir = tempfile::tempdir().expect("tmp");
            let reg = Registry::open(&dir.path().join("registry.redb")).expect("open");
            (Guard::Dir(dir), reg)
        }
        Kind::Postgres => {
            let server = registry::testing::PgServer::start().expect("PostgreSQL test server");
            Registry::migrate_postgres(&server.url()).expect("migrate");
            let reg = Registry::open_postgres(&server.url()).expect("open");
            (Guard::Pg(server), reg)
        }
    }
}

#[allow(unused_macros)]
/// Runs each named test (a `fn(Kind)`) on both backends: `name::redb` and `name::postgres`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn redb() {
                super::$name(super::Kind::Redb)
            }
            #[test]
            fn postgres() {
                super::$name(super::Kind::Postgres)
            }
        }
    )*};
}
