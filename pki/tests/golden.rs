//! The TBS we produce for fixed keys, serials, profiles and time is stable byte for byte.
//! Signatures are randomised; TBS bytes are not. To accept an intended change, run with
//! `PKI_BLESS_GOLDEN=1` and review the diff of `testdata/golden/`.

mod support;

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use hsm::backend::memory::SoftwareSm2Key;
use pki::cert::{IssuerInfo, TbsRequest, build_tbs};
use pki::{CertSerial, SignerId};
use support::{policy, sign, terminal_vars, vars_name};

fn check(name: &str, bytes: &[u8]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/golden").join(name);
    if std::env::var_os("PKI_BLESS_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        std::fs::write(&path, bytes).expect("bless");
    }
    let want =
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (bless with PKI_BLESS_GOLDEN=1)", path.display()));
    assert!(want == bytes, "{name} changed:\n want {}\n got  {}", hex::encode(&want), hex::encode(bytes));
}

#[test]
fn tbs_bytes_are_stable() {
    let policy = policy();
    let now = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
    let id = SignerId::default();
    let root_key = SoftwareSm2Key::from_scalar_bytes(&[0x01; 32], id.clone()).expect("key");
    let issuing_key = SoftwareSm2Key::from_scalar_bytes(&[0x02; 32], id.clone()).expect("key");
    let terminal_key = SoftwareSm2Key::from_scalar_bytes(&[0x03; 32], id.clone()).expect("key");

    let root_vars = vars_name("HSCA SM2 Root CA");
    let root_req = TbsRequest {
        profile: policy.profile("root-ca").expect("p"),
        vars: &root_vars,
        subject_key: root_key.sm2_public_key(),
        serial: CertSerial::from_random([0x11; 16]),
        now,
    };
    let root_tbs = build_tbs(&root_req, None).expect("root");
    check("root.tbs.der", root_tbs.to_be_signed());
    let root = sign(root_tbs, &root_key);
    let root_info = IssuerInfo::from_certificate(&root, id.clone()).expect("root info");

    let issuing_vars = vars_name("HSCA SM2 Issuing CA 1");
    let issuing_req = TbsRequest {
        profile: policy.profile("issuing-ca").expect("p"),
        vars: &issuing_vars,
        subject_key: issuing_key.sm2_public_key(),
        serial: CertSerial::from_random([0x22; 16]),
        now,
    };
    let issuing_tbs = build_tbs(&issuing_req, Some(&root_info)).expect("issuing");
    check("issuing.tbs.der", issuing_tbs.to_be_signed());
    let issuing = sign(issuing_tbs, &root_key);
    let issuing_info = IssuerInfo::from_certificate(&issuing, id).expect("issuing info");

    let vars = terminal_vars("HSTM01261100000K", "II");
    let terminal_req = TbsRequest {
        profile: policy.profile("terminal").expect("p"),
        vars: &vars,
        subject_key: terminal_key.sm2_public_key(),
        serial: CertSerial::from_random([0x33; 16]),
        now,
    };
    let terminal_tbs = build_tbs(&terminal_req, Some(&issuing_info)).expect("terminal");
    check("terminal.tbs.der", terminal_tbs.to_be_signed());
    // Building twice gives the same bytes; a different time does not.
    assert_eq!(
        build_tbs(&terminal_req, Some(&issuing_info)).expect("again").to_be_signed(),
        terminal_tbs.to_be_signed()
    );
    let later = TbsRequest { now: now + Duration::from_secs(1), ..terminal_req };
    assert_ne!(build_tbs(&later, Some(&issuing_info)).expect("later").to_be_signed(), terminal_tbs.to_be_signed());
}
