//! HTTP/3 on the same per-core event loops as HTTP/1.1 (quiche, no second runtime).
//!
//! Each core owns a UDP socket bound with `SO_REUSEPORT` to the node's port and the
//! QUIC connections that started on it. Server-chosen connection IDs carry the
//! owning core's index in their first byte; a packet that the kernel's 4-tuple hash
//! delivers to another core (client migration, NAT rebinding) is forwarded to the
//! owner over a bounded channel, so a connection's state never leaves its core.
//!
//! Receive: readiness through io_uring (poll), then `recvmsg` with GRO until the
//! socket is empty. Send: `sendmsg` with UDP GSO, one call per burst of equal-sized
//! packets to one peer, paced by quiche's `SendInfo.at` (a packet due later than
//! `PACING_HORIZON` ends its burst and holds the connection until then). Routes,
//! ranges and the verified stream are the ones the HTTP/1.1 server uses
//! (`crate::http`, `crate::verified`).
//!
//! Migration: quiche validates a new peer address and moves the connection to it.
//! The old path is then probed once, because quiche keeps the packets sent there
//! in that path's loss recovery and only finds them lost when a later packet on
//! the same path is acknowledged; if the old address is dead (an abrupt NAT
//! rebinding mid-transfer) the tail sent there is never resent — a quiche 0.30
//! limitation, see `tests/h3.rs`. A client that migrates on purpose (both
//! paths alive) is followed across cores: `tests/h3_migration.rs`.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quiche::h3::NameValue;

use super::routes::Plan;
use super::{
    bump, kept_stream, off_core, open_kept, touch, upload_refusal, Core, KEEP_STREAM_MIN_BYTES,
};
use crate::config::NodeConfig;
use crate::hash::BlobHash;
use crate::http::{self, RangeRequest, Route, Status};
use crate::store::{PutWriter, StoreError};
use crate::sys;
use crate::verified;

/// Server connection IDs: the owning core's index, then 15 bytes derived from the
/// client's first DCID (so a repeated Initial finds its connection) or random.
const CID_LEN: usize = 16;
/// Pacing granularity: packets quiche schedules within this much of now go out
/// at once (in one GSO batch); a later one ends the batch and holds the
/// connection until its time. On loopback quiche's pacer rarely asks for a wait.
const PACING_HORIZON: Duration = Duration::from_millis(1);
/// How long a Retry token is good for.
const RETRY_TOKEN_SECS: u64 = 10;
/// Largest UDP payload we send: a 1500-byte MTU less the IPv6 and UDP headers.
/// Reached only once path MTU discovery has seen a packet this large arrive.
const MAX_DATAGRAM: usize = 1452;
/// GRO can hand us up to 64 KiB in one receive.
const RECV_BUF: usize = 65_536;
/// At most this many packets per GSO send (the kernel's limit is 64).
const GSO_SEGMENTS: usize = 32;
/// Packets queued to another core before drops (UDP may drop; the peer retransmits).
pub(super) const FORWARD_QUEUE: usize = 4096;
/// Request header values we look at are short; longer ones are refused.
const MAX_HEADER_VALUE: usize = 1024;

/// A datagram for another core.
pub(super) struct Forwarded {
    data: Vec<u8>,
    from: SocketAddr,
}

pub(super) type ForwardTx = flume::Sender<Forwarded>;
pub(super) type ForwardRx = flume::Receiver<Forwarded>;

/// Makes sure there is a certificate and key: the configured ones, or a
/// self-signed pair made once in `data_dir/tls/`. Returns their paths.
pub fn ensure_tls(config: &NodeConfig) -> Result<(PathBuf, PathBuf), String> {
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        for p in [cert, key] {
            std::fs::metadata(p)
                .map_err(|e| format!("cannot read TLS file {}: {e}", p.display()))?;
        }
        return Ok((cert.clone(), key.clone()));
    }
    let dir = config.data_dir.join("tls");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("cannot generate a TLS certificate: {e}"))?;
    write_private(&key, made.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&cert, made.cert.pem())
        .map_err(|e| format!("cannot write {}: {e}", cert.display()))?;
    tracing::info!(cert = %cert.display(), "generated a self-signed TLS certificate for HTTP/3");
    Ok((cert, key))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(bytes)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The quiche configuration every core uses; errors name the file at fault.
pub fn quic_config(config: &NodeConfig, cert: &Path, key: &Path) -> Result<quiche::Config, String> {
    let mut q = quiche::Config::new(quiche::PROTOCOL_VERSION).map_err(|e| format!("QUIC: {e}"))?;
    q.load_cert_chain_from_pem_file(&cert.to_string_lossy())
        .map_err(|e| {
            format!(
                "TLS certificate {} is not a usable PEM certificate chain ({e})",
                cert.display()
            )
        })?;
    q.load_priv_key_from_pem_file(&key.to_string_lossy())
        .map_err(|e| {
            format!(
                "TLS key {} is not a usable PEM private key ({e})",
                key.display()
            )
        })?;
    q.set_application_protos(quiche::h3::APPLICATION_PROTOCOL)
        .map_err(|e| format!("QUIC: {e}"))?;
    q.set_max_idle_timeout(config.h3_idle_timeout_ms);
    q.set_max_recv_udp_payload_size(MAX_DATAGRAM);
    q.set_max_send_udp_payload_size(MAX_DATAGRAM);
    // Packets start at 1200 bytes and grow to MAX_DATAGRAM once a probe of that
    // size is acknowledged (RFC 8899): no path that carries less is blackholed.
    q.discover_pmtu(true);
    q.set_initial_max_data(config.h3_max_data_bytes);
    q.set_initial_max_stream_data_bidi_local(config.h3_max_stream_data_bytes);
    q.set_initial_max_stream_data_bidi_remote(config.h3_max_stream_data_bytes);
    q.set_initial_max_stream_data_uni(1 << 20);
    q.set_initial_max_streams_bidi(config.h3_max_streams_per_connection);
    q.set_initial_max_streams_uni(16);
    q.set_active_connection_id_limit(8);
    q.set_disable_active_migration(false);
    q.enable_pacing(true);
    Ok(q)
}

/// Binds this core's UDP socket on the node's port, with large buffers and GRO.
pub(super) fn bind_udp(
    config: &NodeConfig,
    core: usize,
) -> io::Result<(monoio::net::udp::UdpSocket, bool)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = config.listen;
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    for (set, get, which) in [
        (
            Socket::set_recv_buffer_size as fn(&Socket, usize) -> io::Result<()>,
            Socket::recv_buffer_size as fn(&Socket) -> io::Result<usize>,
            "net.core.rmem_max",
        ),
        (
            Socket::set_send_buffer_size,
            Socket::send_buffer_size,
            "net.core.wmem_max",
        ),
    ] {
        let _ = set(&socket, config.udp_buffer_bytes);
        // Linux reports double the size it granted.
        let got = get(&socket).unwrap_or(0) / 2;
        if got < config.udp_buffer_bytes && core == 0 {
            tracing::warn!("UDP socket buffer capped at {got} bytes (asked {}): raise it with sysctl -w {which}={}", config.udp_buffer_bytes, config.udp_buffer_bytes);
        }
    }
    socket.bind(&addr.into())?;
    let gro = sys::enable_udp_gro(socket.as_raw_fd());
    // SAFETY: into_raw_fd hands over sole ownership of the descriptor.
    let std_socket =
        unsafe { std::net::UdpSocket::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(socket)) };
    Ok((monoio::net::udp::UdpSocket::from_std(std_socket)?, gro))
}

/// One request stream's state.
enum StreamState {
    /// Headers seen, body (upload) arriving.
    Upload {
        writer: Option<PutWriter>,
        failed: Option<StoreError>,
    },
    /// Response head sent; body bytes left to send from `body`.
    Sending {
        body: Body,
        offset: usize,
        end: usize,
    },
    /// A small request body arriving (receipts, ledger, a service's request),
    /// held in memory, handed on off the core once it is whole.
    SmallBody {
        body: Vec<u8>,
        limit: u64,
        too_large: bool,
        route: Route,
        what: &'static str,
        then: super::routes::BodyJob,
    },
    /// A request body streaming into a service's handler through its bridge
    /// task (see [`start_work`]).
    Work(Box<WorkStream>),
    /// Waiting for an upload's commit on the store-I/O threads.
    Committing,
    /// A body produced off the core, arriving chunk by chunk from its bridge
    /// task (see [`start_stream`]): the chunk being sent and how far; `credit`
    /// lets the bridge fetch the next one once this one is in quiche's buffers.
    Streaming {
        chunk: Body,
        offset: usize,
        ended: bool,
        credit: flume::Sender<()>,
    },
    /// A WebSocket on an extended CONNECT stream (RFC 9220): client frames
    /// arriving in `inbuf`, decoded into messages for the service; server
    /// frames waiting in `out`; `credit` lets the bridge task hand over the
    /// next outgoing message once `out` is in quiche's buffers.
    WebSocket(Box<WebSocketStream>),
    /// The response head could not be sent yet (no stream capacity): retried,
    /// then `next` (a body to send) follows.
    HeadBlocked {
        headers: Vec<quiche::h3::Header>,
        fin: bool,
        next: Option<Box<StreamState>>,
    },
}

/// What the core hands a service's body bridge.
enum BodyPiece {
    Chunk(Vec<u8>),
    /// The client's FIN: the body is whole.
    End,
    /// The body passed the service's limit.
    TooLarge,
}

/// A request body on its way to a service's handler. The core reads the
/// stream only while the bridge has room (`held` is what it had none for),
/// so a slow handler leaves the bytes in quiche, whose flow control then
/// holds the client back.
struct WorkStream {
    /// None once the end (or a refusal) is handed over, or the bridge is gone.
    to_bridge: Option<flume::Sender<BodyPiece>>,
    held: Option<BodyPiece>,
    received: u64,
    limit: u64,
}

impl WorkStream {
    /// Moves what has arrived on to the bridge, as far as it has room; the
    /// bytes it read from the stream.
    fn pump(&mut self, quic: &mut Quic, h3: &mut quiche::h3::Connection, id: u64) -> u64 {
        let mut buf = [0u8; 16384];
        let mut read = 0;
        loop {
            let Some(tx) = &self.to_bridge else {
                return read;
            };
            if let Some(piece) = self.held.take() {
                let last = !matches!(piece, BodyPiece::Chunk(_));
                match tx.try_send(piece) {
                    Ok(()) if last => {
                        self.to_bridge = None;
                        return read;
                    }
                    Ok(()) => {}
                    Err(flume::TrySendError::Full(piece)) => {
                        self.held = Some(piece);
                        return read;
                    }
                    Err(flume::TrySendError::Disconnected(_)) => {
                        // The handler answered without the rest: stop the
                        // client sending it (RFC 9114 §4.1, H3_NO_ERROR).
                        self.to_bridge = None;
                        let _ = quic.stream_shutdown(id, quiche::Shutdown::Read, H3_NO_ERROR);
                        return read;
                    }
                }
            }
            match h3.recv_body(quic, id, &mut buf) {
                Ok(n) => {
                    read += n as u64;
                    self.received += n as u64;
                    self.held = Some(if self.received > self.limit {
                        let _ = quic.stream_shutdown(id, quiche::Shutdown::Read, 0x10c);
                        BodyPiece::TooLarge
                    } else {
                        BodyPiece::Chunk(buf[..n].to_vec())
                    });
                }
                Err(quiche::h3::Error::Done) if quic.stream_finished(id) => {
                    self.held = Some(BodyPiece::End);
                }
                Err(_) => return read,
            }
        }
    }
}

struct WebSocketStream {
    decoder: crate::websocket::Decoder,
    inbuf: Vec<u8>,
    /// Messages to the service; None once the client closed.
    to_service: Option<flume::Sender<service_api::Message>>,
    /// A decoded message the service's queue had no room for yet.
    held: Option<service_api::Message>,
    out: Vec<u8>,
    out_offset: usize,
    credit: flume::Sender<()>,
    /// Send FIN once `out` is flushed.
    closing: bool,
}

impl WebSocketStream {
    /// Decodes what has arrived: messages go to the service (as far as its
    /// queue takes them), pings are answered, a close is echoed.
    fn pump(&mut self) {
        use crate::websocket::{encode, Frame};
        use service_api::Message;
        loop {
            if let Some(message) = self.held.take() {
                let Some(tx) = &self.to_service else { return };
                match tx.try_send(message) {
                    Ok(()) => {}
                    Err(flume::TrySendError::Full(m)) => {
                        self.held = Some(m);
                        return;
                    }
                    Err(flume::TrySendError::Disconnected(_)) => self.to_service = None,
                }
            }
            if self.closing {
                return;
            }
            match self.decoder.decode(&self.inbuf) {
                Ok(None) => return,
                Ok(Some((used, frame))) => {
                    self.inbuf.drain(..used);
                    match frame {
                        None | Some(Frame::Pong(_)) => {}
                        Some(Frame::Ping(data)) => encode(&mut self.out, &Frame::Pong(data)),
                        Some(Frame::Close(..)) => {
                            encode(&mut self.out, &Frame::Close(Some(1000), String::new()));
                            self.to_service = None;
                            self.closing = true;
                        }
                        Some(Frame::Text(t)) => self.held = Some(Message::Text(t)),
                        Some(Frame::Binary(b)) => self.held = Some(Message::Binary(b)),
                    }
                }
                Err(v) => {
                    encode(
                        &mut self.out,
                        &Frame::Close(Some(v.status), v.reason.into()),
                    );
                    self.to_service = None;
                    self.closing = true;
                }
            }
        }
    }
}

