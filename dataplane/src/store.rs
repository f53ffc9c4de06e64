//! The blob store: content-addressed files on local disk, crash-safe, with metadata in redb.
//!
//! # Layout of a data directory
//! - `blobs/<hash>`: a blob's bytes; `blobs/<hash>.obao`: its pre-order outboard
//!   (16 KiB chunk groups, no size prefix).
//! - `blobs/<hash>.bao`: the blob's whole verified stream (size prefix, pairs and
//!   bytes interleaved), kept for blobs asked for whole more than once, so the
//!   server splices it like plain bytes instead of reading, hashing and copying
//!   every group again ([`Store::keep_stream`]). A cache: built from checked
//!   bytes, bounded by [`StoreConfig::stream_cache_bytes`], least recently used
//!   blob's stream dropped first, gone with its blob.
//! - `tmp/`: blobs being written. Everything here is removed when the store opens.
//! - `quarantine/`: blobs that `store verify --quarantine` found corrupt.
//! - `meta.redb`: size, pin and last access of every blob.
//!
//! # Crash safety
//! A put writes the bytes and the outboard to `tmp/`, fsyncs both, renames the
//! outboard and then the bytes into `blobs/`, fsyncs `blobs/`, and then records the
//! blob in redb. A blob is visible once its bytes are in `blobs/`. At open the store
//! reconciles: an outboard without bytes is removed, bytes without a record are
//! recorded, a record without bytes is dropped. A crash at any moment therefore
//! leaves the whole blob or nothing.
//!
//! # Concurrency
//! Reads of blob bytes need no lock: the server opens `blobs/<hash>` relative to a
//! directory descriptor. Puts, deletes and pins serialize on one mutex (they touch
//! redb and the size accounting), off the read path. Last-access times from the read
//! path are batched by [`crate::server`] and applied with [`Store::touch_batch`].

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::hash::BlobHash;
use crate::verified::{self, OutboardBuilder, VerifyError};

/// hash -> (size in bytes, last access in unix seconds, pinned)
const BLOBS: TableDefinition<[u8; 32], (u64, u64, bool)> = TableDefinition::new("blobs");

/// The suffix of a whole verified stream's file in `blobs/`.
pub const STREAM_SUFFIX: &str = ".bao";

/// Bytes read or written per I/O call when the store copies a stream.
const IO_BUF_BYTES: usize = 256 * 1024;

/// Errors of store operations; each says what a caller (or an HTTP client) can do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store is full: {needed} bytes needed, {limit} byte limit, and only pinned blobs are left to evict")]
    Full { needed: u64, limit: u64 },
    #[error("disk is full (ENOSPC) while writing the blob; nothing was stored")]
    NoSpace,
    #[error("blob {0} is not in the store")]
    NotFound(BlobHash),
    #[error("blob is larger than the {limit} byte limit")]
    TooLarge { limit: u64 },
    #[error("verified stream refused: {0}; nothing was stored")]
    Verify(VerifyError),
    #[error("the bytes hash to {got}, not the expected {expected}; nothing was stored")]
    Mismatch { expected: BlobHash, got: BlobHash },
    #[error("metadata database: {0}")]
    Db(String),
    #[error("I/O error: {0}")]
    Io(io::Error),
}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            StoreError::NoSpace
        } else {
            StoreError::Io(e)
        }
    }
}

impl From<VerifyError> for StoreError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::Io(io) => io.into(),
            other => StoreError::Verify(other),
        }
    }
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// Settings of a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Unpinned blobs are evicted, least recently used first, to stay under this.
    pub max_bytes: u64,
    /// Disk kept for whole verified streams (`blobs/<hash>.bao`), beside
    /// `max_bytes`. 0: none are kept.
    pub stream_cache_bytes: u64,
}

impl StoreConfig {
    /// A store of `max_bytes` with no verified streams kept.
    pub fn new(max_bytes: u64) -> Self {
        StoreConfig {
            max_bytes,
            stream_cache_bytes: 0,
        }
    }
}

/// The whole verified streams on disk: their sizes, and those being written.
#[derive(Default)]
struct StreamCache {
    kept: HashMap<BlobHash, u64>,
    used: u64,
    building: HashSet<BlobHash>,
    /// Blobs whose whole stream was asked for once since it was last written:
    /// the doorkeeper that keeps blobs asked for once from costing a copy.
    asked: HashSet<BlobHash>,
}

/// Blobs asked for once that the doorkeeper remembers before it starts over.
const STREAM_ASKS_KEPT: usize = 4096;

/// What a put produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutOutcome {
    pub hash: BlobHash,
    pub size: u64,
    /// The blob was already stored; nothing new was written.
    pub existed: bool,
}

/// Metadata of one stored blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobInfo {
    pub hash: BlobHash,
    pub size: u64,
    pub last_access_secs: u64,
    pub pinned: bool,
}

/// A problem `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrupt {
    pub hash: BlobHash,
    pub reason: String,
}

pub struct Store {
    root: PathBuf,
    blobs_dir: PathBuf,
    tmp_dir: PathBuf,
    blobs_fd: OwnedFd,
    db: Database,
    config: StoreConfig,
    used_bytes: AtomicU64,
    blob_count: AtomicU64,
    /// Serializes puts, deletes, pins and eviction (never taken on the read path).
    write_lock: Mutex<()>,
    tmp_seq: AtomicU64,
    /// Bumped whenever a blob is removed, so cores drop cached descriptors.
    generation: AtomicU64,
    /// Taken after `write_lock` where both are held, never before it.
    streams: Mutex<StreamCache>,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The file name of a blob's bytes inside `blobs/`: 64 hex characters.
pub fn blob_file_name(hash: &BlobHash) -> [u8; 64] {
    hash.to_hex()
}

impl Store {
    /// Opens (or creates) a store in `root`, removes stray temp files and reconciles
    /// the files with the metadata.
    pub fn open(root: impl AsRef<Path>, config: StoreConfig) -> Result<Store, StoreError> {
        let root = root.as_ref().to_path_buf();
        let blobs_dir = root.join("blobs");
        let tmp_dir = root.join("tmp");
        for dir in [&root, &blobs_dir, &tmp_dir, &root.join("quarantine")] {
            fs::create_dir_all(dir)?;
        }
        for entry in fs::read_dir(&tmp_dir)? {
            let path = entry?.path();
            tracing::info!(path = %path.display(), "removing stray temp file from an interrupted write");
            fs::remove_file(&path)?;
        }
        let db = Database::create(root.join("meta.redb")).map_err(db_err)?;
        let blobs_fd: OwnedFd = File::open(&blobs_dir)?.into();
        let store = Store {
            root,
            blobs_dir,
            tmp_dir,
            blobs_fd,
            db,
            config,
            used_bytes: AtomicU64::new(0),
            blob_count: AtomicU64::new(0),
            write_lock: Mutex::new(()),
            tmp_seq: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            streams: Mutex::new(StreamCache::default()),
        };
        store.reconcile()?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory descriptor of `blobs/`, for `openat` on the read path.
    pub fn blobs_dir_fd(&self) -> i32 {
        self.blobs_fd.as_raw_fd()
    }

    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }

    pub fn blob_count(&self) -> u64 {
        self.blob_count.load(Ordering::Relaxed)
    }

    /// Changes whenever a blob is removed (delete, eviction).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn max_bytes(&self) -> u64 {
        self.config.max_bytes
    }

    fn data_path(&self, hash: &BlobHash) -> PathBuf {
        self.blobs_dir.join(hash.to_string())
    }

    fn outboard_path(&self, hash: &BlobHash) -> PathBuf {
        self.blobs_dir.join(format!("{hash}.obao"))
    }

    fn stream_path(&self, hash: &BlobHash) -> PathBuf {
        self.blobs_dir.join(format!("{hash}{STREAM_SUFFIX}"))
    }

    fn reconcile(&self) -> Result<(), StoreError> {
        let mut on_disk = HashSet::new();
        let mut streams = Vec::new();
        for entry in fs::read_dir(&self.blobs_dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(STREAM_SUFFIX) {
                match BlobHash::parse(stem.as_bytes()) {
                    Ok(hash) => streams.push((hash, entry.metadata()?.len())),
                    Err(_) => tracing::warn!(name = %name, "ignoring unknown file in blobs/"),
                }
                continue;
            }
            let (stem, is_outboard) = match name.strip_suffix(".obao") {
                Some(stem) => (stem, true),
                None => (&*name, false),
            };
            match BlobHash::parse(stem.as_bytes()) {
                Ok(hash) if !is_outboard => {
                    on_disk.insert(hash);
                }
                Ok(hash) => {
                    if !self.data_path(&hash).exists() {
                        tracing::info!(%hash, "removing outboard of a blob whose write did not finish");
                        fs::remove_file(entry.path())?;
                    }
                }
                Err(_) => tracing::warn!(name = %name, "ignoring unknown file in blobs/"),
            }
        }
        let txn = self.db.begin_write().map_err(db_err)?;
        let (mut used, mut count) = (0u64, 0u64);
        {
            let mut table = txn.open_table(BLOBS).map_err(db_err)?;
            let mut stale = Vec::new();
            for row in table.iter().map_err(db_err)? {
                let (key, _) = row.map_err(db_err)?;
                let hash = BlobHash(key.value());
                if !on_disk.contains(&hash) {
                    stale.push(hash);
                }
            }
            for hash in stale {
                tracing::info!(%hash, "dropping metadata of a blob whose bytes are gone");
                table.remove(hash.0).map_err(db_err)?;
            }
            for hash in &on_disk {
                let known = table.get(hash.0).map_err(db_err)?.map(|v| v.value());
                let size = match known {
                    Some((size, _, _)) => size,
                    None => {
                        if !self.outboard_path(hash).exists() {
                            // Bytes are renamed after the outboard, so this is not our crash;
                            // rebuild the outboard rather than lose the blob.
                            self.rebuild_outboard(hash)?;
                        }
                        let size = fs::metadata(self.data_path(hash))?.len();
                        tracing::info!(%hash, size, "recording blob committed just before a crash");
                        table
                            .insert(hash.0, (size, now_secs(), false))
                            .map_err(db_err)?;
                        size
                    }
                };
                used += size;
                count += 1;
            }
        }
        txn.commit().map_err(db_err)?;
        self.used_bytes.store(used, Ordering::Relaxed);
        self.blob_count.store(count, Ordering::Relaxed);
        self.reconcile_streams(&on_disk, streams)
    }

    /// Keeps the whole streams that belong to a stored blob and have its
    /// stream's length (a crash cannot leave a torn one: they are renamed in
    /// whole, but a budget lowered since, or a file cut short by hand, can be
    /// left), within the budget; removes the rest.
    fn reconcile_streams(
        &self,
        blobs: &HashSet<BlobHash>,
        found: Vec<(BlobHash, u64)>,
    ) -> Result<(), StoreError> {
        let mut cache = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        for (hash, len) in found {
            let expected = match blobs.contains(&hash) {
                true => fs::metadata(self.data_path(&hash))
                    .map(|m| verified::encoded_len(m.len(), &verified::all_ranges()))
                    .ok(),
                false => None,
            };
            if expected == Some(len) && cache.used + len <= self.config.stream_cache_bytes {
                cache.used += len;
                cache.kept.insert(hash, len);
            } else {
                tracing::info!(%hash, "removing a kept verified stream that is stale or over the budget");
                remove_if_exists(&self.stream_path(&hash))?;
            }
        }
        Ok(())
    }

    /// Bytes of whole verified streams kept on disk, and how many.
    pub fn stream_cache_usage(&self) -> (u64, usize) {
        let cache = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        (cache.used, cache.kept.len())
    }

    /// Counts an ask for blob `hash`'s whole stream that found no kept copy;
    /// true at the second (since the last), when it is worth writing one
    /// ([`Store::keep_stream`]). Any core's asks count: one set for the node.
    pub fn second_ask(&self, hash: &BlobHash) -> bool {
        let mut cache = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if cache.asked.remove(hash) {
            return true;
        }
        if cache.asked.len() >= STREAM_ASKS_KEPT {
            cache.asked.clear();
        }
        cache.asked.insert(*hash);
        false
    }

    /// Whether a whole stream of `len` bytes fits the budget at all.
    pub fn could_keep(&self, len: u64) -> bool {
        len <= self.config.stream_cache_bytes
    }

    /// Whether whole verified streams are kept at all.
    pub fn keeps_streams(&self) -> bool {
        self.config.stream_cache_bytes > 0
    }

