//! Link layer over real byte streams: a pseudo-terminal pair and TCP on 127.0.0.1.
//! The "device" runs on its own thread with a [`DeviceLink`] (or raw frames where the test needs
//! to see the wire), the host uses a [`HostLink`].

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use device_protocol::frame::{self, Decoder, Frame, FrameKind};
use device_protocol::{
    DeviceInfo, DeviceLink, DeviceStatus, ErrorCode, HostLink, LinkConfig, LinkError, Request, Response, SeState,
    Transport, msg_type, negotiate_version,
};
use serialport::{SerialPort, TTYPort};

type Pair = (Box<dyn Transport>, Box<dyn Transport>);

fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (device, _) = listener.accept().unwrap();
    (host, device)
}

fn tcp() -> Pair {
    let (h, d) = tcp_pair();
    (Box::new(h), Box::new(d))
}

/// Host on the master side, device on the slave (`/dev/pts/N`), like a USB CDC-ACM terminal.
fn pty() -> Pair {
    let (master, slave) = TTYPort::pair().unwrap();
    (Box::new(master), Box::new(slave))
}

type MakePair = fn() -> Pair;

const TRANSPORTS: [(&str, MakePair); 2] = [("tcp", tcp), ("pty", pty)];

fn info(state: SeState) -> DeviceInfo {
    DeviceInfo {
        protocol_version: 1,
        serial: "SN-0001".into(),
        class: 2,
        manufacturer: "MFR".into(),
        model: "M1".into(),
        firmware: "1.0.0".into(),
        state,
    }
}

/// The well-behaved answer of a fresh device, without any state.
fn answer(req: &Request) -> Response {
    match req {
        Request::Hello { max_version } => match negotiate_version(*max_version) {
            Ok(v) => Response::Hello(DeviceInfo { protocol_version: v, ..info(SeState::Blank) }),
            Err(code) => Response::error(code, "device speaks 1..=1"),
        },
        Request::GenKey => Response::Key { spki_der: vec![0x30, 0x59, 1, 2, 3] },
        Request::GetCsr { common_name, .. } => Response::Csr { der: common_name.as_bytes().to_vec() },
        Request::PutRoot { .. } | Request::Lock => Response::Ok,
        Request::PutChain { offset, chunk, .. } => Response::ChainProgress { received: offset + chunk.len() as u32 },
        Request::Commit => Response::Committed,
        Request::ReadCert { offset } => Response::CertChunk { total_len: 3, offset: *offset, chunk: vec![1, 2, 3] },
        Request::Challenge { nonce } => Response::Signature { der: nonce.to_vec() },
        Request::Activate { statement } => Response::Signature { der: statement.clone() },
        Request::Status => {
            Response::Status(DeviceStatus { state: SeState::Blank, has_root: false, chain_received: 0, chain_total: 0 })
        }
    }
}

/// What the device thread saw.
struct Seen<T: Transport> {
    requests: Vec<Request>,
    link: DeviceLink<T>,
}

/// Serves requests until the host closes; `handle` answers each (normally with `answer`). The
/// link (and so the transport) is returned, so a pty slave stays open until the host is done.
fn device<T: Transport + 'static>(
    transport: T,
    mut handle: impl FnMut(&mut DeviceLink<T>, u16, &Request) + Send + 'static,
) -> JoinHandle<Seen<T>> {
    thread::spawn(move || {
        let mut link = DeviceLink::new(transport);
        let mut requests = vec![];
        while let Some((seq, req)) = link.next_request().unwrap() {
            handle(&mut link, seq, &req);
            requests.push(req);
        }
        Seen { requests, link }
    })
}

fn respond<T: Transport>(link: &mut DeviceLink<T>, seq: u16, req: &Request) {
    link.respond(seq, &answer(req)).unwrap();
}

fn cfg(ms: u64, retransmits: u32) -> LinkConfig {
    LinkConfig { frame_timeout: Duration::from_millis(ms), max_retransmits: retransmits }
}

