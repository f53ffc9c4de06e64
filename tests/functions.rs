//! Edge functions: worker scripts deployed with `tessera deploy function`,
//! answered by a real node over HTTP/1.1 (curl) and HTTP/3 (aioquic), and
//! the same scripts run by `workerd` (Cloudflare's Workers runtime, from
//! npm), whose answers Tessera's must match; the limits and the sandbox.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The worker scripts of the comparison, in `tests/functions/`.
const SCRIPTS: [&str; 7] = [
    "headers",
    "json",
    "streaming",
    "subrequests",
    "kv",
    "waituntil",
    "errors",
];

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/functions")
}

/// workerd's binary: `TESSERA_WORKERD`, as `scripts/test` installs it.
fn workerd_bin() -> PathBuf {
    let path = std::env::var("TESSERA_WORKERD").expect(
        "TESSERA_WORKERD is not set: run the tests with scripts/test, which installs workerd from npm",
    );
    let path = PathBuf::from(path);
    assert!(path.exists(), "workerd is not at {}", path.display());
    path
}

/// A node with functions allowed to reach loopback (the test origin).
fn node_for_functions(extra_config: &str) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("tessera.toml");
    std::fs::write(
        &path,
        format!("[services.function]\nallow_private_fetch = true\n{extra_config}"),
    )
    .expect("config");
    let node = Node::start(&["--config", path.to_str().expect("utf-8")]);
    (node, dir)
}

fn deploy_function(
    node: &Node,
    client: &Path,
    name: &str,
    script: &Path,
    args: &[&str],
) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["deploy", "function", "--name", name])
        .arg(script)
        .args(args)
        .args(["--node", &node.url()])
        .env("TESSERA_CLIENT_DIR", client)
        .output()
        .expect("tessera deploy function")
}

/// `script` deployed as `name` on every node (no ledger in these tests:
/// the owner records the function on each node).
fn deploy_on_all(nodes: &[Node], client: &Path, name: &str, script: &Path, args: &[&str]) {
    for node in nodes {
        deploy_ok(node, client, name, script, args);
    }
}

