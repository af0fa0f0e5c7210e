//! The CloudEvent model shared by every part of Triggerfish.
//!
//! An [`Event`] keeps its context attributes in insertion order as typed values
//! ([`AttrValue`]) and its data as the exact bytes that a binary-mode HTTP body would
//! carry, plus a [`DataKind`] that remembers how the data arrived so that structured
//! (JSON) output can reproduce it faithfully.
//!
//! - [`validate`]: the CloudEvents 1.0 rules (required attributes, names, types).
//! - [`http`]: the HTTP protocol binding (binary, structured and batched modes).
//! - [`json`]: the JSON event format, single and batch.
//! - [`codec`]: the compact binary record format the channels store.
//! - [`limits`]: how many attributes, how long their names and how large they may
//!   be altogether, so that every channel stores and every delivery sends an event.

pub mod codec;
pub mod http;
pub mod json;
pub mod limits;
mod text;
pub mod validate;

use std::collections::HashMap;

use bytes::Bytes;

pub use limits::{EventLimits, LimitError};
pub use text::Str;
pub use validate::{validate, EventError};

/// Attribute names with a fixed type in the CloudEvents 1.0 spec.
pub const SPECVERSION: &str = "specversion";
/// The `id` attribute.
pub const ID: &str = "id";
/// The `source` attribute.
pub const SOURCE: &str = "source";
/// The `type` attribute.
pub const TYPE: &str = "type";
/// The `datacontenttype` attribute.
pub const DATACONTENTTYPE: &str = "datacontenttype";
/// The `dataschema` attribute.
pub const DATASCHEMA: &str = "dataschema";
/// The `subject` attribute.
pub const SUBJECT: &str = "subject";
/// The `time` attribute.
pub const TIME: &str = "time";
/// Extension the ingress stamps with the time of receipt.
pub const ARRIVAL_TIME: &str = "knativearrivaltime";
/// Extension carrying the reply loop guard.
pub const BROKER_TTL: &str = "knativebrokerttl";
/// Partitioning extension (CloudEvents `partitioning` extension).
pub const PARTITION_KEY: &str = "partitionkey";
/// Dead-letter extension (Knative): the URL whose delivery failed.
pub const ERROR_DEST: &str = "knativeerrordest";
/// Dead-letter extension (Knative): the failed delivery's HTTP status (absent for
/// transport errors).
pub const ERROR_CODE: &str = "knativeerrorcode";
/// Dead-letter extension (Knative): base64 of at most the first
/// [`ERROR_DATA_MAX`] bytes of the failed response body.
pub const ERROR_DATA: &str = "knativeerrordata";
/// How many response body bytes go into [`ERROR_DATA`].
pub const ERROR_DATA_MAX: usize = 1024;
/// Extension naming the trigger, on entries of a broker's own dead-letter log.
pub const ERROR_TRIGGER: &str = "triggerfishtrigger";
/// Extension with the reason of a dead-letter entry that did not come from a failed
/// delivery (a panic, a malformed record, a reply that cannot be stored).
pub const REASON: &str = "triggerfishreason";
/// The extensions a dead-letter entry carries beyond the event: removed before it
/// is redriven.
pub const DEAD_LETTER_EXTENSIONS: [&str; 5] =
    [ERROR_DEST, ERROR_CODE, ERROR_DATA, ERROR_TRIGGER, REASON];

/// A typed attribute value. Binary-mode HTTP carries every value as a string; the JSON
/// format can carry extension values as JSON booleans and integers, which we keep so
/// that structured output round-trips.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrValue {
    /// String, URI, URI-reference and Timestamp values, in canonical string form
    /// (shared with the stored record when the event was read from a channel).
    String(Str),
    /// CloudEvents Integer (32-bit signed).
    Integer(i32),
    /// CloudEvents Boolean.
    Boolean(bool),
}

