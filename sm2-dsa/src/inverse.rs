//! Modular inversion modulo SM2's prime in variable time: Bernstein–Yang "safegcd" with 62
//! divsteps per batch, the variable-time variant of libsecp256k1's `modinv64_var` (Wuille's
//! write-up `doc/safegcd_implementation.md` there explains every step).
//!
//! Written because the `sm2` crate's inversion (crypto-bigint's generic safegcd, plus the
//! conversions around it) took ~4 µs of a ~24 µs signature. Only for values that are public or
//! blinded by a random factor (signing inverts `Z·β`, see `Jacobian::x_blinded`).
//! Differential-tested against the `sm2` crate's inversion.

/// Five signed limbs of 62 bits: `v[0] + v[1]·2^62 + … + v[4]·2^248`.
#[derive(Clone, Copy)]
struct Signed62([i64; 5]);

const M62: u64 = u64::MAX >> 2;

/// SM2's prime in signed-62 form.
const MODULUS: Signed62 =
    to_signed62(&[0xffff_ffff_ffff_ffff, 0xffff_ffff_0000_0000, 0xffff_ffff_ffff_ffff, 0xffff_fffe_ffff_ffff]);
/// `p⁻¹ mod 2^62`: `p ≡ -1 (mod 2^64)`, so `-1`.
const MODULUS_INV62: u64 = M62;

const fn to_signed62(a: &[u64; 4]) -> Signed62 {
    Signed62([
        (a[0] & M62) as i64,
        (((a[0] >> 62) | (a[1] << 2)) & M62) as i64,
        (((a[1] >> 60) | (a[2] << 4)) & M62) as i64,
        (((a[2] >> 58) | (a[3] << 6)) & M62) as i64,
        (a[3] >> 56) as i64,
    ])
}

fn from_signed62(r: &Signed62) -> [u64; 4] {
    let v = r.0.map(|x| x as u64);
    [v[0] | (v[1] << 62), (v[1] >> 2) | (v[2] << 60), (v[2] >> 4) | (v[3] << 58), (v[3] >> 6) | (v[4] << 56)]
}

/// The 2×2 transition matrix of 62 divsteps, scaled by 2^62.
struct Trans {
    u: i64,
    v: i64,
    q: i64,
    r: i64,
}

/// 62 divsteps on the low limbs of `f` and `g`, several zero bits at a time.
fn divsteps_62_var(mut eta: i64, f0: u64, g0: u64) -> (i64, Trans) {
    let (mut u, mut v, mut q, mut r) = (1u64, 0u64, 0u64, 1u64);
    let (mut f, mut g) = (f0, g0);
    let mut i = 62i32;
    loop {
        // a sentinel bit keeps the count of zeros at most i
        let zeros = (g | (u64::MAX << i)).trailing_zeros() as i32;
        g >>= zeros;
        u <<= zeros;
        v <<= zeros;
        eta -= i64::from(zeros);
        i -= zeros;
        if i == 0 {
            break;
        }
        let w;
        if eta < 0 {
            eta = -eta;
            (f, g) = (g, f.wrapping_neg());
            (u, q) = (q, u.wrapping_neg());
            (v, r) = (r, v.wrapping_neg());
            let limit = (eta as i32 + 1).min(i);
            let m = (u64::MAX >> (64 - limit)) & 63;
            // cancels up to 6 bits of g: f·g·(f² - 2) ≡ -g/f (mod 64)
            w = (f.wrapping_mul(g).wrapping_mul(f.wrapping_mul(f).wrapping_sub(2))) & m;
        } else {
            let limit = (eta as i32 + 1).min(i);
            let m = (u64::MAX >> (64 - limit)) & 15;
            let inv = f.wrapping_add(((f.wrapping_add(1)) & 4) << 1);
            w = inv.wrapping_neg().wrapping_mul(g) & m;
        }
        g = g.wrapping_add(f.wrapping_mul(w));
        q = q.wrapping_add(u.wrapping_mul(w));
        r = r.wrapping_add(v.wrapping_mul(w));
    }
    (eta, Trans { u: u as i64, v: v as i64, q: q as i64, r: r as i64 })
}

#[inline(always)]
fn wide(a: i64, b: i64) -> i128 {
    i128::from(a) * i128::from(b)
}

