//! Arithmetic modulo SM2's prime `p = 2^256 - 2^224 - 2^96 + 2^64 - 1`, Montgomery form
//! (`R = 2^256`), four 64-bit limbs, constant time (no branch or index on a value).
//!
//! Written because the `sm2` crate's field multiplication (fiat-crypto behind `primefield`'s
//! wrappers) measured ~33 ns here, most of a signature's time. `p ≡ -1 (mod 2^64)` makes the
//! Montgomery factor 1 and its shape turns each reduction round into additions and shifts. On
//! x86-64 CPUs with BMI2 and ADX (checked at run time, the branch is on the CPU, never on a
//! value) multiplication and squaring are assembly (`mulx`, `adcx`/`adox`); elsewhere plain
//! Rust. Inversion (variable time) is `inverse.rs`. Everything is differential-tested against
//! the `sm2` crate's field (`check_against_sm2_crate`), the portable code too.

#[cfg(test)]
use sm2::elliptic_curve::PrimeField;
#[cfg(test)]
use sm2::elliptic_curve::hazmat::FieldArithmetic;
#[cfg(test)]
use sm2::elliptic_curve::ops::Invert;
use sm2::elliptic_curve::subtle::{Choice, ConditionallySelectable, CtOption};
#[cfg(test)]
use sm2::{FieldBytes, Sm2};

/// The `sm2` crate's field element, for the differential tests.
#[cfg(test)]
pub(crate) type Sm2Fe = <Sm2 as FieldArithmetic>::FieldElement;

const P: [u64; 4] = [0xffff_ffff_ffff_ffff, 0xffff_ffff_0000_0000, 0xffff_ffff_ffff_ffff, 0xffff_fffe_ffff_ffff];
/// `R² mod p`, to enter Montgomery form.
const R2: [u64; 4] = [0x2_0000_0003, 0x2_ffff_ffff, 0x1_0000_0001, 0x4_0000_0002];

/// An element of the SM2 base field, `a·R mod p`, always fully reduced.
#[derive(Clone, Copy, Debug, Default)]
#[repr(transparent)]
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

/// The four Montgomery reduction rounds both [`square_adx`] and [`mul_adx`] end with: the low
/// half t0..t3 in r8..r11 is folded in, one limb per round (SM2's p ≡ −1 mod 2^64, so each
/// round's m is the limb itself and its multiple of p is shifts), leaving w in r8..r11 for the
/// high half to be added; rax and rcx are scratch.
#[cfg(target_arch = "x86_64")]
macro_rules! reduction_rounds {
    () => {
        concat!(
            // reduction round 0: m = r8, w = [r9, r10, r11, r8]
            "mov rax, r8\n",
            "shl rax, 32\n",
            "mov rcx, r8\n",
            "shr rcx, 32\n",
            "add r9, r8\n",
            "adc r10, 0\n",
            "adc r11, 0\n",
            "adc r8, 0\n",
            "sub r9, rax\n",
            "sbb r10, rcx\n",
            "sbb r11, rax\n",
            "sbb r8, rcx\n",
            // round 1: m = r9, w = [r10, r11, r8, r9]
            "mov rax, r9\n",
            "shl rax, 32\n",
            "mov rcx, r9\n",
            "shr rcx, 32\n",
            "add r10, r9\n",
            "adc r11, 0\n",
            "adc r8, 0\n",
            "adc r9, 0\n",
            "sub r10, rax\n",
            "sbb r11, rcx\n",
            "sbb r8, rax\n",
            "sbb r9, rcx\n",
            // round 2: m = r10, w = [r11, r8, r9, r10]
            "mov rax, r10\n",
            "shl rax, 32\n",
            "mov rcx, r10\n",
            "shr rcx, 32\n",
            "add r11, r10\n",
            "adc r8, 0\n",
            "adc r9, 0\n",
            "adc r10, 0\n",
            "sub r11, rax\n",
            "sbb r8, rcx\n",
            "sbb r9, rax\n",
            "sbb r10, rcx\n",
            // round 3: m = r11, w = [r8, r9, r10, r11]
            "mov rax, r11\n",
            "shl rax, 32\n",
            "mov rcx, r11\n",
            "shr rcx, 32\n",
            "add r8, r11\n",
            "adc r9, 0\n",
            "adc r10, 0\n",
            "adc r11, 0\n",
            "sub r8, rax\n",
            "sbb r9, rcx\n",
            "sbb r10, rax\n",
            "sbb r11, rcx\n",
        )
    };
}

