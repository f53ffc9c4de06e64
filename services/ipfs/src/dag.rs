//! Walking DAGs: resolving a UnixFS path, choosing the blocks of a CAR
//! answer (`dag-scope`, `entity-bytes`), and reading a file's bytes.
//!
//! Everything here reads blocks through [`Blocks`], so the same walk serves
//! from the store, fetches what is missing, or runs over a CAR in memory in
//! tests. Walks keep their own stack (a hostile DAG's depth costs memory,
//! bounded by the links it really has, never the thread's stack).

use std::collections::HashSet;

use cid::Cid;

use crate::unixfs::{self, HamtStep, Kind};
use crate::{DAG_CBOR, DAG_PB, RAW};

/// Where a walk reads blocks.
pub trait Blocks {
    /// The block's bytes, checked against `cid`; None if it is nowhere to
    /// be had.
    fn block(&self, cid: &Cid) -> Result<Option<Vec<u8>>, String>;
}

/// Why a walk stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalkError {
    /// A block the walk needs is not to be had.
    Missing(Cid),
    /// A path names something that is not there.
    NotFound(String),
    /// A block is malformed, or the DAG is not what the request needs.
    Bad(String),
    /// The consumer stopped (the client went away).
    Stopped,
}

impl std::fmt::Display for WalkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalkError::Missing(c) => write!(f, "block {c} is not available"),
            WalkError::NotFound(why) => f.write_str(why),
            WalkError::Bad(why) => f.write_str(why),
            WalkError::Stopped => f.write_str("stopped"),
        }
    }
}

fn get(blocks: &dyn Blocks, cid: &Cid) -> Result<Vec<u8>, WalkError> {
    match blocks.block(cid) {
        Ok(Some(b)) => Ok(b),
        Ok(None) => Err(WalkError::Missing(*cid)),
        Err(why) => Err(WalkError::Bad(why)),
    }
}

fn node(cid: &Cid, bytes: &[u8]) -> Result<unixfs::Node, WalkError> {
    unixfs::decode_node(bytes).map_err(|e| WalkError::Bad(format!("{cid}: {e}")))
}

/// A path resolved: the blocks passed on the way (root first) and where it
/// ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub cid: Cid,
    pub via: Vec<Cid>,
}

/// The most segments a path may have.
pub const MAX_PATH_SEGMENTS: usize = 64;
/// The most HAMT levels descended for one name (64 bits of hash at 3 or more
/// bits a level).
const MAX_HAMT_DEPTH: usize = 22;

/// Resolves `segments` from `root` through UnixFS directories and HAMT
/// shards.
pub fn resolve(blocks: &dyn Blocks, root: &Cid, segments: &[&str]) -> Result<Resolved, WalkError> {
    if segments.len() > MAX_PATH_SEGMENTS {
        return Err(WalkError::Bad(format!(
            "a path of more than {MAX_PATH_SEGMENTS} segments"
        )));
    }
    let mut cur = *root;
    let mut via = Vec::new();
    for seg in segments {
        if cur.codec() != DAG_PB {
            return Err(WalkError::NotFound(format!(
                "{cur} is not a UnixFS directory: no {seg:?} in it"
            )));
        }
        let mut bytes = get(blocks, &cur)?;
        let mut n = node(&cur, &bytes)?;
        via.push(cur);
        match n.data.kind {
            Kind::Directory => {
                let link = n
                    .links
                    .iter()
                    .find(|l| l.name.as_deref() == Some(seg))
                    .ok_or_else(|| WalkError::NotFound(format!("no link named {seg:?}")))?;
                cur = link.cid;
            }
            Kind::HamtShard => {
                let mut depth = 0;
                loop {
                    let next = match unixfs::hamt_step(&n, seg, depth) {
                        HamtStep::Found(l) => Ok(l.cid),
                        HamtStep::Descend(l) => Err(l.cid),
                        HamtStep::Missing => {
                            return Err(WalkError::NotFound(format!("no link named {seg:?}")))
                        }
                    };
                    match next {
                        Ok(c) => {
                            cur = c;
                            break;
                        }
                        Err(shard) => {
                            depth += 1;
                            if depth > MAX_HAMT_DEPTH {
                                return Err(WalkError::Bad("a HAMT deeper than its hash".into()));
                            }
                            bytes = get(blocks, &shard)?;
                            n = node(&shard, &bytes)?;
                            if n.data.kind != Kind::HamtShard {
                                return Err(WalkError::Bad(format!(
                                    "{shard}: a HAMT link to something not a shard"
                                )));
                            }
                            via.push(shard);
                        }
                    }
                }
            }
            _ => {
                return Err(WalkError::NotFound(format!(
                    "{cur} is not a directory: no {seg:?} in it"
                )))
            }
        }
    }
    Ok(Resolved { cid: cur, via })
}

