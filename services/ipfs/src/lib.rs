//! Tessera's IPFS service: content named by CIDs, kept in the node's BLAKE3
//! blob store, served through the IPFS Trustless Gateway protocol, and pinned
//! across the network through the IPFS Pinning Service API.
//!
//! - **CIDs map onto the store** ([`index`]). An IPFS block is stored as a
//!   blob; the index maps the block's multihash to the blob's BLAKE3 hash.
//!   A raw CID whose multihash is BLAKE3 (`bafkr4i…`) *is* a blob hash and
//!   needs no entry. Every block is checked against its CID's multihash
//!   ([`verify_block`]) before it is stored.
//! - **The gateway** ([`gateway`]): `GET`/`HEAD /ipfs/{cid}[/path]` as one raw
//!   block, a CAR (`dag-scope`, `entity-bytes`, `car-order`, `car-dups`) or,
//!   for a browser, the file itself; UnixFS paths resolve through directories
//!   and HAMT shards ([`unixfs`], [`dag`]). `GET /routing/v1/providers/{cid}`
//!   names the nodes that hold it.
//! - **The Pinning Service API** ([`pins`]): `/pins`, v1.0.0. A pin is a
//!   deployment of this service (kind `ipfs`), placed by the network; the
//!   nodes placement chose fetch the DAG from the pin's origins or from their
//!   peers, every block verified, and keep it pinned.
//! - **Import** ([`car`], [`import`]): CAR files (the bytes `ipfs-car pack`
//!   writes) and a UnixFS importer that gives the same CIDs as `ipfs-car`.
//!
//! The CAR codec is this crate's own ([`car`]): CARv1 framing is a varint and
//! a CID before each block, and the crates that read it (`rs-car-sync`,
//! `iroh-car`) allocate whatever length a hostile stream declares (up to
//! 1 GiB) and are async or unbounded; CIDs, multihashes, dag-pb and dag-cbor
//! are the ecosystem's crates (`cid`, `ipld-dagpb`, `serde_ipld_dagcbor`).

pub mod car;
pub mod dag;
pub mod gateway;
pub mod import;
pub mod index;
pub mod pins;
pub mod service;
pub mod unixfs;

pub use cid::Cid;
pub use service::Ipfs;

use sha2::Digest as _;

/// The largest block taken or served: the limit every IPFS implementation
/// keeps to (bitswap's), so a hostile peer cannot make a node buffer more.
pub const MAX_BLOCK_BYTES: usize = 2 << 20;

/// Multicodec codes of the codecs the node understands.
pub const RAW: u64 = 0x55;
pub const DAG_PB: u64 = 0x70;
pub const DAG_CBOR: u64 = 0x71;
pub const DAG_JSON: u64 = 0x0129;
/// Multihash codes.
pub const IDENTITY: u64 = 0x00;
pub const SHA2_256: u64 = 0x12;
pub const BLAKE3: u64 = 0x1e;

/// The hasher of the maps the core reads on every raw-block request (the
/// block index, the billing meter): foldhash, seeded per process, a few
/// nanoseconds for a 32-byte key where SipHash takes tens, and still keyed,
/// so an owner cannot grind blocks whose keys collide.
pub type DigestState = foldhash::fast::RandomState;

/// The largest identity multihash taken: an identity CID carries its block
/// inline, so it is bounded like a CID, not like a block.
pub const MAX_IDENTITY_BYTES: usize = 128;

/// Why a block is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockError {
    TooLarge(usize),
    /// The CID's hash function is not one the node verifies.
    UnsupportedHash(u64),
    /// The bytes do not hash to the CID.
    Mismatch,
}

impl std::fmt::Display for BlockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlockError::TooLarge(n) => write!(
                f,
                "a block of {n} bytes is over the {MAX_BLOCK_BYTES}-byte limit"
            ),
            BlockError::UnsupportedHash(c) => write!(
                f,
                "multihash 0x{c:x} is not supported (sha2-256, blake3 and identity are)"
            ),
            BlockError::Mismatch => f.write_str("the block does not hash to its CID"),
        }
    }
}

