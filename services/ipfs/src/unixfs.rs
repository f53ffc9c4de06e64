//! UnixFS v1: files and directories as dag-pb nodes.
//!
//! A dag-pb node (decoded by `ipld-dagpb`) carries links and a `Data` field;
//! for UnixFS that field is the `Data` protobuf message below, decoded and
//! encoded here with `quick-protobuf`'s reader and writer (the message is
//! eight fields; no generated code is worth a build script for it).
//!
//! ```text
//! message Data {
//!   required DataType Type = 1;   // Raw, Directory, File, Metadata, Symlink, HAMTShard
//!   optional bytes Data = 2;
//!   optional uint64 filesize = 3;
//!   repeated uint64 blocksizes = 4;
//!   optional uint64 hashType = 5;
//!   optional uint64 fanout = 6;
//!   optional uint32 mode = 7;
//!   optional UnixTime mtime = 8;
//! }
//! ```

use bytes::Bytes;
use cid::Cid;
use ipld_dagpb::{PbLink, PbNode};
use quick_protobuf::{BytesReader, Writer};

/// The node types of UnixFS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Raw,
    Directory,
    File,
    Metadata,
    Symlink,
    HamtShard,
}

impl Kind {
    fn from_code(c: u64) -> Option<Kind> {
        Some(match c {
            0 => Kind::Raw,
            1 => Kind::Directory,
            2 => Kind::File,
            3 => Kind::Metadata,
            4 => Kind::Symlink,
            5 => Kind::HamtShard,
            _ => return None,
        })
    }

    fn code(self) -> u64 {
        match self {
            Kind::Raw => 0,
            Kind::Directory => 1,
            Kind::File => 2,
            Kind::Metadata => 3,
            Kind::Symlink => 4,
            Kind::HamtShard => 5,
        }
    }
}

/// The UnixFS `Data` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    pub kind: Kind,
    pub data: Option<Vec<u8>>,
    pub filesize: Option<u64>,
    pub blocksizes: Vec<u64>,
    pub hash_type: Option<u64>,
    pub fanout: Option<u64>,
    pub mode: Option<u32>,
    /// Seconds and nanoseconds.
    pub mtime: Option<(i64, u32)>,
}

impl Data {
    pub fn new(kind: Kind) -> Data {
        Data {
            kind,
            data: None,
            filesize: None,
            blocksizes: Vec::new(),
            hash_type: None,
            fanout: None,
            mode: None,
            mtime: None,
        }
    }
}

/// The most children one node may list (a HAMT's fanout is at most 1024; a
/// file layout's width is 174 for Kubo, 1024 for `ipfs-car`).
pub const MAX_LINKS: usize = 16 * 1024;
/// HAMT fanouts taken: powers of two from 8 to 1024.
pub const MAX_FANOUT: u64 = 1024;

fn perr(e: quick_protobuf::Error) -> String {
    format!("malformed UnixFS data: {e}")
}

/// Decodes UnixFS `Data`; Err says what is wrong.
pub fn decode_data(bytes: &[u8]) -> Result<Data, String> {
    let mut r = BytesReader::from_bytes(bytes);
    let mut kind = None;
    let mut d = Data::new(Kind::Raw);
    while !r.is_eof() {
        let tag = r.next_tag(bytes).map_err(perr)?;
        match (tag >> 3, tag & 7) {
            (1, 0) => {
                let c = r.read_uint64(bytes).map_err(perr)?;
                kind = Some(Kind::from_code(c).ok_or_else(|| format!("unknown UnixFS type {c}"))?);
            }
            (2, 2) => d.data = Some(r.read_bytes(bytes).map_err(perr)?.to_vec()),
            (3, 0) => d.filesize = Some(r.read_uint64(bytes).map_err(perr)?),
            (4, 0) => d.blocksizes.push(r.read_uint64(bytes).map_err(perr)?),
            (4, 2) => {
                let packed = r
                    .read_packed(bytes, |r, b| r.read_uint64(b))
                    .map_err(perr)?;
                d.blocksizes.extend(packed);
            }
            (5, 0) => d.hash_type = Some(r.read_uint64(bytes).map_err(perr)?),
            (6, 0) => d.fanout = Some(r.read_uint64(bytes).map_err(perr)?),
            (7, 0) => d.mode = Some(r.read_uint32(bytes).map_err(perr)?),
            (8, 2) => {
                let inner = r.read_bytes(bytes).map_err(perr)?;
                let mut m = BytesReader::from_bytes(inner);
                let (mut secs, mut nanos) = (0i64, 0u32);
                while !m.is_eof() {
                    let t = m.next_tag(inner).map_err(perr)?;
                    match (t >> 3, t & 7) {
                        (1, 0) => secs = m.read_int64(inner).map_err(perr)?,
                        (2, 5) => nanos = m.read_fixed32(inner).map_err(perr)?,
                        _ => m.read_unknown(inner, t).map_err(perr)?,
                    }
                }
                d.mtime = Some((secs, nanos));
            }
            _ => r.read_unknown(bytes, tag).map_err(perr)?,
        }
        if d.blocksizes.len() > MAX_LINKS {
            return Err(format!("more than {MAX_LINKS} block sizes"));
        }
    }
    d.kind = kind.ok_or("UnixFS data without a type")?;
    Ok(d)
}

