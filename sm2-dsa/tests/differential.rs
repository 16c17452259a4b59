//! This crate against the `sm2` crate on random keys, digests and signatures.
//!
//! `SM2_DSA_DIFFERENTIAL_CASES` sets the count (CI runs the default of 300; the full check is
//! `SM2_DSA_DIFFERENTIAL_CASES=100000 cargo test --release -p sm2-dsa --test differential`).

use sm2::dsa::signature::hazmat::{PrehashVerifier, RandomizedPrehashSigner};
use sm2::elliptic_curve::{Generate, PrimeField};
use sm2_dsa::{Error, Signature, SigningKey, VerifyingKey};

fn cases() -> usize {
    std::env::var("SM2_DSA_DIFFERENTIAL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300)
}

fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("random");
    b
}

#[test]
fn signatures_and_verdicts_agree_with_the_sm2_crate() {
    for _ in 0..cases() {
        let ours = SigningKey::generate().expect("key");
        let theirs = sm2::dsa::SigningKey::from_bytes("", &(*ours.to_bytes()).into()).expect("same key");
        let point = ours.verifying_key().to_sec1_uncompressed();
        assert_eq!(&point[..], &theirs.verifying_key().to_sec1_bytes()[..], "[d]G");
        let their_vk = theirs.verifying_key();
        let seen_once = VerifyingKey::from_sec1(&point).expect("point");
        let precomputed = seen_once.clone().precomputed();

        let e = random32();
        let mine = ours.sign_digest(&e).expect("sign");
        let their_sig: Signature = theirs.sign_prehash_with_rng(&mut getrandom::SysRng, &e).expect("sign");
        for sig in [&mine, &their_sig] {
            assert!(their_vk.verify_prehash(&e, sig).is_ok());
            assert_eq!(seen_once.verify_digest(&e, sig), Ok(()));
            assert_eq!(precomputed.verify_digest(&e, sig), Ok(()));
        }

        let mut other = e;
        other[(e[0] % 32) as usize] ^= 1 << (e[1] % 8);
        let forged = Signature::from_scalars(sm2::Scalar::generate(), sm2::Scalar::generate()).expect("nonzero");
        let swapped = Signature::from_scalars(*mine.s(), *mine.r()).expect("nonzero");
        for (digest, sig) in [(&other, &mine), (&other, &their_sig), (&e, &forged), (&e, &swapped)] {
            let verdict = their_vk.verify_prehash(digest, sig).is_ok();
            assert!(!verdict, "the sm2 crate accepted a tampered signature");
            assert_eq!(seen_once.verify_digest(digest, sig), Err(Error::Invalid));
            assert_eq!(precomputed.verify_digest(digest, sig), Err(Error::Invalid));
        }
    }
}

#[test]
fn a_signature_whose_sum_is_the_identity_is_refused() {
    // r = e and s = -r·d/(1+d) give [s]G + [r+s]P = O, whose "x" would pass B7 as r = e + 0.
    let key = SigningKey::generate().expect("key");
    let d = sm2::Scalar::from_repr((*key.to_bytes()).into()).expect("scalar");
    let e = [7u8; 32];
    let r = <sm2::Scalar as sm2::elliptic_curve::ops::Reduce<sm2::FieldBytes>>::reduce(&e.into());
    let s = -(r * d) * (d + sm2::Scalar::ONE).invert().expect("invertible");
    let sig = Signature::from_scalars(r, s).expect("nonzero");
    for vk in [key.verifying_key().clone(), key.verifying_key().clone().precomputed()] {
        assert_eq!(vk.verify_digest(&e, &sig), Err(Error::Invalid));
    }
}
