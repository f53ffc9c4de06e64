//! The HTTP API of one real node, through real sockets, `curl`, and the `tessera` CLI.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

const ADMIN: &str = "test-admin-token-0123456789";

#[test]
fn blobs_round_trip_through_cli_and_curl() {
    let node = Node::start(&[]);
    let dir = tempfile::tempdir().expect("tmp");
    for (i, len) in [0usize, 1, 16383, 16384, 16385, 10 << 20]
        .into_iter()
        .enumerate()
    {
        let data = random_bytes(len, i as u64);
        let file = dir.path().join(format!("in-{len}"));
        std::fs::write(&file, &data).expect("write");
        let hash = node.put_cli(&file);
        assert_eq!(
            hash,
            blake3::hash(&data).to_hex().as_str(),
            "hash of {len} bytes"
        );

        // curl (an independent client) gets the plain bytes.
        let out = curl(&[&format!("{}/blobs/{hash}", node.url())]);
        assert!(out.status.success());
        assert_eq!(out.stdout, data, "curl body for {len} bytes");

        // tessera get verifies the stream and writes the same bytes.
        let dest = dir.path().join(format!("out-{len}"));
        let out = tessera(&[
            "get",
            "--node",
            &node.url(),
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

        // HEAD: headers only, right length, strong ETag, immutable caching.
        let out = curl(&["-I", &format!("{}/blobs/{hash}", node.url())]);
        let head = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(
            header(&head, "content-length"),
            Some(len.to_string().as_str())
        );
        assert_eq!(header(&head, "etag"), Some(format!("\"{hash}\"").as_str()));
        assert_eq!(
            header(&head, "cache-control"),
            Some("public, max-age=31536000, immutable")
        );
    }
}

#[test]
fn ranges_at_chunk_group_edges() {
    let node = Node::start(&[]);
    let data = random_bytes(100_000, 42);
    let hash = node.put_bytes(&data);
    let url = format!("{}/blobs/{hash}", node.url());
    let cases: &[(&str, usize, usize)] = &[
        ("0-0", 0, 0),
        ("16383-16384", 16383, 16384),
        ("16384-32767", 16384, 32767),
        ("32767-32768", 32767, 32768),
        ("99999-", 99999, 99999),
        ("-16385", 100_000 - 16385, 99_999),
        ("50000-999999", 50000, 99_999),
    ];
    for &(spec, first, last) in cases {
        let (status, head, body) = curl_get(&url, &["-r", spec]);
        assert_eq!(status, 206, "{spec}: {head}");
        assert!(head.starts_with("HTTP/1.1 206"), "{spec}: {head}");
        assert_eq!(
            header(&head, "content-range"),
            Some(format!("bytes {first}-{last}/100000").as_str())
        );
        assert_eq!(body, &data[first..=last], "{spec}");
    }
    let out = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-r",
        "100000-",
        &url,
    ]);
    assert_eq!(out.stdout, b"416");

    // The verified stream of a range decodes with bao-tree's own decoder.
    let raw = format!("GET /blobs/{hash}?format=bao HTTP/1.1\r\nHost: t\r\nRange: bytes=16383-16384\r\nConnection: close\r\n\r\n");
    let (status, head, body) = node.request(raw.as_bytes());
    assert_eq!(status, 200, "{head}");
    assert_eq!(header(&head, "content-type"), Some("application/x-bao"));
    let size = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
    assert_eq!(size, 100_000);
    let tree = bao_tree::BaoTree::new(size, bao_tree::BlockSize::from_chunk_log(4));
    let ranges = bao_tree::ChunkRanges::from(bao_tree::ChunkNum(0)..bao_tree::ChunkNum(32));
    let root = blake3::Hash::from_hex(&hash).expect("hex");
    let mut got = Vec::new();
    for item in bao_tree::io::sync::DecodeResponseIter::new(root, tree, &body[8..], &ranges) {
        if let bao_tree::io::BaoContentItem::Leaf(leaf) = item.expect("verifies") {
            got.push((leaf.offset, leaf.data));
        }
    }
    assert_eq!(got.len(), 2);
    assert_eq!(&got[0].1[..], &data[0..16384]);
    assert_eq!(&got[1].1[..], &data[16384..32768]);
}

