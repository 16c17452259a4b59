//! SM2 signatures (GB/T 32918.2) for keys that sign or verify many times.
//!
//! - [`SigningKey`]: the private scalar `d` with `(1 + d)⁻¹` computed once, a hedged nonce per
//!   signature (`k = HMAC-SM3(d, random ‖ e)`: random as GB/T 32918.2 §6.1 A3 asks, and a
//!   failing or repeating RNG still gives distinct `k` for distinct messages), `[k]G` from a
//!   table of the generator's multiples read in constant time, and the affine conversion's
//!   inversion blinded by a random factor. Both scalars are wiped on drop.
//! - [`VerifyingKey`]: a checked public point; [`VerifyingKey::precomputed`] adds a table of its
//!   multiples (88 KB, built once) for keys that verify many signatures.
//!
//! Field arithmetic (`field.rs`: Montgomery form for SM2's prime, assembly on x86-64 with
//! BMI2+ADX) and the variable-time field inversion (`inverse.rs`) are this crate's; scalars are
//! the `sm2` crate's. Every hand-written piece — field, inversion, point formulas, tables,
//! recodings — is differential-tested against the `sm2` crate (`tests/differential.rs` and the
//! unit tests). Signatures are the `sm2` crate's [`Signature`] (`r ‖ s`).
//! Messages go in as `e = SM3(Z ‖ M)`; [`z`] and [`digest`] compute them.

mod field;
mod inverse;
mod point;

use std::sync::{Arc, LazyLock};

use sm2::elliptic_curve::PrimeField;
use sm2::elliptic_curve::ops::Reduce;
use sm2::{FieldBytes, ProjectivePoint, Scalar};
use sm3::{Digest, Sm3};
use zeroize::Zeroize;

use point::{Affine, Fe, FixedBaseTable, Jacobian};

pub use sm2::dsa::Signature;

/// Why a key could not be made or a signature could not be made or checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The private scalar is 0, not below `n`, or `n - 1` (for which `1 + d` has no inverse).
    #[error("private key is not in [1, n-2]")]
    BadPrivateKey,
    /// The bytes are not an uncompressed or compressed point on the curve, or are the identity.
    #[error("public key is not a finite point on the SM2 curve")]
    BadPublicKey,
    /// The operating system's random number generator failed.
    #[error("the operating system's random number generator failed")]
    Random,
    /// The signature does not verify.
    #[error("signature does not verify")]
    Invalid,
    /// The signer ID is longer than 8191 bytes (its bit length must fit ENTL's 16 bits).
    #[error("signer ID is longer than 8191 bytes")]
    SignerIdTooLong,
}

/// The generator's multiples, built on first use (~2 ms).
static GENERATOR: LazyLock<FixedBaseTable> = LazyLock::new(|| {
    FixedBaseTable::new(&ProjectivePoint::GENERATOR).unwrap_or_else(|| unreachable!("the generator is finite"))
});

/// Builds the generator's table now rather than in the first signature or verification.
pub fn warm_up() {
    LazyLock::force(&GENERATOR);
}

/// An SM2 private key prepared for signing: `d`, `(1 + d)⁻¹` and HMAC-SM3 keyed with `d`, all
/// wiped on drop.
pub struct SigningKey {
    d: Scalar,
    d_plus_1_inv: Scalar,
    /// HMAC-SM3 after absorbing `d ⊕ ipad` and `d ⊕ opad`: each nonce then costs three SM3
    /// compressions instead of five. Its SM3 states wipe themselves on drop (`sm3/zeroize`).
    nonce_mac: hmac::Hmac<Sm3>,
    public: VerifyingKey,
}

impl Drop for SigningKey {
    fn drop(&mut self) {
        self.d.zeroize();
        self.d_plus_1_inv.zeroize();
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("public", &self.public).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// From a 32-byte big-endian private scalar in `[1, n-2]`.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, Error> {
        let d = Option::<Scalar>::from(Scalar::from_repr((*bytes).into())).ok_or(Error::BadPrivateKey)?;
        Self::from_scalar(d)
    }

    /// From the `sm2` crate's secret key.
    pub fn from_secret_key(secret: &sm2::SecretKey) -> Result<Self, Error> {
        Self::from_scalar(*secret.to_nonzero_scalar())
    }

