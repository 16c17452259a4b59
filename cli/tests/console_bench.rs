//! Console page times with a large fleet in the registry — a measurement, not a check: not run by
//! default (`test = false` in Cargo.toml, so not by CI); it asserts only that each page answers 200, and prints a table.
//!
//! `cargo test -p cli --test console_bench -- --nocapture`
//! (`CONSOLE_BENCH_TERMINALS`, default 1,000,000; `CONSOLE_BENCH_AUDIT` audit entries about them,
//! default 100,000, so a terminal page and the principals page read through the audit indexes
//! with the terminal's entries far behind the newest 10,000). Built in the dev profile like the other tests:
//! dependencies at opt-level 2, workspace crates (ca-server, cactl) unoptimised.

mod common;

use std::time::{Duration, Instant};

use common::{Console, RunningCa};
use registry::{Registry, TerminalRecord, TerminalState};

const STATES: [TerminalState; 5] = [
    TerminalState::Registered,
    TerminalState::Issued,
    TerminalState::Provisioned,
    TerminalState::Active,
    TerminalState::Revoked,
];

fn fill(ca: &RunningCa, n: usize) -> Duration {
    let config: toml::Table =
        toml::from_str(&std::fs::read_to_string(ca.dir.join("ca-server.toml")).expect("config")).expect("toml");
    let path = config["registry"]["path"].as_str().expect("[registry] path");
    let reg = Registry::open(&ca.dir.join(path)).expect("registry");
    let started = Instant::now();
    let makers = ["HSTM", "HSTA", "HSTB", "HSTC"];
    for chunk in (0..n).collect::<Vec<_>>().chunks(100_000) {
        let batch: Vec<TerminalRecord> = chunk
            .iter()
            .map(|&i| TerminalRecord {
                serial: format!("{}01{:010}", makers[i % 4], i),
                class: ["I", "II", "III"][i % 3].into(),
                manufacturer: makers[i % 4].into(),
                model: "01".into(),
                lot: Some(format!("L{}", i / 10_000)),
                state: STATES[i % 5],
                active_cert: None,
                updated_ms: 0,
            })
            .collect();
        reg.put_terminals_unaudited(&batch).expect("put");
    }
    // Audit entries by nine stations about terminals, oldest first: the terminal the page opens
    // is among the first, far behind the newest 10,000.
    let audit: usize = std::env::var("CONSOLE_BENCH_AUDIT").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    for chunk in (0..audit).collect::<Vec<_>>().chunks(10_000) {
        let events: Vec<registry::AuditEvent> = chunk
            .iter()
            .map(|&i| registry::AuditEvent {
                time_ms: 1_700_000_000_000 + i as u64,
                actor: format!("station-{}", i % 9 + 1),
                action: "confirm".into(),
                target: format!("{}01{:010}", makers[(i * 7919 % n) % 4], i * 7919 % n),
                outcome: "ok".into(),
                detail: "bench".into(),
            })
            .collect();
        reg.audit_all(&events).expect("audit");
    }
    started.elapsed()
}

#[test]
fn console_pages_with_a_large_fleet() {
    let n: usize = std::env::var("CONSOLE_BENCH_TERMINALS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let tmp = tempfile::tempdir().expect("tmp");
    let mut ca = RunningCa::init(tmp.path());
    ca.stop();
    let filled = fill(&ca, n);
    ca.start();
    let c = Console::start(&ca.dir.join("identities/admin/identity.toml"));
    let (head, _) = c.get(&c.login_path(), "");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|v| v.split(';').next())
        .map(|pair| format!("Cookie: {pair}\r\n"))
        .expect("session cookie");
    let some = format!("HSTB01{:010}", n / 2 + 2);
    // Audit entry 7 of the fill is about this terminal.
    let old = format!("{}01{:010}", ["HSTM", "HSTA", "HSTB", "HSTC"][(7 * 7919 % n) % 4], 7 * 7919 % n);
    let pages = [
        ("/terminals", "first page of 50"),
        ("/terminals?page=HSTA010000500001", "a page deep in the cursor"),
        ("/terminals?q=HSTB010000", "serial prefix"),
        (&*format!("/terminals/{some}"), "one terminal"),
        (&*format!("/terminals/{old}"), "one terminal, entries behind 10,000 newer"),
        ("/principals", "principals (last activity by actor index)"),
        ("/terminals?state=4&manufacturer=HSTC", "filtered page (state + maker)"),
        ("/terminals?state=2", "filtered page (state)"),
        ("/terminals?class=3&lot=L99", "filtered page (class + lot)"),
        ("/terminals?state=5&class=2&manufacturer=HSTM&lot=L50", "filtered page (all four)"),
        ("/audit", "audit, 200 newest + newest verification"),
        ("/", "overview (counts, CRL + OCSP probe)"),
    ];
    println!("\n{n} terminals in the registry (filled in {:.1} s)\n", filled.as_secs_f64());
    println!("{:<44} {:>10} {:>10} {:>10} {:>6}", "page", "min ms", "median ms", "max ms", "rows");
    for (path, what) in pages {
        let mut times = Vec::new();
        let mut rows = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let (head, body) = c.get(path, &cookie);
            times.push(t.elapsed());
            assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}\n{body}");
            // Terminal rows link to their page; a filter that found nothing would show 0 here.
            rows = body.matches("<td><a href=\"/terminals/").count() + body.matches("<td>bench</td>").count();
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!("{:<44} {:>10.1} {:>10.1} {:>10.1} {rows:>6}", what, ms(times[0]), ms(times[2]), ms(times[4]));
    }
}
