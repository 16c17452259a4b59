//! Messages: requests, responses, their payload codecs, SE states, error codes.
//!
//! Integers are big-endian. A string is `len u8` followed by `len` bytes of UTF-8. A trailing
//! "rest" field takes every remaining byte of the payload. Decoding is strict: a payload that is
//! too short, too long, or carries an out-of-range value is refused.

use std::fmt;

use crate::{MAX_ERROR_DETAIL, PROTOCOL_VERSION};

/// Message type bytes (frame offset 6). Requests are 0x01.., responses 0x81.., ERROR is 0xFF.
pub mod msg_type {
    /// HELLO request: `max_version u8`.
    pub const HELLO: u8 = 0x01;
    /// GEN_KEY request: empty.
    pub const GEN_KEY: u8 = 0x02;
    /// GET_CSR request: `common_name str8, serial_number str8`.
    pub const GET_CSR: u8 = 0x03;
    /// PUT_ROOT request: `der rest`.
    pub const PUT_ROOT: u8 = 0x04;
    /// PUT_CHAIN request: `total_len u32, offset u32, chunk rest`.
    pub const PUT_CHAIN: u8 = 0x05;
    /// COMMIT request: empty.
    pub const COMMIT: u8 = 0x06;
    /// READ_CERT request: `offset u32`.
    pub const READ_CERT: u8 = 0x07;
    /// CHALLENGE request: `nonce [32]`.
    pub const CHALLENGE: u8 = 0x08;
    /// LOCK request: empty.
    pub const LOCK: u8 = 0x09;
    /// STATUS request: empty.
    pub const STATUS: u8 = 0x0A;
    /// ACTIVATE request: `statement rest` (an encoded activation statement).
    pub const ACTIVATE: u8 = 0x0B;

    /// HELLO response.
    pub const R_HELLO: u8 = 0x81;
    /// KEY response: `spki_der rest`.
    pub const R_KEY: u8 = 0x82;
    /// CSR response: `der rest`.
    pub const R_CSR: u8 = 0x83;
    /// OK response: empty.
    pub const R_OK: u8 = 0x84;
    /// CHAIN_PROGRESS response: `received u32`.
    pub const R_CHAIN_PROGRESS: u8 = 0x85;
    /// COMMITTED response: empty.
    pub const R_COMMITTED: u8 = 0x86;
    /// CERT_CHUNK response: `total_len u32, offset u32, chunk rest`.
    pub const R_CERT_CHUNK: u8 = 0x87;
    /// SIGNATURE response: `der rest`.
    pub const R_SIGNATURE: u8 = 0x88;
    /// STATUS response: `state u8, has_root u8, chain_received u32, chain_total u32`.
    pub const R_STATUS: u8 = 0x89;
    /// ERROR response: `code u16, detail str8`.
    pub const R_ERROR: u8 = 0xFF;
}

/// Why a payload could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The message type byte is not one this protocol version defines.
    #[error("unknown message type 0x{0:02X}")]
    UnknownType(u8),
    /// The payload ended before a field was complete.
    #[error("{message}: payload truncated")]
    Truncated {
        /// Message name.
        message: &'static str,
    },
    /// Bytes left over after the last field.
    #[error("{message}: {extra} unexpected trailing bytes")]
    TrailingBytes {
        /// Message name.
        message: &'static str,
        /// How many.
        extra: usize,
    },
    /// A field holds a value the protocol does not allow.
    #[error("{message}: invalid {field}")]
    InvalidField {
        /// Message name.
        message: &'static str,
        /// Field name.
        field: &'static str,
    },
    /// A string field is longer than 255 bytes.
    #[error("{message}: {field} is {len} bytes, at most 255 fit")]
    StringTooLong {
        /// Message name.
        message: &'static str,
        /// Field name.
        field: &'static str,
        /// Its length.
        len: usize,
    },
}

/// Secure-element life-cycle state (PROTOCOL.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeState {
    /// Factory fresh: no key, no chain.
    Blank,
    /// A key pair exists; the chain is not (fully) uploaded.
    KeyGenerated,
    /// The chain is fully uploaded but not committed.
    ChainPending,
    /// The chain is verified and committed.
    Provisioned,
    /// Provisioned and write-protected for good.
    Locked,
    /// Tamper detected; the SE refuses everything but HELLO and STATUS.
    Tampered,
}