/// `tessera deploy function --spec FILE` (a spec written by hand).
fn deploy_spec_ok(node: &Node, client: &Path, name: &str, spec: &Path, replicas: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "deploy",
            "function",
            "--name",
            name,
            "--replicas",
            replicas,
            "--spec",
        ])
        .arg(spec)
        .args(["--node", &node.url()])
        .env("TESSERA_CLIENT_DIR", client)
        .output()
        .expect("tessera deploy function --spec");
    assert!(
        out.status.success(),
        "deploying {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn deploy_ok(node: &Node, client: &Path, name: &str, script: &Path, args: &[&str]) {
    let out = deploy_function(node, client, name, script, args);
    assert!(
        out.status.success(),
        "deploying {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh node with `script` (in `tests/functions/`) deployed as `name`;
/// the temp dir holds the deploying client's key (in `client/`).
fn node_with_function(name: &str, script: &str, args: &[&str]) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tmp");
    let node = Node::start(&[]);
    deploy_ok(
        &node,
        &dir.path().join("client"),
        name,
        &scripts_dir().join(script),
        args,
    );
    (node, dir)
}

/// workerd serving every script of [`SCRIPTS`], each on its own port, with
/// the same bindings Tessera gives them.
struct Workerd {
    child: Child,
    ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl Drop for Workerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Workerd {
    /// The comparison's scripts, from `tests/functions/`.
    fn start(origin: &str) -> Workerd {
        let scripts: Vec<(String, PathBuf)> = SCRIPTS
            .iter()
            .map(|n| (n.to_string(), scripts_dir().join(format!("{n}.js"))))
            .collect();
        Workerd::start_with(&scripts, origin)
    }

    fn start_with(scripts: &[(String, PathBuf)], origin: &str) -> Workerd {
        let dir = tempfile::tempdir().expect("tmp");
        let mut services = String::new();
        let mut sockets = String::new();
        let mut workers = String::new();
        let mut ports = Vec::new();
        for (i, (name, script)) in scripts.iter().enumerate() {
            std::fs::copy(script, dir.path().join(format!("{name}.js"))).expect("copy script");
            let port = free_addr().port();
            ports.push(port);
            services.push_str(&format!("    (name = \"s{i}\", worker = .w{i}),\n"));
            sockets.push_str(&format!(
                "    (name = \"http{i}\", address = \"127.0.0.1:{port}\", http = (), service = \"s{i}\"),\n"
            ));
            workers.push_str(&format!(
                "const w{i} :Workerd.Worker = (\n  modules = [ (name = \"{name}\", esModule = embed \"{name}.js\") ],\n  \
                 compatibilityDate = \"2024-09-23\",\n  globalOutbound = \"net\",\n  bindings = [\n    \
                 (name = \"STORE\", kvNamespace = \"kv{i}\"),\n    (name = \"ORIGIN\", text = \"{origin}\"),\n  ],\n);\n"
            ));
            services.push_str(&format!("    (name = \"kv{i}\", worker = .kv{i}),\n"));
            workers.push_str(&format!(
                "const kv{i} :Workerd.Worker = (\n  modules = [ (name = \"kv\", esModule = embed \"kv-backend.js\") ],\n  \
                 compatibilityDate = \"2024-09-23\",\n);\n"
            ));
        }
        std::fs::copy(
            scripts_dir().join("workerd/kv-backend.js"),
            dir.path().join("kv-backend.js"),
        )
        .expect("copy kv backend");
        let config = format!(
            "using Workerd = import \"/workerd/workerd.capnp\";\n\
             const config :Workerd.Config = (\n  services = [\n{services}    \
             (name = \"net\", network = (allow = [\"public\", \"private\", \"local\"])),\n  ],\n  \
             sockets = [\n{sockets}  ],\n);\n{workers}"
        );
        let path = dir.path().join("config.capnp");
        std::fs::write(&path, config).expect("config");
        let child = Command::new(workerd_bin())
            .arg("serve")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn workerd");
        for &port in &ports {
            within(Duration::from_secs(60), "workerd listens", || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
        }
        Workerd {
            child,
            ports,
            _dir: dir,
        }
    }
}

/// An answer as compared: status, the headers that are the script's (not
/// the server's framing or identity), body.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn fetch(url: &str, method: &str, headers: &[(&str, &str)], body: Option<&str>) -> Answer {
    let mut args = vec!["-sS".to_string(), "-i".into(), "-X".into(), method.into()];
    for (n, v) in headers {
        args.push("-H".into());
        args.push(format!("{n}: {v}"));
    }
    if let Some(b) = body {
        args.push("--data-binary".into());
        args.push(b.into());
    }
    args.push(url.into());
    let out = Command::new("curl").args(&args).output().expect("curl");
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw = out.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let mut headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .filter(|(n, _)| {
            !matches!(
                n.as_str(),
                "date"
                    | "server"
                    | "connection"
                    | "alt-svc"
                    | "content-length"
                    | "transfer-encoding"
                    | "keep-alive"
            )
        })
        .collect();
    headers.sort();
    Answer {
        status,
        headers,
        body,
    }
}

struct Case {
    script: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: Option<&'static str>,
    /// Only the status is compared (the error page is each runtime's own).
    status_only: bool,
}

const fn get(script: &'static str, path: &'static str) -> Case {
    Case {
        script,
        method: "GET",
        path,
        headers: &[],
        body: None,
        status_only: false,
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            headers: &[("X-Test", "yes"), ("x-Other", "2"), ("Accept", "text/html")],
            ..get("headers", "/echo?a=1&b=two&a=3")
        },
        get("headers", "/set"),
        get("headers", "/status?code=201"),
        get("headers", "/status?code=418"),
        get("headers", "/redirect"),
        get("headers", "/empty"),
        get("headers", "/url"),
        get("headers", "/nowhere"),
        Case {
            method: "PUT",
            headers: &[("Content-Type", "text/csv")],
            body: Some("a,b,c"),
            ..get("headers", "/method")
        },
        Case {
            method: "PATCH",
            headers: &[("Content-Type", "application/json")],
            body: Some("{}"),
            ..get("headers", "/method")
        },
        get("json", "/render"),
        get("json", "/api"),
        Case {
            method: "POST",
            headers: &[("Content-Type", "application/json")],
            body: Some(r#"{"a":1,"b":"x","c":2.5}"#),
            ..get("json", "/transform")
        },
        Case {
            method: "POST",
            body: Some("{nope"),
            ..get("json", "/transform")
        },
        get("streaming", "/pull"),
        get("streaming", "/transform"),
        Case {
            method: "POST",
            body: Some("0123456789abcdefghijklmnopqrstuvwxyz"),
            ..get("streaming", "/echo")
        },
        get("streaming", "/text"),
        get("subrequests", "/get"),
        get("subrequests", "/post"),
        get("subrequests", "/missing"),
        get("subrequests", "/many"),
        get("kv", "/put"),
        get("kv", "/get"),
        get("kv", "/list"),
        get("kv", "/delete"),
        get("kv", "/list"),
        get("errors", "/caught"),
        get("errors", "/bad-status"),
        get("errors", "/used-body"),
        get("errors", "/crypto"),
        Case {
            status_only: true,
            ..get("errors", "/throw")
        },
        Case {
            status_only: true,
            ..get("errors", "/reject")
        },
        Case {
            status_only: true,
            ..get("errors", "/not-a-response")
        },
    ]
}

#[test]
fn workerd_and_tessera_answer_the_same_scripts_alike() {
    let origin = Origin::start();
    let workerd = Workerd::start(&origin.url());
    let (node, _config) = node_for_functions("");
    let client = tempfile::tempdir().expect("client");
    for name in SCRIPTS {
        let script = scripts_dir().join(format!("{name}.js"));
        let var = format!("ORIGIN={}", origin.url());
        deploy_ok(
            &node,
            client.path(),
            name,
            &script,
            &["--kv", "STORE", "--var", &var],
        );
    }
    for case in cases() {
        let i = SCRIPTS
            .iter()
            .position(|s| *s == case.script)
            .expect("a script");
        let theirs = fetch(
            &format!("http://127.0.0.1:{}{}", workerd.ports[i], case.path),
            case.method,
            case.headers,
            case.body,
        );
        let ours = fetch(
            &format!("{}/fn/{}{}", node.url(), case.script, case.path),
            case.method,
            case.headers,
            case.body,
        );
        let what = format!("{} {} {}", case.method, case.script, case.path);
        if case.status_only {
            assert_eq!(ours.status, theirs.status, "{what}");
        } else {
            assert_eq!(
                ours,
                theirs,
                "{what}\nours:   {}\ntheirs: {}",
                String::from_utf8_lossy(&ours.body),
                String::from_utf8_lossy(&theirs.body)
            );
        }
    }
    // What both agreed on is what a script asked for, not an empty page.
    let ours = |path: &str| fetch(&format!("{}/fn/{path}", node.url()), "GET", &[], None);
    assert_eq!(ours("headers/status?code=418").status, 418);
    let set = ours("headers/set");
    assert!(
        String::from_utf8_lossy(&set.body)
            .contains("set-cookie=a=1; Path=/\nset-cookie=b=2; Path=/"),
        "{set:?}"
    );
    // Appended values go out as separate lines (as workerd sends them).
    assert!(
        set.headers.contains(&("x-multi".into(), "b".into())),
        "{set:?}"
    );
    assert_eq!(
        ours("streaming/pull").body,
        b"chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n"
    );
    assert_eq!(
        ours("kv/list").body,
        br#"{"names":["user:1"],"complete":true}"#
    );
    assert!(
        String::from_utf8_lossy(&ours("subrequests/get").body).starts_with("200 true 64 pagepage")
    );
    // waitUntil: the work goes on after the answer; both see it land.
    for base in [
        format!("http://127.0.0.1:{}", workerd.ports[5]),
        format!("{}/fn/waituntil", node.url()),
    ] {
        let scheduled = fetch(&format!("{base}/schedule"), "GET", &[], None);
        assert_eq!(scheduled.body, b"scheduled", "{base}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let check = fetch(&format!("{base}/check"), "GET", &[], None);
            if check.body == b"done after the response" {
                break;
            }
            assert!(Instant::now() < deadline, "{base}: waitUntil never ran");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A request past a limit is stopped and answered 503 naming the limit;
/// the next request to the same function and to another one succeeds.
#[test]
fn limits_stop_a_request_and_nothing_else() {
    // Functions may not reach the node's own network here.
    let dir = tempfile::tempdir().expect("tmp");
    let node = Node::start(&[]);
    let client = dir.path().join("client");
    let hostile = scripts_dir().join("hostile.js");
    let private = format!("PRIVATE={}/healthz", node.url());
    deploy_ok(
        &node,
        &client,
        "hostile",
        &hostile,
        &[
            "--wall-ms",
            "3000",
            "--memory-mb",
            "32",
            "--subrequests",
            "5",
            "--var",
            &private,
        ],
    );
    deploy_ok(&node, &client, "other", &scripts_dir().join("json.js"), &[]);
    let get = |path: &str| curl_get(&format!("{}/fn/{path}", node.url()), &[]);
    assert_eq!(get("hostile/ok").2, b"fine");
    for (path, limit) in [
        ("loop", "CPU time limit exceeded (50 ms per request)"),
        ("memory", "memory limit exceeded (32 MiB)"),
        ("recurse", "stack limit exceeded"),
        ("sleep", "wall time limit exceeded (3000 ms per request)"),
        ("subrequests", "subrequest limit exceeded (5 per request)"),
    ] {
        let (status, _, body) = get(&format!("hostile/{path}"));
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 503, "{path}: {body}");
        assert!(body.contains(limit), "{path}: {body}");
        assert!(body.starts_with("hostile: "), "{path}: {body}");
        assert_eq!(get("hostile/ok").2, b"fine", "after {path}");
        assert_eq!(get("other/api").0, 200, "another function after {path}");
    }
    // A promise that nothing will ever settle: an error, not a hung worker.
    let (status, _, _) = get("hostile/hang");
    assert_eq!(status, 500);
    // No way out but fetch, and fetch not onto the node's own network.
    let (status, _, body) = get("hostile/escape");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["import"], "refused", "{v}");
    for global in ["require", "process", "std", "os", "Deno"] {
        assert_eq!(v[global], "undefined", "{global}: {v}");
    }
    assert!(
        v["fetch"]
            .as_str()
            .is_some_and(|m| m.contains("node's own network")),
        "{v}"
    );
    assert_eq!(v["file"], "refused", "{v}");
    // Counted per function, and the node is still well.
    let metrics = String::from_utf8_lossy(&node.get("/metrics").2).into_owned();
    let limits_line = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                "tessera_function_limits_total{service=\"function\",function=\"hostile\"}",
            )
        })
        .expect("limits metric");
    let limits: u64 = limits_line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a count");
    assert_eq!(limits, 5, "{limits_line}");
    assert!(metrics.contains(
        "tessera_function_cpu_microseconds_total{service=\"function\",function=\"hostile\"}"
    ));
    assert_eq!(node.get("/healthz").0, 200);
}

