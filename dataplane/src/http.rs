//! Sans-IO HTTP/1.1: request heads (parsed with `httparse`), routes, byte ranges,
//! chunked request bodies and response heads. No sockets, no clocks, no allocation:
//! everything borrows from the caller's buffers.

use crate::hash::{BlobHash, HashParseError};

pub mod conditional;

pub use service_api::{Method, Status, STATUSES};

pub use conditional::{Outcome as ConditionalOutcome, Preconditions, Validators};

/// The most headers a request may carry; also the size of the parse array on the stack.
pub const MAX_HEADERS: usize = 64;

/// Bounds on a request head.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request line plus headers, in bytes; more is answered with 431.
    pub max_header_bytes: usize,
    /// At most [`MAX_HEADERS`].
    pub max_headers: usize,
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
}

/// The parts of a request head the server acts on, borrowed from the read buffer.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: Method,
    /// Origin-form path; an absolute-form target (`http://host/path`, RFC 9112
    /// §3.2.2) is reduced to its path, and its authority becomes [`Self::host`].
    pub path: &'a [u8],
    pub query: &'a [u8],
    /// The target's authority if absolute-form, else the `Host` header.
    pub host: Option<&'a [u8]>,
    /// Bytes of the head, including the blank line; the body starts here.
    pub head_len: usize,
    pub body: Body,
    pub keep_alive: bool,
    /// An HTTP/1.0 request: no chunked responses.
    pub http10: bool,
    pub range: Option<&'a [u8]>,
    pub accept_bao: bool,
    pub authorization: Option<&'a [u8]>,
    pub expect_continue: bool,
    /// `X-Tessera-Peer` present: another node asks; a miss is not fetched
    /// onward (no fetch loops between nodes).
    pub from_peer: bool,
    /// The peer's node id, signing time and signature (see [`peer_message`]).
    pub peer_id: Option<&'a [u8]>,
    pub peer_time: Option<&'a [u8]>,
    pub peer_sig: Option<&'a [u8]>,
}

/// Headers with which a node signs its requests to another node.
pub const PEER_TIME_HEADER: &str = "X-Tessera-Peer-Time";
pub const PEER_SIG_HEADER: &str = "X-Tessera-Peer-Sig";

/// What a node signs for a request to another node: method, path and time.
pub fn peer_message(method: &[u8], path: &[u8], time: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(24 + method.len() + path.len() + time.len());
    m.extend_from_slice(b"tessera-peer-v1\n");
    m.extend_from_slice(method);
    m.push(b'\n');
    m.extend_from_slice(path);
    m.push(b'\n');
    m.extend_from_slice(time);
    m
}

/// Header a node sets on requests to other nodes.
pub const PEER_HEADER: &str = "X-Tessera-Peer";

/// Why a request head was refused; each maps to a status and a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    HeadTooLarge,
    TooManyHeaders,
    Malformed(&'static str),
    UnsupportedTransferEncoding,
}

impl ParseError {
    pub fn status(self) -> Status {
        match self {
            ParseError::HeadTooLarge | ParseError::TooManyHeaders => Status::HeaderFieldsTooLarge,
            ParseError::Malformed(_) => Status::BadRequest,
            ParseError::UnsupportedTransferEncoding => Status::NotImplemented,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            ParseError::HeadTooLarge => "request head is larger than the server's limit\n",
            ParseError::TooManyHeaders => "request has more headers than the server's limit\n",
            ParseError::Malformed(why) => why,
            ParseError::UnsupportedTransferEncoding => {
                "only the chunked transfer encoding is supported\n"
            }
        }
    }
}

/// Parses a request head from the start of `buf`. `Ok(None)`: need more bytes.
pub fn parse_request(buf: &[u8], limits: Limits) -> Result<Option<Request<'_>>, ParseError> {
    parse(buf, limits, None)
}

/// [`parse_request`], and the precondition fields (`If-Match`, `If-None-Match`,
/// `If-Modified-Since`, `If-Unmodified-Since`, `If-Range`) copied into
/// `preconditions` (cleared first; the connection keeps one and reuses it).
pub fn parse_request_into<'a>(
    buf: &'a [u8],
    limits: Limits,
    preconditions: &mut Preconditions,
) -> Result<Option<Request<'a>>, ParseError> {
    preconditions.clear();
    parse(buf, limits, Some(preconditions))
}

