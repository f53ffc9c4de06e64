//! A client that migrates: mid-download it moves its QUIC connection to a new
//! local port (quiche's client-side `migrate_source`, the way a phone moves
//! from one network to another); and one behind a NAT that rebinds (its
//! datagrams leave from a new port without its QUIC stack knowing). The node must validate the new path, follow
//! the connection there, and, when the new 4-tuple's packets land on another
//! core (`SO_REUSEPORT` hashes them anywhere), steer them to the core that owns
//! the connection. The client is quiche's, not the node's code: only the QUIC
//! stack is shared (aioquic's example client cannot migrate on demand).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::*;

struct Migrated {
    body: Vec<u8>,
    /// The connection's active local address at the end.
    local_at_end: SocketAddr,
    second: SocketAddr,
}

/// GETs `path` from `peer` over HTTP/3 and migrates to a second socket once
/// `after` body bytes have arrived.
fn download_migrating(peer: SocketAddr, path: &str, after: usize) -> Migrated {
    download(peer, path, after, false)
}

/// With `rebind`, the move is a NAT rebinding instead: the client's QUIC stack
/// is not told; its datagrams simply leave from the second socket from then on
/// (the first one still receives what the node sends to the old address).
fn download(peer: SocketAddr, path: &str, after: usize, rebind: bool) -> Migrated {
    download_lingering(peer, path, after, rebind, None)
}

/// `linger`: how long the old mapping still delivers after a rebinding (None:
/// for ever).
fn download_lingering(
    peer: SocketAddr,
    path: &str,
    after: usize,
    rebind: bool,
    linger: Option<Duration>,
) -> Migrated {
    let sockets = [
        UdpSocket::bind("127.0.0.1:0").expect("bind"),
        UdpSocket::bind("127.0.0.1:0").expect("bind"),
    ];
    for s in &sockets {
        s.set_nonblocking(true).expect("nonblocking");
    }
    let locals = [
        sockets[0].local_addr().expect("addr"),
        sockets[1].local_addr().expect("addr"),
    ];
    let mut config = quiche_h3_client_config(10_000, 32 << 20);
    config.set_active_connection_id_limit(4);
    let mut scid = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut scid);
    let scid = quiche::ConnectionId::from_ref(&scid);
    let mut conn = quiche::connect(None, &scid, locals[0], peer, &mut config).expect("connect");
    let mut h3: Option<quiche::h3::Connection> = None;
    let mut stream = None;
    let mut body = Vec::new();
    let mut migrated = false;
    let mut migrated_at: Option<Instant> = None;
    let mut buf = vec![0u8; 65536];
    let mut out = vec![0u8; 1350];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if Instant::now() > deadline {
            for p in conn.path_stats() {
                eprintln!("client path: {p:?}");
            }
            panic!("download did not finish ({} bytes)", body.len());
        }
        assert!(!conn.is_closed(), "closed: {:?}", conn.peer_error());
        // Send whatever is due, each datagram from the socket quiche chose.
        loop {
            match conn.send(&mut out) {
                Ok((n, info)) => {
                    let s = if info.from == locals[1] || (rebind && migrated) {
                        &sockets[1]
                    } else {
                        &sockets[0]
                    };
                    let _ = s.send_to(&out[..n], info.to);
                }
                Err(quiche::Error::Done) => break,
                Err(e) => panic!("send: {e}"),
            }
        }
        // Receive on both sockets (the old path keeps working after a
        // voluntary migration).
        let mut got = false;
        let old_dead = matches!((migrated_at, linger), (Some(t), Some(l)) if t.elapsed() >= l);
        for (i, (s, local)) in sockets.iter().zip(locals).enumerate() {
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                if i == 0 && old_dead {
                    continue; // the old mapping is gone: dropped
                }
                got = true;
                // A NAT rebinding is invisible to the client: same local address.
                let to = if rebind { locals[0] } else { local };
                let info = quiche::RecvInfo { from, to };
                let _ = conn.recv(&mut buf[..n], info);
            }
        }
        if !got {
            if conn.timeout() == Some(Duration::ZERO) {
                conn.on_timeout();
            }
            std::thread::sleep(Duration::from_micros(200));
            if conn.timeout().is_some_and(|t| t.is_zero()) {
                conn.on_timeout();
            }
        }
        if conn.is_established() && h3.is_none() {
            // A spare connection ID of ours, for the server to use on the new
            // path (a migration needs spare IDs on both sides).
            let mut cid = [0u8; 16];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut cid);
            let token = u128::from_le_bytes(cid);
            conn.new_scid(&quiche::ConnectionId::from_ref(&cid), token, false)
                .expect("spare id");
            h3 = Some(quiche_h3(&mut conn));
        }
        let Some(h) = h3.as_mut() else { continue };
        if stream.is_none() {
            stream = Some(quiche_get(h, &mut conn, path));
        }
        loop {
            match h.poll(&mut conn) {
                Ok((_, quiche::h3::Event::Data)) => {
                    let s = stream.expect("stream");
                    while let Ok(n) = h.recv_body(&mut conn, s, &mut buf) {
                        body.extend_from_slice(&buf[..n]);
                    }
                }
                Ok((_, quiche::h3::Event::Finished)) => {
                    let local_at_end = if rebind {
                        locals[1]
                    } else {
                        conn.path_stats()
                            .find(|p| p.active)
                            .map(|p| p.local_addr)
                            .expect("an active path")
                    };
                    return Migrated {
                        body,
                        local_at_end,
                        second: locals[1],
                    };
                }
                Ok(_) => {}
                Err(quiche::h3::Error::Done) => break,
                Err(e) => panic!("h3: {e}"),
            }
        }
        if !migrated && body.len() >= after && (rebind || conn.available_dcids() > 0) {
            if !rebind {
                conn.migrate_source(locals[1]).expect("migrate");
            }
            migrated = true;
            migrated_at = Some(Instant::now());
        }
    }
}

