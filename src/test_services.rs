//! Test-only services (feature `test-services`; the node built by
//! `scripts/run` never has them). They exercise the service interface end to
//! end: on-core answers, work on the service's pool, request bodies streamed
//! in, a handler that panics, a queue that fills, a deadline that passes, and
//! what the node lends a service (store, cluster, ledger, config, data
//! directory, metrics).
//!
//! `TESSERA_TEST_SERVICES=echo[,echo...][,sink]` starts one service per name
//! (every `echo` claims `/test/echo/`, so two of them must stop the node).
//! `echo`'s pool has one worker, a queue of two and a deadline of
//! `TESSERA_TEST_SERVICE_DEADLINE_MS` (default 2000); it takes bodies of up to
//! 64 KiB. Its config section `[services.echo]` may set `greeting`.
//!
//! `echo` answers:
//! - `/test/echo/now`: on the core, `now\n`;
//! - `/test/echo/panic`: panics in its handler;
//! - `/test/echo/sleep?ms=N`: sleeps N ms in its handler, then `slept\n`;
//! - `/test/echo/stream?bytes=N`: a body of N bytes produced on the worker in
//!   64 KiB chunks, chunk `k` all bytes `k % 251` ([`stream_pattern`]);
//! - `/test/echo/stream-fail?bytes=N`: the same, failing half-way;
//! - `/test/echo/blob/{hash}`: on the core, the stored blob as the body, as
//!   `text/x-echo`, `Cache-Control: no-cache`, `x-served-by: echo`;
//! - `/test/echo/ws`: a WebSocket that sends every message back, and closes
//!   when it receives the text `close-me`;
//! - `POST /test/echo/store`: puts the body in the node's store, answers
//!   `{"hash","size"}` (counted in `tessera_echo_puts_total`);
//!   `PUT /test/echo/store/{hash}`: the same only if the body hashes to it
//!   (else 422); `GET /test/echo/store/{hash}`: reads it back through the
//!   store (404 if absent);
//! - `/test/echo/cluster`: `{"node_id","members"}` from the cluster view;
//! - `/test/echo/ledger`: the ledger's status, or 503 and why not;
//! - `/test/echo/config`: the configured greeting;
//! - `POST /test/echo/note`: keeps the body in a file of its data directory;
//!   `GET /test/echo/note` reads it back;
//! - anything else: `METHOD PATH\n` then the request body, with `X-Echo-Host`
//!   and `X-Echo-Header` echoing the request's host and `X-Echo` header.
//!
//! `sink` (`/test/sink/`) takes bodies of any length (up to 16 GiB), reading
//! them as they stream in: it answers `{"bytes","blake3"}` of what it read.
//! `?wait_ms=N` makes it wait N ms before reading the first byte (so the
//! client's sending is held back); `?stop_after=N` stops reading after N bytes
//! and answers at once.

use std::sync::Arc;
use std::time::Duration;

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};

use service_api::{
    BlobReply, Decision, Message, Mount, Node, OwnedRequest, PoolConfig, Reply, Request,
    RequestBody, Service, Socket, Status,
};

use crate::services::Factory;

#[derive(serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct EchoConfig {
    greeting: String,
}

impl Default for EchoConfig {
    fn default() -> Self {
        EchoConfig {
            greeting: "hello".into(),
        }
    }
}

struct Echo {
    node: Node,
    config: EchoConfig,
    puts: Arc<AtomicU64>,
    deadline: Duration,
    // What the service "published" for its blob answers: shared, not copied.
    blob_type: Arc<str>,
    blob_cache: Arc<str>,
    blob_headers: Arc<[(String, String)]>,
}

fn parse_hash(hex: &[u8]) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

impl Service for Echo {
    fn name(&self) -> &str {
        "echo"
    }

    fn mounts(&self) -> Vec<Mount> {
        vec![Mount::Prefix("/test/echo/".into())]
    }

    fn pool(&self) -> PoolConfig {
        PoolConfig {
            threads: 1,
            queue: 2,
            deadline: self.deadline,
        }
    }

    fn max_body_bytes(&self) -> u64 {
        64 << 10
    }

    fn decide(&self, req: &Request<'_>) -> Decision {
        if let Some(hex) = req.path.strip_prefix(b"/test/echo/blob/") {
            return match parse_hash(hex) {
                Some(hash) => Decision::Blob(BlobReply {
                    hash,
                    content_type: self.blob_type.clone(),
                    cache_control: Some(self.blob_cache.clone()),
                    headers: Some(self.blob_headers.clone()),
                    stored_at: None,
                    status: None,
                }),
                None => Decision::Reply(Reply::text(Status::BadRequest, "not a hash\n")),
            };
        }
        match req.path {
            b"/test/echo/now" => Decision::Reply(Reply::text(Status::Ok, "now\n")),
            b"/test/echo/ws" => Decision::Upgrade,
            _ => Decision::Work,
        }
    }

