//! The plain GET path allocates nothing per request: an in-process server, a global
//! allocator that counts, and thousands of keep-alive requests over a real socket.
//! Both with a connection that keeps its buffers between requests and with one
//! that parks (gives them back to the core's pool and waits for readability).

use std::io::{Read, Write};
use std::net::TcpStream;

mod support;

use support::{allocations, OneCore};

#[test]
fn plain_get_allocates_nothing_per_request() {
    get_allocates_nothing(OneCore::start(13));
}

#[test]
fn plain_get_on_a_parking_connection_allocates_nothing_per_request() {
    get_allocates_nothing(OneCore::start_with(17, |c| {
        c.park_idle_above_connections = 0
    }));
}

fn get_allocates_nothing(node: OneCore) {
    let (addr, hash, data) = (node.addr, node.hash, node.data.clone());

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
    drop(conn);
    node.stop();
}
