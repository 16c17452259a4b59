//! `policies/fleet.toml`: heartbeat timing, rule thresholds and the action of each rule.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// The shipped `policies/fleet.toml`.
pub const SHIPPED: &str = include_str!("../../policies/fleet.toml");

/// What a rule does besides recording its alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Record the alert only.
    Alert,
    /// Also put the certificate on hold (certificateHold) at the CA.
    Hold,
    /// Also revoke the certificate for keyCompromise at the CA.
    Revoke,
}

impl Action {
    /// The lower-case name used in files and alerts.
    pub fn name(self) -> &'static str {
        match self {
            Self::Alert => "alert",
            Self::Hold => "hold",
            Self::Revoke => "revoke",
        }
    }
}

/// The anomaly rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// Two secure elements with one key, or two sources interleaving.
    Clone,
    /// Moved away from the reference location.
    Relocation,
    /// Not our certificate, unknown, revoked, wrong key, bad signature.
    Counterfeit,
    /// The enclosure was opened.
    Tamper,
    /// No heartbeat for too long.
    Silent,
}

impl Rule {
    /// Every rule.
    pub const ALL: [Rule; 5] = [Rule::Clone, Rule::Relocation, Rule::Counterfeit, Rule::Tamper, Rule::Silent];

    /// The name used in alerts, metrics and the policy file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Clone => "clone",
            Self::Relocation => "relocation",
            Self::Counterfeit => "counterfeit",
            Self::Tamper => "tamper",
            Self::Silent => "silent",
        }
    }
}

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Not TOML of the right shape.
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// What is wrong (with line and column).
        message: String,
    },
    /// A value out of range.
    #[error("{file}: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// What is wrong.
        message: String,
    },
}

