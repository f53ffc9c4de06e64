//! Tessera's data plane.
//!
//! What it is for: storing blobs by their BLAKE3 hash on local disk, crash-safely,
//! and serving them to clients over HTTP/1.1 and HTTP/3 from one io_uring event loop
//! per core, as plain bytes (zero-copy over HTTP/1.1: `splice(2)` from the page cache
//! to the socket) or as a verified stream that the client checks chunk group by chunk
//! group.
//!
//! Goals: nothing shared between cores on the request path (no locks, no allocation
//! per request); every input bounded; a crash at any moment leaves whole blobs or
//! nothing. Non-goals here: membership, routing and rewards (the control plane).
//!
//! Modules, from the bottom up:
//! - [`hash`]: blob names.
//! - [`verified`]: sans-IO hash trees, outboards, verified-stream encode and decode.
//! - [`store`]: the blob store (files + redb metadata), eviction, verification.
//! - [`http`]: sans-IO HTTP/1.1 request parsing, routing, ranges, response heads.
//! - [`sys`]: the few Linux specifics (splice, pipes, rlimits), in one place.
//! - [`metrics`]: per-core counters and histograms, merged for `/metrics`.
//! - [`server`]: the per-core runtime and connection handling; `server::h3` is the
//!   QUIC/HTTP/3 endpoint each core runs beside its HTTP/1.1 listener.

pub mod config;
pub mod hash;
pub mod http;
pub mod metrics;
#[cfg(test)]
mod mutate;
pub mod server;
pub mod store;
pub mod sys;
pub mod verified;
pub mod websocket;

pub use hash::BlobHash;
