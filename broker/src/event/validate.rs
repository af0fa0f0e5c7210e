//! CloudEvents 1.0 validation (spec.md, "Context Attributes" and "Type System").

use super::{
    AttrValue, Event, DATACONTENTTYPE, DATASCHEMA, ID, SOURCE, SPECVERSION, SUBJECT, TIME, TYPE,
};

/// Why an event is not a valid CloudEvent; `attribute` names the offending attribute
/// (or a pseudo-name such as `data` or `body`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("attribute '{attribute}': {reason}")]
pub struct EventError {
    /// The attribute (or part of the message) at fault.
    pub attribute: String,
    /// What is wrong with it.
    pub reason: String,
}

impl EventError {
    /// Builds an error for `attribute`.
    pub fn new(attribute: impl Into<String>, reason: impl Into<String>) -> EventError {
        EventError {
            attribute: attribute.into(),
            reason: reason.into(),
        }
    }
}

/// Checks an attribute name: lower-case ASCII letters and digits, non-empty.
pub fn check_name(name: &str) -> Result<(), EventError> {
    if name.is_empty() {
        return Err(EventError::new(name, "attribute names must not be empty"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(EventError::new(
            name,
            "attribute names may only contain lower-case letters a-z and digits 0-9",
        ));
    }
    if name == "data" {
        // CloudEvents 1.0 (spec.md, extension naming): reserved, and in structured
        // mode it would collide with the event's data member.
        return Err(EventError::new(
            name,
            "'data' is reserved for the event's data and cannot be an attribute name",
        ));
    }
    Ok(())
}

/// Checks the CloudEvents `String` type: no control characters U+0000-U+001F and
/// U+007F-U+009F, no Unicode noncharacters (Rust strings hold no lone surrogates).
pub fn check_string(name: &str, s: &str) -> Result<(), EventError> {
    // Fast path: in ASCII only the C0 controls and DEL can be wrong, and a byte scan
    // finds them without decoding characters (most values are ASCII).
    if s.is_ascii() {
        return match s.bytes().find(|&b| b <= 0x1F || b == 0x7F) {
            Some(b) => Err(EventError::new(
                name,
                format!("contains the control character U+{b:04X}"),
            )),
            None => Ok(()),
        };
    }
    for c in s.chars() {
        let cp = c as u32;
        if cp <= 0x1F || (0x7F..=0x9F).contains(&cp) {
            return Err(EventError::new(
                name,
                format!("contains the control character U+{cp:04X}"),
            ));
        }
        if (0xFDD0..=0xFDEF).contains(&cp) || (cp & 0xFFFE) == 0xFFFE {
            return Err(EventError::new(
                name,
                format!("contains the Unicode noncharacter U+{cp:04X}"),
            ));
        }
    }
    Ok(())
}

fn required<'a>(value: Option<&'a AttrValue>, name: &str) -> Result<&'a str, EventError> {
    match value {
        None => Err(EventError::new(name, "required attribute is missing")),
        Some(AttrValue::String(s)) if s.is_empty() => {
            Err(EventError::new(name, "must be a non-empty string"))
        }
        Some(AttrValue::String(s)) => Ok(s),
        Some(_) => Err(EventError::new(name, "must be a string")),
    }
}

fn string_attr<'a>(
    value: Option<&'a AttrValue>,
    name: &str,
) -> Result<Option<&'a str>, EventError> {
    match value {
        None => Ok(None),
        Some(AttrValue::String(s)) => Ok(Some(s)),
        Some(_) => Err(EventError::new(name, "must be a string")),
    }
}

