//! LIKE patterns (spec 3.4.3), compiled once at parse time.
//!
//! `%` matches any run of characters (including none), `_` exactly one
//! character (a Unicode scalar value), anything else itself, case
//! sensitively. A backslash escapes `%`, `_` and `\`; before any other
//! character (or at the end) a backslash stands for itself.
//!
//! Common shapes get a fast path that never allocates and is a plain
//! `==` / `starts_with` / `ends_with` / `contains`.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PTok {
    Lit(char),
    One,
    Many,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Compiled {
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    Contains(Box<str>),
    /// `%` (or `%%...`): every string matches.
    Any,
    General(Box<[PTok]>),
}

/// A compiled LIKE pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LikePattern {
    compiled: Compiled,
}

impl LikePattern {
    pub(crate) fn compile(pattern: &str) -> LikePattern {
        let mut toks: Vec<PTok> = Vec::with_capacity(pattern.len());
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            let t = match c {
                '\\' => match chars.peek() {
                    Some(&n @ ('%' | '_' | '\\')) => {
                        chars.next();
                        PTok::Lit(n)
                    }
                    _ => PTok::Lit('\\'),
                },
                '%' => {
                    if toks.last() == Some(&PTok::Many) {
                        continue;
                    }
                    PTok::Many
                }
                '_' => PTok::One,
                c => PTok::Lit(c),
            };
            toks.push(t);
        }
        LikePattern {
            compiled: classify(toks),
        }
    }

    pub(crate) fn matches(&self, s: &str) -> bool {
        match &self.compiled {
            Compiled::Exact(p) => s == &**p,
            Compiled::Prefix(p) => s.starts_with(&**p),
            Compiled::Suffix(p) => s.ends_with(&**p),
            Compiled::Contains(p) => s.contains(&**p),
            Compiled::Any => true,
            Compiled::General(toks) => general_match(toks, s),
        }
    }
}

fn literal_text(toks: &[PTok]) -> Option<Box<str>> {
    let mut out = String::new();
    for t in toks {
        match t {
            PTok::Lit(c) => out.push(*c),
            _ => return None,
        }
    }
    Some(out.into_boxed_str())
}

fn classify(toks: Vec<PTok>) -> Compiled {
    if toks == [PTok::Many] {
        return Compiled::Any;
    }
    let starts = toks.first() == Some(&PTok::Many);
    let ends = toks.len() >= 2 && toks.last() == Some(&PTok::Many);
    let inner_from = usize::from(starts);
    let inner_to = toks.len() - usize::from(ends);
    if let Some(inner) = toks.get(inner_from..inner_to).and_then(literal_text) {
        return match (starts, ends) {
            (false, false) => Compiled::Exact(inner),
            (false, true) => Compiled::Prefix(inner),
            (true, false) => Compiled::Suffix(inner),
            (true, true) => Compiled::Contains(inner),
        };
    }
    Compiled::General(toks.into_boxed_slice())
}

/// Wildcard matching with single-point backtracking to the last `%`; linear
/// memory, O(len(s) * len(pattern)) worst case time, no allocation.
fn general_match(pat: &[PTok], s: &str) -> bool {
    let mut p = 0usize; // index into pat
    let mut i = 0usize; // byte index into s
    let mut star: Option<(usize, usize)> = None; // (pattern index after %, byte index in s)
    while i < s.len() {
        let c = match s[i..].chars().next() {
            Some(c) => c,
            None => break,
        };
        match pat.get(p) {
            Some(PTok::One) => {
                p += 1;
                i += c.len_utf8();
                continue;
            }
            Some(PTok::Lit(l)) if *l == c => {
                p += 1;
                i += c.len_utf8();
                continue;
            }
            Some(PTok::Many) => {
                p += 1;
                star = Some((p, i));
                continue;
            }
            _ => {}
        }
        match star {
            Some((sp, si)) => {
                // Let the last % swallow one more character and retry.
                let adv = s[si..].chars().next().map_or(1, char::len_utf8);
                let si = si + adv;
                star = Some((sp, si));
                p = sp;
                i = si;
            }
            None => return false,
        }
    }
    pat[p.min(pat.len())..].iter().all(|t| *t == PTok::Many)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        LikePattern::compile(p).matches(s)
    }

    #[test]
    fn classification() {
        assert_eq!(
            LikePattern::compile("abc").compiled,
            Compiled::Exact("abc".into())
        );
        assert_eq!(
            LikePattern::compile("ab%").compiled,
            Compiled::Prefix("ab".into())
        );
        assert_eq!(
            LikePattern::compile("%ab").compiled,
            Compiled::Suffix("ab".into())
        );
        assert_eq!(
            LikePattern::compile("%ab%").compiled,
            Compiled::Contains("ab".into())
        );
        assert_eq!(LikePattern::compile("%%").compiled, Compiled::Any);
        assert_eq!(
            LikePattern::compile("a\\%").compiled,
            Compiled::Exact("a%".into())
        );
        assert!(matches!(
            LikePattern::compile("a_").compiled,
            Compiled::General(_)
        ));
        assert!(matches!(
            LikePattern::compile("a%b").compiled,
            Compiled::General(_)
        ));
    }

    #[test]
    fn matching() {
        assert!(m("_b%", "ab"));
        assert!(m("_b%", "abc"));
        assert!(m("_b%", "abcd1"));
        assert!(!m("_b%", "b"));
        assert!(!m("_b%", "acd"));
        assert!(!m("_b%", "aBc"));
        assert!(m("abc\\%", "abc%"));
        assert!(!m("abc\\%", "abcd"));
        assert!(m("a%b%c", "azzzbzzzc"));
        assert!(!m("a%b%c", "azzzbzzz"));
        assert!(m("%", ""));
        assert!(m("", ""));
        assert!(!m("", "a"));
        assert!(!m("_", ""));
        assert!(m("_", "é"));
        assert!(m("__", "日本"));
        assert!(!m("_", "日本"));
        assert!(m("%a%a%a%", "banana a"));
        assert!(m("ab\\c", "ab\\c"));
        assert!(m("a\\\\%", "a\\xyz"));
        assert!(m("a\\", "a\\"));
        assert!(m("%_%", "x"));
        assert!(!m("%_%", ""));
        assert!(m("%b_", "abbc"));
    }
}
