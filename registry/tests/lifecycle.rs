//! Holding a terminal's identity (SECURITY.md): what a station may replace, what only an approved
//! re-key may, and dual control by two independent administrators — each attack tried against
//! the registry and refused with its named error.

use registry::*;

#[macro_use]
mod common;
use common::*;

const T: &str = "HSTM01261100000K";

fn station_issue(req: &str, station: &str, cert: &str, key: &str, reissue: bool) -> TerminalIssue {
    let mut i = issue(req, T, cert, key);
    i.station = station.into();
    i.reissue = reissue;
    i
}

fn prov(station: &str) -> Provisioning {
    Provisioning { station: station.into(), duration_ms: 900, firmware: "1.0".into(), at_ms: 50 }
}

fn activation() -> ActivationRecord {
    ActivationRecord {
        terminal: T.into(),
        operator: "op".into(),
        institution: "Hospital 1".into(),
        latitude: 31.2,
        longitude: 121.5,
        at_ms: 60,
        method: ActivationMethod::Operator,
        certificate: None,
    }
}

fn rekey(id: &str, by: &str, key: &str, reason: RevocationReason) -> Approval {
    Approval {
        id: id.into(),
        requested_by: by.into(),
        created_ms: 70,
        request: ApprovalRequest::Rekey(RekeyRequest {
            terminal: T.into(),
            csr_hex: "3000".into(),
            key_fingerprint: key.into(),
            station: "station-2".into(),
            replaces: None,
            reason,
        }),
        state: ApprovalState::Pending,
    }
}

fn rekey_cert(serial: &str, key: &str) -> Decision {
    let cert = issue("approval", T, serial, key).cert;
    Decision::ApproveRekey { der: format!("DER of {serial}").into_bytes(), cert: Box::new(cert) }
}

fn a_station_replaces_only_its_own_unwritten_certificate(kind: Kind) {
    let (_d, reg) = open(kind);
    reg.record_terminal_issue(&station_issue("r1", "station-1", "C1", "k1", false), &ev("issue", T)).expect("issue");

    // Another station of the same manufacturer cannot supersede it, nor confirm it.
    let theft = station_issue("r2", "station-2", "C2", "k2", true);
    let refused = Err(RegistryError::IssuedByAnotherStation { cert: "C1".into(), station: "station-1".into() });
    assert_eq!(reg.record_terminal_issue(&theft, &ev("reissue", T)).map(|_| ()), refused.clone());
    assert_eq!(reg.confirm_provisioning(T, "C1", &prov("station-2"), &ev("confirm", T)), refused);
    let check = StationIssue { terminal: T, class: "II", station: "station-2", reissue: true };
    assert!(matches!(reg.check_station_issue(&check, false), Err(RegistryError::IssuedByAnotherStation { .. })));

    // Its own station may, before the device is written, with a key never certified.
    let same_key = station_issue("r3", "station-1", "C3", "k1", true);
    assert_eq!(
        reg.record_terminal_issue(&same_key, &ev("reissue", T)),
        Err(RegistryError::KeyReused { terminal: T.into() })
    );
    let own = station_issue("r4", "station-1", "C4", "k4", true);
    assert_eq!(
        reg.record_terminal_issue(&own, &ev("reissue", T)).expect("own"),
        IssueOutcome::Issued { superseded: Some("C1".into()) }
    );
    assert_eq!(reg.certificate("C4").expect("c").expect("c").0.station.as_deref(), Some("station-1"));

    // Once provisioned, and once active, no station replaces it (that would move a deployed
    // terminal's identity onto a key of the station's choosing).
    reg.confirm_provisioning(T, "C4", &prov("station-1"), &ev("confirm", T)).expect("confirm");
    let needs = Err(RegistryError::RekeyNeedsApproval { terminal: T.into(), state: "provisioned" });
    let after = station_issue("r5", "station-1", "C5", "k5", true);
    assert_eq!(reg.record_terminal_issue(&after, &ev("reissue", T)).map(|_| ()), needs);
    reg.activate(&activation(), &ev("activate", T)).expect("activate");
    let after = station_issue("r6", "station-1", "C6", "k6", true);
    assert_eq!(
        reg.record_terminal_issue(&after, &ev("reissue", T)).map(|_| ()),
        Err(RegistryError::RekeyNeedsApproval { terminal: T.into(), state: "active" })
    );
    assert_eq!(reg.terminal(T).expect("t").expect("t").active_cert.as_deref(), Some("C4"), "unchanged");
}

