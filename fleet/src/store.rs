//! The fleet service's own durable store (redb): each terminal certificate's state (counter,
//! addresses, reference location), what the CA said of each certificate, and the alerts. One
//! write transaction commits a whole batch of heartbeats (group commit); an answer goes out only
//! after its batch is durable.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::rules::TerminalState;

const STATES: TableDefinition<&str, &[u8]> = TableDefinition::new("states");
const CERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("certs");
const ALERTS: TableDefinition<u64, &[u8]> = TableDefinition::new("alerts");
const OPEN: TableDefinition<&str, u64> = TableDefinition::new("open_alerts");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Each terminal's newest activation from the CA's log (terminal serial → JSON anchor).
const ANCHORS: TableDefinition<&str, &[u8]> = TableDefinition::new("anchors");
/// The last activation-log number read (META): a restart reads on from there.
const ACTIVATION_CURSOR: &str = "activation_cursor";
/// Alerts about each terminal ((terminal serial, alert id)), so a terminal's alerts are one
/// range read however many alerts the fleet has.
const ALERTS_BY_TERMINAL: TableDefinition<(&str, u64), ()> = TableDefinition::new("alerts_by_terminal");
/// Set (META) once `ALERTS_BY_TERMINAL` holds every alert: a store made before it is indexed once.
const ALERTS_BY_TERMINAL_BUILT: &str = "alerts_by_terminal_built";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb.
    #[error("store: {0}")]
    Db(String),
    /// A record does not decode.
    #[error("store record {0} is damaged: {1}")]
    Damaged(String, String),
    /// No such alert.
    #[error("no alert {0}")]
    NoAlert(u64),
}

fn db<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

/// What the CA said of a certificate, remembered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    /// The terminal it certifies (empty: not a terminal certificate).
    pub terminal_serial: String,
    /// `good`, `revoked` or `unknown`.
    pub status: String,
    /// Revocation reason, when revoked.
    pub reason: String,
    /// When the CA was asked (unix ms).
    pub checked_ms: u64,
}

/// An alert as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertRecord {
    /// Identifier (increasing).
    pub id: u64,
    /// Rule name.
    pub rule: String,
    /// Deduplication key.
    pub key: String,
    /// Terminal serial (claimed, for a counterfeit).
    pub terminal_serial: String,
    /// Certificate serial, when known.
    pub certificate_serial: String,
    /// First occurrence (unix ms).
    pub first_ms: u64,
    /// Latest occurrence.
    pub last_ms: u64,
    /// Occurrences folded into this alert.
    pub occurrences: u64,
    /// Source address of the first occurrence.
    pub source_address: String,
    /// What the rule saw first.
    pub evidence: serde_json::Value,
    /// What it saw most recently (after the first).
    pub latest_evidence: Option<serde_json::Value>,
    /// The rule's action and its outcome (`alert`, `hold: done`, `revoke: failed: …`).
    pub action: String,
    /// Acknowledged by an operator.
    pub acknowledged: bool,
    /// Who.
    pub acknowledged_by: String,
    /// When.
    pub acknowledged_ms: u64,
    /// The operator's note.
    pub note: String,
}

/// The database.
pub struct Store {
    db: Database,
}

fn decode<T: for<'a> Deserialize<'a>>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Damaged(what.to_owned(), e.to_string()))
}