impl AttrValue {
    /// The value as a string when it is one (no allocation).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::String(s) => Some(s.as_str()),
            _ => None,
        }
    }

    /// Writes the canonical string form into `buf` and returns it; strings are
    /// returned borrowed without touching `buf`.
    pub fn canonical<'a>(&'a self, buf: &'a mut String) -> &'a str {
        use std::fmt::Write;
        match self {
            AttrValue::String(s) => s.as_str(),
            AttrValue::Integer(i) => {
                buf.clear();
                let _ = write!(buf, "{i}");
                buf
            }
            AttrValue::Boolean(b) => {
                if *b {
                    "true"
                } else {
                    "false"
                }
            }
        }
    }

    /// The canonical string form, allocated.
    pub fn to_canonical_string(&self) -> String {
        let mut buf = String::new();
        self.canonical(&mut buf).to_owned()
    }
}

/// How an event's data arrived, which decides how structured mode writes it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// Opaque bytes: a binary-mode body or JSON `data_base64`.
    Binary = 0,
    /// The bytes are JSON text, from a JSON `data` member.
    Json = 1,
    /// The bytes are the UTF-8 content of a JSON `data` string member whose
    /// `datacontenttype` is not JSON.
    Text = 2,
}

impl DataKind {
    pub(crate) fn from_u8(v: u8) -> Option<DataKind> {
        match v {
            0 => Some(DataKind::Binary),
            1 => Some(DataKind::Json),
            2 => Some(DataKind::Text),
            _ => None,
        }
    }
}

/// An attribute name: the names most events carry are static strings, and other
/// names of a decoded record are slices of it, so decoding does not allocate names.
type Name = Str;

/// The static form of a well-known attribute name, looked up by its bytes (a stored
/// record's names need no UTF-8 check when they are well-known).
pub(crate) fn known_name(name: &[u8]) -> Option<&'static str> {
    Some(match name {
        b"specversion" => SPECVERSION,
        b"id" => ID,
        b"source" => SOURCE,
        b"type" => TYPE,
        b"datacontenttype" => DATACONTENTTYPE,
        b"dataschema" => DATASCHEMA,
        b"subject" => SUBJECT,
        b"time" => TIME,
        b"knativearrivaltime" => ARRIVAL_TIME,
        b"knativebrokerttl" => BROKER_TTL,
        b"partitionkey" => PARTITION_KEY,
        b"traceparent" => "traceparent",
        b"tracestate" => "tracestate",
        _ => return None,
    })
}

/// Past this many attributes an event keeps a hash index of their names, so that
/// looking a name up (and so [`Event::set`], once per decoded attribute) stays O(1)
/// amortised: a scan per name made decoding quadratic (30,000 attributes took
/// seconds). Below it a scan of a few names is faster than hashing.
const INDEX_FROM: usize = 16;

/// One CloudEvent.
#[derive(Clone)]
pub struct Event {
    attrs: Vec<(Name, AttrValue)>,
    /// Position in `attrs` of each name, kept while the event has more than
    /// [`INDEX_FROM`] attributes (boxed: one word for the events that have none).
    #[allow(clippy::box_collection)] // One word, not an empty map's six, per event.
    index: Option<Box<HashMap<Name, usize>>>,
    data: Option<Bytes>,
    data_kind: DataKind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Event) -> bool {
        self.attrs == other.attrs && self.data == other.data && self.data_kind == other.data_kind
    }
}

impl Eq for Event {}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("attrs", &self.attrs)
            .field("data", &self.data)
            .field("data_kind", &self.data_kind)
            .finish()
    }
}

impl Default for Event {
    fn default() -> Self {
        Event::new()
    }
}

impl Event {
    /// An event with no attributes and no data (not valid until the required
    /// attributes are set).
    pub fn new() -> Event {
        Event {
            attrs: Vec::with_capacity(8),
            index: None,
            data: None,
            data_kind: DataKind::Binary,
        }
    }

    /// Looks an attribute up by its (lower-case) name.
    pub fn get(&self, name: &str) -> Option<&AttrValue> {
        self.position(name).map(|i| &self.attrs[i].1)
    }

