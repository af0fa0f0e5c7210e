//! [`Str`]: the string type of attribute names and values.
//!
//! An event read from a channel keeps its attribute values as slices of the stored
//! record instead of one `String` each: decoding checks each value's UTF-8 once and
//! then shares the record's buffer, and the HTTP binding can hand the same buffer to a
//! header value without copying it. The UTF-8 guarantee comes from `bytestring`
//! (`Bytes` checked at construction, read back without a re-check), so this crate
//! keeps `unsafe_code = "forbid"`.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use bytestring::ByteString;

/// An immutable UTF-8 string whose storage may be shared with other values (a slice
/// of a stored record, a static string, or an owned buffer).
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Str(ByteString);

/// Hashes as the `str` it holds, as [`Borrow<str>`] requires of map keys (an
/// event's name index is looked up by `&str`).
impl std::hash::Hash for Str {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Str {
    /// A string that borrows static memory (no allocation).
    pub const fn from_static(s: &'static str) -> Str {
        Str(ByteString::from_static(s))
    }

    /// Takes `bytes` as a string after checking that they are UTF-8 (ASCII fast path);
    /// the buffer is shared, not copied.
    pub fn from_utf8(bytes: Bytes) -> Result<Str, std::str::Utf8Error> {
        ByteString::try_from(bytes).map(Str)
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared buffer holding the string's bytes (cloning it copies nothing).
    pub fn as_bytes(&self) -> &Bytes {
        self.0.as_bytes()
    }
}

impl Deref for Str {
    type Target = str;

    #[inline]
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Str {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Str {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<String> for Str {
    /// Takes the string's buffer (no copy).
    fn from(s: String) -> Str {
        Str(ByteString::from(s))
    }
}

impl From<&str> for Str {
    /// Copies the string.
    fn from(s: &str) -> Str {
        Str(ByteString::from(s))
    }
}

impl From<&String> for Str {
    /// Copies the string.
    fn from(s: &String) -> Str {
        Str(ByteString::from(s.as_str()))
    }
}

impl From<Box<str>> for Str {
    fn from(s: Box<str>) -> Str {
        Str(ByteString::from(s))
    }
}

impl From<Str> for String {
    fn from(s: Str) -> String {
        String::from(s.0)
    }
}

impl PartialEq<str> for Str {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Str {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Str {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<Str> for str {
    fn eq(&self, other: &Str) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Str> for &str {
    fn eq(&self, other: &Str) -> bool {
        *self == other.as_str()
    }
}

impl fmt::Debug for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_is_rejected() {
        assert!(Str::from_utf8(Bytes::from_static(b"\xff")).is_err());
        assert!(
            Str::from_utf8(Bytes::from_static(b"a\xC0\xA0")).is_err(),
            "overlong"
        );
        assert!(
            Str::from_utf8(Bytes::from_static(b"\xE2\x82")).is_err(),
            "truncated"
        );
        assert_eq!(
            Str::from_utf8(Bytes::from_static("Euro \u{20AC}".as_bytes()))
                .expect("utf-8")
                .as_str(),
            "Euro \u{20AC}"
        );
    }

    #[test]
    fn slices_share_the_buffer() {
        let record = Bytes::from(b"xxhello-worldyy".to_vec());
        let s = Str::from_utf8(record.slice(2..13)).expect("utf-8");
        assert_eq!(s, "hello-world");
        assert_eq!(s.as_bytes().as_ptr(), record[2..].as_ptr(), "not copied");
        let again = s.clone();
        assert_eq!(again.as_bytes().as_ptr(), s.as_bytes().as_ptr());
    }

    #[test]
    fn conversions_round_trip() {
        let owned = String::from("id-1");
        let s = Str::from(owned.clone());
        assert_eq!(s, owned);
        assert_eq!(String::from(s.clone()), owned);
        assert_eq!(Str::from("id-1"), s);
        assert_eq!(Str::from_static("id-1"), s);
        assert_eq!(format!("{s} {s:?}"), "id-1 \"id-1\"");
        assert!("id-1" == s);
        assert_eq!(&*s, "id-1");
    }
}
