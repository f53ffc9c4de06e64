//! Functions as a [`Service`]: the functions from the network's deployments,
//! each script compiled once, every request run on the service's worker
//! pool (never on a data-plane core) in a warm isolate of the worker thread
//! that took it.
//!
//! The way of a request:
//! - **On the core** ([`Service::decide`]): the function is the host's label
//!   under the node's suffix (`api.fn.localhost`) or the first segment of
//!   the path form (`/fn/api/...`, which the script sees as `/...`). An
//!   unknown name is answered `404` at once; a known one goes to the pool.
//! - **Placement**: a node the function is not placed on passes the
//!   request to the nearest node it is placed on (its KV is there), and
//!   runs it itself only if none of them answers.
//! - **On the pool** ([`Service::handle`]): the body is read (refused `413`
//!   past the function's request limit), the script runs (see
//!   [`crate::js`]); a streamed body is pumped on the same worker after the
//!   head is sent, then `ctx.waitUntil` work is settled. A limit passed is
//!   `503` naming it, a script error `500` (the message in the node's log
//!   with the function's name).
//! - **The watcher** (a thread): for every function deployment, the script
//!   blob is fetched (from peers if need be; verified as every blob is),
//!   pinned on the nodes placement chose, and compiled. A spec or script
//!   that does not compile is refused and logged once; the last good
//!   version keeps serving.
//! - **Metering**: requests, CPU time, body bytes and limits hit per
//!   function, in `/metrics` and in the usage the node reports to the
//!   ledger ([`Functions::usage_units`]), which bills the owner.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Deserialize;
use service_api::{
    strip_port, BlobReply, Body, Decision, DeploymentName, Hash, Method, Mount, Node, OwnedRequest,
    PoolConfig, Reply, Request, RequestBody, Service, Status,
};

use crate::js::{self, Failure, Host, Incoming, Script, SubRequest, SubResponse};
use crate::kv::{Kv, Write};
use crate::{
    hex, FunctionSpec, Limit, MAX_COMPONENT_BYTES, MAX_SCRIPT_BYTES, UNITS_PER_CPU_MS,
    UNITS_PER_REQUEST,
};

/// `[services.function]` in the node's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FunctionsConfig {
    /// Functions are served at `{name}.{host_suffix}`.
    pub host_suffix: String,
    /// How often the watcher looks at the deployments, ms.
    pub watch_ms: u64,
    /// Worker threads (each keeps its own warm isolates).
    pub workers: usize,
    pub queue: usize,
    /// Whether `fetch()` may reach loopback, private and link-local
    /// addresses (the node's own network). Off by default: a function
    /// could otherwise probe the operator's network.
    pub allow_private_fetch: bool,
    /// The largest subrequest response body a script may read, MiB.
    pub max_subrequest_mb: u64,
}

impl Default for FunctionsConfig {
    fn default() -> Self {
        FunctionsConfig {
            host_suffix: "fn.localhost".into(),
            watch_ms: 250,
            workers: std::thread::available_parallelism().map_or(4, |n| n.get().max(2)),
            queue: 4096,
            allow_private_fetch: false,
            max_subrequest_mb: 32,
        }
    }
}

/// What runs a function.
#[derive(Clone)]
enum Code {
    Js(Arc<Script>),
    Wasm(Arc<crate::wasm::WasmScript>),
}

/// What a function used on this node since it started.
#[derive(Default)]
pub struct Usage {
    pub requests: AtomicU64,
    pub cpu_us: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    pub limits: AtomicU64,
    pub cold_starts: AtomicU64,
}

/// A function as this node knows it.
struct Deployed {
    deployment_version: u64,
    spec_hash: Hash,
    name: Arc<str>,
    limits: crate::Limits,
    /// BLAKE3 of the script or component.
    code: Hash,
    engine: Code,
    usage: Arc<Usage>,
    /// Placement chose this node.
    here: bool,
    /// The other placed nodes, nearest first.
    elsewhere: Vec<std::net::SocketAddr>,
    /// Its secrets, opened (for a node that joined after the deploy and
    /// asks for a box of its own).
    secrets: Arc<BTreeMap<String, String>>,
}

struct Counters {
    kv_sent: Arc<AtomicU64>,
    kv_failed: Arc<AtomicU64>,
    kv_applied: Arc<AtomicU64>,
    kv_pending: Arc<AtomicU64>,
    proxied: Arc<AtomicU64>,
    blob_answers: Arc<AtomicU64>,
    delta_fetched: Arc<AtomicU64>,
    delta_reused: Arc<AtomicU64>,
    wasm_instances: Arc<AtomicU64>,
    wasm_instantiation_ns: Arc<AtomicU64>,
    functions: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    fetched: Arc<AtomicU64>,
    subrequests: Arc<AtomicU64>,
}

pub struct Functions {
    node: Node,
    config: FunctionsConfig,
    dot_suffix: String,
    functions: ArcSwap<HashMap<String, Arc<Deployed>>>,
    /// Specs refused (logged once), by spec hash.
    refused: Mutex<HashSet<Hash>>,
    /// The last refusal per function (spec hash, why), for its status.
    refusals: ArcSwap<HashMap<String, (String, String)>>,
    /// Script blobs this service pinned.
    pins: Mutex<HashSet<Hash>>,
    host: Arc<dyn Host>,
    revalidator: Arc<std::sync::OnceLock<Revalidator>>,
    kv: Arc<Kv>,
    /// For requests passed to the function's own nodes.
    proxy_agent: ureq::Agent,
    counters: Counters,
    /// Usage by function name; kept across redeployments.
    usage: Mutex<HashMap<String, Arc<Usage>>>,
}

/// `POST /fn/_kv/{BLAKE3 of the body}`: a KV write from another node of the
/// function (signed by that node; the body's hash in the signed path).
const KV_PREFIX: &str = "/fn/_kv/";
/// KV writes waiting to be sent on; beyond it a write stays local.
const REPLICATION_QUEUE: usize = 65_536;

/// How often writes in the KV outbox are sent again.
const OUTBOX_RETRY: Duration = Duration::from_secs(2);
/// Writes from the outbox tried per round.
const OUTBOX_BATCH: usize = 512;

/// Sends KV writes to the function's other nodes; one a node does not take
/// goes to the outbox ([`Kv::outbox_push`]) and is sent again every
/// [`OUTBOX_RETRY`] until it is taken.
struct Replicator {
    node: Node,
    kv: Arc<Kv>,
    agent: ureq::Agent,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    pending: Arc<AtomicU64>,
    /// Per function, the other nodes it ran on lately and when they were
    /// last seen placed: a node that is down drops out of the placement,
    /// and the writes it misses wait for it in the outbox. (In memory: a
    /// restart forgets who was away, not what waits for them.)
    recent: Mutex<HashMap<String, HashMap<std::net::SocketAddr, u64>>>,
}

