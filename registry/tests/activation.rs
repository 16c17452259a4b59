//! Activation (issue 14 item 3): single-use, expiring challenges; proof-of-presence and manual
//! activations; the activation hold that `hold_until_activation` places at issuance, lifted by
//! an activation and by nothing else — and never lifting anyone else's hold. On both backends.

use registry::*;

#[macro_use]
mod common;
use common::*;

const T: &str = "HSTM01261100000K";
const OTHER: &str = "HSTM01261100001H";

fn prov() -> Provisioning {
    Provisioning { station: "station-1".into(), duration_ms: 900, firmware: "1.0".into(), at_ms: 50 }
}

fn presence(terminal: &str, cert: &str, at_ms: u64) -> ActivationRecord {
    ActivationRecord {
        terminal: terminal.into(),
        operator: "op".into(),
        institution: "Hospital 1".into(),
        latitude: 31.2,
        longitude: 121.5,
        at_ms,
        method: ActivationMethod::Presence,
        certificate: Some(cert.into()),
    }
}

fn challenge_for(terminal: &str, cert: &str) -> ChallengeRecord {
    ChallengeRecord {
        terminal: terminal.into(),
        certificate: cert.into(),
        operator: "op".into(),
        issued_ms: 100,
        expires_ms: 400,
    }
}

/// Terminal `serial` issued certificate `cert` (held until activation when `held`) and provisioned.
fn provisioned(reg: &Registry, serial: &str, cert: &str, held: bool) {
    let i = issue(&format!("r-{cert}"), serial, cert, &format!("k-{cert}"));
    reg.record_terminal_issue_held(&i, held, &ev("issue", serial)).expect("issue");
    reg.confirm_provisioning(serial, cert, &prov(), &ev("confirm", serial)).expect("confirm");
}

fn status(reg: &Registry, cert: &str) -> CertRecord {
    reg.certificate(cert).expect("read").expect("cert").0
}

fn issued_under_the_activation_hold_and_a_presence_activation_lifts_it(kind: Kind) {
    let (_d, reg) = open(kind);
    let i = issue("r1", T, "C1", "k1");
    reg.record_terminal_issue_held(&i, true, &ev("issue", T)).expect("issue");
    let c = status(&reg, "C1");
    assert!(c.on_activation_hold(), "held from the same transaction that recorded it: {c:?}");
    assert!(reg.revoked_certificates().expect("revoked").iter().any(|r| r.serial == "C1"), "CRL/OCSP see the hold");
    // A station retrying gets the same (held) certificate, and the hold stays.
    match reg.record_terminal_issue_held(&i, true, &ev("issue", T)).expect("replay") {
        IssueOutcome::Replayed { cert, .. } => assert!(cert.on_activation_hold()),
        other => panic!("{other:?}"),
    }
    reg.confirm_provisioning(T, "C1", &prov(), &ev("confirm", T)).expect("confirm");
    // Nobody but an activation lifts it: not an administrator's or monitor's unrevoke.
    assert_eq!(
        reg.unrevoke("C1", 150, &ev("unrevoke", "C1")).map(|_| ()),
        Err(RegistryError::ActivationHold("C1".into()))
    );

    reg.new_activation_challenge(b"ch-1", &challenge_for(T, "C1"), &ev("challenge", T)).expect("challenge");
    let done = reg.activate_with_presence(b"ch-1", &presence(T, "C1", 200), &ev("activate", T)).expect("activate");
    assert_eq!(done, Activated { number: 1, released: Some("C1".into()) });
    assert_eq!(status(&reg, "C1").status, CertStatus::Good);
    assert!(!status(&reg, "C1").activation_hold);
    assert!(reg.released_since(0).expect("released").iter().any(|r| r.serial == "C1"), "delta CRLs: removeFromCRL");
    assert_eq!(reg.terminal(T).expect("t").expect("t").state, TerminalState::Active);
    let list = reg.activations(T).expect("list");
    assert_eq!(
        (list.len(), list[0].method, list[0].certificate.as_deref()),
        (1, ActivationMethod::Presence, Some("C1"))
    );

    // The challenge was used up with the activation: a replay finds none.
    assert_eq!(
        reg.activate_with_presence(b"ch-1", &presence(T, "C1", 210), &ev("activate", T)),
        Err(RegistryError::ChallengeUnknown)
    );
}

