//! The gRPC contract as a client in another language meets it: the signature covers the bytes
//! on the wire (unknown fields and any field order verify), and the standard health and
//! reflection services answer without a signature — and nothing else does. Real `ca-server`.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use bytes::{Buf, BufMut};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};
use proto::client::{Client, request_id};
use proto::identity::Identity;
use proto::v1::{self, Reason};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

mod common;
use common::EXE;

/// `ca-server init` and `serve` in `dir`; returns when the HTTP port listens.
fn start(dir: &Path) -> common::Server {
    let (_, http) = common::init(dir);
    common::Server::start(dir, http)
}

fn identity(dir: &Path) -> Identity {
    Identity::load(&dir.join("identities/admin/identity.toml")).expect("admin identity")
}

async fn admin(dir: &Path) -> (Client, hsm::backend::memory::SoftwareSm2Key, Vec<u8>) {
    let id = identity(dir);
    let pass = id.passphrase(|| None).expect("passphrase file");
    let client = Client::connect(&id, None, Box::new(id.signer(&pass).expect("key"))).await.expect("connect");
    (client, id.signer(&pass).expect("key"), id.certificate_der().expect("cert"))
}

/// Sends `body` as it is (no re-encoding) and decodes the answer as `R`.
struct RawCodec<R>(PhantomData<R>);
struct RawEncoder;
struct RawDecoder<R>(PhantomData<R>);

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl<R: Message + Default> Decoder for RawDecoder<R> {
    type Item = R;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<R>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        R::decode(bytes).map(Some).map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl<R: Message + Default + Send + 'static> Codec for RawCodec<R> {
    type Encode = Vec<u8>;
    type Decode = R;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder<R>;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder<R> {
        RawDecoder(PhantomData)
    }
}

/// Calls `method` with `sent` on the wire and a signature over `signed`.
async fn call<R: Message + Default + Send + 'static>(
    channel: &tonic::transport::Channel,
    key: &hsm::backend::memory::SoftwareSm2Key,
    cert: &[u8],
    method: &'static str,
    signed: &[u8],
    sent: Vec<u8>,
) -> Result<R, tonic::Status> {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock").as_millis() as u64;
    let headers = proto::signing::sign(key, cert, method, signed, now).expect("sign");
    let mut req = tonic::Request::new(sent);
    headers.apply(req.metadata_mut()).expect("metadata");
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("ready");
    let path = http::uri::PathAndQuery::from_static(method);
    grpc.unary(req, path, RawCodec::<R>(PhantomData)).await.map(tonic::Response::into_inner)
}

fn string_field(tag: u32, s: &str, out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(s.len() as u64, out);
    out.extend_from_slice(s.as_bytes());
}

fn varint_field(tag: u32, v: u64, out: &mut Vec<u8>) {
    encode_key(tag, WireType::Varint, out);
    encode_varint(v, out);
}

