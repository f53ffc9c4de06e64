//! Static-site hosting end to end: folders deployed with `tessera deploy
//! site`, asked with curl (the Netlify / Cloudflare Pages conventions, caching,
//! encodings, versions, previews, rollback and pruning) and rendered by a real
//! browser, headless Chromium, over HTTP/1.1 and over HTTP/3
//! (`tests/browser/cdp.py` drives it through the DevTools protocol).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

/// `tessera deploy site --name NAME DIR ARGS` as the client in `client`.
fn deploy(node: &Node, client: &Path, name: &str, dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["deploy", "site", "--name", name])
        .arg(dir)
        .args(args)
        .args(["--node", &node.url()])
        .env("TESSERA_CLIENT_DIR", client)
        .env("RUST_LOG", "warn")
        .output()
        .expect("tessera deploy site")
}

fn deployed(
    node: &Node,
    client: &Path,
    name: &str,
    dir: &Path,
    args: &[&str],
) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = deploy(node, client, name, dir, &all);
    assert!(
        out.status.success(),
        "deploy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the deploy's JSON")
}

fn cli(node: &Node, client: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .args(["--node", &node.url()])
        .env("TESSERA_CLIENT_DIR", client)
        .env("RUST_LOG", "warn")
        .output()
        .expect("tessera")
}

fn write(dir: &Path, path: &str, body: impl AsRef<[u8]>) {
    let p = dir.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, body).expect("write");
}

/// The test site at version `v`: an app shell whose script and style are
/// named by their content (as bundlers name them), each carrying `v`; a
/// client-side router; an image; pages, folders, a 404 page, rules.
fn site(dir: &Path, v: &str) {
    let css = format!(
        ":root {{ --version: \"{v}\"; }}\nbody {{ font-family: sans-serif; background: #fafafa; }}\nh1 {{ color: #235; }}\n{}",
        "/* layout */ .box { margin: 0 auto; padding: 1em; }\n".repeat(20)
    );
    let js = format!(
        "window.APP_VERSION = \"{v}\";\nfunction render() {{\n  const m = location.pathname.match(/^\\/users\\/(\\w+)/);\n  document.getElementById('view').textContent = m ? 'user ' + m[1] : 'home';\n}}\nrender();\ndocument.title = 'app ' + window.APP_VERSION;\n{}",
        "// router padding\n".repeat(30)
    );
    let tag = |s: &str| blake3::hash(s.as_bytes()).to_hex()[..8].to_string();
    let (css_name, js_name) = (
        format!("style.{}.css", tag(&css)),
        format!("app.{}.js", tag(&js)),
    );
    let html = format!(
        "<!doctype html><html><head><meta charset=utf-8><meta name=version content=\"{v}\"><link rel=stylesheet href=\"/assets/{css_name}\"><title>site</title></head>\n<body><h1>Tessera site {v}</h1><img id=logo src=\"/logo.svg\" width=64 height=64><p id=view></p><script src=\"/assets/{js_name}\"></script></body></html>\n"
    );
    write(dir, "index.html", &html);
    write(dir, &format!("assets/{css_name}"), &css);
    write(dir, &format!("assets/{js_name}"), &js);
    write(
        dir,
        "logo.svg",
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"64\" height=\"64\"><circle cx=\"32\" cy=\"32\" r=\"30\" fill=\"#2a6\"/></svg>\n",
    );
    write(dir, "about.html", format!("<h1>About {v}</h1>"));
    write(dir, "docs/index.html", format!("<h1>Docs {v}</h1>"));
    write(dir, "docs/404.html", "<h1>No such doc</h1>");
    write(dir, "404.html", "<h1>Page not found</h1>");
    write(dir, "data.bin", random_bytes(200_000, 7));
    write(
        dir,
        "_redirects",
        "# rules\n/old-about  /about  301\n/blog/*  /docs/:splat  302\n/go/:slug  /docs/?p=:slug  307\n/gone  /404.html  410\n/users/*  /index.html  200\n/about.html  /about 301!\n",
    );
    write(
        dir,
        "_headers",
        "/*\n  X-Frame-Options: DENY\n/assets/*\n  X-Asset: yes\n/about\n  Cache-Control: public, max-age=120\n  X-Rule-1: 1\n  X-Rule-2: 2\n  X-Rule-3: 3\n  X-Rule-4: 4\n  X-Rule-5: 5\n  X-Rule-6: 6\n  X-Rule-7: 7\n  X-Rule-8: 8\n  X-Rule-9: 9\n  X-Rule-10: 10\n  X-Rule-11: 11\n  X-Rule-12: 12\n",
    );
}

