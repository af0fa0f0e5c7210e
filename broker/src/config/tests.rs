use std::time::Duration;

use super::*;
use crate::delivery::BackoffPolicy;

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    parse_sources(&[(Path::new("test.yaml"), text)], &LoadOptions::default())
}

fn errors(text: &str) -> Vec<String> {
    parse(text)
        .expect_err("config should be rejected")
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

const SAMPLE: &str = r#"
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
  namespace: shop
spec:
  delivery:
    retry: 3
    backoffPolicy: linear
    backoffDelay: PT0.5S
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: ignored
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: orders
  namespace: shop
  annotations:
    kafka.eventing.knative.dev/delivery.order: ordered
spec:
  broker: default
  filter:
    attributes:
      type: com.example.order
      source: ""
  subscriber:
    ref:
      apiVersion: v1
      kind: Service
      name: order-svc
    uri: /events
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: audit
  namespace: shop
spec:
  broker: default
  subscriber:
    uri: http://127.0.0.1:9000/audit
  delivery:
    retry: 0
    timeout: PT2S
"#;

#[test]
fn sample_is_understood() {
    let c = parse(SAMPLE).expect("valid");
    assert_eq!(c.brokers.len(), 1);
    let b = &c.brokers[0];
    assert_eq!(b.id.to_string(), "shop/default");
    assert_eq!(b.delivery.retry, 3);
    assert_eq!(b.delivery.backoff_policy, BackoffPolicy::Linear);
    assert_eq!(b.triggers.len(), 2);
    let audit = &b.triggers[0];
    assert_eq!(audit.name, "audit");
    assert_eq!(
        audit.delivery.retry, 0,
        "a trigger's delivery replaces the broker's whole"
    );
    assert_eq!(audit.delivery.timeout, Duration::from_secs(2));
    let orders = &b.triggers[1];
    assert_eq!(
        orders.subscriber.as_str(),
        "http://order-svc.shop.svc.cluster.local/events"
    );
    assert_eq!(
        orders.delivery, b.delivery,
        "no delivery of its own: the broker's applies"
    );
    assert_eq!(orders.order, DeliveryOrder::Ordered);
    assert_eq!(
        orders.filter.describe(),
        "type = \"com.example.order\" AND source present"
    );
    assert_eq!(c.notices.len(), 1);
    assert!(
        c.notices[0].contains("skipped ConfigMap"),
        "{:?}",
        c.notices
    );
}

#[test]
fn broker_without_delivery_gets_knative_default() {
    let c = parse("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: b}\n")
        .expect("valid");
    assert_eq!(c.brokers[0].id.namespace, "default");
    assert_eq!(*c.brokers[0].delivery, DeliverySpec::broker_default());
    assert_eq!(c.brokers[0].delivery.retry, 10);
}

#[test]
fn trigger_without_broker_is_a_notice() {
    let c = parse(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\nspec: {broker: nope, subscriber: {uri: 'http://x/'}}\n",
    )
    .expect("valid");
    assert!(c.brokers.is_empty());
    assert!(c.notices[0].contains("not defined"), "{:?}", c.notices);
}

#[test]
fn errors_name_file_document_object_and_field() {
    let text = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: b}\n---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\nspec:\n  broker: b\n  subscriber: {uri: 'http://x/'}\n  delivery: {retry: -1, backoffPolicy: fibonacci, backoffDelay: soon}\n";
    let errs = errors(text);
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert_eq!(
        errs[0],
        "test.yaml: document 2 (Trigger default/t): spec.delivery.retry: -1 is not a whole number >= 0"
    );
    assert!(
        errs[1].contains("spec.delivery.backoffPolicy: 'fibonacci'"),
        "{}",
        errs[1]
    );
    assert!(
        errs[2].contains("spec.delivery.backoffDelay: 'soon'"),
        "{}",
        errs[2]
    );
}