/// The first `limit` of `alerts` that are open (if `open_only`) and of `rule` (if given).
fn matching(
    alerts: impl Iterator<Item = Result<AlertRecord, StoreError>>,
    open_only: bool,
    rule: Option<&str>,
    limit: usize,
) -> Result<Vec<AlertRecord>, StoreError> {
    let mut out = Vec::new();
    for a in alerts {
        let a = a?;
        if (open_only && a.acknowledged) || rule.is_some_and(|r| r != a.rule) {
            continue;
        }
        out.push(a);
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Db(e.to_string()))
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let database = Database::create(path).map_err(db)?;
        let tx = database.begin_write().map_err(db)?;
        {
            tx.open_table(STATES).map_err(db)?;
            tx.open_table(CERTS).map_err(db)?;
            tx.open_table(ALERTS).map_err(db)?;
            tx.open_table(OPEN).map_err(db)?;
            tx.open_table(META).map_err(db)?;
            tx.open_table(ANCHORS).map_err(db)?;
            tx.open_table(ALERTS_BY_TERMINAL).map_err(db)?;
            let mut meta = tx.open_table(META).map_err(db)?;
            if meta.get(ALERTS_BY_TERMINAL_BUILT).map_err(db)?.is_none() {
                let alerts = tx.open_table(ALERTS).map_err(db)?;
                let mut index = tx.open_table(ALERTS_BY_TERMINAL).map_err(db)?;
                for row in alerts.iter().map_err(db)? {
                    let (k, v) = row.map_err(db)?;
                    let a: AlertRecord = decode(&k.value().to_string(), v.value())?;
                    if !a.terminal_serial.is_empty() {
                        index.insert((a.terminal_serial.as_str(), a.id), ()).map_err(db)?;
                    }
                }
                meta.insert(ALERTS_BY_TERMINAL_BUILT, 1).map_err(db)?;
            }
        }
        tx.commit().map_err(db)?;
        Ok(Self { db: database })
    }

    /// Every terminal state (at start).
    pub fn states(&self) -> Result<Vec<TerminalState>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(STATES).map_err(db)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db)? {
            let (k, v) = row.map_err(db)?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Every terminal's anchor (at start).
    pub fn anchors(&self) -> Result<Vec<crate::rules::Anchor>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(ANCHORS).map_err(db)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db)? {
            let (k, v) = row.map_err(db)?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// The last activation-log number read from the CA (0: none yet).
    pub fn activation_cursor(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(META).map_err(db)?;
        Ok(t.get(ACTIVATION_CURSOR).map_err(db)?.map_or(0, |v| v.value()))
    }

    /// What the CA said of certificate `serial`, if asked before.
    pub fn cert(&self, serial: &str) -> Result<Option<CertInfo>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(CERTS).map_err(db)?;
        t.get(serial).map_err(db)?.map(|v| decode(serial, v.value())).transpose()
    }

    /// Alerts, newest first: at most `limit`, only open ones or one rule's if asked.
    pub fn alerts(&self, open_only: bool, rule: Option<&str>, limit: usize) -> Result<Vec<AlertRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(ALERTS).map_err(db)?;
        let newest_first = t.iter().map_err(db)?.rev().map(|row| {
            let (k, v) = row.map_err(db)?;
            decode(&k.value().to_string(), v.value())
        });
        matching(newest_first, open_only, rule, limit)
    }

    /// Alerts about terminal `serial`, newest first: at most `limit`, only open ones or one
    /// rule's if asked.
    pub fn alerts_of_terminal(
        &self,
        serial: &str,
        open_only: bool,
        rule: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AlertRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let index = tx.open_table(ALERTS_BY_TERMINAL).map_err(db)?;
        let alerts = tx.open_table(ALERTS).map_err(db)?;
        let newest_first = index.range((serial, 0)..=(serial, u64::MAX)).map_err(db)?.rev().filter_map(|row| {
            let id = match row {
                Ok((k, _)) => k.value().1,
                Err(e) => return Some(Err(db(e))),
            };
            match alerts.get(id) {
                Ok(Some(v)) => Some(decode(&id.to_string(), v.value())),
                Ok(None) => None,
                Err(e) => Some(Err(db(e))),
            }
        });
        matching(newest_first, open_only, rule, limit)
    }

    /// One alert.
    pub fn alert(&self, id: u64) -> Result<AlertRecord, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(ALERTS).map_err(db)?;
        let v = t.get(id).map_err(db)?.ok_or(StoreError::NoAlert(id))?;
        decode(&id.to_string(), v.value())
    }

    /// Alerts not yet acknowledged.
    pub fn open_alerts(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        tx.open_table(OPEN).map_err(db)?.len().map_err(db)
    }

    /// Starts a write batch.
    pub fn batch(&self) -> Result<Batch, StoreError> {
        Ok(Batch { tx: self.db.begin_write().map_err(db)? })
    }
}

/// One write transaction.
pub struct Batch {
    tx: WriteTransaction,
}

impl Batch {
    /// Stores a terminal's state.
    pub fn put_state(&mut self, s: &TerminalState) -> Result<(), StoreError> {
        let mut t = self.tx.open_table(STATES).map_err(db)?;
        t.insert(s.certificate_serial.as_str(), encode(s)?.as_slice()).map_err(db)?;
        Ok(())
    }

    /// Stores a terminal's anchor (its newest activation).
    pub fn put_anchor(&mut self, a: &crate::rules::Anchor) -> Result<(), StoreError> {
        let mut t = self.tx.open_table(ANCHORS).map_err(db)?;
        t.insert(a.terminal_serial.as_str(), encode(a)?.as_slice()).map_err(db)?;
        Ok(())
    }

