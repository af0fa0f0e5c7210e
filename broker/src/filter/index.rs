//! [`FilterIndex`]: all the trigger filters of a broker, evaluated once per event, with
//! exact `type`/`source` requirements looked up by hash instead of tested one by one.
//!
//! A filter that pins `type` to one value (through `filter.attributes`, or an `exact`
//! at the top level of `spec.filters` or nested only in `all`s) can match only events
//! of that type, so it is filed under that value; otherwise, likewise under `source`;
//! otherwise it is tested against every event. Per event the index looks up the
//! event's `type` and `source` (canonical string form), then evaluates the candidates
//! in full, so the result is exactly what evaluating every filter would give. With
//! 1000 triggers on distinct types, a non-matching trigger costs nothing per event.

use std::borrow::Borrow;
use std::collections::HashMap;

use super::node::{canonical, IntBuf};
use super::Filter;
use crate::event::{Event, SOURCE, TYPE};

/// The filters of one broker's triggers, indexed. Positions are those of the slice
/// given to [`FilterIndex::build`].
#[derive(Debug, Clone, Default)]
pub struct FilterIndex {
    filters: Vec<Filter>,
    by_type: Buckets,
    by_source: Buckets,
    /// Filters that must be tested against every event, ascending.
    rest: Vec<usize>,
}

impl FilterIndex {
    /// Indexes `filters` (e.g. `&[&Filter]`, `&[Filter]` or `&[Arc<Filter>]`); the
    /// compiled filters are shared, not copied.
    pub fn build<F: Borrow<Filter>>(filters: &[F]) -> FilterIndex {
        let mut index = FilterIndex {
            filters: filters.iter().map(|f| f.borrow().clone()).collect(),
            ..FilterIndex::default()
        };
        for (i, f) in index.filters.iter().enumerate() {
            if let Some(t) = f.required_exact(TYPE) {
                index.by_type.entry(t.into()).or_default().push(i);
            } else if let Some(s) = f.required_exact(SOURCE) {
                index.by_source.entry(s.into()).or_default().push(i);
            } else {
                index.rest.push(i);
            }
        }
        index
    }

    /// Number of filters.
    pub fn len(&self) -> usize {
        self.filters.len()
    }

    /// Whether there are no filters.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// How many filters are found by hash lookup rather than tested for every event.
    pub fn indexed(&self) -> usize {
        self.filters.len() - self.rest.len()
    }

    /// Replaces `out` with the positions of the filters that `event` passes, ascending.
    /// Does not allocate once `out` has grown to the number of matches.
    pub fn matching(&self, event: &Event, out: &mut Vec<usize>) {
        out.clear();
        self.for_each_match(event, |i| out.push(i));
    }

    /// Calls `f` with the position of every filter that `event` passes, ascending.
    pub fn for_each_match(&self, event: &Event, mut f: impl FnMut(usize)) {
        let mut buf = IntBuf::new();
        let by_type = lookup(&self.by_type, event, TYPE, &mut buf);
        let mut buf = IntBuf::new();
        let by_source = lookup(&self.by_source, event, SOURCE, &mut buf);
        let lists = [by_type, by_source, self.rest.as_slice()];
        let mut heads = [0usize; 3];
        loop {
            // The smallest head of the three ascending, disjoint lists.
            let mut next: Option<(usize, usize)> = None;
            for (l, list) in lists.iter().enumerate() {
                if let Some(&i) = list.get(heads[l]) {
                    if next.is_none_or(|(_, best)| i < best) {
                        next = Some((l, i));
                    }
                }
            }
            let Some((l, i)) = next else { break };
            heads[l] += 1;
            if self.filters[i].matches(event) {
                f(i);
            }
        }
    }
}

/// Filter positions (ascending) by the exact value they require.
type Buckets = HashMap<Box<str>, Vec<usize>>;

