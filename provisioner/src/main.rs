//! `provisioner`: the factory station (see `provisioner --help`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use device_protocol::LinkConfig;
use proto::client::Client;
use proto::identity::Identity;
use provisioner::ca::GrpcCa;
use provisioner::report::Row;
use provisioner::station::StationConfig;
use provisioner::ui::Display;
use provisioner::{Target, glob, list_ports, provision_target, run_batch};

/// The factory provisioning station: for each terminal plugged in, its secure element makes a key,
/// the CA issues the certificate, the station checks the chain against its pinned root, writes
/// root and chain in CRC-checked chunks, the device verifies and commits, the station reads it
/// back, checks a challenge signature, locks the device and confirms to the CA — within the
/// deadline (HSTS 7.4.4 c: one minute). Re-running on a terminal is always safe.
///
/// Exit codes: 0 every terminal provisioned (or found already provisioned), 1 some failed,
/// 2 bad arguments or station set-up (identity, CA unreachable).
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Provision the terminals on the given ports, all at once, then write the batch report.
    Run {
        #[command(flatten)]
        station: StationArgs,
        /// A serial device with a terminal (repeatable): /dev/ttyACM0, or any tty path.
        #[arg(long = "port", value_name = "PATH")]
        ports: Vec<PathBuf>,
        /// A terminal agent reached over TCP (repeatable), e.g. 127.0.0.1:7100 after `adb forward`.
        #[arg(long = "tcp", value_name = "ADDR")]
        tcp: Vec<String>,
    },
    /// Keep running at a station: provision each terminal as it appears on a port, until stopped
    /// (Ctrl-C) or --max terminals are done. A port is provisioned again only after it went away.
    Watch {
        #[command(flatten)]
        station: StationArgs,
        /// Device paths to watch; `*` matches in the file name (repeatable).
        #[arg(long = "glob", value_name = "PATTERN", default_values_t = ["/dev/ttyACM*".to_string(), "/dev/ttyUSB*".to_string()])]
        globs: Vec<String>,
        /// Stop after this many terminals.
        #[arg(long)]
        max: Option<usize>,
        /// How often to look for new devices, ms.
        #[arg(long, default_value_t = 500)]
        poll_ms: u64,
    },
    /// List candidate serial devices (USB CDC-ACM and USB serial).
    Ports,
}

