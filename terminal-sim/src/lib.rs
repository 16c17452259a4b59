//! `terminal-sim`: an emulated healthcare-security terminal with a secure element, speaking the
//! device protocol (`provisioner/PROTOCOL.md`) on a pseudo-terminal or TCP, with the latencies of
//! a smart-card-class SE and fault injection. [`se`] is the secure element; [`device`] runs it
//! behind a link.

pub mod device;
pub mod fleet;
pub mod forge;
pub mod se;
