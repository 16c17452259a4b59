//! Wrong chains are refused on both sides of the cable: by the station before it writes anything
//! (a chain for another terminal, a chain that does not lead to the pinned root — as a rogue or
//! broken CA might send), and by the secure element at COMMIT when such a chain is written to it
//! directly. The device is the real `terminal-sim` secure element behind a real pseudo-terminal.

#[path = "../../pki/tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use der::Encode;
use device_protocol::{ErrorCode, HostLink, LinkConfig, LinkError, Request, Response, SeState};
use pki::{Certificate, SignerId};
use proto::v1;
use provisioner::ca::{CaApi, CaError};
use provisioner::station::{Progress, StationConfig, StationError, Step, provision};
use serialport::TTYPort;
use support::{Ca, issue, make_issuing, make_root, policy, terminal_vars};
use terminal_sim::device::{Faults, Latency, serve};
use terminal_sim::se::{Identity, SecureElement};

const SERIAL: &str = "HSTM01261100000K";
const OTHER: &str = "HSTM01261100001I";

struct Pki {
    root: Ca,
    issuing: Ca,
}

fn pki() -> Pki {
    let now = std::time::SystemTime::now();
    let root = make_root(&policy(), now);
    let issuing = make_issuing(&policy(), &root, now);
    Pki { root, issuing }
}

impl Pki {
    fn terminal_cert(&self, serial: &str, key: &pki::Sm2PublicKey) -> Certificate {
        issue(&policy(), "terminal", &terminal_vars(serial, "II"), key, &self.issuing, std::time::SystemTime::now())
    }

    fn chain(&self, leaf: &Certificate) -> Vec<u8> {
        let mut c = leaf.to_der().expect("der");
        c.extend(self.issuing.cert.to_der().expect("der"));
        c
    }
}

/// A CA that answers with a certificate it should not: for another serial, or from another PKI.
struct RogueCa {
    pki: Pki,
    serial: &'static str,
    confirmed: AtomicBool,
}

impl CaApi for RogueCa {
    fn issue(
        &self,
        req: v1::IssueTerminalCertificateRequest,
        _: Duration,
    ) -> Result<v1::IssueTerminalCertificateResponse, CaError> {
        let csr = pki::verify_csr(&req.csr_der, &SignerId::default()).expect("station sent a valid CSR");
        let leaf = self.pki.terminal_cert(self.serial, csr.public_key());
        Ok(v1::IssueTerminalCertificateResponse {
            certificate_der: leaf.to_der().expect("der"),
            chain_der: vec![self.pki.issuing.cert.to_der().expect("der"), self.pki.root.cert.to_der().expect("der")],
            certificate_serial: pki::CertSerial::of(&leaf).expect("serial").to_hex(),
            replayed: false,
            superseded_serial: String::new(),
        })
    }

    fn confirm(&self, _: v1::ConfirmProvisioningRequest, _: Duration) -> Result<(), CaError> {
        self.confirmed.store(true, Ordering::SeqCst);
        Ok(())
    }
}

struct Quiet;
impl Progress for Quiet {
    fn started(&mut self, _: Step, _: Option<&str>) {}
    fn finished(&mut self, _: Step, _: Duration) {}
}

/// A terminal's secure element serving on a pty in this process; returns the station's end.
fn device(dir: &std::path::Path) -> HostLink<TTYPort> {
    let identity = Identity {
        serial: SERIAL.into(),
        class: 2,
        manufacturer: "HSTM".into(),
        model: "01".into(),
        firmware: "1.0".into(),
    };
    let mut se = SecureElement::open(dir, &identity).expect("se");
    let (master, slave) = TTYPort::pair().expect("pty");
    std::thread::spawn(move || {
        let mut link = device_protocol::DeviceLink::new(master);
        let mut step = 0;
        // Ends when the station's end is dropped (the pty reports an I/O error).
        let _ = serve(&mut se, &mut link, &Latency::ZERO, &Faults::default(), &mut step);
    });
    HostLink::new(slave, LinkConfig { frame_timeout: Duration::from_millis(500), max_retransmits: 2 })
}

fn status(link: &mut HostLink<TTYPort>) -> SeState {
    match link.call(&Request::Status).expect("status") {
        Response::Status(s) => s.state,
        other => panic!("unexpected {other:?}"),
    }
}

fn station_refuses(rogue: RogueCa, pinned_root: &Certificate, why: &str) {
    let dir = tempfile::tempdir().expect("tmp");
    let mut link = device(dir.path());
    let cfg = StationConfig { root: pinned_root.clone(), deadline: Duration::from_secs(30), lot: None };
    let err = provision(&mut link, &rogue, &cfg, &mut Quiet).expect_err("must be refused");
    assert!(matches!(err, StationError::Rejected { step: Step::VerifyChain, .. }), "{err}");
    assert!(err.to_string().contains(why), "{err}");
    assert!(!rogue.confirmed.load(Ordering::SeqCst), "nothing confirmed");
    assert_eq!(status(&mut link), SeState::KeyGenerated, "nothing was written to the device");
}

#[test]
fn the_station_refuses_a_chain_for_another_terminal() {
    let pki = pki();
    let root = pki.root.cert.clone();
    station_refuses(RogueCa { pki, serial: OTHER, confirmed: AtomicBool::new(false) }, &root, OTHER);
}

