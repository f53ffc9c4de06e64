//! The interface every Tessera service plugs into, and the only part of the node
//! a service sees.
//!
//! A service (CDN, hosting, edge functions, IPFS, ...) claims [`Mount`]s: path
//! prefixes such as `/ipfs/`, or host patterns such as `*.sites.localhost`. For a
//! request under one of them the data plane asks the service, on the core that
//! read the request, to [`Service::decide`] from the request head alone, without
//! blocking or locking (typically a lookup in an immutable snapshot the service
//! published). The decision is a [`Reply`] to send now, or [`Decision::Work`]: the
//! request (head and body) goes to the service's own bounded [`WorkerPool`] off
//! every core, where [`Service::handle`] may block or compute, within a deadline.
//! A full queue is answered `503` with `Retry-After`, a deadline passed `504`, a
//! handler that panics `500`; the service keeps serving.
//!
//! Goals: one small shape that any protocol can serve (the data plane answers
//! HTTP/1.1 and HTTP/3 from the same decision) and that a service can be written
//! against without knowing sockets, io_uring or the other services. Non-goals
//! here: the transports themselves, and how the node wires services in (the
//! binary does that).
//!
//! Architecture invariant: this crate depends on no other Tessera crate; the data
//! plane depends on it, and so does every service.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod body;
pub mod http;
mod mounts;
mod node;
mod pool;

pub use body::{request_body, BodyFeed, BodyWatch, RequestBody, Unread, REQUEST_CHUNKS_IN_FLIGHT};
pub use http::{Method, Status, STATUSES};
pub use mounts::{strip_port, DeploymentName, HostNames, Mount, MountConflict, MountTable};
pub use node::{
    Alone, BlobStore, Change, ClusterView, Delta, Deployments, Hash, Instance, Ledger, Member,
    Metrics, Node,
};
pub use pool::{PoolConfig, PoolError, WorkerPool};
// Re-exported for services' config types and sections.
pub use serde;
pub use toml;

// Re-exported so services and the data plane name one channel crate.
pub use flume;

/// Whether `ip` is on the node's own networks (loopback, private, CGNAT,
/// link-local, unspecified, broadcast), where what a customer asks for (a
/// function's `fetch`, a pin's origins) may not go unless the operator
/// allows it: it could probe the operator's network or the node's admin API.
pub fn is_private_ip(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_private_ip(IpAddr::V4(v4)))
        }
    }
}

/// A deployment's spec as its owner wrote it, in the service's own type:
/// JSON if it starts with `{`, else TOML. Err says what is wrong, in words
/// for the owner (the service's own checks come after).
pub fn parse_spec<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "the spec is not UTF-8".to_string())?;
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| format!("the spec is not valid JSON: {e}"))
    } else {
        toml::from_str(text).map_err(|e| format!("the spec is not valid TOML: {}", e.message()))
    }
}

/// Header lookup on a request head, case-insensitive by name. The transports
/// implement it over what they parsed (no copy).
pub trait Headers {
    /// The first value of header `name` (lower case), if any.
    fn get(&self, name: &str) -> Option<&[u8]>;
    /// Every header, in order, as (name, value); names as received.
    fn each(&self, f: &mut dyn FnMut(&[u8], &[u8]));
}

/// A request head as a service sees it, on the core.
pub struct Request<'a> {
    pub method: Method,
    /// The path, without the query; origin-form.
    pub path: &'a [u8],
    pub query: &'a [u8],
    /// `Host` (HTTP/1.1) or `:authority` (HTTP/3).
    pub host: Option<&'a [u8]>,
    pub headers: &'a dyn Headers,
    /// The client's address.
    pub peer: Option<SocketAddr>,
}

impl Request<'_> {
    /// Copies the head for work off the core.
    pub fn to_owned(&self) -> OwnedRequest {
        let mut headers = Vec::new();
        self.headers
            .each(&mut |n, v| headers.push((n.to_vec(), v.to_vec())));
        OwnedRequest {
            method: self.method,
            path: self.path.to_vec(),
            query: self.query.to_vec(),
            host: self.host.map(<[u8]>::to_vec),
            headers,
            peer: self.peer,
        }
    }
}

