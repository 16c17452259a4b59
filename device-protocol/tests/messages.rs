//! Message layer: every request and response through encode → frame → decode, strict parsing,
//! error codes, and the SE state table of PROTOCOL.md §7.

use device_protocol::frame::{self, Decoder, FrameKind};
use device_protocol::{
    DeviceInfo, DeviceStatus, ErrorCode, MAX_CHAIN_CHUNK, MAX_ERROR_DETAIL, MessageError, Request, Response, SeState,
    challenge_message, msg_type, negotiate_version,
};

fn all_requests() -> Vec<Request> {
    vec![
        Request::Hello { max_version: 1 },
        Request::Hello { max_version: 255 },
        Request::GenKey,
        Request::GetCsr { common_name: "terminal-0001".into(), serial_number: "SN20261122-0001".into() },
        Request::GetCsr { common_name: "监护仪-甲".into(), serial_number: "序列号-1".into() },
        Request::PutRoot { der: vec![0x30, 0x82, 0x01, 0x00, 0xAA] },
        Request::PutRoot { der: vec![0x5A; 2048] },
        Request::PutChain { total_len: 16384, offset: 2040, chunk: vec![0xA5; MAX_CHAIN_CHUNK] },
        Request::PutChain { total_len: 1, offset: 0, chunk: vec![0] },
        Request::PutChain { total_len: u32::MAX, offset: u32::MAX - 1, chunk: vec![0] },
        Request::Commit,
        Request::ReadCert { offset: 0xDEAD_BEEF },
        Request::Challenge { nonce: std::array::from_fn(|i| i as u8) },
        Request::Lock,
        Request::Status,
        Request::Activate { statement: vec![0x0A, 0x20, 1, 2, 3] },
        Request::Activate { statement: vec![0xA5; 2048] },
    ]
}

fn all_responses() -> Vec<Response> {
    vec![
        Response::Hello(DeviceInfo {
            protocol_version: 1,
            serial: "SN20261122-0001".into(),
            class: 3,
            manufacturer: "MFR-0042".into(),
            model: "输液泵 X1".into(),
            firmware: "2.4.1+build.7".into(),
            state: SeState::ChainPending,
        }),
        Response::Key { spki_der: vec![0x30, 0x59, 0x30, 0x13] },
        Response::Csr { der: vec![0x30; 300] },
        Response::Ok,
        Response::ChainProgress { received: 4080 },
        Response::Committed,
        Response::CertChunk { total_len: 1500, offset: 0, chunk: vec![1; 1500] },
        Response::CertChunk { total_len: 1500, offset: 1500, chunk: vec![] },
        Response::Signature { der: vec![0x30, 0x45, 0x02, 0x21] },
        Response::Status(DeviceStatus { state: SeState::Locked, has_root: true, chain_received: 7, chain_total: 9 }),
        Response::Status(DeviceStatus { state: SeState::Blank, has_root: false, chain_received: 0, chain_total: 0 }),
        Response::Error { code: ErrorCode::ChainInvalid, detail: "issuing CA not signed by root".into() },
        Response::Error { code: ErrorCode::Unknown(0x7777), detail: String::new() },
    ]
}

#[test]
fn every_request_round_trips_through_a_frame() {
    for (seq, req) in all_requests().into_iter().enumerate() {
        let wire =
            frame::encode(FrameKind::Request, seq as u16, req.msg_type(), &req.encode_payload().unwrap()).unwrap();
        let mut d = Decoder::new();
        d.push(&wire);
        let f = d.next_frame().unwrap();
        assert_eq!((f.kind, f.seq), (FrameKind::Request, seq as u16));
        assert_eq!(Request::decode(f.msg_type, &f.payload).unwrap(), req);
        assert_eq!(Request::name_of(f.msg_type), Some(req.name()));
    }
}

#[test]
fn every_response_round_trips_through_a_frame() {
    for (seq, resp) in all_responses().into_iter().enumerate() {
        let wire =
            frame::encode(FrameKind::Response, seq as u16, resp.msg_type(), &resp.encode_payload().unwrap()).unwrap();
        let mut d = Decoder::new();
        d.push(&wire);
        let f = d.next_frame().unwrap();
        assert_eq!(Response::decode(f.msg_type, &f.payload).unwrap(), resp);
    }
}

