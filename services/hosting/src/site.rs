//! A version compiled for serving: every path a request may name resolved
//! ahead of time to its file (directory indexes, clean URLs), the reply for
//! each file and encoding built once, the rules parsed. Resolving a request
//! is then a hash lookup and, where the site has rules, a walk over them;
//! the common answer borrows what was built (reference counts, no
//! allocation).

use std::collections::HashMap;
use std::sync::Arc;

use service_api::{BlobReply, Status};

use crate::{headers, redirects, Manifest};

const REVALIDATE: &str = "public, max-age=0, must-revalidate";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// How the client takes the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Brotli,
    Gzip,
}

/// A file of a version, with its replies.
#[derive(Debug)]
pub struct File {
    pub path: Box<str>,
    identity: BlobReply,
    br: Option<BlobReply>,
    gzip: Option<BlobReply>,
    sizes: [u64; 3],
    /// The `_headers` rules its own path matches.
    header_set: u128,
}

impl File {
    /// The representation for `enc` (identity when there is no such
    /// variant) and its size.
    pub fn pick(&self, enc: Encoding) -> (&BlobReply, u64) {
        match (enc, &self.br, &self.gzip) {
            (Encoding::Brotli, Some(b), _) => (b, self.sizes[1]),
            (Encoding::Gzip, _, Some(g)) => (g, self.sizes[2]),
            _ => (&self.identity, self.sizes[0]),
        }
    }

    pub fn has_variants(&self) -> bool {
        self.br.is_some() || self.gzip.is_some()
    }
}

#[derive(Debug, Clone, Copy)]
enum Route {
    /// Served by this file; the `_headers` rules the route's own path matches.
    File(usize, u128),
    /// A folder asked for without its slash: 301 to the path with it.
    Slash,
}

/// A compiled version.
#[derive(Debug)]
pub struct Version {
    pub id: [u8; 32],
    files: Vec<File>,
    routes: HashMap<Box<str>, Route>,
    redirects: Vec<redirects::Rule>,
    header_rules: Vec<headers::Rule>,
    /// Any rule with `!` (else a path with a file never looks at rules).
    forced: bool,
    /// `(folder with its slash, file)`, longest folder first.
    not_found: Vec<(Box<str>, usize)>,
    pub blobs: Vec<[u8; 32]>,
}

/// What a request comes to.
pub enum Outcome<'v> {
    /// This file, under this status (200, or 404/410 from a rule or a
    /// `404.html`); `reply` already carries the headers for the request.
    File {
        file: &'v File,
        status: u16,
        /// The request path matched other `_headers` rules than the file's
        /// own path: the headers to send instead.
        headers: Option<Vec<(String, String)>>,
    },
    Redirect {
        status: u16,
        location: String,
    },
    /// A rule rewrites to another origin (proxied, off the core).
    Proxy(String),
    /// A rule hands the request to an edge function.
    Function(String),
    /// Nothing here and no `404.html`.
    NotFound,
}

fn reply(
    content_type: &Arc<str>,
    hash: [u8; 32],
    cache_control: &Arc<str>,
    headers: &[(String, String)],
    encoding: Option<&str>,
    vary: bool,
) -> BlobReply {
    let mut h: Vec<(String, String)> = headers.to_vec();
    if let Some(e) = encoding {
        h.push(("content-encoding".into(), e.into()));
    }
    if vary {
        h.push(("vary".into(), "accept-encoding".into()));
    }
    BlobReply {
        hash,
        content_type: content_type.clone(),
        cache_control: Some(cache_control.clone()),
        headers: (!h.is_empty()).then(|| h.into()),
        stored_at: None,
        status: None,
    }
}

