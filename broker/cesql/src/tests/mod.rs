//! Table tests derived from the CESQL v1 spec and its TCK, and property
//! tests that parsing and evaluation never panic.
#![allow(clippy::unwrap_used)]

mod functions;
mod operators;
mod parsing;
mod props;
mod semantics;
mod tck;

use std::collections::HashMap;

use crate::{ErrorKind, Expression, Value};

/// An event with the required attributes plus a few typed extensions.
pub(crate) fn event() -> HashMap<String, Value> {
    let mut m = HashMap::new();
    m.insert("specversion".into(), Value::from("1.0"));
    m.insert("id".into(), Value::from("myId"));
    m.insert("source".into(), Value::from("http://localhost/source"));
    m.insert("type".into(), Value::from("com.example.type"));
    m.insert("subject".into(), Value::from("mySubject"));
    m.insert("myint".into(), Value::Integer(10));
    m.insert("mybool".into(), Value::Boolean(true));
    m.insert("myext".into(), Value::from("my extension"));
    m.insert("numstr".into(), Value::from("42"));
    m.insert("boolstr".into(), Value::from("TRUE"));
    m
}

/// One table row: expression, expected value, expected error kind (if any).
pub(crate) type Row = (&'static str, Value, Option<ErrorKind>);

pub(crate) fn b(v: bool) -> Value {
    Value::Boolean(v)
}

pub(crate) fn i(v: i32) -> Value {
    Value::Integer(v)
}

pub(crate) fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

/// Check every row against `ev`; report all failures at once.
pub(crate) fn check_rows<A: crate::Attributes + ?Sized>(ev: &A, rows: &[Row]) {
    let mut failures = Vec::new();
    for (src, want, want_err) in rows {
        let expr = match Expression::parse(src) {
            Ok(e) => e,
            Err(e) => {
                failures.push(format!("{src:?}: unexpected parse error: {e}"));
                continue;
            }
        };
        let got = expr.evaluate(ev);
        if &got.value != want {
            failures.push(format!(
                "{src:?}: value {:?}, want {want:?} ({:?})",
                got.value, got.errors
            ));
        }
        match want_err {
            None if !got.errors.is_empty() => {
                failures.push(format!("{src:?}: unexpected errors {:?}", got.errors));
            }
            Some(k) if !got.has_error(*k) => {
                failures.push(format!("{src:?}: want {k} error, got {:?}", got.errors));
            }
            _ => {}
        }
        // `matches` must agree with the full evaluation.
        let want_match = want_err.is_none() && *want == Value::Boolean(true);
        if expr.matches(ev) != want_match {
            failures.push(format!("{src:?}: matches() disagrees with evaluate()"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing rows:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Assert that each source fails to parse.
pub(crate) fn check_parse_errors(srcs: &[&str]) {
    let bad: Vec<_> = srcs
        .iter()
        .filter(|src| Expression::parse(src).is_ok())
        .collect();
    assert!(bad.is_empty(), "expected parse errors for {bad:?}");
}