fn parse<'a>(
    buf: &'a [u8],
    limits: Limits,
    mut preconditions: Option<&mut Preconditions>,
) -> Result<Option<Request<'a>>, ParseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let max_headers = limits.max_headers.min(MAX_HEADERS);
    let mut req = httparse::Request::new(&mut headers[..max_headers]);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= limits.max_header_bytes {
                return Err(ParseError::HeadTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(ParseError::TooManyHeaders),
        Err(_) => return Err(ParseError::Malformed("malformed HTTP/1.1 request head\n")),
    };
    if head_len > limits.max_header_bytes {
        return Err(ParseError::HeadTooLarge);
    }
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        Some("POST") => Method::Post,
        Some("PUT") => Method::Put,
        Some("DELETE") => Method::Delete,
        Some("PATCH") => Method::Patch,
        Some("OPTIONS") => Method::Options,
        _ => Method::Other,
    };
    let (authority, target) = split_absolute_form(req.path.unwrap_or("/").as_bytes())?;
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(i) => (&target[..i], &target[i + 1..]),
        None => (target, &target[target.len()..]),
    };
    let mut host = authority;
    let http10 = req.version == Some(0);
    let mut keep_alive = !http10;
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut range = None;
    let mut accept_bao = false;
    let mut authorization = None;
    let mut expect_continue = false;
    let mut from_peer = false;
    let (mut peer_id, mut peer_time, mut peer_sig) = (None, None, None);
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = trim(h.value);
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_u64(value)
                .ok_or(ParseError::Malformed("Content-Length is not a number\n"))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(ParseError::Malformed(
                    "conflicting Content-Length headers\n",
                ));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if value.eq_ignore_ascii_case(b"chunked") {
                chunked = true;
            } else {
                return Err(ParseError::UnsupportedTransferEncoding);
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            if contains_token(value, b"close") {
                keep_alive = false;
            } else if contains_token(value, b"keep-alive") {
                keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case(b"range") {
            range = Some(value);
        } else if name.eq_ignore_ascii_case(b"accept") {
            accept_bao |= contains_token(value, BAO_MEDIA_TYPE.as_bytes());
        } else if name.eq_ignore_ascii_case(b"authorization") {
            authorization = Some(value);
        } else if name.eq_ignore_ascii_case(b"expect") {
            expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case(PEER_HEADER.as_bytes()) {
            from_peer = true;
            peer_id = Some(value);
        } else if name.eq_ignore_ascii_case(PEER_TIME_HEADER.as_bytes()) {
            peer_time = Some(value);
        } else if name.eq_ignore_ascii_case(PEER_SIG_HEADER.as_bytes()) {
            peer_sig = Some(value);
        } else if name.eq_ignore_ascii_case(b"host") {
            // The target's authority, when there is one, wins (RFC 9112 §3.2.2).
            if authority.is_none() {
                host = Some(value);
            }
        } else if let (Some(field), Some(pre)) = (
            conditional::Field::from_name(name),
            preconditions.as_deref_mut(),
        ) {
            pre.push_field(field, value)
                .map_err(|_| ParseError::Malformed(conditional::TooLarge::MESSAGE))?;
        }
    }
    let body = match (content_length, chunked) {
        // Both framings at once is how requests get smuggled: refuse.
        (Some(_), true) => {
            return Err(ParseError::Malformed(
                "both Content-Length and Transfer-Encoding given\n",
            ))
        }
        (_, true) => Body::Chunked,
        (Some(0), false) | (None, false) => Body::None,
        (Some(n), false) => Body::Length(n),
    };
    Ok(Some(Request {
        method,
        path,
        query,
        host,
        head_len,
        body,
        keep_alive,
        http10,
        range,
        accept_bao,
        authorization,
        expect_continue,
        from_peer,
        peer_id,
        peer_time,
        peer_sig,
    }))
}

/// Splits an absolute-form request target (`http://host:port/path?q`) into its
/// authority and origin-form rest (`/path?q`, or `/` when empty). An
/// origin-form target comes back as it is. Other schemes are refused: this
/// server is no proxy.
fn split_absolute_form(target: &[u8]) -> Result<(Option<&[u8]>, &[u8]), ParseError> {
    if target.first() == Some(&b'/') {
        return Ok((None, target));
    }
    let rest = match target.iter().position(|&b| b == b':') {
        Some(i)
            if target[..i].eq_ignore_ascii_case(b"http")
                || target[..i].eq_ignore_ascii_case(b"https") =>
        {
            &target[i + 1..]
        }
        _ => {
            return Err(ParseError::Malformed(
                "request target must be a path (/...) or an http(s):// URL\n",
            ))
        }
    };
    let Some(rest) = rest.strip_prefix(b"//") else {
        return Err(ParseError::Malformed(
            "absolute request target lacks its //authority\n",
        ));
    };
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    // userinfo is deprecated and refused (RFC 9110 §4.2.4).
    if authority.is_empty() || authority.contains(&b'@') {
        return Err(ParseError::Malformed(
            "absolute request target has no usable host\n",
        ));
    }
    Ok((Some(authority), if path.is_empty() { b"/" } else { path }))
}

/// `Cache-Control` of a blob: its bytes can never change under its name.
pub const BLOB_CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// Body of a 412 answer.
pub const PRECONDITION_FAILED_MESSAGE: &str =
    "precondition failed: If-Match / If-Unmodified-Since do not hold for this representation\n";

/// The body of `GET /blobs/{hash}/outboard`: the size (8 bytes, little-endian)
/// and the pre-order hash pairs.
pub const OUTBOARD_MEDIA_TYPE: &str = "application/x-bao-outboard";

/// Media type of a verified stream; ask for it with `Accept` or `?format=bao`.
pub const BAO_MEDIA_TYPE: &str = "application/x-bao";

impl Request<'_> {
    /// Whether the client asked for the verified stream instead of plain bytes.
    pub fn wants_verified(&self) -> bool {
        self.accept_bao
            || self
                .query
                .split(|&b| b == b'&')
                .any(|kv| kv == b"format=bao")
    }
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .map(|t| {
            let t = trim(t);
            // Drop media-type parameters such as ";q=0.9".
            let end = t.iter().position(|&b| b == b';').unwrap_or(t.len());
            trim(&t[..end])
        })
        .any(|t| t.eq_ignore_ascii_case(token))
}

