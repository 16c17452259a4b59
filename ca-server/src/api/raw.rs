//! Keeps the exact bytes of each `hsca.v1` request message, as received, for the signature
//! check: a re-encoding of the decoded message would drop fields this server does not know and
//! put fields in prost's order, so a valid signature from a newer or different client would fail.
//!
//! A tower layer in front of every service: for `/hsca.v1.*` paths it reads the (unary) body,
//! puts the message of its single uncompressed gRPC frame into the request's extensions as a
//! [`RawMessage`], and hands the same bytes on to tonic, which decodes them as before.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use proto::v1::Reason;
use tonic::Code;
use tonic::body::Body;

/// The path prefix of the services whose requests are signed.
const SIGNED_PREFIX: &str = "/hsca.v1.";

/// The largest request body read: tonic's default limit on a decoded message (4 MiB) plus the
/// five-byte frame header.
pub const MAX_REQUEST: usize = 4 * 1024 * 1024 + 5;

/// The message bytes of a request as received: what its signature covers.
#[derive(Clone, Debug)]
pub struct RawMessage(pub Bytes);

/// The message of `body` when it is exactly one uncompressed gRPC frame
/// (flag 0, four-byte big-endian length, message).
pub fn single_frame(body: &Bytes) -> Option<Bytes> {
    let (&flag, rest) = body.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    (flag == 0 && rest.len() == 4 + len).then(|| body.slice(5..))
}

/// The layer; see the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeepRawLayer;

impl<S> tower_layer::Layer<S> for KeepRawLayer {
    type Service = KeepRaw<S>;

    fn layer(&self, inner: S) -> KeepRaw<S> {
        KeepRaw(inner)
    }
}

/// The service made by [`KeepRawLayer`].
#[derive(Clone, Debug)]
pub struct KeepRaw<S>(S);

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> tower_service::Service<http::Request<Body>> for KeepRaw<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The clone that was polled ready is the one that must serve this call.
        let clone = self.0.clone();
        let mut inner = std::mem::replace(&mut self.0, clone);
        Box::pin(async move {
            if !req.uri().path().starts_with(SIGNED_PREFIX) {
                return inner.call(req).await;
            }
            let (mut parts, body) = req.into_parts();
            let bytes = match Limited::new(body, MAX_REQUEST).collect().await {
                Ok(c) => c.to_bytes(),
                Err(e) => {
                    let s = proto::status(Code::ResourceExhausted, Reason::BadRequest, format!("request body: {e}"));
                    return Ok(s.into_http());
                }
            };
            if let Some(msg) = single_frame(&bytes) {
                parts.extensions.insert(RawMessage(msg));
            }
            inner.call(http::Request::from_parts(parts, Body::new(Full::new(bytes)))).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_whole_uncompressed_frame_is_taken() {
        let frame = |flag: u8, len: u32, msg: &[u8]| {
            let mut v = vec![flag];
            v.extend_from_slice(&len.to_be_bytes());
            v.extend_from_slice(msg);
            Bytes::from(v)
        };
        assert_eq!(single_frame(&frame(0, 3, b"abc")).as_deref(), Some(&b"abc"[..]));
        assert_eq!(single_frame(&frame(0, 0, b"")).as_deref(), Some(&b""[..]));
        assert_eq!(single_frame(&frame(1, 3, b"abc")), None, "compressed");
        assert_eq!(single_frame(&frame(0, 4, b"abc")), None, "short");
        assert_eq!(single_frame(&frame(0, 2, b"abc")), None, "a second frame follows");
        assert_eq!(single_frame(&Bytes::from_static(b"\0\0\0")), None, "no header");
        assert_eq!(single_frame(&Bytes::new()), None, "empty");
    }
}
