//! `ca-server bench`: certificates per second end to end over gRPC (durable commits), with p50
//! and p99 latency, next to the *crypto limit* — how often one process on these cores can do
//! the work no implementation can skip per certificate: verify the request signature, verify
//! the CSR, and build, lint and sign the certificate through the same `Pkcs11Signer`. Each is
//! done with the code the server runs: the request signature with the caller's key as the
//! server caches it (multiples precomputed), the CSR with a key seen once.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use hsm::backend::memory::SoftwareSm2Key;
use pki::{SignerId, SubjectVars};
use proto::client::{Client, request_id};
use proto::identity::Identity;
use proto::v1;

use crate::issuer::Issuer;

/// One measured row.
#[derive(Debug)]
pub struct Row {
    /// What was measured.
    pub what: String,
    /// Operations per second.
    pub per_second: f64,
    /// Median latency.
    pub p50: Option<Duration>,
    /// 99th percentile latency.
    pub p99: Option<Duration>,
    /// Failed operations.
    pub errors: usize,
    /// Threads (crypto limit) or connections (end to end) that did the work.
    pub threads: usize,
    /// CPU per operation: (whole machine, this process), when `/proc` could tell.
    pub cpu_per_op: Option<(Duration, Duration)>,
}

/// CPU time used so far by the whole machine (every process and the kernel, not counting idle,
/// I/O wait or time stolen by the hypervisor) and by this process, from `/proc`.
fn cpu_used() -> Option<(Duration, Duration)> {
    // /proc counts in USER_HZ ticks, which Linux fixes at 100 per second.
    let ticks = |t: u64| Duration::from_millis(t * 10);
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    let busy = [0, 1, 2, 5, 6].iter().map(|i| fields.get(*i).copied()).sum::<Option<u64>>()?;
    let me = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name: Vec<&str> = me.get(me.rfind(')')? + 2..)?.split_whitespace().collect();
    // utime and stime, fields 14 and 15 of proc(5), counted from the state field (3).
    let own = after_name.get(11)?.parse::<u64>().ok()? + after_name.get(12)?.parse::<u64>().ok()?;
    Some((ticks(busy), ticks(own)))
}

fn csr(key: &SoftwareSm2Key, serial: &str) -> Result<Vec<u8>> {
    let subject: pki::Name =
        format!("CN={serial},serialNumber={serial}").parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let info = pki::csr::build_csr_info(&subject, key.sm2_public_key())?;
    let sig = hsm::Signer::sign(key, &info)?;
    Ok(pki::csr::assemble_csr(&info, sig.as_der(), &SignerId::default())?)
}

/// Valid, distinct serials for this run under `manufacturer` (random model and month, counted sequence).
fn serials(policy: &pki::PolicySet, manufacturer: &str, n: usize) -> Result<Vec<String>> {
    let mut r = [0u8; 4];
    getrandom::fill(&mut r).map_err(|e| anyhow::anyhow!("{e}"))?;
    let model = format!("{:02}", r[0] % 100);
    let yymm = format!("{:02}{:02}", 20 + r[1] % 10, 1 + r[2] % 12);
    let run = char::from_digit(u32::from(r[3] % 36), 36).unwrap_or('0').to_ascii_uppercase();
    let rule = policy.serial_rule();
    // The first 10,000 count in decimal; the rest start with a letter so they never spell a
    // decimal sequence already used (26 × 36³ more).
    const MORE: usize = 26 * 36 * 36 * 36;
    anyhow::ensure!(n <= 10_000 + MORE, "at most {} distinct serials per run", 10_000 + MORE);
    (0..n)
        .map(|i| {
            let seq = match i.checked_sub(10_000) {
                None => format!("{run}{i:04}"),
                Some(j) => format!("{run}{}{}", radix36(10 + j / (36 * 36 * 36), 1), radix36(j, 3)),
            };
            let body = format!("{manufacturer}{model}{yymm}{seq}");
            let check = rule.check.compute(&body).context("serial alphabet")?;
            Ok(format!("{body}{check}"))
        })
        .collect()
}

fn radix36(mut n: usize, width: usize) -> String {
    let mut out = vec!['0'; width];
    for slot in out.iter_mut().rev() {
        *slot = char::from_digit((n % 36) as u32, 36).unwrap_or('0').to_ascii_uppercase();
        n /= 36;
    }
    out.into_iter().collect()
}

