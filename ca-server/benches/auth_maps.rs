//! The cost of one insert into the maps keyed by what callers send (issue 11 §3): the replay
//! cache at 100,000 and at 1,000,000 live nonces (a scan per insert would show as a 10× step),
//! and the failure limiter full of forged addresses.
//!
//! `cargo bench -p ca-server --bench auth_maps`

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use std::hint::black_box;

use ca_server::auth::{FailureLimiter, NonceCache};

fn nonce(i: u64) -> String {
    format!("{:032x}", u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
}

/// A cache holding `live` nonces, each alive for 300 s, inserted at 10,000 a second.
fn filled(live: u64) -> (NonceCache, u64) {
    let cache = NonceCache::starting_at(0);
    let mut now = 1_000_000;
    for i in 0..live {
        now = 1_000_000 + i / 10;
        assert_eq!(cache.insert(&nonce(i), now, now + 300_000), ca_server::auth::NonceUse::Fresh);
    }
    (cache, now)
}

fn nonce_cache(c: &mut Criterion) {
    let mut g = c.benchmark_group("nonce insert");
    for live in [100_000u64, 1_000_000] {
        let (cache, now) = filled(live);
        let mut i = live;
        g.bench_function(format!("{live} live"), |b| {
            b.iter(|| {
                i += 1;
                // 10,000 a second: the clock moves 1 ms every 10 inserts, so old nonces expire.
                let t = now + (i - live) / 10;
                black_box(cache.insert(&nonce(i), t, t + 300_000))
            })
        });
    }
    g.finish();
}

fn limiter(c: &mut Criterion) {
    c.bench_function("failure limiter, 65,536 forged addresses", |b| {
        b.iter_batched_ref(
            || {
                let l = FailureLimiter::default();
                for i in 0..FailureLimiter::CAPACITY as u64 {
                    l.record_address(&format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255), 1, 10);
                }
                l
            },
            |l| {
                for i in 0..1000u64 {
                    l.record_address(&format!("192.168.{}.{}", i >> 8, i & 255), 2, 10);
                }
            },
            BatchSize::LargeInput,
        )
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = nonce_cache, limiter
}
criterion_main!(benches);
