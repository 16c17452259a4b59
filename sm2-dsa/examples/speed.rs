//! `cargo run --release -p sm2-dsa --example speed [-- <gmssl-sm2-speed binary>]`: SM2 sign and
//! verify rates of this crate and of the `sm2` crate in CPU time on one thread, the way
//! `shared/interop/gmssl-sm2-speed.c` measures GmSSL (300-byte message, Z precomputed for
//! signing, Z computed per verification), then runs that GmSSL program so that both come from
//! the same run.

use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use sm2::dsa::signature::hazmat::{PrehashVerifier, RandomizedPrehashSigner};

const ID: &[u8] = b"1234567812345678";
const N: u32 = 4000;

fn cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn rate(name: &str, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<()> {
    f()?;
    let start = cpu_time();
    for _ in 0..N {
        f()?;
    }
    let per = (cpu_time() - start) / N;
    println!("{name}: {:.0}/s, {:.1} us", 1.0 / per.as_secs_f64(), per.as_secs_f64() * 1e6);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let msg = [1u8; 300];
    sm2_dsa::warm_up();
    let key = sm2_dsa::SigningKey::generate()?;
    let z = sm2_dsa::z(ID, key.verifying_key())?;
    let point = key.verifying_key().to_sec1_uncompressed();
    let sig = key.sign_digest(&sm2_dsa::digest(&z, &msg))?;
    rate("sm2-dsa sign (Z precomputed)", || {
        key.sign_digest(&sm2_dsa::digest(&z, &msg))?;
        Ok(())
    })?;
    rate("sm2-dsa verify, key seen once (incl Z)", || {
        let vk = sm2_dsa::VerifyingKey::from_sec1(&point)?;
        vk.verify(ID, &msg, &sig)?;
        Ok(())
    })?;
    let prepared = key.verifying_key().clone().precomputed();
    let prepared_z = sm2_dsa::z(ID, &prepared)?;
    rate("sm2-dsa verify, precomputed key (Z precomputed)", || {
        prepared.verify_digest(&sm2_dsa::digest(&prepared_z, &msg), &sig)?;
        Ok(())
    })?;

    let crate_key = sm2::dsa::SigningKey::from_bytes(core::str::from_utf8(ID)?, &(*key.to_bytes()).into())?;
    rate("sm2 crate sign (Z precomputed)", || {
        let _: sm2::dsa::Signature =
            crate_key.sign_prehash_with_rng(&mut getrandom::SysRng, &sm2_dsa::digest(&z, &msg))?;
        Ok(())
    })?;
    rate("sm2 crate verify, key seen once (incl Z)", || {
        let vk = sm2::dsa::VerifyingKey::from_sec1_bytes(core::str::from_utf8(ID)?, &point)?;
        vk.verify_prehash(&sm2_dsa::digest(&sm2_dsa::z(ID, &prepared)?, &msg), &sig)?;
        Ok(())
    })?;

    let gmssl = std::env::args().nth(1).map(std::path::PathBuf::from).or_else(|| {
        std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache/hsca-interop/gmssl-sm2-speed"))
    });
    match gmssl {
        Some(path) if path.exists() => {
            let out = Command::new(&path).output().with_context(|| format!("running {}", path.display()))?;
            print!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        _ => println!("gmssl: not built (shared/interop/build-gmssl.sh --speed builds it)"),
    }
    Ok(())
}
