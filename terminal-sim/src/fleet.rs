//! `terminal-sim fleet`: many deployed terminals in one process, on one shared event loop,
//! heartbeating to `fleet-server`, with injected anomalies. Each terminal has its own SE key and
//! counter ([`CountingKey`]) and a certificate from the real CA (issued through a station
//! identity). Everything injected is printed as a JSON line so a test can score detection.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use proto::client::{Client, request_id};
use proto::v1::{self, HeartbeatBody, Position, PositionSource};
use serde_json::json;
use tonic::transport::{Certificate as TlsCa, Channel, ClientTlsConfig, Endpoint};

use crate::forge::Authority;
use crate::se::CountingKey;

/// What to run and inject.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Terminals.
    pub count: usize,
    /// Serial prefix: manufacturer (4), model (2), production YYMM (4); a base-36 sequence of 5
    /// and the check character follow.
    pub serial_prefix: String,
    /// The first sequence number.
    pub first_sequence: u64,
    /// Heartbeat interval.
    pub interval: Duration,
    /// How long to run.
    pub duration: Duration,
    /// When to inject, from the start of heartbeating.
    pub inject_after: Duration,
    /// Terminals to clone (a copy of the SE state heartbeating from `clone_address`).
    pub clones: usize,
    /// Terminals to move 50 km away.
    pub relocations: usize,
    /// Counterfeits (a self-made CA certifies a fake terminal claiming a real one's serial).
    pub counterfeits: usize,
    /// Terminals whose enclosure is opened.
    pub tampers: usize,
    /// Terminals that fall silent.
    pub silences: usize,
    /// Source address of the clones' connections.
    pub clone_address: IpAddr,
    /// gRPC connections the terminals share.
    pub connections: usize,
    /// The station also confirms each terminal's provisioning (as the factory would), so an
    /// operator or administrator can activate it before it goes live.
    pub confirm: bool,
    /// Heartbeating starts only once this file exists (the terminals are "installed": a test
    /// activates them first); the `enrolled` line then lists each terminal, its certificate and
    /// its home position.
    pub start_when: Option<std::path::PathBuf>,
}

/// A terminal's running state.
struct Terminal {
    serial: String,
    cert_der: Vec<u8>,
    certificate_serial: String,
    home: (f64, f64),
    position: Mutex<(f64, f64)>,
    tamper: AtomicBool,
    stopped: AtomicBool,
    booted: Instant,
}

/// Counts and latencies of the run.
#[derive(Default)]
pub struct Tally {
    sent: AtomicU64,
    accepted: AtomicU64,
    refused: Mutex<BTreeMap<String, u64>>,
    transport_errors: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
    /// Latencies of heartbeats sent after the first interval (every certificate seen once).
    steady_latencies_us: Mutex<Vec<u32>>,
    steady_after: std::sync::OnceLock<Instant>,
}

/// A base-36 sequence of 5 characters.
fn sequence(n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut out = [b'0'; 5];
    let mut v = n;
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(v % 36) as usize];
        v /= 36;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The terminal serial for sequence `n` under `prefix`, with its check character.
pub fn serial(prefix: &str, n: u64) -> Option<String> {
    let body = format!("{prefix}{}", sequence(n));
    let check = pki::serial::CheckAlgorithm::Iso7064Mod37_36.compute(&body)?;
    Some(format!("{body}{check}"))
}

fn emit(mut v: serde_json::Value) {
    // When it happened, so a score can measure detection delays against the service's alerts.
    if let Some(o) = v.as_object_mut() {
        o.insert("at_ms".into(), now_ms().into());
    }
    println!("{v}");
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A channel to the fleet service trusting `tls_ca_pem`, from `local` if given.
pub async fn fleet_channel(url: &str, tls_ca_pem: &str, local: Option<IpAddr>) -> anyhow::Result<Channel> {
    let tls = ClientTlsConfig::new().ca_certificate(TlsCa::from_pem(tls_ca_pem)).domain_name("localhost");
    let ep = Endpoint::from_shared(url.to_owned())?
        .tls_config(tls)?
        .local_address(local)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30));
    Ok(ep.connect().await?)
}

