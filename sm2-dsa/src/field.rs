//! Arithmetic modulo SM2's prime `p = 2^256 - 2^224 - 2^96 + 2^64 - 1`, Montgomery form
//! (`R = 2^256`), four 64-bit limbs, constant time (no branch or index on a value).
//!
//! Written because the `sm2` crate's field multiplication (fiat-crypto behind `primefield`'s
//! wrappers) measured ~33 ns here, most of a signature's time. `p ≡ -1 (mod 2^64)` makes the
//! Montgomery factor 1 and its shape turns each reduction round into additions and shifts. Only
//! the inversion is delegated to the `sm2` crate. Differential-tested against the `sm2` crate's
//! field (`tests/differential.rs`).

use sm2::elliptic_curve::PrimeField;
use sm2::elliptic_curve::hazmat::FieldArithmetic;
use sm2::elliptic_curve::ops::Invert;
use sm2::elliptic_curve::subtle::{Choice, ConditionallySelectable, CtOption};
use sm2::{FieldBytes, Sm2};

/// The `sm2` crate's field element, for the inversion and the differential tests.
pub(crate) type Sm2Fe = <Sm2 as FieldArithmetic>::FieldElement;

const P: [u64; 4] = [0xffff_ffff_ffff_ffff, 0xffff_ffff_0000_0000, 0xffff_ffff_ffff_ffff, 0xffff_fffe_ffff_ffff];
/// `R² mod p`, to enter Montgomery form.
const R2: [u64; 4] = [0x2_0000_0003, 0x2_ffff_ffff, 0x1_0000_0001, 0x4_0000_0002];

/// An element of the SM2 base field, `a·R mod p`, always fully reduced.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Fe([u64; 4]);

#[inline(always)]
fn adc(a: u64, b: u64, carry: u64) -> (u64, u64) {
    let t = u128::from(a) + u128::from(b) + u128::from(carry);
    (t as u64, (t >> 64) as u64)
}

#[inline(always)]
fn sbb(a: u64, b: u64, borrow: u64) -> (u64, u64) {
    let t = u128::from(a).wrapping_sub(u128::from(b) + u128::from(borrow));
    (t as u64, (t >> 127) as u64)
}

#[inline(always)]
fn mac(acc: u64, a: u64, b: u64, carry: u64) -> (u64, u64) {
    let t = u128::from(acc) + u128::from(a) * u128::from(b) + u128::from(carry);
    (t as u64, (t >> 64) as u64)
}

/// `v - p` if `v ≥ p` (with `top` the bit above the four limbs), else `v`.
#[inline(always)]
fn reduce_once(v: [u64; 4], top: u64) -> [u64; 4] {
    let (d0, b) = sbb(v[0], P[0], 0);
    let (d1, b) = sbb(v[1], P[1], b);
    let (d2, b) = sbb(v[2], P[2], b);
    let (d3, b) = sbb(v[3], P[3], b);
    let (_, b) = sbb(top, 0, b);
    // b = 1: v < p, keep v
    let keep = 0u64.wrapping_sub(b);
    [
        (v[0] & keep) | (d0 & !keep),
        (v[1] & keep) | (d1 & !keep),
        (v[2] & keep) | (d2 & !keep),
        (v[3] & keep) | (d3 & !keep),
    ]
}

impl Fe {
    pub(crate) const ZERO: Self = Self([0; 4]);
    /// `R mod p`.
    pub(crate) const ONE: Self = Self([1, 0xffff_ffff, 0, 0x1_0000_0000]);

    #[inline(always)]
    pub(crate) fn add(&self, rhs: &Self) -> Self {
        let (s0, c) = adc(self.0[0], rhs.0[0], 0);
        let (s1, c) = adc(self.0[1], rhs.0[1], c);
        let (s2, c) = adc(self.0[2], rhs.0[2], c);
        let (s3, c) = adc(self.0[3], rhs.0[3], c);
        Self(reduce_once([s0, s1, s2, s3], c))
    }

