//! `cactl terminal activate`: proof-of-presence activation (issue 14 item 3). The operator, with
//! the terminal at hand (USB serial, as the factory station reaches it), asks the CA for a fresh
//! challenge, has the terminal's secure element sign a statement binding that challenge, its
//! serial and certificate, the institution and position (device-protocol ACTIVATE), and sends
//! it in a request they sign themselves — the countersignature. `--manual` is the
//! administrator's audited override, with no terminal signature.

use std::path::Path;

use anyhow::{Context, Result, bail};
use device_protocol::{HostLink, LinkConfig, Request, Response};
use proto::client::{Client, request_id};
use proto::v1;

/// Where and how to activate.
pub struct Place<'a> {
    /// Institution the terminal is installed at.
    pub institution: &'a str,
    /// Latitude, degrees.
    pub latitude: f64,
    /// Longitude, degrees.
    pub longitude: f64,
}

/// Parses `LAT,LON` in degrees.
pub fn parse_position(s: &str) -> Result<(f64, f64)> {
    let (lat, lon) = s.split_once(',').context("--position is LAT,LON in degrees")?;
    let lat: f64 = lat.trim().parse().context("latitude")?;
    let lon: f64 = lon.trim().parse().context("longitude")?;
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        bail!("--position {s}: latitude must be -90..90 and longitude -180..180");
    }
    Ok((lat, lon))
}

/// Proof of presence through the terminal at `device` (`serial`, if given, must be its serial).
pub async fn with_device(
    client: &Client,
    device: &Path,
    serial: Option<&str>,
    place: &Place<'_>,
) -> Result<v1::Activation> {
    let port = device_protocol::open_serial(&device.to_string_lossy())
        .with_context(|| format!("opening the terminal at {}", device.display()))?;
    let mut link = HostLink::new(Box::new(port) as Box<dyn device_protocol::Transport>, LinkConfig::default());
    let info = match link.call(&Request::Hello { max_version: device_protocol::PROTOCOL_VERSION })? {
        Response::Hello(info) => info,
        other => bail!("the terminal answered HELLO with {}", other.name()),
    };
    if let Some(s) = serial.filter(|s| *s != info.serial) {
        bail!("the terminal at {} is {}, not {s}", device.display(), info.serial);
    }
    let mut reg = v1::registry_client::RegistryClient::new(client.channel.clone());
    let ask = v1::NewActivationChallengeRequest { request_id: request_id(), serial: info.serial.clone() };
    let ch = reg
        .new_activation_challenge(client.signed("/hsca.v1.Registry/NewActivationChallenge", ask)?)
        .await?
        .into_inner();
    let statement = proto::activation::encode(&v1::ActivationStatement {
        challenge: ch.challenge,
        terminal_serial: info.serial.clone(),
        certificate_serial: ch.certificate_serial,
        institution: place.institution.into(),
        latitude: place.latitude,
        longitude: place.longitude,
    });
    let signature = match link.call(&Request::Activate { statement: statement.clone() })? {
        Response::Signature { der } => der,
        other => bail!("the terminal answered ACTIVATE with {}", other.name()),
    };
    let msg = v1::ActivateTerminalRequest {
        request_id: request_id(),
        serial: info.serial,
        institution: place.institution.into(),
        latitude: place.latitude,
        longitude: place.longitude,
        statement,
        terminal_signature: signature,
        manual: false,
    };
    Ok(reg.activate_terminal(client.signed("/hsca.v1.Registry/ActivateTerminal", msg)?).await?.into_inner())
}

/// The administrator's manual override: no terminal signature, audited as `activate_manual`.
pub async fn manual(client: &Client, serial: &str, place: &Place<'_>) -> Result<v1::Activation> {
    let msg = v1::ActivateTerminalRequest {
        request_id: request_id(),
        serial: serial.into(),
        institution: place.institution.into(),
        latitude: place.latitude,
        longitude: place.longitude,
        manual: true,
        ..Default::default()
    };
    let mut reg = v1::registry_client::RegistryClient::new(client.channel.clone());
    Ok(reg.activate_terminal(client.signed("/hsca.v1.Registry/ActivateTerminal", msg)?).await?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_and_out_of_range_ones_are_refused() {
        assert_eq!(parse_position("31.23, 121.47").expect("ok"), (31.23, 121.47));
        assert_eq!(parse_position("-33.9,-70.6").expect("ok"), (-33.9, -70.6));
        for bad in ["31.23", "91,0", "0,181", "x,1", ""] {
            assert!(parse_position(bad).is_err(), "{bad}");
        }
    }
}