const HELLO: Request = Request::Hello { max_version: 1 };

#[test]
fn full_session_over_tcp_and_pty() {
    for (name, make) in TRANSPORTS {
        let (h, d) = make();
        let dev = device(d, respond);
        let mut host = HostLink::new(h, LinkConfig::default());
        let script = [
            HELLO,
            Request::Status,
            Request::GenKey,
            Request::GetCsr { common_name: "terminal-0001".into(), serial_number: "SN-0001".into() },
            Request::PutRoot { der: vec![0x30; 2048] },
            Request::PutChain { total_len: 4000, offset: 0, chunk: vec![0xA5; 2040] },
            Request::PutChain { total_len: 4000, offset: 2040, chunk: vec![0x5A; 1960] },
            Request::Commit,
            Request::ReadCert { offset: 0 },
            Request::Challenge { nonce: [9; 32] },
            Request::Lock,
        ];
        for req in &script {
            assert_eq!(host.call(req).unwrap(), answer(req), "{name}: {}", req.name());
            assert_eq!(host.last_attempts(), 1, "{name}: {}", req.name());
        }
        assert_eq!(host.negotiated_version(), Some(1));
        drop(host);
        let seen = dev.join().unwrap();
        assert_eq!(seen.requests, script, "{name}");
        assert_eq!(seen.link.replayed(), 0, "{name}");
    }
}

#[test]
fn serial_device_opened_by_path_like_a_real_port() {
    let (master, slave) = TTYPort::pair().unwrap();
    let path = slave.name().unwrap();
    let port = device_protocol::open_serial(&path).unwrap();
    let dev = device(port, respond);
    let mut host = HostLink::new(master, LinkConfig::default());
    assert!(matches!(host.call(&HELLO).unwrap(), Response::Hello(_)));
    assert!(matches!(host.call(&Request::Status).unwrap(), Response::Status(_)));
    drop(host);
    assert_eq!(dev.join().unwrap().requests.len(), 2);
    drop(slave);
    assert!(matches!(device_protocol::open_serial("/dev/does-not-exist"), Err(LinkError::Io(_))));
}

#[test]
fn hello_must_come_first_and_the_link_answers_wrong_state_itself() {
    for (name, make) in TRANSPORTS {
        let (h, d) = make();
        let dev = device(d, respond);
        let mut host = HostLink::new(h, LinkConfig::default());
        match host.call(&Request::GenKey) {
            Err(LinkError::Device { command: "GEN_KEY", code: ErrorCode::WrongState, detail }) => {
                assert!(detail.contains("HELLO"), "{name}: {detail}")
            }
            other => panic!("{name}: {other:?}"),
        }
        host.call(&HELLO).unwrap();
        host.call(&Request::GenKey).unwrap();
        drop(host);
        let seen = dev.join().unwrap();
        assert_eq!(seen.requests, [HELLO, Request::GenKey], "{name}: GEN_KEY before HELLO must not execute");
    }
}

#[test]
fn dropped_response_is_retransmitted_and_replayed_without_executing_twice() {
    for (name, make) in TRANSPORTS {
        let (h, d) = make();
        let executions = Arc::new(AtomicU32::new(0));
        let count = executions.clone();
        let dev = device(d, move |link, seq, req| {
            if let Request::GenKey = req
                && count.fetch_add(1, Ordering::SeqCst) == 0
            {
                link.respond_dropped(seq, &answer(req)).unwrap();
                return;
            }
            respond(link, seq, req);
        });
        let mut host = HostLink::new(h, cfg(300, 3));
        host.call(&HELLO).unwrap();
        assert_eq!(host.call(&Request::GenKey).unwrap(), answer(&Request::GenKey), "{name}");
        assert_eq!(host.last_attempts(), 2, "{name}");
        host.call(&Request::Status).unwrap();
        drop(host);
        let seen = dev.join().unwrap();
        assert_eq!(executions.load(Ordering::SeqCst), 1, "{name}: GEN_KEY ran twice");
        assert_eq!(seen.link.replayed(), 1, "{name}");
    }
}

