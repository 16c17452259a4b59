//! Where the module finds its token when nobody says, checked in child processes (OpenSC's
//! `pkcs11-tool`) whose environment is cleared: the module must start on a documented default, or
//! refuse, and say on stderr which and why.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn show_info(env: &[(&str, &Path)]) -> (Output, String) {
    let mut cmd = Command::new("pkcs11-tool");
    cmd.env_clear().arg("--module").arg(common::lib_path()).arg("--show-info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("pkcs11-tool (OpenSC; scripts/test.sh installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out, text)
}

#[test]
fn without_configuration_the_module_uses_the_documented_default_and_says_so() {
    let home = tempfile::tempdir().expect("tmp");
    let (out, text) = show_info(&[("HOME", home.path())]);
    assert!(out.status.success(), "{text}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SOFTTOKEN_CONF and SOFTTOKEN_DIR are not set"), "{stderr}");
    if Path::new(softtoken::config::SYSTEM_CONF).exists() {
        assert!(stderr.contains(softtoken::config::SYSTEM_CONF), "{stderr}");
    } else {
        let dir = home.path().join(".local/share/softtoken");
        assert!(stderr.contains(&dir.display().to_string()), "{stderr}");
        assert!(dir.is_dir(), "the default token directory is created");
        // XDG_DATA_HOME takes precedence over HOME.
        let xdg = tempfile::tempdir().expect("tmp");
        let (out, text) = show_info(&[("HOME", home.path()), ("XDG_DATA_HOME", xdg.path())]);
        assert!(out.status.success() && xdg.path().join("softtoken").is_dir(), "{text}");
    }
}

#[test]
fn with_nothing_to_go_on_the_module_refuses_and_says_what_is_missing() {
    if Path::new(softtoken::config::SYSTEM_CONF).exists() {
        return; // this machine has a system configuration: the module rightly uses it
    }
    let (out, text) = show_info(&[]);
    assert!(!out.status.success(), "{text}");
    for missing in ["SOFTTOKEN_CONF", "SOFTTOKEN_DIR", softtoken::config::SYSTEM_CONF, "HOME"] {
        assert!(text.contains(missing), "{missing} not named in:\n{text}");
    }
}

#[test]
fn kdf_iterations_below_the_floor_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let conf = dir.path().join("t.toml");
    let tdir = dir.path().join("t");
    std::fs::write(&conf, format!("directory = {tdir:?}\nkdf_iterations = 99999\n")).expect("conf");
    let (out, text) = show_info(&[("SOFTTOKEN_CONF", &conf)]);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("kdf_iterations = 99999 is below the minimum 100000"), "{text}");
    std::fs::write(&conf, format!("directory = {tdir:?}\nkdf_iterations = 100000\n")).expect("conf");
    let (out, text) = show_info(&[("SOFTTOKEN_CONF", &conf)]);
    assert!(out.status.success(), "{text}");
}
