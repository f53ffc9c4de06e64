//! IPFS as a [`Service`]: the gateway, delegated routing, imports and the
//! Pinning Service API behind their mounts.
//!
//! The way of a request:
//! - **On the core** ([`Service::decide`]): a raw block the node indexed
//!   (`/ipfs/{cid}?format=raw`, or `Accept: application/vnd.ipld.raw`, no
//!   path) is answered as the blob that holds it: zero-copy, ranges,
//!   conditional requests, exactly as `/blobs/{hash}`. Everything else goes
//!   to the pool.
//! - **On the pool** ([`Service::handle`]): CAR answers (streamed as the DAG
//!   is walked), files and listings, paths, blocks the node lacks (fetched
//!   from the pins' origins and from peers, each block verified, then kept),
//!   `/routing/v1/providers`, imports, and `/pins`.
//! - **The watcher** (a thread, [`crate::pins`]): every pin placed on this
//!   node is fetched whole, its blobs pinned; usage is metered for billing.

use std::collections::HashSet;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cid::Cid;
use serde::Deserialize;
use service_api::{
    BlobReply, Decision, Method, Mount, Node, OwnedRequest, PoolConfig, Reply, Request,
    RequestBody, Service, Status,
};

use crate::car::{self, CarReader};
use crate::dag::{self, Blocks, Entity, WalkError};
use crate::gateway::{self, Ask, AskError, Format};
use crate::index::Index;
use crate::pins::Pins;
use crate::{cid_text, parse_cid, verify_block, DAG_CBOR, DAG_PB};

/// `[services.ipfs]` in the node's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IpfsConfig {
    pub workers: usize,
    pub queue: usize,
    /// How often the pin watcher looks at the deployments, ms.
    pub watch_ms: u64,
    /// One fetch from an origin or a peer, whole, ms.
    pub fetch_timeout_ms: u64,
    /// Whether a pin's origins may be on loopback, private or link-local
    /// addresses. Off by default: a pin request could otherwise make the
    /// node probe its operator's network.
    pub allow_private_origins: bool,
    /// The most new block bytes one CAR may bring, MiB: a `POST
    /// /ipfs/_import`, or one answer of an origin or peer (a larger DAG is
    /// fetched in more answers).
    pub max_import_mb: u64,
    /// Peers asked for a block or DAG this node lacks, nearest first.
    pub peers_asked: usize,
}

impl Default for IpfsConfig {
    fn default() -> Self {
        IpfsConfig {
            workers: std::thread::available_parallelism().map_or(4, |n| n.get().max(2)) * 4,
            queue: 4096,
            watch_ms: 500,
            fetch_timeout_ms: 60_000,
            allow_private_origins: false,
            max_import_mb: 1024,
            peers_asked: 8,
        }
    }
}

/// What the service counts.
pub struct Counters {
    pub raw_on_core: Arc<AtomicU64>,
    pub car_answers: Arc<AtomicU64>,
    pub plain_answers: Arc<AtomicU64>,
    pub blocks_fetched: Arc<AtomicU64>,
    pub blocks_refused: Arc<AtomicU64>,
    pub bytes_served: Arc<AtomicU64>,
    pub blocks: Arc<AtomicU64>,
}

pub struct Ipfs {
    pub(crate) node: Node,
    pub(crate) config: IpfsConfig,
    pub(crate) index: Arc<Index>,
    pub(crate) pins: Arc<Pins>,
    pub(crate) counters: Counters,
    agent: ureq::Agent,
    raw_type: Arc<str>,
    immutable: Arc<str>,
    raw_headers: Arc<[(String, String)]>,
}

/// `Cache-Control` of everything under `/ipfs/`: a CID's content never
/// changes.
pub const IMMUTABLE: &str = "public, max-age=29030400, immutable";
pub const RAW_TYPE: &str = "application/vnd.ipld.raw";

fn text(status: Status, msg: &str) -> Reply {
    Reply::text(status, &format!("{msg}\n"))
}

