//! A signed-request client over TLS: what `cactl` and the station use to call the CA.

use std::time::SystemTime;

use prost::Message;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::identity::{Identity, IdentityError};
use crate::signing::sign;

/// Why a client could not be made or a request not signed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The identity could not be loaded.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The server could not be reached.
    #[error("connecting to {url}: {source}")]
    Connect {
        /// Server URL.
        url: String,
        /// Cause.
        source: tonic::transport::Error,
    },
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] hsm::HsmError),
    /// Metadata could not be written.
    #[error(transparent)]
    Headers(#[from] crate::signing::HeaderError),
}

/// A connected client that signs every request with its principal's key.
pub struct Client {
    /// The channel; give it to the generated `*Client::new`.
    pub channel: Channel,
    signer: Box<dyn hsm::Signer>,
    cert_der: Vec<u8>,
}

impl Client {
    /// Connects to `server` (or the identity's) with the identity's TLS CA, using `signer`.
    pub async fn connect(
        identity: &Identity,
        server: Option<&str>,
        signer: Box<dyn hsm::Signer>,
    ) -> Result<Self, ClientError> {
        let url = server.unwrap_or(&identity.file.server).to_owned();
        let ca = identity.read_named(&identity.file.tls_ca)?;
        Self::connect_trusting(identity, &url, ca, signer).await
    }

    /// Connects to another service that takes this identity's signed requests (the fleet
    /// service) at `url`, trusting `tls_ca_pem` for its TLS certificate.
    pub async fn connect_trusting(
        identity: &Identity,
        url: &str,
        tls_ca_pem: String,
        signer: Box<dyn hsm::Signer>,
    ) -> Result<Self, ClientError> {
        let url = url.to_owned();
        let ca = tls_ca_pem;
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
        let endpoint = Channel::from_shared(url.clone())
            .map_err(|_| {
                ClientError::Identity(IdentityError::Parse {
                    path: identity.base.clone(),
                    message: format!("bad server URL {url:?}"),
                })
            })?
            .tls_config(tls)
            .map_err(|source| ClientError::Connect { url: url.clone(), source })?
            .connect_timeout(std::time::Duration::from_secs(10));
        let channel = endpoint.connect().await.map_err(|source| ClientError::Connect { url, source })?;
        Ok(Self { channel, signer, cert_der: identity.certificate_der()? })
    }

    /// Wraps `msg` for `method` (`/hsca.v1.Service/Method`) with the signed-request metadata.
    pub fn signed<T: Message>(&self, method: &str, msg: T) -> Result<tonic::Request<T>, ClientError> {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let headers = sign(self.signer.as_ref(), &self.cert_der, method, &msg.encode_to_vec(), now)?;
        let mut req = tonic::Request::new(msg);
        headers.apply(req.metadata_mut())?;
        Ok(req)
    }
}

/// A fresh request id (32 hex characters).
pub fn request_id() -> String {
    let mut b = [0u8; 16];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}
