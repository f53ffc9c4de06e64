//! SIGTERM with an HTTP/3 download in flight. The node sends a first GOAWAY
//! that refuses nothing, then, a second later, a final one naming the first
//! request it will not answer. A request that crossed the first GOAWAY is
//! answered; one sent after the final GOAWAY is refused
//! (`H3_REQUEST_REJECTED`, which a client may retry elsewhere). The download
//! finishes, through a pause of the client's reads longer than the node waits
//! on a silent peer; then the node closes the connection with `H3_NO_ERROR`
//! and exits.
//!
//! The client is quiche's HTTP/3 client (only the QUIC stack is shared with
//! the node): aioquic's example client can neither pause its reads nor send a
//! request at a chosen moment.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;
use quiche::h3::NameValue;

const H3_NO_ERROR: u64 = 0x100;
const H3_REQUEST_REJECTED: u64 = 0x10b;
/// The largest client request stream ID: what a GOAWAY that refuses nothing names.
const MAX_REQUEST_ID: u64 = (1 << 62) - 4;

#[test]
fn sigterm_lets_an_http3_download_finish_and_refuses_later_requests() {
    let node = Node::start(&[]);
    let data = random_bytes(8 << 20, 31);
    let hash = node.put_bytes(&data);
    let path = format!("/blobs/{hash}");
    let small = random_bytes(20_000, 32);
    let small_path = format!("/blobs/{}", node.put_bytes(&small));

    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.set_nonblocking(true).expect("nonblocking");
    let local = socket.local_addr().expect("addr");
    // The node may send only 1 MiB ahead of what the client reads: while it
    // does not read, the download stays in flight.
    let mut config = quiche_h3_client_config(30_000, 1 << 20);
    let mut scid = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut scid);
    let scid = quiche::ConnectionId::from_ref(&scid);
    let mut conn = quiche::connect(None, &scid, local, node.addr, &mut config).expect("connect");
    let mut h3: Option<quiche::h3::Connection> = None;
    let mut download: Option<u64> = None;
    let mut body = Vec::new();
    let mut finished = Vec::new();
    // SIGTERM sent: the client stops reading and parsing HTTP/3. When the
    // node's first GOAWAY reaches it (new bytes on the node's control stream,
    // not parsed, so quiche still lets it send), it sends a request that
    // crossed it. It goes on reading nothing for 4 s, then sends another,
    // which crosses the final GOAWAY, and reads again.
    let mut signalled = false;
    // For 300 ms from the signal the client takes in no packets, so the
    // node's sends go unacknowledged and fill its congestion window: its
    // first GOAWAY may find no room then, and must still go before the final.
    let mut deaf_until: Option<Instant> = None;
    let mut crossed: Option<u64> = None;
    let mut crossed_body = Vec::new();
    let mut paused_until: Option<Instant> = None;
    let mut late: Option<u64> = None;
    let mut goaways = Vec::new();
    let mut late_reset: Option<u64> = None;
    let mut buf = vec![0u8; 65536];
    let mut out = vec![0u8; 1350];
    let deadline = Instant::now() + Duration::from_secs(120);
    while !conn.is_closed() {
        assert!(
            Instant::now() < deadline,
            "not done in 120 s: {} bytes, goaways {goaways:?}, late reset {late_reset:?}",
            body.len()
        );
        loop {
            match conn.send(&mut out) {
                Ok((n, info)) => {
                    let _ = socket.send_to(&out[..n], info.to);
                }
                Err(quiche::Error::Done) => break,
                Err(e) => panic!("send: {e}"),
            }
        }
        let mut got = false;
        while let Some(Ok((n, from))) = deaf_until
            .is_none_or(|t| Instant::now() >= t)
            .then(|| socket.recv_from(&mut buf))
        {
            got = true;
            let _ = conn.recv(&mut buf[..n], quiche::RecvInfo { from, to: local });
        }
        if !got {
            std::thread::sleep(Duration::from_micros(200));
            if conn.timeout().is_some_and(|t| t.is_zero()) {
                conn.on_timeout();
            }
        }
        if conn.is_established() && h3.is_none() {
            h3 = Some(quiche_h3(&mut conn));
        }
        let Some(h) = h3.as_mut() else { continue };
        if download.is_none() {
            download = Some(quiche_get(h, &mut conn, &path));
        }
        if signalled && crossed.is_none() {
            if conn.readable().any(|s| s % 4 == 3) {
                crossed = Some(quiche_get(h, &mut conn, &small_path));
                paused_until = Some(Instant::now() + Duration::from_secs(4));
            }
            continue;
        }
        if paused_until.is_some_and(|t| Instant::now() < t) {
            continue;
        }
        if crossed.is_some() && late.is_none() {
            late = Some(quiche_get(h, &mut conn, &path));
        }
        loop {
            match h.poll(&mut conn) {
                Ok((s, quiche::h3::Event::Finished)) => finished.push(s),
                Ok((id, quiche::h3::Event::GoAway)) => goaways.push(id),
                Ok((s, quiche::h3::Event::Reset(code))) => {
                    assert_eq!(Some(s), late, "only the late request is reset ({code:#x})");
                    late_reset = Some(code);
                }
                Ok((s, quiche::h3::Event::Headers { list, .. })) => {
                    assert!(
                        Some(s) == download || Some(s) == crossed,
                        "only the download and the request that crossed the first GOAWAY are answered"
                    );
                    let status = list.iter().find(|h| h.name() == b":status");
                    assert_eq!(status.map(|h| h.value()), Some(&b"200"[..]));
                }
                Ok(_) => {}
                Err(quiche::h3::Error::Done) => break,
                Err(e) => panic!("h3: {e}"),
            }
        }
        for (stream, into) in [(download, &mut body), (crossed, &mut crossed_body)] {
            if let Some(s) = stream {
                while let Ok(n) = h.recv_body(&mut conn, s, &mut buf) {
                    into.extend_from_slice(&buf[..n]);
                }
            }
        }
        if !signalled && body.len() >= 1 << 20 {
            assert!(body.len() < data.len(), "the download was still under way");
            // SAFETY: sending a signal to our own child process.
            unsafe { libc::kill(node.pid(), libc::SIGTERM) };
            signalled = true;
            deaf_until = Some(Instant::now() + Duration::from_millis(300));
        }
    }
    assert!(
        download.is_some_and(|s| finished.contains(&s)),
        "the download finished ({} bytes)",
        body.len()
    );
    assert!(body == data, "the bytes of the download are the blob's");
    assert!(
        crossed.is_some_and(|s| finished.contains(&s)) && crossed_body == small,
        "the request that crossed the first GOAWAY is answered whole ({} bytes)",
        crossed_body.len()
    );
    assert_eq!(
        goaways,
        [MAX_REQUEST_ID, 8],
        "a first GOAWAY that refuses nothing, then one naming the first request not answered"
    );
    assert_eq!(late_reset, Some(H3_REQUEST_REJECTED), "the late request");
    let closed = conn.peer_error().expect("closed by the node");
    assert!(closed.is_app, "{closed:?}");
    assert_eq!(closed.error_code, H3_NO_ERROR, "{closed:?}");
    let mut node = node;
    let status = node.child.take().expect("child").wait().expect("wait");
    assert!(status.success(), "exit: {status}");
}

/// A client that vanished mid-download (killed, no CONNECTION_CLOSE) holds
/// up neither the drain nor the exit: after two seconds without a packet
/// from it the node closes its connection, well inside a grace period of a
/// minute, which it would otherwise wait out.
#[test]
fn a_vanished_http3_client_does_not_hold_up_the_stop() {
    let node = Node::start(&["--shutdown-grace-ms", "60000"]);
    let data = random_bytes(64 << 20, 32);
    let hash = node.put_bytes(&data);
    let out = tempfile::tempdir().expect("tmp");
    let mut client = std::process::Command::new("python3")
        .arg(h3_client())
        .args(["--insecure", "--output-dir"])
        .arg(out.path())
        .arg(format!("https://{}/blobs/{hash}", node.addr))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("aioquic");
    within(Duration::from_secs(60), "the download under way", || {
        std::thread::sleep(Duration::from_millis(50));
        node.metric("tessera_h3_requests_total") >= 1
    });
    client.kill().expect("kill the client");
    let _ = client.wait();
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(node.pid(), libc::SIGTERM) };
    let mut node = node;
    let mut child = node.child.take().expect("child");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the node still drains a vanished client's connection after 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit: {status}");
}
