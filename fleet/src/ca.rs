//! The fleet service as an ordinary client of the CA, signing each call with its `monitor`
//! principal's key: what the CA says of a certificate, and holds and keyCompromise revocations.

use std::path::Path;

use der::Decode;
use pki::{Certificate, SignerId};
use proto::client::{Client, request_id};
use proto::v1::{self, RevocationReason};

use crate::rules::Anchor;
use crate::verify::Trust;

/// Why the CA could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The identity or connection.
    #[error(transparent)]
    Client(#[from] proto::client::ClientError),
    /// The identity's passphrase or key.
    #[error(transparent)]
    Identity(#[from] proto::identity::IdentityError),
    /// The CA refused or failed.
    #[error("the CA answered {}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// The CA's chain does not verify against the pinned root.
    #[error("the CA's issuing certificate does not chain to the pinned root: {0}")]
    Chain(String),
}

/// A connected client acting as the monitor principal.
pub struct Ca {
    client: Client,
    /// The full CRL's URL, from the monitor certificate's CRL distribution point.
    pub crl_url: Option<String>,
}

/// What the CA says of a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertAnswer {
    /// A terminal certificate, with its terminal and status.
    Terminal {
        /// Terminal serial.
        terminal_serial: String,
        /// Revoked (or on hold), with the reason.
        revoked: Option<String>,
    },
    /// Ours, but a principal's, not a terminal's.
    NotTerminal,
    /// The CA has no such certificate.
    Unknown,
}

impl Ca {
    /// Connects with the identity file at `path` (its passphrase from its 0600 file or
    /// `HSCA_KEY_PASSPHRASE`), and fetches and checks the CA chain against the pinned root.
    pub async fn connect(path: &Path) -> Result<(Self, Trust), CaError> {
        let identity = proto::identity::Identity::load(path)?;
        let pass = identity.passphrase(|| None)?;
        let signer = identity.signer(&pass)?;
        let client = Client::connect(&identity, None, Box::new(signer)).await?;
        let root_pem = identity.read_named(&identity.file.pki_root)?;
        let (_, root_der) = der::pem::decode_vec(root_pem.trim().as_bytes())
            .map_err(|e| CaError::Chain(format!("pinned root: {e}")))?;
        let root = Certificate::from_der(&root_der).map_err(|e| CaError::Chain(format!("pinned root: {e}")))?;
        let chain = v1::certificate_authority_client::CertificateAuthorityClient::new(client.channel.clone())
            .get_ca_chain(client.signed(
                "/hsca.v1.CertificateAuthority/GetCaChain",
                v1::GetCaChainRequest { request_id: request_id() },
            )?)
            .await?
            .into_inner();
        let issuing = Certificate::from_der(&chain.issuing_der).map_err(|e| CaError::Chain(e.to_string()))?;
        let trust = Trust::new(issuing, root, SignerId::default()).map_err(|e| CaError::Chain(e.to_string()))?;
        // Principal certificates name the full CRL (terminals may name a partition of it).
        let crl_url = Certificate::from_der(&identity.certificate_der()?)
            .ok()
            .and_then(|c| pki::cert::status_urls(&c).crl.first().map(|u| pki::cert::full_crl_url(u)));
        Ok((Self { client, crl_url }, trust))
    }

    /// What the CA says of certificate `serial`.
    pub async fn certificate(&self, serial: &str) -> Result<CertAnswer, CaError> {
        let req = v1::GetCertificateRequest { request_id: request_id(), certificate_serial: serial.into() };
        let answer = v1::certificate_authority_client::CertificateAuthorityClient::new(self.client.channel.clone())
            .get_certificate(self.client.signed("/hsca.v1.CertificateAuthority/GetCertificate", req)?)
            .await;
        let info = match answer {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(CertAnswer::Unknown),
            Err(s) => return Err(s.into()),
        };
        if info.terminal_serial.is_empty() {
            return Ok(CertAnswer::NotTerminal);
        }
        let revoked = info.status.filter(|s| s.state == v1::certificate_status::State::Revoked as i32).map(|s| {
            RevocationReason::try_from(s.reason).map_or("unspecified".into(), |r| r.as_str_name().to_lowercase())
        });
        Ok(CertAnswer::Terminal { terminal_serial: info.terminal_serial, revoked })
    }

    /// What the CA says of a principal's certificate: (name, role) when it is a principal's and
    /// good.
    pub async fn principal(&self, serial: &str) -> Result<Option<(String, String)>, CaError> {
        let req = v1::GetCertificateRequest { request_id: request_id(), certificate_serial: serial.into() };
        let answer = v1::certificate_authority_client::CertificateAuthorityClient::new(self.client.channel.clone())
            .get_certificate(self.client.signed("/hsca.v1.CertificateAuthority/GetCertificate", req)?)
            .await;
        let info = match answer {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
            Err(s) => return Err(s.into()),
        };
        let good = info.status.is_some_and(|s| s.state == v1::certificate_status::State::Good as i32);
        Ok((good && !info.principal.is_empty()).then_some((info.principal, info.profile)))
    }

    /// One page of the CA's activation log after `after` (at most `limit` entries): the anchors,
    /// and the last entry's number (`after` when the page is empty).
    pub async fn activations_after(&self, after: u64, limit: u32) -> Result<(Vec<Anchor>, u64), CaError> {
        let req = v1::ListActivationsAfterRequest { request_id: request_id(), after_seq: after, limit };
        let page = v1::registry_client::RegistryClient::new(self.client.channel.clone())
            .list_activations_after(self.client.signed("/hsca.v1.Registry/ListActivationsAfter", req)?)
            .await?
            .into_inner();
        let last = page.entries.last().map_or(after, |e| e.seq);
        let anchors = page
            .entries
            .into_iter()
            .filter_map(|e| {
                let a = e.activation?;
                Some(Anchor {
                    terminal_serial: a.terminal_serial,
                    seq: e.seq,
                    institution: a.institution,
                    position: (a.latitude, a.longitude),
                    at_ms: a.at_ms,
                    method: a.method,
                    certificate_serial: a.certificate_serial,
                })
            })
            .collect();
        Ok((anchors, last))
    }

    /// Puts certificate `serial` on hold, or revokes it for key compromise.
    pub async fn revoke(&self, serial: &str, reason: RevocationReason) -> Result<(), CaError> {
        let req = v1::RevokeCertificateRequest {
            request_id: request_id(),
            certificate_serial: serial.into(),
            terminal_serial: String::new(),
            reason: reason as i32,
            invalidity_ms: 0,
        };
        v1::admin_client::AdminClient::new(self.client.channel.clone())
            .revoke_certificate(self.client.signed("/hsca.v1.Admin/RevokeCertificate", req)?)
            .await?;
        Ok(())
    }
}
