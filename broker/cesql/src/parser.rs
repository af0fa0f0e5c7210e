//! Precedence-climbing parser (spec 2 and 3.6).
//!
//! Precedence, tightest first: function invocation; unary `NOT` and `-`;
//! `LIKE`; `EXISTS`; `IN`; `* / %`; `+ -`; comparisons; `AND OR XOR`.
//! Binary operators of equal precedence associate to the left. Note that
//! following the spec, `NOT a = b` parses as `(NOT a) = b` and
//! `a OR b AND c` as `(a OR b) AND c`.
//!
//! Recursion is bounded by [`MAX_DEPTH`], and so is the depth of the tree
//! (which bounds the evaluator's recursion): deeper input is a parse error.

use crate::ast::{BinOp, Callee, Expr, Lit, LogicOp};
use crate::error::ParseError;
use crate::functions::Builtin;
use crate::lexer::{tokenize, Keyword, Tok, Token};
use crate::like::LikePattern;

/// Maximum nesting depth of an expression (parentheses, operators,
/// function calls). Deeper expressions are rejected with a parse error.
pub const MAX_DEPTH: usize = 100;

/// Binding power of the infix / postfix operators.
const BP_LOGIC: u8 = 1;
const BP_CMP: u8 = 2;
const BP_ADD: u8 = 3;
const BP_MUL: u8 = 4;
const BP_IN: u8 = 5;
const BP_LIKE: u8 = 6;

enum Infix {
    Bin(BinOp),
    Logic(LogicOp),
    Like { negated: bool },
    In { negated: bool },
}

/// A parsed node together with its depth in the tree.
type Node = (Expr, usize);

pub(crate) fn parse(src: &str) -> Result<Expr, ParseError> {
    let tokens = tokenize(src)?;
    let mut p = Parser {
        src,
        tokens,
        pos: 0,
        nesting: 0,
    };
    let (expr, _) = p.expr(BP_LOGIC)?;
    let t = p.peek();
    if t.tok != Tok::Eof {
        let expected = if matches!(t.tok, Tok::Kw(Keyword::Not)) {
            "LIKE or IN after NOT"
        } else {
            "operator or end of input"
        };
        return Err(ParseError::new(
            t.start,
            expected,
            format!("unexpected {}", t.tok.describe()),
        ));
    }
    Ok(expr)
}

