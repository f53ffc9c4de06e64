//! Verified streaming: BLAKE3 hash trees with 16 KiB chunk groups, in the bao format.
//!
//! Sans-IO: everything here works on byte slices and callbacks; the store and the
//! HTTP server do the I/O. The tree shape and node order come from `bao-tree`
//! ([`BaoTree`], its pre- and post-order iterators and pre-order outboard layout);
//! this module adds what a server and a streaming client need around it:
//!
//! - [`OutboardBuilder`] hashes a stream of unknown length once, group by group, and
//!   produces the root hash and the pre-order outboard at the end.
//! - [`Verifier`] checks parents and chunk groups against the root, in the order a
//!   pre-order encoding delivers them. The server runs it while encoding (a corrupt
//!   blob is never sent as valid); clients and imports run it while decoding.
//! - [`decode_stream`] reads a whole verified stream from any reader.
//!
//! # Wire format of a verified stream
//! `size` as 8 bytes little-endian, then the bao-tree pre-order encoding of the
//! requested chunk groups: for each node on the way down, its 64-byte hash pair,
//! and for each chunk group in range, its bytes (16 KiB, the last one shorter).
//! A byte range is widened to whole chunk groups, see [`group_ranges`].

use std::io::{self, Read};

use bao_tree::{iter::BaoChunk, BaoTree, BlockSize, ChunkNum, ChunkRanges, TreeNode};
use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, HasherExt, Mode};

/// log2 of the chunks (1 KiB each) in one chunk group.
pub const CHUNK_GROUP_LOG: u8 = 4;
/// Bytes in one chunk group: the unit of verification.
pub const CHUNK_GROUP_BYTES: usize = 1024 << CHUNK_GROUP_LOG;
/// Chunks in one chunk group.
const GROUP_CHUNKS: u64 = 1 << CHUNK_GROUP_LOG;
/// The largest blob a verified stream may announce: 2^50 bytes (1 PiB). Bounds the
/// memory a client or an import allocates for the outboard from a size it was sent.
pub const MAX_STREAM_SIZE: u64 = 1 << 50;

pub fn block_size() -> BlockSize {
    BlockSize::from_chunk_log(CHUNK_GROUP_LOG)
}

/// The hash tree of a blob of `size` bytes.
pub fn tree(size: u64) -> BaoTree {
    BaoTree::new(size, block_size())
}

/// Index of the chunk group that starts at `chunk`.
pub fn group_index(chunk: ChunkNum) -> u64 {
    chunk.0 / GROUP_CHUNKS
}

/// Chunk ranges for the inclusive byte range `first..=last`, widened to whole groups.
pub fn group_ranges(first: u64, last: u64) -> ChunkRanges {
    let start = (first / CHUNK_GROUP_BYTES as u64) * GROUP_CHUNKS;
    let end = (last / CHUNK_GROUP_BYTES as u64 + 1) * GROUP_CHUNKS;
    ChunkRanges::from(ChunkNum(start)..ChunkNum(end))
}

/// Ranges covering a whole blob.
pub fn all_ranges() -> ChunkRanges {
    ChunkRanges::all()
}

/// Bytes of the verified stream for `ranges` of a blob of `size` bytes (header included).
pub fn encoded_len(size: u64, ranges: &ChunkRanges) -> u64 {
    let tree = tree(size);
    let mut len = 8u64;
    for item in tree.ranges_pre_order_chunks_iter_ref(ranges, 0) {
        len += match item {
            BaoChunk::Parent { .. } => 64,
            BaoChunk::Leaf { size, .. } => size as u64,
        };
    }
    len
}

/// Byte offset of `node`'s hash pair in a pre-order outboard.
pub fn outboard_offset(tree: &BaoTree, node: TreeNode) -> Option<u64> {
    tree.pre_order_offset(node).map(|i| i * 64)
}

/// Chaining value (or, for a root, the hash) of one chunk group starting at `start_chunk`.
pub fn hash_group(start_chunk: ChunkNum, data: &[u8], is_root: bool) -> blake3::Hash {
    if is_root {
        blake3::hash(data)
    } else {
        let mut hasher = blake3::Hasher::new();
        hasher.set_input_offset(start_chunk.0 * 1024);
        hasher.update(data);
        blake3::Hash::from(hasher.finalize_non_root())
    }
}

