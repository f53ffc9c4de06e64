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
//! - [`Walk`] checks a stream piece by piece from any [`Source`] (a reader in
//!   stream order, or a stored blob and its outboard read where they lie) and hands
//!   the checked items to a sink in stream order. A subtree of up to
//!   [`SUBTREE_BYTES`] that the request covers whole is checked with one hash of
//!   its bytes against its chaining value, so BLAKE3's SIMD runs over 256 KiB at a
//!   time instead of one 16 KiB group; only when that hash does not match is each
//!   group hashed, to name the bad one.
//! - [`decode_stream`] reads a whole verified stream from any reader.
//!
//! # Wire format of a verified stream
//! `size` as 8 bytes little-endian, then the bao-tree pre-order encoding of the
//! requested chunk groups: for each node on the way down, its 64-byte hash pair,
//! and for each chunk group in range, its bytes (16 KiB, the last one shorter).
//! A byte range is widened to whole chunk groups, see [`group_ranges`].

use std::io::{self, BufRead, Read, Write};

use bao_tree::{
    iter::{BaoChunk, PreOrderPartialChunkIterRef},
    BaoTree, BlockSize, ChunkNum, ChunkRanges, ChunkRangesRef, TreeNode,
};
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
/// log2 of the chunk groups in the largest subtree checked with one hash.
const SUBTREE_GROUPS_LOG: u8 = 4;
/// Chunk groups in the largest subtree checked with one hash.
const SUBTREE_GROUPS: usize = 1 << SUBTREE_GROUPS_LOG;
/// Bytes of the largest subtree checked with one hash: 256 KiB, which stays in a
/// core's L2 cache between being read and being hashed.
pub const SUBTREE_BYTES: usize = CHUNK_GROUP_BYTES << SUBTREE_GROUPS_LOG;

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
    if ranges.is_all() {
        // Every group and every pair (one fewer than the groups): no walk.
        let groups = size.div_ceil(CHUNK_GROUP_BYTES as u64).max(1);
        return 8 + size + 64 * (groups - 1);
    }
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

/// Where the verified stream for `ranges` of a blob of `size` bytes lies in the
/// blob's whole stream (its kept copy): `(offset, length)` runs in stream order,
/// adjacent ones merged, the size prefix first, written into `out`. Read in
/// turn, they are the stream for `ranges`; a few runs (the pairs above the
/// range, then its subtrees whole), so a range is spliced from the copy.
pub fn pieces_in_whole(size: u64, ranges: &ChunkRangesRef, out: &mut Vec<(u64, u64)>) {
    let tree = tree(size);
    let groups = size.div_ceil(CHUNK_GROUP_BYTES as u64).max(1);
    out.clear();
    out.push((0, 8));
    let mut push = |at: u64, len: u64| match out.last_mut() {
        Some(last) if last.0 + last.1 == at => last.1 += len,
        _ => out.push((at, len)),
    };
    for item in tree.ranges_pre_order_chunks_iter_ref(ranges, 0) {
        match item {
            BaoChunk::Parent { node, .. } => {
                // Before a pair in the whole stream: the pairs before it in
                // pre-order and every byte left of its subtree.
                if let Some(pairs) = outboard_offset(&tree, node) {
                    push(8 + pairs + node.chunk_range().start.0 * 1024, 64);
                }
            }
            BaoChunk::Leaf {
                start_chunk, size, ..
            } => {
                let before = parents_up_to(group_index(start_chunk), groups);
                push(8 + before * 64 + start_chunk.0 * 1024, size as u64);
            }
        }
    }
}

