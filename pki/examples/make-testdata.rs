//! Regenerates `pki/testdata/csr/`: one file per CSR the CA must refuse (plus `ok_*` controls).
//! The files are committed; `tests/csr_corpus.rs` says which error each one must produce.
//!
//! `cargo run -p pki --example make-testdata`

use std::path::Path;
use std::str::FromStr;

use anyhow::Result;
use der::Encode;
use der::asn1::BitString;
use sm2::dsa::SigningKey;
use sm2::dsa::signature::Signer;
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::name::Name;
use x509_cert::request::{CertReq, CertReqInfo, Version};

const ID: &str = pki::DEFAULT_SIGNER_ID;

struct Csr {
    subject: &'static str,
    spki: Option<SubjectPublicKeyInfoOwned>,
    algorithm: AlgorithmIdentifierOwned,
    distid: &'static str,
    raw_signature: bool,
}

impl Default for Csr {
    fn default() -> Self {
        Self {
            subject: "CN=HSTM01261100000K,serialNumber=HSTM01261100000K",
            spki: None,
            algorithm: pki::alg::sm2_with_sm3(),
            distid: ID,
            raw_signature: false,
        }
    }
}

fn build(key: &sm2::SecretKey, c: Csr) -> Result<Vec<u8>> {
    let public = pki::Sm2PublicKey::from_sec1(&key.public_key().to_sec1_bytes())?;
    let info = CertReqInfo {
        version: Version::V1,
        subject: Name::from_str(c.subject)?,
        public_key: c.spki.unwrap_or_else(|| public.to_spki()),
        attributes: Default::default(),
    };
    let sk = SigningKey::new(c.distid, key)?;
    let sig: sm2::dsa::Signature = sk.try_sign(&info.to_der()?)?;
    let sig_bytes = if c.raw_signature { sig.to_vec() } else { sig.to_der().to_vec() };
    let req = CertReq { info, algorithm: c.algorithm, signature: BitString::from_bytes(&sig_bytes)? };
    Ok(req.to_der()?)
}

fn spki_with(
    key: &sm2::SecretKey,
    f: impl FnOnce(&mut SubjectPublicKeyInfoOwned) -> Result<()>,
) -> Result<SubjectPublicKeyInfoOwned> {
    let mut spki = pki::Sm2PublicKey::from_sec1(&key.public_key().to_sec1_bytes())?.to_spki();
    f(&mut spki)?;
    Ok(spki)
}

fn main() -> Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/csr");
    std::fs::create_dir_all(&dir)?;
    let key = sm2::SecretKey::from_slice(&[0x11; 32])?;
    let good = build(&key, Csr::default())?;

    let mut files: Vec<(&str, Vec<u8>)> = vec![
        ("ok_terminal.der.csr", good.clone()),
        ("ok_cn_only.der.csr", build(&key, Csr { subject: "CN=HSTM01261100000K", ..Csr::default() })?),
        ("truncated.der.csr", good[..good.len() - 10].to_vec()),
        ("not_der.der.csr", b"this is not a certificate request\n".to_vec()),
        ("trailing_bytes.der.csr", [good.as_slice(), &[0x00, 0x00]].concat()),
        ("too_large.der.csr", [good.as_slice(), &vec![0u8; pki::csr::MAX_CSR_BYTES + 1 - good.len()]].concat()),
    ];
    let p256 = spki_with(&key, |s| {
        s.algorithm.parameters = Some(der::Any::from(const_oid::db::rfc5912::SECP_256_R_1));
        Ok(())
    })?;
    files.push(("p256_curve_key.der.csr", build(&key, Csr { spki: Some(p256), ..Csr::default() })?));
    let rsa = spki_with(&key, |s| {
        s.algorithm = AlgorithmIdentifierOwned {
            oid: const_oid::db::rfc5912::RSA_ENCRYPTION,
            parameters: Some(der::Any::null()),
        };
        Ok(())
    })?;
    files.push(("rsa_key_type.der.csr", build(&key, Csr { spki: Some(rsa), ..Csr::default() })?));
    let off = spki_with(&key, |s| {
        let mut point = s.subject_public_key.raw_bytes().to_vec();
        point[64] ^= 0x01;
        s.subject_public_key = BitString::from_bytes(&point)?;
        Ok(())
    })?;
    files.push(("off_curve_key.der.csr", build(&key, Csr { spki: Some(off), ..Csr::default() })?));
    let inf = spki_with(&key, |s| {
        s.subject_public_key = BitString::from_bytes(&[0x00])?;
        Ok(())
    })?;
    files.push(("infinity_key.der.csr", build(&key, Csr { spki: Some(inf), ..Csr::default() })?));
    let ecdsa = AlgorithmIdentifierOwned { oid: const_oid::db::rfc5912::ECDSA_WITH_SHA_256, parameters: None };
    files.push(("ecdsa_sha256_algorithm.der.csr", build(&key, Csr { algorithm: ecdsa, ..Csr::default() })?));
    let with_null = AlgorithmIdentifierOwned { oid: pki::alg::SM2_WITH_SM3, parameters: Some(der::Any::null()) };
    files
        .push(("sm2_algorithm_with_null_params.der.csr", build(&key, Csr { algorithm: with_null, ..Csr::default() })?));
    files.push(("empty_signer_id.der.csr", build(&key, Csr { distid: "", ..Csr::default() })?));
    files.push(("other_signer_id.der.csr", build(&key, Csr { distid: "ALICE123@YAHOO.COM", ..Csr::default() })?));
    files.push(("raw_rs_signature.der.csr", build(&key, Csr { raw_signature: true, ..Csr::default() })?));
    let mut tampered = good.clone();
    let n = tampered.len();
    tampered[n - 5] ^= 0x40;
    files.push(("tampered_signature.der.csr", tampered));
    let mut tampered_subject = good.clone();
    if let Some(at) = tampered_subject.windows(16).position(|w| w == b"HSTM01261100000K") {
        tampered_subject[at + 15] = b'J';
    }
    files.push(("tampered_subject.der.csr", tampered_subject));
    files.push((
        "other_terminal_serial.der.csr",
        build(&key, Csr { subject: "CN=HSTM01261100001I,serialNumber=HSTM01261100001I", ..Csr::default() })?,
    ));
    files.push((
        "mixed_serials.der.csr",
        build(&key, Csr { subject: "CN=HSTM01261100000K,serialNumber=HSTM01261100001I", ..Csr::default() })?,
    ));
    files.push(("no_serial_in_subject.der.csr", build(&key, Csr { subject: "O=HSTM,C=CN", ..Csr::default() })?));

    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes)?;
        println!("wrote testdata/csr/{name}");
    }
    Ok(())
}
