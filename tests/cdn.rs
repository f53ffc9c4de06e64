//! The CDN service end to end: a zone deployed with `tessera deploy cdn` in
//! front of a real origin (`tests/common/origin.py`, which counts what it
//! serves), asked with curl and aioquic. RFC 9111 caching and `Cache-Status`,
//! `CDN-Cache-Control`, `Vary`, revalidation with 304, ranges on cached and
//! uncached objects, and a stampede of concurrent misses making one origin
//! request.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// `tessera deploy cdn --name shop ARGS` on every node, as the client in
/// `owner` (no ledger here: the owner records the zone on each node; with a
/// ledger, once); each then computes the same placement.
fn deploy_everywhere(nodes: &[Node], owner: &Path, args: &[&str]) {
    for node in nodes {
        deploy_cdn(node, owner, "shop", args);
    }
}

/// A node with the zone `shop` in front of `origin`, ready to serve.
fn zone(origin: &Origin) -> (Node, tempfile::TempDir) {
    let node = Node::start(&[]);
    let client = tempfile::tempdir().expect("tmp");
    deploy_cdn(&node, client.path(), "shop", &["--origin", &origin.url()]);
    // The service takes new zones within a fraction of a second.
    within(Duration::from_secs(20), "the zone served", || {
        node.get("/cdn/shop/status/204").0 != 404
    });
    (node, client)
}

/// The zone `shop` deployed on `node` from the spec `text` (TOML).
fn deploy_spec(node: &Node, client: &Path, text: &str) {
    let spec = client.join("zone.toml");
    std::fs::write(&spec, text).expect("spec");
    deploy_cdn(
        node,
        client,
        "shop",
        &["--spec", spec.to_str().expect("utf-8")],
    );
}

fn get(node: &Node, path: &str, extra: &[&str]) -> (u16, String, Vec<u8>) {
    curl_get(&format!("{}{path}", node.url()), extra)
}

fn cache_status(head: &str) -> String {
    header(head, "cache-status").unwrap_or("").to_string()
}

