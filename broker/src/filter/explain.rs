//! Why an event does not pass a filter: the first failing sub-filter, located by its
//! path in the trigger (`filters[1].prefix`) with a one-line reason. For people
//! debugging filters (`triggerfish filter test`); unlike evaluation, it allocates.

use std::fmt::Write as _;

use super::node::{canonical, IntBuf, Node, Pair, StrOp};
use super::Mismatch;
use crate::event::{AttrValue, Event};

impl Node {
    /// `Ok(())` when the event passes, else the failing sub-filter at or below `path`
    /// (this node's own position, down to its dialect key: `filters[0].any`).
    pub(crate) fn explain(&self, event: &Event, path: &str) -> Result<(), Mismatch> {
        match self {
            Node::Attributes(pairs) => {
                for p in pairs.iter() {
                    match event.get(&p.name) {
                        None => return Err(absent(path, p)),
                        Some(v) if !p.value.is_empty() && !p.equals(v) => {
                            return Err(Mismatch::new(
                                path,
                                format!(
                                    "attribute '{}' = {} is not {:?}",
                                    p.name,
                                    show(v),
                                    p.value
                                ),
                            ))
                        }
                        Some(_) => {}
                    }
                }
                Ok(())
            }
            Node::Str { op, pairs } => {
                for p in pairs.iter() {
                    match event.get(&p.name) {
                        None => return Err(absent(path, p)),
                        Some(v) if !op.test(p, v) => {
                            let verb = match op {
                                StrOp::Exact => "is not",
                                StrOp::Prefix => "does not start with",
                                StrOp::Suffix => "does not end with",
                            };
                            return Err(Mismatch::new(
                                path,
                                format!(
                                    "attribute '{}' = {} {verb} {:?}",
                                    p.name,
                                    show(v),
                                    p.value
                                ),
                            ));
                        }
                        Some(_) => {}
                    }
                }
                Ok(())
            }
            Node::All(children) => {
                for (i, c) in children.iter().enumerate() {
                    c.explain(event, &child_path(path, c, i))?;
                }
                Ok(())
            }
            Node::Any(children) => {
                let mut why = String::new();
                for (i, c) in children.iter().enumerate() {
                    match c.explain(event, &child_path(path, c, i)) {
                        Ok(()) => return Ok(()),
                        Err(m) => {
                            if !why.is_empty() {
                                why.push_str("; ");
                            }
                            let _ = write!(why, "{m}");
                        }
                    }
                }
                Err(Mismatch::new(
                    path,
                    format!("none of the {} filters matched: {why}", children.len()),
                ))
            }
            Node::Not(child) => {
                match child.explain(event, &format!("{path}{}", dialect_suffix(child))) {
                    Ok(()) => Err(Mismatch::new(
                        path,
                        "the negated filter matches the event".to_owned(),
                    )),
                    Err(_) => Ok(()),
                }
            }
            Node::Cesql(expr) => {
                let out = expr.evaluate(event);
                if out.is_match() {
                    return Ok(());
                }
                let reason = if out.errors.is_empty() {
                    match &out.value {
                        cesql::Value::Boolean(_) => {
                            format!("{:?} evaluated to FALSE", expr.source())
                        }
                        other => format!(
                            "{:?} evaluated to {other:?}, not a Boolean TRUE",
                            expr.source()
                        ),
                    }
                } else {
                    let errors: Vec<String> = out.errors.iter().map(ToString::to_string).collect();
                    format!(
                        "{:?} raised {} (an error means no match)",
                        expr.source(),
                        errors.join("; ")
                    )
                };
                Err(Mismatch::new(path, reason))
            }
        }
    }
}

/// The path of child `i` of the `all`/`any` at `path`, down to its dialect.
fn child_path(path: &str, child: &Node, i: usize) -> String {
    format!("{path}[{i}]{}", dialect_suffix(child))
}

/// `.exact`, `.all`, … — the key under which a node was written.
pub(crate) fn dialect_suffix(node: &Node) -> &'static str {
    match node {
        Node::Attributes(_) => "",
        Node::Str { op, .. } => match op {
            StrOp::Exact => ".exact",
            StrOp::Prefix => ".prefix",
            StrOp::Suffix => ".suffix",
        },
        Node::All(_) => ".all",
        Node::Any(_) => ".any",
        Node::Not(_) => ".not",
        Node::Cesql(_) => ".cesql",
    }
}

fn absent(path: &str, p: &Pair) -> Mismatch {
    Mismatch::new(path, format!("attribute '{}' is absent", p.name))
}

/// An attribute value as the user would write it: strings quoted.
fn show(v: &AttrValue) -> String {
    match v {
        AttrValue::String(s) => format!("{s:?}"),
        other => canonical(other, &mut IntBuf::new()).to_owned(),
    }
}
