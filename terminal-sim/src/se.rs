//! The emulated secure element: its state machine (PROTOCOL.md §7), its key (made inside, never
//! exported), and its flash — one JSON file in the state directory, replaced atomically so that a
//! power cut leaves the old state or the new one, never a mix.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use der::{Decode, Encode};
use device_protocol::{
    DeviceInfo, DeviceStatus, ErrorCode, MAX_CHAIN_CHUNK, MAX_CHAIN_LEN, Request, Response, SeState, challenge_message,
    negotiate_version,
};
use hsm::Signer;
use hsm::backend::memory::SoftwareSm2Key;
use pki::{Certificate, SignerId};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The terminal's identity, fixed at manufacture.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Healthcare-security serial number.
    pub serial: String,
    /// Class 1, 2 or 3 (I, II, III).
    pub class: u8,
    /// Manufacturer code.
    pub manufacturer: String,
    /// Model.
    pub model: String,
    /// Firmware version.
    pub firmware: String,
}

/// What survives power-off (the SE's flash).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Flash {
    identity: Option<Identity>,
    /// PKCS#8 PEM of the SE key (in a real SE this never leaves the chip; here it is the chip).
    key_pem: Option<String>,
    /// The CSR made for the current key, with its subject: asked again, the SE answers the same
    /// bytes, so a station retrying after a crash sends the CA an identical request.
    csr: Option<CachedCsr>,
    root_hex: Option<String>,
    /// The committed chain (leaf, issuing CA), hex DER.
    chain_hex: Option<String>,
    locked: bool,
    tampered: bool,
    /// Signatures made with the SE key, ever (monotonic: heartbeats carry it, so a copy of the
    /// SE running elsewhere shows up as a counter that does not increase).
    #[serde(default)]
    counter: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct CachedCsr {
    common_name: String,
    serial_number: String,
    der_hex: String,
}

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// File system.
    #[error("state directory: {0}")]
    Io(#[from] std::io::Error),
    /// The state file does not parse.
    #[error("state file {0} is damaged: {1}")]
    Damaged(PathBuf, String),
    /// The flags name another terminal than the state holds.
    #[error("the state directory holds terminal {held}, not {asked}")]
    OtherTerminal {
        /// In the state.
        held: String,
        /// On the command line.
        asked: String,
    },
    /// The stored key does not load.
    #[error("the stored SE key does not load: {0}")]
    Key(String),
}

/// A fault the test asked for, at the moment it happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitFault {
    /// Commit normally.
    None,
    /// Refuse the chain (as if it failed verification).
    RejectChain,
    /// Lose power half-way through writing the new state: the process exits.
    PowerCut,
}

/// The secure element.
pub struct SecureElement {
    dir: PathBuf,
    flash: Flash,
    key: Option<SoftwareSm2Key>,
    /// The chain being uploaded (RAM: lost on power-off).
    upload: Vec<u8>,
    upload_total: u32,
}

const STATE_FILE: &str = "se-state.json";