    fn from_scalar(mut d: Scalar) -> Result<Self, Error> {
        let inverse = (d + Scalar::ONE).invert();
        if bool::from(d.is_zero() | inverse.is_none()) {
            d.zeroize();
            return Err(Error::BadPrivateKey);
        }
        let d_plus_1_inv = inverse.unwrap_or(Scalar::ZERO);
        let nonce_mac = {
            use hmac::KeyInit;
            let d_bytes = zeroize::Zeroizing::new(d.to_repr());
            // HMAC takes keys of every length: this cannot fail.
            <hmac::Hmac<Sm3> as KeyInit>::new_from_slice(&d_bytes[..]).map_err(|_| Error::BadPrivateKey)?
        };
        let public = GENERATOR.mul_ct(&d);
        let point = public.to_sm2();
        Ok(Self { d, d_plus_1_inv, nonce_mac, public: VerifyingKey::from_point(point).ok_or(Error::BadPrivateKey)? })
    }

    /// A fresh key from the operating system's random number generator.
    pub fn generate() -> Result<Self, Error> {
        loop {
            let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
            getrandom::fill(&mut bytes[..]).map_err(|_| Error::Random)?;
            match Self::from_bytes(&bytes) {
                Err(Error::BadPrivateKey) => continue,
                other => return other,
            }
        }
    }

    /// The private scalar, big-endian (to store it; wiped when the returned value drops).
    pub fn to_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.d.to_repr().into())
    }

    /// The public key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.public
    }

    /// Signs `e = SM3(Z ‖ M)` (GB/T 32918.2 §6.1, A2–A7) with a nonce from the operating system.
    pub fn sign_digest(&self, e: &[u8; 32]) -> Result<Signature, Error> {
        loop {
            // k from 32 random bytes hedged with d and e (a broken RNG must not repeat k across
            // messages: that would give d away), the inversion's blinding factor from 32 more.
            let mut random = zeroize::Zeroizing::new([0u8; 64]);
            os_random(&mut random[..])?;
            let mut k_bytes = self.hedged_nonce(&random[..32], e);
            let mut blind_bytes = FieldBytes::default();
            blind_bytes.copy_from_slice(&random[32..]);
            let k = Scalar::from_repr(k_bytes);
            let blind = Fe::from_bytes(&blind_bytes.into());
            k_bytes.zeroize();
            // Rejection (probability ~2^-31 each) only says a draw was out of range.
            let (Some(mut k), Some(blind)) = (Option::<Scalar>::from(k), Option::<Fe>::from(blind)) else {
                continue;
            };
            if bool::from(k.is_zero() | blind.is_zero()) {
                continue;
            }
            let signature = self.sign_with_nonce(e, &k, &blind);
            k.zeroize();
            if let Some(signature) = signature {
                return Ok(signature);
            }
        }
    }

    /// `HMAC-SM3(d, random ‖ e)`: uniform when `random` is, distinct per message when it is not.
    fn hedged_nonce(&self, random: &[u8], e: &[u8; 32]) -> FieldBytes {
        use hmac::Mac;
        let mut mac = self.nonce_mac.clone();
        mac.update(random);
        mac.update(e);
        let mut out = FieldBytes::default();
        out.copy_from_slice(&mac.finalize().into_bytes());
        out
    }

    /// A6 as `s = (1 + d)⁻¹·(k + r) - r`, equal to `(1 + d)⁻¹·(k - r·d)`; `None` where A5 or A6
    /// says to draw another `k`.
    fn sign_with_nonce(&self, e: &[u8; 32], k: &Scalar, blind: &Fe) -> Option<Signature> {
        let e = <Scalar as Reduce<FieldBytes>>::reduce(&FieldBytes::from(*e));
        let x1 = GENERATOR.mul_ct(k).x_blinded(blind)?;
        let r = e + <Scalar as Reduce<FieldBytes>>::reduce(&x1.to_bytes().into());
        if bool::from(r.is_zero() | (r + k).is_zero()) {
            return None;
        }
        let s = self.d_plus_1_inv * (*k + r) - r;
        Signature::from_scalars(r, s).ok()
    }

    /// Signs `msg` for signer ID `id`: `e = SM3(Z ‖ msg)`, then [`SigningKey::sign_digest`].
    pub fn sign(&self, id: &[u8], msg: &[u8]) -> Result<Signature, Error> {
        let z = z(id, &self.public)?;
        self.sign_digest(&digest(&z, msg))
    }
}

