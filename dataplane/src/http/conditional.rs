//! Conditional requests (RFC 9110 §13), written once for every transport.
//!
//! A transport copies the precondition fields it reads (`If-Match`,
//! `If-None-Match`, `If-Modified-Since`, `If-Unmodified-Since`, `If-Range`) into a
//! [`Preconditions`] with [`Preconditions::push`]; once the representation is
//! selected, [`Preconditions::evaluate`] compares them with its [`Validators`] in
//! the order of RFC 9110 §13.2.2 and says whether to serve it, answer `304 Not
//! Modified` or `412 Precondition Failed`, and whether a `Range` still applies.
//!
//! Sans-IO and allocation-free: the field values live in a fixed buffer inside the
//! value, so a request view that carries it can be copied or moved off the read
//! buffer. Field values that do not parse are handled the way that cannot serve
//! stale bytes: an unparsable `If-None-Match` or date is ignored (the full
//! representation is sent), an unparsable `If-Match` fails, an unparsable
//! `If-Range` does not match (the full representation is sent, RFC 9110 §13.1.5).
//!
//! Entity tags compare by the RFC's two functions: `If-Match` and `If-Range` use
//! the strong comparison (both tags strong, same opaque tag), `If-None-Match` the
//! weak one (same opaque tag, `W/` ignored).

use std::time::{SystemTime, UNIX_EPOCH};

use super::Method;

/// Bytes of precondition field values one request may carry: about a dozen entity
/// tags of a blob. Bounds what a request view copies; more is refused with 400.
pub const MAX_PRECONDITION_BYTES: usize = 1024;
/// Field lines of preconditions one request may carry (list fields may repeat).
pub const MAX_PRECONDITION_LINES: usize = 8;

/// The five precondition fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    IfMatch,
    IfNoneMatch,
    IfModifiedSince,
    IfUnmodifiedSince,
    IfRange,
}

impl Field {
    /// The field a header name is, if it is a precondition (names compared
    /// case-insensitively; HTTP/3 sends them in lower case).
    pub fn from_name(name: &[u8]) -> Option<Field> {
        const NAMES: [(&[u8], Field); 5] = [
            (b"if-match", Field::IfMatch),
            (b"if-none-match", Field::IfNoneMatch),
            (b"if-modified-since", Field::IfModifiedSince),
            (b"if-unmodified-since", Field::IfUnmodifiedSince),
            (b"if-range", Field::IfRange),
        ];
        // Every precondition name starts with "if-": one comparison rules out
        // almost every other header.
        if name.len() < 8 || !name[..3].eq_ignore_ascii_case(b"if-") {
            return None;
        }
        NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(_, f)| f)
    }
}

/// The request carries more precondition bytes or lines than the limits above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge;

impl TooLarge {
    pub const MESSAGE: &'static str =
        "conditional headers (If-Match, If-None-Match, ...) are longer than the server's limit\n";
}

/// The precondition fields of one request, copied out of its head.
#[derive(Clone)]
pub struct Preconditions {
    bytes: [u8; MAX_PRECONDITION_BYTES],
    used: u16,
    lines: [(Field, u16, u16); MAX_PRECONDITION_LINES],
    count: u8,
}

impl Default for Preconditions {
    fn default() -> Self {
        Preconditions {
            bytes: [0; MAX_PRECONDITION_BYTES],
            used: 0,
            lines: [(Field::IfMatch, 0, 0); MAX_PRECONDITION_LINES],
            count: 0,
        }
    }
}

impl std::fmt::Debug for Preconditions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut list = f.debug_list();
        for (field, start, len) in &self.lines[..self.count as usize] {
            let v = &self.bytes[*start as usize..(*start + *len) as usize];
            list.entry(&(field, String::from_utf8_lossy(v)));
        }
        list.finish()
    }
}

/// What the selected representation can be compared by.
#[derive(Debug, Clone, Copy, Default)]
pub struct Validators<'a> {
    /// The representation's entity tag as sent in `ETag`, quotes included
    /// (`"abc"` or `W/"abc"`).
    pub etag: Option<&'a [u8]>,
    /// Its `Last-Modified`, in seconds since the Unix epoch.
    pub last_modified: Option<u64>,
    /// Whether that date is a strong validator (RFC 9110 §8.8.2.2): only then
    /// can a date in `If-Range` match.
    pub last_modified_strong: bool,
}

