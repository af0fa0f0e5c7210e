//! Lexing and parsing: literals, identifiers, keywords, parse errors with
//! offsets, depth limits.

use super::{b, check_parse_errors, check_rows, event, i, s, Row};
use crate::{ErrorKind, Expression, Type, MAX_DEPTH};

#[test]
fn literals_and_escapes() {
    let rows: &[Row] = &[
        ("2147483647", i(2147483647), None),
        ("-2147483648", i(-2147483648), None),
        ("+5", i(5), None),
        ("4 + +5", i(9), None),
        ("007", i(7), None),
        ("-0", i(0), None),
        ("''", s(""), None),
        ("\"\"", s(""), None),
        ("'it''s'", s("it's"), None),
        ("\"say \"\"hi\"\"\"", s("say \"hi\""), None),
        ("'a\\'b'", s("a'b"), None),
        ("\"a\\\"b\"", s("a\"b"), None),
        ("'a\\\"b'", s("a\\\"b"), None),
        ("'a\\nb'", s("a\\nb"), None),
        ("'a\\\\'", s("a\\\\"), None),
        ("'日本語'", s("日本語"), None),
        ("'multi\nline'", s("multi\nline"), None),
        ("true", b(true), None),
        ("TrUe", b(true), None),
        ("fAlSe", b(false), None),
    ];
    check_rows(&event(), rows);
}

#[test]
fn keywords_and_identifiers_are_case_insensitive() {
    let rows: &[Row] = &[
        ("myint = 10 and mybool", b(true), None),
        ("myint = 10 AnD mybool", b(true), None),
        ("not false", b(true), None),
        ("false xor true", b(true), None),
        ("false or true", b(true), None),
        ("'a' like 'a'", b(true), None),
        ("'a' not like 'b'", b(true), None),
        ("1 in (1)", b(true), None),
        ("1 not in (2)", b(true), None),
        ("exists subject", b(true), None),
        ("Subject", s("mySubject"), None),
        ("SUBJECT = 'mySubject'", b(true), None),
    ];
    check_rows(&event(), rows);
}

#[test]
fn whitespace_is_insignificant() {
    let rows: &[Row] = &[
        ("myint=10", b(true), None),
        ("  myint\t=\n10  ", b(true), None),
        ("(myint)=(10)", b(true), None),
        ("'a'LIKE'a'", b(true), None),
        ("1 IN(1,2)", b(true), None),
        ("LENGTH( 'ab' )", i(2), None),
        ("CONCAT ( 'a' , 'b' )", s("ab"), None),
    ];
    check_rows(&event(), rows);
}

#[test]
fn identifiers_with_digits() {
    let mut e = event();
    e.insert("abc123".into(), s("x"));
    e.insert("123abc".into(), s("y"));
    e.insert("123".into(), s("z"));
    let rows: &[Row] = &[
        ("abc123", s("x"), None),
        ("123abc", s("y"), None),
        ("EXISTS 123", b(true), None),
        ("EXISTS abc123", b(true), None),
        // An all-digit word is an integer literal, not an attribute.
        ("123", i(123), None),
    ];
    check_rows(&e, rows);
}

#[test]
fn parse_errors() {
    check_parse_errors(&[
        "",
        "   ",
        "(",
        ")",
        "(1",
        "1)",
        "1 +",
        "* 1",
        "1 2",
        "'abc",
        "\"abc",
        "'abc\\'",
        "1 == 1",
        "1 ! 1",
        "!1",
        "1 =! 1",
        "2147483648",
        "-2147483649",
        "99999999999999999999999",
        "+'5'",
        "+ TRUE",
        "a LIKE b",
        "a LIKE 1",
        "a LIKE ('a')",
        "a LIKE",
        "a NOT 'x'",
        "a NOT",
        "NOT",
        "EXISTS",
        "EXISTS 'id'",
        "EXISTS (id)",
        "EXISTS my_ext",
        "1 IN ()",
        "1 IN 1",
        "1 IN (1,)",
        "1 IN (1 2)",
        "LENGTH('a',)",
        "LENGTH(,'a')",
        "LENGTH('a'",
        "my_ext",
        "my_ext = 1",
        "abc1(1)",
        "_abc(1)",
        "a.b",
        "a = 'x' ;",
        "é = 1",
        "id = 'a' AND",
        "AND",
        "TRUE FALSE",
        "TRUE AND AND FALSE",
        "<> 1",
        "1 <",
        "a[0]",
        "$a",
        "@",
        "1 + # 2",
        "1IN(1)",
    ]);
}

#[test]
fn parse_error_offsets_and_expectations() {
    let e = Expression::parse("myint = ").unwrap_err();
    assert_eq!(e.offset, 8);
    assert!(e.expected.contains("expression"), "{e}");

    let e = Expression::parse("a LIKE 5").unwrap_err();
    assert_eq!(e.offset, 7);
    assert!(e.expected.contains("string literal"), "{e}");

    let e = Expression::parse("(1 + 2").unwrap_err();
    assert_eq!(e.offset, 6);
    assert_eq!(e.expected, "')'");

    let e = Expression::parse("id = 'abc").unwrap_err();
    assert_eq!(e.offset, 9);
    assert!(e.message.contains("unterminated"), "{e}");

    let e = Expression::parse("1 = 2147483648").unwrap_err();
    assert_eq!(e.offset, 4);

    let e = Expression::parse("a = 1 b").unwrap_err();
    assert_eq!(e.offset, 6);
    assert!(e.expected.contains("end of input"), "{e}");

    let e = Expression::parse("a NOT b").unwrap_err();
    assert_eq!(e.offset, 2);
    assert!(e.expected.contains("LIKE or IN"), "{e}");

    let e = Expression::parse("a = é").unwrap_err();
    assert_eq!(e.offset, 4);

    let e = Expression::parse("EXISTS 'x'").unwrap_err();
    assert_eq!(e.offset, 7);

    // Display mentions the offset.
    assert!(e.to_string().contains("byte 7"), "{e}");
    let ev: crate::EvalError = e.into();
    assert_eq!(ev.kind, ErrorKind::Parse);
}

