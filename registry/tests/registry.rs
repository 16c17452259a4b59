//! The registry's invariants, enforced inside transactions, and its audit chain.

use std::sync::Arc;

use registry::*;

#[macro_use]
mod common;
use common::*;

fn one_active_certificate_per_terminal_and_idempotent_retries(kind: Kind) {
    let (_d, reg) = open(kind);
    let first = issue("r1", "HSTM01261100000K", "AA01", "k1");
    assert_eq!(
        reg.record_terminal_issue(&first, &ev("issue", "HSTM01261100000K")).expect("issue"),
        IssueOutcome::Issued { superseded: None }
    );
    let t = reg.terminal("HSTM01261100000K").expect("get").expect("registered on the fly");
    assert_eq!((t.state, t.active_cert.as_deref()), (TerminalState::Issued, Some("AA01")));

    // Same request id, same content: the same certificate, nothing new written.
    let before = reg.audit_len().expect("len");
    match reg.record_terminal_issue(&first, &ev("issue", "x")).expect("replay") {
        IssueOutcome::Replayed { cert, der } => {
            assert_eq!((cert.serial.as_str(), der), ("AA01", b"DER of AA01".to_vec()))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(reg.audit_len().expect("len"), before);
    // Same id, other content.
    let mut other = issue("r1", "HSTM01261100000K", "AA09", "k9");
    other.request_hash = "different".into();
    assert_eq!(reg.record_terminal_issue(&other, &ev("issue", "x")), Err(RegistryError::RequestIdReused("r1".into())));
    // A second certificate for the same terminal.
    let second = issue("r2", "HSTM01261100000K", "AA02", "k2");
    assert_eq!(
        reg.record_terminal_issue(&second, &ev("issue", "x")),
        Err(RegistryError::AlreadyHasActiveCertificate { terminal: "HSTM01261100000K".into(), cert: "AA01".into() })
    );
    // The same key for another terminal (a clone).
    assert_eq!(
        reg.record_terminal_issue(&issue("r3", "HSTM01261100001I", "AA03", "k1"), &ev("issue", "x")),
        Err(RegistryError::PublicKeyInUse { terminal: "HSTM01261100000K".into() })
    );
    assert_eq!(reg.terminal("HSTM01261100001I").expect("get"), None, "a refused issue registers nothing");
    // A serial that exists.
    assert_eq!(
        reg.record_terminal_issue(&issue("r4", "HSTM01261100001I", "AA01", "k4"), &ev("issue", "x")),
        Err(RegistryError::CertSerialExists("AA01".into()))
    );
    // Unregistered terminal when the policy requires registration.
    let mut strict = issue("r5", "A1B2032512ZZ9Q0G", "AA05", "k5");
    strict.register_if_missing = false;
    assert_eq!(
        reg.record_terminal_issue(&strict, &ev("issue", "x")),
        Err(RegistryError::TerminalNotFound("A1B2032512ZZ9Q0G".into()))
    );

    // An explicit re-issue supersedes the old certificate.
    let mut again = issue("r6", "HSTM01261100000K", "AA06", "k6");
    again.reissue = true;
    assert_eq!(
        reg.record_terminal_issue(&again, &ev("reissue", "x")).expect("reissue"),
        IssueOutcome::Issued { superseded: Some("AA01".into()) }
    );
    let (old, _) = reg.certificate("AA01").expect("get").expect("kept");
    assert!(matches!(old.status, CertStatus::Revoked { reason: RevocationReason::Superseded, .. }));
    assert_eq!(reg.terminal("HSTM01261100000K").expect("t").expect("t").active_cert.as_deref(), Some("AA06"));
}

fn life_cycle_confirm_activate_revoke(kind: Kind) {
    let (_d, reg) = open(kind);
    let serial = "HSTM01261100000K";
    reg.register_terminal(&terminal(serial), &ev("register", serial)).expect("register");
    assert_eq!(
        reg.register_terminal(&terminal(serial), &ev("register", serial)),
        Err(RegistryError::TerminalExists(serial.into()))
    );
    let mut i = issue("r1", serial, "BB01", "k1");
    i.register_if_missing = false;
    reg.record_terminal_issue(&i, &ev("issue", serial)).expect("issue");
    let activation = ActivationRecord {
        terminal: serial.into(),
        operator: "op".into(),
        institution: "Hospital 1".into(),
        latitude: 31.2,
        longitude: 121.5,
        at_ms: 5,
        method: ActivationMethod::Operator,
        certificate: None,
    };
    assert!(
        matches!(reg.activate(&activation, &ev("activate", serial)), Err(RegistryError::WrongState { .. })),
        "not provisioned yet"
    );
    let prov = Provisioning { station: "station-1".into(), duration_ms: 2500, firmware: "1.2.3".into(), at_ms: 4 };
    assert!(matches!(
        reg.confirm_provisioning(serial, "FFFF", &prov, &ev("confirm", serial)),
        Err(RegistryError::WrongState { .. })
    ));
    reg.confirm_provisioning(serial, "BB01", &prov, &ev("confirm", serial)).expect("confirm");
    assert_eq!(reg.terminal(serial).expect("t").expect("t").state, TerminalState::Provisioned);
    assert_eq!(reg.certificate("BB01").expect("c").expect("c").0.provisioning, Some(prov.clone()));
    // A re-confirmation (station retry) keeps the first record; another station may not confirm.
    let again = Provisioning { duration_ms: 1, at_ms: 6, ..prov.clone() };
    reg.confirm_provisioning(serial, "BB01", &again, &ev("confirm", serial)).expect("confirm again");
    assert_eq!(reg.certificate("BB01").expect("c").expect("c").0.provisioning, Some(prov.clone()));
    let other = Provisioning { station: "station-2".into(), ..prov.clone() };
    assert_eq!(
        reg.confirm_provisioning(serial, "BB01", &other, &ev("confirm", serial)),
        Err(RegistryError::IssuedByAnotherStation { cert: "BB01".into(), station: "station-1".into() })
    );
    assert_eq!(reg.activate(&activation, &ev("activate", serial)).expect("activate").number, 1);
    assert_eq!(reg.activate(&activation, &ev("activate", serial)).expect("again").number, 2);
    assert_eq!(reg.activations(serial).expect("list").len(), 2);
    assert_eq!(reg.terminal(serial).expect("t").expect("t").state, TerminalState::Active);

    let rec = reg.revoke("BB01", RevocationReason::KeyCompromise, 9, Some(8), &ev("revoke", "BB01")).expect("revoke");
    assert_eq!(
        rec.status,
        CertStatus::Revoked { at_ms: 9, reason: RevocationReason::KeyCompromise, invalidity_ms: Some(8) }
    );
    assert_eq!(
        reg.revoke("BB01", RevocationReason::KeyCompromise, 9, None, &ev("revoke", "BB01")),
        Err(RegistryError::AlreadyRevoked("BB01".into()))
    );
    assert_eq!(
        reg.revoke("NOPE", RevocationReason::Unspecified, 9, None, &ev("revoke", "NOPE")),
        Err(RegistryError::CertNotFound("NOPE".into()))
    );
    let t = reg.terminal(serial).expect("t").expect("t");
    assert_eq!((t.state, t.active_cert), (TerminalState::Revoked, None));
    // A revoked terminal gets a new certificate only through an approved re-key (tests/lifecycle.rs).
    for reissue in [false, true] {
        let mut again = issue("r2", serial, "BB02", "k2");
        again.reissue = reissue;
        assert_eq!(
            reg.record_terminal_issue(&again, &ev("issue", serial)),
            Err(RegistryError::RekeyNeedsApproval { terminal: serial.into(), state: "revoked" })
        );
    }
}

fn racing_issues_for_one_terminal_leave_exactly_one_certificate(kind: Kind) {
    let (_d, reg) = open(kind);
    let reg = Arc::new(reg);
    let before = reg.writer_stats();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let reg = reg.clone();
                s.spawn(move || {
                    reg.record_terminal_issue(
                        &issue(&format!("r{i}"), "HSTM01261100000K", &format!("CC{i:02}"), &format!("k{i}")),
                        &ev("issue", "t"),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    assert!(
        results
            .iter()
            .filter(|r| r.is_err())
            .all(|r| matches!(r, Err(RegistryError::AlreadyHasActiveCertificate { .. })))
    );
    // 32 threads for 32 terminals: all recorded.
    std::thread::scope(|s| {
        for i in 0..32 {
            let reg = reg.clone();
            s.spawn(move || {
                let serial = format!("T{i:015}");
                reg.record_terminal_issue(
                    &issue(&format!("q{i}"), &serial, &format!("DD{i:02}"), &format!("key{i}")),
                    &ev("issue", &serial),
                )
                .expect("distinct terminals");
            });
        }
    });
    assert_eq!(reg.certificates().expect("all").len(), 33);
    assert_eq!(reg.verify_audit_chain().expect("chain").entries, 33);
    // The writer counted every one of the 40 writes (a refused one too: it committed nothing of
    // its own, but its batch committed), in at most 40 commits, and the time it took.
    let after = reg.writer_stats();
    assert_eq!(after.writes - before.writes, 40, "{before:?} → {after:?}");
    assert!((1..=40).contains(&(after.commits - before.commits)), "{before:?} → {after:?}");
    assert!(after.busy_us > before.busy_us, "{before:?} → {after:?}");
}

fn audit_chain_detects_edits_removals_and_reordering(kind: Kind) {
    let (_d, reg) = open(kind);
    for i in 0..5 {
        reg.audit(&ev("auth_refused", &format!("p{i}"))).expect("audit");
    }
    let ok = reg.verify_audit_chain().expect("intact");
    assert_eq!(ok.entries, 5);
    assert_eq!(reg.audit_tail(2).expect("tail").iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4, 5]);

    // Edit one byte of entry 3's content.
    let orig3 = reg.raw_audit(3).expect("raw").expect("present");
    let edited = String::from_utf8(orig3.clone()).expect("json").replace("\"p2\"", "\"p9\"").into_bytes();
    reg.tamper_audit(3, Some(edited)).expect("tamper");
    assert_eq!(reg.verify_audit_chain(), Err(RegistryError::Audit(ChainBreak::Edited { seq: 3 })));
    reg.tamper_audit(3, Some(orig3.clone())).expect("restore");
    reg.verify_audit_chain().expect("intact again");

    // Swap entries 2 and 3 (keys and seqs rewritten to look contiguous).
    let orig2 = reg.raw_audit(2).expect("raw").expect("present");
    let swap = |from: &[u8], seq: u64| {
        let mut e: AuditEntry = serde_json::from_slice(from).expect("entry");
        e.seq = seq;
        serde_json::to_vec(&e).expect("json")
    };
    reg.tamper_audit(2, Some(swap(&orig3, 2))).expect("t");
    reg.tamper_audit(3, Some(swap(&orig2, 3))).expect("t");
    assert_eq!(reg.verify_audit_chain(), Err(RegistryError::Audit(ChainBreak::BrokenLink { seq: 2 })));
    reg.tamper_audit(2, Some(orig2)).expect("t");
    reg.tamper_audit(3, Some(orig3)).expect("t");

    // Remove entry 4.
    reg.tamper_audit(4, None).expect("remove");
    assert_eq!(reg.verify_audit_chain(), Err(RegistryError::Audit(ChainBreak::Gap { key: 5, expected: 4, found: 5 })));
}

fn checkpoint(reg: &Registry) -> AuditCheckpoint {
    let (seq, head) = reg.audit_head().expect("head").expect("entries");
    AuditCheckpoint { seq, head, time_ms: 7, key_id: "k".into(), signature: "00".into() }
}

fn checkpoints_catch_a_consistently_rewritten_chain_and_a_cut_tail(kind: Kind) {
    let (_d, reg) = open(kind);
    assert_eq!(reg.audit_head().expect("head"), None);
    for i in 0..4 {
        reg.audit(&ev("issue", &format!("t{i}"))).expect("audit");
    }
    let cp = checkpoint(&reg);
    assert_eq!(cp.seq, 4);
    reg.add_audit_checkpoint(&cp).expect("checkpoint");
    assert_eq!(reg.last_audit_checkpoint().expect("last"), Some(cp.clone()));
    reg.audit(&ev("issue", "t4")).expect("audit");
    let summary = reg.verify_audit_chain().expect("intact");
    assert_eq!((summary.entries, summary.checkpoints), (5, vec![cp.clone()]));

    // A checkpoint for a hash the chain does not hold, or for an entry it lacks, is refused.
    let wrong = AuditCheckpoint { head: "ab".repeat(32), ..cp.clone() };
    assert_eq!(reg.add_audit_checkpoint(&wrong), Err(RegistryError::Audit(ChainBreak::CheckpointMismatch { seq: 4 })));
    let ahead = AuditCheckpoint { seq: 9, ..cp.clone() };
    assert_eq!(
        reg.add_audit_checkpoint(&ahead),
        Err(RegistryError::Audit(ChainBreak::Truncated { seq: 9, entries: 5 }))
    );

    // A forger rewrites entry 2 and re-chains everything after it: the chain alone still
    // verifies, the signed checkpoint does not.
    let mut forged = ev("issue", "t1");
    forged.actor = "someone-else".into();
    reg.rewrite_audit(2, &forged).expect("rewrite");
    assert_eq!(reg.verify_audit_chain(), Err(RegistryError::Audit(ChainBreak::CheckpointMismatch { seq: 4 })));
    // Rewriting only after the checkpoint is not caught by it (the next checkpoint will be).
    reg.rewrite_audit(2, &ev("issue", "t1")).expect("undo");
    reg.verify_audit_chain().expect("restored");
    reg.rewrite_audit(5, &forged).expect("rewrite after checkpoint");
    reg.verify_audit_chain().expect("chain after the last checkpoint is only hash-protected");

    // Cutting the tail below the checkpoint is detected.
    reg.tamper_audit(5, None).expect("remove");
    reg.tamper_audit(4, None).expect("remove");
    assert_eq!(reg.verify_audit_chain(), Err(RegistryError::Audit(ChainBreak::Truncated { seq: 4, entries: 3 })));
}

fn nonces_are_single_use_within_their_window(kind: Kind) {
    let (_d, reg) = open(kind);
    reg.use_nonce(b"n1", 1000, 2000).expect("first");
    assert_eq!(reg.use_nonce(b"n1", 1500, 2500), Err(RegistryError::NonceReplayed));
    reg.use_nonce(b"n1", 2001, 3000).expect("expired nonce may come back");
}

fn paging_and_filters(kind: Kind) {
    let (_d, reg) = open(kind);
    for i in 0..7 {
        let mut t = terminal(&format!("HSTM{i:012}"));
        if i % 2 == 0 {
            t.lot = Some("L2".into());
        }
        reg.register_terminal(&t, &ev("register", &t.serial)).expect("register");
    }
    let f = TerminalFilter::default();
    let (page1, next) = reg.list_terminals(&f, None, 3).expect("p1");
    assert_eq!(page1.len(), 3);
    let (page2, next2) = reg.list_terminals(&f, next.as_deref(), 3).expect("p2");
    let (page3, next3) = reg.list_terminals(&f, next2.as_deref(), 3).expect("p3");
    assert_eq!((page2.len(), page3.len(), next3), (3, 1, None));
    assert!(page1[2].serial < page2[0].serial);
    let lot2 = TerminalFilter { lot: Some("L2".into()), ..Default::default() };
    assert_eq!(reg.list_terminals(&lot2, None, 100).expect("lot").0.len(), 4);
    let issued = TerminalFilter { state: Some(TerminalState::Issued), ..Default::default() };
    assert!(reg.list_terminals(&issued, None, 100).expect("none").0.is_empty());
}

/// Every page of `filter`, `size` at a time.
fn all_pages(reg: &Registry, filter: &TerminalFilter, size: usize) -> Vec<TerminalRecord> {
    let (mut out, mut after) = (Vec::new(), None::<String>);
    loop {
        let (page, next) = reg.list_terminals(filter, after.as_deref(), size).expect("page");
        out.extend(page);
        match next {
            Some(n) => after = Some(n),
            None => return out,
        }
    }
}

/// The running counts equal a full scan, and every filter combination (through the indexes)
/// lists exactly what a scan admits, in serial order, across pages.
fn assert_counts_and_filters_match_a_scan(reg: &Registry) {
    let everything = all_pages(reg, &TerminalFilter::default(), 1000);
    assert_eq!(reg.terminal_counts().expect("counts"), TerminalCounts::of(&everything));
    let states = [
        None,
        Some(TerminalState::Registered),
        Some(TerminalState::Issued),
        Some(TerminalState::Provisioned),
        Some(TerminalState::Active),
        Some(TerminalState::Revoked),
    ];
    let classes = [None, Some("I"), Some("II"), Some("III")];
    let makers = [None, Some("HSTA"), Some("HSTB"), Some("HSTM"), Some("NONE")];
    let lots = [None, Some("L0"), Some("L1"), Some("L2")];
    for state in states {
        for class in classes {
            for maker in makers {
                for lot in lots {
                    let filter = TerminalFilter {
                        state,
                        class: class.map(Into::into),
                        manufacturer: maker.map(Into::into),
                        lot: lot.map(Into::into),
                    };
                    let expected: Vec<&TerminalRecord> = everything
                        .iter()
                        .filter(|t| {
                            state.is_none_or(|s| s == t.state)
                                && class.is_none_or(|c| c == t.class)
                                && maker.is_none_or(|m| m == t.manufacturer)
                                && lot.is_none_or(|l| t.lot.as_deref() == Some(l))
                        })
                        .collect();
                    let listed = all_pages(reg, &filter, 2);
                    assert_eq!(listed.iter().collect::<Vec<_>>(), expected, "{filter:?}");
                }
            }
        }
    }
}

/// A fleet of 30 terminals over three makers, three classes and three lots (one without a lot),
/// taken through register, issue (registering on the fly), provisioning, activation, a refused
/// write, a single and a bulk revocation; counts and filtered pages checked after each step.
fn running_counts_and_filter_indexes_match_a_full_scan(kind: Kind) {
    let (_d, reg) = open(kind);
    let makers = ["HSTM", "HSTA", "HSTB"];
    let serial = |i: usize| format!("{}01{:010}", makers[i % 3], i);
    let shape = |i: usize, t: &mut TerminalRecord| {
        t.class = ["I", "II", "III"][i % 3 / 2 + i % 2].into();
        t.lot = [Some("L0".to_owned()), Some("L1".to_owned()), None][i % 4 % 3].clone();
    };
    for i in 0..12 {
        let mut t = terminal(&serial(i));
        shape(i, &mut t);
        reg.register_terminal(&t, &ev("register", &t.serial)).expect("register");
    }
    assert_counts_and_filters_match_a_scan(&reg);
    // Refused writes change nothing.
    let t = terminal(&serial(0));
    assert_eq!(reg.register_terminal(&t, &ev("register", &t.serial)), Err(RegistryError::TerminalExists(serial(0))));
    for i in 6..30 {
        let mut issue = issue(&format!("r{i}"), &serial(i), &format!("C{i:03}"), &format!("k{i}"));
        shape(i, &mut issue.terminal);
        reg.record_terminal_issue(&issue, &ev("issue", &serial(i))).expect("issue");
    }
    assert_counts_and_filters_match_a_scan(&reg);
    let prov = Provisioning { station: "station-1".into(), duration_ms: 1, firmware: "1".into(), at_ms: 4 };
    for i in 10..24 {
        reg.confirm_provisioning(&serial(i), &format!("C{i:03}"), &prov, &ev("confirm", &serial(i))).expect("confirm");
    }
    for i in 14..20 {
        let a = ActivationRecord {
            terminal: serial(i),
            operator: "op".into(),
            institution: "H".into(),
            latitude: 31.2,
            longitude: 121.5,
            at_ms: 5,
            method: Default::default(),
            certificate: None,
        };
        reg.activate(&a, &ev("activate", &serial(i))).expect("activate");
    }
    for i in [8, 12, 16] {
        reg.revoke(&format!("C{i:03}"), RevocationReason::KeyCompromise, 9, None, &ev("revoke", "c")).expect("revoke");
    }
    assert_counts_and_filters_match_a_scan(&reg);
    add_admin(&reg, "admin-1", "init");
    add_admin(&reg, "admin-2", "init");
    let filter = BulkFilter { lot: Some("L1".into()), ..Default::default() };
    let bulk = Approval {
        id: "bulk-1".into(),
        requested_by: "admin-1".into(),
        created_ms: 10,
        request: ApprovalRequest::BulkRevocation {
            matched: reg.bulk_matches(&filter).expect("matches").len() as u64,
            filter,
            reason: RevocationReason::Superseded,
            invalidity_ms: None,
        },
        state: ApprovalState::Pending,
    };
    reg.request_approval(&bulk, &ev("bulk", "L1")).expect("request");
    let done = reg.decide_approval("bulk-1", "admin-2", Decision::Approve, 11, &ev("approve", "bulk-1")).expect("ok");
    assert!(matches!(&done.state, ApprovalState::Approved { revoked, .. } if !revoked.is_empty()));
    let counts = reg.terminal_counts().expect("counts");
    assert_eq!((counts.total, counts.by_manufacturer.values().sum::<u64>()), (30, 30));
    assert_counts_and_filters_match_a_scan(&reg);
}

/// Terminals of every state, class, maker and lot, as an older build stored them.
fn older_fleet() -> Vec<TerminalRecord> {
    let states = [TerminalState::Registered, TerminalState::Issued, TerminalState::Active, TerminalState::Revoked];
    (0..23)
        .map(|i| {
            let mut t = terminal(&format!("{}01{:010}", ["HSTM", "HSTA", "HSTB"][i % 3], i));
            t.state = states[i % 4];
            t.class = ["I", "II", "III"][i % 3 / 2 + i % 2].into();
            t.lot = [Some("L0".to_owned()), Some("L2".to_owned()), None][i % 5 % 3].clone();
            t
        })
        .collect()
}

/// A redb registry written before the counts and filter indexes existed gets them on open.
#[test]
fn an_older_redb_registry_gets_its_counts_and_indexes_on_open() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("old.redb");
    {
        let db = redb::Database::create(&path).expect("create");
        let txn = db.begin_write().expect("txn");
        {
            let def: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("terminals");
            let mut table = txn.open_table(def).expect("terminals");
            for t in older_fleet() {
                table.insert(t.serial.as_str(), serde_json::to_vec(&t).expect("json").as_slice()).expect("put");
            }
        }
        txn.commit().expect("commit");
    }
    let reg = Registry::open(&path).expect("open");
    assert_eq!(reg.terminal_counts().expect("counts").total, 23);
    assert_counts_and_filters_match_a_scan(&reg);
    drop(reg);
    // Built once; the counts then follow writes, across a reopen.
    let reg = Registry::open(&path).expect("reopen");
    let t = terminal("HSTC010000000099");
    reg.register_terminal(&t, &ev("register", &t.serial)).expect("register");
    assert_eq!(reg.terminal_counts().expect("counts").by_manufacturer.get("HSTC"), Some(&1));
    assert_counts_and_filters_match_a_scan(&reg);
}

/// A PostgreSQL registry at schema version 1 gets its counts computed by the migration to 2.
#[test]
fn an_older_postgres_registry_gets_its_counts_from_the_migration() {
    let pg = registry::testing::PgServer::start().expect("PostgreSQL test server");
    let mut c = postgres::Client::connect(&pg.url(), postgres::NoTls).expect("connect");
    c.batch_execute(
        "CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .expect("migrations table");
    c.batch_execute(include_str!("../migrations/postgres/0001_initial.sql")).expect("version 1");
    c.execute("INSERT INTO schema_migrations (version) VALUES (1)", &[]).expect("v1");
    for t in older_fleet() {
        c.execute(
            "INSERT INTO terminals (serial, class, manufacturer, model, lot, state, record) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&t.serial, &t.class, &t.manufacturer, &t.model, &t.lot, &t.state.as_str(), &serde_json::to_vec(&t).expect("json")],
        )
        .expect("old row");
    }
    let applied = Registry::migrate_postgres(&pg.url()).expect("migrate");
    assert_eq!(applied.first(), Some(&2));
    let reg = Registry::open_postgres(&pg.url()).expect("open");
    assert_eq!(reg.terminal_counts().expect("counts").total, 23);
    assert_counts_and_filters_match_a_scan(&reg);
    // From then on the trigger keeps them, whoever writes: a raw state change is counted too.
    c.execute("UPDATE terminals SET state = 'revoked' WHERE serial = 'HSTM010000000000'", &[]).expect("raw");
    c.execute("DELETE FROM terminals WHERE serial = 'HSTA010000000001'", &[]).expect("raw delete");
    let mut by_columns = TerminalCounts::default();
    for (dimension, column) in [("state", "state"), ("class", "class"), ("manufacturer", "manufacturer")] {
        let sql = format!("SELECT {column}, count(*) FROM terminals GROUP BY {column}");
        for row in c.query(&sql, &[]).expect("group") {
            let n: i64 = row.get(1);
            let map = match dimension {
                "state" => &mut by_columns.by_state,
                "class" => &mut by_columns.by_class,
                _ => &mut by_columns.by_manufacturer,
            };
            map.insert(row.get(0), n as u64);
        }
    }
    by_columns.total = 22;
    assert_eq!(reg.terminal_counts().expect("counts"), by_columns);
}

#[test]
fn state_survives_reopen_and_backup_restores_under_load() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("r.redb");
    {
        let reg = Registry::open(&path).expect("open");
        reg.record_terminal_issue(&issue("r1", "HSTM01261100000K", "EE01", "k1"), &ev("issue", "t")).expect("issue");
        let p = PrincipalRecord {
            name: "station-1".into(),
            role: "station".into(),
            cert_serial: "EE02".into(),
            manufacturers: vec!["HSTM".into()],
            enabled: true,
            created_by: "admin".into(),
            pending_approval: None,
        };
        let mut c = issue("r2", "HSTM00000000000X", "EE02", "k2").cert;
        c.subject = CertSubject::Principal { name: "station-1".into() };
        reg.add_principal(&p, &c, b"der", &ev("principal_add", "station-1")).expect("principal");
        assert_eq!(
            reg.add_principal(&p, &c, b"der", &ev("principal_add", "station-1")),
            Err(RegistryError::PrincipalExists("station-1".into()))
        );
        reg.set_principal_enabled("station-1", false, &ev("principal_disable", "station-1")).expect("disable");
    }
    let reg = Arc::new(Registry::open(&path).expect("reopen"));
    assert!(!reg.principal("station-1").expect("p").expect("p").enabled);
    assert_eq!(reg.certificate("EE01").expect("c").expect("c").1, b"DER of EE01");

    // Back up while another thread keeps writing.
    let backup = dir.path().join("backup.redb");
    std::thread::scope(|s| {
        let writer = reg.clone();
        s.spawn(move || {
            for i in 0..50 {
                writer.audit(&ev("heartbeat", &format!("{i}"))).expect("write");
            }
        });
        reg.backup(&backup).expect("backup");
    });
    assert!(matches!(reg.backup(&backup), Err(RegistryError::TargetExists(_))));
    let restored_path = dir.path().join("restored.redb");
    let summary = Registry::restore(&backup, &restored_path).expect("restore");
    // The snapshot has the 3 entries written before it and whichever heartbeats preceded it.
    let live = reg.verify_audit_chain().expect("live chain");
    assert!(summary.entries >= 3 && summary.entries <= live.entries, "{summary:?} vs {live:?}");
    let restored = Registry::open(&restored_path).expect("open restored");
    assert_eq!(restored.verify_audit_chain().expect("chain"), summary);
    assert_eq!(restored.certificate("EE01").expect("c").expect("c").0.serial, "EE01");
    assert!(matches!(Registry::restore(&backup, &restored_path), Err(RegistryError::TargetExists(_))));
}

fn lot_terminal(serial: &str, lot: &str) -> TerminalIssue {
    let mut i = issue(&format!("r-{serial}"), serial, &format!("C-{serial}"), &format!("k-{serial}"));
    i.terminal.lot = Some(lot.into());
    i
}

fn bulk_revocation_needs_a_second_administrator_and_revokes_exactly_the_lot(kind: Kind) {
    let (_d, reg) = open(kind);
    for name in ["admin-1", "admin-2", "admin-3"] {
        add_admin(&reg, name, "ca-server init");
    }
    for (s, lot) in [("HSTM01261100000K", "L1"), ("HSTM01261100001I", "L1"), ("HSTM01261100002G", "L2")] {
        reg.record_terminal_issue(&lot_terminal(s, lot), &ev("issue", s)).expect("issue");
    }
    let filter = BulkFilter { lot: Some("L1".into()), ..Default::default() };
    assert_eq!(reg.bulk_matches(&filter).expect("matches").len(), 2);
    let bulk = |filter: BulkFilter| ApprovalRequest::BulkRevocation {
        filter,
        reason: RevocationReason::KeyCompromise,
        invalidity_ms: Some(5),
        matched: 2,
    };
    let approval = Approval {
        id: "a1".into(),
        requested_by: "admin-1".into(),
        created_ms: 10,
        request: bulk(filter.clone()),
        state: ApprovalState::Pending,
    };
    let empty = Approval { id: "a0".into(), request: bulk(BulkFilter::default()), ..approval.clone() };
    assert_eq!(reg.request_approval(&empty, &ev("bulk", "*")), Err(RegistryError::EmptyFilter));
    reg.request_approval(&approval, &ev("bulk", "L1")).expect("request");
    assert_eq!(reg.request_approval(&approval, &ev("bulk", "L1")), Err(RegistryError::ApprovalExists("a1".into())));
    // Without approval nothing changes.
    assert!(reg.revoked_certificates().expect("revoked").is_empty());
    assert_eq!(reg.approvals(true).expect("pending").len(), 1);
    assert_eq!(
        reg.decide_approval("a1", "admin-1", Decision::Approve, 20, &ev("approve", "a1")),
        Err(RegistryError::SameApprover("admin-1".into()))
    );
    assert_eq!(
        reg.decide_approval("nope", "admin-2", Decision::Approve, 20, &ev("approve", "x")),
        Err(RegistryError::ApprovalNotFound("nope".into()))
    );
    let done = reg.decide_approval("a1", "admin-2", Decision::Approve, 20, &ev("approve", "a1")).expect("approve");
    let ApprovalState::Approved { by, revoked, .. } = &done.state else { panic!("{done:?}") };
    assert_eq!((by.as_str(), revoked.len()), ("admin-2", 2));
    let revoked: Vec<String> = reg.revoked_certificates().expect("revoked").into_iter().map(|r| r.serial).collect();
    assert_eq!(revoked, vec!["C-HSTM01261100000K".to_owned(), "C-HSTM01261100001I".to_owned()]);
    assert_eq!(reg.terminal("HSTM01261100002G").expect("t").expect("t").state, TerminalState::Issued, "L2 untouched");
    assert_eq!(
        reg.decide_approval("a1", "admin-3", Decision::Reject, 30, &ev("reject", "a1")),
        Err(RegistryError::ApprovalDecided("a1".into()))
    );
    assert!(reg.approvals(true).expect("pending").is_empty());

    // A rejected request revokes nothing.
    let l2 = Approval {
        id: "a2".into(),
        request: bulk(BulkFilter { lot: Some("L2".into()), ..Default::default() }),
        ..approval
    };
    reg.request_approval(&l2, &ev("bulk", "L2")).expect("request");
    let rejected = reg.decide_approval("a2", "admin-2", Decision::Reject, 40, &ev("reject", "a2")).expect("reject");
    assert!(matches!(rejected.state, ApprovalState::Rejected { .. }));
    assert_eq!(reg.revoked_certificates().expect("revoked").len(), 2);
}

#[test]
fn hold_is_lifted_only_for_certificate_hold_and_crl_numbers_survive_reopen() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("r.redb");
    {
        let reg = Registry::open(&path).expect("open");
        reg.record_terminal_issue(&lot_terminal("HSTM01261100000K", "L1"), &ev("issue", "t")).expect("issue");
        reg.record_terminal_issue(&lot_terminal("HSTM01261100001I", "L1"), &ev("issue", "t")).expect("issue");
        let held = "C-HSTM01261100000K";
        reg.revoke(held, RevocationReason::CertificateHold, 10, None, &ev("hold", held)).expect("hold");
        let t = reg.terminal("HSTM01261100000K").expect("t").expect("t");
        assert_eq!(t.active_cert.as_deref(), Some(held), "a hold keeps the terminal's certificate");
        assert_eq!(reg.revoked_certificates().expect("r").len(), 1);
        reg.unrevoke(held, 20, &ev("unhold", held)).expect("unhold");
        assert!(reg.revoked_certificates().expect("r").is_empty());
        assert_eq!(reg.released_since(15).expect("released").len(), 1);
        assert!(reg.released_since(21).expect("released").is_empty());
        assert_eq!(reg.unrevoke(held, 30, &ev("unhold", held)), Err(RegistryError::NotOnHold(held.into())));
        let other = "C-HSTM01261100001I";
        reg.revoke(other, RevocationReason::KeyCompromise, 10, None, &ev("revoke", other)).expect("revoke");
        assert_eq!(reg.unrevoke(other, 30, &ev("unhold", other)), Err(RegistryError::NotOnHold(other.into())));
        assert_eq!((reg.next_crl_number().expect("n"), reg.next_crl_number().expect("n")), (1, 2));
    }
    let reg = Registry::open(&path).expect("reopen");
    assert_eq!(reg.next_crl_number().expect("n"), 3, "never reused after a restart");
}

fn holds_become_final_compromised_keys_stay_out_and_revoked_replays_are_refused(kind: Kind) {
    let (_d, reg) = open(kind);
    let t = "HSTM01261100000K";
    let first = lot_terminal(t, "L1");
    reg.record_terminal_issue(&first, &ev("issue", t)).expect("issue");
    let cert = first.cert.serial.clone();
    let seq0 = reg.revocation_snapshot().expect("snapshot").seq;

    // A hold can become a final revocation; the index moves on in commit order.
    reg.revoke(&cert, RevocationReason::CertificateHold, 10, None, &ev("hold", &cert)).expect("hold");
    let held = reg.revocation_snapshot().expect("snapshot");
    reg.revoke(&cert, RevocationReason::KeyCompromise, 20, Some(5), &ev("revoke", &cert)).expect("final");
    let snap = reg.revocation_snapshot().expect("snapshot");
    assert!(seq0 < held.seq && held.seq < snap.seq);
    assert_eq!(snap.revoked.len(), 1);
    assert_eq!((snap.revoked[0].reason, snap.revoked[0].seq), (RevocationReason::KeyCompromise, snap.seq));
    assert_eq!(
        reg.revoke(&cert, RevocationReason::Superseded, 30, None, &ev("revoke", &cert)),
        Err(RegistryError::AlreadyRevoked(cert.clone())),
        "a final revocation is final"
    );
    assert_eq!(reg.terminal(t).expect("t").expect("t").state, TerminalState::Revoked);

    // The same request id now refuses to hand the revoked certificate back.
    assert_eq!(reg.replayed(&first.request_id, &first.request_hash), Err(RegistryError::AlreadyRevoked(cert.clone())));

    // The compromised key is never certified again, for any terminal.
    let elsewhere = issue("r-again", "HSTM01261100001I", "C-again", &first.cert.key_fingerprint);
    assert_eq!(
        reg.record_terminal_issue(&elsewhere, &ev("issue", t)),
        Err(RegistryError::KeyCompromised(cert.clone()))
    );
    let fresh = issue("r-fresh", "HSTM01261100001I", "C-fresh", "k-fresh");
    reg.record_terminal_issue(&fresh, &ev("issue", t)).expect("a new key is fine");
}

fn a_released_certificate_superseded_later_is_listed_once(kind: Kind) {
    let (_d, reg) = open(kind);
    let t = "HSTM01261100000K";
    let first = lot_terminal(t, "L1");
    reg.record_terminal_issue(&first, &ev("issue", t)).expect("issue");
    let cert = first.cert.serial.clone();
    reg.revoke(&cert, RevocationReason::CertificateHold, 10, None, &ev("hold", &cert)).expect("hold");
    reg.unrevoke(&cert, 20, &ev("unhold", &cert)).expect("release");
    assert_eq!(reg.revocation_snapshot().expect("s").released.len(), 1);
    let mut next = issue("r2", t, "C2", "k2");
    next.reissue = true;
    reg.record_terminal_issue(&next, &ev("reissue", t)).expect("reissue");
    let snap = reg.revocation_snapshot().expect("s");
    assert!(snap.released.is_empty(), "superseded: no longer released");
    assert_eq!(
        snap.revoked.iter().map(|r| (r.serial.as_str(), r.reason)).collect::<Vec<_>>(),
        vec![(cert.as_str(), RevocationReason::Superseded)]
    );
}

fn retries_racing_their_first_call_all_get_its_certificate(kind: Kind) {
    let (_d, reg) = open(kind);
    let same = issue("r1", "HSTM01261100000K", "DD01", "k1");
    let barrier = std::sync::Barrier::new(8);
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    reg.record_terminal_issue(&same, &ev("issue", "t"))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let issued = results.iter().filter(|r| matches!(r, Ok(IssueOutcome::Issued { .. }))).count();
    let replayed = results
        .iter()
        .filter(|r| matches!(r, Ok(IssueOutcome::Replayed { cert, .. }) if cert.serial == "DD01"))
        .count();
    assert_eq!((issued, replayed), (1, 7), "{results:?}");
}

fn event_of(actor: &str, action: &str, target: &str) -> AuditEvent {
    AuditEvent { actor: actor.into(), ..ev(action, target) }
}

fn seqs(entries: &[AuditEntry]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}

/// A terminal's entries and a principal's last activity are found through the audit indexes
/// behind more than 10,000 newer entries (the most a tail may fetch), newest first, paged; the
/// indexes follow an entry rewritten in place.
fn audit_indexes_find_entries_behind_ten_thousand_newer_ones(kind: Kind) {
    let (_d, reg) = open(kind);
    reg.audit(&event_of("admin-old", "register", "HSTM01261100000K")).expect("audit");
    reg.audit(&event_of("station-1", "issue", "HSTM01261100000K")).expect("audit");
    let fillers: Vec<AuditEvent> =
        (0..10_001).map(|i| event_of("station-2", "issue", &format!("HSTB{i:012}"))).collect();
    for chunk in fillers.chunks(2_000) {
        reg.audit_all(chunk).expect("fill");
    }
    let len = reg.audit_len().expect("len");
    assert_eq!(len, 10_003);
    assert!(
        reg.audit_tail(10_000).expect("tail").iter().all(|e| e.event.target != "HSTM01261100000K"),
        "the newest 10,000 do not reach it"
    );

    let about = AuditBy::Target("HSTM01261100000K".into());
    assert_eq!(seqs(&reg.audit_by(&about, None, 10).expect("by target")), vec![2, 1]);
    assert_eq!(seqs(&reg.audit_by(&about, None, 1).expect("first page")), vec![2]);
    assert_eq!(seqs(&reg.audit_by(&about, Some(2), 10).expect("next page")), vec![1]);
    assert_eq!(seqs(&reg.audit_by(&about, Some(1), 10).expect("past the end")), Vec::<u64>::new());
    let last = reg.audit_by(&AuditBy::Actor("admin-old".into()), None, 1).expect("by actor");
    assert_eq!((seqs(&last), last[0].event.action.as_str()), (vec![1], "register"));
    assert_eq!(
        seqs(&reg.audit_by(&AuditBy::Actor("station-2".into()), None, 3).expect("newest three")),
        vec![len, len - 1, len - 2]
    );
    assert!(reg.audit_by(&AuditBy::Actor("nobody".into()), None, 10).expect("none").is_empty());

    // Entry 1 rewritten in place (a test hook): indexed under its new actor only.
    let raw = reg.raw_audit(1).expect("raw").expect("present");
    let moved = String::from_utf8(raw.clone()).expect("json").replace("admin-old", "admin-new").into_bytes();
    reg.tamper_audit(1, Some(moved)).expect("tamper");
    assert!(reg.audit_by(&AuditBy::Actor("admin-old".into()), None, 10).expect("old").is_empty());
    assert_eq!(seqs(&reg.audit_by(&AuditBy::Actor("admin-new".into()), None, 10).expect("new")), vec![1]);
    reg.tamper_audit(1, Some(raw)).expect("restore");
    assert_eq!(seqs(&reg.audit_by(&AuditBy::Actor("admin-old".into()), None, 10).expect("back")), vec![1]);
    reg.verify_audit_chain().expect("intact");
}

/// `n` bytes of hex that do not compress (so PostgreSQL cannot shrink them into an index row).
fn incompressible(n: usize) -> String {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b"0123456789ABCDEF"[(x & 15) as usize])
        })
        .collect()
}

