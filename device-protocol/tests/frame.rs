//! Frame layer: layout, CRC, size limits, resynchronisation, and no panic on any input.

use device_protocol::MAX_PAYLOAD;
use device_protocol::frame::{self, Decoder, Frame, FrameError, FrameKind, MAGIC, MAX_FRAME};

fn frame(kind: FrameKind, seq: u16, ty: u8, payload: &[u8]) -> Vec<u8> {
    frame::encode(kind, seq, ty, payload).unwrap()
}

fn drain(d: &mut Decoder) -> Vec<Frame> {
    std::iter::from_fn(|| d.next_frame()).collect()
}

/// Deterministic xorshift64*, so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn crc32c_is_castagnoli() {
    assert_eq!(frame::crc32c(b"123456789"), 0xE306_9283);
}

#[test]
fn worked_example_of_protocol_md() {
    // PROTOCOL.md §10: HELLO {max_version 1}, seq 0x0001.
    let f = frame(FrameKind::Request, 0x0001, 0x01, &[0x01]);
    assert_eq!(f, [0xA5, 0x5A, 0x01, 0x01, 0x00, 0x01, 0x01, 0x00, 0x01, 0x01, 0xA9, 0x8A, 0x3D, 0x05]);
    // The BUSY for it.
    assert_eq!(
        frame(FrameKind::Busy, 0x0001, 0x01, &[]),
        [0xA5, 0x5A, 0x01, 0x03, 0x00, 0x01, 0x01, 0x00, 0x00, 0x9F, 0x85, 0xB5, 0xB9]
    );
}

#[test]
fn layout_offsets_and_crc_coverage() {
    let payload = [0xDE, 0xAD, 0xBE, 0xEF, 0x00];
    let f = frame(FrameKind::Response, 0xBEEF, 0x87, &payload);
    assert_eq!(f.len(), 9 + payload.len() + 4);
    assert_eq!(f[0..2], MAGIC);
    assert_eq!(f[2], device_protocol::PROTOCOL_VERSION);
    assert_eq!(f[3], 0x02);
    assert_eq!(f[4..6], [0xBE, 0xEF]);
    assert_eq!(f[6], 0x87);
    assert_eq!(f[7..9], [0x00, 0x05]);
    assert_eq!(f[9..14], payload);
    let crc = frame::crc32c(&f[2..14]);
    assert_eq!(f[14..], crc.to_be_bytes());
}

#[test]
fn every_kind_round_trips_and_frames_split_anywhere_decode() {
    let frames = [
        Frame { kind: FrameKind::Request, seq: 0, msg_type: 0x01, payload: vec![1] },
        Frame { kind: FrameKind::Busy, seq: 0xFFFF, msg_type: 0x02, payload: vec![] },
        Frame { kind: FrameKind::Response, seq: 0x1234, msg_type: 0x82, payload: vec![0xA5; MAX_PAYLOAD] },
        Frame { kind: FrameKind::Response, seq: 7, msg_type: 0xFF, payload: MAGIC.repeat(50) },
    ];
    let wire: Vec<u8> = frames.iter().flat_map(|f| frame(f.kind, f.seq, f.msg_type, &f.payload)).collect();
    let mut d = Decoder::new();
    d.push(&wire);
    assert_eq!(drain(&mut d), frames);
    for step in [1, 2, 3, 7, 13, 100] {
        let mut d = Decoder::new();
        let mut got = vec![];
        for chunk in wire.chunks(step) {
            d.push(chunk);
            got.extend(drain(&mut d));
        }
        assert_eq!(got, frames, "chunks of {step}");
        assert_eq!(d.discarded(), 0);
    }
}

#[test]
fn oversize_payload_refused_on_encode() {
    assert!(frame::encode(FrameKind::Request, 1, 1, &vec![0; MAX_PAYLOAD]).is_ok());
    assert_eq!(
        frame::encode(FrameKind::Request, 1, 1, &vec![0; MAX_PAYLOAD + 1]),
        Err(FrameError::PayloadTooLarge { len: MAX_PAYLOAD + 1 })
    );
    assert!(frame::encode(FrameKind::Request, 1, 1, &vec![0; 70_000]).is_err());
    assert_eq!(MAX_FRAME, 2061);
}

