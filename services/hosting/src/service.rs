//! Sites as a [`Service`]: the sites from the network's deployments, each
//! version's manifest compiled into an immutable snapshot, requests resolved
//! and answered on the core as stored blobs.
//!
//! The way of a request:
//! - **On the core** ([`Service::decide`]): the site is the host's label
//!   under the node's suffix (`docs.sites.localhost`), a version's preview
//!   (`{12 hex}.docs.sites.localhost`), a custom host from the site's spec,
//!   or the path form `/sites/docs/...` (`/sites/docs@{12 hex}/...`). The
//!   path resolves in the version's snapshot (see [`crate::Version`]): a
//!   file is a [`Decision::Blob`] in the encoding `Accept-Encoding` allows
//!   (zero-copy, ranges, conditional requests, `ETag` = the blob's hash), a
//!   redirect is answered at once, a proxy rule goes to the pool.
//! - **A site placed elsewhere** is proxied, on the pool, to the nearest
//!   node that runs it; if none answers, this node serves it, fetching what
//!   it lacks from its peers (every chunk verified).
//! - **The watcher** (a thread): for each site placed here, every version
//!   the spec keeps is fetched whole (manifest and blobs, from peers) and
//!   pinned; a version goes live here only once all of it is here, so a
//!   visitor never sees a mix of two. Versions pruned from the spec are
//!   unpinned. The pins this service holds are kept in its data directory,
//!   so a restart unpins what a spec dropped while the node was down.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Deserialize;
use service_api::{
    strip_port, Decision, DeploymentName, Hash, HostNames, Method, Mount, Node, OwnedRequest,
    PoolConfig, Reply, Request, RequestBody, Service, Status,
};

use crate::site::{blob_reply, choose_encoding, Encoding};
use crate::{hex, parse_hex32, Manifest, Outcome, SiteSpec, Version, PREVIEW_PREFIX};

/// `[services.site]` in the node's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SitesConfig {
    /// Sites are served at `{site}.{host_suffix}`. The default ends in
    /// `.localhost`, which browsers resolve to loopback: no DNS needed.
    pub host_suffix: String,
    /// How often the watcher looks at the deployments, ms.
    pub watch_ms: u64,
    /// A proxied request (to the site's node, or a rule's origin) that
    /// takes longer is answered 504.
    pub proxy_timeout_ms: u64,
    pub workers: usize,
    pub queue: usize,
}

impl Default for SitesConfig {
    fn default() -> Self {
        SitesConfig {
            host_suffix: "sites.localhost".into(),
            watch_ms: 250,
            proxy_timeout_ms: 30_000,
            workers: 32,
            queue: 4096,
        }
    }
}

/// Requests and body bytes served for a site (metered where answered).
#[derive(Default)]
struct Usage {
    requests: AtomicU64,
    bytes: AtomicU64,
}

/// A site as this node serves it.
struct Site {
    deployment_version: u64,
    spec: SiteSpec,
    here: bool,
    elsewhere: Vec<SocketAddr>,
    /// The version served; None until one is whole here.
    live: Option<Arc<Version>>,
    /// Kept versions that are whole here, by the first 12 hex digits.
    previews: HashMap<String, Arc<Version>>,
    usage: Arc<Usage>,
}