    /// Records the last activation-log number read.
    pub fn set_activation_cursor(&mut self, seq: u64) -> Result<(), StoreError> {
        self.tx.open_table(META).map_err(db)?.insert(ACTIVATION_CURSOR, seq).map_err(db)?;
        Ok(())
    }

    /// Stores what the CA said of a certificate.
    pub fn put_cert(&mut self, serial: &str, info: &CertInfo) -> Result<(), StoreError> {
        let mut t = self.tx.open_table(CERTS).map_err(db)?;
        t.insert(serial, encode(info)?.as_slice()).map_err(db)?;
        Ok(())
    }

    /// Records a finding: a new alert, or one more occurrence of the open alert with its key.
    /// Returns the alert and whether it is new.
    pub fn raise(
        &mut self,
        f: &crate::rules::Finding,
        action: &str,
        now_ms: u64,
    ) -> Result<(AlertRecord, bool), StoreError> {
        let mut open = self.tx.open_table(OPEN).map_err(db)?;
        let mut alerts = self.tx.open_table(ALERTS).map_err(db)?;
        let existing = open.get(f.key.as_str()).map_err(db)?.map(|v| v.value());
        if let Some(id) = existing {
            let mut a: AlertRecord = match alerts.get(id).map_err(db)? {
                Some(v) => decode(&id.to_string(), v.value())?,
                None => return Err(StoreError::NoAlert(id)),
            };
            a.occurrences += 1;
            a.last_ms = now_ms;
            a.latest_evidence = Some(f.evidence.clone());
            alerts.insert(id, encode(&a)?.as_slice()).map_err(db)?;
            return Ok((a, false));
        }
        let mut meta = self.tx.open_table(META).map_err(db)?;
        let id = meta.get("next_alert_id").map_err(db)?.map_or(1, |v| v.value());
        meta.insert("next_alert_id", id + 1).map_err(db)?;
        let a = AlertRecord {
            id,
            rule: f.rule.name().into(),
            key: f.key.clone(),
            terminal_serial: f.terminal_serial.clone(),
            certificate_serial: f.certificate_serial.clone(),
            first_ms: now_ms,
            last_ms: now_ms,
            occurrences: 1,
            source_address: f.address.clone(),
            evidence: f.evidence.clone(),
            latest_evidence: None,
            action: action.into(),
            acknowledged: false,
            acknowledged_by: String::new(),
            acknowledged_ms: 0,
            note: String::new(),
        };
        alerts.insert(id, encode(&a)?.as_slice()).map_err(db)?;
        open.insert(f.key.as_str(), id).map_err(db)?;
        if !a.terminal_serial.is_empty() {
            let mut index = self.tx.open_table(ALERTS_BY_TERMINAL).map_err(db)?;
            index.insert((a.terminal_serial.as_str(), id), ()).map_err(db)?;
        }
        Ok((a, true))
    }

    /// Records what became of an alert's action.
    pub fn set_action(&mut self, id: u64, action: &str) -> Result<AlertRecord, StoreError> {
        self.update(id, |a| a.action = action.to_owned())
    }

    /// Acknowledges an alert: its key is free, so the next occurrence opens a new alert.
    pub fn ack(&mut self, id: u64, by: &str, note: &str, now_ms: u64) -> Result<AlertRecord, StoreError> {
        let a = self.update(id, |a| {
            if !a.acknowledged {
                a.acknowledged = true;
                a.acknowledged_by = by.to_owned();
                a.acknowledged_ms = now_ms;
                a.note = note.to_owned();
            }
        })?;
        let mut open = self.tx.open_table(OPEN).map_err(db)?;
        if open.get(a.key.as_str()).map_err(db)?.is_some_and(|v| v.value() == id) {
            open.remove(a.key.as_str()).map_err(db)?;
        }
        Ok(a)
    }

    fn update(&mut self, id: u64, f: impl FnOnce(&mut AlertRecord)) -> Result<AlertRecord, StoreError> {
        let mut alerts = self.tx.open_table(ALERTS).map_err(db)?;
        let mut a: AlertRecord = match alerts.get(id).map_err(db)? {
            Some(v) => decode(&id.to_string(), v.value())?,
            None => return Err(StoreError::NoAlert(id)),
        };
        f(&mut a);
        alerts.insert(id, encode(&a)?.as_slice()).map_err(db)?;
        Ok(a)
    }

