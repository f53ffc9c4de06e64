//! The replicated ledger: [`crate::ledger`]'s rules, ordered by AlephBFT and kept
//! in redb.
//!
//! **Engine.** A committee of nodes orders transactions with AlephBFT
//! (`aleph-bft`, Cardinal Cryptography's asynchronous BFT atomic broadcast: safe
//! and live with f Byzantine members of 3f+1, no leader, no timing assumptions
//! for safety). Every member proposes a batch in each of its units: its clock
//! reading and pending transactions (each first by f+1 members chosen by
//! rendezvous hashing and by the member a client handed it to; by the others
//! only if it is still pending after a few seconds). AlephBFT outputs the same
//! sequence of units on every honest member; each replica applies them with
//! [`State::apply`] in that order, so all hold the same state. A transaction
//! that does not apply (bad signature, wrong nonce, ...) is skipped by every
//! replica alike; there is no block to reject, so a Byzantine member can waste
//! its own units but not stall or fork the ledger.
//!
//! **Clock and epochs.** The ledger's clock is the median of the latest clock
//! readings of the committee members seen in the order, so a lone member lying
//! about the time moves nothing. An epoch is one AlephBFT session: when the
//! clock passes the epoch's length, [`State::advance`] closes it (rewards,
//! reputation, next committee) at the same point of the order on every replica;
//! units after that point are ignored (their transactions stay in the mempools
//! and go into the next session), the session lingers briefly so slower members
//! can reach the same point, and session `epoch + 1` starts with the committee
//! the close chose.
//!
//! **Durability and catch-up.** Applied state and session progress are written
//! in one redb transaction per finalized batch: one row per account, stake,
//! report, closed epoch..., and only the rows the batch changed
//! (`chain/rows.rs`). AlephBFT's unit backup (every
//! unit, framed and checksummed, fsynced before it is sent) lets a member that
//! crashed re-join its session without equivocating; on restart the ordering is
//! replayed from the start of the session and the first `applied` units (already
//! in the state) are skipped. A replica that missed a whole session (it hears
//! members in a later one) fetches the state at the start of that epoch from the
//! committee and adopts it only when f+1 members return the same bytes.
//!
//! **Transport.** Consensus messages and transactions travel as signed
//! node-to-node HTTP requests (`POST /ledger/msg`, `POST /ledger/tx`) on the
//! node's own port; the binary provides the [`Transport`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aleph_bft::{
    DataProvider, Hasher, Index, Keychain, MultiKeychain, NodeCount, NodeIndex, OrderedUnit,
    Recipient, SignatureSet, SpawnHandle, TaskHandle, Terminator, UnitFinalizationHandler,
};
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use futures::channel::mpsc;
use futures::{FutureExt, StreamExt};
use parity_scale_codec::{Decode, Encode};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

mod rows;

use crate::identity::NodeKey;
use crate::ledger::{Key, Params, Reject, SignedTx, State};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const BOUNDARY: TableDefinition<u64, &[u8]> = TableDefinition::new("boundary");
/// Boundary states kept for catching-up peers.
const KEEP_BOUNDARIES: u64 = 8;
/// Which boundary snapshot to ask a member for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// The state at the start of this epoch.
    Epoch(u64),
    /// The newest epoch start kept, only if later than this epoch.
    NewestAfter(u64),
}
/// Largest consensus message accepted.
pub const MAX_MSG_BYTES: usize = 4 << 20;
/// Transactions one member puts in one unit.
const TXS_PER_UNIT: usize = 256;
/// A pending transaction is proposed again only after this long.
const REPROPOSE: Duration = Duration::from_secs(2);
/// Bytes held for a session this replica has not started yet.
const MAX_EARLY_BYTES: usize = 64 << 20;
/// Messages queued for the running session before new ones are dropped
/// (AlephBFT asks again for what it lacks).
const MAX_INBOX: usize = 50_000;
/// Pending transactions held.
const MAX_MEMPOOL: usize = 50_000;

/// How the replica reaches the other nodes (provided by the binary).
pub trait Transport: Send + Sync + 'static {
    /// Sends a consensus message (`POST /ledger/msg`); fire and forget.
    fn send_msg(&self, to: &Key, body: Vec<u8>);
    /// Hands a transaction to another member's mempool (`POST /ledger/tx`).
    fn send_tx(&self, to: &Key, body: Vec<u8>);
    /// Fetches the state at the start of `epoch` from a member (blocking);
    /// with [`Ask::NewestAfter`], the newest one it keeps if later than that.
    fn fetch_boundary(&self, from: &Key, ask: Ask) -> Option<Vec<u8>>;
}

/// The ledger's genesis and pace; every replica must share it.
#[derive(Debug, Clone)]
pub struct ChainConfig {
    pub dir: PathBuf,
    /// The first committee (node ids).
    pub genesis: Vec<Key>,
    pub params: Params,
    /// Delay between a member's units (one ordering round).
    pub unit_ms: u64,
}

/// Progress through the open session, stored with the state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct Progress {
    session: u64,
    /// Ordered units already reflected in the state (skipped on replay).
    applied: u64,
    /// Latest clock reading per committee position.
    clocks: Vec<u64>,
    /// The session's epoch has closed; later units are ignored.
    closed: bool,
}