    /// Writes blob `hash`'s whole verified stream to `blobs/<hash>.bao`, checking
    /// every pair and group against the hash as it goes, so the server can
    /// splice it (`sys::open_at(blobs_dir_fd, hash, b".bao")`). Streams of the
    /// least recently used blobs make room; a stream larger than the whole budget
    /// is not kept. `Ok(false)`: not kept (kept already, being written, too
    /// large, or the blob went meanwhile). A corrupt blob gives
    /// [`StoreError::Verify`] and nothing is kept.
    pub fn keep_stream(&self, hash: &BlobHash) -> Result<bool, StoreError> {
        let budget = self.config.stream_cache_bytes;
        let Some(info) = self.info(hash)? else {
            return Err(StoreError::NotFound(*hash));
        };
        let ranges = verified::all_ranges();
        let len = verified::encoded_len(info.size, &ranges);
        {
            let mut cache = self.streams.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(bytes) = cache.kept.get(hash).copied() {
                if fs::metadata(self.stream_path(hash)).is_ok_and(|m| m.len() == len) {
                    return Ok(false);
                }
                // Removed or cut under us (`store verify` found it bad): write it again.
                cache.kept.remove(hash);
                cache.used -= bytes;
            }
            if len > budget || !cache.building.insert(*hash) {
                return Ok(false);
            }
        }
        let written = self.write_stream(hash, info.size);
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut cache = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        cache.building.remove(hash);
        let tmp = written?;
        if self.info(hash)?.is_none() {
            return Ok(false);
        }
        self.make_stream_room(&mut cache, len)?;
        fs::rename(&tmp.path, self.stream_path(hash))?;
        tmp.disarm();
        cache.used += len;
        cache.kept.insert(*hash, len);
        Ok(true)
    }

    /// The checked stream in a synced temp file.
    fn write_stream(&self, hash: &BlobHash, size: u64) -> Result<TempFile, StoreError> {
        let ranges = verified::all_ranges();
        let data = File::open(self.data_path(hash))?;
        let outboard = File::open(self.outboard_path(hash))?;
        let tmp = TempFile::new(self.tmp_path("bao"))?;
        let mut out = io::BufWriter::with_capacity(IO_BUF_BYTES, &tmp.file);
        let mut stored = verified::Stored {
            outboard: |buf: &mut [u8], at| outboard.read_exact_at(buf, at),
            data: |buf: &mut [u8], at| data.read_exact_at(buf, at),
        };
        verified::encode_validated_into(hash.as_blake3(), size, &ranges, &mut stored, &mut out)
            .map_err(|e| match e {
                VerifyError::Io(e) if e.raw_os_error() == Some(libc::ENOSPC) => StoreError::NoSpace,
                VerifyError::Io(e) => StoreError::Io(e),
                e => StoreError::Verify(e),
            })?;
        out.flush()?;
        drop(out);
        tmp.file.sync_all()?;
        Ok(tmp)
    }

    /// Drops kept streams, least recently used blob first, until `len` more fit.
    fn make_stream_room(&self, cache: &mut StreamCache, len: u64) -> Result<(), StoreError> {
        let budget = self.config.stream_cache_bytes;
        if cache.used + len <= budget {
            return Ok(());
        }
        let mut by_age = Vec::with_capacity(cache.kept.len());
        for (hash, bytes) in &cache.kept {
            let last = self.info(hash)?.map_or(0, |i| i.last_access_secs);
            by_age.push((last, *hash, *bytes));
        }
        by_age.sort_unstable();
        for (_, hash, bytes) in by_age {
            if cache.used + len <= budget {
                break;
            }
            remove_if_exists(&self.stream_path(&hash))?;
            cache.kept.remove(&hash);
            cache.used -= bytes;
        }
        Ok(())
    }

    fn rebuild_outboard(&self, hash: &BlobHash) -> Result<(), StoreError> {
        let mut file = File::open(self.data_path(hash))?;
        let mut builder = OutboardBuilder::new();
        copy_into(&mut file, |buf| {
            builder.update(buf);
            Ok(())
        })?;
        let ob = builder.finish();
        let tmp = self.tmp_path("obao");
        write_synced(&tmp, &ob.pre_order)?;
        fs::rename(&tmp, self.outboard_path(hash))?;
        Ok(())
    }

    fn tmp_path(&self, kind: &str) -> PathBuf {
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        self.tmp_dir
            .join(format!("{}-{seq}.{kind}", std::process::id()))
    }

    /// Starts a put of a stream of unknown length. The writer owns a handle on the
    /// store so that [`PutWriter::finish`] can run on another thread.
    pub fn begin_put(self: &Arc<Self>, max_size: u64) -> Result<PutWriter, StoreError> {
        let path = self.tmp_path("data");
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(PutWriter {
            store: self.clone(),
            file: Some(file),
            path,
            builder: OutboardBuilder::new(),
            max_size,
        })
    }

    /// Puts everything `reader` yields.
    pub fn put_reader(self: &Arc<Self>, mut reader: impl Read) -> Result<PutOutcome, StoreError> {
        let mut writer = self.begin_put(u64::MAX)?;
        copy_into(&mut reader, |buf| writer.write(buf))?;
        writer.finish()
    }

    /// Starts assembling `expected` (of `size` bytes) from verified range streams
    /// that may arrive in any order and from several peers at once
    /// ([`Assembly::add_range`]); [`Store::finish_assembly`] stores it once every
    /// chunk group has arrived verified. Dropped unfinished, it leaves nothing.
    pub fn begin_assembly(&self, expected: BlobHash, size: u64) -> Result<Assembly, StoreError> {
        if size > self.config.max_bytes {
            return Err(StoreError::TooLarge {
                limit: self.config.max_bytes,
            });
        }
        let a = self.new_assembly(expected)?;
        a.parts()
            .set_size(size, self.config.max_bytes, &a.data.file)?;
        Ok(a)
    }

    /// An assembly whose size the first stream will announce.
    fn new_assembly(&self, expected: BlobHash) -> Result<Assembly, StoreError> {
        Ok(Assembly {
            expected,
            max_bytes: self.config.max_bytes,
            data: TempFile::new(self.tmp_path("data"))?,
            parts: Mutex::new(Parts {
                size: None,
                tree: verified::tree(0),
                outboard: Vec::new(),
                done: Vec::new(),
            }),
        })
    }

    /// Stores an assembly whose every group arrived verified.
    pub fn finish_assembly(&self, a: Assembly) -> Result<PutOutcome, StoreError> {
        let parts = a.parts.into_inner().unwrap_or_else(|p| p.into_inner());
        let Some(size) = parts.size else {
            return Err(StoreError::Io(io::Error::other(
                "no stream announced the blob's size",
            )));
        };
        let missing = parts.done.iter().filter(|g| !**g).count();
        if missing > 0 {
            return Err(StoreError::Io(io::Error::other(format!(
                "{missing} chunk groups never arrived"
            ))));
        }
        a.data.file.sync_all()?;
        let outboard_tmp = TempFile::new(self.tmp_path("obao"))?;
        (&outboard_tmp.file).write_all(&parts.outboard)?;
        outboard_tmp.file.sync_all()?;
        self.commit(a.expected, size, a.data, outboard_tmp)
    }

