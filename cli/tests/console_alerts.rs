//! The console's alerts page against the real `fleet-server`, fed by `terminal-sim fleet` with an
//! injected relocation: listed, its evidence shown and its positions drawn as SVG, acknowledged
//! through the CSRF-checked form (refused without the token), and offered to — and, when
//! forced, refused by the fleet service for — an auditor.

mod common;

use std::path::Path;
use std::process::Command;

use common::{CACTL, Console, RunningCa, RunningFleet, text};

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

    let fleet = RunningFleet::start(d, &monitor);
    let owned = fleet.args();
    let fleet_args: Vec<&str> = owned.iter().map(String::as_str).collect();
    let sim = fleet
        .simulate(
            &station,
            &[
                "--count",
                "3",
                "--interval-ms",
                "500",
                "--duration-ms",
                "6000",
                "--inject-after-ms",
                "2000",
                "--relocations",
                "1",
            ],
        )
        .wait_with_output()
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

    // The relocated terminal's page lists its alerts (acknowledged too), through the fleet
    // store's per-terminal index; `cactl alerts list --terminal` asks the same.
    let serial = acked["terminal"].as_str().expect("the alert names its terminal").to_owned();
    let (head, page) = c.get(&format!("/terminals/{serial}"), &cookie);
    assert_eq!(status(&head), 200, "{head}");
    let section = page.split("id=\"terminal-alerts\"").nth(1).unwrap_or_else(|| panic!("an alerts table: {page}"));
    assert!(section.contains("data-rule=\"relocation\"") && section.contains(&format!("/alerts/{id}\"")), "{page}");
    let of = |terminal: &str| -> Vec<serde_json::Value> {
        let out = Command::new(CACTL)
            .arg("--identity")
            .arg(operator.join("identity.toml"))
            .args(["--json", "alerts"])
            .args(&fleet_args)
            .args(["list", "--all", "--terminal", terminal])
            .output()
            .expect("cactl alerts list");
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).expect("json")
    };
    let listed = of(&serial);
    assert!(!listed.is_empty() && listed.iter().all(|a| a["terminal"] == serial.as_str()), "{listed:?}");
    assert!(of("HSTM0126110NOSUCH").is_empty(), "another terminal's alerts are not listed");

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