/// A deploy is checked before it changes anything: a script that does not
/// compile is refused by the CLI with its line; a spec whose script is not
/// on the node is refused by the node; a bad binding name by both.
#[test]
fn bad_deploys_are_refused_and_change_nothing() {
    let (node, dir) = node_with_function("app", "json.js", &[]);
    let client = dir.path().join("client");
    let good = scripts_dir().join("json.js");
    let bad = dir.path().join("bad.js");
    std::fs::write(
        &bad,
        "export default {\n  fetch(req) {\n    return new Response(\n}\n",
    )
    .expect("write");
    let out = deploy_function(&node, &client, "app", &bad, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SyntaxError") && err.contains(":4"), "{err}");
    let out = deploy_function(
        &node,
        &client,
        "app",
        &good,
        &["--var", "not-an-identifier=1"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("identifier"));
    let out = deploy_function(&node, &client, "app", &good, &["--cpu-ms", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cpu_ms"));
    // The spec of a script the node lacks, sent as a raw deploy.
    let spec = dir.path().join("spec.toml");
    std::fs::write(&spec, format!("code = \"{}\"\n", "ab".repeat(32))).expect("spec");
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["deploy", "function", "--name", "app", "--spec"])
        .arg(&spec)
        .args(["--node", &node.url()])
        .env("TESSERA_CLIENT_DIR", &client)
        .output()
        .expect("tessera");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not on this node"), "{err}");
    // Still the good version, at both of its addresses.
    let (status, _, body) = curl_get(&format!("{}/fn/app/api", node.url()), &[]);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) = curl_get(
        &format!("http://app.fn.localhost:{}/api", node.addr.port()),
        &[
            "--resolve",
            &format!("app.fn.localhost:{}:127.0.0.1", node.addr.port()),
        ],
    );
    assert_eq!(status, 200);
    let (status, _, _) = curl_get(&format!("{}/fn/nosuch/", node.url()), &[]);
    assert_eq!(status, 404);
}

/// The same function over HTTP/3 (aioquic), at its own host.
#[test]
fn a_function_answers_over_http3() {
    let (node, _dir) = node_with_function("api", "json.js", &[]);
    let r = aioquic_request(
        &format!("https://127.0.0.1:{}/fn/api/api", node.addr.port()),
        "GET",
        &[],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(v["total"], 20);
    let r = aioquic_request(
        &format!("https://127.0.0.1:{}/fn/api/transform", node.addr.port()),
        "POST",
        &[("content-type", "application/json")],
    );
    // No body: the script's JSON parse fails and it says so.
    assert_eq!(r.status, 400);
    assert_eq!(r.body, b"bad json");
}

/// Incremental static regeneration: a function as a CDN zone's origin.
/// Its `s-maxage` / `stale-while-revalidate` make the zone serve the cached
/// page, then the stale one while exactly one render regenerates it (also
/// under 200 concurrent requests); `ctx.revalidate(path)` and
/// `ctx.revalidateTag(tag)` regenerate on demand.
#[test]
fn a_function_behind_a_cdn_zone_regenerates_pages_incrementally() {
    let (node, dir) = node_with_function("render", "render.js", &[]);
    let client = dir.path().join("client");
    deploy_cdn(&node, &client, "blog", &["--origin", "fn:render"]);
    let renders =
        || node.metric("tessera_function_requests_total{service=\"function\",function=\"render\"}");
    let page = |path: &str| {
        let (status, head, body) = curl_get(&format!("{}/cdn/blog{path}", node.url()), &[]);
        assert_eq!(status, 200, "{head}");
        String::from_utf8(body).expect("utf-8")
    };
    within(Duration::from_secs(20), "the zone is known", || {
        curl_get(&format!("{}/cdn/blog/", node.url()), &[]).0 != 404
    });
    let first = page("/blog/a");
    assert!(first.starts_with("<h1>/blog/a</h1>"), "{first}");
    assert_eq!(page("/blog/a"), first, "cached");
    assert_eq!(renders(), 2, "the probe of / and /blog/a");
    // Time-based: past s-maxage the stale page at once, one render behind it.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(page("/blog/a"), first, "stale while revalidating");
    within(Duration::from_secs(20), "one regeneration", || {
        renders() == 3
    });
    // (Counted when the render starts; published when it ends.)
    within(Duration::from_secs(20), "the regenerated page", || {
        page("/blog/a") != first
    });
    let second = page("/blog/a");
    assert_eq!(renders(), 3);
    // 200 concurrent requests for a stale page: all answered, one render.
    std::thread::sleep(Duration::from_millis(2500));
    let url = format!("{}/cdn/blog/blog/a", node.url());
    let bodies: Vec<Vec<u8>> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..200)
            .map(|_| {
                s.spawn(|| {
                    let req =
                        b"GET /cdn/blog/blog/a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
                    let (status, _, body) = try_request(node.addr, req).expect("an answer");
                    assert_eq!(status, 200, "{url}");
                    body
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect()
    });
    assert_eq!(bodies.len(), 200);
    assert!(bodies.iter().all(|b| b.starts_with(b"<h1>/blog/a</h1>")));
    within(Duration::from_secs(20), "the regeneration", || {
        renders() == 4
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(renders(), 4, "one render for 200 requests");
    within(Duration::from_secs(20), "the regenerated page", || {
        page("/blog/a") != second
    });
    let third = page("/blog/a");
    // On demand, by path: the page is fresh (s-maxage not passed), yet a
    // revalidation regenerates it.
    let other = page("/blog/b");
    let before = renders();
    let (status, _, _) = curl_get(
        &format!("{}/fn/render/revalidate?path=/blog/a", node.url()),
        &[],
    );
    assert_eq!(status, 200);
    let after_ask = renders();
    assert_eq!(after_ask, before + 1, "the revalidation request itself");
    within(Duration::from_secs(20), "regenerated by path", || {
        page("/blog/a") != third
    });
    assert_eq!(
        renders(),
        after_ask + 1,
        "one render for the revalidated path"
    );
    assert_eq!(page("/blog/b"), other, "another path is untouched");
    // By tag: both blog pages, not the others.
    let home = page("/home");
    let (a, b) = (page("/blog/a"), page("/blog/b"));
    curl_get(
        &format!("{}/fn/render/revalidate?tag=blog", node.url()),
        &[],
    );
    page("/blog/a");
    page("/blog/b");
    within(Duration::from_secs(20), "regenerated by tag", || {
        page("/blog/a") != a && page("/blog/b") != b
    });
    assert_eq!(page("/home"), home, "another tag is untouched");

    // A page regenerated to the same bytes keeps its hash: no new storage.
    let same = page("/same");
    assert_eq!(page("/same"), same);
    let (blobs, bytes) = (
        node.metric("tessera_store_blobs"),
        node.metric("tessera_store_bytes"),
    );
    let rendered = renders();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(page("/same"), same, "stale, regenerating");
    within(Duration::from_secs(20), "the regeneration", || {
        renders() > rendered
    });
    within(
        Duration::from_secs(20),
        "the regenerated page stored",
        || {
            curl_get(&format!("{}/cdn/blog/same", node.url()), &[])
                .1
                .contains("hit")
        },
    );
    assert_eq!(
        node.metric("tessera_store_blobs"),
        blobs,
        "a blob more for the same bytes"
    );
    assert_eq!(node.metric("tessera_store_bytes"), bytes);
}

/// A site's `_redirects` rule `/echo fn:headers 200` hands that path to the
/// function; the site's files are served as before.
#[test]
fn a_site_path_is_answered_by_a_function() {
    let (node, dir) = node_with_function("headers", "headers.js", &[]);
    let client = dir.path().join("client");
    let site = dir.path().join("public");
    std::fs::create_dir_all(&site).expect("dir");
    std::fs::write(site.join("index.html"), "<h1>static</h1>\n").expect("write");
    std::fs::write(site.join("_redirects"), "/echo  fn:headers  200\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["deploy", "site", "--name", "shop"])
        .arg(&site)
        .args(["--node", &node.url()])
        .env("TESSERA_CLIENT_DIR", &client)
        .output()
        .expect("tessera deploy site");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, _, body) = curl_get(&format!("{}/sites/shop/", node.url()), &[]);
    assert_eq!((status, body.as_slice()), (200, &b"<h1>static</h1>\n"[..]));
    let (status, head, body) = curl_get(
        &format!("{}/sites/shop/echo?k=v", node.url()),
        &["-H", "X-Test: from-the-site"],
    );
    assert_eq!(status, 200, "{head}");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("the function's JSON");
    assert_eq!(v["path"], "/echo");
    assert_eq!(v["search"], "?k=v");
    assert_eq!(v["headers"][0][1], "from-the-site", "{v}");
}

/// A real framework's output: a Hono app with server-rendered JSX, bundled
/// for the Workers runtime by esbuild (both from npm, as `scripts/test`
/// installs them), deployed as it is, answers as it does on workerd.
#[test]
fn a_framework_bundle_renders_alike_on_workerd_and_tessera() {
    let modules = PathBuf::from(std::env::var("TESSERA_SSR_MODULES").expect(
        "TESSERA_SSR_MODULES is not set: run the tests with scripts/test, which installs hono and esbuild from npm",
    ));
    let dir = tempfile::tempdir().expect("tmp");
    let bundle = dir.path().join("app.js");
    let out = Command::new(modules.join(".bin/esbuild"))
        .arg(scripts_dir().join("ssr/app.jsx"))
        .args([
            "--bundle",
            "--format=esm",
            "--platform=neutral",
            "--main-fields=module,main",
            "--jsx=automatic",
            "--jsx-import-source=hono/jsx",
            "--log-level=warning",
        ])
        .arg(format!("--outfile={}", bundle.display()))
        .env("NODE_PATH", &modules)
        .output()
        .expect("esbuild");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let workerd = Workerd::start_with(&[("app".to_string(), bundle.clone())], "http://127.0.0.1:9");
    let node = Node::start(&[]);
    let client = dir.path().join("client");
    deploy_ok(&node, &client, "app", &bundle, &[]);
    for (method, path, body) in [
        ("GET", "/", None),
        ("GET", "/posts/1?ref=feed", None),
        ("GET", "/posts/2", None),
        ("GET", "/posts/404", None),
        ("GET", "/nowhere", None),
        ("GET", "/api/posts", None),
        ("POST", "/api/echo", Some(r#"{"n":[1,2,3]}"#)),
    ] {
        let theirs = fetch(
            &format!("http://127.0.0.1:{}{path}", workerd.ports[0]),
            method,
            &[],
            body,
        );
        let ours = fetch(&format!("{}/fn/app{path}", node.url()), method, &[], body);
        assert_eq!(
            ours,
            theirs,
            "{method} {path}\nours:   {}\ntheirs: {}",
            String::from_utf8_lossy(&ours.body),
            String::from_utf8_lossy(&theirs.body)
        );
    }
    let page = fetch(&format!("{}/fn/app/posts/1", node.url()), "GET", &[], None);
    assert!(
        String::from_utf8_lossy(&page.body).contains("<article><h1>Edge rendering</h1>"),
        "{page:?}"
    );
}

/// KV across a function's nodes: a write on one is read on the other about a
/// round trip later (eventual, last writer wins), a delete too; a write
/// that no member signed is refused and changes nothing.
#[test]
fn kv_writes_reach_the_functions_other_node() {
    let nodes = start_in_regions(&["eu", "eu"], |_| Vec::new());
    let client = tempfile::tempdir().expect("tmp");
    // No ledger here: the owner records the function on each node.
    deploy_on_all(
        &nodes,
        client.path(),
        "kv",
        &scripts_dir().join("kv.js"),
        &["--kv", "STORE", "--replicas", "2"],
    );
    let get = |i: usize, path: &str| curl_get(&format!("{}/fn/kv{path}", nodes[i].url()), &[]);
    assert_eq!(get(0, "/put").2, b"stored");
    within(
        Duration::from_secs(30),
        "the writes on the other node",
        || {
            let (_, _, body) = get(1, "/list");
            body == br#"{"names":["user:1","user:2"],"complete":true}"#
        },
    );
    let (_, _, body) = get(1, "/get");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["json"]["name"], "ada", "{v}");
    assert_eq!(v["meta"]["role"], "admin", "{v}");
    assert_eq!(v["bytes"], serde_json::json!([1, 2, 3]), "{v}");
    // A delete on the second node reaches the first.
    assert_eq!(get(1, "/delete").2, br#"{"after":null}"#);
    within(
        Duration::from_secs(30),
        "the delete on the first node",
        || get(0, "/list").2 == br#"{"names":["user:1"],"complete":true}"#,
    );
    // A forged write: unsigned, or signed by no member.
    let forged = r#"{"function":"kv","ns":"STORE","key":"user:9","value":"eA==","ts_ms":99999999999999,"tie":0}"#;
    let hash = blake3::hash(forged.as_bytes()).to_hex().to_string();
    for extra in [
        vec![],
        vec![
            "-H".to_string(),
            "X-Tessera-Peer: 00".into(),
            "-H".into(),
            "X-Tessera-Peer-Time: 1".into(),
            "-H".into(),
            "X-Tessera-Peer-Sig: 00".into(),
        ],
    ] {
        let mut args: Vec<&str> = vec!["--data-binary", forged];
        args.extend(extra.iter().map(String::as_str));
        let (status, _, _) = curl_get(&format!("{}/fn/_kv/{hash}", nodes[0].url()), &args);
        // 401: the data plane refuses a bad node signature before any
        // service sees it; 403: the service finds no signature.
        assert!(matches!(status, 401 | 403), "{status}");
    }
    assert_eq!(
        get(0, "/list").2,
        br#"{"names":["user:1"],"complete":true}"#
    );
    assert!(nodes[0].metric("tessera_function_kv_applied_total{service=\"function\"}") >= 1);
    assert!(nodes[0].metric("tessera_function_kv_sent_total{service=\"function\"}") >= 3);

    // Writes made while the other node is down wait for it in the outbox
    // and reach it when it is back (its restart included).
    let mut nodes = nodes;
    nodes[1].kill9();
    let put = curl_get(&format!("{}/fn/kv/put", nodes[0].url()), &[]);
    assert_eq!(put.2, b"stored");
    let pending = "tessera_function_kv_pending{service=\"function\"}";
    within(Duration::from_secs(30), "the writes in the outbox", || {
        nodes[0].metric(pending) >= 3
    });
    nodes[1].restart();
    within(
        Duration::from_secs(60),
        "the writes on the node that was down",
        || {
            curl_get(&format!("{}/fn/kv/list", nodes[1].url()), &[]).2
                == br#"{"names":["user:1","user:2"],"complete":true}"#
        },
    );
    within(Duration::from_secs(30), "the outbox emptied", || {
        nodes[0].metric(pending) == 0
    });
}

/// A function placed on one of three nodes: the others pass its requests
/// to that node (its KV is there), so every node answers from one KV.
#[test]
fn a_function_placed_elsewhere_runs_on_its_node() {
    let nodes = start_in_regions(&["eu", "eu", "eu"], |_| Vec::new());
    let client = tempfile::tempdir().expect("tmp");
    deploy_on_all(
        &nodes,
        client.path(),
        "kv",
        &scripts_dir().join("kv.js"),
        &["--kv", "STORE"],
    );
    let placed = placed_on(&nodes, "kv");
    assert_eq!(placed.len(), 1, "one replica");
    let others: Vec<usize> = (0..3).filter(|i| !placed.contains(i)).collect();
    let get = |i: usize, path: &str| curl_get(&format!("{}/fn/kv{path}", nodes[i].url()), &[]);
    // Written through one node that does not run it, read through the other.
    assert_eq!(get(others[0], "/put").2, b"stored");
    let (_, _, body) = get(others[1], "/list");
    assert_eq!(body, br#"{"names":["user:1","user:2"],"complete":true}"#);
    assert_eq!(get(placed[0], "/list").2, body);
    for &i in &others {
        assert!(nodes[i].metric("tessera_function_proxied_total{service=\"function\"}") >= 1);
    }
    assert!(
        nodes[placed[0]]
            .metric("tessera_function_requests_total{service=\"function\",function=\"kv\"}")
            >= 3
    );
}

/// A page regenerated on the function's node reaches the zone's other node
/// by its changed 16 KiB groups only: a 256 KiB page whose render id changed
/// moves its hash tree and one or two groups; a page rendered to the same
/// bytes moves nothing but its hash.
#[test]
fn a_regenerated_page_crosses_to_another_node_by_its_changed_groups() {
    let nodes = start_in_regions(&["eu", "eu"], |_| Vec::new());
    let client = tempfile::tempdir().expect("tmp");
    for node in &nodes {
        deploy_ok(
            node,
            client.path(),
            "render",
            &scripts_dir().join("render.js"),
            &["--replicas", "1"],
        );
        deploy_cdn(
            node,
            client.path(),
            "blog",
            &["--origin", "fn:render", "--replicas", "2"],
        );
    }
    let placed = placed_on(&nodes, "render");
    assert_eq!(placed.len(), 1, "one replica of the function");
    let (fn_node, other) = (&nodes[placed[0]], &nodes[1 - placed[0]]);
    let page = |path: &str| {
        let (status, head, body) = curl_get(&format!("{}/cdn/blog{path}", other.url()), &[]);
        assert_eq!(status, 200, "{head}");
        String::from_utf8(body).expect("utf-8")
    };
    within(
        Duration::from_secs(30),
        "the zone on the other node",
        || curl_get(&format!("{}/cdn/blog/big", other.url()), &[]).0 == 200,
    );
    let metric = |n: &str| {
        other.metric(&format!(
            "tessera_function_{n}_total{{service=\"function\"}}"
        ))
    };
    let renders = || {
        fn_node.metric("tessera_function_requests_total{service=\"function\",function=\"render\"}")
    };
    let id_of = |p: &str| p.split("<p>render ").nth(1).map(|r| r[..36].to_string());
    let first = page("/big");
    assert!(first.len() > 250 << 10, "{}", first.len());
    let (fetched0, reused0, answers0) = (
        metric("delta_fetched_bytes"),
        metric("delta_reused_bytes"),
        metric("blob_answers"),
    );
    // Past s-maxage: the stale page, then one regeneration on the function's
    // node, which this node fetches by its changed groups.
    std::thread::sleep(Duration::from_millis(1500));
    let rendered = renders();
    assert_eq!(page("/big"), first, "stale while revalidating");
    within(Duration::from_secs(30), "the regenerated page here", || {
        id_of(&page("/big")) != id_of(&first)
    });
    assert!(renders() > rendered, "rendered on the function's node");
    let second = page("/big");
    assert_eq!(second.len(), first.len());
    let (a, b) = (
        first.split("<p>render ").collect::<Vec<_>>(),
        second.split("<p>render ").collect::<Vec<_>>(),
    );
    assert_eq!(a[0], b[0], "the unchanged first half");
    assert_eq!(a[1][36..], b[1][36..], "the unchanged second half");
    // On a slow machine s-maxage can pass again before the counters are
    // read, and the page is regenerated (and fetched by its groups) once more:
    // the bounds are per answer.
    // (The answer is counted before its bytes, so it is read after them.)
    let fetched = metric("delta_fetched_bytes") - fetched0;
    let reused = metric("delta_reused_bytes") - reused0;
    let answers = metric("blob_answers") - answers0;
    assert!(answers >= 1, "no answer by hash");
    eprintln!(
        "256 KiB page, render id changed: {fetched} bytes fetched, {reused} reused (of {}) over {answers} answer(s)",
        second.len()
    );
    assert!(
        fetched > 0 && fetched <= answers * (40 << 10),
        "fetched {fetched} bytes over {answers} answer(s)"
    );
    assert!(
        reused >= answers * ((second.len() as u64) - (32 << 10)),
        "reused {reused} bytes over {answers} answer(s)"
    );

    // The same bytes again: the node's copy is the answer; nothing moves.
    let same = page("/same");
    std::thread::sleep(Duration::from_millis(1500));
    let answers = metric("blob_answers");
    let fetched_before = metric("delta_fetched_bytes");
    let (blobs, bytes) = (
        other.metric("tessera_store_blobs"),
        other.metric("tessera_store_bytes"),
    );
    assert_eq!(page("/same"), same, "stale, regenerating");
    within(
        Duration::from_secs(30),
        "the regeneration answered by hash",
        || metric("blob_answers") > answers,
    );
    assert_eq!(
        metric("delta_fetched_bytes"),
        fetched_before,
        "bytes moved for the same page"
    );
    assert_eq!(page("/same"), same);
    assert_eq!(
        other.metric("tessera_store_blobs"),
        blobs,
        "a blob more for the same bytes"
    );
    assert_eq!(other.metric("tessera_store_bytes"), bytes);
}

/// A secret is sealed to each node by the deploying CLI: the script reads it
/// on every node, the deployment (what the ledger and anyone listing the
/// deployments see) carries its name and sealed boxes, never the value; a
/// node that joined after the deploy gets a box of its own from a member.
#[test]
fn secrets_are_sealed_to_the_nodes_and_reach_the_script() {
    const SECRET: &str = "s3cr3t-4f9a2c";
    let mut nodes = start_in_regions(&["eu", "eu"], |_| Vec::new());
    let client = tempfile::tempdir().expect("tmp");
    let script = scripts_dir().join("secrets.js");
    for node in &nodes {
        deploy_ok(
            node,
            client.path(),
            "sec",
            &script,
            &[
                "--secret",
                &format!("API_KEY={SECRET}"),
                "--var",
                "GREETING=hi",
                "--replicas",
                "2",
            ],
        );
    }
    let env_of = |node: &Node| {
        let (status, head, body) = curl_get(&format!("{}/fn/sec/", node.url()), &[]);
        assert_eq!(status, 200, "{head}");
        serde_json::from_slice::<serde_json::Value>(&body).expect("json")
    };
    for node in &nodes {
        assert_eq!(
            env_of(node),
            serde_json::json!({ "greeting": "hi", "key": SECRET })
        );
    }
    let (_, _, listing) = curl_get(&format!("{}/deployments/sec", nodes[0].url()), &[]);
    let listing = String::from_utf8(listing).expect("utf-8");
    assert!(
        !listing.contains(SECRET),
        "the secret in the deployment: {listing}"
    );
    let d: serde_json::Value = serde_json::from_str(&listing).expect("json");
    let spec_text = d["spec"].as_str().expect("spec").to_string();
    let spec: toml::Value = toml::from_str(&spec_text).expect("toml");
    assert_eq!(
        spec["secret_names"],
        toml::Value::Array(vec!["API_KEY".into()])
    );
    let sealed = spec["sealed_secrets"].as_table().expect("sealed_secrets");
    assert_eq!(sealed.len(), 2, "a box per member: {sealed:?}");
    let spec_file = client.path().join("sec.toml");
    std::fs::write(&spec_file, &spec_text).expect("spec file");

    // A third node joins after the deploy: the spec has no box for it, so
    // it asks a member, which seals the secrets to it.
    let addr = free_addr_on("127.0.0.3");
    let mut args: Vec<String> = FAST_GOSSIP.iter().map(|s| s.to_string()).collect();
    args.extend([
        "--region".into(),
        "eu".into(),
        "--join".into(),
        nodes[0].addr.to_string(),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    nodes.push(Node::start_at(addr, &refs));
    within(
        Duration::from_secs(30),
        "the third node is a member",
        || nodes.iter().all(|n| alive_verified(n) == 3),
    );
    nodes[2].put_bytes(&std::fs::read(&script).expect("script"));
    deploy_spec_ok(&nodes[2], client.path(), "sec", &spec_file, "2");
    within(
        Duration::from_secs(30),
        "the secret on the third node",
        || {
            let (status, _, body) = curl_get(&format!("{}/fn/sec/", nodes[2].url()), &[]);
            status == 200
                && serde_json::from_slice::<serde_json::Value>(&body).ok()
                    == Some(serde_json::json!({ "greeting": "hi", "key": SECRET }))
        },
    );

    // Asking for a box without being a member is refused.
    let spec_hash = blake3::hash(spec_text.as_bytes()).to_hex().to_string();
    let (status, _, body) = curl_get(
        &format!("{}/fn/_secrets/sec/{spec_hash}", nodes[0].url()),
        &[],
    );
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    assert!(!String::from_utf8_lossy(&body).contains(SECRET));

    // A hand-written spec's plain `[secrets]` are sealed by the CLI too
    // (a node refuses a spec that carries one: a unit test of the spec).
    let plain = format!(
        "code = {}\n[vars]\nGREETING = \"hi\"\n[secrets]\nAPI_KEY = \"{SECRET}\"\n",
        spec["code"]
    );
    std::fs::write(&spec_file, &plain).expect("spec file");
    deploy_spec_ok(&nodes[0], client.path(), "sec2", &spec_file, "3");
    let (_, _, listing) = curl_get(&format!("{}/deployments/sec2", nodes[0].url()), &[]);
    assert!(!String::from_utf8_lossy(&listing).contains(SECRET));
    within(
        Duration::from_secs(30),
        "the sealed hand-written spec runs",
        || {
            serde_json::from_slice::<serde_json::Value>(
                &curl_get(&format!("{}/fn/sec2/", nodes[0].url()), &[]).2,
            )
            .ok()
                == Some(serde_json::json!({ "greeting": "hi", "key": SECRET }))
        },
    );
}

/// On-demand revalidation across a three-node zone: `ctx.revalidateTag` and
/// `ctx.revalidate` on the node that runs the function mark the tag or the
/// path stale on every node of the zone (passed on, signed), and each
/// regenerates its page; a tag no page has changes nothing.
#[test]
fn revalidation_by_tag_and_path_reaches_every_node_of_the_zone() {
    let nodes = start_in_regions(&["eu", "eu", "eu"], |_| Vec::new());
    let client = tempfile::tempdir().expect("tmp");
    for node in &nodes {
        deploy_ok(
            node,
            client.path(),
            "render",
            &scripts_dir().join("render.js"),
            &[],
        );
        deploy_cdn(
            node,
            client.path(),
            "blog",
            &["--origin", "fn:render", "--replicas", "3"],
        );
    }
    let page = |i: usize, path: &str| {
        let (status, head, body) = curl_get(&format!("{}/cdn/blog{path}", nodes[i].url()), &[]);
        (status, head, String::from_utf8(body).expect("utf-8"))
    };
    for i in 0..3 {
        within(Duration::from_secs(30), "the zone on every node", || {
            page(i, "/blog/a").0 == 200
        });
    }
    let before: Vec<String> = (0..3).map(|i| page(i, "/blog/a").2).collect();
    for (i, b) in before.iter().enumerate() {
        assert_eq!(&page(i, "/blog/a").2, b, "cached on node {i}");
    }
    let (status, _, _) = curl_get(
        &format!("{}/fn/render/revalidate?tag=nothing", nodes[0].url()),
        &[],
    );
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(500));
    for (i, b) in before.iter().enumerate() {
        assert_eq!(&page(i, "/blog/a").2, b, "an unknown tag changed node {i}");
    }
    let (status, _, _) = curl_get(
        &format!("{}/fn/render/revalidate?tag=blog", nodes[1].url()),
        &[],
    );
    assert_eq!(status, 200);
    for (i, b) in before.iter().enumerate() {
        within(Duration::from_secs(30), "regenerated on every node", || {
            &page(i, "/blog/a").2 != b
        });
    }
    // By path, asked through the third node: that page on every node, and
    // not another one.
    let home: Vec<String> = (0..3).map(|i| page(i, "/home").2).collect();
    let before: Vec<String> = (0..3).map(|i| page(i, "/blog/a").2).collect();
    let (status, _, _) = curl_get(
        &format!("{}/fn/render/revalidate?path=/blog/a", nodes[2].url()),
        &[],
    );
    assert_eq!(status, 200);
    for (i, b) in before.iter().enumerate() {
        within(
            Duration::from_secs(30),
            "regenerated by path on every node",
            || &page(i, "/blog/a").2 != b,
        );
    }
    for (i, h) in home.iter().enumerate() {
        assert_eq!(&page(i, "/home").2, h, "another path changed on node {i}");
    }
}

/// A WebAssembly function: a component exporting `wasi:http/incoming-handler`
/// (built from JavaScript by componentize-js, from npm, with a JavaScript
/// engine inside), deployed from its `.wasm`, answers over HTTP; a request
/// that loops is stopped at the CPU limit (an epoch interrupt), one that
/// grows memory past the limit is stopped there, and the next request to
/// it and to another function succeeds.
#[test]
fn a_webassembly_component_serves_requests_within_its_limits() {
    let componentize = PathBuf::from(std::env::var("TESSERA_COMPONENTIZE").expect(
        "TESSERA_COMPONENTIZE is not set: run the tests with scripts/test, which installs componentize-js from npm",
    ));
    let wit = std::env::var("TESSERA_WASI_HTTP_WIT").expect("TESSERA_WASI_HTTP_WIT");
    let dir = tempfile::tempdir().expect("tmp");
    let component = dir.path().join("handler.wasm");
    let out = Command::new(&componentize)
        .arg(scripts_dir().join("wasm/handler.js"))
        .args(["--wit", &wit, "--world-name", "proxy", "-o"])
        .arg(&component)
        .output()
        .expect("componentize-js");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // (Outgoing requests may reach loopback here: the node itself answers them.)
    let (node, _config) = node_for_functions("");
    let client = dir.path().join("client");
    deploy_ok(
        &node,
        &client,
        "wasm",
        &component,
        &[
            "--memory-mb",
            "64",
            "--cpu-ms",
            "200",
            "--wall-ms",
            "10000",
            "--subrequests",
            "1",
        ],
    );
    deploy_ok(&node, &client, "other", &scripts_dir().join("json.js"), &[]);
    let get = |path: &str| curl_get(&format!("{}/fn/{path}", node.url()), &[]);
    let (status, head, body) = get("wasm/hello");
    assert_eq!(status, 200, "{head} {}", String::from_utf8_lossy(&body));
    assert_eq!(body, b"Hello from WebAssembly at /hello\n");
    assert_eq!(header(&head, "x-engine"), Some("wasm"));
    let (status, _, body) = curl_get(
        &format!("{}/fn/wasm/echo", node.url()),
        &["--data-binary", "some bytes"],
    );
    assert_eq!(
        (status, body.as_slice()),
        (201, &b"echo POST 10 SOME BYTES"[..])
    );
    // An outgoing request goes through the node's fetch, within the
    // function's subrequest limit.
    let (status, _, body) = get(&format!("wasm/fetch?url=http://{}/healthz", node.addr));
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (200, "fetched 200 ok; again: refused")
    );
    assert!(node.metric("tessera_function_subrequests_total{service=\"function\"}") >= 1);
    // At its own host too, and over HTTP/3.
    let port = node.addr.port();
    let (status, _, _) = curl_get(
        &format!("http://wasm.fn.localhost:{port}/"),
        &["--resolve", &format!("wasm.fn.localhost:{port}:127.0.0.1")],
    );
    assert_eq!(status, 200);
    let r = aioquic_request(&format!("https://127.0.0.1:{port}/fn/wasm/h3"), "GET", &[]);
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"Hello from WebAssembly at /h3\n"[..])
    );
    for (path, limit) in [
        ("loop", "CPU time limit exceeded (200 ms per request)"),
        ("memory", "memory limit exceeded (64 MiB)"),
    ] {
        let (status, _, body) = get(&format!("wasm/{path}"));
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 503, "{path}: {body}");
        assert!(body.contains(limit), "{path}: {body}");
        assert_eq!(
            get("wasm/after").2,
            b"Hello from WebAssembly at /after\n",
            "after {path}"
        );
        assert_eq!(get("other/api").0, 200, "another function after {path}");
    }
    assert!(node.metric("tessera_function_wasm_instances_total{service=\"function\"}") >= 6);
    // A core module is not a component: the node refuses it, the CLI says
    // why, and the component deployed before keeps serving.
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").expect("write");
    let out = deploy_function(&node, &client, "wasm", &core, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused it"), "{err}");
    assert_eq!(get("wasm/still").2, b"Hello from WebAssembly at /still\n");
}
