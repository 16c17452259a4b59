//! The gRPC layer: one module per service ([`ca`], [`registry`], [`admin`]), the conversions
//! between messages and records in [`convert`], and here what every handler shares: the [`Ca`]
//! state, authentication, auditing a refusal, and running a handler off the async runtime.

use std::sync::Arc;
use std::time::SystemTime;

use ::registry::{AuditEvent, Registry};
use pki::PolicySet;
use pki::cert::IssuerInfo;
use prost::Message;
use proto::signing::SignedHeaders;
use proto::status;
use proto::v1::Reason;
use tonic::{Code, Request, Response, Status};

use crate::auth::{AuthFailure, Caller, FailureLimiter, Gate, NonceCache, Refused, Trust};
use crate::records::now_ms;
use crate::roles::Roles;

pub use convert::registry_status;

/// Everything the handlers share.
pub struct Ca {
    /// Certificate policy.
    pub policy: PolicySet,
    /// Roles policy.
    pub roles: Roles,
    /// Whether terminals must be registered before issuance.
    pub require_registration: bool,
    /// Whether terminal certificates are issued on the activation hold.
    pub hold_until_activation: bool,
    /// How long an activation challenge may be used.
    pub activation_challenge_ms: u64,
    /// Unused, unexpired activation challenges one operator may hold.
    pub activation_challenges_per_operator: u64,
    /// Durable state.
    pub registry: Registry,
    /// The issuing CA's key in the HSM.
    pub signer: Box<dyn hsm::Signer>,
    /// The issuing CA as an issuer.
    pub issuer_info: IssuerInfo,
    /// Trust anchors for callers.
    pub trust: Trust,
    /// DER of the issuing CA and root certificates, as every issuance answer carries them.
    pub chain_der: Vec<Vec<u8>>,
    /// The key that signs audit checkpoints, when configured.
    pub audit_signer: Option<crate::audit::AuditSigner>,
    /// Replay cache.
    pub nonces: NonceCache,
    /// Failure counts.
    pub limiter: FailureLimiter,
    /// Caller chains already validated.
    pub validated: crate::auth::ValidatedCerts,
    /// Refused authentications not yet audited.
    pub refusals: crate::refusals::RefusalTally,
    /// Counters for /metrics.
    pub metrics: crate::http::Metrics,
    /// Published CRLs.
    pub crls: crate::revocation::Crls,
    /// The OCSP responder.
    pub ocsp: crate::ocsp::Responder,
    /// Issuance ordinals reserved from the registry and not yet used: (next, end).
    pub ordinals: std::sync::Mutex<(u64, u64)>,
    /// Certificates per CRL partition (`[crl] partition_size`).
    pub partition_size: u64,
    /// Threads for issuance's signing when it only computes (in-process softtoken, redb);
    /// `None`: it runs on `spawn_blocking`.
    pub cpu_pool: Option<crate::cpu_pool::CpuPool>,
}

/// A decoded request with what authentication needs.
pub struct Incoming<T> {
    headers: Result<SignedHeaders, proto::signing::HeaderError>,
    peer: String,
    /// The message bytes as received ([`raw::KeepRawLayer`]), which the signature covers.
    raw: Option<bytes::Bytes>,
    msg: T,
}

impl<T: Message> Incoming<T> {
    fn from(req: Request<T>) -> Self {
        let headers = SignedHeaders::from_metadata(req.metadata());
        let peer = req.remote_addr().map_or_else(|| "unknown".into(), |a| a.ip().to_string());
        let raw = req.extensions().get::<raw::RawMessage>().map(|r| r.0.clone());
        Self { headers, peer, raw, msg: req.into_inner() }
    }
}

impl Ca {
    /// The CRL partition of the next terminal certificate: its issuance ordinal divided by the
    /// partition size. Ordinals are reserved from the registry in blocks.
    fn crl_partition(&self) -> Result<u32, Status> {
        // Reserved in blocks (one durable write per block), never beyond a partition's size, so
        // the partitions counted from the reservation high-water mark are the ones in use.
        let block = self.partition_size.clamp(1, 1000);
        let mut o = self.ordinals.lock().map_err(|_| status(Code::Internal, Reason::Internal, "ordinal lock"))?;
        if o.0 >= o.1 {
            let start = self.registry.reserve_ordinals(block).map_err(|e| registry_status(&e))?;
            *o = (start, start + block);
        }
        let ordinal = o.0;
        o.0 += 1;
        let size = self.partition_size.max(1);
        let partition = u32::try_from(ordinal / size)
            .map_err(|_| status(Code::Internal, Reason::Internal, "CRL partition number overflow"))?;
        if ordinal % size == 0 {
            // A new partition: its (empty) CRL must be there before anyone needs it.
            self.crls.changed_in(Some(partition));
        }
        Ok(partition)
    }