fn the_registered_class_holds_and_a_hold_stays_a_hold(kind: Kind) {
    let (_d, reg) = open(kind);
    reg.register_terminal(&terminal(T), &ev("register", T)).expect("register");
    let mut wrong = station_issue("r1", "station-1", "C1", "k1", false);
    wrong.terminal.class = "III".into();
    assert_eq!(
        reg.record_terminal_issue(&wrong, &ev("issue", T)),
        Err(RegistryError::ClassMismatch { terminal: T.into(), registered: "II".into(), requested: "III".into() })
    );
    reg.record_terminal_issue(&station_issue("r2", "station-1", "C2", "k2", false), &ev("issue", T)).expect("issue");
    reg.revoke("C2", RevocationReason::CertificateHold, 10, None, &ev("hold", "C2")).expect("hold");
    let over_hold = station_issue("r3", "station-1", "C3", "k3", true);
    assert_eq!(reg.record_terminal_issue(&over_hold, &ev("reissue", T)), Err(RegistryError::OnHold("C2".into())));
    add_admin(&reg, "admin", "ca-server init");
    assert_eq!(
        reg.request_approval(&rekey("a1", "admin", "k9", RevocationReason::Superseded), &ev("rekey", T)),
        Err(RegistryError::OnHold("C2".into()))
    );
    assert!(matches!(reg.certificate("C2").expect("c").expect("c").0.status, CertStatus::Revoked { .. }));
}

