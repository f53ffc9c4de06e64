//! The Trustless Gateway's requests, parsed (sans-IO): what `/ipfs/{cid}[/path]`
//! asks for, by query parameters and `Accept`, with the spec's checks.

use cid::Cid;

use crate::dag::{EntityBytes, Scope};
use crate::parse_cid;

/// The representation asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One block, `application/vnd.ipld.raw`.
    Raw,
    /// A CAR, `application/vnd.ipld.car`.
    Car,
    /// The file itself (or a directory's listing), for browsers and curl.
    Plain,
}

/// A parsed gateway request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    pub cid: Cid,
    /// Path segments after the CID, percent-decoded.
    pub path: Vec<String>,
    pub format: Format,
    pub scope: Scope,
    pub entity_bytes: Option<EntityBytes>,
    /// `car-dups=y`.
    pub dups: bool,
    /// `Cache-Control: only-if-cached`.
    pub only_if_cached: bool,
    /// The path ended with `/`.
    pub trailing_slash: bool,
}

/// Why a request is refused, with the status to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AskError {
    /// 400.
    Bad(String),
    /// 406: a format or CAR parameter the gateway does not produce.
    NotAcceptable(String),
}

fn query_param<'a>(query: &'a [u8], name: &str) -> Option<&'a [u8]> {
    query.split(|&b| b == b'&').find_map(|kv| {
        let (k, v) = match kv.iter().position(|&b| b == b'=') {
            Some(i) => (&kv[..i], &kv[i + 1..]),
            None => (kv, &b""[..]),
        };
        (k == name.as_bytes()).then_some(v)
    })
}

/// The media type the request asks for by `?format=` (which wins) or
/// `Accept`, and the CAR parameters in `Accept`. Fast enough for the core:
/// no allocation.
pub fn wants(query: &[u8], accept: Option<&[u8]>) -> Result<(Format, CarParams), AskError> {
    let mut params = CarParams::default();
    if let Some(f) = query_param(query, "format") {
        return match f {
            b"raw" => Ok((Format::Raw, params)),
            b"car" => Ok((Format::Car, params)),
            b"" => Ok((Format::Plain, params)),
            other => Err(AskError::NotAcceptable(format!(
                "format={} is not served here (raw and car are)",
                String::from_utf8_lossy(other)
            ))),
        };
    }
    let Some(accept) = accept else {
        return Ok((Format::Plain, params));
    };
    // The first of the IPLD media types the list names, in its order.
    for item in accept.split(|&b| b == b',') {
        let mut parts = item.split(|&b| b == b';').map(trim);
        let media = parts.next().unwrap_or(b"");
        let format = match media {
            b"application/vnd.ipld.raw" => Format::Raw,
            b"application/vnd.ipld.car" => Format::Car,
            _ => continue,
        };
        for p in parts {
            let (k, v) = match p.iter().position(|&b| b == b'=') {
                Some(i) => (trim(&p[..i]), trim(&p[i + 1..])),
                None => continue,
            };
            match k {
                b"version" if v != b"1" => {
                    return Err(AskError::NotAcceptable(format!(
                        "CAR version {} (version 1 is served)",
                        String::from_utf8_lossy(v)
                    )))
                }
                b"order" => match v {
                    b"dfs" | b"unk" => {}
                    _ => {
                        return Err(AskError::NotAcceptable(format!(
                            "CAR order {} (dfs and unk are served)",
                            String::from_utf8_lossy(v)
                        )))
                    }
                },
                b"dups" => match v {
                    b"y" => params.dups = Some(true),
                    b"n" => params.dups = Some(false),
                    _ => {
                        return Err(AskError::NotAcceptable(format!(
                            "CAR dups {} (y and n are served)",
                            String::from_utf8_lossy(v)
                        )))
                    }
                },
                _ => {}
            }
        }
        return Ok((format, params));
    }
    Ok((Format::Plain, params))
}

fn trim(b: &[u8]) -> &[u8] {
    let s = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let e = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |i| i + 1);
    &b[s..e]
}

/// CAR parameters from `Accept` (the query's `car-dups` overrides).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CarParams {
    pub dups: Option<bool>,
}