    #[inline(always)]
    pub(crate) fn sub(&self, rhs: &Self) -> Self {
        let (d0, b) = sbb(self.0[0], rhs.0[0], 0);
        let (d1, b) = sbb(self.0[1], rhs.0[1], b);
        let (d2, b) = sbb(self.0[2], rhs.0[2], b);
        let (d3, b) = sbb(self.0[3], rhs.0[3], b);
        let mask = 0u64.wrapping_sub(b);
        let (r0, c) = adc(d0, P[0] & mask, 0);
        let (r1, c) = adc(d1, P[1] & mask, c);
        let (r2, c) = adc(d2, P[2] & mask, c);
        let (r3, _) = adc(d3, P[3] & mask, c);
        Self([r0, r1, r2, r3])
    }

    #[inline]
    pub(crate) fn double(&self) -> Self {
        self.add(self)
    }

    #[inline]
    pub(crate) fn neg(&self) -> Self {
        Self::ZERO.sub(self)
    }

    /// Montgomery product `a·b·R⁻¹ mod p`.
    #[inline(always)]
    pub(crate) fn mul(&self, rhs: &Self) -> Self {
        let (a, b) = (&self.0, &rhs.0);
        let mut t = [0u64; 8];
        for i in 0..4 {
            let mut carry = 0;
            for j in 0..4 {
                (t[i + j], carry) = mac(t[i + j], a[i], b[j], carry);
            }
            t[i + 4] = carry;
        }
        Self::reduce(t)
    }

    /// `a²·R⁻¹ mod p`: the six cross products once, doubled, plus the four squares.
    #[inline(always)]
    pub(crate) fn square(&self) -> Self {
        let a = &self.0;
        let mut t = [0u64; 8];
        for i in 0..3 {
            let mut carry = 0;
            for j in i + 1..4 {
                (t[i + j], carry) = mac(t[i + j], a[i], a[j], carry);
            }
            t[i + 4] = carry;
        }
        t[7] = t[6] >> 63;
        for i in (2..7).rev() {
            t[i] = (t[i] << 1) | (t[i - 1] >> 63);
        }
        t[1] <<= 1;
        let mut carry = 0;
        for i in 0..4 {
            let sq = u128::from(a[i]) * u128::from(a[i]);
            (t[2 * i], carry) = adc(t[2 * i], sq as u64, carry);
            (t[2 * i + 1], carry) = adc(t[2 * i + 1], (sq >> 64) as u64, carry);
        }
        Self::reduce(t)
    }

    /// Montgomery reduction `t·R⁻¹ mod p` of `t < p²`. Each round adds `m·p` for `m` the lowest
    /// limb and drops that limb; `p`'s shape makes `(w + m·p)/2^64` equal to
    /// `w/2^64 + m + m·2^192 - m·2^32 - m·2^160`: additions and shifts, no multiplication. That
    /// value is below `2^192 + p < 2^256`, so the limbs may wrap in between.
    #[inline(always)]
    fn reduce(t: [u64; 8]) -> Self {
        let mut w = [t[0], t[1], t[2], t[3]];
        for _ in 0..4 {
            let m = w[0];
            let (n0, c) = adc(w[1], m, 0);
            let (n1, c) = adc(w[2], 0, c);
            let (n2, c) = adc(w[3], 0, c);
            let n3 = m.wrapping_add(c);
            let (n0, b) = sbb(n0, m << 32, 0);
            let (n1, b) = sbb(n1, m >> 32, b);
            let (n2, b) = sbb(n2, m << 32, b);
            let n3 = n3.wrapping_sub(m >> 32).wrapping_sub(b);
            w = [n0, n1, n2, n3];
        }
        // w ≤ p and the high half is below p: one conditional subtraction finishes
        let (s0, c) = adc(w[0], t[4], 0);
        let (s1, c) = adc(w[1], t[5], c);
        let (s2, c) = adc(w[2], t[6], c);
        let (s3, c) = adc(w[3], t[7], c);
        Self(reduce_once([s0, s1, s2, s3], c))
    }

