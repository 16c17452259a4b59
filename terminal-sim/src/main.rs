//! `terminal-sim`: an emulated terminal with a secure element (see `terminal-sim --help`).

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use device_protocol::DeviceLink;
use terminal_sim::device::{Ended, Faults, Latency, serve};
use terminal_sim::se::{Identity, SecureElement};

/// An emulated healthcare-security terminal whose secure element speaks the device protocol
/// (provisioner/PROTOCOL.md) on a fresh pseudo-terminal (the default; its path is printed) or on
/// TCP. Its key is generated inside and never leaves; its state persists in --state-dir.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: Run,
}

#[derive(Subcommand)]
enum Command {
    /// Write what the terminal holds: its certificate (PEM), optionally the chain and its public key.
    Export {
        /// The terminal's state directory.
        #[arg(long)]
        state_dir: PathBuf,
        /// Where to write the terminal's certificate (PEM).
        #[arg(long)]
        cert_out: PathBuf,
        /// Also write the issuing CA certificate(s) here (PEM).
        #[arg(long)]
        chain_out: Option<PathBuf>,
        /// Also write the SE's public key here (PEM SubjectPublicKeyInfo).
        #[arg(long)]
        public_key_out: Option<PathBuf>,
    },
    /// Simulate COUNT deployed terminals in this one process (one shared event loop), each with
    /// its own SE key and counter and a certificate the CA issues through --station, sending
    /// signed heartbeats to fleet-server; inject anomalies after --inject-after-ms. Prints JSON
    /// lines: `enrolled`, one `inject` per anomaly (kind, terminal, certificate), `sign_refused`
    /// when a tampered SE is asked to sign again, and a closing `summary` (sent, accepted,
    /// refused by reason, heartbeats/s, p50/p99 latency).
    Fleet(FleetArgs),
}

#[derive(Args)]
struct FleetArgs {
    /// Identity file of a station principal (its certificates are issued through it).
    #[arg(long)]
    station: PathBuf,
    /// The fleet service's gRPC URL.
    #[arg(long, default_value = "https://127.0.0.1:7543")]
    fleet: String,
    /// The fleet service's TLS CA (fleet-server init writes DIR/tls/ca.pem).
    #[arg(long)]
    fleet_tls_ca: PathBuf,
    /// Terminals to simulate.
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// Serial prefix: manufacturer (4), model (2), production YYMM (4); a base-36 sequence of 5
    /// and the check character follow.
    #[arg(long, default_value = "HSTM012611")]
    serial_prefix: String,
    /// First sequence number (keep runs against one CA apart).
    #[arg(long, default_value_t = 0)]
    first_sequence: u64,
    /// Heartbeat interval, ms.
    #[arg(long, default_value_t = 60_000)]
    interval_ms: u64,
    /// How long to heartbeat, ms.
    #[arg(long, default_value_t = 600_000)]
    duration_ms: u64,
    /// When to inject, ms after heartbeating starts.
    #[arg(long, default_value_t = 120_000)]
    inject_after_ms: u64,
    /// Terminals cloned (a copy of the SE's key and counter heartbeating from --clone-address).
    #[arg(long, default_value_t = 0)]
    clones: usize,
    /// Terminals moved 55 km away.
    #[arg(long, default_value_t = 0)]
    relocations: usize,
    /// Counterfeits: a self-made CA certifies a fake terminal claiming a real one's serial.
    #[arg(long, default_value_t = 0)]
    counterfeits: usize,
    /// Terminals opened: one last heartbeat with the tamper switch set, then the SE wipes its key.
    #[arg(long, default_value_t = 0)]
    tampers: usize,
    /// Terminals that fall silent.
    #[arg(long, default_value_t = 0)]
    silences: usize,
    /// Source address of the clones' connection (any 127.x address works on Linux loopback).
    #[arg(long, default_value = "127.0.0.2")]
    clone_address: std::net::IpAddr,
    /// gRPC connections the terminals share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Also confirm each terminal's provisioning through --station, so it can be activated.
    #[arg(long)]
    confirm: bool,
    /// Start heartbeating only once this file exists (activate the terminals first); the
    /// `enrolled` line then lists each terminal's serial, certificate and home position.
    #[arg(long)]
    start_when: Option<PathBuf>,
}

