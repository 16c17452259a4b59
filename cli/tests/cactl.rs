//! The README walk-through, automated: the real `ca-server` (init, serve) and the real `cactl`,
//! with OpenSSL making the terminal's CSR and checking the certificate. Also cactl's exit codes.
//!
//! `ca-server` is found next to `cactl` (cargo builds every workspace binary for
//! `cargo test --workspace`; alone, run `cargo build -p ca-server` first).

mod common;

use std::path::Path;
use std::process::Command;

use common::{RunningCa, cactl, port, run, text};

#[test]
fn walk_through_with_the_real_binaries() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let server = RunningCa::init(d);
    let ca = server.dir.clone();
    let cfg = ca.join("cactl.toml");
    let cfg = cfg.to_str().expect("utf8");

    let (station, out) = server.add_principal(d, "station", "station-1", &["HSTM"]);
    assert!(text(&out).contains("added station station-1"));
    let id = station.join("identity.toml");
    let id = id.to_str().expect("utf8");

    let openssl = |args: &[&str]| {
        let o = run(Command::new("openssl").args(args).current_dir(d));
        assert!(o.status.success(), "openssl {args:?}: {}", text(&o));
        text(&o)
    };
    openssl(&["genpkey", "-algorithm", "SM2", "-out", "terminal.key"]);
    openssl(&[
        "req",
        "-new",
        "-key",
        "terminal.key",
        "-sm3",
        "-sigopt",
        "distid:1234567812345678",
        "-subj",
        "/CN=HSTM01261100000K/serialNumber=HSTM01261100000K",
        "-out",
        "terminal.csr",
    ]);
    let csr = d.join("terminal.csr");
    let pem = d.join("terminal.pem");
    let issue = |out: &Path| {
        cactl(&[
            "--identity",
            id,
            "issue",
            "--csr",
            csr.to_str().expect("p"),
            "--serial",
            "HSTM01261100000K",
            "--class",
            "II",
            "--out",
            out.to_str().expect("p"),
            "--request-id",
            "walk-1",
        ])
    };
    let out = issue(&pem);
    assert!(out.status.success(), "{}", text(&out));
    let issuing = ca.join("certs/issuing.pem");
    assert!(
        openssl(&[
            "verify",
            "-vfyopt",
            "distid:1234567812345678",
            "-partial_chain",
            "-CAfile",
            issuing.to_str().expect("p"),
            "terminal.pem"
        ])
        .contains("terminal.pem: OK")
    );

    // The same request id: the same certificate, said so.
    let again = d.join("again.pem");
    let out = issue(&again);
    assert!(out.status.success() && text(&out).contains("same request answered before"), "{}", text(&out));
    assert_eq!(std::fs::read(&pem).expect("pem"), std::fs::read(&again).expect("again"));
    // A new request for the same terminal: refused with its reason, exit code 1.
    let out = cactl(&[
        "--identity",
        id,
        "issue",
        "--csr",
        csr.to_str().expect("p"),
        "--serial",
        "HSTM01261100000K",
        "--class",
        "II",
        "--out",
        d.join("x.pem").to_str().expect("p"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("ALREADY_HAS_ACTIVE_CERTIFICATE"), "{}", text(&out));
    // A station cannot revoke.
    let out = cactl(&["--identity", id, "revoke", "--terminal", "HSTM01261100000K", "--reason", "key-compromise"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("ROLE_FORBIDDEN"), "{}", text(&out));

    // Admin views, in JSON for scripts.
    let out = cactl(&["--config", cfg, "--json", "terminal", "show", "--serial", "HSTM01261100000K"]);
    let row: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!((row["state"].as_str(), row["class"].as_str()), (Some("issued"), Some("II")));
    // The serial also positionally, the same answer.
    let out = cactl(&["--config", cfg, "--json", "terminal", "show", "HSTM01261100000K"]);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json"), row, "{}", text(&out));
    let out = cactl(&["--config", cfg, "terminal", "show"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = cactl(&["--config", cfg, "status", "--cert", pem.to_str().expect("p")]);
    assert!(text(&out).contains(": good"), "{}", text(&out));
    // RFC 5280's spelling of the reason (the station above used the kebab-case one).
    let out = cactl(&["--config", cfg, "revoke", "--terminal", "HSTM01261100000K", "--reason", "keyCompromise"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = cactl(&["--config", cfg, "--json", "status", "--cert", pem.to_str().expect("p")]);
    assert!(text(&out).contains("\"state\":\"revoked\""), "{}", text(&out));
    let out = cactl(&["--config", cfg, "audit", "verify"]);
    assert!(out.status.success() && text(&out).contains("audit chain verified"), "{}", text(&out));
    let out = cactl(&["--config", cfg, "audit", "tail", "--last", "50"]);
    assert!(text(&out).contains("ALREADY_HAS_ACTIVE_CERTIFICATE"), "{}", text(&out));
    // Failed authentications reach the log in aggregate, within the server's refusal interval.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = cactl(&["--config", cfg, "audit", "tail", "--last", "50"]);
        if text(&out).contains("ROLE_FORBIDDEN") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "ROLE_FORBIDDEN never audited: {}", text(&out));
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let backup = d.join("backup.redb");
    let out = cactl(&["--config", cfg, "backup", "--out", backup.to_str().expect("p")]);
    assert!(out.status.success() && backup.exists(), "{}", text(&out));

    // Exit codes: 2 for local input errors, 3 when the CA cannot be reached.
    let out = cactl(&[
        "--config",
        cfg,
        "issue",
        "--csr",
        "/nonexistent.csr",
        "--serial",
        "X",
        "--class",
        "I",
        "--out",
        "/tmp/x.pem",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = cactl(&["--config", cfg, "--server", &format!("https://127.0.0.1:{}", port()), "audit", "verify"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let out = cactl(&["completions", "bash"]);
    assert!(out.status.success() && text(&out).contains("cactl"));
}

#[test]
fn an_unknown_reason_is_refused_with_the_accepted_ones() {
    // Refused while parsing arguments: no CA needed, exit code 2 (usage).
    let out = cactl(&[
        "--server",
        "https://127.0.0.1:9",
        "revoke",
        "--terminal",
        "HSTM01261100000K",
        "--reason",
        "KeyCompromise",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("unknown reason `KeyCompromise`") && t.contains("keyCompromise (key-compromise)"), "{t}");
    assert!(t.contains("cessationOfOperation (cessation-of-operation)"), "{t}");
}
