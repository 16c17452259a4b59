//! Link layer: request/response with sequence numbers, per-frame timeouts, retransmission,
//! BUSY keep-alive and duplicate replay, over any byte stream ([`Transport`]).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serialport::SerialPort;

use crate::frame::{self, Decoder, FrameKind};
use crate::message::{ErrorCode, MessageError, Request, Response, msg_type};
use crate::{BUSY_INTERVAL, INTER_BYTE_TIMEOUT, MIN_PROTOCOL_VERSION};

/// How long one blocking read may wait before the link re-checks deadlines, idle lines and closure.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Upper bound for writing one frame; only serial ports honour it (they share one timeout).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// A byte stream the link can run over: TCP, a serial port, a pseudo-terminal.
///
/// Writes must not be buffered beyond `flush`; reads must return an error of kind `TimedOut` or
/// `WouldBlock` when the read timeout expires, and `Ok(0)` or a broken-pipe / reset error when the
/// peer is gone.
pub trait Transport: Read + Write + Send {
    /// Sets how long one `read` may block.
    fn set_read_timeout(&mut self, t: Duration) -> io::Result<()>;
}

impl Transport for TcpStream {
    fn set_read_timeout(&mut self, t: Duration) -> io::Result<()> {
        // A zero timeout means "invalid" to the socket API, not "don't wait".
        TcpStream::set_read_timeout(self, Some(t.max(Duration::from_millis(1))))
    }
}

impl Transport for serialport::TTYPort {
    fn set_read_timeout(&mut self, t: Duration) -> io::Result<()> {
        SerialPort::set_timeout(self, t).map_err(io::Error::from)
    }
}

impl Transport for dyn SerialPort {
    fn set_read_timeout(&mut self, t: Duration) -> io::Result<()> {
        self.set_timeout(t).map_err(io::Error::from)
    }
}

/// Lets `Box<dyn SerialPort>` and `Box<dyn Transport>` (serial or TCP chosen at run time) be used.
impl<T: Transport + ?Sized> Transport for Box<T> {
    fn set_read_timeout(&mut self, t: Duration) -> io::Result<()> {
        (**self).set_read_timeout(t)
    }
}

/// Opens a serial device (e.g. `/dev/ttyACM0`) at 115200 baud, 8N1, no flow control, raw mode.
///
/// The port is not opened exclusively (no TIOCEXCL): that flag outlives our close while anything
/// else keeps the tty open (terminal-sim holding its pty, a modem manager), and the next
/// non-root open would fail with EBUSY.
pub fn open_serial(path: &str) -> Result<Box<dyn SerialPort>, LinkError> {
    serialport::new(path, 115_200)
        .exclusive(false)
        .data_bits(serialport::DataBits::Eight)
        .parity(serialport::Parity::None)
        .stop_bits(serialport::StopBits::One)
        .flow_control(serialport::FlowControl::None)
        .timeout(POLL_INTERVAL)
        .open()
        .map_err(|e| {
            let text = e.to_string();
            let kind = io::Error::from(e).kind();
            LinkError::Io(io::Error::new(kind, format!("{path}: {text}")))
        })
}

/// Why a link operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The transport failed.
    #[error("link I/O error: {0}")]
    Io(#[from] io::Error),
    /// No response after the first send and every retransmission.
    #[error("{command}: no response from the device after {attempts} attempts")]
    Timeout {
        /// Command name ("GEN_KEY", ...).
        command: &'static str,
        /// Frames sent: 1 + retransmissions.
        attempts: u32,
    },
    /// The overall deadline set with [`HostLink::set_deadline`] passed during this command.
    #[error("{command}: the overall deadline passed while waiting for the device")]
    Deadline {
        /// Command name.
        command: &'static str,
    },
    /// The peer closed the connection (EOF, hang-up).
    #[error("the link was closed by the peer")]
    Closed,
    /// The peer sent something well-framed but wrong, or a message could not be encoded.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The device answered with an ERROR response.
    #[error("{command} refused by the device: {code}{}", detail_suffix(detail))]
    Device {
        /// Command name.
        command: &'static str,
        /// Error code from the device.
        code: ErrorCode,
        /// The device's detail text.
        detail: String,
    },
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() { String::new() } else { format!(" ({detail})") }
}

