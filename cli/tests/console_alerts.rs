//! The console's alerts page against the real `fleet-server`, fed by `terminal-sim fleet` with an
//! injected relocation: listed, its evidence shown and its positions drawn as SVG, acknowledged
//! through the CSRF-checked form (refused without the token), and offered to — and, when
//! forced, refused by the fleet service for — an auditor.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{CACTL, Console, RunningCa, Serving, port, text};

fn sibling(name: &str) -> PathBuf {
    let p = Path::new(CACTL).with_file_name(name);
    assert!(
        p.exists(),
        "{} not built: cargo build -p fleet -p terminal-sim (cargo test --workspace does)",
        p.display()
    );
    p
}

fn status(head: &str) -> u16 {
    head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status line")
}

fn login(c: &Console) -> String {
    let (head, _) = c.get(&c.login_path(), "");
    assert_eq!(status(&head), 303, "{head}");
    let pair = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|v| v.split(';').next())
        .expect("session cookie");
    format!("Cookie: {pair}\r\n")
}

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + "name=\"csrf\" value=\"".len();
    page[at..].split('"').next().expect("value").to_owned()
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).expect("read");
    assert!(text.contains(from), "{from}");
    std::fs::write(path, text.replacen(from, to, 1)).expect("write");
}

/// `cactl alerts show ID --json` as `identity`.
fn show(identity: &Path, fleet: &[&str], id: &str) -> serde_json::Value {
    let out = Command::new(CACTL)
        .arg("--identity")
        .arg(identity)
        .args(["--json", "alerts"])
        .args(fleet)
        .args(["show", id])
        .output()
        .expect("cactl alerts show");
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn alerts_from_a_real_fleet_service() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let ca = RunningCa::init(d);
    let (station, _) = ca.add_principal(d, "station", "station-1", &["HSTM"]);
    let (monitor, _) = ca.add_principal(d, "monitor", "fleet-1", &[]);
    let (operator, _) = ca.add_principal(d, "operator", "operator-1", &[]);
    let (auditor, _) = ca.add_principal(d, "auditor", "auditor-1", &[]);

    let (grpc, http) = (port(), port());
    let fleet_dir = d.join("fleet");
    let init = Command::new(sibling("fleet-server"))
        .args(["init", "--data-dir"])
        .arg(&fleet_dir)
        .arg("--ca-identity")
        .arg(monitor.join("identity.toml"))
        .args(["--grpc", &format!("127.0.0.1:{grpc}"), "--http", &format!("127.0.0.1:{http}")])
        .output()
        .expect("fleet-server init");
    assert!(init.status.success(), "{}", text(&init));
    edit(&fleet_dir.join("policies/fleet.toml"), "sustained_heartbeats = 3", "sustained_heartbeats = 2");
    let _fleet = Serving(
        Command::new(sibling("fleet-server"))
            .args(["serve", "--config"])
            .arg(fleet_dir.join("fleet-server.toml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("fleet-server serve"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
        assert!(Instant::now() < deadline, "fleet-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let tls_ca = fleet_dir.join("tls/ca.pem");
    let url = format!("https://127.0.0.1:{grpc}");
    let fleet_args = ["--fleet", url.as_str(), "--fleet-tls-ca", tls_ca.to_str().expect("utf8")];
    let sim = Command::new(sibling("terminal-sim"))
        .arg("fleet")
        .arg("--station")
        .arg(station.join("identity.toml"))
        .args(["--fleet", &url])
        .arg("--fleet-tls-ca")
        .arg(&tls_ca)
        .args(["--count", "3", "--interval-ms", "500", "--duration-ms", "6000", "--inject-after-ms", "2000"])
        .args(["--relocations", "1"])
        .stderr(Stdio::inherit())
        .output()
        .expect("terminal-sim fleet");
    assert!(sim.status.success(), "{}", text(&sim));

    // The operator: open alerts by rule on the overview, the list, one alert with its map.
    let c = Console::start_with(&operator.join("identity.toml"), &fleet_args);
    let cookie = login(&c);
    let (head, overview) = c.get("/", &cookie);
    assert_eq!(status(&head), 200, "{head}");
    assert!(overview.contains("id=\"alerts-by-rule\"") && overview.contains("data-key=\"relocation\""), "{overview}");
    let (head, list) = c.get("/alerts?rule=relocation", &cookie);
    assert_eq!(status(&head), 200, "{head}\n{list}");
    let id = list
        .split("data-id=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("a relocation alert listed: {list}"))
        .to_owned();
    let (head, page) = c.get(&format!("/alerts/{id}"), &cookie);
    assert_eq!(status(&head), 200, "{head}");
    assert!(page.contains("<svg id=\"relocation\""), "{page}");
    assert!(page.contains("id=\"reference\"") && page.contains("class=\"reported\""), "{page}");
    assert!(page.contains("id=\"evidence\"") && page.contains("distance_km"), "{page}");
    assert!(page.contains("id=\"ack\""), "the operator is offered the acknowledgement: {page}");

    // Without the CSRF token the console refuses the form, and the alert stays open.
    let (head, body) = c.post(&format!("/alerts/{id}/ack"), &cookie, "note=forged");
    assert_eq!(status(&head), 403, "{head}\n{body}");
    assert!(body.contains("CSRF"), "{body}");
    assert_eq!(show(&operator.join("identity.toml"), &fleet_args, &id)["acknowledged"], false);
    let form = format!("csrf={}&note=seen+on+site", csrf_of(&page));
    let (head, _) = c.post(&format!("/alerts/{id}/ack"), &cookie, &form);
    assert_eq!(status(&head), 303, "{head}");
    let acked = show(&operator.join("identity.toml"), &fleet_args, &id);
    assert_eq!((acked["acknowledged"].as_bool(), acked["acknowledged_by"].as_str()), (Some(true), Some("operator-1")));
    assert_eq!(acked["note"], "seen on site");
    let (_, page) = c.get(&format!("/alerts/{id}"), &cookie);
    assert!(page.contains("operator-1") && !page.contains("id=\"ack\""), "{page}");

    // The auditor reads alerts but is not offered the acknowledgement; forced, the fleet
    // service refuses it with its stable reason.
    let a = Console::start_with(&auditor.join("identity.toml"), &fleet_args);
    let cookie = login(&a);
    let (head, page) = a.get(&format!("/alerts/{id}"), &cookie);
    assert_eq!(status(&head), 200, "{head}");
    assert!(page.contains("<svg id=\"relocation\"") && !page.contains("id=\"ack\""), "{page}");
    let (head, body) = a.post(&format!("/alerts/{id}/ack"), &cookie, &format!("csrf={}&note=auditor", csrf_of(&page)));
    assert_eq!(status(&head), 403, "{head}");
    assert!(body.contains("ROLE_FORBIDDEN"), "{body}");
    assert_eq!(show(&operator.join("identity.toml"), &fleet_args, &id)["note"], "seen on site");
    drop(ca);
}