#[test]
fn payload_layouts_are_as_documented() {
    let p = |r: Request| r.encode_payload().unwrap();
    assert_eq!(p(Request::Hello { max_version: 1 }), [1]);
    assert_eq!(p(Request::GenKey), [0u8; 0]);
    assert_eq!(p(Request::GetCsr { common_name: "ab".into(), serial_number: "c".into() }), [2, b'a', b'b', 1, b'c']);
    assert_eq!(p(Request::PutChain { total_len: 0x0102, offset: 3, chunk: vec![9] }), [0, 0, 1, 2, 0, 0, 0, 3, 9]);
    assert_eq!(p(Request::ReadCert { offset: 0x01020304 }), [1, 2, 3, 4]);
    let r = |r: Response| r.encode_payload().unwrap();
    let info = DeviceInfo {
        protocol_version: 1,
        serial: "S1".into(),
        class: 2,
        manufacturer: "M".into(),
        model: "X".into(),
        firmware: "F".into(),
        state: SeState::KeyGenerated,
    };
    assert_eq!(r(Response::Hello(info)), [1, 2, b'S', b'1', 2, 1, b'M', 1, b'X', 1, b'F', 1]);
    let st = DeviceStatus { state: SeState::Provisioned, has_root: true, chain_received: 0x10, chain_total: 0x20 };
    assert_eq!(r(Response::Status(st)), [3, 1, 0, 0, 0, 0x10, 0, 0, 0, 0x20]);
    assert_eq!(r(Response::error(ErrorCode::NoRoot, "x")), [0x00, 0x22, 1, b'x']);
    assert_eq!(r(Response::CertChunk { total_len: 5, offset: 4, chunk: vec![7] }), [0, 0, 0, 5, 0, 0, 0, 4, 7]);
}

#[test]
fn truncated_and_overlong_payloads_are_refused() {
    for req in all_requests() {
        let payload = req.encode_payload().unwrap();
        for cut in 0..payload.len() {
            if let Ok(other) = Request::decode(req.msg_type(), &payload[..cut]) {
                // Only a trailing "rest" field may shrink and still parse.
                assert!(
                    matches!(other, Request::PutRoot { .. } | Request::PutChain { .. } | Request::Activate { .. }),
                    "{req:?} cut {cut}"
                );
            }
        }
        let mut longer = payload.clone();
        longer.push(0);
        if !matches!(req, Request::PutRoot { .. } | Request::PutChain { .. } | Request::Activate { .. }) {
            assert!(matches!(
                Request::decode(req.msg_type(), &longer),
                Err(MessageError::TrailingBytes { extra: 1, .. })
            ));
        }
    }
    for resp in all_responses() {
        let payload = resp.encode_payload().unwrap();
        for cut in 0..payload.len() {
            if let Ok(other) = Response::decode(resp.msg_type(), &payload[..cut]) {
                assert!(
                    matches!(other, Response::Key { .. } | Response::Csr { .. } | Response::Signature { .. })
                        || matches!(other, Response::CertChunk { .. }),
                    "{resp:?} cut {cut}"
                );
            }
        }
    }
    assert_eq!(Request::decode(msg_type::CHALLENGE, &[0; 31]), Err(MessageError::Truncated { message: "CHALLENGE" }));
    assert_eq!(Request::decode(msg_type::HELLO, &[]), Err(MessageError::Truncated { message: "HELLO" }));
    assert_eq!(
        Request::decode(msg_type::ACTIVATE, &[]),
        Err(MessageError::InvalidField { message: "ACTIVATE", field: "statement" }),
        "an empty statement is malformed whatever the state"
    );
}

