//! Signer backends, side by side.

pub mod memory;
pub mod pkcs11;