    /// Commits durably (fsync).
    pub fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().map_err(db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Rule;
    use crate::rules::Finding;

    fn finding(rule: Rule, key: &str) -> Finding {
        Finding {
            rule,
            key: key.into(),
            terminal_serial: "T".into(),
            certificate_serial: "0A".into(),
            address: "10.0.0.1".into(),
            evidence: serde_json::json!({"n": 1}),
        }
    }

    #[test]
    fn alerts_are_durable_deduplicated_until_acknowledged() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("fleet.redb");
        {
            let store = Store::open(&path).expect("open");
            let mut b = store.batch().expect("batch");
            let (a, new) = b.raise(&finding(Rule::Clone, "clone:0A"), "hold", 10).expect("raise");
            assert!(new);
            let (again, new) = b.raise(&finding(Rule::Clone, "clone:0A"), "hold", 20).expect("raise");
            assert!(!new);
            assert_eq!((again.id, again.occurrences, again.last_ms), (a.id, 2, 20));
            b.commit().expect("commit");
        }
        // Reopened: the alert and its dedup key survived.
        let store = Store::open(&path).expect("reopen");
        assert_eq!(store.open_alerts().expect("n"), 1);
        let mut b = store.batch().expect("batch");
        let (a, new) = b.raise(&finding(Rule::Clone, "clone:0A"), "hold", 30).expect("raise");
        assert!(!new);
        assert_eq!(a.occurrences, 3);
        let acked = b.ack(a.id, "operator-1", "checked on site", 40).expect("ack");
        assert!(acked.acknowledged && acked.acknowledged_by == "operator-1");
        let (next, new) = b.raise(&finding(Rule::Clone, "clone:0A"), "hold", 50).expect("raise");
        assert!(new, "after an acknowledgement the next occurrence is a new alert");
        assert_ne!(next.id, a.id);
        b.commit().expect("commit");
        assert_eq!(
            store.alerts(false, None, 10).expect("list").iter().map(|a| a.id).collect::<Vec<_>>(),
            [next.id, a.id]
        );
        assert_eq!(store.alerts(true, None, 10).expect("open").len(), 1);
        assert!(store.alerts(false, Some("tamper"), 10).expect("rule").is_empty());
        assert!(matches!(store.alert(999), Err(StoreError::NoAlert(999))));
        let mut b = store.batch().expect("batch");
        assert!(matches!(b.ack(999, "x", "", 1), Err(StoreError::NoAlert(999))));
    }

    #[test]
    fn a_terminals_alerts_come_from_its_index_and_an_older_store_is_indexed_on_open() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("fleet.redb");
        let of = |serial: &str, key: &str, rule: Rule| Finding { terminal_serial: serial.into(), ..finding(rule, key) };
        {
            let store = Store::open(&path).expect("open");
            let mut b = store.batch().expect("batch");
            b.raise(&of("T1", "clone:1", Rule::Clone), "hold", 1).expect("raise");
            b.raise(&of("T2", "relocation:2", Rule::Relocation), "alert", 2).expect("raise");
            b.raise(&of("T1", "tamper:1", Rule::Tamper), "revoke", 3).expect("raise");
            b.raise(&of("", "counterfeit:x", Rule::Counterfeit), "alert", 4).expect("raise");
            b.commit().expect("commit");
            let t1: Vec<String> =
                store.alerts_of_terminal("T1", false, None, 10).expect("T1").into_iter().map(|a| a.rule).collect();
            assert_eq!(t1, ["tamper", "clone"], "newest first, only T1's");
            assert_eq!(store.alerts_of_terminal("T1", false, Some("clone"), 10).expect("rule").len(), 1);
            assert_eq!(store.alerts_of_terminal("T1", false, None, 1).expect("limit").len(), 1);
            assert!(store.alerts_of_terminal("T", false, None, 10).expect("prefix").is_empty(), "exact serial");
            // A store made before the index: drop it and its marker.
            let tx = store.db.begin_write().expect("write");
            tx.delete_table(ALERTS_BY_TERMINAL).expect("drop index");
            tx.open_table(META).expect("meta").remove(ALERTS_BY_TERMINAL_BUILT).expect("marker");
            tx.commit().expect("commit");
        }
        let store = Store::open(&path).expect("reopen");
        assert_eq!(store.alerts_of_terminal("T1", false, None, 10).expect("T1").len(), 2, "indexed on open");
        assert_eq!(store.alerts_of_terminal("T2", true, None, 10).expect("T2").len(), 1);
    }

    #[test]
    fn an_uncommitted_batch_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("f.redb")).expect("open");
        {
            let mut b = store.batch().expect("batch");
            b.raise(&finding(Rule::Tamper, "tamper:0A"), "revoke", 1).expect("raise");
        }
        assert_eq!(store.open_alerts().expect("n"), 0);
        assert!(store.alerts(false, None, 10).expect("list").is_empty());
    }
}
