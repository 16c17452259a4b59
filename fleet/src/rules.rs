//! The anomaly rules as pure functions over a terminal's remembered state: no I/O, no clock, so
//! every rule is tested by feeding it heartbeats.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::policy::{FleetPolicy, Rule};

/// What the service remembers of one terminal certificate (persisted: a restart resumes here).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TerminalState {
    /// The terminal's serial (from its certificate).
    pub terminal_serial: String,
    /// The certificate's serial (hex).
    pub certificate_serial: String,
    /// The highest SE counter accepted.
    pub counter: u64,
    /// SM3 of the body accepted with that counter (a retry of it is a duplicate, not a clone).
    pub last_body_sm3: String,
    /// The terminal's own time in the heartbeat accepted with that counter.
    #[serde(default)]
    pub last_time_ms: u64,
    /// When the last heartbeat was accepted (our clock, unix ms).
    pub last_seen_ms: u64,
    /// The address it came from.
    pub address: String,
    /// The address before the last change, and when the change happened.
    pub previous_address: Option<String>,
    /// When `address` took over from `previous_address`.
    pub address_changed_ms: u64,
    /// The first position reported: the reference location while the terminal has no
    /// activation (an [`Anchor`] replaces it).
    pub reference: Option<(f64, f64)>,
    /// Heartbeats in a row outside the relocation radius.
    pub far_streak: u32,
    /// The activation-log number of the anchor `far_streak` counts against (0: the first
    /// position): a newer activation starts the count again.
    #[serde(default)]
    pub reference_seq: u64,
    /// The silent rule fired and no heartbeat came since.
    pub silent: bool,
    /// Held or revoked by a rule: no longer expected to heartbeat.
    pub retired: bool,
}

/// A terminal's reference location from its newest activation (the CA's activation log,
/// `Registry/ListActivationsAfter`): where it was installed, by proof of presence or a manual
/// override. It beats the first position the terminal reported, so a terminal moved before its
/// first heartbeat is caught.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Anchor {
    /// Terminal serial.
    pub terminal_serial: String,
    /// The activation's number in the CA's activation log.
    pub seq: u64,
    /// The institution it was activated at (selects `radius_km_by_institution`).
    pub institution: String,
    /// Latitude, longitude (degrees).
    pub position: (f64, f64),
    /// When it was activated (unix ms).
    pub at_ms: u64,
    /// `presence`, `manual` or `operator`.
    pub method: String,
    /// Proof of presence: the certificate whose key signed (empty otherwise).
    pub certificate_serial: String,
}

/// A heartbeat whose signature and certificate were verified.
#[derive(Clone, Debug, PartialEq)]
pub struct Verified {
    /// Terminal serial (the certificate's and the body's: they were checked equal).
    pub terminal_serial: String,
    /// Certificate serial (hex).
    pub certificate_serial: String,
    /// SE counter.
    pub counter: u64,
    /// The terminal's clock, unix ms.
    pub time_ms: u64,
    /// Position and its source name, if reported.
    pub position: Option<(f64, f64, String)>,
    /// Terminal class (`I`, `II`, `III`, from the certificate; empty if it names none).
    pub class: String,
    /// Firmware digest (hex).
    pub firmware_sm3: String,
    /// Tamper switch.
    pub tamper: bool,
    /// Seconds since boot.
    pub uptime_s: u64,
    /// SM3 of the signed body (hex).
    pub body_sm3: String,
    /// The address the request came from.
    pub address: String,
    /// Our clock when it arrived, unix ms.
    pub received_ms: u64,
}

/// One rule firing.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    /// Which rule.
    pub rule: Rule,
    /// Deduplication key: a finding with the key of an open alert adds to it.
    pub key: String,
    /// Terminal serial (claimed, for a counterfeit).
    pub terminal_serial: String,
    /// Certificate serial, when known.
    pub certificate_serial: String,
    /// Source address.
    pub address: String,
    /// What the rule saw.
    pub evidence: serde_json::Value,
}

impl Finding {
    fn about(rule: Rule, hb: &Verified, evidence: serde_json::Value) -> Self {
        Self {
            rule,
            key: format!("{}:{}", rule.name(), hb.certificate_serial),
            terminal_serial: hb.terminal_serial.clone(),
            certificate_serial: hb.certificate_serial.clone(),
            address: hb.address.clone(),
            evidence,
        }
    }
}

