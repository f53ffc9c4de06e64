//! Tessera's control plane: what makes many nodes one network. It runs on its own
//! thread, apart from the data-plane cores (see `ARCHITECTURE.md`); the two
//! meet only at bounded channels (gossip datagrams in) and snapshots (the member
//! list the data plane renders, the routing answer it asks for).
//!
//! - [`identity`]: the node's ed25519 key pair in the data dir (`node.key`, 0600)
//!   and the node id (its public key); clear errors for missing, unreadable,
//!   malformed or world-readable key files.
//! - [`record`]: what a node says about itself (addresses, region, capacity,
//!   services, load), signed with its key and verified by every receiver; a
//!   bounded decoder with a fuzz target.
//! - [`cluster`]: gossip membership and failure detection by `foca` (SWIM,
//!   sans-IO) on one thread, carried in signed envelopes on the node's own UDP
//!   port; node records as custom broadcasts; RTT by signed ping/pong; leave on
//!   SIGTERM; a restart counter so a restarted node rejoins as a newer identity.
//! - [`routing`]: rendezvous (HRW) home nodes over live verified members and a
//!   ranking for clients (holders first, then measured or Vivaldi-estimated RTT).
//! - [`vivaldi`]: network coordinates carried in the signed pings, so the RTT
//!   to a member can be estimated before it is measured.
//! - [`ledger`]: signed delivery receipts, the node's durable receipt log
//!   (`POST /receipts`, fsynced before 202; `tessera get` signs one per verified
//!   download with the client's own key), and the deterministic, sans-IO state
//!   machine: accounts, stakes, receipts that charge clients, peer reports
//!   aggregated into reputation by median, epochs that pay nodes from the pool
//!   by bytes × reputation and choose the next committee.
//! - [`chain`]: that state machine replicated by a committee with AlephBFT
//!   (Byzantine fault tolerant, leaderless), one session per epoch, state and
//!   progress in redb, unit backup for crash recovery, catch-up from f+1
//!   matching snapshots; the binary supplies its HTTP transport.
//!
//! The binary's `peering` module uses these to replicate uploads, rebalance
//! when membership changes, fetch missing blobs from peers (multi-peer verified
//! range parts for large blobs), redirect instead when configured, and sign
//! node-to-node requests; the data plane checks those signatures with
//! [`cluster::Cluster::peer_verifier`].
//!
//! Not yet: work stealing between fetch parts (a slow holder
//! holds back its part), rebalancing that scales past a full scan of the store
//! per membership change, and telling a node that left from one that failed
//! (both show as `down`).

pub mod chain;
pub mod cluster;
pub mod deploy;
pub mod identity;
pub mod ledger;
pub mod placement;
pub mod record;
pub mod routing;
pub mod vivaldi;

pub use identity::{NodeId, NodeKey};
pub use record::NodeRecord;
