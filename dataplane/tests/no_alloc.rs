//! The plain GET path allocates nothing per request: an in-process server, a global
//! allocator that counts, and thousands of keep-alive requests over a real socket.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dataplane::config::NodeConfig;
use dataplane::server::Server;
use dataplane::store::{Store, StoreConfig};

mod counting;

use counting::allocations;

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
    let before = allocations();
    for _ in 0..REQUESTS {
        exchange(&mut conn, &mut buf);
    }
    let allocations = allocations() - before;
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
