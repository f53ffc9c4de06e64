//! Sans-IO HTTP/1.1: request heads (parsed with `httparse`), routes, byte ranges,
//! chunked request bodies and response heads. No sockets, no clocks, no allocation:
//! everything borrows from the caller's buffers.

use std::io::Write;

use crate::hash::{BlobHash, HashParseError};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Other,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Other => "OTHER",
        }
    }
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
}

/// The parts of a request head the server acts on, borrowed from the read buffer.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: Method,
    pub path: &'a [u8],
    pub query: &'a [u8],
    /// Bytes of the head, including the blank line; the body starts here.
    pub head_len: usize,
    pub body: Body,
    pub keep_alive: bool,
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
        _ => Method::Other,
    };
    let target = req.path.unwrap_or("/").as_bytes();
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(i) => (&target[..i], &target[i + 1..]),
        None => (target, &target[target.len()..]),
    };
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
        head_len,
        body,
        keep_alive,
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
    /// `/blobs`: uploads.
    Blobs,
    /// `/blobs/{hash}`.
    Blob(BlobHash),
    /// `/blobs/{hash}/pin`.
    Pin(BlobHash),
    /// `/blobs/{x}` where `x` is not a hash.
    BadHash(HashParseError),
    NotFound,
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
            Route::Blob(_) | Route::BadHash(_) => 3,
            Route::Pin(_) => 4,
            Route::NotFound => 5,
            Route::Members | Route::RouteOf(_) | Route::Receipts | Route::Ledger(_) => 6,
        }
    }

    /// Methods the route answers, for 405's `Allow`.
    pub fn allow(self) -> &'static str {
        match self {
            Route::Healthz | Route::Metrics | Route::Members | Route::RouteOf(_) => "GET, HEAD",
            Route::Blobs | Route::Receipts => "POST",
            Route::Ledger(l) if l.is_post() => "POST",
            Route::Ledger(_) => "GET",
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
            if let Some(h) = path.strip_prefix(b"/route/") {
                return match BlobHash::parse(h) {
                    Ok(h) => Route::RouteOf(h),
                    Err(e) => Route::BadHash(e),
                };
            }
            let Some(rest) = path.strip_prefix(b"/blobs/") else {
                return Route::NotFound;
            };
            let (hash, pin) = match rest.strip_suffix(b"/pin") {
                Some(h) => (h, true),
                None => (rest, false),
            };
            match BlobHash::parse(hash) {
                Ok(h) if pin => Route::Pin(h),
                Ok(h) => Route::Blob(h),
                Err(e) => Route::BadHash(e),
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

/// Response statuses the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Created,
    Accepted,
    NoContent,
    PartialContent,
    TemporaryRedirect,
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    RangeNotSatisfiable,
    HeaderFieldsTooLarge,
    InternalServerError,
    NotImplemented,
    ServiceUnavailable,
    InsufficientStorage,
}

/// All statuses, in the order of [`Status::index`], for metrics.
pub const STATUSES: [Status; 18] = [
    Status::Ok,
    Status::Created,
    Status::Accepted,
    Status::NoContent,
    Status::PartialContent,
    Status::TemporaryRedirect,
    Status::BadRequest,
    Status::Unauthorized,
    Status::Forbidden,
    Status::NotFound,
    Status::MethodNotAllowed,
    Status::PayloadTooLarge,
    Status::RangeNotSatisfiable,
    Status::HeaderFieldsTooLarge,
    Status::InternalServerError,
    Status::NotImplemented,
    Status::ServiceUnavailable,
    Status::InsufficientStorage,
];

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::Created => 201,
            Status::Accepted => 202,
            Status::NoContent => 204,
            Status::PartialContent => 206,
            Status::TemporaryRedirect => 307,
            Status::BadRequest => 400,
            Status::Unauthorized => 401,
            Status::Forbidden => 403,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::PayloadTooLarge => 413,
            Status::RangeNotSatisfiable => 416,
            Status::HeaderFieldsTooLarge => 431,
            Status::InternalServerError => 500,
            Status::NotImplemented => 501,
            Status::ServiceUnavailable => 503,
            Status::InsufficientStorage => 507,
        }
    }

    pub fn index(self) -> usize {
        STATUSES.iter().position(|s| *s == self).unwrap_or(0)
    }

    pub fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Created => "Created",
            Status::Accepted => "Accepted",
            Status::NoContent => "No Content",
            Status::PartialContent => "Partial Content",
            Status::TemporaryRedirect => "Temporary Redirect",
            Status::BadRequest => "Bad Request",
            Status::Unauthorized => "Unauthorized",
            Status::Forbidden => "Forbidden",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::PayloadTooLarge => "Content Too Large",
            Status::RangeNotSatisfiable => "Range Not Satisfiable",
            Status::HeaderFieldsTooLarge => "Request Header Fields Too Large",
            Status::InternalServerError => "Internal Server Error",
            Status::NotImplemented => "Not Implemented",
            Status::ServiceUnavailable => "Service Unavailable",
            Status::InsufficientStorage => "Insufficient Storage",
        }
    }
}

