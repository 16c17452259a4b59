//! The one thread that owns the rules' state: verified heartbeats, refusals and silence sweeps
//! queue up here and are applied in arrival order, a batch per durable commit (group commit), so
//! every answer follows the commit of what it reports and a restart resumes from exactly that.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};

use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::policy::{Action, FleetPolicy};
use crate::rules::{Anchor, Finding, TerminalState, Verdict, Verified, evaluate, silent};
use crate::store::{AlertRecord, CertInfo, Store, StoreError};

/// An alert a job raised or added to.
#[derive(Clone, Debug)]
pub struct Raised {
    /// The alert after the change.
    pub alert: AlertRecord,
    /// A new alert (not a repeat of an open one): its action is due.
    pub new: bool,
    /// The rule's action.
    pub action: Action,
}

/// What became of a heartbeat.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The verdict.
    pub verdict: Verdict,
    /// Alerts raised.
    pub raised: Vec<Raised>,
}

type Reply<T> = oneshot::Sender<Result<T, String>>;

enum Job {
    Heartbeat(Verified, Reply<Outcome>),
    Findings(Vec<Finding>, Reply<Vec<Raised>>),
    Sweep(u64, Reply<Vec<Raised>>),
    Ack { id: u64, by: String, note: String, now_ms: u64, reply: Reply<AlertRecord> },
    Action { id: u64, action: String, retire: Option<String>, reply: Reply<AlertRecord> },
    PutCert { serial: String, info: CertInfo, reply: Reply<()> },
    Anchors { anchors: Vec<Anchor>, cursor: u64, reply: Reply<()> },
}

/// A handle on the engine thread.
#[derive(Clone)]
pub struct Engine {
    jobs: Sender<Job>,
    /// The store, for reads (MVCC: reads never wait for the engine).
    pub store: Arc<Store>,
    /// When the service last failed to answer a heartbeat itself (unix ms).
    impaired_ms: Arc<AtomicU64>,
}

/// Why a job failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine thread is gone.
    #[error("the rules engine stopped")]
    Stopped,
    /// The store refused the batch.
    #[error("{0}")]
    Store(String),
}

impl Engine {
    /// Starts the engine over `store`, loading every terminal's state. `started_ms` is when the
    /// service started (the silent rule counts from it at the latest).
    pub fn start(
        store: Store,
        policy: FleetPolicy,
        metrics: Arc<Metrics>,
        started_ms: u64,
    ) -> Result<Self, StoreError> {
        let store = Arc::new(store);
        let states: HashMap<String, TerminalState> =
            store.states()?.into_iter().map(|s| (s.certificate_serial.clone(), s)).collect();
        let anchors: HashMap<String, Anchor> =
            store.anchors()?.into_iter().map(|a| (a.terminal_serial.clone(), a)).collect();
        let (jobs, rx) = channel();
        let impaired_ms = Arc::new(AtomicU64::new(0));
        let worker = Worker {
            store: store.clone(),
            policy,
            metrics,
            states,
            anchors,
            started_ms,
            impaired_ms: impaired_ms.clone(),
        };
        std::thread::Builder::new()
            .name("fleet-rules".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| StoreError::Db(e.to_string()))?;
        Ok(Self { jobs, store, impaired_ms })
    }

