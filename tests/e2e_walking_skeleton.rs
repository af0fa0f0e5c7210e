//! End to end on the embedded log, in-process: events in each content mode reach the
//! right subscribers with every attribute, extension and data byte preserved;
//! non-matching triggers get nothing; each ingress error status is produced by a
//! request that should produce it.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_modes_deliver_every_attribute_and_byte() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = broker_with_triggers(&[
        (
            "orders",
            "  filter: {attributes: {type: com.example.order}}\n",
            sub.url("/orders"),
        ),
        (
            "audit",
            "  filter: {attributes: {source: ''}}\n",
            sub.url("/audit"),
        ),
        (
            "nothing",
            "  filter: {attributes: {type: never.sent}}\n",
            sub.url("/nothing"),
        ),
        (
            "withext",
            "  filter: {attributes: {region: eu, type: com.example.order}}\n",
            sub.url("/withext"),
        ),
    ]);
    let server = start_server(&yaml, dir.path()).await;

    // Binary mode with an extension that needs percent-encoding and binary data.
    let data: Vec<u8> = (0u8..=255).collect();
    let mut h = binary_headers("bin-1", "com.example.order");
    h.push(("ce-region", "eu"));
    h.push(("ce-note", "caf%C3%A9%20au%20lait"));
    h.push(("ce-subject", "order/1"));
    h.push(("ce-time", "2024-05-01T10:00:00.5Z"));
    h.push(("content-type", "application/octet-stream"));
    let (status, _, body) = post(server.addr, "/default/default", &h, data.clone()).await;
    assert_eq!(status, 202, "{body}");

    // Structured mode with JSON data and typed extensions.
    let structured = r#"{"specversion":"1.0","id":"str-1","source":"https://example.com/shop","type":"com.example.order",
        "datacontenttype":"application/json","dataschema":"https://example.com/schema","count":7,"flag":true,
        "data":{"items":[1,2,3],"name":"\u00e9t\u00e9"}}"#;
    let (status, _, body) = post(
        server.addr,
        "/default/default",
        &[(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )],
        structured,
    )
    .await;
    assert_eq!(status, 202, "{body}");

    // Batched mode: two events, one text and one base64.
    let batch = r#"[{"specversion":"1.0","id":"bat-1","source":"/b","type":"com.example.other","datacontenttype":"text/plain","data":"hello"},
        {"specversion":"1.0","id":"bat-2","source":"/b","type":"com.example.order","data_base64":"AAEC"}]"#;
    let (status, _, body) = post(
        server.addr,
        "/default/default",
        &[("content-type", "application/cloudevents-batch+json")],
        batch,
    )
    .await;
    assert_eq!(status, 202, "{body}");

    let got = sub
        .wait_until("all deliveries", WAIT, |r| {
            r.iter().filter(|x| x.path == "/audit").count() == 4
                && r.iter().filter(|x| x.path == "/orders").count() == 3
                && r.iter().any(|x| x.path == "/withext")
        })
        .await;
    let find = |path: &str, id: &str| {
        got.iter()
            .find(|r| r.path == path && r.header("ce-id") == Some(id))
            .unwrap_or_else(|| panic!("{id} not delivered to {path}"))
            .clone()
    };

    let b = find("/orders", "bin-1");
    assert_eq!(
        b.body.as_ref(),
        data.as_slice(),
        "binary data preserved byte for byte"
    );
    assert_eq!(b.header("ce-specversion"), Some("1.0"));
    assert_eq!(b.header("ce-source"), Some("/tests"));
    assert_eq!(b.header("ce-region"), Some("eu"));
    assert_eq!(b.header("ce-note"), Some("caf%C3%A9%20au%20lait"));
    assert_eq!(b.header("ce-subject"), Some("order/1"));
    assert_eq!(b.header("ce-time"), Some("2024-05-01T10:00:00.5Z"));
    assert_eq!(b.header("content-type"), Some("application/octet-stream"));
    assert_eq!(b.header("prefer"), Some("reply"));
    let arrival = b
        .header("ce-knativearrivaltime")
        .expect("arrival time stamped");
    assert!(arrival.parse::<jiff::Timestamp>().is_ok(), "{arrival}");

    let s = find("/orders", "str-1");
    assert_eq!(s.header("ce-source"), Some("https://example.com/shop"));
    assert_eq!(
        s.header("ce-dataschema"),
        Some("https://example.com/schema")
    );
    assert_eq!(s.header("ce-count"), Some("7"));
    assert_eq!(s.header("ce-flag"), Some("true"));
    assert_eq!(s.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
    assert_eq!(v, serde_json::json!({"items": [1, 2, 3], "name": "été"}));

    let t = find("/audit", "bat-1");
    assert_eq!(t.body.as_ref(), b"hello");
    assert_eq!(t.header("content-type"), Some("text/plain"));
    let t = find("/orders", "bat-2");
    assert_eq!(t.body.as_ref(), [0u8, 1, 2]);

    assert_eq!(find("/withext", "bin-1").header("ce-region"), Some("eu"));
    assert!(
        sub.received_on("/withext").len() == 1,
        "only the event with region=eu"
    );
    assert!(
        sub.received_on("/nothing").is_empty(),
        "non-matching trigger got nothing"
    );

    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_error_status_comes_from_the_request_that_should_produce_it() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = broker_with_triggers(&[("all", "", sub.url("/all"))]);
    let server = start_server(&yaml, dir.path()).await;
    let a = server.addr;
    let detail = |body: &str| -> String {
        let v: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|_| panic!("JSON body: {body}"));
        assert!(v["error"].is_string(), "{body}");
        v["detail"].as_str().unwrap().to_owned()
    };

    // 400: a missing required attribute, named in the detail.
    let (s, _, body) = post(
        a,
        "/default/default",
        &[("ce-specversion", "1.0"), ("ce-id", "1"), ("ce-type", "t")],
        "",
    )
    .await;
    assert_eq!(s, 400);
    assert!(detail(&body).contains("'source'"), "{body}");
    // 400: a bad time, and a bad attribute name in structured mode.
    let mut h = binary_headers("2", "t");
    h.push(("ce-time", "yesterday"));
    let (s, _, body) = post(a, "/default/default", &h, "").await;
    assert_eq!(s, 400);
    assert!(detail(&body).contains("'time'"), "{body}");
    let (s, _, body) = post(
        a,
        "/default/default",
        &[("content-type", "application/cloudevents+json")],
        r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","Bad-Name":"x"}"#,
    )
    .await;
    assert_eq!(s, 400);
    assert!(detail(&body).contains("Bad-Name"), "{body}");
    // 400: a batch with one bad event is refused whole.
    let (s, _, body) = post(
        a,
        "/default/default",
        &[("content-type", "application/cloudevents-batch+json")],
        r#"[{"specversion":"1.0","id":"ok","source":"/s","type":"t"},{"specversion":"1.0","id":"bad","type":"t"}]"#,
    )
    .await;
    assert_eq!(s, 400);
    assert!(detail(&body).contains("[1].source"), "{body}");
    // 400: malformed JSON.
    let (s, _, _) = post(
        a,
        "/default/default",
        &[("content-type", "application/cloudevents+json")],
        "{not json",
    )
    .await;
    assert_eq!(s, 400);

    // 404: unknown broker and unknown paths.
    let (s, _, body) = post(a, "/default/nope", &binary_headers("3", "t"), "").await;
    assert_eq!(s, 404);
    assert!(detail(&body).contains("default/nope"), "{body}");
    let (s, _, _) = post(a, "/a/b/c", &binary_headers("3", "t"), "").await;
    assert_eq!(s, 404);

    // 405 with Allow.
    let resp = reqwest::Client::new()
        .put(format!("http://{a}/default/default"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(resp.headers()["allow"], "POST, OPTIONS");

    // OPTIONS: the CloudEvents webhook handshake.
    let resp = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("http://{a}/default/default"),
        )
        .header("WebHook-Request-Origin", "eventemitter.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()["webhook-allowed-origin"],
        "eventemitter.example.com"
    );
    assert!(resp.headers()["allow"].to_str().unwrap().contains("POST"));

    // 413: declared too large, and too large without Content-Length (chunked).
    let big = vec![b'x'; ingress::DEFAULT_MAX_BODY + 1];
    let (s, _, body) = post(
        a,
        "/default/default",
        &binary_headers("4", "t"),
        big.clone(),
    )
    .await;
    assert_eq!(s, 413, "{body}");
    let stream = futures_util::stream::iter(
        big.chunks(64 * 1024)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let (s, _, _) = post(
        a,
        "/default/default",
        &binary_headers("5", "t"),
        reqwest::Body::wrap_stream(stream),
    )
    .await;
    assert_eq!(s, 413);

    // 415: an event format we do not support.
    let (s, _, body) = post(
        a,
        "/default/default",
        &[("content-type", "application/cloudevents+xml")],
        "<e/>",
    )
    .await;
    assert_eq!(s, 415);
    assert!(detail(&body).contains("cloudevents+xml"), "{body}");

    // Health and readiness.
    let get = |p: &str| reqwest::get(format!("http://{a}{p}"));
    assert_eq!(get("/healthz").await.unwrap().status().as_u16(), 200);
    assert_eq!(get("/readyz").await.unwrap().status().as_u16(), 200);
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(r#"triggerfish_ingress_events_rejected_total{broker="default/default",reason="invalid"} 5"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"reason="too_large"} 2"#), "{metrics}");
    assert!(
        metrics.contains(r#"{broker="",reason="unknown_broker"} 1"#),
        "{metrics}"
    );

    // Nothing invalid reached the subscriber.
    assert!(sub.received().is_empty());
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_channel_answers_503_with_retry_after() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = broker_with_triggers(&[("all", "", sub.url("/all"))]);
    let opts = triggerfish::app::ServerOptions {
        config: config(&yaml),
        config_path: None,
        load_options: Default::default(),
        watch_config: false,
        advertise_url: None,
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: None,
        admin_auth: Default::default(),
        tls: None,
        admin_tls: None,
        storage: triggerfish::app::Storage::Embedded {
            data_dir: dir.path().to_path_buf(),
            options: broker::channel::embedded::EmbeddedOptions {
                partitions: 1,
                queue_depth: 1,
                ..Default::default()
            },
        },
        role: triggerfish::app::Role::Both,
        ingress: Default::default(),
        oidc: None,
        dispatcher: Default::default(),
    };
    let server = triggerfish::app::start(opts, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    // Many concurrent producers against a queue of one: some must be turned away
    // with 503 + Retry-After, and every 202 must be delivered.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let id = format!("e{i}");
            let (s, h, _) = post(
                addr,
                "/default/default",
                &binary_headers(&id, "t"),
                vec![0u8; 8 * 1024],
            )
            .await;
            (id, s, h.get("retry-after").cloned())
        }));
    }
    let mut accepted = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let (id, s, ra) = t.await.unwrap();
        match s {
            202 => accepted.push(id),
            503 => {
                refused += 1;
                assert_eq!(ra.as_deref(), Some("1"));
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        refused > 0,
        "a queue of one under 200 concurrent producers must refuse some"
    );
    assert!(!accepted.is_empty());
    let n = accepted.len();
    let got = sub
        .wait_until("every accepted event", WAIT, |r| r.len() >= n)
        .await;
    for id in &accepted {
        assert!(
            got.iter().any(|r| r.header("ce-id") == Some(id)),
            "{id} accepted but not delivered"
        );
    }
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_checkpoint_without_loss() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = broker_with_triggers(&[("all", "", sub.url("/all"))]);
    let server = start_server(&yaml, dir.path()).await;
    for i in 0..50 {
        let (s, _, _) = post(
            server.addr,
            "/default/default",
            &binary_headers(&format!("a{i}"), "t"),
            "x",
        )
        .await;
        assert_eq!(s, 202);
    }
    sub.wait_until("first 50", WAIT, |r| r.len() >= 50).await;
    server.shutdown();
    server.wait().await.unwrap();

    // While the server is down the subscriber keeps its count; after restart only new
    // events arrive (the checkpoint was written at shutdown), and they all do.
    let server = start_server(&yaml, dir.path()).await;
    for i in 0..50 {
        let (s, _, _) = post(
            server.addr,
            "/default/default",
            &binary_headers(&format!("b{i}"), "t"),
            "x",
        )
        .await;
        assert_eq!(s, 202);
    }
    let got = sub.wait_until("next 50", WAIT, |r| r.len() >= 100).await;
    for i in 0..50 {
        let id = format!("b{i}");
        assert!(
            got.iter().any(|r| r.header("ce-id") == Some(id.as_str())),
            "{id}"
        );
    }
    assert_eq!(got.len(), 100, "a clean shutdown redelivers nothing");
    server.shutdown();
    server.wait().await.unwrap();
}
