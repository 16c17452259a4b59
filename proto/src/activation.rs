//! Proof-of-presence activation (registry.proto `ActivationStatement`): what a terminal's secure
//! element signs, shared by the SE (terminal-sim), the operator's tool (cactl) and the verifier
//! (ca-server).

use prost::Message;

use crate::v1::ActivationStatement;

/// The tag that starts every signed statement, so an activation signature can never be taken for
/// another SE signature (a heartbeat, a device-protocol challenge, a CSR).
pub const TAG: &[u8] = b"HSCA-ACT-1\n";

/// Length of a challenge, in bytes.
pub const CHALLENGE_LEN: usize = 32;

/// The bytes the SE signs: [`TAG`] followed by the encoded statement.
pub fn signed_bytes(statement: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(TAG.len() + statement.len());
    m.extend_from_slice(TAG);
    m.extend_from_slice(statement);
    m
}

/// The encoded statement, as the operator's tool hands it to the SE.
pub fn encode(statement: &ActivationStatement) -> Vec<u8> {
    statement.encode_to_vec()
}

/// Parses a statement as signed; `None` when the bytes are not one.
pub fn decode(bytes: &[u8]) -> Option<ActivationStatement> {
    ActivationStatement::decode(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hsm::Signer as _;

    #[test]
    fn the_signature_covers_the_tag_and_the_exact_statement() {
        let key = hsm::backend::memory::SoftwareSm2Key::generate(pki::SignerId::default()).expect("key");
        let st = ActivationStatement {
            challenge: vec![7; CHALLENGE_LEN],
            terminal_serial: "T1".into(),
            certificate_serial: "AB".into(),
            institution: "Ward 3".into(),
            latitude: 39.9,
            longitude: 116.4,
        };
        let bytes = encode(&st);
        let sig = key.sign(&signed_bytes(&bytes)).expect("sign");
        let pk = key.sm2_public_key();
        pk.verify(&pki::SignerId::default(), &signed_bytes(&bytes), sig.as_der()).expect("verifies");
        assert!(pk.verify(&pki::SignerId::default(), &bytes, sig.as_der()).is_err(), "tag is signed");
        let other = encode(&ActivationStatement { latitude: 40.0, ..st.clone() });
        assert!(pk.verify(&pki::SignerId::default(), &signed_bytes(&other), sig.as_der()).is_err());
        assert_eq!(decode(&bytes), Some(st));
        assert_eq!(decode(&[0xFF, 0xFF]), None);
    }
}