/// Encodes UnixFS `Data`, fields in order, as Kubo and `ipfs-car` do.
pub fn encode_data(d: &Data) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + d.data.as_ref().map_or(0, Vec::len));
    {
        let mut w = Writer::new(&mut out);
        // Writing into a Vec cannot fail.
        let _ = w.write_with_tag(8, |w| w.write_uint64(d.kind.code()));
        if let Some(data) = &d.data {
            let _ = w.write_with_tag(18, |w| w.write_bytes(data));
        }
        if let Some(size) = d.filesize {
            let _ = w.write_with_tag(24, |w| w.write_uint64(size));
        }
        for b in &d.blocksizes {
            let _ = w.write_with_tag(32, |w| w.write_uint64(*b));
        }
        if let Some(h) = d.hash_type {
            let _ = w.write_with_tag(40, |w| w.write_uint64(h));
        }
        if let Some(f) = d.fanout {
            let _ = w.write_with_tag(48, |w| w.write_uint64(f));
        }
        if let Some(m) = d.mode {
            let _ = w.write_with_tag(56, |w| w.write_uint32(m));
        }
    }
    out
}

/// A dag-pb block read as UnixFS.
#[derive(Debug, Clone)]
pub struct Node {
    pub links: Vec<PbLink>,
    pub data: Data,
}

/// Decodes a dag-pb block and its UnixFS data.
pub fn decode_node(block: &[u8]) -> Result<Node, String> {
    let pb = PbNode::from_bytes(Bytes::copy_from_slice(block))
        .map_err(|e| format!("malformed dag-pb: {e}"))?;
    if pb.links.len() > MAX_LINKS {
        return Err(format!("a node of more than {MAX_LINKS} links"));
    }
    let data = decode_data(pb.data.as_deref().unwrap_or(&[]))?;
    if data.kind == Kind::HamtShard {
        let fanout = data.fanout.unwrap_or(0);
        if !fanout.is_power_of_two() || !(8..=MAX_FANOUT).contains(&fanout) {
            return Err(format!("a HAMT fanout of {fanout}"));
        }
        if data.hash_type != Some(MURMUR3_X64_64) {
            return Err("a HAMT hashed other than by murmur3-x64-64".into());
        }
    }
    Ok(Node {
        links: pb.links,
        data,
    })
}

/// Encodes a dag-pb node (links sorted by name, as dag-pb requires).
pub fn encode_node(links: Vec<PbLink>, data: &Data) -> Vec<u8> {
    PbNode {
        links,
        data: Some(Bytes::from(encode_data(data))),
    }
    .into_bytes()
}

/// The multicodec of HAMT's hash function.
pub const MURMUR3_X64_64: u64 = 0x22;

/// A HAMT key's hash: the first 64 bits of murmur3's x64 128-bit hash, big
/// endian, as go-unixfs and js-ipfs-unixfs take it.
pub fn hamt_hash(name: &[u8]) -> [u8; 8] {
    let h = murmur3::murmur3_x64_128(&mut std::io::Cursor::new(name), 0).unwrap_or_default();
    (h as u64).to_be_bytes()
}

/// The bucket index for `name` at `depth` of a HAMT with `fanout` buckets:
/// `log2(fanout)` bits of its hash per level, most significant first.
pub fn hamt_index(hash: &[u8; 8], depth: usize, fanout: u64) -> Option<u64> {
    let bits = fanout.trailing_zeros() as usize;
    let start = depth * bits;
    if start + bits > 64 {
        return None;
    }
    let v = u64::from_be_bytes(*hash);
    Some((v << start) >> (64 - bits))
}

