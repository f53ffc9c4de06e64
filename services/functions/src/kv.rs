//! KV namespaces: the `env.NAME` key-value stores of functions, kept in the
//! node's own database (redb, in the service's data directory).
//!
//! Consistency, said plainly: a namespace lives on each node that runs its
//! function. A write is durable on the node that took it when `put()`
//! returns, and that node's later reads see it (read-your-writes on one
//! node). The service then sends the write ([`Write`]) to the function's
//! other nodes, signed by this node; each applies it if it is newer than
//! what it holds: last writer wins per key, by the writer's clock (ties by
//! node), deletes kept as tombstones so that an older write arriving late
//! does not bring a key back. So the namespace is eventually consistent, as
//! Workers KV is (up to 60 s there): another node sees a write about a round
//! trip later. A write a node did not take (it was down, or unreachable) is
//! kept in an outbox in the same database, and sent again until that node
//! takes it, is no longer one of the function's nodes, or a day has passed
//! (hinted handoff, as Dynamo does: it survives the sender's restarts too).
//! A node down for longer than that, or a sender lost with its disk, leaves
//! a gap no read repairs (there is no anti-entropy). Limits as Workers': keys up to 512
//! bytes, values up to 25 MiB, metadata up to 1 KiB; expired keys read as
//! absent.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// Writes a peer has not taken yet: sequence → (peer address, write's JSON,
/// when it was first sent, ms).
const OUTBOX: TableDefinition<u64, (&str, &[u8], u64)> = TableDefinition::new("kv_outbox");

/// Most writes kept for peers; past it the oldest are dropped (a peer that
/// long gone would need a full copy anyway).
pub const MAX_OUTBOX: u64 = 100_000;
/// How long a write waits for its peer before it is dropped.
pub const OUTBOX_MAX_AGE_MS: u64 = 24 * 3600 * 1000;

/// A write waiting in the outbox.
pub struct Pending {
    pub seq: u64,
    pub to: String,
    pub body: Vec<u8>,
    pub since_ms: u64,
}

pub const MAX_KEY_BYTES: usize = 512;
pub const MAX_VALUE_BYTES: usize = 25 << 20;
pub const MAX_METADATA_BYTES: usize = 1024;

pub struct Kv {
    db: Database,
    /// This node's tie breaker for writes made at the same millisecond.
    tie: u64,
}

/// One write to a namespace, as it is applied here and sent to the
/// function's other nodes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Write {
    pub function: String,
    pub ns: String,
    pub key: String,
    /// None: a delete.
    #[serde(default, with = "b64")]
    pub value: Option<Vec<u8>>,
    #[serde(default)]
    pub metadata: Option<String>,
    /// Expiry, ms since the epoch; 0: none.
    #[serde(default)]
    pub expires_ms: u64,
    /// When it was written (the writer's clock, ms) and the writer's tie
    /// breaker: the larger pair wins.
    pub ts_ms: u64,
    pub tie: u64,
}

mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&base64::engine::general_purpose::STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| {
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

const HAS_META: u32 = 1 << 31;
const TOMBSTONE: u32 = 1 << 30;
const LEN_MASK: u32 = !(HAS_META | TOMBSTONE);

/// The stored form: expiry (ms since the epoch, 0: none), write time, tie
/// breaker, flags and metadata length, metadata, value.
fn encode(w: &Write) -> Vec<u8> {
    let meta = w.metadata.as_deref().unwrap_or("").as_bytes();
    let value = w.value.as_deref().unwrap_or(&[]);
    let mut out = Vec::with_capacity(28 + meta.len() + value.len());
    out.extend_from_slice(&w.expires_ms.to_le_bytes());
    out.extend_from_slice(&w.ts_ms.to_le_bytes());
    out.extend_from_slice(&w.tie.to_le_bytes());
    let mut word = meta.len() as u32;
    if w.metadata.is_some() {
        word |= HAS_META;
    }
    if w.value.is_none() {
        word |= TOMBSTONE;
    }
    out.extend_from_slice(&word.to_le_bytes());
    out.extend_from_slice(meta);
    out.extend_from_slice(value);
    out
}

struct Entry<'a> {
    expires_ms: u64,
    ts_ms: u64,
    tie: u64,
    metadata: Option<&'a str>,
    /// None: deleted.
    value: Option<&'a [u8]>,
}

