//! Nothing slow runs under the module lock: while one session hashes PINs (C_Login, C_SetPIN,
//! 100,000 PBKDF2 iterations each) or generates and stores keys, other sessions keep working.
//! Asserted on ordering, not time: many operations on another session complete *between the
//! start and the end of one single* slow call. With the lock held through the slow call, none
//! could (at most one that slipped in before the call took the lock).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::*;
use cryptoki::mechanism::Mechanism;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use softtoken::mechanism::*;

/// Runs `slow` `rounds` times on one thread, bracketing each call with `seq` (odd = inside);
/// meanwhile runs `fast` in a loop and returns the most `fast` calls that began and ended
/// inside one and the same `slow` call.
fn most_inside_one_call(rounds: usize, mut slow: impl FnMut() + Send, mut fast: impl FnMut()) -> u64 {
    let seq = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let mut inside = std::collections::HashMap::<u64, u64>::new();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for _ in 0..rounds {
                seq.fetch_add(1, Ordering::SeqCst);
                slow();
                seq.fetch_add(1, Ordering::SeqCst);
            }
            done.store(true, Ordering::SeqCst);
        });
        while !done.load(Ordering::SeqCst) {
            let before = seq.load(Ordering::SeqCst);
            fast();
            let after = seq.load(Ordering::SeqCst);
            if before == after && before % 2 == 1 {
                *inside.entry(before).or_default() += 1;
            }
        }
    });
    inside.values().copied().max().unwrap_or(0)
}

#[test]
fn digests_complete_on_another_session_while_a_login_loop_runs() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = Module::open(&dir.path().join("t"), 5);
    m.init();
    let digester = m.p11.open_ro_session(m.slot).expect("session");
    let login = m.p11.open_rw_session(m.slot).expect("session");
    let pin = AuthPin::new(USER_PIN.into());
    let sm3 = mech(CKM_SM3);
    let most = most_inside_one_call(
        4,
        move || {
            login.login(UserType::User, Some(&pin)).expect("login");
            login.logout().expect("logout");
        },
        || {
            assert_eq!(digester.digest(&sm3, b"abc").expect("digest").len(), 32);
        },
    );
    assert!(most >= 20, "only {most} digests completed inside one C_Login");
}

#[test]
fn signatures_complete_on_another_session_while_pins_change_and_keys_are_made() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = Module::open(&dir.path().join("t"), 5);
    m.init();
    let signer = m.user();
    let (_, key) = sm2_pair(&signer, "ca", true);
    let other = m.p11.open_rw_session(m.slot).expect("session");
    let sign: Mechanism = mech(CKM_SM2_SM3);
    let (a, b) = (AuthPin::new(USER_PIN.into()), AuthPin::new("another-pin-42".into()));
    let mut flip = false;
    let most = most_inside_one_call(
        4,
        move || {
            let (old, new) = if flip { (&b, &a) } else { (&a, &b) };
            other.set_pin(old, new).expect("C_SetPIN");
            flip = !flip;
        },
        || {
            assert_eq!(signer.sign(&sign, key, b"tbs").expect("sign").len(), 64);
        },
    );
    assert!(most >= 5, "only {most} signatures completed inside one C_SetPIN");
    // Key generation stores to disk (fsync) without the lock as well; a digest is quick enough
    // to fit several times into one even on a RAM disk.
    let digester = m.p11.open_ro_session(m.slot).expect("session");
    let sm3 = mech(CKM_SM3);
    let maker = m.p11.open_rw_session(m.slot).expect("session");
    let most = most_inside_one_call(
        20,
        move || {
            sm2_pair(&maker, "k", true);
        },
        || {
            digester.digest(&sm3, b"abc").expect("digest");
        },
    );
    assert!(most >= 2, "only {most} digests completed inside one C_GenerateKeyPair");
}