struct Counters {
    hits: Arc<AtomicU64>,
    redirects: Arc<AtomicU64>,
    not_found: Arc<AtomicU64>,
    proxied: Arc<AtomicU64>,
    fetched: Arc<AtomicU64>,
    sites: Arc<AtomicU64>,
    pinned: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

pub struct Sites {
    node: Node,
    config: SitesConfig,
    dot_suffix: String,
    sites: ArcSwap<HashMap<String, Arc<Site>>>,
    /// Custom host → site.
    hosts: HostNames,
    /// Compiled versions by manifest hash (shared by sites and rounds).
    versions: Mutex<HashMap<Hash, Arc<Version>>>,
    /// Manifests refused (logged once).
    refused: Mutex<HashSet<Hash>>,
    /// What this service pinned.
    pins: Mutex<HashSet<Hash>>,
    counters: Counters,
    agent: ureq::Agent,
}

/// Sent with a request proxied between a site's nodes: answered there, not
/// passed on again, and metered there only.
const HOP: &str = "x-tessera-site-hop";
/// With a request proxied in the path form: the client asked at the
/// site's host (its redirects are answered host-relative).
const HOST: &str = "x-tessera-site-host";
/// `GET /sites/_status/{name}`: which version this node serves.
const STATUS_PREFIX: &str = "/sites/_status/";

fn text(status: Status, msg: &str) -> Reply {
    Reply::text(status, msg).header("Cache-Control", "no-store")
}

/// Where a request points: the site, a preview prefix, the path within it,
/// and whether it came by the path form (its redirects keep the prefix).
struct Located<'a> {
    site: DeploymentName<'a>,
    preview: Option<&'a str>,
    path: &'a [u8],
    path_form: bool,
}

impl Sites {
    /// Body bytes served for each site by this node since it started (what
    /// the node reports to the ledger, which charges the site's owner).
    pub fn served_bytes(&self) -> Vec<(String, u64)> {
        self.sites
            .load()
            .iter()
            .map(|(name, s)| (name.clone(), s.usage.bytes.load(Ordering::Relaxed)))
            .collect()
    }

