//! Trigger filters, compiled once when the config loads and evaluated per event
//! without allocating.
//!
//! A trigger selects events with one of two Knative fields:
//!
//! - `spec.filter.attributes` (legacy): every key must be present in the event; a
//!   non-empty value must equal the attribute's canonical string form exactly
//!   (case-sensitive); an empty value means "present, any value".
//! - `spec.filters`: the CloudEvents Subscriptions API dialects `exact`, `prefix`,
//!   `suffix` (maps of attribute → non-empty string, every entry must hold, the
//!   attribute must exist, non-string values compare by canonical string form), `all`,
//!   `any`, `not`, and `cesql` (CloudEvents SQL v1, see the `cesql` crate). The list is
//!   an implicit `all`; when it is non-empty it overrides `filter.attributes`.
//!
//! Invalid filters fail closed: [`Filter::from_filters`] rejects the whole filter with
//! every problem located (`filters[2].any[0].exact.type`), where Knative skips the bad
//! part and can end up passing every event. A CESQL evaluation error means "no match".
//!
//! # Layout
//!
//! - `node.rs`: the compiled tree ([`Filter`] is a list of nodes), evaluation and
//!   [`Filter::describe`].
//! - `parse.rs`: YAML values of `spec.filters` → nodes, with located errors.
//! - `sql.rs`: compiling `cesql` expressions and the zero-copy
//!   [`cesql::Attributes`] view of an [`Event`].
//! - `explain.rs`: which sub-filter rejected an event, and why ([`Filter::explain`]).
//! - `index.rs`: [`FilterIndex`], which finds the triggers whose filters require an
//!   exact `type` or `source` by hash lookup instead of testing each one.

mod explain;
mod index;
mod node;
mod parse;
mod sql;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;

use crate::event::Event;
/// The CloudEvents SQL crate the `cesql` dialect is built on, for tools that evaluate
/// expressions directly.
pub use ::cesql;
pub use index::FilterIndex;
use node::{sort_pairs, Node, Pair, Prec};

/// A compiled trigger filter. Cheap to clone (the compiled tree is shared).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Implicit `all`; empty matches every event.
    nodes: Arc<[Node]>,
    /// Where the nodes came from, for explanations.
    origin: Origin,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Origin {
    #[default]
    Attributes,
    Filters,
}

/// A problem in `spec.filters`, located by its path below the trigger's `spec`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FilterError {
    /// Where, e.g. `filters[2].any[0].exact.type` (prefix it with `spec.`).
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

/// Why an event does not pass a filter: the first failing sub-filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Mismatch {
    /// The failing sub-filter, e.g. `filters[1].prefix` or `filter.attributes`.
    pub field: String,
    /// Why it fails, e.g. `attribute 'source' = "/a" does not start with "/b"`.
    pub reason: String,
}

impl Mismatch {
    fn new(field: &str, reason: String) -> Mismatch {
        Mismatch {
            field: field.to_owned(),
            reason,
        }
    }
}

impl Filter {
    /// The filter that matches every event.
    pub fn match_all() -> Filter {
        Filter::default()
    }

    /// Compiles `filter.attributes`. Keys are checked by the config loader.
    pub fn attributes<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Filter {
        let mut pairs: Vec<Pair> = pairs.into_iter().map(|(k, v)| Pair::new(k, v)).collect();
        if pairs.is_empty() {
            return Filter::match_all();
        }
        // Most selective checks first: `type` and `source` differ between events far
        // more often than other attributes.
        sort_pairs(&mut pairs);
        Filter {
            nodes: Arc::new([Node::Attributes(pairs.into_boxed_slice())]),
            origin: Origin::Attributes,
        }
    }

    /// Compiles `spec.filters` (an implicit `all`; an empty list matches every event).
    ///
    /// Every problem is returned, each located by its path (`filters[0].exact.type`);
    /// one problem rejects the whole filter.
    pub fn from_filters(filters: &[serde_yaml_ng::Value]) -> Result<Filter, Vec<FilterError>> {
        let mut parser = parse::Parser { errors: Vec::new() };
        let nodes = parser.list(filters, "filters", 0);
        if !parser.errors.is_empty() {
            return Err(parser.errors);
        }
        Ok(Filter {
            nodes: nodes.into(),
            origin: Origin::Filters,
        })
    }

    /// Compiles `spec.filters` from YAML text holding the list, e.g.
    /// `[{prefix: {type: com.example.}}]` (for tests, benchmarks and tools).
    pub fn from_filters_yaml(yaml: &str) -> Result<Filter, Vec<FilterError>> {
        let values: Vec<serde_yaml_ng::Value> = serde_yaml_ng::from_str(yaml).map_err(|e| {
            vec![FilterError {
                field: "filters".to_owned(),
                reason: format!("not a YAML list of filters: {e}"),
            }]
        })?;
        Filter::from_filters(&values)
    }

    /// Whether the event passes.
    #[inline]
    pub fn matches(&self, event: &Event) -> bool {
        self.nodes.iter().all(|n| n.matches(event))
    }

    /// Whether this filter passes every event (no filter at all).
    pub fn is_match_all(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The value attribute `name` must equal (canonical string form) for any event to
    /// pass: from `filter.attributes`, or from an `exact` at the top level or nested
    /// only in `all`s. `None` when the filter does not pin the attribute that way.
    pub fn required_exact(&self, name: &str) -> Option<&str> {
        self.nodes.iter().find_map(|n| n.required_exact(name))
    }

    /// `Ok(())` when the event passes; otherwise the first failing sub-filter, located
    /// as written in the trigger (`filters[1].prefix`, `filter.attributes`), and why.
    pub fn explain(&self, event: &Event) -> Result<(), Mismatch> {
        for (i, n) in self.nodes.iter().enumerate() {
            let path = match self.origin {
                Origin::Attributes => "filter.attributes".to_owned(),
                Origin::Filters => format!("filters[{i}]{}", explain::dialect_suffix(n)),
            };
            n.explain(event, &path)?;
        }
        Ok(())
    }

    /// A one-line human description, for `config check` and logs.
    pub fn describe(&self) -> String {
        if self.nodes.is_empty() {
            return "all events".to_owned();
        }
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if i > 0 {
                out.push_str(" AND ");
            }
            let ctx = if self.nodes.len() > 1 {
                Prec::And
            } else {
                Prec::Atom
            };
            n.describe_into(&mut out, ctx);
        }
        out
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}
