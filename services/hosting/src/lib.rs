//! Tessera's static-site hosting: deploy a folder, get a content-addressed
//! site served from the edge (Netlify-class).
//!
//! - A **version** of a site is a [`Manifest`]: every path of the folder
//!   mapped to the blob that holds it (its BLAKE3 hash, size and content
//!   type, and its precompressed variants), with the site's `_redirects`
//!   and `_headers` rules. The manifest is itself a blob; its hash is the
//!   version. [`build`] makes one from a folder (the CLI's side).
//! - A **site** is a deployment whose spec ([`SiteSpec`]) names the live
//!   version and the earlier ones kept (pinned) for rollback and preview.
//!   A deploy or a rollback is one change of the spec, so a visitor sees one
//!   version or the other, never a mix: a node switches a site to a version
//!   only once it holds every blob of it.
//! - The service ([`Sites`], see its module) resolves a request on the core
//!   from the published manifest snapshot and answers with the blob, served
//!   as every blob is (zero-copy, ranges, conditional requests).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod build;
pub mod headers;
pub mod pattern;
pub mod redirects;
mod service;
mod site;

pub use service::{Sites, SitesConfig};
pub use site::{Outcome, Version};

/// Most files in one version (a clear error at deploy time beyond).
pub const MAX_FILES: usize = 100_000;
/// Largest file.
pub const MAX_FILE_BYTES: u64 = 1 << 30;
/// Largest manifest.
pub const MAX_MANIFEST_BYTES: usize = 32 << 20;
/// Longest path in a site.
pub const MAX_PATH: usize = 1_024;
/// Most versions a site keeps (pinned, for rollback and previews).
pub const MAX_VERSIONS: usize = 50;
/// Versions kept when a deploy does not say (`--keep`).
pub const DEFAULT_KEEP: usize = 10;
/// Characters of a version's hash in its preview host name.
pub const PREVIEW_PREFIX: usize = 12;

/// A stored representation of a file: its blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// BLAKE3, hex.
    pub hash: String,
    pub size: u64,
}

/// One path of a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub hash: String,
    pub size: u64,
    #[serde(rename = "type")]
    pub content_type: String,
    /// Brotli-compressed at deploy time, when that saved enough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub br: Option<Stored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gzip: Option<Stored>,
}

/// A version of a site (JSON, keys sorted: the same folder always makes the
/// same manifest, hence the same version).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// Path (`/index.html`, decoded, case kept) → its file.
    pub files: BTreeMap<String, FileEntry>,
    /// The `_redirects` file as deployed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub redirects: String,
    /// The `_headers` file as deployed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub headers: String,
}

pub(crate) fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a path is one a site may hold: absolute, no empty, `.` or `..`
/// segments, no control characters, not too long.
pub fn valid_path(path: &str) -> bool {
    path.len() <= MAX_PATH
        && path.starts_with('/')
        && path.len() > 1
        && path[1..]
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
        && !path.chars().any(char::is_control)
}

impl Manifest {
    /// Parses and checks a manifest: what a node runs on bytes it fetched.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(format!(
                "the manifest is larger than {MAX_MANIFEST_BYTES} bytes"
            ));
        }
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("the manifest is not valid: {e}"))?;
        m.check()?;
        Ok(m)
    }

    /// The checks a deploy must pass: the same run by the CLI before it
    /// uploads anything and by the node before it records the deployment.
    pub fn check(&self) -> Result<(), String> {
        if self.format != 1 {
            return Err(format!(
                "manifest format {} (this node reads 1)",
                self.format
            ));
        }
        if self.files.len() > MAX_FILES {
            return Err(format!(
                "{} files: a site holds at most {MAX_FILES}",
                self.files.len()
            ));
        }
        for (path, f) in &self.files {
            if !valid_path(path) {
                return Err(format!("{path:?} is not a valid path in a site"));
            }
            if f.size > MAX_FILE_BYTES {
                return Err(format!(
                    "{path}: {} bytes; a file is at most {MAX_FILE_BYTES} bytes",
                    f.size
                ));
            }
            for h in std::iter::once(&f.hash)
                .chain(f.br.as_ref().map(|s| &s.hash))
                .chain(f.gzip.as_ref().map(|s| &s.hash))
            {
                if parse_hex32(h).is_none() {
                    return Err(format!("{path}: {h:?} is not a BLAKE3 hash"));
                }
            }
            if f.content_type.is_empty()
                || f.content_type.len() > 200
                || f.content_type.chars().any(char::is_control)
            {
                return Err(format!("{path}: content type {:?}", f.content_type));
            }
        }
        redirects::parse(&self.redirects)?;
        headers::parse(&self.headers)?;
        Ok(())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // A BTreeMap and plain fields: serializing cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Every blob the version needs (files and their variants).
    pub fn blobs(&self) -> impl Iterator<Item = [u8; 32]> + '_ {
        self.files.values().flat_map(|f| {
            std::iter::once(&f.hash)
                .chain(f.br.as_ref().map(|s| &s.hash))
                .chain(f.gzip.as_ref().map(|s| &s.hash))
                .filter_map(|h| parse_hex32(h))
        })
    }

    /// Bytes of the files (variants not counted).
    pub fn bytes(&self) -> u64 {
        self.files.values().map(|f| f.size).sum()
    }
}