/// Validates an event against CloudEvents 1.0.
pub fn validate(event: &Event) -> Result<(), EventError> {
    // One pass finds the attributes with rules (instead of one scan per rule).
    let mut known: [Option<&AttrValue>; 8] = [None; 8];
    for (name, value) in event.attributes() {
        let slot = match name {
            SPECVERSION => 0,
            ID => 1,
            SOURCE => 2,
            TYPE => 3,
            DATACONTENTTYPE => 4,
            DATASCHEMA => 5,
            SUBJECT => 6,
            TIME => 7,
            _ => continue,
        };
        known[slot].get_or_insert(value);
    }
    let [specversion, id, source, ty, datacontenttype, dataschema, subject, time] = known;
    let sv = required(specversion, SPECVERSION)?;
    if sv != "1.0" {
        return Err(EventError::new(
            SPECVERSION,
            format!("unsupported specversion '{sv}' (only 1.0 is accepted)"),
        ));
    }
    required(id, ID)?;
    let source = required(source, SOURCE)?;
    if let Err(e) = fluent_uri::UriRef::parse(source) {
        return Err(EventError::new(
            SOURCE,
            format!("'{source}' is not a URI-reference (RFC 3986): {e}"),
        ));
    }
    required(ty, TYPE)?;
    if let Some(ct) = string_attr(datacontenttype, DATACONTENTTYPE)? {
        check_media_type(ct)?;
    }
    if let Some(schema) = string_attr(dataschema, DATASCHEMA)? {
        if schema.is_empty() {
            return Err(EventError::new(
                DATASCHEMA,
                "must not be empty when present",
            ));
        }
        if let Err(e) = fluent_uri::Uri::parse(schema) {
            return Err(EventError::new(
                DATASCHEMA,
                format!("'{schema}' is not an absolute URI (RFC 3986): {e}"),
            ));
        }
    }
    if let Some(subject) = string_attr(subject, SUBJECT)? {
        if subject.is_empty() {
            return Err(EventError::new(SUBJECT, "must not be empty when present"));
        }
    }
    if let Some(time) = string_attr(time, TIME)? {
        check_timestamp(TIME, time)?;
    }
    for (name, value) in event.attributes() {
        check_name(name)?;
        if let AttrValue::String(s) = value {
            check_string(name, s)?;
        }
    }
    Ok(())
}

/// Checks an RFC 3339 timestamp.
pub fn check_timestamp(name: &str, value: &str) -> Result<(), EventError> {
    // RFC 3339 requires a full date, 'T' (or 't'), a time and an offset.
    let ok = value.len() >= 20
        && value
            .as_bytes()
            .get(10)
            .is_some_and(|b| matches!(b, b'T' | b't'))
        && value.parse::<jiff::Timestamp>().is_ok();
    if ok {
        Ok(())
    } else {
        Err(EventError::new(
            name,
            format!("'{value}' is not an RFC 3339 timestamp"),
        ))
    }
}