/// `dag-scope`: how much of the DAG under the path's end a CAR carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The end's block only.
    Block,
    /// What it takes to read the entity: a file's blocks (or those of a byte
    /// range), a directory's node (all of a HAMT's shards), one block else.
    Entity,
    /// Everything reachable.
    All,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Scope> {
        Some(match s {
            "block" => Scope::Block,
            "entity" => Scope::Entity,
            "all" => Scope::All,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Block => "block",
            Scope::Entity => "entity",
            Scope::All => "all",
        }
    }
}

/// `entity-bytes=from:to`: negative offsets count from the end; `to` may be
/// `*` (the end); both inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntityBytes {
    pub from: i64,
    pub to: Option<i64>,
}

impl EntityBytes {
    pub fn parse(s: &str) -> Option<EntityBytes> {
        let (from, to) = s.split_once(':')?;
        let from: i64 = from.parse().ok()?;
        let to = match to {
            "*" => None,
            t => Some(t.parse().ok()?),
        };
        // A positive range must not run backwards.
        if let Some(t) = to {
            if from >= 0 && t >= 0 && t < from {
                return None;
            }
        }
        Some(EntityBytes { from, to })
    }

    /// The inclusive byte range within a file of `size` bytes; None when it
    /// selects nothing.
    pub fn resolve(&self, size: u64) -> Option<(u64, u64)> {
        if size == 0 {
            return None;
        }
        let abs = |v: i64| -> u64 {
            if v < 0 {
                size.saturating_sub(v.unsigned_abs())
            } else {
                v as u64
            }
        };
        let from = abs(self.from);
        let to = self.to.map_or(size - 1, abs).min(size - 1);
        (from <= to).then_some((from, to))
    }
}

/// How a block met on the walk is followed.
#[derive(Debug, Clone, Copy)]
enum Follow {
    /// Every link.
    All,
    /// A file's node or leaf that begins at `base` in the file: children
    /// that overlap the wanted bytes `[from, to)` only.
    File { base: u64, from: u64, to: u64 },
    /// A HAMT's shards, not its entries.
    Shards,
    /// Nothing below it.
    Leaf,
}

/// Links of a dag-cbor block.
fn cbor_links(cid: &Cid, bytes: &[u8]) -> Result<Vec<Cid>, WalkError> {
    let ipld: ipld_core::ipld::Ipld = serde_ipld_dagcbor::from_slice(bytes)
        .map_err(|e| WalkError::Bad(format!("{cid}: malformed dag-cbor: {e}")))?;
    let mut out = Vec::new();
    let mut stack = vec![&ipld];
    while let Some(v) = stack.pop() {
        match v {
            ipld_core::ipld::Ipld::Link(c) => out.push(*c),
            ipld_core::ipld::Ipld::List(l) => stack.extend(l.iter().rev()),
            ipld_core::ipld::Ipld::Map(m) => stack.extend(m.values().rev()),
            _ => {}
        }
    }
    Ok(out)
}

/// The size of the file a UnixFS node is the root of.
pub fn file_size(n: &unixfs::Node) -> u64 {
    n.data.filesize.unwrap_or_else(|| {
        n.data.data.as_ref().map_or(0, |d| d.len() as u64) + n.data.blocksizes.iter().sum::<u64>()
    })
}

