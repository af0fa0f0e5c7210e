//! Built-in functions (spec 3.5) beyond the TCK rows: edge cases, argument
//! casts, errors, case-insensitive names, arity dispatch.

use super::{b, check_rows, event, i, s, Row};
use crate::ErrorKind::{Cast, FunctionEvaluation, Math, MissingAttribute, MissingFunction};

#[test]
fn string_functions() {
    let rows: &[Row] = &[
        ("LENGTH('日本語')", i(3), None),
        ("LENGTH(123)", i(3), None),
        ("LENGTH(-5)", i(2), None),
        ("LENGTH(myext)", i(12), None),
        ("LENGTH(missing)", i(0), Some(MissingAttribute)),
        ("CONCAT(1, TRUE, 'x')", s("1truex"), None),
        ("CONCAT(myext, '!')", s("my extension!"), None),
        ("CONCAT('a', missing)", s(""), Some(MissingAttribute)),
        ("CONCAT_WS('-', 1, 2, 3)", s("1-2-3"), None),
        ("CONCAT_WS('', 'a', 'b')", s("ab"), None),
        ("CONCAT_WS(', ', 'a', '', 'b')", s("a, , b"), None),
        ("LOWER('ÀÉÎ')", s("àéî"), None),
        ("UPPER('straße')", s("STRASSE"), None),
        ("LOWER(TRUE)", s("true"), None),
        ("UPPER(1)", s("1"), None),
        ("TRIM('\t\n a \u{2003}')", s("a"), None),
        ("TRIM('   ')", s(""), None),
        ("TRIM('')", s(""), None),
        ("TRIM('\u{1}a\u{1}')", s("\u{1}a\u{1}"), None),
        ("LEFT('abc', 0)", s(""), None),
        ("LEFT('abc', 3)", s("abc"), None),
        ("LEFT('日本語', 2)", s("日本"), None),
        ("LEFT('abc', '2')", s("ab"), None),
        ("LEFT('abc', 'x')", s(""), Some(Cast)),
        ("LEFT(12345, 2)", s("12"), None),
        ("RIGHT('abc', 0)", s(""), None),
        ("RIGHT('abc', 3)", s("abc"), None),
        ("RIGHT('日本語', 2)", s("本語"), None),
        (
            "RIGHT('abc', -2147483648)",
            s("abc"),
            Some(FunctionEvaluation),
        ),
        ("LEFT('abc', 2147483647)", s("abc"), None),
    ];
    check_rows(&event(), rows);
}

#[test]
fn substring() {
    let rows: &[Row] = &[
        ("SUBSTRING('abcdef', 6)", s("f"), None),
        ("SUBSTRING('abcdef', 7)", s(""), Some(FunctionEvaluation)),
        ("SUBSTRING('abcdef', -6)", s("abcdef"), None),
        ("SUBSTRING('abcdef', -7)", s(""), Some(FunctionEvaluation)),
        ("SUBSTRING('abcdef', -1)", s("f"), None),
        ("SUBSTRING('abcdef', 2, 0)", s(""), None),
        ("SUBSTRING('abcdef', 2, 100)", s("bcdef"), None),
        ("SUBSTRING('abcdef', 2, 2147483647)", s("bcdef"), None),
        (
            "SUBSTRING('abcdef', 2, -1)",
            s(""),
            Some(FunctionEvaluation),
        ),
        ("SUBSTRING('abcdef', -2, 1)", s("e"), None),
        (
            "SUBSTRING('abcdef', -2147483648)",
            s(""),
            Some(FunctionEvaluation),
        ),
        (
            "SUBSTRING('abcdef', 2147483647, 1)",
            s(""),
            Some(FunctionEvaluation),
        ),
        ("SUBSTRING('', 0)", s(""), None),
        ("SUBSTRING('', 1)", s(""), Some(FunctionEvaluation)),
        ("SUBSTRING('日本語', 2)", s("本語"), None),
        ("SUBSTRING('日本語', -1, 5)", s("語"), None),
        ("SUBSTRING('日本語', 2, 1)", s("本"), None),
        ("SUBSTRING(123456, 2, 3)", s("234"), None),
        ("SUBSTRING('abc', '2')", s("bc"), None),
        ("SUBSTRING('abc', 'x')", s(""), Some(Cast)),
        ("substring('abcdef', 3, 2)", s("cd"), None),
    ];
    check_rows(&event(), rows);
}

