//! KV namespaces: the `env.NAME` key-value stores of functions, kept in the
//! node's own database (redb, in the service's data directory).
//!
//! Consistency, said plainly: a namespace lives on each node that runs its
//! function. A write is durable on the node that took it when `put()`
//! returns, and that node's later reads see it (read-your-writes on one
//! node). Writes are not yet copied to the deployment's other nodes, so two
//! nodes that run the same function each have their own copy; Workers KV
//! itself is eventually consistent (up to 60 s), and a client that needs one
//! view should reach one node. Limits as Workers': keys up to 512 bytes,
//! values up to 25 MiB, metadata up to 1 KiB; expired keys read as absent.

use std::path::Path;

use redb::{Database, ReadableDatabase, TableDefinition};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");

pub const MAX_KEY_BYTES: usize = 512;
pub const MAX_VALUE_BYTES: usize = 25 << 20;
pub const MAX_METADATA_BYTES: usize = 1024;

pub struct Kv {
    db: Database,
}

/// The stored form: expiry (ms since the epoch, 0: none), metadata length,
/// metadata, value.
fn encode(value: &[u8], metadata: Option<&str>, expires_ms: u64) -> Vec<u8> {
    let meta = metadata.unwrap_or("").as_bytes();
    let mut out = Vec::with_capacity(12 + meta.len() + value.len());
    out.extend_from_slice(&expires_ms.to_le_bytes());
    let flag = if metadata.is_some() { 1u32 << 31 } else { 0 };
    out.extend_from_slice(&(meta.len() as u32 | flag).to_le_bytes());
    out.extend_from_slice(meta);
    out.extend_from_slice(value);
    out
}

struct Entry<'a> {
    expires_ms: u64,
    metadata: Option<&'a str>,
    value: &'a [u8],
}

fn decode(raw: &[u8]) -> Option<Entry<'_>> {
    let expires_ms = u64::from_le_bytes(raw.get(..8)?.try_into().ok()?);
    let word = u32::from_le_bytes(raw.get(8..12)?.try_into().ok()?);
    let len = (word & !(1 << 31)) as usize;
    let meta = std::str::from_utf8(raw.get(12..12 + len)?).ok()?;
    Some(Entry {
        expires_ms,
        metadata: (word & (1 << 31) != 0).then_some(meta),
        value: raw.get(12 + len..)?,
    })
}

fn now_ms() -> u64 {
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
    pub fn open(path: &Path) -> Result<Kv, String> {
        let db = Database::create(path)
            .map_err(|e| format!("cannot open the KV database {}: {e}", path.display()))?;
        Ok(Kv { db })
    }

    pub fn get(&self, function: &str, ns: &str, key: &str) -> Option<(Vec<u8>, Option<String>)> {
        let txn = self.db.begin_read().ok()?;
        let table = txn.open_table(TABLE).ok()?;
        let raw = table.get(full_key(function, ns, key).as_str()).ok()??;
        let e = decode(raw.value())?;
        if e.expires_ms != 0 && e.expires_ms <= now_ms() {
            return None;
        }
        Some((e.value.to_vec(), e.metadata.map(str::to_string)))
    }

    pub fn put(
        &self,
        function: &str,
        ns: &str,
        key: &str,
        value: &[u8],
        metadata: Option<&str>,
        expires_ms: u64,
    ) -> Result<(), String> {
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
        let k = full_key(function, ns, key);
        let v = encode(value, metadata, expires_ms);
        let write = || -> Result<(), redb::Error> {
            let txn = self.db.begin_write()?;
            {
                let mut table = txn.open_table(TABLE)?;
                table.insert(k.as_str(), v.as_slice())?;
            }
            txn.commit()?;
            Ok(())
        };
        write().map_err(|e| format!("KV put failed: {e}"))
    }

    pub fn delete(&self, function: &str, ns: &str, key: &str) {
        let k = full_key(function, ns, key);
        let delete = || -> Result<(), redb::Error> {
            let txn = self.db.begin_write()?;
            {
                let mut table = txn.open_table(TABLE)?;
                table.remove(k.as_str())?;
            }
            txn.commit()?;
            Ok(())
        };
        if let Err(e) = delete() {
            tracing::warn!(function, "KV delete failed: {e}");
        }
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
                if e.expires_ms != 0 && e.expires_ms <= now {
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
    fn put_get_list_delete_and_expiry() {
        let dir = tempfile::tempdir().expect("tmp");
        let kv = Kv::open(&dir.path().join("kv.redb")).expect("open");
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
        kv.delete("f", "A", "user:1");
        assert_eq!(kv.get("f", "A", "user:1"), None);
        assert!(kv.put("f", "A", "", b"x", None, 0).is_err());
        assert!(kv.put("f", "A", "soon", b"x", None, now_ms() + 10).is_err());
        assert!(kv.put("f", "A", &"k".repeat(513), b"x", None, 0).is_err());
    }
}
