//! Blob names: the BLAKE3 root hash of a blob's bytes, written as 64 lowercase hex characters.

use std::fmt;

/// What a valid hash looks like, for error messages that a client can act on.
pub const HASH_FORMAT_HINT: &str =
    "a blob hash is the BLAKE3 hash of its bytes: exactly 64 lowercase hex characters (0-9, a-f)";

/// A blob's identity: the BLAKE3 root hash of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobHash(pub [u8; 32]);

/// Why a text is not a blob hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HashParseError {
    #[error("expected 64 characters, got {0}; {HASH_FORMAT_HINT}")]
    Length(usize),
    #[error("character {0} is not a lowercase hex digit; {HASH_FORMAT_HINT}")]
    NotHex(usize),
}

impl BlobHash {
    /// Parses 64 lowercase hex characters.
    pub fn parse(text: &[u8]) -> Result<Self, HashParseError> {
        if text.len() != 64 {
            return Err(HashParseError::Length(text.len()));
        }
        let mut out = [0u8; 32];
        for (i, pair) in text.chunks_exact(2).enumerate() {
            let hi = nibble(pair[0]).ok_or(HashParseError::NotHex(2 * i))?;
            let lo = nibble(pair[1]).ok_or(HashParseError::NotHex(2 * i + 1))?;
            out[i] = (hi << 4) | lo;
        }
        Ok(Self(out))
    }

    /// The hash as 64 lowercase hex bytes, without allocating.
    pub fn to_hex(&self) -> [u8; 64] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 64];
        for (i, byte) in self.0.iter().enumerate() {
            out[2 * i] = DIGITS[(byte >> 4) as usize];
            out[2 * i + 1] = DIGITS[(byte & 0xf) as usize];
        }
        out
    }

    pub fn as_blake3(&self) -> blake3::Hash {
        blake3::Hash::from_bytes(self.0)
    }
}

impl From<blake3::Hash> for BlobHash {
    fn from(hash: blake3::Hash) -> Self {
        Self(*hash.as_bytes())
    }
}

impl std::str::FromStr for BlobHash {
    type Err = HashParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s.as_bytes())
    }
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.to_hex();
        // The digits are ASCII by construction.
        f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobHash({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_matches_blake3() {
        let h = BlobHash::from(blake3::hash(b"tessera"));
        assert_eq!(h.to_string(), blake3::hash(b"tessera").to_hex().as_str());
        assert_eq!(BlobHash::parse(h.to_string().as_bytes()), Ok(h));
    }

    #[test]
    fn rejects_bad_text() {
        assert_eq!(BlobHash::parse(b"abc"), Err(HashParseError::Length(3)));
        let upper = "A".repeat(64);
        assert_eq!(
            BlobHash::parse(upper.as_bytes()),
            Err(HashParseError::NotHex(0))
        );
        let mut almost = "0".repeat(63);
        almost.push('g');
        assert_eq!(
            BlobHash::parse(almost.as_bytes()),
            Err(HashParseError::NotHex(63))
        );
    }
}
