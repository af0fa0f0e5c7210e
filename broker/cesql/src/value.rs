//! Values: the public owned [`Value`], the borrowed [`AttrValue`] an event
//! hands out, and the internal borrowed `Val` the evaluator works with.

use std::borrow::Cow;
use std::fmt;

/// The three primitive CESQL types (section 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Type {
    /// `true` / `false`; zero value `false`.
    Boolean,
    /// 32-bit signed integer; zero value `0`.
    Integer,
    /// Unicode string; zero value `""`.
    String,
}

impl Type {
    /// Name of the type as the spec writes it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Type::Boolean => "Boolean",
            Type::Integer => "Integer",
            Type::String => "String",
        }
    }

    pub(crate) fn zero<'a>(self) -> Val<'a> {
        match self {
            Type::Boolean => Val::Bool(false),
            Type::Integer => Val::Int(0),
            Type::String => Val::Str(Cow::Borrowed("")),
        }
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result value of an evaluation. CESQL has no null: every expression
/// evaluates to one of these, even when errors occur.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value {
    /// A Boolean.
    Boolean(bool),
    /// A 32-bit signed Integer.
    Integer(i32),
    /// A String.
    String(String),
}

impl Value {
    /// The CESQL type of this value.
    pub fn type_of(&self) -> Type {
        match self {
            Value::Boolean(_) => Type::Boolean,
            Value::Integer(_) => Type::Integer,
            Value::String(_) => Type::String,
        }
    }

    /// The boolean, if this is a Boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    /// The integer, if this is an Integer.
    pub fn as_i32(&self) -> Option<i32> {
        match self {
            Value::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// The string, if this is a String.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// Borrow as an [`AttrValue`].
    pub fn as_attr(&self) -> AttrValue<'_> {
        match self {
            Value::Boolean(b) => AttrValue::Boolean(*b),
            Value::Integer(i) => AttrValue::Integer(*i),
            Value::String(s) => AttrValue::String(s),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Boolean(b) => write!(f, "{b}"),
            Value::Integer(i) => write!(f, "{i}"),
            Value::String(s) => f.write_str(s),
        }
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Boolean(b)
    }
}

impl From<i32> for Value {
    fn from(i: i32) -> Self {
        Value::Integer(i)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

/// An attribute value as handed out by an event, borrowed from it.
///
/// CloudEvent `Integer` maps to `Integer`, `Boolean` to `Boolean`, and every
/// other type (String, URI, URI-reference, Timestamp, Binary) to its
/// canonical string form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttrValue<'a> {
    /// A string (or string-represented) attribute.
    String(&'a str),
    /// An Integer attribute.
    Integer(i32),
    /// A Boolean attribute.
    Boolean(bool),
}

impl AttrValue<'_> {
    /// Convert into an owned [`Value`].
    pub fn to_value(&self) -> Value {
        match *self {
            AttrValue::String(s) => Value::String(s.to_owned()),
            AttrValue::Integer(i) => Value::Integer(i),
            AttrValue::Boolean(b) => Value::Boolean(b),
        }
    }
}

/// Internal evaluation value: strings borrow from the expression (literals)
/// or the event (attributes) whenever possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Val<'a> {
    Bool(bool),
    Int(i32),
    Str(Cow<'a, str>),
}

impl<'a> Val<'a> {
    pub(crate) fn type_of(&self) -> Type {
        match self {
            Val::Bool(_) => Type::Boolean,
            Val::Int(_) => Type::Integer,
            Val::Str(_) => Type::String,
        }
    }

    pub(crate) fn into_value(self) -> Value {
        match self {
            Val::Bool(b) => Value::Boolean(b),
            Val::Int(i) => Value::Integer(i),
            Val::Str(s) => Value::String(s.into_owned()),
        }
    }

    pub(crate) fn from_attr(a: AttrValue<'a>) -> Self {
        match a {
            AttrValue::String(s) => Val::Str(Cow::Borrowed(s)),
            AttrValue::Integer(i) => Val::Int(i),
            AttrValue::Boolean(b) => Val::Bool(b),
        }
    }
}
