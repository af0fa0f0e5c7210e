//! Knative's `EventPolicy` (`eventing.knative.dev/v1alpha1`): who may send events to
//! which brokers, and which events.
//!
//! A policy lives in a namespace and applies to brokers of that namespace only:
//! `spec.to` names them (`ref` to a Broker by name, or a label `selector`); an empty
//! or missing `to` means every broker of the namespace. `spec.from` lists the
//! senders it admits: `sub` subject strings (a trailing `*` is a prefix wildcard,
//! compared without regard to case, as Knative does) and `ref`s to ServiceAccounts
//! (`system:serviceaccount:<namespace>:<name>`). `spec.filters` (the Subscriptions
//! API dialects, CESQL included) must also pass for the event itself.
//!
//! The policies that apply to a broker are resolved once at load time onto its
//! [`super::BrokerConfig::policies`]; the ingress evaluates them. A request is
//! admitted when at least one applying policy admits both its sender and its event.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use super::raw::Metadata;
use super::{check_k8s_name, deserialize, Ctx};
use crate::filter::Filter;

/// The API version of the EventPolicy documents understood.
pub const API_VERSION: &str = "eventing.knative.dev/v1alpha1";

/// A validated EventPolicy.
#[derive(Debug)]
pub struct EventPolicy {
    /// Namespace of the policy (and of the brokers it can apply to).
    pub namespace: String,
    /// Policy name.
    pub name: String,
    /// Brokers it applies to, unless [`EventPolicy::to_all`].
    pub to: Vec<PolicyTarget>,
    /// `spec.to` was empty: every broker of the namespace. (A `to` that names
    /// only other kinds of resources applies to no broker, never to all.)
    pub to_all: bool,
    /// The senders it admits.
    pub from: Vec<SubjectPattern>,
    /// What the events must match (`spec.filters`); `None`: any event.
    pub filter: Option<Filter>,
    /// A hash of the `spec` as written: a reload compares policies by it.
    pub spec_hash: u64,
}

impl EventPolicy {
    /// Whether this policy applies to a broker of its namespace with these labels.
    pub fn applies_to(&self, broker: &str, labels: &BTreeMap<String, String>) -> bool {
        self.to_all
            || self.to.iter().any(|t| match t {
                PolicyTarget::Broker(name) => name == broker,
                PolicyTarget::Selector(s) => s.matches(labels),
            })
    }