#[derive(Args)]
struct StationArgs {
    /// The station identity (from `cactl principal add --role station`): CA URL, TLS CA, pinned
    /// PKI root, key, certificate. The key's passphrase comes from the identity's passphrase file,
    /// HSCA_KEY_PASSPHRASE, or a prompt.
    #[arg(long, env = "PROVISIONER_IDENTITY")]
    identity: PathBuf,
    /// Per-terminal deadline (e.g. 60s, 2m, 500ms).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    deadline: Duration,
    /// Production lot recorded with each terminal.
    #[arg(long)]
    lot: Option<String>,
    /// One JSON line per step on stdout instead of progress bars.
    #[arg(long)]
    json: bool,
    /// Where the batch report goes: a file (CSV, or JSON when the name ends in .json), or an
    /// existing directory to get `provisioning-<time>.csv` in it. The station's configuration
    /// sets it with PROVISIONER_REPORT. Neither: no report file (the summary is still printed).
    #[arg(long, env = "PROVISIONER_REPORT", value_name = "PATH")]
    report: Option<PathBuf>,
    /// How long to wait for one device answer (or BUSY) before retransmitting, ms.
    #[arg(long, default_value_t = 1000)]
    frame_timeout_ms: u64,
    /// Retransmissions of one frame before the link is declared dead.
    #[arg(long, default_value_t = 3)]
    retransmits: u32,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = num.parse().map_err(|_| format!("{s:?}: expected a number with a unit, e.g. 60s"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" | "min" => n * 60.0,
        _ => return Err(format!("{s:?}: unit must be ms, s or m")),
    };
    if !(secs > 0.0 && secs <= 3600.0) {
        return Err(format!("{s:?}: must be between 1 ms and 1 hour"));
    }
    Ok(Duration::from_secs_f64(secs))
}

struct Station {
    ca: GrpcCa,
    cfg: StationConfig,
    link: LinkConfig,
    display: Display,
    report: Option<PathBuf>,
    _runtime: tokio::runtime::Runtime,
}

fn station(a: &StationArgs) -> Result<Station> {
    let identity = Identity::load(&a.identity)?;
    if identity.file.role != "station" {
        bail!(
            "{} is a {} identity; the provisioner needs a station identity",
            a.identity.display(),
            identity.file.role
        );
    }
    let root_pem = identity.read_named(&identity.file.pki_root)?;
    let root = pki::pem::certificate_from_pem(&root_pem).context("the identity's pinned PKI root")?;
    let pass = identity.passphrase(proto::identity::prompt_passphrase)?;
    let signer = identity.signer(&pass)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let client = runtime
        .block_on(Client::connect(&identity, None, Box::new(signer)))
        .with_context(|| format!("connecting to the CA at {}", identity.file.server))?;
    let ca = GrpcCa::new(client, runtime.handle().clone(), Duration::from_secs(30));
    let report = a.report.as_ref().map(|p| {
        if p.is_dir() {
            let t = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            p.join(format!("provisioning-{t}.csv"))
        } else {
            p.clone()
        }
    });
    Ok(Station {
        ca,
        cfg: StationConfig { root, deadline: a.deadline, lot: a.lot.clone() },
        link: LinkConfig { frame_timeout: Duration::from_millis(a.frame_timeout_ms), max_retransmits: a.retransmits },
        display: Display::new(a.json),
        report,
        _runtime: runtime,
    })
}

fn finish(s: &Station, rows: &[Row], json: bool) -> Result<bool> {
    if let Some(path) = &s.report {
        provisioner::report::write(path, rows).with_context(|| format!("writing {}", path.display()))?;
    }
    let failed = rows.iter().filter(|r| r.outcome == "failed").count();
    if !json {
        println!("{:<24} {:<18} {:<34} {:>8}  OUTCOME", "PORT", "SERIAL", "CERTIFICATE", "MS");
        for r in rows {
            let outcome = if r.outcome == "failed" { format!("failed: {}", r.error) } else { r.outcome.clone() };
            println!("{:<24} {:<18} {:<34} {:>8}  {}", r.port, r.serial, r.certificate_serial, r.duration_ms, outcome);
        }
        let report = s.report.as_ref().map_or("none written (--report PATH)".into(), |p| p.display().to_string());
        println!("{} terminals, {} failed; report: {report}", rows.len(), failed);
    }
    Ok(failed == 0)
}

fn main() {
    let code = match real_main() {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("provisioner: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

fn real_main() -> Result<bool> {
    let cli = Cli::parse();
    match cli.command {
        Command::Ports => {
            let ports = list_ports();
            if ports.is_empty() {
                println!("no USB serial devices (ttyACM*, ttyUSB*) found");
            }
            for p in ports {
                println!("{:<16} {}", p.path.display(), p.description);
            }
            Ok(true)
        }
        Command::Run { station: args, ports, tcp } => {
            let targets: Vec<Target> =
                ports.into_iter().map(Target::Serial).chain(tcp.into_iter().map(Target::Tcp)).collect();
            if targets.is_empty() {
                bail!("name at least one terminal: --port PATH or --tcp ADDR (see `provisioner ports`)");
            }
            let s = station(&args)?;
            let rows = run_batch(&targets, &s.ca, &s.cfg, s.link, &s.display);
            finish(&s, &rows, args.json)
        }
        Command::Watch { station: args, globs, max, poll_ms } => {
            let s = station(&args)?;
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            s._runtime.spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                flag.store(true, Ordering::SeqCst);
            });
            let rows = watch(&s, &globs, max, Duration::from_millis(poll_ms), &stop);
            finish(&s, &rows, args.json)
        }
    }
}

/// Polls the globs; each new device gets a worker; a device is provisioned again only after it
/// disappeared (a terminal unplugged and another plugged in its place).
fn watch(s: &Station, globs: &[String], max: Option<usize>, poll: Duration, stop: &AtomicBool) -> Vec<Row> {
    use std::collections::HashSet;
    let rows = std::sync::Mutex::new(Vec::new());
    let started = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let mut seen: HashSet<PathBuf> = HashSet::new();
        let mut workers = Vec::new();
        s.display.println(&format!("watching {}", globs.join(" ")));
        while !stop.load(Ordering::SeqCst) {
            let present: HashSet<PathBuf> = globs.iter().flat_map(|g| glob(g)).collect();
            seen.retain(|p| present.contains(p));
            for path in present {
                if max.is_some_and(|m| started.load(Ordering::SeqCst) >= m) || !seen.insert(path.clone()) {
                    continue;
                }
                started.fetch_add(1, Ordering::SeqCst);
                let (rows, target) = (&rows, Target::Serial(path));
                workers.push(scope.spawn(move || {
                    let row = provision_target(&target, &s.ca, &s.cfg, s.link, &s.display);
                    if let Ok(mut r) = rows.lock() {
                        r.push(row);
                    }
                }));
            }
            workers.retain(|w| !w.is_finished());
            if max.is_some_and(|m| started.load(Ordering::SeqCst) >= m) && workers.is_empty() {
                break;
            }
            std::thread::sleep(poll);
        }
        for w in workers {
            let _ = w.join();
        }
    });
    rows.into_inner().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_parse_with_units_and_bad_ones_are_refused() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        for bad in ["", "s", "10h", "-5s", "0s", "2 hours", "7200s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
