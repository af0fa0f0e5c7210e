//! Cases from the CloudEvents CESQL TCK (cesql_tck/*.yaml), transcribed as
//! facts: expression, input attributes, expected result and error kind.
//! Where a TCK revision disagrees with the v1 spec text (NOT 10, absent
//! optional attribute), the spec is followed; see `semantics.rs`.

use std::collections::HashMap;

use super::{b, check_rows, event, i, s, Row};
use crate::ErrorKind::{Cast, FunctionEvaluation, Math, MissingAttribute, MissingFunction};
use crate::{Expression, Value};

fn ev(overrides: &[(&str, Value)]) -> HashMap<String, Value> {
    let mut m = event();
    for (k, v) in overrides {
        m.insert((*k).to_owned(), v.clone());
    }
    m
}

#[test]
fn binary_comparison_operators() {
    let rows: &[Row] = &[
        ("TRUE = FALSE", b(false), None),
        ("FALSE = FALSE", b(true), None),
        ("1 = 2", b(false), None),
        ("2 = 2", b(true), None),
        ("'abc' = '123'", b(false), None),
        ("'abc' = 'abc'", b(true), None),
        ("missing = 2", b(false), Some(MissingAttribute)),
        ("TRUE != FALSE", b(true), None),
        ("FALSE != FALSE", b(false), None),
        ("1 != 2", b(true), None),
        ("2 != 2", b(false), None),
        ("'abc' != '123'", b(true), None),
        ("'abc' != 'abc'", b(false), None),
        ("missing != 2", b(false), Some(MissingAttribute)),
        ("TRUE <> FALSE", b(true), None),
        ("FALSE <> FALSE", b(false), None),
        ("1 <> 2", b(true), None),
        ("2 <> 2", b(false), None),
        ("'abc' <> '123'", b(true), None),
        ("'abc' <> 'abc'", b(false), None),
        ("missing <> 2", b(false), Some(MissingAttribute)),
        ("2 <= 2", b(true), None),
        ("3 <= 2", b(false), None),
        ("1 < 2", b(true), None),
        ("2 < 2", b(false), None),
        ("2 >= 2", b(true), None),
        ("2 >= 3", b(false), None),
        ("2 > 1", b(true), None),
        ("2 > 2", b(false), None),
        ("missing <= 2", b(false), Some(MissingAttribute)),
        ("true = 'TRUE'", b(false), None),
        ("'TRUE' = true", b(true), None),
    ];
    check_rows(&event(), rows);
}

#[test]
fn binary_logical_operators() {
    let rows: &[Row] = &[
        ("FALSE AND FALSE", b(false), None),
        ("FALSE AND TRUE", b(false), None),
        ("TRUE AND FALSE", b(false), None),
        ("TRUE AND TRUE", b(true), None),
        ("false and (1 != 1 / 0)", b(false), None),
        ("true and (1 != 1 / 0)", b(false), Some(Math)),
        ("FALSE OR FALSE", b(false), None),
        ("FALSE OR TRUE", b(true), None),
        ("TRUE OR FALSE", b(true), None),
        ("TRUE OR TRUE", b(true), None),
        ("true or (1 != 1 / 0)", b(true), None),
        ("false or (1 != 1 / 0)", b(false), Some(Math)),
        ("FALSE XOR FALSE", b(false), None),
        ("FALSE XOR TRUE", b(true), None),
        ("TRUE XOR FALSE", b(true), None),
        ("TRUE XOR TRUE", b(false), None),
    ];
    check_rows(&event(), rows);
}

#[test]
fn binary_math_operators() {
    let rows: &[Row] = &[
        ("4 * 2 + 4 / 2", i(10), None),
        ("4 * (2 + 4) / 2", i(12), None),
        ("5 / 3", i(1), None),
        ("5 / 0", i(0), Some(Math)),
        ("5 % 2", i(1), None),
        ("5 % 0", i(0), Some(Math)),
        ("missing / 0", i(0), Some(MissingAttribute)),
        ("missing % 0", i(0), Some(MissingAttribute)),
        ("4 + 1", i(5), None),
        ("-4 + 1", i(-3), None),
        ("-4 + -1", i(-5), None),
        ("4 + -1", i(3), None),
        ("4 - 1", i(3), None),
        ("-4 - 1", i(-5), None),
        ("'5' + 3", i(8), None),
        ("5 + '3'", i(8), None),
        ("'5' + '3'", i(8), None),
        ("5 + TRUE", i(6), None),
    ];
    check_rows(&event(), rows);
    // The division by zero must not be reported for a missing operand.
    let e = Expression::parse("missing / 0").unwrap().evaluate(&event());
    assert!(!e.has_error(Math), "{e:?}");
}