fn parent_cv(left: &blake3::Hash, right: &blake3::Hash, is_root: bool) -> blake3::Hash {
    if is_root {
        merge_subtrees_root(left.as_bytes(), right.as_bytes(), Mode::Hash)
    } else {
        blake3::Hash::from(merge_subtrees_non_root(
            left.as_bytes(),
            right.as_bytes(),
            Mode::Hash,
        ))
    }
}

/// Hashes a stream of unknown length in one pass, group by group, and builds the
/// pre-order outboard when the stream ends.
///
/// A full group is hashed as a non-root subtree only once more bytes follow it,
/// because a blob of a single group is hashed as the root.
pub struct OutboardBuilder {
    group: Box<[u8; CHUNK_GROUP_BYTES]>,
    filled: usize,
    /// Chaining values of the groups hashed so far (32 bytes per 16 KiB).
    cvs: Vec<blake3::Hash>,
    size: u64,
}

/// The result of [`OutboardBuilder::finish`].
pub struct Outboard {
    pub root: blake3::Hash,
    pub size: u64,
    /// Hash pairs in bao-tree pre-order, no size prefix.
    pub pre_order: Vec<u8>,
}

impl Default for OutboardBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl OutboardBuilder {
    pub fn new() -> Self {
        Self {
            group: Box::new([0u8; CHUNK_GROUP_BYTES]),
            filled: 0,
            cvs: Vec::new(),
            size: 0,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.size += data.len() as u64;
        while !data.is_empty() {
            if self.filled == CHUNK_GROUP_BYTES {
                // More bytes follow, so the buffered group is not the root.
                let cv = hash_group(self.next_chunk(), &self.group[..], false);
                self.cvs.push(cv);
                self.filled = 0;
            }
            if self.filled == 0 && data.len() > CHUNK_GROUP_BYTES {
                // A whole group with more behind it: hash in place, no copy.
                let cv = hash_group(self.next_chunk(), &data[..CHUNK_GROUP_BYTES], false);
                self.cvs.push(cv);
                data = &data[CHUNK_GROUP_BYTES..];
                continue;
            }
            let take = (CHUNK_GROUP_BYTES - self.filled).min(data.len());
            self.group[self.filled..self.filled + take].copy_from_slice(&data[..take]);
            self.filled += take;
            data = &data[take..];
        }
    }

    fn next_chunk(&self) -> ChunkNum {
        ChunkNum(self.cvs.len() as u64 * GROUP_CHUNKS)
    }

    pub fn finish(mut self) -> Outboard {
        let tree = tree(self.size);
        let last = &self.group[..self.filled];
        if self.cvs.is_empty() {
            return Outboard {
                root: blake3::hash(last),
                size: self.size,
                pre_order: Vec::new(),
            };
        }
        let cv = hash_group(self.next_chunk(), last, false);
        self.cvs.push(cv);
        let mut pre_order = vec![0u8; tree.outboard_size() as usize];
        let mut leaves = self.cvs.iter();
        // Post-order: both children are on the stack when their parent comes.
        let mut stack: Vec<blake3::Hash> = Vec::with_capacity(64);
        for item in tree.post_order_chunks_iter() {
            match item {
                BaoChunk::Leaf { .. } => {
                    if let Some(cv) = leaves.next() {
                        stack.push(*cv);
                    }
                }
                BaoChunk::Parent { node, is_root, .. } => {
                    let (Some(right), Some(left)) = (stack.pop(), stack.pop()) else {
                        unreachable_tree();
                        continue;
                    };
                    if let Some(off) = outboard_offset(&tree, node) {
                        let off = off as usize;
                        pre_order[off..off + 32].copy_from_slice(left.as_bytes());
                        pre_order[off + 32..off + 64].copy_from_slice(right.as_bytes());
                    }
                    stack.push(parent_cv(&left, &right, is_root));
                }
            }
        }
        let root = stack.pop().unwrap_or_else(|| blake3::hash(&[]));
        Outboard {
            root,
            size: self.size,
            pre_order,
        }
    }
}

#[cold]
fn unreachable_tree() {
    // bao-tree's post-order iterator yields two subtrees before each parent; reaching
    // here means the tree and the leaf count disagree, which is a bug.
    debug_assert!(false, "post-order tree walk out of step");
}

/// Why a verified stream was refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("chunk group {index} (bytes {start}..{end}) does not match the hash")]
    BadGroup { index: u64, start: u64, end: u64 },
    #[error("hash pair for chunk groups {first}..={last} does not match the hash")]
    BadParent { first: u64, last: u64 },
    #[error("stream announces {0} bytes, more than the {MAX_STREAM_SIZE} a stream may carry")]
    TooLarge(u64),
    #[error("stream ended early, in chunk group {index}")]
    Truncated { index: u64 },
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

impl VerifyError {
    fn bad_parent(node: TreeNode) -> Self {
        let range = node.chunk_range();
        VerifyError::BadParent {
            first: group_index(range.start),
            last: group_index(ChunkNum(range.end.0.saturating_sub(1))),
        }
    }
}

/// Checks the items of a pre-order verified stream against a root hash.
///
/// Keeps a stack of the hashes still expected, as bao does: a parent replaces its
/// expected hash with its children's, a group consumes its own.
pub struct Verifier {
    /// Bounded by the tree depth: 2^50 bytes / 16 KiB groups gives at most 36 levels.
    stack: Vec<blake3::Hash>,
}

impl Verifier {
    pub fn new(root: blake3::Hash) -> Self {
        let mut stack = Vec::with_capacity(40);
        stack.push(root);
        Self { stack }
    }