fn decode_segment(s: &[u8]) -> Result<String, AskError> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| AskError::Bad("a bad percent escape in the path".into()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| AskError::Bad("a path segment that is not UTF-8".into()))
}

/// Parses `/ipfs/{cid}[/path]` with its query and headers.
pub fn parse(
    path: &[u8],
    query: &[u8],
    accept: Option<&[u8]>,
    cache_control: Option<&[u8]>,
) -> Result<Ask, AskError> {
    let rest = path
        .strip_prefix(b"/ipfs/")
        .ok_or_else(|| AskError::Bad("not an /ipfs/ path".into()))?;
    let mut segs = rest.split(|&b| b == b'/');
    let cid_text = segs.next().unwrap_or(b"");
    let cid = parse_cid(cid_text).ok_or_else(|| {
        AskError::Bad(format!(
            "{:?} is not a CID",
            String::from_utf8_lossy(&cid_text[..cid_text.len().min(100)])
        ))
    })?;
    let mut path = Vec::new();
    for s in segs {
        if s.is_empty() {
            continue;
        }
        let seg = decode_segment(s)?;
        if seg == "." || seg == ".." {
            return Err(AskError::Bad("a path with . or .. segments".into()));
        }
        path.push(seg);
        if path.len() > crate::dag::MAX_PATH_SEGMENTS {
            return Err(AskError::Bad("a path of too many segments".into()));
        }
    }
    let (format, params) = wants(query, accept)?;
    let scope = match query_param(query, "dag-scope") {
        None => Scope::All,
        Some(s) => std::str::from_utf8(s)
            .ok()
            .and_then(Scope::parse)
            .ok_or_else(|| AskError::Bad("dag-scope is block, entity or all".into()))?,
    };
    let entity_bytes = match query_param(query, "entity-bytes") {
        None => None,
        Some(s) => Some(
            std::str::from_utf8(s)
                .ok()
                .and_then(EntityBytes::parse)
                .ok_or_else(|| {
                    AskError::Bad("entity-bytes is from:to (integers, or * for the end)".into())
                })?,
        ),
    };
    if entity_bytes.is_some() && scope != Scope::Entity {
        return Err(AskError::Bad(
            "entity-bytes goes with dag-scope=entity".into(),
        ));
    }
    let dups = match query_param(query, "car-dups") {
        Some(b"y") => true,
        Some(b"n") => false,
        Some(_) => return Err(AskError::Bad("car-dups is y or n".into())),
        None => params.dups.unwrap_or(false),
    };
    match query_param(query, "car-order") {
        None | Some(b"dfs") | Some(b"unk") => {}
        Some(_) => return Err(AskError::Bad("car-order is dfs or unk".into())),
    }
    if let Some(v) = query_param(query, "car-version") {
        if v != b"1" {
            return Err(AskError::NotAcceptable("CAR version 1 is served".into()));
        }
    }
    let only_if_cached = cache_control.is_some_and(|c| {
        c.split(|&b| b == b',')
            .any(|d| trim(d).eq_ignore_ascii_case(b"only-if-cached"))
    });
    Ok(Ask {
        cid,
        path,
        format,
        scope,
        entity_bytes,
        dups,
        only_if_cached,
        trailing_slash: rest.ends_with(b"/"),
    })
}

/// `Content-Type` of a CAR answer.
pub fn car_content_type(dups: bool) -> String {
    format!(
        "{}; version=1; order=dfs; dups={}",
        crate::car::MEDIA_TYPE,
        if dups { "y" } else { "n" }
    )
}