#[test]
fn corrupted_response_is_discarded_and_the_retransmission_gets_the_cached_one() {
    for (name, make) in TRANSPORTS {
        let (h, d) = make();
        let executions = Arc::new(AtomicU32::new(0));
        let count = executions.clone();
        let dev = device(d, move |link, seq, req| match req {
            Request::GetCsr { .. } | Request::Lock if count.fetch_add(1, Ordering::SeqCst) < 2 => {
                link.respond_corrupted(seq, &answer(req)).unwrap()
            }
            _ => respond(link, seq, req),
        });
        let mut host = HostLink::new(h, cfg(300, 3));
        host.call(&HELLO).unwrap();
        let csr = Request::GetCsr { common_name: "t".into(), serial_number: "s".into() };
        assert_eq!(host.call(&csr).unwrap(), answer(&csr), "{name}");
        assert_eq!(host.last_attempts(), 2, "{name}");
        // OK has an empty payload: the flipped bit lands in the CRC.
        assert_eq!(host.call(&Request::Lock).unwrap(), Response::Ok, "{name}");
        assert_eq!(host.last_attempts(), 2, "{name}");
        drop(host);
        let seen = dev.join().unwrap();
        assert_eq!(executions.load(Ordering::SeqCst), 2, "{name}");
        assert_eq!(seen.link.replayed(), 2, "{name}");
    }
}

#[test]
fn busy_keeps_a_300ms_host_waiting_through_a_1500ms_operation() {
    for (name, make) in TRANSPORTS {
        let (h, d) = make();
        let dev = device(d, |link, seq, req| {
            if let Request::GenKey = req {
                let resp = link.run_busy(seq, || {
                    thread::sleep(Duration::from_millis(1500));
                    answer(req)
                });
                link.respond(seq, &resp).unwrap();
            } else {
                respond(link, seq, req);
            }
        });
        let mut host = HostLink::new(h, cfg(300, 3));
        host.call(&HELLO).unwrap();
        let start = Instant::now();
        assert_eq!(host.call(&Request::GenKey).unwrap(), answer(&Request::GenKey), "{name}");
        assert!(start.elapsed() >= Duration::from_millis(1500), "{name}");
        assert_eq!(host.last_attempts(), 1, "{name}: BUSY should have prevented any retransmission");
        drop(host);
        assert_eq!(dev.join().unwrap().requests, [HELLO, Request::GenKey], "{name}");
    }
}

#[test]
fn without_busy_the_same_operation_times_out() {
    let (h, d) = tcp();
    let dev = device(d, |link, seq, req| {
        if let Request::GenKey = req {
            thread::sleep(Duration::from_millis(1500));
        }
        // The host is gone by now for GEN_KEY; a failed write is expected.
        let _ = link.respond(seq, &answer(req));
    });
    let mut host = HostLink::new(h, cfg(300, 3));
    host.call(&HELLO).unwrap();
    match host.call(&Request::GenKey) {
        Err(LinkError::Timeout { command: "GEN_KEY", attempts: 4 }) => {}
        other => panic!("{other:?}"),
    }
    drop(host);
    // Retransmissions that arrived while the device was busy were replays, not new work.
    assert_eq!(dev.join().unwrap().requests, [HELLO, Request::GenKey]);
}

/// Reads raw frames until the peer closes; returns every frame seen.
fn silent_device(mut t: Box<dyn Transport>) -> JoinHandle<(Vec<Frame>, Box<dyn Transport>)> {
    thread::spawn(move || {
        let mut d = Decoder::new();
        let mut frames = vec![];
        let mut buf = [0u8; 512];
        loop {
            t.set_read_timeout(Duration::from_millis(50)).unwrap();
            match t.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => d.push(&buf[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset) => break,
                Err(e) => panic!("{e}"),
            }
            frames.extend(std::iter::from_fn(|| d.next_frame()));
        }
        (frames, t)
    })
}