impl Replicator {
    /// The thread's loop: writes as they come, the outbox between them.
    fn run(&self, writes: flume::Receiver<Write>) {
        let mut last_retry = std::time::Instant::now();
        self.pending.store(self.kv.outbox_len(), Ordering::Relaxed);
        loop {
            match writes.recv_timeout(OUTBOX_RETRY) {
                Ok(w) => self.send(&w),
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => return,
            }
            if last_retry.elapsed() >= OUTBOX_RETRY {
                self.retry();
                last_retry = std::time::Instant::now();
            }
        }
    }

    /// One signed POST of a write's JSON to `to`: taken (true), refused
    /// for good (400: it would never be taken; false), or not taken now
    /// (None): not reached, or a node that does not yet know this one or
    /// the function (401, 403, 404 right after it started).
    fn post(&self, to: &str, body: &[u8]) -> Option<bool> {
        let path = format!("{KV_PREFIX}{}", hex(blake3::hash(body).as_bytes()));
        let mut b = http::Request::post(format!("http://{to}{path}"))
            .header("content-type", "application/json");
        for (n, v) in self.node.cluster.sign_request("POST", &path) {
            b = b.header(n, v);
        }
        let sent = b
            .body(body.to_vec())
            .map_err(|e| e.to_string())
            .and_then(|r| self.agent.run(r).map_err(|e| e.to_string()));
        match sent {
            Ok(r) if r.status() == 200 => Some(true),
            Ok(r) if r.status() == 400 => {
                tracing::info!(%to, status = r.status().as_u16(), "KV write refused by the node");
                Some(false)
            }
            Ok(r) => {
                tracing::debug!(%to, status = r.status().as_u16(), "KV write not taken");
                None
            }
            Err(e) => {
                tracing::debug!(%to, "KV write not sent: {e}");
                None
            }
        }
    }

    fn send(&self, w: &Write) {
        let Some(inst) = self
            .node
            .deployments
            .of("function")
            .into_iter()
            .find(|i| i.name == w.function)
        else {
            return;
        };
        let Ok(body) = serde_json::to_vec(w) else {
            return;
        };
        let now = crate::kv::now_ms();
        let away: Vec<std::net::SocketAddr> = {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            let seen = recent.entry(w.function.clone()).or_default();
            for to in &inst.elsewhere {
                seen.insert(*to, now);
            }
            seen.retain(|_, at| now.saturating_sub(*at) <= crate::kv::OUTBOX_MAX_AGE_MS);
            seen.keys()
                .filter(|a| !inst.elsewhere.contains(a))
                .copied()
                .collect()
        };
        for to in inst
            .elsewhere
            .iter()
            .map(|a| (a, true))
            .chain(away.iter().map(|a| (a, false)))
        {
            let (to, placed) = (to.0.to_string(), to.1);
            let answer = if placed { self.post(&to, &body) } else { None };
            match answer {
                Some(true) => {
                    self.sent.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Some(false) => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                None => {}
            }
            match self.kv.outbox_push(&to, &body) {
                Ok(dropped) => {
                    if dropped {
                        self.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            "KV outbox full: the oldest write waiting for a node was dropped"
                        );
                    } else {
                        self.pending.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%to, "a KV write the node did not take is lost: {e}");
                }
            }
        }
    }

