//! Test harness: real `tessera` processes on loopback, raw sockets and real clients.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tessera");

/// A running node; killed (SIGKILL) when dropped.
pub struct Node {
    pub child: Option<Child>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub extra: Vec<String>,
    /// Extra environment for the node process.
    pub env: Vec<(String, String)>,
}

/// A port on 127.0.0.1 free for both TCP and UDP, for a server to bind.
pub fn free_addr() -> SocketAddr {
    free_addr_on("127.0.0.1")
}

/// A port free for both TCP and UDP on `ip` (a node serves both on one port).
///
/// Ports come from below the kernel's ephemeral range, where port-0 binds and
/// outgoing connections take theirs, one after another within a test binary,
/// each checked free. A port from the ephemeral range can be handed out again,
/// to a test running at the same time, before the server it was meant for binds
/// it; that server then fails to bind, and the other one answers in its place.
#[allow(dead_code)]
pub fn free_addr_on(ip: &str) -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768)
        .min(65_535);
    if high < LOW + 1_000 {
        // No room below the ephemeral range: let the kernel choose.
        loop {
            let l = TcpListener::bind((ip, 0)).expect("bind");
            let addr = l.local_addr().expect("addr");
            if std::net::UdpSocket::bind(addr).is_ok() {
                return addr;
            }
        }
    }
    let ip: std::net::IpAddr = ip.parse().expect("an IP address");
    let span = high - LOW;
    // Test binaries run one after another; each starts somewhere else.
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % span) as u16;
        let addr = SocketAddr::new(ip, port);
        if TcpListener::bind(addr).is_ok() && std::net::UdpSocket::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free port on {ip} below {high}");
}

impl Node {
    /// Starts a node at `addr` with a fresh data dir and `extra` flags.
    #[allow(dead_code)]
    pub fn start_at(addr: SocketAddr, extra: &[&str]) -> Node {
        Self::start_at_with_env(addr, extra, &[])
    }

    /// Starts a node at `addr` with extra environment variables.
    #[allow(dead_code)]
    pub fn start_at_with_env(addr: SocketAddr, extra: &[&str], env: &[(&str, &str)]) -> Node {
        let mut node = Self::prepare_at(addr, extra);
        node.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        node.spawn();
        node
    }

    /// A node at `addr` with a fresh data dir, not started yet ([`Node::spawn`]).
    pub fn prepare_at(addr: SocketAddr, extra: &[&str]) -> Node {
        let tmp = tempfile::tempdir().expect("tempdir");
        Node {
            child: None,
            addr,
            data_dir: tmp.path().join("data"),
            _tmp: Some(tmp),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
        }
    }

    /// Starts a node with a fresh data dir and `extra` flags.
    pub fn start(extra: &[&str]) -> Node {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        Self::start_in(data_dir, Some(tmp), extra)
    }

    pub fn start_in(data_dir: PathBuf, tmp: Option<tempfile::TempDir>, extra: &[&str]) -> Node {
        let mut node = Node {
            child: None,
            addr: free_addr_on("127.0.0.1"),
            data_dir,
            _tmp: tmp,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
        };
        // A port found free can be taken before the node binds it (another
        // test's client picks it as its own): then the node exits at once, and
        // it starts again on another port. Any other failure is the test's.
        for _ in 0..4 {
            node.start_child();
            match node.ready_or_exit() {
                Ok(()) => return node,
                Err(status) => {
                    eprintln!(
                        "tessera exited during start ({status}) on {}; another port",
                        node.addr
                    );
                    node.addr = free_addr_on("127.0.0.1");
                }
            }
        }
        node.spawn();
        node
    }

    pub fn spawn(&mut self) {
        self.start_child();
        if let Err(status) = self.ready_or_exit() {
            panic!("tessera exited during start: {status}");
        }
    }

