//! Ports for test servers, and the wait for one to listen.
//!
//! Tests in one binary run concurrently and each starts servers on ports it picked before the
//! server binds them. The kernel's `bind(127.0.0.1:0)` hands out ports from the ephemeral range at
//! random, so two tests could be handed one port (or an outgoing connection could take it first):
//! one server then fails to bind and the test talks to another test's server. Ports here come from
//! below the ephemeral range, where neither `bind(0)` nor `connect` reaches, and are never handed
//! out twice by one process; [`wait_listening`] then checks the listener is the child's own.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The lowest port handed out (above the well-known and most registered services' ports).
const FIRST: u32 = 10_000;

/// Ports handed out by this process so far.
static HANDED_OUT: AtomicU32 = AtomicU32::new(0);

/// The first port of the kernel's ephemeral range (32768 when it cannot be read).
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
        .filter(|&p: &u32| p > FIRST + 1_000)
        .unwrap_or(32_768)
}

/// A local TCP port free now that no other call in this process has returned, outside the
/// kernel's ephemeral range. Processes start at different offsets (from their pid), so test
/// binaries run side by side rarely meet either.
///
/// # Panics
/// When no port in the range can be bound (a test harness: there is nothing to go on with).
pub fn free_port() -> u16 {
    let span = ephemeral_start() - FIRST;
    let offset = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = HANDED_OUT.fetch_add(1, Ordering::Relaxed);
        let port = FIRST + (offset + n) % span;
        let Ok(port) = u16::try_from(port) else { continue };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + span);
}

/// Spawns `server` (its output dropped) and returns once it listens on `port`
/// ([`wait_listening`], 30 s at most); a server that does not is killed and reaped.
pub fn spawn_listening(server: &mut Command, port: u16) -> Result<Child, String> {
    let mut child = server
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{:?}: {e}", server.get_program()))?;
    if let Err(e) = wait_listening(&mut child, port, Duration::from_secs(30)) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("{:?}: {e}", server.get_program()));
    }
    Ok(child)
}

/// Waits until `child` itself listens on `port` (checked in `/proc`, not by connecting: another
/// process on that port would answer too). Fails when the child exits first (as it does when the
/// port was taken) or after `within`. Without `/proc/net/tcp` (not Linux) it falls back to
/// connecting.
pub fn wait_listening(child: &mut Child, port: u16, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let has_proc = std::path::Path::new("/proc/net/tcp").exists();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the server exited ({status}) before listening on port {port}"));
        }
        let up = if has_proc {
            listens(child.id(), port)
        } else {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        };
        if up {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the server did not listen on port {port} within {within:?}"));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Whether process `pid` holds a socket listening on TCP `port` (IPv4 or IPv6).
fn listens(pid: u32, port: u16) -> bool {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.filter_map(Result::ok).filter_map(|fd| std::fs::read_link(fd.path()).ok()).any(|target| {
        let target = target.to_string_lossy();
        target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
            .is_some_and(|inode| inodes.iter().any(|i| i == inode))
    })
}

/// The inodes of the sockets listening on TCP `port`, from `/proc/net/tcp` and `tcp6`.
fn listening_inodes(port: u16) -> Vec<String> {
    let local = format!(":{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let fields: Vec<&str> = line.split_whitespace().collect();
            const LISTEN: &str = "0A";
            if fields.len() > 9 && fields[1].ends_with(&local) && fields[3] == LISTEN {
                inodes.push(fields[9].to_owned());
            }
        }
    }
    inodes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ports_are_never_handed_out_twice_and_stay_below_the_ephemeral_range() {
        let ports: Vec<u16> = std::thread::scope(|s| {
            let handles: Vec<_> =
                (0..8).map(|_| s.spawn(|| (0..50).map(|_| free_port()).collect::<Vec<_>>())).collect();
            handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
        });
        assert_eq!(ports.len(), 400);
        assert_eq!(ports.iter().collect::<HashSet<_>>().len(), 400, "a port handed out twice");
        assert!(ports.iter().all(|&p| u32::from(p) >= FIRST && u32::from(p) < ephemeral_start()));
    }

    /// The failure that made this module: another process already listens on the port, so
    /// connecting succeeds; the wait for the child must not.
    #[test]
    fn a_port_another_process_listens_on_is_not_the_childs() {
        let port = free_port();
        // perl-base (always on Debian) has sockets.
        let listen = format!(
            "use IO::Socket::INET; my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1:{port}', Listen => 1) or die; sleep 30"
        );
        let other = Command::new("perl").args(["-e", &listen]).spawn().expect("perl");
        let mut other = Killed(other);
        wait_listening(&mut other.0, port, Duration::from_secs(20)).expect("the listener's own socket is found");
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());

        let mut child = Killed(Command::new("sleep").arg("30").spawn().expect("sleep"));
        let waited = wait_listening(&mut child.0, port, Duration::from_millis(300));
        assert!(waited.as_ref().is_err_and(|e| e.contains("did not listen")), "{waited:?}");
        // A child that exits (as a server that cannot bind does) is reported as such.
        let mut gone = Killed(Command::new("true").spawn().expect("true"));
        let waited = wait_listening(&mut gone.0, port, Duration::from_secs(30));
        assert!(waited.as_ref().is_err_and(|e| e.contains("exited")), "{waited:?}");
    }

    /// A child killed and reaped when the test ends, passing or not.
    struct Killed(std::process::Child);

    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
