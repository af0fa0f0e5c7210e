//! Trigger filters, compiled once when the config loads and evaluated per event
//! without allocating.
//!
//! Today this is Knative's `spec.filter.attributes`: every key must be present in the
//! event; a non-empty value must equal the attribute's canonical string form exactly
//! (case-sensitive); an empty value means "present, any value".

use crate::event::{AttrValue, Event};

/// One compiled `filter.attributes` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AttrMatch {
    name: String,
    /// `None`: present with any value.
    expected: Option<Expected>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    text: String,
    /// `text` parsed as the canonical form of an Integer, for typed JSON extensions.
    as_int: Option<i32>,
}

impl Expected {
    fn new(text: &str) -> Expected {
        let as_int = text.parse::<i32>().ok().filter(|i| i.to_string() == text);
        Expected {
            text: text.to_owned(),
            as_int,
        }
    }

    fn matches(&self, value: &AttrValue) -> bool {
        match value {
            AttrValue::String(s) => *s == self.text,
            AttrValue::Integer(i) => self.as_int == Some(*i),
            AttrValue::Boolean(b) => self.text == if *b { "true" } else { "false" },
        }
    }
}

/// A compiled trigger filter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Filter {
    attributes: Vec<AttrMatch>,
}

impl Filter {
    /// The filter that matches every event.
    pub fn match_all() -> Filter {
        Filter::default()
    }

    /// Compiles `filter.attributes`. Keys are checked by the config loader.
    pub fn attributes<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Filter {
        let mut attributes: Vec<AttrMatch> = pairs
            .into_iter()
            .map(|(k, v)| AttrMatch {
                name: k.to_owned(),
                expected: (!v.is_empty()).then(|| Expected::new(v)),
            })
            .collect();
        // Most selective checks first: `type` and `source` differ between events far
        // more often than other attributes.
        attributes.sort_by_key(|m| match m.name.as_str() {
            "type" => 0,
            "source" => 1,
            _ => 2,
        });
        Filter { attributes }
    }

    /// Whether the event passes.
    pub fn matches(&self, event: &Event) -> bool {
        self.attributes.iter().all(|m| match event.get(&m.name) {
            None => false,
            Some(v) => m.expected.as_ref().is_none_or(|e| e.matches(v)),
        })
    }

    /// A one-line human description, for `config check` and logs.
    pub fn describe(&self) -> String {
        if self.attributes.is_empty() {
            return "all events".to_owned();
        }
        self.attributes
            .iter()
            .map(|m| match &m.expected {
                Some(e) => format!("{} = {:?}", m.name, e.text),
                None => format!("{} present", m.name),
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        let mut e = Event::new();
        e.set_str("type", "com.example.order");
        e.set_str("source", "/shop");
        e.set_str("empty", "");
        e.set("count", AttrValue::Integer(42));
        e.set("flag", AttrValue::Boolean(false));
        e
    }

    #[test]
    fn attributes_semantics() {
        let e = event();
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[], true),
            (&[("type", "com.example.order")], true),
            (&[("type", "com.example.Order")], false),
            (&[("type", "com.example")], false),
            (&[("type", "com.example.order"), ("source", "/shop")], true),
            (
                &[("type", "com.example.order"), ("source", "/other")],
                false,
            ),
            (&[("subject", "")], false),
            (&[("source", "")], true),
            (&[("empty", "")], true),
            (&[("empty", "x")], false),
            (&[("count", "42")], true),
            (&[("count", "042")], false),
            (&[("flag", "false")], true),
            (&[("flag", "False")], false),
        ];
        for (pairs, want) in cases {
            let f = Filter::attributes(pairs.iter().copied());
            assert_eq!(f.matches(&e), *want, "{pairs:?}");
        }
    }

    #[test]
    fn describe_is_readable() {
        let f = Filter::attributes([("source", ""), ("type", "t")]);
        assert_eq!(f.describe(), "type = \"t\" AND source present");
        assert_eq!(Filter::match_all().describe(), "all events");
    }
}