    /// The service itself failed to answer a heartbeat at `at_ms` (overloaded, the CA or the
    /// store unavailable, the caller gave up waiting): the silent rule counts from then at the
    /// latest, since a terminal the service could not hear is not silent.
    pub fn service_failed(&self, at_ms: u64) {
        self.impaired_ms.fetch_max(at_ms, Ordering::Relaxed);
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Job) -> Result<T, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.jobs.send(make(tx)).map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?.map_err(EngineError::Store)
    }

    /// Applies the rules to a verified heartbeat; answers after the commit.
    pub async fn heartbeat(&self, hb: Verified) -> Result<Outcome, EngineError> {
        self.ask(|r| Job::Heartbeat(hb, r)).await
    }

    /// Records findings made outside the rules (counterfeits found by verification).
    pub async fn findings(&self, f: Vec<Finding>) -> Result<Vec<Raised>, EngineError> {
        self.ask(|r| Job::Findings(f, r)).await
    }

    /// Runs the silent rule over every terminal at `now_ms`.
    pub async fn sweep(&self, now_ms: u64) -> Result<Vec<Raised>, EngineError> {
        self.ask(|r| Job::Sweep(now_ms, r)).await
    }

    /// Acknowledges an alert.
    pub async fn ack(&self, id: u64, by: String, note: String, now_ms: u64) -> Result<AlertRecord, EngineError> {
        self.ask(|reply| Job::Ack { id, by, note, now_ms, reply }).await
    }

    /// Records the outcome of an alert's action; `retire` marks that certificate's terminal as no
    /// longer expected to heartbeat (it was held or revoked).
    pub async fn action_done(
        &self,
        id: u64,
        action: String,
        retire: Option<String>,
    ) -> Result<AlertRecord, EngineError> {
        self.ask(|reply| Job::Action { id, action, retire, reply }).await
    }

    /// Takes activations read from the CA's log (in log order) as their terminals' references,
    /// and `cursor` as the last number read: both stored in one commit, so a restart reads on
    /// from exactly there.
    pub async fn anchors(&self, anchors: Vec<Anchor>, cursor: u64) -> Result<(), EngineError> {
        self.ask(|reply| Job::Anchors { anchors, cursor, reply }).await
    }

    /// Remembers what the CA said of a certificate.
    pub async fn put_cert(&self, serial: String, info: CertInfo) -> Result<(), EngineError> {
        self.ask(|reply| Job::PutCert { serial, info, reply }).await
    }
}

struct Worker {
    store: Arc<Store>,
    policy: FleetPolicy,
    metrics: Arc<Metrics>,
    states: HashMap<String, TerminalState>,
    /// Terminal serial → its newest activation.
    anchors: HashMap<String, Anchor>,
    started_ms: u64,
    impaired_ms: Arc<AtomicU64>,
}

/// A reply waiting for its batch's commit.
enum Pending {
    Outcome(Reply<Outcome>, Result<Outcome, String>),
    Raised(Reply<Vec<Raised>>, Result<Vec<Raised>, String>),
    // Boxed: an alert record is large beside the other answers.
    Alert(Reply<AlertRecord>, Box<Result<AlertRecord, String>>),
    Unit(Reply<()>, Result<(), String>),
}

impl Pending {
    fn fail(self, why: &str) {
        let why = why.to_owned();
        let _ = match self {
            Self::Outcome(r, _) => r.send(Err(why)).map_err(drop),
            Self::Raised(r, _) => r.send(Err(why)).map_err(drop),
            Self::Alert(r, _) => r.send(Err(why)).map_err(drop),
            Self::Unit(r, _) => r.send(Err(why)).map_err(drop),
        };
    }

    fn send(self) {
        let _ = match self {
            Self::Outcome(r, v) => r.send(v).map_err(drop),
            Self::Raised(r, v) => r.send(v).map_err(drop),
            Self::Alert(r, v) => r.send(*v).map_err(drop),
            Self::Unit(r, v) => r.send(v).map_err(drop),
        };
    }
}

impl Worker {
    /// Jobs in one batch at most.
    const BATCH: usize = 1024;

    fn run(mut self, rx: Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            while jobs.len() < Self::BATCH {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            self.batch(jobs);
        }
    }

