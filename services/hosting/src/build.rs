//! A version from a folder, as `tessera deploy site` makes it: every file
//! hashed, text compressed, the manifest built and checked, before anything
//! leaves the machine (so a deploy that would be refused is refused here,
//! with the file and line at fault).
//!
//! Compression is done here, once, at deploy time, and not by the node per
//! request: the Brotli and gzip variants are blobs like any other, so they
//! are stored once, deduplicated across versions, served zero-copy with
//! their own `ETag`, and cost the serving nodes no CPU. A variant is kept
//! only when it saves at least a tenth of the file.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::{FileEntry, Manifest, Stored, MAX_FILES, MAX_FILE_BYTES};

/// Files this size or smaller are not worth compressing.
const MIN_COMPRESS: u64 = 256;
/// Files larger are sent as they are (compressing them at deploy time
/// would take long for little).
const MAX_COMPRESS: u64 = 32 << 20;

/// Where a blob's bytes come from when it is uploaded.
#[derive(Debug)]
pub enum Source {
    File(PathBuf),
    Bytes(Vec<u8>),
}

#[derive(Debug)]
pub struct Blob {
    pub hash: [u8; 32],
    pub size: u64,
    pub source: Source,
}

impl Blob {
    pub fn reader(&self) -> std::io::Result<Box<dyn Read + Send + '_>> {
        Ok(match &self.source {
            Source::File(p) => Box::new(std::fs::File::open(p)?),
            Source::Bytes(b) => Box::new(&b[..]),
        })
    }
}

/// A version ready to upload: the manifest and every distinct blob it names.
#[derive(Debug)]
pub struct Built {
    pub manifest: Manifest,
    pub blobs: Vec<Blob>,
}

/// The content type for a path, by its extension.
pub fn content_type(path: &str) -> String {
    let guess = mime_guess::from_path(path)
        .first_raw()
        .unwrap_or("application/octet-stream");
    let texty = guess.starts_with("text/")
        || matches!(
            guess,
            "application/javascript"
                | "application/json"
                | "application/xml"
                | "image/svg+xml"
                | "application/manifest+json"
        );
    if texty {
        format!("{guess}; charset=utf-8")
    } else {
        guess.to_string()
    }
}

fn compressible(content_type: &str) -> bool {
    let t = content_type.split(';').next().unwrap_or("");
    t.starts_with("text/")
        || matches!(
            t,
            "application/javascript"
                | "application/json"
                | "application/xml"
                | "image/svg+xml"
                | "application/manifest+json"
                | "application/wasm"
                | "font/ttf"
                | "font/otf"
                | "application/vnd.ms-fontobject"
                | "image/x-icon"
                | "image/vnd.microsoft.icon"
        )
}

fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, PathBuf)>) -> Result<(), String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(format!(
                "{}: file names must be UTF-8",
                entry.path().display()
            ));
        };
        // Dotfiles (.git, .DS_Store, .env) are never deployed.
        if name.starts_with('.') {
            continue;
        }
        let path = format!("{rel}/{name}");
        let kind = entry
            .file_type()
            .map_err(|e| format!("{}: {e}", entry.path().display()))?;
        if kind.is_dir() {
            walk(&entry.path(), &path, out)?;
        } else if kind.is_file() {
            out.push((path, entry.path()));
        } else {
            return Err(format!(
                "{}: only files and folders are deployed (a symbolic link or special file is not)",
                entry.path().display()
            ));
        }
        if out.len() > MAX_FILES {
            return Err(format!(
                "more than {MAX_FILES} files: a site holds at most {MAX_FILES}"
            ));
        }
    }
    Ok(())
}

fn hash_file(path: &Path) -> Result<([u8; 32], u64), String> {
    let mut f =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    let n = std::io::copy(&mut f, &mut hasher)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok((*hasher.finalize().as_bytes(), n))
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let quality = if data.len() <= 4 << 20 { 11 } else { 7 };
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 64 << 10, quality, 22);
        // Writing into a Vec cannot fail.
        let _ = w.write_all(data);
    }
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let _ = w.write_all(data);
    w.finish().unwrap_or_default()
}

