//! CloudEvents SQL (CESQL) v1: a lexer, parser, static checker and
//! evaluator for the CESQL expression language, used by Triggerfish for the
//! `cesql` trigger filter dialect.
//!
//! # Using it
//!
//! An [`Expression`] is compiled once with [`Expression::parse`] and then
//! evaluated any number of times, from any number of threads, against
//! anything that implements [`Attributes`] (the broker implements it for its
//! event type; maps of strings or [`Value`]s implement it for tests).
//! [`Expression::evaluate`] returns the full [`Evaluation`]: the value plus
//! every error raised, as the spec describes. [`Expression::matches`] is the
//! filtering entry point: an event passes only if the value is
//! `Boolean(true)` and no error occurred (spec 1.2).
//!
//! ```
//! use std::collections::HashMap;
//! use cesql::{ErrorKind, Expression, Value};
//!
//! let expr = Expression::parse("type LIKE 'com.example.%' AND INT(hop) < 10").unwrap();
//! let mut event = HashMap::new();
//! event.insert("type".to_string(), "com.example.created".to_string());
//! event.insert("hop".to_string(), "3".to_string());
//! assert!(expr.matches(&event));
//!
//! // A missing attribute: the value is the zero value of the operator's
//! // return type, and the error is reported.
//! event.remove("hop");
//! let out = expr.evaluate(&event);
//! assert_eq!(out.value, Value::Boolean(false));
//! assert_eq!(out.errors[0].kind, ErrorKind::MissingAttribute);
//! assert!(!expr.matches(&event));
//! ```
//!
//! # Crate layout
//!
//! The source text is first cut into tokens by the lexer (`lexer.rs`),
//! which also decodes string literals and recognises keywords
//! case-insensitively. The parser (`parser.rs`) is a precedence-climbing
//! parser that follows the precedence table of spec section 3.6, bounds
//! nesting depth, and builds the tree defined in `ast.rs`. While parsing,
//! function calls are bound to the built-ins of `functions.rs` by name and
//! arity, identifiers are lowercased, and LIKE patterns are compiled by
//! `like.rs` into matchers (with allocation-free fast paths for exact,
//! prefix, suffix and contains patterns). `check.rs` then walks the tree
//! once to collect static diagnostics (unknown functions, literals that can
//! never be cast).
//!
//! Evaluation (`eval.rs`) walks the tree with borrowed values: strings come
//! straight from the expression or from the event, so the common filters
//! never allocate. Type casts live in `cast.rs`; the public and internal
//! value types in `value.rs`; the error types, including the sink that
//! collects evaluation errors, in `error.rs`. Tests sit in `src/tests/`
//! (table tests derived from the spec and the CESQL TCK, plus property
//! tests that the parser and evaluator never panic); `fuzz/` is a separate
//! cargo-fuzz project (its own workspace) with a `parse_eval` target.
//!
//! # Semantics in brief
//!
//! Every operator and function is total. When an operand fails (an error
//! was recorded while evaluating it) or cannot be cast to the operator's
//! parameter type, the operator returns the zero value of its return type
//! (`false`, `0` or `""`); a missing attribute on its own evaluates to
//! `false`. See `eval.rs` for the full model.

mod ast;
mod cast;
mod check;
mod error;
mod eval;
mod functions;
mod lexer;
mod like;
mod parser;
mod value;

#[cfg(test)]
mod tests;

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::str::FromStr;

pub use error::{ErrorKind, EvalError, ParseError};
pub use parser::MAX_DEPTH;
pub use value::{AttrValue, Type, Value};

use error::Sink;

/// A compiled CESQL expression. Cheap to evaluate repeatedly; `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Expression {
    source: Box<str>,
    root: ast::Expr,
    diagnostics: Vec<EvalError>,
}

impl Expression {
    /// Parse and compile an expression.
    ///
    /// Syntax errors, integer literals outside the 32-bit range, a LIKE
    /// pattern that is not a string literal, and nesting deeper than
    /// [`MAX_DEPTH`] are parse errors. Unknown functions (or a wrong
    /// number of arguments) are not: per the spec they evaluate to `false`
    /// with a missingFunction error; they are also listed by
    /// [`Expression::diagnostics`].
    pub fn parse(src: &str) -> Result<Expression, ParseError> {
        let root = parser::parse(src)?;
        let diagnostics = check::diagnostics(&root);
        Ok(Expression {
            source: src.into(),
            root,
            diagnostics,
        })
    }

