//! CAR (Content Addressable aRchive) v1, read and written; v2 read.
//!
//! A CARv1 is a varint-prefixed dag-cbor header (`{roots, version: 1}`,
//! encoded by `serde_ipld_dagcbor`) and then sections, each a varint length,
//! a CID and the block's bytes. A CARv2 wraps a CARv1 after a fixed pragma
//! and a 40-byte header that says where the inner CARv1 lies.
//!
//! The reader is bounded for bytes from anyone: a header of at most
//! [`MAX_HEADER_BYTES`], a section of at most [`crate::MAX_BLOCK_BYTES`] plus
//! a CID; a length past those is refused before anything is allocated. It
//! does not verify blocks: the caller checks each against its CID
//! ([`crate::verify_block`]) before keeping it.

use std::io::{self, Read};

use cid::Cid;
use serde::{Deserialize, Serialize};

use crate::MAX_BLOCK_BYTES;

/// The largest CAR header taken (roots and version; a few CIDs in practice).
pub const MAX_HEADER_BYTES: u64 = 64 * 1024;
/// Most roots a CAR header may name.
pub const MAX_ROOTS: usize = 256;
/// A section is a CID (at most this long) and a block.
const MAX_CID_BYTES: u64 = 128;

/// The media type of a CAR answer, with its parameters.
pub const MEDIA_TYPE: &str = "application/vnd.ipld.car";

#[derive(Serialize, Deserialize)]
struct Header {
    roots: Vec<Cid>,
    version: u64,
}

#[derive(Deserialize)]
struct VersionOnly {
    version: u64,
}

/// The CARv2 pragma: a CARv1 header of `{version: 2}`.
const V2_PRAGMA: [u8; 11] = [
    0x0a, 0xa1, 0x67, 0x76, 0x65, 0x72, 0x73, 0x69, 0x6f, 0x6e, 0x02,
];

/// Why a CAR is refused.
#[derive(Debug)]
pub enum CarError {
    Io(io::Error),
    Malformed(String),
}

impl std::fmt::Display for CarError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CarError::Io(e) => write!(f, "reading the CAR: {e}"),
            CarError::Malformed(why) => write!(f, "malformed CAR: {why}"),
        }
    }
}

impl From<io::Error> for CarError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            CarError::Malformed("it ends inside a section".into())
        } else {
            CarError::Io(e)
        }
    }
}

fn bad(why: impl Into<String>) -> CarError {
    CarError::Malformed(why.into())
}

/// Reads one unsigned varint; None at a clean end of input.
fn read_varint(r: &mut impl Read) -> Result<Option<u64>, CarError> {
    let mut first = [0u8; 1];
    loop {
        match r.read(&mut first) {
            Ok(0) => return Ok(None),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CarError::Io(e)),
        }
    }
    let mut buf = [0u8; 10];
    buf[0] = first[0];
    let mut n = 1;
    while buf[n - 1] & 0x80 != 0 {
        if n == buf.len() {
            return Err(bad("a varint longer than ten bytes"));
        }
        r.read_exact(&mut buf[n..n + 1])?;
        n += 1;
    }
    let (v, _) =
        unsigned_varint::decode::u64(&buf[..n]).map_err(|e| bad(format!("a bad varint: {e}")))?;
    Ok(Some(v))
}

fn write_varint(out: &mut Vec<u8>, v: u64) {
    let mut buf = unsigned_varint::encode::u64_buffer();
    out.extend_from_slice(unsigned_varint::encode::u64(v, &mut buf));
}

enum Head {
    V1(Vec<Cid>),
    V2,
}

fn read_header(r: &mut impl Read) -> Result<Head, CarError> {
    let len = read_varint(r)?.ok_or_else(|| bad("it is empty"))?;
    if len == 0 || len > MAX_HEADER_BYTES {
        return Err(bad(format!("a header of {len} bytes")));
    }
    let mut head = vec![0u8; len as usize];
    r.read_exact(&mut head)?;
    let version: VersionOnly = serde_ipld_dagcbor::from_slice(&head)
        .map_err(|e| bad(format!("a header that is not a CAR header: {e}")))?;
    match version.version {
        1 => {
            let header: Header = serde_ipld_dagcbor::from_slice(&head)
                .map_err(|e| bad(format!("a bad header: {e}")))?;
            if header.roots.len() > MAX_ROOTS {
                return Err(bad(format!("more than {MAX_ROOTS} roots")));
            }
            Ok(Head::V1(header.roots))
        }
        2 if head.len() + 1 == V2_PRAGMA.len() && head[..] == V2_PRAGMA[1..] => Ok(Head::V2),
        v => Err(bad(format!("version {v} (1 and 2 are read)"))),
    }
}

/// A CAR's blocks, read one at a time.
pub struct CarReader<R> {
    r: io::Take<R>,
    roots: Vec<Cid>,
}

