//! Points on the SM2 curve in Jacobian coordinates, over this crate's field arithmetic
//! (`field.rs`), and the fixed-base tables the signing and verifying keys use.
//!
//! The `sm2` crate's points use complete projective formulas (12 multiplications per addition);
//! the tables here hold affine points, so an addition costs 8 multiplications and 3 squarings
//! (`madd-2004-hmv`) and a doubling 3 and 5 (`dbl-2001-b`, a = -3). Those formulas are incomplete:
//! the constant-time path handles the identity cases by selection and never meets the others
//! (see [`FixedBaseTable::mul_ct`]); the variable-time path branches on them.

use sm2::elliptic_curve::BatchNormalize;
use sm2::elliptic_curve::point::AffineCoordinates;
use sm2::elliptic_curve::subtle::{Choice, ConditionallySelectable};
use sm2::elliptic_curve::{Group, PrimeField};
use sm2::{AffinePoint, ProjectivePoint, Scalar};

pub(crate) use crate::field::Fe;

/// Bits per signed digit of a scalar in the fixed-base tables.
pub(crate) const WINDOW: usize = 6;
/// Digit positions in a scalar below 2^256, plus one for the final carry.
const POSITIONS: usize = 256 / WINDOW + 1;
/// Multiples per position: `1..=2^(WINDOW-1)` (negative digits negate the point).
const MULTIPLES: usize = 1 << (WINDOW - 1);

/// A finite point `(x, y)` (`repr(C)`: the AVX2 row scan reads it as 8 limbs).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct Affine {
    x: Fe,
    y: Fe,
}

impl ConditionallySelectable for Affine {
    fn conditional_select(a: &Self, b: &Self, choice: Choice) -> Self {
        Self { x: Fe::conditional_select(&a.x, &b.x, choice), y: Fe::conditional_select(&a.y, &b.y, choice) }
    }
}

impl Affine {
    /// From the `sm2` crate's affine point; `None` for the identity.
    pub(crate) fn from_sm2(p: &AffinePoint) -> Option<Self> {
        if bool::from(p.is_identity()) {
            return None;
        }
        let x = Option::from(Fe::from_bytes(&p.x().into()))?;
        let y = Option::from(Fe::from_bytes(&p.y().into()))?;
        Some(Self { x, y })
    }

    fn neg(&self) -> Self {
        Self { x: self.x, y: -self.y }
    }
}

/// `(X : Y : Z)` standing for `(X/Z², Y/Z³)`; `Z = 0` is the identity.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Jacobian {
    x: Fe,
    y: Fe,
    z: Fe,
}

impl ConditionallySelectable for Jacobian {
    fn conditional_select(a: &Self, b: &Self, choice: Choice) -> Self {
        Self {
            x: Fe::conditional_select(&a.x, &b.x, choice),
            y: Fe::conditional_select(&a.y, &b.y, choice),
            z: Fe::conditional_select(&a.z, &b.z, choice),
        }
    }
}

impl Jacobian {
    /// `b` where `mask` is all ones, `a` where it is zero (branch-free).
    #[inline(always)]
    fn select_mask(a: &Self, b: &Self, mask: u64) -> Self {
        Self {
            x: Fe::select_mask(&a.x, &b.x, mask),
            y: Fe::select_mask(&a.y, &b.y, mask),
            z: Fe::select_mask(&a.z, &b.z, mask),
        }
    }
}

impl From<&Affine> for Jacobian {
    fn from(p: &Affine) -> Self {
        Self { x: p.x, y: p.y, z: Fe::ONE }
    }
}

impl Jacobian {
    pub(crate) const IDENTITY: Self = Self { x: Fe::ONE, y: Fe::ONE, z: Fe::ZERO };

    pub(crate) fn is_identity(&self) -> Choice {
        self.z.is_zero()
    }

    /// `2P`, `dbl-2001-b` (a = -3); the identity doubles to itself.
    pub(crate) fn double(&self) -> Self {
        let delta = self.z.square();
        let gamma = self.y.square();
        let beta = self.x * gamma;
        let t = (self.x - delta) * (self.x + delta);
        let alpha = t.double() + t;
        let beta4 = beta.double().double();
        let x3 = alpha.square() - beta4.double();
        let z3 = (self.y + self.z).square() - gamma - delta;
        let gamma2 = gamma.square();
        let y3 = alpha * (beta4 - x3) - gamma2.double().double().double();
        Self { x: x3, y: y3, z: z3 }
    }

