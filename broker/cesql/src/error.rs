//! Error types: the parse error returned by [`crate::Expression::parse`] and
//! the evaluation errors collected by [`crate::Expression::evaluate`].

use std::fmt;

/// A syntax (or static) error found while parsing an expression.
///
/// `offset` is the byte offset into the source where the problem was found,
/// `expected` says what the parser expected there (for example
/// `"expression"`, `"')'"`, `"string literal"`), and `message` is a human
/// readable description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset into the source text.
    pub offset: usize,
    /// What the parser expected at `offset`.
    pub expected: String,
    /// Human readable description of the problem.
    pub message: String,
}

impl ParseError {
    pub(crate) fn new(
        offset: usize,
        expected: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ParseError {
            offset,
            expected: expected.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "parse error at byte {}: {} (expected {})",
            self.offset, self.message, self.expected
        )
    }
}

impl std::error::Error for ParseError {}

/// The error kinds defined by CESQL v1 section 3.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// An error that occurs during parsing.
    Parse,
    /// An error during the evaluation of a mathematical operation
    /// (division by zero, overflow).
    Math,
    /// An error during an implicit or explicit type cast.
    Cast,
    /// A call to a function that does not exist with that name and arity.
    MissingFunction,
    /// An error during the evaluation of a function.
    FunctionEvaluation,
    /// An attribute referenced by the expression is absent from the event.
    MissingAttribute,
    /// Any other error.
    Generic,
}

impl ErrorKind {
    /// The name the CESQL TCK uses for this kind.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorKind::Parse => "parse",
            ErrorKind::Math => "math",
            ErrorKind::Cast => "cast",
            ErrorKind::MissingFunction => "missingFunction",
            ErrorKind::FunctionEvaluation => "functionEvaluation",
            ErrorKind::MissingAttribute => "missingAttribute",
            ErrorKind::Generic => "generic",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One error collected while evaluating (or statically checking) an
/// expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError {
    /// The CESQL error kind.
    pub kind: ErrorKind,
    /// Human readable description.
    pub message: String,
}

impl EvalError {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        EvalError {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error: {}", self.kind, self.message)
    }
}

impl std::error::Error for EvalError {}

impl From<ParseError> for EvalError {
    fn from(e: ParseError) -> Self {
        EvalError::new(ErrorKind::Parse, e.to_string())
    }
}

/// Where evaluation records its errors.
///
/// `count` is always maintained (operators compare it before and after
/// evaluating their operands to detect a failed operand); the messages are
/// only materialised when `list` is present, so [`crate::Expression::matches`]
/// never allocates for errors.
pub(crate) struct Sink {
    list: Option<Vec<EvalError>>,
    count: usize,
}

impl Sink {
    pub(crate) fn collecting() -> Self {
        Sink {
            list: Some(Vec::new()),
            count: 0,
        }
    }

    pub(crate) fn counting() -> Self {
        Sink {
            list: None,
            count: 0,
        }
    }

    #[inline]
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    #[inline]
    pub(crate) fn push(&mut self, kind: ErrorKind, message: impl FnOnce() -> String) {
        self.count += 1;
        if let Some(list) = &mut self.list {
            list.push(EvalError::new(kind, message()));
        }
    }

    pub(crate) fn into_errors(self) -> Vec<EvalError> {
        self.list.unwrap_or_default()
    }
}