impl Version {
    pub fn compile(id: [u8; 32], m: &Manifest) -> Result<Version, String> {
        let redirects = redirects::parse(&m.redirects)?;
        let header_rules = headers::parse(&m.headers)?;
        let mut files = Vec::with_capacity(m.files.len());
        let mut routes: HashMap<Box<str>, Route> = HashMap::with_capacity(m.files.len() * 2);
        let mut types: HashMap<&str, Arc<str>> = HashMap::new();
        let revalidate: Arc<str> = REVALIDATE.into();
        let immutable: Arc<str> = IMMUTABLE.into();
        let mut blobs = Vec::new();
        for (path, f) in &m.files {
            let ty = types
                .entry(f.content_type.as_str())
                .or_insert_with(|| f.content_type.as_str().into())
                .clone();
            let mut hs = headers::for_path(&header_rules, path);
            let cache = match hs.iter().position(|(n, _)| n == "cache-control") {
                Some(i) => Arc::from(hs.remove(i).1),
                None if crate::has_content_hash(path) && !crate::is_html(&f.content_type) => {
                    immutable.clone()
                }
                None => revalidate.clone(),
            };
            let h = |s: &str| crate::parse_hex32(s).ok_or_else(|| format!("{path}: bad hash"));
            let vary = f.br.is_some() || f.gzip.is_some();
            let identity = reply(&ty, h(&f.hash)?, &cache, &hs, None, vary);
            let br = match &f.br {
                Some(s) => Some(reply(&ty, h(&s.hash)?, &cache, &hs, Some("br"), true)),
                None => None,
            };
            let gzip = match &f.gzip {
                Some(s) => Some(reply(&ty, h(&s.hash)?, &cache, &hs, Some("gzip"), true)),
                None => None,
            };
            blobs.push(identity.hash);
            blobs.extend(br.iter().chain(gzip.iter()).map(|b| b.hash));
            let set = headers::matching(&header_rules, path);
            routes.insert(path.as_str().into(), Route::File(files.len(), set));
            files.push(File {
                path: path.as_str().into(),
                identity,
                br,
                gzip,
                sizes: [
                    f.size,
                    f.br.as_ref().map_or(0, |s| s.size),
                    f.gzip.as_ref().map_or(0, |s| s.size),
                ],
                header_set: set,
            });
        }
        // Clean URLs, then folder indexes; a real file always wins.
        let mut extra: Vec<(String, Route)> = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let p = &*f.path;
            if let Some(dir) = p.strip_suffix("index.html").filter(|d| d.ends_with('/')) {
                extra.push((dir.to_string(), Route::File(i, 0)));
                if dir.len() > 1 {
                    extra.push((dir[..dir.len() - 1].to_string(), Route::Slash));
                }
            } else if let Some(stem) = p.strip_suffix(".html") {
                extra.push((stem.to_string(), Route::File(i, 0)));
                extra.push((format!("{stem}/"), Route::File(i, 0)));
            }
        }
        // Clean URLs before slash redirects for the same path.
        extra.sort_by_key(|(_, r)| matches!(r, Route::Slash));
        for (path, route) in extra {
            let route = match route {
                Route::File(i, _) => Route::File(i, headers::matching(&header_rules, &path)),
                r => r,
            };
            routes.entry(path.into()).or_insert(route);
        }
        let mut not_found: Vec<(Box<str>, usize)> = files
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                f.path
                    .strip_suffix("404.html")
                    .filter(|d| d.ends_with('/'))
                    .map(|d| (d.into(), i))
            })
            .collect();
        not_found.sort_by_key(|(d, _): &(Box<str>, usize)| std::cmp::Reverse(d.len()));
        blobs.sort_unstable();
        blobs.dedup();
        Ok(Version {
            id,
            forced: redirects.iter().any(|r| r.force),
            files,
            routes,
            redirects,
            header_rules,
            not_found,
            blobs,
        })
    }

    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// The file this path names, without rules.
    fn lookup(&self, path: &str) -> Option<Route> {
        self.routes.get(path).copied()
    }

    fn file_outcome(&self, i: usize, set: u128, path: &str, status: u16) -> Outcome<'_> {
        let file = &self.files[i];
        let headers = (set != file.header_set).then(|| headers::for_path(&self.header_rules, path));
        Outcome::File {
            file,
            status,
            headers,
        }
    }

    /// Resolves a request's decoded path and raw query.
    pub fn resolve(&self, path: &str, query: &str) -> Outcome<'_> {
        let found = self.lookup(path);
        let exists = matches!(found, Some(Route::File(..)));
        if !self.redirects.is_empty() && (!exists || self.forced) {
            if let Some(m) = redirects::first(&self.redirects, path, query, exists) {
                return self.apply(m, path, query);
            }
        }
        match found {
            Some(Route::File(i, set)) => self.file_outcome(i, set, path, 200),
            Some(Route::Slash) => Outcome::Redirect {
                status: 301,
                location: with_query(format!("{path}/"), query),
            },
            None => self.not_found(path, 404),
        }
    }

    fn apply(&self, m: redirects::Matched<'_>, path: &str, query: &str) -> Outcome<'_> {
        let rule = m.rule;
        let target: std::borrow::Cow<'_, str> = if rule.static_target {
            rule.target_text().into()
        } else {
            rule.target(path, query, &m.caps).into()
        };
        match (&rule.to, rule.status) {
            (redirects::Target::Function(name), _) => Outcome::Function(name.clone()),
            (redirects::Target::Url(_), 200) => {
                Outcome::Proxy(with_query(target.into_owned(), query))
            }
            (_, status @ (301 | 302 | 303 | 307 | 308)) => Outcome::Redirect {
                status,
                location: if target.contains('?') {
                    target.into_owned()
                } else {
                    with_query(target.into_owned(), query)
                },
            },
            (redirects::Target::Path(_), status) => {
                let target_path = target.split('?').next().unwrap_or("/");
                match self.lookup(target_path) {
                    Some(Route::File(i, _)) => {
                        // Headers by the URL the visitor asked for.
                        let set = headers::matching(&self.header_rules, path);
                        self.file_outcome(i, set, path, status)
                    }
                    _ => self.not_found(path, 404),
                }
            }
            (redirects::Target::Url(_), _) => Outcome::NotFound,
        }
    }

    /// The nearest `404.html` above `path`, under `status`.
    fn not_found(&self, path: &str, status: u16) -> Outcome<'_> {
        match self
            .not_found
            .iter()
            .find(|(dir, _)| path.starts_with(&**dir))
        {
            Some((_, i)) => {
                let set = headers::matching(&self.header_rules, path);
                self.file_outcome(*i, set, path, status)
            }
            None => Outcome::NotFound,
        }
    }
}