fn check_media_type(ct: &str) -> Result<(), EventError> {
    let essence = ct.split(';').next().unwrap_or("").trim();
    let valid = essence.split_once('/').is_some_and(|(t, s)| {
        let token = |x: &str| {
            !x.is_empty()
                && x.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(
                            b,
                            b'!' | b'#' | b'$' | b'&' | b'^' | b'_' | b'.' | b'+' | b'-' | b'*'
                        )
                })
        };
        token(t) && token(s)
    });
    // Parameters too must be what a Content-Type header can carry: visible ASCII,
    // spaces and tabs (binary mode would otherwise drop the attribute).
    let header_safe = ct.bytes().all(|b| b == b'\t' || (0x20..=0x7e).contains(&b));
    if valid && header_safe {
        Ok(())
    } else {
        Err(EventError::new(
            DATACONTENTTYPE,
            format!("'{ct}' is not a media type (RFC 2046)"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> Event {
        let mut e = Event::new();
        e.set_str("specversion", "1.0");
        e.set_str("id", "1");
        e.set_str("source", "/src");
        e.set_str("type", "t");
        e
    }

    fn err_attr(e: &Event) -> String {
        validate(e).expect_err("should be invalid").attribute
    }

    #[test]
    fn minimal_event_is_valid() {
        assert_eq!(validate(&minimal()), Ok(()));
    }

    #[test]
    fn each_required_attribute_is_required() {
        for name in ["specversion", "id", "source", "type"] {
            let mut e = minimal();
            e.remove(name);
            assert_eq!(err_attr(&e), name);
            let mut e = minimal();
            e.set_str(name, "");
            assert_eq!(err_attr(&e), name);
        }
    }

    #[test]
    fn specversion_must_be_1_0() {
        let mut e = minimal();
        e.set_str("specversion", "0.3");
        assert_eq!(err_attr(&e), "specversion");
    }

    #[test]
    fn source_must_be_uri_reference() {
        for ok in ["/a/b", "https://example.com/x?y=1", "urn:isbn:123", "a"] {
            let mut e = minimal();
            e.set_str("source", ok);
            assert_eq!(validate(&e), Ok(()), "{ok}");
        }
        for bad in ["a b", "http://[bad", "%zz"] {
            let mut e = minimal();
            e.set_str("source", bad);
            assert_eq!(err_attr(&e), "source", "{bad}");
        }
    }

    #[test]
    fn time_must_be_rfc3339() {
        let mut e = minimal();
        e.set_str("time", "2024-01-02T03:04:05.123Z");
        assert_eq!(validate(&e), Ok(()));
        e.set_str("time", "2024-01-02T03:04:05+01:00");
        assert_eq!(validate(&e), Ok(()));
        for bad in [
            "2024-01-02",
            "yesterday",
            "2024-01-02T03:04:05",
            "2024-13-02T03:04:05Z",
        ] {
            e.set_str("time", bad);
            assert_eq!(err_attr(&e), "time", "{bad}");
        }
    }

    #[test]
    fn dataschema_must_be_absolute() {
        let mut e = minimal();
        e.set_str("dataschema", "https://example.com/schema");
        assert_eq!(validate(&e), Ok(()));
        e.set_str("dataschema", "/relative");
        assert_eq!(err_attr(&e), "dataschema");
    }

    /// Fuzzing (fuzz/http_structured) found `"datacontenttype":"text/A$;$ᗩ"`: a
    /// valid essence with a parameter no header can carry, so binary mode dropped
    /// the attribute.
    #[test]
    fn datacontenttype_parameters_must_fit_a_header() {
        let mut e = minimal();
        e.set_str("datacontenttype", "text/A$;$ᗩ");
        assert_eq!(err_attr(&e), "datacontenttype");
        e.set_str("datacontenttype", "text/plain; charset=\"utf-8\" ");
        assert!(validate(&e).is_ok());
    }

    /// Fuzzing (fuzz/http_binary) found `ce-data: x`: an attribute named `data`,
    /// which structured mode then wrote beside the data member, an event no parser
    /// reads back. The spec reserves the name.
    #[test]
    fn data_is_not_an_attribute_name() {
        let mut e = minimal();
        e.set_str("data", "x");
        assert_eq!(err_attr(&e), "data");
        let mut e = minimal();
        e.set_str("database", "x");
        assert!(validate(&e).is_ok(), "only the name itself is reserved");
    }

    #[test]
    fn names_and_strings() {
        let mut e = minimal();
        e.set_str("Bad", "x");
        assert_eq!(err_attr(&e), "Bad");
        let mut e = minimal();
        e.set_str("ext", "line\nbreak");
        assert_eq!(err_attr(&e), "ext");
        e.set_str("ext", "del\u{7f}");
        assert_eq!(err_attr(&e), "ext");
        e.set_str("ext", "caf\u{e9}\u{85}");
        assert_eq!(err_attr(&e), "ext", "C1 control in a non-ASCII value");
        let mut e = minimal();
        e.set_str("ext", "caf\u{e9} \u{1F600}");
        assert_eq!(validate(&e), Ok(()));
        e.set("num", AttrValue::Integer(3));
        assert_eq!(validate(&e), Ok(()));
    }

    #[test]
    fn datacontenttype_must_be_media_type() {
        let mut e = minimal();
        e.set_str("datacontenttype", "application/json; charset=utf-8");
        assert_eq!(validate(&e), Ok(()));
        e.set_str("datacontenttype", "nonsense");
        assert_eq!(err_attr(&e), "datacontenttype");
    }
}