/// Bytes of a response body: a mapped blob (read straight from the page cache into
/// quiche's packet buffers) or a small owned buffer. Cloning it is a reference
/// count: quiche holds clones in its send buffers (see [`BodyBufs`]).
#[derive(Clone)]
enum Body {
    Mapped(Rc<memmap2::Mmap>),
    /// A small blob the core's open-file cache holds (no mapping per request).
    Cached(Rc<[u8]>),
    Owned(Rc<Vec<u8>>),
    /// No bytes (a HEAD, a redirect): nothing allocated.
    Empty,
}

impl Body {
    /// Owned bytes; none at all is [`Body::Empty`] (nothing allocated).
    fn owned(bytes: Vec<u8>) -> Body {
        if bytes.is_empty() {
            return Body::Empty;
        }
        Body::Owned(Rc::new(bytes))
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Body::Mapped(m) => m,
            Body::Cached(b) => b,
            Body::Owned(v) => v,
            Body::Empty => &[],
        }
    }
}

/// quiche's stream buffers on this server: a response body is handed to quiche
/// as a [`BodyBuf`], a counted reference to the bytes it already is (the mapped
/// blob, the cached one, the encoded stream), not copied into 4 KiB heap pieces
/// first. quiche copies each packet's share out of it when it builds the packet
/// (and again for a retransmission), and drops its reference once the peer
/// acknowledges the range. The bytes of other writes (frame headers, small
/// bodies) are copied as quiche's own factory does.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct BodyBufs;

/// A range of a [`Body`]: what quiche keeps in a stream's send buffer.
#[derive(Clone)]
pub(super) struct BodyBuf {
    body: Body,
    start: usize,
    end: usize,
}

impl BodyBuf {
    fn new(body: &Body, start: usize, end: usize) -> BodyBuf {
        debug_assert!(start <= end && end <= body.bytes().len());
        BodyBuf {
            body: body.clone(),
            start,
            end,
        }
    }
}

impl std::fmt::Debug for BodyBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BodyBuf({}..{})", self.start, self.end)
    }
}

impl AsRef<[u8]> for BodyBuf {
    fn as_ref(&self) -> &[u8] {
        &self.body.bytes()[self.start..self.end]
    }
}

impl quiche::BufSplit for BodyBuf {
    fn split_at(&mut self, at: usize) -> BodyBuf {
        let mid = self.start + at;
        assert!(mid <= self.end, "split past the end of a body range");
        let rest = BodyBuf {
            body: self.body.clone(),
            start: mid,
            end: self.end,
        };
        self.end = mid;
        rest
    }
}

impl quiche::BufFactory for BodyBufs {
    type Buf = BodyBuf;
    type DgramBuf = Vec<u8>;

    fn buf_from_slice(buf: &[u8]) -> BodyBuf {
        BodyBuf {
            body: Body::Cached(Rc::from(buf)),
            start: 0,
            end: buf.len(),
        }
    }

    fn dgram_buf_from_slice(buf: &[u8]) -> Vec<u8> {
        buf.to_vec()
    }
}

/// A QUIC connection whose stream buffers are [`BodyBuf`]s.
pub(super) type Quic = quiche::Connection<BodyBufs>;

struct QuicConn {
    quic: Quic,
    h3: Option<quiche::h3::Connection>,
    streams: HashMap<u64, StreamState>,
    /// Connection IDs we issued for it (all map to it in the endpoint's table).
    ids: Vec<[u8; CID_LEN]>,
    /// The peer address of the active path (to probe the old one after a migration).
    peer: SocketAddr,
    /// Pacing: nothing more is sent before this instant (quiche's `SendInfo.at`).
    pace_at: Instant,
    /// A new peer path seen and not validated yet: since when (for the debug
    /// log of a validation that takes too long).
    new_path_at: Option<Instant>,
    /// The earliest of this connection's entries in the endpoint's timer heap
    /// that is still pending (see [`Endpoint::arm`]).
    armed: Option<Instant>,
    /// In the endpoint's list of connections to service this wake-up.
    active: bool,
    /// The lowest request stream ID above every request seen: what a GOAWAY
    /// names when the node stops (requests below it are answered).
    next_request: u64,
    /// Set when the node stops and this connection gets its GOAWAY.
    drain: Option<Drain>,
}

/// A connection's part of a stopping core's drain.
struct Drain {
    /// The stream ID the last GOAWAY named: requests from it on are refused.
    goaway: u64,
    /// Which GOAWAY is next, and when.
    stage: Stage,
    /// The request streams below the final GOAWAY whose answers were not yet
    /// acknowledged when it was sent (quiche forgets a stream once both sides
    /// are done and acknowledged).
    open: Vec<u64>,
    /// The connection's received-packet count, and when it last changed.
    heard: (usize, Instant),
    /// When the core last asked the peer for an acknowledgement (a PING).
    pinged: Instant,
}

/// Where a draining connection is in its two GOAWAYs. Either may find no
/// room on the control stream (quiche lets a connection buffer only what its
/// congestion window can send, and a download may have taken all of it): it
/// is tried again at each sweep until it goes, and the final one's wait
/// starts only once the first has gone.
enum Stage {
    /// The first GOAWAY (naming no request) has not gone yet; the final one
    /// is due this long after it goes.
    First { wait: Duration },
    /// The first has gone: the final one is due then. Requests the client
    /// sent before it heard the first are answered.
    Final { due: Instant },
    /// The final one has gone.
    Done,
}

/// Sends a GOAWAY naming `id`. False: no room on the control stream now
/// (try again later); a GOAWAY that can never go counts as gone.
fn send_goaway(
    h3: Option<&mut quiche::h3::Connection>,
    quic: &mut quiche::Connection<BodyBufs>,
    id: u64,
) -> bool {
    let Some(h3) = h3 else {
        return true;
    };
    match h3.send_goaway(quic, id) {
        Ok(()) => true,
        Err(quiche::h3::Error::StreamBlocked) | Err(quiche::h3::Error::Done) => false,
        Err(e) => {
            tracing::debug!("cannot send GOAWAY: {e}");
            true
        }
    }
}

/// An upload commit finished on a store-I/O thread.
struct Committed {
    conn: quiche::ConnectionId<'static>,
    stream: u64,
    result: Done,
}

/// What finished off the core for a stream.
enum Done {
    Upload(Result<crate::store::PutOutcome, StoreError>),
    /// A missing blob was fetched from peers (or not): answer the request now.
    Fetched {
        req: Box<H3Request>,
        hash: BlobHash,
        meta: Option<service_api::BlobReply>,
    },
    /// The next chunk of a streamed body.
    Chunk(Vec<u8>),
    /// A message from a service to its WebSocket client; None: the service's
    /// handler returned (close).
    SocketOut(Option<service_api::Message>),
    /// A streamed body is complete.
    StreamEnd,
    /// A service's body bridge handed a chunk on: the stream may be read
    /// further.
    BodyCredit,
    /// A streamed body's producer stalled or failed: the stream is reset, so
    /// the client cannot take a short body for a whole one.
    StreamAbort,
    /// An answer computed off the core (receipts, ledger, admin).
    Reply {
        route: Route,
        reply: super::Reply,
        head_only: bool,
        /// The request, for a reply that is a stored blob (a service's
        /// [`service_api::Body::Blob`]), served as blobs are.
        request: Option<Box<H3Request>>,
    },
}

/// A core's QUIC endpoint.
pub(super) struct Endpoint {
    socket: monoio::net::udp::UdpSocket,
    fd: i32,
    local: SocketAddr,
    config: quiche::Config,
    h3_config: quiche::h3::Config,
    /// Connection ID -> slot; several IDs may name one connection. All the
    /// IDs we issue are `CID_LEN` bytes.
    ids: HashMap<[u8; CID_LEN], usize>,
    conns: slab::Slab<QuicConn>,
    core_index: u8,
    peers: Vec<ForwardTx>,
    inbox: ForwardRx,
    commits_tx: flume::Sender<Committed>,
    commits_rx: flume::Receiver<Committed>,
    /// Key for deriving connection IDs from a client's first DCID.
    cid_key: [u8; 32],
    recv_buf: Vec<u8>,
    send_buf: Vec<u8>,
    /// Slots to service and flush this wake-up: those that got a packet, a
    /// finished off-core job or a due timer. The others are not touched, so a
    /// wake-up costs what its active connections cost, not what all held ones do.
    active: Vec<usize>,
    /// Connection deadlines: quiche's timer, or the pacing release.
    timers: Deadlines,
}

/// Our connection IDs are all `CID_LEN` bytes: one as a key of the table.
fn cid_key(id: &[u8]) -> Option<[u8; CID_LEN]> {
    id.try_into().ok()
}

/// A QUIC packet's destination connection ID, read without quiche's header
/// parser (which copies it): in a short header it follows the first byte and
/// is as long as ours; in a long one a length byte follows the version.
fn packet_dcid(pkt: &[u8]) -> Option<&[u8]> {
    if pkt.first()? & 0x80 == 0 {
        pkt.get(1..1 + CID_LEN)
    } else {
        let len = *pkt.get(5)? as usize;
        pkt.get(6..6 + len)
    }
}

/// The connections' deadlines, earliest first: a min-heap of (instant, slot)
/// with lazy removal. Each connection keeps the instant of its earliest pending
/// entry (`armed`); an entry that is not its connection's `armed` any more is
/// stale and skipped when it comes up. A deadline that moves later keeps its
/// earlier entry, which then fires early (the connection is serviced once for
/// nothing and armed again), so a connection pushes about one entry per
/// deadline it reaches, not one per packet.
#[derive(Default)]
struct Deadlines {
    heap: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, usize)>>,
}

impl Deadlines {
    fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|std::cmp::Reverse((at, _))| *at)
    }

    /// Arms `slot` for `at`, unless an entry at or before it is pending.
    fn arm(&mut self, slot: usize, at: Instant, armed: &mut Option<Instant>) {
        if armed.is_some_and(|pending| pending <= at) {
            return;
        }
        *armed = Some(at);
        self.heap.push(std::cmp::Reverse((at, slot)));
    }

    /// The next entry due by `now`, taken off the heap; the caller checks it
    /// against its connection's `armed`.
    fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize)> {
        let &std::cmp::Reverse((at, slot)) = self.heap.peek()?;
        if at > now {
            return None;
        }
        self.heap.pop();
        Some((at, slot))
    }

    /// Drops the stale entries once there are more than two per live
    /// connection (the heap's storage is kept).
    fn compact(&mut self, live: usize, is_armed: impl Fn(usize, Instant) -> bool) {
        if self.heap.len() > 2 * live + 64 {
            self.heap
                .retain(|&std::cmp::Reverse((at, slot))| is_armed(slot, at));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.heap.len()
    }
}

/// Adds a connection to this wake-up's active list (once).
fn mark_active(active: &mut Vec<usize>, slot: usize, conn: &mut QuicConn) {
    if !conn.active {
        conn.active = true;
        active.push(slot);
    }
}

impl Endpoint {
    pub(super) fn new(
        socket: monoio::net::udp::UdpSocket,
        local: SocketAddr,
        config: quiche::Config,
        core_index: usize,
        peers: Vec<ForwardTx>,
        inbox: ForwardRx,
    ) -> io::Result<Endpoint> {
        let mut h3_config =
            quiche::h3::Config::new().map_err(|e| io::Error::other(e.to_string()))?;
        // RFC 9220: WebSockets over HTTP/3 with extended CONNECT.
        h3_config.enable_extended_connect(true);
        let (commits_tx, commits_rx) = flume::unbounded();
        let mut cid_key = [0u8; 32];
        getrandom(&mut cid_key);
        Ok(Endpoint {
            fd: socket.as_raw_fd(),
            socket,
            local,
            config,
            h3_config,
            ids: HashMap::new(),
            conns: slab::Slab::new(),
            core_index: core_index as u8,
            peers,
            inbox,
            commits_tx,
            commits_rx,
            cid_key,
            recv_buf: vec![0u8; RECV_BUF],
            send_buf: vec![0u8; MAX_DATAGRAM * GSO_SEGMENTS],
            active: Vec::new(),
            timers: Deadlines::default(),
        })
    }
}

fn getrandom(out: &mut [u8]) {
    use rand::RngCore;
    rand::rng().fill_bytes(out);
}