#[test]
fn a_device_that_never_answers_gives_timeout_after_exactly_1_plus_max_retransmits_sends() {
    for (name, make) in TRANSPORTS {
        let (h, d) = make();
        let dev = silent_device(d);
        let mut host = HostLink::new(h, cfg(200, 3));
        let start = Instant::now();
        let err = host.call(&Request::Commit).unwrap_err();
        let elapsed = start.elapsed();
        assert!(matches!(err, LinkError::Timeout { command: "COMMIT", attempts: 4 }), "{name}: {err:?}");
        assert_eq!(err.to_string(), "COMMIT: no response from the device after 4 attempts");
        assert!(elapsed >= Duration::from_millis(800), "{name}: {elapsed:?}");
        drop(host);
        let (frames, _) = dev.join().unwrap();
        assert_eq!(frames.len(), 4, "{name}");
        assert!(frames.iter().all(|f| *f == frames[0]), "{name}: retransmissions must be identical");
        assert_eq!((frames[0].kind, frames[0].msg_type), (FrameKind::Request, msg_type::COMMIT));

        let (h, d) = make();
        let dev = silent_device(d);
        let mut host = HostLink::new(h, cfg(100, 0));
        assert!(matches!(host.call(&Request::Lock), Err(LinkError::Timeout { command: "LOCK", attempts: 1 })));
        drop(host);
        assert_eq!(dev.join().unwrap().0.len(), 1, "{name}");
    }
}

#[test]
fn device_error_becomes_link_error_device_with_the_code() {
    for (name, make) in TRANSPORTS {
        let (h, d) = make();
        let dev = device(d, |link, seq, req| match req {
            Request::GenKey => link.respond(seq, &Response::error(ErrorCode::KeyExists, "key made at 09:14")).unwrap(),
            _ => respond(link, seq, req),
        });
        let mut host = HostLink::new(h, LinkConfig::default());
        host.call(&HELLO).unwrap();
        let err = host.call(&Request::GenKey).unwrap_err();
        match &err {
            LinkError::Device { command: "GEN_KEY", code: ErrorCode::KeyExists, detail } => {
                assert_eq!(detail, "key made at 09:14")
            }
            other => panic!("{name}: {other:?}"),
        }
        let text = err.to_string();
        assert!(text.starts_with("GEN_KEY refused by the device: KEY_EXISTS (0x0010)"), "{text}");
        assert!(text.ends_with("(key made at 09:14)"), "{text}");
        drop(host);
        dev.join().unwrap();
    }
}

#[test]
fn version_negotiation_refusal_and_a_device_choosing_too_high_a_version() {
    let (h, d) = tcp();
    let dev = device(d, |link, seq, req| match req {
        Request::Hello { max_version: 2 } => {
            link.respond(seq, &Response::Hello(DeviceInfo { protocol_version: 3, ..info(SeState::Blank) })).unwrap()
        }
        _ => respond(link, seq, req),
    });
    let mut host = HostLink::new(h, LinkConfig::default());
    assert!(matches!(
        host.call(&Request::Hello { max_version: 0 }),
        Err(LinkError::Device { command: "HELLO", code: ErrorCode::UnsupportedVersion, .. })
    ));
    // A refused HELLO does not open the session.
    assert!(matches!(host.call(&Request::Status), Err(LinkError::Device { code: ErrorCode::WrongState, .. })));
    assert!(matches!(host.call(&Request::Hello { max_version: 2 }), Err(LinkError::Protocol(_))));
    assert_eq!(host.negotiated_version(), None);
    drop(host);
    dev.join().unwrap();
}