    /// Checks a parent's hash pair; `left`/`right` say whether the children are in range.
    pub fn parent(
        &mut self,
        node: TreeNode,
        is_root: bool,
        left: bool,
        right: bool,
        pair: (&blake3::Hash, &blake3::Hash),
    ) -> Result<(), VerifyError> {
        let expected = self
            .stack
            .pop()
            .ok_or_else(|| VerifyError::bad_parent(node))?;
        if parent_cv(pair.0, pair.1, is_root) != expected {
            return Err(VerifyError::bad_parent(node));
        }
        if right {
            self.stack.push(*pair.1);
        }
        if left {
            self.stack.push(*pair.0);
        }
        Ok(())
    }

    /// Checks one chunk group's bytes.
    pub fn group(
        &mut self,
        start_chunk: ChunkNum,
        data: &[u8],
        is_root: bool,
    ) -> Result<(), VerifyError> {
        let index = group_index(start_chunk);
        let start = start_chunk.0 * 1024;
        let bad = VerifyError::BadGroup {
            index,
            start,
            end: start + data.len() as u64,
        };
        let expected = self.stack.pop().ok_or_else(|| VerifyError::BadGroup {
            index,
            start,
            end: start + data.len() as u64,
        })?;
        if hash_group(start_chunk, data, is_root) != expected {
            return Err(bad);
        }
        Ok(())
    }
}

/// The chaining value of every chunk group of the blob `root` of `size` bytes,
/// in order, from its pre-order outboard (`outboard`: hash pairs, no size
/// prefix), every pair checked against the root first.
///
/// This is what lets a node that holds an earlier version of a blob fetch only
/// the groups that changed: a group of the old version whose bytes hash, at
/// the same offset, to the new version's chaining value is the new version's
/// group. A blob of one group has no outboard; its only value is the root.
pub fn group_cvs(
    root: blake3::Hash,
    size: u64,
    outboard: &[u8],
) -> Result<Vec<blake3::Hash>, VerifyError> {
    if size > MAX_STREAM_SIZE {
        return Err(VerifyError::TooLarge(size));
    }
    let tree = tree(size);
    if outboard.len() as u64 != tree.outboard_size() {
        return Err(VerifyError::Truncated { index: 0 });
    }
    let mut verifier = Verifier::new(root);
    let mut cvs = Vec::with_capacity(size.div_ceil(CHUNK_GROUP_BYTES as u64) as usize);
    for item in tree.ranges_pre_order_chunks_iter_ref(&all_ranges(), 0) {
        match item {
            BaoChunk::Parent {
                node,
                is_root,
                left,
                right,
                ..
            } => {
                let off = outboard_offset(&tree, node).unwrap_or(0) as usize;
                let pair: &[u8; 64] = outboard
                    .get(off..off + 64)
                    .and_then(|p| p.try_into().ok())
                    .ok_or_else(|| VerifyError::bad_parent(node))?;
                let (l, r) = split_pair(pair);
                verifier.parent(node, is_root, left, right, (&l, &r))?;
            }
            BaoChunk::Leaf { start_chunk, .. } => {
                let cv = verifier.stack.pop().ok_or(VerifyError::Truncated {
                    index: group_index(start_chunk),
                })?;
                cvs.push(cv);
            }
        }
    }
    Ok(cvs)
}

/// One verified piece of a stream, handed to the sink of [`decode_stream`].
pub enum Item<'a> {
    /// The stream's announced size, before anything else.
    Size(u64),
    Parent {
        node: TreeNode,
        pair: &'a [u8; 64],
    },
    Group {
        offset: u64,
        data: &'a [u8],
    },
}