impl SeState {
    /// All states, in wire order.
    pub const ALL: [SeState; 6] = [
        SeState::Blank,
        SeState::KeyGenerated,
        SeState::ChainPending,
        SeState::Provisioned,
        SeState::Locked,
        SeState::Tampered,
    ];

    /// The wire byte.
    pub fn to_byte(self) -> u8 {
        match self {
            SeState::Blank => 0,
            SeState::KeyGenerated => 1,
            SeState::ChainPending => 2,
            SeState::Provisioned => 3,
            SeState::Locked => 4,
            SeState::Tampered => 5,
        }
    }

    /// Parses the wire byte; `None` if out of range.
    pub fn from_byte(b: u8) -> Option<Self> {
        Self::ALL.get(usize::from(b)).copied()
    }

    /// SCREAMING_SNAKE name as used in PROTOCOL.md.
    pub fn name(self) -> &'static str {
        match self {
            SeState::Blank => "BLANK",
            SeState::KeyGenerated => "KEY_GENERATED",
            SeState::ChainPending => "CHAIN_PENDING",
            SeState::Provisioned => "PROVISIONED",
            SeState::Locked => "LOCKED",
            SeState::Tampered => "TAMPERED",
        }
    }
}

impl fmt::Display for SeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

macro_rules! error_codes {
    ($($variant:ident = $value:literal, $name:literal, $text:literal;)*) => {
        /// Stable error codes carried by an ERROR response (PROTOCOL.md §9).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $(
                #[doc = $text]
                $variant,
            )*
            /// A code this implementation does not know (a newer device); kept verbatim.
            Unknown(u16),
        }

        impl ErrorCode {
            /// Every known code, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The wire value.
            pub fn code(self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $value,)*
                    ErrorCode::Unknown(v) => v,
                }
            }

            /// Parses a wire value; unknown values become [`ErrorCode::Unknown`].
            pub fn from_code(v: u16) -> Self {
                match v {
                    $($value => ErrorCode::$variant,)*
                    other => ErrorCode::Unknown(other),
                }
            }

            /// SCREAMING_SNAKE name, as in PROTOCOL.md.
            pub fn name(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $name,)*
                    ErrorCode::Unknown(_) => "UNKNOWN_ERROR",
                }
            }

            /// One-line meaning.
            pub fn description(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $text,)*
                    ErrorCode::Unknown(_) => "error code not defined by this protocol version",
                }
            }
        }
    };
}

error_codes! {
    MalformedRequest = 0x0001, "MALFORMED_REQUEST", "The request payload is malformed or a field is out of range.";
    UnsupportedVersion = 0x0002, "UNSUPPORTED_VERSION", "No protocol version is supported by both sides.";
    UnknownCommand = 0x0003, "UNKNOWN_COMMAND", "The message type is not a command this device knows.";
    WrongState = 0x0004, "WRONG_STATE", "The command is not allowed now (no HELLO yet, or wrong SE state).";
    KeyExists = 0x0010, "KEY_EXISTS", "The secure element already holds a key pair.";
    NoKey = 0x0011, "NO_KEY", "The secure element has no key pair yet.";
    RootAlreadySet = 0x0020, "ROOT_ALREADY_SET", "A different root certificate is already stored (write-once).";
    RootMismatch = 0x0021, "ROOT_MISMATCH", "The root certificate is not a self-signed CA certificate.";
    NoRoot = 0x0022, "NO_ROOT", "No root certificate is stored.";
    ChainTooLarge = 0x0030, "CHAIN_TOO_LARGE", "The announced chain exceeds 16384 bytes.";
    ChainOutOfOrder = 0x0031, "CHAIN_OUT_OF_ORDER", "The chunk offset or total length does not continue the upload.";
    ChainIncomplete = 0x0032, "CHAIN_INCOMPLETE", "The chain has not been fully uploaded.";
    ChainInvalid = 0x0033, "CHAIN_INVALID", "The chain does not parse or does not verify up to the stored root.";
    NotForThisDevice = 0x0034, "NOT_FOR_THIS_DEVICE", "The certificate names another terminal.";
    KeyMismatch = 0x0035, "KEY_MISMATCH", "The certificate's public key is not the secure element's key.";
    NotProvisioned = 0x0040, "NOT_PROVISIONED", "No certificate has been committed yet.";
    Locked = 0x0041, "LOCKED", "The secure element is locked; the command would modify it.";
    Tampered = 0x0042, "TAMPERED", "The secure element detected tampering and refuses service.";
    Internal = 0x00FF, "INTERNAL", "Internal device failure.";
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:04X}): {}", self.name(), self.code(), self.description())
    }
}

