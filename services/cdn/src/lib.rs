//! Tessera's CDN service: a zone caches one origin at the edge, served at its
//! own host name and at `/cdn/{zone}/`.
//!
//! Two parts: the zone's spec ([`ZoneSpec`]: what a customer writes when they
//! deploy a zone, `tessera deploy cdn --name shop --origin http://...`, and
//! its checks, which every node runs before it records a deployment), and the
//! service ([`Cdn`], see its module for the way of a request).

use serde::{Deserialize, Serialize};

mod admission;
pub mod purge;
mod service;

pub use service::{Cdn, CdnConfig};

/// Longest time past freshness a zone may serve from an origin that sends no
/// caching headers.
pub const MAX_GRACE_SECS: u64 = 7 * 24 * 3600;

/// A CDN zone's spec, TOML or JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneSpec {
    /// Where to fetch from: `http://` or `https://`, a host, optionally a port
    /// and a base path; no query, fragment or credentials. Or `fn:NAME`: the
    /// edge function NAME renders what the zone caches (SSR with the zone's
    /// caching: `s-maxage`, `stale-while-revalidate`, collapsed misses,
    /// purges by path or tag), asked on the node itself.
    pub origin: String,
    /// More host names the zone answers for at `/`, as for `{zone}.{suffix}`
    /// (its custom domains).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// PEM certificates of a private CA that signs the origin's certificate.
    #[serde(default)]
    pub origin_ca: Option<String>,
    /// For an origin that sends neither freshness nor validators: how long a
    /// cached answer may be served, in seconds.
    #[serde(default = "default_grace")]
    pub grace_secs: u64,
    /// Bytes of cache this zone may use on each node.
    #[serde(default = "default_budget")]
    pub budget_bytes: u64,
}

fn default_grace() -> u64 {
    60
}

fn default_budget() -> u64 {
    1 << 30
}

impl ZoneSpec {
    /// Parses and checks a spec (JSON if it starts with `{`, else TOML).
    pub fn parse(bytes: &[u8]) -> Result<ZoneSpec, String> {
        let spec: ZoneSpec = service_api::parse_spec(bytes)?;
        spec.check()?;
        Ok(spec)
    }

    /// The function a `fn:NAME` origin names.
    pub fn origin_function(&self) -> Option<&str> {
        self.origin.strip_prefix("fn:")
    }

    fn check(&self) -> Result<(), String> {
        if let Some(name) = self.origin_function() {
            let label = !name.is_empty()
                && name.len() <= 63
                && name
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                && !name.starts_with('-')
                && !name.ends_with('-');
            if !label || self.origin_ca.is_some() {
                return Err(format!(
                    "origin {:?}: fn:NAME names a function (a DNS label), without origin_ca",
                    self.origin
                ));
            }
            return self.check_rest();
        }
        let origin = url::Url::parse(&self.origin)
            .map_err(|e| format!("origin {:?} is not a URL: {e}", self.origin))?;
        if !matches!(origin.scheme(), "http" | "https") {
            return Err(format!(
                "origin {:?}: the scheme must be http or https",
                self.origin
            ));
        }
        if origin.host_str().is_none_or(str::is_empty) {
            return Err(format!("origin {:?} has no host", self.origin));
        }
        if origin.query().is_some() || origin.fragment().is_some() {
            return Err(format!(
                "origin {:?}: no query or fragment (it is a base URL)",
                self.origin
            ));
        }
        if !origin.username().is_empty() || origin.password().is_some() {
            return Err(format!(
                "origin {:?}: no credentials in the URL",
                self.origin
            ));
        }
        self.check_rest()
    }

    fn check_rest(&self) -> Result<(), String> {
        for host in &self.hosts {
            let ok = !host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                });
            if !ok {
                return Err(format!("hosts: {host:?} is not a lower-case host name"));
            }
        }
        if let Some(ca) = &self.origin_ca {
            if !ca.contains("-----BEGIN CERTIFICATE-----") {
                return Err("origin_ca: expected PEM certificates".into());
            }
        }
        if self.grace_secs > MAX_GRACE_SECS {
            return Err(format!("grace_secs: at most {MAX_GRACE_SECS} (a week)"));
        }
        if self.budget_bytes == 0 {
            return Err("budget_bytes: must be more than 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_json_specs() {
        let t = ZoneSpec::parse(b"origin = \"https://origin.example\"\ngrace_secs = 30\n")
            .expect("toml");
        assert_eq!(t.origin, "https://origin.example");
        assert_eq!((t.grace_secs, t.budget_bytes), (30, 1 << 30));
        let j =
            ZoneSpec::parse(br#"{"origin":"http://127.0.0.1:9000/base","hosts":["shop.example"]}"#)
                .expect("json");
        assert_eq!(j.hosts, ["shop.example"]);
    }

    /// The random-input stand-in for the `zone_spec` fuzz target: mutated
    /// specs are accepted or refused with a message, never a panic.
    #[test]
    fn random_specs_never_panic() {
        let seeds: [&[u8]; 2] = [
            b"origin = \"https://o.example/base\"\nhosts = [\"a.example\"]\ngrace_secs = 5\n",
            br#"{"origin":"http://127.0.0.1:9/","budget_bytes":10,"origin_ca":"-----BEGIN CERTIFICATE-----"}"#,
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut s = seeds[(next() % 2) as usize].to_vec();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() % s.len() as u64) as usize;
                s[i] = next() as u8;
            }
            s.truncate((next() % (s.len() as u64 + 1)) as usize);
            if let Err(why) = ZoneSpec::parse(&s) {
                assert!(!why.is_empty());
            }
        }
    }

    #[test]
    fn malformed_specs_say_what_is_wrong() {
        for (spec, expect) in [
            (&b"origin = 3"[..], "not valid TOML"),
            (b"{\"origin\": }", "not valid JSON"),
            (b"grace_secs = 1", "missing field `origin`"),
            (b"origin = \"x\"\ncolour = 1", "unknown field `colour`"),
            (b"origin = \"not a url\"", "is not a URL"),
            (b"origin = \"ftp://o.example\"", "http or https"),
            (b"origin = \"https://o.example/?a=1\"", "no query"),
            (b"origin = \"https://u:p@o.example\"", "no credentials"),
            (
                b"origin = \"https://o.example\"\nhosts = [\"Bad Host\"]",
                "not a lower-case host",
            ),
            (b"origin = \"https://o.example\"\norigin_ca = \"x\"", "PEM"),
            (
                b"origin = \"https://o.example\"\ngrace_secs = 99999999",
                "grace_secs",
            ),
            (
                b"origin = \"https://o.example\"\nbudget_bytes = 0",
                "budget_bytes",
            ),
            (b"\xff", "not UTF-8"),
        ] {
            let err = ZoneSpec::parse(spec).expect_err("refused");
            assert!(
                err.contains(expect),
                "{}: {err}",
                String::from_utf8_lossy(spec)
            );
        }
    }
}
