//! The four fixes the node's quiche carries (`vendor/quiche/PATCHED.md`), each
//! driven on purpose with two real quiche endpoints in memory. Each test fails
//! on the unpatched quiche 0.30.0.
//!
//! - **A stream with nothing to send blocks the send queue.** A stream whose
//!   lost data is queued again for sending, and then acknowledged after all
//!   (the "loss" was a late ACK), is left in quiche's flushable queue with
//!   nothing to send. 0.30.0 then stops at that stream on every packet and
//!   sends nothing for the streams behind it: with nothing in flight no ACK
//!   or timer comes to change that, and the connection stalls until its idle
//!   timeout.
//! - **Packets in flight on an abandoned path are never declared lost.** When
//!   the client's address changes at once (a NAT mapping gone), every packet
//!   in flight to the old address is lost, but no ACK on that path will ever
//!   say so: 0.30.0 keeps their data there, a hole in the stream, until the
//!   idle timeout.
//! - **A lost PATH_CHALLENGE is asked for again only on a probe timeout.**
//!   When the packet with a new path's challenge is lost and the path's later
//!   packets are acknowledged, quiche declares it lost by those
//!   acknowledgments but sends no new challenge; no probe timeout comes while
//!   acknowledgments do, so the path stays unvalidated, and a server may send
//!   there only three times what it receives: the download crawls.
//! - **A verified path failed its validation at its first probe timeout.**
//!   Once the client's address on a new path is verified (a first, small
//!   challenge answered) the server probes the path's MTU with a second one;
//!   a probe timeout before its answer failed the whole path, because 0.30.0
//!   still applied the amplification limit's credit, spent to 0 by then.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

const CLIENT: &str = "127.0.0.1:4000";
/// The client's address after its NAT rebinds.
const REBOUND: &str = "127.0.0.1:4001";
const SERVER: &str = "127.0.0.1:4433";

struct Pair {
    client: quiche::Connection,
    server: quiche::Connection,
    /// The client's address as the server sees it: what its NAT maps it to.
    /// Datagrams the server sends elsewhere are lost.
    seen_as: &'static str,
    _certs: tempfile::TempDir,
}

fn config(server: bool, certs: &std::path::Path) -> quiche::Config {
    let mut c = quiche::Config::new(quiche::PROTOCOL_VERSION).expect("config");
    if server {
        c.load_cert_chain_from_pem_file(certs.join("cert.pem").to_str().expect("utf-8 path"))
            .expect("cert");
        c.load_priv_key_from_pem_file(certs.join("key.pem").to_str().expect("utf-8 path"))
            .expect("key");
    } else {
        c.verify_peer(false);
    }
    c.set_application_protos(&[b"test"]).expect("ALPN");
    c.set_max_idle_timeout(30_000);
    c.set_initial_max_data(1 << 24);
    c.set_initial_max_stream_data_bidi_local(1 << 22);
    c.set_initial_max_stream_data_bidi_remote(1 << 22);
    c.set_initial_max_streams_bidi(16);
    c
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

/// Queues all of `data` on `stream` (the stream has room for it).
fn send_whole(conn: &mut quiche::Connection, stream: u64, data: &[u8], fin: bool) {
    let sent = conn.stream_send(stream, data, fin).expect("stream_send");
    assert_eq!(sent, data.len(), "stream {stream} took only part");
}

/// Every datagram `from` has to send now, with where it is sent.
fn drain_to(from: &mut quiche::Connection) -> Vec<(Vec<u8>, SocketAddr)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 65_535];
    loop {
        match from.send(&mut buf) {
            Ok((n, info)) => out.push((buf[..n].to_vec(), info.to)),
            Err(quiche::Error::Done) => return out,
            Err(e) => panic!("send: {e}"),
        }
    }
}

/// Every datagram `from` has to send now.
fn drain(from: &mut quiche::Connection) -> Vec<Vec<u8>> {
    drain_to(from).into_iter().map(|(d, _)| d).collect()
}

fn deliver(to: &mut quiche::Connection, datagrams: &[Vec<u8>], from: &str, at: &str) {
    for d in datagrams {
        let mut d = d.clone();
        let info = quiche::RecvInfo {
            from: addr(from),
            to: addr(at),
        };
        to.recv(&mut d, info).expect("recv");
    }
}

impl Pair {
    fn established() -> Pair {
        let certs = tempfile::tempdir().expect("tmp");
        let made =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
        std::fs::write(certs.path().join("cert.pem"), made.cert.pem()).expect("write cert");
        std::fs::write(
            certs.path().join("key.pem"),
            made.signing_key.serialize_pem(),
        )
        .expect("write key");
        let mut client_config = config(false, certs.path());
        let mut server_config = config(true, certs.path());
        let client_id = quiche::ConnectionId::from_ref(&[1; 16]);
        let server_id = quiche::ConnectionId::from_ref(&[2; 16]);
        let client = quiche::connect(
            Some("localhost"),
            &client_id,
            addr(CLIENT),
            addr(SERVER),
            &mut client_config,
        )
        .expect("client");
        let server = quiche::accept(
            &server_id,
            None,
            addr(SERVER),
            addr(CLIENT),
            &mut server_config,
        )
        .expect("server");
        let mut pair = Pair {
            client,
            server,
            seen_as: CLIENT,
            _certs: certs,
        };
        for _ in 0..20 {
            pair.exchange();
            if pair.client.is_established() && pair.server.is_established() {
                // Settle the handshake's tail (HANDSHAKE_DONE and its ACK).
                pair.exchange();
                pair.exchange();
                return pair;
            }
        }
        panic!("no handshake");
    }