    /// Imports a verified stream of `expected`: every chunk group is checked before it
    /// is written, and the first bad one aborts the import with its index, leaving
    /// nothing behind. (An assembly fed by one whole stream.)
    pub fn import_verified(
        &self,
        expected: BlobHash,
        reader: impl Read,
    ) -> Result<PutOutcome, StoreError> {
        let a = self.new_assembly(expected)?;
        a.decode(reader, &verified::all_ranges())?;
        self.finish_assembly(a)
    }

    /// Moves a finished blob from `tmp/` into `blobs/` and records it.
    fn commit(
        &self,
        hash: BlobHash,
        size: u64,
        data: TempFile,
        outboard: TempFile,
    ) -> Result<PutOutcome, StoreError> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let data_path = self.data_path(&hash);
        if data_path.exists() {
            self.touch_batch(&[(hash, now_secs())])?;
            return Ok(PutOutcome {
                hash,
                size,
                existed: true,
            });
        }
        if size > self.config.max_bytes {
            return Err(StoreError::Full {
                needed: size,
                limit: self.config.max_bytes,
            });
        }
        self.evict_for(size)?;
        fs::rename(&outboard.path, self.outboard_path(&hash))?;
        outboard.disarm();
        fs::rename(&data.path, &data_path)?;
        data.disarm();
        sync_dir(&self.blobs_dir)?;
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(BLOBS).map_err(db_err)?;
            table
                .insert(hash.0, (size, now_secs(), false))
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        self.used_bytes.fetch_add(size, Ordering::Relaxed);
        self.blob_count.fetch_add(1, Ordering::Relaxed);
        Ok(PutOutcome {
            hash,
            size,
            existed: false,
        })
    }

    /// Evicts unpinned blobs, least recently used first, until `incoming` more bytes fit.
    /// Called with the write lock held.
    fn evict_for(&self, incoming: u64) -> Result<(), StoreError> {
        let limit = self.config.max_bytes;
        if self.used_bytes() + incoming <= limit {
            return Ok(());
        }
        let mut candidates: Vec<BlobInfo> =
            self.list()?.into_iter().filter(|b| !b.pinned).collect();
        candidates.sort_by_key(|b| b.last_access_secs);
        let mut victims = Vec::new();
        let mut used = self.used_bytes();
        for blob in candidates {
            if used + incoming <= limit {
                break;
            }
            used -= blob.size.min(used);
            victims.push(blob.hash);
        }
        if used + incoming > limit {
            return Err(StoreError::Full {
                needed: incoming,
                limit,
            });
        }
        for hash in victims {
            tracing::info!(%hash, "evicting least recently used blob");
            self.remove_locked(&hash)?;
        }
        Ok(())
    }

    /// All blobs' metadata.
    pub fn list(&self) -> Result<Vec<BlobInfo>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = match txn.open_table(BLOBS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err(e)),
        };
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let (size, last_access_secs, pinned) = v.value();
            out.push(BlobInfo {
                hash: BlobHash(k.value()),
                size,
                last_access_secs,
                pinned,
            });
        }
        Ok(out)
    }

    pub fn info(&self, hash: &BlobHash) -> Result<Option<BlobInfo>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = match txn.open_table(BLOBS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        };
        Ok(table.get(hash.0).map_err(db_err)?.map(|v| {
            let (size, last_access_secs, pinned) = v.value();
            BlobInfo {
                hash: *hash,
                size,
                last_access_secs,
                pinned,
            }
        }))
    }

    /// Removes a blob. Bytes first, then outboard, then record: a crash in between
    /// leaves a record without bytes, which the next open drops.
    pub fn delete(&self, hash: &BlobHash) -> Result<(), StoreError> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.remove_locked(hash)
    }

    fn remove_locked(&self, hash: &BlobHash) -> Result<(), StoreError> {
        let Some(info) = self.info(hash)? else {
            return Err(StoreError::NotFound(*hash));
        };
        remove_if_exists(&self.data_path(hash))?;
        self.generation.fetch_add(1, Ordering::AcqRel);
        remove_if_exists(&self.outboard_path(hash))?;
        self.forget_stream(hash)?;
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(BLOBS).map_err(db_err)?;
            table.remove(hash.0).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        self.used_bytes.fetch_sub(info.size, Ordering::Relaxed);
        self.blob_count.fetch_sub(1, Ordering::Relaxed);
        Ok(())
    }

    fn forget_stream(&self, hash: &BlobHash) -> Result<(), StoreError> {
        let mut cache = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bytes) = cache.kept.remove(hash) {
            cache.used -= bytes;
        }
        remove_if_exists(&self.stream_path(hash))?;
        Ok(())
    }

    /// Takes a blob found corrupt out of service: its bytes move to `quarantine/` (kept
    /// for inspection), its outboard and record go. Cores stop serving it at once.
    pub fn quarantine(&self, hash: &BlobHash) -> Result<(), StoreError> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let target = self.root.join("quarantine").join(hash.to_string());
        match fs::rename(self.data_path(hash), &target) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        self.remove_locked(hash)
    }

    /// Pins or unpins many blobs in one transaction; those the store does
    /// not hold are passed over. How many it holds of them.
    pub fn set_pinned_many(&self, hashes: &[BlobHash], pinned: bool) -> Result<usize, StoreError> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let txn = self.db.begin_write().map_err(db_err)?;
        let mut held = 0;
        {
            let mut table = txn.open_table(BLOBS).map_err(db_err)?;
            for hash in hashes {
                let current = table.get(hash.0).map_err(db_err)?.map(|v| v.value());
                if let Some((size, last, was)) = current {
                    held += 1;
                    if was != pinned {
                        table.insert(hash.0, (size, last, pinned)).map_err(db_err)?;
                    }
                }
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(held)
    }

    /// Pins (never evicted) or unpins a blob.
    pub fn set_pinned(&self, hash: &BlobHash, pinned: bool) -> Result<(), StoreError> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(BLOBS).map_err(db_err)?;
            let current = table.get(hash.0).map_err(db_err)?.map(|v| v.value());
            let Some((size, last, _)) = current else {
                return Err(StoreError::NotFound(*hash));
            };
            table.insert(hash.0, (size, last, pinned)).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(())
    }

    /// Records last-access times (batched from the read path). Not made durable on
    /// its own: losing the last second of access times in a crash is harmless.
    pub fn touch_batch(&self, touches: &[(BlobHash, u64)]) -> Result<(), StoreError> {
        if touches.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(redb::Durability::None).map_err(db_err)?;
        {
            let mut table = txn.open_table(BLOBS).map_err(db_err)?;
            for (hash, at) in touches {
                let current = table.get(hash.0).map_err(db_err)?.map(|v| v.value());
                if let Some((size, last, pinned)) = current {
                    if *at > last {
                        table.insert(hash.0, (size, *at, pinned)).map_err(db_err)?;
                    }
                }
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(())
    }

    /// Opens a blob's bytes for reading (the server uses `openat` on [`Self::blobs_dir_fd`]).
    pub fn open_blob(&self, hash: &BlobHash) -> Result<(File, u64), StoreError> {
        match File::open(self.data_path(hash)) {
            Ok(f) => {
                let size = f.metadata()?.len();
                Ok((f, size))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotFound(*hash)),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads a whole blob into memory (tests and small tools only).
    pub fn read_all(&self, hash: &BlobHash) -> Result<Vec<u8>, StoreError> {
        let (mut f, size) = self.open_blob(hash)?;
        let mut out = Vec::with_capacity(size as usize);
        f.read_to_end(&mut out)?;
        Ok(out)
    }

    /// Opens a blob's outboard.
    pub fn open_outboard(&self, hash: &BlobHash) -> Result<File, StoreError> {
        match File::open(self.outboard_path(hash)) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotFound(*hash)),
            Err(e) => Err(e.into()),
        }
    }
}

/// Re-hashes every blob in `root` and returns the corrupt ones (bit rot, truncation,
/// a damaged outboard). Reads files only, so it runs beside a live node. With
/// `quarantine`, corrupt blobs are moved to `quarantine/` so they are no longer served.
pub fn verify_dir(root: &Path, quarantine: bool) -> Result<(usize, Vec<Corrupt>), StoreError> {
    let blobs = root.join("blobs");
    let mut checked = 0;
    let mut corrupt = Vec::new();
    let mut names: Vec<_> = fs::read_dir(&blobs)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".obao") && !n.ends_with(STREAM_SUFFIX))
        .collect();
    names.sort();
    for name in names {
        let Ok(hash) = BlobHash::parse(name.as_bytes()) else {
            continue;
        };
        checked += 1;
        let mut builder = OutboardBuilder::new();
        let mut file = File::open(blobs.join(&name))?;
        copy_into(&mut file, |buf| {
            builder.update(buf);
            Ok(())
        })?;
        let ob = builder.finish();
        let reason = if ob.root != hash.as_blake3() {
            Some(format!(
                "bytes hash to {}, not to the blob's name",
                BlobHash::from(ob.root)
            ))
        } else {
            match fs::read(blobs.join(format!("{name}.obao"))) {
                Ok(stored) if stored == ob.pre_order => None,
                Ok(_) => Some("outboard does not match the bytes".to_string()),
                Err(e) => Some(format!("outboard unreadable: {e}")),
            }
        };
        let stream = blobs.join(format!("{name}{STREAM_SUFFIX}"));
        if let Some(reason) = reason {
            if quarantine {
                let q = root.join("quarantine");
                fs::rename(blobs.join(&name), q.join(&name))?;
                remove_if_exists(&blobs.join(format!("{name}.obao")))?;
                remove_if_exists(&stream)?;
            }
            corrupt.push(Corrupt { hash, reason });
        } else if let Err(why) = check_stream(&stream, hash) {
            // Only a copy: the blob is sound, so the copy goes and is rebuilt
            // when the blob is next asked for whole twice.
            tracing::warn!(%hash, "removing its kept verified stream: {why}");
            remove_if_exists(&stream)?;
        }
    }
    Ok((checked, corrupt))
}