fn a_challenge_is_single_use_unexpired_and_for_its_terminal_only(kind: Kind) {
    let (_d, reg) = open(kind);
    provisioned(&reg, T, "C1", false);
    provisioned(&reg, OTHER, "C2", false);
    assert_eq!(
        reg.activate_with_presence(b"never", &presence(T, "C1", 200), &ev("activate", T)),
        Err(RegistryError::ChallengeUnknown),
        "never handed out"
    );
    reg.new_activation_challenge(b"ch-t", &challenge_for(T, "C1"), &ev("challenge", T)).expect("challenge");
    assert_eq!(
        reg.activate_with_presence(b"ch-t", &presence(OTHER, "C2", 200), &ev("activate", OTHER)),
        Err(RegistryError::ChallengeUnknown),
        "another terminal's challenge"
    );
    assert_eq!(
        reg.activate_with_presence(b"ch-t", &presence(T, "C1", 401), &ev("activate", T)),
        Err(RegistryError::ChallengeExpired)
    );
    assert!(
        matches!(
            reg.activate_with_presence(b"ch-t", &presence(T, "C9", 200), &ev("activate", T)),
            Err(RegistryError::WrongState { .. })
        ),
        "signed under a certificate that is not the challenge's"
    );
    // A refused attempt used nothing up; the good one does.
    reg.activate_with_presence(b"ch-t", &presence(T, "C1", 400), &ev("activate", T)).expect("in time");
    assert_eq!(
        reg.activate_with_presence(b"ch-t", &presence(T, "C1", 300), &ev("activate", T)),
        Err(RegistryError::ChallengeUnknown)
    );
    // No challenge for a certificate that is not the terminal's active one, or an unprovisioned terminal.
    assert!(matches!(
        reg.new_activation_challenge(b"ch-x", &challenge_for(T, "C2"), &ev("challenge", T)),
        Err(RegistryError::WrongState { .. })
    ));
    let i = issue("r3", "HSTM01261100002F", "C3", "k3");
    reg.record_terminal_issue(&i, &ev("issue", "HSTM01261100002F")).expect("issue");
    assert!(matches!(
        reg.new_activation_challenge(b"ch-y", &challenge_for("HSTM01261100002F", "C3"), &ev("challenge", "x")),
        Err(RegistryError::WrongState { .. })
    ));
    // Expired challenges are pruned when new ones are handed out.
    let late = ChallengeRecord { issued_ms: 1_000, expires_ms: 1_300, ..challenge_for(OTHER, "C2") };
    reg.new_activation_challenge(b"ch-z", &challenge_for(OTHER, "C2"), &ev("challenge", OTHER)).expect("c");
    reg.new_activation_challenge(b"ch-late", &late, &ev("challenge", OTHER)).expect("late");
    assert_eq!(reg.activation_challenge(b"ch-z").expect("read"), None, "expired, pruned");
    assert_eq!(reg.activation_challenge(b"ch-late").expect("read"), Some(late));
}