/// How long a stopping core waits for its connections' CONNECTION_CLOSE
/// frames to go out.
pub(super) const STOP_CLOSE_WAIT: Duration = Duration::from_millis(500);
/// A stopping core closes a connection whose peer has sent nothing for this
/// long, answers unfinished or not: it is not there to read them. A peer that
/// is there but sends nothing (it has paused its reads, so the node has
/// nothing it may send) is asked for an acknowledgement every `DRAIN_PING`
/// meanwhile, and answers it: that keeps its connection to the grace period.
const DRAIN_SILENT_PEER: Duration = Duration::from_secs(2);
/// The first GOAWAY names the largest client request stream ID (it refuses
/// nothing); the final one, this long after, names the first request not
/// answered. A request that crossed the first in flight is then answered
/// rather than refused, as RFC 9114 (5.2) suggests; the wait is at least two
/// round trips.
const GOAWAY_FINAL_AFTER: Duration = Duration::from_secs(1);
/// The largest client-initiated bidirectional stream ID.
const MAX_REQUEST_ID: u64 = (1 << 62) - 4;
/// How long a draining connection's peer may be quiet before a PING asks it
/// for an acknowledgement (and how often it is asked again).
const DRAIN_PING: Duration = Duration::from_millis(500);
/// How often a stopping core looks for connections it can close.
const DRAIN_SWEEP: Duration = Duration::from_millis(10);

/// HTTP/3's "no error" code: how a stopping node closes its connections.
const H3_NO_ERROR: u64 = 0x100;

/// A stopping core's HTTP/3 drain.
struct Stop {
    /// In-flight requests may finish until then (`shutdown_grace_ms`).
    grace_by: Instant,
    /// Every connection has been told to close; the loop ends then.
    close_by: Option<Instant>,
    swept: Option<Instant>,
}