/// Parses decimal digits only (no sign, no spaces), refusing overflow.
pub fn parse_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// Where a path leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Healthz,
    Metrics,
    /// `/cluster/members`: the control plane's view of the cluster.
    Members,
    /// `/route/{hash}`: the nodes for a blob, ranked.
    RouteOf(BlobHash),
    /// `/receipts`: clients hand in signed delivery receipts.
    Receipts,
    /// `/ledger/...`: the replicated ledger (control plane).
    Ledger(LedgerRoute),
    /// `/deployments...`: what customers run on the network (control plane).
    Deployments(DeployRoute),
    /// `/blobs`: uploads.
    Blobs,
    /// `/blobs/{hash}`.
    Blob(BlobHash),
    /// `/blobs/{hash}/pin`.
    Pin(BlobHash),
    /// `/blobs/{hash}/outboard`: the blob's size and hash tree, without its
    /// bytes (what a node holding an earlier version needs to fetch only the
    /// chunk groups that changed).
    Outboard(BlobHash),
    /// `/blobs/{x}` where `x` is not a hash.
    BadHash(HashParseError),
    NotFound,
}

/// The deployments API (answered by the control plane).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployRoute {
    /// `/deployments`: `GET` lists them, `POST` takes a signed transaction.
    All,
    /// `GET /deployments/{name}`.
    One(DeployName),
    /// `GET /deployments/_account/{id}`: the next nonce of an owner.
    Account([u8; 32]),
    /// Anything else under `/deployments/`.
    Unknown,
}

/// A deployment name as a route carries it (at most 63 bytes, the longest
/// a name may be), without allocating.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DeployName {
    bytes: [u8; 63],
    len: u8,
}

impl DeployName {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }
}

impl std::fmt::Debug for DeployName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl DeployRoute {
    fn parse(rest: Option<&[u8]>) -> DeployRoute {
        let Some(rest) = rest else {
            return DeployRoute::All;
        };
        if rest.is_empty() {
            return DeployRoute::All;
        }
        if let Some(id) = rest.strip_prefix(b"_account/") {
            return parse_hex32(id).map_or(DeployRoute::Unknown, DeployRoute::Account);
        }
        let ok = rest.len() <= 63
            && rest
                .iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
        if !ok {
            return DeployRoute::Unknown;
        }
        let mut bytes = [0u8; 63];
        bytes[..rest.len()].copy_from_slice(rest);
        DeployRoute::One(DeployName {
            bytes,
            len: rest.len() as u8,
        })
    }
}

/// The ledger's routes (answered by the control plane's hook).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerRoute {
    /// `GET /ledger/status`.
    Status,
    /// `GET /ledger/account/{id}`.
    Account([u8; 32]),
    /// `GET /ledger/rewards/{epoch}`.
    Rewards(u64),
    /// `GET /ledger/reputation`.
    Reputation,
    /// `GET /ledger/boundary/{epoch}`: the state at an epoch's start (peers).
    Boundary(u64),
    /// `GET /ledger/boundary/after/{epoch}`: the newest epoch start kept, if it
    /// is later than `epoch` (404 otherwise: a follower's cheap poll).
    BoundaryAfter(u64),
    /// `POST /ledger/tx`: a signed transaction.
    Tx,
    /// `POST /ledger/msg`: a consensus message (peers only).
    Msg,
    /// Anything else under `/ledger/`.
    Unknown,
}

impl LedgerRoute {
    fn parse(rest: &[u8]) -> LedgerRoute {
        let num = |s: &[u8]| std::str::from_utf8(s).ok()?.parse::<u64>().ok();
        match rest {
            b"status" => LedgerRoute::Status,
            b"reputation" => LedgerRoute::Reputation,
            b"tx" => LedgerRoute::Tx,
            b"msg" => LedgerRoute::Msg,
            _ => {
                if let Some(id) = rest.strip_prefix(b"account/") {
                    return match parse_hex32(id) {
                        Some(k) => LedgerRoute::Account(k),
                        None => LedgerRoute::Unknown,
                    };
                }
                if let Some(e) = rest.strip_prefix(b"rewards/").and_then(num) {
                    return LedgerRoute::Rewards(e);
                }
                if let Some(e) = rest.strip_prefix(b"boundary/after/").and_then(num) {
                    return LedgerRoute::BoundaryAfter(e);
                }
                if let Some(e) = rest.strip_prefix(b"boundary/").and_then(num) {
                    return LedgerRoute::Boundary(e);
                }
                LedgerRoute::Unknown
            }
        }
    }

    pub fn is_post(self) -> bool {
        matches!(self, LedgerRoute::Tx | LedgerRoute::Msg)
    }
}

/// 64 hex digits as 32 bytes.
pub fn parse_hex32(s: &[u8]) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Routes, as labels for metrics.
pub const ROUTE_LABELS: [&str; 7] = [
    "healthz", "metrics", "blobs", "blob", "pin", "other", "cluster",
];

impl Route {
    pub fn label_index(self) -> usize {
        match self {
            Route::Healthz => 0,
            Route::Metrics => 1,
            Route::Blobs => 2,
            Route::Blob(_) | Route::BadHash(_) | Route::Outboard(_) => 3,
            Route::Pin(_) => 4,
            Route::NotFound => 5,
            Route::Members
            | Route::RouteOf(_)
            | Route::Receipts
            | Route::Ledger(_)
            | Route::Deployments(_) => 6,
        }
    }