/// Device identity and state, the answer to HELLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Negotiated protocol version: min(host max, device max).
    pub protocol_version: u8,
    /// Terminal serial number (goes into the certificate subject serialNumber).
    pub serial: String,
    /// Medical device class 1, 2 or 3.
    pub class: u8,
    /// Manufacturer code.
    pub manufacturer: String,
    /// Model name.
    pub model: String,
    /// Firmware version string.
    pub firmware: String,
    /// Secure-element state.
    pub state: SeState,
}

/// Secure-element state and upload progress, the answer to STATUS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceStatus {
    /// Secure-element state.
    pub state: SeState,
    /// Whether a root certificate is stored.
    pub has_root: bool,
    /// Chain bytes received so far (the committed length once provisioned).
    pub chain_received: u32,
    /// Announced chain length (0 if no upload started).
    pub chain_total: u32,
}

/// A host → device command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Opens a session and negotiates the version; must be the first command.
    Hello {
        /// Highest protocol version the host speaks.
        max_version: u8,
    },
    /// Generate the SE key pair (Blank only).
    GenKey,
    /// Make a PKCS#10 request for the SE key with this subject.
    GetCsr {
        /// Subject commonName.
        common_name: String,
        /// Subject serialNumber (the terminal serial).
        serial_number: String,
    },
    /// Store the root CA certificate (write-once).
    PutRoot {
        /// Root certificate DER, one frame.
        der: Vec<u8>,
    },
    /// One chunk of the certificate chain (leaf DER then issuing CA DER, concatenated).
    PutChain {
        /// Length of the whole chain, ≤ [`crate::MAX_CHAIN_LEN`]; same in every chunk.
        total_len: u32,
        /// Where this chunk starts; must equal the bytes received so far (0 restarts).
        offset: u32,
        /// The bytes, at most [`crate::MAX_CHAIN_CHUNK`].
        chunk: Vec<u8>,
    },
    /// Verify the uploaded chain and make it the SE's certificate.
    Commit,
    /// Read back the committed chain from `offset`.
    ReadCert {
        /// Byte offset into the committed chain.
        offset: u32,
    },
    /// Sign the challenge message for `nonce` with the SE key (see [`challenge_message`]).
    Challenge {
        /// Host-chosen random nonce.
        nonce: [u8; 32],
    },
    /// Make the SE read-only for good.
    Lock,
    /// Report state and upload progress.
    Status,
    /// Sign an activation statement (proof of presence) with the SE key; the SE refuses one that
    /// names another terminal or certificate. Answered with SIGNATURE.
    Activate {
        /// The encoded statement (opaque here; see PROTOCOL.md §6.10).
        statement: Vec<u8>,
    },
}

/// A device → host answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Answer to HELLO.
    Hello(DeviceInfo),
    /// Answer to GEN_KEY: the new public key.
    Key {
        /// SubjectPublicKeyInfo DER (id-ecPublicKey, SM2 curve).
        spki_der: Vec<u8>,
    },
    /// Answer to GET_CSR.
    Csr {
        /// PKCS#10 CertificationRequest DER.
        der: Vec<u8>,
    },
    /// Answer to PUT_ROOT and LOCK.
    Ok,
    /// Answer to PUT_CHAIN.
    ChainProgress {
        /// Chain bytes received so far.
        received: u32,
    },
    /// Answer to COMMIT.
    Committed,
    /// Answer to READ_CERT.
    CertChunk {
        /// Length of the committed chain.
        total_len: u32,
        /// Offset of `chunk`.
        offset: u32,
        /// Up to [`crate::MAX_CHAIN_CHUNK`] bytes; empty at the end.
        chunk: Vec<u8>,
    },
    /// Answer to CHALLENGE.
    Signature {
        /// DER `SEQUENCE { r INTEGER, s INTEGER }` SM2 signature.
        der: Vec<u8>,
    },
    /// Answer to STATUS.
    Status(DeviceStatus),
    /// The command was refused.
    Error {
        /// Why.
        code: ErrorCode,
        /// Human-readable detail, at most [`MAX_ERROR_DETAIL`] bytes.
        detail: String,
    },
}

