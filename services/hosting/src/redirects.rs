//! `_redirects`, the Netlify / Cloudflare Pages file: one rule per line,
//! `FROM [QUERY=:x ...] TO [STATUS[!]]`, first match wins.
//!
//! - FROM is a path pattern: literal segments, `:placeholder` segments, a
//!   trailing `*` (bound to `:splat`). Query conditions (`id=:id`, `a=b`)
//!   after it must all be present.
//! - TO is a site path (`/blog/:slug`), an absolute `http(s)://` URL, or
//!   `fn:NAME` (the edge function NAME answers the request, with its path).
//! - STATUS: 301 (the default), 302, 303, 307, 308 redirect; 200 rewrites
//!   (the visitor's URL stays); 404 and 410 answer with TO's content under
//!   that status. `!` forces the rule even where a file exists at FROM
//!   (without it a file "shadows" the rule).
//!
//! What is refused, with the line number, at deploy time: unknown statuses,
//! placeholders in TO that FROM does not bind, Netlify's conditions
//! (`Country=`, `Language=`, `Role=`, `Cookie=`) and host-matching rules,
//! which this node does not evaluate, and files past [`MAX_RULES`] rules or
//! lines past [`MAX_LINE`] bytes.

use crate::pattern::{Captures, Pattern};

/// Most rules in one `_redirects` file (Cloudflare Pages' limit).
pub const MAX_RULES: usize = 2_000;
/// Longest line.
pub const MAX_LINE: usize = 1_000;

/// Where a rule sends the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A path of the site, maybe with `:names` to fill and a query.
    Path(String),
    /// Another origin (a 3xx Location, or proxied for a 200).
    Url(String),
    /// An edge function by name (`fn:render`).
    Function(String),
}

impl Target {
    fn text(&self) -> &str {
        match self {
            Target::Path(s) | Target::Url(s) | Target::Function(s) => s,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub from: Pattern,
    /// `(key, value)`: value `:name` binds, anything else must be equal.
    pub query: Vec<(String, String)>,
    pub to: Target,
    pub status: u16,
    pub force: bool,
    /// 1-based line in the file.
    pub line: usize,
    /// TO needs no substitution (borrowed as is at request time).
    pub static_target: bool,
}

/// A rule that matched, with what it bound.
pub struct Matched<'r> {
    pub rule: &'r Rule,
    pub caps: Captures,
}

const STATUSES: [u16; 8] = [200, 301, 302, 303, 307, 308, 404, 410];
const CONDITIONS: [&str; 4] = ["country", "language", "role", "cookie"];

/// Parses a whole `_redirects` file; Err names the line and what is wrong.
pub fn parse(text: &str) -> Result<Vec<Rule>, String> {
    let mut rules = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        if raw.len() > MAX_LINE {
            return Err(format!("_redirects line {n}: longer than {MAX_LINE} bytes"));
        }
        let line = raw.split_once('#').map_or(raw, |(l, _)| l).trim();
        if line.is_empty() {
            continue;
        }
        let rule = parse_line(line, n).map_err(|e| format!("_redirects line {n}: {e}"))?;
        rules.push(rule);
        if rules.len() > MAX_RULES {
            return Err(format!("_redirects: more than {MAX_RULES} rules"));
        }
    }
    Ok(rules)
}

