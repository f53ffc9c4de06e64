//! Test-only services (feature `test-services`; the node built by
//! `scripts/run` never has them). They exercise the service interface end to
//! end: on-core answers, work on the service's pool, request bodies, a handler
//! that panics, a queue that fills, a deadline that passes.
//!
//! `TESSERA_TEST_SERVICES=echo[,echo...]` starts one `echo` service per name
//! (all claiming `/test/echo/`, so two of them must stop the node). Its pool
//! has one worker, a queue of two and a deadline of
//! `TESSERA_TEST_SERVICE_DEADLINE_MS` (default 2000).
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
//! - anything else: `METHOD PATH\n` then the request body, with `X-Echo-Host`
//!   and `X-Echo-Header` echoing the request's host and `X-Echo` header.

use std::sync::Arc;
use std::time::Duration;

use service_api::{
    BlobReply, Decision, Message, Mount, OwnedRequest, PoolConfig, Reply, Request, Service, Socket,
    Status,
};

struct Echo {
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

    fn handle(&self, req: OwnedRequest, body: Vec<u8>) -> Reply {
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

impl Echo {
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

/// The services `TESSERA_TEST_SERVICES` names.
pub fn from_env() -> Vec<Arc<dyn Service>> {
    let deadline = std::env::var("TESSERA_TEST_SERVICE_DEADLINE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(2), Duration::from_millis);
    std::env::var("TESSERA_TEST_SERVICES")
        .unwrap_or_default()
        .split(',')
        .filter(|name| *name == "echo")
        .map(|_| {
            Arc::new(Echo {
                deadline,
                blob_type: "text/x-echo".into(),
                blob_cache: "no-cache".into(),
                blob_headers: vec![("x-served-by".to_string(), "echo".to_string())].into(),
            }) as Arc<dyn Service>
        })
        .collect()
}