    /// Sends the outbox's writes again: a node that takes one gets the rest
    /// of its queue in this round, one not reached is asked no more until
    /// the next. A write the node refuses (it no longer runs the function),
    /// or older than a day, is dropped. (Placement is not consulted: a node
    /// that is down drops out of it, which is exactly when its writes must
    /// wait.)
    fn retry(&self) {
        let batch = self.kv.outbox(OUTBOX_BATCH);
        if batch.is_empty() {
            return;
        }
        let now = crate::kv::now_ms();
        let mut done = Vec::new();
        let mut down: HashSet<String> = HashSet::new();
        for p in batch {
            if now.saturating_sub(p.since_ms) > crate::kv::OUTBOX_MAX_AGE_MS {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(to = %p.to, "a KV write waited a day for its node: dropped");
                done.push(p.seq);
                continue;
            }
            if down.contains(&p.to) {
                continue;
            }
            match self.post(&p.to, &p.body) {
                Some(taken) => {
                    let counter = if taken { &self.sent } else { &self.failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                    done.push(p.seq);
                }
                None => {
                    down.insert(p.to);
                }
            }
        }
        if let Err(e) = self.kv.outbox_remove(&done) {
            tracing::warn!("{e}");
        }
        self.pending.store(self.kv.outbox_len(), Ordering::Relaxed);
    }
}

/// Sent with a request passed to the function's own node: run there, not
/// passed on again.
const HOP: &str = "x-tessera-fn-hop";

/// Sent with an origin request the CDN revalidates: the blob (hex) of the
/// answer it holds for that URL. A node passing the request to the
/// function's node keeps it and signs the request; there, a cacheable answer
/// of at least [`BLOB_MIN_BYTES`] is stored and answered as its hash
/// ([`BLOB`]) with no body, and the asking node fetches only the 16 KiB
/// groups that differ from the blob it holds (`ClusterView::fetch_delta`).
/// A page rendered to the same bytes moves nothing but the hash.
pub const BASE_HEADER: &str = "x-tessera-fn-base";

/// The answer's blob (hex), sent instead of its body (see [`BASE_HEADER`]).
const BLOB: &str = "x-tessera-fn-blob";

/// Smaller answers are sent whole: below one chunk group there is nothing
/// to reuse, and a round trip more would cost more than the bytes.
const BLOB_MIN_BYTES: usize = 16 << 10;

/// `GET /fn/_secrets/{name}/{spec hash}`: a function's secrets sealed to the
/// member asking (signed).
const SECRETS_PREFIX: &str = "/fn/_secrets/";

/// Nodes a node that joined after a deploy asks for its secrets, per round.
const SECRETS_ASKED: usize = 8;

/// `GET /fn/_status/{name}`: the script this node runs for the name.
const STATUS_PREFIX: &str = "/fn/_status/";

fn text(status: Status, msg: &str) -> Reply {
    Reply::text(status, msg).header("Cache-Control", "no-store")
}

/// What the scripts reach through the engine: `fetch`, KV, the log.
/// What `ctx.revalidate` / `ctx.revalidateTag` reach: (function, "path" or
/// "tag", value) → how many cached answers were marked stale. The binary
/// connects it to the CDN, for zones whose origin is the function.
pub type Revalidator = Arc<dyn Fn(&str, &str, &str) -> u64 + Send + Sync>;

struct NodeHost {
    revalidator: Arc<std::sync::OnceLock<Revalidator>>,
    agent: ureq::Agent,
    kv: Arc<Kv>,
    /// Writes to send to the functions' other nodes.
    replicate: flume::Sender<Write>,
    allow_private: bool,
    max_body: u64,
    subrequests: Arc<AtomicU64>,
}

impl Host for NodeHost {
    fn fetch(
        &self,
        function: &str,
        req: SubRequest,
        timeout: Duration,
    ) -> Result<SubResponse, String> {
        let url = url::Url::parse(&req.url).map_err(|e| format!("fetch: invalid URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "fetch: the {} scheme is not supported",
                url.scheme()
            ));
        }
        if !self.allow_private {
            let host = url.host_str().unwrap_or("");
            let port = url.port_or_known_default().unwrap_or(80);
            let addrs: Vec<std::net::SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(
                host.trim_start_matches('[').trim_end_matches(']'),
                port,
            ))
            .map_err(|e| format!("fetch: cannot resolve {host}: {e}"))?
            .collect();
            if addrs.is_empty() || addrs.iter().any(|a| service_api::is_private_ip(a.ip())) {
                return Err(format!(
                    "fetch: {host} is on the node's own network, which functions may not reach"
                ));
            }
        }
        self.subrequests.fetch_add(1, Ordering::Relaxed);
        let mut b = http::Request::builder()
            .method(req.method.as_str())
            .uri(req.url.as_str());
        for (n, v) in &req.headers {
            if matches!(
                n.as_str(),
                "host" | "content-length" | "connection" | "transfer-encoding"
            ) {
                continue;
            }
            b = b.header(n.as_str(), v.as_str());
        }
        let request = b
            .body(req.body.unwrap_or_default())
            .map_err(|e| format!("fetch: {e}"))?;
        let agent = self
            .agent
            .configure_request(request)
            .timeout_global(Some(timeout.max(Duration::from_millis(1))))
            .max_redirects(if req.follow_redirects { 10 } else { 0 })
            .build();
        let resp = self.agent.run(agent).map_err(|e| {
            tracing::debug!(function, "fetch failed: {e}");
            format!("fetch failed: {e}")
        })?;
        let status = resp.status();
        let headers = crate::header_pairs(resp.headers());
        let mut body = Vec::new();
        resp.into_body()
            .into_reader()
            .take(self.max_body + 1)
            .read_to_end(&mut body)
            .map_err(|e| format!("fetch: reading the body: {e}"))?;
        if body.len() as u64 > self.max_body {
            return Err(format!(
                "fetch: the response is larger than {} MiB",
                self.max_body >> 20
            ));
        }
        Ok(SubResponse {
            status: status.as_u16(),
            status_text: status.canonical_reason().unwrap_or("").to_string(),
            headers,
            body,
            url: req.url,
        })
    }

    fn kv_get(&self, function: &str, ns: &str, key: &str) -> Option<(Vec<u8>, Option<String>)> {
        self.kv.get(function, ns, key)
    }

    fn kv_put(
        &self,
        function: &str,
        ns: &str,
        key: &str,
        value: &[u8],
        metadata: Option<String>,
        expires_ms: u64,
    ) -> Result<(), String> {
        let w = self
            .kv
            .put(function, ns, key, value, metadata.as_deref(), expires_ms)?;
        let _ = self.replicate.try_send(w);
        Ok(())
    }

    fn kv_delete(&self, function: &str, ns: &str, key: &str) {
        match self.kv.delete(function, ns, key) {
            Ok(w) => {
                let _ = self.replicate.try_send(w);
            }
            Err(e) => tracing::warn!(function, "{e}"),
        }
    }

    fn kv_list(
        &self,
        function: &str,
        ns: &str,
        prefix: &str,
        limit: usize,
        cursor: &str,
    ) -> String {
        self.kv.list(function, ns, prefix, limit, cursor)
    }

    fn revalidate(&self, function: &str, kind: &str, what: &str) {
        let n = self
            .revalidator
            .get()
            .map_or(0, |r| r(function, kind, what));
        tracing::debug!(function, kind, what, marked = n, "revalidation");
    }
}

/// Headers a script's response may not set: the data plane's own.
fn hop_by_hop(name: &str) -> bool {
    name.eq_ignore_ascii_case("content-length")
        || name.eq_ignore_ascii_case("transfer-encoding")
        || name.eq_ignore_ascii_case("connection")
        || name.eq_ignore_ascii_case("keep-alive")
}