    /// Where `name` is in `attrs`: a hash lookup for a wide event, else a scan.
    fn position(&self, name: &str) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(name).copied(),
            None => self.attrs.iter().position(|(n, _)| n == name),
        }
    }

    /// Appends an attribute whose name is not present, keeping the index.
    fn push(&mut self, name: Name, value: AttrValue) {
        match &mut self.index {
            Some(index) => {
                index.insert(name.clone(), self.attrs.len());
            }
            None if self.attrs.len() >= INDEX_FROM => {
                let mut index = HashMap::with_capacity(self.attrs.len() * 2);
                for (i, (n, _)) in self.attrs.iter().enumerate() {
                    index.insert(n.clone(), i);
                }
                index.insert(name.clone(), self.attrs.len());
                self.index = Some(Box::new(index));
            }
            None => {}
        }
        self.attrs.push((name, value));
    }

    /// A string attribute by name (`None` when absent or not a string).
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(AttrValue::as_str)
    }

    /// The `id` attribute, or "" when absent (only for messages and labels).
    pub fn id(&self) -> &str {
        self.get_str(ID).unwrap_or("")
    }

    /// The `type` attribute, or "".
    pub fn ty(&self) -> &str {
        self.get_str(TYPE).unwrap_or("")
    }

    /// The `source` attribute, or "".
    pub fn source(&self) -> &str {
        self.get_str(SOURCE).unwrap_or("")
    }

    /// Sets an attribute, replacing an existing one of the same name.
    pub fn set<N: AsRef<str> + Into<Str>>(&mut self, name: N, value: AttrValue) {
        if let Some(i) = self.position(name.as_ref()) {
            self.attrs[i].1 = value;
            return;
        }
        let name = match known_name(name.as_ref().as_bytes()) {
            Some(known) => Str::from_static(known),
            None => name.into(),
        };
        self.push(name, value);
    }

    /// Sets an attribute whose name is already a [`Str`] (a slice of a decoded record,
    /// or static for the well-known names).
    pub(crate) fn set_named(&mut self, name: Str, value: AttrValue) {
        match self.position(&name) {
            Some(i) => self.attrs[i].1 = value,
            None => self.push(name, value),
        }
    }

    /// Adds an attribute that must not be present yet: one lookup instead of a lookup
    /// followed by [`Event::set`]. Gives the value back when the name is taken.
    pub(crate) fn add_new(&mut self, name: Str, value: AttrValue) -> Result<(), AttrValue> {
        if self.position(&name).is_some() {
            return Err(value);
        }
        self.push(name, value);
        Ok(())
    }

    /// Sets a string attribute.
    pub fn set_str<N: AsRef<str> + Into<Str>>(&mut self, name: N, value: impl Into<Str>) {
        self.set(name, AttrValue::String(value.into()));
    }

    /// Removes an attribute, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<AttrValue> {
        let idx = self.position(name)?;
        let (_, value) = self.attrs.remove(idx);
        if let Some(index) = &mut self.index {
            // Every later attribute moved down by one.
            index.remove(name);
            for (n, _) in &self.attrs[idx..] {
                if let Some(i) = index.get_mut(n.as_str()) {
                    *i -= 1;
                }
            }
        }
        Some(value)
    }

    /// All attributes in insertion order.
    pub fn attributes(&self) -> impl Iterator<Item = (&str, &AttrValue)> {
        self.attrs.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// Number of attributes.
    pub fn attribute_count(&self) -> usize {
        self.attrs.len()
    }

    /// The data bytes, as a binary-mode body would carry them.
    pub fn data(&self) -> Option<&Bytes> {
        self.data.as_ref()
    }

    /// How the data arrived.
    pub fn data_kind(&self) -> DataKind {
        self.data_kind
    }

    /// Sets the data.
    pub fn set_data(&mut self, kind: DataKind, data: Option<Bytes>) {
        self.data_kind = kind;
        self.data = data;
    }

    /// The content type a binary-mode message should carry: `datacontenttype`, or
    /// `application/json` for data that arrived as a JSON `data` member without one
    /// (JSON format 3.1.2).
    pub fn effective_content_type(&self) -> Option<&str> {
        match self.get_str(DATACONTENTTYPE) {
            Some(ct) => Some(ct),
            None if self.data.is_some() && self.data_kind == DataKind::Json => {
                Some("application/json")
            }
            None => None,
        }
    }

    /// The partition key (the `partitionkey` extension in canonical form), if any.
    pub fn partition_key<'a>(&'a self, buf: &'a mut String) -> Option<&'a str> {
        self.get(PARTITION_KEY).map(|v| v.canonical(buf))
    }
}

