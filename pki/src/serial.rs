//! Terminal serial numbers (医保唯一序列号, REQUIREMENTS T1/T2) and the rules that check them.
//!
//! The national encoding (HSTS figure 2) is not in our sources, so a rule is data loaded from
//! `policies/serial-rules.toml`: a fixed-length layout of named fields, each with its own
//! character set or date format, and a check character computed by an ISO/IEC 7064 hybrid system.

use std::fmt;

/// What one field of a serial number may hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldFormat {
    /// Any characters of this set.
    Charset(Vec<char>),
    /// Production year and month as `YYMM` (month 01–12).
    YearMonth,
    /// The check character over all preceding characters.
    Check,
}

/// One field of a serial-number layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SerialField {
    /// Field name, e.g. `manufacturer`.
    pub name: String,
    /// Number of characters.
    pub len: usize,
    /// What the characters may be.
    pub format: FieldFormat,
}

/// The check-character algorithm of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckAlgorithm {
    /// ISO/IEC 7064 MOD 37,36 (hybrid, alphanumeric `0-9A-Z`).
    Iso7064Mod37_36,
    /// ISO/IEC 7064 MOD 11,10 (hybrid, numeric `0-9`).
    Iso7064Mod11_10,
}

impl CheckAlgorithm {
    /// The algorithm's modulus M (the alphabet size).
    fn modulus(self) -> u32 {
        match self {
            Self::Iso7064Mod37_36 => 36,
            Self::Iso7064Mod11_10 => 10,
        }
    }

    /// The characters the algorithm works over, in value order.
    pub fn alphabet(self) -> Vec<char> {
        (0..self.modulus()).filter_map(|v| char::from_digit(v, 36)).map(|c| c.to_ascii_uppercase()).collect()
    }

    /// The check character for `data`, or `None` if a character is outside the alphabet.
    pub fn compute(self, data: &str) -> Option<char> {
        let m = self.modulus();
        let mut p = m;
        for c in data.chars() {
            let v = c.to_digit(36).filter(|v| *v < m)?;
            let mut t = (p + v) % m;
            if t == 0 {
                t = m;
            }
            p = (2 * t) % (m + 1);
        }
        let check = (m + 1 - p) % m;
        char::from_digit(check, 36).map(|c| c.to_ascii_uppercase())
    }
}

/// A validated serial-number rule (`T1`/`T2`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SerialRule {
    /// The rule's name in the policy.
    pub name: String,
    /// Fields in order; their lengths add up to the serial's length.
    pub fields: Vec<SerialField>,
    /// How the check character (the field of format [`FieldFormat::Check`]) is computed.
    pub check: CheckAlgorithm,
    /// The field that names the manufacturer, which binds a station to the terminals it may issue for.
    pub manufacturer_field: String,
}

/// Why a serial number does not follow its rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SerialError {
    /// Wrong number of characters.
    #[error("serial number must have {expected} characters, has {found}")]
    WrongLength {
        /// Characters the rule wants.
        expected: usize,
        /// Characters given.
        found: usize,
    },
    /// A character is not allowed in its field.
    #[error("character {ch:?} at position {position} is not allowed in field `{field}`")]
    BadCharacter {
        /// 1-based position.
        position: usize,
        /// The character.
        ch: char,
        /// The field it falls in.
        field: String,
    },
    /// The `YYMM` field has a month outside 01–12.
    #[error("field `{field}` is {value:?}, not a year and month YYMM")]
    BadYearMonth {
        /// The field.
        field: String,
        /// What it held.
        value: String,
    },
    /// The check character is wrong.
    #[error("check character is {found:?}, expected {expected:?}")]
    CheckCharacterMismatch {
        /// What the algorithm gives.
        expected: char,
        /// What the serial has.
        found: char,
    },
}

impl SerialRule {
    /// Total length of a serial under this rule.
    pub fn len(&self) -> usize {
        self.fields.iter().map(|f| f.len).sum()
    }

    /// Whether the rule has no fields (never true for a loaded rule).
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Checks `text` against the rule and returns the typed serial.
    pub fn parse(&self, text: &str) -> Result<TerminalSerial, SerialError> {
        let chars: Vec<char> = text.chars().collect();
        if chars.len() != self.len() {
            return Err(SerialError::WrongLength { expected: self.len(), found: chars.len() });
        }
        let mut at = 0;
        let mut spans = Vec::with_capacity(self.fields.len());
        for field in &self.fields {
            let value: String = chars[at..at + field.len].iter().collect();
            match &field.format {
                FieldFormat::Charset(set) => {
                    if let Some((i, &ch)) = chars[at..at + field.len].iter().enumerate().find(|(_, c)| !set.contains(c))
                    {
                        return Err(SerialError::BadCharacter { position: at + i + 1, ch, field: field.name.clone() });
                    }
                }
                FieldFormat::YearMonth => {
                    if let Some((i, &ch)) =
                        chars[at..at + field.len].iter().enumerate().find(|(_, c)| !c.is_ascii_digit())
                    {
                        return Err(SerialError::BadCharacter { position: at + i + 1, ch, field: field.name.clone() });
                    }
                    let month: u32 = value[2..].parse().unwrap_or(0);
                    if !(1..=12).contains(&month) {
                        return Err(SerialError::BadYearMonth { field: field.name.clone(), value });
                    }
                }
                FieldFormat::Check => {
                    let data: String = chars[..at].iter().collect();
                    let found = chars[at];
                    match self.check.compute(&data) {
                        Some(expected) if expected == found => {}
                        Some(expected) => {
                            return Err(SerialError::CheckCharacterMismatch { expected, found });
                        }
                        // Unreachable for a loaded rule: every field's alphabet is inside the check alphabet.
                        None => {
                            return Err(SerialError::BadCharacter {
                                position: at + 1,
                                ch: found,
                                field: field.name.clone(),
                            });
                        }
                    }
                }
            }
            spans.push((field.name.clone(), value));
            at += field.len;
        }
        Ok(TerminalSerial { text: text.to_owned(), fields: spans, manufacturer_field: self.manufacturer_field.clone() })
    }
}

