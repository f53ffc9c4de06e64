//! Node-to-node blob transfer: what wires the control plane's routing to the
//! data plane's store. Runs on store-I/O pool threads (fetch on a miss) and on
//! one replicator thread (copies of fresh uploads to their home nodes), never on
//! a data-plane core.
//!
//! - Fetch on miss: the blob's home nodes first, then every other live verified
//!   member, nearest first. A blob of 4 MiB or more held by several peers is
//!   fetched in up to four parts at once, each part a verified range stream from
//!   a different holder, every 16 KiB group checked against the root before it
//!   is written into the assembly (`Store::begin_assembly`); smaller ones come as
//!   one verified stream (`Store::import_verified`). A peer whose data fails
//!   verification is marked (`bad_transfers`) and its part is asked of the next
//!   holder; a peer that dies mid-transfer costs only that retry.
//! - Replication: a blob a client uploads here is pushed to its other home
//!   nodes (`POST /blobs`; the receiver hashes what arrives, so it can only be
//!   stored under its true hash, and the pusher checks the hash it gets back).
//!   When membership changes, every node offers each blob it holds to the homes
//!   that newly entered that blob's home set (a HEAD first), so a joining node
//!   receives its share and a departed home's copies are remade elsewhere;
//!   blobs whose homes did not move cost nothing.
//! - Requests between nodes are signed: `X-Tessera-Peer` (node id),
//!   `X-Tessera-Peer-Time` (ms) and `X-Tessera-Peer-Sig` (ed25519 over method,
//!   path and time). The receiving node checks them against the signer's key
//!   (a live member, a minute of clock skew at most) and answers 401 otherwise,
//!   so it knows which node it talks to; such a request's miss is not fetched
//!   onward.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use controlplane::cluster::{Cluster, MemberInfo};
use controlplane::routing;
use dataplane::hash::BlobHash;
use dataplane::http::{BAO_MEDIA_TYPE, PEER_HEADER, PEER_SIG_HEADER, PEER_TIME_HEADER};
use dataplane::store::{Store, StoreError};

/// Blobs at least this large are fetched in parts from several holders at once.
const MULTI_PEER_MIN_BYTES: u64 = 4 << 20;
/// At most this many parts (and peers) per fetch.
const MAX_PARTS: usize = 4;
/// Holders found beyond MAX_PARTS before a fetch starts, to retry failed parts on.
const SPARE_HOLDERS: usize = 2;
/// How often the replicator looks at the membership epoch.
const REBALANCE_CHECK: Duration = Duration::from_millis(500);
/// Wait after a membership change before rebalancing (joins come in bursts).
const REBALANCE_SETTLE: Duration = Duration::from_millis(500);

/// Signs a request to another node: this node's id (`me`), the time, and its
/// signature over method, path and time (the receiver checks them).
pub fn sign_request<B>(
    cluster: &Cluster,
    me: &str,
    req: ureq::RequestBuilder<B>,
    method: &str,
    path: &str,
) -> ureq::RequestBuilder<B> {
    let (time, sig) = cluster.sign_request(|t| {
        dataplane::http::peer_message(method.as_bytes(), path.as_bytes(), t.as_bytes())
    });
    req.header(PEER_HEADER, me)
        .header(PEER_TIME_HEADER, &time)
        .header(PEER_SIG_HEADER, &sig)
}

/// A reader that counts the bytes read through it.
struct Counted<R>(R, u64);

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        self.1 += n as u64;
        Ok(n)
    }
}

/// Queues a fresh upload for replication.
pub type OnStored = dyn Fn(&[u8; 32]) + Send + Sync;

pub struct Peering {
    cluster: Arc<Cluster>,
    replication: usize,
    rebalance: bool,
    agent: ureq::Agent,
    me: String,
}