#[test]
fn errors_are_clear_and_change_nothing() {
    let node = Node::start(&["--max-body-bytes", "100000"]);
    let hash = node.put_bytes(b"keep me");

    let (s, _, body) = node.get("/blobs/not-a-hash");
    assert_eq!(s, 400);
    assert!(
        String::from_utf8_lossy(&body).contains("64 lowercase hex"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (s, _, _) = node.get(&format!("/blobs/{}", "0".repeat(64)));
    assert_eq!(s, 404);
    let (s, head, _) =
        node.request(b"PATCH /blobs HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(s, 405);
    assert_eq!(header(&head, "allow"), Some("POST"));
    let (s, _, _) = node.request(b"POST /blobs HTTP/1.1\r\nContent-Length: 200000\r\n\r\n");
    assert_eq!(s, 413);
    // A chunked upload that grows past the limit is cut off too.
    let mut req = b"POST /blobs HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        req.extend_from_slice(b"c350\r\n");
        req.extend_from_slice(&[7u8; 50000]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let (s, _, _) = node.request(&req);
    assert_eq!(s, 413);
    let big = format!(
        "GET /healthz HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20000)
    );
    let (s, _, _) = node.request(big.as_bytes());
    assert_eq!(s, 431);
    let mut many = String::from("GET /healthz HTTP/1.1\r\n");
    for i in 0..100 {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(node.request(many.as_bytes()).0, 431);
    for garbage in [
        &b"\x00\x01\x02\x03 nonsense\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /blobs HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        assert_eq!(node.request(garbage).0, 400);
    }
    // Nothing was stored by any of that, and the node still serves what it had.
    assert_eq!(node.metric("tessera_store_blobs"), 1);
    assert_eq!(node.get(&format!("/blobs/{hash}")).2, b"keep me");
    let tmp = node.data_dir.join("tmp");
    assert_eq!(std::fs::read_dir(tmp).expect("tmp").count(), 0);
}

#[test]
fn admin_routes_need_the_token() {
    // No token configured: refused, not open.
    let open = Node::start(&[]);
    let h = open.put_bytes(b"x");
    let del = format!("DELETE /blobs/{h} HTTP/1.1\r\nAuthorization: Bearer anything-at-all-123\r\nConnection: close\r\n\r\n");
    assert_eq!(open.request(del.as_bytes()).0, 403);
    assert_eq!(open.get(&format!("/blobs/{h}")).0, 200);

    let node = Node::start(&["--admin-token", ADMIN]);
    let h = node.put_bytes(b"pin me");
    let req = |method: &str, path: &str, token: Option<&str>| {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        node.request(
            format!("{method} {path} HTTP/1.1\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
        )
        .0
    };
    let blob = format!("/blobs/{h}");
    let pin = format!("/blobs/{h}/pin");
    assert_eq!(req("DELETE", &blob, None), 401);
    assert_eq!(req("DELETE", &blob, Some("wrong-token-wrong-token")), 401);
    assert_eq!(req("PUT", &pin, Some(ADMIN)), 204);
    assert_eq!(req("DELETE", &pin, Some(ADMIN)), 204);
    assert_eq!(
        req(
            "PUT",
            &format!("/blobs/{}/pin", "1".repeat(64)),
            Some(ADMIN)
        ),
        404
    );
    assert_eq!(req("DELETE", &blob, Some(ADMIN)), 204);
    assert_eq!(node.get(&blob).0, 404);
    assert_eq!(req("DELETE", &blob, Some(ADMIN)), 404);
}

#[test]
fn keep_alive_pipelining_and_zero_copy() {
    let node = Node::start(&[]);
    let data = random_bytes(300_000, 5);
    let hash = node.put_bytes(&data);
    let before = node.metric("tessera_zero_copy_bytes_total");
    let mut s = TcpStream::connect(node.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    // Three requests in one write; three responses in order on one connection.
    let one = format!("GET /blobs/{hash} HTTP/1.1\r\nHost: t\r\n\r\n");
    let pipelined = format!("{one}GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n{one}");
    s.write_all(pipelined.as_bytes()).expect("write");
    let (a, _, body_a) = read_response(&mut s).expect("first");
    let (b, _, body_b) = read_response(&mut s).expect("second");
    let (c, _, body_c) = read_response(&mut s).expect("third");
    assert_eq!((a, b, c), (200, 200, 200));
    assert_eq!(body_a, data);
    assert_eq!(body_b, b"ok\n");
    assert_eq!(body_c, data);
    // The blob bodies took the splice path: the counter grew by both bodies
    // (it moves once the last byte is handed to the socket, which the client
    // may see first).
    within(Duration::from_secs(30), "the zero-copy counter", || {
        node.metric("tessera_zero_copy_bytes_total") - before >= 600_000
    });
    assert_eq!(
        node.metric("tessera_zero_copy_bytes_total") - before,
        600_000
    );

    // An upload with a request pipelined right behind its body.
    let body = random_bytes(70_000, 6);
    let mut req = format!(
        "POST /blobs HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req.extend_from_slice(b"GET /healthz HTTP/1.1\r\n\r\n");
    s.write_all(&req).expect("write");
    let (a, _, json) = read_response(&mut s).expect("upload answer");
    assert_eq!(a, 201, "{}", String::from_utf8_lossy(&json));
    assert!(String::from_utf8_lossy(&json).contains(blake3::hash(&body).to_hex().as_str()));
    assert_eq!(read_response(&mut s).expect("healthz").0, 200);
}

#[test]
fn curl_chunked_upload() {
    let node = Node::start(&[]);
    let dir = tempfile::tempdir().expect("tmp");
    let data = random_bytes(3 << 20, 77);
    let file = dir.path().join("in");
    std::fs::write(&file, &data).expect("write");
    // `-T -` reads stdin, so curl sends Transfer-Encoding: chunked.
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-X",
            "POST",
            "-T",
            "-",
            &format!("{}/blobs", node.url()),
        ])
        .stdin(std::fs::File::open(&file).expect("open"))
        .output()
        .expect("curl");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        v["hash"].as_str(),
        Some(blake3::hash(&data).to_hex().as_str())
    );
    assert_eq!(v["size"].as_u64(), Some(data.len() as u64));
}

#[test]
fn slowloris_is_cut_off() {
    let node = Node::start(&["--header-timeout-ms", "300", "--idle-timeout-ms", "300"]);
    let mut s = TcpStream::connect(node.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    s.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        .expect("write");
    // Keep dribbling a byte at a time: the head never completes in time.
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(50));
        if s.write_all(b"a").is_err() {
            break;
        }
    }
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        // Closed, or reset because our last bytes arrived after the close.
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(n) => panic!(
            "answered instead of cut off: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => panic!("connection not cut off within 60 s: {e}"),
    }
    assert!(node.metric("tessera_timeouts_total") >= 1);
}

/// A connection that never sends (parked: no buffers, no timer of its own, the
/// core's tick shuts it down) and one that made a request and then idles (it
/// keeps its buffers: few connections) are both closed after the idle timeout.
#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    let node = Node::start(&["--idle-timeout-ms", "300"]);
    let silent = TcpStream::connect(node.addr).expect("connect");
    let mut used = TcpStream::connect(node.addr).expect("connect");
    used.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    let (status, _, _) = read_response(&mut used).expect("answer");
    assert_eq!(status, 200);
    for (name, mut s) in [("silent", silent), ("used", used)] {
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Ok(n) => panic!("{name}: {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(e) => panic!("{name}: not closed within 60 s: {e}"),
        }
    }
    assert!(node.metric("tessera_timeouts_total") >= 2);
}

/// A node on one core with `park_idle_above_connections = count`, whose idle
/// connections below that count keep their buffers however long they wait
/// (the config file lives in the returned folder).
fn one_core_node_parking_above(count: usize) -> (Node, tempfile::TempDir) {
    one_core_node_with(&format!(
        "park_idle_above_connections = {count}\npark_idle_after_ms = 0\n"
    ))
}

/// `n` keep-alive connections to `node`, each after one answered request.
fn used_connections(node: &Node, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = node.connect();
            assert_eq!(get_on(&mut s, "/healthz").0, 200);
            s
        })
        .collect()
}

/// A node on one core with the configuration file `toml` (kept in the
/// returned folder).
fn one_core_node_with(toml: &str) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("node.toml");
    std::fs::write(&config, toml).expect("config");
    let node = Node::start(&["--cores", "1", "--config", config.to_str().expect("utf-8")]);
    (node, dir)
}