#[test]
fn unknown_spec_fields_and_bad_values_are_rejected() {
    let cases = [
        (
            "spec: {broker: b, subscriber: {uri: 'http://x/'}, filtr: {}}",
            "unknown field `filtr`",
        ),
        (
            "spec: {broker: b, subscriber: {uri: 'http://x/'}, filter: {attributes: {Type: x}}}",
            "spec.filter.attributes.Type",
        ),
        (
            "spec: {broker: b, subscriber: {uri: '/relative'}}",
            "spec.subscriber: uri '/relative'",
        ),
        (
            "spec: {broker: b, subscriber: {uri: 'ftp://x/'}}",
            "must be an http or https URL",
        ),
        ("spec: {broker: b, subscriber: {}}", "set ref, uri or both"),
        (
            "spec: {broker: b, subscriber: {ref: {kind: Pod, apiVersion: v1, name: p}}}",
            "ref to Pod",
        ),
        (
            "spec: {subscriber: {uri: 'http://x/'}}",
            "spec.broker: required",
        ),
        (
            "spec: {broker: b, subscriber: {uri: 'http://x/'}, filters: [{exact: {type: x}, prefix: {type: y}}]}",
            "spec.filters[0]: multiple dialects found",
        ),
        (
            "spec: {broker: b, subscriber: {uri: 'http://x/'}, filters: 'type = x'}",
            "spec.filters",
        ),
        (
            "spec: {broker: B_, subscriber: {uri: 'http://x/'}}",
            "DNS-1123",
        ),
        (
            "spec: {broker: b, subscriber: {uri: 'http://x/'}, delivery: {timeout: PT0S}}",
            "greater than zero",
        ),
        (
            "spec: {broker: b, subscriber: {uri: 'http://x/'}, delivery: {format: xml}}",
            "spec.delivery.format",
        ),
    ];
    for (spec, want) in cases {
        let text = format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: t}}\n{spec}\n"
        );
        let errs = errors(&text);
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "{spec}: want {want:?} in {errs:#?}"
        );
    }
}

#[test]
fn annotations_are_validated() {
    let text = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\n  annotations:\n    kafka.eventing.knative.dev/delivery.order: sorted\n    triggerfish.dev/delivery.concurrency: '0'\nspec: {broker: b, subscriber: {uri: 'http://x/'}}\n";
    let errs = errors(text);
    assert_eq!(errs.len(), 2, "{errs:#?}");
}

#[test]
fn duplicates_and_missing_kind_are_errors() {
    let b = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: b}\n";
    let errs = errors(&format!("{b}---\n{b}"));
    assert!(errs[0].contains("defined twice"), "{errs:?}");
    let errs = errors("metadata: {name: b}\n");
    assert!(
        errs[0].contains("apiVersion and kind are required"),
        "{errs:?}"
    );
    let errs = errors("kind: [unclosed\n");
    assert!(errs[0].contains("not valid YAML"), "{errs:?}");
}

#[test]
fn durations() {
    let ms = Duration::from_millis;
    assert_eq!(parse_duration("PT0.2S"), Ok(ms(200)));
    assert_eq!(parse_duration("PT1M30S"), Ok(ms(90_000)));
    assert_eq!(parse_duration("P1D"), Ok(ms(86_400_000)));
    assert_eq!(parse_duration("pt2s"), Ok(ms(2000)));
    assert!(parse_duration("P1M").is_err());
    assert!(parse_duration("P1Y").is_err());
    assert!(parse_duration("-PT1S").is_err());
    assert!(parse_duration("2 seconds").is_err());
}

#[test]
fn directory_loading_sorts_files_and_reports_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("b.yaml"),
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\nspec: {broker: b, subscriber: {uri: 'http://x/'}}\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("a.yml"),
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: b}\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("notes.txt"), "ignored").expect("write");
    let c = load(dir.path(), &LoadOptions::default()).expect("valid");
    assert_eq!(c.brokers[0].triggers.len(), 1);
    let err = load(&dir.path().join("missing"), &LoadOptions::default()).expect_err("missing");
    assert!(err.to_string().contains("cannot read"), "{err}");
}

fn trigger_doc(name: &str, spec_extra: &str) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  broker: default\n  subscriber: {{uri: 'http://x/'}}\n{spec_extra}"
    )
}

const SHOP_BROKER: &str =
    "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: default, namespace: shop}\n";