/// The core's HTTP/3 loop: packets in, timers, commits, packets out.
///
/// When the node stops, each connection gets a GOAWAY that refuses nothing,
/// then, `GOAWAY_FINAL_AFTER` later, one naming the first request it will not
/// answer; later requests are refused (`H3_REQUEST_REJECTED`, safe for the
/// client to retry elsewhere), earlier ones finish, and a connection
/// is closed (`H3_NO_ERROR`) once its answers are all acknowledged, its peer
/// has gone silent for `DRAIN_SILENT_PEER` (PINGs unanswered), or the grace
/// period is over. New connections are not accepted meanwhile.
pub(super) async fn run(core: Rc<Core>, mut ep: Endpoint) {
    let mut stop: Option<Stop> = None;
    loop {
        // Stopping: done once every connection has sent its CONNECTION_CLOSE
        // (quiche then only drains, for 3 PTOs, to answer late packets with
        // another close; a process that exits need not wait for that), or
        // STOP_CLOSE_WAIT after the grace period: a close that has not gone
        // out by then waits for a probe timer to a peer that does not
        // acknowledge (quiche holds it behind a full congestion window),
        // possibly for seconds.
        if core.stopping.get() && ep.drain_step(&core, &mut stop) {
            return;
        }
        // The earliest deadline (none past 100 ms, so `stopping` is seen), or
        // none at all while connections are left active by a failed send.
        let timeout = match ep.timers.next() {
            _ if !ep.active.is_empty() => Duration::ZERO,
            Some(at) => at.saturating_duration_since(Instant::now()),
            None => Duration::from_millis(100),
        }
        .min(Duration::from_millis(100));
        let inbox = ep.inbox.clone();
        let commits = ep.commits_rx.clone();
        monoio::select! {
            r = ep.socket.readable(false) => { if r.is_err() { monoio::time::sleep(Duration::from_millis(1)).await; } }
            f = inbox.recv_async() => { if let Ok(f) = f { tracing::trace!("forwarded datagram in"); ep.handle_datagram(&core, f.data, f.from); } }
            c = commits.recv_async() => { if let Ok(c) = c { ep.finish_upload(&core, c); } }
            _ = monoio::time::sleep(timeout) => {}
        }
        ep.drain_socket(&core);
        while let Ok(f) = ep.inbox.try_recv() {
            tracing::trace!("forwarded datagram drained");
            ep.handle_datagram(&core, f.data, f.from);
        }
        while let Ok(c) = ep.commits_rx.try_recv() {
            ep.finish_upload(&core, c);
        }
        ep.fire_timers(Instant::now());
        ep.service(&core);
        if ep.flush(&core).await.is_err() {
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Endpoint {
    fn drain_socket(&mut self, core: &Core) {
        let mut buf = std::mem::take(&mut self.recv_buf);
        loop {
            match sys::recv_udp(self.fd, &mut buf) {
                Ok((n, from, segment)) => {
                    bump(&core.stats().h3_datagrams_received, 1);
                    // A GRO buffer holds several datagrams of `segment` bytes.
                    for piece in buf[..n].chunks_mut(segment.max(1)) {
                        self.handle_slice(core, piece, from);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!("UDP receive failed: {e}");
                    break;
                }
            }
        }
        self.recv_buf = buf;
    }

    fn handle_datagram(&mut self, core: &Core, mut data: Vec<u8>, from: SocketAddr) {
        self.handle_slice(core, &mut data, from);
    }

    fn derived_cid(&self, dcid: &[u8]) -> [u8; CID_LEN] {
        let mut id = [0u8; CID_LEN];
        id[0] = self.core_index;
        let mac = blake3::keyed_hash(&self.cid_key, dcid);
        id[1..].copy_from_slice(&mac.as_bytes()[..CID_LEN - 1]);
        id
    }

    /// Handles one datagram; quiche decrypts it in place.
    fn handle_slice(&mut self, core: &Core, pkt: &mut [u8], from: SocketAddr) {
        // Not QUIC (fixed bit clear): the control plane's gossip on the same port.
        if pkt.first().is_some_and(|b| b & 0x40 == 0) {
            if let Some(inbox) = &core.shared.hooks.control_inbox {
                if inbox.try_send((pkt.to_vec(), from)).is_ok() {
                    return;
                }
            }
            bump(&core.stats().h3_datagrams_dropped, 1);
            return;
        }
        // A connection's own packets are found by their DCID alone; the
        // others go through quiche's header parser (which copies the IDs).
        let known = packet_dcid(pkt).and_then(|dcid| self.ids.get(dcid).copied());
        let slot = match known {
            Some(s) => s,
            None => match self.unknown_packet(core, pkt, from) {
                Some(s) => s,
                None => return,
            },
        };
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let info = quiche::RecvInfo {
            from,
            to: self.local,
        };
        if let Err(e) = conn.quic.recv(pkt, info) {
            tracing::debug!("QUIC packet refused: {e}");
            bump(&core.stats().h3_datagrams_dropped, 1);
        }
        mark_active(&mut self.active, slot, conn);
    }

    /// A packet whose DCID names none of our connections: a repeated Initial,
    /// a packet for a connection on another core (forwarded there), or a new
    /// connection. The slot that should take it, if any.
    fn unknown_packet(&mut self, core: &Core, pkt: &mut [u8], from: SocketAddr) -> Option<usize> {
        let hdr = match quiche::Header::from_slice(pkt, CID_LEN) {
            Ok(h) => h,
            Err(_) => {
                bump(&core.stats().h3_datagrams_dropped, 1);
                return None;
            }
        };
        let dcid = &hdr.dcid;
        // A repeated Initial: its connection is under the ID derived from the
        // client's first DCID.
        if let Some(&s) = self.ids.get(&self.derived_cid(dcid)) {
            return Some(s);
        }
        // Ours by its first byte but owned by another core: forward it.
        if dcid.len() == CID_LEN && dcid[0] != self.core_index && hdr.ty == quiche::Type::Short {
            if let Some(peer) = self.peers.get(dcid[0] as usize) {
                let data = pkt.to_vec();
                if peer.try_send(Forwarded { data, from }).is_ok() {
                    bump(&core.stats().h3_datagrams_forwarded, 1);
                    return None;
                }
            }
            bump(&core.stats().h3_datagrams_dropped, 1);
            return None;
        }
        self.accept(core, &hdr, from)
    }

    /// Moves connections whose deadline has come into this wake-up's active list.
    fn fire_timers(&mut self, now: Instant) {
        while let Some((at, slot)) = self.timers.pop_due(now) {
            if let Some(conn) = self.conns.get_mut(slot) {
                if conn.armed == Some(at) {
                    conn.armed = None;
                    mark_active(&mut self.active, slot, conn);
                }
            }
        }
    }

    /// Arms a connection's next deadline: quiche's timer or the pacing
    /// release, whichever comes first. A closed connection is due at once, so
    /// the next wake-up removes it.
    fn arm(timers: &mut Deadlines, slot: usize, conn: &mut QuicConn, now: Instant) {
        let deadline = if conn.quic.is_closed() {
            Some(now)
        } else {
            let paced = (conn.pace_at > now).then_some(conn.pace_at);
            match (conn.quic.timeout_instant(), paced) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        if let Some(at) = deadline {
            timers.arm(slot, at, &mut conn.armed);
        }
    }

    fn accept(&mut self, core: &Core, hdr: &quiche::Header<'_>, from: SocketAddr) -> Option<usize> {
        if hdr.ty != quiche::Type::Initial {
            bump(&core.stats().h3_datagrams_dropped, 1);
            return None;
        }
        if !quiche::version_is_supported(hdr.version) {
            let mut out = [0u8; MAX_DATAGRAM];
            if let Ok(n) = quiche::negotiate_version(&hdr.scid, &hdr.dcid, &mut out) {
                let _ = sys::send_udp(self.fd, &out[..n], n, &from);
            }
            return None;
        }
        if self.conns.len() >= core.shared.config.h3_max_connections_per_core {
            bump(&core.stats().connections_refused, 1);
            return None;
        }
        if core.stopping.get() {
            // Draining: no new connections (the client's next try goes to
            // another node, or to this one restarted).
            bump(&core.stats().h3_datagrams_dropped, 1);
            return None;
        }
        // Address validation: the first Initial gets a Retry with a token only
        // we can mint; the connection starts when an Initial brings it back.
        let (scid, odcid) = if core.shared.config.h3_retry {
            match hdr.token.as_deref().filter(|t| !t.is_empty()) {
                None => {
                    let new_scid = self.derived_cid(&hdr.dcid);
                    let token = self.mint_token(&from, &hdr.dcid);
                    let mut out = [0u8; MAX_DATAGRAM];
                    if let Ok(n) = quiche::retry(
                        &hdr.scid,
                        &hdr.dcid,
                        &quiche::ConnectionId::from_ref(&new_scid),
                        &token,
                        hdr.version,
                        &mut out,
                    ) {
                        let _ = sys::send_udp(self.fd, &out[..n], n, &from);
                        bump(&core.stats().h3_retries, 1);
                    }
                    return None;
                }
                Some(token) => match (self.check_token(&from, token), cid_key(&hdr.dcid)) {
                    (Some(odcid), Some(scid)) => (scid, Some(odcid)),
                    _ => {
                        tracing::debug!(%from, "QUIC Initial with an invalid Retry token");
                        bump(&core.stats().h3_datagrams_dropped, 1);
                        return None;
                    }
                },
            }
        } else {
            (self.derived_cid(&hdr.dcid), None)
        };
        let quic = match quiche::accept_with_buf_factory::<BodyBufs>(
            &quiche::ConnectionId::from_ref(&scid),
            odcid.as_ref(),
            self.local,
            from,
            &mut self.config,
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("QUIC accept failed: {e}");
                return None;
            }
        };
        bump(&core.stats().connections_total, 1);
        bump(&core.stats().h3_connections_total, 1);
        let slot = self.conns.insert(QuicConn {
            quic,
            h3: None,
            streams: HashMap::new(),
            ids: vec![scid],
            peer: from,
            pace_at: Instant::now(),
            new_path_at: None,
            armed: None,
            active: false,
            next_request: 0,
            drain: None,
        });
        self.ids.insert(scid, slot);
        Some(slot)
    }

    /// A Retry token: `time (8) | odcid length (1) | odcid | MAC (16)`, the MAC
    /// keyed with this core's secret over the client's address, time and odcid.
    fn mint_token(&self, from: &SocketAddr, odcid: &[u8]) -> Vec<u8> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut t = Vec::with_capacity(25 + odcid.len());
        t.extend_from_slice(&now.to_le_bytes());
        t.push(odcid.len() as u8);
        t.extend_from_slice(odcid);
        let mac = self.token_mac(from, &t);
        t.extend_from_slice(&mac);
        t
    }

    fn token_mac(&self, from: &SocketAddr, body: &[u8]) -> [u8; 16] {
        let mut h = blake3::Hasher::new_keyed(&self.cid_key);
        h.update(b"tessera-retry-v1");
        match from.ip() {
            std::net::IpAddr::V4(ip) => h.update(&ip.octets()),
            std::net::IpAddr::V6(ip) => h.update(&ip.octets()),
        };
        h.update(&from.port().to_le_bytes());
        h.update(body);
        let mut mac = [0u8; 16];
        mac.copy_from_slice(&h.finalize().as_bytes()[..16]);
        mac
    }

    /// The original destination CID from a token we minted for this address in
    /// the last `RETRY_TOKEN_SECS`; None for anything else.
    fn check_token(
        &self,
        from: &SocketAddr,
        token: &[u8],
    ) -> Option<quiche::ConnectionId<'static>> {
        let (&len, rest) = token.get(8..)?.split_first()?;
        let len = len as usize;
        if rest.len() != len + 16 || len > quiche::MAX_CONN_ID_LEN {
            return None;
        }
        let body = &token[..9 + len];
        if self.token_mac(from, body) != token[9 + len..] {
            return None;
        }
        let minted = u64::from_le_bytes(token[..8].try_into().ok()?);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if now.saturating_sub(minted) > RETRY_TOKEN_SECS {
            return None;
        }
        Some(quiche::ConnectionId::from_vec(token[9..9 + len].to_vec()))
    }

    /// Advances every connection: HTTP/3 set-up, requests, bodies, new IDs, and
    /// removes closed ones.
    fn service(&mut self, core: &Core) {
        let now = Instant::now();
        let mut closed = Vec::new();
        // Only the connections that something happened to (see `active`).
        let active = std::mem::take(&mut self.active);
        for &slot in &active {
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            if conn.quic.timeout_instant().is_some_and(|t| t <= now) {
                tracing::trace!("QUIC timer fired");
                conn.quic.on_timeout();
            }
            if conn.quic.is_closed() {
                closed.push(slot);
                continue;
            }
            // Path changes (client migration, NAT rebinding): quiche validates new
            // paths itself; we log them and let it retire what the peer retired.
            if conn
                .new_path_at
                .is_some_and(|t| now.saturating_duration_since(t) > Duration::from_secs(1))
            {
                conn.new_path_at = None;
                for p in conn.quic.path_stats() {
                    tracing::debug!(
                        local = %p.local_addr,
                        peer = %p.peer_addr,
                        state = ?p.validation_state,
                        active = p.active,
                        sent = p.sent,
                        recv = p.recv,
                        lost = p.lost,
                        "QUIC path still not validated after 1 s"
                    );
                }
            }
            while let Some(ev) = conn.quic.path_event_next() {
                tracing::debug!("QUIC path event: {ev:?}");
                match ev {
                    quiche::PathEvent::New(..) => conn.new_path_at = Some(now),
                    quiche::PathEvent::Validated(..) | quiche::PathEvent::FailedValidation(..) => {
                        conn.new_path_at = None
                    }
                    _ => {}
                }
                if let quiche::PathEvent::PeerMigrated(local, peer) = ev {
                    // Packets sent to the old address just before the move stay
                    // in the old path's loss recovery, which only declares a
                    // packet lost once a later packet *on that path* is acked.
                    // A PATH_CHALLENGE on the old path is such a later packet: if
                    // the old address still reaches the client (NATs usually
                    // keep the old mapping a while), its ACK lets quiche find
                    // and resend the lost tail. If it is dead, the probe fails
                    // quietly after three tries.
                    let old = std::mem::replace(&mut conn.peer, peer);
                    if old != peer {
                        let _ = conn.quic.probe_path(local, old);
                    }
                }
            }
            while let Some(retired) = conn.quic.retired_scid_next() {
                self.ids.remove(retired.as_ref());
                conn.ids.retain(|id| id[..] != retired[..]);
            }
            // Keep the peer supplied with spare IDs for migration, each naming us.
            while conn.quic.is_established() && conn.quic.scids_left() > 0 {
                let mut id = [0u8; CID_LEN];
                getrandom(&mut id);
                id[0] = self.core_index;
                let mut token = [0u8; 16];
                getrandom(&mut token);
                let cid = quiche::ConnectionId::from_ref(&id);
                if conn
                    .quic
                    .new_scid(&cid, u128::from_le_bytes(token), false)
                    .is_err()
                {
                    break;
                }
                conn.ids.push(id);
                self.ids.insert(id, slot);
            }
            if conn.h3.is_none() && (conn.quic.is_in_early_data() || conn.quic.is_established()) {
                match quiche::h3::Connection::with_transport(&mut conn.quic, &self.h3_config) {
                    Ok(h3) => conn.h3 = Some(h3),
                    Err(e) => {
                        tracing::debug!("HTTP/3 set-up failed: {e}");
                        let _ = conn.quic.close(false, 0x1, b"h3 setup");
                    }
                }
            }
            if conn.h3.is_some() {
                handle_events(core, conn, &self.commits_tx, now);
                send_bodies(core, conn);
            }
        }
        self.active = active;
        for slot in closed {
            let conn = self.conns.remove(slot);
            for id in conn.ids {
                self.ids.remove(&id);
            }
        }
    }

    fn finish_upload(&mut self, core: &Core, c: Committed) {
        let Some(&slot) = self.ids.get(c.conn.as_ref()) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        mark_active(&mut self.active, slot, conn);
        match c.result {
            Done::Chunk(data) => {
                if let Some(StreamState::Streaming { chunk, offset, .. }) =
                    conn.streams.get_mut(&c.stream)
                {
                    *chunk = Body::owned(data);
                    *offset = 0;
                }
                send_bodies(core, conn);
                return;
            }
            Done::SocketOut(message) => {
                if let Some(StreamState::WebSocket(ws)) = conn.streams.get_mut(&c.stream) {
                    use crate::websocket::{encode, Frame};
                    match message {
                        Some(service_api::Message::Text(t)) => encode(&mut ws.out, &Frame::Text(t)),
                        Some(service_api::Message::Binary(b)) => {
                            encode(&mut ws.out, &Frame::Binary(b))
                        }
                        None if !ws.closing => {
                            encode(&mut ws.out, &Frame::Close(Some(1000), String::new()));
                            ws.closing = true;
                        }
                        None => {}
                    }
                }
                send_bodies(core, conn);
                return;
            }
            Done::StreamEnd => {
                if let Some(StreamState::Streaming { ended, .. }) = conn.streams.get_mut(&c.stream)
                {
                    *ended = true;
                }
                send_bodies(core, conn);
                return;
            }
            Done::BodyCredit => {
                if let (Some(StreamState::Work(w)), Some(h3)) =
                    (conn.streams.get_mut(&c.stream), conn.h3.as_mut())
                {
                    let n = w.pump(&mut conn.quic, h3, c.stream);
                    bump(&core.stats().bytes_received, n);
                }
                send_bodies(core, conn);
                return;
            }
            Done::StreamAbort => {
                conn.streams.remove(&c.stream);
                let _ = conn
                    .quic
                    .stream_shutdown(c.stream, quiche::Shutdown::Write, 0x102); // H3_INTERNAL_ERROR
                return;
            }
            _ => {}
        }
        if let Some(StreamState::Work(w)) = conn.streams.remove(&c.stream) {
            if w.to_bridge.is_some() {
                // Answered before the whole body came: the rest is not wanted.
                let _ = conn
                    .quic
                    .stream_shutdown(c.stream, quiche::Shutdown::Read, H3_NO_ERROR);
            }
        }
        let result = match c.result {
            Done::Chunk(_)
            | Done::SocketOut(_)
            | Done::StreamEnd
            | Done::StreamAbort
            | Done::BodyCredit => return,
            Done::Upload(r) => r,
            Done::Fetched { req, hash, meta } => {
                // Stored now, or not: answer from the store (404 if not).
                get_blob(
                    core,
                    conn,
                    c.stream,
                    &req,
                    Route::Blob(hash),
                    hash,
                    meta,
                    None,
                );
                send_bodies(core, conn);
                return;
            }
            Done::Reply {
                route,
                reply,
                request: Some(req),
                ..
            } if matches!(reply.body, service_api::Body::Blob(_)) => {
                let service_api::Body::Blob(blob) = reply.body else {
                    return;
                };
                let hash = BlobHash(blob.hash);
                get_blob(core, conn, c.stream, &req, route, hash, Some(*blob), None);
                send_bodies(core, conn);
                return;
            }
            Done::Reply {
                route,
                reply,
                head_only,
                ..
            } => {
                send_reply(
                    core,
                    conn,
                    c.stream,
                    route,
                    reply,
                    head_only,
                    &self.commits_tx,
                );
                send_bodies(core, conn);
                return;
            }
        };
        match result {
            Ok(out) => {
                let body =
                    format!("{{\"hash\":\"{}\",\"size\":{}}}\n", out.hash, out.size).into_bytes();
                respond(
                    core,
                    conn,
                    c.stream,
                    Route::Blobs,
                    Status::Created,
                    "application/json",
                    Body::owned(body),
                    false,
                    &[],
                );
            }
            Err(e) => upload_error(core, conn, c.stream, e),
        }
        send_bodies(core, conn);
    }

    /// One step of a stopping core's drain (see [`run`]); `true` once the
    /// loop may end.
    fn drain_step(&mut self, core: &Core, stop: &mut Option<Stop>) -> bool {
        let now = Instant::now();
        let stop = stop.get_or_insert_with(|| {
            let open = self.send_goaways(now);
            if open > 0 {
                tracing::info!(
                    core = core.index,
                    connections = open,
                    "stopping: GOAWAY sent on HTTP/3 connections, draining"
                );
            }
            Stop {
                grace_by: now + Duration::from_millis(core.shared.config.shutdown_grace_ms),
                close_by: None,
                swept: None,
            }
        });
        if stop.close_by.is_none() && now >= stop.grace_by {
            let cut = self.close_all();
            if cut > 0 {
                tracing::warn!(
                    core = core.index,
                    connections = cut,
                    "grace period over, closing HTTP/3 connections with answers unfinished"
                );
            }
            stop.close_by = Some(now + STOP_CLOSE_WAIT);
        }
        if stop
            .swept
            .is_none_or(|t| now.duration_since(t) >= DRAIN_SWEEP)
        {
            stop.swept = Some(now);
            self.close_drained(now);
        }
        // Every connection told to close (its close may wait behind a full
        // congestion window to a peer that has gone): the same wait for the
        // closes to go out as after the grace period.
        if stop.close_by.is_none()
            && self.conns.iter().all(|(_, c)| {
                c.quic.is_closed() || c.quic.is_draining() || c.quic.local_error().is_some()
            })
        {
            stop.close_by = Some(now + STOP_CLOSE_WAIT);
        }
        let closed = self
            .conns
            .iter()
            .all(|(_, c)| c.quic.is_closed() || c.quic.is_draining());
        let done = closed || stop.close_by.is_some_and(|t| now >= t);
        if done && !closed {
            tracing::warn!(
                core = core.index,
                "stopping before every HTTP/3 close went out (peers that stopped acknowledging)"
            );
        }
        done
    }

    /// The node stops: the first GOAWAY on every connection (it names the
    /// largest request ID; `close_drained` sends the final one when it is due).
    /// A connection still in its handshake is closed.
    /// How many connections were told.
    fn send_goaways(&mut self, now: Instant) -> usize {
        let mut told = 0;
        for (slot, conn) in self.conns.iter_mut() {
            if conn.quic.is_closed() || conn.quic.is_draining() {
                continue;
            }
            told += 1;
            if conn.h3.is_some() {
                let rtt = conn.quic.path_stats().map(|p| p.rtt).max();
                let wait = rtt.map_or(GOAWAY_FINAL_AFTER, |r| GOAWAY_FINAL_AFTER.max(2 * r));
                let stage = if send_goaway(conn.h3.as_mut(), &mut conn.quic, MAX_REQUEST_ID) {
                    Stage::Final { due: now + wait }
                } else {
                    Stage::First { wait }
                };
                let heard = (conn.quic.stats().recv, now);
                conn.drain = Some(Drain {
                    goaway: MAX_REQUEST_ID,
                    stage,
                    open: Vec::new(),
                    heard,
                    pinged: now,
                });
            } else {
                let _ = conn.quic.close(true, H3_NO_ERROR, b"shutting down");
            }
            mark_active(&mut self.active, slot, conn);
        }
        told
    }

    /// Closes the drained connections with nothing left to answer, or whose
    /// peer has gone silent; asks a quiet peer for an acknowledgement.
    fn close_drained(&mut self, now: Instant) {
        for (slot, conn) in self.conns.iter_mut() {
            if conn.quic.is_closed() || conn.quic.is_draining() {
                continue;
            }
            let Some(drain) = conn.drain.as_mut() else {
                continue;
            };
            let recv = conn.quic.stats().recv;
            if drain.heard.0 != recv {
                drain.heard = (recv, now);
            }
            match drain.stage {
                Stage::First { wait } => {
                    if send_goaway(conn.h3.as_mut(), &mut conn.quic, MAX_REQUEST_ID) {
                        drain.stage = Stage::Final { due: now + wait };
                        mark_active(&mut self.active, slot, conn);
                        continue;
                    }
                }
                Stage::Final { due } if now >= due => {
                    // The final GOAWAY: requests from here on are refused,
                    // those below it are answered.
                    let next = conn.next_request;
                    if send_goaway(conn.h3.as_mut(), &mut conn.quic, next) {
                        let quic = &mut conn.quic;
                        drain.open = (0..next)
                            .step_by(4)
                            .filter(|&s| quic.stream_capacity(s).is_ok())
                            .collect();
                        drain.stage = Stage::Done;
                        drain.goaway = next;
                        mark_active(&mut self.active, slot, conn);
                        continue;
                    }
                }
                Stage::Final { .. } | Stage::Done => {}
            }
            let quiet = now.duration_since(drain.heard.1);
            let silent = quiet >= DRAIN_SILENT_PEER;
            let quic = &mut conn.quic;
            drain.open.retain(|&s| quic.stream_capacity(s).is_ok());
            let done = matches!(drain.stage, Stage::Done)
                && conn.streams.is_empty()
                && drain.open.is_empty();
            if done || silent {
                let _ = conn.quic.close(true, H3_NO_ERROR, b"shutting down");
                mark_active(&mut self.active, slot, conn);
            } else if quiet >= DRAIN_PING && now.duration_since(drain.pinged) >= DRAIN_PING {
                drain.pinged = now;
                let _ = conn.quic.send_ack_eliciting();
                mark_active(&mut self.active, slot, conn);
            }
        }
    }

    /// Closes every connection not yet closing; how many that was.
    fn close_all(&mut self) -> usize {
        let mut cut = 0;
        for (slot, conn) in self.conns.iter_mut() {
            if !conn.quic.is_closed() && !conn.quic.is_draining() {
                // close() fails only for a connection already closing.
                if conn.quic.close(true, H3_NO_ERROR, b"shutting down").is_ok() {
                    cut += 1;
                }
            }
            mark_active(&mut self.active, slot, conn);
        }
        cut
    }

    /// Sends whatever every connection has to send, GSO-batched per peer.
    async fn flush(&mut self, core: &Core) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.send_buf);
        let result = self.flush_with(core, &mut buf).await;
        self.send_buf = buf;
        result
    }

    /// Sends what the active connections have to send, then arms their timers
    /// and empties the active list.
    async fn flush_with(&mut self, core: &Core, buf: &mut [u8]) -> io::Result<()> {
        let mut active = std::mem::take(&mut self.active);
        let result = self.flush_active(core, buf, &active).await;
        if result.is_err() {
            // The socket failed: they stay active, for the next wake-up (at once).
            self.active = active;
            return result;
        }
        let now = Instant::now();
        for &slot in &active {
            if let Some(conn) = self.conns.get_mut(slot) {
                conn.active = false;
                Self::arm(&mut self.timers, slot, conn, now);
            }
        }
        active.clear();
        self.active = active;
        let conns = &self.conns;
        self.timers.compact(conns.len(), |slot, at| {
            conns.get(slot).is_some_and(|c| c.armed == Some(at))
        });
        result
    }

    async fn flush_active(
        &mut self,
        core: &Core,
        buf: &mut [u8],
        active: &[usize],
    ) -> io::Result<()> {
        for &slot in active {
            while let Some(conn) = self.conns.get_mut(slot) {
                // Paced: this connection's next packet is not due yet.
                let now = Instant::now();
                if conn.pace_at > now {
                    break;
                }
                // Fill a batch of packets to one destination, equal sizes but the last.
                let mut len = 0;
                let mut segment = 0;
                let mut to = None;
                let mut done = false;
                while len + MAX_DATAGRAM <= buf.len() {
                    match conn.quic.send(&mut buf[len..len + MAX_DATAGRAM]) {
                        Ok((n, info)) => {
                            // A GSO batch is one destination and equal sizes, the last
                            // possibly shorter. A packet that cannot join (another
                            // peer, or larger than the batch's size) closes the batch
                            // and starts the next one.
                            let joins =
                                to.is_none_or(|t| t == info.to) && (segment == 0 || n <= segment);
                            if !joins {
                                let dest = to.unwrap_or(info.to);
                                send_all(self.fd, &self.socket, &buf[..len], segment, dest).await?;
                                bump(
                                    &core.stats().h3_datagrams_sent,
                                    len.div_ceil(segment.max(1)) as u64,
                                );
                                bump(&core.stats().bytes_sent, len as u64);
                                buf.copy_within(len..len + n, 0);
                                len = 0;
                                segment = 0;
                            }
                            to = Some(info.to);
                            if segment == 0 {
                                segment = n;
                            }
                            len += n;
                            // Pacing: a packet quiche wants sent later than the
                            // horizon ends the batch (it goes out with it, at most
                            // a horizon early) and holds the connection until then.
                            if info.at > now + PACING_HORIZON {
                                conn.pace_at = info.at;
                                bump(&core.stats().h3_paced, 1);
                                done = true;
                                break;
                            }
                            if n < segment {
                                break; // a short packet ends a GSO batch
                            }
                        }
                        Err(quiche::Error::Done) => {
                            done = true;
                            break;
                        }
                        Err(e) => {
                            tracing::debug!("QUIC send failed: {e}");
                            let _ = conn.quic.close(false, 0x1, b"send failed");
                            done = true;
                            break;
                        }
                    }
                }
                if let (Some(to), true) = (to, len > 0) {
                    tracing::trace!(%to, len, segment, "sending");
                    send_all(self.fd, &self.socket, &buf[..len], segment, to).await?;
                    bump(
                        &core.stats().h3_datagrams_sent,
                        len.div_ceil(segment.max(1)) as u64,
                    );
                    bump(&core.stats().bytes_sent, len as u64);
                }
                if done {
                    break;
                }
            }
        }
        Ok(())
    }
}

