//! The error model (spec 3.2, 3.3, 4.1), the matches() contract, and the
//! `Attributes` implementations.

use std::collections::{BTreeMap, HashMap};

use super::{b, event, i, s};
use crate::{AttrValue, Attributes, ErrorKind, Expression, Value};

fn eval(src: &str) -> crate::Evaluation {
    Expression::parse(src).unwrap().evaluate(&event())
}

#[test]
fn missing_attribute_zero_values() {
    // Spec 3.2 examples.
    let e = eval("true AND (missingattribute = \"\")");
    assert_eq!(e.value, b(false));
    assert_eq!(e.errors.len(), 1);
    assert_eq!(e.errors[0].kind, ErrorKind::MissingAttribute);
    assert!(e.errors[0].message.contains("missingattribute"));

    let e = eval("missingattribute * 5");
    assert_eq!(e.value, i(0));
    assert_eq!(e.errors.len(), 1);

    let e = eval("1 / missingattribute");
    assert_eq!(e.value, i(0));
    assert_eq!(e.errors.len(), 1);
    assert_eq!(e.errors[0].kind, ErrorKind::MissingAttribute);

    // Bare attribute: the return type cannot be determined -> Boolean.
    let e = eval("missingattribute");
    assert_eq!(e.value, b(false));

    let e = eval("LOWER(missingattribute)");
    assert_eq!(e.value, s(""));
}

#[test]
fn every_error_is_reported() {
    let e = eval("missing1 = missing2");
    assert_eq!(e.value, b(false));
    let kinds: Vec<_> = e.errors.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [ErrorKind::MissingAttribute, ErrorKind::MissingAttribute]
    );

    let e = eval("(1 / 0) + NOPE()");
    let kinds: Vec<_> = e.errors.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [ErrorKind::Math, ErrorKind::MissingFunction]);
    assert_eq!(e.value, i(0));

    // AND stops at the first failing operand (short circuit).
    let e = eval("missing1 AND missing2");
    assert_eq!(e.errors.len(), 1);
}

#[test]
fn error_kind_names() {
    let names: Vec<_> = [
        ErrorKind::Parse,
        ErrorKind::Math,
        ErrorKind::Cast,
        ErrorKind::MissingFunction,
        ErrorKind::FunctionEvaluation,
        ErrorKind::MissingAttribute,
        ErrorKind::Generic,
    ]
    .iter()
    .map(ErrorKind::as_str)
    .collect();
    assert_eq!(
        names,
        [
            "parse",
            "math",
            "cast",
            "missingFunction",
            "functionEvaluation",
            "missingAttribute",
            "generic"
        ]
    );
    let e = eval("1 / 0");
    assert_eq!(
        e.errors[0].to_string(),
        format!("math error: {}", e.errors[0].message)
    );
}

#[test]
fn matches_requires_true_and_no_error() {
    let ev = event();
    let m = |src: &str| Expression::parse(src).unwrap().matches(&ev);
    assert!(m("TRUE"));
    assert!(m("myint = 10"));
    assert!(!m("FALSE"));
    // Not a Boolean.
    assert!(!m("1"));
    assert!(!m("'true'"));
    assert!(!m("subject"));
    // Errors make the filter fail even when the value is true.
    assert!(!m("LEFT('true', -1) = 'true'"));
    assert!(m("LEFT('true', 10) = 'true'"));
    let e = eval("NOT (LEFT('true', -1) = 'x')");
    assert_eq!(e.value, b(false));
    assert!(!e.is_match());
    assert!(eval("TRUE").is_match());
    assert!(eval("1").is_ok() && !eval("1").is_match());
}

#[test]
fn attributes_impls() {
    let expr = Expression::parse("type = 'a' AND EXISTS subject").unwrap();

    let mut hm: HashMap<String, String> = HashMap::new();
    hm.insert("type".into(), "a".into());
    hm.insert("subject".into(), "s".into());
    assert!(expr.matches(&hm));

    let bt: BTreeMap<String, String> = hm.clone().into_iter().collect();
    assert!(expr.matches(&bt));

    let refs: HashMap<&str, &str> = [("type", "a"), ("subject", "s")].into_iter().collect();
    assert!(expr.matches(&refs));

    let vals: BTreeMap<&str, Value> = [("type", s("a")), ("subject", s("s"))]
        .into_iter()
        .collect();
    assert!(expr.matches(&vals));

    // Through a trait object and a reference.
    let dynamic: &dyn Attributes = &hm;
    assert!(expr.matches(dynamic));
    assert!(expr.matches(&&hm));

    // No attributes at all.
    assert_eq!(
        Expression::parse("1 + 1").unwrap().evaluate(&()).value,
        i(2)
    );

    // Typed values from a custom event type.
    struct Ev;
    impl Attributes for Ev {
        fn attribute(&self, name: &str) -> Option<AttrValue<'_>> {
            match name {
                "n" => Some(AttrValue::Integer(7)),
                "flag" => Some(AttrValue::Boolean(false)),
                "time" => Some(AttrValue::String("2018-04-26T14:48:09+02:00")),
                _ => None,
            }
        }
    }
    let e = Expression::parse("n * 2 = 14 AND NOT flag AND time LIKE '2018-%'").unwrap();
    assert!(e.matches(&Ev));
    assert_eq!(AttrValue::Integer(3).to_value(), i(3));
    assert_eq!(b(true).as_attr(), AttrValue::Boolean(true));
}

#[test]
fn evaluation_is_repeatable_and_shareable() {
    let expr =
        std::sync::Arc::new(Expression::parse("myint + 1 = 11 AND myext LIKE 'my%'").unwrap());
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let expr = expr.clone();
            std::thread::spawn(move || (0..100).all(|_| expr.matches(&event())))
        })
        .collect();
    for h in handles {
        assert!(h.join().unwrap());
    }
}

#[test]
fn value_helpers() {
    assert_eq!(Value::from(true).as_bool(), Some(true));
    assert_eq!(Value::from(3).as_i32(), Some(3));
    assert_eq!(Value::from("x").as_str(), Some("x"));
    assert_eq!(Value::from(String::from("x")).to_string(), "x");
    assert_eq!(Value::from(-4).to_string(), "-4");
    assert_eq!(Value::from(false).to_string(), "false");
    assert_eq!(Value::from(1).as_bool(), None);
    assert_eq!(Value::from(1).type_of(), crate::Type::Integer);
    assert_eq!(crate::Type::String.to_string(), "String");
}
