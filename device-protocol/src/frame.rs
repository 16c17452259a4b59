//! Frame layer: byte layout, CRC-32C, and a streaming decoder that resynchronises on garbage.
//!
//! ```text
//! offset  size  field
//!      0     2  magic 0xA5 0x5A
//!      2     1  protocol version (1)
//!      3     1  kind: 0x01 request, 0x02 response, 0x03 busy
//!      4     2  seq, big-endian
//!      6     1  message type
//!      7     2  payload length N, big-endian, 0..=2048
//!      9     N  payload
//!    9+N     4  CRC-32C (Castagnoli), big-endian, over bytes 2 .. 9+N
//! ```

use crc::{CRC_32_ISCSI, Crc};

use crate::{MAX_PAYLOAD, PROTOCOL_VERSION};

/// The two bytes every frame starts with.
pub const MAGIC: [u8; 2] = [0xA5, 0x5A];
/// Bytes before the payload: magic, version, kind, seq, message type, length.
pub const HEADER_LEN: usize = 9;
/// Bytes after the payload: the CRC.
pub const TRAILER_LEN: usize = 4;
/// Largest frame on the wire (header + [`MAX_PAYLOAD`] + CRC) = 2061 bytes.
pub const MAX_FRAME: usize = HEADER_LEN + MAX_PAYLOAD + TRAILER_LEN;

const CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

/// CRC-32C (Castagnoli: poly 0x1EDC6F41 reflected, init and xorout 0xFFFFFFFF) of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    CRC32C.checksum(bytes)
}

/// What a frame is: a host request, the device's final answer, or a device keep-alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Host → device command.
    Request,
    /// Device → host final answer to the request with the same seq.
    Response,
    /// Device → host "still working on seq"; resets the host's per-frame timer.
    Busy,
}

impl FrameKind {
    /// The wire byte.
    pub fn to_byte(self) -> u8 {
        match self {
            FrameKind::Request => 0x01,
            FrameKind::Response => 0x02,
            FrameKind::Busy => 0x03,
        }
    }

    /// Parses the wire byte; `None` for anything else.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0x01 => Some(FrameKind::Request),
            0x02 => Some(FrameKind::Response),
            0x03 => Some(FrameKind::Busy),
            _ => None,
        }
    }
}

/// One decoded, CRC-checked frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Request, response or busy.
    pub kind: FrameKind,
    /// Sequence number chosen by the host; responses and BUSY echo it.
    pub seq: u16,
    /// Message type (see [`crate::msg_type`]).
    pub msg_type: u8,
    /// Payload, at most [`MAX_PAYLOAD`] bytes.
    pub payload: Vec<u8>,
}

/// Why a frame could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The payload is longer than [`MAX_PAYLOAD`].
    #[error("payload of {len} bytes exceeds the {MAX_PAYLOAD}-byte frame limit")]
    PayloadTooLarge {
        /// Length that was asked for.
        len: usize,
    },
}

/// Encodes one frame with version [`PROTOCOL_VERSION`]; refuses payloads over [`MAX_PAYLOAD`].
pub fn encode(kind: FrameKind, seq: u16, msg_type: u8, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let len = u16::try_from(payload.len())
        .ok()
        .filter(|&l| usize::from(l) <= MAX_PAYLOAD)
        .ok_or(FrameError::PayloadTooLarge { len: payload.len() })?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + TRAILER_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(PROTOCOL_VERSION);
    out.push(kind.to_byte());
    out.extend_from_slice(&seq.to_be_bytes());
    out.push(msg_type);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c(&out[MAGIC.len()..]);
    out.extend_from_slice(&crc.to_be_bytes());
    Ok(out)
}

enum Head {
    Complete(Frame, usize),
    Incomplete,
    Invalid,
}

/// Streaming decoder: feed it whatever the transport delivered, take out whole frames.
///
/// Anything that is not a valid frame (wrong magic, unknown version or kind, length over
/// [`MAX_PAYLOAD`], bad CRC) is skipped one byte at a time and the scan restarts at the next
/// magic, so a real frame that follows noise or a cut-off frame is still found. A corrupted
/// length field can make a partial frame look longer than it is; call [`Decoder::line_idle`] when
/// the line has been quiet and the decoder drops such a frame instead of waiting forever.
/// Never panics, whatever the input; buffers at most one frame plus what was pushed.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    stale: bool,
    discarded: u64,
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.stale = false;
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The line has been quiet for [`crate::INTER_BYTE_TIMEOUT`]: a partial frame held now can never
    /// complete, so the following [`Decoder::next_frame`] calls skip it (and any other incomplete
    /// candidate after it) instead of waiting for more bytes. Cleared by the next non-empty push.
    pub fn line_idle(&mut self) {
        self.stale = !self.buf.is_empty();
    }

    /// Bytes buffered but not yet returned as a frame or discarded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Total bytes discarded as garbage since creation (diagnostics).
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    /// The next complete valid frame, or `None` until more bytes are pushed.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            match find_magic(&self.buf) {
                Some(0) => {}
                Some(i) => self.drop_front(i),
                None => {
                    // A trailing first magic byte may be the start of the next frame.
                    let keep = usize::from(!self.stale && self.buf.last() == Some(&MAGIC[0]));
                    self.drop_front(self.buf.len() - keep);
                    if self.buf.is_empty() {
                        self.stale = false;
                    }
                    return None;
                }
            }
            match parse_head(&self.buf) {
                Head::Complete(frame, len) => {
                    self.buf.drain(..len);
                    return Some(frame);
                }
                Head::Invalid => self.drop_front(1),
                Head::Incomplete if self.stale => self.drop_front(1),
                Head::Incomplete => return None,
            }
        }
    }

    fn drop_front(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        self.buf.drain(..n);
        self.discarded += n as u64;
    }
}

fn find_magic(buf: &[u8]) -> Option<usize> {
    buf.windows(MAGIC.len()).position(|w| w == MAGIC)
}

/// `buf` starts with the magic.
fn parse_head(buf: &[u8]) -> Head {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Head::Incomplete;
    };
    let version = header[2];
    let Some(kind) = FrameKind::from_byte(header[3]) else {
        return Head::Invalid;
    };
    let seq = u16::from_be_bytes([header[4], header[5]]);
    let msg_type = header[6];
    let len = usize::from(u16::from_be_bytes([header[7], header[8]]));
    if version != PROTOCOL_VERSION || len > MAX_PAYLOAD {
        return Head::Invalid;
    }
    let total = HEADER_LEN + len + TRAILER_LEN;
    let Some(frame) = buf.get(..total) else {
        return Head::Incomplete;
    };
    let (body, crc) = frame.split_at(HEADER_LEN + len);
    let crc = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c(&body[MAGIC.len()..]) != crc {
        return Head::Invalid;
    }
    Head::Complete(Frame { kind, seq, msg_type, payload: body[HEADER_LEN..].to_vec() }, total)
}