impl Ipfs {
    pub fn new(node: &Node) -> Result<Arc<Ipfs>, String> {
        let config: IpfsConfig = node.config()?;
        let index = Index::open(&node.data_dir.join("blocks.redb"), node.store.clone())
            .map_err(|e| format!("cannot open the block index: {e}"))?;
        let m = &node.metrics;
        let counters = Counters {
            raw_on_core: m.counter(
                "raw_blocks_on_core",
                "Raw blocks answered on the core, as blobs.",
            ),
            car_answers: m.counter("car_answers", "CAR answers."),
            plain_answers: m.counter("file_answers", "Files and listings answered."),
            blocks_fetched: m.counter(
                "blocks_fetched",
                "Blocks fetched from origins and peers, verified and kept.",
            ),
            blocks_refused: m.counter(
                "blocks_refused",
                "Blocks refused: they did not hash to their CID, or were not asked for.",
            ),
            bytes_served: m.counter("bytes_served", "Body bytes of CAR and file answers."),
            blocks: m.gauge("blocks", "Blocks in the index."),
        };
        counters.blocks.store(index.len() as u64, Ordering::Relaxed);
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(3)
            .timeout_connect(Some(Duration::from_secs(3)))
            .timeout_global(Some(Duration::from_millis(config.fetch_timeout_ms)))
            .build()
            .into();
        let index = Arc::new(index);
        let pins = Pins::new(node, index.clone())?;
        let ipfs = Arc::new(Ipfs {
            node: node.clone(),
            config,
            index,
            pins,
            counters,
            agent,
            raw_type: RAW_TYPE.into(),
            immutable: IMMUTABLE.into(),
            raw_headers: vec![("x-content-type-options".to_string(), "nosniff".to_string())].into(),
        });
        crate::pins::start_watcher(&ipfs);
        Ok(ipfs)
    }

    /// Usage per pin since the node started, in the ledger's byte units.
    pub fn usage_units(&self) -> Vec<(String, u64)> {
        self.pins.usage_units()
    }

    /// A raw block answered on the core, if the node holds it.
    fn raw_on_core(&self, req: &Request<'_>) -> Option<Decision> {
        let rest = req.path.strip_prefix(b"/ipfs/")?;
        if rest.contains(&b'/') {
            return None;
        }
        let (format, _) = gateway::wants(req.query, req.headers.get("accept")).ok()?;
        if format != Format::Raw {
            return None;
        }
        let cid = parse_cid(rest)?;
        let e = self.index.get(&cid)?;
        self.counters.raw_on_core.fetch_add(1, Ordering::Relaxed);
        // Billed to the pin that holds it. The core does not say what it
        // sent, so a range or a conditional request is not counted (an
        // owner is never charged for bytes that may not have gone out).
        if req.method == Method::Get {
            let meter = self.pins.meter();
            if let Some(n) = meter.of(&e.blob) {
                if req.headers.get("range").is_none() && req.headers.get("if-none-match").is_none()
                {
                    n.fetch_add(u64::from(e.size), Ordering::Relaxed);
                }
            }
        }
        Some(Decision::Blob(BlobReply {
            hash: e.blob,
            content_type: self.raw_type.clone(),
            cache_control: Some(self.immutable.clone()),
            headers: Some(self.raw_headers.clone()),
            stored_at: None,
            status: None,
        }))
    }