    /// Methods the route answers, for 405's `Allow`.
    pub fn allow(self) -> &'static str {
        match self {
            Route::Healthz
            | Route::Metrics
            | Route::Members
            | Route::RouteOf(_)
            | Route::Outboard(_) => "GET, HEAD",
            Route::Blobs | Route::Receipts => "POST",
            Route::Ledger(l) if l.is_post() => "POST",
            Route::Ledger(_) => "GET",
            Route::Deployments(DeployRoute::All) => "GET, POST",
            Route::Deployments(_) => "GET",
            Route::Blob(_) | Route::BadHash(_) => "GET, HEAD, DELETE",
            Route::Pin(_) => "PUT, DELETE",
            Route::NotFound => "",
        }
    }
}

pub fn route(path: &[u8]) -> Route {
    match path {
        b"/healthz" => Route::Healthz,
        b"/metrics" => Route::Metrics,
        b"/cluster/members" => Route::Members,
        b"/receipts" => Route::Receipts,
        b"/blobs" | b"/blobs/" => Route::Blobs,
        _ => {
            if let Some(rest) = path.strip_prefix(b"/ledger/") {
                return Route::Ledger(LedgerRoute::parse(rest));
            }
            if path == b"/deployments" {
                return Route::Deployments(DeployRoute::parse(None));
            }
            if let Some(rest) = path.strip_prefix(b"/deployments/") {
                return Route::Deployments(DeployRoute::parse(Some(rest)));
            }
            if let Some(h) = path.strip_prefix(b"/route/") {
                return match BlobHash::parse(h) {
                    Ok(h) => Route::RouteOf(h),
                    Err(e) => Route::BadHash(e),
                };
            }
            let Some(rest) = path.strip_prefix(b"/blobs/") else {
                return Route::NotFound;
            };
            let (hash, sub) = match (rest.strip_suffix(b"/pin"), rest.strip_suffix(b"/outboard")) {
                (Some(h), _) => (h, Some(Route::Pin as fn(BlobHash) -> Route)),
                (_, Some(h)) => (h, Some(Route::Outboard as fn(BlobHash) -> Route)),
                _ => (rest, None),
            };
            match (BlobHash::parse(hash), sub) {
                (Ok(h), Some(sub)) => sub(h),
                (Ok(h), None) => Route::Blob(h),
                (Err(e), _) => Route::BadHash(e),
            }
        }
    }
}

/// What a `Range` header asks of a blob of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: send everything (RFC 9110 lets a server ignore odd ranges).
    Full,
    /// Inclusive byte range.
    Partial { first: u64, last: u64 },
    /// 416.
    Unsatisfiable,
}

pub fn parse_range(header: Option<&[u8]>, size: u64) -> RangeRequest {
    let Some(h) = header else {
        return RangeRequest::Full;
    };
    let Some(spec) = trim(h).strip_prefix(b"bytes=") else {
        return RangeRequest::Full;
    };
    if spec.contains(&b',') {
        // Multipart ranges are not served; the whole blob is.
        return RangeRequest::Full;
    }
    let Some(dash) = spec.iter().position(|&b| b == b'-') else {
        return RangeRequest::Full;
    };
    let (a, b) = (trim(&spec[..dash]), trim(&spec[dash + 1..]));
    match (a.is_empty(), b.is_empty()) {
        (true, true) => RangeRequest::Full,
        (true, false) => match parse_u64(b) {
            // Suffix range: the last n bytes.
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if size == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Partial {
                first: size.saturating_sub(n),
                last: size - 1,
            },
            None => RangeRequest::Full,
        },
        (false, _) => {
            let Some(first) = parse_u64(a) else {
                return RangeRequest::Full;
            };
            let last = if b.is_empty() {
                u64::MAX
            } else {
                match parse_u64(b) {
                    Some(l) if l >= first => l,
                    _ => return RangeRequest::Full,
                }
            };
            if first >= size {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial {
                    first,
                    last: last.min(size - 1),
                }
            }
        }
    }
}

/// A blob representation's entity tag, quotes included: `"{hash}"` for the
/// plain bytes, `"{hash}.bao"` for the verified stream (a different
/// representation of the same blob, so a different strong tag).
#[derive(Clone, Copy)]
pub struct BlobTag {
    buf: [u8; 70],
    len: usize,
}

impl BlobTag {
    pub fn new(hash: &BlobHash, verified: bool) -> BlobTag {
        let mut buf = [0u8; 70];
        buf[0] = b'"';
        buf[1..65].copy_from_slice(&hash.to_hex());
        let mut len = 65;
        if verified {
            buf[len..len + 4].copy_from_slice(b".bao");
            len += 4;
        }
        buf[len] = b'"';
        BlobTag { buf, len: len + 1 }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Writes a response head into `out` (cleared first; its capacity is reused).
/// Numbers are written with `itoa`, not `core::fmt`: a head is written for
/// every response.
pub struct Head<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Head<'a> {
    pub fn new(out: &'a mut Vec<u8>, status: Status) -> Self {
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(itoa::Buffer::new().format(status.code()).as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.reason().as_bytes());
        out.extend_from_slice(b"\r\n");
        Self { out }
    }

    pub fn header(self, name: &str, value: &[u8]) -> Self {
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b": ");
        self.out.extend_from_slice(value);
        self.out.extend_from_slice(b"\r\n");
        self
    }

    /// Appends header lines already formatted (each ending in CRLF).
    pub fn raw(self, lines: &[u8]) -> Self {
        self.out.extend_from_slice(lines);
        self
    }

