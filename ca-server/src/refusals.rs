//! Refused authentications, audited in aggregate (REQUIREMENTS M4, M9): one audit entry per
//! source (principal or address) per interval, with counts by reason, so anonymous traffic can
//! neither grow the audit log without bound nor force an fsync per request. Refusals of
//! authenticated principals' requests (wrong state, policy) are audited one by one elsewhere.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use registry::AuditEvent;

/// The refusals of one source in the current interval.
#[derive(Default)]
struct Tally {
    total: u64,
    by_reason: BTreeMap<&'static str, u64>,
    method: String,
    last: String,
}

/// Refusals counted since the last [`RefusalTally::drain`].
pub struct RefusalTally {
    sources: Mutex<HashMap<String, Tally>>,
}

impl Default for RefusalTally {
    fn default() -> Self {
        Self { sources: Mutex::new(HashMap::new()) }
    }
}

/// The source under which refusals from sources beyond [`RefusalTally::SOURCES`] are counted.
pub const OTHER_SOURCES: &str = "(other sources)";

impl RefusalTally {
    /// Sources kept apart per interval; beyond that they are counted together.
    pub const SOURCES: usize = 1000;

    /// Counts one refusal of a request to `method` from `source` for `reason`.
    pub fn count(&self, source: &str, method: &str, reason: &'static str, message: &str) {
        let Ok(mut sources) = self.sources.lock() else { return };
        let key = if sources.contains_key(source) || sources.len() < Self::SOURCES { source } else { OTHER_SOURCES };
        let t = sources.entry(key.to_owned()).or_default();
        t.total += 1;
        *t.by_reason.entry(reason).or_default() += 1;
        method.clone_into(&mut t.method);
        message.clone_into(&mut t.last);
    }

    /// The audit entries for everything counted so far (one per source), and a fresh start.
    pub fn drain(&self, now_ms: u64) -> Vec<AuditEvent> {
        let Ok(mut sources) = self.sources.lock() else { return Vec::new() };
        let mut out: Vec<AuditEvent> = sources
            .drain()
            .map(|(source, t)| {
                let reasons: Vec<String> = t.by_reason.iter().map(|(r, n)| format!("{r} x{n}")).collect();
                AuditEvent {
                    time_ms: now_ms,
                    actor: source,
                    action: "auth_refused".into(),
                    target: t.method,
                    outcome: t.by_reason.keys().next().copied().unwrap_or("REFUSED").into(),
                    detail: format!("{} refused ({}); last: {}", t.total, reasons.join(", "), t.last),
                }
            })
            .collect();
        out.sort_by(|a, b| a.actor.cmp(&b.actor));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_source_and_reason_and_bounds_the_sources() {
        let t = RefusalTally::default();
        for _ in 0..3 {
            t.count("10.0.0.1", "/m", "BAD_SIGNATURE", "bad");
        }
        t.count("10.0.0.1", "/m", "MISSING_SIGNATURE", "missing");
        t.count("station-1", "/n", "REPLAYED_NONCE", "replay");
        for i in 0..(RefusalTally::SOURCES + 500) {
            t.count(&format!("192.0.2.{i}"), "/m", "CALLER_CERT_INVALID", "forged");
        }
        let entries = t.drain(7);
        assert_eq!(entries.len(), RefusalTally::SOURCES + 1, "one per source, the overflow under one");
        let first = entries.iter().find(|e| e.actor == "10.0.0.1").expect("address");
        assert_eq!(first.detail, "4 refused (BAD_SIGNATURE x3, MISSING_SIGNATURE x1); last: missing");
        assert_eq!((first.action.as_str(), first.time_ms), ("auth_refused", 7));
        let other = entries.iter().find(|e| e.actor == OTHER_SOURCES).expect("overflow");
        assert!(other.detail.starts_with("502 refused"), "{}", other.detail);
        assert!(t.drain(8).is_empty(), "drained");
    }
}
