//! `cactl console` in a real browser: Debian's headless Chromium driven over WebDriver against the
//! real `ca-server`. Opens the one-time URL, checks the overview against the registry (`cactl
//! terminal list --json`), finds a terminal by serial and revokes it, asks for a bulk revocation,
//! is refused approving it as its requester and approves it as a second administrator in a second
//! browser, switches language, and is refused without the session. Alerts come from a real
//! `fleet-server` fed by `terminal-sim fleet` (one relocation, one counterfeit): listed, the
//! relocation drawn, one acknowledged in the browser. Screenshots of every page at 1366×768 go to
//! `target/console-screenshots/`.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::webdriver::Driver;
use common::{Console, RunningCa, RunningFleet, issue, text};

fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

/// The PNG's width and height (IHDR).
fn png_size(path: &std::path::Path) -> (u32, u32) {
    let b = std::fs::read(path).expect("png");
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    (be(16), be(20))
}

#[test]
fn console_in_headless_chromium() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let ca = RunningCa::init(d);
    let (station, _) = ca.add_principal(d, "station", "station-1", &["HSTM"]);
    let (monitor, _) = ca.add_principal(d, "monitor", "fleet-1", &[]);
    let fleet = RunningFleet::start(d, &monitor);
    // Two more terminals heartbeat (one moved 55 km, one counterfeited) while these are issued.
    let sim = fleet.simulate(
        &station,
        &[
            "--count",
            "2",
            "--first-sequence",
            "100",
            "--interval-ms",
            "400",
            "--duration-ms",
            "3600",
            "--inject-after-ms",
            "1200",
            "--relocations",
            "1",
            "--counterfeits",
            "1",
        ],
    );
    let t1 = issue(&ca, d, &station, "HSTM01261100000K", "L1");
    let t2 = issue(&ca, d, &station, "HSTM01261100001I", "L2");
    let t3 = issue(&ca, d, &station, "HSTM01261100002G", "L2");
    let reg = ca.admin(&["terminal", "register", "--serial", "HSTM01261100003E", "--class", "III"]);
    assert!(reg.status.success(), "{}", text(&reg));

    let sim = sim.wait_with_output().expect("terminal-sim fleet");
    assert!(sim.status.success(), "{}", text(&sim));

    let fleet_args = fleet.args();
    let fleet_args: Vec<&str> = fleet_args.iter().map(String::as_str).collect();
    let first = Console::start_with(&ca.dir.join("identities/admin/identity.toml"), &fleet_args);
    let second = Console::start(&ca.dir.join("identities/admin-2/identity.toml"));
    let driver = Driver::start();
    let dir = shots();
    let b = driver.browser(&d.join("profile-1"));

    // The printed URL opens a session and lands on the overview, in Chinese.
    b.goto(&first.url);
    assert_eq!(b.url(), format!("http://127.0.0.1:{}/", first.port));
    assert_eq!(b.find("html").attr("lang").as_deref(), Some("zh-CN"));
    // Its numbers are the registry's.
    let listed = ca.admin(&["--json", "terminal", "list"]);
    assert!(listed.status.success(), "{}", text(&listed));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).expect("json");
    let mut by_state = BTreeMap::<String, u64>::new();
    for r in &rows {
        *by_state.entry(r["state"].as_str().expect("state").to_owned()).or_default() += 1;
    }
    b.wait_text("#total", &rows.len().to_string());
    for (state, n) in &by_state {
        b.wait_text(&format!("#by-state td[data-key='{state}']"), &n.to_string());
    }
    b.wait_text("#by-class td[data-key='III']", "1");
    b.screenshot(&dir.join("01-overview-zh.png"));
    assert_eq!(png_size(&dir.join("01-overview-zh.png")), (1366, 768));

    // Find a terminal by serial, open it, revoke it.
    b.click("nav a[href='/terminals']");
    b.wait_text("h1", "终端");
    b.screenshot(&dir.join("02-terminals.png"));
    b.find("#q").type_text(t1.serial);
    b.click("#search");
    b.click(&format!("#terminals a[href='/terminals/{}']", t1.serial));
    b.wait_text("#state", "issued");
    b.screenshot(&dir.join("03-terminal.png"));
    b.click("#revoke option[value='keyCompromise']");
    b.click("#do-revoke");
    b.wait_text("#state", "revoked");
    b.wait_text("#certificates td.status", "revoked");
    b.screenshot(&dir.join("04-terminal-revoked.png"));

    // A bulk revocation: how many it covers, then the request; its requester may not approve it.
    b.click("nav a[href='/revocation']");
    b.find("#preview input[name='lot']").type_text("L2");
    b.click("#count");
    b.wait_text("#covers", "2");
    b.click("#bulk option[value='superseded']");
    b.click("#request");
    let row = b.find("#approvals tr[data-id]");
    let id = row.attr("data-id").expect("approval id");
    b.wait_text("#approvals tr[data-id] td.state", "pending");
    b.screenshot(&dir.join("05-revocation.png"));
    b.click("#approvals button[value='approve']");
    b.wait_text("#reason", "SAME_APPROVER");
    b.screenshot(&dir.join("06-refused-same-approver.png"));

    // The second administrator, in a browser of their own, approves it.
    let b2 = driver.browser(&d.join("profile-2"));
    b2.goto(&second.url);
    b2.click("nav a[href='/revocation']");
    b2.click(&format!("#approvals tr[data-id='{id}'] button[value='approve']"));
    b2.wait_text(&format!("#approvals tr[data-id='{id}'] td.state"), "approved");
    b2.screenshot(&dir.join("07-approved-by-second-admin.png"));
    for t in [&t2, &t3] {
        b2.goto(&format!("http://127.0.0.1:{}/terminals/{}", second.port, t.serial));
        b2.wait_text("#state", "revoked");
    }
    // That browser's cookie is the second console's session, not the first's: refused there.
    b2.goto(&format!("http://127.0.0.1:{}/terminals", first.port));
    assert!(b2.source().contains("NO_SESSION"), "{}", b2.source());
    b2.screenshot(&dir.join("08-no-session.png"));

    // The rest of the pages, then English.
    b.click("nav a[href='/audit']");
    b.wait_text("h1", "审计");
    assert!(b.try_find("#chain.ok").is_some(), "{}", b.source());
    b.screenshot(&dir.join("09-audit.png"));
    b.click("nav a[href='/principals']");
    b.wait_text("h1", "主体");
    assert!(b.text("#principals").contains("admin-2"));
    b.screenshot(&dir.join("10-principals.png"));
    b.click("nav a[href='/alerts']");
    b.wait_text("h1", "告警");
    for rule in ["relocation", "counterfeit"] {
        assert!(b.try_find(&format!("#alerts tr[data-rule='{rule}']")).is_some(), "{rule}: {}", b.source());
    }
    b.screenshot(&dir.join("11-alerts.png"));
    // The relocation: its positions drawn against the reference; acknowledged here.
    b.click("#alerts tr[data-rule='relocation'] a");
    b.wait_text("#rule", "relocation");
    assert!(b.try_find("svg#relocation #reference").is_some(), "{}", b.source());
    b.screenshot(&dir.join("11a-alert-relocation.png"));
    b.find("#ack input[name='note']").type_text("seen on site");
    b.click("#ack button");
    b.wait_text("#alert-state", "已确认，确认人 admin");
    assert!(b.try_find("#ack").is_none(), "acknowledged: no form again");
    b.screenshot(&dir.join("11b-alert-acknowledged.png"));
    b.click("nav a[href='/']");
    b.wait_text("h1", "概览");
    b.click("#lang");
    b.wait_text("h1", "Overview");
    assert_eq!(b.find("html").attr("lang").as_deref(), Some("en"));
    b.wait_text("h1", "Overview");
    b.wait_text("#by-state td[data-key='revoked']", "3");
    b.screenshot(&dir.join("12-overview-en.png"));
    b.click("nav a[href='/terminals']");
    b.click(&format!("#terminals a[href='/terminals/{}']", t1.serial));
    b.wait_text("h1", "Terminals");
    b.screenshot(&dir.join("13-terminal-en.png"));
}