    /// `P + Q`, `madd-2004-hmv` (8M + 3S), assuming `P` finite and `P ≠ ±Q` (callers guarantee
    /// or check it). Measured 13 % faster than `madd-2007-bl` (7M + 4S) here: it has 7 fewer
    /// modular additions and doublings, and a multiplication costs only ~1.6 squarings. Also
    /// returns `H = x(Q)·Z² - X` and `R = y(Q)·Z³ - Y` so that the variable-time caller can
    /// tell the excluded cases (`H = 0`).
    fn add_affine_unchecked(&self, q: &Affine) -> (Self, Fe, Fe) {
        let z1z1 = self.z.square();
        let u2 = q.x * z1z1;
        let s2 = q.y * self.z * z1z1;
        let h = u2 - self.x;
        let r = s2 - self.y;
        let hh = h.square();
        let hhh = h * hh;
        let v = self.x * hh;
        let x3 = r.square() - hhh - v.double();
        let y3 = r * (v - x3) - self.y * hhh;
        let z3 = self.z * h;
        (Self { x: x3, y: y3, z: z3 }, h, r)
    }

    /// `P + Q` in variable time, correct for every input.
    pub(crate) fn add_affine_vartime(&self, q: &Affine) -> Self {
        if bool::from(self.is_identity()) {
            return Self::from(q);
        }
        let (sum, h, r) = self.add_affine_unchecked(q);
        if bool::from(h.is_zero()) {
            return if bool::from(r.is_zero()) { Self::from(q).double() } else { Self::IDENTITY };
        }
        sum
    }

    /// `P + Q` in variable time, correct for every input (`add-2007-bl`).
    pub(crate) fn add_vartime(&self, q: &Self) -> Self {
        if bool::from(self.is_identity()) {
            return *q;
        }
        if bool::from(q.is_identity()) {
            return *self;
        }
        let z1z1 = self.z.square();
        let z2z2 = q.z.square();
        let u1 = self.x * z2z2;
        let u2 = q.x * z1z1;
        let s1 = self.y * q.z * z2z2;
        let s2 = q.y * self.z * z1z1;
        let h = u2 - u1;
        let r = (s2 - s1).double();
        if bool::from(h.is_zero()) {
            return if bool::from(r.is_zero()) { self.double() } else { Self::IDENTITY };
        }
        let i = h.double().square();
        let j = h * i;
        let v = u1 * i;
        let x3 = r.square() - j - v.double();
        let y3 = r * (v - x3) - (s1 * j).double();
        let z3 = ((self.z + q.z).square() - z1z1 - z2z2) * h;
        Self { x: x3, y: y3, z: z3 }
    }

    fn neg(&self) -> Self {
        Self { x: self.x, y: -self.y, z: self.z }
    }

    /// The affine x coordinate in variable time; `None` for the identity.
    pub(crate) fn x_vartime(&self) -> Option<Fe> {
        let zinv = self.z.invert_vartime()?;
        Some(self.x * zinv.square())
    }

    /// Whether this point is finite with affine `x ≡ c (mod n)`, without an inversion: `x` is
    /// below `p < 2n`, so it is `c` or, when that is below `p`, `c + n`; each is checked as
    /// `X = x·Z²`. Variable time (public points only).
    pub(crate) fn x_mod_n_is_vartime(&self, c: &Scalar) -> bool {
        if bool::from(self.is_identity()) {
            return false;
        }
        let c_bytes: [u8; 32] = c.to_repr().into();
        let Some(c_fe) = Option::<Fe>::from(Fe::from_bytes(&c_bytes)) else { return false };
        let zz = self.z.square();
        if bool::from((c_fe * zz - self.x).is_zero()) {
            return true;
        }
        let (high, low) = c_bytes.split_at(16);
        let below_p_minus_n =
            high.iter().all(|&b| b == 0) && u128::from_be_bytes(low.try_into().unwrap_or([0xff; 16])) < P_MINUS_N;
        below_p_minus_n && bool::from(((c_fe + order_in_field()) * zz - self.x).is_zero())
    }

