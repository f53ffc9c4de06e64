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
    /// Parses 64 lowercase hex characters. A table lookup per character and
    /// one check at the end: every request for a blob parses one.
    pub fn parse(text: &[u8]) -> Result<Self, HashParseError> {
        let Ok(text) = <&[u8; 64]>::try_from(text) else {
            return Err(HashParseError::Length(text.len()));
        };
        let mut out = [0u8; 32];
        let mut bad = 0u8;
        for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
            let (hi, lo) = (HEX[pair[0] as usize], HEX[pair[1] as usize]);
            bad |= hi | lo;
            *byte = (hi << 4) | (lo & 0x0f);
        }
        if bad == NOT_HEX {
            let at = text.iter().position(|&c| HEX[c as usize] == NOT_HEX);
            return Err(HashParseError::NotHex(at.unwrap_or(0)));
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

/// A character's value as a hex digit, or [`NOT_HEX`].
const HEX: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut i = 0;
    while i < 16 {
        table[b"0123456789abcdef"[i] as usize] = i as u8;
        i += 1;
    }
    table
};
/// Not a lowercase hex digit. Every bit set, so one such character among
/// digits (at most 0x0f each) makes their OR equal to it.
const NOT_HEX: u8 = 0xff;

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
        // Every byte that is not a lowercase hex digit, at every position.
        let good = BlobHash::from(blake3::hash(b"x")).to_hex();
        for c in 0..=255u8 {
            let digit = c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
            for at in [0, 1, 31, 62, 63] {
                let mut text = good;
                text[at] = c;
                let parsed = BlobHash::parse(&text);
                if digit {
                    assert!(parsed.is_ok(), "{c:#x} at {at}");
                } else {
                    assert_eq!(parsed, Err(HashParseError::NotHex(at)), "{c:#x} at {at}");
                }
            }
        }
    }
}
