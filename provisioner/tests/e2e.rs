//! The station end to end with the real binaries: `ca-server` (init, serve), `cactl` (the
//! station's identity), `terminal-sim` on real pseudo-terminals, and `provisioner`. Certificates
//! are exported from the simulators' state and checked by `openssl verify`.
//!
//! The other binaries are found next to `provisioner` (`cargo test --workspace` builds them all;
//! alone: `cargo build --workspace --bins` first).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

/// A running CA with a station identity bound to manufacturer HSTM.
struct Ca {
    dir: PathBuf,
    _server: Killed,
    identity: PathBuf,
}

impl Ca {
    fn start(dir: &Path) -> Ca {
        let ca = dir.join("ca");
        let (grpc, http) = (port(), port());
        let out = Command::new(sibling("ca-server"))
            .args(["init", "--data-dir"])
            .arg(&ca)
            .args(["--grpc", &format!("127.0.0.1:{grpc}"), "--http", &format!("127.0.0.1:{http}")])
            .output()
            .expect("init");
        assert!(out.status.success(), "{}", text(&out));
        let server = serve_ca(&ca.join("ca-server.toml"), grpc);
        let station = dir.join("station-1");
        let c = Ca { dir: ca, _server: server, identity: station.join("identity.toml") };
        let out = c.cactl(&[
            "principal",
            "add",
            "--role",
            "station",
            "--name",
            "station-1",
            "--manufacturers",
            "HSTM",
            "--out",
            station.to_str().expect("utf8"),
        ]);
        assert!(out.status.success(), "{}", text(&out));
        c
    }

    fn cactl(&self, args: &[&str]) -> Output {
        Command::new(sibling("cactl"))
            .arg("--config")
            .arg(self.dir.join("cactl.toml"))
            .args(args)
            .output()
            .expect("cactl")
    }

    /// The registry's view of a terminal: (state, active certificate).
    fn terminal(&self, serial: &str) -> Option<(String, String)> {
        let out = self.cactl(&["--json", "terminal", "show", "--serial", serial]);
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        Some((v["state"].as_str()?.to_owned(), v["active_certificate"].as_str().unwrap_or_default().to_owned()))
    }

    fn provision(&self, ports: &[&Path], extra: &[&str]) -> (Output, Vec<serde_json::Value>) {
        let report = self.dir.join(format!("report-{}.json", port()));
        let mut cmd = Command::new(PROVISIONER);
        cmd.args(["run", "--identity"]).arg(&self.identity).arg("--report").arg(&report).args(extra);
        for p in ports {
            cmd.arg("--port").arg(p);
        }
        let out = cmd.output().expect("provisioner");
        let rows = std::fs::read_to_string(&report)
            .ok()
            .and_then(|t| serde_json::from_str::<Vec<serde_json::Value>>(&t).ok())
            .unwrap_or_default();
        (out, rows)
    }
}

/// A simulated terminal on a pty, reachable at `link`.
struct Sim {
    child: Option<Killed>,
    serial: String,
    state: PathBuf,
    link: PathBuf,
}

impl Sim {
    fn start(dir: &Path, serial: &str, args: &[&str]) -> Sim {
        Self::start_at(dir, serial, &dir.join(format!("tty-{serial}")), args)
    }

    /// A terminal whose pty appears at `link` (as a device node appears when it is plugged in).
    fn start_at(dir: &Path, serial: &str, link: &Path, args: &[&str]) -> Sim {
        let state = dir.join(format!("se-{serial}"));
        let mut s = Sim { child: None, serial: serial.to_owned(), state, link: link.to_owned() };
        s.restart(args);
        s
    }

    fn restart(&mut self, args: &[&str]) {
        self.child = None;
        let mut child = Command::new(sibling("terminal-sim"))
            .args(["--serial", &self.serial, "--class", "II", "--state-dir"])
            .arg(&self.state)
            .arg("--link")
            .arg(&self.link)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("terminal-sim");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("line");
        assert!(line.contains("listening on"), "terminal-sim said {line:?}");
        self.child = Some(Killed(child));
    }