/// Writes a response head into `out` (cleared first; its capacity is reused).
pub struct Head<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Head<'a> {
    pub fn new(out: &'a mut Vec<u8>, status: Status) -> Self {
        out.clear();
        let _ = write!(out, "HTTP/1.1 {} {}\r\n", status.code(), status.reason());
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
        let _ = write!(self.out, "{name}: {value}\r\n");
        self
    }

    pub fn content_range(self, first: u64, last: u64, size: u64) -> Self {
        let _ = write!(self.out, "Content-Range: bytes {first}-{last}/{size}\r\n");
        self
    }

    pub fn content_range_unsatisfied(self, size: u64) -> Self {
        let _ = write!(self.out, "Content-Range: bytes */{size}\r\n");
        self
    }

    pub fn etag(self, hash: &BlobHash) -> Self {
        self.out.extend_from_slice(b"ETag: \"");
        self.out.extend_from_slice(&hash.to_hex());
        self.out.extend_from_slice(b"\"\r\n");
        self
    }

    /// Ends the head with `Content-Length` and the connection decision.
    pub fn finish(self, content_length: u64, keep_alive: bool) {
        let _ = write!(self.out, "Content-Length: {content_length}\r\n");
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
                ChunkedDecoder::Size => match httparse::parse_chunk_size(input) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        input = &input[used..];
                        *self = if size == 0 {
                            ChunkedDecoder::Trailer
                        } else {
                            ChunkedDecoder::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) => {
                        if input.len() > MAX_CHUNK_LINE_BYTES {
                            return Err("chunk size line too long\n");
                        }
                        break;
                    }
                    Err(_) => return Err("malformed chunk size\n"),
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
                    let Some(end) = input.windows(2).position(|w| w == b"\r\n") else {
                        if input.len() > MAX_CHUNK_LINE_BYTES {
                            return Err("trailer line too long\n");
                        }
                        break;
                    };
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

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_header_bytes: 8192,
        max_headers: 32,
    };

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
}

/// Runs untrusted bytes through every parser the request path uses, as the server
/// would: the fuzz target `http_request` calls this, and so does a test with random
/// input. Panics only on a bug.
pub fn exercise(data: &[u8]) {
    let limits = Limits {
        max_header_bytes: 8192,
        max_headers: 32,
    };
    if let Ok(Some(req)) = parse_request(data, limits) {
        let _ = route(req.path);
        let _ = req.wants_verified();
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
    use rand::{Rng, SeedableRng};

    /// A stable-toolchain stand-in for the fuzz target, run in CI: random and
    /// mutated requests never panic.
    #[test]
    fn random_requests_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let seeds: [&[u8]; 3] = [
            b"GET /blobs/0000000000000000000000000000000000000000000000000000000000000000 HTTP/1.1\r\nRange: bytes=1-5\r\n\r\n",
            b"POST /blobs HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"HEAD /healthz?format=bao HTTP/1.0\r\nAccept: application/x-bao\r\n\r\n",
        ];
        for _ in 0..20_000 {
            let mut s = seeds[rng.random_range(0..seeds.len())].to_vec();
            for _ in 0..rng.random_range(1..6) {
                let i = rng.random_range(0..s.len());
                s[i] = rng.random();
            }
            s.truncate(rng.random_range(0..=s.len()));
            super::exercise(&s);
        }
    }
}