/// True when a media type (parameters stripped) declares JSON content:
/// `*/json` or `*/*+json` (JSON format 3.1.1).
pub fn is_json_media_type(ct: &str) -> bool {
    let essence = ct.split(';').next().unwrap_or("").trim();
    let Some((_, sub)) = essence.split_once('/') else {
        return false;
    };
    // Compared as bytes: slicing the `str` panicked inside a multi-byte character
    // (found by fuzz/http_structured: `"datacontenttype":"x/܏lain"`).
    let sub = sub.as_bytes();
    sub.eq_ignore_ascii_case(b"json")
        || (sub.len() > 5 && sub[sub.len() - 5..].eq_ignore_ascii_case(b"+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types() {
        assert!(is_json_media_type("application/json"));
        assert!(is_json_media_type("application/json; charset=utf-8"));
        assert!(is_json_media_type("application/vnd.foo+json"));
        assert!(is_json_media_type("text/JSON"));
        assert!(!is_json_media_type("application/xml"));
        assert!(!is_json_media_type("json"));
        assert!(!is_json_media_type("application/+json"));
        assert!(!is_json_media_type("text/plain"));
        // Found by fuzzing: a multi-byte character where "+json" would start.
        assert!(!is_json_media_type("x/\u{70f}lain"));
        assert!(!is_json_media_type("a/\u{e9}\u{e9}\u{e9}\u{e9}"));
        assert!(is_json_media_type("a/\u{e9}+json"));
    }

    #[test]
    fn set_replaces_and_keeps_order() {
        let mut e = Event::new();
        e.set_str("id", "1");
        e.set_str("type", "t");
        e.set_str("id", "2");
        let names: Vec<_> = e.attributes().map(|(n, _)| n).collect();
        assert_eq!(names, ["id", "type"]);
        assert_eq!(e.id(), "2");
        assert_eq!(e.remove("id"), Some(AttrValue::String("2".into())));
        assert_eq!(e.get("id"), None);
    }

    /// The name index of a wide event agrees with a scan through every change:
    /// set, replace, add_new, remove from the middle, and set again.
    #[test]
    fn wide_events_keep_their_index_consistent() {
        let mut e = Event::new();
        for i in 0..100 {
            e.set_str(format!("x{i}"), format!("{i}"));
        }
        assert!(e.index.is_some(), "an index past {INDEX_FROM} attributes");
        e.set_str("x7", "seven");
        assert_eq!(e.attribute_count(), 100, "a replaced name is not added");
        assert_eq!(e.remove("x10"), Some(AttrValue::String("10".into())));
        assert_eq!(e.remove("x10"), None);
        assert!(e.add_new("x11".into(), AttrValue::Boolean(true)).is_err());
        assert!(e.add_new("x10".into(), AttrValue::Boolean(true)).is_ok());
        let names: Vec<&str> = e.attributes().map(|(n, _)| n).collect();
        assert_eq!(names[9], "x9");
        assert_eq!(names[10], "x11", "later attributes moved down");
        assert_eq!(
            *names.last().expect("attributes"),
            "x10",
            "re-added at the end"
        );
        for (i, (name, value)) in e.attributes().enumerate() {
            assert_eq!(e.position(name), Some(i), "{name}");
            assert_eq!(e.get(name), Some(value));
        }
        assert_eq!(e.get_str("x7"), Some("seven"));
        assert_eq!(e.get("nope"), None);
        // Equality ignores the index: a narrow copy of the same attributes is equal.
        let mut narrow = e.clone();
        narrow.index = None;
        assert_eq!(narrow, e);
    }

    #[test]
    fn well_known_names_are_static() {
        for name in [SPECVERSION, ID, SOURCE, TYPE, DATACONTENTTYPE, ARRIVAL_TIME] {
            assert_eq!(known_name(name.as_bytes()), Some(name));
        }
        assert_eq!(known_name(b"myext"), None);
        assert_eq!(known_name(b"ID"), None, "names are lower-case");
    }

    #[test]
    fn canonical_forms() {
        let mut buf = String::new();
        assert_eq!(AttrValue::Integer(-5).canonical(&mut buf), "-5");
        assert_eq!(AttrValue::Boolean(true).canonical(&mut buf), "true");
        assert_eq!(AttrValue::String("x".into()).canonical(&mut buf), "x");
    }
}