/// A refusal audited with a 10 KB target (a station's garbage serial) and actor is written on
/// both backends; such fields are not indexed (no valid serial or principal is that long), the
/// entry is in the log and the chain, and short keys are still found.
fn an_audit_entry_with_a_ten_kilobyte_target_is_written(kind: Kind) {
    let (_d, reg) = open(kind);
    let long = incompressible(10 * 1024);
    reg.audit(&event_of("station-1", "issue", "HSTM01261100000K")).expect("audit");
    reg.audit(&event_of("station-1", "issue", &long)).expect("a 10 KB target is audited");
    reg.audit(&event_of(&long, "issue", "HSTM01261100000K")).expect("a 10 KB actor is audited");
    assert_eq!(reg.audit_len().expect("len"), 3);
    assert_eq!(reg.audit_tail(2).expect("tail")[0].event.target, long);
    assert!(reg.audit_by(&AuditBy::Target(long.clone()), None, 10).expect("long target").is_empty());
    assert!(reg.audit_by(&AuditBy::Actor(long.clone()), None, 10).expect("long actor").is_empty());
    assert_eq!(seqs(&reg.audit_by(&AuditBy::Target("HSTM01261100000K".into()), None, 10).expect("short")), vec![3, 1]);
    assert_eq!(seqs(&reg.audit_by(&AuditBy::Actor("station-1".into()), None, 10).expect("short")), vec![2, 1]);
    // At the bound exactly: indexed.
    let bounded = incompressible(registry::audit::INDEXED_FIELD_MAX_BYTES);
    reg.audit(&event_of("station-1", "issue", &bounded)).expect("audit");
    assert_eq!(seqs(&reg.audit_by(&AuditBy::Target(bounded), None, 10).expect("bounded")), vec![4]);
    reg.verify_audit_chain().expect("intact");
}

