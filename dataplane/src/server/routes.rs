//! One router for both transports.
//!
//! Each transport turns a request head into a [`Head`] (method, route, the admin
//! token's verdict, the signing node) and asks [`plan`] what to do with it. The
//! answer is a [`Plan`]: a reply ready now, work to run off the core (with or
//! without the request body first), or one of the two paths a transport still
//! serves itself because they are its zero-copy hot paths (a blob GET, an upload
//! streamed into the store). Neither transport names any other route: a route
//! added here exists on HTTP/1.1 and HTTP/3 alike, with the same statuses,
//! headers and checks (admin token, node signatures).
//!
//! What runs where: [`plan`] runs on the core and does not block (metrics and the
//! cluster view are rendered from memory). [`Job`]s and [`BodyJob`]s run on the
//! store-I/O pool: store operations, receipts (fsynced), ledger calls.

use std::sync::Arc;

use service_api::{OwnedRequest, Running};

use super::{constant_time_eq, Core, LedgerCall, LedgerReply};
use crate::hash::BlobHash;
use crate::http::{self, DeployRoute, LedgerRoute, Method, Route, Status};
use crate::store::{Store, StoreError};

/// Largest body a `/ledger/` request may carry (a consensus message).
pub(super) const MAX_LEDGER_BODY: u64 = 4 << 20;
/// Largest deployment transaction (a spec is at most 64 KiB).
pub(super) const MAX_DEPLOY_BODY: u64 = 256 << 10;
/// Largest receipts batch a client may send in one request.
pub(super) const MAX_RECEIPTS_BODY: u64 = 8 << 10;

/// Built-in replies are the services' reply type: one shape for both
/// transports to write.
pub(super) use service_api::Reply;

fn json(text: String) -> Reply {
    Reply::new(Status::Ok, "application/json", text)
}

fn no_content() -> Reply {
    Reply {
        status: Status::NoContent,
        headers: Vec::new(),
        body: service_api::Body::Bytes(Vec::new()),
    }
}

/// Whether a response states a `Content-Length`: not a 204 or a 304 (RFC 9110
/// §8.6).
pub(super) fn has_length(status: Status) -> bool {
    !matches!(status, Status::NoContent | Status::NotModified)
}

impl From<LedgerReply> for Reply {
    fn from(r: LedgerReply) -> Reply {
        Reply::new(r.status, r.content_type, r.body)
    }
}

/// Work for the store-I/O pool that produces the reply.
pub(super) type Job = Box<dyn FnOnce() -> Reply + Send>;
/// The same, given the request body.
pub(super) type BodyJob = Box<dyn FnOnce(Vec<u8>) -> Reply + Send>;

/// What to do with a request.
pub(super) enum Plan {
    /// Answer now.
    Reply(Reply),
    /// `GET`/`HEAD /blobs/{hash}`, or a service's [`service_api::BlobReply`]
    /// (its content type and caching headers): the transport serves the blob
    /// (zero-copy over HTTP/1.1, mapped over HTTP/3), preconditions and ranges
    /// included.
    Blob(BlobHash, Option<service_api::BlobReply>),
    /// `POST /blobs`: the transport streams the body into the store.
    Upload,
    /// Run off the core, then answer.
    OffCore(Job),
    /// Read the whole body (at most `limit` bytes; `what` names it in errors;
    /// `required`: a request without one is 400), then hand it on off the core
    /// and answer.
    Body {
        limit: u64,
        what: &'static str,
        required: bool,
        then: BodyJob,
    },
    /// A service's mount (index into the node's services): the transport builds
    /// the request view and asks [`super::services::plan`].
    Service(usize),
    /// A request for a service's pool: the transport queues it and streams
    /// its body in (at most the service's `max_body_bytes`), then answers.
    Work(Arc<Running>, Box<OwnedRequest>),
    /// A WebSocket a service accepted: the transport checks the handshake and
    /// runs the session, the service's [`service_api::Service::socket`] on its
    /// pool.
    Upgrade(Arc<Running>, Box<OwnedRequest>),
}

/// The admin token's verdict on a request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Auth {
    /// No `admin_token` configured: admin routes are closed.
    Disabled,
    Missing,
    Wrong,
    Ok,
}