/// ASCII prefix of the message signed for CHALLENGE, so the SE never signs a bare host-chosen value.
pub const CHALLENGE_CONTEXT: &[u8] = b"TERMINAL-SE-CHALLENGE/1";

/// The exact message the SE signs (SM2 with SM3, distid "1234567812345678") for a CHALLENGE.
pub fn challenge_message(nonce: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHALLENGE_CONTEXT.len() + nonce.len());
    m.extend_from_slice(CHALLENGE_CONTEXT);
    m.extend_from_slice(nonce);
    m
}

/// Version the device answers HELLO with: min(host max, [`PROTOCOL_VERSION`]), or
/// [`ErrorCode::UnsupportedVersion`] when that is below [`crate::MIN_PROTOCOL_VERSION`].
pub fn negotiate_version(host_max: u8) -> Result<u8, ErrorCode> {
    let v = host_max.min(PROTOCOL_VERSION);
    if v < crate::MIN_PROTOCOL_VERSION { Err(ErrorCode::UnsupportedVersion) } else { Ok(v) }
}

impl Request {
    /// Command name as in PROTOCOL.md: "HELLO", "GEN_KEY", ...
    pub fn name(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "HELLO",
            Request::GenKey => "GEN_KEY",
            Request::GetCsr { .. } => "GET_CSR",
            Request::PutRoot { .. } => "PUT_ROOT",
            Request::PutChain { .. } => "PUT_CHAIN",
            Request::Commit => "COMMIT",
            Request::ReadCert { .. } => "READ_CERT",
            Request::Challenge { .. } => "CHALLENGE",
            Request::Lock => "LOCK",
            Request::Status => "STATUS",
            Request::Activate { .. } => "ACTIVATE",
        }
    }

    /// Message type byte.
    pub fn msg_type(&self) -> u8 {
        match self {
            Request::Hello { .. } => msg_type::HELLO,
            Request::GenKey => msg_type::GEN_KEY,
            Request::GetCsr { .. } => msg_type::GET_CSR,
            Request::PutRoot { .. } => msg_type::PUT_ROOT,
            Request::PutChain { .. } => msg_type::PUT_CHAIN,
            Request::Commit => msg_type::COMMIT,
            Request::ReadCert { .. } => msg_type::READ_CERT,
            Request::Challenge { .. } => msg_type::CHALLENGE,
            Request::Lock => msg_type::LOCK,
            Request::Status => msg_type::STATUS,
            Request::Activate { .. } => msg_type::ACTIVATE,
        }
    }

    /// Command name for a message type byte, if it is a request type.
    pub fn name_of(msg_type: u8) -> Option<&'static str> {
        Some(match msg_type {
            msg_type::HELLO => "HELLO",
            msg_type::GEN_KEY => "GEN_KEY",
            msg_type::GET_CSR => "GET_CSR",
            msg_type::PUT_ROOT => "PUT_ROOT",
            msg_type::PUT_CHAIN => "PUT_CHAIN",
            msg_type::COMMIT => "COMMIT",
            msg_type::READ_CERT => "READ_CERT",
            msg_type::CHALLENGE => "CHALLENGE",
            msg_type::LOCK => "LOCK",
            msg_type::STATUS => "STATUS",
            msg_type::ACTIVATE => "ACTIVATE",
            _ => return None,
        })
    }

    /// The payload bytes. Fails only for strings over 255 bytes; frame size is checked by
    /// [`crate::frame::encode`].
    pub fn encode_payload(&self) -> Result<Vec<u8>, MessageError> {
        let name = self.name();
        let mut w = Vec::new();
        match self {
            Request::Hello { max_version } => w.push(*max_version),
            Request::GenKey | Request::Commit | Request::Lock | Request::Status => {}
            Request::GetCsr { common_name, serial_number } => {
                put_str(&mut w, name, "common_name", common_name)?;
                put_str(&mut w, name, "serial_number", serial_number)?;
            }
            Request::PutRoot { der } => w.extend_from_slice(der),
            Request::PutChain { total_len, offset, chunk } => {
                w.extend_from_slice(&total_len.to_be_bytes());
                w.extend_from_slice(&offset.to_be_bytes());
                w.extend_from_slice(chunk);
            }
            Request::ReadCert { offset } => w.extend_from_slice(&offset.to_be_bytes()),
            Request::Challenge { nonce } => w.extend_from_slice(nonce),
            Request::Activate { statement } => w.extend_from_slice(statement),
        }
        Ok(w)
    }

    /// Parses a request payload. Refuses what is malformed whatever the SE state: empty GET_CSR
    /// strings, an empty root, and a PUT_CHAIN with `total_len` 0, an empty chunk or a chunk
    /// reaching past `total_len`. State-dependent checks (offsets, sizes, roots) are the device's.
    pub fn decode(msg_type: u8, payload: &[u8]) -> Result<Request, MessageError> {
        let name = Request::name_of(msg_type).ok_or(MessageError::UnknownType(msg_type))?;
        let mut r = Reader { buf: payload, message: name };
        let req = match msg_type {
            msg_type::HELLO => Request::Hello { max_version: r.u8()? },
            msg_type::GEN_KEY => Request::GenKey,
            msg_type::GET_CSR => {
                Request::GetCsr { common_name: r.str("common_name")?, serial_number: r.str("serial_number")? }
            }
            msg_type::PUT_ROOT => Request::PutRoot { der: r.rest() },
            msg_type::PUT_CHAIN => Request::PutChain { total_len: r.u32()?, offset: r.u32()?, chunk: r.rest() },
            msg_type::COMMIT => Request::Commit,
            msg_type::READ_CERT => Request::ReadCert { offset: r.u32()? },
            msg_type::CHALLENGE => Request::Challenge { nonce: r.array()? },
            msg_type::LOCK => Request::Lock,
            msg_type::STATUS => Request::Status,
            msg_type::ACTIVATE => Request::Activate { statement: r.rest() },
            other => return Err(MessageError::UnknownType(other)),
        };
        r.finish()?;
        let invalid = |field| Err(MessageError::InvalidField { message: name, field });
        match &req {
            Request::GetCsr { common_name, .. } if common_name.is_empty() => invalid("common_name"),
            Request::GetCsr { serial_number, .. } if serial_number.is_empty() => invalid("serial_number"),
            Request::PutRoot { der } if der.is_empty() => invalid("der"),
            Request::Activate { statement } if statement.is_empty() => invalid("statement"),
            Request::PutChain { total_len: 0, .. } => invalid("total_len"),
            Request::PutChain { chunk, .. } if chunk.is_empty() => invalid("chunk"),
            Request::PutChain { total_len, offset, chunk }
                if u64::from(*offset) + chunk.len() as u64 > u64::from(*total_len) =>
            {
                invalid("offset")
            }
            _ => Ok(req),
        }
    }

    /// Whether `resp` is a well-typed answer to this request (its own response type, or ERROR).
    pub fn accepts(&self, resp: &Response) -> bool {
        matches!(
            (self, resp),
            (_, Response::Error { .. })
                | (Request::Hello { .. }, Response::Hello(_))
                | (Request::GenKey, Response::Key { .. })
                | (Request::GetCsr { .. }, Response::Csr { .. })
                | (Request::PutRoot { .. } | Request::Lock, Response::Ok)
                | (Request::PutChain { .. }, Response::ChainProgress { .. })
                | (Request::Commit, Response::Committed)
                | (Request::ReadCert { .. }, Response::CertChunk { .. })
                | (Request::Challenge { .. } | Request::Activate { .. }, Response::Signature { .. })
                | (Request::Status, Response::Status(_))
        )
    }

    /// The state-machine table of PROTOCOL.md §7: is this command allowed in `state`, and if not,
    /// which error code the device answers with. Checks the state only; content checks (write-once
    /// root, chunk offsets, chain verification) are the device's.
    pub fn check_state(&self, state: SeState, has_root: bool) -> Result<(), ErrorCode> {
        use SeState as S;
        match (self, state) {
            (Request::Hello { .. } | Request::Status, _) => Ok(()),
            (_, S::Tampered) => Err(ErrorCode::Tampered),
            (
                Request::ReadCert { .. } | Request::Challenge { .. } | Request::Activate { .. },
                S::Provisioned | S::Locked,
            ) => Ok(()),
            (_, S::Locked) => Err(ErrorCode::Locked),
            (Request::GenKey, S::Blank) => Ok(()),
            (Request::GenKey, _) => Err(ErrorCode::KeyExists),
            (Request::PutRoot { .. }, _) => Ok(()),
            (Request::GetCsr { .. } | Request::PutChain { .. } | Request::Commit, S::Blank) => Err(ErrorCode::NoKey),
            (Request::GetCsr { .. } | Request::PutChain { .. } | Request::Commit, S::Provisioned) => {
                Err(ErrorCode::WrongState)
            }
            (Request::GetCsr { .. } | Request::PutChain { .. }, _) => Ok(()),
            (Request::Commit, _) if !has_root => Err(ErrorCode::NoRoot),
            (Request::Commit, S::ChainPending) => Ok(()),
            (Request::Commit, _) => Err(ErrorCode::ChainIncomplete),
            (Request::Lock, S::Provisioned) => Ok(()),
            (Request::ReadCert { .. } | Request::Challenge { .. } | Request::Activate { .. } | Request::Lock, _) => {
                Err(ErrorCode::NotProvisioned)
            }
        }
    }
}

