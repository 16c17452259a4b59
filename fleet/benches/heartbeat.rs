//! CPU to check one heartbeat (decode, certificate lookup, SM2 verification, SM3s) before the
//! rules see it: a certificate seen for the first time (chain validated), a known one, and a
//! known one whose key carries precomputed multiples (`[server] precomputed_keys`).
//!
//! `cargo bench -p fleet --bench heartbeat`

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use fleet::verify::{KeyCache, Trust, check};
use hsm::backend::memory::SoftwareSm2Key;
use pki::SignerId;
use proto::v1::{HeartbeatBody, Position, PositionSource};
use terminal_sim::forge::Authority;

const SERIAL: &str = "HSTM01261100000K";
const SKEW: Duration = Duration::from_secs(300);

fn heartbeat(c: &mut Criterion) {
    let ca = Authority::new().expect("ca");
    let key = SoftwareSm2Key::generate(SignerId::default()).expect("key");
    let cert = der::Encode::to_der(&ca.terminal(SERIAL, key.sm2_public_key()).expect("cert")).expect("der");
    let trust = Trust::new(ca.issuing.clone(), ca.root.clone(), SignerId::default()).expect("trust");
    let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("time").as_millis() as u64;
    let body = HeartbeatBody {
        terminal_serial: SERIAL.into(),
        counter: 1,
        time_ms: now_ms,
        position: Some(Position { lat: 39.9, lon: 116.4, source: PositionSource::Gnss as i32 }),
        firmware_sm3: vec![7; 32],
        tamper: false,
        uptime_s: 3600,
    };
    let req = proto::heartbeat::request(&body, &key, &cert).expect("sign");
    let mut g = c.benchmark_group("heartbeat check");
    g.bench_function("first sight (chain validated)", |b| {
        b.iter(|| black_box(check(&trust, &KeyCache::default(), &req, SystemTime::now(), SKEW).expect("ok")))
    });
    let known = KeyCache::default();
    check(&trust, &known, &req, SystemTime::now(), SKEW).expect("ok");
    g.bench_function("known certificate", |b| {
        b.iter(|| black_box(check(&trust, &known, &req, SystemTime::now(), SKEW).expect("ok")))
    });
    let tables = KeyCache::with_precomputed(1);
    check(&trust, &tables, &req, SystemTime::now(), SKEW).expect("ok");
    g.bench_function("known certificate, precomputed key", |b| {
        b.iter(|| black_box(check(&trust, &tables, &req, SystemTime::now(), SKEW).expect("ok")))
    });
    g.finish();
}

criterion_group!(benches, heartbeat);
criterion_main!(benches);