#[test]
fn casting_functions() {
    let rows: &[Row] = &[
        ("INT('1')", i(1), None),
        ("INT('-1')", i(-1), None),
        ("INT(1)", i(1), None),
        ("INT(-1)", i(-1), None),
        ("INT(TRUE)", i(1), None),
        ("INT(FALSE)", i(0), None),
        ("INT('ABC')", i(0), Some(Cast)),
        ("BOOL('TRUE')", b(true), None),
        ("BOOL(\"false\")", b(false), None),
        ("BOOL(TRUE)", b(true), None),
        ("BOOL(FALSE)", b(false), None),
        ("BOOL('ABC')", b(false), Some(Cast)),
        ("BOOL(1)", b(true), None),
        ("BOOL(0)", b(false), None),
        ("BOOL(100)", b(true), None),
        ("BOOL(-50)", b(true), None),
        ("STRING(TRUE)", s("true"), None),
        ("STRING(FALSE)", s("false"), None),
        ("STRING(1)", s("1"), None),
        ("STRING(-1)", s("-1"), None),
        ("STRING(\"abc\")", s("abc"), None),
    ];
    check_rows(&event(), rows);
}

#[test]
fn context_attributes_access() {
    let e = ev(&[
        ("id", s("myId")),
        ("subject", s("mySubject")),
        ("mybool", b(true)),
        ("myint", i(10)),
        ("myext", s("my extension")),
        ("time", s("2018-04-26T14:48:09+02:00")),
    ]);
    let rows: &[Row] = &[
        ("id", s("myId"), None),
        ("subject", s("mySubject"), None),
        ("mybool", b(true), None),
        ("myint", i(10), None),
        ("myext", s("my extension"), None),
        ("source", s("http://localhost/source"), None),
        ("time", s("2018-04-26T14:48:09+02:00"), None),
        // Absent optional attribute: the type of a bare attribute cannot be
        // determined, so Boolean's zero value (spec 3.2).
        ("dataschema", b(false), Some(MissingAttribute)),
    ];
    check_rows(&e, rows);
}

#[test]
fn integer_builtin_functions() {
    let rows: &[Row] = &[
        ("ABS(10)", i(10), None),
        ("ABS(-10)", i(10), None),
        ("ABS(0)", i(0), None),
        ("ABS(-2147483648)", i(2147483647), Some(Math)),
    ];
    check_rows(&event(), rows);
}

#[test]
fn like_expression() {
    let rows: &[Row] = &[
        ("'abc' LIKE 'abc'", b(true), None),
        ("'ab\\c' LIKE 'ab\\c'", b(true), None),
        ("'abc' NOT LIKE 'abc'", b(false), None),
        ("'abc' LIKE 'a%b%c'", b(true), None),
        ("'azbc' LIKE 'a%b%c'", b(true), None),
        ("'azzzbzzzc' LIKE 'a%b%c'", b(true), None),
        ("'a%b%c' LIKE 'a%b%c'", b(true), None),
        ("'ac' LIKE 'abc'", b(false), None),
        ("'' LIKE 'abc'", b(false), None),
        ("'.ab.cde.' LIKE '.%.%.'", b(true), None),
        ("'ab.cde' LIKE '.%.%.'", b(false), None),
        ("'abc' LIKE 'a_b_c'", b(false), None),
        ("'a_b_c' LIKE 'a_b_c'", b(true), None),
        ("'abzc' LIKE 'a_b_c'", b(false), None),
        ("'azbc' LIKE 'a_b_c'", b(false), None),
        ("'azbzc' LIKE 'a_b_c'", b(true), None),
        ("'.a.b.' LIKE '._._.'", b(true), None),
        ("'abcd.' LIKE '._._.'", b(false), None),
        ("'a_b_c' LIKE 'a\\_b\\_c'", b(true), None),
        ("'a_b_c' NOT LIKE 'a\\_b\\_c'", b(false), None),
        ("'azbzc' LIKE 'a\\_b\\_c'", b(false), None),
        ("'abc' LIKE 'a\\_b\\_c'", b(false), None),
        ("'abc' LIKE 'a\\%b\\%c'", b(false), None),
        ("'a%b%c' LIKE 'a\\%b\\%c'", b(true), None),
        ("'azbzc' LIKE 'a\\%b\\%c'", b(false), None),
        ("234 LIKE '23_'", b(true), None),
        ("2344 LIKE '23%'", b(true), None),
        ("2344 LIKE '23_'", b(false), None),
        ("TRUE LIKE 'tr%'", b(true), None),
        ("TRUE LIKE '%ue'", b(true), None),
        ("FALSE LIKE 'tr%'", b(false), None),
        ("FALSE LIKE 'fal%'", b(true), None),
    ];
    check_rows(&event(), rows);
    let e = ev(&[("myext", s("abc123123%456_dzf"))]);
    check_rows(
        &e,
        &[
            ("myext LIKE 'abc%123\\%456\\_d_f'", b(true), None),
            ("myext NOT LIKE 'abc%123\\%456\\_d_f'", b(false), None),
        ],
    );
}

