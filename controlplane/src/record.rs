//! What a node says about itself, signed with its key: its client-facing
//! addresses, region, capacity, services and load. Every receiver checks the
//! signature against the node id inside the record, so no node can speak for
//! another, and keeps only the highest `version` it has seen from each node.
//!
//! Wire form (sans-IO, fuzzed: `fuzz/fuzz_targets/node_record.rs`):
//! `"TR" 0x01` + postcard(`NodeRecord`) + ed25519 signature (64 bytes) over
//! `"tessera-node-record-v1" || body`. At most `MAX_RECORD_BYTES`.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::identity::{IdentityError, NodeId, NodeKey};

pub const MAX_RECORD_BYTES: usize = 2048;
const MAGIC: &[u8; 3] = b"TR\x01";
const DOMAIN: &[u8] = b"tessera-node-record-v1";
const MAX_ADDRS: usize = 8;
const MAX_SERVICES: usize = 32;
const MAX_LABEL: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    /// Grows with every record the node signs (milliseconds since the epoch at
    /// signing); receivers keep the highest.
    pub version: u64,
    /// Client-facing addresses (HTTP/1.1 on TCP, HTTP/3 on UDP, same port).
    pub addrs: Vec<SocketAddr>,
    pub region: String,
    pub capacity_bytes: u64,
    pub services: Vec<String>,
    /// Load in thousandths of capacity (0..=1000).
    pub load_permille: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("node record of {0} bytes exceeds {MAX_RECORD_BYTES}")]
    TooLarge(usize),
    #[error("not a node record (bad header or truncated)")]
    NotARecord,
    #[error("malformed node record body")]
    Malformed,
    #[error("node record out of bounds: {0}")]
    OutOfBounds(&'static str),
    #[error("node record signature does not verify for the node id it names")]
    BadSignature,
}

impl NodeRecord {
    fn check_bounds(&self) -> Result<(), RecordError> {
        if self.addrs.is_empty() || self.addrs.len() > MAX_ADDRS {
            return Err(RecordError::OutOfBounds("addrs"));
        }
        if self.region.len() > MAX_LABEL {
            return Err(RecordError::OutOfBounds("region"));
        }
        if self.services.len() > MAX_SERVICES || self.services.iter().any(|s| s.len() > MAX_LABEL) {
            return Err(RecordError::OutOfBounds("services"));
        }
        if self.load_permille > 1000 {
            return Err(RecordError::OutOfBounds("load"));
        }
        Ok(())
    }

    /// Signs the record with `key`; the record's id must be the key's.
    pub fn sign(&self, key: &NodeKey) -> Result<Vec<u8>, RecordError> {
        if self.id != key.id() {
            return Err(RecordError::BadSignature);
        }
        self.check_bounds()?;
        let body = postcard::to_stdvec(self).map_err(|_| RecordError::Malformed)?;
        let mut out = Vec::with_capacity(MAGIC.len() + body.len() + 64);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&body);
        out.extend_from_slice(&key.sign(&signed_message(&body)));
        if out.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge(out.len()));
        }
        Ok(out)
    }

    /// Decodes and verifies a record from the network. Changes nothing; any
    /// input gives a record or an error, never a panic.
    pub fn decode(wire: &[u8]) -> Result<NodeRecord, RecordError> {
        if wire.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge(wire.len()));
        }
        if wire.len() < MAGIC.len() + 64 || &wire[..MAGIC.len()] != MAGIC {
            return Err(RecordError::NotARecord);
        }
        let (body, sig) = wire[MAGIC.len()..].split_at(wire.len() - MAGIC.len() - 64);
        let record: NodeRecord = match postcard::take_from_bytes(body) {
            Ok((r, [])) => r,
            _ => return Err(RecordError::Malformed),
        };
        record.check_bounds()?;
        let mut signature = [0u8; 64];
        signature.copy_from_slice(sig);
        record
            .id
            .verify(&signed_message(body), &signature)
            .map_err(|e| match e {
                IdentityError::BadPublicKey | IdentityError::BadSignature => {
                    RecordError::BadSignature
                }
                _ => RecordError::Malformed,
            })?;
        Ok(record)
    }
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + body.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(body);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &NodeKey) -> NodeRecord {
        NodeRecord {
            id: key.id(),
            version: 7,
            addrs: vec!["127.0.0.2:8080".parse().expect("addr")],
            region: "eu-west".into(),
            capacity_bytes: 1 << 40,
            services: vec!["cdn".into()],
            load_permille: 120,
        }
    }

    #[test]
    fn round_trips_and_verifies() {
        let key = NodeKey::ephemeral();
        let r = record(&key);
        let wire = r.sign(&key).expect("sign");
        assert_eq!(NodeRecord::decode(&wire), Ok(r));
    }

    #[test]
    fn no_node_can_speak_for_another() {
        let honest = NodeKey::ephemeral();
        let liar = NodeKey::ephemeral();
        // Signing someone else's record is refused locally...
        assert_eq!(record(&honest).sign(&liar), Err(RecordError::BadSignature));
        // ...and a record claiming the honest id with the liar's signature fails.
        let mut wire = record(&liar).sign(&liar).expect("sign");
        let body_end = wire.len() - 64;
        let forged_body = postcard::to_stdvec(&record(&honest)).expect("encode");
        let mut forged = MAGIC.to_vec();
        forged.extend_from_slice(&forged_body);
        forged.extend_from_slice(&wire[body_end..]);
        assert_eq!(NodeRecord::decode(&forged), Err(RecordError::BadSignature));
        // Any flipped bit in a genuine record is caught.
        for i in 0..wire.len() {
            wire[i] ^= 0x10;
            assert!(
                NodeRecord::decode(&wire).is_err(),
                "bit flip at {i} accepted"
            );
            wire[i] ^= 0x10;
        }
        assert!(NodeRecord::decode(&wire).is_ok());
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let key = NodeKey::ephemeral();
        let wire = record(&key).sign(&key).expect("sign");
        for len in 0..wire.len() {
            assert!(NodeRecord::decode(&wire[..len]).is_err());
        }
        assert_eq!(
            NodeRecord::decode(&vec![0u8; MAX_RECORD_BYTES + 1]),
            Err(RecordError::TooLarge(MAX_RECORD_BYTES + 1))
        );
        let mut r = record(&key);
        r.services = vec!["x".repeat(65)];
        assert_eq!(r.sign(&key), Err(RecordError::OutOfBounds("services")));
        let mut rng = 0x1234_5678_u64;
        for _ in 0..20_000 {
            let len = (rng % 300) as usize;
            let mut buf = MAGIC.to_vec();
            for _ in 0..len {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                buf.push(rng as u8);
            }
            assert!(NodeRecord::decode(&buf).is_err());
        }
    }
}
