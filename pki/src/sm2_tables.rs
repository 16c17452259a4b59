//! SM2 signature verification in variable time, with precomputed multiples of fixed points.
//!
//! Verification only ever handles public values (key, message, signature), so it need not be
//! constant-time (signing, which handles the private key, stays in the `sm2` crate). Most of a
//! verification is `[s]G + [t]P`. `G` never changes, and neither does `P` for the keys that
//! verify many signatures — the issuing CA's own key (every certificate is checked before it is
//! released) and callers' keys (every request) — so their multiples are computed once: a
//! multiplication becomes ~43 additions instead of 256 doublings and ~40 additions.

use std::sync::LazyLock;

use sm2::elliptic_curve::Group;
use sm2::elliptic_curve::ops::Reduce;
use sm2::elliptic_curve::point::AffineCoordinates;
use sm2::elliptic_curve::{BatchNormalize, PrimeField};
use sm2::{AffinePoint, FieldBytes, ProjectivePoint, Scalar};
use sm3::{Digest, Sm3};

/// Bits per signed digit of a scalar.
const WINDOW: usize = 6;
/// Digits in a 256-bit scalar, plus one for the final carry.
const DIGITS: usize = 256 / WINDOW + 1;
/// Multiples per digit position: `1..=2^(WINDOW-1)` (negatives come from negating).
const MULTIPLES: usize = 1 << (WINDOW - 1);

/// `j · 2^(WINDOW·i) · P` for every digit position `i` and `j` in `1..=MULTIPLES`, affine.
pub(crate) struct FixedBaseTable {
    points: Vec<AffinePoint>,
}

impl FixedBaseTable {
    /// Precomputes the multiples of `p` (1,376 points, ~90 KB; ~1.6 ms).
    pub(crate) fn new(p: &ProjectivePoint) -> Self {
        let mut projective = Vec::with_capacity(DIGITS * MULTIPLES);
        let mut base = *p;
        for _ in 0..DIGITS {
            let mut multiple = base;
            for _ in 0..MULTIPLES {
                projective.push(multiple);
                multiple += base;
            }
            for _ in 0..WINDOW {
                base = base.double();
            }
        }
        Self { points: <ProjectivePoint as BatchNormalize<[ProjectivePoint]>>::batch_normalize(&projective) }
    }

    /// Adds `[k]P` to `acc`, in variable time.
    fn mul_add_vartime(&self, k: &Scalar, acc: &mut ProjectivePoint) {
        for (i, d) in signed_digits(k).into_iter().enumerate() {
            let row = &self.points[i * MULTIPLES..(i + 1) * MULTIPLES];
            match d {
                1.. => *acc += &row[d as usize - 1],
                ..0 => *acc += -row[d.unsigned_abs() as usize - 1],
                0 => {}
            }
        }
    }
}

/// `k` in signed base `2^WINDOW`, least significant first: digits in `[-2^(W-1), 2^(W-1)]`.
fn signed_digits(k: &Scalar) -> [i8; DIGITS] {
    let be = k.to_repr();
    let mut le = [0u8; 33];
    for (dst, src) in le.iter_mut().zip(be.iter().rev()) {
        *dst = *src;
    }
    let mut out = [0i8; DIGITS];
    let mut carry = 0u32;
    for (i, digit) in out.iter_mut().enumerate() {
        let bit = i * WINDOW;
        let pair = u32::from(le[bit / 8]) | (u32::from(le.get(bit / 8 + 1).copied().unwrap_or(0)) << 8);
        let v = ((pair >> (bit % 8)) & ((1 << WINDOW) - 1)) + carry;
        if v > MULTIPLES as u32 {
            *digit = (v as i32 - (1 << WINDOW)) as i8;
            carry = 1;
        } else {
            *digit = v as i8;
            carry = 0;
        }
    }
    out
}

/// The generator's multiples, computed on first use.
static GENERATOR: LazyLock<FixedBaseTable> = LazyLock::new(|| FixedBaseTable::new(&ProjectivePoint::GENERATOR));

/// Checks an SM2 signature `(r, s)` over `e` (already `SM3(Z ‖ M)`) per GB/T 32918.2 §7.1, steps
/// B1–B7, with `key`'s precomputed multiples when there are some.
pub(crate) fn verify_digest(
    e: &[u8; 32],
    sig: &sm2::dsa::Signature,
    key: &sm2::PublicKey,
    table: Option<&FixedBaseTable>,
) -> bool {
    let (r, s) = (*sig.r(), *sig.s()); // B1, B2: both in [1, n-1], checked when parsed
    let e = <Scalar as Reduce<FieldBytes>>::reduce(&FieldBytes::from(*e)); // B4
    let t = r + s; // B5
    if bool::from(t.is_zero()) {
        return false;
    }
    // B6: (x1, y1) = [s]G + [t]P, never the point at infinity.
    let mut point = match table {
        Some(table) => {
            let mut acc = ProjectivePoint::IDENTITY;
            table.mul_add_vartime(&t, &mut acc);
            acc
        }
        None => ProjectivePoint::from(key).mul_vartime(&t),
    };
    GENERATOR.mul_add_vartime(&s, &mut point);
    if bool::from(point.is_identity()) {
        return false;
    }
    // B7: R = (e + x1) mod n must equal r.
    r == e + <Scalar as Reduce<FieldBytes>>::reduce(&point.to_affine().x())
}

/// `SM3(Z ‖ msg)`.
pub(crate) fn message_digest(z: &[u8; 32], msg: &[u8]) -> [u8; 32] {
    let mut h = Sm3::new_with_prefix(z);
    h.update(msg);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sm2::elliptic_curve::Generate;

    fn scalar_of(digits: &[i8; DIGITS]) -> Scalar {
        let radix = Scalar::from(1u64 << WINDOW);
        digits.iter().rev().fold(Scalar::ZERO, |acc, d| {
            let mag = Scalar::from(u64::from(d.unsigned_abs()));
            acc * radix + if *d < 0 { -mag } else { mag }
        })
    }

    #[test]
    fn digits_recompose_the_scalar_and_stay_in_range() {
        let mut cases = vec![Scalar::ZERO, Scalar::ONE, -Scalar::ONE, Scalar::from(32u64), Scalar::from(33u64)];
        cases.extend((0..200).map(|_| Scalar::generate()));
        for k in cases {
            let d = signed_digits(&k);
            assert!(d.iter().all(|d| d.unsigned_abs() as usize <= MULTIPLES), "{d:?}");
            assert_eq!(scalar_of(&d), k);
        }
    }

    #[test]
    fn table_multiplication_matches_the_curve_arithmetic() {
        let p = ProjectivePoint::GENERATOR * Scalar::generate();
        let table = FixedBaseTable::new(&p);
        for k in [Scalar::ONE, -Scalar::ONE, Scalar::generate(), Scalar::generate()] {
            let mut acc = ProjectivePoint::IDENTITY;
            table.mul_add_vartime(&k, &mut acc);
            assert_eq!(acc, p * k);
            let mut acc = ProjectivePoint::IDENTITY;
            GENERATOR.mul_add_vartime(&k, &mut acc);
            assert_eq!(acc, ProjectivePoint::GENERATOR * k);
        }
    }
}