/// A frame with a correct CRC but a header field the decoder must refuse.
fn forged(version: u8, kind: u8, len: u16, payload_len: usize) -> Vec<u8> {
    let mut f = vec![MAGIC[0], MAGIC[1], version, kind, 0, 9, 0x01];
    f.extend_from_slice(&len.to_be_bytes());
    f.extend(std::iter::repeat_n(0x11, payload_len));
    let crc = frame::crc32c(&f[2..]);
    f.extend_from_slice(&crc.to_be_bytes());
    f
}

#[test]
fn oversize_length_unknown_version_and_kind_are_discarded() {
    let good = frame(FrameKind::Request, 3, 0x0A, &[]);
    for bad in [
        forged(1, 1, (MAX_PAYLOAD + 1) as u16, MAX_PAYLOAD + 1),
        forged(1, 1, 0xFFFF, 0),
        forged(2, 1, 1, 1),
        forged(0, 1, 1, 1),
        forged(1, 0, 1, 1),
        forged(1, 4, 1, 1),
    ] {
        let mut d = Decoder::new();
        d.push(&bad);
        d.push(&good);
        let frames = drain(&mut d);
        assert_eq!(frames.len(), 1, "{bad:02X?}");
        assert_eq!(frames[0].seq, 3);
        assert_eq!(d.buffered(), 0);
    }
}

#[test]
fn every_single_bit_error_is_discarded_and_the_next_frame_still_decodes() {
    let good = frame(FrameKind::Response, 0x0102, 0x89, &[3, 1, 0, 0, 0, 9, 0, 0, 0, 9]);
    let next = frame(FrameKind::Response, 0x0103, 0x84, &[]);
    for bit in 0..good.len() * 8 {
        let mut bad = good.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        let mut d = Decoder::new();
        d.push(&bad);
        assert_eq!(drain(&mut d), vec![], "bit {bit}");
        // A flipped length bit can make the frame look longer: the idle line gives it up.
        d.line_idle();
        assert_eq!(drain(&mut d), vec![], "bit {bit}");
        d.push(&next);
        let frames = drain(&mut d);
        assert_eq!(frames.len(), 1, "bit {bit}");
        assert_eq!(frames[0].seq, 0x0103);
    }
}

#[test]
fn resync_after_leading_garbage() {
    let good = frame(FrameKind::Request, 42, 0x02, &[]);
    let mut garbage = vec![0x00, 0xFF, 0xA5, 0xA5, 0x13, 0x5A, 0xA5, 0x5A, 0x07, 0xA5];
    garbage.extend_from_slice(&[0xA5, 0x5A, 0x01, 0x01, 0x00]); // magic + header start, then junk
    garbage.extend_from_slice(b"AT+RESET\r\n");
    let mut d = Decoder::new();
    d.push(&garbage);
    d.push(&good);
    let frames = drain(&mut d);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].seq, 42);
    assert_eq!(d.discarded(), garbage.len() as u64);
    assert_eq!(d.buffered(), 0);
}

#[test]
fn trailing_first_magic_byte_is_kept_for_the_next_push() {
    let good = frame(FrameKind::Request, 5, 0x0A, &[]);
    let mut d = Decoder::new();
    d.push(&[0x00, 0x01, good[0]]);
    assert!(d.next_frame().is_none());
    d.push(&good[1..]);
    assert_eq!(d.next_frame().map(|f| f.seq), Some(5));
}

#[test]
fn every_truncation_is_held_then_dropped_when_the_line_goes_idle() {
    let good = frame(FrameKind::Response, 9, 0x83, &(0..200u8).collect::<Vec<_>>());
    for k in 0..good.len() {
        let mut d = Decoder::new();
        d.push(&good[..k]);
        assert!(d.next_frame().is_none(), "cut at {k}");
        d.line_idle();
        assert!(d.next_frame().is_none(), "cut at {k}");
        assert_eq!(d.buffered(), 0, "cut at {k}");
    }
}