/// Certifies `count` fresh SE keys at the CA as the station `station`, a few at a time.
async fn enrol(station: Arc<Client>, plan: &Plan) -> anyhow::Result<Vec<(Arc<Terminal>, CountingKey)>> {
    let mut out = Vec::with_capacity(plan.count);
    let mut set = tokio::task::JoinSet::new();
    let mut next = 0usize;
    let parallel = 16;
    let mut results: Vec<Option<(Terminal, CountingKey)>> = (0..plan.count).map(|_| None).collect();
    while next < plan.count || !set.is_empty() {
        while next < plan.count && set.len() < parallel {
            let station = station.clone();
            let i = next;
            let serial = serial(&plan.serial_prefix, plan.first_sequence + i as u64)
                .ok_or_else(|| anyhow::anyhow!("serial prefix {:?} makes no valid serial", plan.serial_prefix))?;
            let confirm = plan.confirm;
            set.spawn(async move { (i, enrol_one(&station, serial, i, confirm).await) });
            next += 1;
        }
        if let Some(done) = set.join_next().await {
            let (i, t) = done?;
            results[i] = Some(t?);
        }
    }
    for (t, se) in results.into_iter().flatten() {
        out.push((Arc::new(t), se));
    }
    Ok(out)
}

/// A place for terminal `i`: institutions spread over eastern China, deterministic.
fn home_of(i: usize) -> (f64, f64) {
    let a = (i as f64 * 0.618_033_988_75).fract();
    let b = (i as f64 * 0.414_213_562_37).fract();
    (28.0 + 12.0 * a, 108.0 + 12.0 * b)
}

async fn enrol_one(
    station: &Client,
    serial: String,
    i: usize,
    confirm: bool,
) -> anyhow::Result<(Terminal, CountingKey)> {
    let mut se = CountingKey::generate()?;
    let subject: pki::Name = format!("CN={serial},serialNumber={serial}").parse()?;
    let pk = se.public_key().ok_or_else(|| anyhow::anyhow!("no key"))?.clone();
    let info = pki::csr::build_csr_info(&subject, &pk)?;
    let sig = hsm::Signer::sign(se.signer()?, &info)?;
    let csr = pki::csr::assemble_csr(&info, sig.as_der(), &pki::SignerId::default())?;
    let req = v1::IssueTerminalCertificateRequest {
        request_id: request_id(),
        terminal_serial: serial.clone(),
        class: v1::TerminalClass::ClassIi as i32,
        model: String::new(),
        csr_der: csr,
        reissue: false,
        lot: "FLEET".into(),
    };
    let signed = station.signed("/hsca.v1.CertificateAuthority/IssueTerminalCertificate", req)?;
    let resp = v1::certificate_authority_client::CertificateAuthorityClient::new(station.channel.clone())
        .issue_terminal_certificate(signed)
        .await?
        .into_inner();
    if confirm {
        let req = v1::ConfirmProvisioningRequest {
            request_id: request_id(),
            terminal_serial: serial.clone(),
            certificate_serial: resp.certificate_serial.clone(),
            duration_ms: 1,
            firmware_version: "1.0.0".into(),
        };
        let signed = station.signed("/hsca.v1.CertificateAuthority/ConfirmProvisioning", req)?;
        v1::certificate_authority_client::CertificateAuthorityClient::new(station.channel.clone())
            .confirm_provisioning(signed)
            .await?;
    }
    let home = home_of(i);
    let t = Terminal {
        serial,
        cert_der: resp.certificate_der,
        certificate_serial: resp.certificate_serial,
        home,
        position: Mutex::new(home),
        tamper: AtomicBool::new(false),
        stopped: AtomicBool::new(false),
        booted: Instant::now(),
    };
    Ok((t, se))
}

/// One signed heartbeat of `t` (with SE `se`), or why the SE cannot sign.
fn heartbeat_of(
    t: &Terminal,
    se: &mut CountingKey,
    firmware: &[u8],
) -> Result<v1::HeartbeatRequest, crate::se::SignError> {
    let (lat, lon) = t.position.lock().map(|p| *p).unwrap_or(t.home);
    let mut body = HeartbeatBody {
        terminal_serial: t.serial.clone(),
        counter: 0,
        time_ms: now_ms(),
        position: Some(Position { lat, lon, source: PositionSource::Gnss as i32 }),
        firmware_sm3: firmware.to_vec(),
        tamper: t.tamper.load(Ordering::Relaxed),
        uptime_s: t.booted.elapsed().as_secs(),
    };
    let mut encoded = Vec::new();
    let (_, sig) = se.sign(|n| {
        body.counter = n;
        encoded = prost::Message::encode_to_vec(&body);
        proto::heartbeat::signed_bytes(&encoded)
    })?;
    Ok(v1::HeartbeatRequest { body: encoded, signature_der: sig, certificate_der: t.cert_der.clone() })
}