/// Host-side timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkConfig {
    /// How long to wait for a response (or the next BUSY) before retransmitting.
    pub frame_timeout: Duration,
    /// Retransmissions after the first send before giving up.
    pub max_retransmits: u32,
}

impl Default for LinkConfig {
    /// 1 s, 3 retransmissions.
    fn default() -> Self {
        LinkConfig { frame_timeout: Duration::from_secs(1), max_retransmits: 3 }
    }
}

struct Rx {
    decoder: Decoder,
    last_byte: Instant,
    buf: Box<[u8; 4096]>,
}

enum RxEvent {
    Progress,
    Closed,
}

impl Rx {
    fn new() -> Self {
        Rx { decoder: Decoder::new(), last_byte: Instant::now(), buf: Box::new([0; 4096]) }
    }

    /// One read of at most `wait`; feeds the decoder and applies the inter-byte timeout.
    fn read<T: Transport + ?Sized>(&mut self, t: &mut T, wait: Duration) -> Result<RxEvent, LinkError> {
        t.set_read_timeout(wait.clamp(Duration::from_millis(1), POLL_INTERVAL))?;
        match t.read(&mut self.buf[..]) {
            Ok(0) => Ok(RxEvent::Closed),
            Ok(n) => {
                self.decoder.push(self.buf.get(..n).unwrap_or_default());
                self.last_byte = Instant::now();
                Ok(RxEvent::Progress)
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => {
                if self.decoder.buffered() > 0 && self.last_byte.elapsed() >= INTER_BYTE_TIMEOUT {
                    self.decoder.line_idle();
                }
                Ok(RxEvent::Progress)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(RxEvent::Progress),
            Err(e) if is_closed(&e) => Ok(RxEvent::Closed),
            Err(e) => Err(LinkError::Io(e)),
        }
    }
}

fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
            | io::ErrorKind::UnexpectedEof
    )
}

fn write_frame<T: Transport + ?Sized>(t: &mut T, bytes: &[u8]) -> Result<(), LinkError> {
    let result = t.set_read_timeout(WRITE_TIMEOUT).and_then(|()| t.write_all(bytes));
    // Every byte is with the kernel now. tcdrain fails with EIO when the peer hangs up right after
    // reading our frame (a pty whose master closed), though nothing was lost; a line that is
    // really gone shows on the next read or write, which the caller's retries and deadline handle.
    if result.is_ok() {
        let _ = t.flush();
    }
    match result {
        Ok(()) => Ok(()),
        Err(e) if is_closed(&e) => Err(LinkError::Closed),
        Err(e) => Err(LinkError::Io(e)),
    }
}

fn encode_response(seq: u16, resp: &Response) -> Result<Vec<u8>, LinkError> {
    let payload = resp.encode_payload().map_err(|e| LinkError::Protocol(e.to_string()))?;
    frame::encode(FrameKind::Response, seq, resp.msg_type(), &payload)
        .map_err(|e| LinkError::Protocol(format!("{} response: {e}", resp.name())))
}

/// Host (station) end: sends requests, waits, retransmits, returns the device's answer.
pub struct HostLink<T: Transport> {
    transport: T,
    config: LinkConfig,
    rx: Rx,
    next_seq: u16,
    last_attempts: u32,
    version: Option<u8>,
    deadline: Option<Instant>,
}

