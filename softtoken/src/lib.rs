//! `softtoken`: a PKCS#11 v2.40 module with SM2/SM3/SM4 under vendor-defined mechanism codes,
//! built as a `cdylib` so any PKCS#11 application can load it. It is the embedded default HSM
//! for development, demos and CI.
//!
//! Not built yet: this crate is a placeholder until the PKCS#11 issue lands.