#[test]
fn literals() {
    let rows: &[Row] = &[
        ("TRUE", b(true), None),
        ("FALSE", b(false), None),
        ("0", i(0), None),
        ("1", i(1), None),
        ("'abc'", s("abc"), None),
        ("\"abc\"", s("abc"), None),
        ("'aBc'", s("aBc"), None),
        ("\"AbC\"", s("AbC"), None),
        ("'a\"b\\'c'", s("a\"b'c"), None),
        ("\"a'b\\\"c\"", s("a'b\"c"), None),
    ];
    check_rows(&event(), rows);
}

#[test]
fn negate_and_not_operators() {
    let rows: &[Row] = &[
        ("-10", i(-10), None),
        ("--10", i(10), None),
        ("-'10'", i(-10), None),
        ("--'10'", i(10), None),
        ("-TRUE", i(-1), None),
        ("-missing", i(0), Some(MissingAttribute)),
        ("NOT TRUE", b(false), None),
        ("NOT FALSE", b(true), None),
        ("NOT 'TRUE'", b(false), None),
        ("NOT 'FALSE'", b(true), None),
        // Integer -> Boolean is a supported cast in v1 (10 -> true).
        ("NOT 10", b(false), None),
        ("NOT missing", b(false), Some(MissingAttribute)),
    ];
    check_rows(&event(), rows);
}

#[test]
fn spec_examples() {
    let e = ev(&[("hop", s("5")), ("ttl", s("10"))]);
    check_rows(
        &e,
        &[
            ("int(hop) < int(ttl) and int(hop) < 1000", b(true), None),
            ("INT(hop) < INT(ttl) AND INT(hop) < 1000", b(true), None),
            ("hop < ttl", b(true), None),
        ],
    );
    check_rows(
        &ev(&[("sequence", s("5"))]),
        &[("sequence = 5", b(true), None)],
    );
    check_rows(
        &ev(&[("sequence", s("6"))]),
        &[("sequence = 5", b(false), None)],
    );
    let or = "firstname = 'Francesco' OR subject = 'Francesco'";
    let e = ev(&[("subject", s("Francesco")), ("firstname", s("Doug"))]);
    check_rows(&e, &[(or, b(true), None)]);
    let e = ev(&[("subject", s("Doug")), ("firstname", s("Francesco"))]);
    check_rows(&e, &[(or, b(true), None)]);
    let and_or =
        "(firstname = 'Francesco' AND lastname = 'Guardiani') OR subject = 'Francesco Guardiani'";
    let e = ev(&[
        ("subject", s("Doug")),
        ("firstname", s("Francesco")),
        ("lastname", s("Guardiani")),
    ]);
    check_rows(&e, &[(and_or, b(true), None)]);
    let e = ev(&[
        ("subject", s("Francesco Guardiani")),
        ("firstname", s("Doug")),
        ("lastname", s("Davis")),
    ]);
    check_rows(&e, &[(and_or, b(true), None)]);
    check_rows(&event(), &[("EXISTS subject", b(true), None)]);
}