/// Above `kernel_idle_above_connections` an idle connection has no task, only
/// its socket in the core's epoll set. Such connections answer each next
/// request, a new one waits there for its first bytes, one the client closes
/// is let go, and they are all closed when the node stops.
#[test]
fn idle_connections_above_the_kernel_count_wait_without_a_task() {
    let (node, _dir) =
        one_core_node_with("park_idle_above_connections = 0\nkernel_idle_above_connections = 4\n");
    let hash = node.put_bytes(b"held in the kernel");
    let path = format!("/blobs/{hash}");
    let mut conns = used_connections(&node, 24);
    // The first four parked with a task (the core had at most four); the
    // other twenty waited for their first bytes in the kernel, and went back
    // there after their answer.
    within(
        Duration::from_secs(30),
        "20 idle connections in the kernel",
        || {
            std::thread::sleep(Duration::from_millis(100));
            node.metric("tessera_idle_connections_in_kernel") >= 20
        },
    );
    assert_eq!(node.metric("tessera_idle_connections_with_buffers"), 0);
    // Each answers again, three times over (its entry re-armed each time),
    // interleaved so that the connections wake in any order.
    for round in 0..3 {
        for (i, s) in conns.iter_mut().enumerate() {
            let (status, _, body) = get_on(s, &path);
            assert_eq!(status, 200, "connection {i}, round {round}");
            assert_eq!(body, b"held in the kernel");
        }
    }
    // Pipelined requests on a held connection: both answered, in order.
    let s = &mut conns[10];
    s.write_all(
        format!("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET {path} HTTP/1.1\r\nHost: t\r\n\r\n")
            .as_bytes(),
    )
    .expect("write");
    let (first, _, body) = read_response(s).expect("first");
    assert_eq!((first, body.as_slice()), (200, b"ok\n".as_slice()));
    let (second, _, body) = read_response(s).expect("second");
    assert_eq!(
        (second, body.as_slice()),
        (200, b"held in the kernel".as_slice())
    );
    // A new connection that waits before it asks.
    let mut late = node.connect();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get_on(&mut late, &path).0, 200);
    // Ten clients go away: their sockets are let go (the node counts them out).
    let open_before = node.metric("tessera_connections_open");
    conns.truncate(14);
    within(
        Duration::from_secs(30),
        "ten closed connections let go",
        || {
            std::thread::sleep(Duration::from_millis(100));
            node.metric("tessera_connections_open") + 10 <= open_before
        },
    );
    for s in conns.iter_mut() {
        assert_eq!(get_on(s, "/healthz").0, 200);
    }
    // SIGTERM: every held connection is closed, and the node exits.
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(node.pid(), libc::SIGTERM) };
    for (i, s) in conns.iter_mut().enumerate() {
        let mut buf = [0u8; 16];
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("connection {i} not closed at stop: {other:?}"),
        }
    }
    let mut node = node;
    let status = node.child.take().expect("child").wait().expect("wait");
    assert!(status.success(), "exit: {status}");
}

