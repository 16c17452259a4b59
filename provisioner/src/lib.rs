//! `provisioner`: the factory station (DESIGN §6). [`station`] is the per-terminal workflow,
//! [`ca`] the two CA calls, [`ui`] the live display, [`report`] the batch report, and this module
//! runs a batch across ports in parallel and finds serial ports.

pub mod ca;
pub mod report;
pub mod station;
pub mod ui;

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use device_protocol::{HostLink, LinkConfig, LinkError, Transport};

use crate::ca::CaApi;
use crate::report::Row;
use crate::station::{StationConfig, StationError, provision};
use crate::ui::Display;

/// Where a terminal is reached.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A serial device (USB CDC-ACM `/dev/ttyACM0`, or any tty path such as a pty).
    Serial(PathBuf),
    /// A TCP address (a terminal agent behind `adb forward`).
    Tcp(String),
}

impl Target {
    /// How the target is shown.
    pub fn label(&self) -> String {
        match self {
            Target::Serial(p) => p.display().to_string(),
            Target::Tcp(a) => format!("tcp:{a}"),
        }
    }

    /// Opens the link.
    pub fn open(&self) -> Result<Box<dyn Transport>, LinkError> {
        match self {
            Target::Serial(p) => {
                let port = device_protocol::open_serial(&p.to_string_lossy())?;
                Ok(Box::new(port))
            }
            Target::Tcp(addr) => {
                let sock = addr
                    .to_socket_addrs()
                    .map_err(LinkError::Io)?
                    .next()
                    .ok_or_else(|| LinkError::Protocol(format!("{addr} resolves to no address")))?;
                let s = TcpStream::connect_timeout(&sock, Duration::from_secs(5)).map_err(LinkError::Io)?;
                let _ = s.set_nodelay(true);
                Ok(Box::new(s))
            }
        }
    }
}

/// Provisions the terminal at `target` and returns its report row (never panics, never fails:
/// a failure is a row).
pub fn provision_target(
    target: &Target,
    ca: &dyn CaApi,
    cfg: &StationConfig,
    link_cfg: LinkConfig,
    display: &Display,
) -> Row {
    let label = target.label();
    let mut progress = display.port(&label);
    let started = Instant::now();
    let result = target
        .open()
        .map_err(|source| StationError::Link { step: station::Step::Hello, source })
        .and_then(|t| provision(&mut HostLink::new(t, link_cfg), ca, cfg, &mut progress));
    let duration_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(p) => {
            let outcome = if p.newly { "provisioned" } else { "already-provisioned" };
            progress.done(outcome, &p.certificate_serial);
            Row {
                port: label,
                serial: p.serial,
                certificate_serial: p.certificate_serial,
                duration_ms,
                outcome: outcome.into(),
                failed_step: String::new(),
                code: String::new(),
                error: String::new(),
            }
        }
        Err(e) => {
            progress.failed(e.step(), &e.code(), &e.to_string());
            progress.done("failed", &e.to_string());
            Row {
                port: label,
                serial: progress_serial(&progress),
                certificate_serial: String::new(),
                duration_ms,
                outcome: "failed".into(),
                failed_step: e.step().name().into(),
                code: e.code(),
                error: e.to_string(),
            }
        }
    }
}

fn progress_serial(p: &ui::PortProgress) -> String {
    p.serial().unwrap_or_default().to_owned()
}

/// Provisions every target at once (one thread per port); rows in the order of `targets`.
pub fn run_batch(
    targets: &[Target],
    ca: &dyn CaApi,
    cfg: &StationConfig,
    link_cfg: LinkConfig,
    display: &Display,
) -> Vec<Row> {
    std::thread::scope(|s| {
        let handles: Vec<_> =
            targets.iter().map(|t| s.spawn(move || provision_target(t, ca, cfg, link_cfg, display))).collect();
        handles
            .into_iter()
            .zip(targets)
            .map(|(h, t)| {
                h.join().unwrap_or_else(|_| Row {
                    port: t.label(),
                    serial: String::new(),
                    certificate_serial: String::new(),
                    duration_ms: 0,
                    outcome: "failed".into(),
                    failed_step: String::new(),
                    code: "INTERNAL".into(),
                    error: "the port's worker crashed".into(),
                })
            })
            .collect()
    })
}

/// A serial device that may be a terminal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortInfo {
    /// Device path.
    pub path: PathBuf,
    /// What the system says about it (USB vendor/product/serial when known).
    pub description: String,
}

/// Lists candidate serial devices: USB CDC-ACM (`ttyACM*`) and USB serial (`ttyUSB*`), with the
/// USB identity from sysfs when present.
pub fn list_ports() -> Vec<PortInfo> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/class/tty") else { return out };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("ttyACM") || name.starts_with("ttyUSB")) {
            continue;
        }
        let usb = e.path().join("device/..");
        let read = |f: &str| std::fs::read_to_string(usb.join(f)).map(|s| s.trim().to_owned()).unwrap_or_default();
        let description = [read("idVendor"), read("idProduct"), read("manufacturer"), read("product"), read("serial")]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        out.push(PortInfo { path: Path::new("/dev").join(&name), description });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// The paths matching `pattern`, where `*` in the file-name part matches any run of characters
/// (`/dev/ttyACM*`, `/tmp/line/term-*`).
pub fn glob(pattern: &str) -> Vec<PathBuf> {
    let p = Path::new(pattern);
    let (Some(dir), Some(name)) = (p.parent(), p.file_name().map(|n| n.to_string_lossy().into_owned())) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| wildcard(&name, &e.file_name().to_string_lossy()))
        .map(|e| dir.join(e.file_name()))
        .collect();
    out.sort();
    out
}

fn wildcard(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            name.starts_with(head)
                && (0..=name.len() - head.len())
                    .filter(|i| name.is_char_boundary(head.len() + i))
                    .any(|i| wildcard(rest, &name[head.len() + i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard("ttyACM*", "ttyACM0"));
        assert!(wildcard("ttyACM*", "ttyACM"));
        assert!(!wildcard("ttyACM*", "ttyUSB0"));
        assert!(wildcard("term-*-x", "term-12-x"));
        assert!(!wildcard("term-*-x", "term-12-y"));
        assert!(wildcard("exact", "exact"));
        assert!(!wildcard("exact", "exactly"));
    }
}