    /// A certificate's status changed (committed): relying parties must see it within a second.
    pub fn revocation_changed(&self, serial: &str) {
        self.ocsp.refresh(&self.registry, serial);
        let partition = self.registry.certificate(serial).ok().flatten().and_then(|(rec, _)| rec.crl_partition);
        self.crls.changed_in(partition);
    }

    /// How many CRL partitions exist: enough for every issuance ordinal reserved so far.
    pub fn crl_partitions(&self) -> u32 {
        let hw = self.registry.ordinal_high_water().unwrap_or(0);
        u32::try_from(hw.div_ceil(self.partition_size.max(1))).unwrap_or(u32::MAX).max(1)
    }

    fn audit(&self, actor: &str, action: &str, target: &str, outcome: &str, detail: String) {
        let ev = AuditEvent {
            time_ms: now_ms(),
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            outcome: outcome.into(),
            detail,
        };
        if let Err(e) = self.registry.audit(&ev) {
            tracing::error!(error = %e, "audit write failed");
        }
    }

    fn event(caller: &Caller, action: &str, target: &str, detail: String) -> AuditEvent {
        AuditEvent {
            time_ms: now_ms(),
            actor: caller.name.clone(),
            action: action.into(),
            target: target.into(),
            outcome: "ok".into(),
            detail,
        }
    }

    /// Readiness, as `/readyz` and `grpc.health.v1.Health` report it: the HSM signs and the
    /// signature verifies under the issuing CA's key, and the registry reads. Blocking.
    pub fn ready(&self) -> Result<(), String> {
        let sig = self.signer.sign(b"readiness probe").map_err(|e| format!("hsm: {e}"))?;
        self.issuer_info
            .key
            .verify(&self.issuer_info.signer_id, b"readiness probe", sig.as_der())
            .map_err(|e| format!("hsm self-test: {e}"))?;
        self.registry.audit_len().map_err(|e| format!("registry: {e}"))?;
        Ok(())
    }

    /// Authenticates; a refusal is counted for the audit log.
    fn authenticate<T: Message>(&self, req: &Incoming<T>, method: &str) -> Result<Caller, Status> {
        let gate = Gate {
            trust: &self.trust,
            directory: &self.registry,
            roles: &self.roles,
            nonces: &self.nonces,
            limiter: &self.limiter,
            validated: &self.validated,
        };
        let checked = match &req.raw {
            Some(body) => gate.authenticate_from(req.headers.clone(), method, body, &req.peer, SystemTime::now()),
            None => Err(Refused {
                failure: AuthFailure::BadSignature("the request's bytes were not kept (no KeepRawLayer)".into()),
                principal: None,
            }),
        };
        checked.map_err(|r| {
            let (code, reason) = r.failure.status();
            self.metrics.auth_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Counted now, audited in aggregate (serve's refusal loop): no write per refusal.
            let source = r.principal.as_deref().unwrap_or(&req.peer);
            self.refusals.count(source, method, reason.as_str_name(), &r.failure.to_string());
            status(code, reason, r.failure.to_string())
        })
    }

    /// Audits a refusal after authentication and passes it on.
    fn refuse(&self, caller: &Caller, action: &str, target: &str, s: Status) -> Status {
        let reason = proto::reason(&s).map_or("INTERNAL", |r| r.as_str_name());
        self.audit(&caller.name, action, target, reason, s.message().to_owned());
        s
    }

    fn chain(&self) -> Vec<Vec<u8>> {
        self.chain_der.clone()
    }
}

/// The tonic services over one shared [`Ca`].
#[derive(Clone)]
pub struct Services(pub Arc<Ca>);

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<Response<T>, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| status(Code::Internal, Reason::Internal, e.to_string()))?
        .map(Response::new)
}

/// Runs request work that only computes: on the CPU pool where this process has one, else as
/// [`blocking`] does.
async fn computing<T: Send + 'static>(
    ca: &Arc<Ca>,
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<Response<T>, Status> {
    match &ca.cpu_pool {
        Some(pool) => {
            pool.run(f).await.map_err(|e| status(Code::Internal, Reason::Internal, e.to_string()))?.map(Response::new)
        }
        None => blocking(f).await,
    }
}

macro_rules! handlers {
    ($trait:path; $($method:ident($req:ty) -> $resp:ty => $call:ident;)* $(; $($extra:tt)*)?) => {
        #[tonic::async_trait]
        impl $trait for Services {
            $(
                async fn $method(&self, req: Request<$req>) -> Result<Response<$resp>, Status> {
                    let ca = self.0.clone();
                    let incoming = Incoming::from(req);
                    blocking(move || ca.$call(incoming)).await
                }
            )*
            $($($extra)*)?
        }
    };
}

mod admin;
mod ca;
mod convert;
mod health;
pub mod raw;
mod registry;

pub use health::HealthService;