/// A request head copied for a worker, with the body beside it.
#[derive(Debug, Clone)]
pub struct OwnedRequest {
    pub method: Method,
    pub path: Vec<u8>,
    pub query: Vec<u8>,
    pub host: Option<Vec<u8>>,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub peer: Option<SocketAddr>,
}

impl OwnedRequest {
    /// The first value of header `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.as_slice())
    }
}

/// Chunks a streamed body may have in flight between the worker that makes them
/// and the connection that sends them: the worker's `send` blocks beyond this,
/// so a slow client slows the producer instead of filling memory.
pub const STREAM_CHUNKS_IN_FLIGHT: usize = 4;

/// A response from a service: status, headers, body.
#[derive(Debug)]
pub struct Reply {
    pub status: Status,
    /// Header names in any case; `Content-Length`, `Transfer-Encoding` and
    /// `Connection` are the data plane's.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Body,
}

/// A reply's body.
#[derive(Debug)]
pub enum Body {
    /// All of it, now.
    Bytes(Vec<u8>),
    /// Produced off the core, chunk by chunk, and sent as it comes (chunked
    /// over HTTP/1.1, DATA frames over HTTP/3) with back-pressure. Made by
    /// [`Reply::streamed`].
    Stream(BodyStream),
    /// A stored blob, served as [`Decision::Blob`] serves one (zero-copy,
    /// ranges, conditional requests): for a handler that stored what it
    /// answers with, such as a cache miss it just fetched. Only a handler's
    /// reply (off the core) may carry it; the reply's status and headers are
    /// then the blob's.
    Blob(Box<BlobReply>),
}

impl Body {
    /// The bytes of a whole body; empty for a stream.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Body::Bytes(b) => b,
            Body::Stream(_) | Body::Blob(_) => &[],
        }
    }
}

/// The producing function of a streamed body: it sends chunks and returns
/// Ok once the body is whole (an Err or a panic aborts the response, so the
/// client never takes a cut-off body for a complete one).
pub type Producer = Box<dyn FnOnce(&ChunkSender) -> Result<(), String> + Send>;

/// The consuming end of a streamed body, for the data plane.
pub struct BodyStream {
    rx: flume::Receiver<Vec<u8>>,
    complete: Arc<AtomicBool>,
    producer: Option<(Producer, ChunkSender)>,
}

impl std::fmt::Debug for BodyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BodyStream")
    }
}

impl BodyStream {
    /// The chunks, in order; disconnected at the end.
    pub fn chunks(&self) -> &flume::Receiver<Vec<u8>> {
        &self.rx
    }

    /// After the chunks ended: whether the producer finished the body (else it
    /// failed and the response must be aborted).
    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    /// The producer, for the worker that runs it after the head is sent.
    pub fn take_producer(&mut self) -> Option<(Producer, ChunkSender)> {
        self.producer.take()
    }
}

/// Where a producer sends its chunks; `send` blocks while
/// [`STREAM_CHUNKS_IN_FLIGHT`] wait for the client.
pub struct ChunkSender {
    tx: flume::Sender<Vec<u8>>,
    complete: Arc<AtomicBool>,
}

/// The client went away: stop producing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

impl ChunkSender {
    pub fn send(&self, chunk: Vec<u8>) -> Result<(), Gone> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.tx.send(chunk).map_err(|_| Gone)
    }

    /// Marks the body whole; called by the pool when the producer returns Ok.
    pub fn finish(self) {
        self.complete.store(true, Ordering::Release);
    }
}