/// What became of a verified heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted: the state moves on.
    Accepted,
    /// The very heartbeat accepted last, again (a retry): nothing changes.
    Duplicate,
    /// The counter did not increase and the body differs: refused (and a clone finding).
    CounterReused,
    /// An earlier heartbeat of the same SE arriving after a later one (lower counter *and*
    /// earlier time than the one accepted): refused as out of order, no finding. A copy of the
    /// SE signs after the original, so its time is not earlier.
    Late,
}

/// The outcome of [`evaluate`].
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// What became of the heartbeat.
    pub verdict: Verdict,
    /// The state to store, when it changed.
    pub state: Option<TerminalState>,
    /// Rules that fired.
    pub findings: Vec<Finding>,
}

/// Great-circle distance in km (haversine, mean Earth radius).
pub fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (la1, lo1, la2, lo2) = (a.0.to_radians(), a.1.to_radians(), b.0.to_radians(), b.1.to_radians());
    let h = ((la2 - la1) / 2.0).sin().powi(2) + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().min(1.0).asin()
}

/// Applies the clone, relocation and tamper rules to one verified heartbeat; `anchor` is the
/// terminal's newest activation, if the CA has one (else the first position is the reference).
pub fn evaluate(
    policy: &FleetPolicy,
    prev: Option<&TerminalState>,
    hb: &Verified,
    anchor: Option<&Anchor>,
) -> Evaluation {
    let mut findings = Vec::new();
    let Some(prev) = prev else {
        let mut state = TerminalState {
            terminal_serial: hb.terminal_serial.clone(),
            certificate_serial: hb.certificate_serial.clone(),
            counter: hb.counter,
            last_body_sm3: hb.body_sm3.clone(),
            last_time_ms: hb.time_ms,
            last_seen_ms: hb.received_ms,
            address: hb.address.clone(),
            previous_address: None,
            address_changed_ms: hb.received_ms,
            reference: None,
            far_streak: 0,
            reference_seq: 0,
            silent: false,
            retired: false,
        };
        relocation(policy, hb, anchor, &mut state, &mut findings);
        if hb.tamper {
            findings.push(tamper_finding(hb));
        }
        return Evaluation { verdict: Verdict::Accepted, state: Some(state), findings };
    };
    if hb.counter <= prev.counter {
        if hb.counter == prev.counter && hb.body_sm3 == prev.last_body_sm3 {
            return Evaluation { verdict: Verdict::Duplicate, state: None, findings };
        }
        if hb.counter < prev.counter && hb.time_ms < prev.last_time_ms {
            return Evaluation { verdict: Verdict::Late, state: None, findings };
        }
        findings.push(Finding::about(
            Rule::Clone,
            hb,
            json!({
                "why": "counter did not increase",
                "counter": hb.counter,
                "highest_counter": prev.counter,
                "address": hb.address,
                "last_address": prev.address,
                "uptime_s": hb.uptime_s,
            }),
        ));
        return Evaluation { verdict: Verdict::CounterReused, state: None, findings };
    }
    let mut next = prev.clone();
    next.counter = hb.counter;
    next.last_body_sm3 = hb.body_sm3.clone();
    next.last_time_ms = hb.time_ms;
    next.last_seen_ms = hb.received_ms;
    next.silent = false;
    if hb.address != prev.address {
        let back_within =
            hb.received_ms.saturating_sub(prev.address_changed_ms) <= policy.interleave_window.as_millis() as u64;
        if prev.previous_address.as_deref() == Some(hb.address.as_str()) && back_within {
            findings.push(Finding::about(
                Rule::Clone,
                hb,
                json!({
                    "why": "two source addresses interleave",
                    "address": hb.address,
                    "other_address": prev.address,
                    "switched_ms_ago": hb.received_ms.saturating_sub(prev.address_changed_ms),
                    "counter": hb.counter,
                }),
            ));
        }
        next.previous_address = Some(prev.address.clone());
        next.address = hb.address.clone();
        next.address_changed_ms = hb.received_ms;
    }
    relocation(policy, hb, anchor, &mut next, &mut findings);
    if hb.tamper {
        findings.push(tamper_finding(hb));
    }
    Evaluation { verdict: Verdict::Accepted, state: Some(next), findings }
}