/// What a member proposes in one unit.
#[derive(Debug, Serialize, Deserialize)]
struct Batch {
    time_ms: u64,
    txs: Vec<Vec<u8>>,
}

struct Pending {
    wire: Vec<u8>,
    proposed: Option<Instant>,
    /// When this member first held it.
    since: Instant,
    /// A client handed it to this member directly (then it proposes it at
    /// once too: no forwarding hop before the first proposal).
    local: bool,
}

/// A pending transaction is proposed at once by f+1 members chosen by its
/// hash (at least one of them honest) and by the member a client handed it to,
/// by the others only if it is still pending after this long (its chosen
/// proposers are down or silent): fewer copies in the order without depending
/// on any one member.
const BACKUP_AFTER: Duration = Duration::from_secs(6);

/// Whether `me` is one of the f+1 members that propose `(sender, nonce)` first:
/// rendezvous hashing over the committee.
fn first_proposer(committee: &[Key], me: &Key, sender: &Key, nonce: u64) -> bool {
    let weight = |m: &Key| {
        let mut h = blake3::Hasher::new();
        h.update(sender);
        h.update(&nonce.to_le_bytes());
        h.update(m);
        *h.finalize().as_bytes()
    };
    let mine = weight(me);
    let above = committee
        .iter()
        .filter(|m| *m != me && weight(m) > mine)
        .count();
    let f = committee.len().saturating_sub(1) / 3;
    above <= f
}

/// Messages held for later sessions: (session, body).
type Early = VecDeque<(u64, Vec<u8>)>;

/// One replica of the ledger.
pub struct Chain {
    key: NodeKey,
    me: Key,
    cfg: ChainConfig,
    db: redb::Database,
    state: RwLock<State>,
    progress: Mutex<Progress>,
    mempool: Mutex<BTreeMap<(Key, u64), Pending>>,
    transport: Arc<dyn Transport>,
    /// Inbox of the running session (its number and sender).
    inbox: Mutex<Option<(u64, mpsc::UnboundedSender<Vec<u8>>)>>,
    /// Messages in the inbox not yet taken by the engine.
    queued: Arc<AtomicUsize>,
    /// Messages for later sessions, and their total size.
    early: Mutex<(Early, usize)>,
    /// Highest session a committee member was heard in.
    newest_seen: AtomicU64,
    stop: AtomicBool,
    pub stats: Stats,
}

/// Counters for `/metrics` and `/ledger/status`.
#[derive(Default)]
pub struct Stats {
    pub units: AtomicU64,
    pub txs_applied: AtomicU64,
    pub txs_refused: AtomicU64,
    /// Copies of a transaction already applied (several members proposed it).
    pub txs_duplicate: AtomicU64,
    pub receipts_accepted: AtomicU64,
    pub receipts_refused: AtomicU64,
    pub catchups: AtomicU64,
    pub msgs_refused: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn db_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("ledger database: {e}"))
}

impl Chain {
    /// Opens (or makes) the replica's database in `cfg.dir` and loads its state.
    pub fn open(
        key: NodeKey,
        cfg: ChainConfig,
        transport: Arc<dyn Transport>,
    ) -> std::io::Result<Arc<Chain>> {
        std::fs::create_dir_all(&cfg.dir)?;
        let db = redb::Database::create(cfg.dir.join("ledger.redb")).map_err(db_err)?;
        let (state, progress) = {
            let w = db.begin_write().map_err(db_err)?;
            let loaded = {
                let mut meta = w.open_table(META).map_err(db_err)?;
                let mut rows = w.open_table(rows::ROWS).map_err(db_err)?;
                w.open_table(BOUNDARY).map_err(db_err)?;
                let state = rows::load(&meta, &rows).map_err(db_err)?;
                let progress = meta
                    .get("progress")
                    .map_err(db_err)?
                    .map(|v| postcard::from_bytes::<Progress>(v.value()));
                match (state, progress) {
                    (Some(s), Some(Ok(p))) => (s, p),
                    (None, None) => {
                        let s = State::genesis(cfg.genesis.clone());
                        let p = Progress::default();
                        rows::write(&mut meta, &mut rows, &State::default(), &s).map_err(db_err)?;
                        meta.insert(
                            "progress",
                            postcard::to_stdvec(&p).map_err(db_err)?.as_slice(),
                        )
                        .map_err(db_err)?;
                        (s, p)
                    }
                    _ => return Err(db_err("the progress record is damaged")),
                }
            };
            w.commit().map_err(db_err)?;
            loaded
        };
        let me = key.id().0;
        tracing::info!(
            epoch = state.epoch,
            applied = progress.applied,
            "ledger replica opened"
        );
        Ok(Arc::new(Chain {
            key,
            me,
            cfg,
            db,
            state: RwLock::new(state),
            progress: Mutex::new(progress),
            mempool: Mutex::new(BTreeMap::new()),
            transport,
            inbox: Mutex::new(None),
            queued: Arc::new(AtomicUsize::new(0)),
            early: Mutex::new((VecDeque::new(), 0)),
            newest_seen: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            stats: Stats::default(),
        }))
    }