/// Sends one GSO batch, waiting for socket room through io_uring if it is full.
async fn send_all(
    fd: i32,
    socket: &monoio::net::udp::UdpSocket,
    buf: &[u8],
    segment: usize,
    to: SocketAddr,
) -> io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    loop {
        match sys::send_udp(fd, buf, segment.max(1), &to) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => socket.writable(false).await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // EIO from GSO on a device that cannot segment: fall back to one by one.
            Err(e) if e.raw_os_error() == Some(libc::EIO) && segment < buf.len() => {
                for piece in buf.chunks(segment) {
                    let _ = sys::send_udp(fd, piece, piece.len(), &to);
                }
                return Ok(());
            }
            Err(e) => {
                tracing::debug!("UDP send to {to} failed: {e}");
                return Ok(());
            }
        }
    }
}

/// The parts of an HTTP/3 request the server acts on.
#[derive(Clone)]
struct H3Request {
    method: http::Method,
    path: [u8; MAX_HEADER_VALUE],
    path_len: usize,
    range: [u8; 128],
    range_len: Option<usize>,
    accept_bao: bool,
    preconditions: http::Preconditions,
}

impl H3Request {
    /// The request view of a head; Err: the message of the 400 that answers it.
    fn from_headers(list: &[quiche::h3::Header]) -> Result<H3Request, &'static str> {
        let mut req = H3Request {
            method: http::Method::Other,
            path: [0u8; MAX_HEADER_VALUE],
            path_len: 0,
            range: [0u8; 128],
            range_len: None,
            accept_bao: false,
            preconditions: http::Preconditions::default(),
        };
        let mut has_path = false;
        for h in list {
            let (name, value) = (h.name(), h.value());
            match name {
                b":method" => {
                    req.method = match value {
                        b"GET" => http::Method::Get,
                        b"HEAD" => http::Method::Head,
                        b"POST" => http::Method::Post,
                        b"PUT" => http::Method::Put,
                        b"DELETE" => http::Method::Delete,
                        b"PATCH" => http::Method::Patch,
                        b"OPTIONS" => http::Method::Options,
                        _ => http::Method::Other,
                    }
                }
                b":path" => {
                    let dst = req
                        .path
                        .get_mut(..value.len())
                        .ok_or("request :path is longer than the server's limit\n")?;
                    dst.copy_from_slice(value);
                    req.path_len = value.len();
                    has_path = true;
                }
                b"range" if value.len() <= req.range.len() => {
                    req.range[..value.len()].copy_from_slice(value);
                    req.range_len = Some(value.len());
                }
                b"accept" => {
                    req.accept_bao |= value
                        .split(|&b| b == b',')
                        .any(|t| t.trim_ascii().starts_with(http::BAO_MEDIA_TYPE.as_bytes()));
                }
                _ => {
                    req.preconditions
                        .push(name, value)
                        .map_err(|_| http::conditional::TooLarge::MESSAGE)?;
                }
            }
        }
        if has_path {
            Ok(req)
        } else {
            Err("request without a usable :path\n")
        }
    }

    fn target(&self) -> (&[u8], &[u8]) {
        let t = &self.path[..self.path_len];
        match t.iter().position(|&b| b == b'?') {
            Some(i) => (&t[..i], &t[i + 1..]),
            None => (t, &t[t.len()..]),
        }
    }

    fn wants_verified(&self) -> bool {
        self.accept_bao
            || self
                .target()
                .1
                .split(|&b| b == b'&')
                .any(|kv| kv == b"format=bao")
    }

    fn range(&self) -> Option<&[u8]> {
        self.range_len.map(|n| &self.range[..n])
    }
}

fn handle_events(
    core: &Core,
    conn: &mut QuicConn,
    commits: &flume::Sender<Committed>,
    _now: Instant,
) {
    loop {
        let Some(h3) = conn.h3.as_mut() else { return };
        match h3.poll(&mut conn.quic) {
            Ok((stream, quiche::h3::Event::Headers { list, more_frames })) => {
                on_request(core, conn, stream, &list, more_frames, commits);
            }
            Ok((stream, quiche::h3::Event::Data)) => on_data(core, conn, stream),
            Ok((stream, quiche::h3::Event::Finished)) => on_finished(core, conn, stream, commits),
            Ok((stream, quiche::h3::Event::Reset(_))) => {
                // The client gave up on the stream: drop its state (and any temp file).
                conn.streams.remove(&stream);
            }
            Ok((_, quiche::h3::Event::PriorityUpdate)) => {}
            Ok((_, quiche::h3::Event::GoAway)) => {}
            Err(quiche::h3::Error::Done) => return,
            Err(e) => {
                tracing::debug!("HTTP/3 error: {e}");
                return;
            }
        }
    }
}

fn on_request(
    core: &Core,
    conn: &mut QuicConn,
    stream: u64,
    list: &[quiche::h3::Header],
    more_frames: bool,
    commits: &flume::Sender<Committed>,
) {
    if conn.drain.as_ref().is_some_and(|d| stream >= d.goaway) {
        // Sent after our GOAWAY: not processed, so the client may retry it.
        const H3_REQUEST_REJECTED: u64 = 0x10b;
        let _ = conn
            .quic
            .stream_shutdown(stream, quiche::Shutdown::Read, H3_REQUEST_REJECTED);
        let _ = conn
            .quic
            .stream_shutdown(stream, quiche::Shutdown::Write, H3_REQUEST_REJECTED);
        return;
    }
    conn.next_request = conn.next_request.max(stream + 4);
    let req = match H3Request::from_headers(list) {
        Ok(req) => req,
        Err(message) => {
            respond_text(
                core,
                conn,
                stream,
                Route::NotFound,
                Status::BadRequest,
                message,
            );
            return;
        }
    };
    let (path, _) = req.target();
    let route = http::route(path);
    let find = |name: &[u8]| list.iter().find(|h| h.name() == name).map(|h| h.value());
    let authority = find(b":authority");
    let head = super::routes::Head {
        method: req.method,
        route,
        auth: super::routes::auth(core, find(b"authorization")),
        peer: super::routes::peer(
            core,
            req.method,
            path,
            find(b"x-tessera-peer"),
            find(b"x-tessera-peer-time"),
            find(b"x-tessera-peer-sig"),
        ),
        service: core.shared.services.find(authority, path),
    };
    let head_only = req.method == http::Method::Head;
    let mut plan = super::routes::plan(core, &head);
    if let Plan::Service(index) = plan {
        plan = match core.shared.services.running.get(index) {
            Some(running) => {
                let headers = super::services::H3Headers(list);
                let (path, query) = req.target();
                let view = service_api::Request {
                    method: req.method,
                    path,
                    query,
                    host: authority,
                    headers: &headers,
                    peer: Some(conn.peer),
                };
                super::services::plan(running, &view)
            }
            None => Plan::Reply(super::Reply::text(Status::NotFound, "no such service\n")),
        };
    }
    match plan {
        Plan::Reply(reply) => send_reply(core, conn, stream, route, reply, head_only, commits),
        Plan::Blob(hash, meta) => {
            get_blob(core, conn, stream, &req, route, hash, meta, Some(commits))
        }
        Plan::Upload => begin_upload(core, conn, stream, more_frames),
        Plan::OffCore(job) => {
            let reply = super::run_job(job);
            run_after(conn, stream, route, commits, head_only, reply, None);
        }
        Plan::Body { what, required, .. } if required && !more_frames => {
            let msg = format!("{what} need a body\n");
            respond_text(core, conn, stream, route, Status::BadRequest, &msg);
        }
        Plan::Body { then, .. } if !more_frames => {
            let reply = super::run_job(move || then(Vec::new()));
            run_after(conn, stream, route, commits, head_only, reply, None);
        }
        Plan::Work(running, owned) => {
            let declared = find(b"content-length")
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse().ok());
            let work = Work {
                running,
                req: *owned,
                request: Box::new(req),
                declared,
                more_frames,
                head_only,
            };
            start_work(core, conn, stream, route, work, commits);
        }
        Plan::Body {
            limit, what, then, ..
        } => {
            conn.streams.insert(
                stream,
                StreamState::SmallBody {
                    body: Vec::new(),
                    limit,
                    too_large: false,
                    route,
                    what,
                    then,
                },
            );
        }
        Plan::Service(_) => {
            let msg = "unresolved service\n";
            respond_text(core, conn, stream, route, Status::InternalServerError, msg);
        }
        Plan::Upgrade(running, owned) => {
            let websocket_connect = req.method == http::Method::Other
                && find(b":method") == Some(b"CONNECT")
                && find(b":protocol") == Some(b"websocket");
            if !websocket_connect {
                let msg = "this route takes a WebSocket: over HTTP/3, an extended CONNECT with :protocol websocket (RFC 9220)\n";
                return respond_text(core, conn, stream, route, Status::BadRequest, msg);
            }
            if find(b"sec-websocket-version") != Some(b"13") {
                let msg = "only WebSocket version 13 is served (sec-websocket-version: 13)\n";
                return respond_text(core, conn, stream, route, Status::BadRequest, msg);
            }
            start_websocket(core, conn, stream, route, running, *owned, commits);
        }
    }
}