fn with_query(mut location: String, query: &str) -> String {
    if !query.is_empty() {
        location.push('?');
        location.push_str(query);
    }
    location
}

/// The reply for a resolved file: the prebuilt one, or one with the
/// request's own headers and status.
pub fn blob_reply(
    file: &File,
    enc: Encoding,
    status: u16,
    headers: Option<Vec<(String, String)>>,
) -> (BlobReply, u64) {
    let (base, size) = file.pick(enc);
    let mut r = base.clone();
    if let Some(mut hs) = headers {
        if let Some(i) = hs.iter().position(|(n, _)| n == "cache-control") {
            r.cache_control = Some(hs.remove(i).1.into());
        }
        if let Some(e) = r
            .headers
            .as_deref()
            .and_then(|h| h.iter().find(|(n, _)| n == "content-encoding"))
        {
            hs.push(e.clone());
        }
        if file.has_variants() {
            hs.push(("vary".into(), "accept-encoding".into()));
        }
        r.headers = (!hs.is_empty()).then(|| hs.into());
    }
    r.status = match status {
        404 => Some(Status::NotFound),
        410 => Some(Status::Gone),
        _ => None,
    };
    (r, size)
}

/// The best encoding `Accept-Encoding` allows among Brotli, gzip and none
/// (RFC 9110 §12.5.3: a q of 0 refuses; no header: identity). No allocation.
pub fn choose_encoding(accept: Option<&[u8]>) -> Encoding {
    let Some(accept) = accept else {
        return Encoding::Identity;
    };
    let mut br = false;
    let mut gzip = false;
    for item in accept.split(|&b| b == b',') {
        let mut parts = item.split(|&b| b == b';');
        let name = trim(parts.next().unwrap_or(b""));
        let refused = parts.any(|p| {
            let p = trim(p);
            (p.starts_with(b"q=") || p.starts_with(b"Q="))
                && p[2..].iter().all(|&c| c == b'0' || c == b'.')
        });
        if refused {
            continue;
        }
        if name.eq_ignore_ascii_case(b"br") {
            br = true;
        } else if name.eq_ignore_ascii_case(b"gzip") || name.eq_ignore_ascii_case(b"x-gzip") {
            gzip = true;
        } else if name == b"*" {
            br = true;
            gzip = true;
        }
    }
    if br {
        Encoding::Brotli
    } else if gzip {
        Encoding::Gzip
    } else {
        Encoding::Identity
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FileEntry, Stored};

    fn entry(n: u8, ty: &str, variants: bool) -> FileEntry {
        let h = |b: u8| crate::hex(&[b; 32]);
        FileEntry {
            hash: h(n),
            size: 100,
            content_type: ty.into(),
            br: variants.then(|| Stored {
                hash: h(n + 100),
                size: 40,
            }),
            gzip: variants.then(|| Stored {
                hash: h(n + 150),
                size: 50,
            }),
        }
    }

    fn site(redirects: &str, headers: &str) -> Version {
        let mut files = std::collections::BTreeMap::new();
        files.insert("/index.html".to_string(), entry(1, "text/html", true));
        files.insert("/about.html".to_string(), entry(2, "text/html", false));
        files.insert("/docs/index.html".to_string(), entry(3, "text/html", false));
        files.insert("/docs/404.html".to_string(), entry(4, "text/html", false));
        files.insert("/404.html".to_string(), entry(5, "text/html", false));
        files.insert(
            "/assets/app.3f2a9c1b.js".to_string(),
            entry(6, "application/javascript", true),
        );
        files.insert("/style.css".to_string(), entry(7, "text/css", false));
        let m = Manifest {
            format: 1,
            files,
            redirects: redirects.into(),
            headers: headers.into(),
        };
        Version::compile([0; 32], &m).expect("compiles")
    }

    fn served(o: &Outcome<'_>) -> (String, u16) {
        match o {
            Outcome::File { file, status, .. } => (file.path.to_string(), *status),
            Outcome::Redirect { status, location } => (format!("-> {location}"), *status),
            Outcome::Proxy(u) => (format!("proxy {u}"), 200),
            Outcome::Function(f) => (format!("fn {f}"), 200),
            Outcome::NotFound => ("none".into(), 404),
        }
    }

    #[test]
    fn static_resolution() {
        let v = site("", "");
        for (path, want) in [
            ("/", ("/index.html", 200)),
            ("/index.html", ("/index.html", 200)),
            ("/about", ("/about.html", 200)),
            ("/about/", ("/about.html", 200)),
            ("/docs/", ("/docs/index.html", 200)),
            ("/docs/missing", ("/docs/404.html", 404)),
            ("/missing", ("/404.html", 404)),
        ] {
            assert_eq!(
                served(&v.resolve(path, "")),
                (want.0.to_string(), want.1),
                "{path}"
            );
        }
        assert_eq!(
            served(&v.resolve("/docs", "a=1")),
            ("-> /docs/?a=1".into(), 301)
        );
    }

    #[test]
    fn rules_and_shadowing() {
        let v = site(
            "/old/* /new/:splat 302\n/about /elsewhere 301\n/style.css /x.css 301!\n/gone /about.html 410\n/api/* https://api.example/:splat 200\n/*  /index.html  200\n",
            "",
        );
        assert_eq!(
            served(&v.resolve("/old/a/b", "q=1")),
            ("-> /new/a/b?q=1".into(), 302)
        );
        // A file shadows a rule without `!`, not one with it.
        assert_eq!(
            served(&v.resolve("/about", "")),
            ("/about.html".into(), 200)
        );
        assert_eq!(
            served(&v.resolve("/style.css", "")),
            ("-> /x.css".into(), 301)
        );
        assert_eq!(served(&v.resolve("/gone", "")), ("/about.html".into(), 410));
        assert_eq!(
            served(&v.resolve("/api/users", "id=1")),
            ("proxy https://api.example/users?id=1".into(), 200)
        );
        // The SPA fallback: a deep link gets the app's page.
        assert_eq!(
            served(&v.resolve("/users/42", "")),
            ("/index.html".into(), 200)
        );
    }

    #[test]
    fn caching_defaults_and_headers_file() {
        let v = site("/*  /index.html  200\n", "/*\n  X-Frame-Options: DENY\n/assets/*\n  X-Asset: yes\n/style.css\n  Cache-Control: public, max-age=60\n");
        let get = |path: &str, enc| match v.resolve(path, "") {
            Outcome::File {
                file,
                status,
                headers,
            } => blob_reply(file, enc, status, headers).0,
            _ => panic!("{path}: not a file"),
        };
        let html = get("/", Encoding::Identity);
        assert_eq!(html.cache_control.as_deref(), Some(REVALIDATE));
        let js = get("/assets/app.3f2a9c1b.js", Encoding::Brotli);
        assert_eq!(js.cache_control.as_deref(), Some(IMMUTABLE));
        let hs = js.headers.as_deref().expect("headers");
        for want in [
            ("x-asset", "yes"),
            ("x-frame-options", "DENY"),
            ("content-encoding", "br"),
            ("vary", "accept-encoding"),
        ] {
            assert!(
                hs.iter().any(|(n, v)| n == want.0 && v == want.1),
                "{want:?} in {hs:?}"
            );
        }
        assert_eq!(js.hash, [106; 32]);
        assert_eq!(
            get("/style.css", Encoding::Brotli).cache_control.as_deref(),
            Some("public, max-age=60")
        );
        // A rewritten deep link takes the headers of the URL asked for.
        let deep = get("/assets/deep", Encoding::Identity);
        assert!(deep
            .headers
            .as_deref()
            .expect("h")
            .iter()
            .any(|(n, _)| n == "x-asset"));
        assert!(get("/missing-page", Encoding::Identity).status.is_none());
    }

    #[test]
    fn accept_encoding() {
        use Encoding::*;
        for (h, want) in [
            (None, Identity),
            (Some(&b"gzip, deflate, br, zstd"[..]), Brotli),
            (Some(b"gzip"), Gzip),
            (Some(b"br;q=0, gzip;q=0.5"), Gzip),
            (Some(b"identity"), Identity),
            (Some(b"*"), Brotli),
            (Some(b"BR"), Brotli),
            (Some(b"br;q=0.0"), Identity),
        ] {
            assert_eq!(choose_encoding(h), want, "{h:?}");
        }
    }
}
