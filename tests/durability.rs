//! Crashes, corruption, full disks and shutdown, with real processes.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

/// `tessera store verify` on the node's data directory.
fn store_verify(node: &Node) -> std::process::Output {
    tessera(&[
        "store",
        "verify",
        "--data-dir",
        node.data_dir.to_str().expect("utf8"),
    ])
}

#[test]
fn kill_9_during_upload_leaves_no_partial_blob() {
    let mut node = Node::start(&[]);
    let kept = random_bytes(50_000, 1);
    let kept_hash = node.put_bytes(&kept);
    let big = random_bytes(64 << 20, 2);
    let big_hash = blake3::hash(&big).to_hex().to_string();
    let mut s = TcpStream::connect(node.addr).expect("connect");
    s.write_all(
        format!(
            "POST /blobs HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            big.len()
        )
        .as_bytes(),
    )
    .expect("head");
    s.write_all(&big[..20 << 20]).expect("first part");
    // Wait until the node has written some of it to tmp/, then kill it hard.
    let tmp = node.data_dir.join("tmp");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if std::fs::read_dir(&tmp).expect("tmp").count() > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        std::fs::read_dir(&tmp).expect("tmp").count() > 0,
        "upload never reached tmp/"
    );
    node.kill9();
    drop(s);
    node.restart();
    assert_eq!(
        std::fs::read_dir(&tmp).expect("tmp").count(),
        0,
        "stray temp files cleaned at start"
    );
    assert_eq!(node.get(&format!("/blobs/{big_hash}")).0, 404);
    assert_eq!(node.get(&format!("/blobs/{kept_hash}")).2, kept);
    assert_eq!(node.metric("tessera_store_blobs"), 1);
    let out = store_verify(&node);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bit_rot_is_named_by_verify_and_refused_by_get() {
    let node = Node::start(&[]);
    let good = node.put_bytes(&random_bytes(40_000, 3));
    let data = random_bytes(100_000, 4);
    let bad = node.put_bytes(&data);
    let path = node.data_dir.join("blobs").join(&bad);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[70_000] ^= 0x10; // chunk group 4
    std::fs::write(&path, bytes).expect("write");

    let out = store_verify(&node);
    assert_eq!(out.status.code(), Some(1));
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(listed.contains(&bad), "{listed}");
    assert!(!listed.contains(&good), "{listed}");

    let dir = tempfile::tempdir().expect("tmp");
    let dest = dir.path().join("out");
    let out = tessera(&[
        "get",
        "--node",
        &node.url(),
        &bad,
        "-o",
        dest.to_str().expect("utf8"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("nothing was written"), "{err}");
    assert!(!dest.exists(), "no output file");
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("dir").count(),
        0,
        "no partial file left"
    );
    assert!(node.metric("tessera_corrupt_blobs_detected_total") >= 1);

    // Once caught, the node takes the blob out of service: not even plain bytes are
    // served, and it waits in quarantine/ for inspection.
    assert_eq!(node.get(&format!("/blobs/{bad}")).0, 404);
    assert_eq!(node.get(&format!("/blobs/{good}")).0, 200);
    assert!(node.data_dir.join("quarantine").join(&bad).exists());
    let out = store_verify(&node);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn get_refuses_a_lying_node() {
    // A node that serves another blob's stream under the requested hash: a stand-in
    // peer that lies (a real node never would), built from a real node's stream.
    let node = Node::start(&[]);
    let real = node.put_bytes(&random_bytes(70_000, 8));
    let (_, _, stream) = node.get(&format!("/blobs/{real}?format=bao"));
    let mut lie = stream.clone();
    let n = lie.len();
    lie[n - 10] ^= 1;
    let liar = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = liar.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        let (mut c, _) = liar.accept().expect("accept");
        let mut buf = [0u8; 4096];
        let _ = c.read(&mut buf);
        let _ = c.write_all(
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", lie.len()).as_bytes(),
        );
        let _ = c.write_all(&lie);
    });
    let dir = tempfile::tempdir().expect("tmp");
    let dest = dir.path().join("out");
    let out = tessera(&[
        "get",
        "--node",
        &format!("http://{addr}"),
        &real,
        "-o",
        dest.to_str().expect("utf8"),
    ]);
    let _ = server.join();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("chunk group 4"), "names the bad group: {err}");
    assert!(!dest.exists());
}

