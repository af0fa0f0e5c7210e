//! Tokenizer. Produces tokens with byte offsets; never panics.
//!
//! Words (`[A-Za-z0-9_]+`) are classified here: all-digit words are integer
//! literals, the nine keywords are recognised case-insensitively, and every
//! other word is a `Word` that the parser turns into a value identifier or a
//! function name depending on whether a `(` follows.

use crate::error::ParseError;

/// The CESQL keywords.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keyword {
    And,
    Or,
    Xor,
    Not,
    Like,
    Exists,
    In,
    True,
    False,
}

impl Keyword {
    fn from_word(w: &str) -> Option<Keyword> {
        const TABLE: [(&str, Keyword); 9] = [
            ("AND", Keyword::And),
            ("OR", Keyword::Or),
            ("XOR", Keyword::Xor),
            ("NOT", Keyword::Not),
            ("LIKE", Keyword::Like),
            ("EXISTS", Keyword::Exists),
            ("IN", Keyword::In),
            ("TRUE", Keyword::True),
            ("FALSE", Keyword::False),
        ];
        TABLE
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(w))
            .map(|(_, kw)| *kw)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tok {
    /// Unsigned digits; `None` when the value does not even fit in an i64.
    Int(Option<i64>),
    Str(String),
    Word(String),
    Kw(Keyword),
    LParen,
    RParen,
    Comma,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Eq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
    Eof,
}

impl Tok {
    /// Short description used in error messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Int(Some(i)) => format!("integer {i}"),
            Tok::Int(None) => "integer".to_owned(),
            Tok::Str(_) => "string literal".to_owned(),
            Tok::Word(w) => format!("identifier '{w}'"),
            Tok::Kw(k) => format!("keyword {}", format!("{k:?}").to_uppercase()),
            Tok::LParen => "'('".to_owned(),
            Tok::RParen => "')'".to_owned(),
            Tok::Comma => "','".to_owned(),
            Tok::Plus => "'+'".to_owned(),
            Tok::Minus => "'-'".to_owned(),
            Tok::Star => "'*'".to_owned(),
            Tok::Slash => "'/'".to_owned(),
            Tok::Percent => "'%'".to_owned(),
            Tok::Eq => "'='".to_owned(),
            Tok::NotEq => "'!=' or '<>'".to_owned(),
            Tok::Lt => "'<'".to_owned(),
            Tok::Le => "'<='".to_owned(),
            Tok::Gt => "'>'".to_owned(),
            Tok::Ge => "'>='".to_owned(),
            Tok::Eof => "end of input".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) tok: Tok,
    /// Byte offset of the first byte of the token.
    pub(crate) start: usize,
    /// Byte offset one past the last byte of the token.
    pub(crate) end: usize,
}

/// Tokenize the whole source. The last token is always `Eof`.
pub(crate) fn tokenize(src: &str) -> Result<Vec<Token>, ParseError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let single = match b {
            b'(' => Some(Tok::LParen),
            b')' => Some(Tok::RParen),
            b',' => Some(Tok::Comma),
            b'+' => Some(Tok::Plus),
            b'-' => Some(Tok::Minus),
            b'*' => Some(Tok::Star),
            b'/' => Some(Tok::Slash),
            b'%' => Some(Tok::Percent),
            b'=' => Some(Tok::Eq),
            _ => None,
        };
        if let Some(tok) = single {
            i += 1;
            out.push(Token { tok, start, end: i });
            continue;
        }
        let next = bytes.get(i + 1).copied();
        let (tok, len) = match (b, next) {
            (b'!', Some(b'=')) => (Tok::NotEq, 2),
            (b'!', _) => {
                return Err(ParseError::new(
                    i + 1,
                    "'='",
                    "'!' must be followed by '=' (the not-equal operator is '!=')",
                ))
            }
            (b'<', Some(b'>')) => (Tok::NotEq, 2),
            (b'<', Some(b'=')) => (Tok::Le, 2),
            (b'<', _) => (Tok::Lt, 1),
            (b'>', Some(b'=')) => (Tok::Ge, 2),
            (b'>', _) => (Tok::Gt, 1),
            (b'\'' | b'"', _) => {
                let (s, end) = lex_string(src, i)?;
                out.push(Token {
                    tok: Tok::Str(s),
                    start,
                    end,
                });
                i = end;
                continue;
            }
            _ if b.is_ascii_alphanumeric() || b == b'_' => {
                let mut end = i;
                while end < bytes.len()
                    && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_')
                {
                    end += 1;
                }
                let word = &src[i..end];
                let tok = if word.bytes().all(|c| c.is_ascii_digit()) {
                    Tok::Int(parse_digits(word))
                } else if let Some(kw) = Keyword::from_word(word) {
                    Tok::Kw(kw)
                } else {
                    Tok::Word(word.to_owned())
                };
                out.push(Token { tok, start, end });
                i = end;
                continue;
            }
            _ => {
                let ch = src[i..].chars().next().unwrap_or('\u{fffd}');
                return Err(ParseError::new(
                    i,
                    "expression",
                    format!("unexpected character {ch:?}"),
                ));
            }
        };
        i += len;
        out.push(Token { tok, start, end: i });
    }
    out.push(Token {
        tok: Tok::Eof,
        start: bytes.len(),
        end: bytes.len(),
    });
    Ok(out)
}

fn parse_digits(word: &str) -> Option<i64> {
    let mut acc: i64 = 0;
    for d in word.bytes() {
        acc = acc.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(acc)
}

/// Lex a quoted string starting at byte `start` (which holds the quote).
///
/// Inside a string delimited by `q`: `\q` and `qq` stand for `q`; a backslash
/// followed by any other character is kept verbatim together with that
/// character (so `\\` stays two backslashes and `\%` reaches LIKE intact).
/// Returns the value and the byte offset just past the closing quote.
fn lex_string(src: &str, start: usize) -> Result<(String, usize), ParseError> {
    let bytes = src.as_bytes();
    let q = bytes[start];
    let qc = char::from(q);
    let mut out = String::new();
    let mut i = start + 1;
    // Copy runs of ordinary bytes at once; all special bytes are ASCII so
    // slicing at them is always on a char boundary.
    let mut run = i;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\\' {
            match bytes.get(i + 1) {
                Some(&n) if n == q => {
                    out.push_str(&src[run..i]);
                    out.push(qc);
                    i += 2;
                    run = i;
                }
                Some(b'\\') => {
                    // Keep both backslashes, but do not let the second one
                    // escape a following quote.
                    i += 2;
                }
                _ => i += 1,
            }
        } else if b == q {
            if bytes.get(i + 1) == Some(&q) {
                out.push_str(&src[run..i]);
                out.push(qc);
                i += 2;
                run = i;
            } else {
                out.push_str(&src[run..i]);
                return Ok((out, i + 1));
            }
        } else {
            i += 1;
        }
    }
    Err(ParseError::new(
        bytes.len(),
        format!("closing {qc}"),
        format!("unterminated string literal starting at byte {start}"),
    ))
}
