//! Operators (spec 3.4), their implicit casts (3.7) and precedence (3.6).

use super::{b, check_rows, event, i, s, Row};
use crate::ErrorKind::{Cast, Math, MissingAttribute};

#[test]
fn arithmetic() {
    let rows: &[Row] = &[
        ("7 / 2", i(3), None),
        ("-7 / 2", i(-3), None),
        ("7 / -2", i(-3), None),
        ("-7 % 2", i(-1), None),
        ("7 % -2", i(1), None),
        ("0 % 5", i(0), None),
        ("3 * -4", i(-12), None),
        ("2147483647 + 1", i(0), Some(Math)),
        ("-2147483648 - 1", i(0), Some(Math)),
        ("65536 * 65536", i(0), Some(Math)),
        ("-2147483648 / -1", i(0), Some(Math)),
        ("-2147483648 % -1", i(0), None),
        ("-(-2147483648)", i(0), Some(Math)),
        ("2147483647 + -2147483648", i(-1), None),
        ("myint * 2", i(20), None),
        ("numstr + 1", i(43), None),
        ("myint + mybool", i(11), None),
        ("'abc' + 1", i(0), Some(Cast)),
        ("1 + 'abc'", i(0), Some(Cast)),
        ("' 1' + 1", i(0), Some(Cast)),
        ("'+7' + 1", i(8), None),
        ("'2147483648' + 0", i(0), Some(Cast)),
        ("missingattribute * 5", i(0), Some(MissingAttribute)),
        ("1 / missingattribute", i(0), Some(MissingAttribute)),
        ("(1 / 0) + 5", i(0), Some(Math)),
    ];
    check_rows(&event(), rows);
}

#[test]
fn comparison_and_implicit_casts() {
    let rows: &[Row] = &[
        // `=`: the right operand's type decides the overload.
        ("myint = 10", b(true), None),
        ("myint = '10'", b(true), None),
        ("'10' = myint", b(true), None),
        ("numstr = 42", b(true), None),
        ("42 = numstr", b(true), None),
        ("'042' = 42", b(true), None),
        ("42 = '042'", b(false), None),
        ("mybool = 'true'", b(true), None),
        ("boolstr = TRUE", b(true), None),
        ("TRUE = boolstr", b(false), None),
        ("1 = TRUE", b(true), None),
        ("TRUE = 1", b(true), None),
        ("5 = TRUE", b(true), None),
        ("0 = FALSE", b(true), None),
        ("'abc' = 1", b(false), Some(Cast)),
        ("'abc' != 1", b(false), Some(Cast)),
        ("'maybe' = TRUE", b(false), Some(Cast)),
        ("1 = 'abc'", b(false), None),
        ("'ABC' = 'abc'", b(false), None),
        ("'abc' != 'ABC'", b(true), None),
        ("TRUE = \"true\" AND FALSE = \"false\"", b(true), None),
        ("TRUE = \"TRUE\" OR FALSE = \"FALSE\"", b(false), None),
        // Ordering is Integer only.
        ("'10' > 9", b(true), None),
        ("'10' > '9'", b(true), None),
        ("TRUE > FALSE", b(true), None),
        ("'a' < 'b'", b(false), Some(Cast)),
        ("myint >= 10", b(true), None),
        ("myint < 10", b(false), None),
        ("missing > 1", b(false), Some(MissingAttribute)),
        ("-2147483648 < 2147483647", b(true), None),
    ];
    check_rows(&event(), rows);
}

