//! Limits on an event's context attributes, enforced by the ingress (and on replies)
//! before anything is stored, so that every accepted event can be stored by every
//! channel and sent in binary mode to common HTTP servers.
//!
//! Why these defaults ([`EventLimits::default`]):
//!
//! - **64 attributes.** A binary-mode delivery sends one `ce-` header per attribute
//!   plus `Content-Type`, `Content-Length`, `Host` and `Prefer`, and a dead-lettered
//!   event carries three `knativeerror*` attributes more. hyper (so axum and
//!   Triggerfish's own ingress) and Apache refuse requests with more than 100 header
//!   fields; 64 leaves room for all of that. A Kafka record holds at most
//!   [`crate::channel`]'s 256 headers, far above this.
//! - **64 bytes per attribute name.** The spec asks producers for at most 20
//!   characters; 64 admits every name seen in practice.
//! - **8 KiB of attributes.** The sum over all attributes of the name and the value
//!   as a binary-mode header sends it (percent-encoded). nginx refuses a header line
//!   over 8 KiB, Node.js a header block over 16 KiB: 8 KiB of attributes plus the
//!   dead-letter extensions (about 1.5 KiB) and the request's own headers fit both.
//!
//! Each limit is a `serve` flag (`--max-attributes`, `--max-attribute-name-bytes`,
//! `--max-attribute-bytes`) and a rejection reason in the ingress metrics.

use super::{AttrValue, Event};
use crate::telemetry::RejectReason;

/// Default for [`EventLimits::max_attributes`].
pub const DEFAULT_MAX_ATTRIBUTES: usize = 64;
/// Default for [`EventLimits::max_name_bytes`].
pub const DEFAULT_MAX_NAME_BYTES: usize = 64;
/// Default for [`EventLimits::max_attribute_bytes`].
pub const DEFAULT_MAX_ATTRIBUTE_BYTES: usize = 8 << 10;

/// Limits on an event's attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLimits {
    /// The most context attributes (required, optional and extensions) an event may
    /// carry, counting the ones the ingress adds (`knativearrivaltime`).
    pub max_attributes: usize,
    /// The longest attribute name, in bytes.
    pub max_name_bytes: usize,
    /// The largest sum over all attributes of name length plus value length as a
    /// binary-mode `ce-` header carries it (percent-encoded).
    pub max_attribute_bytes: usize,
}

impl Default for EventLimits {
    fn default() -> Self {
        EventLimits {
            max_attributes: DEFAULT_MAX_ATTRIBUTES,
            max_name_bytes: DEFAULT_MAX_NAME_BYTES,
            max_attribute_bytes: DEFAULT_MAX_ATTRIBUTE_BYTES,
        }
    }
}

/// Which limit an event exceeds, with the value and the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Too many attributes.
    #[error("event {id:?} has {count} attributes; the limit is {limit} (--max-attributes)")]
    Attributes {
        /// The event's id (cut to 64 bytes).
        id: String,
        /// How many it has.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// Decoding stopped at the attribute past the limit (a body of very many
    /// attributes is refused for the cost of one at the limit).
    #[error("an event has more than {limit} attributes (--max-attributes)")]
    AttributesWhileDecoding {
        /// The limit.
        limit: usize,
    },
    /// An attribute name is too long.
    #[error(
        "event {id:?}: attribute name '{name}…' is {len} bytes long; the limit is {limit} (--max-attribute-name-bytes)"
    )]
    NameLength {
        /// The event's id (cut to 64 bytes).
        id: String,
        /// The first 32 bytes of the name.
        name: String,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The attributes are too large altogether.
    #[error(
        "event {id:?} has {total} bytes of attributes (names and encoded values); the limit is {limit} (--max-attribute-bytes)"
    )]
    AttributeBytes {
        /// The event's id (cut to 64 bytes).
        id: String,
        /// Their size.
        total: usize,
        /// The limit.
        limit: usize,
    },
}

impl LimitError {
    /// The ingress metric reason of this rejection.
    pub fn reason(&self) -> RejectReason {
        match self {
            LimitError::Attributes { .. } | LimitError::AttributesWhileDecoding { .. } => {
                RejectReason::too_many_attributes
            }
            LimitError::NameLength { .. } => RejectReason::attribute_name_too_long,
            LimitError::AttributeBytes { .. } => RejectReason::attributes_too_large,
        }
    }
}

fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// How many bytes a value takes in a binary-mode header: printable ASCII other than
/// space, `"` and `%` as it is, every other byte percent-encoded (three bytes).
fn encoded_len(s: &str) -> usize {
    s.bytes()
        .map(|b| {
            if (0x21..=0x7E).contains(&b) && b != b'"' && b != b'%' {
                1
            } else {
                3
            }
        })
        .sum()
}

impl EventLimits {
    /// Checks `event` against the limits. Linear in the size of the attributes, and
    /// stops at the first attribute past a count limit.
    pub fn check(&self, event: &Event) -> Result<(), LimitError> {
        let count = event.attribute_count();
        if count > self.max_attributes {
            return Err(LimitError::Attributes {
                id: cut(event.id(), 64),
                count,
                limit: self.max_attributes,
            });
        }
        let mut total = 0usize;
        let mut buf = String::new();
        for (name, value) in event.attributes() {
            if name.len() > self.max_name_bytes {
                return Err(LimitError::NameLength {
                    id: cut(event.id(), 64),
                    name: cut(name, 32),
                    len: name.len(),
                    limit: self.max_name_bytes,
                });
            }
            let value_len = match value {
                AttrValue::String(s) => encoded_len(s),
                other => other.canonical(&mut buf).len(),
            };
            total = total.saturating_add(name.len() + value_len);
        }
        if total > self.max_attribute_bytes {
            return Err(LimitError::AttributeBytes {
                id: cut(event.id(), 64),
                total,
                limit: self.max_attribute_bytes,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(extensions: usize) -> Event {
        let mut e = Event::new();
        e.set_str("specversion", "1.0");
        e.set_str("id", "1");
        e.set_str("source", "/s");
        e.set_str("type", "t");
        for i in 0..extensions {
            e.set_str(format!("x{i}"), "v");
        }
        e
    }

    #[test]
    fn attribute_count_is_limited() {
        let limits = EventLimits::default();
        assert_eq!(limits.check(&event(60)), Ok(()), "64 attributes in all");
        let err = limits.check(&event(61)).expect_err("65 attributes");
        assert_eq!(
            err,
            LimitError::Attributes {
                id: "1".into(),
                count: 65,
                limit: 64
            }
        );
        assert!(err.to_string().contains("--max-attributes"), "{err}");
        assert_eq!(err.reason(), RejectReason::too_many_attributes);
    }

    #[test]
    fn attribute_names_are_limited() {
        let limits = EventLimits::default();
        let mut e = event(0);
        e.set_str("a".repeat(64), "v");
        assert_eq!(limits.check(&e), Ok(()));
        e.set_str("b".repeat(65), "v");
        let err = limits.check(&e).expect_err("a 65-byte name");
        assert!(
            matches!(
                err,
                LimitError::NameLength {
                    len: 65,
                    limit: 64,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("--max-attribute-name-bytes"));
    }

    #[test]
    fn attribute_bytes_count_encoded_values() {
        let limits = EventLimits {
            max_attribute_bytes: 100,
            ..Default::default()
        };
        // specversion1.0 + id1 + source/s + typet = 14 + 3 + 8 + 5 = 30 bytes.
        let mut e = event(0);
        e.set_str("x", "a".repeat(69));
        assert_eq!(limits.check(&e), Ok(()), "exactly 100 bytes");
        e.set_str("x", "a".repeat(70));
        assert!(matches!(
            limits.check(&e),
            Err(LimitError::AttributeBytes {
                total: 101,
                limit: 100,
                ..
            })
        ));
        // A space is sent as %20: three bytes.
        e.set_str("x", format!("{} ", "a".repeat(67)));
        assert!(matches!(
            limits.check(&e),
            Err(LimitError::AttributeBytes { total: 101, .. })
        ));
        // Non-string values count their canonical form.
        let mut e = event(0);
        e.set("x", AttrValue::Integer(-2147483648));
        assert_eq!(limits.check(&e), Ok(()));
    }
}
