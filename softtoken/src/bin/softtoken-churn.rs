//! Writes to a token as fast as it can, forever: creates and destroys token objects, public and
//! private. `tests/crash.rs` SIGKILLs it mid-write and checks the store is still whole.
//!
//! `SOFTTOKEN_CONF=… softtoken-churn LIBSOFTTOKEN SO_PIN USER_PIN` (PINs as arguments: a test tool, never for a real token)

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [lib, so_pin, user_pin] = args.as_slice() else {
        return Err("usage: churn LIBSOFTTOKEN SO_PIN USER_PIN".into());
    };
    let p11 = Pkcs11::new(lib)?;
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
    let slot = p11.get_all_slots()?[0];
    if !p11.get_token_info(slot)?.token_initialized() {
        p11.init_token(slot, &AuthPin::new(so_pin.clone().into()), "churn")?;
        let s = p11.open_rw_session(slot)?;
        s.login(UserType::So, Some(&AuthPin::new(so_pin.clone().into())))?;
        s.init_pin(&AuthPin::new(user_pin.clone().into()))?;
    }
    let s = p11.open_rw_session(slot)?;
    s.login(UserType::User, Some(&AuthPin::new(user_pin.clone().into())))?;
    println!("ready");
    let run = std::process::id();
    for i in 0u64.. {
        // One private and one public object per round, so a consistent store has equal counts.
        let label = format!("run{run}-{i}");
        for private in [true, false] {
            s.create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(private),
                Attribute::Label(label.clone().into()),
                Attribute::Value(vec![0xab; 256]),
            ])?;
        }
        if i % 7 == 6 {
            for h in s.find_objects(&[Attribute::Label(format!("run{run}-{}", i - 3).into())])? {
                s.destroy_object(h)?;
            }
        }
    }
    Ok(())
}