/// Feeds arbitrary bytes to the parser (fuzz target `gateway`).
pub fn exercise(bytes: &[u8]) {
    let (a, b) = bytes.split_at(bytes.len() / 2);
    let mut path = b"/ipfs/".to_vec();
    path.extend_from_slice(a);
    let _ = parse(&path, b, Some(a), Some(b));
    let _ = wants(b, Some(a));
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "bafkreicysg23kiwv34eg2d7qweipxwosdo2py4ldv42nbauguluen5v6am";

    fn p(path: &str, query: &str, accept: Option<&str>) -> Result<Ask, AskError> {
        parse(
            path.as_bytes(),
            query.as_bytes(),
            accept.map(str::as_bytes),
            None,
        )
    }

    #[test]
    fn formats_come_from_the_query_or_accept() {
        let path = format!("/ipfs/{CID}");
        assert_eq!(
            p(&path, "format=raw", None).expect("ok").format,
            Format::Raw
        );
        assert_eq!(
            p(&path, "", Some("application/vnd.ipld.car"))
                .expect("ok")
                .format,
            Format::Car
        );
        assert_eq!(
            p(&path, "format=car", Some("application/vnd.ipld.raw"))
                .expect("ok")
                .format,
            Format::Car,
            "the query wins"
        );
        assert_eq!(
            p(&path, "", Some("text/html, */*")).expect("ok").format,
            Format::Plain
        );
        assert!(matches!(
            p(&path, "format=tar", None),
            Err(AskError::NotAcceptable(_))
        ));
        let a = p(
            &path,
            "",
            Some("text/html;q=0.9, application/vnd.ipld.car;version=1;order=dfs;dups=y"),
        )
        .expect("ok");
        assert_eq!((a.format, a.dups), (Format::Car, true));
        assert!(matches!(
            p(&path, "", Some("application/vnd.ipld.car;version=2")),
            Err(AskError::NotAcceptable(_))
        ));
        assert!(matches!(
            p(&path, "", Some("application/vnd.ipld.car;order=xyz")),
            Err(AskError::NotAcceptable(_))
        ));
    }

    #[test]
    fn car_parameters_are_checked() {
        let path = format!("/ipfs/{CID}/a%20b/c/");
        let a = p(
            &path,
            "format=car&dag-scope=entity&entity-bytes=-10:*&car-dups=y",
            None,
        )
        .expect("ok");
        assert_eq!(a.path, vec!["a b".to_string(), "c".to_string()]);
        assert!(a.trailing_slash);
        assert_eq!(a.scope, Scope::Entity);
        assert_eq!(
            a.entity_bytes,
            Some(EntityBytes {
                from: -10,
                to: None
            })
        );
        assert!(a.dups);
        for bad in [
            "dag-scope=most",
            "dag-scope=all&entity-bytes=0:10",
            "dag-scope=entity&entity-bytes=10:5",
            "dag-scope=entity&entity-bytes=x:5",
            "car-dups=maybe",
            "car-order=bfs",
        ] {
            assert!(
                matches!(p(&path, bad, None), Err(AskError::Bad(_))),
                "{bad}"
            );
        }
        assert!(p("/ipfs/notacid", "", None).is_err());
        assert!(p(&format!("/ipfs/{CID}/../x"), "", None).is_err());
        assert!(p(&format!("/ipfs/{CID}/%zz"), "", None).is_err());
        let cached = parse(
            format!("/ipfs/{CID}").as_bytes(),
            b"",
            None,
            Some(b"max-age=0, Only-If-Cached"),
        )
        .expect("ok");
        assert!(cached.only_if_cached);
    }

    #[test]
    fn entity_bytes_resolve_against_the_size() {
        let r = |s: &str, size| EntityBytes::parse(s).expect("parses").resolve(size);
        assert_eq!(r("0:*", 100), Some((0, 99)));
        assert_eq!(r("10:20", 100), Some((10, 20)));
        assert_eq!(r("-10:*", 100), Some((90, 99)));
        assert_eq!(r("0:-1", 100), Some((0, 99)));
        assert_eq!(r("-200:*", 100), Some((0, 99)));
        assert_eq!(r("50:1000", 100), Some((50, 99)));
        assert_eq!(r("150:*", 100), None);
        assert_eq!(r("0:*", 0), None);
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = crate::testing::Xorshift(0x1234_5678_9abc_def1);
        for round in 0..5000 {
            let bytes: Vec<u8> = (0..(round % 90))
                .map(|_| b"ab%=&:;,*-0123456789/fomatcrdgsenyq"[(rng.next() % 35) as usize])
                .collect();
            exercise(&bytes);
        }
    }
}