fn an_activation_never_lifts_a_monitors_or_admins_hold(kind: Kind) {
    let (_d, reg) = open(kind);
    // A hold placed on a good certificate (an admin's, a monitor's clone hold).
    provisioned(&reg, T, "C1", false);
    reg.revoke("C1", RevocationReason::CertificateHold, 120, None, &ev("hold", "C1")).expect("hold");
    reg.new_activation_challenge(b"ch-1", &challenge_for(T, "C1"), &ev("challenge", T)).expect("challenge");
    assert_eq!(
        reg.activate_with_presence(b"ch-1", &presence(T, "C1", 200), &ev("activate", T)).map(|_| ()),
        Err(RegistryError::OnHold("C1".into()))
    );
    let manual = ActivationRecord { method: ActivationMethod::Manual, certificate: None, ..presence(T, "C1", 200) };
    assert_eq!(reg.activate(&manual, &ev("activate_manual", T)).map(|_| ()), Err(RegistryError::OnHold("C1".into())));
    assert!(status(&reg, "C1").on_hold() && !status(&reg, "C1").activation_hold);
    assert!(reg.activations(T).expect("list").is_empty(), "nothing recorded");

    // A hold placed over the activation hold takes it over: the activation no longer lifts it.
    provisioned(&reg, OTHER, "C2", true);
    reg.revoke("C2", RevocationReason::CertificateHold, 130, None, &ev("hold", "C2")).expect("monitor's hold");
    assert!(status(&reg, "C2").on_hold() && !status(&reg, "C2").activation_hold);
    reg.new_activation_challenge(b"ch-2", &challenge_for(OTHER, "C2"), &ev("challenge", OTHER)).expect("c");
    assert_eq!(
        reg.activate_with_presence(b"ch-2", &presence(OTHER, "C2", 200), &ev("activate", OTHER)).map(|_| ()),
        Err(RegistryError::OnHold("C2".into()))
    );
    // Lifting that hold (its placer's business) leaves a good certificate, not the activation hold.
    reg.unrevoke("C2", 210, &ev("unrevoke", "C2")).expect("lift");
    assert_eq!(status(&reg, "C2").status, CertStatus::Good);
    // A revoked certificate is no ground for a challenge or an activation.
    reg.revoke("C2", RevocationReason::KeyCompromise, 220, Some(220), &ev("revoke", "C2")).expect("revoke");
    assert!(reg.new_activation_challenge(b"ch-3", &challenge_for(OTHER, "C2"), &ev("challenge", OTHER)).is_err());
}

fn a_manual_activation_lifts_only_the_activation_hold(kind: Kind) {
    let (_d, reg) = open(kind);
    provisioned(&reg, T, "C1", true);
    let manual = ActivationRecord { method: ActivationMethod::Manual, certificate: None, ..presence(T, "C1", 200) };
    let done = reg.activate(&manual, &ev("activate_manual", T)).expect("manual");
    assert_eq!(done.released.as_deref(), Some("C1"));
    assert_eq!(status(&reg, "C1").status, CertStatus::Good);
    assert_eq!(reg.activations(T).expect("list")[0].method, ActivationMethod::Manual);
}

fn a_reissue_before_the_write_replaces_a_certificate_on_its_activation_hold(kind: Kind) {
    let (_d, reg) = open(kind);
    let i = issue("r1", T, "C1", "k1");
    reg.record_terminal_issue_held(&i, true, &ev("issue", T)).expect("issue");
    let mut again = issue("r2", T, "C2", "k2");
    again.reissue = true;
    assert_eq!(
        reg.record_terminal_issue_held(&again, true, &ev("reissue", T)).expect("reissue"),
        IssueOutcome::Issued { superseded: Some("C1".into()) }
    );
    assert!(matches!(status(&reg, "C1").status, CertStatus::Revoked { reason: RevocationReason::Superseded, .. }));
    assert!(status(&reg, "C2").on_activation_hold());
}

fn manual(terminal: &str, institution: &str, at_ms: u64) -> ActivationRecord {
    ActivationRecord {
        institution: institution.into(),
        method: ActivationMethod::Manual,
        certificate: None,
        ..presence(terminal, "", at_ms)
    }
}