    /// Exports (certificate, public key) PEM paths from the state directory.
    fn export(&self, dir: &Path) -> Option<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{}.pem", self.serial));
        let key = dir.join(format!("{}.pub.pem", self.serial));
        let out = Command::new(sibling("terminal-sim"))
            .args(["export", "--state-dir"])
            .arg(&self.state)
            .arg("--cert-out")
            .arg(&cert)
            .arg("--public-key-out")
            .arg(&key)
            .output()
            .expect("export");
        out.status.success().then_some((cert, key))
    }
}

/// Valid serials under the default rule (check character computed by the policy's algorithm).
fn serials(n: usize, run: char) -> Vec<String> {
    let policy = pki::PolicySet::embedded_default().expect("policy");
    (0..n)
        .map(|i| {
            let body = format!("HSTM012611{run}{i:04}");
            format!("{body}{}", policy.serial_rule().check.compute(&body).expect("alphabet"))
        })
        .collect()
}

fn openssl_verify(issuing: &Path, cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["verify", "-vfyopt", "distid:1234567812345678", "-partial_chain", "-CAfile"])
        .arg(issuing)
        .arg(cert)
        .output()
        .expect("openssl");
    text(&out)
}

fn spki_of_cert(cert: &Path) -> Vec<u8> {
    let pem = std::fs::read_to_string(cert).expect("cert");
    let c = pki::pem::certificate_from_pem(&pem).expect("pem");
    der::Encode::to_der(c.tbs_certificate().subject_public_key_info()).expect("der")
}

fn spki_of_pem(key: &Path) -> Vec<u8> {
    let pem = std::fs::read_to_string(key).expect("key");
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64_decode(&b64)
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).expect("base64")
}

#[test]
fn eight_terminals_at_once_with_smart_card_latencies() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let ca = Ca::start(d);
    let sims: Vec<Sim> = serials(8, 'A').iter().map(|s| Sim::start(d, s, &[])).collect();
    let links: Vec<&Path> = sims.iter().map(|s| s.link.as_path()).collect();
    let (out, rows) = ca.provision(&links, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(rows.len(), 8, "{}", text(&out));
    let issuing = ca.dir.join("certs/issuing.pem");
    for (sim, row) in sims.iter().zip(&rows) {
        assert_eq!((row["serial"].as_str(), row["outcome"].as_str()), (Some(sim.serial.as_str()), Some("provisioned")));
        let (state, active) = ca.terminal(&sim.serial).expect("registered");
        assert_eq!(state, "provisioned");
        assert_eq!(Some(active.as_str()), row["certificate_serial"].as_str());
        let (cert, key) = sim.export(d).expect("the simulator holds a certificate");
        assert!(openssl_verify(&issuing, &cert).contains(": OK"), "{}", openssl_verify(&issuing, &cert));
        assert_eq!(spki_of_cert(&cert), spki_of_pem(&key), "the certificate certifies the SE's own key");
    }

    // Running the station again finds every terminal done: reported, nothing written twice.
    let (out, again) = ca.provision(&links, &["--json"]);
    assert!(out.status.success(), "{}", text(&out));
    for (a, b) in rows.iter().zip(&again) {
        assert_eq!(b["outcome"], "already-provisioned");
        assert_eq!(a["certificate_serial"], b["certificate_serial"]);
    }
    let steps = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("\"event\":\"step\"")).count();
    assert!(steps >= 8 * 3, "one JSON line per step: {}", text(&out));
}