    fn batch(&mut self, jobs: Vec<Job>) {
        let mut b = match self.store.batch() {
            Ok(b) => b,
            Err(e) => {
                let why = e.to_string();
                for j in jobs {
                    Self::refuse(j, &why);
                }
                return;
            }
        };
        let mut replies = Vec::with_capacity(jobs.len());
        let mut new_alerts = Vec::new();
        for job in jobs {
            let p = match job {
                Job::Heartbeat(hb, r) => Pending::Outcome(r, self.heartbeat(&mut b, &hb).map_err(|e| e.to_string())),
                Job::Findings(f, r) => Pending::Raised(r, self.raise_all(&mut b, &f).map_err(|e| e.to_string())),
                Job::Sweep(now, r) => Pending::Raised(r, self.sweep(&mut b, now).map_err(|e| e.to_string())),
                Job::Ack { id, by, note, now_ms, reply } => {
                    Pending::Alert(reply, Box::new(b.ack(id, &by, &note, now_ms).map_err(|e| e.to_string())))
                }
                Job::Action { id, action, retire, reply } => {
                    let r = (|| {
                        if let Some(s) = retire.and_then(|c| self.states.get_mut(&c)) {
                            s.retired = true;
                            b.put_state(s)?;
                        }
                        b.set_action(id, &action)
                    })();
                    Pending::Alert(reply, Box::new(r.map_err(|e| e.to_string())))
                }
                Job::PutCert { serial, info, reply } => {
                    Pending::Unit(reply, b.put_cert(&serial, &info).map_err(|e| e.to_string()))
                }
                Job::Anchors { anchors, cursor, reply } => {
                    Pending::Unit(reply, self.take_anchors(&mut b, anchors, cursor).map_err(|e| e.to_string()))
                }
            };
            if let Pending::Outcome(_, Ok(o)) = &p {
                new_alerts.extend(o.raised.iter().filter(|r| r.new).map(|r| r.alert.rule.clone()));
            }
            if let Pending::Raised(_, Ok(rs)) = &p {
                new_alerts.extend(rs.iter().filter(|r| r.new).map(|r| r.alert.rule.clone()));
            }
            replies.push(p);
        }
        match b.commit() {
            Ok(()) => {
                for rule in new_alerts {
                    self.metrics.alert_raised(&rule);
                }
                replies.into_iter().for_each(Pending::send);
            }
            Err(e) => {
                tracing::error!(error = %e, "fleet store commit failed; reloading state");
                if let Ok(states) = self.store.states() {
                    self.states = states.into_iter().map(|s| (s.certificate_serial.clone(), s)).collect();
                }
                if let Ok(anchors) = self.store.anchors() {
                    self.anchors = anchors.into_iter().map(|a| (a.terminal_serial.clone(), a)).collect();
                }
                let why = e.to_string();
                replies.into_iter().for_each(|p| p.fail(&why));
            }
        }
    }

    fn refuse(job: Job, why: &str) {
        let p = match job {
            Job::Heartbeat(_, r) => Pending::Outcome(r, Err(String::new())),
            Job::Findings(_, r) | Job::Sweep(_, r) => Pending::Raised(r, Err(String::new())),
            Job::Ack { reply, .. } | Job::Action { reply, .. } => Pending::Alert(reply, Box::new(Err(String::new()))),
            Job::PutCert { reply, .. } | Job::Anchors { reply, .. } => Pending::Unit(reply, Err(String::new())),
        };
        p.fail(why);
    }

    fn heartbeat(&mut self, b: &mut crate::store::Batch, hb: &Verified) -> Result<Outcome, StoreError> {
        let anchor = self.anchors.get(&hb.terminal_serial);
        let e = evaluate(&self.policy, self.states.get(&hb.certificate_serial), hb, anchor);
        if let Some(s) = e.state {
            b.put_state(&s)?;
            self.states.insert(s.certificate_serial.clone(), s);
        }
        let raised = self.raise_all(b, &e.findings)?;
        Ok(Outcome { verdict: e.verdict, raised })
    }

    fn raise_all(&mut self, b: &mut crate::store::Batch, findings: &[Finding]) -> Result<Vec<Raised>, StoreError> {
        findings
            .iter()
            .map(|f| {
                let action = self.policy.action(f.rule);
                let label = match action {
                    Action::Alert => "alert".to_owned(),
                    other => format!("{}: pending", other.name()),
                };
                let (alert, new) = b.raise(f, &label, now_ms())?;
                Ok(Raised { alert, new, action })
            })
            .collect()
    }