struct Parser<'s> {
    src: &'s str,
    tokens: Vec<Token>,
    pos: usize,
    nesting: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &Token {
        self.peek_at(0)
    }

    fn peek_at(&self, ahead: usize) -> &Token {
        // The token list always ends with Eof; clamp to it.
        let i = (self.pos + ahead).min(self.tokens.len().saturating_sub(1));
        &self.tokens[i]
    }

    fn bump(&mut self) -> Token {
        let t = self.peek().clone();
        if self.pos < self.tokens.len().saturating_sub(1) {
            self.pos += 1;
        }
        t
    }

    fn unexpected(&self, expected: &str) -> ParseError {
        let t = self.peek();
        ParseError::new(
            t.start,
            expected,
            format!("unexpected {}, expected {expected}", t.tok.describe()),
        )
    }

    fn expect(&mut self, tok: Tok, expected: &str) -> Result<Token, ParseError> {
        if self.peek().tok == tok {
            Ok(self.bump())
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.nesting += 1;
        if self.nesting > MAX_DEPTH {
            return Err(self.too_deep());
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.nesting = self.nesting.saturating_sub(1);
    }

    fn too_deep(&self) -> ParseError {
        ParseError::new(
            self.peek().start,
            "a less deeply nested expression",
            format!("expression nested deeper than {MAX_DEPTH} levels"),
        )
    }

    fn check_depth(&self, node: Node) -> Result<Node, ParseError> {
        if node.1 > MAX_DEPTH {
            Err(self.too_deep())
        } else {
            Ok(node)
        }
    }

    /// Parse an expression whose infix operators all bind at least `min_bp`.
    fn expr(&mut self, min_bp: u8) -> Result<Node, ParseError> {
        self.enter()?;
        let r = self.expr_inner(min_bp);
        self.leave();
        r
    }

    fn peek_infix(&self) -> Option<(Infix, u8)> {
        let op = match &self.peek().tok {
            Tok::Star => (Infix::Bin(BinOp::Mul), BP_MUL),
            Tok::Slash => (Infix::Bin(BinOp::Div), BP_MUL),
            Tok::Percent => (Infix::Bin(BinOp::Rem), BP_MUL),
            Tok::Plus => (Infix::Bin(BinOp::Add), BP_ADD),
            Tok::Minus => (Infix::Bin(BinOp::Sub), BP_ADD),
            Tok::Eq => (Infix::Bin(BinOp::Eq), BP_CMP),
            Tok::NotEq => (Infix::Bin(BinOp::NotEq), BP_CMP),
            Tok::Lt => (Infix::Bin(BinOp::Lt), BP_CMP),
            Tok::Le => (Infix::Bin(BinOp::Le), BP_CMP),
            Tok::Gt => (Infix::Bin(BinOp::Gt), BP_CMP),
            Tok::Ge => (Infix::Bin(BinOp::Ge), BP_CMP),
            Tok::Kw(Keyword::And) => (Infix::Logic(LogicOp::And), BP_LOGIC),
            Tok::Kw(Keyword::Or) => (Infix::Logic(LogicOp::Or), BP_LOGIC),
            Tok::Kw(Keyword::Xor) => (Infix::Logic(LogicOp::Xor), BP_LOGIC),
            Tok::Kw(Keyword::Like) => (Infix::Like { negated: false }, BP_LIKE),
            Tok::Kw(Keyword::In) => (Infix::In { negated: false }, BP_IN),
            Tok::Kw(Keyword::Not) => match self.peek_at(1).tok {
                Tok::Kw(Keyword::Like) => (Infix::Like { negated: true }, BP_LIKE),
                Tok::Kw(Keyword::In) => (Infix::In { negated: true }, BP_IN),
                _ => return None,
            },
            _ => return None,
        };
        Some(op)
    }

    fn expr_inner(&mut self, min_bp: u8) -> Result<Node, ParseError> {
        let (mut lhs, mut depth) = self.unary()?;
        while let Some((op, bp)) = self.peek_infix() {
            if bp < min_bp {
                break;
            }
            let node = match op {
                Infix::Like { negated } => {
                    if negated {
                        self.bump();
                    }
                    self.bump();
                    let t = self.peek();
                    let pattern = match &t.tok {
                        Tok::Str(s) => LikePattern::compile(s),
                        _ => {
                            return Err(self.unexpected(
                                "string literal (the LIKE pattern must be a string literal)",
                            ))
                        }
                    };
                    self.bump();
                    let e = Expr::Like {
                        expr: Box::new(lhs),
                        pattern,
                        negated,
                    };
                    (e, depth + 1)
                }
                Infix::In { negated } => {
                    if negated {
                        self.bump();
                    }
                    self.bump();
                    let (set, d) = self.set()?;
                    let e = Expr::In {
                        expr: Box::new(lhs),
                        set,
                        negated,
                    };
                    (e, depth.max(d) + 1)
                }
                Infix::Bin(op) => {
                    self.bump();
                    let (rhs, d) = self.expr(bp + 1)?;
                    let e = Expr::Binary {
                        op,
                        lhs: Box::new(lhs),
                        rhs: Box::new(rhs),
                    };
                    (e, depth.max(d) + 1)
                }
                Infix::Logic(op) => {
                    self.bump();
                    let (rhs, d) = self.expr(bp + 1)?;
                    match lhs {
                        // Flatten `a AND b AND c` into one node.
                        Expr::Logic {
                            op: lop,
                            mut operands,
                        } if lop == op => {
                            operands.push(rhs);
                            (Expr::Logic { op, operands }, depth.max(d + 1))
                        }
                        lhs => (
                            Expr::Logic {
                                op,
                                operands: vec![lhs, rhs],
                            },
                            depth.max(d) + 1,
                        ),
                    }
                }
            };
            (lhs, depth) = self.check_depth(node)?;
        }
        Ok((lhs, depth))
    }

    /// `"(" expression ("," expression)* ")"`
    fn set(&mut self) -> Result<(Vec<Expr>, usize), ParseError> {
        self.expect(Tok::LParen, "'(' starting the IN set")?;
        let mut items = Vec::new();
        let mut depth = 0;
        loop {
            let (e, d) = self.expr(BP_LOGIC)?;
            items.push(e);
            depth = depth.max(d);
            match self.peek().tok {
                Tok::Comma => {
                    self.bump();
                }
                Tok::RParen => {
                    self.bump();
                    return Ok((items, depth));
                }
                _ => return Err(self.unexpected("',' or ')'")),
            }
        }
    }

    /// Prefix operators, then a primary.
    fn unary(&mut self) -> Result<Node, ParseError> {
        match self.peek().tok {
            Tok::Kw(Keyword::Not) => {
                self.bump();
                self.enter()?;
                let r = self.unary();
                self.leave();
                let (e, d) = r?;
                self.check_depth((Expr::Not(Box::new(e)), d + 1))
            }
            Tok::Minus => {
                self.bump();
                if let Tok::Int(n) = self.peek().tok {
                    // A signed integer literal; this is also the only way to
                    // write -2147483648.
                    let t = self.bump();
                    let v = n.map(|n| -n);
                    return Ok((Expr::Lit(Lit::Int(self.int_value(v, &t)?)), 1));
                }
                self.enter()?;
                let r = self.unary();
                self.leave();
                let (e, d) = r?;
                self.check_depth((Expr::Neg(Box::new(e)), d + 1))
            }
            Tok::Plus => {
                self.bump();
                match self.peek().tok {
                    Tok::Int(n) => {
                        let t = self.bump();
                        Ok((Expr::Lit(Lit::Int(self.int_value(n, &t)?)), 1))
                    }
                    _ => Err(self.unexpected("integer literal after '+' (there is no unary +)")),
                }
            }
            Tok::Kw(Keyword::Exists) => {
                self.bump();
                let t = self.peek().clone();
                let name = match &t.tok {
                    Tok::Word(w) => self.value_identifier(w, &t)?,
                    // All-digit names are valid attribute names.
                    Tok::Int(_) => self.src.get(t.start..t.end).unwrap_or_default().into(),
                    _ => return Err(self.unexpected("attribute name after EXISTS")),
                };
                self.bump();
                Ok((Expr::Exists(name), 1))
            }
            _ => self.primary(),
        }
    }

    fn int_value(&self, v: Option<i64>, t: &Token) -> Result<i32, ParseError> {
        v.and_then(|v| i32::try_from(v).ok()).ok_or_else(|| {
            ParseError::new(
                t.start,
                "integer literal between -2147483648 and 2147483647",
                "integer literal out of the 32-bit signed range",
            )
        })
    }

    fn value_identifier(&self, w: &str, t: &Token) -> Result<Box<str>, ParseError> {
        if w.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Ok(w.to_ascii_lowercase().into_boxed_str())
        } else {
            Err(ParseError::new(
                t.start,
                "attribute name ([a-z0-9]+)",
                format!("'{w}' is not a valid attribute name"),
            ))
        }
    }

    fn primary(&mut self) -> Result<Node, ParseError> {
        let t = self.peek().clone();
        match t.tok {
            Tok::Int(n) => {
                self.bump();
                Ok((Expr::Lit(Lit::Int(self.int_value(n, &t)?)), 1))
            }
            Tok::Str(ref s) => {
                self.bump();
                Ok((Expr::Lit(Lit::Str(s.as_str().into())), 1))
            }
            Tok::Kw(Keyword::True) => {
                self.bump();
                Ok((Expr::Lit(Lit::Bool(true)), 1))
            }
            Tok::Kw(Keyword::False) => {
                self.bump();
                Ok((Expr::Lit(Lit::Bool(false)), 1))
            }
            Tok::LParen => {
                self.bump();
                let (e, d) = self.expr(BP_LOGIC)?;
                self.expect(Tok::RParen, "')'")?;
                Ok((e, d))
            }
            Tok::Word(ref w) => {
                self.bump();
                if self.peek().tok == Tok::LParen {
                    self.call(w, &t)
                } else {
                    Ok((Expr::Ident(self.value_identifier(w, &t)?), 1))
                }
            }
            _ => Err(self.unexpected("expression")),
        }
    }

    /// `function-identifier "(" argument-list? ")"`; the name was consumed.
    fn call(&mut self, name: &str, t: &Token) -> Result<Node, ParseError> {
        let valid = name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_');
        if !valid {
            return Err(ParseError::new(
                t.start,
                "function name ([A-Za-z][A-Za-z_]*)",
                format!("'{name}' is not a valid function name"),
            ));
        }
        self.bump(); // (
        let mut args = Vec::new();
        let mut depth = 0;
        if self.peek().tok == Tok::RParen {
            self.bump();
        } else {
            loop {
                let (e, d) = self.expr(BP_LOGIC)?;
                args.push(e);
                depth = depth.max(d);
                match self.peek().tok {
                    Tok::Comma => {
                        self.bump();
                    }
                    Tok::RParen => {
                        self.bump();
                        break;
                    }
                    _ => return Err(self.unexpected("',' or ')'")),
                }
            }
        }
        let callee = match Builtin::resolve(name, args.len()) {
            Some(b) => Callee::Builtin(b),
            None => Callee::Missing(name.to_ascii_uppercase().into_boxed_str()),
        };
        self.check_depth((Expr::Call { callee, args }, depth + 1))
    }
}