/// What a walk hands each block it takes to; an error stops the walk.
pub type Emit<'a> = dyn FnMut(&Cid, &[u8]) -> Result<(), WalkError> + 'a;

/// Walks the DAG under `root` in depth-first order (a block before its
/// children, children in link order), calling `emit` for each block the
/// scope takes; with `dups` false a block is sent once.
pub fn walk(
    blocks: &dyn Blocks,
    root: &Cid,
    scope: Scope,
    range: Option<EntityBytes>,
    dups: bool,
    seen: &mut HashSet<Cid>,
    emit: &mut Emit<'_>,
) -> Result<(), WalkError> {
    // (cid, how to follow it); popped from the end.
    let mut stack: Vec<(Cid, Option<Follow>)> = vec![(*root, None)];
    while let Some((cid, follow)) = stack.pop() {
        if crate::identity_block(&cid).is_some() {
            continue;
        }
        let fresh = seen.insert(cid);
        let bytes = get(blocks, &cid)?;
        if fresh || dups {
            emit(&cid, &bytes)?;
        } else if !matches!(follow, Some(Follow::File { .. })) {
            // Sent already, and everything under it with it.
            continue;
        }
        let follow = match follow {
            Some(f) => f,
            None => match scope {
                Scope::Block => return Ok(()),
                Scope::All => Follow::All,
                Scope::Entity => match cid.codec() {
                    DAG_PB => {
                        let n = node(&cid, &bytes)?;
                        match n.data.kind {
                            Kind::File | Kind::Raw => {
                                let size = file_size(&n);
                                match range {
                                    None => Follow::File {
                                        base: 0,
                                        from: 0,
                                        to: size,
                                    },
                                    Some(r) => match r.resolve(size) {
                                        Some((from, to)) => Follow::File {
                                            base: 0,
                                            from,
                                            to: to + 1,
                                        },
                                        None => Follow::Leaf,
                                    },
                                }
                            }
                            Kind::HamtShard => Follow::Shards,
                            _ => Follow::Leaf,
                        }
                    }
                    _ => Follow::Leaf,
                },
            },
        };
        let mut children: Vec<(Cid, Option<Follow>)> = Vec::new();
        match (follow, cid.codec()) {
            (Follow::Leaf, _) | (_, RAW) => {}
            (Follow::All, DAG_PB) => {
                let n = node(&cid, &bytes)?;
                children.extend(n.links.iter().map(|l| (l.cid, Some(Follow::All))));
            }
            (Follow::All, DAG_CBOR) => {
                children.extend(
                    cbor_links(&cid, &bytes)?
                        .into_iter()
                        .map(|c| (c, Some(Follow::All))),
                );
            }
            (Follow::All, _) => {}
            (Follow::Shards, DAG_PB) => {
                let n = node(&cid, &bytes)?;
                let width = unixfs::hamt_prefix_len(n.data.fanout.unwrap_or(256));
                children.extend(
                    n.links
                        .iter()
                        .filter(|l| l.name.as_deref().is_some_and(|s| s.len() == width))
                        .map(|l| (l.cid, Some(Follow::Shards))),
                );
            }
            (Follow::File { base, from, to }, DAG_PB) => {
                let n = node(&cid, &bytes)?;
                let ranges =
                    unixfs::child_ranges(&n).map_err(|e| WalkError::Bad(format!("{cid}: {e}")))?;
                for (link, (off, size)) in n.links.iter().zip(ranges) {
                    let begin = base.saturating_add(off);
                    let end = begin.saturating_add(size);
                    if end > from && begin < to {
                        children.push((
                            link.cid,
                            Some(Follow::File {
                                base: begin,
                                from,
                                to,
                            }),
                        ));
                    }
                }
            }
            _ => {}
        }
        stack.extend(children.into_iter().rev());
    }
    Ok(())
}

/// What a path ends at, for a deserialized answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entity {
    /// A UnixFS file (or a raw block) of this many bytes.
    File {
        size: u64,
    },
    Directory {
        entries: Vec<unixfs::Entry>,
    },
    /// Something only a CAR or raw answer can carry (dag-cbor, a symlink).
    Other,
}

