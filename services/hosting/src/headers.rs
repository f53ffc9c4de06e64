//! `_headers`, the Netlify / Cloudflare Pages file: a path glob on a line of
//! its own, then indented `Name: value` lines that apply to every path it
//! matches.
//!
//! ```text
//! /*
//!   X-Frame-Options: DENY
//! /assets/*
//!   Cache-Control: public, max-age=31536000, immutable
//! /secret.html
//!   ! X-Frame-Options
//! ```
//!
//! Every matching rule applies, in file order; one header set by several is
//! sent once with the values joined by `, ` (as Netlify does); `! Name`
//! (Cloudflare's form) removes a header an earlier rule set. `Cache-Control`
//! here replaces the site's default for the paths it matches. Headers that
//! describe the body or the connection (`Content-Length`, `Content-Encoding`,
//! `Transfer-Encoding`, `Connection`, `ETag`, ...) are the node's and are
//! refused at deploy time, as are files past [`MAX_RULES`] rules.

use crate::pattern::Glob;

/// Most rules (path lines) in one `_headers` file.
pub const MAX_RULES: usize = 200;
/// Most header lines under one path.
pub const MAX_HEADERS_PER_RULE: usize = 50;
/// Longest line.
pub const MAX_LINE: usize = 2_000;

/// Headers the node sets itself.
const RESERVED: [&str; 11] = [
    "content-length",
    "content-encoding",
    "content-range",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "etag",
    "age",
    "date",
    "accept-ranges",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Set (joined with other rules' values).
    Set(String, String),
    /// `! Name`: drop what earlier rules set.
    Remove(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub path: Glob,
    pub actions: Vec<Action>,
    pub line: usize,
}

pub fn parse(text: &str) -> Result<Vec<Rule>, String> {
    let mut rules: Vec<Rule> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        if raw.len() > MAX_LINE {
            return Err(format!("_headers line {n}: longer than {MAX_LINE} bytes"));
        }
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indented = raw.starts_with([' ', '\t']);
        if !indented {
            if !trimmed.starts_with('/') {
                return Err(format!(
                    "_headers line {n}: {trimmed:?}: a path (/...) starts a rule; its headers are indented below it"
                ));
            }
            let path = Glob::parse(trimmed).map_err(|e| format!("_headers line {n}: {e}"))?;
            rules.push(Rule {
                path,
                actions: Vec::new(),
                line: n,
            });
            if rules.len() > MAX_RULES {
                return Err(format!("_headers: more than {MAX_RULES} rules"));
            }
            continue;
        }
        let Some(rule) = rules.last_mut() else {
            return Err(format!("_headers line {n}: a header before any path"));
        };
        let action = if let Some(name) = trimmed.strip_prefix('!') {
            let name = name.trim();
            check_name(name).map_err(|e| format!("_headers line {n}: {e}"))?;
            Action::Remove(name.to_ascii_lowercase())
        } else {
            let Some((name, value)) = trimmed.split_once(':') else {
                return Err(format!(
                    "_headers line {n}: {trimmed:?}: expected Name: value"
                ));
            };
            let (name, value) = (name.trim(), value.trim());
            check_name(name).map_err(|e| format!("_headers line {n}: {e}"))?;
            if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
                return Err(format!(
                    "_headers line {n}: {name}: control characters in the value"
                ));
            }
            Action::Set(name.to_ascii_lowercase(), value.to_string())
        };
        rule.actions.push(action);
        if rule.actions.len() > MAX_HEADERS_PER_RULE {
            return Err(format!(
                "_headers line {n}: more than {MAX_HEADERS_PER_RULE} headers under one path"
            ));
        }
    }
    Ok(rules)
}

fn check_name(name: &str) -> Result<(), String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(format!("{name:?} is not a header name"));
    }
    if RESERVED.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "{name} is set by the node and cannot be changed here"
        ));
    }
    Ok(())
}

/// The headers for `path`: every matching rule in order, values of one name
/// joined, names in lower case, in the order first set.
pub fn for_path(rules: &[Rule], path: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for rule in rules.iter().filter(|r| r.path.matches(path)) {
        for action in &rule.actions {
            match action {
                Action::Set(name, value) => match out.iter_mut().find(|(n, _)| n == name) {
                    Some((_, v)) => {
                        v.push_str(", ");
                        v.push_str(value);
                    }
                    None => out.push((name.clone(), value.clone())),
                },
                Action::Remove(name) => out.retain(|(n, _)| n != name),
            }
        }
    }
    out
}

/// Which rules match `path`, as a bit set over the first 128 rules (two
/// paths with the same set get the same headers).
pub fn matching(rules: &[Rule], path: &str) -> u128 {
    rules
        .iter()
        .take(128)
        .enumerate()
        .filter(|(_, r)| r.path.matches(path))
        .fold(0, |set, (i, _)| set | 1 << i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The examples of Netlify's and Cloudflare Pages' headers documentation.
    const DOCS: &str = "\
# a comment
/*
  X-Frame-Options: DENY
  X-XSS-Protection: 1; mode=block
/templates/index.html
  # headers for that path:
  X-Frame-Options: SAMEORIGIN
/templates/index2.html
  ! X-Frame-Options
/assets/*
  Cache-Control: public, max-age=31536000, immutable
/*
  Link: </style.css>; rel=preload; as=style
  Link: </app.js>; rel=preload; as=script
";

    #[test]
    fn documented_examples() {
        let rules = parse(DOCS).expect("parses");
        assert_eq!(rules.len(), 5);
        let h = for_path(&rules, "/templates/index.html");
        assert_eq!(
            h,
            vec![
                ("x-frame-options".into(), "DENY, SAMEORIGIN".into()),
                ("x-xss-protection".into(), "1; mode=block".into()),
                (
                    "link".into(),
                    "</style.css>; rel=preload; as=style, </app.js>; rel=preload; as=script".into()
                ),
            ]
        );
        let h = for_path(&rules, "/templates/index2.html");
        assert!(!h.iter().any(|(n, _)| n == "x-frame-options"), "{h:?}");
        let h = for_path(&rules, "/assets/app.css");
        assert!(h.contains(&(
            "cache-control".into(),
            "public, max-age=31536000, immutable".into()
        )));
        assert_eq!(matching(&rules, "/a.html"), 0b10001);
        assert_eq!(matching(&rules, "/assets/x"), 0b11001);
    }

    #[test]
    fn mistakes_are_named_with_their_line() {
        for (text, why) in [
            ("  X-A: b", "before any path"),
            ("/a\n  nocolon", "expected Name: value"),
            ("/a\n  Content-Length: 3", "set by the node"),
            ("/a\n  Bad Name: 3", "not a header name"),
            ("/a\n  X-A: b\u{1}c", "control characters"),
            ("a.html\n  X-A: b", "a path (/...)"),
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.contains(why) && e.contains("line"), "{text}: {e}");
        }
        let many = "/a\n  X: y\n".repeat(MAX_RULES + 1);
        assert!(parse(&many).expect_err("many").contains("more than"));
    }
}
