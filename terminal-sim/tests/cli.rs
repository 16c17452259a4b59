//! The `terminal-sim` binary as a user meets it: refusals with clear messages, a TCP terminal that
//! answers HELLO, and `export` of a terminal that holds no certificate.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use device_protocol::{HostLink, LinkConfig, Request, Response, SeState};

const BIN: &str = env!("CARGO_BIN_EXE_terminal-sim");

#[test]
fn refusals_hello_over_tcp_and_export() {
    let tmp = tempfile::tempdir().expect("tmp");
    let state = tmp.path().join("se");

    let out = Command::new(BIN).args(["--state-dir"]).arg(&state).output().expect("run");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--serial is required"));
    let out = Command::new(BIN)
        .args(["export", "--state-dir"])
        .arg(&state)
        .args(["--cert-out", "x.pem"])
        .output()
        .expect("run");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("holds no terminal"));

    let mut child = Command::new(BIN)
        .args(["--serial", "HSTM01261100000K", "--class", "III", "--tcp", "127.0.0.1:0", "--state-dir"])
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("line");
    let addr = line.trim().rsplit(' ').next().expect("address").to_owned();
    let stream = std::net::TcpStream::connect(&addr).expect("connect");
    let mut link = HostLink::new(stream, LinkConfig { frame_timeout: Duration::from_secs(2), max_retransmits: 1 });
    let Ok(Response::Hello(info)) = link.call(&Request::Hello { max_version: 1 }) else { panic!("no HELLO") };
    assert_eq!((info.serial.as_str(), info.class, info.state), ("HSTM01261100000K", 3, SeState::Blank));
    drop(link);
    let _ = child.kill();
    let _ = child.wait();

    // Another serial for the same state directory is refused: one SE, one terminal.
    let out = Command::new(BIN)
        .args(["--serial", "HSTM01261100001I", "--tcp", "127.0.0.1:0", "--state-dir"])
        .arg(&state)
        .output()
        .expect("run");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("holds terminal HSTM01261100000K"));
    let out = Command::new(BIN)
        .args(["export", "--state-dir"])
        .arg(&state)
        .args(["--cert-out", "x.pem"])
        .output()
        .expect("run");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not provisioned"));
}
