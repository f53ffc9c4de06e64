//! The per-core HTTP/1.1 server.
//!
//! `cores` threads, each pinned to its CPU, each running its own monoio io_uring
//! event loop with its own `SO_REUSEPORT` listener: the kernel spreads connections
//! over the cores and a connection never leaves the core that accepted it. A core
//! shares nothing with the others on the request path: its counters are its own
//! ([`crate::metrics::CoreStats`]), its histogram is local, and the only cross-thread
//! traffic is a bounded lock-free channel of last-access times for eviction
//! (`try_send`, dropped when full) and the store's mutex on uploads and admin calls.
//!
//! Per connection: one read buffer (the head limit), one write buffer and, once the
//! first blob is sent, one pipe; all reused for every request on the connection.
//! Plain blob bodies go `splice(file -> pipe -> socket)`; the response head is
//! written into the same pipe so head and body leave in one send. A verified
//! stream is checked a subtree at a time as it is sent, or, once the blob has
//! been asked for whole twice, spliced the same way from its kept copy
//! (`blobs/<hash>.bao`, see [`crate::store`]).

use std::cell::{Cell, RefCell};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use hdrhistogram::Histogram;
use monoio::buf::IoBufMut;
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent,
    Canceller,
};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};

use crate::config::{NodeConfig, OnMiss};
use crate::hash::BlobHash;
use crate::http::{
    self, BlobTag, Body, ChunkedDecoder, ConditionalOutcome, Head, Method, ParseError,
    Preconditions, RangeRequest, Route, Status, Validators,
};
use crate::metrics::{bump, new_latency_histogram, CoreStats, Metrics};
use crate::store::{now_secs, Store, StoreError, STREAM_SUFFIX};
use crate::sys::{self, Pipe};
use crate::verified;

pub mod control;
mod h3;
mod readbuf;
mod routes;
pub mod services;
mod slot;
mod work;
mod ws;
pub use control::{ControlPlane, NoControlPlane};
pub use h3::{ensure_tls, exercise as exercise_h3_request};
use readbuf::ReadBuf;
use routes::{Plan, Reply};

/// A core's maps keyed by blob hash, looked up on every request. Their keys
/// are the hashes of stored blobs, which nobody can choose, so a fast seeded
/// hash (foldhash) does instead of SipHash.
type BlobMap<V> = std::collections::HashMap<BlobHash, V, foldhash::fast::RandomState>;

/// Batches of last-access times in flight to the maintenance thread; beyond this
/// they are dropped (recency for eviction is approximate by design).
const TOUCH_BATCHES_QUEUED: usize = 256;
/// Distinct blobs a core remembers as read between two flushes; more are dropped.
const TOUCHED_PER_CORE: usize = 8192;
/// Upload bodies are read in pieces of this size.
const UPLOAD_BUF_BYTES: usize = 256 * 1024;
/// Upload buffers a core keeps for reuse.
const UPLOAD_BUFS_KEPT: usize = 8;
/// Threads that run blocking store work (commits and admin operations).
const STORE_IO_THREADS: usize = 4;
/// How often a core copies out its histogram and checks for shutdown.
const TICK: Duration = Duration::from_millis(50);
const PUBLISH_EVERY_TICKS: u32 = 20;
/// Spare buffers unused this long (10 ticks, 500 ms) are freed.
const DECAY_EVERY_TICKS: u32 = 10;
/// Verified streams are written in pieces of about this size.
const VERIFIED_FLUSH_BYTES: usize = 64 * 1024;
/// A connection's write buffer to begin with, and the most it keeps between
/// requests (a verified stream grows it well beyond).
const WBUF_BYTES: usize = 1024;
const WBUF_KEPT_BYTES: usize = 64 * 1024;
/// Spare buffers and pipes of each kind a core keeps however long they go
/// unused (more are kept while they are used; see `Spares`).
const SPARES_KEPT_WARM: usize = 8;
/// Request slots (pooled memory for the request handlers) beyond one for each
/// connection below the parking count.
const REQUEST_SLOTS_ABOVE_PARKING: usize = 64;
/// Verified-stream buffers (256 KiB each) a core keeps for reuse.
const VERIFY_SCRATCH_KEPT: usize = 4;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("core {core}: cannot start io_uring runtime: {source} (io_uring needs Linux 5.11+ and must not be disabled by kernel.io_uring_disabled or a seccomp filter)")]
    Runtime { core: usize, source: io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: io::Error,
    },
    #[error("core thread failed: {0}")]
    Thread(String),
    #[error("HTTP/3: {0}")]
    Tls(String),
    #[error("services: {0}")]
    Services(String),
}

/// What every core shares (read-only after start, apart from the store's own locks).
pub struct Shared {
    pub config: NodeConfig,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub shutdown: Arc<AtomicBool>,
    touches: Sender<Vec<(BlobHash, u64)>>,
    /// A core freed spare buffers: the maintenance thread trims the heap.
    trim_heap: Arc<AtomicBool>,
    limits: http::Limits,
    /// Threads for the store work that blocks (fsync, renames, redb commits), shared
    /// by all cores so that an upload's commit never stalls an event loop.
    blocking: monoio::blocking::DefaultThreadPool,
    /// `Alt-Svc` header line advertising HTTP/3 on our port (empty without HTTP/3).
    alt_svc: Vec<u8>,
    /// Certificate and key for HTTP/3, checked at start.
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    pub hooks: Hooks,
    /// The services, their mounts and worker pools.
    pub services: services::Services,
}

/// What the binary plugs into the data plane: the services, the control
/// plane's typed answers, and the channel for the gossip datagrams that share
/// the node's UDP port.
#[derive(Clone)]
pub struct Hooks {
    /// The services the node runs (see the `service-api` crate); their mounts
    /// are claimed at start, and two claims on one mount stop the node.
    pub services: Vec<service_api::Built>,
    /// The control plane's answers (members, routing, fetch on miss,
    /// replication, node signatures, receipts, the ledger).
    pub control: Arc<dyn ControlPlane>,
    /// Datagrams on the node's UDP port that are not QUIC go here (gossip). QUIC v1
    /// always sets the fixed bit (0x40) of the first byte; a first byte below 0x40
    /// is never QUIC, so one port carries both. Bounded: when full, dropped.
    pub control_inbox: Option<flume::Sender<(Vec<u8>, std::net::SocketAddr)>>,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            services: Vec::new(),
            control: Arc::new(NoControlPlane),
            control_inbox: None,
        }
    }
}

/// A `/ledger/...` request for the control plane.
pub struct LedgerCall {
    pub route: crate::http::LedgerRoute,
    pub body: Vec<u8>,
    /// The node that signed the request, when one did and it checked out.
    pub peer: Option<[u8; 32]>,
}

/// The control plane's answer to a [`LedgerCall`] (and to a receipts batch):
/// what either protocol sends back.
pub struct LedgerReply {
    pub status: Status,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// A running server; [`Server::wait`] blocks until every core has stopped.
pub struct Server {
    cores: Vec<std::thread::JoinHandle<()>>,
    maintenance: Option<std::thread::JoinHandle<()>>,
    pub shared: Arc<Shared>,
}

impl Server {
    /// Starts every core; returns once all of them listen (or the first error).
    pub fn start(
        config: NodeConfig,
        store: Arc<Store>,
        shutdown: Arc<AtomicBool>,
    ) -> Result<Server, ServerError> {
        Self::start_with(config, store, shutdown, Hooks::default())
    }

    /// [`Server::start`] with the control plane's hooks.
    pub fn start_with(
        config: NodeConfig,
        store: Arc<Store>,
        shutdown: Arc<AtomicBool>,
        hooks: Hooks,
    ) -> Result<Server, ServerError> {
        config.validate().map_err(ServerError::Config)?;
        if let Err(e) = sys::raise_fd_limit() {
            tracing::warn!("cannot raise the open-file limit: {e}");
        }
        let n = config.core_count();
        let tls = if config.h3 {
            let (cert, key) = h3::ensure_tls(&config).map_err(ServerError::Tls)?;
            // Load once here so a bad certificate is a clear error before any core starts.
            h3::quic_config(&config, &cert, &key).map_err(ServerError::Tls)?;
            Some((cert, key))
        } else {
            None
        };
        let alt_svc = if config.h3 {
            format!("Alt-Svc: h3=\":{}\"; ma=86400\r\n", config.listen.port()).into_bytes()
        } else {
            Vec::new()
        };
        let services = services::Services::start(&hooks.services).map_err(ServerError::Services)?;
        let (forward_txs, mut forward_rxs): (Vec<_>, Vec<_>) =
            (0..n).map(|_| flume::bounded(h3::FORWARD_QUEUE)).unzip();
        let (touch_tx, touch_rx) = crossbeam_channel::bounded(TOUCH_BATCHES_QUEUED);
        let trim_heap = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            limits: http::Limits {
                max_header_bytes: config.max_header_bytes,
                max_headers: config.max_headers,
            },
            config,
            store: store.clone(),
            metrics: Arc::new(Metrics::new(n)),
            shutdown: shutdown.clone(),
            touches: touch_tx,
            trim_heap: trim_heap.clone(),
            blocking: monoio::blocking::DefaultThreadPool::new(STORE_IO_THREADS),
            alt_svc,
            tls,
            hooks,
            services,
        });
        let maintenance = {
            let store = store.clone();
            let shutdown = shutdown.clone();
            std::thread::Builder::new()
                .name("tessera-maint".into())
                .spawn(move || maintenance_loop(&store, &touch_rx, &shutdown, &trim_heap))
                .map_err(|e| ServerError::Thread(e.to_string()))?
        };
        let cpus = allowed_cpus();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut cores = Vec::with_capacity(n);
        for core in 0..n {
            let shared = shared.clone();
            let ready = ready_tx.clone();
            let forward = (forward_txs.clone(), forward_rxs.remove(0));
            let cpu = if cpus.is_empty() {
                None
            } else {
                Some(cpus[core % cpus.len()])
            };
            let handle = std::thread::Builder::new()
                .name(format!("tessera-core-{core}"))
                .spawn(move || core_main(core, cpu, shared, ready, forward))
                .map_err(|e| ServerError::Thread(e.to_string()))?;
            cores.push(handle);
        }
        drop(ready_tx);
        let mut server = Server {
            cores,
            maintenance: Some(maintenance),
            shared,
        };
        for _ in 0..n {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    server.stop();
                    return Err(e);
                }
                Err(_) => {
                    server.stop();
                    return Err(ServerError::Thread("a core exited during start".into()));
                }
            }
        }
        Ok(server)
    }

    fn stop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.join();
    }

    fn join(&mut self) {
        for h in self.cores.drain(..) {
            let _ = h.join();
        }
        if let Some(m) = self.maintenance.take() {
            let _ = m.join();
        }
    }

    /// Blocks until shutdown has been requested and every core has drained.
    pub fn wait(mut self) {
        self.join();
    }
}

/// CPUs this process may run on, so cores pin inside a cgroup's or taskset's mask.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `i` is below CPU_SETSIZE, the bound CPU_ISSET requires.
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect()
}

