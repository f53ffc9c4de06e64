//! The services the node runs, as the transports see them: one mount table, and
//! each service's running pool. See the `service-api` crate for the interface.
//!
//! On the core: the mount table says which service a request is for, the
//! transport builds a [`Request`] view over what it parsed (no copy) and the
//! service decides. Off the core: [`call`] queues the work on the service's pool
//! and waits for it without blocking the core, within the service's deadline.

use std::sync::Arc;

use service_api::{
    Decision, Headers, MountTable, OwnedRequest, PoolError, Reply, Request, Running, Service,
    ServiceStats, Status,
};

use super::routes::{AfterBody, Plan};

/// The node's own path prefixes: no service may claim one, or a prefix of one.
pub const RESERVED_PREFIXES: &[&str] = &[
    "/healthz",
    "/metrics",
    "/cluster/",
    "/route/",
    "/blobs",
    "/receipts",
    "/ledger/",
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
    pub fn start(list: &[Arc<dyn Service>]) -> Result<Services, String> {
        let claims: Vec<(&str, Vec<service_api::Mount>)> =
            list.iter().map(|s| (s.name(), s.mounts())).collect();
        let table = MountTable::new(&claims, RESERVED_PREFIXES).map_err(|e| e.to_string())?;
        let running = list
            .iter()
            .map(|s| {
                Running::start(s.clone())
                    .map(Arc::new)
                    .map_err(|e| format!("service {}: cannot start its workers: {e}", s.name()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Services { table, running })
    }

    /// Prometheus text for every service.
    pub fn render_metrics(&self, out: &mut String) {
        for r in &self.running {
            r.stats.render(r.service.name(), out);
        }
    }
}

/// A service's decision, as a [`Plan`] the transports carry out like any other.
pub(super) fn plan(running: &Arc<Running>, view: &Request<'_>) -> Plan {
    ServiceStats::bump(&running.stats.requests);
    match running.service.decide(view) {
        Decision::Reply(reply) => Plan::Reply(reply),
        Decision::Work => Plan::Body {
            limit: running.service.max_body_bytes(),
            what: "requests",
            required: false,
            then: AfterBody::Service(running.clone(), Box::new(view.to_owned())),
        },
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

/// Runs a request on the service's pool and waits for the reply (not blocking
/// the core): `503` with `Retry-After` when its queue is full, `504` after its
/// deadline, `500` if the handler panicked.
pub(super) async fn call(running: Arc<Running>, req: OwnedRequest, body: Vec<u8>) -> Reply {
    let service = running.service.clone();
    let answer = match running.pool.submit(move || service.handle(req, body)) {
        Ok(answer) => answer,
        Err(PoolError::Full) => return busy(),
    };
    match monoio::time::timeout(running.deadline, answer.recv_async()).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) => Reply::text(
            Status::InternalServerError,
            "the service dropped the request\n",
        ),
        Err(_) => {
            ServiceStats::bump(&running.stats.timed_out);
            Reply::text(
                Status::GatewayTimeout,
                "the service did not answer within its deadline\n",
            )
        }
    }
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