/// The loaded policy.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetPolicy {
    /// Heartbeat interval terminals are told.
    pub interval: Duration,
    /// Allowed distance between a heartbeat's time and ours.
    pub clock_skew: Duration,
    /// Clone rule: action.
    pub clone_action: Action,
    /// Clone rule: an address back within this after another took over is interleaving.
    pub interleave_window: Duration,
    /// Relocation rule: action.
    pub relocation_action: Action,
    /// Relocation rule: radius around the reference location, for classes not named below.
    pub radius_km: f64,
    /// Relocation rule: radius by terminal class (`I`, `II`, `III`: the certificate's OU).
    pub radius_km_by_class: BTreeMap<String, f64>,
    /// Relocation rule: radius by institution (the one named in the terminal's newest
    /// activation); beats the class's.
    pub radius_km_by_institution: BTreeMap<String, f64>,
    /// Relocation rule: heartbeats in a row outside the radius.
    pub sustained_heartbeats: u32,
    /// Counterfeit rule: action.
    pub counterfeit_action: Action,
    /// Tamper rule: action.
    pub tamper_action: Action,
    /// Silent rule: action.
    pub silent_action: Action,
    /// Silent rule: intervals without a heartbeat.
    pub missed_intervals: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    heartbeat: RawHeartbeat,
    rules: RawRules,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeartbeat {
    interval_seconds: u64,
    clock_skew_seconds: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    clone: RawClone,
    relocation: RawRelocation,
    counterfeit: RawAction,
    tamper: RawAction,
    silent: RawSilent,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClone {
    action: Action,
    interleave_window_seconds: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelocation {
    action: Action,
    radius_km: f64,
    sustained_heartbeats: u32,
    #[serde(default)]
    radius_km_by_class: BTreeMap<String, f64>,
    #[serde(default)]
    radius_km_by_institution: BTreeMap<String, f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    action: Action,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSilent {
    action: Action,
    missed_intervals: u32,
}

impl FleetPolicy {
    /// Parses and checks a policy file's text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, PolicyError> {
        let raw: Raw =
            toml::from_str(text).map_err(|e| PolicyError::Parse { file: file.into(), message: e.to_string() })?;
        let invalid = |message: &str| Err(PolicyError::Invalid { file: file.into(), message: message.into() });
        if !(1..=86_400).contains(&raw.heartbeat.interval_seconds) {
            return invalid("heartbeat.interval_seconds must be 1 to 86400");
        }
        if !(1..=3600).contains(&raw.heartbeat.clock_skew_seconds) {
            return invalid("heartbeat.clock_skew_seconds must be 1 to 3600");
        }
        let r = raw.rules;
        if !(r.relocation.radius_km.is_finite() && r.relocation.radius_km > 0.0) {
            return invalid("rules.relocation.radius_km must be a positive number");
        }
        for (class, km) in &r.relocation.radius_km_by_class {
            if !["I", "II", "III"].contains(&class.as_str()) {
                return invalid(&format!(
                    "rules.relocation.radius_km_by_class: unknown class {class:?} (I, II or III)"
                ));
            }
            if !(km.is_finite() && *km > 0.0) {
                return invalid(&format!("rules.relocation.radius_km_by_class.{class} must be a positive number"));
            }
        }
        for (institution, km) in &r.relocation.radius_km_by_institution {
            if institution.trim().is_empty() {
                return invalid("rules.relocation.radius_km_by_institution: an institution name is empty");
            }
            if !(km.is_finite() && *km > 0.0) {
                return invalid(&format!(
                    "rules.relocation.radius_km_by_institution.{institution:?} must be a positive number"
                ));
            }
        }
        if r.relocation.sustained_heartbeats == 0 {
            return invalid("rules.relocation.sustained_heartbeats must be at least 1");
        }
        if r.silent.missed_intervals < 2 {
            // One missed interval is ordinary jitter, not silence.
            return invalid("rules.silent.missed_intervals must be at least 2");
        }
        if r.counterfeit.action != Action::Alert {
            // A counterfeit's certificate is not the victim's to hold: only the alert makes sense.
            return invalid("rules.counterfeit.action must be \"alert\"");
        }
        Ok(Self {
            interval: Duration::from_secs(raw.heartbeat.interval_seconds),
            clock_skew: Duration::from_secs(raw.heartbeat.clock_skew_seconds),
            clone_action: r.clone.action,
            interleave_window: Duration::from_secs(r.clone.interleave_window_seconds),
            relocation_action: r.relocation.action,
            radius_km: r.relocation.radius_km,
            radius_km_by_class: r.relocation.radius_km_by_class,
            radius_km_by_institution: r.relocation.radius_km_by_institution,
            sustained_heartbeats: r.relocation.sustained_heartbeats,
            counterfeit_action: r.counterfeit.action,
            tamper_action: r.tamper.action,
            silent_action: r.silent.action,
            missed_intervals: r.silent.missed_intervals,
        })
    }

    /// The shipped policy.
    pub fn shipped() -> Result<Self, PolicyError> {
        Self::parse("policies/fleet.toml", SHIPPED)
    }

    /// The relocation radius for a terminal of `class` activated at `institution` (if known):
    /// the institution's, else the class's, else the default.
    pub fn radius_km_for(&self, class: &str, institution: Option<&str>) -> f64 {
        institution
            .and_then(|i| self.radius_km_by_institution.get(i))
            .or_else(|| self.radius_km_by_class.get(class))
            .copied()
            .unwrap_or(self.radius_km)
    }

    /// The action of `rule`.
    pub fn action(&self, rule: Rule) -> Action {
        match rule {
            Rule::Clone => self.clone_action,
            Rule::Relocation => self.relocation_action,
            Rule::Counterfeit => self.counterfeit_action,
            Rule::Tamper => self.tamper_action,
            Rule::Silent => self.silent_action,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_policy_loads_with_tamper_revoking() {
        let p = FleetPolicy::shipped().expect("loads");
        assert_eq!(p.interval, Duration::from_secs(60));
        assert_eq!(p.action(Rule::Tamper), Action::Revoke);
        assert_eq!(p.action(Rule::Clone), Action::Hold);
        assert_eq!(p.sustained_heartbeats, 3);
        // Class I (fixed in a hospital) is held closest; other classes get the default.
        assert_eq!((p.radius_km_for("I", None), p.radius_km_for("III", None)), (1.0, 20.0));
        assert_eq!(p.radius_km_for("", None), p.radius_km);
    }

    #[test]
    fn an_institutions_radius_beats_its_class_which_beats_the_default() {
        let text = SHIPPED.replace(
            "[rules.counterfeit]",
            "[rules.relocation.radius_km_by_institution]\n\"No. 1 Hospital\" = 0.5\n\"Rural Clinic 7\" = 50.0\n\n[rules.counterfeit]",
        );
        let p = FleetPolicy::parse("fleet.toml", &text).expect("loads");
        assert_eq!(p.radius_km_for("I", Some("No. 1 Hospital")), 0.5, "institution over class I");
        assert_eq!(p.radius_km_for("III", Some("Rural Clinic 7")), 50.0, "institution over class III");
        assert_eq!(p.radius_km_for("I", Some("Another Hospital")), 1.0, "unlisted institution: the class");
        assert_eq!(p.radius_km_for("II", Some("Another Hospital")), 5.0, "no class entry: the default");
        assert_eq!(p.radius_km_for("II", None), 5.0, "no activation: class, then default");
    }

    #[test]
    fn bad_policies_are_refused_with_the_reason() {
        let bad = |from: &str, to: &str| {
            assert!(SHIPPED.contains(from), "{from}");
            FleetPolicy::parse("fleet.toml", &SHIPPED.replacen(from, to, 1)).expect_err(to).to_string()
        };
        assert!(bad("interval_seconds = 60", "interval_seconds = 0").contains("interval_seconds"));
        assert!(bad("clock_skew_seconds = 300", "clock_skew_seconds = 0").contains("clock_skew"));
        assert!(bad("radius_km = 5.0", "radius_km = -1.0").contains("radius_km"));
        assert!(bad("radius_km = 5.0", "radius_km = nan").contains("radius_km"));
        assert!(bad("sustained_heartbeats = 3", "sustained_heartbeats = 0").contains("sustained"));
        assert!(bad("missed_intervals = 3", "missed_intervals = 1").contains("missed_intervals"));
        assert!(bad("action = \"hold\"", "action = \"ban\"").contains("unknown variant"));
        assert!(bad("missed_intervals = 3", "missed_intervals = 3\nextra = 1").contains("unknown field"));
        assert!(bad("I = 1.0", "IV = 1.0").contains("unknown class"));
        assert!(bad("I = 1.0", "I = 0.0").contains("radius_km_by_class.I"));
        let institution = |entry: &str| {
            let text = SHIPPED.replace(
                "[rules.counterfeit]",
                &format!("[rules.relocation.radius_km_by_institution]\n{entry}\n\n[rules.counterfeit]"),
            );
            FleetPolicy::parse("fleet.toml", &text).expect_err(entry).to_string()
        };
        assert!(institution("\"No. 1 Hospital\" = -2.0").contains("radius_km_by_institution.\"No. 1 Hospital\""));
        assert!(institution("\"No. 1 Hospital\" = inf").contains("positive number"));
        assert!(institution("\" \" = 2.0").contains("name is empty"));
        assert!(institution("\"No. 1 Hospital\" = \"far\"").contains("invalid type"));
        let counterfeit = "[rules.counterfeit]\naction = \"alert\"";
        assert!(bad(counterfeit, "[rules.counterfeit]\naction = \"revoke\"").contains("counterfeit"));
    }
}