/// Off the cores: records the blobs' last access times, and gives the heap's
/// free memory back to the kernel (at most once a second) after a core freed
/// spare buffers.
fn maintenance_loop(
    store: &Store,
    touches: &Receiver<Vec<(BlobHash, u64)>>,
    shutdown: &AtomicBool,
    trim_heap: &AtomicBool,
) {
    let mut trimmed = Instant::now();
    loop {
        if trimmed.elapsed() >= Duration::from_secs(1) && trim_heap.swap(false, Ordering::Relaxed) {
            sys::trim_heap();
            trimmed = Instant::now();
        }
        let stopping = shutdown.load(Ordering::Relaxed);
        // Woken often enough that a trim follows a core's freeing closely.
        match touches.recv_timeout(Duration::from_millis(250)) {
            Ok(batch) => {
                if let Err(e) = store.touch_batch(&batch) {
                    tracing::warn!("recording last access times failed: {e}");
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
        if stopping && touches.is_empty() {
            break;
        }
    }
}

/// One core's monoio runtime. Its ring is set up with `IORING_SETUP_COOP_TASKRUN`
/// where the kernel has it (5.19 and later): a completion that arrives while the
/// core runs its tasks waits for the core's next system call (there is one per
/// request at least) rather than interrupting it with an inter-processor
/// interrupt, which on a virtual machine costs an exit each (about 15% of a core
/// serving 4 KiB GETs; `bench/RESULTS.md`). A kernel without it refuses the flag,
/// and the ring is set up without it.
fn build_runtime(
    entries: u32,
    blocking: &monoio::blocking::DefaultThreadPool,
) -> io::Result<(
    monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>,
    bool,
)> {
    let build = |coop: bool| {
        let mut urb = io_uring::IoUring::builder();
        if coop {
            // Test builds only: act as a kernel before 5.19, which refuses the flag.
            #[cfg(feature = "fault-injection")]
            if std::env::var_os("TESSERA_FAULT_NO_COOP_TASKRUN").is_some() {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            urb.setup_coop_taskrun();
        }
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .uring_builder(urb)
            .with_entries(entries)
            .attach_thread_pool(Box::new(blocking.clone()))
            .enable_timer()
            .build()
    };
    match build(true) {
        Ok(rt) => Ok((rt, true)),
        Err(e) => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::info!(
                    "io_uring without cooperative task running (needs Linux 5.19): {e}; \
                     each completion may interrupt its core"
                )
            });
            build(false).map(|rt| (rt, false))
        }
    }
}

fn core_main(
    index: usize,
    cpu: Option<usize>,
    shared: Arc<Shared>,
    ready: std::sync::mpsc::Sender<Result<(), ServerError>>,
    forward: (Vec<h3::ForwardTx>, h3::ForwardRx),
) {
    if let Some(cpu) = cpu {
        if let Err(e) = monoio::utils::bind_to_cpu_set([cpu]) {
            tracing::warn!(core = index, cpu, "cannot pin to CPU: {e:?}");
        }
    }
    let runtime = build_runtime(shared.config.io_uring_entries, &shared.blocking);
    let mut runtime = match runtime {
        Ok((rt, coop)) => {
            shared.metrics.cores[index]
                .io_uring_cooperative
                .store(u64::from(coop), Ordering::Relaxed);
            rt
        }
        Err(source) => {
            let _ = ready.send(Err(ServerError::Runtime {
                core: index,
                source,
            }));
            return;
        }
    };
    runtime.block_on(async move {
        let addr = shared.config.listen;
        let opts = ListenerOpts::new().reuse_port(true).backlog(4096);
        let listener = match TcpListener::bind_with_config(addr, &opts) {
            Ok(l) => l,
            Err(source) => {
                let _ = ready.send(Err(ServerError::Listen { addr, source }));
                return;
            }
        };
        let endpoint = match &shared.tls {
            Some((cert, key)) => {
                let made = h3::bind_udp(&shared.config, index)
                    .map_err(|source| ServerError::Listen { addr, source })
                    .and_then(|(socket, _gro)| {
                        let qc =
                            h3::quic_config(&shared.config, cert, key).map_err(ServerError::Tls)?;
                        h3::Endpoint::new(socket, addr, qc, index, forward.0, forward.1)
                            .map_err(|source| ServerError::Listen { addr, source })
                    });
                match made {
                    Ok(ep) => Some(ep),
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                }
            }
            None => None,
        };
        let held = match Held::new() {
            Ok(h) => h,
            Err(source) => {
                let _ = ready.send(Err(ServerError::Runtime {
                    core: index,
                    source,
                }));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let core = Rc::new(Core {
            index,
            shared: shared.clone(),
            live: Cell::new(0),
            in_flight: Cell::new(0),
            stopping: Cell::new(false),
            histogram: RefCell::new(new_latency_histogram()),
            files: RefCell::new(FdCache::new(shared.config.open_file_cache_entries)),
            touched: RefCell::new(BlobMap::with_capacity_and_hasher(
                TOUCHED_PER_CORE,
                Default::default(),
            )),
            now_secs: Cell::new(now_secs()),
            tick_now: Cell::new(Instant::now()),
            date: Cell::new(http_date(now_secs())),
            upload_bufs: RefCell::new(Vec::new()),
            parked: RefCell::new(ParkPool::default()),
            // Every connection below the parking count may be in a request.
            slots: slot::Slots::new(
                shared.config.park_idle_above_connections + REQUEST_SLOTS_ABOVE_PARKING,
            ),
            idle: RefCell::new(IdleList::default()),
            held: RefCell::new(held),
            epoch: Instant::now(),
            keepers: RefCell::new(Keepers::default()),
            verify_scratch: RefCell::new(Vec::new()),
            stream_pieces: Cell::new(Vec::new()),
            h3_open: Cell::new(false),
        });
        let ticker = monoio::spawn(tick_loop(core.clone()));
        let waker = monoio::spawn(held_loop(core.clone()));
        let quic = endpoint.map(|ep| {
            core.h3_open.set(true);
            let core = core.clone();
            monoio::spawn(async move {
                h3::run(core.clone(), ep).await;
                core.h3_open.set(false);
            })
        });
        accept_loop(&core, &listener).await;
        drop(listener);
        // Drain: requests in flight get the grace period; idle connections are
        // closed when the runtime drops their tasks.
        let deadline = Instant::now() + Duration::from_millis(shared.config.shutdown_grace_ms);
        // HTTP/3 drains on its own clock, started at most a tick apart from
        // this one, and then sends its closes.
        let h3_deadline = deadline + TICK + 2 * h3::STOP_CLOSE_WAIT;
        while (core.in_flight.get() > 0 && Instant::now() < deadline)
            || (core.h3_open.get() && Instant::now() < h3_deadline)
        {
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        if core.in_flight.get() > 0 {
            tracing::warn!(
                core = index,
                in_flight = core.in_flight.get(),
                "grace period over, closing requests still in flight"
            );
        }
        core.stats().publish(&core.histogram.borrow());
        flush_touches(&core);
        drop(ticker);
        drop(waker);
        drop(quic);
    });
}

/// One core's state; lives on its core only (`Rc`, `Cell`).
struct Core {
    index: usize,
    shared: Arc<Shared>,
    live: Cell<usize>,
    in_flight: Cell<usize>,
    stopping: Cell<bool>,
    histogram: RefCell<Histogram<u64>>,
    files: RefCell<FdCache>,
    /// Blobs read since the last flush, with the time (deduplicated per blob).
    touched: RefCell<BlobMap<u64>>,
    /// Wall-clock seconds, refreshed each tick.
    now_secs: Cell<u64>,
    /// The monotonic clock as of the last tick, for deadlines that a tick's
    /// lateness does not matter to (idle timeouts, the open-file cache's age):
    /// no clock read per request for them.
    tick_now: Cell<Instant>,
    /// `Date` (RFC 9110 §6.6.1) as of the last tick, IMF-fixdate, with the
    /// second it was formatted in: formatted once a second, not per response.
    date: Cell<(u64, [u8; DATE_LEN])>,
    /// Reusable upload body buffers.
    upload_bufs: RefCell<Vec<ReadBuf>>,
    /// Buffers and pipes of parked (idle, buffer-less) keep-alive connections.
    parked: RefCell<ParkPool>,
    /// Memory the request handlers run in, outside the connections' tasks.
    slots: slot::Slots,
    /// Idle keep-alive connections, for their idle timeout.
    idle: RefCell<IdleList>,
    /// Idle keep-alive connections without a task, in the kernel's epoll set.
    held: RefCell<Held>,
    /// What `Held`'s deadlines count milliseconds from.
    epoch: Instant,
    /// The idle reads of the connections that kept their buffers (the core
    /// had at most `park_idle_above_connections` when they went idle), to be
    /// cancelled so that they park: all of them once the core has more, and
    /// each one that has waited `park_idle_after_ms`.
    keepers: RefCell<Keepers>,
    /// Reusable buffers for checking verified streams a subtree at a time.
    verify_scratch: RefCell<Vec<(verified::Scratch, Vec<libc::iovec>)>>,
    /// Where a verified stream's pieces lie in its kept copy (reused).
    stream_pieces: Cell<Vec<(u64, u64)>>,
    /// The HTTP/3 loop still has connections to close.
    h3_open: Cell<bool>,
}

impl Core {
    fn stats(&self) -> &CoreStats {
        &self.shared.metrics.cores[self.index]
    }

    /// Milliseconds since the core started (the clock of `Held`'s deadlines).
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Opens a blob's bytes through the core's open-file cache.
    fn open_blob(&self, hash: &BlobHash) -> io::Result<Option<(Rc<OwnedFd>, u64)>> {
        Ok(self.open_blob_cached(hash)?.map(|o| (o.fd, o.size)))
    }

    /// Opens a blob through the core's cache. A blob of at most
    /// `copy_body_max_bytes` comes with its bytes, read once when it is opened.
    fn open_blob_cached(&self, hash: &BlobHash) -> io::Result<Option<Opened>> {
        let store = &self.shared.store;
        let mut cache = self.files.borrow_mut();
        let now = self.tick_now.get();
        if let Some(hit) = cache.get(hash, store.generation(), now) {
            bump(&self.stats().open_cache_hits, 1);
            return Ok(Some(hit));
        }
        let Some((fd, size)) = sys::open_at(store.blobs_dir_fd(), hash, b"")? else {
            return Ok(None);
        };
        let body = if cache.capacity > 0 && size <= self.shared.config.copy_body_max_bytes as u64 {
            let mut bytes = vec![0u8; size as usize];
            sys::read_exact_at(fd.as_raw_fd(), &mut bytes, 0)?;
            Some(Rc::<[u8]>::from(bytes))
        } else {
            None
        };
        let opened = Opened {
            fd: Rc::new(fd),
            size,
            body,
            mapping: Rc::default(),
        };
        cache.insert(*hash, opened.clone(), now);
        Ok(Some(opened))
    }
}

/// An open blob from a core's cache.
#[derive(Clone)]
struct Opened {
    fd: Rc<OwnedFd>,
    size: u64,
    /// The whole blob, for blobs of at most `copy_body_max_bytes`.
    body: Option<Rc<[u8]>>,
    /// The blob mapped into memory, made by the first HTTP/3 answer that sends
    /// from it and shared by the next ones while the entry lives: no `mmap`,
    /// page faults and `munmap` per request.
    mapping: Rc<std::cell::OnceCell<Rc<memmap2::Mmap>>>,
}

impl Opened {
    /// The blob mapped (once per cache entry).
    fn mapping(&self) -> io::Result<Rc<memmap2::Mmap>> {
        if let Some(m) = self.mapping.get() {
            return Ok(m.clone());
        }
        // SAFETY: blobs are immutable once committed (written to tmp/, renamed in,
        // never modified in place), so the mapping's bytes cannot change under us;
        // removing the file leaves the mapping valid.
        let m = Rc::new(unsafe { memmap2::Mmap::map(self.fd.as_raw_fd()) }?);
        let _ = self.mapping.set(m.clone());
        Ok(m)
    }
}

/// How long a cached descriptor is trusted before the file is looked up again, so
/// that changes made outside the node (`store verify --quarantine`) take effect.
const OPEN_CACHE_TTL: Duration = Duration::from_secs(1);

/// A core's cache of open blob files: a hit saves `openat`, `fstat` and `close`,
/// and for small blobs (at most `copy_body_max_bytes`) the read as well: their
/// bytes are kept, so at most `open_file_cache_entries × copy_body_max_bytes`
/// per core. Content is immutable (named by its hash), so the only staleness is a
/// removal: flushed whenever the store removes a blob (its generation changes),
/// and each entry is trusted for `OPEN_CACHE_TTL` against changes from outside.
struct FdCache {
    map: BlobMap<(Opened, Instant)>,
    capacity: usize,
    generation: u64,
}

impl FdCache {
    fn new(capacity: usize) -> Self {
        Self {
            map: BlobMap::with_capacity_and_hasher(capacity, Default::default()),
            capacity,
            generation: 0,
        }
    }

    fn get(&mut self, hash: &BlobHash, generation: u64, now: Instant) -> Option<Opened> {
        if generation != self.generation {
            self.map.clear();
            self.generation = generation;
            return None;
        }
        match self.map.get(hash) {
            Some((opened, at)) if now.duration_since(*at) < OPEN_CACHE_TTL => Some(opened.clone()),
            Some(_) => {
                self.map.remove(hash);
                None
            }
            None => None,
        }
    }

    fn insert(&mut self, hash: BlobHash, opened: Opened, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        if self.map.len() >= self.capacity {
            // Any victim will do: the map's order is effectively random.
            if let Some(victim) = self.map.keys().next().copied() {
                self.map.remove(&victim);
            }
        }
        self.map.insert(hash, (opened, now));
    }
}

async fn tick_loop(core: Rc<Core>) {
    let mut ticks = 0u32;
    // A keeping read is cancelled at the second aging after it began: after
    // between half of `park_idle_after_ms` and all of it.
    let age_every = match core.shared.config.park_idle_after_ms {
        0 => 0,
        ms => (ms / 2 / TICK.as_millis() as u64).clamp(1, u32::MAX as u64) as u32,
    };
    loop {
        monoio::time::sleep(TICK).await;
        if core.shared.shutdown.load(Ordering::Relaxed) {
            core.stopping.set(true);
        }
        ticks += 1;
        let secs = now_secs();
        core.now_secs.set(secs);
        if core.date.get().0 != secs {
            core.date.set(http_date(secs));
        }
        let now = Instant::now();
        core.tick_now.set(now);
        // Connections closed because the node stops are not timeouts.
        let stopping = core.stopping.get();
        let timeouts = (!stopping).then_some(&core.stats().timeouts);
        core.idle.borrow_mut().expire(now, stopping, timeouts);
        let closed = core
            .held
            .borrow_mut()
            .expire(core.now_ms(), stopping, timeouts);
        if stopping {
            core.held.borrow().stop.signal();
        }
        for _ in 0..closed {
            live_leave(&core);
        }
        {
            let mut keepers = core.keepers.borrow_mut();
            if core.live.get() > core.shared.config.park_idle_above_connections {
                // More connections than the parking count: the idle ones that
                // kept their buffers give them back (their reads end
                // cancelled, and they park).
                keepers.cancel_all();
            } else if age_every > 0 && ticks.is_multiple_of(age_every) {
                // Those that have waited long enough give them back too.
                keepers.age();
            }
            core.stats()
                .idle_with_buffers
                .store(keepers.waiting() as u64, Ordering::Relaxed);
        }
        core.stats()
            .idle_in_kernel
            .store(core.held.borrow().count as u64, Ordering::Relaxed);
        if ticks.is_multiple_of(PUBLISH_EVERY_TICKS) {
            core.stats().publish(&core.histogram.borrow());
            flush_touches(&core);
        }
        if ticks.is_multiple_of(DECAY_EVERY_TICKS) {
            let mut pool = core.parked.borrow_mut();
            let (freed, all) = pool.decay();
            if all > 0 {
                // The allocator keeps what was freed; the maintenance thread
                // gives it back to the kernel.
                core.shared.trim_heap.store(true, Ordering::Relaxed);
            }
            let stats = core.stats();
            bump(&stats.spare_buffers_freed, freed as u64);
            stats
                .spare_buffers
                .store(pool.buffers() as u64, Ordering::Relaxed);
        }
    }
}

async fn accept_loop(core: &Rc<Core>, listener: &TcpListener) {
    const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 28\r\nConnection: close\r\n\r\nnode at its connection limit";
    loop {
        let accepted = monoio::select! {
            a = listener.accept() => Some(a),
            _ = wait_stopping(core) => None,
        };
        let Some(accepted) = accepted else { return };
        match accepted {
            Ok((stream, _peer)) => {
                if core.live.get() >= core.shared.config.max_connections_per_core {
                    bump(&core.stats().connections_refused, 1);
                    sys::send_nowait(stream.as_raw_fd(), REFUSED);
                    continue;
                }
                bump(&core.stats().connections_total, 1);
                let _ = stream.set_nodelay(true);
                live_enter(core);
                if core.live.get() > core.shared.config.kernel_idle_above_connections {
                    // It waits for its first bytes in the kernel, with no task.
                    Held::hold(core, stream, false);
                } else {
                    monoio::spawn(serve_connection(core.clone(), stream, false));
                }
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(core = core.index, "accept failed: {e}");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn wait_stopping(core: &Core) {
    while !core.stopping.get() {
        monoio::time::sleep(TICK).await;
    }
}

/// Counts a connection for the connection limit: from its accept until it
/// closes, whether a task or the core's [`Held`] set has it.
fn live_enter(core: &Core) {
    core.live.set(core.live.get() + 1);
    bump(&core.stats().connections_open, 1);
}

fn live_leave(core: &Core) {
    core.live.set(core.live.get() - 1);
    core.stats()
        .connections_open
        .fetch_sub(1, Ordering::Relaxed);
}

/// A connection's task's share of [`live_enter`]: left when the task ends,
/// unless the connection went to the [`Held`] set, which then leaves it.
struct LiveGuard<'a>(&'a Core);

impl LiveGuard<'_> {
    /// The connection lives on without its task (in the [`Held`] set).
    fn hand_over(self) {
        std::mem::forget(self);
    }
}

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        live_leave(self.0);
    }
}

/// Counts one in a core's counter while it lives: a request in flight (for
/// the shutdown drain), a buffer-keeping idle read (for the tick).
struct Counted<'a>(&'a Cell<usize>);

impl<'a> Counted<'a> {
    fn new(count: &'a Cell<usize>) -> Self {
        count.set(count.get() + 1);
        Self(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// The cancel handles of the idle reads of buffer-keeping connections, in
/// two generations: reads begun since the last aging, and those begun in the
/// aging period before it. Each aging cancels the older generation's reads
/// that still wait, so a connection keeps its buffers for between one and two
/// aging periods of idleness, then parks. The counts let an aging with no
/// such read skip the cancel (and its allocation): a busy connection's reads
/// end long before.
#[derive(Default)]
struct Keepers {
    current: Canceller,
    older: Canceller,
    /// The current generation's number (the older one is `generation - 1`).
    generation: u64,
    /// Reads waiting in the current and in the older generation.
    waiting: [usize; 2],
}

impl Keepers {
    fn age(&mut self) {
        if self.waiting[1] > 0 {
            self.older = std::mem::take(&mut self.older).cancel();
        }
        // The older canceller, now with no reads, takes the new ones.
        std::mem::swap(&mut self.current, &mut self.older);
        self.waiting = [0, self.waiting[0]];
        self.generation += 1;
    }

    fn cancel_all(&mut self) {
        for (canceller, waiting) in [(&mut self.current, 0), (&mut self.older, 1)] {
            if self.waiting[waiting] > 0 {
                *canceller = std::mem::take(canceller).cancel();
            }
        }
        self.waiting = [0, 0];
        // Reads of either generation that end now are counted in neither.
        self.generation += 2;
    }

    fn waiting(&self) -> usize {
        self.waiting[0] + self.waiting[1]
    }
}

/// One keeping read's place in [`Keepers`], from its start to its end
/// (completed or cancelled).
struct Keeping<'a> {
    keepers: &'a RefCell<Keepers>,
    generation: u64,
}

impl<'a> Keeping<'a> {
    fn new(core: &'a Core) -> (CancelHandle, Self) {
        let mut keepers = core.keepers.borrow_mut();
        keepers.waiting[0] += 1;
        let generation = keepers.generation;
        let keeping = Self {
            keepers: &core.keepers,
            generation,
        };
        (keepers.current.handle(), keeping)
    }
}

impl Drop for Keeping<'_> {
    fn drop(&mut self) {
        let mut keepers = self.keepers.borrow_mut();
        // A read of a cancelled generation was already counted out.
        if let Some(age) = keepers.generation.checked_sub(self.generation) {
            if let Some(waiting) = keepers.waiting.get_mut(age as usize) {
                *waiting -= 1;
            }
        }
    }
}

/// Per-connection buffers, reused by every request on the connection.
struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet consumed; capacity = the head limit.
    rbuf: ReadBuf,
    /// Response heads and small bodies; verified streams are built here too.
    wbuf: Vec<u8>,
    pipe: Option<Pipe>,
    /// The current request's precondition fields (If-None-Match, ...): kept
    /// here, reused for every request, rather than copied with each request.
    /// Parked with the buffers (it is 1 KiB); always present while a request is read.
    preconditions: Option<Box<Preconditions>>,
    /// The core's epoll set has an entry for the socket (it was held there
    /// before), disarmed: holding it again re-arms that entry.
    registered: bool,
    /// The task was started because the socket is readable: read at once.
    woken: bool,
}

/// What the handler needs from a parsed head, copied out of the read buffer so the
/// buffer can be used for I/O again.
struct ReqInfo {
    method: Method,
    route: Route,
    head_len: usize,
    body: Body,
    keep_alive: bool,
    http10: bool,
    range: [u8; 128],
    range_len: Option<usize>,
    verified: bool,
    auth: routes::Auth,
    expect_continue: bool,
    /// `X-Tessera-Peer` present: another node asks; a miss is not fetched
    /// onward (no fetch loops between nodes).
    from_peer: bool,
    /// The node that signed the request, checked.
    peer: routes::Peer,
    /// The service whose mount the request is under.
    service: Option<usize>,
}

impl ReqInfo {
    fn range(&self) -> Option<&[u8]> {
        self.range_len.map(|n| &self.range[..n])
    }
}

/// How a request ended, for the connection loop.
enum Next {
    KeepAlive,
    Close,
}

/// A connection's task. A plain fn around an `async move` block: an `async
/// fn` would keep its arguments beside the locals they move into (three
/// copies of the socket), and a parked connection is little besides this
/// task, so its size is the memory an idle connection costs.
///
/// The connection is already counted ([`live_enter`]) and has `TCP_NODELAY`.
/// `woken`: it comes from the core's [`Held`] set, readable.
fn serve_connection(
    core: Rc<Core>,
    stream: TcpStream,
    woken: bool,
) -> impl std::future::Future<Output = ()> {
    let mut conn = Conn {
        stream,
        rbuf: ReadBuf::default(),
        wbuf: Vec::new(),
        pipe: None,
        preconditions: None,
        registered: woken,
        woken,
    };
    async move {
        let live = LiveGuard(&core);
        // A new connection waits for its first bytes parked, like any idle one.
        let mut park = true;
        loop {
            if core.stopping.get() && conn.rbuf.is_empty() {
                break;
            }
            if conn.rbuf.is_empty() {
                match next_request(&core, &mut conn, park).await {
                    Idle::Bytes => {}
                    Idle::Ended => break,
                    Idle::Hold => {
                        ParkPool::park(&core, &mut conn);
                        live.hand_over();
                        Held::hold(&core, conn.stream, conn.registered);
                        return;
                    }
                }
            }
            // One request, head to answer, in pooled memory: its state (the head's
            // fields, every route's locals) is what would make the task large.
            if !core.slots.run(request(&core, &mut conn)).await {
                break;
            }
            park = core.live.get() > core.shared.config.park_idle_above_connections;
        }
        // The next connection takes its buffers (the pool frees them if none
        // comes within a second).
        ParkPool::closing(&core, &mut conn);
    }
}

/// How an idle connection's wait ended.
enum Idle {
    /// Its next request's first bytes are in the read buffer.
    Bytes,
    /// It ended, or idled out.
    Ended,
    /// The core holds more than `kernel_idle_above_connections`: the
    /// connection is to wait in the [`Held`] set, without its task.
    Hold,
}

/// Waits for an idle connection's next request.
///
/// No timer of its own (a monoio timer entry is 640 bytes, and arming one per
/// request costs): the connection is in the core's idle list, whose tick shuts
/// the socket down when the idle timeout passes, which ends the wait.
/// Parked (`park`), it gives its buffers to the core's pools and waits for
/// readability; otherwise it keeps its read buffer and reads directly, one
/// submission fewer, until the tick cancels that read because the core now
/// holds more connections than the parking count. Either way its write buffer,
/// pipe and precondition fields wait in the pools.
///
/// Both reads run in pooled request memory (`core.slots`): the keeping read's
/// state is 224 bytes and the connection's task is as large as its largest
/// wait, so inline it would cost every parked connection as much.
async fn next_request(core: &Core, conn: &mut Conn, mut park: bool) -> Idle {
    let got = |bytes| if bytes { Idle::Bytes } else { Idle::Ended };
    if std::mem::take(&mut conn.woken) {
        ParkPool::unpark(core, conn);
        return got(core.slots.run(read_ready(conn)).await);
    }
    let hold = |park| park && core.live.get() > core.shared.config.kernel_idle_above_connections;
    if hold(park) {
        return Idle::Hold;
    }
    let waiting = IdleWait::new(
        core,
        conn.stream.as_raw_fd(),
        Duration::from_millis(core.shared.config.idle_timeout_ms),
    );
    loop {
        if park {
            ParkPool::park(core, conn);
            if conn.stream.readable(false).await.is_err() || waiting.shut_down() {
                return Idle::Ended;
            }
            ParkPool::unpark(core, conn);
            return got(core.slots.run(read_ready(conn)).await);
        }
        ParkPool::lend(core, conn);
        let read = core.slots.run(keep_reading(core, conn)).await;
        ParkPool::take_back(core, conn);
        match read {
            Some(bytes) => return got(bytes),
            None if hold(true) => return Idle::Hold,
            None => park = true,
        }
    }
}

/// The read after readiness: `true` if it brought bytes.
async fn read_ready(conn: &mut Conn) -> bool {
    let buf = std::mem::take(&mut conn.rbuf);
    let (res, buf) = conn.stream.read(buf).await;
    conn.rbuf = buf;
    matches!(res, Ok(n) if n > 0)
}

/// A buffer-keeping connection's idle read: `Some(true)` with bytes,
/// `Some(false)` if the connection ended, `None` if the tick cancelled it.
async fn keep_reading(core: &Core, conn: &mut Conn) -> Option<bool> {
    let (cancel, keeping) = Keeping::new(core);
    let buf = std::mem::take(&mut conn.rbuf);
    let (res, buf) = conn.stream.cancelable_read(buf, cancel).await;
    drop(keeping);
    conn.rbuf = buf;
    match res {
        Ok(n) => Some(n > 0),
        Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => None,
        Err(_) => Some(false),
    }
}

/// Reads one request's head and answers it. `false`: close the connection.
async fn request(core: &Core, conn: &mut Conn) -> bool {
    let info = match read_head(core, conn).await {
        Ok(Some(info)) => info,
        Ok(None) => return false,
        Err((status, message)) => {
            let _ = respond_text(core, conn, Route::NotFound, status, message, false).await;
            return false;
        }
    };
    let _flight = Counted::new(&core.in_flight);
    let started = Instant::now();
    let next = handle(core, conn, &info).await;
    let micros = started.elapsed().as_micros() as u64;
    let _ = core.histogram.borrow_mut().record(micros.max(1));
    matches!(next, Ok(Next::KeepAlive)) && !core.stopping.get()
}

/// Idle keep-alive connections' sockets and when each idles out; the core's
/// tick shuts down the ones past their time (and all of them when the node
/// stops).
#[derive(Default)]
struct IdleList {
    entries: Vec<Option<IdleEntry>>,
    free: Vec<usize>,
}

#[derive(Clone, Copy)]
struct IdleEntry {
    fd: RawFd,
    /// When it idles out; None once it has been shut down (the connection
    /// drops its entry when the shutdown wakes it).
    deadline: Option<Instant>,
}

impl IdleList {
    /// Shuts down the sockets whose time has passed (all, when `all`), each
    /// once, counting each in `timeouts` (when given) before its shutdown, so
    /// a client that sees the end also sees the count.
    fn expire(&mut self, now: Instant, all: bool, timeouts: Option<&AtomicU64>) {
        for entry in self.entries.iter_mut().flatten() {
            if entry.deadline.is_some_and(|d| all || d <= now) {
                if let Some(t) = timeouts {
                    bump(t, 1);
                }
                sys::shutdown(entry.fd);
                entry.deadline = None;
            }
        }
    }
}

/// A connection's entry in its core's [`IdleList`] while it waits for its next
/// request. Dropped before the connection's socket is closed, so a shutdown
/// never reaches a reused descriptor.
struct IdleWait<'a> {
    core: &'a Core,
    index: usize,
}

impl<'a> IdleWait<'a> {
    fn new(core: &'a Core, fd: RawFd, idle: Duration) -> Self {
        let mut list = core.idle.borrow_mut();
        let entry = Some(IdleEntry {
            fd,
            deadline: Some(core.tick_now.get() + idle),
        });
        let index = match list.free.pop() {
            Some(i) => {
                list.entries[i] = entry;
                i
            }
            None => {
                list.entries.push(entry);
                list.entries.len() - 1
            }
        };
        Self { core, index }
    }
}

impl IdleWait<'_> {
    /// The tick shut the socket down (idle timeout, or the node stops).
    fn shut_down(&self) -> bool {
        self.core.idle.borrow().entries[self.index].is_some_and(|e| e.deadline.is_none())
    }
}

impl Drop for IdleWait<'_> {
    fn drop(&mut self) {
        let mut list = self.core.idle.borrow_mut();
        list.entries[self.index] = None;
        list.free.push(self.index);
    }
}

