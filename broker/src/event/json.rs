//! The CloudEvents JSON event format (formats_json-format.md), single events and batches.

use std::fmt;

use base64::Engine;
use bytes::Bytes;
use serde_json::value::RawValue;

use super::{is_json_media_type, AttrValue, DataKind, Event, EventError, DATACONTENTTYPE};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Parses one event in structured JSON form. The result is not yet validated
/// against the CloudEvents rules: call [`super::validate`].
pub fn parse_event(body: &[u8]) -> Result<Event, EventError> {
    parse_event_bounded(body, usize::MAX).map_err(Bounded::into_event_error)
}

/// Parses a batch (`application/cloudevents-batch+json`): a JSON array of events.
pub fn parse_batch(body: &[u8]) -> Result<Vec<Event>, EventError> {
    parse_batch_bounded(body, usize::MAX).map_err(Bounded::into_event_error)
}

/// Why a bounded parse failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bounded {
    /// Not a valid event.
    Invalid(EventError),
    /// An event has more than this many attributes: parsing stopped there, so a
    /// body of 100,000 names costs no more than one at the limit.
    TooManyAttributes(usize),
}

impl Bounded {
    fn into_event_error(self) -> EventError {
        match self {
            Bounded::Invalid(e) => e,
            Bounded::TooManyAttributes(n) => {
                EventError::new("body", format!("more than {n} attributes"))
            }
        }
    }
}

/// Like [`parse_event`], refusing an event with more than `max_attributes`
/// attributes as soon as the parser reaches the one past the limit.
pub fn parse_event_bounded(body: &[u8], max_attributes: usize) -> Result<Event, Bounded> {
    let over = std::cell::Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = serde::de::DeserializeSeed::deserialize(
        MembersSeed {
            max: max_attributes,
            over: &over,
        },
        &mut de,
    )
    .and_then(|m| de.end().map(|()| m));
    match parsed {
        Ok(Members(members)) => from_members(members).map_err(Bounded::Invalid),
        Err(_) if over.get() => Err(Bounded::TooManyAttributes(max_attributes)),
        Err(e) => Err(Bounded::Invalid(EventError::new(
            "body",
            format!("not a JSON object: {e}"),
        ))),
    }
}

/// Like [`parse_batch`], with each event bounded as in [`parse_event_bounded`].
pub fn parse_batch_bounded(body: &[u8], max_attributes: usize) -> Result<Vec<Event>, Bounded> {
    let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(|e| {
        Bounded::Invalid(EventError::new(
            "body",
            format!("not a JSON array of events: {e}"),
        ))
    })?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            parse_event_bounded(raw.get().as_bytes(), max_attributes).map_err(|e| match e {
                Bounded::Invalid(e) if e.attribute == "body" => {
                    Bounded::Invalid(EventError::new(format!("[{i}]"), e.reason))
                }
                Bounded::Invalid(e) => Bounded::Invalid(EventError {
                    attribute: format!("[{i}].{}", e.attribute),
                    reason: e.reason,
                }),
                other => other,
            })
        })
        .collect()
}

/// An object's members in document order, values unparsed. Unlike a map it keeps
/// the order the producer wrote (stored events read as sent) and costs no
/// comparisons between names: decoding stays linear in the body whatever the
/// names are. Repeated names are found by [`from_members`].
struct Members<'a>(Vec<(String, &'a RawValue)>);

/// Reads [`Members`], failing once more than `max` of them are attributes (not
/// `data` or `data_base64`), and saying so in `over`.
struct MembersSeed<'c> {
    max: usize,
    over: &'c std::cell::Cell<bool>,
}

impl<'de> serde::de::DeserializeSeed<'de> for MembersSeed<'_> {
    type Value = Members<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Members<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for MembersSeed<'_> {
    type Value = Members<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Members<'de>, M::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8).min(64));
        let mut attributes = 0usize;
        while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
            if entry.0 != "data" && entry.0 != "data_base64" {
                attributes += 1;
                if attributes > self.max {
                    self.over.set(true);
                    return Err(serde::de::Error::custom("too many attributes"));
                }
            }
            members.push(entry);
        }
        Ok(Members(members))
    }
}

/// The required attributes, which go first so stored events read naturally.
const REQUIRED: [&str; 4] = ["specversion", "id", "source", "type"];