/// `a²·R⁻¹` below `2p` as four limbs and the bit above them, for CPUs with BMI2 and ADX
/// (callers check). The six cross products `a_i·a_j` (`i < j`) once, then doubled on the `adcx`
/// carry chain while the four squares `a_i²` go in on the `adox` chain; then the four reduction
/// rounds of [`Fe::reduce`] (add `m` at limbs 1 and 4, subtract `m·2^32` and `m·2^160`) and the
/// high half added. Ten `mulx` instead of the product's sixteen. Constant time.
///
/// Why no carry is lost: the cross products sum to below `2^448` (the top one, `a_2·a_3`,
/// ends at limb 6), so limb 7 only takes the doubling's carry and `a² < 2^512` the squares'.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn square_adx(a: &[u64; 4]) -> ([u64; 4], u64) {
    let (r0, r1, r2, r3, top): (u64, u64, u64, u64, u64);
    // SAFETY: reads the four limbs behind `a` and writes only the registers declared below, no
    // stack; the caller has checked that the CPU has BMI2 (mulx) and ADX (adcx/adox).
    unsafe {
        core::arch::asm!(
            // cross products: t1..t6 in r9, r10, r11, r12, r14, r15
            "mov rdx, [{a}]",
            "mulx r10, r9, [{a} + 8]",
            "mulx r11, rax, [{a} + 16]",
            "mulx r12, rcx, [{a} + 24]",
            "add r10, rax",
            "adc r11, rcx",
            "adc r12, 0",
            "mov rdx, [{a} + 8]",
            "mulx r13, rax, [{a} + 16]",
            "mulx r14, rcx, [{a} + 24]",
            "add r13, rcx",
            "adc r14, 0",
            "mov rdx, [{a} + 16]",
            "mulx r15, r8, [{a} + 24]",
            "add r11, rax",
            "adc r12, r13",
            "adc r14, 0",
            "add r14, r8",
            "adc r15, 0",
            // doubled (adcx) plus the squares (adox): t0..t7 in r8..r12, r14, r15, r13
            "xor r13d, r13d",
            "mov rdx, [{a}]",
            "mulx rcx, r8, rdx",
            "adcx r9, r9",
            "adox r9, rcx",
            "mov rdx, [{a} + 8]",
            "mulx rcx, rax, rdx",
            "adcx r10, r10",
            "adox r10, rax",
            "adcx r11, r11",
            "adox r11, rcx",
            "mov rdx, [{a} + 16]",
            "mulx rcx, rax, rdx",
            "adcx r12, r12",
            "adox r12, rax",
            "adcx r14, r14",
            "adox r14, rcx",
            "mov rdx, [{a} + 24]",
            "mulx rcx, rax, rdx",
            "adcx r15, r15",
            "adox r15, rax",
            "adcx r13, r13",
            "adox r13, rcx",
            reduction_rounds!(),
            // plus the high half t4..t7
            "add r8, r12",
            "adc r9, r14",
            "adc r10, r15",
            "adc r11, r13",
            "mov eax, 0",
            "adc rax, 0",
            a = in(reg) a.as_ptr(),
            out("rax") top,
            out("rcx") _,
            out("rdx") _,
            out("r8") r0,
            out("r9") r1,
            out("r10") r2,
            out("r11") r3,
            out("r12") _,
            out("r13") _,
            out("r14") _,
            out("r15") _,
            options(pure, readonly, nostack),
        );
    }
    ([r0, r1, r2, r3], top)
}

