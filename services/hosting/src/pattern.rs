//! Path patterns shared by `_redirects` and `_headers`: literal segments,
//! `:placeholder` segments and a `*` splat, matched against a request path
//! without allocating (captures are ranges into the path).

/// The most placeholders a pattern may name (a clear error beyond).
pub const MAX_PLACEHOLDERS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// `:name`: one whole segment.
    Placeholder(String),
}

/// A compiled path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    parts: Vec<Part>,
    /// Ends in `/*` (or is `/*`, `*`): the rest of the path, maybe empty.
    splat: bool,
    /// The literal as written, for messages.
    pub source: String,
}

/// What a match bound: placeholder values and the splat, as byte ranges
/// into the matched path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Captures {
    pub values: [(u16, u16); MAX_PLACEHOLDERS],
    pub count: usize,
    pub splat: Option<(u16, u16)>,
}

impl Pattern {
    /// Parses `/news/:year/*`. A `*` is allowed only as the last segment.
    pub fn parse(source: &str) -> Result<Pattern, String> {
        if !source.starts_with('/') {
            return Err(format!("{source:?}: a path must start with /"));
        }
        let mut parts = Vec::new();
        let mut splat = false;
        let segments: Vec<&str> = source[1..].split('/').collect();
        let last = segments.len() - 1;
        for (i, seg) in segments.iter().enumerate() {
            if *seg == "*" {
                if i != last {
                    return Err(format!("{source:?}: * may only end a path"));
                }
                splat = true;
            } else if seg.contains('*') {
                return Err(format!(
                    "{source:?}: * stands for a whole trailing part of the path (/a/*)"
                ));
            } else if let Some(name) = seg.strip_prefix(':') {
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(format!("{source:?}: placeholder {seg:?} needs a name"));
                }
                if name == "splat" {
                    return Err(format!(
                        "{source:?}: :splat is the name of *, not a placeholder"
                    ));
                }
                parts.push(Part::Placeholder(name.to_string()));
            } else {
                parts.push(Part::Literal((*seg).to_string()));
            }
        }
        let n = parts
            .iter()
            .filter(|p| matches!(p, Part::Placeholder(_)))
            .count();
        if n > MAX_PLACEHOLDERS {
            return Err(format!(
                "{source:?}: at most {MAX_PLACEHOLDERS} placeholders"
            ));
        }
        // `/` alone is one empty literal segment; drop a trailing empty one
        // so `/blog/` and `/blog` are the same rule.
        if parts.len() > 1 && parts.last() == Some(&Part::Literal(String::new())) {
            parts.pop();
        }
        Ok(Pattern {
            parts,
            splat,
            source: source.to_string(),
        })
    }

    /// The placeholders' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Placeholder(n) => Some(n.as_str()),
            Part::Literal(_) => None,
        })
    }

    pub fn has_splat(&self) -> bool {
        self.splat
    }

    /// Whether it matches nothing but itself (no placeholder, no splat).
    pub fn is_literal(&self) -> bool {
        !self.splat && self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// Matches `path` (a trailing slash ignored, as a directory and its
    /// index are one page).
    pub fn matches(&self, path: &str) -> Option<Captures> {
        if !path.starts_with('/') || path.len() > u16::MAX as usize {
            return None;
        }
        let mut caps = Captures::default();
        let root = self.parts.len() == 1 && self.parts[0] == Part::Literal(String::new());
        if root {
            if self.splat {
                caps.splat = Some((1, path.len() as u16));
                return Some(caps);
            }
            return (path == "/").then_some(caps);
        }
        let trimmed = match path.strip_suffix('/') {
            Some(t) if !t.is_empty() => t,
            _ => path,
        };
        // `at`: where the next segment starts (just past its '/').
        let mut at = 1usize;
        let mut exhausted = false;
        for part in &self.parts {
            if exhausted {
                return None;
            }
            let end = trimmed[at..].find('/').map_or(trimmed.len(), |e| at + e);
            let seg = &trimmed[at..end];
            match part {
                Part::Literal(l) if seg == l => {}
                Part::Literal(_) => return None,
                Part::Placeholder(_) if seg.is_empty() => return None,
                Part::Placeholder(_) => {
                    caps.values[caps.count] = (at as u16, end as u16);
                    caps.count += 1;
                }
            }
            if end >= trimmed.len() {
                exhausted = true;
                at = trimmed.len();
            } else {
                at = end + 1;
            }
        }
        if self.splat {
            // `/news/*`: `/news`, `/news/`, `/news/a/b` (the splat keeps a
            // trailing slash, for rewrites).
            let from = if exhausted {
                path.len().min(at + 1)
            } else {
                at
            };
            caps.splat = Some((from.min(path.len()) as u16, path.len() as u16));
            return Some(caps);
        }
        exhausted.then_some(caps)
    }

    /// The value bound to placeholder `name` in `caps`, from `path`.
    pub fn value<'p>(&self, name: &str, path: &'p str, caps: &Captures) -> Option<&'p str> {
        if name == "splat" {
            return caps.splat.map(|(a, b)| &path[a as usize..b as usize]);
        }
        let i = self.names().position(|n| n == name)?;
        let (a, b) = caps.values[i];
        Some(&path[a as usize..b as usize])
    }
}

/// A glob over a whole path for `_headers`: `*` is any run of characters
/// (slashes included), `:name` one segment; everything else literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    tokens: Vec<GlobToken>,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum GlobToken {
    Literal(String),
    Star,
    Segment,
}