    fn start_child(&mut self) {
        // Two cores unless the test names its own count.
        let cores: &[&str] = if self.extra.iter().any(|a| a == "--cores") {
            &[]
        } else {
            &["--cores", "2"]
        };
        let child = Command::new(BIN)
            .arg("run")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(self.addr.to_string())
            .args(cores)
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(
                "RUST_LOG",
                std::env::var("TESSERA_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tessera");
        self.child = Some(child);
    }

    pub fn wait_ready(&mut self) {
        if let Err(status) = self.ready_or_exit() {
            panic!("tessera exited during start: {status}");
        }
    }

    /// Waits until the node answers `/healthz`; Err: it exited first.
    fn ready_or_exit(&mut self) -> Result<(), std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok((200, _, _)) = try_request(
                self.addr,
                b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            ) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(status);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("tessera did not become ready on {}", self.addr);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("running")
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts on the same data dir and port.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn request(&self, raw: &[u8]) -> (u16, String, Vec<u8>) {
        try_request(self.addr, raw).expect("request")
    }

    pub fn get(&self, path: &str) -> (u16, String, Vec<u8>) {
        self.request(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    }

    /// A keep-alive connection to the node, reads timing out after 30 s.
    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        s
    }

    /// Uploads with `tessera put` and returns the hash it printed.
    pub fn put_cli(&self, file: &Path) -> String {
        let out = tessera(&["put", "--node", &self.url(), file.to_str().expect("utf8")]);
        assert!(
            out.status.success(),
            "put failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("utf8");
        text.split_whitespace()
            .next()
            .expect("hash printed")
            .to_string()
    }

    pub fn put_bytes(&self, data: &[u8]) -> String {
        let mut req = format!(
            "POST /blobs HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            data.len()
        )
        .into_bytes();
        req.extend_from_slice(data);
        let (status, _, body) = self.request(&req);
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["size"].as_u64(), Some(data.len() as u64));
        v["hash"].as_str().expect("hash").to_string()
    }

    pub fn metric(&self, name: &str) -> u64 {
        let (_, _, body) = self.get("/metrics");
        let text = String::from_utf8(body).expect("utf8");
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn tessera(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        // `tessera get` keeps a client key: one per test process, not in $HOME.
        .env(
            "TESSERA_CLIENT_DIR",
            std::env::temp_dir().join(format!("tessera-test-client-{}", std::process::id())),
        )
        .output()
        .expect("run tessera")
}

/// Sends one raw request on a new connection and reads one response.
pub fn try_request(addr: SocketAddr, raw: &[u8]) -> std::io::Result<(u16, String, Vec<u8>)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    // A server may answer (413, 507) and stop reading before the body is all sent;
    // the answer is still there to read.
    let _ = s.write_all(raw);
    read_response(&mut s)
}

/// Reads one response (Content-Length framed) from a stream.
/// A GET over the keep-alive connection `s`, which stays open.
pub fn get_on(s: &mut TcpStream, path: &str) -> (u16, String, Vec<u8>) {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .expect("write");
    read_response(s).expect("answer")
}

pub fn read_response(s: &mut TcpStream) -> std::io::Result<(u16, String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    let len: usize = header(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok((status, head, body))
}

pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

pub fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "60"])
        .args(args)
        .output()
        .expect("curl is installed (apt-get install curl)")
}

