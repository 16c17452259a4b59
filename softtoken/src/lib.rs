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