/// A model or lot past the bound is refused alike on both backends (PostgreSQL could not index
/// it), on registration and on issuance that registers; at the bound it is stored.
fn terminal_fields_past_the_bound_are_refused_on_both_backends(kind: Kind) {
    let (_d, reg) = open(kind);
    let max = registry::TERMINAL_FIELD_MAX_BYTES;
    let too_long = |field| RegistryError::FieldTooLong { field, len: 3000, max };
    let mut t = terminal("HSTM01261100000K");
    t.model = incompressible(3000);
    assert_eq!(reg.register_terminal(&t, &ev("register", &t.serial)), Err(too_long("model")));
    let mut t = terminal("HSTM01261100000K");
    t.lot = Some(incompressible(3000));
    assert_eq!(reg.register_terminal(&t, &ev("register", &t.serial)), Err(too_long("lot")));
    let mut t = terminal("HSTM01261100000K");
    t.manufacturer = incompressible(3000);
    assert_eq!(reg.register_terminal(&t, &ev("register", &t.serial)), Err(too_long("manufacturer")));
    let mut i = issue("r1", "HSTM01261100001K", "C1", "k1");
    i.terminal.lot = Some(incompressible(3000));
    assert_eq!(reg.record_terminal_issue(&i, &ev("issue", "HSTM01261100001K")), Err(too_long("lot")));
    assert_eq!(reg.terminal("HSTM01261100000K").expect("read"), None);
    assert_eq!(reg.terminal("HSTM01261100001K").expect("read"), None);
    assert_eq!(reg.audit_len().expect("len"), 0, "a refusal writes nothing");
    let mut t = terminal("HSTM01261100000K");
    (t.model, t.lot) = (incompressible(max), Some(incompressible(max)));
    reg.register_terminal(&t, &ev("register", &t.serial)).expect("at the bound");
    assert_eq!(reg.terminal(&t.serial).expect("read"), Some(t));
}

