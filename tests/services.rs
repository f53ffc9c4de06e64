//! The service interface end to end, with the test-only `echo` service (feature
//! `test-services`): answers decided on the core and work done on the service's
//! own pool, over HTTP/1.1 (curl) and HTTP/3 (aioquic) alike; two services on
//! one mount refused at start; a handler that panics costs one 500, not the
//! service; a full queue answers 503 with Retry-After; a deadline 504.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn echo_node(extra_env: &[(&str, &str)]) -> Node {
    let mut env = vec![("TESSERA_TEST_SERVICES", "echo")];
    env.extend_from_slice(extra_env);
    Node::start_at_with_env(free_addr(), &[], &env)
}

#[test]
fn two_services_claiming_one_mount_stop_the_node_at_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = Command::new(BIN)
        .args(["run", "--cores", "1", "--listen"])
        .arg(free_addr().to_string())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("TESSERA_TEST_SERVICES", "echo,echo")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("service echo cannot claim path prefix /test/echo/")
            && err.contains("another service claims an overlapping prefix"),
        "{err}"
    );
}

#[test]
fn decisions_on_the_core_and_work_on_the_pool_over_both_protocols() {
    let node = echo_node(&[]);
    // On the core.
    let out = curl(&[&format!("{}/test/echo/now", node.url())]);
    assert_eq!(out.stdout, b"now\n");
    // On the pool, with a body and the request's headers.
    let out = curl(&[
        "-D",
        "-",
        "-H",
        "X-Echo: from curl",
        "--data-binary",
        "hello service",
        &format!("{}/test/echo/post", node.url()),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(header(&text, "x-echo-header"), Some("from curl"));
    assert!(
        text.ends_with("POST /test/echo/post\nhello service"),
        "{text}"
    );
    // The same over HTTP/3.
    let url = format!("https://{}/test/echo/post", node.addr);
    let r = aioquic_send(
        &url,
        "POST",
        &[("x-echo", "from aioquic")],
        Some(b"over h3"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"POST /test/echo/post\nover h3");
    assert_eq!(r.header("x-echo-header"), Some("from aioquic"));
    assert_eq!(
        r.header("x-echo-host"),
        Some(node.addr.to_string().as_str())
    );
    let r = aioquic_request(&format!("https://{}/test/echo/now", node.addr), "GET", &[]);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"now\n"[..]));
    // A body over the service's limit is refused before it reaches the handler.
    let big = vec![b'x'; 100 << 10];
    let r = aioquic_send(&url, "POST", &[], Some(&big));
    assert_eq!(r.status, 413);
    let (status, _, _) = node.request(
        &[
            format!(
                "POST /test/echo/post HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                big.len()
            )
            .into_bytes(),
            big.clone(),
        ]
        .concat(),
    );
    assert_eq!(status, 413);
    // The node's own routes are untouched.
    assert_eq!(node.get("/healthz").0, 200);
    assert!(node.metric("tessera_service_requests_total{service=\"echo\"}") >= 4);
}

#[test]
fn a_panicking_handler_costs_one_500_and_the_service_goes_on() {
    let node = echo_node(&[]);
    for round in 0..2 {
        let (status, _, body) = node.get("/test/echo/panic");
        assert_eq!(
            status,
            500,
            "round {round}: {}",
            String::from_utf8_lossy(&body)
        );
        let r = aioquic_request(
            &format!("https://{}/test/echo/panic", node.addr),
            "GET",
            &[],
        );
        assert_eq!(r.status, 500);
        // The next request is served, by the same single worker.
        let (status, _, body) = node.get("/test/echo/after");
        assert_eq!(
            (status, body.as_slice()),
            (200, &b"GET /test/echo/after\n"[..])
        );
    }
    assert_eq!(
        node.metric("tessera_service_panics_total{service=\"echo\"}"),
        4
    );
}

#[test]
fn a_full_queue_is_503_with_retry_after_and_a_late_answer_504() {
    // One worker, a queue of two, a deadline of 3 s: a request that sleeps 30 s
    // holds the worker, two more fill the queue, the next is refused at once.
    let node = echo_node(&[("TESSERA_TEST_SERVICE_DEADLINE_MS", "3000")]);
    let addr = node.addr;
    let sleeper = move || {
        std::thread::spawn(move || {
            let raw =
                "GET /test/echo/sleep?ms=30000 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
            try_request(addr, raw.as_bytes()).map(|r| r.0)
        })
    };
    let metric = |name: &str| node.metric(&format!("tessera_service_{name}{{service=\"echo\"}}"));
    let mut waiting = vec![sleeper()];
    within(Duration::from_secs(60), "the worker busy", || {
        metric("busy") == 1
    });
    waiting.push(sleeper());
    waiting.push(sleeper());
    within(Duration::from_secs(60), "the queue full", || {
        metric("jobs_total") == 3
    });
    let (status, head, body) = node.get("/test/echo/one-more");
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert_eq!(header(&head, "retry-after"), Some("1"));
    let r = aioquic_request(&format!("https://{addr}/test/echo/one-more"), "GET", &[]);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    // The three waiting got 504 at their deadline (the sleep goes on).
    for w in waiting {
        assert_eq!(w.join().expect("thread").expect("answer"), 504);
    }
    assert_eq!(metric("rejected_total"), 2);
    assert_eq!(metric("timed_out_total"), 3);
}

/// What `/test/echo/stream?bytes=N` sends: 64 KiB chunks, chunk `k` all `k % 251`.
fn pattern_hash(total: u64) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    let mut sent = 0u64;
    let mut k = 0u64;
    while sent < total {
        let n = (total - sent).min(64 << 10) as usize;
        h.update(&vec![(k % 251) as u8; n]);
        sent += n as u64;
        k += 1;
    }
    h.finalize()
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_streamed_body_arrives_whole_in_bounded_memory_over_both_protocols() {
    use std::io::Read;
    let node = echo_node(&[]);
    let pid = node.pid();
    let before = rss_kib(pid);
    // 1 GiB over HTTP/1.1 (chunked), read by curl as it comes.
    let total: u64 = 1 << 30;
    let mut child = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "600", "-o", "-"])
        .arg(format!("{}/test/echo/stream?bytes={total}", node.url()))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    let mut out = child.stdout.take().expect("stdout");
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let (mut got, mut peak) = (0u64, 0u64);
    loop {
        let n = out.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        got += n as u64;
        peak = peak.max(rss_kib(pid));
    }
    assert!(child.wait().expect("curl").success(), "curl failed");
    assert_eq!(got, total);
    assert_eq!(hasher.finalize(), pattern_hash(total));
    // Never held whole: the node grew by far less than the body.
    assert!(
        peak.saturating_sub(before) < 256 << 10,
        "node RSS grew from {before} KiB to {peak} KiB while streaming 1 GiB"
    );

    // Over HTTP/3 (DATA frames), to aioquic.
    let total: u64 = 8 << 20;
    let r = aioquic_request(
        &format!("https://{}/test/echo/stream?bytes={total}", node.addr),
        "GET",
        &[],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len() as u64, total);
    assert_eq!(blake3::hash(&r.body), pattern_hash(total));
}