    /// One round: everything the client has goes to the server, then back
    /// (what the server sends to the client's current address).
    fn exchange(&mut self) {
        let up = drain(&mut self.client);
        deliver(&mut self.server, &up, self.seen_as, SERVER);
        let down: Vec<Vec<u8>> = drain_to(&mut self.server)
            .into_iter()
            .filter(|(_, to)| *to == addr(self.seen_as))
            .map(|(d, _)| d)
            .collect();
        deliver(&mut self.client, &down, SERVER, CLIENT);
    }

    /// Fires the server's timers as they come due until a probe timeout has
    /// fired (another timer may come first on a slow machine).
    fn server_probe_timeout(&mut self) {
        let ptos =
            |c: &quiche::Connection| c.path_stats().map(|p| p.total_pto_count).sum::<usize>();
        let before = ptos(&self.server);
        for _ in 0..20 {
            let at = self.server.timeout_instant().expect("a timer");
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            self.server.on_timeout();
            if ptos(&self.server) > before {
                return;
            }
        }
        panic!("no probe timeout");
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        for c in [&mut self.client, &mut self.server] {
            if c.timeout_instant().is_some_and(|t| t <= now) {
                c.on_timeout();
            }
        }
    }

    /// What the client has read of `stream`, pumping packets and timers both
    /// ways until it has `want` bytes or `deadline` passes.
    fn read_all(&mut self, stream: u64, want: usize, deadline: Duration) -> usize {
        let start = Instant::now();
        let mut got = 0;
        let mut buf = [0u8; 65_535];
        while got < want && start.elapsed() < deadline {
            self.exchange();
            while let Ok((n, _)) = self.client.stream_recv(stream, &mut buf) {
                got += n;
            }
            self.fire_timers();
            std::thread::sleep(Duration::from_millis(1));
        }
        got
    }
}

#[test]
fn a_stream_behind_spuriously_lost_data_is_still_sent() {
    let mut p = Pair::established();
    // Two requests, on streams 0 and 4, both answered in order of stream ID
    // (not incremental), as HTTP/3 responses are by default.
    for id in [0, 4] {
        send_whole(&mut p.client, id, b"request", false);
    }
    p.exchange();
    let mut scratch = [0u8; 64];
    for id in [0, 4] {
        assert!(p.server.stream_recv(id, &mut scratch).is_ok());
        p.server.stream_priority(id, 3, false).expect("priority");
    }

    // Stream 0's first 6 KB goes out in several packets and all of them
    // arrive, but the client's ACK is late.
    let body = vec![7u8; 6_000];
    send_whole(&mut p.server, 0, &body, false);
    let first = drain(&mut p.server);
    assert!(first.len() >= 3, "{} packets for 6 KB", first.len());
    deliver(&mut p.client, &first, SERVER, CLIENT);
    let late_ack = drain(&mut p.client);
    assert!(!late_ack.is_empty(), "the client acknowledges");

    // Two probe timeouts pass. The second queues the data of the two oldest
    // packets again, and one probe packet carries the first of them: the
    // rest stays queued on stream 0.
    p.server_probe_timeout();
    let _first_probe = drain(&mut p.server);
    p.server_probe_timeout();
    let mut buf = [0u8; 65_535];
    let (n, _) = p.server.send(&mut buf).expect("a probe");
    let held = vec![buf[..n].to_vec()];

    // The late ACK arrives and covers everything stream 0 had: its queued
    // retransmission is moot and its buffer is empty.
    deliver(&mut p.server, &late_ack, CLIENT, SERVER);
    deliver(&mut p.client, &held, SERVER, CLIENT);

    // Stream 4's response must now go out.
    let answer = vec![9u8; 3_000];
    send_whole(&mut p.server, 4, &answer, true);
    let got = p.read_all(4, answer.len(), Duration::from_secs(10));
    assert_eq!(
        got,
        answer.len(),
        "stream 4 stalled behind stream 0 in quiche's send queue"
    );
    let mut rest = [0u8; 6_000];
    let mut zero = 0;
    while let Ok((n, _)) = p.client.stream_recv(0, &mut rest) {
        zero += n;
    }
    assert_eq!(zero, body.len(), "stream 0's data arrived once, whole");
}

