//! Tree-walking evaluator.
//!
//! Error model (spec 3.3 / 4.1): every node returns a value of its return
//! type. When one of its operands failed (recorded an error), or when
//! casting an operand to the operator's parameter type fails, the node
//! returns the zero value of its return type. Errors raised by the node
//! itself come with the value the spec prescribes (for example `0` for a
//! division by zero, `x` for `LEFT(x, -1)`, `2147483647` for
//! `ABS(-2147483648)`). All errors are appended to the sink, so the caller
//! sees every error of the evaluation, in evaluation order.
//!
//! Strings are borrowed from the expression (literals) and from the event
//! (attributes), so comparisons, LIKE and logic never allocate unless a cast
//! to String of a non-string value is needed.

use std::borrow::Cow;

use crate::ast::{BinOp, Callee, Expr, Lit, LogicOp};
use crate::cast::{self, CastFailure};
use crate::error::{ErrorKind, Sink};
use crate::functions::{self, Builtin};
use crate::value::{Type, Val};
use crate::Attributes;

/// Context attributes that are REQUIRED by CloudEvents v1.0: `EXISTS` is
/// always true for them (spec 3.4.4).
const REQUIRED_ATTRIBUTES: [&str; 4] = ["id", "source", "specversion", "type"];

fn cast_error(sink: &mut Sink, what: &str, failure: CastFailure) {
    sink.push(ErrorKind::Cast, || {
        format!("{what}: {} (expected {})", failure.message, failure.target)
    });
}

/// Evaluate `e` against `ev`.
pub(crate) fn eval<'a, A: Attributes + ?Sized>(e: &'a Expr, ev: &'a A, sink: &mut Sink) -> Val<'a> {
    match e {
        Expr::Lit(Lit::Bool(b)) => Val::Bool(*b),
        Expr::Lit(Lit::Int(i)) => Val::Int(*i),
        Expr::Lit(Lit::Str(s)) => Val::Str(Cow::Borrowed(s)),
        Expr::Ident(name) => match ev.attribute(name) {
            Some(a) => Val::from_attr(a),
            None => {
                sink.push(ErrorKind::MissingAttribute, || {
                    format!("attribute '{name}' is not present in the event")
                });
                // The type of a bare attribute cannot be determined: Boolean.
                Val::Bool(false)
            }
        },
        Expr::Exists(name) => {
            Val::Bool(REQUIRED_ATTRIBUTES.contains(&&**name) || ev.attribute(name).is_some())
        }
        Expr::Not(x) => {
            let before = sink.count();
            let v = eval(x, ev, sink);
            if sink.count() != before {
                return Val::Bool(false);
            }
            match cast::to_bool(&v) {
                Ok(b) => Val::Bool(!b),
                Err(f) => {
                    cast_error(sink, "NOT", f);
                    Val::Bool(false)
                }
            }
        }
        Expr::Neg(x) => {
            let before = sink.count();
            let v = eval(x, ev, sink);
            if sink.count() != before {
                return Val::Int(0);
            }
            match cast::to_int(&v) {
                Ok(i) => match i.checked_neg() {
                    Some(n) => Val::Int(n),
                    None => {
                        sink.push(ErrorKind::Math, || {
                            format!("negating {i} overflows a 32-bit integer")
                        });
                        Val::Int(0)
                    }
                },
                Err(f) => {
                    cast_error(sink, "unary -", f);
                    Val::Int(0)
                }
            }
        }
        Expr::Like {
            expr,
            pattern,
            negated,
        } => {
            let before = sink.count();
            let v = eval(expr, ev, sink);
            if sink.count() != before {
                return Val::Bool(false);
            }
            let s = cast::to_str(v);
            Val::Bool(pattern.matches(&s) != *negated)
        }
        Expr::In { expr, set, negated } => eval_in(expr, set, *negated, ev, sink),
        Expr::Binary { op, lhs, rhs } => {
            let before = sink.count();
            let l = eval(lhs, ev, sink);
            let r = eval(rhs, ev, sink);
            if sink.count() != before {
                return op.return_type().zero();
            }
            eval_binary(*op, l, r, sink)
        }
        Expr::Logic { op, operands } => eval_logic(*op, operands, ev, sink),
        Expr::Call { callee, args } => match callee {
            Callee::Missing(name) => {
                sink.push(ErrorKind::MissingFunction, || {
                    format!(
                        "no function {name} taking {} argument{}",
                        args.len(),
                        if args.len() == 1 { "" } else { "s" }
                    )
                });
                Val::Bool(false)
            }
            Callee::Builtin(f) => eval_call(*f, args, ev, sink),
        },
    }
}

fn eval_in<'a, A: Attributes + ?Sized>(
    expr: &'a Expr,
    set: &'a [Expr],
    negated: bool,
    ev: &'a A,
    sink: &mut Sink,
) -> Val<'a> {
    let before = sink.count();
    let x = eval(expr, ev, sink);
    if sink.count() != before {
        return Val::Bool(false);
    }
    // The left operand's type is the target type of the set elements.
    let target = x.type_of();
    let mut found = false;
    for el in set {
        let el_before = sink.count();
        let v = eval(el, ev, sink);
        if sink.count() != el_before {
            continue;
        }
        match cast::to_type(v, target) {
            Ok(v) => found |= v == x,
            Err(f) => cast_error(sink, "IN", f),
        }
    }
    if sink.count() != before {
        return Val::Bool(false);
    }
    Val::Bool(found != negated)
}

