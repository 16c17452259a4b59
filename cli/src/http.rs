//! A minimal HTTP/1.1 client for the relying-party check: CRLs and OCSP are published over plain
//! HTTP (RFC 5280 §4.2.1.13, RFC 6960 appendix A), so no TLS is needed here.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Largest body accepted (a CRL of ~1M entries is ~40 MB).
const MAX_BODY: u64 = 256 << 20;

/// GET `url`; the body of a 200 answer.
pub fn get(url: &str) -> Result<Vec<u8>> {
    request(url, "GET", None)
}

/// POST `body` as `content_type` to `url`; the body of a 200 answer.
pub fn post(url: &str, content_type: &str, body: &[u8]) -> Result<Vec<u8>> {
    request(url, "POST", Some((content_type, body)))
}

fn request(url: &str, method: &str, body: Option<(&str, &[u8])>) -> Result<Vec<u8>> {
    let rest = url.strip_prefix("http://").with_context(|| format!("{url}: only http:// URLs are published"))?;
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let addr = if authority.contains(':') { authority.to_owned() } else { format!("{authority}:80") };
    let sock = addr.to_socket_addrs()?.next().with_context(|| format!("{authority} resolves to no address"))?;
    let mut s =
        TcpStream::connect_timeout(&sock, Duration::from_secs(10)).with_context(|| format!("connecting to {url}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nUser-Agent: cactl\r\n");
    if let Some((ct, b)) = body {
        head.push_str(&format!("Content-Type: {ct}\r\nContent-Length: {}\r\n", b.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    if let Some((_, b)) = body {
        s.write_all(b)?;
    }
    let mut raw = Vec::new();
    s.take(MAX_BODY).read_to_end(&mut raw).with_context(|| format!("reading the answer from {url}"))?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").with_context(|| format!("{url}: no HTTP header end"))?;
    let header = String::from_utf8_lossy(&raw[..split]);
    let status = header.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        bail!("{url}: HTTP {}", header.lines().next().unwrap_or(""));
    }
    if header.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return dechunk(&raw[split + 4..]);
    }
    Ok(raw[split + 4..].to_vec())
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").context("bad chunk")?;
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..line_end]).split(';').next().unwrap_or("").trim(), 16)?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = b.get(..size).context("truncated chunk")?;
        out.extend_from_slice(chunk);
        b = b.get(size + 2..).context("truncated chunk")?;
    }
}
