//! The UnixFS importer: files and folders into blocks, with the CIDs
//! `ipfs-car pack` gives the same input.
//!
//! `ipfs-car`'s settings (those of `@ipld/unixfs` it configures): files cut
//! into 1 MiB chunks, each a raw leaf (CIDv1, sha2-256); a file of one chunk
//! *is* that leaf; more are gathered by a balanced layout 1,024 links wide
//! into dag-pb `File` nodes (`blocksizes`, `filesize`, links named `""`);
//! a folder is a dag-pb `Directory` whose links are sorted by name, each
//! carrying its target's whole DAG size (`Tsize`); a folder of more than
//! 1000 entries is a HAMT ([`MAX_FLAT_ENTRIES`]). Hidden names (a leading
//! `.`) are left out unless asked for; a single file is wrapped in a
//! directory unless asked not to be, as `ipfs-car` does.

use std::io::{self, Read};
use std::path::Path;

use cid::Cid;
use ipld_dagpb::PbLink;

use crate::unixfs::{encode_node, Data, Kind};
use crate::{sha256_cid, DAG_PB, RAW};

/// `ipfs-car`'s chunk size.
pub const CHUNK: usize = 1 << 20;
/// `ipfs-car`'s balanced-layout width.
pub const WIDTH: usize = 1024;
/// `ipfs-car` shards a directory past this many entries, as a HAMT of
/// fanout 256 hashed by murmur3-x64-64: so does this importer.
pub const MAX_FLAT_ENTRIES: usize = 1000;
/// A HAMT's fanout, as `ipfs-car` writes them.
const HAMT_FANOUT: u64 = 256;
/// The multihash code of murmur3-x64-64 (UnixFS `hashType`).
const MURMUR3_X64_64: u64 = 0x22;

/// A block made, handed to whoever keeps it.
pub type Sink<'a> = dyn FnMut(Cid, Vec<u8>) -> io::Result<()> + 'a;

/// What a DAG's root is: its CID, the bytes of its whole DAG (`Tsize`), and
/// the content bytes it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub cid: Cid,
    pub dag_size: u64,
    pub content: u64,
}

fn read_chunk(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn file_node(parts: &[Link], sink: &mut Sink<'_>) -> io::Result<Link> {
    let mut data = Data::new(Kind::File);
    data.blocksizes = parts.iter().map(|p| p.content).collect();
    let content: u64 = data.blocksizes.iter().sum();
    data.filesize = Some(content);
    let links = parts
        .iter()
        .map(|p| PbLink {
            cid: p.cid,
            name: Some(String::new()),
            size: Some(p.dag_size),
        })
        .collect();
    let bytes = encode_node(links, &data);
    let cid = sha256_cid(DAG_PB, &bytes);
    let dag_size = bytes.len() as u64 + parts.iter().map(|p| p.dag_size).sum::<u64>();
    sink(cid, bytes)?;
    Ok(Link {
        cid,
        dag_size,
        content,
    })
}

/// Imports one file's bytes.
pub fn add_file(r: &mut dyn Read, sink: &mut Sink<'_>) -> io::Result<Link> {
    let mut buf = vec![0u8; CHUNK];
    let mut level: Vec<Link> = Vec::new();
    loop {
        let n = read_chunk(r, &mut buf)?;
        if n == 0 && !level.is_empty() {
            break;
        }
        let chunk = buf[..n].to_vec();
        let cid = sha256_cid(RAW, &chunk);
        sink(cid, chunk)?;
        level.push(Link {
            cid,
            dag_size: n as u64,
            content: n as u64,
        });
        if n < CHUNK {
            break;
        }
    }
    while level.len() > 1 {
        let mut up = Vec::with_capacity(level.len().div_ceil(WIDTH));
        for group in level.chunks(WIDTH) {
            up.push(file_node(group, sink)?);
        }
        level = up;
    }
    Ok(level[0])
}

/// Imports a directory of `entries` (name → what it links to).
pub fn add_directory(entries: &[(String, Link)], sink: &mut Sink<'_>) -> io::Result<Link> {
    if entries.len() > MAX_FLAT_ENTRIES {
        let keyed: Vec<Keyed<'_>> = entries
            .iter()
            .map(|(n, l)| (n.as_str(), *l, crate::unixfs::hamt_hash(n.as_bytes())))
            .collect();
        return hamt_shard(&keyed, 0, sink);
    }
    let links = entries
        .iter()
        .map(|(name, l)| PbLink {
            cid: l.cid,
            name: Some(name.clone()),
            size: Some(l.dag_size),
        })
        .collect();
    let bytes = encode_node(links, &Data::new(Kind::Directory));
    let cid = sha256_cid(DAG_PB, &bytes);
    let dag_size = bytes.len() as u64 + entries.iter().map(|(_, l)| l.dag_size).sum::<u64>();
    sink(cid, bytes)?;
    Ok(Link {
        cid,
        dag_size,
        content: entries.iter().map(|(_, l)| l.content).sum(),
    })
}

/// A directory entry with its name's HAMT hash.
type Keyed<'a> = (&'a str, Link, [u8; 8]);