/// The width of a HAMT link's hex prefix for `fanout` buckets.
pub fn hamt_prefix_len(fanout: u64) -> usize {
    format!("{:X}", fanout - 1).len()
}

/// Where a name is in a HAMT shard: the entry itself, or a sub-shard to
/// descend into.
pub enum HamtStep<'a> {
    Found(&'a PbLink),
    Descend(&'a PbLink),
    Missing,
}

/// Looks `name` up in one shard node at `depth`.
pub fn hamt_step<'a>(node: &'a Node, name: &str, depth: usize) -> HamtStep<'a> {
    let fanout = node.data.fanout.unwrap_or(256);
    let Some(index) = hamt_index(&hamt_hash(name.as_bytes()), depth, fanout) else {
        return HamtStep::Missing;
    };
    let width = hamt_prefix_len(fanout);
    let prefix = format!("{index:0width$X}");
    for link in &node.links {
        let Some(lname) = link.name.as_deref() else {
            continue;
        };
        if !lname.starts_with(&prefix) {
            continue;
        }
        if lname.len() == width {
            return HamtStep::Descend(link);
        }
        if &lname[width..] == name {
            return HamtStep::Found(link);
        }
    }
    HamtStep::Missing
}

/// One entry of a directory as listed (HAMT prefixes taken off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub cid: Cid,
    pub size: Option<u64>,
}

/// A file node's byte ranges: for each link, the offset in the file where
/// its bytes begin and how many (from `blocksizes`).
pub fn child_ranges(node: &Node) -> Result<Vec<(u64, u64)>, String> {
    if node.links.len() != node.data.blocksizes.len() {
        return Err(format!(
            "a file node of {} links and {} block sizes",
            node.links.len(),
            node.data.blocksizes.len()
        ));
    }
    let mut at = node.data.data.as_ref().map_or(0, |d| d.len() as u64);
    let mut out = Vec::with_capacity(node.links.len());
    for &size in &node.data.blocksizes {
        out.push((at, size));
        at = at.checked_add(size).ok_or("file sizes overflow")?;
    }
    Ok(out)
}

/// Feeds arbitrary bytes to the decoders (fuzz target `unixfs`, and a
/// random-input test): they return errors, never panic.
pub fn exercise(bytes: &[u8]) {
    if let Ok(d) = decode_data(bytes) {
        let again = decode_data(&encode_data(&d)).expect("what was encoded decodes");
        assert_eq!(again.kind, d.kind);
    }
    if let Ok(node) = decode_node(bytes) {
        let _ = child_ranges(&node);
        if node.data.kind == Kind::HamtShard {
            let _ = hamt_step(&node, "name", 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_round_trips() {
        let mut d = Data::new(Kind::File);
        d.filesize = Some(3 << 20);
        d.blocksizes = vec![1 << 20, 1 << 20, 1 << 20];
        let bytes = encode_data(&d);
        assert_eq!(decode_data(&bytes), Ok(d));
        let mut dir = Data::new(Kind::HamtShard);
        dir.data = Some(vec![1, 2]);
        dir.hash_type = Some(MURMUR3_X64_64);
        dir.fanout = Some(256);
        dir.mode = Some(0o755);
        assert_eq!(decode_data(&encode_data(&dir)), Ok(dir));
        assert!(decode_data(&[]).is_err(), "no type");
        assert!(decode_data(&[8, 9]).is_err(), "unknown type");
        assert!(decode_data(&[0x12, 5, 1]).is_err(), "short bytes");
    }

    #[test]
    fn hamt_indexes_take_bits_from_the_top() {
        let h = [0xAB, 0xCD, 0, 0, 0, 0, 0, 0];
        assert_eq!(hamt_index(&h, 0, 256), Some(0xAB));
        assert_eq!(hamt_index(&h, 1, 256), Some(0xCD));
        assert_eq!(hamt_index(&h, 0, 16), Some(0xA));
        assert_eq!(hamt_index(&h, 3, 16), Some(0xD));
        assert_eq!(hamt_index(&h, 8, 256), None);
        assert_eq!(hamt_prefix_len(256), 2);
        assert_eq!(hamt_prefix_len(1024), 3);
        assert_eq!(hamt_prefix_len(16), 1);
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = crate::testing::Xorshift(0x9e37_79b9_7f4a_7c15);
        for round in 0..5000 {
            let bytes: Vec<u8> = (0..round % 64).map(|_| rng.next() as u8).collect();
            exercise(&bytes);
        }
    }
}
