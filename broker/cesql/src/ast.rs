//! The compiled expression tree.
//!
//! The parser resolves everything that can be resolved statically: keywords
//! and function names are case-folded, identifiers lowercased, built-in
//! functions bound by name and arity, LIKE patterns precompiled, and chains
//! of the same logical operator flattened into one n-ary node (which keeps
//! the tree shallow for long `a OR b OR c ...` filters).

use crate::functions::Builtin;
use crate::like::LikePattern;
use crate::value::Type;

/// A literal value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lit {
    Bool(bool),
    Int(i32),
    Str(Box<str>),
}

/// Binary (non-logical) operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Mul,
    Div,
    Rem,
    Add,
    Sub,
    Eq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
}

impl BinOp {
    pub(crate) fn symbol(self) -> &'static str {
        match self {
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Eq => "=",
            BinOp::NotEq => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
        }
    }

    /// Return type of the operator.
    pub(crate) fn return_type(self) -> Type {
        match self {
            BinOp::Mul | BinOp::Div | BinOp::Rem | BinOp::Add | BinOp::Sub => Type::Integer,
            _ => Type::Boolean,
        }
    }
}

/// The logical operators; they share one precedence level and are
/// evaluated left to right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogicOp {
    And,
    Or,
    Xor,
}

/// A function invocation target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Callee {
    /// A built-in bound at parse time.
    Builtin(Builtin),
    /// No function with this name and arity: evaluates to `false` with a
    /// missingFunction error.
    Missing(Box<str>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expr {
    Lit(Lit),
    /// Attribute access by (lowercased) name.
    Ident(Box<str>),
    /// `NOT x`
    Not(Box<Expr>),
    /// `-x`
    Neg(Box<Expr>),
    /// `EXISTS name`
    Exists(Box<str>),
    /// `x [NOT] LIKE 'pattern'`
    Like {
        expr: Box<Expr>,
        pattern: LikePattern,
        negated: bool,
    },
    /// `x [NOT] IN (a, b, ...)`
    In {
        expr: Box<Expr>,
        set: Vec<Expr>,
        negated: bool,
    },
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    /// `a op b op c ...` with the same logical operator, at least two operands.
    Logic {
        op: LogicOp,
        operands: Vec<Expr>,
    },
    Call {
        callee: Callee,
        args: Vec<Expr>,
    },
}

impl Expr {
    /// The static return type, if known. Attribute access has a dynamic type.
    pub(crate) fn static_type(&self) -> Option<Type> {
        match self {
            Expr::Lit(Lit::Bool(_)) => Some(Type::Boolean),
            Expr::Lit(Lit::Int(_)) => Some(Type::Integer),
            Expr::Lit(Lit::Str(_)) => Some(Type::String),
            Expr::Ident(_) => None,
            Expr::Not(_) | Expr::Exists(_) | Expr::Like { .. } | Expr::In { .. } => {
                Some(Type::Boolean)
            }
            Expr::Logic { .. } => Some(Type::Boolean),
            Expr::Neg(_) => Some(Type::Integer),
            Expr::Binary { op, .. } => Some(op.return_type()),
            Expr::Call { callee, .. } => Some(match callee {
                Callee::Builtin(b) => b.return_type(),
                Callee::Missing(_) => Type::Boolean,
            }),
        }
    }
}
