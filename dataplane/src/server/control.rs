//! The typed interface through which the control plane answers the data plane.
//!
//! The binary implements [`ControlPlane`] over the cluster, peering and the
//! ledger; a node without a cluster (an in-process test, a node on port 0)
//! uses [`NoControlPlane`], whose defaults answer 404, fetch nothing and trust
//! no node. Each method says where it runs: on a core (it must not block:
//! memory and bounded channels only) or on the store-I/O pool.

use std::net::SocketAddr;

use super::{LedgerCall, LedgerReply, Reply};
use crate::http::DeployRoute;
use crate::store::Store;

pub trait ControlPlane: Send + Sync + 'static {
    /// On a core: `GET /cluster/members` as JSON; None answers 404.
    fn members(&self) -> Option<String> {
        None
    }

    /// On a core: `GET /route/{hash}` as JSON, given whether this node holds
    /// the blob; None answers 404.
    fn route(&self, hash: &[u8; 32], holds: bool) -> Option<String> {
        let _ = (hash, holds);
        None
    }

    /// On a core: the control plane's own Prometheus text for `/metrics`.
    fn metrics(&self, out: &mut String) {
        let _ = out;
    }

    /// On a core: whether the live member with node id `id` signed `message`
    /// at `time` (hex id and signature, ms time, as the headers carry them).
    fn verify_peer(&self, id: &[u8], time: &[u8], sig: &[u8], message: &[u8]) -> bool {
        let _ = (id, time, sig, message);
        false
    }

    /// On a core: the best other node's client-facing address for a blob
    /// (redirect mode).
    fn locate(&self, hash: &[u8; 32]) -> Option<SocketAddr> {
        let _ = hash;
        None
    }

    /// On a core: whether [`ControlPlane::fetch_missing`] can find anything
    /// (no peers, no fetch: a miss is answered 404 at once).
    fn fetches(&self) -> bool {
        false
    }

    /// On the store-I/O pool: fetch a blob this node lacks from its peers into
    /// the store, every chunk group verified on arrival; true once stored.
    fn fetch_missing(&self, store: &Store, hash: &[u8; 32]) -> bool {
        let _ = (store, hash);
        false
    }

    /// On a core, after a client's upload committed: hand it to replication
    /// (a bounded queue; never blocks).
    fn stored(&self, hash: &[u8; 32]) {
        let _ = hash;
    }

    /// On the store-I/O pool: check and durably store (fsync) a batch of
    /// delivery receipts; Ok(count accepted), Err(why refused). None: this
    /// node takes no receipts (404).
    fn store_receipts(&self, body: &[u8]) -> Option<Result<usize, String>> {
        let _ = body;
        None
    }

    /// On the store-I/O pool: a `/ledger/...` request. None: this node runs no
    /// ledger (404).
    fn ledger(&self, call: LedgerCall) -> Option<LedgerReply> {
        let _ = call;
        None
    }

    /// On the store-I/O pool: a `/deployments...` request; `body` is a POST's
    /// (a signed transaction). None: no control plane (404).
    fn deployments(&self, route: DeployRoute, body: Option<Vec<u8>>) -> Option<Reply> {
        let _ = (route, body);
        None
    }
}

/// A node without a control plane.
pub struct NoControlPlane;

impl ControlPlane for NoControlPlane {}