fn reason_of<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Code, Option<Reason>) {
    let s = r.expect_err("refused");
    (s.code(), proto::reason(&s))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signature_covers_the_bytes_as_received() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir: PathBuf = tmp.path().join("ca");
    let _server = start(&dir);
    let (client, key, cert) = admin(&dir).await;
    let ch = &client.channel;
    const LIST: &str = "/hsca.v1.Registry/ListTerminals";
    let msg = v1::ListTerminalsRequest {
        request_id: request_id(),
        page_size: 5,
        manufacturer: "HS".into(),
        ..Default::default()
    };
    let canonical = msg.encode_to_vec();

    // As prost writes it: the baseline.
    let r: v1::ListTerminalsResponse = call(ch, &key, &cert, LIST, &canonical, canonical.clone()).await.expect("plain");
    assert!(r.terminals.is_empty());

    // Fields in another order, signed as sent: the same request, and it verifies.
    let mut reordered = Vec::new();
    string_field(6, "HS", &mut reordered);
    varint_field(2, 5, &mut reordered);
    string_field(1, &request_id(), &mut reordered);
    assert_ne!(reordered, canonical);
    call::<v1::ListTerminalsResponse>(ch, &key, &cert, LIST, &reordered, reordered.clone())
        .await
        .expect("reordered fields verify");

    // A field this server does not know (a client built against a later hsca.v1).
    let mut unknown = v1::ListTerminalsRequest { request_id: request_id(), ..msg.clone() }.encode_to_vec();
    varint_field(1000, 1, &mut unknown);
    string_field(1001, "from the future", &mut unknown);
    call::<v1::ListTerminalsResponse>(ch, &key, &cert, LIST, &unknown, unknown.clone())
        .await
        .expect("an unknown field verifies");

    // The server does not verify its own re-encoding: signing prost's order and sending another
    // order fails, as does any changed byte.
    let mut other = Vec::new();
    varint_field(2, 5, &mut other);
    string_field(1, "x", &mut other);
    let mut other_canonical = Vec::new();
    string_field(1, "x", &mut other_canonical);
    varint_field(2, 5, &mut other_canonical);
    assert_eq!(
        reason_of(call::<v1::ListTerminalsResponse>(ch, &key, &cert, LIST, &other_canonical, other).await),
        (Code::Unauthenticated, Some(Reason::BadSignature))
    );
    let mut tampered = unknown.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert_eq!(
        reason_of(call::<v1::ListTerminalsResponse>(ch, &key, &cert, LIST, &unknown, tampered).await),
        (Code::Unauthenticated, Some(Reason::BadSignature))
    );
    let mut extra = unknown.clone();
    varint_field(1002, 7, &mut extra);
    assert_eq!(
        reason_of(call::<v1::ListTerminalsResponse>(ch, &key, &cert, LIST, &unknown, extra).await),
        (Code::Unauthenticated, Some(Reason::BadSignature)),
        "an appended field is a changed request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_without_a_signature_and_nothing_else_does() {
    use tokio_stream::StreamExt;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServiceResponse};

    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("ca");
    let _server = start(&dir);
    let (client, _, _) = admin(&dir).await;
    // No metadata at all on any of these calls.
    let mut health = HealthClient::new(client.channel.clone());
    for service in ["", "hsca.v1.CertificateAuthority", "hsca.v1.Registry", "hsca.v1.Admin"] {
        let r = health.check(HealthCheckRequest { service: service.into() }).await.expect("check").into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health.check(HealthCheckRequest { service: "hsca.v1.Nothing".into() }).await;
    assert_eq!(unknown.expect_err("unknown service").code(), Code::NotFound);
    let mut watch = health.watch(HealthCheckRequest { service: String::new() }).await.expect("watch").into_inner();
    let first = watch.next().await.expect("an answer").expect("ok");
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let mut reflection = ServerReflectionClient::new(client.channel.clone());
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers =
        reflection.server_reflection_info(tokio_stream::iter([ask])).await.expect("reflection").into_inner();
    let answer = answers.next().await.expect("an answer").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|ServiceResponse { name }| name).collect();
    for want in ["hsca.v1.CertificateAuthority", "hsca.v1.Registry", "hsca.v1.Admin", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol("hsca.v1.ErrorDetail".into())),
    };
    let mut answers =
        reflection.server_reflection_info(tokio_stream::iter([ask])).await.expect("reflection").into_inner();
    let answer = answers.next().await.expect("an answer").expect("ok");
    assert!(
        matches!(answer.message_response, Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
        "{answer:?}"
    );

    // Every hsca.v1 method still wants a signature.
    let unsigned = v1::certificate_authority_client::CertificateAuthorityClient::new(client.channel.clone())
        .get_ca_chain(v1::GetCaChainRequest { request_id: request_id() })
        .await;
    assert_eq!(reason_of(unsigned), (Code::Unauthenticated, Some(Reason::MissingSignature)));
    let unsigned = v1::admin_client::AdminClient::new(client.channel.clone())
        .list_audit(v1::ListAuditRequest { last: 1, ..Default::default() })
        .await;
    assert_eq!(reason_of(unsigned), (Code::Unauthenticated, Some(Reason::MissingSignature)));
}

/// The HSM key of a loaded CA, with signing broken: what a dead HSM session looks like.
struct DeadHsm(Box<dyn hsm::Signer>);

impl hsm::Signer for DeadHsm {
    fn algorithm(&self) -> spki::AlgorithmIdentifierOwned {
        self.0.algorithm()
    }
    fn public_key(&self) -> spki::SubjectPublicKeyInfoOwned {
        self.0.public_key()
    }
    fn signer_id(&self) -> &pki::SignerId {
        self.0.signer_id()
    }
    fn sign(&self, _: &[u8]) -> Result<hsm::Signature, hsm::HsmError> {
        Err(hsm::HsmError::Unavailable("session closed".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_when_the_hsm_fails() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_server::Health;

    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("ca");
    let out = Command::new(EXE)
        .args(["init", "--data-dir"])
        .arg(&dir)
        .args(["--grpc", "127.0.0.1:1", "--http", "127.0.0.1:2"])
        .output()
        .expect("ca-server init");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = dir.join("ca-server.toml");
    let (_, ca) =
        tokio::task::spawn_blocking(move || ca_server::serve::load(&config)).await.expect("join").expect("load");
    let ask = || tonic::Request::new(HealthCheckRequest { service: String::new() });
    let status = |r: Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status>| {
        r.expect("check").into_inner().status
    };
    let healthy = ca_server::api::HealthService(ca.clone());
    assert_eq!(status(healthy.check(ask()).await), ServingStatus::Serving as i32);
    drop(healthy);

    let ca = std::sync::Arc::try_unwrap(ca).ok().expect("the only reference");
    let dead = ca_server::api::Ca { signer: Box::new(DeadHsm(ca.signer)), ..ca };
    let dead = std::sync::Arc::new(dead);
    assert!(dead.ready().is_err(), "/readyz says not ready too");
    let health = ca_server::api::HealthService(dead);
    assert_eq!(status(health.check(ask()).await), ServingStatus::NotServing as i32);
}