    fn socket(&self, _req: OwnedRequest, socket: Socket) {
        Echo::echo_socket(&socket);
    }

    fn handle(&self, req: OwnedRequest, body: RequestBody) -> Reply {
        let body = match self.lent(&req, body) {
            Ok(reply) => return reply,
            Err(body) => body,
        };
        let body = match body.read_all() {
            Ok(body) => body,
            Err(e) => return Reply::text(Status::BadRequest, &format!("{e}\n")),
        };
        match req.path.as_slice() {
            b"/test/echo/panic" => panic!("the echo service was asked to panic"),
            b"/test/echo/sleep" => {
                std::thread::sleep(Duration::from_millis(query_number(&req, "ms=")));
                Reply::text(Status::Ok, "slept\n")
            }
            path @ (b"/test/echo/stream" | b"/test/echo/stream-fail") => {
                let total = query_number(&req, "bytes=");
                let fail_at = (path == b"/test/echo/stream-fail").then_some(total / 2);
                Reply::streamed(Status::Ok, "application/octet-stream", move |out| {
                    let mut sent = 0u64;
                    let mut k = 0u64;
                    while sent < total {
                        if fail_at.is_some_and(|at| sent >= at) {
                            return Err("asked to fail half-way".into());
                        }
                        let n = (total - sent).min(STREAM_CHUNK_BYTES as u64) as usize;
                        out.send(vec![stream_pattern(k); n])
                            .map_err(|_| "client gone".to_string())?;
                        sent += n as u64;
                        k += 1;
                    }
                    Ok(())
                })
            }
            path => {
                let mut out = format!(
                    "{} {}\n",
                    req.method.as_str(),
                    String::from_utf8_lossy(path)
                )
                .into_bytes();
                out.extend_from_slice(&body);
                Reply::new(Status::Ok, "text/plain", out)
                    .header("X-Echo-Host", req.host.clone().unwrap_or_default())
                    .header(
                        "X-Echo-Header",
                        req.header("x-echo").unwrap_or_default().to_vec(),
                    )
            }
        }
    }
}

fn json(status: Status, value: serde_json::Value) -> Reply {
    Reply::new(status, "application/json", format!("{value}\n"))
}

fn hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

impl Echo {
    /// The routes that use what the node lends; the body back for the others.
    fn lent(&self, req: &OwnedRequest, mut body: RequestBody) -> Result<Reply, RequestBody> {
        use service_api::Method;
        let path = req.path.as_slice();
        let node = &self.node;
        Ok(match (req.method, path) {
            (Method::Post, b"/test/echo/store") => match node.store.put(&mut body) {
                Ok((hash, size)) => {
                    self.puts.fetch_add(1, Ordering::Relaxed);
                    json(
                        Status::Ok,
                        serde_json::json!({ "hash": hex(&hash), "size": size }),
                    )
                }
                Err(e) => Reply::text(Status::BadRequest, &format!("{e}\n")),
            },
            (Method::Put, p) if p.starts_with(b"/test/echo/store/") => {
                let Some(hash) = parse_hash(&p[b"/test/echo/store/".len()..]) else {
                    return Ok(Reply::text(Status::BadRequest, "not a hash\n"));
                };
                match node.store.put_expecting(&hash, &mut body) {
                    Ok(size) => json(Status::Created, serde_json::json!({ "size": size })),
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                        Reply::text(Status::UnprocessableContent, &format!("{e}\n"))
                    }
                    Err(e) => Reply::text(Status::BadRequest, &format!("{e}\n")),
                }
            }
            (Method::Post, b"/test/echo/note") => {
                let note = match body.read_all() {
                    Ok(note) => note,
                    Err(e) => return Ok(Reply::text(Status::BadRequest, &format!("{e}\n"))),
                };
                match std::fs::write(node.data_dir.join("note"), note) {
                    Ok(()) => Reply::text(Status::Ok, "kept\n"),
                    Err(e) => Reply::text(Status::InternalServerError, &format!("{e}\n")),
                }
            }
            (Method::Get, b"/test/echo/cluster") => json(
                Status::Ok,
                serde_json::json!({
                    "node_id": node.cluster.node_id(),
                    "members": node.cluster.members().len(),
                }),
            ),
            (Method::Get, b"/test/echo/ledger") => match node.ledger.read("status") {
                Ok(text) => Reply::new(Status::Ok, "application/json", text),
                Err(why) => Reply::text(Status::ServiceUnavailable, &format!("{why}\n")),
            },
            (Method::Get, b"/test/echo/config") => {
                Reply::text(Status::Ok, &format!("{}\n", self.config.greeting))
            }
            (Method::Get, b"/test/echo/note") => match std::fs::read(node.data_dir.join("note")) {
                Ok(note) => Reply::new(Status::Ok, "text/plain", note),
                Err(_) => Reply::text(Status::NotFound, "no note\n"),
            },
            (Method::Get, p) if p.starts_with(b"/test/echo/store/") => {
                let Some(hash) = parse_hash(&p[b"/test/echo/store/".len()..]) else {
                    return Ok(Reply::text(Status::BadRequest, "not a hash\n"));
                };
                match node.store.size(&hash) {
                    None => Reply::text(Status::NotFound, "not stored\n"),
                    Some(size) => match node.store.read(&hash, 0, size as usize) {
                        Ok(bytes) => Reply::new(Status::Ok, "application/octet-stream", bytes),
                        Err(e) => Reply::text(Status::InternalServerError, &format!("{e}\n")),
                    },
                }
            }
            _ => return Err(body),
        })
    }

    fn echo_socket(socket: &Socket) {
        while let Some(message) = socket.recv() {
            if message == Message::Text("close-me".into()) || socket.send(message).is_err() {
                return;
            }
        }
    }
}