/// What to do with the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Serve the representation; `honor_range` is false when `If-Range` did not
    /// match, so a `Range` must be ignored and the whole representation sent (200).
    Proceed { honor_range: bool },
    /// `304 Not Modified` (GET and HEAD): the head only, with the validators and
    /// caching fields a 200 would carry.
    NotModified,
    /// `412 Precondition Failed`.
    PreconditionFailed,
}

impl Preconditions {
    /// Forgets every field (the buffer is kept: nothing is zeroed).
    pub fn clear(&mut self) {
        self.used = 0;
        self.count = 0;
    }

    /// Keeps a header if it is a precondition; `Ok(false)` if it is not one.
    pub fn push(&mut self, name: &[u8], value: &[u8]) -> Result<bool, TooLarge> {
        let Some(field) = Field::from_name(name) else {
            return Ok(false);
        };
        self.push_field(field, value)?;
        Ok(true)
    }

    /// Keeps one field line of `field`.
    pub fn push_field(&mut self, field: Field, value: &[u8]) -> Result<(), TooLarge> {
        let value = value.trim_ascii();
        let start = self.used as usize;
        let end = start + value.len();
        if end > MAX_PRECONDITION_BYTES || self.count as usize == MAX_PRECONDITION_LINES {
            return Err(TooLarge);
        }
        self.bytes[start..end].copy_from_slice(value);
        self.lines[self.count as usize] = (field, start as u16, value.len() as u16);
        self.count += 1;
        self.used = end as u16;
        Ok(())
    }

    /// Whether the request carries no precondition at all (the common case:
    /// nothing to evaluate).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn values(&self, field: Field) -> impl Iterator<Item = &[u8]> + '_ {
        self.lines[..self.count as usize]
            .iter()
            .filter(move |(f, _, _)| *f == field)
            .map(|&(_, start, len)| &self.bytes[start as usize..(start + len) as usize])
    }

    /// The one value of a singleton field; None when absent or repeated (a
    /// repeated singleton is invalid, and RFC 9110 says to ignore it).
    fn single(&self, field: Field) -> Option<&[u8]> {
        let mut it = self.values(field);
        let first = it.next()?;
        it.next().is_none().then_some(first)
    }

    fn has(&self, field: Field) -> bool {
        self.values(field).next().is_some()
    }

    /// Evaluates the preconditions against the selected representation, in the
    /// order of RFC 9110 §13.2.2. `has_range`: the request carries `Range`.
    /// Call it only when the response without preconditions would be 2xx
    /// (RFC 9110 §13.2.1: a 404 stays a 404).
    pub fn evaluate(&self, method: Method, has_range: bool, v: &Validators<'_>) -> Outcome {
        if self.is_empty() {
            return Outcome::Proceed {
                honor_range: has_range,
            };
        }
        let safe = matches!(method, Method::Get | Method::Head);
        let date = |field| self.single(field).and_then(parse_http_date);
        // 1. If-Match; 2. otherwise If-Unmodified-Since.
        if self.has(Field::IfMatch) {
            if !self.if_match(v) {
                return Outcome::PreconditionFailed;
            }
        } else if let (Some(since), Some(modified)) =
            (date(Field::IfUnmodifiedSince), v.last_modified)
        {
            if modified > since {
                return Outcome::PreconditionFailed;
            }
        }
        // 3. If-None-Match; 4. otherwise If-Modified-Since (GET and HEAD only).
        if self.has(Field::IfNoneMatch) {
            match self.if_none_match(v) {
                Some(true) => {}
                Some(false) if safe => return Outcome::NotModified,
                Some(false) => return Outcome::PreconditionFailed,
                // Unparsable: ignored where ignoring cannot change state.
                None if safe => {}
                None => return Outcome::PreconditionFailed,
            }
        } else if safe {
            if let (Some(since), Some(modified)) = (date(Field::IfModifiedSince), v.last_modified) {
                if modified <= since {
                    return Outcome::NotModified;
                }
            }
        }
        // 5. If-Range, only with a Range, only for GET (and HEAD, whose head
        // says what GET would send).
        let honor_range = has_range && (!safe || !self.has(Field::IfRange) || self.if_range(v));
        Outcome::Proceed { honor_range }
    }

    /// RFC 9110 §13.1.1: `*` or any listed tag strongly equal to the current one.
    /// An unparsable list fails.
    fn if_match(&self, v: &Validators<'_>) -> bool {
        let current = v.etag.and_then(parse_single_tag);
        let mut any = false;
        for value in self.values(Field::IfMatch) {
            if value == b"*" {
                return true;
            }
            for tag in tags(value) {
                match (tag, current) {
                    (Some(t), Some(c)) => any |= t.strong_eq(&c),
                    (None, _) => return false,
                    _ => {}
                }
            }
        }
        any
    }

    /// RFC 9110 §13.1.2: false when `*` or any listed tag weakly equals the
    /// current one. None: unparsable.
    fn if_none_match(&self, v: &Validators<'_>) -> Option<bool> {
        let current = v.etag.and_then(parse_single_tag);
        let mut matched = false;
        for value in self.values(Field::IfNoneMatch) {
            if value == b"*" {
                matched = true;
                continue;
            }
            for tag in tags(value) {
                let tag = tag?;
                matched |= current.is_some_and(|c| tag.weak_eq(&c));
            }
        }
        Some(!matched)
    }

    /// RFC 9110 §13.1.5: an entity tag strongly equal to the current one, or a
    /// date exactly the current strong `Last-Modified`.
    fn if_range(&self, v: &Validators<'_>) -> bool {
        let Some(value) = self.single(Field::IfRange) else {
            return false;
        };
        if value.starts_with(b"\"") || value.starts_with(b"W/") {
            let current = v.etag.and_then(parse_single_tag);
            return match (parse_single_tag(value), current) {
                (Some(t), Some(c)) => t.strong_eq(&c),
                _ => false,
            };
        }
        match (parse_http_date(value), v.last_modified) {
            (Some(date), Some(modified)) => v.last_modified_strong && date == modified,
            _ => false,
        }
    }
}