async fn send(channel: Channel, req: v1::HeartbeatRequest, tally: &Tally) {
    let started = Instant::now();
    tally.sent.fetch_add(1, Ordering::Relaxed);
    match v1::fleet_client::FleetClient::new(channel).heartbeat(req).await {
        Ok(_) => {
            tally.accepted.fetch_add(1, Ordering::Relaxed);
            let us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
            if let Ok(mut l) = tally.latencies_us.lock() {
                l.push(us);
            }
            if tally.steady_after.get().is_some_and(|t| started >= *t)
                && let Ok(mut l) = tally.steady_latencies_us.lock()
            {
                l.push(us);
            }
        }
        Err(s) => {
            let name = proto::reason(&s).map_or_else(|| format!("{:?}", s.code()), |r| r.as_str_name().to_owned());
            if s.code() == tonic::Code::Unavailable && proto::reason(&s).is_none() {
                tally.transport_errors.fetch_add(1, Ordering::Relaxed);
            }
            if let Ok(mut m) = tally.refused.lock() {
                *m.entry(name).or_default() += 1;
            }
        }
    }
}

/// One heartbeating SE: a terminal's own, a clone's or a counterfeit's.
struct Beat {
    t: Arc<Terminal>,
    se: Arc<Mutex<CountingKey>>,
    channel: Channel,
    interval: Duration,
    offset: Duration,
    until: Instant,
    tally: Arc<Tally>,
    firmware: Arc<Vec<u8>>,
    /// The terminal's own SE (stops when the terminal is silenced; zeroises on tamper).
    original: bool,
}

/// Heartbeats of one SE until `until` or its terminal stops.
async fn beat(b: Beat) {
    let Beat { t, se, channel, interval, offset, until, tally, firmware, original } = b;
    tokio::time::sleep(offset).await;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if Instant::now() >= until || (original && t.stopped.load(Ordering::Relaxed)) {
            return;
        }
        let req = {
            let Ok(mut k) = se.lock() else { return };
            match heartbeat_of(&t, &mut k, &firmware) {
                Ok(r) => r,
                Err(e) => {
                    emit(json!({"event": "sign_refused", "terminal": t.serial, "error": e.to_string()}));
                    return;
                }
            }
        };
        let tamper = t.tamper.load(Ordering::Relaxed);
        send(channel.clone(), req, &tally).await;
        if tamper && original {
            // The last gasp went out: the SE wipes its key, and the next attempt shows it.
            if let Ok(mut k) = se.lock() {
                k.zeroise();
            }
        }
    }
}

