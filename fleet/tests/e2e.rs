//! End to end with the real binaries: `ca-server`, `fleet-server`, `terminal-sim fleet` and
//! `cactl`. Twenty simulated terminals heartbeat once a second; two of each anomaly are injected;
//! fleet-server is restarted mid-run. Scored: every injection alerted with its rule, no alert on
//! a terminal nothing was injected into, no clone alert from the restart, tamper revoked
//! (OCSP says so) and the tampered SE can no longer sign.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const FLEET: &str = env!("CARGO_BIN_EXE_fleet-server");

fn sibling(name: &str) -> PathBuf {
    let p = Path::new(FLEET).with_file_name(name);
    assert!(p.exists(), "{} not built: cargo build -p ca-server -p cli -p terminal-sim", p.display());
    p
}

use registry::testing::free_port as port;

fn ok(out: Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn serve(exe: &Path, config: &Path, http: u16) -> Self {
        let mut serve = Command::new(exe);
        serve.args(["serve", "--config"]).arg(config);
        Self(registry::testing::spawn_listening(&mut serve, http).unwrap_or_else(|e| panic!("{e}")))
    }

    /// SIGTERM, as an operator stops it, and wait.
    fn terminate(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

/// `fleet-server init` in `d/fleet` as the principal `d/fleet-1`, on free ports (gRPC, HTTP),
/// with a 1 s heartbeat interval and relocations sustained over 2 heartbeats: a test's pace.
fn init_fleet(d: &Path) -> (u16, u16, PathBuf) {
    let (grpc, http) = (port(), port());
    let fleet_dir = d.join("fleet");
    ok(Command::new(FLEET)
        .args(["init", "--data-dir"])
        .arg(&fleet_dir)
        .arg("--ca-identity")
        .arg(d.join("fleet-1/identity.toml"))
        .args(["--grpc", &format!("127.0.0.1:{grpc}"), "--http", &format!("127.0.0.1:{http}")])
        .output()
        .expect("fleet-server init"));
    let rules = fleet_dir.join("policies/fleet.toml");
    edit(&rules, "interval_seconds = 60", "interval_seconds = 1");
    edit(&rules, "sustained_heartbeats = 3", "sustained_heartbeats = 2");
    (grpc, http, fleet_dir)
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).expect("read");
    assert!(text.contains(from), "{from}");
    std::fs::write(path, text.replacen(from, to, 1)).expect("write");
}

#[test]
fn injected_anomalies_are_found_and_normal_traffic_and_a_restart_raise_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let (ca_grpc, ca_http) = (port(), port());
    ok(Command::new(sibling("ca-server"))
        .args(["init", "--data-dir"])
        .arg(d.join("ca"))
        .args(["--grpc", &format!("127.0.0.1:{ca_grpc}"), "--http", &format!("127.0.0.1:{ca_http}")])
        .output()
        .expect("ca-server init"));
    let _ca = Proc::serve(&sibling("ca-server"), &d.join("ca/ca-server.toml"), ca_http);
    let cactl = |args: &[&str]| Command::new(sibling("cactl")).args(args).output().expect("cactl");
    let admin = d.join("ca/cactl.toml");
    let admin = admin.to_str().expect("utf8");
    for (role, name, extra) in [
        ("station", "station-1", Some("HSTM")),
        ("monitor", "fleet-1", None),
        ("operator", "operator-1", None),
        ("auditor", "auditor-1", None),
    ] {
        let out = d.join(name);
        let mut args = vec![
            "--config",
            admin,
            "principal",
            "add",
            "--role",
            role,
            "--name",
            name,
            "--out",
            out.to_str().expect("utf8"),
        ];
        if let Some(m) = extra {
            args.extend(["--manufacturers", m]);
        }
        ok(cactl(&args));
    }

    let (grpc, http, fleet_dir) = init_fleet(d);
    let config = fleet_dir.join("fleet-server.toml");
    let (hook_url, delivered) = webhook_receiver();
    // The CA's CRL again every 2 s (revocation status for all terminals at once).
    edit(&config, "crl_refresh_seconds = 30", "crl_refresh_seconds = 2");
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str(&format!("\n[webhook]\nurl = \"{hook_url}\"\n"));
    std::fs::write(&config, text).expect("config");
    let mut fleet = Proc::serve(Path::new(FLEET), &config, http);

    let tls_ca = fleet_dir.join("tls/ca.pem");
    let mut sim = Command::new(sibling("terminal-sim"))
        .arg("fleet")
        .arg("--station")
        .arg(d.join("station-1/identity.toml"))
        .args(["--fleet", &format!("https://127.0.0.1:{grpc}")])
        .arg("--fleet-tls-ca")
        .arg(&tls_ca)
        .args(["--count", "20", "--interval-ms", "1000", "--duration-ms", "14000", "--inject-after-ms", "5000"])
        .args(["--clones", "2", "--relocations", "2", "--counterfeits", "2", "--tampers", "2", "--silences", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("terminal-sim fleet");
    let lines = BufReader::new(sim.stdout.take().expect("stdout"));
    let mut events = Vec::new();
    let mut restarted = false;
    for line in lines.lines() {
        let line = line.expect("line");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
        if v["event"] == "enrolled" && !restarted {
            // Two heartbeats in, restart the service: the counters it kept must hold.
            std::thread::sleep(Duration::from_millis(2500));
            fleet.terminate();
            fleet = Proc::serve(Path::new(FLEET), &config, http);
            restarted = true;
        }
        events.push(v);
    }
    assert!(sim.wait().expect("wait").success());
    assert!(restarted);
    // The run is over: every terminal falls silent now. Restarted, the service gives them
    // missed_intervals from its start, so what is read next is what the run raised.
    fleet.terminate();
    fleet = Proc::serve(Path::new(FLEET), &config, http);
    let injected: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["event"] == "inject")
        .map(|e| (e["kind"].as_str().expect("kind").to_owned(), e["terminal"].as_str().expect("t").to_owned()))
        .collect();
    assert_eq!(injected.len(), 10, "{events:?}");
    let summary = events.iter().find(|e| e["event"] == "summary").expect("summary");
    assert!(summary["accepted"].as_u64().expect("n") > 150, "{summary}");

    let alerts_as = |who: &str, extra: &[&str]| {
        let mut args: Vec<String> = vec![
            "--identity".into(),
            d.join(format!("{who}/identity.toml")).to_str().expect("u").to_owned(),
            "--json".into(),
            "alerts".into(),
        ];
        args.extend([
            "--fleet".into(),
            format!("https://127.0.0.1:{grpc}"),
            "--fleet-tls-ca".into(),
            tls_ca.to_str().expect("u").into(),
        ]);
        args.extend(extra.iter().map(|s| s.to_string()));
        Command::new(sibling("cactl")).args(&args).output().expect("cactl alerts")
    };
    let alerts_cmd = |extra: &[&str]| alerts_as("operator-1", extra);
    let alerts: Vec<serde_json::Value> = serde_json::from_str(&ok(alerts_cmd(&["list", "--all"]))).expect("json");
    let rules_of = |terminal: &str| -> Vec<String> {
        alerts
            .iter()
            .filter(|a| a["terminal"] == terminal)
            .map(|a| a["rule"].as_str().expect("rule").to_owned())
            .collect()
    };
    // Every injection is alerted with its own rule.
    for (kind, terminal) in &injected {
        assert!(rules_of(terminal).contains(kind), "{kind} on {terminal} not found: {alerts:#?}");
    }
    // Nothing on any terminal nothing was injected into (normal traffic, and the restart).
    for a in &alerts {
        let t = a["terminal"].as_str().expect("t");
        assert!(injected.iter().any(|(_, i)| i == t), "false alert: {a:#}");
    }
    // The clones' and the tampers' actions reached the CA.
    for a in alerts.iter().filter(|a| a["rule"] == "tamper") {
        assert_eq!(a["action"], "revoke: done", "{a:#}");
    }
    for a in alerts.iter().filter(|a| a["rule"] == "clone") {
        assert_eq!(a["action"], "hold: done", "{a:#}");
    }
    // Evidence is the first occurrence's, or {first, latest} once an alert repeats.
    let first = |a: &serde_json::Value| {
        let e = &a["evidence"];
        if e.get("first").is_some() { e["first"].clone() } else { e.clone() }
    };
    let relocation = alerts.iter().find(|a| a["rule"] == "relocation").expect("relocation");
    assert!(first(relocation)["distance_km"].as_f64().expect("km") > 50.0, "{relocation:#}");
    let counterfeit =
        alerts.iter().find(|a| a["rule"] == "counterfeit" && first(a)["refusal"] == "HEARTBEAT_CERT_NOT_OURS");
    assert_eq!(
        counterfeit.unwrap_or_else(|| panic!("a self-made CA's certificate: {alerts:#?}"))["address"],
        "127.0.0.1"
    );

    // A tampered SE cannot sign again, and the CA's OCSP responder says its certificate is revoked.
    let tampered: Vec<&String> = injected.iter().filter(|(k, _)| k == "tamper").map(|(_, t)| t).collect();
    for t in &tampered {
        assert!(events.iter().any(|e| e["event"] == "sign_refused" && e["terminal"] == t.as_str()), "{t} still signs");
        let cert = events.iter().find(|e| e["event"] == "inject" && e["terminal"] == t.as_str()).expect("inject")["certificate"]
            .as_str()
            .expect("serial")
            .to_owned();
        let pem = d.join(format!("{t}.pem"));
        std::fs::write(&pem, certificate_pem(&d.join("operator-1/identity.toml"), &cert)).expect("write");
        let verify = cactl(&["--config", admin, "verify", "--cert", pem.to_str().expect("u"), "--ocsp"]);
        let text = String::from_utf8_lossy(&verify.stdout).to_lowercase();
        assert_eq!(verify.status.code(), Some(1), "{text}");
        assert!(text.contains("revoked") && text.contains("keycompromise"), "{text}");
    }

    // Acknowledged, an alert leaves the open list.
    let first = alerts.last().expect("an alert")["id"].as_u64().expect("id").to_string();
    let acked: serde_json::Value =
        serde_json::from_str(&ok(alerts_cmd(&["ack", &first, "--note", "seen on site"]))).expect("json");
    assert_eq!((acked["acknowledged"].as_bool(), acked["acknowledged_by"].as_str()), (Some(true), Some("operator-1")));
    let open: Vec<serde_json::Value> = serde_json::from_str(&ok(alerts_cmd(&["list"]))).expect("json");
    assert!(open.iter().all(|a| a["id"].as_u64().map(|i| i.to_string()) != Some(first.clone())));
    // An auditor reads but cannot acknowledge; a station and the monitor cannot even read.
    assert!(ok(alerts_as("auditor-1", &["show", &first])).contains("seen on site"));
    for (who, args) in [("auditor-1", vec!["ack", "1"]), ("station-1", vec!["list"]), ("fleet-1", vec!["list"])] {
        let out = alerts_as(who, &args);
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{who}: {text}");
        assert!(text.contains("ROLE_FORBIDDEN"), "{who}: {text}");
    }
    // Every new alert was POSTed to the webhook.
    let posted = delivered.lock().expect("lock").clone();
    for kind in ["clone", "relocation", "counterfeit", "tamper", "silent"] {
        assert!(posted.iter().any(|b| b.contains(&format!("\"rule\":\"{kind}\""))), "{kind} not posted: {posted:?}");
    }
    // /metrics counts them.
    let metrics = http_get(http, "/metrics");
    assert!(metrics.contains("fleet_alerts_total{rule=\"tamper\"}"), "{metrics}");
    // The real CA's CRL verified and is in use: no per-certificate calls to the CA.
    assert!(metrics.contains("fleet_crl_stale 0"), "{metrics}");
    let crl_number = metrics.lines().find_map(|l| l.strip_prefix("fleet_crl_number ")).expect("crl number");
    assert!(crl_number.parse::<u64>().expect("number") > 0, "{metrics}");
    assert!(metrics.contains("fleet_ca_failures_total 0"), "{metrics}");
    fleet.terminate();
}

/// The certificate `serial` as the CA holds it (PEM), asked as `identity`.
fn certificate_pem(identity: &Path, serial: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let id = proto::identity::Identity::load(identity).expect("identity");
        let pass = id.passphrase(|| None).expect("passphrase");
        let c =
            proto::client::Client::connect(&id, None, Box::new(id.signer(&pass).expect("key"))).await.expect("connect");
        let req = proto::v1::GetCertificateRequest {
            request_id: proto::client::request_id(),
            certificate_serial: serial.into(),
        };
        let info = proto::v1::certificate_authority_client::CertificateAuthorityClient::new(c.channel.clone())
            .get_certificate(c.signed("/hsca.v1.CertificateAuthority/GetCertificate", req).expect("sign"))
            .await
            .expect("certificate")
            .into_inner();
        pki::pem::der_to_pem("CERTIFICATE", &info.certificate_der).expect("pem")
    })
}

