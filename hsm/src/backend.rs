//! Signer backends, side by side.

pub mod memory;
