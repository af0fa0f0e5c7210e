//! The outgoing identity (issue 16, item 4): with `--delivery-token-file`, every
//! delivery, dead-letter sink call and redrive carries `Authorization: Bearer` with
//! the file's token, and a rotated file is used from then on.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use common::Subscriber;

fn config(sub: &Subscriber) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {{name: default}}\n---
apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: ok}}
spec:\n  broker: default\n  filter: {{attributes: {{type: ok}}}}\n  subscriber: {{uri: '{ok}'}}
---
apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: to-sink}}
spec:\n  broker: default\n  filter: {{attributes: {{type: sink}}}}\n  subscriber: {{uri: '{fail}'}}
  delivery: {{retry: 0, deadLetterSink: {{uri: '{dls}'}}}}
---
apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: to-log}}
spec:\n  broker: default\n  filter: {{attributes: {{type: log}}}}\n  subscriber: {{uri: '{flaky}'}}
  delivery: {{retry: 0}}
",
        ok = sub.url("/ok"),
        fail = sub.url("/fail"),
        dls = sub.url("/dls"),
        flaky = sub.url("/flaky"),
    )
}

fn auth_in(received: &[common::Received], path: &str, id: &str) -> Option<String> {
    received
        .iter()
        .find(|r| r.path == path && r.header("ce-id") == Some(id))
        .map(|r| r.header("authorization").unwrap_or("<none>").to_owned())
}

fn auth_of(sub: &Subscriber, path: &str, id: &str) -> Option<String> {
    auth_in(&sub.received(), path, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_sink_calls_and_redrives_carry_the_token_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let sub = Subscriber::start().await;
    let flaky_ok = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = flaky_ok.clone();
    sub.respond_with(move |r, _| {
        let fail = r.path == "/fail"
            || (r.path == "/flaky" && !f.load(std::sync::atomic::Ordering::SeqCst));
        let status = if fail {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        };
        (status, HeaderMap::new(), Vec::new())
    });
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "first.token.jwt\n").unwrap();
    let mut opts = common::server_options(&config(&sub), &dir.path().join("data"));
    opts.dispatcher.delivery_token =
        Some(dispatcher::identity::BearerToken::load(&token_file).unwrap());
    let server = common::start_with(opts).await;

    common::send_accepted(server.addr, "a1", "ok").await;
    common::send_accepted(server.addr, "s1", "sink").await;
    common::send_accepted(server.addr, "l1", "log").await;
    sub.wait_until(
        "the delivery and the sink call",
        Duration::from_secs(10),
        |r| auth_in(r, "/ok", "a1").is_some() && auth_in(r, "/dls", "s1").is_some(),
    )
    .await;
    assert_eq!(
        auth_of(&sub, "/ok", "a1").unwrap(),
        "Bearer first.token.jwt"
    );
    assert_eq!(
        auth_of(&sub, "/fail", "s1").unwrap(),
        "Bearer first.token.jwt"
    );
    assert_eq!(
        auth_of(&sub, "/dls", "s1").unwrap(),
        "Bearer first.token.jwt"
    );

    // Rotated (as kubelet rewrites a projected token): the next deliveries carry it.
    let tmp = dir.path().join("token.tmp");
    std::fs::write(&tmp, "second.token.jwt-rotated\n").unwrap();
    std::fs::rename(&tmp, &token_file).unwrap();
    // One event at a time until a delivery carries the new token (the file is
    // polled); each carries one of the two, never none.
    let new = "Bearer second.token.jwt-rotated";
    let mut i = 0;
    let deadline = std::time::Instant::now() + dispatcher::identity::POLL * 5;
    loop {
        i += 1;
        let id = format!("a2-{i}");
        common::send_accepted(server.addr, &id, "ok").await;
        sub.wait_until("a delivery after rotation", Duration::from_secs(10), |r| {
            auth_in(r, "/ok", &id).is_some()
        })
        .await;
        let auth = auth_of(&sub, "/ok", &id).unwrap();
        if auth == new {
            break;
        }
        assert_eq!(auth, "Bearer first.token.jwt");
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated token never sent"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And from then on.
    common::send_accepted(server.addr, "a3", "ok").await;
    sub.wait_until("the next delivery", Duration::from_secs(10), |r| {
        auth_in(r, "/ok", "a3").is_some()
    })
    .await;
    assert_eq!(auth_of(&sub, "/ok", "a3").unwrap(), new);

    // The event in the dead-letter log, redriven to its subscriber: with the token.
    let admin = server.admin_addr.unwrap();
    common::eventually(
        "l1 in the dead-letter log",
        Duration::from_secs(10),
        || async { !common::dead_letters(admin).await.is_empty() },
    )
    .await;
    flaky_ok.store(true, std::sync::atomic::Ordering::SeqCst);
    let resp = reqwest::Client::new()
        .post(format!(
            "http://{admin}/admin/dlq/default/default/redrive?to=subscriber"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "{:?}", resp.text().await);
    sub.wait_until("the redriven event", Duration::from_secs(10), |r| {
        r.iter()
            .filter(|r| r.path == "/flaky" && r.header("ce-id") == Some("l1"))
            .count()
            == 2
    })
    .await;
    let redriven: Vec<_> = sub
        .received_on("/flaky")
        .iter()
        .filter(|r| r.header("ce-id") == Some("l1"))
        .map(|r| r.header("authorization").unwrap_or("<none>").to_owned())
        .collect();
    assert_eq!(
        redriven,
        ["Bearer first.token.jwt", "Bearer second.token.jwt-rotated"]
    );
    server.shutdown();
    server.wait().await.unwrap();
}