#[test]
fn wrong_response_type_is_a_protocol_error() {
    let (h, d) = tcp();
    let dev = device(d, |link, seq, req| match req {
        Request::Lock => link.respond(seq, &Response::Committed).unwrap(),
        _ => respond(link, seq, req),
    });
    let mut host = HostLink::new(h, LinkConfig::default());
    host.call(&HELLO).unwrap();
    match host.call(&Request::Lock) {
        Err(LinkError::Protocol(m)) => assert!(m.contains("LOCK") && m.contains("COMMITTED"), "{m}"),
        other => panic!("{other:?}"),
    }
    drop(host);
    dev.join().unwrap();
}

#[test]
fn responses_with_another_seq_are_ignored() {
    let (h, d) = tcp();
    let dev = device(d, |link, seq, req| {
        if let Request::Lock = req {
            link.respond(seq.wrapping_sub(1), &Response::error(ErrorCode::Internal, "stale")).unwrap();
            link.respond(seq.wrapping_add(7), &Response::error(ErrorCode::Internal, "bogus")).unwrap();
        }
        respond(link, seq, req);
    });
    let mut host = HostLink::new(h, LinkConfig::default());
    host.call(&HELLO).unwrap();
    assert_eq!(host.call(&Request::Lock).unwrap(), Response::Ok);
    assert_eq!(host.last_attempts(), 1);
    drop(host);
    dev.join().unwrap();
}

/// Noise, then the start of a frame whose length field promises 2000 bytes that never come.
fn line_noise(seq: u16, kind: FrameKind) -> Vec<u8> {
    let mut n = vec![0x00, 0xFF, 0xA5, 0x13, 0x5A, 0x7E, b'\r', b'\n'];
    n.extend_from_slice(&[0xA5, 0x5A, 1, kind.to_byte()]);
    n.extend_from_slice(&seq.to_be_bytes());
    n.extend_from_slice(&[msg_type::R_STATUS, 0x07, 0xD0, 1, 2, 3]);
    n
}

#[test]
fn noise_and_a_cut_frame_do_not_wedge_the_link_in_either_direction() {
    let (h, d) = tcp_pair();
    let mut device_noise = d.try_clone().unwrap();
    let mut host_noise = h.try_clone().unwrap();
    let dev = device(d, move |link, seq, req| {
        if let Request::Status = req {
            device_noise.write_all(&line_noise(seq, FrameKind::Response)).unwrap();
        }
        respond(link, seq, req);
    });
    let mut host = HostLink::new(h, LinkConfig::default());
    host.call(&HELLO).unwrap();
    // Device → host: the real response is swallowed by the cut frame until the line goes idle.
    let start = Instant::now();
    assert_eq!(host.call(&Request::Status).unwrap(), answer(&Request::Status));
    assert_eq!(host.last_attempts(), 1);
    assert!(start.elapsed() < Duration::from_millis(900), "{:?}", start.elapsed());
    // Host → device.
    host_noise.write_all(&line_noise(0x4242, FrameKind::Request)).unwrap();
    assert_eq!(host.call(&Request::Lock).unwrap(), Response::Ok);
    assert_eq!(host.last_attempts(), 1);
    drop(host);
    drop(host_noise);
    assert_eq!(dev.join().unwrap().requests, [HELLO, Request::Status, Request::Lock]);
}

