//! `proto`: the versioned gRPC contract `hsca.v1` (see `proto/README.md`) and the tonic/prost
//! code generated from it at build time (pure Rust, no system `protoc`).

/// Generated messages and services of package `hsca.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("hsca.v1");
}

pub mod client;
pub mod identity;
pub mod signing;

use prost::Message;

/// Builds a gRPC status carrying an [`v1::ErrorDetail`] with a stable reason.
pub fn status(code: tonic::Code, reason: v1::Reason, message: impl Into<String>) -> tonic::Status {
    let message = message.into();
    let detail = v1::ErrorDetail { reason: reason as i32, message: message.clone() };
    tonic::Status::with_details(code, message, detail.encode_to_vec().into())
}

/// The stable reason inside a status made by [`status`], if any.
pub fn reason(status: &tonic::Status) -> Option<v1::Reason> {
    let detail = v1::ErrorDetail::decode(status.details()).ok()?;
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
}