    /// Whether an origin URL may be fetched from (the private-network rule).
    fn origin_allowed(&self, url: &str) -> bool {
        if self.config.allow_private_origins {
            return true;
        }
        let Some(rest) = url.split_once("://").map(|(_, r)| r) else {
            return false;
        };
        let authority = rest.split('/').next().unwrap_or("");
        // A port after the host (after the `]` of an IPv6 literal).
        let has_port = match authority.rfind(']') {
            Some(i) => authority[i..].contains(':'),
            None => authority.contains(':'),
        };
        let host_port = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        match std::net::ToSocketAddrs::to_socket_addrs(&host_port) {
            Ok(addrs) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                !addrs.is_empty() && addrs.iter().all(|a| !service_api::is_private_ip(a.ip()))
            }
            Err(_) => false,
        }
    }

    /// Where `cid` may be had: peers first (they answer from their store
    /// only), then the origins recorded for it. Base URLs.
    fn sources(&self, cid: &Cid) -> Vec<(String, bool)> {
        let mut out: Vec<(String, bool)> = Vec::new();
        let placed = self.pins.placed_for(cid);
        let mut members = self.node.cluster.members();
        members.retain(|m| m.alive);
        members.sort_by(|a, b| {
            let pa = placed.contains(&a.addr);
            let pb = placed.contains(&b.addr);
            pb.cmp(&pa).then(
                a.rtt_ms
                    .unwrap_or(f64::MAX)
                    .total_cmp(&b.rtt_ms.unwrap_or(f64::MAX)),
            )
        });
        for m in members.iter().take(self.config.peers_asked) {
            out.push((format!("http://{}", m.addr), true));
        }
        for o in self.pins.origins_for(cid) {
            if let Some(url) = crate::pins::origin_url(&o) {
                if self.origin_allowed(&url) && !out.iter().any(|(u, _)| *u == url) {
                    out.push((url, false));
                }
            }
        }
        out
    }

    /// One CAR of the DAG under `cid` from one source (a peer answers from
    /// its store only), read into the index. Whether the source answered.
    fn fetch_car(&self, base: &str, peer: bool, cid: &Cid) -> bool {
        let url = format!("{base}/ipfs/{}?format=car&dag-scope=all", cid_text(cid));
        let mut req = self.agent.get(&url).header("accept", car::MEDIA_TYPE);
        if peer {
            req = req.header("cache-control", "only-if-cached");
        }
        let resp = match req.call() {
            Ok(r) if r.status() == 200 => r,
            Ok(r) => {
                tracing::debug!("ipfs: {url}: {}", r.status());
                return false;
            }
            Err(why) => {
                tracing::debug!("ipfs: {url}: {why}");
                return false;
            }
        };
        let mut body = resp.into_body();
        if let Err(why) = self.ingest(&mut body.as_reader(), Some(cid)) {
            tracing::warn!("ipfs: {url}: {why}");
        }
        true
    }

    /// The first block of the DAG under `root` that this node lacks; None
    /// when it holds the DAG whole.
    pub(crate) fn first_missing(&self, root: &Cid) -> Option<Cid> {
        held_dag(&self.index, root, usize::MAX).err().flatten()
    }

    /// Fetches the DAG under `root` until this node holds it whole: from
    /// the peers (which answer from their stores only, and may hold part of
    /// it while they fetch it themselves), then from the origins recorded
    /// for `pin` (the root of the pin this is for). Each round asks every
    /// source for the first block still missing, with everything under it,
    /// as a CAR; only blocks that verify and that the DAG links to are kept.
    /// It stops when a round over every source does not bring that block.
    /// True once the DAG is whole.
    pub(crate) fn fetch_dag(&self, root: &Cid, pin: &Cid) -> bool {
        let Some(mut missing) = self.first_missing(root) else {
            return true;
        };
        let sources = self.sources(pin);
        loop {
            // DFS order: a round that did not bring the first block
            // missing cannot make the DAG whole.
            let start = missing;
            for (base, peer) in &sources {
                // Peers are asked for the first block missing and what is
                // under it; an origin too, then for the root (one that
                // serves only the root it was named for): what is held
                // already is not kept twice.
                let mut asks = vec![missing];
                if !*peer && missing != *root {
                    asks.push(*root);
                }
                for ask in asks {
                    if self.fetch_car(base, *peer, &ask) {
                        break;
                    }
                }
                match self.first_missing(root) {
                    None => return true,
                    Some(m) => missing = m,
                }
            }
            if missing == start {
                return false;
            }
        }
    }

    /// Fetches one block from the first source that has it, verified.
    fn fetch_block(&self, cid: &Cid) -> Option<Vec<u8>> {
        for (base, peer) in self.sources(cid) {
            let url = format!("{base}/ipfs/{}?format=raw", cid_text(cid));
            let mut req = self.agent.get(&url).header("accept", RAW_TYPE);
            if peer {
                req = req.header("cache-control", "only-if-cached");
            }
            let Ok(resp) = req.call() else {
                continue;
            };
            if resp.status() != 200 {
                continue;
            }
            let mut bytes = Vec::new();
            let mut body = resp.into_body();
            if body
                .as_reader()
                .take(crate::MAX_BLOCK_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
                .is_err()
            {
                continue;
            }
            match self.index.put(cid, &bytes) {
                Ok(_) => {
                    self.counters.blocks_fetched.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .blocks
                        .store(self.index.len() as u64, Ordering::Relaxed);
                    return Some(bytes);
                }
                Err(why) => {
                    self.counters.blocks_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("ipfs: {url}: block refused: {why}");
                }
            }
        }
        None
    }

    /// Reads a CAR into the index, each block verified; the first block
    /// that does not verify ends the read (the source is lying), and what
    /// verified before it is kept. With `root`, only blocks the DAG under it
    /// links to stay indexed, whatever order the CAR brings them in (a DFS
    /// CAR from a gateway brings parents first, `ipfs-car pack` brings them
    /// last): the others are forgotten at the end, so a source cannot fill
    /// the index with blocks nobody asked for, and it may send at most
    /// `max_import_mb`. Blocks newly indexed and kept.
    pub(crate) fn ingest(&self, r: &mut dyn Read, root: Option<&Cid>) -> Result<u64, String> {
        let mut car = CarReader::new(r).map_err(|e| e.to_string())?;
        let limit = self.config.max_import_mb << 20;
        let mut read = 0u64;
        // Reached from the root (or held before); their links are wanted.
        let mut wanted: HashSet<Cid> = HashSet::new();
        // Indexed by this read but not (yet) reached: their links.
        let mut unreached: std::collections::HashMap<Cid, Vec<Cid>> = Default::default();
        if let Some(root) = root {
            wanted.insert(*root);
        }
        let mut kept = 0u64;
        let mut batch: Vec<(Cid, Vec<u8>)> = Vec::new();
        let mut batch_bytes = 0usize;
        let mut result = Ok(());
        loop {
            let (cid, block) = match car.next_block() {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(e) => {
                    result = Err(e.to_string());
                    break;
                }
            };
            if let Err(e) = verify_block(&cid, &block) {
                self.counters.blocks_refused.fetch_add(1, Ordering::Relaxed);
                result = Err(format!("block {cid}: {e}"));
                break;
            }
            if root.is_some() {
                let reached = wanted.remove(&cid);
                if !reached && (self.index.has(&cid) || unreached.contains_key(&cid)) {
                    continue; // held already, or a duplicate
                }
                if reached && self.index.has(&cid) {
                    wanted.extend(links(&cid, &block));
                    continue; // held already: not stored again
                }
                let out = links(&cid, &block);
                if reached {
                    wanted.extend(out);
                } else {
                    unreached.insert(cid, out);
                }
            }
            // Only new blocks count against the limit.
            read += block.len() as u64;
            if read > limit {
                result = Err(format!("more than {} MiB of new blocks", limit >> 20));
                break;
            }
            batch_bytes += block.len();
            batch.push((cid, block));
            if batch.len() >= 256 || batch_bytes >= 16 << 20 {
                self.flush(&mut batch, &mut kept)?;
                batch_bytes = 0;
            }
        }
        self.flush(&mut batch, &mut kept)?;
        if root.is_some() && !unreached.is_empty() {
            // Blocks that came before their parents are reached now.
            let mut todo: Vec<Cid> = wanted.into_iter().collect();
            while let Some(c) = todo.pop() {
                if let Some(out) = unreached.remove(&c) {
                    todo.extend(out);
                }
            }
            let stray: Vec<Cid> = unreached.into_keys().collect();
            self.counters
                .blocks_refused
                .fetch_add(stray.len() as u64, Ordering::Relaxed);
            kept -= stray.len() as u64;
            self.index.forget(&stray).map_err(|e| e.to_string())?;
        }
        result.map(|()| kept)
    }

    fn flush(&self, batch: &mut Vec<(Cid, Vec<u8>)>, kept: &mut u64) -> Result<(), String> {
        if batch.is_empty() {
            return Ok(());
        }
        let refs: Vec<(Cid, &[u8])> = batch.iter().map(|(c, b)| (*c, &b[..])).collect();
        self.index.put_all(&refs).map_err(|e| e.to_string())?;
        self.counters
            .blocks_fetched
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.counters
            .blocks
            .store(self.index.len() as u64, Ordering::Relaxed);
        *kept += batch.len() as u64;
        batch.clear();
        Ok(())
    }

    fn gateway(&self, req: &OwnedRequest) -> Reply {
        let ask = match gateway::parse(
            &req.path,
            &req.query,
            req.header("accept"),
            req.header("cache-control"),
        ) {
            Ok(a) => a,
            Err(AskError::Bad(why)) => return text(Status::BadRequest, &why),
            Err(AskError::NotAcceptable(why)) => return text(Status::NotAcceptable, &why),
        };
        let head = req.method == Method::Head;
        if !self.index.has(&ask.cid) {
            if ask.only_if_cached {
                return text(
                    Status::PreconditionFailed,
                    &format!("{} is not on this node (only-if-cached)", ask.cid),
                );
            }
            // A whole DAG is fetched at once for a CAR of all of it; for
            // anything else the root is enough, and the walk fetches what
            // else it needs, block by block.
            let fetched =
                if ask.format == Format::Car && ask.scope == dag::Scope::All && ask.path.is_empty()
                {
                    self.fetch_dag(&ask.cid, &ask.cid)
                } else {
                    self.fetch_block(&ask.cid).is_some()
                };
            if !fetched {
                return text(
                    Status::NotFound,
                    &format!("{} is not on this node, its origins or its peers", ask.cid),
                );
            }
        }
        let source = Source {
            ipfs: self,
            local_only: ask.only_if_cached,
        };
        let segs: Vec<&str> = ask.path.iter().map(String::as_str).collect();
        let resolved = match dag::resolve(&source, &ask.cid, &segs) {
            Ok(r) => r,
            Err(e) => return self.walk_error(&ask, e),
        };
        let mut roots = resolved.via.clone();
        roots.push(resolved.cid);
        let roots_header = roots.iter().map(cid_text).collect::<Vec<_>>().join(",");
        let ipfs_path = String::from_utf8_lossy(&req.path).into_owned();
        let with_common = |r: Reply| {
            r.header("cache-control", IMMUTABLE)
                .header("x-ipfs-path", ipfs_path.clone())
                .header("x-ipfs-roots", roots_header.clone())
                .header("vary", "Accept")
                .header("x-content-type-options", "nosniff")
        };
        match ask.format {
            Format::Raw => {
                let block = match source.block(&resolved.cid) {
                    Ok(Some(b)) => b,
                    Ok(None) => return self.walk_error(&ask, WalkError::Missing(resolved.cid)),
                    Err(e) => return self.walk_error(&ask, WalkError::Bad(e)),
                };
                let etag = format!("\"{}.raw\"", cid_text(&resolved.cid));
                if not_modified(req, &etag) {
                    return with_common(Reply::new(Status::NotModified, RAW_TYPE, Vec::new()))
                        .header("etag", etag);
                }
                self.counters
                    .bytes_served
                    .fetch_add(block.len() as u64, Ordering::Relaxed);
                let body = if head { Vec::new() } else { block };
                with_common(Reply::new(Status::Ok, RAW_TYPE, body))
                    .header("etag", etag)
                    .header(
                        "content-disposition",
                        format!("attachment; filename=\"{}.bin\"", cid_text(&resolved.cid)),
                    )
            }
            Format::Car => self.car_answer(req, &ask, resolved, head, with_common),
            Format::Plain => self.plain_answer(req, &ask, &resolved.cid, head, with_common),
        }
    }

    fn walk_error(&self, ask: &Ask, e: WalkError) -> Reply {
        match e {
            WalkError::NotFound(why) => text(Status::NotFound, &why),
            WalkError::Missing(c) if ask.only_if_cached => text(
                Status::PreconditionFailed,
                &format!("block {c} is not on this node (only-if-cached)"),
            ),
            WalkError::Missing(c) => text(
                Status::NotFound,
                &format!("block {c} is not on this node, its origins or its peers"),
            ),
            WalkError::Bad(why) => text(Status::BadGateway, &why),
            WalkError::Stopped => text(Status::InternalServerError, "stopped"),
        }
    }

    fn car_answer(
        &self,
        req: &OwnedRequest,
        ask: &Ask,
        resolved: dag::Resolved,
        head: bool,
        with_common: impl Fn(Reply) -> Reply,
    ) -> Reply {
        let etag = format!(
            "W/\"{}.car.{}\"",
            cid_text(&ask.cid),
            &crate::hex(
                blake3::hash(
                    format!(
                        "{}|{}|{:?}|{}",
                        ask.path.join("/"),
                        ask.scope.as_str(),
                        ask.entity_bytes,
                        ask.dups
                    )
                    .as_bytes()
                )
                .as_bytes()
            )[..16]
        );
        let content_type = gateway::car_content_type(ask.dups);
        if not_modified(req, &etag) {
            return with_common(Reply::new(Status::NotModified, &content_type, Vec::new()))
                .header("etag", etag);
        }
        self.counters.car_answers.fetch_add(1, Ordering::Relaxed);
        let disposition = format!("attachment; filename=\"{}.car\"", cid_text(&ask.cid));
        if head {
            return with_common(Reply::new(Status::Ok, &content_type, Vec::new()))
                .header("etag", etag)
                .header("content-disposition", disposition);
        }
        let Some(me) = crate::pins::service_arc(self) else {
            return text(Status::ServiceUnavailable, "the service is stopping");
        };
        let (root, scope, range, dups, only_local) = (
            ask.cid,
            ask.scope,
            ask.entity_bytes,
            ask.dups,
            ask.only_if_cached,
        );
        let reply = Reply::streamed(Status::Ok, &content_type, move |out| {
            let source = Source {
                ipfs: &me,
                local_only: only_local,
            };
            let mut buf = car::header(&[root]);
            let mut seen = HashSet::new();
            let mut sent = 0u64;
            let mut emit = |cid: &Cid, block: &[u8]| -> Result<(), WalkError> {
                car::section(&mut buf, cid, block);
                if buf.len() >= 256 * 1024 {
                    sent += buf.len() as u64;
                    out.send(std::mem::take(&mut buf))
                        .map_err(|_| WalkError::Stopped)?;
                }
                Ok(())
            };
            for c in &resolved.via {
                if seen.insert(*c) || dups {
                    let b = source
                        .block(c)
                        .map_err(|e| e.to_string())?
                        .ok_or_else(|| format!("block {c} went missing"))?;
                    emit(c, &b).map_err(|e| e.to_string())?;
                }
            }
            dag::walk(
                &source,
                &resolved.cid,
                scope,
                range,
                dups,
                &mut seen,
                &mut emit,
            )
            .map_err(|e| e.to_string())?;
            sent += buf.len() as u64;
            me.counters.bytes_served.fetch_add(sent, Ordering::Relaxed);
            me.pins.served(&root, sent);
            out.send(buf)
                .map_err(|_| "the client went away".to_string())
        });
        with_common(reply)
            .header("etag", etag)
            .header("content-disposition", disposition)
    }

    fn plain_answer(
        &self,
        req: &OwnedRequest,
        ask: &Ask,
        cid: &Cid,
        head: bool,
        with_common: impl Fn(Reply) -> Reply,
    ) -> Reply {
        let source = Source {
            ipfs: self,
            local_only: ask.only_if_cached,
        };
        let entity = match dag::entity(&source, cid) {
            Ok(e) => e,
            Err(e) => return self.walk_error(ask, e),
        };
        let etag = format!("\"{}\"", cid_text(cid));
        match entity {
            Entity::File { size } => {
                if not_modified(req, &etag) {
                    return with_common(Reply::new(Status::NotModified, "text/plain", Vec::new()))
                        .header("etag", etag);
                }
                self.counters.plain_answers.fetch_add(1, Ordering::Relaxed);
                let name = ask.path.last().map(String::as_str).unwrap_or("");
                let content_type = mime_guess::from_path(name)
                    .first_raw()
                    .unwrap_or("application/octet-stream");
                if head {
                    return with_common(Reply::new(Status::Ok, content_type, Vec::new()))
                        .header("etag", etag)
                        .header("x-ipfs-file-size", size.to_string());
                }
                let Some(me) = crate::pins::service_arc(self) else {
                    return text(Status::ServiceUnavailable, "the service is stopping");
                };
                let (file, root, local_only) = (*cid, ask.cid, ask.only_if_cached);
                let reply = Reply::streamed(Status::Ok, content_type, move |out| {
                    let source = Source {
                        ipfs: &me,
                        local_only,
                    };
                    let mut sent = 0u64;
                    dag::read_file(&source, &file, 0, size, &mut |bytes| {
                        sent += bytes.len() as u64;
                        out.send(bytes.to_vec()).map_err(|_| WalkError::Stopped)
                    })
                    .map_err(|e| e.to_string())?;
                    me.counters.bytes_served.fetch_add(sent, Ordering::Relaxed);
                    me.pins.served(&root, sent);
                    Ok(())
                });
                with_common(reply).header("etag", etag)
            }
            Entity::Directory { entries } => {
                if !ask.trailing_slash {
                    let mut location = String::from_utf8_lossy(&req.path).into_owned();
                    location.push('/');
                    return text(Status::MovedPermanently, "a directory")
                        .header("location", location);
                }
                if let Some(index) = entries.iter().find(|e| e.name == "index.html") {
                    let mut sub = ask.clone();
                    sub.path.push("index.html".into());
                    return self.plain_answer(req, &sub, &index.cid, head, with_common);
                }
                self.counters.plain_answers.fetch_add(1, Ordering::Relaxed);
                let mut html = format!(
                    "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{0}</title></head><body><h1>{0}</h1><ul>",
                    escape(&String::from_utf8_lossy(&req.path))
                );
                for e in &entries {
                    html.push_str(&format!(
                        "<li><a href=\"{0}\">{0}</a> <small>{1} {2}</small></li>",
                        escape(&e.name),
                        cid_text(&e.cid),
                        e.size.map(|s| s.to_string()).unwrap_or_default()
                    ));
                }
                html.push_str("</ul></body></html>\n");
                let body = if head { Vec::new() } else { html.into_bytes() };
                with_common(Reply::new(Status::Ok, "text/html; charset=utf-8", body))
                    .header("etag", format!("\"{}.dir\"", cid_text(cid)))
            }
            Entity::Other => text(
                Status::NotAcceptable,
                &format!(
                    "{cid} is not a UnixFS file or directory: ask for it with format=car or format=raw"
                ),
            ),
        }
    }

    /// `GET /routing/v1/providers/{cid}`: the nodes that serve it over the
    /// trustless gateway (this one, since it fetches what it lacks, and
    /// those its pins are placed on), in Delegated Routing V1's shape.
    fn providers(&self, req: &OwnedRequest, cid: &[u8]) -> Reply {
        let Some(cid) = parse_cid(cid) else {
            return text(Status::BadRequest, "not a CID");
        };
        let mut addrs: Vec<(String, SocketAddr)> = Vec::new();
        if let Some(me) = self.node.listen {
            addrs.push((self.node.cluster.node_id(), me));
        }
        let placed = self.pins.placed_for(&cid);
        for m in self.node.cluster.members() {
            if m.alive && placed.contains(&m.addr) {
                addrs.push((m.id.clone(), m.addr));
            }
        }
        let providers: Vec<serde_json::Value> = addrs
            .iter()
            .map(|(id, addr)| {
                serde_json::json!({
                    "Schema": "peer",
                    "ID": peer_id(id),
                    "Addrs": [multiaddr(addr)],
                    "Protocols": ["transport-ipfs-gateway-http"],
                })
            })
            .collect();
        if providers.is_empty() {
            return text(Status::NotFound, "no provider");
        }
        let ndjson = req
            .header("accept")
            .is_some_and(|a| a.windows(20).any(|w| w == b"application/x-ndjson"));
        let reply = if ndjson {
            let mut body = String::new();
            for p in &providers {
                body.push_str(&p.to_string());
                body.push('\n');
            }
            Reply::new(Status::Ok, "application/x-ndjson", body)
        } else {
            Reply::new(
                Status::Ok,
                "application/json",
                format!("{}\n", serde_json::json!({ "Providers": providers })),
            )
        };
        reply
            .header("cache-control", "public, max-age=15")
            .header("vary", "Accept")
    }

    /// `POST /ipfs/_import`: a CAR's blocks into the index, each verified,
    /// for an account the bearer token names.
    fn import(&self, req: &OwnedRequest, mut body: RequestBody) -> Reply {
        if let Err(r) = self.pins.authorize(req) {
            return r;
        }
        match self.ingest(&mut body, None) {
            Ok(n) => Reply::new(
                Status::Ok,
                "application/json",
                format!("{}\n", serde_json::json!({ "blocks": n })),
            ),
            Err(why) => text(Status::BadRequest, &why),
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn not_modified(req: &OwnedRequest, etag: &str) -> bool {
    req.header("if-none-match").is_some_and(|v| {
        v.split(|&b| b == b',').any(|t| {
            let t = t.trim_ascii();
            t == b"*" || t == etag.as_bytes() || t.strip_prefix(b"W/") == Some(etag.as_bytes())
        })
    })
}

/// A libp2p peer id for an ed25519 node id: the identity multihash of its
/// protobuf public key, in base58btc (`12D3KooW…`).
pub fn peer_id(node_id: &str) -> String {
    let key: Vec<u8> = (0..node_id.len() / 2)
        .filter_map(|i| u8::from_str_radix(node_id.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    let mut bytes = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
    bytes.extend_from_slice(&key);
    multibase::encode(multibase::Base::Base58Btc, bytes)[1..].to_string()
}

/// `/ip4/{ip}/tcp/{port}/http` for a node's address.
pub fn multiaddr(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("/ip4/{}/tcp/{}/http", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("/ip6/{}/tcp/{}/http", a.ip(), a.port()),
    }
}

/// The DAG under `root` as `index` holds it: every block once, in
/// depth-first order, and their bytes in all. `Err(Some(cid))` names the
/// first block it lacks; `Err(None)`: more than `max` blocks. Raw blocks
/// have no links, so they are looked up in the index, not read; the
/// others are read (and checked against their CIDs) for their links.
pub(crate) fn held_dag(
    index: &Index,
    root: &Cid,
    max: usize,
) -> Result<(Vec<Cid>, u64), Option<Cid>> {
    let mut seen = HashSet::new();
    let mut stack = vec![*root];
    let mut cids = Vec::new();
    let mut bytes = 0u64;
    while let Some(cid) = stack.pop() {
        if crate::identity_block(&cid).is_some() || !seen.insert(cid) {
            continue;
        }
        if cids.len() >= max {
            return Err(None);
        }
        if cid.codec() == crate::RAW {
            let e = index
                .get(&cid)
                .filter(|e| index.store().size(&e.blob).is_some())
                .ok_or(Some(cid))?;
            bytes += u64::from(e.size);
        } else {
            let Ok(Some(block)) = index.block(&cid) else {
                return Err(Some(cid));
            };
            bytes += block.len() as u64;
            let mut l = links(&cid, &block);
            l.reverse();
            stack.extend(l);
        }
        cids.push(cid);
    }
    Ok((cids, bytes))
}

/// The links out of a block, for the codecs that have them.
pub(crate) fn links(cid: &Cid, block: &[u8]) -> Vec<Cid> {
    match cid.codec() {
        DAG_PB => crate::unixfs::decode_node(block)
            .map(|n| n.links.into_iter().map(|l| l.cid).collect())
            .unwrap_or_default(),
        DAG_CBOR => {
            let mut out = Vec::new();
            if let Ok(ipld) = serde_ipld_dagcbor::from_slice::<ipld_core::ipld::Ipld>(block) {
                let mut stack = vec![&ipld];
                while let Some(v) = stack.pop() {
                    match v {
                        ipld_core::ipld::Ipld::Link(c) => out.push(*c),
                        ipld_core::ipld::Ipld::List(l) => stack.extend(l.iter()),
                        ipld_core::ipld::Ipld::Map(m) => stack.extend(m.values()),
                        _ => {}
                    }
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

/// Blocks for a request's walk: the index, and what is missing fetched
/// unless the client said `only-if-cached`.
struct Source<'a> {
    ipfs: &'a Ipfs,
    local_only: bool,
}

impl Blocks for Source<'_> {
    fn block(&self, cid: &Cid) -> Result<Option<Vec<u8>>, String> {
        if let Some(b) = self.ipfs.index.block(cid)? {
            return Ok(Some(b));
        }
        if self.local_only {
            return Ok(None);
        }
        Ok(self.ipfs.fetch_block(cid))
    }
}

impl Service for Ipfs {
    fn name(&self) -> &str {
        "ipfs"
    }

    fn mounts(&self) -> Vec<Mount> {
        vec![
            Mount::Prefix("/ipfs/".into()),
            Mount::Prefix("/routing/v1/".into()),
            Mount::Prefix("/pins".into()),
        ]
    }

    fn pool(&self) -> PoolConfig {
        PoolConfig {
            threads: self.config.workers,
            queue: self.config.queue,
            deadline: Duration::from_millis(self.config.fetch_timeout_ms * 2 + 10_000),
        }
    }

    fn max_body_bytes(&self) -> u64 {
        self.config.max_import_mb << 20
    }

    fn decide(&self, req: &Request<'_>) -> Decision {
        if matches!(req.method, Method::Get | Method::Head) {
            if let Some(d) = self.raw_on_core(req) {
                return d;
            }
        }
        Decision::Work
    }

    fn handle(&self, req: OwnedRequest, body: RequestBody) -> Reply {
        let path = req.path.clone();
        if path.starts_with(b"/pins") {
            return self.pins.handle(&req, body);
        }
        if let Some(cid) = path.strip_prefix(b"/routing/v1/providers/") {
            return match req.method {
                Method::Get | Method::Head => self.providers(&req, cid),
                _ => text(Status::MethodNotAllowed, "GET only"),
            };
        }
        if path.starts_with(b"/routing/v1/") {
            return text(
                Status::NotFound,
                "this node answers /routing/v1/providers/{cid} only",
            );
        }
        if path == b"/ipfs/_import" {
            return match req.method {
                Method::Post => self.import(&req, body),
                _ => text(Status::MethodNotAllowed, "POST a CAR"),
            };
        }
        match req.method {
            Method::Get | Method::Head => self.gateway(&req),
            _ => text(Status::MethodNotAllowed, "the gateway takes GET and HEAD"),
        }
    }
}
