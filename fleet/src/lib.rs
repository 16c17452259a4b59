//! `fleet`: the fleet service (`fleet-server`, DESIGN §9). Deployed terminals send heartbeats
//! signed by their secure elements; the service verifies them ([`verify`]), applies the anomaly
//! rules of `policies/fleet.toml` ([`policy`], [`rules`]) in one ordered engine over its own redb
//! store ([`engine`], [`store`]), keeps deduplicated alerts, and asks the CA for holds and
//! keyCompromise revocations as an ordinary `monitor` principal ([`ca`]). See README.md.

#![warn(missing_docs)]

pub mod ca;
pub mod config;
pub mod engine;
pub mod metrics;
pub mod policy;
pub mod revocation;
pub mod rules;
pub mod server;
pub mod store;
pub mod verify;
pub mod webhook;