/// `[d, e] ← t·[d, e] / 2^62 (mod p)`, adding multiples of `p` to make the division exact.
fn update_de(d: &mut Signed62, e: &mut Signed62, t: &Trans) {
    let (u, v, q, r) = (t.u, t.v, t.q, t.r);
    let (dv, ev) = (d.0, e.0);
    let sd = dv[4] >> 63;
    let se = ev[4] >> 63;
    let mut md = (u & sd) + (v & se);
    let mut me = (q & sd) + (r & se);
    let mut cd = wide(u, dv[0]) + wide(v, ev[0]);
    let mut ce = wide(q, dv[0]) + wide(r, ev[0]);
    md -= ((MODULUS_INV62.wrapping_mul(cd as u64).wrapping_add(md as u64)) & M62) as i64;
    me -= ((MODULUS_INV62.wrapping_mul(ce as u64).wrapping_add(me as u64)) & M62) as i64;
    cd += wide(MODULUS.0[0], md);
    ce += wide(MODULUS.0[0], me);
    cd >>= 62;
    ce >>= 62;
    for i in 1..5 {
        cd += wide(u, dv[i]) + wide(v, ev[i]) + wide(MODULUS.0[i], md);
        ce += wide(q, dv[i]) + wide(r, ev[i]) + wide(MODULUS.0[i], me);
        d.0[i - 1] = (cd as u64 & M62) as i64;
        e.0[i - 1] = (ce as u64 & M62) as i64;
        cd >>= 62;
        ce >>= 62;
    }
    d.0[4] = cd as i64;
    e.0[4] = ce as i64;
}

/// `[f, g] ← t·[f, g] / 2^62` on the first `len` limbs (exact: the low bits cancel).
fn update_fg(len: usize, f: &mut Signed62, g: &mut Signed62, t: &Trans) {
    let (u, v, q, r) = (t.u, t.v, t.q, t.r);
    let mut cf = wide(u, f.0[0]) + wide(v, g.0[0]);
    let mut cg = wide(q, f.0[0]) + wide(r, g.0[0]);
    cf >>= 62;
    cg >>= 62;
    for i in 1..len {
        cf += wide(u, f.0[i]) + wide(v, g.0[i]);
        cg += wide(q, f.0[i]) + wide(r, g.0[i]);
        f.0[i - 1] = (cf as u64 & M62) as i64;
        g.0[i - 1] = (cg as u64 & M62) as i64;
        cf >>= 62;
        cg >>= 62;
    }
    f.0[len - 1] = cf as i64;
    g.0[len - 1] = cg as i64;
}

/// `r` (in `(-2p, p)`) negated when `sign < 0`, brought into `[0, p)`.
fn normalize(r: &mut Signed62, sign: i64) {
    let add_modulus = |r: &mut Signed62| {
        let cond = r.0[4] >> 63;
        for (limb, m) in r.0.iter_mut().zip(MODULUS.0) {
            *limb += m & cond;
        }
    };
    let carry = |r: &mut Signed62| {
        for i in 0..4 {
            r.0[i + 1] += r.0[i] >> 62;
            r.0[i] &= M62 as i64;
        }
    };
    add_modulus(r);
    let neg = sign >> 63;
    for limb in r.0.iter_mut() {
        *limb = (*limb ^ neg) - neg;
    }
    carry(r);
    add_modulus(r);
    carry(r);
}

/// `a⁻¹ mod p` for `a` in `[0, p)` (as four little-endian limbs); 0 for 0.
pub(crate) fn invert_vartime(a: &[u64; 4]) -> [u64; 4] {
    let mut d = Signed62([0; 5]);
    let mut e = Signed62([1, 0, 0, 0, 0]);
    let mut f = MODULUS;
    let mut g = to_signed62(a);
    let mut len = 5;
    let mut eta = -1i64;
    loop {
        let (next_eta, t) = divsteps_62_var(eta, f.0[0] as u64, g.0[0] as u64);
        eta = next_eta;
        update_de(&mut d, &mut e, &t);
        update_fg(len, &mut f, &mut g, &t);
        if g.0[0] == 0 && g.0[1..len].iter().all(|&l| l == 0) {
            break;
        }
        let (fn_, gn) = (f.0[len - 1], g.0[len - 1]);
        // shorten when the top limbs of f and g are both 0 or -1
        if len > 1 && (fn_ ^ (fn_ >> 63)) == 0 && (gn ^ (gn >> 63)) == 0 {
            f.0[len - 2] |= ((fn_ as u64) << 62) as i64;
            g.0[len - 2] |= ((gn as u64) << 62) as i64;
            len -= 1;
        }
    }
    normalize(&mut d, f.0[len - 1]);
    from_signed62(&d)
}