/// Bytes of the operating system's random number generator taken per system call: signing
/// draws 64 per signature, and one `getrandom` call per signature measured ~0.5 µs here (3 % of
/// a signature).
const RANDOM_BATCH: usize = 1024;

/// Random bytes fetched ahead from the operating system, per thread, each byte wiped as it is
/// handed out and the rest on thread exit.
struct RandomPool {
    bytes: zeroize::Zeroizing<[u8; RANDOM_BATCH]>,
    /// Bytes before this index are used (and wiped).
    next: usize,
}

thread_local! {
    static RANDOM_POOL: std::cell::RefCell<RandomPool> =
        std::cell::RefCell::new(RandomPool { bytes: zeroize::Zeroizing::new([0; RANDOM_BATCH]), next: RANDOM_BATCH });
}

/// Fills `out` from the operating system's generator, through the thread's pool (directly when
/// `out` is larger than the pool). A copy of the pool in a forked child repeats bytes that the parent also
/// uses; signing only feeds them through HMAC with the key and the message (distinct messages
/// still get distinct nonces, the same message the same signature) and into the inversion's
/// blinding, so a repeat gives nothing away.
fn os_random(out: &mut [u8]) -> Result<(), Error> {
    if out.len() > RANDOM_BATCH {
        return getrandom::fill(out).map_err(|_| Error::Random);
    }
    RANDOM_POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.next + out.len() > RANDOM_BATCH {
            getrandom::fill(&mut pool.bytes[..]).map_err(|_| Error::Random)?;
            pool.next = 0;
        }
        let start = pool.next;
        let taken = &mut pool.bytes[start..start + out.len()];
        out.copy_from_slice(taken);
        taken.zeroize();
        pool.next += out.len();
        Ok(())
    })
}

/// A checked SM2 public key; with [`VerifyingKey::precomputed`], also its multiples (shared by
/// clones).
#[derive(Clone)]
pub struct VerifyingKey {
    point: sm2::PublicKey,
    affine: Affine,
    table: Option<Arc<FixedBaseTable>>,
}

impl PartialEq for VerifyingKey {
    fn eq(&self, other: &Self) -> bool {
        self.point == other.point
    }
}

impl Eq for VerifyingKey {}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey").field("point", &self.point).field("precomputed", &self.table.is_some()).finish()
    }
}

impl VerifyingKey {
    fn from_point(point: ProjectivePoint) -> Option<Self> {
        let point = sm2::PublicKey::from_affine(point.to_affine()).ok()?;
        Some(Self::from_public_key(point))
    }

    /// From the `sm2` crate's public key (already checked to be a finite curve point).
    pub fn from_public_key(point: sm2::PublicKey) -> Self {
        let affine = Affine::from_sm2(point.as_affine())
            .unwrap_or_else(|| unreachable!("an sm2::PublicKey is never the identity"));
        Self { point, affine, table: None }
    }

    /// From a SEC1 encoding (`04 ‖ X ‖ Y` or compressed).
    pub fn from_sec1(bytes: &[u8]) -> Result<Self, Error> {
        let point = sm2::PublicKey::from_sec1_bytes(bytes).map_err(|_| Error::BadPublicKey)?;
        Ok(Self::from_public_key(point))
    }

    /// This key with its multiples precomputed (88 KB, ~2 ms once); each verification then
    /// costs about half. Clones share the table.
    pub fn precomputed(self) -> Self {
        let table = self.table.clone().or_else(|| FixedBaseTable::new(&self.point.to_projective()).map(Arc::new));
        Self { table, ..self }
    }

    /// Whether [`VerifyingKey::precomputed`] made this key's multiples.
    pub fn is_precomputed(&self) -> bool {
        self.table.is_some()
    }

    /// The `sm2` crate's public key.
    pub fn as_public_key(&self) -> &sm2::PublicKey {
        &self.point
    }