/// `a·b·R⁻¹` below `2p` as four limbs and the bit above them, for CPUs with BMI2 and ADX
/// (callers check): the product first, one row of `mulx` per limb of `b` on the two carry
/// chains (`adcx`/`adox`), then the reduction of [`square_adx`], whose rounds depend on each
/// other through one limb only. Measured 5–8 % faster than rounds of product and reduction
/// interleaved. Constant time: no branch, no memory index.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn mul_adx(a: &[u64; 4], b: &[u64; 4]) -> ([u64; 4], u64) {
    let (r0, r1, r2, r3, top): (u64, u64, u64, u64, u64);
    // SAFETY: reads the four limbs behind each reference and writes only the registers declared
    // below, no stack; the caller has checked that the CPU has BMI2 (mulx) and ADX (adcx/adox).
    unsafe {
        core::arch::asm!(
            // row 0: a·b0 in t0..t4 = r8..r12
            "mov rdx, [{b}]",
            "mulx r9, r8, [{a}]",
            "mulx r10, rax, [{a} + 8]",
            "add r9, rax",
            "mulx r11, rax, [{a} + 16]",
            "adc r10, rax",
            "mulx r12, rax, [{a} + 24]",
            "adc r11, rax",
            "adc r12, 0",
            // row 1: + a·b1·2^64, t5 = r13 (a·(b0 + b1·2^64) < 2^384: nothing beyond t5)
            "mov rdx, [{b} + 8]",
            "xor r13d, r13d",
            "mulx rcx, rax, [{a}]",
            "adcx r9, rax",
            "adox r10, rcx",
            "mulx rcx, rax, [{a} + 8]",
            "adcx r10, rax",
            "adox r11, rcx",
            "mulx rcx, rax, [{a} + 16]",
            "adcx r11, rax",
            "adox r12, rcx",
            "mulx rcx, rax, [{a} + 24]",
            "adcx r12, rax",
            "adox r13, rcx",
            "mov eax, 0",
            "adcx r13, rax",
            // row 2: + a·b2·2^128, t6 = r14
            "mov rdx, [{b} + 16]",
            "xor r14d, r14d",
            "mulx rcx, rax, [{a}]",
            "adcx r10, rax",
            "adox r11, rcx",
            "mulx rcx, rax, [{a} + 8]",
            "adcx r11, rax",
            "adox r12, rcx",
            "mulx rcx, rax, [{a} + 16]",
            "adcx r12, rax",
            "adox r13, rcx",
            "mulx rcx, rax, [{a} + 24]",
            "adcx r13, rax",
            "adox r14, rcx",
            "mov eax, 0",
            "adcx r14, rax",
            // row 3: + a·b3·2^192, t7 = r15
            "mov rdx, [{b} + 24]",
            "xor r15d, r15d",
            "mulx rcx, rax, [{a}]",
            "adcx r11, rax",
            "adox r12, rcx",
            "mulx rcx, rax, [{a} + 8]",
            "adcx r12, rax",
            "adox r13, rcx",
            "mulx rcx, rax, [{a} + 16]",
            "adcx r13, rax",
            "adox r14, rcx",
            "mulx rcx, rax, [{a} + 24]",
            "adcx r14, rax",
            "adox r15, rcx",
            "mov eax, 0",
            "adcx r15, rax",
            reduction_rounds!(),
            // plus the high half t4..t7
            "add r8, r12",
            "adc r9, r13",
            "adc r10, r14",
            "adc r11, r15",
            "mov eax, 0",
            "adc rax, 0",
            a = in(reg) a.as_ptr(),
            b = in(reg) b.as_ptr(),
            out("rax") top,
            out("rcx") _,
            out("rdx") _,
            out("r8") r0,
            out("r9") r1,
            out("r10") r2,
            out("r11") r3,
            out("r12") _,
            out("r13") _,
            out("r14") _,
            out("r15") _,
            options(pure, readonly, nostack),
        );
    }
    ([r0, r1, r2, r3], top)
}

