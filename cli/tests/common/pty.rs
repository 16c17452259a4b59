//! A real pseudo-terminal for tests of prompts: what the terminal shows, and what was typed.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A pseudo-terminal: (master, slave), in the default cooked mode, echo on.
pub fn pty() -> (OwnedFd, OwnedFd) {
    let (mut m, mut s) = (0, 0);
    // SAFETY: out-pointers to two ints; NULL name, termios and winsize ask for the defaults.
    let r = unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty returned two fresh descriptors that nothing else owns.
    unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) }
}

/// Runs `cmd` on a pty's slave (stdin, stdout, stderr); answers each prompt in `dialog` with
/// its line once the prompt is on the screen; returns the exit status and everything the
/// terminal showed.
pub fn on_pty(mut cmd: Command, dialog: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let (master, slave) = pty();
    let mut child = cmd
        .stdin(Stdio::from(slave.try_clone().expect("dup")))
        .stdout(Stdio::from(slave.try_clone().expect("dup")))
        .stderr(Stdio::from(slave))
        .spawn()
        .expect("spawn");
    // The Command holds the slave descriptors: drop it, or the master never sees the end.
    drop(cmd);
    let mut writer = std::fs::File::from(master.try_clone().expect("dup"));
    let screen = Arc::new(Mutex::new(Vec::new()));
    let reader = std::thread::spawn({
        let screen = screen.clone();
        let mut r = std::fs::File::from(master);
        move || {
            let mut buf = [0u8; 4096];
            // EIO once the child has exited and the last slave descriptor is closed.
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                screen.lock().expect("lock").extend_from_slice(&buf[..n]);
            }
        }
    });
    let mut seen = 0;
    for (prompt, answer) in dialog {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = String::from_utf8_lossy(&screen.lock().expect("lock")).into_owned();
            if let Some(at) = s[seen..].find(prompt) {
                seen += at + prompt.len();
                break;
            }
            assert!(Instant::now() < deadline, "no prompt {prompt:?}; screen: {s}");
            std::thread::sleep(Duration::from_millis(20));
        }
        writer.write_all(format!("{answer}\n").as_bytes()).expect("type");
    }
    let status = child.wait().expect("wait");
    drop(writer);
    reader.join().expect("reader");
    let screen = String::from_utf8_lossy(&screen.lock().expect("lock")).into_owned();
    (status, screen)
}
