//! Who may send, in operation (issue 16, items 5 and 6): rate limits per broker and
//! per sender (429 with `Retry-After`, never more than the bucket admits), the
//! audit log's bound, and the sender flags as a user types them, on the binary,
//! with `config check` reading the same flags.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use broker::telemetry::AuthRefusal;
use common::pki::{https_client, Ca};
use common::senders::*;
use common::Subscriber;
use serde_json::json;

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_at_the_configured_rate() {
    let dir = tempfile::tempdir().unwrap();
    let sub = Subscriber::start().await;
    let key = Signer::es256("k");
    let issuer = Issuer::start(&[&key]).await;
    let yaml = format!(
        r#"
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: limited
  namespace: team-a
  annotations: {{triggerfish.dev/rate-limit: "20/s", triggerfish.dev/rate-limit-burst: "5"}}
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: per-sender
  namespace: team-a
  annotations: {{triggerfish.dev/sender-rate-limit: "60/m", triggerfish.dev/sender-rate-limit-burst: "2"}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: t, namespace: team-a}}
spec: {{broker: limited, subscriber: {{uri: '{}'}}}}
"#,
        sub.url("/limited")
    );
    let mut opts = options(dir.path(), &yaml);
    opts.oidc = Some(issuer.options(Duration::from_secs(10)));
    let running = common::start_with(opts).await;
    let base = http(running.addr);
    let c = reqwest::Client::new();
    let sa = |name: &str| format!("system:serviceaccount:team-a:{name}");
    let limited = key.sign(&claims(
        &issuer.url,
        &sa("p"),
        &audience("team-a", "limited"),
    ));

    // The burst (5), and whatever refilled meanwhile at 20/s, then 429 with
    // Retry-After.
    let start = Instant::now();
    let (a, burst) = until_refused(&c, &base, "/team-a/limited", &limited).await;
    let secs = start.elapsed().as_secs_f64();
    assert!(
        burst >= 5 && burst as f64 <= 5.0 + 20.0 * secs + 1.0,
        "{burst} accepted in {secs:.2} s with a burst of 5 at 20/s"
    );
    assert_eq!(a.status, 429, "{:?}", a.body);
    assert_eq!(a.headers["retry-after"], "1");
    assert_eq!(a.body["error"], "rate limited");
    // Sent as fast as they go for 1.5 s: accepted at 20/s, no more (a bucket that
    // refills at 20/s cannot admit more than 20 × t + 1), and not much less.
    let start = Instant::now();
    let (mut ok, mut limited_n) = (0u64, 0u64);
    while start.elapsed() < Duration::from_millis(1500) {
        match post(&c, &base, "/team-a/limited", Some(&limited), "r", "t")
            .await
            .status
        {
            202 => ok += 1,
            429 => limited_n += 1,
            other => panic!("unexpected {other}"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    assert!(
        ok as f64 <= 20.0 * secs + 1.0,
        "{ok} accepted in {secs:.2} s at 20/s"
    );
    assert!(limited_n > 0);
    let text = common::metrics_text(running.addr).await;
    assert!(
        text.contains(
            "triggerfish_ingress_rate_limited_total{broker=\"team-a/limited\",scope=\"broker\"}"
        ),
        "{text}"
    );

    // Per sender: each identity has its own bucket.
    let aud = audience("team-a", "per-sender");
    let (alice, bob) = (
        key.sign(&claims(&issuer.url, &sa("alice"), &aud)),
        key.sign(&claims(&issuer.url, &sa("bob"), &aud)),
    );
    let (a, sent) = until_refused(&c, &base, "/team-a/per-sender", &alice).await;
    assert!(sent >= 2, "the burst of 2");
    assert_eq!(a.status, 429);
    assert_eq!(a.headers["retry-after"], "1");
    assert!(
        a.body["detail"].as_str().unwrap().contains("sender"),
        "{:?}",
        a.body
    );
    assert_eq!(
        post(&c, &base, "/team-a/per-sender", Some(&bob), "b0", "t")
            .await
            .status,
        202
    );
    running.shutdown();
    running.wait().await.unwrap();
}

/// A flood of refused requests is counted in full but writes at most
/// `--audit-log-rate` audit lines per second.
#[tokio::test]
async fn the_audit_log_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let sub = Subscriber::start().await;
    let key = Signer::es256("k");
    let issuer = Issuer::start(&[&key]).await;
    let mut opts = options(dir.path(), &format!("{BROKERS}{}", triggers(&sub)));
    opts.oidc = Some(issuer.options(Duration::from_secs(10)));
    opts.ingress.auth.audit_log_rate = Some(2);
    let running = common::start_with(opts).await;
    let c = reqwest::Client::new();
    let start = Instant::now();
    for i in 0..20 {
        let a = post(
            &c,
            &http(running.addr),
            "/team-a/open",
            None,
            &format!("{i}"),
            "t",
        )
        .await;
        assert_eq!(a.status, 401);
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        refusals(&running, AuthRefusal::missing_token),
        20,
        "every refusal counted"
    );
    let text = common::metrics_text(running.addr).await;
    let suppressed: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("triggerfish_audit_lines_suppressed_total "))
        .expect("the suppressed-lines counter")
        .trim()
        .parse()
        .unwrap();
    // A burst of 2, then 2 a second: at most 2 + 2 × t lines were written.
    let written = 20.0 - suppressed;
    assert!(
        written >= 2.0 && written <= 2.0 + 2.0 * secs + 1.0,
        "{written} lines in {secs:.2} s"
    );
    running.shutdown();
    running.wait().await.unwrap();
}