#[test]
fn out_of_range_fields_and_unknown_types_are_refused() {
    assert_eq!(Request::decode(0x42, &[]), Err(MessageError::UnknownType(0x42)));
    assert_eq!(Request::decode(msg_type::R_OK, &[]), Err(MessageError::UnknownType(msg_type::R_OK)));
    assert_eq!(Response::decode(msg_type::STATUS, &[]), Err(MessageError::UnknownType(msg_type::STATUS)));
    let invalid = |field| Err(MessageError::InvalidField { message: "STATUS", field });
    assert_eq!(Response::decode(msg_type::R_STATUS, &[6, 0, 0, 0, 0, 0, 0, 0, 0, 0]), invalid("state"));
    assert_eq!(Response::decode(msg_type::R_STATUS, &[0, 2, 0, 0, 0, 0, 0, 0, 0, 0]), invalid("has_root"));
    for class in [0u8, 4] {
        let p = [1, 1, b'S', class, 0, 0, 0, 0];
        assert_eq!(
            Response::decode(msg_type::R_HELLO, &p),
            Err(MessageError::InvalidField { message: "HELLO", field: "class" })
        );
    }
    let put_chain = |total: u32, offset: u32, chunk: &[u8]| {
        let mut p = total.to_be_bytes().to_vec();
        p.extend_from_slice(&offset.to_be_bytes());
        p.extend_from_slice(chunk);
        Request::decode(msg_type::PUT_CHAIN, &p)
    };
    let bad = |field| Err(MessageError::InvalidField { message: "PUT_CHAIN", field });
    assert_eq!(put_chain(0, 0, &[1]), bad("total_len"));
    assert_eq!(put_chain(5, 0, &[]), bad("chunk"));
    assert_eq!(put_chain(5, 4, &[1, 2]), bad("offset"));
    assert_eq!(put_chain(u32::MAX, u32::MAX, &[1]), bad("offset"));
    assert!(put_chain(5, 3, &[1, 2]).is_ok());
    assert_eq!(
        Request::decode(msg_type::PUT_ROOT, &[]),
        Err(MessageError::InvalidField { message: "PUT_ROOT", field: "der" })
    );
    assert_eq!(
        Request::decode(msg_type::GET_CSR, &[0, 1, b's']),
        Err(MessageError::InvalidField { message: "GET_CSR", field: "common_name" })
    );
    assert_eq!(
        Request::decode(msg_type::GET_CSR, &[1, b'c', 0]),
        Err(MessageError::InvalidField { message: "GET_CSR", field: "serial_number" })
    );
    assert_eq!(
        Request::decode(msg_type::GET_CSR, &[2, 0xC3, 0x28, 0]),
        Err(MessageError::InvalidField { message: "GET_CSR", field: "common_name" })
    );
}

#[test]
fn long_strings_are_refused_and_error_detail_is_cut_at_200_bytes() {
    let long = "x".repeat(256);
    assert!(matches!(
        Request::GetCsr { common_name: long, serial_number: String::new() }.encode_payload(),
        Err(MessageError::StringTooLong { field: "common_name", len: 256, .. })
    ));
    let detail = "é".repeat(150); // 300 bytes, 2 per char
    let p = Response::error(ErrorCode::Internal, detail).encode_payload().unwrap();
    assert_eq!(usize::from(p[2]), MAX_ERROR_DETAIL);
    let Response::Error { detail, .. } = Response::decode(msg_type::R_ERROR, &p).unwrap() else { panic!() };
    assert_eq!(detail, "é".repeat(100));
    let odd = format!("a{}", "é".repeat(150));
    let p = Response::error(ErrorCode::Internal, odd).encode_payload().unwrap();
    assert_eq!(usize::from(p[2]), MAX_ERROR_DETAIL - 1);
}