#[derive(Args)]
struct Run {
    /// Terminal serial number (healthcare-security unique serial).
    #[arg(long)]
    serial: Option<String>,
    /// Terminal class.
    #[arg(long, value_parser = ["I", "II", "III"], default_value = "II")]
    class: String,
    /// Manufacturer code (the serial's first four characters by default).
    #[arg(long)]
    manufacturer: Option<String>,
    /// Model.
    #[arg(long, default_value = "01")]
    model: String,
    /// Firmware version reported in HELLO.
    #[arg(long, default_value = "1.0.0")]
    firmware: String,
    /// Where the SE keeps its state (its flash).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Make a stable symlink to the pseudo-terminal at this path.
    #[arg(long, conflicts_with = "tcp")]
    link: Option<PathBuf>,
    /// Serve on TCP at this address instead of a pseudo-terminal (as an adb-forwarded agent).
    #[arg(long)]
    tcp: Option<String>,
    /// Simulated SM2 key generation time, ms.
    #[arg(long, default_value_t = Latency::SMART_CARD.keygen.as_millis() as u64)]
    keygen_ms: u64,
    /// Simulated SM2 signature time, ms (a chain check at COMMIT costs four).
    #[arg(long, default_value_t = Latency::SMART_CARD.sign.as_millis() as u64)]
    sign_ms: u64,
    /// Simulated flash write speed, bytes per second (0: instant).
    #[arg(long, default_value_t = Latency::SMART_CARD.write_bytes_per_s)]
    write_bytes_per_s: u64,
    /// Fault: answer every command this many ms late (BUSY keeps the link alive meanwhile).
    #[arg(long, default_value_t = 0)]
    slow_ms: u64,
    /// Fault: unplug (exit) right after answering command number N (counting from 1).
    #[arg(long, value_name = "N")]
    drop_after_step: Option<u32>,
    /// Fault: corrupt the answer to command number N once.
    #[arg(long, value_name = "N")]
    corrupt_step: Option<u32>,
    /// Fault: refuse every chain at COMMIT.
    #[arg(long)]
    reject_chain: bool,
    /// Fault: lose power half-way through COMMIT's write (the process exits).
    #[arg(long)]
    power_cut_on_commit: bool,
    /// Fault: detect tampering after command number N: keys wiped, state TAMPERED for good.
    #[arg(long, value_name = "N")]
    tamper_after_step: Option<u32>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Export { state_dir, cert_out, chain_out, public_key_out }) => {
            export(&state_dir, &cert_out, chain_out.as_deref(), public_key_out.as_deref())
        }
        Some(Command::Fleet(a)) => fleet(a),
        None => run(&cli.run),
    }
}

fn fleet(a: FleetArgs) -> Result<()> {
    let plan = terminal_sim::fleet::Plan {
        count: a.count,
        serial_prefix: a.serial_prefix,
        first_sequence: a.first_sequence,
        interval: Duration::from_millis(a.interval_ms.max(1)),
        duration: Duration::from_millis(a.duration_ms),
        inject_after: Duration::from_millis(a.inject_after_ms),
        clones: a.clones,
        relocations: a.relocations,
        counterfeits: a.counterfeits,
        tampers: a.tampers,
        silences: a.silences,
        clone_address: a.clone_address,
        connections: a.connections,
        confirm: a.confirm,
        start_when: a.start_when,
    };
    let injected = plan.clones + plan.relocations + plan.counterfeits + plan.tampers + plan.silences;
    if injected > plan.count {
        bail!("{injected} injections need at least as many terminals (--count {})", plan.count);
    }
    let tls_ca =
        std::fs::read_to_string(&a.fleet_tls_ca).with_context(|| format!("reading {}", a.fleet_tls_ca.display()))?;
    let identity = proto::identity::Identity::load(&a.station)?;
    let pass = identity.passphrase(proto::identity::prompt_passphrase)?;
    let signer = identity.signer(&pass)?;
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async move {
        let station = proto::client::Client::connect(&identity, None, Box::new(signer)).await?;
        terminal_sim::fleet::run(plan, station, &a.fleet, &tls_ca).await
    })
}

