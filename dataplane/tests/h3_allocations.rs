//! How much the HTTP/3 path allocates per request: an in-process server with a
//! counting global allocator, and aioquic's client (another process, so only the
//! server's allocations are counted) sending many GETs on one QUIC connection.
//! quiche allocates per stream internally (QPACK-decoded headers, stream state,
//! send buffers), and so does our HTTP/3 GET (a mapping per request, range
//! strings), so this is a measured bound, not zero: about 132 per request on
//! 2026-11-24; it fails if a change makes the path much hungrier.

mod support;

use support::{allocations, OneCore};

fn aioquic(urls: &[String]) {
    let client = std::env::var_os("TESSERA_H3_CLIENT")
        .expect("TESSERA_H3_CLIENT is not set: run the tests with ./scripts/test");
    let out = tempfile::tempdir().expect("tmp");
    let status = std::process::Command::new("python3")
        .arg(client)
        .args(["--insecure", "--output-dir"])
        .arg(out.path())
        .args(urls)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("python3");
    assert!(status.success(), "aioquic client failed");
}

#[test]
fn h3_allocations_per_request_stay_bounded() {
    let node = OneCore::start(7);
    let (addr, hash) = (node.addr, node.hash);
    let url = format!("https://{addr}/blobs/{hash}");
    // One connection with 20 requests, then one with 220: the difference is
    // what 200 requests cost, handshakes and set-up cancelling out.
    let before = allocations();
    aioquic(&vec![url.clone(); 20]);
    let small = allocations() - before;
    let before = allocations();
    aioquic(&vec![url; 220]);
    let large = allocations() - before;
    let per_request = large.saturating_sub(small) as f64 / 200.0;
    println!(
        "HTTP/3: {per_request:.1} server allocations per request ({small} for 20, {large} for 220)"
    );
    assert!(
        per_request < 200.0,
        "{per_request:.1} allocations per HTTP/3 request"
    );
    node.stop();
}