#[test]
fn full_disk_gives_507_and_keeps_serving() {
    // A 6 MiB tmpfs as the data dir: a real ENOSPC, not a simulated one. Needs root
    // (CI runs as root); without it the test fails and says so.
    let tmp = tempfile::tempdir().expect("tmp");
    let mnt = tmp.path().join("small");
    std::fs::create_dir(&mnt).expect("mkdir");
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("run mount");
    assert!(
        status.success(),
        "mounting a tmpfs needs root: run the tests as root (as CI does)"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let node = Node::start_in(mnt.join("data"), None, &[]);
    let small = node.put_bytes(b"still here");
    let big = random_bytes(10 << 20, 9);
    let mut req = format!(
        "POST /blobs HTTP/1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        big.len()
    )
    .into_bytes();
    req.extend_from_slice(&big);
    let (status, _, body) = node.request(&req);
    assert_eq!(status, 507, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("disk is full"));
    assert_eq!(
        std::fs::read_dir(node.data_dir.join("tmp"))
            .expect("tmp")
            .count(),
        0
    );
    assert_eq!(node.get(&format!("/blobs/{small}")).2, b"still here");
    // Space came back with the temp file's removal: small uploads work again.
    node.put_bytes(b"after the full disk");
    drop(node);
}

#[test]
fn sigterm_finishes_in_flight_downloads() {
    let node = Node::start(&[]);
    let data = random_bytes(32 << 20, 6);
    let hash = node.put_bytes(&data);
    let mut s = TcpStream::connect(node.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(format!("GET /blobs/{hash} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .expect("write");
    // Read a little so the response is under way, then ask the node to stop.
    let mut first = [0u8; 1024];
    s.read_exact(&mut first).expect("start of response");
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(node.pid(), libc::SIGTERM) };
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("rest of response");
    let mut all = first.to_vec();
    all.extend_from_slice(&rest);
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
    assert_eq!(&all[split..], &data[..], "the in-flight download completed");
    // The process exits cleanly once drained.
    let mut node = node;
    let mut child = node.child.take().expect("child");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    // And it no longer accepts connections.
    assert!(TcpStream::connect(node.addr).is_err());
}

/// Decodes a whole verified stream with bao-tree's own decoder: the blob's bytes.
fn decode_whole(hash: &str, stream: &[u8]) -> Vec<u8> {
    let size = u64::from_le_bytes(stream[..8].try_into().expect("8 bytes"));
    let tree = bao_tree::BaoTree::new(size, bao_tree::BlockSize::from_chunk_log(4));
    let root = blake3::Hash::from_hex(hash).expect("hex");
    let mut out = Vec::new();
    let ranges = bao_tree::ChunkRanges::all();
    for item in bao_tree::io::sync::DecodeResponseIter::new(root, tree, &stream[8..], &ranges) {
        if let bao_tree::io::BaoContentItem::Leaf(leaf) = item.expect("verifies") {
            out.extend_from_slice(&leaf.data);
        }
    }
    out
}

#[test]
fn a_whole_stream_asked_for_twice_is_kept_spliced_and_dropped_when_bad() {
    let mut node = Node::start(&["--admin-token", "test-admin-token-0123456789"]);
    let data = random_bytes(700_000, 9);
    let hash = node.put_bytes(&data);
    let url = format!("{}/blobs/{hash}", node.url());
    let kept = node.data_dir.join("blobs").join(format!("{hash}.bao"));
    let stream = |extra: &[&str]| {
        let mut args = vec!["-H", "Accept: application/x-bao"];
        args.extend_from_slice(extra);
        let (status, _, body) = curl_get(&url, &args);
        assert_eq!(status, 200);
        body
    };
    let first = stream(&[]);
    assert_eq!(decode_whole(&hash, &first), data);
    assert!(!kept.exists(), "a blob asked for once costs no copy");
    // Ranges, checked as they are sent (they never count as asks).
    let ranges = ["0-100", "300000-450000", "650000-"];
    let checked: Vec<Vec<u8>> = ranges.iter().map(|r| stream(&["-r", r])).collect();
    assert!(!kept.exists());
    assert_eq!(stream(&[]), first);
    within(Duration::from_secs(60), "the stream is kept", || {
        kept.exists()
    });
    assert_eq!(std::fs::read(&kept).expect("kept"), first);
    assert_eq!(node.metric("tessera_kept_streams"), 1);
    assert_eq!(node.metric("tessera_kept_stream_bytes"), first.len() as u64);

    // Served from the copy, byte for byte the checked stream; ranges are not.
    let spliced = node.metric("tessera_zero_copy_responses_total");
    assert_eq!(stream(&[]), first);
    assert_eq!(node.metric("tessera_kept_stream_responses_total"), 1);
    assert_eq!(
        node.metric("tessera_zero_copy_responses_total"),
        spliced + 1
    );
    // Ranges are spliced from the copy too, a few pieces of it: the same bytes
    // as when they were checked as they were sent.
    for (range, want) in ranges.iter().zip(&checked) {
        let part = stream(&["-r", range]);
        assert!(part.len() < first.len());
        assert_eq!(&part, want, "range {range}");
    }
    assert_eq!(node.metric("tessera_kept_stream_responses_total"), 4);

    // Rot in the copy (same length): `store verify` finds the blob sound and
    // drops the copy; the next answers are checked again, then kept anew.
    let mut rotten = first.clone();
    rotten[300_000] ^= 0x04;
    std::fs::write(&kept, &rotten).expect("rot");
    let out = store_verify(&node);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!kept.exists(), "the bad copy is removed");
    assert_eq!(stream(&[]), first);
    assert_eq!(stream(&[]), first);
    assert_eq!(node.metric("tessera_kept_stream_responses_total"), 4);
    within(Duration::from_secs(60), "the stream is kept again", || {
        std::fs::read(&kept).is_ok_and(|k| k == first)
    });

    // A copy cut short is never served, and is gone after a restart.
    std::fs::write(&kept, &first[..first.len() / 2]).expect("cut");
    assert_eq!(stream(&[]), first);
    assert_eq!(stream(&["-r", ranges[1]]), checked[1]);
    assert_eq!(node.metric("tessera_kept_stream_responses_total"), 4);
    node.restart();
    assert!(!kept.exists(), "a torn copy is removed at start");
    assert_eq!(node.metric("tessera_kept_streams"), 0);

    // The copy goes with its blob.
    assert_eq!(stream(&[]), first);
    assert_eq!(stream(&[]), first);
    within(Duration::from_secs(60), "kept after the restart", || {
        kept.exists()
    });
    let del = format!("DELETE /blobs/{hash} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer test-admin-token-0123456789\r\nConnection: close\r\n\r\n");
    assert_eq!(node.request(del.as_bytes()).0, 204);
    assert!(!kept.exists(), "deleted with its blob");
    assert_eq!(node.metric("tessera_kept_streams"), 0);
    assert_eq!(curl_get(&url, &["-H", "Accept: application/x-bao"]).0, 404);
}
