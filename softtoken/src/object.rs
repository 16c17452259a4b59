//! Objects: attribute maps with PKCS#11's rules about who may read and change what.

use std::collections::BTreeMap;

use cryptoki_sys::*;
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::mechanism::{SM2_EC_PARAMS, is_sm2_key_type, is_sm4_key_type};

/// An object's attributes, by type. Values are zeroized when the object is dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    /// Attribute values as PKCS#11 encodes them (`CK_BBOOL` is one byte, `CK_ULONG` native-endian).
    #[serde(with = "hex_map")]
    pub attrs: BTreeMap<CK_ATTRIBUTE_TYPE, Vec<u8>>,
}

impl Drop for Object {
    fn drop(&mut self) {
        for v in self.attrs.values_mut() {
            v.zeroize();
        }
    }
}

/// Encodes a `CK_ULONG` attribute value.
pub fn ulong(v: CK_ULONG) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

/// Encodes a `CK_BBOOL` attribute value.
pub fn bbool(v: bool) -> Vec<u8> {
    vec![u8::from(v)]
}

impl Object {
    /// A `CK_ULONG` attribute.
    pub fn get_ulong(&self, t: CK_ATTRIBUTE_TYPE) -> Option<CK_ULONG> {
        let v = self.attrs.get(&t)?;
        Some(CK_ULONG::from_ne_bytes(v.as_slice().try_into().ok()?))
    }

    /// A `CK_BBOOL` attribute, or `default` when absent.
    pub fn get_bool(&self, t: CK_ATTRIBUTE_TYPE, default: bool) -> bool {
        self.attrs.get(&t).map_or(default, |v| v.first().is_some_and(|b| *b != 0))
    }

    /// `CKA_CLASS`.
    pub fn class(&self) -> Option<CK_OBJECT_CLASS> {
        self.get_ulong(CKA_CLASS)
    }

    /// `CKA_KEY_TYPE`.
    pub fn key_type(&self) -> Option<CK_KEY_TYPE> {
        self.get_ulong(CKA_KEY_TYPE)
    }

    /// `CKA_TOKEN` (default false).
    pub fn is_token(&self) -> bool {
        self.get_bool(CKA_TOKEN, false)
    }

    /// `CKA_PRIVATE` (default true for private and secret keys, false otherwise).
    pub fn is_private(&self) -> bool {
        let default = matches!(self.class(), Some(CKO_PRIVATE_KEY | CKO_SECRET_KEY));
        self.get_bool(CKA_PRIVATE, default)
    }

    /// Whether this is an SM2 key: SM2 key type, or an EC key on the SM2 curve.
    pub fn is_sm2(&self) -> bool {
        match self.key_type() {
            Some(kt) if is_sm2_key_type(kt) => true,
            Some(CKK_EC) => self.attrs.get(&CKA_EC_PARAMS).is_some_and(|p| p.as_slice() == SM2_EC_PARAMS),
            _ => false,
        }
    }

    /// Whether this is an SM4 secret key.
    pub fn is_sm4(&self) -> bool {
        self.class() == Some(CKO_SECRET_KEY) && self.key_type().is_some_and(is_sm4_key_type)
    }

    /// Whether the value of attribute `t` may be revealed: never for the secret parts of a
    /// sensitive or unextractable key (PKCS#11 §4.4: `CKR_ATTRIBUTE_SENSITIVE`).
    pub fn is_readable(&self, t: CK_ATTRIBUTE_TYPE) -> bool {
        let secret_part = t == CKA_VALUE || t == CKA_PRIVATE_EXPONENT || t == CKA_PRIME_1 || t == CKA_PRIME_2;
        let key = matches!(self.class(), Some(CKO_PRIVATE_KEY | CKO_SECRET_KEY));
        !(key && secret_part && (self.get_bool(CKA_SENSITIVE, true) || !self.get_bool(CKA_EXTRACTABLE, false)))
    }

    /// Whether every attribute of `template` is present with the same value.
    pub fn matches(&self, template: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)]) -> bool {
        template.iter().all(|(t, v)| match (t, self.attrs.get(t)) {
            (&CKA_PRIVATE, None) => bbool(self.is_private()) == *v,
            (&CKA_TOKEN, None) => bbool(false) == *v,
            (_, Some(have)) => have == v,
            (_, None) => false,
        })
    }
}

/// Attribute values as hex in `token.json` (and, sealed, for private objects). Values include
/// private scalars and SM4 keys: every hex copy made on the way in or out is wiped after use.
mod hex_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error};
    use zeroize::{Zeroize, Zeroizing};

    struct Hex<'a>(&'a [u8]);

    impl Serialize for Hex<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&Zeroizing::new(hex::encode(self.0)))
        }
    }

    pub fn serialize<S: Serializer>(map: &BTreeMap<u64, Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(map.iter().map(|(k, v)| (format!("{k:#x}"), Hex(v))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u64, Vec<u8>>, D::Error> {
        let mut raw = BTreeMap::<String, String>::deserialize(d)?;
        let decoded = raw
            .iter()
            .map(|(k, v)| {
                let key = u64::from_str_radix(k.trim_start_matches("0x"), 16).map_err(D::Error::custom)?;
                Ok((key, hex::decode(v).map_err(D::Error::custom)?))
            })
            .collect();
        raw.values_mut().for_each(Zeroize::zeroize);
        decoded
    }
}