/// Entries as an older build stored them: a chain of `n` (each about `HSTM…K` by `admin`).
fn older_audit(n: u64) -> Vec<(u64, Vec<u8>)> {
    let mut prev = registry::audit::GENESIS.to_owned();
    (1..=n)
        .map(|seq| {
            let event = event_of(if seq % 2 == 0 { "admin" } else { "station-1" }, "issue", "HSTM01261100000K");
            let hash = registry::audit::entry_hash(seq, &event, &prev);
            let entry = AuditEntry { seq, event, prev: std::mem::replace(&mut prev, hash.clone()), hash };
            (seq, serde_json::to_vec(&entry).expect("json"))
        })
        .collect()
}

/// A redb registry written before the hourly counts existed gets them from its certificates on
/// open, once: the same counts the recording transactions keep.
#[test]
fn an_older_redb_registry_gets_its_hourly_counts_on_open() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("old.redb");
    let reg = Registry::open(&path).expect("open");
    for (i, (req, serial)) in [("r1", "HSTM01261100000K"), ("r2", "HSTM01261100001I")].into_iter().enumerate() {
        let mut t = issue(req, serial, &format!("C{i}"), &format!("k{i}"));
        t.cert.issued_ms = i as u64 * HOUR_MS + 5;
        reg.record_terminal_issue(&t, &ev("issue", serial)).expect("issue");
    }
    let prov = Provisioning { station: "station-1".into(), duration_ms: 1, firmware: "1".into(), at_ms: 3 * HOUR_MS };
    reg.confirm_provisioning("HSTM01261100000K", "C0", &prov, &ev("confirm", "x")).expect("confirm");
    let kept = reg.hourly_counts(0).expect("counts");
    assert_eq!(kept.len(), 3, "{kept:?}");
    drop(reg);
    {
        let db = redb::Database::create(&path).expect("open raw");
        let txn = db.begin_write().expect("txn");
        let def: redb::TableDefinition<(u64, &str, &str), u64> = redb::TableDefinition::new("hourly_counts");
        assert!(txn.delete_table(def).expect("drop"), "the table existed");
        let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
        txn.open_table(meta).expect("meta").remove("hourly_counted").expect("unmark");
        txn.commit().expect("commit");
    }
    assert_eq!(Registry::open(&path).expect("older file").hourly_counts(0).expect("counts"), kept);
    assert_eq!(Registry::open(&path).expect("again").hourly_counts(0).expect("counts"), kept, "counted once");
}