    pub fn header_u64(self, name: &str, value: u64) -> Self {
        self.header(name, itoa::Buffer::new().format(value).as_bytes())
    }

    pub fn content_range(self, first: u64, last: u64, size: u64) -> Self {
        let mut n = itoa::Buffer::new();
        self.out.extend_from_slice(b"Content-Range: bytes ");
        self.out.extend_from_slice(n.format(first).as_bytes());
        self.out.push(b'-');
        self.out.extend_from_slice(n.format(last).as_bytes());
        self.out.push(b'/');
        self.out.extend_from_slice(n.format(size).as_bytes());
        self.out.extend_from_slice(b"\r\n");
        self
    }

    pub fn content_range_unsatisfied(self, size: u64) -> Self {
        self.out.extend_from_slice(b"Content-Range: bytes */");
        self.out
            .extend_from_slice(itoa::Buffer::new().format(size).as_bytes());
        self.out.extend_from_slice(b"\r\n");
        self
    }

    pub fn etag(self, tag: &BlobTag) -> Self {
        self.header("ETag", tag.as_bytes())
    }

    /// Ends the head with `Content-Length` and the connection decision.
    pub fn finish(self, content_length: u64, keep_alive: bool) {
        self.header_u64("Content-Length", content_length)
            .finish_without_length(keep_alive);
    }

    /// Ends the head of a body sent in chunks (`Transfer-Encoding: chunked`,
    /// RFC 9112 §7.1); `close_delimited` for an HTTP/1.0 client instead: no
    /// length, the body ends when the connection closes.
    pub fn finish_streamed(self, keep_alive: bool, close_delimited: bool) {
        if close_delimited {
            self.out.extend_from_slice(b"Connection: close\r\n\r\n");
        } else {
            self.out
                .extend_from_slice(b"Transfer-Encoding: chunked\r\n");
            self.finish_without_length(keep_alive);
        }
    }

    /// Ends a head that has no body and states no length: `304 Not Modified`
    /// (whose `Content-Length` would have to be the 200's, RFC 9110 §8.6).
    pub fn finish_without_length(self, keep_alive: bool) {
        // Stated either way, as nginx does, so HTTP/1.0 clients keep the connection too.
        if keep_alive {
            self.out
                .extend_from_slice(b"Connection: keep-alive\r\n\r\n");
        } else {
            self.out.extend_from_slice(b"Connection: close\r\n\r\n");
        }
    }
}

/// Decodes a `Transfer-Encoding: chunked` body incrementally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChunkedDecoder {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// In a chunk's data, with this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailer,
    Done,
}

/// A chunk-size or trailer line longer than this is refused (bounds buffering).
pub const MAX_CHUNK_LINE_BYTES: usize = 1024;

impl ChunkedDecoder {
    /// Consumes from `input`, handing body bytes to `sink`. Returns bytes consumed;
    /// stops early when it needs more input. Check [`Self::is_done`] afterwards.
    pub fn decode(
        &mut self,
        mut input: &[u8],
        mut sink: impl FnMut(&[u8]),
    ) -> Result<usize, &'static str> {
        let total = input.len();
        loop {
            match *self {
                ChunkedDecoder::Done => break,
                ChunkedDecoder::Size => match parse_chunk_size(input)? {
                    Some((used, size)) => {
                        input = &input[used..];
                        *self = if size == 0 {
                            ChunkedDecoder::Trailer
                        } else {
                            ChunkedDecoder::Data(size)
                        };
                    }
                    None => break,
                },
                ChunkedDecoder::Data(left) => {
                    if input.is_empty() {
                        break;
                    }
                    let take = (left.min(input.len() as u64)) as usize;
                    sink(&input[..take]);
                    input = &input[take..];
                    *self = if take as u64 == left {
                        ChunkedDecoder::DataEnd
                    } else {
                        ChunkedDecoder::Data(left - take as u64)
                    };
                }
                ChunkedDecoder::DataEnd => {
                    if input.len() < 2 {
                        break;
                    }
                    if &input[..2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF\n");
                    }
                    input = &input[2..];
                    *self = ChunkedDecoder::Size;
                }
                ChunkedDecoder::Trailer => {
                    let Some(end) = line_end(input, "trailer line too long\n")? else {
                        break;
                    };
                    check_trailer_field(&input[..end])?;
                    input = &input[end + 2..];
                    if end == 0 {
                        *self = ChunkedDecoder::Done;
                    }
                }
            }
        }
        Ok(total - input.len())
    }

    pub fn is_done(&self) -> bool {
        *self == ChunkedDecoder::Done
    }
}

