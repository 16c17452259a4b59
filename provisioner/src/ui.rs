//! What the operator (or a factory dashboard) sees: one progress bar per port with the step name,
//! elapsed time and result; or, with `--json`, one JSON line per step on stdout.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::station::{Progress, Step};

/// How progress is shown.
#[derive(Clone)]
pub struct Display {
    inner: Arc<Inner>,
}

struct Inner {
    bars: Option<MultiProgress>,
    json: Option<Mutex<std::io::Stdout>>,
}

impl Display {
    /// Bars on the terminal (hidden when stderr is not one), or JSON lines when `json`.
    pub fn new(json: bool) -> Self {
        let inner = if json {
            Inner { bars: None, json: Some(Mutex::new(std::io::stdout())) }
        } else {
            Inner { bars: Some(MultiProgress::with_draw_target(ProgressDrawTarget::stderr())), json: None }
        };
        Self { inner: Arc::new(inner) }
    }

    /// The progress of one port.
    pub fn port(&self, port: &str) -> PortProgress {
        let bar = self.inner.bars.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new(Step::ALL.len() as u64));
            bar.set_style(
                ProgressStyle::with_template("{prefix:<22} [{elapsed:>3}] {bar:24} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(port.to_owned());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        PortProgress {
            display: self.clone(),
            port: port.to_owned(),
            serial: None,
            bar,
            started: Instant::now(),
            step_started: Instant::now(),
        }
    }

    /// Prints a line above the bars (or as JSON).
    pub fn println(&self, text: &str) {
        match &self.inner.bars {
            Some(m) => {
                let _ = m.println(text);
            }
            None => self.json_line(&serde_json::json!({ "event": "message", "text": text })),
        }
    }

    fn json_line(&self, v: &serde_json::Value) {
        if let Some(Ok(mut out)) = self.inner.json.as_ref().map(|o| o.lock()) {
            let _ = writeln!(out, "{v}");
            let _ = out.flush();
        }
    }
}

/// One port's bar and JSON lines.
pub struct PortProgress {
    display: Display,
    port: String,
    serial: Option<String>,
    bar: Option<ProgressBar>,
    started: Instant,
    step_started: Instant,
}

impl PortProgress {
    /// The terminal's serial, once HELLO told it.
    pub fn serial(&self) -> Option<&str> {
        self.serial.as_deref()
    }

    /// Marks the end of this terminal: `result` is `provisioned`, `already-provisioned` or `failed`.
    pub fn done(&mut self, result: &str, detail: &str) {
        let ms = self.started.elapsed().as_millis() as u64;
        if let Some(bar) = &self.bar {
            let mark = if result == "failed" { "✗" } else { "✓" };
            bar.finish_with_message(format!("{mark} {result} {detail}"));
        }
        self.display.json_line(&serde_json::json!({
            "event": "done", "port": self.port, "serial": self.serial, "result": result,
            "detail": detail, "elapsed_ms": ms,
        }));
    }

    /// Reports a failed step.
    pub fn failed(&mut self, step: Step, code: &str, error: &str) {
        self.display.json_line(&serde_json::json!({
            "event": "step", "port": self.port, "serial": self.serial, "step": step.name(), "status": "failed",
            "code": code, "error": error, "elapsed_ms": self.step_started.elapsed().as_millis() as u64,
        }));
    }
}

impl Progress for PortProgress {
    fn started(&mut self, step: Step, serial: Option<&str>) {
        self.step_started = Instant::now();
        if let Some(s) = serial {
            self.serial = Some(s.to_owned());
        }
        if let Some(bar) = &self.bar {
            bar.set_position(step.index() as u64);
            let who = self.serial.as_deref().unwrap_or("");
            bar.set_message(format!("{who} {}", step.name()));
        }
    }

    fn finished(&mut self, step: Step, took: Duration) {
        if let Some(bar) = &self.bar {
            bar.set_position(step.index() as u64 + 1);
        }
        self.display.json_line(&serde_json::json!({
            "event": "step", "port": self.port, "serial": self.serial, "step": step.name(), "status": "ok",
            "elapsed_ms": took.as_millis() as u64,
        }));
    }
}