impl<T: Transport> HostLink<T> {
    /// Wraps a transport. The first seq is taken from the clock so a restarted station does not
    /// reuse the seq of the request the device cached from the previous run.
    pub fn new(transport: T, config: LinkConfig) -> Self {
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos() ^ d.as_secs() as u32);
        let next_seq = (seed.unwrap_or(0) >> 8) as u16;
        HostLink { transport, config, rx: Rx::new(), next_seq, last_attempts: 0, version: None, deadline: None }
    }

    /// Sends `req` and returns the device's answer.
    ///
    /// Each attempt waits up to `frame_timeout`, restarted by every BUSY for this seq; a timeout
    /// or a corrupt frame leads to a retransmission of the same bytes (same seq), at most
    /// `max_retransmits` times. An ERROR response becomes [`LinkError::Device`]; a response of the
    /// wrong type, or a HELLO with a version this host does not speak, is [`LinkError::Protocol`].
    /// Past the deadline of [`HostLink::set_deadline`] (even while the device sends BUSY) the call
    /// fails with [`LinkError::Deadline`].
    pub fn call(&mut self, req: &Request) -> Result<Response, LinkError> {
        let command = req.name();
        let payload = req.encode_payload().map_err(|e| LinkError::Protocol(e.to_string()))?;
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        let bytes = frame::encode(FrameKind::Request, seq, req.msg_type(), &payload)
            .map_err(|e| LinkError::Protocol(format!("{command}: {e}")))?;
        self.last_attempts = 0;
        while self.last_attempts <= self.config.max_retransmits {
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(LinkError::Deadline { command });
            }
            self.last_attempts += 1;
            write_frame(&mut self.transport, &bytes)?;
            let mut deadline = self.frame_deadline();
            loop {
                while let Some(f) = self.rx.decoder.next_frame() {
                    // Older seqs are late answers to earlier calls; requests are an echoing line.
                    if f.seq != seq {
                        continue;
                    }
                    match f.kind {
                        FrameKind::Busy => deadline = self.frame_deadline(),
                        FrameKind::Response => {
                            let resp = Response::decode(f.msg_type, &f.payload)
                                .map_err(|e| LinkError::Protocol(format!("{command}: bad response: {e}")))?;
                            return self.accept(req, resp);
                        }
                        FrameKind::Request => {}
                    }
                }
                let now = Instant::now();
                if let Some(overall) = self.deadline
                    && now >= overall
                {
                    return Err(LinkError::Deadline { command });
                }
                if now >= deadline {
                    break;
                }
                let until = self.deadline.map_or(deadline, |overall| overall.min(deadline));
                if let RxEvent::Closed = self.rx.read(&mut self.transport, until.saturating_duration_since(now))? {
                    return Err(LinkError::Closed);
                }
            }
        }
        Err(LinkError::Timeout { command, attempts: self.last_attempts })
    }

    fn frame_deadline(&self) -> Instant {
        // A day is "forever" here and keeps `Instant + Duration` from overflowing.
        Instant::now() + self.config.frame_timeout.min(Duration::from_secs(86_400))
    }

    fn accept(&mut self, req: &Request, resp: Response) -> Result<Response, LinkError> {
        let command = req.name();
        if !req.accepts(&resp) {
            return Err(LinkError::Protocol(format!("{command}: unexpected {} response", resp.name())));
        }
        match (req, resp) {
            (_, Response::Error { code, detail }) => Err(LinkError::Device { command, code, detail }),
            (Request::Hello { max_version }, Response::Hello(info)) => {
                let v = info.protocol_version;
                if v < MIN_PROTOCOL_VERSION || v > *max_version {
                    return Err(LinkError::Protocol(format!(
                        "HELLO: device chose protocol version {v}, host speaks {MIN_PROTOCOL_VERSION}..={max_version}"
                    )));
                }
                self.version = Some(v);
                Ok(Response::Hello(info))
            }
            (_, resp) => Ok(resp),
        }
    }

    /// Frames sent by the last [`HostLink::call`] (1 = no retransmission).
    pub fn last_attempts(&self) -> u32 {
        self.last_attempts
    }

    /// Protocol version agreed by the last successful HELLO.
    pub fn negotiated_version(&self) -> Option<u8> {
        self.version
    }

    /// Sets (or with `None` clears) a point in time after which calls fail with
    /// [`LinkError::Deadline`] instead of waiting or retransmitting further; bounds a whole
    /// provisioning run, since BUSY alone can keep a call waiting indefinitely.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// The timing in use.
    pub fn config(&self) -> LinkConfig {
        self.config
    }

    /// Changes the timing for the following calls.
    pub fn set_config(&mut self, config: LinkConfig) {
        self.config = config;
    }

    /// Gives the transport back.
    pub fn into_inner(self) -> T {
        self.transport
    }
}

