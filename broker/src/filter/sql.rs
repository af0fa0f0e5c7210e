//! The `cesql` dialect: CloudEvents SQL v1 expressions, compiled once with the
//! [`cesql`] crate, and the [`cesql::Attributes`] view of an [`Event`].
//!
//! The view borrows the event's strings, so evaluating a comparison, `LIKE` or logic
//! expression allocates nothing.

use crate::event::{AttrValue, Event};

impl cesql::Attributes for Event {
    #[inline]
    fn attribute(&self, name: &str) -> Option<cesql::AttrValue<'_>> {
        self.get(name).map(|v| match v {
            AttrValue::String(s) => cesql::AttrValue::String(s),
            AttrValue::Integer(i) => cesql::AttrValue::Integer(*i),
            AttrValue::Boolean(b) => cesql::AttrValue::Boolean(*b),
        })
    }
}

/// Compiles a `cesql` filter expression.
///
/// Rejected, so that a trigger never silently receives nothing or everything:
/// - syntax errors (with the byte offset and what was expected);
/// - expressions whose static type is not Boolean (`1 + 1`, `'x'`): they can never
///   evaluate to `TRUE`, so the trigger could never match;
/// - expressions with static diagnostics: a call to a function that does not exist
///   (name or arity), or a literal that can never be cast to the type its operator
///   needs (`NOT 'maybe'`). Such a part raises an error every time it is evaluated, and
///   an error means "no match"; only short-circuiting (`type = 'a' OR NOPE()`) could
///   skip it, which makes the part dead code at best and a typo at worst. Knative's
///   webhook likewise rejects unknown functions when it parses the expression.
pub(crate) fn compile(src: &str) -> Result<cesql::Expression, String> {
    let expr = cesql::Expression::parse(src).map_err(|e| e.to_string())?;
    if let Some(t) = expr.return_type() {
        if t != cesql::Type::Boolean {
            return Err(format!(
                "the expression always yields {}, never TRUE, so the trigger could never match",
                t.as_str()
            ));
        }
    }
    if let Some(d) = expr.diagnostics().first() {
        let more = expr.diagnostics().len() - 1;
        let tail = if more > 0 {
            format!(" (and {more} more)")
        } else {
            String::new()
        };
        return Err(format!(
            "{d}{tail}: this part fails whenever it is evaluated, so the filter cannot be trusted"
        ));
    }
    Ok(expr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cesql::Attributes as _;

    #[test]
    fn event_view_borrows_typed_attributes() {
        let mut e = Event::new();
        e.set_str("type", "t");
        e.set("n", AttrValue::Integer(-3));
        e.set("b", AttrValue::Boolean(true));
        assert_eq!(e.attribute("type"), Some(cesql::AttrValue::String("t")));
        assert_eq!(e.attribute("n"), Some(cesql::AttrValue::Integer(-3)));
        assert_eq!(e.attribute("b"), Some(cesql::AttrValue::Boolean(true)));
        assert_eq!(e.attribute("missing"), None);
    }

    #[test]
    fn compile_rejects_what_can_never_match() {
        assert!(compile("type = 'x'").is_ok());
        assert!(
            compile("myflag").is_ok(),
            "a bare attribute may be a Boolean"
        );
        let err = compile("type = ").expect_err("syntax");
        assert!(err.contains("byte 7") && err.contains("expected"), "{err}");
        let err = compile("1 + 1").expect_err("integer");
        assert!(err.contains("Integer"), "{err}");
        let err = compile("NOPE(type)").expect_err("unknown function");
        assert!(err.contains("missingFunction"), "{err}");
        let err = compile("type = 'a' OR NOT 'maybe'").expect_err("cast");
        assert!(err.contains("cast"), "{err}");
    }
}
