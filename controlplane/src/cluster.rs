//! Gossip membership and failure detection: SWIM by [foca] (sans-IO), driven by
//! one control-plane thread, carried on the node's own UDP port.
//!
//! Transport: every datagram is an envelope signed by its sender,
//! `kind (1 byte, < 0x40) || sender id (32) || body || ed25519 signature (64)` over
//! `"tessera-gossip-v1" || kind || sender || body`. A first byte below 0x40 is
//! never QUIC (QUIC v1 sets the fixed bit), so the data plane hands these
//! datagrams from the node's UDP port to this thread; operators configure one
//! port. Sends go out from an ephemeral socket of this thread to the peer's
//! client-facing address.
//!
//! Trust: an envelope whose signature fails, or whose foca header names a sender
//! other than the signer, is dropped (counted, logged at debug). Node records
//! (addresses, region, capacity) travel as foca custom broadcasts and are
//! accepted only with a valid signature by the node they describe; the member
//! list shows a member as `verified` only when its foca identity (id, address)
//! matches its own signed record. What SWIM itself still allows a malicious
//! member: gossiping false suspicions (the target refutes them), and naming
//! identities that do not exist (shown unverified, never used for routing).
//!
//! RTT: every probe period each active member gets a signed ping carrying our
//! Vivaldi coordinate; the pong carries the responder's. The round trip feeds
//! an exponential moving average (`rtt_ms`) and moves our coordinate
//! ([`crate::vivaldi`]); `est_rtt_ms` is the distance to a member's last heard
//! coordinate, so RTT to a member can be estimated before it is measured.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::num::NonZeroU32;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use foca::{Foca, Identity, OwnedNotification, PostcardCodec, Timer};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::identity::{NodeId, NodeKey};
use crate::record::NodeRecord;
use crate::vivaldi::Coord;

const DOMAIN: &[u8] = b"tessera-gossip-v1";
const KIND_FOCA: u8 = 0x01;
const KIND_PING: u8 = 0x02;
const KIND_PONG: u8 = 0x03;
/// Largest datagram this layer sends or accepts.
pub const MAX_DATAGRAM: usize = 1400;
const ENVELOPE_OVERHEAD: usize = 1 + 32 + 64;
/// How often the member list the data plane reads is rebuilt.
const PUBLISH_EVERY: Duration = Duration::from_millis(50);
/// How often a node re-signs and re-broadcasts its record.
const RECORD_EVERY: Duration = Duration::from_secs(10);

/// A member as foca sees it: who, where (client-facing address), and a bump
/// that makes a restarted node a newer identity than the one declared down.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Peer {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub bump: u16,
}

impl Identity for Peer {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Peer {
            bump: self.bump.wrapping_add(1),
            ..*self
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        // Newer bump wins (wrapping); a same-address identity of another node
        // never displaces one whose record we hold (checked by `verified`).
        (self.bump.wrapping_sub(adversary.bump) as i16) > 0
    }
}

#[derive(Clone)]
pub struct ClusterConfig {
    /// The node's client-facing address (what `--join` takes).
    pub addr: SocketAddr,
    pub join: Vec<SocketAddr>,
    pub region: String,
    pub capacity_bytes: u64,
    /// A member that stops answering is suspected, then declared down this long
    /// after (the failure-detection bound is about probe_period + this).
    pub down_after: Duration,
    pub probe_period: Duration,
    /// Receive gossip on our own socket bound to `addr` (when HTTP/3 is off and
    /// the data plane does not own the UDP port).
    pub own_socket: bool,
    /// Where the restart counter lives (`gossip.bump`); None: derived from time.
    pub data_dir: Option<std::path::PathBuf>,
    /// This node's load in thousandths (store fullness), published in its record.
    pub load: Option<Arc<dyn Fn() -> u16 + Send + Sync>>,
}

/// Each start is a newer identity than the last, so a restarted node wins over
/// the identity the cluster may still hold as down: a counter in the data dir.
fn next_bump(data_dir: Option<&std::path::Path>) -> u16 {
    let fallback = (now_ms() / 1000) as u16;
    let Some(dir) = data_dir else { return fallback };
    let path = dir.join("gossip.bump");
    let last = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse::<u16>().ok());
    let next = last.map_or(fallback, |b| b.wrapping_add(1));
    let tmp = dir.join("gossip.bump.tmp");
    if std::fs::write(&tmp, next.to_string())
        .and_then(|_| std::fs::rename(&tmp, &path))
        .is_err()
    {
        tracing::warn!(
            "cannot record the gossip restart counter in {}",
            dir.display()
        );
    }
    next
}