#[test]
fn error_codes_are_stable_unique_and_named() {
    let expected: &[(ErrorCode, u16, &str)] = &[
        (ErrorCode::MalformedRequest, 0x0001, "MALFORMED_REQUEST"),
        (ErrorCode::UnsupportedVersion, 0x0002, "UNSUPPORTED_VERSION"),
        (ErrorCode::UnknownCommand, 0x0003, "UNKNOWN_COMMAND"),
        (ErrorCode::WrongState, 0x0004, "WRONG_STATE"),
        (ErrorCode::KeyExists, 0x0010, "KEY_EXISTS"),
        (ErrorCode::NoKey, 0x0011, "NO_KEY"),
        (ErrorCode::RootAlreadySet, 0x0020, "ROOT_ALREADY_SET"),
        (ErrorCode::RootMismatch, 0x0021, "ROOT_MISMATCH"),
        (ErrorCode::NoRoot, 0x0022, "NO_ROOT"),
        (ErrorCode::ChainTooLarge, 0x0030, "CHAIN_TOO_LARGE"),
        (ErrorCode::ChainOutOfOrder, 0x0031, "CHAIN_OUT_OF_ORDER"),
        (ErrorCode::ChainIncomplete, 0x0032, "CHAIN_INCOMPLETE"),
        (ErrorCode::ChainInvalid, 0x0033, "CHAIN_INVALID"),
        (ErrorCode::NotForThisDevice, 0x0034, "NOT_FOR_THIS_DEVICE"),
        (ErrorCode::KeyMismatch, 0x0035, "KEY_MISMATCH"),
        (ErrorCode::NotProvisioned, 0x0040, "NOT_PROVISIONED"),
        (ErrorCode::Locked, 0x0041, "LOCKED"),
        (ErrorCode::Tampered, 0x0042, "TAMPERED"),
        (ErrorCode::Internal, 0x00FF, "INTERNAL"),
    ];
    assert_eq!(ErrorCode::ALL.len(), expected.len());
    for (&code, &(want, value, name)) in ErrorCode::ALL.iter().zip(expected) {
        assert_eq!(code, want);
        assert_eq!(code.code(), value);
        assert_eq!(code.name(), name);
        assert_eq!(ErrorCode::from_code(value), code);
        assert!(code.to_string().starts_with(&format!("{name} (0x{value:04X}): ")), "{code}");
    }
    assert_eq!(ErrorCode::from_code(0x1234), ErrorCode::Unknown(0x1234));
    assert_eq!(ErrorCode::Unknown(0x1234).code(), 0x1234);
}

#[test]
fn se_states_round_trip() {
    for (i, s) in SeState::ALL.into_iter().enumerate() {
        assert_eq!(s.to_byte(), i as u8);
        assert_eq!(SeState::from_byte(i as u8), Some(s));
    }
    assert_eq!(SeState::from_byte(6), None);
    assert_eq!(SeState::ChainPending.to_string(), "CHAIN_PENDING");
}

#[test]
fn version_negotiation() {
    assert_eq!(negotiate_version(0), Err(ErrorCode::UnsupportedVersion));
    assert_eq!(negotiate_version(1), Ok(1));
    assert_eq!(negotiate_version(200), Ok(1));
}