/// Where the CRLF that ends the line at the start of `input` is; None: not
/// arrived yet. A bare CR or LF is refused: accepting line ends the other
/// parser in front of us may not is how chunked bodies get smuggled.
fn line_end(input: &[u8], too_long: &'static str) -> Result<Option<usize>, &'static str> {
    let window = &input[..input.len().min(MAX_CHUNK_LINE_BYTES + 2)];
    match window.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(i) if window[i] == b'\n' => Err("bare LF in chunked framing\n"),
        Some(i) if i + 1 == input.len() => Ok(None),
        Some(i) if input[i + 1] == b'\n' => Ok(Some(i)),
        Some(_) => Err("bare CR in chunked framing\n"),
        None if input.len() > MAX_CHUNK_LINE_BYTES => Err(too_long),
        None => Ok(None),
    }
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A chunk-size line (RFC 9112 §7.1): `1*HEXDIG *( BWS ";" BWS token [ BWS "="
/// BWS ( token / quoted-string ) ] ) CRLF`. Returns the bytes it took and the
/// size; None: the line has not all arrived.
pub fn parse_chunk_size(input: &[u8]) -> Result<Option<(usize, u64)>, &'static str> {
    let Some(end) = line_end(input, "chunk size line too long\n")? else {
        return Ok(None);
    };
    let line = &input[..end];
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err("malformed chunk size\n");
    }
    // Leading zeros do not count against the 64-bit limit.
    let zeros = line[..digits].iter().take_while(|&&b| b == b'0').count();
    let hex = &line[zeros.min(digits - 1)..digits];
    if hex.len() > 16 {
        return Err("chunk size too large\n");
    }
    let size = hex.iter().fold(0u64, |n, &b| {
        n << 4 | u64::from((b as char).to_digit(16).unwrap_or(0))
    });
    check_chunk_extensions(&line[digits..])?;
    Ok(Some((end + 2, size)))
}

fn check_chunk_extensions(mut ext: &[u8]) -> Result<(), &'static str> {
    const BAD: &str = "malformed chunk extension (must be ;token or ;token=value)\n";
    let ows = |v: &[u8]| -> usize { v.iter().take_while(|&&b| b == b' ' || b == b'\t').count() };
    let token = |v: &[u8]| -> usize { v.iter().take_while(|&&b| is_tchar(b)).count() };
    loop {
        ext = &ext[ows(ext)..];
        let Some(rest) = ext.strip_prefix(b";") else {
            return if ext.is_empty() { Ok(()) } else { Err(BAD) };
        };
        let rest = &rest[ows(rest)..];
        let name = token(rest);
        if name == 0 {
            return Err(BAD);
        }
        ext = &rest[name..];
        let after = &ext[ows(ext)..];
        let Some(value) = after.strip_prefix(b"=") else {
            continue;
        };
        let value = &value[ows(value)..];
        let used = if value.first() == Some(&b'"') {
            quoted_string_len(value).ok_or(BAD)?
        } else {
            token(value)
        };
        if used == 0 {
            return Err(BAD);
        }
        ext = &value[used..];
    }
}

/// Length of the quoted-string at the start of `v` (RFC 9110 §5.6.4).
fn quoted_string_len(v: &[u8]) -> Option<usize> {
    let qdtext = |b: u8| {
        b == b'\t'
            || b == b' '
            || b == 0x21
            || ((0x23..=0x7e).contains(&b) && b != b'\\')
            || b >= 0x80
    };
    let mut i = 1;
    while i < v.len() {
        match v[i] {
            b'"' => return Some(i + 1),
            b'\\' => {
                let next = *v.get(i + 1)?;
                if !(next == b'\t' || next == b' ' || (0x21..=0x7e).contains(&next) || next >= 0x80)
                {
                    return None;
                }
                i += 2;
            }
            b if qdtext(b) => i += 1,
            _ => return None,
        }
    }
    None
}