    /// The affine x coordinate of a finite point whose `Z` is secret. The inversion runs in
    /// variable time on `Z·β` for a uniformly random nonzero `β`, which says nothing about `Z`:
    /// ~10× cheaper than the constant-time inversion.
    pub(crate) fn x_blinded(&self, blind: &Fe) -> Option<Fe> {
        let inv = (self.z * *blind).invert_vartime()?;
        let zinv = inv * *blind;
        Some(self.x * zinv.square())
    }

    /// The `sm2` crate's view of this point (for tests and table building).
    pub(crate) fn to_sm2(self) -> ProjectivePoint {
        match self.x_vartime() {
            None => ProjectivePoint::IDENTITY,
            Some(x) => {
                let zinv = self.z.invert_vartime().unwrap_or(Fe::ZERO);
                let y = self.y * zinv.square() * zinv;
                let mut bytes = [0u8; 65];
                bytes[0] = 4;
                bytes[1..33].copy_from_slice(&x.to_bytes());
                bytes[33..].copy_from_slice(&y.to_bytes());
                sm2::PublicKey::from_sec1_bytes(&bytes).map(|p| p.to_projective()).unwrap_or(ProjectivePoint::IDENTITY)
            }
        }
    }
}

/// `p - n`: below 2^128.
const P_MINUS_N: u128 = 0x8dfc_2093_de39_fad5_ac44_0bf6_c62a_bedc;

/// The group order `n` as a field element.
fn order_in_field() -> Fe {
    let n_minus_1: [u8; 32] = (-Scalar::ONE).to_repr().into();
    Option::<Fe>::from(Fe::from_bytes(&n_minus_1)).unwrap_or(Fe::ZERO) + Fe::ONE
}

/// `k` in signed base `2^WINDOW`, least significant first: digits in `[-2^(W-1), 2^(W-1)]`,
/// computed without a branch or an index that depends on `k`.
pub(crate) fn signed_digits(k: &Scalar) -> [i8; POSITIONS] {
    let be = k.to_repr();
    let mut le = [0u8; 34];
    for (dst, src) in le.iter_mut().zip(be.iter().rev()) {
        *dst = *src;
    }
    let mut out = [0i8; POSITIONS];
    let mut carry = 0u32;
    for (i, digit) in out.iter_mut().enumerate() {
        let bit = i * WINDOW;
        let pair = u32::from(le[bit / 8]) | (u32::from(le[bit / 8 + 1]) << 8);
        let v = ((pair >> (bit % 8)) & ((1 << WINDOW) - 1)) + carry;
        // 1 when v > 2^(W-1): then the digit is v - 2^W and one carries into the next position.
        carry = ((MULTIPLES as u32).wrapping_sub(v) >> 31) & 1;
        *digit = (v as i32 - ((carry as i32) << WINDOW)) as i8;
    }
    out
}

/// `j · 2^(WINDOW·i) · P` for every position `i` and `j` in `1..=MULTIPLES`, affine
/// (1,376 points, 88 KB).
pub(crate) struct FixedBaseTable {
    points: Vec<Affine>,
}

impl FixedBaseTable {
    /// Precomputes the multiples of a point of the prime-order group; `None` for the identity.
    pub(crate) fn new(p: &ProjectivePoint) -> Option<Self> {
        if bool::from(p.is_identity()) {
            return None;
        }
        let mut projective = Vec::with_capacity(POSITIONS * MULTIPLES);
        let mut base = *p;
        for _ in 0..POSITIONS {
            let mut multiple = base;
            for _ in 0..MULTIPLES {
                projective.push(multiple);
                multiple += base;
            }
            for _ in 0..WINDOW {
                base = base.double();
            }
        }
        // No multiple is the identity: n is prime and divides no j·2^(6i).
        let affine = <ProjectivePoint as BatchNormalize<[ProjectivePoint]>>::batch_normalize(&projective);
        let points = affine.iter().map(Affine::from_sm2).collect::<Option<Vec<_>>>()?;
        Some(Self { points })
    }

