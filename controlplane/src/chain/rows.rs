//! The ledger state in redb, one row per map entry: each ordered batch writes
//! only the entries it changed (found by comparing the state before and after
//! the batch in memory), so the cost on disk follows the change, not the size
//! of the ledger. The few scalars (epoch, clocks, committee, treasury) are one
//! record.

use std::collections::{BTreeMap, BTreeSet};

use redb::{ReadableTable, Table, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ledger::{Key, State};

pub(super) const ROWS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("rows");

const BALANCES: u8 = 1;
const NONCES: u8 = 2;
const STAKES: u8 = 3;
const REPUTATION: u8 = 4;
const SPENT: u8 = 5;
const EARNED: u8 = 6;
const REPORTS: u8 = 7;
const CLOSED: u8 = 8;
const SERVICES: u8 = 9;
const REFUSALS: u8 = 10;
const DEPLOYMENTS: u8 = 11;
const USAGE: u8 = 12;

#[derive(Serialize, Deserialize)]
struct Scalars {
    epoch: u64,
    epoch_start_ms: u64,
    time_ms: u64,
    height: u64,
    committee: Vec<Key>,
    treasury: u64,
}

fn row<K: Serialize>(tag: u8, key: &K) -> Result<Vec<u8>, String> {
    let mut r = vec![tag];
    r.extend(postcard::to_stdvec(key).map_err(|e| e.to_string())?);
    Ok(r)
}

fn diff<K: Ord + Serialize, V: PartialEq + Serialize>(
    t: &mut Table<&[u8], &[u8]>,
    tag: u8,
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
) -> Result<(), String> {
    for (k, v) in new {
        if old.get(k) != Some(v) {
            let value = postcard::to_stdvec(v).map_err(|e| e.to_string())?;
            t.insert(row(tag, k)?.as_slice(), value.as_slice())
                .map_err(|e| e.to_string())?;
        }
    }
    for k in old.keys().filter(|k| !new.contains_key(k)) {
        t.remove(row(tag, k)?.as_slice())
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn diff_set<K: Ord + Serialize>(
    t: &mut Table<&[u8], &[u8]>,
    tag: u8,
    old: &BTreeSet<K>,
    new: &BTreeSet<K>,
) -> Result<(), String> {
    for k in new.difference(old) {
        t.insert(row(tag, k)?.as_slice(), &[][..])
            .map_err(|e| e.to_string())?;
    }
    for k in old.difference(new) {
        t.remove(row(tag, k)?.as_slice())
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Writes what changed from `old` to `new` (`old` must be what the rows hold).
pub(super) fn write(
    meta: &mut Table<&str, &[u8]>,
    t: &mut Table<&[u8], &[u8]>,
    old: &State,
    new: &State,
) -> Result<(), String> {
    let scalars = Scalars {
        epoch: new.epoch,
        epoch_start_ms: new.epoch_start_ms,
        time_ms: new.time_ms,
        height: new.height,
        committee: new.committee.clone(),
        treasury: new.treasury,
    };
    let s = postcard::to_stdvec(&scalars).map_err(|e| e.to_string())?;
    meta.insert("scalars", s.as_slice())
        .map_err(|e| e.to_string())?;
    diff(t, BALANCES, &old.balances, &new.balances)?;
    diff(t, NONCES, &old.nonces, &new.nonces)?;
    diff(t, STAKES, &old.stakes, &new.stakes)?;
    diff(t, REPUTATION, &old.reputation, &new.reputation)?;
    diff_set(t, SPENT, &old.spent, &new.spent)?;
    diff(t, EARNED, &old.earned, &new.earned)?;
    diff(t, REPORTS, &old.reports, &new.reports)?;
    diff(t, CLOSED, &old.closed, &new.closed)?;
    diff(t, SERVICES, &old.services, &new.services)?;
    diff(t, DEPLOYMENTS, &old.deployments, &new.deployments)?;
    diff(t, USAGE, &old.usage, &new.usage)?;
    diff(t, REFUSALS, &old.refusals, &new.refusals)?;
    Ok(())
}

fn put<K: DeserializeOwned + Ord, V: DeserializeOwned>(
    map: &mut BTreeMap<K, V>,
    key: &[u8],
    value: &[u8],
) -> Result<(), String> {
    let k = postcard::from_bytes(key).map_err(|e| e.to_string())?;
    let v = postcard::from_bytes(value).map_err(|e| e.to_string())?;
    map.insert(k, v);
    Ok(())
}

/// The state the rows hold; `None` when there are none yet (a new replica).
pub(super) fn load(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
) -> Result<Option<State>, String> {
    let Some(s) = meta.get("scalars").map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let sc: Scalars = postcard::from_bytes(s.value()).map_err(|e| e.to_string())?;
    let mut st = State {
        epoch: sc.epoch,
        epoch_start_ms: sc.epoch_start_ms,
        time_ms: sc.time_ms,
        height: sc.height,
        committee: sc.committee,
        treasury: sc.treasury,
        ..State::default()
    };
    for entry in t.iter().map_err(|e| e.to_string())? {
        let (k, v) = entry.map_err(|e| e.to_string())?;
        let (k, v) = (k.value(), v.value());
        let Some((&tag, key)) = k.split_first() else {
            return Err("empty row key".into());
        };
        match tag {
            BALANCES => put(&mut st.balances, key, v)?,
            NONCES => put(&mut st.nonces, key, v)?,
            STAKES => put(&mut st.stakes, key, v)?,
            REPUTATION => put(&mut st.reputation, key, v)?,
            SPENT => {
                let k = postcard::from_bytes(key).map_err(|e| e.to_string())?;
                st.spent.insert(k);
            }
            EARNED => put(&mut st.earned, key, v)?,
            REPORTS => put(&mut st.reports, key, v)?,
            CLOSED => put(&mut st.closed, key, v)?,
            SERVICES => put(&mut st.services, key, v)?,
            DEPLOYMENTS => put(&mut st.deployments, key, v)?,
            USAGE => put(&mut st.usage, key, v)?,
            REFUSALS => put(&mut st.refusals, key, v)?,
            _ => return Err(format!("unknown row kind {tag}")),
        }
    }
    Ok(Some(st))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{EpochClose, ReceiptReject, Service};
    use redb::{ReadableDatabase, ReadableTableMetadata};

    const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

    fn save(db: &redb::Database, old: &State, new: &State) {
        let w = db.begin_write().expect("write");
        {
            let mut meta = w.open_table(META).expect("meta");
            let mut rows = w.open_table(ROWS).expect("rows");
            write(&mut meta, &mut rows, old, new).expect("diff");
        }
        w.commit().expect("commit");
    }

    fn read(db: &redb::Database) -> State {
        let r = db.begin_read().expect("read");
        let meta = r.open_table(META).expect("meta");
        let rows = r.open_table(ROWS).expect("rows");
        load(&meta, &rows).expect("load").expect("some")
    }

    #[test]
    fn only_changes_are_written_and_the_state_reads_back_whole() {
        let dir = tempfile::tempdir().expect("tmp");
        let db = redb::Database::create(dir.path().join("t.redb")).expect("db");
        let mut a = State::genesis(vec![[1; 32], [2; 32]]);
        a.balances.insert([3; 32], 10);
        a.balances.insert([4; 32], 20);
        a.nonces.insert([3; 32], 1);
        a.spent.insert(([3; 32], [1; 32], 7));
        a.reports.entry([1; 32]).or_default().insert([2; 32], 900);
        a.services.insert(
            1,
            Service {
                name: "blobs".into(),
                owner: [1; 32],
                price_per_byte: 2,
            },
        );
        save(&db, &State::default(), &a);
        assert_eq!(read(&db), a);
        // A batch: one balance changes, one goes, a spent receipt goes, an
        // epoch closes.
        let mut b = a.clone();
        b.balances.insert([3; 32], 5);
        b.balances.remove(&[4; 32]);
        b.spent.clear();
        b.epoch = 1;
        b.closed.insert(0, EpochClose::default());
        b.refusals
            .entry([1; 32])
            .or_default()
            .insert(ReceiptReject::Stale, 2);
        save(&db, &a, &b);
        assert_eq!(read(&db), b);
        let rows = db
            .begin_read()
            .expect("read")
            .open_table(ROWS)
            .expect("rows")
            .len()
            .expect("len");
        // balances 1, nonces 1, reports 1, services 1, closed 1, refusals 1.
        assert_eq!(rows, 6);
    }
}
