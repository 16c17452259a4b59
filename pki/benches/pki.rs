//! `cargo bench -p pki`: CSR verification, TBS build + lint, SM2 sign and verify (plain key,
//! precomputed key, and the `sm2` crate's own for comparison), one core.

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::SystemTime;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hsm::Signer;
use pki::cert::{TbsRequest, build_tbs};
use pki::{CertSerial, SignerId, verify_csr};

fn benches(c: &mut Criterion) {
    let policy = support::policy();
    let now = SystemTime::now();
    let root = support::make_root(&policy, now);
    let issuing = support::make_issuing(&policy, &root, now);
    let term_key = support::key();
    let csr = support::csr(&term_key, "CN=HSTM01261100000K,serialNumber=HSTM01261100000K");
    let id = SignerId::default();

    let mut g = c.benchmark_group("pki");
    g.throughput(Throughput::Elements(1));
    g.bench_function("csr_verify", |b| b.iter(|| verify_csr(black_box(&csr), &id).expect("valid")));

    let profile = policy.profile("terminal").expect("profile");
    let vars = support::terminal_vars("HSTM01261100000K", "II");
    let tbs_for = |key: &pki::Sm2PublicKey| {
        let req = TbsRequest { profile, vars: &vars, subject_key: key, serial: CertSerial::from_random([7; 16]), now };
        build_tbs(&req, Some(&issuing.info)).expect("tbs")
    };
    g.bench_function("tbs_build_and_lint", |b| b.iter(|| tbs_for(black_box(term_key.sm2_public_key()))));
    let tbs = tbs_for(term_key.sm2_public_key());
    g.bench_function("sm2_sign_tbs", |b| b.iter(|| issuing.key.sign(black_box(tbs.to_be_signed())).expect("sign")));
    let sig = issuing.key.sign(tbs.to_be_signed()).expect("sign");
    g.bench_function("sm2_verify_tbs", |b| {
        b.iter(|| issuing.info.key.verify(&id, black_box(tbs.to_be_signed()), sig.as_der()).expect("verify"))
    });
    let prepared = issuing.info.key.clone().precomputed();
    g.bench_function("sm2_verify_tbs_precomputed_key", |b| {
        b.iter(|| prepared.verify(&id, black_box(tbs.to_be_signed()), sig.as_der()).expect("verify"))
    });
    g.bench_function("sm2_precompute_key", |b| b.iter(|| black_box(issuing.info.key.clone()).precomputed()));
    // The sm2 crate's own (constant-time) verification, for comparison.
    let crate_key = sm2::dsa::VerifyingKey::new(id.as_str(), *issuing.info.key.as_sm2()).expect("key");
    let crate_sig = sm2::dsa::Signature::from_der(sig.as_der()).expect("sig");
    g.bench_function("sm2_crate_verify_tbs", |b| {
        use sm2::dsa::signature::Verifier;
        b.iter(|| crate_key.verify(black_box(tbs.to_be_signed()), &crate_sig).expect("verify"))
    });
    g.bench_function("issue_certificate_total", |b| {
        b.iter(|| {
            let csr = verify_csr(black_box(&csr), &id).expect("csr");
            let tbs = tbs_for(csr.public_key());
            let sig = issuing.key.sign(tbs.to_be_signed()).expect("sign");
            tbs.assemble(sig.as_der()).expect("cert")
        })
    });
    g.finish();
}

criterion_group!(pki, benches);
criterion_main!(pki);