/// Decodes a kept whole stream, if there is one, against its blob's hash, to its end.
fn check_stream(path: &Path, hash: BlobHash) -> Result<(), String> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    let mut reader = io::BufReader::with_capacity(IO_BUF_BYTES, file);
    verified::decode_stream(
        hash.as_blake3(),
        &mut reader,
        &verified::all_ranges(),
        |_| Ok(()),
    )
    .map_err(|e| e.to_string())?;
    match reader.fill_buf() {
        Ok([]) => Ok(()),
        Ok(_) => Err("bytes after the stream's end".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A blob being written; dropped without [`PutWriter::finish`], it leaves nothing.
pub struct PutWriter {
    store: Arc<Store>,
    file: Option<File>,
    path: PathBuf,
    builder: OutboardBuilder,
    max_size: u64,
}

impl PutWriter {
    /// Hashes and writes the next bytes of the blob.
    pub fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        let size = self.builder.size() + data.len() as u64;
        if size > self.max_size {
            return Err(StoreError::TooLarge {
                limit: self.max_size,
            });
        }
        if size > self.store.config.max_bytes {
            return Err(StoreError::Full {
                needed: size,
                limit: self.store.config.max_bytes,
            });
        }
        self.builder.update(data);
        match &mut self.file {
            Some(f) => f.write_all(data)?,
            None => return Err(StoreError::Io(io::Error::other("writer already finished"))),
        }
        Ok(())
    }

    pub fn size(&self) -> u64 {
        self.builder.size()
    }

    /// Makes the blob durable and visible.
    pub fn finish(self) -> Result<PutOutcome, StoreError> {
        self.finish_checked(None)
    }

    /// Makes the blob durable and visible only if its bytes hash to
    /// `expected`; otherwise nothing is stored ([`StoreError::Mismatch`]).
    pub fn finish_expecting(self, expected: BlobHash) -> Result<PutOutcome, StoreError> {
        self.finish_checked(Some(expected))
    }

    fn finish_checked(mut self, expected: Option<BlobHash>) -> Result<PutOutcome, StoreError> {
        let file = self
            .file
            .take()
            .ok_or_else(|| StoreError::Io(io::Error::other("writer already finished")))?;
        let data = TempFile {
            file,
            path: std::mem::take(&mut self.path),
            armed: true,
        };
        data.file.sync_all()?;
        let builder = std::mem::take(&mut self.builder);
        let ob = builder.finish();
        let got = BlobHash::from(ob.root);
        if let Some(expected) = expected.filter(|e| *e != got) {
            return Err(StoreError::Mismatch { expected, got });
        }
        let outboard = TempFile::new(self.store.tmp_path("obao"))?;
        (&outboard.file).write_all(&ob.pre_order)?;
        outboard.file.sync_all()?;
        self.store
            .commit(BlobHash::from(ob.root), ob.size, data, outboard)
    }
}

impl Drop for PutWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A file in `tmp/` that is removed on drop unless disarmed (after its rename).
/// A blob being assembled from verified ranges (see [`Store::begin_assembly`]).
/// `add_range` takes `&self`: one thread per peer may feed it at once.
pub struct Assembly {
    expected: BlobHash,
    max_bytes: u64,
    data: TempFile,
    parts: Mutex<Parts>,
}

/// What an assembly knows once a stream announced the size.
struct Parts {
    size: Option<u64>,
    tree: bao_tree::BaoTree,
    outboard: Vec<u8>,
    /// Chunk groups written verified.
    done: Vec<bool>,
}

impl Parts {
    /// The first announced size fixes the tree; a later stream must agree.
    fn set_size(&mut self, size: u64, max_bytes: u64, data: &File) -> io::Result<()> {
        match self.size {
            Some(s) if s != size => Err(io::Error::other(format!(
                "peer announced {size} bytes, expected {s}"
            ))),
            Some(_) => Ok(()),
            None if size > max_bytes => Err(io::Error::other(format!(
                "blob of {size} bytes exceeds the store limit"
            ))),
            None => {
                data.set_len(size)?;
                self.size = Some(size);
                self.tree = verified::tree(size);
                self.outboard = vec![0u8; self.tree.outboard_size() as usize];
                self.done = vec![false; size.div_ceil(verified::CHUNK_GROUP_BYTES as u64) as usize];
                Ok(())
            }
        }
    }
}

impl Assembly {
    fn parts(&self) -> std::sync::MutexGuard<'_, Parts> {
        self.parts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decodes a verified stream of bytes `first..=last` (widened to whole chunk
    /// groups) and writes each group at its place once it is checked against the
    /// expected root. A bad group or a stream for another size is an error and
    /// writes nothing more; groups already written stay valid.
    pub fn add_range(&self, reader: impl Read, first: u64, last: u64) -> Result<(), StoreError> {
        self.decode(reader, &verified::group_ranges(first, last))
    }

    /// Seeds an assembly from the blob's outboard (`outboard`: hash pairs in
    /// pre-order, no size prefix; checked against the expected root here) and
    /// from an earlier blob held here (`base`, its file and size): every chunk
    /// group of `base` whose bytes hash, at the same offset, to this blob's
    /// chaining value is written as this blob's and counts as arrived. What is
    /// left comes from peers as verified ranges ([`Assembly::missing`]). The
    /// size must be known ([`Store::begin_assembly`]). Returns the bytes reused.
    pub fn seed(&self, outboard: &[u8], base: Option<(&File, u64)>) -> Result<u64, StoreError> {
        let size = self.parts().size.ok_or_else(|| {
            StoreError::Io(io::Error::other("seeding an assembly of unknown size"))
        })?;
        let cvs = verified::group_cvs(self.expected.as_blake3(), size, outboard)?;
        self.parts().outboard.copy_from_slice(outboard);
        let Some((file, base_size)) = base else {
            return Ok(0);
        };
        let group = verified::CHUNK_GROUP_BYTES as u64;
        let mut buf = vec![0u8; verified::CHUNK_GROUP_BYTES];
        let mut reused = 0u64;
        let single = cvs.len() == 1;
        for (i, cv) in cvs.iter().enumerate() {
            let start = i as u64 * group;
            let len = group.min(size - start) as usize;
            if len == 0 || start + len as u64 > base_size {
                continue;
            }
            let data = &mut buf[..len];
            file.read_exact_at(data, start)?;
            let chunk = bao_tree::ChunkNum(start / 1024);
            if verified::hash_group(chunk, data, single) != *cv {
                continue;
            }
            self.data.file.write_all_at(data, start)?;
            if let Some(d) = self.parts().done.get_mut(i) {
                *d = true;
            }
            reused += len as u64;
        }
        Ok(reused)
    }

    /// The byte ranges (inclusive, adjacent groups joined) still to arrive.
    pub fn missing(&self) -> Vec<(u64, u64)> {
        let parts = self.parts();
        let size = parts.size.unwrap_or(0);
        let group = verified::CHUNK_GROUP_BYTES as u64;
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (i, done) in parts.done.iter().enumerate() {
            if *done {
                continue;
            }
            let (first, last) = (i as u64 * group, ((i as u64 + 1) * group).min(size) - 1);
            match out.last_mut() {
                Some((_, l)) if *l + 1 == first => *l = last,
                _ => out.push((first, last)),
            }
        }
        out
    }

    fn decode(&self, reader: impl Read, ranges: &bao_tree::ChunkRanges) -> Result<(), StoreError> {
        let mut written: Vec<usize> = Vec::new();
        verified::decode_stream(self.expected.as_blake3(), reader, ranges, |item| {
            match item {
                verified::Item::Size(size) => {
                    self.parts()
                        .set_size(size, self.max_bytes, &self.data.file)?
                }
                verified::Item::Parent { node, pair } => {
                    let mut parts = self.parts();
                    if let Some(off) = verified::outboard_offset(&parts.tree, node) {
                        let off = off as usize;
                        parts.outboard[off..off + 64].copy_from_slice(pair);
                    }
                }
                verified::Item::Group { offset, data } => {
                    self.data.file.write_all_at(data, offset)?;
                    written.push((offset / verified::CHUNK_GROUP_BYTES as u64) as usize);
                }
            }
            Ok(())
        })?;
        let mut parts = self.parts();
        for g in written {
            if let Some(d) = parts.done.get_mut(g) {
                *d = true;
            }
        }
        Ok(())
    }
}

struct TempFile {
    file: File,
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    fn new(path: PathBuf) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Self {
            file,
            path,
            armed: true,
        })
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn copy_into(
    reader: &mut impl Read,
    mut sink: impl FnMut(&[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut buf = vec![0u8; IO_BUF_BYTES];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        sink(&buf[..n])?;
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verified::{all_ranges, encode_to_vec, group_ranges, Item};

    fn store(dir: &Path, max_bytes: u64) -> Arc<Store> {
        Arc::new(Store::open(dir, StoreConfig::new(max_bytes)).expect("open store"))
    }

    impl Store {
        fn outboard_bytes(&self, hash: &BlobHash) -> Vec<u8> {
            fs::read(self.outboard_path(hash)).expect("outboard")
        }
    }

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[test]
    fn kept_streams_are_checked_bounded_and_go_with_their_blob() {
        let dir = tempfile::tempdir().expect("tmp");
        let len = 300_000usize;
        let one = verified::encoded_len(len as u64, &all_ranges());
        let config = StoreConfig {
            max_bytes: 1 << 30,
            stream_cache_bytes: one * 3 / 2,
        };
        let s = Arc::new(Store::open(dir.path(), config.clone()).expect("open"));
        let (a, b) = (bytes(len, 1), bytes(len, 2));
        let ha = s.put_reader(&a[..]).expect("put").hash;
        let hb = s.put_reader(&b[..]).expect("put").hash;
        assert!(s.keep_stream(&ha).expect("keep"));
        assert!(!s.keep_stream(&ha).expect("kept already"), "written once");
        let kept = fs::read(s.stream_path(&ha)).expect("kept");
        assert_eq!(
            kept,
            encode_to_vec(&a, &s.outboard_bytes(&ha), &all_ranges())
        );
        assert_eq!(s.stream_cache_usage(), (one, 1));

        // Room for one: the least recently used blob's stream goes.
        s.touch_batch(&[(ha, 1_000), (hb, 2_000)]).expect("touch");
        assert!(s.keep_stream(&hb).expect("keep"));
        assert!(!s.stream_path(&ha).exists(), "older one dropped");
        assert_eq!(s.stream_cache_usage(), (one, 1));

        // A corrupt blob is refused and nothing is kept.
        let mut bad = fs::read(s.data_path(&ha)).expect("read");
        bad[200_000] ^= 1;
        fs::write(s.data_path(&ha), &bad).expect("rot");
        assert!(matches!(s.keep_stream(&ha), Err(StoreError::Verify(_))));
        assert!(!s.stream_path(&ha).exists());
        assert_eq!(
            fs::read_dir(dir.path().join("tmp")).expect("tmp").count(),
            0
        );

        // Reopened: the kept one counts; one over the budget or torn is removed.
        fs::write(s.stream_path(&ha), b"torn").expect("torn");
        drop(s);
        let s = Store::open(dir.path(), config).expect("reopen");
        assert_eq!(s.stream_cache_usage(), (one, 1));
        assert!(!s.stream_path(&ha).exists(), "torn copy removed");
        s.delete(&hb).expect("delete");
        assert!(!s.stream_path(&hb).exists(), "gone with its blob");
        assert_eq!(s.stream_cache_usage(), (0, 0));
    }

    #[test]
    fn put_get_and_range() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = store(dir.path(), 1 << 30);
        for len in [0usize, 1, 16383, 16384, 16385, 1 << 20] {
            let data = bytes(len, 1);
            let out = s.put_reader(&data[..]).expect("put");
            assert_eq!(out.hash, BlobHash::from(blake3::hash(&data)));
            assert_eq!(out.size, len as u64);
            assert_eq!(s.read_all(&out.hash).expect("read"), data);
            // A range through the outboard verifies.
            if len > 0 {
                let ob = fs::read(s.outboard_path(&out.hash)).expect("outboard");
                let ranges = group_ranges(len as u64 / 2, len as u64 - 1);
                let enc = encode_to_vec(&data, &ob, &ranges);
                verified::decode_stream(out.hash.as_blake3(), &enc[..], &ranges, |_| Ok(()))
                    .expect("range verifies");
            }
        }
        let again = s.put_reader(&bytes(16384, 1)[..]).expect("put again");
        assert!(again.existed);
        assert!(fs::read_dir(dir.path().join("tmp"))
            .expect("tmp")
            .next()
            .is_none());
    }

    #[test]
    fn evicts_least_recently_used_but_never_pinned() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = store(dir.path(), 100_000);
        let a = s.put_reader(&bytes(40_000, 1)[..]).expect("a").hash;
        let b = s.put_reader(&bytes(40_000, 2)[..]).expect("b").hash;
        s.set_pinned(&a, true).expect("pin");
        let t = now_secs();
        s.touch_batch(&[(a, t + 10), (b, t + 20)]).expect("touch");
        // c needs room: b (unpinned) goes even though a is older.
        let c = s.put_reader(&bytes(40_000, 3)[..]).expect("c").hash;
        assert!(s.info(&a).expect("info").is_some());
        assert!(s.info(&b).expect("info").is_none());
        assert!(s.open_blob(&b).is_err());
        assert_eq!(s.used_bytes(), 80_000);
        // With a and c pinned nothing can go: a clear Full error, nothing stored.
        s.set_pinned(&c, true).expect("pin");
        match s.put_reader(&bytes(40_000, 4)[..]) {
            Err(StoreError::Full { .. }) => {}
            other => panic!("expected Full, got {other:?}"),
        }
        assert_eq!(s.blob_count(), 2);
        assert!(fs::read_dir(dir.path().join("tmp"))
            .expect("tmp")
            .next()
            .is_none());
        // Oldest unpinned goes first.
        s.set_pinned(&a, false).expect("unpin");
        s.set_pinned(&c, false).expect("unpin");
        s.touch_batch(&[(a, t + 100), (c, t + 50)]).expect("touch");
        s.put_reader(&bytes(40_000, 5)[..]).expect("d");
        assert!(s.info(&c).expect("info").is_none());
        assert!(s.info(&a).expect("info").is_some());
    }

    #[test]
    fn assembly_from_ranges_in_any_order_and_threads() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = store(dir.path(), 1 << 30);
        let data = bytes(1_000_000, 11);
        let mut b = OutboardBuilder::new();
        b.update(&data);
        let ob = b.finish();
        let hash = BlobHash::from(ob.root);
        let part =
            |first: u64, last: u64| encode_to_vec(&data, &ob.pre_order, &group_ranges(first, last));
        // Missing a part: refused, nothing stored.
        let a = s.begin_assembly(hash, data.len() as u64).expect("begin");
        a.add_range(&part(0, 399_999)[..], 0, 399_999)
            .expect("part");
        assert!(s.finish_assembly(a).is_err());
        assert!(s.info(&hash).expect("info").is_none());
        // A corrupt part is refused; the right bytes from elsewhere complete it.
        let a = s.begin_assembly(hash, data.len() as u64).expect("begin");
        let mut bad = part(400_000, 699_999);
        let n = bad.len();
        bad[n - 10] ^= 1;
        assert!(matches!(
            a.add_range(&bad[..], 400_000, 699_999),
            Err(StoreError::Verify(_))
        ));
        std::thread::scope(|t| {
            for (first, last) in [(700_000u64, 999_999u64), (0, 399_999), (400_000, 699_999)] {
                let a = &a;
                let enc = part(first, last);
                t.spawn(move || a.add_range(&enc[..], first, last).expect("part"));
            }
        });
        let out = s.finish_assembly(a).expect("finish");
        assert_eq!(out.hash, hash);
        assert_eq!(s.read_all(&hash).expect("read"), data);
        // The outboard assembled from the parts serves a verified stream again.
        let mut obao = Vec::new();
        s.open_outboard(&hash)
            .expect("obao")
            .read_to_end(&mut obao)
            .expect("read");
        assert_eq!(obao, ob.pre_order);
    }

    #[test]
    fn an_assembly_seeded_from_an_earlier_version_fetches_only_what_changed() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = store(dir.path(), 1 << 30);
        let old = bytes(300_000, 5);
        let old_hash = s.put_reader(&old[..]).expect("put").hash;
        // Two bytes changed in group 3, and the tail grew by a few bytes.
        let mut new = old.clone();
        new[3 * 16384 + 100] ^= 0xff;
        new[3 * 16384 + 101] ^= 0xff;
        new.extend_from_slice(b"tail");
        let mut b = OutboardBuilder::new();
        b.update(&new);
        let ob = b.finish();
        let hash = BlobHash::from(ob.root);
        let a = s.begin_assembly(hash, new.len() as u64).expect("begin");
        let (base, base_size) = s.open_blob(&old_hash).expect("base");
        let reused = a
            .seed(&ob.pre_order, Some((&base, base_size)))
            .expect("seed");
        let groups = new.len().div_ceil(16384) as u64;
        // Group 3 and the last group (its bytes differ in length) are missing.
        let last = (groups - 1) * 16384;
        assert_eq!(
            a.missing(),
            vec![(3 * 16384, 4 * 16384 - 1), (last, new.len() as u64 - 1)]
        );
        assert_eq!(reused, new.len() as u64 - 16384 - (new.len() as u64 - last));
        for (first, last) in a.missing() {
            let enc = encode_to_vec(&new, &ob.pre_order, &group_ranges(first, last));
            a.add_range(&enc[..], first, last).expect("range");
        }
        assert!(a.missing().is_empty());
        let out = s.finish_assembly(a).expect("finish");
        assert_eq!(s.read_all(&out.hash).expect("read"), new);

        // An outboard that does not belong to the root seeds nothing.
        let other = s.begin_assembly(old_hash, old.len() as u64).expect("begin");
        assert!(matches!(
            other.seed(&ob.pre_order[..ob.pre_order.len() - 64], None),
            Err(StoreError::Verify(_))
        ));
        // Unchanged bytes are all reused: nothing is left to fetch.
        let mut b = OutboardBuilder::new();
        b.update(&old);
        let same = b.finish();
        let a = s.begin_assembly(old_hash, old.len() as u64).expect("begin");
        assert_eq!(
            a.seed(&same.pre_order, Some((&base, base_size)))
                .expect("seed"),
            old.len() as u64
        );
        assert!(a.missing().is_empty());
    }

    #[test]
    fn an_empty_blob_imports_from_its_verified_stream() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = store(dir.path(), 1 << 30);
        let mut b = OutboardBuilder::new();
        b.update(&[]);
        let ob = b.finish();
        let hash = BlobHash::from(ob.root);
        let enc = encode_to_vec(&[], &ob.pre_order, &all_ranges());
        let out = s.import_verified(hash, &enc[..]).expect("import");
        assert_eq!(out.size, 0);
        assert!(s.read_all(&hash).expect("read").is_empty());
    }

    #[test]
    fn import_verifies_every_group_and_names_the_bad_one() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = store(dir.path(), 1 << 30);
        let data = bytes(100_000, 7);
        let mut b = OutboardBuilder::new();
        b.update(&data);
        let ob = b.finish();
        let hash = BlobHash::from(ob.root);
        let enc = encode_to_vec(&data, &ob.pre_order, &all_ranges());
        // Corrupt the last byte: it lies in the last group (index 6).
        let mut bad = enc.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        match s.import_verified(hash, &bad[..]) {
            Err(StoreError::Verify(VerifyError::BadGroup { index: 6, .. })) => {}
            other => panic!("expected bad group 6, got {other:?}"),
        }
        assert!(s.info(&hash).expect("info").is_none());
        assert!(fs::read_dir(dir.path().join("tmp"))
            .expect("tmp")
            .next()
            .is_none());
        let out = s.import_verified(hash, &enc[..]).expect("good import");
        assert_eq!(out.size, 100_000);
        assert_eq!(s.read_all(&hash).expect("read"), data);
        assert_eq!(
            fs::read(s.outboard_path(&hash)).expect("outboard"),
            ob.pre_order
        );
        let _ = Item::Size(0);
    }

    #[test]
    fn reopen_cleans_temp_and_reconciles() {
        let dir = tempfile::tempdir().expect("tmp");
        let hash = {
            let s = store(dir.path(), 1 << 30);
            s.put_reader(&bytes(50_000, 9)[..]).expect("put").hash
        };
        // Simulate crashes: a stray temp file, an outboard whose bytes never arrived,
        // and a committed blob whose record was lost.
        fs::write(dir.path().join("tmp/123-0.data"), b"partial").expect("w");
        let orphan = BlobHash::from(blake3::hash(b"orphan"));
        fs::write(dir.path().join(format!("blobs/{orphan}.obao")), b"").expect("w");
        fs::remove_file(dir.path().join("meta.redb")).expect("rm");
        let s = store(dir.path(), 1 << 30);
        assert!(fs::read_dir(dir.path().join("tmp"))
            .expect("tmp")
            .next()
            .is_none());
        assert!(!dir.path().join(format!("blobs/{orphan}.obao")).exists());
        assert_eq!(s.info(&hash).expect("info").map(|i| i.size), Some(50_000));
        assert_eq!(s.used_bytes(), 50_000);
    }

    #[test]
    fn verify_finds_bit_rot() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = store(dir.path(), 1 << 30);
        let good = s.put_reader(&bytes(30_000, 1)[..]).expect("put").hash;
        let bad = s.put_reader(&bytes(30_000, 2)[..]).expect("put").hash;
        let path = dir.path().join(format!("blobs/{bad}"));
        let mut data = fs::read(&path).expect("read");
        data[20_000] ^= 4;
        fs::write(&path, data).expect("write");
        let (checked, corrupt) = verify_dir(dir.path(), true).expect("verify");
        assert_eq!(checked, 2);
        assert_eq!(corrupt.len(), 1);
        assert_eq!(corrupt[0].hash, bad);
        assert!(!path.exists(), "quarantined");
        assert!(s.open_blob(&good).is_ok());
    }
}