/// Reads and verifies a verified stream for `ranges` of the blob `root`.
///
/// Each item reaches `sink` only after it has been verified; the first bad group
/// stops the stream with its index. Returns the blob's size.
pub fn decode_stream<R: Read>(
    root: blake3::Hash,
    mut reader: R,
    ranges: &ChunkRanges,
    mut sink: impl FnMut(Item<'_>) -> io::Result<()>,
) -> Result<u64, VerifyError> {
    let mut header = [0u8; 8];
    reader
        .read_exact(&mut header)
        .map_err(|e| truncated_or_io(e, 0))?;
    let size = u64::from_le_bytes(header);
    if size > MAX_STREAM_SIZE {
        return Err(VerifyError::TooLarge(size));
    }
    sink(Item::Size(size))?;
    let tree = tree(size);
    let mut verifier = Verifier::new(root);
    let mut group = vec![0u8; CHUNK_GROUP_BYTES];
    let mut pair = [0u8; 64];
    for item in tree.ranges_pre_order_chunks_iter_ref(ranges, 0) {
        match item {
            BaoChunk::Parent {
                node,
                is_root,
                left,
                right,
                ..
            } => {
                reader
                    .read_exact(&mut pair)
                    .map_err(|e| truncated_or_io(e, group_index(node.chunk_range().start)))?;
                let (l, r) = split_pair(&pair);
                verifier.parent(node, is_root, left, right, (&l, &r))?;
                sink(Item::Parent { node, pair: &pair })?;
            }
            BaoChunk::Leaf {
                start_chunk,
                size,
                is_root,
                ..
            } => {
                let data = &mut group[..size];
                reader
                    .read_exact(data)
                    .map_err(|e| truncated_or_io(e, group_index(start_chunk)))?;
                verifier.group(start_chunk, data, is_root)?;
                sink(Item::Group {
                    offset: start_chunk.0 * 1024,
                    data,
                })?;
            }
        }
    }
    Ok(size)
}

/// Splits a 64-byte hash pair.
pub fn split_pair(pair: &[u8; 64]) -> (blake3::Hash, blake3::Hash) {
    let mut l = [0u8; 32];
    let mut r = [0u8; 32];
    l.copy_from_slice(&pair[..32]);
    r.copy_from_slice(&pair[32..]);
    (blake3::Hash::from_bytes(l), blake3::Hash::from_bytes(r))
}

fn truncated_or_io(e: io::Error, index: u64) -> VerifyError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        VerifyError::Truncated { index }
    } else {
        VerifyError::Io(e)
    }
}

/// Encodes `ranges` of a stored blob into one buffer, checking every hash pair and
/// chunk group against `root` as it goes: a corrupt blob is refused, never encoded.
/// `read_outboard(buf, at)` and `read_data(buf, at)` fill `buf` from offset `at`.
pub fn encode_validated(
    root: blake3::Hash,
    size: u64,
    ranges: &ChunkRanges,
    mut read_outboard: impl FnMut(&mut [u8], u64) -> io::Result<()>,
    mut read_data: impl FnMut(&mut [u8], u64) -> io::Result<()>,
) -> Result<Vec<u8>, VerifyError> {
    let tree = tree(size);
    let mut out = Vec::with_capacity(encoded_len(size, ranges) as usize);
    out.extend_from_slice(&size.to_le_bytes());
    let mut verifier = Verifier::new(root);
    let mut pair = [0u8; 64];
    for item in tree.ranges_pre_order_chunks_iter_ref(ranges, 0) {
        match item {
            BaoChunk::Parent {
                node,
                is_root,
                left,
                right,
                ..
            } => {
                let off = outboard_offset(&tree, node).unwrap_or(0);
                read_outboard(&mut pair, off)?;
                let (l, r) = split_pair(&pair);
                verifier.parent(node, is_root, left, right, (&l, &r))?;
                out.extend_from_slice(&pair);
            }
            BaoChunk::Leaf {
                start_chunk,
                size,
                is_root,
                ..
            } => {
                let at = out.len();
                out.resize(at + size, 0);
                read_data(&mut out[at..], start_chunk.0 * 1024)?;
                verifier.group(start_chunk, &out[at..], is_root)?;
            }
        }
    }
    Ok(out)
}