/// `POST /blobs`: the body streams into a store writer as it arrives.
fn begin_upload(core: &Core, conn: &mut QuicConn, stream: u64, more_frames: bool) {
    let route = Route::Blobs;
    if !more_frames {
        // An empty upload.
        let store = core.shared.store.clone();
        let result = store
            .begin_put(core.shared.config.max_body_bytes)
            .and_then(|w| w.finish());
        match result {
            Ok(out) => {
                let body =
                    format!("{{\"hash\":\"{}\",\"size\":{}}}\n", out.hash, out.size).into_bytes();
                respond(
                    core,
                    conn,
                    stream,
                    route,
                    Status::Created,
                    "application/json",
                    Body::owned(body),
                    false,
                    &[],
                );
            }
            Err(e) => upload_error(core, conn, stream, e),
        }
        return;
    }
    match core
        .shared
        .store
        .begin_put(core.shared.config.max_body_bytes)
    {
        Ok(w) => {
            conn.streams.insert(
                stream,
                StreamState::Upload {
                    writer: Some(w),
                    failed: None,
                },
            );
        }
        Err(e) => upload_error(core, conn, stream, e),
    }
}

/// Answers the stream with `reply` (work done off the core: a store-I/O job,
/// a service's pool) once it is ready, through the core's commit queue.
fn run_after(
    conn: &mut QuicConn,
    stream: u64,
    route: Route,
    commits: &flume::Sender<Committed>,
    head_only: bool,
    reply: impl std::future::Future<Output = super::Reply> + 'static,
    request: Option<Box<H3Request>>,
) {
    conn.streams.insert(stream, StreamState::Committing);
    let id = conn.quic.source_id().into_owned();
    let commits = commits.clone();
    monoio::spawn(async move {
        let reply = reply.await;
        let _ = commits.send(Committed {
            conn: id,
            stream,
            result: Done::Reply {
                route,
                reply,
                head_only,
                request,
            },
        });
    });
}

/// How a task hands what it did for one stream back to the stream's core;
/// false once the core is gone.
fn reply_to(
    conn: &QuicConn,
    stream: u64,
    commits: &flume::Sender<Committed>,
) -> impl Fn(Done) -> bool + 'static {
    let id = conn.quic.source_id().into_owned();
    let commits = commits.clone();
    move |result| {
        commits
            .send(Committed {
                conn: id.clone(),
                stream,
                result,
            })
            .is_ok()
    }
}

/// A request for a service's pool, as the stream's head gave it.
struct Work {
    running: Arc<service_api::Running>,
    req: service_api::OwnedRequest,
    /// The request as the endpoint parsed it (for a blob reply).
    request: Box<H3Request>,
    /// Its `content-length`, if stated.
    declared: Option<u64>,
    more_frames: bool,
    head_only: bool,
}

/// Queues a request on its service's pool and streams the body to it: the
/// core hands the stream's bytes to a bridge task, which feeds the handler's
/// [`service_api::RequestBody`] (waiting while it reads slowly) and asks for
/// more with [`Done::BodyCredit`]; once the body is in, the bridge waits for
/// the reply and hands it back as [`Done::Reply`].
fn start_work(
    core: &Core,
    conn: &mut QuicConn,
    stream: u64,
    route: Route,
    work: Work,
    commits: &flume::Sender<Committed>,
) {
    let Work {
        running,
        req,
        request,
        declared,
        more_frames,
        head_only,
    } = work;
    let limit = running.service.max_body_bytes();
    let refuse = |conn: &mut QuicConn, reply| {
        send_reply(core, conn, stream, route, reply, false, commits);
        if more_frames {
            let _ = conn
                .quic
                .stream_shutdown(stream, quiche::Shutdown::Read, 0x10c); // H3_REQUEST_CANCELLED
        }
    };
    if declared.is_some_and(|n| n > limit) {
        return refuse(conn, super::services::too_large(limit));
    }
    let (feed, body) = service_api::request_body(if more_frames { declared } else { Some(0) });
    let watch = feed.watch();
    let queued = match super::services::submit(&running, req, body) {
        Ok(queued) => queued,
        Err(busy) => return refuse(conn, busy),
    };
    if !more_frames {
        feed.finish();
        let reply = async move { super::services::answer(&running, queued, &watch).await };
        return run_after(conn, stream, route, commits, head_only, reply, None);
    }
    let (to_bridge, from_core) = flume::bounded::<BodyPiece>(1);
    conn.streams.insert(
        stream,
        StreamState::Work(Box::new(WorkStream {
            to_bridge: Some(to_bridge),
            held: None,
            received: 0,
            limit,
        })),
    );
    let send = reply_to(conn, stream, commits);
    monoio::spawn(async move {
        enum Next {
            Piece(BodyPiece),
            Gone,
            Answered(super::Reply),
        }
        let mut timed_out = false;
        let mut early = None;
        loop {
            let next = monoio::select! {
                piece = from_core.recv_async() => piece.map_or(Next::Gone, Next::Piece),
                // A handler may answer before it has read all of the body.
                reply = queued.early() => Next::Answered(reply),
            };
            let piece = match next {
                Next::Piece(piece) => piece,
                Next::Gone => break,
                Next::Answered(reply) => {
                    early = Some(reply);
                    break;
                }
            };
            match piece {
                BodyPiece::Chunk(chunk) => {
                    match monoio::time::timeout(running.deadline, feed.send(chunk)).await {
                        Ok(Ok(())) => {
                            let _ = send(Done::BodyCredit);
                        }
                        // The handler is done with the body.
                        Ok(Err(_)) => break,
                        Err(_) => {
                            timed_out = true;
                            break;
                        }
                    }
                }
                BodyPiece::End => {
                    feed.finish();
                    break;
                }
                BodyPiece::TooLarge => {
                    feed.too_large();
                    break;
                }
            }
        }
        let reply = match early {
            Some(reply) => reply,
            None if timed_out => super::services::timed_out(&running),
            None => super::services::answer(&running, queued, &watch).await,
        };
        let _ = send(Done::Reply {
            route,
            reply,
            head_only,
            request: Some(request),
        });
    });
}

/// Writes a [`super::Reply`] as HTTP/3.
fn send_reply(
    core: &Core,
    conn: &mut QuicConn,
    stream: u64,
    route: Route,
    reply: super::Reply,
    head_only: bool,
    commits: &flume::Sender<Committed>,
) {
    let super::Reply {
        status,
        headers,
        body,
    } = reply;
    let (body, stream_rx) = match body {
        service_api::Body::Bytes(b) => (b, None),
        service_api::Body::Stream(stream) => (Vec::new(), Some(stream)),
        // Served from `Done::Reply` with its request; anywhere else a bug.
        service_api::Body::Blob(_) => {
            tracing::error!("a blob reply outside a service's handler");
            let msg = "unexpected reply\n";
            return respond_text(core, conn, stream, route, Status::InternalServerError, msg);
        }
    };
    let len = body.len();
    let clen = if super::routes::has_length(status) {
        len.to_string()
    } else {
        String::new()
    };
    // HTTP/3 field names are lower case (RFC 9114 §4.2); length and
    // connection are the transport's.
    let names: Vec<String> = headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect();
    let extra: Vec<(&str, &[u8])> = names
        .iter()
        .zip(&headers)
        .filter(|(n, _)| *n != "content-type" && !super::node_states(n))
        .map(|(n, (_, v))| (n.as_str(), v.as_slice()))
        .collect();
    let content_type = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
        .unwrap_or("");
    if let (Some(rx), false) = (stream_rx, head_only) {
        return start_stream(
            core,
            conn,
            stream,
            route,
            status,
            content_type,
            &extra,
            rx,
            commits,
        );
    }
    let rest = (!head_only && len > 0).then_some((Body::owned(body), 0, len));
    start_response(
        core,
        conn,
        stream,
        route,
        status,
        content_type,
        &clen,
        &extra,
        rest,
    );
}

/// `fetch`: where to report a fetch from peers on a miss (None: do not fetch,
/// e.g. when this is the answer after a fetch).
#[allow(clippy::too_many_arguments)] // the request, its stream and what the blob is
fn get_blob(
    core: &Core,
    conn: &mut QuicConn,
    stream: u64,
    req: &H3Request,
    route: Route,
    hash: BlobHash,
    meta: Option<service_api::BlobReply>,
    fetch: Option<&flume::Sender<Committed>>,
) {
    let opened = match core.open_blob_cached(&hash) {
        Ok(Some(o)) => o,
        Ok(None) => {
            // Not here, redirect mode: send the client to the best node for it
            // (HTTP/3 answers on the same port number there).
            if let Some(location) = fetch.and_then(|_| super::redirect_for(core, &hash, "https")) {
                return respond(
                    core,
                    conn,
                    stream,
                    route,
                    Status::TemporaryRedirect,
                    "text/plain",
                    Body::Empty,
                    false,
                    &[("location", location.as_bytes())],
                );
            }
            // Not here: fetch it from peers off the core, then answer.
            let control = core.shared.hooks.control.clone();
            if let (Some(commits), true, crate::config::OnMiss::Fetch) =
                (fetch, control.fetches(), core.shared.config.on_miss)
            {
                conn.streams.insert(stream, StreamState::Committing);
                let (store, commits) = (core.shared.store.clone(), commits.clone());
                let (id, req) = (conn.quic.source_id().into_owned(), Box::new(req.clone()));
                monoio::spawn(async move {
                    let _ = off_core(move || Ok(control.fetch_missing(&store, &hash.0))).await;
                    let _ = commits.send(Committed {
                        conn: id,
                        stream,
                        result: Done::Fetched { req, hash, meta },
                    });
                });
                return;
            }
            return respond_text(
                core,
                conn,
                stream,
                route,
                Status::NotFound,
                "blob not found\n",
            );
        }
        Err(e) => {
            tracing::error!(%hash, "cannot open blob: {e}");
            return respond_text(
                core,
                conn,
                stream,
                route,
                Status::InternalServerError,
                "cannot read blob\n",
            );
        }
    };
    let (size, cached) = (opened.size, opened.body.clone());
    // A blob under another status (a site's 404 page) is plain bytes, whole.
    let other_status = meta.as_ref().and_then(|m| m.status);
    let verified = req.wants_verified() && other_status.is_none();
    let tag = http::BlobTag::new(&hash, verified);
    let cache_control = meta
        .as_ref()
        .and_then(|m| m.cache_control.as_deref())
        .unwrap_or(http::BLOB_CACHE_CONTROL);
    let common: [(&str, &[u8]); 4] = [
        ("etag", tag.as_bytes()),
        ("cache-control", cache_control.as_bytes()),
        ("vary", b"accept"),
        ("accept-ranges", b"bytes"),
    ];
    // Preconditions, as over HTTP/1.1 (RFC 9110 §13.2.2).
    let validators = http::Validators {
        etag: Some(tag.as_bytes()),
        ..http::Validators::default()
    };
    let outcome = match other_status {
        Some(_) => http::ConditionalOutcome::Proceed { honor_range: false },
        None => req
            .preconditions
            .evaluate(req.method, req.range().is_some(), &validators),
    };
    let honor_range = match outcome {
        http::ConditionalOutcome::Proceed { honor_range } => honor_range,
        http::ConditionalOutcome::NotModified => {
            touch(core, hash);
            return start_response(
                core,
                conn,
                stream,
                route,
                Status::NotModified,
                "",
                "",
                &common,
                None,
            );
        }
        http::ConditionalOutcome::PreconditionFailed => {
            return respond_text(
                core,
                conn,
                stream,
                route,
                Status::PreconditionFailed,
                http::PRECONDITION_FAILED_MESSAGE,
            );
        }
    };
    let range = http::parse_range(req.range().filter(|_| honor_range), size);
    if range == RangeRequest::Unsatisfiable {
        let cr = format!("bytes */{size}");
        return respond(
            core,
            conn,
            stream,
            route,
            Status::RangeNotSatisfiable,
            "text/plain",
            Body::owned(b"range outside the blob\n".to_vec()),
            false,
            &[("content-range", cr.as_bytes())],
        );
    }
    touch(core, hash);
    let head_only = req.method == http::Method::Head;
    if verified {
        let ranges = match range {
            RangeRequest::Partial { first, last } => verified::group_ranges(first, last),
            _ => verified::all_ranges(),
        };
        if head_only {
            // The length is all a HEAD needs: nothing is read, hashed or encoded.
            let clen = verified::encoded_len(size, &ranges).to_string();
            return start_response(
                core,
                conn,
                stream,
                route,
                Status::Ok,
                http::BAO_MEDIA_TYPE,
                &clen,
                &common,
                None,
            );
        }
        // The kept copy: mapped whole, or a range's pieces copied out of it
        // (asks for a copy are counted for whole streams only, as over HTTP/1.1).
        let whole = !matches!(range, RangeRequest::Partial { .. });
        let len = verified::encoded_len(size, &verified::all_ranges());
        let kept = match (whole, size >= KEEP_STREAM_MIN_BYTES) {
            (_, false) => None,
            (true, true) => kept_stream(core, &hash, len),
            (false, true) if core.shared.store.keeps_streams() => open_kept(core, &hash, len),
            (false, true) => None,
        };
        // SAFETY: a kept stream is written to tmp/, renamed in whole and never
        // modified in place (removing it leaves this mapping valid).
        let mapped = kept.and_then(|k| unsafe { memmap2::Mmap::map(k.as_raw_fd()) }.ok());
        if mapped.is_some() {
            bump(&core.stats().kept_stream_responses, 1);
        }
        let body = match mapped {
            Some(m) if whole => Body::Mapped(Rc::new(m)),
            Some(m) => {
                let mut pieces = Vec::new();
                verified::pieces_in_whole(size, &ranges, &mut pieces);
                let mut out = Vec::with_capacity(verified::encoded_len(size, &ranges) as usize);
                for (at, n) in pieces {
                    out.extend_from_slice(&m[at as usize..(at + n) as usize]);
                }
                Body::owned(out)
            }
            None => match encode_verified(core, &opened.fd, size, &hash, &ranges) {
                Ok(v) => Body::owned(v),
                Err(e) => {
                    bump(&core.stats().corrupt_detected, 1);
                    tracing::error!(%hash, "stored blob failed verification: {e}; moving it to quarantine/");
                    // As over HTTP/1.1: take it out of service for every route.
                    let store = core.shared.store.clone();
                    monoio::spawn(async move {
                        if let Err(e) = off_core(move || store.quarantine(&hash)).await {
                            tracing::error!(%hash, "cannot quarantine corrupt blob: {e}");
                        }
                    });
                    return respond_text(
                        core,
                        conn,
                        stream,
                        route,
                        Status::InternalServerError,
                        "stored blob failed verification\n",
                    );
                }
            },
        };
        return respond(
            core,
            conn,
            stream,
            route,
            Status::Ok,
            http::BAO_MEDIA_TYPE,
            body,
            false,
            &common,
        );
    }
    let (status, first, len) = match range {
        RangeRequest::Partial { first, last } => (Status::PartialContent, first, last - first + 1),
        _ => (other_status.unwrap_or(Status::Ok), 0, size),
    };
    let body = if len == 0 || head_only {
        Body::Empty
    } else if let Some(bytes) = cached {
        Body::Cached(bytes)
    } else {
        match opened.mapping() {
            Ok(m) => Body::Mapped(m),
            Err(e) => {
                tracing::error!(%hash, "cannot map blob: {e}");
                return respond_text(
                    core,
                    conn,
                    stream,
                    route,
                    Status::InternalServerError,
                    "cannot read blob\n",
                );
            }
        }
    };
    let cr = format!("bytes {}-{}/{size}", first, first + len.max(1) - 1);
    let mut headers: Vec<(&str, &[u8])> = common.to_vec();
    if status == Status::PartialContent {
        headers.push(("content-range", cr.as_bytes()));
    }
    let extra = meta
        .as_ref()
        .and_then(|m| m.headers.as_deref())
        .unwrap_or(&[]);
    headers.extend(
        extra
            .iter()
            .filter(|(n, _)| !super::node_states(n))
            .map(|(n, v)| (n.as_str(), v.as_bytes())),
    );
    let age = meta
        .as_ref()
        .and_then(|m| m.stored_at)
        .map(|at| crate::store::now_secs().saturating_sub(at).to_string());
    if let Some(age) = &age {
        headers.push(("age", age.as_bytes()));
    }
    let clen = len.to_string();
    let rest = (!head_only && len > 0).then_some((body, first as usize, (first + len) as usize));
    let content_type = meta
        .as_ref()
        .map_or("application/octet-stream", |m| &*m.content_type);
    start_response(
        core,
        conn,
        stream,
        route,
        status,
        content_type,
        &clen,
        &headers,
        rest,
    );
}

