//! Every route answers the same over HTTP/1.1 and HTTP/3: both transports hand
//! the request to one router. Here the routes that used to exist on HTTP/1.1
//! only (admin calls with their bearer token), checked with aioquic's client
//! beside curl.

mod common;

use common::*;

const ADMIN: &str = "test-admin-token-0123456789";

#[test]
fn admin_routes_over_http3_check_the_token_as_http1_does() {
    let node = Node::start(&["--admin-token", ADMIN]);
    let hash = node.put_bytes(b"admin over HTTP/3");
    let url = format!("https://{}/blobs/{hash}", node.addr);
    let bearer = format!("Bearer {ADMIN}");

    // No token, a wrong one: 401 with the scheme to use; nothing changes.
    for auth in [None, Some("Bearer wrong-token-0123456789")] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
        let r = aioquic_request(&url, "DELETE", &headers);
        assert_eq!(r.status, 401, "{auth:?}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        // The same answer over HTTP/1.1.
        let mut args = vec![
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "DELETE",
        ];
        let h1_auth = auth.map(|a| format!("Authorization: {a}"));
        if let Some(h) = &h1_auth {
            args.extend(["-H", h.as_str()]);
        }
        let h1_url = format!("{}/blobs/{hash}", node.url());
        args.push(&h1_url);
        assert_eq!(curl(&args).stdout, b"401");
    }
    assert_eq!(node.get(&format!("/blobs/{hash}")).0, 200);

    // With the token: pin, unpin, delete; 204 without a Content-Length.
    for (path, method) in [("/pin", "PUT"), ("/pin", "DELETE"), ("", "DELETE")] {
        let r = aioquic_request(
            &format!("{url}{path}"),
            method,
            &[("authorization", &bearer)],
        );
        assert_eq!(r.status, 204, "{method} {path}");
        assert_eq!(r.header("content-length"), None);
        assert!(r.body.is_empty());
    }
    assert_eq!(node.get(&format!("/blobs/{hash}")).0, 404);
    let r = aioquic_request(&url, "DELETE", &[("authorization", &bearer)]);
    assert_eq!(r.status, 404);
    assert_eq!(r.body, b"blob not found\n");
}

#[test]
fn admin_routes_are_closed_without_a_configured_token_on_both() {
    let node = Node::start(&[]);
    let hash = node.put_bytes(b"no admin here");
    let r = aioquic_request(
        &format!("https://{}/blobs/{hash}/pin", node.addr),
        "PUT",
        &[("authorization", "Bearer anything-at-all-123")],
    );
    assert_eq!(r.status, 403);
    let (status, _, _) = node.request(
        format!("PUT /blobs/{hash}/pin HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer anything-at-all-123\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(status, 403);
}

#[test]
fn method_not_allowed_names_the_allowed_methods_on_both() {
    let node = Node::start(&[]);
    let r = aioquic_request(&format!("https://{}/healthz", node.addr), "POST", &[]);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    let (status, head, _) =
        node.request(b"POST /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 405);
    assert_eq!(header(&head, "allow"), Some("GET, HEAD"));
    // A route that needs a body, sent without one.
    let r = aioquic_request(&format!("https://{}/receipts", node.addr), "POST", &[]);
    assert_eq!(r.status, 400);
}
