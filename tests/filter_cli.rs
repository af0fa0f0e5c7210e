//! `triggerfish filter eval` and `triggerfish filter test`, run as the real binary.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

const EVENT: &str = r#"{
  "specversion": "1.0",
  "id": "e-1",
  "source": "/shop/eu",
  "type": "com.example.order.created",
  "subject": "orders/42",
  "count": 42,
  "datacontenttype": "application/json",
  "data": {"total": 10}
}"#;

fn triggerfish(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_triggerfish"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn triggerfish");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("wait for triggerfish")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path.display().to_string()
}

/// Runs `filter eval`, checks it exited 0 with exactly one JSON object of the
/// documented shape, and returns it.
fn eval(args: &[&str], stdin: Option<&str>) -> Value {
    let mut all = vec!["filter", "eval"];
    all.extend_from_slice(args);
    let out = triggerfish(&all, stdin);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{all:?}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 1, "one line of JSON: {stdout}");
    let v: Value = serde_json::from_str(&stdout).expect("stdout is JSON");
    let obj = v.as_object().expect("a JSON object");
    assert_eq!(obj.len(), 2, "only value and errors: {v}");
    assert!(obj.contains_key("value"), "{v}");
    for e in v["errors"].as_array().expect("errors is an array") {
        let e = e.as_object().expect("error object");
        assert_eq!(e.len(), 2, "{v}");
        assert!(e["kind"].is_string() && e["message"].is_string(), "{v}");
    }
    v
}

#[test]
fn eval_against_an_event_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let event = write(dir.path(), "event.json", EVENT);
    let cases = [
        (
            "type LIKE 'com.example.%' AND source = '/shop/eu'",
            json!(true),
        ),
        ("count + 1", json!(43)),
        ("UPPER(subject)", json!("ORDERS/42")),
        ("source = '/shop/us'", json!(false)),
        ("-1 < count", json!(true)),
    ];
    for (expr, want) in cases {
        let v = eval(&["--event", &event, expr], None);
        assert_eq!(v, json!({"value": want, "errors": []}), "{expr}");
    }
}

#[test]
fn eval_reports_errors_with_their_kind() {
    let v = eval(&["missing = 'x'"], None);
    assert_eq!(v["value"], json!(false));
    assert_eq!(v["errors"][0]["kind"], json!("missingAttribute"));
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("missing")),
        "{v}"
    );

    let v = eval(&["type = 'a' AND (source"], None);
    assert_eq!(v["value"], Value::Null);
    assert_eq!(v["errors"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["errors"][0]["kind"], json!("parse"));
    let msg = v["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("byte 22") && msg.contains("expected"), "{msg}");

    let v = eval(&["5 / 0"], None);
    assert_eq!(v["errors"][0]["kind"], json!("math"));
    let v = eval(&["NOPE(1)"], None);
    assert_eq!(v["errors"][0]["kind"], json!("missingFunction"));
    let v = eval(&["INT('x') = 1"], None);
    assert_eq!(v["errors"][0]["kind"], json!("cast"));
}

#[test]
fn eval_default_event_and_stdin() {
    let v = eval(&["type"], None);
    assert_eq!(
        v,
        json!({"value": "dev.triggerfish.filter.eval", "errors": []})
    );
    let v = eval(&["--event", "-", "subject"], Some(EVENT));
    assert_eq!(v, json!({"value": "orders/42", "errors": []}));
}

#[test]
fn eval_rejects_unreadable_or_invalid_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.json").display().to_string();
    let not_json = write(dir.path(), "bad.json", "{not json");
    let invalid = write(
        dir.path(),
        "invalid.json",
        r#"{"specversion": "1.0", "id": "1", "type": "t"}"#,
    );
    for (file, want) in [
        (missing.as_str(), "cannot read event file"),
        (
            not_json.as_str(),
            "not a CloudEvent in JSON structured format",
        ),
        (invalid.as_str(), "not a valid CloudEvent"),
    ] {
        let out = triggerfish(&["filter", "eval", "--event", file, "TRUE"], None);
        assert!(!out.status.success(), "{file}");
        assert!(out.stdout.is_empty(), "{file}: nothing on stdout");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{file}: {stderr}");
    }
}

const TRIGGERS: &str = r#"
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: created, namespace: shop}
spec:
  broker: default
  subscriber: {uri: "http://127.0.0.1:9/"}
  filters:
    - prefix: {type: com.example.}
    - suffix: {type: .created}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: us-only, namespace: shop}
spec:
  broker: default
  subscriber: {uri: "http://127.0.0.1:9/"}
  filters:
    - exact: {type: com.example.order.created}
    - prefix: {source: /shop/us}
"#;

#[test]
fn test_says_which_sub_filter_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let triggers = write(dir.path(), "triggers.yaml", TRIGGERS);
    let event = write(dir.path(), "event.json", EVENT);
    let out = triggerfish(
        &["filter", "test", "--trigger", &triggers, "--event", &event],
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("trigger shop/created: match\n"), "{stdout}");
    assert!(
        stdout.contains("trigger shop/us-only: no match\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            r#"failed: filters[1].prefix: attribute 'source' = "/shop/eu" does not start with "/shop/us""#
        ),
        "{stdout}"
    );
}

#[test]
fn test_rejects_invalid_filters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let triggers = write(
        dir.path(),
        "triggers.yaml",
        &TRIGGERS.replace("prefix: {source: /shop/us}", "cesql: \"source = \""),
    );
    let event = write(dir.path(), "event.json", EVENT);
    let out = triggerfish(
        &["filter", "test", "--trigger", &triggers, "--event", &event],
        None,
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("(Trigger shop/us-only): spec.filters[1].cesql: parse error at byte 9"),
        "{stderr}"
    );
}