fn get(node: &Node, host: &str, path: &str, extra: &[&str]) -> (u16, String, Vec<u8>) {
    let h = format!("Host: {host}");
    let mut args = vec!["-H", h.as_str()];
    args.extend_from_slice(extra);
    curl_get(&format!("{}{path}", node.url()), &args)
}

fn live(node: &Node, name: &str) -> Option<String> {
    let (status, _, body) = node.get(&format!("/sites/_status/{name}"));
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    v["live"].as_str().map(str::to_string)
}

#[test]
fn a_folder_is_served_by_the_netlify_conventions() {
    let node = Node::start(&[]);
    let client = tempfile::tempdir().expect("tmp");
    let dir = tempfile::tempdir().expect("tmp");
    site(dir.path(), "one");
    let first = deployed(&node, client.path(), "docs", dir.path(), &[]);
    let v1 = first["version"].as_str().expect("version").to_string();
    assert_eq!(live(&node, "docs").as_deref(), Some(v1.as_str()));
    assert_eq!(first["skipped"], 0);
    assert!(first["uploaded"].as_u64().expect("n") >= 9, "{first}");
    let host = "docs.sites.localhost";

    // Pages: `/`, clean URLs, folders (and the slash they need), 404s.
    let (s, head, body) = get(&node, host, "/", &[]);
    assert_eq!(s, 200);
    assert!(String::from_utf8_lossy(&body).contains("Tessera site one"));
    assert!(header(&head, "content-type").is_some_and(|t| t.starts_with("text/html")));
    assert_eq!(
        header(&head, "cache-control"),
        Some("public, max-age=0, must-revalidate")
    );
    assert_eq!(header(&head, "x-frame-options"), Some("DENY"));
    let etag = header(&head, "etag").expect("etag").to_string();
    let (s, _, _) = get(&node, host, "/", &["-H", &format!("If-None-Match: {etag}")]);
    assert_eq!(s, 304);
    let (s, head, body) = get(&node, host, "/about", &[]);
    assert_eq!((s, body), (200, b"<h1>About one</h1>".to_vec()));
    assert_eq!(header(&head, "cache-control"), Some("public, max-age=120"));
    assert_eq!(get(&node, host, "/docs/", &[]).2, b"<h1>Docs one</h1>");
    let (s, head, _) = get(&node, host, "/docs", &[]);
    assert_eq!((s, header(&head, "location")), (301, Some("/docs/")));
    let (s, _, body) = get(&node, host, "/docs/nothing", &[]);
    assert_eq!((s, body), (404, b"<h1>No such doc</h1>".to_vec()));
    let (s, head, body) = get(&node, host, "/nothing", &[]);
    assert_eq!((s, body), (404, b"<h1>Page not found</h1>".to_vec()));
    assert!(header(&head, "content-type").is_some_and(|t| t.starts_with("text/html")));

    // _redirects: statuses, splats, placeholders, rewrites, force.
    for (path, status, location) in [
        ("/old-about", 301, "/about"),
        ("/blog/a/b", 302, "/docs/a/b"),
        ("/go/intro?x=1", 307, "/docs/?p=intro"),
        ("/about.html", 301, "/about"),
    ] {
        let (s, head, _) = get(&node, host, path, &[]);
        assert_eq!(
            (s, header(&head, "location")),
            (status, Some(location)),
            "{path}"
        );
    }
    let (s, _, body) = get(&node, host, "/gone", &[]);
    assert_eq!((s, body), (410, b"<h1>Page not found</h1>".to_vec()));
    let (s, _, body) = get(&node, host, "/users/42", &[]);
    assert_eq!(s, 200);
    assert!(String::from_utf8_lossy(&body).contains("Tessera site one"));

    // Assets: immutable by their hashed names, _headers globs, encodings.
    let (_, _, html) = get(&node, host, "/", &[]);
    let html = String::from_utf8(html).expect("utf8");
    let js = html
        .split("src=\"")
        .nth(2)
        .and_then(|s| s.split('"').next())
        .expect("script")
        .to_string();
    let (s, head, plain) = get(&node, host, &js, &[]);
    assert_eq!(s, 200);
    assert_eq!(
        header(&head, "cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(header(&head, "x-asset"), Some("yes"));
    assert!(header(&head, "content-type").is_some_and(|t| t.contains("javascript")));
    assert!(
        head.to_ascii_lowercase().contains("vary: accept-encoding"),
        "{head}"
    );
    for (enc, name) in [("br", "br"), ("gzip", "gzip")] {
        let (s, head, packed) = get(
            &node,
            host,
            &js,
            &["-H", &format!("Accept-Encoding: {enc}")],
        );
        assert_eq!((s, header(&head, "content-encoding")), (200, Some(name)));
        assert!(packed.len() < plain.len());
        let (_, _, decoded) = get(
            &node,
            host,
            &js,
            &["--compressed", "-H", &format!("Accept-Encoding: {enc}")],
        );
        assert_eq!(decoded, plain, "{enc} decodes to the file");
    }
    // Ranges of a large file; HEAD; methods a site does not take.
    let (s, head, part) = get(&node, host, "/data.bin", &["-H", "Range: bytes=1000-1999"]);
    assert_eq!((s, part.len()), (206, 1000));
    assert_eq!(part, random_bytes(200_000, 7)[1000..2000]);
    assert_eq!(
        header(&head, "content-range"),
        Some("bytes 1000-1999/200000")
    );
    let out = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        "-H",
        &format!("Host: {host}"),
        &format!("{}/", node.url()),
    ]);
    assert_eq!(out.stdout, b"405");

    // Over HTTP/3 the same (aioquic names the node in `:authority`, so the
    // path form): a file, and the 404 page whole under its status (a range
    // asked for is not applied to a 404).
    let r = aioquic_request(
        &format!("https://{}/sites/docs/about", node.addr),
        "GET",
        &[],
    );
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"<h1>About one</h1>"[..])
    );
    // Every header its rules give it, past what a head's fixed array holds.
    for i in 1..=12 {
        let value = i.to_string();
        assert_eq!(
            r.header(&format!("x-rule-{i}")),
            Some(value.as_str()),
            "x-rule-{i}"
        );
    }
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert!(r.header("date").is_some(), "a date");
    let r = aioquic_request(
        &format!("https://{}/sites/docs/nothing", node.addr),
        "GET",
        &[("range", "bytes=0-3")],
    );
    assert_eq!(
        (r.status, r.body.as_slice()),
        (404, &b"<h1>Page not found</h1>"[..])
    );

    // The path form, and the preview name of a version.
    let (s, _, body) = curl_get(&format!("{}/sites/docs/about", node.url()), &[]);
    assert_eq!((s, body), (200, b"<h1>About one</h1>".to_vec()));
    let (s, head, _) = curl_get(&format!("{}/sites/docs/old-about", node.url()), &[]);
    assert_eq!(
        (s, header(&head, "location")),
        (301, Some("/sites/docs/about"))
    );
    let (s, _, _) = get(&node, "nosuch.sites.localhost", "/", &[]);
    assert_eq!(s, 404);

    // A mistake in the rules: refused before anything is sent; nothing changes.
    let bad = tempfile::tempdir().expect("tmp");
    site(bad.path(), "bad");
    write(bad.path(), "_redirects", "/a /b 301\n/c /d 299\n");
    let blobs_before = node.metric("tessera_store_blobs");
    let out = deploy(&node, client.path(), "docs", bad.path(), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2") && err.contains("299"), "{err}");
    assert_eq!(node.metric("tessera_store_blobs"), blobs_before);
    assert_eq!(live(&node, "docs").as_deref(), Some(v1.as_str()));

    // A second version: only what changed is uploaded; the first stays at its preview.
    site(dir.path(), "two");
    for old in std::fs::read_dir(dir.path().join("assets")).expect("assets") {
        let p = old.expect("entry").path();
        let text = std::fs::read_to_string(&p).expect("read");
        if text.contains("\"one\"") {
            std::fs::remove_file(p).expect("rm");
        }
    }
    let second = deployed(&node, client.path(), "docs", dir.path(), &[]);
    let v2 = second["version"].as_str().expect("version").to_string();
    assert_ne!(v1, v2);
    assert!(
        second["skipped"].as_u64().expect("n") >= 4,
        "unchanged files are not sent again: {second}"
    );
    assert!(String::from_utf8_lossy(&get(&node, host, "/", &[]).2).contains("Tessera site two"));
    let preview = format!("{}.docs.sites.localhost", &v1[..12]);
    assert!(String::from_utf8_lossy(&get(&node, &preview, "/", &[]).2).contains("Tessera site one"));
    let (s, _, body) = curl_get(
        &format!("{}/sites/docs@{}/about", node.url(), &v2[..12]),
        &[],
    );
    assert_eq!((s, body), (200, b"<h1>About two</h1>".to_vec()));

    // Versions listed; rollback to the one before, and forward by name.
    let out = cli(&node, client.path(), &["deployments"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains(&v1[..12]) && listing.contains(&v2[..12]),
        "{listing}"
    );
    assert!(
        listing
            .lines()
            .any(|l| l.contains(&v2[..12]) && l.contains("(live)")),
        "{listing}"
    );
    let out = cli(&node, client.path(), &["rollback", "docs"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(live(&node, "docs").as_deref(), Some(v1.as_str()));
    assert!(String::from_utf8_lossy(&get(&node, host, "/", &[]).2).contains("Tessera site one"));
    let out = cli(&node, client.path(), &["rollback", "docs", &v2[..10]]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&get(&node, host, "/", &[]).2).contains("Tessera site two"));
    let out = cli(&node, client.path(), &["rollback", "docs", "ffffffff"]);
    assert!(!out.status.success());

    // Pruned with --keep 1: the old version's preview is gone, its blobs unpinned.
    let pinned_before = node.metric("tessera_site_pinned_blobs{service=\"site\"}");
    write(dir.path(), "extra.txt", "three");
    let third = deployed(&node, client.path(), "docs", dir.path(), &["--keep", "1"]);
    assert_eq!(third["pruned"], 2);
    within(Duration::from_secs(30), "the old version unpinned", || {
        node.metric("tessera_site_pinned_blobs{service=\"site\"}") < pinned_before
    });
    let (s, _, _) = get(&node, &preview, "/", &[]);
    assert_eq!(s, 404);

    // Metered per site.
    assert!(node.metric("tessera_site_requests_total{service=\"site\",site=\"docs\"}") > 20);
    assert!(node.metric("tessera_site_bytes_total{service=\"site\",site=\"docs\"}") > 200_000);
}

/// The browser's steps, run by `tests/browser/cdp.py`; one JSON object per step.
fn chromium(out: &Path, quic: Option<(&str, &str)>, steps: &[String]) -> Vec<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/cdp.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg("--out").arg(out);
    if let Some((origin, spki)) = quic {
        cmd.args(["--quic", origin, "--spki", spki]);
    }
    let run = cmd
        .args(steps)
        .output()
        .expect("python3 runs the DevTools client");
    assert!(
        run.status.success(),
        "chromium (apt-get install chromium): {}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a step's JSON"))
        .collect()
}