fn eval_binary<'a>(op: BinOp, l: Val<'a>, r: Val<'a>, sink: &mut Sink) -> Val<'a> {
    match op {
        BinOp::Eq | BinOp::NotEq => {
            // `=` is ambiguous: the right operand's type selects the
            // overload and the left operand is cast to it (spec 3.7).
            let eq = match &r {
                Val::Str(y) => match l {
                    Val::Str(x) => x == *y,
                    other => cast::to_str(other) == **y,
                },
                Val::Int(y) => match cast::to_int(&l) {
                    Ok(x) => x == *y,
                    Err(f) => {
                        cast_error(sink, op.symbol(), f);
                        return Val::Bool(false);
                    }
                },
                Val::Bool(y) => match cast::to_bool(&l) {
                    Ok(x) => x == *y,
                    Err(f) => {
                        cast_error(sink, op.symbol(), f);
                        return Val::Bool(false);
                    }
                },
            };
            Val::Bool(eq == (op == BinOp::Eq))
        }
        _ => {
            let (x, y) = match (cast::to_int(&l), cast::to_int(&r)) {
                (Ok(x), Ok(y)) => (x, y),
                (Err(f), _) | (_, Err(f)) => {
                    cast_error(sink, op.symbol(), f);
                    return op.return_type().zero();
                }
            };
            arith_or_order(op, x, y, sink)
        }
    }
}

fn arith_or_order<'a>(op: BinOp, x: i32, y: i32, sink: &mut Sink) -> Val<'a> {
    let checked = match op {
        BinOp::Lt => return Val::Bool(x < y),
        BinOp::Le => return Val::Bool(x <= y),
        BinOp::Gt => return Val::Bool(x > y),
        BinOp::Ge => return Val::Bool(x >= y),
        BinOp::Eq | BinOp::NotEq => return Val::Bool((x == y) == (op == BinOp::Eq)),
        BinOp::Add => x.checked_add(y),
        BinOp::Sub => x.checked_sub(y),
        BinOp::Mul => x.checked_mul(y),
        BinOp::Div | BinOp::Rem if y == 0 => {
            sink.push(ErrorKind::Math, || {
                format!("division by zero in {x} {} 0", op.symbol())
            });
            return Val::Int(0);
        }
        BinOp::Div => x.checked_div(y),
        // i32::MIN % -1 is mathematically 0.
        BinOp::Rem => Some(x.wrapping_rem(y)),
    };
    match checked {
        Some(v) => Val::Int(v),
        None => {
            sink.push(ErrorKind::Math, || {
                format!("{x} {} {y} overflows a 32-bit integer", op.symbol())
            });
            Val::Int(0)
        }
    }
}

fn eval_logic<'a, A: Attributes + ?Sized>(
    op: LogicOp,
    operands: &'a [Expr],
    ev: &'a A,
    sink: &mut Sink,
) -> Val<'a> {
    let name = match op {
        LogicOp::And => "AND",
        LogicOp::Or => "OR",
        LogicOp::Xor => "XOR",
    };
    let start = sink.count();
    let mut acc = false;
    for operand in operands {
        let before = sink.count();
        let v = eval(operand, ev, sink);
        if sink.count() != before {
            // A failed operand makes the whole operation fail: zero value.
            // AND / OR stop here; XOR goes on to report every error.
            if op == LogicOp::Xor {
                continue;
            }
            return Val::Bool(false);
        }
        let b = match cast::to_bool(&v) {
            Ok(b) => b,
            Err(f) => {
                cast_error(sink, name, f);
                if op == LogicOp::Xor {
                    continue;
                }
                return Val::Bool(false);
            }
        };
        match op {
            // Short-circuit evaluation (spec 3.4.2).
            LogicOp::And if !b => return Val::Bool(false),
            LogicOp::Or if b => return Val::Bool(true),
            LogicOp::Xor => acc ^= b,
            _ => {}
        }
    }
    if sink.count() != start {
        return Val::Bool(false);
    }
    Val::Bool(match op {
        LogicOp::And => true,
        LogicOp::Or => false,
        LogicOp::Xor => acc,
    })
}

fn eval_call<'a, A: Attributes + ?Sized>(
    f: Builtin,
    args: &'a [Expr],
    ev: &'a A,
    sink: &mut Sink,
) -> Val<'a> {
    let before = sink.count();
    if matches!(f, Builtin::Concat | Builtin::ConcatWs) {
        return eval_concat(f, args, ev, sink);
    }
    let mut vals: [Option<Val<'a>>; 3] = [None, None, None];
    for (slot, arg) in vals.iter_mut().zip(args) {
        *slot = Some(eval(arg, ev, sink));
    }
    if sink.count() != before {
        return f.return_type().zero();
    }
    for (i, slot) in vals.iter_mut().enumerate() {
        // `None` parameter type means Any: the cast functions cast themselves.
        let Some(t) = f.param_type(i) else {
            continue;
        };
        let Some(v) = slot.take() else {
            continue;
        };
        match cast::to_type(v, t) {
            Ok(v) => *slot = Some(v),
            Err(failure) => {
                cast_error(sink, f.name(), failure);
                return f.return_type().zero();
            }
        }
    }
    functions::run(f, vals, sink)
}

fn eval_concat<'a, A: Attributes + ?Sized>(
    f: Builtin,
    args: &'a [Expr],
    ev: &'a A,
    sink: &mut Sink,
) -> Val<'a> {
    let before = sink.count();
    let mut out = String::new();
    let mut sep: Option<Cow<'a, str>> = None;
    let mut first = true;
    for (i, arg) in args.iter().enumerate() {
        let s = cast::to_str(eval(arg, ev, sink));
        if f == Builtin::ConcatWs && i == 0 {
            sep = Some(s);
            continue;
        }
        if !first {
            if let Some(sep) = &sep {
                out.push_str(sep);
            }
        }
        first = false;
        out.push_str(&s);
    }
    if sink.count() != before {
        return Type::String.zero();
    }
    Val::Str(Cow::Owned(out))
}