fn a_terminal_in_service_or_revoked_is_rekeyed_only_by_two_independent_admins(kind: Kind) {
    let (_d, reg) = open(kind);
    add_admin(&reg, "admin", "ca-server init");
    add_admin(&reg, "admin-2", "ca-server init");
    add_admin(&reg, "crony", "admin"); // added at admin's request
    reg.record_terminal_issue(&station_issue("r1", "station-1", "C1", "k1", false), &ev("issue", T)).expect("issue");
    reg.confirm_provisioning(T, "C1", &prov("station-1"), &ev("confirm", T)).expect("confirm");
    reg.record_terminal_issue(&issue("o1", "HSTM01261100001I", "O1", "k-other"), &ev("issue", "o")).expect("other");

    // Keys certified before — this terminal's or another's — are never accepted.
    let old = reg.request_approval(&rekey("a0", "admin", "k1", RevocationReason::Superseded), &ev("rekey", T));
    assert_eq!(old, Err(RegistryError::KeyReused { terminal: T.into() }));
    let clone = reg.request_approval(&rekey("a0", "admin", "k-other", RevocationReason::Superseded), &ev("rekey", T));
    assert_eq!(clone, Err(RegistryError::PublicKeyInUse { terminal: "HSTM01261100001I".into() }));

    let stored = reg.request_approval(&rekey("a1", "admin", "k2", RevocationReason::Superseded), &ev("rekey", T));
    let ApprovalRequest::Rekey(r) = &stored.expect("request").request else { panic!("kind") };
    assert_eq!(r.replaces.as_deref(), Some("C1"));
    assert_eq!(reg.terminal(T).expect("t").expect("t").active_cert.as_deref(), Some("C1"), "nothing yet");

    // Not the requester; not an admin the requester had added; not a non-admin.
    let decide = |by: &str| reg.decide_approval("a1", by, rekey_cert("C2", "k2"), 80, &ev("approve", "a1"));
    assert_eq!(decide("admin"), Err(RegistryError::SameApprover("admin".into())));
    assert_eq!(
        decide("crony"),
        Err(RegistryError::ApproverNotIndependent { approver: "crony".into(), requester: "admin".into() })
    );
    assert!(matches!(decide("station-1"), Err(RegistryError::ApproverNotEligible { .. })));
    assert!(matches!(reg.approval_for("a1", "crony"), Err(RegistryError::ApproverNotIndependent { .. })));
    reg.approval_for("a1", "admin-2").expect("admin-2 may decide");

    // A certificate for another key than the approved one is not installed.
    assert!(reg.decide_approval("a1", "admin-2", rekey_cert("C2", "k7"), 80, &ev("approve", "a1")).is_err());
    let done = decide("admin-2").expect("approved");
    assert_eq!(
        done.state,
        ApprovalState::Approved {
            by: "admin-2".into(),
            at_ms: 80,
            revoked: vec!["C1".into()],
            issued: Some("C2".into())
        }
    );
    let t = reg.terminal(T).expect("t").expect("t");
    assert_eq!((t.state, t.active_cert.as_deref()), (TerminalState::Issued, Some("C2")));
    assert!(matches!(
        reg.certificate("C1").expect("c").expect("c").0.status,
        CertStatus::Revoked { reason: RevocationReason::Superseded, .. }
    ));
    // The station the request named writes and confirms it; the one that wrote C1 may not.
    assert!(matches!(
        reg.confirm_provisioning(T, "C2", &prov("station-1"), &ev("confirm", T)),
        Err(RegistryError::IssuedByAnotherStation { .. })
    ));
    reg.confirm_provisioning(T, "C2", &prov("station-2"), &ev("confirm", T)).expect("confirm");

    // Revoked for good: back only through the same approved re-key, with a new key.
    reg.revoke("C2", RevocationReason::KeyCompromise, 90, None, &ev("revoke", "C2")).expect("revoke");
    let back = reg.request_approval(&rekey("a2", "admin-2", "k2", RevocationReason::Superseded), &ev("rekey", T));
    assert_eq!(back, Err(RegistryError::KeyCompromised("C2".into())));
    let stored = reg.request_approval(&rekey("a3", "admin-2", "k3", RevocationReason::Superseded), &ev("rekey", T));
    let ApprovalRequest::Rekey(r) = &stored.expect("request").request else { panic!("kind") };
    assert_eq!(r.replaces, None);
    reg.decide_approval("a3", "admin", rekey_cert("C3", "k3"), 95, &ev("approve", "a3")).expect("re-enrolled");
    assert_eq!(reg.terminal(T).expect("t").expect("t").active_cert.as_deref(), Some("C3"));
    // The hourly counts: an approved re-key is a certificate issued for the station it names;
    // refused decisions count nothing.
    let count = |station: &str, kind, n| HourlyCount { hour: 0, station: station.into(), kind, n };
    assert_eq!(
        reg.hourly_counts(0).expect("hourly"),
        vec![
            count("station-1", HourlyKind::Issued, 2),
            count("station-1", HourlyKind::Provisioned, 1),
            count("station-2", HourlyKind::Issued, 2),
            count("station-2", HourlyKind::Provisioned, 1),
        ]
    );
}

fn a_rekey_whose_certificate_changed_meanwhile_is_refused(kind: Kind) {
    let (_d, reg) = open(kind);
    add_admin(&reg, "admin", "ca-server init");
    add_admin(&reg, "admin-2", "ca-server init");
    reg.record_terminal_issue(&station_issue("r1", "station-1", "C1", "k1", false), &ev("issue", T)).expect("issue");
    reg.request_approval(&rekey("a1", "admin", "k2", RevocationReason::KeyCompromise), &ev("rekey", T)).expect("req");
    reg.request_approval(&rekey("a2", "admin", "k3", RevocationReason::Superseded), &ev("rekey", T)).expect("req");
    reg.decide_approval("a1", "admin-2", rekey_cert("C2", "k2"), 80, &ev("approve", "a1")).expect("first");
    assert!(matches!(
        reg.certificate("C1").expect("c").expect("c").0.status,
        CertStatus::Revoked { reason: RevocationReason::KeyCompromise, .. }
    ));
    assert!(matches!(
        reg.decide_approval("a2", "admin-2", rekey_cert("C3", "k3"), 81, &ev("approve", "a2")),
        Err(RegistryError::WrongState { .. })
    ));
    assert_eq!(reg.terminal(T).expect("t").expect("t").active_cert.as_deref(), Some("C2"));
}

