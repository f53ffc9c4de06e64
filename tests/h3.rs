//! HTTP/3 end to end: a real node, and aioquic's HTTP/3 client (an implementation
//! nobody here wrote), installed by scripts/test from PyPI.

mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

#[test]
fn whole_blobs_and_many_streams_on_one_connection() {
    let node = Node::start(&[]);
    let dir = tempfile::tempdir().expect("tmp");
    let mut expected = Vec::new();
    for (i, len) in [1usize, 16_385, 3 << 20].into_iter().enumerate() {
        let data = random_bytes(len, 100 + i as u64);
        expected.push((node.put_bytes(&data), data));
    }
    // Twenty streams at once on one QUIC connection: three blobs, repeated.
    let urls: Vec<String> = (0..20)
        .map(|i| {
            format!(
                "https://{}/blobs/{}",
                node.addr,
                expected[i % expected.len()].0
            )
        })
        .collect();
    aioquic_get(dir.path(), &urls, None);
    for (hash, data) in &expected {
        let got = std::fs::read(dir.path().join(hash)).expect("downloaded");
        assert_eq!(&got, data, "blob {hash} over HTTP/3");
    }
    assert!(node.metric("tessera_h3_requests_total") >= 20);
    assert_eq!(
        node.metric("tessera_h3_connections_total"),
        1,
        "one connection for all streams"
    );
    assert!(node.metric("tessera_h3_body_bytes_from_mmap_total") >= (3 << 20));
}

#[test]
fn upload_over_h3() {
    let node = Node::start(&[]);
    let dir = tempfile::tempdir().expect("tmp");
    let body = "uploaded over HTTP/3 by aioquic ".repeat(2000);
    aioquic_get(
        dir.path(),
        &[format!("https://{}/blobs", node.addr)],
        Some(&body),
    );
    let answer = std::fs::read_to_string(dir.path().join("blobs")).expect("response saved");
    let v: serde_json::Value = serde_json::from_str(&answer).expect("json");
    let hash = blake3::hash(body.as_bytes()).to_hex().to_string();
    assert_eq!(v["hash"].as_str(), Some(hash.as_str()));
    // Readable back over HTTP/1.1: the same store.
    assert_eq!(node.get(&format!("/blobs/{hash}")).2, body.as_bytes());
}

#[test]
fn ranges_and_the_verified_stream_over_h3() {
    let node = Node::start(&[]);
    let data = random_bytes(100_000, 7);
    let hash = node.put_bytes(&data);
    let dir = tempfile::tempdir().expect("tmp");
    let examples = h3_client().parent().expect("examples dir").to_path_buf();
    for (spec, first, last) in [
        ("bytes=16383-16384", 16383usize, 16384usize),
        ("bytes=-10", 99_990, 99_999),
        ("bytes=50000-", 50_000, 99_999),
    ] {
        let out = dir.path().join("range");
        let o = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/h3_range.py"))
            .arg(&examples)
            .args([
                "127.0.0.1",
                &node.addr.port().to_string(),
                &format!("/blobs/{hash}"),
                spec,
            ])
            .arg(&out)
            .output()
            .expect("python3");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let printed = String::from_utf8_lossy(&o.stdout).trim().to_string();
        assert_eq!(
            printed,
            format!("206 bytes {first}-{last}/100000"),
            "{spec}"
        );
        assert_eq!(
            std::fs::read(&out).expect("body"),
            &data[first..=last],
            "{spec}"
        );
    }
    // The verified stream, through aioquic, decoded by bao-tree.
    aioquic_get(
        dir.path(),
        &[format!("https://{}/blobs/{hash}?format=bao", node.addr)],
        None,
    );
    let stream = std::fs::read(dir.path().join(format!("{hash}?format=bao")))
        .or_else(|_| std::fs::read(dir.path().join(&hash)))
        .expect("saved");
    let size = u64::from_le_bytes(stream[..8].try_into().expect("size"));
    let tree = bao_tree::BaoTree::new(size, bao_tree::BlockSize::from_chunk_log(4));
    let root = blake3::Hash::from_hex(&hash).expect("hex");
    let mut got = vec![0u8; size as usize];
    for item in bao_tree::io::sync::DecodeResponseIter::new(
        root,
        tree,
        &stream[8..],
        &bao_tree::ChunkRanges::all(),
    ) {
        if let bao_tree::io::BaoContentItem::Leaf(leaf) = item.expect("verifies") {
            got[leaf.offset as usize..leaf.offset as usize + leaf.data.len()]
                .copy_from_slice(&leaf.data);
        }
    }
    assert_eq!(got, data);

    // Asked for whole a second time, the stream is kept; the third answer is
    // that copy, the same bytes.
    let fetch_stream = |into: &std::path::Path| {
        aioquic_get(
            into,
            &[format!("https://{}/blobs/{hash}?format=bao", node.addr)],
            None,
        );
        std::fs::read(into.join(format!("{hash}?format=bao")))
            .or_else(|_| std::fs::read(into.join(&hash)))
            .expect("saved")
    };
    let bao_url = format!("https://{}/blobs/{hash}?format=bao", node.addr);
    let range = [("range", "bytes=16383-16384")];
    let checked = aioquic_request(&bao_url, "GET", &range);
    assert_eq!(checked.status, 200);
    assert!(checked.body.len() > 2 * 16384 && checked.body.len() < stream.len());
    let (again, third) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    assert_eq!(fetch_stream(again.path()), stream);
    let kept = node.data_dir.join("blobs").join(format!("{hash}.bao"));
    within(Duration::from_secs(60), "the stream is kept", || {
        kept.exists()
    });
    assert_eq!(fetch_stream(third.path()), stream);
    assert_eq!(node.metric("tessera_kept_stream_responses_total"), 1);
    // A range now comes out of the copy: the bytes it had when checked as sent.
    let from_copy = aioquic_request(&bao_url, "GET", &range);
    assert_eq!(from_copy.body, checked.body);
    assert_eq!(node.metric("tessera_kept_stream_responses_total"), 2);
}