/// Checks that `bytes` are the block `cid` names.
pub fn verify_block(cid: &Cid, bytes: &[u8]) -> Result<(), BlockError> {
    if bytes.len() > MAX_BLOCK_BYTES {
        return Err(BlockError::TooLarge(bytes.len()));
    }
    let mh = cid.hash();
    let ok = match mh.code() {
        SHA2_256 => mh.digest() == sha2::Sha256::digest(bytes).as_slice(),
        BLAKE3 => mh.size() == 32 && mh.digest() == blake3::hash(bytes).as_bytes(),
        IDENTITY => mh.digest() == bytes,
        other => return Err(BlockError::UnsupportedHash(other)),
    };
    if ok {
        Ok(())
    } else {
        Err(BlockError::Mismatch)
    }
}

/// The blob hash a CID names directly: a BLAKE3 multihash of 32 bytes (any
/// codec: the block's bytes are the blob's).
pub fn blake3_of(cid: &Cid) -> Option<[u8; 32]> {
    let mh = cid.hash();
    (mh.code() == BLAKE3 && mh.size() == 32).then(|| {
        let mut h = [0u8; 32];
        h.copy_from_slice(mh.digest());
        h
    })
}

/// The bytes of an identity CID's block (it carries them inline).
pub fn identity_block(cid: &Cid) -> Option<&[u8]> {
    let mh = cid.hash();
    (mh.code() == IDENTITY).then(|| mh.digest())
}

/// The key a block is indexed by: its multihash, as bytes (the same for the
/// CIDv0 and CIDv1 of a block, and for every codec).
pub fn block_key(cid: &Cid) -> Vec<u8> {
    cid.hash().to_bytes()
}

/// The longest CID string taken (a CIDv1 with a 64-byte digest in base32 is
/// about 120 characters).
pub const MAX_CID_CHARS: usize = 200;

/// Lower-case RFC 4648 base32 without padding: multibase `b`.
fn base32_lower() -> &'static data_encoding::Encoding {
    static ENC: std::sync::OnceLock<data_encoding::Encoding> = std::sync::OnceLock::new();
    ENC.get_or_init(|| {
        let mut spec = data_encoding::Specification::new();
        spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
        spec.encoding()
            .unwrap_or_else(|_| data_encoding::BASE32_NOPAD.clone())
    })
}

/// Parses a CID as it appears in a URL: CIDv1 in lower-case base32 (what
/// every gateway link and `ipfs-car` use) is decoded into a stack buffer,
/// without allocating; other multibases and CIDv0 (`Qm…`) through `cid`.
pub fn parse_cid(s: &[u8]) -> Option<Cid> {
    if s.is_empty() || s.len() > MAX_CID_CHARS {
        return None;
    }
    if s[0] == b'b' {
        let enc = base32_lower();
        let mut buf = [0u8; MAX_CID_CHARS];
        let len = enc.decode_len(s.len() - 1).ok()?;
        let out = buf.get_mut(..len)?;
        let n = enc.decode_mut(&s[1..], out).ok()?;
        return Cid::read_bytes(&out[..n]).ok();
    }
    let text = std::str::from_utf8(s).ok()?;
    Cid::try_from(text).ok()
}

/// A CID's canonical text: CIDv1 in base32 (a CIDv0 upgraded, as gateways
/// print it), the form used in ETags and listings.
pub fn cid_text(cid: &Cid) -> String {
    let v1 = if cid.version() == cid::Version::V0 {
        Cid::new_v1(DAG_PB, *cid.hash())
    } else {
        *cid
    };
    let mut s = String::with_capacity(64);
    s.push('b');
    s.push_str(&base32_lower().encode(&v1.to_bytes()));
    s
}

/// The empty identity CID (`bafkqaaa`): an empty raw block, which every
/// gateway answers; clients probe with it.
pub fn empty_identity() -> Cid {
    Cid::new_v1(
        RAW,
        cid::multihash::Multihash::<64>::wrap(IDENTITY, &[]).unwrap_or_default(),
    )
}

/// A raw-leaf CIDv1 with a sha2-256 multihash, for bytes (what `ipfs-car`
/// makes for a file's chunks).
pub fn sha256_cid(codec: u64, bytes: &[u8]) -> Cid {
    let digest = sha2::Sha256::digest(bytes);
    Cid::new_v1(
        codec,
        cid::multihash::Multihash::<64>::wrap(SHA2_256, &digest).unwrap_or_default(),
    )
}