#[test]
fn nesting_depth_is_bounded() {
    let ok = format!(
        "{}1{}",
        "(".repeat(MAX_DEPTH - 1),
        ")".repeat(MAX_DEPTH - 1)
    );
    assert!(Expression::parse(&ok).is_ok());
    for deep in [
        format!(
            "{}1{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        ),
        format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000)),
        "(".repeat(100_000),
        format!("{}TRUE", "NOT ".repeat(100_000)),
        format!("{}1", "-".repeat(100_000)),
        format!("{}1{}", "ABS(".repeat(10_000), ")".repeat(10_000)),
        format!("1{}", " + 1".repeat(10_000)),
        format!("1{}", " IN (1)".repeat(10_000)),
        format!("'a'{}", " LIKE 'a'".repeat(10_000)),
        format!("{}1{}", "1 IN (".repeat(10_000), ")".repeat(10_000)),
    ] {
        let err = Expression::parse(&deep).unwrap_err();
        assert!(err.message.contains("nested"), "{err}");
    }
}

#[test]
fn deepest_accepted_trees_evaluate() {
    // Trees at the depth limit parse, evaluate and drop without trouble.
    let n = MAX_DEPTH - 1;
    let not = format!("{}TRUE", "NOT ".repeat(n));
    let v = Expression::parse(&not).unwrap().evaluate(&event());
    assert_eq!(v.value, b((n & 1) == 0));
    let abs = format!("{}-5{}", "ABS(".repeat(n), ")".repeat(n));
    assert_eq!(
        Expression::parse(&abs).unwrap().evaluate(&event()).value,
        i(5)
    );
    let sum = format!("1{}", " + 1".repeat(n - 1));
    assert_eq!(
        Expression::parse(&sum).unwrap().evaluate(&event()).value,
        i(n as i32)
    );
    let neg = format!("{}myint", "-".repeat(n));
    assert!(Expression::parse(&neg).unwrap().evaluate(&event()).is_ok());
}

#[test]
fn long_logical_chains_are_flat() {
    let n = 5_000;
    let src = (0..n)
        .map(|k| format!("myint = {k}"))
        .collect::<Vec<_>>()
        .join(" OR ");
    let e = Expression::parse(&src).unwrap();
    assert!(e.matches(&event()));
    let src = (0..n).map(|_| "mybool").collect::<Vec<_>>().join(" AND ");
    assert!(Expression::parse(&src).unwrap().matches(&event()));
    let src = (0..n).map(|_| "TRUE").collect::<Vec<_>>().join(" XOR ");
    let v = Expression::parse(&src).unwrap().evaluate(&event());
    assert_eq!(v.value, b(n % 2 == 1));
}

#[test]
fn source_display_fromstr_and_types() {
    let e: Expression = "myint = 10".parse().unwrap();
    assert_eq!(e.source(), "myint = 10");
    assert_eq!(e.to_string(), "myint = 10");
    assert_eq!(e.return_type(), Some(Type::Boolean));
    assert_eq!(
        Expression::parse("1 + 1").unwrap().return_type(),
        Some(Type::Integer)
    );
    assert_eq!(
        Expression::parse("LOWER(x)").unwrap().return_type(),
        Some(Type::String)
    );
    assert_eq!(Expression::parse("x").unwrap().return_type(), None);
    assert_eq!(
        Expression::parse("NOPE()").unwrap().return_type(),
        Some(Type::Boolean)
    );
}

#[test]
fn diagnostics() {
    let kinds = |src: &str| -> Vec<ErrorKind> {
        Expression::parse(src)
            .unwrap()
            .diagnostics()
            .iter()
            .map(|e| e.kind)
            .collect()
    };
    assert!(kinds("myint = 10 AND LENGTH(myext) > 3").is_empty());
    assert!(kinds("TRUE = 'TRUE'").is_empty());
    assert_eq!(kinds("NOPE(1)"), [ErrorKind::MissingFunction]);
    assert_eq!(kinds("LENGTH()"), [ErrorKind::MissingFunction]);
    assert_eq!(kinds("NOT 'maybe'"), [ErrorKind::Cast]);
    assert_eq!(kinds("'x' + 1"), [ErrorKind::Cast]);
    assert_eq!(kinds("'x' = 1"), [ErrorKind::Cast]);
    assert_eq!(kinds("1 IN ('x')"), [ErrorKind::Cast]);
    assert_eq!(kinds("LEFT('abc', 'x')"), [ErrorKind::Cast]);
    assert_eq!(kinds("a AND 'nope'"), [ErrorKind::Cast]);
    assert!(kinds("INT('x')").is_empty(), "cast functions take Any");
}