/// Idle keep-alive connections a core holds no task for (it has more than
/// `kernel_idle_above_connections` open): each is its socket, registered in
/// the core's epoll set (the kernel keeps that entry), and a 16-byte slot here
/// with the time it idles out. [`held_loop`] starts a task for each one the
/// kernel finds readable; the tick closes those past their idle timeout, and
/// all of them when the node stops.
struct Held {
    epoll: sys::Epoll,
    /// In the set as [`HELD_STOP`]: the tick signals it when the node stops,
    /// and [`held_loop`] returns (its poll must not outlive the core: a
    /// request left in the ring keeps the core's sockets, the listener too,
    /// open after the process exits, until the kernel tears the ring down).
    stop: sys::EventFd,
    slots: Vec<HeldSlot>,
    free: Vec<u32>,
    /// Connections held now.
    count: usize,
}

#[derive(Clone, Copy)]
struct HeldSlot {
    /// The socket, which the set owns; -1: the slot is free.
    fd: RawFd,
    /// When it idles out, in milliseconds from `Core::epoch`.
    deadline_ms: u64,
}

impl Held {
    fn new() -> io::Result<Held> {
        let epoll = sys::Epoll::new()?;
        let stop = sys::EventFd::new()?;
        epoll.watch_always(stop.fd(), HELD_STOP)?;
        Ok(Held {
            epoll,
            stop,
            slots: Vec::new(),
            free: Vec::new(),
            count: 0,
        })
    }

