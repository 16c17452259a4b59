//! The PostgreSQL registry at fleet scale (not run in CI: minutes and gigabytes). Measures on an
//! empty registry, bulk-loads `HSCA_SCALE_TERMINALS` terminals (default 1,000,000) server-side,
//! each with its certificate and key binding (so every index is as large as a real fleet's), and
//! measures again: issuance (the CA's whole registry work per issue, 16 writers — the rest of the
//! issuance path does not depend on the registry's size), `terminal show`, `terminal list`
//! paging (unfiltered and by lot), and the database size per million terminals.
//! `HSCA_SCALE_TERMINALS=3000000 cargo bench -p registry --bench scale`

use std::sync::Arc;
use std::time::{Duration, Instant};

use registry::testing::PgServer;
use registry::*;

mod common;
use common::{event, issue};

const THREADS: usize = 16;
const PER_THREAD: usize = 125;
const LOAD_BATCH: u64 = 500_000;

fn quantiles(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    (at(0.5), at(0.99), v[v.len() - 1])
}

/// Issues `THREADS * PER_THREAD` distinct terminals from `first`: (per second, p50, p99, max).
fn issuance(reg: &Arc<Registry>, first: usize) -> (f64, (Duration, Duration, Duration)) {
    let start = Instant::now();
    let latencies: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let reg = reg.clone();
                s.spawn(move || {
                    (0..PER_THREAD)
                        .map(|n| {
                            let began = Instant::now();
                            reg.record_terminal_issue(&issue(first + t * PER_THREAD + n), &event()).expect("record");
                            began.elapsed()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("thread")).collect()
    });
    ((THREADS * PER_THREAD) as f64 / start.elapsed().as_secs_f64(), quantiles(latencies))
}

/// A loaded terminal's serial.
fn loaded(i: u64) -> String {
    format!("B{i:015}")
}

/// Random-ish indexes in 0..n (a fixed LCG: the same points every run).
fn points(n: u64, count: usize) -> Vec<u64> {
    let mut x = 0x2545_F491_4F6C_DD1D_u64;
    (0..count)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 11) % n.max(1)
        })
        .collect()
}

/// `terminal show` and `terminal list` (a page of 50 after a random serial; then by lot).
fn reads(reg: &Registry, n: u64) -> [(Duration, Duration, Duration); 3] {
    let time = |f: &mut dyn FnMut(u64)| {
        quantiles(
            points(n, 500)
                .into_iter()
                .map(|i| {
                    let began = Instant::now();
                    f(i);
                    began.elapsed()
                })
                .collect(),
        )
    };
    let show = time(&mut |i| {
        let serial = if n == 0 { "T000000000000001".to_owned() } else { loaded(i) };
        reg.terminal(&serial).expect("show").expect("a terminal");
    });
    let page = time(&mut |i| {
        let after = loaded(i);
        reg.list_terminals(&TerminalFilter::default(), Some(&after), 50).expect("list");
    });
    let by_lot = time(&mut |i| {
        let filter = TerminalFilter { lot: Some(format!("LOT-{}", i % 1000)), ..Default::default() };
        reg.list_terminals(&filter, Some(&loaded(i)), 50).expect("list by lot");
    });
    [show, page, by_lot]
}

/// The JSON of a record with `@S@`, `@C@`, `@K@` placeholders for SQL to fill in.
fn templates() -> (String, String) {
    let mut t = issue(0);
    t.terminal.serial = "@S@".into();
    t.terminal.lot = Some("@L@".into());
    t.terminal.state = TerminalState::Active;
    t.terminal.active_cert = Some("@C@".into());
    t.cert.serial = "@C@".into();
    t.cert.subject = CertSubject::Terminal { serial: "@S@".into() };
    t.cert.key_fingerprint = "@K@".into();
    t.cert.request_id = "bulk".into();
    (serde_json::to_string(&t.terminal).expect("json"), serde_json::to_string(&t.cert).expect("json"))
}