#[test]
fn subscriptions_api_filters_are_compiled() {
    let text = format!(
        "{SHOP_BROKER}---\n{}---\n{}",
        trigger_doc(
            "created",
            "  filters:\n    - prefix: {type: com.example.}\n    - any:\n        - suffix: {type: .created}\n        - cesql: \"source LIKE '/shop/%'\"\n"
        ),
        trigger_doc(
            "override",
            "  filter: {attributes: {type: legacy}}\n  filters: [{exact: {type: new}}]\n"
        ),
    );
    let c = parse(&text).expect("valid");
    let triggers = &c.brokers[0].triggers;
    assert_eq!(triggers[0].name, "created");
    assert_eq!(
        triggers[0].filter.describe(),
        "type starts with \"com.example.\" AND (type ends with \".created\" OR cesql(source LIKE '/shop/%'))"
    );
    let mut e = crate::event::Event::new();
    e.set_str("type", "com.example.order.created");
    e.set_str("source", "/other");
    assert!(triggers[0].filter.matches(&e));
    e.set_str("type", "com.example.order.deleted");
    assert!(!triggers[0].filter.matches(&e));
    e.set_str("source", "/shop/eu");
    assert!(triggers[0].filter.matches(&e));
    // A non-empty `filters` overrides `filter.attributes`.
    assert_eq!(triggers[1].name, "override");
    e.set_str("type", "new");
    assert!(triggers[1].filter.matches(&e));
    e.set_str("type", "legacy");
    assert!(!triggers[1].filter.matches(&e));
}

#[test]
fn empty_filters_keep_filter_attributes() {
    let text = format!(
        "{SHOP_BROKER}---\n{}",
        trigger_doc(
            "t",
            "  filter: {attributes: {type: legacy}}\n  filters: []\n"
        )
    );
    let c = parse(&text).expect("valid");
    assert_eq!(
        c.brokers[0].triggers[0].filter.describe(),
        "type = \"legacy\""
    );
}

#[test]
fn invalid_filters_reject_the_trigger_with_trigger_name_and_position() {
    let text = format!(
        "{SHOP_BROKER}---\n{}",
        trigger_doc(
            "bad",
            "  filters:\n    - exact: {type: a}\n    - exact: {type: b}\n    - any: [{exact: {type: ''}}, {cesql: \"type = \"}]\n    - sql: \"type = 'a'\"\n"
        )
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(
        errs[0].starts_with(
            "test.yaml: document 2 (Trigger shop/bad): spec.filters[2].any[0].exact.type: the value must not be empty"
        ),
        "{errs:#?}"
    );
    assert!(
        errs[1].starts_with("test.yaml: document 2 (Trigger shop/bad): spec.filters[2].any[1].cesql: parse error at byte 7"),
        "{errs:#?}"
    );
    assert!(errs[1].contains("expected"), "{errs:#?}");
    assert!(
        errs[2].contains("spec.filters[3].sql: unknown filter dialect 'sql'"),
        "{errs:#?}"
    );
}

#[test]
fn triggers_load_without_their_broker() {
    let text = format!(
        "{}---\n{}",
        trigger_doc("one", "  filters: [{exact: {type: a}}]\n"),
        trigger_doc("two", "")
    );
    let triggers = parse_triggers(
        &[(Path::new("t.yaml"), text.as_str())],
        &LoadOptions::default(),
    )
    .expect("valid");
    let names: Vec<&str> = triggers.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["one", "two"]);
    assert_eq!(triggers[0].filter.describe(), "type = \"a\"");
    let bad = trigger_doc("bad", "  filters: [{exact: {type: ''}}]\n");
    let err = parse_triggers(
        &[(Path::new("t.yaml"), bad.as_str())],
        &LoadOptions::default(),
    )
    .expect_err("invalid filter");
    assert!(
        err.to_string()
            .contains("(Trigger shop/bad): spec.filters[0].exact.type"),
        "{err}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("t.yaml");
    std::fs::write(&file, &text).expect("write");
    assert_eq!(
        load_triggers(&file, &LoadOptions::default())
            .expect("valid")
            .len(),
        2
    );
}