/// What the crypto limit counts per certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitWork {
    /// Exactly the issue's list: verify the request signature, verify the CSR, sign through the
    /// same `Pkcs11Signer` — nothing any implementation could skip.
    Minimum,
    /// What our issuer really does: also build and lint the TBS, and verify the HSM's signature
    /// before a certificate is released.
    AsIssued,
}

/// The crypto limit, on `threads` threads for `count` certificates.
pub fn crypto_limit(ca: &crate::serve::Signing, threads: usize, count: usize, work: LimitWork) -> Result<Row> {
    let caller = SoftwareSm2Key::generate(SignerId::default())?;
    let terminal = SoftwareSm2Key::generate(SignerId::default())?;
    let serial = serials(&ca.policy, "HSTM", 1)?.remove(0);
    let csr_der = csr(&terminal, &serial)?;
    let body = vec![0x5au8; 400];
    let canonical = proto::signing::canonical("/hsca.v1.CertificateAuthority/IssueTerminalCertificate", 1, "00", &body);
    let request_sig = hsm::Signer::sign(&caller, &canonical)?;
    let profile = ca.policy.profile("terminal").context("terminal profile")?;
    let vars = SubjectVars {
        serial: Some(serial.clone()),
        class: Some("II".into()),
        manufacturer: Some("HSTM".into()),
        model: Some("01".into()),
        name: None,
        crl_partition: Some(0),
    };
    // A real TBS of a terminal certificate, for the minimum: signing it is what cannot be skipped.
    let sample_tbs = {
        let key = pki::verify_csr(&csr_der, &SignerId::default())?;
        let issuer = Issuer::new(ca.signer.as_ref(), &ca.issuer_info);
        let cert = issuer.issue(profile, &vars, key.public_key(), SystemTime::now())?;
        der::Encode::to_der(cert.tbs_certificate())?
    };
    // The server keeps a caller's key with its multiples precomputed (`auth::ValidatedCerts`).
    let caller_key = caller.sm2_public_key().clone().precomputed();
    let start = Instant::now();
    let errors = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let n = count / threads + usize::from(t < count % threads);
                let (caller_key, csr_der, canonical, request_sig, vars, sample_tbs) =
                    (&caller_key, &csr_der, &canonical, &request_sig, &vars, &sample_tbs);
                s.spawn(move || {
                    let issuer = Issuer::new(ca.signer.as_ref(), &ca.issuer_info);
                    let mut errors = 0;
                    for _ in 0..n {
                        let request_ok =
                            caller_key.verify(&SignerId::default(), canonical, request_sig.as_der()).is_ok();
                        let csr = pki::verify_csr(csr_der, &SignerId::default()).ok();
                        let signed = csr.is_some_and(|c| match work {
                            LimitWork::Minimum => ca.signer.sign(sample_tbs).is_ok(),
                            LimitWork::AsIssued => {
                                issuer.issue(profile, vars, c.public_key(), SystemTime::now()).is_ok()
                            }
                        });
                        errors += usize::from(!(request_ok && signed));
                    }
                    errors
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(usize::MAX)).sum::<usize>()
    });
    let secs = start.elapsed().as_secs_f64();
    let what = match work {
        LimitWork::Minimum => "crypto limit, minimum (2 verifies + sign)",
        LimitWork::AsIssued => "crypto limit, as issued (+ build, lint, check)",
    };
    Ok(Row {
        what: format!("{what}, {threads} thr"),
        per_second: count as f64 / secs,
        p50: None,
        p99: None,
        errors,
        threads,
        cpu_per_op: None,
    })
}