/// Checks an `Authorization` value against the configured admin token
/// (constant-time).
pub(super) fn auth(core: &Core, authorization: Option<&[u8]>) -> Auth {
    match (&core.shared.config.admin_token, authorization) {
        (None, _) => Auth::Disabled,
        (Some(_), None) => Auth::Missing,
        (Some(token), Some(given)) => match given.strip_prefix(b"Bearer ") {
            Some(g) if constant_time_eq(g, token.as_bytes()) => Auth::Ok,
            _ => Auth::Wrong,
        },
    }
}

/// The signing node of a request that says it comes from one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Peer {
    /// Not from a node (no `X-Tessera-Peer`).
    None,
    /// Signed by this node, a live member, just now.
    Signed([u8; 32]),
    /// Claims to be from a node and does not check out: 401.
    Refused,
}

/// Checks the `X-Tessera-Peer`, `-Time` and `-Sig` values of a request (see
/// [`http::peer_message`]). Without a control plane there is no one to check
/// against: refused.
pub(super) fn peer(
    core: &Core,
    method: Method,
    path: &[u8],
    id: Option<&[u8]>,
    time: Option<&[u8]>,
    sig: Option<&[u8]>,
) -> Peer {
    let Some(id) = id else {
        return Peer::None;
    };
    let (Some(time), Some(sig)) = (time, sig) else {
        return Peer::Refused;
    };
    let message = http::peer_message(method.as_str().as_bytes(), path, time);
    let signed = core
        .shared
        .hooks
        .control
        .verify_peer(id, time, sig, &message);
    match (signed, http::parse_hex32(id)) {
        (true, Some(node)) => Peer::Signed(node),
        _ => Peer::Refused,
    }
}

/// What a transport knows of a request head, for [`plan`].
pub(super) struct Head {
    pub method: Method,
    pub route: Route,
    pub auth: Auth,
    pub peer: Peer,
    /// The service whose mount the request falls under, if any.
    pub service: Option<usize>,
}

/// Decides what to do with a request. Runs on the core; never blocks.
pub(super) fn plan(core: &Core, head: &Head) -> Plan {
    let hooks = &core.shared.hooks;
    let get = matches!(head.method, Method::Get | Method::Head);
    if head.peer == Peer::Refused {
        return Plan::Reply(Reply::text(
            Status::Unauthorized,
            "request says it comes from a node, but its signature does not check out\n",
        ));
    }
    if let Some(index) = head.service {
        return Plan::Service(index);
    }
    let no_control_plane = || Reply::text(Status::NotFound, "no control plane on this node\n");
    match (head.route, head.method) {
        (Route::Healthz, _) if get => Plan::Reply(Reply::text(Status::Ok, "ok\n")),
        (Route::Metrics, _) if get => {
            let mut text = core.shared.metrics.render(&core.shared.store);
            hooks.control.metrics(&mut text);
            core.shared.services.render_metrics(&mut text);
            Plan::Reply(Reply::new(Status::Ok, "text/plain; version=0.0.4", text))
        }
        (Route::Members, _) if get => {
            Plan::Reply(hooks.control.members().map_or_else(no_control_plane, json))
        }
        (Route::RouteOf(hash), _) if get => {
            let holds = matches!(core.open_blob(&hash), Ok(Some(_)));
            let answer = hooks.control.route(&hash.0, holds);
            Plan::Reply(answer.map_or_else(no_control_plane, json))
        }
        (Route::Blob(hash), _) if get => Plan::Blob(hash, None),
        (Route::Outboard(hash), _) if get => {
            let store = core.shared.store.clone();
            Plan::OffCore(Box::new(move || outboard(&store, &hash)))
        }
        (Route::Blobs, Method::Post) => Plan::Upload,
        (Route::Receipts, Method::Post) => {
            let control = hooks.control.clone();
            Plan::Body {
                limit: MAX_RECEIPTS_BODY,
                what: "receipts",
                required: true,
                then: Box::new(move |body| match control.store_receipts(&body) {
                    Some(Ok(k)) => Reply::new(
                        Status::Accepted,
                        "application/json",
                        format!("{{\"accepted\":{k}}}\n"),
                    ),
                    Some(Err(why)) => {
                        Reply::text(Status::BadRequest, &format!("receipts refused: {why}\n"))
                    }
                    None => no_control_plane(),
                }),
            }
        }
        (Route::Deployments(DeployRoute::All), Method::Post) => {
            let control = hooks.control.clone();
            Plan::Body {
                limit: MAX_DEPLOY_BODY,
                what: "deployment transactions",
                required: true,
                then: Box::new(move |body| {
                    control
                        .deployments(DeployRoute::All, Some(body))
                        .unwrap_or_else(no_control_plane)
                }),
            }
        }
        (Route::Deployments(r), _) if get => {
            let control = hooks.control.clone();
            Plan::OffCore(Box::new(move || {
                control
                    .deployments(r, None)
                    .unwrap_or_else(no_control_plane)
            }))
        }
        (Route::Ledger(l), Method::Post) if l.is_post() => ledger(core, head, l),
        (Route::Ledger(l), Method::Get) if !l.is_post() => ledger(core, head, l),
        (Route::Blob(hash), Method::Delete) => {
            admin(core, head.auth, move |store| store.delete(&hash))
        }
        (Route::Pin(hash), Method::Put) => {
            admin(core, head.auth, move |store| store.set_pinned(&hash, true))
        }
        (Route::Pin(hash), Method::Delete) => {
            admin(core, head.auth, move |store| store.set_pinned(&hash, false))
        }
        (Route::BadHash(e), _) => Plan::Reply(Reply::text(
            Status::BadRequest,
            &format!("malformed blob hash: {e}\n"),
        )),
        (Route::NotFound, _) => Plan::Reply(Reply::text(
            Status::NotFound,
            "no such route; see the API table in the README\n",
        )),
        (route, _) => Plan::Reply(
            Reply::text(Status::MethodNotAllowed, "method not allowed\n")
                .header("Allow", route.allow()),
        ),
    }
}

