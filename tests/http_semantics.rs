//! HTTP semantics a cache or CDN in front of a node relies on (RFC 9110 §13
//! conditional requests, RFC 9112 request targets and chunked framing), against a
//! real node: over HTTP/1.1 with curl and raw sockets, over HTTP/3 with aioquic.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;

struct Fixture {
    node: Node,
    hash: String,
    data: Vec<u8>,
}

fn fixture() -> Fixture {
    let node = Node::start(&[]);
    let data = random_bytes(100_000, 7);
    let hash = node.put_bytes(&data);
    Fixture { node, hash, data }
}

#[test]
fn if_none_match_revalidates_with_304_over_http1() {
    let f = fixture();
    let url = format!("{}/blobs/{}", f.node.url(), f.hash);
    let tag = format!("\"{}\"", f.hash);
    for inm in [
        tag.clone(),
        format!("W/{tag}"),
        format!("\"other\", {tag}"),
        "*".to_string(),
    ] {
        let (status, head, body) = curl_get(&url, &["-H", &format!("If-None-Match: {inm}")]);
        assert_eq!(status, 304, "If-None-Match: {inm}\n{head}");
        assert!(body.is_empty(), "a 304 has no body");
        assert_eq!(header(&head, "etag"), Some(tag.as_str()));
        assert_eq!(
            header(&head, "cache-control"),
            Some("public, max-age=31536000, immutable")
        );
        assert_eq!(header(&head, "content-length"), None, "{head}");
    }
    // A tag that does not match: the whole blob.
    let (status, head, body) = curl_get(&url, &["-H", "If-None-Match: \"other\""]);
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, f.data);
    // HEAD revalidates the same way.
    let (status, head, _) = curl_get(&url, &["-I", "-H", &format!("If-None-Match: {tag}")]);
    assert_eq!(status, 304, "{head}");
    // The verified stream is another representation with its own tag.
    let bao_tag = format!("\"{}.bao\"", f.hash);
    let bao_url = format!("{url}?format=bao");
    let (status, head, _) = curl_get(&bao_url, &["-H", &format!("If-None-Match: {bao_tag}")]);
    assert_eq!(status, 304, "{head}");
    assert_eq!(header(&head, "etag"), Some(bao_tag.as_str()));
    let (status, head, body) = curl_get(&bao_url, &["-H", &format!("If-None-Match: {tag}")]);
    assert_eq!(status, 200, "{head}");
    assert_eq!(header(&head, "vary"), Some("Accept"));
    assert_eq!(
        body.len() as u64,
        u64::from_le_bytes(body[..8].try_into().expect("size")) + 8 + 64 * 6
    );
    // Blobs have no date: If-Modified-Since is ignored.
    let (status, _, body) = curl_get(
        &url,
        &["-H", "If-Modified-Since: Sun, 06 Nov 2050 08:49:37 GMT"],
    );
    assert_eq!(status, 200);
    assert_eq!(body, f.data);
    let hits = f
        .node
        .metric("tessera_http_requests_total{route=\"blob\",status=\"304\"}");
    assert!(hits >= 6, "{hits} 304s counted");
}

#[test]
fn a_304_keeps_the_connection_usable() {
    let f = fixture();
    let mut s = TcpStream::connect(f.node.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let path = format!("/blobs/{}", f.hash);
    let pipelined = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nIf-None-Match: \"{}\"\r\n\r\nGET {path} HTTP/1.1\r\nHost: t\r\nRange: bytes=0-9\r\n\r\n",
        f.hash
    );
    s.write_all(pipelined.as_bytes()).expect("write");
    let (status, head, body) = read_response(&mut s).expect("first");
    assert_eq!(status, 304, "{head}");
    assert!(body.is_empty());
    let (status, head, body) = read_response(&mut s).expect("second");
    assert_eq!(status, 206, "{head}");
    assert_eq!(body, &f.data[..10]);
}

