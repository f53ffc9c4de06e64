//! The block index: which blob holds the block a CID names.
//!
//! Blocks are blobs (their bytes stored once, in the node's store, under
//! their BLAKE3 hash); the index maps each block's multihash (the same for
//! its CIDv0 and CIDv1, any codec) to that hash and the block's size. It is
//! kept in redb (`blocks.redb` in the service's directory) and mirrored in
//! an immutable map (`imbl`, published through `ArcSwap`) that the core reads
//! without locking when it serves a raw block. Writers take one mutex.

use std::io;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use cid::Cid;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use service_api::{BlobStore, Hash};

use crate::{block_key, identity_block, verify_block, BlockError};

const BLOCKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blocks");

/// Where a block is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub blob: Hash,
    pub size: u32,
}

type Map =
    imbl::GenericHashMap<Box<[u8]>, Entry, crate::DigestState, imbl::shared_ptr::DefaultSharedPtr>;

pub struct Index {
    db: redb::Database,
    map: ArcSwap<Map>,
    write: Mutex<()>,
    store: Arc<dyn BlobStore>,
}

fn err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn encode(e: &Entry) -> [u8; 36] {
    let mut v = [0u8; 36];
    v[..32].copy_from_slice(&e.blob);
    v[32..].copy_from_slice(&e.size.to_le_bytes());
    v
}

fn decode(v: &[u8]) -> Option<Entry> {
    if v.len() != 36 {
        return None;
    }
    let mut blob = [0u8; 32];
    blob.copy_from_slice(&v[..32]);
    let mut size = [0u8; 4];
    size.copy_from_slice(&v[32..]);
    Some(Entry {
        blob,
        size: u32::from_le_bytes(size),
    })
}

/// Why a block was not stored.
#[derive(Debug)]
pub enum PutError {
    Refused(BlockError),
    Io(io::Error),
}

impl std::fmt::Display for PutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PutError::Refused(e) => e.fmt(f),
            PutError::Io(e) => write!(f, "the store refused it: {e}"),
        }
    }
}

impl Index {
    pub fn open(path: &std::path::Path, store: Arc<dyn BlobStore>) -> io::Result<Index> {
        let db = redb::Database::create(path).map_err(err)?;
        let mut map = Map::default();
        {
            let w = db.begin_write().map_err(err)?;
            w.open_table(BLOCKS).map_err(err)?;
            w.commit().map_err(err)?;
            let r = db.begin_read().map_err(err)?;
            let t = r.open_table(BLOCKS).map_err(err)?;
            for row in t.iter().map_err(err)? {
                let (k, v) = row.map_err(err)?;
                if let Some(e) = decode(v.value()) {
                    map.insert(k.value().into(), e);
                }
            }
        }
        Ok(Index {
            db,
            map: ArcSwap::from_pointee(map),
            write: Mutex::new(()),
            store,
        })
    }

    /// Where the block is, if the node indexed it (no lock, no allocation:
    /// for the core).
    pub fn get(&self, cid: &Cid) -> Option<Entry> {
        let mh = cid.hash();
        let mut key = [0u8; 80];
        let n = mh.write(&mut key[..]).ok()?;
        self.map.load().get(&key[..n]).copied()
    }

    /// Blocks indexed.
    pub fn len(&self) -> usize {
        self.map.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the block is here (indexed and its blob held).
    pub fn has(&self, cid: &Cid) -> bool {
        identity_block(cid).is_some()
            || self
                .get(cid)
                .is_some_and(|e| self.store.size(&e.blob).is_some())
    }

    /// The block's bytes, if the node holds it.
    pub fn read(&self, cid: &Cid) -> io::Result<Option<Vec<u8>>> {
        if let Some(b) = identity_block(cid) {
            return Ok(Some(b.to_vec()));
        }
        let Some(e) = self.get(cid) else {
            return Ok(None);
        };
        match self.store.read(&e.blob, 0, e.size as usize) {
            Ok(b) if b.len() == e.size as usize => Ok(Some(b)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stores blocks, each verified against its CID first (a block that
    /// fails is refused, and nothing of it is kept); one index write for
    /// all. The entries, in order.
    pub fn put_all(&self, blocks: &[(Cid, &[u8])]) -> Result<Vec<Entry>, PutError> {
        let mut out = Vec::with_capacity(blocks.len());
        for (cid, bytes) in blocks {
            verify_block(cid, bytes).map_err(PutError::Refused)?;
        }
        for (_, bytes) in blocks {
            let blob = *blake3::hash(bytes).as_bytes();
            if self.store.size(&blob).is_none() {
                self.store
                    .put_expecting(&blob, &mut &bytes[..])
                    .map_err(PutError::Io)?;
            }
            out.push(Entry {
                blob,
                size: bytes.len() as u32,
            });
        }
        self.record(blocks.iter().map(|(c, _)| c).zip(out.iter()))
            .map_err(PutError::Io)?;
        Ok(out)
    }

    /// One block (see [`Index::put_all`]).
    pub fn put(&self, cid: &Cid, bytes: &[u8]) -> Result<Entry, PutError> {
        Ok(self.put_all(&[(*cid, bytes)])?[0])
    }

    fn record<'a>(&self, rows: impl Iterator<Item = (&'a Cid, &'a Entry)>) -> io::Result<()> {
        let _g = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut map = Map::clone(&self.map.load());
        let w = self.db.begin_write().map_err(err)?;
        {
            let mut t = w.open_table(BLOCKS).map_err(err)?;
            for (cid, e) in rows {
                if identity_block(cid).is_some() {
                    continue;
                }
                let key = block_key(cid);
                if map.get(&key[..]) == Some(e) {
                    continue;
                }
                t.insert(&key[..], &encode(e)[..]).map_err(err)?;
                map.insert(key.into(), *e);
            }
        }
        w.commit().map_err(err)?;
        self.map.store(Arc::new(map));
        Ok(())
    }

    /// Drops blocks from the index (blocks a CAR brought that its root does
    /// not reach). Their blobs stay in the store, unpinned, for it to evict.
    pub fn forget(&self, cids: &[Cid]) -> io::Result<()> {
        if cids.is_empty() {
            return Ok(());
        }
        let _g = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut map = Map::clone(&self.map.load());
        let w = self.db.begin_write().map_err(err)?;
        {
            let mut t = w.open_table(BLOCKS).map_err(err)?;
            for cid in cids {
                let key = block_key(cid);
                t.remove(&key[..]).map_err(err)?;
                map.remove(&key[..]);
            }
        }
        w.commit().map_err(err)?;
        self.map.store(Arc::new(map));
        Ok(())
    }

    /// The blob holding each block here (for pinning).
    pub fn blobs(&self, cids: &[Cid]) -> Vec<Hash> {
        let map = self.map.load();
        cids.iter()
            .filter_map(|c| {
                let key = block_key(c);
                map.get(&key[..]).map(|e| e.blob)
            })
            .collect()
    }

    pub fn store(&self) -> &Arc<dyn BlobStore> {
        &self.store
    }
}

impl crate::dag::Blocks for Index {
    fn block(&self, cid: &Cid) -> Result<Option<Vec<u8>>, String> {
        let b = self.read(cid).map_err(|e| e.to_string())?;
        // Bytes from the disk are checked too: a damaged blob is caught here
        // rather than passed on under its CID.
        if let Some(b) = &b {
            verify_block(cid, b).map_err(|e| format!("stored block {cid}: {e}"))?;
        }
        Ok(b)
    }
}