fn lookup<'a>(map: &'a Buckets, event: &Event, name: &str, buf: &mut IntBuf) -> &'a [usize] {
    if map.is_empty() {
        return &[];
    }
    event
        .get(name)
        .and_then(|v| map.get(canonical(v, buf)))
        .map_or(&[], Vec::as_slice)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::event::AttrValue;

    const TYPES: [&str; 4] = ["a", "b", "ab", "1"];
    const SOURCES: [&str; 3] = ["/x", "/y", "/xy"];

    /// One filter element (YAML) over a small vocabulary, so that filters and events
    /// collide often.
    fn element() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            prop::sample::select(&TYPES[..]).prop_map(|t| format!("{{exact: {{type: '{t}'}}}}")),
            prop::sample::select(&SOURCES[..])
                .prop_map(|s| format!("{{exact: {{source: '{s}'}}}}")),
            (
                prop::sample::select(&TYPES[..]),
                prop::sample::select(&SOURCES[..])
            )
                .prop_map(|(t, s)| format!("{{exact: {{type: '{t}', source: '{s}'}}}}")),
            prop::sample::select(&TYPES[..]).prop_map(|t| format!("{{prefix: {{type: '{t}'}}}}")),
            prop::sample::select(&SOURCES[..])
                .prop_map(|s| format!("{{suffix: {{source: '{s}'}}}}")),
            prop::sample::select(&TYPES[..]).prop_map(|t| format!("{{cesql: \"type = '{t}'\"}}")),
            Just("{exact: {subject: s}}".to_owned()),
        ];
        leaf.prop_recursive(3, 12, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 1..3)
                    .prop_map(|v| format!("{{all: [{}]}}", v.join(", "))),
                prop::collection::vec(inner.clone(), 1..3)
                    .prop_map(|v| format!("{{any: [{}]}}", v.join(", "))),
                inner.prop_map(|f| format!("{{not: {f}}}")),
            ]
        })
    }

    fn filter() -> impl Strategy<Value = Filter> {
        let attrs = (
            prop::option::of(prop::sample::select(&["", "a", "b", "1"][..])),
            prop::option::of(prop::sample::select(&["", "/x", "/y"][..])),
        )
            .prop_map(|(t, s)| {
                let pairs = [("type", t), ("source", s)];
                Filter::attributes(pairs.into_iter().filter_map(|(k, v)| Some((k, v?))))
            });
        let filters = prop::collection::vec(element(), 0..3).prop_map(|v| {
            let yaml = format!("[{}]", v.join(", "));
            Filter::from_filters_yaml(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e:?}"))
        });
        prop_oneof![attrs, filters]
    }

    fn event() -> impl Strategy<Value = Event> {
        (
            prop::option::of(prop_oneof![
                prop::sample::select(&TYPES[..]).prop_map(|t| AttrValue::String((*t).into())),
                Just(AttrValue::Integer(1)),
            ]),
            prop::option::of(prop::sample::select(&SOURCES[..])),
            any::<bool>(),
        )
            .prop_map(|(ty, source, subject)| {
                let mut e = Event::new();
                if let Some(t) = ty {
                    e.set("type", t);
                }
                if let Some(s) = source {
                    e.set_str("source", s);
                }
                if subject {
                    e.set_str("subject", "s");
                }
                e
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn index_agrees_with_evaluating_every_filter(
            filters in prop::collection::vec(filter(), 0..24),
            events in prop::collection::vec(event(), 1..8),
        ) {
            let index = FilterIndex::build(&filters);
            prop_assert_eq!(index.len(), filters.len());
            let mut got = Vec::new();
            for e in &events {
                index.matching(e, &mut got);
                let want: Vec<usize> = (0..filters.len()).filter(|&i| filters[i].matches(e)).collect();
                prop_assert_eq!(&got, &want, "event {:?}", e);
            }
        }
    }

    #[test]
    fn exact_type_triggers_are_looked_up_not_tested() {
        let mut filters: Vec<Filter> = (0..1000)
            .map(|i| {
                Filter::from_filters_yaml(&format!("[{{exact: {{type: t{i}}}}}]")).expect("valid")
            })
            .collect();
        filters.push(Filter::from_filters_yaml("[{prefix: {type: t99}}]").expect("valid"));
        filters.push(Filter::attributes([("source", "/s")]));
        let refs: Vec<&Filter> = filters.iter().collect();
        let index = FilterIndex::build(&refs);
        assert_eq!(index.indexed(), 1001);
        let mut e = Event::new();
        e.set_str("type", "t999");
        e.set_str("source", "/s");
        let mut out = vec![7, 7, 7];
        index.matching(&e, &mut out);
        assert_eq!(out, [999, 1000, 1001]);
        e.set_str("type", "none");
        index.matching(&e, &mut out);
        assert_eq!(out, [1001]);
        e.remove("type");
        e.remove("source");
        index.matching(&e, &mut out);
        assert!(out.is_empty());
    }
}