fn repeated(name: &str) -> EventError {
    EventError::new(name, "member given more than once")
}

fn from_members(members: Vec<(String, &RawValue)>) -> Result<Event, EventError> {
    let mut event = Event::new();
    let mut data: Option<&RawValue> = None;
    let mut data_b64: Option<&RawValue> = None;
    let mut required: [Option<(String, &RawValue)>; 4] = Default::default();
    let mut rest = Vec::with_capacity(members.len());
    for (name, raw) in members {
        let slot = match name.as_str() {
            "data" => &mut data,
            "data_base64" => &mut data_b64,
            n => {
                match REQUIRED.iter().position(|r| *r == n) {
                    Some(i) if required[i].is_some() => return Err(repeated(n)),
                    Some(i) => required[i] = Some((name, raw)),
                    None => rest.push((name, raw)),
                }
                continue;
            }
        };
        if slot.replace(raw).is_some() {
            return Err(repeated(&name));
        }
    }
    for (name, raw) in required.into_iter().flatten().chain(rest) {
        let value: serde_json::Value = serde_json::from_str(raw.get())
            .map_err(|e| EventError::new(&name, format!("invalid JSON value: {e}")))?;
        let value = match value {
            serde_json::Value::Null => continue,
            serde_json::Value::String(s) => AttrValue::String(s.into()),
            serde_json::Value::Bool(b) => AttrValue::Boolean(b),
            serde_json::Value::Number(n) => {
                let i = n
                    .as_i64()
                    .and_then(|i| i32::try_from(i).ok())
                    .ok_or_else(|| {
                        EventError::new(&name, "numbers must be 32-bit signed integers")
                    })?;
                AttrValue::Integer(i)
            }
            _ => {
                return Err(EventError::new(
                    &name,
                    "attribute values must be strings, integers or booleans",
                ))
            }
        };
        // The index of a wide event finds a repeated name in O(1).
        if event.add_new(name.as_str().into(), value).is_err() {
            return Err(repeated(&name));
        }
    }
    match (data, data_b64) {
        (Some(_), Some(_)) => {
            return Err(EventError::new(
                "data",
                "'data' and 'data_base64' must not both be present",
            ))
        }
        (Some(raw), None) => {
            let json_ct = event
                .get_str(DATACONTENTTYPE)
                .is_none_or(is_json_media_type);
            if raw.get() == "null" {
                // A JSON null data member is no data.
            } else if json_ct {
                event.set_data(
                    DataKind::Json,
                    Some(Bytes::copy_from_slice(raw.get().as_bytes())),
                );
            } else {
                match serde_json::from_str::<String>(raw.get()) {
                    Ok(s) => event.set_data(DataKind::Text, Some(Bytes::from(s))),
                    // Not a string under a non-JSON content type: keep the JSON text.
                    Err(_) => event.set_data(
                        DataKind::Json,
                        Some(Bytes::copy_from_slice(raw.get().as_bytes())),
                    ),
                }
            }
        }
        (None, Some(raw)) => {
            let s: String = serde_json::from_str(raw.get())
                .map_err(|_| EventError::new("data_base64", "must be a string"))?;
            let bytes = B64
                .decode(s.as_bytes())
                .map_err(|e| EventError::new("data_base64", format!("invalid base64: {e}")))?;
            event.set_data(DataKind::Binary, Some(Bytes::from(bytes)));
        }
        (None, None) => {}
    }
    Ok(event)
}