#[test]
fn unknown_and_malformed_commands_are_answered_by_the_link() {
    let (mut h, d) = tcp_pair();
    let dev = device(d, respond);
    h.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut dec = Decoder::new();
    let mut ask = |seq: u16, ty: u8, payload: &[u8]| -> Response {
        h.write_all(&frame::encode(FrameKind::Request, seq, ty, payload).unwrap()).unwrap();
        let mut buf = [0u8; 256];
        loop {
            if let Some(f) = dec.next_frame() {
                assert_eq!((f.kind, f.seq), (FrameKind::Response, seq));
                return Response::decode(f.msg_type, &f.payload).unwrap();
            }
            let n = h.read(&mut buf).unwrap();
            dec.push(&buf[..n]);
        }
    };
    let code = |r: Response| match r {
        Response::Error { code, .. } => code,
        other => panic!("{other:?}"),
    };
    assert_eq!(code(ask(1, 0x42, &[])), ErrorCode::UnknownCommand);
    assert_eq!(code(ask(2, msg_type::HELLO, &[])), ErrorCode::MalformedRequest);
    assert_eq!(code(ask(3, msg_type::CHALLENGE, &[0; 5])), ErrorCode::MalformedRequest);
    // A retransmission of an answered malformed request is replayed, same bytes.
    assert_eq!(code(ask(3, msg_type::CHALLENGE, &[0; 5])), ErrorCode::MalformedRequest);
    assert!(matches!(ask(4, msg_type::HELLO, &[1]), Response::Hello(_)));
    drop(h);
    let seen = dev.join().unwrap();
    assert_eq!(seen.requests, [HELLO]);
    assert_eq!(seen.link.replayed(), 1);
}

#[test]
fn same_seq_with_other_content_is_a_new_request() {
    let (mut h, d) = tcp_pair();
    let dev = device(d, respond);
    h.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    for payload in [[1u8], [1], [2], [2]] {
        h.write_all(&frame::encode(FrameKind::Request, 77, msg_type::HELLO, &payload).unwrap()).unwrap();
    }
    // Give the device time to answer all four before closing.
    let mut dec = Decoder::new();
    let mut got = 0;
    let mut buf = [0u8; 256];
    while got < 4 {
        let n = h.read(&mut buf).unwrap();
        dec.push(&buf[..n]);
        got += std::iter::from_fn(|| dec.next_frame()).count();
    }
    drop(h);
    let seen = dev.join().unwrap();
    assert_eq!(seen.requests, [Request::Hello { max_version: 1 }, Request::Hello { max_version: 2 }]);
    assert_eq!(seen.link.replayed(), 2);
}

#[test]
fn closed_peer_is_reported() {
    for (name, make) in TRANSPORTS {
        let (h, d) = make();
        let dev = device(d, respond);
        let mut host = HostLink::new(h, cfg(300, 3));
        host.call(&HELLO).unwrap();
        drop(host);
        // The device sees the close as the end of requests (Ok(None)), not as an error.
        let seen = dev.join().unwrap();
        assert_eq!(seen.requests.len(), 1, "{name}");

        let (h, d) = make();
        drop(d);
        let mut host = HostLink::new(h, cfg(300, 3));
        assert!(matches!(host.call(&HELLO), Err(LinkError::Closed)), "{name}");
    }
}

#[test]
fn overall_deadline_stops_a_call_that_busy_would_keep_alive() {
    let (h, d) = tcp();
    let dev = device(d, |link, seq, req| {
        if let Request::Commit = req {
            let resp = link.run_busy(seq, || {
                thread::sleep(Duration::from_millis(1200));
                answer(req)
            });
            let _ = link.respond(seq, &resp);
        } else {
            respond(link, seq, req);
        }
    });
    let mut host = HostLink::new(h, cfg(300, 3));
    host.call(&HELLO).unwrap();
    let start = Instant::now();
    host.set_deadline(Some(start + Duration::from_millis(500)));
    match host.call(&Request::Commit) {
        Err(LinkError::Deadline { command: "COMMIT" }) => {}
        other => panic!("{other:?}"),
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(500) && took < Duration::from_millis(900), "{took:?}");
    assert_eq!(host.last_attempts(), 1);
    assert!(matches!(host.call(&Request::Status), Err(LinkError::Deadline { command: "STATUS" })));
    host.set_deadline(None);
    host.call(&Request::Status).unwrap();
    drop(host);
    dev.join().unwrap();
}