/// What `tessera cluster members` shows for one member.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberInfo {
    pub id: String,
    pub addr: SocketAddr,
    pub region: String,
    /// `alive`, `suspect` or `down`.
    pub state: String,
    pub rtt_ms: Option<f64>,
    /// Round trip predicted by Vivaldi coordinates (ms), for ranking members
    /// not measured directly yet.
    #[serde(default)]
    pub est_rtt_ms: Option<f64>,
    /// Its identity matches a record it signed.
    pub verified: bool,
    /// Transfers from it that failed verification (bad chunk groups).
    #[serde(default)]
    pub bad_transfers: u64,
    /// Verified bytes this node fetched from it, and in how many transfers.
    #[serde(default)]
    pub served_bytes: u64,
    #[serde(default)]
    pub served_transfers: u64,
    /// Transfers it was asked for (it held the blob) and did not deliver: no
    /// answer, an error, or a stream cut short (bad data counts above).
    #[serde(default)]
    pub failed_transfers: u64,
    /// Its load in thousandths of capacity, from its signed record.
    #[serde(default)]
    pub load_permille: Option<u16>,
    /// This entry is the node answering.
    #[serde(rename = "self")]
    pub is_self: bool,
}

#[derive(Default)]
struct View {
    members: Vec<MemberInfo>,
    dropped: u64,
    /// Bad transfers per node id (hex), kept across view rebuilds.
    bad: HashMap<String, u64>,
    /// (verified bytes served, transfers served, failed transfers) per node id.
    served: HashMap<String, (u64, u64, u64)>,
}

/// Renders `GET /route/{hash}` given whether the answering node holds the blob.
pub type RouteFn = dyn Fn(&[u8; 32], bool) -> String + Send + Sync;

/// The running control plane's membership.
pub struct Cluster {
    inbox: flume::Sender<(Vec<u8>, SocketAddr)>,
    view: Arc<Mutex<View>>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    key: NodeKey,
}

/// Checks a signed node-to-node request: (node id hex, time, signature hex,
/// signed message).
pub type VerifyPeerFn = dyn Fn(&[u8], &[u8], &[u8], &[u8]) -> bool + Send + Sync;

/// The best other node for a blob (redirect mode).
pub type LocateFn = dyn Fn(&[u8; 32]) -> Option<SocketAddr> + Send + Sync;

/// How far a signed request's time may be from ours.
const PEER_CLOCK_SKEW_MS: u64 = 60_000;

