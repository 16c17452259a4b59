//! `device-protocol`: the station ↔ terminal secure-element protocol of `provisioner/PROTOCOL.md`.
//!
//! Three layers, each usable alone:
//! - [`frame`]: bytes on the wire (magic, version, kind, seq, type, length, payload, CRC-32C) and a
//!   streaming [`frame::Decoder`] that resynchronises after noise;
//! - [`message`]: typed [`Request`]s and [`Response`]s and their payload codecs, the SE state
//!   machine table ([`Request::check_state`]) and the stable [`ErrorCode`]s;
//! - [`link`]: [`HostLink`] (timeouts, retransmission, BUSY) for the station and [`DeviceLink`]
//!   (duplicate replay, HELLO-first rule) for the terminal, over any [`Transport`].

#![warn(missing_docs)]

pub mod frame;
pub mod link;
pub mod message;

use std::time::Duration;

pub use link::{DeviceLink, HostLink, LinkConfig, LinkError, Transport, open_serial};
pub use message::{
    CHALLENGE_CONTEXT, DeviceInfo, DeviceStatus, ErrorCode, MessageError, Request, Response, SeState,
    challenge_message, msg_type, negotiate_version,
};

/// Highest protocol version this implementation speaks (and the frame version byte it writes).
pub const PROTOCOL_VERSION: u8 = 1;
/// Lowest protocol version this implementation speaks.
pub const MIN_PROTOCOL_VERSION: u8 = 1;
/// Largest payload of one frame, in bytes.
pub const MAX_PAYLOAD: usize = 2048;
/// Largest certificate chain (leaf + issuing CA DER) a device accepts, in bytes.
pub const MAX_CHAIN_LEN: u32 = 16 * 1024;
/// Largest chunk in PUT_CHAIN and CERT_CHUNK: the payload minus `total_len` and `offset`.
pub const MAX_CHAIN_CHUNK: usize = MAX_PAYLOAD - 8;
/// Longest ERROR detail a sender writes, in bytes of UTF-8.
pub const MAX_ERROR_DETAIL: usize = 200;
/// A partial frame is abandoned when no byte arrived for this long.
pub const INTER_BYTE_TIMEOUT: Duration = Duration::from_millis(100);
/// How often [`DeviceLink::run_busy`] sends BUSY (the protocol requires at least every 250 ms).
pub const BUSY_INTERVAL: Duration = Duration::from_millis(200);