#[test]
fn data_in_flight_to_an_address_gone_at_once_is_sent_again_on_the_new_path() {
    let mut p = Pair::established();
    send_whole(&mut p.client, 0, b"request", false);
    p.exchange();
    let mut scratch = [0u8; 64];
    assert!(p.server.stream_recv(0, &mut scratch).is_ok());

    // The response's first 8 KB goes out to the client's old address, and
    // none of it arrives: the NAT mapping is gone.
    let body = vec![5u8; 8_000];
    send_whole(&mut p.server, 0, &body, false);
    let lost = drain(&mut p.server);
    assert!(lost.len() >= 5, "{} packets for 8 KB", lost.len());

    // The client's next packet reaches the server from a new address; the
    // server validates it and moves the connection there.
    p.seen_as = REBOUND;
    p.client.send_ack_eliciting().expect("ping");
    let got = p.read_all(0, body.len(), Duration::from_secs(10));
    assert_eq!(
        got,
        body.len(),
        "the data sent to the old address was never sent again"
    );
    let moved = p
        .server
        .path_stats()
        .any(|s| s.active && s.peer_addr == addr(REBOUND));
    assert!(moved, "the server did not move to the new address");
}

#[test]
fn a_lost_path_challenge_is_sent_again_while_the_path_carries_traffic() {
    let mut p = Pair::answering();

    // The NAT rebinds: the server sees the client at a new address, moves
    // there and challenges it. The first datagram it sends there, the one
    // with the challenge, is lost.
    p.seen_as = REBOUND;
    p.client.send_ack_eliciting().expect("ping");
    let up = drain(&mut p.client);
    deliver(&mut p.server, &up, REBOUND, SERVER);
    let first = drain_to(&mut p.server)
        .into_iter()
        .find(|(_, to)| *to == addr(REBOUND));
    assert!(first.is_some(), "the server sends to the new address");

    // Traffic goes on: the client sends something every round (in the field,
    // acknowledgments of what still comes through the old mapping), the
    // server sends what that allows and the client acknowledges it. No
    // probe timeout fires.
    p.validate_rebound_under_traffic();
}

/// Queues another 16 KiB of the server's answer on stream 0, as far as flow
/// control lets it.
fn top_up(server: &mut quiche::Connection) {
    let _ = server.stream_send(0, &[3u8; 16 << 10], false);
}

impl Pair {
    /// An established pair whose server is answering a request on stream 0
    /// with a long answer ([`top_up`] keeps it going).
    fn answering() -> Pair {
        let mut p = Pair::established();
        send_whole(&mut p.client, 0, b"request", false);
        p.exchange();
        let mut scratch = [0u8; 64];
        assert!(p.server.stream_recv(0, &mut scratch).is_ok());
        top_up(&mut p.server);
        p.exchange();
        p
    }

    /// Rounds of traffic on stream 0 (topped up) with a packet from the
    /// client in each, until the server has validated the client's new
    /// address; at most 300 rounds, and no timers fired.
    fn validate_rebound_under_traffic(&mut self) {
        let validated = |c: &quiche::Connection| {
            c.path_stats().any(|s| {
                s.peer_addr == addr(REBOUND) && format!("{:?}", s.validation_state) == "Validated"
            })
        };
        let mut buf = [0u8; 65_535];
        let mut rounds = 0;
        let mut failed = false;
        while !validated(&self.server) && rounds < 300 {
            top_up(&mut self.server);
            self.client.send_ack_eliciting().expect("ping");
            self.exchange();
            while self.client.stream_recv(0, &mut buf).is_ok() {}
            while let Some(e) = self.server.path_event_next() {
                failed |= matches!(e, quiche::PathEvent::FailedValidation(..));
            }
            rounds += 1;
        }
        // A failed validation makes the path unusable; in the node's
        // aioquic runs the connection then ended with an error.
        assert!(!failed, "the server failed the new path's validation");
        assert!(
            validated(&self.server) && !self.server.is_closed(),
            "the new path is still not validated after {rounds} rounds: {:?}",
            self.server
                .path_stats()
                .map(|s| (s.peer_addr, s.validation_state, s.active))
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn a_probe_timeout_does_not_fail_a_path_whose_address_is_verified() {
    let mut p = Pair::answering();

    // The NAT rebinds. The server's first, small challenge to the new address
    // arrives and is answered: the address is verified.
    p.seen_as = REBOUND;
    p.client.send_ack_eliciting().expect("ping");
    p.exchange();
    let up = drain(&mut p.client);
    deliver(&mut p.server, &up, REBOUND, SERVER);
    // What the server sends next (its second challenge, for the path's MTU,
    // and stream data) is delayed past a probe timeout.
    top_up(&mut p.server);
    let held: Vec<Vec<u8>> = drain_to(&mut p.server)
        .into_iter()
        .filter(|(_, to)| *to == addr(REBOUND))
        .map(|(d, _)| d)
        .collect();
    assert!(!held.is_empty(), "the server sends to the new address");
    p.server_probe_timeout();
    deliver(&mut p.client, &held, SERVER, CLIENT);
    p.validate_rebound_under_traffic();
}