    fn take_anchors(
        &mut self,
        b: &mut crate::store::Batch,
        anchors: Vec<Anchor>,
        cursor: u64,
    ) -> Result<(), StoreError> {
        for a in anchors {
            // Log order: a later activation of the same terminal replaces an earlier one.
            if self.anchors.get(&a.terminal_serial).is_some_and(|had| had.seq >= a.seq) {
                continue;
            }
            b.put_anchor(&a)?;
            self.anchors.insert(a.terminal_serial.clone(), a);
        }
        b.set_activation_cursor(cursor)
    }

    fn sweep(&mut self, b: &mut crate::store::Batch, now: u64) -> Result<Vec<Raised>, StoreError> {
        let mut found = Vec::new();
        let heard_from = self.started_ms.max(self.impaired_ms.load(Ordering::Relaxed));
        for s in self.states.values_mut() {
            if let Some(f) = silent(&self.policy, s, now, heard_from) {
                b.put_state(s)?;
                found.push(f);
            }
        }
        self.raise_all(b, &found)
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Rule;

    fn hb(counter: u64, address: &str) -> Verified {
        Verified {
            terminal_serial: "HSTM01261100000K".into(),
            certificate_serial: "0A".into(),
            counter,
            time_ms: now_ms(),
            position: Some((39.9, 116.4, "gnss".into())),
            class: "II".into(),
            firmware_sm3: String::new(),
            tamper: false,
            uptime_s: counter,
            body_sm3: format!("{counter}"),
            address: address.into(),
            received_ms: now_ms(),
        }
    }

    /// The engine on the store at `path`, once the previous engine's thread has let it go (its
    /// handle is dropped first, the thread ends a moment later).
    fn start(path: &std::path::Path) -> Engine {
        let policy = FleetPolicy::shipped().expect("policy");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let store = loop {
            match Store::open(path) {
                Ok(s) => break s,
                Err(e) if std::time::Instant::now() > deadline => panic!("store: {e}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        };
        Engine::start(store, policy, Arc::new(Metrics::default()), now_ms()).expect("engine")
    }

    #[tokio::test]
    async fn a_restart_resumes_the_counters_so_no_false_clone() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("fleet.redb");
        {
            let e = start(&path);
            for n in 1..=5 {
                let o = e.heartbeat(hb(n, "10.0.0.1")).await.expect("beat");
                assert_eq!(o.verdict, Verdict::Accepted);
            }
        }
        // The engine thread ends with its handle; a new one reads the store.
        let e = start(&path);
        let o = e.heartbeat(hb(6, "10.0.0.1")).await.expect("beat");
        assert_eq!(o.verdict, Verdict::Accepted);
        assert!(o.raised.is_empty(), "{:?}", o.raised);
        // The counter the store kept still catches a copy replaying an old one.
        let mut copy = hb(4, "10.0.0.2");
        copy.body_sm3 = "copy".into();
        let o = e.heartbeat(copy).await.expect("beat");
        assert_eq!(o.verdict, Verdict::CounterReused);
        assert_eq!(o.raised.len(), 1);
        assert!(o.raised[0].new && o.raised[0].alert.rule == Rule::Clone.name() && o.raised[0].action == Action::Hold);
        assert_eq!(o.raised[0].alert.action, "hold: pending");
        let done = e.action_done(o.raised[0].alert.id, "hold: done".into(), Some("0A".into())).await.expect("done");
        assert_eq!(done.action, "hold: done");
        // Retired by the hold: never silent, even long after.
        let raised = e.sweep(now_ms() + 3_600_000).await.expect("sweep");
        assert!(raised.is_empty(), "{raised:?}");
    }

    #[tokio::test]
    async fn activations_and_the_cursor_survive_a_restart_and_the_newest_activation_wins() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("fleet.redb");
        let anchor = |seq: u64, lat: f64| crate::rules::Anchor {
            terminal_serial: "HSTM01261100000K".into(),
            seq,
            institution: format!("H-{seq}"),
            position: (lat, 116.4),
            at_ms: seq,
            method: "presence".into(),
            certificate_serial: "0A".into(),
        };
        {
            let e = start(&path);
            assert_eq!(e.store.activation_cursor().expect("cursor"), 0);
            // Activated far north (seq 3), then where the heartbeats come from (seq 8).
            e.anchors(vec![anchor(3, 45.0), anchor(8, 39.9)], 8).await.expect("anchors");
            // A stale page (an older activation again) never replaces the newer one.
            e.anchors(vec![anchor(3, 45.0)], 8).await.expect("anchors");
        }
        let e = start(&path);
        assert_eq!(e.store.activation_cursor().expect("cursor"), 8, "a restart reads on from here");
        let stored = e.store.anchors().expect("anchors");
        assert_eq!(stored.iter().map(|a| a.seq).collect::<Vec<_>>(), [8]);
        for n in 1..=4 {
            let o = e.heartbeat(hb(n, "10.0.0.1")).await.expect("beat");
            assert!(o.raised.is_empty(), "at the newest activation's place: {:?}", o.raised);
        }
        // A re-activation far away (as read after the restart): the next heartbeats are far.
        e.anchors(vec![anchor(9, 45.0)], 9).await.expect("anchors");
        let mut raised = Vec::new();
        for n in 5..=7 {
            raised.extend(e.heartbeat(hb(n, "10.0.0.1")).await.expect("beat").raised);
        }
        assert_eq!(raised.len(), 1, "{raised:?}");
        assert_eq!(raised[0].alert.rule, "relocation");
        assert_eq!(raised[0].alert.evidence["reference_from"]["seq"], 9);
    }

    #[tokio::test]
    async fn many_heartbeats_at_once_share_commits_and_all_answer() {
        let dir = tempfile::tempdir().expect("tmp");
        let e = start(&dir.path().join("fleet.redb"));
        let mut set = tokio::task::JoinSet::new();
        for t in 0..200u64 {
            let e = e.clone();
            set.spawn(async move {
                let mut b = hb(1, "10.0.0.1");
                b.certificate_serial = format!("{t:X}");
                e.heartbeat(b).await.map(|o| o.verdict)
            });
        }
        while let Some(r) = set.join_next().await {
            assert_eq!(r.expect("task").expect("answer"), Verdict::Accepted);
        }
        assert_eq!(e.store.states().expect("states").len(), 200);
        // Silence is counted per terminal from the last heartbeat (or the start).
        let policy = FleetPolicy::shipped().expect("policy");
        let later = now_ms() + policy.interval.as_millis() as u64 * (u64::from(policy.missed_intervals) + 1);
        let raised = e.sweep(later).await.expect("sweep");
        assert_eq!(raised.len(), 200);
        assert!(raised.iter().all(|r| r.new && r.alert.rule == "silent"));
        assert!(e.sweep(later + 1).await.expect("sweep").is_empty(), "once");
    }

    #[tokio::test]
    async fn intervals_the_service_failed_in_are_not_silence() {
        let dir = tempfile::tempdir().expect("tmp");
        let e = start(&dir.path().join("fleet.redb"));
        for t in 0..3u64 {
            let mut b = hb(1, "10.0.0.1");
            b.certificate_serial = format!("{t:X}");
            e.heartbeat(b).await.expect("beat");
        }
        let policy = FleetPolicy::shipped().expect("policy");
        let limit = policy.interval.as_millis() as u64 * u64::from(policy.missed_intervals);
        // The service could not answer someone a while later (overload, the CA away): every
        // terminal's silence counts from then, so nobody is silent where it would have been.
        let failed_at = now_ms() + limit / 2;
        e.service_failed(failed_at);
        e.service_failed(failed_at - 1_000);
        assert!(e.sweep(now_ms() + limit + 5_000).await.expect("sweep").is_empty());
        assert!(e.sweep(failed_at + limit).await.expect("sweep").is_empty());
        // Heard from nobody for the whole limit after the failure: silent, all of them.
        let raised = e.sweep(failed_at + limit + 1).await.expect("sweep");
        assert_eq!(raised.len(), 3);
        assert!(raised.iter().all(|r| r.alert.rule == "silent"));
    }
}