/// A trailer field line: `token ":" OWS value OWS`, no control characters
/// (RFC 9112 §7.1.2, RFC 9110 §5.5). The fields themselves are discarded.
fn check_trailer_field(line: &[u8]) -> Result<(), &'static str> {
    if line.is_empty() {
        return Ok(());
    }
    let name = line.iter().take_while(|&&b| is_tchar(b)).count();
    let ok = name > 0
        && line.get(name) == Some(&b':')
        && line[name + 1..]
            .iter()
            .all(|&b| b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80);
    if ok {
        Ok(())
    } else {
        Err("malformed trailer field\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_header_bytes: 8192,
        max_headers: 32,
    };

    #[test]
    fn heads_are_written_byte_for_byte() {
        let mut out = Vec::new();
        Head::new(&mut out, Status::PartialContent)
            .header("ETag", b"\"x\"")
            .header_u64("Age", 0)
            .content_range(0, 18_446_744_073_709_551_614, u64::MAX)
            .finish(4096, true);
        assert_eq!(
            out,
            b"HTTP/1.1 206 Partial Content\r\nETag: \"x\"\r\nAge: 0\r\n\
              Content-Range: bytes 0-18446744073709551614/18446744073709551615\r\n\
              Content-Length: 4096\r\nConnection: keep-alive\r\n\r\n"
        );
        Head::new(&mut out, Status::RangeNotSatisfiable)
            .content_range_unsatisfied(10)
            .finish(0, false);
        assert_eq!(
            out,
            b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */10\r\n\
              Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        for status in STATUSES {
            Head::new(&mut out, status).finish_without_length(true);
            let line = format!("HTTP/1.1 {} {}\r\n", status.code(), status.reason());
            assert!(out.starts_with(line.as_bytes()), "{status:?}");
        }
    }

    #[test]
    fn parses_a_full_head() {
        let raw = b"GET /blobs/abc?format=bao HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\nAuthorization: Bearer t\r\n\r\nrest";
        let r = parse_request(raw, LIMITS).expect("ok").expect("complete");
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, b"/blobs/abc");
        assert!(r.wants_verified());
        assert_eq!(r.range, Some(&b"bytes=0-9"[..]));
        assert_eq!(r.head_len, raw.len() - 4);
        assert!(r.keep_alive);
        assert_eq!(r.body, Body::None);
    }

    #[test]
    fn refuses_malformed_heads() {
        let cases: &[&[u8]] = &[
            b"GET\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"\x00\x01\x02 / HTTP/1.1\r\n\r\n",
        ];
        for raw in cases {
            assert!(
                matches!(parse_request(raw, LIMITS), Err(ParseError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        assert_eq!(
            parse_request(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                LIMITS
            )
            .map(|_| ()),
            Err(ParseError::UnsupportedTransferEncoding)
        );
        let big = [b'a'; 9000];
        assert_eq!(
            parse_request(&big[..], LIMITS).map(|_| ()),
            Err(ParseError::HeadTooLarge)
        );
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..40 {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_request(&many, LIMITS).map(|_| ()),
            Err(ParseError::TooManyHeaders)
        );
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nHost", LIMITS),
            Ok(None)
        ));
    }

    #[test]
    fn keep_alive_rules() {
        let r = |raw: &[u8]| {
            parse_request(raw, LIMITS)
                .expect("ok")
                .expect("complete")
                .keep_alive
        };
        assert!(!r(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(r(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
        assert!(!r(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
    }

    #[test]
    fn routes() {
        let h = "a".repeat(64);
        assert_eq!(route(b"/healthz"), Route::Healthz);
        assert!(matches!(
            route(format!("/blobs/{h}").as_bytes()),
            Route::Blob(_)
        ));
        assert!(matches!(
            route(format!("/blobs/{h}/pin").as_bytes()),
            Route::Pin(_)
        ));
        assert!(matches!(
            route(format!("/blobs/{h}/outboard").as_bytes()),
            Route::Outboard(_)
        ));
        assert!(matches!(route(b"/blobs/xyz"), Route::BadHash(_)));
        assert_eq!(route(b"/nope"), Route::NotFound);
    }

    #[test]
    fn ranges() {
        use RangeRequest::*;
        let p = |h: &str, s| parse_range(Some(h.as_bytes()), s);
        assert_eq!(p("bytes=0-9", 100), Partial { first: 0, last: 9 });
        assert_eq!(
            p("bytes=90-", 100),
            Partial {
                first: 90,
                last: 99
            }
        );
        assert_eq!(
            p("bytes=-10", 100),
            Partial {
                first: 90,
                last: 99
            }
        );
        assert_eq!(p("bytes=-1000", 100), Partial { first: 0, last: 99 });
        assert_eq!(
            p("bytes=50-1000", 100),
            Partial {
                first: 50,
                last: 99
            }
        );
        assert_eq!(p("bytes=100-", 100), Unsatisfiable);
        assert_eq!(p("bytes=0-", 0), Unsatisfiable);
        assert_eq!(p("bytes=9-2", 100), Full);
        assert_eq!(p("bytes=0-1,5-6", 100), Full);
        assert_eq!(p("items=0-1", 100), Full);
        assert_eq!(parse_range(None, 100), Full);
    }

    #[test]
    fn chunked_bodies_in_any_split() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\n";
        for split in 0..body.len() {
            let mut d = ChunkedDecoder::default();
            let mut out = Vec::new();
            let mut pending = body[..split].to_vec();
            let used = d
                .decode(&pending, |b| out.extend_from_slice(b))
                .expect("ok");
            pending.drain(..used);
            pending.extend_from_slice(&body[split..]);
            let used = d
                .decode(&pending, |b| out.extend_from_slice(b))
                .expect("ok");
            assert_eq!(used, pending.len());
            assert!(d.is_done());
            assert_eq!(out, b"hello world");
        }
        let mut d = ChunkedDecoder::default();
        assert!(d.decode(b"zz\r\n", |_| {}).is_err());
        let mut d = ChunkedDecoder::default();
        assert!(d.decode(b"2\r\nabXY", |_| {}).is_err());
    }

    #[test]
    fn chunk_size_lines() {
        let ok: &[(&[u8], u64)] = &[
            (b"0\r\n", 0),
            (b"1a\r\n", 26),
            (b"A;name\r\n", 10),
            (b"5 ; a=b ; c\r\n", 5),
            (b"5;a=\"quoted \\\" value\"\r\n", 5),
            (b"00000000000000000000ffffffffffffffff\r\n", u64::MAX),
        ];
        for &(line, size) in ok {
            assert_eq!(
                parse_chunk_size(line),
                Ok(Some((line.len(), size))),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        let bad: &[&[u8]] = &[
            b"3;\x00\r\n",
            b"3;\r\n",
            b"3;a=\r\n",
            b"3;a=\"open\r\n",
            b"3;a b\r\n",
            b"3x\r\n",
            b";a\r\n",
            b"\r\n",
            b"-1\r\n",
            b"3\n",
            b"3\rX",
            b"10000000000000000\r\n",
        ];
        for &line in bad {
            assert!(
                parse_chunk_size(line).is_err(),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        assert_eq!(parse_chunk_size(b"3;a"), Ok(None));
        assert_eq!(parse_chunk_size(b"3\r"), Ok(None));
        let long = [b'a'; MAX_CHUNK_LINE_BYTES + 1];
        assert!(parse_chunk_size(&long).is_err());
        // Trailers are field lines.
        let mut d = ChunkedDecoder::default();
        assert!(d.decode(b"0\r\nX-A: 1\r\n\r\n", |_| {}).is_ok() && d.is_done());
        for trailer in [
            &b"0\r\nno colon\r\n\r\n"[..],
            b"0\r\nX: a\x00b\r\n\r\n",
            b"0\r\n: v\r\n\r\n",
        ] {
            let mut d = ChunkedDecoder::default();
            assert!(
                d.decode(trailer, |_| {}).is_err(),
                "{:?}",
                String::from_utf8_lossy(trailer)
            );
        }
    }

    #[test]
    fn absolute_form_targets() {
        let h = "b".repeat(64);
        let raw = format!(
            "GET http://node.example:8080/blobs/{h}?format=bao HTTP/1.1\r\nHost: other\r\n\r\n"
        );
        let r = parse_request(raw.as_bytes(), LIMITS)
            .expect("ok")
            .expect("complete");
        assert_eq!(r.path, format!("/blobs/{h}").as_bytes());
        assert_eq!(r.query, b"format=bao");
        assert_eq!(r.host, Some(&b"node.example:8080"[..]));
        let r = parse_request(b"GET HTTPS://n HTTP/1.1\r\n\r\n", LIMITS)
            .expect("ok")
            .expect("complete");
        assert_eq!((r.path, r.host), (&b"/"[..], Some(&b"n"[..])));
        let r = parse_request(b"GET /x HTTP/1.1\r\nHost: h:1\r\n\r\n", LIMITS)
            .expect("ok")
            .expect("complete");
        assert_eq!(r.host, Some(&b"h:1"[..]));
        for bad in [
            &b"GET ftp://n/x HTTP/1.1\r\n\r\n"[..],
            b"GET http:/x HTTP/1.1\r\n\r\n",
            b"GET http://u@n/ HTTP/1.1\r\n\r\n",
            b"GET http:///x HTTP/1.1\r\n\r\n",
            b"GET x HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse_request(bad, LIMITS), Err(ParseError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn preconditions_are_collected() {
        let raw = b"GET / HTTP/1.1\r\nIf-None-Match: \"a\"\r\nif-none-match: \"b\"\r\nIf-Range: \"c\"\r\nRange: bytes=0-1\r\n\r\n";
        let mut pre = Preconditions::default();
        parse_request_into(raw, LIMITS, &mut pre)
            .expect("ok")
            .expect("complete");
        let tag = BlobTag::new(&BlobHash([0; 32]), false);
        let v = Validators {
            etag: Some(tag.as_bytes()),
            ..Validators::default()
        };
        assert_eq!(
            pre.evaluate(Method::Get, true, &v),
            ConditionalOutcome::Proceed { honor_range: false }
        );
        let tagged = format!(
            "GET / HTTP/1.1\r\nIf-None-Match: \"x\", {}\r\n\r\n",
            String::from_utf8_lossy(tag.as_bytes())
        );
        // The same buffer again: cleared, then filled.
        parse_request_into(tagged.as_bytes(), LIMITS, &mut pre)
            .expect("ok")
            .expect("complete");
        assert_eq!(
            pre.evaluate(Method::Get, false, &v),
            ConditionalOutcome::NotModified
        );
        let huge = format!(
            "GET / HTTP/1.1\r\nIf-None-Match: {}\r\n\r\n",
            "\"a\",".repeat(300)
        );
        assert!(matches!(
            parse_request_into(huge.as_bytes(), LIMITS, &mut pre),
            Err(ParseError::Malformed(_))
        ));
    }
}

/// Runs untrusted bytes through every parser the request path uses, as the server
/// would: the fuzz target `http_request` calls this, and so does a test with random
/// input. Panics only on a bug.
pub fn exercise(data: &[u8]) {
    let limits = Limits {
        max_header_bytes: 8192,
        max_headers: 32,
    };
    let mut pre = Preconditions::default();
    if let Ok(Some(req)) = parse_request_into(data, limits, &mut pre) {
        let _ = route(req.path);
        let _ = req.wants_verified();
        let tag = BlobTag::new(&BlobHash([7; 32]), req.wants_verified());
        let v = Validators {
            etag: Some(tag.as_bytes()),
            ..Validators::default()
        };
        let _ = pre.evaluate(req.method, req.range.is_some(), &v);
        for size in [0, 1, 16384, u64::MAX] {
            if let RangeRequest::Partial { first, last } = parse_range(req.range, size) {
                assert!(first <= last && last < size, "range outside the blob");
            }
        }
        if req.body == Body::Chunked {
            let mut d = ChunkedDecoder::default();
            let mut body = &data[req.head_len..];
            let mut total = 0usize;
            while let Ok(used) = d.decode(body, |piece| total += piece.len()) {
                if used == 0 {
                    break;
                }
                body = &body[used..];
            }
            assert!(total <= data.len());
        }
    }
}

#[cfg(test)]
mod random_input {
    /// A stable-toolchain stand-in for the fuzz target, run in CI: random and
    /// mutated requests never panic.
    #[test]
    fn random_requests_never_panic() {
        let seeds: [&[u8]; 3] = [
            b"GET /blobs/0000000000000000000000000000000000000000000000000000000000000000 HTTP/1.1\r\nRange: bytes=1-5\r\n\r\n",
            b"POST /blobs HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"HEAD /healthz?format=bao HTTP/1.0\r\nAccept: application/x-bao\r\n\r\n",
        ];
        crate::mutate::each_mutation(&seeds, 20_000, 5, 11, super::exercise);
    }
}