    fn row(&self, position: usize) -> &[Affine] {
        &self.points[position * MULTIPLES..(position + 1) * MULTIPLES]
    }

    /// `[k]P` in constant time: every row is scanned in full and every addition is made.
    ///
    /// The formula's excluded case `acc = ±T` cannot occur for `k` in `[0, n)`. Before position
    /// `i` the accumulator is `[a]P` with `|a| < 2^(6i)` and the entry is `[d·2^(6i)]P` with
    /// `1 ≤ |d| ≤ 32`, so `0 < |a ∓ d·2^(6i)| < 33·2^(6i)`, below `n` for `i ≤ 41`. At the last
    /// position (`i = 42`, `0 ≤ d ≤ 16`) `a = k - d·2^252`, and `a ≡ ±d·2^252` needs `k ≡ 0` or
    /// `k ≡ 2d·2^252 (mod n)`, whose top digit is `2d`, `2d - 16` or 0, never `d ≥ 1`.
    /// The identity cases (`acc = O` at the start, digit 0) are handled by selection.
    /// The first position's entry is copied rather than added (the accumulator is still the
    /// identity there): `Z = 1`, or `Z = 0` (the identity) for digit 0.
    pub(crate) fn mul_ct(&self, k: &Scalar) -> Jacobian {
        let digits = signed_digits(k);
        let (first, nonzero) = self.select_signed(0, digits[0]);
        let mut acc = Jacobian { x: first.x, y: first.y, z: Fe::select_mask(&Fe::ZERO, &Fe::ONE, nonzero) };
        for (i, &d) in digits.iter().enumerate().skip(1) {
            let (entry, nonzero) = self.select_signed(i, d);
            let (sum, _, _) = acc.add_affine_unchecked(&entry);
            let at_identity = core::hint::black_box(acc.z.zero_mask());
            let sum = Jacobian::select_mask(&sum, &Jacobian::from(&entry), at_identity);
            acc = Jacobian::select_mask(&acc, &sum, nonzero);
        }
        acc
    }

    /// `[d·2^(WINDOW·position)]P` for a signed digit `d` read in constant time, and a mask that
    /// is all ones when `d` is nonzero (for `d = 0` the entry is `[2^(WINDOW·position)]P`, to be
    /// discarded). The masks are made
    /// arithmetically and hidden from the optimiser; `subtle`'s `Choice` would do the same
    /// through a function call per use (three per position; measured 2–3 % of `[k]G`).
    #[inline(always)]
    fn select_signed(&self, position: usize, d: i8) -> (Affine, u64) {
        let sign = d >> 7; // all ones when negative
        let negative = i64::from(sign) as u64;
        let abs = ((d ^ sign).wrapping_sub(sign)) as u8;
        // Digit 0 reads entry 1 (its sum is discarded): the addition then always works on a
        // real point, never on zeros, whose arithmetic measured 1–3 cycles apart (dudect, k = 1).
        let is_zero = (u64::from(abs).wrapping_sub(1) >> 63) as u8;
        let entry = select_row(self.row(position), abs | is_zero);
        let y = Fe::select_mask(&entry.y, &entry.y.neg(), core::hint::black_box(negative));
        let abs = u64::from(abs);
        let nonzero = core::hint::black_box(((abs | abs.wrapping_neg()) >> 63).wrapping_neg());
        (Affine { x: entry.x, y }, nonzero)
    }

    /// `acc + [k]P` in variable time (public `k` only).
    pub(crate) fn mul_add_vartime(&self, k: &Scalar, mut acc: Jacobian) -> Jacobian {
        for (i, d) in signed_digits(k).into_iter().enumerate() {
            let row = self.row(i);
            match d {
                1.. => acc = acc.add_affine_vartime(&row[d as usize - 1]),
                ..0 => acc = acc.add_affine_vartime(&row[d.unsigned_abs() as usize - 1].neg()),
                0 => {}
            }
        }
        acc
    }
}