/// Runs the station on a terminal started with `fault`, expects it to fail at `step` with `code`,
/// then restarts the terminal without the fault and expects a re-run to complete with exactly one
/// certificate.
fn fault_then_rerun(fault: &[&str], step: &[&str], code: &[&str], serial_run: char) {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let ca = Ca::start(d);
    let serial = serials(1, serial_run).remove(0);
    let fast = ["--keygen-ms", "0", "--sign-ms", "0", "--write-bytes-per-s", "0"];
    let mut sim = Sim::start(d, &serial, &[&fast[..], fault].concat());
    let station = ["--frame-timeout-ms", "300", "--retransmits", "2"];
    let (out, rows) = ca.provision(&[&sim.link], &station);
    assert_eq!(out.status.code(), Some(1), "{fault:?} must fail: {}", text(&out));
    assert!(step.contains(&rows[0]["failed_step"].as_str().unwrap_or_default()), "{fault:?}: {}", text(&out));
    assert!(code.contains(&rows[0]["code"].as_str().unwrap_or_default()), "{fault:?}: {}", text(&out));
    if let Some((state, _)) = ca.terminal(&serial) {
        assert_ne!(state, "provisioned", "no confirmed record after a failure");
    }
    // The device is untouched: no certificate in it.
    assert!(sim.export(d).is_none(), "{fault:?} left a certificate in the device");

    sim.restart(&fast);
    let (out, rows) = ca.provision(&[&sim.link], &station);
    assert!(out.status.success(), "re-run after {fault:?}: {}", text(&out));
    assert_eq!(rows[0]["outcome"], "provisioned");
    let (state, active) = ca.terminal(&serial).expect("registered");
    assert_eq!((state.as_str(), Some(active.as_str())), ("provisioned", rows[0]["certificate_serial"].as_str()));
    let (cert, _) = sim.export(d).expect("exported");
    let issuing = ca.dir.join("certs/issuing.pem");
    assert!(openssl_verify(&issuing, &cert).contains(": OK"));
}

#[test]
fn unplugged_mid_chain_then_rerun_completes() {
    // Commands: 1 HELLO, 2 GEN_KEY, 3 GET_CSR, 4 PUT_ROOT, 5 PUT_CHAIN, 6 COMMIT, … The answer to
    // the last command before an unplug may or may not reach the station.
    fault_then_rerun(&["--drop-after-step", "5"], &["PUT_CHAIN", "COMMIT"], &["DEVICE_TIMEOUT", "LINK_FAILED"], 'B');
}

#[test]
fn chain_rejected_by_the_device_then_rerun_completes() {
    fault_then_rerun(&["--reject-chain"], &["COMMIT"], &["CHAIN_INVALID"], 'C');
}

#[test]
fn power_cut_during_commit_leaves_the_old_state() {
    fault_then_rerun(&["--power-cut-on-commit"], &["COMMIT"], &["DEVICE_TIMEOUT", "LINK_FAILED"], 'D');
}