impl Functions {
    pub fn new(node: &Node) -> Result<Arc<Functions>, String> {
        let config: FunctionsConfig = node.config()?;
        if config.host_suffix.is_empty() || config.host_suffix.starts_with('.') {
            return Err("host_suffix: a host name such as fn.localhost".into());
        }
        let m = &node.metrics;
        let counters = Counters {
            kv_sent: m.counter("kv_sent", "KV writes sent to a function's other nodes."),
            kv_failed: m.counter(
                "kv_failed",
                "KV writes given up: a node left the function or stayed away a day, or the outbox was full.",
            ),
            kv_applied: m.counter("kv_applied", "KV writes from other nodes applied here."),
            kv_pending: m.gauge(
                "kv_pending",
                "KV writes in the outbox, waiting for a node that did not take them.",
            ),
            proxied: m.counter(
                "proxied",
                "Requests passed to a node the function is placed on.",
            ),
            blob_answers: m.counter(
                "blob_answers",
                "Answers a function's node sent as a blob hash, fetched here by changed chunk groups.",
            ),
            delta_fetched: m.counter(
                "delta_fetched_bytes",
                "Bytes of those answers that crossed the network (hash tree and changed groups).",
            ),
            delta_reused: m.counter(
                "delta_reused_bytes",
                "Bytes of those answers taken unchanged from the version held here.",
            ),
            wasm_instances: m.counter(
                "wasm_instances",
                "WebAssembly instances made (one per request).",
            ),
            wasm_instantiation_ns: m.counter(
                "wasm_instantiation_nanoseconds",
                "Time spent instantiating WebAssembly components.",
            ),
            functions: m.gauge("functions", "Functions this node knows."),
            refused: m.counter("refused", "Function versions refused (spec or script)."),
            fetched: m.counter("fetched", "Scripts fetched from peers."),
            subrequests: m.counter("subrequests", "fetch() calls made by scripts."),
        };
        let id = node.cluster.node_id();
        let tie =
            u64::from_str_radix(id.get(..16).unwrap_or(""), 16).unwrap_or_else(|_| rand::random());
        let kv = Arc::new(Kv::open(&node.data_dir.join("kv.redb"), tie)?);
        let (replicate, writes) = flume::bounded::<Write>(REPLICATION_QUEUE);
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(10)
                .user_agent("Tessera-Functions")
                .build(),
        );
        let revalidator = Arc::new(std::sync::OnceLock::new());
        let host: Arc<dyn Host> = Arc::new(NodeHost {
            revalidator: revalidator.clone(),
            agent,
            kv: kv.clone(),
            replicate,
            allow_private: config.allow_private_fetch,
            max_body: config.max_subrequest_mb << 20,
            subrequests: counters.subrequests.clone(),
        });
        let pins = std::fs::read_to_string(node.data_dir.join("pins"))
            .unwrap_or_default()
            .lines()
            .filter_map(crate::parse_hex32)
            .collect();
        let functions = Arc::new(Functions {
            node: node.clone(),
            dot_suffix: format!(".{}", config.host_suffix),
            config,
            functions: ArcSwap::from_pointee(HashMap::new()),
            refused: Mutex::new(HashSet::new()),
            refusals: ArcSwap::from_pointee(HashMap::new()),
            pins: Mutex::new(pins),
            host,
            revalidator,
            kv,
            proxy_agent: ureq::Agent::new_with_config(
                ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .max_redirects(0)
                    .timeout_connect(Some(Duration::from_secs(2)))
                    .timeout_global(Some(Duration::from_secs(310)))
                    .build(),
            ),
            counters,
            usage: Mutex::new(HashMap::new()),
        });
        let replicator = Replicator {
            node: node.clone(),
            agent: ureq::Agent::new_with_config(
                ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(10)))
                    .build(),
            ),
            sent: functions.counters.kv_sent.clone(),
            failed: functions.counters.kv_failed.clone(),
            pending: functions.counters.kv_pending.clone(),
            kv: functions.kv.clone(),
            recent: Mutex::new(HashMap::new()),
        };
        std::thread::Builder::new()
            .name("functions-kv".into())
            .spawn(move || replicator.run(writes))
            .map_err(|e| format!("cannot start the KV replicator: {e}"))?;
        let weak = Arc::downgrade(&functions);
        node.metrics.family(Arc::new(move |out: &mut String| {
            if let Some(f) = weak.upgrade() {
                f.render_usage(out);
            }
        }));
        let weak = Arc::downgrade(&functions);
        let every = Duration::from_millis(functions.config.watch_ms.max(10));
        std::thread::Builder::new()
            .name("functions-watch".into())
            .spawn(move || {
                while let Some(f) = weak.upgrade() {
                    f.refresh();
                    drop(f);
                    std::thread::sleep(every);
                }
            })
            .map_err(|e| format!("cannot start the functions watcher: {e}"))?;
        Ok(functions)
    }

    /// Connects `ctx.revalidate` to what caches the functions' answers.
    pub fn set_revalidator(&self, r: Revalidator) {
        let _ = self.revalidator.set(r);
    }

    /// Billing units used by each function on this node since it started
    /// (what the node reports to the ledger): response bytes, plus CPU
    /// time and requests at [`UNITS_PER_CPU_MS`] and [`UNITS_PER_REQUEST`].
    pub fn usage_units(&self) -> Vec<(String, u64)> {
        self.usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, u)| {
                let units = u.bytes.load(Ordering::Relaxed)
                    + u.cpu_us.load(Ordering::Relaxed) * UNITS_PER_CPU_MS / 1000
                    + u.requests.load(Ordering::Relaxed) * UNITS_PER_REQUEST;
                (name.clone(), units)
            })
            .collect()
    }

    fn render_usage(&self, out: &mut String) {
        use std::fmt::Write;
        let usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        for (metric, help, pick) in [
            ("requests", "Requests a function ran for on this node.", 0),
            (
                "cpu_microseconds",
                "CPU time functions used on this node.",
                1,
            ),
            ("bytes", "Response body bytes of functions (metered).", 2),
            ("errors", "Requests a function's script failed (500).", 3),
            (
                "limits",
                "Requests stopped at one of the function's limits (503).",
                4,
            ),
            ("cold_starts", "Requests that built a new isolate.", 5),
        ] {
            let _ = writeln!(out, "# HELP tessera_function_{metric}_total {help}");
            let _ = writeln!(out, "# TYPE tessera_function_{metric}_total counter");
            for (name, u) in usage.iter() {
                let v = [
                    &u.requests,
                    &u.cpu_us,
                    &u.bytes,
                    &u.errors,
                    &u.limits,
                    &u.cold_starts,
                ][pick]
                    .load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "tessera_function_{metric}_total{{service=\"function\",function=\"{name}\"}} {v}"
                );
            }
        }
    }

    fn usage_of(&self, name: &str) -> Arc<Usage> {
        self.usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// The secrets of `spec`: from the box the deployer sealed to this
    /// node, or, for a node that joined after the deploy, from a box
    /// another node seals to it (`GET /fn/_secrets/{name}/{spec}`, signed).
    /// Err(None) while no node gave one (asked again next round).
    fn secrets_of(
        &self,
        name: &str,
        spec: &FunctionSpec,
        spec_hash: &Hash,
        elsewhere: &[std::net::SocketAddr],
    ) -> Result<BTreeMap<String, String>, Option<String>> {
        if spec.secret_names.is_empty() {
            return Ok(BTreeMap::new());
        }
        let cluster = &self.node.cluster;
        if let Some(sealed) = spec.sealed_for(&cluster.node_id()) {
            return spec
                .open_sealed(&sealed, |b| cluster.unseal(b))
                .map_err(Some);
        }
        let path = format!("{SECRETS_PREFIX}{name}/{}", hex(spec_hash));
        let members = cluster.members();
        let others = members.iter().filter(|m| m.alive).map(|m| m.addr);
        let asked: Vec<std::net::SocketAddr> = elsewhere
            .iter()
            .copied()
            .chain(others)
            .take(SECRETS_ASKED)
            .collect();
        for addr in asked {
            let mut req = http::Request::get(format!("http://{addr}{path}"));
            for (n, v) in cluster.sign_request("GET", &path) {
                req = req.header(n, v);
            }
            let Ok(req) = req.body(()) else { continue };
            let Ok(resp) = self.proxy_agent.run(req) else {
                continue;
            };
            if resp.status() != 200 {
                continue;
            }
            let mut body = String::new();
            if resp
                .into_body()
                .into_reader()
                .take(2 * crate::MAX_SEALED_BYTES as u64)
                .read_to_string(&mut body)
                .is_err()
            {
                continue;
            }
            let Some(sealed) = crate::unhex(body.trim()) else {
                continue;
            };
            match spec.open_sealed(&sealed, |b| cluster.unseal(b)) {
                Ok(secrets) => {
                    tracing::info!(function = name, from = %addr, "secrets sealed to this node by a peer");
                    return Ok(secrets);
                }
                Err(why) => {
                    tracing::warn!(function = name, from = %addr, "a peer's sealed secrets: {why}")
                }
            }
        }
        Err(None)
    }

    /// `GET /fn/_secrets/{name}/{spec}`: the function's secrets sealed to
    /// the member that signed the request (a node that joined after the
    /// deploy, whose id the deployer could not seal to).
    fn secrets_for_peer(&self, req: &OwnedRequest) -> Reply {
        let path = String::from_utf8_lossy(&req.path).into_owned();
        let header = |n: &str| req.header(n).map(<[u8]>::to_vec);
        let Some(from) = self.node.cluster.signed_by("GET", &path, &header) else {
            return text(
                Status::Forbidden,
                "not signed by a member of this cluster\n",
            );
        };
        let Some((name, spec)) = path[SECRETS_PREFIX.len()..].split_once('/') else {
            return text(Status::NotFound, "ask /fn/_secrets/{name}/{spec hash}\n");
        };
        let all = self.functions.load();
        let Some(d) = all.get(name).filter(|d| hex(&d.spec_hash) == spec) else {
            return text(Status::NotFound, "this node does not run that version\n");
        };
        let sealed = serde_json::to_vec(&*d.secrets)
            .ok()
            .and_then(|plain| self.node.cluster.seal_to(&from, &plain));
        match sealed {
            Some(b) => {
                tracing::info!(function = name, to = %from, "secrets sealed to a peer");
                Reply::new(Status::Ok, "text/plain", hex(&b)).header("Cache-Control", "no-store")
            }
            None => text(Status::InternalServerError, "cannot seal to that node\n"),
        }
    }

    /// The script of `spec`, read from the store (fetched from peers if
    /// need be) and compiled; Err(Some(why)) if it is refused, Err(None)
    /// while it is not to be had.
    fn compile(
        &self,
        name: &str,
        version: u64,
        spec: &FunctionSpec,
        secrets: &BTreeMap<String, String>,
    ) -> Result<Code, Option<String>> {
        let code = spec.code_hash();
        let store = &self.node.store;
        let size = match store.size(&code) {
            Some(s) => s,
            None if self.node.cluster.fetch(&code) => {
                self.counters.fetched.fetch_add(1, Ordering::Relaxed);
                store.size(&code).ok_or(None)?
            }
            None => return Err(None),
        };
        let max = if spec.kind == "wasm" {
            MAX_COMPONENT_BYTES
        } else {
            MAX_SCRIPT_BYTES
        };
        if size > max {
            return Err(Some(format!(
                "the {} is {size} bytes; at most {max}",
                spec.kind
            )));
        }
        let bytes = store.read(&code, 0, size as usize).map_err(|e| {
            tracing::warn!(function = name, "cannot read the script: {e}");
            None
        })?;
        if spec.kind == "wasm" {
            return crate::wasm::WasmScript::compile(
                name,
                version,
                &bytes,
                spec.limits,
                spec.bindings(secrets),
            )
            .map(|c| Code::Wasm(Arc::new(c)))
            .map_err(Some);
        }
        let source =
            String::from_utf8(bytes).map_err(|_| Some("the script is not UTF-8".into()))?;
        Script::compile(
            name,
            version,
            &source,
            &spec.bindings(secrets),
            &spec.kv,
            spec.limits,
        )
        .map(|s| Code::Js(Arc::new(s)))
        .map_err(Some)
    }

    /// Takes the functions from the deployments; compiles new versions;
    /// pins the scripts of those placed here.
    fn refresh(&self) {
        let current = self.functions.load();
        let mut next = HashMap::new();
        let mut changed = false;
        let mut wanted_pins = HashSet::new();
        for inst in self.node.deployments.of("function") {
            if let Some(d) = current
                .get(&inst.name)
                .filter(|d| d.deployment_version == inst.version && d.spec_hash == inst.spec_hash)
            {
                if inst.here {
                    wanted_pins.insert(d.code);
                }
                if d.here == inst.here && d.elsewhere == inst.elsewhere {
                    next.insert(inst.name, d.clone());
                } else {
                    // Placement moved: the same script, new neighbours.
                    changed = true;
                    next.insert(
                        inst.name,
                        Arc::new(Deployed {
                            deployment_version: d.deployment_version,
                            spec_hash: d.spec_hash,
                            name: d.name.clone(),
                            limits: d.limits,
                            code: d.code,
                            engine: d.engine.clone(),
                            usage: d.usage.clone(),
                            here: inst.here,
                            elsewhere: inst.elsewhere,
                            secrets: d.secrets.clone(),
                        }),
                    );
                }
                continue;
            }
            let refused = self
                .refused
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&inst.spec_hash);
            if refused {
                if let Some(d) = current.get(&inst.name) {
                    next.insert(inst.name, d.clone());
                }
                continue;
            }
            let spec = match FunctionSpec::parse(&inst.spec) {
                Ok(s) => s,
                Err(why) => {
                    self.refuse(&inst.name, inst.spec_hash, &why);
                    continue;
                }
            };
            // A version number that changes with the spec (a redeploy of
            // the same spec keeps its isolates).
            let version = u64::from_le_bytes(inst.spec_hash[..8].try_into().unwrap_or([0; 8]));
            let compiled = self
                .secrets_of(&inst.name, &spec, &inst.spec_hash, &inst.elsewhere)
                .and_then(|secrets| {
                    let code = self.compile(&inst.name, version, &spec, &secrets)?;
                    Ok((code, Arc::new(secrets)))
                });
            match compiled {
                Ok((script, secrets)) => {
                    if inst.here {
                        wanted_pins.insert(spec.code_hash());
                    }
                    tracing::info!(function = %inst.name, code = %spec.code, "function ready");
                    changed = true;
                    let usage = self.usage_of(&inst.name);
                    let name: Arc<str> = inst.name.as_str().into();
                    next.insert(
                        inst.name,
                        Arc::new(Deployed {
                            deployment_version: inst.version,
                            spec_hash: inst.spec_hash,
                            name,
                            limits: spec.limits,
                            code: spec.code_hash(),
                            engine: script,
                            usage,
                            here: inst.here,
                            elsewhere: inst.elsewhere,
                            secrets,
                        }),
                    );
                }
                Err(Some(why)) => {
                    self.refuse(&inst.name, inst.spec_hash, &why);
                    if let Some(d) = current.get(&inst.name) {
                        next.insert(inst.name, d.clone());
                    }
                }
                Err(None) => {
                    // Not here yet: the old version, if any, keeps serving.
                    if let Some(d) = current.get(&inst.name) {
                        next.insert(inst.name, d.clone());
                    }
                }
            }
        }
        if changed || next.len() != current.len() {
            self.counters
                .functions
                .store(next.len() as u64, Ordering::Relaxed);
            self.functions.store(Arc::new(next));
        }
        self.repin(wanted_pins);
    }

    fn refuse(&self, name: &str, spec_hash: Hash, why: &str) {
        tracing::warn!(function = name, "function refused: {why}");
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        let mut reasons = (**self.refusals.load()).clone();
        reasons.insert(name.to_string(), (hex(&spec_hash), why.to_string()));
        self.refusals.store(Arc::new(reasons));
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(spec_hash);
    }

    /// Pins the scripts of the functions placed here, unpins those no
    /// longer wanted; records the set in the data directory.
    fn repin(&self, wanted: HashSet<Hash>) {
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        if *pins == wanted {
            return;
        }
        let add: Vec<Hash> = wanted.difference(&pins).copied().collect();
        let drop: Vec<Hash> = pins.difference(&wanted).copied().collect();
        if !add.is_empty() && self.node.store.pin(&add, true).is_err() {
            return;
        }
        if !drop.is_empty() {
            let _ = self.node.store.pin(&drop, false);
        }
        *pins = wanted;
        let list: String = pins.iter().map(|h| hex(h) + "\n").collect();
        let path = self.node.data_dir.join("pins");
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, list).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }

    /// A KV write from another node of a function: taken if a live member
    /// signed it, its body is what the signed path names, and the function
    /// exists; applied if it is newer than what is here.
    fn kv_write(&self, req: &OwnedRequest, body: RequestBody) -> Reply {
        let path = String::from_utf8_lossy(&req.path).into_owned();
        if req.method != Method::Post {
            return text(Status::MethodNotAllowed, "a KV write is a POST\n");
        }
        let header = |n: &str| req.header(n).map(<[u8]>::to_vec);
        let Some(from) = self.node.cluster.signed_by("POST", &path, &header) else {
            return text(
                Status::Forbidden,
                "not signed by a member of this cluster\n",
            );
        };
        let mut bytes = Vec::new();
        let limit = (crate::kv::MAX_VALUE_BYTES as u64) * 2;
        if let Err(e) = body.take(limit).read_to_end(&mut bytes) {
            return text(Status::BadRequest, &format!("{e}\n"));
        }
        if path[KV_PREFIX.len()..] != hex(blake3::hash(&bytes).as_bytes()) {
            return text(
                Status::BadRequest,
                "the body is not the one the path names\n",
            );
        }
        let w: Write = match serde_json::from_slice(&bytes) {
            Ok(w) => w,
            Err(e) => return text(Status::BadRequest, &format!("not a KV write: {e}\n")),
        };
        if !self.functions.load().contains_key(&w.function) {
            return text(Status::NotFound, "no function by that name on this node\n");
        }
        // Only a node the function is placed on writes its KV.
        let placed = self
            .node
            .deployments
            .of("function")
            .into_iter()
            .find(|i| i.name == w.function)
            .is_some_and(|i| {
                self.node
                    .cluster
                    .members()
                    .iter()
                    .any(|m| m.id == from && i.elsewhere.contains(&m.addr))
            });
        if !placed {
            return text(Status::Forbidden, "the sender does not run this function\n");
        }
        match self.kv.apply(&w) {
            Ok(applied) => {
                if applied {
                    self.counters.kv_applied.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(function = %w.function, %from, applied, "KV write from a peer");
                Reply::new(
                    Status::Ok,
                    "application/json",
                    serde_json::json!({ "applied": applied }).to_string(),
                )
            }
            Err(e) => text(Status::BadRequest, &format!("{e}\n")),
        }
    }

    /// Passes a request to another node of the function (path form); None
    /// if it did not answer.
    fn proxy(
        &self,
        to: std::net::SocketAddr,
        req: &OwnedRequest,
        name: &str,
        path: &[u8],
        body: &[u8],
    ) -> Option<Reply> {
        let mut url = format!("http://{to}/fn/{name}{}", String::from_utf8_lossy(path));
        if !req.query.is_empty() {
            url.push('?');
            url.push_str(&String::from_utf8_lossy(&req.query));
        }
        let mut b = http::Request::builder()
            .method(req.method.as_str())
            .uri(url);
        for (n, v) in &req.headers {
            let lower = String::from_utf8_lossy(n).to_ascii_lowercase();
            if !hop_by_hop(&lower) && !matches!(lower.as_str(), "host" | "te" | "upgrade") {
                b = b.header(lower, v.as_slice());
            }
        }
        let base = req
            .header(BASE_HEADER)
            .and_then(|v| crate::parse_hex32(std::str::from_utf8(v).ok()?));
        if base.is_some() {
            let signed_path = format!("/fn/{name}{}", String::from_utf8_lossy(path));
            for (n, v) in self
                .node
                .cluster
                .sign_request(req.method.as_str(), &signed_path)
            {
                b = b.header(n, v);
            }
        }
        let request = b.header(HOP, "1").body(body.to_vec()).ok()?;
        let resp = match self.proxy_agent.run(request) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%to, "the function's node did not answer: {e}");
                return None;
            }
        };
        if let Some(blob) = resp
            .headers()
            .get(BLOB)
            .and_then(|v| crate::parse_hex32(v.to_str().ok()?))
        {
            return self.fetched_blob(to, resp.headers(), blob, base.as_ref());
        }
        let status = Status::passed_on(resp.status().as_u16());
        let mut headers = Vec::new();
        let mut content_type = String::new();
        for (n, v) in resp.headers() {
            if n.as_str() == "content-type" {
                content_type = v.to_str().unwrap_or("").to_string();
            } else if !hop_by_hop(n.as_str()) {
                headers.push((n.as_str().to_string(), v.as_bytes().to_vec()));
            }
        }
        let mut bytes = Vec::new();
        resp.into_body()
            .into_reader()
            .take(MAX_PROXIED_BYTES)
            .read_to_end(&mut bytes)
            .ok()?;
        self.counters.proxied.fetch_add(1, Ordering::Relaxed);
        let mut reply = Reply::new(status, &content_type, bytes);
        if content_type.is_empty() {
            reply.headers.clear();
        }
        reply.headers.extend(headers);
        Some(reply)
    }

    /// An answer the function's node sent as a blob: its changed groups
    /// fetched from there, then served from the store here. None if the
    /// blob could not be had (the request is then asked elsewhere).
    fn fetched_blob(
        &self,
        from: std::net::SocketAddr,
        headers: &http::HeaderMap,
        blob: Hash,
        base: Option<&Hash>,
    ) -> Option<Reply> {
        let delta = self.node.cluster.fetch_delta(&blob, base, from)?;
        self.counters.blob_answers.fetch_add(1, Ordering::Relaxed);
        self.counters
            .delta_fetched
            .fetch_add(delta.fetched, Ordering::Relaxed);
        self.counters
            .delta_reused
            .fetch_add(delta.reused, Ordering::Relaxed);
        self.counters.proxied.fetch_add(1, Ordering::Relaxed);
        let value = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        let rest: Vec<(String, String)> = headers
            .iter()
            .filter(|(n, _)| {
                !hop_by_hop(n.as_str())
                    && !matches!(
                        n.as_str(),
                        "content-type" | "cache-control" | "etag" | "date" | BLOB
                    )
            })
            .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        Some(Reply::blob(BlobReply {
            hash: blob,
            content_type: value("content-type").unwrap_or("").into(),
            cache_control: value("cache-control").map(Into::into),
            headers: Some(rest.into()),
            stored_at: None,
            status: None,
        }))
    }

    /// On the function's node, for a signed request passed on with
    /// [`BASE_HEADER`]: a whole, cacheable 200 of at least
    /// [`BLOB_MIN_BYTES`] is stored and answered as its hash.
    fn as_blob(&self, req: &OwnedRequest, reply: Reply) -> Reply {
        if req.header(BASE_HEADER).is_none() || req.header(HOP).is_none() {
            return reply;
        }
        let Body::Bytes(bytes) = &reply.body else {
            return reply;
        };
        let cacheable = reply
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("cache-control"));
        if reply.status != Status::Ok || bytes.len() < BLOB_MIN_BYTES || !cacheable {
            return reply;
        }
        let path = String::from_utf8_lossy(&req.path);
        let header = |n: &str| req.header(n).map(<[u8]>::to_vec);
        if self
            .node
            .cluster
            .signed_by(req.method.as_str(), &path, &header)
            .is_none()
        {
            return reply;
        }
        let hash = match self.node.store.put(&mut &bytes[..]) {
            Ok((hash, _)) => hash,
            Err(e) => {
                tracing::debug!("cannot store an answer to send as a blob: {e}");
                return reply;
            }
        };
        let mut headers: Vec<(String, Vec<u8>)> = reply
            .headers
            .into_iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("etag"))
            .collect();
        headers.push((BLOB.into(), hex(&hash).into_bytes()));
        Reply {
            status: Status::Ok,
            headers,
            body: Body::Bytes(Vec::new()),
        }
    }

    fn status(&self, name: &[u8]) -> Reply {
        let name = String::from_utf8_lossy(name);
        let all = self.functions.load();
        let refused = self.refusals.load().get(&*name).cloned();
        let Some(d) = all.get(&*name) else {
            if let Some((spec, why)) = refused {
                let body =
                    serde_json::json!({ "name": &*name, "refused": { "spec": spec, "why": why } });
                return Reply::new(Status::Ok, "application/json", body.to_string())
                    .header("Cache-Control", "no-store");
            }
            return text(Status::NotFound, "no function by that name on this node\n");
        };
        let body = serde_json::json!({
            "name": &*name,
            "code": hex(&d.code),
            "spec": hex(&d.spec_hash),
            "deployment_version": d.deployment_version,
            "host_suffix": self.config.host_suffix,
            "requests": d.usage.requests.load(Ordering::Relaxed),
            "refused": refused.map(|(spec, why)| serde_json::json!({ "spec": spec, "why": why })),
        });
        Reply::new(Status::Ok, "application/json", body.to_string())
            .header("Cache-Control", "no-store")
    }

    /// The function a request names, and the path the script sees.
    fn locate<'a>(
        &self,
        host: Option<&'a [u8]>,
        path: &'a [u8],
    ) -> Option<(DeploymentName<'a>, &'a [u8])> {
        if let Some(host) = host.map(strip_port) {
            let suffix = self.dot_suffix.as_bytes();
            if host.len() > suffix.len()
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            {
                let label = &host[..host.len() - suffix.len()];
                return label_name(label).map(|n| (n, path));
            }
        }
        let rest = path.strip_prefix(b"/fn/")?;
        let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
        let name = label_name(&rest[..end])?;
        let inner = &rest[end..];
        Some((name, if inner.is_empty() { b"/" } else { inner }))
    }

    /// The URL the script sees: its own host, the path within it.
    fn url(&self, req: &OwnedRequest, name: &str, path: &[u8]) -> String {
        let host = req
            .host
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let authority = if host.is_empty() {
            format!("{name}{}", self.dot_suffix)
        } else {
            host.into_owned()
        };
        let mut url = format!("http://{authority}{}", String::from_utf8_lossy(path));
        if !req.query.is_empty() {
            url.push('?');
            url.push_str(&String::from_utf8_lossy(&req.query));
        }
        url
    }

    fn run(
        &self,
        d: &Arc<Deployed>,
        req: &OwnedRequest,
        path: &[u8],
        mut body: RequestBody,
    ) -> Reply {
        let (name, limits) = (&d.name, &d.limits);
        let usage = &d.usage;
        usage.requests.fetch_add(1, Ordering::Relaxed);
        let limit_reply = |limit: Limit| {
            usage.limits.fetch_add(1, Ordering::Relaxed);
            tracing::info!(function = %name, limit = limit.label(), "request stopped at a limit");
            text(
                Status::ServiceUnavailable,
                &format!("{}: {}\n", name, limit.describe(limits)),
            )
        };
        let has_body = !matches!(req.method, Method::Get | Method::Head);
        let mut bytes = Vec::new();
        if has_body {
            let max = limits.request_body_bytes();
            match (&mut body).take(max + 1).read_to_end(&mut bytes) {
                Ok(_) if bytes.len() as u64 > max => {
                    usage.limits.fetch_add(1, Ordering::Relaxed);
                    return text(
                        Status::PayloadTooLarge,
                        &format!("{}: {}\n", name, Limit::RequestBody.describe(limits)),
                    );
                }
                Ok(_) => {}
                Err(e) => return text(Status::PayloadTooLarge, &format!("{e}\n")),
            }
        }
        let headers: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).to_ascii_lowercase(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect();
        let method = req.method.as_str();
        let url = self.url(req, name, path);
        let incoming = Incoming {
            method,
            url: &url,
            headers: &headers,
            body: has_body.then_some(&bytes[..]),
        };
        let (result, cost) = match &d.engine {
            Code::Js(script) => js::run(script, &self.host, incoming),
            Code::Wasm(component) => {
                let (result, cost, instantiation) =
                    crate::wasm::run(component, Some(&self.host), incoming);
                self.counters
                    .wasm_instantiation_ns
                    .fetch_add(instantiation.as_nanos() as u64, Ordering::Relaxed);
                self.counters.wasm_instances.fetch_add(1, Ordering::Relaxed);
                (result, cost)
            }
        };
        usage
            .cpu_us
            .fetch_add(cost.cpu.as_micros() as u64, Ordering::Relaxed);
        if cost.cold {
            usage.cold_starts.fetch_add(1, Ordering::Relaxed);
        }
        let answer = match result {
            Ok(a) => a,
            Err(Failure::Limit(limit)) => return limit_reply(limit),
            Err(Failure::Script(why)) => {
                usage.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(function = %name, "the script failed: {why}");
                return text(
                    Status::InternalServerError,
                    "the function threw an exception; its message is in the node's log\n",
                );
            }
        };
        let Some(status) = Status::from_code(answer.status) else {
            usage.errors.fetch_add(1, Ordering::Relaxed);
            return text(
                Status::InternalServerError,
                &format!(
                    "the function answered status {}, which this node does not send\n",
                    answer.status
                ),
            );
        };
        let mut content_type = None;
        let mut headers = Vec::with_capacity(answer.headers.len());
        for (n, v) in answer.headers {
            if n == "content-type" && content_type.is_none() {
                content_type = Some(v);
            } else if !hop_by_hop(&n) {
                headers.push((n, v.into_bytes()));
            }
        }
        let head_only = req.method == Method::Head;
        let mut reply = if answer.streaming || answer.waiting {
            let Code::Js(script) = d.engine.clone() else {
                return text(
                    Status::InternalServerError,
                    "a component answered a stream\n",
                );
            };
            let usage = d.usage.clone();
            let first = answer.body;
            let streaming = answer.streaming;
            let ct = content_type.clone().unwrap_or_default();
            Reply::streamed(status, &ct, move |out| {
                let mut sent = first.len() as u64;
                let mut result = out
                    .send(first)
                    .map_err(|_| "the client went away".to_string());
                while streaming && result.is_ok() {
                    let before = js::thread_cpu();
                    let chunk = js::next_chunk(&script);
                    usage.cpu_us.fetch_add(
                        js::thread_cpu().saturating_sub(before).as_micros() as u64,
                        Ordering::Relaxed,
                    );
                    match chunk {
                        Ok(Some(c)) => {
                            sent += c.len() as u64;
                            if sent > script.limits.response_body_bytes() {
                                result = Err(Limit::ResponseBody.describe(&script.limits));
                                break;
                            }
                            if !head_only {
                                result =
                                    out.send(c).map_err(|_| "the client went away".to_string());
                            }
                        }
                        Ok(None) => break,
                        Err(Failure::Limit(l)) => result = Err(l.describe(&script.limits)),
                        Err(Failure::Script(why)) => result = Err(why),
                    }
                }
                usage.bytes.fetch_add(sent, Ordering::Relaxed);
                // ctx.waitUntil: after the answer, on this worker.
                let before = js::thread_cpu();
                if let Err(e) = js::settle(&script) {
                    tracing::warn!(function = %script.name, "waitUntil work failed: {e:?}");
                }
                usage.cpu_us.fetch_add(
                    js::thread_cpu().saturating_sub(before).as_micros() as u64,
                    Ordering::Relaxed,
                );
                result
            })
        } else {
            usage
                .bytes
                .fetch_add(answer.body.len() as u64, Ordering::Relaxed);
            Reply::new(status, content_type.as_deref().unwrap_or(""), answer.body)
        };
        if content_type.is_none() {
            reply
                .headers
                .retain(|(n, _)| !n.eq_ignore_ascii_case("content-type"));
        }
        reply.headers.extend(headers);
        reply
    }
}