fn pending_admin(reg: &Registry, name: &str, by: &str, approval: &str) -> Result<(), RegistryError> {
    let p = PrincipalRecord {
        name: name.into(),
        role: "admin".into(),
        cert_serial: format!("CERT-{name}"),
        manufacturers: vec![],
        enabled: true,
        created_by: by.into(),
        pending_approval: None,
    };
    let mut c = issue(&format!("r-{name}"), "HSTM00000000000X", &p.cert_serial, &format!("k-{name}")).cert;
    c.subject = CertSubject::Principal { name: name.into() };
    let a = Approval {
        id: approval.into(),
        requested_by: by.into(),
        created_ms: 1,
        request: ApprovalRequest::AddAdmin { name: name.into() },
        state: ApprovalState::Pending,
    };
    reg.add_pending_admin(&p, &c, b"der", &a, &ev("principal_add", name))
}

fn a_new_admin_acts_only_after_a_second_admin_approves(kind: Kind) {
    let (_d, reg) = open(kind);
    add_admin(&reg, "admin", "ca-server init");
    pending_admin(&reg, "sock-puppet", "admin", "p1").expect("pending");
    let p = reg.principal("sock-puppet").expect("p").expect("p");
    assert_eq!((p.is_active(), p.pending_approval.as_deref()), (false, Some("p1")));
    assert_eq!(reg.active_admins().expect("admins"), vec!["admin".to_owned()], "one admin: no dual control");
    // The requester cannot approve their own admin, nor can the pending admin approve itself.
    assert_eq!(
        reg.decide_approval("p1", "admin", Decision::Approve, 2, &ev("approve", "p1")),
        Err(RegistryError::SameApprover("admin".into()))
    );
    assert!(matches!(
        reg.decide_approval("p1", "sock-puppet", Decision::Approve, 2, &ev("approve", "p1")),
        Err(RegistryError::ApproverNotEligible { .. })
    ));
    // A second, independent admin decides.
    add_admin(&reg, "admin-2", "ca-server init");
    reg.decide_approval("p1", "admin-2", Decision::Approve, 3, &ev("approve", "p1")).expect("approve");
    assert!(reg.principal("sock-puppet").expect("p").expect("p").is_active_admin());
    let mut admins = reg.active_admins().expect("admins");
    admins.sort();
    assert_eq!(admins, vec!["admin", "admin-2", "sock-puppet"]);

    // Rejected: disabled, and its certificate revoked.
    pending_admin(&reg, "intruder", "admin", "p2").expect("pending");
    reg.decide_approval("p2", "admin-2", Decision::Reject, 4, &ev("reject", "p2")).expect("reject");
    let p = reg.principal("intruder").expect("p").expect("p");
    assert!(!p.is_active() && !p.enabled);
    assert!(matches!(
        reg.certificate("CERT-intruder").expect("c").expect("c").0.status,
        CertStatus::Revoked { reason: RevocationReason::PrivilegeWithdrawn, .. }
    ));
    // The admin the requester added cannot approve the requester's next request.
    pending_admin(&reg, "third", "admin", "p3").expect("pending");
    assert_eq!(
        reg.decide_approval("p3", "sock-puppet", Decision::Approve, 5, &ev("approve", "p3")),
        Err(RegistryError::ApproverNotIndependent { approver: "sock-puppet".into(), requester: "admin".into() })
    );
}

