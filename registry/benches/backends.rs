//! Recording issued certificates on each backend: 16 threads, each recording distinct
//! terminals (the CA's hot write: check, certificate, key binding, request id, audit entry, one
//! commit shared by a batch). Prints a table; `cargo bench -p registry --bench backends`.
//! The PostgreSQL server is the test harness's (`fsync=off`): compare backends' batching and
//! round trips here, not disk flushes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use registry::testing::PgServer;
use registry::*;

mod common;
use common::{event, issue};

const THREADS: usize = 16;
const PER_THREAD: usize = 250;

/// (records per second, p50, p99).
fn run(reg: Registry) -> (f64, Duration, Duration) {
    let reg = Arc::new(reg);
    let start = Instant::now();
    let mut latencies: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let reg = reg.clone();
                s.spawn(move || {
                    (0..PER_THREAD)
                        .map(|n| {
                            let began = Instant::now();
                            reg.record_terminal_issue(&issue(t * PER_THREAD + n), &event()).expect("record");
                            began.elapsed()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("thread")).collect()
    });
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    ((THREADS * PER_THREAD) as f64 / elapsed.as_secs_f64(), at(0.5), at(0.99))
}

fn main() {
    let dir = tempfile::tempdir().expect("tmp");
    let redb = run(Registry::open(&dir.path().join("bench.redb")).expect("redb"));
    let pg = PgServer::start().expect("PostgreSQL server");
    Registry::migrate_postgres(&pg.url()).expect("migrate");
    let postgres = run(Registry::open_postgres(&pg.url()).expect("postgres"));
    println!("{} records, {THREADS} threads", THREADS * PER_THREAD);
    println!("| backend    | records/s | p50 ms | p99 ms |");
    println!("|------------|-----------|--------|--------|");
    for (name, (rate, p50, p99)) in [("redb", redb), ("postgresql", postgres)] {
        println!(
            "| {name:<10} | {rate:>9.0} | {:>6.2} | {:>6.2} |",
            p50.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0
        );
    }
}
