//! The optional webhook: each new alert is POSTed as JSON to a configured `http://` URL, retried
//! with backoff until the receiver answers 2xx. Delivery is best effort beside the store, which
//! stays the record (`cactl alerts`).

use std::time::Duration;

use std::io::{Read, Write};

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Only plain `http://host:port/path` URLs.
    #[error("webhook URL {0:?} is not http://host[:port]/path")]
    Url(String),
    /// Network.
    #[error("webhook: {0}")]
    Io(#[from] std::io::Error),
    /// The receiver answered something else than 2xx.
    #[error("webhook answered {0:?}")]
    Status(String),
    /// No answer in time.
    #[error("webhook timed out")]
    Timeout,
}

/// A parsed `http://` URL: (host:port, path).
pub fn parse(url: &str) -> Result<(String, String), WebhookError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| WebhookError::Url(url.into()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains(['@', ' ']) {
        return Err(WebhookError::Url(url.into()));
    }
    let authority = if authority.contains(':') { authority.to_owned() } else { format!("{authority}:80") };
    Ok((authority, path.to_owned()))
}

/// One POST of `body` (blocking, 10 s per step); Ok on a 2xx answer.
pub fn post_once(url: &str, body: &[u8]) -> Result<(), WebhookError> {
    use std::net::ToSocketAddrs;
    let (authority, path) = parse(url)?;
    let addr = authority.to_socket_addrs()?.next().ok_or_else(|| WebhookError::Url(url.into()))?;
    let limit = Some(Duration::from_secs(10));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(limit)?;
    s.set_write_timeout(limit)?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => WebhookError::Timeout,
        _ => e.into(),
    })?;
    let status = String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned();
    if status.split_whitespace().nth(1).is_some_and(|c| c.starts_with('2')) {
        Ok(())
    } else {
        Err(WebhookError::Status(status))
    }
}

/// POSTs `body`, retrying up to `attempts` times with doubling pauses from `first_pause`.
pub async fn deliver(url: &str, body: &[u8], attempts: u32, first_pause: Duration) -> Result<u32, WebhookError> {
    let mut pause = first_pause;
    let mut n = 0;
    loop {
        n += 1;
        let (u, b) = (url.to_owned(), body.to_vec());
        let sent = tokio::task::spawn_blocking(move || post_once(&u, &b))
            .await
            .unwrap_or_else(|e| Err(WebhookError::Io(std::io::Error::other(e.to_string()))));
        match sent {
            Ok(()) => return Ok(n),
            Err(e) if n >= attempts.max(1) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, attempt = n, "webhook delivery failed; retrying");
                tokio::time::sleep(pause).await;
                pause = pause.saturating_mul(2);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls() {
        assert_eq!(parse("http://127.0.0.1:9000/hook").expect("ok"), ("127.0.0.1:9000".into(), "/hook".into()));
        assert_eq!(parse("http://alerts.example").expect("ok"), ("alerts.example:80".into(), "/".into()));
        for bad in ["https://x/y", "ftp://x", "http://", "http://user@x/", "x"] {
            assert!(matches!(parse(bad), Err(WebhookError::Url(_))), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_failing_receiver_is_retried_until_it_takes_the_alert() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/alerts", listener.local_addr().expect("addr"));
        let receiver = std::thread::spawn(move || {
            let mut bodies = Vec::new();
            for answer in ["HTTP/1.1 503 Busy\r\n\r\n", "HTTP/1.1 204 No Content\r\n\r\n"] {
                let (mut s, _) = listener.accept().expect("accept");
                let mut buf = Vec::new();
                // Read the head and the 17-byte body.
                while !String::from_utf8_lossy(&buf).ends_with('}') {
                    let mut chunk = [0u8; 1024];
                    let n = s.read(&mut chunk).expect("read");
                    assert!(n > 0, "closed early");
                    buf.extend_from_slice(&chunk[..n]);
                }
                bodies.push(String::from_utf8_lossy(&buf).into_owned());
                s.write_all(answer.as_bytes()).expect("write");
            }
            bodies
        });
        let attempts = deliver(&url, br#"{"rule":"tamper"}"#, 3, Duration::from_millis(10)).await.expect("delivered");
        assert_eq!(attempts, 2);
        let bodies = receiver.join().expect("receiver");
        assert!(bodies[1].starts_with("POST /alerts HTTP/1.1") && bodies[1].ends_with(r#"{"rule":"tamper"}"#));
        // Nobody listening: fails after its attempts.
        let closed = "http://127.0.0.1:1/x";
        assert!(deliver(closed, b"{}", 2, Duration::from_millis(1)).await.is_err());
    }
}