    pub fn new(node: &Node) -> Result<Arc<Sites>, String> {
        let config: SitesConfig = node.config()?;
        if config.host_suffix.is_empty() || config.host_suffix.starts_with('.') {
            return Err("host_suffix: a host name such as sites.localhost".into());
        }
        let m = &node.metrics;
        let counters = Counters {
            hits: m.counter(
                "files",
                "Files answered from a site's snapshot on the core.",
            ),
            redirects: m.counter("redirects", "Redirects answered."),
            not_found: m.counter("not_found", "Requests for paths a site does not have."),
            proxied: m.counter("proxied", "Requests passed to a node that runs the site."),
            fetched: m.counter("fetched", "Blobs fetched from peers for a site."),
            sites: m.gauge("sites", "Sites this node knows."),
            pinned: m.gauge("pinned_blobs", "Blobs pinned for the sites placed here."),
            refused: m.counter("refused_versions", "Versions whose manifest was refused."),
        };
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_millis(config.proxy_timeout_ms)))
                .http_status_as_error(false)
                .max_redirects(0)
                .build(),
        );
        let pins = std::fs::read_to_string(node.data_dir.join("pins"))
            .unwrap_or_default()
            .lines()
            .filter_map(parse_hex32)
            .collect();
        let sites = Arc::new(Sites {
            node: node.clone(),
            dot_suffix: format!(".{}", config.host_suffix),
            config,
            sites: ArcSwap::from_pointee(HashMap::new()),
            hosts: HostNames::default(),
            versions: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashSet::new()),
            pins: Mutex::new(pins),
            counters,
            agent,
        });
        let weak = Arc::downgrade(&sites);
        node.metrics.family(Arc::new(move |out: &mut String| {
            use std::fmt::Write;
            let Some(s) = weak.upgrade() else { return };
            let all = s.sites.load();
            for (metric, help) in [
                (
                    "requests",
                    "Requests for the site this node answered (metered).",
                ),
                (
                    "bytes",
                    "Body bytes of the site this node served (metered).",
                ),
            ] {
                let _ = writeln!(out, "# HELP tessera_site_{metric}_total {help}");
                let _ = writeln!(out, "# TYPE tessera_site_{metric}_total counter");
                for (name, site) in all.iter() {
                    let v = match metric {
                        "requests" => site.usage.requests.load(Ordering::Relaxed),
                        _ => site.usage.bytes.load(Ordering::Relaxed),
                    };
                    let _ = writeln!(
                        out,
                        "tessera_site_{metric}_total{{service=\"site\",site=\"{name}\"}} {v}"
                    );
                }
            }
        }));
        let weak = Arc::downgrade(&sites);
        let every = Duration::from_millis(sites.config.watch_ms.max(10));
        std::thread::Builder::new()
            .name("sites-watch".into())
            .spawn(move || {
                while let Some(s) = weak.upgrade() {
                    s.refresh();
                    drop(s);
                    std::thread::sleep(every);
                }
            })
            .map_err(|e| format!("cannot start the sites watcher: {e}"))?;
        Ok(sites)
    }

    /// The compiled version `id`: from the cache, or its manifest from the
    /// store (fetched from peers when `fetch`), parsed and checked. None
    /// while it is not to be had (or was refused: logged once).
    fn version(&self, id: &Hash, fetch: bool) -> Option<Arc<Version>> {
        if let Some(v) = self
            .versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            return Some(v.clone());
        }
        if self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
        {
            return None;
        }
        let store = &self.node.store;
        let size = match store.size(id) {
            Some(s) => s,
            None if fetch && self.node.cluster.fetch(id) => {
                self.counters.fetched.fetch_add(1, Ordering::Relaxed);
                store.size(id)?
            }
            None => return None,
        };
        let refuse = |why: String| {
            tracing::warn!(version = %hex(id), "site version refused: {why}");
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            self.refused
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(*id);
            None
        };
        if size > crate::MAX_MANIFEST_BYTES as u64 {
            return refuse(format!("manifest of {size} bytes"));
        }
        let bytes = match store.read(id, 0, size as usize) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(version = %hex(id), "cannot read a site manifest: {e}");
                return None;
            }
        };
        let compiled = match Manifest::parse(&bytes).and_then(|m| Version::compile(*id, &m)) {
            Ok(v) => Arc::new(v),
            Err(why) => return refuse(why),
        };
        self.versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(*id, compiled.clone());
        Some(compiled)
    }

    /// Whether every blob of `v` is in the store, fetching the missing ones
    /// from peers.
    fn whole(&self, v: &Version) -> bool {
        let mut whole = true;
        for h in &v.blobs {
            if self.node.store.size(h).is_some() {
                continue;
            }
            if self.node.cluster.fetch(h) {
                self.counters.fetched.fetch_add(1, Ordering::Relaxed);
            } else {
                whole = false;
            }
        }
        whole
    }

    /// Takes the sites from the deployments; fetches, checks and pins the
    /// versions of those placed here; publishes a new snapshot if anything
    /// changed.
    fn refresh(&self) {
        let current = self.sites.load();
        let mut next: HashMap<String, Arc<Site>> = HashMap::new();
        let mut changed = false;
        let mut wanted_pins: HashSet<Hash> = HashSet::new();
        let mut complete = true;
        for inst in self.node.deployments.of("site") {
            let old = current.get(&inst.name);
            // Unchanged, and everything it keeps is here: as it is.
            if let Some(s) = old.filter(|s| {
                s.deployment_version == inst.version
                    && s.here == inst.here
                    && s.elsewhere == inst.elsewhere
                    && (!s.here || s.previews.len() == s.spec.versions.len())
                    && s.live.is_some()
            }) {
                if s.here {
                    for v in s.previews.values() {
                        wanted_pins.insert(v.id);
                        wanted_pins.extend(v.blobs.iter().copied());
                    }
                }
                next.insert(inst.name, s.clone());
                continue;
            }
            let spec = match SiteSpec::parse(&inst.spec) {
                Ok(s) => s,
                Err(why) => {
                    if old.is_none_or(|s| s.deployment_version != inst.version) {
                        tracing::warn!(site = %inst.name, "site spec refused: {why}");
                    }
                    continue;
                }
            };
            let mut previews = HashMap::new();
            for info in &spec.versions {
                let Some(id) = parse_hex32(&info.id) else {
                    continue;
                };
                let is_live = info.id == spec.live;
                // A node the site is not placed on holds only the live
                // manifest (to serve when its nodes do not answer).
                if !inst.here && !is_live {
                    continue;
                }
                let Some(v) = self.version(&id, true) else {
                    complete = false;
                    continue;
                };
                if inst.here {
                    wanted_pins.insert(id);
                    wanted_pins.extend(v.blobs.iter().copied());
                    if !self.whole(&v) {
                        complete = false;
                        continue;
                    }
                }
                previews.insert(info.id[..PREVIEW_PREFIX].to_string(), v);
            }
            let live = previews
                .get(&spec.live[..PREVIEW_PREFIX])
                .cloned()
                .or_else(|| {
                    // The new version is not whole here yet: the one served so
                    // far stays, if the spec still keeps it.
                    old.and_then(|s| s.live.clone()).filter(|v| {
                        spec.versions
                            .iter()
                            .any(|i| parse_hex32(&i.id) == Some(v.id))
                    })
                });
            let usage = old.map_or_else(Default::default, |s| s.usage.clone());
            let site = Site {
                deployment_version: inst.version,
                here: inst.here,
                elsewhere: inst.elsewhere,
                live,
                previews,
                usage,
                spec,
            };
            let same = old.is_some_and(|s| {
                s.deployment_version == site.deployment_version
                    && s.here == site.here
                    && s.elsewhere == site.elsewhere
                    && s.live.as_ref().map(|v| v.id) == site.live.as_ref().map(|v| v.id)
                    && s.previews.len() == site.previews.len()
            });
            if same {
                if let Some(s) = old {
                    next.insert(inst.name, s.clone());
                }
                continue;
            }
            changed = true;
            next.insert(inst.name, Arc::new(site));
        }
        if changed || next.len() != current.len() {
            let mut hosts = HashMap::new();
            for (name, s) in &next {
                let name: Arc<str> = name.as_str().into();
                for h in &s.spec.hosts {
                    hosts.insert(h.clone(), name.clone());
                }
            }
            self.hosts.set(hosts);
            self.counters
                .sites
                .store(next.len() as u64, Ordering::Relaxed);
            self.sites.store(Arc::new(next));
        }
        self.update_pins(wanted_pins, complete);
        // Compiled versions no site keeps any more are dropped.
        let kept: HashSet<Hash> = self
            .sites
            .load()
            .values()
            .flat_map(|s| {
                s.previews
                    .values()
                    .map(|v| v.id)
                    .chain(s.live.iter().map(|v| v.id))
            })
            .collect();
        self.versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| kept.contains(id));
    }

    /// Pins what the kept versions need; unpins what they no longer do
    /// (only once every version could be read, so nothing still needed is
    /// let go while a manifest is missing).
    fn update_pins(&self, wanted: HashSet<Hash>, complete: bool) {
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        let add: Vec<Hash> = wanted.difference(&pins).copied().collect();
        let drop: Vec<Hash> = if complete {
            pins.difference(&wanted).copied().collect()
        } else {
            Vec::new()
        };
        if add.is_empty() && drop.is_empty() {
            return;
        }
        let store = &self.node.store;
        if !add.is_empty() {
            match store.pin(&add, true) {
                // Only those the store holds are pinned; the rest next round.
                Ok(_) => pins.extend(add.iter().filter(|h| store.size(h).is_some())),
                Err(e) => tracing::warn!("cannot pin a site's blobs: {e}"),
            }
        }
        if !drop.is_empty() {
            match store.pin(&drop, false) {
                Ok(_) => {
                    for h in &drop {
                        pins.remove(h);
                    }
                }
                Err(e) => tracing::warn!("cannot unpin a pruned version's blobs: {e}"),
            }
        }
        self.counters
            .pinned
            .store(pins.len() as u64, Ordering::Relaxed);
        let list: String = pins.iter().map(|h| format!("{}\n", hex(h))).collect();
        let path = self.node.data_dir.join("pins");
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, list)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .is_err()
        {
            tracing::warn!("cannot record the sites' pins in {}", path.display());
        }
    }

    fn locate<'a>(&self, host: Option<&'a [u8]>, path: &'a [u8]) -> Option<Located<'a>> {
        if let Some(rest) = path.strip_prefix(b"/sites/") {
            let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
            let label = std::str::from_utf8(&rest[..end]).ok()?;
            let (site, preview) = match label.split_once('@') {
                Some((s, p)) => (s, Some(p)),
                None => (label, None),
            };
            let inner = if end == rest.len() {
                &b"/"[..]
            } else {
                &rest[end..]
            };
            return Some(Located {
                site: DeploymentName::Named(site),
                preview,
                path: inner,
                path_form: true,
            });
        }
        let host = strip_port(host?);
        let host = std::str::from_utf8(host).ok()?;
        let under = host
            .len()
            .checked_sub(self.dot_suffix.len())
            .filter(|&at| {
                host.is_char_boundary(at) && host[at..].eq_ignore_ascii_case(&self.dot_suffix)
            })
            .map(|at| &host[..at]);
        let (site, preview) = match under {
            Some(labels) => match labels.split_once('.') {
                Some((p, s)) if !s.contains('.') => (DeploymentName::Named(s), Some(p)),
                Some(_) => return None,
                None => (DeploymentName::Named(labels), None),
            },
            None => (DeploymentName::Host(self.hosts.get(host.as_bytes())?), None),
        };
        Some(Located {
            site,
            preview,
            path,
            path_form: false,
        })
    }
}

