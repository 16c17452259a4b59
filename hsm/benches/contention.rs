//! `cargo bench -p hsm --bench contention`: how much one busy session slows the others on
//! softtoken. While one session loops a slow call (C_Login/C_Logout, C_SetPIN — PBKDF2 with
//! 100,000 iterations each — or C_GenerateKeyPair of a token key, which writes and fsyncs
//! token.json), another session times its own C_Digest or C_Sign calls; printed as p50, p99 and
//! max latency next to the same calls on an idle module. Before the module lock stopped covering
//! slow work, those calls waited for the whole slow call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;
use cryptoki::object::{Attribute, KeyType, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;

const SO_PIN: &str = "so-pin-1234";
const PIN: &str = "user-pin-1234";
const OTHER_PIN: &str = "user-pin-5678";

fn vendor(code: u64) -> Mechanism<'static> {
    let t = cryptoki::mechanism::MechanismType::new_vendor_defined(code).expect("vendor code");
    Mechanism::VendorDefined(VendorDefinedMechanism::new::<()>(t, None))
}

/// Times `op` until `rounds` rounds of `disturb` have run on another thread (or `idle_ops`
/// calls when there is no disturber); returns sorted latencies.
fn measure(
    rounds: usize,
    idle_ops: usize,
    disturb: Option<Box<dyn FnMut() + Send + '_>>,
    mut op: impl FnMut(),
) -> Vec<Duration> {
    let done = AtomicBool::new(false);
    let mut lat = Vec::new();
    std::thread::scope(|scope| {
        let disturbing = disturb.is_some();
        if let Some(mut d) = disturb {
            let done = &done;
            scope.spawn(move || {
                for _ in 0..rounds {
                    d();
                }
                done.store(true, Ordering::SeqCst);
            });
        }
        while lat.is_empty() || if disturbing { !done.load(Ordering::SeqCst) } else { lat.len() < idle_ops } {
            let t = Instant::now();
            op();
            lat.push(t.elapsed());
        }
    });
    lat.sort();
    lat
}

fn report(what: &str, lat: &[Duration]) {
    let at = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
    println!(
        "{what:<52} n={:>7}  p50={:>10.3?}  p99={:>10.3?}  max={:>10.3?}",
        lat.len(),
        at(0.5),
        at(0.99),
        lat[lat.len() - 1]
    );
}

/// A token SM2 key pair made with the vendor mechanism.
fn new_pair(s: &Session) -> (ObjectHandle, ObjectHandle) {
    let sm2 = KeyType::new_vendor_defined(softtoken::mechanism::CKK_SM2).expect("kt");
    let t = [Attribute::Token(true), Attribute::KeyType(sm2)];
    s.generate_key_pair(&vendor(softtoken::mechanism::CKM_SM2_KEY_PAIR_GEN), &t, &t).expect("keygen")
}

fn main() {
    let dir = tempfile::tempdir().expect("tmp");
    let conf = dir.path().join("softtoken.toml");
    std::fs::write(&conf, format!("directory = {:?}\n", dir.path().join("token"))).expect("conf");
    // SAFETY: single-threaded set-up, before the module is loaded.
    unsafe { std::env::set_var("SOFTTOKEN_CONF", &conf) };
    let lib = softtoken::library_path().expect("libsofttoken.so is built with the workspace");
    let p11 = Pkcs11::new(&lib).expect("load");
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).expect("C_Initialize");
    let slot = p11.get_all_slots().expect("slots")[0];
    p11.init_token(slot, &AuthPin::new(SO_PIN.into()), "bench").expect("init token");
    {
        let so = p11.open_rw_session(slot).expect("session");
        so.login(UserType::So, Some(&AuthPin::new(SO_PIN.into()))).expect("so login");
        so.init_pin(&AuthPin::new(PIN.into())).expect("init pin");
    }
    let pin = AuthPin::new(PIN.into());
    let sign = vendor(softtoken::mechanism::CKM_SM2_SM3);
    let sm3 = vendor(softtoken::mechanism::CKM_SM3);
    println!(
        "softtoken, one session busy, another timed ({} cores)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    // C_Digest while another session logs in and out (no login needed to digest).
    let digester = p11.open_ro_session(slot).expect("session");
    let digest = || {
        digester.digest(&sm3, b"abc").expect("digest");
    };
    report("C_Digest, idle module", &measure(0, 20_000, None, digest));
    let looper = p11.open_rw_session(slot).expect("session");
    let lat = measure(
        10,
        0,
        Some(Box::new(move || {
            looper.login(UserType::User, Some(&AuthPin::new(PIN.into()))).expect("login");
            looper.logout().expect("logout");
        })),
        digest,
    );
    report("C_Digest, another session looping C_Login/C_Logout", &lat);

    // C_Sign while another session changes the PIN, then while it generates token keys.
    let signer = p11.open_rw_session(slot).expect("session");
    signer.login(UserType::User, Some(&pin)).expect("login");
    let (_, key) = new_pair(&signer);
    let sign_once = || {
        signer.sign(&sign, key, b"to be signed").expect("sign");
    };
    report("C_Sign, idle module", &measure(0, 5_000, None, sign_once));
    let changer = p11.open_rw_session(slot).expect("session");
    let (a, b) = (AuthPin::new(PIN.into()), AuthPin::new(OTHER_PIN.into()));
    let mut flip = false;
    let lat = measure(
        10,
        0,
        Some(Box::new(move || {
            let (old, new) = if flip { (&b, &a) } else { (&a, &b) };
            changer.set_pin(old, new).expect("C_SetPIN");
            flip = !flip;
        })),
        sign_once,
    );
    report("C_Sign, another session looping C_SetPIN", &lat);
    let maker = p11.open_rw_session(slot).expect("session");
    let lat = measure(
        200,
        0,
        Some(Box::new(move || {
            new_pair(&maker);
        })),
        sign_once,
    );
    report("C_Sign, another session looping C_GenerateKeyPair", &lat);
}