/// A deployment name as a request spells it: a DNS label in lower case.
fn label_name(b: &[u8]) -> Option<DeploymentName<'_>> {
    let ok = !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    ok.then(|| std::str::from_utf8(b).ok().map(DeploymentName::Named))
        .flatten()
}

/// The most a proxied answer may carry (the largest response limit).
const MAX_PROXIED_BYTES: u64 = 500 << 20;

impl Service for Functions {
    fn name(&self) -> &str {
        "function"
    }

    fn mounts(&self) -> Vec<Mount> {
        vec![
            Mount::Prefix("/fn/".into()),
            Mount::Host(format!("*.{}", self.config.host_suffix)),
        ]
    }

    fn pool(&self) -> PoolConfig {
        PoolConfig {
            threads: self.config.workers,
            queue: self.config.queue,
            // Past the longest wall limit a spec may set.
            deadline: Duration::from_secs(310),
        }
    }

    fn max_body_bytes(&self) -> u64 {
        500 << 20
    }

    fn decide(&self, req: &Request<'_>) -> Decision {
        if let Some(name) = req.path.strip_prefix(STATUS_PREFIX.as_bytes()) {
            return Decision::Reply(self.status(name));
        }
        if req.path.starts_with(KV_PREFIX.as_bytes())
            || req.path.starts_with(SECRETS_PREFIX.as_bytes())
        {
            return Decision::Work;
        }
        let Some((name, _)) = self.locate(req.host, req.path) else {
            return Decision::Reply(text(Status::NotFound, "no such function\n"));
        };
        if req.method == Method::Other {
            // The transports name GET, HEAD, POST, PUT, DELETE, PATCH and
            // OPTIONS; a function is asked only with one of them.
            return Decision::Reply(text(
                Status::NotImplemented,
                "functions take GET, HEAD, POST, PUT, DELETE, PATCH and OPTIONS\n",
            ));
        }
        if !self.functions.load().contains_key(&*name) {
            return Decision::Reply(text(
                Status::NotFound,
                "no function by that name on this network\n",
            ));
        }
        Decision::Work
    }