fn the_activation_log_pages_every_terminal_in_commit_order_and_survives_a_backup(kind: Kind) {
    let (d, reg) = open(kind);
    assert_eq!(reg.activations_after(0, 10).expect("empty"), vec![]);
    assert_eq!(reg.activation_log_head().expect("head"), 0);
    provisioned(&reg, T, "C1", false);
    provisioned(&reg, OTHER, "C2", false);
    // Commit order, not time order: the second write carries an earlier time.
    reg.activate(&manual(OTHER, "H-2", 300), &ev("activate", OTHER)).expect("a1");
    reg.activate(&manual(T, "H-1", 200), &ev("activate", T)).expect("a2");
    reg.activate(&manual(OTHER, "H-3", 400), &ev("activate", OTHER)).expect("a3 (re-activation)");
    let all = reg.activations_after(0, 10).expect("all");
    let seen: Vec<(u64, &str, &str)> =
        all.iter().map(|e| (e.seq, e.activation.terminal.as_str(), e.activation.institution.as_str())).collect();
    assert_eq!(seen, [(1, OTHER, "H-2"), (2, T, "H-1"), (3, OTHER, "H-3")]);
    assert_eq!(reg.activation_log_head().expect("head"), 3);
    // A cursor and a limit page through it; past the end is empty.
    let page = reg.activations_after(1, 1).expect("page");
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
    assert_eq!(reg.activations_after(3, 10).expect("end"), vec![]);
    assert_eq!(reg.activations_after(u64::MAX, 10).expect("far end"), vec![]);
    // A refused activation takes no number.
    assert!(reg.activate(&manual("HSTM01261100002F", "H-9", 500), &ev("activate", "x")).is_err());
    reg.activate(&manual(T, "H-4", 600), &ev("activate", T)).expect("a4");
    assert_eq!(reg.activations_after(3, 10).expect("next")[0].seq, 4);
    // A backup (redb file, from either backend) keeps the numbers and the counter.
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("backup.redb");
    reg.backup(&out).expect("backup");
    let copy = Registry::open(&out).expect("open backup");
    assert_eq!(copy.activations_after(0, 10).expect("copy"), reg.activations_after(0, 10).expect("orig"));
    assert_eq!(copy.activation_log_head().expect("head"), 4);
    drop((copy, d));
}

fn an_operator_holds_at_most_the_limit_of_unused_unexpired_challenges(kind: Kind) {
    let (_d, reg) = open(kind);
    provisioned(&reg, T, "C1", false);
    let by = |operator: &str, issued_ms: u64| ChallengeRecord {
        operator: operator.into(),
        issued_ms,
        expires_ms: issued_ms + 300,
        ..challenge_for(T, "C1")
    };
    reg.new_activation_challenge_within(b"a", &by("op", 100), 2, &ev("challenge", T)).expect("1st");
    reg.new_activation_challenge_within(b"b", &by("op", 110), 2, &ev("challenge", T)).expect("2nd");
    assert_eq!(
        reg.new_activation_challenge_within(b"c", &by("op", 120), 2, &ev("challenge", T)),
        Err(RegistryError::TooManyChallenges { operator: "op".into(), limit: 2 })
    );
    assert_eq!(reg.activation_challenge(b"c").expect("read"), None, "a refused challenge is not stored");
    reg.new_activation_challenge_within(b"d", &by("op-2", 120), 2, &ev("challenge", T)).expect("another operator");
    // Used, one frees a place; expired ones count no more.
    reg.activate_with_presence(b"a", &presence(T, "C1", 130), &ev("activate", T)).expect("use a");
    reg.new_activation_challenge_within(b"e", &by("op", 140), 2, &ev("challenge", T)).expect("after use");
    assert!(reg.new_activation_challenge_within(b"f", &by("op", 150), 2, &ev("challenge", T)).is_err());
    reg.new_activation_challenge_within(b"g", &by("op", 440), 2, &ev("challenge", T)).expect("b and e expired");
}

on_both_backends!(
    an_operator_holds_at_most_the_limit_of_unused_unexpired_challenges,
    the_activation_log_pages_every_terminal_in_commit_order_and_survives_a_backup,
    issued_under_the_activation_hold_and_a_presence_activation_lifts_it,
    a_challenge_is_single_use_unexpired_and_for_its_terminal_only,
    an_activation_never_lifts_a_monitors_or_admins_hold,
    a_manual_activation_lifts_only_the_activation_hold,
    a_reissue_before_the_write_replaces_a_certificate_on_its_activation_hold,
);