impl Cluster {
    pub fn start(key: NodeKey, cfg: ClusterConfig) -> std::io::Result<Cluster> {
        let (tx, rx) = flume::bounded::<(Vec<u8>, SocketAddr)>(4096);
        let bind: SocketAddr = if cfg.addr.is_ipv4() {
            SocketAddr::new(cfg.addr.ip(), 0)
        } else {
            "[::]:0".parse().map_err(std::io::Error::other)?
        };
        let socket = UdpSocket::bind(bind)?;
        if cfg.own_socket {
            let own = UdpSocket::bind(cfg.addr)?;
            let tx = tx.clone();
            std::thread::Builder::new()
                .name("tessera-gossip-rx".into())
                .spawn(move || {
                    let mut buf = [0u8; MAX_DATAGRAM + 1];
                    while let Ok((n, from)) = own.recv_from(&mut buf) {
                        if n > 0 && buf[0] < 0x40 && tx.send((buf[..n].to_vec(), from)).is_err() {
                            return;
                        }
                    }
                })?;
        }
        let view = Arc::new(Mutex::new(View::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let signer = key.clone();
        let thread = {
            let (view, stop) = (view.clone(), stop.clone());
            std::thread::Builder::new()
                .name("tessera-control".into())
                .spawn(move || run(key, cfg, socket, rx, view, stop))?
        };
        Ok(Cluster {
            inbox: tx,
            view,
            stop,
            thread: Mutex::new(Some(thread)),
            key: signer,
        })
    }

    /// Where the data plane puts gossip datagrams from the node's UDP port.
    pub fn inbox(&self) -> flume::Sender<(Vec<u8>, SocketAddr)> {
        self.inbox.clone()
    }

    pub fn members(&self) -> Vec<MemberInfo> {
        self.view
            .lock()
            .map(|v| v.members.clone())
            .unwrap_or_default()
    }

    /// A renderer for the data plane's `GET /cluster/members`.
    pub fn members_renderer(&self) -> Arc<dyn Fn() -> String + Send + Sync> {
        let view = self.view.clone();
        Arc::new(move || {
            let members = view.lock().map(|v| v.members.clone()).unwrap_or_default();
            serde_json::to_string(&members).unwrap_or_else(|_| "[]".into())
        })
    }

    /// A renderer for the data plane's `GET /route/{hash}`: the blob's home
    /// nodes (rendezvous over live verified members) ranked for the caller.
    pub fn route_renderer(&self, replication: usize) -> Arc<RouteFn> {
        let view = self.view.clone();
        Arc::new(move |blob: &[u8; 32], holds: bool| {
            let members = view.lock().map(|v| v.members.clone()).unwrap_or_default();
            let ranked = crate::routing::rank(blob, &members, replication, holds);
            serde_json::json!({
                "hash": crate::identity::hex(blob),
                "replication": replication,
                "nodes": ranked,
            })
            .to_string()
        })
    }

    /// For redirect mode: the best other live node for a blob — its nearest home
    /// node (by RTT), else None.
    pub fn locator(&self, replication: usize) -> Arc<LocateFn> {
        let view = self.view.clone();
        Arc::new(move |blob: &[u8; 32]| {
            let members = view.lock().map(|v| v.members.clone()).unwrap_or_default();
            crate::routing::rank(blob, &members, replication, false)
                .into_iter()
                .find(|r| r.holds.is_none())
                .map(|r| r.addr)
        })
    }

    /// Prometheus text for the data plane's `/metrics`: members by state,
    /// gossip dropped, and bad transfers per peer.
    pub fn metrics_renderer(&self) -> Arc<dyn Fn() -> String + Send + Sync> {
        let view = self.view.clone();
        Arc::new(move || {
            use std::fmt::Write;
            let mut out = String::new();
            let Ok(v) = view.lock() else { return out };
            let _ = writeln!(
                out,
                "# HELP tessera_cluster_members Members this node sees, by state."
            );
            let _ = writeln!(out, "# TYPE tessera_cluster_members gauge");
            for state in ["alive", "suspect", "down"] {
                let n = v.members.iter().filter(|m| m.state == state).count();
                let _ = writeln!(out, "tessera_cluster_members{{state=\"{state}\"}} {n}");
            }
            let _ = writeln!(out, "# HELP tessera_gossip_dropped_total Gossip datagrams dropped: bad signature, forged sender, malformed.");
            let _ = writeln!(out, "# TYPE tessera_gossip_dropped_total counter");
            let _ = writeln!(out, "tessera_gossip_dropped_total {}", v.dropped);
            let _ = writeln!(out, "# HELP tessera_peer_bad_transfers_total Transfers from a peer that failed verification.");
            let _ = writeln!(out, "# TYPE tessera_peer_bad_transfers_total counter");
            for (id, n) in &v.bad {
                let _ = writeln!(out, "tessera_peer_bad_transfers_total{{peer=\"{id}\"}} {n}");
            }
            out
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.key.id()
    }

    /// Signs a request to another node: (time in ms, signature hex) over
    /// `message` built by the caller from the method, path and that time.
    pub fn sign_request(&self, message_for: impl FnOnce(&str) -> Vec<u8>) -> (String, String) {
        let time = now_ms().to_string();
        let sig = self.key.sign(&message_for(&time));
        (time, crate::identity::hex(&sig))
    }

    /// Opens a box sealed to this node's id (see [`NodeId::seal`]).
    pub fn unseal(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        self.key.unseal(sealed)
    }

    /// The data plane's check of requests signed by other nodes: the signer must
    /// be a live member we know, the time within a minute of ours, and the
    /// signature valid for its node id.
    pub fn peer_verifier(&self) -> Arc<VerifyPeerFn> {
        let view = self.view.clone();
        Arc::new(move |id: &[u8], time: &[u8], sig: &[u8], message: &[u8]| {
            let Some(id) = std::str::from_utf8(id)
                .ok()
                .and_then(|s| s.parse::<NodeId>().ok())
            else {
                return false;
            };
            let known = view.lock().is_ok_and(|v| {
                v.members
                    .iter()
                    .any(|m| m.id == id.to_string() && m.state != "down" && !m.is_self)
            });
            let fresh = std::str::from_utf8(time)
                .ok()
                .and_then(|t| t.parse::<u64>().ok())
                .is_some_and(|t| now_ms().abs_diff(t) <= PEER_CLOCK_SKEW_MS);
            let Some(sig) = crate::identity::unhex64(sig) else {
                return false;
            };
            known && fresh && id.verify(message, &sig).is_ok()
        })
    }

    /// Records what a transfer from `id` gave: verified bytes, or a failure
    /// other than bad data (see [`Cluster::mark_bad`]).
    pub fn note_transfer(&self, id: &str, verified_bytes: Option<u64>) {
        if let Ok(mut v) = self.view.lock() {
            let e = v.served.entry(id.to_string()).or_default();
            match verified_bytes {
                Some(b) => {
                    e.0 += b;
                    e.1 += 1;
                }
                None => e.2 += 1,
            }
            let e = *e;
            if let Some(m) = v.members.iter_mut().find(|m| m.id == id) {
                (m.served_bytes, m.served_transfers, m.failed_transfers) = e;
            }
        }
    }

    /// Records a transfer from `id` that failed verification.
    pub fn mark_bad(&self, id: &str) {
        if let Ok(mut v) = self.view.lock() {
            *v.bad.entry(id.to_string()).or_default() += 1;
            if let Some(m) = v.members.iter_mut().find(|m| m.id == id) {
                m.bad_transfers += 1;
            }
        }
    }

    /// Announces that this node leaves, then stops the thread.
    pub fn leave(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Signed node records, disseminated as foca custom broadcasts; shared with the
/// control thread (single-threaded, hence `Rc<RefCell>`).
struct Records {
    by_id: Rc<RefCell<HashMap<NodeId, NodeRecord>>>,
}

#[derive(Debug)]
struct RecordKey {
    id: NodeId,
    version: u64,
}

impl foca::Invalidates for RecordKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.id == other.id && self.version >= other.version
    }
}

#[derive(Debug, thiserror::Error)]
#[error("node record refused: {0}")]
struct RecordRefused(crate::record::RecordError);

impl foca::BroadcastHandler<Peer> for Records {
    type Key = RecordKey;
    type Error = RecordRefused;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&Peer>,
    ) -> Result<Option<RecordKey>, RecordRefused> {
        let record = NodeRecord::decode(data).map_err(RecordRefused)?;
        let mut by_id = self.by_id.borrow_mut();
        let newer = by_id
            .get(&record.id)
            .is_none_or(|old| record.version > old.version);
        if !newer {
            return Ok(None);
        }
        let key = RecordKey {
            id: record.id,
            version: record.version,
        };
        by_id.insert(record.id, record);
        Ok(Some(key))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Wraps `body` in a signed envelope.
fn seal(key: &NodeKey, kind: u8, body: &[u8]) -> Vec<u8> {
    let id = key.id();
    let mut out = Vec::with_capacity(ENVELOPE_OVERHEAD + body.len());
    out.push(kind);
    out.extend_from_slice(&id.0);
    out.extend_from_slice(body);
    let sig = key.sign(&signed_message(kind, &id, body));
    out.extend_from_slice(&sig);
    out
}

fn signed_message(kind: u8, id: &NodeId, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 33 + body.len());
    m.extend_from_slice(DOMAIN);
    m.push(kind);
    m.extend_from_slice(&id.0);
    m.extend_from_slice(body);
    m
}

/// A sealed envelope, for tests that play a (misbehaving) peer.
pub fn seal_for_test(key: &NodeKey, kind: u8, body: &[u8]) -> Vec<u8> {
    seal(key, kind, body)
}

/// Opens a signed envelope from the network: (kind, sender, body), or why not.
/// Sans-IO and fuzzed (`fuzz/fuzz_targets/gossip_envelope.rs`).
pub fn open(wire: &[u8]) -> Result<(u8, NodeId, &[u8]), &'static str> {
    if wire.len() > MAX_DATAGRAM {
        return Err("oversized");
    }
    if wire.len() < ENVELOPE_OVERHEAD {
        return Err("truncated");
    }
    let kind = wire[0];
    if !matches!(kind, KIND_FOCA | KIND_PING | KIND_PONG) {
        return Err("unknown kind");
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(&wire[1..33]);
    let id = NodeId(id);
    let body = &wire[33..wire.len() - 64];
    let mut sig = [0u8; 64];
    sig.copy_from_slice(&wire[wire.len() - 64..]);
    id.verify(&signed_message(kind, &id, body), &sig)
        .map_err(|_| "bad signature")?;
    Ok((kind, id, body))
}

fn foca_config(cfg: &ClusterConfig) -> foca::Config {
    let mut c = foca::Config::new_lan(NonZeroU32::new(32).unwrap_or(NonZeroU32::MIN));
    c.probe_period = cfg.probe_period;
    c.probe_rtt = (cfg.probe_period / 3).max(Duration::from_millis(50));
    c.suspect_to_down_after = cfg.down_after;
    c.max_packet_size =
        std::num::NonZeroUsize::new(MAX_DATAGRAM - ENVELOPE_OVERHEAD).unwrap_or(c.max_packet_size);
    c.notify_down_members = true;
    // Keep asking the bootstrap nodes and the down members now and then, so a
    // partition heals and a restarted node is found again.
    c.periodic_announce = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(5),
        num_members: std::num::NonZeroUsize::MIN,
    });
    c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(3),
        num_members: std::num::NonZeroUsize::MIN,
    });
    c.remove_down_after = Duration::from_secs(3600);
    c
}