/// End-to-end issuance over gRPC with `concurrency` connections, as the station `identity`.
pub async fn end_to_end(
    identity: &Path,
    policy: &pki::PolicySet,
    manufacturer: &str,
    concurrency: usize,
    count: usize,
) -> Result<Row> {
    let id = Identity::load(identity)?;
    let pass = id.passphrase(|| None)?;
    let mut clients = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        clients.push(Arc::new(Client::connect(&id, None, Box::new(id.signer(&pass)?)).await?));
    }
    // Terminal keys and CSRs come from the devices' secure elements: made before timing.
    let serials = serials(policy, manufacturer, count)?;
    let mut work = Vec::with_capacity(count);
    for s in &serials {
        let key = SoftwareSm2Key::generate(SignerId::default())?;
        work.push((s.clone(), csr(&key, s)?));
    }
    let work = Arc::new(std::sync::Mutex::new(work));
    let cpu_before = cpu_used();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in clients {
        let work = work.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            let mut ca = v1::certificate_authority_client::CertificateAuthorityClient::new(c.channel.clone());
            loop {
                let next = work.lock().ok().and_then(|mut w| w.pop());
                let Some((serial, csr)) = next else { break };
                let msg = v1::IssueTerminalCertificateRequest {
                    request_id: request_id(),
                    terminal_serial: serial,
                    class: 2,
                    model: String::new(),
                    csr_der: csr,
                    reissue: false,
                    lot: String::new(),
                };
                let t = Instant::now();
                let ok = match c.signed("/hsca.v1.CertificateAuthority/IssueTerminalCertificate", msg) {
                    Ok(req) => ca.issue_terminal_certificate(req).await.is_ok(),
                    Err(_) => false,
                };
                lat.push(t.elapsed());
                errors += usize::from(!ok);
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu_per_op = cpu_before.zip(cpu_used()).map(|((m0, p0), (m1, p1))| {
        let n = u32::try_from(count.max(1)).unwrap_or(u32::MAX);
        (m1.saturating_sub(m0) / n, p1.saturating_sub(p0) / n)
    });
    lat.sort();
    let pick = |q: f64| lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1))).copied();
    Ok(Row {
        what: format!("end to end over gRPC ({concurrency} connections)"),
        per_second: (count - errors) as f64 / secs,
        p50: pick(0.50),
        p99: pick(0.99),
        errors,
        threads: concurrency,
        cpu_per_op,
    })
}

/// Prints rows as a table.
pub fn print(rows: &[Row]) {
    println!("{:<48} {:>12} {:>10} {:>10} {:>7}", "measurement", "per second", "p50", "p99", "errors");
    for r in rows {
        let ms = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1000.0));
        println!("{:<48} {:>12.0} {:>10} {:>10} {:>7}", r.what, r.per_second, ms(r.p50), ms(r.p99), r.errors);
    }
    if let [minimum, as_issued, e2e] = rows {
        println!(
            "end to end / crypto limit: {:.0} % of the minimum, {:.0} % of the work as issued",
            100.0 * e2e.per_second / minimum.per_second,
            100.0 * e2e.per_second / as_issued.per_second
        );
        if let Some((machine, client)) = e2e.cpu_per_op {
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            println!(
                "CPU per certificate end to end: {:.0} µs on the machine = {:.0} µs load generator (TLS, HTTP/2, \
                 SM2-signing the request) + {:.0} µs server and kernel; the minimum's work is {:.0} µs",
                us(machine),
                us(client),
                us(machine.saturating_sub(client)),
                1e6 * minimum.threads as f64 / minimum.per_second
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_run_has_distinct_valid_serials() {
        let policy = pki::PolicySet::embedded_default().expect("policy");
        let all = serials(&policy, "HSTM", 60_000).expect("serials");
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), all.len(), "a terminal serial repeats");
        for s in &all {
            policy.serial_rule().parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    }

    #[test]
    fn a_run_past_the_sequence_space_is_refused() {
        let policy = pki::PolicySet::embedded_default().expect("policy");
        assert!(serials(&policy, "HSTM", 10_000 + 26 * 36 * 36 * 36 + 1).is_err());
    }

    #[test]
    fn cpu_used_reads_this_process_and_the_machine() {
        let (machine0, own0) = cpu_used().expect("/proc/stat and /proc/self/stat");
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let (machine1, own1) = cpu_used().expect("again");
        let own = own1 - own0;
        // Ticks are 10 ms: a 300 ms busy loop shows (even on a busy host), and the machine counted work too
        // (not necessarily all of it: time the hypervisor stole is not the machine's).
        assert!(own >= Duration::from_millis(100), "{own:?}");
        assert!(machine1 > machine0, "{machine0:?} -> {machine1:?}");
    }
}
