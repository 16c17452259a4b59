//! What only the PostgreSQL backend has: versioned schema, constraints that hold whatever a
//! process checks, several instances on one database, a server that goes away and comes back.

use std::sync::Arc;

use registry::testing::PgServer;
use registry::*;

#[macro_use]
mod common;
use common::*;

fn server() -> PgServer {
    PgServer::start().expect("PostgreSQL test server")
}

#[test]
fn serve_refuses_an_unknown_schema_and_migrate_is_idempotent() {
    let pg = server();
    assert!(matches!(
        Registry::open_postgres(&pg.url()),
        Err(RegistryError::SchemaMismatch { found: 0, expected: POSTGRES_SCHEMA_VERSION })
    ));
    let all: Vec<i32> = (1..=POSTGRES_SCHEMA_VERSION).collect();
    assert_eq!(Registry::migrate_postgres(&pg.url()).expect("migrate"), all);
    assert_eq!(Registry::migrate_postgres(&pg.url()).expect("again"), Vec::<i32>::new());
    Registry::open_postgres(&pg.url()).expect("current schema opens");
    // A newer build migrated this database: this one neither serves nor "migrates" it.
    let mut c = postgres::Client::connect(&pg.url(), postgres::NoTls).expect("connect");
    let newer = POSTGRES_SCHEMA_VERSION + 1;
    c.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[&newer]).expect("newer");
    assert!(
        matches!(Registry::open_postgres(&pg.url()), Err(RegistryError::SchemaMismatch { found, .. }) if found == newer)
    );
    assert!(
        matches!(Registry::migrate_postgres(&pg.url()), Err(RegistryError::SchemaMismatch { found, .. }) if found == newer)
    );
    // A bad URL is refused without being repeated (it may hold a password).
    let e = Registry::open_postgres("postgres://u:s3cret@[::1").err().expect("bad url").to_string();
    assert!(!e.contains("s3cret"), "{e}");
}

#[test]
fn the_database_itself_refuses_a_second_active_certificate_a_reused_key_and_a_duplicate_serial() {
    let pg = server();
    Registry::migrate_postgres(&pg.url()).expect("migrate");
    let reg = Registry::open_postgres(&pg.url()).expect("open");
    reg.record_terminal_issue(&issue("r1", "HSTM01261100000K", "AA01", "k1"), &ev("issue", "t")).expect("issue");
    drop(reg);
    // Writers that skip every check of this crate (a bug, another tool) still cannot break them.
    let mut c = postgres::Client::connect(&pg.url(), postgres::NoTls).expect("connect");
    let insert_cert = |c: &mut postgres::Client, serial: &str, terminal: &str| {
        c.execute(
            "INSERT INTO certs (serial, terminal, key_fingerprint, status, record, der) VALUES ($1, $2, 'kx', 'good', '\\x7b7d', '\\x00')",
            &[&serial, &terminal],
        )
    };
    let constraint = |e: postgres::Error| e.as_db_error().and_then(|d| d.constraint().map(str::to_owned));
    let second = insert_cert(&mut c, "AA02", "HSTM01261100000K").expect_err("second active certificate");
    assert_eq!(constraint(second).as_deref(), Some("certs_one_active_per_terminal"));
    let dup = insert_cert(&mut c, "AA01", "HSTM01261100001I").expect_err("duplicate serial");
    assert_eq!(constraint(dup).as_deref(), Some("certs_pkey"));
    let key = c
        .execute("INSERT INTO pubkeys (fingerprint, terminal) VALUES ('k1', 'HSTM01261100001I')", &[])
        .expect_err("key certified for a second terminal");
    assert_eq!(constraint(key).as_deref(), Some("pubkeys_pkey"));
    let req = c.execute("INSERT INTO requests (id, record) VALUES ('r1', '\\x7b7d')", &[]).expect_err("request id");
    assert_eq!(constraint(req).as_deref(), Some("requests_pkey"));
    // A revoked certificate leaves room for the next one.
    c.execute("UPDATE certs SET status = 'revoked' WHERE serial = 'AA01'", &[]).expect("revoke");
    insert_cert(&mut c, "AA03", "HSTM01261100000K").expect("after revocation");
}