#[test]
fn string_builtin_functions() {
    let rows: &[Row] = &[
        ("LENGTH('abc')", i(3), None),
        ("LENGTH('')", i(0), None),
        ("LENGTH('2')", i(1), None),
        ("LENGTH(TRUE)", i(4), None),
        ("CONCAT('a', 'b', 'c')", s("abc"), None),
        ("CONCAT()", s(""), None),
        ("CONCAT('a')", s("a"), None),
        ("CONCAT_WS(',', 'a', 'b', 'c')", s("a,b,c"), None),
        ("CONCAT_WS(',')", s(""), None),
        ("CONCAT_WS(',', 'a')", s("a"), None),
        ("CONCAT_WS()", b(false), Some(MissingFunction)),
        ("LOWER('ABC')", s("abc"), None),
        ("LOWER('AbC')", s("abc"), None),
        ("LOWER('abc')", s("abc"), None),
        ("UPPER('ABC')", s("ABC"), None),
        ("UPPER('AbC')", s("ABC"), None),
        ("UPPER('abc')", s("ABC"), None),
        ("TRIM('   a b c   ')", s("a b c"), None),
        ("TRIM('   a b c')", s("a b c"), None),
        ("TRIM('a b c   ')", s("a b c"), None),
        ("TRIM('a b c')", s("a b c"), None),
        ("LEFT('abc', 2)", s("ab"), None),
        ("LEFT('abc', 10)", s("abc"), None),
        ("LEFT('', 0)", s(""), None),
        ("LEFT('abc', -2)", s("abc"), Some(FunctionEvaluation)),
        ("RIGHT('abc', 2)", s("bc"), None),
        ("RIGHT('abc', 10)", s("abc"), None),
        ("RIGHT('', 0)", s(""), None),
        ("RIGHT('abc', -2)", s("abc"), Some(FunctionEvaluation)),
        ("SUBSTRING('abcdef', 1)", s("abcdef"), None),
        ("SUBSTRING('abcdef', 2)", s("bcdef"), None),
        ("SUBSTRING('Quadratically', 5)", s("ratically"), None),
        ("SUBSTRING('Sakila', -3)", s("ila"), None),
        ("SUBSTRING('abcdef', 1, 6)", s("abcdef"), None),
        ("SUBSTRING('abcdef', 2, 4)", s("bcde"), None),
        ("SUBSTRING('Sakila', -5, 3)", s("aki"), None),
        ("SUBSTRING('Quadratically', 0)", s(""), None),
        ("SUBSTRING('Quadratically', 0, 1)", s(""), None),
        ("SUBSTRING('abcdef', 10)", s(""), Some(FunctionEvaluation)),
        ("SUBSTRING('abcdef', -10)", s(""), Some(FunctionEvaluation)),
        (
            "SUBSTRING('abcdef', 10, 10)",
            s(""),
            Some(FunctionEvaluation),
        ),
        (
            "SUBSTRING('abcdef', -10, 10)",
            s(""),
            Some(FunctionEvaluation),
        ),
    ];
    check_rows(&event(), rows);
}

#[test]
fn sub_expressions() {
    let rows: &[Row] = &[
        ("(TRUE)", b(true), None),
        ("4 * (2 + 3)", i(20), None),
        ("(2 + 3) * 4", i(20), None),
    ];
    check_rows(&event(), rows);
}

