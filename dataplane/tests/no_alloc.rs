//! The plain GET path allocates nothing per request: an in-process server, a global
//! allocator that counts, and thousands of keep-alive requests over a real socket.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dataplane::config::NodeConfig;
use dataplane::server::Server;
use dataplane::store::{Store, StoreConfig};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

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

#[test]
fn plain_get_allocates_nothing_per_request() {
    let dir = tempfile::tempdir().expect("tmp");
    let store =
        Arc::new(Store::open(dir.path(), StoreConfig { max_bytes: 1 << 30 }).expect("store"));
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 13) as u8).collect();
    let hash = store.put_reader(&data[..]).expect("put").hash;
    let addr = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let config = NodeConfig {
        listen: addr,
        cores: 1,
        data_dir: dir.path().to_path_buf(),
        ..NodeConfig::default()
    };
    let shutdown = Arc::new(AtomicBool::new(false));
    let server = Server::start(config, store, shutdown.clone()).expect("start");

    let request =
        format!("GET /blobs/{hash} HTTP/1.1\r\nHost: t\r\nRange: bytes=0-\r\n\r\n").into_bytes();
    let mut conn = TcpStream::connect(addr).expect("connect");
    // Learn the response's exact length, then warm up (buffers, pipe, open-file cache).
    conn.write_all(&request).expect("write");
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    let response_len = loop {
        len += conn.read(&mut buf[len..]).expect("read");
        if let Some(end) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            if len >= end + 4 + data.len() {
                break end + 4 + data.len();
            }
        }
    };
    assert_eq!(len, response_len);
    assert!(buf.starts_with(b"HTTP/1.1 206"));
    let exchange = |conn: &mut TcpStream, buf: &mut [u8]| {
        conn.write_all(&request).expect("write");
        conn.read_exact(&mut buf[..response_len]).expect("read");
    };
    for _ in 0..500 {
        exchange(&mut conn, &mut buf);
    }

    const REQUESTS: u64 = 5000;
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..REQUESTS {
        exchange(&mut conn, &mut buf);
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(&buf[response_len - data.len()..response_len], &data[..]);
    println!("{allocations} allocations in {REQUESTS} requests (all threads)");
    // Background work (timer ticks, the once-a-second flush of access times) may
    // allocate a little; one allocation per request would be thousands.
    assert!(
        allocations < REQUESTS / 10,
        "{allocations} allocations for {REQUESTS} requests"
    );
    shutdown.store(true, Ordering::SeqCst);
    drop(conn);
    server.wait();
}