fn decode(raw: &[u8]) -> Option<Entry<'_>> {
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(raw.get(at..at + 8)?.try_into().ok()?))
    };
    let word = u32::from_le_bytes(raw.get(24..28)?.try_into().ok()?);
    let len = (word & LEN_MASK) as usize;
    let meta = std::str::from_utf8(raw.get(28..28 + len)?).ok()?;
    Some(Entry {
        expires_ms: u64_at(0)?,
        ts_ms: u64_at(8)?,
        tie: u64_at(16)?,
        metadata: (word & HAS_META != 0).then_some(meta),
        value: (word & TOMBSTONE == 0).then_some(raw.get(28 + len..)?),
    })
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The stored key of `key` in namespace `ns` of `function`.
fn full_key(function: &str, ns: &str, key: &str) -> String {
    format!("{function}\u{0}{ns}\u{0}{key}")
}

impl Kv {
    /// `tie`: this node's tie breaker (derived from its id).
    pub fn open(path: &Path, tie: u64) -> Result<Kv, String> {
        let db = Database::create(path)
            .map_err(|e| format!("cannot open the KV database {}: {e}", path.display()))?;
        Ok(Kv { db, tie })
    }

    pub fn get(&self, function: &str, ns: &str, key: &str) -> Option<(Vec<u8>, Option<String>)> {
        let txn = self.db.begin_read().ok()?;
        let table = txn.open_table(TABLE).ok()?;
        let raw = table.get(full_key(function, ns, key).as_str()).ok()??;
        let e = decode(raw.value())?;
        if e.expires_ms != 0 && e.expires_ms <= now_ms() {
            return None;
        }
        Some((e.value?.to_vec(), e.metadata.map(str::to_string)))
    }