#[test]
fn a_producer_that_fails_cuts_the_body_short_visibly() {
    let node = echo_node(&[]);
    // No last chunk: curl sees the body end early and says so.
    let out = curl(&[
        "-o",
        "/dev/null",
        &format!("{}/test/echo/stream-fail?bytes={}", node.url(), 4 << 20),
    ]);
    assert!(!out.status.success(), "a failed stream looked complete");
    assert_eq!(
        out.status.code(),
        Some(18),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And the service goes on.
    assert_eq!(node.get("/test/echo/now").2, b"now\n");
}

/// A session with the `websockets` client (`tests/common/ws_client.py`).
fn ws_client(url: &str, mode: &str) -> serde_json::Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/ws_client.py");
    let out = Command::new("python3")
        .arg(script)
        .args([url, mode])
        .output()
        .expect("python3 (scripts/test installs websockets from PyPI)");
    assert!(
        out.status.success(),
        "websockets client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn a_websocket_echo_with_a_real_client() {
    let node = echo_node(&[]);
    let url = format!("ws://{}/test/echo/ws", node.addr);
    let v = ws_client(&url, "echo");
    assert_eq!(v["text"], "hello, node", "{v}");
    assert_eq!(v["binary_ok"], true, "{v}");
    assert_eq!(v["pong"], true, "{v}");
    assert_eq!(v["closed_by_server"], true, "{v}");
    assert_eq!(v["close_code"], 1000, "{v}");
    // A message over the service's limit (1 MiB) closes with 1009.
    let v = ws_client(&url, "oversize");
    assert_eq!(v["close_code"], 1009, "{v}");
    // A plain GET on the route is refused with what to send.
    let (status, head, _) = node.get("/test/echo/ws");
    assert_eq!(status, 400);
    assert_eq!(header(&head, "sec-websocket-version"), Some("13"));
    // Over HTTP/3 a plain GET is refused with what to send instead.
    let r = aioquic_request(&format!("https://{}/test/echo/ws", node.addr), "GET", &[]);
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("extended CONNECT"));
    // The service still serves plain requests.
    assert_eq!(node.get("/test/echo/now").2, b"now\n");
}