#[test]
fn math_functions() {
    let rows: &[Row] = &[
        ("ABS(2147483647)", i(2147483647), None),
        ("ABS(-2147483647)", i(2147483647), None),
        ("ABS('-5')", i(5), None),
        ("ABS(TRUE)", i(1), None),
        ("ABS('x')", i(0), Some(Cast)),
        ("ABS(missing)", i(0), Some(MissingAttribute)),
        ("ABS(-2147483648) + 0", i(0), Some(Math)),
        ("abs(-3)", i(3), None),
    ];
    check_rows(&event(), rows);
}

#[test]
fn cast_functions() {
    let rows: &[Row] = &[
        ("INT('+5')", i(5), None),
        ("INT('2147483647')", i(2147483647), None),
        ("INT('-2147483648')", i(-2147483648), None),
        ("INT('2147483648')", i(0), Some(Cast)),
        ("INT('')", i(0), Some(Cast)),
        ("INT(' 1')", i(0), Some(Cast)),
        ("INT('1.5')", i(0), Some(Cast)),
        ("INT('0x10')", i(0), Some(Cast)),
        ("INT(numstr)", i(42), None),
        ("BOOL('tRuE')", b(true), None),
        ("BOOL('')", b(false), Some(Cast)),
        ("BOOL(' true')", b(false), Some(Cast)),
        ("BOOL('1')", b(false), Some(Cast)),
        ("STRING(-2147483648)", s("-2147483648"), None),
        ("STRING(007)", s("7"), None),
        ("STRING(myint)", s("10"), None),
        ("IS_INT('12')", b(true), None),
        ("IS_INT('-12')", b(true), None),
        ("IS_INT('1a')", b(false), None),
        ("IS_INT(12)", b(true), None),
        ("IS_INT(TRUE)", b(false), None),
        ("IS_BOOL('FALSE')", b(true), None),
        ("IS_BOOL('no')", b(false), None),
        ("IS_BOOL(TRUE)", b(true), None),
        ("IS_BOOL(1)", b(false), None),
        ("is_bool(boolstr)", b(true), None),
        ("INT(missing)", i(0), Some(MissingAttribute)),
        ("STRING(missing)", s(""), Some(MissingAttribute)),
    ];
    check_rows(&event(), rows);
}

#[test]
fn dispatch_and_missing_functions() {
    let rows: &[Row] = &[
        ("NOPE()", b(false), Some(MissingFunction)),
        ("NOPE(1, 2)", b(false), Some(MissingFunction)),
        ("LENGTH()", b(false), Some(MissingFunction)),
        ("LENGTH('a', 'b')", b(false), Some(MissingFunction)),
        ("SUBSTRING('a')", b(false), Some(MissingFunction)),
        ("SUBSTRING('a', 1, 1, 1)", b(false), Some(MissingFunction)),
        ("ABS(1, 2)", b(false), Some(MissingFunction)),
        ("LEFT('a')", b(false), Some(MissingFunction)),
        // A missing function's value is Boolean false, so the enclosing
        // operator fails with its own zero value.
        ("NOPE() + 1", i(0), Some(MissingFunction)),
        ("NOT NOPE()", b(false), Some(MissingFunction)),
        ("TRUE OR NOPE()", b(true), None),
        ("Length('abc')", i(3), None),
        ("length('abc')", i(3), None),
        ("Concat_Ws('+', 'a', 'b')", s("a+b"), None),
        ("LENGTH ('abc')", i(3), None),
        ("LENGTH(UPPER(LOWER(CONCAT('A', 'b'))))", i(2), None),
        ("LENGTH(LEFT('abc', -1))", i(0), Some(FunctionEvaluation)),
    ];
    check_rows(&event(), rows);
}
