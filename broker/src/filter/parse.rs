//! `spec.filters` (YAML values, as the config loader keeps them) → compiled [`Node`]s.
//!
//! Every problem is reported, each with its position (`filters[2].any[0].exact.type`),
//! and any problem rejects the whole filter: an invalid sub-filter is never skipped
//! (Knative skips it, which can widen a trigger to every event).

use serde_yaml_ng::Value;

use super::node::{sort_pairs, Node, Pair, StrOp};
use super::FilterError;

/// Dialects this version understands, as Knative names them.
pub(crate) const DIALECTS: [&str; 7] = ["exact", "prefix", "suffix", "all", "any", "not", "cesql"];

/// How deep `all`/`any`/`not` may nest. YAML itself is bounded; this keeps evaluation,
/// descriptions and explanations shallow too.
pub(crate) const MAX_NESTING: usize = 32;

pub(crate) struct Parser {
    pub(crate) errors: Vec<FilterError>,
}

impl Parser {
    fn err(&mut self, field: &str, reason: impl Into<String>) {
        self.errors.push(FilterError {
            field: field.to_owned(),
            reason: reason.into(),
        });
    }

    /// Compiles a list of filters (`filters`, `all`, `any`) at `path`.
    pub(crate) fn list(&mut self, items: &[Value], path: &str, depth: usize) -> Vec<Node> {
        items
            .iter()
            .enumerate()
            .filter_map(|(i, v)| self.element(v, &format!("{path}[{i}]"), depth))
            .collect()
    }

    /// Compiles one filter element: a mapping with exactly one dialect key.
    fn element(&mut self, value: &Value, path: &str, depth: usize) -> Option<Node> {
        if depth > MAX_NESTING {
            self.err(
                path,
                format!("filters nest more than {MAX_NESTING} levels deep"),
            );
            return None;
        }
        let Value::Mapping(map) = untag(value) else {
            self.err(
                path,
                format!(
                    "must be a filter such as {{exact: {{type: com.example.created}}}}, not {}",
                    kind(value)
                ),
            );
            return None;
        };
        let mut entries = Vec::with_capacity(1);
        for (k, v) in map {
            match untag(k) {
                Value::String(k) => entries.push((k.as_str(), v)),
                other => self.err(
                    path,
                    format!("dialect names must be strings, not {}", kind(other)),
                ),
            }
        }
        match entries.as_slice() {
            [] => {
                self.err(
                    path,
                    format!(
                        "empty filter: name exactly one dialect ({})",
                        DIALECTS.join(", ")
                    ),
                );
                None
            }
            [(dialect, v)] => self.dialect(dialect, v, &format!("{path}.{dialect}"), depth),
            many => {
                let names: Vec<&str> = many.iter().map(|(k, _)| *k).collect();
                self.err(
                    path,
                    format!(
                        "multiple dialects found ({}): put each in its own element of the list (elements are ANDed)",
                        names.join(", ")
                    ),
                );
                None
            }
        }
    }

    fn dialect(&mut self, dialect: &str, value: &Value, path: &str, depth: usize) -> Option<Node> {
        let value = untag(value);
        match dialect {
            "exact" => self.pairs(StrOp::Exact, value, path),
            "prefix" => self.pairs(StrOp::Prefix, value, path),
            "suffix" => self.pairs(StrOp::Suffix, value, path),
            "all" | "any" => {
                let Value::Sequence(items) = value else {
                    self.err(
                        path,
                        format!("must be a list of filters, not {}", kind(value)),
                    );
                    return None;
                };
                if items.is_empty() {
                    // Subscriptions API: "there MUST be at least one filter expression".
                    self.err(path, "must hold at least one filter");
                    return None;
                }
                let before = self.errors.len();
                let children = self.list(items, path, depth + 1);
                if self.errors.len() != before {
                    return None;
                }
                let children = children.into_boxed_slice();
                Some(if dialect == "all" {
                    Node::All(children)
                } else {
                    Node::Any(children)
                })
            }
            "not" => {
                if let Value::Sequence(_) = value {
                    self.err(
                        path,
                        "must be one filter, not a list (wrap a list in any or all)",
                    );
                    return None;
                }
                self.element(value, path, depth + 1)
                    .map(|child| Node::Not(Box::new(child)))
            }
            "cesql" => {
                let Value::String(src) = value else {
                    self.err(
                        path,
                        format!(
                            "must be a CloudEvents SQL expression string, not {}",
                            kind(value)
                        ),
                    );
                    return None;
                };
                match super::sql::compile(src) {
                    Ok(expr) => Some(Node::Cesql(Box::new(expr))),
                    Err(reason) => {
                        self.err(path, reason);
                        None
                    }
                }
            }
            "sql" => {
                self.err(
                    path,
                    "unknown filter dialect 'sql': Knative (and Triggerfish) name the CloudEvents SQL dialect 'cesql'",
                );
                None
            }
            other => {
                self.err(
                    path,
                    format!(
                        "unknown filter dialect '{other}' (known: {})",
                        DIALECTS.join(", ")
                    ),
                );
                None
            }
        }
    }

    /// `exact`, `prefix`, `suffix`: a non-empty map of attribute name → non-empty string.
    fn pairs(&mut self, op: StrOp, value: &Value, path: &str) -> Option<Node> {
        let Value::Mapping(map) = value else {
            self.err(
                path,
                format!(
                    "must be a map of attribute names to strings, not {}",
                    kind(value)
                ),
            );
            return None;
        };
        if map.is_empty() {
            self.err(path, "must name at least one attribute");
            return None;
        }
        let before = self.errors.len();
        let mut pairs = Vec::with_capacity(map.len());
        for (k, v) in map {
            let Value::String(name) = untag(k) else {
                self.err(
                    path,
                    format!("attribute names must be strings, not {}", kind(k)),
                );
                continue;
            };
            if name.is_empty() {
                self.err(path, "attribute names must not be empty");
                continue;
            }
            let field = format!("{path}.{name}");
            if !valid_attribute_name(name) {
                self.err(&field, "attribute names must match ^[a-z][a-z0-9]*$");
                continue;
            }
            match untag(v) {
                Value::String(s) if s.is_empty() => self.err(
                    &field,
                    format!(
                        "the value must not be empty (to require only that the attribute exists, use cesql: \"EXISTS {name}\")"
                    ),
                ),
                Value::String(s) => pairs.push(Pair::new(name, s)),
                Value::Number(n) => self.err(
                    &field,
                    format!("the value must be a string: quote it ('{n}')"),
                ),
                Value::Bool(b) => self.err(
                    &field,
                    format!("the value must be a string: quote it ('{b}')"),
                ),
                other => self.err(
                    &field,
                    format!("the value must be a string, not {}", kind(other)),
                ),
            }
        }
        if self.errors.len() != before {
            return None;
        }
        sort_pairs(&mut pairs);
        Some(Node::Str {
            op,
            pairs: pairs.into_boxed_slice(),
        })
    }
}

/// Knative's rule for attribute names in trigger filters.
pub(crate) fn valid_attribute_name(name: &str) -> bool {
    name.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// YAML tags (`!foo`) carry no meaning here; look through them.
fn untag(v: &Value) -> &Value {
    match v {
        Value::Tagged(t) => untag(&t.value),
        other => other,
    }
}

fn kind(v: &Value) -> &'static str {
    match untag(v) {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a map",
        Value::Tagged(_) => "a tagged value",
    }
}
