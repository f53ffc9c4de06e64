//! The CDN as a [`Service`]: zones from the network's deployments, a cache
//! index published as an immutable snapshot, hits answered on the core as
//! stored blobs, misses fetched from the origin on the service's pool.
//!
//! The way of a request:
//! - **On the core** ([`Service::decide`]): the zone is the host's first
//!   label under the node's suffix (`shop.cdn.localhost`) or the path's first
//!   segment (`/cdn/shop/...`). The cache key is BLAKE3 of zone, path and
//!   query (no allocation); the index maps it to the names the origin varied
//!   on, and the variant key adds those request headers' values. A fresh
//!   variant is a [`Decision::Blob`]: the data plane serves it exactly as it
//!   serves `/blobs/{hash}` (zero-copy, ranges, conditional requests), with
//!   `Age` and `Cache-Status: Tessera; hit`. Anything else is work.
//! - **On the pool** ([`Service::handle`]): concurrent misses for one object
//!   collapse into one origin request (the others wait, bounded, then look
//!   again; a waiter whose variant did not come fetches for itself). The
//!   answer's cacheability is RFC 9111's, by `http-cache-semantics` (shared
//!   cache), with `CDN-Cache-Control` (RFC 9213) taking precedence over
//!   `Cache-Control`, and the zone's `grace_secs` for an origin that sends
//!   neither freshness nor validators. A storable answer goes into the blob
//!   store and is served from there as a blob ([`Reply::blob`]: a range
//!   request for an uncached object fetches it once, whole, and serves the
//!   range); a stale one is revalidated with the origin's validators, a 304
//!   keeping the stored body.
//! - A zone placed on other nodes and not here is proxied to the nearest of
//!   them (by measured round trip); a zone placed nowhere is served here.

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http_cache_semantics::{AfterResponse, BeforeRequest, CacheOptions, CachePolicy};
use serde::Deserialize;
use service_api::flume;
use service_api::{
    BlobReply, Decision, DeploymentName, HostNames, Method, Mount, Node, OwnedRequest, PoolConfig,
    Reply, Request, RequestBody, Service, Status,
};

use crate::admission::{S3Fifo, MAX_FREQ};
use crate::ZoneSpec;

/// `[services.cdn]` in the node's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CdnConfig {
    /// Zones are served at `{zone}.{host_suffix}`. The default ends in
    /// `.localhost`, which browsers resolve to loopback: no DNS needed.
    pub host_suffix: String,
    /// Largest object cached; a larger one is passed through.
    pub max_object_bytes: u64,
    /// An origin request that takes longer is answered 504.
    pub origin_timeout_ms: u64,
    /// How long a request waits for another's fetch of the same object
    /// before it fetches for itself.
    pub collapse_wait_ms: u64,
    pub workers: usize,
    pub queue: usize,
}

impl Default for CdnConfig {
    fn default() -> Self {
        CdnConfig {
            host_suffix: "cdn.localhost".into(),
            max_object_bytes: 1 << 30,
            origin_timeout_ms: 30_000,
            collapse_wait_ms: 10_000,
            workers: 64,
            queue: 4096,
        }
    }
}

/// A zone as this node serves it.
struct Zone {
    spec: ZoneSpec,
    version: u64,
    here: bool,
    elsewhere: Vec<SocketAddr>,
    /// What this node served for it (kept across snapshots).
    usage: Arc<Usage>,
    /// Its origin's recent failures (kept across snapshots).
    health: Arc<OriginHealth>,
    /// For an origin whose certificate a private CA signed (`origin_ca`):
    /// an agent that trusts that CA only. Otherwise the CDN's own, which
    /// trusts the system's roots.
    agent: Option<ureq::Agent>,
    /// The origin's base URL: the spec's, or for a `fn:NAME` origin the
    /// function's path form on this node.
    base: String,
}

/// An HTTP client for origins: HTTPS verified against `roots`.
fn origin_agent(config: &CdnConfig, roots: ureq::tls::RootCerts) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_connect(Some(Duration::from_secs(2)))
        .timeout_global(Some(Duration::from_millis(config.origin_timeout_ms)))
        .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
        .build()
        .into()
}

/// An origin that keeps failing is left alone for a while: after
/// [`BACKOFF_AFTER`] failures in a row (no answer, or a 5xx) the zone stops
/// asking it for 1 s, doubling with each further failure up to 30 s;
/// requests meanwhile are answered from stale copies (stale-if-error) or 502
/// at once. The first answer below 500 closes it again.
#[derive(Default)]
struct OriginHealth {
    failures: std::sync::atomic::AtomicU32,
    /// Unix ms until which the origin is not asked.
    resting_until_ms: AtomicU64,
}

const BACKOFF_AFTER: u32 = 3;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A zone's metered use on this node: what its owner is charged for.
#[derive(Default)]
struct Usage {
    requests: AtomicU64,
    /// Body bytes served (a range counts the object's whole size on a hit).
    bytes: AtomicU64,
}

/// What the index holds for a cache key: the request headers the origin
/// varied on (lower case), in order.
struct Resource {
    vary: Box<[Box<str>]>,
}

/// A stored answer for one variant.
struct Variant {
    blob: BlobReply,
    /// The same, as a stale answer (its `Cache-Status` says so).
    stale_blob: BlobReply,
    /// The same for another node of the zone (shielding): with the tags,
    /// which clients never see, so that its copy can be purged by tag too.
    peer_blob: BlobReply,
    /// Unix seconds until which it is fresh.
    fresh_until: u64,
    /// Body bytes.
    size: u64,
    /// Requests since stored, at most `admission::MAX_FREQ` (bumped on the
    /// core at each hit; spent by S3-FIFO).
    freq: AtomicU8,
    /// RFC 5861: seconds past freshness it may be served while one
    /// background request revalidates it, and while the origin fails.
    stale_while_revalidate: u64,
    stale_if_error: u64,
    /// A background revalidation is under way.
    refreshing: AtomicBool,
    policy: CachePolicy,
    /// For purges: the zone, the path and query, the origin's tags
    /// (`Surrogate-Key`, `Cache-Tag`).
    zone: Box<str>,
    url: Box<str>,
    tags: Box<[Box<str>]>,
}

impl Variant {
    /// A soft purge: the same object, stale from now (the next request
    /// revalidates it; no stale-while-revalidate grace).
    fn marked_stale(&self) -> Variant {
        Variant {
            blob: self.blob.clone(),
            stale_blob: self.stale_blob.clone(),
            peer_blob: self.peer_blob.clone(),
            size: self.size,
            freq: AtomicU8::new(self.freq.load(Ordering::Relaxed)),
            fresh_until: 0,
            stale_while_revalidate: 0,
            stale_if_error: self.stale_if_error,
            refreshing: AtomicBool::new(false),
            policy: self.policy.clone(),
            zone: self.zone.clone(),
            url: self.url.clone(),
            tags: self.tags.clone(),
        }
    }
}

/// A directive's number in a `Cache-Control` value (`max-age=60`).
fn directive(cache_control: &str, name: &str) -> Option<u64> {
    cache_control.split(',').find_map(|d| {
        let (k, v) = d.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').parse().ok())?
    })
}