/// `row[abs - 1]`, or zeros for `abs = 0`, reading every entry: the masks are made arithmetically
/// and hidden from the optimiser (so it cannot turn them back into a branch or an index), then
/// the scan is plain AND/OR, which the compiler may vectorise.
#[inline(always)]
fn select_row(row: &[Affine], abs: u8) -> Affine {
    let mut masks = [0u64; MULTIPLES];
    for (j, m) in masks.iter_mut().enumerate() {
        let diff = u64::from(abs) ^ (j as u64 + 1);
        // all ones when diff = 0
        *m = ((diff | diff.wrapping_neg()) >> 63).wrapping_sub(1);
    }
    let masks = core::hint::black_box(masks);
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { select_row_avx2(row, &masks) };
    }
    select_row_portable(row, &masks)
}

/// [`select_row`]'s AND/OR scan in plain Rust.
#[inline(always)]
fn select_row_portable(row: &[Affine], masks: &[u64; MULTIPLES]) -> Affine {
    let mut entry = Affine { x: Fe::ZERO, y: Fe::ZERO };
    for (candidate, &m) in row.iter().zip(masks.iter()) {
        entry = Affine { x: entry.x.or_masked(&candidate.x, m), y: entry.y.or_masked(&candidate.y, m) };
    }
    entry
}

/// What [`has_avx2`] found: 0 not yet asked, 1 no, 2 yes.
#[cfg(target_arch = "x86_64")]
static AVX2: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Whether [`select_row_avx2`] may run here (a branch on the CPU, never on a value).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn has_avx2() -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    match AVX2.load(Relaxed) {
        2 => true,
        1 => false,
        _ => {
            let yes = std::arch::is_x86_feature_detected!("avx2");
            AVX2.store(if yes { 2 } else { 1 }, Relaxed);
            yes
        }
    }
}

/// [`select_row`]'s scan with AVX2: per entry one mask broadcast and two 32-byte AND-with-load
/// and OR, every entry read in full (a third of the instructions of the 16-byte scan the
/// compiler makes for [`select_row_portable`]). The loop count is the row length, public.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn select_row_avx2(row: &[Affine], masks: &[u64; MULTIPLES]) -> Affine {
    let row: &[Affine; MULTIPLES] = row.try_into().unwrap_or_else(|_| unreachable!("rows hold MULTIPLES entries"));
    let mut out = [0u64; 8];
    // SAFETY: reads the MULTIPLES entries of `row` (64 bytes each: `Affine` is repr(C) of two
    // repr(transparent) [u64; 4]) and the MULTIPLES masks, writes the 64 bytes of `out`.
    unsafe {
        // Fixed registers: `vzeroupper` changes every ymm register, which only `clobber_abi`
        // can declare, and it admits no register-class operands.
        core::arch::asm!(
            "vpxor ymm0, ymm0, ymm0",
            "vpxor ymm1, ymm1, ymm1",
            "2:",
            "vpbroadcastq ymm2, qword ptr [rdi]",
            "vpand ymm3, ymm2, ymmword ptr [rsi]",
            "vpand ymm4, ymm2, ymmword ptr [rsi + 32]",
            "vpor ymm0, ymm0, ymm3",
            "vpor ymm1, ymm1, ymm4",
            "add rsi, 64",
            "add rdi, 8",
            "dec rcx",
            "jnz 2b",
            "vmovdqu ymmword ptr [rdx], ymm0",
            "vmovdqu ymmword ptr [rdx + 32], ymm1",
            "vzeroupper",
            inout("rsi") row.as_ptr() => _,
            inout("rdi") masks.as_ptr() => _,
            inout("rcx") MULTIPLES => _,
            in("rdx") out.as_mut_ptr(),
            clobber_abi("C"),
            options(nostack),
        );
    }
    Affine { x: Fe::from_limbs([out[0], out[1], out[2], out[3]]), y: Fe::from_limbs([out[4], out[5], out[6], out[7]]) }
}

/// Width of the w-NAF used for a point without a table.
const NAF_WIDTH: u32 = 5;

