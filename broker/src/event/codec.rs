//! The compact record format in which channels store events.
//!
//! ```text
//! u8 version (1) | u8 data kind | u16 attribute count
//! per attribute: u8 name length | name | u8 tag (0 string, 1 integer, 2 boolean)
//!                | u32 value length | value (UTF-8, i32 LE, or one byte)
//! u8 has data | u32 data length | data
//! ```
//! All integers are little-endian. Decoding never panics on malformed input, and the
//! data and the string values (and names other than the well-known ones) of a decoded
//! event share the record's buffer instead of copying it: each is checked for UTF-8
//! once, here.

use bytes::{BufMut, Bytes};

use super::{known_name, AttrValue, DataKind, Event, Str};

const VERSION: u8 = 1;

/// The longest attribute name a record holds (its length is one byte): the upper
/// bound of `--max-attribute-name-bytes`.
pub const MAX_NAME_BYTES: usize = 255;

/// Why a stored record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed event record: {0}")]
pub struct CodecError(pub &'static str);

/// Upper bound on the encoded size, for buffer sizing.
pub fn encoded_len(event: &Event) -> usize {
    let attrs: usize = event
        .attributes()
        .map(|(n, v)| {
            2 + n.len()
                + 4
                + match v {
                    AttrValue::String(s) => s.len(),
                    AttrValue::Integer(_) => 4,
                    AttrValue::Boolean(_) => 1,
                }
        })
        .sum();
    4 + attrs + 5 + event.data().map_or(0, |d| d.len())
}

/// Appends the encoded event to `out`.
pub fn encode(event: &Event, out: &mut Vec<u8>) {
    out.reserve(encoded_len(event));
    out.put_u8(VERSION);
    out.put_u8(event.data_kind() as u8);
    out.put_u16_le(event.attribute_count().min(u16::MAX as usize) as u16);
    for (name, value) in event.attributes().take(u16::MAX as usize) {
        // Attribute names are validated ASCII; longer than [`MAX_NAME_BYTES`] cannot
        // pass the ingress's limits (`--max-attribute-name-bytes` stops there), but
        // truncate defensively rather than corrupt the record.
        let name = &name.as_bytes()[..name.len().min(MAX_NAME_BYTES)];
        out.put_u8(name.len() as u8);
        out.put_slice(name);
        match value {
            AttrValue::String(s) => {
                out.put_u8(0);
                out.put_u32_le(s.len() as u32);
                out.put_slice(s.as_bytes());
            }
            AttrValue::Integer(i) => {
                out.put_u8(1);
                out.put_u32_le(4);
                out.put_i32_le(*i);
            }
            AttrValue::Boolean(b) => {
                out.put_u8(2);
                out.put_u32_le(1);
                out.put_u8(u8::from(*b));
            }
        }
    }
    match event.data() {
        Some(d) => {
            out.put_u8(1);
            out.put_u32_le(d.len() as u32);
            out.put_slice(d);
        }
        None => {
            out.put_u8(0);
            out.put_u32_le(0);
        }
    }
}

/// Encodes into a fresh buffer.
pub fn to_bytes(event: &Event) -> Bytes {
    let mut out = Vec::with_capacity(encoded_len(event));
    encode(event, &mut out);
    Bytes::from(out)
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(CodecError("length overflow"))?;
        let s = self.buf.get(self.pos..end).ok_or(CodecError("truncated"))?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, CodecError> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, CodecError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
}

/// Decodes a record produced by [`encode`].
pub fn decode(record: &Bytes) -> Result<Event, CodecError> {
    let mut c = Cursor {
        buf: record,
        pos: 0,
    };
    if c.u8()? != VERSION {
        return Err(CodecError("unknown version"));
    }
    let kind = DataKind::from_u8(c.u8()?).ok_or(CodecError("unknown data kind"))?;
    let count = c.u16()?;
    // `set_named` looks names up through the event's index once it is wide, so a
    // record of 30,000 attributes decodes in linear time (a scan per name took
    // seconds); a repeated name keeps its first place and its last value.
    let mut event = Event::new();
    for _ in 0..count {
        let nlen = c.u8()? as usize;
        let at = c.pos;
        let name = match known_name(c.take(nlen)?) {
            Some(known) => Str::from_static(known),
            None => Str::from_utf8(record.slice(at..at + nlen))
                .map_err(|_| CodecError("name not UTF-8"))?,
        };
        let tag = c.u8()?;
        let vlen = c.u32()? as usize;
        let at = c.pos;
        let v = c.take(vlen)?;
        let value = match (tag, vlen) {
            (0, _) => AttrValue::String(
                Str::from_utf8(record.slice(at..at + vlen))
                    .map_err(|_| CodecError("value not UTF-8"))?,
            ),
            (1, 4) => AttrValue::Integer(i32::from_le_bytes([v[0], v[1], v[2], v[3]])),
            (2, 1) => AttrValue::Boolean(v[0] != 0),
            _ => return Err(CodecError("bad attribute tag")),
        };
        event.set_named(name, value);
    }
    let has = c.u8()?;
    let dlen = c.u32()? as usize;
    let start = c.pos;
    c.take(dlen)?;
    if c.pos != record.len() {
        return Err(CodecError("trailing bytes"));
    }
    let data = (has == 1).then(|| record.slice(start..start + dlen));
    event.set_data(kind, data);
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fuzzing (fuzz/http_structured, kafka_binding) found names over 255 bytes,
    /// which a record cannot hold (its name length is a byte) and encoding cut
    /// short: a different attribute after a restart. `--max-attribute-name-bytes`
    /// allowed up to 1,024; it now stops at [`MAX_NAME_BYTES`], and a name of that
    /// length round-trips.
    #[test]
    fn names_up_to_the_record_limit_round_trip_and_the_limit_refuses_longer() {
        let mut e = Event::new();
        e.set_str("specversion", "1.0");
        e.set_str("a".repeat(MAX_NAME_BYTES), "v");
        let mut out = Vec::new();
        encode(&e, &mut out);
        assert_eq!(decode(&Bytes::from(out)).expect("decodes"), e);
        let limits = crate::event::EventLimits {
            max_name_bytes: MAX_NAME_BYTES,
            ..Default::default()
        };
        e.set_str("b".repeat(MAX_NAME_BYTES + 1), "v");
        assert!(limits.check(&e).is_err());
    }

    #[test]
    fn round_trip() {
        let mut e = Event::new();
        e.set_str("specversion", "1.0");
        e.set_str("id", "x");
        e.set("n", AttrValue::Integer(-7));
        e.set("b", AttrValue::Boolean(true));
        e.set_data(DataKind::Text, Some(Bytes::from_static(b"hi")));
        let bytes = to_bytes(&e);
        assert_eq!(bytes.len(), encoded_len(&e));
        assert_eq!(decode(&bytes), Ok(e));
    }

    /// Wide records decode in linear time and, like narrow ones, keep the last value
    /// of a repeated name at its first place.
    #[test]
    fn wide_records_decode_linearly_with_repeats_collapsed() {
        let mut json = String::from(r#"{"id":"x""#);
        for i in 0..30_000 {
            json.push_str(&format!(r#","x{i}":"v""#));
        }
        json.push('}');
        let e = crate::event::json::parse_event(json.as_bytes()).expect("parses");
        let bytes = to_bytes(&e);
        let started = std::time::Instant::now();
        let back = decode(&bytes).expect("decodes");
        assert_eq!(back, e);
        // Quadratic decoding took seconds here; linear takes milliseconds, even in a
        // debug build. Generous, so a loaded machine does not fail it.
        assert!(started.elapsed() < std::time::Duration::from_millis(1500));
        // The same name twice (the encoder never writes that): "a39" renamed "a00".
        let mut e = Event::new();
        for i in 0..40 {
            e.set_str(format!("a{i:02}"), if i == 39 { "last" } else { "v" });
        }
        let mut raw = to_bytes(&e).to_vec();
        let at = raw.windows(3).position(|w| w == b"a39").expect("name");
        raw[at..at + 3].copy_from_slice(b"a00");
        let back = decode(&Bytes::from(raw)).expect("decodes");
        assert_eq!(back.attribute_count(), 39);
        assert_eq!(back.attributes().next().map(|(n, _)| n), Some("a00"));
        assert_eq!(back.get_str("a00"), Some("last"));
    }

    #[test]
    fn truncated_and_garbage_records_are_errors() {
        let mut e = Event::new();
        e.set_str("id", "x");
        let bytes = to_bytes(&e);
        for n in 0..bytes.len() {
            assert!(decode(&bytes.slice(..n)).is_err(), "prefix {n}");
        }
        assert!(decode(&Bytes::from_static(&[1, 0, 255, 255, 1])).is_err());
    }

    /// A record whose string value (or extension name) is not UTF-8 is an error, not an
    /// event with a mangled value: the check that `Str` relies on happens here.
    #[test]
    fn invalid_utf8_values_and_names_are_errors() {
        let mut e = Event::new();
        e.set_str("myext", "ab");
        let good = to_bytes(&e).to_vec();
        // version, kind, count (u16), name length, "myext", tag, length (u32), "ab", ...
        let value_at = 4 + 1 + 5 + 1 + 4;
        assert_eq!(&good[value_at..value_at + 2], b"ab");
        let mut bad = good.clone();
        bad[value_at] = 0xff;
        assert_eq!(
            decode(&Bytes::from(bad)),
            Err(CodecError("value not UTF-8"))
        );
        let mut bad = good.clone();
        bad[4 + 1] = 0xC0;
        assert_eq!(decode(&Bytes::from(bad)), Err(CodecError("name not UTF-8")));
    }

    /// Decoded strings are slices of the record, not copies.
    #[test]
    fn values_share_the_record() {
        let mut e = Event::new();
        e.set_str("id", "abc");
        e.set_str("myext", "xyz");
        let bytes = to_bytes(&e);
        let d = decode(&bytes).expect("decodes");
        let range = bytes.as_ptr_range();
        for (_, v) in d.attributes() {
            let AttrValue::String(s) = v else {
                panic!("string expected")
            };
            assert!(range.contains(&s.as_bytes().as_ptr()), "{s} was copied");
        }
    }
}