/// `/ledger/...`: handed to the control plane off the core, with the body of a
/// POST and the node that signed the request.
fn ledger(core: &Core, head: &Head, route: LedgerRoute) -> Plan {
    let control = core.shared.hooks.control.clone();
    let peer = match head.peer {
        Peer::Signed(node) => Some(node),
        _ => None,
    };
    let call = move |body| -> Reply {
        match control.ledger(LedgerCall { route, body, peer }) {
            Some(reply) => reply.into(),
            None => Reply::text(
                Status::NotFound,
                "this node runs no ledger (set [ledger] genesis)\n",
            ),
        }
    };
    if route.is_post() {
        Plan::Body {
            limit: MAX_LEDGER_BODY,
            what: "ledger requests",
            required: true,
            then: Box::new(call),
        }
    } else {
        Plan::OffCore(Box::new(move || call(Vec::new())))
    }
}

/// `GET /blobs/{hash}/outboard`: the size and the pre-order hash pairs (a
/// blob of one chunk group has none: its hash is the only one). A peer
/// checks them against the hash it asked for.
fn outboard(store: &Store, hash: &BlobHash) -> Reply {
    let read = || -> Result<Vec<u8>, StoreError> {
        let (_, size) = store.open_blob(hash)?;
        let mut body = size.to_le_bytes().to_vec();
        std::io::Read::read_to_end(&mut store.open_outboard(hash)?, &mut body)?;
        Ok(body)
    };
    match read() {
        Ok(body) => Reply::new(Status::Ok, http::OUTBOARD_MEDIA_TYPE, body),
        Err(StoreError::NotFound(_)) => Reply::text(Status::NotFound, "blob not found\n"),
        Err(e) => {
            tracing::error!(%hash, "reading an outboard failed: {e}");
            Reply::text(
                Status::InternalServerError,
                "store operation failed; see the node's log\n",
            )
        }
    }
}

/// An admin route: the token checked on the core, the store operation off it.
fn admin(
    core: &Core,
    auth: Auth,
    op: impl FnOnce(&Store) -> Result<(), StoreError> + Send + 'static,
) -> Plan {
    match auth {
        Auth::Disabled => Plan::Reply(Reply::text(
            Status::Forbidden,
            "admin API disabled: set admin_token in the node's config\n",
        )),
        Auth::Missing | Auth::Wrong => Plan::Reply(
            Reply::text(
                Status::Unauthorized,
                "send Authorization: Bearer <admin token>\n",
            )
            .header("WWW-Authenticate", "Bearer"),
        ),
        Auth::Ok => {
            let store = core.shared.store.clone();
            Plan::OffCore(Box::new(move || match op(&store) {
                Ok(()) => no_content(),
                Err(StoreError::NotFound(_)) => Reply::text(Status::NotFound, "blob not found\n"),
                Err(e) => {
                    tracing::error!("admin operation failed: {e}");
                    Reply::text(
                        Status::InternalServerError,
                        "store operation failed; see the node's log\n",
                    )
                }
            }))
        }
    }
}