/// The SHA-256 of the node's certificate's public key, base64: what
/// Chromium's `--ignore-certificate-errors-spki-list` takes.
fn spki_hash(cert: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -pubkey -noout -in {} | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | openssl enc -base64",
            cert.display()
        ))
        .output()
        .expect("openssl");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .expect("base64")
        .trim()
        .to_string()
}

fn artefacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("site-screenshots");
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

#[test]
fn chromium_renders_the_site_over_http1_and_http3() {
    let node = Node::start(&[]);
    let client = tempfile::tempdir().expect("tmp");
    let dir = tempfile::tempdir().expect("tmp");
    site(dir.path(), "one");
    let v1 = deployed(&node, client.path(), "shop", dir.path(), &[]);
    let port = node.addr.port();
    let base = format!("http://shop.sites.localhost:{port}");
    let out = artefacts();
    let same = "document.querySelector('meta[name=version]').content + '/' + window.APP_VERSION + '/' + getComputedStyle(document.documentElement).getPropertyValue('--version').trim().replaceAll('\"', '')";
    let loaded = "document.getElementById('logo').complete && document.getElementById('logo').naturalWidth > 0";
    let steps = vec![
        format!("goto:{base}/"),
        format!("wait:{loaded}"),
        format!("eval:{same}"),
        "eval:document.getElementById('view').textContent".to_string(),
        "shot:home-http1".to_string(),
        format!("goto:{base}/users/ada"),
        "eval:document.getElementById('view').textContent".to_string(),
        format!("goto:{base}/old-about"),
        "eval:location.pathname + ' ' + document.body.textContent".to_string(),
        format!("goto:{base}/missing-page"),
        "eval:document.body.textContent".to_string(),
    ];
    let r = chromium(&out, None, &steps);
    let home = &r[0];
    assert!(
        home["failed"].as_array().expect("list").is_empty(),
        "{home}"
    );
    // Chromium asks for /favicon.ico on its own; the site has none (404).
    let statuses: Vec<u64> = home["responses"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|x| !x["url"].as_str().unwrap_or("").ends_with("/favicon.ico"))
        .map(|x| x["status"].as_u64().unwrap_or(0))
        .collect();
    assert!(
        statuses.len() >= 4 && statuses.iter().all(|&s| s == 200),
        "every sub-resource loads: {home}"
    );
    assert_eq!(r[1]["value"], true, "the image rendered");
    assert_eq!(r[2]["value"], "one/one/one");
    assert_eq!(r[3]["value"], "home");
    assert!(
        std::fs::metadata(out.join("home-http1.png"))
            .expect("screenshot")
            .len()
            > 1000
    );
    assert_eq!(r[6]["value"], "user ada", "the deep link renders its view");
    assert_eq!(
        r[8]["value"], "/about About one",
        "the redirect is followed"
    );
    assert_eq!(r[10]["value"], "Page not found");

    // A second deploy: a reload shows the new version whole; a rollback, the old.
    site(dir.path(), "two");
    let v2 = deployed(&node, client.path(), "shop", dir.path(), &[]);
    assert_ne!(v1["version"], v2["version"]);
    let check = vec![
        format!("goto:{base}/"),
        format!("wait:{loaded}"),
        format!("eval:{same}"),
    ];
    let r = chromium(&out, None, &check);
    assert_eq!(r[2]["value"], "two/two/two");
    let rb = cli(&node, client.path(), &["rollback", "shop"]);
    assert!(
        rb.status.success(),
        "{}",
        String::from_utf8_lossy(&rb.stderr)
    );
    let r = chromium(&out, None, &check);
    assert_eq!(r[2]["value"], "one/one/one");

    // HTTP/3: Chromium forced onto QUIC to the node, trusting its
    // certificate by its key.
    let spki = spki_hash(&node.data_dir.join("tls/cert.pem"));
    let origin = format!("shop.sites.localhost:{port}");
    let https = format!("https://{origin}");
    let steps = vec![
        format!("goto:{https}/"),
        format!("wait:{loaded}"),
        format!("eval:{same}"),
        "eval:performance.getEntries().filter(e => e.nextHopProtocol).map(e => e.nextHopProtocol).join(',')".to_string(),
        "shot:home-http3".to_string(),
        format!("goto:{https}/users/grace"),
        "eval:document.getElementById('view').textContent".to_string(),
    ];
    let r = chromium(&out, Some((&origin, &spki)), &steps);
    assert!(
        r[0]["failed"].as_array().expect("list").is_empty(),
        "{}",
        r[0]
    );
    assert!(
        r[0]["responses"]
            .as_array()
            .expect("list")
            .iter()
            .filter(|x| !x["url"].as_str().unwrap_or("").ends_with("/favicon.ico"))
            .all(|x| x["protocol"] == "h3" && x["status"] == 200),
        "{}",
        r[0]
    );
    assert_eq!(r[1]["value"], true);
    assert_eq!(r[2]["value"], "one/one/one");
    let protocols = r[3]["value"].as_str().expect("protocols");
    assert!(
        !protocols.is_empty() && protocols.split(',').all(|p| p == "h3"),
        "{protocols}"
    );
    assert_eq!(r[6]["value"], "user grace");
}