#[test]
fn if_range_and_if_match_over_http1() {
    let f = fixture();
    let url = format!("{}/blobs/{}", f.node.url(), f.hash);
    let tag = format!("\"{}\"", f.hash);
    // If-Range that does not match: the whole representation, 200 (RFC 9110 §13.1.5).
    for if_range in [
        "\"other\"".to_string(),
        format!("W/{tag}"),
        "Sun, 06 Nov 1994 08:49:37 GMT".to_string(),
    ] {
        let (status, head, body) =
            curl_get(&url, &["-r", "0-9", "-H", &format!("If-Range: {if_range}")]);
        assert_eq!(status, 200, "If-Range: {if_range}\n{head}");
        assert_eq!(body, f.data);
    }
    let (status, head, body) = curl_get(&url, &["-r", "0-9", "-H", &format!("If-Range: {tag}")]);
    assert_eq!(status, 206, "{head}");
    assert_eq!(header(&head, "content-range"), Some("bytes 0-9/100000"));
    assert_eq!(body, &f.data[..10]);
    // If-Match: strong comparison; 412 when nothing matches.
    let (status, head, body) = curl_get(&url, &["-H", "If-Match: \"other\""]);
    assert_eq!(status, 412, "{head}");
    assert!(String::from_utf8_lossy(&body).contains("precondition failed"));
    let (status, _, _) = curl_get(&url, &["-H", &format!("If-Match: W/{tag}")]);
    assert_eq!(status, 412);
    for im in [tag.clone(), "*".to_string(), format!("\"a\", {tag}")] {
        let (status, _, body) = curl_get(&url, &["-H", &format!("If-Match: {im}")]);
        assert_eq!(status, 200, "If-Match: {im}");
        assert_eq!(body, f.data);
    }
    // A missing blob stays 404 whatever the preconditions say (RFC 9110 §13.2.1).
    let missing = format!("{}/blobs/{}", f.node.url(), "0".repeat(64));
    let (status, _, _) = curl_get(&missing, &["-H", "If-None-Match: *"]);
    assert_eq!(status, 404);
}

#[test]
fn absolute_form_request_targets() {
    let f = fixture();
    let target = format!("http://{}/blobs/{}", f.node.addr, f.hash);
    // curl sends the target as given: `GET http://host/blobs/{h} HTTP/1.1`.
    let (status, head, body) = curl_get(
        &format!("{}/", f.node.url()),
        &["--request-target", &target],
    );
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, f.data);
    // The way a client sends it to a proxy: the node as curl's HTTP proxy.
    let (status, _, body) = curl_get(
        &format!("http://cdn.example/blobs/{}", f.hash),
        &["--proxy", &f.node.url(), "-r", "5-9"],
    );
    assert_eq!(status, 206);
    assert_eq!(body, &f.data[5..10]);
    // Not http(s): refused, not routed.
    let (status, _, body) = f.node.request(
        format!(
            "GET ftp://x/blobs/{} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            f.hash
        )
        .as_bytes(),
    );
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn chunk_extensions_must_be_tokens() {
    let node = Node::start(&[]);
    let post = |chunks: &[u8]| {
        let mut req =
            b"POST /blobs HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                .to_vec();
        req.extend_from_slice(chunks);
        node.request(&req)
    };
    let abc = blake3::hash(b"abc").to_hex().to_string();
    for bad in [
        &b"3;\x00\r\nabc\r\n0\r\n\r\n"[..],
        b"3;\r\nabc\r\n0\r\n\r\n",
        b"3;a=\"open\r\nabc\r\n0\r\n\r\n",
        b"3\nabc\r\n0\r\n\r\n",
        b"3\r\nabc\r\n0\r\nbad trailer\r\n\r\n",
    ] {
        let (status, _, body) = post(bad);
        assert_eq!(
            status,
            400,
            "{:?}: {}",
            String::from_utf8_lossy(bad),
            String::from_utf8_lossy(&body)
        );
        // Nothing was stored.
        let (status, _, _) = node.get(&format!("/blobs/{abc}"));
        assert_eq!(status, 404, "refused upload stored anyway");
    }
    let (status, _, body) =
        post(b"3;name=value;flag;q=\"x y\"\r\nabc\r\n0\r\nX-Checksum: 1\r\n\r\n");
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let (status, _, body) = node.get(&format!("/blobs/{abc}"));
    assert_eq!((status, body.as_slice()), (200, &b"abc"[..]));
}

