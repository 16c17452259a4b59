//! Issue 11 §5, secrets at rest, with the real `ca-server` binary: `init` makes the data
//! directory, token directory and registry private; `serve` refuses a PIN or TLS key file others
//! can read, naming it and the fix; `init --admin-passphrase prompt` asks twice on a real
//! pseudo-terminal without echoing what is typed.

#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

const EXE: &str = env!("CARGO_BIN_EXE_ca-server");

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn init(dir: &Path) {
    let out = Command::new(EXE)
        .args(["init", "--data-dir"])
        .arg(dir)
        .args(["--grpc", "127.0.0.1:1", "--http", "127.0.0.1:1"])
        .output()
        .expect("init");
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn init_is_private_and_serve_refuses_readable_secrets() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("ca");
    init(&dir);
    assert_eq!(mode(&dir), 0o700, "data directory");
    assert_eq!(mode(&dir.join("token")), 0o700, "token directory");
    assert_eq!(mode(&dir.join("secrets")), 0o700, "secrets directory");
    assert_eq!(mode(&dir.join("registry.redb")), 0o600, "registry file");
    for f in ["secrets/hsm-pin", "secrets/hsm-so-pin", "secrets/tls-server.key", "identities/admin/passphrase"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }

    let serve =
        || Command::new(EXE).args(["serve", "--config"]).arg(dir.join("ca-server.toml")).output().expect("serve");
    for (file, what) in [("secrets/hsm-pin", "the HSM PIN file"), ("secrets/tls-server.key", "the TLS key file")] {
        let path = dir.join(file);
        for loose in [0o640, 0o604] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(loose)).expect("chmod");
            let out = serve();
            assert!(!out.status.success(), "serve must refuse {file} at {loose:o}");
            let msg = text(&out);
            let shown = path.canonicalize().expect("path").display().to_string();
            assert!(msg.contains(what) && msg.contains(&shown) && msg.contains(&format!("chmod 600 {shown}")), "{msg}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod back");
    }
}

// The pty harness cactl's prompt test uses too (one copy; it lives with the cli tests).
#[path = "../../cli/tests/common/pty.rs"]
mod pty;
use pty::on_pty;

#[test]
fn the_harness_sees_echo_when_a_program_does_not_turn_it_off() {
    // Proves the pty test below can fail: a plain line read on the same pty echoes.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "printf 'say: ' >&2; head -n 1 >/dev/null"]);
    let (status, screen) = on_pty(cmd, &[("say: ", "visible-words")]);
    assert!(status.success());
    assert!(screen.contains("visible-words"), "{screen}");
}

#[test]
fn init_asks_the_admin_passphrase_twice_without_echo() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("ca");
    let secret = "correct horse battery";
    let mut cmd = Command::new(EXE);
    cmd.args(["init", "--admin-passphrase", "prompt", "--data-dir"]).arg(&dir);
    let second = "tr0ub4dor and 3";
    let (status, screen) = on_pty(
        cmd,
        &[
            ("new passphrase for the admin key: ", secret),
            ("again: ", secret),
            ("new passphrase for the admin-2 key: ", second),
            ("again: ", second),
        ],
    );
    assert!(status.success(), "{screen}");
    assert!(!screen.contains("correct horse") && !screen.contains("tr0ub4dor"), "a passphrase was echoed: {screen}");
    assert!(screen.contains("created a new CA"), "{screen}");
    // No passphrase file; the key opens with what was typed, and only with it.
    assert!(!dir.join("identities/admin/passphrase").exists());
    let id = proto::identity::Identity::load(&dir.join("identities/admin/identity.toml")).expect("identity");
    assert_eq!(id.file.passphrase_file, None);
    id.signer(secret).expect("the typed passphrase opens the admin key");
    assert!(id.signer("something else").is_err());
    let id2 = proto::identity::Identity::load(&dir.join("identities/admin-2/identity.toml")).expect("identity");
    id2.signer(second).expect("each admin's own passphrase opens their key");
    assert!(id2.signer(secret).is_err());

    // Two different entries: refused, nothing made.
    let dir2 = tmp.path().join("ca2");
    let mut cmd = Command::new(EXE);
    cmd.args(["init", "--admin-passphrase", "prompt", "--data-dir"]).arg(&dir2);
    let (status, screen) =
        on_pty(cmd, &[("new passphrase for the admin key: ", secret), ("again: ", "correct horse batterY")]);
    assert!(!status.success());
    assert!(screen.contains("the passphrases do not match") && !screen.contains("correct horse"), "{screen}");
    assert!(!dir2.join("ca-server.toml").exists());

    // Not a terminal: refused with the alternative named, never a hang.
    let out = Command::new(EXE)
        .args(["init", "--admin-passphrase", "prompt", "--data-dir"])
        .arg(tmp.path().join("ca3"))
        .stdin(Stdio::null())
        .output()
        .expect("init");
    assert!(!out.status.success() && text(&out).contains("needs a terminal"), "{}", text(&out));
}