    /// Takes `stream`'s connection (counted by [`live_enter`]) into the set.
    /// `registered`: the epoll set still has the socket's disarmed entry.
    fn hold(core: &Core, stream: TcpStream, registered: bool) {
        let fd = stream.into_raw_fd();
        let deadline_ms = core.now_ms() + core.shared.config.idle_timeout_ms;
        let mut held = core.held.borrow_mut();
        let slot = match held.free.pop() {
            Some(i) => i as usize,
            None => {
                held.slots.push(HeldSlot {
                    fd: -1,
                    deadline_ms: 0,
                });
                held.slots.len() - 1
            }
        };
        if let Err(e) = held.epoll.watch(fd, slot as u64, registered) {
            // The kernel's limit on watched descriptors (`max_user_watches`)
            // or its memory: an idle connection may be closed at any time.
            held.free.push(slot as u32);
            drop(held);
            tracing::warn!(core = core.index, "closing an idle connection: epoll: {e}");
            sys::close(fd);
            live_leave(core);
            return;
        }
        held.slots[slot] = HeldSlot { fd, deadline_ms };
        held.count += 1;
    }

    /// The socket in `slot`, out of the set (still counted as live), if the
    /// slot holds one.
    fn take(&mut self, slot: usize) -> Option<RawFd> {
        let entry = self.slots.get_mut(slot)?;
        if entry.fd < 0 {
            return None;
        }
        let fd = std::mem::replace(&mut entry.fd, -1);
        self.free.push(slot as u32);
        self.count -= 1;
        Some(fd)
    }

    /// Closes the connections whose time has passed (all, when `all`),
    /// counting each in `timeouts` (when given) before it is closed. Returns
    /// how many it closed, for the caller to [`live_leave`].
    fn expire(&mut self, now_ms: u64, all: bool, timeouts: Option<&AtomicU64>) -> usize {
        if self.count == 0 {
            return 0;
        }
        let mut closed = 0;
        for (i, entry) in self.slots.iter_mut().enumerate() {
            if entry.fd >= 0 && (all || entry.deadline_ms <= now_ms) {
                if let Some(t) = timeouts {
                    bump(t, 1);
                }
                sys::close(std::mem::replace(&mut entry.fd, -1));
                self.free.push(i as u32);
                closed += 1;
            }
        }
        self.count -= closed;
        closed
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        for entry in &self.slots {
            if entry.fd >= 0 {
                sys::close(entry.fd);
            }
        }
    }
}

/// Readable connections taken out of a core's [`Held`] set per look at it.
const HELD_EVENTS_PER_WAKE: usize = 64;
/// The event of [`Held::stop`] (no connection's slot).
const HELD_STOP: u64 = u64::MAX;

/// Starts a task for each connection of the core's [`Held`] set that the
/// kernel reports readable (bytes, or the end: the task's read finds which).
async fn held_loop(core: Rc<Core>) {
    // monoio has no type for a bare pollable descriptor. Its `UnixStream`
    // serves: `readable` only submits an io_uring poll on the descriptor, and
    // dropping it closes the descriptor, which is all a second handle on the
    // epoll set needs (it is used for nothing else).
    let ready = match core.held.borrow().epoll.duplicate() {
        Ok(fd) => monoio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(fd)),
        Err(e) => Err(e),
    };
    let ready = match ready {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(core = core.index, "idle connections cannot be woken: {e}");
            return;
        }
    };
    let mut events = [sys::EpollEvent { events: 0, u64: 0 }; HELD_EVENTS_PER_WAKE];
    loop {
        if ready.readable(false).await.is_err() {
            return;
        }
        loop {
            let n = core.held.borrow().epoll.ready(&mut events);
            for event in &events[..n] {
                if { event.u64 } == HELD_STOP {
                    return;
                }
                let slot = { event.u64 } as usize;
                let Some(fd) = core.held.borrow_mut().take(slot) else {
                    continue;
                };
                // SAFETY: the set owned `fd`, an open TCP socket, and has let
                // go of it: the stream owns it now.
                let socket = unsafe { std::net::TcpStream::from_raw_fd(fd) };
                match TcpStream::from_std(socket) {
                    Ok(stream) => {
                        monoio::spawn(serve_connection(core.clone(), stream, true));
                    }
                    Err(_) => live_leave(&core),
                }
            }
            if n < events.len() {
                break;
            }
        }
    }
}

/// Spare things of one kind (buffers, pipes), for the next connection that
/// needs one. Unbounded while they are used: a core under a burst of
/// connections keeps what the burst took, and no request allocates one. Every
/// half second, [`Spares::decay`] releases those that the last half second did
/// not need (the list never went below that many), the least recently returned first,
/// beyond [`SPARES_KEPT_WARM`]; so what a burst took goes back within about a
/// second of its end, and a steady load releases nothing.
struct Spares<T> {
    items: Vec<T>,
    /// The fewest items held since the last decay.
    low: usize,
}

impl<T> Default for Spares<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            low: 0,
        }
    }
}

impl<T> Spares<T> {
    fn take(&mut self) -> Option<T> {
        let item = self.items.pop();
        self.low = self.low.min(self.items.len());
        item
    }

    fn put(&mut self, item: T) {
        self.items.push(item);
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    /// Frees those not needed since the last decay, keeping
    /// [`SPARES_KEPT_WARM`]; returns how many went.
    fn decay(&mut self) -> usize {
        let unused = self
            .low
            .min(self.items.len())
            .saturating_sub(SPARES_KEPT_WARM);
        self.items.drain(..unused);
        self.low = self.items.len();
        unused
    }
}

/// The buffers and pipes that parked connections gave back, for the next
/// connection that has bytes to read.
#[derive(Default)]
struct ParkPool {
    rbufs: Spares<ReadBuf>,
    wbufs: Spares<Vec<u8>>,
    pipes: Spares<Pipe>,
    /// Boxed: a connection's box moves to the pool and back, 1 KiB not copied.
    preconditions: Spares<Box<Preconditions>>,
}

impl ParkPool {
    /// Takes `conn`'s buffers and pipe (it has no buffered bytes).
    fn park(core: &Core, conn: &mut Conn) {
        let rbuf = std::mem::take(&mut conn.rbuf);
        if rbuf.capacity() == core.shared.config.max_header_bytes {
            core.parked.borrow_mut().rbufs.put(rbuf);
        }
        Self::lend(core, conn);
    }

    /// Takes what a connection needs only while it answers: its write buffer,
    /// pipe and precondition fields. A buffer-keeping connection lends them
    /// while it waits, keeping its read buffer with the read in it: the pages
    /// its last response touched are not held per idle connection.
    fn lend(core: &Core, conn: &mut Conn) {
        let mut pool = core.parked.borrow_mut();
        let mut wbuf = std::mem::take(&mut conn.wbuf);
        if wbuf.capacity() <= WBUF_KEPT_BYTES && wbuf.capacity() > 0 {
            wbuf.clear();
            pool.wbufs.put(wbuf);
        }
        if let Some(pipe) = conn.pipe.take() {
            // A pipe is only pooled empty (a response always drains it).
            pool.pipes.put(pipe);
        }
        if let Some(pre) = conn.preconditions.take() {
            pool.preconditions.put(pre);
        }
    }