/// Writes an event in structured JSON form.
pub fn write_event(event: &Event, out: &mut Vec<u8>) {
    out.push(b'{');
    let mut first = true;
    for (name, value) in event.attributes() {
        if !first {
            out.push(b',');
        }
        first = false;
        write_json_string(name, out);
        out.push(b':');
        match value {
            AttrValue::String(s) => write_json_string(s, out),
            AttrValue::Integer(i) => out.extend_from_slice(i.to_string().as_bytes()),
            AttrValue::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        }
    }
    if let Some(data) = event.data() {
        if !first {
            out.push(b',');
        }
        // Data goes in as JSON only when it is JSON text: a record from another
        // producer (or a binary-mode body under a JSON content type) may say so and
        // hold anything, and embedding it would send an unparseable event.
        let as_json = match event.data_kind() {
            DataKind::Json => is_json_text(data),
            DataKind::Text => false,
            DataKind::Binary => {
                event
                    .get_str(DATACONTENTTYPE)
                    .is_some_and(is_json_media_type)
                    && is_json_text(data)
            }
        };
        if as_json {
            out.extend_from_slice(b"\"data\":");
            out.extend_from_slice(data);
        } else if event.data_kind() == DataKind::Text
            && event
                .get_str(DATACONTENTTYPE)
                .is_some_and(|ct| !is_json_media_type(ct))
        {
            // A string member is text only under a non-JSON content type; a stored
            // record may say text without one, and then it goes as bytes.
            out.extend_from_slice(b"\"data\":");
            write_json_string(&String::from_utf8_lossy(data), out);
        } else {
            if event.data_kind() == DataKind::Json && event.get(DATACONTENTTYPE).is_none() {
                // Its content type was implied by the JSON member: say it.
                out.extend_from_slice(b"\"datacontenttype\":\"application/json\",");
            }
            out.extend_from_slice(b"\"data_base64\":\"");
            out.extend_from_slice(B64.encode(data).as_bytes());
            out.push(b'"');
        }
    }
    out.push(b'}');
}

/// Serialises an event in structured JSON form.
pub fn to_vec(event: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + event.data().map_or(0, |d| d.len()));
    write_event(event, &mut out);
    out
}

/// Whether `data` is one JSON value as UTF-8 text (serde_json skips over the
/// contents of strings it ignores without checking their UTF-8, so that is checked
/// first).
fn is_json_text(data: &[u8]) -> bool {
    std::str::from_utf8(data)
        .is_ok_and(|t| serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok())
}