/// A redb registry written before the audit indexes existed gets them on open.
#[test]
fn an_older_redb_registry_gets_its_audit_indexes_on_open() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("old.redb");
    {
        let db = redb::Database::create(&path).expect("create");
        let txn = db.begin_write().expect("txn");
        {
            let def: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("audit");
            let mut table = txn.open_table(def).expect("audit");
            for (seq, bytes) in older_audit(5) {
                table.insert(seq, bytes.as_slice()).expect("put");
            }
        }
        txn.commit().expect("commit");
    }
    let reg = Registry::open(&path).expect("open");
    reg.verify_audit_chain().expect("the old chain");
    assert_eq!(seqs(&reg.audit_by(&AuditBy::Actor("admin".into()), None, 10).expect("by actor")), vec![4, 2]);
    drop(reg);
    let reg = Registry::open(&path).expect("reopen");
    reg.audit(&event_of("admin", "revoke", "HSTM01261100000K")).expect("append");
    assert_eq!(
        seqs(&reg.audit_by(&AuditBy::Target("HSTM01261100000K".into()), None, 10).expect("by target")),
        vec![6, 5, 4, 3, 2, 1]
    );
}

/// A PostgreSQL registry at schema version 3 gets its audit indexed by migration 7; an
/// entry that does not parse, or whose target is 10 KB, stays unindexed instead of failing the
/// migration; an older build's later appends are indexed by the migration's insert trigger.
#[test]
fn an_older_postgres_registry_gets_its_audit_indexes_from_the_migration() {
    let pg = registry::testing::PgServer::start().expect("PostgreSQL test server");
    let mut c = postgres::Client::connect(&pg.url(), postgres::NoTls).expect("connect");
    c.batch_execute(
        "CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .expect("migrations table");
    for (version, sql) in [
        (1, include_str!("../migrations/postgres/0001_initial.sql")),
        (2, include_str!("../migrations/postgres/0002_terminal_counts.sql")),
        (3, include_str!("../migrations/postgres/0003_activation_challenges.sql")),
    ] {
        c.batch_execute(sql).expect("older version");
        c.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[&version]).expect("version");
    }
    for (seq, bytes) in older_audit(5) {
        c.execute("INSERT INTO audit (seq, entry) VALUES ($1, $2)", &[&(seq as i64), &bytes]).expect("old row");
    }
    c.execute("INSERT INTO audit (seq, entry) VALUES (6, '\\xff00')", &[]).expect("unparsable row");
    // An older build audited a 10 KB target: the migration leaves it unindexed instead of failing.
    let long = event_of("station-1", "issue", &incompressible(10 * 1024));
    let entry = AuditEntry { seq: 7, hash: registry::audit::entry_hash(7, &long, "x"), event: long, prev: "x".into() };
    let bytes = serde_json::to_vec(&entry).expect("json");
    c.execute("INSERT INTO audit (seq, entry) VALUES (7, $1)", &[&bytes]).expect("long row");
    let applied = Registry::migrate_postgres(&pg.url()).expect("migrate");
    assert_eq!(applied, vec![4, 5, 6, 7, 8, 9]);
    let reg = Registry::open_postgres(&pg.url()).expect("open");
    assert_eq!(seqs(&reg.audit_by(&AuditBy::Actor("admin".into()), None, 10).expect("by actor")), vec![4, 2]);
    assert_eq!(
        seqs(&reg.audit_by(&AuditBy::Target("HSTM01261100000K".into()), Some(5), 2).expect("by target")),
        vec![4, 3]
    );
    assert_eq!(seqs(&reg.audit_by(&AuditBy::Actor("station-1".into()), None, 10).expect("by actor")), vec![7, 5, 3, 1]);
    // An instance of the older build still serving (rolling upgrade) appends without the columns.
    let late = AuditEntry {
        seq: 8,
        hash: "y".into(),
        event: event_of("admin", "revoke", "HSTM01261100000K"),
        prev: "x".into(),
    };
    let bytes = serde_json::to_vec(&late).expect("json");
    c.execute("INSERT INTO audit (seq, entry) VALUES (8, $1)", &[&bytes]).expect("an older build's append");
    assert_eq!(seqs(&reg.audit_by(&AuditBy::Actor("admin".into()), None, 10).expect("by actor")), vec![8, 4, 2]);
    assert_eq!(seqs(&reg.audit_by(&AuditBy::Target("HSTM01261100000K".into()), None, 1).expect("by target")), vec![8]);
}

