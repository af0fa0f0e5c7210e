//! Static checks (spec 3.3: "some error checks SHOULD be done at compile
//! time"). They do not make parsing fail — the spec defines these as
//! evaluation errors, and the TCK expects them at evaluation — but they are
//! reported by [`crate::Expression::diagnostics`] so that a control plane
//! can warn about or reject filters that can never evaluate cleanly:
//!
//! - calls to functions that do not exist with that name and arity
//!   (missingFunction);
//! - literal operands that can never be cast to the operator's or
//!   function's parameter type (cast), e.g. `NOT 'maybe'` or `'x' + 1`.

use std::borrow::Cow;

use crate::ast::{BinOp, Callee, Expr, Lit};
use crate::cast;
use crate::error::{ErrorKind, EvalError};
use crate::value::{Type, Val};

pub(crate) fn diagnostics(root: &Expr) -> Vec<EvalError> {
    let mut out = Vec::new();
    walk(root, &mut out);
    out
}

fn lit_val(e: &Expr) -> Option<Val<'_>> {
    match e {
        Expr::Lit(Lit::Bool(b)) => Some(Val::Bool(*b)),
        Expr::Lit(Lit::Int(i)) => Some(Val::Int(*i)),
        Expr::Lit(Lit::Str(s)) => Some(Val::Str(Cow::Borrowed(s))),
        _ => None,
    }
}

fn check_cast(e: &Expr, target: Type, ctx: &str, out: &mut Vec<EvalError>) {
    if let Some(v) = lit_val(e) {
        if let Err(f) = cast::to_type(v, target) {
            out.push(EvalError::new(
                ErrorKind::Cast,
                format!("{ctx}: {} (always fails)", f.message),
            ));
        }
    }
}

fn walk(e: &Expr, out: &mut Vec<EvalError>) {
    match e {
        Expr::Lit(_) | Expr::Ident(_) | Expr::Exists(_) => {}
        Expr::Not(x) => {
            check_cast(x, Type::Boolean, "NOT", out);
            walk(x, out);
        }
        Expr::Neg(x) => {
            check_cast(x, Type::Integer, "unary -", out);
            walk(x, out);
        }
        Expr::Like { expr, .. } => walk(expr, out),
        Expr::In { expr, set, .. } => {
            if let Some(t) = expr.static_type() {
                for el in set {
                    check_cast(el, t, "IN", out);
                }
            }
            walk(expr, out);
            set.iter().for_each(|x| walk(x, out));
        }
        Expr::Binary { op, lhs, rhs } => {
            match op {
                BinOp::Eq | BinOp::NotEq => {
                    if let Some(t) = rhs.static_type() {
                        check_cast(lhs, t, op.symbol(), out);
                    }
                }
                _ => {
                    check_cast(lhs, Type::Integer, op.symbol(), out);
                    check_cast(rhs, Type::Integer, op.symbol(), out);
                }
            }
            walk(lhs, out);
            walk(rhs, out);
        }
        Expr::Logic { operands, .. } => {
            for x in operands {
                check_cast(x, Type::Boolean, "logical operator", out);
                walk(x, out);
            }
        }
        Expr::Call { callee, args } => {
            match callee {
                Callee::Missing(name) => out.push(EvalError::new(
                    ErrorKind::MissingFunction,
                    format!("no function {name} taking {} argument(s)", args.len()),
                )),
                Callee::Builtin(f) => {
                    for (i, a) in args.iter().enumerate() {
                        if let Some(t) = f.param_type(i) {
                            check_cast(a, t, f.name(), out);
                        }
                    }
                }
            }
            args.iter().for_each(|x| walk(x, out));
        }
    }
}