/// Connections held in the kernel are closed after the idle timeout, each
/// counted as a timeout, and the node counts them out.
#[test]
fn idle_connections_in_the_kernel_are_closed_after_the_idle_timeout() {
    let (node, _dir) = one_core_node_with(
        "park_idle_above_connections = 0\nkernel_idle_above_connections = 0\nidle_timeout_ms = 500\n",
    );
    let conns: Vec<TcpStream> = (0..8)
        .map(|i| {
            let mut s = node.connect();
            // Half of them silent, half after a request.
            if i % 2 == 0 {
                assert_eq!(get_on(&mut s, "/healthz").0, 200);
            }
            s
        })
        .collect();
    for (i, mut s) in conns.into_iter().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let mut buf = [0u8; 16];
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("connection {i} not closed within 60 s: {other:?}"),
        }
    }
    assert!(node.metric("tessera_timeouts_total") >= 8);
    within(
        Duration::from_secs(30),
        "the closed connections counted out",
        || {
            std::thread::sleep(Duration::from_millis(100));
            // The probe itself is the one open connection.
            node.metric("tessera_connections_open") <= 1
        },
    );
}

/// Below `park_idle_above_connections` an idle connection keeps its buffers
/// and waits in a read; once the core holds more connections than that, the
/// tick cancels those reads and the connections park (hold no buffers), and
/// they still answer their next request.
#[test]
fn idle_connections_give_back_their_buffers_when_the_core_passes_the_parking_count() {
    let (node, _dir) = one_core_node_parking_above(2);
    let connect = || node.connect();
    let get = |s: &mut TcpStream, path: &str| {
        let (status, _, body) = get_on(s, path);
        assert_eq!(status, 200, "{path}");
        String::from_utf8(body).expect("utf-8")
    };
    // Asked over `probe` (no new connection): how many idle connections hold
    // buffers, as of the core's last tick.
    let with_buffers = |probe: &mut TcpStream| {
        let metrics = get(probe, "/metrics");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("tessera_idle_connections_with_buffers "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("tessera_idle_connections_with_buffers")
    };
    let (mut probe, mut keeper) = (connect(), connect());
    get(&mut probe, "/healthz");
    get(&mut keeper, "/healthz");
    // Two connections, both at most the parking count: both keep their
    // buffers while idle (the probe between its requests).
    within(
        Duration::from_secs(30),
        "two idle connections with buffers",
        || {
            std::thread::sleep(Duration::from_millis(100));
            with_buffers(&mut probe) == 2
        },
    );
    // Three more (silent ones): the keeper, which sends nothing, gives its
    // buffers back; nothing else would make it park.
    let more: Vec<TcpStream> = (0..3).map(|_| connect()).collect();
    within(
        Duration::from_secs(30),
        "no idle connection with buffers",
        || {
            std::thread::sleep(Duration::from_millis(100));
            with_buffers(&mut probe) == 0
        },
    );
    assert_eq!(
        get(&mut keeper, "/healthz").trim(),
        "ok",
        "the parked keeper answers"
    );
    // Back at the parking count: the connections keep their buffers again.
    drop(more);
    within(
        Duration::from_secs(30),
        "the keeper holds its buffers again",
        || {
            get(&mut keeper, "/healthz");
            std::thread::sleep(Duration::from_millis(100));
            with_buffers(&mut probe) >= 1
        },
    );
    assert_eq!(node.metric("tessera_timeouts_total"), 0);
}

/// Below the parking count too, a connection that has waited
/// `park_idle_after_ms` gives its buffers back and parks, and it answers its
/// next request from there.
#[test]
fn idle_connections_give_back_their_buffers_after_a_while() {
    let (node, _dir) = one_core_node_with("park_idle_after_ms = 300\n");
    let hash = node.put_bytes(b"after a pause");
    let path = format!("/blobs/{hash}");
    let mut conns = used_connections(&node, 8);
    // Eight connections, far below the default parking count of 256: only
    // their wait makes them park. (Each probe is a new connection, which is
    // not yet waiting when the core counts.)
    within(
        Duration::from_secs(30),
        "no idle connection with buffers",
        || {
            std::thread::sleep(Duration::from_millis(100));
            node.metric("tessera_idle_connections_with_buffers") == 0
        },
    );
    for round in 0..2 {
        for (i, s) in conns.iter_mut().enumerate() {
            let (status, _, body) = get_on(s, &path);
            assert_eq!(status, 200, "connection {i}, round {round}");
            assert_eq!(body, b"after a pause");
        }
        // Parked again before the next round.
        std::thread::sleep(Duration::from_millis(700));
    }
    assert_eq!(node.metric("tessera_timeouts_total"), 0);
}

/// The buffers of connections that end go to the core's spares, for the next
/// connections; spares that a second did not need are freed (and the heap
/// trimmed), so the memory a burst of connections took goes back.
#[test]
fn the_buffers_of_ended_connections_are_freed_once_unused() {
    let (node, _dir) = one_core_node_parking_above(100);
    // 48 connections below the parking count: each keeps its read buffer
    // while idle (its write buffer waits in the core's spares).
    let conns = used_connections(&node, 48);
    within(
        Duration::from_secs(30),
        "48 idle connections with buffers",
        || {
            std::thread::sleep(Duration::from_millis(100));
            node.metric("tessera_idle_connections_with_buffers") >= 48
        },
    );
    let freed = node.metric("tessera_spare_connection_buffers_freed_total");
    // They end: their 48 read buffers become spares, and no connection comes
    // to take them (a probe takes one and gives it back); all but the eight
    // kept warm are freed.
    drop(conns);
    within(
        Duration::from_secs(30),
        "the ended connections' buffers freed",
        || {
            std::thread::sleep(Duration::from_millis(200));
            node.metric("tessera_spare_connection_buffers_freed_total") - freed >= 40
        },
    );
    within(Duration::from_secs(30), "a few spares kept warm", || {
        std::thread::sleep(Duration::from_millis(200));
        // Eight of each kind kept warm, and the one the probes take.
        node.metric("tessera_spare_connection_buffers") <= 18
    });
    let (status, _, body) = node.get("/healthz");
    assert_eq!((status, body.as_slice()), (200, b"ok\n".as_slice()));
}

/// A kernel that refuses cooperative task running (before 5.19) gets a ring
/// without it, and the node serves as before; the metric says which it got.
#[test]
fn a_kernel_without_cooperative_task_running_still_serves() {
    let refused = Node::start_at_with_env(
        free_addr(),
        &["--cores", "2"],
        &[("TESSERA_FAULT_NO_COOP_TASKRUN", "1")],
    );
    assert_eq!(refused.metric("tessera_io_uring_cooperative_cores"), 0);
    let data = random_bytes(300_000, 17);
    let hash = refused.put_bytes(&data);
    let mut s = refused.connect();
    for (path, want) in [
        (format!("/blobs/{hash}"), &data[..]),
        ("/healthz".into(), b"ok\n"),
    ] {
        for _ in 0..3 {
            let (status, _, body) = get_on(&mut s, &path);
            assert_eq!((status, body.as_slice()), (200, want), "{path}");
        }
    }
    // Without the fault, a kernel that has the flag (5.19 on) gives it to every core.
    let given = Node::start(&["--cores", "2"]);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut version = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (version.next().unwrap_or(0), version.next().unwrap_or(0));
    let expected = if (major, minor) >= (5, 19) { 2 } else { 0 };
    assert_eq!(
        given.metric("tessera_io_uring_cooperative_cores"),
        expected,
        "kernel {release}"
    );
}

#[test]
fn a_thousand_concurrent_keep_alive_connections() {
    let node = Node::start(&[]);
    let hash = node.put_bytes(b"many readers");
    let req = format!("GET /blobs/{hash} HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut conns: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let s = TcpStream::connect(node.addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(30)))
                .expect("timeout");
            s
        })
        .collect();
    for round in 0..2 {
        for s in conns.iter_mut() {
            s.write_all(req.as_bytes()).expect("write");
        }
        for (i, s) in conns.iter_mut().enumerate() {
            let (status, _, body) =
                read_response(s).unwrap_or_else(|e| panic!("conn {i} round {round}: {e}"));
            assert_eq!(status, 200);
            assert_eq!(body, b"many readers");
        }
    }
    assert!(node.metric("tessera_connections_open") >= 1000);
}