impl Response {
    /// Response name as in PROTOCOL.md: "HELLO", "KEY", ..., "ERROR".
    pub fn name(&self) -> &'static str {
        match self {
            Response::Hello(_) => "HELLO",
            Response::Key { .. } => "KEY",
            Response::Csr { .. } => "CSR",
            Response::Ok => "OK",
            Response::ChainProgress { .. } => "CHAIN_PROGRESS",
            Response::Committed => "COMMITTED",
            Response::CertChunk { .. } => "CERT_CHUNK",
            Response::Signature { .. } => "SIGNATURE",
            Response::Status(_) => "STATUS",
            Response::Error { .. } => "ERROR",
        }
    }

    /// Message type byte.
    pub fn msg_type(&self) -> u8 {
        match self {
            Response::Hello(_) => msg_type::R_HELLO,
            Response::Key { .. } => msg_type::R_KEY,
            Response::Csr { .. } => msg_type::R_CSR,
            Response::Ok => msg_type::R_OK,
            Response::ChainProgress { .. } => msg_type::R_CHAIN_PROGRESS,
            Response::Committed => msg_type::R_COMMITTED,
            Response::CertChunk { .. } => msg_type::R_CERT_CHUNK,
            Response::Signature { .. } => msg_type::R_SIGNATURE,
            Response::Status(_) => msg_type::R_STATUS,
            Response::Error { .. } => msg_type::R_ERROR,
        }
    }

    /// Shorthand for an ERROR response.
    pub fn error(code: ErrorCode, detail: impl Into<String>) -> Response {
        Response::Error { code, detail: detail.into() }
    }

    /// The payload bytes. An ERROR detail over [`MAX_ERROR_DETAIL`] bytes is cut at a character
    /// boundary; other strings over 255 bytes fail.
    pub fn encode_payload(&self) -> Result<Vec<u8>, MessageError> {
        let name = self.name();
        let mut w = Vec::new();
        match self {
            Response::Hello(i) => {
                w.push(i.protocol_version);
                put_str(&mut w, name, "serial", &i.serial)?;
                w.push(i.class);
                put_str(&mut w, name, "manufacturer", &i.manufacturer)?;
                put_str(&mut w, name, "model", &i.model)?;
                put_str(&mut w, name, "firmware", &i.firmware)?;
                w.push(i.state.to_byte());
            }
            Response::Key { spki_der: der } | Response::Csr { der } | Response::Signature { der } => {
                w.extend_from_slice(der)
            }
            Response::Ok | Response::Committed => {}
            Response::ChainProgress { received } => w.extend_from_slice(&received.to_be_bytes()),
            Response::CertChunk { total_len, offset, chunk } => {
                w.extend_from_slice(&total_len.to_be_bytes());
                w.extend_from_slice(&offset.to_be_bytes());
                w.extend_from_slice(chunk);
            }
            Response::Status(s) => {
                w.push(s.state.to_byte());
                w.push(u8::from(s.has_root));
                w.extend_from_slice(&s.chain_received.to_be_bytes());
                w.extend_from_slice(&s.chain_total.to_be_bytes());
            }
            Response::Error { code, detail } => {
                w.extend_from_slice(&code.code().to_be_bytes());
                put_str(&mut w, name, "detail", truncate_utf8(detail, MAX_ERROR_DETAIL))?;
            }
        }
        Ok(w)
    }

    /// Parses a response payload.
    pub fn decode(msg_type: u8, payload: &[u8]) -> Result<Response, MessageError> {
        let name = match msg_type {
            msg_type::R_HELLO => "HELLO",
            msg_type::R_KEY => "KEY",
            msg_type::R_CSR => "CSR",
            msg_type::R_OK => "OK",
            msg_type::R_CHAIN_PROGRESS => "CHAIN_PROGRESS",
            msg_type::R_COMMITTED => "COMMITTED",
            msg_type::R_CERT_CHUNK => "CERT_CHUNK",
            msg_type::R_SIGNATURE => "SIGNATURE",
            msg_type::R_STATUS => "STATUS",
            msg_type::R_ERROR => "ERROR",
            other => return Err(MessageError::UnknownType(other)),
        };
        let mut r = Reader { buf: payload, message: name };
        let resp = match msg_type {
            msg_type::R_HELLO => {
                let protocol_version = r.u8()?;
                let serial = r.str("serial")?;
                let class = r.u8()?;
                if !(1..=3).contains(&class) {
                    return Err(MessageError::InvalidField { message: name, field: "class" });
                }
                let manufacturer = r.str("manufacturer")?;
                let model = r.str("model")?;
                let firmware = r.str("firmware")?;
                let state = r.state()?;
                Response::Hello(DeviceInfo { protocol_version, serial, class, manufacturer, model, firmware, state })
            }
            msg_type::R_KEY => Response::Key { spki_der: r.rest() },
            msg_type::R_CSR => Response::Csr { der: r.rest() },
            msg_type::R_OK => Response::Ok,
            msg_type::R_CHAIN_PROGRESS => Response::ChainProgress { received: r.u32()? },
            msg_type::R_COMMITTED => Response::Committed,
            msg_type::R_CERT_CHUNK => Response::CertChunk { total_len: r.u32()?, offset: r.u32()?, chunk: r.rest() },
            msg_type::R_SIGNATURE => Response::Signature { der: r.rest() },
            msg_type::R_STATUS => {
                let state = r.state()?;
                let has_root = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(MessageError::InvalidField { message: name, field: "has_root" }),
                };
                Response::Status(DeviceStatus { state, has_root, chain_received: r.u32()?, chain_total: r.u32()? })
            }
            msg_type::R_ERROR => Response::Error { code: ErrorCode::from_code(r.u16()?), detail: r.str("detail")? },
            other => return Err(MessageError::UnknownType(other)),
        };
        r.finish()?;
        Ok(resp)
    }
}