#[test]
fn a_service_answers_with_a_stored_blob_served_as_blobs_are() {
    let node = echo_node(&[]);
    let data = random_bytes(300_000, 21);
    let hash = node.put_bytes(&data);
    let url = format!("{}/test/echo/blob/{hash}", node.url());
    let zero_copy = node.metric("tessera_zero_copy_bytes_total");
    let out = curl(&["-D", "-", "-o", "/dev/null", &url]);
    let head = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(header(&head, "content-type"), Some("text/x-echo"));
    assert_eq!(header(&head, "cache-control"), Some("no-cache"));
    assert_eq!(header(&head, "x-served-by"), Some("echo"));
    assert_eq!(header(&head, "etag"), Some(format!("\"{hash}\"").as_str()));
    assert_eq!(header(&head, "content-length"), Some("300000"));
    // Served the blob way: spliced, not copied through the service. The
    // counter moves once the last byte is handed to the socket, which the
    // client may see first (another core may answer the scrape).
    within(Duration::from_secs(30), "the zero-copy counter", || {
        node.metric("tessera_zero_copy_bytes_total") >= zero_copy + 300_000
    });
    let out = curl(&["-r", "100-199", &url]);
    assert_eq!(out.stdout, &data[100..200]);
    let out = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        &format!("If-None-Match: \"{hash}\""),
        &url,
    ]);
    assert_eq!(out.stdout, b"304");
    // Over HTTP/3.
    let h3 = format!("https://{}/test/echo/blob/{hash}", node.addr);
    let r = aioquic_request(&h3, "GET", &[("range", "bytes=10-19")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &data[10..20]);
    assert_eq!(r.header("content-type"), Some("text/x-echo"));
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert_eq!(r.header("x-served-by"), Some("echo"));
    // A blob the node lacks: 404, as for /blobs.
    let missing = format!("{}/test/echo/blob/{}", node.url(), "0".repeat(64));
    let out = curl(&["-o", "/dev/null", "-w", "%{http_code}", &missing]);
    assert_eq!(out.stdout, b"404");
}

#[test]
fn chunked_and_expect_continue_bodies_reach_the_service() {
    let node = echo_node(&[]);
    let url = format!("{}/test/echo/chunked", node.url());
    // curl sends a chunked body and waits for 100 Continue.
    let out = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        "in pieces",
        &url,
    ]);
    assert_eq!(out.stdout, b"POST /test/echo/chunked\nin pieces");
    // Over the service's 64 KiB limit, chunk by chunk: 413.
    let mut raw = b"POST /test/echo/chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..20 {
        raw.extend_from_slice(b"1000\r\n");
        raw.extend_from_slice(&[b'x'; 0x1000]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let (status, _, body) = node.request(&raw);
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    // Malformed framing: 400, and the handler never ran.
    let jobs = node.metric("tessera_service_jobs_total{service=\"echo\"}");
    let (status, _, _) = node.request(
        b"POST /test/echo/chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n",
    );
    assert_eq!(status, 400);
    assert_eq!(
        node.metric("tessera_service_jobs_total{service=\"echo\"}"),
        jobs
    );
}