    /// Frees what the last half second did not need. Returns how many read
    /// and write buffers went, and how many things in all.
    fn decay(&mut self) -> (usize, usize) {
        let buffers = self.rbufs.decay() + self.wbufs.decay();
        (
            buffers,
            buffers + self.pipes.decay() + self.preconditions.decay(),
        )
    }

    /// Read and write buffers held.
    fn buffers(&self) -> usize {
        self.rbufs.len() + self.wbufs.len()
    }

    /// Takes the buffers of a connection that ends (emptied: it may have left
    /// bytes in them). Not its pipe, which may still hold a response's bytes.
    fn closing(core: &Core, conn: &mut Conn) {
        conn.rbuf.clear();
        conn.wbuf.clear();
        conn.pipe = None;
        Self::park(core, conn);
    }

    /// Gives `conn` buffers again: pooled ones, or new ones.
    fn unpark(core: &Core, conn: &mut Conn) {
        conn.rbuf = core
            .parked
            .borrow_mut()
            .rbufs
            .take()
            .unwrap_or_else(|| ReadBuf::with_capacity(core.shared.config.max_header_bytes));
        Self::take_back(core, conn);
    }

    /// Gives `conn` back what [`ParkPool::lend`] took (pooled ones, or new ones).
    fn take_back(core: &Core, conn: &mut Conn) {
        let mut pool = core.parked.borrow_mut();
        if conn.wbuf.capacity() == 0 {
            conn.wbuf = pool
                .wbufs
                .take()
                .unwrap_or_else(|| Vec::with_capacity(WBUF_BYTES));
        }
        if conn.pipe.is_none() {
            conn.pipe = pool.pipes.take();
        }
        if conn.preconditions.is_none() {
            conn.preconditions = Some(pool.preconditions.take().unwrap_or_default());
        }
    }
}

/// Reads until a full head is buffered; the read buffer holds the head's first
/// bytes (the idle wait, `next_request`, ends only with bytes). `Ok(None)`:
/// the connection ended or the head stalled.
async fn read_head(
    core: &Core,
    conn: &mut Conn,
) -> Result<Option<ReqInfo>, (Status, &'static str)> {
    // The head must arrive whole within header_timeout_ms of its first byte.
    // A head that came whole with its first read (nearly all) needs no clock.
    let mut head_deadline = None;
    loop {
        let pre = conn.preconditions.get_or_insert_with(Box::default);
        match http::parse_request_into(&conn.rbuf, core.shared.limits, pre) {
            Ok(Some(req)) => return Ok(Some(req_info(core, &req))),
            Ok(None) => {}
            Err(e) => return Err(parse_error(e)),
        }
        let deadline = *head_deadline.get_or_insert_with(|| {
            Instant::now() + Duration::from_millis(core.shared.config.header_timeout_ms)
        });
        match read_more(conn, deadline.saturating_duration_since(Instant::now())).await {
            ReadOutcome::Data => {}
            ReadOutcome::Eof | ReadOutcome::Error => return Ok(None),
            ReadOutcome::TimedOut => {
                bump(&core.stats().timeouts, 1);
                return Ok(None);
            }
        }
    }
}

fn parse_error(e: ParseError) -> (Status, &'static str) {
    (e.status(), e.message())
}

enum ReadOutcome {
    Data,
    Eof,
    Error,
    TimedOut,
}

/// Reads more bytes into the spare capacity of the read buffer.
async fn read_more(conn: &mut Conn, wait: Duration) -> ReadOutcome {
    let len = conn.rbuf.len();
    if len == conn.rbuf.capacity() {
        return ReadOutcome::Error;
    }
    let buf = std::mem::take(&mut conn.rbuf);
    let read = monoio::time::timeout(wait, conn.stream.read(buf.slice_mut(len..))).await;
    match read {
        // The timed-out read was cancelled and took its buffer with it; the
        // connection is closed right after, so nothing is lost.
        Err(_) => ReadOutcome::TimedOut,
        Ok((res, slice)) => {
            conn.rbuf = slice.into_inner();
            match res {
                Ok(0) => ReadOutcome::Eof,
                Ok(_) => ReadOutcome::Data,
                Err(_) => ReadOutcome::Error,
            }
        }
    }
}

fn req_info(core: &Core, req: &http::Request<'_>) -> ReqInfo {
    let mut range = [0u8; 128];
    let range_len = req.range.and_then(|r| {
        // A longer Range header cannot be a single range we would serve; ignore it.
        (r.len() <= range.len()).then(|| {
            range[..r.len()].copy_from_slice(r);
            r.len()
        })
    });
    let peer = routes::peer(
        core,
        req.method,
        req.path,
        req.peer_id,
        req.peer_time,
        req.peer_sig,
    );
    ReqInfo {
        method: req.method,
        route: http::route(req.path),
        head_len: req.head_len,
        body: req.body,
        keep_alive: req.keep_alive,
        http10: req.http10,
        range,
        range_len,
        verified: req.wants_verified(),
        auth: routes::auth(core, req.authorization),
        expect_continue: req.expect_continue,
        from_peer: req.from_peer,
        peer,
        service: core.shared.services.find(req.host, req.path),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn handle(core: &Core, conn: &mut Conn, info: &ReqInfo) -> io::Result<Next> {
    let route = info.route;
    let mut plan = routes::plan(
        core,
        &routes::Head {
            method: info.method,
            route,
            auth: info.auth,
            peer: info.peer,
            service: info.service,
        },
    );
    if let Plan::Service(index) = plan {
        plan = service_plan(core, conn, index);
    }
    // Only uploads and small-body routes read a body; any other request that
    // carries one is answered and the connection closed, rather than guessing
    // where the next request starts.
    let has_body = info.body != Body::None;
    if !matches!(plan, Plan::Upload | Plan::Body { .. } | Plan::Work(..)) {
        conn.rbuf.drain(..info.head_len);
    }
    let keep_alive =
        info.keep_alive && !has_body && !core.stopping.get() && info.peer != routes::Peer::Refused;
    let head_only = info.method == Method::Head;
    match plan {
        Plan::Reply(reply) => {
            write_reply(core, conn, route, reply, keep_alive, head_only, info.http10).await
        }
        // A blob under another status (a site's 404 page) is plain bytes.
        Plan::Blob(hash, meta)
            if info.verified && meta.as_ref().is_none_or(|m| m.status.is_none()) =>
        {
            get_verified(core, conn, info, hash, meta.as_ref(), keep_alive).await
        }
        Plan::Blob(hash, meta) => {
            get_plain(core, conn, info, hash, meta.as_ref(), keep_alive).await
        }
        Plan::Upload => upload(core, conn, info).await,
        Plan::OffCore(job) => {
            let reply = run_job(job).await;
            write_reply(core, conn, route, reply, keep_alive, head_only, info.http10).await
        }
        Plan::Body {
            limit,
            what,
            required,
            then,
        } => {
            let body = if !required && info.body == Body::None {
                conn.rbuf.drain(..info.head_len);
                Vec::new()
            } else {
                match small_body(core, conn, info, limit, what).await? {
                    Ok(b) => b,
                    Err(next) => return Ok(next),
                }
            };
            let keep_alive = info.keep_alive && !core.stopping.get();
            let reply = run_job(move || then(body)).await;
            write_reply(core, conn, route, reply, keep_alive, head_only, info.http10).await
        }
        Plan::Work(running, req) => work::work(core, conn, info, running, *req).await,
        Plan::Upgrade(running, req) => ws::session(core, conn, route, running, req).await,
        // Resolved above.
        Plan::Service(_) => {
            write_reply(
                core,
                conn,
                route,
                Reply::text(Status::InternalServerError, "unresolved service\n"),
                false,
                false,
                info.http10,
            )
            .await
        }
    }
}

/// A service's decision on the request head still in the read buffer.
fn service_plan(core: &Core, conn: &Conn, index: usize) -> Plan {
    let Some(running) = core.shared.services.running.get(index) else {
        return Plan::Reply(Reply::text(Status::NotFound, "no such service\n"));
    };
    // The head parsed before; parsed again here for the borrowed view.
    let Ok(Some(req)) = http::parse_request(&conn.rbuf, core.shared.limits) else {
        return Plan::Reply(Reply::text(Status::BadRequest, "malformed request head\n"));
    };
    let headers = services::RawHead(&conn.rbuf[..req.head_len]);
    let view = service_api::Request {
        method: req.method,
        path: req.path,
        query: req.query,
        host: req.host,
        headers: &headers,
        peer: conn.stream.peer_addr().ok(),
    };
    services::plan(running, &view)
}

/// Runs a route's job on the store-I/O pool; a job that panics is a 500.
async fn run_job(job: impl FnOnce() -> Reply + Send + 'static) -> Reply {
    off_core(move || Ok(job())).await.unwrap_or_else(|e| {
        tracing::error!("request handler failed: {e}");
        Reply::text(
            Status::InternalServerError,
            "request failed; see the node's log\n",
        )
    })
}

/// Writes a [`Reply`]; after a server error the connection closes.
async fn write_reply(
    core: &Core,
    conn: &mut Conn,
    route: Route,
    reply: Reply,
    keep_alive: bool,
    head_only: bool,
    http10: bool,
) -> io::Result<Next> {
    let keep_alive = keep_alive && reply.status != Status::InternalServerError;
    let mut wbuf = std::mem::take(&mut conn.wbuf);
    let mut h = head(core, &mut wbuf, reply.status);
    for (name, value) in &reply.headers {
        if !node_states(name) {
            h = h.header(name, value);
        }
    }
    let rx = match reply.body {
        service_api::Body::Bytes(body) => {
            if routes::has_length(reply.status) {
                h.finish(body.len() as u64, keep_alive);
            } else {
                h.finish_without_length(keep_alive);
            }
            if !head_only {
                wbuf.extend_from_slice(&body);
            }
            conn.wbuf = wbuf;
            return send_wbuf(core, conn, route, reply.status, keep_alive).await;
        }
        service_api::Body::Stream(stream) => stream,
        // Only a service's handler may answer with a stored blob, and
        // `work::work` serves it; anywhere else it is a bug.
        service_api::Body::Blob(_) => {
            tracing::error!("a blob reply outside a service's handler");
            conn.wbuf = wbuf;
            conn.wbuf.clear();
            let reply = Reply::text(Status::InternalServerError, "unexpected reply\n");
            return Box::pin(write_reply(
                core, conn, route, reply, false, head_only, http10,
            ))
            .await;
        }
    };
    // A body produced off the core: each chunk as it comes, the producer held
    // back by the bounded channel while the client reads slowly. A producer
    // silent for longer than the idle timeout is cut off (no last chunk, so
    // the client sees the body end early).
    let keep_alive = keep_alive && !http10;
    h.finish_streamed(keep_alive, http10);
    conn.wbuf = wbuf;
    core.stats()
        .count_request(route.label_index(), reply.status.index());
    write_wbuf(core, conn).await?;
    if head_only {
        return Ok(if keep_alive {
            Next::KeepAlive
        } else {
            Next::Close
        });
    }
    let stall = Duration::from_millis(core.shared.config.idle_timeout_ms);
    loop {
        match monoio::time::timeout(stall, rx.chunks().recv_async()).await {
            Ok(Ok(chunk)) if chunk.is_empty() => continue,
            Ok(Ok(chunk)) => {
                if !http10 {
                    let _ = write!(conn.wbuf, "{:x}\r\n", chunk.len());
                }
                conn.wbuf.extend_from_slice(&chunk);
                if !http10 {
                    conn.wbuf.extend_from_slice(b"\r\n");
                }
                write_wbuf(core, conn).await?;
            }
            // The producer is done: whole, or failed (then no last chunk, so
            // the client cannot take the body for a complete one).
            Ok(Err(_)) if rx.is_complete() => break,
            Ok(Err(_)) => return Ok(Next::Close),
            Err(_) => {
                bump(&core.stats().timeouts, 1);
                return Ok(Next::Close);
            }
        }
    }
    if http10 {
        return Ok(Next::Close);
    }
    conn.wbuf.extend_from_slice(b"0\r\n\r\n");
    write_wbuf(core, conn).await?;
    Ok(if keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    })
}

async fn respond_text(
    core: &Core,
    conn: &mut Conn,
    route: Route,
    status: Status,
    text: &str,
    keep_alive: bool,
) -> io::Result<Next> {
    respond(
        core,
        conn,
        route,
        status,
        "text/plain",
        text.as_bytes(),
        keep_alive,
        false,
    )
    .await
}

#[allow(clippy::too_many_arguments)] // a response is these eight things; a struct would only rename them
async fn respond(
    core: &Core,
    conn: &mut Conn,
    route: Route,
    status: Status,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    head_only: bool,
) -> io::Result<Next> {
    let mut wbuf = std::mem::take(&mut conn.wbuf);
    head(core, &mut wbuf, status)
        .header("Content-Type", content_type.as_bytes())
        .finish(body.len() as u64, keep_alive);
    if !head_only {
        wbuf.extend_from_slice(body);
    }
    conn.wbuf = wbuf;
    send_wbuf(core, conn, route, status, keep_alive).await
}

/// Writes the write buffer and counts the response.
async fn send_wbuf(
    core: &Core,
    conn: &mut Conn,
    route: Route,
    status: Status,
    keep_alive: bool,
) -> io::Result<Next> {
    core.stats()
        .count_request(route.label_index(), status.index());
    write_wbuf(core, conn).await?;
    Ok(if keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    })
}

async fn write_wbuf(core: &Core, conn: &mut Conn) -> io::Result<()> {
    let buf = std::mem::take(&mut conn.wbuf);
    let n = buf.len() as u64;
    let (res, mut buf) = conn.stream.write_all(buf).await;
    buf.clear();
    conn.wbuf = buf;
    res?;
    bump(&core.stats().bytes_sent, n);
    Ok(())
}

/// Remembers that a blob was read; the core sends its batch once a second.
fn touch(core: &Core, hash: BlobHash) {
    let mut touched = core.touched.borrow_mut();
    if touched.len() < TOUCHED_PER_CORE || touched.contains_key(&hash) {
        touched.insert(hash, core.now_secs.get());
    }
}

fn flush_touches(core: &Core) {
    let mut touched = core.touched.borrow_mut();
    if touched.is_empty() {
        return;
    }
    let batch: Vec<(BlobHash, u64)> = touched.drain().collect();
    match core.shared.touches.try_send(batch) {
        Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
    }
}

/// Opens a stored blob's bytes, or answers 404 / 500 itself.
async fn open_or_answer(
    core: &Core,
    conn: &mut Conn,
    route: Route,
    hash: &BlobHash,
    suffix: &[u8],
    keep_alive: bool,
    from_peer: bool,
) -> io::Result<Result<Opened, Next>> {
    let opened = if suffix.is_empty() {
        core.open_blob_cached(hash)
    } else {
        sys::open_at(core.shared.store.blobs_dir_fd(), hash, suffix).map(|found| {
            found.map(|(fd, size)| Opened {
                fd: Rc::new(fd),
                size,
                body: None,
                mapping: Rc::default(),
            })
        })
    };
    let on_miss = core.shared.config.on_miss;
    if let (Ok(None), true) = (&opened, suffix.is_empty() && !from_peer) {
        if let Some(location) = redirect_for(core, hash, "http") {
            let mut wbuf = std::mem::take(&mut conn.wbuf);
            head(core, &mut wbuf, Status::TemporaryRedirect)
                .header("Location", location.as_bytes())
                .header("Content-Type", b"text/plain")
                .finish(0, keep_alive);
            conn.wbuf = wbuf;
            let next = send_wbuf(core, conn, route, Status::TemporaryRedirect, keep_alive).await?;
            return Ok(Err(next));
        }
    }
    let control = &core.shared.hooks.control;
    let opened = match opened {
        // Not here: fetch it from peers (unless a peer is asking), then serve.
        Ok(None)
            if control.fetches() && suffix.is_empty() && !from_peer && on_miss == OnMiss::Fetch =>
        {
            let (control, store, h) = (control.clone(), core.shared.store.clone(), *hash);
            match off_core(move || Ok(control.fetch_missing(&store, &h.0))).await {
                Ok(true) => core.open_blob_cached(hash),
                _ => Ok(None),
            }
        }
        opened => opened,
    };
    match opened {
        Ok(Some(found)) => Ok(Ok(found)),
        Ok(None) => Ok(Err(respond_text(
            core,
            conn,
            route,
            Status::NotFound,
            "blob not found\n",
            keep_alive,
        )
        .await?)),
        Err(e) => {
            tracing::error!(%hash, "cannot open blob: {e}");
            Ok(Err(respond_text(
                core,
                conn,
                route,
                Status::InternalServerError,
                "cannot read blob\n",
                keep_alive,
            )
            .await?))
        }
    }
}

/// Reads a small request body (at most `max` bytes, with a Content-Length) into
/// memory; `Err(next)` when the request was answered instead.
async fn small_body(
    core: &Core,
    conn: &mut Conn,
    info: &ReqInfo,
    max: u64,
    what: &str,
) -> io::Result<Result<Vec<u8>, Next>> {
    let route = info.route;
    let refuse = |status, msg: String| (status, msg);
    let framing = match info.body {
        Body::Length(n) if n <= max => Ok(Some(n as usize)),
        Body::Length(_) => Err(refuse(
            Status::PayloadTooLarge,
            format!("{what} body too large (at most {max} bytes)\n"),
        )),
        Body::Chunked => Ok(None),
        Body::None => Err(refuse(
            Status::BadRequest,
            format!("{what} need a body (Content-Length or chunked)\n"),
        )),
    };
    let framing = match framing {
        Ok(f) => f,
        Err((status, msg)) => {
            let next = respond_text(core, conn, route, status, &msg, false).await?;
            return Ok(Err(next));
        }
    };
    if info.expect_continue {
        conn.wbuf.clear();
        conn.wbuf
            .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        write_wbuf(core, conn).await?;
    }
    let wait = Duration::from_millis(core.shared.config.header_timeout_ms);
    if let Some(n) = framing {
        let end = info.head_len + n;
        while conn.rbuf.len() < end {
            if conn.rbuf.capacity() < end {
                let len = conn.rbuf.len();
                conn.rbuf.reserve(end - len);
            }
            if !matches!(read_more(conn, wait).await, ReadOutcome::Data) {
                return Ok(Err(Next::Close));
            }
        }
        let body = conn.rbuf[info.head_len..end].to_vec();
        conn.rbuf.drain(..end);
        return Ok(Ok(body));
    }
    // Chunked: decoded as it arrives (the read buffer holds at most a piece),
    // refused as soon as it passes `max`.
    conn.rbuf.drain(..info.head_len);
    let mut decoder = ChunkedDecoder::default();
    let mut body = Vec::new();
    loop {
        let mut too_large = false;
        let used = decoder.decode(&conn.rbuf, |piece| {
            if (body.len() + piece.len()) as u64 > max {
                too_large = true;
            } else if !too_large {
                body.extend_from_slice(piece);
            }
        });
        let (status, msg) = match used {
            Ok(_) if too_large => (
                Status::PayloadTooLarge,
                format!("{what} body too large (at most {max} bytes)\n"),
            ),
            Ok(used) => {
                conn.rbuf.drain(..used);
                if decoder.is_done() {
                    return Ok(Ok(body));
                }
                if !matches!(read_more(conn, wait).await, ReadOutcome::Data) {
                    return Ok(Err(Next::Close));
                }
                continue;
            }
            Err(why) => (Status::BadRequest, why.to_string()),
        };
        let next = respond_text(core, conn, route, status, &msg, false).await?;
        return Ok(Err(next));
    }
}

/// Redirect mode: where to send a client for a blob this node lacks (the best
/// other node, in `scheme`), or None when the miss is handled otherwise.
fn redirect_for(core: &Core, hash: &BlobHash, scheme: &str) -> Option<String> {
    if core.shared.config.on_miss != OnMiss::Redirect {
        return None;
    }
    let best = core.shared.hooks.control.locate(&hash.0)?;
    Some(format!("{scheme}://{best}/blobs/{hash}"))
}

/// Starts a response head with the headers every response carries (Alt-Svc,
/// Date).
fn head<'a>(core: &Core, out: &'a mut Vec<u8>, status: Status) -> Head<'a> {
    Head::new(out, status)
        .raw(&core.shared.alt_svc)
        .header("Date", &core.date.get().1)
}

