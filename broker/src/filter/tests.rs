//! Filter semantics, written from the Subscriptions API spec (section 3.2.4) and
//! Knative's behaviour (reference section 2.3), except where we deliberately fail
//! closed; compile errors; descriptions and explanations.

use super::*;
use crate::event::AttrValue;

fn event() -> Event {
    let mut e = Event::new();
    e.set_str("specversion", "1.0");
    e.set_str("id", "1");
    e.set_str("type", "com.example.order.created");
    e.set_str("source", "/shop/eu");
    e.set_str("subject", "orders/42");
    e.set_str("empty", "");
    e.set("count", AttrValue::Integer(42));
    e.set("neg", AttrValue::Integer(-7));
    e.set("flag", AttrValue::Boolean(false));
    e
}

fn filter(yaml: &str) -> Filter {
    match Filter::from_filters_yaml(yaml) {
        Ok(f) => f,
        Err(errors) => panic!("{yaml}: {errors:?}"),
    }
}

fn errors(yaml: &str) -> Vec<String> {
    match Filter::from_filters_yaml(yaml) {
        Ok(f) => panic!("{yaml} should be rejected, compiled to {}", f.describe()),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

/// Runs (filters YAML, expected verdict on `event()`) cases.
fn check(cases: &[(&str, bool)]) {
    let e = event();
    for (yaml, want) in cases {
        let f = filter(yaml);
        assert_eq!(f.matches(&e), *want, "{yaml} ({})", f.describe());
        assert_eq!(f.explain(&e).is_ok(), *want, "explain agrees: {yaml}");
    }
}

#[test]
fn attributes_semantics() {
    let e = event();
    let cases: &[(&[(&str, &str)], bool)] = &[
        (&[], true),
        (&[("type", "com.example.order.created")], true),
        (&[("type", "com.example.Order.created")], false),
        (&[("type", "com.example")], false),
        (
            &[
                ("type", "com.example.order.created"),
                ("source", "/shop/eu"),
            ],
            true,
        ),
        (
            &[("type", "com.example.order.created"), ("source", "/other")],
            false,
        ),
        (&[("dataschema", "")], false),
        (&[("source", "")], true),
        (&[("empty", "")], true),
        (&[("empty", "x")], false),
        (&[("count", "42")], true),
        (&[("count", "042")], false),
        (&[("neg", "-7")], true),
        (&[("flag", "false")], true),
        (&[("flag", "False")], false),
    ];
    for (pairs, want) in cases {
        let f = Filter::attributes(pairs.iter().copied());
        assert_eq!(f.matches(&e), *want, "{pairs:?}");
        assert_eq!(f.explain(&e).is_ok(), *want, "{pairs:?}");
    }
}

#[test]
fn empty_filters_match_everything() {
    let f = filter("[]");
    assert!(f.is_match_all());
    assert!(f.matches(&event()));
    assert!(f.matches(&Event::new()));
    assert_eq!(f.describe(), "all events");
}

#[test]
fn exact() {
    check(&[
        ("[{exact: {type: com.example.order.created}}]", true),
        // Case-sensitive, whole value.
        ("[{exact: {type: com.example.Order.created}}]", false),
        ("[{exact: {type: com.example.order}}]", false),
        // Several keys: all must match.
        (
            "[{exact: {type: com.example.order.created, source: /shop/eu}}]",
            true,
        ),
        (
            "[{exact: {type: com.example.order.created, source: /shop/us}}]",
            false,
        ),
        // The attribute must exist.
        ("[{exact: {dataschema: 'http://x/'}}]", false),
        // Non-string values compare by their canonical string form.
        ("[{exact: {count: '42'}}]", true),
        ("[{exact: {count: '042'}}]", false),
        ("[{exact: {count: '+42'}}]", false),
        ("[{exact: {neg: '-7'}}]", true),
        ("[{exact: {flag: 'false'}}]", true),
        ("[{exact: {flag: 'FALSE'}}]", false),
    ]);
}

#[test]
fn prefix() {
    check(&[
        ("[{prefix: {type: com.example.}}]", true),
        ("[{prefix: {type: com.example.order.created}}]", true),
        ("[{prefix: {type: com.example.order.created.v2}}]", false),
        ("[{prefix: {type: Com.}}]", false),
        ("[{prefix: {type: com., source: /shop}}]", true),
        ("[{prefix: {type: com., source: /store}}]", false),
        ("[{prefix: {dataschema: http}}]", false),
        ("[{prefix: {count: '4'}}]", true),
        ("[{prefix: {count: '2'}}]", false),
        ("[{prefix: {neg: '-'}}]", true),
        ("[{prefix: {flag: fa}}]", true),
    ]);
}

#[test]
fn suffix() {
    check(&[
        ("[{suffix: {type: .created}}]", true),
        ("[{suffix: {type: .Created}}]", false),
        ("[{suffix: {type: .deleted}}]", false),
        ("[{suffix: {type: .created, subject: /42}}]", true),
        ("[{suffix: {type: .created, subject: /43}}]", false),
        ("[{suffix: {dataschema: .json}}]", false),
        ("[{suffix: {count: '2'}}]", true),
        ("[{suffix: {count: '4'}}]", false),
        ("[{suffix: {flag: lse}}]", true),
    ]);
}

#[test]
fn all_any_not() {
    check(&[
        ("[{all: [{prefix: {type: com.}}, {suffix: {type: .created}}]}]", true),
        ("[{all: [{prefix: {type: com.}}, {suffix: {type: .deleted}}]}]", false),
        ("[{any: [{exact: {type: nope}}, {exact: {source: /shop/eu}}]}]", true),
        ("[{any: [{exact: {type: nope}}, {exact: {source: /nope}}]}]", false),
        ("[{any: [{exact: {dataschema: x}}]}]", false),
        // `not` of a failing sub-filter passes, of a passing one fails.
        ("[{not: {exact: {type: nope}}}]", true),
        ("[{not: {exact: {type: com.example.order.created}}}]", false),
        // An absent attribute fails `exact`, so `not` passes.
        ("[{not: {exact: {dataschema: x}}}]", true),
        ("[{not: {not: {prefix: {type: com.}}}}]", true),
        (
            "[{any: [{all: [{exact: {type: nope}}, {exact: {source: /shop/eu}}]}, {not: {suffix: {subject: /41}}}]}]",
            true,
        ),
    ]);
}

#[test]
fn the_list_is_an_implicit_all() {
    check(&[
        ("[{prefix: {type: com.}}, {suffix: {type: .created}}]", true),
        (
            "[{prefix: {type: com.}}, {suffix: {type: .deleted}}]",
            false,
        ),
        ("[{exact: {type: nope}}, {prefix: {type: com.}}]", false),
    ]);
}

#[test]
fn cesql() {
    check(&[
        (
            "[{cesql: \"type LIKE 'com.example.%' AND source = '/shop/eu'\"}]",
            true,
        ),
        ("[{cesql: \"type = 'nope'\"}]", false),
        ("[{cesql: \"count > 40 AND NOT flag\"}]", true),
        (
            "[{cesql: \"EXISTS subject AND subject LIKE 'orders/%'\"}]",
            true,
        ),
        // Keywords and function names are case-insensitive.
        ("[{cesql: \"upper(type) like 'COM.%'\"}]", true),
        // An evaluation error means no match, whatever the value.
        ("[{cesql: \"missing = 'x'\"}]", false),
        ("[{cesql: \"NOT (missing = 'x')\"}]", false),
        ("[{cesql: \"INT(subject) > 0\"}]", false),
        ("[{cesql: \"count / 0 = 0\"}]", false),
        // A bare attribute that is not a Boolean does not match.
        ("[{cesql: subject}]", false),
        ("[{cesql: flag}]", false),
        ("[{not: {cesql: flag}}]", true),
    ]);
    let mut e = event();
    e.set("flag", AttrValue::Boolean(true));
    assert!(filter("[{cesql: flag}]").matches(&e));
}

#[test]
fn describe_is_readable() {
    let f = Filter::attributes([("source", ""), ("type", "t")]);
    assert_eq!(f.describe(), "type = \"t\" AND source present");
    assert_eq!(Filter::match_all().describe(), "all events");
    let cases = [
        (
            "[{exact: {source: /s, type: t}}]",
            r#"type = "t" AND source = "/s""#,
        ),
        (
            "[{prefix: {type: com.}}, {suffix: {subject: .json}}]",
            r#"type starts with "com." AND subject ends with ".json""#,
        ),
        (
            "[{any: [{exact: {type: a}}, {exact: {type: b, source: /s}}]}]",
            r#"type = "a" OR (type = "b" AND source = "/s")"#,
        ),
        (
            "[{exact: {type: a}}, {any: [{exact: {type: a}}, {not: {exact: {source: /x}}}]}]",
            r#"type = "a" AND (type = "a" OR NOT (source = "/x"))"#,
        ),
        (
            "[{not: {all: [{prefix: {type: a}}, {cesql: \"subject = 'x'\"}]}}]",
            r#"NOT (type starts with "a" AND cesql(subject = 'x'))"#,
        ),
        ("[{all: [{any: [{exact: {type: a}}]}]}]", r#"type = "a""#),
    ];
    for (yaml, want) in cases {
        assert_eq!(filter(yaml).describe(), want, "{yaml}");
    }
}

#[test]
fn explain_names_the_failing_sub_filter() {
    let e = event();
    let cases = [
        (
            "[{exact: {type: com.example.order.created}}, {prefix: {source: /us}}]",
            r#"filters[1].prefix: attribute 'source' = "/shop/eu" does not start with "/us""#,
        ),
        (
            "[{suffix: {dataschema: .json}}]",
            "filters[0].suffix: attribute 'dataschema' is absent",
        ),
        (
            "[{all: [{prefix: {type: com.}}, {exact: {count: '41'}}]}]",
            r#"filters[0].all[1].exact: attribute 'count' = 42 is not "41""#,
        ),
        (
            "[{not: {suffix: {type: .created}}}]",
            "filters[0].not: the negated filter matches the event",
        ),
        (
            "[{any: [{exact: {type: a}}, {not: {prefix: {type: com}}}]}]",
            r#"filters[0].any: none of the 2 filters matched: filters[0].any[0].exact: attribute 'type' = "com.example.order.created" is not "a"; filters[0].any[1].not: the negated filter matches the event"#,
        ),
        (
            "[{cesql: \"source = '/x'\"}]",
            r#"filters[0].cesql: "source = '/x'" evaluated to FALSE"#,
        ),
        (
            "[{cesql: subject}]",
            r#"filters[0].cesql: "subject" evaluated to String("orders/42"), not a Boolean TRUE"#,
        ),
    ];
    for (yaml, want) in cases {
        let got = filter(yaml).explain(&e).expect_err(yaml).to_string();
        assert_eq!(got, want, "{yaml}");
    }
    let m = filter("[{cesql: \"missing = 'x'\"}]")
        .explain(&e)
        .expect_err("missing attribute");
    assert_eq!(m.field, "filters[0].cesql");
    assert!(m.reason.contains("missingAttribute"), "{m}");
    let m = Filter::attributes([("type", "x")])
        .explain(&e)
        .expect_err("legacy");
    assert_eq!(
        m.to_string(),
        r#"filter.attributes: attribute 'type' = "com.example.order.created" is not "x""#
    );
}

#[test]
fn invalid_filters_are_rejected_with_their_position() {
    let cases = [
        ("[{exact: {type: a}, prefix: {type: b}}]", "filters[0]: multiple dialects found (exact, prefix)"),
        ("[{}]", "filters[0]: empty filter"),
        ("[{sql: \"type = 'x'\"}]", "filters[0].sql: unknown filter dialect 'sql'"),
        ("[{regex: {type: '.*'}}]", "filters[0].regex: unknown filter dialect 'regex'"),
        ("[{exact: {}}]", "filters[0].exact: must name at least one attribute"),
        ("[{exact: {type: ''}}]", "filters[0].exact.type: the value must not be empty"),
        ("[{prefix: {'': x}}]", "filters[0].prefix: attribute names must not be empty"),
        ("[{suffix: {Type: x}}]", "filters[0].suffix.Type: attribute names must match"),
        ("[{exact: {count: 42}}]", "filters[0].exact.count: the value must be a string: quote it ('42')"),
        ("[{exact: {flag: true}}]", "filters[0].exact.flag: the value must be a string"),
        ("[{exact: null}]", "filters[0].exact: must be a map"),
        ("[{exact: [type]}]", "filters[0].exact: must be a map"),
        ("[{all: []}]", "filters[0].all: must hold at least one filter"),
        ("[{any: {exact: {type: a}}}]", "filters[0].any: must be a list of filters"),
        ("[{not: [{exact: {type: a}}]}]", "filters[0].not: must be one filter, not a list"),
        ("[{not: {}}]", "filters[0].not: empty filter"),
        ("[exact]", "filters[0]: must be a filter"),
        ("[{cesql: 42}]", "filters[0].cesql: must be a CloudEvents SQL expression string"),
        ("[{cesql: \"type =\"}]", "filters[0].cesql: parse error at byte 6"),
        ("[{cesql: \"NOPE(type)\"}]", "filters[0].cesql: missingFunction"),
        ("[{cesql: \"1 + 1\"}]", "filters[0].cesql: the expression always yields Integer"),
        (
            "[{exact: {type: a}}, {exact: {type: b}}, {any: [{exact: {type: ''}}]}]",
            "filters[2].any[0].exact.type: the value must not be empty",
        ),
        (
            "[{all: [{not: {any: [{exact: {type: a}}, {prefix: {source: x}, suffix: {source: y}}]}}]}]",
            "filters[0].all[0].not.any[1]: multiple dialects found",
        ),
    ];
    for (yaml, want) in cases {
        let errs = errors(yaml);
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "{yaml}: want {want:?} in {errs:#?}"
        );
    }
    // The parse error says what was expected.
    let errs = errors("[{cesql: \"type = 'a' AND (source = 'b'\"}]");
    assert!(errs[0].contains("expected"), "{errs:?}");
}

#[test]
fn every_problem_is_reported_and_nothing_is_skipped() {
    let errs = errors("[{exact: {type: a}}, {exact: {type: ''}}, {prefix: {}}, {bogus: 1}]");
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(errs[0].starts_with("filters[1].exact.type"), "{errs:?}");
    assert!(errs[1].starts_with("filters[2].prefix"), "{errs:?}");
    assert!(errs[2].starts_with("filters[3].bogus"), "{errs:?}");
}

#[test]
fn nesting_is_bounded() {
    let mut yaml = "{exact: {type: a}}".to_owned();
    for _ in 0..40 {
        yaml = format!("{{not: {yaml}}}");
    }
    let errs = errors(&format!("[{yaml}]"));
    assert!(errs[0].contains("nest more than"), "{errs:?}");
    let mut ok = "{prefix: {type: com.}}".to_owned();
    for _ in 0..10 {
        ok = format!("{{not: {ok}}}");
    }
    assert!(
        filter(&format!("[{ok}]")).matches(&event()),
        "even number of nots"
    );
}

#[test]
fn required_exact_finds_pinned_type_and_source() {
    let cases = [
        ("[{exact: {type: a}}]", Some("a"), None),
        (
            "[{prefix: {type: a}}, {all: [{exact: {source: /s}}]}]",
            None,
            Some("/s"),
        ),
        (
            "[{all: [{all: [{exact: {type: a, source: /s}}]}]}]",
            Some("a"),
            Some("/s"),
        ),
        ("[{any: [{exact: {type: a}}]}]", None, None),
        ("[{not: {exact: {type: a}}}]", None, None),
        ("[{cesql: \"type = 'a'\"}]", None, None),
    ];
    for (yaml, ty, source) in cases {
        let f = filter(yaml);
        assert_eq!(f.required_exact("type"), ty, "{yaml}");
        assert_eq!(f.required_exact("source"), source, "{yaml}");
    }
    assert_eq!(
        Filter::attributes([("type", "t")]).required_exact("type"),
        Some("t")
    );
    assert_eq!(
        Filter::attributes([("type", "")]).required_exact("type"),
        None
    );
}

mod robustness {
    use proptest::prelude::*;
    use serde_yaml_ng::{Mapping, Value};

    use super::*;

    fn string(s: &str) -> Value {
        Value::String(s.to_owned())
    }

    fn map(k: Value, v: Value) -> Value {
        let mut m = Mapping::new();
        m.insert(k, v);
        Value::Mapping(m)
    }

    /// Arbitrary YAML, for the odd malformed element.
    fn garbage() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| Value::Number(i.into())),
            ".{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 16, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Sequence),
                prop::collection::vec((inner.clone(), inner), 0..3)
                    .prop_map(|kv| Value::Mapping(kv.into_iter().collect())),
            ]
        })
    }

    /// Filter elements that are mostly well-formed, with the occasional bad key,
    /// value, dialect or shape, so both compiling and evaluating get exercised.
    fn element() -> impl Strategy<Value = Value> {
        let attr = prop_oneof![
            12 => prop::sample::select(&["type", "source", "subject", "count", "flag", "dataschema"][..]),
            1 => prop::sample::select(&["Type", "", "9x"][..]),
        ];
        let value = prop_oneof![
            30 => prop::sample::select(&["com.", "com.example.order.created", "/shop/eu", ".created", "42", "false", "x"][..])
                .prop_map(string),
            1 => Just(string("")),
            1 => any::<i32>().prop_map(|i| Value::Number(i.into())),
            1 => Just(Value::Null),
        ];
        let pairs = prop::collection::vec((attr, value), 1..3)
            .prop_map(|kv| Value::Mapping(kv.into_iter().map(|(k, v)| (string(k), v)).collect()));
        let expr = prop::sample::select(
            &[
                "type LIKE 'com.%'",
                "count > 40",
                "NOT flag",
                "missing = 1",
                "flag",
                "subject",
                "type =",
                "NOPE()",
                "1 + 1",
                "EXISTS subject",
                "INT(subject) = 1",
            ][..],
        );
        let leaf = prop_oneof![
            8 => (prop::sample::select(&["exact", "prefix", "suffix"][..]), pairs)
                .prop_map(|(d, p)| map(string(d), p)),
            3 => expr.prop_map(|e| map(string("cesql"), string(e))),
            1 => prop_oneof![
                garbage(),
                garbage().prop_map(|g| map(string("sql"), g)),
                Just(map(string("exact"), Value::Mapping(Mapping::new()))),
                Just(map(string("all"), Value::Sequence(Vec::new()))),
            ],
        ];
        leaf.prop_recursive(4, 24, 3, |inner| {
            prop_oneof![
                (
                    prop::sample::select(&["all", "any"][..]),
                    prop::collection::vec(inner.clone(), 1..3)
                )
                    .prop_map(|(d, v)| map(string(d), Value::Sequence(v))),
                inner.prop_map(|f| map(string("not"), f)),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Compiling never panics, and a compiled filter evaluates and explains itself
        /// consistently.
        #[test]
        fn arbitrary_filters_never_panic(items in prop::collection::vec(element(), 0..3)) {
            match Filter::from_filters(&items) {
                Ok(f) => {
                    for e in [event(), Event::new()] {
                        prop_assert_eq!(f.matches(&e), f.explain(&e).is_ok(), "{}", f.describe());
                    }
                }
                Err(errors) => prop_assert!(!errors.is_empty()),
            }
        }
    }
}