/// One shard of a HAMT directory at `depth`: each entry goes in the bucket
/// its name's hash picks (8 bits a level, most significant first); a bucket
/// of one entry links to it by the bucket's two hex digits and its name, a
/// bucket of more to a shard one level down by the digits alone. The node's
/// data is the bitfield of buckets in use, big-endian, leading zero bytes
/// left out. This is the layout `ipfs-car` (and Kubo) write.
fn hamt_shard(entries: &[Keyed<'_>], depth: usize, sink: &mut Sink<'_>) -> io::Result<Link> {
    let mut buckets: std::collections::BTreeMap<u64, Vec<Keyed<'_>>> = Default::default();
    for e in entries {
        let index = crate::unixfs::hamt_index(&e.2, depth, HAMT_FANOUT)
            .ok_or_else(|| io::Error::other("names whose hashes collide in all 64 bits"))?;
        buckets.entry(index).or_default().push(*e);
    }
    let mut bits = [0u8; (HAMT_FANOUT / 8) as usize];
    let mut links = Vec::with_capacity(buckets.len());
    let mut below = 0u64;
    for (index, group) in &buckets {
        bits[bits.len() - 1 - (*index as usize) / 8] |= 1 << (index % 8);
        let (name, link) = match group.as_slice() {
            [(name, link, _)] => (format!("{index:02X}{name}"), *link),
            _ => (format!("{index:02X}"), hamt_shard(group, depth + 1, sink)?),
        };
        below += link.dag_size;
        links.push(PbLink {
            cid: link.cid,
            name: Some(name),
            size: Some(link.dag_size),
        });
    }
    let first = bits.iter().position(|&b| b != 0).unwrap_or(bits.len() - 1);
    let mut data = Data::new(Kind::HamtShard);
    data.data = Some(bits[first..].to_vec());
    data.hash_type = Some(MURMUR3_X64_64);
    data.fanout = Some(HAMT_FANOUT);
    let bytes = encode_node(links, &data);
    let cid = sha256_cid(DAG_PB, &bytes);
    let dag_size = bytes.len() as u64 + below;
    sink(cid, bytes)?;
    Ok(Link {
        cid,
        dag_size,
        content: entries.iter().map(|(_, l, _)| l.content).sum(),
    })
}

/// How a path is imported.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Include names that begin with `.`.
    pub hidden: bool,
    /// A single file is not wrapped in a directory.
    pub no_wrap: bool,
}

fn add_tree(dir: &Path, opts: &Options, sink: &mut Sink<'_>) -> io::Result<Option<Link>> {
    let mut entries = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().into_string().map_err(|n| {
            io::Error::other(format!(
                "{}: a name that is not UTF-8",
                Path::new(&n).display()
            ))
        })?;
        if name.starts_with('.') && !opts.hidden {
            continue;
        }
        let meta = std::fs::metadata(e.path())?;
        let link = if meta.is_dir() {
            // A folder with no file in it is left out, as ipfs-car does.
            match add_tree(&e.path(), opts, sink)? {
                Some(l) => l,
                None => continue,
            }
        } else if meta.is_file() {
            add_file(&mut std::fs::File::open(e.path())?, sink)?
        } else {
            continue;
        };
        entries.push((name, link));
    }
    if entries.is_empty() {
        return Ok(None);
    }
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    add_directory(&entries, sink).map(Some)
}

/// Imports a file or a folder as `ipfs-car pack` would; the root.
pub fn add_path(path: &Path, opts: &Options, sink: &mut Sink<'_>) -> io::Result<Link> {
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        return add_tree(path, opts, sink)?
            .ok_or_else(|| io::Error::other(format!("{}: no files in it", path.display())));
    }
    let file = add_file(&mut std::fs::File::open(path)?, sink)?;
    if opts.no_wrap {
        return Ok(file);
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::other("a file name that is not UTF-8"))?
        .to_string();
    add_directory(&[(name, file)], sink)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_match_ipfs_car() {
        // `ipfs-car pack --no-wrap` of these bytes (ipfs-car 3.1.0).
        let mut blocks = Vec::new();
        let mut sink = |c: Cid, b: Vec<u8>| -> io::Result<()> {
            blocks.push((c, b));
            Ok(())
        };
        let one = add_file(&mut &b"hello\n"[..], &mut sink).expect("add");
        assert_eq!(
            one.cid.to_string(),
            "bafkreicysg23kiwv34eg2d7qweipxwosdo2py4ldv42nbauguluen5v6am"
        );
        let empty = add_file(&mut &b""[..], &mut sink).expect("add");
        assert_eq!(empty.content, 0);
        assert_eq!(empty.cid.codec(), RAW);
        let three = vec![7u8; 3 * CHUNK + 5];
        let big = add_file(&mut &three[..], &mut sink).expect("add");
        assert_eq!(big.content, three.len() as u64);
        assert_eq!(big.cid.codec(), DAG_PB);
        for (c, b) in &blocks {
            crate::verify_block(c, b).expect("blocks hash to their CIDs");
        }
        // Equal chunks are one block, named four times.
        let node = crate::unixfs::decode_node(&blocks.last().expect("root").1).expect("node");
        assert_eq!(node.links.len(), 4);
        assert_eq!(
            node.data.blocksizes,
            vec![CHUNK as u64, CHUNK as u64, CHUNK as u64, 5]
        );
    }
}