/// The relocation rule: the heartbeat's position against the activation's (else the first
/// position reported, which a first heartbeat sets), within the radius of the activation's
/// institution, else of the terminal's class, else the default.
fn relocation(
    policy: &FleetPolicy,
    hb: &Verified,
    anchor: Option<&Anchor>,
    next: &mut TerminalState,
    findings: &mut Vec<Finding>,
) {
    let Some((lat, lon, source)) = &hb.position else { return };
    let (reference, seq) = match (anchor, next.reference) {
        (Some(a), _) => (a.position, a.seq),
        (None, Some(first)) => (first, 0),
        (None, None) => {
            next.reference = Some((*lat, *lon));
            return;
        }
    };
    if next.reference.is_none() {
        next.reference = Some((*lat, *lon));
    }
    if next.reference_seq != seq {
        next.reference_seq = seq;
        next.far_streak = 0;
    }
    let d = distance_km(reference, (*lat, *lon));
    let radius_km = policy.radius_km_for(&hb.class, anchor.map(|a| a.institution.as_str()));
    if d <= radius_km {
        next.far_streak = 0;
        return;
    }
    next.far_streak = next.far_streak.saturating_add(1);
    if next.far_streak != policy.sustained_heartbeats {
        return;
    }
    let reference_from = match anchor {
        Some(a) => json!({
            "kind": "activation",
            "seq": a.seq,
            "institution": a.institution,
            "method": a.method,
            "at_ms": a.at_ms,
            "certificate_serial": a.certificate_serial,
        }),
        None => json!({"kind": "first_heartbeat"}),
    };
    findings.push(Finding::about(
        Rule::Relocation,
        hb,
        json!({
            "distance_km": (d * 10.0).round() / 10.0,
            "radius_km": radius_km,
            "position": [lat, lon],
            "source": source,
            "reference": [reference.0, reference.1],
            "reference_from": reference_from,
            "heartbeats_outside": next.far_streak,
        }),
    ));
}

fn tamper_finding(hb: &Verified) -> Finding {
    Finding::about(
        Rule::Tamper,
        hb,
        json!({"tamper_switch": true, "counter": hb.counter, "uptime_s": hb.uptime_s, "firmware_sm3": hb.firmware_sm3}),
    )
}

