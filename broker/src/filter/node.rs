//! The compiled filter tree and its evaluation.
//!
//! A [`Node`] is one compiled filter expression: a Subscriptions API dialect (`exact`,
//! `prefix`, `suffix`, `all`, `any`, `not`, `cesql`) or Knative's legacy
//! `filter.attributes`. Evaluation borrows everything from the event and the node:
//! string attributes are compared in place, and integer attributes are written into a
//! stack buffer when a prefix or suffix needs their canonical string form, so no path
//! allocates.

use std::fmt::Write as _;

use crate::event::{AttrValue, Event};

/// One `name: value` entry of an `exact`, `prefix` or `suffix` filter, or of
/// `filter.attributes` (where `value` may be empty: "present, any value").
#[derive(Debug, Clone)]
pub(crate) struct Pair {
    pub(crate) name: Box<str>,
    pub(crate) value: Box<str>,
    /// `value` parsed as the canonical form of an Integer, so that `exact` can compare
    /// Integer attributes without formatting them.
    pub(crate) as_int: Option<i32>,
}

impl Pair {
    pub(crate) fn new(name: &str, value: &str) -> Pair {
        let as_int = value
            .parse::<i32>()
            .ok()
            .filter(|i| canonical_int(*i, &mut IntBuf::new()) == value);
        Pair {
            name: name.into(),
            value: value.into(),
            as_int,
        }
    }

    /// Whether `value`'s canonical string form equals this pair's value.
    #[inline]
    pub(crate) fn equals(&self, value: &AttrValue) -> bool {
        match value {
            AttrValue::String(s) => **s == *self.value,
            AttrValue::Integer(i) => self.as_int == Some(*i),
            AttrValue::Boolean(b) => *self.value == *bool_str(*b),
        }
    }
}

/// Sorts pairs so that the attributes most likely to differ between events (`type`,
/// then `source`) are compared first; the rest keep their (name) order.
pub(crate) fn sort_pairs(pairs: &mut [Pair]) {
    pairs.sort_by(|a, b| (rank(&a.name), &a.name).cmp(&(rank(&b.name), &b.name)));
}

fn rank(name: &str) -> u8 {
    match name {
        "type" => 0,
        "source" => 1,
        _ => 2,
    }
}

/// The string comparison an `exact`, `prefix` or `suffix` filter applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StrOp {
    Exact,
    Prefix,
    Suffix,
}

impl StrOp {
    /// Whether the attribute value passes this comparison against `pair`.
    #[inline]
    pub(crate) fn test(self, pair: &Pair, value: &AttrValue) -> bool {
        match self {
            StrOp::Exact => pair.equals(value),
            StrOp::Prefix | StrOp::Suffix => {
                let mut buf = IntBuf::new();
                let s = canonical(value, &mut buf);
                if self == StrOp::Prefix {
                    s.starts_with(&*pair.value)
                } else {
                    s.ends_with(&*pair.value)
                }
            }
        }
    }
}

/// A compiled filter expression.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    /// Knative's `filter.attributes`: every attribute present; a non-empty value must
    /// equal the canonical string form.
    Attributes(Box<[Pair]>),
    /// `exact`, `prefix` or `suffix`: every attribute present and passing `op`.
    Str { op: StrOp, pairs: Box<[Pair]> },
    /// `all`: every child passes (short-circuit).
    All(Box<[Node]>),
    /// `any`: at least one child passes (short-circuit).
    Any(Box<[Node]>),
    /// `not`: the child fails.
    Not(Box<Node>),
    /// `cesql`: the expression evaluates to `TRUE` without any error.
    Cesql(Box<cesql::Expression>),
}

impl Node {
    /// Whether the event passes this filter.
    pub(crate) fn matches(&self, event: &Event) -> bool {
        match self {
            Node::Attributes(pairs) => pairs.iter().all(|p| match event.get(&p.name) {
                None => false,
                Some(v) => p.value.is_empty() || p.equals(v),
            }),
            Node::Str { op, pairs } => pairs.iter().all(|p| match event.get(&p.name) {
                None => false,
                Some(v) => op.test(p, v),
            }),
            Node::All(children) => children.iter().all(|c| c.matches(event)),
            Node::Any(children) => children.iter().any(|c| c.matches(event)),
            Node::Not(child) => !child.matches(event),
            Node::Cesql(expr) => expr.matches(event),
        }
    }

    /// The value this node requires attribute `name` to equal exactly (canonical string
    /// form), when every matching event must have it: a top-level or `all`-nested
    /// `exact` entry, or a non-empty `filter.attributes` entry.
    pub(crate) fn required_exact(&self, name: &str) -> Option<&str> {
        match self {
            Node::Attributes(pairs)
            | Node::Str {
                op: StrOp::Exact,
                pairs,
            } => pairs
                .iter()
                .find(|p| *p.name == *name && !p.value.is_empty())
                .map(|p| &*p.value),
            Node::All(children) => children.iter().find_map(|c| c.required_exact(name)),
            _ => None,
        }
    }