fn parse_line(line: &str, n: usize) -> Result<Rule, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let from = fields[0];
    if from.starts_with("http://") || from.starts_with("https://") || !from.starts_with('/') {
        return Err(format!(
            "{from:?}: a rule matches a path (/...); rules matching a host are not supported (give the site's hosts in its spec)"
        ));
    }
    let pattern = Pattern::parse(from)?;
    let mut rest = &fields[1..];
    let mut query = Vec::new();
    while let Some(f) = rest.first() {
        if is_target(f) {
            break;
        }
        let Some((k, v)) = f.split_once('=') else {
            return Err(format!("{f:?}: expected a target (/path, https://..., fn:name) or a query condition key=value"));
        };
        if k.is_empty() {
            return Err(format!("{f:?}: a query condition needs a key"));
        }
        query.push((k.to_string(), v.to_string()));
        rest = &rest[1..];
    }
    let Some((to, after)) = rest.split_first() else {
        return Err("no target: FROM TO [STATUS]".into());
    };
    let target = if let Some(name) = to.strip_prefix("fn:") {
        if name.is_empty() {
            return Err("fn: needs a function's name".into());
        }
        Target::Function(name.to_string())
    } else if to.starts_with('/') {
        Target::Path(to.to_string())
    } else {
        if url::Url::parse(to).is_err() {
            return Err(format!("{to:?} is not a URL"));
        }
        Target::Url(to.to_string())
    };
    let (status, force) = match after.first() {
        None => (301, false),
        Some(s) => {
            let (code, force) = match s.strip_suffix('!') {
                Some(c) => (c, true),
                None => (*s, false),
            };
            let code: u16 = code
                .parse()
                .map_err(|_| format!("{s:?}: expected a status such as 301 or 200!"))?;
            if !STATUSES.contains(&code) {
                return Err(format!(
                    "status {code}: use 200, 301, 302, 303, 307, 308, 404 or 410"
                ));
            }
            (code, force)
        }
    };
    if let Some(extra) = after.get(1) {
        let key = extra.split('=').next().unwrap_or("").to_ascii_lowercase();
        if CONDITIONS.contains(&key.as_str()) {
            return Err(format!(
                "{extra:?}: conditions ({}) are not supported",
                "Country=, Language=, Role=, Cookie="
            ));
        }
        return Err(format!("{extra:?}: unexpected after the status"));
    }
    if matches!(target, Target::Function(_)) && status != 200 {
        return Err("a function target answers the request: its status must be 200".into());
    }
    if matches!(target, Target::Url(_)) && matches!(status, 404 | 410) {
        return Err(format!(
            "status {status} needs a path of the site as its target"
        ));
    }
    // Every :name in TO must be bound by FROM or a query condition.
    let text = target.text();
    let mut bound: Vec<&str> = pattern.names().collect();
    bound.extend(query.iter().filter_map(|(_, v)| v.strip_prefix(':')));
    if pattern.has_splat() {
        bound.push("splat");
    }
    let mut static_target = true;
    for name in names_in(text) {
        static_target = false;
        if !bound.contains(&name) {
            return Err(format!(
                "{text:?} uses :{name}, which {from:?} does not bind"
            ));
        }
    }
    Ok(Rule {
        from: pattern,
        query,
        to: target,
        status,
        force,
        line: n,
        static_target,
    })
}

fn is_target(f: &str) -> bool {
    f.starts_with('/')
        || f.starts_with("http://")
        || f.starts_with("https://")
        || f.starts_with("fn:")
}

/// The `:name`s a target refers to (a `:` followed by a letter, after a
/// `/`, `-`, `.`, `=` or at a segment start; `https:` is not one).
fn names_in(text: &str) -> impl Iterator<Item = &str> {
    let bytes = text.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < bytes.len() {
            if bytes[i] == b':' && i + 1 < bytes.len() && bytes[i + 1].is_ascii_alphabetic() {
                let start = i + 1;
                let mut end = start;
                while end < bytes.len()
                    && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_')
                {
                    end += 1;
                }
                // `https://`: a scheme's colon is followed by '/', so it is
                // never taken; a port (`:8080`) starts with a digit.
                i = end;
                return Some(&text[start..end]);
            }
            i += 1;
        }
        None
    })
}

/// The value of query parameter `key` in `query` (no decoding).
fn query_value<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

impl Rule {
    /// Whether the rule matches `path` and `query`.
    pub fn matches(&self, path: &str, query: &str) -> Option<Captures> {
        let caps = self.from.matches(path)?;
        for (k, v) in &self.query {
            let got = query_value(query, k)?;
            if !v.starts_with(':') && got != v {
                return None;
            }
        }
        Some(caps)
    }

    /// TO with every `:name` filled from the match.
    pub fn target(&self, path: &str, query: &str, caps: &Captures) -> String {
        let text = self.to.text();
        let mut out = String::with_capacity(text.len() + path.len());
        let mut last = 0;
        for name in names_in(text) {
            // `name` is a slice of `text`: its colon is just before it.
            let start = name.as_ptr() as usize - text.as_ptr() as usize - 1;
            out.push_str(&text[last..start]);
            let value = self.from.value(name, path, caps).or_else(|| {
                self.query
                    .iter()
                    .find(|(_, v)| v.strip_prefix(':') == Some(name))
                    .and_then(|(k, _)| query_value(query, k))
            });
            out.push_str(value.unwrap_or(""));
            last = start + 1 + name.len();
        }
        out.push_str(&text[last..]);
        out
    }

    pub fn target_text(&self) -> &str {
        self.to.text()
    }
}