/// The length of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub(super) const DATE_LEN: usize = 29;

/// `secs` (Unix time) as an HTTP date, with the second it stands for.
pub(super) fn http_date(secs: u64) -> (u64, [u8; DATE_LEN]) {
    let at = std::time::UNIX_EPOCH + Duration::from_secs(secs);
    let text = httpdate::fmt_http_date(at);
    let mut out = [0u8; DATE_LEN];
    let n = text.len().min(DATE_LEN);
    out[..n].copy_from_slice(&text.as_bytes()[..n]);
    (secs, out)
}

/// Whether a service's response header is one the node states itself: framing
/// and the connection are the transport's, `Date` the node's clock.
pub(super) fn node_states(name: &str) -> bool {
    ["content-length", "connection", "transfer-encoding", "date"]
        .iter()
        .any(|o| name.eq_ignore_ascii_case(o))
}

/// The head of a blob representation: a 200 or 206, or the 304 that stands for
/// it (which carries the same validators and caching fields, RFC 9110 §15.4.5).
/// `meta`: what a service said of the blob (its caching and extra headers).
fn blob_head<'a>(
    core: &Core,
    wbuf: &'a mut Vec<u8>,
    status: Status,
    tag: &BlobTag,
    content_type: &[u8],
    meta: Option<&service_api::BlobReply>,
) -> Head<'a> {
    let head = head(core, wbuf, status);
    let mut head = if status == Status::NotModified {
        head
    } else {
        head.header("Content-Type", content_type)
    };
    let cache_control = meta
        .and_then(|m| m.cache_control.as_deref())
        .unwrap_or(http::BLOB_CACHE_CONTROL);
    for (name, value) in meta.and_then(|m| m.headers.as_deref()).unwrap_or(&[]) {
        if !node_states(name) {
            head = head.header(name, value.as_bytes());
        }
    }
    if let Some(at) = meta.and_then(|m| m.stored_at) {
        head = head.header_u64("Age", crate::store::now_secs().saturating_sub(at));
    }
    head.etag(tag)
        .header("Cache-Control", cache_control.as_bytes())
        .header("Vary", b"Accept")
        .header("Accept-Ranges", b"bytes")
}

/// Evaluates the request's preconditions against a blob representation
/// (RFC 9110 §13.2.2, the rules in [`http::conditional`]) and answers the 304
/// or 412 itself. `Ok(Ok(honor_range))`: serve it, with the `Range` if
/// `honor_range` (false when `If-Range` did not match: the whole blob, 200).
async fn blob_preconditions(
    core: &Core,
    conn: &mut Conn,
    info: &ReqInfo,
    hash: BlobHash,
    tag: &BlobTag,
    meta: Option<&service_api::BlobReply>,
    keep_alive: bool,
) -> io::Result<Result<bool, Next>> {
    let has_range = info.range_len.is_some();
    let validators = Validators {
        etag: Some(tag.as_bytes()),
        ..Validators::default()
    };
    // The head was parsed into `preconditions`, so it is there.
    let outcome = match conn.preconditions.as_deref() {
        Some(pre) => pre.evaluate(info.method, has_range, &validators),
        None => ConditionalOutcome::Proceed { honor_range: true },
    };
    match outcome {
        ConditionalOutcome::Proceed { honor_range } => Ok(Ok(honor_range)),
        ConditionalOutcome::NotModified => {
            // A revalidation is a use: the blob stays recent for eviction.
            touch(core, hash);
            let mut wbuf = std::mem::take(&mut conn.wbuf);
            blob_head(core, &mut wbuf, Status::NotModified, tag, b"", meta)
                .finish_without_length(keep_alive);
            conn.wbuf = wbuf;
            let next = send_wbuf(core, conn, info.route, Status::NotModified, keep_alive).await?;
            Ok(Err(next))
        }
        ConditionalOutcome::PreconditionFailed => {
            let next = respond_text(
                core,
                conn,
                info.route,
                Status::PreconditionFailed,
                http::PRECONDITION_FAILED_MESSAGE,
                keep_alive,
            )
            .await?;
            Ok(Err(next))
        }
    }
}

async fn range_not_satisfiable(
    core: &Core,
    conn: &mut Conn,
    route: Route,
    size: u64,
    keep_alive: bool,
) -> io::Result<Next> {
    let body = b"range outside the blob\n";
    let mut wbuf = std::mem::take(&mut conn.wbuf);
    head(core, &mut wbuf, Status::RangeNotSatisfiable)
        .header("Content-Type", b"text/plain")
        .content_range_unsatisfied(size)
        .finish(body.len() as u64, keep_alive);
    wbuf.extend_from_slice(body);
    conn.wbuf = wbuf;
    send_wbuf(core, conn, route, Status::RangeNotSatisfiable, keep_alive).await
}