impl Peering {
    pub fn new(cluster: Arc<Cluster>, replication: usize, rebalance: bool) -> Arc<Peering> {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(3)))
            .timeout_recv_body(Some(Duration::from_secs(120)))
            .build()
            .into();
        let me = cluster.id().to_string();
        Arc::new(Peering {
            cluster,
            replication,
            rebalance,
            agent,
            me,
        })
    }

    /// Adds this node's id, the time and its signature over method, path and time.
    fn sign<B>(
        &self,
        req: ureq::RequestBuilder<B>,
        method: &str,
        path: &str,
    ) -> ureq::RequestBuilder<B> {
        sign_request(&self.cluster, &self.me, req, method, path)
    }

    /// Candidates for a blob we lack: homes first, then the rest, nearest first.
    fn candidates(&self, hash: &[u8; 32]) -> Vec<MemberInfo> {
        let members = self.cluster.members();
        let homes: Vec<MemberInfo> = routing::homes(hash, &members, self.replication)
            .into_iter()
            .filter(|m| !m.is_self)
            .cloned()
            .collect();
        let mut rest: Vec<MemberInfo> = members
            .into_iter()
            .filter(|m| {
                !m.is_self && m.verified && m.state != "down" && !homes.iter().any(|h| h.id == m.id)
            })
            .collect();
        rest.sort_by(|a, b| {
            a.rtt_ms
                .unwrap_or(f64::INFINITY)
                .total_cmp(&b.rtt_ms.unwrap_or(f64::INFINITY))
        });
        homes.into_iter().chain(rest).collect()
    }

    /// Fetches `hash` from peers into `store`; true once it is stored.
    pub fn fetch_missing(&self, store: &Store, hash: &[u8; 32]) -> bool {
        let hex = BlobHash(*hash).to_string();
        // Who holds it, and how large it is (a HEAD each: cheap).
        let mut holders: Vec<MemberInfo> = Vec::new();
        let mut size = None;
        for peer in self.candidates(hash) {
            let path = format!("/blobs/{hex}");
            let url = format!("http://{}{path}", peer.addr);
            let Ok(resp) = self.sign(self.agent.head(&url), "HEAD", &path).call() else {
                continue;
            };
            if resp.status() != 200 {
                continue;
            }
            let len = resp
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            match (size, len) {
                (None, Some(l)) => size = Some(l),
                (Some(s), Some(l)) if s != l => continue, // not the same blob: ignore it
                _ => {}
            }
            holders.push(peer);
            // Enough for every part plus spares to retry on: ask no further
            // (a large cluster is not probed member by member on each miss).
            if holders.len() >= MAX_PARTS + SPARE_HOLDERS {
                break;
            }
        }
        let Some(size) = size else { return false };
        let fetched = if size >= MULTI_PEER_MIN_BYTES && holders.len() > 1 {
            self.fetch_parts(store, hash, size, &holders)
        } else {
            self.fetch_whole(store, hash, &holders)
        };
        if fetched {
            tracing::info!(blob = %hex, size, peers = holders.len().min(MAX_PARTS), "fetched from peers, verified");
        }
        fetched
    }

    /// Fetches `hash` from the node at `from`, reusing the unchanged chunk
    /// groups of `base` (held here): the hash tree first
    /// (`GET /blobs/{hash}/outboard`, checked against `hash`), then only the
    /// groups whose bytes differ, as verified ranges. Any failure there falls
    /// back to [`Peering::fetch_missing`] (the whole blob, from any holder).
    pub fn fetch_delta(
        &self,
        store: &Store,
        hash: &[u8; 32],
        base: Option<&[u8; 32]>,
        from: std::net::SocketAddr,
    ) -> Option<service_api::Delta> {
        if let Ok(Some(info)) = store.info(&BlobHash(*hash)) {
            return Some(service_api::Delta {
                fetched: 0,
                reused: info.size,
                existed: true,
            });
        }
        match self.try_delta(store, hash, base, from) {
            Ok(delta) => Some(delta),
            Err(e) => {
                tracing::debug!(blob = %BlobHash(*hash), %from, "fetching the changed parts failed: {e}; fetching it whole");
                if !self.fetch_missing(store, hash) {
                    return None;
                }
                let size = store
                    .info(&BlobHash(*hash))
                    .ok()
                    .flatten()
                    .map_or(0, |i| i.size);
                Some(service_api::Delta {
                    fetched: size,
                    reused: 0,
                    existed: false,
                })
            }
        }
    }

    fn try_delta(
        &self,
        store: &Store,
        hash: &[u8; 32],
        base: Option<&[u8; 32]>,
        from: std::net::SocketAddr,
    ) -> anyhow::Result<service_api::Delta> {
        use anyhow::Context as _;
        let hex = BlobHash(*hash).to_string();
        let path = format!("/blobs/{hex}/outboard");
        let mut resp = self
            .sign(
                self.agent.get(&format!("http://{from}{path}")),
                "GET",
                &path,
            )
            .call()?;
        anyhow::ensure!(resp.status() == 200, "outboard: {}", resp.status());
        let mut reader = resp.body_mut().as_reader();
        let mut head = [0u8; 8];
        reader.read_exact(&mut head)?;
        let size = u64::from_le_bytes(head);
        anyhow::ensure!(
            size <= store.max_bytes(),
            "announced {size} bytes, over the store's limit"
        );
        let want = dataplane::verified::tree(size).outboard_size();
        let mut outboard = Vec::with_capacity(want as usize);
        (&mut reader).take(want + 1).read_to_end(&mut outboard)?;
        anyhow::ensure!(
            outboard.len() as u64 == want,
            "outboard of {} bytes, not {want}",
            outboard.len()
        );
        let mut fetched = 8 + want;
        let assembly = store.begin_assembly(BlobHash(*hash), size)?;
        let base = match base {
            Some(b) => store.open_blob(&BlobHash(*b)).ok(),
            None => None,
        };
        let reused = assembly
            .seed(&outboard, base.as_ref().map(|(f, n)| (f, *n)))
            .context("hash tree")?;
        let peer_path = format!("/blobs/{hex}");
        for (first, last) in assembly.missing() {
            let mut resp = self
                .sign(
                    self.agent.get(&format!("http://{from}{peer_path}")),
                    "GET",
                    &peer_path,
                )
                .header("Accept", BAO_MEDIA_TYPE)
                .header("Range", &format!("bytes={first}-{last}"))
                .call()?;
            anyhow::ensure!(resp.status() == 200, "range: {}", resp.status());
            let mut counted = Counted(resp.body_mut().as_reader(), 0);
            assembly.add_range(&mut counted, first, last)?;
            fetched += counted.1;
        }
        store.finish_assembly(assembly)?;
        tracing::info!(blob = %hex, size, fetched, reused, %from, "fetched the changed chunk groups, verified");
        Ok(service_api::Delta {
            fetched,
            reused,
            existed: false,
        })
    }

    fn get_verified(
        &self,
        peer: &MemberInfo,
        hex: &str,
        range: Option<(u64, u64)>,
    ) -> Option<ureq::http::Response<ureq::Body>> {
        let path = format!("/blobs/{hex}");
        let url = format!("http://{}{path}", peer.addr);
        let mut req = self
            .sign(self.agent.get(&url), "GET", &path)
            .header("Accept", BAO_MEDIA_TYPE);
        if let Some((first, last)) = range {
            req = req.header("Range", &format!("bytes={first}-{last}"));
        }
        match req.call() {
            Ok(r) if r.status() == 200 => Some(r),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(peer = %peer.addr, "fetch failed: {e}");
                None
            }
        }
    }

    /// Notes a failed transfer: a peer whose data failed verification is marked.
    fn failed(&self, peer: &MemberInfo, hex: &str, e: &StoreError) {
        if let StoreError::Verify(_) = e {
            tracing::warn!(blob = %hex, peer = %peer.addr, "peer sent data that failed verification: {e}; asking another");
            self.cluster.mark_bad(&peer.id);
        } else {
            tracing::warn!(blob = %hex, peer = %peer.addr, "transfer from peer failed: {e}; asking another");
            self.cluster.note_transfer(&peer.id, None);
        }
    }

    /// One verified stream, from the first holder that delivers it.
    fn fetch_whole(&self, store: &Store, hash: &[u8; 32], holders: &[MemberInfo]) -> bool {
        let hex = BlobHash(*hash).to_string();
        for peer in holders {
            let Some(mut resp) = self.get_verified(peer, &hex, None) else {
                self.cluster.note_transfer(&peer.id, None);
                continue;
            };
            match store.import_verified(BlobHash(*hash), resp.body_mut().as_reader()) {
                Ok(out) => {
                    self.cluster.note_transfer(&peer.id, Some(out.size));
                    return true;
                }
                Err(e) => self.failed(peer, &hex, &e),
            }
        }
        false
    }

    /// Different ranges from different holders at once, every group verified as
    /// it arrives; a part that fails is asked of the next holder.
    fn fetch_parts(
        &self,
        store: &Store,
        hash: &[u8; 32],
        size: u64,
        holders: &[MemberInfo],
    ) -> bool {
        let hex = BlobHash(*hash).to_string();
        let Ok(assembly) = store.begin_assembly(BlobHash(*hash), size) else {
            return false;
        };
        let parts = holders.len().min(MAX_PARTS);
        let group = dataplane::verified::CHUNK_GROUP_BYTES as u64;
        let groups = size.div_ceil(group);
        let per = groups.div_ceil(parts as u64);
        let ranges: Vec<(u64, u64)> = (0..parts as u64)
            .map(|i| (i * per * group, ((i + 1) * per * group).min(size) - 1))
            .filter(|(first, last)| first <= last)
            .collect();
        let all_ok = std::thread::scope(|t| {
            let jobs: Vec<_> = ranges
                .iter()
                .enumerate()
                .map(|(i, &(first, last))| {
                    let (assembly, hex) = (&assembly, &hex);
                    t.spawn(move || {
                        for k in 0..holders.len() {
                            let peer = &holders[(i + k) % holders.len()];
                            let Some(mut resp) = self.get_verified(peer, hex, Some((first, last)))
                            else {
                                self.cluster.note_transfer(&peer.id, None);
                                continue;
                            };
                            match assembly.add_range(resp.body_mut().as_reader(), first, last) {
                                Ok(()) => {
                                    let bytes = last - first + 1;
                                    self.cluster.note_transfer(&peer.id, Some(bytes));
                                    return true;
                                }
                                Err(e) => self.failed(peer, hex, &e),
                            }
                        }
                        false
                    })
                })
                .collect();
            jobs.into_iter().all(|j| j.join().unwrap_or(false))
        });
        all_ok && store.finish_assembly(assembly).is_ok()
    }

    /// Starts the replicator; the returned closure queues a fresh upload.
    ///
    /// The closure never blocks: a full queue drops the hash (rebalancing
    /// finds the blob later).
    pub fn start_replicator(self: &Arc<Self>, store: Arc<Store>) -> std::io::Result<Arc<OnStored>> {
        let (tx, rx) = flume::bounded::<[u8; 32]>(4096);
        let this = self.clone();
        std::thread::Builder::new()
            .name("tessera-replicate".into())
            .spawn(move || {
                // The members homes are computed over: live and verified.
                let live = |ms: &[MemberInfo]| -> Vec<String> {
                    let mut ids: Vec<String> = ms
                        .iter()
                        .filter(|m| m.verified && m.state != "down")
                        .map(|m| m.id.clone())
                        .collect();
                    ids.sort();
                    ids
                };
                let mut seen_members = this.cluster.members();
                loop {
                    match rx.recv_timeout(REBALANCE_CHECK) {
                        Ok(hash) => this.replicate(&store, &hash),
                        Err(flume::RecvTimeoutError::Timeout) => {}
                        Err(flume::RecvTimeoutError::Disconnected) => return,
                    }
                    // The live, verified members changed: blobs may have new homes
                    // (a node joined or its record arrived) or lost one (a node
                    // left). Give each new home what it lacks, once things have
                    // settled for a moment.
                    if !this.rebalance {
                        continue;
                    }
                    if live(&this.cluster.members()) != live(&seen_members) {
                        std::thread::sleep(REBALANCE_SETTLE);
                        let now = this.cluster.members();
                        this.rebalance(&store, &seen_members);
                        seen_members = now;
                    }
                }
            })?;
        Ok(Arc::new(move |hash: &[u8; 32]| {
            if tx.try_send(*hash).is_err() {
                tracing::warn!(
                    "replication queue full: a blob was not copied to its home nodes now"
                );
            }
        }))
    }

    /// After a membership change: each blob held here is offered only to the
    /// homes that entered its home set since `before` (a joiner, or the
    /// replacement for a departed home), so the traffic is proportional to the
    /// blobs whose homes moved, not to the store. Computing homes is local
    /// (hashing); only those moves cost a request.
    fn rebalance(&self, store: &Store, before: &[MemberInfo]) {
        let blobs = match store.list() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("cannot list the store to rebalance: {e}");
                return;
            }
        };
        let started = std::time::Instant::now();
        let now = self.cluster.members();
        let mut offered = 0usize;
        for b in &blobs {
            let hash = &b.hash.0;
            let old: Vec<String> = routing::homes(hash, before, self.replication)
                .iter()
                .map(|m| m.id.clone())
                .collect();
            let fresh: Vec<&MemberInfo> = routing::homes(hash, &now, self.replication)
                .into_iter()
                .filter(|m| !old.contains(&m.id))
                .collect();
            if !fresh.is_empty() {
                offered += 1;
                self.offer(store, hash, fresh);
            }
        }
        tracing::info!(blobs = blobs.len(), offered, took = ?started.elapsed(), "rebalanced after a membership change");
    }

    fn replicate(&self, store: &Store, hash: &[u8; 32]) {
        let members = self.cluster.members();
        let homes = routing::homes(hash, &members, self.replication);
        self.offer(store, hash, homes);
    }

    /// Pushes a held blob to each of `homes` (but this node) that lacks it.
    fn offer(&self, store: &Store, hash: &[u8; 32], homes: Vec<&MemberInfo>) {
        let hex = BlobHash(*hash).to_string();
        for home in homes {
            if home.is_self {
                continue;
            }
            let path = format!("/blobs/{hex}");
            let url = format!("http://{}{path}", home.addr);
            let held = self
                .sign(self.agent.head(&url), "HEAD", &path)
                .call()
                .is_ok_and(|r| r.status() == 200);
            if held {
                continue;
            }
            let path = store.root().join("blobs").join(&hex);
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(blob = %hex, "cannot read blob to replicate: {e}");
                    return;
                }
            };
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let mut reader = file.take(len);
            let sent = self
                .sign(
                    self.agent.post(format!("http://{}/blobs", home.addr)),
                    "POST",
                    "/blobs",
                )
                .header("Content-Length", &len.to_string())
                .send(ureq::SendBody::from_reader(&mut reader));
            match sent {
                Ok(mut r) if r.status() == 201 || r.status() == 200 => {
                    let body = r.body_mut().read_to_string().unwrap_or_default();
                    if body.contains(&hex) {
                        tracing::debug!(blob = %hex, home = %home.addr, "replicated");
                    } else {
                        tracing::warn!(blob = %hex, home = %home.addr, "home stored something else: {body}");
                    }
                }
                Ok(r) => {
                    tracing::warn!(blob = %hex, home = %home.addr, "replication refused: {}", r.status())
                }
                Err(e) => tracing::warn!(blob = %hex, home = %home.addr, "replication failed: {e}"),
            }
        }
    }
}
