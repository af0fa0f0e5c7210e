//! The type casts of CESQL v1 section 3.7.
//!
//! Every cast between two different primitive types is supported. Casts to
//! String never fail; String -> Integer and String -> Boolean can fail, in
//! which case the caller records a cast error and uses the zero value.

use std::borrow::Cow;

use crate::value::{Type, Val};

/// Why a cast failed: the source string and the target type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CastFailure {
    pub(crate) target: Type,
    pub(crate) message: String,
}

/// Max number of characters of an offending value quoted in a message.
const QUOTE_MAX: usize = 64;

fn quote(s: &str) -> String {
    if s.chars().count() <= QUOTE_MAX {
        format!("{s:?}")
    } else {
        let cut: String = s.chars().take(QUOTE_MAX).collect();
        format!("{cut:?}...")
    }
}

/// String -> Integer: base 10, optional leading `+` or `-`, must fit in 32
/// bits; nothing else (no whitespace) is accepted.
pub(crate) fn str_to_int(s: &str) -> Result<i32, String> {
    s.parse::<i32>()
        .map_err(|_| format!("cannot cast {} to Integer", quote(s)))
}

/// String -> Boolean: `true` or `false`, compared case-insensitively.
pub(crate) fn str_to_bool(s: &str) -> Result<bool, String> {
    if s.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if s.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(format!("cannot cast {} to Boolean", quote(s)))
    }
}

/// Cast any value to Integer. Boolean -> 1/0.
#[inline]
pub(crate) fn to_int(v: &Val<'_>) -> Result<i32, CastFailure> {
    match v {
        Val::Int(i) => Ok(*i),
        Val::Bool(b) => Ok(i32::from(*b)),
        Val::Str(s) => str_to_int(s).map_err(|message| CastFailure {
            target: Type::Integer,
            message,
        }),
    }
}

/// Cast any value to Boolean. Integer -> `x != 0`.
#[inline]
pub(crate) fn to_bool(v: &Val<'_>) -> Result<bool, CastFailure> {
    match v {
        Val::Bool(b) => Ok(*b),
        Val::Int(i) => Ok(*i != 0),
        Val::Str(s) => str_to_bool(s).map_err(|message| CastFailure {
            target: Type::Boolean,
            message,
        }),
    }
}

/// Cast any value to String (never fails). Only allocates when the value is
/// not already a string.
#[inline]
pub(crate) fn to_str(v: Val<'_>) -> Cow<'_, str> {
    match v {
        Val::Str(s) => s,
        Val::Int(i) => Cow::Owned(i.to_string()),
        Val::Bool(true) => Cow::Borrowed("true"),
        Val::Bool(false) => Cow::Borrowed("false"),
    }
}

/// Cast to the given type.
pub(crate) fn to_type(v: Val<'_>, t: Type) -> Result<Val<'_>, CastFailure> {
    Ok(match t {
        Type::Boolean => Val::Bool(to_bool(&v)?),
        Type::Integer => Val::Int(to_int(&v)?),
        Type::String => Val::Str(to_str(v)),
    })
}
