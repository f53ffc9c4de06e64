//! SIGTERM with an HTTP/3 download in flight. The node sends a GOAWAY naming
//! the first request it will not answer, refuses a request sent after it
//! (`H3_REQUEST_REJECTED`, which a client may retry elsewhere), lets the
//! download finish (through a pause of the client's reads longer than the
//! node waits on a silent peer), then closes the connection with
//! `H3_NO_ERROR` and exits.
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

#[test]
fn sigterm_lets_an_http3_download_finish_and_refuses_later_requests() {
    let node = Node::start(&[]);
    let data = random_bytes(8 << 20, 31);
    let hash = node.put_bytes(&data);
    let path = format!("/blobs/{hash}");

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
    let mut finished = false;
    // SIGTERM sent: the client stops reading and parsing HTTP/3 until the
    // node's GOAWAY reaches it, then sends one more request.
    let mut signalled = false;
    let mut late: Option<u64> = None;
    let mut goaway: Option<u64> = None;
    let mut late_reset: Option<u64> = None;
    // Once the late request is refused, the client reads nothing for 4 s,
    // longer than the node waits on a peer that sends nothing, while its QUIC
    // stack runs: a client that is there but paused keeps its download.
    let mut paused_until: Option<Instant> = None;
    let mut buf = vec![0u8; 65536];
    let mut out = vec![0u8; 1350];
    let deadline = Instant::now() + Duration::from_secs(120);
    while !conn.is_closed() {
        assert!(
            Instant::now() < deadline,
            "not done in 120 s: {} bytes, goaway {goaway:?}, late reset {late_reset:?}",
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
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
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
        if signalled && late.is_none() {
            // New bytes on one of the node's unidirectional streams (its
            // control stream): the GOAWAY, not parsed yet, so quiche still
            // lets this client send a request, as a client does whose request
            // crossed the GOAWAY in flight.
            let control = conn.readable().any(|s| s % 4 == 3);
            if control {
                late = Some(quiche_get(h, &mut conn, &path));
            }
            continue;
        }
        loop {
            match h.poll(&mut conn) {
                Ok((_, quiche::h3::Event::Finished)) => finished = true,
                Ok((id, quiche::h3::Event::GoAway)) => goaway = Some(id),
                Ok((s, quiche::h3::Event::Reset(code))) => {
                    assert_eq!(Some(s), late, "only the late request is reset ({code:#x})");
                    late_reset = Some(code);
                }
                Ok((s, quiche::h3::Event::Headers { list, .. })) => {
                    assert_eq!(Some(s), download, "only the download is answered");
                    let status = list.iter().find(|h| h.name() == b":status");
                    assert_eq!(status.map(|h| h.value()), Some(&b"200"[..]));
                }
                Ok(_) => {}
                Err(quiche::h3::Error::Done) => break,
                Err(e) => panic!("h3: {e}"),
            }
        }
        if late_reset.is_some() && paused_until.is_none() {
            paused_until = Some(Instant::now() + Duration::from_secs(4));
        }
        let paused = paused_until.is_some_and(|t| Instant::now() < t);
        if let (Some(s), false) = (download, paused) {
            while let Ok(n) = h.recv_body(&mut conn, s, &mut buf) {
                body.extend_from_slice(&buf[..n]);
            }
        }
        if !signalled && body.len() >= 1 << 20 {
            assert!(body.len() < data.len(), "the download was still under way");
            // SAFETY: sending a signal to our own child process.
            unsafe { libc::kill(node.pid(), libc::SIGTERM) };
            signalled = true;
        }
    }
    assert!(finished, "the download finished ({} bytes)", body.len());
    assert!(body == data, "the bytes of the download are the blob's");
    assert_eq!(
        goaway,
        Some(4),
        "GOAWAY names the first request not answered"
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
