//! `cargo bench -p hsm`: SM2 signatures per second through `Pkcs11Signer` (softtoken, loaded as
//! a shared library) next to the same signature made directly with the `sm2` crate, at 1, 2 and
//! 8 threads. The ratio is the cost of the PKCS#11 path.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hsm::Signer;
use hsm::backend::memory::SoftwareSm2Key;
use hsm::backend::pkcs11::{KeySelector, Pkcs11Config, Pkcs11Hsm, VendorProfile};
use pki::SignerId;
use zeroize::Zeroizing;

fn softtoken_lib() -> PathBuf {
    softtoken::library_path().expect("libsofttoken.so is built with the workspace")
}

/// Signs `iters` times spread over `threads` threads; returns the wall time.
fn run(signer: &dyn Signer, threads: u64, iters: u64) -> Duration {
    let msg = [0x5au8; 512];
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let n = iters / threads + u64::from(t < iters % threads);
            s.spawn(move || {
                for _ in 0..n {
                    signer.sign(&msg).expect("sign");
                }
            });
        }
    });
    start.elapsed()
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tmp");
    let conf = dir.path().join("softtoken.toml");
    std::fs::write(&conf, format!("directory = {:?}\n", dir.path().join("token"))).expect("conf");
    // SAFETY: single-threaded set-up, before any module is loaded.
    unsafe { std::env::set_var("SOFTTOKEN_CONF", &conf) };
    hsm::backend::pkcs11::init_token(&softtoken_lib(), "bench", "so-pin-1234", "user-pin-1234").expect("init token");

    let cfg = Pkcs11Config {
        module: softtoken_lib(),
        token_label: Some("bench".into()),
        pin: Zeroizing::new("user-pin-1234".into()),
        profile: VendorProfile::softtoken().expect("shipped profile"),
    };
    let hsm = Pkcs11Hsm::open(cfg).expect("open");
    hsm.generate_sm2_key("ca").expect("keygen");
    let token = hsm.signer(KeySelector::Label("ca".into()), SignerId::default()).expect("signer");
    let direct = SoftwareSm2Key::generate(SignerId::default()).expect("key");

    let mut g = c.benchmark_group("sm2_sign");
    g.throughput(Throughput::Elements(1));
    for threads in [1u64, 2, 8] {
        g.bench_function(format!("direct_sm2_crate/{threads}_threads"), |b| {
            b.iter_custom(|n| run(&direct, threads, n))
        });
        g.bench_function(format!("pkcs11_softtoken/{threads}_threads"), |b| b.iter_custom(|n| run(&token, threads, n)));
    }
    g.finish();
}

criterion_group!(signer, benches);
criterion_main!(signer);