impl SecureElement {
    /// Opens (or creates) the SE whose flash is `dir`, for terminal `identity`.
    pub fn open(dir: &Path, identity: &Identity) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        let mut se = Self::load(dir)?;
        match &se.flash.identity {
            Some(held) if held.serial != identity.serial => {
                return Err(StoreError::OtherTerminal { held: held.serial.clone(), asked: identity.serial.clone() });
            }
            Some(_) => {}
            None => {
                se.flash.identity = Some(identity.clone());
                se.persist()?;
            }
        }
        Ok(se)
    }

    /// Opens an existing state directory as it is (for `export`).
    pub fn load(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(STATE_FILE);
        // A power cut during a write leaves only the temporary file: the old state stands.
        let _ = std::fs::remove_file(dir.join(format!("{STATE_FILE}.tmp")));
        let flash: Flash = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| StoreError::Damaged(path.clone(), e.to_string()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Flash::default(),
            Err(e) => return Err(e.into()),
        };
        let key = match &flash.key_pem {
            Some(pem) => Some(
                SoftwareSm2Key::from_pkcs8_pem(pem, SignerId::default()).map_err(|e| StoreError::Key(e.to_string()))?,
            ),
            None => None,
        };
        Ok(Self { dir: dir.to_owned(), flash, key, upload: Vec::new(), upload_total: 0 })
    }

    /// The terminal's identity, if set.
    pub fn identity(&self) -> Option<&Identity> {
        self.flash.identity.as_ref()
    }

    /// The SE's public key, if it has one.
    pub fn public_key(&self) -> Option<spki::SubjectPublicKeyInfoOwned> {
        self.key.as_ref().map(|k| k.public_key())
    }

    /// The committed chain's certificates (leaf first), if provisioned.
    pub fn certificates(&self) -> Option<Vec<Certificate>> {
        let bytes = hex::decode(self.flash.chain_hex.as_ref()?).ok()?;
        pki::terminal::split_chain(&bytes).ok()
    }

    /// Signatures the SE key has made, ever.
    pub fn counter(&self) -> u64 {
        self.flash.counter
    }

    /// Bytes of the chain uploaded and not yet committed.
    pub fn pending_chain_len(&self) -> usize {
        self.upload.len()
    }

    /// The life-cycle state.
    pub fn state(&self) -> SeState {
        if self.flash.tampered {
            SeState::Tampered
        } else if self.flash.locked {
            SeState::Locked
        } else if self.flash.chain_hex.is_some() {
            SeState::Provisioned
        } else if self.key.is_none() {
            SeState::Blank
        } else if self.upload_total > 0 && self.upload.len() == self.upload_total as usize {
            SeState::ChainPending
        } else {
            SeState::KeyGenerated
        }
    }

    /// Tamper response (REQUIREMENTS T10): keys and certificates wiped at once, the state says so.
    pub fn tamper(&mut self) -> Result<(), StoreError> {
        self.key = None;
        self.upload.clear();
        self.upload_total = 0;
        let identity = self.flash.identity.take();
        self.flash = Flash { identity, tampered: true, counter: self.flash.counter, ..Flash::default() };
        self.persist()
    }

    /// Bytes the flash must write for `req` (what the write-speed latency applies to).
    pub fn flash_bytes(req: &Request) -> usize {
        match req {
            Request::PutRoot { der } => der.len(),
            Request::PutChain { chunk, .. } => chunk.len(),
            Request::GenKey => 128,
            Request::Lock => 16,
            _ => 0,
        }
    }

    /// Executes one command. `commit_fault` applies to COMMIT only.
    pub fn handle(&mut self, req: &Request, commit_fault: CommitFault) -> Response {
        if let Err(code) = req.check_state(self.state(), self.flash.root_hex.is_some()) {
            return error(code, format!("{} refused in state {}", req.name(), self.state().name()));
        }
        match self.execute(req, commit_fault) {
            Ok(r) => r,
            Err((code, detail)) => error(code, detail),
        }
    }

    fn execute(&mut self, req: &Request, commit_fault: CommitFault) -> Result<Response, (ErrorCode, String)> {
        let id = self.flash.identity.clone().ok_or((ErrorCode::Internal, "no identity".to_owned()))?;
        match req {
            Request::Hello { max_version } => {
                let protocol_version =
                    negotiate_version(*max_version).map_err(|c| (c, format!("host max {max_version}")))?;
                Ok(Response::Hello(DeviceInfo {
                    protocol_version,
                    serial: id.serial,
                    class: id.class,
                    manufacturer: id.manufacturer,
                    model: id.model,
                    firmware: id.firmware,
                    state: self.state(),
                }))
            }
            Request::Status => Ok(Response::Status(self.status())),
            Request::GenKey => {
                let key = SoftwareSm2Key::generate(SignerId::default()).map_err(internal)?;
                let pem = key.to_pkcs8_pem().map_err(internal)?;
                self.flash.key_pem = Some(pem.to_string());
                self.flash.csr = None;
                self.persist().map_err(internal)?;
                let spki_der = key.public_key().to_der().map_err(internal)?;
                self.key = Some(key);
                Ok(Response::Key { spki_der })
            }
            Request::GetCsr { common_name, serial_number } => {
                if *serial_number != id.serial {
                    return Err((ErrorCode::NotForThisDevice, format!("this terminal is {}", id.serial)));
                }
                if let Some(c) = self
                    .flash
                    .csr
                    .as_ref()
                    .filter(|c| c.common_name == *common_name && c.serial_number == *serial_number)
                {
                    return Ok(Response::Csr { der: hex::decode(&c.der_hex).map_err(internal)? });
                }
                let key = self.key.as_ref().ok_or((ErrorCode::NoKey, String::new()))?;
                let subject: pki::Name = format!("CN={common_name},serialNumber={serial_number}")
                    .parse()
                    .map_err(|e| (ErrorCode::MalformedRequest, format!("subject: {e}")))?;
                let info = pki::csr::build_csr_info(&subject, key.sm2_public_key()).map_err(internal)?;
                let sig = key.sign(&info).map_err(internal)?;
                self.flash.counter += 1;
                let der = pki::csr::assemble_csr(&info, sig.as_der(), &SignerId::default()).map_err(internal)?;
                self.flash.csr = Some(CachedCsr {
                    common_name: common_name.clone(),
                    serial_number: serial_number.clone(),
                    der_hex: hex::encode(&der),
                });
                self.persist().map_err(internal)?;
                Ok(Response::Csr { der })
            }
            Request::PutRoot { der } => {
                let root = Certificate::from_der(der).map_err(|e| (ErrorCode::RootMismatch, e.to_string()))?;
                match &self.flash.root_hex {
                    // Write-once (C2): the same root again is a harmless retry; another is refused.
                    Some(held) if *held == hex::encode(der) => Ok(Response::Ok),
                    Some(_) => Err((ErrorCode::RootAlreadySet, "a different root is stored; it cannot change".into())),
                    None => {
                        pki::validate_chain(&root, &[], &root, SystemTime::now(), &SignerId::default())
                            .map_err(|e| (ErrorCode::RootMismatch, e.to_string()))?;
                        self.flash.root_hex = Some(hex::encode(der));
                        self.persist().map_err(internal)?;
                        Ok(Response::Ok)
                    }
                }
            }
            Request::PutChain { total_len, offset, chunk } => {
                if *total_len == 0 || *total_len > MAX_CHAIN_LEN || chunk.len() > MAX_CHAIN_CHUNK {
                    return Err((ErrorCode::ChainTooLarge, format!("{total_len} bytes announced")));
                }
                if *offset == 0 {
                    self.upload.clear();
                    self.upload_total = *total_len;
                }
                let end = self.upload.len() as u64 + chunk.len() as u64;
                if *total_len != self.upload_total
                    || *offset as usize != self.upload.len()
                    || end > u64::from(*total_len)
                {
                    return Err((
                        ErrorCode::ChainOutOfOrder,
                        format!("have {} of {} bytes", self.upload.len(), self.upload_total),
                    ));
                }
                self.upload.extend_from_slice(chunk);
                Ok(Response::ChainProgress { received: self.upload.len() as u32 })
            }
            Request::Commit => self.commit(&id, commit_fault),
            Request::ReadCert { offset } => {
                let chain = hex::decode(self.flash.chain_hex.as_deref().unwrap_or_default()).map_err(internal)?;
                if *offset as usize > chain.len() {
                    return Err((
                        ErrorCode::MalformedRequest,
                        format!("offset {offset} is past the {} bytes", chain.len()),
                    ));
                }
                let start = *offset as usize;
                let end = (start + MAX_CHAIN_CHUNK).min(chain.len());
                Ok(Response::CertChunk {
                    total_len: chain.len() as u32,
                    offset: start as u32,
                    chunk: chain[start..end].to_vec(),
                })
            }
            Request::Challenge { nonce } => {
                let key = self.key.as_ref().ok_or((ErrorCode::NoKey, String::new()))?;
                let sig = key.sign(&challenge_message(nonce)).map_err(internal)?;
                self.flash.counter += 1;
                self.persist().map_err(internal)?;
                Ok(Response::Signature { der: sig.as_der().to_vec() })
            }
            Request::Activate { statement } => {
                // The SE signs only a statement about itself: its serial, its committed certificate.
                let st = proto::activation::decode(statement)
                    .ok_or((ErrorCode::MalformedRequest, "not an activation statement".to_owned()))?;
                let own_cert = self
                    .certificates()
                    .and_then(|c| c.first().and_then(pki::CertSerial::of).map(|s| s.to_hex()))
                    .ok_or((ErrorCode::NotProvisioned, String::new()))?;
                if st.terminal_serial != id.serial || st.certificate_serial != own_cert {
                    return Err((
                        ErrorCode::NotForThisDevice,
                        format!("this terminal is {} with certificate {own_cert}", id.serial),
                    ));
                }
                if st.challenge.len() != proto::activation::CHALLENGE_LEN {
                    return Err((ErrorCode::MalformedRequest, "challenge must be 32 bytes".into()));
                }
                let key = self.key.as_ref().ok_or((ErrorCode::NoKey, String::new()))?;
                let sig = key.sign(&proto::activation::signed_bytes(statement)).map_err(internal)?;
                self.flash.counter += 1;
                self.persist().map_err(internal)?;
                Ok(Response::Signature { der: sig.as_der().to_vec() })
            }
            Request::Lock => {
                self.flash.locked = true;
                self.persist().map_err(internal)?;
                Ok(Response::Ok)
            }
        }
    }

    fn commit(&mut self, id: &Identity, fault: CommitFault) -> Result<Response, (ErrorCode, String)> {
        if fault == CommitFault::RejectChain {
            return Err((ErrorCode::ChainInvalid, "rejected by fault injection (--reject-chain)".into()));
        }
        let certs = pki::terminal::split_chain(&self.upload).map_err(|e| (ErrorCode::ChainInvalid, e.to_string()))?;
        let root_der = hex::decode(self.flash.root_hex.as_deref().unwrap_or_default()).map_err(internal)?;
        let root = Certificate::from_der(&root_der).map_err(internal)?;
        let (leaf, intermediates) = certs.split_first().ok_or((ErrorCode::ChainInvalid, "empty".to_owned()))?;
        pki::validate_chain(leaf, intermediates, &root, SystemTime::now(), &SignerId::default())
            .map_err(|e| (ErrorCode::ChainInvalid, e.to_string()))?;
        let key = self.public_key().ok_or((ErrorCode::NoKey, String::new()))?;
        pki::terminal::check_binding(leaf, &id.serial, &key).map_err(|e| match e {
            pki::terminal::BindingError::OtherKey => (ErrorCode::KeyMismatch, e.to_string()),
            _ => (ErrorCode::NotForThisDevice, e.to_string()),
        })?;
        let mut next = self.flash.clone();
        next.chain_hex = Some(hex::encode(&self.upload));
        next.csr = None;
        self.write_flash(&next, fault == CommitFault::PowerCut).map_err(internal)?;
        self.flash = next;
        self.upload.clear();
        self.upload_total = 0;
        Ok(Response::Committed)
    }

    fn status(&self) -> DeviceStatus {
        let committed = self.flash.chain_hex.as_ref().map_or(0, |h| h.len() as u32 / 2);
        let (received, total) =
            if committed > 0 { (committed, committed) } else { (self.upload.len() as u32, self.upload_total) };
        DeviceStatus {
            state: self.state(),
            has_root: self.flash.root_hex.is_some(),
            chain_received: received,
            chain_total: total,
        }
    }

    fn persist(&self) -> Result<(), StoreError> {
        self.write_flash(&self.flash, false)
    }

    /// Write-new, fsync, rename, fsync the directory: the flash is the old state or the new one.
    /// `power_cut` stops half-way through the new file, as a power loss would.
    fn write_flash(&self, flash: &Flash, power_cut: bool) -> Result<(), StoreError> {
        let bytes = Zeroizing::new(
            serde_json::to_vec_pretty(flash).map_err(|e| StoreError::Damaged(self.dir.clone(), e.to_string()))?,
        );
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let mut f = private_file(&tmp)?;
        if power_cut {
            f.write_all(&bytes[..bytes.len() / 2])?;
            f.sync_all()?;
            eprintln!("terminal-sim: power cut during COMMIT (fault injection)");
            std::process::exit(137);
        }
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(STATE_FILE))?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(())
    }
}

fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)
}

fn error(code: ErrorCode, detail: String) -> Response {
    let mut detail = detail;
    let mut cut = detail.len().min(device_protocol::MAX_ERROR_DETAIL);
    while !detail.is_char_boundary(cut) {
        cut -= 1;
    }
    detail.truncate(cut);
    Response::Error { code, detail }
}

fn internal(e: impl std::fmt::Display) -> (ErrorCode, String) {
    (ErrorCode::Internal, e.to_string())
}

/// Why a [`CountingKey`] cannot sign.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The key was wiped (tamper response): this SE can never sign again.
    #[error("the SE key was zeroised (tamper); it can never sign again")]
    Zeroised,
    /// The signature failed.
    #[error(transparent)]
    Key(#[from] hsm::HsmError),
}

/// An SE key and its signature counter, in memory: the part of a secure element that
/// `terminal-sim fleet` runs by the thousand. Every signature increments the counter first, and
/// the signed message carries the new value.
pub struct CountingKey {
    key: Option<SoftwareSm2Key>,
    counter: u64,
}

impl CountingKey {
    /// A fresh key, counter 0.
    pub fn generate() -> Result<Self, hsm::HsmError> {
        Ok(Self { key: Some(SoftwareSm2Key::generate(SignerId::default())?), counter: 0 })
    }