/// The same answer with one more header.
fn with_header(blob: &BlobReply, name: &str, value: &str) -> BlobReply {
    let headers: Vec<(String, String)> = blob
        .headers
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .cloned()
        .chain([(name.to_string(), value.to_string())])
        .collect();
    BlobReply {
        headers: Some(headers.into()),
        ..blob.clone()
    }
}

/// The same answer with another `Cache-Status`.
fn with_status(blob: &BlobReply, status: &str) -> BlobReply {
    let headers: Vec<(String, String)> = blob
        .headers
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .filter(|(n, _)| n != "cache-status")
        .cloned()
        .chain([("cache-status".to_string(), status.to_string())])
        .collect();
    BlobReply {
        headers: Some(headers.into()),
        ..blob.clone()
    }
}

type Index = imbl::HashMap<u128, Arc<Resource>>;
type Variants = imbl::HashMap<u128, Arc<Variant>>;

/// One origin fetch others may wait for.
#[derive(Default)]
struct Flight {
    done: Mutex<bool>,
    cv: Condvar,
}

struct Counters {
    hits: Arc<AtomicU64>,
    misses: Arc<AtomicU64>,
    origin_requests: Arc<AtomicU64>,
    revalidated: Arc<AtomicU64>,
    stored: Arc<AtomicU64>,
    collapsed: Arc<AtomicU64>,
    proxied: Arc<AtomicU64>,
    origin_errors: Arc<AtomicU64>,
    zones: Arc<AtomicU64>,
    purges: Arc<AtomicU64>,
    purged: Arc<AtomicU64>,
    shielded: Arc<AtomicU64>,
    evicted: Arc<AtomicU64>,
    origin_backoffs: Arc<AtomicU64>,
}

pub struct Cdn {
    node: Node,
    config: CdnConfig,
    /// `.{host_suffix}`.
    dot_suffix: String,
    zones: ArcSwap<HashMap<String, Arc<Zone>>>,
    index: ArcSwap<Index>,
    variants: ArcSwap<Variants>,
    /// Writers of the two snapshots take this (readers never do).
    publish: Mutex<()>,
    flights: Mutex<HashMap<u128, Arc<Flight>>>,
    counters: Counters,
    agent: ureq::Agent,
    cache_status_hit: Arc<[(String, String)]>,
    /// Stale objects to revalidate in the background.
    refresh: flume::Sender<OwnedRequest>,
    /// Purge ids taken, with when (ms): none is taken twice.
    purge_ids: Mutex<HashMap<String, u64>>,
    /// Each zone's objects within its budget (writers only).
    admission: Mutex<HashMap<String, S3Fifo<u128>>>,
    /// A zone's extra host names (its spec's `hosts`) → the zone.
    aliases: HostNames,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn key128(parts: &[&[u8]]) -> u128 {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    u128::from_le_bytes(out)
}

/// Set on requests between the nodes of a zone (a proxied request, a
/// shielded miss, a purge passed on): the receiver goes to the origin itself.
const HOP: &str = "x-tessera-cdn-hop";
/// Sent to a function origin with a revalidation: the blob held here for
/// the URL (the functions service's `BASE_HEADER`; services share no code,
/// so the name is written twice).
const FN_BASE: &str = "x-tessera-fn-base";

/// The hop header's value on a shielded miss (one node of a zone filling its
/// cache from another): not metered, since the node that asked bills its
/// own client. A proxied request (any other value) is metered where served.
const SHIELD: &[u8] = b"shield";

/// Whether a request's use counts for its zone's owner (see [`SHIELD`]).
fn metered(hop: Option<&[u8]>) -> bool {
    hop != Some(SHIELD)
}
/// A zone's tags for an object, from one of its nodes to another.
const TAGS: &str = "x-tessera-cdn-tags";

/// `POST /cdn/_purge/{zone}` takes a signed [`crate::purge::Purge`] (no zone
/// name starts with `_`).
pub const PURGE_PREFIX: &str = "/cdn/_purge/";
/// `POST /cdn/_revalidate/{BLAKE3 of the body}`: an on-demand revalidation
/// (a function origin's `ctx.revalidate`) passed on by another node of the
/// zone, signed by that node (the body's hash in the signed path).
pub const REVALIDATE_PREFIX: &str = "/cdn/_revalidate/";

/// Response headers a cache never stores or forwards as they are.
const NOT_KEPT: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-type",
    "cache-control",
    "etag",
    "age",
    "date",
    "set-cookie",
    "cdn-cache-control",
    "surrogate-control",
    "surrogate-key",
    "cache-tag",
    "cache-status",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
];

/// Request headers passed on to the origin.
const FORWARDED: &[&str] = &[
    "accept",
    "accept-encoding",
    "accept-language",
    "user-agent",
    "range",
];

impl Cdn {
    /// Body bytes served for each zone by this node since it started (what
    /// the node reports to the ledger, which charges the zone's owner).
    pub fn served_bytes(&self) -> Vec<(String, u64)> {
        self.zones
            .load()
            .iter()
            .map(|(name, z)| (name.clone(), z.usage.bytes.load(Ordering::Relaxed)))
            .collect()
    }