    /// Appends a human description; `ctx` is the operator this node sits under, to
    /// decide on parentheses.
    pub(crate) fn describe_into(&self, out: &mut String, ctx: Prec) {
        let own = self.precedence();
        let wrap = matches!(
            (own, ctx),
            (Prec::And, Prec::Or | Prec::Not) | (Prec::Or, Prec::And | Prec::Not)
        );
        if wrap {
            out.push('(');
        }
        match self {
            Node::Attributes(pairs) => join(out, " AND ", pairs, |out, p| {
                if p.value.is_empty() {
                    let _ = write!(out, "{} present", p.name);
                } else {
                    let _ = write!(out, "{} = {:?}", p.name, p.value);
                }
            }),
            Node::Str { op, pairs } => {
                let verb = match op {
                    StrOp::Exact => "=",
                    StrOp::Prefix => "starts with",
                    StrOp::Suffix => "ends with",
                };
                join(out, " AND ", pairs, |out, p| {
                    let _ = write!(out, "{} {verb} {:?}", p.name, p.value);
                });
            }
            Node::All(children) => join(out, " AND ", children, |out, c| {
                c.describe_into(out, Prec::And);
            }),
            Node::Any(children) => join(out, " OR ", children, |out, c| {
                c.describe_into(out, Prec::Or);
            }),
            Node::Not(child) => {
                out.push_str("NOT ");
                // Always parenthesise the operand of NOT unless it is a single test.
                if child.precedence() == Prec::Atom {
                    out.push('(');
                    child.describe_into(out, Prec::Atom);
                    out.push(')');
                } else {
                    child.describe_into(out, Prec::Not);
                }
            }
            Node::Cesql(expr) => {
                let _ = write!(out, "cesql({})", expr.source());
            }
        }
        if wrap {
            out.push(')');
        }
    }

    fn precedence(&self) -> Prec {
        match self {
            Node::Attributes(p) | Node::Str { pairs: p, .. } if p.len() > 1 => Prec::And,
            Node::All(c) if c.len() > 1 => Prec::And,
            Node::All(c) => c.first().map_or(Prec::Atom, Node::precedence),
            Node::Any(c) if c.len() > 1 => Prec::Or,
            Node::Any(c) => c.first().map_or(Prec::Atom, Node::precedence),
            _ => Prec::Atom,
        }
    }
}

/// Binding strength in descriptions: what a node is, or what it sits under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prec {
    /// A single test, or the top level.
    Atom,
    And,
    Or,
    Not,
}

fn join<T>(out: &mut String, sep: &str, items: &[T], mut each: impl FnMut(&mut String, &T)) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        each(out, item);
    }
}

/// Room for the canonical form of any `i32` ("-2147483648" is 11 bytes).
pub(crate) struct IntBuf([u8; 11]);

impl IntBuf {
    pub(crate) fn new() -> IntBuf {
        IntBuf([0; 11])
    }
}

/// The canonical string of an Integer, written into `buf` (no allocation).
pub(crate) fn canonical_int(i: i32, buf: &mut IntBuf) -> &str {
    let mut n = i.unsigned_abs();
    let mut pos = buf.0.len();
    loop {
        pos -= 1;
        // `n % 10` is below 10, so the cast cannot truncate.
        buf.0[pos] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if i < 0 {
        pos -= 1;
        buf.0[pos] = b'-';
    }
    // Only ASCII digits and '-' were written.
    std::str::from_utf8(&buf.0[pos..]).unwrap_or_default()
}

fn bool_str(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

/// The canonical string form of an attribute value, borrowed or written into `buf`.
pub(crate) fn canonical<'a>(value: &'a AttrValue, buf: &'a mut IntBuf) -> &'a str {
    match value {
        AttrValue::String(s) => s,
        AttrValue::Integer(i) => canonical_int(*i, buf),
        AttrValue::Boolean(b) => bool_str(*b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_int_matches_to_string() {
        for i in [
            0,
            7,
            -7,
            10,
            -10,
            42,
            1_000_000,
            i32::MAX,
            i32::MIN,
            i32::MIN + 1,
        ] {
            assert_eq!(canonical_int(i, &mut IntBuf::new()), i.to_string());
        }
    }

    #[test]
    fn pair_as_int_only_for_canonical_integers() {
        assert_eq!(Pair::new("a", "42").as_int, Some(42));
        assert_eq!(Pair::new("a", "-42").as_int, Some(-42));
        assert_eq!(Pair::new("a", "042").as_int, None);
        assert_eq!(Pair::new("a", "+42").as_int, None);
        assert_eq!(Pair::new("a", "-0").as_int, None);
        assert_eq!(Pair::new("a", "2147483648").as_int, None);
    }
}
