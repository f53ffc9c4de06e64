//! Support for the in-process allocation tests: a global allocator that counts
//! allocations (all threads), and a one-core server holding one blob.
#![allow(dead_code)] // each test binary uses a different part

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Counting;

pub static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// Allocations so far (allocs and reallocs).
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A one-core server in this process, holding one 4 KiB blob.
pub struct OneCore {
    pub addr: std::net::SocketAddr,
    pub hash: dataplane::hash::BlobHash,
    pub data: Vec<u8>,
    server: dataplane::server::Server,
    shutdown: std::sync::Arc<std::sync::atomic::AtomicBool>,
    _dir: tempfile::TempDir,
}

impl OneCore {
    /// `mul` varies the blob's bytes between tests.
    pub fn start(mul: u32) -> OneCore {
        Self::start_with(mul, |_| {})
    }

    /// The same, with `tweak` applied to the node's settings.
    pub fn start_with(mul: u32, tweak: impl FnOnce(&mut dataplane::config::NodeConfig)) -> OneCore {
        use dataplane::config::NodeConfig;
        use dataplane::store::{Store, StoreConfig};
        use std::sync::Arc;
        let dir = tempfile::tempdir().expect("tmp");
        let store = Arc::new(Store::open(dir.path(), StoreConfig::new(1 << 30)).expect("store"));
        let data: Vec<u8> = (0..4096u32).map(|i| (i * mul) as u8).collect();
        let hash = store.put_reader(&data[..]).expect("put").hash;
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        let mut config = NodeConfig {
            listen: addr,
            cores: 1,
            data_dir: dir.path().to_path_buf(),
            ..NodeConfig::default()
        };
        tweak(&mut config);
        let shutdown = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let server =
            dataplane::server::Server::start(config, store, shutdown.clone()).expect("start");
        OneCore {
            addr,
            hash,
            data,
            server,
            shutdown,
            _dir: dir,
        }
    }

    /// Stops the server and waits for its cores.
    pub fn stop(self) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.server.wait();
    }
}
