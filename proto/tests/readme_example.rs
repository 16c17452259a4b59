//! The worked example in `proto/README.md` is true: its bytes decode to the message it names, its
//! digest, canonical string and key pair are what the rules there make, and its signature
//! verifies — and would not over any other request.

use std::collections::HashMap;

use prost::Message;
use sm3::Digest;

const README: &str = include_str!("../README.md");

/// The fenced block between `<!-- NAME: start -->` and `<!-- NAME: end -->`.
fn block(name: &str) -> &'static str {
    let start = README.find(&format!("<!-- {name}: start -->")).expect("start marker");
    let end = README.find(&format!("<!-- {name}: end -->")).expect("end marker");
    let inner = &README[start..end];
    let open = inner.find("```text\n").expect("fence") + "```text\n".len();
    let close = inner.rfind("```").expect("closing fence");
    &inner[open..close]
}

fn example() -> HashMap<&'static str, &'static str> {
    block("worked-example")
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('=').expect("key = value");
            (k.trim(), v.trim())
        })
        .collect()
}

#[test]
fn the_readme_worked_example_verifies() {
    let ex = example();
    let body = hex::decode(ex["message_hex"]).expect("hex");
    let msg = proto::v1::ListAuditRequest::decode(body.as_slice()).expect("a ListAuditRequest");
    assert_eq!((msg.request_id.as_str(), msg.last, msg.verify), ("readme-example", 5, false));

    assert_eq!(ex["sm3_hex"], hex::encode(sm3::Sm3::digest(&body)), "lower-case SM3 hex of the bytes");
    let time: u64 = ex["x-hsca-time"].parse().expect("decimal ms");
    let nonce = ex["x-hsca-nonce"];
    assert!(nonce.len() == 32 && nonce.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    let canonical = proto::signing::canonical(ex["method"], time, nonce, &body);
    let shown = block("canonical").strip_suffix('\n').expect("one line break before the fence");
    assert_eq!(String::from_utf8(canonical.clone()).expect("ascii"), shown);
    assert!(README.contains(&format!("The canonical string signed ({} bytes)", canonical.len())));

    let d: [u8; 32] = sm3::Sm3::digest(b"hsca.v1 README example key").into();
    assert_eq!(ex["private_key_hex"], hex::encode(d));
    let id = pki::SignerId::new(ex["signer_id"]).expect("signer id");
    assert_eq!(id, pki::SignerId::default(), "the standard signer ID");
    let key = hsm::backend::memory::SoftwareSm2Key::from_scalar_bytes(&d, id.clone()).expect("key");
    let public = key.sm2_public_key();
    assert_eq!(ex["public_key_hex"], hex::encode(public.to_sec1_uncompressed()));

    let sig = proto::signing::base64_decode(ex["x-hsca-signature"]).expect("standard base64");
    assert_eq!(proto::signing::base64_encode(&sig), ex["x-hsca-signature"], "canonical padding");
    public.verify(&id, &canonical, &sig).expect("the README signature verifies");

    // Any other request, time, nonce, method or signer ID fails.
    let mut other = body.clone();
    other[body.len() - 1] ^= 1;
    for wrong in [
        proto::signing::canonical(ex["method"], time, nonce, &other),
        proto::signing::canonical(ex["method"], time + 1, nonce, &body),
        proto::signing::canonical(ex["method"], time, &nonce.to_uppercase(), &body),
        proto::signing::canonical("/hsca.v1.Admin/Backup", time, nonce, &body),
    ] {
        assert!(public.verify(&id, &wrong, &sig).is_err());
    }
    let other_id = pki::SignerId::new("1234567812345679").expect("id");
    assert!(public.verify(&other_id, &canonical, &sig).is_err(), "the signer ID is part of what is signed");
}
