//! `cargo bench -p sm2-dsa`: where an SM2 signature's time goes, piece by piece, one core.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sm2::dsa::signature::hazmat::{PrehashSigner, PrehashVerifier, RandomizedPrehashSigner};
use sm2::elliptic_curve::group::Group;
use sm2::elliptic_curve::hazmat::FieldArithmetic;
use sm2::elliptic_curve::ops::Invert;
use sm2::elliptic_curve::{Generate, PrimeField};
use sm2::{ProjectivePoint, Scalar, Sm2};

type Fe = <Sm2 as FieldArithmetic>::FieldElement;

fn breakdown(c: &mut Criterion) {
    let mut g = c.benchmark_group("breakdown");
    let sk = sm2::dsa::SigningKey::from_slice("1234567812345678", &[7u8; 32]).expect("key");
    let e = [0x5au8; 32];
    g.bench_function("sm2_crate_sign_hedged", |b| {
        b.iter(|| -> sm2::dsa::Signature {
            sk.sign_prehash_with_rng(&mut getrandom::SysRng, black_box(&e)).expect("sign")
        })
    });
    g.bench_function("sm2_crate_sign_rfc6979", |b| {
        b.iter(|| -> sm2::dsa::Signature { sk.sign_prehash(black_box(&e)).expect("sign") })
    });
    let sig: sm2::dsa::Signature = sk.sign_prehash(&e).expect("sign");
    let vk = sk.verifying_key().clone();
    g.bench_function("sm2_crate_verify", |b| b.iter(|| vk.verify_prehash(black_box(&e), &sig).expect("ok")));
    let d = Scalar::generate();
    g.bench_function("rfc6979_k", |b| {
        b.iter(|| {
            let mut kgen = rfc6979::KGenerator::<sm3::Sm3, sm2::U256>::new(
                &d.to_repr(),
                black_box(&e),
                &[1u8; 32],
                &<Sm2 as sm2::elliptic_curve::Curve>::ORDER,
            );
            let mut k = [0u8; 32];
            kgen.fill_next_k(&mut k);
            k
        })
    });
    g.bench_function("os_random_32", |b| {
        b.iter(|| {
            let mut k = [0u8; 32];
            getrandom::fill(&mut k).expect("rng");
            k
        })
    });
    let k = Scalar::generate();
    g.bench_function("mul_by_generator_ct", |b| b.iter(|| ProjectivePoint::mul_by_generator(black_box(&k))));
    let p = ProjectivePoint::mul_by_generator(&k);
    g.bench_function("to_affine_ct_invert", |b| b.iter(|| black_box(&p).to_affine()));
    g.bench_function("scalar_invert_ct", |b| b.iter(|| black_box(&k).invert()));
    g.bench_function("scalar_invert_vartime", |b| b.iter(|| black_box(&k).invert_vartime()));
    g.bench_function("scalar_mul", |b| b.iter(|| *black_box(&k) * black_box(&d)));
    let x = Fe::from_slice(&[0x3cu8; 32]).expect("below p");
    g.bench_function("field_mul", |b| b.iter(|| *black_box(&x) * black_box(&x)));
    g.bench_function("field_square", |b| b.iter(|| black_box(&x).square()));
    g.bench_function("field_invert_ct", |b| b.iter(|| black_box(&x).invert()));
    g.bench_function("field_invert_vartime", |b| b.iter(|| black_box(&x).invert_vartime()));
    g.bench_function("point_add", |b| b.iter(|| *black_box(&p) + black_box(&p)));
    let a = p.to_affine();
    g.bench_function("point_add_mixed", |b| b.iter(|| *black_box(&p) + black_box(&a)));
    g.bench_function("point_double", |b| b.iter(|| black_box(&p).double()));
    g.bench_function("point_mul_vartime", |b| b.iter(|| black_box(&p).mul_vartime(&k)));
    g.finish();
}

fn engine(c: &mut Criterion) {
    let mut g = c.benchmark_group("sm2_dsa");
    sm2_dsa::warm_up();
    let key = sm2_dsa::SigningKey::from_bytes(&[7u8; 32]).expect("key");
    let e = [0x5au8; 32];
    g.bench_function("sign_digest", |b| b.iter(|| key.sign_digest(black_box(&e)).expect("sign")));
    let sig = key.sign_digest(&e).expect("sign");
    let point = key.verifying_key().to_sec1_uncompressed();
    g.bench_function("verify_digest_key_seen_once", |b| {
        b.iter(|| {
            sm2_dsa::VerifyingKey::from_sec1(black_box(&point)).expect("key").verify_digest(&e, &sig).expect("ok")
        })
    });
    let prepared = key.verifying_key().clone().precomputed();
    g.bench_function("verify_digest_precomputed", |b| {
        b.iter(|| prepared.verify_digest(black_box(&e), &sig).expect("ok"))
    });
    g.bench_function("precompute_key", |b| b.iter(|| key.verifying_key().clone().precomputed()));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(300)).measurement_time(std::time::Duration::from_secs(1));
    targets = breakdown, engine
}
criterion_main!(benches);