/// A NAT in the test: relays between the client and the node, and once the
/// transfer is under way (the node has sent it `REBIND_AFTER_PACKETS` packets,
/// long after the handshake) and then every `rebind_every`, moves its
/// node-facing side to a fresh source port, as a NAT that rebinds does. Never
/// during the handshake: QUIC relies on a stable address until then (RFC 9000
/// §9), and quiche counts handshake packets from a new address toward no path,
/// so a server still amplification-limited stays silent (that was the rare
/// stall this test used to hit). The node sees the connection arrive from new addresses. The old
/// mapping keeps delivering the node's packets to the client for `linger` (zero:
/// packets still in flight to the old port are lost, as when a NAT drops a
/// mapping mid-transfer).
/// Packets from the node before the NAT first rebinds (a handshake takes a
/// handful; a 16 MiB transfer thousands).
const REBIND_AFTER_PACKETS: usize = 300;

struct RebindingNat {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    rebinds: Arc<AtomicUsize>,
}

impl RebindingNat {
    fn start(
        server: std::net::SocketAddr,
        rebind_every: Duration,
        max_rebinds: usize,
        linger: Duration,
    ) -> RebindingNat {
        let front = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = front.local_addr().expect("addr");
        front
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let back = Arc::new(Mutex::new(Self::back_socket()));
        let client: Arc<Mutex<Option<std::net::SocketAddr>>> = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let rebinds = Arc::new(AtomicUsize::new(0));
        let from_server = Arc::new(AtomicUsize::new(0));
        // Client -> node, always through the current mapping.
        {
            let (front, back, client, stop) = (
                front.try_clone().expect("clone"),
                back.clone(),
                client.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = front.recv_from(&mut buf) {
                        *client.lock().expect("lock") = Some(from);
                        let sock = back.lock().expect("lock").try_clone().expect("clone");
                        let _ = sock.send_to(&buf[..n], server);
                    }
                }
            });
        }
        // Node -> client: one relay per mapping, which ends `linger` after the
        // mapping is replaced (its socket closes then).
        let relay = {
            let (front, client, stop, from_server) =
                (front, client, stop.clone(), from_server.clone());
            move |sock: UdpSocket, retired: Arc<Mutex<Option<std::time::Instant>>>| {
                let (front, client, stop, from_server) = (
                    front.try_clone().expect("clone"),
                    client.clone(),
                    stop.clone(),
                    from_server.clone(),
                );
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(at) = *retired.lock().expect("lock") {
                            if at.elapsed() >= linger {
                                return;
                            }
                        }
                        if let Ok((n, _)) = sock.recv_from(&mut buf) {
                            from_server.fetch_add(1, Ordering::Relaxed);
                            if let Some(c) = *client.lock().expect("lock") {
                                let _ = front.send_to(&buf[..n], c);
                            }
                        }
                    }
                });
            }
        };
        let mut retired = Arc::new(Mutex::new(None));
        relay(
            back.lock().expect("lock").try_clone().expect("clone"),
            retired.clone(),
        );
        {
            let (back, stop, rebinds) = (back, stop.clone(), rebinds.clone());
            std::thread::spawn(move || {
                while from_server.load(Ordering::Relaxed) < REBIND_AFTER_PACKETS {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                while !stop.load(Ordering::Relaxed) && rebinds.load(Ordering::Relaxed) < max_rebinds
                {
                    if rebinds.load(Ordering::Relaxed) > 0 {
                        std::thread::sleep(rebind_every);
                    }
                    let fresh = Self::back_socket();
                    let next = Arc::new(Mutex::new(None));
                    relay(fresh.try_clone().expect("clone"), next.clone());
                    *back.lock().expect("lock") = fresh;
                    *retired.lock().expect("lock") = Some(std::time::Instant::now());
                    retired = next;
                    rebinds.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        RebindingNat {
            addr,
            stop,
            rebinds,
        }
    }

    fn back_socket() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        s
    }
}

impl Drop for RebindingNat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Downloads through a NAT that rebinds once, mid-transfer, until an attempt's
/// packets were steered across cores. Which core the new source port hashes to
/// is the kernel's choice: with two cores an attempt misses the other core with
/// probability about 1/2, so up to twenty attempts.
fn download_through_rebinding_nat(linger: Duration) {
    let node = Node::start(&[]);
    let data = random_bytes(16 << 20, 9);
    let hash = node.put_bytes(&data);
    for attempt in 1..=20 {
        let nat = RebindingNat::start(node.addr, Duration::from_millis(300), 1, linger);
        let dir = tempfile::tempdir().expect("tmp");
        aioquic_get(
            dir.path(),
            &[format!("https://{}/blobs/{hash}", nat.addr)],
            None,
        );
        let got = std::fs::read(dir.path().join(&hash)).expect("downloaded");
        assert!(
            got == data,
            "bytes differ after rebinding (attempt {attempt})"
        );
        let rebinds = nat.rebinds.load(Ordering::Relaxed);
        assert!(rebinds >= 1, "the transfer ended before the NAT rebound");
        if node.metric("tessera_h3_datagrams_forwarded_total") > 0 {
            return;
        }
    }
    panic!("twenty transfers with rebinding and no packet was ever steered to its owning core");
}

#[test]
fn a_connection_survives_nat_rebinding_across_cores() {
    // The old mapping still delivers for 200 ms, as NATs that rebind under
    // load usually do; the node must follow the connection to its new address
    // (validating it) and its packets to the owning core.
    //
    // This stalled or crawled with quiche 0.30.0 in about 1 run in 6, and in
    // about 1 in 15 with the first two of the node's quiche fixes, for two
    // reasons in the new path's validation, both fixed there
    // (vendor/quiche/PATCHED.md, fixes 3 and 4): a first PATH_CHALLENGE lost
    // while the path carried traffic was never sent again, so the node stayed
    // held to three times what it received there for minutes; and a probe
    // timeout during the second (MTU) challenge failed the path outright,
    // ending the connection. With all four: 80 runs in 80, 2-8 s each.
    download_through_rebinding_nat(Duration::from_millis(200));
}

#[test]
fn a_connection_survives_an_abrupt_nat_rebinding() {
    // The old mapping dies at once: every packet in flight to it is lost, and
    // no ACK on that path will ever say so. quiche 0.30.0 kept those packets
    // in the old path's recovery, their data a hole in the stream until the
    // idle timeout; the node's quiche declares them lost when the connection
    // moves (see vendor/quiche/PATCHED.md and dataplane/tests/quiche_patched.rs).
    download_through_rebinding_nat(Duration::ZERO);
}

#[test]
fn tessera_put_and_get_over_h3_verify_like_http1() {
    let node = Node::start(&[]);
    let dir = tempfile::tempdir().expect("tmp");
    let data = random_bytes(2 << 20, 21);
    let file = dir.path().join("in");
    std::fs::write(&file, &data).expect("write");
    let url = format!("https://{}", node.addr);
    let out = tessera(&["put", "--h3", "--node", &url, file.to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hash = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("hash")
        .to_string();
    assert_eq!(hash, blake3::hash(&data).to_hex().as_str());
    let dest = dir.path().join("out");
    let out = tessera(&[
        "get",
        "--h3",
        "--node",
        &url,
        &hash,
        "-o",
        dest.to_str().expect("utf8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&dest).expect("read"), data);
    // The verified download left a signed receipt, sent on the same QUIC
    // connection and kept by the node.
    let receipts = controlplane::ledger::ReceiptLog::read(&node.data_dir.join("receipts.log"))
        .expect("receipt log");
    assert_eq!(receipts.len(), 1);
    assert!(receipts[0].verify());
    assert_eq!(receipts[0].receipt.bytes, data.len() as u64);
    assert_eq!(receipts[0].receipt.content, *blake3::hash(&data).as_bytes());

    // A blob rotted on disk is refused over HTTP/3 too, and nothing is written.
    let path = node.data_dir.join("blobs").join(&hash);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[1_000_000] ^= 1;
    std::fs::write(&path, bytes).expect("write");
    let dest = dir.path().join("rotten");
    let out = tessera(&[
        "get",
        "--h3",
        "--node",
        &url,
        &hash,
        "-o",
        dest.to_str().expect("utf8"),
    ]);
    assert!(!out.status.success());
    assert!(!dest.exists());
    assert!(node.metric("tessera_corrupt_blobs_detected_total") >= 1);
    // And taken out of service, plain bytes included.
    let mut status = 0;
    for _ in 0..50 {
        status = node.get(&format!("/blobs/{hash}")).0;
        if status == 404 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(status, 404, "quarantined blob still served");
}

#[test]
fn cluster_routes_answer_over_h3_too() {
    let node = Node::start(&[]);
    let dir = tempfile::tempdir().expect("tmp");
    aioquic_get(
        dir.path(),
        &[format!("https://{}/cluster/members", node.addr)],
        None,
    );
    let text = std::fs::read(dir.path().join("members")).expect("saved");
    let members: serde_json::Value = serde_json::from_slice(&text).expect("json");
    let me = &members.as_array().expect("array")[0];
    assert_eq!(me["self"], true, "{members}");
    assert_eq!(me["addr"].as_str(), Some(node.addr.to_string().as_str()));
}

#[test]
fn retry_validates_client_addresses_before_any_state() {
    let tmp = tempfile::tempdir().expect("tmp");
    let conf = tmp.path().join("tessera.toml");
    std::fs::write(&conf, "h3_retry = true\n").expect("write");
    let node = Node::start(&["--config", conf.to_str().expect("utf8")]);
    let data = random_bytes(200_000, 41);
    let hash = node.put_bytes(&data);
    let dir = tempfile::tempdir().expect("tmp");
    aioquic_get(
        dir.path(),
        &[format!("https://{}/blobs/{hash}", node.addr)],
        None,
    );
    assert_eq!(std::fs::read(dir.path().join(&hash)).expect("saved"), data);
    // The client went through a Retry and came back with its token.
    assert!(node.metric("tessera_h3_retries_total") >= 1);
    assert!(node.metric("tessera_h3_connections_total") >= 1);
}

#[test]
fn a_miss_over_h3_is_fetched_from_a_peer() {
    // The holder keeps its blobs to itself (no rebalancing), so the other node
    // can only serve it by fetching it on the miss.
    let mut a_args = FAST_GOSSIP.to_vec();
    a_args.extend(["--rebalance", "false"]);
    let holder = Node::start(&a_args);
    let data = random_bytes(300_000, 77);
    let hash = holder.put_bytes(&data);
    let join = holder.addr.to_string();
    let mut b_args = FAST_GOSSIP.to_vec();
    b_args.extend(["--join", &join]);
    let other = Node::start(&b_args);
    // Both ways: the holder answers the other's signed requests only once it
    // knows the other as a member.
    within(
        Duration::from_secs(15),
        "each member known to the other",
        || alive_verified(&other) == 2 && alive_verified(&holder) == 2,
    );
    assert!(!other.data_dir.join("blobs").join(&hash).exists());
    let dir = tempfile::tempdir().expect("tmp");
    aioquic_get(
        dir.path(),
        &[format!("https://{}/blobs/{hash}", other.addr)],
        None,
    );
    assert_eq!(std::fs::read(dir.path().join(&hash)).expect("saved"), data);
    assert!(other.data_dir.join("blobs").join(&hash).exists());
}

/// Which datagrams a [`LossyRelay`] drops, in each direction.
#[derive(Clone, Copy)]
enum Loss {
    /// Every `n`th.
    EveryNth(usize),
    /// Each with this chance in 1,000, from a generator seeded with `seed`.
    Random { permille: u64, seed: u64 },
}

/// A UDP relay between a client and the node that drops datagrams in each
/// direction (handshake packets included), so the transfer depends on the
/// node's loss recovery: lost packets found by later ACKs, and the tail and
/// handshake packets resent when a probe timer fires (the node arms those
/// timers only for connections it has serviced; nothing polls the others).
struct LossyRelay {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    dropped: Arc<AtomicUsize>,
}

impl LossyRelay {
    fn start(server: std::net::SocketAddr, loss: Loss) -> LossyRelay {
        let front = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let back = UdpSocket::bind("127.0.0.1:0").expect("bind");
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(20)))
                .expect("timeout");
        }
        let addr = front.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicUsize::new(0));
        let client: Arc<Mutex<Option<std::net::SocketAddr>>> = Arc::new(Mutex::new(None));
        for to_server in [true, false] {
            let (from_sock, to_sock) = if to_server {
                (front.try_clone(), back.try_clone())
            } else {
                (back.try_clone(), front.try_clone())
            };
            let (from_sock, to_sock) = (from_sock.expect("clone"), to_sock.expect("clone"));
            let (stop, dropped, client) = (stop.clone(), dropped.clone(), client.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                let mut seen = 0;
                // xorshift64, a stream per direction.
                let mut x = match loss {
                    Loss::Random { seed, .. } => seed.wrapping_mul(2) + 1 + u64::from(to_server),
                    Loss::EveryNth(_) => 1,
                };
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = from_sock.recv_from(&mut buf) else {
                        continue;
                    };
                    if to_server {
                        *client.lock().expect("lock") = Some(from);
                    }
                    seen += 1;
                    let drop = match loss {
                        Loss::EveryNth(nth) => seen % nth == 0,
                        Loss::Random { permille, .. } => {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x % 1000 < permille
                        }
                    };
                    if drop {
                        dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let to = if to_server {
                        Some(server)
                    } else {
                        *client.lock().expect("lock")
                    };
                    if let Some(to) = to {
                        let _ = to_sock.send_to(&buf[..n], to);
                    }
                }
            });
        }
        LossyRelay {
            addr,
            stop,
            dropped,
        }
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Four blobs (3 MiB, 1 MiB, 4 KiB, 10 bytes) on one node.
fn four_blobs(node: &Node) -> Vec<(String, Vec<u8>)> {
    [(3 << 20) + 17, 1 << 20, 4096, 10]
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let data = random_bytes(len, 40 + i as u64);
            (node.put_bytes(&data), data)
        })
        .collect()
}

/// Fetches `blobs` on one aioquic connection through a relay that loses
/// datagrams, checks every byte, and returns how many datagrams it dropped.
fn fetch_through_loss(node: &Node, blobs: &[(String, Vec<u8>)], loss: Loss) -> usize {
    let relay = LossyRelay::start(node.addr, loss);
    let dir = tempfile::tempdir().expect("tmp");
    let urls: Vec<String> = blobs
        .iter()
        .map(|(hash, _)| format!("https://{}/blobs/{hash}", relay.addr))
        .collect();
    aioquic_get(dir.path(), &urls, None);
    for (hash, data) in blobs {
        let got = std::fs::read(dir.path().join(hash)).expect("downloaded");
        assert!(
            got == *data,
            "{hash}: {} bytes, want {}",
            got.len(),
            data.len()
        );
    }
    relay.dropped.load(Ordering::Relaxed)
}

#[test]
fn whole_blobs_arrive_over_a_path_that_loses_packets() {
    // With random loss of 3-12% each way, about 1 run in 150 used to stall
    // for the idle timeout: a probe's queued retransmission, made moot by a
    // late ACK, left a stream with nothing to send at the front of quiche's
    // send queue, and nothing was sent behind it. The node's quiche carries
    // the fix (see vendor/quiche/PATCHED.md); dataplane/tests/quiche_patched.rs
    // builds that state on purpose, and the soak below looks for others.
    let node = Node::start(&[]);
    let blobs = four_blobs(&node);
    let dropped = fetch_through_loss(&node, &blobs, Loss::EveryNth(10));
    assert!(dropped > 100, "only {dropped} datagrams dropped");
}

#[test]
#[ignore = "a soak of 300 downloads (about 20 minutes): run with --ignored, and after any quiche upgrade"]
fn downloads_over_random_loss_never_stall() {
    // Each run loses 3-12% of datagrams each way at random, from its own
    // seed; a stall shows as aioquic's idle timeout (the test fails naming
    // the seed). TESSERA_LOSS_SOAK_RUNS sets the number of runs (default
    // 300), TESSERA_LOSS_SOAK_SEED the first seed.
    let runs: u64 = std::env::var("TESSERA_LOSS_SOAK_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let first: u64 = std::env::var("TESSERA_LOSS_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let node = Node::start(&[]);
    let blobs = four_blobs(&node);
    for seed in first..first + runs {
        let permille = 30 + (seed * 37) % 90;
        eprintln!(
            "run {} of {runs}: seed {seed}, loss {permille}/1000",
            seed - first + 1
        );
        let dropped = fetch_through_loss(&node, &blobs, Loss::Random { permille, seed });
        assert!(dropped > 0, "seed {seed}: nothing dropped");
    }
}