/// Runs the plan; prints JSON lines (enrolled, inject, sign_refused, summary).
pub async fn run(plan: Plan, station: Client, fleet_url: &str, fleet_tls_ca: &str) -> anyhow::Result<()> {
    let enrol_started = Instant::now();
    let enrolled = enrol(Arc::new(station), &plan).await?;
    let mut terminals = Vec::with_capacity(enrolled.len());
    let mut ses = Vec::with_capacity(enrolled.len());
    for (t, se) in enrolled {
        terminals.push(t);
        ses.push(Arc::new(Mutex::new(se)));
    }
    let mut enrolled_line =
        json!({"event": "enrolled", "count": terminals.len(), "seconds": enrol_started.elapsed().as_secs_f64()});
    if let Some(path) = &plan.start_when {
        enrolled_line["terminals"] = terminals
            .iter()
            .map(|t| json!({"serial": t.serial, "certificate": t.certificate_serial, "home": [t.home.0, t.home.1]}))
            .collect();
        emit(enrolled_line);
        while !path.exists() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    } else {
        emit(enrolled_line);
    }
    let mut channels = Vec::new();
    for _ in 0..plan.connections.max(1) {
        channels.push(fleet_channel(fleet_url, fleet_tls_ca, None).await?);
    }
    let clone_channel = fleet_channel(fleet_url, fleet_tls_ca, Some(plan.clone_address)).await?;
    let firmware = Arc::new(sm3_of(b"terminal firmware 1.0.0"));
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let _ = tally.steady_after.set(start + plan.interval);
    let until = start + plan.duration;
    let n = terminals.len().max(1);
    for (i, t) in terminals.iter().enumerate() {
        let se = ses[i].clone();
        let offset = plan.interval.mul_f64(i as f64 / n as f64);
        tokio::spawn(beat(Beat {
            t: t.clone(),
            se,
            channel: channels[i % channels.len()].clone(),
            interval: plan.interval,
            offset,
            until,
            tally: tally.clone(),
            firmware: firmware.clone(),
            original: true,
        }));
    }
    // Nothing to inject after the run has ended.
    tokio::time::sleep(plan.inject_after.min(plan.duration)).await;
    let mut pick = 0usize;
    let mut take = |k: usize| {
        let chosen: Vec<usize> = (pick..(pick + k).min(terminals.len())).collect();
        pick += k;
        chosen
    };
    for i in take(plan.clones) {
        let t = &terminals[i];
        let copy = ses[i].lock().map_err(|_| anyhow::anyhow!("lock"))?.extract()?;
        emit(
            json!({"event": "inject", "kind": "clone", "terminal": t.serial, "certificate": t.certificate_serial, "address": plan.clone_address.to_string()}),
        );
        let offset = plan.interval / 2;
        tokio::spawn(beat(Beat {
            t: t.clone(),
            se: Arc::new(Mutex::new(copy)),
            channel: clone_channel.clone(),
            interval: plan.interval,
            offset,
            until,
            tally: tally.clone(),
            firmware: firmware.clone(),
            original: false,
        }));
    }
    for i in take(plan.relocations) {
        let t = &terminals[i];
        if let Ok(mut p) = t.position.lock() {
            *p = (t.home.0 + 0.5, t.home.1); // ~55 km north
        }
        emit(
            json!({"event": "inject", "kind": "relocation", "terminal": t.serial, "certificate": t.certificate_serial, "km": 55}),
        );
    }
    for i in take(plan.tampers) {
        let t = &terminals[i];
        t.tamper.store(true, Ordering::Relaxed);
        emit(json!({"event": "inject", "kind": "tamper", "terminal": t.serial, "certificate": t.certificate_serial}));
    }
    for i in take(plan.silences) {
        let t = &terminals[i];
        t.stopped.store(true, Ordering::Relaxed);
        emit(json!({"event": "inject", "kind": "silent", "terminal": t.serial, "certificate": t.certificate_serial}));
    }
    if plan.counterfeits > 0 {
        let forger = Authority::new()?;
        for i in take(plan.counterfeits) {
            let victim = &terminals[i];
            let key = CountingKey::generate()?;
            let pk = key.public_key().ok_or_else(|| anyhow::anyhow!("no key"))?.clone();
            let cert = forger.terminal(&victim.serial, &pk)?;
            let cert_der = der::Encode::to_der(&cert)?;
            let fake = Arc::new(Terminal {
                serial: victim.serial.clone(),
                cert_der,
                certificate_serial: String::new(),
                home: victim.home,
                position: Mutex::new(victim.home),
                tamper: AtomicBool::new(false),
                stopped: AtomicBool::new(false),
                booted: Instant::now(),
            });
            emit(
                json!({"event": "inject", "kind": "counterfeit", "terminal": victim.serial, "certificate": victim.certificate_serial}),
            );
            tokio::spawn(beat(Beat {
                t: fake,
                se: Arc::new(Mutex::new(key)),
                channel: channels[i % channels.len()].clone(),
                interval: plan.interval,
                offset: Duration::ZERO,
                until,
                tally: tally.clone(),
                firmware: firmware.clone(),
                original: false,
            }));
        }
    }
    tokio::time::sleep_until(until.into()).await;
    // Let the last heartbeats of the run finish.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sorted = |l: &Mutex<Vec<u32>>| {
        let mut v = l.lock().map(|l| l.clone()).unwrap_or_default();
        v.sort_unstable();
        v
    };
    let (lat, steady) = (sorted(&tally.latencies_us), sorted(&tally.steady_latencies_us));
    let pct_of = |lat: &[u32], p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).map_or(0.0, |v| *v as f64 / 1000.0)
    };
    let pct = |p: f64| pct_of(&lat, p);
    let refused = tally.refused.lock().map(|m| m.clone()).unwrap_or_default();
    let secs = start.elapsed().as_secs_f64();
    emit(json!({
        "event": "summary",
        "terminals": terminals.len(),
        "seconds": secs,
        "sent": tally.sent.load(Ordering::Relaxed),
        "accepted": tally.accepted.load(Ordering::Relaxed),
        "refused": refused,
        "transport_errors": tally.transport_errors.load(Ordering::Relaxed),
        "heartbeats_per_s": tally.sent.load(Ordering::Relaxed) as f64 / secs,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "p99_after_first_interval_ms": pct_of(&steady, 0.99),
    }));
    Ok(())
}

fn sm3_of(bytes: &[u8]) -> Vec<u8> {
    use sm3::Digest;
    sm3::Sm3::digest(bytes).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_follow_the_shipped_rule() {
        let policy = pki::PolicySet::embedded_default().expect("policy");
        let rule = policy.serial_rule();
        for n in [0, 1, 35, 36, 99_999, 60_466_175] {
            let s = serial("HSTM012611", n).expect("serial");
            rule.parse(&s).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
        assert_eq!(serial("HSTM012611", 0).as_deref(), Some("HSTM01261100000K"));
    }
}