fn export(
    dir: &std::path::Path,
    cert_out: &std::path::Path,
    chain_out: Option<&std::path::Path>,
    key_out: Option<&std::path::Path>,
) -> Result<()> {
    let se = SecureElement::load(dir)?;
    if se.identity().is_none() {
        bail!("{} holds no terminal", dir.display());
    }
    let certs = se.certificates().context("the terminal holds no certificate (not provisioned)")?;
    let pem = |c: &pki::Certificate| pki::pem::certificate_to_pem(c).context("PEM");
    let (leaf, rest) = certs.split_first().context("empty chain")?;
    std::fs::write(cert_out, pem(leaf)?).with_context(|| format!("writing {}", cert_out.display()))?;
    if let Some(p) = chain_out {
        let text = rest.iter().map(pem).collect::<Result<String>>()?;
        std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = key_out {
        let spki = se.public_key().context("no key")?;
        let der = der::Encode::to_der(&spki)?;
        std::fs::write(p, pki::pem::der_to_pem("PUBLIC KEY", &der)?)?;
    }
    Ok(())
}

fn run(a: &Run) -> Result<()> {
    let serial = a.serial.clone().context("--serial is required (see --help)")?;
    let state_dir = a.state_dir.clone().context("--state-dir is required (see --help)")?;
    let class = match a.class.as_str() {
        "I" => 1,
        "II" => 2,
        _ => 3,
    };
    let manufacturer = a.manufacturer.clone().unwrap_or_else(|| serial.chars().take(4).collect());
    let identity =
        Identity { serial: serial.clone(), class, manufacturer, model: a.model.clone(), firmware: a.firmware.clone() };
    let mut se = SecureElement::open(&state_dir, &identity)?;
    let latency = Latency {
        keygen: Duration::from_millis(a.keygen_ms),
        sign: Duration::from_millis(a.sign_ms),
        write_bytes_per_s: a.write_bytes_per_s,
        extra: Duration::from_millis(a.slow_ms),
    };
    let faults = Faults {
        drop_after: a.drop_after_step,
        corrupt_step: a.corrupt_step,
        reject_chain: a.reject_chain,
        power_cut_on_commit: a.power_cut_on_commit,
        tamper_after: a.tamper_after_step,
    };
    let mut step = 0;
    let mut out = std::io::stdout();
    if let Some(addr) = &a.tcp {
        let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        writeln!(out, "terminal-sim {serial} listening on tcp {}", listener.local_addr()?)?;
        out.flush()?;
        for stream in listener.incoming() {
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("terminal-sim: accept: {e}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let mut link = DeviceLink::new(stream);
            match serve(&mut se, &mut link, &latency, &faults, &mut step) {
                Ok(Ended::Closed) => {}
                Ok(Ended::Unplugged) => return unplugged(step),
                Err(e) => eprintln!("terminal-sim: link ended: {e}"),
            }
        }
        return Ok(());
    }
    let (master, slave) = serialport::TTYPort::pair().context("opening a pseudo-terminal")?;
    let path = serialport::SerialPort::name(&slave).context("the pseudo-terminal has no name")?;
    if let Some(link) = &a.link {
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(&path, link).with_context(|| format!("linking {}", link.display()))?;
    }
    writeln!(out, "terminal-sim {serial} listening on {path}")?;
    out.flush()?;
    // `slave` stays open for the process's life: when a station closes its end, the master side
    // keeps working for the next one (as a USB device outlives one host program).
    let mut link = DeviceLink::new(master);
    loop {
        match serve(&mut se, &mut link, &latency, &faults, &mut step) {
            Ok(Ended::Closed) => return Ok(()),
            Ok(Ended::Unplugged) => {
                drop(slave);
                if let Some(l) = &a.link {
                    let _ = std::fs::remove_file(l);
                }
                return unplugged(step);
            }
            Err(e) => {
                eprintln!("terminal-sim: link error: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn unplugged(step: u32) -> Result<()> {
    eprintln!("terminal-sim: unplugged after command {step} (fault injection)");
    std::process::exit(3);
}