#[test]
fn two_instances_on_one_database_share_invariants_nonces_counters_and_one_audit_chain() {
    let pg = server();
    Registry::migrate_postgres(&pg.url()).expect("migrate");
    let a = Arc::new(Registry::open_postgres(&pg.url()).expect("instance A"));
    let b = Arc::new(Registry::open_postgres(&pg.url()).expect("instance B"));
    // The same terminal raced from both instances, 8 requests each: exactly one certificate.
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let reg = if i % 2 == 0 { a.clone() } else { b.clone() };
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
    // Distinct terminals from both: all recorded, once.
    std::thread::scope(|s| {
        for i in 0..32 {
            let reg = if i % 2 == 0 { a.clone() } else { b.clone() };
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
    assert_eq!(b.certificates().expect("all").len(), 33);
    // A nonce used on A is refused on B.
    a.use_nonce(b"nonce-1", 1000, 2000).expect("first use on A");
    assert_eq!(b.use_nonce(b"nonce-1", 1500, 2500), Err(RegistryError::NonceReplayed));
    // A revocation on A is seen by B's next read.
    a.revoke("DD00", RevocationReason::KeyCompromise, 5, None, &ev("revoke", "DD00")).expect("revoke on A");
    assert!(b.revocation_snapshot().expect("B").revoked.iter().any(|r| r.serial == "DD00"));
    // CRL numbers and ordinal blocks taken from both never repeat.
    let mut numbers: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let reg = if i % 2 == 0 { a.clone() } else { b.clone() };
                s.spawn(move || reg.next_crl_number().expect("crl number"))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=20).collect::<Vec<_>>());
    let first_a = a.reserve_ordinals(100).expect("A");
    let first_b = b.reserve_ordinals(100).expect("B");
    assert!(first_a.abs_diff(first_b) >= 100, "blocks overlap: {first_a} {first_b}");
    // One chain for both: every entry, in order, verifies from either instance.
    let summary = a.verify_audit_chain().expect("one chain");
    assert_eq!(summary.entries, 34);
    assert_eq!(b.verify_audit_chain().expect("same chain"), summary);
}

#[test]
fn a_restarted_server_fails_the_calls_in_between_then_serves_again_without_reopening() {
    let pg = server();
    Registry::migrate_postgres(&pg.url()).expect("migrate");
    let reg = Registry::open_postgres(&pg.url()).expect("open");
    reg.audit(&ev("before", "x")).expect("write");
    reg.terminal("nothing").expect("read");
    pg.restart().expect("restart");
    // The connections the registry held died with the server: the first calls fail as storage
    // errors (the CA answers UNAVAILABLE), later ones reconnect.
    let mut wrote = false;
    for _ in 0..5 {
        match reg.audit(&ev("after", "x")) {
            Ok(_) => {
                wrote = true;
                break;
            }
            Err(RegistryError::Storage(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(wrote, "the writer reconnects");
    let mut read = false;
    for _ in 0..10 {
        if reg.audit_tail(10).is_ok() {
            read = true;
            break;
        }
    }
    assert!(read, "readers reconnect");
    assert_eq!(reg.verify_audit_chain().expect("chain").entries, 2);
}

#[test]
fn a_redb_registry_is_copied_into_postgres_with_its_audit_chain_intact() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("registry.redb");
    {
        let reg = Registry::open(&path).expect("redb");
        add_admin(&reg, "admin", "init");
        for i in 0..5 {
            let serial = format!("T{i:015}");
            reg.record_terminal_issue(
                &issue(&format!("q{i}"), &serial, &format!("DD{i:02}"), &format!("key{i}")),
                &ev("issue", &serial),
            )
            .expect("issue");
        }
        reg.revoke("DD01", RevocationReason::KeyCompromise, 7, None, &ev("revoke", "DD01")).expect("revoke");
        // Enough registered terminals of several makers that a per-row count would show.
        for i in 0..300 {
            reg.register_terminal(&terminal(&format!("HS{:02}01261100{i:04}", i % 3)), &ev("register", "t"))
                .expect("register");
        }
        reg.next_crl_numbers(3).expect("crl numbers");
        let (seq, head) = reg.audit_head().expect("head").expect("entries");
        reg.add_audit_checkpoint(&AuditCheckpoint { seq, head, time_ms: 9, key_id: "k".into(), signature: "s".into() })
            .expect("checkpoint");
    }
    let pg = server();
    // Into a database without the schema: refused, nothing written.
    assert!(matches!(
        Registry::copy_redb_to_postgres(&path, &pg.url()),
        Err(RegistryError::SchemaMismatch { found: 0, .. })
    ));
    Registry::migrate_postgres(&pg.url()).expect("migrate");
    let summary = Registry::copy_redb_to_postgres(&path, &pg.url()).expect("copy");
    let source = Registry::open(&path).expect("redb again");
    assert_eq!(summary, source.verify_audit_chain().expect("source chain"));
    assert_eq!(summary.checkpoints.len(), 1);
    let copy = Registry::open_postgres(&pg.url()).expect("copy");
    assert_eq!(copy.certificates().expect("certs"), source.certificates().expect("certs"));
    assert_eq!(copy.revocation_snapshot().expect("snap"), source.revocation_snapshot().expect("snap"));
    assert_eq!(copy.principal("admin").expect("p"), source.principal("admin").expect("p"));
    // The invariants came along: the compromised key stays out, the CRL numbers go on.
    let reuse = issue("q9", "T000000000000009", "DD09", "key1");
    assert_eq!(
        copy.record_terminal_issue(&reuse, &ev("issue", "x")),
        Err(RegistryError::KeyCompromised("DD01".into()))
    );
    assert_eq!(copy.next_crl_number().expect("next"), 4);
    // The counts (computed once, the per-statement triggers off during the copy) equal a full
    // GROUP BY, and the triggers are back on for the next write.
    let mut c = postgres::Client::connect(&pg.url(), postgres::NoTls).expect("connect");
    let counts_equal_group_by = |c: &mut postgres::Client| {
        let rows = |c: &mut postgres::Client, sql: &str| -> Vec<(String, String, i64)> {
            c.query(sql, &[]).expect("counts").iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()
        };
        let kept = rows(c, "SELECT dimension, value, n FROM terminal_counts WHERE n > 0 ORDER BY 1, 2");
        let scanned = rows(
            c,
            "SELECT * FROM (SELECT 'state' AS d, state AS v, count(*) FROM terminals GROUP BY state
             UNION ALL SELECT 'class', class, count(*) FROM terminals GROUP BY class
             UNION ALL SELECT 'manufacturer', manufacturer, count(*) FROM terminals GROUP BY manufacturer) x ORDER BY 1, 2",
        );
        assert_eq!(kept, scanned);
        kept
    };
    let copied = counts_equal_group_by(&mut c);
    assert!(copied.iter().any(|(d, _, n)| d == "state" && *n >= 300), "{copied:?}");
    assert_eq!(copy.terminal_counts().expect("counts"), source.terminal_counts().expect("source counts"));
    copy.record_terminal_issue(&issue("q10", "T000000000000010", "DD10", "key10"), &ev("issue", "x")).expect("issue");
    assert_ne!(counts_equal_group_by(&mut c), copied, "the trigger counted the new terminal");
    // A second copy into the now used registry is refused (the redb file closed first: one
    // process at a time).
    drop(source);
    assert!(matches!(Registry::copy_redb_to_postgres(&path, &pg.url()), Err(RegistryError::TargetExists(_))));
}

#[test]
fn one_crl_leader_at_a_time_and_leadership_moves_when_the_leader_goes() {
    let pg = server();
    Registry::migrate_postgres(&pg.url()).expect("migrate");
    let a = Registry::open_postgres(&pg.url()).expect("A");
    let b = Registry::open_postgres(&pg.url()).expect("B");
    assert!(a.crl_leader().expect("A asks"), "the first to ask leads");
    assert!(!b.crl_leader().expect("B asks"), "one leader at a time");
    assert!(a.crl_leader().expect("A again"), "the leader keeps leading");
    drop(a);
    // PostgreSQL releases the lock when A's connection ends; B takes over within its next asks.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !b.crl_leader().expect("B asks") {
        assert!(std::time::Instant::now() < deadline, "leadership did not move");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let c = Registry::open_postgres(&pg.url()).expect("C");
    assert!(!c.crl_leader().expect("C asks"));
}

#[test]
fn a_backup_taken_under_concurrent_issuance_is_one_snapshot_whose_chain_verifies() {
    let pg = server();
    Registry::migrate_postgres(&pg.url()).expect("migrate");
    let reg = Arc::new(Registry::open_postgres(&pg.url()).expect("open"));
    for i in 0..8 {
        reg.record_terminal_issue(
            &issue(&format!("pre{i}"), &format!("P{i:015}"), &format!("PP{i:02}"), &format!("pk{i}")),
            &ev("issue", "t"),
        )
        .expect("issue");
    }
    let dir = tempfile::tempdir().expect("tmp");
    let backup = dir.path().join("backup.redb");
    std::thread::scope(|s| {
        for w in 0..4 {
            let reg = reg.clone();
            s.spawn(move || {
                for i in 0..25 {
                    let n = w * 100 + i;
                    reg.record_terminal_issue(
                        &issue(&format!("w{n}"), &format!("W{n:015}"), &format!("WW{n:04}"), &format!("wk{n}")),
                        &ev("issue", "t"),
                    )
                    .expect("issue while backing up");
                }
            });
        }
        reg.backup(&backup).expect("backup");
    });
    assert!(matches!(reg.backup(&backup), Err(RegistryError::TargetExists(_))));

    // The copy is a redb registry whose chain verifies and is a prefix of the live one.
    let copy = Registry::open(&backup).expect("open the backup");
    let summary = copy.verify_audit_chain().expect("the backup's chain verifies");
    let live = reg.audit_tail(usize::MAX).expect("live chain");
    assert!(summary.entries >= 8 && summary.entries <= live.len() as u64, "{summary:?}");
    let copied = copy.audit_tail(usize::MAX).expect("copied chain");
    assert_eq!(copied[..], live[..copied.len()], "the backup's chain is the live chain up to its snapshot");
    // One snapshot: exactly the certificates whose issue entries it holds, each with its DER.
    let certs = copy.certificates().expect("certificates");
    assert_eq!(certs.len(), copied.iter().filter(|e| e.event.action == "issue").count());
    for c in &certs {
        let (_, der) = copy.certificate(&c.serial).expect("read").expect("cert");
        assert_eq!(der, format!("DER of {}", c.serial).into_bytes());
        let CertSubject::Terminal { serial } = &c.subject else { panic!("only terminals were issued") };
        let t = copy.terminal(serial).expect("read").expect("terminal");
        assert_eq!(t.active_cert.as_deref(), Some(c.serial.as_str()));
    }
    // It restores like any redb backup.
    drop(copy);
    let restored = dir.path().join("restored.redb");
    assert_eq!(Registry::restore(&backup, &restored).expect("restore"), summary);
}

#[test]
fn spending_a_nonce_prunes_expired_ones_in_the_same_statement() {
    let pg = server();
    Registry::migrate_postgres(&pg.url()).expect("migrate");
    let reg = Registry::open_postgres(&pg.url()).expect("open");
    for i in 0..10u8 {
        reg.use_nonce(&[b'n', i], 1000, 2000).expect("spend");
    }
    reg.use_nonce(&[b'n', 0], 1500, 2500).expect_err("replay within the window");
    // Later, one spend (of an expired nonce, which may come back) removes every other expired one.
    reg.use_nonce(&[b'n', 0], 3000, 4000).expect("expired nonce may come back");
    let mut c = postgres::Client::connect(&pg.url(), postgres::NoTls).expect("connect");
    let left: Vec<Vec<u8>> =
        c.query("SELECT nonce FROM nonces", &[]).expect("nonces").iter().map(|r| r.get(0)).collect();
    assert_eq!(left, vec![vec![b'n', 0]]);
    assert_eq!(reg.use_nonce(&[b'n', 0], 3500, 4500), Err(RegistryError::NonceReplayed));
}

#[test]
fn authentication_failures_add_up_across_instances_within_the_window_and_expire() {
    let pg = server();
    Registry::migrate_postgres(&pg.url()).expect("migrate");
    let a = Registry::open_postgres(&pg.url()).expect("open a");
    let b = Registry::open_postgres(&pg.url()).expect("open b");
    let addr = |n| (FailureKind::Address, "198.51.100.7".to_owned(), n);
    let station = |n| (FailureKind::Principal, "station-1".to_owned(), n);
    // Below the limit of 10 on each instance and together: nobody is blocked.
    assert!(a.share_auth_failures(&[addr(4), station(9)], 10).expect("a").is_empty());
    assert!(b.share_auth_failures(&[addr(5)], 10).expect("b").is_empty());
    // One more on B reaches the limit for the address counted on both.
    assert_eq!(
        b.share_auth_failures(&[addr(1)], 10).expect("b"),
        vec![(FailureKind::Address, "198.51.100.7".to_owned())]
    );
    // A learns it on its next poll with nothing new of its own; a principal is its own source.
    assert_eq!(a.share_auth_failures(&[], 10).expect("a"), vec![(FailureKind::Address, "198.51.100.7".to_owned())]);
    let both = b.share_auth_failures(&[station(1)], 10).expect("b");
    assert_eq!(both.len(), 2, "{both:?}");
    assert!(both.contains(&(FailureKind::Principal, "station-1".to_owned())));
    // Buckets follow the database's clock (review finding 11: not each host's).
    let mut c = postgres::Client::connect(&pg.url(), postgres::NoTls).expect("connect");
    let off: i64 = c
        .query_one(
            "SELECT max(abs(bucket - (extract(epoch FROM clock_timestamp()) * 1000)::bigint / $1)) FROM auth_failures",
            &[&(FAILURE_BUCKET_MS as i64)],
        )
        .expect("buckets")
        .get(0);
    assert!(off <= 1, "buckets {off} away from the database clock's");
    // A minute later those buckets are out of the window and deleted.
    c.execute("UPDATE auth_failures SET bucket = bucket - $1", &[&(FAILURE_WINDOW_BUCKETS as i64 + 1)]).expect("age");
    assert!(a.share_auth_failures(&[], 10).expect("later").is_empty());
    let left: i64 = c.query_one("SELECT count(*) FROM auth_failures", &[]).expect("count").get(0);
    assert_eq!(left, 0);
    // Review finding 6: however many sources are over the limit, one answer is bounded.
    let many: Vec<_> = (0..=FAILURE_BLOCKED_MAX).map(|i| (FailureKind::Address, format!("a{i}"), 10)).collect();
    let blocked = a.share_auth_failures(&many, 10).expect("many");
    assert_eq!(blocked.len(), FAILURE_BLOCKED_MAX);
}

#[test]
fn stored_crls_are_shared_and_never_replaced_by_a_lower_number() {
    let pg = server();
    Registry::migrate_postgres(&pg.url()).expect("migrate");
    let leader = Registry::open_postgres(&pg.url()).expect("open leader");
    let follower = Registry::open_postgres(&pg.url()).expect("open follower");
    let crl = |name: &str, number, base| StoredCrl {
        name: name.into(),
        number,
        der: vec![number as u8; 3],
        entries: 1,
        this_update_ms: 1_800_000_000_000 + number,
        base,
    };
    assert!(follower.stored_crls_after(0).expect("none yet").is_empty());
    assert!(leader.store_crl(crl("full", 7, Some((7, 40)))).expect("store"));
    assert!(leader.store_crl(crl("delta", 8, Some((7, 40)))).expect("store"));
    assert_eq!(
        follower.stored_crls_after(0).expect("read"),
        vec![crl("full", 7, Some((7, 40))), crl("delta", 8, Some((7, 40)))]
    );
    assert_eq!(follower.stored_crls_after(7).expect("read"), vec![crl("delta", 8, Some((7, 40)))]);
    assert!(follower.stored_crls_after(8).expect("read").is_empty(), "nothing new: nothing read");
    // An old leader that signed number 6 before it lost the lock cannot put it back.
    assert!(!follower.store_crl(crl("full", 6, None)).expect("refused quietly"));
    assert!(!follower.store_crl(crl("full", 7, None)).expect("the same number neither"));
    assert!(follower.store_crl(crl("full", 9, Some((9, 41)))).expect("a higher number replaces it"));
    assert_eq!(leader.stored_crls_after(8).expect("read"), vec![crl("full", 9, Some((9, 41)))]);
    // redb keeps CRLs in memory: nothing stored, nothing read.
    let dir = tempfile::tempdir().expect("tmp");
    let redb = Registry::open(&dir.path().join("r.redb")).expect("redb");
    assert!(!redb.store_crl(crl("full", 1, None)).expect("redb"));
    assert!(redb.stored_crls_after(0).expect("redb").is_empty());
}

#[test]
fn a_lot_page_is_read_from_the_covering_index_alone() {
    let pg = server();
    Registry::migrate_postgres(&pg.url()).expect("migrate");
    let reg = Registry::open_postgres(&pg.url()).expect("open");
    for i in 0..40 {
        let mut t = terminal(&format!("HSTM01261100{i:04}"));
        t.lot = Some(format!("L{}", i % 4));
        reg.register_terminal(&t, &ev("register", "t")).expect("register");
    }
    let mut c = postgres::Client::connect(&pg.url(), postgres::NoTls).expect("connect");
    // Scattered lots over a larger table, then what autovacuum would have done.
    c.batch_execute(
        "INSERT INTO terminals (serial, class, manufacturer, model, lot, state, record)
         SELECT 'B' || lpad(i::text, 15, '0'), 'II', 'HSTM', '01', 'L' || (i % 4), 'registered', '\\x7b7d'
         FROM generate_series(1, 20000) i",
    )
    .expect("bulk");
    c.batch_execute("VACUUM ANALYZE terminals").expect("vacuum");
    let plan: Vec<String> = c
        .query(
            "EXPLAIN SELECT record FROM terminals WHERE true AND serial > 'HSTM012611000010' AND lot = 'L2' ORDER BY serial LIMIT 51",
            &[],
        )
        .expect("explain")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(plan.iter().any(|l| l.contains("Index Only Scan using terminals_lot_page")), "{plan:#?}");
    // The page itself, through the registry: the lot's terminals after the cursor, in order.
    let filter = TerminalFilter { lot: Some("L2".into()), ..Default::default() };
    let (page, _) = reg.list_terminals(&filter, Some("HSTM012611000010"), 3).expect("page");
    let serials: Vec<&str> = page.iter().map(|t| t.serial.as_str()).collect();
    assert_eq!(serials, ["HSTM012611000014", "HSTM012611000018", "HSTM012611000022"]);
}

#[test]
fn migration_8_numbers_the_activations_made_before_it_in_the_order_they_were_made() {
    let pg = server();
    Registry::migrate_postgres(&pg.url()).expect("migrate");
    let reg = Registry::open_postgres(&pg.url()).expect("open");
    let prov = Provisioning { station: "station-1".into(), duration_ms: 900, firmware: "1.0".into(), at_ms: 50 };
    let activation = |terminal: &str, at_ms: u64| ActivationRecord {
        terminal: terminal.into(),
        operator: "op".into(),
        institution: format!("H-{at_ms}"),
        latitude: 31.2,
        longitude: 121.5,
        at_ms,
        method: ActivationMethod::Manual,
        certificate: None,
    };
    for (t, cert) in [("HSTM01261100000K", "C1"), ("HSTM01261100001H", "C2")] {
        reg.record_terminal_issue(&issue(&format!("r-{cert}"), t, cert, &format!("k-{cert}")), &ev("issue", t))
            .expect("issue");
        reg.confirm_provisioning(t, cert, &prov, &ev("confirm", t)).expect("confirm");
    }
    reg.activate(&activation("HSTM01261100001H", 300), &ev("activate", "t")).expect("later in time, first");
    reg.activate(&activation("HSTM01261100000K", 200), &ev("activate", "t")).expect("earlier in time, second");
    let hourly = reg.hourly_counts(0).expect("hourly");
    assert_eq!(hourly.iter().map(|h| h.n).sum::<u64>(), 4, "{hourly:?}");
    drop(reg);
    // Back to schema 7: activations without numbers, no counter.
    let mut c = postgres::Client::connect(&pg.url(), postgres::NoTls).expect("connect");
    c.batch_execute(
        "ALTER TABLE activations DROP COLUMN seq; DELETE FROM counters WHERE name = 'activation_seq';
         DROP TABLE hourly_counts; DELETE FROM schema_migrations WHERE version IN (8, 9)",
    )
    .expect("schema 7");
    assert_eq!(Registry::migrate_postgres(&pg.url()).expect("migrate"), vec![8, 9]);
    let reg = Registry::open_postgres(&pg.url()).expect("open");
    assert_eq!(reg.hourly_counts(0).expect("hourly"), hourly, "migration 9 counts the certificates recorded before it");
    let log = reg.activations_after(0, 10).expect("log");
    let seen: Vec<(u64, u64)> = log.iter().map(|e| (e.seq, e.activation.at_ms)).collect();
    assert_eq!(seen, [(1, 200), (2, 300)], "older activations numbered by time");
    assert_eq!(reg.activation_log_head().expect("head"), 2);
    reg.activate(&activation("HSTM01261100000K", 100), &ev("activate", "t")).expect("after the migration");
    assert_eq!(reg.activations_after(2, 10).expect("next")[0].seq, 3, "new ones follow, whatever their time");
}
