//! Mounts: which service answers a request, by host and path.
//!
//! A host mount takes every path of its host (a site is served at `/` of its own
//! host); otherwise the path prefix decides. Claims are checked once, at start:
//! two services may not claim the same host pattern, nor path prefixes that
//! overlap (one a prefix of the other), nor a prefix of the node's own routes.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// What a service claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// Paths that start with this prefix, which starts with `/` (`/ipfs/`).
    Prefix(String),
    /// Requests for this host, port ignored, case-insensitive: exact
    /// (`docs.example.com`) or a wildcard over any subdomain
    /// (`*.sites.localhost` takes `docs.sites.localhost` and
    /// `v2.docs.sites.localhost`, not `sites.localhost`).
    Host(String),
    /// The host names the service's deployments name (a site's custom
    /// domains), which change as it runs: asked of
    /// [`crate::Service::claims_host`] for a host no other host mount takes.
    /// They come before path prefixes, as host mounts do.
    DeployedHosts,
}

impl fmt::Display for Mount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mount::Prefix(p) => write!(f, "path prefix {p}"),
            Mount::Host(h) => write!(f, "host {h}"),
            Mount::DeployedHosts => f.write_str("its deployments' host names"),
        }
    }
}

/// The host names a service's deployments claim ([`Mount::DeployedHosts`]),
/// each naming its deployment: replaced whole by the service when its
/// deployments change, read on the core without locking or allocating
/// (what [`crate::Service::claims_host`] asks).
pub struct HostNames {
    /// Whether there is any: a node without custom hosts pays one load.
    any: AtomicBool,
    map: ArcSwap<HashMap<String, Arc<str>>>,
}

impl Default for HostNames {
    fn default() -> Self {
        HostNames {
            any: AtomicBool::new(false),
            map: ArcSwap::from_pointee(HashMap::new()),
        }
    }
}

impl HostNames {
    /// Replaces them: lower-case host name → deployment.
    pub fn set(&self, map: HashMap<String, Arc<str>>) {
        self.any.store(!map.is_empty(), Ordering::Release);
        self.map.store(Arc::new(map));
    }

    /// The deployment `host` (no port, any case) names.
    pub fn get(&self, host: &[u8]) -> Option<Arc<str>> {
        if !self.any.load(Ordering::Acquire) || host.len() > 253 {
            return None;
        }
        let mut buf = [0u8; 253];
        for (o, c) in buf.iter_mut().zip(host) {
            *o = c.to_ascii_lowercase();
        }
        let lower = std::str::from_utf8(&buf[..host.len()]).ok()?;
        self.map.load().get(lower).cloned()
    }
}

/// A deployment's name as a request names it: a slice of its host or path,
/// or the deployment a [`HostNames`] entry stands for (shared, not copied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeploymentName<'a> {
    Named(&'a str),
    Host(Arc<str>),
}

impl std::ops::Deref for DeploymentName<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            DeploymentName::Named(s) => s,
            DeploymentName::Host(s) => s,
        }
    }
}

impl fmt::Display for DeploymentName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

/// Two claims on one mount, or a claim the node refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountConflict {
    pub mount: Mount,
    /// The service that claimed it first (or "the node" for its own routes).
    pub first: String,
    pub second: String,
    pub why: &'static str,
}

impl fmt::Display for MountConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service {} cannot claim {}: {} ({})",
            self.second, self.mount, self.why, self.first
        )
    }
}

impl std::error::Error for MountConflict {}

/// The claims of every service, looked up per request (no allocation).
#[derive(Debug, Default)]
pub struct MountTable {
    prefixes: Vec<(String, usize)>,
    exact_hosts: Vec<(String, usize)>,
    /// Wildcards as the suffix they match, with its leading dot (`.sites.localhost`).
    wildcard_hosts: Vec<(String, usize)>,
    /// Services that claim [`Mount::DeployedHosts`].
    deployed_hosts: Vec<usize>,
}