#[test]
fn store_limit_evicts_least_recently_used_never_pinned() {
    let node = Node::start(&["--max-store-bytes", "100000", "--admin-token", ADMIN]);
    let a = node.put_bytes(&random_bytes(40_000, 10));
    let b = node.put_bytes(&random_bytes(40_000, 11));
    let pin = format!(
        "PUT /blobs/{a}/pin HTTP/1.1\r\nAuthorization: Bearer {ADMIN}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(node.request(pin.as_bytes()).0, 204);
    // a is pinned, so the third blob pushes out b.
    let c = node.put_bytes(&random_bytes(40_000, 12));
    assert_eq!(node.get(&format!("/blobs/{a}")).0, 200);
    assert_eq!(node.get(&format!("/blobs/{b}")).0, 404);
    assert_eq!(node.get(&format!("/blobs/{c}")).0, 200);
    assert_eq!(node.metric("tessera_store_bytes"), 80_000);
    // Larger than the whole store: refused with 507, nothing stored.
    let mut req =
        b"POST /blobs HTTP/1.1\r\nContent-Length: 150000\r\nConnection: close\r\n\r\n".to_vec();
    req.extend_from_slice(&random_bytes(150_000, 13));
    assert_eq!(node.request(&req).0, 507);
    assert_eq!(node.metric("tessera_store_blobs"), 2);
}

#[test]
fn small_blobs_are_copied_with_their_head_and_leave_the_cache_on_delete() {
    let node = Node::start(&["--admin-token", ADMIN]);
    let data = random_bytes(5_000, 21);
    let h = node.put_bytes(&data);
    let blob = format!("/blobs/{h}");
    let small_before = node.metric("tessera_small_body_bytes_total");
    let spliced_before = node.metric("tessera_zero_copy_bytes_total");
    for _ in 0..3 {
        let (status, _, body) = node.get(&blob);
        assert_eq!(status, 200);
        assert_eq!(body, data);
    }
    let (status, head, body) = node.request(
        format!("GET {blob} HTTP/1.1\r\nRange: bytes=4990-\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(status, 206);
    assert_eq!(header(&head, "content-range"), Some("bytes 4990-4999/5000"));
    assert_eq!(body, &data[4990..]);
    assert_eq!(
        node.metric("tessera_small_body_bytes_total") - small_before,
        3 * 5_000 + 10
    );
    assert_eq!(
        node.metric("tessera_zero_copy_bytes_total") - spliced_before,
        0
    );
    // The held copy goes with the blob: no stale bytes after a delete.
    let del = format!(
        "DELETE {blob} HTTP/1.1\r\nAuthorization: Bearer {ADMIN}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(node.request(del.as_bytes()).0, 204);
    assert_eq!(node.get(&blob).0, 404);
}
