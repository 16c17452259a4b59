//! Several processes on one token, as happens when `ca-server` and an operator's `pkcs11-tool`
//! (or two servers) load the module at once: writes merge, nobody's keys vanish, and the
//! wrong-PIN budget is shared. The other processes are OpenSC's `pkcs11-tool`.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use cryptoki::object::{Attribute, ObjectClass};

fn tool(conf: &Path, args: &[&str]) -> Output {
    Command::new("pkcs11-tool")
        .arg("--module")
        .arg(lib_path())
        .args(args)
        .env("SOFTTOKEN_CONF", conf)
        .output()
        .expect("pkcs11-tool (OpenSC; scripts/test.sh installs it)")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn labels(s: &cryptoki::session::Session, class: ObjectClass) -> Vec<String> {
    let mut found: Vec<String> = s
        .find_objects(&[Attribute::Class(class)])
        .expect("find")
        .into_iter()
        .map(|h| match &s.get_attributes(h, &[cryptoki::object::AttributeType::Label]).expect("label")[0] {
            Attribute::Label(l) => String::from_utf8_lossy(l).into_owned(),
            other => panic!("{other:?}"),
        })
        .collect();
    found.sort();
    found
}

#[test]
fn keys_made_by_another_process_survive_this_ones_writes() {
    let dir = tempfile::tempdir().expect("tmp");
    let tdir = dir.path().join("t");
    let m = Module::open(&tdir, 5);
    m.init();
    let s = m.user();
    sm2_pair(&s, "a-before", true);

    // Process B, while A holds its initialised module and logged-in session.
    let out = tool(
        &tdir.with_extension("toml"),
        &[
            "--login",
            "--pin",
            USER_PIN,
            "--keypairgen",
            "-m",
            "0x80005301",
            "--key-type",
            "EC:prime256v1",
            "--label",
            "b",
            "--id",
            "0b",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));

    // A writes again: B's pair must still be there, and A sees it.
    sm2_pair(&s, "a-after", true);
    let want = vec!["a-after".to_owned(), "a-before".into(), "b".into()];
    assert_eq!(labels(&s, ObjectClass::PRIVATE_KEY), want);
    assert_eq!(labels(&s, ObjectClass::PUBLIC_KEY), want);
    // And on disk, read back by a fresh process.
    let out =
        tool(&tdir.with_extension("toml"), &["--login", "--pin", USER_PIN, "--list-objects", "--type", "privkey"]);
    let listed = text(&out);
    for label in ["a-before", "b", "a-after"] {
        assert!(listed.contains(&format!("label:      {label}\n")), "{label} missing:\n{listed}");
    }
    // B destroys A's first key; A's next write does not bring it back.
    let out = tool(
        &tdir.with_extension("toml"),
        &["--login", "--pin", USER_PIN, "--delete-object", "--type", "privkey", "--label", "a-before"],
    );
    assert!(out.status.success(), "{}", text(&out));
    sm2_pair(&s, "a-last", true);
    assert_eq!(labels(&s, ObjectClass::PRIVATE_KEY), vec!["a-after".to_owned(), "a-last".into(), "b".into()]);
    let m = {
        drop(s);
        m.reload()
    };
    let s = m.user();
    assert_eq!(labels(&s, ObjectClass::PRIVATE_KEY), vec!["a-after".to_owned(), "a-last".into(), "b".into()]);
}

#[test]
fn processes_share_one_wrong_pin_budget() {
    let dir = tempfile::tempdir().expect("tmp");
    let tdir = dir.path().join("t");
    let m = Module::open(&tdir, 5);
    m.init();
    drop(m);
    let conf = tdir.with_extension("toml");
    // Eight processes guess at once; five guesses is all they get together.
    let children: Vec<_> = (0..8)
        .map(|i| {
            Command::new("pkcs11-tool")
                .arg("--module")
                .arg(lib_path())
                .args(["--login", "--pin", &format!("wrong-pin-{i}"), "--list-objects"])
                .env("SOFTTOKEN_CONF", &conf)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("pkcs11-tool")
        })
        .collect();
    let outputs: Vec<String> = children.into_iter().map(|c| text(&c.wait_with_output().expect("wait"))).collect();
    let incorrect = outputs.iter().filter(|o| o.contains("CKR_PIN_INCORRECT")).count();
    let locked = outputs.iter().filter(|o| o.contains("CKR_PIN_LOCKED")).count();
    assert_eq!((incorrect, locked), (5, 3), "{outputs:#?}");
    // The right PIN no longer helps, in any process.
    let out = tool(&conf, &["--login", "--pin", USER_PIN, "--list-objects"]);
    assert!(text(&out).contains("CKR_PIN_LOCKED"), "{}", text(&out));
}
