//! Crash safety: a writer SIGKILLed in the middle of writing leaves a store that loads, whose
//! private part decrypts with the PIN, and whose last complete write is all there.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use cryptoki::object::{Attribute, ObjectClass};

#[test]
fn kill_during_writes_leaves_a_whole_store() {
    let dir = tempfile::tempdir().expect("tmp");
    let tdir = dir.path().join("t");
    std::fs::create_dir_all(&tdir).expect("mkdir");
    let conf = dir.path().join("t.toml");
    std::fs::write(&conf, format!("directory = {tdir:?}\nkdf_iterations = 100000\n")).expect("conf");
    let churn = env!("CARGO_BIN_EXE_softtoken-churn");

    for round in 0..5u64 {
        let mut child = Command::new(churn)
            .args([common::lib_path().to_str().expect("utf8"), common::SO_PIN, common::USER_PIN])
            .env("SOFTTOKEN_CONF", &conf)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn churn");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("ready");
        assert_eq!(line.trim(), "ready");
        std::thread::sleep(Duration::from_millis(150 + 37 * round));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        assert!(!tdir.join("token.json.tmp").exists() || tdir.join("token.json").exists());

        // The store loads through the module, and each round of writes is whole: one public
        // and one private object per label.
        let m = common::Module::open(&tdir, 5);
        let s = m.user();
        let count = |private: bool| {
            s.find_objects(&[Attribute::Class(ObjectClass::DATA), Attribute::Private(private)]).expect("find").len()
        };
        let (private, public) = (count(true), count(false));
        assert!(public > 0, "round {round}: nothing was written");
        // A kill can land between the two halves of a pair — between creating the private and
        // the public object, or between destroying them: at most one half pair per killed run.
        let runs = round as usize + 1;
        assert!(private.abs_diff(public) <= runs, "round {round}: {private} private vs {public} public");
    }
}