fn load(url: &str, n: u64) -> Duration {
    let mut c = postgres::Client::connect(url, postgres::NoTls).expect("connect");
    let (terminal, cert) = templates();
    let start = Instant::now();
    let mut from = 0u64;
    while from < n {
        let to = (from + LOAD_BATCH).min(n);
        let mut tx = c.transaction().expect("tx");
        // Server-side generation: the bulk path (no client round trip per row).
        tx.execute(
            "INSERT INTO certs (serial, terminal, key_fingerprint, status, record, der)
             SELECT c, s, k, 'good',
                    convert_to(replace(replace(replace($1::text, '@S@', s), '@C@', c), '@K@', k), 'UTF8'),
                    decode(repeat('30', 600), 'hex')
             FROM (SELECT 'B' || lpad(i::text, 15, '0') AS s, 'BB' || lpad(to_hex(i), 30, '0') AS c,
                          'bulk-key-' || i AS k FROM generate_series($2::bigint, $3::bigint - 1) i) g",
            &[&cert, &(from as i64), &(to as i64)],
        )
        .expect("certs");
        tx.execute(
            "INSERT INTO terminals (serial, class, manufacturer, model, lot, state, active_cert, record)
             SELECT s, 'II', 'HSTM', '01', l, 'active', c,
                    convert_to(replace(replace(replace($1::text, '@S@', s), '@C@', c), '@L@', l), 'UTF8')
             FROM (SELECT 'B' || lpad(i::text, 15, '0') AS s, 'BB' || lpad(to_hex(i), 30, '0') AS c,
                          'LOT-' || (i % 1000) AS l FROM generate_series($2::bigint, $3::bigint - 1) i) g",
            &[&terminal, &(from as i64), &(to as i64)],
        )
        .expect("terminals");
        tx.execute(
            "INSERT INTO pubkeys (fingerprint, terminal)
             SELECT 'bulk-key-' || i, 'B' || lpad(i::text, 15, '0') FROM generate_series($1::bigint, $2::bigint - 1) i",
            &[&(from as i64), &(to as i64)],
        )
        .expect("pubkeys");
        tx.commit().expect("commit");
        from = to;
        eprintln!("loaded {from} terminals in {:.0} s", start.elapsed().as_secs_f64());
    }
    c.batch_execute("VACUUM ANALYZE").expect("analyze");
    start.elapsed()
}

fn size(url: &str) -> i64 {
    let mut c = postgres::Client::connect(url, postgres::NoTls).expect("connect");
    c.query_one("SELECT pg_database_size(current_database())", &[]).expect("size").get(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    // `cargo test --all-targets` runs bench targets without `--bench` (as criterion's test mode
    // does): minutes and gigabytes are for `cargo bench` only.
    if !std::env::args().any(|a| a == "--bench") {
        println!("scale: skipped (run it with `cargo bench -p registry --bench scale`)");
        return;
    }
    let n: u64 = std::env::var("HSCA_SCALE_TERMINALS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let pg = PgServer::start().expect("PostgreSQL server");
    Registry::migrate_postgres(&pg.url()).expect("migrate");
    let reg = Arc::new(Registry::open_postgres(&pg.url()).expect("open"));
    let empty_size = size(&pg.url());
    let empty = issuance(&reg, 0);
    let empty_reads = reads(&reg, 0);
    let took = load(&pg.url(), n);
    let full_size = size(&pg.url());
    let full = issuance(&reg, 1_000_000);
    let full_reads = reads(&reg, n);
    println!("{n} terminals loaded (with certificate and key each) in {:.0} s", took.as_secs_f64());
    println!(
        "database: {:.0} MB empty, {:.0} MB loaded: {:.0} MB per million terminals",
        empty_size as f64 / 1e6,
        full_size as f64 / 1e6,
        (full_size - empty_size) as f64 / 1e6 / (n as f64 / 1e6)
    );
    println!(
        "| registry | issues/s | issue p50 | issue p99 | show p99 | show max | page p99 | page max | lot page p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, (rate, (p50, p99, _)), [show, page, lot]) in
        [("empty", empty, empty_reads), ("loaded", full, full_reads)]
    {
        println!(
            "| {name} | {rate:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
            ms(p50),
            ms(p99),
            ms(show.1),
            ms(show.2),
            ms(page.1),
            ms(page.2),
            ms(lot.1)
        );
    }
    println!("issue p99 loaded / empty: {:.2}", ms(full.1.1) / ms(empty.1.1));
}
