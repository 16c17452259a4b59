//! Issue 11 §4 with the real binaries: an insider with file access cuts the audit chain's tail
//! together with the checkpoints covering it, or puts an older copy of the registry in place.
//! The registry alone still verifies; `cactl audit verify --anchors` and `ca-server serve` do not.

mod common;

use std::path::Path;
use std::process::Command;

use common::{RunningCa, ca_server, cactl, run, text};

fn verify(registry: &Path, anchors: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["audit", "verify", "--registry", registry.to_str().expect("p"), "--anchors"];
    args.push(anchors.to_str().expect("p"));
    args.extend_from_slice(extra);
    cactl(&args)
}

#[test]
fn a_cut_tail_or_an_older_registry_is_caught_by_the_anchor_log() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let mut server = RunningCa::init(d);
    let ca = server.dir.clone();
    let reg = ca.join("registry.redb");
    let anchors = ca.join("audit-anchors/anchors.jsonl");
    let key = ca.join("audit-anchors/audit-key.pem");
    server.add_principal(d, "station", "station-1", &["HSTM"]);
    server.stop(); // a graceful stop signs and anchors the head
    let older = d.join("older.redb");
    std::fs::copy(&reg, &older).expect("copy");
    server.start();
    server.add_principal(d, "operator", "operator-1", &[]);
    // Online: a snapshot of the running CA's registry against the anchors so far.
    let out = server.admin(&["audit", "verify", "--anchors", anchors.to_str().expect("p")]);
    assert!(out.status.success() && text(&out).contains("neither truncated nor rolled back"), "{}", text(&out));
    let out = server.admin(&["audit", "verify"]);
    assert!(text(&out).contains("cannot be ruled out from the database alone"), "{}", text(&out));
    server.stop();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&anchors).expect("anchors").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    // (c) Untouched: passes, with the key pinned too.
    let out = verify(&reg, &anchors, &["--audit-key", key.to_str().expect("p")]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("(pinned)"), "{}", text(&out));
    let n_anchors = std::fs::read_to_string(&anchors).expect("anchors").lines().count();
    assert!(n_anchors >= 2, "one anchor per graceful stop at least");

    // (a) The tail cut off with the checkpoints covering it: the registry alone cannot tell.
    let cut = d.join("cut.redb");
    std::fs::copy(&reg, &cut).expect("copy");
    let entries = {
        let r = registry::Registry::open(&cut).expect("open");
        let len = r.audit_len().expect("len");
        r.truncate_audit(len - 3).expect("truncate");
        r.verify_audit_chain().expect("the registry alone verifies").entries
    };
    let out = cactl(&["audit", "verify", "--registry", cut.to_str().expect("p")]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("cannot be ruled out from the database alone"), "{}", text(&out));
    let out = verify(&cut, &anchors, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("the audit chain ends at entry {entries}"))
            && text(&out).contains("truncated or the registry rolled back"),
        "{}",
        text(&out)
    );

    // (b) An older copy of the registry file: detected by cactl, and serve refuses it.
    std::fs::copy(&older, &reg).expect("roll back");
    let out = verify(&reg, &anchors, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("rolled back"), "{}", text(&out));
    let serve = |extra: &[&str]| {
        run(Command::new(ca_server()).args(["serve", "--config"]).arg(ca.join("ca-server.toml")).args(extra))
    };
    let out = serve(&[]);
    assert!(!out.status.success(), "serve must refuse a rolled-back registry");
    assert!(
        text(&out).contains("truncated or the registry rolled back") && text(&out).contains("--accept-audit-rollback"),
        "{}",
        text(&out)
    );
    // Also the cut chain.
    std::fs::copy(&cut, &reg).expect("cut in place");
    let out = serve(&[]);
    assert!(!out.status.success() && text(&out).contains("refusing to start"), "{}", text(&out));

    // Accepted on purpose: audited, shown by /readyz, and anchored anew.
    std::fs::copy(&older, &reg).expect("roll back");
    let mut accepted = std::process::Command::new(ca_server());
    accepted.args(["serve", "--accept-audit-rollback", "--config"]).arg(ca.join("ca-server.toml"));
    server.start_with(accepted);
    let (head, body) = server.get("/readyz");
    let body = String::from_utf8_lossy(&body);
    assert!(head.starts_with("HTTP/1.1 200") && body.contains("rollback accepted"), "{head}\n{body}");
    let out = server.admin(&["audit", "tail", "--last", "5"]);
    assert!(text(&out).contains("audit_rollback_accepted"), "{}", text(&out));
    server.stop();
    let out = verify(&reg, &anchors, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("WARNING") && text(&out).contains("rollback was accepted"), "{}", text(&out));
}
