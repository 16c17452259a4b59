//! The batch report: one row per terminal (serial, certificate serial, duration, outcome), as CSV
//! or JSON by the file's extension.

use std::path::Path;

use serde::Serialize;

/// One terminal's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Row {
    /// Where it was plugged.
    pub port: String,
    /// Terminal serial (empty if HELLO failed).
    pub serial: String,
    /// Certificate serial (upper-case hex), when one was written or found.
    pub certificate_serial: String,
    /// Wall time for this terminal.
    pub duration_ms: u64,
    /// `provisioned`, `already-provisioned` or `failed`.
    pub outcome: String,
    /// The failed step, when failed.
    pub failed_step: String,
    /// Stable code of the failure (device error code, CA reason, `DEADLINE_EXCEEDED`, …).
    pub code: String,
    /// Human-readable error.
    pub error: String,
}

/// Writes `rows` to `path`: JSON (an array) if it ends in `.json`, CSV otherwise.
pub fn write(path: &Path, rows: &[Row]) -> std::io::Result<()> {
    let text = if path.extension().is_some_and(|e| e == "json") {
        serde_json::to_string_pretty(rows).map_err(std::io::Error::other)?
    } else {
        let mut out = String::from("port,serial,certificate_serial,duration_ms,outcome,failed_step,code,error\n");
        for r in rows {
            let fields = [
                r.port.clone(),
                r.serial.clone(),
                r.certificate_serial.clone(),
                r.duration_ms.to_string(),
                r.outcome.clone(),
                r.failed_step.clone(),
                r.code.clone(),
                r.error.clone(),
            ];
            out.push_str(&fields.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(","));
            out.push('\n');
        }
        out
    };
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}

/// RFC 4180 quoting, and a leading `'` against spreadsheet formula injection from device data.
fn csv_field(f: &str) -> String {
    let f = if f.starts_with(['=', '+', '-', '@']) { format!("'{f}") } else { f.to_owned() };
    if f.contains([',', '"', '\n', '\r']) { format!("\"{}\"", f.replace('"', "\"\"")) } else { f }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(csv_field("=cmd()"), "'=cmd()");
        let dir = tempfile::tempdir().expect("tmp");
        let row = Row {
            port: "/dev/pts/1".into(),
            serial: "S".into(),
            certificate_serial: "AB".into(),
            duration_ms: 5,
            outcome: "failed".into(),
            failed_step: "COMMIT".into(),
            code: "CHAIN_INVALID".into(),
            error: "COMMIT: bad, really".into(),
        };
        write(&dir.path().join("r.csv"), std::slice::from_ref(&row)).expect("csv");
        let text = std::fs::read_to_string(dir.path().join("r.csv")).expect("read");
        assert_eq!(text.lines().nth(1), Some("/dev/pts/1,S,AB,5,failed,COMMIT,CHAIN_INVALID,\"COMMIT: bad, really\""));
        write(&dir.path().join("r.json"), &[row]).expect("json");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("r.json")).expect("read")).expect("json");
        assert_eq!(v[0]["code"], "CHAIN_INVALID");
    }
}
