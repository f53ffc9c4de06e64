//! The services the node runs, as the transports see them: one mount table, and
//! each service's running pool. See the `service-api` crate for the interface.
//!
//! On the core: the mount table says which service a request is for, the
//! transport builds a [`Request`] view over what it parsed (no copy) and the
//! service decides. Off the core: [`call`] queues the work on the service's pool
//! and waits for it without blocking the core, within the service's deadline.

use std::sync::Arc;

use service_api::{
    BodyWatch, Built, Decision, Headers, MountTable, OwnedRequest, PoolError, Reply, Request,
    RequestBody, Running, ServiceStats, Status,
};

use super::routes::Plan;

/// The node's own path prefixes: no service may claim one, or a prefix of one.
pub const RESERVED_PREFIXES: &[&str] = &[
    "/healthz",
    "/metrics",
    "/cluster/",
    "/route/",
    "/blobs",
    "/receipts",
    "/ledger/",
    "/deployments",
];

/// Every service the node runs.
#[derive(Default)]
pub struct Services {
    pub table: MountTable,
    pub running: Vec<Arc<Running>>,
}

impl Services {
    /// Claims every service's mounts and starts its pool. Err: the message
    /// that stops the node (two services on one mount, a pool that cannot
    /// start).
    pub fn start(list: &[Built]) -> Result<Services, String> {
        let claims: Vec<(&str, Vec<service_api::Mount>)> = list
            .iter()
            .map(|b| (b.service.name(), b.service.mounts()))
            .collect();
        let table = MountTable::new(&claims, RESERVED_PREFIXES).map_err(|e| e.to_string())?;
        let running = list
            .iter()
            .map(|b| {
                Running::start(b).map(Arc::new).map_err(|e| {
                    format!(
                        "service {}: cannot start its workers: {e}",
                        b.service.name()
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Services { table, running })
    }

    /// Which service answers a request for `host` and `path`.
    pub fn find(&self, host: Option<&[u8]>, path: &[u8]) -> Option<usize> {
        self.table.find_with(host, path, &|i, host| {
            self.running
                .get(i)
                .is_some_and(|r| r.service.claims_host(host))
        })
    }

    /// Prometheus text for every service.
    pub fn render_metrics(&self, out: &mut String) {
        for r in &self.running {
            r.render_metrics(out);
        }
    }
}

/// The store as a service sees it ([`service_api::BlobStore`]): what a
/// service puts is handed to replication like a client's upload.
pub struct ServiceStore {
    pub store: Arc<crate::store::Store>,
    pub control: Arc<dyn super::ControlPlane>,
}

fn io_error(e: crate::store::StoreError) -> std::io::Error {
    use crate::store::StoreError;
    use std::io::{Error, ErrorKind};
    match e {
        StoreError::Io(e) => e,
        StoreError::NotFound(_) => Error::new(ErrorKind::NotFound, e.to_string()),
        StoreError::Mismatch { .. } | StoreError::Verify(_) => {
            Error::new(ErrorKind::InvalidData, e.to_string())
        }
        StoreError::Full { .. } | StoreError::NoSpace => {
            Error::new(ErrorKind::StorageFull, e.to_string())
        }
        StoreError::TooLarge { .. } => Error::new(ErrorKind::FileTooLarge, e.to_string()),
        StoreError::Db(_) => Error::other(e.to_string()),
    }
}

impl ServiceStore {
    fn put_with(
        &self,
        from: &mut dyn std::io::Read,
        expected: Option<crate::BlobHash>,
    ) -> std::io::Result<crate::store::PutOutcome> {
        let mut writer = self.store.begin_put(u64::MAX).map_err(io_error)?;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            writer.write(&buf[..n]).map_err(io_error)?;
        }
        let out = match expected {
            Some(hash) => writer.finish_expecting(hash),
            None => writer.finish(),
        }
        .map_err(io_error)?;
        if !out.existed {
            self.control.stored(&out.hash.0);
        }
        Ok(out)
    }
}

impl service_api::BlobStore for ServiceStore {
    fn size(&self, hash: &service_api::Hash) -> Option<u64> {
        self.store
            .info(&crate::BlobHash(*hash))
            .ok()
            .flatten()
            .map(|i| i.size)
    }

    fn read(&self, hash: &service_api::Hash, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let (file, size) = self
            .store
            .open_blob(&crate::BlobHash(*hash))
            .map_err(io_error)?;
        let len = (size.saturating_sub(offset)).min(len as u64) as usize;
        let mut out = vec![0u8; len];
        file.read_exact_at(&mut out, offset)?;
        Ok(out)
    }

    fn put(&self, from: &mut dyn std::io::Read) -> std::io::Result<(service_api::Hash, u64)> {
        let out = self.put_with(from, None)?;
        Ok((out.hash.0, out.size))
    }

    fn put_expecting(
        &self,
        expected: &service_api::Hash,
        from: &mut dyn std::io::Read,
    ) -> std::io::Result<u64> {
        Ok(self.put_with(from, Some(crate::BlobHash(*expected)))?.size)
    }

    fn pin(&self, hashes: &[service_api::Hash], pinned: bool) -> std::io::Result<usize> {
        let hashes: Vec<crate::BlobHash> = hashes.iter().map(|h| crate::BlobHash(*h)).collect();
        self.store
            .set_pinned_many(&hashes, pinned)
            .map_err(io_error)
    }
}

/// A service's decision, as a [`Plan`] the transports carry out like any other.
pub(super) fn plan(running: &Arc<Running>, view: &Request<'_>) -> Plan {
    ServiceStats::bump(&running.stats.requests);
    match running.service.decide(view) {
        Decision::Reply(reply) => Plan::Reply(reply),
        Decision::Work => Plan::Work(running.clone(), Box::new(view.to_owned())),
        Decision::Upgrade => Plan::Upgrade(running.clone(), Box::new(view.to_owned())),
        Decision::Blob(blob) => Plan::Blob(crate::BlobHash(blob.hash), Some(blob)),
    }
}

/// The answer when a service's queue is full.
pub(super) fn busy() -> Reply {
    Reply::text(
        Status::ServiceUnavailable,
        "the service is at its queue limit; retry shortly\n",
    )
    .header("Retry-After", "1")
}

/// A WebSocket's two ends on the data plane's side, once the service's
/// `socket()` is queued on its pool.
pub(super) struct SocketEnds {
    /// Messages from the client, for the service.
    pub to_service: flume::Sender<service_api::Message>,
    /// Messages from the service, for the client; disconnected once `socket()`
    /// returned.
    pub from_service: flume::Receiver<service_api::Message>,
    /// The largest message the service takes.
    pub max_message: usize,
}

/// Queues the service's `socket()` for an accepted WebSocket; Err: its queue
/// is full (answer [`busy`]).
pub(super) fn start_socket(running: &Running, req: OwnedRequest) -> Result<SocketEnds, PoolError> {
    let (to_service, incoming) = flume::bounded(service_api::SOCKET_MESSAGES_QUEUED);
    let (outgoing, from_service) = flume::bounded(service_api::SOCKET_MESSAGES_QUEUED);
    let service = running.service.clone();
    let max_message = service.max_message_bytes();
    let socket = service_api::Socket { incoming, outgoing };
    running.pool.submit(move || {
        service.socket(req, socket);
        Reply::text(Status::Ok, "")
    })?;
    Ok(SocketEnds {
        to_service,
        from_service,
        max_message,
    })
}

/// A request queued on a service's pool: its reply comes on `answer`.
pub(super) struct Queued {
    answer: flume::Receiver<Reply>,
}

impl Queued {
    /// The handler's reply, however long it takes: to race against the
    /// body's arrival (a handler may answer before reading all of it).
    pub(super) async fn early(&self) -> Reply {
        reply_of(self.answer.recv_async().await)
    }
}

fn reply_of(r: Result<Reply, flume::RecvError>) -> Reply {
    r.unwrap_or_else(|_| {
        Reply::text(
            Status::InternalServerError,
            "the service dropped the request\n",
        )
    })
}

/// Queues a request on the service's pool, its body to stream in; Err: the
/// queue is full ([`busy`]).
pub(super) fn submit(
    running: &Running,
    req: OwnedRequest,
    body: RequestBody,
) -> Result<Queued, Reply> {
    let service = running.service.clone();
    match running.pool.submit(move || service.handle(req, body)) {
        Ok(answer) => Ok(Queued { answer }),
        Err(PoolError::Full) => Err(busy()),
    }
}

/// The reply to a queued request, waited for without blocking the core: `413`
/// if its body passed the limit, `504` after the service's deadline (from
/// now: the body has arrived), `500` if the handler panicked.
pub(super) async fn answer(running: &Running, queued: Queued, body: &BodyWatch) -> Reply {
    let reply = monoio::time::timeout(running.deadline, queued.answer.recv_async()).await;
    if body.too_large() {
        return too_large(running.service.max_body_bytes());
    }
    match reply {
        Ok(r) => reply_of(r),
        Err(_) => timed_out(running),
    }
}

/// The answer when a service's deadline passed.
pub(super) fn timed_out(running: &Running) -> Reply {
    ServiceStats::bump(&running.stats.timed_out);
    Reply::text(
        Status::GatewayTimeout,
        "the service did not answer within its deadline\n",
    )
}

/// The answer to a request body over a service's limit.
pub(super) fn too_large(limit: u64) -> Reply {
    Reply::text(
        Status::PayloadTooLarge,
        &format!("request body too large (at most {limit} bytes)\n"),
    )
}

/// The headers of an HTTP/1.1 request head, read from its raw bytes.
pub(super) struct RawHead<'a>(pub &'a [u8]);

impl RawHead<'_> {
    fn lines(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.0.split(|&b| b == b'\n').skip(1).filter_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().position(|&b| b == b':')?;
            Some((&line[..colon], line[colon + 1..].trim_ascii()))
        })
    }
}