/// The verified stream for `ranges`, checked group by group against the hash.
fn encode_verified(
    core: &Core,
    data: &OwnedFd,
    size: u64,
    hash: &BlobHash,
    ranges: &bao_tree::ChunkRanges,
) -> Result<Vec<u8>, verified::VerifyError> {
    let outboard = match sys::open_at(core.shared.store.blobs_dir_fd(), hash, b".obao")? {
        Some((fd, _)) => fd,
        None => return Err(io::Error::from(io::ErrorKind::NotFound).into()),
    };
    let read = |fd: &OwnedFd, buf: &mut [u8], at: u64| sys::read_exact_at(fd.as_raw_fd(), buf, at);
    let mut stored = verified::Stored {
        outboard: |buf: &mut [u8], at| read(&outboard, buf, at),
        data: |buf: &mut [u8], at| read(data, buf, at),
    };
    verified::encode_validated(hash.as_blake3(), size, ranges, &mut stored)
}

fn on_data(core: &Core, conn: &mut QuicConn, stream: u64) {
    if let (Some(StreamState::Work(w)), Some(h3)) =
        (conn.streams.get_mut(&stream), conn.h3.as_mut())
    {
        let n = w.pump(&mut conn.quic, h3, stream);
        bump(&core.stats().bytes_received, n);
        return;
    }
    let mut buf = [0u8; 16384];
    loop {
        let Some(h3) = conn.h3.as_mut() else { return };
        let n = match h3.recv_body(&mut conn.quic, stream, &mut buf) {
            Ok(n) => n,
            Err(_) => return,
        };
        bump(&core.stats().bytes_received, n as u64);
        if let Some(StreamState::WebSocket(ws)) = conn.streams.get_mut(&stream) {
            ws.inbuf.extend_from_slice(&buf[..n]);
            ws.pump();
            continue;
        }
        if let Some(StreamState::SmallBody {
            body,
            limit,
            too_large,
            ..
        }) = conn.streams.get_mut(&stream)
        {
            if (body.len() + n) as u64 > *limit {
                *too_large = true;
            } else {
                body.extend_from_slice(&buf[..n]);
            }
            continue;
        }
        if let Some(StreamState::Upload {
            writer: Some(w),
            failed,
        }) = conn.streams.get_mut(&stream)
        {
            if failed.is_none() {
                if let Err(e) = w.write(&buf[..n]) {
                    *failed = Some(e);
                }
            }
        }
    }
}

fn on_finished(core: &Core, conn: &mut QuicConn, stream: u64, commits: &flume::Sender<Committed>) {
    if let (Some(StreamState::Work(w)), Some(h3)) =
        (conn.streams.get_mut(&stream), conn.h3.as_mut())
    {
        // Hands the end on (or keeps it until the bridge has room).
        let n = w.pump(&mut conn.quic, h3, stream);
        bump(&core.stats().bytes_received, n);
        return;
    }
    if let Some(StreamState::WebSocket(ws)) = conn.streams.get_mut(&stream) {
        // The client's side of the stream ended: nothing more for the service,
        // whose handler then returns, which closes ours.
        ws.pump();
        ws.to_service = None;
        return;
    }
    if let Some(StreamState::SmallBody { .. }) = conn.streams.get(&stream) {
        let Some(StreamState::SmallBody {
            body,
            limit,
            too_large,
            route,
            what,
            then,
        }) = conn.streams.remove(&stream)
        else {
            return;
        };
        if too_large {
            let msg = format!("{what} body too large (at most {limit} bytes)\n");
            return respond_text(core, conn, stream, route, Status::PayloadTooLarge, &msg);
        }
        let reply = super::run_job(move || then(body));
        return run_after(conn, stream, route, commits, false, reply, None);
    }
    let Some(StreamState::Upload { writer, failed }) = conn.streams.get_mut(&stream) else {
        return;
    };
    if let Some(e) = failed.take() {
        conn.streams.remove(&stream);
        return upload_error(core, conn, stream, e);
    }
    let Some(writer) = writer.take() else { return };
    conn.streams.insert(stream, StreamState::Committing);
    let id = conn.quic.source_id().into_owned();
    let commits = commits.clone();
    // The commit fsyncs: run it off the core and answer when it is done.
    monoio::spawn(async move {
        let result = off_core(move || writer.finish()).await;
        let _ = commits.send(Committed {
            conn: id,
            stream,
            result: Done::Upload(result),
        });
    });
}

fn upload_error(core: &Core, conn: &mut QuicConn, stream: u64, e: StoreError) {
    let (status, msg) = upload_refusal(&e);
    respond_text(core, conn, stream, Route::Blobs, status, msg);
    // Stop the client sending the rest of a body we will not store.
    let _ = conn
        .quic
        .stream_shutdown(stream, quiche::Shutdown::Read, 0x10c); // H3_REQUEST_CANCELLED
}

fn respond_text(
    core: &Core,
    conn: &mut QuicConn,
    stream: u64,
    route: Route,
    status: Status,
    text: &str,
) {
    respond(
        core,
        conn,
        stream,
        route,
        status,
        "text/plain",
        Body::owned(text.as_bytes().to_vec()),
        false,
        &[],
    );
}

#[allow(clippy::too_many_arguments)] // a response is these things; a struct would only rename them
fn respond(
    core: &Core,
    conn: &mut QuicConn,
    stream: u64,
    route: Route,
    status: Status,
    content_type: &str,
    body: Body,
    head_only: bool,
    extra: &[(&str, &[u8])],
) {
    let len = body.bytes().len();
    let clen = len.to_string();
    let rest = (!head_only && len > 0).then_some((body, 0, len));
    start_response(
        core,
        conn,
        stream,
        route,
        status,
        content_type,
        &clen,
        extra,
        rest,
    );
}