/// An entity tag: `"opaque"` or `W/"opaque"` (RFC 9110 §8.8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntityTag<'a> {
    pub weak: bool,
    /// Between the quotes.
    pub opaque: &'a [u8],
}

impl EntityTag<'_> {
    /// RFC 9110 §8.8.3.2 strong comparison.
    pub fn strong_eq(&self, other: &EntityTag<'_>) -> bool {
        !self.weak && !other.weak && self.opaque == other.opaque
    }

    /// RFC 9110 §8.8.3.2 weak comparison.
    pub fn weak_eq(&self, other: &EntityTag<'_>) -> bool {
        self.opaque == other.opaque
    }
}

/// The members of a `#entity-tag` list (empty members are allowed, RFC 9110
/// §5.6.1); None for a member that is not an entity tag.
fn tags(mut value: &[u8]) -> impl Iterator<Item = Option<EntityTag<'_>>> {
    std::iter::from_fn(move || loop {
        value = value.trim_ascii_start();
        match value.first() {
            None => return None,
            Some(b',') => {
                value = &value[1..];
                continue;
            }
            Some(_) => {}
        }
        let Some((tag, rest)) = split_tag(value) else {
            value = &[];
            return Some(None);
        };
        let rest = rest.trim_ascii_start();
        if !rest.is_empty() && rest[0] != b',' {
            value = &[];
            return Some(None);
        }
        value = rest;
        return Some(Some(tag));
    })
}

/// One entity tag at the start of `v`, and what follows it.
fn split_tag(v: &[u8]) -> Option<(EntityTag<'_>, &[u8])> {
    let (weak, v) = match v.strip_prefix(b"W/") {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let v = v.strip_prefix(b"\"")?;
    let end = v.iter().position(|&b| b == b'"')?;
    let opaque = &v[..end];
    // etagc = %x21 / %x23-7E / obs-text
    if !opaque
        .iter()
        .all(|&b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80)
    {
        return None;
    }
    Some((EntityTag { weak, opaque }, &v[end + 1..]))
}

/// A whole field value that is exactly one entity tag.
pub fn parse_single_tag(v: &[u8]) -> Option<EntityTag<'_>> {
    match split_tag(v.trim_ascii())? {
        (tag, []) => Some(tag),
        _ => None,
    }
}