#[test]
fn a_websocket_over_http3_extended_connect_with_aioquic() {
    let node = echo_node(&[]);
    // aioquic's example client with a wss:// URL: an extended CONNECT
    // (RFC 9220), two text messages echoed, then its close.
    let out = Command::new("python3")
        .arg(h3_client())
        .args(["--insecure", &format!("wss://{}/test/echo/ws", node.addr)])
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..2 {
        assert!(
            text.contains(&format!("< Hello {i}, WebSocket!")),
            "no echo of message {i}: {text}"
        );
    }
    // The socket's handler returned: the one worker serves the next request.
    let (status, _, body) = node.get("/test/echo/after-ws");
    assert_eq!(
        (status, body.as_slice()),
        (200, &b"GET /test/echo/after-ws\n"[..])
    );
}

/// Writes `len` bytes of a seeded pattern to `path`, 1 MiB at a time; their
/// BLAKE3 hash.
fn write_pattern_file(path: &std::path::Path, len: u64) -> String {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut hasher = blake3::Hasher::new();
    let mut left = len;
    let mut seed = 0;
    while left > 0 {
        let n = left.min(1 << 20);
        let block = random_bytes(n as usize, seed);
        hasher.update(&block);
        f.write_all(&block).expect("write");
        left -= n;
        seed += 1;
    }
    f.flush().expect("flush");
    hasher.finalize().to_hex().to_string()
}

fn sink_node() -> Node {
    echo_node(&[("TESSERA_TEST_SERVICES", "echo,sink")])
}

#[test]
fn a_request_body_streams_into_the_handler_in_bounded_memory_over_both_protocols() {
    let node = sink_node();
    let pid = node.pid();
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("body");
    let total: u64 = 256 << 20;
    let hash = write_pattern_file(&file, total);
    let before = rss_kib(pid);
    // The handler waits 3 s before it reads a byte: the node must hold the
    // client back (stop reading), not take the body into memory.
    let child = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "600", "-T"])
        .arg(&file)
        .arg(format!("{}/test/sink/upload?wait_ms=3000", node.url()))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    let mut peak = 0;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("curl");
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["bytes"], total, "{v}");
    assert_eq!(v["blake3"], hash.as_str(), "{v}");
    assert!(
        peak.saturating_sub(before) < 64 << 10,
        "node RSS grew from {before} KiB to {peak} KiB while a handler held back a 256 MiB body"
    );

    // Over HTTP/3: DATA frames into the same handler, flow control holding
    // aioquic back while the handler waits.
    let body = random_bytes(16 << 20, 7);
    let r = aioquic_send(
        &format!("https://{}/test/sink/upload?wait_ms=1000", node.addr),
        "POST",
        &[],
        Some(&body),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(v["bytes"], body.len(), "{v}");
    assert_eq!(v["blake3"], blake3::hash(&body).to_hex().as_str());
}

