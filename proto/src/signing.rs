//! Signed requests (DESIGN §3): every call carries the caller's SM2 certificate, a time, a nonce
//! and an SM2 signature over a canonical string that binds them to the method and the exact
//! request bytes. Clients build the metadata here; the server verifies it (`ca-server::auth`).

use sm3::{Digest, Sm3};

/// Metadata key: base64 DER of the caller's identity certificate.
pub const CERT: &str = "x-hsca-cert";
/// Metadata key: unix milliseconds.
pub const TIME: &str = "x-hsca-time";
/// Metadata key: 16 random bytes, hex.
pub const NONCE: &str = "x-hsca-nonce";
/// Metadata key: base64 DER SM2 signature.
pub const SIGNATURE: &str = "x-hsca-signature";

/// The version tag that starts every canonical string.
pub const VERSION: &str = "HSCA-REQ-1";

/// `"HSCA-REQ-1\n" + method + "\n" + time + "\n" + nonce + "\n" + hex(SM3(request bytes))`.
pub fn canonical(method: &str, time_ms: u64, nonce_hex: &str, body: &[u8]) -> Vec<u8> {
    let digest = hex::encode(Sm3::digest(body));
    format!("{VERSION}\n{method}\n{time_ms}\n{nonce_hex}\n{digest}").into_bytes()
}

/// The four metadata values of a signed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedHeaders {
    /// DER of the caller's certificate.
    pub cert_der: Vec<u8>,
    /// Unix milliseconds.
    pub time_ms: u64,
    /// Hex of 16 random bytes.
    pub nonce_hex: String,
    /// DER SM2 signature over [`canonical`].
    pub signature_der: Vec<u8>,
}

/// Why request metadata could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// A header is missing.
    #[error("missing {0}")]
    Missing(&'static str),
    /// A header is not what it should be.
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// Signs a request: `method` is the gRPC path (`/hsca.v1.CertificateAuthority/IssueTerminalCertificate`),
/// `body` the encoded protobuf message exactly as it goes on the wire: the server verifies over the
/// bytes it receives, not over its own re-encoding.
pub fn sign(
    signer: &dyn hsm::Signer,
    cert_der: &[u8],
    method: &str,
    body: &[u8],
    time_ms: u64,
) -> Result<SignedHeaders, hsm::HsmError> {
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| hsm::HsmError::Random(e.to_string()))?;
    let nonce_hex = hex::encode(nonce);
    let signature = signer.sign(&canonical(method, time_ms, &nonce_hex, body))?;
    Ok(SignedHeaders { cert_der: cert_der.to_vec(), time_ms, nonce_hex, signature_der: signature.as_der().to_vec() })
}

impl SignedHeaders {
    /// Writes the headers into request metadata.
    pub fn apply(&self, md: &mut tonic::metadata::MetadataMap) -> Result<(), HeaderError> {
        let ascii =
            |v: String, what| tonic::metadata::MetadataValue::try_from(v).map_err(|_| HeaderError::Malformed(what));
        md.insert(CERT, ascii(base64_encode(&self.cert_der), CERT)?);
        md.insert(TIME, ascii(self.time_ms.to_string(), TIME)?);
        md.insert(NONCE, ascii(self.nonce_hex.clone(), NONCE)?);
        md.insert(SIGNATURE, ascii(base64_encode(&self.signature_der), SIGNATURE)?);
        Ok(())
    }

    /// Reads the headers from request metadata.
    pub fn from_metadata(md: &tonic::metadata::MetadataMap) -> Result<Self, HeaderError> {
        let get = |k: &'static str| -> Result<&str, HeaderError> {
            md.get(k).ok_or(HeaderError::Missing(k))?.to_str().map_err(|_| HeaderError::Malformed(k))
        };
        let nonce_hex = get(NONCE)?.to_owned();
        if nonce_hex.len() != 32 || !nonce_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(HeaderError::Malformed(NONCE));
        }
        Ok(Self {
            cert_der: base64_decode(get(CERT)?).ok_or(HeaderError::Malformed(CERT))?,
            time_ms: get(TIME)?.parse().map_err(|_| HeaderError::Malformed(TIME))?,
            nonce_hex,
            signature_der: base64_decode(get(SIGNATURE)?).ok_or(HeaderError::Malformed(SIGNATURE))?,
        })
    }
}

/// Standard base64 with padding (RFC 4648 §4), as metadata carries DER.
pub fn base64_encode(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// The inverse of [`base64_encode`]; `None` for anything that is not canonical base64.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), enc);
            assert_eq!(base64_decode(enc).as_deref(), Some(plain.as_bytes()));
        }
        for bad in ["Zg=", "Z===", "Zg==Zg==", "Zm9*", "Zm9v\n"] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn headers_round_trip_and_bind_method_time_nonce_and_body() {
        let key = hsm::backend::memory::SoftwareSm2Key::generate(pki::SignerId::default()).expect("key");
        let h = sign(&key, b"cert", "/hsca.v1.Admin/ListAudit", b"body", 1_700_000_000_000).expect("sign");
        let mut md = tonic::metadata::MetadataMap::new();
        h.apply(&mut md).expect("apply");
        let back = SignedHeaders::from_metadata(&md).expect("parse");
        assert_eq!(back, h);
        let msg = canonical("/hsca.v1.Admin/ListAudit", h.time_ms, &h.nonce_hex, b"body");
        key.sm2_public_key().verify(&pki::SignerId::default(), &msg, &h.signature_der).expect("verifies");
        for other in [
            canonical("/hsca.v1.Admin/RevokeCertificate", h.time_ms, &h.nonce_hex, b"body"),
            canonical("/hsca.v1.Admin/ListAudit", h.time_ms + 1, &h.nonce_hex, b"body"),
            canonical("/hsca.v1.Admin/ListAudit", h.time_ms, "00000000000000000000000000000000", b"body"),
            canonical("/hsca.v1.Admin/ListAudit", h.time_ms, &h.nonce_hex, b"bodY"),
        ] {
            assert!(key.sm2_public_key().verify(&pki::SignerId::default(), &other, &h.signature_der).is_err());
        }
        let mut missing = md.clone();
        missing.remove(NONCE);
        assert_eq!(SignedHeaders::from_metadata(&missing), Err(HeaderError::Missing(NONCE)));
        let mut bad = md.clone();
        bad.insert(TIME, "soon".parse().expect("ascii"));
        assert_eq!(SignedHeaders::from_metadata(&bad), Err(HeaderError::Malformed(TIME)));
        let mut bad = md;
        bad.insert(NONCE, "abc".parse().expect("ascii"));
        assert_eq!(SignedHeaders::from_metadata(&bad), Err(HeaderError::Malformed(NONCE)));
    }
}