struct Exchange {
    seq: u16,
    msg_type: u8,
    payload: Vec<u8>,
    response: Option<Vec<u8>>,
}

/// Device (terminal) end: yields each new request once, answers repeats from a cache.
///
/// The link itself answers, without bothering the caller: unknown message types
/// (UNKNOWN_COMMAND), malformed payloads (MALFORMED_REQUEST) and any command before a
/// successful HELLO (WRONG_STATE). A repeat of the last request (same seq, type and payload) is
/// answered with the cached response bytes, or ignored if the caller has not responded yet.
pub struct DeviceLink<T: Transport> {
    transport: T,
    rx: Rx,
    last: Option<Exchange>,
    in_session: bool,
    replayed: u64,
}

impl<T: Transport> DeviceLink<T> {
    /// Wraps a transport; no session is open until a HELLO is answered with HELLO.
    pub fn new(transport: T) -> Self {
        DeviceLink { transport, rx: Rx::new(), last: None, in_session: false, replayed: 0 }
    }

    /// Blocks until a new request arrives; `Ok(None)` when the peer closed the link.
    ///
    /// Respond to it with [`DeviceLink::respond`] (or [`DeviceLink::run_busy`] first for slow
    /// work) before calling this again.
    pub fn next_request(&mut self) -> Result<Option<(u16, Request)>, LinkError> {
        match self.next_request_inner() {
            Err(LinkError::Closed) => Ok(None),
            other => other,
        }
    }

    fn next_request_inner(&mut self) -> Result<Option<(u16, Request)>, LinkError> {
        loop {
            while let Some(f) = self.rx.decoder.next_frame() {
                if f.kind != FrameKind::Request {
                    continue;
                }
                if let Some(last) = &self.last
                    && last.seq == f.seq
                    && last.msg_type == f.msg_type
                    && last.payload == f.payload
                {
                    if let Some(bytes) = last.response.clone() {
                        self.replayed += 1;
                        write_frame(&mut self.transport, &bytes)?;
                    }
                    continue;
                }
                let seq = f.seq;
                let decoded = Request::decode(f.msg_type, &f.payload);
                self.last = Some(Exchange { seq, msg_type: f.msg_type, payload: f.payload, response: None });
                let req = match decoded {
                    Ok(req) => req,
                    Err(MessageError::UnknownType(t)) => {
                        let detail = format!("message type 0x{t:02X}");
                        self.respond(seq, &Response::error(ErrorCode::UnknownCommand, detail))?;
                        continue;
                    }
                    Err(e) => {
                        self.respond(seq, &Response::error(ErrorCode::MalformedRequest, e.to_string()))?;
                        continue;
                    }
                };
                if let Request::Hello { .. } = req {
                    self.in_session = false;
                } else if !self.in_session {
                    let detail = format!("{} before HELLO: HELLO must be the first command", req.name());
                    self.respond(seq, &Response::error(ErrorCode::WrongState, detail))?;
                    continue;
                }
                return Ok(Some((seq, req)));
            }
            if let RxEvent::Closed = self.rx.read(&mut self.transport, POLL_INTERVAL)? {
                return Err(LinkError::Closed);
            }
        }
    }

    /// Sends the response for `seq` and caches it for replay.
    pub fn respond(&mut self, seq: u16, resp: &Response) -> Result<(), LinkError> {
        let bytes = self.cache(seq, resp)?;
        write_frame(&mut self.transport, &bytes)
    }