impl Reply {
    pub fn new(status: Status, content_type: &str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".into(), content_type.as_bytes().to_vec())],
            body: Body::Bytes(body.into()),
        }
    }

    /// A reply whose body `produce` makes, chunk by chunk, on the service's
    /// worker once the head is on its way (the worker is busy until it
    /// returns, so the pool bounds streams too).
    pub fn streamed(
        status: Status,
        content_type: &str,
        produce: impl FnOnce(&ChunkSender) -> Result<(), String> + Send + 'static,
    ) -> Reply {
        let (tx, rx) = flume::bounded(STREAM_CHUNKS_IN_FLIGHT);
        let complete = Arc::new(AtomicBool::new(false));
        let sender = ChunkSender {
            tx,
            complete: complete.clone(),
        };
        Reply {
            status,
            headers: vec![("Content-Type".into(), content_type.as_bytes().to_vec())],
            body: Body::Stream(BodyStream {
                rx,
                complete,
                producer: Some((Box::new(produce), sender)),
            }),
        }
    }

    /// A stored blob as the reply (see [`Body::Blob`]).
    pub fn blob(blob: BlobReply) -> Reply {
        Reply {
            status: Status::Ok,
            headers: Vec::new(),
            body: Body::Blob(Box::new(blob)),
        }
    }

    pub fn text(status: Status, text: &str) -> Reply {
        Reply::new(status, "text/plain", text)
    }

    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Reply {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

/// What a service decides on the core.
pub enum Decision {
    /// Answer with this now.
    Reply(Reply),
    /// Hand the request to [`Service::handle`] on the service's pool.
    Work,
    /// Serve a stored blob as the response, as the data plane serves blobs:
    /// zero-copy over HTTP/1.1, mapped over HTTP/3, with ranges, conditional
    /// requests and `ETag` (the blob's hash). A static file, a CDN hit, an
    /// IPFS block: served exactly as fast as a blob.
    Blob(BlobReply),
    /// Accept a WebSocket (RFC 6455) on this request: the data plane checks
    /// the handshake, answers 101, and runs [`Service::socket`] on the pool.
    Upgrade,
}

/// A stored blob as a reply, with what the service says of it. The strings
/// are shared with the service's published snapshot, so answering costs
/// reference counts, not allocations.
#[derive(Debug, Clone)]
pub struct BlobReply {
    /// The blob's BLAKE3 hash.
    pub hash: [u8; 32],
    pub content_type: Arc<str>,
    /// `Cache-Control` instead of a blob's default (immutable for a year).
    pub cache_control: Option<Arc<str>>,
    /// More response headers, names in lower case.
    pub headers: Option<Arc<[(String, String)]>>,
    /// When the representation was stored (Unix seconds): the data plane
    /// sends `Age` (RFC 9111 §5.1) counted from it. None: no `Age`.
    pub stored_at: Option<u64>,
    /// Another status than 200 (a site's `404.html` under 404): the whole
    /// blob is sent, ranges and preconditions are not evaluated (they are
    /// defined for a 200's representation), and never as a verified stream.
    pub status: Option<Status>,
}

/// Messages each way a WebSocket may have queued; beyond this the reader
/// waits (the client is read no faster than the service takes messages).
pub const SOCKET_MESSAGES_QUEUED: usize = 16;

/// A WebSocket message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Vec<u8>),
}

/// A WebSocket as [`Service::socket`] sees it, on its worker: blocking
/// receive and send of whole messages. Pings, pongs and the closing
/// handshake are the data plane's. Returning from `socket` closes it (1000).
pub struct Socket {
    pub incoming: flume::Receiver<Message>,
    pub outgoing: flume::Sender<Message>,
}

impl Socket {
    /// The next message; None once the client closed or went away.
    pub fn recv(&self) -> Option<Message> {
        self.incoming.recv().ok()
    }

    pub fn send(&self, message: Message) -> Result<(), Gone> {
        self.outgoing.send(message).map_err(|_| Gone)
    }
}