/// The `serve` flags as a user types them, on the binary: TLS, `--oidc-jwks` with
/// a JWKS file, the default mode, `--sender-rate-limit`; and `config check` with
/// the same flags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serve_flags_turn_it_on() {
    let dir = tempfile::tempdir().unwrap();
    let sub = Subscriber::start().await;
    let ca = Ca::new("flags CA");
    let (cert, key_pem, _) = ca.issue("ingress", &["localhost"], false);
    let key = Signer::es256("flags");
    let iss = "https://issuer.flags.test";
    let file = |name: &str, content: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p.to_string_lossy().into_owned()
    };
    file(
        "config.yaml",
        &format!("{BROKERS}{}{ORDERS_POLICY}", triggers(&sub)),
    );
    let (cert, key_file) = (file("tls.crt", &cert), file("tls.key", &key_pem));
    let jwks = file(
        "jwks.json",
        &json!({ "keys": [key.jwk.clone()] }).to_string(),
    );
    let data = dir.path().join("data");
    let flags = [
        "--tls-cert".to_owned(),
        cert,
        "--tls-key".into(),
        key_file,
        "--oidc-jwks".into(),
        format!("{iss}={jwks}"),
        "--default-authorization-mode".into(),
        "deny-all".into(),
        "--sender-rate-limit".into(),
        "2/s".into(),
        "--sender-rate-limit-burst".into(),
        "2".into(),
    ];
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let serve = common::procs::Proc::start(
        "serve",
        dir.path(),
        &["--data-dir", data.to_str().unwrap()],
        &args,
    )
    .await;
    let base = format!("https://localhost:{}", serve.addr.port());
    let c = https_client(&ca, None);
    let producer = "system:serviceaccount:team-a:producer";
    let created = "com.example.order.created";
    let token = key.sign(&claims(iss, producer, &audience("team-a", "orders")));
    assert_eq!(
        post(&c, &base, "/team-a/orders", None, "n", created)
            .await
            .status,
        401
    );
    assert_eq!(
        post(&c, &base, "/team-a/orders", Some(&token), "1", created)
            .await
            .status,
        202
    );
    assert_eq!(
        post(&c, &base, "/team-a/orders", Some(&token), "2", created)
            .await
            .status,
        202
    );
    let a = post(&c, &base, "/team-a/orders", Some(&token), "3", created).await;
    assert_eq!(
        a.status, 429,
        "--sender-rate-limit 2/s, burst 2: {:?}",
        a.body
    );
    // deny-all on the broker without a policy.
    let open = key.sign(&claims(iss, producer, &audience("team-a", "open")));
    assert_eq!(
        post(&c, &base, "/team-a/open", Some(&open), "4", "t")
            .await
            .status,
        403
    );
    drop(serve);

    // `config check` with the same sender flags says whom each broker admits.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_triggerfish"))
        .args(["config", "check"])
        .arg(dir.path().join("config.yaml"))
        .args(&args[4..])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "senders: a bearer token for audience eventing.knative.dev/broker/team-a/orders",
        "EventPolicy team-a/orders-producer: system:serviceaccount:team-a:producer (events matching",
        "no EventPolicy; default mode deny-all: nobody",
        "rate limit: none for the broker, 2/s (burst 2) per sender",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    // A bad flag value is an error that names it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_triggerfish"))
        .args(["serve", "--config"])
        .arg(dir.path().join("config.yaml"))
        .args([
            "--oidc-jwks",
            "http://issuer.example=http://keys.example/jwks",
        ])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("data2"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--oidc-jwks") && err.contains("https"),
        "{err}"
    );
}
