//! Activation in the field end to end with the real binaries (issue 14 item 3): `ca-server` with
//! `hold_until_activation` on, the station (`provisioner`) writing a `terminal-sim` over a real
//! pty, `openssl ocsp` as the relying party, and `cactl terminal activate --device` as the
//! operator. Then a replay, by a tool that drives the same terminal and CA directly.
//!
//! The other binaries are found next to `provisioner` (`cargo build --workspace --bins` first).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use device_protocol::{HostLink, LinkConfig, Request, Response};
use proto::client::{Client, request_id};
use proto::identity::Identity;
use proto::v1;

mod common;
use common::*;

fn cactl(config: &[&str], args: &[&str]) -> Output {
    Command::new(sibling("cactl")).args(config).args(args).output().expect("cactl")
}

fn ocsp(d: &Path, http: u16, issuing: &Path, cert: &Path) -> String {
    let url = format!("http://127.0.0.1:{http}/ocsp");
    let out = Command::new("openssl")
        .args(["ocsp", "-no_nonce", "-noverify", "-resp_text", "-url", &url, "-issuer"])
        .arg(issuing)
        .arg("-cert")
        .arg(cert)
        .current_dir(d)
        .output()
        .expect("openssl (scripts/test.sh installs it)");
    text(&out)
}