/// A service on the node. Implementations are shared by every core (hence
/// `Send + Sync`); [`Service::decide`] must not block.
pub trait Service: Send + Sync + 'static {
    /// The service's name, in logs and metrics (`[a-z0-9_-]`).
    fn name(&self) -> &str;
    /// What the service answers for. Claimed once, at start.
    fn mounts(&self) -> Vec<Mount>;
    /// Its worker pool's size, queue bound and deadline.
    fn pool(&self) -> PoolConfig {
        PoolConfig::default()
    }
    /// The largest request body [`Service::handle`] takes: a longer declared
    /// one is answered 413 and never read; a chunked one that grows past it is
    /// cut off (the handler's read fails) and answered 413.
    fn max_body_bytes(&self) -> u64 {
        1 << 20
    }
    /// On the core: answer now or ask for [`Service::handle`].
    fn decide(&self, req: &Request<'_>) -> Decision;
    /// Off the core, on the service's pool: may block, within the deadline.
    /// The body streams in as the client sends it (see [`RequestBody`]); the
    /// deadline runs from when all of it has arrived.
    fn handle(&self, req: OwnedRequest, body: RequestBody) -> Reply;
    /// A WebSocket this service accepted ([`Decision::Upgrade`]), on its
    /// pool for as long as it lasts (so the pool's size bounds the sockets
    /// it serves at once). The default closes it at once.
    fn socket(&self, req: OwnedRequest, socket: Socket) {
        let _ = (req, socket);
    }
    /// The largest WebSocket message it takes (1009 beyond).
    fn max_message_bytes(&self) -> usize {
        1 << 20
    }
    /// On the core, for a service that claims [`Mount::DeployedHosts`]:
    /// whether it answers for `host` (no port; any case). Must not block
    /// or allocate: it is asked for requests that are not its own.
    fn claims_host(&self, host: &[u8]) -> bool {
        let _ = host;
        false
    }
}

/// Per-service counters, rendered in `/metrics` with the service's name.
#[derive(Debug, Default)]
pub struct ServiceStats {
    pub requests: AtomicU64,
    /// Requests handed to the pool.
    pub jobs: AtomicU64,
    /// Refused with 503: the queue was full.
    pub rejected: AtomicU64,
    /// Answered 504: the deadline passed.
    pub timed_out: AtomicU64,
    /// Handlers that panicked (answered 500).
    pub panics: AtomicU64,
    /// Workers running a request now (a gauge).
    pub busy: AtomicU64,
}

impl ServiceStats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text for the service named `name`.
    pub fn render(&self, name: &str, out: &mut String) {
        use std::fmt::Write;
        for (metric, help, counter) in [
            ("requests", "requests routed to the service", &self.requests),
            ("jobs", "requests handed to its worker pool", &self.jobs),
            (
                "rejected",
                "requests refused with 503, the queue full",
                &self.rejected,
            ),
            (
                "timed_out",
                "requests answered 504, the deadline passed",
                &self.timed_out,
            ),
            (
                "panics",
                "handlers that panicked (answered 500)",
                &self.panics,
            ),
        ] {
            let _ = writeln!(out, "# HELP tessera_service_{metric}_total Service {help}.");
            let _ = writeln!(out, "# TYPE tessera_service_{metric}_total counter");
            let _ = writeln!(
                out,
                "tessera_service_{metric}_total{{service=\"{name}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP tessera_service_busy Service workers running a request now."
        );
        let _ = writeln!(out, "# TYPE tessera_service_busy gauge");
        let _ = writeln!(
            out,
            "tessera_service_busy{{service=\"{name}\"}} {}",
            self.busy.load(Ordering::Relaxed)
        );
    }
}

/// A service as the binary hands it to the data plane: the service and the
/// metrics it registered on its [`Node`].
#[derive(Clone)]
pub struct Built {
    pub service: Arc<dyn Service>,
    pub metrics: Metrics,
}

/// A service as the node runs it: the service, its pool and its counters.
pub struct Running {
    pub service: Arc<dyn Service>,
    pub pool: WorkerPool,
    pub stats: Arc<ServiceStats>,
    pub metrics: Metrics,
    pub deadline: Duration,
}

impl Running {
    pub fn start(built: &Built) -> std::io::Result<Running> {
        let service = built.service.clone();
        let config = service.pool();
        let stats = Arc::new(ServiceStats::default());
        let pool = WorkerPool::new(service.name(), config, stats.clone())?;
        Ok(Running {
            service,
            pool,
            stats,
            metrics: built.metrics.clone(),
            deadline: config.deadline,
        })
    }

    /// Prometheus text: the node's counters for the service, then its own.
    pub fn render_metrics(&self, out: &mut String) {
        let name = self.service.name();
        self.stats.render(name, out);
        self.metrics.render(name, out);
    }
}