/// A version as the site's spec lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionInfo {
    /// The manifest's hash, hex.
    pub id: String,
    /// Unix seconds.
    pub deployed_at: u64,
    pub files: u64,
    pub bytes: u64,
}

/// A site's deployment spec (TOML or JSON): the live version, the versions
/// kept, and the host names it answers for besides `{name}.{suffix}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSpec {
    pub live: String,
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Newest first; holds `live`. Each stays pinned on the site's nodes
    /// and reachable at its preview name until pruned from this list.
    pub versions: Vec<VersionInfo>,
}

impl SiteSpec {
    pub fn parse(bytes: &[u8]) -> Result<SiteSpec, String> {
        let spec: SiteSpec = service_api::parse_spec(bytes)?;
        spec.check()?;
        Ok(spec)
    }

    fn check(&self) -> Result<(), String> {
        if parse_hex32(&self.live).is_none() {
            return Err(format!(
                "live: {:?} is not a version (a manifest's hash)",
                self.live
            ));
        }
        if self.versions.is_empty() || self.versions.len() > MAX_VERSIONS {
            return Err(format!("versions: 1 to {MAX_VERSIONS}"));
        }
        for (i, v) in self.versions.iter().enumerate() {
            if parse_hex32(&v.id).is_none() {
                return Err(format!("versions: {:?} is not a version", v.id));
            }
            if self.versions[..i]
                .iter()
                .any(|w| w.id[..PREVIEW_PREFIX] == v.id[..PREVIEW_PREFIX])
            {
                return Err(format!("versions: {} is listed twice", v.id));
            }
        }
        if !self.versions.iter().any(|v| v.id == self.live) {
            return Err("versions: the live version must be listed".into());
        }
        for host in &self.hosts {
            let ok = host.len() <= 253
                && host.contains('.')
                && host.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                });
            if !ok {
                return Err(format!("hosts: {host:?} is not a lower-case host name"));
            }
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

/// Whether a file's name carries a content hash (`app.3f2a9c1b.js`,
/// `index-BdX8f9kL.js`, `chunk-5TJ2PR3O.js`): a part of 8 to 64 letters and
/// digits, with both, set off by `.` or `-`; an all-lower-case part must be
/// hex. Such a file never changes under its name: served immutable.
pub fn has_content_hash(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let Some((stem, _ext)) = name.rsplit_once('.') else {
        return false;
    };
    stem.split(['.', '-']).any(|part| {
        (8..=64).contains(&part.len())
            && part.bytes().all(|b| b.is_ascii_alphanumeric())
            && part.bytes().any(|b| b.is_ascii_digit())
            && part.bytes().any(|b| b.is_ascii_alphabetic())
            && (part.bytes().any(|b| b.is_ascii_uppercase())
                || part.bytes().all(|b| b.is_ascii_hexdigit()))
    })
}

/// Whether a content type is HTML.
pub fn is_html(content_type: &str) -> bool {
    content_type.starts_with("text/html")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The random-input stand-in for the `site_rules` and `site_manifest`
    /// fuzz targets: mutated rules, manifests and specs are accepted or
    /// refused with a message, never a panic, and what is accepted matches.
    #[test]
    fn random_inputs_never_panic() {
        let h = "ab".repeat(32);
        let manifest = format!(
            r#"{{"format":1,"files":{{"/index.html":{{"hash":"{h}","size":3,"type":"text/html"}},"/a/404.html":{{"hash":"{h}","size":1,"type":"text/html"}}}},"redirects":"/x/* /index.html 200\n/y/:a /z/:a 301!\n"}}"#
        );
        let seeds: [&[u8]; 4] = [
            b"/old /new 301\n/news/:year/* /blog/:year/:splat 302!\n/s id=:id /p/:id\n/* /index.html 200\n",
            b"/*\n  X-Frame-Options: DENY\n/a/:b/*.css\n  ! X-Frame-Options\n  Cache-Control: max-age=1\n",
            manifest.as_bytes(),
            b"live = \"abab\"\nhosts = [\"a.example\"]\n[[versions]]\nid = \"abab\"\n",
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut s = seeds[(next() % 4) as usize].to_vec();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() % s.len() as u64) as usize;
                s[i] = b"/:*! \n=#x%.?"[(next() % 12) as usize];
            }
            let Ok(text) = std::str::from_utf8(&s) else {
                continue;
            };
            match redirects::parse(text) {
                Ok(rules) => {
                    for path in ["/", "/news/2024/a/b", "/s", "/x/y"] {
                        if let Some(m) = redirects::first(&rules, path, "id=3", false) {
                            let _ = m.rule.target(path, "id=3", &m.caps);
                        }
                    }
                }
                Err(why) => assert!(!why.is_empty()),
            }
            match headers::parse(text) {
                Ok(rules) => {
                    let _ = headers::for_path(&rules, "/a/b/c.css");
                }
                Err(why) => assert!(!why.is_empty()),
            }
            match Manifest::parse(&s) {
                Ok(m) => {
                    let v = Version::compile([0; 32], &m).expect("a checked manifest compiles");
                    let _ = v.resolve("/a/missing", "");
                    let _ = v.resolve("/y/q", "");
                }
                Err(why) => assert!(!why.is_empty()),
            }
            if let Err(why) = SiteSpec::parse(&s) {
                assert!(!why.is_empty());
            }
        }
    }

    #[test]
    fn content_hashes_in_names() {
        for yes in [
            "/assets/app.3f2a9c1b.js",
            "/assets/index-BdX8f9kL.js",
            "/chunk-5TJ2PR3O.js",
            "/static/css/main.073c9b0a.css",
        ] {
            assert!(has_content_hash(yes), "{yes}");
        }
        for no in [
            "/index.html",
            "/jquery-3.7.1.min.js",
            "/favicon-32x32.png",
            "/logo_transparent2024.png",
            "/background.png",
            "/readme",
            "/deadbeef",
        ] {
            assert!(!has_content_hash(no), "{no}");
        }
    }

    #[test]
    fn paths() {
        assert!(valid_path("/a/b.html") && valid_path("/with space.txt"));
        for bad in ["", "/", "a", "/a//b", "/a/../b", "/./a", "/a\n"] {
            assert!(!valid_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn specs() {
        let id = "ab".repeat(32);
        let spec = format!(
            "live = \"{id}\"\nhosts = [\"docs.example.com\"]\n[[versions]]\nid = \"{id}\"\ndeployed_at = 1\nfiles = 2\nbytes = 3\n"
        );
        let s = SiteSpec::parse(spec.as_bytes()).expect("parses");
        assert_eq!(SiteSpec::parse(s.to_toml().as_bytes()).expect("again"), s);
        let other = "cd".repeat(32);
        let bad = spec.replace(&format!("live = \"{id}\""), &format!("live = \"{other}\""));
        assert!(SiteSpec::parse(bad.as_bytes())
            .expect_err("not listed")
            .contains("must be listed"));
        let bad = spec.replace("docs.example.com", "Docs");
        assert!(SiteSpec::parse(bad.as_bytes())
            .expect_err("host")
            .contains("host"));
        assert!(SiteSpec::parse(b"live = 1").is_err());
    }

    #[test]
    fn manifests_are_checked() {
        let h = "00".repeat(32);
        let good = format!(
            r#"{{"format":1,"files":{{"/index.html":{{"hash":"{h}","size":3,"type":"text/html"}}}}}}"#
        );
        let m = Manifest::parse(good.as_bytes()).expect("parses");
        assert_eq!(Manifest::parse(&m.to_bytes()).expect("round trip"), m);
        for (bad, why) in [
            (good.replace("/index.html", "/../x"), "not a valid path"),
            (good.replace(&h, "zz"), "not a BLAKE3"),
            (good.replace("\"format\":1", "\"format\":2"), "format 2"),
            (
                good.replace("}}}", "}},\"redirects\":\"/a /b 999\"}"),
                "status 999",
            ),
            ("nope".to_string(), "not valid"),
        ] {
            let e = Manifest::parse(bad.as_bytes()).expect_err(&bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