/// What [`has_bmi2_adx`] found: 0 not yet asked, 1 no, 2 yes.
#[cfg(target_arch = "x86_64")]
static BMI2_ADX: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Whether [`mul_adx`] may run here. One byte read per field operation: the standard library's
/// two feature checks cost ~30 instructions per multiplication, ~15 % of a point addition's.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn has_bmi2_adx() -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    match BMI2_ADX.load(Relaxed) {
        2 => true,
        1 => false,
        _ => detect_bmi2_adx(),
    }
}

#[cfg(target_arch = "x86_64")]
#[cold]
#[inline(never)]
fn detect_bmi2_adx() -> bool {
    let yes = std::arch::is_x86_feature_detected!("bmi2") && std::arch::is_x86_feature_detected!("adx");
    BMI2_ADX.store(if yes { 2 } else { 1 }, std::sync::atomic::Ordering::Relaxed);
    yes
}

impl Fe {
    pub(crate) const ZERO: Self = Self([0; 4]);
    /// `R mod p`.
    pub(crate) const ONE: Self = Self([1, 0xffff_ffff, 0, 0x1_0000_0000]);

    /// From Montgomery-form limbs already below `p` (the table scan's output).
    #[inline(always)]
    pub(crate) fn from_limbs(limbs: [u64; 4]) -> Self {
        Self(limbs)
    }

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
        #[cfg(target_arch = "x86_64")]
        if has_bmi2_adx() {
            let (v, top) = mul_adx(&self.0, &rhs.0);
            return Self(reduce_once(v, top));
        }
        self.mul_portable(rhs)
    }

    /// [`Fe::mul`] in plain Rust (the only one off x86-64; tested against the other there).
    #[inline(always)]
    pub(crate) fn mul_portable(&self, rhs: &Self) -> Self {
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
        #[cfg(target_arch = "x86_64")]
        if has_bmi2_adx() {
            let (v, top) = square_adx(&self.0);
            return Self(reduce_once(v, top));
        }
        self.square_portable()
    }

    /// [`Fe::square`] by the assembly multiplication (to time and test the dedicated squaring
    /// against).
    #[cfg(all(test, target_arch = "x86_64"))]
    pub(crate) fn square_by_mul(&self) -> Self {
        if has_bmi2_adx() {
            let (v, top) = mul_adx(&self.0, &self.0);
            return Self(reduce_once(v, top));
        }
        self.square_portable()
    }

    /// [`Fe::square`] in plain Rust.
    #[inline(always)]
    pub(crate) fn square_portable(&self) -> Self {
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

    /// All ones when zero, else zero (branch-free; callers hide it from the optimiser).
    #[inline(always)]
    pub(crate) fn zero_mask(&self) -> u64 {
        let x = self.0[0] | self.0[1] | self.0[2] | self.0[3];
        ((x | x.wrapping_neg()) >> 63).wrapping_sub(1)
    }

    /// `b` where `mask` is all ones, `a` where it is zero (branch-free).
    #[inline(always)]
    pub(crate) fn select_mask(a: &Self, b: &Self, mask: u64) -> Self {
        Self([
            a.0[0] ^ (mask & (a.0[0] ^ b.0[0])),
            a.0[1] ^ (mask & (a.0[1] ^ b.0[1])),
            a.0[2] ^ (mask & (a.0[2] ^ b.0[2])),
            a.0[3] ^ (mask & (a.0[3] ^ b.0[3])),
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

    #[cfg(test)]
    pub(crate) fn to_sm2(self) -> Sm2Fe {
        Sm2Fe::from_repr(FieldBytes::from(self.to_bytes())).unwrap_or(Sm2Fe::ZERO)
    }

    #[cfg(test)]
    pub(crate) fn from_sm2(fe: &Sm2Fe) -> Self {
        Self::from_bytes(&fe.to_repr().into()).unwrap_or(Self::ZERO)
    }

    /// `a⁻¹`, in variable time (`inverse.rs`); `None` for zero.
    pub(crate) fn invert_vartime(&self) -> Option<Self> {
        if bool::from(self.is_zero()) {
            return None;
        }
        // (aR)⁻¹ = a⁻¹R⁻¹; two multiplications by R² (each also divides by R) make it a⁻¹R
        let inv = Self(crate::inverse::invert_vartime(&self.0));
        Some(inv.mul(&Self(R2)).mul(&Self(R2)))
    }

    /// [`Fe::invert_vartime`] by the `sm2` crate, to test ours against.
    #[cfg(test)]
    pub(crate) fn invert_vartime_by_sm2_crate(&self) -> Option<Self> {
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
    // Montgomery-form limbs at the top of the range, where carries run longest
    let top_limbs = [
        [P[0] - 1, P[1], P[2], P[3]],
        [0, P[1], P[2], P[3]],
        [u64::MAX, u64::MAX, u64::MAX, P[3] - 1],
        [u64::MAX, 0, u64::MAX, P[3]],
        [1, 0, 0, 0],
    ];
    for limbs in top_limbs {
        let a = Fe(limbs);
        let b = Fe([P[0] - 1, P[1], P[2], P[3]]);
        let a_ref = a.to_sm2();
        let same =
            |ours: Fe, theirs: Sm2Fe| assert_eq!(ours.to_bytes(), <[u8; 32]>::from(theirs.to_repr()), "{limbs:x?}");
        same(a.square(), a_ref.square());
        same(a.square_portable(), a_ref.square());
        same(a.mul(&b), a_ref * b.to_sm2());
        same(a.mul_portable(&b), a_ref * b.to_sm2());
    }
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
        same(a.mul_portable(&b), a_ref * b_ref);
        same(a.square(), a_ref.square());
        same(a.square_portable(), a_ref.square());
        #[cfg(target_arch = "x86_64")]
        same(a.square_by_mul(), a_ref.square());
        same(a.add(&b), a_ref + b_ref);
        same(a.sub(&b), a_ref - b_ref);
        same(a.neg(), -a_ref);
        same(a.double(), a_ref.double());
        assert_eq!(bool::from(a.is_zero()), bool::from(a_ref.is_zero()));
        assert_eq!(a.invert_vartime().map(Fe::to_bytes), a.invert_vartime_by_sm2_crate().map(Fe::to_bytes));
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
        let mut s = a;
        for _ in 0..2 {
            time("ours square by the multiplication", &mut || s = std::hint::black_box(s.square_by_mul()));
            time("ours square", &mut || s = std::hint::black_box(s.square()));
        }
        let mut z = a;
        time("ours mul, portable", &mut || z = std::hint::black_box(z.mul_portable(&a)));
        let g = crate::point::Affine::from_sm2(&sm2::AffinePoint::GENERATOR).expect("finite");
        let mut j = crate::point::Jacobian::IDENTITY.add_affine_vartime(&g);
        time("ours double", &mut || j = std::hint::black_box(j.double()));
        let mut y = b;
        time("sm2 crate mul", &mut || y = std::hint::black_box(y * b));
        time("sm2 crate square", &mut || y = std::hint::black_box(y.square()));
        let mut w = a;
        time("ours invert", &mut || w = std::hint::black_box(w.invert_vartime().unwrap_or(a)));
        time("sm2 crate invert", &mut || w = std::hint::black_box(w.invert_vartime_by_sm2_crate().unwrap_or(a)));
        assert_eq!(x.to_bytes(), <[u8; 32]>::from(y.to_repr()));
    }
}
