//! The terminal's side of the link: takes each command off the wire, waits the SE's simulated
//! latency while keeping the host informed with BUSY, answers, and injects the faults asked for.

use std::time::Duration;

use device_protocol::{DeviceLink, LinkError, Request, Transport};

use crate::se::{CommitFault, SecureElement};

/// Simulated secure-element speed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latency {
    /// SM2 key-pair generation.
    pub keygen: Duration,
    /// One SM2 signature (a verification costs about two).
    pub sign: Duration,
    /// Flash write speed, bytes per second (0: instant).
    pub write_bytes_per_s: u64,
    /// Extra delay before every answer (the "answers slowly" fault).
    pub extra: Duration,
}

impl Latency {
    /// A smart-card-class SE: keygen 300 ms, sign 100 ms, 10 kB/s flash.
    pub const SMART_CARD: Latency = Latency {
        keygen: Duration::from_millis(300),
        sign: Duration::from_millis(100),
        write_bytes_per_s: 10_000,
        extra: Duration::ZERO,
    };

    /// No simulated latency (measures the station's own overhead).
    pub const ZERO: Latency =
        Latency { keygen: Duration::ZERO, sign: Duration::ZERO, write_bytes_per_s: 0, extra: Duration::ZERO };

    /// How long the SE takes for `req`.
    pub fn of(&self, req: &Request, chain_len: usize) -> Duration {
        let crypto = match req {
            Request::GenKey => self.keygen,
            Request::GetCsr { .. } | Request::Challenge { .. } | Request::Activate { .. } => self.sign,
            // Two signature verifications (leaf, issuing CA) and the chain written to flash.
            Request::Commit => self.sign * 4,
            _ => Duration::ZERO,
        };
        let bytes = SecureElement::flash_bytes(req) + if matches!(req, Request::Commit) { chain_len } else { 0 };
        let write = match self.write_bytes_per_s {
            0 => Duration::ZERO,
            rate => Duration::from_secs_f64(bytes as f64 / rate as f64),
        };
        crypto + write + self.extra
    }
}

/// Faults to inject, by step (the n-th command received since start, counting from 1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Unplug (the process exits) right after answering step N.
    pub drop_after: Option<u32>,
    /// Send the answer to step N with a flipped bit (once; the retransmission gets a good one).
    pub corrupt_step: Option<u32>,
    /// Refuse every chain at COMMIT.
    pub reject_chain: bool,
    /// Lose power half-way through writing the committed chain.
    pub power_cut_on_commit: bool,
    /// Detect tampering right after answering step N: keys wiped, state `TAMPERED`.
    pub tamper_after: Option<u32>,
}

/// How serving a link ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The host closed the link.
    Closed,
    /// The `drop_after` fault fired.
    Unplugged,
}

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The link failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The SE's flash failed.
    #[error(transparent)]
    Store(#[from] crate::se::StoreError),
}

/// Serves commands on `link` until the host goes away or a fault unplugs the device. `step`
/// counts commands across links (a device keeps counting across reconnects).
pub fn serve<T: Transport>(
    se: &mut SecureElement,
    link: &mut DeviceLink<T>,
    latency: &Latency,
    faults: &Faults,
    step: &mut u32,
) -> Result<Ended, DeviceError> {
    loop {
        let Some((seq, req)) = link.next_request()? else { return Ok(Ended::Closed) };
        *step += 1;
        let wait = latency.of(&req, se.pending_chain_len());
        let commit_fault = match (faults.reject_chain, faults.power_cut_on_commit) {
            (true, _) => CommitFault::RejectChain,
            (false, true) => CommitFault::PowerCut,
            _ => CommitFault::None,
        };
        let resp = if wait.is_zero() {
            se.handle(&req, commit_fault)
        } else {
            link.run_busy(seq, || {
                std::thread::sleep(wait);
                se.handle(&req, commit_fault)
            })
        };
        if faults.corrupt_step == Some(*step) {
            link.respond_corrupted(seq, &resp)?;
        } else {
            link.respond(seq, &resp)?;
        }
        if faults.tamper_after == Some(*step) {
            se.tamper()?;
        }
        if faults.drop_after == Some(*step) {
            return Ok(Ended::Unplugged);
        }
    }
}