    /// The uncompressed SEC1 encoding `04 ‖ X ‖ Y`.
    pub fn to_sec1_uncompressed(&self) -> [u8; 65] {
        use sm2::elliptic_curve::sec1::ToSec1Point;
        let mut out = [0u8; 65];
        out.copy_from_slice(self.point.to_sec1_point(false).as_bytes());
        out
    }

    /// Checks `(r, s)` over `e = SM3(Z ‖ M)` (GB/T 32918.2 §7.1, B1–B7), in variable time: every
    /// input is public.
    pub fn verify_digest(&self, e: &[u8; 32], sig: &Signature) -> Result<(), Error> {
        let (r, s) = (*sig.r(), *sig.s()); // B1, B2: in [1, n-1] by construction of Signature
        let e = <Scalar as Reduce<FieldBytes>>::reduce(&FieldBytes::from(*e)); // B4
        let t = r + s; // B5
        if bool::from(t.is_zero()) {
            return Err(Error::Invalid);
        }
        // B6: (x1, y1) = [s]G + [t]P, never the identity
        let tp = match &self.table {
            Some(table) => table.mul_add_vartime(&t, Jacobian::IDENTITY),
            None => point::mul_vartime(&self.affine, &t),
        };
        let sum = GENERATOR.mul_add_vartime(&s, tp);
        // B7: r = e + x1 mod n, checked as x1 ≡ r - e without making x1 affine
        if sum.x_mod_n_is_vartime(&(r - e)) { Ok(()) } else { Err(Error::Invalid) }
    }

    /// Checks a signature over `msg` for signer ID `id`.
    pub fn verify(&self, id: &[u8], msg: &[u8], sig: &Signature) -> Result<(), Error> {
        let z = z(id, self)?;
        self.verify_digest(&digest(&z, msg), sig)
    }
}

/// The curve parameters `a, b, xG, yG` as they enter Z (GB/T 32918.2 §5.5).
const CURVE_FOR_Z: [u8; 128] = {
    let hex = b"FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC\
                28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93\
                32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7\
                BC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0";
    let mut out = [0u8; 128];
    let mut i = 0;
    while i < 128 {
        out[i] = (nibble(hex[2 * i]) << 4) | nibble(hex[2 * i + 1]);
        i += 1;
    }
    out
};

const fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        _ => c - b'A' + 10,
    }
}

/// `Z = SM3(ENTL ‖ ID ‖ a ‖ b ‖ xG ‖ yG ‖ xA ‖ yA)` for signer ID `id` and key `key`.
pub fn z(id: &[u8], key: &VerifyingKey) -> Result<[u8; 32], Error> {
    let entl = u16::try_from(id.len() * 8).map_err(|_| Error::SignerIdTooLong)?;
    let mut h = Sm3::new();
    h.update(entl.to_be_bytes());
    h.update(id);
    h.update(CURVE_FOR_Z);
    h.update(&key.to_sec1_uncompressed()[1..]);
    Ok(h.finalize().into())
}

/// `e = SM3(Z ‖ msg)`, what [`SigningKey::sign_digest`] signs.
pub fn digest(z: &[u8; 32], msg: &[u8]) -> [u8; 32] {
    let mut h = Sm3::new_with_prefix(z);
    h.update(msg);
    h.finalize().into()
}