/// A GET with curl (`extra` flags before the URL): the status, the response
/// head as text, and the body.
pub fn curl_get(url: &str, extra: &[&str]) -> (u16, String, Vec<u8>) {
    let mut args = vec!["-D", "-", "-o", "-"];
    args.extend_from_slice(extra);
    args.push(url);
    let out = curl(&args);
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = out.stdout;
    let split = text
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    let head = String::from_utf8_lossy(&text[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, head, text[split..].to_vec())
}

/// `tessera get` of `hash` from `node` into `out` as the client whose key is in
/// `client_dir` (it signs a delivery receipt afterwards).
pub fn get_as(node: &Node, client_dir: &Path, hash: &str, out: &Path) {
    let status = Command::new(BIN)
        .args(["get", "--node", &node.url(), hash, "-o"])
        .arg(out)
        .env("TESSERA_CLIENT_DIR", client_dir)
        .status()
        .expect("tessera get");
    assert!(status.success());
}

/// aioquic's example HTTP/3 client (an independent implementation), installed
/// by `scripts/test`.
pub fn h3_client() -> PathBuf {
    let path = std::env::var_os("TESSERA_H3_CLIENT").map(PathBuf::from).expect(
        "TESSERA_H3_CLIENT is not set: run the tests with ./scripts/test, which installs aioquic's HTTP/3 client",
    );
    assert!(
        path.exists(),
        "{} missing: run ./scripts/test",
        path.display()
    );
    path
}

/// Runs aioquic's example client against `urls` on one connection, saving each
/// response body into `out` (named after the last path segment).
pub fn aioquic_get(out: &Path, urls: &[String], data: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new("python3");
    cmd.arg(h3_client())
        .args(["--insecure", "--output-dir"])
        .arg(out);
    if let Some(d) = data {
        cmd.args(["-d", d]);
    }
    // Extra client flags for debugging, e.g. "--quic-log /tmp/qlog -v".
    if let Ok(extra) = std::env::var("TESSERA_H3_CLIENT_ARGS") {
        cmd.args(extra.split_whitespace());
    }
    let output = cmd.args(urls).output().expect("python3");
    assert!(
        output.status.success(),
        "aioquic client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// One GET over HTTP/3 with aioquic, response head included: the status line
/// and headers as text (`:status: 307`, `location: …`), then the body.
pub fn aioquic_with_head(url: &str) -> String {
    let dir = tempfile::tempdir().expect("tmp");
    let output = Command::new("python3")
        .arg(h3_client())
        .args(["--insecure", "--include", "--output-dir"])
        .arg(dir.path())
        .arg(url)
        .output()
        .expect("python3");
    assert!(
        output.status.success(),
        "aioquic client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let name = url.rsplit('/').next().unwrap_or("index.html");
    String::from_utf8_lossy(&std::fs::read(dir.path().join(name)).expect("saved")).into_owned()
}

/// Gossip settings that make cluster tests quick: probe every 300 ms, down
/// 1.5 s after a suspicion.
pub const FAST_GOSSIP: &[&str] = &["--gossip-probe-ms", "300", "--gossip-down-after-ms", "1500"];

/// A cluster on 127.0.0.1…n, node `i` in `regions[i]` with `extra(i)` flags
/// more, fast gossip, each joining the first; returned once every node sees
/// all of them alive and verified.
#[allow(dead_code)]
pub fn start_in_regions(regions: &[&str], extra: impl Fn(usize) -> Vec<String>) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    for (i, region) in regions.iter().enumerate() {
        let addr = free_addr_on(&format!("127.0.0.{}", i + 1));
        let mut args: Vec<String> = FAST_GOSSIP.iter().map(|s| s.to_string()).collect();
        args.extend(["--region".into(), region.to_string()]);
        args.extend(extra(i));
        if let Some(first) = nodes.first() {
            args.extend(["--join".into(), first.addr.to_string()]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        nodes.push(Node::start_at(addr, &refs));
    }
    within(Duration::from_secs(30), "every member alive", || {
        nodes.iter().all(|n| alive_verified(n) == nodes.len())
    });
    nodes
}

/// `tessera cluster members --json` as `node` sees the cluster.
pub fn members(node: &Node) -> Vec<serde_json::Value> {
    let out = tessera(&["cluster", "members", "--json", "--node", &node.url()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// Members `observer` sees alive, with a verified record.
pub fn alive_verified(observer: &Node) -> usize {
    members(observer)
        .iter()
        .filter(|m| m["state"] == "alive" && m["verified"] == true)
        .count()
}

/// Waits until `cond` holds, up to `limit` (a functional bound, generous for a
/// loaded machine, not a speed measurement); returns how long it took.
pub fn within(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// An HTTP/3 response as aioquic saw it.
pub struct H3Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl H3Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/3 request with aioquic (`tests/common/h3_request.py`, built on the
/// example client's protocol class), with any method and request headers.
pub fn aioquic_request(url: &str, method: &str, headers: &[(&str, &str)]) -> H3Response {
    aioquic_send(url, method, headers, None)
}

/// The same with a request body.
pub fn aioquic_send(
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> H3Response {
    h3_client();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/h3_request.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg(url).args(["-X", method]);
    for (name, value) in headers {
        cmd.arg("-H").arg(format!("{name}: {value}"));
    }
    let body_file = tempfile::NamedTempFile::new().expect("tmp");
    if let Some(body) = body {
        std::fs::write(body_file.path(), body).expect("write body");
        cmd.arg("--data-file").arg(body_file.path());
    }
    let out = cmd.output().expect("python3");
    assert!(
        out.status.success(),
        "aioquic request failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("json from h3_request.py");
    let hex = v["body"].as_str().expect("body");
    let body = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    H3Response {
        status: v["status"].as_u64().expect("status") as u16,
        headers: v["headers"]
            .as_array()
            .expect("headers")
            .iter()
            .map(|h| {
                (
                    h[0].as_str().expect("name").to_string(),
                    h[1].as_str().expect("value").to_string(),
                )
            })
            .collect(),
        body,
    }
}

/// The test origin (`tests/common/origin.py`): chosen caching headers, delays,
/// variants, revalidation, and a count of what it served.
#[allow(dead_code)]
pub struct Origin {
    pub child: std::process::Child,
    pub port: u16,
    pub tls: bool,
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[allow(dead_code)]
impl Origin {
    pub fn start() -> Origin {
        Origin::start_with(&[])
    }

    /// The same over HTTPS, with this certificate and key (PEM files).
    pub fn start_tls(cert: &Path, key: &Path) -> Origin {
        Origin::start_with(&[cert, key])
    }

    fn start_with(tls: &[&Path]) -> Origin {
        let port = free_addr().port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/origin.py");
        let child = spawn_ready(
            Command::new("python3")
                .arg(script)
                .arg(port.to_string())
                .args(tls),
            "python3 origin",
        );
        Origin {
            child,
            port,
            tls: !tls.is_empty(),
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Requests it served for `path`.
    pub fn count(&self, path: &str) -> u64 {
        let out = curl(&["-sSk", &format!("{}/count", self.url())]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("counts");
        v[path].as_u64().unwrap_or(0)
    }
}

/// `tessera deploy cdn --name NAME ARGS --node NODE` as the client whose key
/// is in `client`; asserts it succeeded.
#[allow(dead_code)]
pub fn deploy_cdn(node: &Node, client: &Path, name: &str, args: &[&str]) {
    let out = Command::new(BIN)
        .args(["deploy", "cdn", "--name", name])
        .args(args)
        .args(["--node", &node.url()])
        .env("TESSERA_CLIENT_DIR", client)
        .output()
        .expect("tessera deploy");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Nodes on 127.0.0.1…n with a replicated ledger: each stakes `stakes[i]`,
/// the first `genesis` form the genesis committee; `ledger` is more of the
/// `[ledger]` section, `more` more of the config file after it. Started,
/// not yet registered.
#[allow(dead_code)]
pub fn ledger_committee(
    stakes: &[u64],
    genesis: usize,
    epoch_ms: u64,
    ledger: &str,
    more: &str,
    env: &[(usize, &str, &str)],
) -> Vec<Node> {
    // Keys first: the genesis committee names them.
    let mut nodes: Vec<Node> = (1..=stakes.len())
        .map(|i| Node::prepare_at(free_addr_on(&format!("127.0.0.{i}")), &[]))
        .collect();
    for n in &nodes {
        std::fs::create_dir_all(&n.data_dir).expect("mkdir");
        controlplane::NodeKey::load_or_create(&n.data_dir).expect("key");
    }
    let ids = node_ids(&nodes);
    let genesis = ids[..genesis]
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let seed = nodes[0].addr.to_string();
    for (n, stake) in nodes.iter_mut().zip(stakes) {
        let config = n.data_dir.with_file_name("node.toml");
        std::fs::write(
            &config,
            format!(
                "[ledger]\ngenesis = [{genesis}]\nepoch_ms = {epoch_ms}\nunit_ms = 100\n\
                 dev_deposits = true\nstake = {stake}\nsubmit_ms = 300\n{ledger}\n{more}"
            ),
        )
        .expect("config");
        n.extra = vec!["--config".into(), config.display().to_string()];
        n.extra.extend(FAST_GOSSIP.iter().map(|s| s.to_string()));
        n.extra.extend(["--join".into(), seed.clone()]);
    }
    for (i, n) in nodes.iter_mut().enumerate() {
        n.env = env
            .iter()
            .filter(|(k, _, _)| *k == i)
            .map(|(_, k, v)| (k.to_string(), v.to_string()))
            .collect();
        n.spawn();
    }
    nodes
}

/// The node ids of `nodes`, from their key files.
#[allow(dead_code)]
pub fn node_ids(nodes: &[Node]) -> Vec<String> {
    nodes
        .iter()
        .map(|n| {
            controlplane::NodeKey::load(&n.data_dir)
                .expect("key")
                .id()
                .to_string()
        })
        .collect()
}

/// Spawns `cmd` with its stdout piped and waits for its first line, which
/// must be `ready` (the test helpers' scripts print it once they listen).
pub fn spawn_ready(cmd: &mut Command, what: &str) -> Child {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(line.trim(), "ready", "{what}");
    child
}

/// The indexes of the nodes deployment `name` is placed on, as the first
/// live node sees it; empty while it is not listed.
pub fn placed_on(nodes: &[Node], name: &str) -> Vec<usize> {
    let Some(live) = nodes.iter().find(|n| n.child.is_some()) else {
        return Vec::new();
    };
    let (status, _, body) = curl_get(&format!("{}/deployments/{name}", live.url()), &[]);
    if status != 200 {
        return Vec::new();
    }
    let d: serde_json::Value = serde_json::from_slice(&body).expect("json");
    (0..nodes.len())
        .filter(|&i| {
            d["placement"].as_array().is_some_and(|p| {
                p.iter()
                    .any(|n| n["addr"].as_str() == Some(nodes[i].addr.to_string().as_str()))
            })
        })
        .collect()
}

/// `tessera ARGS --node URL` as the client whose key is in `client`.
pub fn cli(client: &Path, node: &Node, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .args(["--node", &node.url()])
        .env("TESSERA_CLIENT_DIR", client)
        .output()
        .expect("tessera")
}

/// quiche's HTTP/3 client settings for the tests that drive a QUIC
/// connection themselves (to migrate it, or to pause it): the node's
/// certificate is not checked, and each stream may have `stream_window`
/// bytes in flight towards the client.
pub fn quiche_h3_client_config(idle_timeout_ms: u64, stream_window: u64) -> quiche::Config {
    let mut config = quiche::Config::new(quiche::PROTOCOL_VERSION).expect("config");
    config
        .set_application_protos(quiche::h3::APPLICATION_PROTOCOL)
        .expect("alpn");
    config.verify_peer(false);
    config.set_max_idle_timeout(idle_timeout_ms);
    config.set_initial_max_data(64 << 20);
    config.set_initial_max_stream_data_bidi_local(stream_window);
    config.set_initial_max_stream_data_bidi_remote(stream_window);
    config.set_initial_max_stream_data_uni(1 << 20);
    config.set_initial_max_streams_bidi(16);
    config.set_initial_max_streams_uni(16);
    config
}

/// HTTP/3 over an established quiche connection, with default settings.
pub fn quiche_h3(conn: &mut quiche::Connection) -> quiche::h3::Connection {
    quiche::h3::Connection::with_transport(conn, &quiche::h3::Config::new().expect("h3 config"))
        .expect("h3")
}

/// Sends `GET path` on a new request stream; its stream ID.
pub fn quiche_get(
    h3: &mut quiche::h3::Connection,
    conn: &mut quiche::Connection,
    path: &str,
) -> u64 {
    let headers = [
        quiche::h3::Header::new(b":method", b"GET"),
        quiche::h3::Header::new(b":scheme", b"https"),
        quiche::h3::Header::new(b":authority", b"node"),
        quiche::h3::Header::new(b":path", path.as_bytes()),
    ];
    h3.send_request(conn, &headers, true).expect("request")
}
