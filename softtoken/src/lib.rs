//! `softtoken`: a PKCS#11 v2.40 module with SM2, SM3 and SM4 under vendor-defined codes, built
//! as a `cdylib` (`libsofttoken.so`) that any PKCS#11 application can load. It is the embedded
//! default HSM for development, demos and CI; real deployments point `hsm` at a vendor HSM.
//!
//! Layout: [`ffi`] is the C ABI (pointer checks, marshalling, never a panic across it);
//! [`token`] is the state machine (slots, sessions, login, objects, operations); [`store`]
//! persists token objects encrypted under a PIN-derived key; [`crypto`] holds the algorithms;
//! [`mechanism`] the codes; [`object`] the attribute rules; [`config`] where the token lives.

pub mod config;
pub mod crypto;
pub mod ffi;
pub mod mechanism;
pub mod object;
pub mod store;
pub mod token;

/// Where `libsofttoken.so` is: `$SOFTTOKEN_LIB` if set, else next to the running executable
/// (`target/<profile>/` and its `deps/`, which is where cargo puts it for binaries, tests and
/// benchmarks), else the system library directories.
pub fn library_path() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("SOFTTOKEN_LIB") {
        return Some(p.into());
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [
        dir.join("libsofttoken.so"),
        dir.join("deps/libsofttoken.so"),
        dir.join("../libsofttoken.so"),
        "/usr/local/lib/libsofttoken.so".into(),
        "/usr/lib/libsofttoken.so".into(),
    ]
    .into_iter()
    .find(|p| p.exists())
}