/// Encodes `ranges` of an in-memory blob with its outboard; used by tests and tools.
pub fn encode_to_vec(data: &[u8], outboard: &[u8], ranges: &ChunkRanges) -> Vec<u8> {
    let tree = tree(data.len() as u64);
    let mut out = Vec::new();
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    for item in tree.ranges_pre_order_chunks_iter_ref(ranges, 0) {
        match item {
            BaoChunk::Parent { node, .. } => {
                if let Some(off) = outboard_offset(&tree, node) {
                    let off = off as usize;
                    out.extend_from_slice(&outboard[off..off + 64]);
                }
            }
            BaoChunk::Leaf {
                start_chunk, size, ..
            } => {
                let start = (start_chunk.0 * 1024) as usize;
                out.extend_from_slice(&data[start..start + size]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bao_tree::io::outboard::PreOrderMemOutboard;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 1000) as u8).collect()
    }

    const SIZES: &[usize] = &[
        0,
        1,
        1024,
        16383,
        16384,
        16385,
        32768,
        32769,
        49152,
        100_000,
        1 << 20,
        1_234_567,
    ];

    #[test]
    fn group_cvs_come_from_a_checked_outboard() {
        for &len in SIZES {
            let bytes = data(len);
            let mut b = OutboardBuilder::new();
            b.update(&bytes);
            let ob = b.finish();
            let cvs = group_cvs(ob.root, len as u64, &ob.pre_order).expect("cvs");
            let groups = (len as u64).div_ceil(CHUNK_GROUP_BYTES as u64).max(1) as usize;
            assert_eq!(cvs.len(), groups, "{len} bytes");
            for (i, cv) in cvs.iter().enumerate() {
                let start = i * CHUNK_GROUP_BYTES;
                let end = (start + CHUNK_GROUP_BYTES).min(len);
                let want = hash_group(
                    ChunkNum(i as u64 * GROUP_CHUNKS),
                    &bytes[start..end],
                    groups == 1,
                );
                assert_eq!(*cv, want, "{len} bytes, group {i}");
            }
            if !ob.pre_order.is_empty() {
                // A flipped bit anywhere in the outboard, or a short one, is refused.
                let mut bad = ob.pre_order.clone();
                let at = bad.len() / 2;
                bad[at] ^= 1;
                assert!(group_cvs(ob.root, len as u64, &bad).is_err(), "{len} bytes");
                assert!(group_cvs(ob.root, len as u64, &ob.pre_order[1..]).is_err());
            }
            // The wrong size gives another tree: refused.
            assert!(group_cvs(ob.root, len as u64 + 20_000, &ob.pre_order).is_err());
        }
    }

    #[test]
    fn builder_matches_bao_tree_and_blake3() {
        for &len in SIZES {
            let bytes = data(len);
            // Feed in awkward pieces to exercise the buffering.
            let mut b = OutboardBuilder::new();
            for piece in bytes.chunks(7919) {
                b.update(piece);
            }
            let ob = b.finish();
            assert_eq!(ob.root, blake3::hash(&bytes), "root for {len}");
            let reference = PreOrderMemOutboard::create(&bytes, block_size());
            assert_eq!(ob.pre_order, reference.data, "outboard for {len}");
            // And in one piece.
            let mut b = OutboardBuilder::new();
            b.update(&bytes);
            assert_eq!(b.finish().pre_order, reference.data);
        }
    }

    fn decode_all(
        root: blake3::Hash,
        enc: &[u8],
        ranges: &ChunkRanges,
    ) -> Result<Vec<u8>, VerifyError> {
        let mut out = Vec::new();
        decode_stream(root, enc, ranges, |item| {
            match item {
                Item::Size(s) => out.resize(s as usize, 0),
                Item::Group { offset, data } => {
                    out[offset as usize..offset as usize + data.len()].copy_from_slice(data)
                }
                Item::Parent { .. } => {}
            }
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn encode_decode_round_trip() {
        for &len in SIZES {
            let bytes = data(len);
            let mut b = OutboardBuilder::new();
            b.update(&bytes);
            let ob = b.finish();
            let enc = encode_to_vec(&bytes, &ob.pre_order, &all_ranges());
            assert_eq!(enc.len() as u64, encoded_len(len as u64, &all_ranges()));
            assert_eq!(
                decode_all(ob.root, &enc, &all_ranges()).expect("valid"),
                bytes
            );
        }
    }

    #[test]
    fn range_decode_gets_the_covering_groups() {
        let bytes = data(100_000);
        let mut b = OutboardBuilder::new();
        b.update(&bytes);
        let ob = b.finish();
        let ranges = group_ranges(16_383, 16_384);
        let enc = encode_to_vec(&bytes, &ob.pre_order, &ranges);
        let out = decode_all(ob.root, &enc, &ranges).expect("valid");
        assert_eq!(&out[0..32768], &bytes[0..32768]);
        assert!(
            out[32768..].iter().all(|&b| b == 0),
            "nothing outside the range"
        );
    }

    #[test]
    fn every_corrupted_byte_is_caught_and_named() {
        let bytes = data(70_000); // five groups, the last one short
        let mut b = OutboardBuilder::new();
        b.update(&bytes);
        let ob = b.finish();
        let enc = encode_to_vec(&bytes, &ob.pre_order, &all_ranges());
        // Flip one byte in each group's data and check the group is named.
        let tree = tree(bytes.len() as u64);
        let mut pos = 8usize;
        for item in tree.ranges_pre_order_chunks_iter_ref(&all_ranges(), 0) {
            match item {
                BaoChunk::Parent { .. } => {
                    let mut bad = enc.clone();
                    bad[pos + 5] ^= 1;
                    assert!(matches!(
                        decode_all(ob.root, &bad, &all_ranges()),
                        Err(VerifyError::BadParent { .. })
                    ));
                    pos += 64;
                }
                BaoChunk::Leaf {
                    start_chunk, size, ..
                } => {
                    let mut bad = enc.clone();
                    bad[pos + size / 2] ^= 0x80;
                    match decode_all(ob.root, &bad, &all_ranges()) {
                        Err(VerifyError::BadGroup { index, .. }) => {
                            assert_eq!(index, group_index(start_chunk))
                        }
                        other => panic!("expected bad group, got {:?}", other.map(|v| v.len())),
                    }
                    pos += size;
                }
            }
        }
        assert_eq!(pos, enc.len());
        // A wrong size and a truncated stream are refused too.
        let mut bad = enc.clone();
        bad[0] ^= 1;
        assert!(decode_all(ob.root, &bad, &all_ranges()).is_err());
        assert!(matches!(
            decode_all(ob.root, &enc[..enc.len() - 1], &all_ranges()),
            Err(VerifyError::Truncated { index: 4 })
        ));
        // A different root refuses everything.
        assert!(decode_all(blake3::hash(b"other"), &enc, &all_ranges()).is_err());
    }
}

#[cfg(test)]
mod random_input {
    use super::*;

    /// A stable-toolchain stand-in for the fuzz target: random and mutated streams
    /// are refused without a panic.
    #[test]
    fn random_streams_never_panic() {
        let data: Vec<u8> = (0..50_000u32).map(|i| i as u8).collect();
        let mut b = OutboardBuilder::new();
        b.update(&data);
        let ob = b.finish();
        let good = encode_to_vec(&data, &ob.pre_order, &all_ranges());
        crate::mutate::each_mutation(&[&good], 2000, 3, 7, |s| {
            let _ = decode_stream(ob.root, s, &all_ranges(), |_| Ok(()));
        });
    }

    /// The same for a peer's outboard (`GET /blobs/{hash}/outboard`): a
    /// mutated one is refused, or, if it still checks out, is the original.
    #[test]
    fn random_outboards_never_panic() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i / 3) as u8).collect();
        let mut b = OutboardBuilder::new();
        b.update(&data);
        let ob = b.finish();
        let want = group_cvs(ob.root, data.len() as u64, &ob.pre_order).expect("cvs");
        let mut framed = (data.len() as u64).to_le_bytes().to_vec();
        framed.extend_from_slice(&ob.pre_order);
        crate::mutate::each_mutation(&[&framed], 2000, 3, 11, |s| {
            if let Ok(cvs) = exercise_outboard(ob.root, s) {
                assert_eq!(cvs, want, "a mutated outboard checked out");
            }
        });
    }
}

/// What the fuzz target runs: an outboard as a peer sends it (size, then
/// pairs), parsed into group chaining values against `root`.
pub fn exercise_outboard(
    root: blake3::Hash,
    data: &[u8],
) -> Result<Vec<blake3::Hash>, VerifyError> {
    let (size, pairs) = data
        .split_at_checked(8)
        .ok_or(VerifyError::Truncated { index: 0 })?;
    let size = u64::from_le_bytes(size.try_into().unwrap_or([0; 8]));
    group_cvs(root, size, pairs)
}