/// The silent rule for one terminal at `now_ms`: fires once when no heartbeat came for the
/// policy's missed intervals, counting from `heard_from_ms` at the latest: the service's start
/// or the last time it failed to answer a heartbeat itself (the service being down or
/// overloaded is not the terminals' silence). Marks the state silent when it fires.
pub fn silent(policy: &FleetPolicy, state: &mut TerminalState, now_ms: u64, heard_from_ms: u64) -> Option<Finding> {
    if state.silent || state.retired {
        return None;
    }
    let since = state.last_seen_ms.max(heard_from_ms);
    let allowed = policy.interval.as_millis() as u64 * u64::from(policy.missed_intervals);
    if now_ms.saturating_sub(since) <= allowed {
        return None;
    }
    state.silent = true;
    Some(Finding {
        rule: Rule::Silent,
        key: format!("silent:{}", state.certificate_serial),
        terminal_serial: state.terminal_serial.clone(),
        certificate_serial: state.certificate_serial.clone(),
        address: state.address.clone(),
        evidence: json!({
            "last_seen_ms": state.last_seen_ms,
            "silent_for_s": now_ms.saturating_sub(state.last_seen_ms) / 1000,
            "missed_intervals": policy.missed_intervals,
            "interval_s": policy.interval.as_secs(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: (f64, f64) = (39.9042, 116.4074);

    fn policy() -> FleetPolicy {
        FleetPolicy::shipped().expect("policy")
    }

    fn hb(counter: u64, at_ms: u64, address: &str) -> Verified {
        Verified {
            terminal_serial: "HSTM01261100000K".into(),
            certificate_serial: "0A".into(),
            counter,
            time_ms: at_ms,
            position: Some((HOME.0, HOME.1, "gnss".into())),
            class: "II".into(),
            firmware_sm3: "00".into(),
            tamper: false,
            uptime_s: at_ms / 1000,
            body_sm3: format!("body-{counter}-{address}"),
            address: address.into(),
            received_ms: at_ms,
        }
    }

    /// Feeds heartbeats in order; the last state and every finding.
    fn run(p: &FleetPolicy, beats: &[Verified]) -> (Option<TerminalState>, Vec<Finding>, Vec<Verdict>) {
        let (mut state, mut all, mut verdicts) = (None::<TerminalState>, Vec::new(), Vec::new());
        for b in beats {
            let e = evaluate(p, state.as_ref(), b, None);
            if let Some(s) = e.state {
                state = Some(s);
            }
            all.extend(e.findings);
            verdicts.push(e.verdict);
        }
        (state, all, verdicts)
    }

    #[test]
    fn normal_traffic_raises_nothing() {
        let p = policy();
        let beats: Vec<_> = (1..=50).map(|n| hb(n, n * 60_000, "10.0.0.1")).collect();
        let (state, findings, verdicts) = run(&p, &beats);
        assert!(findings.is_empty(), "{findings:?}");
        assert!(verdicts.iter().all(|v| *v == Verdict::Accepted));
        assert_eq!(state.expect("state").counter, 50);
    }

    #[test]
    fn a_retry_of_the_last_heartbeat_is_a_duplicate_not_a_clone() {
        let p = policy();
        let (_, findings, verdicts) = run(&p, &[hb(1, 1000, "a"), hb(2, 2000, "a"), hb(2, 2000, "a")]);
        assert!(findings.is_empty());
        assert_eq!(verdicts[2], Verdict::Duplicate);
    }

    #[test]
    fn clone_a_counter_that_does_not_increase() {
        let p = policy();
        // The same counter with another body, and a lower one: both refused as clones.
        let mut same = hb(5, 6000, "a");
        same.body_sm3 = "other".into();
        let (state, findings, verdicts) = run(&p, &[hb(4, 1000, "a"), hb(5, 2000, "a"), same, hb(3, 7000, "a")]);
        assert_eq!(verdicts[2..], [Verdict::CounterReused, Verdict::CounterReused]);
        assert_eq!(findings.len(), 2);
        assert!(findings.iter().all(|f| f.rule == Rule::Clone && f.key == "clone:0A"));
        assert_eq!(findings[1].evidence["highest_counter"], 5);
        assert_eq!(state.expect("state").counter, 5, "a refused heartbeat changes nothing");
    }

    #[test]
    fn a_late_earlier_heartbeat_is_out_of_order_not_a_clone() {
        let p = policy();
        // Counter 2 (signed at 2000) overtaken by counter 3 (signed at 3000) inside the network.
        let (state, findings, verdicts) = run(&p, &[hb(1, 1000, "a"), hb(3, 3000, "a"), hb(2, 2000, "a")]);
        assert!(findings.is_empty(), "{findings:?}");
        assert_eq!(verdicts[2], Verdict::Late);
        assert_eq!(state.expect("state").counter, 3);
        // A copy signs after the original: an old counter with a time not earlier is a clone.
        let (_, findings, verdicts) = run(&p, &[hb(1, 1000, "a"), hb(3, 3000, "a"), hb(2, 3500, "b")]);
        assert_eq!(verdicts[2], Verdict::CounterReused);
        assert_eq!(findings[0].rule, Rule::Clone);
    }

    #[test]
    fn clone_two_sources_interleave() {
        let p = policy();
        let beats = [hb(1, 1000, "a"), hb(2, 2000, "b"), hb(3, 3000, "a")];
        let (_, findings, _) = run(&p, &beats);
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].rule, Rule::Clone);
        assert_eq!(findings[0].evidence["why"], "two source addresses interleave");
        // Moving once to another network, or coming back after the window, is not a clone.
        let window = p.interleave_window.as_millis() as u64;
        let (_, findings, _) = run(&p, &[hb(1, 1000, "a"), hb(2, 2000, "b"), hb(3, 3000, "b")]);
        assert!(findings.is_empty());
        let (_, findings, _) = run(&p, &[hb(1, 1000, "a"), hb(2, 2000, "b"), hb(3, 2001 + window, "a")]);
        assert!(findings.is_empty(), "{findings:?}");
    }

    #[test]
    fn relocation_fires_once_after_sustained_heartbeats_outside_the_radius() {
        let p = policy();
        let far = |n: u64| {
            let mut b = hb(n, n * 1000, "a");
            b.position = Some((HOME.0 + 0.5, HOME.1, "gnss".into())); // ~55 km north
            b
        };
        let (_, findings, _) = run(&p, &[hb(1, 1000, "a"), far(2), far(3)]);
        assert!(findings.is_empty(), "two heartbeats outside are not yet sustained");
        let (state, findings, _) = run(&p, &[hb(1, 1000, "a"), far(2), far(3), far(4), far(5)]);
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].rule, Rule::Relocation);
        assert!(findings[0].evidence["distance_km"].as_f64().expect("km") > 50.0);
        assert_eq!(state.expect("s").far_streak, 4);
        // Back inside resets the streak: jitter in and out never adds up.
        let (_, findings, _) = run(&p, &[hb(1, 1000, "a"), far(2), far(3), hb(4, 4000, "a"), far(5), far(6)]);
        assert!(findings.is_empty());
        // Within the radius (1 km away) is home.
        let mut near = hb(2, 2000, "a");
        near.position = Some((HOME.0 + 0.009, HOME.1, "base_station".into()));
        assert!(run(&p, &[hb(1, 1000, "a"), near.clone()]).1.is_empty());
        // A class I terminal (1 km radius) 2 km away has moved; class III (20 km) 10 km away not.
        let class = |c: &str, n: u64, dlat: f64| {
            let mut b = hb(n, n * 1000, "a");
            b.class = c.into();
            b.position = Some((HOME.0 + dlat, HOME.1, "gnss".into()));
            b
        };
        let two_km = 0.018;
        let beats: Vec<Verified> = (2..=4).map(|n| class("I", n, two_km)).collect();
        let (_, findings, _) = run(&p, &[&[class("I", 1, 0.0)][..], &beats].concat());
        assert_eq!(findings.len(), 1, "class I");
        assert_eq!(findings[0].evidence["radius_km"], 1.0);
        let beats: Vec<Verified> = (2..=4).map(|n| class("III", n, 5.0 * two_km)).collect();
        assert!(run(&p, &[&[class("III", 1, 0.0)][..], &beats].concat()).1.is_empty(), "class III");
    }

    fn anchor_at(position: (f64, f64), seq: u64, institution: &str) -> Anchor {
        Anchor {
            terminal_serial: "HSTM01261100000K".into(),
            seq,
            institution: institution.into(),
            position,
            at_ms: 500,
            method: "presence".into(),
            certificate_serial: "0A".into(),
        }
    }

    /// Feeds heartbeats with the anchor known at each (`None`: no activation yet).
    fn run_anchored(p: &FleetPolicy, beats: &[(Verified, Option<Anchor>)]) -> (Option<TerminalState>, Vec<Finding>) {
        let (mut state, mut all) = (None::<TerminalState>, Vec::new());
        for (b, anchor) in beats {
            let e = evaluate(p, state.as_ref(), b, anchor.as_ref());
            if let Some(s) = e.state {
                state = Some(s);
            }
            all.extend(e.findings);
        }
        (state, all)
    }

    #[test]
    fn the_activation_is_the_reference_even_when_the_first_heartbeat_came_from_elsewhere() {
        let p = policy();
        let far_away = (HOME.0 + 0.5, HOME.1); // ~55 km north
        let from = |n: u64, pos: (f64, f64)| {
            let mut b = hb(n, n * 1000, "a");
            b.position = Some((pos.0, pos.1, "gnss".into()));
            b
        };
        let home = anchor_at(HOME, 7, "No. 1 Hospital");
        // Activated at home, heartbeating at home: nothing.
        let beats: Vec<_> = (1..=5).map(|n| (from(n, HOME), Some(home.clone()))).collect();
        assert!(run_anchored(&p, &beats).1.is_empty());
        // Moved before its first heartbeat: every heartbeat is far from the activation's place.
        let beats: Vec<_> = (1..=3).map(|n| (from(n, far_away), Some(home.clone()))).collect();
        let (_, findings) = run_anchored(&p, &beats);
        assert_eq!(findings.len(), 1, "{findings:?}");
        let e = &findings[0].evidence;
        assert_eq!(findings[0].rule, Rule::Relocation);
        assert_eq!(e["reference"], json!([HOME.0, HOME.1]));
        assert_eq!(e["reference_from"]["kind"], "activation");
        assert_eq!(
            (e["reference_from"]["seq"].as_u64(), e["reference_from"]["institution"].as_str()),
            (Some(7), Some("No. 1 Hospital"))
        );
        // Without an activation the same terminal takes its first position as home: not caught
        // (the behaviour kept for terminals the CA has no activation of).
        let beats: Vec<_> = (1..=5).map(|n| (from(n, far_away), None)).collect();
        let (state, findings) = run_anchored(&p, &beats);
        assert!(findings.is_empty(), "{findings:?}");
        assert_eq!(state.expect("s").reference, Some(far_away));
        // A first-heartbeat reference is replaced once the activation is known, and the streak
        // starts again against it.
        let mut beats: Vec<_> = (1..=2).map(|n| (from(n, HOME), None)).collect();
        beats.extend((3..=4).map(|n| (from(n, far_away), None)));
        beats.push((from(5, far_away), Some(anchor_at(far_away, 9, "Moved Legally"))));
        beats.extend((6..=9).map(|n| (from(n, far_away), Some(anchor_at(far_away, 9, "Moved Legally")))));
        let (state, findings) = run_anchored(&p, &beats);
        assert!(findings.is_empty(), "re-activated where it now is: {findings:?}");
        assert_eq!(state.expect("s").reference_seq, 9);
        let mut beats: Vec<_> = (1..=2).map(|n| (from(n, far_away), None)).collect();
        beats.extend((3..=5).map(|n| (from(n, far_away), Some(home.clone()))));
        let (_, findings) = run_anchored(&p, &beats);
        assert_eq!(findings.len(), 1, "the activation arrived after two heartbeats: {findings:?}");
        assert_eq!(findings[0].evidence["heartbeats_outside"], 3);
        // The activation's institution sets the radius: 0.5 km there, so 1 km away has moved.
        let text = SHIPPED_WITH_INSTITUTION;
        let strict = FleetPolicy::parse("fleet.toml", text).expect("policy");
        let one_km = (HOME.0 + 0.009, HOME.1);
        let beats: Vec<_> = (1..=3).map(|n| (from(n, one_km), Some(home.clone()))).collect();
        assert!(run_anchored(&p, &beats).1.is_empty(), "class II: 5 km");
        let (_, findings) = run_anchored(&strict, &beats);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].evidence["radius_km"], 0.5);
    }

    const SHIPPED_WITH_INSTITUTION: &str = r#"
