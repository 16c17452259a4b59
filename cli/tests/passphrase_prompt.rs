//! `cactl principal add --passphrase prompt` on a real pseudo-terminal: asked twice, never
//! echoed, no passphrase file written; the key opens with what was typed (issue 11 §5).

#![cfg(unix)]

mod common;

use std::process::Command;

use common::pty::on_pty;
use common::{CACTL, RunningCa};

#[test]
fn principal_add_asks_the_passphrase_twice_without_echo() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let server = RunningCa::init(d);
    let secret = "tr0ub4dor and 3";
    let out = d.join("auditor-1");
    let mut cmd = Command::new(CACTL);
    cmd.arg("--config").arg(server.dir.join("cactl.toml")).args([
        "principal",
        "add",
        "--role",
        "auditor",
        "--name",
        "auditor-1",
        "--passphrase",
        "prompt",
        "--out",
    ]);
    cmd.arg(&out);
    let (status, screen) = on_pty(cmd, &[("new passphrase for auditor-1's key: ", secret), ("again: ", secret)]);
    assert!(status.success(), "{screen}");
    assert!(!screen.contains("tr0ub4dor"), "the passphrase was echoed: {screen}");
    assert!(screen.contains("added auditor auditor-1"), "{screen}");
    assert!(!out.join("passphrase").exists());
    let id = proto::identity::Identity::load(&out.join("identity.toml")).expect("identity");
    assert_eq!(id.file.passphrase_file, None);
    id.signer(secret).expect("the typed passphrase opens the key");

    // Too short, or two different entries: refused before anything is issued.
    let mut cmd = Command::new(CACTL);
    cmd.arg("--config").arg(server.dir.join("cactl.toml")).args([
        "principal",
        "add",
        "--role",
        "auditor",
        "--name",
        "auditor-2",
        "--passphrase",
        "prompt",
        "--out",
    ]);
    cmd.arg(d.join("auditor-2"));
    let (status, screen) =
        on_pty(cmd, &[("new passphrase for auditor-2's key: ", secret), ("again: ", "tr0ub4dor and 4")]);
    assert!(!status.success() && screen.contains("the passphrases do not match"), "{screen}");
    assert!(!screen.contains("tr0ub4dor"), "{screen}");
    assert!(!d.join("auditor-2").exists());
    // The name is still free: nothing was issued for it.
    server.add_principal(d, "auditor", "auditor-2", &[]);
}