    /// Fault injection: caches the correct response but sends it with one bit flipped after the
    /// CRC was computed (a payload bit, or a CRC bit if the payload is empty).
    pub fn respond_corrupted(&mut self, seq: u16, resp: &Response) -> Result<(), LinkError> {
        let mut bytes = self.cache(seq, resp)?;
        let at = if bytes.len() > frame::HEADER_LEN + frame::TRAILER_LEN {
            frame::HEADER_LEN
        } else {
            bytes.len().saturating_sub(1)
        };
        if let Some(b) = bytes.get_mut(at) {
            *b ^= 0x01;
        }
        write_frame(&mut self.transport, &bytes)
    }

    /// Fault injection: caches the response but sends nothing, as if it were lost on the wire.
    pub fn respond_dropped(&mut self, seq: u16, resp: &Response) -> Result<(), LinkError> {
        self.cache(seq, resp).map(drop)
    }

    fn cache(&mut self, seq: u16, resp: &Response) -> Result<Vec<u8>, LinkError> {
        let bytes = encode_response(seq, resp)?;
        if let Some(last) = self.last.as_mut()
            && last.seq == seq
        {
            last.response = Some(bytes.clone());
            if last.msg_type == msg_type::HELLO && matches!(resp, Response::Hello(_)) {
                self.in_session = true;
            }
        }
        Ok(bytes)
    }

    /// Sends one BUSY for `seq`: "still working, keep waiting".
    pub fn busy(&mut self, seq: u16) -> Result<(), LinkError> {
        let ty = self.last.as_ref().filter(|l| l.seq == seq).map_or(0, |l| l.msg_type);
        let bytes = frame::encode(FrameKind::Busy, seq, ty, &[]).map_err(|e| LinkError::Protocol(e.to_string()))?;
        write_frame(&mut self.transport, &bytes)
    }

    /// Runs `work` on a scoped thread while this thread sends BUSY for `seq` at once and then
    /// every [`BUSY_INTERVAL`]; returns what `work` returned. A failed BUSY write only stops the
    /// keep-alives (the following `respond` reports the broken link). A panic in `work` is resumed.
    pub fn run_busy<R: Send>(&mut self, seq: u16, work: impl FnOnce() -> R + Send) -> R {
        std::thread::scope(|s| {
            let (done_tx, done_rx) = mpsc::channel::<()>();
            let worker = s.spawn(move || {
                let r = work();
                let _ = done_tx.send(());
                r
            });
            let mut alive = self.busy(seq).is_ok();
            while let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(BUSY_INTERVAL) {
                if alive {
                    alive = self.busy(seq).is_ok();
                }
            }
            match worker.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Whether a HELLO has been answered with HELLO on this link.
    pub fn in_session(&self) -> bool {
        self.in_session
    }

    /// How many repeated requests were answered from the cache.
    pub fn replayed(&self) -> u64 {
        self.replayed
    }

    /// Gives the transport back.
    pub fn into_inner(self) -> T {
        self.transport
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;

    #[test]
    fn seq_wraps_around_and_each_call_uses_a_new_one() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (dev, _) = listener.accept().unwrap();
        let device = std::thread::spawn(move || {
            let mut link = DeviceLink::new(dev);
            let mut seqs = vec![];
            while let Some((seq, req)) = link.next_request().unwrap() {
                seqs.push(seq);
                let resp = match req {
                    Request::Hello { .. } => Response::Hello(crate::DeviceInfo {
                        protocol_version: 1,
                        serial: "S".into(),
                        class: 1,
                        manufacturer: String::new(),
                        model: String::new(),
                        firmware: String::new(),
                        state: crate::SeState::Blank,
                    }),
                    _ => Response::Ok,
                };
                link.respond(seq, &resp).unwrap();
            }
            seqs
        });
        let mut host = HostLink::new(host, LinkConfig::default());
        host.next_seq = 0xFFFE;
        host.call(&Request::Hello { max_version: 1 }).unwrap();
        host.call(&Request::Lock).unwrap();
        host.call(&Request::Lock).unwrap();
        drop(host);
        assert_eq!(device.join().unwrap(), [0xFFFE, 0xFFFF, 0x0000]);
    }
}
