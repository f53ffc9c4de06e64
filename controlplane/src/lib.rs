//! Tessera's control plane: what makes many nodes one network. It runs on its own
//! thread, apart from the data-plane cores (see `../shared/DESIGN.md`); the two
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
//!   ranking for clients (holders first, then estimated RTT).
//!
//! The binary's `peering` module uses these to replicate uploads and fetch
//! missing blobs from peers as verified streams.
//!
//! Not yet (issue 5 notes): Vivaldi coordinates (RTT is measured per member,
//! not estimated for unmeasured ones), multi-peer range fetch, signed
//! node-to-node HTTP requests, redirect mode, partition tests.

pub mod cluster;
pub mod identity;
pub mod record;
pub mod routing;
pub mod vivaldi;

pub use identity::{NodeId, NodeKey};
pub use record::NodeRecord;