/// `k` in width-5 non-adjacent form, least significant first: odd digits in `[-15, 15]` or 0.
fn wnaf(k: &Scalar) -> [i8; 257] {
    let be = k.to_repr();
    // little-endian 64-bit limbs with one spare for the carries of negative digits
    let mut n = [0u64; 5];
    for (i, limb) in n.iter_mut().take(4).enumerate() {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&be[32 - 8 * (i + 1)..32 - 8 * i]);
        *limb = u64::from_be_bytes(bytes);
    }
    let mut out = [0i8; 257];
    let width = 1i64 << NAF_WIDTH;
    for digit in out.iter_mut() {
        if n.iter().all(|&l| l == 0) {
            break;
        }
        if n[0] & 1 == 1 {
            let mut d = (n[0] & (width as u64 - 1)) as i64;
            if d >= width / 2 {
                d -= width;
            }
            *digit = d as i8;
            // n -= d
            if d > 0 {
                sub_small(&mut n, d as u64);
            } else {
                add_small(&mut n, d.unsigned_abs());
            }
        }
        shr1(&mut n);
    }
    out
}

fn sub_small(n: &mut [u64; 5], v: u64) {
    let mut borrow = v;
    for limb in n.iter_mut() {
        let (r, b) = limb.overflowing_sub(borrow);
        *limb = r;
        borrow = u64::from(b);
        if borrow == 0 {
            break;
        }
    }
}

fn add_small(n: &mut [u64; 5], v: u64) {
    let mut carry = v;
    for limb in n.iter_mut() {
        let (r, c) = limb.overflowing_add(carry);
        *limb = r;
        carry = u64::from(c);
        if carry == 0 {
            break;
        }
    }
}

fn shr1(n: &mut [u64; 5]) {
    for i in 0..5 {
        let next = if i + 1 < 5 { n[i + 1] << 63 } else { 0 };
        n[i] = (n[i] >> 1) | next;
    }
}