    /// `self | (other & mask)`: with `self` zero and masks all-zero but one all-ones, a
    /// table lookup that reads every entry the same way.
    #[inline(always)]
    pub(crate) fn or_masked(&self, other: &Self, mask: u64) -> Self {
        Self([
            self.0[0] | (other.0[0] & mask),
            self.0[1] | (other.0[1] & mask),
            self.0[2] | (other.0[2] & mask),
            self.0[3] | (other.0[3] & mask),
        ])
    }

    pub(crate) fn is_zero(&self) -> Choice {
        let x = self.0[0] | self.0[1] | self.0[2] | self.0[3];
        Choice::from((((x | x.wrapping_neg()) >> 63) ^ 1) as u8)
    }

    /// From a canonical big-endian encoding; `None` when not below `p`.
    pub(crate) fn from_bytes(bytes: &[u8; 32]) -> CtOption<Self> {
        let mut v = [0u64; 4];
        for (i, limb) in v.iter_mut().enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[32 - 8 * (i + 1)..32 - 8 * i]);
            *limb = u64::from_be_bytes(w);
        }
        let (_, b) = sbb(v[0], P[0], 0);
        let (_, b) = sbb(v[1], P[1], b);
        let (_, b) = sbb(v[2], P[2], b);
        let (_, b) = sbb(v[3], P[3], b);
        CtOption::new(Self(v).mul(&Self(R2)), Choice::from(b as u8))
    }

    /// The canonical big-endian encoding.
    pub(crate) fn to_bytes(self) -> [u8; 32] {
        let v = self.mul(&Self([1, 0, 0, 0])).0;
        let mut out = [0u8; 32];
        for (i, limb) in v.iter().enumerate() {
            out[32 - 8 * (i + 1)..32 - 8 * i].copy_from_slice(&limb.to_be_bytes());
        }
        out
    }

    pub(crate) fn to_sm2(self) -> Sm2Fe {
        Sm2Fe::from_repr(FieldBytes::from(self.to_bytes())).unwrap_or(Sm2Fe::ZERO)
    }

    pub(crate) fn from_sm2(fe: &Sm2Fe) -> Self {
        Self::from_bytes(&fe.to_repr().into()).unwrap_or(Self::ZERO)
    }

    /// `a⁻¹`, in variable time (the `sm2` crate's safegcd); `None` for zero.
    pub(crate) fn invert_vartime(&self) -> Option<Self> {
        Option::<Sm2Fe>::from(self.to_sm2().invert_vartime()).map(|inv| Self::from_sm2(&inv))
    }

    #[cfg(test)]
    pub(crate) fn from_u64(v: u64) -> Self {
        Self([v, 0, 0, 0]).mul(&Self(R2))
    }
}

impl ConditionallySelectable for Fe {
    #[inline]
    fn conditional_select(a: &Self, b: &Self, choice: Choice) -> Self {
        let mask = 0u64.wrapping_sub(u64::from(choice.unwrap_u8()));
        Self([
            a.0[0] ^ (mask & (a.0[0] ^ b.0[0])),
            a.0[1] ^ (mask & (a.0[1] ^ b.0[1])),
            a.0[2] ^ (mask & (a.0[2] ^ b.0[2])),
            a.0[3] ^ (mask & (a.0[3] ^ b.0[3])),
        ])
    }
}