impl Glob {
    pub fn parse(source: &str) -> Result<Glob, String> {
        if !source.starts_with('/') {
            return Err(format!("{source:?}: a path must start with /"));
        }
        let mut tokens = Vec::new();
        let mut lit = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' => {
                    if !lit.is_empty() {
                        tokens.push(GlobToken::Literal(std::mem::take(&mut lit)));
                    }
                    if tokens.last() != Some(&GlobToken::Star) {
                        tokens.push(GlobToken::Star);
                    }
                }
                ':' if lit.ends_with('/') => {
                    let mut name = String::new();
                    while let Some(&n) = chars.peek() {
                        if n.is_ascii_alphanumeric() || n == '_' {
                            name.push(n);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    if name.is_empty() {
                        lit.push(':');
                        continue;
                    }
                    tokens.push(GlobToken::Literal(std::mem::take(&mut lit)));
                    tokens.push(GlobToken::Segment);
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            tokens.push(GlobToken::Literal(lit));
        }
        Ok(Glob {
            tokens,
            source: source.to_string(),
        })
    }

    pub fn matches(&self, path: &str) -> bool {
        glob_match(&self.tokens, path.as_bytes())
    }
}

/// Longest path a glob is matched against (longer ones match nothing).
const MAX_GLOB_PATH: usize = 8_192;
const GLOB_WORDS: usize = MAX_GLOB_PATH / 64 + 1;

/// Matches in O(tokens × path) time, whatever the glob (a backtracking
/// matcher is exponential in the stars, and a deployer writes the globs
/// that the cores then run), with two bit sets on the stack: `cur` holds
/// the positions the tokens so far can end at.
fn glob_match(tokens: &[GlobToken], s: &[u8]) -> bool {
    let n = s.len();
    if n > MAX_GLOB_PATH {
        return false;
    }
    let get = |set: &[u64; GLOB_WORDS], i: usize| set[i / 64] >> (i % 64) & 1 == 1;
    let put = |set: &mut [u64; GLOB_WORDS], i: usize| set[i / 64] |= 1 << (i % 64);
    let mut cur = [0u64; GLOB_WORDS];
    put(&mut cur, 0);
    for token in tokens {
        let mut next = [0u64; GLOB_WORDS];
        match token {
            GlobToken::Literal(l) => {
                let l = l.as_bytes();
                for i in 0..=n {
                    if get(&cur, i) && s[i..].starts_with(l) {
                        put(&mut next, i + l.len());
                    }
                }
            }
            GlobToken::Star => {
                let mut on = false;
                for i in 0..=n {
                    on |= get(&cur, i);
                    if on {
                        put(&mut next, i);
                    }
                }
            }
            GlobToken::Segment => {
                // One or more bytes up to the next '/'.
                let mut on = false;
                for j in 1..=n {
                    if s[j - 1] == b'/' {
                        on = false;
                    } else {
                        on |= get(&cur, j - 1);
                        if on {
                            put(&mut next, j);
                        }
                    }
                }
            }
        }
        if next.iter().all(|w| *w == 0) {
            return false;
        }
        cur = next;
    }
    get(&cur, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_splats() {
        let p = Pattern::parse("/news/:year/:month/:slug").expect("parses");
        let path = "/news/2024/02/hello";
        let c = p.matches(path).expect("matches");
        assert_eq!(p.value("year", path, &c), Some("2024"));
        assert_eq!(p.value("slug", path, &c), Some("hello"));
        assert!(p.matches("/news/2024/02").is_none());
        assert!(p.matches("/news/2024/02/hello/more").is_none());

        let s = Pattern::parse("/blog/*").expect("parses");
        for (path, splat) in [("/blog/a/b", "a/b"), ("/blog/", ""), ("/blog", "")] {
            let c = s.matches(path).expect(path);
            assert_eq!(s.value("splat", path, &c), Some(splat), "{path}");
        }
        assert!(s.matches("/blogger").is_none());
        let all = Pattern::parse("/*").expect("parses");
        let c = all.matches("/x/y").expect("all");
        assert_eq!(all.value("splat", "/x/y", &c), Some("x/y"));
        assert!(all.matches("/").is_some());

        let root = Pattern::parse("/").expect("parses");
        assert!(root.matches("/").is_some());
        assert!(root.matches("/a").is_none());
        let lit = Pattern::parse("/about/").expect("parses");
        assert!(lit.matches("/about").is_some() && lit.matches("/about/").is_some());
    }

    #[test]
    fn bad_patterns_say_why() {
        for (p, why) in [
            ("news", "start with /"),
            ("/a/*/b", "only end"),
            ("/a*", "whole trailing"),
            ("/:", "needs a name"),
            ("/:splat", ":splat"),
        ] {
            let e = Pattern::parse(p).expect_err(p);
            assert!(e.contains(why), "{p}: {e}");
        }
    }

    #[test]
    fn globs() {
        let g = Glob::parse("/assets/*").expect("parses");
        assert!(g.matches("/assets/a/b.css"));
        assert!(!g.matches("/other/a.css"));
        let g = Glob::parse("/*.html").expect("parses");
        assert!(g.matches("/index.html") && g.matches("/a/b.html") && !g.matches("/a.css"));
        let g = Glob::parse("/:lang/about").expect("parses");
        assert!(g.matches("/en/about") && !g.matches("/en/x/about"));
        assert!(Glob::parse("/exact.txt")
            .expect("parses")
            .matches("/exact.txt"));
    }
}
