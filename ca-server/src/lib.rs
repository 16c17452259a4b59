//! `ca-server`: the gRPC certificate authority.
//!
//! Boulder's split, as modules: [`auth`] authenticates and authorises every signed request,
//! [`ra`] makes every policy decision about a request, [`issuer`] builds, lints and signs through
//! the HSM and nothing else, and the `registry` crate stores. The gRPC handlers ([`api`]) only
//! decode, call these, and encode.

pub mod api;
pub mod audit;
pub mod auth;
pub mod bench;
pub mod config;
pub mod cpu_pool;
pub mod http;
pub mod init;
pub mod issuer;
pub mod ocsp;
pub mod ra;
pub mod records;
pub mod refusals;
pub mod revocation;
pub mod roles;
pub mod secrets;
pub mod serve;