/// A terminal serial number that has passed its rule, with its fields.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TerminalSerial {
    text: String,
    fields: Vec<(String, String)>,
    manufacturer_field: String,
}

impl TerminalSerial {
    /// The serial as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value of a named field.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The manufacturer code.
    pub fn manufacturer(&self) -> &str {
        self.field(&self.manufacturer_field).unwrap_or_default()
    }

    /// All fields in order.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

impl fmt::Display for TerminalSerial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The class of a terminal (REQUIREMENTS T3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TerminalClass {
    /// Class I: QR code only.
    I,
    /// Class II: QR code and face.
    II,
    /// Class III: QR code, face and mobile payment.
    III,
}

impl TerminalClass {
    /// `I`, `II` or `III`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::I => "I",
            Self::II => "II",
            Self::III => "III",
        }
    }
}

impl std::str::FromStr for TerminalClass {
    type Err = UnknownClass;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "I" | "1" => Ok(Self::I),
            "II" | "2" => Ok(Self::II),
            "III" | "3" => Ok(Self::III),
            _ => Err(UnknownClass(s.to_owned())),
        }
    }
}

impl fmt::Display for TerminalClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A terminal class other than I, II or III.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown terminal class {0:?} (expected I, II or III)")]
pub struct UnknownClass(pub String);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicySet;

    fn rule() -> SerialRule {
        PolicySet::embedded_default().expect("policy").serial_rule().clone()
    }

    const VALID: [&str; 3] = ["HSTM01261100000K", "HSTM01261100001I", "A1B2032512ZZ9Q0G"];

    #[test]
    fn issue_vectors_are_valid() {
        let rule = rule();
        for v in VALID {
            let s = rule.parse(v).unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!(s.as_str(), v);
        }
        let s = rule.parse("A1B2032512ZZ9Q0G").expect("valid");
        assert_eq!(s.manufacturer(), "A1B2");
        assert_eq!(s.field("model"), Some("03"));
        assert_eq!(s.field("production"), Some("2512"));
        assert_eq!(s.field("sequence"), Some("ZZ9Q0"));
    }

    #[test]
    fn check_character_computed_independently_of_parse() {
        // MOD 37,36 over the first 15 characters gives the 16th.
        for v in VALID {
            let (data, check) = v.split_at(15);
            assert_eq!(CheckAlgorithm::Iso7064Mod37_36.compute(data).map(String::from), Some(check.to_owned()));
        }
        // ISO 7064 MOD 11,10 published example: 0794 → check 5.
        assert_eq!(CheckAlgorithm::Iso7064Mod11_10.compute("0794"), Some('5'));
    }

    #[test]
    fn every_single_character_change_is_rejected() {
        let rule = rule();
        let alphabet = CheckAlgorithm::Iso7064Mod37_36.alphabet();
        let mut tried = 0;
        for v in VALID {
            let chars: Vec<char> = v.chars().collect();
            for pos in 0..chars.len() {
                for &c in alphabet.iter().filter(|c| **c != chars[pos]) {
                    let mut changed = chars.clone();
                    changed[pos] = c;
                    let s: String = changed.into_iter().collect();
                    assert!(rule.parse(&s).is_err(), "{s} (changed from {v} at {pos}) was accepted");
                    tried += 1;
                }
            }
        }
        assert_eq!(tried, 3 * 16 * 35);
    }

    #[test]
    fn rejections_name_what_is_wrong() {
        let rule = rule();
        assert_eq!(rule.parse("HSTM0126110000K"), Err(SerialError::WrongLength { expected: 16, found: 15 }));
        assert!(matches!(rule.parse("HSTMA1261100000K"), Err(SerialError::BadCharacter { position: 5, ch: 'A', .. })));
        assert!(matches!(rule.parse("hstm01261100000K"), Err(SerialError::BadCharacter { position: 1, .. })));
        assert!(matches!(rule.parse("HSTM01261300000K"), Err(SerialError::BadYearMonth { .. })));
        assert!(matches!(rule.parse("HSTM01260000000K"), Err(SerialError::BadYearMonth { .. })));
        assert_eq!(
            rule.parse("HSTM01261100000J"),
            Err(SerialError::CheckCharacterMismatch { expected: 'K', found: 'J' })
        );
        assert!(rule.parse("").is_err());
        assert!(rule.parse("HSTM01261100000Ｋ").is_err());
    }

    #[test]
    fn classes_parse() {
        assert_eq!("II".parse::<TerminalClass>(), Ok(TerminalClass::II));
        assert_eq!("3".parse::<TerminalClass>(), Ok(TerminalClass::III));
        assert!("IV".parse::<TerminalClass>().is_err());
    }
}