/// Builds the version of `dir`; `progress(done, total)` after each file.
pub fn build(dir: &Path, progress: &mut dyn FnMut(usize, usize)) -> Result<Built, String> {
    if !dir.is_dir() {
        return Err(format!("{} is not a folder", dir.display()));
    }
    let mut found = Vec::new();
    walk(dir, "", &mut found)?;
    found.sort();
    let mut files = BTreeMap::new();
    let mut blobs: BTreeMap<[u8; 32], Blob> = BTreeMap::new();
    let mut redirects = String::new();
    let mut headers = String::new();
    let total = found.len();
    for (done, (path, disk)) in found.into_iter().enumerate() {
        if path == "/_redirects" || path == "/_headers" {
            let text = std::fs::read_to_string(&disk)
                .map_err(|e| format!("{path}: cannot read it as UTF-8 text: {e}"))?;
            if path == "/_redirects" {
                crate::redirects::parse(&text)?;
                redirects = text;
            } else {
                crate::headers::parse(&text)?;
                headers = text;
            }
            progress(done + 1, total);
            continue;
        }
        if !crate::valid_path(&path) {
            return Err(format!("{path:?}: not a path a site can serve"));
        }
        let (hash, size) = hash_file(&disk)?;
        if size > MAX_FILE_BYTES {
            return Err(format!(
                "{path}: {size} bytes; a file is at most {MAX_FILE_BYTES} bytes"
            ));
        }
        let content_type = content_type(&path);
        let mut entry = FileEntry {
            hash: crate::hex(&hash),
            size,
            content_type,
            br: None,
            gzip: None,
        };
        if compressible(&entry.content_type) && (MIN_COMPRESS..=MAX_COMPRESS).contains(&size) {
            let data =
                std::fs::read(&disk).map_err(|e| format!("cannot read {}: {e}", disk.display()))?;
            for (which, packed) in [("br", brotli(&data)), ("gzip", gzip(&data))] {
                if (packed.len() as u64) * 10 > size * 9 {
                    continue;
                }
                let h = *blake3::hash(&packed).as_bytes();
                let stored = Stored {
                    hash: crate::hex(&h),
                    size: packed.len() as u64,
                };
                if which == "br" {
                    entry.br = Some(stored);
                } else {
                    entry.gzip = Some(stored);
                }
                blobs.entry(h).or_insert(Blob {
                    hash: h,
                    size: packed.len() as u64,
                    source: Source::Bytes(packed),
                });
            }
        }
        blobs.entry(hash).or_insert(Blob {
            hash,
            size,
            source: Source::File(disk),
        });
        files.insert(path, entry);
        progress(done + 1, total);
    }
    if files.is_empty() {
        return Err(format!("{} holds no files to deploy", dir.display()));
    }
    let manifest = Manifest {
        format: 1,
        files,
        redirects,
        headers,
    };
    manifest.check()?;
    Ok(Built {
        manifest,
        blobs: blobs.into_values().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_becomes_a_version() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        std::fs::create_dir_all(d.join("assets")).expect("mkdir");
        std::fs::write(d.join("index.html"), "<h1>hi</h1>".repeat(100)).expect("write");
        std::fs::write(d.join("assets/app.js"), "console.log(1);\n".repeat(100)).expect("write");
        std::fs::write(d.join("assets/copy.js"), "console.log(1);\n".repeat(100)).expect("write");
        std::fs::write(d.join("logo.png"), [0x89u8, b'P', b'N', b'G']).expect("write");
        std::fs::write(d.join(".env"), "SECRET=1").expect("write");
        std::fs::write(d.join("_redirects"), "/old /new 301\n").expect("write");
        let mut calls = 0;
        let b = build(d, &mut |_, _| calls += 1).expect("builds");
        assert_eq!(calls, 5);
        let m = &b.manifest;
        assert_eq!(
            m.files.keys().collect::<Vec<_>>(),
            [
                "/assets/app.js",
                "/assets/copy.js",
                "/index.html",
                "/logo.png"
            ]
        );
        assert_eq!(
            m.files["/index.html"].content_type,
            "text/html; charset=utf-8"
        );
        assert_eq!(m.files["/logo.png"].content_type, "image/png");
        assert!(m.files["/index.html"].br.is_some() && m.files["/index.html"].gzip.is_some());
        assert!(m.files["/logo.png"].br.is_none());
        assert_eq!(m.redirects, "/old /new 301\n");
        // Two identical files are one blob (plus its two variants).
        assert_eq!(b.blobs.len(), 3 + 3 + 1);
        // The same folder, the same version.
        let again = build(d, &mut |_, _| {}).expect("builds");
        assert_eq!(again.manifest.to_bytes(), m.to_bytes());
        // A bad _redirects is refused before anything is uploaded.
        std::fs::write(d.join("_redirects"), "/old /new 299\n").expect("write");
        let e = build(d, &mut |_, _| {}).expect_err("refused");
        assert!(e.contains("line 1") && e.contains("299"), "{e}");
    }
}