#[test]
fn a_client_that_migrates_mid_download_is_followed_across_cores() {
    let node = Node::start(&[]);
    let data = random_bytes(8 << 20, 77);
    let hash = node.put_bytes(&data);
    // Which core a new port hashes to is the kernel's choice: with two cores
    // about half the attempts land elsewhere.
    for attempt in 1..=12 {
        let got = download_migrating(node.addr, &format!("/blobs/{hash}"), 1 << 20);
        assert!(got.body == data, "bytes differ (attempt {attempt})");
        assert_eq!(
            got.local_at_end, got.second,
            "the connection did not move to the new address"
        );
        if node.metric("tessera_h3_datagrams_forwarded_total") > 0 {
            return;
        }
    }
    panic!("twelve migrations and no packet was ever steered to its owning core");
}

#[test]
fn a_nat_rebinding_is_followed_across_cores() {
    // The client's QUIC stack is not told: its datagrams leave from a new port
    // mid-download, as behind a NAT that rebinds, and the old mapping still
    // delivers for 100 ms. The node validates the new address, moves the
    // connection there and steers its packets to the owning core. (With the
    // old mapping dead at once, the tail the node sent there is never resent:
    // quiche 0.30, see tests/h3.rs; with aioquic's client the lingering case
    // stalls about 1 run in 6, see there too.)
    let node = Node::start(&[]);
    let data = random_bytes(8 << 20, 78);
    let hash = node.put_bytes(&data);
    let linger = Some(Duration::from_millis(100));
    for attempt in 1..=12 {
        let got = download_lingering(node.addr, &format!("/blobs/{hash}"), 1 << 20, true, linger);
        assert!(got.body == data, "bytes differ (attempt {attempt})");
        if node.metric("tessera_h3_datagrams_forwarded_total") > 0 {
            return;
        }
    }
    panic!("twelve rebindings and no packet was ever steered to its owning core");
}