impl<R: Read> CarReader<R> {
    /// Reads the header (v1, or v2 and the header of the v1 it wraps).
    pub fn new(r: R) -> Result<CarReader<R>, CarError> {
        let mut r = r.take(u64::MAX);
        let roots = match read_header(&mut r)? {
            Head::V1(roots) => roots,
            Head::V2 => {
                let mut v2 = [0u8; 40];
                r.read_exact(&mut v2)?;
                let word = |i: usize| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&v2[i..i + 8]);
                    u64::from_le_bytes(b)
                };
                let (offset, size) = (word(16), word(24));
                let consumed = (V2_PRAGMA.len() + 40) as u64;
                if offset < consumed {
                    return Err(bad("a CARv2 whose data begins inside its header"));
                }
                io::copy(&mut (&mut r).take(offset - consumed), &mut io::sink())?;
                r.set_limit(size);
                match read_header(&mut r)? {
                    Head::V1(roots) => roots,
                    Head::V2 => return Err(bad("a CARv2 inside a CARv2")),
                }
            }
        };
        Ok(CarReader { r, roots })
    }

    /// The CIDs the header names as roots.
    pub fn roots(&self) -> &[Cid] {
        &self.roots
    }

    /// The next section: its CID and block (not yet verified); None at the end.
    pub fn next_block(&mut self) -> Result<Option<(Cid, Vec<u8>)>, CarError> {
        let Some(len) = read_varint(&mut self.r)? else {
            return Ok(None);
        };
        if len == 0 {
            // Some writers pad a CARv2's data with zeros; nothing follows.
            return Ok(None);
        }
        if len > MAX_BLOCK_BYTES as u64 + MAX_CID_BYTES {
            return Err(bad(format!(
                "a section of {len} bytes (blocks are at most {MAX_BLOCK_BYTES})"
            )));
        }
        let mut section = vec![0u8; len as usize];
        self.r.read_exact(&mut section)?;
        let mut cursor = io::Cursor::new(&section[..]);
        let cid = Cid::read_bytes(&mut cursor).map_err(|e| bad(format!("a bad CID: {e}")))?;
        let at = cursor.position() as usize;
        section.drain(..at);
        Ok(Some((cid, section)))
    }
}

/// The start of a CARv1 naming `roots`.
pub fn header(roots: &[Cid]) -> Vec<u8> {
    let head = serde_ipld_dagcbor::to_vec(&Header {
        roots: roots.to_vec(),
        version: 1,
    })
    .unwrap_or_default();
    let mut out = Vec::with_capacity(head.len() + 2);
    write_varint(&mut out, head.len() as u64);
    out.extend_from_slice(&head);
    out
}

/// Appends one section.
pub fn section(out: &mut Vec<u8>, cid: &Cid, block: &[u8]) {
    let id = cid.to_bytes();
    write_varint(out, (id.len() + block.len()) as u64);
    out.extend_from_slice(&id);
    out.extend_from_slice(block);
}

/// Feeds arbitrary bytes to the reader (fuzz target `car`, and a random-input
/// test): it returns errors, never panics nor allocates past its bounds.
pub fn exercise(bytes: &[u8]) {
    if let Ok(mut car) = CarReader::new(bytes) {
        let _ = car.roots().len();
        while let Ok(Some((cid, block))) = car.next_block() {
            let _ = crate::verify_block(&cid, &block);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{sha256_cid, RAW};

    fn sample() -> (Vec<u8>, Vec<(Cid, Vec<u8>)>) {
        let blocks: Vec<(Cid, Vec<u8>)> = (0..3u8)
            .map(|i| {
                let b = vec![i; 100 + i as usize];
                (sha256_cid(RAW, &b), b)
            })
            .collect();
        let mut car = header(&[blocks[0].0]);
        for (c, b) in &blocks {
            section(&mut car, c, b);
        }
        (car, blocks)
    }

    #[test]
    fn a_car_round_trips() {
        let (car, blocks) = sample();
        let mut r = CarReader::new(&car[..]).expect("header");
        assert_eq!(r.roots(), &[blocks[0].0]);
        let mut got = Vec::new();
        while let Some(b) = r.next_block().expect("section") {
            got.push(b);
        }
        assert_eq!(got, blocks);
    }

    #[test]
    fn a_car_v2_is_read_through_to_its_data() {
        let (v1, blocks) = sample();
        let mut v2 = V2_PRAGMA.to_vec();
        let offset = (V2_PRAGMA.len() + 40 + 7) as u64;
        let mut head = [0u8; 40];
        head[16..24].copy_from_slice(&offset.to_le_bytes());
        head[24..32].copy_from_slice(&(v1.len() as u64).to_le_bytes());
        v2.extend_from_slice(&head);
        v2.extend_from_slice(&[0; 7]);
        v2.extend_from_slice(&v1);
        v2.extend_from_slice(b"index bytes that are not read");
        let mut r = CarReader::new(&v2[..]).expect("v2");
        assert_eq!(r.roots(), &[blocks[0].0]);
        let mut n = 0;
        while r.next_block().expect("section").is_some() {
            n += 1;
        }
        assert_eq!(n, 3);
    }

    #[test]
    fn bad_cars_are_refused_with_a_reason() {
        let (car, _) = sample();
        assert!(CarReader::new(&b""[..]).is_err());
        // A huge declared header length, refused before allocating.
        assert!(CarReader::new(&[0xff, 0xff, 0xff, 0xff, 0x0f][..]).is_err());
        let cut = &car[..car.len() - 10];
        let mut r = CarReader::new(cut).expect("header is whole");
        let mut err = None;
        loop {
            match r.next_block() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    err = Some(e.to_string());
                    break;
                }
            }
        }
        assert!(err.expect("a cut CAR fails").contains("ends inside"));
        // A section declaring 1 GiB is refused, not allocated.
        let mut huge = header(&[]);
        write_varint(&mut huge, 1 << 30);
        let mut r = CarReader::new(&huge[..]).expect("header");
        assert!(r.next_block().is_err());
    }

    #[test]
    fn random_input_never_panics() {
        let (car, _) = sample();
        crate::testing::damaged(&car, 3000, 4, 7, exercise);
    }
}
