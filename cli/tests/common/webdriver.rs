//! Just enough W3C WebDriver to drive Debian's headless Chromium through `chromedriver`: plain
//! JSON over the tests' HTTP/1.1 helper, no client crate (the handful of commands a console test
//! needs is smaller than any client's dependency tree, and the Lab is often offline).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Serving, http, port};

/// The W3C element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A running chromedriver.
pub struct Driver {
    _child: Serving,
    port: u16,
}

/// Calls `method path` with `body` on chromedriver at `port`; the answer's `value`.
fn call(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (head, raw) = http(port, req.as_bytes());
    let v: Value = serde_json::from_slice(&raw).map_err(|e| format!("{head}: {e}"))?;
    let value = v.get("value").cloned().unwrap_or(Value::Null);
    if head.starts_with("HTTP/1.1 200") { Ok(value) } else { Err(format!("{method} {path}: {head}: {value}")) }
}

impl Driver {
    /// Starts `chromedriver` on a free port; fails (with how to install) when it is missing.
    pub fn start() -> Self {
        let port = port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian: apt-get install chromium chromium-driver; scripts/test.sh does)");
        let child = Serving(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let up = || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        while !up() || call(port, "GET", "/status", None).map(|v| v["ready"] != json!(true)).unwrap_or(true) {
            assert!(Instant::now() < deadline, "chromedriver did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver { _child: child, port }
    }

    /// A new headless Chromium (its own profile in `profile`) with a 1366×768 window.
    pub fn browser(&self, profile: &Path) -> Browser {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1366,768",
            "--hide-scrollbars",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}
        }}});
        let v = call(self.port, "POST", "/session", Some(&caps)).expect("new WebDriver session");
        let id = v["sessionId"].as_str().expect("sessionId").to_owned();
        let b = Browser { port: self.port, id };
        // --window-size counts the (invisible) browser frame: pin the page's viewport instead.
        let metrics = json!({"cmd": "Emulation.setDeviceMetricsOverride",
            "params": {"width": 1366, "height": 768, "deviceScaleFactor": 1, "mobile": false}});
        b.cmd("POST", "/goog/cdp/execute", Some(metrics)).expect("viewport 1366x768");
        b
    }
}

/// One browser (a WebDriver session).
pub struct Browser {
    port: u16,
    id: String,
}

/// An element of the current page.
pub struct Element<'a> {
    b: &'a Browser,
    id: String,
}

impl Browser {
    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        call(self.port, method, &format!("/session/{}{path}", self.id), body.as_ref())
    }

    /// Opens `url`.
    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url }))).expect("navigate");
    }

    /// The current URL.
    pub fn url(&self) -> String {
        self.cmd("GET", "/url", None).expect("url").as_str().unwrap_or_default().to_owned()
    }

    /// The page's HTML as the browser holds it.
    pub fn source(&self) -> String {
        self.cmd("GET", "/source", None).expect("source").as_str().unwrap_or_default().to_owned()
    }

    /// The element `css` selects, if any.
    pub fn try_find(&self, css: &str) -> Option<Element<'_>> {
        let v = self.cmd("POST", "/element", Some(json!({"using": "css selector", "value": css}))).ok()?;
        Some(Element { b: self, id: v[ELEMENT].as_str()?.to_owned() })
    }

    /// The element `css` selects, waiting up to 30 s for it (a click's navigation may still be
    /// under way); panics with the page when absent.
    pub fn find(&self, css: &str) -> Element<'_> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(e) = self.try_find(css) {
                return e;
            }
            assert!(Instant::now() < deadline, "no {css} in {}", self.source());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Clicks what `css` selects, again if the page was replaced between finding and clicking
    /// (a stale element is not clicked, so nothing is submitted twice). Waits up to 30 s.
    pub fn click(&self, css: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let last = match self.try_find(css) {
                Some(e) => match e.try_click() {
                    Ok(_) => return,
                    Err(m) => m,
                },
                None => "not found".to_owned(),
            };
            assert!(Instant::now() < deadline, "click {css}: {last} in {}", self.source());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The visible text of `css` once it equals `want` (waits up to 30 s; panics with the last
    /// text and the page otherwise).
    pub fn wait_text(&self, css: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.try_find(css).and_then(|e| e.try_text());
            if got.as_deref() == Some(want) {
                return;
            }
            assert!(Instant::now() < deadline, "{css}: {got:?}, not {want:?}, in {}", self.source());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The visible text of `css` (after any navigation in progress has replaced the page).
    pub fn text(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(t) = self.try_find(css).and_then(|e| e.try_text()) {
                return t;
            }
            assert!(Instant::now() < deadline, "no text at {css} in {}", self.source());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the viewport, written to `path`.
    pub fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let v = self.cmd("GET", "/screenshot", None).expect("screenshot");
        let png = base64::engine::general_purpose::STANDARD.decode(v.as_str().expect("base64")).expect("png");
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.cmd("DELETE", "", None);
    }
}

impl Element<'_> {
    /// Its visible text, unless it left the page meanwhile.
    pub fn try_text(&self) -> Option<String> {
        let v = self.b.cmd("GET", &format!("/element/{}/text", self.id), None).ok()?;
        v.as_str().map(str::to_owned)
    }

    /// Clicks it.
    pub fn try_click(&self) -> Result<Value, String> {
        self.b.cmd("POST", &format!("/element/{}/click", self.id), Some(json!({})))
    }

    /// Replaces what is typed in it.
    pub fn type_text(&self, text: &str) {
        self.b.cmd("POST", &format!("/element/{}/clear", self.id), Some(json!({}))).expect("clear");
        self.b.cmd("POST", &format!("/element/{}/value", self.id), Some(json!({ "text": text }))).expect("type");
    }

    /// An attribute's value.
    pub fn attr(&self, name: &str) -> Option<String> {
        let v = self.b.cmd("GET", &format!("/element/{}/attribute/{name}", self.id), None).ok()?;
        v.as_str().map(str::to_owned)
    }
}