async fn get_plain(
    core: &Core,
    conn: &mut Conn,
    info: &ReqInfo,
    hash: BlobHash,
    meta: Option<&service_api::BlobReply>,
    keep_alive: bool,
) -> io::Result<Next> {
    let route = info.route;
    let Opened {
        fd: file,
        size,
        body,
        ..
    } = match open_or_answer(core, conn, route, &hash, b"", keep_alive, info.from_peer).await? {
        Ok(found) => found,
        Err(next) => return Ok(next),
    };
    let tag = BlobTag::new(&hash, false);
    let other_status = meta.and_then(|m| m.status);
    let range = match other_status {
        // Ranges and preconditions are a 200's; another status sends it all.
        Some(_) => None,
        None => match blob_preconditions(core, conn, info, hash, &tag, meta, keep_alive).await? {
            Ok(honor_range) => info.range().filter(|_| honor_range),
            Err(next) => return Ok(next),
        },
    };
    let (status, first, len) = match http::parse_range(range, size) {
        RangeRequest::Full => (other_status.unwrap_or(Status::Ok), 0, size),
        RangeRequest::Partial { first, last } => (Status::PartialContent, first, last - first + 1),
        RangeRequest::Unsatisfiable => {
            return range_not_satisfiable(core, conn, route, size, keep_alive).await
        }
    };
    let mut wbuf = std::mem::take(&mut conn.wbuf);
    let content_type = meta.map_or(&b"application/octet-stream"[..], |m| {
        m.content_type.as_bytes()
    });
    let mut head = blob_head(core, &mut wbuf, status, &tag, content_type, meta);
    if status == Status::PartialContent {
        head = head.content_range(first, first + len - 1, size);
    }
    head.finish(len, keep_alive);
    conn.wbuf = wbuf;
    touch(core, hash);
    core.stats()
        .count_request(route.label_index(), status.index());
    if info.method == Method::Head || len == 0 {
        write_wbuf(core, conn).await?;
    } else if let Some(body) = body {
        // A small blob whose bytes the core holds: copied behind the head, one
        // write. The buffer keeps its capacity between responses, so this
        // allocates only the first time a connection sends a body this large.
        conn.wbuf
            .extend_from_slice(&body[first as usize..(first + len) as usize]);
        bump(&core.stats().copied_body_bytes, len);
        write_wbuf(core, conn).await?;
    } else {
        send_file_zero_copy(core, conn, &file, first, len).await?;
    }
    Ok(if keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    })
}

/// Sends the head in `conn.wbuf` and `len` bytes of `file` from `offset`:
/// head copied into the pipe, body spliced file -> pipe -> socket by page reference.
async fn send_file_zero_copy(
    core: &Core,
    conn: &mut Conn,
    file: &OwnedFd,
    offset: u64,
    len: u64,
) -> io::Result<()> {
    send_pieces_zero_copy(core, conn, file, &[(offset, len)]).await
}

/// As [`send_file_zero_copy`], with a body of several `(offset, length)`
/// pieces of `file`, in turn (a range of a kept verified stream).
async fn send_pieces_zero_copy(
    core: &Core,
    conn: &mut Conn,
    file: &OwnedFd,
    pieces: &[(u64, u64)],
) -> io::Result<()> {
    let (&(first_offset, first_len), mut rest) = pieces.split_first().unwrap_or((&(0, 0), &[]));
    let len: u64 = pieces.iter().map(|p| p.1).sum();
    if conn.pipe.is_none() {
        conn.pipe = Some(Pipe::new(core.shared.config.pipe_bytes)?);
    }
    let Some(pipe) = conn.pipe.as_ref() else {
        return Err(io::Error::other("pipe missing"));
    };
    let socket = conn.stream.as_raw_fd();
    let head_len = conn.wbuf.len();
    // The pipe is empty between responses and holds at least 4 KiB, more than a head.
    let mut in_pipe = pipe.write(&conn.wbuf)?;
    if in_pipe != head_len {
        return Err(io::Error::other("response head did not fit the pipe"));
    }
    conn.wbuf.clear();
    let (mut offset, mut left) = (first_offset, first_len);
    let capacity = pipe.capacity();
    let mut sent = 0u64;
    loop {
        if left == 0 {
            match rest.split_first() {
                Some((&(o, l), tail)) => {
                    (offset, left, rest) = (o, l, tail);
                    continue;
                }
                None if in_pipe == 0 => break,
                None => {}
            }
        }
        if left > 0 && in_pipe < capacity {
            let want = (capacity - in_pipe).min(left as usize);
            match pipe.fill_from_file(file.as_raw_fd(), &mut offset, want) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "blob shorter than its size",
                    ))
                }
                Ok(n) => {
                    in_pipe += n;
                    left -= n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        match pipe.drain_to_socket(socket, in_pipe, left > 0 || !rest.is_empty()) {
            Ok(n) => {
                in_pipe -= n;
                sent += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Socket buffer full: wait for room through io_uring (poll), with the
                // stall timeout so a reader that stops reading is cut off.
                let wait = Duration::from_millis(core.shared.config.header_timeout_ms);
                match monoio::time::timeout(wait, conn.stream.writable(false)).await {
                    Ok(r) => r?,
                    Err(_) => {
                        bump(&core.stats().timeouts, 1);
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    bump(&core.stats().bytes_sent, sent);
    bump(&core.stats().zero_copy_bytes, len);
    bump(&core.stats().zero_copy_responses, 1);
    Ok(())
}

async fn get_verified(
    core: &Core,
    conn: &mut Conn,
    info: &ReqInfo,
    hash: BlobHash,
    meta: Option<&service_api::BlobReply>,
    keep_alive: bool,
) -> io::Result<Next> {
    let route = info.route;
    let Opened { fd: file, size, .. } =
        match open_or_answer(core, conn, route, &hash, b"", keep_alive, info.from_peer).await? {
            Ok(found) => found,
            Err(next) => return Ok(next),
        };
    let Opened { fd: outboard, .. } =
        match open_or_answer(core, conn, route, &hash, b".obao", keep_alive, true).await? {
            Ok(found) => found,
            Err(next) => return Ok(next),
        };
    let tag = BlobTag::new(&hash, true);
    let range = match blob_preconditions(core, conn, info, hash, &tag, meta, keep_alive).await? {
        Ok(honor_range) => info.range().filter(|_| honor_range),
        Err(next) => return Ok(next),
    };
    let (ranges, whole) = match http::parse_range(range, size) {
        RangeRequest::Full => (verified::all_ranges(), true),
        RangeRequest::Partial { first, last } => (verified::group_ranges(first, last), false),
        RangeRequest::Unsatisfiable => {
            return range_not_satisfiable(core, conn, route, size, keep_alive).await
        }
    };
    let total = verified::encoded_len(size, &ranges);
    let mut wbuf = std::mem::take(&mut conn.wbuf);
    blob_head(
        core,
        &mut wbuf,
        Status::Ok,
        &tag,
        http::BAO_MEDIA_TYPE.as_bytes(),
        meta,
    )
    .finish(total, keep_alive);
    conn.wbuf = wbuf;
    touch(core, hash);
    core.stats()
        .count_request(route.label_index(), Status::Ok.index());
    if info.method == Method::Head {
        write_wbuf(core, conn).await?;
        return Ok(if keep_alive {
            Next::KeepAlive
        } else {
            Next::Close
        });
    }
    // Node-to-node transfers may be capped per transfer (operators' egress
    // budget for peers); clients never are.
    let cap = match core.shared.config.peer_transfer_bytes_per_sec {
        c if c > 0 && info.from_peer => Some(c),
        _ => None,
    };
    // Test builds only: act as a malicious peer that flips a byte in the first
    // chunk group it sends to another node (after checking it, so the lie is
    // ours, not the disk's).
    #[cfg(feature = "fault-injection")]
    let mut corrupt_next =
        info.from_peer && std::env::var_os("TESSERA_FAULT_CORRUPT_PEER_STREAMS").is_some();
    #[cfg(not(feature = "fault-injection"))]
    let corrupt_next = false;
    if cap.is_none() && !corrupt_next && size >= KEEP_STREAM_MIN_BYTES {
        // A range is spliced from the kept copy too, a few pieces of it, but
        // does not count as an ask for one.
        let kept = if whole {
            kept_stream(core, &hash, total)
        } else if core.shared.store.keeps_streams() {
            open_kept(
                core,
                &hash,
                verified::encoded_len(size, &verified::all_ranges()),
            )
        } else {
            None
        };
        if let Some(kept) = kept {
            let mut pieces = core.stream_pieces.take();
            if whole {
                pieces.clear();
                pieces.push((0, total));
            } else {
                verified::pieces_in_whole(size, &ranges, &mut pieces);
            }
            let sent = send_pieces_zero_copy(core, conn, &kept, &pieces).await;
            core.stream_pieces.replace(pieces);
            sent?;
            bump(&core.stats().kept_stream_responses, 1);
            return Ok(if keep_alive {
                Next::KeepAlive
            } else {
                Next::Close
            });
        }
    }
    conn.wbuf.extend_from_slice(&size.to_le_bytes());
    let started = Instant::now();
    let mut sent = 0u64;
    let mut walk = verified::Walk::new(hash.as_blake3(), size, &ranges);
    let (mut scratch, mut iov) = core.verify_scratch.borrow_mut().pop().unwrap_or_default();
    let mut stored = verified::Stored {
        outboard: |buf: &mut [u8], at| sys::read_exact_at(outboard.as_raw_fd(), buf, at),
        data: |buf: &mut [u8], at| sys::read_exact_at(file.as_raw_fd(), buf, at),
    };
    loop {
        // A whole subtree (256 KiB and its pairs) is sent with one writev from
        // the buffers it was read and checked in, after what the write buffer
        // holds; single pairs and groups are copied into the write buffer.
        let gather = walk.next_is_subtree();
        #[cfg(feature = "fault-injection")]
        let gather = gather && !corrupt_next;
        iov.clear();
        if gather && !conn.wbuf.is_empty() {
            iov.push(iovec_of(&conn.wbuf));
        }
        let wbuf = &mut conn.wbuf;
        let copied = &core.stats().copied_bytes;
        let iov_ref = &mut iov;
        let step = walk.step(&mut stored, &mut scratch, &mut |item| {
            let piece = match item {
                verified::Item::Size(_) => return Ok(()),
                verified::Item::Parent { pair, .. } => &pair[..],
                verified::Item::Group { data, .. } => {
                    bump(copied, data.len() as u64);
                    data
                }
            };
            if gather {
                iov_ref.push(iovec_of(piece));
                return Ok(());
            }
            #[cfg(feature = "fault-injection")]
            let at = wbuf.len();
            wbuf.extend_from_slice(piece);
            #[cfg(feature = "fault-injection")]
            if matches!(item, verified::Item::Group { .. }) && std::mem::take(&mut corrupt_next) {
                wbuf[at] ^= 0x01;
            }
            Ok(())
        });
        match step {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                // Never send bytes that do not match the hash: cut the stream here so the
                // client sees it end early; `tessera store verify` finds the blob. What
                // the write buffer holds (the head, pieces checked before) is sent first.
                give_scratch(core, scratch, iov);
                let _ = write_wbuf(core, conn).await;
                bump(&core.stats().corrupt_detected, 1);
                tracing::error!(%hash, "stored blob is corrupt: {e}; moving it to quarantine/");
                let store = core.shared.store.clone();
                if let Err(e) = off_core(move || store.quarantine(&hash)).await {
                    tracing::error!(%hash, "cannot quarantine corrupt blob: {e}");
                }
                conn.wbuf.clear();
                return Ok(Next::Close);
            }
        }
        let wrote = if gather {
            let mut g = Gather {
                head: std::mem::take(&mut conn.wbuf),
                scratch,
                iov,
                start: 0,
            };
            let total = g.remaining();
            let res = g.write_all(&mut conn.stream).await;
            g.head.clear();
            conn.wbuf = g.head;
            (scratch, iov) = (g.scratch, g.iov);
            res.map(|()| total)
        } else if conn.wbuf.len() >= VERIFIED_FLUSH_BYTES {
            let n = conn.wbuf.len() as u64;
            write_wbuf(core, conn).await.map(|()| n)
        } else {
            Ok(0)
        };
        match wrote {
            Err(e) => {
                give_scratch(core, scratch, iov);
                return Err(e);
            }
            Ok(0) => continue,
            Ok(n) => {
                if gather {
                    bump(&core.stats().bytes_sent, n);
                }
                sent += n;
            }
        }
        if let Some(cap) = cap {
            let due = Duration::from_secs_f64(sent as f64 / cap as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                monoio::time::sleep(wait).await;
            }
        }
    }
    give_scratch(core, scratch, iov);
    write_wbuf(core, conn).await?;
    Ok(if keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    })
}

/// Verified streams of blobs smaller than this are always built as they are
/// sent: a few groups cost less to check than a kept copy costs on disk.
const KEEP_STREAM_MIN_BYTES: u64 = 64 << 10;

/// Blob `hash`'s kept whole verified stream of `len` bytes, if there is one.
/// Otherwise the ask is counted ([`Store::second_ask`]), and the second has
/// the stream written, off the core, for the next request.
fn kept_stream(core: &Core, hash: &BlobHash, len: u64) -> Option<OwnedFd> {
    let store = &core.shared.store;
    if !store.keeps_streams() {
        return None;
    }
    if let Some(fd) = open_kept(core, hash, len) {
        return Some(fd);
    }
    // A stream the budget can never hold is not asked for (no lock, no job).
    if !store.could_keep(len) || !store.second_ask(hash) {
        return None;
    }
    let (store, hash) = (store.clone(), *hash);
    monoio::spawn(async move {
        let kept = off_core({
            let store = store.clone();
            move || store.keep_stream(&hash)
        })
        .await;
        match kept {
            Ok(_) | Err(StoreError::NotFound(_)) => {}
            Err(StoreError::Verify(e)) => {
                tracing::error!(%hash, "stored blob is corrupt: {e}; moving it to quarantine/");
                if let Err(e) = off_core(move || store.quarantine(&hash)).await {
                    tracing::error!(%hash, "cannot quarantine corrupt blob: {e}");
                }
            }
            Err(e) => tracing::warn!(%hash, "cannot keep the verified stream: {e}"),
        }
    });
    None
}

/// Blob `hash`'s kept whole verified stream, if there is one of `len` bytes.
fn open_kept(core: &Core, hash: &BlobHash, len: u64) -> Option<OwnedFd> {
    let store = &core.shared.store;
    match sys::open_at(store.blobs_dir_fd(), hash, STREAM_SUFFIX.as_bytes()) {
        Ok(Some((fd, found))) if found == len => Some(fd),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(%hash, "cannot open kept verified stream: {e}");
            None
        }
    }
}

fn iovec_of(bytes: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    }
}

