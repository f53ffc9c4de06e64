//! Node-to-node blob transfer: what wires the control plane's routing to the
//! data plane's store. Runs on store-I/O pool threads (fetch on a miss) and on
//! one replicator thread (copies of fresh uploads to their home nodes), never on
//! a data-plane core.
//!
//! - Fetch on miss: the blob's home nodes first, then every other live verified
//!   member, nearest first; each answers with the verified stream, which
//!   `Store::import_verified` checks group by group before anything is stored.
//!   A peer whose stream fails verification is marked (`bad_transfers`) and the
//!   next one is asked; a peer that is unreachable costs only that retry.
//! - Replication: a blob a client uploads here is pushed to its other home
//!   nodes (`POST /blobs`; the receiver hashes what arrives, so it can only be
//!   stored under its true hash, and the pusher checks the hash it gets back).
//! - Requests between nodes carry `X-Tessera-Peer: <node id>` so a miss is not
//!   fetched onward. Not yet authenticated by signature (see the issue notes).

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use controlplane::cluster::{Cluster, MemberInfo};
use controlplane::routing;
use dataplane::hash::BlobHash;
use dataplane::http::{BAO_MEDIA_TYPE, PEER_HEADER};
use dataplane::store::{Store, StoreError};

pub struct Peering {
    cluster: Arc<Cluster>,
    replication: usize,
    agent: ureq::Agent,
    me: String,
}

impl Peering {
    pub fn new(cluster: Arc<Cluster>, replication: usize) -> Arc<Peering> {
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
            agent,
            me,
        })
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
        for peer in self.candidates(hash) {
            let url = format!("http://{}/blobs/{hex}", peer.addr);
            let resp = self
                .agent
                .get(&url)
                .header("Accept", BAO_MEDIA_TYPE)
                .header(PEER_HEADER, &self.me)
                .call();
            let mut resp = match resp {
                Ok(r) if r.status() == 200 => r,
                Ok(_) => continue, // it does not hold it either
                Err(e) => {
                    tracing::debug!(peer = %peer.addr, "fetch failed: {e}");
                    continue;
                }
            };
            let reader = resp.body_mut().as_reader();
            match store.import_verified(BlobHash(*hash), reader) {
                Ok(_) => {
                    tracing::info!(blob = %hex, peer = %peer.addr, "fetched from a peer, verified");
                    return true;
                }
                Err(StoreError::Verify(e)) => {
                    tracing::warn!(blob = %hex, peer = %peer.addr, "peer sent data that failed verification: {e}; asking the next");
                    self.cluster.mark_bad(&peer.id);
                }
                Err(e) => {
                    tracing::warn!(blob = %hex, peer = %peer.addr, "fetch from peer failed: {e}; asking the next");
                }
            }
        }
        false
    }

    /// Starts the replicator; the returned closure queues a fresh upload.
    pub fn start_replicator(
        self: &Arc<Self>,
        store: Arc<Store>,
    ) -> std::io::Result<Arc<dataplane::server::OnStored>> {
        let (tx, rx) = flume::bounded::<[u8; 32]>(4096);
        let this = self.clone();
        std::thread::Builder::new()
            .name("tessera-replicate".into())
            .spawn(move || {
                while let Ok(hash) = rx.recv() {
                    this.replicate(&store, &hash);
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

    fn replicate(&self, store: &Store, hash: &[u8; 32]) {
        let hex = BlobHash(*hash).to_string();
        let members = self.cluster.members();
        for home in routing::homes(hash, &members, self.replication) {
            if home.is_self {
                continue;
            }
            let url = format!("http://{}/blobs/{hex}", home.addr);
            let held = self
                .agent
                .head(&url)
                .header(PEER_HEADER, &self.me)
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
                .agent
                .post(format!("http://{}/blobs", home.addr))
                .header(PEER_HEADER, &self.me)
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