/// Pairs in the tree of a blob of `groups` chunk groups whose subtree starts at
/// or before group `g`: in pre-order, exactly those that precede group `g`'s
/// bytes (an ancestor, or a subtree wholly to its left). A pair exists at
/// level `k` for each start `j * 2^k` with a right half, `j * 2^k + 2^(k-1) < groups`.
fn parents_up_to(g: u64, groups: u64) -> u64 {
    let mut count = 0;
    for k in 1..64 {
        let half = 1u64 << (k - 1);
        if half >= groups {
            break;
        }
        let span = half << 1;
        count += (g / span + 1).min((groups - half).div_ceil(span));
    }
    count
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
/// The first group is hashed only once more bytes follow it, because a blob of
/// a single group is hashed as the root; any later group is never the root, so
/// a whole one is hashed where it lies (no copy), even at the end of a piece.
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
            let whole = data.len() > CHUNK_GROUP_BYTES
                || (data.len() == CHUNK_GROUP_BYTES && !self.cvs.is_empty());
            if self.filled == 0 && whole {
                // A whole group that cannot be the root: hash in place, no copy.
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
        if self.filled > 0 {
            // Otherwise the last group was hashed where it lay.
            let cv = hash_group(self.next_chunk(), last, false);
            self.cvs.push(cv);
        }
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

    /// Checks a parent's hash pair; `left`/`right` say whether the children are in
    /// range. Returns the node's own chaining value (the hash the pair matched).
    pub fn parent(
        &mut self,
        node: TreeNode,
        is_root: bool,
        left: bool,
        right: bool,
        pair: (&blake3::Hash, &blake3::Hash),
    ) -> Result<blake3::Hash, VerifyError> {
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
        Ok(expected)
    }

    /// The chaining value expected of the next chunk group, taken without hashing
    /// the group: a group inside a [`Subtree`] is checked with the whole subtree.
    pub fn take_group(&mut self, start_chunk: ChunkNum) -> Result<blake3::Hash, VerifyError> {
        self.stack.pop().ok_or(VerifyError::BadGroup {
            index: group_index(start_chunk),
            start: start_chunk.0 * 1024,
            end: start_chunk.0 * 1024,
        })
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
                cvs.push(verifier.take_group(start_chunk)?);
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
    let size = read_size(&mut reader)?;
    sink(Item::Size(size))?;
    let mut walk = Walk::new(root, size, ranges);
    let mut scratch = Scratch::new();
    let mut source = InOrder(reader);
    while walk.step(&mut source, &mut scratch, &mut sink)? {}
    Ok(size)
}

/// A verified stream's size prefix, refused above [`MAX_STREAM_SIZE`].
fn read_size(reader: &mut impl Read) -> Result<u64, VerifyError> {
    let mut header = [0u8; 8];
    reader
        .read_exact(&mut header)
        .map_err(|e| truncated_or_io(e, 0))?;
    let size = u64::from_le_bytes(header);
    if size > MAX_STREAM_SIZE {
        return Err(VerifyError::TooLarge(size));
    }
    Ok(size)
}

/// As [`decode_stream`], from a reader whose buffer can be borrowed: each chunk
/// group is checked, and handed to `sink`, where the buffer holds it, so a
/// stream in memory (`&[u8]`) or in a `BufReader` is checked without being
/// copied (group by group: the subtree check needs a subtree's bytes in one
/// piece, which the stream, with pairs between its groups, does not give). A
/// group that straddles the end of the buffer is copied into one first.
pub fn decode_buffered<R: BufRead>(
    root: blake3::Hash,
    mut reader: R,
    ranges: &ChunkRanges,
    mut sink: impl FnMut(Item<'_>) -> io::Result<()>,
) -> Result<u64, VerifyError> {
    let size = read_size(&mut reader)?;
    sink(Item::Size(size))?;
    let mut verifier = Verifier::new(root);
    let mut straddling = Vec::new();
    for item in tree(size).ranges_pre_order_chunks_iter_ref(ranges, 0) {
        match item {
            BaoChunk::Parent {
                node,
                is_root,
                left,
                right,
                ..
            } => {
                let mut pair = [0u8; 64];
                reader
                    .read_exact(&mut pair)
                    .map_err(|e| truncated_or_io(e, group_index(node.chunk_range().start)))?;
                let (l, r) = split_pair(&pair);
                verifier.parent(node, is_root, left, right, (&l, &r))?;
                sink(Item::Parent { node, pair: &pair })?;
            }
            BaoChunk::Leaf {
                start_chunk,
                size: len,
                is_root,
                ..
            } => {
                let index = group_index(start_chunk);
                let offset = start_chunk.0 * 1024;
                let buf = reader.fill_buf().map_err(|e| truncated_or_io(e, index))?;
                if buf.len() >= len {
                    let data = &buf[..len];
                    prefetch(&buf[len..buf.len().min(len + PREFETCH_AHEAD_BYTES)]);
                    verifier.group(start_chunk, data, is_root)?;
                    sink(Item::Group { offset, data })?;
                    reader.consume(len);
                } else {
                    straddling.resize(len, 0);
                    reader
                        .read_exact(&mut straddling)
                        .map_err(|e| truncated_or_io(e, index))?;
                    verifier.group(start_chunk, &straddling, is_root)?;
                    sink(Item::Group {
                        offset,
                        data: &straddling,
                    })?;
                }
            }
        }
    }
    Ok(size)
}

/// How far ahead of the group being hashed [`decode_buffered`] asks for the
/// stream's bytes: the next two groups.
const PREFETCH_AHEAD_BYTES: usize = 2 * CHUNK_GROUP_BYTES;

/// Asks the CPU to bring `bytes` into its L2 cache. A stream checked where it
/// lies is read group by group, with hash pairs between the groups, and the
/// hardware prefetcher alone left the hashing waiting on memory: on an AMD EPYC
/// host, 256 MiB decoded in memory went from 0.90 of `blake3::hash`'s speed to
/// 1.04 (which does not prefetch). Each group asks again for the group after
/// it, already asked for once: that was faster than asking for each line once.
#[inline]
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: a prefetch is a hint that neither reads nor faults, and the
        // address is inside `bytes`; SSE, which it needs, is part of x86_64.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                line.as_ptr().cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// Where a [`Walk`] reads a verified stream's pieces from.
pub trait Source {
    /// Whether pieces are read where they lie (a blob's file and its pre-order
    /// outboard) rather than in stream order. Such a source reads a subtree's
    /// hash pairs with one [`Source::pairs`] and its bytes with one [`Source::data`].
    const RANDOM_ACCESS: bool;
    /// Fills `buf` with hash pairs from offset `at` of the pre-order outboard
    /// (one pair, or all of a subtree's); `index` is the first chunk group under
    /// them, for errors.
    fn pairs(&mut self, at: u64, index: u64, buf: &mut [u8]) -> Result<(), VerifyError>;
    /// Fills `buf` with the blob's bytes from `offset`.
    fn data(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), VerifyError>;
}

/// A verified stream read in order from a reader (the header already read).
pub struct InOrder<R>(pub R);

impl<R: Read> Source for InOrder<R> {
    const RANDOM_ACCESS: bool = false;
    fn pairs(&mut self, _at: u64, index: u64, buf: &mut [u8]) -> Result<(), VerifyError> {
        self.0
            .read_exact(buf)
            .map_err(|e| truncated_or_io(e, index))
    }
    fn data(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), VerifyError> {
        let index = offset / CHUNK_GROUP_BYTES as u64;
        self.0
            .read_exact(buf)
            .map_err(|e| truncated_or_io(e, index))
    }
}

/// A stored blob read where it lies: `outboard(buf, at)` and `data(buf, at)` fill
/// `buf` from offset `at` of the pre-order outboard and of the blob.
pub struct Stored<O, D> {
    pub outboard: O,
    pub data: D,
}

impl<O, D> Source for Stored<O, D>
where
    O: FnMut(&mut [u8], u64) -> io::Result<()>,
    D: FnMut(&mut [u8], u64) -> io::Result<()>,
{
    const RANDOM_ACCESS: bool = true;
    fn pairs(&mut self, at: u64, _index: u64, buf: &mut [u8]) -> Result<(), VerifyError> {
        Ok((self.outboard)(buf, at)?)
    }
    fn data(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), VerifyError> {
        Ok((self.data)(buf, offset)?)
    }
}

/// The buffers a [`Walk`] needs for one subtree: its bytes, hash pairs, the
/// groups' expected chaining values and the items in stream order. Made once and
/// reused (the server keeps them per core).
pub struct Scratch {
    bytes: Vec<u8>,
    pairs: Vec<u8>,
    cvs: Vec<blake3::Hash>,
    items: Vec<SubItem>,
}

#[derive(Clone, Copy)]
enum SubItem {
    Parent { node: TreeNode, at: usize },
    Group { offset: u64, at: usize, len: usize },
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl Scratch {
    /// No buffers (a placeholder; a [`Walk`] needs [`Scratch::new`]'s).
    pub fn empty() -> Self {
        Self {
            bytes: Vec::new(),
            pairs: Vec::new(),
            cvs: Vec::new(),
            items: Vec::new(),
        }
    }

    pub fn new() -> Self {
        Self {
            bytes: vec![0u8; SUBTREE_BYTES],
            pairs: vec![0u8; 64 * SUBTREE_GROUPS],
            cvs: Vec::with_capacity(SUBTREE_GROUPS),
            items: Vec::with_capacity(2 * SUBTREE_GROUPS),
        }
    }
}

/// A subtree that a request covers whole and that is small enough to be checked
/// with one hash of its bytes.
#[derive(Clone, Copy, Debug)]
struct Subtree {
    /// Byte range of the blob under it (the last subtree may be short).
    start: u64,
    end: u64,
    /// The whole blob: hashed as the root, not as a chaining value.
    is_root: bool,
}

impl Subtree {
    /// The subtree under the parent `node`, if `ranges` (the part of the request
    /// under `node`, as bao-tree's iterator passes it) covers it whole.
    fn at(tree: &BaoTree, node: TreeNode, is_root: bool, ranges: &ChunkRangesRef) -> Option<Self> {
        let chunks = node.chunk_range();
        let end_chunk = chunks.end.min(tree.chunks());
        let start = chunks.start.0 * 1024;
        let end = (chunks.end.0 * 1024).min(tree.size());
        if end <= start || end - start > SUBTREE_BYTES as u64 {
            return None;
        }
        covers(ranges, chunks.start, end_chunk).then_some(Subtree {
            start,
            end,
            is_root,
        })
    }

    fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    fn first_group(&self) -> u64 {
        self.start / CHUNK_GROUP_BYTES as u64
    }

    /// Checks the subtree's bytes with one hash against `cv`; on a mismatch, hashes
    /// each group against its own value (`cvs`) to name the first bad one.
    fn check(
        &self,
        cv: &blake3::Hash,
        data: &[u8],
        cvs: &[blake3::Hash],
    ) -> Result<(), VerifyError> {
        let got = if self.is_root {
            blake3::hash(data)
        } else {
            let mut hasher = blake3::Hasher::new();
            hasher.set_input_offset(self.start);
            hasher.update(data);
            blake3::Hash::from(hasher.finalize_non_root())
        };
        if got == *cv {
            return Ok(());
        }
        let groups = data.chunks(CHUNK_GROUP_BYTES).zip(cvs);
        let mut bad = None;
        for (i, (group, want)) in groups.enumerate() {
            let start_chunk = ChunkNum((self.first_group() + i as u64) * GROUP_CHUNKS);
            if hash_group(start_chunk, group, false) != *want {
                bad = Some((i, group.len()));
                break;
            }
        }
        // Every group matching while the whole does not would take a BLAKE3
        // collision; name the first group then.
        let (i, len) = bad.unwrap_or((0, data.len().min(CHUNK_GROUP_BYTES)));
        let start = self.start + (i * CHUNK_GROUP_BYTES) as u64;
        Err(VerifyError::BadGroup {
            index: self.first_group() + i as u64,
            start,
            end: start + len as u64,
        })
    }
}

/// Whether `ranges` (a bao-tree range set: sorted boundaries, the intervals
/// between even and odd ones, an odd count ending in an open interval) holds
/// every chunk of `start..end`.
fn covers(ranges: &ChunkRangesRef, start: ChunkNum, end: ChunkNum) -> bool {
    let b = ranges.boundaries();
    let mut i = 0;
    while i < b.len() {
        let from = b[i];
        let to = b.get(i + 1).copied();
        if from <= start && to.is_none_or(|to| end <= to) {
            return true;
        }
        i += 2;
    }
    false
}

/// Checks the verified stream of `ranges` of one blob, piece by piece.
///
/// Each [`Walk::step`] reads and checks the next hash pair, chunk group, or whole
/// [`Subtree`], then hands its items to the sink in stream order. Nothing reaches
/// the sink before it has been checked, so a caller may send or store what the
/// sink gets as it comes, and flush between steps.
pub struct Walk<'a> {
    tree: BaoTree,
    items: std::iter::Peekable<PreOrderPartialChunkIterRef<'a>>,
    verifier: Verifier,
    subtrees: u64,
}

impl<'a> Walk<'a> {
    pub fn new(root: blake3::Hash, size: u64, ranges: &'a ChunkRangesRef) -> Self {
        let tree = tree(size);
        Self {
            tree,
            items: tree.ranges_pre_order_chunks_iter_ref(ranges, 0).peekable(),
            verifier: Verifier::new(root),
            subtrees: 0,
        }
    }

    /// Whether the next step checks a whole subtree (up to [`SUBTREE_BYTES`] and
    /// its pairs), rather than one pair or one group: a caller may then send the
    /// step's items straight from the scratch buffers.
    pub fn next_is_subtree(&mut self) -> bool {
        match self.items.peek() {
            Some(BaoChunk::Parent {
                node,
                is_root,
                ranges,
                ..
            }) => Subtree::at(&self.tree, *node, *is_root, ranges).is_some(),
            _ => false,
        }
    }

    /// Subtrees checked with one hash so far.
    pub fn subtrees(&self) -> u64 {
        self.subtrees
    }

    /// Checks the next piece. `Ok(false)`: the stream is complete.
    pub fn step<S: Source>(
        &mut self,
        source: &mut S,
        scratch: &mut Scratch,
        sink: &mut impl FnMut(Item<'_>) -> io::Result<()>,
    ) -> Result<bool, VerifyError> {
        let Some(item) = self.items.next() else {
            return Ok(false);
        };
        match item {
            BaoChunk::Parent {
                node,
                is_root,
                left,
                right,
                ranges,
            } => {
                if let Some(sub) = Subtree::at(&self.tree, node, is_root, ranges) {
                    self.subtree(sub, item.without_ranges(), source, scratch, sink)?;
                } else {
                    let at = outboard_offset(&self.tree, node).unwrap_or(0);
                    let pair = &mut scratch.pairs[..64];
                    source.pairs(at, group_index(node.chunk_range().start), pair)?;
                    let pair: &[u8; 64] = (&*pair)
                        .try_into()
                        .map_err(|_| VerifyError::bad_parent(node))?;
                    let (l, r) = split_pair(pair);
                    self.verifier.parent(node, is_root, left, right, (&l, &r))?;
                    sink(Item::Parent { node, pair })?;
                }
            }
            BaoChunk::Leaf {
                start_chunk,
                size,
                is_root,
                ..
            } => {
                let offset = start_chunk.0 * 1024;
                let data = scratch
                    .bytes
                    .get_mut(..size)
                    .ok_or(VerifyError::Truncated {
                        index: group_index(start_chunk),
                    })?;
                source.data(offset, data)?;
                self.verifier.group(start_chunk, data, is_root)?;
                sink(Item::Group { offset, data })?;
            }
        }
        Ok(true)
    }

    /// Reads the subtree under `root` (its pair is the next piece), checks its
    /// pairs on the way down and its bytes with one hash, then hands it all on.
    fn subtree<S: Source>(
        &mut self,
        sub: Subtree,
        root: BaoChunk,
        source: &mut S,
        scratch: &mut Scratch,
        sink: &mut impl FnMut(Item<'_>) -> io::Result<()>,
    ) -> Result<(), VerifyError> {
        let BaoChunk::Parent {
            node: root_node, ..
        } = root
        else {
            return Err(VerifyError::Truncated {
                index: sub.first_group(),
            });
        };
        let base = outboard_offset(&self.tree, root_node).unwrap_or(0);
        let groups = sub.len().div_ceil(CHUNK_GROUP_BYTES);
        let pairs_len = (groups - 1) * 64;
        let first = sub.first_group();
        if S::RANDOM_ACCESS {
            source.pairs(base, first, &mut scratch.pairs[..pairs_len])?;
            source.data(sub.start, &mut scratch.bytes[..sub.len()])?;
        }
        scratch.cvs.clear();
        scratch.items.clear();
        let mut cv = None;
        let mut filled = 0;
        let mut next = Some(root);
        while let Some(item) = next.take() {
            match item {
                BaoChunk::Parent {
                    node,
                    is_root,
                    left,
                    right,
                    ..
                } => {
                    let at = outboard_offset(&self.tree, node)
                        .and_then(|o| o.checked_sub(base))
                        .map(|o| o as usize)
                        .filter(|&o| o + 64 <= pairs_len)
                        .ok_or_else(|| VerifyError::bad_parent(node))?;
                    let pair = &mut scratch.pairs[at..at + 64];
                    if !S::RANDOM_ACCESS {
                        source.pairs(
                            base + at as u64,
                            group_index(node.chunk_range().start),
                            pair,
                        )?;
                    }
                    let (l, r) = split_pair(
                        (&*pair)
                            .try_into()
                            .map_err(|_| VerifyError::bad_parent(node))?,
                    );
                    let node_cv = self.verifier.parent(node, is_root, left, right, (&l, &r))?;
                    cv.get_or_insert(node_cv);
                    scratch.items.push(SubItem::Parent { node, at });
                }
                BaoChunk::Leaf {
                    start_chunk, size, ..
                } => {
                    let offset = start_chunk.0 * 1024;
                    let at = filled;
                    if offset != sub.start + at as u64 || at + size > sub.len() {
                        return Err(VerifyError::BadGroup {
                            index: group_index(start_chunk),
                            start: offset,
                            end: offset + size as u64,
                        });
                    }
                    if !S::RANDOM_ACCESS {
                        source.data(offset, &mut scratch.bytes[at..at + size])?;
                    }
                    scratch.cvs.push(self.verifier.take_group(start_chunk)?);
                    scratch.items.push(SubItem::Group {
                        offset,
                        at,
                        len: size,
                    });
                    filled += size;
                }
            }
            if filled < sub.len() {
                next = self.items.next().map(|item| item.without_ranges());
            }
        }
        let Some(cv) = cv else {
            return Err(VerifyError::bad_parent(root_node));
        };
        if filled != sub.len() {
            return Err(VerifyError::Truncated { index: first });
        }
        sub.check(&cv, &scratch.bytes[..filled], &scratch.cvs)?;
        self.subtrees += 1;
        for item in &scratch.items {
            match *item {
                SubItem::Parent { node, at } => {
                    let pair: &[u8; 64] = scratch.pairs[at..at + 64]
                        .try_into()
                        .map_err(|_| VerifyError::bad_parent(node))?;
                    sink(Item::Parent { node, pair })?;
                }
                SubItem::Group { offset, at, len } => sink(Item::Group {
                    offset,
                    data: &scratch.bytes[at..at + len],
                })?,
            }
        }
        Ok(())
    }
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
/// `source` reads the stored outboard and bytes where they lie.
pub fn encode_validated(
    root: blake3::Hash,
    size: u64,
    ranges: &ChunkRanges,
    source: &mut impl Source,
) -> Result<Vec<u8>, VerifyError> {
    let mut out = Vec::with_capacity(encoded_len(size, ranges) as usize);
    encode_validated_into(root, size, ranges, source, &mut out)?;
    Ok(out)
}

/// As [`encode_validated`], into `out` (a file, for a stream kept whole): what
/// reaches `out` has been checked, and the first bad piece stops it.
pub fn encode_validated_into(
    root: blake3::Hash,
    size: u64,
    ranges: &ChunkRanges,
    source: &mut impl Source,
    out: &mut impl Write,
) -> Result<(), VerifyError> {
    out.write_all(&size.to_le_bytes())?;
    let mut walk = Walk::new(root, size, ranges);
    let mut scratch = Scratch::new();
    let mut sink = |item: Item<'_>| match item {
        Item::Size(_) => Ok(()),
        Item::Parent { pair, .. } => out.write_all(pair),
        Item::Group { data, .. } => out.write_all(data),
    };
    while walk.step(source, &mut scratch, &mut sink)? {}
    Ok(())
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
            let reference = PreOrderMemOutboard::create(&bytes, block_size());
            // Awkward pieces exercise the buffering; whole groups (ending a
            // piece or the blob) the hashing in place.
            for piece_len in [7919, CHUNK_GROUP_BYTES, 4 * CHUNK_GROUP_BYTES] {
                let mut b = OutboardBuilder::new();
                for piece in bytes.chunks(piece_len) {
                    b.update(piece);
                }
                let ob = b.finish();
                assert_eq!(
                    ob.root,
                    blake3::hash(&bytes),
                    "root for {len} in {piece_len}"
                );
                assert_eq!(
                    ob.pre_order, reference.data,
                    "outboard for {len} in {piece_len}"
                );
            }
            // And in one piece.
            let mut b = OutboardBuilder::new();
            b.update(&bytes);
            assert_eq!(b.finish().pre_order, reference.data);
        }
    }

    pub(super) fn decode_all(
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
mod subtrees {
    use super::*;

    /// The group-by-group check this module made before subtrees: every pair
    /// and every group hashed alone, in stream order.
    fn group_by_group(
        root: blake3::Hash,
        enc: &[u8],
        ranges: &ChunkRanges,
    ) -> Result<Vec<u8>, VerifyError> {
        let size = u64::from_le_bytes(enc[..8].try_into().expect("header"));
        let tree = tree(size);
        let mut v = Verifier::new(root);
        let mut out = vec![0u8; size as usize];
        let mut pos = 8;
        for item in tree.ranges_pre_order_chunks_iter_ref(ranges, 0) {
            match item {
                BaoChunk::Parent {
                    node,
                    is_root,
                    left,
                    right,
                    ..
                } => {
                    let pair: &[u8; 64] = enc
                        .get(pos..pos + 64)
                        .and_then(|p| p.try_into().ok())
                        .ok_or(VerifyError::Truncated { index: 0 })?;
                    let (l, r) = split_pair(pair);
                    v.parent(node, is_root, left, right, (&l, &r))?;
                    pos += 64;
                }
                BaoChunk::Leaf {
                    start_chunk,
                    size,
                    is_root,
                    ..
                } => {
                    let data = enc.get(pos..pos + size).ok_or(VerifyError::Truncated {
                        index: group_index(start_chunk),
                    })?;
                    v.group(start_chunk, data, is_root)?;
                    let at = (start_chunk.0 * 1024) as usize;
                    out[at..at + size].copy_from_slice(data);
                    pos += size;
                }
            }
        }
        Ok(out)
    }

    use super::tests::decode_all as walk_in_order;

    /// [`decode_buffered`] over the stream in memory, or through a `BufReader`
    /// of `capacity` (smaller than a group: every group straddles its end).
    fn buffered(
        root: blake3::Hash,
        enc: &[u8],
        ranges: &ChunkRanges,
        capacity: Option<usize>,
    ) -> Result<Vec<u8>, VerifyError> {
        let mut out = Vec::new();
        let sink = |item: Item<'_>| {
            match item {
                Item::Size(s) => out.resize(s as usize, 0),
                Item::Group { offset, data } => {
                    out[offset as usize..offset as usize + data.len()].copy_from_slice(data)
                }
                Item::Parent { .. } => {}
            }
            Ok(())
        };
        match capacity {
            None => decode_buffered(root, enc, ranges, sink)?,
            Some(c) => decode_buffered(root, io::BufReader::with_capacity(c, enc), ranges, sink)?,
        };
        Ok(out)
    }

    /// The stream a stored blob (bytes and outboard, read where they lie) gives.
    fn walk_stored(
        root: blake3::Hash,
        data: &[u8],
        outboard: &[u8],
        ranges: &ChunkRanges,
    ) -> Result<Vec<u8>, VerifyError> {
        let read = |from: &[u8], buf: &mut [u8], at: u64| -> io::Result<()> {
            let at = at as usize;
            let src = from
                .get(at..at + buf.len())
                .ok_or(io::ErrorKind::UnexpectedEof)?;
            buf.copy_from_slice(src);
            Ok(())
        };
        let mut stored = Stored {
            outboard: |buf: &mut [u8], at| read(outboard, buf, at),
            data: |buf: &mut [u8], at| read(data, buf, at),
        };
        encode_validated(root, data.len() as u64, ranges, &mut stored)
    }

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n.max(1)
        }
    }

    const SIZES: &[usize] = &[
        16385,
        3 * 16384 + 7,
        SUBTREE_BYTES - 1,
        SUBTREE_BYTES,
        SUBTREE_BYTES + 1,
        5 * SUBTREE_BYTES / 2,
        (1 << 20) + 12345,
        4 << 20,
    ];

    fn setup(len: usize) -> (Vec<u8>, Outboard) {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 31 + i / 4099) as u8).collect();
        let mut b = OutboardBuilder::new();
        b.update(&bytes);
        (bytes, b.finish())
    }

    #[test]
    fn subtrees_give_what_group_by_group_gives() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for &len in SIZES {
            let (bytes, ob) = setup(len);
            let mut cases = vec![all_ranges()];
            for _ in 0..6 {
                let a = rng.below(len as u64);
                let b = a + rng.below(len as u64 - a);
                cases.push(group_ranges(a, b));
            }
            // A whole blob of more than one group is checked in subtrees only.
            let full = all_ranges();
            let mut walk = Walk::new(ob.root, len as u64, &full);
            let enc = encode_to_vec(&bytes, &ob.pre_order, &full);
            let mut source = InOrder(&enc[8..]);
            let mut scratch = Scratch::new();
            while walk
                .step(&mut source, &mut scratch, &mut |_| Ok(()))
                .expect("valid")
            {}
            // Every whole 256 KiB subtree, and the tail's if it has two groups or more
            // (a lone last group hangs off a parent above it).
            let tail_groups = (len % SUBTREE_BYTES).div_ceil(CHUNK_GROUP_BYTES);
            let want = len / SUBTREE_BYTES + usize::from(tail_groups >= 2);
            assert_eq!(walk.subtrees(), want as u64, "{len}");
            for ranges in &cases {
                let enc = encode_to_vec(&bytes, &ob.pre_order, ranges);
                let want = group_by_group(ob.root, &enc, ranges).expect("valid");
                assert_eq!(
                    walk_in_order(ob.root, &enc, ranges).expect("valid"),
                    want,
                    "{len} {ranges:?}"
                );
                for capacity in [None, Some(5000), Some(40_000)] {
                    assert_eq!(
                        buffered(ob.root, &enc, ranges, capacity).expect("valid"),
                        want,
                        "{len} {ranges:?} {capacity:?}"
                    );
                }
                assert_eq!(
                    walk_stored(ob.root, &bytes, &ob.pre_order, ranges).expect("valid"),
                    enc,
                    "{len} {ranges:?}"
                );
            }
        }
    }

    /// A range's stream, read as pieces of the whole stream, is the range's
    /// stream as encoded directly.
    #[test]
    fn range_pieces_of_the_whole_stream_are_the_range_stream() {
        let mut rng = Rng(0x5851_f42d_4c95_7f2d);
        let mut pieces = Vec::new();
        for len in [0usize, 1, 16384, 16385, 5 * 16384, 7 * 16384 + 3]
            .into_iter()
            .chain(SIZES.iter().copied())
        {
            let (bytes, ob) = setup(len);
            let whole = encode_to_vec(&bytes, &ob.pre_order, &all_ranges());
            let mut cases = vec![all_ranges()];
            for _ in 0..12 {
                let a = rng.below(len.max(1) as u64);
                cases.push(group_ranges(
                    a,
                    a + rng.below((len as u64).saturating_sub(a).max(1)),
                ));
            }
            for ranges in &cases {
                pieces_in_whole(len as u64, ranges, &mut pieces);
                let mut got = Vec::new();
                for &(at, n) in &pieces {
                    got.extend_from_slice(&whole[at as usize..(at + n) as usize]);
                }
                let want = encode_to_vec(&bytes, &ob.pre_order, ranges);
                assert!(got == want, "{len} {ranges:?}: pieces {pieces:?}");
                assert!(pieces.len() <= 2 + 2 * 64, "{len}: {} pieces", pieces.len());
            }
        }
    }

    /// Random corruptions: a flipped byte anywhere in a stream is refused, with
    /// the same error as the group-by-group check (so a bad group is still named
    /// exactly); a flipped byte in a stored blob or its outboard is refused too.
    #[test]
    fn corruptions_are_named_as_group_by_group_names_them() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for &len in SIZES {
            let (bytes, ob) = setup(len);
            for round in 0..40 {
                let ranges = if round % 4 == 3 {
                    let a = rng.below(len as u64);
                    group_ranges(a, a + rng.below(len as u64 - a))
                } else {
                    all_ranges()
                };
                let enc = encode_to_vec(&bytes, &ob.pre_order, &ranges);
                let mut bad = enc.clone();
                let at = 8 + rng.below(enc.len() as u64 - 8) as usize;
                bad[at] ^= 1 << rng.below(8);
                let old = group_by_group(ob.root, &bad, &ranges);
                let new = walk_in_order(ob.root, &bad, &ranges);
                assert!(
                    old.is_err() && new.is_err(),
                    "{len}: byte {at} flipped and accepted"
                );
                let capacity = [None, Some(5000)][round % 2];
                let borrowed = buffered(ob.root, &bad, &ranges, capacity);
                let old = format!("{:?}", old.err());
                assert_eq!(old, format!("{:?}", new.err()), "{len}: byte {at}");
                assert_eq!(old, format!("{:?}", borrowed.err()), "{len}: byte {at}");

                let mut data = bytes.clone();
                let at = rng.below(len as u64) as usize;
                data[at] ^= 1;
                let in_range = ranges.contains(&ChunkNum(at as u64 / 1024))
                    || ranges.contains(&ChunkNum(at as u64 / 1024 / GROUP_CHUNKS * GROUP_CHUNKS));
                match walk_stored(ob.root, &data, &ob.pre_order, &ranges) {
                    Err(VerifyError::BadGroup { index, .. }) => {
                        assert_eq!(
                            index,
                            (at / CHUNK_GROUP_BYTES) as u64,
                            "{len}: data byte {at}"
                        )
                    }
                    Err(e) => panic!("{len}: data byte {at}: {e}"),
                    Ok(_) => assert!(!in_range, "{len}: data byte {at} flipped and sent"),
                }
                if !ob.pre_order.is_empty() {
                    let mut outboard = ob.pre_order.clone();
                    let at = rng.below(outboard.len() as u64) as usize;
                    outboard[at] ^= 1;
                    if ranges == all_ranges() {
                        assert!(
                            walk_stored(ob.root, &bytes, &outboard, &ranges).is_err(),
                            "{len}: outboard byte {at}"
                        );
                    }
                }
            }
        }
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
            let whole = decode_stream(ob.root, s, &all_ranges(), |_| Ok(()));
            let buffered = decode_buffered(ob.root, s, &all_ranges(), |_| Ok(()));
            // Both refuse, or both accept the same (which error comes first may
            // differ: a subtree is read whole before it is hashed).
            assert_eq!(whole.ok(), buffered.ok(), "the two decoders disagree");
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
