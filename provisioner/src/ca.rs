//! The station's two calls to the CA (`IssueTerminalCertificate`, `ConfirmProvisioning`), made
//! from the blocking per-port workers through a shared tokio runtime.

use std::time::Duration;

use proto::client::Client;
use proto::v1;
use tokio::runtime::Handle;

/// A refusal or failure from the CA, with its machine-readable reason.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct CaError {
    /// The stable reason (`ALREADY_HAS_ACTIVE_CERTIFICATE`, …) or the gRPC code's name.
    pub reason: String,
    /// The server's message.
    pub message: String,
}

impl From<tonic::Status> for CaError {
    fn from(s: tonic::Status) -> Self {
        let reason = proto::reason(&s).map_or_else(|| format!("{:?}", s.code()), |r| r.as_str_name().to_owned());
        CaError { reason, message: s.message().to_owned() }
    }
}

impl From<proto::client::ClientError> for CaError {
    fn from(e: proto::client::ClientError) -> Self {
        CaError { reason: "CLIENT".into(), message: e.to_string() }
    }
}

/// What the station asks the CA; each call gives up after `timeout` (what is left of the
/// terminal's deadline, at most the client's own limit).
pub trait CaApi: Send + Sync {
    /// Issues (or, for the same request id and content, returns again) a terminal certificate.
    fn issue(
        &self,
        req: v1::IssueTerminalCertificateRequest,
        timeout: Duration,
    ) -> Result<v1::IssueTerminalCertificateResponse, CaError>;
    /// Records that the terminal verified and stored its certificate.
    fn confirm(&self, req: v1::ConfirmProvisioningRequest, timeout: Duration) -> Result<(), CaError>;
}

/// The CA over gRPC.
pub struct GrpcCa {
    client: Client,
    runtime: Handle,
    timeout: Duration,
}

impl GrpcCa {
    /// Wraps a connected client; calls run on `runtime` with a per-call `timeout`.
    pub fn new(client: Client, runtime: Handle, timeout: Duration) -> Self {
        Self { client, runtime, timeout }
    }

    fn call<T, F>(&self, f: F, timeout: Duration) -> Result<T, CaError>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let timeout = timeout.min(self.timeout);
        self.runtime.block_on(async {
            match tokio::time::timeout(timeout, f).await {
                Ok(r) => r.map(tonic::Response::into_inner).map_err(CaError::from),
                Err(_) => Err(CaError { reason: "TIMEOUT".into(), message: format!("no answer in {timeout:?}") }),
            }
        })
    }
}

impl CaApi for GrpcCa {
    fn issue(
        &self,
        req: v1::IssueTerminalCertificateRequest,
        timeout: Duration,
    ) -> Result<v1::IssueTerminalCertificateResponse, CaError> {
        let signed = self.client.signed("/hsca.v1.CertificateAuthority/IssueTerminalCertificate", req)?;
        let mut ca = v1::certificate_authority_client::CertificateAuthorityClient::new(self.client.channel.clone());
        self.call(ca.issue_terminal_certificate(signed), timeout)
    }

    fn confirm(&self, req: v1::ConfirmProvisioningRequest, timeout: Duration) -> Result<(), CaError> {
        let signed = self.client.signed("/hsca.v1.CertificateAuthority/ConfirmProvisioning", req)?;
        let mut ca = v1::certificate_authority_client::CertificateAuthorityClient::new(self.client.channel.clone());
        self.call(ca.confirm_provisioning(signed), timeout).map(|_| ())
    }
}