    pub fn params(&self) -> &Params {
        &self.cfg.params
    }

    /// A copy of the committed state.
    pub fn state(&self) -> State {
        self.state.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// Reads the committed state without copying it.
    pub fn with_state<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        match self.state.read() {
            Ok(s) => f(&s),
            Err(p) => f(&p.into_inner()),
        }
    }

    pub fn mempool_len(&self) -> usize {
        self.mempool.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Ordered units applied in the open session.
    pub fn applied_units(&self) -> u64 {
        self.progress.lock().map(|p| p.applied).unwrap_or(0)
    }

    /// Starts the session loop on its own thread.
    pub fn start(self: &Arc<Chain>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let chain = self.clone();
        std::thread::Builder::new()
            .name("ledger".into())
            .spawn(move || chain.run())
    }

    /// Asks the session loop to stop.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(mut inbox) = self.inbox.lock() {
            inbox.take();
        }
    }

    /// Takes a transaction from a client or another node. A client's is checked
    /// (form, signature, not already committed) and passed on to the committee;
    /// one from a member only enters the mempool.
    pub fn submit(&self, wire: &[u8], from_peer: bool) -> Result<(), String> {
        let tx = SignedTx::decode(wire).map_err(|e| e.to_string())?;
        if !tx.verify() {
            return Err("transaction signature does not verify".into());
        }
        let committed = self.with_state(|s| s.nonces.get(&tx.sender).copied().unwrap_or(0));
        if tx.nonce < committed {
            return Err(format!(
                "nonce {} is already used (next is {committed})",
                tx.nonce
            ));
        }
        // A transaction that the committed state would refuse is refused now,
        // with its reason (a later one in a sender's sequence cannot be judged
        // before its predecessors are ordered, so it is only queued).
        if !from_peer && tx.nonce == committed {
            let mut probe = self.state();
            probe
                .apply(&self.cfg.params, &tx)
                .map_err(|e| e.to_string())?;
        }
        let committee = self.with_state(|s| s.committee.clone());
        if committee.contains(&self.me) {
            let mut pool = self.mempool.lock().map_err(|_| "mempool poisoned")?;
            if pool.len() >= MAX_MEMPOOL {
                return Err("mempool full; try again later".into());
            }
            pool.entry((tx.sender, tx.nonce)).or_insert(Pending {
                wire: wire.to_vec(),
                proposed: None,
                since: Instant::now(),
                local: !from_peer,
            });
        }
        if !from_peer {
            for member in committee.iter().filter(|m| **m != self.me) {
                self.transport.send_tx(member, wire.to_vec());
            }
        }
        Ok(())
    }

    /// Takes a consensus message from `from` (already authenticated as that
    /// node by the transport). Body: session (8 bytes LE) + AlephBFT message.
    pub fn deliver(&self, from: &Key, body: &[u8]) -> Result<(), &'static str> {
        if body.len() > MAX_MSG_BYTES {
            return Err("message too large");
        }
        let Some((session, _)) = split_session(body) else {
            return Err("truncated message");
        };
        let current = self.with_state(|s| s.epoch);
        if session < current {
            return Err("session is over");
        }
        if session == current && !self.with_state(|s| s.committee.contains(from)) {
            self.stats.msgs_refused.fetch_add(1, Ordering::Relaxed);
            return Err("sender is not in the committee");
        }
        if session > current {
            self.newest_seen.fetch_max(session, Ordering::Relaxed);
            self.hold_early(session, body);
            return Ok(());
        }
        if let Ok(inbox) = self.inbox.lock() {
            match inbox.as_ref() {
                Some((s, tx)) if *s == session => {
                    if self.queued.load(Ordering::Relaxed) >= MAX_INBOX {
                        return Err("replica is busy; message dropped");
                    }
                    self.queued.fetch_add(1, Ordering::Relaxed);
                    let _ = tx.unbounded_send(body[8..].to_vec());
                }
                _ => {
                    // Between sessions: keep it for the one about to start.
                    drop(inbox);
                    self.hold_early(session, body);
                }
            }
        }
        Ok(())
    }

    /// Keeps a message for a session not started yet, oldest dropped first
    /// beyond [`MAX_EARLY_BYTES`].
    fn hold_early(&self, session: u64, body: &[u8]) {
        let Ok(mut early) = self.early.lock() else {
            return;
        };
        let (queue, bytes) = &mut *early;
        while *bytes + body.len() > MAX_EARLY_BYTES {
            match queue.pop_front() {
                Some((_, b)) => *bytes -= b.len(),
                None => return,
            }
        }
        *bytes += body.len();
        queue.push_back((session, body.to_vec()));
    }

    /// The state at the start of `epoch` (postcard), for catching-up peers.
    pub fn boundary(&self, ask: Ask) -> Option<Vec<u8>> {
        let r = self.db.begin_read().ok()?;
        let t = r.open_table(BOUNDARY).ok()?;
        match ask {
            Ask::NewestAfter(after) => {
                let (k, v) = t.last().ok()??;
                (k.value() > after).then(|| v.value().to_vec())
            }
            Ask::Epoch(epoch) => {
                let v = t.get(epoch).ok()??;
                Some(v.value().to_vec())
            }
        }
    }

    /// Removes the unit backups of sessions that are over (a crash between an
    /// epoch's close and the backup's removal leaves one behind).
    fn drop_old_backups(&self) {
        let epoch = self.with_state(|s| s.epoch);
        let Ok(dir) = std::fs::read_dir(&self.cfg.dir) else {
            return;
        };
        for entry in dir.flatten() {
            let name = entry.file_name();
            let session = name
                .to_str()
                .and_then(|n| n.strip_prefix("session-"))
                .and_then(|n| n.strip_suffix(".units"))
                .and_then(|n| n.parse::<u64>().ok());
            if session.is_some_and(|s| s < epoch) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    fn run(self: Arc<Chain>) {
        self.drop_old_backups();
        let pool = match futures::executor::ThreadPool::builder()
            .pool_size(2)
            .name_prefix("ledger-")
            .create()
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("ledger: cannot start its executor: {e}");
                return;
            }
        };
        while !self.stop.load(Ordering::Relaxed) {
            let (session, committee) = self.with_state(|s| (s.epoch, s.committee.clone()));
            let Some(index) = committee.iter().position(|m| *m == self.me) else {
                // Not a member this epoch: follow by catching up from the committee.
                if !self.catch_up(&committee) {
                    std::thread::sleep(Duration::from_millis(500));
                }
                continue;
            };
            let finished = self.run_session(&pool, session, &committee, index);
            if !finished && !self.stop.load(Ordering::Relaxed) {
                // The session could not run (or stopped on its own): try to
                // catch up, then retry.
                if !self.catch_up(&committee) {
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }

    /// Runs one AlephBFT session until its epoch closes (true) or it ends for
    /// another reason (false).
    fn run_session(
        self: &Arc<Chain>,
        pool: &futures::executor::ThreadPool,
        session: u64,
        committee: &[Key],
        index: usize,
    ) -> bool {
        let n = committee.len();
        let keys: Vec<VerifyingKey> = committee
            .iter()
            .filter_map(|k| VerifyingKey::from_bytes(k).ok())
            .collect();
        if keys.len() != n {
            tracing::error!("ledger: the committee holds an invalid key");
            return false;
        }
        {
            let Ok(mut p) = self.progress.lock() else {
                return false;
            };
            if p.session != session || p.clocks.len() != n {
                *p = Progress {
                    session,
                    applied: 0,
                    clocks: vec![0; n],
                    closed: false,
                };
            }
        }
        let unit_ms = self.cfg.unit_ms.max(10);
        let mut delays = aleph_bft::default_delay_config();
        delays.unit_creation_delay = Arc::new(move |_| Duration::from_millis(unit_ms));
        delays.coord_request_delay = Arc::new(move |_| Duration::from_millis(unit_ms * 4));
        delays.parent_request_delay = Arc::new(move |_| Duration::from_millis(unit_ms * 4));
        delays.newest_request_delay = Arc::new(move |_| Duration::from_millis(unit_ms * 10));
        delays.unit_rebroadcast_interval_min = Duration::from_millis(unit_ms * 20);
        delays.unit_rebroadcast_interval_max = Duration::from_millis(unit_ms * 30);
        let config = match aleph_bft::create_config(
            NodeCount(n),
            NodeIndex(index),
            session,
            u16::MAX,
            delays,
            Duration::ZERO,
        ) {
            Ok(c) => c,
            Err(_) => {
                tracing::error!("ledger: invalid consensus configuration");
                return false;
            }
        };
        let (inbox_tx, inbox_rx) = mpsc::unbounded();
        if let Ok(mut inbox) = self.inbox.lock() {
            *inbox = Some((session, inbox_tx.clone()));
        }
        // Messages that came early for this session.
        self.queued.store(0, Ordering::Relaxed);
        if let Ok(mut early) = self.early.lock() {
            let (queue, bytes) = &mut *early;
            let held: Vec<(u64, Vec<u8>)> = queue.drain(..).collect();
            *bytes = 0;
            for (s, body) in held {
                if s == session {
                    self.queued.fetch_add(1, Ordering::Relaxed);
                    let _ = inbox_tx.unbounded_send(body[8..].to_vec());
                } else if s > session {
                    *bytes += body.len();
                    queue.push_back((s, body));
                }
            }
        }
        let backup = self.cfg.dir.join(format!("session-{session}.units"));
        let loader = match read_backup(&backup) {
            Ok(bytes) => futures::io::Cursor::new(bytes),
            Err(e) => {
                tracing::error!("ledger: cannot read {}: {e}", backup.display());
                return false;
            }
        };
        let saver = match BackupFile::open(&backup) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("ledger: cannot write {}: {e}", backup.display());
                return false;
            }
        };
        let (closed_tx, closed_rx) = std::sync::mpsc::channel();
        let handler = Finalizer {
            chain: self.clone(),
            session,
            seen: 0,
            closed: Some(closed_tx),
        };
        let provider = Provider {
            chain: self.clone(),
        };
        let network = Net {
            queued: self.queued.clone(),
            session,
            committee: committee.to_vec(),
            me: index,
            transport: self.transport.clone(),
            inbox: inbox_rx,
        };
        let keychain = Keys {
            signing: self.key.signing_key().clone(),
            index: NodeIndex(index),
            committee: keys,
        };
        let io = aleph_bft::LocalIO::new_with_unit_finalization_handler(
            provider, handler, saver, loader,
        );
        let (exit_tx, exit_rx) = futures::channel::oneshot::channel();
        let terminator = Terminator::create_root(exit_rx, "ledger");
        let spawner = Spawner(pool.clone());
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        pool.spawn_ok(async move {
            aleph_bft::run_session(config, io, network, keychain, spawner, terminator).await;
            let _ = done_tx.send(());
        });
        tracing::info!(session, members = n, index, "ledger session started");
        // Wait for the epoch to close, the session to end, or a stop.
        let mut closed = false;
        let mut closed_at = None;
        let linger = Duration::from_millis((unit_ms * 10).max(1000));
        loop {
            if done_rx.try_recv().is_ok() {
                break;
            }
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            if closed_rx.try_recv().is_ok() {
                closed = true;
                closed_at = Some(Instant::now());
            }
            if closed_at.is_some_and(|t| t.elapsed() >= linger) {
                break;
            }
            // Members have moved past this session and this replica cannot
            // finish it: catch up instead.
            if !closed && self.newest_seen.load(Ordering::Relaxed) > session + 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = exit_tx.send(());
        if let Ok(mut inbox) = self.inbox.lock() {
            inbox.take();
        }
        let _ = done_rx.recv_timeout(Duration::from_secs(10));
        if closed {
            // The session's units are no longer needed.
            self.drop_old_backups();
            let _ = std::fs::remove_file(&backup);
            tracing::info!(session, "ledger session closed");
        }
        closed
    }

    /// Applies one finalized unit's batch (or skips it when already applied or
    /// after the epoch's close). Returns true when this unit closed the epoch.
    fn apply_unit(&self, session: u64, creator: usize, data: Option<&[u8]>) -> bool {
        let (Ok(mut state), Ok(mut p)) = (self.state.write(), self.progress.lock()) else {
            return false;
        };
        if p.session != session || state.epoch != session || p.closed {
            return false;
        }
        let batch = data.and_then(|d| postcard::from_bytes::<Batch>(d).ok());
        // (`decode_batch` is the same decoding, for the fuzz target.)
        let mut next = state.clone();
        let mut np = p.clone();
        np.applied += 1;
        let mut closed = false;
        if let Some(batch) = batch {
            if let Some(c) = np.clocks.get_mut(creator) {
                *c = (*c).max(batch.time_ms);
            }
            // The median of the members' latest readings (only once a quorum
            // has spoken).
            let mut seen: Vec<u64> = np.clocks.iter().copied().filter(|&t| t > 0).collect();
            let quorum = NodeCount(np.clocks.len()).consensus_threshold().0;
            let clock = if seen.len() >= quorum {
                seen.sort_unstable();
                seen[(seen.len() - 1) / 2]
            } else {
                next.time_ms
            };
            if let Some(close) = next.advance(&self.cfg.params, clock) {
                tracing::info!(
                    epoch = close.epoch,
                    pool = close.pool,
                    nodes = close.rewards.len(),
                    "ledger epoch closed"
                );
                np.closed = true;
                closed = true;
            } else {
                for wire in &batch.txs {
                    let Ok(tx) = SignedTx::decode(wire) else {
                        self.stats.txs_refused.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    match next.apply(&self.cfg.params, &tx) {
                        Ok(out) => {
                            self.stats.txs_applied.fetch_add(1, Ordering::Relaxed);
                            self.stats
                                .receipts_accepted
                                .fetch_add(out.accepted_receipts as u64, Ordering::Relaxed);
                            self.stats
                                .receipts_refused
                                .fetch_add(out.rejected_receipts.len() as u64, Ordering::Relaxed);
                            for (i, why) in &out.rejected_receipts {
                                tracing::debug!(receipt = i, why = why.as_str(), "receipt refused");
                            }
                        }
                        Err(Reject::BadNonce { got, want }) if got < want => {
                            self.stats.txs_duplicate.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            self.stats.txs_refused.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!("ledger transaction skipped: {e}");
                        }
                    }
                }
            }
        }
        if let Err(e) = self.persist(&state, &next, &np, closed) {
            // Not applied: the replica stops here rather than diverge from disk.
            tracing::error!("ledger: cannot persist state: {e}");
            self.stop.store(true, Ordering::Relaxed);
            return false;
        }
        self.stats.units.fetch_add(1, Ordering::Relaxed);
        if closed {
            // The next session starts afresh.
            np = Progress {
                session: next.epoch,
                ..Progress::default()
            };
            let _ = self.persist_progress(&np);
        }
        *state = next;
        *p = np;
        drop(state);
        drop(p);
        self.prune_mempool();
        closed
    }

    /// Writes the change from `old` (what is on disk) to `state`, with the
    /// session progress, in one transaction; at an epoch's start also the whole
    /// state as that epoch's boundary snapshot.
    fn persist(
        &self,
        old: &State,
        state: &State,
        p: &Progress,
        boundary: bool,
    ) -> Result<(), String> {
        let pb = postcard::to_stdvec(p).map_err(|e| e.to_string())?;
        let w = self.db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut meta = w.open_table(META).map_err(|e| e.to_string())?;
            let mut rows = w.open_table(rows::ROWS).map_err(|e| e.to_string())?;
            rows::write(&mut meta, &mut rows, old, state)?;
            meta.insert("progress", pb.as_slice())
                .map_err(|e| e.to_string())?;
            if boundary {
                let s = postcard::to_stdvec(state).map_err(|e| e.to_string())?;
                let mut b = w.open_table(BOUNDARY).map_err(|e| e.to_string())?;
                b.insert(state.epoch, s.as_slice())
                    .map_err(|e| e.to_string())?;
                if state.epoch >= KEEP_BOUNDARIES {
                    b.remove(state.epoch - KEEP_BOUNDARIES)
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        w.commit().map_err(|e| e.to_string())
    }

    fn persist_progress(&self, p: &Progress) -> Result<(), String> {
        let pb = postcard::to_stdvec(p).map_err(|e| e.to_string())?;
        let w = self.db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut meta = w.open_table(META).map_err(|e| e.to_string())?;
            meta.insert("progress", pb.as_slice())
                .map_err(|e| e.to_string())?;
        }
        w.commit().map_err(|e| e.to_string())
    }

    /// Drops pending transactions whose nonce the ledger has used (read under
    /// the state lock; the mempool lock is never held while taking it
    /// elsewhere, so the order state → mempool is safe).
    fn prune_mempool(&self) {
        self.with_state(|s| {
            if let Ok(mut pool) = self.mempool.lock() {
                pool.retain(|(sender, nonce), _| {
                    *nonce >= s.nonces.get(sender).copied().unwrap_or(0)
                });
            }
        });
    }

    /// The next batch this member proposes.
    fn next_batch(&self) -> Vec<u8> {
        let mut txs = Vec::new();
        let committee = self.with_state(|s| s.committee.clone());
        if let Ok(mut pool) = self.mempool.lock() {
            for ((sender, nonce), p) in pool.iter_mut() {
                if txs.len() >= TXS_PER_UNIT {
                    break;
                }
                if p.proposed.is_some_and(|t| t.elapsed() < REPROPOSE) {
                    continue;
                }
                if !p.local
                    && p.since.elapsed() < BACKUP_AFTER
                    && !first_proposer(&committee, &self.me, sender, *nonce)
                {
                    continue;
                }
                p.proposed = Some(Instant::now());
                txs.push(p.wire.clone());
            }
        }
        // Test-only: a member that stuffs its units with junk and forgeries
        // (every replica must skip them alike).
        #[cfg(feature = "fault-injection")]
        if std::env::var_os("TESSERA_FAULT_LEDGER_JUNK_TXS").is_some() {
            txs.push(b"not a transaction".to_vec());
            let mut forged = crate::ledger::SignedTx::new_with(
                crate::ledger::Tx::Deposit { amount: 1 << 40 },
                0,
                &self.key,
            );
            forged.sender = [7; 32];
            txs.push(forged.encode());
        }
        #[allow(unused_mut)]
        let mut time_ms = now_ms();
        // Test-only: a member whose clock runs ahead (the median must hold).
        #[cfg(feature = "fault-injection")]
        if let Some(ahead) = std::env::var("TESSERA_FAULT_LEDGER_CLOCK_AHEAD_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            time_ms += ahead;
        }
        postcard::to_stdvec(&Batch { time_ms, txs }).unwrap_or_default()
    }

    /// Adopts the state at the start of the newest epoch a member was heard in,
    /// when f+1 members of `committee` return the same bytes for it.
    fn catch_up(&self, committee: &[Key]) -> bool {
        let current = self.with_state(|s| s.epoch);
        let target = self.newest_seen.load(Ordering::Relaxed);
        let ask = if target > current {
            Ask::Epoch(target)
        } else if !committee.contains(&self.me) {
            // A follower asks for the newest epoch start the members keep
            // (nothing comes back while it is not newer than its own).
            Ask::NewestAfter(current)
        } else {
            return false;
        };
        let f = committee.len().saturating_sub(1) / 3;
        let mut votes: HashMap<[u8; 32], (usize, Vec<u8>)> = HashMap::new();
        for member in committee.iter().filter(|m| **m != self.me) {
            let Some(bytes) = self.transport.fetch_boundary(member, ask) else {
                continue;
            };
            let h = *blake3::hash(&bytes).as_bytes();
            let e = votes.entry(h).or_insert((0, bytes));
            e.0 += 1;
            if e.0 > f {
                let Some(state) = decode_boundary(&e.1) else {
                    return false;
                };
                let wanted = match ask {
                    Ask::Epoch(e) => state.epoch == e,
                    Ask::NewestAfter(_) => true,
                };
                if !wanted || state.epoch <= current {
                    return false;
                }
                let state_epoch = state.epoch;
                let p = Progress {
                    session: state_epoch,
                    ..Progress::default()
                };
                let old = self.state();
                if let Err(e) = self.persist(&old, &state, &p, true) {
                    tracing::error!("ledger: cannot persist caught-up state: {e}");
                    return false;
                }
                if let (Ok(mut s), Ok(mut pp)) = (self.state.write(), self.progress.lock()) {
                    *s = state;
                    *pp = p;
                }
                self.stats.catchups.fetch_add(1, Ordering::Relaxed);
                tracing::info!(epoch = state_epoch, "ledger caught up from the committee");
                self.prune_mempool();
                return true;
            }
        }
        false
    }
}

fn split_session(body: &[u8]) -> Option<(u64, &[u8])> {
    let head: [u8; 8] = body.get(..8)?.try_into().ok()?;
    Some((u64::from_le_bytes(head), &body[8..]))
}

/// A boundary snapshot from another replica (untrusted until f+1 agree); also
/// the fuzz target's entry point.
pub fn decode_boundary(bytes: &[u8]) -> Option<State> {
    postcard::from_bytes::<State>(bytes).ok()
}

/// A unit's batch as a member proposed it (untrusted bytes from the order).
pub fn decode_batch(bytes: &[u8]) -> Option<(u64, usize)> {
    postcard::from_bytes::<Batch>(bytes)
        .ok()
        .map(|b| (b.time_ms, b.txs.len()))
}

/// Whether `body` is a well-formed consensus message (for the fuzz target and
/// for refusing junk before it reaches the engine).
pub fn decode_msg(body: &[u8]) -> Result<u64, &'static str> {
    let (session, rest) = split_session(body).ok_or("truncated message")?;
    Message::decode(&mut &rest[..]).map_err(|_| "malformed consensus message")?;
    Ok(session)
}

/// blake3 as AlephBFT's hasher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blake3;

impl Hasher for Blake3 {
    type Hash = [u8; 32];
    fn hash(s: &[u8]) -> [u8; 32] {
        *blake3::hash(s).as_bytes()
    }
}

/// An ed25519 signature in AlephBFT's codec.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Hash)]
pub struct Sig([u8; 64]);

type Message = aleph_bft::NetworkData<Blake3, Vec<u8>, Sig, SignatureSet<Sig>>;

/// The member's key and the committee's, by position.
#[derive(Clone)]
struct Keys {
    signing: SigningKey,
    index: NodeIndex,
    committee: Vec<VerifyingKey>,
}

impl Index for Keys {
    fn index(&self) -> NodeIndex {
        self.index
    }
}

impl Keychain for Keys {
    type Signature = Sig;
    fn node_count(&self) -> NodeCount {
        NodeCount(self.committee.len())
    }
    fn sign(&self, msg: &[u8]) -> Sig {
        Sig(self.signing.sign(msg).to_bytes())
    }
    fn verify(&self, msg: &[u8], sgn: &Sig, index: NodeIndex) -> bool {
        self.committee.get(index.0).is_some_and(|k| {
            k.verify(msg, &ed25519_dalek::Signature::from_bytes(&sgn.0))
                .is_ok()
        })
    }
}

impl MultiKeychain for Keys {
    type PartialMultisignature = SignatureSet<Sig>;
    fn bootstrap_multi(&self, signature: &Sig, index: NodeIndex) -> SignatureSet<Sig> {
        use aleph_bft::PartialMultisignature;
        SignatureSet::with_size(self.node_count()).add_signature(signature, index)
    }
    fn is_complete(&self, msg: &[u8], partial: &SignatureSet<Sig>) -> bool {
        let valid = partial
            .iter()
            .filter(|(i, s)| self.verify(msg, s, *i))
            .count();
        valid >= self.node_count().consensus_threshold().0
    }
}

struct Net {
    queued: Arc<AtomicUsize>,
    session: u64,
    committee: Vec<Key>,
    me: usize,
    transport: Arc<dyn Transport>,
    inbox: mpsc::UnboundedReceiver<Vec<u8>>,
}

#[async_trait::async_trait]
impl aleph_bft::Network<Message> for Net {
    fn send(&self, data: Message, recipient: Recipient) {
        let mut body = self.session.to_le_bytes().to_vec();
        data.encode_to(&mut body);
        match recipient {
            Recipient::Everyone => {
                for (i, k) in self.committee.iter().enumerate() {
                    if i != self.me {
                        self.transport.send_msg(k, body.clone());
                    }
                }
            }
            Recipient::Node(NodeIndex(i)) => {
                if let Some(k) = self.committee.get(i) {
                    if i != self.me {
                        self.transport.send_msg(k, body);
                    }
                }
            }
        }
    }

    async fn next_event(&mut self) -> Option<Message> {
        loop {
            let bytes = self.inbox.next().await?;
            let _ = self
                .queued
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| q.checked_sub(1));
            if let Ok(m) = Message::decode(&mut &bytes[..]) {
                return Some(m);
            }
        }
    }
}

struct Provider {
    chain: Arc<Chain>,
}

#[async_trait::async_trait]
impl DataProvider for Provider {
    type Output = Vec<u8>;
    async fn get_data(&mut self) -> Option<Vec<u8>> {
        Some(self.chain.next_batch())
    }
}

struct Finalizer {
    chain: Arc<Chain>,
    session: u64,
    /// Ordered units seen in this run of the session (to skip the applied ones).
    seen: u64,
    closed: Option<std::sync::mpsc::Sender<()>>,
}

impl UnitFinalizationHandler for Finalizer {
    type Data = Vec<u8>;
    type Hasher = Blake3;
    fn batch_finalized(&mut self, batch: Vec<OrderedUnit<Vec<u8>, Blake3>>) {
        for unit in batch {
            self.seen += 1;
            let applied = self.chain.applied_units();
            let done = self.chain.with_state(|s| s.epoch != self.session);
            if done || self.seen <= applied {
                if done {
                    if let Some(c) = self.closed.take() {
                        let _ = c.send(());
                    }
                }
                continue;
            }
            if self
                .chain
                .apply_unit(self.session, unit.creator.0, unit.data.as_deref())
            {
                if let Some(c) = self.closed.take() {
                    let _ = c.send(());
                }
            }
        }
    }
}

#[derive(Clone)]
struct Spawner(futures::executor::ThreadPool);

impl SpawnHandle for Spawner {
    fn spawn(&self, _name: &'static str, task: impl futures::Future<Output = ()> + Send + 'static) {
        self.0.spawn_ok(task);
    }

    fn spawn_essential(
        &self,
        _name: &'static str,
        task: impl futures::Future<Output = ()> + Send + 'static,
    ) -> TaskHandle {
        let (remote, handle) = task.remote_handle();
        self.0.spawn_ok(remote);
        Box::pin(handle.map(Ok))
    }
}

/// The unit backup: each write (one unit) is framed with its length and a
/// checksum and fsynced on flush, so a crash mid-write leaves a torn last frame
/// that [`read_backup`] drops instead of a file the engine cannot load.
struct BackupFile {
    file: std::fs::File,
}

impl BackupFile {
    fn open(path: &Path) -> std::io::Result<BackupFile> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(BackupFile { file })
    }
}