/// An HTTP-date (IMF-fixdate, or the obsolete RFC 850 and asctime forms that
/// recipients must accept, RFC 9110 §5.6.7) as seconds since the Unix epoch.
pub fn parse_http_date(v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?;
    let t: SystemTime = httpdate::parse_http_date(s.trim()).ok()?;
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// Runs untrusted bytes through the precondition parsers and evaluation, as a
/// server would with a request's fields: the fuzz target `conditional` calls
/// this, and so does a random-input test. Panics only on a bug.
pub fn exercise(data: &[u8]) {
    let fields = [
        Field::IfMatch,
        Field::IfNoneMatch,
        Field::IfModifiedSince,
        Field::IfUnmodifiedSince,
        Field::IfRange,
    ];
    let mut pre = Preconditions::default();
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        let Some((&which, value)) = line.split_first() else {
            continue;
        };
        let field = fields[which as usize % fields.len()];
        if pre.push_field(field, value).is_err() {
            assert!(
                i >= MAX_PRECONDITION_LINES
                    || pre.used as usize + value.trim_ascii().len() > MAX_PRECONDITION_BYTES,
                "refused a line that fits"
            );
            break;
        }
    }
    let _ = format!("{pre:?}");
    for etag in [&b"\"x\""[..], b"W/\"x\"", b"\"\"", b"junk"] {
        for last_modified in [None, Some(0), Some(784111777)] {
            let v = Validators {
                etag: Some(etag),
                last_modified,
                last_modified_strong: last_modified.is_some(),
            };
            for method in [Method::Get, Method::Head, Method::Put] {
                for has_range in [false, true] {
                    let outcome = pre.evaluate(method, has_range, &v);
                    if let Outcome::Proceed { honor_range: true } = outcome {
                        assert!(has_range, "a range honoured that was not asked for");
                    }
                    if outcome == Outcome::NotModified {
                        assert!(matches!(method, Method::Get | Method::Head));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: &[u8] = b"\"xyzzy\"";
    // Sun, 06 Nov 1994 08:49:37 GMT, the RFC's example date.
    const DATE: u64 = 784_111_777;

    fn pre(fields: &[(&str, &str)]) -> Preconditions {
        let mut p = Preconditions::default();
        for (name, value) in fields {
            p.push(name.as_bytes(), value.as_bytes()).expect("fits");
        }
        p
    }

    fn validators() -> Validators<'static> {
        Validators {
            etag: Some(TAG),
            last_modified: Some(DATE),
            last_modified_strong: true,
        }
    }

    fn get(fields: &[(&str, &str)]) -> Outcome {
        pre(fields).evaluate(Method::Get, false, &validators())
    }

    const SERVE: Outcome = Outcome::Proceed { honor_range: false };

    #[test]
    fn parses_the_rfcs_entity_tag_examples() {
        // RFC 9110 §8.8.3: ETag: "xyzzy", W/"xyzzy", "".
        assert_eq!(
            parse_single_tag(b"\"xyzzy\""),
            Some(EntityTag {
                weak: false,
                opaque: b"xyzzy"
            })
        );
        assert_eq!(
            parse_single_tag(b"W/\"xyzzy\""),
            Some(EntityTag {
                weak: true,
                opaque: b"xyzzy"
            })
        );
        assert_eq!(
            parse_single_tag(b"\"\""),
            Some(EntityTag {
                weak: false,
                opaque: b""
            })
        );
        for bad in [
            &b"xyzzy"[..],
            b"\"xy zzy\"",
            b"\"abc",
            b"w/\"a\"",
            b"\"a\"b",
            b"\"\x00\"",
        ] {
            assert_eq!(
                parse_single_tag(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn comparison_table_of_rfc_9110() {
        // RFC 9110 §8.8.3.2: ETag 1 | ETag 2 | strong | weak.
        let cases: [(&[u8], &[u8], bool, bool); 4] = [
            (b"W/\"1\"", b"W/\"1\"", false, true),
            (b"W/\"1\"", b"W/\"2\"", false, false),
            (b"W/\"1\"", b"\"1\"", false, true),
            (b"\"1\"", b"\"1\"", true, true),
        ];
        for (a, b, strong, weak) in cases {
            let (a, b) = (
                parse_single_tag(a).expect("tag"),
                parse_single_tag(b).expect("tag"),
            );
            assert_eq!(a.strong_eq(&b), strong, "{a:?} {b:?}");
            assert_eq!(a.weak_eq(&b), weak, "{a:?} {b:?}");
        }
    }

    #[test]
    fn if_none_match() {
        assert_eq!(get(&[("If-None-Match", "\"xyzzy\"")]), Outcome::NotModified);
        // Weak comparison: a weak tag matches the strong current one.
        assert_eq!(
            get(&[("If-None-Match", "W/\"xyzzy\"")]),
            Outcome::NotModified
        );
        // RFC 9110 §13.1.2 examples.
        assert_eq!(
            get(&[("If-None-Match", "\"xyzzy\", \"r2d2xxxx\", \"c3piozzzz\"")]),
            Outcome::NotModified
        );
        assert_eq!(
            get(&[(
                "If-None-Match",
                "W/\"xyzzy\", W/\"r2d2xxxx\", W/\"c3piozzzz\""
            )]),
            Outcome::NotModified
        );
        assert_eq!(get(&[("If-None-Match", "*")]), Outcome::NotModified);
        assert_eq!(get(&[("If-None-Match", "\"other\"")]), SERVE);
        assert_eq!(get(&[("If-None-Match", "\"a\", ,\"b\"")]), SERVE);
        // A list split over two field lines is one list.
        assert_eq!(
            get(&[("If-None-Match", "\"a\""), ("if-none-match", "\"xyzzy\"")]),
            Outcome::NotModified
        );
        // HEAD is answered like GET; an unsafe method fails instead.
        let p = pre(&[("If-None-Match", "*")]);
        assert_eq!(
            p.evaluate(Method::Head, false, &validators()),
            Outcome::NotModified
        );
        assert_eq!(
            p.evaluate(Method::Put, false, &validators()),
            Outcome::PreconditionFailed
        );
        // Unparsable (an unquoted tag): ignored for GET, failed for PUT.
        let p = pre(&[("If-None-Match", "xyzzy")]);
        assert_eq!(p.evaluate(Method::Get, false, &validators()), SERVE);
        assert_eq!(
            p.evaluate(Method::Put, false, &validators()),
            Outcome::PreconditionFailed
        );
    }

    #[test]
    fn if_match() {
        assert_eq!(get(&[("If-Match", "\"xyzzy\"")]), SERVE);
        assert_eq!(get(&[("If-Match", "\"a\", \"xyzzy\"")]), SERVE);
        assert_eq!(get(&[("If-Match", "*")]), SERVE);
        // Strong comparison: a weak tag never matches.
        assert_eq!(
            get(&[("If-Match", "W/\"xyzzy\"")]),
            Outcome::PreconditionFailed
        );
        assert_eq!(
            get(&[("If-Match", "\"nope\"")]),
            Outcome::PreconditionFailed
        );
        assert_eq!(get(&[("If-Match", "xyzzy")]), Outcome::PreconditionFailed);
        // A weak current tag matches nothing but *.
        let weak = Validators {
            etag: Some(b"W/\"xyzzy\""),
            ..validators()
        };
        assert_eq!(
            pre(&[("If-Match", "\"xyzzy\"")]).evaluate(Method::Get, false, &weak),
            Outcome::PreconditionFailed
        );
        // If-Match is evaluated first: it fails before If-None-Match is looked at.
        assert_eq!(
            get(&[("If-None-Match", "\"xyzzy\""), ("If-Match", "\"nope\"")]),
            Outcome::PreconditionFailed
        );
    }

    #[test]
    fn dates() {
        for form in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(parse_http_date(form.as_bytes()), Some(DATE), "{form}");
        }
        assert_eq!(parse_http_date(b"yesterday"), None);
        let later = "Mon, 07 Nov 1994 08:49:37 GMT";
        let earlier = "Sat, 05 Nov 1994 08:49:37 GMT";
        let same = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(get(&[("If-Modified-Since", same)]), Outcome::NotModified);
        assert_eq!(get(&[("If-Modified-Since", later)]), Outcome::NotModified);
        assert_eq!(get(&[("If-Modified-Since", earlier)]), SERVE);
        assert_eq!(get(&[("If-Modified-Since", "garbage")]), SERVE);
        // Two members: ignored.
        assert_eq!(
            get(&[("If-Modified-Since", same), ("If-Modified-Since", same)]),
            SERVE
        );
        // If-None-Match takes precedence over If-Modified-Since.
        assert_eq!(
            get(&[("If-None-Match", "\"other\""), ("If-Modified-Since", later)]),
            SERVE
        );
        // Only GET and HEAD.
        assert_eq!(
            pre(&[("If-Modified-Since", later)]).evaluate(Method::Post, false, &validators()),
            SERVE
        );
        assert_eq!(get(&[("If-Unmodified-Since", later)]), SERVE);
        assert_eq!(get(&[("If-Unmodified-Since", same)]), SERVE);
        assert_eq!(
            get(&[("If-Unmodified-Since", earlier)]),
            Outcome::PreconditionFailed
        );
        // If-Match present: If-Unmodified-Since is not evaluated.
        assert_eq!(
            get(&[("If-Match", "*"), ("If-Unmodified-Since", earlier)]),
            SERVE
        );
        // No date on the representation: date conditions are ignored.
        let undated = Validators {
            last_modified: None,
            ..validators()
        };
        for field in ["If-Modified-Since", "If-Unmodified-Since"] {
            assert_eq!(
                pre(&[(field, earlier)]).evaluate(Method::Get, false, &undated),
                SERVE
            );
        }
    }

    #[test]
    fn if_range() {
        let ranged = |fields: &[(&str, &str)], v: &Validators<'_>| {
            pre(fields).evaluate(Method::Get, true, v)
        };
        let v = validators();
        let honored = Outcome::Proceed { honor_range: true };
        let whole = Outcome::Proceed { honor_range: false };
        assert_eq!(ranged(&[], &v), honored);
        assert_eq!(ranged(&[("If-Range", "\"xyzzy\"")], &v), honored);
        assert_eq!(ranged(&[("If-Range", "\"other\"")], &v), whole);
        // Strong comparison only.
        assert_eq!(ranged(&[("If-Range", "W/\"xyzzy\"")], &v), whole);
        assert_eq!(
            ranged(&[("If-Range", "Sun, 06 Nov 1994 08:49:37 GMT")], &v),
            honored
        );
        assert_eq!(
            ranged(&[("If-Range", "Mon, 07 Nov 1994 08:49:37 GMT")], &v),
            whole
        );
        let weak_date = Validators {
            last_modified_strong: false,
            ..v
        };
        assert_eq!(
            ranged(&[("If-Range", "Sun, 06 Nov 1994 08:49:37 GMT")], &weak_date),
            whole
        );
        assert_eq!(ranged(&[("If-Range", "nonsense")], &v), whole);
        // No Range: If-Range is ignored.
        assert_eq!(get(&[("If-Range", "\"other\"")]), SERVE);
        // A 304 wins over the range question.
        assert_eq!(
            ranged(&[("If-None-Match", "*"), ("If-Range", "\"other\"")], &v),
            Outcome::NotModified
        );
    }

    #[test]
    fn limits() {
        let mut p = Preconditions::default();
        assert_eq!(p.push(b"accept", b"x"), Ok(false));
        assert!(p.is_empty());
        let long = vec![b'a'; MAX_PRECONDITION_BYTES + 1];
        assert_eq!(p.push(b"If-None-Match", &long), Err(TooLarge));
        let mut p = Preconditions::default();
        for _ in 0..MAX_PRECONDITION_LINES {
            p.push(b"If-None-Match", b"\"a\"").expect("fits");
        }
        assert_eq!(p.push(b"If-None-Match", b"\"a\""), Err(TooLarge));
        assert_eq!(Field::from_name(b"IF-RANGE"), Some(Field::IfRange));
        assert_eq!(Field::from_name(b"if-"), None);
        assert_eq!(Field::from_name(b"if-whatever"), None);
    }

    #[test]
    fn random_input_never_panics() {
        let seed: &[u8] =
            b"\x00\"xyzzy\", W/\"a\"\n\x01*\n\x02Sun, 06 Nov 1994 08:49:37 GMT\n\x04\"x\"";
        crate::mutate::each_mutation(&[seed], 20_000, 5, 13, exercise);
    }
}