/// The most entries a directory listing shows.
pub const MAX_LISTED: usize = 10_000;

/// What `cid` is, reading its block (and a HAMT's shards for a listing).
pub fn entity(blocks: &dyn Blocks, cid: &Cid) -> Result<Entity, WalkError> {
    if let Some(b) = crate::identity_block(cid) {
        return Ok(if cid.codec() == RAW {
            Entity::File {
                size: b.len() as u64,
            }
        } else {
            Entity::Other
        });
    }
    let bytes = get(blocks, cid)?;
    match cid.codec() {
        RAW => Ok(Entity::File {
            size: bytes.len() as u64,
        }),
        DAG_PB => {
            let n = node(cid, &bytes)?;
            match n.data.kind {
                Kind::File | Kind::Raw => Ok(Entity::File {
                    size: file_size(&n),
                }),
                Kind::Directory => Ok(Entity::Directory {
                    entries: n
                        .links
                        .iter()
                        .take(MAX_LISTED)
                        .map(|l| unixfs::Entry {
                            name: l.name.clone().unwrap_or_default(),
                            cid: l.cid,
                            size: l.size,
                        })
                        .collect(),
                }),
                Kind::HamtShard => {
                    let mut entries = Vec::new();
                    let mut stack = vec![n];
                    while let Some(shard) = stack.pop() {
                        let width = unixfs::hamt_prefix_len(shard.data.fanout.unwrap_or(256));
                        for l in &shard.links {
                            let name = l.name.as_deref().unwrap_or("");
                            if name.len() == width {
                                let b = get(blocks, &l.cid)?;
                                stack.push(node(&l.cid, &b)?);
                            } else if name.len() > width && entries.len() < MAX_LISTED {
                                entries.push(unixfs::Entry {
                                    name: name[width..].to_string(),
                                    cid: l.cid,
                                    size: l.size,
                                });
                            }
                        }
                    }
                    entries.sort_by(|a, b| a.name.cmp(&b.name));
                    Ok(Entity::Directory { entries })
                }
                _ => Ok(Entity::Other),
            }
        }
        _ => Ok(Entity::Other),
    }
}

/// Sends a file's bytes `[from, to)` in order, block by block.
pub fn read_file(
    blocks: &dyn Blocks,
    cid: &Cid,
    from: u64,
    to: u64,
    out: &mut dyn FnMut(&[u8]) -> Result<(), WalkError>,
) -> Result<(), WalkError> {
    // (cid, where it begins in the file)
    let mut stack = vec![(*cid, 0u64)];
    while let Some((c, base)) = stack.pop() {
        let bytes = match crate::identity_block(&c) {
            Some(b) => b.to_vec(),
            None => get(blocks, &c)?,
        };
        let mut send = |data: &[u8], at: u64| -> Result<(), WalkError> {
            let end = at + data.len() as u64;
            if end <= from || at >= to {
                return Ok(());
            }
            let a = from.saturating_sub(at) as usize;
            let b = (to.min(end) - at) as usize;
            out(&data[a..b])
        };
        match c.codec() {
            RAW => send(&bytes, base)?,
            DAG_PB => {
                let n = node(&c, &bytes)?;
                if !matches!(n.data.kind, Kind::File | Kind::Raw) {
                    return Err(WalkError::Bad(format!("{c}: not a file's block")));
                }
                if let Some(d) = &n.data.data {
                    send(d, base)?;
                }
                let ranges =
                    unixfs::child_ranges(&n).map_err(|e| WalkError::Bad(format!("{c}: {e}")))?;
                let mut children = Vec::new();
                for (l, (off, size)) in n.links.iter().zip(ranges) {
                    let begin = base.saturating_add(off);
                    if begin.saturating_add(size) > from && begin < to {
                        children.push((l.cid, begin));
                    }
                }
                stack.extend(children.into_iter().rev());
            }
            other => {
                return Err(WalkError::Bad(format!(
                    "{c}: codec 0x{other:x} is not a file"
                )))
            }
        }
    }
    Ok(())
}