impl futures::AsyncWrite for BackupFile {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut frame = Vec::with_capacity(buf.len() + 12);
        frame.extend_from_slice(&(buf.len() as u32).to_le_bytes());
        frame.extend_from_slice(&blake3::hash(buf).as_bytes()[..8]);
        frame.extend_from_slice(buf);
        Poll::Ready(self.file.write_all(&frame).map(|_| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.file.sync_data())
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.file.sync_data())
    }
}

/// The whole frames of a backup file, unframed; a torn or corrupt tail is cut
/// off (and truncated on disk so new frames follow whole ones).
fn read_backup(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    match std::fs::File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut raw)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut at = 0;
    while let Some(head) = raw.get(at..at + 12) {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let Some(body) = raw.get(at + 12..at + 12 + len) else {
            break;
        };
        if blake3::hash(body).as_bytes()[..8] != head[4..12] {
            break;
        }
        out.extend_from_slice(body);
        at += 12 + len;
    }
    if at < raw.len() {
        tracing::warn!(
            "ledger: dropping a torn tail of {} bytes from {}",
            raw.len() - at,
            path.display()
        );
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.set_len(at as u64)?;
        f.sync_data()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_backup_tail_is_dropped() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("s.units");
        {
            let mut b = BackupFile::open(&path).expect("open");
            let waker = futures::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            for unit in [&b"first"[..], b"second"] {
                let r = futures::AsyncWrite::poll_write(Pin::new(&mut b), &mut cx, unit);
                assert!(matches!(r, Poll::Ready(Ok(_))));
            }
        }
        // A crash in the middle of the third frame.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("reopen");
        f.write_all(&[9, 0, 0, 0, 1, 2]).expect("torn");
        drop(f);
        assert_eq!(read_backup(&path).expect("read"), b"firstsecond");
        // Truncated on disk: a later read sees the same.
        assert_eq!(read_backup(&path).expect("read"), b"firstsecond");
        assert!(read_backup(&dir.path().join("none"))
            .expect("none")
            .is_empty());
    }

    #[test]
    fn each_transaction_has_f_plus_one_first_proposers() {
        let committee: Vec<Key> = (1..=7u8).map(|i| [i; 32]).collect();
        for nonce in 0..50 {
            let n = committee
                .iter()
                .filter(|m| first_proposer(&committee, m, &[9; 32], nonce))
                .count();
            assert_eq!(n, 3, "f = 2 of 7: three first proposers");
        }
        let four: Vec<Key> = committee[..4].to_vec();
        let n = four
            .iter()
            .filter(|m| first_proposer(&four, m, &[9; 32], 1))
            .count();
        assert_eq!(n, 2);
    }

    #[test]
    fn junk_consensus_messages_are_refused() {
        assert!(decode_msg(b"").is_err());
        assert!(decode_msg(&[0; 7]).is_err());
        assert!(decode_msg(&[0xff; 64]).is_err());
    }
}
