//! The CloudEvents JSON event format (formats_json-format.md), single events and batches.

use std::collections::BTreeMap;

use base64::Engine;
use bytes::Bytes;
use serde_json::value::RawValue;

use super::{is_json_media_type, AttrValue, DataKind, Event, EventError, DATACONTENTTYPE};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Parses one event in structured JSON form. The result is not yet validated
/// against the CloudEvents rules: call [`super::validate`].
pub fn parse_event(body: &[u8]) -> Result<Event, EventError> {
    let members: BTreeMap<String, &RawValue> = serde_json::from_slice(body)
        .map_err(|e| EventError::new("body", format!("not a JSON object: {e}")))?;
    from_members(members)
}

/// Parses a batch (`application/cloudevents-batch+json`): a JSON array of events.
pub fn parse_batch(body: &[u8]) -> Result<Vec<Event>, EventError> {
    let items: Vec<&RawValue> = serde_json::from_slice(body)
        .map_err(|e| EventError::new("body", format!("not a JSON array of events: {e}")))?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            let members: BTreeMap<String, &RawValue> =
                serde_json::from_str(raw.get()).map_err(|e| {
                    EventError::new(format!("[{i}]"), format!("not a JSON object: {e}"))
                })?;
            from_members(members).map_err(|e| EventError {
                attribute: format!("[{i}].{}", e.attribute),
                reason: e.reason,
            })
        })
        .collect()
}

fn from_members(members: BTreeMap<String, &RawValue>) -> Result<Event, EventError> {
    let mut event = Event::new();
    let mut data: Option<&RawValue> = None;
    let mut data_b64: Option<&RawValue> = None;
    // Required attributes first, so stored events read naturally.
    let order = ["specversion", "id", "source", "type"];
    let mut rest = Vec::with_capacity(members.len());
    for (name, raw) in members {
        match name.as_str() {
            "data" => data = Some(raw),
            "data_base64" => data_b64 = Some(raw),
            _ => rest.push((name, raw)),
        }
    }
    rest.sort_by_key(|(n, _)| order.iter().position(|o| o == n).unwrap_or(order.len()));
    for (name, raw) in rest {
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
        // The names are the distinct keys of `members`.
        event.push_distinct(name, value);
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
        match event.data_kind() {
            DataKind::Json => {
                out.extend_from_slice(b"\"data\":");
                out.extend_from_slice(data);
            }
            DataKind::Text => {
                out.extend_from_slice(b"\"data\":");
                write_json_string(&String::from_utf8_lossy(data), out);
            }
            DataKind::Binary => {
                let json_ct = event
                    .get_str(DATACONTENTTYPE)
                    .is_some_and(is_json_media_type);
                if json_ct && serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok() {
                    out.extend_from_slice(b"\"data\":");
                    out.extend_from_slice(data);
                } else {
                    out.extend_from_slice(b"\"data_base64\":\"");
                    out.extend_from_slice(B64.encode(data).as_bytes());
                    out.push(b'"');
                }
            }
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