fn put_str(w: &mut Vec<u8>, message: &'static str, field: &'static str, s: &str) -> Result<(), MessageError> {
    let len = u8::try_from(s.len()).map_err(|_| MessageError::StringTooLong { message, field, len: s.len() })?;
    w.push(len);
    w.extend_from_slice(s.as_bytes());
    Ok(())
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

struct Reader<'a> {
    buf: &'a [u8],
    message: &'static str,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], MessageError> {
        if self.buf.len() < n {
            return Err(MessageError::Truncated { message: self.message });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], MessageError> {
        let message = self.message;
        self.take(N)?.try_into().map_err(|_| MessageError::Truncated { message })
    }

    fn u8(&mut self) -> Result<u8, MessageError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    fn u16(&mut self) -> Result<u16, MessageError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, MessageError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn str(&mut self, field: &'static str) -> Result<String, MessageError> {
        let len = usize::from(self.u8()?);
        let message = self.message;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| MessageError::InvalidField { message, field })
    }

    fn state(&mut self) -> Result<SeState, MessageError> {
        let message = self.message;
        SeState::from_byte(self.u8()?).ok_or(MessageError::InvalidField { message, field: "state" })
    }

    fn rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf).to_vec()
    }

    fn finish(self) -> Result<(), MessageError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(MessageError::TrailingBytes { message: self.message, extra: self.buf.len() })
        }
    }
}