#[test]
fn a_zone_caches_by_rfc_9111_and_says_so() {
    let origin = Origin::start();
    let (node, _client) = zone(&origin);

    // A miss, stored; then hits, by path and by host, over both protocols.
    let (status, head, body) = get(&node, "/cdn/shop/static/a", &[]);
    assert_eq!(status, 200, "{head}");
    assert_eq!(body.len(), 1000);
    assert!(
        cache_status(&head).contains("fwd=uri-miss; stored"),
        "{head}"
    );
    assert_eq!(header(&head, "x-origin"), Some("yes"));
    let (status, head, again) = get(&node, "/cdn/shop/static/a", &[]);
    assert_eq!((status, &again), (200, &body));
    assert_eq!(cache_status(&head), "Tessera; hit", "{head}");
    assert!(header(&head, "age").is_some(), "{head}");
    assert_eq!(header(&head, "cache-control"), Some("max-age=300"));
    let (status, head, by_host) = get(&node, "/static/a", &["-H", "Host: shop.cdn.localhost"]);
    assert_eq!(
        (status, cache_status(&head).as_str()),
        (200, "Tessera; hit")
    );
    assert_eq!(by_host, body);
    let r = aioquic_request(
        &format!("https://{}/cdn/shop/static/a", node.addr),
        "GET",
        &[],
    );
    assert_eq!(
        (r.status, r.header("cache-status")),
        (200, Some("Tessera; hit"))
    );
    assert_eq!(r.body, body);
    assert_eq!(origin.count("/static/a"), 1);

    // A range of a cached object, and of an uncached one: fetched once,
    // whole, and the range served from the store.
    let (status, _, part) = get(&node, "/cdn/shop/static/a", &["-r", "0-9"]);
    assert_eq!((status, part.as_slice()), (206, &body[..10]));
    let (status, head, part) = get(&node, "/cdn/shop/static/b?size=100000", &["-r", "10-19"]);
    assert_eq!(status, 206, "{head}");
    assert_eq!(part, b"bbbbbbbbbb");
    let (status, head, whole) = get(&node, "/cdn/shop/static/b?size=100000", &[]);
    assert_eq!((status, whole.len()), (200, 100_000));
    assert_eq!(cache_status(&head), "Tessera; hit");
    assert_eq!(origin.count("/static/b"), 1);

    // What a shared cache must not keep.
    for path in ["/nostore", "/private"] {
        for _ in 0..2 {
            let (status, head, _) = get(&node, &format!("/cdn/shop{path}"), &[]);
            assert_eq!(status, 200);
            assert!(!cache_status(&head).contains("stored"), "{path}: {head}");
        }
        assert_eq!(origin.count(path), 2, "{path}");
    }
    // CDN-Cache-Control (RFC 9213) over Cache-Control: kept by the CDN, and
    // the client still gets the origin's Cache-Control.
    for _ in 0..2 {
        let (status, head, _) = get(&node, "/cdn/shop/cdncc", &[]);
        assert_eq!(status, 200);
        assert_eq!(header(&head, "cache-control"), Some("no-store"));
        assert!(header(&head, "cdn-cache-control").is_none(), "{head}");
    }
    assert_eq!(origin.count("/cdncc"), 1);

    // Vary: one stored variant per language.
    for lang in ["en", "fr", "en", "fr"] {
        let (status, _, body) = get(
            &node,
            "/cdn/shop/vary",
            &["-H", &format!("Accept-Language: {lang}")],
        );
        assert_eq!((status, body), (200, format!("lang={lang}").into_bytes()));
    }
    assert_eq!(origin.count("/vary"), 2);

    // Revalidation: stale after a second, the origin's 304 keeps the body.
    let (_, head, first) = get(&node, "/cdn/shop/short", &[]);
    assert!(cache_status(&head).contains("stored"), "{head}");
    std::thread::sleep(Duration::from_millis(2100));
    let (status, head, again) = get(&node, "/cdn/shop/short", &[]);
    assert_eq!((status, &again), (200, &first));
    assert_eq!(
        cache_status(&head),
        "Tessera; fwd=stale; fwd-status=304",
        "{head}"
    );
    assert_eq!(origin.count("/short"), 2);

    // No caching headers and no validators: the zone's grace (60 s).
    get(&node, "/cdn/shop/plain", &[]);
    let (_, head, _) = get(&node, "/cdn/shop/plain", &[]);
    assert_eq!(cache_status(&head), "Tessera; hit");
    assert_eq!(origin.count("/plain"), 1);

    // Other methods pass through; errors from the origin are not stored.
    let (status, _, body) = get(&node, "/cdn/shop/form", &["--data-binary", "x=1"]);
    assert_eq!((status, body.as_slice()), (200, &b"posted x=1"[..]));
    for _ in 0..2 {
        assert_eq!(get(&node, "/cdn/shop/status/404", &[]).0, 404);
    }
    assert_eq!(origin.count("/status/404"), 2);

    // An unknown zone.
    assert_eq!(get(&node, "/cdn/nosuch/x", &[]).0, 404);
    assert!(node.metric("tessera_cdn_hits_total{service=\"cdn\"}") >= 6);
    assert_eq!(node.metric("tessera_cdn_zones{service=\"cdn\"}"), 1);
    // Metered per zone, what its owner is charged for.
    let requests = node.metric("tessera_cdn_zone_requests_total{service=\"cdn\",zone=\"shop\"}");
    let bytes = node.metric("tessera_cdn_zone_bytes_total{service=\"cdn\",zone=\"shop\"}");
    assert!(requests >= 25, "{requests} requests metered");
    assert!(bytes >= 200_000, "{bytes} bytes metered");
}

