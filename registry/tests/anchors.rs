//! The anchor log outside the registry: a cut tail (with the checkpoints covering it) or an older
//! copy of the registry verifies on its own, and only the anchor log shows it (issue 11 §4).

use registry::anchor::{Anchor, AnchorError, AnchorLog, check_contains, read_anchors};
use registry::*;

fn ev(target: &str) -> AuditEvent {
    AuditEvent {
        time_ms: 1,
        actor: "admin".into(),
        action: "test".into(),
        target: target.into(),
        outcome: "ok".into(),
        detail: String::new(),
    }
}

fn anchor_head(reg: &Registry) -> Anchor {
    let (seq, head) = reg.audit_head().expect("head").expect("entries");
    let checkpoint = AuditCheckpoint { seq, head, time_ms: 7, key_id: "k".into(), signature: "00".into() };
    reg.add_audit_checkpoint(&checkpoint).expect("checkpoint");
    Anchor { checkpoint, public_key: "00".into() }
}

fn contains(reg: &Registry, a: &Anchor) -> Result<(), AnchorError> {
    let (entry, len) = reg.audit_entry_at(a.checkpoint.seq).expect("read");
    check_contains(&a.checkpoint, entry.as_ref(), len)
}

#[test]
fn a_cut_tail_and_its_checkpoints_pass_the_registry_but_not_the_anchor_log() {
    let dir = tempfile::tempdir().expect("tmp");
    let reg = Registry::open(&dir.path().join("r.redb")).expect("open");
    let log = AnchorLog::open(&dir.path().join("anchors")).expect("anchor log");
    for i in 0..3 {
        reg.audit(&ev(&format!("t{i}"))).expect("audit");
    }
    log.append(&anchor_head(&reg)).expect("append");
    for i in 3..6 {
        reg.audit(&ev(&format!("t{i}"))).expect("audit");
    }
    log.append(&anchor_head(&reg)).expect("append");
    let anchors = read_anchors(log.path()).expect("read").expect("exists");
    assert_eq!(anchors.iter().map(|a| a.checkpoint.seq).collect::<Vec<_>>(), vec![3, 6]);
    for a in &anchors {
        contains(&reg, a).expect("untouched registry holds every anchored head");
    }

    // The insider cuts entries 5.. and the checkpoint at 6: the registry alone is content.
    assert_eq!(reg.truncate_audit(4).expect("truncate"), 2);
    let summary = reg.verify_audit_chain().expect("the registry cannot tell");
    assert_eq!((summary.entries, summary.checkpoints.len()), (4, 1));
    assert!(matches!(contains(&reg, &anchors[1]), Err(AnchorError::Truncated { seq: 6, entries: 4, .. })));
    contains(&reg, &anchors[0]).expect("older anchor still holds");

    // Growing the cut chain back to the anchored length does not hide it.
    reg.audit(&ev("x5")).expect("audit");
    reg.audit(&ev("x6")).expect("audit");
    let err = contains(&reg, &anchors[1]).expect_err("diverged");
    assert!(matches!(err, AnchorError::Diverged { seq: 6, .. }), "{err}");
    assert!(err.to_string().contains("rewritten or rolled back"), "{err}");
}

#[test]
fn anchor_files_are_private_append_only_and_strictly_parsed() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("a");
    assert!(read_anchors(&path.join(registry::anchor::ANCHOR_FILE)).expect("absent").is_none());
    let log = AnchorLog::open(&path).expect("open");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!((mode(&path), mode(log.path())), (0o700, 0o600));
    }
    let cp = AuditCheckpoint { seq: 2, head: "ab".repeat(32), time_ms: 1, key_id: "k".into(), signature: "00".into() };
    log.append(&Anchor { checkpoint: cp.clone(), public_key: "00".into() }).expect("append");
    drop(log);
    // Reopening appends; it never truncates.
    let log = AnchorLog::open(&path).expect("reopen");
    let back = AuditCheckpoint { seq: 1, ..cp.clone() };
    log.append(&Anchor { checkpoint: back, public_key: "00".into() }).expect("append");
    let anchors = read_anchors(log.path()).expect("read").expect("exists");
    assert_eq!(anchors.iter().map(|a| a.checkpoint.seq).collect::<Vec<_>>(), vec![2, 1]);

    std::fs::write(log.path(), "{\"seq\":1}\n").expect("write");
    let err = read_anchors(log.path()).expect_err("unreadable");
    assert!(matches!(err, AnchorError::Unreadable { line: 1, .. }), "{err}");
}
