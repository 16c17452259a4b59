//! Signer backends, side by side.

pub mod file;
pub mod memory;
pub mod pkcs11;