fn hourly_counts_count_issues_and_confirmations_by_hour_and_station(kind: Kind) {
    let (_d, reg) = open(kind);
    let (h5, h6) = (5 * HOUR_MS, 6 * HOUR_MS);
    let at = |req: &str, serial: &str, cert: &str, station: &str, ms: u64| {
        let mut i = issue(req, serial, cert, &format!("k-{req}"));
        (i.station, i.cert.issued_ms) = (station.into(), ms);
        i
    };
    let a = at("r1", "HSTM01261100000K", "C1", "station-a", h5 + 10);
    reg.record_terminal_issue(&a, &ev("issue", "x")).expect("issue");
    // A replay answers from the stored result and counts nothing.
    assert!(matches!(reg.record_terminal_issue(&a, &ev("issue", "x")), Ok(IssueOutcome::Replayed { .. })));
    reg.record_terminal_issue_held(&at("r2", "HSTM01261100001I", "C2", "station-a", h5 + 20), true, &ev("issue", "x"))
        .expect("held issue");
    reg.record_terminal_issue(&at("r3", "HSTM01261100002G", "C3", "station-b", h6 - 1), &ev("issue", "x"))
        .expect("issue");
    reg.record_terminal_issue(&at("r4", "HSTM01261100003E", "C4", "station-b", h6), &ev("issue", "x")).expect("issue");
    // A refused issue (the key is another terminal's) counts nothing.
    let mut clone = at("r5", "HSTM01261100004C", "C5", "station-b", h6);
    clone.cert.key_fingerprint = "k-r1".into();
    assert!(reg.record_terminal_issue(&clone, &ev("issue", "x")).is_err());

    let prov = |station: &str, ms: u64| Provisioning {
        station: station.into(),
        duration_ms: 1,
        firmware: "1".into(),
        at_ms: ms,
    };
    reg.confirm_provisioning("HSTM01261100000K", "C1", &prov("station-a", h6 + 5), &ev("confirm", "x"))
        .expect("confirm");
    // A re-confirmation keeps the first record and counts nothing.
    reg.confirm_provisioning("HSTM01261100000K", "C1", &prov("station-a", h6 + 9), &ev("confirm", "x"))
        .expect("confirm again");
    reg.confirm_provisioning("HSTM01261100002G", "C3", &prov("station-b", h5 + 7), &ev("confirm", "x"))
        .expect("confirm");
    // A refused confirmation (another station's certificate) counts nothing.
    assert!(reg.confirm_provisioning("HSTM01261100003E", "C4", &prov("station-a", h6), &ev("confirm", "x")).is_err());

    let count =
        |hour: u64, station: &str, kind: HourlyKind, n: u64| HourlyCount { hour, station: station.into(), kind, n };
    assert_eq!(
        reg.hourly_counts(0).expect("counts"),
        vec![
            count(5, "station-a", HourlyKind::Issued, 2),
            count(5, "station-b", HourlyKind::Issued, 1),
            count(5, "station-b", HourlyKind::Provisioned, 1),
            count(6, "station-a", HourlyKind::Provisioned, 1),
            count(6, "station-b", HourlyKind::Issued, 1),
        ]
    );
    assert_eq!(
        reg.hourly_counts(6).expect("counts"),
        vec![count(6, "station-a", HourlyKind::Provisioned, 1), count(6, "station-b", HourlyKind::Issued, 1)]
    );
    assert_eq!(reg.hourly_counts(7).expect("counts"), vec![]);
}

on_both_backends!(
    one_active_certificate_per_terminal_and_idempotent_retries,
    life_cycle_confirm_activate_revoke,
    racing_issues_for_one_terminal_leave_exactly_one_certificate,
    audit_chain_detects_edits_removals_and_reordering,
    checkpoints_catch_a_consistently_rewritten_chain_and_a_cut_tail,
    nonces_are_single_use_within_their_window,
    paging_and_filters,
    bulk_revocation_needs_a_second_administrator_and_revokes_exactly_the_lot,
    holds_become_final_compromised_keys_stay_out_and_revoked_replays_are_refused,
    a_released_certificate_superseded_later_is_listed_once,
    retries_racing_their_first_call_all_get_its_certificate,
    running_counts_and_filter_indexes_match_a_full_scan,
    audit_indexes_find_entries_behind_ten_thousand_newer_ones,
    an_audit_entry_with_a_ten_kilobyte_target_is_written,
    hourly_counts_count_issues_and_confirmations_by_hour_and_station,
    terminal_fields_past_the_bound_are_refused_on_both_backends,
);