    /// The public key, unless zeroised.
    pub fn public_key(&self) -> Option<&pki::Sm2PublicKey> {
        self.key.as_ref().map(|k| k.sm2_public_key())
    }

    /// The key as a signer (to sign a CSR), unless zeroised; counts the signature.
    pub fn signer(&mut self) -> Result<&SoftwareSm2Key, SignError> {
        let key = self.key.as_ref().ok_or(SignError::Zeroised)?;
        self.counter += 1;
        Ok(key)
    }

    /// Signs `message(counter)` with the next counter value; returns it and the DER signature.
    pub fn sign(&mut self, message: impl FnOnce(u64) -> Vec<u8>) -> Result<(u64, Vec<u8>), SignError> {
        let key = self.key.as_ref().ok_or(SignError::Zeroised)?;
        let next = self.counter + 1;
        let sig = key.sign(&message(next))?;
        self.counter = next;
        Ok((next, sig.as_der().to_vec()))
    }

    /// Signatures made so far.
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// Tamper response: the key is wiped (overwritten in memory as it drops).
    pub fn zeroise(&mut self) {
        self.key = None;
    }

    /// Whether the key is gone.
    pub fn is_zeroised(&self) -> bool {
        self.key.is_none()
    }

    /// What a cloner extracts from a broken SE: the key and the counter as they are now.
    pub fn extract(&self) -> Result<Self, SignError> {
        let key = self.key.as_ref().ok_or(SignError::Zeroised)?;
        let pem = key.to_pkcs8_pem()?;
        Ok(Self { key: Some(SoftwareSm2Key::from_pkcs8_pem(&pem, SignerId::default())?), counter: self.counter })
    }
}

#[cfg(test)]
mod counting_tests {
    use super::*;

    #[test]
    fn every_signature_counts_and_a_zeroised_key_never_signs() {
        let mut k = CountingKey::generate().expect("key");
        let (n1, _) = k.sign(|n| n.to_be_bytes().to_vec()).expect("sign");
        let (n2, sig) = k.sign(|n| n.to_be_bytes().to_vec()).expect("sign");
        assert_eq!((n1, n2, k.counter()), (1, 2, 2));
        let pk = k.public_key().expect("key").clone();
        pk.verify(&SignerId::default(), &2u64.to_be_bytes(), &sig).expect("the counter is in the signed message");
        let mut copy = k.extract().expect("extract");
        assert_eq!(copy.counter(), 2);
        assert_eq!(copy.sign(|_| Vec::new()).expect("copy signs").0, 3, "a copy repeats the original's counters");
        k.zeroise();
        assert!(k.is_zeroised() && k.public_key().is_none());
        assert!(matches!(k.sign(|_| Vec::new()), Err(SignError::Zeroised)));
        assert!(matches!(k.signer(), Err(SignError::Zeroised)));
        assert!(matches!(k.extract(), Err(SignError::Zeroised)));
    }
}