/// `[k]P` in variable time with a width-5 w-NAF (public `k` and `P` only).
pub(crate) fn mul_vartime(p: &Affine, k: &Scalar) -> Jacobian {
    let digits = wnaf(k);
    // P, 3P, 5P, …, 15P
    let base = Jacobian::from(p);
    let twice = base.double();
    let mut odd = [base; 8];
    for i in 1..8 {
        odd[i] = odd[i - 1].add_vartime(&twice);
    }
    let mut acc = Jacobian::IDENTITY;
    let top = digits.iter().rposition(|&d| d != 0);
    if let Some(top) = top {
        for &d in digits[..=top].iter().rev() {
            acc = acc.double();
            match d {
                1.. => acc = acc.add_vartime(&odd[d as usize / 2]),
                ..0 => acc = acc.add_vartime(&odd[d.unsigned_abs() as usize / 2].neg()),
                0 => {}
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use sm2::elliptic_curve::Generate;

    fn scalar_of_digits(digits: &[i8], radix_bits: u32) -> Scalar {
        let radix = Scalar::from(1u64 << radix_bits);
        digits.iter().rev().fold(Scalar::ZERO, |acc, d| {
            let mag = Scalar::from(u64::from(d.unsigned_abs()));
            acc * radix + if *d < 0 { -mag } else { mag }
        })
    }

    fn edge_scalars() -> Vec<Scalar> {
        let mut v = vec![Scalar::ONE, -Scalar::ONE, Scalar::from(32u64), Scalar::from(33u64), -Scalar::from(33u64)];
        v.extend((0..64).map(|i| Scalar::from(1u64 << i)));
        // k = 2d·2^252 mod n: where the last position's accumulator comes closest to its entry
        let top = (0..252).fold(Scalar::ONE, |acc, _| acc.double());
        v.extend((1..=16u64).map(|d| top * Scalar::from(2 * d)));
        v.extend((1..=16u64).map(|d| top * Scalar::from(d)));
        v.extend((0..200).map(|_| Scalar::generate()));
        v
    }

    #[test]
    fn the_row_scan_picks_exactly_one_entry_or_none() {
        let table = FixedBaseTable::new(&ProjectivePoint::GENERATOR).expect("table");
        let row = table.row(3);
        let all_ones = [u64::MAX; MULTIPLES];
        let none = [0u64; MULTIPLES];
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: the CPU has AVX2.
            let (every, nothing) = unsafe { (select_row_avx2(row, &all_ones), select_row_avx2(row, &none)) };
            let portable = select_row_portable(row, &all_ones);
            assert_eq!((every.x.to_bytes(), every.y.to_bytes()), (portable.x.to_bytes(), portable.y.to_bytes()));
            assert_eq!((nothing.x.to_bytes(), nothing.y.to_bytes()), ([0; 32], [0; 32]));
        }
        assert_eq!(select_row(row, 0).x.to_bytes(), [0; 32], "digit 0 selects nothing");
        let (entry, nonzero) = table.select_signed(3, 0);
        assert_eq!((entry.x.to_bytes(), nonzero), (row[0].x.to_bytes(), 0), "digit 0: entry 1, discarded");
        let (entry, nonzero) = table.select_signed(3, -5);
        assert_eq!(
            (entry.x.to_bytes(), entry.y.to_bytes(), nonzero),
            (row[4].x.to_bytes(), (-row[4].y).to_bytes(), u64::MAX)
        );
        for abs in 1..=MULTIPLES as u8 {
            let e = select_row(row, abs);
            let want = row[usize::from(abs) - 1];
            assert_eq!((e.x.to_bytes(), e.y.to_bytes()), (want.x.to_bytes(), want.y.to_bytes()), "{abs}");
        }
    }

    #[test]
    fn digits_recompose_the_scalar_and_stay_in_range() {
        for k in edge_scalars().into_iter().chain([Scalar::ZERO]) {
            let d = signed_digits(&k);
            assert!(d.iter().all(|d| d.unsigned_abs() as usize <= MULTIPLES), "{d:?}");
            assert_eq!(scalar_of_digits(&d, WINDOW as u32), k);
            let naf = wnaf(&k);
            assert!(naf.iter().all(|d| *d == 0 || (d % 2 != 0 && d.unsigned_abs() < 16)), "{naf:?}");
            assert_eq!(scalar_of_digits(&naf, 1), k);
        }
    }

    #[test]
    fn every_multiplication_matches_the_sm2_crate() {
        let g = FixedBaseTable::new(&ProjectivePoint::GENERATOR).expect("table");
        let p = ProjectivePoint::GENERATOR * Scalar::generate();
        let p_affine = Affine::from_sm2(&p.to_affine()).expect("finite");
        let p_table = FixedBaseTable::new(&p).expect("table");
        for k in edge_scalars() {
            let expect_g = ProjectivePoint::GENERATOR * k;
            let expect_p = p * k;
            assert_eq!(g.mul_ct(&k).to_sm2(), expect_g);
            assert_eq!(g.mul_add_vartime(&k, Jacobian::IDENTITY).to_sm2(), expect_g);
            assert_eq!(p_table.mul_ct(&k).to_sm2(), expect_p);
            assert_eq!(mul_vartime(&p_affine, &k).to_sm2(), expect_p);
        }
        assert!(bool::from(g.mul_ct(&Scalar::ZERO).is_identity()));
        assert!(bool::from(mul_vartime(&p_affine, &Scalar::ZERO).is_identity()));
    }

    /// `x ≡ c (mod n)` has two solutions below `p` when `c < p - n`; both are accepted, and
    /// nothing else (points are not needed for the algebra: `X = x·Z²` with a random `Z`).
    #[test]
    fn the_x_check_accepts_both_representatives_and_nothing_else() {
        let n = order_in_field();
        let z = Fe::from_u64(0x1234_5678_9abc).invert_vartime().expect("nonzero");
        let at = |x: Fe| Jacobian { x: x * z.square(), y: Fe::ONE, z };
        let scalar = |v: u128| {
            let mut b = [0u8; 32];
            b[16..].copy_from_slice(&v.to_be_bytes());
            Scalar::from_repr(b.into()).expect("below n")
        };
        let (below, above) = (scalar(P_MINUS_N - 1), scalar(P_MINUS_N));
        let fe = |s: &Scalar| Option::<Fe>::from(Fe::from_bytes(&s.to_repr().into())).expect("below p");
        for c in [Scalar::ZERO, Scalar::ONE, below, -Scalar::ONE, Scalar::generate()] {
            assert!(at(fe(&c)).x_mod_n_is_vartime(&c));
            assert!(!at(fe(&c) + Fe::ONE).x_mod_n_is_vartime(&c));
        }
        assert!(at(fe(&below) + n).x_mod_n_is_vartime(&below), "c + n below p");
        assert!(!at(fe(&above) + n).x_mod_n_is_vartime(&above), "c + n - p is not c mod n");
        assert!(!Jacobian::IDENTITY.x_mod_n_is_vartime(&Scalar::ONE));
        let g = Jacobian::from(&Affine::from_sm2(&sm2::AffinePoint::GENERATOR).expect("finite"));
        let gx = <Scalar as sm2::elliptic_curve::ops::Reduce<sm2::FieldBytes>>::reduce(
            &g.x_vartime().expect("finite").to_bytes().into(),
        );
        assert!(g.double().double().x_mod_n_is_vartime(&{
            let g4 = g.double().double();
            <Scalar as sm2::elliptic_curve::ops::Reduce<sm2::FieldBytes>>::reduce(
                &g4.x_vartime().expect("finite").to_bytes().into(),
            )
        }));
        assert!(!g.double().x_mod_n_is_vartime(&gx));
    }

    #[test]
    fn variable_time_additions_handle_the_exceptional_cases() {
        let p = ProjectivePoint::GENERATOR * Scalar::generate();
        let a = Affine::from_sm2(&p.to_affine()).expect("finite");
        let j = Jacobian::from(&a);
        assert_eq!(j.add_affine_vartime(&a).to_sm2(), p.double());
        assert!(bool::from(j.add_affine_vartime(&a.neg()).is_identity()));
        assert_eq!(Jacobian::IDENTITY.add_affine_vartime(&a).to_sm2(), p);
        assert_eq!(j.add_vartime(&j).to_sm2(), p.double());
        assert!(bool::from(j.add_vartime(&j.neg()).is_identity()));
        assert_eq!(Jacobian::IDENTITY.add_vartime(&j).to_sm2(), p);
        assert_eq!(j.add_vartime(&Jacobian::IDENTITY).to_sm2(), p);
        assert!(bool::from(Jacobian::IDENTITY.double().is_identity()));
        assert!(FixedBaseTable::new(&ProjectivePoint::IDENTITY).is_none());
    }
}

#[cfg(all(test, feature = "timing"))]
mod timing {
    use super::*;
    use sm2::elliptic_curve::Generate;

    /// `cargo test --release -p sm2-dsa --features timing --lib comb_speed -- --nocapture`: where
    /// `[k]G`'s time goes (a measurement, never part of the suite).
    #[test]
    fn comb_speed() {
        let table = FixedBaseTable::new(&ProjectivePoint::GENERATOR).expect("table");
        let k = Scalar::generate();
        let time = crate::median_time;
        let digits = signed_digits(&k);
        time("[k]G constant time", &mut || {
            std::hint::black_box(table.mul_ct(std::hint::black_box(&k)));
        });
        time("43 signed row selections", &mut || {
            for (i, &d) in digits.iter().enumerate() {
                std::hint::black_box(table.select_signed(i, std::hint::black_box(d)));
            }
        });
        let mut masks = [0u64; MULTIPLES];
        masks[9] = u64::MAX;
        time("43 row scans, portable", &mut || {
            for i in 0..POSITIONS {
                std::hint::black_box(select_row_portable(table.row(i), std::hint::black_box(&masks)));
            }
        });
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            time("43 row scans, AVX2", &mut || {
                for i in 0..POSITIONS {
                    // SAFETY: the CPU has AVX2.
                    std::hint::black_box(unsafe { select_row_avx2(table.row(i), std::hint::black_box(&masks)) });
                }
            });
        }
        let entry = table.row(5)[7];
        let mut acc = Jacobian::from(&table.row(3)[2]);
        time("43 mixed additions", &mut || {
            for _ in 0..POSITIONS {
                acc = std::hint::black_box(acc.add_affine_unchecked(std::hint::black_box(&entry)).0);
            }
        });
        time("[k]G variable time", &mut || {
            std::hint::black_box(table.mul_add_vartime(std::hint::black_box(&k), Jacobian::IDENTITY));
        });
    }
}