    pub fn new(node: &Node) -> Result<Arc<Cdn>, String> {
        let config: CdnConfig = node.config()?;
        if config.host_suffix.is_empty() || config.host_suffix.starts_with('.') {
            return Err("host_suffix: a host name such as cdn.localhost".into());
        }
        let m = &node.metrics;
        let counters = Counters {
            hits: m.counter("hits", "Requests answered from the cache on the core."),
            misses: m.counter(
                "misses",
                "Requests that went to the pool (not a fresh hit).",
            ),
            origin_requests: m.counter("origin_requests", "Requests sent to origins."),
            revalidated: m.counter("revalidated", "Stale objects an origin confirmed (304)."),
            stored: m.counter("stored", "Origin answers stored."),
            collapsed: m.counter(
                "collapsed",
                "Misses that waited for another request's origin fetch.",
            ),
            proxied: m.counter("proxied", "Requests passed to a node that runs the zone."),
            origin_errors: m.counter("origin_errors", "Origin requests that failed."),
            zones: m.gauge("zones", "Zones this node knows."),
            purges: m.counter("purges", "Signed purges taken."),
            purged: m.counter("purged", "Cached objects purged (dropped or marked stale)."),
            origin_backoffs: m.counter(
                "origin_backoffs",
                "Times a failing origin was rested (backoff after failures in a row).",
            ),
            evicted: m.counter(
                "evicted",
                "Cached objects dropped to keep a zone within its budget.",
            ),
            shielded: m.counter(
                "shielded",
                "Misses answered by another node of the zone instead of the origin.",
            ),
        };
        let agent = origin_agent(&config, ureq::tls::RootCerts::PlatformVerifier);
        let (refresh, refresh_rx) = flume::bounded::<OwnedRequest>(1024);
        let cdn = Arc::new(Cdn {
            refresh,
            purge_ids: Mutex::new(HashMap::new()),
            admission: Mutex::new(HashMap::new()),
            aliases: HostNames::default(),
            node: node.clone(),
            dot_suffix: format!(".{}", config.host_suffix),
            config,
            zones: ArcSwap::from_pointee(HashMap::new()),
            index: ArcSwap::from_pointee(Index::new()),
            variants: ArcSwap::from_pointee(Variants::new()),
            publish: Mutex::new(()),
            flights: Mutex::new(HashMap::new()),
            counters,
            agent,
            cache_status_hit: vec![("cache-status".to_string(), "Tessera; hit".to_string())].into(),
        });
        cdn.refresh_zones();
        let weak = Arc::downgrade(&cdn);
        node.metrics.family(Arc::new(move |out: &mut String| {
            use std::fmt::Write;
            let Some(cdn) = weak.upgrade() else { return };
            let zones = cdn.zones.load();
            for (metric, help) in [
                (
                    "requests",
                    "Requests for the zone this node answered (metered).",
                ),
                (
                    "bytes",
                    "Body bytes of the zone this node served (metered).",
                ),
            ] {
                let _ = writeln!(out, "# HELP tessera_cdn_zone_{metric}_total {help}");
                let _ = writeln!(out, "# TYPE tessera_cdn_zone_{metric}_total counter");
                for (name, z) in zones.iter() {
                    let v = match metric {
                        "requests" => z.usage.requests.load(Ordering::Relaxed),
                        _ => z.usage.bytes.load(Ordering::Relaxed),
                    };
                    let _ = writeln!(
                        out,
                        "tessera_cdn_zone_{metric}_total{{service=\"cdn\",zone=\"{name}\"}} {v}"
                    );
                }
            }
        }));
        let weak = Arc::downgrade(&cdn);
        std::thread::Builder::new()
            .name("cdn-zones".into())
            .spawn(move || {
                while let Some(cdn) = weak.upgrade() {
                    cdn.refresh_zones();
                    drop(cdn);
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
            .map_err(|e| format!("cannot start the zone watcher: {e}"))?;
        for i in 0..2 {
            let weak = Arc::downgrade(&cdn);
            let rx = refresh_rx.clone();
            std::thread::Builder::new()
                .name(format!("cdn-refresh-{i}"))
                .spawn(move || {
                    while let Ok(req) = rx.recv() {
                        let Some(cdn) = weak.upgrade() else { return };
                        cdn.revalidate_in_background(req);
                    }
                })
                .map_err(|e| format!("cannot start a revalidation thread: {e}"))?;
        }
        Ok(cdn)
    }

    /// Takes the zones from the network's deployments (a changed spec,
    /// placement or version replaces the snapshot).
    fn refresh_zones(&self) {
        let current = self.zones.load();
        let mut next = HashMap::new();
        let mut changed = false;
        for inst in self.node.deployments.of("cdn") {
            // Unchanged (same version and placement): kept as it is, its spec
            // not parsed again nor its origin's client rebuilt.
            if let Some(z) = current.get(&inst.name).filter(|z| {
                z.version == inst.version && z.here == inst.here && z.elsewhere == inst.elsewhere
            }) {
                next.insert(inst.name, z.clone());
                continue;
            }
            changed = true;
            let spec = match ZoneSpec::parse(&inst.spec) {
                Ok(spec) => spec,
                Err(why) => {
                    tracing::warn!(zone = %inst.name, "zone spec refused: {why}");
                    continue;
                }
            };
            let agent = match &spec.origin_ca {
                None => None,
                Some(pem) => {
                    let certs: Vec<_> = ureq::tls::parse_pem(pem.as_bytes())
                        .filter_map(|item| match item {
                            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                            _ => None,
                        })
                        .collect();
                    if certs.is_empty() {
                        tracing::warn!(zone = %inst.name, "origin_ca holds no certificate");
                        continue;
                    }
                    let roots = ureq::tls::RootCerts::Specific(Arc::new(certs));
                    Some(origin_agent(&self.config, roots))
                }
            };
            let (usage, health) = current
                .get(&inst.name)
                .map_or_else(Default::default, |z| (z.usage.clone(), z.health.clone()));
            next.insert(
                inst.name,
                Arc::new(Zone {
                    version: inst.version,
                    here: inst.here,
                    elsewhere: inst.elsewhere,
                    usage,
                    health,
                    agent,
                    base: match (spec.origin_function(), self.node.listen) {
                        (Some(f), Some(me)) => format!("http://{me}/fn/{f}"),
                        (Some(f), None) => format!("http://127.0.0.1/fn/{f}"),
                        (None, _) => spec.origin.trim_end_matches('/').to_string(),
                    },
                    spec,
                }),
            );
        }
        if changed || next.len() != current.len() {
            let mut aliases = HashMap::new();
            for (name, z) in &next {
                let name: Arc<str> = name.as_str().into();
                for h in &z.spec.hosts {
                    aliases.insert(h.clone(), name.clone());
                }
            }
            self.aliases.set(aliases);
            self.counters
                .zones
                .store(next.len() as u64, Ordering::Relaxed);
            self.zones.store(Arc::new(next));
        }
    }

    /// The zone and the path within it.
    fn locate<'a>(
        &self,
        host: Option<&'a [u8]>,
        path: &'a [u8],
    ) -> Option<(DeploymentName<'a>, &'a [u8])> {
        if let Some(rest) = path.strip_prefix(b"/cdn/") {
            let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
            let zone = std::str::from_utf8(&rest[..end]).ok()?;
            let inner = if end == rest.len() {
                &b"/"[..]
            } else {
                &rest[end..]
            };
            return Some((DeploymentName::Named(zone), inner));
        }
        let host = host?;
        let host = match host.iter().rposition(|&b| b == b':') {
            Some(i) if host[i + 1..].iter().all(u8::is_ascii_digit) => &host[..i],
            _ => host,
        };
        let host = std::str::from_utf8(host).ok()?;
        let zone = host
            .len()
            .checked_sub(self.dot_suffix.len())
            .filter(|&at| {
                host.is_char_boundary(at) && host[at..].eq_ignore_ascii_case(&self.dot_suffix)
            })
            .map(|at| &host[..at]);
        match zone {
            Some(zone) => Some((DeploymentName::Named(zone), path)),
            None => Some((
                DeploymentName::Host(self.aliases.get(host.as_bytes())?),
                path,
            )),
        }
    }

    fn variant_key(
        primary: u128,
        vary: &[Box<str>],
        header: &dyn Fn(&str) -> Option<Vec<u8>>,
    ) -> u128 {
        if vary.is_empty() {
            return primary;
        }
        let p = primary.to_le_bytes();
        let values: Vec<Vec<u8>> = vary.iter().map(|n| header(n).unwrap_or_default()).collect();
        let mut parts: Vec<&[u8]> = vec![&p];
        for (n, v) in vary.iter().zip(&values) {
            parts.push(n.as_bytes());
            parts.push(v);
        }
        key128(&parts)
    }

    /// The fresh (or merely stored) variant for a request, from the
    /// snapshots.
    fn lookup(
        &self,
        primary: u128,
        header: &dyn Fn(&str) -> Option<Vec<u8>>,
    ) -> Option<Arc<Variant>> {
        let index = self.index.load();
        let resource = index.get(&primary)?;
        let key = Cdn::variant_key(primary, &resource.vary, header);
        self.variants.load().get(&key).cloned()
    }

    /// Publishes a stored variant, and drops what its zone's budget no
    /// longer holds (S3-FIFO, see `admission`), in one new snapshot.
    fn publish(&self, primary: u128, vary: Box<[Box<str>]>, key: u128, variant: Variant) {
        let _w = self.publish.lock().unwrap_or_else(|p| p.into_inner());
        let mut index = (**self.index.load()).clone();
        index.insert(primary, Arc::new(Resource { vary }));
        self.index.store(Arc::new(index));
        let (zone, size) = (variant.zone.clone(), variant.size);
        let budget = self
            .zones
            .load()
            .get(&*zone)
            .map_or(u64::MAX, |z| z.spec.budget_bytes);
        let mut variants = (**self.variants.load()).clone();
        let carried = variants
            .get(&key)
            .map(|old| old.freq.load(Ordering::Relaxed));
        if let Some(f) = carried {
            variant.freq.store(f, Ordering::Relaxed);
        }
        variants.insert(key, Arc::new(variant));
        let dropped = {
            let mut admission = self.admission.lock().unwrap_or_else(|p| p.into_inner());
            let fifo = admission
                .entry(zone.to_string())
                .or_insert_with(|| S3Fifo::new(budget));
            fifo.set_budget(budget);
            fifo.insert(
                key,
                size,
                &|k| {
                    variants
                        .get(k)
                        .map_or(0, |v| v.freq.load(Ordering::Relaxed))
                },
                &|k| {
                    if let Some(v) = variants.get(k) {
                        let f = v.freq.load(Ordering::Relaxed);
                        v.freq.store(f.saturating_sub(1), Ordering::Relaxed);
                    }
                },
            )
        };
        for k in &dropped {
            variants.remove(k);
        }
        self.counters
            .evicted
            .fetch_add(dropped.len() as u64, Ordering::Relaxed);
        self.variants.store(Arc::new(variants));
    }
}

fn text(status: Status, msg: &str, cache_status: &str) -> Reply {
    Reply::text(status, msg).header("Cache-Status", cache_status)
}

/// An origin's answer, whole or as a reader for its body.
struct Fetched {
    status: u16,
    headers: http::HeaderMap,
    body: Box<dyn Read + Send>,
}

impl Service for Cdn {
    fn name(&self) -> &str {
        "cdn"
    }

    fn mounts(&self) -> Vec<Mount> {
        vec![
            Mount::Prefix("/cdn/".into()),
            Mount::Host(format!("*.{}", self.config.host_suffix)),
            Mount::DeployedHosts,
        ]
    }

    fn claims_host(&self, host: &[u8]) -> bool {
        self.aliases.get(host).is_some()
    }

    fn pool(&self) -> PoolConfig {
        PoolConfig {
            threads: self.config.workers,
            queue: self.config.queue,
            deadline: Duration::from_millis(self.config.origin_timeout_ms + 5_000),
        }
    }

    fn max_body_bytes(&self) -> u64 {
        64 << 20
    }

    fn decide(&self, req: &Request<'_>) -> Decision {
        if req.path.starts_with(PURGE_PREFIX.as_bytes())
            || req.path.starts_with(REVALIDATE_PREFIX.as_bytes())
        {
            return Decision::Work;
        }
        let Some((zone_name, path)) = self.locate(req.host, req.path) else {
            return Decision::Reply(text(
                Status::NotFound,
                "no such zone\n",
                "Tessera; fwd=miss",
            ));
        };
        let zones = self.zones.load();
        let Some(zone) = zones.get(&*zone_name) else {
            return Decision::Reply(text(
                Status::NotFound,
                "no CDN zone by that name on this network\n",
                "Tessera; fwd=miss",
            ));
        };
        if !zone.here && req.headers.get(HOP).is_none() {
            if let (true, Some(to)) = (self.node.redirect_elsewhere, zone.elsewhere.first()) {
                // on_miss = "redirect": the client goes to the nearest node
                // that runs the zone itself.
                let location = format!("http://{to}/cdn/{zone_name}{}", url_of(path, req.query));
                return Decision::Reply(
                    Reply::text(
                        Status::TemporaryRedirect,
                        "this zone runs on another node\n",
                    )
                    .header("Location", location)
                    .header("Cache-Status", "Tessera; fwd=miss; detail=\"redirected\""),
                );
            }
        }
        if (!zone.here && !zone.elsewhere.is_empty())
            || !matches!(req.method, Method::Get | Method::Head)
            || req.headers.get("authorization").is_some()
        {
            return Decision::Work;
        }
        let primary = key128(&[zone_name.as_bytes(), path, req.query]);
        // No allocation on a hit without Vary; with Vary the header values
        // are copied into the key's hasher input.
        let header = |name: &str| req.headers.get(name).map(<[u8]>::to_vec);
        let Some(v) = self.lookup(primary, &header) else {
            return Decision::Work;
        };
        let now = now_secs();
        let f = v.freq.load(Ordering::Relaxed);
        if f < MAX_FREQ {
            v.freq.store(f + 1, Ordering::Relaxed);
        }
        let hop = req.headers.get(HOP);
        let blob = if now < v.fresh_until {
            match hop {
                Some(_) => &v.peer_blob,
                None => &v.blob,
            }
        } else if now < v.fresh_until + v.stale_while_revalidate {
            // Stale but within stale-while-revalidate: answered now, and
            // one background request revalidates it.
            if !v.refreshing.swap(true, Ordering::AcqRel)
                && self.refresh.try_send(req.to_owned()).is_err()
            {
                v.refreshing.store(false, Ordering::Release);
            }
            &v.stale_blob
        } else {
            return Decision::Work;
        };
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        if metered(hop) {
            zone.usage.requests.fetch_add(1, Ordering::Relaxed);
            zone.usage.bytes.fetch_add(v.size, Ordering::Relaxed);
        }
        Decision::Blob(blob.clone())
    }

    fn handle(&self, req: OwnedRequest, body: RequestBody) -> Reply {
        if req.path.starts_with(PURGE_PREFIX.as_bytes()) {
            return self.purge(&req, body);
        }
        if req.path.starts_with(REVALIDATE_PREFIX.as_bytes()) {
            return self.revalidate_from_peer(&req, body);
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        let Some((zone_name, path)) = self.locate(req.host.as_deref(), &req.path) else {
            return text(Status::NotFound, "no such zone\n", "Tessera; fwd=miss");
        };
        let (zone_name, path) = (zone_name.to_string(), path.to_vec());
        let zones = self.zones.load();
        let Some(zone) = zones.get(&zone_name).cloned() else {
            return text(
                Status::NotFound,
                "no CDN zone by that name on this network\n",
                "Tessera; fwd=miss",
            );
        };
        drop(zones);
        let proxied = req.header(HOP).is_some();
        let body = if !zone.here && !proxied && !zone.elsewhere.is_empty() {
            let bytes = match body.read_all() {
                Ok(b) => b,
                Err(e) => return text(Status::BadRequest, &format!("{e}\n"), "Tessera; fwd=miss"),
            };
            // The nearest node that runs it; one that does not answer (dead,
            // not yet seen down) passes to the next; none answering: served
            // here.
            for to in &zone.elsewhere {
                if let Some(reply) = self.proxy(*to, &zone_name, &path, &req, &bytes) {
                    return reply;
                }
            }
            RequestBody::from_bytes(bytes)
        } else {
            body
        };
        // Answered here (not passed on): metered here.
        if metered(req.header(HOP)) {
            zone.usage.requests.fetch_add(1, Ordering::Relaxed);
        }
        let cacheable = matches!(req.method, Method::Get | Method::Head)
            && req.header("authorization").is_none();
        if !cacheable {
            return self.pass(&zone, &path, &req, body, "Tessera; fwd=method");
        }
        let primary = key128(&[zone_name.as_bytes(), &path, &req.query]);
        let header = |name: &str| req.header(name).map(<[u8]>::to_vec);
        // Collapsed forwarding: one fetch per object at a time.
        let (flight, leader) = {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            match flights.get(&primary) {
                Some(f) => (f.clone(), false),
                None => {
                    // A fetch that ended before this request got a worker
                    // published first, then left: the object is here now.
                    if let Some(v) = self.lookup(primary, &header) {
                        if now_secs() < v.fresh_until {
                            return Reply::blob(v.blob.clone());
                        }
                    }
                    let f = Arc::new(Flight::default());
                    flights.insert(primary, f.clone());
                    (f, true)
                }
            }
        };
        if !leader {
            self.counters.collapsed.fetch_add(1, Ordering::Relaxed);
            let wait = Duration::from_millis(self.config.collapse_wait_ms);
            let done = flight.done.lock().unwrap_or_else(|p| p.into_inner());
            let _ = flight
                .cv
                .wait_timeout_while(done, wait, |d| !*d)
                .unwrap_or_else(|p| p.into_inner());
            if let Some(v) = self.lookup(primary, &header) {
                if now_secs() < v.fresh_until {
                    return Reply::blob(v.blob.clone());
                }
            }
            // Not what this request needs (another variant, not storable):
            // its own fetch.
            return self.fetch(&zone, &path, &req, primary);
        }
        let reply = self.fetch(&zone, &path, &req, primary);
        self.flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&primary);
        *flight.done.lock().unwrap_or_else(|p| p.into_inner()) = true;
        flight.cv.notify_all();
        reply
    }
}

impl Cdn {
    /// `POST /cdn/_purge/{zone}`: checks the owner's signature, purges here,
    /// and (when the client sent it, not another node) passes it on to the
    /// zone's other nodes, answering once they have (2 s at most each).
    /// Drops (or, `soft`, marks stale) what zone `zone_name` cached that
    /// `what`/`value` names, on this node; how many variants.
    fn apply_purge(
        &self,
        zone_name: &str,
        what: crate::purge::What,
        value: &str,
        soft: bool,
    ) -> u64 {
        use crate::purge::What;
        let matches = |v: &Variant| {
            &*v.zone == zone_name
                && match what {
                    What::Url => *v.url == *value,
                    What::Prefix => v.url.starts_with(value),
                    What::Tag => v.tags.iter().any(|t| **t == *value),
                    What::All => true,
                }
        };
        let _w = self.publish.lock().unwrap_or_else(|p| p.into_inner());
        let mut variants = (**self.variants.load()).clone();
        let hit: Vec<u128> = variants
            .iter()
            .filter(|(_, v)| matches(v))
            .map(|(k, _)| *k)
            .collect();
        for k in &hit {
            if soft {
                if let Some(v) = variants.get(k).cloned() {
                    variants.insert(*k, Arc::new(v.marked_stale()));
                }
            } else {
                variants.remove(k);
                let mut admission = self.admission.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(fifo) = admission.get_mut(zone_name) {
                    fifo.remove(k);
                }
            }
        }
        self.variants.store(Arc::new(variants));
        hit.len() as u64
    }

    /// On-demand revalidation asked by an origin on this node (a function's
    /// `ctx.revalidate(path)` / `revalidateTag(tag)`): what every zone whose
    /// origin is `origin` cached under that path (`kind` "path") or tag is
    /// marked stale, here at once and on the zone's other nodes (passed on,
    /// signed by this node, in the background), so the next request
    /// regenerates it. How many variants here.
    pub fn revalidate_origin(&self, origin: &str, kind: &str, value: &str) -> u64 {
        use crate::purge::What;
        let what = if kind == "tag" { What::Tag } else { What::Url };
        let zones: Vec<(String, Vec<SocketAddr>)> = self
            .zones
            .load()
            .iter()
            .filter(|(_, z)| z.spec.origin == origin)
            .map(|(n, z)| (n.clone(), z.elsewhere.clone()))
            .collect();
        let mut n = 0;
        for (zone, elsewhere) in zones {
            n += self.apply_purge(&zone, what, value, true);
            if elsewhere.is_empty() {
                continue;
            }
            let body =
                serde_json::json!({ "zone": zone, "what": what, "value": value }).to_string();
            let path = format!(
                "{REVALIDATE_PREFIX}{}",
                blake3::hash(body.as_bytes()).to_hex()
            );
            let signed = self.node.cluster.sign_request("POST", &path);
            let agent = self.agent.clone();
            std::thread::spawn(move || {
                for addr in elsewhere {
                    let mut b = http::Request::post(format!("http://{addr}{path}"))
                        .header("content-type", "application/json");
                    for (k, v) in &signed {
                        b = b.header(k.as_str(), v.as_str());
                    }
                    let sent = b
                        .body(body.clone())
                        .map_err(|e| e.to_string())
                        .and_then(|r| agent.run(r).map_err(|e| e.to_string()));
                    if let Err(e) = sent {
                        tracing::debug!(%addr, "revalidation not passed on: {e}");
                    }
                }
            });
        }
        self.counters.purged.fetch_add(n, Ordering::Relaxed);
        n
    }

    /// A revalidation passed on by another node of the zone: applied if a
    /// live member signed it and the body is the one its path names.
    fn revalidate_from_peer(&self, req: &OwnedRequest, body: RequestBody) -> Reply {
        #[derive(serde::Deserialize)]
        struct Passed {
            zone: String,
            what: crate::purge::What,
            value: String,
        }
        let path = String::from_utf8_lossy(&req.path).into_owned();
        let header = |n: &str| req.header(n).map(<[u8]>::to_vec);
        if req.method != Method::Post
            || self
                .node
                .cluster
                .signed_by("POST", &path, &header)
                .is_none()
        {
            return Reply::text(
                Status::Forbidden,
                "not signed by a member of this cluster\n",
            );
        }
        let Ok(bytes) = body.read_all() else {
            return Reply::text(Status::BadRequest, "unreadable body\n");
        };
        if path[REVALIDATE_PREFIX.len()..] != *blake3::hash(&bytes).to_hex() {
            return Reply::text(
                Status::BadRequest,
                "the body is not the one the path names\n",
            );
        }
        let Ok(p) = serde_json::from_slice::<Passed>(&bytes) else {
            return Reply::text(Status::BadRequest, "not a revalidation\n");
        };
        let n = self.apply_purge(&p.zone, p.what, &p.value, true);
        self.counters.purged.fetch_add(n, Ordering::Relaxed);
        Reply::new(
            Status::Ok,
            "application/json",
            serde_json::json!({ "marked": n }).to_string(),
        )
    }

    fn purge(&self, req: &OwnedRequest, body: RequestBody) -> Reply {
        use crate::purge::Purge;
        let json_reply =
            |status, v: serde_json::Value| Reply::new(status, "application/json", format!("{v}\n"));
        if req.method != Method::Post {
            return Reply::text(Status::MethodNotAllowed, "a purge is a POST\n")
                .header("Allow", "POST");
        }
        let body = match body.read_all() {
            Ok(b) => b,
            Err(e) => return Reply::text(Status::BadRequest, &format!("{e}\n")),
        };
        let purge: Purge = match serde_json::from_slice(&body) {
            Ok(p) => p,
            Err(e) => return Reply::text(Status::BadRequest, &format!("not a purge: {e}\n")),
        };
        let zone_name = String::from_utf8_lossy(&req.path[PURGE_PREFIX.len()..]).into_owned();
        if purge.zone != zone_name {
            return Reply::text(Status::BadRequest, "the purge names another zone\n");
        }
        let Some(instance) = self
            .node
            .deployments
            .of("cdn")
            .into_iter()
            .find(|i| i.name == zone_name)
        else {
            return Reply::text(
                Status::NotFound,
                "no CDN zone by that name on this network\n",
            );
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if let Err(why) = purge.check(&instance.owner, now_ms) {
            return Reply::text(Status::Forbidden, &format!("purge refused: {why}\n"));
        }
        {
            let mut ids = self.purge_ids.lock().unwrap_or_else(|p| p.into_inner());
            ids.retain(|_, at| now_ms.saturating_sub(*at) <= 2 * crate::purge::MAX_SKEW_MS);
            if ids.insert(purge.id.clone(), now_ms).is_some() {
                return json_reply(Status::Ok, serde_json::json!({ "purged": 0, "seen": true }));
            }
        }
        self.counters.purges.fetch_add(1, Ordering::Relaxed);
        let purged = self.apply_purge(&zone_name, purge.what, &purge.value, purge.soft);
        self.counters.purged.fetch_add(purged, Ordering::Relaxed);
        // Passed on once: the other nodes check the signature themselves.
        let mut replicas = Vec::new();
        if req.header(HOP).is_none() {
            let threads: Vec<_> = instance
                .elsewhere
                .iter()
                .map(|addr| {
                    let (addr, body, agent) = (*addr, body.clone(), self.agent.clone());
                    let path = format!("{PURGE_PREFIX}{zone_name}");
                    std::thread::spawn(move || {
                        let ok = http::Request::post(format!("http://{addr}{path}"))
                            .header("content-type", "application/json")
                            .header(HOP, "1")
                            .body(body)
                            .map_err(|e| e.to_string())
                            .and_then(|r| agent.run(r).map_err(|e| e.to_string()))
                            .map(|r| r.status().as_u16());
                        (addr, ok)
                    })
                })
                .collect();
            for t in threads {
                if let Ok((addr, ok)) = t.join() {
                    replicas.push(serde_json::json!({
                        "addr": addr.to_string(),
                        "ok": matches!(ok, Ok(200)),
                        "error": ok.err(),
                    }));
                }
            }
        }
        json_reply(
            Status::Ok,
            serde_json::json!({ "purged": purged, "soft": purge.soft, "replicas": replicas }),
        )
    }

    /// A miss asked of the zone's nearest other node (with the hop header, so
    /// that it goes to the origin itself rather than back here): its answer
    /// when it is a 200, else None (then the origin is asked).
    fn ask_replica(
        &self,
        zone: &Zone,
        req: &OwnedRequest,
        headers: &[(String, Vec<u8>)],
    ) -> Option<Fetched> {
        if !zone.here || req.header(HOP).is_some() {
            return None;
        }
        let peer = zone.elsewhere.first()?;
        let zone_name = zone_name_of(req, self);
        let (_, path) = self.locate(req.host.as_deref(), &req.path)?;
        let url = format!("http://{peer}/cdn/{zone_name}{}", url_of(path, &req.query));
        let mut r = http::Request::get(url.as_str()).header(HOP, SHIELD);
        for (n, v) in headers {
            r = r.header(n.as_str(), v.as_slice());
        }
        let resp = self.agent.run(r.body(()).ok()?).ok()?;
        if resp.status() != 200 {
            return None;
        }
        self.counters.shielded.fetch_add(1, Ordering::Relaxed);
        let (parts, body) = resp.into_parts();
        let mut headers = parts.headers;
        // The replica's own validators and status are not the origin's; its
        // tags are the origin's.
        for h in ["etag", "cache-status", "accept-ranges"] {
            headers.remove(h);
        }
        if let Some(tags) = headers.remove(TAGS) {
            headers.insert("surrogate-key", tags);
        }
        Some(Fetched {
            status: 200,
            headers,
            body: Box::new(body.into_reader()),
        })
    }

    /// One stale-while-revalidate request, off every client's path.
    fn revalidate_in_background(&self, req: OwnedRequest) {
        let Some((zone_name, path)) = self.locate(req.host.as_deref(), &req.path) else {
            return;
        };
        let Some(zone) = self.zones.load().get(&*zone_name).cloned() else {
            return;
        };
        let primary = key128(&[zone_name.as_bytes(), path, &req.query]);
        let header = |name: &str| req.header(name).map(<[u8]>::to_vec);
        let before = self.lookup(primary, &header);
        let _ = self.fetch(&zone, path, &req, primary);
        // Still the same (the origin failed): another may try later.
        if let (Some(b), Some(now)) = (before, self.lookup(primary, &header)) {
            if Arc::ptr_eq(&b, &now) {
                now.refreshing.store(false, Ordering::Release);
            }
        }
    }

    fn origin_url(zone: &Zone, path: &[u8], query: &[u8]) -> String {
        let mut url = format!("{}{}", zone.base, String::from_utf8_lossy(path));
        if !query.is_empty() {
            url.push('?');
            url.push_str(&String::from_utf8_lossy(query));
        }
        url
    }

    /// One request to the zone's origin, unless it is resting after
    /// failures (see [`OriginHealth`]).
    fn origin(
        &self,
        zone: &Zone,
        method: &str,
        url: &str,
        headers: &[(String, Vec<u8>)],
        body: Option<Vec<u8>>,
    ) -> Result<Fetched, String> {
        let h = &zone.health;
        let now = now_ms();
        let resting = h.resting_until_ms.load(Ordering::Acquire);
        if now < resting {
            return Err(format!(
                "it failed {} times in a row; not asked again for {} ms",
                h.failures.load(Ordering::Relaxed),
                resting - now
            ));
        }
        self.counters
            .origin_requests
            .fetch_add(1, Ordering::Relaxed);
        let agent = zone.agent.as_ref().unwrap_or(&self.agent);
        let result = send(agent, method, url, headers, body);
        let failed = match &result {
            Ok(f) => f.status >= 500,
            Err(_) => true,
        };
        if !failed {
            h.failures.store(0, Ordering::Relaxed);
            return result;
        }
        self.counters.origin_errors.fetch_add(1, Ordering::Relaxed);
        let n = h.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= BACKOFF_AFTER {
            let backoff = (1_000u64 << (n - BACKOFF_AFTER).min(5)).min(30_000);
            h.resting_until_ms
                .store(now_ms() + backoff, Ordering::Release);
            self.counters
                .origin_backoffs
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(origin = %zone.spec.origin, failures = n, backoff_ms = backoff, "origin failing: resting it");
        }
        result
    }

    fn forwarded(req: &OwnedRequest) -> Vec<(String, Vec<u8>)> {
        req.headers
            .iter()
            .filter_map(|(n, v)| {
                let n = String::from_utf8_lossy(n).to_ascii_lowercase();
                (FORWARDED.contains(&n.as_str()) && n != "range").then(|| (n, v.clone()))
            })
            .collect()
    }

    /// The headers of an origin answer that a client gets.
    fn kept(headers: &http::HeaderMap) -> Vec<(String, String)> {
        headers
            .iter()
            .filter(|(n, _)| !NOT_KEPT.contains(&n.as_str()))
            .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect()
    }

    /// An answer passed through, not stored.
    fn passed(&self, f: Fetched, cache_status: &str) -> Reply {
        let mut body = Vec::new();
        let limit = self.config.max_object_bytes;
        if let Err(e) = f.body.take(limit).read_to_end(&mut body) {
            return text(
                Status::BadGateway,
                &format!("the origin's answer broke off: {e}\n"),
                &format!("{cache_status}; detail=\"origin body\""),
            );
        }
        let content_type = f
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_string();
        let mut reply = Reply::new(Status::passed_on(f.status), &content_type, body);
        for (n, v) in Cdn::kept(&f.headers) {
            reply = reply.header(&n, v);
        }
        if let Some(cc) = f.headers.get("cache-control").and_then(|v| v.to_str().ok()) {
            reply = reply.header("Cache-Control", cc);
        }
        reply.header("Cache-Status", cache_status)
    }

    fn pass(
        &self,
        zone: &Zone,
        path: &[u8],
        req: &OwnedRequest,
        body: RequestBody,
        cache_status: &str,
    ) -> Reply {
        let body = match body.read_all() {
            Ok(b) => b,
            Err(e) => return text(Status::BadRequest, &format!("{e}\n"), cache_status),
        };
        let url = Cdn::origin_url(zone, path, &req.query);
        let mut headers = Cdn::forwarded(req);
        if let Some(ct) = req.header("content-type") {
            headers.push(("content-type".into(), ct.to_vec()));
        }
        match self.origin(zone, req.method.as_str(), &url, &headers, Some(body)) {
            Ok(f) => self.passed(f, cache_status),
            Err(e) => origin_down(&e),
        }
    }

    /// The request passed to `to`, a node that runs the zone; None when it
    /// does not answer at all.
    fn proxy(
        &self,
        to: SocketAddr,
        zone: &str,
        path: &[u8],
        req: &OwnedRequest,
        body: &[u8],
    ) -> Option<Reply> {
        let url = format!("http://{to}/cdn/{zone}{}", url_of(path, &req.query));
        let mut headers = Cdn::forwarded(req);
        if let Some(r) = req.header("range") {
            headers.push(("range".into(), r.to_vec()));
        }
        headers.push((HOP.into(), b"1".to_vec()));
        let body = (!matches!(req.method, Method::Get | Method::Head)).then(|| body.to_vec());
        match send(&self.agent, req.method.as_str(), &url, &headers, body) {
            Ok(f) => {
                self.counters.proxied.fetch_add(1, Ordering::Relaxed);
                let status = f
                    .headers
                    .get("cache-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("Tessera")
                    .to_string();
                Some(self.passed(f, &format!("Tessera; fwd=uri-miss, {status}")))
            }
            Err(e) => {
                tracing::debug!(%to, "the zone's node did not answer: {e}");
                None
            }
        }
    }

    /// A miss (or a stale object): from the origin, stored when RFC 9111
    /// allows, then served from the store.
    fn fetch(&self, zone: &Zone, path: &[u8], req: &OwnedRequest, primary: u128) -> Reply {
        let url = Cdn::origin_url(zone, path, &req.query);
        let header = |name: &str| req.header(name).map(<[u8]>::to_vec);
        let stale = self.lookup(primary, &header);
        let mut headers = Cdn::forwarded(req);
        // The policy's request: what the origin is asked, for RFC 9111.
        let mut policy_req = http::Request::builder().method("GET").uri(url.as_str());
        for (n, v) in &headers {
            policy_req = policy_req.header(n.as_str(), v.as_slice());
        }
        let Ok(policy_req) = policy_req.body(()) else {
            return text(
                Status::BadRequest,
                "cannot form the origin request\n",
                "Tessera; fwd=uri-miss",
            );
        };
        let now = SystemTime::now();
        if let Some(v) = &stale {
            if let BeforeRequest::Stale { request, .. } = v.policy.before_request(&policy_req, now)
            {
                for name in ["if-none-match", "if-modified-since"] {
                    if let Some(val) = request.headers.get(name) {
                        headers.push((name.to_string(), val.as_bytes().to_vec()));
                    }
                }
            }
        }
        // A function origin is told which version is held here: when its
        // node is another, only the chunk groups that changed come over.
        if let (Some(v), Some(_)) = (&stale, zone.spec.origin_function()) {
            headers.push((
                FN_BASE.to_string(),
                crate::purge::hex(&v.blob.hash).into_bytes(),
            ));
        }
        let stale_if_error = |why: &str| {
            let v = stale.as_ref()?;
            (now_secs() < v.fresh_until + v.stale_if_error).then(|| {
                Reply::blob(with_status(
                    &v.blob,
                    &format!("Tessera; hit; fwd=stale; detail=\"{why}\""),
                ))
            })
        };
        // Origin shielding: a miss asks the zone's nearest other node first
        // (which answers from its cache, or fetches once for both).
        let shielded = match &stale {
            None => self.ask_replica(zone, req, &headers),
            Some(_) => None,
        };
        let fetched = match shielded {
            Some(f) => Ok(f),
            None => self.origin(zone, "GET", &url, &headers, None),
        };
        let f = match fetched {
            Ok(f) if f.status >= 500 => match stale_if_error("origin error") {
                Some(reply) => return reply,
                None => f,
            },
            Ok(f) => f,
            Err(e) => {
                return stale_if_error("origin unreachable").unwrap_or_else(|| origin_down(&e))
            }
        };
        let mut resp = http::Response::builder().status(f.status);
        for (n, v) in f.headers.iter() {
            // RFC 9213: CDN-Cache-Control, when present, is what a CDN obeys.
            if n == "cache-control" && f.headers.contains_key("cdn-cache-control") {
                continue;
            }
            let n = if n == "cdn-cache-control" {
                http::header::CACHE_CONTROL
            } else {
                n.clone()
            };
            resp = resp.header(n, v);
        }
        let Ok(policy_resp) = resp.body(()) else {
            return self.passed(f, "Tessera; fwd=uri-miss");
        };
        let opts = CacheOptions {
            shared: true,
            ..CacheOptions::default()
        };
        let key_now = |vary: &[Box<str>]| Cdn::variant_key(primary, vary, &header);
        if f.status == 304 {
            if let Some(v) = stale {
                let vary = self
                    .index
                    .load()
                    .get(&primary)
                    .map(|r| r.vary.clone())
                    .unwrap_or_default();
                let key = key_now(&vary);
                return self.revalidated(primary, vary, key, (&policy_req, &policy_resp), v, now);
            }
        }
        let policy = CachePolicy::new_options(&policy_req, &policy_resp, now, opts);
        let storable = f.status == 200
            && policy.is_storable()
            && !f.headers.contains_key("set-cookie")
            && f.headers
                .get("content-length")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .is_none_or(|n| n <= self.config.max_object_bytes);
        let cache_status = if stale.is_some() {
            "Tessera; fwd=stale"
        } else {
            "Tessera; fwd=uri-miss"
        };
        if !storable {
            return self.passed(f, cache_status);
        }
        let ttl = policy.time_to_live(now).as_secs();
        let has_freshness = ["cache-control", "expires", "cdn-cache-control"]
            .iter()
            .any(|h| f.headers.contains_key(*h));
        let has_validators =
            f.headers.contains_key("etag") || f.headers.contains_key("last-modified");
        let ttl = if ttl == 0 && !has_freshness && !has_validators {
            zone.spec.grace_secs
        } else {
            ttl
        };
        let vary: Box<[Box<str>]> = f
            .headers
            .get_all("vary")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|n| n.trim().to_ascii_lowercase().into_boxed_str())
            .filter(|n| !n.is_empty())
            .collect();
        if vary.iter().any(|n| &**n == "*") {
            return self.passed(f, cache_status);
        }
        let content_type: Arc<str> = f
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .into();
        let client_cc: Arc<str> = f
            .headers
            .get("cache-control")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("no-cache")
            .into();
        let header_str = |name: &str| {
            f.headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let effective_cc = if f.headers.contains_key("cdn-cache-control") {
            header_str("cdn-cache-control")
        } else {
            header_str("cache-control")
        };
        let tags: Box<[Box<str>]> = [header_str("surrogate-key"), header_str("cache-tag")]
            .iter()
            .flat_map(|v| {
                v.split([' ', ','])
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(Box::from)
                    .collect::<Vec<Box<str>>>()
            })
            .collect();
        let mut kept = Cdn::kept(&f.headers);
        let limit = self.config.max_object_bytes;
        let mut reader = f.body.take(limit + 1);
        let (hash, size) = match self.node.store.put(&mut reader) {
            Ok(stored) => stored,
            Err(e) => {
                return text(
                    Status::BadGateway,
                    &format!("cannot take the origin's answer: {e}\n"),
                    &format!("{cache_status}; detail=\"store\""),
                )
            }
        };
        if size > limit {
            // Too large to cache after all (no Content-Length said so):
            // served this once from the store, not indexed.
            kept.push((
                "cache-status".into(),
                format!("{cache_status}; detail=\"too large\""),
            ));
            return Reply::blob(BlobReply {
                hash,
                content_type,
                cache_control: Some(client_cc),
                headers: Some(kept.into()),
                stored_at: None,
                status: None,
            });
        }
        self.counters.stored.fetch_add(1, Ordering::Relaxed);
        if metered(req.header(HOP)) {
            zone.usage.bytes.fetch_add(size, Ordering::Relaxed);
        }
        let stored_at = now_secs();
        let mut hit_headers = kept.clone();
        hit_headers.extend(self.cache_status_hit.iter().cloned());
        let key = key_now(&vary);
        let tag_list = tags.join(" ");
        let blob = BlobReply {
            hash,
            content_type: content_type.clone(),
            cache_control: Some(client_cc.clone()),
            headers: Some(hit_headers.into()),
            stored_at: Some(stored_at),
            status: None,
        };
        let variant = Variant {
            stale_blob: with_status(&blob, "Tessera; hit; fwd=stale; detail=\"revalidating\""),
            peer_blob: with_header(&blob, TAGS, &tag_list),
            blob,
            size,
            freq: AtomicU8::new(0),
            fresh_until: stored_at + ttl,
            stale_while_revalidate: directive(&effective_cc, "stale-while-revalidate").unwrap_or(0),
            stale_if_error: directive(&effective_cc, "stale-if-error").unwrap_or(0),
            refreshing: AtomicBool::new(false),
            policy,
            zone: zone_name_of(req, self).into(),
            url: url_of(path, &req.query).into(),
            tags,
        };
        self.publish(primary, vary, key, variant);
        kept.push(("cache-status".into(), format!("{cache_status}; stored")));
        if req.header(HOP).is_some() {
            kept.push((TAGS.into(), tag_list));
        }
        Reply::blob(BlobReply {
            hash,
            content_type,
            cache_control: Some(client_cc),
            headers: Some(kept.into()),
            stored_at: Some(stored_at),
            status: None,
        })
    }

    /// The origin confirmed a stale object (304): fresh again, same body.
    fn revalidated(
        &self,
        primary: u128,
        vary: Box<[Box<str>]>,
        key: u128,
        (req, resp): (&http::Request<()>, &http::Response<()>),
        old: Arc<Variant>,
        now: SystemTime,
    ) -> Reply {
        self.counters.revalidated.fetch_add(1, Ordering::Relaxed);
        let policy = match old.policy.after_response(req, resp, now) {
            AfterResponse::NotModified(p, _) | AfterResponse::Modified(p, _) => p,
        };
        let ttl = policy.time_to_live(now).as_secs();
        let stored_at = now_secs();
        let mut blob = old.blob.clone();
        blob.stored_at = Some(stored_at);
        let mut stale_blob = old.stale_blob.clone();
        stale_blob.stored_at = Some(stored_at);
        self.publish(
            primary,
            vary,
            key,
            Variant {
                peer_blob: BlobReply {
                    stored_at: Some(stored_at),
                    status: None,
                    ..old.peer_blob.clone()
                },
                blob: blob.clone(),
                stale_blob,
                size: old.size,
                freq: AtomicU8::new(old.freq.load(Ordering::Relaxed)),
                fresh_until: stored_at + ttl,
                stale_while_revalidate: old.stale_while_revalidate,
                stale_if_error: old.stale_if_error,
                refreshing: AtomicBool::new(false),
                policy,
                zone: old.zone.clone(),
                url: old.url.clone(),
                tags: old.tags.clone(),
            },
        );
        Reply::blob(with_status(&blob, "Tessera; fwd=stale; fwd-status=304"))
    }
}

fn url_of(path: &[u8], query: &[u8]) -> String {
    let mut url = String::from_utf8_lossy(path).into_owned();
    if !query.is_empty() {
        url.push('?');
        url.push_str(&String::from_utf8_lossy(query));
    }
    url
}

fn zone_name_of(req: &OwnedRequest, cdn: &Cdn) -> String {
    cdn.locate(req.host.as_deref(), &req.path)
        .map(|(z, _)| z.to_string())
        .unwrap_or_default()
}

/// One HTTP/1.1 request (to an origin, or to another node of the zone).
fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(String, Vec<u8>)],
    body: Option<Vec<u8>>,
) -> Result<Fetched, String> {
    let mut builder = http::Request::builder().method(method).uri(url);
    for (n, v) in headers {
        builder = builder.header(n.as_str(), v.as_slice());
    }
    let result = match body {
        Some(b) => builder
            .body(b)
            .map_err(|e| e.to_string())
            .and_then(|r| agent.run(r).map_err(|e| e.to_string())),
        None => builder
            .body(())
            .map_err(|e| e.to_string())
            .and_then(|r| agent.run(r).map_err(|e| e.to_string())),
    };
    let resp = result?;
    let (parts, body) = resp.into_parts();
    Ok(Fetched {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: Box::new(body.into_reader()),
    })
}

fn origin_down(e: &str) -> Reply {
    text(
        Status::BadGateway,
        &format!("the origin did not answer: {e}\n"),
        "Tessera; fwd=uri-miss; detail=\"origin unreachable\"",
    )
}