impl MountTable {
    /// Builds the table from each service's (name, mounts), in service order;
    /// `reserved` are the node's own path prefixes.
    pub fn new(
        claims: &[(&str, Vec<Mount>)],
        reserved: &[&str],
    ) -> Result<MountTable, MountConflict> {
        let mut table = MountTable::default();
        let mut owner_of_prefix: Vec<(String, String)> = Vec::new();
        let mut owner_of_host: Vec<(String, String)> = Vec::new();
        for (index, (name, mounts)) in claims.iter().enumerate() {
            for mount in mounts {
                let conflict = |first: &str, why| MountConflict {
                    mount: mount.clone(),
                    first: first.to_string(),
                    second: name.to_string(),
                    why,
                };
                match mount {
                    Mount::Prefix(p) => {
                        if !p.starts_with('/') {
                            return Err(conflict("none", "a path prefix starts with /"));
                        }
                        let overlaps = |q: &str| p.starts_with(q) || q.starts_with(p.as_str());
                        if let Some(r) = reserved.iter().find(|r| overlaps(r)) {
                            return Err(conflict(r, "it overlaps a route of the node itself"));
                        }
                        if let Some((_, owner)) = owner_of_prefix.iter().find(|(q, _)| overlaps(q))
                        {
                            return Err(conflict(
                                owner,
                                "another service claims an overlapping prefix",
                            ));
                        }
                        owner_of_prefix.push((p.clone(), name.to_string()));
                        table.prefixes.push((p.clone(), index));
                    }
                    Mount::Host(h) => {
                        let h = h.to_ascii_lowercase();
                        if h.is_empty() || h.contains(['/', ':']) || h[1..].contains('*') {
                            return Err(conflict("none", "a host pattern is a name or *.name"));
                        }
                        if let Some((_, owner)) = owner_of_host.iter().find(|(q, _)| *q == h) {
                            return Err(conflict(owner, "another service claims the same host"));
                        }
                        owner_of_host.push((h.clone(), name.to_string()));
                        match h.strip_prefix('*') {
                            Some(suffix) if suffix.starts_with('.') => {
                                table.wildcard_hosts.push((suffix.to_string(), index))
                            }
                            Some(_) => {
                                return Err(conflict("none", "a wildcard host is *.name"));
                            }
                            None => table.exact_hosts.push((h, index)),
                        }
                    }
                    Mount::DeployedHosts => {
                        if !table.deployed_hosts.contains(&index) {
                            table.deployed_hosts.push(index);
                        }
                    }
                }
            }
        }
        // The most specific wildcard first.
        table
            .wildcard_hosts
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        Ok(table)
    }

    /// Which service answers `host` (a `Host` value, port allowed) and
    /// `path`, no service claiming deployed host names.
    pub fn find(&self, host: Option<&[u8]>, path: &[u8]) -> Option<usize> {
        self.find_with(host, path, &|_, _| false)
    }

    /// As [`MountTable::find`]; `claims(service, host)` answers for the
    /// services that claim [`Mount::DeployedHosts`] (host without its port).
    pub fn find_with(
        &self,
        host: Option<&[u8]>,
        path: &[u8],
        claims: &dyn Fn(usize, &[u8]) -> bool,
    ) -> Option<usize> {
        if let Some(host) = host.map(strip_port) {
            if let Some((_, i)) = self
                .exact_hosts
                .iter()
                .find(|(h, _)| h.as_bytes().eq_ignore_ascii_case(host))
            {
                return Some(*i);
            }
            if let Some((_, i)) = self.wildcard_hosts.iter().find(|(suffix, _)| {
                host.len() > suffix.len()
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
            }) {
                return Some(*i);
            }
            if let Some(i) = self.deployed_hosts.iter().find(|&&i| claims(i, host)) {
                return Some(*i);
            }
        }
        self.prefixes
            .iter()
            .find(|(p, _)| path.starts_with(p.as_bytes()))
            .map(|(_, i)| *i)
    }

    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty()
            && self.exact_hosts.is_empty()
            && self.wildcard_hosts.is_empty()
            && self.deployed_hosts.is_empty()
    }
}