#[test]
fn state_table_matches_protocol_md() {
    use ErrorCode as E;
    use SeState::*;
    let ok = Ok(());
    // Rows: request; columns: Blank, KeyGenerated, ChainPending, Provisioned, Locked, Tampered.
    // COMMIT is listed with a root stored; without one, see below.
    let table: Vec<(Request, [Result<(), ErrorCode>; 6])> = vec![
        (Request::Hello { max_version: 1 }, [ok, ok, ok, ok, ok, ok]),
        (Request::Status, [ok, ok, ok, ok, ok, ok]),
        (
            Request::GenKey,
            [ok, Err(E::KeyExists), Err(E::KeyExists), Err(E::KeyExists), Err(E::Locked), Err(E::Tampered)],
        ),
        (
            Request::GetCsr { common_name: String::new(), serial_number: String::new() },
            [Err(E::NoKey), ok, ok, Err(E::WrongState), Err(E::Locked), Err(E::Tampered)],
        ),
        (Request::PutRoot { der: vec![] }, [ok, ok, ok, ok, Err(E::Locked), Err(E::Tampered)]),
        (
            Request::PutChain { total_len: 1, offset: 0, chunk: vec![1] },
            [Err(E::NoKey), ok, ok, Err(E::WrongState), Err(E::Locked), Err(E::Tampered)],
        ),
        (
            Request::Commit,
            [Err(E::NoKey), Err(E::ChainIncomplete), ok, Err(E::WrongState), Err(E::Locked), Err(E::Tampered)],
        ),
        (
            Request::ReadCert { offset: 0 },
            [Err(E::NotProvisioned), Err(E::NotProvisioned), Err(E::NotProvisioned), ok, ok, Err(E::Tampered)],
        ),
        (
            Request::Challenge { nonce: [0; 32] },
            [Err(E::NotProvisioned), Err(E::NotProvisioned), Err(E::NotProvisioned), ok, ok, Err(E::Tampered)],
        ),
        (
            Request::Activate { statement: vec![1] },
            [Err(E::NotProvisioned), Err(E::NotProvisioned), Err(E::NotProvisioned), ok, ok, Err(E::Tampered)],
        ),
        (
            Request::Lock,
            [
                Err(E::NotProvisioned),
                Err(E::NotProvisioned),
                Err(E::NotProvisioned),
                ok,
                Err(E::Locked),
                Err(E::Tampered),
            ],
        ),
    ];
    for (req, row) in &table {
        for (state, want) in SeState::ALL.into_iter().zip(row) {
            assert_eq!(req.check_state(state, true), *want, "{} in {state}", req.name());
        }
    }
    assert_eq!(Request::Commit.check_state(ChainPending, false), Err(E::NoRoot));
    assert_eq!(Request::Commit.check_state(KeyGenerated, false), Err(E::NoRoot));
    assert_eq!(Request::Commit.check_state(Blank, false), Err(E::NoKey));
    assert_eq!(Request::Commit.check_state(Locked, false), Err(E::Locked));
    assert_eq!(Request::GenKey.check_state(Blank, false), Ok(()));
}

#[test]
fn names_response_typing_and_challenge_message() {
    let names: Vec<_> = all_requests().iter().map(Request::name).collect();
    for n in [
        "HELLO",
        "GEN_KEY",
        "GET_CSR",
        "PUT_ROOT",
        "PUT_CHAIN",
        "COMMIT",
        "READ_CERT",
        "CHALLENGE",
        "LOCK",
        "STATUS",
        "ACTIVATE",
    ] {
        assert!(names.contains(&n), "{n}");
    }
    assert!(Request::GenKey.accepts(&Response::Key { spki_der: vec![] }));
    assert!(Request::GenKey.accepts(&Response::error(ErrorCode::KeyExists, "")));
    assert!(!Request::GenKey.accepts(&Response::Ok));
    assert!(Request::Lock.accepts(&Response::Ok));
    assert!(!Request::Status.accepts(&Response::Committed));
    assert!(Request::Activate { statement: vec![1] }.accepts(&Response::Signature { der: vec![] }));
    assert!(!Request::Activate { statement: vec![1] }.accepts(&Response::Ok));
    let m = challenge_message(&[7; 32]);
    assert_eq!(&m[..23], b"TERMINAL-SE-CHALLENGE/1");
    assert_eq!(m[23..], [7; 32]);
}

#[test]
fn hello_response_example_of_protocol_md() {
    let resp = Response::Hello(DeviceInfo {
        protocol_version: 1,
        serial: "SN-0001".into(),
        class: 2,
        manufacturer: "MFR".into(),
        model: "M1".into(),
        firmware: "1.0.0".into(),
        state: SeState::Blank,
    });
    let wire = frame::encode(FrameKind::Response, 1, resp.msg_type(), &resp.encode_payload().unwrap()).unwrap();
    let expected = [
        0xA5, 0x5A, 0x01, 0x02, 0x00, 0x01, 0x81, 0x00, 0x18, //
        0x01, //
        0x07, 0x53, 0x4E, 0x2D, 0x30, 0x30, 0x30, 0x31, //
        0x02, //
        0x03, 0x4D, 0x46, 0x52, //
        0x02, 0x4D, 0x31, //
        0x05, 0x31, 0x2E, 0x30, 0x2E, 0x30, //
        0x00, //
        0x62, 0x76, 0x5B, 0xB3,
    ];
    assert_eq!(wire, expected);
}