/// The first rule that applies to `path`: rules are tried in order; one
/// without `!` is passed over when `file_exists` (the file shadows it).
pub fn first<'r>(
    rules: &'r [Rule],
    path: &str,
    query: &str,
    file_exists: bool,
) -> Option<Matched<'r>> {
    rules.iter().find_map(|rule| {
        if file_exists && !rule.force {
            return None;
        }
        rule.matches(path, query).map(|caps| Matched { rule, caps })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The examples of Netlify's redirect documentation.
    const NETLIFY: &str = "\
# Redirects from what the browser requests to what we serve
/home              /
/blog/my-post.php  /blog/my-post
/news              /blog
/cuties            https://www.petsofnetlify.com
/store id=:id  /blog/:id  301
/articles id=:id tag=:tag /posts/:tag/:id 301
/news/:year/:month/:date/:slug  /blog/:year/:month/:date/:slug
/shop/*  /store/:splat  302
/app/*  /app/index.html  200
/old  /gone.html  404
/forced  /other  301!
/api/*  https://api.example.com/:splat  200
";

    #[test]
    fn netlify_examples_parse() {
        let rules = parse(NETLIFY).expect("parses");
        assert_eq!(rules.len(), 12);
        assert_eq!(rules[0].status, 301);
        assert_eq!(
            rules[3].to,
            Target::Url("https://www.petsofnetlify.com".into())
        );
        assert!(rules[10].force && !rules[9].force);
        assert_eq!(rules[8].status, 200);
        assert!(rules[8].static_target && !rules[7].static_target);
        assert_eq!(rules[6].line, 8);
    }

    #[test]
    fn netlify_examples_match() {
        let rules = parse(NETLIFY).expect("parses");
        let go = |path: &str, query: &str, exists: bool| {
            first(&rules, path, query, exists)
                .map(|m| (m.rule.status, m.rule.target(path, query, &m.caps)))
        };
        assert_eq!(go("/home", "", false), Some((301, "/".into())));
        assert_eq!(go("/home/", "", false), Some((301, "/".into())));
        assert_eq!(go("/store", "id=42", false), Some((301, "/blog/42".into())));
        assert_eq!(go("/store", "other=1", false), None);
        assert_eq!(
            go("/articles", "tag=rust&id=7", false),
            Some((301, "/posts/rust/7".into()))
        );
        assert_eq!(
            go("/news/2024/02/12/hello", "", false),
            Some((301, "/blog/2024/02/12/hello".into()))
        );
        assert_eq!(
            go("/shop/a/b.html", "", false),
            Some((302, "/store/a/b.html".into()))
        );
        assert_eq!(
            go("/app/deep/link", "", false),
            Some((200, "/app/index.html".into()))
        );
        assert_eq!(go("/old", "", false), Some((404, "/gone.html".into())));
        assert_eq!(
            go("/api/v1/users", "", false),
            Some((200, "https://api.example.com/v1/users".into()))
        );
        // First match wins: /news is the plain rule, not the dated one.
        assert_eq!(go("/news", "", false), Some((301, "/blog".into())));
        // A file shadows a rule without `!`; a forced one still applies.
        assert_eq!(go("/home", "", true), None);
        assert_eq!(go("/forced", "", true), Some((301, "/other".into())));
        assert_eq!(go("/nothing", "", false), None);
    }

    #[test]
    fn spa_fallback() {
        let rules = parse("/*    /index.html   200\n").expect("parses");
        let m = first(&rules, "/users/42", "", false).expect("matches");
        assert_eq!((m.rule.status, m.rule.target_text()), (200, "/index.html"));
        assert!(first(&rules, "/app.js", "", true).is_none());
    }

    #[test]
    fn mistakes_are_named_with_their_line() {
        for (text, why) in [
            ("/a /b 418", "status 418"),
            ("/a", "no target"),
            ("/a /b/:slug", "does not bind"),
            ("/a /b 302 Country=us", "conditions"),
            ("/a /b 302 extra", "unexpected"),
            ("https://old.example/* /new", "not supported"),
            ("/a fn:render 301", "must be 200"),
            ("/a https://x.example 404", "path of the site"),
            ("/a notatarget", "expected a target"),
            ("/a/*/b /c", "only end"),
            ("/a /b 30x", "expected a status"),
        ] {
            let e = parse(&format!("# first\n{text}\n")).expect_err(text);
            assert!(e.contains("line 2") && e.contains(why), "{text}: {e}");
        }
        let long = format!("/a /{}", "b".repeat(MAX_LINE));
        assert!(parse(&long).expect_err("long").contains("longer than"));
        let many = "/a /b\n".repeat(MAX_RULES + 1);
        assert!(parse(&many).expect_err("many").contains("more than"));
    }
}