/// A CIDv1 with a BLAKE3 multihash: the block's blob hash as a CID.
pub fn blake3_cid(codec: u64, hash: &[u8; 32]) -> Cid {
    Cid::new_v1(
        codec,
        cid::multihash::Multihash::<64>::wrap(BLAKE3, hash).unwrap_or_default(),
    )
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cids_parse_and_print_in_base32() {
        let raw = sha256_cid(RAW, b"hello");
        let text = cid_text(&raw);
        assert!(text.starts_with("bafkrei"), "{text}");
        assert_eq!(parse_cid(text.as_bytes()), Some(raw));
        assert_eq!(raw.to_string(), text);
        // CIDv0 parses through the cid crate and prints as its CIDv1.
        let v0 = Cid::new_v0(*sha256_cid(DAG_PB, b"x").hash()).expect("v0");
        let parsed = parse_cid(v0.to_string().as_bytes()).expect("v0 parses");
        assert_eq!(parsed, v0);
        assert!(cid_text(&parsed).starts_with("bafybei"));
        assert_eq!(parse_cid(b"bafkqaaa"), Some(empty_identity()));
        for bad in [&b""[..], b"b", b"bafy!", b"Qm0OIl", b"zzzz"] {
            assert_eq!(parse_cid(bad), None, "{bad:?}");
        }
        let long = vec![b'b'; MAX_CID_CHARS + 1];
        assert_eq!(parse_cid(&long), None);
    }

    #[test]
    fn blocks_are_checked_against_their_multihash() {
        let data = b"some block".to_vec();
        let sha = sha256_cid(RAW, &data);
        assert_eq!(verify_block(&sha, &data), Ok(()));
        let mut flipped = data.clone();
        flipped[3] ^= 1;
        assert_eq!(verify_block(&sha, &flipped), Err(BlockError::Mismatch));
        let b3 = blake3_cid(RAW, blake3::hash(&data).as_bytes());
        assert!(b3.to_string().starts_with("bafkr4i"));
        assert_eq!(verify_block(&b3, &data), Ok(()));
        assert_eq!(verify_block(&b3, &flipped), Err(BlockError::Mismatch));
        assert_eq!(blake3_of(&b3), Some(*blake3::hash(&data).as_bytes()));
        assert_eq!(blake3_of(&sha), None);
        assert_eq!(verify_block(&empty_identity(), b""), Ok(()));
        assert_eq!(identity_block(&empty_identity()), Some(&b""[..]));
        let md5 = Cid::new_v1(
            RAW,
            cid::multihash::Multihash::<64>::wrap(0xd5, &[0; 16]).expect("mh"),
        );
        assert_eq!(
            verify_block(&md5, b""),
            Err(BlockError::UnsupportedHash(0xd5))
        );
        let big = vec![0u8; MAX_BLOCK_BYTES + 1];
        assert!(matches!(
            verify_block(&sha, &big),
            Err(BlockError::TooLarge(_))
        ));
    }
}

/// Random inputs for the parsers' random-input tests (the fuzz targets'
/// cheap stand-ins that run in CI).
#[cfg(test)]
pub(crate) mod testing {
    /// xorshift64: a fixed seed, so a failure repeats.
    pub struct Xorshift(pub u64);

    impl Xorshift {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Calls `check` with `rounds` damaged copies of `good`: round `r`
    /// overwrites `1 + r % edits` random bytes, then cuts `r % cut` off the end.
    pub fn damaged(
        good: &[u8],
        rounds: usize,
        edits: usize,
        cut: usize,
        mut check: impl FnMut(&[u8]),
    ) {
        let mut rng = Xorshift(0x2545_f491_4f6c_dd1d);
        for round in 0..rounds {
            let mut bytes = good.to_vec();
            for _ in 0..(1 + round % edits) {
                let r = rng.next();
                let at = (r as usize) % bytes.len();
                bytes[at] = (r >> 32) as u8;
            }
            bytes.truncate(bytes.len() - (round % cut).min(bytes.len()));
            check(&bytes);
        }
    }
}