#[allow(clippy::too_many_arguments)] // as above
fn start_response(
    core: &Core,
    conn: &mut QuicConn,
    stream: u64,
    route: Route,
    status: Status,
    content_type: &str,
    content_length: &str,
    extra: &[(&str, &[u8])],
    body: Option<(Body, usize, usize)>,
) {
    core.stats()
        .count_request(route.label_index(), status.index());
    bump(&core.stats().h3_requests, 1);
    let code = status.code();
    let code = [
        b'0' + (code / 100) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ];
    let fin = body.is_none();
    // Usually the head goes out at once: borrowed headers, nothing allocated.
    // Only a head that must wait for stream credit is copied into the stream's
    // state.
    const MAX_HEADERS: usize = 16;
    let mut refs: [quiche::h3::HeaderRef<'_>; MAX_HEADERS] =
        std::array::from_fn(|_| quiche::h3::HeaderRef::new(b"", b""));
    let date = core.date.get().1;
    refs[0] = quiche::h3::HeaderRef::new(b":status", &code);
    refs[1] = quiche::h3::HeaderRef::new(b"date", &date);
    let mut n = 2;
    // A 304 states neither (RFC 9110 §15.4.5): both come empty.
    for (name, value) in [
        ("content-type", content_type),
        ("content-length", content_length),
    ] {
        if !value.is_empty() {
            refs[n] = quiche::h3::HeaderRef::new(name.as_bytes(), value.as_bytes());
            n += 1;
        }
    }
    let next = body.map(|(body, offset, end)| StreamState::Sending { body, offset, end });
    if n + extra.len() > MAX_HEADERS {
        // More headers than the array holds (a site's own, say): all of them
        // still go, in a list made for this head.
        let mut all = refs[..n].to_vec();
        all.extend(
            extra
                .iter()
                .map(|(name, value)| quiche::h3::HeaderRef::new(name.as_bytes(), value)),
        );
        return send_head(core, conn, stream, &all, fin, next);
    }
    for (name, value) in extra {
        refs[n] = quiche::h3::HeaderRef::new(name.as_bytes(), value);
        n += 1;
    }
    send_head(core, conn, stream, &refs[..n], fin, next);
}

/// Sends a response head, then goes on with `next` (a body); a head that finds
/// no stream capacity waits in the stream's state.
fn send_head(
    core: &Core,
    conn: &mut QuicConn,
    stream: u64,
    refs: &[quiche::h3::HeaderRef<'_>],
    fin: bool,
    next: Option<StreamState>,
) {
    let Some(h3) = conn.h3.as_mut() else { return };
    let mut state = match h3.send_response(&mut conn.quic, stream, refs, fin) {
        Ok(()) => match next {
            Some(next) => next,
            None => return,
        },
        Err(quiche::h3::Error::StreamBlocked) | Err(quiche::h3::Error::Done) => {
            let headers = refs
                .iter()
                .map(|h| quiche::h3::Header::new(h.name(), h.value()))
                .collect();
            StreamState::HeadBlocked {
                headers,
                fin,
                next: next.map(Box::new),
            }
        }
        Err(e) => {
            tracing::debug!("cannot send response head: {e}");
            return;
        }
    };
    if advance_stream(core, &mut conn.quic, h3, stream, &mut state) {
        conn.streams.insert(stream, state);
    }
}

/// Starts a response whose body is produced off the core. A bridge task on
/// this core takes one chunk at a time from the producer and hands it to the
/// endpoint (through the commit queue, which wakes its loop); it takes the next
/// only when the stream has accepted the last, so a slow client slows the
/// producer. A producer silent for longer than the idle timeout is aborted.
#[allow(clippy::too_many_arguments)] // a response head, its stream and its source
fn start_stream(
    core: &Core,
    conn: &mut QuicConn,
    stream: u64,
    route: Route,
    status: Status,
    content_type: &str,
    extra: &[(&str, &[u8])],
    rx: service_api::BodyStream,
    commits: &flume::Sender<Committed>,
) {
    core.stats()
        .count_request(route.label_index(), status.index());
    bump(&core.stats().h3_requests, 1);
    let code = status.code().to_string();
    let date = core.date.get().1;
    let mut refs = vec![
        quiche::h3::HeaderRef::new(b":status", code.as_bytes()),
        quiche::h3::HeaderRef::new(b"date", &date),
    ];
    if !content_type.is_empty() {
        refs.push(quiche::h3::HeaderRef::new(
            b"content-type",
            content_type.as_bytes(),
        ));
    }
    for (name, value) in extra {
        refs.push(quiche::h3::HeaderRef::new(name.as_bytes(), value));
    }
    let (credit, credit_rx) = flume::bounded::<()>(1);
    let state = StreamState::Streaming {
        chunk: Body::Empty,
        offset: 0,
        ended: false,
        credit,
    };
    send_head(core, conn, stream, &refs, false, Some(state));
    let send = reply_to(conn, stream, commits);
    let stall = Duration::from_millis(core.shared.config.idle_timeout_ms);
    monoio::spawn(async move {
        loop {
            match monoio::time::timeout(stall, rx.chunks().recv_async()).await {
                Ok(Ok(chunk)) if chunk.is_empty() => continue,
                Ok(Ok(chunk)) => {
                    // The stream gone (reset, closed): drop the producer's end.
                    if !send(Done::Chunk(chunk)) || credit_rx.recv_async().await.is_err() {
                        return;
                    }
                }
                Ok(Err(_)) => {
                    send(if rx.is_complete() {
                        Done::StreamEnd
                    } else {
                        Done::StreamAbort
                    });
                    return;
                }
                Err(_) => {
                    send(Done::StreamAbort);
                    return;
                }
            }
        }
    });
}

/// A WebSocket over an extended CONNECT stream: the service's `socket()` on its
/// pool, a 200 head, then frames both ways. A bridge task takes the service's
/// messages one at a time and hands them to the endpoint through the commit
/// queue, the next once the last is in quiche's buffers.
fn start_websocket(
    core: &Core,
    conn: &mut QuicConn,
    stream: u64,
    route: Route,
    running: std::sync::Arc<service_api::Running>,
    req: service_api::OwnedRequest,
    commits: &flume::Sender<Committed>,
) {
    let Ok(ends) = super::services::start_socket(&running, req) else {
        return send_reply(
            core,
            conn,
            stream,
            route,
            super::services::busy(),
            false,
            commits,
        );
    };
    let super::services::SocketEnds {
        to_service: in_tx,
        from_service: out_rx,
        max_message,
    } = ends;
    core.stats()
        .count_request(route.label_index(), Status::Ok.index());
    bump(&core.stats().h3_requests, 1);
    let (credit, credit_rx) = flume::bounded::<()>(1);
    let state = StreamState::WebSocket(Box::new(WebSocketStream {
        decoder: crate::websocket::Decoder::new(max_message),
        inbuf: Vec::new(),
        to_service: Some(in_tx),
        held: None,
        out: Vec::new(),
        out_offset: 0,
        credit,
        closing: false,
    }));
    let date = core.date.get().1;
    let head = [
        quiche::h3::HeaderRef::new(b":status", b"200"),
        quiche::h3::HeaderRef::new(b"date", &date),
    ];
    send_head(core, conn, stream, &head, false, Some(state));
    let id = conn.quic.source_id().into_owned();
    let commits = commits.clone();
    monoio::spawn(async move {
        loop {
            let message = out_rx.recv_async().await.ok();
            let end = message.is_none();
            let sent = commits.send(Committed {
                conn: id.clone(),
                stream,
                result: Done::SocketOut(message),
            });
            if end || sent.is_err() || credit_rx.recv_async().await.is_err() {
                return;
            }
        }
    });
}

/// Pushes what every stream has pending (heads that were blocked, body bytes) as far
/// as flow control allows, and forgets streams that are done.
fn send_bodies(core: &Core, conn: &mut QuicConn) {
    let QuicConn {
        quic, h3, streams, ..
    } = conn;
    let Some(h3) = h3.as_mut() else { return };
    streams.retain(|&id, state| advance_stream(core, quic, h3, id, state));
}

/// Sends what one stream has pending. Returns false once the stream is finished
/// (or failed) and its state can go.
fn advance_stream(
    core: &Core,
    quic: &mut Quic,
    h3: &mut quiche::h3::Connection,
    id: u64,
    state: &mut StreamState,
) -> bool {
    if let StreamState::HeadBlocked { headers, fin, next } = state {
        match h3.send_response(quic, id, headers, *fin) {
            Ok(()) => match next.take() {
                Some(next) => *state = *next,
                None => return false,
            },
            // No room on the stream yet: try again when the peer grants some.
            Err(quiche::h3::Error::StreamBlocked) | Err(quiche::h3::Error::Done) => return true,
            Err(e) => {
                tracing::debug!("cannot send response head: {e}");
                return false;
            }
        }
    }
    if let StreamState::WebSocket(ws) = state {
        // Messages the service's queue could not take before.
        ws.pump();
        while ws.out_offset < ws.out.len() {
            match h3.send_body(quic, id, &ws.out[ws.out_offset..], false) {
                Ok(0) | Err(quiche::h3::Error::Done) => return true,
                Ok(n) => ws.out_offset += n,
                Err(e) => {
                    tracing::debug!("stream {id} WebSocket send failed: {e}");
                    return false;
                }
            }
        }
        if !ws.out.is_empty() {
            ws.out.clear();
            ws.out_offset = 0;
            let _ = ws.credit.try_send(());
        }
        if !ws.closing {
            return true;
        }
        return matches!(
            h3.send_body(quic, id, &[], true),
            Err(quiche::h3::Error::Done)
        );
    }
    if let StreamState::Streaming {
        chunk,
        offset,
        ended,
        credit,
    } = state
    {
        let len = chunk.bytes().len();
        while *offset < len {
            // Zero-copy, as for stored bodies: quiche holds the chunk until acked.
            let mut rest = BodyBuf::new(chunk, *offset, len);
            match h3.send_body_zc(quic, id, &mut rest, false) {
                Ok(0) | Err(quiche::h3::Error::Done) => return true,
                Ok(n) => *offset += n,
                Err(e) => {
                    tracing::debug!("stream {id} body send failed: {e}");
                    return false;
                }
            }
        }
        if len > 0 {
            // All of it is in quiche's buffers: the bridge may fetch the next.
            *chunk = Body::Empty;
            *offset = 0;
            let _ = credit.try_send(());
        }
        if !*ended {
            return true;
        }
        // The last, empty DATA frame with FIN; Done: no room yet, try again.
        return matches!(
            h3.send_body(quic, id, &[], true),
            Err(quiche::h3::Error::Done)
        );
    }
    let StreamState::Sending { body, offset, end } = state else {
        return true;
    };
    while *offset < *end {
        // Zero-copy: quiche keeps a counted reference to the range it takes.
        let mut rest = BodyBuf::new(body, *offset, *end);
        match h3.send_body_zc(quic, id, &mut rest, true) {
            Ok(0) | Err(quiche::h3::Error::Done) => return true,
            Ok(n) => {
                *offset += n;
                if let Body::Mapped(_) = body {
                    bump(&core.stats().h3_body_bytes_from_mmap, n as u64);
                }
            }
            Err(e) => {
                tracing::debug!("stream {id} body send failed: {e}");
                return false;
            }
        }
    }
    false
}

/// Runs an HTTP/3 request head, as decoded by QPACK, through everything the server
/// does with it before touching the store: header extraction, routing, ranges, the
/// verified-stream switch. Fuzz input is `name\0value\0name\0value...`. The fuzz
/// target `h3_request` calls this; so does a test with random input.
pub fn exercise(data: &[u8]) {
    let mut parts = data.split(|&b| b == 0);
    let mut headers = Vec::new();
    while let (Some(n), Some(v)) = (parts.next(), parts.next()) {
        headers.push(quiche::h3::Header::new(n, v));
    }
    if let Ok(req) = H3Request::from_headers(&headers) {
        let (path, _) = req.target();
        let _ = http::route(path);
        let _ = req.wants_verified();
        for size in [0, 1, 16384, u64::MAX] {
            if let RangeRequest::Partial { first, last } = http::parse_range(req.range(), size) {
                assert!(first <= last && last < size, "range outside the blob");
            }
        }
        let tag = http::BlobTag::new(&BlobHash([7; 32]), req.wants_verified());
        let v = http::Validators {
            etag: Some(tag.as_bytes()),
            ..http::Validators::default()
        };
        let _ = req
            .preconditions
            .evaluate(req.method, req.range().is_some(), &v);
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn random_request_heads_never_panic() {
        let seed: &[u8] = b":method\0GET\0:path\0/blobs/0000000000000000000000000000000000000000000000000000000000000000?format=bao\0range\0bytes=5-9\0accept\0application/x-bao\0if-none-match\0\"a\", W/\"b\"\0if-range\0\"c\"";
        crate::mutate::each_mutation(&[seed], 20_000, 5, 3, super::exercise);
        // A path longer than we keep is refused, not truncated.
        let long = [b":path\0/".as_slice(), &[b'a'; 5000]].concat();
        super::exercise(&long);
    }

    /// The timer heap against a plain model: every connection is found due
    /// exactly when its latest deadline passes (never later), stale entries are
    /// skipped, and compaction keeps the heap within a few entries per
    /// connection however often deadlines move.
    #[test]
    fn deadlines_fire_each_connection_by_its_latest_deadline() {
        use super::Deadlines;
        use rand::{Rng, SeedableRng};
        use std::time::{Duration, Instant};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let start = Instant::now();
        let ms = |n: u64| start + Duration::from_millis(n);
        const N: usize = 50;
        let mut timers = Deadlines::default();
        // What each connection wants (the model) and its pending entry.
        let mut want: Vec<Option<Instant>> = vec![None; N];
        let mut armed: Vec<Option<Instant>> = vec![None; N];
        let mut now = 0u64;
        let mut fired = 0;
        for _ in 0..20_000 {
            // Some connections get a new deadline, earlier or later than before.
            for _ in 0..rng.random_range(0..4) {
                let slot = rng.random_range(0..N);
                let at = ms(now + rng.random_range(1..200));
                want[slot] = Some(at);
                timers.arm(slot, at, &mut armed[slot]);
            }
            now += rng.random_range(0..20);
            // Due entries: a live one is serviced and armed again for what the
            // connection still wants (as the endpoint does).
            let mut due = [false; N];
            while let Some((at, slot)) = timers.pop_due(ms(now)) {
                if armed[slot] == Some(at) {
                    armed[slot] = None;
                    due[slot] = true;
                }
            }
            for slot in 0..N {
                let reached = want[slot].is_some_and(|w| w <= ms(now));
                // A connection whose deadline passed is serviced now (it may
                // also be serviced early, for a deadline that moved later).
                assert!(!reached || due[slot], "slot {slot} missed its deadline");
                if due[slot] {
                    fired += 1;
                    if reached {
                        want[slot] = None;
                    } else if let Some(w) = want[slot] {
                        timers.arm(slot, w, &mut armed[slot]);
                    }
                }
            }
            timers.compact(N, |slot, at| armed[slot] == Some(at));
            assert!(timers.len() <= 2 * N + 64 + 4, "{} entries", timers.len());
        }
        assert!(fired > 1000, "only {fired} fired");
    }

    #[test]
    fn a_packets_dcid_is_read_in_place() {
        use super::{packet_dcid, CID_LEN};
        let mut short = vec![0x40u8];
        short.extend((1..=CID_LEN as u8).collect::<Vec<_>>());
        short.extend([0xaa; 30]);
        assert_eq!(packet_dcid(&short), Some(&short[1..1 + CID_LEN]));
        // Long header: first byte, version (4), DCID length, DCID, ...
        let mut long = vec![0xc0, 0, 0, 0, 1, 8];
        long.extend([9u8; 8]);
        long.extend([0u8; 20]);
        assert_eq!(packet_dcid(&long), Some(&[9u8; 8][..]));
        // Truncated packets have none (and do not panic).
        assert_eq!(packet_dcid(&short[..5]), None);
        assert_eq!(packet_dcid(&long[..9]), None);
        assert_eq!(packet_dcid(&[]), None);
        let mut huge = long.clone();
        huge[5] = 255;
        assert_eq!(packet_dcid(&huge), None);
    }
}