[heartbeat]
interval_seconds = 60
clock_skew_seconds = 300
[rules.clone]
action = "hold"
interleave_window_seconds = 600
[rules.relocation]
action = "alert"
radius_km = 5.0
sustained_heartbeats = 3
[rules.relocation.radius_km_by_institution]
"No. 1 Hospital" = 0.5
[rules.counterfeit]
action = "alert"
[rules.tamper]
action = "revoke"
[rules.silent]
action = "alert"
missed_intervals = 3
"#;

    #[test]
    fn tamper_fires_on_the_switch() {
        let p = policy();
        let mut open = hb(2, 2000, "a");
        open.tamper = true;
        let (_, findings, _) = run(&p, &[hb(1, 1000, "a"), open.clone()]);
        assert_eq!(findings.iter().map(|f| f.rule).collect::<Vec<_>>(), [Rule::Tamper]);
        // Even as the first heartbeat ever.
        let (_, findings, _) = run(&p, &[open]);
        assert_eq!(findings[0].rule, Rule::Tamper);
    }

    #[test]
    fn silent_counts_from_the_last_heartbeat_or_the_service_start() {
        let p = policy();
        let interval = p.interval.as_millis() as u64;
        let (state, _, _) = run(&p, &[hb(1, 1000, "a")]);
        let mut s = state.expect("state");
        let limit = 1000 + interval * u64::from(p.missed_intervals);
        assert_eq!(silent(&p, &mut s, limit, 0), None);
        let f = silent(&p, &mut s, limit + 1, 0).expect("silent");
        assert_eq!((f.rule, f.key.as_str()), (Rule::Silent, "silent:0A"));
        assert_eq!(silent(&p, &mut s, limit + 10 * interval, 0), None, "fires once");
        // After a restart the clock starts again at the service's start.
        let (state, _, _) = run(&p, &[hb(1, 1000, "a")]);
        let mut s = state.expect("state");
        assert_eq!(silent(&p, &mut s, limit + 1, limit), None);
        // A retired (held, revoked) terminal is not expected to speak.
        s.retired = true;
        assert_eq!(silent(&p, &mut s, limit * 100, 0), None);
        // A heartbeat clears the silence.
        let (state, _, _) = run(&p, &[hb(1, 1000, "a")]);
        let mut s = state.expect("state");
        s.silent = true;
        let e = evaluate(&p, Some(&s), &hb(2, 2000, "a"), None);
        assert!(!e.state.expect("next").silent);
    }

    #[test]
    fn distance_is_great_circle() {
        // Beijing to Shanghai is about 1,068 km.
        let d = distance_km(HOME, (31.2304, 121.4737));
        assert!((1050.0..1090.0).contains(&d), "{d}");
        assert!(distance_km(HOME, HOME) < 1e-9);
    }
}
