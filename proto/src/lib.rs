//! `proto`: the versioned gRPC contract `hsca.v1` (see `proto/README.md`) and the tonic/prost
//! code generated from it at build time (pure Rust, no system `protoc`).

/// Generated messages and services of package `hsca.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("hsca.v1");
}

/// The encoded `FileDescriptorSet` of `hsca.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hsca_v1_descriptor.bin"));

pub mod activation;
pub mod client;
pub mod heartbeat;
pub mod identity;
pub mod signing;

use prost::Message;

/// `google.rpc.Status`, the message gRPC's richer error model puts in `grpc-status-details-bin`
/// (what grpcio-status, Go's `status.FromError` and Java's `StatusProto` decode). Written out
/// here rather than pulled from googleapis: three fields, fixed by gRPC.
#[derive(Clone, PartialEq, Message)]
pub struct RpcStatus {
    /// The gRPC status code, as in the `grpc-status` header.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// The message, as in the `grpc-message` header.
    #[prost(string, tag = "2")]
    pub message: String,
    /// Typed details; ours is one `hsca.v1.ErrorDetail`.
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<RpcAny>,
}

/// `google.protobuf.Any`: a message and the URL naming its type.
#[derive(Clone, PartialEq, Message)]
pub struct RpcAny {
    /// `type.googleapis.com/` followed by the message's full name.
    #[prost(string, tag = "1")]
    pub type_url: String,
    /// The encoded message.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// The `Any` type URL of [`v1::ErrorDetail`].
pub const ERROR_DETAIL_TYPE_URL: &str = "type.googleapis.com/hsca.v1.ErrorDetail";

/// Builds a gRPC status whose details are a `google.rpc.Status` carrying one
/// `Any(`[`v1::ErrorDetail`]`)` with a stable reason.
pub fn status(code: tonic::Code, reason: v1::Reason, message: impl Into<String>) -> tonic::Status {
    let message = message.into();
    let detail = v1::ErrorDetail { reason: reason as i32, message: message.clone() };
    let rich = RpcStatus {
        code: code as i32,
        message: message.clone(),
        details: vec![RpcAny { type_url: ERROR_DETAIL_TYPE_URL.into(), value: detail.encode_to_vec() }],
    };
    tonic::Status::with_details(code, message, rich.encode_to_vec().into())
}

/// The [`v1::ErrorDetail`] inside a status made by [`status`], if any.
pub fn error_detail(status: &tonic::Status) -> Option<v1::ErrorDetail> {
    let rich = RpcStatus::decode(status.details()).ok()?;
    let any = rich.details.iter().find(|a| a.type_url == ERROR_DETAIL_TYPE_URL)?;
    v1::ErrorDetail::decode(any.value.as_slice()).ok()
}

/// The stable reason inside a status made by [`status`], if any.
pub fn reason(status: &tonic::Status) -> Option<v1::Reason> {
    let detail = error_detail(status)?;
    v1::Reason::try_from(detail.reason).ok().filter(|r| *r != v1::Reason::Unspecified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_round_trips_through_status_details() {
        let s = status(tonic::Code::FailedPrecondition, v1::Reason::AlreadyHasActiveCertificate, "terminal has one");
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        assert_eq!(reason(&s), Some(v1::Reason::AlreadyHasActiveCertificate));
        assert_eq!(reason(&tonic::Status::internal("plain")), None);
    }

    #[test]
    fn details_are_a_google_rpc_status_with_an_any_error_detail() {
        let s = status(tonic::Code::ResourceExhausted, v1::Reason::RateLimited, "slow down");
        let rich = RpcStatus::decode(s.details()).expect("google.rpc.Status");
        assert_eq!(rich.code, tonic::Code::ResourceExhausted as i32);
        assert_eq!(rich.message, "slow down");
        assert_eq!(rich.details.len(), 1);
        assert_eq!(rich.details[0].type_url, "type.googleapis.com/hsca.v1.ErrorDetail");
        let d = v1::ErrorDetail::decode(rich.details[0].value.as_slice()).expect("detail");
        assert_eq!((d.reason, d.message.as_str()), (v1::Reason::RateLimited as i32, "slow down"));
        // A bare ErrorDetail (the old form) is not taken for a reason.
        let bare = v1::ErrorDetail { reason: v1::Reason::RateLimited as i32, message: "x".into() };
        let old = tonic::Status::with_details(tonic::Code::Internal, "x", bare.encode_to_vec().into());
        assert_eq!(reason(&old), None);
    }
}