/// A webhook receiver answering 204 to every POST; its URL and the bodies received.
fn webhook_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/alerts", listener.local_addr().expect("addr"));
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = bodies.clone();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let body = loop {
                let Ok(n) = s.read(&mut chunk) else { break None };
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                let Some(end) = text.find("\r\n\r\n") else { continue };
                let len = text
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break Some(String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned());
                }
            };
            let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
            if let (Some(b), Ok(mut v)) = (body, sink.lock()) {
                v.push(b);
            }
        }
    });
    (url, bodies)
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

/// Issue 14 item 3: the activation is the terminal's reference location. Three terminals are
/// enrolled and provisioned, then (before any heartbeat) one is activated where it stands, one
/// ~111 km from where it will heartbeat, and one not at all; the service reads the CA's
/// activation log, then the terminals go live. Only the second is relocated — from its very
/// first heartbeat, against the activation's place; the unactivated one takes its first position
/// (the behaviour kept without an activation).
#[test]
fn a_terminal_activated_elsewhere_is_relocated_from_its_first_heartbeat() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let (ca_grpc, ca_http) = (port(), port());
    ok(Command::new(sibling("ca-server"))
        .args(["init", "--data-dir"])
        .arg(d.join("ca"))
        .args(["--grpc", &format!("127.0.0.1:{ca_grpc}"), "--http", &format!("127.0.0.1:{ca_http}")])
        .output()
        .expect("ca-server init"));
    let _ca = Proc::serve(&sibling("ca-server"), &d.join("ca/ca-server.toml"), ca_http);
    let cactl = |args: &[&str]| Command::new(sibling("cactl")).args(args).output().expect("cactl");
    let admin = d.join("ca/cactl.toml");
    let admin = admin.to_str().expect("utf8");
    for (role, name, makers) in
        [("station", "station-1", "HSTM"), ("monitor", "fleet-1", ""), ("operator", "operator-1", "")]
    {
        let out = d.join(name);
        let mut args = vec!["--config", admin, "principal", "add", "--role", role, "--name", name];
        args.extend(["--out", out.to_str().expect("utf8")]);
        if !makers.is_empty() {
            args.extend(["--manufacturers", makers]);
        }
        ok(cactl(&args));
    }
    let (grpc, http, fleet_dir) = init_fleet(d);
    let config = fleet_dir.join("fleet-server.toml");
    edit(&config, "activation_refresh_seconds = 30", "activation_refresh_seconds = 1");
    let mut fleet = Proc::serve(Path::new(FLEET), &config, http);

    let tls_ca = fleet_dir.join("tls/ca.pem");
    let go = d.join("installed");
    // Killed on drop: it waits for `go`, which a failing test never writes.
    let mut sim = Proc(
        Command::new(sibling("terminal-sim"))
            .arg("fleet")
            .arg("--station")
            .arg(d.join("station-1/identity.toml"))
            .args(["--fleet", &format!("https://127.0.0.1:{grpc}")])
            .arg("--fleet-tls-ca")
            .arg(&tls_ca)
            .args(["--count", "3", "--interval-ms", "1000", "--duration-ms", "5000"])
            .arg("--confirm")
            .arg("--start-when")
            .arg(&go)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("terminal-sim fleet"),
    );
    let mut lines = BufReader::new(sim.0.stdout.take().expect("stdout")).lines();
    let enrolled: serde_json::Value =
        serde_json::from_str(&lines.next().expect("enrolled line").expect("line")).expect("json");
    assert_eq!(enrolled["event"], "enrolled", "{enrolled}");
    let terminal = |i: usize| {
        let t = &enrolled["terminals"][i];
        let home = (t["home"][0].as_f64().expect("lat"), t["home"][1].as_f64().expect("lon"));
        (t["serial"].as_str().expect("serial").to_owned(), home)
    };
    let ((at_home, home0), (moved, home1), (never_activated, _)) = (terminal(0), terminal(1), terminal(2));
    let activated_at = (home1.0 - 1.0, home1.1); // ~111 km south of where it will heartbeat
    for (serial, institution, (lat, lon)) in
        [(&at_home, "No. 1 Hospital", home0), (&moved, "No. 2 Hospital", activated_at)]
    {
        let position = format!("{lat},{lon}");
        ok(cactl(&[
            "--config",
            admin,
            "terminal",
            "activate",
            "--manual",
            "--serial",
            serial,
            "--institution",
            institution,
            "--position",
            &position,
        ]));
    }
    // The service reads the activation log (every second here) before the terminals go live.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http_get(http, "/metrics").contains("fleet_activation_seq 2\n") {
        assert!(Instant::now() < deadline, "{}", http_get(http, "/metrics"));
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(&go, b"").expect("go");
    let events: Vec<serde_json::Value> =
        lines.map(|l| serde_json::from_str(&l.expect("line")).expect("json")).collect();
    assert!(sim.0.wait().expect("wait").success());
    let summary = events.iter().find(|e| e["event"] == "summary").expect("summary");
    assert!(summary["accepted"].as_u64().expect("n") >= 9, "{summary}");

    let out = Command::new(sibling("cactl"))
        .arg("--identity")
        .arg(d.join("operator-1/identity.toml"))
        .args(["--json", "alerts", "--fleet", &format!("https://127.0.0.1:{grpc}"), "--fleet-tls-ca"])
        .arg(&tls_ca)
        .args(["list", "--all"])
        .output()
        .expect("cactl alerts");
    let alerts: Vec<serde_json::Value> = serde_json::from_str(&ok(out)).expect("json");
    // The run has ended: silence is the one thing every terminal may have earned since.
    let raised: Vec<&serde_json::Value> = alerts.iter().filter(|a| a["rule"] != "silent").collect();
    assert_eq!(raised.len(), 1, "{raised:#?}");
    let a = raised[0];
    assert_eq!((a["rule"].as_str(), a["terminal"].as_str()), (Some("relocation"), Some(moved.as_str())), "{a:#}");
    let e = if a["evidence"].get("first").is_some() { a["evidence"]["first"].clone() } else { a["evidence"].clone() };
    assert_eq!(e["reference"], serde_json::json!([activated_at.0, activated_at.1]), "{e:#}");
    assert_eq!(e["position"], serde_json::json!([home1.0, home1.1]), "{e:#}");
    assert_eq!(e["reference_from"]["kind"], "activation", "{e:#}");
    assert_eq!(e["reference_from"]["institution"], "No. 2 Hospital", "{e:#}");
    assert_eq!(e["reference_from"]["method"], "manual", "{e:#}");
    assert_eq!(e["heartbeats_outside"], 2, "the policy's sustained heartbeats: {e:#}");
    assert!(e["distance_km"].as_f64().expect("km") > 100.0, "{e:#}");
    assert!(!alerts.iter().any(|a| a["terminal"] == never_activated && a["rule"] == "relocation"));

    // The cursor is the service's own: restarted, it reads on from 2, not from the start.
    let metrics = http_get(http, "/metrics");
    assert!(metrics.contains("fleet_activation_failures_total 0"), "{metrics}");
    fleet.terminate();
    fleet = Proc::serve(Path::new(FLEET), &config, http);
    assert!(http_get(http, "/metrics").contains("fleet_activation_seq 2\n"));
    fleet.terminate();
}