#[test]
fn logic() {
    let rows: &[Row] = &[
        ("'true' AND 'TRUE'", b(true), None),
        ("1 AND 2", b(true), None),
        ("0 OR 0", b(false), None),
        ("'yes' AND TRUE", b(false), Some(Cast)),
        ("TRUE AND 'yes'", b(false), Some(Cast)),
        ("FALSE AND 'yes'", b(false), None),
        ("TRUE OR 'yes'", b(true), None),
        ("FALSE OR 'yes'", b(false), Some(Cast)),
        ("TRUE XOR 'yes'", b(false), Some(Cast)),
        ("TRUE XOR TRUE XOR TRUE", b(true), None),
        (
            "true AND (missingattribute = \"\")",
            b(false),
            Some(MissingAttribute),
        ),
        ("missing AND TRUE", b(false), Some(MissingAttribute)),
        ("missing OR TRUE", b(false), Some(MissingAttribute)),
        ("TRUE OR missing", b(true), None),
        ("FALSE AND missing", b(false), None),
        ("missing XOR FALSE", b(false), Some(MissingAttribute)),
        ("TRUE AND TRUE AND TRUE AND FALSE", b(false), None),
        ("FALSE OR FALSE OR FALSE OR TRUE", b(true), None),
        ("mybool AND myint = 10", b(true), None),
        ("NOT mybool", b(false), None),
        ("NOT boolstr", b(false), None),
        ("NOT 0", b(true), None),
        ("NOT 'maybe'", b(false), Some(Cast)),
        ("NOT NOT TRUE", b(true), None),
    ];
    check_rows(&event(), rows);
}

#[test]
fn precedence() {
    let rows: &[Row] = &[
        ("1 + 2 * 3", i(7), None),
        ("(1 + 2) * 3", i(9), None),
        ("10 - 4 - 3", i(3), None),
        ("100 / 10 / 5", i(2), None),
        ("2 * 3 % 4", i(2), None),
        ("1 + 2 = 3", b(true), None),
        ("3 = 1 + 2", b(true), None),
        // Unary operators bind tighter than every binary operator.
        ("-2 * 3", i(-6), None),
        ("- 2 + 3", i(1), None),
        ("-(2 + 3)", i(-5), None),
        // NOT binds tighter than `=`: (NOT FALSE) = TRUE.
        ("NOT FALSE = TRUE", b(true), None),
        ("NOT (1 = 2)", b(true), None),
        // Logical operators share one level, evaluated left to right:
        // (TRUE OR TRUE) AND FALSE.
        ("TRUE OR TRUE AND FALSE", b(false), None),
        ("FALSE AND FALSE OR TRUE", b(true), None),
        ("TRUE XOR TRUE OR TRUE", b(true), None),
        ("TRUE OR (TRUE AND FALSE)", b(true), None),
        // LIKE and IN bind tighter than binary operators.
        ("'ab' LIKE 'a%' = TRUE", b(true), None),
        ("1 + 1 IN (1)", i(2), None),
        ("2 IN (2) AND 3 IN (3)", b(true), None),
        ("myext LIKE 'my%' AND type LIKE 'com.%'", b(true), None),
        // Comparison operators are one level, left to right: (1 < 2) = TRUE.
        ("1 < 2 = TRUE", b(true), None),
        ("2 = 2 = TRUE", b(true), None),
        ("EXISTS id AND EXISTS subject", b(true), None),
        ("LENGTH('ab') * 2", i(4), None),
        ("-LENGTH('ab')", i(-2), None),
    ];
    check_rows(&event(), rows);
}

