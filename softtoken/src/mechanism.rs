//! Vendor-defined codes for SM2/SM3/SM4, and the mechanisms the token offers.
//!
//! Native codes sit under `CKM_VENDOR_DEFINED | 0x53xx`; XiPKI's code set (`0xFFFFF0xx`) is
//! accepted as an alias, so a client configured for either vendor profile works.

use cryptoki_sys::*;

/// SM2 key type (native).
pub const CKK_SM2: CK_KEY_TYPE = 0x8000_5301;
/// SM4 key type (native).
pub const CKK_SM4: CK_KEY_TYPE = 0x8000_5302;
/// SM2 key type in XiPKI's code set.
pub const CKK_XIPKI_SM2: CK_KEY_TYPE = 0xFFFF_F001;
/// SM4 key type in XiPKI's code set.
pub const CKK_XIPKI_SM4: CK_KEY_TYPE = 0xFFFF_F002;

/// SM2 key-pair generation.
pub const CKM_SM2_KEY_PAIR_GEN: CK_MECHANISM_TYPE = 0x8000_5301;
/// SM2 signature over a caller-supplied 32-byte e = SM3(Z ‖ M) ("raw"); signature is r ‖ s.
pub const CKM_SM2: CK_MECHANISM_TYPE = 0x8000_5302;
/// SM2-with-SM3 over the message; optional parameter: the signer ID (default 1234567812345678).
pub const CKM_SM2_SM3: CK_MECHANISM_TYPE = 0x8000_5303;
/// SM2 public-key encryption, ciphertext C1 ‖ C3 ‖ C2 (GM/T 0003.4-2012 order as revised).
pub const CKM_SM2_ENCRYPT: CK_MECHANISM_TYPE = 0x8000_5304;
/// SM3 digest.
pub const CKM_SM3: CK_MECHANISM_TYPE = 0x8000_5305;
/// SM4 key generation (16-byte keys).
pub const CKM_SM4_KEY_GEN: CK_MECHANISM_TYPE = 0x8000_5306;
/// SM4-ECB, no padding.
pub const CKM_SM4_ECB: CK_MECHANISM_TYPE = 0x8000_5307;
/// SM4-CBC, no padding; parameter: the 16-byte IV.
pub const CKM_SM4_CBC: CK_MECHANISM_TYPE = 0x8000_5308;
/// SM4 CBC-MAC over zero-padded data, 8-byte MAC (as CKM_AES_MAC: half a block).
pub const CKM_SM4_MAC: CK_MECHANISM_TYPE = 0x8000_5309;

/// The DER encoding of the SM2 curve OID 1.2.156.10197.1.301, as found in `CKA_EC_PARAMS`.
pub const SM2_EC_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x82, 0x2d];
/// The GM/T 0009 default signer ID.
pub const DEFAULT_SIGNER_ID: &[u8] = b"1234567812345678";

/// What a mechanism code means to the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mech {
    /// SM2 key pair generation (vendor code, or `CKM_EC_KEY_PAIR_GEN` with SM2 params).
    Sm2KeyGen,
    /// SM2 sign/verify of a 32-byte digest.
    Sm2Raw,
    /// SM2-with-SM3 sign/verify.
    Sm2Sm3,
    /// SM2 encrypt/decrypt.
    Sm2Encrypt,
    /// SM3 digest.
    Sm3,
    /// SM4 key generation.
    Sm4KeyGen,
    /// SM4-ECB.
    Sm4Ecb,
    /// SM4-CBC.
    Sm4Cbc,
    /// SM4 CBC-MAC.
    Sm4Mac,
}

/// Native codes with their XiPKI aliases, in the order `C_GetMechanismList` reports them.
pub const TABLE: [(Mech, CK_MECHANISM_TYPE, CK_MECHANISM_TYPE); 9] = [
    (Mech::Sm2KeyGen, CKM_SM2_KEY_PAIR_GEN, 0xFFFF_F001),
    (Mech::Sm2Raw, CKM_SM2, 0xFFFF_F002),
    (Mech::Sm2Sm3, CKM_SM2_SM3, 0xFFFF_F003),
    (Mech::Sm2Encrypt, CKM_SM2_ENCRYPT, 0xFFFF_F004),
    (Mech::Sm3, CKM_SM3, 0xFFFF_F005),
    (Mech::Sm4KeyGen, CKM_SM4_KEY_GEN, 0xFFFF_F006),
    (Mech::Sm4Ecb, CKM_SM4_ECB, 0xFFFF_F007),
    (Mech::Sm4Cbc, CKM_SM4_CBC, 0xFFFF_F008),
    (Mech::Sm4Mac, CKM_SM4_MAC, 0xFFFF_F00A),
];

impl Mech {
    /// Looks up a code (native, XiPKI alias, or `CKM_EC_KEY_PAIR_GEN`).
    pub fn from_code(code: CK_MECHANISM_TYPE) -> Option<Self> {
        if code == CKM_EC_KEY_PAIR_GEN {
            return Some(Self::Sm2KeyGen);
        }
        TABLE.iter().find(|(_, n, x)| *n == code || *x == code).map(|(m, _, _)| *m)
    }

    /// Every code the token answers to.
    pub fn all_codes() -> Vec<CK_MECHANISM_TYPE> {
        let mut codes: Vec<_> = TABLE.iter().flat_map(|(_, n, x)| [*n, *x]).collect();
        codes.push(CKM_EC_KEY_PAIR_GEN);
        codes
    }

    /// `CK_MECHANISM_INFO` for this mechanism.
    pub fn info(self) -> CK_MECHANISM_INFO {
        let (min, max, flags) = match self {
            Self::Sm2KeyGen => (256, 256, CKF_GENERATE_KEY_PAIR | CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS),
            Self::Sm2Raw | Self::Sm2Sm3 => (256, 256, CKF_SIGN | CKF_VERIFY),
            Self::Sm2Encrypt => (256, 256, CKF_ENCRYPT | CKF_DECRYPT),
            Self::Sm3 => (0, 0, CKF_DIGEST),
            Self::Sm4KeyGen => (16, 16, CKF_GENERATE),
            Self::Sm4Ecb | Self::Sm4Cbc => (16, 16, CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP),
            Self::Sm4Mac => (16, 16, CKF_SIGN | CKF_VERIFY),
        };
        CK_MECHANISM_INFO { ulMinKeySize: min, ulMaxKeySize: max, flags }
    }
}

/// Whether a key type code means SM2 (native or alias).
pub fn is_sm2_key_type(kt: CK_KEY_TYPE) -> bool {
    kt == CKK_SM2 || kt == CKK_XIPKI_SM2
}

/// Whether a key type code means SM4 (native or alias).
pub fn is_sm4_key_type(kt: CK_KEY_TYPE) -> bool {
    kt == CKK_SM4 || kt == CKK_XIPKI_SM4
}
