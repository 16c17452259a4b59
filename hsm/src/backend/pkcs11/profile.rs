//! Vendor profiles: the codes and encodings a PKCS#11 module uses for SM2.

use serde::Deserialize;

use crate::HsmError;

/// Which SM2 signing mechanism to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum SignMode {
    /// The token hashes Z ‖ M itself (SM2-with-SM3).
    #[serde(rename = "with-sm3")]
    WithSm3,
    /// We compute e = SM3(Z ‖ M) and the token signs e.
    #[serde(rename = "raw")]
    Raw,
}

/// How `CKA_EC_POINT` is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PointEncoding {
    /// DER OCTET STRING around `04 ‖ X ‖ Y` (the PKCS#11 convention).
    Der,
    /// The bare `04 ‖ X ‖ Y`.
    Raw,
}

/// How the token returns signatures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    /// r ‖ s, 64 bytes (the PKCS#11 convention for EC).
    Raw,
    /// DER `SEQUENCE { r, s }`.
    Der,
}

/// A vendor's SM2 codes and encodings. Adding a vendor is a TOML file, not code.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VendorProfile {
    /// Profile name, for logs.
    pub name: String,
    /// `CKK_*` of SM2 keys.
    pub key_type_sm2: u64,
    /// SM2 key-pair generation mechanism.
    pub mechanism_keygen: u64,
    /// SM2-with-SM3 mechanism.
    pub mechanism_sign_sm3: u64,
    /// SM2 over a digest mechanism.
    pub mechanism_sign_raw: u64,
    /// Which signing mechanism to use.
    pub sign_mode: SignMode,
    /// Whether the with-SM3 mechanism takes the signer ID as its parameter.
    pub id_parameter: bool,
    /// `CKA_EC_POINT` encoding.
    pub ec_point: PointEncoding,
    /// Signature encoding.
    pub signature: SignatureEncoding,
}

impl VendorProfile {
    /// Parses and checks a profile.
    pub fn from_toml(text: &str) -> Result<Self, HsmError> {
        let p: Self = toml::from_str(text).map_err(|e| HsmError::Config(format!("vendor profile: {e}")))?;
        for (what, code) in [
            ("key_type_sm2", p.key_type_sm2),
            ("mechanism_keygen", p.mechanism_keygen),
            ("mechanism_sign_sm3", p.mechanism_sign_sm3),
            ("mechanism_sign_raw", p.mechanism_sign_raw),
        ] {
            if !(0x8000_0000..=0xFFFF_FFFF).contains(&code) {
                return Err(HsmError::Config(format!(
                    "vendor profile {}: {what} {code:#x} is not a vendor-defined code",
                    p.name
                )));
            }
        }
        Ok(p)
    }

    /// The shipped profile for our own `softtoken`.
    pub fn softtoken() -> Result<Self, HsmError> {
        Self::from_toml(include_str!("../../../profiles/softtoken.toml"))
    }

    /// The shipped profile for XiPKI's code set.
    pub fn xipki() -> Result<Self, HsmError> {
        Self::from_toml(include_str!("../../../profiles/xipki.toml"))
    }
}