#[test]
fn like() {
    let rows: &[Row] = &[
        ("'ab' LIKE '_b%'", b(true), None),
        ("'abc' LIKE '_b%'", b(true), None),
        ("'abcd1' LIKE '_b%'", b(true), None),
        ("'b' LIKE '_b%'", b(false), None),
        ("'acd' LIKE '_b%'", b(false), None),
        ("'aBc' LIKE '_b%'", b(false), None),
        ("'abc%' LIKE 'abc\\%'", b(true), None),
        ("'abcd' LIKE 'abc\\%'", b(false), None),
        ("'' LIKE '%'", b(true), None),
        ("'' LIKE ''", b(true), None),
        ("'x' LIKE ''", b(false), None),
        ("'日本語' LIKE '日_語'", b(true), None),
        ("'abc' LIKE 'ABC'", b(false), None),
        ("'abc' NOT LIKE 'ABC'", b(true), None),
        ("myint LIKE '1%'", b(true), None),
        ("mybool LIKE 'true'", b(true), None),
        ("missing LIKE '%'", b(false), Some(MissingAttribute)),
        ("missing NOT LIKE 'x'", b(false), Some(MissingAttribute)),
        ("(1 / 0) LIKE '0'", b(false), Some(Math)),
        ("'a\\b' LIKE 'a\\\\b'", b(true), None),
        ("'it''s' LIKE 'it''%'", b(true), None),
        ("type like 'com.example.%'", b(true), None),
        ("type LIKE '%.type'", b(true), None),
        ("type LIKE '%example%'", b(true), None),
        ("type LIKE 'com.%.type'", b(true), None),
        ("type LIKE 'com._xample.type'", b(true), None),
    ];
    check_rows(&event(), rows);
}

#[test]
fn exists() {
    let mut e = event();
    e.remove("id");
    e.remove("type");
    let rows: &[Row] = &[
        ("EXISTS subject", b(true), None),
        ("EXISTS myint", b(true), None),
        ("EXISTS missing", b(false), None),
        ("NOT EXISTS missing", b(true), None),
        ("exists SUBJECT", b(true), None),
        // REQUIRED attributes always exist (spec 3.4.4), even if the
        // attribute source forgot them.
        ("EXISTS id", b(true), None),
        ("EXISTS type", b(true), None),
        ("EXISTS specversion", b(true), None),
        ("EXISTS source", b(true), None),
        ("EXISTS time", b(false), None),
    ];
    check_rows(&e, rows);
}

#[test]
fn in_operator() {
    let rows: &[Row] = &[
        ("1 IN (1, 2, 3)", b(true), None),
        ("4 IN (1, 2, 3)", b(false), None),
        ("4 NOT IN (1, 2, 3)", b(true), None),
        ("1 NOT IN (1, 2, 3)", b(false), None),
        ("'a' IN ('a', 'b')", b(true), None),
        ("'A' IN ('a', 'b')", b(false), None),
        // The left operand's type is the target type.
        ("myint IN ('10', '20')", b(true), None),
        ("numstr IN (42)", b(true), None),
        ("'042' IN (42)", b(false), None),
        ("42 IN ('042')", b(true), None),
        ("TRUE IN ('true')", b(true), None),
        ("TRUE IN (1)", b(true), None),
        ("TRUE IN (0, 'false')", b(false), None),
        ("1 IN ('x')", b(false), Some(Cast)),
        ("1 IN (1, 'x')", b(false), Some(Cast)),
        ("TRUE IN ('maybe')", b(false), Some(Cast)),
        ("type IN ('a', 'com.example.type')", b(true), None),
        ("subject IN (id, myext, 'mySubject')", b(true), None),
        ("missing IN (1)", b(false), Some(MissingAttribute)),
        ("missing NOT IN (1)", b(false), Some(MissingAttribute)),
        ("1 IN (missing, 1)", b(false), Some(MissingAttribute)),
        ("3 IN (1 + 2)", b(true), None),
        ("3 IN (1 / 0, 3)", b(false), Some(Math)),
        ("(1 IN (1)) IN (TRUE)", b(true), None),
    ];
    check_rows(&event(), rows);
}

#[test]
fn attributes_of_every_type() {
    let rows: &[Row] = &[
        ("myint", i(10), None),
        ("mybool", b(true), None),
        ("myext", s("my extension"), None),
        ("MYEXT", s("my extension"), None),
        ("myint + 0", i(10), None),
        ("mybool = TRUE", b(true), None),
        (
            "myint = 10 AND mybool AND myext = 'my extension'",
            b(true),
            None,
        ),
    ];
    check_rows(&event(), rows);
}
