//! The two pattern languages clients write: key globs (AIO key patterns and SCAN: `*`, `?`,
//! `[a-z]`, `[!x]`) and MQTT topic filters (`+` one level, `#` the rest). Pure.

/// One element of a compiled glob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tok {
    Lit(u8),
    /// `?`: any one byte.
    One,
    /// `*`: any run of bytes.
    Any,
    /// `[...]`: one byte in (or, negated, not in) the ranges.
    Class {
        ranges: Vec<(u8, u8)>,
        negated: bool,
    },
}

/// Compiles a glob; a `[` without its `]` is a literal.
pub fn compile(pattern: &[u8]) -> Vec<Tok> {
    let mut out = Vec::with_capacity(pattern.len());
    let mut i = 0;
    while i < pattern.len() {
        let (tok, used) = match pattern[i] {
            b'*' => (Tok::Any, 1),
            b'?' => (Tok::One, 1),
            b'[' => class(&pattern[i..]).unwrap_or((Tok::Lit(b'['), 1)),
            c => (Tok::Lit(c), 1),
        };
        out.push(tok);
        i += used;
    }
    out
}

/// `[...]` at the start of `p`: the class and how many bytes it took.
fn class(p: &[u8]) -> Option<(Tok, usize)> {
    let negated = matches!(p.get(1), Some(b'!' | b'^'));
    let start = if negated { 2 } else { 1 };
    // A `]` right after the opening is a member, not the end.
    let end = start + 1 + p.get(start + 1..)?.iter().position(|c| *c == b']')?;
    let body = &p[start..end];
    let mut ranges = Vec::new();
    let mut j = 0;
    while j < body.len() {
        if j + 2 < body.len() && body[j + 1] == b'-' {
            ranges.push((body[j].min(body[j + 2]), body[j].max(body[j + 2])));
            j += 3;
        } else {
            ranges.push((body[j], body[j]));
            j += 1;
        }
    }
    Some((Tok::Class { ranges, negated }, end + 1))
}

impl Tok {
    fn one(&self, c: u8) -> bool {
        match self {
            Tok::Lit(l) => *l == c,
            Tok::One => true,
            Tok::Any => false,
            Tok::Class { ranges, negated } => ranges.iter().any(|(a, b)| (*a..=*b).contains(&c)) != *negated,
        }
    }
}

/// Whether `s` matches the compiled glob, in O(pattern × s) at worst: after a mismatch it
/// only ever backs up to the last `*`.
pub fn matches_compiled(pattern: &[Tok], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        match pattern.get(p) {
            Some(Tok::Any) => {
                star = Some((p, i));
                p += 1;
            }
            Some(t) if t.one(s[i]) => {
                p += 1;
                i += 1;
            }
            _ => match star {
                Some((sp, si)) => {
                    (p, i) = (sp + 1, si + 1);
                    star = Some((sp, si + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|t| *t == Tok::Any)
}

pub fn glob(pattern: &[u8], s: &[u8]) -> bool {
    matches_compiled(&compile(pattern), s)
}

/// The literal bytes a glob starts with (every match has them as a prefix).
pub fn literal_prefix(pattern: &[u8]) -> &[u8] {
    let n = pattern.iter().take_while(|b| !matches!(b, b'*' | b'?' | b'[')).count();
    &pattern[..n]
}

/// Whether `topic` matches the MQTT topic `filter`. Filters starting with a wildcard do not
/// match topics starting with `$` (MQTT v5 §4.7.2). (A topic name has no wildcards: it is the
/// narrowest filter.)
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    filter_covers(filter, topic)
}

/// Whether every topic the filter `requested` matches is matched by the filter `allowed`
/// (a subscription inside a permission): `+` covers one level but never `#`.
pub fn filter_covers(allowed: &str, requested: &str) -> bool {
    if requested.starts_with('$') && (allowed.starts_with('+') || allowed.starts_with('#')) {
        return false;
    }
    let mut a = allowed.split('/');
    let mut r = requested.split('/');
    loop {
        match (a.next(), r.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(level)) if level != "#" => {}
            (Some(x), Some(y)) if x == y && x != "+" && x != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_aio_patterns_do() {
        assert!(glob(b"colors/*", b"colors/red"));
        assert!(glob(b"*", b""));
        assert!(glob(b"char?", b"charA"));
        assert!(!glob(b"char?", b"char"));
        assert!(glob(b"number[0-9]", b"number7"));
        assert!(!glob(b"number[0-9]", b"numberx"));
        assert!(glob(b"x[!0-9]", b"xa"));
        assert!(!glob(b"x[^0-9]", b"x5"));
        assert!(glob(b"a[]]b", b"a]b"));
        assert!(glob(b"open[", b"open["), "an unclosed class is literal");
        assert!(glob(b"a*b*c", b"aXXbYYc"));
        assert!(!glob(b"a*b*c", b"aXXbYY"));
        // Hostile: no exponential backtracking.
        let long = vec![b'a'; 10_000];
        assert!(!glob(&[b"*a".repeat(50), b"b".to_vec()].concat(), &long));
        assert_eq!(literal_prefix(b"ab[c]*"), b"ab");
    }

    #[test]
    fn topic_wildcards_match_as_the_spec_says() {
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(!topic_matches("a/+/c", "a/b/d"));
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("#", "a/b"));
        assert!(topic_matches("+/+", "/x"));
        assert!(!topic_matches("+", "a/b"));
        assert!(!topic_matches("a/b", "a/b/c"));
        assert!(!topic_matches("#", "$SYS/x"));
        assert!(topic_matches("$SYS/#", "$SYS/x"));
    }

    #[test]
    fn a_filter_covers_only_narrower_filters() {
        assert!(filter_covers("a/#", "a/+/c") && filter_covers("a/#", "a/#") && filter_covers("#", "x/#"));
        assert!(filter_covers("a/+", "a/b") && filter_covers("a/+", "a/+"));
        assert!(!filter_covers("a/+", "a/#"), "+ never covers #");
        assert!(!filter_covers("+", "#"));
        assert!(!filter_covers("a/b", "a/+") && !filter_covers("a/b", "a/#"));
        assert!(!filter_covers("a/+", "a/b/c") && !filter_covers("#", "$SYS/x"));
        assert!(filter_covers("a/b", "a/b") && !filter_covers("a/b/c", "a/b"));
    }
}