    /// Writes `key`; the write, to send to the function's other nodes.
    pub fn put(
        &self,
        function: &str,
        ns: &str,
        key: &str,
        value: &[u8],
        metadata: Option<&str>,
        expires_ms: u64,
    ) -> Result<Write, String> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(format!("KV put: a key of 1 to {MAX_KEY_BYTES} bytes"));
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(format!(
                "KV put: a value of at most {MAX_VALUE_BYTES} bytes"
            ));
        }
        if metadata.is_some_and(|m| m.len() > MAX_METADATA_BYTES) {
            return Err(format!(
                "KV put: metadata of at most {MAX_METADATA_BYTES} bytes"
            ));
        }
        if expires_ms != 0 && expires_ms < now_ms() + 60_000 {
            return Err("KV put: an expiration at least 60 seconds ahead".into());
        }
        let w = Write {
            function: function.into(),
            ns: ns.into(),
            key: key.into(),
            value: Some(value.to_vec()),
            metadata: metadata.map(str::to_string),
            expires_ms,
            ts_ms: now_ms(),
            tie: self.tie,
        };
        self.apply(&w).map(|_| w)
    }

    /// Deletes `key` (a tombstone); the write, to send on.
    pub fn delete(&self, function: &str, ns: &str, key: &str) -> Result<Write, String> {
        let w = Write {
            function: function.into(),
            ns: ns.into(),
            key: key.into(),
            value: None,
            metadata: None,
            expires_ms: 0,
            ts_ms: now_ms(),
            tie: self.tie,
        };
        self.apply(&w).map(|_| w)
    }

    /// Applies a write if it is newer than what is held (last writer wins);
    /// whether it was. Err: the database failed, or the write is malformed.
    pub fn apply(&self, w: &Write) -> Result<bool, String> {
        if w.key.is_empty()
            || w.key.len() > MAX_KEY_BYTES
            || w.value.as_ref().is_some_and(|v| v.len() > MAX_VALUE_BYTES)
            || w.metadata
                .as_ref()
                .is_some_and(|m| m.len() > MAX_METADATA_BYTES)
        {
            return Err("a KV write out of bounds".into());
        }
        let k = full_key(&w.function, &w.ns, &w.key);
        let v = encode(w);
        let write = || -> Result<bool, redb::Error> {
            let txn = self.db.begin_write()?;
            let newer = {
                let mut table = txn.open_table(TABLE)?;
                let held = table
                    .get(k.as_str())?
                    .and_then(|raw| decode(raw.value()).map(|e| (e.ts_ms, e.tie)));
                let newer = held.is_none_or(|h| (w.ts_ms, w.tie) > h);
                if newer {
                    table.insert(k.as_str(), v.as_slice())?;
                }
                newer
            };
            txn.commit()?;
            Ok(newer)
        };
        write().map_err(|e| format!("KV write failed: {e}"))
    }

    /// Keeps a write (`body`, its JSON) for `to`, to send again later.
    /// Past [`MAX_OUTBOX`] the oldest is dropped; whether one was.
    pub fn outbox_push(&self, to: &str, body: &[u8]) -> Result<bool, String> {
        let write = || -> Result<bool, redb::Error> {
            let txn = self.db.begin_write()?;
            let dropped = {
                let mut table = txn.open_table(OUTBOX)?;
                let next = table.last()?.map_or(0, |(k, _)| k.value() + 1);
                table.insert(next, (to, body, now_ms()))?;
                let full = table.len()? > MAX_OUTBOX;
                if full {
                    table.pop_first()?;
                }
                full
            };
            txn.commit()?;
            Ok(dropped)
        };
        write().map_err(|e| format!("KV outbox: {e}"))
    }

    /// The oldest `limit` writes waiting for a peer.
    pub fn outbox(&self, limit: usize) -> Vec<Pending> {
        let read = || -> Result<Vec<Pending>, redb::Error> {
            let txn = self.db.begin_read()?;
            let table = match txn.open_table(OUTBOX) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut out = Vec::new();
            for row in table.iter()?.take(limit) {
                let (k, v) = row?;
                let (to, body, since_ms) = v.value();
                out.push(Pending {
                    seq: k.value(),
                    to: to.to_string(),
                    body: body.to_vec(),
                    since_ms,
                });
            }
            Ok(out)
        };
        read().unwrap_or_else(|e| {
            tracing::warn!("KV outbox unreadable: {e}");
            Vec::new()
        })
    }

    /// Removes writes from the outbox (delivered, or given up).
    pub fn outbox_remove(&self, seqs: &[u64]) -> Result<(), String> {
        if seqs.is_empty() {
            return Ok(());
        }
        let write = || -> Result<(), redb::Error> {
            let txn = self.db.begin_write()?;
            {
                let mut table = txn.open_table(OUTBOX)?;
                for s in seqs {
                    table.remove(s)?;
                }
            }
            txn.commit()?;
            Ok(())
        };
        write().map_err(|e| format!("KV outbox: {e}"))
    }

    /// Writes waiting for a peer.
    pub fn outbox_len(&self) -> u64 {
        let Ok(txn) = self.db.begin_read() else {
            return 0;
        };
        txn.open_table(OUTBOX)
            .ok()
            .and_then(|t| t.len().ok())
            .unwrap_or(0)
    }

    /// Keys in order from `cursor` (the last key of the previous page),
    /// as Workers' `list()` answers.
    pub fn list(
        &self,
        function: &str,
        ns: &str,
        prefix: &str,
        limit: usize,
        cursor: &str,
    ) -> String {
        let base = full_key(function, ns, "");
        let start = if cursor.is_empty() {
            format!("{base}{prefix}")
        } else {
            format!("{base}{cursor}\u{0}")
        };
        let mut keys = Vec::new();
        let mut more = false;
        let now = now_ms();
        let mut scan = || -> Result<(), redb::Error> {
            let txn = self.db.begin_read()?;
            let table = match txn.open_table(TABLE) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            for item in table.range(start.as_str()..)? {
                let (k, v) = item?;
                let Some(name) = k.value().strip_prefix(base.as_str()) else {
                    break;
                };
                if !name.starts_with(prefix) {
                    break;
                }
                let Some(e) = decode(v.value()) else { continue };
                if e.value.is_none() || e.expires_ms != 0 && e.expires_ms <= now {
                    continue;
                }
                if keys.len() == limit {
                    more = true;
                    break;
                }
                let mut key = serde_json::json!({ "name": name });
                if e.expires_ms != 0 {
                    key["expiration"] = (e.expires_ms / 1000).into();
                }
                if let Some(m) = e
                    .metadata
                    .and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok())
                {
                    key["metadata"] = m;
                }
                keys.push(key);
            }
            Ok(())
        };
        if let Err(e) = scan() {
            tracing::warn!(function, "KV list failed: {e}");
        }
        let mut out =
            serde_json::json!({ "keys": keys, "list_complete": !more, "cacheStatus": null });
        if more {
            if let Some(last) = keys.last().and_then(|k| k["name"].as_str()) {
                out["cursor"] = last.into();
            }
        }
        out.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outbox_keeps_writes_in_order_until_removed_and_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("kv.redb");
        {
            let kv = Kv::open(&path, 1).expect("open");
            assert!(kv.outbox(10).is_empty());
            for i in 0..3u8 {
                assert!(!kv.outbox_push("127.0.0.2:1", &[i]).expect("push"));
            }
            assert_eq!(kv.outbox_len(), 3);
            let first = kv.outbox(2);
            assert_eq!(first.iter().map(|p| p.body[0]).collect::<Vec<_>>(), [0, 1]);
            kv.outbox_remove(&[first[0].seq]).expect("remove");
        }
        let kv = Kv::open(&path, 1).expect("reopen");
        let rest = kv.outbox(10);
        assert_eq!(rest.iter().map(|p| p.body[0]).collect::<Vec<_>>(), [1, 2]);
        assert!(rest.iter().all(|p| p.to == "127.0.0.2:1" && p.since_ms > 0));
        // New writes go after the old ones, never onto a removed sequence.
        kv.outbox_push("127.0.0.3:1", &[9]).expect("push");
        assert!(kv
            .outbox(10)
            .last()
            .is_some_and(|p| p.body == [9] && p.seq > rest[1].seq));
    }

    #[test]
    fn put_get_list_delete_and_expiry() {
        let dir = tempfile::tempdir().expect("tmp");
        let kv = Kv::open(&dir.path().join("kv.redb"), 1).expect("open");
        kv.put("f", "A", "user:1", b"one", Some("{\"v\":1}"), 0)
            .expect("put");
        kv.put("f", "A", "user:2", b"two", None, 0).expect("put");
        kv.put("f", "B", "user:3", b"other ns", None, 0)
            .expect("put");
        kv.put("g", "A", "user:4", b"other fn", None, 0)
            .expect("put");
        assert_eq!(
            kv.get("f", "A", "user:1"),
            Some((b"one".to_vec(), Some("{\"v\":1}".into())))
        );
        assert_eq!(kv.get("f", "A", "user:3"), None);
        let page: serde_json::Value =
            serde_json::from_str(&kv.list("f", "A", "user:", 1, "")).expect("json");
        assert_eq!(page["keys"][0]["name"], "user:1");
        assert_eq!(page["keys"][0]["metadata"]["v"], 1);
        assert_eq!(page["list_complete"], false);
        let cursor = page["cursor"].as_str().expect("cursor").to_string();
        let page: serde_json::Value =
            serde_json::from_str(&kv.list("f", "A", "user:", 10, &cursor)).expect("json");
        assert_eq!(page["keys"].as_array().map(Vec::len), Some(1));
        assert_eq!(page["keys"][0]["name"], "user:2");
        assert_eq!(page["list_complete"], true);
        kv.delete("f", "A", "user:1").expect("delete");
        assert_eq!(kv.get("f", "A", "user:1"), None);
        assert!(kv.put("f", "A", "", b"x", None, 0).is_err());
        assert!(kv.put("f", "A", "soon", b"x", None, now_ms() + 10).is_err());
        assert!(kv.put("f", "A", &"k".repeat(513), b"x", None, 0).is_err());
    }

    #[test]
    fn the_last_writer_wins_and_deletes_stay_deleted() {
        let dir = tempfile::tempdir().expect("tmp");
        let kv = Kv::open(&dir.path().join("kv.redb"), 1).expect("open");
        let mut w = kv.put("f", "A", "k", b"mine", None, 0).expect("put");
        // An older write from elsewhere arrives late: refused.
        let mut old = w.clone();
        old.value = Some(b"older".to_vec());
        old.ts_ms -= 1;
        assert_eq!(kv.apply(&old), Ok(false));
        assert_eq!(kv.get("f", "A", "k").map(|v| v.0), Some(b"mine".to_vec()));
        // The same millisecond: the larger tie breaker wins.
        w.value = Some(b"theirs".to_vec());
        w.tie = 2;
        assert_eq!(kv.apply(&w), Ok(true));
        assert_eq!(kv.get("f", "A", "k").map(|v| v.0), Some(b"theirs".to_vec()));
        // Deleted; a put older than the delete does not bring it back.
        let d = kv.delete("f", "A", "k").expect("delete");
        let mut late = w.clone();
        late.ts_ms = d.ts_ms - 1;
        late.tie = 9;
        assert_eq!(kv.apply(&late), Ok(false));
        assert_eq!(kv.get("f", "A", "k"), None);
        let list: serde_json::Value =
            serde_json::from_str(&kv.list("f", "A", "", 10, "")).expect("json");
        assert_eq!(list["keys"].as_array().map(Vec::len), Some(0));
        // The wire form round-trips.
        let json = serde_json::to_string(&w).expect("json");
        assert_eq!(serde_json::from_str::<Write>(&json).expect("parse"), w);
    }
}