#[test]
fn a_handler_may_answer_before_the_body_is_in() {
    use std::io::{Read, Write};
    let node = sink_node();
    // HTTP/1.1: a 10 MiB body declared, 1 MiB sent, then the client waits;
    // the handler reads 1000 bytes and answers, and the connection closes
    // after the reply (the rest of the body is never read).
    let mut s = std::net::TcpStream::connect(node.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let head = format!(
        "POST /test/sink/x?stop_after=1000 HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        10 << 20
    );
    s.write_all(head.as_bytes()).expect("head");
    s.write_all(&vec![b'a'; 1 << 20]).expect("part of the body");
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("read until close");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(text.contains("\"bytes\":1000"), "{text}");

    // HTTP/3: the same early answer while aioquic still sends.
    let body = vec![b'b'; 4 << 20];
    let r = aioquic_send(
        &format!("https://{}/test/sink/x?stop_after=1000", node.addr),
        "POST",
        &[],
        Some(&body),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("\"bytes\":1000"));
    // The services go on.
    assert_eq!(node.get("/test/echo/now").2, b"now\n");
}

#[test]
fn bodies_over_a_services_limit_are_refused_on_both_protocols() {
    let node = echo_node(&[]);
    // Declared too large: 413 before a byte is read, and no job queued.
    let jobs = node.metric("tessera_service_jobs_total{service=\"echo\"}");
    let (status, _, _) = node.request(
        b"POST /test/echo/big HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 413);
    assert_eq!(
        node.metric("tessera_service_jobs_total{service=\"echo\"}"),
        jobs
    );
    // Over HTTP/3 (aioquic states no length: counted as it arrives): 413.
    let r = aioquic_send(
        &format!("https://{}/test/echo/big", node.addr),
        "POST",
        &[],
        Some(&vec![b'x'; 200 << 10]),
    );
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    // A body within the limit still reaches the handler over HTTP/3.
    let r = aioquic_send(
        &format!("https://{}/test/echo/small", node.addr),
        "POST",
        &[],
        Some(b"fits"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"POST /test/echo/small\nfits");
}

fn node_with_config(config: &str, services: &str) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("tessera.toml");
    std::fs::write(&path, config).expect("config");
    let node = Node::start_at_with_env(
        free_addr(),
        &["--config", path.to_str().expect("utf-8")],
        &[("TESSERA_TEST_SERVICES", services)],
    );
    (node, dir)
}

#[test]
fn a_service_uses_what_the_node_lends_it() {
    let (node, _config) =
        node_with_config("[services.echo]\ngreeting = \"hi from config\"\n", "echo");
    // Its config section.
    assert_eq!(node.get("/test/echo/config").2, b"hi from config\n");
    // The store: what it puts is a blob like any other, served at /blobs/.
    let data = random_bytes(60 << 10, 3);
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("data");
    std::fs::write(&file, &data).expect("write");
    let small = data.as_slice();
    let (status, _, body) = curl_get(
        &format!("{}/test/echo/store", node.url()),
        &["--data-binary", &format!("@{}", file.display())],
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let hash = blake3::hash(small).to_hex().to_string();
    assert_eq!(v["hash"], hash.as_str());
    assert_eq!(v["size"], small.len());
    let (status, _, served) = node.get(&format!("/blobs/{hash}"));
    assert_eq!((status, served.as_slice()), (200, small));
    // Read back through the service, over HTTP/3.
    let r = aioquic_request(
        &format!("https://{}/test/echo/store/{hash}", node.addr),
        "GET",
        &[],
    );
    assert_eq!((r.status, r.body.as_slice()), (200, small));
    // A put under the wrong hash stores nothing.
    let wrong = blake3::hash(b"something else").to_hex().to_string();
    let (status, _, body) = curl_get(
        &format!("{}/test/echo/store/{wrong}", node.url()),
        &["-X", "PUT", "--data-binary", "not those bytes"],
    );
    assert_eq!(status, 422, "{}", String::from_utf8_lossy(&body));
    assert_eq!(node.get(&format!("/blobs/{wrong}")).0, 404);
    let actual = blake3::hash(b"not those bytes").to_hex().to_string();
    assert_eq!(node.get(&format!("/blobs/{actual}")).0, 404);
    // Its own metric, under its name.
    assert_eq!(node.metric("tessera_echo_puts_total{service=\"echo\"}"), 1);
    // Its data directory.
    let (status, _, _) = curl_get(
        &format!("{}/test/echo/note", node.url()),
        &["--data-binary", "kept across requests"],
    );
    assert_eq!(status, 200);
    assert_eq!(
        std::fs::read(node.data_dir.join("services/echo/note")).expect("note file"),
        b"kept across requests"
    );
    assert_eq!(node.get("/test/echo/note").2, b"kept across requests");
    // The cluster view: this node's id, nobody else yet.
    let (status, _, body) = node.get("/test/echo/cluster");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["node_id"].as_str().map(str::len), Some(64), "{v}");
    assert_eq!(v["members"], 0);
    // No ledger on this node: the service is told so.
    let (status, _, body) = node.get("/test/echo/ledger");
    assert_eq!(status, 503);
    assert_eq!(body, b"this node runs no ledger\n");
}

#[test]
fn a_bad_service_config_stops_the_node_with_the_reason() {
    for (config, expect) in [
        (
            "[services.echo]\ngreeting = 3\n",
            "service echo: invalid type",
        ),
        (
            "[services.nosuch]\nx = 1\n",
            "this node has no service named nosuch",
        ),
    ] {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("tessera.toml");
        std::fs::write(&path, config).expect("config");
        let out = Command::new(BIN)
            .args(["run", "--cores", "1", "--listen"])
            .arg(free_addr().to_string())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&path)
            .env("TESSERA_TEST_SERVICES", "echo")
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(78), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{config}: {err}");
    }
}