/// The CA's one read before it signs: a replay comes back with its certificate, a reused id for
/// other content is refused at once, and a new request carries the life-cycle verdict (the same
/// as `check_station_issue`'s) for the CA to give after its own refusals.
fn one_read_answers_a_replay_or_the_life_cycle_verdict(kind: Kind) {
    let (_d, reg) = open(kind);
    let first = station_issue("r1", "station-1", "C1", "k1", false);
    reg.record_terminal_issue(&first, &ev("issue", T)).expect("issue");
    let asked = StationIssue { terminal: T, class: "II", station: "station-1", reissue: false };

    match reg.issue_precheck("r1", &first.request_hash, Some(&asked), false).expect("replay") {
        Precheck::Replayed { cert, der } => assert_eq!((cert.serial.as_str(), der), ("C1", b"DER of C1".to_vec())),
        other => panic!("not a replay: {other:?}"),
    }
    assert_eq!(
        reg.issue_precheck("r1", "other content", Some(&asked), false).map(|_| ()),
        Err(RegistryError::RequestIdReused("r1".into()))
    );
    let already = Err(RegistryError::AlreadyHasActiveCertificate { terminal: T.into(), cert: "C1".into() });
    assert_eq!(reg.check_station_issue(&asked, false), already);
    match reg.issue_precheck("r2", "h2", Some(&asked), false).expect("new") {
        Precheck::New { station_issue: Some(verdict) } => assert_eq!(verdict, already),
        other => panic!("no verdict: {other:?}"),
    }
    // Another class, an unregistered terminal under required registration: refused the same way.
    let class = StationIssue { class: "III", ..asked };
    assert!(matches!(
        reg.issue_precheck("r2", "h2", Some(&class), false).expect("new"),
        Precheck::New { station_issue: Some(Err(RegistryError::ClassMismatch { .. })) }
    ));
    let unknown = StationIssue { terminal: "HSTM01261100001H", ..asked };
    assert!(matches!(
        reg.issue_precheck("r2", "h2", Some(&unknown), true).expect("new"),
        Precheck::New { station_issue: Some(Err(RegistryError::TerminalNotFound(_))) }
    ));
    assert!(matches!(
        reg.issue_precheck("r2", "h2", Some(&unknown), false).expect("new"),
        Precheck::New { station_issue: Some(Ok(())) }
    ));
    assert!(matches!(reg.issue_precheck("r2", "h2", None, false).expect("new"), Precheck::New { station_issue: None }));
    // A replay of a certificate revoked meanwhile is refused, not answered.
    reg.revoke("C1", RevocationReason::KeyCompromise, 5, None, &ev("revoke", "C1")).expect("revoke");
    assert_eq!(
        reg.issue_precheck("r1", &first.request_hash, Some(&asked), false).map(|_| ()),
        Err(RegistryError::AlreadyRevoked("C1".into()))
    );
}

/// The principal of an identity certificate in one read; a terminal's certificate names none.
fn a_principal_certificate_comes_with_its_principal(kind: Kind) {
    let (_d, reg) = open(kind);
    add_admin(&reg, "admin", "init");
    let known = reg.principal_certificate("CERT-admin").expect("read").expect("known");
    assert_eq!((known.record.serial.as_str(), known.der.as_slice()), ("CERT-admin", b"der".as_slice()));
    assert_eq!(known.principal.map(|p| p.name), Some("admin".into()));
    reg.record_terminal_issue(&station_issue("r1", "station-1", "C1", "k1", false), &ev("issue", T)).expect("issue");
    assert!(reg.principal_certificate("C1").expect("read").is_none(), "a terminal's certificate");
    assert!(reg.principal_certificate("NOPE").expect("read").is_none());
}

#[test]
fn approvals_stored_before_kinds_existed_still_read_as_bulk_revocations() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("r.redb");
    let old = br#"{"id":"a9","requested_by":"admin","created_ms":5,"filter":{"manufacturer":null,"model":null,"lot":"L1"},"reason":"keyCompromise","invalidity_ms":4,"matched":3,"state":{"state":"approved","by":"admin-2","at_ms":6,"revoked":["C1"]}}"#;
    Registry::open(&path).expect("open").put_raw_approval("a9", old).expect("raw");
    let reg = Registry::open(&path).expect("reopen");
    let list = reg.approvals(false).expect("approvals");
    assert_eq!(list.len(), 1);
    assert!(matches!(&list[0].request, ApprovalRequest::BulkRevocation { matched: 3, .. }));
    assert!(matches!(&list[0].state, ApprovalState::Approved { issued: None, .. }));
}

on_both_backends!(
    a_station_replaces_only_its_own_unwritten_certificate,
    the_registered_class_holds_and_a_hold_stays_a_hold,
    a_terminal_in_service_or_revoked_is_rekeyed_only_by_two_independent_admins,
    a_rekey_whose_certificate_changed_meanwhile_is_refused,
    a_new_admin_acts_only_after_a_second_admin_approves,
    one_read_answers_a_replay_or_the_life_cycle_verdict,
    a_principal_certificate_comes_with_its_principal,
);