/// Differential checks against the `sm2` crate's field on `count` random inputs (and the edges).
#[cfg(test)]
pub(crate) fn check_against_sm2_crate(count: usize) {
    let mut edges: Vec<[u8; 32]> = vec![[0; 32], {
        let mut one = [0u8; 32];
        one[31] = 1;
        one
    }];
    let p_minus = |k: u8| {
        let mut b = Sm2Fe::ZERO.to_repr();
        b.copy_from_slice(&(-Sm2Fe::from_u64(u64::from(k))).to_repr());
        <[u8; 32]>::from(b)
    };
    edges.extend((1..4).map(p_minus));
    let random = (0..count).map(|_| {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).expect("random");
        b
    });
    let values: Vec<([u8; 32], Option<Sm2Fe>)> = edges
        .into_iter()
        .chain(random)
        .map(|b| (b, Option::<Sm2Fe>::from(Sm2Fe::from_repr(FieldBytes::from(b)))))
        .collect();
    for pair in values.windows(2) {
        let (a_bytes, a_ref) = pair[0];
        let (b_bytes, b_ref) = pair[1];
        let a = Option::<Fe>::from(Fe::from_bytes(&a_bytes));
        let b = Option::<Fe>::from(Fe::from_bytes(&b_bytes));
        assert_eq!(a.is_some(), a_ref.is_some(), "range check of {}", hex::encode(a_bytes));
        let (Some(a), Some(a_ref), Some(b), Some(b_ref)) = (a, a_ref, b, b_ref) else { continue };
        let same = |ours: Fe, theirs: Sm2Fe| assert_eq!(ours.to_bytes(), <[u8; 32]>::from(theirs.to_repr()));
        same(a, a_ref);
        same(a.mul(&b), a_ref * b_ref);
        same(a.square(), a_ref.square());
        same(a.add(&b), a_ref + b_ref);
        same(a.sub(&b), a_ref - b_ref);
        same(a.neg(), -a_ref);
        same(a.double(), a_ref.double());
        assert_eq!(bool::from(a.is_zero()), bool::from(a_ref.is_zero()));
        if let Some(inv) = a.invert_vartime() {
            same(inv.mul(&a), Sm2Fe::ONE);
        }
    }
}

impl std::ops::Add for Fe {
    type Output = Self;
    #[inline]
    fn add(self, rhs: Self) -> Self {
        Fe::add(&self, &rhs)
    }
}

impl std::ops::Sub for Fe {
    type Output = Self;
    #[inline]
    fn sub(self, rhs: Self) -> Self {
        Fe::sub(&self, &rhs)
    }
}

impl std::ops::Mul for Fe {
    type Output = Self;
    #[inline]
    fn mul(self, rhs: Self) -> Self {
        Fe::mul(&self, &rhs)
    }
}

impl std::ops::Neg for Fe {
    type Output = Self;
    #[inline]
    fn neg(self) -> Self {
        Fe::neg(&self)
    }
}

#[cfg(all(test, feature = "timing"))]
mod timing {
    use super::*;

    /// `cargo test --release -p sm2-dsa --features timing field_speed -- --nocapture`: ns per
    /// operation (a measurement, not a check: never part of the test suite).
    #[test]
    fn field_speed() {
        let a = Fe::from_u64(0x1234_5678_9abc_def1).invert_vartime().expect("nonzero");
        let b = Sm2Fe::from_u64(0x1234_5678_9abc_def1).invert_vartime().expect("nonzero");
        let n = 2_000_000u32;
        let time = |name: &str, f: &mut dyn FnMut()| {
            let start = std::time::Instant::now();
            for _ in 0..n {
                f();
            }
            println!("{name}: {:.1} ns", start.elapsed().as_nanos() as f64 / f64::from(n));
        };
        let mut x = a;
        time("ours mul", &mut || x = std::hint::black_box(x.mul(&a)));
        time("ours square", &mut || x = std::hint::black_box(x.square()));
        let mut y = b;
        time("sm2 crate mul", &mut || y = std::hint::black_box(y * b));
        time("sm2 crate square", &mut || y = std::hint::black_box(y.square()));
        assert_eq!(x.to_bytes(), <[u8; 32]>::from(y.to_repr()));
    }
}