impl Headers for RawHead<'_> {
    fn get(&self, name: &str) -> Option<&[u8]> {
        self.lines()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    fn each(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        for (n, v) in self.lines() {
            f(n, v);
        }
    }
}

/// The headers of an HTTP/3 request, pseudo-headers left out.
pub(super) struct H3Headers<'a>(pub &'a [quiche::h3::Header]);

impl Headers for H3Headers<'_> {
    fn get(&self, name: &str) -> Option<&[u8]> {
        use quiche::h3::NameValue;
        self.0
            .iter()
            .find(|h| h.name().eq_ignore_ascii_case(name.as_bytes()))
            .map(|h| h.value())
    }

    fn each(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        use quiche::h3::NameValue;
        for h in self.0.iter().filter(|h| !h.name().starts_with(b":")) {
            f(h.name(), h.value());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_head_headers() {
        let head = RawHead(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Thing:  v 1 \r\nbad line\r\n\r\n");
        assert_eq!(head.get("host"), Some(&b"a"[..]));
        assert_eq!(head.get("x-thing"), Some(&b"v 1"[..]));
        assert_eq!(head.get("missing"), None);
        let mut all = Vec::new();
        head.each(&mut |n, v| all.push((n.to_vec(), v.to_vec())));
        assert_eq!(all.len(), 2);
    }
}