#[test]
fn partial_frame_followed_by_good_frame_yields_the_good_frame() {
    // Retransmission case: the cut frame and the good one have the same length. Once the cut
    // frame's header is complete, the good frame arrives in full and the cut one fails its CRC
    // with no idle needed; a cut inside the header borrows the good frame's bytes as its length.
    let long = frame(FrameKind::Response, 9, 0x83, &(0..200u8).collect::<Vec<_>>());
    for k in 0..long.len() {
        let mut d = Decoder::new();
        d.push(&long[..k]);
        d.push(&long);
        let mut frames = drain(&mut d);
        if k >= frame::HEADER_LEN {
            assert_eq!(frames.len(), 1, "cut at {k}");
        }
        d.line_idle();
        frames.extend(drain(&mut d));
        assert_eq!(frames.len(), 1, "cut at {k}");
        assert_eq!(frames[0].seq, 9);
        assert_eq!(d.buffered(), 0);
    }
    // A cut long frame followed by a short one: the short one is found once the line is idle.
    let short = frame(FrameKind::Response, 10, 0x84, &[]);
    for k in 0..long.len() {
        let mut d = Decoder::new();
        d.push(&long[..k]);
        d.push(&short);
        let mut frames = drain(&mut d);
        d.line_idle();
        frames.extend(drain(&mut d));
        assert_eq!(frames.len(), 1, "cut at {k}");
        assert_eq!(frames[0].seq, 10, "cut at {k}");
        assert_eq!(d.buffered(), 0);
    }
}

#[test]
fn decoder_never_panics_and_accounts_for_every_byte() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let valid: Vec<Vec<u8>> = (0..8)
        .map(|i| {
            let len = rng.below(300);
            frame(FrameKind::from_byte(1 + (i % 3) as u8).unwrap(), i as u16, i as u8, &rng.bytes(len))
        })
        .collect();
    let mut d = Decoder::new();
    let mut pushed = 0u64;
    let mut consumed = 0u64;
    for round in 0..100_000 {
        let buf = match round % 4 {
            0 => {
                let len = rng.below(64);
                rng.bytes(len)
            }
            1 => {
                // Plausible header, random rest: exercises the length/CRC paths.
                let mut b = vec![MAGIC[0], MAGIC[1], 1, 1 + rng.below(3) as u8];
                let len = rng.below(40);
                b.extend(rng.bytes(3));
                b.extend_from_slice(&(len as u16).to_be_bytes());
                let n = rng.below(len + 8);
                b.extend(rng.bytes(n));
                b
            }
            2 => {
                // A valid frame with random damage: bit flips, a cut, or an inserted byte.
                let mut b = valid[rng.below(valid.len())].clone();
                match rng.below(3) {
                    0 => {
                        let at = rng.below(b.len());
                        b[at] ^= 1 << rng.below(8);
                    }
                    1 => b.truncate(rng.below(b.len())),
                    _ => b.insert(rng.below(b.len()), rng.next() as u8),
                }
                b
            }
            _ => valid[rng.below(valid.len())].clone(),
        };
        pushed += buf.len() as u64;
        d.push(&buf);
        if round % 97 == 0 {
            d.line_idle();
        }
        while let Some(f) = d.next_frame() {
            consumed += (frame::HEADER_LEN + f.payload.len() + frame::TRAILER_LEN) as u64;
            assert!(f.payload.len() <= MAX_PAYLOAD);
            // Message decoders must not panic on whatever the frame layer lets through.
            let _ = device_protocol::Request::decode(f.msg_type, &f.payload);
            let _ = device_protocol::Response::decode(f.msg_type, &f.payload);
        }
        assert!(d.buffered() <= MAX_FRAME + 64, "buffer grew to {}", d.buffered());
    }
    assert_eq!(pushed, consumed + d.discarded() + d.buffered() as u64);
}

#[test]
fn message_decoders_never_panic_on_random_payloads() {
    let mut rng = Rng(7);
    for _ in 0..100_000 {
        let ty = rng.next() as u8;
        let len = rng.below(80);
        let payload = rng.bytes(len);
        let _ = device_protocol::Request::decode(ty, &payload);
        let _ = device_protocol::Response::decode(ty, &payload);
    }
}
