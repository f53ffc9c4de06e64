//! Tessera's control plane: what makes many nodes one network. It runs on its own
//! threads, apart from the data-plane cores (see `../shared/DESIGN.md`).
//!
//! Built so far (issue 5, first slice):
//! - [`identity`]: the node's ed25519 key pair in the data dir (`node.key`, 0600)
//!   and the node id derived from it; clear errors for missing, unreadable,
//!   malformed or world-readable key files.
//! - [`record`]: what a node says about itself (addresses, region, capacity,
//!   services, load), signed with its key and verified by every receiver; a
//!   bounded, fuzzed wire decoder.
//!
//! Next (see the issue notes): gossip membership on a maintained library (foca,
//! sans-IO, carried on the node's own port), rendezvous routing with Vivaldi
//! coordinates, and verified multi-peer fetch.

pub mod cluster;
pub mod identity;
pub mod record;
pub mod routing;

pub use identity::{NodeId, NodeKey};
pub use record::NodeRecord;