/// `%XX` decoded; None for a path that is not UTF-8 once decoded or has a
/// bad escape. Borrowed when there is nothing to decode.
fn decode(path: &[u8]) -> Option<Cow<'_, str>> {
    if !path.contains(&b'%') {
        return std::str::from_utf8(path).ok().map(Cow::Borrowed);
    }
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i] == b'%' {
            let hexd = path.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hexd).ok()?, 16).ok()?;
            out.push(v);
            i += 3;
        } else {
            out.push(path[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

impl Service for Sites {
    fn name(&self) -> &str {
        "site"
    }

    fn mounts(&self) -> Vec<Mount> {
        vec![
            Mount::Prefix("/sites/".into()),
            Mount::Host(format!("*.{}", self.config.host_suffix)),
            Mount::DeployedHosts,
        ]
    }

    fn pool(&self) -> PoolConfig {
        PoolConfig {
            threads: self.config.workers,
            queue: self.config.queue,
            deadline: Duration::from_millis(self.config.proxy_timeout_ms + 5_000),
        }
    }

    fn max_body_bytes(&self) -> u64 {
        16 << 20
    }

    fn claims_host(&self, host: &[u8]) -> bool {
        self.hosts.get(host).is_some()
    }

    fn decide(&self, req: &Request<'_>) -> Decision {
        if let Some(name) = req.path.strip_prefix(STATUS_PREFIX.as_bytes()) {
            return Decision::Reply(self.status(name));
        }
        let Some(mut at) = self.locate(req.host, req.path) else {
            return Decision::Reply(text(Status::NotFound, "no such site\n"));
        };
        // Proxied from another node in the path form for a client that
        // asked at the site's host: its redirects are host-relative.
        if req.headers.get(HOST).is_some() {
            at.path_form = false;
        }
        let sites = self.sites.load();
        let Some(site) = sites.get(&*at.site) else {
            return Decision::Reply(text(
                Status::NotFound,
                "no site by that name on this network\n",
            ));
        };
        let hop = req.headers.get(HOP).is_some();
        if !site.here && !site.elsewhere.is_empty() && !hop {
            if let (true, Some(to)) = (self.node.redirect_elsewhere, site.elsewhere.first()) {
                let label = match at.preview {
                    Some(p) => format!("{}@{p}", at.site),
                    None => at.site.to_string(),
                };
                let location = format!(
                    "http://{to}/sites/{label}{}",
                    String::from_utf8_lossy(&url_of(at.path, req.query))
                );
                return Decision::Reply(
                    text(
                        Status::TemporaryRedirect,
                        "this site runs on another node\n",
                    )
                    .header("Location", location),
                );
            }
            return Decision::Work;
        }
        let version = match at.preview {
            Some(p) => site.previews.get(p).or_else(|| {
                // A longer prefix of a kept version also names it.
                (p.len() > PREVIEW_PREFIX)
                    .then(|| site.previews.get(&p[..PREVIEW_PREFIX]))
                    .flatten()
                    .filter(|v| hex(&v.id).starts_with(p))
            }),
            None => site.live.as_ref(),
        };
        let Some(version) = version else {
            return Decision::Reply(match at.preview {
                Some(_) => text(Status::NotFound, "no such version of this site is kept\n"),
                None => text(
                    Status::ServiceUnavailable,
                    "the site's version is still being copied to this node\n",
                )
                .header("Retry-After", "1"),
            });
        };
        let Some(path) = decode(at.path) else {
            return Decision::Reply(text(
                Status::BadRequest,
                "the path is not valid UTF-8 once decoded\n",
            ));
        };
        let query = std::str::from_utf8(req.query).unwrap_or("");
        match version.resolve(&path, query) {
            Outcome::Proxy(_) | Outcome::Function(_) => Decision::Work,
            _ if !matches!(req.method, Method::Get | Method::Head) => Decision::Reply(
                text(Status::MethodNotAllowed, "a site answers GET and HEAD\n")
                    .header("Allow", "GET, HEAD"),
            ),
            Outcome::File {
                file,
                status,
                headers,
            } => {
                let enc = if file.has_variants() {
                    choose_encoding(req.headers.get("accept-encoding"))
                } else {
                    Encoding::Identity
                };
                let (reply, size) = blob_reply(file, enc, status, headers);
                if status == 200 {
                    self.counters.hits.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.counters.not_found.fetch_add(1, Ordering::Relaxed);
                }
                site.usage.requests.fetch_add(1, Ordering::Relaxed);
                site.usage.bytes.fetch_add(size, Ordering::Relaxed);
                Decision::Blob(reply)
            }
            Outcome::Redirect { status, location } => {
                self.counters.redirects.fetch_add(1, Ordering::Relaxed);
                site.usage.requests.fetch_add(1, Ordering::Relaxed);
                let location = if at.path_form && location.starts_with('/') {
                    let label = match at.preview {
                        Some(p) => format!("{}@{p}", at.site),
                        None => at.site.to_string(),
                    };
                    format!("/sites/{label}{location}")
                } else {
                    location
                };
                Decision::Reply(
                    text(Status::passed_on(status), "redirecting\n").header("Location", location),
                )
            }
            Outcome::NotFound => {
                self.counters.not_found.fetch_add(1, Ordering::Relaxed);
                site.usage.requests.fetch_add(1, Ordering::Relaxed);
                Decision::Reply(text(Status::NotFound, "not found\n"))
            }
        }
    }

    fn handle(&self, req: OwnedRequest, body: RequestBody) -> Reply {
        let Some(mut at) = self.locate(req.host.as_deref(), &req.path) else {
            return text(Status::NotFound, "no such site\n");
        };
        if req.header(HOST).is_some() {
            at.path_form = false;
        }
        let sites = self.sites.load();
        let Some(site) = sites.get(&*at.site).cloned() else {
            return text(Status::NotFound, "no site by that name on this network\n");
        };
        let (site_name, preview, path_form) = (
            at.site.to_string(),
            at.preview.map(str::to_string),
            at.path_form,
        );
        let inner = at.path.to_vec();
        drop(sites);
        let hop = req.header(HOP).is_some();
        let body = if !site.here && !site.elsewhere.is_empty() && !hop {
            let bytes = match body.read_all() {
                Ok(b) => b,
                Err(e) => return text(Status::BadRequest, &format!("{e}\n")),
            };
            // Passed on in the path form (the receiver routes by path, not
            // by this node's host names), saying whether the client used the
            // site's host.
            let label = match &preview {
                Some(p) => format!("{site_name}@{p}"),
                None => site_name.clone(),
            };
            let mut target = format!("/sites/{label}").into_bytes();
            target.extend_from_slice(&inner);
            for to in &site.elsewhere {
                if let Some(reply) = self.proxy_to_node(*to, &req, &target, !path_form, &bytes) {
                    return reply;
                }
            }
            RequestBody::from_bytes(bytes)
        } else {
            body
        };
        // Served here: none of the site's nodes answered, or this is one.
        let version = match &preview {
            Some(p) => site
                .previews
                .get(p.get(..PREVIEW_PREFIX).unwrap_or(p))
                .cloned(),
            None => site.live.clone(),
        };
        let Some(version) = version else {
            return text(
                Status::ServiceUnavailable,
                "the site's version is not on this node yet\n",
            )
            .header("Retry-After", "1");
        };
        let Some(path) = decode(&inner) else {
            return text(
                Status::BadRequest,
                "the path is not valid UTF-8 once decoded\n",
            );
        };
        let query = String::from_utf8_lossy(&req.query).into_owned();
        site.usage.requests.fetch_add(1, Ordering::Relaxed);
        match version.resolve(&path, &query) {
            Outcome::Proxy(url) => self.proxy_to_origin(&url, &req, body),
            // The function answers the path itself (the node's own
            // function service, in its path form).
            Outcome::Function(name) => match self.node.listen {
                Some(me) => {
                    let mut url =
                        format!("http://{me}/fn/{name}{}", String::from_utf8_lossy(&inner));
                    if !query.is_empty() {
                        url.push('?');
                        url.push_str(&query);
                    }
                    self.proxy_to_origin(&url, &req, body)
                }
                None => text(
                    Status::BadGateway,
                    &format!("this path is served by the function {name:?}, and this node runs no edge functions\n"),
                ),
            },
            _ if !matches!(req.method, Method::Get | Method::Head) => {
                text(Status::MethodNotAllowed, "a site answers GET and HEAD\n").header("Allow", "GET, HEAD")
            }
            Outcome::File { file, status, headers } => {
                let enc = if file.has_variants() {
                    choose_encoding(req.header("accept-encoding"))
                } else {
                    Encoding::Identity
                };
                let (reply, size) = blob_reply(file, enc, status, headers);
                if self.node.store.size(&reply.hash).is_none() {
                    if !self.node.cluster.fetch(&reply.hash) {
                        return text(Status::BadGateway, "the file is on none of the site's nodes that answer\n");
                    }
                    self.counters.fetched.fetch_add(1, Ordering::Relaxed);
                }
                site.usage.bytes.fetch_add(size, Ordering::Relaxed);
                Reply::blob(reply)
            }
            Outcome::Redirect { status, location } => {
                let location = if path_form && location.starts_with('/') {
                    let label = match &preview {
                        Some(p) => format!("{site_name}@{p}"),
                        None => site_name.clone(),
                    };
                    format!("/sites/{label}{location}")
                } else {
                    location
                };
                text(Status::passed_on(status), "redirecting\n").header("Location", location)
            }
            Outcome::NotFound => text(Status::NotFound, "not found\n"),
        }
    }
}

impl Sites {
    /// `GET /sites/_status/{name}`: the version this node serves, and those
    /// it holds whole, as JSON (what `tessera deploy site` waits on).
    fn status(&self, name: &[u8]) -> Reply {
        let name = String::from_utf8_lossy(name);
        let sites = self.sites.load();
        let Some(site) = sites.get(name.as_ref()) else {
            return text(Status::NotFound, "no site by that name on this network\n");
        };
        let mut ready: Vec<String> = site.previews.values().map(|v| hex(&v.id)).collect();
        ready.sort();
        let v = serde_json::json!({
            "name": name,
            "live": site.live.as_ref().map(|v| hex(&v.id)),
            "wanted": site.spec.live,
            "here": site.here,
            "ready": ready,
            "files": site.live.as_ref().map(|v| v.file_count()),
            "host_suffix": self.config.host_suffix,
        });
        Reply::new(Status::Ok, "application/json", format!("{v}\n"))
            .header("Cache-Control", "no-store")
    }

    /// The request passed to `to`, a node that runs the site; None when it
    /// does not answer at all.
    fn proxy_to_node(
        &self,
        to: SocketAddr,
        req: &OwnedRequest,
        path: &[u8],
        host_form: bool,
        body: &[u8],
    ) -> Option<Reply> {
        let url = format!(
            "http://{to}{}",
            String::from_utf8_lossy(&url_of(path, &req.query))
        );
        let mut headers = forwarded(req);
        headers.push((HOP.into(), b"1".to_vec()));
        if host_form {
            headers.push((HOST.into(), b"1".to_vec()));
        }
        let body = (!matches!(req.method, Method::Get | Method::Head)).then_some(body);
        match self.send(req.method.as_str(), &url, &headers, body) {
            Ok(reply) => {
                self.counters.proxied.fetch_add(1, Ordering::Relaxed);
                Some(reply)
            }
            Err(e) => {
                tracing::debug!(%to, "the site's node did not answer: {e}");
                None
            }
        }
    }

    /// A `200` rule to another origin: the request passed on, the answer
    /// streamed back.
    fn proxy_to_origin(&self, url: &str, req: &OwnedRequest, mut body: RequestBody) -> Reply {
        let mut bytes = Vec::new();
        if !matches!(req.method, Method::Get | Method::Head) {
            if let Err(e) = body.read_to_end(&mut bytes) {
                return text(Status::PayloadTooLarge, &format!("{e}\n"));
            }
        }
        let body = (!matches!(req.method, Method::Get | Method::Head)).then_some(&bytes[..]);
        match self.send(req.method.as_str(), url, &forwarded(req), body) {
            Ok(r) => r,
            Err(e) => text(
                Status::BadGateway,
                &format!("the proxied origin did not answer: {e}\n"),
            ),
        }
    }

    fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, Vec<u8>)],
        body: Option<&[u8]>,
    ) -> Result<Reply, String> {
        let mut b = http::Request::builder().method(method).uri(url);
        for (n, v) in headers {
            b = b.header(n.as_str(), v.as_slice());
        }
        let request = b
            .body(body.map(<[u8]>::to_vec).unwrap_or_default())
            .map_err(|e| e.to_string())?;
        let resp = self.agent.run(request).map_err(|e| e.to_string())?;
        let status = Status::passed_on(resp.status().as_u16());
        let mut kept = Vec::new();
        let mut content_type = "application/octet-stream".to_string();
        for (n, v) in resp.headers() {
            let n = n.as_str();
            if n == "content-type" {
                content_type = v.to_str().unwrap_or("application/octet-stream").to_string();
            } else if !matches!(
                n,
                "content-length" | "transfer-encoding" | "connection" | "keep-alive"
            ) {
                kept.push((n.to_string(), v.as_bytes().to_vec()));
            }
        }
        let mut reader = resp.into_body().into_reader();
        let mut reply = Reply::streamed(status, &content_type, move |out| {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = reader.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    return Ok(());
                }
                out.send(buf[..n].to_vec())
                    .map_err(|_| "client gone".to_string())?;
            }
        });
        reply.headers.extend(kept);
        Ok(reply)
    }
}

/// Request headers passed on by a proxy (not the hop-by-hop ones, nor the
/// host: the URL names it).
fn forwarded(req: &OwnedRequest) -> Vec<(String, Vec<u8>)> {
    req.headers
        .iter()
        .filter(|(n, _)| {
            let n = String::from_utf8_lossy(n).to_ascii_lowercase();
            !matches!(
                n.as_str(),
                "host"
                    | "connection"
                    | "keep-alive"
                    | "transfer-encoding"
                    | "te"
                    | "upgrade"
                    | "content-length"
                    | "proxy-connection"
            ) && n != HOP
                && n != HOST
        })
        .map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), v.clone()))
        .collect()
}

fn url_of(path: &[u8], query: &[u8]) -> Vec<u8> {
    let mut u = path.to_vec();
    if !query.is_empty() {
        u.push(b'?');
        u.extend_from_slice(query);
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_decode() {
        assert_eq!(decode(b"/a%20b.html").as_deref(), Some("/a b.html"));
        assert_eq!(decode(b"/plain").as_deref(), Some("/plain"));
        assert!(
            decode(b"/bad%zz").is_none()
                && decode(b"/bad%ff").is_none()
                && decode(b"/cut%2").is_none()
        );
    }
}