#[test]
fn the_station_refuses_a_chain_that_does_not_lead_to_its_pinned_root() {
    let pinned = pki().root.cert;
    let rogue = RogueCa { pki: pki(), serial: SERIAL, confirmed: AtomicBool::new(false) };
    station_refuses(rogue, &pinned, "pinned root");
}

fn call(link: &mut HostLink<TTYPort>, req: Request) -> Result<Response, LinkError> {
    link.call(&req).and_then(|r| match r {
        Response::Error { code, detail } => Err(LinkError::Device { command: req.name(), code, detail }),
        r => Ok(r),
    })
}

fn refused(r: Result<Response, LinkError>) -> ErrorCode {
    match r {
        Err(LinkError::Device { code, .. }) => code,
        other => panic!("expected a device refusal, got {other:?}"),
    }
}

fn put_chain_and_commit(link: &mut HostLink<TTYPort>, chain: &[u8]) -> Result<Response, LinkError> {
    call(link, Request::PutChain { total_len: chain.len() as u32, offset: 0, chunk: chain.to_vec() })?;
    call(link, Request::Commit)
}

#[test]
fn the_device_refuses_wrong_chains_and_keeps_its_root() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut link = device(dir.path());
    let (pki, foreign) = (pki(), pki());
    call(&mut link, Request::Hello { max_version: 1 }).expect("hello");
    let Response::Key { spki_der } = call(&mut link, Request::GenKey).expect("keygen") else { panic!("no key") };
    assert_eq!(refused(call(&mut link, Request::GenKey)), ErrorCode::KeyExists);
    let csr = |link: &mut HostLink<TTYPort>| match call(
        link,
        Request::GetCsr { common_name: SERIAL.into(), serial_number: SERIAL.into() },
    ) {
        Ok(Response::Csr { der }) => der,
        other => panic!("{other:?}"),
    };
    let first = csr(&mut link);
    assert_eq!(csr(&mut link), first, "the same CSR again, so a retry sends the CA the same request");
    let se_key = pki::verify_csr(&first, &SignerId::default()).expect("csr");
    assert_eq!(se_key.spki().to_der().expect("der"), spki_der);
    let other_csr = Request::GetCsr { common_name: OTHER.into(), serial_number: OTHER.into() };
    assert_eq!(refused(call(&mut link, other_csr)), ErrorCode::NotForThisDevice);

    assert_eq!(refused(put_chain_and_commit(&mut link, &[0x30])), ErrorCode::NoRoot);
    let root_der = pki.root.cert.to_der().expect("der");
    call(&mut link, Request::PutRoot { der: root_der.clone() }).expect("root");
    call(&mut link, Request::PutRoot { der: root_der }).expect("the same root again is a harmless retry");
    let foreign_root = Request::PutRoot { der: foreign.root.cert.to_der().expect("der") };
    assert_eq!(refused(call(&mut link, foreign_root)), ErrorCode::RootAlreadySet, "C2: the root is immutable");

    let for_other = pki.chain(&pki.terminal_cert(OTHER, se_key.public_key()));
    assert_eq!(refused(put_chain_and_commit(&mut link, &for_other)), ErrorCode::NotForThisDevice);
    let another_key = support::key();
    let wrong_key = pki.chain(&pki.terminal_cert(SERIAL, another_key.sm2_public_key()));
    assert_eq!(refused(put_chain_and_commit(&mut link, &wrong_key)), ErrorCode::KeyMismatch);
    let foreign_chain = foreign.chain(&foreign.terminal_cert(SERIAL, se_key.public_key()));
    assert_eq!(refused(put_chain_and_commit(&mut link, &foreign_chain)), ErrorCode::ChainInvalid);
    assert_eq!(refused(put_chain_and_commit(&mut link, b"not a certificate")), ErrorCode::ChainInvalid);
    assert_eq!(status(&mut link), SeState::ChainPending, "refused chains change nothing committed");

    let good = pki.chain(&pki.terminal_cert(SERIAL, se_key.public_key()));
    assert!(matches!(put_chain_and_commit(&mut link, &good), Ok(Response::Committed)));
    let Response::CertChunk { chunk, total_len, .. } = call(&mut link, Request::ReadCert { offset: 0 }).expect("read")
    else {
        panic!("no chunk")
    };
    assert_eq!((chunk.as_slice(), total_len as usize), (good.as_slice(), good.len()));
    assert_eq!(refused(call(&mut link, Request::ReadCert { offset: total_len + 1 })), ErrorCode::MalformedRequest);
    let leaf = pki::terminal::split_chain(&chunk).expect("split").remove(0);
    let Response::Signature { der } = call(&mut link, Request::Challenge { nonce: [7; 32] }).expect("challenge") else {
        panic!("no signature")
    };
    let key = pki::Sm2PublicKey::from_spki(leaf.tbs_certificate().subject_public_key_info()).expect("key");
    key.verify(&SignerId::default(), &device_protocol::challenge_message(&[7; 32]), &der).expect("SE key signs");
    call(&mut link, Request::Lock).expect("lock");
    assert_eq!(refused(put_chain_and_commit(&mut link, &good)), ErrorCode::Locked);
    assert_eq!(status(&mut link), SeState::Locked);
}