#[test]
fn conditional_requests_over_http3() {
    let f = fixture();
    let url = format!("https://{}/blobs/{}", f.node.addr, f.hash);
    let tag = format!("\"{}\"", f.hash);
    let r = aioquic_request(&url, "GET", &[("if-none-match", &tag)]);
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(tag.as_str()));
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(r.header("content-length"), None);
    let r = aioquic_request(
        &url,
        "HEAD",
        &[("if-none-match", &format!("\"x\", W/{tag}"))],
    );
    assert_eq!(r.status, 304);
    let r = aioquic_request(&url, "GET", &[("if-none-match", "\"other\"")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, f.data);
    // If-Range.
    let r = aioquic_request(
        &url,
        "GET",
        &[("range", "bytes=0-9"), ("if-range", "\"other\"")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, f.data);
    let r = aioquic_request(&url, "GET", &[("range", "bytes=0-9"), ("if-range", &tag)]);
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 0-9/100000"));
    assert_eq!(r.body, &f.data[..10]);
    // If-Match.
    let r = aioquic_request(&url, "GET", &[("if-match", "\"other\"")]);
    assert_eq!(r.status, 412);
    let r = aioquic_request(&url, "GET", &[("if-match", &tag)]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, f.data);
    // The verified stream's own tag.
    let r = aioquic_request(
        &format!("{url}?format=bao"),
        "GET",
        &[("if-none-match", &format!("\"{}.bao\"", f.hash))],
    );
    assert_eq!(r.status, 304);
    // Too many precondition bytes: a clear 400.
    let many = vec!["\"0123456789abcdef\""; 80].join(", ");
    let r = aioquic_request(&url, "GET", &[("if-none-match", &many)]);
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("longer than the server's limit"));
}

/// Every response states when it was made (RFC 9110 §6.6.1: an origin server
/// with a clock sends `Date` in its 2xx, 3xx and 4xx responses), over both
/// transports, from the node's clock, and the date moves with the clock.
#[test]
fn every_response_carries_a_date() {
    let f = fixture();
    let url = format!("{}/blobs/{}", f.node.url(), f.hash);
    let tag = format!("\"{}\"", f.hash);
    let missing = format!("{}/blobs/{}", f.node.url(), "0".repeat(64));
    let dated = |what: &str, date: Option<&str>| -> std::time::SystemTime {
        let date = date.unwrap_or_else(|| panic!("{what}: no Date"));
        let at = httpdate::parse_http_date(date).unwrap_or_else(|e| panic!("{what}: {date}: {e}"));
        let now = std::time::SystemTime::now();
        let apart = now
            .duration_since(at)
            .or_else(|_| at.duration_since(now))
            .expect("apart");
        // Generous: the node and this test share the clock.
        assert!(
            apart < Duration::from_secs(120),
            "{what}: {date} is {apart:?} off"
        );
        at
    };
    let (status, head, _) = curl_get(&url, &[]);
    assert_eq!(status, 200);
    let first = dated("200", header(&head, "date"));
    let (status, head, _) = curl_get(&url, &["-H", &format!("If-None-Match: {tag}")]);
    assert_eq!(status, 304);
    dated("304", header(&head, "date"));
    let (status, head, _) = curl_get(&missing, &[]);
    assert_eq!(status, 404);
    dated("404", header(&head, "date"));
    let (status, head, _) = curl_get(&format!("{}/healthz", f.node.url()), &[]);
    assert_eq!(status, 200);
    dated("healthz", header(&head, "date"));
    let h3 = format!("https://{}/blobs/{}", f.node.addr, f.hash);
    let r = aioquic_request(&h3, "GET", &[]);
    assert_eq!(r.status, 200);
    dated("200 over HTTP/3", r.header("date"));
    let r = aioquic_request(&h3, "GET", &[("if-none-match", &tag)]);
    assert_eq!(r.status, 304);
    dated("304 over HTTP/3", r.header("date"));
    // The date is the clock's, not one fixed when the node started.
    std::thread::sleep(Duration::from_millis(2500));
    let (_, head, _) = curl_get(&url, &[]);
    let later = dated("a later 200", header(&head, "date"));
    assert!(later > first, "{:?} then {:?}", first, later);
}