/// `host:port` → `host`; an IPv6 literal keeps its brackets.
pub fn strip_port(host: &[u8]) -> &[u8] {
    if host.starts_with(b"[") {
        return match host.iter().position(|&b| b == b']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(i) => &host[..i],
        None => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_strip_and_deployed_host_names_look_up_in_any_case() {
        assert_eq!(
            strip_port(b"docs.sites.localhost:8080"),
            b"docs.sites.localhost"
        );
        assert_eq!(strip_port(b"docs.example.com"), b"docs.example.com");
        assert_eq!(strip_port(b"[::1]:8080"), b"[::1]");
        let names = HostNames::default();
        assert!(names.get(b"docs.example.com").is_none());
        let site: Arc<str> = "docs".into();
        names.set(HashMap::from([("docs.example.com".to_string(), site)]));
        assert_eq!(names.get(b"Docs.Example.COM").as_deref(), Some("docs"));
        assert!(names.get(b"other.example.com").is_none());
        assert!(names.get(&[b'a'; 300]).is_none());
        names.set(HashMap::new());
        assert!(names.get(b"docs.example.com").is_none());
    }

    const RESERVED: &[&str] = &["/blobs", "/healthz", "/ledger/"];

    fn prefix(p: &str) -> Mount {
        Mount::Prefix(p.into())
    }

    fn host(h: &str) -> Mount {
        Mount::Host(h.into())
    }

    #[test]
    fn finds_by_host_first_then_prefix() {
        let t = MountTable::new(
            &[
                ("ipfs", vec![prefix("/ipfs/"), prefix("/routing/v1/")]),
                ("sites", vec![host("*.sites.localhost"), prefix("/sites/")]),
                ("docs", vec![host("docs.example.com")]),
                ("previews", vec![host("*.preview.sites.localhost")]),
            ],
            RESERVED,
        )
        .expect("no conflict");
        assert_eq!(t.find(None, b"/ipfs/bafy"), Some(0));
        assert_eq!(t.find(Some(b"x"), b"/routing/v1/providers/b"), Some(0));
        assert_eq!(
            t.find(Some(b"docs.sites.localhost:8080"), b"/ipfs/x"),
            Some(1)
        );
        assert_eq!(t.find(Some(b"V2.Docs.SITES.localhost"), b"/"), Some(1));
        assert_eq!(t.find(Some(b"sites.localhost"), b"/"), None);
        assert_eq!(t.find(Some(b"docs.example.com"), b"/a"), Some(2));
        assert_eq!(t.find(Some(b"a.preview.sites.localhost"), b"/"), Some(3));
        assert_eq!(t.find(Some(b"127.0.0.1:8080"), b"/blobs/x"), None);
        assert_eq!(t.find(Some(b"[::1]:8080"), b"/sites/docs/"), Some(1));
    }

    #[test]
    fn refuses_conflicting_claims() {
        let conflict = |claims: &[(&str, Vec<Mount>)]| {
            MountTable::new(claims, RESERVED).expect_err("conflict")
        };
        let c = conflict(&[("a", vec![prefix("/x/")]), ("b", vec![prefix("/x/")])]);
        assert_eq!((c.first.as_str(), c.second.as_str()), ("a", "b"));
        assert!(
            c.to_string()
                .contains("service b cannot claim path prefix /x/"),
            "{c}"
        );
        conflict(&[("a", vec![prefix("/x/")]), ("b", vec![prefix("/x/y/")])]);
        conflict(&[
            ("a", vec![host("*.s.local")]),
            ("b", vec![host("*.S.local")]),
        ]);
        let c = conflict(&[("a", vec![prefix("/blobs/mine")])]);
        assert_eq!(c.first, "/blobs");
        conflict(&[("a", vec![prefix("/")])]);
        conflict(&[("a", vec![prefix("nope")])]);
        conflict(&[("a", vec![host("a*.b")])]);
        conflict(&[("a", vec![host("*b")])]);
        conflict(&[("a", vec![host("h:80")])]);
        // One service may claim several mounts, and different hosts coexist.
        MountTable::new(
            &[
                ("a", vec![host("a.local"), host("*.a.local")]),
                ("b", vec![host("b.local")]),
            ],
            RESERVED,
        )
        .expect("fine");
    }
}
