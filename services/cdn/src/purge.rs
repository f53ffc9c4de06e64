//! Purges: what a zone's owner signs to drop or mark stale what the zone has
//! cached, on every node that runs it.
//!
//! A purge names the zone, what to purge (one URL, a path prefix, a tag the
//! origin gave in `Surrogate-Key` or `Cache-Tag`, or everything), whether it
//! is soft (mark stale: the next request revalidates) or hard (drop), a time
//! and a random id. The owner signs it with the key that owns the deployment;
//! a node takes it only if the signature checks out against the zone's owner,
//! the time is within five minutes of its own, and it has not seen the id.
//! The node that takes it from the client passes the same signed purge on to
//! the zone's other nodes, which check it themselves.

use serde::{Deserialize, Serialize};

/// How far a purge's time may be from a node's clock.
pub const MAX_SKEW_MS: u64 = 5 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum What {
    /// One path (with its query, if any).
    Url,
    /// Every path that starts with the value.
    Prefix,
    /// Every object the origin tagged with the value.
    Tag,
    /// Everything in the zone.
    All,
}

/// A signed purge, as it travels (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Purge {
    pub zone: String,
    pub what: What,
    #[serde(default)]
    pub value: String,
    #[serde(default)]
    pub soft: bool,
    pub time_ms: u64,
    /// 16 random bytes, hex: no purge is taken twice.
    pub id: String,
    /// The signer's ed25519 key, hex.
    pub owner: String,
    /// ed25519 over [`Purge::message`], hex.
    pub sig: String,
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

impl Purge {
    /// What the owner signs.
    pub fn message(&self) -> Vec<u8> {
        let what = match self.what {
            What::Url => "url",
            What::Prefix => "prefix",
            What::Tag => "tag",
            What::All => "all",
        };
        format!(
            "tessera-purge-v1\n{}\n{what}\n{}\n{}\n{}\n{}",
            self.zone, self.value, self.soft, self.time_ms, self.id
        )
        .into_bytes()
    }

    /// A purge signed with `key`.
    pub fn signed(
        key: &ed25519_dalek::SigningKey,
        zone: &str,
        what: What,
        value: &str,
        soft: bool,
        time_ms: u64,
        id: [u8; 16],
    ) -> Purge {
        use ed25519_dalek::Signer;
        let mut p = Purge {
            zone: zone.into(),
            what,
            value: value.into(),
            soft,
            time_ms,
            id: hex(&id),
            owner: hex(&key.verifying_key().to_bytes()),
            sig: String::new(),
        };
        p.sig = hex(&key.sign(&p.message()).to_bytes());
        p
    }

    /// Checks it against the zone's owner (hex key) and this node's clock;
    /// Err says why not.
    pub fn check(&self, owner: &str, now_ms: u64) -> Result<(), &'static str> {
        if !self.owner.eq_ignore_ascii_case(owner) {
            return Err("the purge is not signed by the zone's owner");
        }
        if self.time_ms.abs_diff(now_ms) > MAX_SKEW_MS {
            return Err("the purge's time is more than five minutes from this node's clock");
        }
        if unhex::<16>(&self.id).is_none() {
            return Err("the purge id is not 32 hex digits");
        }
        if self.what != What::All && self.value.is_empty() {
            return Err("a url, prefix or tag purge needs a value");
        }
        let key = unhex::<32>(&self.owner)
            .and_then(|k| ed25519_dalek::VerifyingKey::from_bytes(&k).ok())
            .ok_or("the owner is not an ed25519 key")?;
        let sig = unhex::<64>(&self.sig).ok_or("the signature is not 128 hex digits")?;
        key.verify_strict(&self.message(), &ed25519_dalek::Signature::from_bytes(&sig))
            .map_err(|_| "the purge's signature does not verify")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_owner_now_and_unaltered() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let owner = hex(&key.verifying_key().to_bytes());
        let p = Purge::signed(
            &key,
            "shop",
            What::Prefix,
            "/img/",
            false,
            1_000_000,
            [1; 16],
        );
        assert_eq!(p.check(&owner, 1_000_500), Ok(()));
        let json = serde_json::to_string(&p).expect("json");
        let back: Purge = serde_json::from_str(&json).expect("parse");
        assert_eq!(back.check(&owner, 1_000_500), Ok(()));
        let other = hex(&[9; 32]);
        assert!(p.check(&other, 1_000_500).is_err());
        assert!(p.check(&owner, 1_000_000 + MAX_SKEW_MS + 1).is_err());
        let mut changed = p.clone();
        changed.value = "/".into();
        assert_eq!(
            changed.check(&owner, 1_000_500),
            Err("the purge's signature does not verify")
        );
        let mut soft = p.clone();
        soft.soft = true;
        assert!(soft.check(&owner, 1_000_500).is_err());
        let empty = Purge::signed(&key, "shop", What::Tag, "", false, 1_000_000, [2; 16]);
        assert!(empty.check(&owner, 1_000_000).is_err());
    }
}