fn write_json_string(s: &str, out: &mut Vec<u8>) {
    // serde_json's string escaping cannot fail when writing into a Vec.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_json_data_and_extensions() {
        let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t",
            "count":3,"flag":true,"ext":"x","nothing":null,"data":{"a":[1,2]}}"#;
        let e = parse_event(body).expect("valid");
        assert_eq!(e.get("count"), Some(&AttrValue::Integer(3)));
        assert_eq!(e.get("flag"), Some(&AttrValue::Boolean(true)));
        assert_eq!(e.get("nothing"), None);
        assert_eq!(e.data_kind(), DataKind::Json);
        assert_eq!(e.data().map(|d| &d[..]), Some(&br#"{"a":[1,2]}"#[..]));
        assert_eq!(e.effective_content_type(), Some("application/json"));
        let names: Vec<_> = e.attributes().map(|(n, _)| n).take(4).collect();
        assert_eq!(names, ["specversion", "id", "source", "type"]);
    }

    /// Members keep the producer's order (required attributes first), and a name
    /// given twice is an error naming it rather than one value silently winning (a
    /// filter and a subscriber must never see different values of one attribute).
    #[test]
    fn member_order_and_repeated_members() {
        let body =
            br#"{"zeta":"1","type":"t","alpha":"2","id":"1","source":"/s","specversion":"1.0"}"#;
        let e = parse_event(body).expect("valid");
        let names: Vec<_> = e.attributes().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["specversion", "id", "source", "type", "zeta", "alpha"]
        );
        for (body, name) in [
            (
                &br#"{"specversion":"1.0","id":"1","id":"2","source":"/s","type":"t"}"#[..],
                "id",
            ),
            (
                br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","x":"a","x":"b"}"#,
                "x",
            ),
            (
                br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data":2}"#,
                "data",
            ),
        ] {
            let err = parse_event(body).expect_err("a repeated member");
            assert_eq!(err.attribute, name);
            assert!(err.reason.contains("more than once"), "{}", err.reason);
        }
        // Wide: the repeat is found through the event's index, not a scan.
        let mut wide = String::from(r#"{"specversion":"1.0","id":"1","source":"/s","type":"t""#);
        for i in 0..1000 {
            wide.push_str(&format!(r#","e{i}":"v""#));
        }
        wide.push_str(r#","e500":"again"}"#);
        assert_eq!(
            parse_event(wide.as_bytes())
                .expect_err("repeated")
                .attribute,
            "e500"
        );
    }

    /// Fuzzing (fuzz/http_binary, nats_binding, record_codec) found data that says
    /// it is JSON and is not: a stored record of kind JSON with `{""a:1}`, and a
    /// binary-mode body under `application/json` holding invalid UTF-8 inside a
    /// string (serde_json's skipping parser does not check it). Embedded as they
    /// were, the structured event was not JSON. Now they go as `data_base64`, and
    /// the bytes come back unchanged.
    #[test]
    fn data_that_is_not_json_text_goes_as_base64() {
        for (kind, data) in [
            (DataKind::Json, &b"{\"\"a:1}"[..]),
            (DataKind::Binary, &b"{\"\xdb\":1}"[..]),
            (DataKind::Json, &b"{\"\xdb\":1}"[..]),
            // Found by fuzz/record_codec: text data without a content type, which
            // came back as JSON data.
            (DataKind::Text, &b"{\"a\":1}"[..]),
        ] {
            // Without a content type, the one the JSON member implied is kept.
            let mut bare = Event::new();
            bare.set_str("specversion", "1.0");
            bare.set_data(kind, Some(Bytes::copy_from_slice(data)));
            let back = parse_event(&to_vec(&bare)).expect("parses");
            assert_eq!(back.effective_content_type(), bare.effective_content_type());
            let mut e = Event::new();
            e.set_str("specversion", "1.0");
            e.set_str("id", "1");
            e.set_str("source", "/s");
            e.set_str("type", "t");
            e.set_str("datacontenttype", "application/json");
            e.set_data(kind, Some(Bytes::copy_from_slice(data)));
            let text = to_vec(&e);
            let back = parse_event(&text).unwrap_or_else(|err| {
                panic!(
                    "{kind:?} {data:?}: {err:?} in {}",
                    String::from_utf8_lossy(&text)
                )
            });
            assert_eq!(back.data().map(|d| &d[..]), Some(data));
            assert_eq!(back.data_kind(), DataKind::Binary, "as data_base64");
        }
    }

    #[test]
    fn text_data_under_non_json_content_type() {
        let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t",
            "datacontenttype":"text/plain","data":"hello \"world\""}"#;
        let e = parse_event(body).expect("valid");
        assert_eq!(e.data_kind(), DataKind::Text);
        assert_eq!(e.data().map(|d| &d[..]), Some(&b"hello \"world\""[..]));
        let again = parse_event(&to_vec(&e)).expect("round trip");
        assert_eq!(again, e);
    }

    #[test]
    fn base64_data_round_trips() {
        let body =
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"AAEC/w=="}"#;
        let e = parse_event(body).expect("valid");
        assert_eq!(e.data().map(|d| &d[..]), Some(&[0u8, 1, 2, 255][..]));
        assert_eq!(parse_event(&to_vec(&e)).expect("round trip"), e);
    }

    #[test]
    fn rejects_bad_members() {
        let cases: &[(&[u8], &str)] = &[
            (br#"[1]"#, "body"),
            (br#"{"id":{"a":1}}"#, "id"),
            (br#"{"n":1.5}"#, "n"),
            (br#"{"n":9999999999}"#, "n"),
            (br#"{"data":1,"data_base64":"AA=="}"#, "data"),
            (br#"{"data_base64":"!!"}"#, "data_base64"),
            (br#"{"data_base64":3}"#, "data_base64"),
        ];
        for (body, attr) in cases {
            let err = parse_event(body).expect_err("invalid");
            assert_eq!(err.attribute, *attr, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn batch_errors_name_the_index() {
        let body = br#"[{"specversion":"1.0"},{"id":[]}]"#;
        let err = parse_batch(body).expect_err("invalid");
        assert_eq!(err.attribute, "[1].id");
        assert_eq!(parse_batch(b"[]").expect("empty batch"), vec![]);
    }

    #[test]
    fn binary_json_body_becomes_json_data() {
        let mut e = Event::new();
        e.set_str("specversion", "1.0");
        e.set_str("datacontenttype", "application/json");
        e.set_data(DataKind::Binary, Some(Bytes::from_static(b"{\"k\":1}")));
        let text = String::from_utf8(to_vec(&e)).expect("utf8");
        assert!(text.ends_with(r#""data":{"k":1}}"#), "{text}");
        e.set_data(DataKind::Binary, Some(Bytes::from_static(b"{not json")));
        let text = String::from_utf8(to_vec(&e)).expect("utf8");
        assert!(text.contains("data_base64"), "{text}");
    }
}