    /// Whether one of `subjects` is a sender this policy admits.
    pub fn admits_subject<'a>(&self, mut subjects: impl Iterator<Item = &'a str>) -> bool {
        subjects.any(|s| self.from.iter().any(|p| p.matches(s)))
    }

    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One entry of `spec.to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyTarget {
    /// A broker by name (`ref`).
    Broker(String),
    /// Brokers whose labels match (`selector`).
    Selector(LabelSelector),
}

/// A Kubernetes label selector: `matchLabels` and `matchExpressions`, all of which
/// must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    /// Labels that must be present with these values.
    pub match_labels: BTreeMap<String, String>,
    /// Further requirements.
    pub match_expressions: Vec<LabelRequirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelRequirement {
    /// The label.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: LabelOperator,
    /// The values of `In` and `NotIn`.
    pub values: Vec<String>,
}

/// A `matchExpressions` operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelOperator {
    /// The label's value is one of `values`.
    In,
    /// The label is absent or its value is none of `values`.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

impl LabelSelector {
    /// Whether `labels` satisfy the selector (an empty selector matches everything,
    /// as in Kubernetes).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let v = labels.get(&r.key);
                match r.operator {
                    LabelOperator::In => v.is_some_and(|v| r.values.contains(v)),
                    LabelOperator::NotIn => !v.is_some_and(|v| r.values.contains(v)),
                    LabelOperator::Exists => v.is_some(),
                    LabelOperator::DoesNotExist => v.is_none(),
                }
            })
    }
}

/// A sender subject in `spec.from`, lower-cased: equal, or with a trailing `*`, a
/// prefix (Knative compares subjects without regard to case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectPattern {
    /// Exactly this subject.
    Exact(String),
    /// Any subject starting with this.
    Prefix(String),
}

impl SubjectPattern {
    /// Parses `sub` as written.
    pub fn parse(sub: &str) -> SubjectPattern {
        let lower = sub.to_lowercase();
        match lower.strip_suffix('*') {
            Some(prefix) => SubjectPattern::Prefix(prefix.to_owned()),
            None => SubjectPattern::Exact(lower),
        }
    }

    /// Whether `subject` is admitted (compared lower-cased, without allocating).
    pub fn matches(&self, subject: &str) -> bool {
        let mut lower = subject.chars().flat_map(char::to_lowercase);
        match self {
            SubjectPattern::Exact(s) => lower.eq(s.chars()),
            SubjectPattern::Prefix(p) => p.chars().all(|c| lower.next() == Some(c)),
        }
    }
}

impl std::fmt::Display for SubjectPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubjectPattern::Exact(s) => f.write_str(s),
            SubjectPattern::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// The subject of a Kubernetes service account's tokens.
pub fn service_account_subject(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

#[derive(Debug, Deserialize)]
struct RawPolicy {
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    spec: RawPolicySpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicySpec {
    #[serde(default)]
    to: Vec<RawTo>,
    #[serde(default)]
    from: Vec<RawFrom>,
    #[serde(default)]
    filters: Vec<serde_yaml_ng::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTo {
    #[serde(rename = "ref")]
    reference: Option<RawRef>,
    selector: Option<RawSelector>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRef {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    kind: Option<String>,
    name: Option<String>,
    namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelector {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(rename = "matchLabels", default)]
    match_labels: BTreeMap<String, String>,
    #[serde(rename = "matchExpressions", default)]
    match_expressions: Vec<RawRequirement>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequirement {
    key: String,
    operator: String,
    #[serde(default)]
    values: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFrom {
    #[serde(rename = "ref")]
    reference: Option<RawRef>,
    sub: Option<String>,
}

/// Whether a `ref` or `selector` names brokers (`kind: Broker` of
/// `eventing.knative.dev`); other kinds are not served here.
fn is_broker_kind(api_version: Option<&str>, kind: Option<&str>) -> bool {
    kind == Some("Broker")
        && api_version.is_none_or(|a| a.split('/').next() == Some("eventing.knative.dev"))
}

/// Parses an EventPolicy document; errors go to `ctx`, what is worth knowing (a
/// target that is not a broker) to `notices`.
pub(super) fn parse_policy(
    value: serde_yaml_ng::Value,
    ctx: &mut Ctx<'_>,
    notices: &mut Vec<String>,
) -> Option<EventPolicy> {
    let spec_hash = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        value.get("spec").hash(&mut h);
        h.finish()
    };
    let raw: RawPolicy = deserialize(value, ctx)?;
    let namespace = raw.metadata.namespace.unwrap_or_else(|| "default".into());
    let name = raw.metadata.name.unwrap_or_default();
    ctx.object = Some(format!("EventPolicy {namespace}/{name}"));
    let before = ctx.errors.len();
    check_k8s_name(&namespace, true, "metadata.namespace", ctx);
    check_k8s_name(&name, false, "metadata.name", ctx);
    let where_ = format!(
        "{}: document {} (EventPolicy {namespace}/{name})",
        ctx.file.display(),
        ctx.document
    );
    let mut to = Vec::new();
    let mut other_targets = 0;
    for (i, t) in raw.spec.to.iter().enumerate() {
        let field = format!("spec.to[{i}]");
        match (&t.reference, &t.selector) {
            (Some(r), None) => {
                if r.namespace.as_deref().is_some_and(|ns| ns != namespace) {
                    ctx.err(
                        &format!("{field}.ref.namespace"),
                        "a policy applies to resources of its own namespace only",
                    );
                }
                match r.name.as_deref() {
                    None | Some("") => ctx.err(&format!("{field}.ref.name"), "required"),
                    Some(n) if is_broker_kind(r.api_version.as_deref(), r.kind.as_deref()) => {
                        to.push(PolicyTarget::Broker(n.to_owned()));
                    }
                    Some(_) => other_targets += 1,
                }
            }
            (None, Some(s)) => {
                let mut selector = LabelSelector {
                    match_labels: s.match_labels.clone(),
                    match_expressions: Vec::new(),
                };
                for (j, r) in s.match_expressions.iter().enumerate() {
                    let operator = match r.operator.as_str() {
                        "In" => LabelOperator::In,
                        "NotIn" => LabelOperator::NotIn,
                        "Exists" => LabelOperator::Exists,
                        "DoesNotExist" => LabelOperator::DoesNotExist,
                        other => {
                            ctx.err(
                                &format!("{field}.selector.matchExpressions[{j}].operator"),
                                format!("'{other}' is not In, NotIn, Exists or DoesNotExist"),
                            );
                            continue;
                        }
                    };
                    let needs_values = matches!(operator, LabelOperator::In | LabelOperator::NotIn);
                    if needs_values == r.values.is_empty() {
                        ctx.err(
                            &format!("{field}.selector.matchExpressions[{j}].values"),
                            if needs_values {
                                "required for In and NotIn"
                            } else {
                                "must be empty for Exists and DoesNotExist"
                            },
                        );
                    }
                    selector.match_expressions.push(LabelRequirement {
                        key: r.key.clone(),
                        operator,
                        values: r.values.clone(),
                    });
                }
                if is_broker_kind(s.api_version.as_deref(), s.kind.as_deref()) {
                    to.push(PolicyTarget::Selector(selector));
                } else {
                    other_targets += 1;
                }
            }
            _ => ctx.err(&field, "set exactly one of ref and selector"),
        }
    }
    if other_targets > 0 && to.is_empty() {
        notices.push(format!(
            "{where_}: applies to no broker (its spec.to names only other kinds of resources)"
        ));
    }
    let mut from = Vec::new();
    for (i, f) in raw.spec.from.iter().enumerate() {
        let field = format!("spec.from[{i}]");
        match (&f.reference, &f.sub) {
            (None, Some(sub)) if !sub.is_empty() => {
                from.push(SubjectPattern::parse(sub));
            }
            (None, Some(_)) => ctx.err(&format!("{field}.sub"), "must not be empty"),
            (Some(r), None) => match (r.kind.as_deref(), r.name.as_deref()) {
                (Some("ServiceAccount"), Some(n)) if !n.is_empty() => {
                    let ns = r.namespace.as_deref().unwrap_or(&namespace);
                    from.push(SubjectPattern::Exact(
                        service_account_subject(ns, n).to_lowercase(),
                    ));
                }
                (Some("ServiceAccount"), _) => ctx.err(&format!("{field}.ref.name"), "required"),
                (kind, _) => ctx.err(
                    &format!("{field}.ref.kind"),
                    format!(
                        "{} cannot be resolved to a sender identity here: refer to a ServiceAccount, or give its subject with `sub`",
                        kind.unwrap_or("(none)")
                    ),
                ),
            },
            _ => ctx.err(&field, "set exactly one of ref and sub"),
        }
    }
    if raw.spec.from.is_empty() {
        ctx.err(
            "spec.from",
            "required: a policy with no senders admits nothing (list `sub` subjects or ServiceAccount `ref`s)",
        );
    }
    let filter = if raw.spec.filters.is_empty() {
        None
    } else {
        match Filter::from_filters(&raw.spec.filters) {
            Ok(f) => Some(f),
            Err(errors) => {
                for e in errors {
                    ctx.err(&format!("spec.{}", e.field), e.reason);
                }
                None
            }
        }
    };
    let to_all = raw.spec.to.is_empty();
    (ctx.errors.len() == before).then_some(EventPolicy {
        namespace,
        name,
        to,
        to_all,
        from,
        filter,
        spec_hash,
    })
}

/// The policies of `policies` that apply to a broker.
pub(super) fn applying(
    policies: &[Arc<EventPolicy>],
    namespace: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<Arc<EventPolicy>> {
    policies
        .iter()
        .filter(|p| p.namespace == namespace && p.applies_to(name, labels))
        .cloned()
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        let exact = SubjectPattern::parse("system:serviceaccount:ns:Sender");
        assert!(exact.matches("system:serviceaccount:ns:sender"));
        assert!(exact.matches("SYSTEM:serviceaccount:ns:SENDER"));
        assert!(!exact.matches("system:serviceaccount:ns:sender2"));
        assert!(!exact.matches("system:serviceaccount:ns:sende"));
        let prefix = SubjectPattern::parse("system:serviceaccount:ns:other-*");
        assert!(prefix.matches("system:serviceaccount:ns:other-1"));
        assert!(prefix.matches("system:serviceaccount:ns:other-"));
        assert!(!prefix.matches("system:serviceaccount:ns:other"));
        assert!(!prefix.matches("system:serviceaccount:ns2:other-1"));
        assert!(SubjectPattern::parse("*").matches("anyone"));
        // A multi-byte character at the cut must not panic.
        assert!(!prefix.matches("system:serviceaccount:ns:othé"));
        assert!(!SubjectPattern::parse("é*").matches("e"));
    }

    #[test]
    fn selectors() {
        let labels: BTreeMap<String, String> =
            [("team".to_owned(), "a".to_owned())].into_iter().collect();
        let req = |key: &str, operator, values: &[&str]| LabelRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        let sel = |labels: &[(&str, &str)], exprs: Vec<LabelRequirement>| LabelSelector {
            match_labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            match_expressions: exprs,
        };
        assert!(sel(&[], vec![]).matches(&labels));
        assert!(sel(&[("team", "a")], vec![]).matches(&labels));
        assert!(!sel(&[("team", "b")], vec![]).matches(&labels));
        assert!(sel(&[], vec![req("team", LabelOperator::In, &["a", "b"])]).matches(&labels));
        assert!(!sel(&[], vec![req("team", LabelOperator::NotIn, &["a"])]).matches(&labels));
        assert!(sel(&[], vec![req("x", LabelOperator::NotIn, &["a"])]).matches(&labels));
        assert!(sel(&[], vec![req("team", LabelOperator::Exists, &[])]).matches(&labels));
        assert!(!sel(&[], vec![req("team", LabelOperator::DoesNotExist, &[])]).matches(&labels));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod resolve_tests {
    use std::path::Path;

    use crate::config::{parse_sources, LoadOptions};

    const BROKERS: &str = r#"
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: a, namespace: ns, labels: {tier: gold}}
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: b, namespace: ns, labels: {tier: bronze}}
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: a, namespace: other}
"#;

    fn applying(policies: &str) -> Vec<(String, Vec<String>)> {
        let text = format!("{BROKERS}{policies}");
        let config =
            parse_sources(&[(Path::new("t.yaml"), &text)], &LoadOptions::default()).expect("valid");
        config
            .brokers
            .iter()
            .map(|b| {
                (
                    b.id.to_string(),
                    b.policies.iter().map(|p| p.name.clone()).collect(),
                )
            })
            .collect()
    }

    fn policy(name: &str, to: &str) -> String {
        format!(
            "---\napiVersion: eventing.knative.dev/v1alpha1\nkind: EventPolicy\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  to: {to}\n  from: [{{sub: someone}}]\n"
        )
    }

    #[test]
    fn policies_apply_to_their_namespace_by_ref_selector_or_all() {
        let got = applying(&format!(
            "{}{}{}{}",
            policy("all", "[]"),
            policy("by-ref", "[{ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: b}}]"),
            policy(
                "by-label",
                "[{selector: {apiVersion: eventing.knative.dev/v1, kind: Broker, matchLabels: {tier: gold}}}]"
            ),
            policy("channel", "[{ref: {apiVersion: messaging.knative.dev/v1, kind: Channel, name: a}}]"),
        ));
        let want = |b: &str, ps: &[&str]| {
            (
                b.to_owned(),
                ps.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            got,
            vec![
                want("ns/a", &["all", "by-label"]),
                want("ns/b", &["all", "by-ref"]),
                want("other/a", &[]),
            ]
        );
    }

    #[test]
    fn a_policy_needs_senders_and_may_not_reach_into_another_namespace() {
        let text = format!(
            "{BROKERS}---\napiVersion: eventing.knative.dev/v1alpha1\nkind: EventPolicy\nmetadata: {{name: p, namespace: ns}}\nspec:\n  to: [{{ref: {{kind: Broker, name: a, namespace: other}}}}]\n"
        );
        let errors = parse_sources(&[(Path::new("t.yaml"), &text)], &LoadOptions::default())
            .expect_err("invalid")
            .0;
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.to[0].ref.namespace", "spec.from"]);
    }
}