    fn handle(&self, req: OwnedRequest, body: RequestBody) -> Reply {
        if req.path.starts_with(KV_PREFIX.as_bytes()) {
            return self.kv_write(&req, body);
        }
        if req.path.starts_with(SECRETS_PREFIX.as_bytes()) {
            return self.secrets_for_peer(&req);
        }
        let Some((name, path)) = self.locate(req.host.as_deref(), &req.path) else {
            return text(Status::NotFound, "no such function\n");
        };
        let Some(d) = self.functions.load().get(&*name).cloned() else {
            return text(
                Status::NotFound,
                "no function by that name on this network\n",
            );
        };
        let path = path.to_vec();
        // A function placed elsewhere runs on its nearest node (its KV is
        // there); this node runs it only if none of them answers.
        if !d.here && req.header(HOP).is_none() {
            let mut bytes = Vec::new();
            let mut body = body;
            if !matches!(req.method, Method::Get | Method::Head) {
                let max = d.limits.request_body_bytes();
                if (&mut body).take(max + 1).read_to_end(&mut bytes).is_err()
                    || bytes.len() as u64 > max
                {
                    return text(
                        Status::PayloadTooLarge,
                        &format!("{}: {}\n", d.name, Limit::RequestBody.describe(&d.limits)),
                    );
                }
            }
            for to in &d.elsewhere {
                if let Some(reply) = self.proxy(*to, &req, &name, &path, &bytes) {
                    return reply;
                }
            }
            return self.run(&d, &req, &path, RequestBody::from_bytes(bytes));
        }
        let reply = self.run(&d, &req, &path, body);
        self.as_blob(&req, reply)
    }
}
