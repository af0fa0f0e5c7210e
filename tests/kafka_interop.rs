//! Interoperability of the Kafka channel with a Kafka client that is not ours: Python's
//! confluent-kafka (`tests/kafka_client.py`, its own librdkafka build) reads what the
//! ingress accepted and writes records that triggers route, per the CloudEvents Kafka
//! binding (`bindings_kafka-protocol-binding.md`).
//!
//! Needs `TRIGGERFISH_TEST_KAFKA_BOOTSTRAP` and Python with confluent-kafka (both set
//! up by `scripts/dev-services start`); fails without them unless
//! `TRIGGERFISH_SKIP_KAFKA=1`.

#![cfg(feature = "kafka")]
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;

use axum::http::{HeaderMap, StatusCode};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use common::{broker_with_triggers, eventually, metric, post, procs::unique, Subscriber};
use serde_json::{json, Value};

/// Runs `tests/kafka_client.py` with `args` (and `stdin`), returns its JSON output.
fn python(args: &[&str], stdin: Option<&Value>) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kafka_client.py");
    let python = std::env::var("TRIGGERFISH_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(python)
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(v) = stdin {
        input.write_all(v.to_string().as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kafka_client.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Kafka options on a topic of this test's own (returned with them) for `default/default`.
fn kafka_options(
    bootstrap: &str,
    tag: &str,
    partitions: u32,
) -> (broker::channel::kafka::KafkaOptions, String) {
    let template = format!("{}-{{namespace}}-{{name}}", unique(tag));
    let topic = template
        .replace("{namespace}", "default")
        .replace("{name}", "default");
    let mut kafka =
        broker::channel::kafka::KafkaOptions::from_url(&format!("kafka://{bootstrap}")).unwrap();
    kafka.topic_template = template;
    kafka.partitions = partitions;
    // tansu reads exact offsets only from one-record batches (docs/design/kafka.md).
    kafka.add_option("batch.num.messages=1").unwrap();
    (kafka, topic)
}

/// An in-process server on Kafka.
async fn start_on_kafka(
    yaml: &str,
    dir: &std::path::Path,
    kafka: &broker::channel::kafka::KafkaOptions,
) -> triggerfish::app::Running {
    let mut opts = common::server_options(yaml, dir);
    opts.storage = triggerfish::app::Storage::Kafka(kafka.clone());
    common::start_with(opts).await
}

fn header<'a>(record: &'a Value, name: &str) -> Option<&'a str> {
    record["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == name)
        .and_then(|h| h[1].as_str())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_kafka_clients_read_what_the_ingress_accepted_and_write_what_triggers_route() {
    let Some(bootstrap) = common::kafka_bootstrap() else {
        return;
    };
    let sub = Subscriber::start().await;
    let yaml = broker_with_triggers(&[
        (
            "foreign",
            "  filter: {attributes: {type: com.example.foreign}}\n",
            sub.url("/foreign"),
        ),
        ("all", "", sub.url("/all")),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let (kafka, topic) = kafka_options(&bootstrap, "interop", 3);
    let server = start_on_kafka(&yaml, dir.path(), &kafka).await;
    let admin = server.admin_addr.unwrap();

    // 1. An event accepted by the ingress, as another consumer sees it.
    let mut headers = common::binary_headers("from-http-1", "com.example.order");
    headers.extend([
        ("ce-partitionkey", "customer-7"),
        // Percent-encoded on HTTP (the HTTP binding), plain UTF-8 on Kafka.
        ("ce-region", "eu-west%20100%25"),
        ("content-type", "application/json"),
    ]);
    let (status, _, _) = post(server.addr, "/default/default", &headers, r#"{"n":1}"#).await;
    assert_eq!(status, 202);
    let records = python(&["consume", &bootstrap, &topic, "1", "30"], None);
    let r = &records[0];
    assert_eq!(header(r, "ce_specversion"), Some("1.0"));
    assert_eq!(header(r, "ce_id"), Some("from-http-1"));
    assert_eq!(header(r, "ce_source"), Some("/tests"));
    assert_eq!(header(r, "ce_type"), Some("com.example.order"));
    // UTF-8 as it is: the Kafka binding does not percent-encode.
    assert_eq!(header(r, "ce_region"), Some("eu-west 100%"));
    assert_eq!(header(r, "ce_partitionkey"), Some("customer-7"));
    assert_eq!(header(r, "content-type"), Some("application/json"));
    assert_eq!(header(r, "ce_datacontenttype"), None);
    assert_eq!(r["key"], "customer-7", "partitionkey is the record key");
    assert_eq!(r["value_b64"], b64(br#"{"n":1}"#));
    assert_eq!(
        r["partition"],
        broker::channel::kafka::murmur2_partition(b"customer-7", 3),
        "keyed as a Java producer would"
    );
    eprintln!("record as a Python consumer sees it: {r}");
    sub.wait_until("the HTTP event delivered", Duration::from_secs(30), |s| {
        s.iter().filter(|r| r.path == "/all").count() == 1
    })
    .await;

    // 2. Records from the other client: binary mode, garbage, binary mode, structured.
    let ce = |id: &str| {
        json!([
            ["ce_specversion", "1.0"],
            ["ce_id", id],
            ["ce_source", "/python"],
            ["ce_type", "com.example.foreign"],
            ["content-type", "text/plain"]
        ])
    };
    let produced = python(
        &["produce", &bootstrap, &topic, "0"],
        Some(&json!([
            {"key": "k", "headers": ce("py-1"), "value_b64": b64(b"hello from python")},
            {"headers": [["content-type", "application/octet-stream"]], "value_b64": b64(b"\x00\xffgarbage")},
            {"headers": ce("py-after-garbage"), "value_b64": b64(b"still delivered")},
            {"headers": [["content-type", "application/cloudevents+json"]],
             "value_b64": b64(br#"{"specversion":"1.0","id":"py-structured","source":"/python","type":"com.example.foreign","data":{"x":1}}"#)},
        ])),
    );
    let garbage_offset = produced[1].as_u64().unwrap();
    sub.wait_until(
        "the Python events delivered",
        Duration::from_secs(30),
        |s| s.iter().filter(|r| r.path == "/foreign").count() == 3,
    )
    .await;
    let foreign = sub.received_on("/foreign");
    let mut ids: Vec<&str> = foreign.iter().filter_map(|r| r.header("ce-id")).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["py-1", "py-after-garbage", "py-structured"]);
    let first = foreign
        .iter()
        .find(|r| r.header("ce-id") == Some("py-1"))
        .unwrap();
    assert_eq!(&first.body[..], b"hello from python");
    assert_eq!(first.header("content-type"), Some("text/plain"));

    // 3. The garbage record: counted, and in the dead-letter log with its bytes.
    eventually(
        "the malformed record counted",
        Duration::from_secs(10),
        || async {
            metric(
                server.addr,
                "triggerfish_dispatcher_malformed_records_total{broker=\"default/default\"}",
            )
            .await
                == 1.0
        },
    )
    .await;
    let list: Value = reqwest::get(format!("http://{admin}/admin/dlq/default/default"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = list["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{list}");
    assert_eq!(entries[0]["type"], "dev.triggerfish.malformed");
    assert_eq!(entries[0]["id"], format!("0-{garbage_offset}"));
    let shown: Value = reqwest::get(format!(
        "http://{admin}/admin/dlq/default/default/{}",
        entries[0]["offset"]
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(shown["data_base64"], b64(b"\x00\xffgarbage"), "{shown}");
    let reason = shown["triggerfishreason"].as_str().unwrap();
    assert!(
        reason.contains(&format!(
            "topic {topic} partition 0 offset {garbage_offset}"
        )),
        "{reason}"
    );
    eprintln!("dead-letter entry for the garbage record: {shown}");
    server.shutdown();
    server.wait().await.unwrap();

    // 4. Garbage written while no dispatcher runs is found when one starts (the
    // partition's scan from its malformed-record cursor), and the first one is not
    // stored again.
    let produced = python(
        &["produce", &bootstrap, &topic, "2"],
        Some(&json!([
            {"headers": [], "value_b64": b64(b"garbage while stopped")},
            {"headers": ce("py-after-restart"), "value_b64": b64(b"after restart")},
        ])),
    );
    let garbage2 = produced[0].as_u64().unwrap();
    let server = start_on_kafka(&yaml, dir.path(), &kafka).await;
    let admin = server.admin_addr.unwrap();
    sub.wait_until(
        "the event written while stopped delivered",
        Duration::from_secs(30),
        |s| {
            s.iter()
                .any(|r| r.header("ce-id") == Some("py-after-restart"))
        },
    )
    .await;
    eventually(
        "the second garbage record dead-lettered",
        Duration::from_secs(20),
        || async {
            let list: Value = reqwest::get(format!("http://{admin}/admin/dlq/default/default"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            list["entries"].as_array().unwrap().len() >= 2
        },
    )
    .await;
    let list: Value = reqwest::get(format!("http://{admin}/admin/dlq/default/default"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        [format!("0-{garbage_offset}"), format!("2-{garbage2}")],
        "each garbage record once"
    );
    server.shutdown();
    server.wait().await.unwrap();
}

/// Replies and the dead-letter log are Kafka topics too: another client sees a reply
/// on the broker's topic, after the event it answers, and a failed event on
/// `<topic>_deadletters` with the `knativeerror*` headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_and_dead_letters_are_records_in_kafka() {
    let Some(bootstrap) = common::kafka_bootstrap() else {
        return;
    };
    let sub = Subscriber::start().await;
    sub.respond_with(|r, _| match r.path.as_str() {
        "/ask" => {
            let mut h = HeaderMap::new();
            for (k, v) in [
                ("ce-specversion", "1.0"),
                ("ce-id", "answer-1"),
                ("ce-source", "/replier"),
                ("ce-type", "com.example.answer"),
                ("content-type", "text/plain"),
            ] {
                h.insert(k, v.parse().unwrap());
            }
            (StatusCode::OK, h, b"42".to_vec())
        }
        "/doomed" => (StatusCode::BAD_REQUEST, HeaderMap::new(), b"no".to_vec()),
        _ => (StatusCode::OK, HeaderMap::new(), Vec::new()),
    });
    let yaml = broker_with_triggers(&[
        (
            "ask",
            "  filter: {attributes: {type: com.example.ask}}\n",
            sub.url("/ask"),
        ),
        (
            "answers",
            "  filter: {attributes: {type: com.example.answer}}\n",
            sub.url("/answers"),
        ),
        (
            "doomed",
            "  filter: {attributes: {type: com.example.doomed}}\n",
            sub.url("/doomed"),
        ),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let (kafka, topic) = kafka_options(&bootstrap, "replies", 1);
    let server = start_on_kafka(&yaml, dir.path(), &kafka).await;
    for (id, ty) in [("q-1", "com.example.ask"), ("d-1", "com.example.doomed")] {
        let (status, _, _) = post(
            server.addr,
            "/default/default",
            &common::binary_headers(id, ty),
            "x",
        )
        .await;
        assert_eq!(status, 202);
    }
    sub.wait_until("the reply delivered", Duration::from_secs(30), |r| {
        r.iter().any(|r| r.path == "/answers")
    })
    .await;

    let records = python(&["consume", &bootstrap, &topic, "3", "30"], None);
    let ids: Vec<&str> = records
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| header(r, "ce_id"))
        .collect();
    assert_eq!(
        ids,
        ["q-1", "d-1", "answer-1"],
        "the reply follows on the topic"
    );
    let reply = &records[2];
    assert_eq!(header(reply, "ce_type"), Some("com.example.answer"));
    assert_eq!(reply["value_b64"], b64(b"42"));
    assert!(header(reply, "ce_knativebrokerttl").is_some(), "{reply}");

    let dead = python(
        &[
            "consume",
            &bootstrap,
            &format!("{topic}_deadletters"),
            "1",
            "30",
        ],
        None,
    );
    let d = &dead[0];
    assert_eq!(header(d, "ce_id"), Some("d-1"));
    assert_eq!(header(d, "ce_knativeerrorcode"), Some("400"));
    assert_eq!(
        header(d, "ce_knativeerrordest"),
        Some(sub.url("/doomed").as_str())
    );
    assert_eq!(header(d, "ce_triggerfishtrigger"), Some("doomed"));
    eprintln!("dead letter as a Python consumer sees it: {d}");
    server.shutdown();
    server.wait().await.unwrap();
}