struct Rtt {
    ewma_ms: Option<f64>,
}

fn run(
    key: NodeKey,
    cfg: ClusterConfig,
    socket: UdpSocket,
    inbox: flume::Receiver<(Vec<u8>, SocketAddr)>,
    view: Arc<Mutex<View>>,
    stop: Arc<AtomicBool>,
) {
    let _span = tracing::info_span!("gossip", node = %cfg.addr).entered();
    let me = Peer {
        id: key.id(),
        addr: cfg.addr,
        bump: next_bump(cfg.data_dir.as_deref()),
    };
    let records: Rc<RefCell<HashMap<NodeId, NodeRecord>>> = Rc::default();
    let mut foca = Foca::with_custom_broadcast(
        me,
        foca_config(&cfg),
        rand::rngs::StdRng::from_os_rng(),
        PostcardCodec,
        Records {
            by_id: records.clone(),
        },
    );
    let mut check = PostcardCodec;
    let mut rt = foca::AccumulatingRuntime::new();
    let mut timers: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut timer_events: HashMap<u64, Timer<Peer>> = HashMap::new();
    let mut seq = 0u64;
    let mut rtts: HashMap<NodeId, Rtt> = HashMap::new();
    // Our Vivaldi coordinate, and the last one each member told us.
    let mut coord = Coord::default();
    let mut coords: HashMap<NodeId, Coord> = HashMap::new();
    let mut pings: HashMap<u64, (NodeId, Instant)> = HashMap::new();
    let mut next_publish = Instant::now();
    let mut dropped = 0u64;
    let mut next_record = Instant::now();
    let mut next_ping = Instant::now() + cfg.probe_period;
    let mut next_join = Instant::now();
    let mut announced = false;
    let bootstrap = |addr: SocketAddr| Peer {
        id: NodeId([0; 32]),
        addr,
        bump: 0,
    };
    let send = |to: SocketAddr, datagram: &[u8]| {
        if let Err(e) = socket.send_to(datagram, to) {
            tracing::debug!(%to, "gossip send failed: {e}");
        }
    };
    loop {
        let now = Instant::now();
        if stop.load(Ordering::SeqCst) {
            // Leaving: tell the others at once, then stop.
            let _ = foca.leave_cluster(&mut rt);
            while let Some((to, data)) = rt.to_send() {
                send(to.addr, &seal(&key, KIND_FOCA, &data));
            }
            return;
        }
        if now >= next_record {
            next_record = now + RECORD_EVERY;
            let record = NodeRecord {
                id: key.id(),
                version: now_ms(),
                addrs: vec![cfg.addr],
                region: cfg.region.clone(),
                capacity_bytes: cfg.capacity_bytes,
                services: vec!["blobs".into()],
                load_permille: cfg.load.as_ref().map_or(0, |l| l().min(1000)),
            };
            if let Ok(wire) = record.sign(&key) {
                let _ = foca.add_broadcast(&wire);
                records.borrow_mut().insert(record.id, record);
            }
        }
        // Until someone answers, keep knocking on the bootstrap nodes.
        if !announced && now >= next_join {
            next_join = now + Duration::from_secs(1);
            for &j in &cfg.join {
                if j != cfg.addr {
                    if let Err(e) = foca.announce(bootstrap(j), &mut rt) {
                        tracing::debug!(to = %j, "cannot announce: {e}");
                    } else {
                        tracing::debug!(to = %j, "announced");
                    }
                }
            }
        }
        if now >= next_ping {
            next_ping = now + cfg.probe_period;
            let _ = foca.broadcast(&mut rt);
            for m in foca.iter_members() {
                let nonce: u64 = rand::random();
                pings.insert(nonce, (m.id().id, now));
                send(
                    m.id().addr,
                    &seal(&key, KIND_PING, &ping_body(nonce, &coord)),
                );
            }
            pings.retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(10));
        }
        // Drain what foca asked for.
        while let Some((to, data)) = rt.to_send() {
            send(to.addr, &seal(&key, KIND_FOCA, &data));
        }
        while let Some((after, timer)) = rt.to_schedule() {
            seq += 1;
            timers.push(Reverse((now + after, seq)));
            timer_events.insert(seq, timer);
        }
        while let Some(n) = rt.to_notify() {
            match n {
                OwnedNotification::MemberUp(p) => {
                    tracing::info!(id = %p.id.short(), addr = %p.addr, "member up");
                    // A newcomer has none of our record's past broadcasts:
                    // sign and spread a fresh one now.
                    next_record = Instant::now();
                    // And publish the view before that record goes out: once
                    // the newcomer has our record it may sign requests to us,
                    // which we check against the published view.
                    next_publish = now;
                }
                OwnedNotification::MemberDown(p) => {
                    tracing::info!(id = %p.id.short(), addr = %p.addr, "member down");
                    next_publish = now;
                }
                OwnedNotification::Active => announced = true,
                OwnedNotification::Idle => announced = false,
                OwnedNotification::Rename(a, b) => {
                    tracing::debug!(old = ?a, new = ?b, "member renamed");
                }
                other => tracing::debug!("membership: {other:?}"),
            }
        }
        // Publish the view for the data plane, at most every PUBLISH_EVERY (not
        // once per datagram batch).
        if now >= next_publish {
            next_publish = now + PUBLISH_EVERY;
            let records = records.borrow();
            let mut members: Vec<MemberInfo> = foca
                .iter_membership_state()
                .filter(|m| m.id().id != NodeId([0; 32]))
                .map(|m| {
                    let p = m.id();
                    let s = match m.state() {
                        foca::State::Alive => "alive",
                        foca::State::Suspect => "suspect",
                        foca::State::Down => "down",
                    };
                    let mut m = member_info(p, s, records.get(&p.id), rtts.get(&p.id), false);
                    m.est_rtt_ms = coords
                        .get(&p.id)
                        .map(|c| (coord.distance(c) * 1000.0).round() / 1000.0);
                    m
                })
                .collect();
            members.push(member_info(&me, "alive", records.get(&me.id), None, true));
            members.sort_by(|a, b| a.addr.cmp(&b.addr).then(a.id.cmp(&b.id)));
            if let Ok(mut v) = view.lock() {
                for m in &mut members {
                    m.bad_transfers = v.bad.get(&m.id).copied().unwrap_or(0);
                    (m.served_bytes, m.served_transfers, m.failed_transfers) =
                        v.served.get(&m.id).copied().unwrap_or_default();
                }
                v.members = members;
                v.dropped = dropped;
            }
        }
        // Wait for a datagram, the next timer, or the next periodic job.
        let mut wake = next_ping.min(next_record);
        if !announced && !cfg.join.is_empty() {
            wake = wake.min(next_join);
        }
        if let Some(Reverse((at, _))) = timers.peek() {
            wake = wake.min(*at);
        }
        let wait = wake
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        if let Ok((datagram, from)) = inbox.recv_timeout(wait) {
            let mut batch = vec![(datagram, from)];
            while let Ok(more) = inbox.try_recv() {
                batch.push(more);
                if batch.len() >= 256 {
                    break;
                }
            }
            for (datagram, from) in batch {
                match open(&datagram) {
                    Err(why) => {
                        dropped += 1;
                        tracing::debug!(%from, "gossip dropped: {why}");
                    }
                    Ok((KIND_FOCA, sender, body)) => {
                        // The foca header must name the signer as its source.
                        match foca::Codec::<Peer>::decode_header(&mut check, body) {
                            Ok(h) if h.src.id == sender => {
                                if let Err(e) = foca.handle_data(body, &mut rt) {
                                    tracing::debug!(%from, "gossip refused: {e}");
                                }
                            }
                            _ => {
                                dropped += 1;
                                tracing::debug!(%from, "gossip dropped: header names another node");
                            }
                        }
                    }
                    Ok((KIND_PING, sender, body)) => {
                        // To the sender's client-facing address (its gossip port);
                        // the datagram's source is a send-only socket.
                        let to = foca
                            .iter_members()
                            .find(|m| m.id().id == sender)
                            .map(|m| m.id().addr);
                        match (to, parse_ping(body)) {
                            (Some(to), Some((nonce, theirs))) => {
                                coords.insert(sender, theirs);
                                send(to, &seal(&key, KIND_PONG, &ping_body(nonce, &coord)));
                            }
                            _ => dropped += 1,
                        }
                    }
                    Ok((KIND_PONG, sender, body)) => {
                        if let Some((nonce, theirs)) = parse_ping(body) {
                            if let Some((id, at)) = pings.remove(&nonce) {
                                if id == sender {
                                    let ms = at.elapsed().as_secs_f64() * 1000.0;
                                    let r = rtts.entry(id).or_insert(Rtt { ewma_ms: None });
                                    r.ewma_ms = Some(match r.ewma_ms {
                                        Some(old) => old * 0.8 + ms * 0.2,
                                        None => ms,
                                    });
                                    coord.update(ms, &theirs, rand::random::<f64>());
                                    coords.insert(sender, theirs);
                                }
                            }
                        } else {
                            dropped += 1;
                        }
                    }
                    Ok(_) => dropped += 1,
                }
            }
        }
        // Timers that are due.
        let now = Instant::now();
        while let Some(Reverse((at, id))) = timers.peek().copied() {
            if at > now {
                break;
            }
            timers.pop();
            if let Some(t) = timer_events.remove(&id) {
                let _ = foca.handle_timer(t, &mut rt);
            }
        }
    }
}

