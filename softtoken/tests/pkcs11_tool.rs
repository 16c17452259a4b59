//! OpenSC's `pkcs11-tool` drives the module: slots, mechanisms, token and PIN init, login, SM2
//! key generation and signing with our vendor codes, object listing. What it signs is then
//! checked with the `sm2` crate against the key it generated.

mod common;

use std::path::Path;
use std::process::Command;

use cryptoki::object::{Attribute, ObjectClass};
use sm2::dsa::signature::Verifier;

fn tool(conf: &Path, args: &[&str]) -> String {
    let out = Command::new("pkcs11-tool")
        .arg("--module")
        .arg(common::lib_path())
        .args(args)
        .env("SOFTTOKEN_CONF", conf)
        .output()
        .expect("pkcs11-tool (OpenSC; scripts/test.sh installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pkcs11-tool {args:?} failed:\n{text}");
    text
}

#[test]
fn pkcs11_tool_inits_generates_signs_and_lists() {
    let dir = tempfile::tempdir().expect("tmp");
    let tdir = dir.path().join("t");
    let conf = dir.path().join("t.toml");
    std::fs::write(&conf, format!("directory = {tdir:?}\nkdf_iterations = 100000\n")).expect("conf");

    let info = tool(&conf, &["--show-info"]);
    assert!(info.contains("softtoken SM2/SM3/SM4 PKCS#11") && info.contains("Cryptoki version 2.40"), "{info}");
    let slots = tool(&conf, &["--list-slots"]);
    assert!(slots.contains("Slot 0"), "{slots}");
    let mechs = tool(&conf, &["--list-mechanisms"]);
    for code in ["0x80005301", "0x80005303", "0xFFFFF003", "0x80005305", "0x80005308"] {
        assert!(mechs.contains(code), "{code} missing from:\n{mechs}");
    }
    tool(&conf, &["--init-token", "--label", "hsca", "--so-pin", common::SO_PIN]);
    tool(
        &conf,
        &["--login", "--login-type", "so", "--so-pin", common::SO_PIN, "--init-pin", "--pin", common::USER_PIN],
    );
    // pkcs11-tool forwards -m for key generation only with a --key-type; the vendor SM2
    // mechanism makes an SM2 key whatever curve that names.
    let generated = tool(
        &conf,
        &[
            "--login",
            "--pin",
            common::USER_PIN,
            "--keypairgen",
            "-m",
            "0x80005301",
            "--key-type",
            "EC:prime256v1",
            "--label",
            "ca",
            "--id",
            "01",
        ],
    );
    assert!(generated.contains("06082a811ccf5501822d"), "SM2 curve params expected:\n{generated}");

    let msg = dir.path().join("msg");
    std::fs::write(&msg, b"certificate to be signed").expect("msg");
    let mut sigs = Vec::new();
    for code in ["0x80005303", "0xFFFFF003"] {
        let out = dir.path().join(format!("sig-{code}"));
        tool(
            &conf,
            &[
                "--login",
                "--pin",
                common::USER_PIN,
                "--sign",
                "-m",
                code,
                "--label",
                "ca",
                "-i",
                msg.to_str().expect("p"),
                "-o",
                out.to_str().expect("p"),
            ],
        );
        sigs.push(std::fs::read(out).expect("sig"));
    }
    let objects = tool(&conf, &["--login", "--pin", common::USER_PIN, "--list-objects"]);
    assert!(
        objects.contains("Private Key Object")
            && objects.contains("Public Key Object")
            && objects.contains("label:      ca"),
        "{objects}"
    );
    assert!(objects.contains("sensitive") && objects.contains("never extractable"), "{objects}");
    // Before login only the public half is listed.
    let public_only = tool(&conf, &["--list-objects"]);
    assert!(!public_only.contains("Private Key Object"), "{public_only}");

    // The signatures verify under the default signer ID with the key pkcs11-tool generated.
    let m = common::Module::open(&tdir, 5);
    let s = m.p11.open_ro_session(m.slot).expect("session");
    let public =
        s.find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY), Attribute::Label("ca".into())]).expect("find");
    assert_eq!(public.len(), 1);
    let point = common::point(&s, public[0]);
    let vk = sm2::dsa::VerifyingKey::from_sec1_bytes("1234567812345678", &point).expect("vk");
    for sig in sigs {
        assert_eq!(sig.len(), 64);
        vk.verify(b"certificate to be signed", &sm2::dsa::Signature::from_slice(&sig).expect("r||s"))
            .expect("verifies");
    }
}
