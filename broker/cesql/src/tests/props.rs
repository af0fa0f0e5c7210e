//! Property tests: parsing and evaluation never panic, whatever the input,
//! and evaluation agrees with `matches`.

use proptest::prelude::*;

use super::event;
use crate::Expression;

/// Fragments that make random input look like CESQL, so the generator
/// reaches deep into the parser and evaluator instead of failing in the
/// lexer.
const FRAGMENTS: &[&str] = &[
    " ",
    "(",
    ")",
    ",",
    "+",
    "-",
    "*",
    "/",
    "%",
    "=",
    "!=",
    "<>",
    "<",
    "<=",
    ">",
    ">=",
    "AND",
    "OR",
    "XOR",
    "NOT",
    "LIKE",
    "IN",
    "EXISTS",
    "TRUE",
    "FALSE",
    "0",
    "1",
    "-1",
    "2147483647",
    "-2147483648",
    "2147483648",
    "'a%'",
    "'_b'",
    "'\\%'",
    "''",
    "\"x\"",
    "'",
    "\"",
    "\\",
    "myint",
    "mybool",
    "myext",
    "numstr",
    "boolstr",
    "missing",
    "id",
    "LENGTH",
    "CONCAT",
    "CONCAT_WS",
    "LOWER",
    "UPPER",
    "TRIM",
    "LEFT",
    "RIGHT",
    "SUBSTRING",
    "ABS",
    "INT",
    "BOOL",
    "STRING",
    "IS_BOOL",
    "IS_INT",
    "NOPE",
    "é",
    "日本",
    "\u{0}",
];

fn cesql_like() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(FRAGMENTS), 0..40).prop_map(|v| v.join(" "))
}

fn cesql_like_tight() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(FRAGMENTS), 0..40).prop_map(|v| v.concat())
}

fn check(src: &str) {
    if let Ok(expr) = Expression::parse(src) {
        let ev = event();
        let full = expr.evaluate(&ev);
        assert_eq!(expr.matches(&ev), full.is_match(), "{src:?}");
        let _ = expr.evaluate(&());
        let _ = expr.diagnostics();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_panics_on_arbitrary_strings(src in any::<String>()) {
        check(&src);
    }

    #[test]
    fn never_panics_on_ascii_soup(src in "[ -~\t\n]{0,80}") {
        check(&src);
    }

    #[test]
    fn never_panics_on_token_soup(src in cesql_like()) {
        check(&src);
    }

    #[test]
    fn never_panics_on_glued_tokens(src in cesql_like_tight()) {
        check(&src);
    }

    #[test]
    fn like_agrees_with_reference(
        // A string literal cannot end in a lone backslash (it would escape
        // the closing quote), hence the last character class.
        pat in "([ab%_\\\\]{0,7}[ab%_])?",
        text in "([ab%_\\\\]{0,7}[ab%_])?",
    ) {
        let src = format!("'{}' LIKE '{}'", text.replace('\'', "''"), pat.replace('\'', "''"));
        let got = Expression::parse(&src).unwrap().evaluate(&()).value;
        prop_assert_eq!(got, crate::Value::Boolean(reference_like(&pat, &text)), "{}", src);
    }

    #[test]
    fn integer_arithmetic_matches_checked_i64(x in any::<i32>(), y in any::<i32>()) {
        for (op, want) in [
            ("+", i64::from(x) + i64::from(y)),
            ("-", i64::from(x) - i64::from(y)),
            ("*", i64::from(x) * i64::from(y)),
        ] {
            let e = Expression::parse(&format!("{x} {op} {y}")).unwrap().evaluate(&());
            match i32::try_from(want) {
                Ok(w) => prop_assert!(e.is_ok() && e.value == crate::Value::Integer(w)),
                Err(_) => prop_assert!(e.has_error(crate::ErrorKind::Math)),
            }
        }
        let e = Expression::parse(&format!("{x} / {y}")).unwrap().evaluate(&());
        match x.checked_div(y) {
            Some(w) => prop_assert_eq!(e.value, crate::Value::Integer(w)),
            None => prop_assert!(e.has_error(crate::ErrorKind::Math)),
        }
    }
}

/// Straightforward recursive LIKE matcher used as the oracle.
fn reference_like(pat: &str, text: &str) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum T {
        Lit(char),
        One,
        Many,
    }
    let mut toks = Vec::new();
    let mut it = pat.chars().peekable();
    while let Some(c) = it.next() {
        toks.push(match c {
            '\\' => match it.peek() {
                Some(&n) if matches!(n, '%' | '_' | '\\') => {
                    it.next();
                    T::Lit(n)
                }
                _ => T::Lit('\\'),
            },
            '%' => T::Many,
            '_' => T::One,
            c => T::Lit(c),
        });
    }
    fn go(p: &[T], s: &[char]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some(T::Many) => (0..=s.len()).any(|k| go(&p[1..], &s[k..])),
            Some(T::One) => !s.is_empty() && go(&p[1..], &s[1..]),
            Some(T::Lit(c)) => s.first() == Some(c) && go(&p[1..], &s[1..]),
        }
    }
    let chars: Vec<char> = text.chars().collect();
    go(&toks, &chars)
}