/// Ping and pong bodies: a nonce and the sender's Vivaldi coordinate.
fn ping_body(nonce: u64, c: &Coord) -> [u8; 48] {
    let mut out = [0u8; 48];
    out[..8].copy_from_slice(&nonce.to_le_bytes());
    for (i, v) in c.pos.iter().chain([c.height, c.error].iter()).enumerate() {
        out[8 + i * 8..16 + i * 8].copy_from_slice(&v.to_le_bytes());
    }
    out
}

fn parse_ping(body: &[u8]) -> Option<(u64, Coord)> {
    let body: &[u8; 48] = body.try_into().ok()?;
    let f = |i: usize| f64::from_le_bytes(body[8 + i * 8..16 + i * 8].try_into().unwrap_or([0; 8]));
    let c = Coord {
        pos: [f(0), f(1), f(2)],
        height: f(3),
        error: f(4),
    };
    // A coordinate from the network must be sane numbers of sane size.
    let sane = [f(0), f(1), f(2), f(3), f(4)]
        .iter()
        .all(|v| v.is_finite() && v.abs() < 1e6)
        && c.height >= 0.0
        && c.error > 0.0;
    sane.then(|| {
        (
            u64::from_le_bytes(body[..8].try_into().unwrap_or([0; 8])),
            c,
        )
    })
}

fn member_info(
    p: &Peer,
    state: &str,
    record: Option<&NodeRecord>,
    rtt: Option<&Rtt>,
    is_self: bool,
) -> MemberInfo {
    MemberInfo {
        id: p.id.to_string(),
        addr: p.addr,
        region: record.map(|r| r.region.clone()).unwrap_or_default(),
        state: state.into(),
        rtt_ms: rtt
            .and_then(|r| r.ewma_ms)
            .map(|v| (v * 1000.0).round() / 1000.0),
        est_rtt_ms: None,
        verified: record.is_some_and(|r| r.addrs.contains(&p.addr)),
        bad_transfers: 0,
        served_bytes: 0,
        served_transfers: 0,
        failed_transfers: 0,
        load_permille: record.map(|r| r.load_permille),
        is_self,
    }
}