/// Chunk size of the streamed test bodies.
pub const STREAM_CHUNK_BYTES: usize = 64 << 10;

/// The byte value of chunk `k` of a streamed test body.
pub fn stream_pattern(k: u64) -> u8 {
    (k % 251) as u8
}

fn query_number(req: &OwnedRequest, key: &str) -> u64 {
    std::str::from_utf8(&req.query)
        .ok()
        .and_then(|q| q.strip_prefix(key))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn deadline() -> Duration {
    std::env::var("TESSERA_TEST_SERVICE_DEADLINE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(2), Duration::from_millis)
}

fn make_echo(node: &Node) -> Result<Arc<dyn Service>, String> {
    let config: EchoConfig = node.config()?;
    Ok(Arc::new(Echo {
        puts: node
            .metrics
            .counter("puts", "Blobs the echo service stored."),
        node: node.clone(),
        config,
        deadline: deadline(),
        blob_type: "text/x-echo".into(),
        blob_cache: "no-cache".into(),
        blob_headers: vec![("x-served-by".to_string(), "echo".to_string())].into(),
    }))
}

/// Reads whatever streams in and says how much and its hash.
struct Sink;

impl Service for Sink {
    fn name(&self) -> &str {
        "sink"
    }

    fn mounts(&self) -> Vec<Mount> {
        vec![Mount::Prefix("/test/sink/".into())]
    }

    fn pool(&self) -> PoolConfig {
        PoolConfig {
            threads: 2,
            queue: 4,
            deadline: Duration::from_secs(60),
        }
    }

    fn max_body_bytes(&self) -> u64 {
        16 << 30
    }

    fn decide(&self, _req: &Request<'_>) -> Decision {
        Decision::Work
    }

    fn handle(&self, req: OwnedRequest, mut body: RequestBody) -> Reply {
        let query = String::from_utf8_lossy(&req.query).into_owned();
        let param = |key: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse::<u64>().ok())
        };
        if let Some(ms) = param("wait_ms") {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let stop_after = param("stop_after").unwrap_or(u64::MAX);
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0u64;
        while total < stop_after {
            let want = buf.len().min((stop_after - total) as usize);
            match body.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    total += n as u64;
                }
                Err(e) => {
                    return Reply::text(Status::BadRequest, &format!("body failed: {e}\n"));
                }
            }
        }
        json(
            Status::Ok,
            serde_json::json!({ "bytes": total, "blake3": hasher.finalize().to_hex().to_string() }),
        )
    }
}

fn make_sink(_node: &Node) -> Result<Arc<dyn Service>, String> {
    Ok(Arc::new(Sink))
}

/// The services `TESSERA_TEST_SERVICES` names, to build.
pub fn from_env() -> Vec<(String, Factory)> {
    std::env::var("TESSERA_TEST_SERVICES")
        .unwrap_or_default()
        .split(',')
        .filter_map(|name| match name {
            "echo" => Some((name.to_string(), make_echo as Factory)),
            "sink" => Some((name.to_string(), make_sink as Factory)),
            _ => None,
        })
        .collect()
}