#[test]
fn subscriptions_api_recreations() {
    let src = |v: &str| ev(&[("source", s(v))]);
    check_rows(
        &src("https://example.com"),
        &[("source LIKE 'https://%'", b(true), None)],
    );
    check_rows(
        &src("http://example.com"),
        &[("source LIKE 'https://%'", b(false), None)],
    );
    let mut no_ext = event();
    no_ext.remove("myext");
    let custom = ev(&[("myext", s("customext"))]);
    for (expr, want) in [
        ("myext LIKE 'custom%'", true),
        ("myext LIKE '%ext'", true),
        ("myext = 'customext'", true),
    ] {
        check_rows(&custom, &[(expr, b(want), None)]);
        check_rows(&no_ext, &[(expr, b(false), Some(MissingAttribute))]);
    }
    let t = |v: &str| ev(&[("type", s(v))]);
    check_rows(
        &t("com.github.error"),
        &[("type like '%.error'", b(true), None)],
    );
    check_rows(
        &t("com.github.success"),
        &[("type like '%.error'", b(false), None)],
    );
    check_rows(&ev(&[("id", s("myId"))]), &[("id = 'myId'", b(true), None)]);
    check_rows(
        &ev(&[("id", s("notmyId"))]),
        &[("id = 'myId'", b(false), None)],
    );

    let pre_suf = "id LIKE 'my%' AND source LIKE '%.ca'";
    let e2 = |id: &str, source: &str| ev(&[("id", s(id)), ("source", s(source))]);
    check_rows(
        &e2("myId", "http://www.some-website.ca"),
        &[(pre_suf, b(true), None)],
    );
    check_rows(
        &e2("myId", "http://www.some-website.com"),
        &[(pre_suf, b(false), None)],
    );
    let mut e = custom.clone();
    e.insert("type".into(), s("com.github.error"));
    check_rows(
        &e,
        &[(
            "myext LIKE 'custom%' AND type LIKE '%.error'",
            b(true),
            None,
        )],
    );
    let mut e = no_ext.clone();
    e.insert("type".into(), s("example.event.type"));
    check_rows(
        &e,
        &[(
            "type LIKE 'example.%' AND myext LIKE 'custom%'",
            b(false),
            Some(MissingAttribute),
        )],
    );

    let or = "id LIKE 'my%' OR source LIKE '%.ca'";
    check_rows(
        &e2("myId", "http://www.some-website.ca"),
        &[(or, b(true), None)],
    );
    check_rows(
        &e2("myId", "http://www.some-website.com"),
        &[(or, b(true), None)],
    );
    check_rows(
        &e2("notmyId", "http://www.some-website.ca"),
        &[(or, b(true), None)],
    );
    check_rows(
        &e2("notmyId", "http://www.some-website.com"),
        &[(or, b(false), None)],
    );
    let mut e = no_ext.clone();
    e.insert("id".into(), s("notmyId"));
    check_rows(
        &e,
        &[(
            "id LIKE 'my%' OR myext LIKE '%ext'",
            b(false),
            Some(MissingAttribute),
        )],
    );

    let dnf = "(id = 'myId' AND type LIKE '%.success') OR (id = 'notmyId' AND source LIKE 'http://%' AND type LIKE '%.warning')";
    let e3 = |id: &str, ty: &str, source: &str| {
        let mut e = no_ext.clone();
        e.insert("id".into(), s(id));
        e.insert("type".into(), s(ty));
        e.insert("source".into(), s(source));
        e
    };
    check_rows(
        &e3("myId", "example.event.success", "x"),
        &[(dnf, b(true), None)],
    );
    let warn = e3(
        "notmyId",
        "example.event.warning",
        "http://localhost.localdomain",
    );
    check_rows(&warn, &[(dnf, b(true), None)]);
    let warn_s = e3(
        "notmyId",
        "example.event.warning",
        "https://localhost.localdomain",
    );
    check_rows(&warn_s, &[(dnf, b(false), None)]);
    let dnf4 = "(id = 'myId' AND type LIKE '%.success') OR (id = 'notmyId' AND source LIKE 'http://%' AND type LIKE '%.warning') OR (myext = 'cusomext')";
    check_rows(&warn_s, &[(dnf4, b(false), Some(MissingAttribute))]);

    let cnf = "(id = 'myId' OR type LIKE '%.success') AND (id = 'notmyId' OR source LIKE 'https://%' OR type LIKE '%.warning')";
    let local = "http://localhost.localdomain";
    check_rows(
        &e3("myId", "example.event.warning", local),
        &[(cnf, b(true), None)],
    );
    check_rows(
        &e3("notmyId", "example.event.success", local),
        &[(cnf, b(true), None)],
    );
    check_rows(
        &e3("notmyId", "example.event.warning", local),
        &[(cnf, b(false), None)],
    );
    check_rows(
        &e3("myId", "example.event.success", local),
        &[(cnf, b(false), None)],
    );
    let cnf5 = "(id = 'myId' OR type LIKE '%.success') AND (id = 'notmyId' OR source LIKE 'https://%' OR type LIKE '%.warning') AND (myext = 'customext')";
    check_rows(
        &e3("myId", "example.event.warning", local),
        &[(cnf5, b(false), Some(MissingAttribute))],
    );
}