#[test]
fn a_corrupted_frame_is_retransmitted_and_provisioning_succeeds() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let ca = Ca::start(d);
    let serial = serials(1, 'E').remove(0);
    let sim = Sim::start(d, &serial, &["--corrupt-step", "3", "--keygen-ms", "0", "--sign-ms", "0"]);
    let (out, rows) = ca.provision(&[&sim.link], &["--frame-timeout-ms", "300"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(rows[0]["outcome"], "provisioned");
}

#[test]
fn a_tampered_terminal_is_reported_and_never_provisioned() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let ca = Ca::start(d);
    let serial = serials(1, 'F').remove(0);
    let mut sim = Sim::start(d, &serial, &["--tamper-after-step", "2", "--keygen-ms", "0", "--sign-ms", "0"]);
    let (out, rows) = ca.provision(&[&sim.link], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!((rows[0]["failed_step"].as_str(), rows[0]["code"].as_str()), (Some("GET_CSR"), Some("TAMPERED")));
    sim.restart(&[]);
    let (out, rows) = ca.provision(&[&sim.link], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!((rows[0]["failed_step"].as_str(), rows[0]["code"].as_str()), (Some("HELLO"), Some("TAMPERED")));
    assert!(sim.export(d).is_none());
    assert_eq!(ca.terminal(&serial), None, "nothing was issued for a tampered terminal");
}

#[test]
fn the_deadline_abandons_a_slow_terminal_and_the_ca_holds_no_confirmation() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let ca = Ca::start(d);
    let serial = serials(1, 'G').remove(0);
    let mut sim = Sim::start(d, &serial, &["--slow-ms", "700", "--keygen-ms", "0", "--sign-ms", "0"]);
    let started = Instant::now();
    let (out, rows) = ca.provision(&[&sim.link], &["--deadline", "3s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(rows[0]["code"], "DEADLINE_EXCEEDED", "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(20));
    if let Some((state, _)) = ca.terminal(&serial) {
        assert_ne!(state, "provisioned");
    }
    assert!(sim.export(d).is_none());
    // At full speed the same terminal completes, with the certificate already issued to it.
    sim.restart(&["--keygen-ms", "0", "--sign-ms", "0"]);
    let (out, rows) = ca.provision(&[&sim.link], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(rows[0]["outcome"], "provisioned");
}

#[test]
fn over_tcp_and_in_watch_mode() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let ca = Ca::start(d);
    let serials = serials(3, 'H');
    let fast = ["--keygen-ms", "0", "--sign-ms", "0", "--write-bytes-per-s", "0"];

    // A terminal agent reached over TCP (as through `adb forward`).
    let mut child = Command::new(sibling("terminal-sim"))
        .args(["--serial", &serials[0], "--tcp", "127.0.0.1:0", "--state-dir"])
        .arg(d.join("se-tcp"))
        .args(fast)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("terminal-sim");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("line");
    let _tcp_sim = Killed(child);
    let addr = line.trim().rsplit(' ').next().expect("address").to_owned();
    let report = d.join("tcp.csv");
    let out = Command::new(PROVISIONER)
        .args(["run", "--identity"])
        .arg(&ca.identity)
        .args(["--tcp", &addr, "--report"])
        .arg(&report)
        .output()
        .expect("provisioner");
    assert!(out.status.success(), "{}", text(&out));
    let csv = std::fs::read_to_string(&report).expect("csv report");
    assert!(csv.starts_with("port,serial,certificate_serial,duration_ms,outcome"), "{csv}");
    assert!(csv.contains(&format!("tcp:{addr},{},", serials[0])) && csv.contains(",provisioned,"), "{csv}");
    assert_eq!(ca.terminal(&serials[0]).map(|t| t.0), Some("provisioned".into()));

    // A station left running: terminals plugged in after it started are provisioned as they appear.
    let watcher = Command::new(PROVISIONER)
        .args(["watch", "--identity"])
        .arg(&ca.identity)
        .arg("--glob")
        .arg(d.join("plug-*"))
        .args(["--max", "2", "--poll-ms", "100", "--json", "--report"])
        .arg(d.join("watch.json"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("watch");
    std::thread::sleep(Duration::from_millis(300));
    let _plugged: Vec<Sim> =
        serials[1..].iter().map(|s| Sim::start_at(d, s, &d.join(format!("plug-{s}")), &fast)).collect();
    let out = watcher.wait_with_output().expect("watch ends after --max");
    assert!(out.status.success(), "{}", text(&out));
    for s in &serials[1..] {
        assert_eq!(ca.terminal(s).map(|t| t.0), Some("provisioned".into()), "{}", text(&out));
    }
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"event\":\"done\""), "{}", text(&out));
}

#[test]
fn the_report_is_written_only_where_the_station_says() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let ca = Ca::start(d);
    // A terminal agent that is not there: the run fails for it, quickly, and still reports.
    let gone = format!("127.0.0.1:{}", port());
    let run = |cwd: &Path, extra: &[&str], env: Option<&Path>| {
        let mut cmd = Command::new(PROVISIONER);
        cmd.current_dir(cwd).args(["run", "--identity"]).arg(&ca.identity).args(["--tcp", &gone]).args(extra);
        cmd.env_remove("PROVISIONER_REPORT");
        if let Some(dir) = env {
            cmd.env("PROVISIONER_REPORT", dir);
        }
        let out = cmd.output().expect("provisioner");
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        text(&out)
    };
    let files = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    };

    let cwd = d.join("cwd");
    std::fs::create_dir(&cwd).expect("mkdir");
    let out = run(&cwd, &[], None);
    assert!(out.contains("report: none written"), "{out}");
    assert_eq!(files(&cwd), Vec::<String>::new(), "nothing left in the working directory");

    let report = d.join("batch.csv");
    run(&cwd, &["--report", report.to_str().expect("utf8")], None);
    let csv = std::fs::read_to_string(&report).expect("report where --report said");
    assert!(csv.contains(&format!("tcp:{gone},")) && csv.contains(",failed,"), "{csv}");

    // The station's configuration names a directory: a timestamped report lands there.
    let reports = d.join("reports");
    std::fs::create_dir(&reports).expect("mkdir");
    run(&cwd, &[], Some(&reports));
    let names = files(&reports);
    assert!(names.len() == 1 && names[0].starts_with("provisioning-") && names[0].ends_with(".csv"), "{names:?}");
    assert_eq!(files(&cwd), Vec::<String>::new());
}