    /// Evaluate against an event, returning the value and all errors.
    pub fn evaluate<A: Attributes + ?Sized>(&self, event: &A) -> Evaluation {
        let mut sink = Sink::collecting();
        let value = eval::eval(&self.root, event, &mut sink).into_value();
        Evaluation {
            value,
            errors: sink.into_errors(),
        }
    }

    /// `true` only when the expression evaluates to `Boolean(true)` without
    /// any error. Does not allocate for errors.
    pub fn matches<A: Attributes + ?Sized>(&self, event: &A) -> bool {
        let mut sink = Sink::counting();
        let v = eval::eval(&self.root, event, &mut sink);
        sink.count() == 0 && v == value::Val::Bool(true)
    }

    /// The source text this expression was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Errors that can be predicted statically: calls to unknown functions
    /// (missingFunction) and literal operands that can never be cast to the
    /// required type (cast). Such expressions parse, and raise these errors
    /// whenever the offending part is evaluated.
    pub fn diagnostics(&self) -> &[EvalError] {
        &self.diagnostics
    }

    /// The static return type of the whole expression, or `None` when it
    /// is a bare attribute reference (whose type depends on the event).
    pub fn return_type(&self) -> Option<Type> {
        self.root.static_type()
    }
}

impl FromStr for Expression {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Expression::parse(s)
    }
}

impl fmt::Display for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// The outcome of an evaluation: CESQL always produces a value (there is no
/// null), plus the list of errors raised, in evaluation order (empty when
/// evaluation succeeded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// The value of the expression.
    pub value: Value,
    /// The errors raised while evaluating.
    pub errors: Vec<EvalError>,
}

impl Evaluation {
    /// No error occurred.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// The value is `Boolean(true)` and no error occurred.
    pub fn is_match(&self) -> bool {
        self.errors.is_empty() && self.value == Value::Boolean(true)
    }

    /// Whether an error of this kind was raised.
    pub fn has_error(&self, kind: ErrorKind) -> bool {
        self.errors.iter().any(|e| e.kind == kind)
    }
}

/// Read access to an event's context attributes and extensions.
///
/// `name` is always lowercase. Return `None` when the attribute is absent.
/// CloudEvents Integer maps to [`AttrValue::Integer`], Boolean to
/// [`AttrValue::Boolean`], and every other type (String, URI,
/// URI-reference, Timestamp, Binary) to its canonical string.
pub trait Attributes {
    /// Look up an attribute by lowercase name.
    fn attribute(&self, name: &str) -> Option<AttrValue<'_>>;
}

impl<T: Attributes + ?Sized> Attributes for &T {
    fn attribute(&self, name: &str) -> Option<AttrValue<'_>> {
        (**self).attribute(name)
    }
}

/// Values that can stand for an attribute in the map implementations of
/// [`Attributes`].
pub trait AsAttrValue {
    /// Borrow as an attribute value.
    fn as_attr_value(&self) -> AttrValue<'_>;
}

impl AsAttrValue for String {
    fn as_attr_value(&self) -> AttrValue<'_> {
        AttrValue::String(self)
    }
}

impl AsAttrValue for &str {
    fn as_attr_value(&self) -> AttrValue<'_> {
        AttrValue::String(self)
    }
}

impl AsAttrValue for Box<str> {
    fn as_attr_value(&self) -> AttrValue<'_> {
        AttrValue::String(self)
    }
}

impl AsAttrValue for Value {
    fn as_attr_value(&self) -> AttrValue<'_> {
        self.as_attr()
    }
}

impl<K, V, S> Attributes for HashMap<K, V, S>
where
    K: Borrow<str> + Hash + Eq,
    V: AsAttrValue,
    S: BuildHasher,
{
    fn attribute(&self, name: &str) -> Option<AttrValue<'_>> {
        self.get(name).map(AsAttrValue::as_attr_value)
    }
}

impl<K, V> Attributes for BTreeMap<K, V>
where
    K: Borrow<str> + Ord,
    V: AsAttrValue,
{
    fn attribute(&self, name: &str) -> Option<AttrValue<'_>> {
        self.get(name).map(AsAttrValue::as_attr_value)
    }
}

/// An event with no attributes at all (useful for constant expressions).
impl Attributes for () {
    fn attribute(&self, _name: &str) -> Option<AttrValue<'_>> {
        None
    }
}

#[cfg(test)]
mod static_assertions {
    use super::Expression;

    fn assert_send_sync<T: Send + Sync + 'static>() {}

    #[test]
    fn expression_is_send_sync() {
        assert_send_sync::<Expression>();
    }
}