/// A checked subtree's pieces (after the write buffer's head and pairs),
/// written with `writev` from the buffers they were checked in.
struct Gather {
    head: Vec<u8>,
    scratch: verified::Scratch,
    iov: Vec<libc::iovec>,
    /// The first iovec not yet written (it may be partly written: then it was
    /// advanced past what was).
    start: usize,
}

// SAFETY: every iovec points into `head` or into `scratch`'s heap buffers,
// which this value owns and which are neither written, resized nor freed while
// the runtime holds it (it holds the whole value, and moving it moves no heap
// memory); `start <= iov.len()`, so the pointer and length describe live iovecs.
unsafe impl monoio::buf::IoVecBuf for Gather {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov[self.start..].as_ptr()
    }
    fn read_iovec_len(&self) -> usize {
        self.iov.len() - self.start
    }
}

impl Gather {
    fn remaining(&self) -> u64 {
        self.iov[self.start..]
            .iter()
            .map(|v| v.iov_len as u64)
            .sum()
    }

    /// Marks `n` more bytes written.
    fn consume(&mut self, mut n: usize) {
        while n > 0 && self.start < self.iov.len() {
            let v = &mut self.iov[self.start];
            if n >= v.iov_len {
                n -= v.iov_len;
                self.start += 1;
            } else {
                v.iov_base = v.iov_base.cast::<u8>().wrapping_add(n).cast();
                v.iov_len -= n;
                n = 0;
            }
        }
    }

    async fn write_all(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        let mut owned = std::mem::replace(self, Gather::empty());
        let mut result = Ok(());
        while owned.start < owned.iov.len() {
            let (res, back) = stream.writev(owned).await;
            owned = back;
            match res {
                Ok(0) => {
                    result = Err(io::ErrorKind::WriteZero.into());
                    break;
                }
                Ok(n) => owned.consume(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        *self = owned;
        result
    }

    fn empty() -> Self {
        Gather {
            head: Vec::new(),
            scratch: verified::Scratch::empty(),
            iov: Vec::new(),
            start: 0,
        }
    }
}

/// Returns a verified-stream buffer to the core's pool (a few are kept).
fn give_scratch(core: &Core, scratch: verified::Scratch, mut iov: Vec<libc::iovec>) {
    let mut pool = core.verify_scratch.borrow_mut();
    if pool.len() < VERIFY_SCRATCH_KEPT {
        iov.clear();
        pool.push((scratch, iov));
    }
}

/// Runs blocking store work on the store-I/O threads and waits for it without
/// blocking the core.
async fn off_core<R: Send + 'static>(
    work: impl FnOnce() -> Result<R, StoreError> + Send + 'static,
) -> Result<R, StoreError> {
    match monoio::spawn_blocking(work).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Io(io::Error::other(
            "store I/O thread pool is gone",
        ))),
    }
}

/// `POST /blobs`: streams the body into the store, hashing as it writes. The body is
/// read through a larger buffer than heads need, taken from the core's pool.
async fn upload(core: &Core, conn: &mut Conn, info: &ReqInfo) -> io::Result<Next> {
    let big = core
        .upload_bufs
        .borrow_mut()
        .pop()
        .unwrap_or_else(|| ReadBuf::with_capacity(UPLOAD_BUF_BYTES));
    let small = std::mem::replace(&mut conn.rbuf, big);
    conn.rbuf.clear();
    conn.rbuf.extend_from_slice(&small);
    let mut result = upload_body(core, conn, info).await;
    let mut big = std::mem::replace(&mut conn.rbuf, small);
    conn.rbuf.clear();
    if big.len() <= conn.rbuf.capacity() {
        // Whatever the client pipelined after the body.
        conn.rbuf.extend_from_slice(&big);
    } else {
        result = result.map(|_| Next::Close);
    }
    big.clear();
    let mut pool = core.upload_bufs.borrow_mut();
    if big.capacity() == UPLOAD_BUF_BYTES && pool.len() < UPLOAD_BUFS_KEPT {
        pool.push(big);
    }
    result
}

async fn upload_body(core: &Core, conn: &mut Conn, info: &ReqInfo) -> io::Result<Next> {
    let route = info.route;
    let cfg = &core.shared.config;
    if let Body::Length(n) = info.body {
        if n > cfg.max_body_bytes {
            return store_error(
                core,
                conn,
                route,
                StoreError::TooLarge {
                    limit: cfg.max_body_bytes,
                },
            )
            .await;
        }
    }
    if info.expect_continue {
        conn.wbuf.clear();
        conn.wbuf
            .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        write_wbuf(core, conn).await?;
    }
    conn.rbuf.drain(..info.head_len);
    let store = core.shared.store.clone();
    let mut writer = match store.begin_put(cfg.max_body_bytes) {
        Ok(w) => w,
        Err(e) => return store_error(core, conn, route, e).await,
    };
    let stall = Duration::from_millis(cfg.header_timeout_ms);
    let mut chunked = ChunkedDecoder::default();
    let mut remaining = match info.body {
        Body::Length(n) => n,
        Body::None => 0,
        Body::Chunked => u64::MAX,
    };
    loop {
        // Consume what is buffered.
        let mut failed = None;
        let used = match info.body {
            Body::Chunked => {
                let res = chunked.decode(&conn.rbuf, |piece| {
                    if failed.is_none() {
                        if let Err(e) = writer.write(piece) {
                            failed = Some(e);
                        }
                    }
                });
                match res {
                    Ok(n) => n,
                    Err(msg) => {
                        return respond_text(core, conn, route, Status::BadRequest, msg, false)
                            .await
                    }
                }
            }
            _ => {
                let take = (remaining.min(conn.rbuf.len() as u64)) as usize;
                if let Err(e) = writer.write(&conn.rbuf[..take]) {
                    failed = Some(e);
                }
                remaining -= take as u64;
                take
            }
        };
        bump(&core.stats().bytes_received, used as u64);
        conn.rbuf.drain(..used);
        if let Some(e) = failed {
            drop(writer);
            return store_error(core, conn, route, e).await;
        }
        let done = match info.body {
            Body::Chunked => chunked.is_done(),
            _ => remaining == 0,
        };
        if done {
            break;
        }
        match read_more(conn, stall).await {
            ReadOutcome::Data => {}
            ReadOutcome::TimedOut => {
                bump(&core.stats().timeouts, 1);
                return Ok(Next::Close);
            }
            // Client went away mid-body: the writer's drop removes the temp file.
            ReadOutcome::Eof | ReadOutcome::Error => return Ok(Next::Close),
        }
    }
    let keep_alive = info.keep_alive && !core.stopping.get();
    match off_core(move || writer.finish()).await {
        Ok(out) => {
            if !info.from_peer {
                core.shared.hooks.control.stored(&out.hash.0);
            }
            let mut body = [0u8; 128];
            let len = {
                let mut cur = io::Cursor::new(&mut body[..]);
                let _ = writeln!(cur, "{{\"hash\":\"{}\",\"size\":{}}}", out.hash, out.size);
                cur.position() as usize
            };
            respond(
                core,
                conn,
                route,
                Status::Created,
                "application/json",
                &body[..len],
                keep_alive,
                false,
            )
            .await
        }
        Err(e) => store_error(core, conn, route, e).await,
    }
}

/// The status and message a client gets when the store refuses an upload, on any
/// protocol.
fn upload_refusal(e: &StoreError) -> (Status, &'static str) {
    match e {
        StoreError::TooLarge { .. } => (
            Status::PayloadTooLarge,
            "body is larger than the node's max_body_bytes\n",
        ),
        StoreError::Full { .. } => (
            Status::InsufficientStorage,
            "store is full: only pinned blobs are left to evict\n",
        ),
        StoreError::NoSpace => (
            Status::InsufficientStorage,
            "disk is full; nothing was stored\n",
        ),
        _ => {
            tracing::error!("upload failed: {e}");
            (
                Status::InternalServerError,
                "upload failed; see the node's log\n",
            )
        }
    }
}

async fn store_error(
    core: &Core,
    conn: &mut Conn,
    route: Route,
    e: StoreError,
) -> io::Result<Next> {
    // The body may be partly unread: answer and close.
    let (status, msg) = upload_refusal(&e);
    if status == Status::InsufficientStorage {
        tracing::warn!("upload refused: {e}");
    }
    let next = respond_text(core, conn, route, status, msg, false).await;
    linger(conn).await;
    next
}

/// Reads and discards what the client still sends (bounded in bytes and time) before
/// closing, so that a client still writing its body sees our answer instead of a reset.
async fn linger(conn: &mut Conn) {
    /// Enough for a client's socket buffers in flight; not a way to keep a core busy.
    const LINGER_BYTES: usize = 64 << 20;
    const LINGER_TOTAL: Duration = Duration::from_secs(5);
    let deadline = Instant::now() + LINGER_TOTAL;
    let mut discarded = 0usize;
    while discarded < LINGER_BYTES {
        conn.rbuf.clear();
        let wait = deadline.saturating_duration_since(Instant::now());
        match read_more(conn, wait).await {
            ReadOutcome::Data => discarded += conn.rbuf.len(),
            _ => break,
        }
    }
    conn.rbuf.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    /// What a second did not take goes (least recently returned first),
    /// down to the warm few; what it took stays.
    #[test]
    fn spares_free_only_what_a_second_did_not_need() {
        let mut spares = Spares::default();
        for i in 0..40 {
            spares.put(i);
        }
        // The list started the period empty: nothing was unused all along.
        assert_eq!((spares.decay(), spares.len()), (0, 40));
        // A period that never took one: all but the warm ones go, oldest first.
        assert_eq!(spares.decay(), 40 - SPARES_KEPT_WARM);
        assert_eq!(
            spares.items,
            (40 - SPARES_KEPT_WARM..40).collect::<Vec<_>>()
        );
        // A steady load that takes and returns them frees nothing.
        for _ in 0..4 {
            spares.put(100);
            spares.put(101);
        }
        assert_eq!(spares.decay(), 0);
        let taken: Vec<_> = (0..spares.len()).filter_map(|_| spares.take()).collect();
        taken.into_iter().for_each(|i| spares.put(i));
        assert_eq!(spares.decay(), 0, "all were taken this period");
        assert_eq!(spares.len(), SPARES_KEPT_WARM + 8);
    }
}