#[test]
fn provisioned_on_hold_activated_by_presence_then_good_and_a_replay_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let ca = d.join("ca");
    let (grpc, http) = (port(), port());
    let out = Command::new(sibling("ca-server"))
        .args(["init", "--data-dir"])
        .arg(&ca)
        .args(["--grpc", &format!("127.0.0.1:{grpc}"), "--http", &format!("127.0.0.1:{http}")])
        .output()
        .expect("init");
    assert!(out.status.success(), "{}", text(&out));
    let cfg = std::fs::read_to_string(ca.join("ca-server.toml")).expect("config");
    std::fs::write(
        ca.join("ca-server.toml"),
        cfg.replace("hold_until_activation = false", "hold_until_activation = true"),
    )
    .expect("write");
    let _server = serve_ca(&ca.join("ca-server.toml"), grpc);
    let admin_cfg = ca.join("cactl.toml");
    let admin = ["--config", admin_cfg.to_str().expect("utf8")];
    for (role, name, extra) in
        [("station", "station-1", &["--manufacturers", "HSTM"][..]), ("operator", "operator-1", &[])]
    {
        let out_dir = d.join(name);
        let args =
            [&["principal", "add", "--role", role, "--name", name, "--out", out_dir.to_str().expect("p")], extra];
        let out = cactl(&admin, &args.concat());
        assert!(out.status.success(), "{}", text(&out));
    }

    // The station writes a terminal on a pty.
    let policy = pki::PolicySet::embedded_default().expect("policy");
    let body = "HSTM012611P0001";
    let serial = format!("{body}{}", policy.serial_rule().check.compute(body).expect("alphabet"));
    let link = d.join("tty-terminal");
    let mut sim = Command::new(sibling("terminal-sim"))
        .args(["--serial", &serial, "--class", "II", "--state-dir"])
        .arg(d.join("se"))
        .arg("--link")
        .arg(&link)
        .args(["--keygen-ms", "0", "--sign-ms", "0", "--write-bytes-per-s", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("terminal-sim");
    let mut line = String::new();
    BufReader::new(sim.stdout.take().expect("stdout")).read_line(&mut line).expect("line");
    assert!(line.contains("listening on"), "terminal-sim said {line:?}");
    let _sim = Killed(sim);
    let out = Command::new(PROVISIONER)
        .args(["run", "--identity"])
        .arg(d.join("station-1/identity.toml"))
        .arg("--report")
        .arg(d.join("report.json"))
        .arg("--port")
        .arg(&link)
        .output()
        .expect("provisioner");
    assert!(out.status.success(), "{}", text(&out));

    // Provisioned, and every relying party's OCSP check says "not yet".
    let cert = d.join("terminal.pem");
    let out = Command::new(sibling("terminal-sim"))
        .args(["export", "--state-dir"])
        .arg(d.join("se"))
        .arg("--cert-out")
        .arg(&cert)
        .output()
        .expect("export");
    assert!(out.status.success(), "{}", text(&out));
    let issuing = ca.join("certs/issuing.pem");
    let before = ocsp(d, http, &issuing, &cert);
    assert!(
        before.contains("Cert Status: revoked") && before.contains("Revocation Reason: certificateHold"),
        "{before}"
    );

    // The operator activates it with the terminal at hand.
    let op_identity = d.join("operator-1/identity.toml");
    let operator = ["--identity", op_identity.to_str().expect("p")];
    let activate = [
        "--json",
        "terminal",
        "activate",
        "--device",
        link.to_str().expect("p"),
        "--institution",
        "No. 1 Hospital, Ward 3",
        "--position",
        "31.2304,121.4737",
    ];
    let out = cactl(&operator, &activate);
    assert!(out.status.success(), "{}", text(&out));
    let a: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!((a["method"].as_str(), a["terminal"].as_str()), (Some("presence"), Some(serial.as_str())), "{a}");
    let after = ocsp(d, http, &issuing, &cert);
    assert!(after.contains("Cert Status: good"), "{after}");

    // The manual override is an administrator's: an operator is refused.
    let manual = ["terminal", "activate", "--manual", "--serial", &serial, "--institution", "x", "--position", "1,1"];
    let out = cactl(&operator, &manual);
    assert!(!out.status.success() && text(&out).contains("ROLE_FORBIDDEN"), "{}", text(&out));

    // A replay: a tool that recorded a good activation (challenge, SE signature, the operator's
    // request) sends it again. The challenge was used up with the first.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let id = Identity::load(&op_identity).expect("operator identity");
        let pass = id.passphrase(|| None).expect("passphrase");
        let client = Client::connect(&id, None, Box::new(id.signer(&pass).expect("key"))).await.expect("connect");
        let mut reg = v1::registry_client::RegistryClient::new(client.channel.clone());
        let ask = v1::NewActivationChallengeRequest { request_id: request_id(), serial: serial.clone() };
        let ch = reg
            .new_activation_challenge(client.signed("/hsca.v1.Registry/NewActivationChallenge", ask).expect("s"))
            .await
            .expect("challenge")
            .into_inner();
        let statement = proto::activation::encode(&v1::ActivationStatement {
            challenge: ch.challenge,
            terminal_serial: serial.clone(),
            certificate_serial: ch.certificate_serial,
            institution: "No. 1 Hospital, Ward 3".into(),
            latitude: 31.2304,
            longitude: 121.4737,
        });
        let port = device_protocol::open_serial(&link.to_string_lossy()).expect("open the terminal");
        let mut dev = HostLink::new(Box::new(port) as Box<dyn device_protocol::Transport>, LinkConfig::default());
        dev.call(&Request::Hello { max_version: device_protocol::PROTOCOL_VERSION }).expect("hello");
        let Response::Signature { der } = dev.call(&Request::Activate { statement: statement.clone() }).expect("sign")
        else {
            panic!("no signature")
        };
        // The SE signs statements about itself only.
        let st = proto::activation::decode(&statement).expect("statement");
        for other in [
            v1::ActivationStatement { terminal_serial: "HSTM01261100000K".into(), ..st.clone() },
            v1::ActivationStatement { certificate_serial: "0A".into(), ..st.clone() },
        ] {
            let refused = dev.call(&Request::Activate { statement: proto::activation::encode(&other) });
            assert!(
                matches!(
                    refused,
                    Err(device_protocol::LinkError::Device { code: device_protocol::ErrorCode::NotForThisDevice, .. })
                ),
                "{refused:?}"
            );
        }
        let short = v1::ActivationStatement { challenge: vec![1; 8], ..st.clone() };
        let refused = dev.call(&Request::Activate { statement: proto::activation::encode(&short) });
        assert!(
            matches!(
                refused,
                Err(device_protocol::LinkError::Device { code: device_protocol::ErrorCode::MalformedRequest, .. })
            ),
            "{refused:?}"
        );
        let msg = v1::ActivateTerminalRequest {
            request_id: request_id(),
            serial: serial.clone(),
            institution: "No. 1 Hospital, Ward 3".into(),
            latitude: 31.2304,
            longitude: 121.4737,
            statement,
            terminal_signature: der,
            manual: false,
        };
        let again = v1::ActivateTerminalRequest { request_id: request_id(), ..msg.clone() };
        reg.activate_terminal(client.signed("/hsca.v1.Registry/ActivateTerminal", msg).expect("s"))
            .await
            .expect("a re-activation with a fresh challenge");
        let replay = reg
            .activate_terminal(client.signed("/hsca.v1.Registry/ActivateTerminal", again).expect("s"))
            .await
            .expect_err("replay refused");
        assert_eq!(proto::reason(&replay), Some(v1::Reason::ChallengeUnknown), "{replay:?}");
    });
    let list = cactl(&operator, &["--json", "terminal", "activations", "--serial", &serial]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&list.stdout).expect("json");
    assert_eq!(rows.len(), 2, "the replay recorded nothing: {rows:?}");
}
