//! Heartbeats (`hsca.v1.Fleet/Heartbeat`, fleet/README.md): what a terminal's secure element signs,
//! shared by the terminal (terminal-sim) and the verifier (fleet-server).

use prost::Message;

use crate::v1::{HeartbeatBody, HeartbeatRequest};

/// The tag that starts every signed heartbeat, so a heartbeat signature can never be taken for
/// another SE signature (a device-protocol challenge, a CSR).
pub const TAG: &[u8] = b"HSCA-HB-1\n";

/// The bytes the SE signs: [`TAG`] followed by the encoded body.
pub fn signed_bytes(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(TAG.len() + body.len());
    m.extend_from_slice(TAG);
    m.extend_from_slice(body);
    m
}

/// A request carrying `body`, signed by `signer` (the SE key certified by `certificate_der`).
pub fn request(
    body: &HeartbeatBody,
    signer: &dyn hsm::Signer,
    certificate_der: &[u8],
) -> Result<HeartbeatRequest, hsm::HsmError> {
    let bytes = body.encode_to_vec();
    let sig = signer.sign(&signed_bytes(&bytes))?;
    Ok(HeartbeatRequest {
        body: bytes,
        signature_der: sig.as_der().to_vec(),
        certificate_der: certificate_der.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_the_tag_and_the_exact_body() {
        let key = hsm::backend::memory::SoftwareSm2Key::generate(pki::SignerId::default()).expect("key");
        let body = HeartbeatBody { terminal_serial: "T1".into(), counter: 7, ..Default::default() };
        let req = request(&body, &key, b"cert").expect("sign");
        let pk = key.sm2_public_key();
        pk.verify(&pki::SignerId::default(), &signed_bytes(&req.body), &req.signature_der).expect("verifies");
        assert!(pk.verify(&pki::SignerId::default(), &req.body, &req.signature_der).is_err(), "tag is signed");
        let other = HeartbeatBody { counter: 8, ..body }.encode_to_vec();
        assert!(pk.verify(&pki::SignerId::default(), &signed_bytes(&other), &req.signature_der).is_err());
    }
}