/// The node `name` is placed on, by `observer`'s `GET /deployments/{name}`.
fn placed_on(observer: &Node, name: &str) -> Vec<String> {
    let (_, _, body) = observer.get(&format!("/deployments/{name}"));
    let d: serde_json::Value = serde_json::from_slice(&body).expect("json");
    d["placement"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["addr"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_site_on_one_of_three_nodes_is_served_by_every_node() {
    let mut nodes = start_in_regions(&["eu", "eu", "eu"], |_| Vec::new());
    let client = tempfile::tempdir().expect("tmp");
    let dir = tempfile::tempdir().expect("tmp");
    site(dir.path(), "one");
    // No ledger here: the owner records the site on each node (with a ledger,
    // once). The first upload sends the files; the others find them on the
    // network and send nothing.
    let first = deployed(&nodes[0], client.path(), "www", dir.path(), &[]);
    assert!(first["uploaded"].as_u64().expect("n") > 0);
    for node in &nodes[1..] {
        let again = deployed(node, client.path(), "www", dir.path(), &[]);
        assert_eq!(again["version"], first["version"]);
        assert_eq!(again["uploaded"], 0, "the network had every blob: {again}");
    }
    let placed = placed_on(&nodes[0], "www");
    assert_eq!(placed.len(), 1);
    for node in &nodes[1..] {
        assert_eq!(placed_on(node, "www"), placed, "every node places it alike");
    }
    let host = "www.sites.localhost";
    for node in &nodes {
        let (s, _, body) = get(node, host, "/about", &[]);
        assert_eq!(
            (s, body),
            (200, b"<h1>About one</h1>".to_vec()),
            "at {}",
            node.addr
        );
    }
    let at = nodes
        .iter()
        .position(|n| n.addr.to_string() == placed[0])
        .expect("placed node");
    let others: Vec<usize> = (0..3).filter(|&i| i != at).collect();
    for &i in &others {
        assert!(
            nodes[i].metric("tessera_site_proxied_total{service=\"site\"}") >= 1,
            "node {i} proxied"
        );
    }
    assert!(nodes[at].metric("tessera_site_requests_total{service=\"site\",site=\"www\"}") >= 3);

    // The placed node dies: the site moves, and every live node serves it.
    nodes[at].kill9();
    let observer = others[0];
    within(Duration::from_secs(60), "the site re-placed", || {
        placed_on(&nodes[observer], "www")
            .first()
            .is_some_and(|a| *a != placed[0])
    });
    for &i in &others {
        within(Duration::from_secs(60), "served after the move", || {
            get(&nodes[i], host, "/", &[]).0 == 200
        });
        let (s, _, body) = get(&nodes[i], host, "/docs/", &[]);
        assert_eq!((s, body), (200, b"<h1>Docs one</h1>".to_vec()));
    }
}