#[test]
fn a_thousand_concurrent_misses_make_one_origin_request() {
    let origin = Origin::start();
    let (node, _client) = zone(&origin);
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("urls");
    let url = format!("{}/cdn/shop/slow?ms=1000", node.url());
    let lines: String = (0..1000)
        .map(|_| format!("url = \"{url}\"\noutput = \"/dev/null\"\n"))
        .collect();
    std::fs::write(&config, lines).expect("curl config");
    let out = Command::new("curl")
        .args([
            "-sS",
            "--parallel",
            "--parallel-immediate",
            "--parallel-max",
            "1000",
        ])
        .args(["--max-time", "120", "-w", "%{http_code}\\n", "-K"])
        .arg(&config)
        .output()
        .expect("curl");
    let codes = String::from_utf8_lossy(&out.stdout);
    let ok = codes.lines().filter(|c| *c == "200").count();
    assert_eq!(ok, 1000, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(origin.count("/slow"), 1, "a stampede reached the origin");
    assert!(node.metric("tessera_cdn_collapsed_total{service=\"cdn\"}") >= 1);
}

#[test]
fn stale_while_revalidate_and_stale_if_error() {
    let mut origin = Origin::start();
    let (node, _client) = zone(&origin);
    // stale-while-revalidate: the stale answer at once, one background fetch.
    let (_, head, body) = get(&node, "/cdn/shop/swr", &[]);
    assert_eq!(body, b"v1");
    assert!(cache_status(&head).contains("stored"), "{head}");
    std::thread::sleep(Duration::from_millis(3100));
    let (status, head, body) = get(&node, "/cdn/shop/swr", &[]);
    assert_eq!((status, body.as_slice()), (200, &b"v1"[..]));
    assert!(cache_status(&head).contains("fwd=stale"), "{head}");
    within(
        Duration::from_secs(20),
        "one background revalidation",
        || origin.count("/swr") == 2,
    );
    within(Duration::from_secs(20), "the revalidated answer", || {
        let (_, head, body) = get(&node, "/cdn/shop/swr", &[]);
        body == b"v2" && cache_status(&head) == "Tessera; hit"
    });
    assert_eq!(origin.count("/swr"), 2);

    // stale-if-error: the origin gone, the stale answer still served.
    let (_, _, kept) = get(&node, "/cdn/shop/sie", &[]);
    assert_eq!(kept, b"kept for errors");
    let _ = origin.child.kill();
    let _ = origin.child.wait();
    std::thread::sleep(Duration::from_millis(2100));
    let (status, head, body) = get(&node, "/cdn/shop/sie", &[]);
    assert_eq!((status, body), (200, kept));
    assert!(cache_status(&head).contains("origin unreachable"), "{head}");
    // Nothing stale to fall back on: 502, saying why.
    let (status, head, _) = get(&node, "/cdn/shop/never-fetched", &[]);
    assert_eq!(status, 502, "{head}");
    assert!(cache_status(&head).contains("origin unreachable"), "{head}");
    // Failing again and again: the origin is rested (backoff), and requests
    // meanwhile fail at once without asking it.
    let asked = || node.metric("tessera_cdn_origin_requests_total{service=\"cdn\"}");
    while node.metric("tessera_cdn_origin_backoffs_total{service=\"cdn\"}") == 0 {
        assert_eq!(get(&node, "/cdn/shop/never-fetched", &[]).0, 502);
    }
    let before = asked();
    let (status, _, body) = get(&node, "/cdn/shop/never-fetched", &[]);
    assert_eq!(status, 502);
    assert!(
        String::from_utf8_lossy(&body).contains("not asked again"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(asked(), before, "a resting origin was asked");
}

#[test]
fn purges_by_url_prefix_and_tag_reach_every_replica_and_need_the_owner() {
    let origin = Origin::start();
    let nodes = start_in_regions(&["r", "r", "r"], |_| Vec::new());
    // All three run it.
    let owner = tempfile::tempdir().expect("tmp");
    let origin_url = origin.url();
    deploy_everywhere(
        &nodes,
        owner.path(),
        &["--replicas", "3", "--origin", &origin_url],
    );
    let paths = ["/static/a", "/img/x", "/tagged/t?tag=red", "/static/keep"];
    let warm = |nodes: &[Node]| {
        // Every node knows the zone first (a node that does not yet answers
        // another's shielded miss with 404, and the origin is asked).
        for node in nodes {
            within(Duration::from_secs(20), "the zone served", || {
                get(node, "/cdn/shop/status/204", &[]).0 == 204
            });
        }
        for node in nodes {
            for p in paths {
                assert_eq!(get(node, &format!("/cdn/shop{p}"), &[]).0, 200);
            }
        }
    };
    warm(&nodes);
    let counts = || paths.map(|p| origin.count(p.split('?').next().expect("path")));
    // Origin shielding: a node's miss asks a node of the zone that may have
    // it; three nodes warmed one after the other reach the origin at most
    // twice per object (the second may ask the third, still cold).
    let warmed = counts();
    assert!(warmed.iter().all(|&n| (1..=2).contains(&n)), "{warmed:?}");
    let shielded: u64 = nodes
        .iter()
        .map(|n| n.metric("tessera_cdn_shielded_total{service=\"cdn\"}"))
        .sum();
    assert!(shielded >= 4, "{shielded} misses answered by another node");
    let purge = |client: &Path, args: &[&str]| {
        Command::new(BIN)
            .arg("purge")
            .arg("shop")
            .args(args)
            .args(["--node", &nodes[0].url()])
            .env("TESSERA_CLIENT_DIR", client)
            .output()
            .expect("purge")
    };
    // Somebody else's key: refused, nothing purged.
    let stranger = tempfile::tempdir().expect("tmp");
    let out = purge(stranger.path(), &["--all"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not signed by the zone's owner"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for node in &nodes {
        let (_, head, _) = get(node, "/cdn/shop/static/a", &[]);
        assert_eq!(cache_status(&head), "Tessera; hit");
    }
    // By URL, by prefix, by tag: each reaches all three nodes, and each
    // drops the object (the next request refetches it; with shielding, a
    // node may then be refilled by another node's refetch).
    let purged = |n: &Node| n.metric("tessera_cdn_purged_total{service=\"cdn\"}");
    for (args, gone) in [
        (&["--url", "/static/a"][..], 0),
        (&["--prefix", "/img/"][..], 1),
        (&["--tag", "red"][..], 2),
    ] {
        let before: Vec<u64> = nodes.iter().map(purged).collect();
        let started = std::time::Instant::now();
        let out = purge(owner.path(), args);
        let took = started.elapsed();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains("passed on to 2 other node(s)"), "{said}");
        eprintln!("purge {args:?} taken by all three nodes in {took:?}");
        for (node, before) in nodes.iter().zip(&before) {
            assert_eq!(purged(node), before + 1, "{args:?} at {}", node.addr);
        }
        let path = format!("/cdn/shop{}", paths[gone]);
        let (_, head, _) = get(&nodes[0], &path, &[]);
        assert!(cache_status(&head).contains("stored"), "{args:?}: {head}");
        for node in &nodes {
            let (status, _, _) = get(node, &path, &[]);
            assert_eq!(status, 200);
            let (_, head, _) = get(node, "/cdn/shop/static/keep", &[]);
            assert_eq!(
                cache_status(&head),
                "Tessera; hit",
                "{args:?} purged too much"
            );
        }
    }
    let now = counts();
    for i in 0..3 {
        assert!(now[i] > warmed[i], "{now:?} after {warmed:?}");
    }
    assert_eq!(now[3], warmed[3], "/static/keep was not purged");
    // Soft, everything: each node revalidates with the origin on the next
    // request (a stale object is revalidated, not asked of a replica).
    let out = purge(owner.path(), &["--all", "--soft"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for node in &nodes {
        let (status, head, _) = get(node, "/cdn/shop/static/keep", &[]);
        assert_eq!(status, 200);
        assert!(cache_status(&head).contains("fwd=stale"), "{head}");
    }
    assert_eq!(origin.count("/static/keep"), warmed[3] + 3);
}

#[test]
fn a_zone_on_two_of_five_nodes_answers_at_every_node_and_survives_a_kill() {
    let origin = Origin::start();
    let regions = ["eu-west", "eu-west", "us-east", "us-east", "ap-south"];
    // The one never placed (not an asked region) redirects instead.
    let mut nodes = start_in_regions(&regions, |i| match regions[i] {
        "ap-south" => vec!["--on-miss".into(), "redirect".into()],
        _ => Vec::new(),
    });
    let owner = tempfile::tempdir().expect("tmp");
    let origin_url = origin.url();
    let args = [
        "--replicas",
        "2",
        "--region",
        "eu-west",
        "--region",
        "us-east",
    ];
    deploy_everywhere(
        &nodes,
        owner.path(),
        &[&args[..], &["--origin", &origin_url]].concat(),
    );
    let placed = |node: &Node| -> Vec<String> {
        let (_, _, body) = node.get("/deployments/shop");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        v["placement"]
            .as_array()
            .expect("placement")
            .iter()
            .map(|n| n["addr"].as_str().expect("addr").to_string())
            .collect()
    };
    let before = placed(&nodes[0]);
    assert_eq!(before.len(), 2);
    for node in &nodes {
        assert_eq!(
            placed(node),
            before,
            "{} places the zone elsewhere",
            node.addr
        );
        let want = if node.addr == nodes[4].addr { 307 } else { 200 };
        within(Duration::from_secs(20), "the zone answered", || {
            get(node, "/cdn/shop/static/a", &[]).0 == want
        });
    }
    // Nodes that do not run it passed the request on.
    let proxied: u64 = nodes
        .iter()
        .map(|n| n.metric("tessera_cdn_proxied_total{service=\"cdn\"}"))
        .sum();
    assert!(proxied >= 2, "{proxied} requests proxied");
    // on_miss = "redirect": 307 to the nearest node that runs it.
    let (status, head, _) = get(&nodes[4], "/cdn/shop/static/a", &[]);
    assert_eq!(status, 307, "{head}");
    let location = header(&head, "location").expect("a Location").to_string();
    assert!(
        before
            .iter()
            .any(|a| location.starts_with(&format!("http://{a}/cdn/shop/static/a"))),
        "{location} is not a placed node"
    );
    // Kill a placed node: the zone is placed elsewhere in its region and every
    // remaining node answers.
    let victim = nodes
        .iter()
        .position(|n| n.addr.to_string() == before[0])
        .expect("a placed node");
    nodes[victim].kill9();
    let started = std::time::Instant::now();
    let alive: Vec<&Node> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, n)| n)
        .collect();
    within(
        Duration::from_secs(30),
        "placement without the dead node",
        || {
            alive.iter().all(|n| {
                let p = placed(n);
                p.len() == 2 && !p.contains(&before[0])
            })
        },
    );
    let redirector = nodes[4].addr;
    for node in alive.iter().filter(|n| n.addr != redirector) {
        let (status, head, body) = get(node, "/cdn/shop/static/a", &[]);
        assert_eq!((status, body.len()), (200, 1000), "{}: {head}", node.addr);
    }
    // The redirecting node points at a live one (once its zone view, re-read
    // every 200 ms, has the new placement).
    within(Duration::from_secs(10), "a redirect to a live node", || {
        let (status, head, _) = get(&nodes[4], "/cdn/shop/static/a", &[]);
        status == 307 && header(&head, "location").is_some_and(|l| !l.contains(&before[0]))
    });
    eprintln!(
        "zone re-placed and answered at every node {:?} after the kill",
        started.elapsed()
    );
}

#[test]
fn a_zones_budget_keeps_what_is_asked_for_through_a_scan() {
    let origin = Origin::start();
    let node = Node::start(&[]);
    let client = tempfile::tempdir().expect("tmp");
    deploy_spec(
        &node,
        client.path(),
        &format!("origin = \"{}\"\nbudget_bytes = 5000\n", origin.url()),
    );
    within(Duration::from_secs(20), "the zone served", || {
        node.get("/cdn/shop/status/204").0 == 204
    });
    // Two popular objects (1,000 bytes each), asked for a few times...
    for _ in 0..3 {
        for p in ["/static/p1", "/static/p2"] {
            assert_eq!(get(&node, &format!("/cdn/shop{p}"), &[]).0, 200);
        }
    }
    // ...then a scan of twelve objects asked for once: three times the budget.
    for i in 0..12 {
        assert_eq!(get(&node, &format!("/cdn/shop/static/s{i}"), &[]).0, 200);
    }
    for p in ["/static/p1", "/static/p2"] {
        let (_, head, _) = get(&node, &format!("/cdn/shop{p}"), &[]);
        assert_eq!(cache_status(&head), "Tessera; hit", "{p} was pushed out");
    }
    let (_, head, _) = get(&node, "/cdn/shop/static/s0", &[]);
    assert!(
        cache_status(&head).contains("stored"),
        "s0 outlived the scan: {head}"
    );
    assert!(node.metric("tessera_cdn_evicted_total{service=\"cdn\"}") >= 7);
    assert_eq!(origin.count("/static/p1"), 1);
}

#[test]
fn an_https_origin_signed_by_a_private_ca() {
    // A private CA, and the origin's certificate signed by it.
    let dir = tempfile::tempdir().expect("tmp");
    let p = |name: &str| dir.path().join(name);
    let ext = p("leaf.ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    for args in [
        vec![
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=test CA",
        ],
        vec![
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
        ],
        vec!["x509", "-req", "-days", "1", "-CAcreateserial"],
    ] {
        let mut cmd = Command::new("openssl");
        cmd.args(&args).current_dir(dir.path());
        match args[1] {
            "-x509" => cmd.args(["-keyout", "ca.key", "-out", "ca.pem"]),
            "-newkey" => cmd.args(["-keyout", "key.pem", "-out", "leaf.csr"]),
            _ => cmd
                .args(["-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key"])
                .args(["-out", "cert.pem", "-extfile", "leaf.ext"]),
        };
        let out = cmd.output().expect("openssl");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (cert, key) = (p("cert.pem"), p("key.pem"));
    let origin = Origin::start_tls(&cert, &key);
    let node = Node::start(&[]);
    let client = tempfile::tempdir().expect("tmp");
    let pem = std::fs::read_to_string(p("ca.pem")).expect("ca");
    let deploy = |name: &str, spec: &str| {
        let file = client.path().join(format!("{name}.toml"));
        std::fs::write(&file, spec).expect("spec");
        let file = file.to_str().expect("utf-8").to_string();
        deploy_cdn(&node, client.path(), name, &["--spec", &file]);
    };
    // The zone names the CA that signed its origin's certificate.
    deploy(
        "private",
        &format!("origin = \"{}\"\norigin_ca = '''\n{pem}'''\n", origin.url()),
    );
    // The same origin without it: the system's roots do not know the CA.
    deploy("untrusting", &format!("origin = \"{}\"\n", origin.url()));
    within(Duration::from_secs(20), "the zones served", || {
        node.get("/cdn/private/static/a").0 == 200
    });
    // Both zones known (the watcher may take them in separate rounds).
    within(Duration::from_secs(20), "the second zone known", || {
        node.get("/cdn/untrusting/").0 != 404
    });
    let (status, head, body) = get(&node, "/cdn/private/static/a", &[]);
    assert_eq!((status, body.len()), (200, 1000), "{head}");
    assert_eq!(cache_status(&head), "Tessera; hit");
    let (status, head, body) = get(&node, "/cdn/untrusting/static/b", &[]);
    assert_eq!(status, 502, "{head}");
    assert!(
        String::from_utf8_lossy(&body).contains("certificate")
            || String::from_utf8_lossy(&body).contains("Certificate")
            || String::from_utf8_lossy(&body).contains("tls"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(
        origin.count("/static/b"),
        0,
        "an unverified origin was served"
    );
}

/// Debian's nginx as an origin, serving `files` with `Cache-Control:
/// max-age=3` (its own `ETag` and `Last-Modified` on every file).
struct Nginx {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master then stops its workers too.
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn nginx(files: &[(&str, &[u8])]) -> Nginx {
    let dir = tempfile::tempdir().expect("tmp");
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).expect("www");
    for (name, body) in files {
        std::fs::write(www.join(name), body).expect("file");
    }
    let port = free_addr().port();
    let d = dir.path().display();
    let conf = dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{ access_log off; client_body_temp_path {d}/b; proxy_temp_path {d}/p;\n\
             fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n\
             server {{ listen 127.0.0.1:{port}; root {}; add_header Cache-Control \"max-age=3\"; }} }}\n",
            www.display()
        ),
    )
    .expect("nginx.conf");
    // nginx's workers drop to an unprivileged user: the files must be readable.
    let _ = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(dir.path())
        .status();
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nginx (apt-get install -y nginx-light)");
    let n = Nginx {
        child,
        _dir: dir,
        port,
    };
    within(Duration::from_secs(20), "nginx serving", || {
        curl(&[
            "-sf",
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{port}/{}", files[0].0),
        ])
        .status
        .success()
    });
    n
}

#[test]
fn in_front_of_nginx_revalidation_uses_its_validators() {
    let body = random_bytes(200_000, 11);
    let origin = nginx(&[("page.html", b"<h1>hello</h1>"), ("big.bin", &body)]);
    let node = Node::start(&[]);
    let client = tempfile::tempdir().expect("tmp");
    let url = format!("http://127.0.0.1:{}", origin.port);
    deploy_cdn(&node, client.path(), "site", &["--origin", &url]);
    within(Duration::from_secs(20), "the zone served", || {
        node.get("/cdn/site/page.html").0 == 200
    });
    // Stored, then a hit, byte for byte.
    let (_, head, got) = get(&node, "/cdn/site/big.bin", &[]);
    assert!(cache_status(&head).contains("stored"), "{head}");
    assert_eq!(got, body);
    let (_, head, got) = get(
        &node,
        "/cdn/site/big.bin",
        &["-H", "Host: site.cdn.localhost"],
    );
    assert_eq!(cache_status(&head), "Tessera; hit");
    assert_eq!(got, body);
    // Stale after three seconds: revalidated with nginx's own ETag and
    // Last-Modified, and its 304 keeps the stored body.
    std::thread::sleep(Duration::from_millis(4100));
    let (status, head, got) = get(&node, "/cdn/site/big.bin", &[]);
    assert_eq!(status, 200);
    assert_eq!(
        cache_status(&head),
        "Tessera; fwd=stale; fwd-status=304",
        "{head}"
    );
    assert_eq!(got, body);
    assert!(node.metric("tessera_cdn_revalidated_total{service=\"cdn\"}") >= 1);
}

#[test]
fn a_zones_extra_host_names_are_served_like_its_own() {
    let origin = Origin::start();
    let node = Node::start(&[]);
    let client = tempfile::tempdir().expect("tmp");
    deploy_spec(
        &node,
        client.path(),
        &format!(
            "origin = \"{}\"\nhosts = [\"shop.example\", \"www.shop.example\"]\n",
            origin.url()
        ),
    );
    within(Duration::from_secs(20), "the alias served", || {
        get(&node, "/status/204", &["-H", "Host: shop.example"]).0 == 204
    });
    // A miss by one name, a hit by the others (one cache per zone), any case.
    let (s, head, body) = get(&node, "/static/x", &["-H", "Host: www.shop.example"]);
    assert_eq!((s, body.len()), (200, 1000), "{head}");
    assert!(cache_status(&head).contains("stored"), "{head}");
    for host in ["Host: SHOP.example:8080", "Host: shop.cdn.localhost"] {
        let (s, head, again) = get(&node, "/static/x", &["-H", host]);
        assert_eq!(
            (s, cache_status(&head).as_str()),
            (200, "Tessera; hit"),
            "{host}"
        );
        assert_eq!(again, body);
    }
    assert_eq!(origin.count("/static/x"), 1);
    // Another host is not the zone's; the node's own routes stay its own.
    assert_eq!(
        get(&node, "/static/x", &["-H", "Host: other.example"]).0,
        404
    );
    assert_eq!(node.get("/healthz").0, 200);
}