/// Prints the median and minimum time of `f` over 41 batches of 500 calls: the machine is
/// shared and single runs swing by 25 %. For the `timing` measurements, never the suite.
#[cfg(all(test, feature = "timing"))]
pub(crate) fn median_time(name: &str, f: &mut dyn FnMut()) {
    let mut per: Vec<f64> = (0..41)
        .map(|_| {
            let start = std::time::Instant::now();
            for _ in 0..500 {
                f();
            }
            start.elapsed().as_nanos() as f64 / 500.0
        })
        .collect();
    per.sort_by(f64::total_cmp);
    println!("{name}: median {:.0} ns, min {:.0} ns", per[per.len() / 2], per[0]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex32(s: &str) -> [u8; 32] {
        hex::decode(s).expect("hex").try_into().expect("32 bytes")
    }

    /// A stuck RNG (the same "random" bytes every time) must still give a different nonce for
    /// each message and each key; a good one a different nonce for the same message.
    #[test]
    fn a_stuck_rng_still_gives_distinct_nonces() {
        let stuck = [7u8; 32];
        let a = SigningKey::generate().expect("key");
        let b = SigningKey::generate().expect("key");
        let (e1, e2) = ([1u8; 32], [2u8; 32]);
        let k = a.hedged_nonce(&stuck, &e1);
        assert_ne!(k, a.hedged_nonce(&stuck, &e2), "message not mixed in");
        assert_ne!(k, b.hedged_nonce(&stuck, &e1), "key not mixed in");
        assert_ne!(k, a.hedged_nonce(&[8u8; 32], &e1), "randomness not mixed in");
        assert_eq!(k, a.hedged_nonce(&stuck, &e1));
        assert_ne!(k, FieldBytes::default());
        // the cached keyed state computes plain HMAC-SM3(d, random ‖ e)
        use hmac::{KeyInit, Mac};
        let mut fresh = <hmac::Hmac<Sm3> as KeyInit>::new_from_slice(&a.to_bytes()[..]).expect("key");
        fresh.update(&stuck);
        fresh.update(&e1);
        assert_eq!(k[..], fresh.finalize().into_bytes()[..]);
    }

    /// GB/T 32918.2-2016 Annex A (also GM/T 0003.5-2012): key, nonce and signature on the
    /// recommended curve, signer ID "1234567812345678", message "message digest".
    #[test]
    fn the_standard_example_signs_as_published() {
        let key = SigningKey::from_bytes(&hex32("3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8"))
            .expect("key");
        let point = key.verifying_key().to_sec1_uncompressed();
        assert_eq!(
            hex::encode_upper(&point[1..]),
            "09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020\
             CCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13"
        );
        let e = digest(&z(b"1234567812345678", key.verifying_key()).expect("z"), b"message digest");
        let k = Scalar::from_repr(hex32("59276E27D506861A16680F3AD9C02DCCEF3CC1FA3CDBE4CE6D54B80DEAC1BC21").into())
            .expect("k");
        for blind in [Fe::ONE, Fe::from_u64(0x1234_5678)] {
            let sig = key.sign_with_nonce(&e, &k, &blind).expect("signature");
            assert_eq!(
                hex::encode_upper(sig.to_bytes()),
                "F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3\
                 B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA"
            );
            for vk in [key.verifying_key().clone(), key.verifying_key().clone().precomputed()] {
                assert_eq!(vk.verify_digest(&e, &sig), Ok(()));
                assert_eq!(vk.verify(b"1234567812345678", b"message digest", &sig), Ok(()));
                assert_eq!(vk.verify(b"1234567812345678", b"message digesT", &sig), Err(Error::Invalid));
            }
        }
    }

    /// The pool hands out each byte once, wipes it, and refills when it runs short.
    #[test]
    fn the_random_pool_never_hands_out_a_byte_twice() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..3 * RANDOM_BATCH / 64 {
            let mut out = [0u8; 64];
            os_random(&mut out).expect("random");
            assert!(seen.insert(out), "64 random bytes repeated");
        }
        RANDOM_POOL.with(|pool| {
            let pool = pool.borrow();
            assert!(pool.bytes[..pool.next].iter().all(|&b| b == 0), "used bytes not wiped");
        });
    }

    /// More than the pool holds is asked of the system directly: no panic, no repeat.
    #[test]
    fn a_request_larger_than_the_pool_is_filled_directly() {
        let mut a = vec![0u8; RANDOM_BATCH + 1];
        let mut b = vec![0u8; RANDOM_BATCH + 1];
        os_random(&mut a).expect("random");
        os_random(&mut b).expect("random");
        assert_ne!(a, b);
        assert!(a.iter().any(|&x| x != 0));
    }

    #[test]
    fn the_field_matches_the_sm2_crate() {
        field::check_against_sm2_crate(count("SM2_DSA_FIELD_CASES", 20_000));
    }

    /// How many random cases a differential test runs: `var` from the environment (100,000 or
    /// more for the full run), else `default`.
    fn count(var: &str, default: usize) -> usize {
        std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    }

    #[test]
    fn keys_outside_the_range_are_refused() {
        let n_minus_1 = (-Scalar::ONE).to_repr();
        assert_eq!(SigningKey::from_bytes(&[0u8; 32]).err(), Some(Error::BadPrivateKey));
        assert_eq!(SigningKey::from_bytes(&[0xffu8; 32]).err(), Some(Error::BadPrivateKey));
        assert_eq!(SigningKey::from_bytes(&n_minus_1.into()).err(), Some(Error::BadPrivateKey));
        assert_eq!(VerifyingKey::from_sec1(&[0u8]).err(), Some(Error::BadPublicKey));
        let mut off_curve = SigningKey::generate().expect("key").verifying_key().to_sec1_uncompressed();
        off_curve[64] ^= 1;
        assert_eq!(VerifyingKey::from_sec1(&off_curve).err(), Some(Error::BadPublicKey));
        assert_eq!(
            z(&[0u8; 8192], SigningKey::generate().expect("key").verifying_key()).err(),
            Some(Error::SignerIdTooLong)
        );
    }

    /// `cargo test --release -p sm2-dsa --features timing --lib sign_parts -- --nocapture`:
    /// where a signature's time goes besides `[k]G` (a measurement, never part of the suite).
    #[cfg(feature = "timing")]
    #[test]
    fn sign_parts() {
        let time = crate::median_time;
        let key = SigningKey::generate().expect("key");
        let z = z(b"1234567812345678", key.verifying_key()).expect("z");
        let msg = [1u8; 300];
        let e = digest(&z, &msg);
        time("sign_digest", &mut || {
            std::hint::black_box(key.sign_digest(std::hint::black_box(&e)).expect("sign"));
        });
        time("e = SM3(Z ‖ 300-byte message)", &mut || {
            std::hint::black_box(digest(&z, std::hint::black_box(&msg)));
        });
        time("hedged nonce (HMAC-SM3)", &mut || {
            std::hint::black_box(key.hedged_nonce(&[7u8; 32], std::hint::black_box(&e)));
        });
        time("64 random bytes from the OS", &mut || {
            let mut random = [0u8; 64];
            getrandom::fill(&mut random).expect("random");
            std::hint::black_box(random);
        });
        time("64 random bytes through the pool", &mut || {
            let mut random = [0u8; 64];
            os_random(&mut random).expect("random");
            std::hint::black_box(random);
        });
        let k = Scalar::from_repr(key.hedged_nonce(&[7u8; 32], &e)).expect("below n");
        time("[k]G", &mut || {
            std::hint::black_box(GENERATOR.mul_ct(std::hint::black_box(&k)));
        });
        let point = GENERATOR.mul_ct(&k);
        let blind = Fe::from_bytes(&[9u8; 32]).expect("below p");
        time("affine x (blinded inversion)", &mut || {
            std::hint::black_box(std::hint::black_box(point).x_blinded(&blind));
        });
    }

    /// Welch's t statistic of two samples.
    #[cfg(feature = "timing")]
    fn welch_t(a: &[f64], b: &[f64]) -> f64 {
        let stats = |v: &[f64]| {
            let n = v.len() as f64;
            let mean = v.iter().sum::<f64>() / n;
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
            (mean, var, n)
        };
        let (ma, va, na) = stats(a);
        let (mb, vb, nb) = stats(b);
        (ma - mb) / (va / na + vb / nb).sqrt()
    }

    /// One-sample t statistic of paired differences (mean over its standard error).
    #[cfg(feature = "timing")]
    fn paired_t(d: &[f64]) -> f64 {
        let n = d.len() as f64;
        let mean = d.iter().sum::<f64>() / n;
        let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        mean / (var / n).sqrt()
    }

    /// CPU cycles (time-stamp counter) of one call, fenced so that the call's instructions stay
    /// between the two reads.
    #[cfg(all(feature = "timing", target_arch = "x86_64"))]
    fn cycles(f: &mut impl FnMut()) -> f64 {
        use core::arch::x86_64::{__rdtscp, _mm_lfence};
        let mut aux = 0u32;
        // SAFETY: rdtscp and lfence only read the counter and order instructions.
        let start = unsafe {
            _mm_lfence();
            __rdtscp(&mut aux)
        };
        f();
        // SAFETY: as above.
        let end = unsafe {
            let t = __rdtscp(&mut aux);
            _mm_lfence();
            t
        };
        end.wrapping_sub(start) as f64
    }

    #[cfg(all(feature = "timing", not(target_arch = "x86_64")))]
    fn cycles(f: &mut impl FnMut()) -> f64 {
        let start = std::time::Instant::now();
        f();
        start.elapsed().as_nanos() as f64
    }

    /// dudect (Reparaz, Balasch, Verbauwhede 2017), made robust to a shared VM: `pairs` times,
    /// one call of each class back to back in a random order (`run(class, i)` for the i-th
    /// pair), timed in cycles. Two statistics, each on all pairs and on the pairs whose slower
    /// call is below the 99th, 95th, 90th, 75th and 50th percentile (dudect's cropping, which
    /// drops interrupts and preemptions): Welch's t between the classes, as dudect, and the
    /// paired t of the differences within a pair, which a slow drift of the machine (minutes of
    /// other load) cannot move, because both calls of a pair see the same machine. Returns the
    /// largest |t| of each.
    #[cfg(feature = "timing")]
    fn dudect(name: &str, pairs: usize, mut run: impl FnMut(bool, usize)) -> (f64, f64) {
        let mut coins = vec![0u8; pairs.div_ceil(8)];
        getrandom::fill(&mut coins).expect("random");
        // warm caches and branch predictors on both classes first
        for i in 0..pairs.min(2_000) {
            run(i % 2 == 0, i);
        }
        let mut times = Vec::with_capacity(pairs);
        for i in 0..pairs {
            let fixed_first = (coins[i / 8] >> (i % 8)) & 1 == 1;
            let first = cycles(&mut || run(!fixed_first, i));
            let second = cycles(&mut || run(fixed_first, i));
            // (fixed, random)
            times.push(if fixed_first { (second, first) } else { (first, second) });
        }
        let mut slower: Vec<f64> = times.iter().map(|(a, b)| a.max(*b)).collect();
        slower.sort_by(f64::total_cmp);
        let (mut worst_welch, mut worst_paired) = (0f64, 0f64);
        for pct in [100usize, 99, 95, 90, 75, 50] {
            let cut = slower[(slower.len() - 1) * pct / 100];
            let kept: Vec<(f64, f64)> = times.iter().copied().filter(|(a, b)| a.max(*b) <= cut).collect();
            let fixed: Vec<f64> = kept.iter().map(|p| p.0).collect();
            let random: Vec<f64> = kept.iter().map(|p| p.1).collect();
            let diffs: Vec<f64> = kept.iter().map(|p| p.0 - p.1).collect();
            let (welch, paired) = (welch_t(&fixed, &random), paired_t(&diffs));
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            println!(
                "{name}: pairs below percentile {pct:>3}: {:>7} kept, mean {:.0} vs {:.0} cycles, Welch t = {welch:+.2}, paired t = {paired:+.2}",
                kept.len(),
                mean(&fixed),
                mean(&random)
            );
            worst_welch = worst_welch.max(welch.abs());
            worst_paired = worst_paired.max(paired.abs());
        }
        (worst_welch, worst_paired)
    }

    /// `cargo test --release -p sm2-dsa --features timing --lib dudect -- --nocapture
    /// --test-threads=1` (a measurement, never part of the suite; run it pinned, e.g.
    /// `taskset -c 1`, with nothing else running; pairs per test from `SM2_DSA_DUDECT_PAIRS`,
    /// default 200,000). Signing with a nonce of mostly zero digits (k = 1) against random
    /// nonces; with a special key against random keys (the nonce derivation included, since it
    /// reads the key); A/A controls with the same input in both classes, which must pass for
    /// the others to mean anything; and a variable-time `[k]G`, which must fail. Passes when
    /// every paired |t| stays below 4.5 (dudect's own threshold for "probably not constant
    /// time" is 10).
    #[cfg(feature = "timing")]
    #[test]
    fn dudect_signing_time_does_not_depend_on_nonce_or_key() {
        let pairs = count("SM2_DSA_DUDECT_PAIRS", 200_000);
        let e = [0x42u8; 32];
        let random_scalar = || loop {
            let mut b = [0u8; 32];
            getrandom::fill(&mut b).expect("random");
            if let Some(k) = Option::<Scalar>::from(Scalar::from_repr(b.into())) {
                return k;
            }
        };
        let random_blind = || loop {
            let mut b = [0u8; 32];
            getrandom::fill(&mut b).expect("random");
            if let Some(f) = Option::<Fe>::from(Fe::from_bytes(&b)) {
                return f;
            }
        };
        // A fresh (k, β) per pair, shared by its two calls: the inversion of Z·β runs in
        // variable time, and a small pool would give each class its own set of inversion times.
        let pool: Vec<(Scalar, Fe)> = (0..pairs).map(|_| (random_scalar(), random_blind())).collect();
        let key = SigningKey::generate().expect("key");
        let nonce = dudect("nonce: k = 1 vs random k", pairs, |fixed, i| {
            let (k, blind) = &pool[i];
            let k = if fixed { Scalar::ONE } else { *k };
            std::hint::black_box(key.sign_with_nonce(&e, &k, blind));
        });
        let nonce_aa = dudect("nonce A/A: random k vs the same k", pairs, |_, i| {
            let (k, blind) = &pool[i];
            std::hint::black_box(key.sign_with_nonce(&e, k, blind));
        });
        // The special key d = (n - 1)/2 makes (1 + d)⁻¹ = 2, a scalar of one set bit, the value
        // signing multiplies by. Keys sit in pairs of neighbouring slots of one allocation, and a
        // coin per pair puts the special key in the first or the second slot. With a fixed slot
        // per class the slot parity alone (where a key straddles cache lines) moved the means
        // by 30–50 cycles: |t| = 4.4 between two sets of random keys, 8.9 with the special key.
        let half: [u8; 32] = (-Scalar::ONE * Scalar::from(2u64).invert().expect("invertible")).to_repr().into();
        assert_eq!(SigningKey::from_bytes(&half).expect("key").d_plus_1_inv, Scalar::from(2u64));
        let mut slot_coins = [0u8; 64];
        getrandom::fill(&mut slot_coins).expect("random");
        let slot_of = |fixed: bool, i: usize| {
            let j = i % 512;
            let special_second = (slot_coins[j / 8] >> (j % 8)) & 1 == 1;
            2 * j + usize::from(fixed == special_second)
        };
        let keys_in_slots = |special: Option<&[u8; 32]>| -> Vec<SigningKey> {
            (0..1024)
                .map(|slot| match special {
                    Some(d) if slot_of(true, slot / 2) == slot => SigningKey::from_bytes(d),
                    _ => SigningKey::generate(),
                })
                .collect::<Result<_, _>>()
                .expect("keys")
        };
        let sign_with = |signer: &SigningKey, i: usize| {
            let (_, blind) = &pool[i];
            let k = Option::<Scalar>::from(Scalar::from_repr(signer.hedged_nonce(&pool[i].0.to_repr(), &e)))
                .unwrap_or(Scalar::ONE);
            std::hint::black_box(signer.sign_with_nonce(&e, &k, blind));
        };
        let signers = keys_in_slots(Some(&half));
        let keyed = dudect("key: (1+d)⁻¹ = 2 vs random keys", pairs, |fixed, i| {
            sign_with(&signers[slot_of(fixed, i)], i);
        });
        let others = keys_in_slots(None);
        let keyed_aa = dudect("key A/A: random keys vs random keys", pairs, |fixed, i| {
            sign_with(&others[slot_of(fixed, i)], i);
        });
        // The harness must see a leak where there is one: the variable-time multiplication.
        let control = dudect("control: variable-time [k]G, k = 1 vs random", pairs / 4, |fixed, i| {
            let k = if fixed { Scalar::ONE } else { pool[i].0 };
            std::hint::black_box(GENERATOR.mul_add_vartime(&k, Jacobian::IDENTITY));
        });
        println!(
            "largest |t| (Welch, paired): nonce {nonce:.2?}, nonce A/A {nonce_aa:.2?}, key {keyed:.2?}, key A/A {keyed_aa:.2?}, control {control:.2?}"
        );
        assert!(control.1 > 4.5, "the harness did not see the variable-time code's leak (|t| = {:.2})", control.1);
        assert!(nonce_aa.1 < 4.5 && keyed_aa.1 < 4.5, "A/A controls failed: the machine is too noisy to judge");
        assert!(nonce.1 < 4.5 && keyed.1 < 4.5, "timing tells the classes apart: |t| = {:.2}, {:.2}", nonce.1, keyed.1);
    }
}
